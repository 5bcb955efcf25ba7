#!/usr/bin/env bash
# The quickstart: the whole pipeline on a small corpus in minutes on a CPU.
# Preprocessing, training and vocoding land with later issues; until then this says so and exits 0.
set -euo pipefail
echo "diffwave quickstart: the pipeline (preprocess -> train -> vocode) is not in this version yet."
echo "What works today: 'make test', and 'python -m diffwave config --config tiny' to inspect a preset."
