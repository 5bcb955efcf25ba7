"""`make demo`: the page it writes for the four bundled clips, built from cached results (no vocoding), and
one cropped clip end to end: every file the page references exists and is what it claims to be."""

import importlib.util
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from diffwave.config import AudioConfig
from diffwave.evaluation import heldout

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "recipes" / "demo" / "clips"
CLIP_IDS = [f"LJ001-000{i}" for i in range(1, 5)]
UNSEEN_IDS = ["june_agent-user", "june_confbridge-remove-last-out", "june_dir-first", "june_vm-mailboxfull"]
SETS = {"Seen speaker (LJSpeech)": CLIP_IDS, "Unseen speaker (June)": UNSEEN_IDS}
PLAYERS = ("reference", "diffwave", "griffin_lim", "gl_envelope")
LABELS = ("DiffWave", "Griffin-Lim 100", "Griffin-Lim + envelope")


class References(HTMLParser):
    """Every src and href of a page, the text of its headings and table headers, and its table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.headers: list[str] = []
        self.headings: list[str] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href") and value]
        if tag == "tr":
            self.rows.append([])
        self._open = tag if tag in ("th", "td", "h1", "h2", "h3", "title") else None

    def handle_data(self, data):
        self.text.append(data)
        if self._open in ("th", "td"):
            self.rows[-1].append(data)
            if self._open == "th":
                self.headers.append(data)
        elif self._open in ("h1", "h2", "h3"):
            self.headings.append(data)
        self._open = None


def load_demo_script():
    """recipes/demo/run.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("demo_run", REPO / "recipes" / "demo" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cached_results() -> dict[str, list[heldout.ClipResult]]:
    """What `heldout.compare_sets` returns for the two sets of four clips, in miniature: 0.1-0.45 s of audio
    each, and a score that differs in every cell (set, clip, system, metric), so a number in the wrong place
    shows."""
    rate, sets = AudioConfig().sample_rate, {}
    for k, (name, clips) in enumerate(SETS.items()):
        results = []
        for c, clip in enumerate(clips):
            n = int((0.1 + 0.05 * c + 0.2 * k) * rate)
            t = torch.arange(n) / rate
            reference = 0.3 * torch.sin(2 * torch.pi * (150 + 40 * c + 10 * k) * t)
            audio = {"diffwave": 0.9 * reference, "griffin_lim": 0.5 * reference.roll(7),
                     "gl_envelope": 0.7 * reference.roll(3)}
            scores = {system: {metric: 10 * k + c + 0.1 * s + 0.01 * m + 0.001
                               for m, metric in enumerate(heldout.METRICS)} for s, system in enumerate(heldout.SYSTEMS)}
            results.append(heldout.ClipResult(clip, reference, audio, scores))
        sets[name] = results
    return sets


def expected_means(results: list[heldout.ClipResult]) -> dict[str, dict[str, float]]:
    """Written out here: plain means over the clips, except the RTF: total synthesis time over total audio."""
    table = {}
    for system in heldout.SYSTEMS:
        table[system] = {m: float(np.mean([r.scores[system][m] for r in results])) for m in heldout.METRICS}
        seconds = sum(r.scores[system]["rtf"] * r.reference.numel() for r in results)
        table[system]["rtf"] = seconds / sum(r.reference.numel() for r in results)
    return table


def expected_rows(results: list[heldout.ClipResult]) -> list[list[str]]:
    """The metrics table of one set, per clip then the means, every system a row, as the page shows it."""
    rows = [[r.id, label, *(f"{r.scores[system][m]:.3f}" for m in heldout.METRICS)]
            for r in results for system, label in zip(heldout.SYSTEMS, LABELS, strict=True)]
    means = expected_means(results)
    return rows + [["mean", label, *(f"{means[system][m]:.3f}" for m in heldout.METRICS)]
                   for system, label in zip(heldout.SYSTEMS, LABELS, strict=True)]


def test_the_full_demo_page_from_cached_results(cached_results, tmp_path):
    """The page `make demo` writes for both sets: per set a heading and its credit, per clip a heading, the four
    players and the mel image, each a real file with the right audio; then the set's metrics table, every cell
    in its row and column, and the means; the same numbers in metrics.md; a further section after them."""
    demo = load_demo_script()
    out = tmp_path / "demo"
    index = demo.write_demo(out, "The title", "a setup sentence", cached_results, AudioConfig(),
                            sections=[("<h2>Another section</h2>", "another table")])
    page = References()
    page.feed(index.read_text())
    assert page.headings == ["The title", *[heading for name, clips in SETS.items()
                                            for heading in [name, *clips, f"Metrics: {name}"]], "Another section"]
    assert "a setup sentence." in page.text
    assert page.links == [link for clips in SETS.values() for clip in clips
                          for link in [f"{clip}/{player}.wav" for player in PLAYERS] + [f"{clip}/mels.png"]]
    for results in cached_results.values():
        for result in results:
            for player, signal in {"reference": result.reference, **result.audio}.items():
                audio, rate = sf.read(out / result.id / f"{player}.wav", dtype="float32")
                assert rate == 22050
                np.testing.assert_allclose(audio, signal.numpy(), atol=1 / 2**15, rtol=0)  # 16-bit PCM
            assert (out / result.id / "mels.png").read_bytes().startswith(b"\x89PNG")
    header = ["clip", "system", *heldout.METRICS.values()]
    expected = [expected_rows(results) for results in cached_results.values()]
    assert page.rows == [header, *expected[0], header, *expected[1]]
    # The RTF mean is weighted by length, which the clips' different lengths make differ from the plain mean.
    seen = cached_results["Seen speaker (LJSpeech)"]
    assert f"{np.mean([r.scores['diffwave']['rtf'] for r in seen]):.3f}" != expected[0][-3][-1]
    assert "Clips: LJSpeech (public domain), see recipes/demo/clips/CREDITS.md." in page.text
    assert "Clips: June Wallack (CC-BY-SA-3.0), see recipes/demo/unseen/CREDITS.md." in page.text
    lines = (out / "metrics.md").read_text().splitlines()
    assert lines[0] == "**Seen speaker (LJSpeech)**" and "**Unseen speaker (June)**" in lines
    assert lines[-1] == "another table"
    table = [[cell.strip().strip("*") for cell in line.strip("|").split("|")] for line in lines
             if line.startswith("| ") and not line.startswith("| clip ")]
    assert table == expected[0] + expected[1]


def test_the_bundled_clips_are_small_credited_flac():
    clips = sorted(CLIPS.glob("*.flac"))
    assert [clip.stem for clip in clips] == CLIP_IDS
    assert sum(clip.stat().st_size for clip in clips) <= 2_000_000
    assert all(sf.info(clip).samplerate == 22050 and sf.info(clip).channels == 1 for clip in clips)
    credits = (CLIPS / "CREDITS.md").read_text()
    assert "public domain" in credits and all(clip.stem in credits for clip in clips)


def test_demo_page_references_only_files_that_exist(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, str(REPO / "recipes" / "demo" / "run.py"), "--out", str(out),
                             "--crop-seconds", "1", "--limit", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"open {out / 'index.html'}" in result.stdout
    page = References()
    page.feed((out / "index.html").read_text())
    wavs = [link for link in page.links if link.endswith(".wav") and not link.startswith("denoising/")]
    pngs = [link for link in page.links if link.endswith(".png") and not link.startswith("denoising/")]
    first = ("LJ001-0001", UNSEEN_IDS[0])  # --limit 1: the first clip of each set
    assert sorted(wavs) == sorted(f"{clip}/{player}.wav" for clip in first for player in PLAYERS)
    assert pngs == [f"{clip}/mels.png" for clip in first]
    # The denoising section (recipes/demo/denoising.py, with the shipped speech prior) on the same clips.
    denoised = sorted(link for link in page.links if link.startswith("denoising/"))
    assert denoised == sorted(f"denoising/{clip}/{name}" for clip in first for name in
                              ["noisy_input.wav", "diffwave_prior.wav", "noisereduce.wav", "clean.wav",
                               "spectrograms.png"])
    assert all(sf.info(out / link).samplerate == 16000 for link in denoised if link.endswith(".wav"))
    assert "| Unseen speaker (June) | white | 10 | DiffWave prior |" in (out / "metrics.md").read_text()
    for link in page.links:
        assert (out / link).is_file() and (out / link).stat().st_size > 0, link
    for clip in first:
        lengths = {sf.info(out / wav).frames for wav in wavs if wav.startswith(clip)}
        assert len(lengths) == 1 and 0.9 * 22050 < lengths.pop() <= 22050
    assert all(sf.info(out / wav).samplerate == 22050 for wav in wavs)
    assert all((out / png).read_bytes().startswith(b"\x89PNG") for png in pngs)
    for metric in ("log-mel L1", "MR-STFT", "PESQ wb", "STOI", "RTF"):
        assert any(header.startswith(metric) for header in page.headers), metric
    assert all(label in (out / "metrics.md").read_text() for label in LABELS)
