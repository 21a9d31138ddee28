"""Partial convolution (Liu et al., ECCV 2018, "Image inpainting for irregular holes using partial convolutions", Eq. 1-2).

With ``X`` the features in the current sliding window, ``M`` the binary mask window (1 = valid pixel, 0 = hole),
``W``, ``b`` the filter weights and bias, and ``1`` an all-ones window of the mask's size::

    x' = W^T (X ⊙ M) · sum(1) / sum(M) + b   if sum(M) > 0
    x' = 0                                    otherwise                         (Eq. 1)

    m' = 1 if sum(M) > 0 else 0                                                (Eq. 2)

so every output depends only on valid inputs, and after enough layers the hole is filled (``m'`` becomes all ones).
Compared with NVIDIA's reference implementation the all-ones kernel is a registered, non-persistent buffer (it moves
with ``.to(device)`` and is not written into state dicts) and nothing is cached by input shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PartialConv2d"]


class PartialConv2d(nn.Conv2d):
    """2D partial convolution: ``forward(x, mask) -> (output, updated_mask)``.

    The weights, bias and hyper-parameters are those of ``nn.Conv2d`` (zero padding, ``groups=1``), so the state dict
    is a plain convolution's. The mask is single-channel ``(B, 1, H, W)`` (shared by all input channels) or, with
    ``multi_channel_mask=True``, one mask per input channel ``(B, in_channels, H, W)``; the updated mask has the
    same layout, i.e. ``(B, 1, H', W')`` or ``(B, out_channels, H', W')``. :meth:`forward_parts` takes the input as
    parts of a channel concatenation with one mask channel each (a U-Net decoder's upsampled and skip features),
    without building the per-channel mask. Masks are expected binary; thresholding is the caller's job (see
    :class:`cfattr_monai.networks.inpainter.PartialConvUNet`). The mask update runs without gradient, as in Liu et al.

    ``forward`` works under ``torch.jit.script`` and ``torch.jit.trace`` (both tested; :meth:`forward_parts` is not
    compiled); a traced module checks the mask shape only for the traced input shapes (tracing records Python
    conditions as constants), so prefer scripting.

    Args:
        in_channels: input feature channels.
        out_channels: output feature channels.
        kernel_size: convolution kernel size.
        stride: convolution stride.
        padding: zero padding; padded pixels count as holes, as in ``sum(1)/sum(M)`` of Liu et al.
        dilation: convolution dilation.
        bias: add a learnable bias ``b`` on valid outputs (Eq. 1).
        multi_channel_mask: one mask channel per input channel instead of one shared mask.

    Example:
        >>> conv = PartialConv2d(1, 4, kernel_size=3, padding=1)
        >>> x, mask = torch.rand(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
        >>> mask[:, :, 2:6, 2:6] = 0
        >>> y, new_mask = conv(x, mask)
        >>> y.shape, new_mask.shape, int(new_mask.sum())
        (torch.Size([2, 4, 8, 8]), torch.Size([2, 1, 8, 8]), 120)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        multi_channel_mask: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=bias)
        self.multi_channel_mask = multi_channel_mask
        mask_channels = in_channels if multi_channel_mask else 1
        self.register_buffer("mask_kernel", torch.ones(1, mask_channels, *self.kernel_size), persistent=False)
        self.window_size = float(mask_channels * self.kernel_size[0] * self.kernel_size[1])  # sum(1) in Eq. 1

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Partial convolution of ``x`` (B, C, H, W) with valid ``mask``; returns ``(output, updated_mask)``."""
        expected = self.mask_kernel.shape[1]
        if mask.ndim != 4 or mask.shape[1] != expected or mask.shape[2:] != x.shape[2:] or mask.shape[0] != x.shape[0]:
            raise ValueError(
                f"PartialConv2d: mask must have shape (B, {expected}, H, W) matching x {list(x.shape)}, got "
                f"{list(mask.shape)}; pass a (B, 1, H, W) mask, or set multi_channel_mask=True for one per channel."
            )
        with torch.no_grad():
            mask_sum = F.conv2d(mask, self.mask_kernel, None, self.stride, self.padding, self.dilation)  # sum(M)
        return self._renormalized(x * mask, mask_sum, x.dtype)

    def forward_parts(self, parts: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Partial convolution of the channel concatenation of ``parts``, each part with its own one-channel mask.

        The same result as :meth:`forward` on ``torch.cat(parts, 1)`` with the multi-channel mask that repeats each
        part's mask over its channels (a U-Net decoder's upsampled features and skip features), without building
        that mask: ``sum(M)`` is one convolution of the stacked one-channel masks with a kernel holding each part's
        channel count. Needs ``multi_channel_mask=True``; returns ``(output, updated_mask)`` as :meth:`forward`.

        Example:
            >>> conv = PartialConv2d(3, 4, kernel_size=3, padding=1, multi_channel_mask=True)
            >>> parts, masks = [torch.rand(1, 2, 8, 8), torch.rand(1, 1, 8, 8)], [torch.ones(1, 1, 8, 8)] * 2
            >>> [tuple(t.shape) for t in conv.forward_parts(parts, masks)]
            [(1, 4, 8, 8), (1, 4, 8, 8)]
        """
        self._check_parts(parts, masks)
        with torch.no_grad():
            # the kernel is filled on the masks' device: no copy from the host, which would wait for a GPU
            window = (1, 1, self.kernel_size[0], self.kernel_size[1])
            kernel = torch.cat([masks[0].new_full(window, float(part.shape[1])) for part in parts], 1)
            mask_sum = F.conv2d(torch.cat(masks, 1), kernel, None, self.stride, self.padding, self.dilation)
        masked_x = torch.cat([part * mask for part, mask in zip(parts, masks)], 1)
        return self._renormalized(masked_x, mask_sum, parts[0].dtype)

    def _check_parts(self, parts: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
        """Raise ValueError, naming the fix, unless :meth:`forward_parts` can take ``parts`` and ``masks``."""
        name = "PartialConv2d.forward_parts"
        if not self.multi_channel_mask:
            raise ValueError(f"{name}: needs a convolution built with multi_channel_mask=True (sum(1) counts every "
                             "input channel); build it so.")
        if len(parts) == 0 or len(masks) != len(parts):
            raise ValueError(f"{name}: expected one or more parts and one mask per part, got {len(parts)} part(s) and "
                             f"{len(masks)} mask(s); pass a (B, 1, H, W) mask for each (B, C_i, H, W) part.")
        grid = (parts[0].shape[0], *parts[0].shape[2:])  # B, H, W
        for part, mask in zip(parts, masks):
            if part.ndim != 4 or (part.shape[0], *part.shape[2:]) != grid:
                raise ValueError(f"{name}: every part must be (B, C_i, H, W) with the first part's B, H and W, got "
                                 f"part shapes {[list(p.shape) for p in parts]}; resize the parts to one grid.")
            if mask.shape != (part.shape[0], 1, *part.shape[2:]):
                raise ValueError(f"{name}: each mask must have shape (B, 1, H, W) matching its part "
                                 f"{list(part.shape)}, got {list(mask.shape)}; pass one single-channel mask per part.")
        channels = [part.shape[1] for part in parts]
        if sum(channels) != self.in_channels:
            raise ValueError(f"{name}: the parts' channels {channels} sum to {sum(channels)}, the convolution takes "
                             f"{self.in_channels}; pass parts whose channels add up to in_channels.")

    def _renormalized(
        self, masked_x: torch.Tensor, mask_sum: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 1 on the masked input ``X ⊙ M`` given ``sum(M)`` per window, and the updated mask of Eq. 2 in the
        input's ``dtype`` (under autocast the masked input's may differ)."""
        with torch.no_grad():
            updated_mask = (mask_sum > 0).to(dtype)  # Eq. 2
            ratio = self.window_size / mask_sum.clamp(min=1e-8) * updated_mask  # sum(1)/sum(M), 0 where sum(M)=0
        output = F.conv2d(masked_x, self.weight, None, self.stride, self.padding, self.dilation) * ratio
        bias = self.bias
        if bias is not None:
            output = (output + bias.view(1, -1, 1, 1)) * updated_mask
        if self.multi_channel_mask:
            updated_mask = updated_mask.expand(-1, self.out_channels, -1, -1)
        return output, updated_mask
