"""Ignite handler that writes an evaluator's ROC curve and ROC-AUC (DeLong CI) as JSON and PNG."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine

from cfattr_monai.io.outputs import atomic_path, save_figure
from cfattr_monai.metrics.roc import delong_auc, roc_curve

__all__ = ["ROCSaver"]


class ROCSaver:
    """Collect (score, label) pairs over one evaluator run and write ``<name>.json`` and ``<name>.png``.

    The JSON holds ``auc``, ``auc_ci`` (DeLong, 95 %), ``n_pathological``, ``n_healthy`` and the curve
    (``fpr``, ``tpr``, ``thresholds``; the first threshold, +inf, is written as null). The AUC is also logged.
    Files appear complete or not at all (written under a temporary name, then renamed). Single-process only.

    Args:
        output_dir: folder for the two files (created when missing).
        name: file stem, e.g. ``"roc"`` → ``roc.json``, ``roc.png``.
        output_transform: maps ``engine.state.output`` to ``(scores, labels)``, each a list with one item per image.
        title: title of the plot.

    Example:
        >>> import tempfile
        >>> saver = ROCSaver(tempfile.mkdtemp())
        >>> engine = Engine(lambda e, b: [{"pred": torch.tensor([p]), "label": torch.tensor([l])} for p, l in b])
        >>> saver.attach(engine)
        >>> _ = engine.run([[(0.9, 1), (0.2, 0)], [(0.6, 1), (0.7, 0)]])
        >>> json.loads((saver.output_dir / "roc.json").read_text())["auc"]
        0.75
    """

    def __init__(
        self,
        output_dir: str | Path,
        name: str = "roc",
        output_transform: Callable = from_engine(["pred", "label"]),
        title: str = "Test ROC",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.name = name
        self.output_transform = output_transform
        self.title = title
        self.logger = logging.getLogger(__name__)
        self._scores: list[float] = []
        self._labels: list[int] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._scores.clear()
        self._labels.clear()

    def _collect(self, engine: Engine) -> None:
        scores, labels = self.output_transform(engine.state.output)
        self._scores += [float(torch.as_tensor(s).reshape(-1)[0]) for s in scores]
        self._labels += [int(torch.as_tensor(y).reshape(-1)[0]) for y in labels]

    def _write(self, engine: Engine) -> None:
        auc, low, high = delong_auc(self._scores, self._labels)
        fpr, tpr, thresholds = roc_curve(self._scores, self._labels)
        labels = np.asarray(self._labels)
        record = {
            "auc": auc,
            "auc_ci": [low, high],
            "auc_ci_method": "DeLong 1988, 95 %",
            "n_pathological": int(labels.sum()),
            "n_healthy": int((1 - labels).sum()),
            "fpr": fpr.tolist(),
            "tpr": tpr.tolist(),
            "thresholds": [None, *thresholds[1:].tolist()],
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.output_dir / f"{self.name}.json") as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
        self._plot(fpr, tpr, auc, low, high)
        self.logger.info(
            f"ROC-AUC {auc:.3f} (95 % CI {low:.3f}–{high:.3f}, DeLong; {record['n_pathological']} pathological, "
            f"{record['n_healthy']} healthy) → {self.output_dir / self.name}.json/.png"
        )

    def _plot(self, fpr: np.ndarray, tpr: np.ndarray, auc: float, low: float, high: float) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
        ax.plot(fpr, tpr, color="tab:green", label=f"AUC {auc:.3f} [{low:.3f}, {high:.3f}]")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1), title=self.title)
        ax.legend(loc="lower right")
        fig.tight_layout()
        save_figure(fig, self.output_dir / f"{self.name}.png")
