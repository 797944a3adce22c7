"""Provenance of ``brainseg predict``: ``OUT/brainseg_run.json``, and one record per torchrun run.

The record says how every mask in the folder was made, so a result can be traced and a rerun
redoes exactly what changed::

    {"format": 1,
     "runs": [{"id", "command", "brainseg", "versions" (torch, monai, ...), "devices" (by rank),
               "world_size", "model": {"path", "sha256"}, "preset" (--fast: "fast"), "config" (infer, postprocess),
               "started", "finished" (UTC, ISO 8601), "seconds", "written", "skipped", "failed"}],
     "cases": {ID: {"inputs": [{"path", "sha256"}] (channel order), "outputs": {kind: file name},
                    "model_sha256", "config_sha256", "seconds", "windows" (sliding windows the case
                    took), "run" (the run's id)}}}

It accumulates: a run adds its entry to ``runs`` and replaces the entries of the cases it
wrote; the cases it skipped keep theirs; a case that failed loses its entry (its outputs,
if any, no longer match a record, so the next run tries it again). A case is skipped only
when its outputs exist and its entry names the same input hashes, model hash and settings
(:func:`is_current`). The record is written (atomically) when the run wrote a case or the
folder already has one; a first run that produced nothing leaves no record.

Each rank (one without torchrun) journals its part, ``.brainseg_run.<token>.rank<r>.json``
(hidden, rewritten atomically just before each mask is written, :func:`commit_case`), so a
run killed at any point leaves entries for exactly the masks it finished: the next run starts
from the record plus such journals, and folds them into the record (as ``interrupted`` runs).
At the end each rank writes its final part; whichever rank then finds all ``world_size``
final parts of its run merges them into the record and ``volumes.csv`` and removes them.
Nothing waits for another rank (one that crashed leaves the run unmerged, to be folded in by
the next run, rather than the others blocked), and two ranks that both merge write the same
files (the run's entry is replaced by its id). The token that tells this run's parts from a
crashed run's is derived from torchrun's environment (:func:`run_token`); on several nodes give
torchrun an ``--rdzv-id`` of its own per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from brainseg.io.atomic import atomic_write_text
from brainseg.io.hashing import sha256_file

log = logging.getLogger(__name__)

RUN_RECORD = "brainseg_run.json"
RECORD_FORMAT = 1
PART_PREFIX = ".brainseg_run."


def sha256_input(path: str | os.PathLike) -> str:
    """A file's SHA-256; for a folder (a DICOM series) the SHA-256 of its files' relative
    names and SHA-256s, in name order, so any added, removed or changed file changes it."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path).as_posix()}\0{sha256_file(item)}\n".encode())
    return digest.hexdigest()


def sha256_json(data: Any) -> str:
    """The SHA-256 of ``data`` as canonical JSON (sorted keys): a fingerprint of settings."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def now_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Fingerprint:
    """What a case's outputs must have been made from to be kept: the model's and the settings'
    SHA-256, and the folder's case entries before this run (``recorded``); ``run_id`` names the run."""

    model_sha256: str
    config_sha256: str
    run_id: str
    recorded: Mapping[str, Mapping] = field(default_factory=dict)


def empty_record() -> dict:
    return {"format": RECORD_FORMAT, "runs": [], "cases": {}}


def read_record(output_dir: Path, quiet: bool = False) -> tuple[dict, bool]:
    """(the folder's record, whether it has one). An unreadable record is warned about (unless
    ``quiet``) and read as empty: every case is then redone and the record rewritten."""
    path = Path(output_dir) / RUN_RECORD
    if not path.is_file():
        return empty_record(), False
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("cases"), dict):
            raise ValueError("not a brainseg run record")
        record.setdefault("runs", [])
        return record, True
    except (OSError, ValueError) as exc:
        if not quiet:
            log.warning("%s: unreadable (%s); every case is predicted again", path, exc)
        return empty_record(), True


def input_entries(images: Sequence[Path]) -> list[dict]:
    """Each input file's path (absolute) and SHA-256, in channel order."""
    return [{"path": str(Path(p).resolve()), "sha256": sha256_input(p)} for p in images]


def is_current(entry: Mapping | None, inputs: Sequence[Mapping] | None, model_sha256: str, config_sha256: str) -> bool:
    """Whether a case's recorded entry was made from these inputs (by content, in channel
    order), this model and these settings: only then may its existing outputs be kept."""
    if not isinstance(entry, Mapping) or inputs is None or not isinstance(entry.get("inputs"), list):
        return False
    recorded = [i.get("sha256") for i in entry.get("inputs", []) if isinstance(i, Mapping)]
    return (
        recorded == [i["sha256"] for i in inputs]
        and entry.get("model_sha256") == model_sha256
        and entry.get("config_sha256") == config_sha256
    )


def merge_parts(record: Mapping, parts: Sequence[Mapping]) -> dict:
    """The record after a run whose ranks left ``parts`` (one per rank): one run entry (by id,
    replacing an entry of the same id, so merging twice gives the same record), the written
    cases' entries replaced, the failed cases' entries dropped, the others kept."""
    parts = sorted(parts, key=lambda p: p["rank"])
    first = parts[0]["run"]
    run = {k: v for k, v in first.items() if k not in ("device", "started", "finished")}
    started = min(p["run"]["started"] for p in parts)
    finished = max(p["run"]["finished"] for p in parts)
    run.update(
        interrupted=not all(p.get("final", True) for p in parts),
        devices=[p["run"]["device"] for p in parts],
        started=now_iso(started),
        finished=now_iso(finished),
        seconds=round(finished - started, 3),
        written=[c for p in parts for c in p["written"]],
        skipped=[c for p in parts for c in p["skipped"]],
        failed=[f for p in parts for f in p["failed"]],
    )
    cases = dict(record.get("cases", {}))
    for part in parts:
        for failure in part["failed"]:
            cases.pop(failure["case"], None)
        cases.update(part["cases"])
    runs = [r for r in record.get("runs", []) if r.get("id") != run["id"]] + [run]
    return {"format": RECORD_FORMAT, "runs": runs, "cases": dict(sorted(cases.items()))}


def write_record(output_dir: Path, record: Mapping) -> Path:
    path = Path(output_dir) / RUN_RECORD
    atomic_write_text(path, json.dumps(record, indent=1, allow_nan=False) + "\n")
    return path


# ----------------------------------------------------------------------------- parts and journals


def readable_input_entries(images: Sequence[Path]) -> list[dict] | None:
    """:func:`input_entries`, or None when a file cannot be read (reading it for the prediction
    then fails with the reader's own message)."""
    try:
        return input_entries(images)
    except OSError:
        return None


def commit_case(
    records: dict[str, dict],
    case_id: str,
    inputs: list[dict] | None,
    outputs: Mapping[str, Path],
    fingerprint: Fingerprint,
    journal: Callable[[], object],
) -> Callable[[Mapping[str, object]], None]:
    """What runs just before a case's mask (its last output) is written: the older mask removed,
    the case's entry (plus the ``facts`` it is called with) put in ``records`` and journaled. A kill in between leaves no mask, so the
    case is redone; a mask never exists that an entry claims for other inputs."""
    start = time.perf_counter()

    def commit(facts: Mapping[str, object]) -> None:
        with contextlib.suppress(FileNotFoundError):
            outputs["mask"].unlink()
        records[case_id] = {
            "inputs": inputs,
            "outputs": {kind: path.name for kind, path in outputs.items()},
            "model_sha256": fingerprint.model_sha256,
            "config_sha256": fingerprint.config_sha256,
            "seconds": round(time.perf_counter() - start, 3),
            **facts,
            "run": fingerprint.run_id,
        }
        journal()

    return commit


def run_token(environ: Mapping[str, str], world_size: int) -> str:
    """An id every rank of one torchrun run computes alike, and a later run does not.

    torchrun's run id, rendezvous address, restart count and world size; on one node
    (``LOCAL_WORLD_SIZE`` = ``WORLD_SIZE``) also the parent process, the torchrun agent
    every rank shares. Without torchrun (one process) a fresh random id."""
    if world_size == 1:
        return os.urandom(8).hex()
    keys = ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "WORLD_SIZE")
    parts = [environ.get(k, "") for k in keys]
    if environ.get("LOCAL_WORLD_SIZE", str(world_size)) == str(world_size):
        parts.append(str(os.getppid()))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def part_path(output_dir: Path, token: str, rank: int) -> Path:
    return Path(output_dir) / f"{PART_PREFIX}{token}.rank{rank}.json"


def drop_stale_part(output_dir: Path, token: str, rank: int) -> None:
    """Remove this rank's part left by a crashed run with the same token (at the start of a run,
    long before any other rank can look for it)."""
    with contextlib.suppress(FileNotFoundError):
        part_path(output_dir, token, rank).unlink()


def write_part(output_dir: Path, token: str, rank: int, part: Mapping) -> Path:
    path = part_path(output_dir, token, rank)
    atomic_write_text(path, json.dumps(part, allow_nan=False))
    return path


def journal_part(output_dir: Path, token: str, rank: int, part: Mapping) -> None:
    """Write a rank's part while it runs. A journal that cannot be written only costs a kill's
    resumption (an unrecorded mask is redone), so the error is logged, not raised: the mask
    written next meets the same full disk and reports it."""
    try:
        write_part(output_dir, token, rank, part)
    except OSError as exc:
        log.debug("%s: journal not written (%s)", part_path(output_dir, token, rank), exc)


def collect_parts(output_dir: Path, token: str, world_size: int) -> list[dict] | None:
    """Every rank's final part of this run, or None while one is missing or still a journal
    (or another rank merged and removed them while this one read)."""
    parts = []
    for rank in range(world_size):
        try:
            part = json.loads(part_path(output_dir, token, rank).read_text())
        except FileNotFoundError:
            return None
        if not part.get("final"):
            return None
        parts.append(part)
    return parts


def _other_parts(output_dir: Path, token: str, before: float | None = None) -> list[tuple[Path, dict]]:
    """The parts of other runs (crashed ones' journals), oldest first; with ``before``, only those
    last written before it. Unreadable ones are left out."""
    found = []
    for path in Path(output_dir).glob(f"{PART_PREFIX}*.rank*.json"):
        if path.name.startswith(f"{PART_PREFIX}{token}."):
            continue
        try:
            mtime = path.stat().st_mtime
            if before is None or mtime < before:
                found.append((mtime, path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return [(path, part) for _, path, part in sorted(found, key=lambda item: (item[0], item[1].name))]


def recorded_cases(output_dir: Path, token: str) -> dict[str, Mapping]:
    """The case entries a run starts from: the record's, then those of crashed runs' journals."""
    cases = dict(read_record(output_dir)[0]["cases"])
    for _, part in _other_parts(output_dir, token):
        cases.update(part.get("cases", {}))
    return cases


def merge_into_record(output_dir: Path, parts: Sequence[Mapping]) -> Path | None:
    """Merge this run's ``parts`` into the record, after the journals of runs that crashed before
    it started (each an ``interrupted`` run entry); remove all those parts; the record's path,
    or None when there is none to write (a first run that made nothing)."""
    started = min(p["run"]["started"] for p in parts)
    token = parts[0]["run"]["id"]
    record, had_record = read_record(output_dir, quiet=True)
    crashed: dict[str, list[Mapping]] = {}
    stale = _other_parts(output_dir, token, before=started)
    for _, part in stale:  # a crashed run wrote the masks of the entries it journaled that exist
        done = {c: e for c, e in part["cases"].items() if (Path(output_dir) / e["outputs"]["mask"]).exists()}
        crashed.setdefault(part["run"]["id"], []).append({**part, "cases": done, "written": sorted(done)})
    for run_parts in crashed.values():
        record = merge_parts(record, run_parts)
    path = None
    if had_record or crashed or any(p["written"] for p in parts):
        path = write_record(output_dir, merge_parts(record, parts))
    for rank in range(len(parts)):
        with contextlib.suppress(FileNotFoundError):
            part_path(output_dir, token, rank).unlink()
    for stale_path, _ in stale:
        with contextlib.suppress(FileNotFoundError):
            stale_path.unlink()
    return path


def model_record(checkpoints: Sequence[str | os.PathLike]) -> tuple[str, dict]:
    """The model's fingerprint and its entry in the record: one checkpoint's SHA-256, or for an
    ensemble the SHA-256 of its members' SHA-256s in order (with each member listed)."""
    shas = [sha256_file(path) for path in checkpoints]
    sha = shas[0] if len(shas) == 1 else sha256_json(shas)
    entry: dict[str, Any] = {"path": str(Path(checkpoints[0]).resolve()), "sha256": sha}
    if len(shas) > 1:
        entry["members"] = [{"path": str(Path(p).resolve()), "sha256": h} for p, h in zip(checkpoints, shas)]
    return sha, entry
