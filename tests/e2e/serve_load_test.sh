#!/usr/bin/env bash
# moelab serve under load: a tiny model trained for 20 steps serves 16 clients sending 200 mixed
# requests (lm-eval scoring, greedy generation with stop strings, batched prompts, seeded n=2
# samples, SSE streams); every answer must equal the one the same request got alone, none lost
# or duplicated. Then a burst against a queue of 2 (well-formed 503s, healthy after) and a
# SIGTERM while requests run (exit 0, the running ones complete). bench/serve_load.py checks.
set -u
moelab=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
source "$(dirname "$0")/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=2

verses_data "$moelab" 30 10 320 13
tiny_lm "$moelab" 96

# serve_load.py starts and SIGTERMs its own servers; it kills them if it is itself interrupted
python3 "$src/bench/serve_load.py" --moelab "$moelab" --checkpoint run/step_00000020 --data data \
  --threads 2 --slots 8 --clients 16 --requests 200 --distinct 80 --gen-tokens 16 --seed 7 \
  --phases load,overload,sigterm --out load.json >load.log 2>&1
rc=$?
[ $rc = 0 ] && ok || { bad "serve_load.py exit $rc"; tail -25 load.log; }

# the summary says so too, independently of the exit status
python3 - load.json <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
L = s["load"]
errs = []
if L["requests"] != 200 or L["status"] != {"200": 200}: errs.append(f"status {L['status']}")
if L["lost"] or L["duplicate_answers"] or L["duplicate_ids"]: errs.append("lost or duplicated")
if sum(L["differences"].values()): errs.append(f"differences {L['differences']}")
if len(L["mix"]) < 5: errs.append(f"mix {L['mix']} lacks kinds")
if L["tokens_per_step"] <= 1.5: errs.append(f"{L['tokens_per_step']} tokens per step: no batching")
o, t = s["overload"], s["sigterm"]
if not (o["503"] > 0 and o["ok"] > 0 and o["exit"] == 0): errs.append(f"overload {o}")
if not (t["completed"] > 0 and t["exit"] == 0): errs.append(f"sigterm {t}")
for e in errs: print("FAIL:", e)
sys.exit(1 if errs else 0)
PY
[ $? = 0 ] && ok || bad "the summary in load.json"

finish "serve load test"
