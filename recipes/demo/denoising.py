"""The demo page's denoising section: held-out speech with white noise at 10 dB, cleaned by the shipped speech
prior (`diffwave.denoise` with no model) and by noisereduce, as players and spectrograms, then the table of
diffwave.evaluation.denoising (with the Wiener filter too) for those clips.

`run_section(out, folders)` computes and writes it; `section_html(results)` turns its results into the page's
HTML, so the page can be built without denoising anything (tests/test_demo.py).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from figures import save_stacked_images  # recipes/demo/figures.py, beside this file

from diffwave import denoise
from diffwave.audio import write_audio
from diffwave.evaluation import denoising
from diffwave.evaluation.heldout import read_clips

RATE = 16000  # the prior's rate, and wideband PESQ's
SNR_DB, NOISE = 10.0, "white"
SECONDS = 4.0
PLAYERS = {"noisy input": "noisy (10 dB white noise)", "DiffWave prior": "DiffWave speech prior",
           "noisereduce": "noisereduce", "clean": "clean reference"}


@dataclass
class DenoisingResults:
    """What the section shows: clip names, their audio per player, and the table's rows."""

    clips: list[str]
    audio: dict[str, list[np.ndarray]]  # player -> one signal per clip
    rows: list[denoising.Row]


def run_section(out: Path, folders: dict[str, Path], seed: int = 0, limit: int | None = None) -> DenoisingResults:
    """Denoise the first SECONDS of every clip (the first `limit` of each) in `folders` (set name -> folder) and
    write the players' wavs and spectrograms under out/denoising/."""
    generator = torch.Generator()

    def prior(noisy: np.ndarray) -> np.ndarray:
        generator.manual_seed(seed)
        return denoise(torch.from_numpy(noisy).float(), RATE, generator=generator).audio.double().numpy()

    denoisers = {"DiffWave prior": prior} | denoising.baselines(RATE)
    names, cleans, rows, outputs = [], [], [], {}
    for set_name, folder in folders.items():
        clips = read_clips(folder, RATE, SECONDS, limit)
        names += list(clips)
        audio = [clip.double().numpy() for clip in clips.values()]
        cleans += audio
        found: dict = {}
        rows += denoising.evaluate(set_name, audio, RATE, denoisers, [SNR_DB], [NOISE], seed, outputs=found)
        for key, signals in found.items():
            outputs.setdefault(key[2], []).extend(signals)
    results = DenoisingResults(names, {player: outputs.get(player, cleans) for player in PLAYERS}, rows)
    write_files(out / "denoising", results)
    return results


def write_files(folder: Path, results: DenoisingResults) -> None:
    for index, clip in enumerate(results.clips):
        (folder / clip).mkdir(parents=True, exist_ok=True)
        for player in PLAYERS:
            write_audio(folder / clip / f"{_file(player)}.wav", torch.from_numpy(results.audio[player][index]).float()
                        .clamp(-1, 1), RATE)
        spectrograms(folder / clip / "spectrograms.png", clip, {p: results.audio[p][index] for p in PLAYERS})


def _file(player: str) -> str:
    return player.replace(" ", "_").lower()


def spectrograms(path: Path, clip: str, signals: dict[str, np.ndarray]) -> None:
    """The players' log-power spectrograms, one above the other, on the clean reference's colour scale."""
    window = torch.hann_window(512, dtype=torch.float64)
    images = {player: (torch.stft(torch.from_numpy(signal), 512, 128, window=window, return_complex=True).abs() ** 2
                       + 1e-10).log10().numpy() for player, signal in signals.items()}
    high = images["clean"].max()
    save_stacked_images(path, {f"{clip}: {PLAYERS[player]}": image for player, image in images.items()},
                        vmin=high - 8, vmax=high, ylabel="kHz", xlabel="seconds", panel_height=1.8,
                        extent=(0, next(iter(images.values())).shape[1] * 128 / RATE, 0, RATE / 2000))


def section_html(results: DenoisingResults) -> str:
    parts = ["<h1>Denoising</h1>",
             f"<p>The first {SECONDS:g} s of each held-out clip with {NOISE} noise at {SNR_DB:g} dB SNR, cleaned by "
             "the shipped speech prior (<code>diffwave.denoise(noisy, rate)</code>), by noisereduce and by a Wiener "
             "filter, at 16 kHz.</p>"]
    for clip in results.clips:
        name = html.escape(clip)
        parts.append(f"<h2>{name} (denoising)</h2>")
        for player, label in PLAYERS.items():
            parts.append(f"<figure><figcaption>{html.escape(label)}</figcaption><audio controls preload='none' "
                         f"src='denoising/{name}/{_file(player)}.wav'></audio></figure>")
        parts.append(f"<p><img src='denoising/{name}/spectrograms.png' alt='spectrograms of {name}' width='100%'></p>")
    parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in ("clips", "system", "SI-SDRi dB", "PESQ wb",
                                                                       "STOI", "RTF")) + "</tr>")
    for row in results.rows:
        parts.append(f"<tr><td>{html.escape(row.clips)}</td><td>{html.escape(row.system)}</td>"
                     f"<td>{row.means['SI-SDRi']:+.2f}</td><td>{row.means['PESQ']:.3f}</td>"
                     f"<td>{row.means['STOI']:.3f}</td><td>{row.real_time_factor:.3f}</td></tr>")
    parts.append("</table>")
    return "\n".join(parts)


def markdown(results: DenoisingResults) -> str:
    return "\n".join([denoising.TABLE_HEAD, *(row.markdown() for row in results.rows)])
