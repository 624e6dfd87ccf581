#!/usr/bin/env bash
# `make install` / `make uninstall`: release builds of godwit, godwitd and godwit-spawn,
# the CRIU `make setup` provisioned, a systemd unit and shell completions, under
# $DESTDIR$PREFIX (PREFIX defaults to /usr/local). The unit and the CRIU wrapper name the
# final paths ($PREFIX, without DESTDIR), so a staged tree works once copied into place.
#
# Usage: bash scripts/install.sh install|uninstall
# Env:   PREFIX (default /usr/local), DESTDIR (default empty), RELEASE_DIR (default
#        .build/release: where `swift build -c release` put the binaries).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
RELEASE_DIR=${RELEASE_DIR:-.build/release}
BINDIR=$PREFIX/bin
LIBDIR=$PREFIX/lib/godwit
DOCDIR=$PREFIX/share/doc/godwit
UNITDIR=$PREFIX/lib/systemd/system
BASHDIR=$PREFIX/share/bash-completion/completions
ZSHDIR=$PREFIX/share/zsh/site-functions
FISHDIR=$PREFIX/share/fish/vendor_completions.d
# godwit-console-keeper: static, copied into every container by godwit-spawn (its sibling).
BINARIES=(godwit godwitd godwit-spawn godwit-console-keeper)

do_uninstall() {
  for b in "${BINARIES[@]}"; do rm -f "$DESTDIR$BINDIR/$b"; done
  rm -rf "$DESTDIR$LIBDIR" "$DESTDIR$DOCDIR"
  rm -f "$DESTDIR$UNITDIR/godwitd.service" "$DESTDIR$BASHDIR/godwit" "$DESTDIR$ZSHDIR/_godwit" "$DESTDIR$FISHDIR/godwit.fish"
  echo "uninstalled from $DESTDIR$PREFIX (the state in /var/lib/godwit and /etc/godwit are kept)"
}

install_criu() {
  local src=.criu/bin/criu dst=$DESTDIR$LIBDIR/criu
  [[ -e $src ]] || { echo "install: no provisioned CRIU in .criu (run make setup)" >&2; exit 1; }
  rm -rf "$dst"
  mkdir -p "$dst/bin"
  if [[ -L $src ]]; then
    # A good system CRIU: keep using it.
    ln -s "$(readlink -f "$src")" "$dst/bin/criu"
  else
    # The private prefix: its wrapper names the checkout's paths; the copy names its own.
    cp -a .criu/root "$dst/root"
    # The prlimit shim the wrapper preloads (scripts/criu-shim/prlimit.c).
    [[ ! -d .criu/lib ]] || cp -a .criu/lib "$dst/lib"
    cp -a .criu/VERSION "$dst/VERSION" 2>/dev/null || true
    sed -e "s|$ROOT/.criu/root|$LIBDIR/criu/root|g" -e "s|$ROOT/.criu/lib|$LIBDIR/criu/lib|g" "$src" >"$dst/bin/criu"
    chmod 755 "$dst/bin/criu"
  fi
}

do_install() {
  for b in "${BINARIES[@]}"; do
    [[ -x $RELEASE_DIR/$b ]] || { echo "install: $RELEASE_DIR/$b is missing (run make release)" >&2; exit 1; }
    install -D -m 755 "$RELEASE_DIR/$b" "$DESTDIR$BINDIR/$b"
  done
  install_criu
  mkdir -p "$DESTDIR$UNITDIR" "$DESTDIR$DOCDIR"
  sed -e "s|@BINDIR@|$BINDIR|g" -e "s|@DOCDIR@|$DOCDIR|g" packaging/godwitd.service.in >"$DESTDIR$UNITDIR/godwitd.service"
  chmod 644 "$DESTDIR$UNITDIR/godwitd.service"
  cp docs/*.md README.md "$DESTDIR$DOCDIR/"
  install -D -m 644 <("$RELEASE_DIR/godwit" --generate-completion-script bash) "$DESTDIR$BASHDIR/godwit"
  install -D -m 644 <("$RELEASE_DIR/godwit" --generate-completion-script zsh) "$DESTDIR$ZSHDIR/_godwit"
  install -D -m 644 <("$RELEASE_DIR/godwit" --generate-completion-script fish) "$DESTDIR$FISHDIR/godwit.fish"
  # The ids unprivileged containers map to (docs/unprivileged.md), reserved for root as LXD
  # does, so that no account is ever given them. Only on the real system, and kept on uninstall.
  if [[ -z $DESTDIR ]]; then
    for f in /etc/subuid /etc/subgid; do
      grep -qE '^(root|0):' "$f" 2>/dev/null || echo "root:1000000:1000000000" >>"$f"
    done
  fi
  echo "installed under $DESTDIR$PREFIX; next: godwit init, then systemctl enable --now godwitd"
}

case ${1:-} in
  install) do_install ;;
  uninstall) do_uninstall ;;
  *) echo "usage: $0 install|uninstall" >&2; exit 2 ;;
esac
