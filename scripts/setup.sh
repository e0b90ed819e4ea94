#!/usr/bin/env bash
# Create .venv with the CPU build of torch first (so pip never fetches a CUDA build), then the project.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

# The model sandbox (workers/sandbox_policy.py) runs uploaded models under bubblewrap.
if ! command -v bwrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
      || echo "warning: could not install bubblewrap; the service will refuse to run models" >&2
  else
    echo "warning: bubblewrap (bwrap) is missing: install it (e.g. sudo apt-get install bubblewrap);" \
      "without it the service refuses to run uploaded models" >&2
  fi
fi
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
# hf: transformers + accelerate (tests/test_hf_zoo.py, the Trainer callback); lightning: the Lightning callback;
# tensorboard: `gradhealth import-tensorboard`. None of them replaces the torch installed above.
"$VENV/bin/python" -m pip install --quiet -e ".[dev,hf,lightning,tensorboard]"
echo "ready: $VENV/bin/gradhealth --help"
