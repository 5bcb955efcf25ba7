"""Vocoding speed: real-time factor, achieved GFLOP/s against this device's measured matmul peak; memory.

    python benchmarks/inference_speed.py [--seconds 5] [--models base,large] [--samplers fast,ddim,ddpm]
                                         [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--long-seconds 30]
                                         [--memory-seconds 30,600]

Everything is measured in this one run, on randomly initialised models (speed does not depend on the
weights), through `Vocoder.vocode`, the path users call:
- RTF = compute seconds / audio seconds (below 1: faster than real time), after one warm-up call.
- FLOPs of the cached formulation per audio sample and reverse step (multiply-adds x 2; elementwise work
  not counted): per residual layer the dilated conv 2*3*C*2C and the output 1x1 conv 2*C*2C, i.e. 16 C^2;
  plus the skip 1x1 conv 2 C^2 and the input/output projections 4 C:  L * 16 C^2 + 2 C^2 + 4 C
  (BASE: 1.98 MFLOP; LARGE: 7.90 MFLOP). The conditioning (upsampler + L projections 2*n_mels*2C) is
  computed once per utterance (per window, for long inputs) and not counted per step; its time is in the RTF.
- peak = the best of several square fp32 (or --dtype) matmuls of size 2048 on the same device and threads.
- cached vs per-step conditioning: the same fast-sampler loop with `model.condition(mel)` recomputed at
  every step, as the reference implementation does, for BASE. Both sides allocate their conditioning
  afresh (as a one-off caller would), so the ratio is the recomputation (upsampler + projections) plus the
  fresh memory it needs each time, against one projection per utterance.
- long input: RTF for --long-seconds of audio (chunked synthesis) against the --seconds RTF.
- memory: the peak resident memory of a fresh process that vocodes --memory-seconds of audio with BASE,
  one child process per length, with `ddim` at 1 step so that 10 minutes take a few minutes on a CPU. The
  step count does not change the peak: every step of a window reuses the same tensors (x, the window's
  conditioning, the forward's scratch), and windows run one after another, so more steps repeat the same
  allocations rather than add to them. The peak is the process's high-water mark (ru_maxrss; on CUDA, the
  device's max_memory_allocated is printed too).
The ddpm rows use a 1-second clip (RTF is per second of audio; the full chain is long on a CPU).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from queue import Empty

import torch
from common import matmul_peak_gflops, synchronize

from diffwave.config import load_config
from diffwave.diffusion import NoiseSchedule, fast_schedule, sample
from diffwave.diffusion.reverse_plans import DDIM_DEFAULT_STEPS
from diffwave.inference import Vocoder
from diffwave.model import DiffWave

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def flops_per_sample_step(config) -> float:
    c, layers = config.model.residual_channels, config.model.residual_layers
    return layers * 16 * c * c + 2 * c * c + 4 * c


def random_vocoder(name: str, device: torch.device, dtype: torch.dtype) -> Vocoder:
    config = load_config(name)
    torch.manual_seed(0)
    model = DiffWave.from_config(config)
    torch.nn.init.normal_(model.output_projection.weight, std=0.01)  # a non-zero output, like a trained model
    return Vocoder(model, config, device, dtype)


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def vocode_rtf(vocoder: Vocoder, seconds: float, sampler: str) -> float:
    frames = round(seconds * vocoder.sample_rate / vocoder.hop_length)
    mel = torch.randn(vocoder.n_mels, frames) - 5.0  # hifigan-range log-mel values
    generator = torch.Generator().manual_seed(0)
    run = lambda: vocoder.vocode(mel, sampler=sampler, generator=generator)  # noqa: E731
    run()  # warm-up
    audio_seconds = frames * vocoder.hop_length / vocoder.sample_rate
    return timed(run, vocoder.device) / audio_seconds


def per_step_conditioning_ratio(vocoder: Vocoder, seconds: float) -> float:
    """Time of the fast loop recomputing the conditioning at every step over the cached loop."""
    model, device = vocoder.model, vocoder.device
    frames = round(seconds * vocoder.sample_rate / vocoder.hop_length)
    mel = (torch.randn(1, vocoder.n_mels, frames) - 5.0).to(device)
    plan = fast_schedule(NoiseSchedule.from_config(vocoder.config.diffusion), vocoder.config.diffusion.fast_schedule)
    shape = (1, frames * vocoder.hop_length)

    def cached() -> None:
        cond = model.condition(mel)
        sample(plan, lambda x, t: model(x, t, cond), shape, device=device, generator=torch.Generator(device))

    def per_step() -> None:
        sample(plan, lambda x, t: model(x, t, model.condition(mel)), shape, device=device,
               generator=torch.Generator(device))

    with torch.inference_mode():
        cached()
        return timed(per_step, device) / timed(cached, device)


def peak_memory(name: str, seconds: float, device: torch.device, dtype: torch.dtype, queue) -> None:
    """Child process: vocode `seconds` of audio with ddim at 1 step and report its peak memory (MiB)."""
    vocoder = random_vocoder(name, device, dtype)
    frames = round(seconds * vocoder.sample_rate / vocoder.hop_length)
    vocoder.vocode(torch.randn(vocoder.n_mels, frames) - 5.0, sampler="ddim", steps=1,
                   generator=torch.Generator().manual_seed(0))
    on_device = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, on_device))


def memory_rows(lengths: list[float], device: torch.device, dtype: torch.dtype) -> None:
    """Peak memory per length, each in a fresh process (a high-water mark cannot be reset in-process)."""
    context = multiprocessing.get_context("spawn")
    peaks = []
    for seconds in lengths:
        queue = context.Queue()
        child = context.Process(target=peak_memory, args=("base", seconds, device, dtype, queue))
        child.start()
        try:
            host, on_device = queue.get(timeout=3600)
        except Empty:
            child.kill()
            raise SystemExit(f"the memory child for {seconds:g} s ended without a result (exit code {child.exitcode}; "
                             "out of memory?)") from None
        child.join()
        peaks.append(host)
        extra = f", CUDA max allocated {on_device:.0f} MiB" if device.type == "cuda" else ""
        print(f"BASE ddim 1 step, {seconds:g} s of audio: peak resident memory {host:.0f} MiB{extra}", flush=True)
    print(f"BASE peak memory {lengths[-1]:g} s / {lengths[0]:g} s: {peaks[-1] / peaks[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--long-seconds", type=float, default=30.0, help="0 skips the long-input row")
    parser.add_argument("--memory-seconds", default="30,600", help="audio lengths for the memory rows; '' skips")
    parser.add_argument("--models", default="base,large")
    parser.add_argument("--samplers", default="fast,ddim,ddpm")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    peak = matmul_peak_gflops(device, dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"inference speed on {where}, {args.dtype}; measured matmul peak {peak:.1f} GFLOP/s")
    print(f"{'model':>6} {'sampler':>8} {'steps':>5} {'audio s':>7} {'RTF':>8} {'GFLOP/s':>8} {'% peak':>7}")
    for name in args.models.split(","):
        vocoder = random_vocoder(name, device, dtype)
        for sampler in args.samplers.split(","):
            seconds = 1.0 if sampler == "ddpm" else args.seconds
            steps = {"fast": len(vocoder.config.diffusion.fast_schedule), "ddpm": vocoder.config.diffusion.num_steps,
                     "ddim": min(DDIM_DEFAULT_STEPS, vocoder.config.diffusion.num_steps)}[sampler]
            rtf = vocode_rtf(vocoder, seconds, sampler)
            gflops = flops_per_sample_step(vocoder.config) * vocoder.sample_rate * steps / rtf / 1e9
            share = 100 * gflops / peak
            row = f"{name:>6} {sampler:>8} {steps:5d} {seconds:7.1f} {rtf:8.3f} {gflops:8.1f} {share:6.1f}%"
            print(row, flush=True)
    base = random_vocoder("base", device, dtype)
    print(f"BASE fast, per-step / cached conditioning time: {per_step_conditioning_ratio(base, args.seconds):.2f}x")
    if args.long_seconds > 0:
        short, long = vocode_rtf(base, args.seconds, "fast"), vocode_rtf(base, args.long_seconds, "fast")
        ratio = long / short
        print(f"BASE fast, RTF {args.long_seconds:g} s / {args.seconds:g} s: {long:.3f} / {short:.3f} = {ratio:.2f}")
    if args.memory_seconds:
        memory_rows([float(seconds) for seconds in args.memory_seconds.split(",")], device, dtype)


if __name__ == "__main__":
    main()
