"""TensorBoard previews of counterfactual explanations: image | map | counterfactual, side by side."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from torch.utils.tensorboard import SummaryWriter

__all__ = ["CounterfactualPreviewHandler"]


class CounterfactualPreviewHandler:
    """After each evaluation, log the last batch's first ``count`` images as rows of image | map | π(M̂).

    The evaluator's network must be a :class:`~cfattr_monai.explain.counterfactual.CounterfactualExplainer` (its
    ``pred`` is the explainer's output dict) and ``decollate=False``. The global step counts the evaluations
    (1, 2, …: with one validation per training epoch, the epoch).

    Args:
        log_dir: TensorBoard log folder.
        count: images per preview.
        tag: TensorBoard image tag.

    Example:
        >>> import tempfile
        >>> from ignite.engine import Engine
        >>> output = {"image": torch.rand(2, 1, 8, 8),
        ...           "pred": {"map": torch.rand(2, 1, 8, 8), "counterfactual": torch.rand(2, 1, 8, 8)}}
        >>> evaluator = Engine(lambda engine, batch: output)
        >>> CounterfactualPreviewHandler(tempfile.mkdtemp(), count=2).attach(evaluator)
        >>> evaluator.run([0]).epoch
        1
    """

    def __init__(self, log_dir: str, count: int = 4, tag: str = "counterfactual") -> None:
        if count < 1:
            raise ValueError(f"CounterfactualPreviewHandler: count must be >= 1, got {count}.")
        self.log_dir, self.count, self.tag = log_dir, count, tag
        self._writer: SummaryWriter | None = None
        self._step = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        images = engine.state.output["image"][: self.count, :1].detach().float().cpu()
        pred = engine.state.output["pred"]
        maps = pred["map"][: self.count].detach().float().cpu()
        counterfactuals = pred["counterfactual"][: self.count, :1].detach().float().cpu()
        # MONAI image loaders keep the file's (x, y) axis order: transpose to display each as the file does
        rows = torch.cat([t.transpose(-1, -2) for t in (images, maps, counterfactuals)], dim=-1)  # (N, 1, H, 3W)
        self._step += 1
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=self.log_dir)
        self._writer.add_images(self.tag, rows.clamp(0, 1), global_step=self._step)
        self._writer.flush()
