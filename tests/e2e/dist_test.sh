#!/usr/bin/env bash
# Data-parallel training under mpirun (Open MPI), one thread per rank: two ranks train as one
# process does (dense and MoE with the balance bias, losses and gradient norms to float rounding,
# final weights close); rank 0 alone writes; a run interrupted with SIGINT (to one rank or to
# mpirun) and resumed with two ranks is bit-identical to the unbroken one, resumed with one it
# continues the same run; kill -9 and SIGSTOP of a rank end the job quickly with a line naming
# it; ranks that run different experiments, and a grad_accum that is not a multiple of the ranks,
# are refused before anything is written. ZeRO-1 (on by default, so every run above uses it)
# gives the bits of the same ranks without it, with 2 and 3 ranks, and its checkpoints resume in
# one process (and one process's at 2 ranks) as those written without it.
set -u
moelab=$1
source "$(dirname "$0")/testlib.sh"
cd "$tmp"
mpirun --version 2>&1 | grep -q "Open MPI" || { echo "dist: mpirun is not Open MPI: skipped"; exit 77; }

export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none  # containers without CMA
# Open MPI never frees some of its own memory (components it loads at start): leaks under
# mpirun are not ours to see, so a sanitized build checks them in one process only.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
py=/usr/bin/python3                                     # Debian's, with numpy

# Every job runs under `timeout 60`; on exit whatever is left of the jobs started in the
# background (the timeout, mpirun, the ranks, recorded in pid.R) is killed.
jobs_bg=""
cleanup() {
  local p
  for p in $jobs_bg; do pkill -9 -P "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
  for p in $(cat pid.* 2>/dev/null); do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
}
trap 'cleanup; [ -n "${KEEP_TMP:-}" ] && echo "kept $tmp" || rm -rf "$tmp"' EXIT
mpi() {
  local np=$1
  shift
  timeout 60 mpirun --oversubscribe -np "$np" "$@"
}
# run by mpirun as `bash -c "$ranked" _ moelab ...`: a rank that records its pid in pid.R first
# (exec keeps the pid)
ranked='echo $$ >pid.$OMPI_COMM_WORLD_RANK; exec "$@"'
# wait_lines FILE N PID: until FILE has N lines, PID has ended, or 30 s have passed.
wait_lines() {
  for _ in $(seq 1 600); do
    [ "$(cat "$1" 2>/dev/null | wc -l)" -ge "$2" ] && return
    kill -0 "$3" 2>/dev/null || return
    sleep 0.05
  done
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
strip() { sed -E 's/,"(tokens_per_s|mfu|comm_wait_s|step_s)":[^,}]*//g' "$1"; }

verses_data "$moelab" 30 10 320 13
# one thread per rank, two micro-batches to share between the ranks, a checkpoint every 5 steps
dp=(run.threads=1 train.grad_accum=2 checkpoint.every=5 checkpoint.keep_last=0)
tiny_config "${dp[@]}" >dense.toml
tiny_config "${dp[@]}" "${tiny_moe[@]}" 'model.router_balance={ bias_rate = 0.01 }' >moe.toml

# close A B STEP [FROM]: B's metrics against A's (the same steps; loss, grad_norm and the router's
# losses within a relative bound, max_load equal: the routing counts are integers summed over
# the ranks) and B's checkpoint STEP against A's (largest absolute difference of a weight).
# Measured on this corpus, 20 steps, 2 ranks against 1: losses and router losses at most 9e-9
# relative, grad_norm 5.4e-8, weights 1.2e-7 (one float ulp near 1); the bounds are ~100x that.
# With FROM (B resumed at step FROM in one process, A two ranks throughout) these bounds hold for
# the 10 steps after FROM; the rounding differences then grow with the steps: over the 370 steps
# to step 400 loss 1.8e-6, grad_norm 3.2e-5, weights 5.6e-6, held to the looser bounds 1e-4,
# 2e-3, 5e-4 (an optimizer state or a loader position not carried over differs by >1e-2).
close() {
  "$py" - "$1" "$2" "$3" "${4:-}" <<'PY'
import json, struct, sys
import numpy as np
a_dir, b_dir, step, since = sys.argv[1:]
TIGHT = {"loss": 1e-6, "aux_loss": 1e-6, "z_loss": 1e-6, "router": 1e-6, "grad_norm": 5e-6}
LOOSE = {"loss": 1e-4, "aux_loss": 1e-4, "z_loss": 1e-4, "router": 1e-4, "grad_norm": 2e-3}
WEIGHT = 1e-5 if not since else 5e-4
def metrics(d):
    return [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
def weights(d):
    raw = open(f"{d}/step_{int(step):08d}/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    return {k: np.frombuffer(raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]],
                             dtype=np.float32) for k, v in head.items() if k != "__metadata__"}
a, b = metrics(a_dir), metrics(b_dir)
fails = []
if [m["step"] for m in a] != [m["step"] for m in b]:
    sys.exit(f"{b_dir}: steps {[m['step'] for m in b]}, {a_dir}: {[m['step'] for m in a]}")
def rel(x, y):
    return abs(x - y) / max(abs(x), 1e-30)
worst = {}
def check(x, k, u, v):
    tight = not since or int(since) < x["step"] <= int(since) + 10
    key = k + ("" if tight else " (later)")
    worst[key] = max(worst.get(key, 0), rel(u, v))
    if rel(u, v) > (TIGHT if tight else LOOSE)[k]:
        fails.append(f"step {x['step']} {k} {v} vs {u}")
for x, y in zip(a, b):
    for k in ("loss", "aux_loss", "z_loss", "grad_norm"):
        if k in x:
            check(x, k, x[k], y[k])
    for p, q in zip(x.get("router", []), y.get("router", [])):
        check(x, "router", p["aux"], q["aux"])
        check(x, "router", p["z"], q["z"])
        if p["max_load"] != q["max_load"]:
            fails.append(f"step {x['step']} layer {p['layer']} max_load {q['max_load']} vs {p['max_load']}")
    # the load of the step's last micro-batch (rank P-1's with P ranks): shares of counts
    for la, lb in zip(x.get("expert_load", []), y.get("expert_load", [])):
        if max(abs(u - v) for u, v in zip(la, lb)) > 0.01:  # measured: equal
            fails.append(f"step {x['step']} expert_load {lb} vs {la}")
wa, wb = weights(a_dir), weights(b_dir)
if wa.keys() != wb.keys():
    sys.exit(f"{b_dir}: other tensors than {a_dir}'s")
dw = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
if dw > WEIGHT:
    fails.append(f"step {step} weights differ by {dw}")
print(f"{b_dir} vs {a_dir}: " + " ".join(f"{k} {v:.1e}" for k, v in worst.items()) + f" weights {dw:.1e}")
if fails:
    sys.exit(f"{b_dir} vs {a_dir}: " + "; ".join(fails[:3]))
PY
}

# ---- 1. two ranks train as one process: dense, MoE (balance bias on), grad_accum 2 and 4
for m in dense moe; do
  "$moelab" train $m.toml --set run.dir=${m}1 >/dev/null 2>${m}1.err || bad "$m, one process: $(tail -1 ${m}1.err)"
  mpi 2 "$moelab" train $m.toml --set run.dir=${m}2 >${m}2.out 2>${m}2.err || bad "$m, 2 ranks: $(tail -3 ${m}2.err)"
  close ${m}1 ${m}2 20 >>bounds.txt 2>close.err && ok || bad "$m: 2 ranks differ from one process: $(cat close.err)"
done
"$moelab" train moe.toml --set run.dir=moe1a4 --set train.grad_accum=4 >/dev/null 2>err || bad "grad_accum 4, one process: $(tail -1 err)"
mpi 2 "$moelab" train moe.toml --set run.dir=moe2a4 --set train.grad_accum=4 >/dev/null 2>err || bad "grad_accum 4, 2 ranks: $(tail -3 err)"
close moe1a4 moe2a4 20 >>bounds.txt 2>close.err && ok || bad "grad_accum 4: 2 ranks differ from one process: $(cat close.err)"
# the sums started all after the backward pass: the same sums in the same order, the same bits
MOELAB_DIST_OVERLAP=0 mpi 2 -x MOELAB_DIST_OVERLAP "$moelab" train dense.toml --set run.dir=nolap >/dev/null 2>err || bad "overlap off: $(tail -3 err)"
cmp -s dense2/step_00000020/model.safetensors nolap/step_00000020/model.safetensors && ok || bad "overlap off gives other weights than overlap on"

# ---- 2. rank 0 alone writes: one metrics line per step, one line per checkpoint
"$py" - dense2/metrics.jsonl <<'PY' 2>err && ok || bad "metrics of 2 ranks: $(tail -1 err)"
import json, sys
m = [json.loads(l) for l in open(sys.argv[1])]
assert [x["step"] for x in m] == list(range(1, 21)), [x["step"] for x in m]
assert all(x["ranks"] == 2 and x["comm_wait_s"] >= 0 and x["step_s"] > 0 for x in m), m[0]
PY
for s in 5 10 15 20; do
  n=$(cat dense2.out dense2.err | grep -c "^checkpoint dense2/step_000000$(printf %02d $s)$")
  [ "$n" -eq 1 ] && ok || bad "checkpoint line of step $s printed $n times by 2 ranks"
done
[ "$(ls -d dense2/step_* | wc -l)" -eq 4 ] && ok || bad "2 ranks: checkpoints $(ls dense2)"

# ---- 3, 4. interrupted and resumed: 400 steps, a checkpoint every 50 and on the interruption
long=(--set phases.0.steps=400 --set checkpoint.every=50 --set checkpoint.keep_last=2)
mpi 2 "$moelab" train dense.toml --set run.dir=full "${long[@]}" >/dev/null 2>full.err || bad "400 steps, 2 ranks: $(tail -3 full.err)"
# interrupt DIR HOW: a 2-rank run stopped after 30 steps, by SIGINT to rank 1 (HOW=rank) or to
# mpirun (HOW=mpirun); sets rc.
interrupt() {
  rm -f pid.*
  mpi 2 --output-filename "$1.out" bash -c "$ranked" _ \
    "$moelab" train dense.toml --set run.dir="$1" "${long[@]}" >/dev/null 2>"$1.err" &
  local pid=$!
  jobs_bg="$jobs_bg $pid"
  wait_lines "$1/metrics.jsonl" 30 $pid
  if [ "$2" = rank ]; then kill -INT "$(cat pid.1)"; else kill -INT "$(pgrep -P $pid)"; fi
  wait $pid
  rc=$?
}
# stopped DIR: every rank says it stopped at the step of the last checkpoint and metrics line
stopped() {
  local n last steps
  n=$(wc -l <"$1/metrics.jsonl")
  last=$(ls -d "$1"/step_* | tail -1)
  steps=$(cat "$1".out/1/rank.*/stderr | sed -n -e 's/^interrupted by signal [0-9]* at step \([0-9]*\).*/\1/p' \
    -e 's/^stopped at step \([0-9]*\) with the other ranks.*/\1/p' | sort -u)
  if [ "$n" -ge 400 ]; then bad "$1: the run ended before the interruption"; return 1; fi
  [ "$last" = "$(printf "%s/step_%08d" "$1" "$n")" ] && ok || bad "$1: $n metrics lines, last checkpoint $last"
  [ "$steps" = "$n" ] && ok || bad "$1: the ranks say they stopped at step(s) '$steps', metrics end at $n"
}
interrupt intr rank
[ $rc -eq 130 ] && ok || bad "SIGINT to rank 1: mpirun's exit status $rc, expected 130"
if stopped intr; then
  n=$(cat intr.out/1/rank.*/stderr | grep -c "^interrupted by signal")
  m=$(cat intr.out/1/rank.*/stderr | grep -c "^stopped at step .* with the other ranks")
  [ "$n" -eq 1 ] && [ "$m" -eq 1 ] && ok || bad "SIGINT to rank 1: $n ranks say they were interrupted, $m that they stopped with the others"
  cp -r intr intr1
  at=$(wc -l <intr1/metrics.jsonl)
  mpi 2 "$moelab" train dense.toml --set run.dir=intr "${long[@]}" --resume >/dev/null 2>>intr.err || bad "resume at 2 ranks: $(tail -3 intr.err)"
  cmp -s full/step_00000400/model.safetensors intr/step_00000400/model.safetensors && ok || bad "SIGINT to rank 1, resumed at 2 ranks: other final weights than the unbroken run"
  diff <(strip full/metrics.jsonl) <(strip intr/metrics.jsonl) >/dev/null && ok || bad "SIGINT to rank 1, resumed at 2 ranks: other metrics than the unbroken run"
  # one process continues the run that two began (its weights, moments and loader positions)
  "$moelab" train dense.toml --set run.dir=intr1 "${long[@]}" --resume >/dev/null 2>>intr1.err || bad "resume at 1 process: $(tail -1 intr1.err)"
  close full intr1 400 "$at" >>bounds.txt 2>close.err && ok || bad "resumed at 1 process: $(cat close.err)"
fi
# mpirun (Open MPI 4) does not pass SIGINT on: it sends SIGTERM to the ranks and SIGKILL 1 s
# later (odls_base_sigkill_timeout), and exits with status 1; the ranks may not get to save
# (docs/distributed.md says to signal the ranks instead). The last complete checkpoint stays, and the
# run resumed from it ends with the unbroken run's weights.
interrupt mint mpirun
[ $rc -ne 0 ] && ok || bad "SIGINT to mpirun: exit status 0"
echo "SIGINT to mpirun: exit status $rc" >>bounds.txt
if [ "$(wc -l <mint/metrics.jsonl)" -lt 400 ] && ls -d mint/step_* >/dev/null 2>&1; then
  mpi 2 "$moelab" train dense.toml --set run.dir=mint "${long[@]}" --resume >/dev/null 2>>mint.err || bad "resume after SIGINT to mpirun: $(tail -3 mint.err)"
  cmp -s full/step_00000400/model.safetensors mint/step_00000400/model.safetensors && ok || bad "SIGINT to mpirun, resumed: other final weights than the unbroken run"
  diff <(strip full/metrics.jsonl) <(strip mint/metrics.jsonl) >/dev/null && ok || bad "SIGINT to mpirun, resumed: other metrics than the unbroken run"
fi

# ---- 5. faults
# (a) kill -9 of rank 1: mpirun ends the job naming rank 1; the last checkpoint resumes
rm -f pid.*
mpi 2 bash -c "$ranked" _ "$moelab" train dense.toml --set run.dir=k9 \
  "${long[@]}" --set checkpoint.every=5 >/dev/null 2>k9.err &
pid=$!
jobs_bg="$jobs_bg $pid"
wait_lines k9/metrics.jsonl 30 $pid
t0=$(now)
kill -9 "$(cat pid.1)"
wait $pid
rc=$?
dt=$(since "$t0")
echo "kill -9 of rank 1: exit status $rc after $dt s" >>bounds.txt
[ $rc -ne 0 ] && [ $rc -ne 124 ] && ok || bad "kill -9 of rank 1: mpirun's exit status $rc"
awk -v d="$dt" 'BEGIN { exit !(d < 20) }' && ok || bad "kill -9 of rank 1: the job took $dt s to end"
grep -q "rank 1" k9.err && ok || bad "kill -9 of rank 1: the output does not name rank 1: $(grep -v '^step' k9.err | head -5)"
"$moelab" train dense.toml --set run.dir=k9 "${long[@]}" --set checkpoint.every=5 --resume >/dev/null 2>k9r.err \
  && ok || bad "resume after kill -9 of a rank: $(tail -1 k9r.err)"
at=$(sed -n 's/^resumed from .* (step \([0-9]*\))$/\1/p' k9r.err)
close full k9 400 "$at" >>bounds.txt 2>close.err && ok || bad "resumed after kill -9 of a rank: $(cat close.err)"

# (b) rank 1 stopped (SIGSTOP): rank 0 names it after MOELAB_DIST_TIMEOUT and the job ends
rm -f pid.*
MOELAB_DIST_TIMEOUT=3 mpi 2 -x MOELAB_DIST_TIMEOUT bash -c "$ranked" _ \
  "$moelab" train dense.toml --set run.dir=stop "${long[@]}" >/dev/null 2>stop.err &
pid=$!
jobs_bg="$jobs_bg $pid"
wait_lines stop/metrics.jsonl 30 $pid
t0=$(now)
kill -STOP "$(cat pid.1)"
wait $pid
rc=$?
dt=$(since "$t0")
kill -CONT "$(cat pid.1)" 2>/dev/null
echo "SIGSTOP of rank 1 (MOELAB_DIST_TIMEOUT=3): exit status $rc after $dt s" >>bounds.txt
[ $rc -ne 0 ] && [ $rc -ne 124 ] && ok || bad "SIGSTOP of rank 1: mpirun's exit status $rc"
awk -v d="$dt" 'BEGIN { exit !(d < 10) }' && ok || bad "SIGSTOP of rank 1: the job took $dt s to end"
first=$(grep -m1 "^moelab: error:" stop.err)
echo "$first" | grep -Eq "^moelab: error: rank 0: .* within 3 s: no answer from rank 1 " && ok \
  || bad "SIGSTOP of rank 1: rank 0's error line is '$first'"

# (c) ranks that run different experiments: refused at start-up, nothing written
mpi 1 "$moelab" train dense.toml --set run.dir=mix : -np 1 "$moelab" train dense.toml --set run.dir=mix \
  --set schedule.max_lr=1e-3 >/dev/null 2>mix.err
rc=$?
errs=$(grep "^moelab: error:" mix.err | sort -u)
[ $rc -ne 0 ] && [ $rc -ne 124 ] && ok || bad "ranks with different --set: exit status $rc"
[ "$(echo "$errs" | wc -l)" -eq 1 ] && echo "$errs" | grep -q "rank 1: the experiment .* differs from rank 0's" \
  && ok || bad "ranks with different --set: errors '$errs'"
[ ! -e mix ] && ok || bad "ranks with different --set: wrote $(ls mix)"

# (d) grad_accum not a multiple of the ranks
mpi 2 "$moelab" train dense.toml --set run.dir=ga3 --set train.grad_accum=3 >/dev/null 2>ga3.err
rc=$?
errs=$(grep "^moelab: error:" ga3.err | sort -u)
[ $rc -ne 0 ] && [ $rc -ne 124 ] && ok || bad "grad_accum 3 with 2 ranks: exit status $rc"
[ "$(echo "$errs" | wc -l)" -eq 1 ] && echo "$errs" | grep -q "'train.grad_accum' (3) must be a multiple of the number of processes (2)" \
  && ok || bad "grad_accum 3 with 2 ranks: errors '$errs'"
[ ! -e ga3 ] && ok || bad "grad_accum 3 with 2 ranks: wrote $(ls ga3)"

# ---- 6. ZeRO-1 (train.zero, on by default): each rank keeps 1/P of the moments and updates its
# shard; the same bits as P ranks without it (weights, moments, metrics), with 2 and 3 ranks
same_run() {  # A B: B's step-20 checkpoint and metrics are A's, byte for byte
  cmp -s "$1/step_00000020/model.safetensors" "$2/step_00000020/model.safetensors" &&
    cmp -s "$1/step_00000020/optimizer.safetensors" "$2/step_00000020/optimizer.safetensors" &&
    diff <(strip "$1/metrics.jsonl") <(strip "$2/metrics.jsonl") >/dev/null
}
for m in dense moe; do
  mpi 2 "$moelab" train $m.toml --set run.dir=${m}2z0 --set train.zero=false >/dev/null 2>err || bad "$m, 2 ranks without ZeRO: $(tail -3 err)"
  same_run ${m}2z0 ${m}2 && ok || bad "$m, 2 ranks: ZeRO-1 changed the weights, moments or metrics"
done
for z in true false; do
  mpi 3 "$moelab" train dense.toml --set run.dir=d3$z --set train.grad_accum=3 --set train.zero=$z >/dev/null 2>err || bad "3 ranks, zero=$z: $(tail -3 err)"
done
same_run d3false d3true && ok || bad "3 ranks: ZeRO-1 changed the weights, moments or metrics"
# a checkpoint holds whole moments: 2 ranks' (step 10) resumed in one process, and one process's
# resumed at 2 ranks, continue as from the checkpoint of a run without ZeRO, to the bit
from10() {  # SRC DST: DST is SRC up to its step-10 checkpoint
  rm -rf "$2"
  cp -r "$1" "$2"
  rm -rf "$2/step_00000015" "$2/step_00000020"
}
from10 dense2 z2to1
from10 dense2z0 z2to1ref
cmp -s z2to1/step_00000010/optimizer.safetensors z2to1ref/step_00000010/optimizer.safetensors && ok || bad "2 ranks: ZeRO-1's checkpoint moments differ from those without it"
for d in z2to1 z2to1ref; do
  "$moelab" train dense.toml --set run.dir=$d --resume >/dev/null 2>err || bad "$d resumed in one process: $(tail -1 err)"
done
same_run z2to1ref z2to1 && ok || bad "2 ranks with ZeRO-1, resumed in one process: not the run resumed from a checkpoint without it"
close dense2 z2to1 20 10 >>bounds.txt 2>close.err && ok || bad "2 ranks with ZeRO-1, resumed in one process: $(cat close.err)"
from10 dense1 z1to2
from10 dense1 z1to2ref
mpi 2 "$moelab" train dense.toml --set run.dir=z1to2 --resume >/dev/null 2>err || bad "one process resumed at 2 ranks: $(tail -3 err)"
mpi 2 "$moelab" train dense.toml --set run.dir=z1to2ref --set train.zero=false --resume >/dev/null 2>err || bad "one process resumed at 2 ranks without ZeRO: $(tail -3 err)"
same_run z1to2ref z1to2 && ok || bad "one process resumed at 2 ranks with ZeRO-1: not the same as without it"
close dense1 z1to2 20 10 >>bounds.txt 2>close.err && ok || bad "one process resumed at 2 ranks: $(cat close.err)"

cat bounds.txt
finish dist
