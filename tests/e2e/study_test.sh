#!/usr/bin/env bash
# moelab run + moelab report end to end, in miniature: a dense model and its iso-total MoE
# variants (E = 4 and 8, top-2) on a generated corpus, A then B, one shared evaluation set; the
# report's files and fields exist, M_ex right after A is 1 by construction, an interrupted study
# continues where it stopped, and bad input fails with one line.
set -u
moelab=$1
source "$(dirname "$0")/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=2

titles_data "$moelab" 48
{
  tiny_config run.dir=study "${titles_run[@]}"
  cat <<'TOML'
[[phases]]
name = "B"
subset = "B"
steps = 15
[checkpoint]
every = 10
keep_last = 2
[eval]
every = 10
batches = 2
forgetting_every = 5
[study]
experts = [1, 4, 8]
top_k = 2
entities = "ents.tsv"
top = 100
bottom = 100
prompt = 8
target = 8
max_per_entity = 4
TOML
} >exp.toml

# ---- a study interrupted in its second variant, then continued
"$moelab" run exp.toml --experts 1,4 --no-report >run1.log 2>&1 || bad "run (E=1,4): $(tail -1 run1.log)"
[ -f study/evalset.jsonl ] && [ -f study/E1_s5/run.json ] && [ -f study/E4_s5/metrics.jsonl ] && ok ||
  bad "study folders"
# a checkpoint kept, the last one removed: the variant resumes; the finished one is skipped
rm -rf study/E4_s5/step_00000045
if "$moelab" run exp.toml >run2.log 2>&1; then ok; else bad "run: $(tail -1 run2.log)"; fi
grep -q "E1_s5.*(done)" run2.log && ok || bad "finished variant not skipped"
grep -q "E4_s5.*(resuming)" run2.log && ok || bad "stopped variant not resumed"
[ "$(grep -c '"step":45' study/E4_s5/metrics.jsonl)" = 1 ] && ok || bad "resumed metrics duplicated"

# ---- the report
for f in summary.md summary.json m_ex.png m_ex.svg m_in.png m_in.svg loss.png loss.svg lr.png lr.svg \
  expert_load_E4.png expert_load_E8.png m_ex.gp; do
  [ -s "study/report/$f" ] && ok || bad "report file $f missing"
done
/usr/bin/python3 - study/report/summary.json <<'PY' && ok || bad "report fields"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["switch_step"] == 30, s["switch_step"]
models = {m["experts"]: m for m in s["models"]}
assert sorted(models) == [1, 4, 8], sorted(models)
for e, m in models.items():
    for k in ("params_total", "params_active", "train_flops_per_token", "tokens", "final_train_loss",
              "final_val_loss", "evalset_kept", "m_ex_after_A", "m_ex_lowest_in_B", "m_ex_lowest_step",
              "final_m_ex", "final_m_in", "tokens_per_s"):
        assert k in m and m[k] is not None, (e, k)
    assert m["m_ex_after_A"] == 1.0, (e, m["m_ex_after_A"])   # by construction
    assert m["evalset_kept"] > 0, (e, "kept")
    assert m["tokens"] == 45 * 4 * 64, m["tokens"]
# equal total parameters up to the router and expert biases; fewer active with more experts
assert abs(models[8]["params_total"] / models[1]["params_total"] - 1) < 0.05
assert models[8]["params_active"] < models[4]["params_active"] < models[1]["params_active"]
PY
# the shared set: the samples every run recalled after A, no larger than any run's own set, and
# M_ex on it for every model
/usr/bin/python3 - study/report/summary.json study/*/metrics.jsonl <<'PY' && ok || bad "shared set"
import json, sys
s = json.load(open(sys.argv[1]))
masks = []
for path in sys.argv[2:]:
    for line in open(path):
        recalled = json.loads(line).get("forgetting", {}).get("recalled")
        if recalled is not None:
            masks.append(recalled)
assert len(masks) == 3 and len({len(m) for m in masks}) == 1, [len(m) for m in masks]
shared = sum(all(m[i] == "1" for m in masks) for i in range(len(masks[0])))
assert s["shared_samples"] == shared and s["shared_none"] is None, (s["shared_samples"], shared)
assert all(shared <= m["evalset_kept"] for m in s["models"])
assert all(m["final_m_ex_shared"] is not None for m in s["models"]) or shared == 0
PY
[ -s study/report/m_ex_vs_b.gp ] && grep -q "shared samples" study/report/summary.md && ok ||
  bad "M_ex against B loss figure, or the shared-set reading"
grep -q "M_ex right after A | 1.000 | 1.000 | 1.000" study/report/summary.md && ok || bad "summary table"
grep -q "set arrow from 30" study/report/m_ex.gp && ok || bad "A -> B switch not marked"

# ---- a dense control with the active parameters of the E=4 top-2 variant: FFN 2 x I/4
if "$moelab" study forgetting exp.toml --experts 1,4 --set run.dir=controls --set study.dense_active=true --set eval.min_recalled=1 \
  >controls.log 2>&1; then ok; else bad "dense controls: $(tail -1 controls.log)"; fi
/usr/bin/python3 - controls <<'PY' && ok || bad "dense control"
import json, sys
d = sys.argv[1]
dense = json.load(open(d + "/E1_s5/run.json"))["model"]["intermediate_size"]
control = json.load(open(d + "/D4_s5/run.json"))["model"]["intermediate_size"]
assert control == 2 * dense // 4, (control, dense)
s = json.load(open(d + "/report/summary.json"))
m = {x["model"]: x for x in s["models"]}
assert sorted(m) == ["MoE E=4 top-2", "dense (E=1)", "dense, active as E=4 top-2"], sorted(m)
c, moe = m["dense, active as E=4 top-2"], m["MoE E=4 top-2"]
assert c["matches"] == 4 and c["experts"] == 1, c
# equal active parameters but for the router (d x E weights and E biases per layer)
assert 0 < moe["params_active"] - c["params_active"] < 0.05 * c["params_active"], (moe["params_active"], c["params_active"])
PY
grep -q "MoE E=4 top-2 against dense, active as E=4 top-2 on M_ex" controls/report/summary.md && ok ||
  bad "the MoE model against its dense control"

# ---- seeds: two seeds of one variant are averaged, with a spread
if "$moelab" run exp.toml --experts 4 --seeds 5,6 --set run.dir=seeds >seeds.log 2>&1; then ok; else bad "seeds: $(tail -1 seeds.log)"; fi
/usr/bin/python3 -c "
import json; m = json.load(open('seeds/report/summary.json'))['models'][0]
assert m['seeds'] == [5, 6] and 'sd' in m['final_train_loss'], m" && ok || bad "seed aggregation"
# per seed, the shared set is the samples every model of that seed recalled
"$moelab" report seeds study/E1_s5 --out perseed >/dev/null 2>&1 || bad "report over seeds and a run"
/usr/bin/python3 - perseed/summary.json seeds/E4_s5/metrics.jsonl study/E1_s5/metrics.jsonl \
  seeds/E4_s6/metrics.jsonl <<'PY' && ok || bad "per-seed shared sets"
import json, sys
def mask(path):
    for line in open(path):
        recalled = json.loads(line).get("forgetting", {}).get("recalled")
        if recalled is not None:
            return recalled
s = json.load(open(sys.argv[1]))
e4s5, e1s5, e4s6 = (mask(p) for p in sys.argv[2:])
both5 = sum(a == b == "1" for a, b in zip(e4s5, e1s5))
assert s["shared_samples_by_seed"] == {"5": both5, "6": e4s6.count("1")}, s["shared_samples_by_seed"]
assert s["shared_samples"] == sum(a == b == c == "1" for a, b, c in zip(e4s5, e1s5, e4s6))
PY
grep -q "samples all of its seed recalled ($(/usr/bin/python3 -c "import json; d=json.load(open('perseed/summary.json'))['shared_samples_by_seed']; print(' / '.join(str(d[k]) for k in ('5','6')))"))" perseed/summary.md &&
  ok || bad "per-seed shared row"
# a report over single run folders works too
"$moelab" report study/E1_s5 study/E8_s5 --out two >/dev/null 2>&1 && [ -s two/summary.md ] && ok || bad "report of run folders"

# ---- bad input: one line naming the problem
expect_error "report of a plain folder" "neither a study folder" "$moelab" report corpus
expect_error "MoE base" "must be the dense base" "$moelab" run exp.toml --set model.num_local_experts=4 --set model.num_experts_per_tok=2 --set run.dir=x
expect_error "zero experts" "study\.experts" "$moelab" run exp.toml --set "study.experts=[0]" --set run.dir=x
expect_error "unknown study key" "unknown key 'study\.expert'" "$moelab" run exp.toml --set study.expert=3 --set run.dir=x

# ---- no forgetting metrics: the report says why, per run
# an evaluation set too small to measure forgetting on: the trainer stops after A with one line
# (a set of 4 candidates: fewer than eval.min_recalled = 5 can be recalled); the study records
# the run as failed, and ends with exit status 3
"$moelab" run exp.toml --experts 1 --no-report --set run.dir=few --set study.max_samples=4 >few.out 2>few.err
[ $? = 3 ] && grep -q "^== E1_s5 stopped at step 30 of 45: .*fewer than eval.min_recalled = 5" few.err &&
  tail -1 few.err | grep -q "1 of 1 runs failed (E1_s5); exit status 3" && ok || bad "too few recalled: $(tail -1 few.err)"
"$moelab" report few --no-plots >/dev/null 2>&1 &&
  grep -Eq "Failed: \`few/E1_s5\` \(dense \(E=1\), seed 5\) stopped at step 30 of 45: .*after phase A the model recalls [0-4] of the 4 evaluation samples" few/report/summary.md &&
  ok || bad "report: cause of a set too small"
# no evaluation set at all
"$moelab" run exp.toml --experts 1 --set run.dir=noev --set 'study.entities=""' --set phases.1.steps=5 \
  --no-report >noev.log 2>&1 || bad "run without entities: $(tail -1 noev.log)"
"$moelab" report noev --no-plots >/dev/null 2>&1 && grep -q "no evaluation set was given" noev/report/summary.md &&
  ok || bad "report: cause of no evaluation set"
# a run that has not reached the end of A
mkdir -p early && cp study/E1_s5/run.json early/ && grep -E '"step":(5|10|15|20|25),' study/E1_s5/metrics.jsonl >early/metrics.jsonl
"$moelab" report early --no-plots >/dev/null 2>&1 &&
  grep -q "B has not started: the run is at step 25 and A ends at step 30; run the study" early/report/summary.md &&
  ok || bad "report: cause of a run before the switch"

finish "study test"
