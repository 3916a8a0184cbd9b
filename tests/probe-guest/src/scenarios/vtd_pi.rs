//! `probe=vtd-pi`: VT-d posted-format IRTEs (CAP.PI) as a guest hypervisor uses them, with
//! one MSI-X vector of irvmm's edu-msix device (1234:11e9, `--device edu-msix`).
//!
//! The probe plays the guest hypervisor: a 64-byte posted-interrupt descriptor (PD) in its
//! memory names notification vector [`NV`] and destination NDST = the highest AP (its APIC
//! ID above 255); IRTE [`INDEX`] is in posted format, posting vector [`PV`] into the PD
//! (SVT = 1 with the device's requester ID). Notifications are counted by APIC ID in
//! [`tally::EVENT`] (they are the unit's own interrupts); [`PV`] itself must never reach a
//! CPU (its handler counts strays) and [`RV`], the vector of the remapped entry at the
//! end, is counted in [`tally::DEVICE`]. Steps, each raising MSI-X vector 0 (register 0x68):
//!
//! 1. PD empty: PIR bit PV and ON get set and NV arrives on NDST, exactly once.
//! 2. ON still set (the PIR harvested): the PIR bit is set again, no second notification.
//! 3. ON cleared, SN set (PIR harvested): the PIR bit is set, ON stays clear, no
//!    notification.
//! 4. The entry rewritten with URG (+ IEC invalidation), SN still set: notification.
//! 5. The entry rewritten to remapped format (RV to NDST) + invalidation, PD cleared: RV is
//!    delivered on NDST normally, the PD stays untouched.
//! 6. A posted entry ([`BAD_INDEX`], MSI-X vector 1) whose PD lies beyond RAM: nothing is
//!    delivered; the unit records fault 0x27 with that index and the device's SID.
//!
//! Passes with `ndst=A nv=0x41 vector=0x42 index=0x300 notifications=2 pda_fault=0x27`.
//! Needs a unit with CAP.PI: QEMU's intel-iommu has none (nor an edu-msix device).

use core::sync::atomic::{AtomicU32, Ordering};

use super::ir_common::{self, DELIVERY_TIMEOUT_NS, NS_PER_MS, SETTLE_NS};
use super::smp;
use super::Context;
use crate::ap::ApMode;
use crate::clock::Clock;
use crate::edu::{self, Edu};
use crate::msi::MsiX;
use crate::report::{Outcome, Text};
use crate::tally::{self, DEVICE, EVENT};
use crate::vtd::fault::FaultRecord;
use crate::vtd::posted::{posted_irte, Descriptor, CAP_PI, PD_ON, PD_SN};
use crate::vtd::{irte, Irte, Vtd, TABLE_LOG2_LINUX};
use crate::{irq, sprintln, text};

/// The notification vector.
pub const NV: u8 = irq::TEST_VECTOR_B;
/// The posted (virtual) vector: a PIR bit, never delivered to a CPU.
pub const PV: u8 = irq::TEST_VECTOR_C;
/// The vector of the remapped-format entry of step 5.
const RV: u8 = irq::TEST_VECTOR_A;
/// The entry MSI-X vector 0 names.
const INDEX: u16 = 0x300;
/// The entry MSI-X vector 1 names (descriptor beyond RAM).
const BAD_INDEX: u16 = 0x301;
/// A descriptor address beyond any RAM the probe runs with (512 GiB).
const BAD_PDA: u64 = 0x80_0000_0000;
/// VT-d fault reason: posted-interrupt descriptor access failed.
const FR_PD_ACCESS: u8 = 0x27;
/// Fault records inspected.
const MAX_RECORDS: usize = 8;

/// The descriptor the entries post into.
static PD: Descriptor = Descriptor::new();
/// Interrupts of [`PV`] that reached a CPU (must stay 0).
static STRAYS: AtomicU32 = AtomicU32::new(0);

fn on_stray() {
    STRAYS.fetch_add(1, Ordering::SeqCst);
}

/// Raises MSI-X vector `vector` and waits (bounded) for `done`.
fn raise(edu: &Edu, clock: &Clock, vector: u16, done: impl FnMut() -> bool) -> bool {
    edu.trigger_msix(vector);
    ir_common::wait(clock, DELIVERY_TIMEOUT_NS, done)
}

/// Checks that `n` notifications arrived, all on `ndst`, and no stray posted vector.
fn expect_notifications(ndst: u32, n: u32, step: &str) -> Result<(), Text> {
    ir_common::expect_only(&EVENT, ndst, n, step)?;
    match STRAYS.load(Ordering::SeqCst) {
        0 => Ok(()),
        s => Err(text!(
            "{}: the posted vector 0x{:x} reached a CPU {} times",
            step,
            PV,
            s
        )),
    }
}

/// Writes entry `index` and invalidates it.
fn set_entry(vtd: &mut Vtd, index: u16, entry: Irte) -> Result<(), Text> {
    vtd.set_irte(u32::from(index), entry)?;
    vtd.invalidate_entries(u32::from(index), 0)
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let platform = ir_common::discover(ctx)?;
    let edu = Edu::find(edu::EDU_MSIX_DEVICE_ID)?;
    let msix = MsiX::find(edu.function)?;
    let ndst = ir_common::highest_ap(&smp)?;
    let sid = edu.function.sid();
    let clock = smp.clock;
    irq::set_handler(NV, tally::on_event)?;
    irq::set_handler(PV, on_stray)?;
    irq::set_handler(RV, tally::on_device)?;

    let mut vtd = ir_common::enable(&platform.pci_unit(edu.function)?, clock, TABLE_LOG2_LINUX)?;
    if vtd.cap() & CAP_PI == 0 {
        return Err(text!(
            "the VT-d unit does not report CAP.PI (CAP 0x{:x}): no posted interrupts",
            vtd.cap()
        ));
    }
    smp::bring_up(ctx, &smp, ApMode::Interrupts)?;
    PD.reset(NV, ndst);
    let pda = PD.address();
    set_entry(&mut vtd, INDEX, posted_irte(PV, pda, false, Some(sid)))?;
    set_entry(
        &mut vtd,
        BAD_INDEX,
        posted_irte(PV, BAD_PDA, false, Some(sid)),
    )?;
    msix.enable_masked();
    msix.set_entry(0, irte::remappable_msi_address(INDEX, false), 0, false)?;
    msix.set_entry(1, irte::remappable_msi_address(BAD_INDEX, false), 0, false)?;
    msix.unmask_function();
    sprintln!(
        "vtd-pi: edu-msix {} sid=0x{:04x}: IRTE 0x{:x} posts vector 0x{:x} into PD 0x{:x} (NV 0x{:x} -> APIC ID {})",
        edu.function,
        sid,
        INDEX,
        PV,
        pda,
        NV,
        ndst
    );

    // 1. Posted and notified.
    if !raise(&edu, &clock, 0, || EVENT.total() >= 1) {
        return Err(text!(
            "step 1: no notification within {} ms (PIR 0x{:x} set: {}, ON: {}, FSTS 0x{:x}); {}",
            DELIVERY_TIMEOUT_NS / NS_PER_MS,
            PV,
            PD.pending(PV),
            PD.on(),
            vtd.fsts(),
            ir_common::Takers(&EVENT)
        ));
    }
    ir_common::settle(&clock, SETTLE_NS);
    if !PD.pending(PV) || !PD.on() {
        return Err(text!(
            "step 1: notified but PIR bit set: {}, ON: {}",
            PD.pending(PV),
            PD.on()
        ));
    }
    expect_notifications(ndst, 1, "step 1 (first post)")?;

    // 2. ON outstanding: posted, not notified.
    PD.harvest_all();
    if !raise(&edu, &clock, 0, || PD.pending(PV)) {
        return Err(text!("step 2: the PIR bit was not set with ON outstanding"));
    }
    ir_common::settle(&clock, SETTLE_NS);
    expect_notifications(ndst, 1, "step 2 (ON still set)")?;

    // 3. ON cleared, SN set: posted, suppressed, ON stays clear.
    PD.update_control(PD_ON, PD_SN);
    PD.harvest_all();
    if !raise(&edu, &clock, 0, || PD.pending(PV)) {
        return Err(text!("step 3: the PIR bit was not set with SN"));
    }
    ir_common::settle(&clock, SETTLE_NS);
    if PD.on() {
        return Err(text!(
            "step 3: ON set although SN suppressed the notification"
        ));
    }
    expect_notifications(ndst, 1, "step 3 (SN)")?;

    // 4. URG overrides SN.
    set_entry(&mut vtd, INDEX, posted_irte(PV, pda, true, Some(sid)))?;
    PD.harvest_all();
    if !raise(&edu, &clock, 0, || EVENT.total() >= 2) {
        return Err(text!(
            "step 4: no notification for the urgent entry with SN set within {} ms",
            DELIVERY_TIMEOUT_NS / NS_PER_MS
        ));
    }
    ir_common::settle(&clock, SETTLE_NS);
    if !PD.pending(PV) || !PD.on() || !PD.sn() {
        return Err(text!(
            "step 4: PIR bit {}, ON {}, SN {} (all expected set)",
            PD.pending(PV),
            PD.on(),
            PD.sn()
        ));
    }
    expect_notifications(ndst, 2, "step 4 (URG)")?;

    // 5. Back to remapped format: delivered normally, the PD no longer used.
    PD.reset(NV, ndst);
    set_entry(&mut vtd, INDEX, Irte::remapped(RV, ndst).verify_sid(sid))?;
    if !raise(&edu, &clock, 0, || DEVICE.total() >= 1) {
        return Err(text!(
            "step 5: the remapped vector 0x{:x} did not arrive within {} ms",
            RV,
            DELIVERY_TIMEOUT_NS / NS_PER_MS
        ));
    }
    ir_common::settle(&clock, SETTLE_NS);
    ir_common::expect_only(&DEVICE, ndst, 1, "step 5 (remapped again)")?;
    if !PD.pir_empty() || PD.on() {
        return Err(text!(
            "step 5: the descriptor changed after the entry left posted format"
        ));
    }
    expect_notifications(ndst, 2, "step 5 (remapped again)")?;

    // 6. A descriptor beyond RAM: fault 0x27, nothing delivered.
    let mut records = [FaultRecord {
        slot: 0,
        low: 0,
        high: 0,
    }; MAX_RECORDS];
    if !raise(&edu, &clock, 1, || vtd.pending_faults(&mut records) > 0) {
        return Err(text!(
            "step 6: no fault recorded within {} ms for PD 0x{:x} (FSTS 0x{:x})",
            DELIVERY_TIMEOUT_NS / NS_PER_MS,
            BAD_PDA,
            vtd.fsts()
        ));
    }
    ir_common::settle(&clock, SETTLE_NS);
    let n = vtd.pending_faults(&mut records).min(MAX_RECORDS);
    let record = records[0];
    if n != 1
        || record.reason() != FR_PD_ACCESS
        || record.ir_index() != BAD_INDEX
        || record.sid() != sid
    {
        return Err(text!(
            "step 6: {} records, first reason 0x{:x} index 0x{:x} sid 0x{:04x} (expected one, 0x{:x} 0x{:x} 0x{:04x})",
            n,
            record.reason(),
            record.ir_index(),
            record.sid(),
            FR_PD_ACCESS,
            BAD_INDEX,
            sid
        ));
    }
    vtd.clear_fault(record.slot);
    expect_notifications(ndst, 2, "step 6 (PD beyond RAM)")?;
    ir_common::expect_only(&DEVICE, ndst, 1, "step 6 (PD beyond RAM)")?;
    irq::stop_tick();
    msix.mask_function();
    Ok(text!(
        "ndst={} nv=0x{:x} vector=0x{:x} index=0x{:x} notifications={} pda_fault=0x{:x}",
        ndst,
        NV,
        PV,
        INDEX,
        EVENT.total(),
        FR_PD_ACCESS
    ))
}
