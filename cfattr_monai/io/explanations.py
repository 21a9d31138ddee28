"""Counterfactual explanations of image files or folders, written as files a clinic can use (``cfattr explain``).

For every input image, in a stream of batches (a folder of any size never sits in memory)::

    <stem>_map.nii.gz            soft attribution map M in [0, 1]     ┐ on the input's grid, with its affine
    <stem>_mask.nii.gz           binary map M̂ (uint8 0/1)             ┘ (NIfTI aligns with the source image)
    <stem>_overlay.png           the image with M (colour) and the contour of M̂ (green)
    <stem>_counterfactual.png    π(M̂): the image with the attributed region replaced by healthy tissue
    <stem>_overlay_sc.dcm        DICOM inputs only: the overlay as an RGB Secondary Capture of the study
    <stem>_mask_sc.dcm           DICOM inputs only: M̂ as a grey Secondary Capture (0/255)
    explanations.csv             one row per image (by its absolute path), appended and flushed when all its
                                 files exist; with ``resume`` a re-run skips the images already listed (e.g.
                                 after a crash)

Images of another size than the network's input (``image_size`` in the bundle config, or ``--image-size``) are
resized to it (MONAI ``Resize``, bilinear with anti-aliasing, as in the bundles' pre-processing); the maps are resized
back to the image's grid (soft map bilinear, binary map nearest) and the full-resolution counterfactual keeps the
original pixels outside M̂. Every file is written atomically; output stems come from the file name (or, for DICOM,
the SOP Instance UID) through :func:`~cfattr_monai.io.outputs.safe_stem`, so no input name can place a file outside
``--out``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import matplotlib
import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import Resize
from PIL import Image
from pydicom.uid import generate_uid
from scipy import ndimage
from tqdm import tqdm

from cfattr_monai.data.validate import MIN_IMAGE_SIZE
from cfattr_monai.io.dicom import DicomInputError, read_header, series_description, write_secondary_capture
from cfattr_monai.io.images import ImageInputError, is_dicom_file, iter_image_files, load_image
from cfattr_monai.io.outputs import CsvRowWriter, UniqueStems, atomic_path, output_path

__all__ = ["CSV_COLUMNS", "explain_images", "bundle_image_size", "render_overlay"]

logger = logging.getLogger(__name__)

CSV_COLUMNS = (
    "image", "p", "p_counterfactual", "map_area_px", "area_ratio_image", "area_ratio_foreground", "resized",
    "map", "mask", "overlay", "counterfactual", "dicom_overlay", "dicom_mask",
)  # fmt: skip
IMAGE_SIZE_KEYS = ("image_size", "spatial_size")  # bundle config keys naming the network's input size
FOREGROUND_LEVEL = 0.05  # foreground (breast / body) = pixels above 5 % of the intensity range
OVERLAY_ALPHA = 0.5
CONTOUR_RGB = (0, 255, 0)


def bundle_image_size(bundle_dir: str | os.PathLike, overlays: Sequence[str] = ()) -> tuple[int, int]:
    """The network input size named by the bundle's ``inference.json`` (+ overlays) key ``image_size``/``spatial_size``.

    Raises:
        FileNotFoundError: a config file is missing.
        ValueError: no such key (pass ``--image-size``).
    """
    from cfattr_monai.bundle import bundle_config_files, read_bundle_config

    files = bundle_config_files(bundle_dir, overlays)
    parser = read_bundle_config(bundle_dir, overlays, caller="--bundle/--overlays")
    for key in IMAGE_SIZE_KEYS:
        if key in parser:
            size = tuple(int(s) for s in parser.get_parsed_content(key))
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"{files}: '{key}' must be two positive integers, got {size}.")
            return size
    raise ValueError(f"none of {IMAGE_SIZE_KEYS} is set in {[str(f) for f in files]}; pass --image-size X Y.")


def _batches(
    files: Iterable[Path], batch_size: int, skip_bad: bool, skipped: list[str]
) -> Iterator[list[tuple[Path, MetaTensor]]]:
    """Read ``files`` one by one into lists of at most ``batch_size`` ``(path, image)`` pairs."""
    batch = []
    for path in files:
        try:
            image = load_image(path)
            if min(image.shape[1:]) < MIN_IMAGE_SIZE:
                raise ImageInputError(
                    f"{path}: {image.shape[1]}×{image.shape[2]} pixels (columns × rows), expected at least "
                    f"{MIN_IMAGE_SIZE} per side (no lesion can be told apart below the classifier's coarsest stride); "
                    "pass the full-resolution image, not a thumbnail."
                )
            batch.append((path, image))
        except (ImageInputError, DicomInputError) as err:
            if not skip_bad:
                raise
            skipped.append(str(err))
            logger.warning("skipped: %s", err)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _display(array: torch.Tensor) -> np.ndarray:
    """``(1, X, Y)`` tensor in MONAI's axis order → ``(rows, cols)`` numpy array as the source file displays it."""
    return np.ascontiguousarray(array[0].detach().cpu().numpy().T)


def render_overlay(image: np.ndarray, soft_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(rows, cols, 3)`` uint8: grey ``image`` blended with ``soft_map`` (inferno) and the contour of ``mask``.

    Args:
        image: grey image in [0, 1], (rows, cols).
        soft_map: map M in [0, 1], same shape.
        mask: binary map M̂, same shape.

    Example:
        >>> render_overlay(np.zeros((4, 4)), np.ones((4, 4)), np.ones((4, 4))).shape
        (4, 4, 3)
    """
    heat = matplotlib.colormaps["inferno"](soft_map)[..., :3]
    weight = OVERLAY_ALPHA * soft_map[..., None]
    rgb = _unit_to_uint8((1.0 - weight) * image[..., None] + weight * heat)
    mask = mask > 0
    rgb[mask & ~ndimage.binary_erosion(mask, border_value=0)] = CONTOUR_RGB
    return rgb


def _unit_to_uint8(array: np.ndarray) -> np.ndarray:
    """[0, 1] → uint8 0…255, rounded and clipped."""
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def _write_nifti(path: Path, array: torch.Tensor, affine: torch.Tensor, dtype: type) -> None:
    """``(1, X, Y)`` → a 2-D NIfTI with the source image's affine (``LoadImage`` reads it back on the same grid).

    Readers give 2-D affines as 3×3 (ITK) or 4×4 (PIL, pydicom, nibabel); NIfTI needs 4×4.
    """
    data = array[0].detach().cpu().numpy().astype(dtype)
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(data, to_affine_nd(3, np.asarray(affine, dtype=np.float64))), tmp)


def _to_network(image: MetaTensor, image_size: tuple[int, int]) -> torch.Tensor:
    tensor = image.as_tensor()
    if tuple(tensor.shape[1:]) == image_size:
        return tensor
    return Resize(image_size, mode="bilinear", anti_aliasing=True)(tensor)  # as the classifier bundle resizes


def _to_source_grid(out: dict[str, torch.Tensor], i: int, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Soft map, binary map and counterfactual of item ``i`` on ``image``'s grid."""
    soft, mask, counterfactual = out["map"][i], out["mask"][i], out["counterfactual"][i]
    grid = tuple(image.shape[1:])
    if tuple(soft.shape[1:]) == grid:
        return soft, mask, counterfactual
    soft = Resize(grid, mode="bilinear")(soft).clamp(0.0, 1.0)
    mask = Resize(grid, mode="nearest")(mask)
    counterfactual = torch.where(mask > 0, Resize(grid, mode="bilinear")(counterfactual), image)
    return soft, mask, counterfactual


def _stem_of(path: Path, image: MetaTensor) -> str:
    uid = image.meta.get("SOPInstanceUID", "")
    name = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
    return uid or name


def explain_images(
    explainer: torch.nn.Module,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    image_size: tuple[int, int],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    skip_bad: bool = False,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Explain every image of ``inputs`` (files or folders) and write the outputs listed in the module docstring.

    Args:
        explainer: ``forward(images (B, 1, X, Y)) -> dict(map, mask, counterfactual, p, p_counterfactual)`` (a
            :class:`~cfattr_monai.explain.counterfactual.CounterfactualExplainer`).
        inputs: image files and folders.
        out_dir: output folder (created).
        image_size: the network's input size ``(X, Y)``.
        batch_size: images per forward pass.
        device: where the explainer runs.
        skip_bad: skip unreadable images with a warning (default: stop at the first with its error).
        resume: keep ``out_dir/explanations.csv`` of an earlier (perhaps interrupted) run and explain only the images
            it does not list yet.
        progress: show a tqdm progress bar.
        overwrite: start a new table in a folder that holds one (a model retrained since must not be skipped over);
            the earlier table is replaced once this run's first explanation is written.

    Returns:
        ``dict(explained=int, skipped=int, already_done=int, resized=int, csv=Path, skipped_errors=list[str])``.

    Raises:
        FileNotFoundError: an input does not exist, or the inputs hold no image file.
        ValueError: ``image_size`` is not two sizes of at least 32 px, ``out_dir`` is a file, or both ``resume`` and
            ``overwrite`` are set.
        FileExistsError: ``out_dir`` holds an ``explanations.csv`` and neither ``resume`` nor ``overwrite`` is set.
        ImageInputError, DicomInputError: an unreadable image (unless ``skip_bad``); an earlier
            ``explanations.csv`` in ``out_dir`` is replaced only once this run's first explanation is written.
    """
    if resume and overwrite:
        raise ValueError(
            "resume (keep the earlier explanations.csv and add to it) and overwrite (start a new one) contradict each "
            "other; pass one of them."
        )
    image_size = tuple(int(s) for s in image_size)
    if len(image_size) != 2 or min(image_size) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be two sizes of at least {MIN_IMAGE_SIZE} px (the classifier's coarsest stride), got "
            f"{image_size}; pass the network's input size (the bundle config's image_size)."
        )
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"--out {out_dir} is a file, expected an output folder; pass a folder path.")
    csv_path = output_path(out_dir, "explanations", ".csv")
    if csv_path.is_file() and not (resume or overwrite):
        raise FileExistsError(
            f"{csv_path} holds the table of an earlier run; pass --resume to explain only the images it does not "
            "list, --overwrite to start a new table (e.g. after retraining), or another --out (in the attributor "
            "bundle's inference.json: --resume True, --overwrite True or --output_dir)."
        )
    done, used_stems = _earlier_rows(csv_path) if resume else (set(), [])

    def todo() -> Iterator[Path]:
        for path in iter_image_files(inputs):
            resolved = path.resolve()
            if str(resolved) not in done and csv_path.parent not in resolved.parents:  # --out may lie in an input
                yield path

    n_todo = sum(1 for _ in todo())  # a cheap pass over the names only; also fails early on a missing input
    if not n_todo and not done:
        raise FileNotFoundError(
            f"no image files (PNG, JPEG, TIFF, DICOM, NIfTI) found in {[str(i) for i in inputs]}; pass image files "
            "or folders that hold them."
        )
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    explainer = explainer.to(device).eval()
    stems = UniqueStems(used_stems)
    series_uids: dict[tuple[str, str], str] = defaultdict(generate_uid)  # (source series, kind) → new series UID
    skipped: list[str] = []
    explained = resized = 0
    rows = None  # opened with the first finished explanation: a run that fails before it leaves an earlier table
    try:
        with tqdm(total=n_todo, disable=not progress, unit="img") as bar:
            for batch in _batches(todo(), batch_size, skip_bad, skipped):
                with torch.no_grad():
                    out = explainer(torch.stack([_to_network(image, image_size) for _, image in batch]).to(device))
                out = {k: v.detach().float().cpu() for k, v in out.items()}
                for i, (path, image) in enumerate(batch):
                    was_resized = tuple(image.shape[1:]) != image_size
                    row = _write_item(path, image, out, i, out_dir, stems(_stem_of(path, image)), series_uids)
                    if rows is None:
                        if not resume:
                            csv_path.unlink(missing_ok=True)  # a new table: a model retrained since is not skipped
                        rows = CsvRowWriter(csv_path, CSV_COLUMNS)
                    rows.write({**row, "resized": int(was_resized)})
                    explained += 1
                    resized += was_resized
                bar.update(explained + len(skipped) - bar.n)
            bar.update(explained + len(skipped) - bar.n)
    finally:
        if rows is not None:
            rows.close()
    if resized:
        logger.warning(
            "%d image(s) resized to the network input %s; maps were resampled back to each image's grid.",
            resized, image_size,
        )  # fmt: skip
    return {"explained": explained, "skipped": len(skipped), "already_done": len(done), "resized": resized,
            "csv": csv_path, "skipped_errors": skipped}  # fmt: skip


def _earlier_rows(csv_path: Path) -> tuple[set[str], list[str]]:
    """Images (resolved paths) and stems of an earlier run into the same folder, so that a re-run resumes it."""
    if not csv_path.is_file():
        return set(), []
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    done = {str(Path(row["image"]).resolve()) for row in rows if row.get("image")}
    return done, [row["overlay"][: -len("_overlay.png")] for row in rows if row.get("overlay")]


def _write_item(
    path: Path, image: MetaTensor, out: dict[str, torch.Tensor], i: int, out_dir: Path, stem: str,
    series_uids: dict[tuple[str, str], str],
) -> dict:  # fmt: skip
    """Write the files of one image; return its CSV row (paths relative to ``out_dir``)."""
    soft, mask, counterfactual = _to_source_grid(out, i, image.as_tensor())
    files = {kind: output_path(out_dir, stem, suffix) for kind, suffix in (
        ("map", "_map.nii.gz"), ("mask", "_mask.nii.gz"), ("overlay", "_overlay.png"),
        ("counterfactual", "_counterfactual.png"),
    )}  # fmt: skip
    _write_nifti(files["map"], soft, image.affine, np.float32)
    _write_nifti(files["mask"], (mask > 0).to(torch.uint8), image.affine, np.uint8)
    grey, soft_2d, mask_2d = _display(image), _display(soft), _display(mask)
    overlay = render_overlay(grey, soft_2d, mask_2d)
    _write_png(files["overlay"], overlay)
    _write_png(files["counterfactual"], _unit_to_uint8(_display(counterfactual)))
    if is_dicom_file(path):
        source = read_header(path)
        for kind, pixels in (("overlay", overlay), ("mask", np.where(mask_2d > 0, 255, 0).astype(np.uint8))):
            files[f"dicom_{kind}"] = output_path(out_dir, stem, f"_{kind}_sc.dcm")
            write_secondary_capture(
                files[f"dicom_{kind}"], pixels, source,
                series_uid=series_uids[(str(source.get("SeriesInstanceUID", "")), kind)],
                series_description=series_description(kind),
                series_number=9001 if kind == "overlay" else 9002,
                instance_number=int(source.get("InstanceNumber", 1) or 1),
            )  # fmt: skip
    area = float((mask > 0).sum())
    foreground = float((image.as_tensor() > FOREGROUND_LEVEL).sum())
    return {
        "image": str(path.resolve()),  # absolute: a --resume from another working directory finds it
        "p": f"{float(out['p'][i]):.6f}",
        "p_counterfactual": f"{float(out['p_counterfactual'][i]):.6f}",
        "map_area_px": int(area),
        "area_ratio_image": f"{area / mask[0].numel():.6f}",
        "area_ratio_foreground": f"{area / foreground:.6f}" if foreground else "",
        **{kind: p.name for kind, p in files.items()},
    }
