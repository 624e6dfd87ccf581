# Godwit: `make demo` and `make test` are all a fresh machine needs (both run `setup` first).
SHELL := /bin/bash
# A non-login shell (CI) may lack the toolchain in PATH.
export PATH := /opt/swift/usr/bin:$(PATH):/usr/sbin:/sbin
SWIFT ?= swift
BUILD_DIR := .build/debug
GODWIT := $(BUILD_DIR)/godwit

.PHONY: all setup build test demo bench faults fuzz clean distclean

all: build

# Idempotent: installs missing Debian packages, provisions CRIU >= 4.2, sets sysctls.
setup:
	@bash scripts/setup.sh

build: setup
	$(SWIFT) build
	@bash scripts/build-workloads.sh $(BUILD_DIR)

# Unit tests and end-to-end tests (real namespaces, bridges, CRIU); needs root.
test: build
	$(SWIFT) test --no-parallel 2>&1 | tee .build/test.log; exit $${PIPESTATUS[0]}

demo: build
	$(GODWIT) demo

# Link throughput, then the migration benchmark's quick profile (< 10 min; the full profile
# is `godwit bench migrate`, see docs/benchmarks.md). Results under bench/results/.
bench: build
	$(GODWIT) bench link
	$(GODWIT) bench track --quick
	$(GODWIT) bench migrate --quick

# The fault matrix (issue 13): every phase of a move × link, daemon, CRIU, disk and client
# faults, at 64 MiB (12-16 min). Table on stdout and in bench/results/<stamp>-faults/;
# a subset runs in `make test` (FaultMatrixTests).
faults: build
	$(GODWIT) bench faults

# libFuzzer targets (Fuzz/, scripts/fuzz.sh): hostile peer and client input, FUZZ_SECONDS
# each; not part of `make test`. Crash inputs land in .build/fuzz/artifacts/.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

clean:
	rm -rf .build

# Also removes the privately provisioned CRIU.
distclean: clean
	rm -rf .criu
