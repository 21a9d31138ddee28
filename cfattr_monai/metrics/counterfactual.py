"""Acceptance figures of a trained attributor on a labelled split (issue 5; numbers in bundles/attributor/docs).

For the lesion images the classifier flags (p(c|I) ≥ θ):

* ``flipped``: fraction with p(c|π(M̂)) ≤ θ (higher is better, target ≥ 0.8);
* ``lesion_hit``: fraction whose binary map M̂ overlaps the lesion mask (higher is better, target ≥ 0.7), over the
  flagged images that have a lesion mask (``flagged_with_lesion_mask``; None without any, e.g. Shenzhen/Montgomery);
* ``mean_area``: mean d(M̂) as a fraction of the image, to compare with δ (target ≤ δ).

References for ``flipped``:

* ``oracle_flipped``: the fraction flipped when π replaces the lesion itself (its compact hull, M̂ = lesion mapped
  into S) — what this marginalizer achieves on the true region; over the same images as ``lesion_hit``;
* ``twin_flipped`` (phantom data sets only): the fraction whose *healthy twin* — the same phantom drawn without its
  lesions (:func:`~cfattr_monai.data.phantoms.write_healthy_twins`), i.e. a perfect marginalizer of exactly the
  lesions — has p(c) ≤ θ. The rest are flagged for their anatomy, not their lesion: no removal of the lesion flips
  them. ``flipped_where_twin_flips`` is ``flipped`` over the images whose twin flips.

For all images: the mean map area of healthy (label 0) vs lesion (label 1) images, and their ratio (lower is better,
target < 1/3). Lesion masks are used here only, never in training.

Randomization sanity check (:mod:`cfattr_monai.metrics.sanity`, target ρ < 0.2) on up to 16 flagged lesion images:
``randomization_spearman`` over the whole image, ``randomization_spearman_organ`` over the organ only, and
``randomization_spearman_abs``, the mean of |ρ| over the whole image (a negative ρ is structure too, not noise).

Command line (prints JSON)::

    python -m cfattr_monai.metrics.counterfactual bundles/attributor --split test [--out acceptance.json]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from cfattr_monai.io.outputs import atomic_path
from cfattr_monai.metrics.marginalization import has_lesion_mask, load_split, load_twins
from cfattr_monai.metrics.sanity import randomization_check
from cfattr_monai.networks.classifier_output import pathology_probability
from cfattr_monai.transforms.masks import map_into_compact

__all__ = ["acceptance_summary"]


@torch.no_grad()
def acceptance_summary(
    explainer: torch.nn.Module,
    datalist: str | Path,
    split: str = "test",
    image_size: Sequence[int] = (128, 128),
    delta: float | None = None,
    threshold: float = 0.5,
    batch_size: int = 16,
    randomization_images: int = 16,
    device: str | torch.device = "cpu",
) -> dict:
    """Acceptance figures (module doc) of ``explainer`` on ``split`` of ``datalist``.

    Args:
        explainer: a :class:`~cfattr_monai.explain.counterfactual.CounterfactualExplainer`.
        datalist: datalist JSON with ``image``, ``label``, ``lesion`` and ``organ`` entries.
        split: datalist key.
        image_size: network input size (MONAI axis order).
        delta: δ to report against (fraction of the image); None leaves it out.
        threshold: θ, the classification threshold.
        batch_size: images per forward pass.
        randomization_images: flagged lesion images used by the randomization sanity check (0: skip it).
        device: where the explainer runs.
    """
    data = load_split(datalist, split, image_size)
    explainer = explainer.to(device).eval()
    outputs = [explainer(batch.to(device)) for batch in data["image"].split(batch_size)]
    out = {k: torch.cat([o[k].float().cpu() for o in outputs]) for k in ("mask", "p", "p_counterfactual")}
    area = out["mask"].flatten(1).mean(dim=1)
    hit = (out["mask"] * data["lesion"]).flatten(1).sum(dim=1) > 0
    organ_ratio = out["mask"].flatten(1).sum(dim=1) / data["organ"].flatten(1).sum(dim=1).clamp_min(1.0)
    lesion, healthy = data["label"] == 1, data["label"] == 0
    flagged = lesion & (out["p"] >= threshold)
    annotated = flagged & has_lesion_mask(data)
    oracle = torch.full_like(out["p"], math.nan)  # p(c|π(lesion hull)), computed only where it is reported
    if bool(annotated.any()):
        compact = getattr(explainer.attributor, "compact", None) or map_into_compact  # the attributor's σ, smoothing
        oracle_masks = (compact(data["lesion"][annotated]) > explainer.threshold).float()
        oracle[annotated] = torch.cat([
            pathology_probability(explainer.classifier(explainer.marginalizer(images.to(device), masks.to(device))))
            .float().cpu()
            for images, masks in zip(data["image"][annotated].split(batch_size), oracle_masks.split(batch_size))
        ])

    def mean(values: torch.Tensor, where: torch.Tensor) -> float | None:
        return float(values[where].float().mean()) if bool(where.any()) else None

    summary = {
        "split": split,
        "images": int(len(area)),
        "lesion_images": int(lesion.sum()),
        "flagged_lesion_images": int(flagged.sum()),
        "flipped": mean(out["p_counterfactual"] <= threshold, flagged),
        "flagged_with_lesion_mask": int(annotated.sum()),
        "oracle_flipped": mean(oracle <= threshold, annotated),
        "lesion_hit": mean(hit, annotated),
        "mean_area_flagged": mean(area, flagged),
        "mean_organ_ratio_flagged": mean(organ_ratio, flagged),
        "delta": delta,
        "threshold": threshold,
        "mean_area_lesion_images": mean(area, lesion),
        "mean_area_healthy_images": mean(area, healthy),
        "flagged_healthy_images": int((healthy & (out["p"] >= threshold)).sum()),
    }
    twins = load_twins(datalist, split, image_size)
    if twins is not None:
        twin_p = torch.cat([pathology_probability(explainer.classifier(batch.to(device))).cpu()
                            for batch in twins.split(batch_size)])
        twin_flips = flagged & (twin_p <= threshold)
        summary["twin_flipped"] = mean(twin_p <= threshold, flagged)
        summary["flipped_where_twin_flips"] = mean(out["p_counterfactual"] <= threshold, twin_flips)
    if summary["mean_area_lesion_images"] and summary["mean_area_healthy_images"] is not None:  # a split may lack one
        summary["healthy_to_lesion_area"] = summary["mean_area_healthy_images"] / summary["mean_area_lesion_images"]
    if randomization_images and bool(flagged.any()):
        images = data["image"][flagged][:randomization_images].to(device)
        organs = data["organ"][flagged][:randomization_images].to(device)
        check = randomization_check(explainer.attributor, images, region=organs)
        summary["randomization_spearman"] = {k: check[k]["spearman"] for k in ("attributor", "classifier")}
        summary["randomization_spearman_abs"] = {k: check[k]["spearman_abs"] for k in ("attributor", "classifier")}
        summary["randomization_spearman_organ"] = {k: check[k]["spearman_region"] for k in ("attributor", "classifier")}
        summary["randomization_ssim"] = {k: check[k]["ssim"] for k in ("attributor", "classifier")}
        summary["randomization_spearman_attributor_draws"] = check["attributor"]["spearman_draws"]
        summary["randomization_spearman_between_draws"] = check["attributor"]["spearman_between_draws"]
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    from monai.bundle import ConfigParser

    from cfattr_monai.bundle import bundle_checkpoint
    from cfattr_monai.explain.counterfactual import load_explainer, read_recorded

    parser = argparse.ArgumentParser(description="Acceptance figures of a trained attributor bundle (JSON).")
    parser.add_argument("bundle", type=Path, help="attributor bundle folder")
    parser.add_argument("--overlays", nargs="*", default=[], help="config overlays, relative to the bundle")
    parser.add_argument(
        "--checkpoint", help="attributor weights, relative to the bundle (default: model.pt in the configs' ckpt_dir)"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    config = ConfigParser()
    config.read_config([str(args.bundle / "configs" / "train.json"), *(str(args.bundle / o) for o in args.overlays)])
    config["bundle_root"] = str(args.bundle)
    checkpoint = bundle_checkpoint(args.bundle, args.overlays, args.checkpoint)
    explainer = load_explainer(args.bundle, args.overlays, checkpoint=checkpoint, device=args.device)
    # θ and δ the attributor was trained for (recorded beside its weights); the config's only when none is
    # recorded — with a data overlay the config would recompute θ on that data set's validation split, and a
    # --delta given to training is not in the config at all
    ckpt_dir = checkpoint.parent
    threshold, delta = (read_recorded(ckpt_dir, key) for key in ("classification_threshold", "delta"))
    if threshold is None:
        threshold = float(config.get_parsed_content("classification_threshold"))
    if delta is None:
        delta = float(config.get_parsed_content("delta"))
    summary = acceptance_summary(
        explainer,
        config.get_parsed_content("datalist"),
        args.split,
        config.get_parsed_content("image_size"),
        delta=delta,
        threshold=threshold,
        device=args.device,
    )
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:
            tmp.write_text(text + "\n")


if __name__ == "__main__":
    main()
