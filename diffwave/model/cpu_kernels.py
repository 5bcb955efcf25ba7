"""CPU inference kernels for the DiffWave network: the residual stack tile by tile, time-major, in fp32 or bf16.

`DiffWave.forward` and `DiffWave.condition` call these when they apply (`tile_gemm_dtype`): CPU, no autograd,
float32 input, and either no autocast (fp32 GEMMs) or CPU autocast to bf16 (bf16 GEMMs). Callers see the same
function as the whole-signal loop of `model/diffwave.py`, within the rounding of the precision.

Why tiles: every layer's temporaries are [tile, 2C] scratch tensors reused by all tiles (the whole-signal loop
allocates [2C, N] arrays, page-faulted in afresh at every layer and step), and, time-major (channels last),
each tile's work is plain matrix products on row slices plus a few elementwise passes (1.7x faster than
channel-major tiles for BASE on 5 s with 2 threads). Each tile reads a halo of `dilation` samples per side
from its neighbours, and zeros beyond the signal, as the conv's zero padding does.

bf16 (`bf16_layers`): everything between the GEMMs stays bf16, so no activation changes dtype inside the
stack, and each GEMM writes its result where it is needed. The residual stream is stored as the conv's input
itself, z_i = a_i (x_i + s_i) with a_i = sqrt(2)^i (s_i: layer i's step projection), next to the skip sum in
one [N, 2C] buffer, with zero margins as the conv's zero padding: then no tile is an edge tile, and one output
GEMM per tile updates both in place, z_{i+1} = z_i + a_i (W_res g + b_res) - a_i s_i + a_{i+1} s_{i+1} and
skip += W_skip g + b_skip, its constant terms a row of the weights against a column of ones beside the gate.
The scalings a_i, the conv bias and the gate's -2 are folded into the weights and into the conditioning
(`condition` under CPU bf16 autocast returns it in this prepared form). Per layer and tile: an im2col copy
(bf16 to bf16), the conv GEMM with the conditioning as its addend, the sigmoid, the gate product, the output
GEMM; per step, one conversion of the step constants and one of the skip sum. Weights are converted once per
model and parameter version (`prepared_weights`). bf16 pays only on CPUs with bf16 matrix units (AMX,
AVX512-BF16); elsewhere PyTorch emulates it, and `precision.resolve_dtype("auto")` measures which is faster.
"""

from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import torch
from torch import Tensor, nn

INFERENCE_TILE = 4096  # samples per fp32 tile
# Samples per bf16 tile: oneDNN's AMX GEMMs pay a fixed cost per call, so longer tiles amortise it. BASE, one
# evaluation on 5 s, 2 threads, Intel Xeon with AMX (benchmarks/tile_length.py, issue 25): 570 ms at 4096,
# 524 at 8192, 453 at 16384, 431 at 32768, 422 at 65536, 439 at 131072; fp32 is best at 4096 (1061 ms against
# 1068 at 2048 and 1130 at 8192). Read at call time, so tests can shrink it to cross tile boundaries.
BF16_TILE = 32768


def tile_gemm_dtype(x: Tensor) -> torch.dtype | None:
    """The GEMM dtype of the tiled forward for input x (float32 or bfloat16), or None where the whole-signal
    loop runs (autograd, a GPU, a non-float32 input, autocast to anything but CPU bf16)."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    if not torch.is_autocast_enabled("cpu"):
        return torch.float32
    return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None


def gate_scale(like: Tensor) -> Tensor:
    """[2C]: 1 on the gate half, -2 on the filter half (exact: a power of two), so that one sigmoid over all 2C
    channels gives both halves of the gate, with tanh(f) = 1 - 2 sigmoid(-2 f): a third of the cost of a
    separate tanh, equal to it within rounding."""
    scale = torch.ones_like(like)
    scale[like.shape[0] // 2:] = -2.0
    return scale


class TileWeights(NamedTuple):
    """One residual layer's weights for the fp32 time-major (channels-last) tiles; the filter half of the
    dilated conv is scaled by -2 (`gate_scale`)."""

    taps: tuple[Tensor, Tensor, Tensor]  # [C, 2C] each, for the samples t - d, t, t + d
    bias: Tensor  # [2C], times `scale`
    scale: Tensor  # [2C]: 1 on the gate half, -2 on the filter half
    residual: Tensor  # [C, C]
    residual_bias: Tensor  # [C]
    skip: Tensor  # [C, C]
    skip_bias: Tensor  # [C]


def tile_weights(dilated_conv: nn.Conv1d, output_projection: nn.Conv1d) -> TileWeights:
    """One layer's weights laid out for `tile_forward`."""
    channels = output_projection.in_channels
    scale = gate_scale(dilated_conv.bias)
    weight = dilated_conv.weight * scale[:, None, None]
    out_weight, out_bias = output_projection.weight[:, :, 0], output_projection.bias
    taps = tuple(weight[:, :, k].t().contiguous() for k in range(3))
    return TileWeights(taps=taps, bias=dilated_conv.bias * scale, scale=scale,
                       residual=out_weight[:channels].t().contiguous(), residual_bias=out_bias[:channels],
                       skip=out_weight[channels:].t().contiguous(), skip_bias=out_bias[channels:])


class Bf16Weights(NamedTuple):
    """All layers' weights for `bf16_layers`, converted once (see the module docstring for the algebra)."""

    conv: Tensor  # [L, 3C, 2C] bf16: the three taps stacked, / a_i, filter half * -2
    out: Tensor  # [L, C + 1, 2C] bf16: [a_i W_res | W_skip] over a constant row [per step | b_skip]
    conv_bias: Tensor  # [L, 2C] fp32: the dilated convs' biases times the gate scale
    conv_bias_low: Tensor  # the same in bf16 (the unconditional model's addend)
    residual_bias: Tensor  # [L, C] fp32, times a_i
    stream_scale: Tensor  # [L + 1] fp32: a_i = sqrt(2)^i


def bf16_weights(layers: nn.ModuleList) -> Bf16Weights:
    convs, outs, biases = [], [], []
    stream_scale = math.sqrt(2.0) ** torch.arange(len(layers) + 1, dtype=torch.float64)
    for i, layer in enumerate(layers):
        conv, projection = layer.dilated_conv, layer.output_projection
        channels = projection.in_channels
        scale = gate_scale(conv.bias)
        weight = conv.weight * scale[:, None, None] / stream_scale[i].item()
        convs.append(torch.cat([weight[:, :, k].t() for k in range(3)]))
        out_weight = projection.weight[:, :, 0].t()  # [C, 2C]: residual then skip columns
        constant = torch.cat([torch.zeros(channels), projection.bias[channels:]])
        outs.append(torch.cat([out_weight * torch.cat([torch.full((channels,), stream_scale[i].item()),
                                                       torch.ones(channels)]), constant[None]]))
        biases.append(conv.bias * scale)
    conv_bias = torch.stack(biases)
    residual_bias = torch.stack([layer.output_projection.bias[:layer.output_projection.in_channels]
                                 for layer in layers]) * stream_scale[:-1, None].float()
    return Bf16Weights(conv=torch.stack(convs).to(torch.bfloat16), out=torch.stack(outs).to(torch.bfloat16),
                       conv_bias=conv_bias, conv_bias_low=conv_bias.to(torch.bfloat16),
                       residual_bias=residual_bias, stream_scale=stream_scale.float())


_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepared_weights(layers: nn.ModuleList, gemm_dtype: torch.dtype) -> list[TileWeights] | Bf16Weights:
    """The layers' weights in the engine's layout, converted once per parameter version: an optimizer step or
    a loaded state dict (new versions or storage) prepares them afresh. (Parameters made under inference mode
    carry no version: they are keyed by storage only.)"""
    version = tuple((p.data_ptr(), 0 if p.is_inference() else p._version) for p in layers.parameters())
    cached = _prepared.setdefault(layers, {}).get(gemm_dtype)
    if cached is None or cached[0] != version:
        with torch.autocast("cpu", enabled=False), torch.no_grad():
            if gemm_dtype == torch.float32:
                weights = [tile_weights(layer.dilated_conv, layer.output_projection) for layer in layers]
            else:
                weights = bf16_weights(layers)
        cached = _prepared[layers][gemm_dtype] = (version, weights)
    return cached[1]


class TileBuffers:
    """Scratch tensors of one fp32 tiled forward, reused by every tile of every layer (no fresh allocations)."""

    def __init__(self, h: Tensor, max_dilation: int) -> None:
        channels = h.shape[-1]
        self.conv_input = h.new_empty(INFERENCE_TILE + 2 * max_dilation, channels)
        self.pre_activation = h.new_empty(INFERENCE_TILE, 2 * channels)
        self.gated = h.new_empty(INFERENCE_TILE, channels)


def tile_forward(weights: TileWeights, conv_input: Tensor, dilation: int, bias: Tensor,
                 conditioning: Tensor | None, buffers: TileBuffers) -> Tensor:
    """The gated activation [T, C] (fp32) of one time-major tile, from its conv input [T + 2 * dilation, C]:
    the dilated conv is three matrix products on row-shifted views of the same rows (no im2col copy); `bias`
    [2C] is added to it, scaled as the weights are."""
    length = conv_input.shape[0] - 2 * dilation
    y = buffers.pre_activation[:length]
    if conditioning is None:
        y.copy_(bias.expand_as(y))
    else:
        torch.addcmul(bias, conditioning, weights.scale, out=y)
    for k, tap in enumerate(weights.taps):
        y.addmm_(conv_input[k * dilation:k * dilation + length], tap)
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


def conditioning_view(flat: Tensor, rows: int, layers: int, channels: int, length: int) -> Tensor:
    """A [rows, L, channels, length] view of the first elements of the 1-D `flat`, laid out as `DiffWave.condition`
    writes conditioning on its device: time-major on the CPU (each tile reads its conditioning as one block, see
    `time_major_conditioning`), channel-major elsewhere. Callers that condition window after window keep one
    such buffer."""
    size = rows * layers * channels * length
    if flat.device.type == "cpu":
        return flat[:size].view(rows, layers, length, channels).transpose(2, 3)
    return flat[:size].view(rows, layers, channels, length)


def time_major_conditioning(upsampled: Tensor, layers: nn.ModuleList, gemm_dtype: torch.dtype,
                            out: Tensor | None) -> Tensor:
    """All layers' 1x1 projections of the upsampled mel [B, n_mels, N] as matrix products written time-major
    ([B, L, N, 2C] in memory, returned as its [B, L, 2C, N] transposed view), so that each tile reads its
    conditioning as one block; into `out` when given (of that dtype and layout).

    fp32: the projections themselves. bf16: the form `bf16_layers` adds to its conv GEMM, with each layer's
    dilated-conv bias added and the filter half scaled by -2 (`gate_scale`): bf16 GEMMs.
    """
    batch, length = upsampled.shape[0], upsampled.shape[-1]
    projections = [layer.conditioner_projection for layer in layers]
    channels = projections[0].out_channels
    if out is None:
        out = conditioning_view(upsampled.new_empty(batch * len(projections) * channels * length, dtype=gemm_dtype),
                                batch, len(projections), channels, length)
    with torch.autocast("cpu", enabled=False):
        upsampled = upsampled.to(gemm_dtype)
        for i, (layer, projection) in enumerate(zip(layers, projections, strict=True)):
            bias, weight = projection.bias, projection.weight[:, :, 0].t()
            if gemm_dtype != torch.float32:
                scale = gate_scale(bias)
                bias = ((bias + layer.dilated_conv.bias) * scale).to(gemm_dtype)
                weight = (weight * scale).to(gemm_dtype)
            for row in range(batch):
                torch.addmm(bias, upsampled[row].t(), weight, out=out[row, i].t())
    return out


def tiled_layers(layers: nn.ModuleList, h: Tensor, steps: Tensor, cond: Tensor | None, mask: Tensor | None,
                 gemm_dtype: torch.dtype) -> Tensor:
    """The residual `layers` on h [B, N, C] (fp32, time-major; overwritten) tile by tile; the sum of the skips
    [B, N, C] (fp32, time-major).

    `steps` [B, L, C] are the layers' step projections; `cond` [B, L, 2C, N] is `condition`'s (time-major
    for the engine; another layout is converted per call). Rows of a batch run one after the other.
    """
    weights = prepared_weights(layers, gemm_dtype)
    dilations = [layer.dilation for layer in layers]
    with torch.autocast("cpu", enabled=False):
        skip_sum = torch.empty_like(h)
        if gemm_dtype != torch.float32:
            buffers = Bf16Buffers(h.shape[-1])
            for row in range(h.shape[0]):
                outside = None if mask is None or mask[row].all() else ~mask[row, :, None]
                conditioning = None if cond is None else bf16_conditioning(cond[row], weights)
                bf16_row(dilations, h[row], skip_sum[row], steps[row], weights, conditioning, outside, buffers)
            return skip_sum
        buffers = TileBuffers(skip_sum[0], max(dilations))
        for row in range(h.shape[0]):
            outside = None if mask is None or mask[row].all() else ~mask[row, :, None]
            _tiled_row(dilations, h[row], skip_sum[row], steps[row],
                       weights, None if cond is None else cond[row].transpose(1, 2), outside, buffers)
    return skip_sum


def _tiled_row(dilations: list[int], h: Tensor, skip_sum: Tensor, steps: Tensor, weights: list[TileWeights],
               cond: Tensor | None, outside: Tensor | None, buffers: TileBuffers) -> None:
    """One utterance: h [N, C] time-major (contiguous; overwritten), steps [L, C], cond [L, N, 2C], outside
    [N, 1] (True beyond the utterance in a padded batch); writes skip_sum [N, C].

    Tiles whose halo lies inside the signal (and no mask) read h itself: conv(h + step) = conv(h) +
    sum_k W_k step there, so the step joins the bias. Only edge tiles build their conv input. The residual
    biases are not added to h but carried to the next layer's step (`offset`).
    """
    length, scale = h.shape[0], 1.0 / math.sqrt(2.0)
    skip_sum.copy_(sum(w.skip_bias for w in weights).expand_as(skip_sum))
    next_h = torch.empty_like(h)
    offset = torch.zeros_like(steps[0])  # h's per-channel offset: the residual biases, added via steps
    for i, (d, w) in enumerate(zip(dilations, weights, strict=True)):
        step = steps[i] + offset
        interior_bias = w.bias + sum(step @ tap for tap in w.taps)
        for low in range(0, length, INFERENCE_TILE):
            high = min(length, low + INFERENCE_TILE)
            conditioning = None if cond is None else cond[i, low:high]
            if outside is None and d <= low and high + d <= length:
                gated = tile_forward(w, h[low - d:high + d], d, interior_bias, conditioning, buffers)
            else:
                conv_input = edge_conv_input(h, step, low, high, d, outside, buffers.conv_input)
                gated = tile_forward(w, conv_input, d, w.bias, conditioning, buffers)
            skip_sum[low:high].addmm_(gated, w.skip)
            torch.addmm(h[low:high], gated, w.residual, beta=scale, alpha=scale, out=next_h[low:high])
        h, next_h = next_h, h
        offset = (offset + w.residual_bias) * scale


class Bf16Buffers:
    """Scratch of `bf16_row`: two im2col blocks (one tile's is built before the previous tile is updated), the
    pre-activation, and the gate beside a column of ones (the output GEMM's constant row); the stream buffer
    is kept across rows and calls and grows as needed."""

    def __init__(self, channels: int) -> None:
        low = torch.bfloat16
        self.tile = BF16_TILE
        self.columns = [torch.empty(self.tile, 3 * channels, dtype=low) for _ in range(2)]
        self.pre_activation = torch.empty(self.tile, 2 * channels, dtype=low)
        self.gated = torch.ones(self.tile, channels + 1, dtype=low)
        self.stream = torch.empty(0, 2 * channels, dtype=low)

    def stream_rows(self, rows: int) -> Tensor:
        if self.stream.shape[0] < rows:
            self.stream = torch.empty(rows, self.stream.shape[1], dtype=self.stream.dtype)
        return self.stream[:rows]


def bf16_conditioning(cond: Tensor, weights: Bf16Weights) -> Tensor:
    """One row's conditioning [L, N, 2C] in the engine's form: a bf16 one is `condition`'s under CPU bf16
    autocast, already in that form (time-major, or a slice of it); an fp32 one (computed with grad or without
    autocast) is converted here, one pass per call."""
    tm = cond.transpose(1, 2)
    if cond.dtype == torch.bfloat16:
        return tm
    scale = gate_scale(weights.conv_bias[0])
    return ((tm.float() + weights.conv_bias[:, None] / scale) * scale).to(torch.bfloat16)


def bf16_gate(y: Tensor, out: Tensor) -> None:
    """The gate sigmoid(a) tanh(f) = sigmoid(a) (1 - 2 sigmoid(-2 f)) of y = [a | -2 f] [T, 2C] (overwritten),
    into out [T, C]: two passes in bf16 (a fused compiled kernel is the alternative benchmarks measure)."""
    channels = out.shape[1]
    y.sigmoid_()
    gate, filter_ = y[:, :channels], y[:, channels:]  # sigmoid(gate), sigmoid(-2 filter)
    torch.addcmul(gate, gate, filter_, value=-2.0, out=out)


def bf16_row(dilations: list[int], h: Tensor, skip_sum: Tensor, steps: Tensor, weights: Bf16Weights,
             cond: Tensor | None, outside: Tensor | None, buffers: Bf16Buffers) -> None:
    """One utterance in bf16: h [N, C] (fp32, any strides), steps [L, C], cond [L, N, 2C] (engine form),
    outside [N, 1] (True beyond the utterance in a padded batch); writes skip_sum [N, C] (fp32)."""
    length, channels = h.shape
    margin = max(dilations)
    tile_length = buffers.tile
    if margin >= tile_length:
        raise ValueError(f"dilation {margin} needs tiles longer than {tile_length} samples")
    # Stream (conv input) and skip sum side by side, with zero margins for the conv's zero padding.
    state = buffers.stream_rows(length + 2 * margin)
    state[:margin].zero_()
    state[margin + length:].zero_()
    stream, skip = state[:, :channels], state[margin:margin + length, channels:]
    torch.add(h, steps[0], out=stream[margin:margin + length])  # z_0 = h + s_0 (a_0 = 1)
    skip.zero_()
    if outside is not None:
        stream[margin:margin + length].masked_fill_(outside, 0.0)
    # Per step: each layer's constant a_i (b_res - s_i) + a_{i+1} s_{i+1}, into the output GEMM's last row.
    a = weights.stream_scale[:, None]
    following = torch.cat([steps[1:], torch.zeros_like(steps[:1])])
    weights.out[:, channels, :channels].copy_(weights.residual_bias - a[:-1] * steps + a[1:] * following)
    tiles = [(low, min(length, low + tile_length)) for low in range(0, length, tile_length)]
    for i, d in enumerate(dilations):
        conv, out, bias = weights.conv[i], weights.out[i], weights.conv_bias_low[i]

        def im2col(tile: int, d: int = d) -> Tensor:
            """The tile's three taps side by side [T, 3C], in one copy from a strided view of the stream."""
            low, high = tiles[tile]
            columns = buffers.columns[tile % 2][:high - low]
            rows = state.stride(0)
            taps = state.as_strided((high - low, 3, channels), (rows, d * rows, 1),
                                    state.storage_offset() + (margin + low - d) * rows)
            columns.view(high - low, 3, channels).copy_(taps)
            return columns

        columns = im2col(0)
        for tile, (low, high) in enumerate(tiles):
            y = buffers.pre_activation[:high - low]
            torch.addmm(bias if cond is None else cond[i, low:high], columns, conv, out=y)
            gated = buffers.gated[:high - low]
            bf16_gate(y, gated[:, :channels])
            if tile + 1 < len(tiles):
                columns = im2col(tile + 1)  # its halo reads this tile's rows before they are updated
            rows = state[margin + low:margin + high]
            rows.addmm_(gated, out)  # z += a_i W_res g + constant; skip += W_skip g + b_skip
            if outside is not None:
                rows[:, :channels].masked_fill_(outside[low:high], 0.0)
    skip_sum.copy_(skip)


class LayerWorkload:
    """What `precision.calibrate` times: one residual layer of `channels` on one bf16 tile of samples (several
    fp32 tiles), conditioned, with random weights, through the engine of each GEMM dtype (the step's fixed work
    included; the conditioning, once per utterance, is not)."""

    def __init__(self, channels: int, n_mels: int = 80) -> None:
        self.key = ("residual layer", channels, INFERENCE_TILE, BF16_TILE)
        self.channels, self.n_mels = channels, n_mels
        self._layers: nn.ModuleList | None = None
        self._conditioning: dict[torch.dtype, Tensor] = {}

    def __call__(self, dtype: torch.dtype) -> None:
        if self._layers is None:
            self._build()
        h, steps, upsampled = self._inputs
        with torch.no_grad():
            if dtype not in self._conditioning:
                self._conditioning[dtype] = time_major_conditioning(upsampled, self._layers, dtype, None)
            tiled_layers(self._layers, h.clone(), steps, self._conditioning[dtype], None, dtype)  # h is overwritten

    @torch.inference_mode(False)
    def _build(self) -> None:
        channels, generator = self.channels, torch.Generator().manual_seed(0)
        layer = nn.Module()
        layer.dilated_conv = nn.Conv1d(channels, 2 * channels, 3, padding=1)
        layer.conditioner_projection = nn.Conv1d(self.n_mels, 2 * channels, 1)
        layer.output_projection = nn.Conv1d(channels, 2 * channels, 1)
        layer.dilation = 1
        self._layers = nn.ModuleList([layer])
        self._inputs = (torch.randn(1, BF16_TILE, channels, generator=generator),
                        torch.randn(1, 1, channels, generator=generator),
                        torch.randn(1, self.n_mels, BF16_TILE, generator=generator))
