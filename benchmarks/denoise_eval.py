"""Zero-shot denoising against network-free baselines on held-out speech: one table row per clip set, noise,
SNR and system (diffwave.evaluation.denoising computes them; the shipped prior's card carries the same table).

    python benchmarks/denoise_eval.py --unseen FOLDER [--seen FOLDER] [--checkpoint UNCONDITIONAL_CKPT]
                                      [--snrs 0,5,10,20] [--noises white,pink] [--max-files 8] [--seconds 4]

--checkpoint defaults to the shipped speech prior. --unseen is clean speech of speakers that were not in the
model's training (for the shipped prior: June, recipes/demo/unseen or the whole of recipes/corpora/
asterisk_voices.py's june/wavs); --seen defaults to the voice's held-out LJSpeech clips (recipes/demo/clips), a
speaker the prior heard other clips of. Each clean file (mono, 16 kHz, cut to --seconds) gets white or pink
Gaussian noise at each SNR and is cleaned by `diffwave.denoise`, a Wiener filter and noisereduce; RTF is
compute seconds per audio second. Noise and the chain's draws are seeded, so a rerun prints the same scores.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from diffwave import denoise
from diffwave.audio import read_audio
from diffwave.config import trained_steps
from diffwave.data.corpus import AUDIO_SUFFIXES
from diffwave.evaluation import denoising
from diffwave.inference.denoise import load_denoiser
from diffwave.inference.files import find_inputs

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000  # wideband PESQ is defined at 16 kHz


def read_set(folder: Path, max_files: int, seconds: float) -> list[np.ndarray]:
    paths = find_inputs([folder], AUDIO_SUFFIXES)[:max_files]
    if not paths:
        raise SystemExit(f"denoise_eval: no audio files in {folder}")
    return [read_audio(path, RATE)[: round(seconds * RATE)].double().numpy() for path in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="an unconditional checkpoint (default: the shipped speech prior)")
    parser.add_argument("--unseen", type=Path, default=ROOT / "recipes" / "demo" / "unseen",
                        help="clean speech of speakers not in training (default: the bundled June clips)")
    parser.add_argument("--seen", type=Path, default=ROOT / "recipes" / "demo" / "clips",
                        help="held-out clips of a speaker in training (default: the voice's held-out clips)")
    parser.add_argument("--snrs", default="0,5,10,20")
    parser.add_argument("--noises", default="white,pink")
    parser.add_argument("--max-files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0, help="cut each clean file to this length")
    parser.add_argument("--sdedit", action="store_true", help="start the chain with fresh noise (SDEdit)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model, config = load_denoiser(args.checkpoint, device="cpu")
    checkpoint = args.checkpoint or "the shipped speech prior"
    generator = torch.Generator()

    def prior(noisy: np.ndarray) -> np.ndarray:
        generator.manual_seed(args.seed)
        return denoise(torch.from_numpy(noisy).float(), RATE, model, config=config, sdedit=args.sdedit,
                       generator=generator).audio.double().numpy()

    sets = {"unseen": read_set(args.unseen, args.max_files, args.seconds),
            "seen": read_set(args.seen, args.max_files, args.seconds)}
    print(f"denoise eval: {checkpoint} ({config.model.residual_layers}x{config.model.residual_channels}, steps "
          f"0..{trained_steps(config) - 1} of {config.diffusion.num_steps}); "
          + ", ".join(f"{name} {len(clips)} files, {sum(c.size for c in clips) / RATE:.1f} s" for name, clips in
                      sets.items()) + f"; scored at {RATE} Hz; {torch.get_num_threads()} threads")
    print(denoising.TABLE_HEAD)
    denoisers = {"DiffWave prior": prior} | denoising.baselines(RATE)
    for name, cleans in sets.items():
        denoising.evaluate(name, cleans, RATE, denoisers, [float(s) for s in args.snrs.split(",")],
                           args.noises.split(","), args.seed, on_row=lambda row: print(row.markdown(), flush=True))


if __name__ == "__main__":
    main()
