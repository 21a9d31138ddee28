"""The main job: the whole chain on the embedded phantoms, ending in ``reports/demo/report.md`` and ``metrics.json``.

Stages, one progress line each with its elapsed time: the phantom data set; the three bundles in order (train →
evaluate, each ``python -m monai.bundle run`` in its own folder, see :mod:`cfattr_monai.pipeline`); the attributor's
inference on the test split; its acceptance figures (:mod:`cfattr_monai.metrics.counterfactual`: flip rate against
the healthy twins, lesion overlap, area, randomization check); a small benchmark (``scripts/benchmark.py``); the
report. Trained bundles are reused unless ``--fresh``. Exits non-zero at the first failing stage, naming it.

Every stage runs with ``--threads`` CPU threads (default 2, the count the documented demo figures were made with):
the floating-point summation order, and with it the whole training trajectory, changes with the thread count, so
another count gives other (equally valid) weights and figures.

Run ``python -m cfattr_monai.demo --out reports/demo`` (what ``make demo`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from cfattr_monai.data.phantoms import ensure_phantom_dataset
from cfattr_monai.pipeline import BUNDLES_DIR, Step, pipeline_steps, run_step

REPO_ROOT = BUNDLES_DIR.parent
DEMO_DATALIST = REPO_ROOT / "data" / "phantoms" / "mammo_128" / "datalist.json"
DEMO_PHANTOMS = {"kind": "mammo", "n": 600, "size": 128, "seed": 0}
#: the attributor on the test split; a new table each run, as the bundles may have been retrained since (FRESH=1)
INFERENCE = Step("attributor/inference", "attributor", ("configs/inference.json",), overrides={"overwrite": "True"})
#: CPU threads of every stage: the documented demo figures were made with 2 (the project machine's cores)
DEMO_THREADS = 2
#: small CPU benchmark of the demo networks (random weights: it measures speed, not quality)
BENCHMARK_ARGS = ("--backbone", "mobilenet_v1", "--size", "128", "128", "--batch", "8", "--width-mult", "0.5",
                  "--inpainter-levels", "5", "--iterative-images", "1", "--repeats", "2")


def _read(path: Path) -> Mapping | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect_metrics(out_dir: Path, bundles_dir: Path = BUNDLES_DIR) -> dict:
    """Assemble ``metrics.json`` from what the bundle evaluations and the benchmark wrote (None where absent)."""
    roc = _read(bundles_dir / "classifier" / "eval" / "roc.json") or {}
    marginalization = _read(bundles_dir / "inpainter" / "eval" / "marginalization.json") or {}
    attribution = _read(bundles_dir / "attributor" / "eval" / "attribution_metrics.json") or {}

    def auc(key: str):
        value = marginalization.get(key)
        return value.get("mean") if isinstance(value, Mapping) else value

    return {
        "classifier": {"auc": roc.get("auc"), "auc_ci": roc.get("auc_ci")},
        "inpainter": {
            "auc_none": auc("auc_none"),
            "auc_healthy_inpaint": auc("auc_healthy_inpaint"),
            "auc_lesion_inpaint": auc("auc_lesion_inpaint"),
            "mean_abs_dp_healthy": marginalization.get("mean_abs_dp_healthy"),
            "sensitivity_floor": marginalization.get("sensitivity_floor"),
            "twin_abs_dp": marginalization.get("twin_abs_dp"),
        },
        "attribution": {key: attribution.get(key) for key in ("ours", "gradcam", "saliency", "wilcoxon_p",
                                                             "wilcoxon_favours_ours", "n_empty_maps", "flip_rate")},
        "acceptance": _read(out_dir / "acceptance.json"),
        "timing": _read(out_dir / "timing.json"),
    }


def pin_threads(threads: int) -> None:
    """Make every process the demo starts use ``threads`` CPU threads (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``).

    0 leaves the environment as it is (torch then takes one thread per physical core).

    Raises:
        ValueError: ``threads`` < 0.
    """
    if threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default), got {threads}.")
    if threads:
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(threads)


def _stage(name: str, func: Callable[[], object], log: dict[str, float]) -> None:
    print(f"[demo] {name} ...", flush=True)
    start = time.perf_counter()
    try:
        func()
    except Exception as error:  # report the stage, then fail the run
        raise SystemExit(f"[demo] {name} failed: {error}") from error
    log[name] = round(time.perf_counter() - start, 1)
    print(f"[demo] {name}: done in {log[name]:.0f} s", flush=True)


def run_demo(out_dir: Path, fresh: bool = False) -> Path:
    """Run every stage; return the path of ``metrics.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start, stages = time.perf_counter(), {}
    _stage("phantoms", lambda: ensure_phantom_dataset(DEMO_DATALIST, **DEMO_PHANTOMS), stages)
    for step in pipeline_steps("demo"):
        _stage(step.name, lambda step=step: run_step(step, fresh), stages)
    _stage(INFERENCE.name, lambda: run_step(INFERENCE), stages)
    acceptance = [sys.executable, "-m", "cfattr_monai.metrics.counterfactual", str(BUNDLES_DIR / "attributor"),
                  "--device", "cpu", "--out", str(out_dir / "acceptance.json")]
    _stage("attributor/acceptance", lambda: subprocess.run(acceptance, check=True, stdout=subprocess.DEVNULL), stages)
    benchmark = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), *BENCHMARK_ARGS,
                 "--out", str(out_dir / "timing.json")]
    _stage("benchmark", lambda: subprocess.run(benchmark, check=True), stages)

    def report() -> None:
        from cfattr_monai.report.build import write_report

        attributor_eval = BUNDLES_DIR / "attributor" / "eval"
        write_report(out_dir, attribution=attributor_eval / "attribution_metrics.json",
                     examples=attributor_eval / "attribution_examples.npz",
                     marginalization=BUNDLES_DIR / "inpainter" / "eval" / "marginalization.json",
                     timing=[out_dir / "timing.json"], acceptance=out_dir / "acceptance.json",
                     title="cfattr-monai demo report (phantoms)")

    _stage("report", report, stages)
    metrics = collect_metrics(out_dir)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    metrics.update(wall_time_s=round(time.perf_counter() - start, 1), stage_time_s=stages,
                   threads=os.environ.get("OMP_NUM_THREADS", "torch default"),
                   peak_rss_mb=round(max(children, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024, 1))
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"[demo] finished in {metrics['wall_time_s']:.0f} s; report: {out_dir / 'report.md'}, metrics: {path}")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (``--out``, ``--fresh``, ``--threads``), shared by ``python -m cfattr_monai.demo`` and
    ``cfattr demo``."""
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "demo", help="report folder")
    parser.add_argument("--fresh", action="store_true", help="retrain the bundles even when models/model.pt exists")
    parser.add_argument("--threads", type=int, default=DEMO_THREADS,
                        help=f"CPU threads of every stage (default {DEMO_THREADS}, as the documented figures; "
                             "0: torch's default; another count trains other weights)")


def run_from_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Pin the threads (a bad count is a usage error of ``parser``), then :func:`run_demo`."""
    try:
        pin_threads(args.threads)
    except ValueError as error:
        parser.error(str(error))
    run_demo(Path(args.out).resolve(), args.fresh)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_arguments(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(main())
