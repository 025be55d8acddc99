#!/usr/bin/env bash
# moelab export gguf / import gguf against real llama.cpp: node-llama-cpp 3.21.1's prebuilt CPU
# library (installed into the moelab cache by `make deps`, scripts/fetch_node_llama_cpp.sh) loads
# the exported files of tiny models trained on real English text (Debian's license texts) with a
# SentencePiece BPE tokenizer: a dense and an MoE model at every dtype, and a dense one with tied
# embeddings and neither sinks nor biases nor sliding layers and an MoE with a dense layer and
# only sliding layers, and MoEs with LoRA and with DeRS deltas (merged) at f32, and a vocab_size
# padded past the tokenizer's pieces.
# tests/e2e/llama_check.mjs checks that llama.cpp tokenizes the
# prompts as moelab does, that its next-token log-probs over the whole vocabulary agree with
# moelab's (tolerances per dtype below) and that its greedy continuations equal
# `moelab generate --greedy`. Then: import gives the f32 checkpoint back bit for bit and
# quantized files as their dequantized weights; what llama.cpp cannot express fails with one
# line and writes nothing. A tiktoken o200k_harmony model checks llama.cpp's BPE tokenizer with the
# merges recovered from the ranks. Without node-llama-cpp the test FAILS saying so.
set -u
moelab=$1
here=$(cd "$(dirname "$0")" && pwd)
source "$here/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=2
cache=${MOELAB_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/moelab}
nlc="$cache/npm/node-llama-cpp@3.21.1"
if [ ! -d "$nlc/node_modules/@node-llama-cpp/linux-x64" ]; then
  echo "FAIL: node-llama-cpp@3.21.1 is not installed in $nlc (make deps installs it: scripts/fetch_node_llama_cpp.sh)"
  exit 1
fi
command -v node >/dev/null || { echo "FAIL: node is not installed (make deps installs it)"; exit 1; }

# ---- data: real text, one paragraph a line; a SentencePiece BPE tokenizer of 600 pieces
mkdir -p corpus
for f in GPL-3 GPL-2 LGPL-2.1 Apache-2.0 MPL-2.0 GFDL-1.3 Artistic; do
  [ -f /usr/share/common-licenses/$f ] || { echo "FAIL: /usr/share/common-licenses/$f is missing (Debian's base-files)"; exit 1; }
  awk 'BEGIN { RS = ""; } { gsub(/[ \t\n]+/, " "); sub(/^ /, ""); print }' /usr/share/common-licenses/$f >corpus/$f.txt
done
book_data "$moelab" 600

# ---- models: 6 trained for 60 steps (seq 64)
train=(model.vocab_size=600 model.max_position_embeddings=64 data.seq_len=64 phases.steps=60
  schedule.decay_steps=40 model.hidden_size=48 model.intermediate_size=64)
moe=(model.ffn_type=moe model.num_local_experts=4 model.num_experts_per_tok=2 model.intermediate_size=32)
train_model() {
  local name=$1
  shift
  tiny_config run.dir=$name "${train[@]}" "$@" >$name.toml
  "$moelab" train $name.toml >$name.log 2>&1 || { bad "$name: train: $(tail -1 $name.log)"; return 1; }
}
train_model dense
train_model moe "${moe[@]}"
train_model tied model.tie_word_embeddings=true model.attention_sinks=false \
  model.attention_bias=false model.sliding_window=0
train_model partial "${moe[@]}" 'model.moe_layers=[1]' \
  'model.layer_types=["sliding_attention", "sliding_attention"]'
train_model lora "${moe[@]}" 'model.lora={rank = 2, alpha = 4, targets = ["q_proj", "mlp\\.experts"]}'
train_model ders "${moe[@]}" 'model.ders={delta = "lowrank", rank = 3}'
ck() { echo $1/step_00000060; }

cat >prompts.txt <<'EOF'
This License applies to any program or other work
The licenses for most software are designed to take away your freedom
You may convey verbatim copies of the Program
If you distribute copies of such a program, whether gratis or for a fee
Each Contributor hereby grants to You a
THERE IS NO WARRANTY FOR THE PROGRAM
EOF

# llama.cpp runs on 1 thread: its threads wait by spinning, and on 2 cores shared with other
# tests 2 threads were 20 times slower.
# check NAME DTYPE TOL MIN: export, then llama_check.mjs (log-probs within TOL; at least MIN of
# the 6 greedy continuations of 12 tokens equal moelab's)
check() {
  local name=$1 dtype=$2 tol=$3
  local g=(--moelab "$moelab" --checkpoint "$(ck $name)" --data data --max-new 12 --min-greedy $4)
  [ $dtype = f32 ] && g+=(--margin-ratio 10)
  "$moelab" export gguf "$(ck $name)" --out $name.$dtype.gguf --dtype $dtype --data data \
    --prompts prompts.txt --reference $name.$dtype.ref.json >$name.$dtype.log 2>&1 ||
    { bad "$name $dtype: export: $(tail -1 $name.$dtype.log)"; return; }
  node "$here/llama_check.mjs" --nlc "$nlc" --model $name.$dtype.gguf --reference $name.$dtype.ref.json \
    --tol $tol --threads 1 "${g[@]}" >$name.$dtype.check 2>$name.$dtype.err
  local rc=$?
  if [ $rc = 2 ]; then bad "$name $dtype: $(cat $name.$dtype.check) $(tail -1 $name.$dtype.err)"; return; fi
  [ $rc = 0 ] && ok || bad "$name $dtype: $(cat $name.$dtype.check) $(tail -1 $name.$dtype.err)"
  echo "  $name $dtype ($(stat -c %s $name.$dtype.gguf) bytes): $(cat $name.$dtype.check)"
}
# Tolerances on max |Δ log p| (tokens with p > 1e-6 for either): f32 is float rounding only
# (llama.cpp's f32 KV cache; measured 2.5e-6); f16 and q8_0 also round the activations (ggml's
# matmuls convert them to the weights' type; measured 1.0e-3 and 8.5e-3), bf16 keeps 8 bits of
# mantissa (8.8e-3). Greedy: every continuation at f32 and f16, 4 of 6 at bf16 and q8_0, whose
# rounding may flip a near-tie. At f32 no greedy choice may be closer than 10 times the largest
# log-prob difference (so that agreement is not luck).
for name in dense moe; do
  check $name f32 1e-4 6
  check $name f16 0.02 6
  check $name bf16 0.1 4
  check $name q8_0 0.1 4
done
check tied f32 1e-4 6
check partial f32 1e-4 6
# LoRA and DeRS merged into plain weights: the reference and `generate` use the unmerged model
check lora f32 1e-4 6
check ders f32 1e-4 6
grep -q '^merged: {"lora":' lora.f32.log && grep -q '^merged: {"ders":"lowrank:3"}' ders.f32.log && ok ||
  bad "merged: '$(grep merged lora.f32.log)' '$(grep merged ders.f32.log)'"

# ---- tiktoken o200k_harmony as llama.cpp's BPE: a model of its 201088 ids trained 4 steps; ids
# equal on prompts with numbers, apostrophes, runs of spaces, a tab, accents, CJK and emoji, and
# the log-probs (its greedy choices are near-ties: not compared)
mkdir -p tk && cp corpus/GPL-3.txt corpus/GPL-2.txt corpus/LGPL-2.1.txt corpus/MPL-2.0.txt tk/
cat >tk.json <<'JSON'
{"tokenizer": {"kind": "tiktoken", "encoding": "o200k_harmony"},
 "sources": {"book": {"paths": ["tk"]}},
 "subsets": {"A": [{"source": "book", "end": 0.5}], "B": [{"source": "book", "begin": 0.5}]},
 "validation_fraction": 0.1}
JSON
printf '%s\n' "It's 2024: they'll pay \$1,234.56 — naïve café!" "  several   spaces and	a tab " \
  "CamelCaseWords and ALLCAPS'S don'T" "日本語のテキストです" "emoji 🎉🎉 ok ÀÉÎ" \
  "x=[1,2,3];y={'a':b}//c" >tk_prompts.txt
if "$moelab" data prepare tk.json --out tkdata >tk.log 2>&1; then
  tiny_config run.dir=tkrun data.dir=tkdata model.vocab_size=201088 phases.steps=4 \
    schedule.warmup_steps=1 schedule.decay_steps=2 >tkrun.toml
  "$moelab" train tkrun.toml >tk.log 2>&1 || bad "tiktoken: train: $(tail -1 tk.log)"
  "$moelab" export gguf tkrun/step_00000004 --out tk.gguf --data tkdata --prompts tk_prompts.txt \
    --reference tk.ref.json >tk.log 2>&1 || bad "tiktoken: export: $(tail -1 tk.log)"
  grep -q "tiktoken o200k_harmony as llama.cpp's BPE (gpt2, pre-tokenizer gpt-4o; 201088 ids, 199742 merges" tk.log &&
    ok || bad "tiktoken: export says '$(tail -1 tk.log)'"
  node "$here/llama_check.mjs" --nlc "$nlc" --model tk.gguf --reference tk.ref.json --tol 1e-4 \
    --threads 1 >tk.check 2>tk.err && ok || bad "tiktoken: $(cat tk.check) $(tail -1 tk.err)"
  echo "  tiktoken f32: $(cat tk.check)"
else
  bad "tiktoken data: $(tail -1 tk.log)"
fi

# ---- a vocab_size padded past the SentencePiece pieces (608 rows, 600 pieces; a model trained 2
# steps): the 8 ids past the tokenizer written as [PADn] of type unused; llama.cpp loads the file,
# tokenizes as moelab does, and its log-probs over all 608 ids agree
tiny_config run.dir=padrun "${train[@]}" model.vocab_size=608 phases.steps=2 \
  schedule.warmup_steps=1 schedule.decay_steps=1 >padrun.toml
if "$moelab" train padrun.toml >pad.log 2>&1 &&
  "$moelab" export gguf padrun/step_00000002 --out pad.gguf --data data --prompts prompts.txt \
    --reference pad.ref.json >pad.log 2>&1; then
  grep -q "(600 pieces and 8 \[PADn\] up to vocab_size 608," pad.log && ok ||
    bad "padded vocab: export says '$(tail -1 pad.log)'"
  node "$here/llama_check.mjs" --nlc "$nlc" --model pad.gguf --reference pad.ref.json --tol 1e-4 \
    --threads 1 >pad.check 2>pad.err && ok || bad "padded vocab: $(cat pad.check) $(tail -1 pad.err)"
  echo "  padded vocab f32: $(cat pad.check)"
else
  bad "padded vocab: $(tail -1 pad.log)"
fi

# ---- import: f32 gives the checkpoint's tensors and config back bit for bit
for name in dense moe tied partial; do
  "$moelab" import gguf $name.f32.gguf --out $name.back >imp.log 2>&1 && ok ||
    { bad "$name: import: $(tail -1 imp.log)"; continue; }
  "$moelab" export "$(ck $name)" --out $name.plain >/dev/null
  cmp -s $name.back/model.safetensors $name.plain/model.safetensors && ok ||
    bad "$name: import of the f32 file differs from the checkpoint's tensors"
  cmp -s $name.back/config.json $name.plain/config.json && ok || bad "$name: imported config differs"
done
# quantized files import as their dequantized weights: exporting those again at the same dtype
# and importing gives the same tensors
for dtype in f16 bf16 q8_0; do
  "$moelab" import gguf moe.$dtype.gguf --out moe.$dtype.back >imp.log 2>&1 && ok ||
    { bad "moe $dtype: import: $(tail -1 imp.log)"; continue; }
  "$moelab" export gguf moe.$dtype.back --out moe.$dtype.again.gguf --dtype $dtype --data data >/dev/null 2>&1
  "$moelab" import gguf moe.$dtype.again.gguf --out moe.$dtype.again >/dev/null 2>&1
  cmp -s moe.$dtype.back/model.safetensors moe.$dtype.again/model.safetensors && ok ||
    bad "moe $dtype: dequantized weights change on a second export"
done

# ---- one-line refusals, nothing written
variant() {  # variant NAME FROM SED: a copy of FROM's checkpoint with its config.json edited
  mkdir -p $1 && cp -r "$(ck $2)" $1/ && sed -i -E "$3" $1/step_00000060/config.json
}
variant alpha dense 's/"swiglu_alpha": [0-9.]+/"swiglu_alpha": 1.5/'
variant layers dense 's/"sliding_attention",/"full_attention",/; s/"full_attention"$/"sliding_attention"/'
variant ct dense 's/"ffn_type": "dense"/"ffn_type": "dense", "moe_ct": {"experts": 2, "top_k": 1}/'
variant yarn dense 's/"rope_scaling": null/"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0, "original_max_position_embeddings": 16}/'
expect_error "swiglu_alpha" "^moelab: error: export gguf: 'swiglu_alpha' is 1.5; llama.cpp's gpt-oss graph hard-codes alpha 1.702 and limit 7$" \
  "$moelab" export gguf "$(ck alpha)" --out x.gguf --data data
expect_error "moe_ct" "^moelab: error: export gguf: 'moe_ct' \(MoE-CT's gated mix of the FFN and new experts\) has no gpt-oss form$" \
  "$moelab" export gguf "$(ck ct)" --out x.gguf --data data
expect_error "layer pattern" "^moelab: error: export gguf: 'layer_types' is no pattern llama.cpp writes" \
  "$moelab" export gguf "$(ck layers)" --out x.gguf --data data
expect_error "yarn" "^moelab: error: export gguf: 'rope_scaling.factor' is 4: llama.cpp rounds the YaRN ramp's ends" \
  "$moelab" export gguf "$(ck yarn)" --out x.gguf --data data
expect_error "dtype" "^moelab: error: --dtype q4_0: must be f32, f16, bf16 or q8_0$" \
  "$moelab" export gguf "$(ck dense)" --out x.gguf --dtype q4_0 --data data
expect_error "out exists" "^moelab: error: --out dense.f32.gguf: already exists" \
  "$moelab" export gguf "$(ck dense)" --out dense.f32.gguf --data data
[ -e x.gguf ] || [ -e x.gguf.tmp ] && bad "a refused export left a file" || ok
cat >r50k.json <<'JSON'
{"tokenizer": {"kind": "tiktoken", "encoding": "r50k_base"},
 "sources": {"book": {"paths": ["tk"]}}, "subsets": {"A": [{"source": "book"}]}}
JSON
"$moelab" data prepare r50k.json --out r50k >/dev/null 2>&1
expect_error "tiktoken r50k" "^moelab: error: export gguf: r50k: tiktoken encoding 'r50k_base' is not written" \
  "$moelab" export gguf "$(ck dense)" --out x.gguf --data r50k
# a SentencePiece unigram tokenizer (a model trained 2 steps on it): refused by name
cat >uni.json <<'JSON'
{"tokenizer": {"kind": "sentencepiece", "vocab_size": 600, "model_type": "unigram"},
 "sources": {"book": {"paths": ["tk"]}}, "subsets": {"A": [{"source": "book"}]}}
JSON
"$moelab" data prepare uni.json --out uni >/dev/null 2>&1
tiny_config run.dir=unirun data.dir=uni "${train[@]}" phases.steps=2 schedule.warmup_steps=1 \
  schedule.decay_steps=1 >uni.toml
"$moelab" train uni.toml >uni.log 2>&1 || bad "unigram: train: $(tail -1 uni.log)"
expect_error "unigram" "^moelab: error: export gguf: uni/tokenizer.model: SentencePiece model_type 1 \(unigram\): llama.cpp's .llama. tokenizer merges pieces by score as BPE does" \
  "$moelab" export gguf unirun/step_00000002 --out x.gguf --data uni
expect_error "import not gguf" "^moelab: error: prompts.txt: not a GGUF file" "$moelab" import gguf prompts.txt --out y
# a gpt-oss file moelab did not write (no moelab.config), and one whose key was edited
node - dense.f32.gguf <<'JS'
const fs = require("fs");
let d = fs.readFileSync(process.argv[2]);
const i = d.indexOf("moelab.config");
d.write("moelab.xonfig", i);
fs.writeFileSync("foreign.gguf", d);
d = fs.readFileSync(process.argv[2]);
const k = "gpt-oss.expert_used_count", j = d.indexOf(k) + k.length;
if (d.readUInt32LE(j) !== 4 || d.readUInt32LE(j + 4) !== 1) throw new Error("unexpected layout");
d.writeUInt32LE(2, j + 4);
fs.writeFileSync("edited.gguf", d);
JS
expect_error "import foreign" "^moelab: error: foreign.gguf: no 'moelab.config' key: only files written by moelab export gguf are imported$" \
  "$moelab" import gguf foreign.gguf --out y
expect_error "import edited" "^moelab: error: edited.gguf: key 'gpt-oss.expert_used_count' differs from what its 'moelab.config' gives$" \
  "$moelab" import gguf edited.gguf --out y
[ -e y ] && bad "a refused import left a folder" || ok

finish gguf
