"""Training throughput, arithmetic rate and peak memory of the real training loop, on the device it runs on.

    python benchmarks/train_speed.py [--config base] [--batch-size 4] [--frames 62] [--steps 5]
                                     [--precisions fp32,bf16] [--activation-memory-mb 3900,null] [--reference-src DIR]
                                     [--dilated-conv matmuls,convolution] [--profile]

Builds a small synthetic corpus in a temp folder, preprocesses it with the config's front-end, then times
`Trainer.fit` (data loading, forward, backward, optimizer, EMA) after one warm-up step, up to the end of its
last step (not the checkpoint a run writes when it ends), each precision in a fresh process so that its peak
memory is its own. Data loads in the training process (data.num_workers=0): with the corpus's 2-batch epochs, a
worker forked at every epoch would share the trainer's gigabytes of activations copy-on-write, and the
trainer's next writes to them fault page by page (0.5M page faults and about 1.2 s of system time per step
measured for BASE 4 x 62), a cost a real run's long epochs pay once per epoch.
One row per precision (and per train.activation_memory_mb value with --activation-memory-mb: rows labelled
e.g. `fp32 3900`, `fp32 null`, the latter never recomputing):
- samples/s: audio samples trained on per second (batch * frames * hop per step);
- GFLOP/s: the network's useful arithmetic per second (3x the forward's multiply-adds, counted from the
  config), and that as a fraction of this device's measured matmul peak in the same precision;
- peak MiB: the process's peak resident set (CUDA: max allocated).
--reference-src DIR (the `src` folder of a checkout of lmnt-com/diffwave, outside this project) also times the
reference implementation's training step at the same shapes in a fresh process, and prints the ratio.
--profile prints the share of each phase of a step (data, draws, forward, backward, optimizer, EMA, logging).
--dilated-conv times the layers' dilated convolution both ways on this CPU, a row each: as matrix products on
shifted slices of the padded input (what a CPU runs, `model.gated_layer.taps_as_matmuls`) and as torch's
convolution (what other devices run), so that the choice can be checked on any CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import resource
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from common import matmul_peak_gflops, run_child, synchronize

from diffwave.config import Config, load_config
from diffwave.data.preprocess import preprocess
from diffwave.model import gated_layer
from diffwave.precision import DTYPES
from diffwave.training.distributed import init_distributed
from diffwave.training.heap import keep_freed_memory
from diffwave.training.trainer import Trainer

PHASES = ("enumerate(DataLoader)", "train/draws", "train/forward", "train/backward", "train/optimizer", "train/ema",
          "train/log", "train/validate", "train/save")


def synthetic_corpus(root: Path, sample_rate: int, count: int, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(count):
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        tone = 0.3 * np.sin(2 * np.pi * (120 + 10 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(root / f"clip{i:03d}.wav", tone.astype(np.float32), sample_rate)
    return root


def training_flops_per_sample(config: Config) -> float:
    """Multiply-adds x 2 of one forward per audio sample, x 3 for forward + backward."""
    c, layers, mels = config.model.residual_channels, config.model.residual_layers, config.audio.n_mels
    per_layer = 2 * (3 * c * 2 * c + c * 2 * c + (mels * 2 * c if config.model.conditional else 0))
    return 3 * (layers * per_layer + 2 * c * c + 4 * c)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def settings(args: argparse.Namespace, precision: str, memory: str | None) -> list[str]:
    memory_setting = [] if memory is None else [f"train.activation_memory_mb={memory}"]
    return [*memory_setting, f"train.batch_size={args.batch_size}", f"data.crop_frames={args.frames}",
            f"train.precision={precision}",
            "train.log_every=100000", "train.valid_every=100000", "train.sample_every=100000",
            "train.save_every=100000", "data.num_workers=0", "data.valid_fraction=0", "data.test_fraction=0"]


def time_precision(args: argparse.Namespace, features: Path, work: Path, precision: str,
                   memory: str | None) -> dict[str, float]:
    """Runs in its own process (see `main`): warm-up step, then `args.steps` timed (or profiled) steps."""
    device = torch.device(args.device)
    keep_freed_memory()  # as `diffwave train` does
    if args.dilated_conv:  # one engine in this child
        gated_layer.taps_as_matmuls = lambda padded: args.dilated_conv == ["matmuls"]
    config = load_config(args.config, [*settings(args, precision, memory), "train.max_steps=1"])
    trainer = Trainer.from_config(config, features, work / f"run-{precision}-{memory}",
                                  init_distributed(str(device)))
    trainer.fit()  # warm-up: allocator, kernels, worker start
    trainer.config.train.max_steps = 1 + args.steps
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    profiler = torch.profiler.profile() if args.profile else None
    start = time.perf_counter()
    with profiler or contextlib.nullcontext():
        seconds = timed_fit(trainer, device) - start
    samples = args.steps * args.batch_size * args.frames * config.audio.hop_length
    row = {"samples_per_s": samples / seconds, "gflops": samples * training_flops_per_sample(config) / seconds / 1e9,
           "peak_gflops": matmul_peak_gflops(device, DTYPES[precision]), "peak_mb": peak_memory_mb(device)}
    if profiler is not None:
        totals = {event.key: event.cpu_time_total / 1e6 for event in profiler.key_averages()}
        row |= {f"phase {phase}": sum(v for k, v in totals.items() if k.startswith(phase)) / seconds
                for phase in PHASES}
    return row


def timed_fit(trainer: Trainer, device: torch.device) -> float:
    """`trainer.fit()`, returning the clock at the end of its last step: the checkpoint a run writes when it
    ends is not part of a step (the reference's step writes none)."""
    ends = []

    def step_done(_trainer: Trainer) -> None:
        synchronize(device)
        ends.append(time.perf_counter())

    trainer.fit(step_done)
    return ends[-1]


REFERENCE_STEP = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    from diffwave.model import DiffWave
    from diffwave.params import params
    batch, frames, steps = map(int, sys.argv[1:4])
    torch.manual_seed(0)
    model = DiffWave(params)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    alpha_bar = torch.cumprod(1 - torch.tensor(params.noise_schedule), 0)
    audio, mel = torch.rand(batch, frames * params.hop_samples) - 0.5, torch.rand(batch, params.n_mels, frames)
    def step():
        optimizer.zero_grad(set_to_none=True)
        t = torch.randint(0, len(params.noise_schedule), [batch])
        a = alpha_bar[t].unsqueeze(1)
        noise = torch.randn_like(audio)
        predicted = model(a.sqrt() * audio + (1 - a).sqrt() * noise, t, mel)
        torch.nn.functional.l1_loss(predicted.squeeze(1), noise).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
        optimizer.step()
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    print(json.dumps({"samples_per_s": steps * batch * frames * params.hop_samples / seconds,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def time_reference(args: argparse.Namespace) -> dict[str, float]:
    """The reference's own model and its learner's step (noise, L1 loss, clip, Adam), in the fresh process its
    own package name needs (it is also called `diffwave`)."""
    command = [sys.executable, "-c", REFERENCE_STEP, str(args.batch_size), str(args.frames), str(args.steps)]
    output = run_child(command, "the reference's training step", cwd=args.reference_src,
                       env={"PYTHONPATH": str(Path(args.reference_src).resolve()), "PATH": "/usr/bin:/bin"})
    return json.loads(output.strip().splitlines()[-1])


def engines(text: str) -> list[str]:
    """--dilated-conv's comma-separated engine names, each checked."""
    names = text.split(",")
    if unknown := [name for name in names if name not in ("matmuls", "convolution")]:
        raise argparse.ArgumentTypeError(f"unknown engine(s) {', '.join(unknown)}; use matmuls and/or convolution")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="base")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--frames", type=int, default=62, help="mel frames per crop (data.crop_frames)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", help="comma-separated (default: fp32 on CPU; fp32,bf16,fp16 on CUDA)")
    parser.add_argument("--activation-memory-mb", help="comma-separated train.activation_memory_mb values, a row "
                                                       "each (default: the config's)")
    parser.add_argument("--reference-src", help="lmnt-com/diffwave's src folder, to time it side by side")
    parser.add_argument("--profile", action="store_true", help="print each phase's share of a step")
    parser.add_argument("--dilated-conv", type=engines, help="comma-separated: matmuls, convolution (a row each; "
                                                             "default: the device's own)")
    parser.add_argument("--one", nargs=3, metavar=("PRECISION", "MEMORY", "WORK"),
                        help=argparse.SUPPRESS)  # child process; MEMORY "-": the config's
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.one:
        precision, memory, work = args.one
        print(json.dumps(time_precision(args, Path(work) / "features", Path(work), precision,
                                        None if memory == "-" else memory)))
        return
    device = torch.device(args.device)
    precisions = args.precisions.split(",") if args.precisions else (
        ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32"])
    config = load_config(args.config)
    crop_seconds = args.frames * config.audio.hop_length / config.audio.sample_rate
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        corpus = synthetic_corpus(work / "corpus", config.audio.sample_rate, max(args.batch_size, 8),
                                  seconds=crop_seconds + 0.5)
        preprocess(corpus, work / "features", load_config(args.config, ["data.valid_fraction=0",
                                                                        "data.test_fraction=0"]))
        threads = f"CPU, {torch.get_num_threads()} threads"
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
        print(f"train speed: config {args.config}, batch {args.batch_size} x {args.frames} frames, {args.steps} timed "
              f"steps, device {name}")
        print(f"{'precision':>16} {'samples/s':>10} {'GFLOP/s':>8} {'of peak':>8} {'peak MiB':>9}")
        rows = {}
        memories = args.activation_memory_mb.split(",") if args.activation_memory_mb else ["-"]
        conv_engines = args.dilated_conv or [None]
        for precision, memory, engine in itertools.product(precisions, memories, conv_engines):
            label = " ".join(part for part in (precision, None if memory == "-" else memory, engine) if part)
            options = [*sys.argv[1:], *(["--dilated-conv", engine] if engine else [])]
            child = [sys.executable, __file__, *options, "--one", precision, memory, str(work)]
            output = run_child(child, f"the {label} training child")
            rows[label] = row = json.loads(output.strip().splitlines()[-1])
            print(f"{label:>16} {row['samples_per_s']:10.0f} {row['gflops']:8.1f} "
                  f"{row['gflops'] / row['peak_gflops']:8.1%} {row['peak_mb']:9.0f}", flush=True)
            for phase in PHASES:
                if f"phase {phase}" in row:
                    print(f"{'':>16}   {phase:<24} {row[f'phase {phase}']:6.1%} of the step time")
        if args.reference_src:
            reference = time_reference(args)
            print(f"{'reference':>16} {reference['samples_per_s']:10.0f} {'':>8} {'':>8} {reference['peak_mb']:9.0f}")
            for label, row in rows.items():
                print(f"{label} / reference: {row['samples_per_s'] / reference['samples_per_s']:.2f}x samples/s")


if __name__ == "__main__":
    main()
