"""Command line: argument parsing only; every command calls the Python API.

User errors (`DiffwaveError`) are printed as one line without a traceback, with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from diffwave import __version__
from diffwave.config import FINISHES, PRESETS, config_to_yaml, load_config
from diffwave.diffusion.reverse_plans import SAMPLERS
from diffwave.diffusion.sampling import CORRECTOR_SNR
from diffwave.errors import DiffwaveError
from diffwave.evaluation.schedule_search import OBJECTIVES
from diffwave.inference.denoise import DEFAULT_TARGET_RMS
from diffwave.inference.options import INITS, SamplingOptions

if TYPE_CHECKING:
    from diffwave.training.trainer import TrainResult


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="base",
                        help=f"a preset ({', '.join(PRESETS)}) or a YAML file (default: base)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.batch_size=8 diffusion.loss=l1")


def _config_command(args: argparse.Namespace) -> None:
    print(config_to_yaml(load_config(args.config, args.overrides)), end="")


def _preprocess_command(args: argparse.Namespace) -> int | None:
    from diffwave.data.preprocess import preprocess

    result = preprocess(args.corpus, args.out, load_config(args.config, args.overrides),
                        corpus_format=args.format, jobs=args.jobs, strict_rate=args.strict_rate)
    print(f"preprocess: {result.summary()}; features in {result.out_dir}, skipped and failed files listed in "
          f"{result.out_dir / 'report.tsv'}")
    return 2 if result.failed else None


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The data, run folder and stopping options that training and distillation share."""
    parser.add_argument("--data", required=True, help="feature folder made by 'diffwave preprocess'")
    parser.add_argument("--out", required=True, help="run folder: checkpoints/ and logs/ (TensorBoard)")
    parser.add_argument("--max-steps", type=int, help="stop at this step (same as train.max_steps=N)")
    parser.add_argument("--resume", action="store_true", help="require a checkpoint in --out to resume from")
    parser.add_argument("--overwrite", action="store_true", help="delete what --out holds and start over")
    _add_device_argument(parser)


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """The key=value overrides, with --max-steps as train.max_steps."""
    return list(args.overrides) + ([f"train.max_steps={args.max_steps}"] if args.max_steps else [])


def _stopped(result: TrainResult, loss_format: str) -> str:
    """Where a training or distillation run stopped, and why, for its last line."""
    last = format(result.losses[-1], loss_format) if result.losses else "n/a"
    why = f" by {result.stopped_by} (continue with --resume)" if result.stopped_by else ""
    return f"stopped at step {result.step}{why}, last loss {last}"


def _train_command(args: argparse.Namespace) -> None:
    from diffwave.training.run import train

    result = train(load_config(args.config, _run_overrides(args)), args.data, args.out, resume=args.resume,
                   overwrite=args.overwrite, device=args.device, init_from=args.init_from)
    if result is not None:
        print(f"train: {_stopped(result, '.4f')}, {result.skipped_steps} skipped steps; checkpoints in "
              f"{args.out}/checkpoints, TensorBoard logs in {args.out}/logs")


def _distill_command(args: argparse.Namespace) -> None:
    from diffwave.training.distill import distill

    result = distill(args.teacher, args.data, args.out, _run_overrides(args), resume=args.resume,
                     overwrite=args.overwrite, device=args.device)
    if result is not None:
        print(f"distill: {_stopped(result, '.3g')}; student checkpoints in {args.out}/checkpoints (vocode them with "
              f"--sampler consistency --steps 1 or 2), TensorBoard logs in {args.out}/logs")


def _export_command(args: argparse.Namespace) -> None:
    from diffwave.checkpoints import export_safetensors

    if Path(args.output).exists() and not args.force:
        raise DiffwaveError(f"{args.output} already exists; pass --force to replace it")
    export_safetensors(args.checkpoint, args.output, use_ema=not args.raw)
    print(f"export: {'raw' if args.raw else 'EMA'} weights and config of {args.checkpoint} written to {args.output}")


def _step_counts(text: str) -> list[int]:
    """--steps: comma-separated positive step counts."""
    try:
        counts = [int(item) for item in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated step counts >= 1, e.g. 6 or 4,6, got '{text}'")
    return counts


def _tune_schedule_command(args: argparse.Namespace) -> None:
    from diffwave.evaluation.schedule_search import Candidate
    from diffwave.inference.tuning import tune_schedule

    if Path(args.output).exists() and not args.force:
        raise DiffwaveError(f"{args.output} already exists; pass --force to replace it")

    def show(candidate: Candidate) -> None:
        scores = " ".join(f"{key} {value:.4f}" for key, value in candidate.scores.items())
        print(f"{candidate.origin:<7} {candidate.score:8.4f}  {scores}  "
              f"[{', '.join(f'{beta:.3g}' for beta in candidate.betas)}]", flush=True)

    candidates = tune_schedule(args.checkpoint, args.data, args.output, split=args.split, clips=args.clips,
                               seconds=args.seconds or None, step_counts=args.steps, objective=args.objective,
                               refine_rounds=args.refine_rounds, seed=args.seed, device=args.device,
                               progress=show)
    best, start = candidates[0], next(c for c in candidates if c.origin == "start")
    print(f"tune-schedule: {len(candidates)} schedules; best {args.objective} {best.score:.4f} (the model's own "
          f"{start.score:.4f}): [{', '.join(f'{beta:.4g}' for beta in best.betas)}], written with the weights "
          f"to {args.output}")


_CHECKPOINT_HELP = ("a training checkpoint (.pt), an exported .safetensors, or a reference (lmnt-com/diffwave) "
                    "checkpoint or model folder (its weights.pt)")
_OUT_HELP = "output folder (created when missing) or, for a single output, the .wav file to write"
_VOCODE_DESCRIPTION = ("Vocode mel spectrograms (.npy or .pt, [n_mels, frames]; the reference's NAME.wav.spec.npy "
                       "gives NAME.wav) or audio files (copy synthesis), or folders of them, into OUTDIR/<name>.wav "
                       "with a trained checkpoint.")


def _add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")


def _add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", default="auto",
                        help="CPU threads: a count, or auto (default): OMP_NUM_THREADS where set, else the count, "
                             "among all cores and halves of them, at which one network layer ran fastest just "
                             "now (beside other busy processes, fewer threads are much faster; the timing costs "
                             "a fraction of a second at start); the log says which")


def _use_threads(args: argparse.Namespace) -> None:
    """--threads, before anything else is measured: the CPU engines time a BASE-width layer (a contended core
    slows every width alike); on a GPU, "auto" changes nothing."""
    import torch

    from diffwave.model.cpu_kernels import LayerWorkload
    from diffwave.threads import choose_threads

    on_gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if args.threads != "auto" or not on_gpu:
        choose_threads(args.threads, LayerWorkload(PRESETS["base"]().model.residual_channels))


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling options of vocode and generate (SamplingOptions' fields): the registry's samplers, their steps
    or schedule, and the corrector."""
    parser.add_argument("--sampler", choices=tuple(SAMPLERS),
                        help="; ".join(f"{name}: {entry.doc.replace('`steps`', '--steps')}"
                                       for name, entry in SAMPLERS.items()))
    parser.add_argument("--steps", type=int, help="DDIM or consistency steps")
    parser.add_argument("--schedule", help="fast schedule: a preset (base, large) or comma-separated betas")
    parser.add_argument("--corrector-steps", type=int, default=0,
                        help="predictor-corrector sampling: Langevin steps at each noisy state the sampler lands "
                             "on, one more network pass each (default: 0, none)")
    parser.add_argument("--corrector-snr", type=float, default=CORRECTOR_SNR,
                        help=f"the corrector's signal-to-noise ratio, which sets its step size (default: "
                             f"{CORRECTOR_SNR}, Song et al.'s)")


def _sampling_options(args: argparse.Namespace) -> SamplingOptions:
    """The SamplingOptions a command's flags ask for (--init, --start-step and --finish are vocode's only)."""
    return SamplingOptions(sampler=args.sampler, steps=args.steps, schedule=_parse_schedule(args.schedule),
                           corrector_steps=args.corrector_steps, corrector_snr=args.corrector_snr,
                           init=getattr(args, "init", None), start_step=getattr(args, "start_step", None),
                           finish=getattr(args, "finish", None))


def _add_vocode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="mel files, audio files or folders")
    parser.add_argument("--checkpoint", help=f"{_CHECKPOINT_HELP} (default: the pretrained model shipped with the "
                                             "package; `diffwave pretrained` lists them)")
    parser.add_argument("-o", "--out", required=True, help=_OUT_HELP)
    _add_sampling_arguments(parser)
    starts = (f"{name}: {doc.replace('start_step', '--start-step')}" for name, doc in INITS.items())
    parser.add_argument("--init", choices=tuple(INITS),
                        help="where the chain starts (default: the model's diffusion.init, noise unless the model "
                             "sets another; `diffwave pretrained` shows a shipped voice's): " + "; ".join(starts))
    parser.add_argument("--start-step", type=int, metavar="K",
                        help="with a Griffin-Lim --init: refine through the plan's last K states (1 .. its length; "
                             "K network passes; default: the model's diffusion.init_start_step)")
    parser.add_argument("--finish", choices=FINISHES,
                        help="what is done to the chain's output (default: the model's diffusion.finish): none, or "
                             "envelope: rescale each STFT band and frame toward the mel (16 passes, phase kept), "
                             "which removes the network's noise floor in quiet bands")
    _add_device_argument(parser)
    _add_threads_argument(parser)
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="auto (default): bf16 on a CPU where it measured faster than fp32 (once per "
                             "machine, kept in ~/.cache/diffwave/precision.json; DIFFWAVE_PRECISION_CACHE=off "
                             "measures in every process), else fp32; the log says which and why. fp16 needs CUDA")
    parser.add_argument("--batch-size", type=int, default=1, help="mels vocoded together (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    parser.add_argument("--force", action="store_true", help="replace existing output files")


def _parse_schedule(text: str | None) -> str | list[float] | None:
    if text is None or not any(c.isdigit() for c in text):
        return text
    try:
        return [float(value) for value in text.split(",")]
    except ValueError:
        raise DiffwaveError(f"--schedule '{text}' is neither a preset name nor comma-separated betas") from None


def _vocode_command(args: argparse.Namespace) -> int | None:
    from diffwave.inference.files import vocode_files
    from diffwave.inference.vocoder import Vocoder

    _use_threads(args)
    dtype = args.dtype  # the vocoder resolves the names, "auto" included
    if args.checkpoint is None:
        from diffwave import pretrained

        model = pretrained.find()
        logging.getLogger("diffwave.vocode").info("no --checkpoint given: using the pretrained model '%s' (%s)",
                                                  model.name, model.path)
        vocoder = Vocoder.from_pretrained(model.name, device=args.device, dtype=dtype)
    else:
        vocoder = Vocoder.from_checkpoint(args.checkpoint, device=args.device, dtype=dtype)
    summary = vocode_files(vocoder, args.inputs, args.out, _sampling_options(args), batch_size=args.batch_size,
                           seed=args.seed, force=args.force)
    print(f"vocode: {summary.line()}; wavs in {args.out}")
    return 2 if summary.failures else None


def _pretrained_command(args: argparse.Namespace) -> None:
    from diffwave import pretrained

    models = pretrained.shipped()
    if not models:
        print(f"pretrained: no model is shipped in {pretrained.pretrained_dir()}")
    for model in models:
        size = f"{model.path.stat().st_size / 1e6:.1f} MB" if model.path.is_file() else "file missing"
        print(f"{model.name} ({model.task}{', default' if model.default else ''}): {model.description} [{size}; card: "
              f"{model.card_path}]")
        if model.task == "vocoder" and model.path.is_file():
            print(f"  vocode defaults: {_sampling_defaults(model.path)}")


def _sampling_defaults(path: Path) -> str:
    """What `vocode` runs with a model file when no flag says otherwise."""
    from diffwave.checkpoints import load_safetensors
    from diffwave.config import config_from_dict

    try:
        diffusion = config_from_dict(load_safetensors(path)[1], source=str(path)).diffusion
    except DiffwaveError as error:  # a damaged file is still listed; loading it names the damage again
        return f"unreadable ({error})"
    start = f"--init {diffusion.init}" + (f" --start-step {diffusion.init_start_step}"
                                          if diffusion.init_start_step else "")
    betas = ",".join(f"{beta:g}" for beta in diffusion.fast_schedule)
    return f"{start} --finish {diffusion.finish} --schedule {betas}"


def _generate_command(args: argparse.Namespace) -> None:
    from diffwave.checkpoints import load_unconditional
    from diffwave.inference.files import generate_files

    _use_threads(args)
    model, config = load_unconditional(args.checkpoint, device=args.device)
    summary = generate_files(model, config, args.n, args.seconds, args.out, _sampling_options(args), seed=args.seed,
                             batch_size=args.batch_size, force=args.force)
    print(f"generate: {summary.line()}; wavs in {args.out}")


def _denoise_command(args: argparse.Namespace) -> int | None:
    from diffwave.inference.denoise import load_denoiser
    from diffwave.inference.files import denoise_files

    _use_threads(args)
    model, config = load_denoiser(args.checkpoint, args.device)
    summary = denoise_files(model, config, args.inputs, args.out, t_start=args.t_start, sdedit=args.sdedit,
                            seed=args.seed, force=args.force, target_rms=args.target_rms)
    print(f"denoise: {summary.line()}; wavs in {args.out}")
    return 2 if summary.failures else None


def _evaluate_command(args: argparse.Namespace) -> None:
    from diffwave.evaluation.folders import evaluate_vocoded, write_evaluation

    evaluation = evaluate_vocoded(args.features, args.generated, args.split)
    if args.output:
        write_evaluation(evaluation, args.output)
    print(f"evaluate: {evaluation.summary()}" + (f"; per-utterance table in {args.output}" if args.output else ""))


def _synth_corpus_command(args: argparse.Namespace) -> None:
    from diffwave.data.synthetic import synthesize_corpus

    out = synthesize_corpus(args.out, args.clips, args.seconds, args.sample_rate, args.seed)
    print(f"synth-corpus: {args.clips} speech-like clips (LJSpeech layout) in {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffwave",
        description="DiffWave diffusion vocoder toolkit: preprocess, train, distill, vocode, generate, denoise.")
    parser.add_argument("--version", action="version", version=f"diffwave {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    config = commands.add_parser("config", help="print a resolved config (preset or YAML plus overrides)",
                                 description="Print the config a run would use, as YAML.")
    _add_config_arguments(config)
    config.set_defaults(handler=_config_command)

    prep = commands.add_parser(
        "preprocess", help="corpus -> resampled audio + log-mel features + manifest",
        description="Validate, resample and featurise a corpus into OUT (never writes into CORPUS). "
                    "Bad files are skipped and listed in OUT/report.tsv; a rerun reuses finished files.")
    prep.add_argument("corpus", help="corpus folder (LJSpeech layout: metadata.csv + wavs/, or any folder of audio)")
    prep.add_argument("out", help="output feature folder")
    prep.add_argument("--format", choices=("auto", "ljspeech", "folder"), default="auto",
                      help="corpus layout (default: ljspeech when metadata.csv exists, else folder)")
    prep.add_argument("--jobs", type=int, default=1, help="worker processes (default: 1)")
    prep.add_argument("--strict-rate", action="store_true",
                      help="refuse files at another sample rate instead of resampling them")
    _add_config_arguments(prep)
    prep.set_defaults(handler=_preprocess_command)

    train = commands.add_parser(
        "train", help="train DiffWave on a feature folder (single process, or under torchrun for DDP)",
        description="Train the conditional or unconditional model (by config) from 'diffwave preprocess' output. "
                    "A run folder that holds checkpoints is resumed from its newest one. Under torchrun, "
                    "train.batch_size is the global batch, split across processes.")
    _add_run_arguments(train)
    train.add_argument("--init-from", metavar="CKPT",
                       help="start a new run from these (EMA) weights with a fresh optimizer, e.g. a shipped "
                            f"model; the config must fit them. {_CHECKPOINT_HELP}")
    _add_config_arguments(train)
    train.set_defaults(handler=_train_command)

    dist = commands.add_parser(
        "distill", help="consistency distillation: a trained model -> a 1-2 step student",
        description="Distil a trained checkpoint (the teacher) into a consistency student that vocodes in 1 or 2 "
                    "steps (Song et al. 2023). The student starts from the teacher's weights and config; "
                    "key=value overrides may change training settings (train.*, distill.*), not the model. "
                    "Checkpoints, resume, EMA and TensorBoard work as in 'diffwave train'.")
    dist.add_argument("--teacher", required=True, help=_CHECKPOINT_HELP)
    _add_run_arguments(dist)
    dist.add_argument("overrides", nargs="*", metavar="key=value",
                      help="overrides, e.g. train.learning_rate=2e-5 distill.target_ema=0.95")
    dist.set_defaults(handler=_distill_command)

    export = commands.add_parser(
        "export", help="training checkpoint -> .safetensors with the EMA weights and the config",
        description="Write the EMA weights (or --raw weights) of a training checkpoint as safetensors, with the "
                    "full config as JSON metadata, for inference and sharing.")
    export.add_argument("checkpoint", help="a step_*.pt file from a run's checkpoints/ folder, or a reference "
                                            "(lmnt-com/diffwave) checkpoint or model folder")
    export.add_argument("output", help="the .safetensors file to write")
    export.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA weights")
    export.add_argument("--force", action="store_true", help="replace an existing output file")
    export.set_defaults(handler=_export_command)

    tune = commands.add_parser(
        "tune-schedule", help="search a fast schedule on validation clips and write it into a model file",
        description="Score fast reverse schedules by copy synthesis of a feature folder's validation clips "
                    "(log-mel L1, MR-STFT, PESQ, STOI; the model's own start, e.g. Griffin-Lim, kept): a grid of "
                    "geometric schedules and the model's own, then coordinate refinement of the best. The best "
                    "is written with the (EMA) weights into OUTPUT, whose vocode then uses it by default.")
    tune.add_argument("checkpoint", help=_CHECKPOINT_HELP)
    tune.add_argument("--data", required=True, help="feature folder made by 'diffwave preprocess' (its validation "
                                                   "split, not the held-out clips you report)")
    tune.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    tune.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    tune.add_argument("--clips", type=int, default=4, help="how many of the split's utterances (first by id)")
    tune.add_argument("--seconds", type=float, default=2.0, help="crop each clip to this long (0: whole clips)")
    tune.add_argument("--steps", type=_step_counts, default=None,
                      help="comma-separated step counts of the grid (default: the model's own schedule's)")
    tune.add_argument("--objective", default="composite", choices=OBJECTIVES,
                      help="what to minimise: one metric, or the mean of the four's gaps to perfect relative "
                           "to the model's own schedule (default)")
    tune.add_argument("--refine-rounds", type=int, default=2, help="coordinate refinement rounds (0: grid only)")
    tune.add_argument("--seed", type=int, default=0, help="noise seed, the same for every candidate")
    tune.add_argument("--force", action="store_true", help="replace an existing output file")
    _add_device_argument(tune)
    tune.set_defaults(handler=_tune_schedule_command)

    vocode = commands.add_parser("vocode", help="mel or audio files -> wav files with a trained checkpoint",
                                 description=_VOCODE_DESCRIPTION)
    _add_vocode_arguments(vocode)
    vocode.set_defaults(handler=_vocode_command)

    shipped = commands.add_parser("pretrained", help="list the pretrained models shipped with the package",
                                  description="List the shipped models (name, description, size, model card); "
                                              "vocode without --checkpoint uses the default one.")
    shipped.set_defaults(handler=_pretrained_command)

    gen = commands.add_parser("generate", help="unconditional generation: N clips from noise",
                              description="Generate audio clips with an unconditional checkpoint "
                                          "(model.conditional: false) into OUTDIR/sample_NNN.wav.")
    gen.add_argument("--checkpoint", required=True, help=f"an unconditional model: {_CHECKPOINT_HELP}")
    gen.add_argument("-n", type=int, default=8, help="number of clips (default: 8)")
    gen.add_argument("--seconds", type=float, default=1.0, help="length of each clip (default: 1.0)")
    gen.add_argument("-o", "--out", required=True, help=_OUT_HELP)
    _add_sampling_arguments(gen)
    _add_device_argument(gen)
    _add_threads_argument(gen)
    gen.add_argument("--batch-size", type=int, default=8)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--force", action="store_true", help="replace existing output files")
    gen.set_defaults(handler=_generate_command)

    den = commands.add_parser(
        "denoise", help="zero-shot denoising of audio files with an unconditional model",
        description="Denoise audio files (or folders of them) into OUTDIR/<name>.wav at each input's own rate and "
                    "length: the noisy signal enters the reverse chain of an unconditional model at the step "
                    "whose noise level matches the estimated one (or --t-start), and the chain runs to 0.")
    den.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files or folders")
    den.add_argument("--checkpoint", help=f"an unconditional model: {_CHECKPOINT_HELP} (default: the shipped "
                                          "speech prior; `diffwave pretrained` lists it)")
    den.add_argument("-o", "--out", required=True, help=_OUT_HELP)
    den.add_argument("--t-start", type=int, help="0-based start step (default: chosen from the noise level)")
    den.add_argument("--sdedit", action="store_true", help="add fresh noise at the start step (SDEdit) instead "
                                                           "of taking the scaled input as the state")
    den.add_argument("--target-rms", type=float,
                     help="level the input is normalised to (default: the level the model was trained at, "
                          f"data.target_rms, or {DEFAULT_TARGET_RMS} for a model trained without one)")
    _add_device_argument(den)
    _add_threads_argument(den)
    den.add_argument("--seed", type=int, default=0)
    den.add_argument("--force", action="store_true", help="replace existing output files")
    den.set_defaults(handler=_denoise_command)

    evaluate = commands.add_parser(
        "evaluate", help="objective distances of vocoded wavs to a feature folder's references",
        description="Compare GENERATED/<id>.wav with the reference audio of each utterance of a split: log-mel "
                    "L1 (the features' own front-end), multi-resolution STFT distance, SI-SDR.")
    evaluate.add_argument("--features", required=True, help="feature folder made by 'diffwave preprocess'")
    evaluate.add_argument("--generated", required=True, help="folder of vocoded <id>.wav files")
    evaluate.add_argument("--split", default="test", choices=("train", "valid", "test"))
    evaluate.add_argument("-o", "--output", help="write the per-utterance table (TSV) here")
    evaluate.set_defaults(handler=_evaluate_command)

    synth = commands.add_parser("synth-corpus", help="write a small synthetic speech-like corpus (LJSpeech layout)",
                                description="Voiced segments with pitch glides through vowel formants, noise "
                                            "bursts and pauses: a corpus for trying the pipeline without data.")
    synth.add_argument("out", help="output folder (metadata.csv + wavs/)")
    synth.add_argument("--clips", type=int, default=24)
    synth.add_argument("--seconds", type=float, default=2.0, help="mean clip length (each varies by +-25%%)")
    synth.add_argument("--sample-rate", type=int, default=22050)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_synth_corpus_command)
    return parser


def _run(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace, prog: str) -> int:
    """Run a command; a user error is one line on stderr and exit code 2, never a traceback."""
    try:
        return handler(args) or 0
    except DiffwaveError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # argparse cannot take positional key=value overrides after options that follow other positionals
    # (`preprocess CORPUS OUT --jobs 2 train.batch_size=8`), so leftover key=value words are overrides.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or not all("=" in word and not word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    return _run(args.handler, args, "diffwave")


def vocode_main(argv: Sequence[str] | None = None) -> int:
    """The `vocode` console script: the same as `diffwave vocode`."""
    parser = argparse.ArgumentParser(prog="vocode", description=_VOCODE_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"diffwave {__version__}")
    _add_vocode_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return _run(_vocode_command, args, "vocode")


if __name__ == "__main__":
    sys.exit(main())
