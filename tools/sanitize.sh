#!/usr/bin/env bash
# Bounds-checked and memory-checked runs of cybn (part of the hardening work, with the
# property-based and stateful tests).
#
#   bash tools/sanitize.sh                 # CYBN_DEBUG=1 build + fast test subset
#   bash tools/sanitize.sh --valgrind      # ... then valgrind memcheck on a small script
#   bash tools/sanitize.sh --asan          # ... then an AddressSanitizer build + subset
#   bash tools/sanitize.sh --all           # all three
#
# 1. Copies the source tree (tracked and untracked, not ignored files) to a temporary
#    directory, builds it with CYBN_DEBUG=1 (Cython boundscheck/wraparound/initializedcheck,
#    -O0 -g) into a fresh virtual environment (numpy, pytest, hypothesis, threadpoolctl; no
#    torch, so the torch comparisons skip), checks that the build really has bounds checks
#    on, and runs a fast subset of the suite with the "quick" hypothesis profile. Cython's
#    bounds checks cover memoryview indexing; the kernels' inner loops use raw pointers,
#    which only the next two steps see.
# 2. --valgrind: runs a small workload (written below: every kernel path -- one tile, many
#    tiles, C > 1024, L > 65536, float16/32/64, odd layouts, N = 0, train/eval, backward, 1
#    and 2 threads) under valgrind memcheck with PYTHONMALLOC=malloc, and fails if any error or
#    definite leak has a cybn frame in its stack (CPython/NumPy noise is counted, not failed).
# 3. --asan: rebuilds with -fsanitize=address (into a second venv) and runs the workload and
#    the fast subset with libasan preloaded (leak detection off: CPython keeps its objects).
#
# Exit status 0 when every requested step is clean. Needs python3 -m venv, a C compiler and
# network or PIP_FIND_LINKS for the pip installs; valgrind for --valgrind, libasan for --asan.
# Environment: PYTHON (default python3), KEEP=1 keeps the temporary directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DO_VALGRIND=0
DO_ASAN=0
for arg in "$@"; do
    case "$arg" in
        --valgrind) DO_VALGRIND=1 ;;
        --asan) DO_ASAN=1 ;;
        --all) DO_VALGRIND=1; DO_ASAN=1 ;;
        -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cybn-sanitize.XXXXXX")"
if [ "${KEEP:-0}" != "1" ]; then
    trap 'rm -rf "$WORK"' EXIT
fi
echo "== sanitize: work directory $WORK"

# The workload for valgrind and ASan: every kernel path once or twice.
cat > "$WORK/workload.py" <<'EOF'
import numpy as np
import cybn
import cybn.functional as F

rng = np.random.default_rng(0)
shapes = [(5, 3), (0, 3), (1, 3), (7, 3, 9), (3000, 7), (2, 1030), (4, 1030, 3), (2, 2, 65537),
          (40000, 3), (9, 2, 3, 5)]
for dt in (np.float16, np.float32, np.float64):
    for shape in shapes:
        for nt in (1, 2):
            x = (rng.standard_normal(shape) * 3 + 1).astype(dt)
            g = rng.standard_normal(shape).astype(dt)
            cls = {2: cybn.BatchNorm1d, 3: cybn.BatchNorm1d, 4: cybn.BatchNorm2d}[len(shape)]
            for axis in (1, -1):
                m = cls(shape[axis], n_threads=nt, axis=axis, dtype=dt)
                if x.size // max(shape[axis], 1) > 1:
                    m(x)
                    m.backward(g)
                m.eval()
                m(x)
                m.backward(g)
            for view in (x[::-1], np.asfortranarray(x), x[::2]):
                if view.size and view.size // view.shape[1] > 1:
                    y, sm, si = F.batch_norm_forward(view, None, None, None, None, True, 0.1,
                                                     1e-5, n_threads=nt)
                    F.batch_norm_backward(np.ones_like(view), view, None, sm, si, n_threads=nt)
m = cybn.BatchNorm1d(3, check_finite=True)
bad = np.ones((4, 3), np.float32)
bad[1, 1] = np.nan
try:
    m(bad)
except ValueError:
    pass
print("workload done")
EOF

# The fast subset: property/stateful tests on the quick profile, the error table, the
# non-finite and precision bounds (without the 10^6-row cases), and the existing error and
# layout tests.
SUBSET=(
    "$ROOT/tests/test_properties.py"
    "$ROOT/tests/test_stateful.py"
    "$ROOT/tests/test_error_table.py"
    "$ROOT/tests/test_nonfinite.py"
    "$ROOT/tests/test_precision.py"
    "$ROOT/tests/test_errors.py"
    "$ROOT/tests/test_layouts_dtypes.py"
)
SUBSET_K='not N1e6 and not doc and not threads_100000'

copy_source() {  # $1: destination
    mkdir -p "$1"
    if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$ROOT" && git ls-files -z -co --exclude-standard) |
            (cd "$ROOT" && xargs -0 -r tar -cf - --no-recursion --ignore-failed-read) |
            tar -xf - -C "$1"
    else
        (cd "$ROOT" && tar -cf - --exclude=./build --exclude=./.git .) | tar -xf - -C "$1"
    fi
}

make_venv() {  # $1: venv directory
    "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install -q --upgrade pip
    "$1/bin/python" -m pip install -q numpy pytest hypothesis threadpoolctl
}

run_subset() {  # $1: venv; the rest: environment assignments for pytest
    local venv="$1"
    shift
    (cd "$WORK" && env CYBN_HYPOTHESIS=quick "$@" "$venv/bin/python" -m pytest -q \
        -p no:cacheprovider -x -k "$SUBSET_K" "${SUBSET[@]}")
}

# ---- 1. CYBN_DEBUG=1 ---------------------------------------------------------------------
echo "== sanitize: CYBN_DEBUG=1 build"
copy_source "$WORK/src-debug"
make_venv "$WORK/venv-debug"
CYBN_DEBUG=1 "$WORK/venv-debug/bin/python" -m pip install -q --no-cache-dir "$WORK/src-debug"
(cd "$WORK" && "$WORK/venv-debug/bin/python" - <<'EOF'
from cybn._build_config import BUILD_CONFIG as b
d = b["cython_directives"]
assert b["debug"] and d["boundscheck"] and d["wraparound"] and d["initializedcheck"], b
print("   bounds-checked build:", {k: d[k] for k in ("boundscheck", "wraparound",
      "initializedcheck")}, "optimization", b["optimization_args"])
EOF
)
echo "== sanitize: fast subset on the bounds-checked build"
run_subset "$WORK/venv-debug"

# ---- 2. valgrind -------------------------------------------------------------------------
if [ "$DO_VALGRIND" = 1 ]; then
    command -v valgrind >/dev/null || { echo "valgrind not found" >&2; exit 3; }
    echo "== sanitize: valgrind memcheck on the workload (debug build)"
    LOG="$WORK/valgrind.log"
    (cd "$WORK" && PYTHONMALLOC=malloc valgrind --tool=memcheck --error-exitcode=0 \
        --leak-check=full --show-leak-kinds=definite --num-callers=40 \
        --log-file="$LOG" "$WORK/venv-debug/bin/python" "$WORK/workload.py")
    "$PYTHON" - "$LOG" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
# valgrind blocks start with "==pid== <kind>" and end at the next blank "==pid== " line
blocks = re.split(r"\n==\d+== \n", text)
kinds = ("Invalid read", "Invalid write", "Conditional jump", "Use of uninitialised",
         "Invalid free", "Mismatched free", "Source and destination overlap",
         "definitely lost")
ours, other = [], 0
for blk in blocks:
    if not any(k in blk for k in kinds):
        continue
    # frames in cybn's extension modules (not the "cybn-sanitize" work directory's path)
    if re.search(r"site-packages/cybn/|\b_kernels(_avx2)?\.c|\b_cpu\.c|\b_openmp\.c", blk):
        ours.append(blk)
    else:
        other += 1
summary = re.findall(r"ERROR SUMMARY: .*", text)
print("   valgrind:", summary[-1] if summary else "no summary",
      f"| errors with a cybn frame: {len(ours)} | elsewhere (CPython/NumPy/libgomp): {other}")
for blk in ours[:5]:
    print(blk[:3000])
sys.exit(1 if ours else 0)
EOF
fi

# ---- 3. AddressSanitizer ----------------------------------------------------------------
if [ "$DO_ASAN" = 1 ]; then
    LIBASAN="$(${CC:-gcc} -print-file-name=libasan.so)"
    [ -e "$LIBASAN" ] || { echo "libasan not found ($LIBASAN)" >&2; exit 3; }
    echo "== sanitize: AddressSanitizer build (-fsanitize=address), $LIBASAN"
    copy_source "$WORK/src-asan"
    make_venv "$WORK/venv-asan"
    CYBN_DEBUG=1 CFLAGS="-fsanitize=address -fno-omit-frame-pointer" \
        LDFLAGS="-fsanitize=address" \
        "$WORK/venv-asan/bin/python" -m pip install -q --no-cache-dir "$WORK/src-asan"
    # allocator_may_return_null: the tests ask for petabytes on purpose and expect NumPy's
    # MemoryError, which ASan would otherwise turn into an abort
    ASAN_OPTS="detect_leaks=0:abort_on_error=1:verify_asan_link_order=0"
    ASAN_ENV=(LD_PRELOAD="$LIBASAN" ASAN_OPTIONS="$ASAN_OPTS:allocator_may_return_null=1")
    echo "== sanitize: workload under ASan"
    (cd "$WORK" && env "${ASAN_ENV[@]}" "$WORK/venv-asan/bin/python" "$WORK/workload.py")
    echo "== sanitize: fast subset under ASan"
    run_subset "$WORK/venv-asan" "${ASAN_ENV[@]}"
fi

echo "== sanitize: clean"
