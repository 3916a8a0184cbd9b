#!/usr/bin/env python3
"""edu DMA throughput through the VT-d unit, irvmm and QEMU 7.2 side by side, driven from
inside the guest by the probe's `dma-bench` scenario.

The guest (target/guests/probe.elf, `probe=dma-bench probe.iters=K probe.bytes=B`) brings
the VT-d unit up as Linux does (queued invalidation, interrupt remapping, root and context
tables, edu's context translated through a 4-level table in one domain, translation on),
maps 64 pages one 4 KiB leaf each and the same pages again inside one 2 MiB leaf, and times
K edu DMAs of B bytes (device -> memory, polled to completion) in each of three modes:

    4k   IOVAs mapped by 4 KiB leaves (the translations cached in the unit's IOTLB after
         the untimed first pass)
    2m   IOVAs inside the 2 MiB leaf
    off  translation disabled (GCMD.TE clear): IOVA = guest-physical address

    irvmm: --iommu intel --device edu (caching mode, 48-bit tables: its defaults)
    QEMU:  -M q35,kernel-irqchip=split -device intel-iommu,intremap=on,eim=on,caching-mode=on,
           aw-bits=48 -device edu,dma_mask=0xffffffffffffffff

Columns: MB/s (decimal) and microseconds per DMA, medians over --runs runs (irvmm and QEMU
alternating), and the translated/untranslated ratio of the per-DMA times.

What the numbers mean: each DMA is three MMIO writes of the registers and one of the
command (irvmm performs the transfer during the command write: translation through its
IOTLB, then a copy through guest memory), then polling the command register. QEMU's edu
runs every transfer from a timer 100 ms after the command (its device model, not its
IOMMU), so its rate is ~10 DMAs per second whatever the IOMMU does, and K is kept small
for it (--qemu-iters). The two columns therefore compare what each VMM offers a guest
driver of this device, not IOMMU against IOMMU; the irvmm-only ratio of the modes is the
cost of translation. B defaults to 2048: QEMU 7.2's edu aborts ("DMA range ... out of
bounds") on a transfer ending at the end of its 4 KiB buffer.

    CARGO_TARGET_DIR=... cargo build --release -p cli && tests/probe-guest/build.sh
    python3 benches/dma_throughput.py [--irvmm PATH] [--iters 2000] [--qemu-iters 8]
        [--bytes 2048] [--runs 3] [--no-qemu]
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "target", "guests", "probe.elf")
IRVMM = os.path.join(ROOT, "target", "release", "irvmm")
DEADLINE_S = 600
IRVMM_PASS = 0
QEMU_PASS = 1
MODES = ["4k", "2m", "off"]
PASS_RE = re.compile(r"^PROBE PASS dma-bench (.*)$", re.M)


def cmdline(iters, nbytes):
    return f"probe=dma-bench probe.iters={iters} probe.bytes={nbytes}"


def irvmm_cmd(args):
    return [args.irvmm, "--kernel", args.probe, "--cmdline", cmdline(args.iters, args.bytes),
            "--cpus", "1", "--memory", "128M", "--iommu", "intel", "--device", "edu"]


def qemu_cmd(args):
    return [args.qemu, "-accel", "kvm", "-M", "q35,kernel-irqchip=split",
            "-device", "intel-iommu,intremap=on,eim=on,caching-mode=on,aw-bits=48",
            "-device", "edu,dma_mask=0xffffffffffffffff", "-nodefaults", "-m", "128M", "-smp", "1",
            "-nographic", "-no-reboot", "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-kernel", args.probe, "-append", cmdline(args.qemu_iters, args.bytes),
            "-device", "isa-debug-exit,iobase=0x501,iosize=2"]


def run(cmd, pass_status):
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=DEADLINE_S)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")
        sys.exit(f"{cmd[0]} did not finish within {DEADLINE_S}s; output tail:\n{out[-1500:]}")
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    m = PASS_RE.search(out)
    if p.returncode != pass_status or not m:
        sys.exit(f"{' '.join(cmd)}\nexit status {p.returncode} (pass is {pass_status}); output tail:\n"
                 f"{out[-1500:]}\nstderr tail:\n{err[-1500:]}")
    d = dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)
    nbytes = float(d["bytes"])
    # MB/s from the time per DMA (the probe's own mbps_* keep one decimal only).
    return {mode: (nbytes / float(d[f"us_{mode}"]), float(d[f"us_{mode}"])) for mode in MODES}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--irvmm", default=IRVMM)
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    ap.add_argument("--probe", default=PROBE)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--qemu-iters", type=int, default=8)
    ap.add_argument("--bytes", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-qemu", action="store_true")
    args = ap.parse_args()
    for path, what in [(args.irvmm, "irvmm"), (args.probe, "probe.elf")]:
        if not os.path.isfile(path):
            sys.exit(f"{what} not found at {path}")
    use_qemu = not args.no_qemu and args.qemu
    results = {"irvmm": [], "QEMU 7.2": []}
    for _ in range(args.runs):
        results["irvmm"].append(run(irvmm_cmd(args), IRVMM_PASS))
        if use_qemu:
            results["QEMU 7.2"].append(run(qemu_cmd(args), QEMU_PASS))
    print(f"edu DMA, {args.bytes} bytes each, device -> memory, medians of {args.runs} runs "
          f"(irvmm K={args.iters}, QEMU K={args.qemu_iters})")
    header = f"{'VMM':<10}" + "".join(f"{m + ' MB/s':>12}{m + ' us':>10}" for m in MODES) + \
        f"{'4k/off':>9}{'2m/off':>9}"
    print(header)
    print("-" * len(header))
    for vmm, runs in results.items():
        if not runs:
            continue
        med = {m: (statistics.median(r[m][0] for r in runs), statistics.median(r[m][1] for r in runs))
               for m in MODES}
        row = f"{vmm:<10}" + "".join(f"{med[m][0]:>12.3f}{med[m][1]:>10.1f}" for m in MODES)
        off = med["off"][1] or float("nan")
        row += f"{med['4k'][1] / off:>9.2f}{med['2m'][1] / off:>9.2f}"
        print(row)
    if results["irvmm"] and results["QEMU 7.2"]:
        print("\nirvmm/QEMU time per DMA: " + ", ".join(
            f"{m} {statistics.median(r[m][1] for r in results['irvmm']) / statistics.median(r[m][1] for r in results['QEMU 7.2']):.4f}"
            for m in MODES))


if __name__ == "__main__":
    main()
