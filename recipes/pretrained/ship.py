"""Ship a training checkpoint as the package's pretrained voice: export, evaluate, write the card and manifest.

Usage (from the repository root; recipes/pretrained/ship.sh runs this with the project's venv):
    python recipes/pretrained/ship.py [CHECKPOINT] --features WORK/features [--run-dir WORK/run] [--name voice]

WORK is the folder of recipes/pretrained/train_voice.sh. CHECKPOINT defaults to the newest checkpoint of
--run-dir (its `latest` pointer). The EMA weights are
exported with `diffwave export` into a work folder, checked against the size limit, scored on the bundled
held-out clips (recipes/demo/clips) against Griffin-Lim of the same mels (`diffwave.evaluation.heldout`), and
only then copied into diffwave/pretrained/ with the model card, the quality curve and the manifest entry. The
training budget comes from the run's TensorBoard logs: wall time is the sum of the logged intervals
(train.log_every steps over train/steps_per_sec) up to the checkpoint's step, and CPU-hours are that times
--cores (the cores the run had).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import shutil
import string
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from safetensors import safe_open  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from diffwave import cli, pretrained  # noqa: E402
from diffwave.checkpoints import export_safetensors, latest_checkpoint, load_safetensors  # noqa: E402
from diffwave.config import FINISHES, config_from_dict, config_to_yaml  # noqa: E402
from diffwave.errors import DiffwaveError  # noqa: E402
from diffwave.evaluation import heldout  # noqa: E402
from diffwave.fileio import atomic_write  # noqa: E402
from diffwave.inference.tuning import tune_schedule  # noqa: E402
from diffwave.inference.vocoder import Vocoder  # noqa: E402
from diffwave.pretrained import PretrainedModel  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MAX_BYTES = 15 * 10**6
README_START, README_END = "<!-- pretrained-metrics:start", "<!-- pretrained-metrics:end -->"
SEEN, UNSEEN = "Seen speaker (LJSpeech)", "Unseen speaker (June)"  # the held-out sets, scored apart
HISTORY_FIELDS = ["step", "wall_hours", "cpu_hours"] + [f"{system}_{metric}" for system in heldout.SYSTEMS
                                                        for metric in heldout.METRICS]
logger = logging.getLogger("ship")


def training_curve(run_dir: Path, log_every: int) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """([(step, cumulative wall hours)] per logged interval, [(step, valid loss)]) from the run's TensorBoard
    logs, in the order they were written (a resumed run's repeated steps count again: they were paid for)."""
    logs = run_dir / "logs"
    if not logs.is_dir():
        return [], []
    events = EventAccumulator(str(logs), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    hours, total = [], 0.0
    for event in sorted(events.Scalars("train/steps_per_sec") if "train/steps_per_sec" in tags else [],
                        key=lambda e: e.wall_time):
        total += log_every / max(event.value, 1e-9) / 3600
        hours.append((event.step, total))
    valid = [(e.step, e.value) for e in events.Scalars("valid/loss")] if "valid/loss" in tags else []
    return hours, valid


def hours_at(hours: list[tuple[int, float]], step: int) -> float:
    """Wall hours spent up to `step` (the last logged interval at or before it)."""
    return max([h for s, h in hours if s <= step], default=0.0)


def read_history(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def write_history(path: Path, rows: list[dict[str, str]]) -> None:
    with atomic_write(path) as temp, temp.open("w", newline="") as file:
        writer = csv.DictWriter(file, HISTORY_FIELDS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda row: int(row["step"])))


def history_table(rows: list[dict[str, str]]) -> str:
    lines = ["| step | wall hours | CPU-hours | log-mel L1 | MR-STFT | PESQ wb | STOI | Griffin-Lim STOI |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        values = [row[f"diffwave_{m}"] for m in ("log_mel_l1", "mr_stft", "pesq_wb", "stoi")]
        lines.append(f"| {row['step']} | {row['wall_hours']} | {row['cpu_hours']} | " + " | ".join(values)
                     + f" | {row['griffin_lim_stoi']} |")
    return "\n".join(lines)


def plot_curve(path: Path, hours: list[tuple[int, float]], valid: list[tuple[int, float]],
               history: list[dict[str, str]], cores: int) -> None:
    """Validation loss and held-out STOI/PESQ against CPU-hours, as a small PNG."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    points = [(hours_at(hours, step) * cores, loss) for step, loss in valid]
    left.plot([p[0] for p in points], [p[1] for p in points], "o-", markersize=3)
    left.set(xlabel="CPU-hours", ylabel="validation loss", title="training")
    x = [float(row["cpu_hours"]) for row in history]
    for metric, style in (("stoi", "o-"), ("pesq_wb", "s-")):
        right.plot(x, [float(row[f"diffwave_{metric}"]) for row in history], style, label=f"DiffWave {metric}")
        if history:
            right.axhline(float(history[-1][f"griffin_lim_{metric}"]), linestyle="--", color="grey", linewidth=0.8)
    right.set(xlabel="CPU-hours", title="held-out (dashed: Griffin-Lim)")
    right.legend(fontsize=7)
    figure.tight_layout()
    with atomic_write(path) as temp:
        figure.savefig(temp, dpi=72, format="png")
    plt.close(figure)


# The training speakers a features folder may hold: id prefix -> (name, the card's credit).
SPEAKERS = {
    "allison_": ("Allison", "**Allison** (`allison_*`): telephony prompts recorded by Allison Smith "
                 "(http://www.theivrvoice.com), with financial contributions by Digium, Inc. (http://www.digium.com); "
                 "copyright 2003-2010 Allison Smith, CC-BY-SA-3.0 (https://creativecommons.org/licenses/by-sa/3.0/)."),
    "LJ": ("LJSpeech", "**LJSpeech** (`LJ*`; Keith Ito and Linda Johnson, 2017, "
           "https://keithito.com/LJ-Speech-Dataset/): public domain. The held-out clips in `recipes/demo/clips/` "
           "were left out of training."),
    "carlo_": ("Carlo", "**Carlo** (`carlo_*`, Italian): recorded by Carlo Flora (http://www.carloflora.com), "
               "translated by Silvia Petrin; copyright 2012 Carlo Flora, CC-BY-3.0; from Debian's "
               "`asterisk-core-sounds-it-g722`, assembled by `recipes/corpora/asterisk_voices.py` (G.722, 16 kHz)."),
    "ivrvoiceru_": ("IvrvoiceRU", "**IvrvoiceRU** (`ivrvoiceru_*`, Russian): provided by Maxim Topal "
                    "(http://www.ivrvoice.ru); copyright 2010, CC-BY-3.0; from Debian's "
                    "`asterisk-core-sounds-ru-g722`, assembled by `recipes/corpora/asterisk_voices.py` "
                    "(G.722, 16 kHz)."),
}
UNSEEN_PREFIX = "june"  # the unseen speaker of every held-out table: never in training features


def corpus_summary(features: Path, heldout_ids: list[str]) -> dict[str, str]:
    """The card's data counts and the credits of the speakers in the train split (clips of a speaker without a
    credit here are counted as other clips, with a warning); refused when a held-out clip or the unseen speaker
    is among the run's utterances (any split)."""
    manifest = json.loads((features / "manifest.json").read_text())
    ids = {u["id"] for u in manifest["utterances"]}
    leaked = sorted(ids & set(heldout_ids)) + sorted(i for i in ids if i.startswith(UNSEEN_PREFIX))
    if leaked:
        raise DiffwaveError(f"{features}: the held-out clips {', '.join(leaked[:5])} are in the training features")
    train = [u for u in manifest["utterances"] if u["split"] == "train"]
    counts = {prefix: sum(u["id"].startswith(prefix) for u in train) for prefix in SPEAKERS}
    present = [prefix for prefix, count in counts.items() if count]
    names = [f"{counts[prefix]} {SPEAKERS[prefix][0]}" for prefix in present]
    others = [u["id"] for u in train if not u["id"].startswith(tuple(SPEAKERS))]
    if others:
        logger.warning("%d training clips (%s, ...) are of no speaker SPEAKERS credits: credit them in the card",
                       len(others), others[0])
        names.append(f"{len(others)} other clips")
    return {"train_clips": str(len(train)),
            "train_minutes": f"{sum(u['samples'] for u in train) / manifest['audio']['sample_rate'] / 60:.1f}",
            "corpus_counts": ", ".join(names),
            "speakers": " + ".join([SPEAKERS[prefix][0] for prefix in present] + ["other clips"] * bool(others)),
            "credits": "\n".join(f"- {SPEAKERS[prefix][1]}" for prefix in present)}


def readme_block(sets: dict[str, list[heldout.ClipResult]], step: int, cpu_hours: float, setup: str) -> str:
    """The README's copy of the card's mean scores (one row per set and system), between its markers."""
    return f"Step {step} ({cpu_hours:.1f} CPU-hours of training); {setup}:\n\n{heldout.summary_table(sets)}"


def replace_between_markers(path: Path, text: str, markers: tuple[str, str] = (README_START, README_END)) -> None:
    """Replace what lies between the README's markers (default: pretrained-metrics) with `text`."""
    content = path.read_text()
    start, end = content.find(markers[0]), content.find(markers[1])
    if start < 0 or end < start:
        raise DiffwaveError(f"{path}: the markers {markers[0]}... and {markers[1]} are missing")
    head = content[:content.index("\n", start) + 1]
    with atomic_write(path) as temp:
        temp.write_text(head + text + "\n" + content[end:])


def shipping_parser(description: str, name: str) -> argparse.ArgumentParser:
    """The options every ship script takes: what to export, from which run, and where its outputs go."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("checkpoint", nargs="?", help="training checkpoint (default: the newest of --run-dir)")
    parser.add_argument("--run-dir", type=Path, help="the training run folder (needed without CHECKPOINT)")
    parser.add_argument("--features", type=Path, required=True,
                        help="the run's feature folder (for the card's data counts)")
    parser.add_argument("--name", default=name)
    parser.add_argument("--clips", type=Path, default=ROOT / "recipes" / "demo" / "clips",
                        help="held-out clips of a speaker in the training data (default: the demo's LJSpeech clips)")
    parser.add_argument("--cores", type=int, default=2, help="CPU cores the training run had")
    parser.add_argument("--work", type=Path, default=ROOT / "exp" / "ship", help="scratch folder for the export")
    parser.add_argument("--target", type=Path, help="where the weights, card and manifest go (default: the package)")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="README whose table is rewritten")
    return parser


def run_shipping(ship_function: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run a ship script's work; a user error is one line and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        ship_function(args)
    except DiffwaveError as error:
        print(f"ship: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = shipping_parser(__doc__.split("\n\n")[0], "voice")
    parser.add_argument("--history", type=Path, default=HERE / "history.tsv", help="held-out scores of each export")
    parser.add_argument("--unseen", type=Path, default=ROOT / "recipes" / "demo" / "unseen",
                        help="held-out clips of a speaker the voice never heard (default: the demo's June clips)")
    parser.add_argument("--crop-seconds", type=float, help="score only the first S seconds of each clip (quick runs)")
    parser.add_argument("--finish", choices=FINISHES, help="set the shipped config's diffusion.finish (vocode's "
                                                           "default finish) before scoring")
    parser.add_argument("--continues", type=budget, metavar="STEPS:CPU_HOURS",
                        help="the run started (--init-from) from weights trained this long: the card counts both")
    parser.add_argument("--cpu-hours", type=float, help="the run's CPU-hours as measured (default: wall-clock hours "
                                                        "from its logs times --cores)")
    parser.add_argument("--tune-schedule", action="store_true",
                        help="tune the fast schedule on the features' validation clips (diffwave tune-schedule) "
                             "before scoring, and ship it as vocode's default")
    return run_shipping(ship, parser.parse_args(argv))


def install(target: Path, exported: Path, card_text: str, entry: PretrainedModel) -> None:
    """The weights, the card and the manifest entry into `target`, each written atomically; the entry becomes its
    task's default."""
    with atomic_write(target / exported.name) as temp:
        shutil.copyfile(exported, temp)
    with atomic_write(target / entry.card) as temp:
        temp.write_text(card_text)
    others = [replace(m, default=False) if m.task == entry.task else m
              for m in pretrained.read_manifest(target) if m.name != entry.name]
    with atomic_write(target / pretrained.MANIFEST) as temp:
        temp.write_text(pretrained.manifest_text([*others, entry]))


def export_for_shipping(args: argparse.Namespace) -> tuple[Path, Path, int]:
    """(the checkpoint to ship: CHECKPOINT or the newest of --run-dir, its EMA export in --work, its bytes),
    refused above the size limit for package data."""
    if args.checkpoint is None and args.run_dir is None:
        raise DiffwaveError("give a CHECKPOINT or the --run-dir whose newest checkpoint to ship")
    checkpoint = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(args.run_dir)
    if checkpoint is None:
        raise DiffwaveError(f"{args.run_dir}: no checkpoint yet; pass one")
    args.work.mkdir(parents=True, exist_ok=True)
    exported = args.work / f"{args.name}.safetensors"
    if cli.main(["export", str(checkpoint), str(exported), "--force"]) != 0:
        raise DiffwaveError(f"{checkpoint}: export failed (see above)")
    size = exported.stat().st_size
    if size > MAX_BYTES:
        raise DiffwaveError(f"{exported}: {size / 1e6:.1f} MB exceeds the {MAX_BYTES / 1e6:.0f} MB limit for shipped "
                            "weights")
    return checkpoint, exported, size


def ship(args: argparse.Namespace) -> None:
    """Export, score and describe first; write into the package only once all of that has worked."""
    checkpoint, exported, size = export_for_shipping(args)
    if args.finish:
        export_safetensors(exported, exported, changes={"diffusion": {"finish": args.finish}})
    tuning = tuned_schedule(exported, args.features) if args.tune_schedule else ""
    weights, values = load_safetensors(exported)
    config = config_from_dict(values, source=str(exported))
    step = step_of(exported)

    vocoder = Vocoder.from_checkpoint(exported, device="cpu")
    sets = heldout.read_sets({SEEN: args.clips, UNSEEN: args.unseen}, vocoder.sample_rate, args.crop_seconds)
    data = corpus_summary(args.features, [clip for clips in sets.values() for clip in clips])
    logger.info("scoring %s held-out clips (DiffWave and the network-free baselines)",
                " + ".join(str(len(clips)) for clips in sets.values()))
    results = heldout.compare_sets(vocoder, sets)
    means = heldout.means(results[SEEN])  # the quality curve follows the seen speaker, as it always has

    hours, valid = training_curve(checkpoint.resolve().parent.parent, config.train.log_every)
    run_step, run_cpu_hours = step, args.cpu_hours
    if args.continues:  # the run started (--init-from) from weights with a training budget of their own
        base_step, base_cpu_hours = args.continues
        step += base_step
        hours = [(s + base_step, h + base_cpu_hours / args.cores) for s, h in hours]
        valid = [(s + base_step, loss) for s, loss in valid]
    wall = hours_at(hours, step)
    if run_cpu_hours is not None:  # measured by the process's CPU time: a shared machine's wall clock overstates it
        wall = (args.continues[1] if args.continues else 0.0) / args.cores + run_cpu_hours / args.cores
    history_path = args.history
    row = {"step": str(step), "wall_hours": f"{wall:.2f}", "cpu_hours": f"{wall * args.cores:.2f}"}
    row |= {f"{system}_{metric}": f"{means[system][metric]:.4f}" for system in heldout.SYSTEMS
            for metric in heldout.METRICS}
    history = sorted([old for old in read_history(history_path) if int(old["step"]) != step] + [row],
                     key=lambda item: int(item["step"]))

    digest, card, curve = pretrained.sha256_of(exported), f"{args.name}.md", f"{args.name}_curve.png"
    description = (f"DiffWave {config.model.residual_layers} layers x {config.model.residual_channels} channels "
                   f"({config.diffusion.prior} prior), {config.audio.sample_rate} Hz {config.audio.mel_preset} "
                   f"mels; {data['speakers']}, step {step}")
    setup = heldout.describe_setup(vocoder, sets)
    fields = data | {
        "name": args.name, "description": description, "file": exported.name, "sha256": digest,
        "size_mb": f"{size / 1e6:.1f}", "parameters": f"{sum(w.numel() for w in weights.values()):,}",
        "checkpoint": str(checkpoint), "step": str(step), "date": datetime.date.today().isoformat(),
        "sample_rate": str(config.audio.sample_rate), "heldout": ", ".join(sets[SEEN]),
        "steps_text": (f"{step} steps of batch {config.train.batch_size} (crops of {config.data.crop_frames} frames), "
                       f"{wall:.2f} wall-clock hours on {args.cores} CPU cores = {wall * args.cores:.2f} CPU-hours "
                       + (f"(the last {run_step} steps in a run started from weights of {args.continues[0]} steps and "
                          f"{args.continues[1]:.2f} CPU-hours, with a fresh optimizer; "
                          if args.continues else "(")
                       + ("that run's CPU time as measured)." if run_cpu_hours is not None
                          else "from the run's TensorBoard logs).")),
        "curve": f"![validation loss and held-out quality against CPU-hours]({curve})",
        "config": config_to_yaml(config).strip(), "setup": setup, "tuning": tuning,
        "summary": heldout.summary_table(results), "metrics": heldout.markdown_tables(results),
        "history": history_table(history),
        "tried": (HERE / "tried_configs.md").read_text().strip(),
    }
    text = string.Template((HERE / "card.md.tmpl").read_text()).substitute(fields)

    target = args.target or pretrained.pretrained_dir()
    plot_curve(target / curve, hours, valid, history, args.cores)
    install(target, exported, text, PretrainedModel(args.name, exported.name, digest, description, default=True,
                                                    card=card))
    write_history(history_path, history)
    replace_between_markers(args.readme, readme_block(results, step, wall * args.cores, setup))
    print(f"ship: {args.name} (step {step}, {size / 1e6:.1f} MB, sha256 {digest[:12]}...) written to {target}; "
          f"card {target / card}")
    print(heldout.summary_table(results))


def budget(text: str) -> tuple[int, float]:
    """--continues STEPS:CPU_HOURS."""
    steps, _, hours = text.partition(":")
    try:
        return int(steps), float(hours)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STEPS:CPU_HOURS, e.g. 9660:15.42, got '{text}'") from None


def tuned_schedule(exported: Path, features: Path) -> str:
    """Tune `exported`'s fast schedule in place (inference/tuning.py); the card's sentence about it."""
    candidates = tune_schedule(exported, features, exported)
    best, start = candidates[0], next(c for c in candidates if c.origin == "start")
    return (f"`diffusion.fast_schedule` was tuned by `diffwave tune-schedule` on the first 4 validation clips of "
            f"the features folder (2 s each): {len(candidates)} distinct runs, composite score {best.score:.3f} "
            f"against 1.000 for the schedule it started from ({', '.join(f'{b:.3g}' for b in start.betas)}).")


def step_of(exported: Path) -> int:
    """The training step `diffwave export` recorded in the file's metadata."""
    with safe_open(str(exported), framework="pt") as file:
        step = (file.metadata() or {}).get("step", "")
    if not step.isdigit():
        raise DiffwaveError(f"{exported}: no training step in its metadata (not one of our training checkpoints?)")
    return int(step)


if __name__ == "__main__":
    sys.exit(main())
