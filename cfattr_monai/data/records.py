"""From image records to a written data set: resize, derive the organ mask, save PNGs, split patient-wise.

A preparer (``cfattr_monai.data.datasets``, ``cfattr_monai.data.cbis_ddsm``) only has to list :class:`Record`
objects; :func:`write_records` turns them into the package's data-set folder (``images/``, ``organs/``,
``lesions/``, ``datalist.json``, ``source.json``; a mask folder only when some image has such a mask), atomically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cfattr_monai.data.datalist import grouped_split, save_png, staged_folder, write_datalist
from cfattr_monai.data.organ import breast_mask

__all__ = ["Record", "read_grey", "to_uint8", "write_records"]


@dataclasses.dataclass(frozen=True)
class Record:
    """One image of a public data set.

    Args:
        key: output file stem, unique in the data set.
        patient: group for the patient-wise split (all images of one patient land in one split).
        label: 0 healthy, 1 pathological.
        load_image: returns the image as an (H, W) array (any numeric type, bright = dense).
        load_lesion: returns the lesion mask for a given (H, W), or ``None`` when the image has no lesion ground
            truth (such items get no ``"lesion"`` key). Healthy images default to an empty mask.
        load_organ: returns the organ mask for a given (H, W) image, or ``None`` to derive the breast mask
            (mammograms) or leave it out.
    """

    key: str
    patient: str
    label: int
    load_image: Callable[[], np.ndarray]
    load_lesion: Callable[[tuple[int, int]], np.ndarray | None] | None = None
    load_organ: Callable[[tuple[int, int]], np.ndarray | None] | None = None


def read_grey(path) -> np.ndarray:
    """An image file (PNG, PGM, …) as a grey (H, W) array; colour images are converted to grey.

    Raises:
        FileNotFoundError: ``path`` is missing.
        ValueError: ``path`` is not an image Pillow can read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} is missing.")
    try:
        with Image.open(path) as picture:
            return np.asarray(picture if picture.mode in ("L", "I;16", "I") else picture.convert("L"))
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file that can be read (expected PNG or PGM).") from None


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Min-max scale an (H, W) image to uint8 (uint8 input is returned unchanged)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float32)
    low, high = float(image.min()), float(image.max())
    return np.round((image - low) / max(high - low, 1e-12) * 255.0).astype(np.uint8)


def _resize(array: np.ndarray, size: tuple[int, int] | None, mask: bool) -> np.ndarray:
    if size is None or tuple(array.shape) == tuple(size):
        return array
    picture = Image.fromarray(array).resize((size[1], size[0]), Image.Resampling.BILINEAR if mask else
                                            Image.Resampling.LANCZOS)
    resized = np.asarray(picture)
    return (resized >= 128).astype(np.uint8) * np.uint8(255) if mask else resized


def write_records(out_dir, records: Sequence[Record], size=None, seed: int = 0, splits=(0.6, 0.2, 0.2),
                  mammogram: bool = False, source: dict | None = None) -> Path:
    """Write ``records`` as a data-set folder with a patient-wise, label-stratified split.

    Args:
        out_dir: new or empty output folder (written atomically).
        records: the images.
        size: ``(H, W)`` of the written images, or ``None`` to keep each image's size.
        seed: seed of the split.
        splits: training / validation / test fractions of patients.
        mammogram: derive the breast mask (:func:`breast_mask`) for records without ``load_organ``.
        source: provenance written to ``source.json`` (where the data came from, how it was converted).

    Returns:
        the path of ``datalist.json``.

    Raises:
        ValueError: no records, or duplicate keys.
    """
    if not records:
        raise ValueError(f"no images to write into {out_dir}.")
    keys = [record.key for record in records]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate image keys in the source: {sorted({k for k in keys if keys.count(k) > 1})}.")
    size = None if size is None else (int(size[0]), int(size[1]))
    parts = grouped_split([r.patient for r in records], [r.label for r in records], splits, seed)
    with staged_folder(out_dir) as folder:
        (folder / "images").mkdir()
        items = []
        for record in records:
            image = _resize(to_uint8(record.load_image()), size, mask=False)
            name = f"{record.key}.png"
            save_png(image, folder / "images" / name)
            item = {"image": f"images/{name}", "label": int(record.label)}
            lesion = record.load_lesion(image.shape) if record.load_lesion else None
            if lesion is None and record.label == 0:
                lesion = np.zeros(image.shape, dtype=np.uint8)
            organ = record.load_organ(image.shape) if record.load_organ else None
            if organ is None and mammogram:
                organ = breast_mask(image)
            for key, mask in (("lesion", lesion), ("organ", organ)):
                if mask is not None:
                    mask = _resize((np.asarray(mask) > 0).astype(np.uint8) * np.uint8(255), image.shape, mask=True)
                    (folder / f"{key}s").mkdir(exist_ok=True)  # only for the masks the source has
                    save_png(mask, folder / f"{key}s" / name)
                    item[key] = f"{key}s/{name}"
            items.append(item)
        return Path(out_dir) / write_datalist(folder, items, parts, source=source or {}).name
