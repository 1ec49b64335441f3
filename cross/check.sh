#!/usr/bin/env bash
# Cross-compile moirai-agent and run its self-test under QEMU user-mode emulation.
#
#   cross/check.sh aarch64 [cargo args...]
#   cross/check.sh armv7   [cargo args...]
#
# Passes when the binary builds for the board's target and `moirai-agent --self-test`
# (adapter probe, one kernel on the CPU executor, protocol round trip) exits 0 under
# qemu-<arch>-static. When something is missing it prints the exact commands to run and
# exits 3 without building.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=cross/targets.sh
. "$here/targets.sh"

if [ $# -lt 1 ]; then
    echo "usage: cross/check.sh <aarch64|armv7> [cargo build args...]" >&2
    exit 2
fi
arch=$1
cross_target "$arch"
shift

# Check everything first so one run names every missing step.
missing=()
if ! rust_target_installed; then
    missing+=("rustup target add $TRIPLE")
fi
apt=()
if ! use_zig && ! command -v "$GNU_PREFIX-gcc" >/dev/null 2>&1; then apt+=("$GCC_PACKAGE"); fi
if ! command -v "$QEMU" >/dev/null 2>&1; then apt+=(qemu-user-static); fi
if [ "${#apt[@]}" -gt 0 ]; then missing+=("apt-get install -y ${apt[*]}"); fi
if [ ! -d "$SYSROOT/lib" ]; then
    # The cross gcc package pulls the target libc in; without it qemu cannot load the binary.
    missing+=("apt-get install -y $GCC_PACKAGE   # provides the $TRIPLE libc in $SYSROOT")
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "error: cross/check.sh $arch cannot run; missing step(s), run:" >&2
    printf '    %s\n' "${missing[@]}" >&2
    exit 3
fi

bin=$("$here/build.sh" "$arch" "$@" | tail -n 1)

echo "==> $QEMU -L $SYSROOT $bin --self-test"
# The self-test must not hang a CI job if something under emulation stalls.
timeout_s=${MOIRAI_SELF_TEST_TIMEOUT:-300}
set +e
timeout "$timeout_s" "$QEMU" -L "$SYSROOT" "$bin" --self-test
rc=$?
set -e
if [ "$rc" -eq 124 ]; then
    echo "FAIL: self-test for $TRIPLE did not finish within ${timeout_s}s" >&2
    exit 1
elif [ "$rc" -ne 0 ]; then
    echo "FAIL: self-test for $TRIPLE exited with status $rc" >&2
    exit 1
fi
echo "PASS: moirai-agent for $TRIPLE built and passed its self-test under $QEMU"
