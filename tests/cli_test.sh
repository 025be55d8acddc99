#!/usr/bin/env bash
# The moelab command: good input works; bad input fails with exit 1 and one line naming the
# file, field or flag, and leaves no partial output.
set -u
moelab=$1
src=$2
source "$(dirname "$0")/testlib.sh"

expect_ok() {
  local what=$1
  shift
  if "$@" >"$tmp/out" 2>"$tmp/err"; then ok; else bad "$what: $(cat "$tmp/err")"; fi
}

cat >"$tmp/tiny.json" <<'JSON'
{"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
 "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 32, "sliding_window": 4,
 "max_position_embeddings": 32}
JSON
cat >"$tmp/bench.json" <<'JSON'
{"batch_size": 2, "seq_len": 16, "model": {"vocab_size": 64, "hidden_size": 16,
 "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
 "ffn_type": "moe", "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 8,
 "max_position_embeddings": 32}}
JSON
sed 's/"num_key_value_heads": 1/"num_key_value_heads": 3/' "$tmp/tiny.json" >"$tmp/gqa.json"
sed 's/"head_dim": 8/"head_dim": 8, "colour": 1/' "$tmp/tiny.json" >"$tmp/unknown.json"
echo '{"vocab_size": 64,' >"$tmp/broken.json"
sed 's/"batch_size": 2/"batch_size": 2, "lr": 1/' "$tmp/bench.json" >"$tmp/bench_bad.json"
sed 's/"num_key_value_heads": 1/"num_key_value_heads": 3/' "$tmp/bench.json" >"$tmp/bench_gqa.json"

# good input
expect_ok "model info" "$moelab" model info "$src/bench/dense.json"
grep -q "params total  8404240" "$tmp/out" || bad "bench/dense.json total params"
expect_ok "model info --iso-moe" "$moelab" model info "$src/bench/dense.json" --iso-moe 8,2 --json
grep -q '"intermediate_size":128' "$tmp/out" || bad "iso-moe 8,2 gives expert hidden 128"
expect_ok "model info --out" "$moelab" model info "$tmp/tiny.json" --iso-moe 4,1 --out "$tmp/iso.json"
expect_ok "derived config loads" "$moelab" model info "$tmp/iso.json"
expect_ok "bench train" "$moelab" bench train --config "$tmp/bench.json" --steps 2 --warmup 1 --threads 2 --peak 100
grep -q '"tokens_per_s"' "$tmp/out" || bad "bench train prints tokens_per_s"
expect_ok "model dump" "$moelab" model dump "$tmp/tiny.json" --out "$tmp/dump.safetensors"
[ -s "$tmp/dump.safetensors" ] && [ ! -e "$tmp/dump.safetensors.tmp" ] && ok || bad "dump file"

expect_ok "bench eval" "$moelab" bench eval --config "$tmp/bench.json" --samples 8 --batch 4 --prompt 6 --new 5 --threads 2
grep -q '"generated_tokens_per_s"' "$tmp/out" || bad "bench eval prints generated_tokens_per_s"

# bad input
expect_error "heads not divisible" "gqa.json: 'num_attention_heads' \(2\) is not divisible by 'num_key_value_heads' \(3\)" \
  "$moelab" model info "$tmp/gqa.json"
expect_error "unknown key" "unknown.json: 'colour' is not a known key" "$moelab" model info "$tmp/unknown.json"
expect_error "broken JSON" "broken.json: invalid JSON" "$moelab" model info "$tmp/broken.json"
expect_error "missing file" "nope.json: cannot open" "$moelab" model info "$tmp/nope.json"
expect_error "bad --iso-moe" "--iso-moe 'x': expected E,K" "$moelab" model info "$tmp/tiny.json" --iso-moe x
expect_error "iso-moe not divisible" "intermediate_size 32 is not divisible by 3 experts" \
  "$moelab" model info "$tmp/tiny.json" --iso-moe 3,1
expect_error "bench unknown key" "bench_bad.json: 'lr' is not a known key" \
  "$moelab" bench train --config "$tmp/bench_bad.json"
expect_error "bench model error" "bench_gqa.json: model: 'num_attention_heads'" \
  "$moelab" bench train --config "$tmp/bench_gqa.json"
expect_error "unwritable dump" "cannot write" "$moelab" model dump "$tmp/tiny.json" --out "$tmp/no/such/dir/x.safetensors"
[ ! -e "$tmp/no" ] && ok || bad "unwritable dump left something behind"
expect_error "bad dtype" "--dtype must be f32 or f64" "$moelab" model dump "$tmp/tiny.json" --out "$tmp/x" --dtype f16
[ ! -e "$tmp/x" ] && ok || bad "bad dtype left a file"

# data
mkdir -p "$tmp/corpus"
for i in 1 2 3; do printf 'Document %s says hello.\nSecond line of %s.\n' $i $i >"$tmp/corpus/d$i.txt"; done
printf '{"text": "a record"}\nnot json\n' >"$tmp/corpus/r.jsonl"
printf 'caf\xe9 in Latin-1, one byte that is not UTF-8.\n' >"$tmp/corpus/latin1.txt"
cat >"$tmp/data.json" <<JSON
{"tokenizer": {"kind": "tiktoken", "encoding": "r50k_base"},
 "sources": {"docs": {"paths": ["corpus"]}},
 "subsets": {"A": ["docs"]}, "validation_fraction": 0.2}
JSON
expect_ok "data prepare" "$moelab" data prepare "$tmp/data.json" --out "$tmp/data"
grep -q '"malformed": 1' "$tmp/data/manifest.json" || bad "malformed JSONL line counted in the manifest"
grep -q '"invalid_utf8_bytes": 1' "$tmp/data/manifest.json" || bad "invalid UTF-8 byte counted in the manifest"
grep -q "1 invalid UTF-8 bytes" "$tmp/err" || bad "prepare reports the invalid UTF-8 byte"
grep -q 'invalid UTF-8: .*latin1.txt: 1 bytes not valid UTF-8 replaced by U+FFFD, the first at byte 3' "$tmp/err" ||
  bad "prepare names the file with the invalid byte"
expect_ok "data verify" "$moelab" data verify "$tmp/data"
grep -q "headers, sizes, checksums and token ids intact" "$tmp/out" || bad "verify prints a summary"
expect_ok "data inspect" "$moelab" data inspect "$tmp/data"
grep -q "subset A:" "$tmp/out" || bad "inspect shows subset A"
expect_error "prepare again" "already holds a prepared data set" "$moelab" data prepare "$tmp/data.json" --out "$tmp/data"
expect_error "no spec" "give a spec file or --preset" "$moelab" data prepare --out "$tmp/d2"
expect_error "missing spec" "nope.json: cannot open" "$moelab" data prepare "$tmp/nope.json" --out "$tmp/d2"
expect_error "unknown preset" "--preset tiny: no such preset" "$moelab" data prepare --preset tiny --out "$tmp/d2"
expect_error "inspect non-data" "no manifest.json" "$moelab" data inspect "$tmp/corpus"
sed 's/"docs"]}/"nope"]}/' "$tmp/data.json" >"$tmp/bad_subset.json"
expect_error "unknown source" "'subsets.A\[0\]' names an unknown source 'nope'" "$moelab" data prepare "$tmp/bad_subset.json" --out "$tmp/d3"
[ ! -e "$tmp/d3" ] && ok || bad "a refused spec created its output directory"

# damaged data: one line naming the file, exit 1
cp -r "$tmp/data" "$tmp/flip"
shard=$(ls "$tmp/flip"/*.tok | head -1)
printf '\xff' | dd of="$shard" bs=1 seek=70 conv=notrunc status=none
expect_error "verify a flipped byte" "$shard: checksum mismatch" "$moelab" data verify "$tmp/flip"
expect_error "inspect a flipped byte" "$shard: checksum mismatch" "$moelab" data inspect "$tmp/flip"
expect_error "verify a non-directory" "nope: not a directory" "$moelab" data verify "$tmp/nope"
mkdir -p "$tmp/gz" "$tmp/bin"
seq 1 100000 | gzip >"$tmp/whole.gz"
head -c 20000 "$tmp/whole.gz" >"$tmp/gz/cut.txt.gz"
sed "s|\"corpus\"|\"gz\"|" "$tmp/data.json" >"$tmp/gz.json"
expect_error "truncated gzip source" "cut.txt.gz: truncated gzip data" "$moelab" data prepare "$tmp/gz.json" --out "$tmp/d4"
head -c 4096 /dev/urandom >"$tmp/bin/random.txt"
sed "s|\"corpus\"|\"bin\"|" "$tmp/data.json" >"$tmp/bin.json"
expect_error "random bytes as text" "random.txt: not (a text file|UTF-8 text)" "$moelab" data prepare "$tmp/bin.json" --out "$tmp/d5"
sed 's/"paths": \["corpus"\]/"paths": "corpus"/' "$tmp/data.json" >"$tmp/paths_type.json"
expect_error "paths not a list" "'sources.docs.paths' must be a non-empty list" "$moelab" data prepare "$tmp/paths_type.json" --out "$tmp/d6"
sed 's/"A": \["docs"\]/"A": [{"src": "docs"}]/' "$tmp/data.json" >"$tmp/part_key.json"
expect_error "unknown subset key" "'subsets.A\[0\].src' is not a known key" "$moelab" data prepare "$tmp/part_key.json" --out "$tmp/d7"
echo '[1, 2]' >"$tmp/array.json"
expect_error "spec not an object" "array.json: must be an object" "$moelab" data prepare "$tmp/array.json" --out "$tmp/d8"

finish "cli test"
