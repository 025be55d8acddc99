#!/usr/bin/env bash
# Interrupts at random moments: 50 runs of a small training (evaluation every few steps, a
# checkpoint every few steps), each sent SIGINT or SIGTERM at a random time. Every one must exit
# 130 and resume to exactly the metrics of an uninterrupted run. Then: repeated SIGUSR1 is
# harmless (bench train) and saves a checkpoint without stopping (train), a second SIGINT stops
# at once, and a signal during startup leaves a directory that simply starts again.
set -u
moelab=$1
runs=${2:-50}
source "$(dirname "$0")/testlib.sh"
cd "$tmp"

verses_data "$moelab" 60 12 320 17
printf 'David\tPER\nking\tMISC\n' >ents.tsv
"$moelab" entities build --data data --entities ents.tsv --out ev.jsonl --top 100 --bottom 100 \
  --prompt 8 --target 8 --max-per-entity 40 >/dev/null 2>ent.log || { echo "FAIL: entities: $(tail -1 ent.log)"; exit 1; }
{
  tiny_config run.seed=5 run.log_every= run.peak_gflops=100 "${tiny_moe[@]}" schedule.kind=wsd \
    schedule.warmup_steps=4 schedule.decay_steps=6 schedule.decay_at=phase:A phases.steps=40
  cat <<'TOML'
[[phases]]
name = "B"
subset = "B"
steps = 40
replay_subset = "A"
replay_ratio = 0.25
[checkpoint]
every = 5
keep_last = 2
[eval]
every = 3
batches = 2
evalset = "ev.jsonl"
forgetting_every = 4
forgetting_batch = 16
TOML
} >exp.toml
# started PID: waits until the background job has become moelab (a signal sent to the shell
# before exec would hit the shell, not moelab), then a few milliseconds for main() to begin.
started() {
  for _ in $(seq 1 1000); do
    # its signal thread exists once main() has begun: two threads or more
    [ "$(awk '/^Threads:/ {print $2}' /proc/$1/status 2>/dev/null || echo 0)" -ge 2 ] 2>/dev/null && return
    kill -0 "$1" 2>/dev/null || return
    sleep 0.002
  done
}
has_checkpoint() { ls -d "$1"/step_* >/dev/null 2>&1; }
# wait_for CMD...: polls until CMD succeeds, at most 30 s or until the job $pid has ended.
wait_for() {
  for _ in $(seq 1 1500); do
    "$@" && return 0
    kill -0 $pid 2>/dev/null || return 1
    sleep 0.02
  done
  return 1
}
# resumed DIR WHAT: continues the run in DIR (--resume; a run stopped before it made its
# directory starts afresh) and checks that its metrics equal the reference run's.
resumed() {
  local d=$1 what=$2 resume=--resume
  [ -d "$d" ] || resume=
  "$moelab" train exp.toml --set run.dir="$d" $resume >/dev/null 2>>"$d.err" ||
    { bad "$what: continuing failed: $(tail -1 "$d.err")"; return; }
  diff <(strip ref/metrics.jsonl) <(strip "$d/metrics.jsonl") >/dev/null && ok || bad "$what: metrics after resume differ"
}
strip() { sed -E 's/,"tokens_per_s":[^,}]*//; s/,"mfu":[^,}]*//' "$1"; }

"$moelab" train exp.toml --set run.dir=ref >/dev/null 2>ref.err || { echo "FAIL: reference run: $(tail -1 ref.err)"; exit 1; }
# the run's duration, warm: the shortest of three
dur=1000
for t in t1 t2 t3; do
  t0=$(date +%s.%N)
  "$moelab" train exp.toml --set run.dir=$t >/dev/null 2>&1
  dur=$(echo "d = $(date +%s.%N) - $t0; if (d < $dur) d else $dur" | bc)
done
[ "$(wc -l <ref/metrics.jsonl)" -eq 80 ] && ok || bad "reference run: 80 metrics lines"

# ---- random interrupts: SIGINT and SIGTERM alternately, at a uniform time within the run
RANDOM=11
hits=0 early=0 tries=0
while [ $hits -lt "$runs" ] && [ $tries -lt $((runs * 2)) ]; do
  tries=$((tries + 1))
  d="r$tries"
  delay=$(echo "scale=3; 0.9 * $dur * $RANDOM / 32768" | bc)
  sig=$([ $((tries % 2)) -eq 0 ] && echo INT || echo TERM)
  "$moelab" train exp.toml --set run.dir=$d >/dev/null 2>$d.err &
  pid=$!
  started $pid
  sleep "$delay"
  kill -$sig $pid 2>/dev/null
  wait $pid
  rc=$?
  # finished before the signal came, or while the finished process was exiting
  if [ $rc -eq 0 ] || { ! grep -q "interrupted by signal" $d.err && [ -d $d/step_00000080 ]; }; then
    early=$((early + 1))
    continue
  fi
  hits=$((hits + 1))
  if [ $rc -ne 130 ]; then bad "run $d: SIG$sig after ${delay}s: exit $rc, expected 130: $(tail -1 $d.err)"; continue; fi
  grep -Eq "interrupted by signal (2|15) at step" $d.err && ok || bad "run $d: no interruption message"
  resumed $d "run $d: SIG$sig after ${delay}s"
  ls $d/.step_* >/dev/null 2>&1 && bad "run $d: a temporary checkpoint folder was left"
  echo "interrupt $hits: SIG$sig after ${delay}s: $(grep -o "at step [0-9]* (during [a-z -]*)" $d.err | head -1)" >>landed.txt
done
[ $hits -eq "$runs" ] && ok || bad "only $hits of $runs signals arrived during a run ($early came too late)"
# the interrupts must have met each kind of work (with 50, each is hit several times)
if [ "$runs" -ge 50 ]; then
  for what in "a training step" "evaluation" "checkpoint writing"; do
    grep -q "during $what)" landed.txt && ok || bad "no interrupt came during $what"
  done
fi
echo "signal test: $hits interrupts, $early after the run had finished; they came during:" \
  "$(grep -o "during [a-z -]*" landed.txt | sort | uniq -c | awk '{c = $1; $1 = $2 = ""; printf "%s x%s, ", substr($0, 3), c}')"

# ---- a second SIGINT while stopping ends the process at once, still with status 130: the
# first comes during the 0.3 s start-up measurement of the FMA peak, where it can only be recorded
"$moelab" train exp.toml --set run.dir=twice --set run.peak_gflops=0 >/dev/null 2>twice.err &
pid=$!
started $pid
sleep 0.05
kill -INT $pid
sleep 0.05
kill -INT $pid
wait $pid
rc=$?
[ $rc -eq 130 ] && grep -q "second interrupt: stopping now without saving" twice.err && ok ||
  bad "two SIGINTs: exit $rc, $(tail -1 twice.err)"
resumed twice "after two SIGINTs"

# ---- SIGUSR1: a checkpoint now, training goes on (long phase, checkpoints only on request)
"$moelab" train exp.toml --set run.dir=usr1 --set checkpoint.every=0 --set phases.0.steps=4000 \
  --set eval.every=0 --set eval.forgetting_every=0 --set schedule.decay_at=end >/dev/null 2>usr1.err &
pid=$!
lines() { [ "$(cat "$1" 2>/dev/null | wc -l)" -ge "$2" ]; }
wait_for lines usr1/metrics.jsonl 5 || bad "the SIGUSR1 run did not start: $(tail -1 usr1.err)"
kill -USR1 $pid
wait_for has_checkpoint usr1 && ok || bad "SIGUSR1 wrote no checkpoint"
for _ in 1 2 3 4 5; do kill -USR1 $pid; sleep 0.05; done
kill -0 $pid 2>/dev/null && ok || bad "SIGUSR1 ended the run"
kill -INT $pid
wait $pid
rc=$?
[ $rc -eq 130 ] && grep -q "interrupted by signal 2 at step" usr1.err && ok ||
  bad "SIGINT after SIGUSR1: exit $rc, $(tail -1 usr1.err)"

# ---- bench train under repeated SIGUSR1 runs to the end
cat >bench.json <<'JSON'
{"model": {"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
 "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "max_position_embeddings": 64},
 "batch_size": 4, "seq_len": 64}
JSON
"$moelab" bench train --config bench.json --steps 200 --warmup 1 --peak 100 >bench.out 2>bench.err &
pid=$!
started $pid
for _ in $(seq 1 40); do kill -USR1 $pid 2>/dev/null || break; sleep 0.01; done
wait $pid
rc=$?
[ $rc -eq 0 ] && ok || bad "bench train under SIGUSR1: exit $rc: $(tail -1 bench.err)"

# ---- a signal before the first step: nothing to save, and the directory starts again. The
# 0.3 s start-up measurement of the FMA peak keeps the first step far enough away that the
# signal lands before it even on a loaded machine.
"$moelab" train exp.toml --set run.dir=early --set run.peak_gflops=0 >/dev/null 2>early.err &
pid=$!
started $pid
kill -INT $pid
wait $pid
rc=$?
# (a signal before the command has parsed its arguments ends the process as any program's would,
# still 130 and with nothing to lose)
[ $rc -eq 130 ] && { grep -Eq "interrupted by signal 2 at step 0 \(during (start-up|training)\)" early.err ||
  ! has_checkpoint early; } && ok || bad "SIGINT at start-up: exit $rc, $(tail -1 early.err)"
resumed early "after an early SIGINT"

finish "signal test"
