#!/usr/bin/env bash
# Ship the newest weights of the speech prior's run as the package's default denoiser (ship.py says what it
# writes), then run the tests that check what was shipped:
#   recipes/denoiser/ship.sh WORK VOICES/june [CHECKPOINT] [ship.py options]
# WORK is recipes/denoiser/train_prior.sh's folder; VOICES that of recipes/corpora/asterisk_voices.py.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
cd "$root"
work=${1:?usage: ship.sh WORK VOICES/june [CHECKPOINT] [ship.py options]}
unseen=${2:?usage: ship.sh WORK VOICES/june [CHECKPOINT] [ship.py options]}
shift 2
"$python" recipes/denoiser/ship.py --run-dir "$work/run" --features "$work/features" --unseen "$unseen" "$@"
"$python" -m pytest -q tests/test_pretrained.py tests/test_denoise_prior.py
