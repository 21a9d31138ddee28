"""Loading PNG / NIfTI / DICOM images one at a time into (1, X, Y) tensors in [0, 1], and walking input folders."""

from __future__ import annotations

import inspect

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, ScaleIntensity
from PIL import Image
from test_dicom_io import write_dicom

from cfattr_monai.io.images import ImageInputError, is_dicom_file, iter_image_files, load_image

GREY = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) % 251).astype(np.uint8)  # rows=20, cols=30


def _png(path, array):
    Image.fromarray(array).save(path)


def _nifti(path, array, affine=np.diag([0.5, 0.7, 1.0, 1.0])):
    nib.save(nib.Nifti1Image(array, affine), path)


GOOD_CASES = {  # name → (writer, file name, expected (1, X, Y) tensor before [0, 1] scaling)
    "png 8-bit": (lambda p: _png(p, GREY), "a.png", GREY.T),
    "png 16-bit": (lambda p: _png(p, GREY.astype(np.uint16) * 257), "a.png", GREY.T),
    "nifti 2-D": (lambda p: _nifti(p, GREY.astype(np.float32)), "a.nii.gz", GREY),
    "nifti (X, Y, 1)": (lambda p: _nifti(p, GREY.astype(np.float32)[..., None]), "a.nii", GREY),
    "dicom": (lambda p: write_dicom(p, pixels=GREY.astype(np.uint16)), "a.dcm", GREY.T),
    "dicom without suffix": (lambda p: write_dicom(p, pixels=GREY.astype(np.uint16)), "IM0001", GREY.T),
}


@pytest.mark.parametrize("case", list(GOOD_CASES))
def test_load_image(tmp_path, case):
    writer, name, expected = GOOD_CASES[case]
    writer(tmp_path / name)
    image = load_image(tmp_path / name)
    expected = (expected - expected.min()) / float(expected.max() - expected.min())
    assert image.shape == (1, *expected.shape) and image.dtype == torch.float32
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-6)
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert image.affine.shape == (4, 4)


def test_load_image_matches_the_bundle_preprocessing(tmp_path):
    """Same array as ``LoadImaged`` + ``EnsureChannelFirstd`` + ``ScaleIntensityd`` in the bundles' configs."""
    _png(tmp_path / "a.png", GREY)
    bundle_like = Compose([LoadImage(image_only=True), EnsureChannelFirst(), ScaleIntensity()])(tmp_path / "a.png")
    torch.testing.assert_close(load_image(tmp_path / "a.png").as_tensor(), bundle_like.as_tensor())


@pytest.mark.parametrize("channels", [3, 4], ids=["rgb", "rgba"])
def test_colour_png_is_converted_by_luminance_with_a_warning(tmp_path, channels):
    rgb = np.stack([GREY, GREY // 2, GREY // 4, np.full_like(GREY, 255)][:channels], axis=-1)
    _png(tmp_path / "c.png", rgb)
    with pytest.warns(UserWarning, match=f"c.png: {channels}-channel colour image converted to grey"):
        image = load_image(tmp_path / "c.png")
    grey = 0.299 * GREY + 0.587 * (GREY // 2) + 0.114 * (GREY // 4)
    np.testing.assert_allclose(image[0].numpy(), ((grey - grey.min()) / (grey.max() - grey.min())).T, atol=1e-5)


def _corrupt_png(p):
    _png(p, GREY)
    p.write_bytes(p.read_bytes()[:60])


def _not_an_image(p):
    p.write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")


def _nan_nifti(p):
    array = GREY.astype(np.float32)
    array[3, 4] = np.nan
    _nifti(p, array)


def _inf_nifti(p):
    array = GREY.astype(np.float32)
    array[0, 0], array[1, 1] = np.inf, -np.inf
    _nifti(p, array)


BAD_CASES = [  # (writer, file name, error type, message)
    (_corrupt_png, "bad.png", ImageInputError, r"bad.png: cannot read the image .*corrupt or truncated"),
    (_not_an_image, "fake.png", ImageInputError, r"fake.png: cannot read the image"),
    (_nan_nifti, "nan.nii.gz", ImageInputError, r"nan.nii.gz: 1 NaN/Inf pixel\(s\)"),
    (_inf_nifti, "inf.nii.gz", ImageInputError, r"inf.nii.gz: 2 NaN/Inf pixel\(s\)"),
    (lambda p: _png(p, np.full((8, 8), 9, np.uint8)), "flat.png", ImageInputError, r"flat.png: constant image"),
    (lambda p: write_dicom(p, pixels=np.full((6, 5), 7)), "flat.dcm", ImageInputError, r"flat.dcm: constant image"),
    (lambda p: _nifti(p, np.random.rand(4, 5, 6).astype(np.float32)), "vol.nii.gz", ImageInputError, r"expected a 2-D"),
    (lambda p: None, "missing.png", FileNotFoundError, r"missing.png' does not exist"),
]


@pytest.mark.parametrize("writer, name, error, message", BAD_CASES, ids=[c[1] for c in BAD_CASES])
def test_bad_images_are_refused_naming_the_file(tmp_path, writer, name, error, message):
    writer(tmp_path / name)
    with pytest.raises(error, match=message):
        load_image(tmp_path / name)


def test_iter_image_files_walks_folders_sorted_and_skips_non_images(tmp_path):
    for rel in ["b.png", "a/z.nii.gz", "a/y.dcm", "a/.tmp-123-partial.png", "notes.txt", "c/IM0001", ".hidden/x.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    write_dicom(tmp_path / "c" / "IM0001")  # suffix-less DICOM, as exported by PACS
    extra = tmp_path / "notes.txt"  # a file named explicitly is always taken
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files([tmp_path, extra])]
    assert found == ["a/y.dcm", "a/z.nii.gz", "b.png", "c/IM0001", "notes.txt"]


def test_iter_image_files_is_lazy_and_reports_missing_inputs(tmp_path):
    files = iter_image_files([tmp_path, tmp_path / "nope"])
    assert inspect.isgenerator(files)  # nothing listed before it is consumed
    with pytest.raises(FileNotFoundError, match="nope' does not exist"):
        list(files)


@pytest.mark.parametrize("name, is_dicom", [("x.dcm", True), ("x.DICOM", True), ("IM0001", True), ("x.png", False)])
def test_is_dicom_file(tmp_path, name, is_dicom):
    write_dicom(tmp_path / name)
    assert is_dicom_file(tmp_path / name) is is_dicom
