#!/usr/bin/env bash
# moelab compress end to end: a tiny MoE trained from scratch, compressed three ways (sparse,
# 4-bit, low rank) against its experts' mean; a dense model upcycled and trained on, compressed
# against the dense checkpoint's FFN (the paper's setting), and its universal-FFN form (MoE-CT
# experts). Each compressed folder is a checkpoint that moelab eval reads and that a run starts
# from ([model] config + init_from: the sparse positions kept, the values trained);
# compress.json holds the measures; bad input fails with one stderr line and leaves no folder.
set -u
moelab=$1
source "$(dirname "$0")/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE

verses_data "$moelab" 40 10 320 17
printf 'David\tPER\nking\tMISC\n' >ents.tsv
"$moelab" entities build --data data --entities ents.tsv --out ev.jsonl --top 100 --bottom 100 \
  --prompt 8 --target 8 >/dev/null 2>ent.err || { echo "FAIL: entities build: $(tail -1 ent.err)"; exit 1; }

# experiment NAME KEY=VALUE...: a short run of the tiny model (experts of width 16), constant rate
experiment() {
  local name=$1
  shift
  tiny_config run.dir="$name" run.log_every=10 model.intermediate_size=16 schedule.kind=constant \
    schedule.min_lr= schedule.decay_steps= phases.steps=30 "$@"
}
experiment moe "${tiny_moe[@]}" >moe.toml
experiment dense >dense.toml
for r in moe dense; do
  "$moelab" train $r.toml >$r.log 2>&1 || { echo "FAIL: train $r: $(tail -1 $r.log)"; exit 1; }
done
ck=moe/step_00000030
dense=dense/step_00000030
# from_toml NAME DIR STEPS: a run of STEPS steps on B started from the checkpoint folder DIR
from_toml() { from_checkpoint_toml "$1" "$2" "$3" 4 3e-3; }
# The paper's setting: the dense model upcycled (4 copies, top-2) and trained on; its universal
# FFN form (MoE-CT experts) and fine-grained slices (narrower experts) as they come out.
for u in "up --experts 4 --top-k 2" "uni --experts 3 --top-k 2 --universal-ffn" "fine --experts 2 --granularity 2"; do
  set -- $u
  "$moelab" upcycle $dense --out "$@" --seed 7 >$1.log 2>&1 || { echo "FAIL: upcycle $1: $(tail -1 $1.log)"; exit 1; }
done
from_toml upr up 20 >upr.toml
"$moelab" train upr.toml >upr.log 2>&1 || { echo "FAIL: train from up: $(tail -1 upr.log)"; exit 1; }
upck=upr/step_00000020

# ---- the scratch MoE three ways against its experts' mean; the upcycled ones against the dense FFN
for spec in "$ck sparse:0.9 mean" "$ck quant:4 mean" "$ck lowrank:4 mean" \
  "$upck sparse:0.9 $dense --select topk --seed 0" "$upck quant:4 $dense" "uni sparse:0.9 $dense"; do
  set -- $spec
  out=c_${1%%/*}_${2%%:*}_${3%%/*}
  if "$moelab" compress $1 --delta $2 --base $3 "${@:4}" --out $out >$out.log 2>$out.err; then ok; else bad "compress $spec: $(tail -1 $out.err)"; continue; fi
  grep -q "^total " $out.log && ok || bad "compress $spec: no total row in the table"
  [ -s $out/compress.json ] && [ -s $out/model.safetensors ] && ok || bad "compress $spec: files"
  if "$moelab" eval $out --evalset ev.jsonl --data data --out $out.ev.json >/dev/null 2>$out.everr; then ok; else bad "eval $out: $(tail -1 $out.everr)"; fi
done
/usr/bin/python3 - <<'PY' && ok || bad "compress.json measures"
import json
def load(d): return json.load(open(d + "/compress.json"))
runs = [("c_moe_sparse_mean", "sparse", 4), ("c_moe_quant_mean", "quant", 4), ("c_moe_lowrank_mean", "lowrank", 4),
        ("c_upr_sparse_dense", "sparse", 4), ("c_upr_quant_dense", "quant", 4), ("c_uni_sparse_dense", "sparse", 4)]
for d, kind, weights in runs:
    j = load(d)
    t = j["total"]
    assert len(j["weights"]) == weights, d                # 2 layers x (gate_up, down)
    assert t["bytes_after"] < t["bytes_before"], d
    assert j["file_bytes_after"] < j["file_bytes_before"], d
    assert (0 if d.startswith("c_uni") else 1e-4) <= t["rel_error_mean"] <= t["rel_error_max"], d
    assert -1 <= t["cos_experts_min"] <= t["cos_experts_mean"] <= 1, d
    assert json.load(open(d + "/config.json"))["ders"]["delta"] == kind, d
    r = json.load(open(d + ".ev.json"))["all"]
    assert r["samples"] > 0 and 0 <= r["m_ex"] <= 1, d
# sparse 0.9: 4 experts of 32x32 -> base + 4 x 102 (values + positions) x 4 bytes
w = load("c_moe_sparse_mean")["weights"][0]
assert (w["in"], w["out"], w["experts"]) == (32, 32, 4), w
assert w["bytes_before"] == 4 * 32 * 32 * 4 and w["bytes_after"] == 32 * 32 * 4 + 4 * 102 * 8, w
assert abs(w["paper_ratio"] - (1 + 4 * 0.1) / 4) < 1e-12, w
# upcycled experts stay close to their FFN and to each other; scratch-trained ones do not
up, scratch = load("c_upr_sparse_dense")["total"], load("c_moe_sparse_mean")["total"]
assert up["cos_base_min"] > 0.7 and up["cos_experts_min"] > 0.5, up
assert scratch["cos_experts_mean"] < 0.2, scratch
assert up["rel_error_mean"] < scratch["rel_error_mean"], (up, scratch)
assert all(".mlp.ct.experts." in w["name"] for w in load("c_uni_sparse_dense")["weights"])
uni = load("c_uni_sparse_dense")["total"]  # fresh copies of the FFN: the dense base is exact
assert uni["cos_base_min"] > 0.999999 and uni["rel_error_max"] == 0, uni
s = json.load(open("c_upr_sparse_dense/trainer_state.json"))
assert s["compress"]["base"] == "dense" and s["compress"]["select"] == "topk" and s["compress"]["base_checkpoint"] == "dense/step_00000030", s
assert "tokenizer_fingerprint" in s and "loaders" not in s and s["compressed_from"] == "upr/step_00000020", s
PY
grep -H "^total " c_*.log >totals.txt

# ---- a run from the sparse-compressed folder: the values train, the positions stay
from_toml from c_moe_sparse_mean 4 >from.toml
if "$moelab" train from.toml >from.log 2>&1; then ok; else bad "train from the compressed folder: $(tail -1 from.log)"; fi
grep -q "^init_from c_moe_sparse_mean: [0-9]* tensors loaded, none new" from.log && ok || bad "init_from report: $(grep init_from from.log)"
[ "$(wc -l <from/metrics.jsonl)" -eq 4 ] && ok || bad "4 metrics lines"
/usr/bin/python3 - c_moe_sparse_mean/model.safetensors from/step_00000004/model.safetensors <<'PY' && ok || bad "positions kept and values trained"
import json, struct, sys
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items() if k != "__metadata__"}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
idx = [k for k in a if k.endswith("_delta_indices")]
val = [k for k in a if k.endswith("_delta_values")]
assert len(idx) == 4 and len(val) == 4
assert all(a[k] == b[k] for k in idx)
assert all(a[k] != b[k] for k in val)
PY

# ---- real size: a dense model with a 128 x 2048 FFN, upcycled top-1 (copies) and top-2, a few
# steps on B, then low-rank, 8-bit and 90% sparse against the experts' mean and the dense FFN.
# (Tiny matrices take other code paths: the low-rank SVD once crashed only at this size.)
experiment big model.hidden_size=128 model.intermediate_size=2048 model.num_hidden_layers=1 phases.steps=2 >big.toml
"$moelab" train big.toml >big.log 2>&1 || { echo "FAIL: train big: $(tail -1 big.log)"; exit 1; }
for u in "big1 --experts 4 --top-k 1" "big2 --experts 4 --top-k 2"; do
  set -- $u
  "$moelab" upcycle big/step_00000002 --out "$@" --seed 7 >$1.log 2>&1 || { echo "FAIL: upcycle $1: $(tail -1 $1.log)"; exit 1; }
done
from_toml big2r big2 2 >big2r.toml
"$moelab" train big2r.toml >big2r.log 2>&1 || { echo "FAIL: train from big2: $(tail -1 big2r.log)"; exit 1; }
for spec in "big1 lowrank:64 mean" "big1 lowrank:64 big/step_00000002" "big2r/step_00000002 lowrank:16 mean" \
  "big2r/step_00000002 lowrank:128 big/step_00000002" "big2r/step_00000002 quant:8 mean" "big2r/step_00000002 sparse:0.9 mean"; do
  set -- $spec
  out=big_${1%%/*}_${2/:/}_${3%%/*}
  if "$moelab" compress $1 --delta $2 --base $3 --out $out >$out.log 2>$out.err; then ok; else bad "compress (real size) $spec: exit $?: $(tail -1 $out.err)"; continue; fi
  [ -s $out/compress.json ] && ok || bad "compress (real size) $spec: no compress.json"
done
/usr/bin/python3 - <<'PY' && ok || bad "real-size compress.json"
import json
def total(d): return json.load(open(d + "/compress.json"))["total"]
w = json.load(open("big_big2r_lowrank16_mean/compress.json"))["weights"]
assert sorted((x["in"], x["out"]) for x in w) == [(128, 4096), (2048, 128)], w
# top-1 copies of the dense FFN: every delta is zero against either base, whatever the rank
for d in ("big_big1_lowrank64_mean", "big_big1_lowrank64_big"):
    assert total(d)["rel_error_max"] == 0, (d, total(d))
# full rank (128 = min(in, out)) gives the experts back; rank 16 of 128 does not
assert total("big_big2r_lowrank128_big")["rel_error_max"] < 1e-5, total("big_big2r_lowrank128_big")
assert 0 < total("big_big2r_lowrank16_mean")["rel_error_mean"] < 1
assert total("big_big2r_quant8_mean")["rel_error_max"] < 0.05
assert 0 < total("big_big2r_sparse0.9_mean")["rel_error_mean"] < 1
PY

# ---- bad input: one stderr line, non-zero exit, no folder
mkdir -p exists notckpt
bad_input() {
  local what=$1 re=$2
  shift 2
  "$moelab" compress "$@" >out.txt 2>err.txt
  local rc=$?
  [ $rc -ne 0 ] || { bad "$what: exit 0"; return; }
  [ "$(wc -l <err.txt)" -eq 1 ] || { bad "$what: stderr is not one line: $(cat err.txt)"; return; }
  grep -Eq -- "$re" err.txt || { bad "$what: '$(cat err.txt)' does not match '$re'"; return; }
  [ ! -e bad ] && [ -z "$(ls -A . | grep '^\.bad')" ] || { bad "$what: wrote a folder"; return; }
  ok
}
bad_input "P = 1" "--delta sparse:1: P .* must be in \[0, 1\)" $ck --delta sparse:1 --base mean --out bad
bad_input "P < 0" "--delta sparse:-0.5: P" $ck --delta sparse:-0.5 --base mean --out bad
bad_input "bits 9" "--delta quant:9: BITS must be in 1..8" $ck --delta quant:9 --base mean --out bad
bad_input "bits 0" "--delta quant:0: BITS must be in 1..8" $ck --delta quant:0 --base mean --out bad
bad_input "rank 0" "--delta lowrank:0: the rank R must be at least 1" $ck --delta lowrank:0 --base mean --out bad
bad_input "rank 17" "--delta lowrank:17: R exceeds min\(in, out\) = 16" $ck --delta lowrank:17 --base mean --out bad
bad_input "syntax" "--delta 'sparse': expected sparse:P" $ck --delta sparse --base mean --out bad
bad_input "syntax 2" "--delta 'topk:3': expected" $ck --delta topk:3 --base mean --out bad
bad_input "select" "--select 'best': expected random or topk" $ck --delta sparse:0.5 --select best --base mean --out bad
bad_input "select on quant" "--select and --seed apply to --delta sparse:P only" $ck --delta quant:4 --seed 3 --base mean --out bad
bad_input "out exists" "--out exists: already exists" $ck --delta sparse:0.5 --base mean --out exists
bad_input "not a checkpoint" "notckpt: not a checkpoint \(no config.json\)" notckpt --delta sparse:0.5 --base mean --out bad
bad_input "no folder" "nowhere: no such checkpoint folder" nowhere --delta sparse:0.5 --base mean --out bad
bad_input "dense checkpoint" "$dense/?: a dense model \(no routed experts" $dense --delta sparse:0.5 --base mean --out bad
bad_input "compressed again" "c_moe_quant_mean/?: already compressed" c_moe_quant_mean --delta sparse:0.5 --base mean --out bad
bad_input "narrower experts" "--base $dense: tensor 'model.layers.0.mlp.experts.gate_up_proj' is \\[1, 32, 32\\] in the dense checkpoint but the experts of 'model.layers.0.mlp.experts.gate_up_proj' are \\[32, 16\\]" fine --delta sparse:0.5 --base $dense --out bad
bad_input "base not a checkpoint" "--base notckpt: not a checkpoint folder" $ck --delta sparse:0.5 --base notckpt --out bad

echo "--- measured (columns as in moelab compress):"
cat totals.txt
finish compress_test
