"""Counterfactual attribution loss of Lenis et al., MICCAI 2020, §2.1.

    L(M) = g_φ(φ(M)) + g_ψ(ψ(M)) + λ · g_R(R(M)),   subject to d(M) ≤ δ,

with the marginalized image π(M) (healthy tissue inpainted under M) and the frozen classifier's p(c|·):

* φ(M) = −log(1 − p(c|π(M))): −log of the *healthy* class probability of π(M). The paper writes −log p(c|π(M))
  with c = pathology, which minimized would *raise* p(c|π(M)); its stated intent is p(c|π(M)) ≤ θ, implemented here.
* ψ(M) = log odds(π(M)) − log odds(I): the change in the pathology's log-odds, signed so that minimizing it lowers
  p(c|π(M)) (the paper's ψ with the sign of the intent).
* R(M): weighted total variation (Peng et al. 2019, ref. [23]), edge-aware: jumps of M are cheap on image edges.
* g: a generalized logistic function per term (bounded, so no term dominates; parameters per term).
* d(M) ≤ δ: the quadratic penalty of Kervadec et al. 2019 (ref. [15]), zero when the constraint holds.

Log-odds are plain logit differences (:func:`~cfattr_monai.networks.classifier_output.pathology_logit`) and
−log(1 − p) = softplus(logit), so no term is ever Inf or NaN.

Where the gradient comes from: π(M) = (1 − M)⊙I + M⊙F blends the fill F in, and d π / d M = F − I. A
marginalizer fills only its hard hole (M > 0.55), so F = I elsewhere and a pixel outside the current binary map gets
no gradient: an empty initial map would never grow. In training F is therefore completed by a *what-if fill*
(:func:`what_if_fill`): outside the hole, the fill the marginalizer puts at a pixel when the pixel is a hole,
inpainted block-wise from two complementary checkerboard holes. The true counterfactual (inside M > 0.55) is unchanged.

Sharpened blend (``blend_temperature`` τ, default 0.1; ``blend_margin`` m, default 0.1): π and d see
``B(M) = σ((M − t − m) / τ)`` with t the map threshold (0.55) instead of M itself. With the plain blend a soft map
lowers p(c|π(M)) by blending a *little* fill into the lesion (measured on the demo phantoms: a blend of 0.3 of the
true fill over the lesion takes the mean logit from 12.4 to 8.7), so the soft map settles below 0.55 and the binary
map M̂ that inference uses stays empty. ``B`` is close to the binary map M̂ yet differentiable; τ → 0 is the binary
map. The margin m: with m = 0 a pixel just below t still gets a partial fill (0.38 of F at M = t − τ/2) that
inference does not give it, and the map learns to rely on that ring (measured on the demo phantoms: 0.87 of the
flagged training images flipped under B, 0.59 under M̂). With m > 0 a pixel counts fully only well inside M̂, so
what flips π(B) in training also flips π(M̂) at inference (m = 0.1: flip rate on the demo test split 0.735 → 0.796
for seed 0, 0.592 → 0.796 for seed 1; see the attributor bundle's README).

Tissue only: with an organ mask O stacked onto the target, π sees ``M ⊙ O`` while d counts the whole map. π replaces
a region by healthy *tissue*; outside the organ there is none, so covering the background changes nothing and
only costs area. (Measured on the demo phantoms: without it the trained maps also covered the film label in the
background corner, whose removal lowers p(c) by 0.03 on average.) Inference needs no organ mask.

Which images: the loss only makes sense for images the classifier flags (p(c|I) ≥ θ). φ and ψ are therefore
applied to flagged images only; every image gets the area terms, with δ for flagged images and 0 for the others, so
the maps of images the classifier calls healthy are driven empty (the argmin d(M) of the paper's definition of M̂).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from cfattr_monai.networks.classifier_output import pathology_logit

__all__ = [
    "phi",
    "psi",
    "weighted_total_variation",
    "generalized_logistic",
    "area",
    "area_penalty",
    "what_if_fill",
    "mean_lesion_fraction",
    "CounterfactualLoss",
]


def phi(counterfactual_logit: torch.Tensor) -> torch.Tensor:
    """φ(M) = −log(1 − p(c|π(M))) = softplus(log odds(π(M))), per image; falls as p(c|π(M)) falls."""
    return F.softplus(counterfactual_logit)


def psi(counterfactual_logit: torch.Tensor, image_logit: torch.Tensor) -> torch.Tensor:
    """ψ(M) = log odds(π(M)) − log odds(I), per image; negative once π(M) looks healthier than I."""
    return counterfactual_logit - image_logit


def weighted_total_variation(mask: torch.Tensor, image: torch.Tensor, edge_scale: float = 0.1) -> torch.Tensor:
    """R(M) = mean_u w_x(u)·|∂_x M(u)| + mean_u w_y(u)·|∂_y M(u)|, w_x(u) = exp(−(∂_x I(u))² / (2 s²)) (w_y alike),
    per image (ref. [23]): each direction's jump of M is weighted by the image's jump along that direction.

    Args:
        mask: ``(B, 1, H, W)`` map M.
        image: ``(B, C, H, W)`` image I (channels averaged) in [0, 1].
        edge_scale: ``s``, the image-gradient magnitude at which a jump of M costs e^{-1/2} of its flat-region price.
    """
    grey = image.mean(dim=1, keepdim=True)
    weight_x = torch.exp(-(grey[..., :, 1:] - grey[..., :, :-1]) ** 2 / (2 * edge_scale**2))
    weight_y = torch.exp(-(grey[..., 1:, :] - grey[..., :-1, :]) ** 2 / (2 * edge_scale**2))
    tv_x = (weight_x * (mask[..., :, 1:] - mask[..., :, :-1]).abs()).flatten(1).mean(dim=1)
    tv_y = (weight_y * (mask[..., 1:, :] - mask[..., :-1, :]).abs()).flatten(1).mean(dim=1)
    return tv_x + tv_y


def generalized_logistic(
    t: torch.Tensor,
    lower: float = 0.0,
    upper: float = 1.0,
    growth: float = 1.0,
    shift: float = 0.0,
    nu: float = 1.0,
) -> torch.Tensor:
    """Generalized logistic (Richards) function ``Y(t) = A + (K − A) / (1 + e^{−B (t − t₀)})^{1/ν}``.

    Args:
        t: input.
        lower: A, the lower asymptote.
        upper: K, the upper asymptote.
        growth: B > 0, the growth rate.
        shift: t₀, where the curve is steepest for ν = 1.
        nu: ν > 0, asymmetry.
    """
    return lower + (upper - lower) * torch.exp(-F.softplus(-growth * (t - shift)) / nu)


def what_if_fill(
    fill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], image: torch.Tensor, hole: torch.Tensor, block: int
) -> torch.Tensor:
    """F = hole ⊙ fill(I, hole) + (1 − hole) ⊙ F_w, the what-if fill F_w from two checkerboard holes of ``block`` px.

    ``F_w = A ⊙ fill(I, A) + (1 − A) ⊙ fill(I, 1 − A)`` with ``A`` the checkerboard of ``block``-sized squares: every
    pixel is filled once from the context of its neighbouring squares. No gradient flows through ``fill``. An image
    whose hole covers everything (no context to inpaint from) keeps ``F_w`` everywhere.

    Args:
        fill: ``fill(image, hole) -> image`` (e.g. ``InpaintMarginalizer.fill``), 1 = hole.
        image: ``(B, C, H, W)``.
        hole: ``(B, 1, H, W)`` binary hard hole of the map.
        block: checkerboard square side in pixels.
    """
    height, width = image.shape[-2:]
    rows = torch.arange(height, device=image.device)[:, None] // block
    cols = torch.arange(width, device=image.device)[None, :] // block
    board = ((rows + cols) % 2).to(image.dtype).expand(image.shape[0], 1, height, width)
    with torch.no_grad():
        what_if = board * fill(image, board) + (1 - board) * fill(image, 1 - board)
        # images whose hole leaves no context (all hole) keep the what-if fill everywhere
        inpaintable = (hole.flatten(1).amax(dim=1) > 0) & (hole.flatten(1).amin(dim=1) == 0)
        if not bool(inpaintable.any()):
            return what_if
        result = what_if.clone()
        hole_i = hole[inpaintable]
        result[inpaintable] = hole_i * fill(image[inpaintable], hole_i) + (1 - hole_i) * what_if[inpaintable]
        return result


def area(mask: torch.Tensor) -> torch.Tensor:
    """d(M): the attributed fraction of the image, ``mean_u M(u)`` per image."""
    return mask.flatten(1).mean(dim=1)


def area_penalty(area_value: torch.Tensor, delta: torch.Tensor | float) -> torch.Tensor:
    """Quadratic penalty of Kervadec et al. 2019 for ``d(M) ≤ δ``: ``max(0, d(M) − δ)²``, zero when it holds."""
    return torch.relu(area_value - delta) ** 2


def mean_lesion_fraction(datalist: str | Path, key: str = "training", lesion_key: str = "lesion") -> float:
    """Mean lesion area of the pathological images of a datalist, as a fraction of the image area.

    The paper's δ for mammography is "n times the average mass size": δ = n × this value. The average is taken per
    image, over all the lesions of an image together (a mask holding several masses counts their union): the map has
    to cover every lesion of an image to flip it, so an image with two masses needs room for both.

    Raises:
        FileNotFoundError: the datalist is missing.
        ValueError: no pathological item of ``key`` has a lesion mask, or all its lesion masks are empty (δ would
            be 0 and drive every map empty).
    """
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImage

    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"mean_lesion_fraction: datalist {path} not found; create the data set first.")
    items = load_decathlon_datalist(str(path), data_list_key=key, base_dir=str(path.parent))
    loader = LoadImage(image_only=True)
    fractions = [
        float((np.asarray(loader(item[lesion_key])) > 0).mean())
        for item in items
        if item.get("label") == 1 and item.get(lesion_key)
    ]
    if not fractions:
        raise ValueError(
            f"mean_lesion_fraction: no pathological item with a `{lesion_key}` mask under `{key}` in {path}; "
            "give δ explicitly instead."
        )
    if max(fractions) == 0.0:
        raise ValueError(
            f"mean_lesion_fraction: the {len(fractions)} `{lesion_key}` masks of the pathological items under `{key}` "
            f"in {path} are all empty, so δ would be 0 and every map would be driven empty; give δ explicitly "
            "instead (e.g. --delta 0.06, as configs/task_cxr.json does for data sets without lesion masks)."
        )
    return float(np.mean(fractions))


class CounterfactualLoss(nn.Module):
    """``L(M)`` of Lenis et al. 2020 (module doc): a loss of the map M given the image I, for a frozen classifier.

    ``forward(mask, target)`` takes the map M ``(B, 1, H, W)`` in [0, 1] and ``target``: the image I
    ``(B, 1, H, W)``, or I stacked with the organ mask O ``(B, 2, H, W)`` (needed when δ is a fraction of the organ
    area, ``delta_of="organ"``). With O, π replaces tissue only: it sees ``M ⊙ O``, so the part of the map outside
    the organ changes nothing and only costs area (module doc). It computes π(M) with ``marginalizer`` and p(c|·)
    with ``classifier``, neither trained. ``mask`` may also be the pair ``(M, logits)`` with the classifier's
    output for I, e.g. ``AttentionGatedUNet(image, logits=True)`` (the map and the logits of its encoder pass, as
    the attributor's trainer passes them): p(c|I) is then not computed a second time. None for the logits (no
    classifier head registered) scores I with ``classifier``.

    Args:
        classifier: frozen binary classifier (output ``(B, 1)`` or ``(B, 2)``).
        marginalizer: π, ``marginalizer(image, mask) -> image`` (e.g. ``InpaintMarginalizer``).
        delta: δ, the area limit as a fraction of the image (or organ) area.
        delta_of: ``"image"`` or ``"organ"``.
        threshold: θ, the classification threshold that defines "flagged" (p(c|I) ≥ θ).
        tv_weight: λ.
        area_penalty_weight: μ, weight of the Kervadec penalty for d(M) ≤ δ.
        area_weight: α, weight of d(M) itself (the argmin d(M) of the definition of M̂).
        phi_logistic, psi_logistic, tv_logistic: keyword arguments of :func:`generalized_logistic` per term.
        what_if_block: checkerboard square of :func:`what_if_fill` as a fraction of the shorter image side; needs a
            marginalizer with ``fill(image, hole)`` and ``threshold`` (``Marginalizer``). None: π is called as is
            (gradient only inside its hard hole).
        blend_temperature: τ of the sharpened blend (module doc); None, or ``what_if_block`` None, blends M itself.
        blend_margin: m ≥ 0, the sharpened blend's midpoint above the map threshold (module doc).


    Example:
        >>> clf = nn.Sequential(nn.Flatten(), nn.LazyLinear(1))
        >>> loss = CounterfactualLoss(clf, lambda i, m: (1 - m) * i, delta=0.1, what_if_block=None)
        >>> value = loss(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
        >>> value.ndim
        0
    """

    def __init__(
        self,
        classifier: nn.Module,
        marginalizer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        delta: float,
        delta_of: str = "image",
        threshold: float = 0.5,
        tv_weight: float = 0.1,
        area_penalty_weight: float = 100.0,
        area_weight: float = 1.0,
        phi_logistic: dict | None = None,
        psi_logistic: dict | None = None,
        tv_logistic: dict | None = None,
        what_if_block: float | None = 0.0625,
        blend_temperature: float | None = 0.1,
        blend_margin: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 < delta <= 1.0:
            raise ValueError(f"CounterfactualLoss: delta is an area fraction in (0, 1], got {delta}.")
        if delta_of not in ("image", "organ"):
            raise ValueError(f"CounterfactualLoss: delta_of must be 'image' or 'organ', got {delta_of!r}.")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"CounterfactualLoss: threshold θ must be in (0, 1), got {threshold}.")
        if what_if_block is not None and not (hasattr(marginalizer, "fill") and hasattr(marginalizer, "threshold")):
            raise TypeError(
                f"CounterfactualLoss: what_if_block needs a Marginalizer with fill() and threshold, got "
                f"{type(marginalizer).__name__}; pass what_if_block=None for a plain callable π."
            )
        self.classifier, self.marginalizer, self.what_if_block = classifier, marginalizer, what_if_block
        if blend_temperature is not None and blend_temperature <= 0:
            raise ValueError(f"CounterfactualLoss: blend_temperature must be > 0 or None, got {blend_temperature}.")
        # without the what-if fill π blends M itself (the marginalizer's own π): no sharpened blend
        self.blend_temperature = blend_temperature if what_if_block is not None else None
        if blend_margin < 0:
            raise ValueError(f"CounterfactualLoss: blend_margin must be >= 0, got {blend_margin}.")
        self.blend_margin = blend_margin
        self.delta, self.delta_of, self.threshold = delta, delta_of, threshold
        self.tv_weight, self.area_penalty_weight, self.area_weight = tv_weight, area_penalty_weight, area_weight
        # defaults: φ steepest at φ(θ) = −log(1 − θ), ψ at 0 (no change yet), R at 0 (growth 10: R is a small mean);
        # φ and ψ with growth 0.3: a flagged image's logit sits several units above logit(θ) and at growth 1 both
        # curves saturate there (measured on the demo phantoms: no gradient left to grow the map)
        self.phi_logistic = {"shift": -math.log(1.0 - threshold), "growth": 0.3, **(phi_logistic or {})}
        self.psi_logistic = {"shift": 0.0, "growth": 0.3, **(psi_logistic or {})}
        self.tv_logistic = {"growth": 10.0, **(tv_logistic or {})}

    def counterfactual(self, image: torch.Tensor, mask: torch.Tensor, blend: torch.Tensor) -> torch.Tensor:
        """π(M) for training: ``(1 − B)⊙I + B⊙F`` with ``blend`` B = :meth:`blend` (M) and the what-if fill F (or
        the marginalizer's own π)."""
        if self.what_if_block is None:
            return self.marginalizer(image, mask)
        block = max(1, round(self.what_if_block * min(image.shape[-2:])))
        hole = (mask > self.marginalizer.threshold).to(image.dtype).detach()
        return (1 - blend) * image + blend * what_if_fill(self.marginalizer.fill, image, hole, block)

    def blend(self, mask: torch.Tensor) -> torch.Tensor:
        """The map π and d see: the sharpened ``σ((M − t − m) / τ)`` (module doc), or ``M`` when τ is None."""
        if self.blend_temperature is None:
            return mask
        return torch.sigmoid((mask - self.marginalizer.threshold - self.blend_margin) / self.blend_temperature)

    def image_logits(self, target: torch.Tensor) -> torch.Tensor:
        """The frozen classifier's output for the image ``target[:, :1]``, without autograd (p(c|I)'s logits)."""
        with torch.no_grad():
            return self.classifier(target[:, :1])

    def terms(
        self, mask: torch.Tensor, target: torch.Tensor, image_logits: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-image terms: ``phi``, ``psi``, ``tv``, ``area``, ``delta``, ``flagged``, ``p``, ``p_counterfactual``.

        ``image_logits``: :meth:`image_logits` of ``target`` when the caller has it; None computes it.
        """
        if mask.ndim != 4 or mask.shape[1] != 1:
            raise ValueError(f"CounterfactualLoss: the map must be (B, 1, H, W), got {tuple(mask.shape)}.")
        channels = (2,) if self.delta_of == "organ" else (1, 2)
        if target.ndim != 4 or target.shape[1] not in channels or target.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"CounterfactualLoss: target must be (B, {' or '.join(map(str, channels))}, H, W) = the image"
                f"{' and the organ mask' if channels == (2,) else ' [and the organ mask]'} at the map's size "
                f"{tuple(mask.shape[-2:])}, got {tuple(target.shape)}; with delta_of='organ' stack the organ "
                "mask as a second channel."
            )
        image, organ = target[:, :1], (target[:, 1:] if target.shape[1] == 2 else None)
        if image_logits is None:
            image_logits = self.image_logits(target)
        elif image_logits.shape[0] != mask.shape[0]:
            raise ValueError(
                f"CounterfactualLoss: the image logits must be the classifier's output for the map's {mask.shape[0]} "
                f"images, got shape {tuple(image_logits.shape)}."
            )
        image_logit = pathology_logit(image_logits)
        blend = self.blend(mask)  # what π and d see, computed once per step
        tissue = 1.0 if organ is None else organ  # π replaces tissue only; d still counts the whole map
        counterfactual = self.counterfactual(image, mask * tissue, blend * tissue)
        counterfactual_logit = pathology_logit(self.classifier(counterfactual))
        relative_area = area(blend)
        if self.delta_of == "organ":
            relative_area = relative_area / area(organ).clamp_min(1e-6)
        flagged = (torch.sigmoid(image_logit) >= self.threshold).to(mask.dtype)
        return {
            "phi": phi(counterfactual_logit),
            "psi": psi(counterfactual_logit, image_logit),
            "tv": weighted_total_variation(mask, image),
            "area": relative_area,
            "delta": flagged * self.delta,
            "flagged": flagged,
            "p": torch.sigmoid(image_logit),
            "p_counterfactual": torch.sigmoid(counterfactual_logit),
        }

    def forward(
        self, mask: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None], target: torch.Tensor
    ) -> torch.Tensor:
        image_logits = None
        if isinstance(mask, (tuple, list)):
            if len(mask) != 2:
                raise ValueError(
                    f"CounterfactualLoss: expected the map or the pair (map, image logits), got {len(mask)} items."
                )
            mask, image_logits = mask
        t = self.terms(mask, target, image_logits)
        counterfactual = generalized_logistic(t["phi"], **self.phi_logistic) + generalized_logistic(
            t["psi"], **self.psi_logistic
        )
        per_image = (
            t["flagged"] * counterfactual
            + self.tv_weight * generalized_logistic(t["tv"], **self.tv_logistic)
            + self.area_penalty_weight * area_penalty(t["area"], t["delta"])
            + self.area_weight * t["area"]
        )
        return per_image.mean()
