#!/usr/bin/env python3
"""AP bring-up benchmark: irvmm and QEMU side by side on the probe guest's `smp` scenario.

Boots target/guests/probe.elf with `probe=smp` (the BSP starts every AP through the x2APIC
ICR and checks that the set of APIC IDs that came up equals the MADT's), measuring for each
run the wall time from launch to `PROBE PASS smp` and the peak RSS of the VMM process.
Prints irvmm and QEMU at the same vCPU count (QEMU 7.2 stops at 288 on q35), their ratios,
and irvmm alone at larger counts. The per-vCPU memory figure is the marginal peak RSS,
(RSS(N) - RSS(1)) / (N - 1), which excludes the guest memory both runs touch.

    cargo build --release && python3 benches/smp.py [--runs 3] [--cpus 288] [--irvmm-only 1024]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "target", "guests", "probe.elf")
IRVMM = os.path.join(ROOT, "target", "release", "irvmm")
DEADLINE_S = 600
MEMORY = "256M"


def irvmm_cmd(cpus):
    return [IRVMM, "--kernel", PROBE, "--cmdline", "probe=smp", "--cpus", str(cpus), "--memory", MEMORY]


def qemu_cmd(qemu, cpus):
    return [qemu, "-accel", "kvm", "-M", "q35,kernel-irqchip=split", "-m", MEMORY, "-smp", str(cpus),
            "-nographic", "-no-reboot", "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-kernel", PROBE, "-append", "probe=smp", "-device", "isa-debug-exit,iobase=0x501,iosize=2"]


def measure(cmd):
    """Runs cmd to its exit; returns (seconds to the PROBE PASS line, peak RSS in KiB)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    passed = None
    out = []
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        out.append(line)
        if line.startswith("PROBE "):
            passed = time.monotonic() - start if line.startswith("PROBE PASS smp") else None
            break
        if time.monotonic() - start > DEADLINE_S:
            break
    # The guest has reported; let the VMM exit (QEMU exits on the debug-exit write too).
    try:
        proc.stdout.close()
        _, _, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        usage = None
    if passed is None:
        sys.exit(f"no PROBE PASS smp from {cmd[0]}; output tail:\n{''.join(out[-10:])}")
    return passed, usage.ru_maxrss if usage else float("nan")


def series(cmd, runs):
    results = [measure(cmd) for _ in range(runs)]
    return statistics.median(r[0] for r in results), max(r[1] for r in results)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=288, help="vCPUs for the side-by-side run")
    ap.add_argument("--irvmm-only", type=int, nargs="*", default=[1024], help="extra vCPU counts for irvmm alone")
    args = ap.parse_args()
    for path, fix in [(PROBE, "run resources/fetch-assets.sh"), (IRVMM, "run cargo build --release")]:
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: {fix}")
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        sys.exit("qemu-system-x86_64 is missing: apt-get install -y qemu-system-x86")

    base_t, base_rss = series(irvmm_cmd(1), args.runs)
    rows = [("irvmm", 1, base_t, base_rss)]
    it, irss = series(irvmm_cmd(args.cpus), args.runs)
    rows.append(("irvmm", args.cpus, it, irss))
    qt, qrss = series(qemu_cmd(qemu, 1), args.runs)
    rows.append(("qemu", 1, qt, qrss))
    qt_n, qrss_n = series(qemu_cmd(qemu, args.cpus), args.runs)
    rows.append(("qemu", args.cpus, qt_n, qrss_n))
    for n in args.irvmm_only:
        t, rss = series(irvmm_cmd(n), args.runs)
        rows.append(("irvmm", n, t, rss))

    print(f"probe=smp, --memory {MEMORY}, median wall time of {args.runs} runs, max peak RSS")
    print(f"{'vmm':<7}{'vCPUs':>6}{'PROBE PASS (s)':>16}{'peak RSS (MiB)':>16}{'RSS/vCPU (KiB)':>16}")
    base = {"irvmm": base_rss, "qemu": qrss}
    for name, n, t, rss in rows:
        per = (rss - base[name]) / (n - 1) if n > 1 else float("nan")
        print(f"{name:<7}{n:>6}{t:>16.3f}{rss / 1024:>16.1f}{per:>16.1f}")
    print(f"ratio irvmm/QEMU at {args.cpus} vCPUs: time {it / qt_n:.3f}, peak RSS {irss / qrss_n:.3f}")


if __name__ == "__main__":
    main()
