"""The demo (`make demo`): the pretrained voice on real held-out speech, next to the network-free baselines, as a
web page.

Usage (from the repository root):
    python recipes/demo/run.py [--out exp/demo] [--model NAME | --checkpoint PATH] [--crop-seconds S] [--limit N]

Two sets of bundled clips, scored apart: a seen speaker (recipes/demo/clips: LJSpeech LJ001-0001..0004, held out
of training, though other LJSpeech clips were in it) and an unseen one (recipes/demo/unseen: June, whom no
shipped model heard); see each folder's CREDITS.md. For each clip it takes the model's mel of the recording,
vocodes it with DiffWave (6 fast steps), Griffin-Lim (100 iterations) and Griffin-Lim + envelope (the
network-free control), and writes OUT/<clip>/{reference,diffwave,griffin_lim,gl_envelope}.wav and
OUT/<clip>/mels.png, then OUT/index.html (per set: players, mel images and the metrics table of
`diffwave.evaluation.heldout`) and OUT/metrics.md. The page is a list of sections (`vocoding_section` per set);
other sections join it through `write_demo(..., sections=...)`: the denoising section (recipes/demo/denoising.py:
the same clips with 10 dB of white noise, cleaned by the shipped speech prior, noisereduce and a Wiener filter)
unless --no-denoising.
"""

from __future__ import annotations

import argparse
import html
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from diffwave import pretrained
from diffwave.audio import LogMel, write_audio
from diffwave.config import AudioConfig
from diffwave.errors import DiffwaveError
from diffwave.evaluation import heldout
from diffwave.fileio import atomic_write
from diffwave.inference.vocoder import Vocoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
import denoising  # noqa: E402  (recipes/demo/denoising.py, beside this script)
from figures import save_stacked_images  # noqa: E402  (recipes/demo/figures.py)

HERE = Path(__file__).resolve().parent
CLIPS, UNSEEN = HERE / "clips", HERE / "unseen"
SEEN_SET, UNSEEN_SET = "Seen speaker (LJSpeech)", "Unseen speaker (June)"
CREDITS = {SEEN_SET: "Clips: LJSpeech (public domain), see recipes/demo/clips/CREDITS.md.",
           UNSEEN_SET: "Clips: June Wallack (CC-BY-SA-3.0), see recipes/demo/unseen/CREDITS.md."}
PLAYERS = {"reference": "reference (recording)", **heldout.SYSTEMS}


def mel_image(path: Path, result: heldout.ClipResult, front_end: LogMel) -> None:
    """The log-mels of a clip (the reference and each system), one above the other, on the reference's colour
    scale."""
    mels = {"reference": front_end(result.reference)} | {s: front_end(a) for s, a in result.audio.items()}
    low, high = mels["reference"].min().item(), mels["reference"].max().item()
    save_stacked_images(path, {f"{result.id}: {PLAYERS[system]}": mel.numpy() for system, mel in mels.items()},
                        vmin=low, vmax=high, ylabel="mel bin", xlabel="frame", panel_height=2.2)


def vocoding_section(name: str, results: list[heldout.ClipResult]) -> str:
    """One set's part of the page: its heading and credit, per clip the players and the mel image, then its
    metrics table (per clip and mean)."""
    parts = [f"<h2>{html.escape(name)}</h2>"]
    if name in CREDITS:
        parts.append(f"<p>{html.escape(CREDITS[name])}</p>")
    systems = heldout.systems_of(results)
    for result in results:
        clip = html.escape(result.id)
        parts.append(f"<h3>{clip}</h3>")
        for system in ["reference", *systems]:
            parts.append(f"<figure><figcaption>{html.escape(PLAYERS[system])}</figcaption>"
                         f"<audio controls preload='none' src='{clip}/{system}.wav'></audio></figure>")
        parts.append(f"<p><img src='{clip}/mels.png' alt='log-mels of {clip}' width='100%'></p>")
    parts.append(f"<h3>Metrics: {html.escape(name)}</h3><table><tr><th>clip</th><th>system</th>"
                 + "".join(f"<th>{html.escape(label)}</th>" for label in heldout.METRICS.values()) + "</tr>")
    rows = [(r.id, r.scores) for r in results] + [("mean", heldout.means(results))]
    for clip, scores in rows:
        for system in systems:
            cells = "".join(f"<td>{scores[system][m]:.3f}</td>" for m in heldout.METRICS)
            parts.append(f"<tr><td>{html.escape(clip)}</td><td>{html.escape(PLAYERS[system])}</td>{cells}</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def page(title: str, setup: str, sections: Sequence[str]) -> str:
    """index.html: the title and the setup sentence, then each section's HTML in order."""
    head = [f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:60em;margin:auto} td,th{padding:2px 8px;"
            "text-align:right} figure{display:inline-block;margin:4px 12px 4px 0}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(setup)}.</p>"]
    return "\n".join([*head, *sections, "</body></html>"]) + "\n"


def run(out: Path, vocoder: Vocoder, sets: dict[str, dict], title: str,
        sections: Sequence[tuple[str, str]] = ()) -> Path:
    """Vocode and score each set of clips, then write the demo into `out` with any further `sections` after
    them; returns the page."""
    results = heldout.compare_sets(vocoder, sets)
    return write_demo(out, title, heldout.describe_setup(vocoder, sets), results, vocoder.config.audio, sections)


def write_clip_files(out: Path, results: list[heldout.ClipResult], audio: AudioConfig) -> None:
    """Per clip, OUT/<clip>/<system>.wav for the reference and every system, and OUT/<clip>/mels.png."""
    front_end = LogMel(audio)
    for result in results:
        folder = out / result.id
        folder.mkdir(parents=True, exist_ok=True)
        for system, signal in {"reference": result.reference, **result.audio}.items():
            write_audio(folder / f"{system}.wav", signal, audio.sample_rate)
        mel_image(folder / "mels.png", result, front_end)


def write_demo(out: Path, title: str, setup: str, sets: dict[str, list[heldout.ClipResult]], audio: AudioConfig,
               sections: Sequence[tuple[str, str]] = ()) -> Path:
    """Write results already computed into `out`: each set's files (`write_clip_files`) and section, then any
    further `sections` ((HTML, Markdown) pairs) after them, into index.html (`page`) and metrics.md; returns the
    page. Separate from `run` so the page can be built without vocoding anything."""
    for results in sets.values():
        write_clip_files(out, results, audio)
    index = out / "index.html"
    with atomic_write(index) as temp:
        temp.write_text(page(title, setup, [vocoding_section(name, results) for name, results in sets.items()]
                             + [html_part for html_part, _ in sections]))
    with atomic_write(out / "metrics.md") as temp:
        temp.write_text("\n\n".join([heldout.markdown_tables(sets), *(text for _, text in sections)]) + "\n")
    return index


def denoising_section(out: Path, folders: dict[str, Path], limit: int | None) -> tuple[str, str]:
    """The shipped speech prior on the same clips with 10 dB of white noise (recipes/demo/denoising.py)."""
    results = denoising.run_section(out, folders, limit=limit)
    return denoising.section_html(results), denoising.markdown(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Vocode held-out speech with a pretrained DiffWave and Griffin-Lim.")
    parser.add_argument("--out", type=Path, default=Path("exp/demo"))
    parser.add_argument("--clips", type=Path, default=CLIPS, help="folder of .flac/.wav clips of a seen speaker")
    parser.add_argument("--unseen", type=Path, default=UNSEEN, help="folder of .flac/.wav clips of an unseen speaker")
    parser.add_argument("--model", help="a shipped model (default: the default one; see `diffwave pretrained`)")
    parser.add_argument("--checkpoint", help="a checkpoint or .safetensors instead of a shipped model")
    parser.add_argument("--crop-seconds", type=float, help="keep only the first S seconds of each clip")
    parser.add_argument("--limit", type=int, help="use only the first N clips of each set")
    parser.add_argument("--no-denoising", action="store_true", help="leave out the denoising section")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        if args.checkpoint:
            vocoder, title = Vocoder.from_checkpoint(args.checkpoint, device="cpu"), args.checkpoint
        else:
            name = pretrained.find(args.model).name
            vocoder, title = Vocoder.from_pretrained(name, device="cpu"), f"the pretrained model '{name}'"
        sets = heldout.read_sets({SEEN_SET: args.clips, UNSEEN_SET: args.unseen}, vocoder.sample_rate,
                                 args.crop_seconds, args.limit)
        args.out.mkdir(parents=True, exist_ok=True)
        sections = [] if args.no_denoising else [denoising_section(args.out, {SEEN_SET: args.clips,
                                                                              UNSEEN_SET: args.unseen}, args.limit)]
        index = run(args.out, vocoder, sets, f"DiffWave ({title}) and Griffin-Lim on held-out speech", sections)
    except DiffwaveError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    print((args.out / "metrics.md").read_text(), end="")
    clips = sum(len(clips) for clips in sets.values())
    print(f"demo: {clips} clips in {time.perf_counter() - start:.0f} s; open {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
