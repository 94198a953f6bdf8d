#!/usr/bin/env bash
# Quick start, part 1: set up .venv if needed and render the demo job (tiny model, CPU, no network).
# Usage: scripts/demo.sh [OUT.mp4] [farm render options, e.g. --workers 2]
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
out="${1:-$ROOT/out/demo.mp4}"
shift || true
mkdir -p "$(dirname "$out")"
farm render "$ROOT/examples/demo.yaml" -o "$out" "$@"
