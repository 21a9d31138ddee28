"""DICOM in (grey-scale display pipeline through MONAI LoadImage) and out (Secondary Capture), read back with pydicom.

The fixture DICOMs are written here with pydicom (``write_dicom``, also used by ``test_explain_cli.py``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from monai.transforms import LoadImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cfattr_monai.io.dicom import (
    PATIENT_KEYWORDS,
    DicomInputError,
    RadiographDicomReader,
    display_pixels,
    read_header,
    write_secondary_capture,
)
from cfattr_monai.io.images import ImageInputError, load_image

DIGITAL_MAMMOGRAPHY = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
RAMP = (np.arange(6 * 5, dtype=np.uint16).reshape(6, 5) * 100)  # rows=6, cols=5, values 0..2900


def write_dicom(path, pixels=RAMP, photometric="MONOCHROME2", bits_stored=12, signed=False, **tags) -> Dataset:
    """A small mammogram-like DICOM file with patient/study identifiers and some extra patient data."""
    pixels = np.asarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = tags.pop("SOPClassUID", DIGITAL_MAMMOGRAPHY)
    ds.SOPInstanceUID = tags.pop("SOPInstanceUID", generate_uid())
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "PID-7", "19600101", "F"
    ds.PatientAddress, ds.OtherPatientIDs, ds.InstitutionName = "1 Main St", "OTHER-1", "General Hospital"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240102", "101500", "ACC1", "S1"
    ds.ReferringPhysicianName, ds.Modality, ds.InstanceNumber, ds.ImageLaterality = "Who^Dr", "MG", 3, "L"
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        ds.SamplesPerPixel, ds.PlanarConfiguration, bits_stored = 3, 0, 8
    else:
        ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (pixels.shape[:2] if ds.SamplesPerPixel == 3 else pixels.shape[-2:])
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, int(signed)
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(ds.BitsAllocated, signed)]
    ds.PixelData = np.ascontiguousarray(pixels.astype(dtype)).tobytes()
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return ds


def load(path):
    return LoadImage(image_only=True, ensure_channel_first=True)(path, reader=RadiographDicomReader())


# (tags for write_dicom, expected displayed value as a function of the stored RAMP)
DISPLAY_CASES = {
    "monochrome2": (dict(), lambda s: s),
    "monochrome1 inverted": (dict(photometric="MONOCHROME1"), lambda s: 2900 - s),
    "rescale slope/intercept": (dict(RescaleSlope=2, RescaleIntercept=-100), lambda s: 2 * s - 100),
    "voi window": (
        dict(WindowCenter=1000, WindowWidth=801),
        lambda s: np.clip(((s - 999.5) / 800 + 0.5) * 4095, 0, 4095),  # PS3.3 C.11.2.1.2.1, 12-bit output range
    ),
    "monochrome1 + window": (
        dict(photometric="MONOCHROME1", WindowCenter=1000, WindowWidth=801),
        lambda s: 4095 - np.clip(((s - 999.5) / 800 + 0.5) * 4095, 0, 4095),
    ),
    "16-bit signed": (dict(bits_stored=16, signed=True, pixels=RAMP.astype(np.int16) - 1000), lambda s: s - 1000),
}


@pytest.mark.parametrize("case", list(DISPLAY_CASES))
def test_display_pipeline(tmp_path, case):
    tags, expected = DISPLAY_CASES[case]
    path = tmp_path / "img.dcm"
    write_dicom(path, **tags)
    displayed = display_pixels(pydicom.dcmread(path), path)
    assert displayed.dtype == np.float32 and displayed.shape == (6, 5)
    np.testing.assert_allclose(displayed, expected(RAMP.astype(np.float64)), atol=1e-3)
    image = load(path)  # through MONAI LoadImage: MONAI's axis order, columns first
    assert image.shape == (1, 5, 6)
    np.testing.assert_allclose(image[0].numpy().T, displayed, atol=1e-3)


@pytest.mark.parametrize(
    "tags, spacing",
    [
        (dict(PixelSpacing=[0.1, 0.2]), (0.2, 0.1)),  # (row, column) spacing → MONAI (x = columns, y = rows)
        (dict(ImagerPixelSpacing=[0.07, 0.07]), (0.07, 0.07)),  # projection radiographs (MG, DX) often only this
        (dict(), (1.0, 1.0)),
    ],
)
def test_pixel_spacing_is_kept(tmp_path, tags, spacing):
    write_dicom(tmp_path / "img.dcm", **tags)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load(tmp_path / "img.dcm")
    assert not [w for w in caught if "ImageOrientationPatient" in str(w.message)]  # projection images: no warning
    np.testing.assert_allclose(image.meta["spacing"][:2], spacing)
    np.testing.assert_allclose(np.abs(np.diag(image.affine.numpy()))[:2], spacing)
    assert image.meta["SOPInstanceUID"] == read_header(tmp_path / "img.dcm").SOPInstanceUID


def test_rgb_is_converted_by_luminance_with_a_warning(tmp_path):
    rgb = np.zeros((6, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    write_dicom(tmp_path / "rgb.dcm", pixels=rgb, photometric="RGB")
    with pytest.warns(UserWarning, match="rgb.dcm.*converted to grey by luminance"):
        grey = display_pixels(pydicom.dcmread(tmp_path / "rgb.dcm"), tmp_path / "rgb.dcm")
    np.testing.assert_allclose(grey, np.full((6, 5), 0.299 * 100 + 0.587 * 200 + 0.114 * 50), rtol=1e-5)


def _truncated(path):
    write_dicom(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])


def _without_pixels(path):
    write_dicom(path, PixelData=None)


def _header_only(path):  # a copy cut off inside the header: pydicom reads it without an error
    write_dicom(path)
    path.write_bytes(path.read_bytes()[:200])


def _structured_report(path):
    write_dicom(path, SOPClassUID=BASIC_TEXT_SR, PixelData=None)


def _multi_frame(path):
    write_dicom(path, pixels=np.concatenate([RAMP, RAMP]), NumberOfFrames=2, Rows=6, Columns=5)


def _palette(path):
    write_dicom(path, photometric="PALETTE COLOR", bits_stored=8, pixels=RAMP % 256)


def _segmentation(path):
    segment = Dataset()
    segment.SegmentNumber, segment.SegmentLabel = 1, "lesion"
    write_dicom(path, SOPClassUID="1.2.840.10008.5.1.4.1.1.66.4", SegmentSequence=[segment])


def _not_dicom(path):
    path.write_text("this is a text file with a .dcm suffix")


BAD_DICOM_CASES = [  # (writer, expected message)
    (_truncated, r"cannot decode the pixel data.*truncated"),
    (_without_pixels, r"without pixel data \(Digital Mammography.*truncated or incomplete"),
    (_header_only, r"without pixel data \(unknown SOP class, \d+ elements read\); the file is truncated"),
    (_structured_report, r"without pixel data \(Basic Text SR Storage\)"),
    (_multi_frame, r"multi-frame DICOM with 2 frames"),
    (_palette, r"PALETTE COLOR image"),
    (_segmentation, r"a DICOM segmentation \(SEG\), not an image"),
    (_not_dicom, r"not a readable DICOM file"),
]


@pytest.mark.parametrize("writer, message", BAD_DICOM_CASES, ids=[w.__name__ for w, _ in BAD_DICOM_CASES])
def test_bad_dicom_is_refused_naming_the_file(tmp_path, writer, message):
    path = tmp_path / "bad.dcm"
    writer(path)
    with pytest.raises(DicomInputError, match=message) as info:
        load(path)
    assert str(path) in str(info.value)


def test_folder_is_refused(tmp_path):
    with pytest.raises(DicomInputError, match="is a folder"):
        load(tmp_path)


@pytest.mark.parametrize("rgb", [True, False], ids=["rgb overlay", "grey mask"])
def test_secondary_capture_round_trip(tmp_path, rgb):
    source = write_dicom(tmp_path / "src.dcm", PixelSpacing=[0.1, 0.1])
    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, 3) if rgb else (6, 5), dtype=np.uint8)
    series_uid = generate_uid()
    write_secondary_capture(tmp_path / "sc.dcm", pixels, read_header(tmp_path / "src.dcm"), series_uid, "cfattr map")
    sc = pydicom.dcmread(tmp_path / "sc.dcm")

    assert sc.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert sc.file_meta.MediaStorageSOPClassUID == sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.file_meta.MediaStorageSOPInstanceUID == sc.SOPInstanceUID != source.SOPInstanceUID
    assert sc.SeriesInstanceUID == series_uid != source.SeriesInstanceUID
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "AccessionNumber", "StudyDate", "ImageLaterality"):
        assert sc[keyword].value == source[keyword].value, keyword
    for keyword in PATIENT_KEYWORDS:
        assert sc[keyword].value == source[keyword].value, keyword
    for keyword in ("PatientAddress", "OtherPatientIDs", "InstitutionName"):  # nothing beyond the standard's minimum
        assert keyword not in sc, keyword
    assert sc.ReferringPhysicianName == ""
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    assert sc.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert sc.SeriesDescription == "cfattr map" and sc.Modality == "OT" and sc.ConversionType == "WSD"
    assert sc.SecondaryCaptureDeviceManufacturer == "cfattr-monai" and "not for diagnostic use" in sc.ImageComments
    assert sc.PhotometricInterpretation == ("RGB" if rgb else "MONOCHROME2")
    assert (sc.BitsAllocated, sc.BitsStored, sc.PixelRepresentation) == (8, 8, 0)
    np.testing.assert_array_equal(sc.pixel_array, pixels)
    assert set(os.listdir(tmp_path)) == {"src.dcm", "sc.dcm"}  # no temporary file left


@pytest.mark.parametrize(
    "pixels, source_tags, message",
    [
        (np.zeros((6, 5), np.float32), {}, "must be uint8"),
        (np.zeros((6, 5, 4), np.uint8), {}, "must be uint8"),
        (np.zeros((6, 5), np.uint8), {"StudyInstanceUID": None}, r"lacks \['StudyInstanceUID'\]"),
    ],
)
def test_secondary_capture_bad_input_writes_nothing(tmp_path, pixels, source_tags, message):
    write_dicom(tmp_path / "src.dcm", **source_tags)
    with pytest.raises(ValueError, match=message):
        write_secondary_capture(tmp_path / "sc.dcm", pixels, read_header(tmp_path / "src.dcm"), generate_uid(), "x")
    assert os.listdir(tmp_path) == ["src.dcm"]


PYDICOM_TEST_FILES = sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))
# grey images in the encodings a PACS sends (explicit/implicit VR, big endian, RLE, JPEG 2000 lossless): these must load
MUST_LOAD = {"CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "ExplVR_BigEnd.dcm",
             "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"}  # fmt: skip


@pytest.mark.parametrize("path", PYDICOM_TEST_FILES, ids=[p.name for p in PYDICOM_TEST_FILES])
def test_pydicom_test_files_load_or_fail_clearly(path):
    """pydicom's corpus (compressed, big-endian, RGB/YBR, multi-frame, SR, RT, SEG, broken): image or clear error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = load_image(path)
    except ValueError as err:
        assert path.name not in MUST_LOAD, f"{path.name} must load, got: {err}"
        assert isinstance(err, (DicomInputError, ImageInputError)) and str(path) in str(err)
    else:
        assert image.ndim == 3 and image.shape[0] == 1 and float(image.min()) == 0.0 and float(image.max()) == 1.0
