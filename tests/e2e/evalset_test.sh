#!/usr/bin/env bash
# Evaluation sets end to end: a model whose vocabulary is padded beyond the tokenizer's trains
# with the forgetting metrics and evaluates (greedy decoding stays within the tokenizer's ids);
# malformed sets are refused by `moelab eval` and `moelab train` with exit 1 and one line naming
# file:line and the field, before any work; a run that recalls too little to measure forgetting
# stops with one line, its checkpoint kept (after A, and for a base model before step 1).
set -u
moelab=$1
source "$(dirname "$0")/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=2

verses_data "$moelab" 30 10 300 13
printf 'David\tPER\nking\tMISC\n' >ents.tsv
if "$moelab" entities build --data data --entities ents.tsv --out ev.jsonl --top 100 --bottom 100 \
  --prompt 8 --target 8 --max-samples 40 >/dev/null 2>ent.err; then ok; else bad "entities build: $(tail -1 ent.err)"; fi
# vocab_size 512 > the tokenizer's 300: the padded rows are legitimate (gpt-oss pads o200k)
{
  tiny_config model.vocab_size=512 model.num_hidden_layers=1 model.sliding_window= train.batch_size=2 \
    schedule.max_lr= schedule.min_lr= schedule.warmup_steps=1 schedule.decay_steps=1 schedule.decay_at=end \
    phases.steps=3
  cat <<'TOML'
[[phases]]
name = "B"
subset = "B"
steps = 1
[eval]
evalset = "ev.jsonl"
forgetting_batch = 16
# 3 steps of A recall nothing: these runs test decoding, not forgetting (section 4 stops)
min_recalled = 0
TOML
} >exp.toml

# 1. padded vocabulary: training evaluates after A, and moelab eval decodes only real ids
# (everything below needs its checkpoint)
if "$moelab" train exp.toml >/dev/null 2>train.err; then ok; else
  bad "train with a padded vocabulary: $(tail -1 train.err)"
  finish evalset_test
  exit
fi
grep -q '"forgetting":{"evalset":{"samples":' run/metrics.jsonl && ok || bad "the set is evaluated after A"
ckpt=$(ls -d run/step_* | tail -1)
if "$moelab" eval "$ckpt" --evalset ev.jsonl --data data --batch 8 --out ev.json >/dev/null 2>ev.err; then ok; else bad "eval with a padded vocabulary: $(tail -1 ev.err)"; fi
grep -q '"m_ex"' ev.json 2>/dev/null && ok || bad "eval writes its metrics"
expect_error "model vocab below the tokenizer's" "config.json: vocab_size 200 is smaller than the vocabulary of data's tokenizer \(300\)" \
  sh -c "cp -r '$ckpt' small && sed -i 's/\"vocab_size\": 512/\"vocab_size\": 200/' small/config.json && '$moelab' eval small --evalset ev.jsonl --data data"

# 2. malformed sets: exit 1, one line naming file:line and the field
# damage SED_SCRIPT LABEL REGEX: a copy of ev.jsonl edited by sed must be refused by eval
damage() {
  sed -E "$1" ev.jsonl >bad.jsonl
  cmp -s ev.jsonl bad.jsonl && { bad "$2: sed changed nothing"; return; }
  expect_error "eval, $2" "$3" "$moelab" eval "$ckpt" --evalset bad.jsonl --data data
}
damage '2s/"target":\[[^]]*\]/"target":[]/' "empty target" "bad.jsonl:2: 'target' has 0 tokens, the header says 8"
damage '3s/"in_prompt":\[[^]]*\]/"in_prompt":[]/' "empty in_prompt" "bad.jsonl:3: 'in_prompt' has 0 tokens"
damage '2s/"ex_prompt":\[[^]]*\]/"ex_prompt":[]/' "empty ex_prompt" "bad.jsonl:2: 'ex_prompt' has 0 tokens"
damage '2s/"target":\[/"target":[5,/' "longer target" "bad.jsonl:2: 'target' has 9 tokens, the header says 8"
damage '2s/"in_prompt":\[[0-9]+/"in_prompt":[-5/' "negative id" "bad.jsonl:2: 'in_prompt'\[0\] = -5 is a negative token id"
damage '2s/"target":\[[0-9]+/"target":[300/' "id = tokenizer vocab" "bad.jsonl:2: 'target'\[0\] = 300 is not below the tokenizer's vocabulary \(300\)"
damage '2s/"target":\[[0-9]+/"target":[99999999999/' "huge id" "bad.jsonl:2: 'target'\[0\] = 99999999999 is not below"
damage '2s/"ex_prompt":\[[0-9]+/"ex_prompt":["7"/' "string id" "bad.jsonl:2: 'ex_prompt'\[0\] is not an integer token id"
damage '2s/"target":\[([0-9]+)/"target":[\1.5/' "float id" "bad.jsonl:2: 'target'\[0\] is not an integer token id"
damage '2s/"target":\[[^]]*\]/"target":"1 2 3"/' "string target" "bad.jsonl:2: 'target' must be a list of token ids"
damage '2s/"entity":"[^"]*"/"entity":7/' "numeric entity" "bad.jsonl:2: 'entity' must be a string"
damage '2s/"in_prompt":\[[^]]*\],//' "missing in_prompt" "bad.jsonl:2: 'in_prompt' is missing"
damage '2s/.{12}$//' "truncated line" "bad.jsonl:2: not a JSON object"
damage '1s/.*/[1, 2]/' "header not an object" "bad.jsonl:1: not a moelab evaluation set"
damage '1s/"prompt":[0-9]+,//' "header without prompt" "bad.jsonl:1: 'prompt' is missing"
damage '1s/"target":[0-9]+/"target":"8"/' "header target string" "bad.jsonl:1: 'target' must be a non-negative integer"
damage '1s/"prompt":[0-9]+/"prompt":30/' "longer than the model's positions" "bad.jsonl:1: 'prompt' \+ 'target' = 38 exceeds the model's 32 positions"
damage '1s/"fingerprint":"[^"]*"/"fingerprint":"xyz"/' "fingerprint" "bad.jsonl:1: 'fingerprint' must be 1 to 16 hex digits"
expect_error "eval, empty file" "empty.jsonl: empty evaluation set" sh -c ": >empty.jsonl; '$moelab' eval '$ckpt' --evalset empty.jsonl --data data"
expect_error "eval, batch 0" "eval: --batch must be positive" "$moelab" eval "$ckpt" --evalset ev.jsonl --data data --batch 0

# 3. training refuses a malformed set at its start, not at the end of A
sed -E '2s/"target":\[[^]]*\]/"target":[]/' ev.jsonl >bad.jsonl
expect_error "train, empty target" "bad.jsonl:2: 'target' has 0 tokens" "$moelab" train exp.toml --set run.dir=run2 --set eval.evalset=bad.jsonl
[ -e run2/step_00000001 ] && bad "train started before refusing the set" || ok

# 4. a study that cannot measure anything stops (docs/methods.md §5.5): A far too short to recall
# 20 samples. At the end of A: one line with the count and what to change, exit 1, the
# checkpoint of A kept and nothing of B trained; a resume stops the same way until told to go on.
short=(--set run.dir=short --set eval.min_recalled=20)
# expect_stop "description" "regex" command...: exit 1, the last stderr line the error (progress
# and start-up lines come before it)
expect_stop() {
  local what=$1 re=$2
  shift 2
  "$@" >/dev/null 2>stop.err
  local rc=$?
  [ $rc -eq 1 ] && tail -1 stop.err | grep -Eq -- "^moelab: error: $re" && ok ||
    bad "$what: exit $rc, $(tail -1 stop.err)"
}
expect_stop "too few recalled after A" \
  "exp.toml: after phase A the model recalls [0-9]+ of the [0-9]+ evaluation samples \(M_ex = 1\), fewer than eval.min_recalled = 20, so forgetting cannot be measured; stopped. Train A for more epochs, use a larger model, or choose entities that recur more often in A \(eval.min_recalled = 0 goes on anyway\); the checkpoint short/step_00000003 is kept$" \
  "$moelab" train exp.toml "${short[@]}"
[ -d short/step_00000003 ] && [ "$(ls -d short/step_* | wc -l)" -eq 1 ] && ok || bad "the checkpoint of A is kept, none of B written"
tail -1 short/metrics.jsonl | grep -q '^{"step":3,.*"forgetting":{"evalset":{"samples":[0-9]*,"kept":[0-9]*}' && ! grep -q '"phase":"B"' short/metrics.jsonl &&
  ok || bad "the filtering is logged and B never trained"
expect_stop "a resume stops again" "exp.toml: after phase A the model recalls .* fewer than eval.min_recalled = 20" \
  "$moelab" train exp.toml "${short[@]}" --resume
if "$moelab" train exp.toml "${short[@]}" --set eval.min_recalled=0 --resume >/dev/null 2>err; then ok; else bad "min_recalled = 0 goes on: $(tail -1 err)"; fi
[ -d short/step_00000004 ] && ok || bad "B trained after min_recalled = 0"
# filter_at = "start": the base model is filtered before step 1, and too little stops it there
expect_stop "too few recalled by the base" \
  "exp.toml: before step 1 the base model \(model.init_from = short/step_00000003\) recalls [0-9]+ of the [0-9]+ evaluation samples \(M_ex = 1\), fewer than eval.min_recalled = 20, so forgetting cannot be measured; stopped before training. Use a base trained longer on its data, a larger one, or entities that recur more often in that data \(eval.min_recalled = 0 goes on anyway\)$" \
  "$moelab" train exp.toml --set run.dir=ct --set eval.min_recalled=20 --set eval.filter_at=start --set model.init_from=short/step_00000003
! ls -d ct/step_* >/dev/null 2>&1 && head -1 ct/metrics.jsonl | grep -q '^{"step":0,"phase":"A","tokens":0,"forgetting":{"evalset":' &&
  ok || bad "the base's filtering is logged as step 0 and nothing trained"

finish evalset_test
