"""`make demo` on one cropped clip: every file the page references exists and is what it claims to be."""

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "recipes" / "demo" / "clips"


class References(HTMLParser):
    """Every src and href of a page, and the text of its table headers."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.headers: list[str] = []
        self._in_header = False

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href") and value]
        self._in_header = tag == "th"

    def handle_data(self, data):
        if self._in_header:
            self.headers.append(data)
            self._in_header = False


def test_the_bundled_clips_are_small_credited_flac():
    clips = sorted(CLIPS.glob("*.flac"))
    assert [clip.stem for clip in clips] == [f"LJ001-000{i}" for i in range(1, 5)]
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
    wavs = [link for link in page.links if link.endswith(".wav")]
    pngs = [link for link in page.links if link.endswith(".png")]
    assert sorted(wavs) == ["LJ001-0001/diffwave.wav", "LJ001-0001/griffin_lim.wav", "LJ001-0001/reference.wav"]
    assert pngs == ["LJ001-0001/mels.png"]
    for link in page.links:
        assert (out / link).is_file() and (out / link).stat().st_size > 0, link
    lengths = {sf.info(out / wav).frames for wav in wavs}
    assert len(lengths) == 1 and 0.9 * 22050 < lengths.pop() <= 22050
    assert all(sf.info(out / wav).samplerate == 22050 for wav in wavs)
    assert (out / pngs[0]).read_bytes().startswith(b"\x89PNG")
    for metric in ("log-mel L1", "MR-STFT", "PESQ wb", "STOI", "RTF"):
        assert any(header.startswith(metric) for header in page.headers), metric
    assert "Griffin-Lim" in (out / "metrics.md").read_text()
