#!/bin/sh
# Builds the probe guest and copies it to <repo>/target/guests/probe.elf (path printed last).
# Extra arguments go to `cargo build`.
#
# Cargo reads .cargo/config.toml (the freestanding link flags) only from the directory it
# runs in, so this script builds from its own directory. Environment settings that would
# replace those flags or move the output are cleared.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
elf="$here/target/release/probe"

unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET \
    CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR

cd "$here"
cargo build --release --locked --target-dir "$here/target" "$@"

# The build machines' KVM cannot emulate SSE arithmetic, xsave or cmpxchg16b.
if command -v objdump >/dev/null 2>&1; then
    if objdump -d "$elf" | grep -E -m 5 '%[xyz]mm[0-9]|xsave|xrstor|cmpxchg16b' >&2; then
        echo "build.sh: $elf contains instructions the build machines' KVM cannot run" >&2
        exit 1
    fi
else
    echo "build.sh: objdump not found; SSE check skipped" >&2
fi

mkdir -p "$repo/target/guests"
cp "$elf" "$repo/target/guests/probe.elf"
echo "$repo/target/guests/probe.elf"
