"""Preparers: public data sets → the package's data-set folder (PNGs + MONAI datalist, patient-wise splits).

* **mini-MIAS** (Suckling et al. 1994), normal vs. mass, from its original distribution (``mdbNNN.pgm`` +
  ``Info.txt``; lesion centres with the origin at the *bottom-left*, radii on the 1024 grid) or from a PNG layout
  with ``labels.csv`` (columns ``refnum, image, mask, patient_pair, label_normal_vs_mass``). Images whose only
  findings are calcifications, distortions or asymmetries have no normal-vs-mass label and are left out. The two
  films of a patient (``mdb001``/``mdb002`` …) stay in one split. Lesion masks are the annotation circles.
* **Shenzhen / Montgomery** (Jaeger et al. 2014), normal vs. TB: every ``CHNCXR_NNNN_L.png`` / ``MCUCXR_NNNN_L.png``
  below the source folder, label ``L`` from the file name; Montgomery's ``ManualMask/{left,right}Mask`` give the
  lung (organ) mask when present. One image per patient.
* **CBIS-DDSM**: see :mod:`cfattr_monai.data.cbis_ddsm`.

Breast masks of mammograms are derived by :func:`cfattr_monai.data.organ.breast_mask`. Lesion masks are written
for evaluation only; the bundles never train on them. Nothing is ever written into the source folder.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
from PIL import Image

from cfattr_monai.data.cbis_ddsm import prepare_cbis_ddsm
from cfattr_monai.data.records import Record, read_grey, write_records

__all__ = ["PREPARERS", "parse_mias_info", "prepare_mini_mias", "prepare_shenzhen"]

MIAS_MASS_CLASSES = {"CIRC", "SPIC", "MISC"}
_MIAS_LINE = re.compile(
    r"^(?P<ref>mdb\d{3})\s+(?P<tissue>[FGD])\s+(?P<abnormality>NORM|CALC|CIRC|SPIC|MISC|ARCH|ASYM)"
    r"(?:\s+(?P<severity>[BM])(?:\s+(?P<x>\d+)\s+(?P<y>\d+)\s+(?P<radius>\d+)|\s+\*NOTE\s*\d\*)?)?\s*$"
)
_MIAS_DATA_LINE = re.compile(r"^mdb\d")
_CXR_NAME = re.compile(r"^(?P<patient>(?:CHNCXR|MCUCXR)_\d{4})_(?P<label>[01])$")


def parse_mias_info(info: Path) -> dict[str, dict]:
    """Parse mini-MIAS ``Info.txt`` into ``{ref: {"classes": set, "circles": [(x, y_bottom_left, radius)]}}``.

    Lines not starting with ``mdb<digit>`` (the header) are skipped; such a line that does not parse is an error.

    Raises:
        FileNotFoundError: ``info`` is missing.
        ValueError: a line that does not parse, naming the file and line.
    """
    info = Path(info)
    if not info.is_file():
        raise FileNotFoundError(f"mini-MIAS Info.txt not found at {info}.")
    entries: dict[str, dict] = {}
    for number, line in enumerate(info.read_text(errors="replace").splitlines(), start=1):
        if not _MIAS_DATA_LINE.match(line):
            continue
        match = _MIAS_LINE.match(line)
        if match is None:
            raise ValueError(
                f"{info}:{number}: cannot parse {line.strip()!r}; expected 'mdbNNN <F|G|D> <NORM|CALC|CIRC|SPIC|"
                "MISC|ARCH|ASYM> [<B|M> [x y radius]]' as in the MIAS distribution."
            )
        entry = entries.setdefault(match["ref"], {"classes": set(), "circles": []})
        entry["classes"].add(match["abnormality"])
        if match["x"] is not None and match["abnormality"] in MIAS_MASS_CLASSES:
            entry["circles"].append((float(match["x"]), float(match["y"]), float(match["radius"])))
    if not entries:
        raise ValueError(f"{info} lists no mdbNNN image; is it the mini-MIAS Info.txt?")
    return entries


def _mias_label(classes: set[str]) -> int | None:
    if classes & MIAS_MASS_CLASSES:
        return 1
    return 0 if classes == {"NORM"} else None


def _circles_mask(circles, grid: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Filled circles given on a ``grid`` (H, W) with the origin at the bottom-left, drawn on ``shape`` (H, W)."""
    rows = (np.arange(shape[0]) + 0.5) * grid[0] / shape[0]
    cols = (np.arange(shape[1]) + 0.5) * grid[1] / shape[1]
    mask = np.zeros(shape, dtype=bool)
    for x, y, radius in circles:
        mask |= ((cols[None, :] - x) ** 2 + (rows[:, None] - (grid[0] - y)) ** 2) <= radius**2
    return mask.astype(np.uint8)


def _mias_from_distribution(src: Path) -> list[Record]:
    info = src / "Info.txt"
    records = []
    for ref, entry in sorted(parse_mias_info(info).items()):
        label = _mias_label(entry["classes"])
        path = src / f"{ref}.pgm"
        if label is None:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"image {path} (listed in {info}) is missing.")
        with Image.open(path) as picture:
            grid = picture.size[::-1]
        circles = entry["circles"]
        records.append(Record(
            key=ref, patient=f"pair{(int(ref[3:]) + 1) // 2:03d}", label=label,
            load_image=lambda path=path: read_grey(path),
            load_lesion=(lambda shape, c=circles, g=grid: _circles_mask(c, g, shape)) if circles else None,
        ))
    return records


def _mias_from_png_layout(src: Path) -> list[Record]:
    table = src / "labels.csv"
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"refnum", "image", "mask", "patient_pair", "label_normal_vs_mass"}
    if not rows or needed - set(rows[0]):
        raise ValueError(f"{table} must have the columns {sorted(needed)}, got {sorted(rows[0]) if rows else []}.")
    records = []
    for row in rows:
        if row["label_normal_vs_mass"].strip() == "":
            continue
        image, mask = src / row["image"], src / row["mask"] if row["mask"].strip() else None
        for path in (image, mask):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"image {path} (listed in {table}) is missing.")
        records.append(Record(
            key=row["refnum"], patient=f"pair{int(row['patient_pair']):03d}", label=int(row["label_normal_vs_mass"]),
            load_image=lambda path=image: read_grey(path),
            load_lesion=(lambda shape, path=mask: read_grey(path)) if mask else None,
        ))
    return records


def prepare_mini_mias(src, out, size=None, seed: int = 0, splits=(0.6, 0.2, 0.2)) -> Path:
    """Prepare mini-MIAS (normal vs. mass) from ``src``: the PNG layout (``labels.csv``) or the distribution.

    Args:
        src: folder with ``labels.csv`` + PNGs, or with ``Info.txt`` + ``mdbNNN.pgm``.
        out: new or empty output folder.
        size: ``(H, W)`` of the written images, or ``None`` to keep them.
        seed: seed of the patient-wise split (by left/right film pair).
        splits: training / validation / test fractions of patients.

    Returns:
        the path of the written ``datalist.json``.

    Raises:
        FileNotFoundError: ``src`` holds neither layout, or a listed image is missing.
        ValueError: an ``Info.txt`` line or ``labels.csv`` that does not parse.
    """
    src = Path(src)
    if (src / "labels.csv").is_file():
        records, layout = _mias_from_png_layout(src), "png+labels.csv"
    elif (src / "Info.txt").is_file():
        records, layout = _mias_from_distribution(src), "pgm+Info.txt"
    else:
        raise FileNotFoundError(f"{src} holds neither labels.csv (PNG layout) nor Info.txt + mdbNNN.pgm (mini-MIAS "
                                "distribution); point --src at the folder that contains them.")
    source = {"dataset": "mini-MIAS", "layout": layout, "src": str(src.resolve()), "task": "normal vs mass",
              "lesion": "annotation circles", "cite": "Suckling et al. 1994, Excerpta Medica ICS 1069"}
    return write_records(out, records, size, seed, splits, mammogram=True, source=source)


def _lung_masks(src: Path) -> dict[str, tuple[Path, Path]]:
    """Montgomery's manual lung masks per image name: ``ManualMask/leftMask/<name>`` and ``rightMask/<name>``."""
    sides = {side: {p.name: p for folder in src.rglob(side) if folder.is_dir() for p in folder.glob("*.png")}
             for side in ("leftMask", "rightMask")}
    return {name: (left, sides["rightMask"][name]) for name, left in sides["leftMask"].items()
            if name in sides["rightMask"]}


def prepare_shenzhen(src, out, size=None, seed: int = 0, splits=(0.6, 0.2, 0.2)) -> Path:
    """Prepare Shenzhen and/or Montgomery (normal vs. TB) from every ``{CHN,MCU}CXR_NNNN_L.png`` below ``src``.

    Args:
        src: the data set folder (e.g. ``ChinaSet_AllFiles/CXR_png``, ``MontgomerySet``, or a folder with both).
        out, size, seed, splits: as for :func:`prepare_mini_mias`.

    Raises:
        FileNotFoundError: no matching image below ``src``.
    """
    src = Path(src)
    paths = sorted(p for p in src.rglob("*.png") if _CXR_NAME.match(p.stem) and not p.parent.name.endswith("Mask"))
    if not paths:
        raise FileNotFoundError(f"no Shenzhen/Montgomery image (CHNCXR_NNNN_0|1.png or MCUCXR_NNNN_0|1.png) found "
                                f"below {src}; point --src at the folder holding them.")
    lungs = _lung_masks(src)
    records = []
    for path in paths:
        match = _CXR_NAME.match(path.stem)
        pair = lungs.get(path.name)
        records.append(Record(
            key=path.stem, patient=match["patient"], label=int(match["label"]),
            load_image=lambda path=path: read_grey(path),
            load_organ=(lambda shape, pair=pair: np.maximum(*(read_grey(p) for p in pair))) if pair else None,
        ))
    source = {"dataset": "Shenzhen/Montgomery", "src": str(src.resolve()), "task": "normal vs tuberculosis",
              "lesion": "none (no lesion ground truth)", "cite": "Jaeger et al. 2014, QIMS 4(6)"}
    return write_records(out, records, size, seed, splits, mammogram=False, source=source)


PREPARERS = {"mini-mias": prepare_mini_mias, "shenzhen": prepare_shenzhen, "cbis-ddsm": prepare_cbis_ddsm}
