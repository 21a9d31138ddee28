"""Breast (organ) mask of a mammogram by thresholding and simple morphology.

Film-screen mammograms (MIAS, DDSM) carry black padding, bright film labels and scanner marks beside the breast,
and the pectoral muscle in the upper chest-wall corner of mediolateral-oblique views. The mask keeps the breast:

1. smooth (Gaussian, σ = 1 % of the width) and threshold at a fraction of the tissue intensity (robust to labels);
2. keep the largest connected component (labels and marks are separate blobs), fill its holes, open it;
3. remove the pectoral muscle: the bright component touching the chest-wall edge in the upper half of the image,
   found by a second threshold inside the breast (halfway between the median of the chest-wall corner and that of
   the breast), kept only when it is wedge-like (touches the top or the chest-wall edge near the top and is a
   moderate part of the breast).

This is the "threshold + largest component" recipe of the paper's pre-processing, not a segmentation model:
pectoral removal fails on some dense breasts and is reported as such (docs/phantoms.md).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["breast_mask"]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


def breast_mask(image: np.ndarray, remove_pectoral: bool = True) -> np.ndarray:
    """Breast mask (uint8 {0, 1}) of a 2-D mammogram with a dark background.

    Args:
        image: (H, W) array, any numeric type; bright = dense tissue.
        remove_pectoral: also cut the pectoral-muscle wedge.

    Raises:
        ValueError: not a 2-D image, or an image without any tissue (constant).

    Example:
        >>> image = np.zeros((64, 64)); image[8:56, :40] = 0.5
        >>> int(breast_mask(image).sum()) > 1500
        True
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"breast_mask expects a 2-D (H, W) image, got shape {image.shape}.")
    low, high = np.percentile(image, [1.0, 99.5])
    if high <= low:
        raise ValueError("breast_mask got a constant image: no tissue to segment.")
    width = image.shape[1]
    smooth = ndimage.gaussian_filter((image - low) / (high - low), sigma=max(1.0, 0.01 * width))
    tissue = smooth > max(0.06, 0.25 * np.median(smooth[smooth > 0.1])) if (smooth > 0.1).any() else smooth > 0.06
    radius = max(1, round(0.01 * width))
    breast = ndimage.binary_opening(_largest_component(tissue), iterations=radius)
    breast = ndimage.binary_fill_holes(_largest_component(breast))
    if remove_pectoral and breast.any():
        breast &= ~_pectoral(smooth, breast)
    return breast.astype(np.uint8)


def _pectoral(smooth: np.ndarray, breast: np.ndarray) -> np.ndarray:
    """The pectoral wedge grown from the breast's upper chest-wall corner, or nothing when it is not wedge-like."""
    rows, cols = ndimage.find_objects(breast.astype(np.uint8))[0]
    view, values = breast[rows, cols], smooth[rows, cols]
    height, width = view.shape
    columns = view.sum(axis=0)
    chest_wall_left = columns[: width // 2].sum() >= columns[width // 2 :].sum()
    if not chest_wall_left:
        view, values = view[:, ::-1], values[:, ::-1]
    corner = np.zeros_like(view)
    corner[: max(1, height // 10), : max(1, width // 10)] = True
    corner &= view
    wedge = np.zeros_like(view)
    if corner.any():
        level = (np.median(values[corner]) + np.median(values[view])) / 2.0  # halfway from muscle to tissue
        grown = view & (values > level)
        grown[height // 2 :] = False
        labels, _ = ndimage.label(grown)
        seeds = np.unique(labels[corner])
        wedge = np.isin(labels, seeds[seeds > 0])
        # the muscle's edge runs from the top edge down to the chest wall: a width that shrinks row by row
        reach = np.where(wedge.any(axis=1), width - 1 - np.argmax(wedge[:, ::-1], axis=1), -1)
        reach = np.maximum.accumulate(reach[::-1])[::-1]
        wedge = (np.arange(width)[None, :] <= reach[:, None]) & view
        if not 0.02 < wedge.sum() / view.sum() < 0.35:
            wedge[:] = False
    full = np.zeros_like(breast)
    full[rows, cols] = wedge if chest_wall_left else wedge[:, ::-1]
    return full
