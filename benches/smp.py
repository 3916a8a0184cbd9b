#!/usr/bin/env python3
"""AP bring-up benchmark: irvmm and QEMU side by side on the probe guest's `smp` scenario.

Boots target/guests/probe.elf with `probe=smp` (the BSP starts every AP through the x2APIC
ICR, INIT to all then SIPI to all twice, and checks that the set of APIC IDs that came up
equals the MADT's). For each run it takes the guest's own figure, "smp: N of N APs up in T
ms" (from the first INIT to the last AP's arrival, on the guest's kvmclock), the wall time
from launch to `PROBE PASS smp` and the VMM's peak RSS. Peers: QEMU 10.0 (Debian 13, through
../shared/tools/qemu10.sh when it has been set up; q35 takes 1024 vCPUs) and QEMU 7.2
(Debian's qemu-system-x86, which stops at 288 vCPUs on q35), both with
`-M q35,kernel-irqchip=split`. Runs alternate between the VMMs. QEMU's wall time includes
SeaBIOS, which irvmm does not run (PVH entry).

    cargo build --release && python3 benches/smp.py [--runs 5] [--cpus 288 1024]
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from qemu_peers import qemu10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "target", "guests", "probe.elf")
IRVMM = os.path.join(ROOT, "target", "release", "irvmm")
DEADLINE_S = 600
MEMORY = "256M"
QEMU72_MAX_CPUS = 288
UP_RE = re.compile(r"smp: (\d+) of (\d+) APs up in (\d+) ms")


def irvmm_cmd(cpus):
    return [IRVMM, "--kernel", PROBE, "--cmdline", "probe=smp", "--cpus", str(cpus), "--memory", MEMORY]


def qemu_cmd(qemu, cpus):
    return [qemu, "-accel", "kvm", "-M", "q35,kernel-irqchip=split", "-m", MEMORY, "-smp", str(cpus),
            "-nographic", "-no-reboot", "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-kernel", PROBE, "-append", "probe=smp", "-device", "isa-debug-exit,iobase=0x501,iosize=2"]


def measure(cmd):
    """Runs cmd to its exit; returns (in-guest bring-up ms, seconds to PROBE PASS, peak RSS KiB)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    passed = up_ms = None
    out = []
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        out.append(line)
        m = UP_RE.search(line)
        if m and m.group(1) == m.group(2):
            up_ms = int(m.group(3))
        if line.startswith("PROBE "):
            passed = time.monotonic() - start if line.startswith("PROBE PASS smp") else None
            break
        if time.monotonic() - start > DEADLINE_S:
            break
    try:
        proc.stdout.close()
        _, _, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        usage = None
    if passed is None or up_ms is None:
        sys.exit(f"no PROBE PASS smp from {cmd[0]}; output tail:\n{''.join(out[-10:])}")
    return up_ms, passed, usage.ru_maxrss if usage else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cpus", type=int, nargs="+", default=[288, 1024])
    ap.add_argument("--no-qemu10", action="store_true")
    args = ap.parse_args()
    for path, fix in [(PROBE, "run resources/fetch-assets.sh"), (IRVMM, "run cargo build --release")]:
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: {fix}")
    peers = []
    q10 = None if args.no_qemu10 else qemu10()
    if q10:
        peers.append(("QEMU 10", q10, 4096))
    q72 = shutil.which("qemu-system-x86_64")
    if q72:
        peers.append(("QEMU 7.2", q72, QEMU72_MAX_CPUS))
    if not peers:
        sys.exit("no QEMU: apt-get install -y qemu-system-x86 (and ../shared/tools/qemu10.sh for QEMU 10)")

    print(f"probe=smp, --memory {MEMORY}; medians of {args.runs} alternating runs; "
          "bring-up = the guest's 'APs up in' (first INIT to last AP)")
    print(f"{'vCPUs':>5}  {'VMM':<9}{'bring-up ms':>12}{'PASS wall s':>12}{'peak RSS MiB':>13}"
          f"{'bring-up ratio':>16}{'wall ratio':>11}")
    for n in args.cpus:
        vmms = [("irvmm", irvmm_cmd(n))] + [(name, qemu_cmd(q, n)) for name, q, top in peers if n <= top]
        results = {name: [] for name, _ in vmms}
        for _ in range(args.runs):
            for name, cmd in vmms:
                results[name].append(measure(cmd))
        med = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs),
                      max(r[2] for r in rs)) for name, rs in results.items()}
        iu, iw, _ = med["irvmm"]
        for name, (up, wall, rss) in med.items():
            ratio = "" if name == "irvmm" else f"{iu / up:>16.3f}{iw / wall:>11.3f}"
            print(f"{n:>5}  {name:<9}{up:>12.0f}{wall:>12.3f}{rss / 1024:>13.1f}{ratio}")
    print("ratios are irvmm / peer (below 1: irvmm faster)")


if __name__ == "__main__":
    main()
