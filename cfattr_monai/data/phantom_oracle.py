"""The best fill a marginalizer π can give a chest phantom: the exact conditional law of its random texture.

Outside its lesions a chest phantom (:func:`~cfattr_monai.data.phantom_anatomy.chest_anatomy`) is a deterministic
anatomy ``A`` plus a Gaussian random part ``R = s·v + σ·n``: the lung texture (``v`` the unit-variance 1/f^2.5 field of
:func:`~cfattr_monai.data.phantom_anatomy.power_law_noise`, ``s`` the data set's texture amplitude in the lungs and
``CHEST_MEDIASTINUM_TEXTURE`` in the mediastinum) and white noise (``σ = CHEST_NOISE_STD`` over the body). Drawing
an image again with its normal draws returned as zeros gives ``A`` exactly, so for a hole ``H`` and the pixels ``C``
around it, with ``K`` the covariance of ``R`` (plus the 8-bit quantization's LSB²/12 on the diagonal)::

    E[R_H | R_C] = K_HC K_CC⁻¹ R_C                       best deterministic fill (kriging), mode "mean"
    R*_H = E[R_H | R_C] + g_H − K_HC K_CC⁻¹ g_C          an exact conditional sample (g an independent R), "sample"

and ``A_H`` alone (the anatomy without texture) is mode ``"anatomy"``. ``R_C`` is taken from the healthy twin, so a
lesion beside the hole does not leak into the fill. These are reference fills that only a phantom allows: an
inpainter that sees the context only can at best approach them. ``scripts/oracle_fills.py`` runs the Fig. 1c study
with them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from scipy.linalg import solve
from scipy.ndimage import distance_transform_edt

from cfattr_monai.data.phantom_anatomy import (CHEST_MEDIASTINUM_TEXTURE, CHEST_NOISE_STD, CHEST_TEXTURE_BETA,
                                               power_law_covariance, power_law_noise)
from cfattr_monai.data.phantoms import generate_phantom
from cfattr_monai.transforms.marginalize import Marginalizer

__all__ = ["chest_phantom_parts", "conditional_texture_fill", "PhantomOracleMarginalizer"]

_MODES = ("mean", "sample", "anatomy")


class _ZeroedNormals:
    """A generator whose ``standard_normal`` draws are made (so the stream stays the same) but returned as zeros from
    the ``zeroed``-th calls on (0-based); the draws are kept in ``draws``."""

    def __init__(self, rng: np.random.Generator, zeroed: int) -> None:
        self._rng, self._zeroed, self.draws = rng, zeroed, []

    def standard_normal(self, *args, **kwargs):
        draw = self._rng.standard_normal(*args, **kwargs)
        self.draws.append(draw)
        return np.zeros_like(draw) if len(self.draws) > self._zeroed else draw

    def __getattr__(self, name: str):
        return getattr(self._rng, name)


class _Replay:
    """A generator whose one ``standard_normal`` call returns a recorded draw."""

    def __init__(self, draw: np.ndarray) -> None:
        self._draw = draw

    def standard_normal(self, *args, **kwargs):
        return self._draw


def chest_phantom_parts(size: int, seed: int, index: int, difficulty: dict, label: int = 0) -> dict[str, np.ndarray]:
    """Split chest phantom ``index`` into its lesions, its anatomy and the scales of its random part.

    Args:
        size, seed, difficulty: the data set's ``phantoms.json`` values.
        index: the image's generator index (``chest_<index>.png``).
        label: the image's label; its healthy twin (the same draw without lesions) is split.

    Returns:
        float64 arrays (H, W) in the generator's layout and intensity units: ``image`` (as drawn with ``label``, film
        label included), ``twin`` (the healthy twin), ``anatomy`` ``A``, ``texture`` ``s``, ``noise`` ``σ``.

    Raises:
        ValueError: ``A + s·v + σ·n`` does not reproduce the twin: the generator changed and this module must follow.
    """
    def draw(rng, with_label=0):
        return generate_phantom("chest", size, rng, label=with_label, **difficulty)

    twin = draw(np.random.default_rng([seed, index]))
    zeroed = _ZeroedNormals(np.random.default_rng([seed, index]), zeroed=0)
    anatomy = draw(zeroed)["image"].astype(np.float64)
    textured = draw(_ZeroedNormals(np.random.default_rng([seed, index]), zeroed=1))["image"].astype(np.float64)
    if len(zeroed.draws) != 2:
        raise ValueError(f"chest_phantom_parts: the chest generator made {len(zeroed.draws)} normal draws, this module "
                         "models 2 (lung texture, white noise); update cfattr_monai.data.phantom_oracle.")
    image = twin["image"].astype(np.float64)
    field = power_law_noise(size, CHEST_TEXTURE_BETA, _Replay(zeroed.draws[0])).astype(np.float64)
    mediastinum = np.where(textured != anatomy, CHEST_MEDIASTINUM_TEXTURE, 0.0)
    texture = np.where(twin["organ"] > 0, difficulty["texture"], mediastinum)
    noise = CHEST_NOISE_STD * (image != textured)  # the body: where the white noise was added
    inside = (image > 0) & (image < 1)  # clipping and the film label aside
    error = np.abs(anatomy + texture * field + noise * zeroed.draws[1] - image)[inside].max()
    if error > 1e-4:
        raise ValueError(f"chest_phantom_parts: anatomy + texture + noise misses phantom {index} by {error:.2g}; the "
                         "chest generator changed: update cfattr_monai.data.phantom_oracle.")
    actual = draw(np.random.default_rng([seed, index]), label)["image"].astype(np.float64) if label else image
    return {"image": actual, "twin": image, "anatomy": anatomy, "texture": texture, "noise": noise}


def conditional_texture_fill(
    residual: np.ndarray,
    texture: np.ndarray,
    noise_var: np.ndarray,
    hole: np.ndarray,
    rng: np.random.Generator | None = None,
    radius: int = 10,
) -> np.ndarray:
    """``E[R_H | R_C]`` (``rng`` None) or a conditional sample ``R*_H`` of the random part (module doc), on ``hole``.

    Args:
        residual: ``R`` (H, W), known outside the hole.
        texture: ``s`` (H, W); ``noise_var``: the white variance per pixel (H, W).
        hole: bool (H, W).
        rng: draws ``g`` for a conditional sample; None gives the conditional mean.
        radius: context ``C`` = the pixels within this distance of the hole. On 12 holes of the 128² chest test
            split, 5, 10 and 20 px gave the same error (RMS 0.027); the 10 px and 20 px means differ by RMS 0.0001.

    Returns:
        The values for the hole pixels, in ``np.argwhere(hole)`` order.
    """
    size = residual.shape[0]
    covariance = power_law_covariance(size, CHEST_TEXTURE_BETA)
    context = (distance_transform_edt(~hole) <= radius) & ~hole
    points = np.concatenate([np.argwhere(hole), np.argwhere(context)])
    n_hole = int(hole.sum())
    if n_hole == 0 or len(points) == n_hole:
        return np.zeros(n_hole)
    rows, cols = points[:, 0], points[:, 1]
    scale = texture[rows, cols]
    kernel = scale[:, None] * scale[None, :] * covariance[(rows[:, None] - rows) % size, (cols[:, None] - cols) % size]
    kernel[np.diag_indices_from(kernel)] += noise_var[rows, cols]
    weights = solve(kernel[n_hole:, n_hole:], kernel[n_hole:, :n_hole], assume_a="pos").T  # Cholesky
    values = weights @ residual[rows[n_hole:], cols[n_hole:]]
    if rng is not None:
        fresh = texture * power_law_noise(size, CHEST_TEXTURE_BETA, rng)
        fresh += np.sqrt(noise_var) * rng.standard_normal(residual.shape)
        values += fresh[rows[:n_hole], cols[:n_hole]] - weights @ fresh[rows[n_hole:], cols[n_hole:]]
    return values


def _as_stored(image: np.ndarray) -> np.ndarray:
    """The intensities a phantom data set stores for ``image``: 8-bit, rounded in float32 as the writer rounds."""
    return np.round(image.astype(np.float32) * 255.0).astype(np.float64) / 255.0


class PhantomOracleMarginalizer(Marginalizer):
    """π with the exact conditional fill of a chest phantom's texture (module doc), for the images of one split.

    Each image handed to :meth:`fill` must be one of ``images`` (as
    :func:`~cfattr_monai.metrics.marginalization.load_split` loads them, no resizing): it is recognized by its pixels
    and re-drawn from its generator.

    Args:
        datalist: ``datalist.json`` of a chest phantom data set (``phantoms.json`` beside it).
        split: the datalist key the images come from.
        images: the loaded images of ``split``, (N, 1, H, W), in datalist order.
        mode: ``"mean"`` (kriging), ``"sample"`` (a conditional sample) or ``"anatomy"`` (the anatomy alone).
        seed: seeds the draws of ``"sample"``.
        radius: context radius of :func:`conditional_texture_fill`.
        threshold: hard-hole threshold on M.

    Example:
        >>> import tempfile
        >>> from cfattr_monai.data.phantoms import write_phantom_dataset
        >>> from cfattr_monai.metrics.marginalization import load_split
        >>> datalist = write_phantom_dataset(tempfile.mkdtemp() + "/chest", kind="chest", n=10, size=64)
        >>> images = load_split(datalist, "test")["image"]
        >>> pi = PhantomOracleMarginalizer(datalist, "test", images)
        >>> hole = torch.zeros_like(images)
        >>> hole[..., 20:28, 12:20] = 1.0
        >>> pi(images, hole).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(self, datalist, split: str, images: torch.Tensor, mode: str = "mean", seed: int = 0,
                 radius: int = 10, threshold: float = 0.55) -> None:
        super().__init__(threshold)
        if mode not in _MODES:
            raise ValueError(f"PhantomOracleMarginalizer: mode must be one of {_MODES}, got {mode!r}.")
        datalist = Path(datalist)
        recorded = datalist.parent / "phantoms.json"
        if not recorded.is_file():
            raise ValueError(f"{recorded} not found: the oracle fill needs a phantom data set written by "
                             "write_phantom_dataset.")
        parameters = json.loads(recorded.read_text())
        if parameters["kind"] != "chest":
            raise ValueError(f"{recorded}: kind {parameters['kind']!r}; the oracle fill models the chest phantoms "
                             "only.")
        items = json.loads(datalist.read_text())[split]
        size = parameters["size"]
        if len(items) != len(images) or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"PhantomOracleMarginalizer: {len(images)} images of {list(images.shape[-2:])} for the "
                             f"{len(items)} items of {split!r} at {parameters['size']}²; pass load_split(datalist, "
                             f"{split!r})['image'] without resizing.")
        self.mode, self.radius, self.rng = mode, radius, np.random.default_rng(seed)
        self.parts = {}
        for item, image in zip(items, images):
            index = int(Path(item["image"]).stem.rpartition("_")[2])
            parts = chest_phantom_parts(parameters["size"], parameters["seed"], index, parameters["difficulty"],
                                        int(item["label"]))
            path = datalist.parent / item["image"]
            self.parts[self._key(image)] = self._as_loaded(parts, image[0].double().numpy(), path)

    @staticmethod
    def _key(image: torch.Tensor) -> str:
        return hashlib.sha1(image.detach().cpu().float().numpy().tobytes()).hexdigest()

    @staticmethod
    def _as_loaded(parts: dict, loaded: np.ndarray, path: Path) -> dict[str, np.ndarray]:
        """The parts in the loaded image's layout and intensity scale (8-bit PNG, min-max scaled, maybe transposed)."""
        quantized = _as_stored(parts["image"])
        low, gain = quantized.min(), 1.0 / (quantized.max() - quantized.min())
        for layout in (np.transpose, np.asarray):
            if np.abs(layout((quantized - low) * gain) - loaded).max() < 1e-4:
                twin = (_as_stored(parts["twin"]) - low) * gain
                anatomy = (parts["anatomy"] - low) * gain
                return {"anatomy": layout(anatomy), "residual": layout(twin - anatomy),
                        "texture": layout(parts["texture"] * gain),
                        "noise_var": layout((parts["noise"] * gain) ** 2 + gain**2 / (12 * 255.0**2))}
        raise ValueError(f"{path}: the loaded image is not its phantom re-drawn from phantoms.json; was the data set "
                         "edited or resized? Regenerate it with `cfattr phantoms`.")

    def fill(self, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        out = image.clone()
        for b in range(len(image)):
            parts = self.parts.get(self._key(image[b]))
            if parts is None:
                raise ValueError("PhantomOracleMarginalizer: an image that is not one of the split's images; it can "
                                 "only fill the images it was built with.")
            mask = hole[b, 0].cpu().numpy() > 0
            values = np.zeros(int(mask.sum()))
            if self.mode != "anatomy":
                rng = self.rng if self.mode == "sample" else None
                values = conditional_texture_fill(parts["residual"], parts["texture"], parts["noise_var"], mask, rng,
                                                  self.radius)
            filled = parts["anatomy"].copy()
            filled[mask] += values
            out[b, 0] = torch.from_numpy(np.clip(filled, 0.0, 1.0)).to(image)
        return out
