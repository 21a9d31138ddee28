"""Table 1 of the paper on a test split: ours vs Grad-CAM and saliency, by H, L, A and Wilcoxon tests (paper §4).

:func:`evaluate_attribution` loads the trained attributor bundle
(:func:`~cfattr_monai.explain.counterfactual.load_explainer`, which brings the classifier and inpainter it was trained
with), computes on every lesion image of the split

* ours: the binary map M̂ = (soft map > 0.55) of one attributor forward pass, and p(c|I), p(c|π(M̂));
* Grad-CAM (MONAI ``GradCAM``) and gradient saliency (:func:`~cfattr_monai.explain.baselines.saliency_batched`, the
  same map as MONAI ``VanillaGrad``, batched) on the same classifier, each binarized at P50, P75 and P90;

and the localization metrics of :mod:`cfattr_monai.metrics.localization`. It writes ``attribution_metrics.json``
(the ``"attribution"`` fragment of the report's metrics) and ``attribution_examples.npz`` (the maps of a fixed set
of test images for the Fig. 3 grid), each through a temporary name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cfattr_monai.explain.baselines import GradCAMBaseline, saliency_batched
from cfattr_monai.io.outputs import atomic_path
from cfattr_monai.metrics.localization import (
    PERCENTILES,
    binarize_at_percentile,
    localization_metrics,
    signed_ranks_favour_ours,
    summarize,
    wilcoxon_tests,
)

__all__ = ["attribution_maps", "evaluate_attribution", "localization_study"]

BASELINES = ("gradcam", "saliency")


def attribution_maps(explainer, images: torch.Tensor, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Maps of ours and the baselines for ``images`` (N, 1, H, W), computed batch by batch on the explainer's device.

    Args:
        explainer: a :class:`~cfattr_monai.explain.counterfactual.CounterfactualExplainer`.
        images: (N, 1, H, W) in [0, 1], on the CPU.
        batch_size: images per forward pass.

    Returns:
        CPU tensors: ``ours`` (soft map), ``mask`` (M̂), ``counterfactual``, ``p``, ``p_counterfactual``,
        ``gradcam``, ``saliency``.
    """
    device = next(explainer.classifier.parameters()).device
    gradcam = GradCAMBaseline(explainer.classifier)
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in images.split(batch_size):
        x = batch.to(device)
        with torch.inference_mode():
            out = explainer(x)
        out = {"ours": out["map"], **{k: out[k] for k in ("mask", "counterfactual", "p", "p_counterfactual")}}
        out["gradcam"] = gradcam(x)
        out["saliency"] = saliency_batched(explainer.classifier, x)
        for key, value in out.items():
            parts.setdefault(key, []).append(value.detach().float().cpu())
    return {key: torch.cat(values) for key, values in parts.items()}


def _n_empty(binary: np.ndarray | torch.Tensor) -> int:
    """How many of the binary maps ``(B, …)`` have no pixel set."""
    return int((np.asarray(binary).reshape(len(binary), -1).max(axis=1) == 0).sum())


def localization_study(
    maps: dict[str, torch.Tensor],
    lesions: torch.Tensor,
    organs: torch.Tensor | None,
    percentiles: Sequence[int] = PERCENTILES,
) -> tuple[dict, dict]:
    """H, L, A of ours and of each baseline per percentile, summaries and Wilcoxon p-values.

    Returns:
        ``(fragment, per_image)``: the JSON fragment ``{"ours": {metric: summary}, "gradcam": {"P50": {metric:
        summary}, …}, "saliency": …, "wilcoxon_p": {baseline: {P: {metric: p}}}, "wilcoxon_favours_ours":
        {baseline: {P: {metric: bool}}}, "n_empty_maps": {"ours": n, baseline: {P: n}}}`` (the direction of each
        test; how many binary maps are empty, e.g. a Grad-CAM map that is zero everywhere) and the per-image values.
    """
    binary = maps["mask"] > 0.5
    ours = localization_metrics(binary, lesions > 0.5, None if organs is None else organs > 0.5)
    fragment: dict = {"ours": {m: summarize(v) for m, v in ours.items()},
                      "wilcoxon_p": {}, "wilcoxon_favours_ours": {}, "n_empty_maps": {"ours": _n_empty(binary)}}
    per_image = {"ours": ours}
    for name in BASELINES:
        for q in percentiles:
            binary = binarize_at_percentile(maps[name], q)
            values = localization_metrics(binary, lesions > 0.5, None if organs is None else organs > 0.5)
            fragment.setdefault(name, {})[f"P{q}"] = {m: summarize(v) for m, v in values.items()}
            fragment["n_empty_maps"].setdefault(name, {})[f"P{q}"] = _n_empty(binary)
            fragment["wilcoxon_p"].setdefault(name, {})[f"P{q}"] = wilcoxon_tests(ours, values)
            fragment["wilcoxon_favours_ours"].setdefault(name, {})[f"P{q}"] = signed_ranks_favour_ours(ours, values)
            per_image[f"{name}_P{q}"] = values
    return fragment, per_image


def evaluate_attribution(
    attributor_bundle: str | Path,
    datalist: str | Path,
    output_dir: str | Path,
    overlays: Sequence[str] = (),
    split: str = "test",
    area_reference: str = "organ",
    batch_size: int = 8,
    examples: int = 4,
    device: str | torch.device = "cpu",
    image_size: Sequence[int] | None = None,
    checkpoint: str | Path | None = None,
) -> dict:
    """Run ours, Grad-CAM and saliency on the lesion images of ``split`` and write the Table 1 metrics.

    Without any lesion mask in the split (chest X-ray data sets) every pathological image is evaluated and only A
    and the flip rate are defined (H and L are NaN, n = 0), as in the paper's tuberculosis column.

    Args:
        attributor_bundle: the trained attributor bundle folder.
        datalist: MONAI datalist with ``lesion`` and ``organ`` masks (e.g. the demo phantoms).
        output_dir: where ``attribution_metrics.json`` and ``attribution_examples.npz`` go.
        overlays: config overlays of the attributor bundle (relative to it), e.g. ``["configs/task_cxr.json"]``.
        split: datalist key to evaluate.
        area_reference: ``"organ"`` (A = |M̂|/|organ|, mammography) or ``"image"`` (chest X-ray).
        batch_size: images per forward pass.
        examples: how many lesion images (the first ones of the split, a fixed set) are kept for the Fig. 3 grid.
        device: where the networks run.
        image_size: input size of the networks (MONAI axis order); None: the bundle's ``image_size`` (its
            ``configs/inference.json`` plus ``overlays``), so prepared images of another size are resized as in
            training.
        checkpoint: the attributor weights, relative to ``attributor_bundle`` (or absolute); None: ``model.pt`` in
            the ``ckpt_dir`` of the bundle's ``configs/inference.json`` plus ``overlays``. The classifier
            fingerprint and θ are read from its folder; a fingerprint that records no θ (written before training
            recorded it) counts the flip rate at 0.5, with a warning naming the fix.

    Returns:
        The fragment ``{"ours", "gradcam", "saliency", "wilcoxon_p", "flip_rate", "n_lesion_images",
        "n_flagged", "settings"}`` also written to ``attribution_metrics.json``.

    Raises:
        ValueError: ``area_reference`` is unknown, or the split has no lesion image (no pathological image when the
            data set has no lesion masks at all).
    """
    from cfattr_monai.bundle import bundle_checkpoint
    from cfattr_monai.explain.counterfactual import load_explainer, read_classification_threshold
    from cfattr_monai.io.explanations import bundle_image_size
    from cfattr_monai.metrics.marginalization import has_lesion_mask, load_split

    if area_reference not in ("organ", "image"):
        raise ValueError(f"evaluate_attribution: area_reference must be 'organ' or 'image', got {area_reference!r}.")
    if image_size is None:
        image_size = bundle_image_size(attributor_bundle, overlays)
    data = load_split(datalist, split, image_size)
    annotated = has_lesion_mask(data)
    # a data set without any lesion mask (chest X-ray): every pathological image, A and the flip rate only (H and L
    # are NaN), as in the paper's tuberculosis column of Table 1
    keep = (data["label"] == 1) & (annotated if annotated.any() else True)
    if not keep.any():
        raise ValueError(
            f"evaluate_attribution: no pathological image{' with a lesion mask' if annotated.any() else ''} "
            f"(label 1) in '{split}' of {datalist}; Table 1 needs them."
        )
    checkpoint = bundle_checkpoint(attributor_bundle, overlays, checkpoint)
    explainer = load_explainer(attributor_bundle, overlays, checkpoint=checkpoint, device=device)
    images, lesions, organs = data["image"][keep], data["lesion"][keep], data["organ"][keep]
    maps = attribution_maps(explainer, images, batch_size)
    fragment, per_image = localization_study(maps, lesions, organs if area_reference == "organ" else None)

    # θ: flagged when p(c|I) ≥ θ, flipped when p(c|π(M̂)) ≤ θ (as in training and the acceptance figures) — the
    # operating point the attributor was trained for
    theta = read_classification_threshold(checkpoint.parent)
    flagged = maps["p"] >= theta
    flipped = flagged & (maps["p_counterfactual"] <= theta)
    fragment.update(
        flip_rate=float(flipped.sum() / flagged.sum()) if flagged.any() else float("nan"),
        n_lesion_images=int(keep.sum()),
        lesion_ground_truth=bool(annotated.any()),
        n_flagged=int(flagged.sum()),
        settings={
            "attributor_bundle": str(attributor_bundle),
            "overlays": list(overlays),
            "datalist": str(datalist),
            "split": split,
            "area_reference": area_reference,
            "image_size": list(image_size),
            "percentiles": list(PERCENTILES),
            "checkpoint": str(checkpoint),
            "map_threshold": explainer.threshold,
            "classification_threshold": theta,
        },
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / "attribution_metrics.json") as tmp:
        tmp.write_text(json.dumps(fragment, indent=2) + "\n")
    shown = slice(0, examples)
    with atomic_path(output_dir / "attribution_examples.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                image=images[shown].numpy(),
                lesion=lesions[shown].numpy(),
                **{k: maps[k][shown].numpy() for k in ("ours", "mask", "gradcam", "saliency", "counterfactual")},
                **{f"per_image_{k}_{m}": v for k, values in per_image.items() for m, v in values.items()},
            )
    return fragment
