#!/usr/bin/env bash
# Link the project's real speech into one flat corpus folder (the layout `diffwave preprocess --format folder`
# reads): Allison's prompts as allison_*, the LJSpeech clips minus the held-out demo clips (recipes/demo/clips),
# and, when VOICES is given, the named speakers of recipes/corpora/asterisk_voices.py.
#   recipes/corpora/link_corpus.sh DATA CORPUS [VOICES SPEAKER...]
set -euo pipefail
data=${1:?usage: link_corpus.sh DATA CORPUS [VOICES SPEAKER...]}
corpus=${2:?usage: link_corpus.sh DATA CORPUS [VOICES SPEAKER...]}
voices=${3:-}
shift $(( $# < 3 ? $# : 3 ))
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$corpus"
for wav in "$data"/allison/wavs/*.wav; do ln -sf "$(realpath "$wav")" "$corpus/allison_$(basename "$wav")"; done
for wav in "$data"/ljspeech_mini/wavs/*.wav; do
  id=$(basename "$wav" .wav)
  [ -e "$here/../demo/clips/$id.flac" ] || ln -sf "$(realpath "$wav")" "$corpus/$id.wav"
done
for speaker in "$@"; do
  for wav in "$voices/$speaker"/wavs/*.wav; do ln -sf "$(realpath "$wav")" "$corpus/$(basename "$wav")"; done
done
