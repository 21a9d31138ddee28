"""BestModelSaver (resumable best model, on_save writers) and check_resume_checkpoint (bad resume files)."""

from __future__ import annotations

import pickle

import numpy as np

import pytest
import torch
from ignite.engine import Engine, Events

from cfattr_monai.handlers.checkpoint import BestModelSaver, check_resume_checkpoint, check_validation_schedule

KEYS = {"network": None, "trainer": None}


class Unsafe:
    """A pickled object that ``weights_only`` loading must refuse."""


def _validator(scores: list[float]) -> Engine:
    """An engine whose epoch ``k`` ends with key metric ``scores[k - 1]``."""
    engine = Engine(lambda engine, batch: None)
    engine.state.key_metric_name = "score"

    @engine.on(Events.EPOCH_COMPLETED)
    def _score(engine):
        engine.state.metrics["score"] = np.float64(scores[engine.state.epoch - 1])  # as MONAI's metrics give them

    return engine


def _run(saver: BestModelSaver, scores: list[float]) -> None:
    engine = _validator(scores)
    saver.attach(engine)  # after the scoring handler: the saver sees this epoch's score
    engine.run([0], max_epochs=len(scores))


@pytest.mark.parametrize(
    "resumed, new_score, replaced",
    [(True, 0.4, False), (True, 0.6, True), (False, 0.4, True)],  # without the resumed state 0.4 would replace 0.5
)
def test_best_model_saver_resumes_its_best_score(tmp_path, resumed, new_score, replaced):
    network, writes = torch.nn.Linear(1, 1), []
    first = BestModelSaver(str(tmp_path), {"model": network}, on_save=[lambda: writes.append("first")])
    _run(first, [0.5, 0.3])  # epoch 1 is the best: saved once
    assert writes == ["first"] and (tmp_path / "model.pt").is_file()
    torch.save({"best_model": first.state_dict()}, tmp_path / "checkpoint.pt")  # inside the trainer checkpoint
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["best_model"]

    second = BestModelSaver(str(tmp_path), {"model": network}, on_save=[lambda: writes.append("second")])
    if resumed:
        second.load_state_dict(state)
    with torch.no_grad():
        network.weight.fill_(7.0)
    _run(second, [new_score])
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["weight"]
    assert bool((saved == 7.0).all()) is replaced
    assert writes == ["first", "second"] if replaced else writes == ["first"]


def _write(path, kind):
    if kind == "trainer":
        torch.save({"network": {"w": torch.zeros(1)}, "trainer": {"epoch": 1}}, path)
    elif kind == "weights only":
        torch.save({"w": torch.zeros(1)}, path)
    elif kind == "truncated":
        torch.save({"network": {"w": torch.zeros(1000)}, "trainer": {}}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"network": Unsafe(), "trainer": Unsafe()}))
    elif kind == "tensor":
        torch.save(torch.zeros(2), path)


@pytest.mark.parametrize(
    "kind, error, match",
    [
        ("trainer", None, None),
        ("missing", FileNotFoundError, "does not exist.*checkpoint_epoch=N.pt"),
        ("weights only", ValueError, r"missing \['network', 'trainer'\]"),
        ("truncated", ValueError, "not a readable torch checkpoint"),
        ("pickle", ValueError, "not a readable torch checkpoint"),
        ("tensor", ValueError, "found Tensor"),
    ],
)
def test_check_resume_checkpoint(tmp_path, kind, error, match):
    path = tmp_path / "checkpoint_epoch=1.pt"
    _write(path, kind)
    if error is None:
        check_resume_checkpoint(path, KEYS)
        return
    with pytest.raises(error, match=match) as raised:
        check_resume_checkpoint(path, KEYS)
    assert str(path) in str(raised.value)


def test_no_resume_checkpoint_is_fine():
    check_resume_checkpoint(None, KEYS)


@pytest.mark.parametrize(
    "max_epochs, val_interval, fragment",
    [
        (10, 1, None),
        (2, 2, None),  # one validation, at the last epoch
        (1, 2, "pass --val_interval 1 or train for at least 2 epochs"),
        (0, 1, "pass --val_interval 1 or train for at least 1 epochs"),
        (5, 0, "val_interval must be >= 1"),
    ],
)
def test_validation_schedule(max_epochs, val_interval, fragment):
    if fragment is None:
        check_validation_schedule(max_epochs, val_interval)
    else:
        with pytest.raises(ValueError, match=fragment):
            check_validation_schedule(max_epochs, val_interval)
