#!/usr/bin/env bash
# Batch-1 greedy generation speed of one model in moelab and in llama.cpp (node-llama-cpp 3.21.1's
# prebuilt CPU library, make deps installs it), at the same thread count, in one command:
#   bench/gguf_speed.sh CHECKPOINT DATA [THREADS=1] [RUNS=5] [SAMPLES=16] [PROMPT=16] [NEW=64]
# Exports the checkpoint as GGUF f32 and f16, then alternates RUNS times: moelab bench eval
# (SAMPLES sequences, batch 1, PROMPT prompt tokens, NEW greedy tokens), llama.cpp on the f32
# file, llama.cpp on the f16 file (bench/gguf_speed.mjs, the same sizes). Prints every run and
# the medians of generated tokens/s (prompt processing included, as moelab bench eval counts),
# and the files' sizes. moelab computes in f32 whatever the file's dtype.
set -euo pipefail
ck=$1 data=$2 threads=${3:-1} runs=${4:-5} samples=${5:-16} prompt=${6:-16} new=${7:-64}
here=$(cd "$(dirname "$0")" && pwd)
moelab=${MOELAB:-$here/../build/moelab}
cache=${MOELAB_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/moelab}
nlc="$cache/npm/node-llama-cpp@3.21.1"
[ -d "$nlc/node_modules/node-llama-cpp" ] || { echo "gguf_speed: node-llama-cpp is not in $nlc (make deps)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for dt in f32 f16; do
  "$moelab" export gguf "$ck" --out "$work/m.$dt.gguf" --dtype $dt --data "$data" >/dev/null
done
num() { grep -o "\"generated_tokens_per_s\":[0-9.]*" | cut -d: -f2; }
: >"$work/moelab" && : >"$work/f32" && : >"$work/f16"
for r in $(seq 1 "$runs"); do
  m=$("$moelab" bench eval --checkpoint "$ck" --samples "$samples" --slots 1 --prompt-len "$prompt" \
    --max-new "$new" --threads "$threads" 2>/dev/null | num)
  a=$(node "$here/gguf_speed.mjs" "$nlc" "$work/m.f32.gguf" "$threads" "$samples" "$prompt" "$new" | num)
  b=$(node "$here/gguf_speed.mjs" "$nlc" "$work/m.f16.gguf" "$threads" "$samples" "$prompt" "$new" | num)
  echo "$m" >>"$work/moelab" && echo "$a" >>"$work/f32" && echo "$b" >>"$work/f16"
  printf 'run %d: moelab %.1f  llama.cpp f32 %.1f  llama.cpp f16 %.1f tokens/s\n' "$r" "$m" "$a" "$b"
done
median() { sort -g "$1" | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
echo "model $ck, $threads thread(s), batch 1, $samples samples of $prompt prompt + $new greedy tokens, $runs runs alternating"
printf 'median generated tokens/s: moelab (f32) %.1f | llama.cpp f32 %.1f | llama.cpp f16 %.1f\n' \
  "$(median "$work/moelab")" "$(median "$work/f32")" "$(median "$work/f16")"
echo "GGUF sizes: f32 $(stat -c %s "$work/m.f32.gguf") bytes, f16 $(stat -c %s "$work/m.f16.gguf") bytes"
