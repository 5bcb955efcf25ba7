"""The DiffWave network (Kong et al. 2021): step embedding, mel upsampler, gated residual stack.

Parameter names follow the reference implementation (lmnt-com/diffwave) so its checkpoints load as they
are. One deliberate difference: the mel conditioning of all layers is computed once per utterance by
`condition`, because it does not depend on the diffusion step; samplers then reuse it at every step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffwave.config import Config
from diffwave.errors import ConfigError
from diffwave.model.cpu_kernels import conditioning_storage, tile_gemm_dtype, tiled_layers, time_major_conditioning
from diffwave.model.gated_layer import gated_layer

EMBEDDING_DIM = 128  # sinusoidal table width (64 sines + 64 cosines), fixed by the reference checkpoints
EMBEDDING_HIDDEN = 512


def _conv1d(in_channels: int, out_channels: int, kernel_size: int, **kwargs: int) -> nn.Conv1d:
    """Kaiming-normal weights, as the reference initialises every Conv1d."""
    layer = nn.Conv1d(in_channels, out_channels, kernel_size, **kwargs)
    nn.init.kaiming_normal_(layer.weight)
    return layer


def upsample_strides(hop_length: int) -> tuple[int, int]:
    """Split the hop into two strides, as balanced as possible (256 -> 16 x 16, 300 -> 15 x 20)."""
    for low in range(math.isqrt(hop_length), 1, -1):
        if hop_length % low == 0:
            return low, hop_length // low
    raise ConfigError(f"hop_length {hop_length} cannot be split into two upsampling strides of at least 2 "
                      "each; use a composite hop of at least 4 (e.g. 256)")


class DiffusionEmbedding(nn.Module):
    """Sinusoidal step embedding + MLP; fractional steps (DiffWave's fast sampler) interpolate rows."""

    embedding: Tensor

    def __init__(self, num_steps: int) -> None:
        super().__init__()
        self.num_steps = num_steps
        # Not persistent: it is a pure function of num_steps, and the reference checkpoints omit it.
        self.register_buffer("embedding", self._build_table(num_steps), persistent=False)
        self.projection1 = nn.Linear(EMBEDDING_DIM, EMBEDDING_HIDDEN)
        self.projection2 = nn.Linear(EMBEDDING_HIDDEN, EMBEDDING_HIDDEN)

    @staticmethod
    def _build_table(num_steps: int) -> Tensor:
        steps = torch.arange(num_steps).unsqueeze(1)
        dims = torch.arange(EMBEDDING_DIM // 2).unsqueeze(0)
        table = steps * 10.0 ** (dims * 4.0 / 63.0)
        return torch.cat([torch.sin(table), torch.cos(table)], dim=1)

    def lookup(self, t: Tensor) -> Tensor:
        """Rows of the table for steps t [B] (0-based); a float t between rows interpolates linearly."""
        if t.ndim != 1:
            raise ValueError(f"diffusion steps must have shape [batch], got {tuple(t.shape)}")
        # Written as a negated range test so that NaN steps are refused too.
        if not bool(((t >= 0) & (t <= self.num_steps - 1)).all()):
            raise ValueError(f"diffusion steps must lie in [0, {self.num_steps - 1}], got "
                             f"min {t.min().item():g}, max {t.max().item():g}")
        if not t.is_floating_point():
            return self.embedding[t.long()]
        low_index = torch.floor(t)
        low = self.embedding[low_index.long()]
        high = self.embedding[torch.ceil(t).long()]
        weight = (t - low_index).unsqueeze(-1).to(low.dtype)
        return low + (high - low) * weight

    def forward(self, t: Tensor) -> Tensor:
        x = F.silu(self.projection1(self.lookup(t)))
        return F.silu(self.projection2(x))


class SpectrogramUpsampler(nn.Module):
    """Two transposed 2-D convolutions stretch F mel frames to exactly F * hop samples."""

    def __init__(self, hop_length: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = (self._stage(stride) for stride in upsample_strides(hop_length))

    @staticmethod
    def _stage(stride: int) -> nn.ConvTranspose2d:
        # Kernel 2s, padding ceil(s/2): (F-1)s - 2ceil(s/2) + 2s = F*s for even s (the reference's 16 x 16),
        # and F*s - 1 for odd s, which output_padding = 1 completes.
        return nn.ConvTranspose2d(1, 1, (3, 2 * stride), stride=(1, stride), padding=(1, (stride + 1) // 2),
                                  output_padding=(0, stride % 2))

    def forward(self, mel: Tensor) -> Tensor:
        x = F.leaky_relu(self.conv1(mel.unsqueeze(1)), 0.4)
        x = F.leaky_relu(self.conv2(x), 0.4)
        return x.squeeze(1)


class ResidualBlock(nn.Module):
    """One gated WaveNet layer's weights. Its arithmetic is model/gated_layer.py (autograd, GPU inference; the
    layer projects the upsampled mel itself, or reads its slice of DiffWave.condition), or the CPU inference
    tiles of model/cpu_kernels.py."""

    def __init__(self, residual_channels: int, dilation: int, n_mels: int | None) -> None:
        super().__init__()
        self.dilated_conv = _conv1d(residual_channels, 2 * residual_channels, 3, padding=dilation,
                                    dilation=dilation)
        self.diffusion_projection = nn.Linear(EMBEDDING_HIDDEN, residual_channels)
        if n_mels is not None:
            self.conditioner_projection = _conv1d(n_mels, 2 * residual_channels, 1)
        self.output_projection = _conv1d(residual_channels, 2 * residual_channels, 1)

    @property
    def dilation(self) -> int:
        return self.dilated_conv.dilation[0]

    def forward(self, x: Tensor, skip_sum: Tensor | None, step_embedding: Tensor, conditioning: Tensor | None,
                outside: Tensor | None = None, *, projects: bool = False,
                keep_gate: bool = True) -> tuple[Tensor, Tensor]:
        """(next residual stream, skip_sum with this layer's skip added in place; the skip if skip_sum is None).
        `conditioning` is the upsampled mel if `projects`, else this layer's projected conditioning; `outside`
        (bool [B, 1, N]) marks padding; `keep_gate=False` trades memory for recomputation in the backward."""
        return gated_layer(x, skip_sum, self.diffusion_projection(step_embedding), conditioning, outside,
                           self.dilated_conv, self.conditioner_projection if projects else None,
                           self.output_projection, keep_gate)


class DiffWave(nn.Module):
    """eps_theta(x_t, t, mel): the noise estimate for audio x_t [B, N] at 0-based steps t [B].

    `n_mels=None` builds the unconditional model (no upsampler, no conditioner projections).
    `activation_memory_mb` bounds what the layers keep for the backward (see `recomputed_layers`): a training
    memory setting that changes no value.
    """

    def __init__(self, *, num_steps: int, residual_channels: int = 64, residual_layers: int = 30,
                 dilation_cycle: int = 10, n_mels: int | None = 80, hop_length: int = 256,
                 activation_memory_mb: float | None = None) -> None:
        super().__init__()
        self.num_steps = num_steps
        self.activation_memory_mb = activation_memory_mb
        self.residual_channels = residual_channels
        self.n_mels = n_mels
        self.hop_length = hop_length
        self.input_projection = _conv1d(1, residual_channels, 1)
        self.diffusion_embedding = DiffusionEmbedding(num_steps)
        if n_mels is not None:
            self.spectrogram_upsampler = SpectrogramUpsampler(hop_length)
        self.residual_layers = nn.ModuleList(
            ResidualBlock(residual_channels, 2 ** (i % dilation_cycle), n_mels)
            for i in range(residual_layers)
        )
        self.skip_projection = _conv1d(residual_channels, residual_channels, 1)
        self.output_projection = _conv1d(residual_channels, 1, 1)
        # Zero output at init: training starts from eps_hat = 0 rather than from random noise.
        nn.init.zeros_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)

    @classmethod
    def from_config(cls, config: Config) -> DiffWave:
        model = config.model
        return cls(num_steps=config.diffusion.num_steps, residual_channels=model.residual_channels,
                   residual_layers=model.residual_layers, dilation_cycle=model.dilation_cycle,
                   n_mels=config.audio.n_mels if model.conditional else None,
                   hop_length=config.audio.hop_length, activation_memory_mb=config.train.activation_memory_mb)

    @property
    def conditional(self) -> bool:
        return self.n_mels is not None

    @property
    def reach(self) -> int:
        """Samples on each side that one output sample of a forward pass depends on: the sum of the
        dilations (kernel 3). Windowed synthesis needs context of about this order at window edges."""
        return sum(layer.dilation for layer in self.residual_layers)

    def recomputed_layers(self, h: Tensor) -> int:
        """How many of the first layers recompute their gate in the backward, for a residual stream `h`.

        Each layer keeps 3 tensors of h's size for the backward, or 1 when it recomputes; as few layers as
        possible recompute so that all fit in `activation_memory_mb` (all of them if even that is not enough).
        """
        if self.activation_memory_mb is None or not torch.is_grad_enabled():
            return 0
        size = h.numel() * h.element_size()
        excess = 3 * len(self.residual_layers) * size - self.activation_memory_mb * 2**20
        return min(len(self.residual_layers), max(0, math.ceil(excess / (2 * size))))

    def condition(self, mel: Tensor, out: Tensor | None = None) -> Tensor | None:
        """All layers' conditioning for mel [B, n_mels, F], as [B, L, 2C, F * hop]; None if unconditional.

        It does not depend on the step, so samplers compute it once per utterance and reuse it at every step.
        With grad or off the CPU the L per-layer 1x1 projections run as one stacked convolution. For CPU
        inference they run as matrix products written time-major ([B, L, F * hop, 2C] in memory, the shape
        above being a transposed view; bf16 under CPU autocast to bf16), so that the tiled forward of
        model/cpu_kernels.py reads each tile's conditioning as one block.
        `out`, a tensor of the result's shape, receives the result (directly on the CPU inference path, by a
        copy otherwise): a caller conditioning window after window can reuse one buffer rather than have the
        operating system fault in fresh gigabytes (about 1 s per 5 s of audio for BASE on a CPU). On the CPU
        fp32 path `out` may be fp16, as samplers keep it (`conditioning_dtype`): products computed in fp32 and
        rounded once.
        """
        if self.n_mels is None:
            return None
        if mel.ndim != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"mel must have shape [batch, {self.n_mels}, frames], got {tuple(mel.shape)}")
        gemm_dtype = tile_gemm_dtype(mel)
        if gemm_dtype is not None:  # the upsampler in fp32: CPU autocast's bf16 transposed convs took 6.5x longer
            with torch.autocast("cpu", enabled=False):
                upsampled = self.spectrogram_upsampler(mel)
            return time_major_conditioning(upsampled, self.residual_layers, gemm_dtype, out)
        upsampled = self.spectrogram_upsampler(mel)
        projections = [layer.conditioner_projection for layer in self.residual_layers]
        weight, bias = torch.cat([p.weight for p in projections]), torch.cat([p.bias for p in projections])
        conditioning = F.conv1d(upsampled, weight, bias).view(mel.shape[0], len(projections), -1, upsampled.shape[-1])
        return conditioning if out is None else out.copy_(conditioning)

    def conditioning_dtype(self, dtype: torch.dtype, device: torch.device) -> torch.dtype:
        """The dtype a sampler keeps this model's conditioning in for a no-grad forward in `dtype` on `device`:
        on a CPU, the one its engine reads (`cpu_kernels.conditioning_storage`: fp16 for fp32); elsewhere
        `dtype` itself."""
        return conditioning_storage(dtype) if device.type == "cpu" else dtype

    def _check_conditioning(self, x: Tensor, cond: Tensor | None, mel: Tensor | None) -> None:
        if self.n_mels is None:
            if cond is not None or mel is not None:
                raise ValueError("the unconditional model takes no conditioning; pass neither cond nor mel")
            return
        if (cond is None) == (mel is None):
            raise ValueError("the conditional model needs one of cond=model.condition(mel) or mel=mel")
        if mel is not None:
            if mel.ndim != 3 or mel.shape[1] != self.n_mels or mel.shape[2] * self.hop_length != x.shape[1]:
                raise ValueError(f"mel has shape {tuple(mel.shape)} but audio of shape {tuple(x.shape)} needs "
                                 f"[{x.shape[0]}, {self.n_mels}, {x.shape[1] / self.hop_length:g}] (mel frames * "
                                 "hop_length must equal the audio length)")
            return
        expected = (x.shape[0], len(self.residual_layers), 2 * self.residual_channels, x.shape[1])
        if tuple(cond.shape) != expected:
            raise ValueError(f"cond has shape {tuple(cond.shape)} but audio of shape {tuple(x.shape)} needs "
                             f"{expected} (mel frames * hop_length must equal the audio length)")

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, mask: Tensor | None = None, *,
                mel: Tensor | None = None) -> Tensor:
        """Noise estimate [B, N] for x [B, N] at steps t [B], conditioned on `cond` from `condition` (samplers:
        computed once, reused at every step) or on `mel` [B, n_mels, F] itself (training: one step per mel).

        Given `mel`, each layer projects the upsampled mel itself, as the paper draws it: under autograd the
        stacked [B, L, 2C, N] conditioning would hold L layers' worth of memory, and the backward of reading
        layer i's slice of it fills a zero gradient of the whole stack once per layer (O(L^2) traffic). Each
        layer is one autograd function that keeps 3 [B, C, N] activations for the backward, or 1 in the first
        `recomputed_layers(h)` layers (model/gated_layer.py).

        Float steps between integers are accepted because DiffWave's fast sampler needs them. `mask` (bool
        [B, N], True on real samples) makes a padded batch behave like separate utterances: the dilated
        convolutions are the only layers that mix positions, and with their input zeroed outside the mask
        they see the same zeros at an utterance's end as a lone utterance's zero padding does.
        """
        if x.ndim != 2:
            raise ValueError(f"audio must have shape [batch, samples], got {tuple(x.shape)}")
        if t.shape != x.shape[:1]:
            raise ValueError(f"steps must have shape [{x.shape[0]}] to match the audio, got {tuple(t.shape)}")
        if mask is not None and (mask.shape != x.shape or mask.dtype != torch.bool):
            raise ValueError(f"mask must be a bool tensor of shape {tuple(x.shape)}, got {mask.dtype} "
                             f"{tuple(mask.shape)}")
        self._check_conditioning(x, cond, mel)
        gemm_dtype = tile_gemm_dtype(x)
        if gemm_dtype is not None:  # CPU inference: model/cpu_kernels.py, whose GEMMs alone run in gemm_dtype
            cond = cond if mel is None else self.condition(mel)  # under the caller's autocast: the engine's form
            with torch.autocast("cpu", enabled=False):  # the per-step products around the stack: fp32, no casts
                return self._tiled_forward(x, t, cond, mask, gemm_dtype)
        h = F.relu(self.input_projection(x.unsqueeze(1)))
        step_embedding = self.diffusion_embedding(t)
        skip_sum = None
        outside = None if mask is None else ~mask.unsqueeze(1)
        upsampled = None if mel is None else self.spectrogram_upsampler(mel)
        recomputed = self.recomputed_layers(h)
        for i, layer in enumerate(self.residual_layers):
            conditioning = upsampled if cond is None else cond[:, i]
            h, skip_sum = layer(h, skip_sum, step_embedding, conditioning, outside,
                                projects=upsampled is not None, keep_gate=i >= recomputed)
        return self._output(skip_sum)

    def _tiled_forward(self, x: Tensor, t: Tensor, cond: Tensor | None, mask: Tensor | None,
                       gemm_dtype: torch.dtype) -> Tensor:
        """`forward` on the CPU engines, time-major ([N, C] per row) from the input projection to the output:
        no layout conversion around the stack, and matrix products instead of 1x1 convolutions (oneDNN's took
        5% of a bf16 step for BASE on 3.3 s, with a transposing copy and separate scaling and ReLU passes).
        Row by row: an fp32 matrix product over a batch may round differently from one row, and the bf16 engine
        would round that difference up; an utterance must sound the same in any batch."""
        in_weight, in_bias = self.input_projection.weight[:, 0, 0], self.input_projection.bias
        h = torch.addcmul(in_bias, x.unsqueeze(-1), in_weight).clamp_min_(0.0)  # [B, N, C]: relu(w x + b)
        rows = [self.diffusion_embedding(t[i:i + 1]) for i in range(len(t))]
        steps = torch.cat([torch.stack([layer.diffusion_projection(row) for layer in self.residual_layers], 1)
                           for row in rows])
        skip_sum = tiled_layers(self.residual_layers, h, steps, cond, mask, gemm_dtype)  # [B, N, C]
        skip_weight = self.skip_projection.weight[:, :, 0].t() / math.sqrt(len(self.residual_layers))
        out_weight, out_bias = self.output_projection.weight[0, :, 0], self.output_projection.bias
        out = x.new_empty(x.shape)
        for row in range(x.shape[0]):
            hidden = torch.addmm(self.skip_projection.bias, skip_sum[row], skip_weight).clamp_min_(0.0)
            torch.addmv(out_bias, hidden, out_weight, out=out[row])
        return out

    def _output(self, skip_sum: Tensor) -> Tensor:
        """The sum of the skips [B, C, N] through the skip and output projections: the estimate [B, N]."""
        h = skip_sum / math.sqrt(len(self.residual_layers))
        h = F.relu(self.skip_projection(h))
        return self.output_projection(h).squeeze(1)

    def reference_forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, mask: Tensor | None = None, *,
                          mel: Tensor | None = None) -> Tensor:
        """`forward` as the paper draws it, in plain torch ops one layer at a time (the reference for the engines
        that `forward` runs: model/gated_layer.py and the tiles of model/cpu_kernels.py are tested equal to it).
        Each layer adds its step projection to the residual stream, zeroes it outside `mask`, applies the
        dilated convolution, adds its mel conditioning (`cond[:, i]` in fp32, or its projection of the
        upsampled `mel`), gates (sigmoid x tanh) and splits the 1x1 output into residual and skip. Slower, and
        under autograd it keeps every intermediate."""
        self._check_conditioning(x, cond, mel)
        step_embedding = self.diffusion_embedding(t)
        h = F.relu(self.input_projection(x.unsqueeze(1)))
        upsampled = None if mel is None else self.spectrogram_upsampler(mel)
        skips = []
        for i, layer in enumerate(self.residual_layers):
            y = h + layer.diffusion_projection(step_embedding).unsqueeze(-1)
            if mask is not None:
                y = y * mask.unsqueeze(1)
            y = layer.dilated_conv(y)
            if self.conditional:
                y = y + (layer.conditioner_projection(upsampled) if cond is None else cond[:, i])
            gate, filter_ = torch.chunk(y, 2, dim=1)
            residual, skip = torch.chunk(layer.output_projection(torch.sigmoid(gate) * torch.tanh(filter_)), 2, dim=1)
            h = (h + residual) / math.sqrt(2.0)
            skips.append(skip)
        h = F.relu(self.skip_projection(torch.stack(skips).sum(0) / math.sqrt(len(skips))))
        return self.output_projection(h).squeeze(1)
