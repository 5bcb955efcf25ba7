"""Few-step sampling on held-out speech: a consistency student (diffwave distill) at 1 and 2 steps against its
teacher at the fast schedule and at 1- and 2-step DDIM, and the teacher's own weights under the 2-step consistency
sampler (what distillation starts from), with Griffin-Lim of the same mels as the floor.

    python benchmarks/few_step.py --teacher TEACHER --student STUDENT [--clips recipes/demo/clips] [--finish none]

Prints one Markdown table (means over the clips) of log-mel L1, MR-STFT, PESQ (wide band), STOI and the RTF,
plus the student's log-mel L1 and cost against the teacher's fast schedule: the issue's goal is a 2-step student
within 5% of the teacher's log-mel L1 at a third of its cost. Each model's output gets its own finish
(`diffusion.finish`), or with `--finish` the same one for all: `--finish none` scores the networks alone.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from diffwave.config import FINISHES
from diffwave.evaluation import heldout
from diffwave.inference.vocoder import Vocoder
from diffwave.training.distill import student_config

CLIPS = Path(__file__).resolve().parents[1] / "recipes" / "demo" / "clips"
UNDISTILLED = "teacher weights, consistency sampler, 2 steps (no distillation)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="the diffusion checkpoint the student was distilled from")
    parser.add_argument("--student", required=True, help="a `diffwave distill` checkpoint")
    parser.add_argument("--clips", default=str(CLIPS), help="folder of held-out .flac/.wav clips")
    parser.add_argument("--seconds", type=float, help="crop each clip to its first SECONDS (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finish", choices=FINISHES, help="finish every model's output so (default: its own)")
    args = parser.parse_args()
    finish = {} if args.finish is None else {"finish": args.finish}
    teacher = Vocoder.from_checkpoint(args.teacher, device="cpu", dtype="fp32")
    student = Vocoder.from_checkpoint(args.student, device="cpu", dtype="fp32")
    # The student before any distillation step: the teacher's weights read as a consistency function (the
    # config `diffwave distill` gives its student), which is where distillation starts.
    undistilled = Vocoder(teacher.model, student_config(teacher.config, args.teacher, []), device="cpu", dtype="fp32")
    clips = heldout.read_clips(args.clips, teacher.sample_rate, args.seconds)
    systems = [("teacher, fast schedule", teacher, "fast", None), ("teacher, DDIM 1 step", teacher, "ddim", 1),
               ("teacher, DDIM 2 steps", teacher, "ddim", 2), ("student, 1 step", student, "consistency", 1),
               ("student, 2 steps", student, "consistency", 2),
               (UNDISTILLED, undistilled, "consistency", 2)]
    rows = {}
    for label, vocoder, sampler, steps in systems:
        first = not rows  # Griffin-Lim inverts the same mels whatever the sampler: score it once
        table = heldout.means(heldout.compare(vocoder, clips, sampler, args.seed, steps, with_griffin_lim=first,
                                              init="noise", **finish))  # from noise, whatever the default start
        rows[label] = table["diffwave"]
        if first:
            rows["Griffin-Lim (100 iterations)"] = table["griffin_lim"]
    seconds = sum(clip.numel() for clip in clips.values()) / teacher.sample_rate
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(clips)} held-out clips ({seconds:.1f} s) from {args.clips}; teacher {args.teacher}, student "
          f"{args.student}; CPU, {torch.get_num_threads()} threads, 1-minute load average {load:.1f}"
          + ("" if args.finish is None else f"; every output finished '{args.finish}' (--finish)"))
    print("| system | " + " | ".join(heldout.METRICS.values()) + " |")
    print("|---|" + "---|" * len(heldout.METRICS))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{row[m]:.3f}" for m in heldout.METRICS) + " |")
    fast = rows["teacher, fast schedule"]
    for label in ("student, 1 step", "student, 2 steps"):
        row = rows[label]
        print(f"{label}: log-mel L1 {row['log_mel_l1'] / fast['log_mel_l1'] - 1:+.1%} against the teacher's fast "
              f"schedule, at {row['rtf'] / fast['rtf']:.2f} of its time")


if __name__ == "__main__":
    main()
