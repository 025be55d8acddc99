#!/usr/bin/env bash
# moelab upcycle end to end: a tiny dense run, upcycled (copies top-1, a DeRS sparse delta
# top-2, fine-grained slices, a universal FFN on every other layer). Each upcycled checkpoint
# evaluates (moelab eval) to the dense one's metrics, and a run started from it
# ([model] config + init_from) has the dense model's first loss and trains. Bad input fails
# with one line and leaves no output folder.
set -u
moelab=$1
source "$(dirname "$0")/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=2

verses_data "$moelab" 30 10 320 13
printf 'David\tPER\nking\tMISC\n' >ents.tsv
"$moelab" entities build --data data --entities ents.tsv --out ev.jsonl --top 100 --bottom 100 \
  --prompt 8 --target 8 >/dev/null 2>ent.err || { echo "FAIL: entities build: $(tail -1 ent.err)"; exit 1; }

# ---- the dense model
tiny_config run.dir=dense >dense.toml
"$moelab" train dense.toml >dense.log 2>&1 || { echo "FAIL: dense run: $(tail -1 dense.log)"; exit 1; }
ck=dense/step_00000020

# ---- upcycled checkpoints
up() {  # up NAME FLAGS...
  local name=$1
  shift
  if "$moelab" upcycle $ck --out "$name" "$@" >"$name.log" 2>"$name.err"; then ok; else bad "upcycle $name: $(tail -1 "$name.err")"; fi
}
up copies --experts 4 --top-k 1 --seed 7
up sparse --experts 4 --top-k 2 --delta sparse:0.9 --seed 7
up fine --experts 2 --top-k 1 --granularity 4
up universal --experts 3 --top-k 2 --universal-ffn --layers every-other
grep -q "^params total  [0-9]* -> [0-9]*$" copies.log && grep -q "^layer 1 .*4 experts top-1 (copies of the FFN)" copies.log &&
  grep -q "^layer 0 .*dense FFN copied" universal.log && grep -q "^layer 1 .*dense FFN kept + 3 copies" universal.log && grep -q "^layer 1 .*8 experts top-4 (2 groups of 4 slices" fine.log &&
  ok || bad "summary: $(cat copies.log)"
/usr/bin/python3 - <<'PY' && ok || bad "configs and trainer states"
import json
c = {n: json.load(open(f"{n}/config.json")) for n in ("copies", "sparse", "fine", "universal")}
assert c["copies"]["ffn_type"] == "moe" and c["copies"]["num_local_experts"] == 4, c["copies"]
assert c["sparse"]["ders"] == {"delta": "sparse", "base": "shared", "p": 0.9, "select": "random", "seed": 7}, c["sparse"]["ders"]
assert (c["fine"]["num_local_experts"], c["fine"]["num_experts_per_tok"], c["fine"]["intermediate_size"]) == (8, 4, 8)
u = c["universal"]
assert u["ffn_type"] == "dense" and u["moe_ct"] == {"experts": 3, "top_k": 2, "gate": "fixed", "lambda": 0.5, "init": "copy", "layers": [1]}, u
dense = json.load(open("dense/step_00000020/trainer_state.json"))
s = json.load(open("sparse/trainer_state.json"))
assert s["tokenizer_fingerprint"] == dense["tokenizer_fingerprint"] and s["upcycled_from"] == "dense/step_00000020"
assert s["upcycle"]["delta"] == "sparse:0.9" and s["upcycle"]["experts"] == 4 and "loaders" not in s
PY

# ---- moelab eval: the same metrics as the dense model (held-out windows of the evaluation set)
"$moelab" eval $ck --evalset ev.jsonl --data data --out dense.json --threads 2 >/dev/null 2>ev.err || bad "eval dense: $(tail -1 ev.err)"
for n in copies sparse fine universal; do
  "$moelab" eval $n --evalset ev.jsonl --data data --out $n.json --threads 2 >/dev/null 2>ev.err || bad "eval $n: $(tail -1 ev.err)"
done
# top-1 copies compute the dense logits bit for bit; the others to rounding (|diff| ~ 1e-6)
cmp -s <(/usr/bin/python3 -c "import json; print(json.load(open('dense.json'))['all'])") \
  <(/usr/bin/python3 -c "import json; print(json.load(open('copies.json'))['all'])") && ok || bad "eval: copies differ from dense"
/usr/bin/python3 - <<'PY' && ok || bad "eval of the upcycled checkpoints"
import json
d = json.load(open("dense.json"))["all"]
assert d["samples"] >= 5 and d["ppl_ent"] > 1, d
for n in ("sparse", "fine", "universal"):
    u = json.load(open(f"{n}.json"))["all"]
    assert abs(u["ppl_ent"] - d["ppl_ent"]) <= 1e-5 * d["ppl_ent"], (n, u["ppl_ent"], d["ppl_ent"])
    for k in ("samples", "m_in", "m_ex", "m_f"):  # greedy: a flip needs a tie within rounding
        assert u[k] == d[k], (n, k, u[k], d[k])
PY

# ---- training from the upcycled checkpoints: the first loss is the dense model's, and it trains
from() {  # from NAME DIR: a 4-step run started from DIR
  from_checkpoint_toml "run_$1" "$2" 4 5 1e-3 >"$1.toml"
  if "$moelab" train "$1.toml" >"$1.train.log" 2>&1; then ok; else bad "train from $2: $(tail -1 "$1.train.log")"; fi
}
from d $ck
from c copies
from s sparse
loss() { sed -n "${2}p" "run_$1/metrics.jsonl" | sed -E 's/.*"loss":([-0-9.e]+).*/\1/'; }
[ -n "$(loss d 1)" ] && [ "$(loss c 1)" = "$(loss d 1)" ] && ok || bad "first loss from copies $(loss c 1), dense $(loss d 1)"
awk -v a="$(loss s 1)" -v b="$(loss d 1)" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-5 * b) }' && ok ||
  bad "first loss from the sparse delta $(loss s 1), dense $(loss d 1)"
[ -d run_s/step_00000004 ] && grep -q '"expert_load"' run_s/metrics.jsonl && [ "$(loss s 4)" != "$(loss s 1)" ] && ok ||
  bad "the upcycled run did not train"
grep -q "init_from sparse: [0-9]* tensors loaded, none new" s.train.log && ok || bad "init_from report: $(grep init_from s.train.log)"

# ---- bad input: one line, exit 1, no output folder
refuse() {  # refuse DESCRIPTION REGEX FLAGS...
  local what=$1 re=$2
  shift 2
  expect_error "$what" "$re" "$moelab" upcycle "$@" --out bad
  [ ! -e bad ] && [ -z "$(ls -A | grep '^\.bad')" ] && ok || bad "$what: left an output folder"
}
refuse "moe source" "^moelab: error: copies: upcycle needs a dense checkpoint \(it has 4 experts\)$" copies --experts 2
refuse "one expert" "--experts: must be at least 2" $ck --experts 1
refuse "top-k 0" "--top-k: must be in \[1, --experts = 4\]" $ck --top-k 0
refuse "top-k > experts" "--top-k: must be in \[1, --experts = 2\] \(got 3\)" $ck --experts 2 --top-k 3
refuse "granularity 0" "--granularity: must be at least 1" $ck --granularity 0
refuse "granularity not dividing" "--granularity 3: does not divide intermediate_size \(32\)" $ck --granularity 3
refuse "granularity on some layers" "--granularity 2: needs every layer upcycled" $ck --granularity 2 --layers 1
refuse "layer out of range" "--layers '2': layer 2 is out of range \[0, 2\)" $ck --layers 2
refuse "layer list malformed" "--layers '1,x': expected all, every-other or a list" $ck --layers 1,x
refuse "layer twice" "--layers '1,1': layer 1 is listed twice" $ck --layers 1,1
refuse "universal with granularity" "--granularity: must be 1 with --universal-ffn" $ck --universal-ffn --granularity 2
refuse "delta with granularity" "--delta: needs --granularity 1" $ck --delta sparse:0.5 --granularity 2
refuse "delta with universal" "--delta: cannot be combined with --universal-ffn" $ck --delta lowrank:2 --universal-ffn
refuse "sparse p 1" "--delta sparse:1: P \(the share dropped\) must be in \[0, 1\)" $ck --delta sparse:1
refuse "lowrank 0" "--delta lowrank:0: R must be in \[1, min\(hidden_size, intermediate_size\) = 32\]" $ck --delta lowrank:0
refuse "lowrank too large" "--delta lowrank:33: R must be in" $ck --delta lowrank:33
refuse "delta malformed" "--delta 'sparse': expected none, sparse:P" $ck --delta sparse
refuse "no checkpoint" "nowhere: no such checkpoint folder" nowhere
refuse "not a checkpoint" "corpus: not a checkpoint \(no config.json\)" corpus
before=$(ls -R copies | md5sum)
expect_error "out exists" "--out copies: already exists" "$moelab" upcycle $ck --out copies
[ "$(ls -R copies | md5sum)" = "$before" ] && ok || bad "an existing --out was touched"

finish "upcycle test"
