"""brainseg.io.images on real files: geometry round trips, other formats, and bad inputs.

Every test writes genuine NIfTI / MetaImage / NRRD files into ``tmp_path`` (or reads
the test files nibabel and dipy ship) and checks what brainseg reads back, with
nibabel or SimpleITK as the independent reference. A header that stores no orientation
is read with a warning naming the file and what is assumed.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.errors import BrainsegError, InputError
from brainseg.io.images import Geometry, read_channels, read_image, read_label, write_image
from tests.conftest import CT_SHAPE, ct_volume, save_ct

ATOL = 1e-5


def make_affine(code: str, spacing, origin=(0.0, 0.0, 0.0), tilt_deg: float = 0.0) -> np.ndarray:
    """Voxel-to-RAS affine for axis code ``code``, voxel sizes ``spacing``, optional tilt."""
    ornt = nib.orientations.axcodes2ornt(tuple(code))
    direction = np.zeros((3, 3))
    for axis, (world, flip) in enumerate(ornt):
        direction[int(world), axis] = flip
    if tilt_deg:
        t = math.radians(tilt_deg)
        rx = np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
        rz = np.array([[math.cos(t / 2), -math.sin(t / 2), 0], [math.sin(t / 2), math.cos(t / 2), 0], [0, 0, 1]])
        direction = rz @ rx @ direction
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def ramp(shape, dtype=np.float32) -> np.ndarray:
    """Distinct values per voxel, so any axis mix-up changes the array."""
    return np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape).astype(dtype)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, qform_code=1, sform_code=1, header=None) -> Path:
    img = nib.Nifti1Image(data, None, header=header if header is not None else nib.Nifti1Header())
    img.header.set_data_dtype(data.dtype)
    img.header.set_qform(affine if qform_code else None, code=qform_code)
    img.header.set_sform(affine if sform_code else None, code=sform_code)
    nib.save(img, str(path))
    return path


def assert_same_geometry(a: Geometry, b: Geometry) -> None:
    assert tuple(a.shape) == tuple(b.shape)
    np.testing.assert_allclose(a.affine, b.affine, atol=ATOL, rtol=0)


def roundtrip(src: Path, out: Path, dtype=None) -> tuple[np.ndarray, Geometry, np.ndarray, Geometry]:
    """read_image(src) -> write_image(out) -> read_image(out)."""
    data, geom = read_image(src)
    write_image(out, data, geom, dtype=dtype)
    data2, geom2 = read_image(out)
    return data, geom, data2, geom2


GRIDS = {
    "RAS-1mm": make_affine("RAS", (1.0, 1.0, 1.0), (-90, -126, -72)),
    "LAS-1.2x1.0x2.0": make_affine("LAS", (1.2, 1.0, 2.0), (80, -100, -60)),
    "LPS-aniso": make_affine("LPS", (0.9, 0.9, 3.0), (100, 110, -40)),
    "PIR-aniso": make_affine("PIR", (1.5, 1.1, 1.3), (40, 60, -70)),
    "oblique-RAS": make_affine("RAS", (1.0, 1.0, 1.0), (-90, -120, -60), tilt_deg=12.0),
    "oblique-ASL-aniso": make_affine("ASL", (2.1, 1.3, 0.8), (-50, 30, 70), tilt_deg=-7.0),
}


@pytest.mark.parametrize("name", list(GRIDS))
def test_roundtrip_keeps_geometry(tmp_path, name):
    affine = GRIDS[name]
    shape = (7, 9, 5)
    src = save_nifti(tmp_path / "in.nii.gz", ramp(shape), affine)
    data, geom, data2, geom2 = roundtrip(src, tmp_path / "out.nii.gz")

    np.testing.assert_allclose(geom.affine, affine, atol=ATOL, rtol=0)
    assert geom.shape == shape
    assert geom.axcodes == nib.aff2axcodes(affine)
    np.testing.assert_allclose(geom.spacing, np.linalg.norm(affine[:3, :3], axis=0), atol=ATOL)
    assert_same_geometry(geom2, geom)
    np.testing.assert_array_equal(data2, data)
    np.testing.assert_array_equal(data, ramp(shape))
    # Independent check: nibabel itself sees the same grid in the written file.
    written = nib.load(str(tmp_path / "out.nii.gz"))
    np.testing.assert_allclose(written.affine, affine, atol=ATOL, rtol=0)
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 1)


def test_las_anisotropic_case_explicitly(tmp_path):
    affine = make_affine("LAS", (1.2, 1.0, 2.0), (80, -100, -60))
    src = save_nifti(tmp_path / "las.nii", ramp((6, 8, 4), np.int16), affine)
    data, geom, _, geom2 = roundtrip(src, tmp_path / "las_out.nii.gz")
    assert geom.axcodes == ("L", "A", "S")
    np.testing.assert_allclose(geom.spacing, (1.2, 1.0, 2.0), atol=ATOL)
    assert geom2.axcodes == ("L", "A", "S")
    np.testing.assert_allclose(geom2.spacing, (1.2, 1.0, 2.0), atol=ATOL)
    np.testing.assert_allclose(geom2.affine, affine, atol=ATOL, rtol=0)
    # A label map written for this scan lies on the very same grid.
    write_image(tmp_path / "mask.nii.gz", (data > 50).astype(np.uint8), geom)
    mask, mgeom = read_label(tmp_path / "mask.nii.gz")
    assert mgeom.same_grid(geom, atol=ATOL)
    np.testing.assert_array_equal(mask, (data > 50).astype(np.int16))
    assert nib.load(str(tmp_path / "mask.nii.gz")).get_data_dtype() == np.uint8


def test_big_endian_input(tmp_path):
    affine = GRIDS["LAS-1.2x1.0x2.0"]
    data = ramp((5, 6, 7), np.int16)
    header = nib.Nifti1Header(endianness=">")
    src = save_nifti(tmp_path / "be.nii", data, affine, header=header)
    assert nib.load(str(src)).header.endianness == ">"  # the input really is big-endian

    read, geom, read2, geom2 = roundtrip(src, tmp_path / "be_out.nii.gz")
    np.testing.assert_array_equal(read, data.astype(np.float32))
    np.testing.assert_allclose(geom.affine, affine, atol=ATOL, rtol=0)
    assert_same_geometry(geom2, geom)
    np.testing.assert_array_equal(read2, read)
    assert nib.load(str(tmp_path / "be_out.nii.gz")).header.endianness == "<"


@pytest.mark.parametrize(
    "qcode, scode",
    [(1, 0), (2, 0), (0, 1), (0, 2), (1, 4)],
    ids=["qform-only-1", "qform-only-2", "sform-only-1", "sform-only-2", "both-1-4"],
)
def test_form_codes_survive(tmp_path, qcode, scode):
    affine = GRIDS["oblique-ASL-aniso"]
    src = save_nifti(tmp_path / "in.nii.gz", ramp((4, 5, 6)), affine, qform_code=qcode, sform_code=scode)
    _, geom, _, geom2 = roundtrip(src, tmp_path / "out.nii.gz")
    assert (geom.qform_code, geom.sform_code) == (qcode, scode)
    assert (geom2.qform_code, geom2.sform_code) == (qcode, scode)
    np.testing.assert_allclose(geom.affine, affine, atol=ATOL, rtol=0)
    assert_same_geometry(geom2, geom)
    written = nib.load(str(tmp_path / "out.nii.gz")).header
    assert (int(written["qform_code"]), int(written["sform_code"])) == (qcode, scode)


def test_sheared_sform_only_is_kept_exactly(tmp_path):
    # A qform cannot hold a shear; an sform-only file must keep it.
    affine = GRIDS["LPS-aniso"].copy()
    affine[0, 1] = 0.25
    src = save_nifti(tmp_path / "shear.nii.gz", ramp((4, 5, 6)), affine, qform_code=0, sform_code=2)
    _, geom, _, geom2 = roundtrip(src, tmp_path / "out.nii.gz")
    np.testing.assert_allclose(geom.affine, affine, atol=ATOL, rtol=0)
    np.testing.assert_allclose(geom2.affine, affine, atol=ATOL, rtol=0)
    assert (geom2.qform_code, geom2.sform_code) == (0, 2)


def test_geometry_without_header_writes_code_1(tmp_path):
    affine = GRIDS["PIR-aniso"]
    geom = Geometry(shape=(3, 4, 5), affine=affine)
    write_image(tmp_path / "x.nii.gz", ramp((3, 4, 5)), geom)
    data, back = read_image(tmp_path / "x.nii.gz")
    np.testing.assert_allclose(back.affine, affine, atol=ATOL, rtol=0)
    assert (back.qform_code, back.sform_code) == (1, 1)
    np.testing.assert_array_equal(data, ramp((3, 4, 5)))


def test_4d_with_singleton_axis_reads_as_3d(tmp_path):
    affine = GRIDS["LPS-aniso"]
    data = ramp((6, 7, 8, 1))
    src = save_nifti(tmp_path / "4d.nii.gz", data, affine)
    assert nib.load(str(src)).shape == (6, 7, 8, 1)
    read, geom, read2, geom2 = roundtrip(src, tmp_path / "out.nii.gz")
    assert read.shape == (6, 7, 8) and geom.shape == (6, 7, 8)
    np.testing.assert_array_equal(read, data[..., 0])
    assert read2.shape == (6, 7, 8)
    assert_same_geometry(geom2, geom)


def test_4d_with_several_volumes_is_refused(tmp_path):
    src = save_nifti(tmp_path / "multi.nii.gz", ramp((4, 5, 6, 3)), GRIDS["RAS-1mm"])
    with pytest.raises(InputError, match="4D") as err:
        read_image(src)
    assert err.value.path == str(src)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_read_to_ras_affine(tmp_path, suffix):
    sitk = pytest.importorskip("SimpleITK")
    arr = ramp((5, 6, 7))  # SimpleITK order (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.2, 0.9, 2.5))
    img.SetOrigin((12.5, -30.0, 41.0))
    t = math.radians(9.0)
    # An oblique, permuted direction cosine matrix (LPS world, as ITK uses).
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    perm = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)
    img.SetDirection(tuple((rot @ perm).ravel()))
    sitk.WriteImage(img, str(tmp_path / f"scan{suffix}"))
    sitk.WriteImage(img, str(tmp_path / "scan_ref.nii.gz"))

    ref = nib.load(str(tmp_path / "scan_ref.nii.gz"))
    data, geom = read_image(tmp_path / f"scan{suffix}")
    assert geom.shape == ref.shape == (7, 6, 5)
    np.testing.assert_allclose(geom.affine, ref.affine, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(data, np.asarray(ref.dataobj, dtype=np.float32))
    # A mask written for the .mha/.nrrd scan lands on its grid.
    write_image(tmp_path / "mask.nii.gz", (data > 100).astype(np.uint8), geom)
    _, mgeom = read_label(tmp_path / "mask.nii.gz")
    assert_same_geometry(mgeom, geom)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _shipped(package: str, relative: str):
    root = _package_dir(package)
    path = None if root is None else root / relative
    marks = [] if path is not None and path.is_file() else [pytest.mark.skip(reason=f"{package} lacks {relative}")]
    return pytest.param(path, id=f"{package}:{Path(relative).name}", marks=marks)


SHIPPED_3D = [
    _shipped("nibabel", "tests/data/anatomical.nii"),  # big-endian, qform 2 / sform 2
    _shipped("nibabel", "tests/data/standard.nii.gz"),  # qform 0 / sform 2
    _shipped("nibabel", "tests/data/reoriented_anat_moved.nii"),
    _shipped("dipy", "data/files/aniso_vox.nii.gz"),  # LPS, anisotropic
    _shipped("dipy", "data/files/test_piesno.nii.gz"),
    _shipped("dipy", "data/files/S0_10slices.nii.gz"),  # 4D with a singleton 4th axis
]


@pytest.mark.parametrize("path", SHIPPED_3D)
def test_shipped_files_roundtrip(tmp_path, path):
    original = nib.load(str(path))
    data, geom, data2, geom2 = roundtrip(path, tmp_path / "out.nii.gz")
    written = nib.load(str(tmp_path / "out.nii.gz"))

    assert geom.shape == original.shape[:3]
    np.testing.assert_array_equal(geom.affine, original.affine)
    assert geom2.shape == geom.shape
    np.testing.assert_array_equal(geom2.affine, geom.affine)
    np.testing.assert_array_equal(written.affine, original.affine)
    for form in ("qform_code", "sform_code"):
        assert int(written.header[form]) == int(original.header[form])
    np.testing.assert_allclose(written.header.get_qform(), original.header.get_qform(), atol=ATOL)
    np.testing.assert_allclose(written.header.get_sform(), original.header.get_sform(), atol=ATOL)
    expected = np.asarray(original.dataobj, dtype=np.float32).reshape(geom.shape)
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_array_equal(data2, data)


@pytest.mark.parametrize("path", [_shipped("nibabel", "tests/data/example_nifti2.nii.gz")])
def test_nifti2_roundtrip(tmp_path, path):
    original = nib.load(str(path))
    assert isinstance(original, nib.Nifti2Image)
    # The shipped file holds two volumes: brainseg refuses it, naming the file ...
    with pytest.raises(InputError) as err:
        read_image(path)
    assert err.value.path == str(path)
    # ... and its first volume, with the same NIfTI-2 header, round-trips exactly.
    first = nib.Nifti2Image(np.asarray(original.dataobj)[..., 0], None, header=original.header.copy())
    src = tmp_path / "nifti2_3d.nii.gz"
    nib.save(first, str(src))
    data, geom, data2, geom2 = roundtrip(src, tmp_path / "out.nii.gz")
    written = nib.load(str(tmp_path / "out.nii.gz"))
    assert isinstance(written, nib.Nifti2Image)
    assert geom.shape == original.shape[:3] == geom2.shape
    np.testing.assert_array_equal(geom.affine, original.affine)
    np.testing.assert_array_equal(written.affine, original.affine)
    for form in ("qform_code", "sform_code"):
        assert int(written.header[form]) == int(original.header[form])
    np.testing.assert_array_equal(data2, np.asarray(original.dataobj, dtype=np.float32)[..., 0])


def test_read_channels_stacks_and_names_the_odd_file(tmp_path):
    affine = GRIDS["LAS-1.2x1.0x2.0"]
    a = save_nifti(tmp_path / "case_0000.nii.gz", ramp((4, 5, 6)), affine)
    b = save_nifti(tmp_path / "case_0001.nii.gz", ramp((4, 5, 6)) * 2, affine)
    stacked, geom = read_channels([a, b])
    assert stacked.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(stacked[1], ramp((4, 5, 6)) * 2)
    assert geom.path == str(a)

    shifted = affine.copy()
    shifted[:3, 3] += (0.0, 2.0, 0.0)
    c = save_nifti(tmp_path / "case_0002.nii.gz", ramp((4, 5, 6)), shifted)
    with pytest.raises(InputError) as err:
        read_channels([a, b, c])
    assert err.value.path == str(c)
    assert "case_0002.nii.gz" in str(err.value) and "case_0000.nii.gz" in str(err.value)

    d = save_nifti(tmp_path / "case_0003.nii.gz", ramp((4, 5, 7)), affine)
    with pytest.raises(InputError) as err:
        read_channels([a, d])
    assert err.value.path == str(d)


def test_read_label_accepts_whole_numbers_and_rejects_fractions(tmp_path):
    affine = GRIDS["PIR-aniso"]
    labels = (ramp((4, 5, 6)) % 4).astype(np.float32)
    good = save_nifti(tmp_path / "good.nii.gz", labels, affine)
    read, _ = read_label(good)
    assert read.dtype == np.int16
    np.testing.assert_array_equal(read, labels.astype(np.int16))

    fractional = labels.copy()
    fractional[1, 2, 3] = 1.5
    bad = save_nifti(tmp_path / "soft.nii.gz", fractional, affine)
    with pytest.raises(InputError, match="non-integer") as err:
        read_label(bad)
    assert err.value.path == str(bad)

    negative = labels.copy()
    negative[0, 0, 0] = -1
    neg = save_nifti(tmp_path / "neg.nii.gz", negative, affine)
    with pytest.raises(InputError, match="out of range") as err:
        read_label(neg)
    assert err.value.path == str(neg)


def test_write_image_failure_keeps_target(tmp_path):
    # The final rename fails (the target is a folder): nothing is replaced or left behind.
    target = tmp_path / "case.nii.gz"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(OSError):
        write_image(target, ramp((3, 4, 5)), Geometry((3, 4, 5), np.eye(4)))
    assert target.is_dir() and (target / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz"]


def test_write_image_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="does not match"):
        write_image(tmp_path / "x.nii.gz", np.zeros((3, 4, 6)), Geometry((3, 4, 5), np.eye(4)))
    assert list(tmp_path.iterdir()) == []


def _assert_names_file(err: pytest.ExceptionInfo, path: Path) -> None:
    assert isinstance(err.value, BrainsegError)
    assert err.value.path == str(path)
    assert str(path) in str(err.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.touch()
    with pytest.raises(InputError, match="empty") as err:
        read_image(path)
    _assert_names_file(err, path)


@pytest.mark.parametrize("name", ["notes.nii", "notes.nii.gz", "notes.mha"])
def test_not_an_image(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is a text file, not a scan\n" * 40)
    with pytest.raises(InputError) as err:
        read_image(path)
    _assert_names_file(err, path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG....")
    with pytest.raises(InputError, match="unsupported") as err:
        read_image(path)
    _assert_names_file(err, path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(InputError, match="not found") as err:
        read_image(path)
    _assert_names_file(err, path)


@pytest.mark.parametrize("name", ["cut.nii.gz", "cut.nii"])
def test_truncated_file(tmp_path, name):
    rng = np.random.default_rng(0)
    path = save_nifti(tmp_path / name, rng.normal(size=(30, 30, 30)).astype(np.float32), GRIDS["RAS-1mm"])
    raw = path.read_bytes()
    if name.endswith(".gz"):
        assert len(gzip.decompress(raw)) > 100_000  # a real gzip stream, now cut in half
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as err:
        read_image(path)
    _assert_names_file(err, path)


def test_2d_image(tmp_path):
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 12), np.float32), np.eye(4)), str(path))
    with pytest.raises(InputError, match="2D") as err:
        read_image(path)
    _assert_names_file(err, path)


def test_nan_voxels(tmp_path):
    data = ramp((4, 5, 6))
    data[1, 1, 1] = np.nan
    data[2, 2, 2] = np.inf
    path = save_nifti(tmp_path / "nan.nii.gz", data, GRIDS["RAS-1mm"])
    with pytest.raises(InputError, match="NaN") as err:
        read_image(path)
    _assert_names_file(err, path)
    assert "2 NaN" in str(err.value)


@pytest.mark.parametrize("path", [_shipped("nibabel", "tests/data/resampled_anat_moved.nii")])
def test_shipped_file_with_nan_is_refused(path):
    # nibabel's resampled test image has NaN outside the resampled field of view.
    assert not np.isfinite(np.asarray(nib.load(str(path)).dataobj)).all()
    with pytest.raises(InputError, match="NaN") as err:
        read_image(path)
    _assert_names_file(err, path)
    data, _ = read_image(path, check_finite=False)
    assert data.shape == nib.load(str(path)).shape


def test_singular_affine(tmp_path):
    path = save_nifti(tmp_path / "flat.nii.gz", ramp((4, 5, 6)), np.zeros((4, 4)), qform_code=0, sform_code=1)
    assert abs(np.linalg.det(nib.load(str(path)).affine[:3, :3])) < 1e-12
    with pytest.raises(InputError, match="singular") as err:
        read_image(path)
    _assert_names_file(err, path)


def test_huge_claimed_volume_is_refused_before_reading(tmp_path):
    # A 4 kB file whose header claims 3000^3 voxels: refused from the header alone.
    header = nib.Nifti1Header()
    header.set_data_shape((3000, 3000, 3000))
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), code=1)
    path = tmp_path / "huge.nii"
    with open(path, "wb") as fh:
        header.write_to(fh)
        fh.write(b"\0" * 4096)
    assert nib.load(str(path)).shape == (3000, 3000, 3000)
    with pytest.raises(InputError, match="above the limit") as err:
        read_image(path)
    _assert_names_file(err, path)

    small = save_nifti(tmp_path / "small.nii.gz", ramp((10, 10, 10)), np.eye(4))
    with pytest.raises(InputError, match="1,000 voxels") as err:
        read_image(small, max_voxels=999)
    _assert_names_file(err, small)
    assert read_image(small, max_voxels=1000)[0].shape == (10, 10, 10)


def _write(path: Path, code: int) -> Path:
    affine = np.diag([1.2, 1.2, 2.0, 1.0])
    img = nib.Nifti1Image(np.ones((6, 7, 8), np.float32), affine)
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    nib.save(img, str(path))
    return path


def test_qform_and_sform_codes_both_zero_warn_with_the_assumed_orientation(tmp_path, caplog):
    path = _write(tmp_path / "no_orientation.nii.gz", code=0)
    with caplog.at_level(logging.WARNING, logger="brainseg.io.images"):
        _, geom = read_image(path)
        read_image(path)  # once per file
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    (msg,) = warnings
    axcodes = "".join(nib.aff2axcodes(geom.affine))
    assert str(path) in msg and "qform_code and sform_code are both 0" in msg and f"assuming {axcodes}" in msg
    assert "1.2x1.2x2 mm" in msg and "\n" not in msg


def test_a_file_with_an_orientation_reads_silently(tmp_path, caplog):
    path = _write(tmp_path / "scanner.nii.gz", code=1)
    with caplog.at_level(logging.WARNING, logger="brainseg.io.images"):
        read_image(path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_read_channels_real_ct_file(tmp_path):
    hu, *_ = ct_volume()
    data, geom = read_channels([save_ct(tmp_path / "ct.nii.gz", hu)])
    assert data.shape == (1, *CT_SHAPE) and geom.voxel_volume == pytest.approx(1.5**3)
