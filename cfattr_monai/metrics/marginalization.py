"""Is a marginalizer π faithful to the classifier? The Fig. 1c protocol of Lenis et al., MICCAI 2020 (§4), and more.

Paper protocol, on the test split, classifier f, ROC-AUC of p(c|·) against the labels:

* (i)   ``auc_none``: the unchanged images;
* (ii)  ``auc_healthy_inpaint``: random holes only in healthy tissue (organ minus the dilated lesion), every image,
        inpainted — a faithful π leaves the AUC unchanged, ``|AUC(ii) − AUC(i)|`` small;
* (iii) ``auc_lesion_inpaint``: random holes covering the lesions of the pathological images, inpainted (healthy
        images unchanged) — a classifier that looks at the lesions loses AUC, ``AUC(i) − AUC(iii)`` > 0. Over the
        healthy images and the pathological ones *with* a lesion mask (a mass without its circle in mini-MIAS would
        keep its score and dilute the drop); ``settings["n_lesion_images"]`` says how many.

Each over ``n_runs`` random hole draws (the paper: 10), reported as mean ± std. Beyond the paper, the same healthy-tissue
holes are also filled by blur, noise and the mean:

* ``mean_abs_dp_healthy[π]`` = mean over runs and healthy images of ``|p(c|π(I)) − p(c|I)|`` — lower is better:
  a fill that leaves healthy images healthy does not move the score;
* ``mean_dp_healthy[π]``: the same without the absolute value, which tells the two ways a fill moves the score apart:
  > 0, the fill makes healthy tissue look pathological (an artefact); < 0, it removes what the classifier took for
  weak signs of disease (a fill smoother than real tissue does);
* ``psnr[π]``, ``ssim[π]``: PSNR and SSIM (``monai.metrics``) inside the hole against the original pixels, on the
  healthy test images — higher is better;
* ``sensitivity_floor``: the same two figures for the *original* pixels plus Gaussian noise N(0, σ²) in the same
  holes (σ = ``floor_noise_std``, 0.01 by default: 40 dB). It is not a marginalizer but the classifier's own
  sensitivity: a fill that keeps every pixel within 1 % of the truth still moves p(c|·) by this much, so no
  marginalizer's |Δp| can be expected to go far below it.

On phantoms the truth is known (``data["twin"]``: each image drawn again without its lesions,
:func:`~cfattr_monai.data.phantoms.write_healthy_twins`), so the counterfactual itself can be scored: the lesion
holes of (iii), filled by each π, against the healthy twin —

* ``twin_abs_dp[π]`` = mean over runs and pathological images of ``|p(c|π(I)) − p(c|twin)|`` — lower is better: how
  far the classifier's verdict on the counterfactual is from its verdict on the true healthy image;
* ``twin_psnr[π]``: PSNR inside the hole against the twin's pixels — higher is better.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_roc_auc
from monai.metrics.regression import compute_ssim_and_cs
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityd
from scipy.ndimage import binary_dilation

from cfattr_monai.data.phantoms import write_healthy_twins
from cfattr_monai.data.validate import check_datalist
from cfattr_monai.io.outputs import atomic_path, save_figure
from cfattr_monai.metrics.roc import roc_curve
from cfattr_monai.networks.classifier_output import pathology_probability
from cfattr_monai.transforms.marginalize import Marginalizer
from cfattr_monai.transforms.masks import irregular_hole_mask

__all__ = ["has_lesion_mask", "hole_psnr", "hole_ssim", "load_split", "load_study_data", "load_twins", "marginalization_study",
           "save_fig1c", "write_study"]

logger = logging.getLogger(__name__)

LESION_MARGIN = 2  # pixels: healthy-tissue holes keep this distance to a lesion, lesion holes cover this much more


def load_split(
    datalist: str | Path, split: str = "test", image_size: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """Images (N, 1, H, W) in [0, 1] as the bundles load them, labels (N,), lesion and organ masks (N, 1, H, W) in {0, 1}.

    The data contract allows items without masks: a missing ``lesion`` is an empty mask (no lesion ground truth, e.g.
    Shenzhen/Montgomery) and a missing ``organ`` is the whole image (holes anywhere, A relative to the image area).
    Masks are binarized as value > 0, so files that store {0, 1} and {0, 255} (both binary to ``check_datalist``) give
    the same masks.
    ``image_size`` (MONAI axis order) resizes as the classifier bundle does (bilinear, anti-aliased; masks nearest):
    pass the networks' input size when the prepared images have another size (e.g. mini-MIAS prepared at 256²,
    networks trained at 128²); None keeps the files' size.

    Raises:
        FileNotFoundError: ``datalist`` does not exist.
        DatalistError: :func:`~cfattr_monai.data.validate.check_datalist` finds problems in ``split`` (an empty
            split, unreadable or NaN images, masks of another size, …): all listed with their files and fixes.
    """
    datalist = check_datalist(datalist, splits=(split,))
    items = json.loads(datalist.read_text())[split]
    keys, masks = ["image", "lesion", "organ"], ["lesion", "organ"]
    steps = [
        LoadImaged(keys, image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys, allow_missing_keys=True),
        ScaleIntensityd("image"),
    ]
    if image_size is not None:
        steps += [
            Resized("image", image_size, mode="bilinear", anti_aliasing=True),
            Resized(masks, image_size, mode="nearest", allow_missing_keys=True),
        ]
    load = Compose(steps)
    loaded = []
    for item in items:
        data = load({key: str(datalist.parent / item[key]) for key in keys if item.get(key)})  # "" / None: absent
        image = torch.as_tensor(data["image"]).float()
        absent = {"lesion": torch.zeros_like(image), "organ": torch.ones_like(image)}
        loaded.append({"image": image, "label": int(item["label"]),
                       **{k: torch.as_tensor(data[k]).float() if k in data else absent[k] for k in masks}})
    out = {key: torch.stack([d[key] for d in loaded]) for key in ("image", "lesion", "organ")}
    out["lesion"], out["organ"] = (out["lesion"] > 0).float(), (out["organ"] > 0).float()  # {0, 1} or {0, 255}
    out["label"] = torch.tensor([d["label"] for d in loaded])
    return out


def load_twins(datalist: str | Path, split: str = "test", image_size: Sequence[int] | None = None) -> torch.Tensor | None:
    """The healthy twins of ``split`` (N, 1, H, W), loaded as :func:`load_split` loads the images.

    None unless ``datalist`` is a phantom data set (``phantoms.json`` beside it); the twins are written to a temporary
    folder by :func:`~cfattr_monai.data.phantoms.write_healthy_twins`.
    """
    if not (Path(datalist).parent / "phantoms.json").is_file():
        return None
    with tempfile.TemporaryDirectory() as folder:
        return load_split(write_healthy_twins(datalist, split, folder), split, image_size)["image"]


def load_study_data(datalist: str | Path, split: str = "test", image_size: Sequence[int] | None = None) -> dict:
    """:func:`load_split`, plus ``twin`` (the healthy twins, :func:`load_twins`) for a phantom data set: the ``data``
    of :func:`marginalization_study`."""
    data = load_split(datalist, split, image_size)
    twins = load_twins(datalist, split, image_size)  # phantoms: score the counterfactuals against the truth
    if twins is not None:
        data["twin"] = twins
    return data


def has_lesion_mask(data: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``(N,)`` bool: the images of a :func:`load_split` result that have lesion ground truth (a missing lesion mask
    loads as an empty one)."""
    return data["lesion"].flatten(1).amax(dim=1) > 0


def hole_psnr(filled: torch.Tensor, original: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """``PSNR = 10·log10(1 / MSE_hole)`` per image, MSE over the hole pixels only (data range 1)."""
    mse = ((filled - original) ** 2 * hole).flatten(1).sum(1) / hole.flatten(1).sum(1).clamp(min=1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def hole_ssim(filled: torch.Tensor, original: torch.Tensor, hole: torch.Tensor, kernel_size: int = 7) -> torch.Tensor:
    """Mean of MONAI's Gaussian SSIM map (σ = 1.5) over the windows centred in the hole, per image."""
    ssim_map, _ = compute_ssim_and_cs(filled, original, 2, [kernel_size] * 2, [1.5, 1.5], data_range=1.0)
    border = kernel_size // 2
    centre = hole[..., border : hole.shape[-2] - border, border : hole.shape[-1] - border]
    return (ssim_map * centre).flatten(1).sum(1) / centre.flatten(1).sum(1).clamp(min=1)


def _holes(data: Mapping[str, torch.Tensor], rng: np.random.Generator, hole_ratio, over_lesion: bool) -> torch.Tensor:
    """Hole maps M (N, 1, H, W), 1 = hole: in healthy tissue, or covering the lesion (pathological images only)."""
    holes = torch.zeros_like(data["image"])
    for i in range(len(holes)):
        organ, lesion = data["organ"][i, 0].numpy() > 0, data["lesion"][i, 0].numpy() > 0
        near_lesion = binary_dilation(lesion, iterations=LESION_MARGIN) if lesion.any() else lesion
        if over_lesion and lesion.any():
            valid = irregular_hole_mask(lesion.shape, rng, hole_ratio, allowed=organ, centers=lesion, cover=near_lesion)
        elif over_lesion:
            continue
        else:
            valid = irregular_hole_mask(lesion.shape, rng, hole_ratio, allowed=organ & ~near_lesion)
        holes[i, 0] = torch.from_numpy(1.0 - valid)
    return holes


@torch.no_grad()
def _probabilities(classifier, images: torch.Tensor, device, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [pathology_probability(classifier(images[i : i + batch_size].to(device))).cpu() for i in range(0, len(images), batch_size)]
    )


@torch.no_grad()
def _marginalize(pi: Marginalizer, images: torch.Tensor, holes: torch.Tensor, device, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [pi(images[i : i + batch_size].to(device), holes[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    )


def _mean_std(values: Sequence[float]) -> dict[str, float | list[float]]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "runs": [float(v) for v in values]}


def marginalization_study(
    classifier: torch.nn.Module,
    marginalizers: Mapping[str, Marginalizer],
    data: Mapping[str, torch.Tensor],
    n_runs: int = 10,
    hole_ratio: tuple[float, float] = (0.02, 0.1),
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    floor_noise_std: float = 0.01,
) -> dict:
    """Run the protocol of the module docstring; ``marginalizers`` must contain ``"inpaint"``.

    Args:
        classifier: binary classifier, images (B, 1, H, W) → (B, 1) logits, in eval mode.
        marginalizers: name → π; ``inpaint`` gives (ii)/(iii), every π gives ``mean_abs_dp_healthy``/``psnr``/``ssim``.
        data: :func:`load_split` output, optionally with ``twin`` (N, 1, H, W): the healthy twins (module doc).
        n_runs: random hole draws.
        hole_ratio: hole area as a fraction of the allowed area (organ minus lesion, or organ), ``(low, high)``.
        seed: run ``r`` draws its holes from ``np.random.default_rng([seed, r])``; noise uses ``torch.manual_seed``.
        device: where the networks run.
        batch_size: images per forward pass.
        floor_noise_std: σ of the noise added to the original pixels for ``sensitivity_floor`` (module doc).

    Returns:
        JSON-ready dict: ``auc_none``, ``auc_healthy_<π>`` and ``auc_lesion_inpaint`` (each mean/std/runs; the
        latter None when the split has no lesion mask),
        ``mean_abs_dp_healthy``, ``mean_dp_healthy``, ``psnr``, ``ssim`` (π → value), ``sensitivity_floor`` (``noise_std``,
        ``mean_abs_dp_healthy``, ``psnr``), with twins ``twin_abs_dp`` and ``twin_psnr`` (π → value), ``roc``
        (curves of the first run) and the settings.

    Raises:
        ValueError: no ``inpaint`` marginalizer, the split lacks healthy or pathological images, or
            ``floor_noise_std`` ≤ 0.
    """
    if "inpaint" not in marginalizers:
        raise ValueError(f"marginalization_study: marginalizers must include 'inpaint', got {sorted(marginalizers)}.")
    if not floor_noise_std > 0:
        raise ValueError(f"marginalization_study: floor_noise_std must be > 0 (the noise σ of the sensitivity floor), got {floor_noise_std}.")
    labels = data["label"]
    healthy = labels == 0
    if healthy.all() or not healthy.any():
        raise ValueError("marginalization_study: the split needs both healthy (0) and pathological (1) images for ROC-AUC.")
    auc = lambda p: float(compute_roc_auc(p, labels))  # noqa: E731 - one-liner used throughout
    p_none = _probabilities(classifier, data["image"], device, batch_size)
    auc_healthy = {name: [] for name in marginalizers}
    abs_dp = {name: [] for name in marginalizers}
    signed_dp = {name: [] for name in marginalizers}
    psnr = {name: [] for name in marginalizers}
    ssim = {name: [] for name in marginalizers}
    auc_lesion, roc, floor_dp, floor_psnr = [], {}, [], []
    with_mask = has_lesion_mask(data)
    annotated = bool(with_mask.any())  # no lesion masks at all (chest X-ray): no (iii), as in the paper
    in_iii = healthy | with_mask  # (iii): healthy + pathological with a mask
    twins = data.get("twin") if annotated else None
    sick = labels == 1
    if twins is not None:
        p_twin = _probabilities(classifier, twins[sick], device, batch_size)
        twin_dp, twin_psnr = {name: [] for name in marginalizers}, {name: [] for name in marginalizers}

    def healthy_change(filled: torch.Tensor, holes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """p(c|filled), and over the healthy images Δp and the mean hole PSNR."""
        p = _probabilities(classifier, filled, device, batch_size)
        return p, (p - p_none)[healthy], float(hole_psnr(filled[healthy], data["image"][healthy], holes[healthy]).mean())

    start = time.perf_counter()
    for run in range(n_runs):
        logger.info("marginalization study: hole draw %d of %d (%.0f s)", run + 1, n_runs, time.perf_counter() - start)
        rng = np.random.default_rng([seed, run])
        torch.manual_seed(seed * 1000 + run)
        healthy_holes = _holes(data, rng, hole_ratio, over_lesion=False)
        for name, pi in marginalizers.items():
            filled = _marginalize(pi, data["image"], healthy_holes, device, batch_size)
            p, dp, hole_db = healthy_change(filled, healthy_holes)
            auc_healthy[name].append(auc(p))
            abs_dp[name].append(float(dp.abs().mean()))
            signed_dp[name].append(float(dp.mean()))
            psnr[name].append(hole_db)
            ssim[name].append(float(hole_ssim(filled[healthy], data["image"][healthy], healthy_holes[healthy]).mean()))
            if run == 0 and name == "inpaint":
                roc["healthy_inpaint"] = (p, labels)
        noisy = (data["image"] + healthy_holes * floor_noise_std * torch.randn_like(data["image"])).clamp(0.0, 1.0)
        _, dp, hole_db = healthy_change(noisy, healthy_holes)
        floor_dp.append(float(dp.abs().mean()))
        floor_psnr.append(hole_db)
        if not annotated:
            continue
        lesion_holes = _holes(data, rng, hole_ratio, over_lesion=True)
        lesion_filled = _marginalize(marginalizers["inpaint"], data["image"], lesion_holes, device, batch_size)
        p_lesion = _probabilities(classifier, lesion_filled, device, batch_size)
        auc_lesion.append(float(compute_roc_auc(p_lesion[in_iii], labels[in_iii])))
        if run == 0:
            roc["lesion_inpaint"] = (p_lesion[in_iii], labels[in_iii])
        if twins is None:
            continue
        for name, pi in marginalizers.items():
            if name == "inpaint":  # filled and scored above for (iii)
                counterfactual, p = lesion_filled[sick], p_lesion[sick]
            else:
                counterfactual = _marginalize(pi, data["image"][sick], lesion_holes[sick], device, batch_size)
                p = _probabilities(classifier, counterfactual, device, batch_size)
            twin_dp[name].append(float((p - p_twin).abs().mean()))
            twin_psnr[name].append(float(hole_psnr(counterfactual, twins[sick], lesion_holes[sick]).mean()))
    roc["none"] = (p_none, labels)
    return {
        "auc_none": _mean_std([auc(p_none)]),
        **{f"auc_healthy_{name}": _mean_std(values) for name, values in auc_healthy.items()},
        "auc_lesion_inpaint": _mean_std(auc_lesion) if annotated else None,
        "mean_abs_dp_healthy": {name: float(np.mean(v)) for name, v in abs_dp.items()},
        "mean_dp_healthy": {name: float(np.mean(v)) for name, v in signed_dp.items()},
        "psnr": {name: float(np.mean(v)) for name, v in psnr.items()},
        "ssim": {name: float(np.mean(v)) for name, v in ssim.items()},
        "sensitivity_floor": {"noise_std": floor_noise_std, "mean_abs_dp_healthy": float(np.mean(floor_dp)), "psnr": float(np.mean(floor_psnr))},
        **({"twin_abs_dp": {name: float(np.mean(v)) for name, v in twin_dp.items()},
            "twin_psnr": {name: float(np.mean(v)) for name, v in twin_psnr.items()}} if twins is not None else {}),
        "roc": {key: dict(zip(("fpr", "tpr"), map(np.ndarray.tolist, roc_curve(p.numpy(), y.numpy())[:2]))) for key, (p, y) in roc.items()},
        "settings": {"n_runs": n_runs, "hole_ratio": list(hole_ratio), "seed": seed, "n_images": len(labels), "n_healthy": int(healthy.sum()),
                     "n_lesion_images": int((in_iii & sick).sum()) if annotated else 0},
    }


def save_fig1c(results: Mapping, path: str | Path, title: str = "") -> Path:
    """ROC curves styled like the paper's Fig. 1c: unchanged (green), healthy-tissue (blue), lesion (red) inpainting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = [("none", "auc_none", "green", "no inpainting"), ("healthy_inpaint", "auc_healthy_inpaint", "blue", "inpainting in healthy tissue"), ("lesion_inpaint", "auc_lesion_inpaint", "red", "inpainting in lesions")]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for key, auc_key, colour, label in styles:
        auc = results[auc_key]
        if auc is None:  # no lesion masks: no lesion-inpainting curve
            continue
        ax.plot(results["roc"][key]["fpr"], results["roc"][key]["tpr"], color=colour, lw=1.5, label=f"{label} (AUC {auc['mean']:.3f} ± {auc['std']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title or "ROC, classifier vs. inpainting")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=150)


def write_study(
    classifier: torch.nn.Module,
    marginalizers: Mapping[str, Marginalizer],
    datalist: str | Path,
    output_dir: str | Path,
    split: str = "test",
    n_runs: int = 10,
    hole_ratio: Sequence[float] = (0.02, 0.1),
    seed: int = 0,
    device: str | torch.device = "cpu",
    image_size: Sequence[int] | None = None,
) -> dict:
    """Load ``split`` of ``datalist`` (resized to ``image_size``, see :func:`load_split`; for a phantom data set also
    its healthy twins), run :func:`marginalization_study`, write ``marginalization.json`` and ``fig1c_roc.png``."""
    start = time.perf_counter()
    data = load_study_data(datalist, split, image_size)
    results = marginalization_study(classifier, marginalizers, data, n_runs, tuple(hole_ratio), seed, device)
    results["settings"].update(
        split=split, datalist=str(datalist), image_size=None if image_size is None else list(image_size),
        wall_time_s=round(time.perf_counter() - start, 1),
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / "marginalization.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    save_fig1c(results, output_dir / "fig1c_roc.png")
    summary = {k: (v["mean"] if k.startswith("auc_") and v else v) for k, v in results.items() if k != "roc"}
    print(json.dumps(summary, indent=1))
    return results
