#!/usr/bin/env bash
# Builds the workload programs that go into container images, and the console keeper that
# godwit-spawn copies into every container (keeper/, see docs/console.md). They must be
# static: the default image is busybox with no libc, and the keeper runs inside any image.
# Usage: build-workloads.sh OUTDIR
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
OUT=${1:?usage: build-workloads.sh OUTDIR}
mkdir -p "$OUT"
for src in "$ROOT"/workloads/*.c "$ROOT"/keeper/*.c; do
  [ -e "$src" ] || continue
  bin="$OUT/$(basename "$src" .c)"
  if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
    cc -static -O2 -Wall -Wextra -Werror -o "$bin" "$src"
    echo "workloads: built $bin"
  fi
done
