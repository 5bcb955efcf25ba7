#!/usr/bin/env bash
# The quickstart: corpus -> features -> a small trained DiffWave -> vocoded held-out clips -> report.
#
#   recipes/quickstart/run.sh                  # `make demo` runs this after setting up .venv
#   OUT=exp/quickstart STEPS=15000 CORPUS=/path/to/LJSpeech-layout CONFIG=tiny recipes/quickstart/run.sh
#
# OUT (default exp/quickstart) is rebuilt from scratch. STEPS sets the training length (default 15000: about
# 4 minutes for `tiny` on 2 cores, longer for `base` on a GPU); CORPUS uses a real LJSpeech-layout corpus
# instead of the built-in synthetic one.
# CONFIG defaults to `tiny` (8 kHz, 20 mels) on a CPU and to `base` (22.05 kHz, 80 mels) when PyTorch sees
# a GPU; any preset or YAML file may be given.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-exp/quickstart}
steps=${STEPS:-15000}
if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
diffwave="$python -m diffwave"
if [ -z "${CONFIG:-}" ]; then
  if $python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then config=base; else config=tiny; fi
else
  config=$CONFIG
fi
rate=$($python -c "import sys; from diffwave.config import load_config; print(load_config(sys.argv[1]).audio.sample_rate)" "$config")

rm -rf "$out"
mkdir -p "$out"
corpus=${CORPUS:-$out/corpus}
if [ -z "${CORPUS:-}" ]; then
  echo "== built-in synthetic speech-like corpus"
  $diffwave synth-corpus "$corpus" --clips 40 --seconds 1.5 --sample-rate "$rate"
fi
echo "== preprocess ($config config, $rate Hz)"
$diffwave preprocess "$corpus" "$out/features" --config "$config" --jobs 2 data.valid_fraction=0.05 data.test_fraction=0.1
echo "== train $steps steps"
log_every=$(( steps < 100 ? steps : 100 ))
$diffwave train --config "$config" --data "$out/features" --out "$out/train" --max-steps "$steps" \
  train.log_every=$log_every train.valid_every=500 train.sample_every=1000 train.save_every=1000 train.ema_decay=0.995
echo "== vocode the test split"
mkdir -p "$out/vocoded"
mels=()
while read -r id; do mels+=("$out/features/mel/$id.npy"); done < "$out/features/test.txt"
$diffwave vocode --checkpoint "$out/train/checkpoints/$(cat "$out/train/checkpoints/latest")" "${mels[@]}" \
  -o "$out/vocoded" | tee "$out/vocode.log"
echo "== evaluate"
$diffwave evaluate --features "$out/features" --generated "$out/vocoded" -o "$out/summary.tsv"
echo "== report"
$python "$root/recipes/quickstart/report.py" "$out"
