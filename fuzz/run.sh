#!/usr/bin/env bash
# Fuzzes irvmm's guest-facing surfaces: runs every cargo-fuzz target for SECONDS each
# (default 30), starting from the committed seeds in fuzz/corpus/<target>/, and fails if
# any target finds a crash (a panic or a violated invariant). New inputs go to
# fuzz/work/<target>/ (ignored by git); crashes to fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [SECONDS]
#
# Environment: FUZZ_TARGETS (space-separated subset), FUZZ_JOBS (parallel libFuzzer
# workers per target, default 1), FUZZ_BUILD_FLAGS (cargo-fuzz build options, default
# "--release --debug-assertions": optimised, integer overflows panic).
set -euo pipefail

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: $0 [SECONDS]" >&2
    exit 2
fi
cd "$(dirname "$0")"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

targets="${FUZZ_TARGETS:-vtd_mmio remap_decode ioapic_mmio pci_config kernel_load vfio_user_client vfio_function amd_mmio}"
[ -n "${FUZZ_TARGETS:-}" ] || targets="$targets vtd_posting"
[ -n "${FUZZ_TARGETS:-}" ] || targets="$targets vtd_dma"
[ -n "${FUZZ_TARGETS:-}" ] || targets="$targets virtio_queue virtio_pci_config"
jobs="${FUZZ_JOBS:-1}"
read -r -a build_flags <<<"${FUZZ_BUILD_FLAGS:---release --debug-assertions}"

cargo +nightly fuzz build "${build_flags[@]}"

failed=()
summary=()
for t in $targets; do
    mkdir -p "work/$t" "artifacts/$t"
    log="work/$t.log"
    echo "fuzz: $t for ${seconds}s" >&2
    status=0
    parallel=()
    if [ "$jobs" -gt 1 ]; then
        # libFuzzer's workers log to fuzz-N.log in the current directory.
        rm -f fuzz-*.log
        parallel=(-jobs="$jobs" -workers="$jobs")
    fi
    cargo +nightly fuzz run "${build_flags[@]}" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=4096 -max_len=8192 "${parallel[@]}" \
        >"$log" 2>&1 || status=$?
    if [ "$jobs" -gt 1 ]; then
        cat fuzz-*.log >>"$log" 2>/dev/null || true
        rm -f fuzz-*.log
    fi
    # The last status line libFuzzer printed ("#N DONE cov: X ft: Y corp: ...").
    last=$(grep -E '^#[0-9]+.* cov: ' "$log" | tail -n 1 || true)
    execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{s += $2} END {print s + 0}')
    rate=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{s += $2} END {print s + 0}')
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$last")
    line=$(printf '%-13s execs %10s  execs/s %7s  cov %6s  ft %6s  corpus %5s' \
        "$t" "$execs" "$rate" "${cov:-?}" "${ft:-?}" "${corp:-?}")
    if [ "$status" -ne 0 ] || grep -qE '^==[0-9]+==ERROR|panicked at|^SUMMARY: libFuzzer' "$log"; then
        failed+=("$t")
        line="$line  CRASH (see $PWD/$log and $PWD/artifacts/$t/)"
        grep -E 'panicked at|^SUMMARY|Test unit written' -A2 "$log" | head -n 20 >&2 || true
    fi
    summary+=("$line")
    echo "$line" >&2
done

echo
echo "fuzz summary (${seconds}s per target):"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz: crashes in: ${failed[*]}" >&2
    exit 1
fi
