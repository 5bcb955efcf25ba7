"""Training throughput and peak memory of the real training loop, on the device it runs on.

    python benchmarks/train_speed.py [--config base] [--batch-size 16] [--steps 5] [--precisions fp32,bf16,fp16]

Builds a small synthetic corpus in a temp folder, preprocesses it with the config's front-end, then times
`Trainer.fit` (data loading, forward, backward, optimizer and EMA) after one warm-up step. Prints one row
per precision: training samples/s (crops of data.crop_frames * hop samples), audio seconds per second, and
peak memory (CUDA: max allocated; CPU: the process's peak resident set). On a CPU only fp32 is timed
unless --precisions says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from diffwave.config import load_config
from diffwave.data.preprocess import preprocess
from diffwave.training.distributed import init_distributed
from diffwave.training.trainer import Trainer


def synthetic_corpus(root: Path, sample_rate: int, count: int) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(count):
        t = np.arange(int(1.5 * sample_rate)) / sample_rate
        tone = 0.3 * np.sin(2 * np.pi * (120 + 10 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(root / f"clip{i:03d}.wav", tone.astype(np.float32), sample_rate)
    return root


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_precision(config_name: str, features: Path, work: Path, precision: str, batch_size: int, steps: int,
                   device: torch.device) -> tuple[float, float, float]:
    overrides = [f"train.batch_size={batch_size}", f"train.precision={precision}", "train.log_every=100000",
                 "train.valid_every=100000", "train.sample_every=100000", "train.save_every=100000",
                 "data.num_workers=2", "data.valid_fraction=0", "data.test_fraction=0"]
    config = load_config(config_name, [*overrides, "train.max_steps=1"])
    trainer = Trainer(config, features, work / f"run-{precision}", init_distributed(str(device)))
    trainer.fit()  # warm-up: allocator, kernels, worker start
    trainer.config.train.max_steps = 1 + steps
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    trainer.fit()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    crop_seconds = config.data.crop_frames * config.audio.hop_length / config.audio.sample_rate
    samples_per_s = steps * batch_size / seconds
    return samples_per_s, samples_per_s * crop_seconds, peak_memory_mb(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="base")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", help="comma-separated (default: fp32 on CPU; fp32,bf16,fp16 on CUDA)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    precisions = args.precisions.split(",") if args.precisions else (
        ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32"])
    config = load_config(args.config)
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        corpus = synthetic_corpus(work / "corpus", config.audio.sample_rate, max(args.batch_size, 16))
        no_splits = ["data.valid_fraction=0", "data.test_fraction=0"]
        preprocess(corpus, work / "features", load_config(args.config, no_splits))
        threads = f"CPU, {torch.get_num_threads()} threads"
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
        print(f"train speed: config {args.config}, batch {args.batch_size}, {args.steps} timed steps, device {name}")
        print(f"{'precision':>9} {'samples/s':>10} {'audio s/s':>10} {'peak MiB':>10}")
        for precision in precisions:
            samples, audio, memory = time_precision(args.config, work / "features", work, precision,
                                                    args.batch_size, args.steps, device)
            print(f"{precision:>9} {samples:10.2f} {audio:10.3f} {memory:10.0f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
