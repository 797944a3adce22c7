"""A label map as a DICOM Segmentation (SEG) object that references its source series.

Written with highdicom (the optional extra ``dicom``: ``pip install 'brainseg[dicom]'``).
The label map is in the series' voxel order (:func:`brainseg.io.images.read_image` of
the series), so its third axis runs through the slices as
:func:`~brainseg.io.dicom.read_series_header` ordered them, and slice ``k`` is frame
``k`` of the source. Each label value other than 0 is one segment, named as the model
names it, numbered 1, 2, ... in value order; frames with no voxel of a segment are left
out (BINARY segmentation, as highdicom stores a label map by default).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from brainseg.errors import InputError
from brainseg.io.atomic import atomic_path
from brainseg.io.dicom import DicomSeries, read_series_header

#: What ``brainseg predict --dicom-seg`` adds to a case id.
SEG_SUFFIX = "_seg.dcm"
INSTALL_HINT = "writing a DICOM SEG needs highdicom: pip install 'brainseg[dicom]'"


def highdicom_available() -> bool:
    """True when highdicom (and so pydicom) can be imported."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        return False
    return True


def write_dicom_seg(
    path: str | os.PathLike,
    labels: np.ndarray,
    series: DicomSeries,
    segments: Mapping[int, str],
    software_version: str,
    algorithm: str = "brainseg",
) -> Path:
    """Write ``labels`` (the series' shape, label values) as a DICOM SEG at ``path``, atomically.

    ``segments`` names the label values (0, the background, is left out). Raises
    :class:`InputError` naming the series when highdicom is missing or cannot build the
    object from this series (a missing attribute, say); nothing is written then.
    """
    try:
        import highdicom as hd
        from pydicom import dcmread
        from pydicom.sr.codedict import codes
    except ImportError:
        raise InputError(series, INSTALL_HINT) from None
    path = Path(path)
    header = read_series_header(series)
    if len(header.files) < 2:
        raise InputError(series, "no DICOM SEG for a multi-frame source (one file per slice is supported)")
    values = sorted(int(v) for v in segments if int(v) != 0)
    if not values:
        raise InputError(series, "no DICOM SEG: the model has no label besides the background")
    labels = np.asarray(labels)
    if labels.shape != header.itk.size:
        raise ValueError(f"labels of shape {labels.shape} for a series of {header.itk.size}")
    numbers = np.zeros(int(max(values, default=0)) + 1, dtype=np.uint16)
    numbers[values] = np.arange(1, len(values) + 1)
    inside = np.isin(labels, values)
    frames = np.where(inside, numbers[np.where(inside, labels, 0).astype(np.int64)], 0)
    frames = np.ascontiguousarray(np.transpose(frames, (2, 1, 0)))  # (slices, rows, columns)
    frames = frames.astype(np.uint8 if len(values) < 256 else np.uint16)
    try:
        sources = [dcmread(str(f), stop_before_pixels=True) for f in header.files]
        algorithm_id = hd.AlgorithmIdentificationSequence(
            name=algorithm, family=codes.DCM.ArtificialIntelligence, version=software_version
        )
        descriptions = [
            hd.seg.SegmentDescription(
                segment_number=i + 1,
                segment_label=str(segments[v])[:64],
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm_id,
            )
            for i, v in enumerate(values)
        ]
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="brainseg",
            manufacturer_model_name=algorithm,
            software_versions=software_version,
            device_serial_number="none",
            series_description=f"{algorithm} segmentation"[:64],
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(series, f"no DICOM SEG written: highdicom cannot build it from this series ({exc})") from None
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return path
