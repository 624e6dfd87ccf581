#!/usr/bin/env bash
# `make setup`: brings a Debian machine to what Godwit's build, tests and demo need.
# Idempotent and non-interactive: it only acts on what is missing, so a second run changes
# nothing, needs no network and takes well under a second. One line of output per step.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"

# busybox-static: the default container image (must be static: it runs inside rootfses
# without libraries). rsync: rootfs transfer. iproute2: bridges/veths/tc, also run by
# CRIU on restore. nftables: CRIU's network lock (there are no iptables binaries).
# tar: CRIU saves tmpfs with the host's tar. util-linux: nsenter/unshare. kmod: modprobe
# for veth/bridge/nf_tables modules. libxxhash-dev/libzstd-dev/pkg-config: build deps.
# libsqlite3-dev: the daemon keeps its state in SQLite (GRDB links the system library).
PACKAGES=(busybox-static rsync iproute2 pkg-config libxxhash-dev libzstd-dev nftables tar zstd
  util-linux procps kmod libsqlite3-dev mmdebstrap)
PIPE_MAX_WANTED=4194304

is_root() { [[ $EUID -eq 0 ]]; }
needs_root=()
failed=0

# --- Debian packages --------------------------------------------------------------------
step_packages() {
  if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    echo "packages: not a Debian system (no dpkg/apt-get); install by hand: ${PACKAGES[*]}"
    failed=1
    return
  fi
  local p missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    echo "packages: all present"
    return
  fi
  if ! is_root; then
    echo "packages: missing ${missing[*]}"
    needs_root+=("install ${missing[*]}")
    return
  fi
  local log
  log=$(mktemp)
  export DEBIAN_FRONTEND=noninteractive
  # A broken third-party source makes `update` fail although Debian's lists are fine:
  # let the install decide.
  apt-get update -q >"$log" 2>&1 || echo "packages: warning: apt-get update reported errors (continuing)"
  if ! apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" >>"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "packages: ERROR: apt-get install ${missing[*]} failed (output above)"
    failed=1
    return
  fi
  rm -f "$log"
  echo "packages: installed ${missing[*]}"
}

# --- CRIU -------------------------------------------------------------------------------
step_criu() {
  if ! bash "$ROOT/scripts/provision-criu.sh"; then
    if is_root; then failed=1; else needs_root+=("provision CRIU"); fi
  fi
}

# --- sysctls ----------------------------------------------------------------------------
step_sysctl() {
  local capbnd cur
  capbnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  # With CAP_SYS_RESOURCE (bit 24) CRIU may grow pipes past fs.pipe-max-size itself;
  # without it, lazy dumps fail unless the limit already allows CRIU's 4 MiB pipes.
  # vm.unprivileged_userfaultfd: see step_userfaultfd.
  if (((0x$capbnd >> 24) & 1)); then
    echo "sysctl: nothing to change (CAP_SYS_RESOURCE present)"
    return
  fi
  cur=$(cat /proc/sys/fs/pipe-max-size)
  if ((cur >= PIPE_MAX_WANTED)); then
    echo "sysctl: fs.pipe-max-size $cur (ok)"
    return
  fi
  if ! is_root; then
    echo "sysctl: fs.pipe-max-size $cur < $PIPE_MAX_WANTED"
    needs_root+=("raise fs.pipe-max-size")
    return
  fi
  # Runtime only, not persisted in /etc/sysctl.d: every build/test runs setup first.
  if echo "$PIPE_MAX_WANTED" >/proc/sys/fs/pipe-max-size 2>/dev/null; then
    echo "sysctl: fs.pipe-max-size $cur -> $PIPE_MAX_WANTED"
  else
    echo "sysctl: ERROR: could not set fs.pipe-max-size=$PIPE_MAX_WANTED (read-only /proc/sys?); CRIU lazy migration will fail"
    failed=1
  fi
}

# Unprivileged containers (user namespaces) restored lazily (pre-copy's last round,
# post-copy, hybrid): CRIU opens the userfaultfd from the restored task, already inside the
# container's user namespace, without UFFD_USER_MODE_ONLY (it must also catch the kernel's
# own accesses to missing pages, or a read() into one would fail with EFAULT). With
# vm.unprivileged_userfaultfd=0 the kernel refuses that to anyone without CAP_SYS_PTRACE in
# the initial namespace. The trade-off (docs/unprivileged.md): any local user may then
# handle kernel-mode faults, which exploits use to widen races. Godwit's own dirty
# tracker asks for UFFD_USER_MODE_ONLY and needs neither setting.
step_userfaultfd() {
  local cur
  cur=$(cat /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null || echo missing)
  if [[ "$cur" == 1 || "$cur" == missing ]]; then
    echo "sysctl: vm.unprivileged_userfaultfd $cur (ok)"
    return
  fi
  if ! is_root; then
    echo "sysctl: vm.unprivileged_userfaultfd $cur: lazy moves of unprivileged containers need 1"
    needs_root+=("set vm.unprivileged_userfaultfd=1")
    return
  fi
  if echo 1 >/proc/sys/vm/unprivileged_userfaultfd 2>/dev/null; then
    echo "sysctl: vm.unprivileged_userfaultfd $cur -> 1 (lazy restores of unprivileged containers)"
  else
    echo "sysctl: ERROR: could not set vm.unprivileged_userfaultfd=1; unprivileged containers can only move stop-and-copy"
    failed=1
  fi
}

# --- Swift toolchain (never installed by us: it isn't a Debian package) ------------------
step_swift() {
  local swift
  swift=$(command -v swift || true)
  if [[ -z "$swift" && -x /opt/swift/usr/bin/swift ]]; then
    echo "swift: /opt/swift/usr/bin/swift is not on PATH: export PATH=/opt/swift/usr/bin:\$PATH (or make SWIFT=/opt/swift/usr/bin/swift)"
    return
  fi
  if [[ -z "$swift" ]]; then
    echo "swift: NOT FOUND: install a Swift 6 toolchain for Linux (swift.org/install) and put its usr/bin on PATH"
    failed=1
    return
  fi
  echo "swift: $("$swift" --version 2>/dev/null | grep -o 'Swift version [^ ]*' | head -n1) ($swift)"
}

step_packages
step_criu
step_sysctl
step_userfaultfd
step_swift

if [[ ${#needs_root[@]} -gt 0 ]]; then
  printf 'setup: needs root to: %s. Run `sudo make setup`.\n' "$(IFS=';'; echo "${needs_root[*]}" | sed 's/;/; /g')" >&2
  exit 1
fi
exit "$failed"
