#!/usr/bin/env bash
# Quick start, part 2: set up .venv if needed and run the test suite.
# Usage: scripts/test.sh [--quick] [pytest args]
#   scripts/test.sh              every test that needs no GPU (what CI runs)
#   scripts/test.sh --quick      the pure-code and CLI tests (-m quick): the inner loop
#   scripts/test.sh -k blend     pytest's own options pass through; -m gpu for the CUDA tests
# Tests run in FARM_TEST_WORKERS pytest-xdist processes (default 2; 0 runs them in this one),
# a test module at a time each, the longest modules first (tests/conftest.py).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# A cache kept with the checkout: tiny models are built and the RIFE weights fetched once.
export FARM_CACHE="${FARM_CACHE:-$ROOT/.cache/farm}"
cd "$ROOT"
args=()
for a in "$@"; do
  if [ "$a" = "--quick" ]; then args+=(-m quick); else args+=("$a"); fi
done
workers="${FARM_TEST_WORKERS:-2}"
case " ${args[*]-} " in
  *" -n "*|*" -n="*|*" --numprocesses"*|*" -p no:xdist "*) workers=0 ;;  # the caller chose
esac
if [ "$workers" != 0 ]; then
  # --dist loadfile: a module's tests share one worker (and its module-scoped Ray);
  # --no-loadscope-reorder: modules go out in collection order, which puts the longest first.
  args=(-n "$workers" --dist loadfile --no-loadscope-reorder "${args[@]}")
fi
exec python -m pytest "${args[@]}"
