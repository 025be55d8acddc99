#!/usr/bin/env bash
# The studies' edges end in one line and a correct report, never in an error after training:
#  1. a base that recalls none of the evaluation samples, with eval.min_recalled = 0: M_ex and M_in
#     are undefined (null in JSON, n/a in tables) and the report says why (moelab ct and run);
#  2. a method whose loss becomes non-finite: recorded as diverged (step, reason), the others go
#     on, the report leaves it out of its numbers (moelab ct);
#  3. a seed whose run fails: the others go on, the report lists it and its statistics are over
#     the seeds that finished, exit status 3 after the report (moelab run);
#  4. a study resumed after its settings changed: refused in one line naming the first key that
#     differs, before any training; --restart discards the runs (moelab run, ct, sweep), and only
#     them (a record edited to name the study's folder itself, or what is outside it, removes
#     nothing there).
set -u
moelab=$1
source "$(dirname "$0")/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=2

titles_data "$moelab" 24

# the runs of the base and of the forgetting study: a one-layer model, batches of 2, a constant
# rate 1e-3 after one warm-up step, 2 steps on A
edges=(run.seed=5 run.log_every= run.peak_gflops=100 model.vocab_size=400 model.num_hidden_layers=1
  model.sliding_window=16 train.batch_size=2 schedule.kind=constant schedule.max_lr=1e-3 schedule.min_lr=
  schedule.decay_steps= schedule.warmup_steps=1 phases.steps=2)
# the sections the ct and sweep studies share with them
common='[data]
dir = "data"
seq_len = 32
[train]
batch_size = 2'

# ---- a base trained 2 steps on A: it recalls none of the entities
tiny_config run.dir=base "${edges[@]}" >base.toml
"$moelab" train base.toml >base.log 2>&1 || { echo "FAIL: base: $(tail -1 base.log)"; exit 1; }

cat >ct.toml <<TOML
[run]
dir = "ct"
seed = 1
threads = 2
peak_gflops = 100
$common
[schedule]
kind = "constant"
max_lr = 1e-3
warmup_steps = 1
[eval]
every = 3
batches = 1
forgetting_every = 3
min_recalled = 0
[ct]
base = "base/step_00000002"
original = "A"
new = "B"
steps = 3
entities = "ents.tsv"
top = 100
bottom = 100
prompt = 8
target = 8
max_per_entity = 2
[[ct.methods]]
name = "full"
kind = "full"
[[ct.methods]]
name = "boom"
kind = "lora"
lora = { rank = 2, alpha = 1e30, targets = ["self_attn"] }
TOML

# ---- 1. ct: the base recalls nothing; min_recalled = 0 goes on, and so does the measuring
"$moelab" ct ct.toml --methods full --no-plots >ct1.out 2>ct1.err
rc=$?
[ $rc = 0 ] && ok || bad "ct with an empty recalled set: exit $rc: $(tail -1 ct1.err)"
/usr/bin/python3 - <<'PY' && ok || bad "ct: an empty recalled set in final_eval.json and summary.json"
import json
f = json.load(open("ct/full/seed_1/final_eval.json"))["forgetting"]
assert f["samples"] == 0 and f["m_ex"] is None and f["m_in"] is None, f
m = json.load(open("ct/report/summary.json"))["methods"][0]
assert m["evalset_kept"] == 0 and m["final_m_ex"] is None and m["final_m_in"] is None, m
fm = json.load(open("ct/report/summary.json"))["final_models"][0]
assert fm["forgetting/m_ex"] is None, fm
PY
grep -q "| M_ex at the end | n/a |" ct/report/summary.md && ok || bad "ct: M_ex not n/a in the table"
grep -q "No forgetting metrics for \`ct/full/seed_1\`: at the start the model recalled none" ct/report/summary.md &&
  grep -q "M_ex and M_in are n/a for full: the set of samples the base recalled is empty" ct/report/summary.md &&
  ok || bad "ct: the report does not say why M_ex is undefined"

# ---- 2. ct: a method diverges (its adapters scaled by 1e30); the study goes on and says so
"$moelab" ct ct.toml --no-plots >ct2.out 2>ct2.err
rc=$?
[ $rc = 3 ] && ok || bad "ct with a diverging method: exit $rc, expected 3: $(tail -1 ct2.err)"
grep -Eq "^== boom/seed_1 diverged at step [0-9]+ of 3: step [0-9]+: the (loss|gradient norm) is not finite" ct2.err &&
  ok || bad "ct: no one-line record of the divergence: $(grep boom ct2.err)"
tail -1 ct2.err | grep -q "moelab ct: 1 of 2 runs failed (boom/seed_1); the report lists why: ct/report/summary.md; exit status 3" &&
  ok || bad "ct: last line: $(tail -1 ct2.err)"
/usr/bin/python3 - <<'PY' && ok || bad "ct: the diverged run in failed.json and summary.json"
import json
f = json.load(open("ct/boom/seed_1/failed.json"))
assert f["nonfinite"] and 1 <= f["step"] <= 3 and f["total_steps"] == 3 and "not finite" in f["reason"], f
s = json.load(open("ct/report/summary.json"))
assert [m["method"] for m in s["methods"]] == ["full"], s["methods"]   # left out of the numbers
assert [x["run"] for x in s["failed"]] == ["boom/seed_1"] and s["failed"][0]["nonfinite"], s["failed"]
assert [x["variant"] for x in s["final_models"]] == ["full"], s["final_models"]
PY
grep -q "Note: \`boom/seed_1\` diverged at step .* Left out of the tables, the figures and the comparisons." ct/report/summary.md &&
  ! grep -q "boom" ct/report/tradeoff.gp && ok || bad "ct report: the diverged run not stated, or compared"

# ---- 4. ct: settings changed since the start are refused before anything runs
sed 's/^max_lr = 1e-3$/max_lr = 2e-3/' ct.toml >ct_lr.toml
expect_error "ct: changed schedule" "ct/settings\.json: the study in ct was started with schedule\.max_lr = 0\.001, this start has 0\.002; .*--restart" \
  "$moelab" ct ct_lr.toml --no-report
sed 's/alpha = 1e30/alpha = 4/' ct.toml >ct_alpha.toml
expect_error "ct: changed method" "started with ct\.methods\[boom\]\.lora\.alpha = 1e\+30, this start has 4;" \
  "$moelab" ct ct_alpha.toml --no-report
[ -f ct/boom/seed_1/failed.json ] && ok || bad "ct: a refused start touched the runs"
# the same settings, a method added: no refusal (--methods left it out here; nothing to train)
"$moelab" ct ct.toml --methods full --no-report >ct3.log 2>&1 && grep -q "full/seed_1.*(done)" ct3.log &&
  ok || bad "ct: an unchanged resume refused: $(tail -1 ct3.log)"
"$moelab" ct ct_alpha.toml --methods boom --restart --no-plots >ct4.log 2>&1 && [ ! -d ct/full ] &&
  [ ! -e ct/boom/seed_1/failed.json ] && grep -q '"failed": \[\]' ct/report/summary.json &&
  ok || bad "ct --restart: $(tail -1 ct4.log)"
# --restart with a ct.json edited to name the study's own folder: its other files stay
/usr/bin/python3 - <<'PY'
import json
j = json.load(open("ct/ct.json"))
j["methods"] += [{"name": "."}, {"name": ""}, {"name": ".."}]
json.dump(j, open("ct/ct.json", "w"))
PY
echo keep >ct/notes.txt
"$moelab" ct ct.toml --methods full --restart --no-report >ct5.log 2>&1 && [ -f ct/notes.txt ] && [ -f ct.toml ] &&
  [ ! -d ct/boom ] && grep -q -- "--restart: '\.' (listed by the earlier study) is not a folder's name" ct5.log &&
  ok || bad "ct --restart with '.' in ct.json: $(tail -1 ct5.log)"

# ---- 1 and 3. moelab run: seed 2's run fails (a broken checkpoint), seed 1 recalls nothing
{
  tiny_config run.dir=study "${edges[@]}"
  cat <<TOML
[[phases]]
name = "B"
subset = "B"
steps = 2
[eval]
every = 2
batches = 1
forgetting_every = 2
min_recalled = 0
[study]
experts = [1]
seeds = [1, 2]
entities = "ents.tsv"
top = 100
bottom = 100
prompt = 8
target = 8
max_per_entity = 2
TOML
} >exp.toml
mkdir -p study/E1_s2/step_00000002 && echo '{}' >study/E1_s2/step_00000002/trainer_state.json
"$moelab" run exp.toml >run1.out 2>run1.err
rc=$?
[ $rc = 3 ] && ok || bad "run with a failing seed: exit $rc, expected 3: $(tail -1 run1.err)"
grep -q "^== E1_s2 stopped at step 2 of 4: .*; the study goes on with its other runs" run1.err &&
  tail -1 run1.err | grep -q "moelab run: 1 of 2 runs failed (E1_s2); the report lists why: study/report/summary.md; exit status 3" &&
  ok || bad "run: the failure's lines: $(grep E1_s2 run1.err | tail -1) / $(tail -1 run1.err)"
/usr/bin/python3 - <<'PY' && ok || bad "run: summary.json"
import json
s = json.load(open("study/report/summary.json"))
m = s["models"][0]
assert m["seeds"] == [1] and m["seeds_failed"] == [2], m
assert m["evalset_kept"] == 0 and m["final_m_ex"] is None and m["m_ex_after_A"] is None, m
assert [(f["seed"], f["step"], f["total_steps"]) for f in s["failed"]] == [(2, 2, 4)], s["failed"]
assert s["failed"][0]["dir"].endswith("E1_s2") and s["failed"][0]["reason"], s["failed"]
PY
grep -q "| seeds | \[1\] (n = 1; \[2\] failed) |" study/report/summary.md &&
  grep -q "Failed: \`study/E1_s2\` (dense (E=1), seed 2) stopped at step 2 of 4: " study/report/summary.md &&
  grep -q "The numbers of dense (E=1) are over the n = 1 of its 2 seeds that finished." study/report/summary.md &&
  ok || bad "run report: the failed seed"
grep -q "| M_ex at the end | n/a |" study/report/summary.md &&
  grep -q "study/E1_s1\`: after A the model recalled none of .* M_ex, M_in are undefined (n/a)" study/report/summary.md &&
  ok || bad "run report: an empty recalled set"

# an evaluation set with no samples at all (the empty set E1_s1 recalled) and eval.min_recalled
# above 0: refused before training, not after A
cp study/E1_s1/evalset.frozen.jsonl empty.jsonl
expect_error "run: an empty evaluation set" "empty\.jsonl: the evaluation set has no samples, fewer than eval\.min_recalled = 5 can be recalled.*stopped before training" \
  "$moelab" train exp.toml --set run.dir=emptyset --set eval.evalset=empty.jsonl --set eval.min_recalled=5
[ ! -e emptyset/metrics.jsonl ] && ok || bad "an empty evaluation set: the run trained"

# ---- 4. moelab run: a --set that changes a run's settings is refused; --restart starts again
expect_error "run: changed setting" "study/settings\.json: the study in study was started with schedule\.max_lr = 0\.001, this start has 0\.002; .*run\.dir.*--restart" \
  "$moelab" run exp.toml --set schedule.max_lr=2e-3
[ -f study/E1_s2/failed.json ] && ok || bad "run: a refused start touched the runs"
"$moelab" run exp.toml --seeds 1 --no-report >run2.log 2>&1 && grep -q "E1_s1.*(done)" run2.log &&
  ok || bad "run: another seed list refused: $(tail -1 run2.log)"
"$moelab" run exp.toml --set schedule.max_lr=2e-3 --restart >run3.log 2>&1 && grep -q -- "--restart: 2 run(s)" run3.log &&
  grep -q '"schedule.max_lr": 0.002' study/settings.json && grep -q '"failed": \[\]' study/report/summary.json &&
  ok || bad "run --restart: $(tail -1 run3.log)"
# --restart with a study.json edited to name the study's folder or what lies outside it: those
# stay, with a note; the runs it lists go
/usr/bin/python3 - <<'PY'
import json
j = json.load(open("study/study.json"))
j["variants"] += [{"dir": d} for d in ("", ".", "..", "../outside", "E1_s1/..")]
json.dump(j, open("study/study.json", "w"))
PY
mkdir -p outside && echo keep >outside/notes.txt && echo keep >study/notes.txt
"$moelab" run exp.toml --set schedule.max_lr=2e-3 --seeds 1 --restart --no-report >run4.log 2>&1 &&
  [ -f study/notes.txt ] && [ -f outside/notes.txt ] && [ -f exp.toml ] && [ ! -d study/E1_s2 ] &&
  [ "$(grep -c "is not a folder's name; nothing removed for it" run4.log)" = 5 ] &&
  ok || bad "run --restart with '', '.', '..' in study.json: $(tail -1 run4.log)"

# ---- 4. moelab sweep run: the same refusal
cat >base.json <<'JSON'
{"vocab_size": 400, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
 "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 32, "sliding_window": 16,
 "max_position_embeddings": 32}
JSON
cat >sweep.toml <<TOML
[run]
dir = "sw"
seed = 3
threads = 2
peak_gflops = 100
$common
[schedule]
max_lr = 1e-3
warmup_steps = 1
[sweep]
base = "base.json"
subset = "A"
budgets = [2e7]
sizes = [32]
max_epochs = 4
TOML
"$moelab" sweep run sweep.toml >sw1.log 2>&1 && ok || bad "sweep: $(tail -1 sw1.log)"
sed 's/^max_lr = 1e-3$/max_lr = 2e-3/' sweep.toml >sweep_lr.toml
expect_error "sweep: changed setting" "sw/settings\.json: the study in sw was started with schedule\.max_lr = 0\.001, this start has 0\.002" \
  "$moelab" sweep run sweep_lr.toml
"$moelab" sweep run sweep.toml >sw2.log 2>&1 && grep -q "0 run here, 1 done before" sw2.log && ok || bad "sweep: an unchanged resume: $(tail -1 sw2.log)"

# ---- 2. moelab sweep run: a job that diverges is recorded, left out of sweep.csv, exit status 3
sed 's/^dir = "sw"$/dir = "swnan"/; s/^max_lr = 1e-3$/max_lr = 1e30/' sweep.toml >swnan.toml
"$moelab" sweep run swnan.toml >swn.out 2>swn.err
rc=$?
[ $rc = 3 ] && grep -q '"nonfinite": true' swnan/C*/failed.json && [ "$(wc -l <swnan/sweep.csv)" = 1 ] &&
  tail -1 swn.err | grep -q "moelab sweep: 1 job(s) failed (C2e+07_S0_d32_s3); each has failed.json, sweep.csv leaves them out; exit status 3" &&
  ok || bad "sweep with a diverging job: exit $rc: $(tail -1 swn.err)"

finish "study edges test"
