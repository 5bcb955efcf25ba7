"""CPU inference kernels for the DiffWave network: the residual stack tile by tile, time-major, in fp32 or bf16.

`DiffWave.forward` and `DiffWave.condition` call these when they apply (`tile_gemm_dtype`): CPU, no autograd,
float32 input, and either no autocast (fp32 GEMMs) or CPU autocast to bf16 (bf16 GEMMs). Callers see the same
function as the whole-signal loop of `model/diffwave.py`, within the rounding of the precision.

Why tiles: every layer's temporaries are [tile, 2C] scratch tensors reused by all tiles (the whole-signal loop
allocates [2C, N] arrays, page-faulted in afresh at every layer and step), and, time-major (channels last),
each tile's work is plain matrix products on row slices plus a few elementwise passes (faster than
channel-major tiles: README, Measured speed). Each tile reads a halo of `dilation` samples per side
from its neighbours, and zeros beyond the signal, as the conv's zero padding does.

bf16 (`bf16_row`): everything between the matrix products stays bf16, so no activation changes dtype inside
the stack, and whole utterances run at once (faster than tiles of any length measured,
`benchmarks/tile_length.py`). The residual stream is stored as the conv's input itself, z_i = a_i (x_i + s_i)
with a_i = sqrt(2)^i (s_i: layer i's step projection), with zero margins as the conv's zero padding. Per layer:
the conditioning is copied into the conv's output buffer and oneDNN's dilated convolution reads its taps
straight from the stream and adds its result there (a fused sum post-op: no im2col copy, which made it faster end
to end than im2col and one GEMM); then the sigmoid, the gate product, and two GEMMs that update the stream and the
skip sum in place, z_{i+1} = z_i + a_i (W_res g + b_res) - a_i s_i + a_{i+1} s_{i+1} and skip += W_skip g +
b_skip, their constant terms a row of the weights against a column of ones beside the gate. The scalings
a_i, the conv bias and the gate's -2 are folded into the weights and into the conditioning (`condition` under
CPU bf16 autocast returns it in this prepared form); per step, one conversion of the step constants and one of
the skip sum. Weights are converted once per model and parameter version (`prepared_weights`). bf16 pays only
on CPUs with bf16 matrix units (AMX, AVX512-BF16); elsewhere PyTorch emulates it, `precision.resolve_dtype`
("auto") measures which is faster, and without oneDNN's bf16 convolution (`bf16_engine_available`) bf16 takes
the whole-signal loop.
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from typing import NamedTuple

import torch
from torch import Tensor, nn

from diffwave.model.gated_layer import gated_layer

INFERENCE_TILE = 4096  # samples per fp32 tile: the fastest length measured (`benchmarks/tile_length.py`)
CONDITIONING_BLOCK = 4096  # samples per block of `time_major_conditioning` (1024 to 4096 measured alike)
CALIBRATION_SAMPLES = 32768  # samples of `LayerWorkload`: long enough that no per-call cost dominates
# In `LayerWorkload.key`: timings kept by older engines go unused.
ENGINES_REVISION = "bf16 conv, fp32 in place, fp16 conditioning"


@functools.cache
def bf16_engine_available() -> bool:
    """Whether oneDNN runs bf16 convolutions on this CPU (it needs AVX512 BW/VL/DQ, AVX-NE-CONVERT or AMX), as the
    bf16 engine's dilated convolution does; elsewhere CPU bf16 inference takes the whole-signal loop."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def tile_gemm_dtype(x: Tensor) -> torch.dtype | None:
    """The GEMM dtype of the tiled forward for input x (float32 or bfloat16), or None where the whole-signal
    loop runs (autograd, a GPU, a non-float32 input, autocast to anything but CPU bf16, bf16 without
    `bf16_engine_available`)."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    if not torch.is_autocast_enabled("cpu"):
        return torch.float32
    return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 and bf16_engine_available() else None


def conditioning_storage(gemm_dtype: torch.dtype) -> torch.dtype:
    """The dtype the engine of `gemm_dtype` reads a cached conditioning in: bf16 for bf16, fp16 for fp32.

    fp32 reads fp16: half the memory, so a sampler's window of a given memory is twice as long (fewer windows,
    less overlap computed twice), and half the traffic of the one pass that reads it per tile. Every product,
    activation and sum stays fp32; rounding the conditioning to fp16's 11 significant bits moved the shipped
    voice's audio 93-100 dB below the signal on real clips, less than writing it as 16-bit PCM does (79-86 dB;
    README, Measured speed). A projection beyond fp16's range (65,504) is stored as an infinity, which saturates
    the gate as the value itself does."""
    return torch.float16 if gemm_dtype == torch.float32 else gemm_dtype


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
    """All layers' weights for `bf16_row`, converted once (see the module docstring for the algebra)."""

    conv: Tensor  # [L, 2C, C, 1, 3] bf16 channels-last (oneDNN's layout): the dilated conv / a_i, filter half * -2
    residual: Tensor  # [L, C + 1, C] bf16: a_i W_res over a constant row (rewritten per step)
    skip: Tensor  # [L, C + 1, C] bf16: W_skip over b_skip
    conv_bias: Tensor  # [L, 2C] fp32: the dilated convs' biases times the gate scale
    conv_bias_low: Tensor  # the same in bf16 (the unconditional model's addend)
    residual_bias: Tensor  # [L, C] fp32, times a_i
    stream_scale: Tensor  # [L + 1] fp32: a_i = sqrt(2)^i


def bf16_weights(layers: nn.ModuleList) -> Bf16Weights:
    convs, residuals, skips, biases = [], [], [], []
    stream_scale = math.sqrt(2.0) ** torch.arange(len(layers) + 1, dtype=torch.float64)
    for i, layer in enumerate(layers):
        conv, projection = layer.dilated_conv, layer.output_projection
        channels = projection.in_channels
        scale = gate_scale(conv.bias)
        convs.append(conv.weight * scale[:, None, None] / stream_scale[i].item())
        out_weight = projection.weight[:, :, 0].t()  # [C, 2C]: residual then skip columns
        residuals.append(torch.cat([out_weight[:, :channels] * stream_scale[i].item(), torch.zeros(1, channels)]))
        skips.append(torch.cat([out_weight[:, channels:], projection.bias[None, channels:]]))
        biases.append(conv.bias * scale)
    conv_bias = torch.stack(biases)
    residual_bias = torch.stack([layer.output_projection.bias[:layer.output_projection.in_channels]
                                 for layer in layers]) * stream_scale[:-1, None].float()
    conv_weights = torch.stack(convs).unsqueeze(3).to(torch.bfloat16)  # [L, 2C, C, 1, 3]
    return Bf16Weights(conv=torch.stack([w.contiguous(memory_format=torch.channels_last) for w in conv_weights]),
                       residual=torch.stack(residuals).to(torch.bfloat16), skip=torch.stack(skips).to(torch.bfloat16),
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


def tile_length(dilation: int) -> int:
    """Samples per fp32 tile of a layer: INFERENCE_TILE, or the dilation where that is wider, so that a tile's
    halo reaches only into its neighbours (`_tiled_row` updates the stream in place behind the tiles)."""
    return max(INFERENCE_TILE, dilation)


class TileBuffers:
    """Scratch tensors of one fp32 tiled forward, reused by every tile of every layer (no fresh allocations); two
    gate buffers, because a tile's last rows wait for the next tile (`_tiled_row`)."""

    def __init__(self, h: Tensor, max_dilation: int) -> None:
        channels, tile = h.shape[-1], tile_length(max_dilation)
        self.conv_input = h.new_empty(tile + 2 * max_dilation, channels)
        self.pre_activation = h.new_empty(tile, 2 * channels)
        self.gated = h.new_empty(2, tile, channels)


def tile_forward(weights: TileWeights, conv_input: Tensor, dilation: int, bias: Tensor,
                 conditioning: Tensor | None, buffers: TileBuffers, out: Tensor) -> Tensor:
    """The gated activation [T, C] (fp32) of one time-major tile, into `out`, from its conv input
    [T + 2 * dilation, C]: the dilated conv is three matrix products on row-shifted views of the same rows (no
    im2col copy); `bias` [2C] is added to it, scaled as the weights are."""
    length = conv_input.shape[0] - 2 * dilation
    y = buffers.pre_activation[:length]
    if conditioning is None:
        y.copy_(bias.expand_as(y))
    elif conditioning.dtype == y.dtype:
        torch.addcmul(bias, conditioning, weights.scale, out=y)
    else:  # fp16 (`conditioning_storage`): widened by a copy, then scaled in cache (a mixed-dtype addcmul is slower)
        torch.addcmul(bias, y.copy_(conditioning), weights.scale, out=y)
    for k, tap in enumerate(weights.taps):
        y.addmm_(conv_input[k * dilation:k * dilation + length], tap)
    y.sigmoid_()
    channels = y.shape[1] // 2
    gate, filter_ = y[:, :channels], y[:, channels:]  # sigmoid(gate), sigmoid(-2 filter)
    return torch.addcmul(gate, gate, filter_, value=-2.0, out=out[:length])


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


def empty_conditioning(rows: int, layers: int, channels: int, length: int, dtype: torch.dtype,
                       device: torch.device | str | None = None) -> Tensor:
    """A fresh, uninitialised conditioning buffer [rows, L, channels, length] in the layout of
    `conditioning_view`."""
    return conditioning_view(torch.empty(rows * layers * channels * length, dtype=dtype, device=device), rows, layers,
                             channels, length)


def time_major_conditioning(upsampled: Tensor, layers: nn.ModuleList, gemm_dtype: torch.dtype,
                            out: Tensor | None) -> Tensor:
    """All layers' 1x1 projections of the upsampled mel [B, n_mels, N] as matrix products written time-major
    ([B, L, N, 2C] in memory, returned as its [B, L, 2C, N] transposed view), so that each tile reads its
    conditioning as one block; into `out` when given (of that dtype and layout).

    fp32: the projections themselves, computed in fp32 and stored in `out`'s dtype (fp16 for a sampler's cache,
    `conditioning_storage`). bf16: the form `bf16_row` starts each layer's conv output from, with each layer's
    dilated-conv bias added and the filter half scaled by -2 (`gate_scale`): bf16 GEMMs.

    Block by block of CONDITIONING_BLOCK samples, each block of the mel (time-major, beside a column of ones)
    times every layer's weights over its bias row: the block stays in cache for all L products, and each output
    is written once, by its product (a bias added by `addmm` is first copied into the output, a second pass
    over gigabytes). 1.5-1.75x faster than one `addmm` per layer over the whole signal (README, Measured speed).
    """
    batch, n_mels, length = upsampled.shape
    projections = [layer.conditioner_projection for layer in layers]
    channels = projections[0].out_channels
    if out is None:
        out = empty_conditioning(batch, len(projections), channels, length, gemm_dtype, upsampled.device)
    if out.dtype not in (gemm_dtype, conditioning_storage(gemm_dtype)):  # the bf16 form is no fp32 projection
        raise ValueError(f"conditioning for {gemm_dtype} GEMMs goes into {gemm_dtype} or "
                         f"{conditioning_storage(gemm_dtype)}, not {out.dtype}")
    with torch.autocast("cpu", enabled=False):
        weights = []  # [n_mels + 1, 2C] per layer: the projection's weight over its bias
        for layer, projection in zip(layers, projections, strict=True):
            bias, weight = projection.bias, projection.weight[:, :, 0].t()
            if gemm_dtype != torch.float32:
                scale = gate_scale(bias)
                bias, weight = (bias + layer.dilated_conv.bias) * scale, weight * scale
            weights.append(torch.cat([weight, bias[None]]).to(gemm_dtype))
        block = upsampled.new_ones(min(length, CONDITIONING_BLOCK), n_mels + 1, dtype=gemm_dtype)
        # A narrower `out` (fp16 for fp32): each product lands here in fp32 first, then is rounded into `out`.
        staged = None if out.dtype == gemm_dtype else block.new_empty(block.shape[0], channels)
        for row in range(batch):
            for low in range(0, length, CONDITIONING_BLOCK):
                high = min(length, low + CONDITIONING_BLOCK)
                mel_rows = block[:high - low]
                mel_rows[:, :n_mels].copy_(upsampled[row, :, low:high].t())
                for i, weight in enumerate(weights):
                    if staged is None:
                        torch.mm(mel_rows, weight, out=out[row, i].t()[low:high])
                    else:
                        out[row, i].t()[low:high].copy_(torch.mm(mel_rows, weight, out=staged[:high - low]))
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
            scratch = bf16_scratch(layers)
            for row in range(h.shape[0]):
                outside = None if mask is None or mask[row].all() else ~mask[row, :, None]
                conditioning = None if cond is None else bf16_conditioning(cond[row], weights)
                bf16_row(dilations, h[row], skip_sum[row], steps[row], weights, conditioning, outside, scratch)
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
    biases are not added to h but carried to the next layer's step (`offset`). The residual update is written
    into h in place, one tile behind: a tile's last `dilation` rows are the next tile's halo, so they are updated
    after the next tile has read them: no second buffer for the stream, and no copy of each tile into one.
    """
    length, scale = h.shape[0], 1.0 / math.sqrt(2.0)
    skip_sum.copy_(sum(w.skip_bias for w in weights).expand_as(skip_sum))
    offset = torch.zeros_like(steps[0])  # h's per-channel offset: the residual biases, added via steps
    for i, (d, w) in enumerate(zip(dilations, weights, strict=True)):
        step = steps[i] + offset
        interior_bias = w.bias + sum(step @ tap for tap in w.taps)
        tile = tile_length(d)
        waiting, waiting_gate = 0, buffers.gated[0, :0]  # rows from `waiting` on wait for the next tile's taps
        for index, low in enumerate(range(0, length, tile)):
            high = min(length, low + tile)
            conditioning = None if cond is None else cond[i, low:high]
            if outside is None and d <= low and high + d <= length:
                conv_input, bias = h[low - d:high + d], interior_bias
            else:
                conv_input, bias = edge_conv_input(h, step, low, high, d, outside, buffers.conv_input), w.bias
            gated = tile_forward(w, conv_input, d, bias, conditioning, buffers, buffers.gated[index % 2])
            skip_sum[low:high].addmm_(gated, w.skip)
            h[waiting:low].addmm_(waiting_gate, w.residual, beta=scale, alpha=scale)
            ready = high if high == length else high - d  # the next tile's halo starts at high - d
            h[low:ready].addmm_(gated[:ready - low], w.residual, beta=scale, alpha=scale)
            waiting, waiting_gate = ready, gated[ready - low:]
        offset = (offset + w.residual_bias) * scale


class Bf16Scratch:
    """What `bf16_row` writes besides its output, each [rows, width] bf16: the residual stream [N + 2 margin, C]
    (zero margins: the conv's zero padding), the skip sum and the conv's output, and the gate [N, C + 1] beside
    a column of ones (the output GEMMs' constant row). Kept with the model (`bf16_scratch`) and grown as needed,
    so that later steps reuse memory the operating system has already faulted in."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        widths = {"stream": channels, "skip": channels, "conv": 2 * channels, "gated": channels + 1}
        self._rows = {name: torch.empty(0, width, dtype=torch.bfloat16) for name, width in widths.items()}

    def rows(self, name: str, count: int) -> Tensor:
        if self._rows[name].shape[0] < count:
            width = self._rows[name].shape[1]
            self._rows[name] = torch.empty(0, width, dtype=torch.bfloat16)  # freed before growing
            self._rows[name] = torch.empty(count, width, dtype=torch.bfloat16)
            if name == "gated":
                self._rows[name][:, self.channels] = 1.0
        return self._rows[name][:count]


def bf16_scratch(layers: nn.ModuleList) -> Bf16Scratch:
    """The model's `Bf16Scratch` for this thread (threads vocoding with one model concurrently get their own)."""
    key = ("scratch", threading.get_ident())
    scratch = _prepared.setdefault(layers, {}).get(key)
    if scratch is None:
        scratch = _prepared[layers][key] = Bf16Scratch(layers[0].dilated_conv.in_channels)
    return scratch


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
    into out [T, C]: two passes in bf16 (inductor's fused kernel was only 10% faster: README, Measured speed)."""
    channels = out.shape[1]
    y.sigmoid_()
    gate, filter_ = y[:, :channels], y[:, channels:]  # sigmoid(gate), sigmoid(-2 filter)
    torch.addcmul(gate, gate, filter_, value=-2.0, out=out)


def channels_last(rows: Tensor) -> Tensor:
    """A time-major [N, C] block as the [1, C, 1, N] channels-last image oneDNN's convolution reads or writes."""
    return rows.t()[None, :, None]


def bf16_row(dilations: list[int], h: Tensor, skip_sum: Tensor, steps: Tensor, weights: Bf16Weights,
             cond: Tensor | None, outside: Tensor | None, scratch: Bf16Scratch) -> None:
    """One utterance in bf16: h [N, C] (fp32, any strides), steps [L, C], cond [L, N, 2C] (engine form),
    outside [N, 1] (True beyond the utterance in a padded batch); writes skip_sum [N, C] (fp32)."""
    length, channels = h.shape
    margin = max(dilations)
    padded = scratch.rows("stream", length + 2 * margin)
    padded[:margin].zero_()
    padded[margin + length:].zero_()
    stream, skip, y = padded[margin:margin + length], scratch.rows("skip", length), scratch.rows("conv", length)
    torch.add(h, steps[0], out=stream)  # z_0 = h + s_0 (a_0 = 1)
    skip.zero_()
    if outside is not None:
        stream.masked_fill_(outside, 0.0)
    # Per step: each layer's constant a_i (b_res - s_i) + a_{i+1} s_{i+1}, into the residual GEMM's last row.
    a = weights.stream_scale[:, None]
    following = torch.cat([steps[1:], torch.zeros_like(steps[:1])])
    weights.residual[:, channels].copy_(weights.residual_bias - a[:-1] * steps + a[1:] * following)
    gated = scratch.rows("gated", length)
    for i, d in enumerate(dilations):
        y.copy_(weights.conv_bias_low[i].expand_as(y) if cond is None else cond[i])
        # y += conv(z_i): oneDNN reads the taps straight from the stream (no im2col copy) and adds its result to
        # the conditioning in place, in one pass.
        torch.ops.mkldnn._convolution_pointwise_.binary(
            channels_last(y), channels_last(padded[margin - d:margin + length + d]), weights.conv[i], None,
            [0, 0], [1, 1], [1, d], 1, "add", None, None, [], None)
        bf16_gate(y, gated[:, :channels])
        stream.addmm_(gated, weights.residual[i])  # z += a_i W_res g + constant
        skip.addmm_(gated, weights.skip[i])  # skip += W_skip g + b_skip
        if outside is not None:
            stream.masked_fill_(outside, 0.0)
    skip_sum.copy_(skip)


class LayerWorkload:
    """What `precision.calibrate` times: one residual layer of `channels` on `CALIBRATION_SAMPLES` samples,
    conditioned, with random weights, through the path each dtype takes here: the engines of this module, or
    the whole-signal layer under autocast for bf16 without `bf16_engine_available` (the step's fixed work
    included; the conditioning, once per utterance, is not)."""

    def __init__(self, channels: int, n_mels: int = 80) -> None:
        self.key = ("residual layer", channels, INFERENCE_TILE, CALIBRATION_SAMPLES, ENGINES_REVISION)
        self.channels, self.n_mels = channels, n_mels
        self._layers: nn.ModuleList | None = None
        self._conditioning: dict[torch.dtype, Tensor] = {}

    def __call__(self, dtype: torch.dtype) -> None:
        if self._layers is None:
            self._build()
        h, steps, upsampled = self._inputs
        whole_signal = dtype != torch.float32 and not bf16_engine_available()
        layer = self._layers[0]
        with torch.no_grad():
            if dtype not in self._conditioning and whole_signal:
                self._conditioning[dtype] = layer.conditioner_projection(upsampled)
            elif dtype not in self._conditioning:  # the engines' cache as a sampler keeps it (`conditioning_storage`)
                out = empty_conditioning(1, 1, 2 * self.channels, CALIBRATION_SAMPLES, conditioning_storage(dtype))
                self._conditioning[dtype] = time_major_conditioning(upsampled, self._layers, dtype, out)
            if whole_signal:
                with torch.autocast("cpu", dtype=dtype):
                    gated_layer(h.transpose(1, 2), None, steps[:, 0], self._conditioning[dtype], None,
                                layer.dilated_conv, None, layer.output_projection)
                return
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
        self._inputs = (torch.randn(1, CALIBRATION_SAMPLES, channels, generator=generator),
                        torch.randn(1, 1, channels, generator=generator),
                        torch.randn(1, self.n_mels, CALIBRATION_SAMPLES, generator=generator))
