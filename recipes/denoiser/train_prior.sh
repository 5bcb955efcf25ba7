#!/usr/bin/env bash
# Train, or resume, the shipped speech prior for denoising (recipes/denoiser/prior.yaml) on the project's real
# speech: Allison, the LJSpeech clips minus the 4 held-out demo clips, and the voices that
# recipes/corpora/asterisk_voices.py assembled into VOICES (Carlo and IvrvoiceRU; June stays out: she is the
# unseen speaker of benchmarks/denoise_eval.py). Run it again with the same WORK folder to resume.
#   recipes/denoiser/train_prior.sh DATA WORK [VOICES] [key=value ...]
# DATA holds allison/ and ljspeech_mini/ (LJSpeech layout each), e.g. ../shared/data.
set -euo pipefail
data=${1:?usage: train_prior.sh DATA WORK [VOICES] [key=value ...]}
work=${2:?usage: train_prior.sh DATA WORK [VOICES] [key=value ...]}
shift 2
voices=""
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then voices=$1; shift; fi
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-$here/../../.venv/bin/python}
"$here/../corpora/link_corpus.sh" "$data" "$work/corpus" ${voices:+"$voices" carlo ivrvoiceru}
[ -d "$work/features" ] || "$python" -m diffwave preprocess "$work/corpus" "$work/features" --format folder --jobs 2 \
  --config "$here/prior.yaml"
exec "$python" -m diffwave train --data "$work/features" --out "$work/run" --config "$here/prior.yaml" "$@"
