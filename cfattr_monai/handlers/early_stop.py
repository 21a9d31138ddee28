"""Resumable early stopping, and the attributor's restart from a new random start when its map never grows.

MONAI's ``EarlyStopHandler`` keeps its patience counter and best score in memory, so a resumed run starts counting
again. :class:`ResumableEarlyStop` exposes them as ``state_dict()`` / ``load_state_dict()`` for the trainer
checkpoint. :class:`EarlyStopOrRestart` adds what the attributor needs: some random starts of its decoder never begin
to grow a map (the validation flip rate stays at its first value until early stopping ends the run with a useless
model), so when the score has not risen above the run's first validation score for ``restart_patience`` validations
the network's trainable weights are drawn anew and training goes on, with the epochs of the abandoned start added to
the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
from ignite.engine import Engine
from monai.handlers import EarlyStopHandler

__all__ = ["ResumableEarlyStop", "EarlyStopOrRestart"]


class ResumableEarlyStop(EarlyStopHandler):
    """MONAI ``EarlyStopHandler`` whose patience counter and best score travel in the trainer checkpoint.

    Put it in the validator's handlers, call ``set_trainer(trainer)`` and add it to the trainer checkpoint's
    ``save_dict`` (and the resume ``CheckpointLoader``'s ``load_dict``).

    Example:
        >>> from ignite.engine import Engine
        >>> stop = ResumableEarlyStop(patience=3, score_function=lambda engine: 0.5)
        >>> stop.set_trainer(Engine(lambda engine, batch: None))
        >>> dict(stop.state_dict())
        {'counter': 0, 'best_score': None}
    """

    def _stopper(self):
        if self._handler is None:
            raise RuntimeError(f"{type(self).__name__}: call set_trainer() before training, saving or resuming.")
        return self._handler

    def state_dict(self) -> dict:
        """Patience counter and best score (Python numbers, so ``weights_only`` loading accepts them)."""
        stopper = self._stopper()
        best = stopper.best_score
        return {"counter": int(stopper.counter), "best_score": None if best is None else float(best)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what :meth:`state_dict` returned."""
        stopper = self._stopper()
        stopper.counter, stopper.best_score = int(state["counter"]), state["best_score"]


class EarlyStopOrRestart(ResumableEarlyStop):
    """Early stopping that first restarts the network from new random weights while its score has never risen.

    After each validation: if the current start has not raised the score above the run's first validation score (by
    more than ``min_delta``; the level of a network that has learnt nothing yet) for ``restart_patience`` validations
    (those after the first for the first start, all for later ones) and fewer than ``max_restarts`` restarts were
    made, the
    trainer's network redraws its trainable weights (``reset_parameters()``, from the continuing random stream, so a
    seeded run stays reproducible), the optimizer forgets its state, the patience counter starts again and the
    trainer's ``max_epochs`` grows by the epochs of the abandoned start. Otherwise it is MONAI's early stopping.
    ``restart_patience`` must be smaller than ``patience``, or early stopping would end the run first.

    Args:
        patience: validations without improvement before the run stops.
        score_function: validator engine → score (higher is better).
        restart_patience: validations not above the run's first score before a restart.
        max_restarts: most restarts per run (0: plain resumable early stopping).
        min_delta: smallest rise that counts, for both the restart and the early stopping.
        kwargs: further ``EarlyStopHandler`` arguments.

    Example:
        >>> from ignite.engine import Engine
        >>> net = torch.nn.Linear(2, 1)
        >>> net.reset_parameters = lambda: torch.nn.init.zeros_(net.weight)
        >>> trainer = Engine(lambda engine, batch: None)
        >>> trainer.network, trainer.optimizer = net, torch.optim.SGD(net.parameters(), lr=0.1)
        >>> trainer.state.max_epochs, trainer.state.epoch = 10, 3
        >>> stop = EarlyStopOrRestart(patience=5, score_function=lambda engine: 0.1, restart_patience=2)
        >>> stop.set_trainer(trainer)
        >>> for _ in range(3):
        ...     stop(Engine(lambda engine, batch: None))
        >>> stop.restarts, trainer.state.max_epochs, float(net.weight.detach().abs().sum())
        (1, 13, 0.0)
    """

    def __init__(
        self,
        patience: int,
        score_function: Callable[[Engine], float],
        restart_patience: int,
        max_restarts: int = 2,
        min_delta: float = 0.0,
        **kwargs,
    ) -> None:
        if not 0 < restart_patience < patience or max_restarts < 0:
            raise ValueError(
                f"EarlyStopOrRestart: need 0 < restart_patience < patience and max_restarts >= 0, got "
                f"restart_patience={restart_patience}, patience={patience}, max_restarts={max_restarts}."
            )
        super().__init__(patience=patience, score_function=score_function, min_delta=min_delta, **kwargs)
        self.restart_patience, self.max_restarts = restart_patience, max_restarts
        self.restarts = 0
        self.start_epoch = 0  # trainer epoch at which the current start began: the epochs of the abandoned starts
        self.first_score: float | None = None  # the run's first validation score
        self.flat_validations = 0  # validations of the current start not above it; -1 once the score rose
        self.base_max_epochs: int | None = None  # the trainer's own budget, read at the first validation
        self.logger = logging.getLogger(__name__)

    def _extend_budget(self) -> None:
        """``max_epochs`` = the trainer's own budget + the epochs of the abandoned starts (again after a resume)."""
        state = self._stopper().trainer.state
        if self.base_max_epochs is None:
            self.base_max_epochs = state.max_epochs
        state.max_epochs = max(state.max_epochs, self.base_max_epochs + self.start_epoch)

    def __call__(self, engine: Engine) -> None:
        self._extend_budget()
        score = float(self.score_function(engine))
        if self.first_score is None:
            self.first_score = score
        elif self.flat_validations >= 0:
            self.flat_validations = -1 if score > self.first_score + self.min_delta else self.flat_validations + 1
        if self.flat_validations >= self.restart_patience:
            if self.restarts < self.max_restarts:
                self.restart()
                return
            if self.flat_validations == self.restart_patience:
                self.logger.warning(
                    f"EarlyStopOrRestart: the validation score did not rise above its first value "
                    f"({self.first_score:.4g}) within {self.restart_patience} validations in any of "
                    f"{self.restarts + 1} random starts; this last start trains on until early stopping, and some maps "
                    "grow late (41 epochs in on a real chest X-ray set). If it stays flat, check the data and the "
                    "frozen networks, or try another seed, or --max_restarts 0 with a longer --early_stop_patience."
                )
        super().__call__(engine)

    def restart(self) -> None:
        """Redraw the network's trainable weights, clear the optimizer state and extend the epoch budget."""
        trainer = self._stopper().trainer
        network = getattr(trainer.network, "module", trainer.network)  # DistributedDataParallel wraps it
        network.reset_parameters()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for parameter in network.parameters():
                torch.distributed.broadcast(parameter.data, src=0)
        trainer.optimizer.state.clear()
        self._handler.counter, self._handler.best_score = 0, None
        self.start_epoch, self.flat_validations = trainer.state.epoch, 0
        self._extend_budget()
        self.logger.warning(
            f"EarlyStopOrRestart: the validation score did not rise above its first value ({self.first_score}) for "
            f"{self.restart_patience} validations; restart {self.restarts + 1} of {self.max_restarts} from new random "
            f"weights at epoch {trainer.state.epoch} (the run now ends by epoch {trainer.state.max_epochs})."
        )
        self.restarts += 1

    def state_dict(self) -> dict:
        """The early-stopping state and the restart bookkeeping."""
        return {
            **super().state_dict(),
            "restarts": self.restarts,
            "start_epoch": self.start_epoch,
            "first_score": self.first_score,
            "flat_validations": self.flat_validations,
        }

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        self.restarts, self.start_epoch = state["restarts"], state["start_epoch"]
        self.first_score, self.flat_validations = state["first_score"], state["flat_validations"]
