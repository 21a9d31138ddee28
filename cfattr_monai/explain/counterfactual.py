"""One-forward-pass counterfactual explanations: map M̂, counterfactual π(M̂) and the score drop p(c|I) → p(c|π(M̂)).

:class:`CounterfactualExplainer` bundles the trained attribution network, the frozen classifier and the marginalizer
π; :func:`load_explainer` builds it from a trained attributor bundle (which names the classifier and inpainter
bundles it was trained with). This is the interface of the ``cfattr explain`` CLI, the benchmark and the evaluation.

The attributor is only valid for the classifier it was trained on: training records a fingerprint of the
classifier's weights in ``models/classifier_fingerprint.json`` and loading checks it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from cfattr_monai.bundle import fingerprint, load_weights
from cfattr_monai.networks.classifier_output import pathology_probability

__all__ = [
    "CounterfactualExplainer",
    "write_classifier_fingerprint",
    "read_recorded",
    "check_classifier_fingerprint",
    "load_attributor_weights",
    "load_explainer",
    "flagged_items",
    "FINGERPRINT_FILE",
]

FINGERPRINT_FILE = "classifier_fingerprint.json"


class CounterfactualExplainer(nn.Module):
    """Attribution map, counterfactual image and scores for a batch, with one forward pass of the attributor.

    Args:
        attributor: network mapping images ``(B, 1, H, W)`` to soft maps ``(B, 1, H, W)`` in [0, 1] (e.g.
            :class:`~cfattr_monai.networks.attribution.AttentionGatedUNet` ending in the mapping into S).
        classifier: the frozen classifier the attributor explains.
        marginalizer: π, ``marginalizer(image, mask) -> image``.
        threshold: the map threshold giving the binary map M̂ (paper: 0.55).

    Example:
        >>> from cfattr_monai.networks.mobilenet import MobileNetV1
        >>> from cfattr_monai.networks.attribution import AttentionGatedUNet
        >>> from cfattr_monai.transforms.marginalize import get_marginalizer
        >>> clf = MobileNetV1(width_mult=0.25).eval()
        >>> explainer = CounterfactualExplainer(AttentionGatedUNet(clf), clf, get_marginalizer("mean"))
        >>> out = explainer(torch.rand(2, 1, 64, 64))
        >>> sorted(out), out["p"].shape
        (['counterfactual', 'map', 'mask', 'p', 'p_counterfactual'], torch.Size([2]))
    """

    def __init__(
        self,
        attributor: nn.Module,
        classifier: nn.Module,
        marginalizer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        threshold: float = 0.55,
    ) -> None:
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"CounterfactualExplainer: threshold must be in (0, 1), got {threshold}.")
        self.attributor, self.classifier, self.marginalizer = attributor, classifier, marginalizer
        self.threshold = threshold

    def attribute(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(soft_map, binary_map)`` of ``images``, both ``(B, 1, H, W)``, from one attributor forward pass."""
        soft_map = self.attributor(images)
        return soft_map, self.binary_map(soft_map)

    def binary_map(self, soft_map: torch.Tensor) -> torch.Tensor:
        """M̂: the soft map thresholded at ``threshold``, in its dtype."""
        return (soft_map > self.threshold).to(soft_map.dtype)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``map`` (soft), ``mask`` (binary M̂), ``counterfactual`` π(M̂), ``p`` = p(c|I), ``p_counterfactual``.

        An attributor built on this explainer's classifier with a ``map_and_logits`` method (``AttentionGatedUNet``)
        gives p(c|I) from its own encoder pass; any other attributor costs one more classifier pass for it.
        """
        shares_encoder = getattr(self.attributor, "classifier", None) is self.classifier
        if shares_encoder and hasattr(self.attributor, "map_and_logits"):
            soft_map, logits = self.attributor.map_and_logits(images)
        else:
            soft_map, logits = self.attributor(images), None
        mask = self.binary_map(soft_map)
        counterfactual = self.marginalizer(images, mask)
        return {
            "map": soft_map,
            "mask": mask,
            "counterfactual": counterfactual,
            "p": pathology_probability(self.classifier(images) if logits is None else logits),
            "p_counterfactual": pathology_probability(self.classifier(counterfactual)),
        }


def write_classifier_fingerprint(
    classifier: nn.Module,
    ckpt_dir: str | Path,
    classification_threshold: float | None = None,
    delta: float | None = None,
) -> Path:
    """Write ``ckpt_dir/classifier_fingerprint.json`` (through a temporary file) and return its path.

    The file also records the classification threshold θ the attributor is trained for (the classifier's operating
    point), so that evaluation and inference count "flagged" and "flipped" at the same θ, and the area limit δ it was
    trained with, so that its acceptance figures report d(M̂) against that δ (:func:`read_recorded`).
    """
    path = Path(ckpt_dir) / FINGERPRINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    record = {
        "sha256": fingerprint(classifier),
        "classification_threshold": classification_threshold,
        "delta": None if delta is None else float(delta),
    }
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _read_fingerprint_file(path: Path) -> dict:
    """The record :func:`write_classifier_fingerprint` wrote, or a ValueError naming the file and the fix."""
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            raise ValueError("no 'sha256' string")
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(
            f"{path} is not the JSON {{\"sha256\": …, \"classification_threshold\": …, \"delta\": …}} that attributor "
            f"training writes ({err}); retrain the attributor, or copy the file from the bundle that trained models/model.pt."
        ) from None
    return record


def read_recorded(ckpt_dir: str | Path, key: str, default: float | None = None) -> float | None:
    """The value of ``key`` (``"classification_threshold"`` θ, ``"delta"`` δ) that
    :func:`write_classifier_fingerprint` recorded in ``ckpt_dir``, or ``default`` when none was recorded."""
    path = Path(ckpt_dir) / FINGERPRINT_FILE
    value = _read_fingerprint_file(path).get(key) if path.is_file() else None
    return default if value is None else float(value)


def read_classification_threshold(ckpt_dir: str | Path, default: float | None = 0.5) -> float | None:
    """θ recorded by :func:`write_classifier_fingerprint` in ``ckpt_dir``, or ``default`` when none was recorded.

    A default θ is not the operating point the attributor was trained for, so using one warns, naming the file and
    the fix (flagged and flipped counted at it differ from training's)."""
    theta = read_recorded(ckpt_dir, "classification_threshold")
    if theta is None and default is not None:
        warnings.warn(
            f"{Path(ckpt_dir) / FINGERPRINT_FILE} records no classification_threshold (θ), so flagged and flipped "
            f"are counted at {default}, not at the operating point the attributor was trained for; retrain the "
            "attributor with this bundle (its training records θ) or add \"classification_threshold\": θ to that "
            "file.",
            stacklevel=2,
        )
        return default
    return theta


def check_classifier_fingerprint(
    classifier: nn.Module, ckpt_dir: str | Path, stored_in: str | Path | None = None
) -> None:
    """Raise ValueError when ``classifier`` is not the one the attributor in ``ckpt_dir`` was trained with.

    Args:
        classifier: the classifier to check.
        ckpt_dir: folder of the attributor's ``model.pt`` and ``classifier_fingerprint.json``.
        stored_in: the attributor checkpoint ``classifier``'s weights were just loaded from (changes the message:
            the checkpoint and the fingerprint then come from different trainings); None: the ``classifier_bundle``'s.

    Raises:
        FileNotFoundError: no fingerprint file (the attributor was not trained by this bundle).
        ValueError: the fingerprints differ.
    """
    path = Path(ckpt_dir) / FINGERPRINT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: cannot check that the classifier matches the trained attributor; train the "
            "attributor bundle (it writes this file) or copy the file next to models/model.pt."
        )
    expected = _read_fingerprint_file(path)["sha256"]
    found = fingerprint(classifier)
    if found == expected:
        return
    if stored_in is not None:
        raise ValueError(
            f"the classifier weights stored in {stored_in} (sha256 {found[:12]}…) differ from those recorded in "
            f"{path} ({expected[:12]}…): the checkpoint and the fingerprint come from different trainings; copy both "
            "files from the same training run, or retrain the attributor."
        )
    raise ValueError(
        f"the classifier's weights (sha256 {found[:12]}…) differ from those the attributor was trained with "
        f"({expected[:12]}…, {path}); retrain the attributor for this classifier or point `classifier_bundle` "
        "at the classifier it was trained with."
    )


def load_attributor_weights(
    attributor: nn.Module, checkpoint: str | Path, config_files: Sequence[str | Path] = ()
) -> nn.Module:
    """Load a trained attributor's ``model.pt`` into ``attributor``, checking its classifier before and after.

    ``model.pt`` holds the whole network, the frozen classifier included, so loading it replaces the classifier the
    network was built on. Both must be the classifier the attributor was trained with: before loading, the one built
    from ``classifier_bundle`` (:func:`check_classifier_fingerprint`); after it, the one stored in the checkpoint, so
    that a ``model.pt`` copied from another training than the ``classifier_fingerprint.json`` beside it cannot
    silently swap the classifier.

    Args:
        attributor: an :class:`~cfattr_monai.networks.attribution.AttentionGatedUNet` on the bundle's classifier.
        checkpoint: its ``model.pt``; ``classifier_fingerprint.json`` is read from the same folder.
        config_files: the configs that defined ``attributor`` (named in a wrong-network error).

    Raises:
        FileNotFoundError: no checkpoint or no fingerprint file.
        ValueError: either classifier differs from the recorded one, or the checkpoint does not fit the network.
    """
    folder = Path(checkpoint).parent
    check_classifier_fingerprint(attributor.classifier, folder)
    load_weights(attributor, checkpoint, config_files)
    check_classifier_fingerprint(attributor.classifier, folder, stored_in=checkpoint)
    return attributor


def load_explainer(
    attributor_bundle_dir: str | Path,
    overlays: Sequence[str] = (),
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> CounterfactualExplainer:
    """Build the explainer of a trained attributor bundle.

    Reads the bundle's ``configs/inference.json`` plus ``overlays`` (paths relative to the bundle), loads the
    classifier and inpainter bundles it names (``classifier_bundle``/``classifier_overlays``,
    ``inpainter_bundle``/``inpainter_overlays``) through :func:`cfattr_monai.bundle.load_network`, then loads
    the attributor weights from ``checkpoint`` (relative to the bundle; None: ``model.pt`` in the ``ckpt_dir`` of
    that merged config, as :func:`cfattr_monai.bundle.bundle_checkpoint` finds it) with
    :func:`load_attributor_weights` (classifier fingerprint checks).

    Raises:
        FileNotFoundError: a bundle, config or checkpoint is missing.
        ValueError: the classifier is not the one the attributor was trained with.
    """
    from cfattr_monai.bundle import bundle_checkpoint, bundle_config_files, load_network, read_bundle_config

    bundle = Path(attributor_bundle_dir).resolve()
    parser = read_bundle_config(bundle, overlays, caller="load_explainer")
    config_files = bundle_config_files(bundle, overlays)

    def bundle_path(key: str) -> Path:
        path = Path(parser.get_parsed_content(key))
        return path if path.is_absolute() else (bundle / path).resolve()

    classifier = load_network(
        bundle_path("classifier_bundle"), parser.get_parsed_content("classifier_overlays"), device=device
    )
    inpainter = load_network(
        bundle_path("inpainter_bundle"), parser.get_parsed_content("inpainter_overlays"), device=device
    )
    parser["classifier"] = classifier
    parser["inpainter"] = inpainter
    attributor = parser.get_parsed_content("network_def").to(device)
    load_attributor_weights(attributor, bundle_checkpoint(bundle, overlays, checkpoint), config_files)
    attributor.eval().requires_grad_(False)
    marginalizer = parser.get_parsed_content("marginalizer")
    return CounterfactualExplainer(attributor, classifier, marginalizer, parser.get_parsed_content("threshold"))


def flagged_items(classifier: nn.Module, dataset, threshold: float, device="cpu", batch_size: int = 16) -> list:
    """The data items of ``dataset`` (a MONAI ``Dataset``) whose image the classifier flags, p(c|I) ≥ θ.

    The attributor's objective (M̂ flips the decision) is defined for these images only; training on them alone
    keeps the batches informative (measured on the demo phantoms: with all images in training, the maps collapsed
    to nothing before they found the lesions).

    Raises:
        ValueError: the classifier flags none of the images.
    """
    from cfattr_monai.metrics.roc import classifier_scores

    scores = classifier_scores(classifier, dataset, device, batch_size)
    items = [item for item, score in zip(dataset.data, scores.tolist()) if score >= threshold]
    if not items:
        raise ValueError(
            f"flagged_items: the classifier flags none of the {len(dataset)} images at θ = {threshold:.4g} "
            f"(max p(c|I) = {float(scores.max()) if len(scores) else float('nan'):.4g}); check the classifier "
            "bundle and the classification threshold."
        )
    return items
