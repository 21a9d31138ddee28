"""Fig. 1c study on a chest phantom data set with the oracle fills beside π: how far is π from the best possible fill?

    python scripts/oracle_fills.py --datalist data/phantoms/chest_128/datalist.json \
        --classifier-overlays configs/task_phantom_chest.json --inpainter-overlays configs/task_phantom_chest.json \
        --out oracle_fills.json

Runs :func:`~cfattr_monai.metrics.marginalization.marginalization_study` (the inpainter bundle's evaluation: same
holes, same seeds) with the trained inpainter, blur, noise and the mean, and the fills of
:class:`~cfattr_monai.data.phantom_oracle.PhantomOracleMarginalizer`: ``oracle_mean`` (the exact conditional mean of
the phantom's texture given the pixels around the hole), ``oracle_sample`` (an exact conditional sample) and
``anatomy`` (the anatomy without texture). Writes the study's JSON without the ROC curves and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from cfattr_monai.bundle import load_network
from cfattr_monai.data.phantom_oracle import PhantomOracleMarginalizer
from cfattr_monai.io.outputs import atomic_path
from cfattr_monai.metrics.marginalization import load_study_data, marginalization_study
from cfattr_monai.transforms.marginalize import (BlurMarginalizer, InpaintMarginalizer, MeanMarginalizer,
                                                 NoiseMarginalizer)

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", type=Path, required=True, help="datalist.json of a chest phantom data set")
    parser.add_argument("--split", default="test")
    parser.add_argument("--classifier-bundle", type=Path, default=ROOT / "bundles/classifier")
    parser.add_argument("--classifier-overlays", nargs="*", default=[], help="the classifier's task overlays")
    parser.add_argument("--classifier-checkpoint", default=None,
                        help="weights, relative to the bundle folder or absolute (default: the overlays' ckpt_dir)")
    parser.add_argument("--inpainter-bundle", type=Path, default=ROOT / "bundles/inpainter")
    parser.add_argument("--inpainter-overlays", nargs="*", default=[], help="the inpainter's task overlays")
    parser.add_argument("--inpainter-checkpoint", default=None,
                        help="weights, relative to the bundle folder or absolute (default: the overlays' ckpt_dir)")
    parser.add_argument("--runs", type=int, default=10, help="hole draws (the bundle's evaluation: 10)")
    parser.add_argument("--hole-ratio", type=float, nargs=2, default=(0.02, 0.1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    classifier = load_network(args.classifier_bundle, args.classifier_overlays, args.classifier_checkpoint)
    inpainter = load_network(args.inpainter_bundle, args.inpainter_overlays, args.inpainter_checkpoint)
    data = load_study_data(args.datalist, args.split)
    marginalizers = {"inpaint": InpaintMarginalizer(inpainter), "blur": BlurMarginalizer(),
                     "noise": NoiseMarginalizer(), "mean": MeanMarginalizer(region="organ")}
    for mode in ("mean", "sample", "anatomy"):
        name = "anatomy" if mode == "anatomy" else f"oracle_{mode}"
        marginalizers[name] = PhantomOracleMarginalizer(args.datalist, args.split, data["image"], mode, args.seed)
    results = marginalization_study(classifier, marginalizers, data, args.runs, tuple(args.hole_ratio), args.seed)
    results.pop("roc")
    results["settings"].update(split=args.split, datalist=str(args.datalist),
                               wall_time_s=round(time.perf_counter() - start, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    reference = min(results["mean_abs_dp_healthy"][name] for name in ("blur", "noise", "mean"))
    print(f"{'fill':<14} {'|dp| healthy':>12} {'/ min(blur,noise,mean)':>22} {'signed dp':>10} {'hole PSNR':>10}")
    for name in marginalizers:
        dp = results["mean_abs_dp_healthy"][name]
        ratio = f"{dp / reference:.3f}" if reference > 0 else "-"  # a classifier blind to every fill
        print(f"{name:<14} {dp:>12.4f} {ratio:>22} {results['mean_dp_healthy'][name]:>+10.4f} "
              f"{results['psnr'][name]:>10.1f}")
    print(f"wrote {args.out} ({results['settings']['wall_time_s']} s)")
    return results


if __name__ == "__main__":
    main()
