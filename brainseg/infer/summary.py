"""What a batch run did, case by case: written, skipped, failed (with its one error line), each
written case's volumes, background kind, out-of-distribution reasons and predicted quality."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from brainseg.data.cases import Case
from brainseg.errors import InputError
from brainseg.infer.qc import QC_THRESHOLD


@dataclass
class PredictionSummary:
    """What a batch run did: case ids written, skipped and failed (with the error line)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: mm³ per label for each case written in this run.
    volumes: dict[str, dict[int, float]] = field(default_factory=dict)
    #: Per case written: its background ("zero": exactly 0, the input-mask rule applied;
    #: "noise": the rule not applied), the ``background`` column of volumes.csv.
    backgrounds: dict[str, str] = field(default_factory=dict)
    #: Per case written: why it is unlike the training scans ("; "-joined), the ``ood`` column.
    ood: dict[str, str] = field(default_factory=dict)
    #: Per case written, with a :class:`Fingerprint`: its provenance entry (inputs, outputs, timing).
    records: dict[str, dict] = field(default_factory=dict)
    #: Per case written by a model with a quality score: the predicted Dice per key (:mod:`.qc`).
    qc: dict[str, dict[str, float]] = field(default_factory=dict)
    #: A case whose predicted mean Dice is below this is flagged.
    qc_threshold: float = QC_THRESHOLD

    def flagged(self) -> list[str]:
        """The cases written whose predicted mean Dice is under the threshold."""
        return [c for c, q in self.qc.items() if q and sum(q.values()) / len(q) < self.qc_threshold]

    def report(self) -> str:
        text = f"{len(self.written)} written, {len(self.skipped)} skipped, {len(self.failed)} failed"
        if self.skipped:
            text += (
                f"\n{len(self.skipped)} case(s) skipped because their outputs exist, made from the same inputs"
                " and model (--overwrite redoes them)"
            )
        if self.failed:
            text += "\nfailed cases: " + ", ".join(case for case, _ in self.failed)
        if self.qc:
            flagged = self.flagged()
            text += (
                f"\nquality: {len(flagged)} of {len(self.qc)} case(s) flagged (predicted mean Dice < "
                f"{self.qc_threshold:g}; check them first, the qc_flag column of volumes.csv)"
                + (f": {', '.join(flagged)}" if flagged else "")
            )
        return text


def error_line(case: Case, exc: BaseException) -> str:
    """One line ``<file>: <problem>`` (or ``case ID: <problem>``) for a failed case."""
    if isinstance(exc, InputError):
        return str(exc)
    if isinstance(exc, OSError):
        where = exc.filename or f"case {case.case_id}"
        return f"{where}: {exc.strerror or exc}"
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return f"case {case.case_id}: out of GPU memory even with batch_windows=1 and the output on the CPU"
    return f"case {case.case_id}: {exc}"
