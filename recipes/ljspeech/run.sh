#!/usr/bin/env bash
# LJSpeech recipe: raw corpus -> features -> trained DiffWave -> vocoded test set -> evaluation.
#
#   recipes/ljspeech/run.sh --corpus /data/LJSpeech-1.1 --out exp/ljspeech [--config base|large|FILE.yaml]
#                           [--stage N] [--stop-stage M] [--jobs J] [key=value ...]
#
# Stages: 0 check the corpus, 1 preprocess, 2 train, 3 vocode the test split, 4 evaluate.
set -euo pipefail

corpus="" out="" config="base" stage=0 stop_stage=4 jobs=$(nproc 2>/dev/null || echo 1)
overrides=()
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --corpus) corpus=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "run.sh: error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$corpus" ] && [ -n "$out" ] || { echo "run.sh: error: --corpus and --out are required" >&2; usage >&2; exit 2; }

# The project's .venv (made by `make test` / `make demo`) if there is one, else an installed `diffwave`.
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -n "${DIFFWAVE:-}" ]; then diffwave=$DIFFWAVE
elif [ -x "$root/.venv/bin/diffwave" ]; then diffwave="$root/.venv/bin/diffwave"
elif command -v diffwave >/dev/null 2>&1; then diffwave=diffwave
else echo "run.sh: error: diffwave is not installed: run 'make test' in $root or pip install it" >&2; exit 2
fi
features="$out/features"
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

if run_stage 0; then
  echo "== stage 0: check the corpus at $corpus"
  [ -f "$corpus/metadata.csv" ] || { echo "run.sh: error: $corpus/metadata.csv not found (LJSpeech layout expected)" >&2; exit 2; }
  [ -d "$corpus/wavs" ] || { echo "run.sh: error: $corpus/wavs/ not found (LJSpeech layout expected)" >&2; exit 2; }
  clips=$(find "$corpus/wavs" -maxdepth 1 -name '*.wav' | wc -l)
  rows=$(grep -c . "$corpus/metadata.csv" || true)
  echo "$clips wav files, $rows metadata rows"
  if [ "$clips" -lt 13100 ]; then
    echo "warning: LJSpeech-1.1 has 13100 clips, found $clips: a partial corpus trains a weaker model" >&2
  fi
fi

if run_stage 1; then
  echo "== stage 1: preprocess into $features"
  $diffwave preprocess "$corpus" "$features" --format ljspeech --config "$config" --jobs "$jobs" "${overrides[@]}"
fi

if run_stage 2; then
  echo "== stage 2: train into $out/train"
  $diffwave train --config "$config" --data "$features" --out "$out/train" "${overrides[@]}"
fi

if run_stage 3; then
  echo "== stage 3: vocode the test split into $out/vocoded"
  pointer="$out/train/checkpoints/latest"
  [ -f "$pointer" ] || { echo "run.sh: error: no checkpoint in $out/train/checkpoints (run stage 2 first)" >&2; exit 2; }
  mels=()
  while read -r id; do mels+=("$features/mel/$id.npy"); done < "$features/test.txt"
  [ ${#mels[@]} -gt 0 ] || { echo "run.sh: error: the test split in $features/test.txt is empty" >&2; exit 2; }
  mkdir -p "$out/vocoded"
  $diffwave vocode --checkpoint "$out/train/checkpoints/$(cat "$pointer")" "${mels[@]}" -o "$out/vocoded" --force
fi

if run_stage 4; then
  echo "== stage 4: evaluate $out/vocoded against the test split's references"
  $diffwave evaluate --features "$features" --generated "$out/vocoded" --split test -o "$out/summary.tsv"
fi
