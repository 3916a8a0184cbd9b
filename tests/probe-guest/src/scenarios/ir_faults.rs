//! `probe=ir-faults`: blocked interrupts are recorded as VT-d faults with the right reason,
//! index and source-id, and raise the fault event interrupt; FPD suppresses recording.
//!
//! Runs on the BSP alone (no APs): every entry targets the BSP with [`VECTOR`], so an
//! interrupt that should have been blocked shows up there. The fault event goes to the BSP
//! too (FEDATA = [`EVENT_VECTOR`], FEADDR = 0xfee00000 | ID[7:0] << 12, FEUADDR = ID[31:8],
//! FECTL.IM clear). The table has 2^[`TABLE_LOG2`] entries, so a handle with bit 15 set is
//! beyond it. For each case the edu device's MSI is reprogrammed and raised once:
//!
//! | reason | how |
//! |---|---|
//! | 0x22 | entry not present: handle 0x0c + subhandle 4 (SHV) = index 0x10, written as not present |
//! | 0x21 | index beyond the table: handle 0x8005 (bit 15 in address bit 2), no SHV |
//! | 0x26 | source-id mismatch: entry 0x30 with SVT = 1 and another device's SID |
//! | 0x25 | compatibility format (plain 0xfee00000 | dest << 12) while CFI is clear |
//! | 0x24 | reserved bit 12 set in present entry 0x40 |
//!
//! Each must deliver nothing, leave exactly one record (F set) with that reason, the index
//! in bits 63:48 of its low qword (not checked for 0x25, which has none) and the edu
//! device's requester ID, with FSTS.PPF set and FSTS.FRI naming it, and raise one fault
//! event on the BSP. The record is then cleared (1 to F) and PPF must drop. Last, entry
//! 0x50 with a SID mismatch and FPD set must leave no record and no event; the same entry
//! without FPD must then fault with 0x26 (so the device did fire). Passes with
//! `reasons=22,21,26,25,24 fpd=ok`. Each case prints one line, so a VMM that does not
//! record faults (QEMU 7.2 drops blocked interrupts silently) shows what it did.

use super::ir_common::{self, Vmm, SETTLE_NS};
use super::smp;
use super::Context;
use crate::clock::Clock;
use crate::edu::{self, Edu};
use crate::msi::Msi;
use crate::report::{Outcome, Text};
use crate::tally::{self, DEVICE, EVENT};
use crate::vtd::fault::{
    FaultRecord, FR_COMPATIBILITY_BLOCKED, FR_INDEX_BEYOND_TABLE, FR_NOT_PRESENT, FR_RESERVED_BITS,
    FR_SID_MISMATCH, FSTS_PFO, FSTS_PPF,
};
use crate::vtd::{irte, Irte, Vtd};
use crate::{irq, sprint, sprintln, text};

/// The vector every entry would deliver.
const VECTOR: u8 = irq::TEST_VECTOR_A;
/// The fault event's vector.
const EVENT_VECTOR: u8 = irq::TEST_VECTOR_C;
/// log2 of the table size: 32768 entries, so handles from 0x8000 are beyond it.
const TABLE_LOG2: u32 = 15;
/// The edu interrupt-status bit the probe raises.
const RAISE_BIT: u32 = 1;
/// How long a fault gets to be recorded and signalled.
const FAULT_TIMEOUT_NS: u64 = 1_000_000_000;
/// How long the FPD case watches for a record or event that must not come.
const FPD_WATCH_NS: u64 = 300_000_000;
/// Requester-ID bit flipped to make a SID that is not the device's (device number bit 0).
const OTHER_DEVICE_SID_BIT: u16 = 1 << 3;
/// Most fault records read per check.
const MAX_RECORDS: usize = 8;

/// Entry left not present.
const NOT_PRESENT_INDEX: u16 = 0x10;
/// Handle and subhandle naming [`NOT_PRESENT_INDEX`].
const NOT_PRESENT_HANDLE: u16 = 0x0c;
const NOT_PRESENT_SUBHANDLE: u16 = NOT_PRESENT_INDEX - NOT_PRESENT_HANDLE;
/// A handle beyond the table (bit 15 set).
const BEYOND_INDEX: u16 = 0x8005;
/// Entry with a foreign SID.
const SID_INDEX: u16 = 0x30;
/// Entry with a reserved bit set.
const RESERVED_INDEX: u16 = 0x40;
/// Entry with a foreign SID and FPD.
const FPD_INDEX: u16 = 0x50;

/// What one raise produced.
struct Observed {
    delivered: u32,
    events: u32,
    fsts: u32,
    records: [FaultRecord; MAX_RECORDS],
    n_records: usize,
}

/// The scenario's fixed parts.
struct Bench {
    vtd: Vtd,
    edu: Edu,
    msi: Msi,
    clock: Clock,
    bsp: u32,
}

impl Bench {
    /// Programs the MSI with `address`/`data`, raises once and collects what happened:
    /// waits up to `timeout_ns` for a record and an event (both, when `expect_fault`), then
    /// for strays.
    fn raise(&self, address: u32, data: u16, expect_fault: bool, timeout_ns: u64) -> Observed {
        let (dev0, ev0) = (DEVICE.total(), EVENT.total());
        self.msi.program(address, data);
        self.edu.raise(RAISE_BIT);
        let mut scratch = [FaultRecord {
            slot: 0,
            low: 0,
            high: 0,
        }; MAX_RECORDS];
        ir_common::wait(&self.clock, timeout_ns, || {
            expect_fault && EVENT.total() > ev0 && self.vtd.pending_faults(&mut scratch) > 0
        });
        ir_common::settle(&self.clock, SETTLE_NS);
        self.edu.ack(RAISE_BIT);
        let mut obs = Observed {
            delivered: DEVICE.total() - dev0,
            events: EVENT.total() - ev0,
            fsts: self.vtd.fsts(),
            records: scratch,
            n_records: 0,
        };
        obs.n_records = self.vtd.pending_faults(&mut obs.records);
        obs
    }

    /// Raises through `address`/`data` and checks for exactly one fault with `reason`
    /// (and `index`, when given); clears the records found. Prints one line.
    fn expect_fault(
        &self,
        reason: u8,
        index: Option<u16>,
        address: u32,
        data: u16,
    ) -> Result<(), Text> {
        let o = self.raise(address, data, true, FAULT_TIMEOUT_NS);
        let first = o.records.first().filter(|_| o.n_records > 0);
        sprint!(
            "ir-faults: 0x{:02x} MSI 0x{:08x}/{}: delivered={} events={} FSTS=0x{:x} FECTL=0x{:x} records={}",
            reason,
            address,
            data,
            o.delivered,
            o.events,
            o.fsts,
            self.vtd.fectl(),
            o.n_records
        );
        if let Some(r) = first {
            sprint!(
                " [slot {} fr=0x{:02x} index=0x{:x} sid=0x{:04x}]",
                r.slot,
                r.reason(),
                r.ir_index(),
                r.sid()
            );
        }
        sprintln!();
        // Clear whatever was recorded before judging, so one failure does not leave records
        // behind that spoil the next case.
        for rec in &o.records[..o.n_records.min(MAX_RECORDS)] {
            self.vtd.clear_fault(rec.slot);
        }
        let fsts_after = self.vtd.fsts();
        let fail = |why: &str| text!("fault 0x{:02x}: {}", reason, why);
        if o.delivered != 0 {
            return Err(fail("the blocked interrupt was delivered"));
        }
        let r = first.ok_or_else(|| fail("no fault record"))?;
        if o.n_records != 1 {
            return Err(text!("fault 0x{:02x}: {} records", reason, o.n_records));
        }
        let sid = self.edu.function.sid();
        if r.reason() != reason || r.sid() != sid || index.is_some_and(|i| i != r.ir_index()) {
            return Err(text!(
                "fault 0x{:02x}: record has reason 0x{:02x} sid 0x{:04x} index 0x{:x}, expected sid 0x{:04x} index {:x?}",
                reason,
                r.reason(),
                r.sid(),
                r.ir_index(),
                sid,
                index
            ));
        }
        if o.fsts & FSTS_PPF == 0 || Vtd::fault_record_index(o.fsts) != r.slot {
            return Err(text!(
                "fault 0x{:02x}: FSTS 0x{:x} (PPF, FRI = {} expected)",
                reason,
                o.fsts,
                r.slot
            ));
        }
        if o.events != 1 || EVENT.hits(self.bsp) != EVENT.total() {
            return Err(text!(
                "fault 0x{:02x}: {} fault events ({} on the BSP of {} so far), expected 1",
                reason,
                o.events,
                EVENT.hits(self.bsp),
                EVENT.total()
            ));
        }
        if fsts_after & (FSTS_PPF | FSTS_PFO) != 0 || self.vtd.pending_faults(&mut []) != 0 {
            return Err(text!(
                "fault 0x{:02x}: FSTS 0x{:x} after clearing the record",
                reason,
                fsts_after
            ));
        }
        Ok(())
    }
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let platform = ir_common::discover(ctx)?;
    let edu = Edu::find(edu::EDU_DEVICE_ID)?;
    let msi = Msi::find(edu.function)?;
    let compat = irte::compatibility_msi_address(smp.bsp_id).ok_or_else(|| {
        text!(
            "BSP APIC ID {} does not fit a compatibility MSI",
            smp.bsp_id
        )
    })?;
    irq::set_handler(VECTOR, tally::on_device)?;
    irq::set_handler(EVENT_VECTOR, tally::on_event)?;
    let mut vtd = ir_common::enable(&platform.pci_unit(edu.function)?, smp.clock, TABLE_LOG2)?;
    vtd.route_fault_events(EVENT_VECTOR, smp.bsp_id);
    if vtd.fsts() & (FSTS_PPF | FSTS_PFO) != 0 {
        return Err(text!(
            "faults pending before the test: FSTS 0x{:x}",
            vtd.fsts()
        ));
    }
    let sid = edu.function.sid();
    let foreign = sid ^ OTHER_DEVICE_SID_BIT;
    let entry = Irte::remapped(VECTOR, smp.bsp_id);
    let remappable = irte::remappable_msi_address;
    sprintln!(
        "ir-faults: edu {} sid=0x{:04x}, fault events -> APIC ID {} vector 0x{:x}, {} records, {}",
        edu.function,
        sid,
        smp.bsp_id,
        EVENT_VECTOR,
        vtd.fault_records(),
        platform.vmm.name()
    );

    vtd.set_irte(NOT_PRESENT_INDEX.into(), Irte::NOT_PRESENT)?;
    vtd.invalidate_entries(NOT_PRESENT_INDEX.into(), 0)?;
    vtd.set_irte(SID_INDEX.into(), entry.verify_sid(foreign))?;
    vtd.invalidate_entries(SID_INDEX.into(), 0)?;
    vtd.set_irte(
        RESERVED_INDEX.into(),
        entry.verify_sid(sid).with_reserved_bit(),
    )?;
    vtd.invalidate_entries(RESERVED_INDEX.into(), 0)?;
    vtd.set_irte(FPD_INDEX.into(), entry.verify_sid(foreign).with_fpd())?;
    vtd.invalidate_entries(FPD_INDEX.into(), 0)?;
    let mut bench = Bench {
        vtd,
        edu,
        msi,
        clock: smp.clock,
        bsp: smp.bsp_id,
    };

    let mut first_failure: Option<Text> = None;
    let mut failures = 0;
    let mut note = |r: Result<(), Text>| {
        if let Err(t) = r {
            failures += 1;
            first_failure.get_or_insert(t);
        }
    };
    let np_address = remappable(NOT_PRESENT_HANDLE, true);
    note(bench.expect_fault(
        FR_NOT_PRESENT,
        Some(NOT_PRESENT_INDEX),
        np_address,
        NOT_PRESENT_SUBHANDLE,
    ));
    note(bench.expect_fault(
        FR_INDEX_BEYOND_TABLE,
        Some(BEYOND_INDEX),
        remappable(BEYOND_INDEX, false),
        0,
    ));
    note(bench.expect_fault(
        FR_SID_MISMATCH,
        Some(SID_INDEX),
        remappable(SID_INDEX, true),
        0,
    ));
    note(bench.expect_fault(FR_COMPATIBILITY_BLOCKED, None, compat, VECTOR.into()));
    note(bench.expect_fault(
        FR_RESERVED_BITS,
        Some(RESERVED_INDEX),
        remappable(RESERVED_INDEX, true),
        0,
    ));

    // FPD: nothing recorded, nothing signalled, nothing delivered.
    let o = bench.raise(remappable(FPD_INDEX, true), 0, false, FPD_WATCH_NS);
    sprintln!(
        "ir-faults: FPD entry 0x{:x}: delivered={} events={} FSTS=0x{:x} records={}",
        FPD_INDEX,
        o.delivered,
        o.events,
        o.fsts,
        o.n_records
    );
    if o.delivered != 0 || o.events != 0 || o.n_records != 0 || o.fsts & FSTS_PPF != 0 {
        note(Err(text!(
            "FPD entry 0x{:x}: {} delivered, {} events, {} records (all must be 0)",
            FPD_INDEX,
            o.delivered,
            o.events,
            o.n_records
        )));
        for r in &o.records[..o.n_records.min(MAX_RECORDS)] {
            bench.vtd.clear_fault(r.slot);
        }
    }
    // The same entry without FPD: the device did fire, so now it faults.
    bench
        .vtd
        .set_irte(FPD_INDEX.into(), entry.verify_sid(foreign))?;
    bench.vtd.invalidate_entries(FPD_INDEX.into(), 0)?;
    note(bench.expect_fault(
        FR_SID_MISMATCH,
        Some(FPD_INDEX),
        remappable(FPD_INDEX, true),
        0,
    ));
    irq::stop_tick();
    bench.msi.disable();

    if let Some(first) = first_failure {
        let hint = if platform.vmm == Vmm::Qemu {
            " (QEMU 7.2 records no interrupt-remapping faults and passes compatibility-format MSIs)"
        } else {
            ""
        };
        return Err(text!(
            "{} of 7 checks failed{}; first: {}",
            failures,
            hint,
            first
        ));
    }
    Ok(text!("reasons=22,21,26,25,24 fpd=ok"))
}
