//! The scenarios a probe run can perform, selected by `probe=NAME` on the command line.
//!
//! A scenario gets the boot [`Context`] and returns an [`Outcome`]: `Ok` with the
//! `key=value ...` details of the `PROBE PASS` line, or `Err` with the `PROBE FAIL` reason.
//! It may print progress lines of its own before returning; only the BSP prints.
//!
//! The `ir-*` scenarios drive the platform's Intel VT-d unit (interrupt remapping, found
//! through the DMAR) with the edu test device and the I/O APIC; their shared parts are in
//! `ir_common`; `ir-bench` times invalidations with many remapped vectors live. `hostile`
//! writes garbage into every emulated register window, then runs `ir-basic`'s steps.
//!
//! `vtd-pi` drives posted-format IRTEs (CAP.PI) as a guest hypervisor does, with a
//! posted-interrupt descriptor in the probe's memory; `vtd-pi-bench` times remapped against
//! posted delivery.
//!
//! The `amd-*` scenarios drive the platform's AMD-Vi unit (found through the IVRS) the
//! same way: `amd-ir-basic`, `amd-ir-ioapic`, `amd-ir-faults`, `amd-ir-many` in remapped
//! mode, `amd-ga` in guest virtual APIC mode (the probe as a guest hypervisor), `amd-bench`
//! for the benchmarks; shared parts in `amd_common`. `hostile` covers AMD-Vi too when the
//! platform has it.
//!
//! The `vfio-*` scenarios drive the vfio-user test device (1234:11ea) that irvmm passes
//! through (`--device vfio-user,socket=...`); their shared parts are in `vfio_common`.
//! `vfio-amd-ga` takes one of its vectors into AMD-Vi guest virtual APIC mode and back.
//! `vfio-bench-irq` and `vfio-bench-mmio` time its interrupts and register accesses for the
//! benchmarks in `benches/` (statistics in `bench_stats`).

mod amd_basic;
mod amd_bench;
mod amd_common;
mod amd_faults;
mod amd_ga;
mod amd_ga_tags;
mod amd_ioapic;
mod amd_many;
mod bench_stats;
mod boot;
mod cpuid;
mod dma_basic;
mod dma_bench;
mod dma_common;
mod dma_faults;
mod dma_inval;
mod dma_superpage;
mod fault;
mod hostile;
mod idle;
mod ioapic_extdest;
mod ipi;
mod ir_basic;
mod ir_bench;
mod ir_common;
mod ir_faults;
mod ir_ioapic;
mod ir_many;
mod platform;
mod poweroff;
mod pvpanic;
mod remap_bench;
mod reset;
mod serial_in;
mod smp;
mod triple_fault;
mod vfio_amd_ga;
mod vfio_basic;
mod vfio_bench_irq;
mod vfio_bench_mmio;
mod vfio_common;
mod vfio_die;
mod vfio_dma;
mod vfio_dma_remap;
mod vfio_extdest;
mod vfio_intx;
mod vfio_mask;
mod vfio_remap;
mod virtio_blk;
mod virtio_blk_bad;
mod virtio_blk_bench;
mod virtio_blk_iommu;
mod virtio_common;
mod virtio_console;
mod virtio_console_in;
mod virtio_net;
mod virtio_net_bad;
mod virtio_net_bench;
mod virtio_net_common;
mod virtio_rng;
mod vtd_pi;
mod vtd_pi_bench;

use crate::pvh::StartInfo;
use crate::report::Outcome;

/// What every scenario starts from.
pub struct Context {
    /// The PVH boot information.
    pub start_info: StartInfo,
    /// The kernel command line (may be empty).
    pub cmdline: &'static [u8],
}

/// One row of the dispatch table.
pub struct Scenario {
    /// The `probe=` value that selects it.
    pub name: &'static str,
    /// One line on what it checks.
    pub summary: &'static str,
    /// Runs it on the BSP.
    pub run: fn(&Context) -> Outcome,
}

/// Every scenario, by name.
pub static ALL: &[Scenario] = &[
    Scenario {
        name: "boot",
        summary: "PVH boot info, ACPI tables and checksums, MADT processor count",
        run: boot::run,
    },
    Scenario {
        name: "cpuid",
        summary: "the CPUID leaves every vCPU sees (popcnt, SMAP, SMEP, x2APIC, XSAVE...) and whether CR4 takes SMEP/SMAP",
        run: cpuid::run,
    },
    Scenario {
        name: "fault",
        summary: "raises #UD: must end in PROBE FAIL (checks the failure path)",
        run: fault::run,
    },
    Scenario {
        name: "smp",
        summary: "x2APIC INIT-SIPI-SIPI bring-up of every MADT processor; AP IDs match the MADT",
        run: smp::run,
    },
    Scenario {
        name: "ipi",
        summary: "a fixed IPI to every CPU by its 32-bit x2APIC ID, each acknowledged once",
        run: ipi::run,
    },
    Scenario {
        name: "ioapic-extdest",
        summary: "COM1's IOAPIC pin to the highest APIC ID (> 255) via the extended destination ID",
        run: ioapic_extdest::run,
    },
    Scenario {
        name: "ir-basic",
        summary: "edu MSI remapped (x2APIC IR) to an APIC ID > 255; moves only after an IEC invalidation",
        run: ir_basic::run,
    },
    Scenario {
        name: "ir-ioapic",
        summary: "COM1's IOAPIC pin in remappable format to an APIC ID > 255 through an IRTE",
        run: ir_ioapic::run,
    },
    Scenario {
        name: "ir-faults",
        summary: "blocked edu MSIs record faults 0x22/0x21/0x26/0x25/0x24 with a fault event; FPD suppresses",
        run: ir_faults::run,
    },
    Scenario {
        name: "ir-many",
        summary: "64 edu-msix vectors through 64 IRTEs to CPUs across the APIC ID range, each once",
        run: ir_many::run,
    },
    Scenario {
        name: "ir-bench",
        summary: "times IRTE rewrite + index-selective IEC + wait with probe.vectors=N live remapped vectors",
        run: ir_bench::run,
    },
    Scenario {
        name: "amd-ir-basic",
        summary: "edu MSI remapped by AMD-Vi (x2APIC, 128-bit IRTE) to an APIC ID > 255; moves only after INVALIDATE_INTERRUPT_TABLE",
        run: amd_basic::run,
    },
    Scenario {
        name: "amd-ir-ioapic",
        summary: "COM1's IOAPIC pin remapped by AMD-Vi through the IOAPIC's device ID (IVRS special entry) to an APIC ID > 255",
        run: amd_ioapic::run,
    },
    Scenario {
        name: "amd-ir-faults",
        summary: "blocked edu MSIs log AMD-Vi events (not valid, beyond table, reserved, IntCtl abort, bad DTE) with an event interrupt; SupIOPF/IG suppress; illegal command stops the buffer",
        run: amd_faults::run,
    },
    Scenario {
        name: "amd-ir-many",
        summary: "64 edu-msix vectors through 64 AMD-Vi IRTEs to CPUs across the APIC ID range, each once",
        run: amd_many::run,
    },
    Scenario {
        name: "amd-ga",
        summary: "AMD-Vi guest virtual APIC mode: guest-mode IRTEs post IRR bits; IsRun=0 logs GA tags that resolve to exactly their (VM, vCPU); fields never cached",
        run: amd_ga::run,
    },
    Scenario {
        name: "amd-bench",
        summary: "times AMD-Vi IRTE rewrite + INVALIDATE_INTERRUPT_TABLE + COMPLETION_WAIT with probe.vectors=N live, and remapped vs posted vs GA-log deliveries",
        run: amd_bench::run,
    },
    Scenario {
        name: "hostile",
        summary: "garbage into every emulated register window, then the ir-basic steps must still pass",
        run: hostile::run,
    },
    Scenario {
        name: "vfio-basic",
        summary: "passthrough test device: identity, BAR sizing, MSI-X placement, BAR0 page-0 register round trips, expansion ROM",
        run: vfio_basic::run,
    },
    Scenario {
        name: "vfio-msix-ir",
        summary: "64 passthrough MSI-X vectors remapped to CPUs across the APIC IDs, each once; one moved by IRTE + IEC",
        run: vfio_remap::run_ir,
    },
    Scenario {
        name: "vfio-msix-direct",
        summary: "as vfio-msix-ir with the device's own MSI-X table (msix=direct) programmed through the mapped BAR",
        run: vfio_remap::run_direct,
    },
    Scenario {
        name: "vfio-msix-extdest",
        summary: "64 passthrough MSI-X vectors without an IOMMU to APIC IDs > 255 via the extended destination ID",
        run: vfio_extdest::run,
    },
    Scenario {
        name: "vfio-mask",
        summary: "passthrough MSI-X entry and function masks: fires set the PBA bit, unmasking delivers once",
        run: vfio_mask::run,
    },
    Scenario {
        name: "vfio-dma",
        summary: "passthrough DMA guest -> device -> guest with patterns; unmapped guest addresses fail and copy nothing",
        run: vfio_dma::run,
    },
    Scenario {
        name: "vfio-dma-remap",
        summary: "passthrough DMA under VT-d DMA remapping: only guest-mapped IOVAs reach memory, with their permissions; TE off restores all of RAM",
        run: vfio_dma_remap::run,
    },
    Scenario {
        name: "dma-basic",
        summary: "edu DMA both ways through a 4-level VT-d table into remapped pages",
        run: dma_basic::run,
    },
    Scenario {
        name: "dma-faults",
        summary: "refused edu DMAs record faults 5/6/5/4/2 with a fault event and move nothing; FPD suppresses",
        run: dma_faults::run,
    },
    Scenario {
        name: "dma-inval",
        summary: "a remapped page reaches edu's DMA after its page-selective IOTLB invalidation (old or new before, never a third page)",
        run: dma_inval::run,
    },
    Scenario {
        name: "dma-superpage",
        summary: "edu DMA through 2 MiB and 1 GiB VT-d pages",
        run: dma_superpage::run,
    },
    Scenario {
        name: "dma-bench",
        summary: "edu DMA throughput: 4 KiB mappings, a 2 MiB mapping, translation off (probe.iters=K)",
        run: dma_bench::run,
    },
    Scenario {
        name: "vfio-intx",
        summary: "passthrough INTx through its IOAPIC pin (level): assert, handler deasserts and EOIs, 5 cycles",
        run: vfio_intx::run,
    },
    Scenario {
        name: "vfio-die",
        summary: "the vfio-user server dies mid-run: the device's BAR0 must read all ones, the VMM carries on",
        run: vfio_die::run,
    },
    Scenario {
        name: "vfio-bench-irq",
        summary: "times passthrough MSI-X delivery: doorbell-to-handler latency (probe.iters=K) and a timer stream (probe.period_us=P probe.count=C)",
        run: vfio_bench_irq::run,
    },
    Scenario {
        name: "vfio-bench-mmio",
        summary: "times probe.accesses=N reads and N writes of the passthrough device's SCRATCH register (BAR0 page 0)",
        run: vfio_bench_mmio::run,
    },
    Scenario {
        name: "vfio-amd-ga",
        summary: "a passthrough MSI-X vector through an AMD-Vi IRTE: remapped, guest mode (IRR, GA log with tag and device ID, GA interrupt; IsRun=1 unannounced: IRR only), back to remapped",
        run: vfio_amd_ga::run,
    },
    Scenario {
        name: "vtd-pi",
        summary: "VT-d posted-format IRTE: PIR/ON, notification NV at NDST (> 255), ON and SN suppress, URG overrides, back to remapped, PD beyond RAM faults 0x27",
        run: vtd_pi::run,
    },
    Scenario {
        name: "vtd-pi-bench",
        summary: "times probe.iters=K edu-msix round trips through a remapped and a posted IRTE (notification handler clears ON, harvests PIR)",
        run: vtd_pi_bench::run,
    },
    Scenario {
        name: "poweroff",
        summary: "ACPI S5 through the FADT (SLEEP_CONTROL_REG or PM1a_CNT with _S5_): the VMM must power off",
        run: poweroff::run,
    },
    Scenario {
        name: "reset",
        summary: "reset through the FADT RESET_REG (else port 0xcf9): the VMM must reset or exit",
        run: reset::run,
    },
    Scenario {
        name: "idle",
        summary: "every AP started, then all CPUs idle in hlt for probe.seconds=S (0: until the VMM stops it), with an optional probe.tick_us=T tick",
        run: idle::run,
    },
    Scenario {
        name: "pvpanic",
        summary: "a panic reported through the ISA pvpanic device the DSDT names QEMU0001 (CRASH_LOADED first, which must not stop the VM): the VMM must end the VM",
        run: pvpanic::run_isa,
    },
    Scenario {
        name: "pvpanic-pci",
        summary: "a panic reported through the PCI pvpanic function 1b36:0011 (BAR 0): the VMM must end the VM",
        run: pvpanic::run_pci,
    },
    Scenario {
        name: "serial-in",
        summary: "reads probe.bytes=N bytes from COM1 (polling LSR.DR) and passes with their FNV-1a hash: the VMM's serial input path",
        run: serial_in::run,
    },
    Scenario {
        name: "triple-fault",
        summary: "ud2 with an empty IDT: the VMM must report a triple fault",
        run: triple_fault::run,
    },
    Scenario {
        name: "virtio-blk",
        summary: "virtio-blk by PCI ID: read, write on every queue, flush, discard, write-zeroes, IOERR past the end, reset; interrupts on their CPUs",
        run: virtio_blk::run,
    },
    Scenario {
        name: "virtio-blk-bad",
        summary: "a hostile virtio-blk driver: bad queue size, config writes, stray notifies, short/outside-RAM/looping chains, runaway index; the VMM survives",
        run: virtio_blk_bad::run,
    },
    Scenario {
        name: "virtio-blk-bench",
        summary: "virtio-blk polled: probe.ops random 4 KiB reads and probe.seq_mib MiB of 64 KiB reads at probe.qd in flight",
        run: virtio_blk_bench::run,
    },
    Scenario {
        name: "virtio-blk-iommu",
        summary: "virtio-blk through VT-d DMA remapping with ACCESS_PLATFORM: rings and buffers at IOVAs, an unmapped buffer page fails the request (IOERR), an unmapped ring needs a reset; nothing outside the mapping changes",
        run: virtio_blk_iommu::run,
    },
    Scenario {
        name: "virtio-console",
        summary: "virtio console by PCI ID: a line out through hvc0, probe.hvc_input=WORD read back from the host",
        run: virtio_console::run,
    },
    Scenario {
        name: "virtio-console-in",
        summary: "reads probe.bytes=N bytes from the virtio console's receive queue (polled, small buffers) and passes with their FNV-1a hash: the VMM's virtio-console input path",
        run: virtio_console_in::run,
    },
    Scenario {
        name: "virtio-net",
        summary: "virtio-net by PCI ID: pings of 60-1514 bytes over probe.net_pairs pairs with the host peer, checksum and TCP segmentation offloads both ways; interrupts on their CPUs",
        run: virtio_net::run,
    },
    Scenario {
        name: "virtio-net-bad",
        summary: "a hostile virtio-net driver: bad queue size, config writes, stray notifies, readonly/outside-RAM receive buffers, short/outside-RAM/unnegotiated-offload/looping transmit chains, bad control commands, runaway index; the VMM survives",
        run: virtio_net_bad::run,
    },
    Scenario {
        name: "virtio-net-bench",
        summary: "virtio-net polled with the host peer: probe.frames 64-byte frames out at probe.qd in flight, then as many in; packets/s each way",
        run: virtio_net_bench::run,
    },
    Scenario {
        name: "virtio-rng",
        summary: "virtio-rng by PCI ID: two 64-byte requests, nonzero and different, one interrupt each on its CPU",
        run: virtio_rng::run,
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|s| s.name == name)
}
