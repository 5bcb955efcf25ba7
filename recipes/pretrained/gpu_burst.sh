#!/usr/bin/env bash
# A short GPU burst for the voice: continue training from the committed weights on a CUDA machine for a fixed
# wall-clock budget, then export the EMA weights, ready for recipes/pretrained/ship.sh.
#   recipes/pretrained/gpu_burst.sh DATA OUT [key=value ...]
# DATA holds allison/ and ljspeech_mini/ (e.g. ../shared/data). OUT receives corpus/, features/, run/ (checkpoints,
# TensorBoard logs), train.log and voice_ema.safetensors. Environment (defaults for a 15-minute device slot):
#   TRAIN_SECONDS=480   wall-clock budget of the training itself; SIGTERM then makes the trainer finish its step,
#                       write a checkpoint and stop (preprocessing, start-up and export come on top: ~1-2 min)
#   CONFIG=recipes/pretrained/voice.yaml   INIT_FROM=diffwave/pretrained/voice.safetensors ("" for fresh weights)
#   DEVICE=cuda   PRECISION=bf16   PYTHON=python3 (diffwave is installed into it with pip when missing)
#   VOICES=DIR    the Carlo and IvrvoiceRU voices recipes/corpora/asterisk_voices.py assembled in DIR, trained on
#                 too, as the shipped voice is since step 14052 (unset: Allison and LJSpeech only)
# The batch is larger than the CPU recipe's (train.batch_size=32, data.crop_frames=62: a GPU is idle at 8 x 24);
# any key=value given after OUT overrides these, e.g. train.learning_rate=5e-4.
set -euo pipefail
data=${1:?usage: gpu_burst.sh DATA OUT [key=value ...]}
out=${2:?usage: gpu_burst.sh DATA OUT [key=value ...]}
shift 2
root=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-python3}
config=${CONFIG:-$root/recipes/pretrained/voice.yaml}
init_from=${INIT_FROM-$root/diffwave/pretrained/voice.safetensors}
"$python" -c "import diffwave" 2>/dev/null || "$python" -m pip install --quiet -e "$root"
mkdir -p "$out"
"$root/recipes/corpora/link_corpus.sh" "$data" "$out/corpus" ${VOICES:+"$VOICES" carlo ivrvoiceru}
[ -d "$out/features" ] || "$python" -m diffwave preprocess "$out/corpus" "$out/features" --format folder \
  --jobs "$(nproc)" --config "$config"
overrides=("train.precision=${PRECISION:-bf16}" train.batch_size=32 data.crop_frames=62 "$@")
status=0
timeout --signal=TERM --kill-after=120 "${TRAIN_SECONDS:-480}" "$python" -m diffwave train --data "$out/features" \
  --out "$out/run" --config "$config" --device "${DEVICE:-cuda}" ${init_from:+--init-from "$init_from"} \
  "${overrides[@]}" 2>&1 | tee "$out/train.log" || status=$?
# timeout's 124 is the budget running out (the trainer saved on SIGTERM); anything else is a failure.
if [ "$status" -ne 0 ] && [ "$status" -ne 124 ]; then echo "gpu_burst: training failed ($status)" >&2; exit "$status"; fi
latest="$out/run/checkpoints/$(cat "$out/run/checkpoints/latest")"
"$python" -m diffwave export "$latest" "$out/voice_ema.safetensors" --force
echo "gpu_burst: EMA weights in $out/voice_ema.safetensors; ship with recipes/pretrained/ship.sh $out" \
  "--continues STEPS:CPU_HOURS (those of the weights it started from, in their card) --cpu-hours H"
