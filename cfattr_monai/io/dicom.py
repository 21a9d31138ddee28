"""DICOM in and out for projection radiographs (mammography MG, chest CR/DX).

In: :class:`RadiographDicomReader`, a MONAI ``PydicomReader`` for ``monai.transforms.LoadImage`` that returns the
image a radiologist's viewer displays, following the DICOM grey-scale pipeline (PS3.4 §N.2):

    stored values → Modality LUT (Rescale Slope/Intercept or LUT) → VOI LUT (window centre/width or LUT)
    → MONOCHROME1 inverted, so that larger always means brighter.

RGB images are converted to grey by ITU-R BT.601 luminance (with a warning). Pixel spacing comes from Pixel Spacing
(0028,0030), else Imager Pixel Spacing (0018,1164); projection images without patient position/orientation get the
standard orientation, so the affine carries the spacing and MONAI writers keep outputs aligned.
Refused with a :class:`DicomInputError` naming the file: unreadable or truncated files, objects without pixel data
(structured reports, presentation states), multi-frame objects, pixel data that cannot be decoded.

Out: :func:`write_secondary_capture` writes an 8-bit RGB or grey Secondary Capture that references its source study
and image, with new SOP Instance and Series UIDs and only the patient attributes the IOD requires.
"""

from __future__ import annotations

import datetime
import os
import warnings

import numpy as np
import pydicom
from monai.data import PydicomReader
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cfattr_monai import __version__
from cfattr_monai.io.outputs import atomic_path

__all__ = [
    "DicomInputError",
    "RadiographDicomReader",
    "display_pixels",
    "luminance",
    "read_header",
    "write_secondary_capture",
]

LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as DICOM's YBR_FULL and PIL's "L" conversion
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")  # Patient module, type 2
STUDY_KEYWORDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber")  # General Study
_TAG_PIXEL_SPACING, _TAG_ORIENTATION, _TAG_POSITION = "00280030", "00200037", "00200032"


class DicomInputError(ValueError):
    """A DICOM file that cannot be used as a single grey-scale image; the message names the file and the fix."""


def read_header(path: str | os.PathLike) -> Dataset:
    """The data set of ``path`` without its pixel data (cheap), for identifiers and references.

    Raises:
        DicomInputError: the file is not a readable DICOM file.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # pydicom raises InvalidDicomError, EOFError, struct/OSError on broken files
        raise DicomInputError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err}).") from err


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Grey value ``Y = 0.299 R + 0.587 G + 0.114 B`` of a channel-last RGB(A) array (alpha ignored)."""
    return rgb[..., :3].astype(np.float32) @ np.asarray(LUMINANCE_WEIGHTS, dtype=np.float32)


def display_pixels(ds: Dataset, filename: str | os.PathLike) -> np.ndarray:
    """Pixels of one single-frame image as displayed: Modality LUT, VOI LUT, MONOCHROME1 inverted; float32 (rows, cols).

    Raises:
        DicomInputError: no pixel data (e.g. a structured report), several frames, or undecodable pixel data.
    """
    sop_class = getattr(ds.get("SOPClassUID"), "name", "unknown SOP class")
    if not any(k in ds for k in PIXEL_DATA_KEYWORDS):
        if "Image Storage" in sop_class or "SOPClassUID" not in ds:
            # an image object (or one whose header ends before its SOP class) that lost its pixels: a cut-off file
            raise DicomInputError(
                f"{filename}: DICOM data set without pixel data ({sop_class}, {len(ds)} elements read); the file is "
                "truncated or incomplete. Copy or export the image again."
            )
        raise DicomInputError(
            f"{filename}: DICOM object without pixel data ({sop_class}); expected an image such as a mammogram (MG) "
            "or a radiograph (CR/DX). Remove non-image objects (reports, presentation states) from the input."
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        raise DicomInputError(
            f"{filename}: PALETTE COLOR image ({sop_class}); expected a grey-scale (MONOCHROME1/2) or RGB radiograph. "
            "Export the image as grey-scale."
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicomInputError(
            f"{filename}: multi-frame DICOM with {frames} frames ({sop_class}); expected one 2-D image. "
            "Split the frames into single-frame files (e.g. with pydicom) and pass the frame to explain."
        )
    try:
        stored = ds.pixel_array
    except Exception as err:  # truncated PixelData, missing decoder for a compressed transfer syntax, bad tags
        raise DicomInputError(
            f"{filename}: cannot decode the pixel data ({type(err).__name__}: {err}); the file may be truncated, "
            f"or its transfer syntax {ds.file_meta.get('TransferSyntaxUID', 'unknown')} may need a decoder plugin "
            "(pylibjpeg or python-gdcm)."
        ) from err
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        warnings.warn(f"{filename}: colour DICOM ({photometric}) converted to grey by luminance.")
        return luminance(stored)
    pixels = apply_voi_lut(apply_modality_lut(stored, ds), ds).astype(np.float32)
    if photometric == "MONOCHROME1":  # minimum displays white: flip within the image's range so larger = brighter
        pixels = pixels.max() + pixels.min() - pixels
    return pixels


class RadiographDicomReader(PydicomReader):
    """``PydicomReader`` returning one displayed grey-scale radiograph per file, for ``LoadImage``.

    Args:
        kwargs: passed to :class:`monai.data.PydicomReader` (``swap_ij``, ``affine_lps_to_ras``, …).

    Example:
        >>> from monai.transforms import LoadImage
        >>> load = LoadImage(image_only=True, ensure_channel_first=True)
        >>> # image = load("mammogram.dcm", reader=RadiographDicomReader())  # (1, columns, rows) float32

    Pass the reader at call time (``load(path, reader=...)``): then its clear errors reach the caller instead of
    ``LoadImage``'s generic "cannot find a suitable reader".
    """

    def read(self, data, **kwargs):
        """Read DICOM files; folders (series) and segmentation objects are refused: every file is one image here."""
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        label = ", ".join(str(n) for n in names)
        for name in names:
            if os.path.isdir(name):
                raise DicomInputError(f"{name}: is a folder; pass the DICOM files of a folder one by one.")
        try:
            datasets = super().read(data, **kwargs)
        except Exception as err:  # pydicom raises InvalidDicomError, EOFError, struct/OSError on broken files
            raise DicomInputError(
                f"{label}: not a readable DICOM file ({type(err).__name__}: {err}). If it is a data set without the "
                "DICOM Part 10 file header, re-save it with one (e.g. dcmconv +F from dcmtk)."
            ) from err
        for ds in datasets if isinstance(datasets, list) else [datasets]:
            if "SegmentSequence" in ds:  # PydicomReader would read it as a label map
                raise DicomInputError(
                    f"{label}: a DICOM segmentation (SEG), not an image; pass the image the segmentation belongs to."
                )
        return datasets

    def _get_array_data(self, img, filename):
        return display_pixels(img, filename)

    def _get_meta_dict(self, img) -> dict:
        """The geometry tags ``PydicomReader._get_affine`` needs, in DICOM-JSON form, plus the SOP Instance UID.

        Built tag by tag instead of ``to_json_dict`` (which would base64-encode the whole pixel data).
        """
        spacing = img.get("PixelSpacing") or img.get("ImagerPixelSpacing") or (1.0, 1.0)
        orientation = img.get("ImageOrientationPatient") or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # projection image
        position = img.get("ImagePositionPatient") or (0.0, 0.0, 0.0)
        geometry = ((_TAG_PIXEL_SPACING, spacing), (_TAG_ORIENTATION, orientation), (_TAG_POSITION, position))
        meta = {tag: {"vr": "DS", "Value": [float(v) for v in values]} for tag, values in geometry}
        meta["SOPInstanceUID"] = str(img.get("SOPInstanceUID", ""))
        return meta


def _source_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def write_secondary_capture(
    path: str | os.PathLike,
    pixels: np.ndarray,
    source: Dataset,
    series_uid: str,
    series_description: str,
    series_number: int = 9001,
    instance_number: int = 1,
) -> Dataset:
    """Write ``pixels`` as a DICOM Secondary Capture that a PACS files next to ``source``'s study.

    Written attributes: Patient module (Patient Name, ID, Birth Date, Sex — copied, nothing else), General Study
    (Study Instance UID, Date, Time, ID, Accession Number — copied; Referring Physician left empty), General Series
    (Modality ``OT``, the given new Series Instance UID, Number, Description), SC Equipment (Conversion Type ``WSD``,
    device manufacturer ``cfattr-monai`` and its version), Image Comments "not for diagnostic use",
    General Image with Source Image Sequence and Referenced Series Sequence pointing at the source image,
    Frame of Reference UID, Pixel Spacing and Image Laterality when the source has them, Image Pixel module
    (8-bit, ``RGB`` for (rows, cols, 3) input, ``MONOCHROME2`` for (rows, cols)), SOP Common with a new SOP Instance
    UID; file meta with Explicit VR Little Endian. The file is written atomically.

    Args:
        path: output file.
        pixels: uint8 array (rows, cols, 3) or (rows, cols), in the source image's row/column order.
        source: the source image's data set (``read_header`` suffices).
        series_uid: Series Instance UID of the new series (one per source series and output kind).
        series_description: shown by the viewer, e.g. naming the method.
        series_number: Series Number of the new series.
        instance_number: Instance Number within the new series.

    Raises:
        ValueError: ``pixels`` is not uint8 (rows, cols[, 3]), or ``source`` lacks Study/SOP identifiers.

    Example:
        >>> # write_secondary_capture("out/overlay.dcm", rgb_uint8, read_header("study/img.dcm"),
        >>> #                         generate_uid(), "cfattr counterfactual attribution overlay")
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(
            f"Secondary Capture pixels must be uint8 (rows, cols) or (rows, cols, 3), got {pixels.dtype} "
            f"{pixels.shape}; convert with np.clip(x * 255, 0, 255).astype(np.uint8)."
        )
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if k not in source]
    if missing:
        raise ValueError(f"source DICOM {source.get('filename', '')!s} lacks {missing}; cannot reference its study.")

    now = datetime.datetime.now()
    ds = Dataset()
    if "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in PATIENT_KEYWORDS + STUDY_KEYWORDS:
        setattr(ds, keyword, source.get(keyword, ""))
    ds.ReferringPhysicianName = ""
    ds.Modality = "OT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description[:64]
    ds.ConversionType = "WSD"
    ds.SecondaryCaptureDeviceManufacturer = "cfattr-monai"
    ds.SecondaryCaptureDeviceSoftwareVersions = __version__
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = source.get("PatientOrientation", "")
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = series_description
    ds.ImageComments = "Research attribution map, not for diagnostic use."
    ds.BurnedInAnnotation = "NO"
    for keyword in ("FrameOfReferenceUID", "ImageLaterality", "PixelSpacing"):
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    ds.SourceImageSequence = DicomSequence([_source_reference(source)])
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = source.SeriesInstanceUID
    referenced_series.ReferencedInstanceSequence = DicomSequence([_source_reference(source)])
    ds.ReferencedSeriesSequence = DicomSequence([referenced_series])

    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = "RGB" if pixels.ndim == 3 else "MONOCHROME2"
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return ds


def series_description(kind: str, method: str = "cfattr counterfactual attribution (Lenis 2020)") -> str:
    """Series Description for an output kind, e.g. ``"overlay"`` → ``"cfattr … overlay"`` (≤ 64 characters)."""
    return f"{method} {kind}"[:64]
