#!/usr/bin/env bash
# Render the demo and every tiny recipe (examples/tiny/) with a fixed pool shape and no window
# store, and print each mp4's sha256. Run it on two commits to show a change kept the bytes:
#   scripts/example_hashes.sh > before.txt; git checkout NEW; scripts/example_hashes.sh | diff before.txt -
# Usage: scripts/example_hashes.sh [farm render options]   (default: --workers 2 --threads 1)
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export FARM_CACHE="${FARM_CACHE:-$ROOT/.cache/farm}"
opts=("$@")
[ ${#opts[@]} -gt 0 ] || opts=(--workers 2 --threads 1)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$ROOT/examples/tiny" "$work/tiny"
render() {  # name spec-file output
  (cd "$work/tiny" && farm render "$2" -o "$work/$1.mp4" --no-store --quiet "${opts[@]}" >/dev/null) \
    || { echo "$1: render failed" >&2; exit 1; }
  echo "$(sha256sum "$work/$1.mp4" | cut -d' ' -f1)  $1.mp4"
}
render demo "$ROOT/examples/demo.yaml"
for spec in "$work"/tiny/*.yaml; do
  name="$(basename "$spec" .yaml)"
  render "$name" "$spec"
done
