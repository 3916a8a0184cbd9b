#!/usr/bin/env python3
"""virtio-blk throughput: irvmm vs QEMU 7.2's virtio-blk-pci (and QEMU 10.0 when
../shared/tools/qemu10.sh has set it up), the same probe driver on the same raw image.

The probe's `virtio-blk-bench` finds the virtio-blk device by PCI ID, sets up queue 0 with
up to --qd requests in flight and polls the used ring (no interrupts: the number is the
device path, guest kick -> VMM -> image -> used ring), first for --ops 4 KiB reads at
random 4 KiB-aligned offsets, then for --seq-mib MiB of sequential 64 KiB reads. It prints
`iops=` and `seq_kibs=`; this script runs each VMM --runs times, alternating, and prints
medians and the irvmm/QEMU ratios (above 1: irvmm is faster).

    irvmm:    --disk path=IMG[,direct=on]                      (one I/O thread, pread/pwrite)
    QEMU:     -drive file=IMG,if=none,format=raw,cache=writeback|none,aio=threads
              -device virtio-blk-pci,disable-legacy=on        (-M q35,kernel-irqchip=split)

Both run 1 vCPU and 128 MiB. The image (--image-mib, default 64) is filled with random
bytes and sits in the host page cache unless --direct (irvmm direct=on, QEMU cache=none).

    cargo build --release && tests/probe-guest/build.sh && python3 benches/virtio_blk.py --runs 3

Measured on the project's build machine (2 cores, nested emulating KVM at ~1.8 M guest
instructions/s; release build; median of 11 runs; the README has the full table):

    QD 8, page cache:  IOPS irvmm 6746 / QEMU 7.2 6588 / QEMU 10 6593;  MiB/s 436.8 / 436.6 / 437.1
    QD 8, O_DIRECT:    IOPS 6039 / 4736 / 4653;  MiB/s 408.4 / 314.8 / 322.7
    QD 1, page cache:  IOPS 5339 / 4291 / 4585;  MiB/s 329.5 / 281.7 / 275.1

The guest's own instruction rate bounds every number here; single runs vary by up to 30%.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

from qemu_peers import qemu10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IRVMM = os.path.join(ROOT, "target", "release", "irvmm")
PROBE = os.path.join(ROOT, "target", "guests", "probe.elf")
PASS = re.compile(r"^PROBE PASS virtio-blk-bench (.*)$", re.M)


def cmdline(args):
    return f"probe=virtio-blk-bench probe.ops={args.ops} probe.qd={args.qd} probe.seq_mib={args.seq_mib}"


def irvmm_cmd(args, image):
    disk = f"path={image}" + (",direct=on" if args.direct else "")
    return [args.irvmm, "--kernel", PROBE, "--cmdline", cmdline(args), "--memory", "128M", "--disk", disk]


def qemu_cmd(binary, args, image):
    cache = "none" if args.direct else "writeback"
    return [binary, "-accel", "kvm", "-M", "q35,kernel-irqchip=split", "-m", "128M", "-smp", "1",
            "-nographic", "-no-reboot", "-display", "none", "-monitor", "none", "-nodefaults",
            "-serial", "stdio", "-kernel", PROBE, "-append", cmdline(args),
            "-device", "isa-debug-exit,iobase=0x501,iosize=2",
            "-drive", f"file={image},if=none,id=d0,format=raw,cache={cache},aio=threads",
            "-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    m = PASS.search(p.stdout)
    if not m:
        sys.exit(f"no PASS line from {cmd[0]}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    fields = dict(kv.split("=", 1) for kv in m.group(1).split())
    return int(fields["iops"]), int(fields["seq_kibs"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ops", type=int, default=2000, help="random 4 KiB reads per run")
    ap.add_argument("--qd", type=int, default=8, help="requests in flight (1-8)")
    ap.add_argument("--seq-mib", type=int, default=16, help="MiB read sequentially per run")
    ap.add_argument("--image-mib", type=int, default=64)
    ap.add_argument("--direct", action="store_true", help="O_DIRECT: irvmm direct=on, QEMU cache=none")
    ap.add_argument("--no-qemu10", action="store_true")
    ap.add_argument("--irvmm", default=IRVMM, help="irvmm binary (default target/release/irvmm)")
    args = ap.parse_args()
    for path, fix in [(PROBE, "run tests/probe-guest/build.sh"), (args.irvmm, "run cargo build --release")]:
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: {fix}")
    vmms = {"irvmm": lambda img: irvmm_cmd(args, img)}
    q72 = shutil.which("qemu-system-x86_64")
    if q72:
        vmms["qemu-7.2"] = lambda img: qemu_cmd(q72, args, img)
    else:
        print("qemu-system-x86_64 is missing (apt-get install -y qemu-system-x86): irvmm only")
    q10 = None if args.no_qemu10 else qemu10()
    if q10:
        vmms["qemu-10"] = lambda img: qemu_cmd(q10, args, img)
    # The image lives under the repository (the QEMU 10 wrapper binds directories of the
    # paths it is given; /tmp may be tmpfs without O_DIRECT).
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "target")) as d:
        image = os.path.join(d, "bench.img")
        with open(image, "wb") as f:
            for _ in range(args.image_mib):
                f.write(os.urandom(1 << 20))
        results = {name: [] for name in vmms}
        for _ in range(args.runs):
            for name, cmd in vmms.items():
                results[name].append(run(cmd(image)))
    print(f"virtio-blk, 1 vCPU, queue depth {args.qd}, {args.image_mib} MiB raw image"
          f"{' (O_DIRECT)' if args.direct else ' (host page cache)'}, median of {args.runs} runs")
    print(f"{'vmm':<10}{'4 KiB random read IOPS':>24}{'64 KiB sequential MiB/s':>26}")
    med = {}
    for name, rows in results.items():
        iops = statistics.median(r[0] for r in rows)
        mibs = statistics.median(r[1] for r in rows) / 1024
        med[name] = (iops, mibs)
        print(f"{name:<10}{iops:>24.0f}{mibs:>26.1f}")
    base = med["irvmm"]
    for name, (iops, mibs) in med.items():
        if name != "irvmm":
            print(f"irvmm/{name}: IOPS x{base[0] / iops:.2f}, MiB/s x{base[1] / mibs:.2f}")


if __name__ == "__main__":
    main()
