#!/usr/bin/env bash
# Ship the newest weights of the voice run as the package's pretrained model (see ship.py for what it does):
#   recipes/pretrained/ship.sh                      # the newest checkpoint of /work/voice/run
#   recipes/pretrained/ship.sh path/to/step_N.pt    # a given checkpoint
# then: .venv/bin/python -m pytest -q tests/test_pretrained.py tests/test_demo.py
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
cd "$root"
exec "$python" recipes/pretrained/ship.py "$@"
