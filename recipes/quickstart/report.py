"""Quickstart report: reference vs vocoded mel spectrograms as a PNG, and a summary of the run.

Usage: python recipes/quickstart/report.py OUT   (OUT as made by recipes/quickstart/run.sh)
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from diffwave.audio import LogMel, read_audio  # noqa: E402
from diffwave.config import AudioConfig  # noqa: E402
from diffwave.data.manifest import read_audio_config, read_manifest  # noqa: E402


def main(out: Path) -> None:
    audio_config = AudioConfig(**read_audio_config(out / "features"))
    front_end = LogMel(audio_config)
    tests = [u for u in read_manifest(out / "features", audio_config, "test")
             if (out / "vocoded" / f"{u.id}.wav").exists()]
    shown = tests[:3]
    figure, axes = plt.subplots(len(shown), 2, figsize=(12, 3 * len(shown)), squeeze=False)
    for row, utterance in zip(axes, shown, strict=True):
        reference = np.load(utterance.mel)
        vocoded = front_end(read_audio(out / "vocoded" / f"{utterance.id}.wav", audio_config.sample_rate)).numpy()
        low, high = reference.min(), reference.max()
        for axis, mel, title in zip(row, (reference, vocoded), ("reference", "vocoded"), strict=True):
            axis.imshow(mel, origin="lower", aspect="auto", vmin=low, vmax=high, cmap="viridis")
            axis.set_title(f"{utterance.id}: {title}")
            axis.set_xlabel("frame")
            axis.set_ylabel("mel bin")
    figure.tight_layout()
    figure.savefig(out / "mels.png", dpi=80)

    events = EventAccumulator(str(out / "train" / "logs"), size_guidance={"scalars": 0})
    events.Reload()
    losses = events.Scalars("train/loss")
    means = (out / "summary.tsv").read_text().splitlines()[-1].split("\t")
    rtf_line = (out / "vocode.log").read_text().strip().splitlines()[-1]
    summary = [
        f"corpus features : {out / 'features'}",
        f"training run    : {out / 'train'} (step {losses[-1].step}; loss {losses[0].value:.4f} at step "
        f"{losses[0].step} -> {losses[-1].value:.4f})",
        f"vocoded test set: {out / 'vocoded'} ({len(tests)} wavs)",
        f"log-mel L1      : {float(means[1]):.4f} (per clip in {out / 'summary.tsv'})",
        f"vocoding        : {rtf_line}",
        f"mel images      : {out / 'mels.png'}",
        "",
        "Open next: the PNG above; the wavs in the vocoded folder; tensorboard --logdir " + str(out / "train" / "logs"),
    ]
    (out / "summary.txt").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main(Path(sys.argv[1]))
