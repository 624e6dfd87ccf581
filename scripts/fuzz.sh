#!/usr/bin/env bash
# `make fuzz`: builds the libFuzzer targets of Fuzz/ and runs each for FUZZ_SECONDS.
#
# Each target is one executable built by swiftc -sanitize=fuzzer,address from a driver
# (Fuzz/<Name>Target.swift + Fuzz/FuzzSupport.swift) compiled together with the sources it
# tests, so their internal API is in reach. GodwitCore and Memory (with the C shim) are
# built once as instrumented modules under .build/fuzz and linked in. Nothing here is
# part of `swift build`/`make test`.
#
# Environment: FUZZ_SECONDS (per target, default 60), FUZZ_TARGETS (default all),
# FUZZ_JOBS (parallel fuzzing processes per target, default 1).
# Output: one line per target with executions and crashes; crash inputs are kept in
# .build/fuzz/artifacts/, the growing corpus in .build/fuzz/corpus/<target>/ (seeded by
# the target itself, see LLVMFuzzerInitialize in Fuzz/FuzzSupport.swift). Exit status 1
# if any target crashed. Reproduce a crash: .build/fuzz/bin/fuzz-<target> <artifact>.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
export PATH=/opt/swift/usr/bin:$PATH
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
ALL_TARGETS="page-records peer-stream criu-images page-server-header config yaml"
TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}
OUT=$ROOT/.build/fuzz
MODULES=$OUT/modules
mkdir -p "$MODULES" "$OUT/bin" "$OUT/artifacts" "$OUT/logs"

SANITIZE=(-sanitize=fuzzer,address)
SWIFTFLAGS=(-O -g -swift-version 6 -parse-as-library "${SANITIZE[@]}")

# Sources per target (besides the driver), and whether it needs Memory.
sources_of() {
  case $1 in
    page-records) echo Sources/Migration/PageRecord.swift Sources/Migration/PageRecord+Zstd.swift Sources/Migration/PageCompression.swift Sources/Migration/PageStore.swift Sources/Migration/PreCopyReceiver.swift ;;
    peer-stream) echo Sources/Trust/PeerStreamFraming.swift ;;
    criu-images|page-server-header) echo Sources/Checkpoint/*.swift ;;
    config) echo Sources/API/*.swift ;;
    yaml) echo ;;
    *) echo "unknown fuzz target '$1' (known: $ALL_TARGETS)" >&2; exit 2 ;;
  esac
}
driver_of() {
  case $1 in
    page-records) echo Fuzz/PageRecordsTarget.swift ;;
    peer-stream) echo Fuzz/PeerStreamTarget.swift ;;
    criu-images) echo Fuzz/CRIUImagesTarget.swift ;;
    page-server-header) echo Fuzz/PageServerHeaderTarget.swift ;;
    config) echo Fuzz/ConfigTarget.swift ;;
    yaml) echo Fuzz/YAMLTarget.swift ;;
  esac
}

# True if $1 is missing or older than any of the other arguments.
stale() {
  local target=$1; shift
  [[ -e $target ]] || return 0
  local f
  for f in "$@"; do [[ $f -nt $target ]] && return 0; done
  return 1
}

build_modules() {
  local core=(Sources/GodwitCore/*.swift)
  if stale "$MODULES/GodwitCore.o" "${core[@]}" "$0"; then
    echo "fuzz: building GodwitCore (instrumented)"
    swiftc "${SWIFTFLAGS[@]}" -module-name GodwitCore -emit-module -emit-module-path "$MODULES/GodwitCore.swiftmodule" \
      -wmo -c -o "$MODULES/GodwitCore.o" "${core[@]}"
    touch "$MODULES/GodwitCore.o"  # swiftc keeps an unchanged object's old time
  fi
  local shim=(Sources/CGodwit/*.c) memory=(Sources/Memory/*.swift)
  if stale "$MODULES/Memory.o" "${memory[@]}" "${shim[@]}" Sources/CGodwit/include/*.h "$MODULES/GodwitCore.o"; then
    echo "fuzz: building CGodwit and Memory (instrumented)"
    mkdir -p "$MODULES/CGodwit"
    # SwiftPM's generated module map: the include directory is the umbrella.
    printf 'module CGodwit {\n    umbrella "%s"\n    export *\n}\n' "$ROOT/Sources/CGodwit/include" >"$MODULES/CGodwit/module.modulemap"
    local c
    for c in "${shim[@]}"; do
      clang -O1 -g -fPIC -fsanitize=address -I Sources/CGodwit/include -c "$c" -o "$MODULES/CGodwit/$(basename "$c" .c).o"
    done
    swiftc "${SWIFTFLAGS[@]}" -module-name Memory -emit-module -emit-module-path "$MODULES/Memory.swiftmodule" \
      -I "$MODULES" -I "$MODULES/CGodwit" -I Sources/CXXHash -wmo -c -o "$MODULES/Memory.o" "${memory[@]}"
    touch "$MODULES/Memory.o"
  fi
}

build_target() {
  local t=$1 bin=$OUT/bin/fuzz-$1
  local sources
  read -r -a sources <<<"$(sources_of "$t")"
  local inputs=(Fuzz/FuzzSupport.swift "$(driver_of "$t")" "${sources[@]}")
  local objects=("$MODULES/GodwitCore.o")
  case $t in
    page-records) objects+=("$MODULES/Memory.o" "$MODULES"/CGodwit/*.o -lxxhash -lzstd) ;;
    # Checkpoint calls the C shim (pidfd_getfd for TCP sockets left in repair mode).
    criu-images|page-server-header) objects+=("$MODULES"/CGodwit/*.o) ;;
  esac
  if stale "$bin" "${inputs[@]}" "$MODULES/GodwitCore.o" "$MODULES/Memory.o" "$0"; then
    echo "fuzz: building $t"
    swiftc "${SWIFTFLAGS[@]}" -module-name "Fuzz_${t//-/_}" -I "$MODULES" -I "$MODULES/CGodwit" -I Sources/CXXHash -I Sources/CZstd \
      "${inputs[@]}" "${objects[@]}" -o "$bin" 2> >(grep -v "Cannot export local symbol '__asan" >&2)
  fi
}

run_target() {
  local t=$1 bin=$OUT/bin/fuzz-$1 corpus=$OUT/corpus/$1 log=$OUT/logs/$1.log
  mkdir -p "$corpus"
  # The Swift backtracer would stall a crashing run; leak reports are the runtime's, not ours.
  export SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1
  GODWIT_FUZZ_SEEDS=$corpus "$bin" -runs=0 "$corpus" >/dev/null 2>&1 || true
  local before
  before=$(find "$OUT/artifacts" -name "$t-*" | wc -l)
  "$bin" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
    -fork="${FUZZ_JOBS:-1}" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -artifact_prefix="$OUT/artifacts/$t-" "$corpus" >"$log" 2>&1 || true
  local after execs crashes
  after=$(find "$OUT/artifacts" -name "$t-*" | wc -l)
  execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  crashes=$((after - before))
  printf 'fuzz: %-20s %12s executions in %s s, %d crash(es)\n' "$t" "${execs:-?}" "$SECONDS_PER_TARGET" "$crashes"
  if ((crashes > 0)); then
    find "$OUT/artifacts" -name "$t-*" -newer "$log.start" | sed 's/^/      /'
    failed=1
  fi
}

build_modules
for t in $TARGETS; do build_target "$t"; done
failed=0
for t in $TARGETS; do
  touch "$OUT/logs/$t.log.start"
  run_target "$t"
done
exit $failed
