#!/usr/bin/env python3
"""Host CPU per idle vCPU: irvmm and QEMU side by side on the probe guest's `idle` scenario.

Boots target/guests/probe.elf with `probe=idle` (every AP started, then every CPU in `hlt`;
with --tick-us T each CPU also takes a periodic APIC timer interrupt every T microseconds, as
an idle OS's tick wakes its CPUs), waits for its `idle: ... idling` line and a settling
second, then reads utime + stime of every thread of the VMM process from /proc/PID/task/*/stat
at the start and end of a window. Prints, per VMM, the CPU used in percent of one host core:
the whole process, the boot vCPU, the mean per AP vCPU thread (the idle vCPUs) and the
VMM's other threads. Thread names tell vCPU threads apart: irvmm's `vcpuN`, QEMU's
`CPU N/KVM`.

    cargo build --release && python3 benches/idle_cpu.py [--cpus 4] [--window 5] [--runs 3]
        [--tick-us 0] [--irvmm target/release/irvmm] [--irvmm-baseline OLD_BINARY]
        [--qemu qemu-system-x86_64] [--qemu10]

Clock ticks are 10 ms (USER_HZ 100), so use windows of several seconds.
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

from qemu_peers import qemu10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "target", "guests", "probe.elf")
IRVMM = os.path.join(ROOT, "target", "release", "irvmm")
MEMORY = "128M"
START_DEADLINE_S = 120
SETTLE_S = 1.0
TICKS = os.sysconf("SC_CLK_TCK")


def cmdline(tick_us):
    return f"probe=idle probe.tick_us={tick_us}"


def irvmm_cmd(binary, cpus, tick_us):
    return [binary, "--kernel", PROBE, "--cmdline", cmdline(tick_us), "--cpus", str(cpus),
            "--memory", MEMORY, "--serial", "stdio"]


def qemu_cmd(qemu, cpus, tick_us):
    return [qemu, "-accel", "kvm", "-M", "q35,kernel-irqchip=split", "-m", MEMORY, "-smp", str(cpus),
            "-name", "debug-threads=on", "-nographic", "-no-reboot", "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-kernel", PROBE, "-append", cmdline(tick_us),
            "-device", "isa-debug-exit,iobase=0x501,iosize=2"]


def thread_times(pid):
    """{tid: (name, utime + stime in ticks)} of every thread of pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        # After the name: state is field 3, utime field 14, stime field 15 (1-based).
        out[tid] = (name, int(fields[11]) + int(fields[12]))
    return out


def vcpu_index(name):
    m = re.fullmatch(r"vcpu(\d+)", name) or re.fullmatch(r"CPU (\d+)/KVM", name)
    return int(m.group(1)) if m else None


def measure(cmd, window):
    """One run: returns (process %, BSP %, mean AP %, other threads %)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    start = time.monotonic()
    seen = []
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        seen.append(line)
        if line.startswith("idle:") and "idling" in line:
            break
        if line.startswith("PROBE ") or time.monotonic() - start > START_DEADLINE_S:
            proc.kill()
            sys.exit(f"{cmd[0]} did not reach the idle loop:\n{''.join(seen[-10:])}")
    time.sleep(SETTLE_S)
    before = thread_times(proc.pid)
    t0 = time.monotonic()
    time.sleep(window)
    after = thread_times(proc.pid)
    elapsed = time.monotonic() - t0
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    pct = lambda ticks: 100.0 * ticks / TICKS / elapsed
    bsp, aps, other = 0, [], 0
    for tid, (name, t) in after.items():
        used = t - before.get(tid, (name, 0))[1]
        index = vcpu_index(name)
        if index == 0:
            bsp += used
        elif index is not None:
            aps.append(used)
        else:
            other += used
    total = bsp + sum(aps) + other
    mean_ap = statistics.mean(aps) if aps else 0
    return pct(total), pct(bsp), pct(mean_ap), pct(other)


def series(cmd, window, runs):
    results = [measure(cmd, window) for _ in range(runs)]
    return tuple(statistics.median(r[i] for r in results) for i in range(4))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", type=int, default=4)
    ap.add_argument("--window", type=float, default=5.0, help="seconds measured per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tick-us", type=int, default=0, help="guest tick per CPU (0: APs in cli; hlt)")
    ap.add_argument("--irvmm", default=IRVMM)
    ap.add_argument("--irvmm-baseline", help="an older irvmm binary to compare")
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    ap.add_argument("--qemu10", action="store_true", help="also QEMU 10 (../shared/tools/qemu10.sh)")
    args = ap.parse_args()
    if not os.path.isfile(PROBE):
        sys.exit(f"{PROBE} is missing: run resources/fetch-assets.sh")
    rows = [("irvmm", irvmm_cmd(args.irvmm, args.cpus, args.tick_us))]
    if args.irvmm_baseline:
        rows.append(("irvmm (baseline)", irvmm_cmd(args.irvmm_baseline, args.cpus, args.tick_us)))
    if args.qemu:
        rows.append(("qemu 7.2", qemu_cmd(args.qemu, args.cpus, args.tick_us)))
    if args.qemu10:
        rows.append(("qemu 10", qemu_cmd(qemu10() or sys.exit("QEMU 10 is missing: run ../shared/tools/qemu10.sh from the repository root"), args.cpus, args.tick_us)))
    print(f"probe=idle probe.tick_us={args.tick_us}, {args.cpus} vCPUs, {args.window:.0f} s window, "
          f"median of {args.runs} runs; % of one host core")
    print(f"{'vmm':<18} {'process':>8} {'boot vCPU':>10} {'per AP vCPU':>12} {'other threads':>14}")
    for name, cmd in rows:
        total, bsp, ap_mean, other = series(cmd, args.window, args.runs)
        print(f"{name:<18} {total:>7.1f}% {bsp:>9.1f}% {ap_mean:>11.1f}% {other:>13.1f}%")


if __name__ == "__main__":
    main()
