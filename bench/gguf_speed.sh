#!/usr/bin/env bash
# Greedy generation speed of one model in moelab and in llama.cpp (node-llama-cpp 3.21.1's
# prebuilt CPU library, make deps installs it), at the same thread count, at batch 1 and with 8
# sequences at once, in one command:
#   bench/gguf_speed.sh CHECKPOINT DATA [THREADS=1] [RUNS=5] [ROUNDS=16] [PROMPT=16] [NEW=64] [BATCHES="1 8"]
# Exports the checkpoint as GGUF f32 and f16, then alternates RUNS times, for each batch size B:
# moelab bench eval (B sequences decoded together, ROUNDS x B sequences of PROMPT prompt tokens
# and NEW greedy tokens), llama.cpp on the f32 file and on the f16 file (bench/gguf_speed.mjs:
# a context of B sequences, B samples at once, the same sizes). Prints every run, a table of the
# medians of generated tokens/s (prompt processing included, as moelab bench eval counts) and
# the same as one JSON line (last line). moelab computes in f32 whatever the file's dtype.
set -euo pipefail
ck=$1 data=$2 threads=${3:-1} runs=${4:-5} rounds=${5:-16} prompt=${6:-16} new=${7:-64}
batches=${8:-1 8}
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
for b in $batches; do : >"$work/moelab.$b" && : >"$work/f32.$b" && : >"$work/f16.$b"; done
for r in $(seq 1 "$runs"); do
  for b in $batches; do
    n=$((rounds * b))
    m=$("$moelab" bench eval --checkpoint "$ck" --samples "$n" --slots "$b" --prompt-len "$prompt" \
      --max-new "$new" --threads "$threads" 2>/dev/null | num)
    f=$(node "$here/gguf_speed.mjs" "$nlc" "$work/m.f32.gguf" "$threads" "$n" "$prompt" "$new" "$b" | num)
    h=$(node "$here/gguf_speed.mjs" "$nlc" "$work/m.f16.gguf" "$threads" "$n" "$prompt" "$new" "$b" | num)
    echo "$m" >>"$work/moelab.$b" && echo "$f" >>"$work/f32.$b" && echo "$h" >>"$work/f16.$b"
    printf 'run %d, batch %d: moelab %.1f  llama.cpp f32 %.1f  llama.cpp f16 %.1f tokens/s\n' "$r" "$b" "$m" "$f" "$h"
  done
done
median() { sort -g "$1" | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
echo "model $ck, $threads thread(s), $rounds rounds of B sequences of $prompt prompt + $new greedy tokens, $runs runs alternating"
echo "median generated tokens/s:"
printf '| batch | moelab (f32) | llama.cpp f32 | llama.cpp f16 | moelab / llama.cpp f32 | moelab / llama.cpp f16 |\n|---|---|---|---|---|---|\n'
json="{\"checkpoint\": \"$ck\", \"threads\": $threads, \"runs\": $runs, \"rounds\": $rounds, \"prompt\": $prompt, \"new\": $new, \"batches\": ["
sep=""
for b in $batches; do
  m=$(median "$work/moelab.$b") f=$(median "$work/f32.$b") h=$(median "$work/f16.$b")
  printf '| %d | %.1f | %.1f | %.1f | %.2f | %.2f |\n' "$b" "$m" "$f" "$h" "$(echo "$m / $f" | bc -l)" "$(echo "$m / $h" | bc -l)"
  json="$json$sep{\"batch\": $b, \"moelab_f32\": $m, \"llama_cpp_f32\": $f, \"llama_cpp_f16\": $h}"
  sep=", "
done
echo "GGUF sizes: f32 $(stat -c %s "$work/m.f32.gguf") bytes, f16 $(stat -c %s "$work/m.f16.gguf") bytes"
echo "$json]}"
