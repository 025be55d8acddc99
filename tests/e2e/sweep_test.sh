#!/usr/bin/env bash
# moelab sweep in miniature: a grid of 2 budgets x 2 sparsities x 2 widths of a tiny model.
# The plan's FLOPs accounting is checked run by run against `moelab model info`; two workers
# share the queue (no job run twice, none lost); a worker killed inside a job leaves it to the
# next one, which resumes it; sweep.csv collects every run; --slurm writes a job array; bad
# input (a budget too small for one step, a sparsity with no integer E, too many epochs) is one
# line.
set -u
moelab=$1
source "$(dirname "$0")/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=1

verses_data "$moelab" 40 10 320 13
cat >base.json <<'JSON'
{"vocab_size": 320, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
 "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 32, "sliding_window": 8,
 "max_position_embeddings": 32}
JSON
cat >sweep.toml <<'TOML'
[run]
dir = "sw"
seed = 3
threads = 1
log_every = 5
peak_gflops = 100
[data]
dir = "data"
seq_len = 32
[train]
batch_size = 4
[schedule]
max_lr = 3e-3
warmup_steps = 2
[eval]
every = 5
batches = 2
[checkpoint]
every = 4
[sweep]
base = "base.json"
subset = "A"
budgets = [2e9, 4e9]
sparsities = [0, 0.5]
top_k = 1
sizes = [32, 48]
max_epochs = 4
TOML

# ---- the plan: every run's FLOPs per token as model info counts them, D = steps x 128 tokens
"$moelab" sweep plan sweep.toml >plan.txt 2>plan.err && ok || bad "plan: $(tail -1 plan.err)"
[ "$(grep -c '^C' plan.txt)" = 8 ] && grep -q "^8 runs, about" plan.txt && ok || bad "plan lists 8 runs: $(cat plan.txt)"
/usr/bin/python3 - "$moelab" <<'PY' && ok || bad "plan FLOPs accounting"
import json, re, subprocess, sys
moelab = sys.argv[1]
base = json.load(open("base.json"))
rows = [l.split() for l in open("plan.txt") if l.startswith("C")]
for r in rows:
    m = re.match(r"C([0-9.e+]+)_S([0-9.]+)_d(\d+)_s3", r[0])
    C, S, d = float(m.group(1)), float(m.group(2)), int(m.group(3))
    E = round(1 / (1 - S))
    cfg = dict(base, hidden_size=d, num_attention_heads=d // 16, num_key_value_heads=max(1, d // 32),
               intermediate_size=32 * d // 32, num_local_experts=E, num_experts_per_tok=1,
               ffn_type="moe" if E > 1 else "dense")
    json.dump(cfg, open("m.json", "w"))
    info = json.loads(subprocess.run([moelab, "model", "info", "m.json", "--seq", "32", "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    fpt = info["train_flops_per_token"]
    steps = int(r[7])
    assert steps == int(C / fpt / 128), (r, fpt)
    assert int(E) == int(r[4]), r
PY

# ---- the balancing as an axis: the loss coefficient and the loss-free bias rate
sed 's/^max_epochs = 4$/max_epochs = 4\naux_coefs = [0, 0.01]\nbias_rates = [0, 0.001]/' sweep.toml >axes.toml
"$moelab" sweep plan axes.toml --no-measure >axes.txt 2>&1 && [ "$(grep -c '^C' axes.txt)" = 32 ] &&
  grep -q "^C2e+09_S0.5_d32_aux0_bias0.001_s3 " axes.txt && ok || bad "balancing axes: $(tail -2 axes.txt)"

# ---- two workers share the queue
"$moelab" sweep run sweep.toml >w1.log 2>&1 &
p1=$!
"$moelab" sweep run sweep.toml >w2.log 2>&1
wait $p1
n1=$(grep -c "^== job" w1.log) n2=$(grep -c "^== job" w2.log)
[ $((n1 + n2)) = 8 ] && [ "$n1" -ge 1 ] && [ "$n2" -ge 1 ] && ok || bad "two workers ran $n1 + $n2 jobs of 8"
dups=$(cat w1.log w2.log | grep "^== job" | sort | uniq -d | wc -l)
[ "$dups" = 0 ] && ok || bad "a job ran twice"
for d in sw/C*; do
  [ -d "$d" ] || continue
  [ "$(grep -c "\"step\":5," "$d/metrics.jsonl")" = 1 ] || bad "$d: step 5 logged more than once"
done
[ "$(tail -n +2 sw/sweep.csv | wc -l)" = 8 ] && ok || bad "sweep.csv has $(tail -n +2 sw/sweep.csv | wc -l) of 8 runs"
head -1 sw/sweep.csv | grep -q "params,active_params,params_nonembed,active_params_nonembed,tokens,flops,loss" &&
  ok || bad "sweep.csv header"
# N without the embedding and the head, as `moelab model info` counts each job's model
/usr/bin/python3 - "$moelab" <<'PY' && ok || bad "non-embedding counts against model info"
import csv, json, subprocess, sys
rows = list(csv.DictReader(open("sw/sweep.csv")))
assert len(rows) == 8
for r in rows:
    info = json.loads(subprocess.run([sys.argv[1], "model", "info", f"sw/{r['job']}/model.json", "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    m = json.load(open(f"sw/{r['job']}/model.json"))
    assert int(r["params"]) == info["params_total"], r
    assert int(r["params_nonembed"]) == info["params_total"] - info["params_embedding"] - info["params_unembedding"], r
    assert int(r["active_params_nonembed"]) == info["params_active"] - m["vocab_size"] * m["hidden_size"], r
    assert 0 < int(r["params_nonembed"]) < int(r["params"]), r
PY
# --collect rewrites sweep.csv from the finished runs and runs nothing
rm sw/sweep.csv && "$moelab" study sweep sweep.toml --collect >collect.log 2>&1 &&
  [ "$(tail -n +2 sw/sweep.csv | wc -l)" = 8 ] && ! grep -q "^== job" collect.log && ok || bad "--collect: $(tail -2 collect.log)"

# ---- the results feed moelab fit: 8 runs fit the Chinchilla form, not the 10-coefficient law
"$moelab" fit sw/sweep.csv --law chinchilla --no-holdout --small-grid --bootstrap 3 --out fit --no-plots >fit.log 2>&1 &&
  grep -q "chinchilla law on 8 runs .*N: non-embedding" fit.log && [ -s fit/fit.json ] && ok || bad "fit on the sweep: $(tail -2 fit.log)"
# the runs' own optima: 2 widths per curve are too few for a parabola, and the report says so
grep -q "fewer than 3 widths: no optimum" fit.log && /usr/bin/python3 -c "
import json; j = json.load(open('fit/fit.json'))
assert j['params'].startswith('non-embedding'), j['params']
assert [b['budget'] for b in j['isoflop']['budgets']] == [2e9, 4e9]
assert all('optimal_params' not in c for b in j['isoflop']['budgets'] for c in b['curves'])" && ok || bad "isoflop section"
"$moelab" fit sw/sweep.csv --law chinchilla --no-holdout --small-grid --bootstrap 0 --params total --no-plots >fitt.log 2>&1 &&
  grep -q "N: total" fitt.log && ok || bad "--params total: $(head -1 fitt.log)"
cut -d, -f1-11,14- sw/sweep.csv >old.csv
expect_error "--params nonembed without the columns" "old\.csv: line 1: --params nonembed needs the columns params_nonembed" \
  "$moelab" fit old.csv --params nonembed --no-plots
expect_error "too few runs for the sparsity law" "sw/sweep\.csv: the sparsity law has 10 coefficients and 8 runs to fit them: run a larger sweep" \
  "$moelab" fit sw/sweep.csv --out fit2 --no-plots

# ---- a worker killed inside a job: the next one resumes it
rm -rf sw2 && sed 's/^dir = "sw"/dir = "sw2"/; s/^budgets = .*/budgets = [4e9]/; s/^sizes = .*/sizes = [48]/; s/^sparsities = .*/sparsities = [0.5]/' sweep.toml >kill.toml
"$moelab" sweep run kill.toml >k1.log 2>&1 &
pk=$!
for i in $(seq 1 400); do ls -d sw2/*/step_* >/dev/null 2>&1 && break; sleep 0.02; done
kill -9 $pk 2>/dev/null
wait $pk 2>/dev/null
"$moelab" sweep run kill.toml >k2.log 2>&1 && grep -q "(resuming)" k2.log && [ "$(tail -n +2 sw2/sweep.csv | wc -l)" = 1 ] &&
  ok || bad "killed worker's job not resumed: $(tail -2 k2.log)"
"$moelab" sweep run kill.toml >k3.log 2>&1 && grep -q "0 run here, 1 done before" k3.log && ok || bad "finished job run again"

# ---- SLURM
"$moelab" sweep run sweep.toml --slurm >slurm.log 2>&1 && grep -q "#SBATCH --array=0-7" sw/sweep.slurm &&
  grep -q 'sweep run sweep.toml --job "$SLURM_ARRAY_TASK_ID"' sw/sweep.slurm && ok || bad "slurm script"
"$moelab" sweep run sweep.toml --job 3 >j.log 2>&1 && grep -q "1 done before" j.log && ok || bad "--job on a finished job"

# ---- the middle budget again under more seeds: the noise floor
sed 's/^max_epochs = 4$/max_epochs = 4\nrepeat_budget = 2e9\nrepeat_seeds = [4]/' sweep.toml >rep.toml
"$moelab" study sweep rep.toml --plan --no-measure >rep.txt 2>&1 && [ "$(grep -c '^C' rep.txt)" = 12 ] &&
  grep -q "^C2e+09_S0.5_d48_s4 " rep.txt && ! grep -q "^C4e+09_.*_s4 " rep.txt && ok || bad "repeat_seeds: $(tail -2 rep.txt)"
# widths added at one budget only
sed 's/^max_epochs = 4$/max_epochs = 4\nextra_budget = 2e9\nextra_sizes = [64]/' sweep.toml >extra.toml
"$moelab" study sweep extra.toml --plan --no-measure >extra.txt 2>&1 && [ "$(grep -c '^C' extra.txt)" = 10 ] &&
  grep -q "^C2e+09_S0.5_d64_s3 " extra.txt && ! grep -q "^C4e+09_.*_d64_" extra.txt && ok || bad "extra_sizes: $(tail -2 extra.txt)"
sed 's/^max_epochs = 4$/max_epochs = 4\nextra_budget = 2e9\nextra_sizes = [32]/' sweep.toml >extra2.toml
expect_error "an extra width already in sizes" "extra2\.toml: 'sweep\.extra_sizes' 32 is not a new hidden width" "$moelab" study sweep extra2.toml --plan --no-measure
sed 's/^max_epochs = 4$/max_epochs = 4\nrepeat_budget = 3e9\nrepeat_seeds = [4]/' sweep.toml >rep2.toml
expect_error "repeat_budget not a budget" "rep2\.toml: 'sweep\.repeat_budget' 3e\+09 is not one of 'sweep\.budgets'" "$moelab" study sweep rep2.toml --plan --no-measure
sed 's/^max_epochs = 4$/max_epochs = 4\nrepeat_budget = 2e9\nrepeat_seeds = [3]/' sweep.toml >rep3.toml
expect_error "repeat seed already run" "rep3\.toml: 'sweep\.repeat_seeds' seed 3 is already in 'sweep\.seeds'" "$moelab" study sweep rep3.toml --plan --no-measure

# ---- bad input
variant() { sed "$2" sweep.toml >"$1.toml"; }
variant small 's/^budgets = .*/budgets = [1e6]/'
expect_error "budget too small" "small\.toml: 'sweep\.budgets': 1e\+06 FLOPs is too small for one step" "$moelab" sweep plan small.toml --no-measure
variant sparse 's/^sparsities = .*/sparsities = [0.3]/'
expect_error "no integer E" "sparse\.toml: 'sweep\.sparsities': S = 0\.3 with top_k = 1 needs E = 1\.429 experts" "$moelab" sweep plan sparse.toml --no-measure
variant epochs 's/^max_epochs = .*/max_epochs = 0.01/'
expect_error "too many epochs" "epochs\.toml: .* needs .* passes over subset 'A' \(max_epochs 0\.01\)" "$moelab" sweep plan epochs.toml --no-measure
variant model '1i [model]\nhidden_size = 32'
expect_error "a [model] section" "model\.toml: 'model' comes from \[sweep\]" "$moelab" sweep plan model.toml
expect_error "job out of range" "--job 99: the plan has 8 jobs" "$moelab" sweep run sweep.toml --job 99

finish "sweep test"
