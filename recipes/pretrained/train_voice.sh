#!/usr/bin/env bash
# Train, or resume, the shipped voice (recipes/pretrained/voice.yaml) on the project's real speech: the Allison
# prompts and the LJSpeech clips, minus the 4 held-out clips bundled in recipes/demo/clips. Run it again with the
# same WORK folder to resume from its newest checkpoint; ship a checkpoint with recipes/pretrained/ship.sh.
#   recipes/pretrained/train_voice.sh DATA WORK [key=value ...]
# DATA holds allison/ and ljspeech_mini/ (LJSpeech layout each), e.g. ../shared/data.
set -euo pipefail
data=${1:?usage: train_voice.sh DATA WORK [key=value ...]}
work=${2:?usage: train_voice.sh DATA WORK [key=value ...]}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-$here/../../.venv/bin/python}
"$here/../corpora/link_corpus.sh" "$data" "$work/corpus"
"$python" -m diffwave preprocess "$work/corpus" "$work/features" --format folder --jobs 2 --config "$here/voice.yaml"
exec "$python" -m diffwave train --data "$work/features" --out "$work/run" --config "$here/voice.yaml" "$@"
