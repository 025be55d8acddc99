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

# export: LoRA adapters (rank 4, alpha 6) trained for a few steps over a frozen tiny MoE model,
# then merged into their weights: a plain checkpoint (no "lora", no adapter tensors) that `moelab
# eval` scores as the adapted one, while the base alone scores otherwise
if ! "$moelab" export --help 2>/dev/null | grep -q -- --merge-lora; then
  bad "moelab export is not a command (src/cli/main.cpp must call command_export)"
  finish "cli test"
  exit
fi
mkdir -p "$tmp/lx" && cd "$tmp/lx" || exit 1
verses_data "$moelab" 20 12 320 17
printf 'David\tPER\nking\tMISC\n' >ents.tsv
expect_ok "entities build" "$moelab" entities build --data data --entities ents.tsv --out ev.jsonl \
  --top 100 --bottom 100 --prompt 8 --target 8
tiny_config run.log_every= "${tiny_moe[@]}" model.sliding_window= \
  'model.lora={rank = 4, alpha = 6, targets = ["self_attn\\.(q|v|o)_proj", "mlp\\.experts"]}' \
  'train.freeze=["^(?!.*lora_)"]' schedule.max_lr=2e-2 schedule.min_lr=2e-2 schedule.warmup_steps=1 \
  schedule.decay_steps=1 phases.steps=8 >exp.toml
expect_ok "train with LoRA" "$moelab" train exp.toml
ck=$(ls -d run/step_* | tail -1)
expect_ok "export --merge-lora" "$moelab" export "$ck" --merge-lora --out merged
grep -Eq "^exported $ck -> merged: 10 LoRA adapters \(rank 4, scale 1.5\) merged" "$tmp/out" && ok ||
  bad "export report: $(cat "$tmp/out")"
expect_ok "export as is" "$moelab" export "$ck" --out copy/
mkdir base && cp "$ck"/* base/ && /usr/bin/python3 - base/config.json <<'PY' || bad "base config"
import json, sys
c = json.load(open(sys.argv[1])); del c["lora"]; json.dump(c, open(sys.argv[1], "w"))
PY
for m in "$ck" merged copy base; do
  expect_ok "eval $m" "$moelab" eval "$m" --evalset ev.jsonl --data data --out "ev_$(basename "$m").json"
done
/usr/bin/python3 - "$ck" merged <<'PY' && ok || bad "the merged checkpoint is a plain one"
import json, os, struct, sys
ck, out = sys.argv[1], sys.argv[2]
assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "trainer_state.json"], os.listdir(out)
assert "lora" not in json.load(open(f"{out}/config.json"))
def names(path):
    b = open(path, "rb").read()
    return set(json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])) - {"__metadata__"}
lora = {n for n in names(f"{ck}/model.safetensors") if ".lora_" in n}
assert len(lora) == 20 and names(f"{out}/model.safetensors") == names(f"{ck}/model.safetensors") - lora
s = json.load(open(f"{out}/trainer_state.json"))
assert s["merged_lora"]["rank"] == 4 and s["exported_from"] == ck and "loaders" not in s
assert "tokenizer_fingerprint" in s
PY
/usr/bin/python3 - "ev_$(basename "$ck").json" ev_merged.json ev_copy.json ev_base.json <<'PY' && ok || bad "eval of the merged checkpoint"
import json, sys
lora, merged, copy, base = (json.load(open(p))["all"] for p in sys.argv[1:])
keys = ("m_in", "m_ex", "m_f", "ppl_ent")
assert all(copy[k] == lora[k] for k in keys), (copy, lora)
assert all(abs(merged[k] - lora[k]) <= 1e-5 * abs(lora[k]) for k in keys), (merged, lora)
assert abs(base["ppl_ent"] - lora["ppl_ent"]) > 1e-3 * lora["ppl_ent"], (base, lora)
PY
# the merged checkpoint starts a run as any other ([model] init_from), no adapters left
sed '/^lora = /d; /^freeze = /d' exp.toml >plain.toml
"$moelab" train plain.toml --set run.dir=R2 --set phases.0.steps=2 --set model.init_from=merged \
  >/dev/null 2>err && ok || bad "init_from merged: $(tail -1 err)"
grep -q "^init_from merged: [0-9]* tensors loaded, none new" err && ok || bad "init_from merged: $(grep init_from err)"
# bad input: one line naming the folder or flag, and nothing written
expect_error "export: missing checkpoint" "run/step_99999999: no such checkpoint folder" \
  "$moelab" export run/step_99999999 --merge-lora --out x1
expect_error "export: not a checkpoint" "corpus: not a checkpoint \(no config.json\)" \
  "$moelab" export corpus --out x2
expect_error "export: no adapters" "merged: --merge-lora: the checkpoint has no LoRA adapters" \
  "$moelab" export merged --merge-lora --out x3
expect_error "export: --out exists" "--out copy: already exists" "$moelab" export "$ck" --merge-lora --out copy
expect_error "export: --out under a file" "--out ents.tsv/x4: cannot create ents.tsv" \
  "$moelab" export "$ck" --merge-lora --out ents.tsv/x4
[ -z "$(ls -d x1 x2 x3 .*.tmp 2>/dev/null)" ] && ok || bad "export left $(ls -d x1 x2 x3 .*.tmp 2>/dev/null)"
cmp -s copy/model.safetensors "$ck/model.safetensors" && ok || bad "an existing --out was touched"

finish "cli test"
