"""Synthetic phantoms: mammography-like and chest-X-ray-like images with exact lesion and organ masks.

The phantoms are the project's embedded data set: the demo trains all three bundles on them, and the tests build
tiny ones. For every image the generator returns the image, its label (0 healthy, 1 at least one lesion), the exact
lesion mask and the organ mask (breast without pectoral muscle; lung fields). The task is made hard on purpose by
low lesion contrast, small lesions and a texture that camouflages them (see :class:`Difficulty`), so that a small
classifier reaches a test ROC-AUC well below 1 (docs/phantoms.md gives the measured numbers).

A data set on disk is a folder with ``images/``, ``lesions/`` and ``organs/`` (8-bit grey PNG, masks 0/255), a
MONAI datalist ``datalist.json`` (``training`` / ``validation`` / ``test``, paths relative to the folder) and
``phantoms.json`` (the generation parameters). Image ``i`` is drawn from ``np.random.default_rng([seed, i])``
alone, so the same seed gives byte-identical files however the work is split.

Example:
    >>> import numpy as np
    >>> sample = generate_phantom("mammo", 64, np.random.default_rng(0), label=1)
    >>> sample["image"].shape, sample["label"], bool(sample["lesion"].any())
    ((64, 64), 1, True)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np

from cfattr_monai.data.datalist import save_png, staged_folder, stratified_split, write_datalist
from cfattr_monai.data.phantom_anatomy import chest_anatomy, chest_opacity, mammo_anatomy, mammo_mass

__all__ = [
    "KINDS",
    "Difficulty",
    "default_difficulty",
    "generate_phantom",
    "write_phantom_dataset",
    "ensure_phantom_dataset",
    "write_healthy_twins",
    "save_phantom_figure",
]

KINDS = ("mammo", "chest")
GENERATOR_VERSION = 4  # bump when the drawing code changes, so that ensure_phantom_dataset refreshes old sets

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """How hard the phantom task is.

    Args:
        contrast: range of the lesion's peak intensity added to the tissue (image in [0, 1]).
        radius: range of the lesion radius as a fraction of the image width.
        max_lesions: a pathological image carries 1 … ``max_lesions`` lesions (one with probability
            0.7 + 0.3 / ``max_lesions``: 0.7 picks one, else the count is drawn uniformly from 1 … ``max_lesions``).
        prevalence: fraction of pathological images in a written data set (0.5 = balanced classes).
        texture: amplitude of the background texture that camouflages the lesions.
        spiculated: fraction of spiculated masses (mammo only).
    """

    contrast: tuple[float, float]
    radius: tuple[float, float]
    max_lesions: int = 2
    prevalence: float = 0.5
    texture: float = 0.06
    spiculated: float = 0.4

    def __post_init__(self):
        for name in ("contrast", "radius"):
            low, high = value = tuple(float(v) for v in getattr(self, name))
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(f"Difficulty.{name} must be (low, high) with 0 < low <= high <= 1, got {value}.")
            object.__setattr__(self, name, value)
        if int(self.max_lesions) < 1:
            raise ValueError(f"Difficulty.max_lesions must be >= 1, got {self.max_lesions}.")
        for name in ("prevalence", "spiculated"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"Difficulty.{name} must lie in [0, 1], got {getattr(self, name)}.")
        if float(self.texture) < 0.0:
            raise ValueError(f"Difficulty.texture must be >= 0, got {self.texture}.")


_DEFAULTS = {
    # calibrated so that the classifier bundle's demo config (chest: with --num_epochs 40) lands between test
    # ROC-AUC 0.80 and 0.97 (measurements and commands: docs/phantoms.md)
    "mammo": Difficulty(contrast=(0.25, 0.40), radius=(0.04, 0.12), texture=0.06),
    "chest": Difficulty(contrast=(0.2, 0.35), radius=(0.08, 0.15), texture=0.04),
}


def default_difficulty(kind: str, **overrides) -> Difficulty:
    """The calibrated :class:`Difficulty` of ``kind`` with some fields replaced (``None`` values are ignored).

    Raises:
        ValueError: unknown kind or field name.
    """
    _check_kind(kind)
    fields = {f.name for f in dataclasses.fields(Difficulty)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown difficulty parameter(s) {unknown}; expected some of {sorted(fields)}.")
    return dataclasses.replace(_DEFAULTS[kind], **{k: v for k, v in overrides.items() if v is not None})


def generate_phantom(kind: str, size: int, rng: np.random.Generator, label: int | None = None, **difficulty) -> dict:
    """Draw one phantom.

    Args:
        kind: ``"mammo"`` or ``"chest"``.
        size: side length in pixels (the image is square), at least 32.
        rng: the image's own random generator (e.g. ``np.random.default_rng([seed, index])``).
        label: 1 to draw lesions, 0 for a healthy image, ``None`` to draw it with probability ``prevalence``.
        difficulty: :class:`Difficulty` fields overriding the kind's defaults.

    Returns:
        ``dict(image=float32 (H, W) in [0, 1], label=int, lesion=uint8 (H, W) {0, 1}, organ=uint8 (H, W) {0, 1})``
        with ``lesion ⊂ organ`` and ``label == lesion.any()``.
    """
    settings = default_difficulty(kind, **difficulty)
    if int(size) < 32:
        raise ValueError(f"phantom size must be at least 32 pixels, got {size}.")
    if label is None:
        label = int(rng.random() < settings.prevalence)
    if label not in (0, 1):
        raise ValueError(f"label must be 0 (healthy) or 1 (lesion), got {label!r}.")
    if kind == "mammo":
        image, organ, thickness = mammo_anatomy(size, rng, settings.texture)
    else:
        image, organ = chest_anatomy(size, rng, settings.texture)
    lesion = np.zeros(image.shape, dtype=bool)
    if label:
        count = 1 if rng.random() < 0.7 else int(rng.integers(1, settings.max_lesions + 1))
        for _ in range(count):
            radius = rng.uniform(*settings.radius)
            if kind == "mammo":
                profile = mammo_mass(size, rng, organ, radius, spiculated=rng.random() < settings.spiculated)
                profile *= 0.6 + 0.4 * thickness  # denser tissue shows a mass more, as in a compressed breast
            else:
                profile = chest_opacity(size, rng, organ, radius)
            image = image + rng.uniform(*settings.contrast) * profile
            lesion |= profile > 0
    return {
        "image": add_film_label(np.clip(image, 0.0, 1.0), organ).astype(np.float32),
        "label": int(label),
        "lesion": lesion.astype(np.uint8),
        "organ": organ.astype(np.uint8),
    }


def add_film_label(image: np.ndarray, organ: np.ndarray) -> np.ndarray:
    """Burn a white film label (value 1.0) into the first background corner, as on digitized films.

    Without it a lesion is often the brightest structure of its image, so per-image min-max scaling
    (``ScaleIntensityd``) darkens the whole pathological image and a classifier learns that global shortcut instead
    of the lesion — and no local replacement of the lesion can then change its decision. With the label every image
    spans the same range, so the label is carried by the lesion pixels alone.
    """
    size = image.shape[0]
    height, width = max(2, size // 24), max(4, size // 10)
    for rows in (slice(1, 1 + height), slice(size - 1 - height, size - 1)):
        for cols in (slice(size - 1 - width, size - 1), slice(1, 1 + width)):
            if not organ[rows, cols].any():
                image = image.copy()
                image[rows, cols] = 1.0
                return image
    raise ValueError(f"add_film_label: no background corner of {height}x{width} pixels outside the organ.")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"phantom kind must be one of {KINDS}, got {kind!r}.")


def _parameters(kind: str, n: int, size: int, seed: int, splits, settings: Difficulty) -> dict:
    return {
        "generator": GENERATOR_VERSION,
        "kind": kind,
        "n": int(n),
        "size": int(size),
        "seed": int(seed),
        "splits": [float(f) for f in splits],
        "difficulty": dataclasses.asdict(settings),
    }


def _save_image(image: np.ndarray, path: Path) -> None:
    """A phantom image in [0, 1] as the data set stores it: 8-bit grey PNG."""
    save_png(np.round(image * 255.0).astype(np.uint8), path)


def _write_into(folder: Path, parameters: dict, settings: Difficulty) -> None:
    """Write every file of a data set into an existing, empty ``folder``."""
    kind, n, size, seed = (parameters[k] for k in ("kind", "n", "size", "seed"))
    for sub in ("images", "lesions", "organs"):
        (folder / sub).mkdir()
    n_lesion = int(round(n * settings.prevalence))
    labels = np.random.default_rng([seed, 2**31 - 2]).permutation([1] * n_lesion + [0] * (n - n_lesion))
    items = []
    for index, label in enumerate(labels):
        sample = generate_phantom(kind, size, np.random.default_rng([seed, index]), label=int(label),
                                  **dataclasses.asdict(settings))
        name = f"{kind}_{index:05d}.png"
        _save_image(sample["image"], folder / "images" / name)
        save_png(sample["lesion"] * np.uint8(255), folder / "lesions" / name)
        save_png(sample["organ"] * np.uint8(255), folder / "organs" / name)
        items.append({"image": f"images/{name}", "label": int(label), "lesion": f"lesions/{name}",
                      "organ": f"organs/{name}"})
    write_datalist(folder, items, stratified_split(labels, parameters["splits"], seed), phantoms=parameters)


def write_phantom_dataset(out_dir, kind: str = "mammo", n: int = 600, size: int = 256, seed: int = 0,
                          splits=(0.6, 0.2, 0.2), **difficulty) -> Path:
    """Write ``n`` phantoms as PNGs plus ``datalist.json`` and ``phantoms.json`` into ``out_dir``; atomic.

    The files are written into a temporary sibling folder that is renamed to ``out_dir`` at the end, so an
    interrupted run leaves nothing half-written. An existing phantom folder (one holding ``phantoms.json``) is
    replaced; any other non-empty folder is refused.

    Args:
        out_dir: destination folder.
        kind: ``"mammo"`` or ``"chest"``.
        n: number of images (at least 10, so that each split holds both classes).
        size: side length in pixels.
        seed: data-set seed; image ``i`` uses ``np.random.default_rng([seed, i])``.
        splits: training / validation / test fractions, stratified by label.
        difficulty: :class:`Difficulty` fields overriding the kind's defaults.

    Returns:
        the path of ``datalist.json``.
    """
    out_dir = Path(out_dir)
    settings = default_difficulty(kind, **difficulty)
    if int(n) < 10:
        raise ValueError(f"n must be at least 10 so that every split holds images, got {n}.")
    parameters = _parameters(kind, n, size, seed, splits, settings)
    stratified_split([0, 1], parameters["splits"])  # validate the fractions before any work
    with staged_folder(out_dir, replaceable=lambda folder: (folder / "phantoms.json").is_file()) as staging:
        _write_into(staging, parameters, settings)
    return out_dir / "datalist.json"


def ensure_phantom_dataset(datalist, kind: str = "mammo", n: int = 600, size: int = 256, seed: int = 0,
                           splits=(0.6, 0.2, 0.2), **difficulty) -> Path:
    """Return ``datalist``; write the phantom data set into its folder first when it is missing.

    Bundle configs call this in ``initialize`` so that they run on a fresh clone. An existing data set whose
    ``phantoms.json`` records other parameters is not silently reused: that is an error telling how to refresh it.
    Generating into a folder that does not exist logs a warning (a mistyped ``--dataset_dir`` would otherwise train
    on phantoms without a word).

    Args:
        datalist: path of the data set's ``datalist.json``.
        kind, n, size, seed, splits, difficulty: as for :func:`write_phantom_dataset`.

    Raises:
        ValueError: ``datalist`` is not named ``datalist.json``, or the existing data set was made differently.
    """
    datalist = Path(datalist)
    if datalist.name != "datalist.json":
        raise ValueError(f"phantom datalist must be named 'datalist.json', got {datalist}.")
    if not datalist.is_file():
        if not datalist.parent.exists():
            logger.warning(
                "%s does not exist: writing %d generated %s phantoms into it. If you meant a prepared real data set, "
                "fix the path and pass --phantoms False.", datalist.parent, n, kind
            )
        try:
            return write_phantom_dataset(datalist.parent, kind, n, size, seed, splits, **difficulty)
        except OSError:  # another process renamed its finished copy into place first
            if not datalist.is_file():
                raise
    wanted = json.loads(json.dumps(_parameters(kind, n, size, seed, splits, default_difficulty(kind, **difficulty))))
    recorded_file = datalist.parent / "phantoms.json"
    recorded = json.loads(recorded_file.read_text()) if recorded_file.is_file() else {}
    differing = {k: {"recorded": recorded.get(k), "requested": v} for k, v in wanted.items()
                 if recorded and recorded.get(k) != v}
    if differing:
        raise ValueError(f"{recorded_file} records other generation parameters than requested: {differing}; delete "
                         f"{datalist.parent} to regenerate it, or request the recorded parameters.")
    return datalist


def write_healthy_twins(datalist, split: str, out_dir) -> Path:
    """Write the lesion-free twin of every image of ``split`` of a phantom data set; return the twins' datalist.

    Image ``i`` draws its anatomy from ``np.random.default_rng([seed, i])`` before its lesions, so the same draw with
    ``label=0`` is the very same anatomy without the lesions: the true healthy counterfactual that π(M) approximates.
    A healthy image's twin is the image itself. With it, "can *any* removal of the lesions flip this classifier?"
    has an exact answer on phantoms (:mod:`cfattr_monai.metrics.counterfactual` reports it as ``twin_flipped``).

    Args:
        datalist: ``datalist.json`` of a data set written by :func:`write_phantom_dataset` (``phantoms.json`` beside).
        split: the datalist key whose images get twins.
        out_dir: folder to write ``twins/*.png`` and ``datalist.json`` (``split`` only; organs point to the data
            set's files, lesions are absent, labels 0) into; created if missing.

    Raises:
        ValueError: no ``phantoms.json`` beside ``datalist``, ``split`` missing or empty, or an image not named
            ``<kind>_<index>.png``.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> datalist = write_phantom_dataset(folder + "/set", n=10, size=32)
        >>> twins = json.loads(write_healthy_twins(datalist, "test", folder + "/twins").read_text())["test"]
        >>> [item["label"] for item in twins]
        [0, 0]
    """
    datalist, out_dir = Path(datalist), Path(out_dir)
    recorded = datalist.parent / "phantoms.json"
    if not recorded.is_file():
        raise ValueError(f"{recorded} not found: healthy twins exist only for phantom data sets written by "
                         "write_phantom_dataset.")
    parameters = json.loads(recorded.read_text())
    kind, size, seed = parameters["kind"], parameters["size"], parameters["seed"]
    lists = json.loads(datalist.read_text())
    if not lists.get(split):
        raise ValueError(f"{datalist}: no images in split {split!r} (splits: {sorted(lists)}); pass one of those.")
    items = lists[split]
    (out_dir / "twins").mkdir(parents=True, exist_ok=True)
    twins = []
    for item in items:
        name = Path(item["image"]).name
        stem, _, index = Path(name).stem.rpartition("_")
        if stem != kind or not index.isdigit():
            raise ValueError(f"{datalist.parent / item['image']}: expected a phantom named '{kind}_<index>.png'.")
        sample = generate_phantom(kind, size, np.random.default_rng([seed, int(index)]), label=0,
                                  **parameters["difficulty"])
        _save_image(sample["image"], out_dir / "twins" / name)
        twins.append({"image": f"twins/{name}", "label": 0, "organ": os.path.relpath(datalist.parent / item["organ"],
                                                                                     out_dir)})
    path = out_dir / "datalist.json"
    path.write_text(json.dumps({split: twins}, indent=1) + "\n")
    return path


def save_phantom_figure(path, kind: str = "mammo", count: int = 4, size: int = 256, seed: int = 0,
                        **difficulty) -> Path:
    """Save ``count`` pathological phantoms: the images (top row) and their lesion (red) and organ (green) outlines.

    Args:
        path: output PNG.
        kind: ``"mammo"`` or ``"chest"``.
        count: number of panels.
        size: side length in pixels.
        seed: seed of the first panel; panel ``i`` uses ``np.random.default_rng([seed, i])``.
        difficulty: :class:`Difficulty` fields overriding the kind's defaults.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _check_kind(kind)
    path = Path(path)
    figure, axes = plt.subplots(2, count, figsize=(2.0 * count, 4.2), squeeze=False)
    for index in range(count):
        sample = generate_phantom(kind, size, np.random.default_rng([seed, index]), label=1, **difficulty)
        for axis in axes[:, index]:
            axis.imshow(sample["image"], cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_axis_off()
        axes[1, index].contour(sample["organ"], levels=[0.5], colors="lime", linewidths=0.6)
        axes[1, index].contour(sample["lesion"], levels=[0.5], colors="red", linewidths=0.6)
    figure.suptitle(f"{kind} phantoms ({size}², seed {seed}); below: lesion (red), organ (green)", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial.png")
    figure.savefig(partial, dpi=90)
    plt.close(figure)
    os.replace(partial, path)
    return path
