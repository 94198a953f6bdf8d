#!/usr/bin/env bash
# Quick start, part 2: set up .venv if needed and run the test suite.
# Usage: scripts/test.sh [pytest args]    e.g. scripts/test.sh -m gpu    or    scripts/test.sh -k blend
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# A cache kept with the checkout: tiny models are built and the RIFE weights fetched once.
export FARM_CACHE="${FARM_CACHE:-$ROOT/.cache/farm}"
cd "$ROOT"
exec python -m pytest "$@"
