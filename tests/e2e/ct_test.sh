#!/usr/bin/env bash
# moelab ct end to end, in miniature: a tiny dense base trained on A, then full training, LoRA
# and MoE-CT on B from it, replaying A, one shared evaluation set filtered by the model before
# the first step. Each method freezes what it should (checked tensor by tensor against the base),
# a stopped run resumes and a finished one is skipped, seeds are averaged, the report's files and
# fields exist, and bad input fails with one line naming the file and the key.
set -u
moelab=$1
source "$(dirname "$0")/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=2

titles_data "$moelab" 48
book_data "$moelab" 380 data380  # the same book under another tokenizer (refused below)

# ---- the base: a dense model trained on A
tiny_config run.dir=base "${titles_run[@]}" run.peak_gflops=100 >base.toml
"$moelab" train base.toml >base.log 2>&1 || { echo "FAIL: base: $(tail -1 base.log)"; exit 1; }

cat >ct.toml <<'TOML'
[run]
dir = "ct"
seed = 3
peak_gflops = 100
threads = 2
log_every = 5
[data]
dir = "data"
seq_len = 64
[train]
batch_size = 4
[schedule]
kind = "constant"
max_lr = 2e-3
warmup_steps = 2
[checkpoint]
every = 5
keep_last = 2
[eval]
every = 5
batches = 2
forgetting_every = 5
[ct]
base = "base/step_00000030"
original = "A"
new = "B"
steps = 10
entities = "ents.tsv"
top = 100
bottom = 100
prompt = 8
target = 8
max_per_entity = 4
[[ct.methods]]
name = "full"
kind = "full"
replay_ratio = 0.25
[[ct.methods]]
name = "lora"
kind = "lora"
lora = { rank = 4, alpha = 8, targets = ["self_attn", "mlp\\.experts"] }
[[ct.methods]]
name = "moe-ct"
kind = "moe-ct"
moe_ct = { experts = 2, top_k = 1, gate = "token", lambda = 0.5, init = "copy" }
train_embeddings = true
TOML

# ---- two methods, one of them stopped before its end, then the whole study continued
"$moelab" ct ct.toml --methods full,lora --no-report >ct1.log 2>&1 || bad "ct (full, lora): $(tail -1 ct1.log)"
[ -f ct/ct.json ] && [ -f ct/evalset.jsonl ] && [ -f ct/full/seed_3/run.json ] &&
  [ -f ct/lora/seed_3/resources.json ] && [ ! -d ct/moe-ct ] && ok || bad "ct folders"
grep -q "'\^(?!\.\*lora_)'" ct/lora/seed_3/experiment.toml && ok || bad "lora freezes all but the adapters"
grep -q "replay_ratio = 0.25" ct/full/seed_3/experiment.toml && grep -q "replay_subset = 'A'" ct/full/seed_3/experiment.toml &&
  ok || bad "replay keys passed to the phase"
grep -q "filter_at = 'start'" ct/lora/seed_3/experiment.toml && ok || bad "evaluation set filtered at the start"
rm -rf ct/lora/seed_3/step_00000010
if "$moelab" ct ct.toml >ct2.log 2>&1; then ok; else bad "ct: $(tail -1 ct2.log)"; fi
grep -q "full/seed_3.*(done)" ct2.log && ok || bad "finished run not skipped"
grep -q "lora/seed_3.*(resuming)" ct2.log && ok || bad "stopped run not resumed"
[ "$(grep -c '"step":10' ct/lora/seed_3/metrics.jsonl)" = 1 ] && ok || bad "resumed metrics duplicated"

# ---- what each method trained, tensor by tensor against the base
/usr/bin/python3 - <<'PY' && ok || bad "frozen tensors"
import json, struct
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items() if k != "__metadata__"}
base = tensors("base/step_00000030/model.safetensors")
def end(m): return tensors(f"ct/{m}/seed_3/step_00000010/model.safetensors")
full, lora, moe = end("full"), end("lora"), end("moe-ct")
q, ffn, emb = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.experts.down_proj", "model.embed_tokens.weight"
assert full[q] != base[q] and full[ffn] != base[ffn], "full: base tensors must train"
assert all(lora[k] == v for k, v in base.items()), "lora: the base must stay as it was"
assert any("lora_B" in k and set(v) != {0} for k, v in lora.items()), "lora: adapters must train"
assert moe[q] == base[q] and moe[ffn] == base[ffn], "moe-ct: attention and the old FFN frozen"
assert moe[emb] != base[emb], "moe-ct: train_embeddings trains the embeddings"
assert any(".mlp.ct." in k for k in moe), "moe-ct: new experts"
PY

# ---- the report
for f in summary.md summary.json tradeoff.png tradeoff.svg tradeoff.gp m_ex.png m_in.png loss.png; do
  [ -s "ct/report/$f" ] && ok || bad "report file $f missing"
done
/usr/bin/python3 - ct/report/summary.json <<'PY' && ok || bad "report fields"
import json, sys
s = json.load(open(sys.argv[1]))
assert set(s["base_val_loss"]) == {"A", "B"}, s["base_val_loss"]
m = {x["method"]: x for x in s["methods"]}
assert list(m) == ["full", "lora", "moe-ct"], list(m)
for name, x in m.items():
    for k in ("final_val_loss_original", "final_val_loss_new", "tokens_per_s", "peak_rss_bytes",
              "final_m_ex", "final_m_in", "evalset_kept"):
        assert x[k] is not None, (name, k)
    assert x["tokens"] == 10 * 4 * 64, (name, x["tokens"])
    assert x["peak_rss_bytes"] > 1e6, (name, x["peak_rss_bytes"])
    assert x["evalset_kept"] > 0, (name, "kept")
assert m["full"]["params_trainable"] == m["full"]["params_total"]
assert 0 < m["lora"]["params_trainable"] < m["full"]["params_total"] < m["lora"]["params_total"]
assert 0 < m["moe-ct"]["params_trainable"] < m["moe-ct"]["params_total"]
# LoRA starts as the base (B = 0) and moe-ct's new experts copy its FFN: the recalled sets agree
assert m["lora"]["evalset_kept"] == m["full"]["evalset_kept"], (m["lora"]["evalset_kept"], m["full"]["evalset_kept"])
PY
grep -q '"base"' ct/report/tradeoff.gp && grep -q "## Reading" ct/report/summary.md && ok || bad "trade-off figure or reading"
rm -rf ct/report
"$moelab" ct ct.toml --report-only --no-plots >ro.log 2>&1 && [ -s ct/report/summary.md ] && [ -s ct/report/m_ex.gp ] &&
  ok || bad "--report-only: $(tail -1 ro.log)"
"$moelab" report ct --out viareport --no-plots >/dev/null 2>&1 && grep -q "Continual-training report" viareport/summary.md &&
  ok || bad "moelab report on a ct folder"

# ---- seeds: two seeds of one method are averaged, with a spread
sed 's/^dir = "ct"$/dir = "seeds"/' ct.toml >seeds.toml
if "$moelab" ct seeds.toml --methods lora --seeds 3,4 --no-plots >seeds.log 2>&1; then ok; else bad "seeds: $(tail -1 seeds.log)"; fi
/usr/bin/python3 -c "
import json; m = json.load(open('seeds/report/summary.json'))['methods'][0]
assert m['seeds'] == [3, 4] and 'sd' in m['final_val_loss_new'], m" && ok || bad "seed aggregation"

# ---- a grid of learning rates: one run per rate, all kept, the best on B's held-out loss marked
sed 's/^dir = "ct"$/dir = "grid"/; s/^name = "lora"$/name = "lora"\nlr = [1e-3, 1e-2]/;
  s/^steps = 10$/steps = 10\ncompare = [["lora-lr0.01", "lora"]]/' ct.toml >grid.toml
if "$moelab" ct grid.toml --methods lora --no-plots >grid.log 2>&1; then ok; else bad "lr grid: $(tail -1 grid.log)"; fi
grep -q "^max_lr = 0.01$" grid/lora-lr0.01/seed_3/experiment.toml && ok || bad "the grid's rate in the run's experiment"
/usr/bin/python3 - grid/report/summary.json <<'PY' && ok || bad "lr grid in the report"
import json, sys
s = json.load(open(sys.argv[1]))
[f] = s["families"]
members = {m["method"]: m for m in f["members"]}
assert f["family"] == "lora" and sorted(members) == ["lora-lr0.001", "lora-lr0.01"], f
assert members["lora-lr0.01"]["max_lr"] == 0.01, members
best = min(members.values(), key=lambda m: m["final_val_loss_new"])["method"]
assert f["best"] == best, (f["best"], best)
# two rates: the best is always at an edge of the grid, and the report says which
edge = "highest" if best == "lora-lr0.01" else "lowest"
assert f["best_at_edge"] == edge, (f["best_at_edge"], edge)
PY
grep -q "## Learning rates" grid/report/summary.md && ok || bad "the learning-rate table"
grep -q "^- lora: the best rate, .*, is the grid's \(highest\|lowest\): the optimum may lie beyond" grid/report/summary.md &&
  ok || bad "the best rate at the grid's edge, said"
# [ct] compare: the pair is read at matched learning ("lora" is the family's best rate)
/usr/bin/python3 - grid/report/summary.json grid/report/summary.md <<'PY' && ok || bad "compare pairs"
import json, sys
s = json.load(open(sys.argv[1]))
md = open(sys.argv[2]).read()
best = s["families"][0]["best"]
assert "The pairs the study file asks for" in md, md
assert f"- lora-lr0.01 against {best} on held-out A" in md or f"- lora-lr0.01 against {best} at B = " in md, md
assert "\n-  \n" not in md, md
PY
# a later start with other methods adds its runs to ct.json; the earlier ones stay listed
if "$moelab" ct grid.toml --methods full --no-plots >grid2.log 2>&1; then ok; else bad "grid, full: $(tail -1 grid2.log)"; fi
/usr/bin/python3 -c "
import json; c = json.load(open('grid/ct.json'))
runs = {m['name']: [r['dir'] for r in m['runs']] for m in c['methods']}
assert runs == {'full': ['full/seed_3'], 'lora-lr0.001': ['lora-lr0.001/seed_3'],
                'lora-lr0.01': ['lora-lr0.01/seed_3']}, runs" && ok || bad "ct.json keeps the earlier runs"
/usr/bin/python3 -c "
import json; s = json.load(open('grid/report/summary.json'))
assert [m['method'] for m in s['methods']] == ['full', 'lora-lr0.001', 'lora-lr0.01'], s['methods']" &&
  ok || bad "the report of both starts"

# ---- bad input: one line naming the file and the key; nothing of a run is touched
variant() { sed "$2" ct.toml >"$1.toml"; }
variant nobase 's|^base = .*|base = "base/step_00000099"|'
variant cmp 's|^steps = 10$|steps = 10\ncompare = [["lora", "dora"]]|'
expect_error "compare names no method" "cmp\.toml: 'ct\.compare\[0\]' \"dora\" is not the name of a method" "$moelab" ct cmp.toml
expect_error "missing base" "nobase\.toml: 'ct\.base': base/step_00000099: no such checkpoint" "$moelab" ct nobase.toml
variant tok 's|^dir = "data"$|dir = "data380"|'
expect_error "base of another tokenizer" "tok\.toml: 'ct\.base': .*tokenizer" "$moelab" ct tok.toml
variant kind '0,/kind = "full"/s//kind = "fool"/'
expect_error "unknown kind" "kind\.toml: 'ct\.methods\[0\]\.kind' \"fool\" must be" "$moelab" ct kind.toml
variant rank 's/rank = 4/rank = 0/'
expect_error "lora rank 0" "rank\.toml: 'ct\.methods\[1\]\.lora\.rank' must be an integer >= 1" "$moelab" ct rank.toml
variant dup 's/name = "lora"/name = "full"/'
expect_error "duplicate name" "dup\.toml: 'ct\.methods\[1\]\.name' \"full\" is already" "$moelab" ct dup.toml
variant lr0 's/^name = "lora"$/name = "lora"\nlr = [0.001, 0]/'
expect_error "a rate of 0" "lr0\.toml: 'ct\.methods\[1\]\.lr' must be a positive learning rate" "$moelab" ct lr0.toml
variant lr2 's/^name = "lora"$/name = "lora"\nlr = [0.001, 1e-3]/'
expect_error "a rate twice" "lr2\.toml: 'ct\.methods\[1\]\.lr' lists a rate twice" "$moelab" ct lr2.toml
variant ctkey 's/^steps = 10$/stepz = 10/'
expect_error "unknown ct key" "ctkey\.toml: unknown key 'ct\.stepz'" "$moelab" ct ctkey.toml
variant model '1i [model]\nhidden_size = 32'
expect_error "a [model] section" "model\.toml: \[model\] comes from 'ct\.base'" "$moelab" ct model.toml
variant replay 's/^replay_ratio = 0.25$/replay_ratio = 0.25\nreplay_bogus = 1/'
cp ct/full/seed_3/experiment.toml before.toml
# in the study's folder a changed method is refused first (ct/settings.json), in a new one the key
expect_error "changed method key" "ct/settings\.json: the study in ct was started with no ct\.methods\[full\]\.replay_bogus, this start has ct\.methods\[full\]\.replay_bogus = 1" \
  "$moelab" ct replay.toml
sed 's/^dir = "ct"$/dir = "ctreplay"/' replay.toml >replay2.toml
expect_error "unknown replay key" "replay2\.toml: method 'full': ctreplay/full/seed_3/experiment\.toml: unknown key 'phases\[0\]\.replay_bogus'" \
  "$moelab" ct replay2.toml
cmp -s before.toml ct/full/seed_3/experiment.toml && [ ! -e ct/full/seed_3/.experiment.check.toml ] &&
  [ ! -e ctreplay/full/seed_3/.experiment.check.toml ] && [ ! -e ctreplay/full/seed_3/experiment.toml ] && ok ||
  bad "a refused file changed a run's experiment"
expect_error "unknown method" "--methods: ct\.toml has no method named 'dora'" "$moelab" ct ct.toml --methods dora

# ---- upcycling and DeRS: the base made an MoE three ways, the vanilla one compressed three ways,
# every final model measured; the report's final-model table and figure
cat >ders.toml <<'TOML'
[run]
dir = "ders"
seed = 3
peak_gflops = 100
threads = 2
[data]
dir = "data"
seq_len = 64
[train]
batch_size = 4
[schedule]
kind = "constant"
max_lr = 2e-3
warmup_steps = 2
[checkpoint]
every = 3
keep_last = 3
[eval]
every = 5
batches = 2
forgetting_every = 5
[ct]
base = "base/step_00000030"
original = "A"
new = "B"
steps = 6
entities = "ents.tsv"
top = 100
bottom = 100
prompt = 8
target = 8
max_per_entity = 4
[[ct.methods]]
name = "dense"
kind = "full"
[[ct.methods]]
name = "vanilla"
kind = "upcycle"
upcycle = { experts = 4, top_k = 1 }
[[ct.methods]]
name = "sm"
kind = "upcycle"
upcycle = { experts = 4, top_k = 1, delta = "sparse:0.9" }
[[ct.methods]]
name = "lm"
kind = "upcycle"
upcycle = { experts = 4, top_k = 2, layers = "every-other", delta = "lowrank:2" }
[[ct.compress]]
name = "drop"
from = "vanilla"
delta = "sparse:0.9"
[[ct.compress]]
name = "q2"
from = "vanilla"
delta = "quant:2"
[[ct.compress]]
name = "svd"
from = "vanilla"
delta = "lowrank:2"
base = "mean"
TOML
if "$moelab" ct ders.toml --no-plots >ders.log 2>&1; then ok; else bad "ct with upcycling: $(tail -1 ders.log)"; fi
for f in vanilla/upcycled_s3/config.json vanilla/seed_3/final_eval.json sm/seed_3/final_eval.json \
  lm/seed_3/final_eval.json compress/drop/seed_3/model/compress.json compress/q2/seed_3/eval.json \
  compress/svd/seed_3/eval.json report/ders_bytes_B.gp report/ders_cosine.gp dense/seed_3/final_eval.json; do
  [ -s "ders/$f" ] && ok || bad "ders/$f missing"
done
/usr/bin/python3 - <<'PY' && ok || bad "final models"
import json
s = json.load(open("ders/report/summary.json"))
f = {x["variant"]: x for x in s["final_models"]}
assert list(f) == ["dense", "vanilla", "sm", "lm", "drop", "q2", "svd"], list(f)
for name, x in f.items():
    for k in ("params", "expert_bytes", "model_bytes", "file_bytes", "val_loss_A", "val_loss_B", "peak_rss_bytes"):
        assert x[k] is not None and x[k] > 0, (name, k, x[k])
    assert x["forgetting/m_ex"] is not None, name
# DeRS stores less than the vanilla experts; compressions too; the upcycled experts stay near the FFN
for name in ("sm", "lm", "drop", "q2", "svd"):
    assert f[name]["expert_bytes"] < f["vanilla"]["expert_bytes"], name
assert 0.5 < f["vanilla"]["cosine/to_dense_mean"] <= 1.0, f["vanilla"]["cosine/to_dense_mean"]
for name in ("drop", "q2", "svd"):
    assert 0 < f[name]["compress/total/rel_error_mean"] < 1, (name, f[name]["compress/total/rel_error_mean"])
# a compression only approximates: its losses are near, but not all equal to, vanilla's
assert all(abs(f[n]["val_loss_B"] - f["vanilla"]["val_loss_B"]) < 0.5 for n in ("drop", "q2", "svd"))
m = {x["method"]: x for x in s["methods"]}
assert m["sm"]["params_trainable"] < m["vanilla"]["params_trainable"], "DeRS-SM trains fewer parameters"
# the dense baseline: its FFN is the frontier's dense point, smaller than any set of 4 experts
assert 0 < f["dense"]["expert_bytes"] < f["sm"]["expert_bytes"], f["dense"]["expert_bytes"]
assert f["dense"]["cosine/to_dense_mean"] is None
# the experts' cosine over training: every evaluation of an upcycled run, none of the dense run
def cosines(run):
    return [json.loads(l).get("expert_cosine") for l in open(f"ders/{run}/seed_3/metrics.jsonl")]
c = [x for x in cosines("vanilla") if x]
assert len(c) >= 2 and all(0.5 < x["to_dense_mean"] <= 1 + 1e-9 for x in c), c
assert c[0]["to_dense_mean"] >= c[-1]["to_dense_mean"] - 1e-6, c  # the copies move away, not back
assert not any(cosines("dense")), "a dense run logs no expert cosine"
PY
grep -q "### Against the dense baseline" ders/report/summary.md &&
  grep -q "Upcycling over dense training on B\*\*: vanilla against dense: one seed, no interval" ders/report/summary.md &&
  grep -q "^- sm (.*): B .* against dense; B .* against vanilla at [0-9]*% of its experts' bytes" ders/report/summary.md &&
  ok || bad "the dense baseline's reading: $(grep -A12 'Against the dense' ders/report/summary.md)"
grep -q "## Final models" ders/report/summary.md && ok || bad "final-model table"
# a compression stopped after its model was written but before compress.json (as an older
# moelab could leave it) is done again on the next start, not read; a compression leaves no
# hidden folder behind
rm ders/compress/drop/seed_3/model/compress.json ders/compress/drop/seed_3/eval.json
if "$moelab" ct ders.toml --methods vanilla --no-report >redo.log 2>&1; then ok; else bad "a half-written compression: $(tail -1 redo.log)"; fi
grep -q "== compressing .*(drop)" redo.log && ! grep -q "(q2)" redo.log &&
  [ -s ders/compress/drop/seed_3/model/compress.json ] && [ -s ders/compress/drop/seed_3/eval.json ] &&
  ok || bad "a half-written compression was not done again"
[ -z "$(ls -A ders/compress/*/seed_3 | grep '^\.')" ] && ok || bad "a compression left a hidden folder"
# a DeRS run stopped after step 3 resumes to the same bits (positions, values, optimizer)
cp ders/sm/seed_3/step_00000006/model.safetensors sm_end.safetensors
rm -rf ders/sm/seed_3/step_00000006
if "$moelab" ct ders.toml --methods sm --no-report >resume.log 2>&1; then ok; else bad "DeRS resume: $(tail -1 resume.log)"; fi
grep -q "sm/seed_3.*(resuming)" resume.log && cmp -s sm_end.safetensors ders/sm/seed_3/step_00000006/model.safetensors &&
  ok || bad "a resumed DeRS-SM run differs from the uninterrupted one"
cfg=$(/usr/bin/python3 -c "import json; c=json.load(open('ders/lm/upcycled_s3/config.json')); print(c['moe_layers'], c['ders']['delta'])")
[ "$cfg" = "[1] lowrank" ] && ok || bad "every-other low-rank upcycle config: $cfg"
variant() { sed "$2" ders.toml >"$1.toml"; }
variant upbad 's/upcycle = { experts = 4, top_k = 1 }/upcycle = { experts = 1, top_k = 1 }/'
expect_error "upcycle to one expert" "upbad\.toml: method 'vanilla': .*experts" "$moelab" ct upbad.toml
variant cfrom 's/^from = "vanilla"$/from = "nobody"/'
expect_error "compress from an unknown method" "cfrom\.toml: 'ct\.compress\[0\]\.from' \"nobody\" is not the name of a method" "$moelab" ct cfrom.toml
variant cdelta 's/^delta = "quant:2"$/delta = "quant:9"/'
expect_error "compress bits" "cdelta\.toml: 'ct\.compress\[1\]\.delta'.*1\.\.8" "$moelab" ct cdelta.toml

# ---- two processes (Open MPI): the same study as one process with the same grad_accum, to
# float rounding; rank 0 alone writes the study's files
if mpirun --version 2>&1 | grep -q "Open MPI"; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export OMPI_MCA_btl_vader_single_copy_mechanism=none
  # Open MPI never frees some of its own memory (components it loads at start): leaks under
  # mpirun are not ours to see, so a sanitized build checks them in one process only.
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
  for d in ct1p ctmpi; do
    sed -e "s#^dir = \"ct\"#dir = \"$d\"#" -e 's/^\[train\]$/[train]\ngrad_accum = 2/' ct.toml >$d.toml
  done
  "$moelab" ct ct1p.toml --methods full,lora --no-report >ct1p.log 2>&1 || bad "ct, 1 process: $(tail -1 ct1p.log)"
  timeout 120 mpirun --oversubscribe -np 2 "$moelab" ct ctmpi.toml --methods full,lora --no-report \
    >ctmpi.log 2>&1 || bad "ct, 2 processes: $(tail -3 ctmpi.log)"
  for m in full lora; do
    python3 - ct1p/$m/seed_3/metrics.jsonl ctmpi/$m/seed_3/metrics.jsonl <<'PY' && ok || bad "ct $m: 2 processes differ from 1"
import json, sys
a, b = ([json.loads(l) for l in open(f) if '"loss"' in l] for f in sys.argv[1:])
assert len(a) == len(b) > 0, (len(a), len(b))
assert max(abs(x["loss"] - y["loss"]) / x["loss"] for x, y in zip(a, b)) < 1e-6
PY
    [ -s ctmpi/$m/seed_3/final_eval.json ] && ok || bad "ct $m, 2 processes: no final_eval.json"
  done
  ls ctmpi/*/seed_3/.experiment.check.* >/dev/null 2>&1 && bad "ct, 2 processes: checking files left" || ok
fi

finish "ct test"
