#!/usr/bin/env bash
# One command for a newcomer: set up .venv on first use, then run the API + worker on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/gradhealth ] || bash scripts/setup.sh
exec .venv/bin/gradhealth serve "$@"
