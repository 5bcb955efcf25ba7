"""CPU inference kernels for the DiffWave network: the residual stack tile by tile, time-major, in fp32 or bf16.

`DiffWave.forward` and `DiffWave.condition` call these when they apply (`tile_gemm_dtype`): CPU, no autograd,
float32 input, and either no autocast (fp32 GEMMs) or CPU autocast to bf16 (bf16 GEMMs). Callers see the same
function as the whole-signal loop of `model/diffwave.py`, within the rounding of the precision.

Why tiles: every layer's temporaries are [tile, 2C] scratch tensors reused by all tiles (the whole-signal loop
allocates [2C, N] arrays, page-faulted in afresh at every layer and step), and, time-major (channels last),
each tile's work is plain matrix products on row slices plus a few elementwise passes (1.7x faster than
channel-major tiles for BASE on 5 s with 2 threads). Each tile reads a halo of `dilation` samples per side
from its neighbours, and zeros beyond the signal, as the conv's zero padding does.

bf16: the GEMMs (dilated conv as one product over the three taps side by side, output projection) take bf16
operands; the residual stream, the skip sum, the pre-activation's bias and conditioning and the gate stay in
fp32. bf16 pays only on CPUs with bf16 matrix units (AMX, AVX512-BF16); elsewhere PyTorch emulates it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

INFERENCE_TILE = 4096  # samples per tile


def tile_gemm_dtype(x: Tensor) -> torch.dtype | None:
    """The GEMM dtype of the tiled forward for input x (float32 or bfloat16), or None where the whole-signal
    loop runs (autograd, a GPU, a non-float32 input, autocast to anything but CPU bf16)."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    if not torch.is_autocast_enabled("cpu"):
        return torch.float32
    return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None


class TileWeights(NamedTuple):
    """One residual layer's weights for the time-major (channels-last) tiles.

    The filter half of the dilated conv is scaled by -2 so that one sigmoid over all 2C channels gives both
    halves of the gate, with tanh(f) = 1 - 2 sigmoid(-2 f): a third of the cost of a separate tanh, equal
    to it within float32 rounding.
    """

    taps: tuple[Tensor, Tensor, Tensor]  # [C, 2C] each, for the samples t - d, t, t + d (fp32 GEMMs)
    bias: Tensor  # [2C], times `scale`
    scale: Tensor  # [2C]: 1 on the gate half, -2 on the filter half
    residual: Tensor  # [C, C]
    residual_bias: Tensor  # [C]
    skip: Tensor  # [C, C]
    skip_bias: Tensor  # [C]
    stacked_taps: Tensor | None  # bf16 GEMMs: [3C, 2C], the taps one above the other
    outputs: Tensor | None  # bf16 GEMMs: [C, 2C], residual and skip side by side


def tile_weights(dilated_conv: nn.Conv1d, output_projection: nn.Conv1d, gemm_dtype: torch.dtype) -> TileWeights:
    """One layer's weights laid out for `tile_forward` (a few small copies, cheap per forward)."""
    channels = output_projection.in_channels
    scale = torch.ones_like(dilated_conv.bias)
    scale[channels:] = -2.0  # exact: a power of two
    weight = dilated_conv.weight * scale[:, None, None]
    out_weight, out_bias = output_projection.weight[:, :, 0], output_projection.bias
    taps = tuple(weight[:, :, k].t().contiguous() for k in range(3))
    low = gemm_dtype != torch.float32
    return TileWeights(taps=taps, bias=dilated_conv.bias * scale, scale=scale,
                       residual=out_weight[:channels].t().contiguous(), residual_bias=out_bias[:channels],
                       skip=out_weight[channels:].t().contiguous(), skip_bias=out_bias[channels:],
                       stacked_taps=torch.cat(taps).to(gemm_dtype) if low else None,
                       outputs=out_weight.t().to(gemm_dtype).contiguous() if low else None)


class TileBuffers:
    """Scratch tensors of one tiled forward, reused by every tile of every layer (no fresh allocations)."""

    def __init__(self, h: Tensor, max_dilation: int, gemm_dtype: torch.dtype) -> None:
        channels = h.shape[-1]
        self.conv_input = h.new_empty(INFERENCE_TILE + 2 * max_dilation, channels)
        self.pre_activation = h.new_empty(INFERENCE_TILE, 2 * channels)
        self.gated = h.new_empty(INFERENCE_TILE, channels)
        if gemm_dtype != torch.float32:  # low-precision operands and products of the two GEMMs
            self.columns = h.new_empty(INFERENCE_TILE, 3 * channels, dtype=gemm_dtype)
            self.products = h.new_empty(INFERENCE_TILE, 2 * channels, dtype=gemm_dtype)
            self.gated_low = h.new_empty(INFERENCE_TILE, channels, dtype=gemm_dtype)


def tile_forward(weights: TileWeights, conv_input: Tensor, dilation: int, bias: Tensor,
                 conditioning: Tensor | None, buffers: TileBuffers, step: Tensor | None = None) -> Tensor:
    """The gated activation [T, C] (fp32) of one time-major tile, from its conv input [T + 2 * dilation, C].

    fp32: the dilated conv is three matrix products on row-shifted views of the same rows (no im2col copy);
    `bias` [2C] is added to it, scaled as the weights are. bf16: the three shifted views, plus `step` [C] when
    given, are written side by side into one bf16 [T, 3C] block (the copy that rounds them anyway) and
    multiplied once by the stacked taps.
    """
    length = conv_input.shape[0] - 2 * dilation
    y = buffers.pre_activation[:length]
    if conditioning is None:
        y.copy_(bias.expand_as(y))
    else:
        torch.addcmul(bias, conditioning, weights.scale, out=y)
    if weights.stacked_taps is None:
        for k, tap in enumerate(weights.taps):
            y.addmm_(conv_input[k * dilation:k * dilation + length], tap)
    else:
        channels = conv_input.shape[1]
        columns = buffers.columns[:length]
        for k in range(3):
            rows, block = conv_input[k * dilation:k * dilation + length], columns[:, k * channels:(k + 1) * channels]
            if step is None:
                block.copy_(rows)
            else:
                torch.add(rows, step, out=block)
        y.add_(torch.mm(columns, weights.stacked_taps, out=buffers.products[:length]))
    y.sigmoid_()
    channels = y.shape[1] // 2
    gate, filter_ = y[:, :channels], y[:, channels:]  # sigmoid(gate), sigmoid(-2 filter)
    return torch.addcmul(gate, gate, filter_, value=-2.0, out=buffers.gated[:length])


def edge_conv_input(h: Tensor, step: Tensor, low: int, high: int, dilation: int, outside: Tensor | None,
                    buffer: Tensor) -> Tensor:
    """h + step on the rows [low - dilation, high + dilation) of h [N, C], zero beyond the signal and where
    `outside` [N, 1] is True, as the whole-signal loop's padding and mask make it; written into `buffer`."""
    start, stop = max(0, low - dilation), min(h.shape[0], high + dilation)
    conv_input = buffer[:high - low + 2 * dilation]
    conv_input[:start - low + dilation].zero_()
    conv_input[stop - low + dilation:].zero_()
    inside = conv_input[start - low + dilation:stop - low + dilation]
    torch.add(h[start:stop], step, out=inside)
    if outside is not None:
        inside.masked_fill_(outside[start:stop], 0.0)
    return conv_input


def time_major_conditioning(upsampled: Tensor, projections: list[nn.Conv1d], gemm_dtype: torch.dtype,
                            out: Tensor | None) -> Tensor:
    """All layers' 1x1 projections of the upsampled mel [B, n_mels, N] as matrix products written time-major
    ([B, L, N, 2C] in memory, returned as its [B, L, 2C, N] transposed view), in `gemm_dtype`, so that each
    tile reads its conditioning as one block; into `out` when given (of that dtype and layout)."""
    batch, length = upsampled.shape[0], upsampled.shape[-1]
    channels = projections[0].out_channels
    if out is None:
        out = upsampled.new_empty(batch, len(projections), length, channels, dtype=gemm_dtype).transpose(2, 3)
    with torch.autocast("cpu", enabled=False):
        upsampled = upsampled.to(gemm_dtype)
        for i, projection in enumerate(projections):
            bias, weight = projection.bias.to(gemm_dtype), projection.weight[:, :, 0].t().to(gemm_dtype)
            for row in range(batch):
                torch.addmm(bias, upsampled[row].t(), weight, out=out[row, i].t())
    return out


def tiled_layers(layers: nn.ModuleList, h: Tensor, steps: Tensor, cond: Tensor | None, mask: Tensor | None,
                 gemm_dtype: torch.dtype) -> Tensor:
    """The residual stack `layers` on h [B, C, N] (fp32) tile by tile; the sum of the skips [B, C, N] (fp32).

    `steps` [B, L, C] are the layers' step projections. Rows of a batch run one after the other.
    """
    with torch.autocast("cpu", enabled=False):
        weights = [tile_weights(layer.dilated_conv, layer.output_projection, gemm_dtype) for layer in layers]
        skip_sum = torch.empty_like(h.transpose(1, 2))
        buffers = TileBuffers(skip_sum[0], max(layer.dilation for layer in layers), gemm_dtype)
        for row in range(h.shape[0]):
            outside = None if mask is None or mask[row].all() else ~mask[row, :, None]
            _tiled_row([layer.dilation for layer in layers], h[row].t().contiguous(), skip_sum[row], steps[row],
                       weights, None if cond is None else cond[row].transpose(1, 2), outside, buffers)
    return skip_sum.transpose(1, 2)


def _tiled_row(dilations: list[int], h: Tensor, skip_sum: Tensor, steps: Tensor, weights: list[TileWeights],
               cond: Tensor | None, outside: Tensor | None, buffers: TileBuffers) -> None:
    """One utterance: h [N, C] time-major, steps [L, C], cond [L, N, 2C], outside [N, 1] (True beyond the
    utterance in a padded batch); writes skip_sum [N, C].

    Tiles whose halo lies inside the signal (and no mask) read h itself. In fp32, conv(h + step) =
    conv(h) + sum_k W_k step there, so the step joins the bias; in bf16 the step is added while the conv input
    is rounded, as at the edges, so that the two kinds of tile round alike. Only edge tiles build their conv
    input. The residual biases are not added to h but carried to the next layer's step (`offset`).
    """
    length, scale = h.shape[0], 1.0 / math.sqrt(2.0)
    skip_sum.copy_(sum(w.skip_bias for w in weights).expand_as(skip_sum))
    next_h = torch.empty_like(h)
    offset = torch.zeros_like(steps[0])  # h's per-channel offset: the residual biases, added via steps
    for i, (d, w) in enumerate(zip(dilations, weights, strict=True)):
        step = steps[i] + offset
        low_precision = w.stacked_taps is not None
        interior_bias = w.bias if low_precision else w.bias + sum(step @ tap for tap in w.taps)
        for low in range(0, length, INFERENCE_TILE):
            high = min(length, low + INFERENCE_TILE)
            conditioning = None if cond is None else cond[i, low:high]
            if outside is None and d <= low and high + d <= length:
                gated = tile_forward(w, h[low - d:high + d], d, interior_bias, conditioning, buffers,
                                     step if low_precision else None)
            else:
                conv_input = edge_conv_input(h, step, low, high, d, outside, buffers.conv_input)
                gated = tile_forward(w, conv_input, d, w.bias, conditioning, buffers)
            if low_precision:
                channels = h.shape[1]
                gated_low = buffers.gated_low[:high - low].copy_(gated)
                products = torch.mm(gated_low, w.outputs, out=buffers.products[:high - low])
                skip_sum[low:high].add_(products[:, channels:])
                torch.add(h[low:high], products[:, :channels], out=next_h[low:high]).mul_(scale)
            else:
                skip_sum[low:high].addmm_(gated, w.skip)
                torch.addmm(h[low:high], gated, w.residual, beta=scale, alpha=scale, out=next_h[low:high])
        h, next_h = next_h, h
        offset = (offset + w.residual_bias) * scale
