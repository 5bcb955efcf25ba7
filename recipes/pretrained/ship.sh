#!/usr/bin/env bash
# Ship the newest weights of the voice run as the package's pretrained model (ship.py says what it writes),
# then run the tests that check what was shipped (sha256 against manifest and card, load + vocode, demo page):
#   recipes/pretrained/ship.sh                      # the newest checkpoint of /work/voice/run
#   recipes/pretrained/ship.sh path/to/step_N.pt    # a given checkpoint (any ship.py option may follow)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
cd "$root"
"$python" recipes/pretrained/ship.py "$@"
"$python" -m pytest -q tests/test_pretrained.py tests/test_demo.py
