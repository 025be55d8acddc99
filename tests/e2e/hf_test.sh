#!/usr/bin/env bash
# moelab export hf / import hf end to end: random tiny checkpoints (MoE with sliding layers and
# YaRN, dense with tied embeddings and neither sinks nor biases, an MoE with a dense layer, LoRA
# and DeRS to merge) exported for transformers' GptOss; tests/torch/hf_check.py runs GptOss's
# forward from the exported files and must match moelab's logits (and catch deliberate
# mistakes); import gives back the same bytes; bf16 exports import as the rounded weights; what
# GptOss cannot express fails with one line.
set -u
moelab=$1
here=$(cd "$(dirname "$0")" && pwd)
source "$here/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=2
py=/usr/bin/python3

# ckpt NAME JSON: a checkpoint folder NAME of the config JSON with random weights (model dump's,
# every tensor perturbed so that biases, sinks and adapters matter).
ckpt() {
  echo "$2" >"$1.json"
  "$moelab" model dump "$1.json" --out "$1.dump" --seed 5 >/dev/null || { bad "$1: model dump"; return 1; }
  $py - "$1" <<'PY'
import json, os, struct, sys
name = sys.argv[1]
data = open(name + ".dump", "rb").read()
(n,) = struct.unpack("<Q", data[:8]); h = json.loads(data[8:8 + n]); meta = h.pop("__metadata__")
keep = {k: v for k, v in h.items() if not k.startswith(("grad:", "input.", "output."))}
out, off, blobs = {"__metadata__": {"format": "pt"}}, 0, []
for k, v in keep.items():
    a, b = v["data_offsets"]; blob = data[8 + n + a:8 + n + b]
    out[k] = {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [off, off + len(blob)]}
    off += len(blob); blobs.append(blob)
hs = json.dumps(out).encode(); hs += b" " * ((8 - len(hs) % 8) % 8)
os.makedirs(name)
with open(name + "/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(hs)) + hs + b"".join(blobs))
json.dump(json.loads(meta["config"]), open(name + "/config.json", "w"))
json.dump({"step": 0}, open(name + "/trainer_state.json", "w"))
PY
}

base='"vocab_size": 61, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
  "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 24, "initializer_range": 0.5,
  "max_position_embeddings": 1024'
moe="$base, \"ffn_type\": \"moe\", \"num_local_experts\": 4, \"num_experts_per_tok\": 2,
  \"sliding_window\": 5, \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0,
  \"beta_fast\": 32.0, \"beta_slow\": 1.0, \"original_max_position_embeddings\": 256}"
ckpt moe "{$moe}"
ckpt dense "{$base, \"ffn_type\": \"dense\", \"tie_word_embeddings\": true,
  \"attention_sinks\": false, \"attention_bias\": false, \"sliding_window\": 0}"
ckpt partial "{$base, \"ffn_type\": \"moe\", \"num_local_experts\": 4, \"num_experts_per_tok\": 3,
  \"moe_layers\": [1], \"sliding_window\": 6}"
ckpt lora "{$moe, \"lora\": {\"rank\": 2, \"alpha\": 4, \"targets\": [\"q_proj\", \"mlp\\\\.experts\"]}}"
ckpt ders "{$moe, \"ders\": {\"delta\": \"lowrank\", \"rank\": 3}}"

for name in moe dense partial lora ders; do
  # f32: transformers' forward from the files equals moelab's logits, mistakes are caught
  "$moelab" export hf $name --out $name.hf --logits $name.logits >$name.log 2>&1 &&
    ok || { bad "$name: export hf: $(tail -1 $name.log)"; continue; }
  $py "$here/../torch/hf_check.py" $name.hf $name.logits --mutate >$name.check 2>&1 && ok ||
    bad "$name: hf_check: $(cat $name.check)"
  sed "s/^/  /" $name.check
  # import gives the checkpoint back; the same bytes as moelab's own export where nothing merged
  "$moelab" import hf $name.hf --out $name.back >$name.log 2>&1 && ok ||
    { bad "$name: import hf: $(tail -1 $name.log)"; continue; }
  if [ $name != lora ] && [ $name != ders ]; then
    "$moelab" export $name --out $name.plain >/dev/null
    cmp -s $name.back/model.safetensors $name.plain/model.safetensors && ok ||
      bad "$name: import of the f32 export differs from the checkpoint's tensors"
    cmp -s $name.back/config.json $name.plain/config.json && ok || bad "$name: config differs"
  fi
  # bf16: import gives the rounded weights, whose function the files still compute
  "$moelab" export hf $name --out $name.bf16 --dtype bf16 >/dev/null && ok || bad "$name: bf16 export"
  "$moelab" import hf $name.bf16 --out $name.bback >/dev/null && ok || bad "$name: bf16 import"
  "$moelab" export hf $name.bback --out $name.bhf --logits $name.blogits >/dev/null
  $py "$here/../torch/hf_check.py" $name.bf16 $name.blogits >$name.bcheck 2>&1 && ok ||
    bad "$name: bf16 hf_check: $(cat $name.bcheck)"
  sed "s/^/  /" $name.bcheck
done
$py - <<'PY' && ok || bad "bf16 sizes or dtypes"
import json, os, struct
for n in ["moe", "dense"]:
    f32, bf = os.path.getsize(n + ".hf/model.safetensors"), os.path.getsize(n + ".bf16/model.safetensors")
    d = open(n + ".bf16/model.safetensors", "rb").read(); (k,) = struct.unpack("<Q", d[:8])
    h = json.loads(d[8:8 + k]); assert h.pop("__metadata__") == {"format": "pt"}
    assert all(t["dtype"] == "BF16" for t in h.values()), n
    assert 0.45 < bf / f32 < 0.55, (n, bf, f32)
cfg = json.load(open("partial.hf/config.json"))
assert cfg["num_local_experts"] == 4 and cfg["moelab"]["moe_layers"] == [1]
assert json.load(open("lora.hf/config.json"))["moelab"]["merged"]["lora"]["rank"] == 2
assert json.load(open("ders.hf/config.json"))["moelab"]["merged"]["ders"] == "lowrank:3"
PY

# what GptOss cannot express, and bad input: one line, exit 1, nothing written
ckpt limit "{$base, \"ffn_type\": \"dense\", \"swiglu_limit\": 2.0}"
expect_error "export: swiglu_limit" "'swiglu_limit' is 2; transformers' GptOss hard-codes 7" \
  "$moelab" export hf limit --out x1
ckpt ct "{$base, \"ffn_type\": \"dense\", \"moe_ct\": {\"experts\": 2, \"top_k\": 1}}"
expect_error "export: moe_ct" "'moe_ct'.*has no GptOss form" "$moelab" export hf ct --out x2
expect_error "export: --dtype" "--dtype f16: must be f32 or bf16" \
  "$moelab" export hf moe --out x3 --dtype f16
expect_error "export: --out exists" "--out moe.hf: already exists" "$moelab" export hf moe --out moe.hf
expect_error "import: no config" "moe: no config.json|not a Hugging Face" \
  "$moelab" import hf moe.dump --out x4
$py -c "
import json; c = json.load(open('moe.hf/config.json')); c['quantization_config'] = {'quant_method': 'mxfp4'}
import shutil; shutil.copytree('moe.hf', 'quant.hf'); json.dump(c, open('quant.hf/config.json', 'w'))"
expect_error "import: quantized" "'quantization_config' is set" "$moelab" import hf quant.hf --out x5
[ -z "$(ls -d x1 x2 x3 x4 x5 .*.tmp 2>/dev/null)" ] && ok || bad "left $(ls -d x1 x2 x3 x4 x5 .*.tmp 2>/dev/null)"
# the plain export still works as before
"$moelab" export moe >/dev/null 2>"$tmp/err"; [ $? -ne 0 ] && grep -q -- "--out is required" "$tmp/err" &&
  ok || bad "export without --out: $(cat "$tmp/err")"

finish hf
