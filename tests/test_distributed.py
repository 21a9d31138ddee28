"""Scale-out: the bundles' ``multi_gpu_*.json`` overlays run under ``torchrun`` with DDP on CPU (gloo backend).

Each case trains or evaluates for one epoch on a dozen 64² phantoms in two processes, as a GPU user would run
``torchrun --nproc_per_node=N -m monai.bundle run --config_file "['configs/train.json','configs/multi_gpu_train.json']"``.
The checks are what distinguishes a real distributed run from two independent ones: the ``DistributedSampler``
halves the iterations per epoch, logging handlers run on rank 0 only, and metrics are gathered over all ranks.
"""

from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_PHANTOMS = "{'kind': 'mammo', 'n': 12, 'size': 64, 'seed': 0}"
TINY_OVERRIDES = ["--phantoms", TINY_PHANTOMS, "--image_size", "[64, 64]"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bundle(bundle: str, configs: list[str], overrides: list[str], nproc: int = 0, timeout: int = 300) -> str:
    """Run ``monai.bundle run`` for ``bundle`` (single process, or ``torchrun`` with ``nproc`` CPU workers); return the log."""
    launcher = (
        [str(BIN / "torchrun"), f"--nproc_per_node={nproc}", f"--master_port={_free_port()}", "-m"]
        if nproc
        else [sys.executable, "-m"]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [*launcher, "monai.bundle", "run", "--config_file", repr(configs), "--logging_file", "configs/logging.conf"]
    done = subprocess.run(
        [*cmd, *overrides], cwd=REPO / "bundles" / bundle, env=env, capture_output=True, text=True, timeout=timeout
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{log[-4000:]}"
    return log


def _read_metric(path: Path, name: str) -> float:
    rows = {row[0]: row[1] for row in csv.reader(path.open()) if row}
    assert name in rows, f"{path} has no {name!r} row: {rows}"
    return float(rows[name])


@pytest.fixture(scope="module")
def classifier_ddp_run(tmp_path_factory):
    """One two-process training epoch of the classifier bundle; returns (work folder, log)."""
    work = tmp_path_factory.mktemp("classifier_ddp")
    overrides = [
        *TINY_OVERRIDES,
        *("--dataset_dir", str(work / "data"), "--ckpt_dir", str(work / "models")),
        *("--output_dir", str(work / "train_eval"), "--num_epochs", "1", "--batch_size", "2"),
    ]
    log = run_bundle("classifier", ["configs/train.json", "configs/multi_gpu_train.json"], overrides, nproc=2)
    return work, log


@pytest.mark.slow
def test_classifier_multi_gpu_train_on_cpu(classifier_ddp_run):
    work, log = classifier_ddp_run
    assert (work / "models" / "model.pt").is_file(), f"no best-metric weights in {work / 'models'}:\n{log[-2000:]}"
    assert list((work / "models").glob("checkpoint_epoch=1.pt")), "the trainer checkpoint (resume) was not written"
    # 12 phantoms → 7 training items; DistributedSampler(even_divisible) gives 4 per rank → 2 iterations of batch 2
    # per rank (one process alone would take 4); StatsHandler on rank 0 only → each iteration logged once.
    iterations = re.findall(r"Epoch: 1/1, Iter: (\d+)/(\d+)", log)
    assert iterations == [("1", "2"), ("2", "2")], f"expected iterations 1/2 and 2/2 logged once each: {iterations}"


@pytest.mark.slow
def test_classifier_multi_gpu_evaluate_matches_single_process(classifier_ddp_run):
    work, _ = classifier_ddp_run
    common = [*TINY_OVERRIDES, "--dataset_dir", str(work / "data"), "--ckpt_dir", str(work / "models")]
    configs = ["configs/train.json", "configs/evaluate.json"]
    run_bundle("classifier", configs, [*common, "--output_dir", str(work / "eval_single")])
    log = run_bundle(
        "classifier",
        [*configs, "configs/multi_gpu_evaluate.json"],
        [*common, "--output_dir", str(work / "eval_ddp")],
        nproc=2,
    )
    assert log.count("Restored all variables from") == 1, "rank 1 should log at WARNING level only"
    single = _read_metric(work / "eval_single" / "metrics.csv", "val_auc")
    sharded = _read_metric(work / "eval_ddp" / "metrics.csv", "val_auc")
    assert sharded == pytest.approx(single, abs=1e-6), "ROC-AUC gathered over two shards differs from one process"
