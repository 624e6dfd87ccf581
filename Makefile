# Godwit: `make demo` and `make test` are all a fresh machine needs (both run `setup` first).
SHELL := /bin/bash
# A non-login shell (CI) may lack the toolchain in PATH.
export PATH := /opt/swift/usr/bin:$(PATH):/usr/sbin:/sbin
SWIFT ?= swift
BUILD_DIR := .build/debug
GODWIT := $(BUILD_DIR)/godwit

.PHONY: all setup build release install uninstall test demo bench faults fuzz clean distclean

all: build

# Idempotent: installs missing Debian packages, provisions CRIU >= 4.2, sets sysctls.
setup:
	@bash scripts/setup.sh

build: setup
	$(SWIFT) build
	@bash scripts/build-workloads.sh $(BUILD_DIR)

# What users run: optimised builds of godwit, godwitd and godwit-spawn (and the workloads
# demo and bench put in containers).
RELEASE_DIR := .build/release
RELEASE_GODWIT := $(RELEASE_DIR)/godwit
release: setup
	$(SWIFT) build -c release --product godwit
	$(SWIFT) build -c release --product godwitd
	$(SWIFT) build -c release --product godwit-spawn
	@bash scripts/build-workloads.sh $(RELEASE_DIR)

# Release builds, the provisioned CRIU, a systemd unit and completions under
# $(DESTDIR)$(PREFIX) (default /usr/local); see scripts/install.sh.
PREFIX ?= /usr/local
install: release
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) bash scripts/install.sh install

uninstall:
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) bash scripts/install.sh uninstall

# Unit tests and end-to-end tests (real namespaces, bridges, CRIU); needs root.
test: build
	$(SWIFT) test --no-parallel 2>&1 | tee .build/test.log; exit $${PIPESTATUS[0]}

# Release builds, as users run them (the tests use debug builds).
demo: release
	$(RELEASE_GODWIT) demo

# Link throughput, then the migration benchmark's quick profile (< 10 min; the full profile
# is `godwit bench migrate`, see docs/benchmarks.md), then the Debian system container (bench
# system). Results under bench/results/.
bench: release
	$(RELEASE_GODWIT) bench link
	$(RELEASE_GODWIT) bench track --quick
	$(RELEASE_GODWIT) bench migrate --quick
	$(RELEASE_GODWIT) bench system

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
