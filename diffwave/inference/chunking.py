"""Long inputs in overlapping windows, and noise that depends on the sample position, not the window.

Memory. The cached conditioning costs L x 2C values per audio sample (BASE: 3,840 values, ~340 MB per
second of 22.05 kHz audio at 4 bytes, ~170 MB at the 2 bytes a CPU keeps it in; LARGE twice that), so an
utterance is synthesised window by window, each running the whole reverse chain (chunk-major) and holding only
its own conditioning.

Layout (in mel frames). Boundaries sit every `chunk` frames. Window k covers the core [k*chunk, (k+1)*chunk)
plus `context` frames on each side (clipped to the utterance), so its edges, where the network sees zero
padding instead of audio, lie away from the audio it contributes. Neighbours are cross-faded over `context`
frames centred on their boundary, so every cross-faded sample has at least context/2 of real audio on
either side in both windows. The fades are raised cosines that sum to one: the two windows hold nearly the
same signal (same noise, same mel), so amplitudes, not powers, must add up. The last window absorbs a
remainder of up to `context` frames rather than starting a window that would be mostly context.

The vocoder (many utterances, window-major batches) and the denoiser (one signal) both run `overlap_add`.

Noise. For chunked output to match unchunked output, x_T and every step's fresh noise must be a function of
the absolute sample position: noise comes in fixed blocks of NOISE_BLOCK samples, each drawn from its own
seed mixed from (utterance seed, draw, block index), so any slice can be produced on demand and the
unchunked path is simply the one window [0, N). Blocks are drawn on the CPU, so a seed gives the same noise
on every device.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffwave.errors import DiffwaveError

NOISE_BLOCK = 8192  # samples per independently seeded noise block
CHUNK_SECONDS = 3.0  # window core for a 4-byte conditioning cache: bounds BASE's peak memory to ~2.3 GB
AUTO_CHUNK = "auto"  # Vocoder.vocode's default: CHUNK_SECONDS scaled to the same memory in the cache's dtype
OVERLAP_SECONDS = 0.3  # context on each side of a window, and the cross-fade length


def mix_seed(*words: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy's SeedSequence does the mixing)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def draw_seed(generator: torch.Generator | None) -> int:
    """One base seed from `generator` (torch's global generator when None): everything positional derives
    from it, so the caller's generator state alone decides the output."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=device))


def utterance_seed(base_seed: int, mel: Tensor) -> int:
    """The noise seed of one utterance: a function of the base seed and the mel's values only.

    Keying by content (not by position in a batch) makes an utterance's audio independent of what else is
    in its batch; identical mels with the same base seed therefore get identical noise.
    """
    values = mel.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    digest = hashlib.blake2b(values, digest_size=8).digest()
    return mix_seed(base_seed, int.from_bytes(digest, "little"))


class PositionalNoise:
    """Standard normal noise for one utterance as a function of (draw, absolute sample position)."""

    def __init__(self, seed: int, block: int = NOISE_BLOCK) -> None:
        self.seed = seed
        self.block = block
        self._scratch = torch.empty(block)

    def fill(self, out: Tensor, draw: int, start: int) -> Tensor:
        """Write the noise of samples [start, start + len(out)) of `draw` into the 1-D CPU tensor `out`."""
        stop = start + out.numel()
        for index in range(start // self.block, math.ceil(stop / self.block)):
            generator = torch.Generator().manual_seed(mix_seed(self.seed, draw, index))
            torch.randn(self.block, generator=generator, out=self._scratch)
            lo, hi = max(start, index * self.block), min(stop, (index + 1) * self.block)
            out[lo - start:hi - start] = self._scratch[lo - index * self.block:hi - index * self.block]
        return out


def raised_cosine(length: int) -> Tensor:
    """A fade-in of `length` samples, sin^2 from 0 to 1 at sample centres; 1 - fade is its fade-out."""
    centres = (torch.arange(length, dtype=torch.float64) + 0.5) / max(length, 1)
    return torch.sin(centres * math.pi / 2).square().float()


@dataclass(frozen=True)
class ChunkLayout:
    """Windows over an utterance of F mel frames; `chunk=None` means one window (no chunking)."""

    chunk: int | None
    context: int

    def __post_init__(self) -> None:
        if self.chunk is not None and not 0 <= self.context <= self.chunk:
            raise ValueError(f"chunk context must lie in [0, chunk={self.chunk}] frames, got {self.context}")

    @classmethod
    def from_seconds(cls, chunk_seconds: float | None, overlap_seconds: float, frames_per_second: float) -> ChunkLayout:
        """Windows of `chunk_seconds` with `overlap_seconds` of context (None: one window), in frames."""
        if chunk_seconds is None:
            return cls(None, 0)
        if isinstance(chunk_seconds, str) or not chunk_seconds > 0 or not 0 <= overlap_seconds <= chunk_seconds:
            raise DiffwaveError(f"need chunk_seconds > 0 and 0 <= overlap_seconds <= chunk_seconds, got "
                                f"{chunk_seconds} and {overlap_seconds}")
        chunk = max(1, round(chunk_seconds * frames_per_second))
        return cls(chunk, min(chunk, round(overlap_seconds * frames_per_second)))

    def count(self, frames: int) -> int:
        """Windows needed for `frames`: one more only once a remainder exceeds the context."""
        if self.chunk is None:
            return 1
        return max(1, math.ceil((frames - self.context) / self.chunk))

    def window(self, k: int, frames: int) -> tuple[int, int]:
        """Frames [start, stop) that window k synthesises: its core plus context, clipped to the utterance."""
        if self.chunk is None:
            return 0, frames
        last = k == self.count(frames) - 1
        stop = frames if last else (k + 1) * self.chunk + self.context
        return max(0, k * self.chunk - self.context), stop

    def weights(self, k: int, frames: int, hop: int) -> Tensor:
        """Cross-fade weights of window k's samples: 0 in the outer context, faded around each boundary."""
        start, stop = self.window(k, frames)
        weights = torch.ones((stop - start) * hop)
        if self.chunk is None:
            return weights
        fade = raised_cosine(self.context * hop)
        if k > 0:
            begin = (k * self.chunk - start) * hop - fade.numel() // 2
            weights[:begin] = 0.0
            weights[begin:begin + fade.numel()] = fade
        if k < self.count(frames) - 1:
            begin = ((k + 1) * self.chunk - start) * hop - fade.numel() // 2
            weights[begin:begin + fade.numel()] = 1.0 - fade
            weights[begin + fade.numel():] = 0.0
        return weights


# run(items, spans): audio [len(items), >= longest span * hop] of one window of each listed item, where spans
# are the items' windows [start, stop) in frames (all windows of one call have the same index k).
WindowFn = Callable[[list[int], list[tuple[int, int]]], Tensor]


def overlap_add(layout: ChunkLayout, frames: Sequence[int], hop: int, run: WindowFn) -> list[Tensor]:
    """Signals of frames[i] * hop samples each (CPU float32), window by window: for every window index k, one
    call of `run` on all items that reach window k, each window's audio weighted by its cross-fade and added
    in place."""
    outputs = [torch.zeros(count * hop) for count in frames]
    for k in range(max(layout.count(count) for count in frames)):
        active = [i for i, count in enumerate(frames) if layout.count(count) > k]
        spans = [layout.window(k, frames[i]) for i in active]
        audio = run(active, spans)
        for row, (i, (start, stop)) in enumerate(zip(active, spans, strict=True)):
            weights = layout.weights(k, frames[i], hop)
            outputs[i][start * hop:stop * hop].addcmul_(weights, audio[row, :weights.numel()].float().cpu())
    return outputs
