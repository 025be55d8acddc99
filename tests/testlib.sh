# Shared by the shell tests (source it after `set -u`): a scratch folder removed on exit,
# pass/fail counting, the one-line-error check, and the tally.
tmp=$(mktemp -d)
trap '[ -n "${KEEP_TMP:-}" ] && echo "kept $tmp" || rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# expect_error "description" "regex on stderr" command...: exit status 1 and one stderr line
# that matches. An old command or flag name's rename notice (a line of its own before the error,
# tests/cli_names_test.sh checks it) is left out.
expect_error() {
  local what=$1 re=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err.all"
  local rc=$?
  grep -Ev "^moelab: '.*' is now '.*'; the old name goes in the next release$" "$tmp/err.all" >"$tmp/err"
  if [ $rc -ne 1 ]; then bad "$what: exit $rc, expected 1"; return; fi
  if [ "$(wc -l <"$tmp/err")" -ne 1 ]; then bad "$what: stderr is not one line: $(cat "$tmp/err")"; return; fi
  if ! grep -Eq -- "$re" "$tmp/err"; then bad "$what: stderr '$(cat "$tmp/err")' does not match '$re'"; return; fi
  ok
}

# verses_data MOELAB CHAPTERS LINES VOCAB MOD: a generated book of CHAPTERS files of LINES verses,
# prepared into ./data with a SentencePiece tokenizer of VOCAB pieces, subsets A (the first half)
# and B (the second), 10% of each held out. Stops the test on failure.
verses_data() {
  local moelab=$1 chapters=$2 lines=$3 vocab=$4 mod=$5 i l
  mkdir -p corpus
  for i in $(seq 1 "$chapters"); do
    for l in $(seq 1 "$lines"); do echo "Verse $l of chapter $i: and the king went up to the city of David, number $((i * l % mod))."; done >"corpus/c$i.txt"
  done
  cat >data.json <<JSON
{"tokenizer": {"kind": "sentencepiece", "vocab_size": $vocab},
 "sources": {"book": {"paths": ["corpus"]}},
 "subsets": {"A": [{"source": "book", "end": 0.5}], "B": [{"source": "book", "begin": 0.5}]},
 "validation_fraction": 0.1}
JSON
  "$moelab" data prepare data.json --out data >prep.log 2>&1 || { echo "FAIL: data prepare: $(tail -1 prep.log)"; exit 1; }
}

# finish NAME: prints the tally; the status says whether everything passed.
finish() {
  echo "$1: $pass passed, $fail failed"
  [ "$fail" -eq 0 ]
}

# tiny_lm MOELAB MAX_POS: a 2-layer dense model (d 32, vocab 320, MAX_POS positions) trained
# for 20 steps on subset A of verses_data's ./data, as the inference tests use one:
# run/step_00000020. Stops the test on failure.
tiny_lm() {
  cat >run.toml <<TOML
[run]
dir = "run"
seed = 3
threads = 2
log_every = 1
[model]
vocab_size = 320
hidden_size = 32
num_hidden_layers = 2
num_attention_heads = 2
num_key_value_heads = 1
head_dim = 16
intermediate_size = 32
sliding_window = 8
max_position_embeddings = $2
[data]
dir = "data"
seq_len = 32
[train]
batch_size = 4
[schedule]
max_lr = 3e-3
min_lr = 3e-4
warmup_steps = 2
decay_steps = 10
[[phases]]
name = "A"
subset = "A"
steps = 20
TOML
  "$1" train run.toml >train.log 2>&1 || { echo "FAIL: train: $(tail -1 train.log)"; exit 1; }
}

# from_checkpoint_toml RUN_DIR CKPT STEPS SEED MAX_LR: an experiment of STEPS steps on subset B
# (seq 32, batch 4, constant rate) whose model is the checkpoint folder CKPT ([model] config and
# init_from), as upcycled and compressed folders are trained on.
from_checkpoint_toml() {
  cat <<TOML
[run]
dir = "$1"
seed = $4
threads = 2
log_every = 1
[model]
config = "$2/config.json"
init_from = "$2"
[data]
dir = "data"
seq_len = 32
[train]
batch_size = 4
[schedule]
kind = "constant"
max_lr = $5
warmup_steps = 1
[[phases]]
name = "B"
subset = "B"
steps = $3
TOML
}
