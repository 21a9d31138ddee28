"""The partial-convolution inpainting loss L_PCI (Lenis et al., MICCAI 2020, §2.2; Liu et al., ECCV 2018, §3.4).

With I_out the raw prediction, I_gt the original image, M the valid mask (1 = valid, 0 = hole), N_I = C·H·W,
I_comp = M ⊙ I_gt + (1 − M) ⊙ I_out, and Ψ_p the p-th feature map (C_p × H_p × W_p) of a frozen extractor::

    L_PCI = L_valid + 6·L_hole + 0.05·L_perc + 120·L_style + 0.1·L_tv

Liu et al. take Ψ from an ImageNet VGG-16; nothing can be downloaded here and grey medical images are far from
ImageNet, so the default extractor is the frozen trained classifier's :class:`ClassifierEncoder` — the very features
whose response to the inpainting matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PCILoss",
    "classifier_feature_extractor",
    "frozen_feature_extractor",
    "hole_loss",
    "perceptual_loss",
    "style_loss",
    "total_variation_loss",
    "valid_loss",
]


def valid_loss(output: torch.Tensor, target: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
    """``L_valid = (1 / N_I) ‖M ⊙ (I_out − I_gt)‖_1`` (Liu et al. Eq. 3)."""
    return (valid_mask * (output - target)).abs().mean()


def hole_loss(output: torch.Tensor, target: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
    """``L_hole = (1 / N_I) ‖(1 − M) ⊙ (I_out − I_gt)‖_1`` (Liu et al. Eq. 3)."""
    return ((1 - valid_mask) * (output - target)).abs().mean()


def perceptual_loss(
    features_out: Sequence[torch.Tensor], features_comp: Sequence[torch.Tensor], features_gt: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``L_perc = Σ_p ‖Ψ_p(I_out) − Ψ_p(I_gt)‖_1 / N_Ψp + Σ_p ‖Ψ_p(I_comp) − Ψ_p(I_gt)‖_1 / N_Ψp`` (Liu et al. Eq. 4)."""
    return sum(
        F.l1_loss(f_out, f_gt) + F.l1_loss(f_comp, f_gt)
        for f_out, f_comp, f_gt in zip(features_out, features_comp, features_gt)
    )


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """``K_p Ψ_p^T Ψ_p`` with ``K_p = 1 / (C_p H_p W_p)``: the (B, C_p, C_p) normalized Gram matrix."""
    b, c = features.shape[:2]
    flat = features.reshape(b, c, -1)
    return flat @ flat.transpose(1, 2) / flat[0].numel()


def style_loss(
    features_out: Sequence[torch.Tensor], features_comp: Sequence[torch.Tensor], features_gt: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``L_style = Σ_p (1 / C_p²) ‖K_p ((Ψ_p^out)^T Ψ_p^out − (Ψ_p^gt)^T Ψ_p^gt)‖_1`` for out and comp (Eq. 5-6)."""
    total = torch.zeros((), device=features_gt[0].device)
    for f_out, f_comp, f_gt in zip(features_out, features_comp, features_gt):
        gram_gt = gram_matrix(f_gt)
        total = total + F.l1_loss(gram_matrix(f_out), gram_gt) + F.l1_loss(gram_matrix(f_comp), gram_gt)
    return total


def total_variation_loss(comp: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
    """``L_tv = Σ_{(i,j)∈P,(i,j+1)∈P} ‖I_comp^{i,j+1} − I_comp^{i,j}‖_1 / N_I + (same vertically)`` (Liu et al. Eq. 7).

    P is the region of 1-pixel dilation of the hole (``1 − M``).
    """
    region = F.max_pool2d(1 - valid_mask, kernel_size=3, stride=1, padding=1)
    pair_x = region[..., :, 1:] * region[..., :, :-1]
    pair_y = region[..., 1:, :] * region[..., :-1, :]
    tv_x = (pair_x * (comp[..., :, 1:] - comp[..., :, :-1]).abs()).sum()
    tv_y = (pair_y * (comp[..., 1:, :] - comp[..., :-1, :]).abs()).sum()
    return (tv_x + tv_y) / comp.numel()


def frozen_feature_extractor(network: nn.Module, weights_path: str | Path | None = None) -> nn.Module:
    """Freeze ``network`` (eval mode, ``requires_grad=False``), after loading local weights if given.

    ``network(x)`` must return a feature map or a sequence of feature maps.

    Raises:
        FileNotFoundError: ``weights_path`` does not exist (nothing is ever downloaded).
    """
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"frozen_feature_extractor: weights file {path} not found; give a local state dict (.pt) — "
                "pretrained weights are never downloaded."
            )
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return network.eval().requires_grad_(False)


def classifier_feature_extractor(
    classifier_bundle: str | Path,
    overlays: Sequence[str] = (),
    checkpoint: str | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """The frozen trained classifier's :class:`ClassifierEncoder` (four scales), the default Ψ of :class:`PCILoss`.

    Raises:
        FileNotFoundError: the classifier bundle has no trained checkpoint yet.
    """
    from cfattr_monai.bundle import bundle_checkpoint, load_network
    from cfattr_monai.networks.encoders import ClassifierEncoder

    checkpoint_path = bundle_checkpoint(classifier_bundle, overlays, checkpoint)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(
            f"PCILoss: the perceptual/style loss needs the trained classifier, but {checkpoint_path} does not exist; "
            f"train it first (cd {classifier_bundle} && python -m monai.bundle run --config_file configs/train.json)."
        )
    classifier = load_network(classifier_bundle, overlays, checkpoint_path.resolve(), device=device)
    return frozen_feature_extractor(ClassifierEncoder(classifier))


class PCILoss(nn.Module):
    """``L_PCI = λ_valid·L_valid + λ_hole·L_hole + λ_perc·L_perc + λ_style·L_style + λ_tv·L_tv``, default λ 1, 6, 0.05, 120, 0.1.

    ``forward(prediction, target, valid_mask)`` with the raw prediction I_out, the image I_gt and the valid mask M.

    Args:
        feature_extractor: frozen network Ψ returning a feature map or a list of them (e.g. from
            :func:`classifier_feature_extractor`); None drops L_perc and L_style (e.g. for a quick test).
        lambda_valid, lambda_hole, lambda_perc, lambda_style, lambda_tv: term weights (Liu et al. §3.4).

    Example:
        >>> loss = PCILoss(feature_extractor=nn.Conv2d(1, 2, 3))
        >>> image, valid = torch.rand(2, 1, 16, 16), torch.ones(2, 1, 16, 16)
        >>> valid[..., 4:9, 4:9] = 0
        >>> terms = loss.terms(image, image, valid)  # a perfect prediction: only L_tv (texture in the hole) remains
        >>> [float(terms[name]) for name in ("valid", "hole", "perc", "style")]
        [0.0, 0.0, 0.0, 0.0]
    """

    def __init__(
        self,
        feature_extractor: nn.Module | None,
        lambda_valid: float = 1.0,
        lambda_hole: float = 6.0,
        lambda_perc: float = 0.05,
        lambda_style: float = 120.0,
        lambda_tv: float = 0.1,
    ) -> None:
        super().__init__()
        self.feature_extractor = None if feature_extractor is None else frozen_feature_extractor(feature_extractor)
        self.lambdas = {"valid": lambda_valid, "hole": lambda_hole, "perc": lambda_perc, "style": lambda_style, "tv": lambda_tv}

    def train(self, mode: bool = True) -> PCILoss:
        """Keep the feature extractor in eval mode (frozen BN statistics) whatever mode the loss is set to."""
        super().train(mode)
        if self.feature_extractor is not None:
            self.feature_extractor.eval()
        return self

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.feature_extractor(x)
        return [features] if isinstance(features, torch.Tensor) else list(features)

    def terms(self, prediction: torch.Tensor, target: torch.Tensor, valid_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms ``{"valid", "hole", "perc", "style", "tv"}``."""
        if prediction.shape != target.shape or valid_mask.shape[2:] != target.shape[2:]:
            raise ValueError(
                f"PCILoss: prediction {list(prediction.shape)}, target {list(target.shape)} and valid_mask "
                f"{list(valid_mask.shape)} must share batch and spatial size; pass the inpainter's raw prediction."
            )
        comp = valid_mask * target + (1 - valid_mask) * prediction
        terms = {
            "valid": valid_loss(prediction, target, valid_mask),
            "hole": hole_loss(prediction, target, valid_mask),
            "tv": total_variation_loss(comp, valid_mask),
        }
        if self.feature_extractor is not None:
            with torch.no_grad():
                features_gt = self._features(target)
            batch = prediction.shape[0]  # one pass for I_out and I_comp
            features = self._features(torch.cat([prediction, comp]))
            features_out, features_comp = [f[:batch] for f in features], [f[batch:] for f in features]
            terms["perc"] = perceptual_loss(features_out, features_comp, features_gt)
            terms["style"] = style_loss(features_out, features_comp, features_gt)
        return terms

    def forward(self, prediction: torch.Tensor, target: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
        return sum(self.lambdas[name] * value for name, value in self.terms(prediction, target, valid_mask).items())
