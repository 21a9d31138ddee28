"""``cfattr explain --bundle BUNDLE [--overlays ...] IMAGES... --out DIR``: the command-line layer.

The work is done by :func:`cfattr_monai.io.explanations.explain_images` (outputs listed there); this module only
declares the arguments and loads the explainer, and imports torch/MONAI when the command runs, not when ``cfattr
--help`` builds the parser.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``explain`` arguments to ``parser`` and set its ``func`` to :func:`run`."""
    parser.add_argument("images", nargs="+", help="image files or folders (PNG, DICOM, NIfTI), walked recursively")
    parser.add_argument("--bundle", required=True, help="trained attributor bundle folder, e.g. bundles/attributor")
    parser.add_argument(
        "--overlays", nargs="*", default=[],
        help="config overlays, relative to the bundle folder; give them after the images (or end them with --)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--resume", action="store_true",
        help="keep OUT/explanations.csv of an earlier (interrupted) run and explain only the images it does not list",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true",
        help="start a new OUT/explanations.csv although an earlier run wrote one (e.g. after retraining the model)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    parser.add_argument(
        "--image-size", type=int, nargs=2, metavar=("X", "Y"),
        help="network input size (default: the bundle config's image_size)",
    )  # fmt: skip
    parser.add_argument("--skip-bad", action="store_true", help="warn and skip unreadable images instead of stopping")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. for log files)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the bundle's explainer and explain ``args.images`` into ``args.out``; print a one-line summary."""
    from cfattr_monai.explain.counterfactual import load_explainer
    from cfattr_monai.io.explanations import bundle_image_size, explain_images

    import torch

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}.")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        message = f"--device {args.device!r} is not a torch device ({error}); pass e.g. cpu or cuda:0."
        raise ValueError(message) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: this machine has no CUDA device torch can use; pass --device cpu.")
    image_size = tuple(args.image_size) if args.image_size else bundle_image_size(args.bundle, args.overlays)
    explainer = load_explainer(args.bundle, args.overlays, device=args.device)
    summary = explain_images(
        explainer, args.images, args.out, image_size, args.batch_size, args.device,
        skip_bad=args.skip_bad, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite,
    )  # fmt: skip
    print(
        f"explained {summary['explained']} image(s) ({summary['resized']} resized to {image_size}), skipped "
        f"{summary['skipped']}, {summary['already_done']} already in the table {summary['csv']}"
    )
    return 0
