"""The exported network computes what brainseg computes: TorchScript (``torch.jit.load``) and ONNX
(onnxruntime) on windows of a scan-like volume, plain and with the normalisation in the graph.
Agreement is to 1e-4, absolute, for the logits (which reach tens: the tiny network's head is
scaled up twentyfold) as for the probabilities.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brainseg.errors import BrainsegError
from brainseg.labels.regions import Regions
from brainseg.model.card import ModelCard, Normalization
from brainseg.model.checkpoint import load_model
from brainseg.model.export import card_path, export_model, parse_format
from brainseg.preprocessing.normalisation import ChannelIntensity, normalise, zscore_foreground
from tests.conftest import ct_volume, sequences

ort = pytest.importorskip("onnxruntime")

TOL = 1e-4
#: Window corners in the 24^3 volume (16^3 windows, the tiny card's patch): overlapping, at the edges.
CORNERS = [(0, 0, 0), (8, 8, 8), (8, 0, 4), (0, 8, 8)]
BRATS = Regions(("WT", "TC", "ET"), ((1, 2, 4), (1, 4), (4,)), (2, 1, 4))
BRATS_LABELS = {"0": "background", "1": "necrosis", "2": "oedema", "4": "enhancing"}


def _volume(channels: tuple[str, ...]) -> np.ndarray:
    """(1, C, 24, 24, 24) raw intensities of a head with a zero background (one sequence per channel)."""
    seq = sequences()
    names = {"T1": "T1w", "T2": "T2w", "FLAIR": "FLAIR", "T1CE": "t1gd"}
    return np.stack([seq[names[c]] for c in channels])[None].astype(np.float32)


def _windows(volume: np.ndarray, size: int = 16) -> list[np.ndarray]:
    return [np.ascontiguousarray(volume[..., x : x + size, y : y + size, z : z + size]) for x, y, z in CORNERS]


def _runner(path: Path, fmt: str):
    """A function numpy (N, C, X, Y, Z) -> numpy output of the exported file, loaded as a user would."""
    if fmt == "torchscript":
        module = torch.jit.load(str(path))
        return lambda x: module(torch.from_numpy(x)).detach().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})[0]


def _network(checkpoint: Path):
    model, card = load_model(checkpoint)
    return (lambda x: model(torch.from_numpy(x)).detach().numpy()), card


def _probabilities(logits: np.ndarray, card: ModelCard) -> np.ndarray:
    t = torch.from_numpy(logits)
    return (torch.sigmoid(t) if card.regions is not None else torch.softmax(t, dim=1)).numpy()


def _brainseg_normalise(raw: np.ndarray, card: ModelCard) -> np.ndarray:
    """brainseg's own normalisation of each (C, X, Y, Z) sample: the zero-background zscore, or ``ct``."""
    if card.normalization.scheme == "ct":
        return np.stack([normalise(s, np.ones(s.shape[1:], bool), "ct", card.intensity)[0] for s in raw])
    return np.stack([zscore_foreground(s)[0] for s in raw])


def _assert_close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("variant", ["labels", "regions", "two_channels"])
def test_exported_network_matches_pytorch_on_windows(tiny_checkpoint_factory, tmp_path, fmt, variant):
    kwargs = {
        "labels": dict(channels=("T1",)),
        "regions": dict(channels=("FLAIR", "T1CE"), labels=BRATS_LABELS, regions=BRATS),
        "two_channels": dict(channels=("T1", "T2"), seed=7),
    }[variant]
    checkpoint = tiny_checkpoint_factory(**kwargs)
    network, card = _network(checkpoint)
    out = tmp_path / ("net.pt" if fmt == "torchscript" else "net.onnx")
    result = export_model(checkpoint, out, parse_format(fmt))
    exported = _runner(out, fmt)

    normalised = np.stack([zscore_foreground(s)[0] for s in _volume(card.channels)])
    windows = _windows(normalised)
    for window in windows:
        expected = network(window)
        assert expected.shape == (1, card.num_classes, 16, 16, 16)
        assert np.ptp(expected) > 1.0  # a real output, not a constant
        _assert_close(exported(window), expected)
    batch = np.concatenate(windows[:2])  # dynamic batch
    _assert_close(exported(batch), network(batch))
    _assert_close(exported(normalised), network(normalised))  # dynamic sides: the whole 24^3 volume
    assert result.example_shape == (1, len(card.channels), 16, 16, 16)

    written = json.loads(card_path(out).read_text())
    assert card_path(out) == tmp_path / f"{out.name}.card.json"
    assert ModelCard.from_dict(written) == card  # the card, readable as one
    assert written["sha256"] == hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    assert written["export"]["output"]["name"] == "logits" and written["export"]["input"]["multiple_of"] == [2, 2, 2]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("variant", ["zscore", "regions", "two_channels", "ct"])
def test_with_preprocessing_matches_brainseg_normalisation_and_network(tiny_checkpoint_factory, tmp_path, fmt, variant):
    ct_stats = ChannelIntensity(mean=35.0, std=180.0, percentile_00_5=-100.0, percentile_99_5=900.0)
    kwargs = {
        "zscore": dict(channels=("T1",)),
        "regions": dict(channels=("FLAIR", "T1CE"), labels=BRATS_LABELS, regions=BRATS),
        "two_channels": dict(channels=("T1", "T2"), seed=7),
        "ct": dict(channels=("CT",), normalization=Normalization(scheme="ct"), intensity=(ct_stats,)),
    }[variant]
    checkpoint = tiny_checkpoint_factory(**kwargs)
    network, card = _network(checkpoint)
    out = tmp_path / ("full.pt" if fmt == "torchscript" else "full.onnx")
    export_model(checkpoint, out, parse_format(fmt), with_preprocessing=True)
    exported = _runner(out, fmt)

    if variant == "ct":  # a CT-like scan: air at -1000, a bone shell at 1000, water stored as 0 HU
        raw = ct_volume(seed=1)[0][None, None, 12:36, 12:36, 8:32].copy()
    else:
        raw = _volume(card.channels)
    for sample in [raw, *_windows(raw)]:  # the whole volume, and windows (each normalised on its own)
        expected = _probabilities(network(_brainseg_normalise(sample, card)), card)
        got = exported(sample)
        _assert_close(got, expected)
        if card.regions is None:
            np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
        assert got.max() - got.min() > 0.5  # confident somewhere, not uniform
    assert json.loads(card_path(out).read_text())["export"]["output"]["activation"] == (
        "sigmoid" if variant == "regions" else "softmax"
    )


def test_a_scheme_the_graph_cannot_express_is_refused_and_nothing_is_written(tiny_checkpoint_factory, tmp_path):
    checkpoint = tiny_checkpoint_factory(normalization=Normalization(scheme="quantile"))
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    with pytest.raises(BrainsegError, match=r"'quantile' normalisation cannot be expressed") as err:
        export_model(checkpoint, out, "onnx", with_preprocessing=True)
    assert "\n" not in str(err.value)
    assert out.read_bytes() == b"an earlier export" and not card_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    export_model(checkpoint, out, "onnx")  # the network alone is fine
    assert out.read_bytes()[:20] != b"an earlier export"[:20] and card_path(out).is_file()


def test_bad_format_and_bad_out_are_one_line_each(tiny_checkpoint, tmp_path):
    with pytest.raises(BrainsegError, match=r"cannot export as 'tflite': --format must be one of torchscript, onnx"):
        export_model(tiny_checkpoint, tmp_path / "m.tflite", "tflite")  # type: ignore[arg-type]
    with pytest.raises(BrainsegError, match=r"is the checkpoint being exported"):
        export_model(tiny_checkpoint, tiny_checkpoint, "torchscript")
    with pytest.raises(BrainsegError, match=r"is a folder"):
        export_model(tiny_checkpoint, tmp_path, "torchscript")
    assert list(tmp_path.iterdir()) == []
