#!/usr/bin/env bash
# Ship the newest weights of the voice run as the package's pretrained model (ship.py says what it writes),
# then run the tests that check what was shipped (sha256 against manifest and card, load + vocode, demo page):
#   recipes/pretrained/ship.sh WORK                      # the newest checkpoint of WORK/run
#   recipes/pretrained/ship.sh WORK path/to/step_N.pt    # a given checkpoint (any ship.py option may follow)
# WORK is the folder recipes/pretrained/train_voice.sh trained in (it holds run/ and features/).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
cd "$root"
work=${1:?usage: ship.sh WORK [CHECKPOINT] [ship.py options]}
shift
"$python" recipes/pretrained/ship.py --run-dir "$work/run" --features "$work/features" "$@"
"$python" -m pytest -q tests/test_pretrained.py tests/test_demo.py
