"""Check a MONAI datalist before a bundle trains or evaluates on it: every problem named with its file and its fix.

The bundles read their data with ``LoadImaged`` + ``EnsureChannelFirstd`` + ``ScaleIntensityd``; a bad file there
fails late (after caching), deep inside a transform, with a message that does not say which item is wrong.
:func:`check_datalist` reads every referenced file once, the same way (MONAI ``LoadImage``), in ``initialize``,
and refuses the data set with one :class:`DatalistError` that lists the problems:

* no datalist file, not JSON, a required split missing or empty (the message lists the splits the datalist has), an
  item without ``image``/``label``, a path that is not a string (``null``, a number, a list), a label other than 0/1;
* a split named in ``both_classes`` that lacks healthy (0) or pathological (1) items: ROC-AUC and the validation key
  metric are undefined on one class;
* a referenced file that does not exist, or that MONAI cannot read (corrupt, truncated, DICOM without pixel data);
* an image that is not one grey 2-D plane: RGB(A) is refused here (the bundles' transforms are single-channel;
  ``cfattr prepare`` writes grey PNGs — only ``cfattr explain`` converts colour to grey, with a warning), as is a
  MONOCHROME1 DICOM (``LoadImaged`` would feed it inverted; convert it with ``cfattr_monai.io.load_image``, which
  applies the DICOM display pipeline);
* NaN or ±Inf pixels, a constant image, an image with a side under ``min_size`` pixels (default 32, the coarsest
  stride of the classifier encoders: below it the coarsest feature map is a single pixel);
* a mask (``lesion``, ``organ``) with more than one channel (e.g. RGB), of another size than its image, or not
  binary (values other than {0, 1} or {0, 255}).

16-bit and float images are accepted: ``ScaleIntensityd`` scales each image by its own range.

:func:`check_pairs` applies the same checks to the image + hole pairs of the inpainter's inference (the hole: white =
the region to replace, on the image's grid, binary, not the whole image), and refuses an empty list.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage
from PIL import Image

from cfattr_monai.data.datalist import SPLITS

__all__ = ["DatalistError", "check_datalist", "check_pairs", "healthy_items", "MIN_IMAGE_SIZE"]

MIN_IMAGE_SIZE = 32
_SHOWN_PROBLEMS = 8
_BINARY_LEVELS = ({0, 1}, {0, 255})
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm")  # those MONAI's PILReader reads


class DatalistError(ValueError):
    """A datalist that a bundle cannot use; the message lists each problem with its file and the fix."""


_LOAD = LoadImage(image_only=True, ensure_channel_first=True)


def check_datalist(
    datalist: str | os.PathLike,
    splits: Sequence[str] = ("training", "validation"),
    keys: Sequence[str] = ("image", "label"),
    mask_keys: Sequence[str] = ("lesion", "organ"),
    min_size: int = MIN_IMAGE_SIZE,
    both_classes: Sequence[str] = (),
) -> Path:
    """Read every file a datalist names and raise one :class:`DatalistError` listing all problems found.

    Args:
        datalist: the ``datalist.json`` (Decathlon style; item paths relative to its folder, or absolute).
        splits: splits that must exist and hold at least one item (e.g. ``("test",)`` for inference).
        keys: keys every item must have; ``"image"`` is read as an image, ``"label"`` must be 0 or 1.
        mask_keys: optional keys of binary masks on the image's grid, checked where an item has them (a missing
            key, null or "" means no mask).
        min_size: smallest accepted image side in pixels.
        both_classes: splits that must exist and hold both labels 0 and 1 (those a ROC-AUC or the validation key
            metric is computed on, e.g. ``("validation",)`` for training).

    Returns:
        ``datalist`` as a ``Path``, so that a bundle config can chain it:
        ``"$cfattr_monai.data.validate.check_datalist(@datalist)"``.

    Raises:
        FileNotFoundError: ``datalist`` does not exist.
        DatalistError: anything listed in the module notes.

    Example:
        >>> check_datalist("data/phantoms/mammo_128/datalist.json")  # doctest: +SKIP
        PosixPath('data/phantoms/mammo_128/datalist.json')
    """
    path = Path(datalist)
    content = _read_datalist(path)
    problems = []
    for split in dict.fromkeys([*splits, *both_classes]):
        items = content.get(split)
        if not isinstance(items, list) or not items:
            problems.append(_split_problem(split, items, content))
            continue
        for index, item in enumerate(items):
            problems += [f"{split}[{index}] {p}" for p in _item_problems(item, path.parent, keys, mask_keys, min_size)]
        if split in both_classes:
            problems += _class_problems(split, items)
    _raise_problems(f"check_datalist: {path}", problems)
    return path


def _read_datalist(path: Path) -> dict:
    """The datalist's JSON object.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DatalistError: ``path`` is not JSON, or not a JSON object.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"check_datalist: datalist {path} does not exist; write it with `cfattr prepare` or `cfattr phantoms`, "
            "or point the bundle's `datalist` key at it."
        )
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatalistError(f"check_datalist: {path} is not valid JSON ({err}); rewrite it with `cfattr prepare`.")
    if not isinstance(content, dict):
        raise DatalistError(
            f"check_datalist: {path} holds a {type(content).__name__}, expected an object "
            '{"training": [...], "validation": [...], "test": [...]} as written by `cfattr prepare`.'
        )
    return content


def _split_problem(split: str, items: object, content: dict) -> str:
    """A required split that is missing or empty, with the splits the datalist has and the fix.

    A missing standard split (training/validation/test) means the data set was split differently: re-split it. Any
    other name is most likely a mistyped split override: pick one of the splits that hold items.
    """
    found = "is missing" if items is None else f"is {json.dumps(items)[:40]}"
    present = [name for name, value in content.items() if isinstance(value, list) and value]
    if split in SPLITS or not present:
        fix = f"re-split the data set into {list(SPLITS)} (`cfattr prepare` or `cfattr phantoms`)"
    else:
        example = "test" if "test" in present else present[0]
        fix = (
            f"pick one of them with the bundle's split override, e.g. --inference_split {example} (--eval_split in "
            "the classifier's and inpainter's evaluate.json, --evaluation_split in the attributor's)"
        )
    return f"split {split!r} {found}, expected a non-empty list of items; the datalist's splits are {present}: {fix}"


def _class_problems(split: str, items: list) -> list[str]:
    """The problem of a split that lacks one of the labels 0 and 1 (ROC-AUC is undefined on one class)."""
    labels = [item.get("label") for item in items if isinstance(item, dict)]
    healthy, pathological = labels.count(0), labels.count(1)
    if healthy and pathological:
        return []
    return [
        f"split {split!r} holds {healthy} healthy (label 0) and {pathological} pathological (label 1) item(s), "
        "expected both classes: ROC-AUC (the classifier's val_auc and roc.json) is undefined on one class; move items "
        "between the splits or re-split the data set by label (`cfattr prepare` and `cfattr phantoms` split each class "
        "alike)"
    ]


def _raise_problems(prefix: str, problems: list[str]) -> None:
    """One DatalistError listing the first problems (a user fixes the data once, not once per run)."""
    if problems:
        shown = "\n  ".join(problems[:_SHOWN_PROBLEMS])
        more = f"\n  … and {len(problems) - _SHOWN_PROBLEMS} more" if len(problems) > _SHOWN_PROBLEMS else ""
        raise DatalistError(f"{prefix}: {len(problems)} problem(s):\n  {shown}{more}")


def _item_problems(
    item: object, base: Path, keys: Sequence[str], mask_keys: Sequence[str], min_size: int
) -> list[str]:
    if not isinstance(item, dict):
        return [f"is a {type(item).__name__}, expected an object with keys {list(keys)}"]
    missing = [k for k in keys if k not in item]
    if missing:
        return [f"lacks {missing}, expected keys {list(keys)} (paths relative to the datalist's folder)"]
    problems = []
    if "label" in keys and item["label"] not in (0, 1):
        problems.append(f"label {item['label']!r}: expected 0 (healthy) or 1 (pathological)")
    if "image" in keys and not _is_path(item["image"]):
        return [*problems, _not_a_path("image", item["image"], base)]
    image, problem = _read(base, item["image"], "image") if "image" in keys else (None, None)
    if problem:
        return [*problems, problem]
    if image is not None:
        problems += _image_problems(image, base / item["image"], min_size)
    for key in mask_keys:
        if item.get(key) not in (None, ""):  # absent, null or "": no mask (the data contract's "absent")
            problems += _mask_file_problems(key, item[key], base, image)
    return problems


def _mask_file_problems(key: str, value: object, base: Path, image: np.ndarray | None) -> list[str]:
    """The problems of the mask ``value`` names: not a path, unreadable, or not a binary mask on the image's grid."""
    if not _is_path(value):
        return [_not_a_path(key, value, base)]
    mask, problem = _read(base, value, key)
    return [problem] if problem else _mask_problems(mask, base / value, key, image)


def _is_path(value: object) -> bool:
    """A usable path value: a non-empty string (as JSON holds it) or a path object (the Python API)."""
    return isinstance(value, os.PathLike) or (isinstance(value, str) and value != "")


def _not_a_path(key: str, value: object, base: Path) -> str:
    """The problem of a path-valued key that holds ``null``, a number, a list, … instead of a path string."""
    return (
        f"{key} is {json.dumps(value, default=str)[:40]} ({type(value).__name__}), expected a file path string "
        f'(relative to {_where(base)}, or absolute): write the path of the file in quotes, e.g. "{key}s/0001.png"'
    )


def _where(base: Path) -> str:
    """What relative paths are relative to, in words."""
    return "the working directory" if base == Path() else "the datalist's folder"


def _read(base: Path, relative: str | os.PathLike, key: str) -> tuple[np.ndarray | None, str | None]:
    """The file's array, channel first, as ``LoadImaged`` gives it to the bundles; or the problem."""
    file = base / relative
    if not file.is_file():
        return None, f"{key} {file} does not exist: fix the path (relative to {_where(base)}) or the data set"
    try:
        if _is_monochrome1(file):
            return None, (
                f"{key} {file} is a MONOCHROME1 DICOM, which LoadImaged reads inverted (bright = low density): "
                "convert it to PNG through cfattr_monai.io.load_image (DICOM display pipeline) or `cfattr prepare`"
            )
        array = _load(file)
    except Exception as err:  # PIL UnidentifiedImageError, OSError on truncated files, pydicom AttributeError, …
        return None, (
            f"{key} {file} cannot be read ({type(err).__name__}: {str(err)[:120]}): the file is corrupt, truncated "
            "or holds no pixel data; re-export it as PNG"
        )
    if array.ndim == 4 and array.shape[-1] == 1:  # NIfTI stores 2-D images as (X, Y, 1)
        array = array[..., 0]
    return array, None


def _load(file: Path) -> np.ndarray:
    """Channel-first array in MONAI's axis order (columns first); Pillow directly for speed where it can read."""
    if file.suffix.lower() in _PIL_SUFFIXES:
        with Image.open(file) as picture:
            array = np.asarray(picture)
        return array.T[None] if array.ndim == 2 else array.transpose(2, 1, 0)  # (H, W[, C]) -> (C, W, H)
    return np.asarray(_LOAD(str(file)))


def _is_monochrome1(file: Path) -> bool:
    if not pydicom.misc.is_dicom(file):
        return False
    return pydicom.dcmread(file, stop_before_pixels=True).get("PhotometricInterpretation", "") == "MONOCHROME1"


def _image_problems(image: np.ndarray, file: Path, min_size: int) -> list[str]:
    if image.ndim != 3 or image.shape[0] != 1:
        kind = f"{image.shape[0]}-channel (colour)" if image.ndim == 3 else f"{image.ndim - 1}-D"
        return [
            f"image {file} is a {kind} array of shape {image.shape}, expected one grey 2-D plane: convert it to "
            "8-bit grey PNG (e.g. `cfattr prepare`, or PIL .convert('L'))"
        ]
    problems = []
    n_bad = int((~np.isfinite(image)).sum())
    if n_bad:
        problems.append(f"image {file} has {n_bad} NaN/Inf pixel(s), expected finite values: fix the export")
    elif image.min() == image.max():
        problems.append(f"image {file} is constant ({float(image.min()):g}), expected an image: check the export")
    if min(image.shape[1:]) < min_size:
        problems.append(
            f"image {file} is {image.shape[1]}×{image.shape[2]} pixels, expected at least {min_size} per side (the "
            "network's minimum size): use the full-resolution image"
        )
    return problems


def _mask_problems(mask: np.ndarray, file: Path, key: str, image: np.ndarray | None) -> list[str]:
    if mask.ndim != 3 or mask.shape[0] != 1:
        kind = f"{mask.shape[0]}-channel (e.g. RGB)" if mask.ndim == 3 else f"{mask.ndim - 1}-D"
        return [
            f"{key} {file} is a {kind} array of shape {mask.shape}, expected a single-channel 2-D mask: save it as a "
            "single-channel 8-bit PNG (0/255, e.g. any channel > 0) or a one-channel NIfTI"
        ]
    problems = []
    if image is not None and mask.shape[1:] != image.shape[1:]:
        problems.append(
            f"{key} {file} is {mask.shape[1]}×{mask.shape[2]}, expected the size of its image "
            f"{image.shape[1]}×{image.shape[2]}: resize it with nearest-neighbour interpolation or re-prepare the data"
        )
    levels = set(np.unique(mask).tolist()) if mask.size else set()
    if not any(levels <= allowed for allowed in _BINARY_LEVELS):
        shown = sorted(levels)[:6]
        problems.append(
            f"{key} {file} holds values {shown}{' …' if len(levels) > 6 else ''}, expected a binary mask "
            "({0, 1} or {0, 255}): threshold it (mask > 0) and save it again"
        )
    return problems


def check_pairs(pairs: object, image_key: str = "image", mask_key: str = "hole", min_size: int = MIN_IMAGE_SIZE) -> list:
    """Check the ``[{"image": path, "hole": path}, …]`` pairs of an inpainting run; return them unchanged.

    Paths are strings, absolute or relative to the working directory. Each image passes the checks of
    :func:`check_datalist`; each hole must exist, have one channel, be binary, have its image's size and leave some of
    the image as context.

    Raises:
        DatalistError: the list is empty or not a list, or one of the problems above (all listed, with the fix).

    Example:
        >>> check_pairs([])
        Traceback (most recent call last):
        ...
        cfattr_monai.data.validate.DatalistError: check_pairs: no image + hole pairs were given ...
    """
    if not isinstance(pairs, list) or not pairs:
        raise DatalistError(
            f"check_pairs: no image + hole pairs were given (got {json.dumps(pairs, default=str)[:60]}); pass "
            f'pairs=[{{"{image_key}": image path, "{mask_key}": hole mask path}}, …] (white = the region to replace).'
        )
    problems = []
    for index, item in enumerate(pairs):
        if isinstance(item, dict) and item.get(mask_key) in (None, ""):
            found = [f"lacks {mask_key!r}: give the hole mask of {item.get(image_key)} (white = the region to replace)"]
        else:
            found = _item_problems(item, Path(), (image_key,), (mask_key,), min_size)
        if not found and bool(np.all(_read(Path(), item[mask_key], mask_key)[0] > 0)):
            found = [
                f"{mask_key} {item[mask_key]} covers the whole image: there is no context left to inpaint from; give "
                "a hole that leaves part of the image"
            ]
        problems += [f"pair {index} {p}" for p in found]
    _raise_problems("check_pairs", problems)
    return pairs


def healthy_items(datalist: str | Path, split: str) -> list[dict]:
    """The healthy (label 0) items of ``split``, paths joined to the datalist's folder, as MONAI's loader reads them.

    The inpainter trains and validates on healthy images only (its bundle's ``train.json``).

    Raises:
        DatalistError: ``split`` holds no healthy image.
    """
    items = load_decathlon_datalist(str(datalist), False, split, str(Path(datalist).parent))
    healthy = [item for item in items if item["label"] == 0]
    if not healthy:
        raise DatalistError(
            f"healthy_items: {datalist}: split {split!r} holds no healthy image among its {len(items)} item(s), "
            "expected at least one with label 0: the inpainter trains and validates on healthy images only. Add label-0 "
            f"images to {split!r} or re-split the data set."
        )
    return healthy
