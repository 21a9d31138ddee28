"""CBIS-DDSM (Lee et al. 2017) masses plus a folder of healthy DDSM mammograms → the package's data-set folder.

CBIS-DDSM ships only abnormal cases: the mass-description CSVs (``mass_case_description_{train,test}_set.csv``)
list, per mass, the ``patient_id``, the full-mammogram DICOM (``image file path``) and the ROI-mask DICOM
(``ROI mask file path``). The paths in the CSVs name the series folder first (``Mass-Training_P_00001_LEFT_CC/…``);
TCIA downloads rename the folders below it, so a path that does not exist as written is looked up by that first
folder. Every mammogram with at least one mass is label 1 (its lesion mask: the union of its ROI masks); healthy
(label 0) images come from a separate folder of DDSM normal cases (DICOM or PNG). DICOMs are read with pydicom;
``MONOCHROME1`` images are inverted so that dense tissue is bright.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

from cfattr_monai.data.records import Record, read_grey, write_records

__all__ = ["read_dicom", "prepare_cbis_ddsm"]

CSV_PATTERN = "mass_case_description_*.csv"
CSV_COLUMNS = ("patient_id", "image file path", "ROI mask file path")


def read_dicom(path) -> np.ndarray:
    """The pixel data of a single-frame grey DICOM as float32 in [0, 1], bright = dense (MONOCHROME1 inverted).

    Raises:
        FileNotFoundError: ``path`` is missing.
        ValueError: not a DICOM file, no pixel data, or not a single grey frame — naming the file.
    """
    dataset = _dcmread(path)
    if "PixelData" not in dataset:
        raise ValueError(f"{path} is a DICOM without pixel data (not an image, e.g. a structured report); "
                         "remove it from the image folder.")
    pixels = dataset.pixel_array.astype(np.float32)
    if pixels.ndim != 2:
        raise ValueError(f"{path} holds pixel data of shape {pixels.shape}; expected one grey frame (rows, columns).")
    if dataset.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    low, high = float(pixels.min()), float(pixels.max())
    return (pixels - low) / max(high - low, 1e-12)


def _dcmread(path, header_only: bool = False) -> pydicom.Dataset:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DICOM {path} is missing.")
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError as error:
        raise ValueError(f"{path} is not a DICOM file ({error}).") from None


def _pixel_count(path: Path) -> int:
    header = _dcmread(path, header_only=True)
    return int(header.get("Rows", 0)) * int(header.get("Columns", 0))


def _resolve(src: Path, listed: str, table: Path) -> Path:
    """The DICOM a CSV path points at: as written, else the largest DICOM below the series folder it names."""
    listed = listed.strip().replace("\\", "/")
    exact = src / listed
    if exact.is_file():
        return exact
    series = listed.split("/")[0]
    candidates = [p for folder in (src / series, *src.glob(f"*/{series}")) if folder.is_dir()
                  for p in folder.rglob("*.dcm")]
    if not candidates:
        raise FileNotFoundError(f"{listed!r} (listed in {table}) not found below {src}, neither as written nor "
                                f"under a folder named {series!r}.")
    return max(sorted(candidates), key=_pixel_count)  # an ROI folder also holds the small cropped image


def _mass_records(src: Path) -> list[Record]:
    tables = sorted(src.rglob(CSV_PATTERN))
    if not tables:
        raise FileNotFoundError(f"no CBIS-DDSM mass CSV ({CSV_PATTERN}) found below {src}.")
    masks_per_image: dict[Path, tuple[str, str, list[Path]]] = {}
    for table in tables:
        with table.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        missing = [c for c in CSV_COLUMNS if not rows or c not in rows[0]]
        if missing:
            raise ValueError(f"{table} lacks the column(s) {missing}; expected a CBIS-DDSM mass-description CSV.")
        for row in rows:
            listed = row["image file path"].strip().replace("\\", "/")
            series = listed.split("/")[0] if "/" in listed else Path(listed).stem
            image = _resolve(src, listed, table)
            entry = masks_per_image.setdefault(image, (series.replace(" ", "_"), row["patient_id"].strip(), []))
            entry[2].append(_resolve(src, row["ROI mask file path"], table))
    records = []
    for image, (key, patient, masks) in sorted(masks_per_image.items()):
        records.append(Record(
            key=key, patient=patient, label=1,
            load_image=lambda image=image: read_dicom(image),
            load_lesion=lambda shape, masks=tuple(masks): _union_at(masks, shape),
        ))
    return records


def _union_at(masks, shape: tuple[int, int]) -> np.ndarray:
    union = np.zeros(shape, dtype=bool)
    for path in masks:
        mask = Image.fromarray((read_dicom(path) > 0.5).astype(np.uint8) * np.uint8(255))
        union |= np.asarray(mask.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 0
    return union.astype(np.uint8)


def _healthy_records(folder: Path) -> list[Record]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".dcm", ".png") and p.is_file())
    if not paths:
        raise FileNotFoundError(f"no healthy mammogram (.dcm or .png) found below {folder}; CBIS-DDSM has no normal "
                                "cases, so pass a folder of DDSM normals with --healthy DIR.")
    records = []
    for path in paths:
        if path.suffix.lower() == ".dcm":
            patient = str(_dcmread(path, header_only=True).get("PatientID", "")) or path.stem
            load = lambda path=path: read_dicom(path)  # noqa: E731
        else:
            patient = re.split(r"[._-](?:LEFT|RIGHT)", path.stem, flags=re.IGNORECASE)[0]
            load = lambda path=path: read_grey(path)  # noqa: E731
        key = "healthy_" + "_".join(path.relative_to(folder).with_suffix("").parts)
        records.append(Record(key=key, patient=f"healthy:{patient}", label=0, load_image=load))
    return records


def prepare_cbis_ddsm(src, out, size=None, seed: int = 0, splits=(0.6, 0.2, 0.2), healthy=None) -> Path:
    """Prepare CBIS-DDSM masses (label 1) plus healthy DDSM mammograms (label 0).

    Args:
        src: CBIS-DDSM folder holding the mass-description CSVs and the DICOM series folders.
        out: new or empty output folder.
        size: ``(H, W)`` of the written images, or ``None`` to keep them (full DDSM scans are ~3000 × 5000).
        seed: seed of the patient-wise split (by ``patient_id``).
        splits: training / validation / test fractions of patients.
        healthy: folder of healthy DDSM images (DICOM or PNG); default ``<src>/healthy``.

    Returns:
        the path of the written ``datalist.json``.

    Raises:
        FileNotFoundError: no CSV, a listed DICOM that cannot be found, or no healthy images.
        ValueError: a CSV without the expected columns, or a file that is not a DICOM image.
    """
    src = Path(src)
    healthy = Path(healthy) if healthy is not None else src / "healthy"
    if not healthy.is_dir():
        raise FileNotFoundError(f"healthy-image folder {healthy} not found; CBIS-DDSM has no normal cases, so pass "
                                "a folder of DDSM normals (DICOM or PNG) with --healthy DIR.")
    records = _mass_records(src) + _healthy_records(healthy)
    source = {"dataset": "CBIS-DDSM masses + DDSM normals", "src": str(src.resolve()), "healthy": str(healthy),
              "task": "normal vs mass", "lesion": "union of ROI masks",
              "cite": "Lee et al. 2017, Sci Data 4:170177; Heath et al. 2000, IWDM"}
    return write_records(out, records, size, seed, splits, mammogram=True, source=source)
