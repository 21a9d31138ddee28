"""Figures of the report: the Fig. 3-style grid (original with GT contour, ours, Grad-CAM, saliency) and Fig. 1c.

Arrays come in MONAI's axis order (columns first, as its PNG reader gives them) and are shown as the source file
displays them (transposed back).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np

from cfattr_monai.io.outputs import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after selecting the non-interactive backend

__all__ = ["save_attribution_grid", "save_roc_figure"]

COLUMNS = (("ours", "(b) ours"), ("gradcam", "(c) Grad-CAM"), ("saliency", "(d) saliency"))


def _display(array: np.ndarray) -> np.ndarray:
    """(1, X, Y) or (X, Y) in MONAI's axis order → (rows, cols)."""
    return np.asarray(array).reshape(array.shape[-2:]).T


def save_attribution_grid(examples: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Paper Fig. 3 layout: one row per image; (a) the image with the GT contour, (b) our soft map with the
    contour of M̂, (c) Grad-CAM, (d) saliency (maps in [0, 1], inferno, opacity growing with the value).

    Args:
        examples: ``image``, ``lesion``, ``ours``, ``mask``, ``gradcam``, ``saliency``, each (N, 1, X, Y)
            (:func:`~cfattr_monai.report.evaluate.evaluate_attribution` writes them to ``attribution_examples.npz``).
        path: PNG to write.

    Raises:
        ValueError: a key is missing or there is no image.
    """
    missing = [k for k in ("image", "lesion", "ours", "mask", "gradcam", "saliency") if k not in examples]
    if missing or len(examples.get("image", ())) == 0:
        raise ValueError(
            "save_attribution_grid: examples need non-empty image, lesion, ours, mask, gradcam and saliency arrays; "
            f"missing {missing}; pass evaluate_attribution's attribution_examples.npz."
        )
    n = len(examples["image"])
    fig, axes = plt.subplots(n, 4, figsize=(8, 2.1 * n), squeeze=False)
    for i in range(n):
        image = _display(examples["image"][i])
        axes[i, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
        if examples["lesion"][i].any():
            axes[i, 0].contour(_display(examples["lesion"][i]), levels=[0.5], colors="lime", linewidths=0.8)
        for j, (key, _) in enumerate(COLUMNS, start=1):
            axes[i, j].imshow(image, cmap="gray", vmin=0, vmax=1)
            heat = np.clip(_display(examples[key][i]), 0, 1)
            axes[i, j].imshow(heat, cmap="inferno", alpha=0.8 * heat, vmin=0, vmax=1)  # 0 = transparent
        if examples["mask"][i].any():
            axes[i, 1].contour(_display(examples["mask"][i]), levels=[0.5], colors="cyan", linewidths=0.8)
    for j, title in enumerate(("(a) image, GT", *(t for _, t in COLUMNS))):
        axes[0, j].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, path)


def save_roc_figure(marginalization: Mapping, path: str | Path) -> Path:
    """Fig. 1c from the inpainter evaluation (``bundles/inpainter/eval/marginalization.json``).

    Uses the inpainter study's own plot (:func:`cfattr_monai.metrics.marginalization.save_fig1c`) when the JSON has
    its layout, otherwise plots every ``{"fpr", "tpr"}`` curve found under ``"roc"``.
    """
    from cfattr_monai.metrics.marginalization import save_fig1c

    try:
        return save_fig1c(marginalization, path)
    except (KeyError, TypeError):
        curves = {k: v for k, v in marginalization.get("roc", {}).items() if isinstance(v, Mapping) and "fpr" in v}
        if not curves:
            raise ValueError(
                "save_roc_figure: no ROC curves ('roc': {name: {fpr, tpr}}) in the marginalization results, keys "
                f"{sorted(marginalization)}; pass the inpainter evaluation's marginalization.json."
            ) from None
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for name, curve in curves.items():
            ax.plot(curve["fpr"], curve["tpr"], lw=1.5, label=name)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        return save_figure(fig, path)


