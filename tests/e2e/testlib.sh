# Shared by the shell tests (source it after `set -u`): a scratch folder removed on exit,
# pass/fail counting, the one-line-error check, the tally, and what the tests train on: generated
# books prepared as data (book_data, verses_data, titles_data), the experiment of the tiny model
# (tiny_config, with tiny_moe and titles_run) and a trained one (tiny_lm).
tmp=$(mktemp -d)
trap '[ -n "${KEEP_TMP:-}" ] && echo "kept $tmp" || rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# expect_error "description" "regex on stderr" command...: exit status 1 and one stderr line
# that matches. An old command or flag name's rename notice (a line of its own before the error,
# tests/e2e/cli_names_test.sh checks it) is left out.
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

# book_data MOELAB VOCAB [NAME]: the text files of ./corpus prepared into ./NAME (default data)
# by the spec NAME.json: a SentencePiece tokenizer of VOCAB pieces, subsets A (the first half) and
# B (the second), 10% of each held out. Stops the test on failure.
book_data() {
  local moelab=$1 vocab=$2 name=${3:-data}
  cat >"$name.json" <<JSON
{"tokenizer": {"kind": "sentencepiece", "vocab_size": $vocab},
 "sources": {"book": {"paths": ["corpus"]}},
 "subsets": {"A": [{"source": "book", "end": 0.5}], "B": [{"source": "book", "begin": 0.5}]},
 "validation_fraction": 0.1}
JSON
  "$moelab" data prepare "$name.json" --out "$name" >prep.log 2>&1 || { echo "FAIL: data prepare: $(tail -1 prep.log)"; exit 1; }
}

# verses_data MOELAB CHAPTERS LINES VOCAB MOD: a generated book of CHAPTERS files of LINES verses,
# prepared into ./data by book_data. Stops the test on failure.
verses_data() {
  local moelab=$1 chapters=$2 lines=$3 vocab=$4 mod=$5 i l
  mkdir -p corpus
  for i in $(seq 1 "$chapters"); do
    for l in $(seq 1 "$lines"); do echo "Verse $l of chapter $i: and the king went up to the city of David, number $((i * l % mod))."; done >"corpus/c$i.txt"
  done
  book_data "$moelab" "$vocab"
}

# titles_data MOELAB CHAPTERS: a generated book of CHAPTERS files of 10 lines in which each of 12
# names has its own title in the first half (subset A) and the second half (B) gives the titles
# to other names, so that what A taught (title -> name, the M_ex cue) is overwritten during B;
# prepared into ./data by book_data (400 pieces), the names listed in ents.tsv as entities.
# Stops the test on failure.
titles_data() {
  local moelab=$1 chapters=$2 i l j n
  local names=(Abner Boaz Caleb Dinah Eglon Gideon Hiram Jethro Korah Laban Micah Naomi)
  local titles=(shepherd smith scribe weaver potter judge mason herdsman singer trader elder gleaner)
  mkdir -p corpus
  for i in $(seq 1 "$chapters"); do
    for l in $(seq 1 10); do
      j=$(((i * 5 + l) % 12))
      n=$j
      [ "$i" -gt $((chapters / 2)) ] && n=$(((j + 5) % 12))
      echo "In the day $l the ${titles[$j]} ${names[$n]} went down to the well at evening."
    done >"corpus/c$i.txt"
  done
  book_data "$moelab" 400
  printf '%s\tPER\n' "${names[@]}" >ents.tsv
}

# finish NAME: prints the tally; the status says whether everything passed.
finish() {
  echo "$1: $pass passed, $fail failed"
  [ "$fail" -eq 0 ]
}

# tiny_config [SECTION.KEY=VALUE...]: prints the experiment of the tiny model the tests train:
#   [run]       folder run, seed 3, 2 threads, a log line per step
#   [model]     dense, 2 layers, d 32, vocab 320, 2 heads sharing one KV head of 16, FFN 32,
#               sliding window 8, 32 positions
#   [data]      ./data, sequences of 32 tokens; [train] batches of 4
#   [schedule]  3e-3 after 2 warm-up steps, decaying to 3e-4 over 10
#   [[phases]]  20 steps on subset A
# Each SECTION.KEY=VALUE sets a key where it stands; a key the experiment lacks ends its section,
# a section it lacks ends the text; an empty VALUE removes the key. VALUE is TOML text, a bare
# word a string (as with moelab's --set). The section of [[phases]] is "phases".
tiny_config() {
  awk '
    # TOML as given (numbers, booleans, arrays, inline tables, quoted strings), else a string
    function toml(v, c) {
      c = substr(v, 1, 1)
      if (v ~ /^[-+]?[0-9][0-9.e+-]*$/ || v == "true" || v == "false" || index("[{\"" q, c)) return v
      return "\"" v "\""
    }
    # the keys of section S that it does not have yet, in the order given
    function add(s, i, k) {
      for (i = 1; i <= n[s]; i++) {
        k = key[s, i]
        if (!((s, k) in had) && val[s, k] != "") print k " = " toml(val[s, k])
      }
    }
    BEGIN {
      q = sprintf("%c", 39)
      for (a = 1; a < ARGC; a++) {
        eq = index(ARGV[a], "=")
        dot = index(ARGV[a], ".")
        if (dot < 2 || eq < dot + 2) {
          print "tiny_config: \"" ARGV[a] "\": expected SECTION.KEY=VALUE" >"/dev/stderr"
          exit 1
        }
        s = substr(ARGV[a], 1, dot - 1)
        k = substr(ARGV[a], dot + 1, eq - dot - 1)
        if (!(s in n)) { sections[++ns] = s; n[s] = 0 }
        if (!((s, k) in val)) key[s, ++n[s]] = k
        val[s, k] = substr(ARGV[a], eq + 1)
        delete ARGV[a]
      }
    }
    /^\[/ {
      add(cur)
      cur = $0
      gsub(/[][]/, "", cur)
      seen[cur]
      print
      next
    }
    {
      k = $1
      if ((cur, k) in val) {
        had[cur, k]
        if (val[cur, k] != "") print k " = " toml(val[cur, k])
        next
      }
      print
    }
    END {
      add(cur)
      for (i = 1; i <= ns; i++) {
        if (!(sections[i] in seen)) {
          print "[" sections[i] "]"
          add(sections[i])
        }
      }
    }
  ' "$@" <<'TOML'
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
max_position_embeddings = 32
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
}

# The tiny model as an MoE, for tiny_config: 4 experts of width 16, top-2.
tiny_moe=(model.ffn_type=moe model.num_local_experts=4 model.num_experts_per_tok=2 model.intermediate_size=16)

# The studies' model for titles_data, for tiny_config: vocabulary 400, FFN 64, window 16, 64
# positions and sequences of 64; seed 5, a log line every 5 steps; 5e-3 after 5 warm-up steps,
# decaying to 5e-4 over 10; 30 steps on A.
titles_run=(run.seed=5 run.log_every=5 model.vocab_size=400 model.intermediate_size=64 model.sliding_window=16
  model.max_position_embeddings=64 data.seq_len=64 schedule.max_lr=5e-3 schedule.min_lr=5e-4
  schedule.warmup_steps=5 phases.steps=30)

# tiny_lm MOELAB MAX_POS: tiny_config's model with MAX_POS positions, trained for its 20 steps on
# subset A of verses_data's ./data, as the inference tests use one: run/step_00000020. Stops the
# test on failure.
tiny_lm() {
  tiny_config model.max_position_embeddings="$2" >run.toml
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
