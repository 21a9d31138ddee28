"""Resumable training checkpoints: the best-model saver and a check of the file a run resumes from.

MONAI's ``CheckpointSaver`` with ``save_key_metric`` forgets on resume which score its ``model.pt`` has, so the first
validation of a resumed run replaces the best model by whatever that epoch gives. :class:`BestModelSaver` exposes its
tracking list as ``state_dict()`` / ``load_state_dict()``, so the trainer checkpoint can carry it, and runs follow-up
writers after each new best model (the attributor writes the classifier fingerprint that belongs to it there).
:func:`check_resume_checkpoint` turns a wrong ``resume_checkpoint`` into an error naming the file and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointSaver

__all__ = ["BestModelSaver", "check_resume_checkpoint", "check_validation_schedule"]


class BestModelSaver(CheckpointSaver):
    """``CheckpointSaver`` of the best key-metric model only, resumable, with writers run after each new best model.

    Put it in the validator's handlers and in the trainer checkpoint's ``save_dict`` (and the resume
    ``CheckpointLoader``'s ``load_dict``): a resumed run then replaces ``model.pt`` only by a better model.

    Args:
        save_dir: folder of the best model.
        save_dict: objects to save, e.g. ``{"model": network}``.
        key_metric_filename: file name of the best model.
        on_save: callables without arguments, run after each new best model is written.
        kwargs: further ``CheckpointSaver`` arguments (key-metric options).

    Example:
        >>> import tempfile
        >>> net = torch.nn.Linear(1, 1)
        >>> saver = BestModelSaver(tempfile.mkdtemp(), {"model": net})
        >>> sorted(saver.state_dict())
        ['_saved']
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        key_metric_filename: str = "model.pt",
        on_save: Sequence[Callable[[], object]] = (),
        **kwargs,
    ) -> None:
        super().__init__(
            save_dir=save_dir, save_dict=save_dict, save_key_metric=True, key_metric_filename=key_metric_filename, **kwargs
        )
        self.on_save = list(on_save)

    def state_dict(self) -> Mapping:
        """The key-metric tracking list (scores as Python floats, so ``weights_only`` loading accepts them)."""
        return {"_saved": [(float(score), name) for score, name in self._key_metric_checkpoint.state_dict()["_saved"]]}

    def metrics_completed(self, engine: Engine) -> None:
        """Save the model when its key metric is the best so far, then run ``on_save``."""
        before = self._key_metric_checkpoint.state_dict()["_saved"]
        super().metrics_completed(engine)
        if self._key_metric_checkpoint.state_dict()["_saved"] != before:  # a new best model was written
            for write in self.on_save:
                write()


def check_resume_checkpoint(path: str | os.PathLike | None, expected: Mapping | Sequence[str]) -> None:
    """Raise a clear error unless ``path`` is None or a trainer checkpoint holding every key of ``expected``.

    Args:
        path: the ``resume_checkpoint`` of a bundle run (None: no resume).
        expected: the resume ``CheckpointLoader``'s ``load_dict`` (or its keys).

    Raises:
        FileNotFoundError: the file does not exist (the message lists the trainer checkpoints beside it).
        ValueError: it is not a readable torch file, or lacks some of the keys (e.g. ``model.pt``, which holds the
            network weights only).
    """
    if path is None:
        return
    file, keys = Path(path), sorted(expected)
    fix = "pass a checkpoint_epoch=N.pt that this bundle's training wrote (models/model.pt holds the network weights only)"
    if not file.is_file():
        found = sorted(p.name for p in file.parent.glob("*checkpoint*epoch=*.pt")) if file.parent.is_dir() else []
        raise FileNotFoundError(f"resume_checkpoint {file} does not exist; {fix}. Found beside it: {found or 'none'}.")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)  # keys only: no tensor copies
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(
            f"resume_checkpoint {file} is not a readable torch checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}); {fix}."
        ) from error
    missing = [key for key in keys if not isinstance(checkpoint, Mapping) or key not in checkpoint]
    if missing:
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"resume_checkpoint {file} is not a trainer checkpoint of this bundle: expected the entries {keys}, "
            f"missing {missing} (found {found}); {fix}."
        )


def check_validation_schedule(max_epochs: int, val_interval: int) -> None:
    """Raise a clear error when training would end before its first validation.

    The bundles save ``models/model.pt`` at validations (:class:`BestModelSaver`), so such a run would train and
    end without one, and the other bundles would not find it.

    Raises:
        ValueError: ``val_interval`` < 1, or ``max_epochs`` < ``val_interval``.
    """
    if val_interval < 1:
        raise ValueError(f"val_interval must be >= 1, got {val_interval}; --val_interval 1 validates every epoch.")
    if max_epochs < val_interval:
        raise ValueError(
            f"{max_epochs} training epoch(s) end before the first validation (val_interval {val_interval}), so no "
            f"models/model.pt would be written; pass --val_interval {max(max_epochs, 1)} or train for at least "
            f"{val_interval} epochs."
        )
