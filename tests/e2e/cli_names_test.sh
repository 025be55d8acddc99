#!/usr/bin/env bash
# The command names: the studies under `moelab study` (forgetting, ct, ders, sweep, report), one
# flag per concept (--prompt-len, --max-new, --ctx, --slots), --set and --threads where an
# experiment file is read or a model computes, --help listing the new names only, and every old
# spelling still working as before with exactly one notice line on stderr.
set -u
moelab=$1
source "$(dirname "$0")/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=2

notice_re="^moelab: '.*' is now '.*'; the old name goes in the next release$"

# new_ok "what" command...: exit 0 and no rename notice.
new_ok() {
  local what=$1
  shift
  "$@" >out.txt 2>err.txt
  local rc=$?
  if [ $rc -ne 0 ]; then bad "$what: exit $rc: $(tail -1 err.txt)"; return; fi
  if grep -Eq "$notice_re" err.txt; then bad "$what: a rename notice for a new name"; return; fi
  ok
}

# old_ok "what" "old" "new" command...: exit 0 and exactly one notice line, which names both.
old_ok() {
  local what=$1 old=$2 new=$3
  shift 3
  "$@" >old_out.txt 2>old_err.txt
  local rc=$? n
  if [ $rc -ne 0 ]; then bad "$what: exit $rc: $(tail -1 old_err.txt)"; return; fi
  n=$(grep -Ec "$notice_re" old_err.txt)
  if [ "$n" -ne 1 ]; then bad "$what: $n notice lines, expected 1: $(cat old_err.txt)"; return; fi
  grep -Fxq "moelab: '$old' is now '$new'; the old name goes in the next release" old_err.txt &&
    ok || bad "$what: notice '$(grep -E "$notice_re" old_err.txt)'"
  grep -Ev "$notice_re" old_err.txt >old_rest.txt
}

# same_log A B: two logs alike but for durations ("in 0.0 s").
same_log() {
  cmp -s <(sed -E 's/[0-9.]+ s$/T s/' "$1") <(sed -E 's/[0-9.]+ s$/T s/' "$2")
}

# ---- help: the new names listed, the old ones hidden
"$moelab" --help >help.txt 2>&1
for cmd in data model train study fit entities eval generate serve upcycle compress export import bench; do
  grep -Eq "^  $cmd " help.txt && ok || bad "moelab --help lists $cmd"
done
for cmd in run ct report sweep; do
  grep -Eq "^  $cmd " help.txt && bad "moelab --help lists the old command $cmd" || ok
done
[ "$(grep -En '^  (data|model|train|study|fit|entities|eval|generate|serve|upcycle|compress|export|import|bench) ' help.txt |
  cut -d' ' -f3 | tr '\n' ' ')" = "data model train study fit entities eval generate serve upcycle compress export import bench " ] &&
  ok || bad "moelab --help: commands in their order: $(cat help.txt)"
"$moelab" study --help >help.txt 2>&1
for cmd in forgetting ct ders sweep report; do
  grep -Eq "^  $cmd +[a-z]" help.txt && ok || bad "moelab study --help lists $cmd"
done
# help_has "command" "--present..." -- "--absent...": the flags of a command's --help
help_has() {
  local cmd=$1 f
  shift
  "$moelab" $cmd --help >help.txt 2>&1 || { bad "$cmd --help"; return; }
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    grep -Eq -- "^  $1 " help.txt && ok || bad "$cmd --help lists $1"
    shift
  done
  [ $# -gt 0 ] && shift
  for f in "$@"; do grep -Eq -- "^  $f " help.txt && bad "$cmd --help lists the old $f" || ok; done
}
help_has "bench eval" --slots --prompt-len --max-new --threads -- --batch --prompt --new
help_has "entities build" --prompt-len -- --prompt
help_has "model info" --ctx -- --seq
help_has "model dump" --ctx --batch -- --seq
help_has "serve" --ctx --slots --threads
help_has "generate" --prompt --max-new --threads
help_has "eval" --batch --threads
help_has "train" --set --threads
help_has "study forgetting" --set --threads
help_has "study sweep" --set --threads --plan --no-measure --job --slurm --restart
help_has "study ct" --set --threads
help_has "study ders" --set --threads
help_has "compress" --threads

# ---- model info --ctx, model dump --ctx, and their old --seq
cat >tiny.json <<'JSON'
{"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
 "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 32, "sliding_window": 4,
 "max_position_embeddings": 32}
JSON
new_ok "model info --ctx" "$moelab" model info tiny.json --ctx 16
grep -q "train FLOPs/token at seq 16:" out.txt && ok || bad "model info --ctx 16: $(tail -1 out.txt)"
old_ok "model info --seq" "moelab model info --seq" "moelab model info --ctx" "$moelab" model info tiny.json --seq 16
cmp -s out.txt old_out.txt && ok || bad "model info: --seq prints what --ctx prints"
new_ok "model dump --ctx" "$moelab" model dump tiny.json --ctx 8 --out new.safetensors
old_ok "model dump --seq" "moelab model dump --seq" "moelab model dump --ctx" \
  "$moelab" model dump tiny.json --seq 8 --out old.safetensors
cmp -s new.safetensors old.safetensors && ok || bad "model dump: --seq writes what --ctx writes"

# ---- bench: --slots, --prompt-len, --max-new, --threads, and the old --batch, --prompt, --new
cat >bench.json <<'JSON'
{"batch_size": 2, "seq_len": 16, "model": {"vocab_size": 64, "hidden_size": 16,
 "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
 "ffn_type": "moe", "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 8,
 "max_position_embeddings": 32}}
JSON
new_ok "bench eval" "$moelab" bench eval --config bench.json --samples 8 --slots 4 --prompt-len 6 --max-new 5 --threads 2
grep -q '"threads":2,.*"samples":8,"batch":4,"prompt":6,"generate":5,' out.txt && ok || bad "bench eval flags: $(cat out.txt)"
for old in "--batch --slots" "--prompt --prompt-len" "--new --max-new"; do
  set -- $old
  args=(--slots 4 --prompt-len 6 --max-new 5)
  args=("${args[@]/#$2/$1}")
  old_ok "bench eval $1" "moelab bench eval $1" "moelab bench eval $2" \
    "$moelab" bench eval --config bench.json --samples 8 "${args[@]}" --threads 2
  grep -q '"samples":8,"batch":4,"prompt":6,"generate":5,' old_out.txt && ok || bad "bench eval $1: $(cat old_out.txt)"
done
expect_error "an old flag with its new one" "'moelab bench eval --new' is the old name of 'moelab bench eval --max-new'" \
  "$moelab" bench eval --config bench.json --new 3 --max-new 4
new_ok "bench peak --threads" "$moelab" bench peak --threads 1
grep -q '"threads": 1,' out.txt && ok || bad "bench peak --threads 1: $(cat out.txt)"
new_ok "bench train --threads" "$moelab" bench train --config bench.json --steps 1 --warmup 0 --threads 1 --peak 100

# ---- data, a tiny model; train --set and --threads (the flag wins over the file and --set)
verses_data "$moelab" 16 10 320 13
tiny_lm "$moelab" 64
expect_error "a bad run.threads" "run\.threads" "$moelab" train run.toml --set 'run.threads="many"' --set run.dir=t1
new_ok "train --set --threads" "$moelab" train run.toml --set 'run.threads="many"' --set run.dir=t1 \
  --set phases.0.steps=4 --set schedule.decay_steps=2 --threads 1
[ -d t1/step_00000004 ] && ok || bad "train --set: run.dir and phases.0.steps"

# ---- entities build --prompt-len, and the old --prompt
printf 'David\tPER\nking\tPER\n' >ents.tsv
new_ok "entities build --prompt-len" "$moelab" entities build --data data --entities ents.tsv --out new.jsonl \
  --top 100 --bottom 100 --prompt-len 6 --target 4 --max-per-entity 3
old_ok "entities build --prompt" "moelab entities build --prompt" "moelab entities build --prompt-len" \
  "$moelab" entities build --data data --entities ents.tsv --out old.jsonl \
  --top 100 --bottom 100 --prompt 6 --target 4 --max-per-entity 3
[ -s new.jsonl ] && cmp -s new.jsonl old.jsonl && ok || bad "entities build: --prompt writes what --prompt-len writes"

# ---- eval, generate, serve, compress: --threads, --max-new, --ctx, --slots
new_ok "eval --threads" "$moelab" eval run/step_00000020 --evalset new.jsonl --data data --batch 4 --threads 1
new_ok "generate --max-new --threads" "$moelab" generate run/step_00000020 --data data --prompt "Verse 1 of" \
  --max-new 4 --greedy --threads 1
new_ok "upcycle" "$moelab" upcycle run/step_00000020 --out moe --experts 2
new_ok "compress --threads" "$moelab" compress moe --delta lowrank:1 --base mean --out moe_c --threads 1
"$moelab" serve run/step_00000020 --data data --port 0 --ctx 16 --slots 2 --threads 1 --grace 1 2>serve.err &
pid=$!
for _ in $(seq 1 100); do grep -q "serving" serve.err && break; sleep 0.1; done
grep -q "2 slots x 16 positions" serve.err && ok || bad "serve --ctx 16 --slots 2: $(cat serve.err)"
kill -TERM $pid
wait $pid && ok || bad "serve: stopped with exit $?"

# ---- study forgetting (was run): --set, --threads; then the old name on the finished study
tiny_config model.max_position_embeddings=64 schedule.decay_steps=2 >exp.toml
cat >>exp.toml <<'TOML'
[[phases]]
name = "B"
subset = "B"
steps = 2
[eval]
min_recalled = 0
[study]
experts = [1]
entities = "ents.tsv"
top = 100
bottom = 100
prompt = 6
target = 4
max_per_entity = 3
TOML
new_ok "study forgetting" "$moelab" study forgetting exp.toml --set run.dir=sf --set phases.0.steps=3 --threads 1 --no-report
[ -d sf/E1_s3/step_00000005 ] && ok || bad "study forgetting --set: sf/E1_s3/step_00000005"
new_ok "study forgetting, again" "$moelab" study forgetting exp.toml --set run.dir=sf --set phases.0.steps=3 --no-report
grep -q "E1_s3: E=1 top-1 seed 3 (done)" err.txt && ok || bad "study forgetting, again: $(cat err.txt)"
cp err.txt sf2.txt
old_ok "run" "moelab run" "moelab study forgetting" "$moelab" run exp.toml --set run.dir=sf --set phases.0.steps=3 --no-report
same_log sf2.txt old_rest.txt && ok || bad "run prints what study forgetting prints: $(cat old_rest.txt)"

# ---- study report (was report)
new_ok "study report" "$moelab" study report sf --out rep_new --no-plots
[ -s rep_new/summary.md ] && ok || bad "study report: rep_new/summary.md"
old_ok "report" "moelab report" "moelab study report" "$moelab" report sf --out rep_old --no-plots
[ -s rep_old/summary.md ] && ok || bad "report: rep_old/summary.md"
# an old name on bad input: the notice, then the one-line error
"$moelab" report corpus >out.txt 2>err.txt
rc=$?
[ $rc = 1 ] && [ "$(wc -l <err.txt)" = 2 ] &&
  [ "$(head -1 err.txt)" = "moelab: 'moelab report' is now 'moelab study report'; the old name goes in the next release" ] &&
  tail -1 err.txt | grep -q "^moelab: error: corpus: neither a study folder" && ok || bad "report of a plain folder: exit $rc: $(cat err.txt)"

# ---- study ct (was ct) and study ders, from the forgetting study's model at the end of A
ct_toml() {
  cat <<TOML
[run]
dir = "$1"
seed = 3
threads = 1
log_every = 1
[data]
dir = "data"
seq_len = 32
[train]
batch_size = 4
[schedule]
kind = "constant"
max_lr = 2e-3
warmup_steps = 1
[ct]
base = "sf/E1_s3/step_00000003"
original = "A"
new = "B"
steps = 2
TOML
}
{ ct_toml ct; printf '[[ct.methods]]\nname = "full"\nkind = "full"\n'; } >ct.toml
{ ct_toml ders; printf '[[ct.methods]]\nname = "sm"\nkind = "upcycle"\nupcycle = { experts = 2, top_k = 1, delta = "sparse:0.9" }\n'; } >ders.toml
new_ok "study ct" "$moelab" study ct ct.toml --no-report
[ -d ct/full/seed_3/step_00000002 ] && ok || bad "study ct: ct/full/seed_3/step_00000002"
new_ok "study ct, again" "$moelab" study ct ct.toml --no-report
grep -q "full/seed_3: full seed 3 (done)" err.txt && ok || bad "study ct, again: $(cat err.txt)"
cp err.txt ct_new.txt
old_ok "ct" "moelab ct" "moelab study ct" "$moelab" ct ct.toml --no-report
same_log ct_new.txt old_rest.txt && ok || bad "ct prints what study ct prints: $(cat old_rest.txt)"
new_ok "study ct of a DeRS file" "$moelab" study ct ders.toml --no-report --no-plots
[ -d ders/sm/seed_3/step_00000002 ] && ok || bad "study ct runs a DeRS file: ders/sm/seed_3/step_00000002"
new_ok "study ders" "$moelab" study ders ders.toml --no-plots
[ -s ders/report/summary.md ] && ok || bad "study ders: ders/report/summary.md"
new_ok "study ct --set --threads" "$moelab" study ct ct.toml --set run.dir=ct2 --set ct.steps=1 --threads 1 --no-report
[ -d ct2/full/seed_3/step_00000001 ] && ok || bad "study ct --set: ct2/full/seed_3/step_00000001"
new_ok "study ders --set --threads" "$moelab" study ders ct.toml --set run.dir=ders2 --set ct.methods.0.kind=upcycle \
  --set 'ct.methods.0.upcycle={ experts = 2, top_k = 1, delta = "lowrank:1" }' --threads 1 --no-report
[ -d ders2/full/seed_3/step_00000002 ] && ok || bad "study ders --set: ders2/full/seed_3/step_00000002"
expect_error "study ders of a file without DeRS" "^moelab: error: ct\.toml: no DeRS method .*'moelab study ct' runs this file$" \
  "$moelab" study ders ct.toml

# ---- study sweep (was sweep plan, sweep run): --plan, --slurm
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
[data]
dir = "data"
seq_len = 32
[train]
batch_size = 4
[schedule]
max_lr = 3e-3
warmup_steps = 2
[sweep]
base = "base.json"
subset = "A"
budgets = [1e9]
sparsities = [0, 0.5]
top_k = 1
sizes = [32]
max_epochs = 4
TOML
new_ok "study sweep --plan" "$moelab" study sweep sweep.toml --plan --no-measure
[ "$(grep -c '^C' out.txt)" = 2 ] && ok || bad "study sweep --plan: two jobs: $(cat out.txt)"
cp out.txt plan_new.txt
new_ok "study sweep --plan --set --threads" "$moelab" study sweep sweep.toml --plan --no-measure --set 'sweep.sizes=[32, 48]' --threads 1
[ "$(grep -c '^C' out.txt)" = 4 ] && ok || bad "study sweep --plan --set sweep.sizes: four jobs: $(cat out.txt)"
new_ok "study sweep --slurm --set --threads" "$moelab" study sweep sweep.toml --slurm --set run.dir=sw2 --threads 3
grep -q "#SBATCH --cpus-per-task=3" sw2/sweep.slurm &&
  grep -Fq "srun moelab sweep run sweep.toml --set 'run.dir=sw2' --set 'run.threads=3' --job" sw2/sweep.slurm &&
  ok || bad "study sweep --slurm: the overrides in sw2/sweep.slurm: $(cat sw2/sweep.slurm)"
old_ok "sweep plan" "moelab sweep plan" "moelab study sweep --plan" "$moelab" sweep plan sweep.toml --no-measure
cmp -s plan_new.txt old_out.txt && ok || bad "sweep plan prints what study sweep --plan prints"
new_ok "study sweep --slurm" "$moelab" study sweep sweep.toml --slurm
grep -q "#SBATCH --array=0-1" sw/sweep.slurm && ok || bad "study sweep --slurm: sw/sweep.slurm"
rm sw/sweep.slurm
old_ok "sweep run" "moelab sweep run" "moelab study sweep" "$moelab" sweep run sweep.toml --slurm
grep -q "#SBATCH --array=0-1" sw/sweep.slurm && ok || bad "sweep run --slurm: sw/sweep.slurm"
"$moelab" study sweep sweep.toml --plan --slurm >out.txt 2>err.txt && bad "study sweep --plan --slurm ran" ||
  { grep -q "excludes" err.txt && ok || bad "study sweep --plan --slurm: $(cat err.txt)"; }

finish cli_names
