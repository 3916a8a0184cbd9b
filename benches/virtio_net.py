#!/usr/bin/env python3
"""virtio-net packet rates: irvmm vs QEMU 7.2's virtio-net-pci, the same probe driver on
the same kind of tap, with the same host peer.

Each run creates a network namespace holding a single-queue tap (`ip tuntap add ... mode
tap vnet_hdr`), starts tests/integration/net_peer.py --bench on it and the VMM inside it
(`ip netns exec`). The probe's `virtio-net-bench` polls (no interrupts): it sends
--frames 64-byte frames with --qd in flight (guest -> tap; the peer counts them), then
asks the peer to flood 64-byte frames and takes --frames of them (tap -> guest), reposting
each receive buffer at once. It prints `tx_pps=` and `rx_pps=`; this script runs each
VMM --runs times, alternating, and prints medians and the irvmm/QEMU ratios (above 1:
irvmm is faster).

    irvmm:  --net tap=TAP                       (one I/O thread: tap fd + ioeventfds)
    QEMU:   -netdev tap,id=n0,ifname=TAP,script=no,downscript=no
            -device virtio-net-pci,netdev=n0,disable-legacy=on,romfile=
            (-M q35,kernel-irqchip=split; no vhost: the tap is served by QEMU's main loop)

Both run 1 vCPU and 128 MiB. Needs root (network namespaces, taps) and python3.

    cargo build --release && tests/probe-guest/build.sh && sudo python3 benches/virtio_net.py --runs 5

The guest's own instruction rate bounds the numbers; the Python peer's flood rate bounds
tap -> guest well above what the guest takes here (see README for the table).
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IRVMM = os.path.join(ROOT, "target", "release", "irvmm")
PROBE = os.path.join(ROOT, "target", "guests", "probe.elf")
PEER = os.path.join(ROOT, "tests", "integration", "net_peer.py")
PASS = re.compile(r"^PROBE PASS virtio-net-bench (.*)$", re.M)
PEER_TX = re.compile(r"^PEER BENCH rx_frames=(\d+) tx_frames=(\d+)$", re.M)


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Namespace:
    """A network namespace with a tap and the bench peer on it."""

    def __init__(self, tag):
        self.name = f"irvmm-bench-{tag}-{os.getpid()}"
        self.tap = f"tb{os.getpid() % 100000}{tag[:2]}"
        sh("ip", "netns", "add", self.name)
        self.exec = ["ip", "netns", "exec", self.name]
        sh(*self.exec, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        sh(*self.exec, "ip", "tuntap", "add", "dev", self.tap, "mode", "tap", "vnet_hdr")
        self.peer = subprocess.Popen(
            [*self.exec, sys.executable, PEER, "--tap", self.tap, "--bench", "--timeout", "600", "--linger", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.peer.stdout.readline()
        if not line.startswith("PEER READY"):
            self.close()
            sys.exit(f"the peer did not start: {line}{self.peer.stdout.read()}")

    def close(self):
        out = ""
        try:
            out, _ = self.peer.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.peer.kill()
            out, _ = self.peer.communicate()
        sh("ip", "netns", "del", self.name, check=False)
        return out


def cmdline(args):
    return f"probe=virtio-net-bench probe.frames={args.frames} probe.qd={args.qd}"


def irvmm_cmd(args, tap):
    return [args.irvmm, "--kernel", PROBE, "--cmdline", cmdline(args), "--memory", "128M", "--net", f"tap={tap}"]


def qemu_cmd(binary, args, tap):
    return [binary, "-accel", "kvm", "-M", "q35,kernel-irqchip=split", "-m", "128M", "-smp", "1",
            "-nographic", "-no-reboot", "-display", "none", "-monitor", "none", "-nodefaults",
            "-serial", "stdio", "-kernel", PROBE, "-append", cmdline(args),
            "-device", "isa-debug-exit,iobase=0x501,iosize=2",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=n0,disable-legacy=on,romfile="]


def run(name, make_cmd, args):
    ns = Namespace(name)
    try:
        p = subprocess.run([*ns.exec, *make_cmd(ns.tap)], capture_output=True, text=True, timeout=600)
    finally:
        peer = ns.close()
    m = PASS.search(p.stdout)
    if not m:
        sys.exit(f"no PASS line from {name}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}\npeer:\n{peer}")
    fields = dict(kv.split("=", 1) for kv in m.group(1).split())
    seen = PEER_TX.search(peer)
    if not seen or int(seen.group(2)) < args.frames:
        sys.exit(f"{name}: the peer saw {seen.group(2) if seen else 'no'} of {args.frames} frames:\n{peer}")
    return int(fields["tx_pps"]), int(fields["rx_pps"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--frames", type=int, default=20000, help="frames each way per run")
    ap.add_argument("--qd", type=int, default=16, help="frames in flight guest -> tap (1-32)")
    ap.add_argument("--irvmm", default=IRVMM, help="irvmm binary (default target/release/irvmm)")
    args = ap.parse_args()
    for path, fix in [(PROBE, "run tests/probe-guest/build.sh"), (args.irvmm, "run cargo build --release")]:
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: {fix}")
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces and taps)")
    vmms = {"irvmm": lambda tap: irvmm_cmd(args, tap)}
    q72 = shutil.which("qemu-system-x86_64")
    if q72:
        vmms["qemu-7.2"] = lambda tap: qemu_cmd(q72, args, tap)
    else:
        print("qemu-system-x86_64 is missing (apt-get install -y qemu-system-x86): irvmm only")
    results = {name: [] for name in vmms}
    for _ in range(args.runs):
        for name, cmd in vmms.items():
            results[name].append(run(name, cmd, args))
            time.sleep(0.2)
    print(f"virtio-net, 1 vCPU, 64-byte frames, {args.frames} each way, {args.qd} in flight out, "
          f"polled, median of {args.runs} runs")
    print(f"{'vmm':<10}{'guest->tap packets/s':>22}{'tap->guest packets/s':>22}")
    med = {}
    for name, rows in results.items():
        tx = statistics.median(r[0] for r in rows)
        rx = statistics.median(r[1] for r in rows)
        med[name] = (tx, rx)
        print(f"{name:<10}{tx:>22.0f}{rx:>22.0f}")
    base = med["irvmm"]
    for name, (tx, rx) in med.items():
        if name != "irvmm":
            print(f"irvmm/{name}: guest->tap x{base[0] / tx:.2f}, tap->guest x{base[1] / rx:.2f}")


if __name__ == "__main__":
    main()
