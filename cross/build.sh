#!/usr/bin/env bash
# Cross-compile moirai-agent for a board.
#
#   cross/build.sh aarch64 [cargo args...]   # Jetson, Raspberry Pi 4/5 on a 64-bit OS
#   cross/build.sh armv7   [cargo args...]   # 32-bit Raspberry Pi OS
#
# Builds in release mode unless cargo args choose a profile (e.g. --profile dev).
# Linker: the Debian GNU cross gcc (default) or cargo-zigbuild with MOIRAI_CROSS_LINKER=zig.
# Never calls `cross` or `rustup update`: both would change the toolchain on this machine.
# Prints the path of the built binary on the last line of stdout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=cross/targets.sh
. "$here/targets.sh"

if [ $# -lt 1 ]; then
    echo "usage: cross/build.sh <aarch64|armv7> [cargo build args...]" >&2
    exit 2
fi
cross_target "$1"
shift

missing=()
if ! rust_target_installed; then
    if command -v rustup >/dev/null 2>&1; then
        missing+=("rustup target add $TRIPLE")
    else
        missing+=("install the Rust standard library for $TRIPLE (no rustup found; e.g. install rustup, then: rustup target add $TRIPLE)")
    fi
fi
if use_zig; then
    command -v cargo-zigbuild >/dev/null 2>&1 || missing+=("cargo install --locked cargo-zigbuild")
    command -v zig >/dev/null 2>&1 || missing+=("install zig (https://ziglang.org/download/) and put it on PATH")
else
    command -v "$GNU_PREFIX-gcc" >/dev/null 2>&1 || missing+=("apt-get install -y $GCC_PACKAGE")
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "error: cannot cross-compile for $TRIPLE; missing step(s), run:" >&2
    printf '    %s\n' "${missing[@]}" >&2
    exit 3
fi

profile=release
args=("$@")
for a in "${args[@]+"${args[@]}"}"; do
    case "$a" in
        --profile | --profile=* | --release) profile=custom ;;
    esac
done
[ "$profile" = release ] && args=(--release "${args[@]+"${args[@]}"}")

cd "$repo"
if use_zig; then
    echo "==> cargo zigbuild -p moirai-agent --target $TRIPLE ${args[*]}" >&2
    cargo zigbuild -p moirai-agent --bin moirai-agent --target "$TRIPLE" "${args[@]}" >&2
else
    # Linker for rustc, and C/C++ compilers for build scripts that compile C or assembly
    # (tract's kernels, ring): cc-rs reads CC_<triple> / AR_<triple>.
    export "CARGO_TARGET_${ENV_TRIPLE}_LINKER=$GNU_PREFIX-gcc"
    export "CC_${TRIPLE//-/_}=$GNU_PREFIX-gcc"
    export "AR_${TRIPLE//-/_}=$GNU_PREFIX-ar"
    if command -v "$GNU_PREFIX-g++" >/dev/null 2>&1; then
        export "CXX_${TRIPLE//-/_}=$GNU_PREFIX-g++"
    fi
    echo "==> CARGO_TARGET_${ENV_TRIPLE}_LINKER=$GNU_PREFIX-gcc cargo build -p moirai-agent --target $TRIPLE ${args[*]}" >&2
    cargo build -p moirai-agent --bin moirai-agent --target "$TRIPLE" "${args[@]}" >&2
fi

# Where did it go? The profile's directory name: release for --release, debug for dev.
target_dir=${CARGO_TARGET_DIR:-$repo/target}
dir=release
for a in "${args[@]}"; do
    case "$a" in
        --profile=dev) dir=debug ;;
        --profile=*) dir=${a#--profile=} ;;
    esac
done
prev=
for a in "${args[@]}"; do
    if [ "$prev" = --profile ]; then
        if [ "$a" = dev ]; then dir=debug; else dir=$a; fi
    fi
    prev=$a
done
bin="$target_dir/$TRIPLE/$dir/moirai-agent"
if [ ! -x "$bin" ]; then
    echo "error: build finished but $bin is missing" >&2
    exit 1
fi
if command -v file >/dev/null 2>&1; then file -b "$bin" | sed 's/^/==> /' >&2; fi
echo "$bin"
