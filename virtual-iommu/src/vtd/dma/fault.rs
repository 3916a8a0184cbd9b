//! DMA-remapping faults (VT-d spec 7.1.3, legacy-mode fault reasons 0x1-0xD).
//!
//! A DMA request the unit cannot translate becomes a [`DmaFault`]. It is recorded in the
//! same fault-recording registers, with the same FSTS bits and fault event, as an
//! interrupt-remapping fault ([`super::super::fault`]); only the record's contents differ:
//! the low qword holds the faulting page address (FI, bits 63:12) instead of an interrupt
//! index, and bit 126 (T) says whether the request was a read (1) or a write (0).
//!
//! Faults detected after the context entry was read are *qualified*: the context entry's
//! FPD bit suppresses their recording. FPD is looked at even in a context entry whose
//! present bit is clear (so a guest can silence a device it never set up); faults found
//! while reading the root entry or the tables themselves cannot be suppressed.

use std::fmt;

use thiserror::Error;

use crate::msi::SourceId;

/// DMA-remapping fault reasons; the discriminant is the code written to FRCD.FR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DmaFaultReason {
    /// 0x1: the root entry for the requester's bus is not present.
    RootNotPresent = 0x1,
    /// 0x2: the context entry for the requester is not present.
    ContextNotPresent = 0x2,
    /// 0x3: the context entry is present but programmed with something this unit does
    /// not support: an address width outside CAP.SAGAW, a translation type it does not
    /// implement (device-TLB without ECAP.DT, pass-through without ECAP.PT, the reserved
    /// type), or a second-level table pointer the unit cannot read.
    ContextInvalid = 0x3,
    /// 0x4: the input address is above 2^X - 1, X the smaller of CAP.MGAW and the context
    /// entry's address width.
    AddressBeyondWidth = 0x4,
    /// 0x5: a write request met an entry without write permission (or a non-present one).
    WriteDenied = 0x5,
    /// 0x6: a read request met an entry without read permission (or a non-present one).
    ReadDenied = 0x6,
    /// 0x7: a second-level paging entry below the top level could not be read.
    PagingEntryUnreadable = 0x7,
    /// 0x8: the root table (RTADDR) could not be read.
    RootTableUnreadable = 0x8,
    /// 0x9: the context table a root entry points at could not be read.
    ContextTableUnreadable = 0x9,
    /// 0xA: reserved bits set in a present root entry.
    RootReserved = 0xa,
    /// 0xB: reserved bits set in a present context entry.
    ContextReserved = 0xb,
    /// 0xC: reserved bits set in a second-level paging entry with R or W set (including a
    /// superpage bit the unit does not support and misaligned superpage addresses).
    PagingEntryReserved = 0xc,
}

impl DmaFaultReason {
    /// The fault reason code written to FRCD.FR.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// True for reasons detected after the context entry was read, whose recording the
    /// context entry's FPD bit suppresses.
    pub fn is_qualified(self) -> bool {
        !matches!(
            self,
            DmaFaultReason::RootNotPresent
                | DmaFaultReason::RootTableUnreadable
                | DmaFaultReason::ContextTableUnreadable
                | DmaFaultReason::RootReserved
        )
    }

    fn description(self) -> &'static str {
        match self {
            DmaFaultReason::RootNotPresent => "root entry not present",
            DmaFaultReason::ContextNotPresent => "context entry not present",
            DmaFaultReason::ContextInvalid => "context entry programmed invalidly",
            DmaFaultReason::AddressBeyondWidth => "address beyond the address width",
            DmaFaultReason::WriteDenied => "no write permission",
            DmaFaultReason::ReadDenied => "no read permission",
            DmaFaultReason::PagingEntryUnreadable => "paging entry not readable",
            DmaFaultReason::RootTableUnreadable => "root table not readable",
            DmaFaultReason::ContextTableUnreadable => "context table not readable",
            DmaFaultReason::RootReserved => "reserved fields set in the root entry",
            DmaFaultReason::ContextReserved => "reserved fields set in the context entry",
            DmaFaultReason::PagingEntryReserved => "reserved fields set in a paging entry",
        }
    }

    /// The permission fault for a request of this direction.
    pub fn denied(write: bool) -> Self {
        if write {
            DmaFaultReason::WriteDenied
        } else {
            DmaFaultReason::ReadDenied
        }
    }
}

impl fmt::Display for DmaFaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x} ({})", self.code(), self.description())
    }
}

/// A DMA request the unit refused: what it records in a fault-recording register.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq, Hash)]
#[error("DMA remapping fault {reason} from {source_id:?}: {} at {address:#x}", if *.write { "write" } else { "read" })]
pub struct DmaFault {
    /// Why the request was refused.
    pub reason: DmaFaultReason,
    /// The requester.
    pub source_id: SourceId,
    /// The request's input address (the record keeps its page, bits 63:12).
    pub address: u64,
    /// A write request (FRCD.T = 0) or a read (T = 1).
    pub write: bool,
    /// The context entry had FPD set and the reason is qualified: not recorded.
    pub suppressed: bool,
}

/// FRCD low qword: the fault-info field holds the page address (63:12).
const FRCD_FI_MASK: u64 = !0xfff;
/// FRCD high qword: shift of the fault reason (record bits 103:96).
const FRCD_FR_SHIFT: u32 = 32;
/// FRCD high qword: T (record bit 126), 1 for a read request.
const FRCD_T_READ: u64 = 1 << 62;
/// FRCD high qword: F (record bit 127).
const FRCD_F: u64 = 1 << 63;

impl DmaFault {
    /// A fault of `reason` for `source_id`'s request at `address`; suppressed when
    /// `fpd` is set and the reason is qualified.
    pub fn new(
        reason: DmaFaultReason,
        source_id: SourceId,
        address: u64,
        write: bool,
        fpd: bool,
    ) -> Self {
        DmaFault {
            reason,
            source_id,
            address,
            write,
            suppressed: fpd && reason.is_qualified(),
        }
    }

    /// The 128-bit fault record (low qword, high qword) with F set.
    pub fn record(&self) -> (u64, u64) {
        let t = if self.write { 0 } else { FRCD_T_READ };
        (
            self.address & FRCD_FI_MASK,
            u64::from(self.source_id.0)
                | (u64::from(self.reason.code()) << FRCD_FR_SHIFT)
                | t
                | FRCD_F,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_reasons_follow_the_spec() {
        for r in [
            DmaFaultReason::ContextNotPresent,
            DmaFaultReason::ContextInvalid,
            DmaFaultReason::AddressBeyondWidth,
            DmaFaultReason::WriteDenied,
            DmaFaultReason::ReadDenied,
            DmaFaultReason::PagingEntryUnreadable,
            DmaFaultReason::ContextReserved,
            DmaFaultReason::PagingEntryReserved,
        ] {
            assert!(r.is_qualified(), "{r}");
        }
        for r in [
            DmaFaultReason::RootNotPresent,
            DmaFaultReason::RootTableUnreadable,
            DmaFaultReason::ContextTableUnreadable,
            DmaFaultReason::RootReserved,
        ] {
            assert!(!r.is_qualified(), "{r}");
        }
        assert_eq!(
            DmaFaultReason::WriteDenied.to_string(),
            "0x05 (no write permission)"
        );
    }

    #[test]
    fn record_layout() {
        let f = DmaFault::new(
            DmaFaultReason::ReadDenied,
            SourceId(0x0108),
            0x1234_5678_9abc,
            false,
            false,
        );
        let (lo, hi) = f.record();
        assert_eq!(lo, 0x1234_5678_9000);
        assert_eq!(hi, 0xc000_0006_0000_0108);
        let w = DmaFault { write: true, ..f };
        assert_eq!(w.record().1, 0x8000_0006_0000_0108);
        // FPD suppresses qualified reasons only.
        assert!(DmaFault::new(DmaFaultReason::WriteDenied, SourceId(1), 0, true, true).suppressed);
        assert!(
            !DmaFault::new(DmaFaultReason::RootNotPresent, SourceId(1), 0, true, true).suppressed
        );
    }
}
