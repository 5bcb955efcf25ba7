"""Assemble speakers from Debian's Asterisk prompt packages as LJSpeech-layout corpora (wavs/, metadata.csv).

Each `asterisk-core-sounds-LANG-g722` package holds one professional voice as G.722 files (16 kHz wideband):
it Carlo Flora (male, CC-BY-3.0), ru IvrvoiceRU (female, CC-BY-3.0), fr June Wallack (female, CC-BY-SA-3.0).
The packages are fetched with `apt-get download` (no root needed) unless --debs names a folder that has them,
unpacked with dpkg-deb and decoded with the `g722` package (pip install g722). Prompts shorter than
--min-seconds (digits, single words) are left out.

    python recipes/corpora/asterisk_voices.py OUT [--langs it,ru,fr] [--debs DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

SPEAKERS = {"it": "carlo", "ru": "ivrvoiceru", "fr": "june"}
RATE = 16000


def fetch_deb(lang: str, debs: Path) -> Path:
    package = f"asterisk-core-sounds-{lang}-g722"
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        sys.exit(f"{debs}: apt-get download {package} left no .deb there")
    return found[-1]


def decode(path: Path) -> np.ndarray:
    from G722 import G722

    pcm = G722(RATE, 64000, use_numpy=False).decode(path.read_bytes())
    return np.asarray(pcm, dtype=np.int16)


def assemble(lang: str, out: Path, debs: Path, min_seconds: float) -> int:
    speaker = SPEAKERS[lang]
    wavs = out / speaker / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    lines = []
    with tempfile.TemporaryDirectory() as unpacked:
        subprocess.run(["dpkg-deb", "-x", str(fetch_deb(lang, debs)), unpacked], check=True)
        for source in sorted(Path(unpacked).rglob("*.g722")):
            audio = decode(source)
            if audio.size < min_seconds * RATE:
                continue
            clip_id = f"{speaker}_" + "_".join(source.relative_to(unpacked).with_suffix("").parts[-2:])
            sf.write(wavs / f"{clip_id}.wav", audio, RATE, subtype="PCM_16")
            lines.append(f"{clip_id}||\n")
    (out / speaker / "metadata.csv").write_text("".join(lines), encoding="utf-8")
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--langs", default="it,ru,fr", help="comma-separated: it, ru, fr")
    parser.add_argument("--debs", type=Path, help="folder with the .deb files (default: a temporary download)")
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args()
    langs = args.langs.split(",")
    unknown = [lang for lang in langs if lang not in SPEAKERS]
    if unknown:
        sys.exit(f"--langs: unknown {', '.join(unknown)}; expected some of {', '.join(SPEAKERS)}")
    with tempfile.TemporaryDirectory() as scratch:
        debs = args.debs or Path(scratch)
        for lang in langs:
            count = assemble(lang, args.out, debs, args.min_seconds)
            print(f"{args.out / SPEAKERS[lang]}: {count} clips")


if __name__ == "__main__":
    main()
