"""The demo page's denoising section (recipes/demo/denoising.py), built from tiny made-up results: every
player's file is written with its own audio, and every row of the table is shown."""

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from diffwave.evaluation.denoising import Row

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "demo"))
import denoising as section  # noqa: E402


def test_the_section_shows_each_clip_and_every_row(tmp_path):
    clips = ["LJ001-0002", "june_dir-first"]
    audio = {player: [np.full(1600, 0.01 * (i + 1) * (k + 1)) for k in range(len(clips))]
             for i, player in enumerate(section.PLAYERS)}
    rows = [Row("seen", "white", 10.0, system, {"SI-SDRi": 1.5 + i, "PESQ": 2.0 + i / 10, "STOI": 0.8 + i / 100}, 0.5)
            for i, system in enumerate(["noisy input", "DiffWave prior", "noisereduce", "Wiener filter"])]
    results = section.DenoisingResults(clips, audio, rows)
    section.write_files(tmp_path / "denoising", results)
    page = section.section_html(results)
    for k, clip in enumerate(clips):
        assert f"src='denoising/{clip}/spectrograms.png'" in page
        assert (tmp_path / "denoising" / clip / "spectrograms.png").stat().st_size > 1000
        for i, player in enumerate(section.PLAYERS):
            name = player.replace(" ", "_").lower()
            assert f"src='denoising/{clip}/{name}.wav'" in page
            written, rate = sf.read(tmp_path / "denoising" / clip / f"{name}.wav")
            assert rate == section.RATE and np.allclose(written, 0.01 * (i + 1) * (k + 1), atol=1e-4)
    for i, row in enumerate(rows):
        cells = f"<td>{1.5 + i:+.2f}</td><td>{2.0 + i / 10:.3f}</td><td>{0.8 + i / 100:.3f}</td>"
        assert f"<td>{row.system}</td>{cells}" in page
    assert section.markdown(results).count("\n") == len(rows) + 1
