//! Interrupt-remapping faults and primary fault logging (VT-d spec 7.1, 7.2.1, 10.4.9,
//! 10.4.14). DMA-remapping faults ([`super::dma::fault`]) go into the same log.
//!
//! A blocked interrupt request becomes a [`Fault`]. Recording it writes a 128-bit fault
//! record into the ring of fault-recording registers (FRCD), sets FSTS.PPF, and raises the
//! fault event interrupt when that is a new interrupt condition. The ring rules:
//!
//! * An internal index names the record the next fault goes to; it advances and wraps.
//! * If that record still holds an unserviced fault (F = 1), the new fault is dropped and
//!   FSTS.PFO is set. While PFO is set no fault is recorded at all, until software clears
//!   PFO.
//! * FSTS.FRI names the record that made PPF go from 0 to 1.
//! * Software clears a record by writing 1 to its F bit (bit 127, i.e. bit 31 of the
//!   record's last dword); PPF is the OR of all F bits.
//!
//! Faults whose reason is *qualified* (not-present entry, reserved IRTE bits, source-id
//! mismatch, and the posted-interrupt descriptor faults: those detected after the IRTE
//! was read) are not recorded when the IRTE has FPD (fault processing disable) set.

use std::fmt;

use thiserror::Error;

use crate::msi::{MsiMessage, SourceId};

use super::dma::fault::DmaFault;
use super::event::EventInterrupt;
use super::regs::{
    high_dword, low_dword, FSTS_FRI_SHIFT, FSTS_ICE, FSTS_IQE, FSTS_ITE, FSTS_PFO, FSTS_PPF,
    FSTS_RW1C,
};

/// Interrupt-remapping fault reasons (VT-d spec 7.1.3, table "Interrupt Remapping Fault
/// Conditions"); the discriminant is the code written to FRCD.FR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FaultReason {
    /// 0x20: the request is malformed for the remappable format (address above 4 GiB,
    /// data bits 31:16 set, address outside the interrupt window).
    RequestReserved = 0x20,
    /// 0x21: the interrupt index is beyond the table size in IRTA.S.
    IndexBeyondTable = 0x21,
    /// 0x22: the IRTE's present bit is clear.
    EntryNotPresent = 0x22,
    /// 0x23: the IRTE could not be read (table pointer not set, or not in guest RAM).
    TableReadFailed = 0x23,
    /// 0x24: reserved bits or a reserved encoding in a present IRTE (also: a posted-format
    /// IRTE on a unit configured without CAP.PI).
    EntryReserved = 0x24,
    /// 0x25: a compatibility-format request while such requests are blocked.
    CompatibilityBlocked = 0x25,
    /// 0x26: the request's source-id fails the IRTE's source validation.
    SourceIdMismatch = 0x26,
    /// 0x27: the posted-interrupt descriptor a posted-format IRTE names could not be
    /// accessed (not in guest RAM).
    DescriptorAccessFailed = 0x27,
    /// 0x28: reserved fields set in the posted-interrupt descriptor's control bits.
    DescriptorReserved = 0x28,
}

impl FaultReason {
    /// The fault reason code written to FRCD.FR.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// True for reasons detected after the IRTE was read, whose recording the IRTE's FPD
    /// bit can suppress.
    pub fn is_qualified(self) -> bool {
        matches!(
            self,
            FaultReason::EntryNotPresent
                | FaultReason::EntryReserved
                | FaultReason::SourceIdMismatch
                | FaultReason::DescriptorAccessFailed
                | FaultReason::DescriptorReserved
        )
    }

    fn description(self) -> &'static str {
        match self {
            FaultReason::RequestReserved => "reserved fields set in the interrupt request",
            FaultReason::IndexBeyondTable => "interrupt index beyond the remapping table",
            FaultReason::EntryNotPresent => "IRTE not present",
            FaultReason::TableReadFailed => "remapping table not readable",
            FaultReason::EntryReserved => "reserved fields set in the IRTE",
            FaultReason::CompatibilityBlocked => "compatibility-format interrupt blocked",
            FaultReason::SourceIdMismatch => "source-id verification failed",
            FaultReason::DescriptorAccessFailed => "posted-interrupt descriptor not accessible",
            FaultReason::DescriptorReserved => {
                "reserved fields set in the posted-interrupt descriptor"
            }
        }
    }
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x} ({})", self.code(), self.description())
    }
}

/// A blocked interrupt request: what the unit records in a fault-recording register.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq, Hash)]
#[error("interrupt remapping fault {reason} from {source_id:?}, index {index:?}")]
pub struct Fault {
    /// Why the request was blocked.
    pub reason: FaultReason,
    /// The requester that sent it.
    pub source_id: SourceId,
    /// The interrupt index the request named, when it could be decoded (remappable
    /// format). May exceed 0xffff (handle + subhandle overflow); the record keeps the low
    /// 16 bits.
    pub index: Option<u32>,
    /// The IRTE had FPD set and the reason is qualified: the fault is not recorded.
    pub suppressed: bool,
}

/// FRCD: shift of the interrupt index in the fault-info field of the low qword (63:48).
const FRCD_IR_INDEX_SHIFT: u32 = 48;
/// FRCD: mask of the 16-bit interrupt index.
const FRCD_IR_INDEX_MASK: u64 = 0xffff;
/// FRCD: shift of the fault reason in the high qword (bits 103:96 of the record).
const FRCD_FR_SHIFT: u32 = 32;
/// FRCD: the fault bit F in the high qword (bit 127 of the record).
const FRCD_F: u64 = 1 << 63;
/// FRCD: F as seen in the record's last dword (offset 12).
const FRCD_DWORD3_F: u32 = 1 << 31;
/// Dwords per 128-bit fault record.
const FRCD_DWORDS: usize = 4;
/// FSTS status bits whose presence makes a new status bit no new interrupt condition.
const FSTS_STATUS: u32 = FSTS_PFO | FSTS_PPF | FSTS_IQE | FSTS_ICE | FSTS_ITE;

/// One 128-bit fault-recording register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FaultRecord {
    low: u64,
    high: u64,
}

impl FaultRecord {
    fn for_fault(fault: &Fault) -> Self {
        let index = u64::from(fault.index.unwrap_or(0)) & FRCD_IR_INDEX_MASK;
        FaultRecord {
            low: index << FRCD_IR_INDEX_SHIFT,
            high: u64::from(fault.source_id.0)
                | (u64::from(fault.reason.code()) << FRCD_FR_SHIFT)
                | FRCD_F,
        }
    }

    fn is_set(&self) -> bool {
        self.high & FRCD_F != 0
    }

    fn dword(&self, n: usize) -> u32 {
        match n {
            0 => low_dword(self.low),
            1 => high_dword(self.low),
            2 => low_dword(self.high),
            _ => high_dword(self.high),
        }
    }
}

/// The primary fault log: fault-recording registers, FSTS and the fault event.
#[derive(Clone, Debug)]
pub struct FaultLog {
    records: Vec<FaultRecord>,
    next: usize,
    /// FSTS bits stored directly: PFO, IQE, ICE, ITE.
    sticky: u32,
    fri: u8,
    event: EventInterrupt,
}

impl FaultLog {
    /// An empty log with `records` fault-recording registers (at least one); the fault
    /// event's upper address register exists when `upper_address` is true.
    pub fn new(records: usize, upper_address: bool) -> Self {
        FaultLog {
            records: vec![FaultRecord::default(); records.max(1)],
            next: 0,
            sticky: 0,
            fri: 0,
            event: EventInterrupt::new(upper_address),
        }
    }

    /// Number of fault-recording registers.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Always false: a log has at least one record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The fault status register.
    pub fn status(&self) -> u32 {
        let mut value = self.sticky | (u32::from(self.fri) << FSTS_FRI_SHIFT);
        if self.records.iter().any(FaultRecord::is_set) {
            value |= FSTS_PPF;
        }
        value
    }

    /// The fault event register block.
    pub fn event(&self) -> &EventInterrupt {
        &self.event
    }

    /// The fault event register block, for register writes.
    pub fn event_mut(&mut self) -> &mut EventInterrupt {
        &mut self.event
    }

    /// Records `fault` (unless suppressed or PFO is set); returns the fault event message
    /// when this is a new interrupt condition and the event is not masked.
    pub fn record(&mut self, fault: &Fault) -> Option<MsiMessage> {
        self.record_words(FaultRecord::for_fault(fault), fault.suppressed, fault)
    }

    /// Records a DMA-remapping fault in the same ring, with the same status bits and
    /// event, as [`FaultLog::record`].
    pub fn record_dma(&mut self, fault: &DmaFault) -> Option<MsiMessage> {
        let (low, high) = fault.record();
        self.record_words(FaultRecord { low, high }, fault.suppressed, fault)
    }

    fn record_words(
        &mut self,
        record: FaultRecord,
        suppressed: bool,
        what: &dyn fmt::Display,
    ) -> Option<MsiMessage> {
        if suppressed {
            log::debug!("vt-d: fault not recorded (FPD): {what}");
            return None;
        }
        if self.sticky & FSTS_PFO != 0 {
            log::debug!("vt-d: fault dropped, primary fault overflow pending: {what}");
            return None;
        }
        let was_clear = self.status() & FSTS_STATUS == 0;
        let had_pending = self.status() & FSTS_PPF != 0;
        let next = self.next;
        let Some(slot) = self.records.get_mut(next) else {
            // Unreachable: `next` is always kept below the record count.
            return None;
        };
        if slot.is_set() {
            log::debug!("vt-d: primary fault overflow, dropping {what}");
            self.sticky |= FSTS_PFO;
            return None;
        }
        *slot = record;
        log::debug!("vt-d: recorded {what} in FRCD {next}");
        if !had_pending {
            self.fri = u8::try_from(next).unwrap_or(0);
        }
        self.next = (next + 1) % self.records.len();
        if was_clear {
            self.event.signal()
        } else {
            None
        }
    }

    /// Sets FSTS.IQE (invalidation queue error); returns the fault event message when this
    /// is a new interrupt condition and the event is not masked.
    pub fn set_queue_error(&mut self) -> Option<MsiMessage> {
        let was_clear = self.status() & FSTS_STATUS == 0;
        self.sticky |= FSTS_IQE;
        if was_clear {
            self.event.signal()
        } else {
            None
        }
    }

    /// True while FSTS.IQE is set (the invalidation queue is stopped).
    pub fn queue_error(&self) -> bool {
        self.sticky & FSTS_IQE != 0
    }

    /// Handles a write of FSTS: clears the RW1C bits written as 1.
    pub fn write_status(&mut self, value: u32) {
        self.sticky &= !(value & FSTS_RW1C);
        self.update_pending();
    }

    /// Reads dword `dword` (0..4) of fault record `record`; zero outside the ring.
    pub fn read_record(&self, record: usize, dword: usize) -> u32 {
        match self.records.get(record) {
            Some(r) if dword < FRCD_DWORDS => r.dword(dword),
            _ => 0,
        }
    }

    /// Handles a write of dword `dword` of fault record `record`: writing 1 to F (bit 31
    /// of dword 3) clears the record; everything else is read-only.
    pub fn write_record(&mut self, record: usize, dword: usize, value: u32) {
        if dword + 1 != FRCD_DWORDS || value & FRCD_DWORD3_F == 0 {
            return;
        }
        if let Some(r) = self.records.get_mut(record) {
            *r = FaultRecord::default();
        }
        self.update_pending();
    }

    /// Software serviced every status bit: a held fault event is dropped (FECTL.IP).
    fn update_pending(&mut self) {
        if self.status() & FSTS_STATUS == 0 {
            self.event.clear_pending();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vtd::regs::EVENT_CTL_IP;

    fn fault(reason: FaultReason, index: u32) -> Fault {
        Fault {
            reason,
            source_id: SourceId(0x0108),
            index: Some(index),
            suppressed: false,
        }
    }

    fn unmasked_log(records: usize) -> FaultLog {
        let mut log = FaultLog::new(records, true);
        log.event_mut().write_address(0xfee0_0000);
        log.event_mut().write_data(0x60);
        log.event_mut().write_control(0);
        log
    }

    #[test]
    fn qualified_reasons() {
        assert!(FaultReason::EntryNotPresent.is_qualified());
        assert!(FaultReason::EntryReserved.is_qualified());
        assert!(FaultReason::SourceIdMismatch.is_qualified());
        assert!(!FaultReason::RequestReserved.is_qualified());
        assert!(!FaultReason::IndexBeyondTable.is_qualified());
        assert!(!FaultReason::TableReadFailed.is_qualified());
        assert!(!FaultReason::CompatibilityBlocked.is_qualified());
        assert_eq!(
            FaultReason::SourceIdMismatch.to_string(),
            "0x26 (source-id verification failed)"
        );
    }

    #[test]
    fn record_layout() {
        let mut log = unmasked_log(4);
        assert!(log
            .record(&fault(FaultReason::EntryNotPresent, 0x1234))
            .is_some());
        assert_eq!(log.read_record(0, 0), 0);
        assert_eq!(log.read_record(0, 1), 0x1234 << 16);
        assert_eq!(log.read_record(0, 2), 0x0108);
        assert_eq!(log.read_record(0, 3), 0x8000_0022);
        assert_eq!(log.status(), FSTS_PPF);
        assert_eq!(log.read_record(9, 0), 0);
        assert_eq!(log.read_record(0, 7), 0);
    }

    #[test]
    fn only_the_first_pending_fault_interrupts() {
        let mut log = unmasked_log(4);
        assert!(log
            .record(&fault(FaultReason::EntryNotPresent, 1))
            .is_some());
        assert!(log
            .record(&fault(FaultReason::EntryNotPresent, 2))
            .is_none());
        assert_eq!(log.status() >> FSTS_FRI_SHIFT, 0);
        log.write_record(0, 3, FRCD_DWORD3_F);
        log.write_record(1, 3, FRCD_DWORD3_F);
        assert_eq!(log.status(), 0);
        // The next fault goes to record 2 and becomes FRI.
        assert!(log
            .record(&fault(FaultReason::EntryNotPresent, 3))
            .is_some());
        assert_eq!(log.status(), FSTS_PPF | (2 << FSTS_FRI_SHIFT));
    }

    #[test]
    fn suppressed_faults_are_not_recorded() {
        let mut log = unmasked_log(2);
        let mut f = fault(FaultReason::SourceIdMismatch, 1);
        f.suppressed = true;
        assert!(log.record(&f).is_none());
        assert_eq!(log.status(), 0);
    }

    #[test]
    fn writes_other_than_f_are_ignored() {
        let mut log = unmasked_log(2);
        log.record(&fault(FaultReason::EntryNotPresent, 1));
        log.write_record(0, 0, 0xffff_ffff);
        log.write_record(0, 3, 0x7fff_ffff);
        assert_eq!(log.read_record(0, 3), 0x8000_0022);
        log.write_record(5, 3, FRCD_DWORD3_F);
        assert_eq!(log.status(), FSTS_PPF);
    }

    #[test]
    fn masked_event_pending_then_serviced() {
        let mut log = FaultLog::new(2, true);
        assert!(log
            .record(&fault(FaultReason::EntryNotPresent, 1))
            .is_none());
        assert_eq!(log.event().control() & EVENT_CTL_IP, EVENT_CTL_IP);
        // Servicing the record drops the held message.
        log.write_record(0, 3, FRCD_DWORD3_F);
        assert_eq!(log.event().control() & EVENT_CTL_IP, 0);
        assert_eq!(log.event_mut().write_control(0), None);
    }

    #[test]
    fn queue_error_interrupts_once() {
        let mut log = unmasked_log(2);
        assert!(log.set_queue_error().is_some());
        assert!(log.queue_error());
        assert!(log.set_queue_error().is_none());
        log.write_status(FSTS_IQE);
        assert!(!log.queue_error());
        assert_eq!(log.status(), 0);
    }
}
