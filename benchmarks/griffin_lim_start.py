"""Griffin-Lim starts on held-out speech of a seen and an unseen speaker: the fast schedule from noise (`--init
noise`) against `vocode --init griffin-lim --start-step K` and `--init griffin-lim-envelope --start-step K`
(the shipped voice's default start), with Griffin-Lim 100 and the network-free control Griffin-Lim + envelope
of the same mels (diffwave.evaluation.heldout).

    python benchmarks/griffin_lim_start.py [--checkpoint PATH] [--start-steps 1 2 3] [--seconds S]

Prints one Markdown table of means per set (log-mel L1, MR-STFT, PESQ wide band, STOI, RTF) and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from diffwave.evaluation import heldout
from diffwave.inference.vocoder import Vocoder
from diffwave.precision import cpu_model

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo"
SETS = {"Seen speaker (LJSpeech)": DEMO / "clips", "Unseen speaker (June)": DEMO / "unseen"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a checkpoint or .safetensors (default: the shipped voice)")
    parser.add_argument("--start-steps", type=int, nargs="+", default=[1, 2, 3], metavar="K")
    parser.add_argument("--seconds", type=float, help="crop each clip to its first SECONDS (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    vocoder = (Vocoder.from_checkpoint(args.checkpoint, device="cpu") if args.checkpoint
               else Vocoder.from_pretrained(device="cpu"))
    sets = heldout.read_sets(SETS, vocoder.sample_rate, args.seconds)
    plan = vocoder.plan(init="noise")
    variants: dict[str, dict] = {f"DiffWave, {len(plan)} {plan.name.split('-')[0]} steps from noise": {"init": "noise"}}
    variants |= {f"DiffWave, --init {init} --start-step {k}": {"init": init, "start_step": k}
                 for init in ("griffin-lim", "griffin-lim-envelope") for k in args.start_steps}
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for name, clips in sets.items():
        for index, (label, options) in enumerate(variants.items()):
            # The baselines invert the same mels whatever the sampler: score them once, after the variants.
            table = heldout.means(heldout.compare(vocoder, clips, seed=args.seed, with_griffin_lim=index == 0,
                                                  **options))
            rows[name, label] = table["diffwave"]
            if index == 0:
                baselines = {(name, heldout.SYSTEMS[s]): table[s] for s in ("griffin_lim", "gl_envelope")}
        rows |= baselines
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{heldout.describe_setup(vocoder, sets)}; CPU {cpu_model()}, {torch.get_num_threads()} threads, 1-minute "
          f"load average at the end {load:.1f}")
    print(heldout.rows_table(rows, ("clips", "system")))

if __name__ == "__main__":
    main()
