#!/bin/sh
# Builds the probe guest into <repo>/target/guests/: probe.elf (PVH ELF) and probe.bzImage
# (the same program packed by mkbzimage.py as a Linux boot protocol 2.12 bzImage). Prints both
# paths, probe.elf last. Extra arguments go to `cargo build`.
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
# Written to a temporary name first so that a failed pack leaves no half-written image.
python3 "$here/mkbzimage.py" "$elf" "$repo/target/guests/probe.bzImage.tmp"
mv "$repo/target/guests/probe.bzImage.tmp" "$repo/target/guests/probe.bzImage"
cp "$elf" "$repo/target/guests/probe.elf"
echo "$repo/target/guests/probe.bzImage"
echo "$repo/target/guests/probe.elf"
