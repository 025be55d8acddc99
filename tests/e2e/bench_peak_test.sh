#!/usr/bin/env bash
# The peaks behind the reported utilisation: `bench peak` prints the fp32 FMA peak and the bf16
# dot-product peak (null exactly where the CPU lacks AVX512-BF16), and `bench train --bf16`
# computes its MFU against the bf16 peak where there is one (the fp32-peak ratio in its own
# field), against the fp32 peak where there is none. No timing is asserted: only which peak each
# number is divided by.
set -u
moelab=$1
source "$(dirname "$0")/testlib.sh"

# field NAME FILE: the value of "NAME" in the one-line JSON of FILE (a number, null, or a string
# with its quotes).
field() {
  sed -n "s/.*\"$1\": *\(\"[^\"]*\"\|[^,}]*\).*/\1/p" "$2"
}
has_bf16=0
grep -qw avx512_bf16 /proc/cpuinfo && has_bf16=1

if "$moelab" bench peak --threads 1 >"$tmp/peak" 2>"$tmp/err"; then ok; else bad "bench peak: $(cat "$tmp/err")"; fi
fp32=$(field fma_peak_gflops "$tmp/peak")
bf16=$(field bf16_peak_gflops "$tmp/peak")
awk -v x="$fp32" 'BEGIN { exit !(x + 0 > 0) }' && ok || bad "fma_peak_gflops '$fp32' is not > 0: $(cat "$tmp/peak")"
if [ $has_bf16 -eq 1 ]; then
  awk -v x="$bf16" 'BEGIN { exit !(x + 0 > 0) }' && ok || bad "bf16_peak_gflops '$bf16' on an AVX512-BF16 CPU: $(cat "$tmp/peak")"
  [ "$(field bf16_isa "$tmp/peak")" = '"avx512_bf16"' ] && ok || bad "bf16_isa: $(cat "$tmp/peak")"
else
  [ "$bf16" = null ] && ok || bad "bf16_peak_gflops '$bf16' without AVX512-BF16: $(cat "$tmp/peak")"
fi

cat >"$tmp/bench.json" <<'JSON'
{"batch_size": 2, "seq_len": 16, "model": {"vocab_size": 64, "hidden_size": 16,
 "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
 "ffn_type": "moe", "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 8,
 "max_position_embeddings": 32}}
JSON

# close A B: A and B agree to 1% (the JSON rounds MFU to 4 decimals and peaks to 1).
close() {
  awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b + 0 > 0 && d <= 0.01 * b + 1e-4) }'
}
# ratio FILE PEAK: the run's GFLOP/s over PEAK, from tokens/s and FLOPs per token (its "gflops"
# field is rounded to 0.1, too coarse for a model this small).
ratio() {
  awk -v t="$(field tokens_per_s "$1")" -v f="$(field flops_per_token "$1")" -v p="$2" 'BEGIN { print t * f / 1e9 / p }'
}

# fp32: MFU against the given fp32 peak, no bf16 fields.
if "$moelab" bench train --config "$tmp/bench.json" --steps 1 --warmup 0 --threads 1 --peak 100 >"$tmp/f32" 2>"$tmp/err"; then ok; else bad "bench train: $(cat "$tmp/err")"; fi
[ "$(field peak_precision "$tmp/f32")" = '"fp32"' ] && ok || bad "fp32 run: peak_precision: $(cat "$tmp/f32")"
close "$(field mfu "$tmp/f32")" "$(ratio "$tmp/f32" 100)" && ok ||
  bad "fp32 run: mfu is not gflops / --peak: $(cat "$tmp/f32")"
grep -q '"mfu_fp32_peak"' "$tmp/f32" && bad "fp32 run has mfu_fp32_peak: $(cat "$tmp/f32")" || ok

# bf16: the bf16 peak measured (1 thread), the fp32 one given.
if "$moelab" bench train --config "$tmp/bench.json" --steps 1 --warmup 0 --threads 1 --peak 100 --bf16 >"$tmp/b16" 2>"$tmp/err"; then
  ok
else
  bad "bench train --bf16: $(cat "$tmp/err")"
fi
peak=$(field peak_gflops "$tmp/b16")
close "$(field mfu_fp32_peak "$tmp/b16")" "$(ratio "$tmp/b16" 100)" && ok ||
  bad "bf16 run: mfu_fp32_peak is not gflops / --peak: $(cat "$tmp/b16")"
close "$(field mfu "$tmp/b16")" "$(ratio "$tmp/b16" "$peak")" && ok ||
  bad "bf16 run: mfu is not gflops / peak_gflops: $(cat "$tmp/b16")"
if [ $has_bf16 -eq 1 ]; then
  [ "$(field peak_precision "$tmp/b16")" = '"bf16"' ] && ok || bad "bf16 run: peak_precision: $(cat "$tmp/b16")"
  [ "$(field bf16_peak_gflops "$tmp/b16")" = "$peak" ] && ok || bad "bf16 run: peak_gflops is not the bf16 peak: $(cat "$tmp/b16")"
  awk -v p="$peak" 'BEGIN { exit !(p + 0 > 0 && p + 0 != 100) }' && ok || bad "bf16 run: the bf16 peak was not measured: $(cat "$tmp/b16")"
else
  [ "$(field peak_precision "$tmp/b16")" = '"fp32"' ] && ok || bad "bf16 run without AVX512-BF16: peak_precision: $(cat "$tmp/b16")"
  [ "$(field bf16_peak_gflops "$tmp/b16")" = null ] && ok || bad "bf16 run without AVX512-BF16: bf16_peak_gflops: $(cat "$tmp/b16")"
fi

# a given bf16 peak is the denominator
if "$moelab" bench train --config "$tmp/bench.json" --steps 1 --warmup 0 --threads 1 --peak 100 --bf16-peak 200 --bf16 >"$tmp/b16g" 2>"$tmp/err"; then ok; else bad "bench train --bf16-peak: $(cat "$tmp/err")"; fi
close "$(field mfu "$tmp/b16g")" "$(ratio "$tmp/b16g" 200)" && ok ||
  bad "bf16 run: mfu is not gflops / --bf16-peak: $(cat "$tmp/b16g")"

expect_error "negative peak" "--peak and --bf16-peak must be >= 0" \
  "$moelab" bench train --config "$tmp/bench.json" --steps 1 --bf16-peak -1

finish bench_peak
