"""Vocoding speed: real-time factor, achieved GFLOP/s against this device's measured matmul peak; memory.

    python benchmarks/inference_speed.py [--seconds 5] [--models base,large] [--samplers fast,ddim,ddpm]
                                         [--device cpu|cuda] [--dtypes fp32,bf16] [--long-seconds 30]
                                         [--memory-seconds 30,600] [--repeats 3]

Everything is measured in this one run, on randomly initialised models (speed does not depend on the
weights), through `Vocoder.vocode`, the path users call:
- RTF = compute seconds / audio seconds (below 1: faster than real time), after one warm-up call; in the table,
  the best of --repeats timed calls, as the peak is the best of several matmuls (a neighbour's load on a shared
  machine only ever slows a run down; one call's RTF moved by 8% between runs minutes apart on a VM).
- FLOPs of the cached formulation per audio sample and reverse step (multiply-adds x 2; elementwise work
  not counted): per residual layer the dilated conv 2*3*C*2C and the output 1x1 conv 2*C*2C, i.e. 16 C^2;
  plus the skip 1x1 conv 2 C^2 and the input/output projections 4 C:  L * 16 C^2 + 2 C^2 + 4 C
  (BASE: 1.98 MFLOP; LARGE: 7.90 MFLOP). The conditioning (upsampler + L projections 2*n_mels*2C) is
  computed once per utterance (per window, for long inputs) and not counted per step; its time is in the RTF.
- precisions side by side (--dtypes; default fp32,bf16, and fp16 on CUDA): RTF and % of that precision's
  matmul peak per precision, each through vocode's default windows (longer in a narrower dtype), and each
  lower precision's SNR against fp32 on the same noise (fidelity), both run as one window.
  bf16 on a CPU without bf16 matrix units (no AMX, no AVX512-BF16) is emulated, hence slower than fp32;
  `--dtype auto` measures which is faster on the machine it runs on (diffwave/precision.py).
- peak = the best of several square matmuls of size 2048 in that precision on the same device and threads,
  measured just before and just after each RTF timing (the higher of the two): a CPU's clock moves with its
  neighbours' load within minutes (README, Measured speed), so a peak measured once at the start of the run
  does not describe a timing made minutes later.
- cached vs per-step conditioning: the same fast-sampler loop with `model.condition(mel)` recomputed at
  every step, as the reference implementation does, for BASE. Both sides allocate their conditioning
  afresh (as a one-off caller would), so the ratio is the recomputation (upsampler + projections) plus the
  fresh memory it needs each time, against one projection per utterance.
- long input: RTF for --long-seconds of audio (chunked synthesis) against the --seconds RTF, and the RTF of
  the default windows (6 s on a CPU, 3 s for fp32 on a GPU) against one window of the whole input (the price
  of windowing: the context each window computes again), where that window's conditioning fits in 6 GiB
  (BASE at 30 s: 5.1 GiB on a CPU).
- fp32 on a CPU keeps its cached conditioning in fp16, as `vocode` does (model/cpu_kernels.py,
  `conditioning_storage`), so the fp32 rows and the SNR columns' fp32 reference include that rounding (93-111 dB
  below the signal; README, Measured speed).
- memory: the peak resident memory of a fresh process that vocodes --memory-seconds of audio with BASE,
  one child process per length, with `ddim` at 1 step so that 10 minutes take a few minutes on a CPU. The
  step count does not change the peak: every step of a window reuses the same tensors (x, the window's
  conditioning, the forward's scratch), and windows run one after another, so more steps repeat the same
  allocations rather than add to them. The peak is the process's high-water mark (`peak_resident_mib`: VmHWM on
  Linux; on CUDA, the device's max_memory_allocated is printed too).
The ddpm rows use a 1-second clip (RTF is per second of audio; the full chain is long on a CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from common import matmul_peak_gflops, run_child, synchronize

from diffwave.config import load_config
from diffwave.diffusion import NoiseSchedule, fast_schedule, sample
from diffwave.diffusion.reverse_plans import DDIM_DEFAULT_STEPS
from diffwave.inference import Vocoder
from diffwave.model import DiffWave
from diffwave.precision import DTYPES

ONE_WINDOW_BYTES = 6 * 2**30  # the long input's one-window comparison runs only where its conditioning fits


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


def fixed_mel(vocoder: Vocoder, seconds: float) -> torch.Tensor:
    """The same random mel for every precision (hifigan's range)."""
    frames = round(seconds * vocoder.sample_rate / vocoder.hop_length)
    return torch.randn(vocoder.n_mels, frames, generator=torch.Generator().manual_seed(1)) - 5.0


def vocode_fixed(vocoder: Vocoder, seconds: float, sampler: str, **options) -> torch.Tensor:
    """Audio of `fixed_mel` with a fixed seed: every precision gets the same mel and noise, so their audio can
    be compared."""
    return vocoder.vocode(fixed_mel(vocoder, seconds), sampler=sampler, generator=torch.Generator().manual_seed(0),
                          **options)


def vocode_rtf(vocoder: Vocoder, seconds: float, sampler: str, repeats: int = 1,
               **options) -> tuple[float, torch.Tensor]:
    """(RTF, audio) of `vocode_fixed`: the best of `repeats` timed calls after one warm-up call."""
    audio = [vocode_fixed(vocoder, seconds, sampler, **options)]  # warm-up
    elapsed = min(timed(lambda: audio.append(vocode_fixed(vocoder, seconds, sampler, **options)), vocoder.device)
                  for _ in range(repeats))
    return elapsed / (audio[-1].numel() / vocoder.sample_rate), audio[-1]


def rtf_and_peak(vocoder: Vocoder, seconds: float, sampler: str, repeats: int) -> tuple[float, float]:
    """(RTF of `vocode_rtf`, the matmul peak in the vocoder's precision measured just before and just after it,
    the higher of the two)."""
    before = matmul_peak_gflops(vocoder.device, vocoder.dtype)
    rtf = vocode_rtf(vocoder, seconds, sampler, repeats)[0]
    return rtf, max(before, matmul_peak_gflops(vocoder.device, vocoder.dtype))


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    return 10 * torch.log10(reference.pow(2).sum() / (other - reference).pow(2).sum().clamp(min=1e-30)).item()


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


def peak_memory(name: str, seconds: float, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Child process: vocode `seconds` of audio with ddim at 1 step; its peak memory (MiB)."""
    vocoder = random_vocoder(name, device, dtype)
    frames = round(seconds * vocoder.sample_rate / vocoder.hop_length)
    vocoder.vocode(torch.randn(vocoder.n_mels, frames) - 5.0, sampler="ddim", steps=1,
                   generator=torch.Generator().manual_seed(0))
    on_device = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return {"host": peak_resident_mib(), "device": on_device}


def peak_resident_mib() -> float:
    """This process's peak resident memory. On Linux, VmHWM: its own address space's high-water mark. ru_maxrss
    also counts what the parent had resident when it forked this child (30 s rows read 5,171 MiB after the
    parent's long-input rows, 1,977 MiB from a small parent)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_rows(lengths: list[float], device: torch.device, label: str) -> None:
    """Peak memory per length, each in a fresh process (a high-water mark cannot be reset in-process); a child
    that dies stops the benchmark at once with its exit code and error (`run_child`)."""
    peaks = []
    for seconds in lengths:
        child = [sys.executable, __file__, "--device", str(device), "--memory-child", label, f"{seconds:g}"]
        result = json.loads(run_child(child, f"the {label} memory child for {seconds:g} s").strip().splitlines()[-1])
        peaks.append(result["host"])
        extra = f", CUDA max allocated {result['device']:.0f} MiB" if device.type == "cuda" else ""
        print(f"BASE {label} ddim 1 step, {seconds:g} s of audio: peak resident memory {result['host']:.0f} MiB"
              f"{extra}", flush=True)
    print(f"BASE {label} peak memory {lengths[-1]:g} s / {lengths[0]:g} s: {peaks[-1] / peaks[0]:.2f}")


def memory_lengths(text: str) -> list[float]:
    """--memory-seconds: comma-separated lengths > 0; '' or '0' skips the memory rows."""
    if text.strip() in ("", "0"):
        return []
    try:
        lengths = [float(seconds) for seconds in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of seconds: {text!r}") from None
    if min(lengths) <= 0:
        raise argparse.ArgumentTypeError(f"every length must be > 0 (0 alone skips the rows), got {text!r}")
    return lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--long-seconds", type=float, default=30.0, help="0 skips the long-input row")
    parser.add_argument("--memory-seconds", type=memory_lengths, default="30,600",
                        help="audio lengths for the memory rows; 0 or '' skips them")
    parser.add_argument("--models", default="base,large")
    parser.add_argument("--samplers", default="fast,ddim,ddpm")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", help="comma-separated precisions (default: fp32,bf16; plus fp16 on CUDA)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per RTF in the table (the best)")
    parser.add_argument("--memory-child", nargs=2, metavar=("DTYPE", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.memory_child:
        dtype, seconds = args.memory_child
        print(json.dumps(peak_memory("base", float(seconds), device, DTYPES[dtype])))
        return
    names = (args.dtypes or ("fp32,bf16,fp16" if device.type == "cuda" else "fp32,bf16")).split(",")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"inference speed on {where}; RTF: best of {args.repeats} calls; % peak: of the matmul peak measured "
          "around each timing (GFLOP/s in brackets)")
    columns = "".join(f" {n + ' RTF':>9} {'% peak':>14}" for n in names)
    fidelity = "".join(f" {n + ' SNR dB':>11}" for n in names if n != "fp32")
    print(f"{'model':>6} {'sampler':>8} {'steps':>5} {'audio s':>7}{columns}{fidelity}")
    for model in args.models.split(","):
        vocoders = {name: random_vocoder(model, device, DTYPES[name]) for name in names}
        config = vocoders[names[0]].config
        for sampler in args.samplers.split(","):
            seconds = 1.0 if sampler == "ddpm" else args.seconds
            steps = {"fast": len(config.diffusion.fast_schedule), "ddpm": config.diffusion.num_steps,
                     "ddim": min(DDIM_DEFAULT_STEPS, config.diffusion.num_steps)}[sampler]
            results = {name: rtf_and_peak(vocoder, seconds, sampler, args.repeats)
                       for name, vocoder in vocoders.items()}
            row = f"{model:>6} {sampler:>8} {steps:5d} {seconds:7.1f}"
            for rtf, peak in results.values():
                gflops = flops_per_sample_step(config) * config.audio.sample_rate * steps / rtf / 1e9
                row += f" {rtf:9.3f} {100 * gflops / peak:6.1f}% ({peak:4.0f})"
            if "fp32" in results:  # one window each: the default windows grow as the dtype narrows
                whole = {name: vocode_fixed(vocoder, seconds, sampler, chunk_seconds=None)
                         for name, vocoder in vocoders.items()}
                row += "".join(f" {snr_db(whole['fp32'], audio):11.1f}" for name, audio in whole.items()
                               if name != "fp32")
            print(row, flush=True)
    base = random_vocoder("base", device, DTYPES[names[0]])
    print(f"BASE fast {names[0]}, per-step / cached conditioning time: "
          f"{per_step_conditioning_ratio(base, args.seconds):.2f}x")
    if args.long_seconds > 0:
        short, long = vocode_rtf(base, args.seconds, "fast")[0], vocode_rtf(base, args.long_seconds, "fast")[0]
        print(f"BASE fast {names[0]}, RTF {args.long_seconds:g} s / {args.seconds:g} s: {long:.3f} / {short:.3f} = "
              f"{long / short:.2f}")
        model = base.model
        cache = (args.long_seconds * base.sample_rate * len(model.residual_layers) * 2 * model.residual_channels
                 * model.conditioning_dtype(base.dtype, device).itemsize)
        if cache > ONE_WINDOW_BYTES:
            print(f"BASE fast {names[0]}, {args.long_seconds:g} s in one window: skipped (its conditioning would "
                  f"take {cache / 2**30:.1f} GiB)")
        else:
            whole = vocode_rtf(base, args.long_seconds, "fast", chunk_seconds=None)[0]
            print(f"BASE fast {names[0]}, {args.long_seconds:g} s, RTF with default windows / one window: "
                  f"{long:.3f} / {whole:.3f} = {long / whole:.2f}")
    for name in names if args.memory_seconds else ():
        memory_rows(args.memory_seconds, device, name)


if __name__ == "__main__":
    main()
