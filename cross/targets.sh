# Sourced by build.sh and check.sh: what each board architecture needs.
# Usage: cross_target <arch>  (aarch64 | armv7, or the full Rust triple)
# Sets TRIPLE, GNU_PREFIX, GCC_PACKAGE, QEMU, SYSROOT, ENV_TRIPLE.
# shellcheck shell=bash

cross_target() {
    case "$1" in
        aarch64 | arm64 | aarch64-unknown-linux-gnu)
            TRIPLE=aarch64-unknown-linux-gnu
            GNU_PREFIX=aarch64-linux-gnu
            GCC_PACKAGE=gcc-aarch64-linux-gnu
            QEMU=qemu-aarch64-static
            ;;
        armv7 | armhf | armv7-unknown-linux-gnueabihf)
            TRIPLE=armv7-unknown-linux-gnueabihf
            GNU_PREFIX=arm-linux-gnueabihf
            GCC_PACKAGE=gcc-arm-linux-gnueabihf
            QEMU=qemu-arm-static
            ;;
        *)
            echo "error: unknown architecture '$1' (expected aarch64 or armv7)" >&2
            return 2
            ;;
    esac
    # Debian's cross toolchains install the target's libc here; qemu -L uses it.
    SYSROOT=/usr/$GNU_PREFIX
    # Cargo and cc-rs spell the triple upper-case with underscores in variable names.
    ENV_TRIPLE=$(echo "$TRIPLE" | tr 'a-z-' 'A-Z_')
}

# Is the Rust standard library for $TRIPLE installed for the active toolchain?
rust_target_installed() {
    if command -v rustup >/dev/null 2>&1; then
        rustup target list --installed 2>/dev/null | grep -qx "$TRIPLE"
    else
        # No rustup (distribution Rust): look in the sysroot directly.
        [ -d "$(rustc --print sysroot)/lib/rustlib/$TRIPLE/lib" ]
    fi
}

# Use cargo-zigbuild instead of the GNU cross linker? (MOIRAI_CROSS_LINKER=zig)
use_zig() {
    [ "${MOIRAI_CROSS_LINKER:-gnu}" = zig ]
}
