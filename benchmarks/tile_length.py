"""Tile length of the fp32 CPU inference engine: one network evaluation of BASE (random weights) on N seconds,
per tile length (`model/cpu_kernels.py` INFERENCE_TILE), beside the bf16 engine, which runs whole utterances.

    python benchmarks/tile_length.py [--seconds 5] [--fp32 2048,4096,8192]

Prints the median of 5 timed evaluations per length (after one warm-up), and the CPU it ran on. The conditioning
is kept as samplers keep it (fp16 for fp32, `cpu_kernels.conditioning_storage`). bf16 needs a CPU
with bf16 matrix units (AMX, AVX512-BF16) to mean anything; elsewhere PyTorch emulates it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffwave.model import DiffWave, cpu_kernels
from diffwave.precision import cpu_model


def lengths(text: str) -> list[int]:
    return [int(value) for value in text.split(",") if value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fp32", type=lengths, default=[2048, 4096, 8192])
    args = parser.parse_args()
    torch.manual_seed(0)
    model = DiffWave(num_steps=50, residual_channels=64, residual_layers=30, dilation_cycle=10, n_mels=80,
                     hop_length=256).eval()
    frames = int(args.seconds * 22050) // 256
    x, mel, t = torch.randn(1, frames * 256), torch.randn(1, 80, frames), torch.tensor([3.0])
    default = cpu_kernels.INFERENCE_TILE
    print(f"BASE, one evaluation of {frames * 256 / 22050:.2f} s; CPU {cpu_model()}, {torch.get_num_threads()} threads")
    for dtype, name, tiles in ((torch.float32, "fp32", args.fp32), (torch.bfloat16, "bf16", [None])):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            stored = model.conditioning_dtype(dtype, torch.device("cpu"))  # as samplers keep it: fp16 for fp32
            out = cpu_kernels.empty_conditioning(1, len(model.residual_layers), 2 * model.residual_channels,
                                                 frames * 256, stored)
            cond = model.condition(mel, out=out)
            for tile in tiles:
                if tile is not None:
                    cpu_kernels.INFERENCE_TILE = tile
                model(x, t, cond)
                times = []
                for _ in range(5):
                    start = time.perf_counter()
                    model(x, t, cond)
                    times.append(time.perf_counter() - start)
                mark = " (default)" if tile == default else ""
                label = "whole utterance" if tile is None else f"tile {tile:>6}{mark}"
                print(f"{name} {label}: {statistics.median(times) * 1e3:7.1f} ms", flush=True)
    cpu_kernels.INFERENCE_TILE = default


if __name__ == "__main__":
    main()
