#!/usr/bin/env python3
"""Passthrough interrupt benchmark: the vfio-user test device's MSI-X interrupts delivered by KVM
through irqfds (irvmm's default, `irqfd=on`) and by irvmm itself (`irqfd=off`: the VMM watches
the eventfd and injects with KVM_SIGNAL_MSI, what a VMM without irqfds, or a trapped MSI-X
table without irqfds, costs), side by side on the same guest, measured from inside the guest by
the probe's `vfio-bench-irq` scenario.

What runs, per run and per column (irqfd=on and irqfd=off alternate, the first one swapping
every run, so that load from other work on the host hits both alike):

    vfio-user-testdev --socket TMP/dev.sock [--poll-us U]        (a fresh device each time)
    RUST_LOG=info irvmm --kernel probe.elf --cpus 1 --memory 128M [--iommu intel]
        --cmdline "probe=vfio-bench-irq probe.iters=K probe.period_us=P probe.count=C"
        --device vfio-user,socket=TMP/dev.sock,msix=M,irqfd=on|off

The guest (BSP only) programs MSI-X vector 0 with one message to itself: compatibility format,
or with --iommu intel remappable format through an IRTE, remapping enabled as Linux does. Then:
  * latency: K times, read kvmclock, write the device's DOORBELL for vector 0, wait in
    `sti; hlt`, and take the time from before the write to the handler's clock read; then poll
    DOORBELL until the device reads 0 (outside the timed span);
  * rate: the device's TIMER fires vector 0 C times, one every P microseconds; the guest counts
    what arrives.

Columns:
  latency median/min/max   microseconds from the doorbell write to the handler: the median of
                           the runs' medians, the smallest minimum, the largest maximum
  run medians              the range of the runs' medians
  round trips/s            doorbell round trips per second over the whole latency loop
                           (delivery, handler, doorbell poll and the guest's own instructions)
  fired                    timer fires the device made (TIMER_FIRED), median over runs
  received                 timer interrupts the guest's handler took, median over runs
  lost %                   (fired - received) / fired: fires merged on the way (an eventfd read
                           once for several signals; a vector still pending in the guest's IRR
                           when the next injection comes) or never delivered
  deliveries/s             received interrupts per second from the TIMER_COUNT write to the
                           last arrival (the nominal rate is 10^6 / P)
  irqfd/VMM                ratio of the two rows: below 1 for latency and above 1 for the rates
                           means irqfds are better
The last table proves the columns ran what they say, from irvmm's exit report: the MSI-X
group's `K in KVM` (vectors bound to KVM irqfds at exit) and `D delivered by the VMM` (the
VMM's KVM_SIGNAL_MSI injections, one per eventfd read), next to the interrupts the guest took
(K doorbells + received timer interrupts). With irqfd=on the VMM must deliver none (every
interrupt came through KVM); with irqfd=off none may be in KVM and the VMM delivers at least
one per guest interrupt (more when injections merged in the guest's IRR). The script exits
non-zero when a run contradicts its column.

What the numbers mean, and their limits:
  * The latency is the whole path as the guest sees it. The default, --msix trap, traps the
    register page: the doorbell write exits to irvmm, which forwards it to the device over
    the socket, and the device signals the eventfd before it answers; the vCPU then runs on
    to `sti; hlt` while KVM (irqfd) or irvmm's watcher thread (VMM) injects. With
    --msix relocate (irvmm's default placement for this device) the register page is mapped
    into the guest and the doorbell is a plain store that the device's poller notices on its
    next pass (it sleeps 50 us, --poll-us, plus the host's timer slack and scheduling). Since
    the guest writes each doorbell right after the previous interrupt, which the poller
    itself sent, the loop locks onto the poller's period: the latency then measures that
    period (~180 us on the build machines, the same in both columns), not the delivery. The
    timer stream does not depend on the placement (the poller wakes at the timer's deadline).
  * Both columns include the guest's interrupt entry and its clock reads, tens of instructions;
    on a host whose KVM emulates guest code (~1.8 M instructions/s) that is tens of
    microseconds, and the guest itself limits the rate it can take interrupts at (the timer
    stream's losses at short periods are largely the guest being too slow: watch how they
    change with --period-us). Compare the columns on the same host and run.
  * irqfd=off adds a thread wake-up (the VMM's watcher) and a KVM_SIGNAL_MSI ioctl per
    interrupt; with 2 host cores shared by the vCPU, the device's poller and that watcher,
    scheduling decides much of the difference. The maxima are scheduling outliers.
  * The machines this was written on run other work: use --runs and look at the spread.

Observed on the build machine (2 host cores shared with other engineers' builds and VMs, two
niced rustc and another irvmm running at the time; nested emulating KVM that cannot post
interrupts; irvmm release build; K = 1000, C = 2000, P = 200 us). msix=trap, compat, 15 runs
per column: latency median 101 us with irqfds, 103 us through the VMM (runs' medians 97-106
and 91-112; minima 87 and 84 us), ratio 0.99; 4463 and 4533 round trips/s; timer 1.0 % and
0.2 % lost, 4949 and 4988 deliveries/s. --iommu intel (remapped): 98 and 100 us (0.98), 4702
and 4661 round trips/s, 0.8 % and 0.2 % lost. msix=relocate (9 runs): 117 and 122 us, the
runs' medians spread 72-182 us (locked to the poller). At P = 50 us (nominal 20000/s, C =
4000, 9 runs) both columns saturate and 40-46 % of the fires merge: 10810 and 12090
deliveries/s, ranges 8379-12780 and 6822-12790 (a quick earlier try with msix=relocate gave
8.7 and 8.1 thousand). So on this host the two paths cannot be told apart: its KVM injects
interrupts ~90 us late (the latency floor, the same in both columns) and runs guest code at
~1.8 M instructions/s, which dwarfs the watcher wake-up and the KVM_SIGNAL_MSI the VMM path
adds. The exit report showed every run doing what its column says (irqfds: 1 vector in KVM,
0 VMM deliveries; VMM: 0 in KVM, VMM deliveries >= guest interrupts; at P = 50 us medians of
3618 injections and 2422 interrupts taken, the rest merged in the guest's IRR). The difference, and posting (which irqfd routes
allow and VMM injection cannot), need a host with hardware virtualization.

    CARGO_TARGET_DIR=... cargo build --release -p cli -p vfio-user-testdev && tests/probe-guest/build.sh
    python3 benches/vfio_interrupts.py [--irvmm PATH] [--testdev PATH] [--probe PATH] [--runs 5]
        [--iters 1000] [--period-us 200] [--count 2000] [--msix trap|relocate] [--iommu]
        [--poll-us U]
"""

import argparse
import sys

from vfio_bench_common import (IRVMM, PROBE, TESTDEV, TestDevice, check_assets, irqfd_msix, irvmm_cmd, median,
                               router_counters, run_irvmm, spread)

SCENARIO = "vfio-bench-irq"
DEADLINE_S = 300
# The two columns: (label, irqfd= value).
COLUMNS = [("irqfd (KVM)", "on"), ("VMM", "off")]


def cmdline(args):
    return (f"probe={SCENARIO} probe.iters={args.iters} probe.period_us={args.period_us} "
            f"probe.count={args.count}")


def one_run(args, irqfd):
    """One guest run with a fresh device; returns the measurements and irvmm's counters."""
    dev_args = ["--poll-us", str(args.poll_us)] if args.poll_us else []
    extra = ["--cpus", str(args.cpus), "--memory", args.memory] + (["--iommu", "intel"] if args.iommu else [])
    with TestDevice(args.testdev, dev_args) as dev:
        arg = f"vfio-user,socket={dev.socket},msix={args.msix},irqfd={irqfd}"
        details, _, err = run_irvmm(irvmm_cmd(args.irvmm, args.probe, cmdline(args), arg, extra), SCENARIO,
                                    DEADLINE_S)
    r = {k: float(details[k]) for k in ["lat_med_us", "lat_min_us", "lat_max_us", "irq_per_s", "rate_hz"]}
    r.update({k: int(details[k]) for k in ["fired", "received", "lost"]})
    r["format"] = details["format"]
    r["guest"] = args.iters + r["received"]
    r.update(irqfd_msix(err))
    r["router"] = router_counters(err)
    return r


def contradictions(label, irqfd, r, args):
    """Why run r does not prove its column (empty when it does)."""
    out = []
    if irqfd == "on" and (r["by_vmm"] != 0 or r["in_kvm"] < 1):
        out.append(f"{label}: {r['by_vmm']} VMM deliveries and {r['in_kvm']} vectors in KVM "
                   f"(expected 0 and at least 1)")
    if irqfd == "off" and (r["in_kvm"] != 0 or r["by_vmm"] < r["guest"]):
        out.append(f"{label}: {r['in_kvm']} vectors in KVM and {r['by_vmm']} VMM deliveries for "
                   f"{r['guest']} guest interrupts (expected 0 and at least as many)")
    expected = "remapped" if args.iommu else "compat"
    if r["format"] != expected:
        out.append(f"{label}: guest used format={r['format']}, expected {expected}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--irvmm", default=IRVMM, help="irvmm binary (default target/release/irvmm)")
    ap.add_argument("--testdev", default=TESTDEV,
                    help="vfio-user-testdev binary (default target/release/vfio-user-testdev)")
    ap.add_argument("--probe", default=PROBE, help="probe guest ELF (default target/guests/probe.elf)")
    ap.add_argument("--runs", type=int, default=5, help="runs per column (medians are shown)")
    ap.add_argument("--iters", type=int, default=1000, help="doorbell round trips K per run (0: none)")
    ap.add_argument("--period-us", type=int, default=200, help="timer period P in microseconds")
    ap.add_argument("--count", type=int, default=2000, help="timer fires C per run (0: no rate part)")
    ap.add_argument("--msix", default="trap", choices=["trap", "relocate", "auto"],
                    help="irvmm's MSI-X placement (trap, the default: the doorbell acts during its exit; "
                         "relocate: register page mapped, the device's poller notices the doorbell)")
    ap.add_argument("--iommu", action="store_true", help="--iommu intel: the vector is remapped through an IRTE")
    ap.add_argument("--poll-us", type=int, default=0, help="the device's poller period (default: the device's, 50)")
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--memory", default="128M")
    args = ap.parse_args()
    check_assets([(args.probe, "run tests/probe-guest/build.sh"),
                  (args.irvmm, "run cargo build --release -p cli"),
                  (args.testdev, "run cargo build --release -p vfio-user-testdev")])
    if args.runs < 1 or args.iters < 0 or args.count < 0 or args.iters + args.count == 0:
        sys.exit("--runs must be at least 1, and --iters or --count must be positive")

    results = {irqfd: [] for _, irqfd in COLUMNS}
    problems = []
    for run in range(args.runs):
        order = COLUMNS if run % 2 == 0 else COLUMNS[::-1]
        for label, irqfd in order:
            r = one_run(args, irqfd)
            results[irqfd].append(r)
            problems += contradictions(label, irqfd, r, args)
            print(f"run {run + 1} {label}: latency median {r['lat_med_us']} us, {r['irq_per_s']:.0f} round trips/s; "
                  f"timer {r['received']}/{r['fired']} at {r['rate_hz']:.0f}/s; VMM deliveries {r['by_vmm']}",
                  file=sys.stderr)

    fmt = "remapped (--iommu intel)" if args.iommu else "compat"
    print(f"probe={SCENARIO}: {args.cpus} vCPU, --memory {args.memory}, msix={args.msix}, {fmt} message, "
          f"device poller {args.poll_us or 50} us; {args.runs} runs per column, alternating")
    print()
    rows = {irqfd: results[irqfd] for _, irqfd in COLUMNS}
    if args.iters:
        print(f"latency, doorbell write -> handler (K={args.iters} per run), microseconds:")
        print(f"{'delivery':<14}{'median':>9}{'min':>9}{'max':>10}{'run medians':>16}{'round trips/s':>15}")
        for label, irqfd in COLUMNS:
            rs = rows[irqfd]
            print(f"{label:<14}{median(r['lat_med_us'] for r in rs):>9.1f}{min(r['lat_min_us'] for r in rs):>9.1f}"
                  f"{max(r['lat_max_us'] for r in rs):>10.1f}{spread([r['lat_med_us'] for r in rs]):>16}"
                  f"{median(r['irq_per_s'] for r in rs):>15.0f}")
        on, off = rows["on"], rows["off"]
        lat = median(r["lat_med_us"] for r in on) / median(r["lat_med_us"] for r in off)
        rt = median(r["irq_per_s"] for r in on) / median(r["irq_per_s"] for r in off)
        print(f"{'irqfd/VMM':<14}{lat:>9.2f}{'':>9}{'':>10}{'':>16}{rt:>15.2f}")
        print()
    if args.count:
        nominal = 1e6 / args.period_us if args.period_us else float("inf")
        print(f"timer stream (C={args.count} fires every {args.period_us} us, nominal {nominal:.0f}/s), "
              f"medians over runs:")
        print(f"{'delivery':<14}{'fired':>8}{'received':>10}{'lost %':>8}{'lost % range':>14}{'deliveries/s':>14}"
              f"{'range':>12}")
        for label, irqfd in COLUMNS:
            rs = rows[irqfd]
            lost = [100.0 * r["lost"] / r["fired"] if r["fired"] else 0.0 for r in rs]
            print(f"{label:<14}{median(r['fired'] for r in rs):>8.0f}{median(r['received'] for r in rs):>10.0f}"
                  f"{median(lost):>8.1f}{spread(lost):>14}{median(r['rate_hz'] for r in rs):>14.0f}"
                  f"{spread([r['rate_hz'] for r in rs], '{:.0f}'):>12}")
        on, off = rows["on"], rows["off"]
        ratio = median(r["rate_hz"] for r in on) / median(r["rate_hz"] for r in off)
        print(f"{'irqfd/VMM':<14}{'':>8}{'':>10}{'':>8}{'':>14}{ratio:>14.2f}")
        print()
    print("who delivered (irvmm's exit report; medians over runs):")
    print(f"{'delivery':<14}{'guest irqs':>11}{'in KVM':>8}{'VMM-delivered':>15}{'blocked':>9}{'irqfd binds':>13}")
    for label, irqfd in COLUMNS:
        rs = rows[irqfd]
        print(f"{label:<14}{median(r['guest'] for r in rs):>11.0f}{median(r['in_kvm'] for r in rs):>8.0f}"
              f"{median(r['by_vmm'] for r in rs):>15.0f}{median(r['blocked'] for r in rs):>9.0f}"
              f"{median(r['router'].get('irqfd_binds', 0) for r in rs):>13.0f}")
    if problems:
        sys.exit("runs that did not run what their column says:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    main()
