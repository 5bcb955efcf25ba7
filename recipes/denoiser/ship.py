"""Ship a training checkpoint of the speech prior as the package's default denoiser: export, evaluate, card.

Usage (from the repository root; recipes/denoiser/ship.sh runs this with the project's venv):
    python recipes/denoiser/ship.py [CHECKPOINT] --features WORK/features --unseen VOICES/june [--run-dir WORK/run]

WORK is the folder of recipes/denoiser/train_prior.sh, VOICES that of recipes/corpora/asterisk_voices.py. The
EMA weights are exported with `diffwave export`, checked against the size limit, scored on held-out speech
(June, a speaker not in training, and the voice's held-out LJSpeech clips) against the noisy input, a Wiener
filter and noisereduce (diffwave.evaluation.denoising), and only then copied into diffwave/pretrained/ with
the model card, the manifest entry (task denoiser, its default) and the README's table.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import string
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "recipes" / "pretrained"))

import ship as voice_ship  # noqa: E402  (the voice's ship script: export limits, training curve, README markers)

from diffwave import denoise, pretrained  # noqa: E402
from diffwave.audio import read_audio  # noqa: E402
from diffwave.checkpoints import load_unconditional  # noqa: E402
from diffwave.config import config_to_yaml, trained_steps  # noqa: E402
from diffwave.data.corpus import AUDIO_SUFFIXES  # noqa: E402
from diffwave.errors import DiffwaveError  # noqa: E402
from diffwave.evaluation import denoising  # noqa: E402
from diffwave.inference.files import find_inputs  # noqa: E402
from diffwave.pretrained import PretrainedModel  # noqa: E402

MARKERS = ("<!-- denoiser-metrics:start", "<!-- denoiser-metrics:end -->")
logger = logging.getLogger("ship")


def read_set(folder: Path, sample_rate: int, max_files: int, seconds: float) -> list:
    """The first `max_files` audio files of `folder` (sorted), mono at `sample_rate`, cut to `seconds`."""
    paths = find_inputs([folder], AUDIO_SUFFIXES)[:max_files]
    if not paths:
        raise DiffwaveError(f"{folder}: no audio files to evaluate on")
    return [read_audio(path, sample_rate)[: round(seconds * sample_rate)].double().numpy() for path in paths]


def evaluate(exported: Path, args: argparse.Namespace) -> tuple[list[denoising.Row], str]:
    model, config = load_unconditional(exported, device="cpu", purpose="denoising")
    rate = config.audio.sample_rate
    generator = torch.Generator()

    def prior(noisy):
        generator.manual_seed(args.seed)
        return denoise(torch.from_numpy(noisy).float(), rate, model, config=config,
                       generator=generator).audio.double().numpy()

    sets = {"unseen (June)": read_set(args.unseen, rate, args.max_files, args.seconds),
            "seen (LJSpeech held out)": read_set(args.clips, rate, args.max_files, args.seconds)}
    denoisers = {"DiffWave prior": prior} | denoising.baselines(rate)
    rows = []
    for name, cleans in sets.items():
        rows += denoising.evaluate(name, cleans, rate, denoisers, args.snrs, denoising.NOISES, args.seed,
                                   on_row=lambda row: logger.info("%s", row.markdown()))
    counts = ", ".join(f"{name}: {len(c)} clips, {sum(x.size for x in c) / rate:.1f} s" for name, c in sets.items())
    setup = (f"{counts}"
             f"; white and pink noise at {', '.join(f'{s:g}' for s in args.snrs)} dB SNR; scored at {rate} Hz; "
             f"{torch.get_num_threads()} CPU threads; command: `recipes/denoiser/ship.sh WORK VOICES/june` or "
             "`python benchmarks/denoise_eval.py --unseen VOICES/june`")
    return rows, setup


def ship(args: argparse.Namespace) -> None:
    """Export and score first; write into the package only once all of that has worked."""
    checkpoint, exported, size = voice_ship.export_for_shipping(args)
    model, config = load_unconditional(exported, device="cpu", purpose="denoising")
    step = voice_ship.step_of(exported)
    data = voice_ship.corpus_summary(args.features, [])
    rows, setup = evaluate(exported, args)
    table = "\n".join([denoising.TABLE_HEAD, *(row.markdown() for row in rows)])
    hours, _ = voice_ship.training_curve(checkpoint.resolve().parent.parent, config.train.log_every)
    wall = voice_ship.hours_at(hours, step)
    digest, card = pretrained.sha256_of(exported), f"{args.name}.md"
    description = (f"unconditional DiffWave {config.model.residual_layers} layers x {config.model.residual_channels} "
                   f"channels, {config.audio.sample_rate} Hz, steps 0..{trained_steps(config) - 1} of "
                   f"{config.diffusion.num_steps}: a speech prior for denoise; 4 voices, step {step}")
    model_config = config.model
    fields = data | {
        "name": args.name, "description": description, "file": exported.name, "sha256": digest,
        "size_mb": f"{size / 1e6:.1f}", "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "checkpoint": str(checkpoint), "step": str(step), "date": datetime.date.today().isoformat(),
        "layers": str(model_config.residual_layers), "channels": str(model_config.residual_channels),
        "cycle": str(model_config.dilation_cycle), "sample_rate": str(config.audio.sample_rate),
        "trained": str(trained_steps(config)), "num_steps": str(config.diffusion.num_steps),
        "beta_start": f"{config.diffusion.beta_start:g}", "beta_end": f"{config.diffusion.beta_end:g}",
        "max_step": str(config.train.max_step), "target_rms": f"{config.data.target_rms:g}",
        "jitter": f"{config.data.level_jitter_db:g}",
        "steps_text": (f"{step} steps of batch {config.train.batch_size} (crops of {config.data.crop_samples} "
                       f"samples) in {config.train.precision}, {wall:.2f} wall-clock hours on {args.cores} CPU cores = "
                       f"{wall * args.cores:.2f} CPU-hours (from the run's TensorBoard logs).")
                      + (f" {args.budget_note}" if args.budget_note else ""),
        "config": config_to_yaml(config).strip(), "setup": setup, "metrics": table,
    }
    text = string.Template((HERE / "card.md.tmpl").read_text()).substitute(fields)
    target = args.target or pretrained.pretrained_dir()
    voice_ship.install(target, exported, text, PretrainedModel(args.name, exported.name, digest, description,
                                                               default=True, card=card, task=pretrained.DENOISER))
    white = [row for row in rows if row.noise == "white"]
    voice_ship.replace_between_markers(args.readme, f"Step {step} ({wall * args.cores:.1f} CPU-hours); {setup}. "
                                       "White noise (the card has pink too):\n\n" + "\n".join(
                                           [denoising.TABLE_HEAD, *(row.markdown() for row in white)]), MARKERS)
    print(f"ship: {args.name} (step {step}, {size / 1e6:.1f} MB, sha256 {digest[:12]}...) written to {target}")
    print(table)


def main(argv: list[str] | None = None) -> int:
    parser = voice_ship.shipping_parser(__doc__.split("\n\n")[0], "speech_prior")
    parser.add_argument("--unseen", type=Path, required=True, help="clean speech of a speaker not in training")
    parser.add_argument("--snrs", type=lambda text: [float(s) for s in text.split(",")], default=[0.0, 5.0, 10.0, 20.0])
    parser.add_argument("--max-files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-note", help="a sentence the card adds to the training budget (e.g. shared cores)")
    return voice_ship.run_shipping(ship, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
