"""Synthetic anatomy for the phantoms: a mammography-like and a chest-X-ray-like image with exact masks.

Every drawing function takes a ``numpy.random.Generator`` and returns float32 arrays on a square ``size × size``
grid with normalized coordinates ``x, y ∈ (0, 1)`` (``y`` points down, as image rows do). Nothing here draws a
random number from a global state, so one generator per image makes every image reproducible on its own.

Texture is power-law ("1/f^β") noise: white noise filtered in Fourier space so that its power spectrum falls as
``P(f) ∝ f^{−β}``. ``β ≈ 3`` matches the measured power spectra of mammographic parenchyma (Burgess et al., Med.
Phys. 28(4), 2001), the same field, thresholded inside a disc, gives the clumps of the TB-like opacities.

Lesions are *added* to the healthy anatomy with a profile that is strictly positive exactly on the lesion mask,
so the mask is exact: no pixel outside it is changed by the lesion, every pixel inside it is.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

__all__ = ["power_law_noise", "power_law_covariance", "mammo_anatomy", "chest_anatomy", "mammo_mass", "chest_opacity",
           "CHEST_TEXTURE_BETA", "CHEST_MEDIASTINUM_TEXTURE", "CHEST_NOISE_STD"]

CHEST_TEXTURE_BETA = 2.5  # spectral exponent of the lung texture ("vessels")
CHEST_MEDIASTINUM_TEXTURE = 0.03  # texture amplitude in the mediastinum (the lungs' is the Difficulty's texture)
CHEST_NOISE_STD = 0.02  # white noise over the body


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)`` in (0, 1), read-only, cached per size."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(axis, axis, indexing="ij")
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@lru_cache(maxsize=8)
def _power_law_filter(size: int, beta: float) -> np.ndarray:
    """Amplitude filter ``|f|^{−β/2}`` on the ``rfft2`` grid (zero at f = 0), cached per (size, β)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    radius = np.hypot(fy, fx)
    radius[0, 0] = np.inf
    return (radius ** (-beta / 2.0)).astype(np.float32)


def power_law_noise(size: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    """A ``size × size`` Gaussian field with power spectrum ``P(f) ∝ f^{−β}``, zero mean and unit variance.

    Args:
        size: side length in pixels.
        beta: spectral exponent β (0 = white noise, 3 = mammographic parenchyma).
        rng: the image's random generator.

    Example:
        >>> field = power_law_noise(64, 3.0, np.random.default_rng(0))
        >>> field.shape, round(float(field.std()), 3)
        ((64, 64), 1.0)
    """
    spectrum = np.fft.rfft2(rng.standard_normal((size, size), dtype=np.float32))
    field = np.fft.irfft2(spectrum * _power_law_filter(size, float(beta)), s=(size, size)).astype(np.float32)
    field -= field.mean()
    field /= field.std() + 1e-12
    return field


@lru_cache(maxsize=4)
def power_law_covariance(size: int, beta: float) -> np.ndarray:
    """Covariance of :func:`power_law_noise` between pixels ``(Δrow, Δcol)`` apart (periodic, 1 at 0), read-only.

    Example:
        >>> c = power_law_covariance(64, 3.0)
        >>> float(c[0, 0]), bool(c[0, 1] > c[0, 8] > 0)
        (1.0, True)
    """
    covariance = np.fft.irfft2(_power_law_filter(size, float(beta)).astype(np.float64) ** 2, s=(size, size))
    covariance /= covariance[0, 0]
    covariance.flags.writeable = False
    return covariance


def _harmonic_terms(rng: np.random.Generator, amplitude: float, orders=range(2, 6)) -> list[tuple[int, float, float]]:
    """Random ``(k, a_k, φ_k)`` of a smooth perturbation ``1 + Σ_k a_k cos(k·angle + φ_k)`` of a circle."""
    return [(order, rng.uniform(0.0, amplitude) / order, rng.uniform(0.0, 2.0 * np.pi)) for order in orders]


def _harmonic_radius(angle: np.ndarray, terms: list[tuple[int, float, float]]) -> np.ndarray:
    """``1 + Σ_k a_k cos(k·angle + φ_k)`` for the ``terms`` of :func:`_harmonic_terms`."""
    factor = np.ones_like(angle)
    for order, coefficient, phase in terms:
        factor += coefficient * np.cos(order * angle + phase)
    return factor


def mammo_anatomy(size: int, rng: np.random.Generator, texture: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A mediolateral-oblique-like breast: parenchyma, skin line, sometimes a pectoral wedge, black background.

    Args:
        size: side length in pixels.
        rng: the image's random generator.
        texture: amplitude of the 1/f^3 parenchymal texture (intensity units); dense glandular patches, the
            lesions' main camouflage, get twice this amplitude.

    Returns:
        ``(image, organ, thickness)``: the healthy image in [0, 1], the breast mask (pectoral muscle excluded) and
        the compressed-breast thickness profile in [0, 1] (used to scale lesion contrast).
    """
    x, y = _grid(size)
    depth, half_height, centre = rng.uniform(0.55, 0.85), rng.uniform(0.38, 0.47), rng.uniform(0.45, 0.55)
    u, v = x / depth, (y - centre) / half_height
    rho = np.sqrt(u * u + v * v) / _harmonic_radius(np.arctan2(v, u), _harmonic_terms(rng, amplitude=0.12))
    breast = rho < 1.0
    thickness = np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0))
    root_thickness = np.sqrt(thickness)

    parenchyma = power_law_noise(size, 3.0, rng)
    glandular = 1.0 / (1.0 + np.exp(-2.0 * (power_law_noise(size, 3.0, rng) - rng.uniform(-0.3, 0.6))))
    image = 0.24 + 0.30 * thickness + texture * (2.0 * glandular + parenchyma) * root_thickness

    skin_pixels = (1.0 - rho) * depth * size  # ≈ distance to the skin in pixels
    image += 0.10 * np.clip(1.0 - np.abs(skin_pixels - 1.0) / 1.5, 0.0, 1.0)

    organ = breast.copy()
    if rng.random() < 0.6:  # pectoral muscle: a slightly curved wedge in the upper chest-wall corner
        width, height = rng.uniform(0.15, 0.35), rng.uniform(0.35, 0.7)
        pectoral = x / width + y / height < 1.0 + rng.uniform(0.0, 0.5) * (x / width) * (y / height)
        image = np.where(pectoral, 0.62 + 0.03 * parenchyma + 0.05 * (1.0 - y), image)
        organ &= ~pectoral
        breast |= pectoral
    image *= breast
    if rng.random() < 0.5:  # right breast: chest wall on the image's right
        image, organ, thickness = image[:, ::-1], organ[:, ::-1], thickness[:, ::-1]
    return (np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(organ),
            np.ascontiguousarray(thickness, dtype=np.float32))


def mammo_mass(size: int, rng: np.random.Generator, organ: np.ndarray, radius: float, spiculated: bool) -> np.ndarray:
    """Profile of one irregular (or spiculated) mass, > 0 exactly on its support, centred inside the organ.

    Args:
        size: side length in pixels.
        rng: the image's random generator.
        organ: breast mask; the centre is drawn where the mass fits inside it.
        radius: mean radius as a fraction of the image width.
        spiculated: add thin radiating spicules to the irregular outline.

    Returns:
        float32 profile in [0, 1]; zero outside the mass and outside ``organ``.
    """
    x, y = _grid(size)
    inside = ndimage.distance_transform_edt(organ)
    candidates = np.flatnonzero(inside >= max(1.0, 0.8 * radius * size))
    if candidates.size == 0:
        candidates = np.flatnonzero(inside >= inside.max())
    row, col = np.unravel_index(rng.choice(candidates), organ.shape)
    terms = _harmonic_terms(rng, amplitude=0.5, orders=range(2, 7))
    spikes = []
    if spiculated:  # thin spicules: exp(P·(cos Δ − 1)) ≈ cos^P Δ, a narrow peak around each direction
        for direction in rng.uniform(0.0, 2.0 * np.pi, size=rng.integers(5, 11)):
            spikes.append((direction, rng.uniform(150.0, 400.0), rng.uniform(0.6, 1.3)))

    def outline(angle: np.ndarray) -> np.ndarray:
        extent = radius * _harmonic_radius(angle, terms)
        for direction, sharpness, length in spikes:
            extent = extent + radius * length * np.exp(sharpness * (np.cos(angle - direction) - 1.0))
        return extent

    # the mass fits in a window of the outline's largest extent (found on a fine angle grid): compute only there
    reach = float(outline(np.linspace(-np.pi, np.pi, 4096, dtype=np.float32)).max()) * 1.05 * size + 2
    window = tuple(slice(max(0, c - int(reach)), c + int(reach) + 1) for c in (row, col))
    dx, dy = x[window] - x[row, col], y[window] - y[row, col]
    extent = outline(np.arctan2(dy, dx))
    profile = np.zeros(organ.shape, dtype=np.float32)
    profile[window] = np.sqrt(np.clip(1.0 - (dx * dx + dy * dy) / (extent * extent), 0.0, 1.0))
    return profile * organ


def chest_anatomy(size: int, rng: np.random.Generator, texture: float) -> tuple[np.ndarray, np.ndarray]:
    """A posteroanterior-chest-like image: two lung fields, ribs, clavicles, mediastinum, heart, diaphragm.

    Args:
        size: side length in pixels.
        rng: the image's random generator.
        texture: amplitude of the 1/f^2.5 lung texture (vessels, intensity units).

    Returns:
        ``(image, organ)``: the healthy image in [0, 1] and the lung-field mask.
    """
    x, y = _grid(size)
    mid = 0.5 + rng.uniform(-0.02, 0.02)
    across, along = ((x - mid) / 0.48) ** 2, ((y - 0.62) / 0.75) ** 2
    body = across * across + along * along < 1.0  # a rounded rectangle: the torso
    image = np.where(body, 0.52 + 0.12 * y, 0.04).astype(np.float32)

    apex, base = rng.uniform(0.1, 0.16), rng.uniform(0.72, 0.82)
    centre_y, half_height = (apex + base) / 2.0, (base - apex) / 2.0
    lungs = np.zeros_like(body)
    for side in (-1.0, 1.0):
        centre_x = mid + side * rng.uniform(0.21, 0.24)
        half_width = rng.uniform(0.15, 0.18) * (0.65 + 0.35 * np.clip((y - apex) / half_height, 0.0, 1.0))
        lungs |= ((x - centre_x) / half_width) ** 2 + ((y - centre_y) / half_height) ** 2 < 1.0
    heart_x, heart_y = mid + rng.uniform(0.04, 0.08), base - rng.uniform(0.06, 0.1)
    heart = ((x - heart_x) / rng.uniform(0.15, 0.19)) ** 2 + ((y - heart_y) / rng.uniform(0.12, 0.16)) ** 2 < 1.0
    mediastinum = (np.abs(x - mid) < 0.06 + 0.03 * y) | heart
    lungs &= ~mediastinum

    vessels = power_law_noise(size, CHEST_TEXTURE_BETA, rng)
    image = np.where(lungs, 0.16 + 0.10 * y + texture * vessels, image)
    image = np.where(mediastinum & body, 0.70 + CHEST_MEDIASTINUM_TEXTURE * vessels, image)

    # posterior ribs: ten arcs of one shape, curving down from the spine, visible through the lungs
    lateral = np.abs(x - mid)
    spacing = (base - apex) / 9.5
    phase = (y - 0.9 * (lateral - 0.12).clip(0.0) ** 2 + 0.15 * (0.12 - lateral).clip(0.0) - apex + 0.02) / spacing
    rib = np.clip(np.round(phase), 0, 9)
    jitter = rng.uniform(-0.01, 0.01, size=10).astype(np.float32)[rib.astype(int)]
    bones = np.clip(1.0 - ((phase - rib) * spacing - jitter) ** 2 / 0.012**2, 0.0, 1.0)
    clavicle = apex - 0.01 - 0.25 * (lateral - 0.08)
    bones += np.clip(1.0 - ((y - clavicle) / 0.013) ** 2, 0.0, 1.0) * (lateral > 0.04)
    image += 0.09 * np.clip(bones, 0.0, 1.0) * body
    image += CHEST_NOISE_STD * rng.standard_normal(image.shape, dtype=np.float32) * body
    return np.clip(image, 0.0, 1.0).astype(np.float32), lungs


def chest_opacity(size: int, rng: np.random.Generator, organ: np.ndarray, radius: float) -> np.ndarray:
    """Profile of one TB-like patchy opacity, > 0 exactly on its support, mostly in the upper lung zones.

    Args:
        size: side length in pixels.
        rng: the image's random generator.
        organ: lung mask; the centre falls in its upper half with probability 0.75.
        radius: radius of the affected zone as a fraction of the image width.

    Returns:
        float32 profile in [0, 1]; zero outside the patches and outside ``organ``.
    """
    x, y = _grid(size)
    rows = np.flatnonzero(organ.any(axis=1))
    upper = organ.copy()
    upper[(rows[0] + rows[-1]) // 2 :] = False
    candidates = np.flatnonzero(upper if rng.random() < 0.75 and upper.any() else organ)
    row, col = np.unravel_index(rng.choice(candidates), organ.shape)
    zone = np.clip(1.0 - ((x - x[row, col]) ** 2 + (y - y[row, col]) ** 2) / radius**2, 0.0, 1.0)
    clumps = np.clip(power_law_noise(size, 3.0, rng) + 0.5, 0.0, None) * organ
    if not clumps[zone > 0].any():  # a zone that caught no clump still shows its centre
        clumps[row, col] = 1.0
    clumps /= clumps[zone > 0].max()
    # a consolidation: dense (≥ 40 % of the peak) wherever a clump reaches, fading towards the zone's rim
    return (np.sqrt(zone) * np.where(clumps > 0, 0.4 + 0.6 * clumps, 0.0)).astype(np.float32)
