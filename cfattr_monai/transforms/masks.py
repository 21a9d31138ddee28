"""Hole masks for training and evaluating the inpainter, and maps into compact masks for the attributor.

Irregular hole masks (Liu et al., ECCV 2018, "Image inpainting for irregular holes using partial convolutions",
§4.1) are unions of random brush *strokes* and compact *blobs*. The blobs mimic what the attribution network hands
the inpainter at training time: compact, connected regions, thresholded at 0.55 after the smooth-max mapping into
the set S of compact masks (Lenis et al., MICCAI 2020, §2). Convention: the returned ``valid`` mask is 1 on valid
pixels and 0 in the hole, as partial convolutions expect.

Placement (needed by the paper's Fig. 1c protocol, §4 "Marginalization"):

* ``allowed``: the hole is clipped to this region (e.g. the organ minus the lesion: holes in healthy tissue only);
* ``centers``: shape centres are sampled inside this region (default: ``allowed``);
* ``cover``: this region is always part of the hole (e.g. the lesion: holes over pathological tissue).

The hole ratio is measured relative to the area of ``allowed`` (the whole image when ``allowed`` is None).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_dilation
from monai.config import KeysCollection
from monai.transforms import LoadImage, MapTransform, Randomizable
from monai.utils import convert_to_dst_type

__all__ = ["irregular_hole_mask", "RandIrregularHoleMaskd", "gaussian_rbf_smooth_max", "map_into_compact", "SmoothMaxCompact",
           "OrganMaskd"]

RandomGenerator = np.random.RandomState | np.random.Generator


def _blob(grid_y: np.ndarray, grid_x: np.ndarray, center: np.ndarray, radius: float, rng: RandomGenerator) -> np.ndarray:
    """A compact, connected, star-shaped blob: a rotated ellipse whose boundary is perturbed by low harmonics."""
    dy, dx = grid_y - center[0], grid_x - center[1]
    angle = rng.uniform(0.0, np.pi)
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    aspect = rng.uniform(0.6, 1.0)
    rho = np.sqrt(u**2 + (v / aspect) ** 2)
    phi = np.arctan2(v, u)
    boundary = np.ones_like(phi)
    for harmonic in (2, 3, 5):
        boundary += rng.uniform(0.0, 0.15) * np.cos(harmonic * phi + rng.uniform(0.0, 2 * np.pi))
    return rho <= radius * boundary


def _stroke(grid_y: np.ndarray, grid_x: np.ndarray, start: np.ndarray, length: float, rng: RandomGenerator) -> np.ndarray:
    """A brush stroke: a random walk of 2-5 thick line segments (Liu et al.'s irregular mask generator)."""
    hole = np.zeros(grid_y.shape, dtype=bool)
    width = max(3.0, rng.uniform(0.015, 0.05) * max(grid_y.shape))
    point = start.astype(np.float64)
    angle = rng.uniform(0.0, 2 * np.pi)
    for _ in range(int(rng.uniform(2, 6))):
        angle += rng.uniform(-np.pi / 2, np.pi / 2)
        end = point + rng.uniform(0.3, 1.0) * length * np.array([np.sin(angle), np.cos(angle)])
        seg = end - point
        t = ((grid_y - point[0]) * seg[0] + (grid_x - point[1]) * seg[1]) / max(float(seg @ seg), 1e-9)
        t = np.clip(t, 0.0, 1.0)
        dist2 = (grid_y - point[0] - t * seg[0]) ** 2 + (grid_x - point[1] - t * seg[1]) ** 2
        hole |= dist2 <= (width / 2) ** 2
        point = end
    return hole


def irregular_hole_mask(
    spatial_shape: Sequence[int],
    rng: RandomGenerator,
    hole_ratio: tuple[float, float] = (0.02, 0.15),
    stroke_probability: float = 0.5,
    allowed: np.ndarray | None = None,
    centers: np.ndarray | None = None,
    cover: np.ndarray | None = None,
    max_shapes: int = 50,
) -> np.ndarray:
    """Random irregular hole mask, 1 = valid pixel, 0 = hole, float32 of shape ``spatial_shape``.

    Shapes (a stroke with probability ``stroke_probability``, else a blob) are added until the hole covers a ratio
    drawn uniformly from ``hole_ratio`` of the ``allowed`` area, or ``max_shapes`` shapes were drawn.

    Args:
        spatial_shape: ``(H, W)``.
        rng: ``np.random.Generator`` or ``np.random.RandomState`` (MONAI's ``Randomizable.R``).
        hole_ratio: ``(low, high)`` fraction of the allowed area to cover, ``0 < low <= high <= 1``.
        stroke_probability: probability that a shape is a stroke rather than a compact blob.
        allowed: boolean ``(H, W)``: the hole is clipped to it. None: the whole image.
        centers: boolean ``(H, W)``: shape centres are drawn inside it. None: ``allowed``.
        cover: boolean ``(H, W)``: always part of the hole (it is not clipped by ``allowed``).
        max_shapes: upper bound on the number of shapes drawn.

    Raises:
        ValueError: bad ``hole_ratio``/``stroke_probability``, a region of another shape, or an empty
            ``allowed``/``centers`` region (nowhere to put a hole).

    Example:
        >>> valid = irregular_hole_mask((64, 64), np.random.default_rng(0), hole_ratio=(0.1, 0.2))
        >>> valid.shape, bool(valid.mean() <= 0.9)
        ((64, 64), True)
    """
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != 2:
        raise ValueError(f"irregular_hole_mask: spatial_shape must be (H, W), got {spatial_shape}.")
    low, high = hole_ratio
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"irregular_hole_mask: hole_ratio must satisfy 0 < low <= high <= 1, got {hole_ratio}.")
    if not 0.0 <= stroke_probability <= 1.0:
        raise ValueError(f"irregular_hole_mask: stroke_probability must be in [0, 1], got {stroke_probability}.")
    regions = {"allowed": allowed, "centers": centers, "cover": cover}
    for name, region in regions.items():
        if region is not None and tuple(region.shape) != shape:
            raise ValueError(
                f"irregular_hole_mask: `{name}` has shape {tuple(region.shape)} but spatial_shape is {shape}; "
                "pass the (H, W) mask without channel dimension."
            )
    allowed = np.ones(shape, dtype=bool) if allowed is None else np.asarray(allowed) > 0
    centers = allowed if centers is None else np.asarray(centers) > 0
    cover = np.zeros(shape, dtype=bool) if cover is None else np.asarray(cover) > 0
    if not allowed.any() or not centers.any():
        raise ValueError(
            "irregular_hole_mask: the `allowed` or `centers` region is empty, so no hole can be placed; "
            "check the organ/lesion masks of this image or drop the restriction."
        )
    grid_y, grid_x = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    center_candidates = np.argwhere(centers)
    target = rng.uniform(low, high) * allowed.sum()
    size = float(np.sqrt(target))  # a shape of this scale reaches the target in a few draws
    hole = cover.copy()
    for _ in range(max_shapes):
        if (hole & allowed).sum() >= target:
            break
        center = center_candidates[int(rng.uniform(0, len(center_candidates)))]
        if rng.uniform(0.0, 1.0) < stroke_probability:
            shape_hole = _stroke(grid_y, grid_x, center, rng.uniform(0.5, 1.5) * size, rng)
        else:
            shape_hole = _blob(grid_y, grid_x, center, rng.uniform(0.2, 0.6) * size, rng)
        hole |= shape_hole & allowed
    return (~hole).astype(np.float32)


class RandIrregularHoleMaskd(Randomizable, MapTransform):
    """Dictionary transform adding a random irregular hole mask (1 = valid, 0 = hole) under ``valid_key``.

    The mask has the reference image's shape ``(1, H, W)`` and type (numpy array, tensor or MetaTensor).
    Optional region keys restrict where holes go (see :func:`irregular_hole_mask`): ``allowed_key`` (e.g. the organ),
    ``forbidden_key`` (removed from the allowed region, e.g. the lesion), ``centers_key`` and ``cover_key``.

    Args:
        keys: the reference image key (exactly one).
        valid_key: output key of the valid mask.
        hole_ratio: ``(low, high)`` fraction of the allowed area to cover.
        stroke_probability: probability that a shape is a stroke rather than a compact blob.
        allowed_key, forbidden_key, centers_key, cover_key: optional keys of binary region masks ``(1, H, W)``,
            read as value > 0.
        forbidden_margin: pixels by which the forbidden region is dilated before it is removed.
        allow_missing_keys: don't raise if the image key is missing.

    Example:
        >>> t = RandIrregularHoleMaskd("image", hole_ratio=(0.05, 0.1)).set_random_state(seed=0)
        >>> out = t({"image": np.zeros((1, 32, 32), np.float32)})
        >>> out["valid_mask"].shape
        (1, 32, 32)
    """

    def __init__(
        self,
        keys: KeysCollection,
        valid_key: str = "valid_mask",
        hole_ratio: tuple[float, float] = (0.02, 0.15),
        stroke_probability: float = 0.5,
        allowed_key: str | None = None,
        forbidden_key: str | None = None,
        centers_key: str | None = None,
        cover_key: str | None = None,
        forbidden_margin: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandIrregularHoleMaskd: give exactly one reference image key, got {self.keys}.")
        self.valid_key = valid_key
        self.hole_ratio = hole_ratio
        self.stroke_probability = stroke_probability
        self.allowed_key, self.forbidden_key = allowed_key, forbidden_key
        self.centers_key, self.cover_key = centers_key, cover_key
        self.forbidden_margin = forbidden_margin

    def randomize(self, data: None = None) -> None:
        """Randomness is drawn inside :func:`irregular_hole_mask` from ``self.R``."""

    def _region(self, d: Mapping, key: str | None) -> np.ndarray | None:
        """The region mask under ``key`` as a boolean ``(H, W)``: value > 0, so {0, 1} and {0, 255} masks agree."""
        if key is None:
            return None
        if key not in d:
            raise KeyError(f"RandIrregularHoleMaskd: region key `{key}` not in the data (keys: {list(d)}).")
        return np.asarray(d[key])[0] > 0

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            allowed = self._region(d, self.allowed_key)
            forbidden = self._region(d, self.forbidden_key)
            if forbidden is not None:
                if self.forbidden_margin > 0:
                    forbidden = binary_dilation(forbidden, iterations=self.forbidden_margin)
                allowed = (np.ones_like(forbidden) if allowed is None else allowed) & ~forbidden
            valid = irregular_hole_mask(
                np.asarray(image).shape[1:],
                self.R,
                hole_ratio=self.hole_ratio,
                stroke_probability=self.stroke_probability,
                allowed=allowed,
                centers=self._region(d, self.centers_key),
                cover=self._region(d, self.cover_key),
            )
            d[self.valid_key] = convert_to_dst_type(valid[None], image)[0]
        return d


# ---------------------------------------------------------------------------------------------------------------
# Smooth-max mapping into the set S of compact, connected masks (attributor; Lenis et al. 2020 §2 and §3,
# after Fong et al., ICCV 2019, "Understanding deep networks via extremal perturbations and smooth masks", §3.2).
# ---------------------------------------------------------------------------------------------------------------


WINDOW_CHUNK = 2**20
"""Values of the smooth maximum's window tensor computed at once on the CPU (images per chunk: this ÷ (2r+1)²·H·W)."""


def gaussian_rbf_smooth_max(mask: torch.Tensor, sigma: float, smoothing: float = 30.0) -> torch.Tensor:
    """Smoothed maximum of a Gaussian-RBF weighted neighbourhood, on the grid of ``mask``.

    ``M_S(u) = smax_{v ∈ Ω_u; β} k(u − v) · M(v)``, with the RBF ``k(r) = exp(−‖r‖² / (2σ²))``, the window
    ``Ω_u`` of radius ``⌈3σ⌉`` around ``u`` and the smooth maximum ``smax_β(x) = Σ_v x_v e^{β x_v} / Σ_v e^{β x_v}``
    (β = ``smoothing``). The smooth maximum lies between the window's weighted mean and its maximum, so for values in
    [0, 1] the output stays in [0, 1]; as β → ∞ it is the dilation of ``M`` by the RBF, which cannot split a
    connected region. ``Ω_u`` ends at the image border: positions outside the image are not part of the window.
    Zero padding instead would add zeros to the windows of border pixels, and a weak map (β·M small, where the
    smooth maximum is close to a weighted mean) would fall off towards the border (measured: −40 % for M ≡ 0.02).

    Args:
        mask: ``(B, 1, H, W)`` map in [0, 1].
        sigma: RBF width in pixels of ``mask``'s grid, > 0.
        smoothing: β, > 0.

    Returns:
        ``(B, 1, H, W)`` map in [0, 1], differentiable w.r.t. ``mask``.
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"gaussian_rbf_smooth_max: mask must be (B, 1, H, W), got {tuple(mask.shape)}.")
    if sigma <= 0 or smoothing <= 0:
        raise ValueError(f"gaussian_rbf_smooth_max: sigma and smoothing must be > 0, got {sigma} and {smoothing}.")
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=mask.dtype, device=mask.device)
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2)).reshape(1, -1, 1)
    height, width = mask.shape[-2:]
    size = 2 * radius + 1
    inside = F.unfold(mask.new_ones(1, 1, height, width), kernel_size=size, padding=radius)
    border = torch.zeros_like(inside).masked_fill_(inside == 0, float("-inf"))  # Ω_u ends at the image border
    # the (B, (2r+1)², H·W) windows; on the CPU in chunks of about WINDOW_CHUNK values (2 images at 256²): at batch
    # 8 one chunk is 13 MB of fresh memory per tensor, whose page faults cost more than the arithmetic (a GPU's
    # caching allocator reuses its memory). The products with the kernel and, without autograd, with the softmax
    # weights run in place. A traced graph (export) takes the batch as one chunk: tracing would fix the number of
    # chunks, hence the batch size
    in_chunks = mask.device.type == "cpu" and not torch.jit.is_tracing()
    chunks = mask.split(max(1, WINDOW_CHUNK // inside.numel())) if in_chunks else [mask]
    parts = []
    for part in chunks:
        windows = F.unfold(part, kernel_size=size, padding=radius).mul_(kernel)
        weights = torch.softmax(torch.add(border, windows, alpha=smoothing), dim=1)
        parts.append((weights * windows if weights.requires_grad else weights.mul_(windows)).sum(dim=1))
    return torch.cat(parts).reshape(mask.shape[0], 1, height, width)


def map_into_compact(
    mask: torch.Tensor, sigma_fraction: float = 5e-2, smoothing: float = 30.0, cells_per_sigma: float = 2.0
) -> torch.Tensor:
    """Map an attribution map into S: Gaussian RBF (σ = ``sigma_fraction`` × image size) then smooth maximum.

    The paper uses σ = 5e-2 of the image size (here: of its shorter side) and smoothing parameter 30. A full-
    resolution neighbourhood of radius 3σ is heavy at 576×448 (σ ≈ 22 px: a 135² window per pixel), so the smooth
    maximum is computed on a coarser grid with ``cells_per_sigma`` cells per σ (stride ``s = ⌊σ / cells_per_sigma⌋``):
    the map is max-pooled by ``s`` (a small region never vanishes), :func:`gaussian_rbf_smooth_max` runs with
    σ/s, and the result is bilinearly upsampled back. The spatial detail of the output is therefore ``s`` pixels
    (3 px at 128², 11 px at 448 wide), well below the mask's own smoothness σ. The max-pooling widens the region a
    little: at 128² a disc of radius 4–16 px, thresholded at 0.55, covers 3–16 % more pixels than the full-resolution
    computation gives (``cells_per_sigma`` ≥ σ), depending on where it sits on the grid.

    Args:
        mask: ``(B, 1, H, W)`` attribution map in [0, 1].
        sigma_fraction: σ as a fraction of ``min(H, W)``.
        smoothing: smoothing parameter β of the smooth maximum.
        cells_per_sigma: resolution of the coarse grid, in cells per σ (≥ 1).

    Returns:
        ``(B, 1, H, W)`` map in [0, 1], differentiable w.r.t. ``mask``.

    Example:
        >>> m = torch.zeros(1, 1, 64, 64); m[..., 30:34, 30:34] = 1.0
        >>> out = map_into_compact(m)
        >>> out.shape, bool(out[0, 0, 32, 32] > 0.9), bool(out[0, 0, 0, 0] < 0.01)
        (torch.Size([1, 1, 64, 64]), True, True)
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(
            f"map_into_compact: mask must be a (B, 1, H, W) attribution map, got shape {tuple(mask.shape)}."
        )
    if sigma_fraction <= 0 or cells_per_sigma < 1:
        raise ValueError(
            f"map_into_compact: need sigma_fraction > 0 and cells_per_sigma >= 1, got {sigma_fraction} and "
            f"{cells_per_sigma}."
        )
    size = mask.shape[-2:]
    sigma = sigma_fraction * min(size)
    stride = max(1, int(sigma // cells_per_sigma))
    coarse = F.max_pool2d(mask, kernel_size=stride, stride=stride, ceil_mode=True) if stride > 1 else mask
    compact = gaussian_rbf_smooth_max(coarse, sigma / stride, smoothing)
    if stride > 1:
        compact = F.interpolate(compact, size=size, mode="bilinear", align_corners=False)
    return compact.clamp(0.0, 1.0)


class SmoothMaxCompact(torch.nn.Module):
    """:func:`map_into_compact` as a module (no parameters), to end a network that outputs attribution maps.

    Example:
        >>> SmoothMaxCompact()(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(self, sigma_fraction: float = 5e-2, smoothing: float = 30.0, cells_per_sigma: float = 2.0) -> None:
        super().__init__()
        self.sigma_fraction, self.smoothing, self.cells_per_sigma = sigma_fraction, smoothing, cells_per_sigma

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return map_into_compact(mask, self.sigma_fraction, self.smoothing, self.cells_per_sigma)


class OrganMaskd(MapTransform):
    """The item's organ mask on its preprocessed image's grid, or the whole image when the item has none.

    ``organ_key`` holds a path: the mask is loaded, resized (nearest) to the spatial size of ``image_key`` (already
    loaded and resized) and binarized (> 0). An item without one (key absent, null, ``""``, or the folder MONAI's
    datalist loader makes of ``""``) gets all ones: the data contract's "a missing organ mask is the whole image".
    So every item of a data set with partial or no organ masks gets the same ``(1, H, W)`` layout.

    Example:
        >>> OrganMaskd()({"image": torch.zeros(1, 4, 4)})["organ"].sum().item()
        16.0
    """

    def __init__(self, image_key: str = "image", organ_key: str = "organ") -> None:
        super().__init__(keys=[organ_key], allow_missing_keys=True)
        self.image_key, self.organ_key = image_key, organ_key
        self.loader = LoadImage(image_only=True, ensure_channel_first=True)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        image = torch.as_tensor(d[self.image_key])
        path = d.get(self.organ_key)
        if not path or Path(path).is_dir():
            d[self.organ_key] = torch.ones_like(image[:1])
            return d
        organ = torch.as_tensor(self.loader(path))[:1].float()
        organ = F.interpolate(organ[None], size=tuple(image.shape[1:]), mode="nearest")[0]
        d[self.organ_key] = (organ > 0).to(image.dtype)
        return d
