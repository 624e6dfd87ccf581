#!/usr/bin/env bash
# Makes a working CRIU >= 4.2 available at <project>/.criu/bin/criu, where Godwit looks
# for it (after GODWIT_CRIU / an explicit setting, before `criu` on PATH).
#
# Why not just `apt-get install criu`: Debian 12's CRIU 3.17 fails on current kernels
# (vDSO layout), Debian 13's 4.1 can't dump inet sockets on Linux >= 6.16, and 4.2.1 from
# unstable needs a newer glibc than Debian 12 has. Installing it system-wide would upgrade
# libc6 and friends. So, unless the system already has a good CRIU, we fetch Debian's 4.2.1
# plus the libraries it links against into a private prefix and run it through that
# prefix's own dynamic loader. The system's apt sources, lists and libraries stay untouched.
#
# Usage: bash scripts/provision-criu.sh   (root; idempotent; also run by scripts/setup.sh)
# Env:   GODWIT_CRIU_PRIVATE=1  ignore a system CRIU and always use the private prefix.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CRIU_DIR="$ROOT/.criu"
BIN="$CRIU_DIR/bin/criu"
PREFIX="$CRIU_DIR/root"
APT_DIR="$CRIU_DIR/apt"
MARKER="$CRIU_DIR/VERSION"

MIN_VERSION=4.2
WANT_DEB_VERSION=4.2.1-1
DEBIAN_MIRROR=http://deb.debian.org/debian
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# Stable suite for the libraries (its packages don't churn), unstable for what must be newer.
BASE_SUITE=trixie
NEW_SUITE=sid
# CRIU 4.2.1 needs libnl-3 >= 3.11 (trixie has 3.7); libnet9 is only in unstable.
NEW_PKGS=(libnet9 libnl-3-200)
# criu's and libcompel1's shared-library closure (verified with `ld.so --list`); libedit2
# and libtinfo6 are only dlopen'ed by libnftables' CLI paths but are cheap to carry.
BASE_PKGS=(libc6 libbsd0 libgnutls30t64 libnftables1 libprotobuf-c1 libnettle8t64
  libhogweed6t64 libp11-kit0 libtasn1-6 libidn2-0 libunistring5 libgmp10 libjansson4
  libmnl0 libnftnl11 libxtables12 libedit2 libmd0 libffi8 libtinfo6 libuuid1)
# Bump when the recipe changes in a way the lists above don't show (forces re-provisioning).
RECIPE_REV=1

say() { printf '%s\n' "$*"; }
die() { printf 'criu: ERROR: %s\n' "$*" >&2; exit 1; }
rel() { printf '%s' "${1#"$ROOT"/}"; }

case "$(dpkg --print-architecture 2>/dev/null || uname -m)" in
  amd64 | x86_64) ARCH=amd64 TRIPLET=x86_64-linux-gnu LOADER_NAME=ld-linux-x86-64.so.2 ;;
  arm64 | aarch64) ARCH=arm64 TRIPLET=aarch64-linux-gnu LOADER_NAME=ld-linux-aarch64.so.1 ;;
  *) die "unsupported architecture $(uname -m): install CRIU >= $MIN_VERSION yourself and set GODWIT_CRIU" ;;
esac

# What the downloaded packages were chosen by (keys the deb cache), and additionally where
# the prefix lives (keys the marker: the wrapper holds absolute paths, so a moved project
# re-provisions, from the cached debs).
PKGS_ID=$(printf '%s\n' "$RECIPE_REV" "$ARCH" "$WANT_DEB_VERSION" \
  "$BASE_SUITE:${BASE_PKGS[*]}" "$NEW_SUITE:${NEW_PKGS[*]}" | sha256sum | cut -c1-16)
# The prlimit shim (scripts/criu-shim/prlimit.c) is built into the prefix: its source keys
# the marker too.
SHIM_SRC="$ROOT/scripts/criu-shim/prlimit.c"
SHIM="$CRIU_DIR/lib/godwit-prlimit.so"
RECIPE_ID=$(printf '%s\n' "$PKGS_ID" "$PREFIX" "$(sha256sum <"$SHIM_SRC")" | sha256sum | cut -c1-16)

criu_version() { "$@" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1; }
version_ok() { [[ -n "$1" ]] && dpkg --compare-versions "$1" ge "$MIN_VERSION"; }
marker_get() { sed -n "s/^$1=//p" "$MARKER" 2>/dev/null | head -n1; }

# `criu check` prints "Looks good." on success; anything else is printed for diagnosis.
run_check() {
  local out
  if out=$("$@" check 2>&1) && grep -q 'Looks good' <<<"$out"; then return 0; fi
  printf '%s\n' "$out" >&2
  return 1
}

# --- Fast path: already provisioned, no network, no lock -------------------------------
fast_path() {
  [[ -f "$MARKER" && -x "$BIN" ]] || return 1
  [[ "$(marker_get prefix)" == "$CRIU_DIR" ]] || return 1
  local source version
  source=$(marker_get source)
  version=$(marker_get version)
  if [[ "$source" == private ]]; then
    [[ "$(marker_get recipe)" == "$RECIPE_ID" ]] || return 1
  elif [[ "$source" == system ]]; then
    [[ -z "${GODWIT_CRIU_PRIVATE:-}" ]] || return 1
  else
    return 1
  fi
  [[ "$(criu_version "$BIN")" == "$version" ]] || return 1
  if [[ $EUID -ne 0 ]]; then
    say "criu: $version at $(rel "$BIN") ($source; \`criu check\` not run: needs root)"
    return 0
  fi
  # A kernel change can break a CRIU that used to work: re-provisioning can't fix that.
  run_check "$BIN" || die "$(rel "$BIN") check failed (output above)"
  say "criu: $version at $(rel "$BIN") ($source, already provisioned)"
}

if fast_path; then exit 0; fi

[[ $EUID -eq 0 ]] || die "CRIU is not provisioned at $(rel "$BIN"): run \`sudo make setup\`"
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
  die "needs apt-get and dpkg-deb (Debian/Ubuntu); or install CRIU >= $MIN_VERSION and set GODWIT_CRIU"

mkdir -p "$CRIU_DIR/bin"
# Serialise concurrent `make setup`s; the loser re-checks and usually takes the fast path.
exec 9>"$CRIU_DIR/.lock"
flock 9
if fast_path; then exit 0; fi

# Never let an interrupted run leave a marker next to a half-built prefix.
rm -f "$MARKER"
rm -rf "$CRIU_DIR"/stage.* "$CRIU_DIR"/root.old.* "$APT_DIR"/debs.tmp.*
STAGE=""
cleanup() { [[ -z "$STAGE" ]] || rm -rf "$STAGE"; }
trap cleanup EXIT

write_marker() { # source version binary [packages]
  local tmp="$MARKER.tmp"
  {
    echo "version=$2"
    echo "source=$1"
    echo "binary=$3"
    echo "prefix=$CRIU_DIR"
    echo "recipe=$RECIPE_ID"
    echo "packages=${4:-}"
    echo "provisioned=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } >"$tmp"
  mv -f "$tmp" "$MARKER"
}

# Replaces $BIN atomically (rename) so Godwit never sees a missing or partial wrapper.
install_bin() { # kind(link|script) target-or-content
  local tmp="$BIN.tmp.$$"
  rm -f "$tmp"
  if [[ $1 == link ]]; then
    ln -s "$2" "$tmp"
  else
    printf '%s' "$2" >"$tmp"
    chmod 755 "$tmp"
  fi
  mv -fT "$tmp" "$BIN"
}

# --- A good system CRIU wins: nothing to download ---------------------------------------
if [[ -z "${GODWIT_CRIU_PRIVATE:-}" ]]; then
  declare -A seen=()
  for cand in $(type -ap criu 2>/dev/null) /usr/sbin/criu /usr/local/sbin/criu /sbin/criu; do
    [[ -x "$cand" ]] || continue
    real=$(readlink -f "$cand")
    [[ "$real" != "$CRIU_DIR"/* && -z "${seen[$real]:-}" ]] || continue
    seen[$real]=1
    v=$(criu_version "$real")
    if ! version_ok "$v"; then
      say "criu: ignoring system $real: version ${v:-unknown} < $MIN_VERSION"
      continue
    fi
    if ! run_check "$real" 2>/dev/null; then
      say "criu: ignoring system $real $v: \`criu check\` fails"
      continue
    fi
    install_bin link "$real"
    write_marker system "$v" "$real"
    say "criu: $v at $(rel "$BIN") (system $real)"
    exit 0
  done
fi

# --- Private prefix ---------------------------------------------------------------------
LOADER="$PREFIX/usr/lib/$TRIPLET/$LOADER_NAME"
LIBPATH="$PREFIX/usr/lib/$TRIPLET:$PREFIX/lib/$TRIPLET"

# Private apt state: these options override every system setting that decides what apt
# reads or writes, so the system's sources, lists and package cache are never touched.
mkdir -p "$APT_DIR"/{empty,state/lists/partial,cache/archives/partial}
: >"$APT_DIR/state/status"
: >"$APT_DIR/preferences"
{
  echo "deb [arch=$ARCH signed-by=$KEYRING] $DEBIAN_MIRROR $BASE_SUITE main"
  echo "deb [arch=$ARCH signed-by=$KEYRING] $DEBIAN_MIRROR $NEW_SUITE main"
} >"$APT_DIR/sources.list"
APT_OPTS=(
  -o "Dir::Etc::SourceList=$APT_DIR/sources.list"
  -o "Dir::Etc::SourceParts=$APT_DIR/empty"
  -o "Dir::Etc::Preferences=$APT_DIR/preferences"
  -o "Dir::Etc::PreferencesParts=$APT_DIR/empty"
  -o "Dir::State=$APT_DIR/state"
  -o "Dir::State::Lists=$APT_DIR/state/lists"
  -o "Dir::State::status=$APT_DIR/state/status"
  -o "Dir::Cache=$APT_DIR/cache"
  -o "APT::Architecture=$ARCH"
  -o "Acquire::Languages=none"
  # Downloads land in project directories that apt's _apt user can't write to.
  -o "APT::Sandbox::User=root"
  -q
)
papt() { "$1" "${APT_OPTS[@]}" "${@:2}"; }
APT_LOG="$APT_DIR/last.log"

lists_updated=0
update_lists() {
  say "criu: fetching Debian $BASE_SUITE/$NEW_SUITE package lists into $(rel "$APT_DIR")"
  papt apt-get update >"$APT_LOG" 2>&1 || { tail -n 12 "$APT_LOG" >&2; die "private apt-get update failed"; }
  touch "$APT_DIR/state/updated"
  lists_updated=1
}

# Unstable moves on: take 4.2.1-1 if still there, else its newest CRIU >= $MIN_VERSION.
pick_criu_version() {
  if papt apt-cache show "criu=$WANT_DEB_VERSION" >/dev/null 2>&1 &&
    papt apt-cache show "libcompel1=$WANT_DEB_VERSION" >/dev/null 2>&1; then
    echo "$WANT_DEB_VERSION"
    return
  fi
  local best="" v
  for v in $(papt apt-cache madison criu 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}'); do
    dpkg --compare-versions "$v" ge "$MIN_VERSION" || continue
    papt apt-cache show "libcompel1=$v" >/dev/null 2>&1 || continue
    if [[ -z "$best" ]] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
  done
  [[ -n "$best" ]] || return 1
  echo "$best"
}

download_debs() {
  local cv tmp spec=()
  cv=$(pick_criu_version) || return 1
  [[ "$cv" == "$WANT_DEB_VERSION" ]] || say "criu: $WANT_DEB_VERSION is gone from $NEW_SUITE, using $cv"
  spec=("criu=$cv" "libcompel1=$cv")
  for p in "${NEW_PKGS[@]}"; do spec+=("$p/$NEW_SUITE"); done
  for p in "${BASE_PKGS[@]}"; do spec+=("$p/$BASE_SUITE"); done
  tmp=$(mktemp -d "$APT_DIR/debs.tmp.XXXXXX")
  if ! (cd "$tmp" && papt apt-get download "${spec[@]}") >"$APT_LOG" 2>&1; then
    rm -rf "$tmp"
    return 1
  fi
  echo "$PKGS_ID" >"$tmp/RECIPE"
  rm -rf "$APT_DIR/debs"
  mv "$tmp" "$APT_DIR/debs"
}

# Debs are cached: re-provisioning (moved project, deleted prefix) needs no network.
if [[ "$(cat "$APT_DIR/debs/RECIPE" 2>/dev/null)" != "$PKGS_ID" ]]; then
  # Lists from the last few hours are good enough; a failed download refreshes them once.
  # (A stamp of our own: apt dates the list files by the server's Last-Modified.)
  if [[ -z "$(find "$APT_DIR/state/updated" -mmin -360 2>/dev/null)" ]]; then
    update_lists
  fi
  if ! download_debs; then
    [[ $lists_updated -eq 0 ]] || { tail -n 12 "$APT_LOG" >&2; die "downloading CRIU packages failed"; }
    update_lists
    download_debs || { tail -n 12 "$APT_LOG" >&2; die "downloading CRIU packages failed"; }
  fi
  say "criu: downloaded $(ls "$APT_DIR"/debs/*.deb | wc -l) packages into $(rel "$APT_DIR/debs")"
fi

# Build the whole prefix beside the live one, check it, then swap it in with renames.
STAGE=$(mktemp -d "$CRIU_DIR/stage.XXXXXX")
for deb in "$APT_DIR"/debs/*.deb; do
  dpkg-deb -x "$deb" "$STAGE/root"
done
packages=$(cd "$APT_DIR/debs" && ls -- *.deb | sed -e 's/_[^_]*\.deb$//' -e 's/%3a/:/g' | tr '\n' ' ' | sed 's/ $//')

# Every library must resolve inside the prefix: a fallback to a system library would
# work today and break on the next host upgrade.
verify_prefix() { # prefix
  local p=$1 loader="$1/usr/lib/$TRIPLET/$LOADER_NAME" libs out bad
  [[ -x "$loader" ]] || die "no dynamic loader at $loader"
  libs="$p/usr/lib/$TRIPLET:$p/lib/$TRIPLET"
  out=$("$loader" --inhibit-cache --library-path "$libs" --list "$p/usr/sbin/criu" 2>&1) ||
    { printf '%s\n' "$out" >&2; die "criu's libraries don't load"; }
  bad=$(grep -vF -e 'linux-vdso' -e "=> $p/" <<<"$out" || true)
  [[ -z "$bad" ]] || { printf '%s\n' "$out" >&2; die "libraries missing from the prefix: $bad"; }
}
verify_prefix "$STAGE/root"
staged_version=$(criu_version "$STAGE/root/usr/lib/$TRIPLET/$LOADER_NAME" --inhibit-cache \
  --library-path "$STAGE/root/usr/lib/$TRIPLET:$STAGE/root/lib/$TRIPLET" "$STAGE/root/usr/sbin/criu")
version_ok "$staged_version" || die "provisioned CRIU reports version '${staged_version}' (need >= $MIN_VERSION)"

if [[ -e "$PREFIX" ]]; then
  old=$(mktemp -d "$CRIU_DIR/root.old.XXXXXX")
  mv "$PREFIX" "$old/"
fi
mv "$STAGE/root" "$PREFIX"
rm -rf "$CRIU_DIR"/root.old.*

# CRIU reads every task's rlimits with prlimit64, which needs CAP_SYS_RESOURCE for tasks of
# another uid; where root lacks it (this machine kind), the shim answers from
# /proc/PID/limits instead (see its header).
mkdir -p "$CRIU_DIR/lib"
"${CC:-cc}" -O2 -shared -fPIC -Wall -o "$SHIM.tmp" "$SHIM_SRC" -ldl || die "cannot build $SHIM_SRC (needs a C compiler)"
mv -f "$SHIM.tmp" "$SHIM"

q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
install_bin script "#!/bin/sh
# Generated by scripts/provision-criu.sh ($(date -u +%Y-%m-%d)); re-run \`make setup\` if the
# project moves. Runs Debian's CRIU $staged_version with its own glibc and libraries from
# the private prefix, through that prefix's loader: the system's libraries are never used.
# --library-path only affects this process, so programs CRIU runs (ip, tar) get the system's.
# --preload: the prlimit shim (scripts/criu-shim/prlimit.c), for hosts without CAP_SYS_RESOURCE.
exec $(q "$LOADER") --inhibit-cache --library-path $(q "$LIBPATH") --preload $(q "$SHIM") $(q "$PREFIX/usr/sbin/criu") \"\$@\"
"

verify_prefix "$PREFIX"
[[ "$(criu_version "$BIN")" == "$staged_version" ]] || die "$(rel "$BIN") --version doesn't report $staged_version"
run_check "$BIN" || die "$(rel "$BIN") check failed (output above)"
write_marker private "$staged_version" "$PREFIX/usr/sbin/criu" "$packages"
say "criu: $staged_version at $(rel "$BIN") (provisioned)"
