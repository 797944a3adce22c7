"""What the training scans looked like, and how far a scan to predict may stray from it.

The model card keeps :class:`TrainingRanges`, taken from the training fingerprint
(:func:`brainseg.plan.fingerprint.training_ranges`); ``predict`` measures each scan the
same way and :meth:`TrainingRanges.reasons` says, in words, what is unlike anything the
model saw: a voxel size or field of view outside the training range (with a tolerance),
an inverted or foreign contrast (the sign and size of the correlation between intensity
and depth into the subject, which no scale, offset or gamma changes), an intensity
histogram of another shape, a grid more oblique than any training scan, another number
of channels. An empty list means in distribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from brainseg.io.images import Geometry
from brainseg.preprocessing.preprocess import to_ras
from brainseg.quality.scan_stats import obliquity, scan_statistics

#: A voxel size is out of range beyond this factor past the training range.
SPACING_FACTOR = 1.3
#: The subject's extent (mm) is out of range below/above these factors of the training range.
EXTENT_FACTORS = (0.7, 1.4)
#: Margin around the training range of the depth correlation and of the median's place
#: in the 1-99 percentile range.
CORRELATION_MARGIN = 0.15
PROFILE_MARGIN = 0.15
#: Degrees of obliquity beyond the training maximum.
OBLIQUITY_MARGIN = 20.0
#: The distance of a scan with another number of channels than the training scans.
OTHER_CHANNELS = 10.0


@dataclass(frozen=True)
class OodDistance:
    """How far a scan lies outside the training ranges, in units of each check's tolerance (0:
    inside every range, 1: where :meth:`TrainingRanges.reasons` starts to speak), split by what
    strays: the grid (voxel size, field of view, obliquity) or the contrast (depth correlation,
    histogram shape). Kept apart because they cost differently: thick slices on a new grid
    often segment well, an inverted contrast does not (the quality score weighs each)."""

    geometry: float = 0.0
    contrast: float = 0.0

    @property
    def overall(self) -> float:
        return max(self.geometry, self.contrast)


def _span(values: Sequence[float]) -> tuple[float, float]:
    return float(min(values)), float(max(values))


@dataclass(frozen=True)
class TrainingRanges:
    n_cases: int
    channels: int
    #: Per RAS axis [min, max] of the voxel size (mm) and of the subject's extent (mm).
    spacing: tuple[tuple[float, float], ...]
    extent_mm: tuple[tuple[float, float], ...]
    obliquity_max: float
    #: Per channel [min, max] of the depth correlation and of the median's profile position.
    depth_correlation: tuple[tuple[float, float], ...]
    median_position: tuple[tuple[float, float], ...]

    @classmethod
    def from_cases(cls, spacings, extents, obliquities, correlations, medians) -> TrainingRanges:
        """From per-case lists: RAS spacing, RAS extent, obliquity, per-channel correlations and medians."""
        n_channels = len(correlations[0])
        return cls(
            n_cases=len(spacings),
            channels=n_channels,
            spacing=tuple(_span([s[i] for s in spacings]) for i in range(3)),
            extent_mm=tuple(_span([e[i] for e in extents]) for i in range(3)),
            obliquity_max=float(max(obliquities)),
            depth_correlation=tuple(_span([c[i] for c in correlations]) for i in range(n_channels)),
            median_position=tuple(_span([m[i] for m in medians]) for i in range(n_channels)),
        )

    def reasons(self, spacing, extent, obliquity: float, correlations, medians, channel_names=()) -> list[str]:
        """Why a scan (its RAS spacing and extent, obliquity, per-channel correlations and
        median positions) is unlike the training scans; empty when it is not."""
        out = []
        if len(correlations) != self.channels:
            return [f"{len(correlations)} channel(s), the model was trained on {self.channels}"]
        lo = [r[0] / SPACING_FACTOR for r in self.spacing]
        hi = [r[1] * SPACING_FACTOR for r in self.spacing]
        if any(s < a or s > b for s, a, b in zip(spacing, lo, hi)):
            out.append(
                f"voxel size {_fmt(spacing)} mm outside training {_fmt(r[0] for r in self.spacing)}"
                f"-{_fmt(r[1] for r in self.spacing)} mm"
            )
        lo = [r[0] * EXTENT_FACTORS[0] for r in self.extent_mm]
        hi = [r[1] * EXTENT_FACTORS[1] for r in self.extent_mm]
        if any(e < a or e > b for e, a, b in zip(extent, lo, hi)):
            out.append(
                f"field of view {_fmt(extent)} mm unlike training {_fmt(r[0] for r in self.extent_mm)}"
                f"-{_fmt(r[1] for r in self.extent_mm)} mm"
            )
        if obliquity > self.obliquity_max + OBLIQUITY_MARGIN:
            out.append(f"grid oblique by {obliquity:.0f} degrees (training at most {self.obliquity_max:.0f})")
        for i, (c, (a, b)) in enumerate(zip(correlations, self.depth_correlation)):
            name = channel_names[i] if i < len(channel_names) else f"channel {i}"
            if c < a - CORRELATION_MARGIN or c > b + CORRELATION_MARGIN:
                hint = "inverted contrast?" if (c > 0) != ((a + b) / 2 > 0) else "another contrast?"
                out.append(f"{name}: inside-to-rim contrast {c:+.2f} unlike training {a:+.2f}..{b:+.2f} ({hint})")
        for i, (m, (a, b)) in enumerate(zip(medians, self.median_position)):
            name = channel_names[i] if i < len(channel_names) else f"channel {i}"
            if m < a - PROFILE_MARGIN or m > b + PROFILE_MARGIN:
                out.append(
                    f"{name}: intensity histogram unlike training (median at {m:.2f} of the 1-99% range, "
                    f"training {a:.2f}..{b:.2f})"
                )
        return out

    def distance(self, spacing, extent, obliquity: float, correlations, medians) -> float:
        """The largest part of :meth:`distances`: one number for how far the scan strays."""
        return self.distances(spacing, extent, obliquity, correlations, medians).overall

    def distances(self, spacing, extent, obliquity: float, correlations, medians) -> OodDistance:
        """How far a scan lies outside the training ranges (:class:`OodDistance`), each part the
        largest over its checks. Continuous features of the quality score, which learns how much
        straying costs instead of a yes/no that fires on ordinary scans. Another channel count
        is :data:`OTHER_CHANNELS` on both parts."""
        if len(correlations) != self.channels:
            return OodDistance(OTHER_CHANNELS, OTHER_CHANNELS)

        def beyond(value: float, lo: float, hi: float, below: float, above: float | None = None) -> float:
            return max(0.0, (lo - value) / below, (value - hi) / (below if above is None else above))

        def log_beyond(value: float, lo: float, hi: float, below: float, above: float) -> float:
            v, a, b = (float(np.log(max(x, 1e-6))) for x in (value, lo, hi))
            return beyond(v, a, b, float(np.log(below)), float(np.log(above)))

        grid = [log_beyond(s, a, b, SPACING_FACTOR, SPACING_FACTOR) for s, (a, b) in zip(spacing, self.spacing)]
        grid += [
            log_beyond(e, a, b, 1 / EXTENT_FACTORS[0], EXTENT_FACTORS[1]) for e, (a, b) in zip(extent, self.extent_mm)
        ]
        grid.append(max(0.0, obliquity - self.obliquity_max) / OBLIQUITY_MARGIN)
        contrast = [beyond(c, a, b, CORRELATION_MARGIN) for c, (a, b) in zip(correlations, self.depth_correlation)]
        contrast += [beyond(m, a, b, PROFILE_MARGIN) for m, (a, b) in zip(medians, self.median_position)]
        return OodDistance(float(max(grid)), float(max(contrast, default=0.0)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrainingRanges:
        def pairs(key):
            return tuple(tuple(float(v) for v in pair) for pair in raw[key])

        return cls(
            n_cases=int(raw["n_cases"]),
            channels=int(raw["channels"]),
            spacing=pairs("spacing"),
            extent_mm=pairs("extent_mm"),
            obliquity_max=float(raw["obliquity_max"]),
            depth_correlation=pairs("depth_correlation"),
            median_position=pairs("median_position"),
        )


def _fmt(values) -> str:
    return "x".join(f"{float(v):.3g}" for v in values)


def scan_ood(
    data: np.ndarray, geom: Geometry, ranges: TrainingRanges, channel_names=(), subject=None
) -> tuple[list[str], OodDistance]:
    """:meth:`TrainingRanges.reasons` and :meth:`TrainingRanges.distances` of a (C, X, Y, Z) scan as
    read (``subject``: its subject mask, if known), measured once."""
    channels, extent, _ = scan_statistics(data, geom, subject)
    measured = (
        to_ras(geom.spacing, geom),
        extent,
        obliquity(geom.affine),
        [c.depth_correlation for c in channels],
        [c.profile[2] for c in channels],
    )
    return ranges.reasons(*measured, channel_names), ranges.distances(*measured)


def scan_reasons(data: np.ndarray, geom: Geometry, ranges: TrainingRanges, channel_names=(), subject=None) -> list[str]:
    """:meth:`TrainingRanges.reasons` for a (C, X, Y, Z) scan as read (``subject``: its subject mask, if known)."""
    return scan_ood(data, geom, ranges, channel_names, subject)[0]
