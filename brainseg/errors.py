"""User-facing errors.

Every problem a user can cause with their inputs (a bad file, a wrong layout, a
mismatched geometry) is raised as a :class:`BrainsegError`. The CLI prints such an
error as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os

# Control characters (a file name may hold a newline or a tab) printed as escapes.
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(32), 127)}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def one_line(text: object) -> str:
    """``text`` with its control characters escaped, so it prints as exactly one line."""
    return str(text).translate(_ESCAPES)


class BrainsegError(Exception):
    """An error caused by the user's input, reported as one line."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class InputError(BrainsegError):
    """A specific input file is unusable; the message names the file."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
