#!/usr/bin/env bash
# Build LLVM's OpenMP runtime (libomp.dylib + omp.h) for macOS wheels: cibuildwheel's macOS
# before-all (pyproject.toml) runs this once per runner, before any wheel is built.
#
# Why from source: Apple clang ships no OpenMP runtime, and Homebrew's libomp bottle is built
# for the runner's own macOS version, so delocate would refuse it for an older wheel tag
# ("Library dependencies do not satisfy target MacOS"). Built here with the same
# MACOSX_DEPLOYMENT_TARGET as the wheels, for the runner's architecture (native runners:
# macos-15-intel -> x86_64, macos-14 -> arm64).
#
# Inputs (set by [tool.cibuildwheel.macos] environment / its x86_64 override):
#   CYBN_LIBOMP_PREFIX        install prefix (include/omp.h, lib/libomp.dylib)
#   MACOSX_DEPLOYMENT_TARGET  oldest macOS the library must run on
#   CYBN_LIBOMP_ARCH          optional, defaults to `uname -m`
# The library's install name is its absolute path, so the extension modules link to it
# directly (LDFLAGS=-L$PREFIX/lib -lomp) and delocate copies it into cybn/.dylibs/.
set -euo pipefail

LLVM_VERSION=19.1.7
# sha256 of the release tarballs (the same values Homebrew's libomp formula pins).
OPENMP_SHA256=bd7e6901ab086fd268750363017935fd4a717c153dad3c2aab86cb0140d9e3fe
CMAKE_SHA256=11c5a28f90053b0c43d0dec3d0ad579347fc277199c005206b963c19aae514e3

PREFIX="${CYBN_LIBOMP_PREFIX:?set CYBN_LIBOMP_PREFIX}"
TARGET="${MACOSX_DEPLOYMENT_TARGET:?set MACOSX_DEPLOYMENT_TARGET}"
ARCH="${CYBN_LIBOMP_ARCH:-$(uname -m)}"

if [[ "$(uname -s)" != Darwin ]]; then
    echo "build_libomp_macos.sh: macOS only" >&2
    exit 1
fi

echo "== libomp $LLVM_VERSION for macOS $TARGET $ARCH into $PREFIX"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
URL="https://github.com/llvm/llvm-project/releases/download/llvmorg-$LLVM_VERSION"

fetch() {  # fetch NAME SHA256 DIR: download, verify, unpack into $WORK/DIR
    curl -fsSL --retry 5 --retry-delay 5 -o "$WORK/$1" "$URL/$1"
    echo "$2  $WORK/$1" | shasum -a 256 -c -
    mkdir -p "$WORK/$3"
    tar -xJf "$WORK/$1" -C "$WORK/$3" --strip-components=1
}
# The standalone openmp build expects LLVM's shared CMake modules in a sibling "cmake" dir.
fetch "openmp-$LLVM_VERSION.src.tar.xz" "$OPENMP_SHA256" openmp
fetch "cmake-$LLVM_VERSION.src.tar.xz" "$CMAKE_SHA256" cmake

cmake -S "$WORK/openmp" -B "$WORK/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$PREFIX" \
    -DCMAKE_INSTALL_NAME_DIR="$PREFIX/lib" \
    -DCMAKE_OSX_ARCHITECTURES="$ARCH" \
    -DCMAKE_OSX_DEPLOYMENT_TARGET="$TARGET" \
    -DLIBOMP_INSTALL_ALIASES=OFF \
    -DOPENMP_ENABLE_LIBOMPTARGET=OFF \
    -DLIBOMP_OMPD_SUPPORT=OFF
cmake --build "$WORK/build" --parallel "$(sysctl -n hw.ncpu)"
cmake --install "$WORK/build"

# Absolute install name (whatever CMake chose), so linking needs no rpath.
install_name_tool -id "$PREFIX/lib/libomp.dylib" "$PREFIX/lib/libomp.dylib"
codesign --force --sign - "$PREFIX/lib/libomp.dylib"  # the edit invalidated the ad-hoc signature

echo "== installed:"
ls -l "$PREFIX/include/omp.h" "$PREFIX/lib/"
lipo -info "$PREFIX/lib/libomp.dylib"
otool -D "$PREFIX/lib/libomp.dylib"
# The minimum macOS recorded in the library must not exceed the wheels' target.
otool -l "$PREFIX/lib/libomp.dylib" | grep -A4 -E 'LC_BUILD_VERSION|LC_VERSION_MIN_MACOSX'
