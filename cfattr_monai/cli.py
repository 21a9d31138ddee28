"""The ``cfattr`` command line: one sub-command per job, each registered by one ``_register_<name>`` function.

Adding a command means writing ``_register_<name>(subparsers)`` that adds its parser and sets
``func=<handler>`` with ``set_defaults``, and listing it in ``REGISTRARS``; the handler takes the parsed
``argparse.Namespace`` and returns an exit code (``None`` counts as 0). User errors (``ValueError``,
``FileNotFoundError``) end the program with one line on stderr and exit code 2, without a traceback.

Example (shell)::

    cfattr --help
    cfattr phantoms --kind mammo --n 600 --size 128 --seed 0 --out data/phantoms/mammo_128
    cfattr prepare mini-mias --src ../shared/data/mini_mias --out data/mini_mias --size 576 576
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cfattr_monai import __version__

__all__ = ["build_parser", "main"]


def _run_phantoms(args: argparse.Namespace) -> int:
    from cfattr_monai.data.phantoms import save_phantom_figure, write_phantom_dataset

    difficulty = {
        "contrast": args.contrast,
        "radius": args.radius,
        "max_lesions": args.max_lesions,
        "prevalence": args.prevalence,
        "texture": args.texture,
    }
    difficulty = {name: value for name, value in difficulty.items() if value is not None}
    print(write_phantom_dataset(args.out, args.kind, args.n, args.size, args.seed, splits=args.splits, **difficulty))
    if args.preview:
        print(save_phantom_figure(args.preview, args.kind, size=args.size, seed=args.seed, **difficulty))
    return 0


def _register_phantoms(subparsers) -> None:
    parser = subparsers.add_parser(
        "phantoms",
        help="write a synthetic data set (PNGs + MONAI datalist)",
        description="Write n synthetic phantoms (images, lesion and organ masks as PNG) with datalist.json and "
        "phantoms.json into OUT. The same seed gives byte-identical files.",
    )
    parser.add_argument("--kind", choices=("mammo", "chest"), default="mammo")
    parser.add_argument("--n", type=int, default=600, help="number of images (default 600)")
    parser.add_argument("--size", type=int, default=256, help="side length in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder (replaced if it holds an older phantom set)")
    parser.add_argument("--splits", type=float, nargs=3, default=(0.6, 0.2, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    group = parser.add_argument_group("difficulty (defaults: the calibrated values of the kind, docs/phantoms.md)")
    group.add_argument("--contrast", type=float, nargs=2, metavar=("LOW", "HIGH"), help="lesion peak contrast")
    group.add_argument("--radius", type=float, nargs=2, metavar=("LOW", "HIGH"), help="lesion radius / width")
    group.add_argument("--max-lesions", type=int, help="most lesions per pathological image")
    group.add_argument("--prevalence", type=float, help="fraction of pathological images")
    group.add_argument("--texture", type=float, help="amplitude of the camouflaging background texture")
    parser.add_argument("--preview", metavar="PNG", help="also save a figure of a few pathological phantoms")
    parser.set_defaults(func=_run_phantoms)


def _run_prepare(args: argparse.Namespace) -> int:
    from cfattr_monai.data.datasets import PREPARERS

    if args.healthy is not None and args.dataset != "cbis-ddsm":
        raise ValueError(f"--healthy applies to cbis-ddsm only, not to {args.dataset}; drop it.")
    extra = {} if args.healthy is None else {"healthy": args.healthy}
    print(PREPARERS[args.dataset](args.src, args.out, size=args.size, seed=args.seed, splits=args.splits, **extra))
    return 0


def _register_prepare(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="convert a public data set into PNGs + MONAI datalist",
        description="Read a public data set from SRC (never modified) and write resized 8-bit PNGs, organ and "
        "lesion masks (evaluation only) and a datalist.json with patient-wise splits into OUT.",
    )
    parser.add_argument("dataset", choices=("mini-mias", "shenzhen", "cbis-ddsm"))
    parser.add_argument("--src", required=True, help="the data set as distributed (or the mini-MIAS PNG layout)")
    parser.add_argument("--out", required=True, help="output folder (must be new or empty)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize images (default: keep)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient-wise split")
    parser.add_argument("--splits", type=float, nargs=3, default=(0.6, 0.2, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--healthy", help="cbis-ddsm only: folder of healthy DDSM images (default SRC/healthy)")
    parser.set_defaults(func=_run_prepare)


def _register_explain(subparsers) -> None:
    from cfattr_monai.explain.cli_explain import add_arguments

    parser = subparsers.add_parser(
        "explain",
        help="attribution maps, overlays, counterfactuals (+ DICOM Secondary Captures) for image files or folders",
        description="Explain PNG, DICOM and NIfTI images with a trained attributor bundle; writes per image the "
        "soft and binary map (NIfTI), overlay and counterfactual (PNG), DICOM Secondary Captures for DICOM "
        "inputs, and one row of OUT/explanations.csv (docs/dicom.md).",
    )
    add_arguments(parser)


def _run_pipeline(args: argparse.Namespace) -> int:
    from cfattr_monai.pipeline import run_pipeline

    run_pipeline(args.task, args.datalist, args.fresh)
    return 0


def _register_pipeline(subparsers) -> None:
    parser = subparsers.add_parser(
        "pipeline",
        help="train and evaluate the three bundles in order (classifier, inpainter, attributor)",
        description="Run python -m monai.bundle run for train.json and evaluate.json of each bundle in order, with "
        "the task's config overlays; trained bundles (models/model.pt) are reused unless --fresh.",
    )
    parser.add_argument("--task", choices=("demo", "mammo", "cxr"), default="demo")
    parser.add_argument("--datalist", help="MONAI datalist JSON (default: each bundle's demo phantoms)")
    parser.add_argument("--fresh", action="store_true", help="retrain bundles that already have models/model.pt")
    parser.set_defaults(func=_run_pipeline)


def _register_demo(subparsers) -> None:
    from cfattr_monai.demo import add_arguments, run_from_arguments

    parser = subparsers.add_parser(
        "demo", help="the whole chain on phantoms, then the report (what make demo runs)",
        description="Phantoms, the three bundles, attributor inference, a small benchmark and the report.",
    )
    add_arguments(parser)
    parser.set_defaults(func=lambda args: run_from_arguments(args, parser))


REGISTRARS = (_register_phantoms, _register_prepare, _register_explain, _register_pipeline, _register_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``cfattr`` parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="cfattr",
        description="Counterfactual impact analysis for medical image classifiers (Lenis et al., MICCAI 2020).",
    )
    parser.add_argument("--version", action="version", version=f"cfattr-monai {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for register in REGISTRARS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command and return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:  # RuntimeError: a failed step
        print(f"cfattr {args.command}: error: {error}", file=sys.stderr)
        return 2
