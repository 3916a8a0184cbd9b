#!/usr/bin/env python3
"""VT-d posted-interrupt benchmark: edu-msix interrupts per second delivered through a
remapped-format IRTE and through a posted-format IRTE, on irvmm, driven from inside the guest
by the probe's `vtd-pi-bench` scenario.

The guest (target/guests/probe.elf, `probe=vtd-pi-bench probe.iters=K`) enables VT-d
interrupt remapping in x2APIC mode as Linux does and points MSI-X vector 0 of irvmm's
edu-msix device (1234:11e9) at one IRTE, then times K sequential round trips per format on
the BSP alone (the APs stay in wait-for-SIPI):

    remapped  the IRTE delivers a vector to the BSP; its handler counts. irvmm keeps the
              translation cached (its interrupt-entry cache) and injects it with
              KVM_SIGNAL_MSI when the device raises the vector.
    posted    the IRTE (rewritten and invalidated) is in posted format: irvmm reads the entry,
              sets the vector's PIR bit in the guest's posted-interrupt descriptor (atomic OR),
              sets ON (atomic compare-exchange) and sends the notification vector NV to NDST
              (the BSP) with KVM_SIGNAL_MSI. The guest's NV handler does what a guest
              hypervisor's does: clears ON (`lock and`), harvests the PIR dword (`xchg`) and
              counts the posted interrupt it finds.

Each round trip is: the raise (an MMIO write to the device, one exit to irvmm), irvmm's
delivery work, the injection, the guest's interrupt entry and handler, its EOI, and the
guest's `sti; hlt` wake-up. The probe checks that every raise brought exactly one
interrupt (remapped) or exactly one notification and one harvested PIR bit (posted).

QEMU is not compared: its intel-iommu reports no CAP.PI and ignores the IRTE mode bit (IM),
and it has no edu-msix device; no other VMM emulates posted-format IRTEs.

Columns (medians over --runs runs, min..max in brackets):
  remapped/s   remapped round trips per second (guest-measured, kvmclock)
  posted/s     posted round trips per second
  ratio        posted/s over remapped/s (below 1: posting costs more per interrupt)

Observed on the build machine (2 host cores shared with other engineers' builds and tests,
load average ~13; irvmm release build; K = 20000, 5 runs, --cpus 1):

    format         interrupts/s (median [min..max])
    remapped                    10358 [8662..13613]
    posted                       9861 [7838..12792]
    ratio                      0.943 [0.905..0.956]

The absolute rates move with the host's load by +-25 % between runs; the ratio, from
alternating blocks within each run, stays within 0.90-0.96: posting costs about 5 us more
per interrupt (~97 us against ~101 us per round trip). That is the VMM reading the IRTE
again, its atomic OR and compare-exchange on the descriptor, and the guest handler's two
locked instructions on it; both paths make one KVM_SIGNAL_MSI per interrupt.

    CARGO_TARGET_DIR=... cargo build --release -p cli && tests/probe-guest/build.sh
    python3 benches/vtd_posting.py [--irvmm PATH] [--iters 20000] [--runs 5] [--cpus 1]
        [--memory 128M]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "target", "guests", "probe.elf")
IRVMM = os.path.join(ROOT, "target", "release", "irvmm")
DEADLINE_S = 600
# Debug-exit status meaning PROBE PASS.
IRVMM_PASS = 0

PASS_RE = re.compile(r"^PROBE PASS vtd-pi-bench (.*)$", re.M)


def irvmm_cmd(args):
    return [args.irvmm, "--kernel", args.probe, "--cmdline", f"probe=vtd-pi-bench probe.iters={args.iters}",
            "--cpus", str(args.cpus), "--memory", args.memory, "--iommu", "intel", "--device", "edu-msix"]


def run(cmd):
    """Runs cmd to its exit; returns the PASS details as a dict. Exits on failure."""
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=DEADLINE_S)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")
        sys.exit(f"{cmd[0]} did not finish within {DEADLINE_S}s; output tail:\n{out[-1500:]}")
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    m = PASS_RE.search(out)
    if p.returncode != IRVMM_PASS or not m:
        sys.exit(f"{' '.join(cmd)}\nexit status {p.returncode} (pass is {IRVMM_PASS}); output tail:\n"
                 f"{out[-1500:]}\nstderr tail:\n{err[-1500:]}")
    return dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)


def spread(values, fmt):
    return f"{fmt(statistics.median(values))} [{fmt(min(values))}..{fmt(max(values))}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--irvmm", default=IRVMM)
    ap.add_argument("--probe", default=PROBE)
    ap.add_argument("--iters", type=int, default=20000, help="round trips per format and run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--memory", default="128M")
    args = ap.parse_args()
    for path in (args.irvmm, args.probe):
        if not os.path.isfile(path):
            sys.exit(f"{path} is missing (build irvmm and the probe first; see the docstring)")

    remapped, posted, ratio = [], [], []
    for i in range(args.runs):
        d = run(irvmm_cmd(args))
        r, p = int(d["remapped_per_s"]), int(d["posted_per_s"])
        remapped.append(r)
        posted.append(p)
        ratio.append(p / r if r else 0.0)
        print(f"run {i + 1}/{args.runs}: remapped {r}/s, posted {p}/s, ratio {ratio[-1]:.3f}", file=sys.stderr)

    print(f"VT-d edu-msix delivery on irvmm, {args.iters} sequential round trips per format, "
          f"{args.runs} runs, --cpus {args.cpus} (QEMU: no CAP.PI, not comparable)")
    print(f"{'format':<10} {'interrupts/s (median [min..max])':>36}")
    print(f"{'remapped':<10} {spread(remapped, lambda v: f'{v:.0f}'):>36}")
    print(f"{'posted':<10} {spread(posted, lambda v: f'{v:.0f}'):>36}")
    print(f"{'ratio':<10} {spread(ratio, lambda v: f'{v:.3f}'):>36}")


if __name__ == "__main__":
    main()
