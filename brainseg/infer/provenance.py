"""Provenance of ``brainseg predict``: ``OUT/brainseg_run.json``, and one record per torchrun run.

The record says how every mask in the folder was made, so a result can be traced and a rerun
redoes exactly what changed::

    {"format": 1,
     "runs": [{"id", "command", "brainseg", "versions" (torch, monai, ...), "devices" (by rank),
               "world_size", "model": {"path", "sha256"}, "config" (infer, postprocess),
               "started", "finished" (UTC, ISO 8601), "seconds", "written", "skipped", "failed"}],
     "cases": {ID: {"inputs": [{"path", "sha256"}] (channel order), "outputs": {kind: file name},
                    "model_sha256", "config_sha256", "seconds", "run" (the run's id)}}}

It accumulates: a run adds its entry to ``runs`` and replaces the entries of the cases it
wrote; the cases it skipped keep theirs; a case that failed loses its entry (its outputs,
if any, no longer match a record, so the next run tries it again). A case is skipped only
when its outputs exist and its entry names the same input hashes, model hash and settings
(:func:`is_current`). The record is written (atomically) when the run wrote a case or the
folder already has one; a first run that produced nothing leaves no record.

Under torchrun each rank predicts its share and writes its part, ``.brainseg_run.<token>.rank<r>.json``
(atomic, hidden). Whichever rank, after writing its own, finds all ``world_size`` parts of its
run merges them into the record and ``volumes.csv`` and removes the parts; nothing waits
(a rank that crashed leaves the run unmerged rather than the others blocked). Two ranks
may both merge: the merge replaces the run's entry by its id, so both write the same files.
The token that tells this run's parts from a crashed run's is derived from torchrun's
environment (:func:`run_token`); on several nodes give torchrun an ``--rdzv-id`` of its own per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from brainseg.io.atomic import atomic_write_text

log = logging.getLogger(__name__)

RUN_RECORD = "brainseg_run.json"
RECORD_FORMAT = 1
PART_PREFIX = ".brainseg_run."
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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


def is_current(entry: Mapping | None, inputs: Sequence[Mapping], model_sha256: str, config_sha256: str) -> bool:
    """Whether a case's recorded entry was made from these inputs (by content, in channel
    order), this model and these settings: only then may its existing outputs be kept."""
    if not isinstance(entry, Mapping):
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


# ----------------------------------------------------------------------------- torchrun parts


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


def collect_parts(output_dir: Path, token: str, world_size: int) -> list[dict] | None:
    """Every rank's part of this run, or None while one is missing (or another rank merged
    and removed them while this one read)."""
    parts = []
    for rank in range(world_size):
        try:
            parts.append(json.loads(part_path(output_dir, token, rank).read_text()))
        except FileNotFoundError:
            return None
    return parts


def remove_parts(output_dir: Path, token: str, world_size: int, started: float) -> None:
    """Remove this run's parts, and parts of other runs older than its start (crashed runs)."""
    for rank in range(world_size):
        with contextlib.suppress(FileNotFoundError):
            part_path(output_dir, token, rank).unlink()
    for stale in Path(output_dir).glob(f"{PART_PREFIX}*.rank*.json"):
        with contextlib.suppress(OSError):
            if stale.stat().st_mtime < started:
                stale.unlink()
