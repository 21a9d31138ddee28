"""Scale-out: the bundles' ``multi_gpu_*.json`` overlays run under ``torchrun`` with DDP on CPU (gloo backend).

Each case trains or evaluates for one epoch on a dozen 64² phantoms in two processes, as a GPU user would run
``torchrun --nproc_per_node=N -m monai.bundle run --config_file "['configs/train.json','configs/multi_gpu_train.json']"``.
The checks are what distinguishes a real distributed run from two independent ones: the ``DistributedSampler``
halves the iterations per epoch, logging handlers run on rank 0 only, and metrics are gathered over all ranks.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cfattr_monai.data.phantoms import write_phantom_dataset
from cfattr_monai.networks.inpainter import PartialConvUNet
from cfattr_monai.networks.mobilenet import MobileNetV1

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
    assert log.count("Key metric: val_auc best value") == 1, "rank 1 should not run the StatsHandler"
    single = _read_metric(work / "eval_single" / "metrics.csv", "val_auc")
    sharded = _read_metric(work / "eval_ddp" / "metrics.csv", "val_auc")
    assert sharded == pytest.approx(single, abs=1e-6), "ROC-AUC gathered over two shards differs from one process"


STAND_IN_SIZE = 32
STAND_IN_PHANTOMS = {"kind": "mammo", "n": 30, "size": STAND_IN_SIZE, "seed": 0}  # ≥ 2 healthy validation images
TINY_INPAINTER = {"num_levels": 3, "channels": [4, 8, 8], "kernel_sizes": [7, 5, 3]}
STAND_INS = {
    "classifier": ({"_target_": "cfattr_monai.networks.mobilenet.MobileNetV1", "width_mult": 0.25}, MobileNetV1),
    "inpainter": ({"_target_": "cfattr_monai.networks.inpainter.PartialConvUNet", **TINY_INPAINTER}, PartialConvUNet),
}


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    """Untrained classifier and inpainter bundles (configs/inference.json + models/model.pt) and tiny phantoms."""
    root = tmp_path_factory.mktemp("stand_ins")
    torch.manual_seed(0)
    folders = {"datalist": write_phantom_dataset(root / "phantoms", **STAND_IN_PHANTOMS)}
    for name, (network_def, cls) in STAND_INS.items():
        folder = folders[name] = root / name
        (folder / "configs").mkdir(parents=True)
        (folder / "models").mkdir()
        (folder / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
        kwargs = {k: v for k, v in network_def.items() if k != "_target_"}
        torch.save(cls(**kwargs).state_dict(), folder / "models" / "model.pt")
    return folders


def _iterations_per_rank(n_items: int, batch_size: int, world_size: int = 2) -> int:
    """Iterations of one epoch on one rank under DistributedSampler(even_divisible=True)."""
    return math.ceil(math.ceil(n_items / world_size) / batch_size)


@pytest.mark.slow
@pytest.mark.parametrize(
    "bundle, overrides, n_items",
    [
        (
            "inpainter",
            # phase 2 freezes the contraction path's BN: DDP must accept parameters without gradient
            {"phase1_epochs": 1, "phase2_epochs": 1, "val_interval": 1, **TINY_INPAINTER},
            lambda items: sum(d["label"] == 0 for d in items),  # trains on healthy images only
        ),
        ("attributor", {"num_epochs": 1, "delta": 0.2, "log_dir": "{work}/runs"}, len),
    ],
)
def test_multi_gpu_train_on_cpu_with_stand_in_networks(stand_ins, tmp_path, bundle, overrides, n_items):
    batch_size = 2
    settings = {
        "datalist": str(stand_ins["datalist"]),
        "phantoms": STAND_IN_PHANTOMS,
        "image_size": [STAND_IN_SIZE, STAND_IN_SIZE],
        "classifier_bundle": str(stand_ins["classifier"]),
        "inpainter_bundle": str(stand_ins["inpainter"]),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "eval"),
        "batch_size": batch_size,
        **{k: v.format(work=tmp_path) if isinstance(v, str) else v for k, v in overrides.items()},
    }
    args = [a for key, value in settings.items() for a in (f"--{key}", repr(value) if not isinstance(value, str) else value)]
    log = run_bundle(bundle, ["configs/train.json", "configs/multi_gpu_train.json"], args, nproc=2)
    assert (tmp_path / "models" / "model.pt").is_file(), f"no best-metric weights in {tmp_path / 'models'}"
    training = json.loads(stand_ins["datalist"].read_text())["training"]
    expected = _iterations_per_rank(n_items(training), batch_size)
    iterations = re.findall(r"Epoch: 1/\d+, Iter: (\d+)/(\d+)", log)
    assert iterations == [(str(i), str(expected)) for i in range(1, expected + 1)], (
        f"expected iterations 1..{expected} of {expected} per rank, each logged once (rank 0): {iterations}"
    )


@pytest.mark.slow
def test_attributor_multi_gpu_inference_shards_the_inputs(stand_ins, tmp_path):
    from monai.bundle import ConfigParser

    from cfattr_monai.bundle import load_network
    from cfattr_monai.explain.counterfactual import write_classifier_fingerprint

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "attributor" / "configs" / "inference.json"))
    parser["classifier"] = classifier = load_network(stand_ins["classifier"])
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")  # untrained
    write_classifier_fingerprint(classifier, tmp_path)
    settings = {
        "--datalist": str(stand_ins["datalist"]),
        "--classifier_bundle": str(stand_ins["classifier"]),
        "--inpainter_bundle": str(stand_ins["inpainter"]),
        "--ckpt_dir": str(tmp_path),
        "--output_dir": str(tmp_path / "explanations"),
        "--image_size": "[64, 64]",
    }
    configs = ["configs/inference.json", "configs/multi_gpu_inference.json"]
    run_bundle("attributor", configs, [a for item in settings.items() for a in item], nproc=2)
    shards = []
    for rank in (0, 1):
        with (tmp_path / "explanations" / f"rank{rank}" / "explanations.csv").open(newline="") as f:
            shards.append({Path(row["image"]).name for row in csv.DictReader(f)})
    test_images = {Path(d["image"]).name for d in json.loads(stand_ins["datalist"].read_text())["test"]}
    assert shards[0] and shards[1] and not shards[0] & shards[1], f"ranks must split the inputs: {shards}"
    assert shards[0] | shards[1] == test_images, "every test image explained exactly once over the two ranks"


def _threads() -> set[str]:
    """The ids of the process's threads (none where /proc does not list them, e.g. macOS: then nothing is checked)."""
    tasks = Path("/proc/self/task")
    return set(os.listdir(tasks)) if tasks.is_dir() else set()


def test_shutdown_distributed_releases_ddp_and_destroys_the_group(tmp_path):
    """One-process gloo group: the DDP module's reducer, logger and group are dropped, then the group is destroyed,
    which ends gloo's worker threads there rather than at interpreter exit (where a process may abort)."""
    import torch
    import torch.distributed as dist

    from cfattr_monai.bundle import shutdown_distributed

    torch.nn.Linear(2, 1)(torch.rand(3, 2)).sum().backward()  # any thread pool of the ops themselves starts here
    before = _threads()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
        net(torch.rand(3, 2)).sum().backward()
        gloo = _threads() - before  # threads of other tests that end meanwhile do not matter
        listed = Path("/proc/self/task").is_dir()
        assert gloo or not listed, "gloo started no worker thread: the last check would prove nothing"
        shutdown_distributed(net, torch.nn.Linear(2, 1))  # plain modules are left alone
        assert not hasattr(net, "reducer") and net.logger is None and net.process_group is None
        assert not dist.is_initialized()
        assert not gloo & _threads(), "gloo's worker threads outlived destroy_process_group"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
