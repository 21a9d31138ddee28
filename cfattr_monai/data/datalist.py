"""Writing data sets: stratified (patient-wise) splits, 8-bit PNGs, and folders that appear whole or not at all.

Every data set this package writes is a folder with PNGs and a MONAI datalist ``datalist.json``
(``{"training": [...], "validation": [...], "test": [...]}``, item paths relative to the folder) that
``monai.data.load_decathlon_datalist(path, data_list_key=..., base_dir=folder)`` reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SPLITS", "stratified_split", "grouped_split", "save_png", "staged_folder", "write_datalist"]

SPLITS = ("training", "validation", "test")


def stratified_split(labels: Sequence[int], fractions=(0.6, 0.2, 0.2), seed: int = 0) -> dict[str, list[int]]:
    """Indices per split (``training``/``validation``/``test``), stratified by label, shuffled by ``seed``.

    Each class is cut by ``fractions`` on its own, so every split keeps the class balance.

    Raises:
        ValueError: ``fractions`` are not three non-negative numbers summing to 1.

    Example:
        >>> {k: len(v) for k, v in stratified_split([0, 1] * 5).items()}
        {'training': 6, 'validation': 2, 'test': 2}
    """
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"splits must be three non-negative fractions summing to 1, got {fractions.tolist()}.")
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 2**31 - 1])  # a stream no phantom image uses
    parts: dict[str, list[int]] = {name: [] for name in SPLITS}
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        bounds = np.round(np.cumsum(fractions)[:2] * members.size).astype(int)
        for name, chunk in zip(SPLITS, np.split(members, bounds)):
            parts[name].extend(int(i) for i in chunk)
    return {name: sorted(indices) for name, indices in parts.items()}


def grouped_split(groups: Sequence, labels: Sequence[int], fractions=(0.6, 0.2, 0.2), seed: int = 0):
    """Patient-wise :func:`stratified_split`: all items of one group land in one split.

    A group is stratified by its highest label (a patient with any lesion counts as pathological).

    Example:
        >>> parts = grouped_split(["a", "a", "b", "b", "c"], [0, 1, 0, 0, 1], (0.4, 0.3, 0.3))
        >>> sorted(len(v) for v in parts.values())
        [1, 2, 2]
    """
    if len(groups) != len(labels):
        raise ValueError(f"grouped_split needs one group per label, got {len(groups)} groups and {len(labels)} labels.")
    names = sorted(set(groups), key=str)
    index = {name: i for i, name in enumerate(names)}
    group_label = np.zeros(len(names), dtype=int)
    for group, label in zip(groups, labels):
        group_label[index[group]] = max(group_label[index[group]], int(label))
    by_group = {name: set(members) for name, members in stratified_split(group_label, fractions, seed).items()}
    return {name: [i for i, group in enumerate(groups) if index[group] in members] for name, members in by_group.items()}


def save_png(array: np.ndarray, path: Path) -> None:
    """Save an (H, W) uint8 array as an 8-bit grey PNG (deterministic bytes: no metadata)."""
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"save_png expects an (H, W) uint8 array for {path}, got {array.dtype} {array.shape}.")
    Image.fromarray(array, mode="L").save(path, format="PNG", compress_level=1)  # fast; bytes still deterministic


@contextlib.contextmanager
def staged_folder(out_dir, replaceable: Callable[[Path], bool] = lambda folder: False) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out_dir``; rename it to ``out_dir`` when the block succeeds.

    Nothing is left behind when the block raises. An existing ``out_dir`` must be empty, or ``replaceable``
    (a predicate on the folder) must accept it, in which case it is replaced.

    Raises:
        ValueError: ``out_dir`` exists, is not empty and is not replaceable.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not replaceable(out_dir):
        raise ValueError(f"output folder {out_dir} exists and is not empty; choose a new or empty folder.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
        if out_dir.exists():
            os.replace(out_dir, retired / out_dir.name)
        os.replace(staging, out_dir)  # the old folder is deleted only once the new one is in place
        shutil.rmtree(retired)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_datalist(folder: Path, items: Sequence[dict], parts: dict[str, list[int]], **metadata) -> Path:
    """Write ``datalist.json`` (items per split) and, when given, ``metadata`` as ``<key>.json`` files.

    Returns:
        the path of ``datalist.json``.
    """
    content = {name: [items[i] for i in parts[name]] for name in SPLITS}
    path = Path(folder) / "datalist.json"
    path.write_text(json.dumps(content, indent=1) + "\n")
    for name, value in metadata.items():
        (Path(folder) / f"{name}.json").write_text(json.dumps(value, indent=1) + "\n")
    return path
