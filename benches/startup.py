#!/usr/bin/env python3
"""Start-up benchmark: irvmm and QEMU side by side on the same probe guest.

For each VMM, boots target/guests/probe.elf (scenario `boot`) N times and measures, from
process start, the time to the first serial byte and to the `PROBE PASS` line. Prints the
medians and the irvmm/QEMU ratios. Run `resources/fetch-assets.sh` and `cargo build
--release` first; QEMU comes from Debian's qemu-system-x86 package.

    python3 benches/startup.py [--runs 5] [--cpus 1]
"""

import argparse
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "target", "guests", "probe.elf")
IRVMM = os.path.join(ROOT, "target", "release", "irvmm")
DEADLINE_S = 120


def measure(cmd):
    """Runs cmd; returns (seconds to first stdout byte, seconds to PROBE PASS line)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    first = passed = None
    buf = b""
    try:
        while passed is None and time.monotonic() - start < DEADLINE_S:
            if not sel.select(timeout=1):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            now = time.monotonic() - start
            if not chunk:
                break
            if first is None:
                first = now
            buf += chunk
            if b"PROBE PASS" in buf and b"\n" in buf[buf.index(b"PROBE PASS"):]:
                passed = now
    finally:
        proc.kill()
        proc.wait()
    if passed is None:
        tail = buf.decode(errors="replace")[-400:]
        sys.exit(f"no PROBE PASS from {cmd[0]} within {DEADLINE_S}s; output tail:\n{tail}")
    return first, passed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cpus", type=int, default=1)
    args = ap.parse_args()
    for path, fix in [(PROBE, "run resources/fetch-assets.sh"), (IRVMM, "run cargo build --release")]:
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: {fix}")
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        sys.exit("qemu-system-x86_64 is missing: apt-get install -y qemu-system-x86")
    vmms = {
        "irvmm": [IRVMM, "--kernel", PROBE, "--cmdline", "probe=boot", "--cpus", str(args.cpus),
                  "--memory", "128M"],
        "qemu": [qemu, "-accel", "kvm", "-M", "q35,kernel-irqchip=split", "-m", "128M",
                 "-smp", str(args.cpus), "-nographic", "-no-reboot", "-display", "none",
                 "-monitor", "none", "-serial", "stdio", "-kernel", PROBE, "-append", "probe=boot",
                 "-device", "isa-debug-exit,iobase=0x501,iosize=2"],
    }
    results = {}
    for name, cmd in vmms.items():
        runs = [measure(cmd) for _ in range(args.runs)]
        results[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
    print(f"probe=boot, {args.cpus} vCPU(s), median of {args.runs} runs")
    print(f"{'vmm':<8}{'first serial byte (s)':>24}{'PROBE PASS (s)':>18}")
    for name, (first, passed) in results.items():
        print(f"{name:<8}{first:>24.4f}{passed:>18.4f}")
    fi, pi = results["irvmm"]
    fq, pq = results["qemu"]
    print(f"{'ratio':<8}{fi / fq:>24.4f}{pi / pq:>18.4f}   (irvmm / QEMU; below 1 = irvmm faster)")


if __name__ == "__main__":
    main()
