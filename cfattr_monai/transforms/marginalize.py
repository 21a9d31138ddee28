"""Marginalizers π: replace the region attributed by a map M by a fill F (Lenis et al., MICCAI 2020, §2 and §2.2).

Every marginalizer is a callable ``pi(image, mask) -> image`` on tensors (B, C, H, W) with the attribution map
``mask`` (B, 1, H, W) in [0, 1] (1 = replace; soft maps allowed)::

    π(M) = (1 − M) ⊙ I + M ⊙ F

The fill F is computed without gradient from the hard hole ``M > threshold`` (0.55, the paper's map threshold);
gradients with respect to M flow through the blend. Fills:

* ``inpaint``: the paper's domain-aware π, the composite of a partial-convolution U-Net trained on healthy tissue;
* ``blur``: Gaussian blur of the image (Fong et al., ICCV 2019), or with ``context_only`` of the pixels around the
  hole only (normalized convolution);
* ``noise``: the image plus Gaussian noise (Fong et al.; Zintgraf et al.);
* ``mean``: a constant, the mean of the valid pixels of the image or of the organ (Zeiler & Fergus, ECCV 2014).
"""

from __future__ import annotations

import torch
from monai.networks.layers import GaussianFilter
from torch import nn

from cfattr_monai.networks.inpainter import composite

__all__ = ["BlurMarginalizer", "InpaintMarginalizer", "Marginalizer", "MeanMarginalizer", "NoiseMarginalizer", "get_marginalizer"]


def _weighted_mean(image: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-image mean of ``image`` over the pixels where ``weight`` is 1, shape ``(B, 1, 1, 1)`` (0 when none)."""
    dims = tuple(range(1, image.ndim))
    return (weight * image).sum(dims, keepdim=True) / weight.sum(dims, keepdim=True).clamp(min=1.0)


class Marginalizer:
    """Base class: ``π(M) = (1 − M) ⊙ I + M ⊙ F(I, M > threshold)``; subclasses implement :meth:`fill`.

    Args:
        threshold: a pixel belongs to the hard hole used for the fill where ``M > threshold``.
    """

    def __init__(self, threshold: float = 0.55) -> None:
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"{type(self).__name__}: threshold must be in [0, 1), got {threshold}.")
        self.threshold = threshold

    def fill(self, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """The fill F for ``image`` and the binary ``hole`` (1 = replace), same shape as ``image``."""
        raise NotImplementedError

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != image.shape[0] or mask.shape[2:] != image.shape[2:]:
            raise ValueError(
                f"{type(self).__name__}: expected image (B, C, H, W) and mask (B, 1, H, W) of the same batch and "
                f"spatial size, got image {list(image.shape)} and mask {list(mask.shape)}; resize the map to the image."
            )
        with torch.no_grad():
            fill = self.fill(image, (mask > self.threshold).to(image.dtype))
        return (1 - mask) * image + mask * fill


class InpaintMarginalizer(Marginalizer):
    """π by the trained partial-convolution inpainter: ``F = M_v ⊙ I + (1 − M_v) ⊙ Î``, ``M_v = 1 − hole``, clipped to [0, 1].

    An image whose hole covers all of it leaves the inpainter no context: its fill is the image itself, so π changes
    nothing there and such a map never counts as flipping the classifier (its area d = 1 fails any δ < 1 anyway).
    A random start of the attributor can draw such a map; it must not stop training.

    Args:
        inpainter: a :class:`~cfattr_monai.networks.inpainter.PartialConvUNet` (e.g. from
            ``cfattr_monai.bundle.load_network("bundles/inpainter")``), used in eval mode.
        threshold: hard-hole threshold on M.

    Example:
        >>> from cfattr_monai.networks.inpainter import PartialConvUNet
        >>> pi = InpaintMarginalizer(PartialConvUNet(channels=(4, 8), kernel_sizes=(3, 3), num_levels=2).eval())
        >>> image, attribution = torch.rand(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)
        >>> attribution[..., 4:8, 4:8] = 1.0
        >>> bool((pi(image, attribution) == image)[..., :4, :].all())
        True
    """

    def __init__(self, inpainter: nn.Module, threshold: float = 0.55) -> None:
        super().__init__(threshold)
        self.inpainter = inpainter

    def fill(self, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        valid = 1 - hole
        context = valid.flatten(1).amax(dim=1) > 0
        fill = image.clone()  # a hole over the whole image has no context to inpaint from: F = I there
        if context.any():
            image, valid = image[context], valid[context]
            fill[context] = composite(image, valid, self.inpainter(image, valid)).clamp(0.0, 1.0)
        return fill


class BlurMarginalizer(Marginalizer):
    """π by Gaussian blur: F = G_σ * I, σ = ``sigma`` × the longer image side (Fong et al. use σ = 10 px at 224²).

    Fong et al.'s blur keeps the low frequencies of the pixels it replaces (a blurred lesion stays a faint lesion).
    With ``context_only`` the fill is computed from the pixels outside the hole alone, by normalized convolution
    ``F = G_σ * (I ⊙ V) / G_σ * V`` (``V = 1 − hole``; the mean of ``V``'s pixels where the kernel sees none), so,
    like inpainting and the mean fill, it never sees what it replaces.

    Args:
        sigma: σ as a fraction of the longer image side.
        context_only: fill from the valid pixels only (normalized convolution) instead of blurring the image.
        threshold: hard-hole threshold on M.

    Example:
        >>> pi = BlurMarginalizer(sigma=0.05)
        >>> pi(torch.rand(2, 1, 32, 32), torch.ones(2, 1, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
        >>> image, hole = torch.rand(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)
        >>> hole[..., 8:16, 8:16] = 1
        >>> other = image + hole  # different pixels inside the hole only
        >>> pi = BlurMarginalizer(sigma=0.05, context_only=True)
        >>> torch.allclose(pi(image, hole), pi(other, hole))
        True
    """

    def __init__(self, sigma: float = 0.045, context_only: bool = False, threshold: float = 0.55) -> None:
        super().__init__(threshold)
        if sigma <= 0:
            raise ValueError(f"BlurMarginalizer: sigma must be > 0 (a fraction of the image side), got {sigma}.")
        self.sigma, self.context_only = sigma, context_only

    def fill(self, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        blur = GaussianFilter(spatial_dims=2, sigma=self.sigma * max(image.shape[2:])).to(image.device)
        if not self.context_only:
            return blur(image)
        valid = (1 - hole).expand_as(image)
        weight = blur(valid)
        seen = weight > 1e-6
        return torch.where(seen, blur(valid * image) / torch.where(seen, weight, 1.0), _weighted_mean(image, valid))


class NoiseMarginalizer(Marginalizer):
    """π by additive Gaussian noise: F = clip(I + σ·ε, 0, 1), ε ~ N(0, 1) (torch's global RNG; seed it to repeat).

    Example:
        >>> pi = NoiseMarginalizer(std=0.2)
        >>> out = pi(torch.full((1, 1, 8, 8), 0.5), torch.ones(1, 1, 8, 8))
        >>> bool(out.std() > 0.1)
        True
    """

    def __init__(self, std: float = 0.2, threshold: float = 0.55) -> None:
        super().__init__(threshold)
        if std <= 0:
            raise ValueError(f"NoiseMarginalizer: std must be > 0, got {std}.")
        self.std = std

    def fill(self, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        return (image + self.std * torch.randn_like(image)).clamp(0.0, 1.0)


class MeanMarginalizer(Marginalizer):
    """π by a constant: the mean of the valid (non-hole) pixels of the image (``region="image"``) or of the organ
    (``region="organ"``: valid pixels brighter than ``background``, the black surround of a mammogram or X-ray).

    Example:
        >>> image = torch.tensor([[[[0.0, 0.4], [0.6, 0.9]]]])
        >>> hole = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]])
        >>> MeanMarginalizer(region="organ")(image, hole)[0, 0, 1, 1].item()
        0.5
    """

    def __init__(self, region: str = "organ", background: float = 0.02, threshold: float = 0.55) -> None:
        super().__init__(threshold)
        if region not in ("image", "organ"):
            raise ValueError(f"MeanMarginalizer: region must be 'image' or 'organ', got {region!r}.")
        self.region, self.background = region, background

    def fill(self, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        weight = (1 - hole).expand_as(image)
        if self.region == "organ":
            weight = weight * (image > self.background).to(image.dtype)
        return _weighted_mean(image, weight).expand_as(image)


_MARGINALIZERS = {"inpaint": InpaintMarginalizer, "blur": BlurMarginalizer, "noise": NoiseMarginalizer, "mean": MeanMarginalizer}


def get_marginalizer(name: str, **kwargs) -> Marginalizer:
    """Marginalizer by name: ``inpaint`` (needs ``inpainter=``), ``blur``, ``noise`` or ``mean``; kwargs go to its class.

    Example:
        >>> type(get_marginalizer("blur", sigma=0.03)).__name__
        'BlurMarginalizer'
    """
    if name not in _MARGINALIZERS:
        raise ValueError(f"get_marginalizer: unknown marginalizer {name!r}; choose one of {sorted(_MARGINALIZERS)}.")
    return _MARGINALIZERS[name](**kwargs)
