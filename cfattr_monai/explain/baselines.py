"""The attribution methods the paper compares against (§4 "Attribution" and "Timing"), on the *same* classifier.

* **Grad-CAM** (Selvaraju et al., ICCV 2017, paper ref. [25]): ``M = ReLU(Σ_k α_k A^k)``, ``α_k`` the spatial mean of
  ``∂z/∂A^k`` for the pathology logit z and the feature maps A of the classifier's coarsest scale, upsampled to the
  image. :class:`GradCAMBaseline` runs :class:`monai.visualize.GradCAM` as it is, batched;
  :func:`gradcam_head_only` computes the same map with the backward pass stopped at A — the cheapest honest peer for
  timing.
* **Gradient saliency** (Simonyan et al. 2013, ref. [26]): ``M = |∂z/∂I|``. :class:`SaliencyBaseline` runs
  :class:`monai.visualize.VanillaGrad` as it is (it accepts batch 1 only, so images are looped over);
  :func:`saliency_batched` computes the same map for a whole batch with one backward pass to the input and no weight
  gradients — the most efficient honest peer for timing.
* **Iterative counterfactual** (Major et al., ISBI 2020, ref. [22]): per image, gradient descent (Adam) on a mask
  with the *same* marginalizer π, the same :class:`~cfattr_monai.losses.attribution.CounterfactualLoss` (area
  constraint included) and the same smooth-max mapping into compact masks as the attributor; see
  :class:`IterativeCounterfactual` for the parametrization and the stopping criterion.

All maps are (B, 1, H, W) in [0, 1] (min–max per image; 1 = most attributed). Every method switches gradients on
itself (``torch.enable_grad()``, and out of ``torch.inference_mode``), so it also runs inside a MONAI evaluator,
which evaluates under ``no_grad``. The classifier's weights may be frozen (``requires_grad=False``, as
:func:`cfattr_monai.bundle.load_network` returns them): the gradient then reaches the target layer through the input.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet, EfficientNet, ResNet
from monai.visualize import GradCAM, VanillaGrad
from monai.visualize.class_activation_maps import default_upsampler
from torch import nn

from cfattr_monai.networks.classifier_output import pathology_logit
from cfattr_monai.networks.mobilenet import MobileNetV1
from cfattr_monai.transforms.masks import map_into_compact

__all__ = [
    "GRADCAM_TARGET_LAYERS",
    "GradCAMBaseline",
    "IterativeCounterfactual",
    "SaliencyBaseline",
    "gradcam_head_only",
    "gradcam_target_layer",
    "normalize_per_image",
    "pathology_output",
    "saliency_batched",
]

#: Grad-CAM target layer per backbone: the activation of the coarsest scale, the same feature map that
#: :class:`cfattr_monai.networks.encoders.ClassifierEncoder` hands the attributor last. MONAI's EfficientNets call
#: one ``_swish`` module at the stem and at the head, so MONAI's hooks would pair the head's activation with the
#: stem's gradient: there the target is the head's batch norm ``_bn1``, the input of that last Swish.
GRADCAM_TARGET_LAYERS: dict[type[nn.Module], str] = {
    MobileNetV1: "features.block13.pointwise.adn.A",
    DenseNet: "class_layers.relu",
    ResNet: "layer4",
    EfficientNet: "_bn1",
}
#: The pathology logit's column in MONAI's ``class_idx``: the single output of a binary classifier, or of a two-logit
#: one read through :func:`pathology_output` (``classifier_output``).
PATHOLOGY_INDEX = 0


def gradcam_target_layer(classifier: nn.Module, target_layer: str | None = None) -> str:
    """The name of the Grad-CAM target layer of ``classifier``: ``target_layer`` when given, checked to be a module
    of it, else the backbone's from :data:`GRADCAM_TARGET_LAYERS`.

    Raises:
        ValueError: ``target_layer`` is not a module of ``classifier``.
        TypeError: no ``target_layer`` given and the backbone is not in the table.
    """
    if target_layer is not None:
        if target_layer not in dict(classifier.named_modules()):
            raise ValueError(
                f"target_layer {target_layer!r} is not a module of {type(classifier).__qualname__}; pick one from "
                "classifier.named_modules()."
            )
        return target_layer
    for cls, layer in GRADCAM_TARGET_LAYERS.items():
        if isinstance(classifier, cls):
            return layer
    known = ", ".join(cls.__qualname__ for cls in GRADCAM_TARGET_LAYERS)
    raise TypeError(
        f"gradcam_target_layer: no Grad-CAM layer known for {type(classifier).__qualname__} (known: {known}); "
        "pass target_layer='<name from classifier.named_modules()>' (the last activation of the coarsest scale)."
    )


def normalize_per_image(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min–max scale each image's map to [0, 1] (a constant map becomes 0)."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    shape = (-1,) + (1,) * (maps.ndim - 1)
    return (maps - low.view(shape)) / (high - low).clamp_min(eps).view(shape)


@contextlib.contextmanager
def pathology_output(classifier: nn.Module) -> Iterator[nn.Module]:
    """While active, ``classifier`` outputs its pathology log-odds ``(B, 1)`` (:func:`pathology_logit`) also when it
    has two logits ``(B, 2)``, so that MONAI's ``class_idx=0`` explains the pathology; a ``(B, 1)`` output is left
    as it is.

    Example:
        >>> two_logits = nn.Linear(3, 2)
        >>> with pathology_output(two_logits):
        ...     two_logits(torch.rand(4, 3)).shape
        torch.Size([4, 1])
    """

    def log_odds(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor | None:
        return None if output.ndim == 2 and output.shape[1] == 1 else pathology_logit(output)[:, None]

    handle = classifier.register_forward_hook(log_odds)
    try:
        yield classifier
    finally:
        handle.remove()


def _gradient_ready(images: torch.Tensor) -> torch.Tensor:
    """A copy of ``images`` outside inference mode that requires grad (so frozen classifiers still backprop)."""
    return images.detach().clone().requires_grad_(True)


class GradCAMBaseline:
    """Grad-CAM of the pathology logit through :class:`monai.visualize.GradCAM`, batched.

    Args:
        classifier: binary classifier, output (B, 1) or (B, 2) (explained: the pathology log-odds,
            :func:`pathology_output`); frozen weights allowed.
        target_layer: name of the layer whose activations and gradients are used; default from
            :func:`gradcam_target_layer`.

    Example:
        >>> from cfattr_monai.networks.mobilenet import MobileNetV1
        >>> cam = GradCAMBaseline(MobileNetV1(width_mult=0.25).eval())
        >>> cam(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(self, classifier: nn.Module, target_layer: str | None = None) -> None:
        self.classifier, self.target_layer = classifier, gradcam_target_layer(classifier, target_layer)
        # MONAI's default post-processing maps (min, max) to (1, 0); attribution maps keep 1 = most attributed.
        self.cam = GradCAM(nn_module=classifier, target_layers=self.target_layer, postprocessing=normalize_per_image)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Maps (B, 1, H, W) in [0, 1] for images (B, 1, H, W)."""
        with torch.inference_mode(False), torch.enable_grad(), pathology_output(self.classifier):
            maps = self.cam(_gradient_ready(images), class_idx=PATHOLOGY_INDEX)
        return maps.detach()


class SaliencyBaseline:
    """Gradient saliency ``|∂z/∂I|`` of the pathology logit through :class:`monai.visualize.VanillaGrad`.

    VanillaGrad accepts one image at a time; a batch is looped over, as a user of MONAI's implementation does.

    Args:
        classifier: binary classifier, output (B, 1) or (B, 2) (explained: the pathology log-odds,
            :func:`pathology_output`); frozen weights allowed.

    Example:
        >>> from cfattr_monai.networks.mobilenet import MobileNetV1
        >>> SaliencyBaseline(MobileNetV1(width_mult=0.25).eval())(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(self, classifier: nn.Module) -> None:
        self.classifier, self.saliency = classifier, VanillaGrad(classifier)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Maps (B, 1, H, W) in [0, 1] for images (B, 1, H, W)."""
        with torch.inference_mode(False), torch.enable_grad(), pathology_output(self.classifier):
            grads = [self.saliency(_gradient_ready(image[None]), index=PATHOLOGY_INDEX) for image in images]
        return normalize_per_image(torch.cat(grads).abs().amax(dim=1, keepdim=True))


def saliency_batched(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Gradient saliency ``|∂z/∂I|`` (Simonyan et al. 2013) for a whole batch in one forward and backward pass.

    The same map as :class:`SaliencyBaseline`; only the input gradient is computed (``torch.autograd.grad`` with the
    image as the sole input), never weight gradients. The classifier runs in whatever mode it is in (use eval mode).

    Args:
        classifier: binary classifier, output (B, 1) or (B, 2); frozen weights allowed.
        images: (B, C, H, W).

    Returns:
        maps (B, 1, H, W) in [0, 1], the maximum over input channels.
    """
    with torch.inference_mode(False), torch.enable_grad():
        inputs = _gradient_ready(images)
        (grad,) = torch.autograd.grad(pathology_logit(classifier(inputs)).sum(), inputs)
    return normalize_per_image(grad.abs().amax(dim=1, keepdim=True))


def gradcam_head_only(classifier: nn.Module, images: torch.Tensor, target_layer: str | None = None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) with the gradient taken through the classifier's head only.

    ``M = ReLU(Σ_k α_k A^k)``, ``α_k`` the spatial mean of ``∂z/∂A^k``: the same map as :class:`GradCAMBaseline`,
    but the backward pass runs from the logit z to the target layer's activations A and stops there. MONAI's
    ``GradCAM`` backpropagates to the input or the weights (whichever requires grad), through the whole network; here
    A is detached in a forward hook and made the only tensor that requires grad, so nothing before the target layer
    builds a graph. The cheapest honest Grad-CAM, for timing (as :func:`saliency_batched` is for saliency).

    Args:
        classifier: binary classifier, output (B, 1) or (B, 2), in eval mode; frozen weights allowed.
        images: (B, C, H, W) or (B, C, D, H, W).
        target_layer: name of the activation; default from :func:`gradcam_target_layer`.

    Returns:
        maps (B, 1, *spatial) in [0, 1], bi- or trilinearly upsampled to the image as MONAI does.
    """
    layer = classifier.get_submodule(gradcam_target_layer(classifier, target_layer))
    captured: list[torch.Tensor] = []

    def leaf_activation(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        captured.append(output.detach().requires_grad_(True))
        return captured[-1]

    handle = layer.register_forward_hook(leaf_activation)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            logit = pathology_logit(classifier(images.detach().clone()))
            (grad,) = torch.autograd.grad(logit.sum(), captured[-1])
    finally:
        handle.remove()
    activation = captured[-1].detach()
    cam = F.relu((grad.mean(dim=tuple(range(2, grad.ndim)), keepdim=True) * activation).sum(dim=1, keepdim=True))
    return normalize_per_image(default_upsampler(images.shape[2:])(cam))


class IterativeCounterfactual:
    """The iterative counterfactual method of Major et al. (ISBI 2020, ref. [22]): one optimization per image.

    The mask is parametrized by logits θ on a grid ``grid_stride`` times coarser than the image (smooth masks, fewer
    unknowns), ``M = S(up(σ(θ)))`` with bilinear upsampling ``up`` and the smooth-max mapping S into compact masks
    (:func:`~cfattr_monai.transforms.masks.map_into_compact`, as the attributor uses it). Adam minimizes
    ``loss(M, target)`` — the attributor's :class:`~cfattr_monai.losses.attribution.CounterfactualLoss`, which holds
    the frozen classifier, the marginalizer π and the area constraint d(M) ≤ δ. p(c|I) does not change while M is
    optimized: the classifier scores I once per image and the loss gets its logits with M, as the attributor's
    trainer gives them (each step then runs π and the classifier on π(M) only).

    Start: π fills only its hard hole ``M > 0.55`` (outside it ``F = I``, so π(M) = I whatever M is there), hence the
    classifier's gradient reaches M only inside the hole: the optimization must start from a hole, and one of
    feasible size (a whole-image hole violates d(M) ≤ δ so much that the area penalty drowns every other term). The
    start is therefore the best square of area ≈ δ found by an occlusion search: squares on a grid (half-side step)
    are marginalized in batches of ``search_batch`` and the one with the lowest ``p(c|π(M))`` seeds θ
    (``σ(θ) = start_high`` in it, ``start_low`` elsewhere: the area terms see the soft M, so the rest starts near 0).
    The search is part of the method's time.

    Stopping criterion (documented default): the loss has plateaued — relative change
    ``|L_t − L_{t−1}| / max(|L_{t−1}|, 1e-8) < tol`` for ``patience`` consecutive steps — *and* the counterfactual is
    classified healthy, ``p(c|π(M)) ≤ θ`` as the flip rate counts it (or the image was not flagged in the first
    place); otherwise after ``max_iterations`` steps. The flip is checked (one extra forward pass) only once the loss
    has plateaued.

    Args:
        loss: a :class:`~cfattr_monai.losses.attribution.CounterfactualLoss` (``classifier``, ``marginalizer``,
            ``delta``, ``threshold``, ``image_logits`` and ``terms`` are used).
        max_iterations: N, the iteration budget per image.
        learning_rate: Adam's step size on θ.
        tol: relative loss change below which a step counts as "no progress".
        patience: number of consecutive such steps that make a plateau.
        grid_stride: the mask grid is ``ceil(H / grid_stride) × ceil(W / grid_stride)``.
        start_high: σ(θ₀) inside the starting square, in (0.5, 1).
        start_low: σ(θ₀) elsewhere, in (0, 0.5).
        search_batch: squares marginalized per forward pass in the occlusion search.
        compact: the mapping into compact masks.

    Example:
        >>> from cfattr_monai.losses.attribution import CounterfactualLoss
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 1)).requires_grad_(False)
        >>> loss = CounterfactualLoss(clf, lambda i, m: (1 - m) * i, delta=0.1, what_if_block=None)
        >>> method = IterativeCounterfactual(loss, max_iterations=5)
        >>> method(torch.rand(2, 1, 32, 32)).shape, len(method.last_runs)
        (torch.Size([2, 1, 32, 32]), 2)
    """

    def __init__(
        self,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        max_iterations: int = 300,
        learning_rate: float = 0.1,
        tol: float = 1e-3,
        patience: int = 10,
        grid_stride: int = 8,
        start_high: float = 0.9,
        start_low: float = 0.05,
        search_batch: int = 8,
        compact: Callable[[torch.Tensor], torch.Tensor] = map_into_compact,
    ) -> None:
        counts = min(max_iterations, patience, grid_stride, search_batch)
        if counts < 1 or learning_rate <= 0 or tol < 0 or not 0 < start_low < 0.5 < start_high < 1:
            raise ValueError(
                "IterativeCounterfactual: need max_iterations, patience, grid_stride, search_batch >= 1, "
                f"learning_rate > 0, tol >= 0 and 0 < start_low < 0.5 < start_high < 1, got {max_iterations}, "
                f"{patience}, {grid_stride}, {search_batch}, {learning_rate}, {tol}, {start_low}, {start_high}."
            )
        self.loss, self.compact = loss, compact
        self.max_iterations, self.learning_rate, self.tol = max_iterations, learning_rate, tol
        self.patience, self.grid_stride, self.search_batch = patience, grid_stride, search_batch
        self.start_logits = (torch.logit(torch.tensor(start_low)).item(), torch.logit(torch.tensor(start_high)).item())
        #: one ``{"iterations", "converged", "p_counterfactual"}`` per image of the last call.
        self.last_runs: list[dict[str, float | int | bool]] = []

    def mask(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``M = S(up(σ(θ)))`` at the image size."""
        return self.compact(F.interpolate(torch.sigmoid(logits), size=size, mode="bilinear", align_corners=False))

    def starting_logits(self, target: torch.Tensor) -> torch.Tensor:
        """θ₀ (1, 1, h, w) on the mask grid: the square of area ≈ δ whose marginalization lowers p(c|π(M)) most."""
        size = tuple(target.shape[-2:])
        grid = [math.ceil(s / self.grid_stride) for s in size]
        side = [max(1, round(math.sqrt(self.loss.delta) * g)) for g in grid]
        steps = [range(0, max(1, g - k + 1), max(1, k // 2)) for g, k in zip(grid, side)]
        low, high = self.start_logits
        candidates = torch.full((len(steps[0]) * len(steps[1]), 1, *grid), low, device=target.device)
        for i, (y, x) in enumerate((y, x) for y in steps[0] for x in steps[1]):
            candidates[i, :, y : y + side[0], x : x + side[1]] = high
        image = target[:, :1]
        with torch.no_grad():
            scores = torch.cat(
                [
                    pathology_logit(self.loss.classifier(self.loss.marginalizer(image.expand(len(c), -1, -1, -1), m)))
                    for c in candidates.split(self.search_batch)
                    for m in [self.mask(c, size)]
                ]
            )
        return candidates[int(scores.argmin())][None].clone()

    def _counterfactual_done(
        self, mask: torch.Tensor, target: torch.Tensor, image_logits: torch.Tensor
    ) -> tuple[bool, float]:
        """Whether π(M) is classified healthy (or I was not flagged), and p(c|π(M))."""
        with torch.no_grad():
            terms = self.loss.terms(mask, target, image_logits)
        p = float(terms["p_counterfactual"][0])
        return bool(terms["flagged"][0] == 0) or p <= self.loss.threshold, p

    def explain_one(self, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float | int | bool]]:
        """Optimize the mask of one image; ``target`` is (1, C, H, W) as the loss expects it (image [+ organ])."""
        size = tuple(target.shape[-2:])
        with torch.no_grad():  # p(c|I) does not change while M is optimized: the classifier scores I once
            image_logits = self.loss.classifier(target[:, :1])
        logits = self.starting_logits(target).requires_grad_(True)
        optimizer = torch.optim.Adam([logits], lr=self.learning_rate)
        previous, calm_steps, done, p_counterfactual = math.inf, 0, False, math.nan
        for iteration in range(1, self.max_iterations + 1):
            value = self.loss((self.mask(logits, size), image_logits), target)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            current = value.detach().item()
            calm_steps = calm_steps + 1 if abs(current - previous) < self.tol * max(abs(previous), 1e-8) else 0
            previous = current
            if calm_steps >= self.patience:
                done, p_counterfactual = self._counterfactual_done(
                    self.mask(logits.detach(), size), target, image_logits
                )
                if done:
                    break
                calm_steps = 0
        final = self.mask(logits.detach(), size)
        if not done:
            p_counterfactual = self._counterfactual_done(final, target, image_logits)[1]
        return final, {"iterations": iteration, "converged": done, "p_counterfactual": p_counterfactual}

    def __call__(self, targets: torch.Tensor) -> torch.Tensor:
        """Soft maps (B, 1, H, W) in [0, 1] for ``targets`` (B, C, H, W), one optimization per image."""
        with torch.inference_mode(False), torch.enable_grad():
            results = [self.explain_one(target[None].detach().clone()) for target in targets]
        self.last_runs = [info for _, info in results]
        return torch.cat([mask for mask, _ in results])
