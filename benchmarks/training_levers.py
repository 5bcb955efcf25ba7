"""Training levers side by side: held-out copy synthesis of each lever's weights on a seen and an unseen speaker,
with the model's default start and with the fast schedule from noise (the network alone), beside Griffin-Lim 100
and the network-free control Griffin-Lim + envelope (diffwave.evaluation.heldout).

    python benchmarks/training_levers.py NAME=CHECKPOINT[@CPU_HOURS] ... [--seconds S] [--seed 0] [--finish none]

Give each lever's checkpoint (a training step_*.pt, its EMA weights, or a .safetensors) and the CPU-hours its
training took, so that rows compare at an equal budget. Prints one Markdown table of means per set and the CPU it
ran on. Every model is scored with the same clips and noise seeds, and with `--finish` with the same finish
(by default each model's own, which differs between weights exported before and after the envelope finish).
"""

from __future__ import annotations

import argparse
import os

import torch
from griffin_lim_start import SETS

from diffwave.config import FINISHES
from diffwave.evaluation import heldout
from diffwave.inference.vocoder import Vocoder
from diffwave.precision import cpu_model


def lever(text: str) -> tuple[str, str, float | None]:
    """NAME=CHECKPOINT[@CPU_HOURS] -> (name, checkpoint, CPU-hours or None)."""
    name, _, rest = text.partition("=")
    path, _, hours = rest.partition("@")
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT[@CPU_HOURS], got '{text}'")
    try:
        return name, path, float(hours) if hours else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"CPU_HOURS of '{text}' is not a number") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("levers", type=lever, nargs="+", metavar="NAME=CHECKPOINT[@CPU_HOURS]")
    parser.add_argument("--seconds", type=float, help="crop each clip to its first SECONDS (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finish", choices=FINISHES, help="finish every model's output so (default: its own)")
    args = parser.parse_args()
    rows: dict[tuple[str, str], dict[str, float]] = {}
    baselines: dict[tuple[str, str], dict[str, float]] = {}
    for index, (name, path, hours) in enumerate(args.levers):
        vocoder = Vocoder.from_checkpoint(path, device="cpu")
        sets = heldout.read_sets(SETS, vocoder.sample_rate, args.seconds)
        budget = f" ({hours:.2f} CPU-h)" if hours is not None else ""
        default = vocoder.config.diffusion
        starts = {"default start" if default.init == "noise" else
                  f"default start ({default.init}, K={default.init_start_step})": {}}
        if default.init != "noise":
            starts[f"{len(vocoder.plan(init='noise'))} fast steps from noise"] = {"init": "noise"}
        if args.finish is not None:
            starts = {start: options | {"finish": args.finish} for start, options in starts.items()}
        for set_name, clips in sets.items():
            for position, (start, options) in enumerate(starts.items()):
                with_baselines = index == 0 and position == 0  # the baselines invert the same mels for every model
                table = heldout.means(heldout.compare(vocoder, clips, seed=args.seed, with_griffin_lim=with_baselines,
                                                      **options))
                rows[set_name, f"{name}{budget}, {start}"] = table["diffwave"]
                if with_baselines:
                    baselines |= {(set_name, heldout.SYSTEMS[s]): table[s] for s in ("griffin_lim", "gl_envelope")}
        print(f"scored {name}", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{heldout.describe_setup(vocoder, sets)}; CPU {cpu_model()}, {torch.get_num_threads()} threads, 1-minute "
          f"load average at the end {load:.1f}" + (f"; every output finished '{args.finish}' (--finish)" if args.finish
                                                   else ""))
    ordered = {key: value for set_name in SETS for key, value in (rows | baselines).items() if key[0] == set_name}
    print(heldout.rows_table(ordered, ("clips", "system")))


if __name__ == "__main__":
    main()
