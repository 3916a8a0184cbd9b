//! `probe=vfio-amd-ga`: one MSI-X vector of the passed-through test device through an
//! AMD-Vi IRTE that goes from remapped mode into guest virtual APIC mode and back: the
//! probe acts as a guest hypervisor that hands the device's vector to one of its vCPUs for
//! a while.
//!
//! Needs `--iommu amd` (GAMSup = vAPIC), the vfio-user test device and an AP above APIC ID
//! 255. The unit is enabled as `amd-ga` does it (GA log, GAMEn, the unit's interrupts
//! through the XT registers to the BSP with [`EVENT_VECTOR`]); the device's requester ID
//! gets a 512-entry interrupt table, and MSI-X vector [`MSIX_VECTOR`] names entry [`INDEX`]
//! of it. The guest-mode target is vCPU [`VCPU`] of VM [`VM_ID`] (tag from `amd_ga_tags`,
//! KVM's layout), with its own zeroed backing page and guest vector [`GUEST_VECTOR`],
//! running on the lowest AP. Both [`VECTOR`] and [`GUEST_VECTOR`] count into
//! [`DEVICE`], so any normal delivery of the vector shows there.
//!
//! 1. Remapped (fixed [`VECTOR`] to the highest AP, + INVALIDATE_INTERRUPT_TABLE +
//!    COMPLETION_WAIT): the doorbell delivers exactly once there (irvmm: through KVM).
//! 2. Guest mode, IsRun = 0, GALogIntr = 1 (written + invalidation): the doorbell sets
//!    exactly the guest vector's IRR bit in the backing page and appends exactly one GA log
//!    entry {the tag, the device's ID, GUEST_NR} with one GA log interrupt on the BSP; the
//!    tag resolves to the target; nothing is delivered to any CPU.
//! 3. IsRun = 1 through the low qword alone, without invalidation (guest-mode fields are
//!    never cached): IRR bit only, no GA log entry, no GA interrupt, nothing delivered.
//! 4. Back to remapped mode (+ invalidation): the doorbell delivers exactly once on the
//!    highest AP again; the page and the GA log stay untouched.
//!
//! MSI-X stays on at the end: irvmm's exit report shows the vector back in KVM.
//! Passes with `devid=0x.. vector=V irte=0x.. tag=0x.. guest_vector=0x41 remapped_to=A
//! posted=2 ga_log=1 back_to_remapped=ok`.

use super::amd_common;
use super::amd_ga_tags::{TagTable, VcpuRef};
use super::ir_common::{self, SETTLE_NS};
use super::smp;
use super::vfio_common::{self, DELIVERY_TIMEOUT_NS, VECTOR};
use super::Context;
use crate::amdvi::irte::{self, GuestTarget, Irte, LINUX_LEN_LOG2};
use crate::amdvi::log::{GaEntry, GA_GUEST_NR};
use crate::amdvi::regs::{STATUS_GALOG_OVERFLOW, STATUS_GA_INT};
use crate::amdvi::{mem, Options, UnitInterrupts};
use crate::ap::ApMode;
use crate::report::{Outcome, Text};
use crate::tally::{self, DEVICE, EVENT};
use crate::testdev::Testdev;
use crate::{irq, sprintln, text};

/// The guest vector the guest-mode entry posts (a normal delivery of it counts in
/// [`DEVICE`]).
const GUEST_VECTOR: u8 = irq::TEST_VECTOR_B;
/// The unit's interrupts (GA log, events).
const EVENT_VECTOR: u8 = irq::TEST_VECTOR_C;
/// The device's MSI-X vector under test.
const MSIX_VECTOR: u16 = 7;
/// Its entry in the device's interrupt table.
const INDEX: u32 = 0x60;
/// The guest hypervisor's VM and its size.
const VM_ID: u32 = 1;
const VM_VCPUS: u32 = 16;
/// The vCPU the vector is handed to.
const VCPU: u32 = 9;
/// Bytes (and alignment) of a vAPIC backing page.
const PAGE: u64 = 0x1000;
/// The IRR registers in a backing page: eight dwords at 0x200 + 0x10 * n.
const IRR_OFFSET: u64 = 0x200;
const IRR_STRIDE: u64 = 0x10;
const IRR_DWORDS: usize = 8;
/// Vectors per IRR dword.
const VECTORS_PER_DWORD: u8 = 32;
/// Most GA log entries read per check.
const MAX_ENTRIES: usize = 8;

/// The vCPU's vAPIC backing page, as far as the IRR goes.
#[derive(Clone, Copy, Debug)]
struct BackingPage(u64);

impl BackingPage {
    /// The eight IRR dwords (each the low half of its 16-byte register slot).
    fn irr(self) -> [u32; IRR_DWORDS] {
        let mut out = [0u32; IRR_DWORDS];
        for (n, o) in out.iter_mut().enumerate() {
            *o = mem::read64(self.0 + IRR_OFFSET + IRR_STRIDE * n as u64) as u32;
        }
        out
    }

    /// Clears the IRR (the guest hypervisor consumed it).
    fn clear_irr(self) {
        for n in 0..IRR_DWORDS as u64 {
            mem::write64(self.0 + IRR_OFFSET + IRR_STRIDE * n, 0);
        }
    }
}

/// The IRR image with only `vector` set.
fn irr_with(vector: u8) -> [u32; IRR_DWORDS] {
    let mut out = [0u32; IRR_DWORDS];
    out[usize::from(vector / VECTORS_PER_DWORD)] = 1 << (vector % VECTORS_PER_DWORD);
    out
}

/// What one doorbell produced.
struct Fired {
    irr: [u32; IRR_DWORDS],
    entries: [GaEntry; MAX_ENTRIES],
    n_entries: usize,
    ga_interrupts: u32,
    ga_on_bsp: u32,
    delivered: u32,
    delivered_at_remapped: u32,
}

/// The scenario's state.
struct Run {
    vi: crate::amdvi::AmdVi,
    dev: Testdev,
    clock: crate::clock::Clock,
    page: BackingPage,
    bsp: u32,
    remapped_to: u32,
}

impl Run {
    /// Rings the doorbell for [`MSIX_VECTOR`], waits until `arrived` holds (or the
    /// deadline), watches for strays, and takes the page's IRR and the GA log (status GAInt
    /// cleared, as Linux's handler does).
    fn fire(&mut self, mut arrived: impl FnMut(&Run) -> bool) -> Result<Fired, Text> {
        let (ev0, bsp0) = (EVENT.total(), EVENT.hits(self.bsp));
        let (dev0, at0) = (DEVICE.total(), DEVICE.hits(self.remapped_to));
        self.dev.ring(&self.clock, MSIX_VECTOR, 1)?;
        let clock = self.clock;
        ir_common::wait(&clock, DELIVERY_TIMEOUT_NS, || arrived(self));
        ir_common::settle(&clock, SETTLE_NS);
        self.vi.clear_status(STATUS_GA_INT | STATUS_GALOG_OVERFLOW);
        let mut fired = Fired {
            irr: self.page.irr(),
            entries: [GaEntry::default(); MAX_ENTRIES],
            n_entries: 0,
            ga_interrupts: EVENT.total() - ev0,
            ga_on_bsp: EVENT.hits(self.bsp) - bsp0,
            delivered: DEVICE.total() - dev0,
            delivered_at_remapped: DEVICE.hits(self.remapped_to) - at0,
        };
        fired.n_entries = self.vi.drain_ga_log(&mut fired.entries);
        sprintln!(
            "vfio-amd-ga: IRR dword {} = 0x{:08x}, GA log entries {}{}, GA interrupts {}, delivered {} ({} on APIC ID {})",
            GUEST_VECTOR / VECTORS_PER_DWORD,
            fired.irr[usize::from(GUEST_VECTOR / VECTORS_PER_DWORD)],
            fired.n_entries,
            if fired.n_entries > 0 {
                text!(
                    " [tag 0x{:08x} devid 0x{:04x} type {}]",
                    fired.entries[0].tag,
                    fired.entries[0].device_id,
                    fired.entries[0].kind
                )
            } else {
                text!("")
            },
            fired.ga_interrupts,
            fired.delivered,
            fired.delivered_at_remapped,
            self.remapped_to
        );
        Ok(fired)
    }

    /// A remapped-mode fire: exactly one interrupt, on the highest AP; the page and the GA
    /// log untouched.
    fn fire_remapped(&mut self, step: &str) -> Result<(), Text> {
        let (to, at0) = (self.remapped_to, DEVICE.hits(self.remapped_to));
        let f = self.fire(|_| DEVICE.hits(to) > at0)?;
        if f.delivered != 1 || f.delivered_at_remapped != 1 {
            return Err(text!(
                "{}: {} interrupts, {} on APIC ID {} (expected exactly one there); {}",
                step,
                f.delivered,
                f.delivered_at_remapped,
                self.remapped_to,
                ir_common::Takers(&DEVICE)
            ));
        }
        if f.irr != [0; IRR_DWORDS] || f.n_entries != 0 || f.ga_interrupts != 0 {
            return Err(text!(
                "{}: remapped, yet the page IRR is {:x?}, {} GA log entries, {} GA interrupts",
                step,
                f.irr,
                f.n_entries,
                f.ga_interrupts
            ));
        }
        Ok(())
    }

    /// A guest-mode fire: exactly the guest vector's IRR bit, nothing delivered; with
    /// `logged`, exactly one GA log entry `logged` = (tag, device ID) of type GUEST_NR and
    /// one GA interrupt on the BSP, else neither.
    fn fire_guest(&mut self, step: &str, logged: Option<(u32, u16)>) -> Result<Fired, Text> {
        let want = irr_with(GUEST_VECTOR);
        let ev0 = EVENT.total();
        let f = self.fire(|r| {
            r.page.irr() == want
                && (logged.is_none() || (EVENT.total() > ev0 && r.vi.ga_log().pending(r.vi.regs())))
        })?;
        self.page.clear_irr();
        if f.irr != want {
            return Err(text!(
                "{}: page IRR {:x?}, expected only vector 0x{:x}",
                step,
                f.irr,
                GUEST_VECTOR
            ));
        }
        if f.delivered != 0 {
            return Err(text!(
                "{}: {} interrupts delivered to CPUs for a guest-mode entry; {}",
                step,
                f.delivered,
                ir_common::Takers(&DEVICE)
            ));
        }
        let Some((tag, device_id)) = logged else {
            if f.n_entries != 0 || f.ga_interrupts != 0 {
                return Err(text!(
                    "{}: {} GA log entries, {} GA interrupts (none expected with IsRun = 1)",
                    step,
                    f.n_entries,
                    f.ga_interrupts
                ));
            }
            return Ok(f);
        };
        let e = f.entries[0];
        if f.n_entries != 1 || e.tag != tag || e.device_id != device_id || e.kind != GA_GUEST_NR {
            return Err(text!(
                "{}: {} GA log entries (first tag 0x{:08x} devid 0x{:04x} type {}), expected one with tag 0x{:08x} devid 0x{:04x} type {}",
                step,
                f.n_entries,
                e.tag,
                e.device_id,
                e.kind,
                tag,
                device_id,
                GA_GUEST_NR
            ));
        }
        if f.ga_interrupts != 1 || f.ga_on_bsp != 1 {
            return Err(text!(
                "{}: {} GA interrupts ({} on the BSP), expected 1 there",
                step,
                f.ga_interrupts,
                f.ga_on_bsp
            ));
        }
        Ok(f)
    }
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let platform = amd_common::discover(ctx)?;
    let dev = Testdev::find()?;
    let msix = vfio_common::msix(&dev, usize::from(MSIX_VECTOR) + 1)?;
    let device_id = platform.device_id(dev.function)?;
    let highest = ir_common::highest_ap(&smp)?;
    let lowest = smp
        .cpus
        .ids()
        .iter()
        .copied()
        .find(|&id| id != smp.bsp_id)
        .ok_or_else(|| text!("needs APs"))?;
    let clock = smp.clock;

    irq::set_handler(VECTOR, tally::on_device)?;
    irq::set_handler(GUEST_VECTOR, tally::on_device)?;
    irq::set_handler(EVENT_VECTOR, tally::on_event)?;
    let options = Options {
        interrupts: UnitInterrupts::Xt {
            vector: EVENT_VECTOR,
            dest: smp.bsp_id,
        },
        guest_apic: true,
    };
    let mut vi = amd_common::enable(&platform, clock, options)?;
    smp::bring_up(ctx, &smp, ApMode::Interrupts)?;
    let table = vi.attach(device_id, LINUX_LEN_LOG2)?;

    let mut tags = TagTable::new();
    let vm = tags.create(VM_ID, VM_VCPUS)?;
    let target = GuestTarget {
        vector: GUEST_VECTOR,
        destination: lowest,
        ga_tag: tags.tag(&vm, VCPU)?,
        backing_page: mem::alloc(PAGE, PAGE)?,
    };
    let who = VcpuRef {
        vm_id: VM_ID,
        vcpu: VCPU,
    };

    // Linux's order: the entry first, then the message naming it.
    table.set(INDEX, Irte::remapped(VECTOR, highest))?;
    vi.invalidate_table(device_id)?;
    msix.enable_masked();
    msix.set_entry(MSIX_VECTOR, irte::MSI_ADDRESS, irte::msi_data(INDEX), false)?;
    msix.unmask_function();
    sprintln!(
        "vfio-amd-ga: {} devid 0x{:04x}: MSI-X vector {} -> IRTE 0x{:x}; remapped to APIC ID {} vector 0x{:x}, guest mode VM {} vCPU {} tag 0x{:08x} vector 0x{:x} page 0x{:x} on APIC ID {}",
        dev.function,
        device_id,
        MSIX_VECTOR,
        INDEX,
        highest,
        VECTOR,
        VM_ID,
        VCPU,
        target.ga_tag,
        GUEST_VECTOR,
        target.backing_page,
        lowest
    );
    let mut run = Run {
        vi,
        dev,
        clock,
        page: BackingPage(target.backing_page),
        bsp: smp.bsp_id,
        remapped_to: highest,
    };

    // 1. Remapped.
    sprintln!("vfio-amd-ga: 1. remapped");
    run.fire_remapped("remapped")?;

    // 2. Guest mode, not running, announced.
    sprintln!("vfio-amd-ga: 2. guest mode, IsRun=0, GALogIntr=1");
    let guest = Irte::guest(target, false, true);
    table.set(INDEX, guest)?;
    run.vi.invalidate_table(device_id)?;
    let f = run.fire_guest("guest mode IsRun=0", Some((target.ga_tag, device_id)))?;
    let found = tags.lookup(f.entries[0].tag);
    if found != Some(who) {
        return Err(text!(
            "GA log tag 0x{:08x} resolved to {:?}, expected VM {} vCPU {}",
            f.entries[0].tag,
            found,
            VM_ID,
            VCPU
        ));
    }

    // 3. The vCPU is scheduled on its CPU: IsRun = 1 in the low qword, not announced.
    sprintln!("vfio-amd-ga: 3. IsRun=1 without invalidation");
    table.set_low(INDEX, guest.scheduled(true, lowest))?;
    run.fire_guest("guest mode IsRun=1", None)?;

    // 4. Back to remapped mode.
    sprintln!("vfio-amd-ga: 4. back to remapped");
    table.set(INDEX, Irte::remapped(VECTOR, highest))?;
    run.vi.invalidate_table(device_id)?;
    run.fire_remapped("back to remapped")?;

    // MSI-X stays on: irvmm's exit report counts the vector back in KVM.
    irq::stop_tick();
    Ok(text!(
        "devid=0x{:04x} vector={} irte=0x{:x} tag=0x{:08x} guest_vector=0x{:x} remapped_to={} posted=2 ga_log=1 back_to_remapped=ok",
        device_id,
        MSIX_VECTOR,
        INDEX,
        target.ga_tag,
        GUEST_VECTOR,
        highest
    ))
}
