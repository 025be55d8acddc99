#!/usr/bin/env bash
# The layers of src/ hold (CMakeLists.txt, Layers): a file of a layer, compiled with the exact
# flags of that layer's library (from the build's compile_commands.json), can include the
# headers of its own layer and of the layers below it, and fails to compile on a header of any
# other layer. Every forbidden header exists, so that its failure can only come from the include
# root. And no include in src/ climbs out of its folder with "..", which would pass around it.
# usage: layers_test.sh BUILD_DIR SOURCE_DIR
set -u
build=$1 src=$2
. "$(dirname "$0")/testlib.sh"

db="$build/compile_commands.json"
[ -f "$db" ] || { echo "FAIL: no $db (CMAKE_EXPORT_COMPILE_COMMANDS)"; exit 1; }

# layer_flags LAYER: the compile command of one of the layer's own .cpp files, as an array in
# $flags, less its output, input and dependency-file arguments. Empty when the layer has none.
layer_flags() {
  local layer=$1 line cmd
  flags=()
  line=$(grep -F '"command": ' "$db" | grep -F -- "-c $src/src/$layer/" | head -1)
  [ -n "$line" ] || return 1
  # JSON string to shell words: unescape \" and \\, then let the shell split as make would.
  cmd=$(sed -E 's/^ *"command": "(.*)",? *$/\1/; s/\\(.)/\1/g' <<<"$line")
  local -a words
  eval "words=($cmd)"
  local i=0 n=${#words[@]}
  while [ $i -lt $n ]; do
    case ${words[$i]} in
      -o | -c | -MF | -MT | -MQ) i=$((i + 2)) ;;
      -MD | -MMD) i=$((i + 1)) ;;
      *) flags+=("${words[$i]}"); i=$((i + 1)) ;;
    esac
  done
}

# probe LAYER HEADER: compiles LAYER/probe.cpp, which includes HEADER, with the layer's flags;
# the compiler's status is the status, its messages are in $tmp/err.
probe() {
  local layer=$1 header=$2
  mkdir -p "$tmp/$layer"
  printf '#include "%s"\nint probe_%s;\n' "$header" "$layer" >"$tmp/$layer/probe.cpp"
  (cd "$build" && "${flags[@]}" -fsyntax-only "$tmp/$layer/probe.cpp") 2>"$tmp/err"
}

# allow LAYER HEADER... / deny LAYER HEADER...
allow() {
  local layer=$1 h
  shift
  layer_flags "$layer" || { bad "$layer: no compile command for a file of src/$layer"; return; }
  for h in "$@"; do
    if probe "$layer" "$h"; then ok; else bad "$layer may include $h: $(head -3 "$tmp/err")"; fi
  done
}
deny() {
  local layer=$1 h
  shift
  layer_flags "$layer" || { bad "$layer: no compile command for a file of src/$layer"; return; }
  for h in "$@"; do
    if [ ! -f "$src/src/$h" ]; then bad "probe header src/$h does not exist"; continue; fi
    if probe "$layer" "$h"; then
      bad "$layer includes $h and compiles: the include root lets a layer above in"
    elif ! grep -Fq -e "error: $h: No such file" -e "error: '$h' file not found" "$tmp/err"; then
      bad "$layer including $h failed for another reason: $(head -3 "$tmp/err")"
    else
      ok
    fi
  done
}

# ---- The graph: core <- kernels <- backend <- model; data <- core; eval <- model, data;
# convert <- model, data; train <- convert, eval; study <- train; cli <- everything.
allow core core/error.hpp core/threads.hpp core/bf16.hpp
deny core kernels/kernels.hpp kernels/parallel.hpp data/dataset.hpp
allow kernels core/threads.hpp kernels/parallel.hpp kernels/kernels.hpp
deny kernels model/model.hpp model/config.hpp data/shard.hpp eval/evalset.hpp
if [ -f "$src/src/backend/device.hpp" ] && layer_flags backend; then
  allow backend kernels/kernels.hpp backend/device.hpp
  deny backend model/model.hpp data/dataset.hpp
fi
allow model kernels/kernels.hpp model/params.hpp
deny model train/trainer.hpp eval/evalset.hpp data/dataset.hpp study/run.hpp convert/checkpoint.hpp
allow data core/error.hpp data/shard.hpp
deny data model/config.hpp kernels/kernels.hpp kernels/parallel.hpp eval/evalset.hpp
allow eval model/model.hpp data/dataset.hpp kernels/vmath.hpp
deny eval train/trainer.hpp study/report.hpp convert/hf.hpp
allow convert model/model.hpp data/dataset.hpp core/safetensors.hpp convert/checkpoint.hpp
deny convert train/trainer.hpp train/checkpoint.hpp eval/evalset.hpp study/run.hpp
allow train convert/checkpoint.hpp eval/evalset.hpp model/config.hpp data/dataset.hpp
deny train study/run.hpp
allow study train/trainer.hpp convert/upcycle.hpp eval/evalset.hpp
deny study cli/bench.hpp
allow cli study/run.hpp train/trainer.hpp data/shard.hpp core/error.hpp

# ---- No way around: an include with ".." reaches any folder from the including file's own.
if grep -rnE '#\s*include\s*["<][^">]*\.\.' "$src/src" >"$tmp/dotdot"; then
  bad "includes with ..: $(head -3 "$tmp/dotdot")"
else
  ok
fi

# ---- The device seam: OpenMP pragmas only in the kernels and the backends (the layers above
# loop in parallel through kernels/parallel.hpp's parallel_for, data/ with threads of its own),
# and every other loop over floating-point arrays is an op of the device's table
# (tests/e2e/numeric_loops.py; its allowlist names the host work). Each check is first shown to
# fail on a planted file, so that a check that can never fail is caught too.
omp_outside() {  # omp_outside SRC: SRC/src's pragmas outside kernels/ and backend/, in $tmp/omp
  grep -rn --include='*.cpp' --include='*.hpp' '#\s*pragma\s\+omp' "$1/src" |
    grep -v -e "^$1/src/kernels/" -e "^$1/src/backend/" >"$tmp/omp"
}
plant=$tmp/plant
pragma_loop='void f(float* x, long n) {\n#pragma omp parallel for\n'
pragma_loop+='  for (long i = 0; i < n; i++) x[i] = 0;\n}\n'
for layer in core model data kernels backend; do
  rm -rf "$plant" && mkdir -p "$plant/src/$layer"
  printf "$pragma_loop" >"$plant/src/$layer/planted.cpp"
  omp_outside "$plant"
  found=$?  # grep's status: 0 when a pragma was found
  case $layer/$found in
    kernels/0 | backend/0) bad "a pragma in src/$layer/ is refused: $(cat "$tmp/omp")" ;;
    kernels/* | backend/* | */0) ok ;;
    *) bad "a pragma planted in src/$layer/ is not found" ;;
  esac
done
if omp_outside "$src"; then
  bad "OpenMP pragmas outside kernels/ and backend/: $(head -3 "$tmp/omp")"
else
  ok
fi

# numeric_loops.py on a planted tree: it finds a loop of arithmetic, of a math function, of block
# copies and of arithmetic on a member of a floating type, one in each folder it covers...
numeric_loops="$(dirname "$0")/numeric_loops.py"
rm -rf "$plant" && mkdir -p "$plant"/src/{model,eval,serve,train}
cat >"$plant/src/model/planted.cpp" <<'CPP'
void axpy(float* y, const float* x, float a, long n) {
  for (long i = 0; i < n; i++) y[i] += a * x[i];
}
CPP
cat >"$plant/src/eval/planted.cpp" <<'CPP'
double log_sum(const double* p, long n) {
  double s = 0;
  for (long i = 0; i < n; i++) s += std::log(p[i]);
  return s;
}
CPP
cat >"$plant/src/serve/planted.cpp" <<'CPP'
template <typename T>
void gather_rows(T* out, const T* x, const long* rows, long m, long d) {
  for (long r = 0; r < m; r++) std::copy_n(x + rows[r] * d, d, out + r * d);
}
CPP
printf 'struct Moments {\n  std::vector<float> m;\n};\n' >"$plant/src/train/planted.hpp"
cat >"$plant/src/train/planted.cpp" <<'CPP'
void decay(Moments& s, long n) {
  for (long i = 0; i < n; i++) s.m[i] *= 0.9f;
}
CPP
python3 "$numeric_loops" "$plant" >"$tmp/loops"
for f in model/planted.cpp:2:\ axpy eval/planted.cpp:3:\ log_sum serve/planted.cpp:3:\ gather_rows \
  train/planted.cpp:2:\ decay; do
  if grep -Fq "src/$f:" "$tmp/loops"; then
    ok
  else
    bad "numeric_loops.py misses $f: $(cat "$tmp/loops")"
  fi
done
# ...and passes loops over indices, set-up of a host vector, and calls with offsets.
rm -rf "$plant" && mkdir -p "$plant/src/model"
cat >"$plant/src/model/planted.cpp" <<'CPP'
void offsets(std::vector<int64_t>& first, const int32_t* counts, float* y, int64_t E, double r) {
  std::vector<float> step(E);
  for (int64_t e = 0; e < E; e++) first[e + 1] = first[e] + counts[e] * 2;
  for (int64_t e = 0; e < E; e++) step[e] = counts[e] > 2 ? float(r) : 0.0f;
  for (int64_t e = 0; e < E; e++) call(y + first[e], counts[e]);
}
CPP
if python3 "$numeric_loops" "$plant" >"$tmp/loops"; then
  ok
else
  bad "numeric_loops.py flags loops over indices: $(cat "$tmp/loops")"
fi
if python3 "$numeric_loops" "$src" >"$tmp/loops"; then
  ok
else
  bad "loops over numbers above the kernels (make them ops of backend/device.hpp, or allow them" \
    "in numeric_loops.py with a reason): $(head -5 "$tmp/loops")"
fi

# ---- The studies through their toolkit: runs are trained by the run queue (study/queue,
# through study/failure's study_train), figures drawn by the report toolkit (report_kit), and
# TOML files parsed by the one reader (train/toml_section).
only_in() {  # only_in PATTERN WHAT ALLOWED_FILE...: PATTERN appears in src/ only in those files
  local pattern=$1 what=$2 hits
  shift 2
  hits=$(grep -rlE --include='*.cpp' --include='*.hpp' "$pattern" "$src/src" | sed "s#^$src/##")
  for f in "$@"; do hits=$(grep -vx -- "$f" <<<"$hits"); done
  if [ -n "$hits" ]; then bad "$what outside $*: $hits"; else ok; fi
}
only_in '\btrain_run\(' "a study training a run" src/train/trainer.cpp src/train/trainer.hpp \
  src/study/failure.cpp src/cli/train_cmds.cpp
only_in '\bstudy_train\(' "a study run outside the run queue" src/study/failure.cpp \
  src/study/failure.hpp src/study/queue.cpp src/study/ct.cpp
only_in '&& gnuplot' "gnuplot run" src/study/report_kit.cpp
only_in 'toml::parse_file' "a TOML file parsed" src/train/toml_section.cpp

finish layers
