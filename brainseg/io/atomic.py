"""Atomic file writes: a temporary file beside the target, fsynced, renamed over it.

A reader never sees a partial file: either the old target or the complete new one.
The bottom layer of brainseg: it imports only the file-name rules (:mod:`.naming`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from brainseg.io.naming import image_suffix

__all__ = ["atomic_path", "atomic_write_text"]


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no read-only query elsewhere: set and restore at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    The temporary name keeps the target's suffix (nibabel picks the format from it)
    and starts with a dot, so discovery never mistakes it for a scan. On any error
    the temporary file is removed and the target is untouched; an :class:`OSError`
    (disk full, file too large, permission denied, ...) is re-raised naming the
    target, not the temporary file, so the user is told which output failed.
    A process killed mid-write can leave the hidden temporary file behind (never a
    partial target); such files are ignored everywhere and may be deleted.
    """
    target = Path(target)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        suffix = image_suffix(target) or target.suffix
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        # mkstemp makes the file 0600; give it the mode any new file of the user gets.
        os.chmod(tmp, 0o666 & ~_current_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, OSError) and (
            exc.filename is None or Path(str(exc.filename)).name.startswith(f".{target.name}.")
        ):
            # A failed write of the temporary file is a failed write of the target.
            raise OSError(exc.errno, f"cannot be written ({exc.strerror or exc})", str(target)) from exc
        raise


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
