"""Run the three bundles in order — classifier → inpainter → attributor — with ``python -m monai.bundle run``.

Each step is one bundle run in its own process, exactly what a user would type inside the bundle folder, so the
pipeline adds no behaviour of its own: it only chooses the task overlays, passes the datalist, skips a training whose
``model.pt`` already exists in the ``ckpt_dir`` of the step's configs (unless ``fresh``; the paper tasks train into
``models_mammo/`` and ``models_cxr/``, so the demo's ``models/`` stay), and prints one line per step with its
elapsed time.

Example:
    >>> steps = pipeline_steps("demo")
    >>> [s.name for s in steps][:2]
    ['classifier/train', 'classifier/evaluate']
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cfattr_monai.bundle import bundle_checkpoint

__all__ = ["BUNDLES_DIR", "TASK_OVERLAYS", "Step", "pipeline_steps", "trained_model", "run_step", "run_pipeline"]

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"

#: config overlays per task, merged after each bundle's own config (the default configs are the demo task)
TASK_OVERLAYS: dict[str, tuple[str, ...]] = {
    "demo": (),
    "mammo": ("configs/task_mammo.json",),
    "cxr": ("configs/task_cxr.json",),
}


@dataclass(frozen=True)
class Step:
    """One ``monai.bundle run`` of one bundle.

    Attributes:
        name: ``"<bundle>/<config stem>"``, printed in the progress line.
        bundle: bundle folder name under ``bundles/``.
        configs: config files relative to the bundle folder, merged in order.
        trains: the step writes ``model.pt`` into the ``ckpt_dir`` of ``configs``; it is skipped when that file
            exists and ``fresh`` is false.
        overrides: ``--key value`` pairs passed to ``monai.bundle run``.
    """

    name: str
    bundle: str
    configs: tuple[str, ...]
    trains: bool = False
    overrides: dict[str, str] = field(default_factory=dict)


def pipeline_steps(task: str, datalist: str | Path | None = None) -> list[Step]:
    """The bundle runs of the whole chain for ``task`` (``demo``, ``mammo`` or ``cxr``).

    Args:
        task: a key of :data:`TASK_OVERLAYS`.
        datalist: MONAI datalist JSON to use instead of each bundle's default (the demo phantoms); no phantoms are
            made then (``--phantoms False``).

    Raises:
        ValueError: unknown task.
    """
    if task not in TASK_OVERLAYS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_OVERLAYS)}.")
    overlays = TASK_OVERLAYS[task]
    # a given data set replaces the phantoms: no bundle makes phantoms into its folder
    common = {"datalist": str(Path(datalist).resolve()), "phantoms": "False"} if datalist is not None else {}
    # the bundles a bundle reads (and, for the attributor's Table 1, itself) are loaded with the same task overlays
    reads = {"classifier": (), "inpainter": ("classifier",), "attributor": ("classifier", "inpainter", "attributor")}
    steps = []
    for bundle in ("classifier", "inpainter", "attributor"):
        extra = {f"{other}_overlays": json.dumps(list(overlays)) for other in reads[bundle]}
        for stage in ("train", "evaluate"):
            configs = (f"configs/{stage}.json", *overlays)
            if stage == "evaluate":
                configs = ("configs/train.json", *configs)
            steps.append(Step(f"{bundle}/{stage}", bundle, configs, stage == "train", {**common, **extra}))
    return steps


def _command(step: Step) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(list(step.configs))]
    for key, value in step.overrides.items():
        cmd += [f"--{key}", value]
    return cmd


def trained_model(step: Step, bundles_dir: Path = BUNDLES_DIR) -> Path:
    """Where the training ``step`` writes its weights, the ``model.pt`` the other bundles load: ``bundle_checkpoint``
    of its task overlays (the step's configs after its own stage config)."""
    return bundle_checkpoint(bundles_dir / step.bundle, step.configs[1:])


def run_step(step: Step, fresh: bool = False, bundles_dir: Path = BUNDLES_DIR) -> float:
    """Run one step in its bundle folder; return its wall time in seconds (0 when skipped).

    Raises:
        RuntimeError: the bundle run failed; the message names the step and the command to rerun it.
    """
    bundle_dir = bundles_dir / step.bundle
    if step.trains and not fresh and (model := trained_model(step, bundles_dir)).is_file():
        print(f"[pipeline] {step.name}: skipped, {model} exists (--fresh or make demo FRESH=1 retrains)")
        return 0.0
    cmd = _command(step)
    print(f"[pipeline] {step.name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    completed = subprocess.run(cmd, cwd=bundle_dir)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(
            f"{step.name} failed (exit {completed.returncode}) after {elapsed:.0f} s; rerun it alone with:\n"
            f"  cd {bundle_dir} && python {' '.join(cmd[1:])}"
        )
    print(f"[pipeline] {step.name}: done in {elapsed:.0f} s", flush=True)
    return elapsed


def run_pipeline(task: str = "demo", datalist: str | Path | None = None, fresh: bool = False) -> dict[str, float]:
    """Run :func:`pipeline_steps` in order; return each step's wall time (seconds)."""
    return {step.name: run_step(step, fresh) for step in pipeline_steps(task, datalist)}
