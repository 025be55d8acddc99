#!/usr/bin/env bash
# make demo: prepare the default data (fetching package data into the cache if needed), run the
# forgetting study of configs/default.toml (dense, E=8 and E=64 iso-total MoE), write the
# report. Re-running continues a stopped study; the last line is the report's path.
# Usage: scripts/demo.sh MOELAB [START_EPOCH_SECONDS] [moelab study forgetting options, e.g.
# --experts 1,8]
set -euo pipefail
moelab=$1
start=${2:-$(date +%s)}
shift 2 || shift $#
cd "$(dirname "$0")/.."
"$moelab" data prepare --preset default --out data/default
"$moelab" study forgetting configs/default.toml "$@"
elapsed=$(($(date +%s) - start))
printf 'demo finished in %d min %02d s (install, build, data and training)\n' $((elapsed / 60)) $((elapsed % 60))
echo "$(pwd)/runs/default/report/summary.md"
