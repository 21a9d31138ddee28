"""Load PNG, DICOM and NIfTI images, one at a time, as MONAI tensors in [0, 1].

Every image comes out as a ``MetaTensor`` of shape ``(1, X, Y)`` (float32, min–max scaled to [0, 1]) with its
affine and spacing in ``.meta``, exactly as ``LoadImaged`` + ``EnsureChannelFirstd`` + ``ScaleIntensityd`` give it to
the bundles during training — same axis order (MONAI's readers put the image columns first), same scaling — so the
network sees at inference what it saw in training. DICOM goes through
:class:`~cfattr_monai.io.dicom.RadiographDicomReader` (LUTs, MONOCHROME1); PNG/JPEG/TIFF through MONAI's
``PILReader``; NIfTI through ``NibabelReader``.

Decisions for unusual input (each raises :class:`ImageInputError` naming the file, or warns):

* RGB(A) → grey by ITU-R BT.601 luminance, with a warning (screenshots and colour exports are common, the grey
  content is what the classifier needs);
* 16-bit and float images are scaled by their own range like 8-bit ones;
* NaN or ±Inf pixels → refused (no sensible scaling exists; fix the export);
* constant images → refused (a blank export: a classifier score and a map would be meaningless);
* anything with more than two spatial dimensions (a volume, a multi-frame file) → refused.

Folders are walked lazily (:func:`iter_image_files`) and :func:`load_image` reads one file at a time, so a folder
of any size never sits in memory.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, ScaleIntensity

from cfattr_monai.io.dicom import DicomInputError, RadiographDicomReader, luminance

__all__ = ["ImageInputError", "IMAGE_SUFFIXES", "is_dicom_file", "iter_image_files", "load_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm", ".nii", ".nii.gz", ".dcm", ".dicom")


class ImageInputError(ValueError):
    """An input image that cannot be explained; the message names the file, the problem and the fix."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_dicom_file(path: str | os.PathLike) -> bool:
    """``True`` for ``*.dcm``/``*.dicom`` and for suffix-less files with the DICOM preamble (as PACS exports them)."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix in (".dcm", ".dicom"):
        return True
    return suffix not in IMAGE_SUFFIXES and path.is_file() and pydicom.misc.is_dicom(path)


def iter_image_files(inputs: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files of ``inputs`` in order; folders are walked recursively, in sorted order, without listing them whole.

    Inside folders, files with an image suffix (``IMAGE_SUFFIXES``) and suffix-less DICOM files are taken; hidden
    files (``.*``, e.g. partial outputs) are skipped. Files named explicitly are always taken.

    Raises:
        FileNotFoundError: an input does not exist.
    """
    for item in inputs:
        path = Path(item)
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from _walk(path)
        else:
            raise FileNotFoundError(f"input {str(item)!r} does not exist; pass image files or folders of images.")


def _walk(folder: Path) -> Iterator[Path]:
    with os.scandir(folder) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir():
            yield from _walk(path)
        elif _suffix(path) in IMAGE_SUFFIXES or is_dicom_file(path):
            yield path


_LOAD = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
_SCALE = ScaleIntensity(minv=0.0, maxv=1.0)


def load_image(path: str | os.PathLike) -> MetaTensor:
    """One 2-D image as a ``(1, X, Y)`` float32 ``MetaTensor`` in [0, 1] (see the module notes for the rules).

    Args:
        path: a PNG/JPEG/TIFF/BMP/PGM, NIfTI (``.nii``/``.nii.gz``) or DICOM file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageInputError: unreadable/corrupt file, not a 2-D image, NaN/Inf pixels, constant image.
        DicomInputError: a DICOM file without pixel data, multi-frame, truncated (see ``cfattr_monai.io.dicom``).

    Example:
        >>> # image = load_image("study/IM0001.dcm"); image.shape, float(image.min()), float(image.max())
        >>> # (torch.Size([1, 3328, 4084]), 0.0, 1.0)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist.")
    try:
        if is_dicom_file(path):
            image = _LOAD(path, reader=RadiographDicomReader())
        else:
            image = _LOAD(path)
    except DicomInputError:
        raise
    except Exception as err:  # PIL.UnidentifiedImageError, nibabel ImageFileError, OSError on truncated files, …
        raise ImageInputError(
            f"{path}: cannot read the image ({type(err).__name__}: {err}); the file may be corrupt or truncated — "
            "re-export it as PNG, NIfTI or DICOM."
        ) from err
    return _as_unit_grey(image, path)


def _as_unit_grey(image: MetaTensor, path: Path) -> MetaTensor:
    """Squeeze singleton dimensions, convert colour to grey, refuse non-finite and constant images, scale to [0, 1]."""
    if image.ndim == 4 and image.shape[-1] == 1:  # NIfTI 2-D images are often stored as (X, Y, 1)
        image = image[..., 0]
    if image.ndim != 3:
        raise ImageInputError(
            f"{path}: expected a 2-D image, got an array of shape {tuple(image.shape[1:])} (channel first "
            f"{image.shape[0]}); pass one 2-D slice or projection image per file."
        )
    if image.shape[0] in (3, 4):
        warnings.warn(f"{path}: {image.shape[0]}-channel colour image converted to grey by luminance.")
        grey = luminance(np.moveaxis(image.numpy(), 0, -1))[None]
        image = MetaTensor(torch.from_numpy(np.ascontiguousarray(grey)), meta=image.meta)
    elif image.shape[0] != 1:
        raise ImageInputError(f"{path}: expected 1 (grey) or 3/4 (RGB/RGBA) channels, got {image.shape[0]}.")
    n_bad = int((~torch.isfinite(image)).sum())
    if n_bad:
        raise ImageInputError(
            f"{path}: {n_bad} NaN/Inf pixel(s); expected finite intensities. Replace them (e.g. numpy.nan_to_num) "
            "when exporting the image."
        )
    if float(image.max()) == float(image.min()):
        raise ImageInputError(
            f"{path}: constant image (every pixel is {float(image.min()):g}); nothing to explain — check the export."
        )
    return _SCALE(image.float())

