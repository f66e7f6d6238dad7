# meshwork: the front door. `make demo` runs the main job, `make test` runs every test.
# Every target installs what it needs first (scripts/setup.sh, idempotent).

SHELL := /bin/bash
CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
FILTERS := measure local-rate-limit circuit-breaker bulkhead retry timeout global-rate-limit health-check traffic-split fault-injection
TEST_FILTERS := hostcalls misbehave noop surface
STAMP := target/.setup-done
EBPF_PROGRAMS := xdp-ratelimit sockops-rtt connect-breaker xdp-pass
EBPF_CRATE := ebpf/meshwork-ebpf-programs
EBPF_TOOLCHAIN := $(shell sed -n 's/^channel = "\(.*\)"/\1/p' $(EBPF_CRATE)/rust-toolchain.toml)

.PHONY: all setup build ebpf filters test-filters playground test demo demo-federation bench lint fuzz clean

all: build filters

# Toolchain targets and Debian packages. Re-run it by deleting $(STAMP).
setup: $(STAMP)
$(STAMP): scripts/setup.sh
	@scripts/setup.sh
	@mkdir -p target && touch $@

# The CLI: target/release/meshwork (and the eBPF objects `meshwork ebpf` loads at run time).
build: setup ebpf
	$(CARGO) build --release -p meshwork

# eBPF programs (aya): target/ebpf/<name>.o, by the nightly pinned in $(EBPF_CRATE) and
# bpf-linker, for bpfel-unknown-none with -Z build-std=core. Its own workspace and lock file.
ebpf: setup
	cd $(EBPF_CRATE) && CARGO_TARGET_DIR=$(CURDIR)/target/ebpf-build $(CARGO) +$(EBPF_TOOLCHAIN) build --release --locked
	@mkdir -p target/ebpf
	@for p in $(EBPF_PROGRAMS); do cp target/ebpf-build/bpfel-unknown-none/release/$$p target/ebpf/$$p.o; done
	@ls -l target/ebpf

# Every product filter, release, for wasm32-wasip1: target/filters/<name>.wasm.
filters: setup
	$(CARGO) build --profile filter --target $(WASM_TARGET) $(foreach f,$(FILTERS),-p meshwork-filter-$(f))
	@mkdir -p target/filters
	@for f in $(FILTERS); do cp target/$(WASM_TARGET)/filter/meshwork_filter_$${f//-/_}.wasm target/filters/$$f.wasm; done
	@ls -l target/filters

# Filters only the tests use: Rust ones, and one on the AssemblyScript SDK (npm).
test-filters: setup
	$(CARGO) build --profile filter --target $(WASM_TARGET) $(foreach f,$(TEST_FILTERS),-p meshwork-test-filter-$(f))
	@mkdir -p target/test-filters
	@for f in $(TEST_FILTERS); do cp target/$(WASM_TARGET)/filter/meshwork_test_filter_$${f//-/_}.wasm target/test-filters/$$f.wasm; done
	cd tests/filters/as-headers && npm ci --no-audit --no-fund --loglevel=error && npx asc assembly/index.ts --target release
	cp tests/filters/as-headers/build/as-headers.wasm target/test-filters/as-headers.wasm

# The catalog's playground: the patterns' decision code for the browser, compiled with
# wasm-bindgen into target/playground (`meshwork catalog site --playground` copies it).
playground: setup
	$(CARGO) build --profile filter --target wasm32-unknown-unknown -p meshwork-playground
	wasm-bindgen --target web --no-typescript --out-dir target/playground target/wasm32-unknown-unknown/filter/meshwork_playground.wasm
	@ls -l target/playground

test: build filters test-filters playground
	$(CARGO) test --release --workspace

# Long property-based fuzzing of the header-pairs decoder and the hostcall surface (random
# modules making random hostcalls). `make test` runs a few cases of the same properties.
FUZZ_CASES ?= 20000
fuzz: setup
	FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release -p meshwork-wasm-host --test fuzz

demo: build filters playground
	scripts/demo.sh

# Two meshes in network namespaces federated over Hamlet (needs root; part of `make demo` too).
demo-federation: build
	scripts/demo_federation.sh

bench: build filters test-filters
	scripts/bench.sh

lint: setup
	$(CARGO) fmt --all -- --check
	rustfmt --edition 2024 --check $(wildcard $(EBPF_CRATE)/src/*.rs $(EBPF_CRATE)/src/bin/*.rs)
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) clippy --profile filter --target $(WASM_TARGET) $(foreach f,$(FILTERS) support,-p meshwork-filter-$(f)) -- -D warnings
	$(CARGO) clippy --profile filter --target wasm32-unknown-unknown -p meshwork-playground -- -D warnings

clean:
	$(CARGO) clean
