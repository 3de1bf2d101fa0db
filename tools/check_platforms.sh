#!/usr/bin/env bash
# On-demand platform proofs that take too long for .ci/run (docs/platforms.md):
#
#   bash tools/check_platforms.sh aarch64        # arm64 Debian root under qemu-user-static
#   bash tools/check_platforms.sh freethreaded   # CPython 3.13 built with --disable-gil
#
# Linux x86-64 host, run as root (apt-get, debootstrap, chroot). Everything is cached outside
# the repository under $CYBN_PLATFORM_CACHE (default /var/cache/cybn): the arm64 root, the
# trixie source index and the free-threaded interpreter are made once and reused. Each run
# builds cybn from a fresh sdist of the current checkout (tracked files at HEAD plus local
# changes), tests it, and python tools/record_platform.py writes the result, commit and date
# into docs/platforms.md (between the <!-- platform-results: NAME --> markers).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CYBN_PLATFORM_CACHE:-/var/cache/cybn}"
SUITE_ARM64="bookworm"                   # Debian 12: glibc 2.36, gcc 12, Python 3.11
FT_VERSION="3.13"                        # Debian trixie's python3.13 source package
FT_PREFIX="$CACHE/python${FT_VERSION}t"
FT_PY="$FT_PREFIX/bin/python${FT_VERSION}t"
HOST_PY="${PYTHON:-python3}"
# hypothesis releases after 6.131 need a native part (from crates.io) on free-threaded Pythons
FT_HYPOTHESIS="hypothesis==6.131.0"
APT_TRIXIE="-o Dir::Etc::SourceList=$CACHE/apt-trixie/sources.list -o Dir::Etc::SourceParts=/nonexistent \
 -o Dir::State::Lists=$CACHE/apt-trixie/lists -o Dir::Cache=$CACHE/apt-trixie \
 -o Dir::Cache::archives=$CACHE/apt-trixie/archives"

log() { echo "== $(date -u +%H:%M:%S) $*"; }
die() { echo "check_platforms: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (apt-get, debootstrap, chroot)"; }

# -- free-threaded CPython from Debian's source package --------------------------------------
build_ft_python() {
    if [ -x "$FT_PY" ]; then
        log "free-threaded CPython: reusing $FT_PY ($("$FT_PY" -VV | head -1))"
        return
    fi
    need_root
    log "free-threaded CPython: fetching Debian trixie's python$FT_VERSION source package"
    mkdir -p "$CACHE/apt-trixie/lists/partial" "$CACHE/apt-trixie/archives/partial" "$CACHE/apt-trixie/src"
    echo "deb-src http://deb.debian.org/debian trixie main" > "$CACHE/apt-trixie/sources.list"
    # A private source list and state directory: the host's apt configuration is not touched.
    # shellcheck disable=SC2086
    apt-get $APT_TRIXIE -q update
    # shellcheck disable=SC2086
    (cd "$CACHE/apt-trixie/src" && apt-get $APT_TRIXIE -q source --download-only "python$FT_VERSION")
    local orig
    orig="$(ls "$CACHE"/apt-trixie/src/python"$FT_VERSION"_*.orig.tar.xz | tail -1)"
    rm -rf "$CACHE/ft-build" && mkdir -p "$CACHE/ft-build"
    tar -C "$CACHE/ft-build" -xf "$orig"
    local src
    src="$(ls -d "$CACHE"/ft-build/Python-* | head -1)"
    log "free-threaded CPython: configure --disable-gil && make ($(basename "$src"), about 15 min)"
    (cd "$src" && ./configure -q --disable-gil --prefix="$FT_PREFIX" --with-ensurepip=install \
        > "$CACHE/ft-configure.log" 2>&1 \
     && nice -n 10 make -j"$(nproc)" > "$CACHE/ft-make.log" 2>&1 \
     && make install > "$CACHE/ft-install.log" 2>&1) \
        || die "building CPython failed; see $CACHE/ft-*.log"
    "$FT_PY" -c 'import sys, sysconfig; assert sysconfig.get_config_var("Py_GIL_DISABLED"); print(sys.version)'
    rm -rf "$CACHE/ft-build"
}

case "${1:-}" in
    ft-python) build_ft_python ;;
    *) die "usage: $0 aarch64|freethreaded" ;;
esac
