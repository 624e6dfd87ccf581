#!/bin/bash
# Frozen time of stop-and-copy moves of an idle busybox, with and without CRIU's kdat cache.
set -e
G=/work/main/.build/debug/godwit
export GODWIT_LAB_ROOT=/tmp/kdat-lab
$G lab up --name kdb --hosts 2 >/dev/null
trap '$G lab down --name kdb >/dev/null; rm -rf /tmp/kdat-lab' EXIT
$G launch busybox c1 --dir kdb/h1 >/dev/null
from=h1; to=h2
for round in 1 2 3 4 5 6; do
  for mode in cache nocache; do
    if [ $mode = nocache ]; then rm -f /run/criu.kdat; fi
    if [ $mode = cache ] && [ ! -s /run/criu.kdat ]; then
      D=$(mktemp -d /run/gw-kdat.XXXX); mount -t tmpfs tmpfs $D
      unshare --mount --propagation private sh -c "mount --bind $D /run && /work/main/.criu/bin/criu check >/dev/null 2>&1"
      cp $D/criu.kdat /run/criu.kdat; umount $D; rmdir $D
    fi
    out=$($G move c1 $to: --mode stop-and-copy --format json --dir kdb/$from)
    echo "$mode $(echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r.get("frozenMillis"), r.get("downtimeMillis"), r.get("totalMillis"))')"
    t=$from; from=$to; to=$t
  done
done
