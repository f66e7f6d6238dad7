# meshwork: the front door. `make demo` runs the main job, `make test` runs every test.
# Every target installs what it needs first (scripts/setup.sh, idempotent).

SHELL := /bin/bash
CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
FILTERS := measure local-rate-limit circuit-breaker bulkhead retry timeout global-rate-limit health-check traffic-split fault-injection
TEST_FILTERS := hostcalls misbehave
STAMP := target/.setup-done

.PHONY: all setup build filters test-filters test demo bench lint clean

all: build filters

# Toolchain targets and Debian packages. Re-run it by deleting $(STAMP).
setup: $(STAMP)
$(STAMP): scripts/setup.sh
	@scripts/setup.sh
	@mkdir -p target && touch $@

# The CLI: target/release/meshwork.
build: setup
	$(CARGO) build --release -p meshwork

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

test: build filters test-filters
	$(CARGO) test --release --workspace

demo: build filters
	scripts/demo.sh

bench: build filters
	scripts/bench.sh

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) clippy --profile filter --target $(WASM_TARGET) $(foreach f,$(FILTERS) support,-p meshwork-filter-$(f)) -- -D warnings

clean:
	$(CARGO) clean
