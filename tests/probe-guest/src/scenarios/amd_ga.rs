//! `probe=amd-ga`: AMD-Vi guest virtual APIC (GA) mode, with the probe acting as a small
//! guest hypervisor that posts device interrupts straight into its vCPUs' vAPIC backing
//! pages.
//!
//! Needs irvmm's edu-msix (1234:11e9), an AP above APIC ID 255 and a unit offering GAMSup
//! = vAPIC (QEMU has none). The unit is enabled as Linux does with the GA log (512 entries,
//! the tail mirrored to memory) and GAMEn; its event and GA log interrupts go to the BSP
//! with [`EVENT_VECTOR`] through the XT registers. Three VMs are created in the tag table
//! (`amd_ga_tags`): VM A (ID 1, 400 vCPUs, KVM's layout), VM B (the next ID in A's hash
//! bucket, 8 vCPUs) and VM W (the next ID after that in the same bucket, 700 vCPUs, so the
//! wide layout), inserted W, B, A, so A's lookups must pass over the others. Four targets,
//! each a vCPU with its own zeroed 4 KiB backing page and guest vector, served by edu-msix
//! vector j through IRTE [`BASE`] + j of the device's table:
//!
//! | j | vCPU | guest vector | runs on (Destination) |
//! |---|---|---|---|
//! | 0 | A/5 | 0x31 | highest AP |
//! | 1 | B/5 (A/5's bucket neighbour) | 0x62 | lowest AP |
//! | 2 | W/600 (index > 511) | 0x93 | a middle AP |
//! | 3 | A/300 | 0xe4 | the BSP |
//!
//! 1. Guest mode, IsRun = 1, GALogIntr = 1 (written, INVALIDATE_INTERRUPT_TABLE): firing
//!    vector j sets exactly the IRR bit of its vector in its page; no GA log entry, no GA
//!    interrupt, nothing delivered to any CPU (the doorbell has no effect, irvmm counts it).
//! 2. IsRun = 0 through an entry update + INVALIDATE_INTERRUPT_TABLE: firing j sets the IRR
//!    bit and appends one GA log entry {tag, edu-msix's device ID, GUEST_NR} with one GA
//!    log interrupt on the BSP; the handler (status GAInt cleared, log read head to tail,
//!    head moved on) resolves the tag with the full-key lookup to exactly that (VM, vCPU).
//!    irvmm's GA log tail mirror must match the tail register.
//! 3. Without invalidation (guest-mode fields are never cached): target 0 back to IsRun =
//!    1 (IRR only, no entry); target 1 re-tagged to B/6 (the entry carries the new tag).
//!    With invalidation: target 3 with GALogIntr = 0 (IRR only, no entry).
//! 4. Target 2 leaves guest mode: a remapped entry (fixed [`VECTOR`] to the highest AP) +
//!    INVALIDATE_INTERRUPT_TABLE; firing it delivers normally, once, there; its page stays
//!    untouched and no GA log entry appears.
//!
//! Passes with `targets=4 bucket=B vms=A,B,W posted=N ga_log=M lookups=exact
//! uncached=isrun,tag left_guest_mode=ok`.

use super::amd_common;
use super::amd_ga_tags::{self, TagTable, VcpuRef, Vm};
use super::ir_common::{self, DELIVERY_TIMEOUT_NS, NS_PER_MS, SETTLE_NS};
use super::smp;
use super::Context;
use crate::amdvi::irte::{self, GuestTarget, IntTable, Irte, LINUX_LEN_LOG2};
use crate::amdvi::log::{GaEntry, GA_GUEST_NR};
use crate::amdvi::regs::{GA_TAIL, STATUS_GALOG_OVERFLOW, STATUS_GA_INT};
use crate::amdvi::{mem, AmdVi, Options, UnitInterrupts};
use crate::ap::ApMode;
use crate::clock::Clock;
use crate::edu::{self, Edu};
use crate::msi::MsiX;
use crate::report::{Outcome, Text};
use crate::tally::{self, DEVICE, EVENT};
use crate::{irq, sprintln, text, x86};

/// The vector of a target that left guest mode.
const VECTOR: u8 = irq::TEST_VECTOR_A;
/// The unit's interrupts (GA log, events).
const EVENT_VECTOR: u8 = irq::TEST_VECTOR_C;
/// First IRTE.
const BASE: u32 = 0x50;
/// Targets.
const TARGETS: usize = 4;
/// Guest vectors, one IRR dword each.
const GUEST_VECTORS: [u8; TARGETS] = [0x31, 0x62, 0x93, 0xe4];
/// VM sizes.
const VM_A_VCPUS: u32 = 400;
const VM_B_VCPUS: u32 = 8;
const VM_W_VCPUS: u32 = 700;
/// VM A's ID (KVM's first).
const VM_A_ID: u32 = 1;
/// The vCPUs the targets are.
const TARGET_VCPUS: [u32; TARGETS] = [5, 5, 600, 300];
/// The vCPU target 1 is re-tagged to.
const RETAG_VCPU: u32 = 6;
/// Bytes of a backing page.
const PAGE: u64 = 0x1000;
/// The IRR registers in a backing page: eight dwords at 0x200 + 0x10 * n.
const IRR_OFFSET: u64 = 0x200;
const IRR_STRIDE: u64 = 0x10;
const IRR_DWORDS: usize = 8;
/// Vectors per IRR dword.
const VECTORS_PER_DWORD: u8 = 32;
/// How long a post gets to show in the page.
const POST_TIMEOUT_NS: u64 = 1_000_000_000;
/// Most GA log entries read per check.
const MAX_ENTRIES: usize = 8;

/// One target vCPU.
#[derive(Clone, Copy, Debug)]
struct Target {
    who: VcpuRef,
    guest: GuestTarget,
}

/// The eight IRR dwords of a backing page.
fn irr(page: u64) -> [u32; IRR_DWORDS] {
    let mut out = [0u32; IRR_DWORDS];
    for (n, o) in out.iter_mut().enumerate() {
        // The IRR dword is the low half of its 16-byte aligned register slot.
        *o = mem::read64(page + IRR_OFFSET + IRR_STRIDE * n as u64) as u32;
    }
    out
}

/// The IRR image with only `vector` set.
fn irr_with(vector: u8) -> [u32; IRR_DWORDS] {
    let mut out = [0u32; IRR_DWORDS];
    out[usize::from(vector / VECTORS_PER_DWORD)] = 1 << (vector % VECTORS_PER_DWORD);
    out
}

/// Clears every IRR dword of `page` (the guest hypervisor consumed them).
fn clear_irr(page: u64) {
    for n in 0..IRR_DWORDS as u64 {
        mem::write64(page + IRR_OFFSET + IRR_STRIDE * n, 0);
    }
}

/// The scenario's state.
struct Host {
    vi: AmdVi,
    edu: Edu,
    table: IntTable,
    tags: TagTable,
    targets: [Target; TARGETS],
    device_id: u16,
    clock: Clock,
    bsp: u32,
    posted: u32,
    logged: u32,
}

/// What one fire produced.
struct Fired {
    pages: [[u32; IRR_DWORDS]; TARGETS],
    entries: [GaEntry; MAX_ENTRIES],
    n_entries: usize,
    interrupts: u32,
    delivered: u32,
    status: u32,
}

impl Host {
    /// Fires edu-msix vector `j`, waits for its page's IRR bit (`expect_irr`) and, when
    /// `expect_log`, a GA interrupt and entry; then settles and takes what the GA log holds
    /// (status GAInt cleared first, as Linux's handler does).
    fn fire(&mut self, j: usize, expect_irr: bool, expect_log: bool) -> Fired {
        let (ev0, dev0) = (EVENT.total(), DEVICE.total());
        let page = self.targets[j].guest.backing_page;
        let want = irr_with(self.targets[j].guest.vector);
        self.edu.trigger_msix(j as u16);
        let deadline = self.clock.now_ns() + POST_TIMEOUT_NS;
        while expect_irr && irr(page) != want && self.clock.now_ns() < deadline {
            x86::pause();
        }
        if expect_log {
            ir_common::wait(&self.clock, POST_TIMEOUT_NS, || {
                EVENT.total() > ev0 && self.vi.ga_log().pending(self.vi.regs())
            });
        }
        ir_common::settle(&self.clock, SETTLE_NS);
        let status = self.vi.status();
        self.vi.clear_status(STATUS_GA_INT | STATUS_GALOG_OVERFLOW);
        let mut fired = Fired {
            pages: [[0; IRR_DWORDS]; TARGETS],
            entries: [GaEntry::default(); MAX_ENTRIES],
            n_entries: 0,
            interrupts: EVENT.total() - ev0,
            delivered: DEVICE.total() - dev0,
            status,
        };
        fired.n_entries = self.vi.drain_ga_log(&mut fired.entries);
        for (p, t) in fired.pages.iter_mut().zip(&self.targets) {
            *p = irr(t.guest.backing_page);
        }
        if fired.pages[j] == want {
            self.posted += 1;
        }
        self.logged += fired.n_entries as u32;
        fired
    }

    /// Checks that firing `j` posted exactly its IRR bit and touched no other page (then
    /// clears the bit), and, with `tag`, logged exactly one entry with it that resolves to
    /// the target; without, that nothing was logged or signalled.
    fn check(&mut self, step: &str, j: usize, fired: &Fired, tag: Option<u32>) -> Result<(), Text> {
        let t = self.targets[j];
        let want = irr_with(t.guest.vector);
        let shown = tag.unwrap_or(t.guest.ga_tag);
        let who = self.resolve_expected(j, shown);
        sprintln!(
            "amd-ga: {} target {} ({}/{} tag 0x{:08x}): IRR dword {} = 0x{:08x}, GA log entries {}{}, GA interrupts {}, delivered {}, status 0x{:x}",
            step,
            j,
            who.vm_id,
            who.vcpu,
            shown,
            t.guest.vector / VECTORS_PER_DWORD,
            fired.pages[j][usize::from(t.guest.vector / VECTORS_PER_DWORD)],
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
            fired.interrupts,
            fired.delivered,
            fired.status
        );
        if fired.pages[j] != want {
            return Err(text!(
                "{}: target {} page IRR {:x?}, expected only vector 0x{:x}",
                step,
                j,
                fired.pages[j],
                t.guest.vector
            ));
        }
        for (k, p) in fired.pages.iter().enumerate() {
            if k != j && p.iter().any(|&d| d != 0) {
                return Err(text!(
                    "{}: firing target {} touched target {}'s page (IRR {:x?})",
                    step,
                    j,
                    k,
                    p
                ));
            }
        }
        clear_irr(t.guest.backing_page);
        if fired.delivered != 0 {
            return Err(text!(
                "{}: target {}: {} interrupts delivered to CPUs for a guest-mode entry",
                step,
                j,
                fired.delivered
            ));
        }
        let Some(tag) = tag else {
            if fired.n_entries != 0 || fired.interrupts != 0 {
                return Err(text!(
                    "{}: target {}: {} GA log entries, {} GA interrupts (none expected)",
                    step,
                    j,
                    fired.n_entries,
                    fired.interrupts
                ));
            }
            return Ok(());
        };
        let e = fired.entries[0];
        if fired.n_entries != 1
            || e.tag != tag
            || e.device_id != self.device_id
            || e.kind != GA_GUEST_NR
        {
            return Err(text!(
                "{}: target {}: {} GA log entries (first tag 0x{:08x} devid 0x{:04x} type {}), expected one with tag 0x{:08x} devid 0x{:04x} type {}",
                step,
                j,
                fired.n_entries,
                e.tag,
                e.device_id,
                e.kind,
                tag,
                self.device_id,
                GA_GUEST_NR
            ));
        }
        if fired.interrupts != 1 || EVENT.hits(self.bsp) != EVENT.total() {
            return Err(text!(
                "{}: target {}: {} GA interrupts ({} of {} on the BSP), expected 1",
                step,
                j,
                fired.interrupts,
                EVENT.hits(self.bsp),
                EVENT.total()
            ));
        }
        let found = self.tags.lookup(e.tag);
        let expected = self.resolve_expected(j, tag);
        if found != Some(expected) {
            return Err(text!(
                "{}: tag 0x{:08x} resolved to {:?}, expected VM {} vCPU {}",
                step,
                e.tag,
                found,
                expected.vm_id,
                expected.vcpu
            ));
        }
        Ok(())
    }

    /// The (VM, vCPU) a tag written for target `j` names: the target itself, or the vCPU
    /// it was re-tagged to.
    fn resolve_expected(&self, j: usize, tag: u32) -> VcpuRef {
        let t = self.targets[j];
        if tag == t.guest.ga_tag {
            t.who
        } else {
            VcpuRef {
                vm_id: t.who.vm_id,
                vcpu: RETAG_VCPU,
            }
        }
    }
}

/// Creates the three VMs (W, B, A into one bucket) and returns them in order A, B, W.
fn create_vms(tags: &mut TagTable) -> Result<[Vm; 3], Text> {
    let b_id = amd_ga_tags::next_in_bucket(VM_A_ID, VM_A_ID, amd_ga_tags::layout_for(VM_B_VCPUS))
        .ok_or_else(|| text!("no VM ID shares VM {}'s bucket", VM_A_ID))?;
    let w_id = amd_ga_tags::next_in_bucket(VM_A_ID, b_id, amd_ga_tags::layout_for(VM_W_VCPUS))
        .ok_or_else(|| text!("no wide VM ID shares VM {}'s bucket", VM_A_ID))?;
    let w = tags.create(w_id, VM_W_VCPUS)?;
    let b = tags.create(b_id, VM_B_VCPUS)?;
    let a = tags.create(VM_A_ID, VM_A_VCPUS)?;
    Ok([a, b, w])
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let platform = amd_common::discover(ctx)?;
    let edu = Edu::find(edu::EDU_MSIX_DEVICE_ID)?;
    let msix = MsiX::find(edu.function)?;
    let device_id = platform.device_id(edu.function)?;
    let highest = ir_common::highest_ap(&smp)?;
    let ids = smp.cpus.ids();
    let aps: [u32; 2] = {
        let mut it = ids.iter().copied().filter(|&id| id != smp.bsp_id);
        let lowest = it.next().ok_or_else(|| text!("needs APs"))?;
        [lowest, ids[ids.len() / 2]]
    };
    let clock = smp.clock;

    irq::set_handler(VECTOR, tally::on_device)?;
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
    let [a, b, w] = create_vms(&mut tags)?;
    let vms = [a, b, w, a];
    let destinations = [highest, aps[0], aps[1], smp.bsp_id];
    let mut targets = [Target {
        who: VcpuRef { vm_id: 0, vcpu: 0 },
        guest: GuestTarget {
            vector: 0,
            destination: 0,
            ga_tag: 0,
            backing_page: 0,
        },
    }; TARGETS];
    for (j, t) in targets.iter_mut().enumerate() {
        let vm = vms[j];
        *t = Target {
            who: VcpuRef {
                vm_id: vm.id,
                vcpu: TARGET_VCPUS[j],
            },
            guest: GuestTarget {
                vector: GUEST_VECTORS[j],
                destination: destinations[j],
                ga_tag: tags.tag(&vm, TARGET_VCPUS[j])?,
                backing_page: mem::alloc(PAGE, PAGE)?,
            },
        };
    }
    let bucket = amd_ga_tags::bucket(VM_A_ID);
    sprintln!(
        "amd-ga: VMs {} ({} vCPUs), {} ({}), {} ({}, wide tags) share bucket 0x{:02x} ({} VMs there); tags 0x{:08x} 0x{:08x} 0x{:08x} 0x{:08x}",
        a.id,
        a.vcpus,
        b.id,
        b.vcpus,
        w.id,
        w.vcpus,
        bucket,
        tags.bucket_population(VM_A_ID),
        targets[0].guest.ga_tag,
        targets[1].guest.ga_tag,
        targets[2].guest.ga_tag,
        targets[3].guest.ga_tag
    );
    sprintln!(
        "amd-ga: a lookup stopping at the bucket would resolve all of them to VM {}; the full-key compare must not",
        tags.bucket_head(VM_A_ID).unwrap_or(0)
    );

    // edu-msix vector j names IRTE BASE + j.
    msix.enable_masked();
    for j in 0..TARGETS {
        msix.set_entry(
            j as u16,
            irte::MSI_ADDRESS,
            irte::msi_data(BASE + j as u32),
            false,
        )?;
    }
    msix.unmask_function();
    let mut host = Host {
        vi,
        edu,
        table,
        tags,
        targets,
        device_id,
        clock,
        bsp: smp.bsp_id,
        posted: 0,
        logged: 0,
    };

    // 1. Running: IRR only.
    for (j, t) in targets.iter().enumerate() {
        host.table
            .set(BASE + j as u32, Irte::guest(t.guest, true, true))?;
    }
    host.vi.invalidate_table(device_id)?;
    for j in 0..TARGETS {
        let f = host.fire(j, true, false);
        host.check("running", j, &f, None)?;
    }

    // 2. Not running, announced: IRR, GA log entry, GA interrupt, exact lookup.
    for (j, t) in targets.iter().enumerate() {
        host.table
            .set(BASE + j as u32, Irte::guest(t.guest, false, true))?;
    }
    host.vi.invalidate_table(device_id)?;
    for (j, t) in targets.iter().enumerate() {
        let f = host.fire(j, true, true);
        host.check("not running", j, &f, Some(t.guest.ga_tag))?;
    }
    let mirrored = ga_tail_mirror(&host);
    if platform.vmm == ir_common::Vmm::Irvmm && mirrored.0 != mirrored.1 {
        return Err(text!(
            "GA log tail mirror 0x{:x}, tail register 0x{:x}",
            mirrored.0,
            mirrored.1
        ));
    }

    // 3. Not announced: guest-mode fields are read at every interrupt.
    let t0 = Irte::guest(targets[0].guest, false, true).scheduled(true, destinations[0]);
    host.table.set_low(BASE, t0)?;
    let f = host.fire(0, true, false);
    host.check("IsRun=1 unannounced", 0, &f, None)?;
    let b6 = host.tags.tag(&b, RETAG_VCPU)?;
    let t1 = Irte::guest(targets[1].guest, false, true).retagged(b6);
    host.table.set_low(BASE + 1, t1)?;
    let f = host.fire(1, true, true);
    host.check("re-tagged unannounced", 1, &f, Some(b6))?;
    host.table
        .set(BASE + 3, Irte::guest(targets[3].guest, false, false))?;
    host.vi.invalidate_table(device_id)?;
    let f = host.fire(3, true, false);
    host.check("GALogIntr=0", 3, &f, None)?;

    // 4. Target 2 leaves guest mode.
    host.table.set(BASE + 2, Irte::remapped(VECTOR, highest))?;
    host.vi.invalidate_table(device_id)?;
    let (ev0, dev0) = (EVENT.total(), DEVICE.total());
    host.edu.trigger_msix(2);
    let arrived = ir_common::wait(&clock, DELIVERY_TIMEOUT_NS, || DEVICE.total() > dev0);
    ir_common::settle(&clock, SETTLE_NS);
    irq::stop_tick();
    let page2 = irr(targets[2].guest.backing_page);
    let entries = host.vi.drain_ga_log(&mut [GaEntry::default(); MAX_ENTRIES]);
    sprintln!(
        "amd-ga: left guest mode: target 2 -> APIC ID {} vector 0x{:x}: {} delivered there ({} in all, within {} ms: {}), page IRR untouched: {}, GA log entries {}",
        highest,
        VECTOR,
        DEVICE.hits(highest),
        DEVICE.total() - dev0,
        DELIVERY_TIMEOUT_NS / NS_PER_MS,
        arrived,
        page2 == [0; IRR_DWORDS],
        entries
    );
    if DEVICE.hits(highest) != 1 || DEVICE.total() - dev0 != 1 {
        return Err(text!(
            "target 2 left guest mode: {} interrupts on APIC ID {}, {} in all (expected exactly 1 there); {}",
            DEVICE.hits(highest),
            highest,
            DEVICE.total() - dev0,
            ir_common::Takers(&DEVICE)
        ));
    }
    if page2 != [0; IRR_DWORDS] || entries != 0 || EVENT.total() != ev0 {
        return Err(text!(
            "target 2 left guest mode, yet its page IRR is {:x?}, {} GA log entries, {} GA interrupts",
            page2,
            entries,
            EVENT.total() - ev0
        ));
    }
    msix.mask_function();
    Ok(text!(
        "targets={} bucket=0x{:02x} vms={},{},{} posted={} ga_log={} lookups=exact wide_vcpu={} uncached=isrun,tag left_guest_mode=ok",
        TARGETS,
        bucket,
        a.id,
        b.id,
        w.id,
        host.posted,
        host.logged,
        TARGET_VCPUS[2]
    ))
}

/// The GA log tail as the unit mirrored it, and the tail register.
fn ga_tail_mirror(host: &Host) -> (u64, u64) {
    (
        crate::amdvi::log::GaLog::mirrored_tail(),
        u64::from(host.vi.regs().read32(GA_TAIL)),
    )
}
