"""One training / evaluation iteration of the inpainter, for MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``.

The inpainter takes two inputs (image, valid mask) and L_PCI needs the mask too, so the default supervised iteration
``loss(network(inputs), targets)`` does not fit. These functions are passed as ``iteration_update``; everything
else (handlers, metrics, checkpoints, TensorBoard) stays MONAI's. Each iteration's ``engine.state.output`` holds
``image`` (= ``label``, the ground truth I_gt), ``valid_mask``, ``pred`` (the composite I_comp, what π returns) and,
when training, ``loss``; as in MONAI's own iterations, ``IterationEvents.MODEL_COMPLETED`` is fired at the end so that
decollation and postprocessing run.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from cfattr_monai.networks.inpainter import composite

__all__ = ["inpainting_eval_iteration", "inpainting_train_iteration"]


def _batch(engine, batchdata: Mapping, mask_key: str = "valid_mask") -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batchdata, Mapping) or Keys.IMAGE not in batchdata or mask_key not in batchdata:
        keys = list(batchdata) if isinstance(batchdata, Mapping) else type(batchdata).__name__
        raise ValueError(
            f"inpainting iteration: expected a batch dict with '{Keys.IMAGE}' and '{mask_key}', got {keys}; add "
            "cfattr_monai.transforms.masks.RandIrregularHoleMaskd to the preprocessing."
        )
    device = engine.state.device  # the image keeps its MetaTensor metadata, so the composite can be saved by name
    return batchdata[Keys.IMAGE].to(device), batchdata[mask_key].to(device)


def inpainting_train_iteration(engine, batchdata: Mapping) -> dict:
    """``L_PCI(network(I, M), I, M)``, backward, optimizer step; ``engine.loss_function(prediction, image, valid_mask)``."""
    image, valid = _batch(engine, batchdata)
    engine.network.train()
    engine.optimizer.zero_grad(set_to_none=True)  # frozen parameters keep grad None, so Adam leaves them alone
    prediction = engine.network(image, valid)
    loss = engine.loss_function(prediction, image, valid)
    loss.backward()
    engine.optimizer.step()
    engine.state.output = {
        Keys.IMAGE: image,
        Keys.LABEL: image,
        "valid_mask": valid,
        Keys.PRED: composite(image, valid, prediction.detach()).clamp(0.0, 1.0),
        Keys.LOSS: loss.detach(),
    }
    engine.fire_event(IterationEvents.MODEL_COMPLETED)  # MONAI's decollate / postprocessing hooks
    return engine.state.output


def inpainting_eval_iteration(engine, batchdata: Mapping) -> dict:
    """The composite ``M ⊙ I + (1 − M) ⊙ Î`` clipped to [0, 1], without gradient."""
    image, valid = _batch(engine, batchdata)
    engine.network.eval()
    with torch.no_grad():
        prediction = engine.network(image, valid)
    engine.state.output = {
        Keys.IMAGE: image,
        Keys.LABEL: image,
        "valid_mask": valid,
        Keys.PRED: composite(image, valid, prediction).clamp(0.0, 1.0),
    }
    engine.fire_event(IterationEvents.MODEL_COMPLETED)  # MONAI's decollate / postprocessing hooks
    return engine.state.output
