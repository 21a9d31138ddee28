"""ResumableEarlyStop (early-stopping state in the trainer checkpoint) and EarlyStopOrRestart (a new random start when
the validation score never rises above its first value)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from cfattr_monai.handlers.early_stop import EarlyStopOrRestart, ResumableEarlyStop
from cfattr_monai.networks.attribution import AttentionGatedUNet
from cfattr_monai.networks.mobilenet import MobileNetV1


def _training(
    scores: list[float], handler: ResumableEarlyStop, max_epochs: int, resume: tuple[int, dict] | None = None
) -> tuple[Engine, list[int]]:
    """A trainer of one empty iteration per epoch whose epoch ``k`` ends with a validation scoring ``scores[k - 1]``
    (the last score repeats); returns it and the epochs it ran, after running it. ``resume=(epoch, state)`` starts
    after ``epoch`` with the handler's saved ``state``, as a resumed bundle run does."""
    network = AttentionGatedUNet(MobileNetV1(width_mult=0.25))
    trainer = Engine(lambda engine, batch: None)
    trainer.network = network
    trainer.optimizer = torch.optim.Adam(network.trainable_parameters(), lr=1e-3)
    validator = Engine(lambda engine, batch: None)
    validator.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda engine: engine.state.metrics.update(score=np.float64(scores[min(trainer.state.epoch, len(scores)) - 1])),
    )
    handler.attach(validator)
    handler.set_trainer(trainer)
    if resume is not None:
        handler.load_state_dict(resume[1])
        trainer.load_state_dict({"epoch": resume[0], "epoch_length": 1, "max_epochs": max_epochs})
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: validator.run([0], max_epochs=1))
    epochs: list[int] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: epochs.append(engine.state.epoch))
    trainer.run([0], max_epochs=max_epochs)
    return trainer, epochs


def _score(engine: Engine) -> float:
    return engine.state.metrics["score"]


FLAT, GROWS_LATE = [0.02] * 40, [0.02] * 4 + [0.1, 0.2, 0.3] + [0.3] * 40

# (scores, restart_patience, patience, max_restarts, max_epochs, expected restarts, expected last epoch)
RESTART_CASES = [
    # a start that rises within restart_patience never restarts; early stopping then counts from its best
    (GROWS_LATE, 4, 6, 2, 30, 0, 7 + 6),
    # flat: restart after 1 + 4 validations (epoch 5), then after 4 more (epoch 9: a later start must beat the run's
    # first score from its first validation on); after two restarts early stopping ends it 6 validations after the
    # third start's first one (epoch 10 + 6 = 16); the abandoned starts add their 5 + 4 epochs to the budget
    (FLAT, 4, 6, 2, 30, 2, 16),
    # a new start that scores high at once has grown, though it never beats its own first score
    ([0.02] * 5 + [0.4] + [0.3] * 40, 4, 6, 2, 30, 1, 6 + 6),
    # the budget grows by the abandoned epochs: 8 epochs allowed, restart at 5, so the run may go to 13
    (FLAT, 4, 20, 1, 8, 1, 13),
    # max_restarts 0 is plain early stopping
    (FLAT, 4, 6, 0, 30, 0, 7),
]


@pytest.mark.parametrize("scores, restart_patience, patience, max_restarts, max_epochs, restarts, last", RESTART_CASES)
def test_restart_cases(scores, restart_patience, patience, max_restarts, max_epochs, restarts, last):
    handler = EarlyStopOrRestart(patience, _score, restart_patience=restart_patience, max_restarts=max_restarts)
    trainer, epochs = _training(scores, handler, max_epochs)
    assert handler.restarts == restarts
    assert epochs[-1] == last
    assert epochs == list(range(1, last + 1)), "a restart goes on counting epochs"


def test_restart_redraws_the_decoder_only_and_clears_the_optimizer():
    network = AttentionGatedUNet(MobileNetV1(width_mult=0.25))
    trainer = Engine(lambda engine, batch: None)
    trainer.network, trainer.optimizer = network, torch.optim.Adam(network.trainable_parameters(), lr=1e-3)
    network(torch.rand(1, 1, 64, 64)).mean().backward()
    trainer.optimizer.step()
    assert trainer.optimizer.state
    before = {k: v.clone() for k, v in network.state_dict().items()}
    trainer.state.max_epochs, trainer.state.epoch = 10, 4
    handler = EarlyStopOrRestart(5, _score, restart_patience=2)
    handler.set_trainer(trainer)
    handler.restart()
    after = network.state_dict()
    frozen = [k for k in before if k.startswith(("classifier.", "encoder."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen), "the frozen classifier must not change"
    assert not torch.equal(before["head.weight"], after["head.weight"]), "the decoder must get new weights"
    assert not trainer.optimizer.state and trainer.state.max_epochs == 14 and handler.start_epoch == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patience": 5, "restart_patience": 5},  # restart_patience must be below patience
        {"patience": 5, "restart_patience": 0},
        {"patience": 5, "restart_patience": 2, "max_restarts": -1},
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="restart_patience"):
        EarlyStopOrRestart(score_function=_score, **kwargs)


@pytest.mark.parametrize("handler_type", [ResumableEarlyStop, EarlyStopOrRestart])
def test_state_needs_a_trainer(handler_type):
    kwargs = {"restart_patience": 2} if handler_type is EarlyStopOrRestart else {}
    with pytest.raises(RuntimeError, match="set_trainer"):
        handler_type(patience=5, score_function=_score, **kwargs).state_dict()


@pytest.mark.parametrize("handler_type", [ResumableEarlyStop, EarlyStopOrRestart])
def test_state_resumes_through_a_weights_only_checkpoint(handler_type):
    """A run interrupted after 7 epochs and resumed from its saved state stops where the uninterrupted run stops."""
    kwargs = {"restart_patience": 4} if handler_type is EarlyStopOrRestart else {}
    scores = [0.5, 0.6, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55]
    whole = handler_type(patience=6, score_function=_score, **kwargs)
    _, epochs_whole = _training(scores, whole, 30)
    first = handler_type(patience=6, score_function=_score, **kwargs)
    _training(scores, first, 7)
    buffer = io.BytesIO()
    torch.save({"early_stop": first.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["early_stop"]
    second = handler_type(patience=6, score_function=_score, **kwargs)
    _, epochs_resumed = _training(scores, second, 30, resume=(7, state))
    assert epochs_whole[-1] == 8 and state["counter"] == 5, "one more flat validation stops the resumed run"
    assert epochs_resumed == [8]


@pytest.mark.parametrize(
    "scores, warned, last_epoch",
    [
        (FLAT, True, 1 + 10),  # early stopping 10 validations after the best, the first
        ([0.02] * 7 + [0.1] * 40, True, 8 + 10),  # warned at validation 4, grows at 8 (as a real chest X-ray start)
        ([0.02] * 2 + [0.3] * 40, False, 3 + 10),  # grows within restart_patience
    ],
)
def test_the_last_start_is_not_given_up_when_it_stays_flat(scores, warned, last_epoch, caplog):
    """After restart_patience flat validations of the last start a warning says it trains on; it is not stopped."""
    handler = EarlyStopOrRestart(patience=10, score_function=_score, restart_patience=3, max_restarts=0)
    with caplog.at_level("WARNING", logger="cfattr_monai.handlers.early_stop"):
        _, epochs = _training(scores, handler, max_epochs=30)
    messages = [r.getMessage() for r in caplog.records if "random starts" in r.getMessage()]
    assert len(messages) == int(warned)
    if warned:
        assert "this last start trains on until early stopping" in messages[0] and "--max_restarts 0" in messages[0]
    assert epochs[-1] == last_epoch  # training went on past the warning, to early stopping
