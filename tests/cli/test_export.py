"""``brainseg export`` as users run it: the file and its card written, a bad format one line, and a
write that fails (the disk full, as far as the process can tell) leaves no partial file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from brainseg.model.checkpoint import load_model
from brainseg.preprocessing.normalisation import zscore_foreground
from tests.cli.conftest import cli, error_lines, file_size_limit, phantom

ort = pytest.importorskip("onnxruntime")


def test_onnx_and_torchscript_of_a_run_folder(tiny_checkpoint: Path, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "checkpoint_final.pt")
    model, card = load_model(run)
    raw = phantom()[None, None, :16, :16, :16].copy()  # the tiny patch, cut from a head

    onnx_file = tmp_path / "out" / "model.onnx"
    proc = cli("export", run, "--format", "onnx", "--out", onnx_file, "--with-preprocessing")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"brainseg export: onnx (with preprocessing) written to {onnx_file}, card {onnx_file}.card.json"
    )
    got = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(None, {"image": raw})[0]
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(zscore_foreground(raw[0])[0][None])), dim=1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    exported = json.loads(Path(f"{onnx_file}.card.json").read_text())["export"]
    assert exported["format"] == "onnx" and exported["with_preprocessing"] is True

    script = tmp_path / "model.pt"
    proc = cli("export", run, "--checkpoint", "final", "--format", "torchscript", "--out", script)
    assert proc.returncode == 0, proc.stderr
    normalised = torch.from_numpy(zscore_foreground(raw[0])[0][None])
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(script))(normalised), model(normalised), atol=1e-4, rtol=0)


def test_bad_format_is_one_line_and_writes_nothing(tiny_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "model.tflite"
    proc = cli("export", tiny_checkpoint, "--format", "tflite", "--out", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr, "brainseg: error:") == [
        f"brainseg: error: {out}: cannot export as 'tflite': --format must be one of torchscript, onnx"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("earlier", [None, b"an earlier export"])
def test_a_failed_write_leaves_no_partial_file(tiny_checkpoint: Path, tmp_path: Path, earlier: bytes | None):
    out = tmp_path / "model.onnx"
    if earlier is not None:
        out.write_bytes(earlier)
    # any file past 8 kB fails with EFBIG: the ONNX file (tens of kB) cannot be written, its card could
    proc = cli("export", tiny_checkpoint, "--format", "onnx", "--out", out, preexec_fn=file_size_limit(8192))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = error_lines(proc.stderr, "brainseg: error:")
    assert len(lines) == 1 and lines[0].startswith(f"brainseg: error: {out}: cannot be written"), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if earlier is None else ["model.onnx"])
    if earlier is not None:
        assert out.read_bytes() == earlier
