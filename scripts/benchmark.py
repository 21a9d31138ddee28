#!/usr/bin/env python
"""Attribution maps per second: ours vs Grad-CAM, saliency and the iterative method (paper §4 "Timing").

One process, one classifier, the same input batch for every method; warm-up calls are excluded and each timing is
the median of ``--repeats`` calls in each of ``--passes`` passes over all methods. Measured, each as maps per second:

===========================  ===================================================================================
``ours``                     the attribution network's map (one forward pass under ``torch.inference_mode``)
``ours_with_counterfactual`` map + counterfactual π(M̂) by the inpainter + p(c|π(M̂)); p(c|I) from the map's
                             encoder pass (the classifier's head on its last feature map)
``gradcam``                  MONAI ``GradCAM`` on the classifier's coarsest activation, batched, on the frozen
                             classifier (the gradient reaches the target layer through the input), as the
                             evaluation bundle runs it
``gradcam_trainable``        the same on the classifier as ``load_state_dict`` leaves it (weights require grad):
                             MONAI's backward then fills every weight gradient too
``gradcam_head_only``        the same map with the gradient taken through the head only, the cheapest honest
                             Grad-CAM (:func:`~cfattr_monai.explain.baselines.gradcam_head_only`)
``saliency``                 MONAI ``VanillaGrad`` as it is (batch 1 only: looped over the batch)
``saliency_batched``         one forward + one input-gradient backward for the batch, frozen weights
``classifier_forward``       the bare classifier forward pass (the floor of any method that runs the classifier)
``iterative``                Major et al. 2020 on the first ``--iterative-images`` images, each until its own
                             stopping criterion (:class:`~cfattr_monai.explain.baselines.IterativeCounterfactual`)
===========================  ===================================================================================

Without checkpoints every network has random weights (so the script runs on a fresh clone); the timings depend on
the architectures only, except the iterative method's iteration count, which depends on when it converges (with
random weights early: p(c|I) hardly depends on the image). ``--attributor-bundle`` times a trained bundle;
``--classifier-ckpt`` with ``--inpainter-bundle`` gives the iterative method a trained classifier and π without an
attributor trained on them (ours' timing does not depend on its weights). The input batch is phantom images of the
backbone's task (mammography for MobileNet v1, chest X-ray for DenseNet-121; ``--phantoms`` picks another, e.g. for
a chest-phantom bundle on MobileNet v1).

Example:
    python scripts/benchmark.py --backbone densenet121 --size 256 256 --batch 8 --out bench.json
    python scripts/benchmark.py --backbone mobilenet_v1 --size 128 128 --attributor-bundle bundles/attributor \
        --out demo_bundle.json
    python scripts/benchmark.py --backbone densenet121 --size 256 256 --iterative-images 8 \
        --classifier-ckpt bundles/classifier/models_chest_densenet121/model.pt \
        --inpainter-bundle bundles/inpainter --inpainter-overlays configs/task_phantom_chest.json --out trained.json
    python scripts/benchmark.py --backbone densenet121 --size 256 256 --iterative-images 0 \
        --methods classifier_forward --out inference_only.json  # ours and the forward pass, nothing else
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import DenseNet, DenseNet121
from monai.transforms import Compose, Resize, ScaleIntensity
from monai.visualize import GradCAM
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cfattr_monai.bundle import bundle_checkpoint, fingerprint, load_network, read_state_dict
from cfattr_monai.data.phantoms import generate_phantom
from cfattr_monai.explain.baselines import (
    PATHOLOGY_INDEX,
    GradCAMBaseline,
    IterativeCounterfactual,
    SaliencyBaseline,
    gradcam_head_only,
    gradcam_target_layer,
    normalize_per_image,
    saliency_batched,
)
from cfattr_monai.explain.counterfactual import CounterfactualExplainer, load_explainer, read_recorded
from cfattr_monai.losses.attribution import CounterfactualLoss
from cfattr_monai.networks.attribution import AttentionGatedUNet
from cfattr_monai.networks.inpainter import PartialConvUNet
from cfattr_monai.networks.mobilenet import MobileNetV1
from cfattr_monai.report.tables import TIMING_METHODS, timing_table
from cfattr_monai.transforms.marginalize import InpaintMarginalizer
from cfattr_monai.transforms.masks import SmoothMaxCompact

#: backbone → (phantom kind, inpainter levels): the paper drops the bottom-most inpainter level for 256² X-rays.
BACKBONES = {"mobilenet_v1": ("mammo", 8), "densenet121": ("chest", 7)}
METHODS = tuple(TIMING_METHODS)  # the JSON's maps_per_s keys, in the report's order
TIMED = tuple(name for name in METHODS if name != "iterative")  # --methods (--iterative-images runs the iterative)
#: the methods whose networks --compile compiles
COMPILED_METHODS = ("ours", "ours_with_counterfactual", "saliency_batched", "classifier_forward")


def build_classifier(backbone: str, width_mult: float) -> nn.Module:
    """The random-weight classifier of ``backbone`` with one pathology logit."""
    if backbone == "mobilenet_v1":
        return MobileNetV1(spatial_dims=2, in_channels=1, num_classes=1, width_mult=width_mult)
    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=1)


def load_weights(network: nn.Module, path: str | None, option: str, ignore_prefixes: tuple[str, ...] = ()) -> str:
    """Load a state dict (``weights_only=True``) into ``network``; returns ``"random"`` or the path."""
    if path is None:
        return "random"
    if not Path(path).is_file():
        raise FileNotFoundError(f"{option}: checkpoint {path} not found; pass the bundle's models/model.pt.")
    try:
        state = read_state_dict(path)
    except ValueError as error:
        raise ValueError(f"{option}: {error}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{option}: {path} holds a {type(state).__name__}, expected a state dict.")
    hint = "check --backbone, --width-mult and --inpainter-levels against the bundle's config"
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{option}: {path} does not fit {type(network).__name__}; {hint}.\n{error}") from None
    missing = [k for k in missing if not k.startswith(ignore_prefixes)]
    if missing or unexpected:
        raise ValueError(
            f"{option}: {path} does not fit {type(network).__name__} (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); {hint}."
        )
    return path


def random_or_checkpoint_networks(args: argparse.Namespace, device: torch.device) -> tuple:
    """Classifier, inpainter, attributor (random weights unless ``--*-ckpt``), π and the weights' sources."""
    classifier = build_classifier(args.backbone, args.width_mult)
    weights = {"classifier": load_weights(classifier, args.classifier_ckpt, "--classifier-ckpt")}
    if args.inpainter_bundle:
        inpainter = load_network(args.inpainter_bundle, args.inpainter_overlays, device=device)
        weights["inpainter"] = {"bundle": args.inpainter_bundle, "overlays": list(args.inpainter_overlays)}
    else:
        levels = BACKBONES[args.backbone][1] if args.inpainter_levels is None else args.inpainter_levels
        inpainter = PartialConvUNet(num_levels=levels)
        weights["inpainter"] = load_weights(inpainter, args.inpainter_ckpt, "--inpainter-ckpt")
    classifier = classifier.to(device).eval().requires_grad_(False)
    inpainter = inpainter.to(device).eval().requires_grad_(False)
    attributor = AttentionGatedUNet(classifier, compact=SmoothMaxCompact())
    before = fingerprint(classifier)
    weights["attributor"] = load_weights(
        attributor, args.attributor_ckpt, "--attributor-ckpt", ("classifier.", "encoder.")
    )
    # an attributor checkpoint holds the classifier it was trained on (classifier.*), which loading puts in place
    if fingerprint(classifier) != before:
        if args.classifier_ckpt:
            raise ValueError(f"--attributor-ckpt: {args.attributor_ckpt} holds another classifier than "
                             f"--classifier-ckpt {args.classifier_ckpt}; pass the classifier that attributor was "
                             "trained on, or leave --classifier-ckpt out to time the one it holds.")
        weights["classifier"] = f"{args.attributor_ckpt} (the classifier the attributor holds)"
    return classifier, inpainter, attributor.to(device).eval(), InpaintMarginalizer(inpainter), weights, {}


def bundle_networks(args: argparse.Namespace, device: torch.device) -> tuple:
    """The trained networks and π of ``--attributor-bundle`` (``load_explainer``), and the θ and δ its training
    recorded (``classifier_fingerprint.json``), the iterative method's defaults."""
    checkpoint = bundle_checkpoint(args.attributor_bundle, args.overlays, args.checkpoint)
    explainer = load_explainer(args.attributor_bundle, args.overlays, checkpoint, device)
    expected = DenseNet if args.backbone == "densenet121" else MobileNetV1
    if not isinstance(explainer.classifier, expected):
        raise ValueError(
            f"--attributor-bundle {args.attributor_bundle}: its classifier is a {type(explainer.classifier).__name__}, "
            f"not the --backbone {args.backbone}'s {expected.__name__}; pass the bundle's backbone."
        )
    ckpt_dir = checkpoint.parent
    recorded = {key: read_recorded(ckpt_dir, name) for key, name in (("threshold", "classification_threshold"),
                                                                     ("delta", "delta"))}
    inpainter = getattr(explainer.marginalizer, "inpainter", None)  # None: the bundle's π is not an inpainter
    weights = {"attributor_bundle": args.attributor_bundle, "overlays": list(args.overlays),
               "checkpoint": str(checkpoint)}
    return explainer.classifier, inpainter, explainer.attributor, explainer.marginalizer, weights, recorded


def phantom_batch(kind: str, size: tuple[int, int], batch: int, seed: int = 0) -> torch.Tensor:
    """``batch`` lesion phantoms of ``kind`` as the bundles feed them to their networks, (B, 1, H, W) in [0, 1].

    The bundles' preprocessing on the stored 8-bit PNGs: ``LoadImaged`` reads them columns first (MONAI's
    PILReader layout, the phantom transposed), then ``ScaleIntensityd`` to [0, 1] and ``Resized`` to ``size``. A
    classifier trained by the classifier bundle sees in-distribution images only in this layout.
    """
    rngs = [np.random.default_rng([seed, i]) for i in range(batch)]
    stored = [np.round(generate_phantom(kind, max(size), rng, label=1)["image"] * 255.0) for rng in rngs]
    preprocess = Compose([ScaleIntensity(minv=0.0, maxv=1.0), Resize(size, mode="bilinear", anti_aliasing=True)])
    return torch.stack([preprocess(image.T[None].astype(np.float32)).as_tensor() for image in stored])


def seconds_per_call(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device, passes: int = 2
) -> dict[str, tuple[float, float]]:
    """Median wall time and median process CPU time of each ``calls[name]()``.

    Each method runs as a block, ``warmup`` untimed calls then ``repeats`` timed ones, as a user calls one method
    over a stream of batches (the allocator and caches warm for that method). The blocks of all methods run
    ``passes`` times in turn, so a slow phase of a shared machine is spread over the methods instead of landing on
    whichever ran then; the median is over all ``passes × repeats`` timings. The CPU time (all threads of this
    process) is the steadier measure of work on a machine shared with other jobs.

    With ``warmup > 0`` every method first runs once, untimed, in turn: without that round the first method's first
    block is the only one timed before any backward pass has run in the process, and the memory allocator's state
    then differs (DenseNet-121 at 256², batch 8, ours first: median 593 ms in the first pass, 546 ms in the second).
    """
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if warmup:
        for fn in calls.values():
            fn()
    wall = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    for _ in range(passes):
        for name, fn in calls.items():
            for _ in range(warmup):
                fn()
            synchronize()
            for _ in range(repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                synchronize()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in calls}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def run(args: argparse.Namespace) -> dict:
    """Build the networks, time every method, return the result record."""
    device = torch.device(args.device)
    kind = args.phantoms or BACKBONES[args.backbone][0]
    size = tuple(args.size)
    classifier, inpainter, attributor, marginalizer, weights, recorded = (
        bundle_networks(args, device) if args.attributor_bundle else random_or_checkpoint_networks(args, device)
    )
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    for network in filter(None, (classifier, inpainter, attributor)):
        network.to(memory_format=memory_format)
    images = phantom_batch(kind, size, args.batch).to(device).contiguous(memory_format=memory_format)

    # --compile applies to the plain forward/backward paths (COMPILED_METHODS); MONAI's hook-based GradCAM and
    # VanillaGrad stay eager
    fast_classifier = torch.compile(classifier) if args.compile else classifier
    fast_attributor = torch.compile(attributor) if args.compile else attributor
    # compiled, the explainer's classifier is not the attributor's own (a wrapper of it), so it scores the image with
    # a second classifier pass instead of the attributor's encoder pass: ours_with_counterfactual differs in that
    explainer = CounterfactualExplainer(fast_attributor, fast_classifier, marginalizer).eval()
    # copies with the same weights: MONAI's GradCAM keeps its hooks on its network (and sets the target ReLU out of
    # place), which no other method should carry
    trainable, head_only = copy.deepcopy(classifier).requires_grad_(True), copy.deepcopy(classifier)
    gradcam, saliency = GradCAMBaseline(copy.deepcopy(classifier)), SaliencyBaseline(classifier)
    # MONAI's default post-processing goes through numpy, which has no bfloat16: under --amp it gets the same
    # per-image min-max scaling in torch
    bf16_postprocessing = {"postprocessing": normalize_per_image} if args.amp else {}
    gradcam_as_loaded = GradCAM(nn_module=trainable, target_layers=gradcam_target_layer(classifier),
                                **bf16_postprocessing)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode(), amp:
                return fn()
        return call

    def with_amp(fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            with amp:
                return fn()
        return call

    calls = {
        "ours": no_grad(lambda: explainer.attribute(images)),
        "ours_with_counterfactual": no_grad(lambda: explainer(images)),
        "gradcam": with_amp(lambda: gradcam(images)),
        "gradcam_trainable": with_amp(lambda: gradcam_as_loaded(images, class_idx=PATHOLOGY_INDEX)),
        "gradcam_head_only": with_amp(lambda: gradcam_head_only(head_only, images)),
        "saliency": with_amp(lambda: saliency(images)),
        "saliency_batched": with_amp(lambda: saliency_batched(fast_classifier, images)),
        "classifier_forward": no_grad(lambda: fast_classifier(images)),
    }
    calls = {name: fn for name, fn in calls.items() if name in args.methods}
    # the work each pass does, counted by torch's FlopCounterMode (convolutions and matrix products; element-wise
    # operations and the smooth maximum are not counted): what no implementation of the paper's decoder can undercut
    def gflops_per_image(fn: Callable[[], object]) -> float:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / args.batch / 1e9

    gflops = {"ours": gflops_per_image(lambda: attributor(images)),
              "classifier_forward": gflops_per_image(lambda: classifier(images))}
    warmup = args.warmup + (2 if args.compile else 0)
    timings = seconds_per_call(calls, args.repeats, warmup, device, args.passes)
    seconds = {name: wall for name, (wall, _) in timings.items()}
    cpu_seconds = {name: cpu for name, (_, cpu) in timings.items()}
    maps_per_s = {name: args.batch / seconds[name] if name in seconds else None for name in METHODS}

    iterative_record = None
    if args.iterative_images > 0:
        threshold = args.threshold or recorded.get("threshold") or 0.5
        delta = args.delta or recorded.get("delta") or 0.1
        loss = CounterfactualLoss(classifier, marginalizer, delta=delta, threshold=threshold)
        method = IterativeCounterfactual(loss, max_iterations=args.iterative_max_iterations)
        targets = images[: args.iterative_images]
        if len(targets) < args.iterative_images:
            print(f"--iterative-images {args.iterative_images}: the batch has {len(targets)} image(s); the iterative "
                  f"method runs on those (raise --batch for more)", file=sys.stderr)
        start, start_cpu = time.perf_counter(), time.process_time()
        with amp:
            method(targets)
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        maps_per_s["iterative"] = len(targets) / elapsed
        iterative_record = {
            "images": len(targets),
            "max_iterations": args.iterative_max_iterations,
            "delta": delta,
            "threshold": threshold,
            "seconds_per_map": elapsed / len(targets),
            "cpu_seconds_per_map": elapsed_cpu / len(targets),
            "runs": method.last_runs,
        }

    ours = maps_per_s["ours"]
    # ours ÷ every baseline (METHODS after ours and ours_with_counterfactual); the forward pass's key is "forward"
    ratios = {f"ours_vs_{name.removeprefix('classifier_')}": (ours / maps_per_s[name] if maps_per_s[name] else None)
              for name in METHODS[2:]}
    return {
        "device": device_name(device),
        "backbone": args.backbone,
        "size": list(size),
        "batch": args.batch,
        "maps_per_s": {name: maps_per_s[name] for name in METHODS},
        "ratios": ratios,
        "gflops_per_image": gflops,
        "seconds_per_batch": seconds,
        "cpu_seconds_per_batch": cpu_seconds,
        "iterative": iterative_record,
        "settings": {
            "weights": weights, "width_mult": None if args.attributor_bundle else args.width_mult,
            "inpainter_levels": getattr(inpainter, "num_levels", None), "phantoms": kind,
            "channels_last": args.channels_last, "amp_bf16": args.amp, "compile": args.compile,
            # --compile reaches these methods only; MONAI's GradCAM and VanillaGrad and the iterative method stay eager
            "compiled_methods": [m for m in COMPILED_METHODS if m in calls] if args.compile else [],
            "methods": list(calls), "repeats": args.repeats, "passes": args.passes, "warmup": warmup,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
    }


def format_table(result: dict) -> str:
    """The report's timing table of this record, then the FLOP count and the bound it sets on ours ÷ forward."""
    flops = result["gflops_per_image"]
    return timing_table([result]) + (
        f"\n\nGFLOP per image: ours {flops['ours']:.3g}, classifier forward {flops['classifier_forward']:.3g} "
        f"(at equal speed per FLOP, ours ÷ forward ≤ {flops['classifier_forward'] / flops['ours']:.3g})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONES), required=True)
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--classifier-ckpt")
    parser.add_argument("--attributor-ckpt")
    parser.add_argument("--inpainter-ckpt")
    parser.add_argument("--width-mult", type=float, default=1.0, help="MobileNet v1 width (paper 1.0, demo 0.5)")
    parser.add_argument("--inpainter-levels", type=int, help="default: 8 (mobilenet_v1), 7 (densenet121)")
    parser.add_argument("--inpainter-bundle", help="the trained inpainter of this bundle (its network_def and "
                        "model.pt, as load_network reads them) instead of --inpainter-ckpt/--inpainter-levels")
    parser.add_argument("--inpainter-overlays", nargs="*", default=[],
                        help="the inpainter bundle's config overlays")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile ours, the forward and "
                        "saliency_batched (MobileNet v1; MONAI's DenseNet-121 recompiles every dense layer and "
                        "overran 110 s on an H200)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for every method")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--passes", type=int, default=2, help="passes over all methods (each: warm-up + repeats)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--methods", nargs="+", choices=TIMED, default=list(TIMED), metavar="METHOD",
                        help=f"the methods to time (default: all of {', '.join(TIMED)}); ours always runs. Fewer "
                        "methods leave the process's memory allocator as a process running only them finds it")
    parser.add_argument("--iterative-images", type=int, default=2, help="0 skips the iterative method")
    parser.add_argument("--iterative-max-iterations", type=int, default=300)
    parser.add_argument("--attributor-bundle", help="time a trained attributor bundle (its classifier, inpainter, "
                        "attributor and π, as load_explainer builds them) instead of the networks above")
    parser.add_argument("--overlays", nargs="*", default=[], help="the attributor bundle's config overlays")
    parser.add_argument("--phantoms", choices=("mammo", "chest"), help="the input batch's phantom task (default: "
                        "the backbone's, mammo for mobilenet_v1, chest for densenet121); give the bundle's task")
    parser.add_argument("--checkpoint", help="the attributor bundle's weights, relative to it (default: model.pt "
                        "in the ckpt_dir of its configs/inference.json plus --overlays)")
    parser.add_argument("--delta", type=float, help="area limit δ of the iterative method's loss (default: the "
                        "--attributor-bundle's recorded δ, else 0.1)")
    parser.add_argument("--threshold", type=float, help="θ of the iterative method's loss and flip criterion "
                        "(default: the --attributor-bundle's recorded θ, else 0.5)")
    args = parser.parse_args(argv)
    args.methods = ["ours", *(name for name in TIMED if name in args.methods and name != "ours")]
    problems = [
        f"--batch must be >= 1, got {args.batch}" if args.batch < 1 else "",
        f"--size must be >= 32 32, got {args.size}" if min(args.size) < 32 else "",
        f"--repeats must be >= 1, got {args.repeats}" if args.repeats < 1 else "",
        f"--warmup must be >= 0, got {args.warmup}" if args.warmup < 0 else "",
        f"--passes must be >= 1, got {args.passes}" if args.passes < 1 else "",
        f"--threads must be >= 1, got {args.threads}" if args.threads is not None and args.threads < 1 else "",
        f"--iterative-images must be >= 0, got {args.iterative_images}" if args.iterative_images < 0 else "",
        f"--iterative-max-iterations must be >= 1, got {args.iterative_max_iterations}"
        if args.iterative_max_iterations < 1 else "",
        f"--delta must be in (0, 1], got {args.delta}" if args.delta is not None and not 0 < args.delta <= 1 else "",
        f"--threshold must be in (0, 1), got {args.threshold}"
        if args.threshold is not None and not 0 < args.threshold < 1 else "",
        f"--inpainter-levels must be >= 1, got {args.inpainter_levels}"
        if args.inpainter_levels is not None and args.inpainter_levels < 1 else "",
        f"--width-mult must be > 0, got {args.width_mult}" if args.width_mult <= 0 else "",
        "--inpainter-bundle replaces --inpainter-ckpt and --inpainter-levels: give one or the other"
        if args.inpainter_bundle and (args.inpainter_ckpt or args.inpainter_levels) else "",
        "--attributor-bundle brings its own inpainter: drop --inpainter-bundle"
        if args.inpainter_bundle and args.attributor_bundle else "",
        "--attributor-bundle brings its own networks: drop --classifier-ckpt, --attributor-ckpt, --inpainter-ckpt and "
        "--inpainter-levels" if args.attributor_bundle and (args.classifier_ckpt or args.attributor_ckpt
                                                           or args.inpainter_ckpt or args.inpainter_levels) else "",
        "--overlays and --checkpoint apply to an --attributor-bundle only"
        if not args.attributor_bundle and (args.overlays or args.checkpoint) else "",
        "--inpainter-overlays applies to an --inpainter-bundle only"
        if not args.inpainter_bundle and args.inpainter_overlays else "",
        "--device cuda requested but torch.cuda.is_available() is False" if args.device == "cuda"
        and not torch.cuda.is_available() else "",
    ]
    if any(problems):
        parser.error("; ".join(p for p in problems if p))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = run(args)
    print(format_table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
