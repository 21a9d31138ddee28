from __future__ import annotations

import pytest
from ignite.engine import Engine

from cfattr_monai.handlers.warmup import AreaConstraintWarmup


class Loss:
    area_scale = 1.0


@pytest.mark.parametrize(
    "iterations, steps, expected",
    [(0, 3, [1.0, 1.0, 1.0]), (4, 6, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]), (1, 2, [0.0, 1.0])],
)
def test_ramp(iterations, steps, expected):
    loss, seen = Loss(), []
    engine = Engine(lambda e, b: seen.append(loss.area_scale))
    AreaConstraintWarmup(loss, iterations).attach(engine)
    engine.run([0] * steps, max_epochs=1)
    assert seen == expected


def test_resumed_engine_continues_the_ramp():
    loss, seen = Loss(), []
    engine = Engine(lambda e, b: seen.append(loss.area_scale))
    AreaConstraintWarmup(loss, 4).attach(engine)
    engine.load_state_dict({"iteration": 2, "epoch_length": 2, "max_epochs": 2})  # as CheckpointLoader does
    engine.run([0] * 2)
    assert seen == [0.5, 0.75]


@pytest.mark.parametrize("loss, iterations, error", [(Loss(), -1, ValueError), (object(), 3, TypeError)])
def test_bad_arguments(loss, iterations, error):
    with pytest.raises(error):
        AreaConstraintWarmup(loss, iterations)
