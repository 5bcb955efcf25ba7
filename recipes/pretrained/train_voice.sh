#!/usr/bin/env bash
# Train, or resume, the shipped voice (recipes/pretrained/voice.yaml) on the project's real speech: the Allison
# prompts and the LJSpeech clips, minus the 4 held-out clips bundled in recipes/demo/clips, and, when VOICES is
# given, the Italian and Russian voices recipes/corpora/asterisk_voices.py assembled there (Carlo, IvrvoiceRU;
# June, the unseen speaker, stays out). Run it again with the same WORK folder to resume from its newest
# checkpoint; ship a checkpoint with recipes/pretrained/ship.sh.
#   recipes/pretrained/train_voice.sh DATA WORK [VOICES] [--init-from CKPT] [key=value ...]
# DATA holds allison/ and ljspeech_mini/ (LJSpeech layout each), e.g. ../shared/data. A new WORK continues the
# shipped voice with `--init-from diffwave/pretrained/voice.safetensors` (fresh optimizer).
set -euo pipefail
data=${1:?usage: train_voice.sh DATA WORK [VOICES] [--init-from CKPT] [key=value ...]}
work=${2:?usage: train_voice.sh DATA WORK [VOICES] [--init-from CKPT] [key=value ...]}
shift 2
voices=""
if [ $# -gt 0 ] && [[ "$1" != *=* ]] && [[ "$1" != --* ]]; then voices=$1; shift; fi
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-$here/../../.venv/bin/python}
"$here/../corpora/link_corpus.sh" "$data" "$work/corpus" ${voices:+"$voices" carlo ivrvoiceru}
"$python" -m diffwave preprocess "$work/corpus" "$work/features" --format folder --jobs 2 --config "$here/voice.yaml"
exec "$python" -m diffwave train --data "$work/features" --out "$work/run" --config "$here/voice.yaml" "$@"
