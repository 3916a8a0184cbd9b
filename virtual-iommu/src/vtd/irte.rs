//! Interrupt remapping table entries (VT-d spec 9.10 remapped format, 9.11 posted format).
//!
//! An IRTE is 128 bits, little-endian in guest memory. In remapped format (IM = 0):
//!
//! | bits    | field |
//! |---------|-------|
//! | 0       | P, present |
//! | 1       | FPD, fault processing disable |
//! | 2       | DM, destination mode (1 = logical) |
//! | 3       | RH, redirection hint |
//! | 4       | TM, trigger mode (1 = level) |
//! | 7:5     | DLM, delivery mode |
//! | 11:8    | AVAIL, ignored |
//! | 14:12   | reserved |
//! | 15      | IM, 0 = remapped format, 1 = posted format |
//! | 23:16   | V, vector |
//! | 31:24   | reserved |
//! | 63:32   | DST: EIME = 1, the 32-bit x2APIC ID; EIME = 0, the 8-bit APIC ID in 47:40 with 39:32 and 63:48 reserved |
//! | 79:64   | SID, source-id |
//! | 81:80   | SQ, source-id qualifier |
//! | 83:82   | SVT, source validation type |
//! | 127:84  | reserved |
//!
//! In posted format (IM = 1, meaningful only on a unit reporting CAP.PI):
//!
//! | bits    | field |
//! |---------|-------|
//! | 0       | P, present |
//! | 1       | FPD, fault processing disable |
//! | 7:2     | reserved |
//! | 11:8    | AVAIL, ignored |
//! | 13:12   | reserved |
//! | 14      | URG, urgent: notify even when the descriptor suppresses notifications |
//! | 15      | IM = 1 |
//! | 23:16   | VV, the virtual vector to post |
//! | 37:24   | reserved |
//! | 63:38   | PDA bits 31:6 (the descriptor is 64-byte aligned by construction) |
//! | 79:64   | SID, 81:80 SQ, 83:82 SVT, as in remapped format |
//! | 95:84   | reserved |
//! | 127:96  | PDA bits 63:32 |
//!
//! [`Irte::decode_entry`] decodes either format; a unit without CAP.PI treats IM as a
//! reserved bit (fault 0x24), which is what [`Irte::decode`] does.

use thiserror::Error;

use crate::msi::{DeliveryMode, MsiMessage, SourceId, MSI_ADDR_REDIRECTION_HINT};

/// Size in bytes of one IRTE.
pub const IRTE_SIZE: usize = 16;

/// Low qword: present.
const IRTE_P: u64 = 1 << 0;
/// Low qword: fault processing disable.
const IRTE_FPD: u64 = 1 << 1;
/// Low qword: destination mode logical.
const IRTE_DM: u64 = 1 << 2;
/// Low qword: redirection hint.
const IRTE_RH: u64 = 1 << 3;
/// Low qword: trigger mode level.
const IRTE_TM: u64 = 1 << 4;
/// Low qword: shift of the delivery mode (7:5).
const IRTE_DLM_SHIFT: u32 = 5;
/// Low qword: mask (after shifting) of the delivery mode.
const IRTE_DLM_MASK: u64 = 0x7;
/// Low qword: IRTE mode, 1 = posted format.
const IRTE_IM: u64 = 1 << 15;
/// Low qword: shift of the vector (23:16).
const IRTE_VECTOR_SHIFT: u32 = 16;
/// Low qword: mask (after shifting) of the vector.
const IRTE_VECTOR_MASK: u64 = 0xff;
/// Low qword: shift of the destination (63:32).
const IRTE_DST_SHIFT: u32 = 32;
/// Shift of the xAPIC destination inside DST (`DST[15:8]`, IRTE bits 47:40).
const IRTE_XAPIC_DST_SHIFT: u32 = 8;
/// Mask (after shifting) of the 8-bit xAPIC destination.
const IRTE_XAPIC_DST_MASK: u32 = 0xff;
/// Low qword reserved bits in remapped format: 14:12 and 31:24.
const IRTE_LOW_RESERVED: u64 = (0x7 << 12) | (0xff << 24);
/// Low qword bits additionally reserved when EIME = 0: DST bits 7:0 and 31:16.
const IRTE_LOW_RESERVED_XAPIC: u64 = (0xff << 32) | (0xffff << 48);
/// High qword: mask of the source-id (79:64).
const IRTE_SID_MASK: u64 = 0xffff;
/// High qword: shift of the source-id qualifier (81:80).
const IRTE_SQ_SHIFT: u32 = 16;
/// High qword: shift of the source validation type (83:82).
const IRTE_SVT_SHIFT: u32 = 18;
/// Mask (after shifting) of the two-bit SQ and SVT fields.
const IRTE_TWO_BITS: u64 = 0x3;
/// High qword reserved bits in remapped format: 127:84.
const IRTE_HIGH_RESERVED: u64 = !0 << 20;

/// Posted format, low qword: urgent.
const PIRTE_URG: u64 = 1 << 14;
/// Posted format, low qword: shift of the descriptor address bits 31:6 (63:38).
const PIRTE_PDA_LOW_SHIFT: u32 = 38;
/// Posted-interrupt descriptors are 64-byte aligned: address bits 5:0 are not stored.
const PIRTE_PDA_ALIGN_SHIFT: u32 = 6;
/// Posted format, high qword: shift of the descriptor address bits 63:32 (127:96).
const PIRTE_PDA_HIGH_SHIFT: u32 = 32;
/// Posted format, high qword: mask of the descriptor address bits 63:32 as stored.
const PIRTE_PDA_HIGH_MASK: u64 = !0 << PIRTE_PDA_HIGH_SHIFT;
/// Posted format, low qword: mask of the descriptor address bits 31:6 as stored (63:38).
const PIRTE_PDA_LOW_MASK: u64 = !0 << PIRTE_PDA_LOW_SHIFT;
/// Posted format, low qword reserved bits: 7:2, 13:12 and 37:24.
const PIRTE_LOW_RESERVED: u64 = (0x3f << 2) | (0x3 << 12) | (0x3fff << 24);
/// Posted format, high qword reserved bits: 95:84 (31:20 of the high qword).
const PIRTE_HIGH_RESERVED: u64 = 0xfff << 20;

/// Source-id qualifier, SVT = 1: low request-id bits ignored for each SQ value.
const SQ_IGNORE_MASKS: [u16; 4] = [0x0000, 0x0004, 0x0006, 0x0007];
/// SVT = 2: shift of the start bus in SID (15:8); the end bus is SID 7:0.
const SVT_BUS_START_SHIFT: u32 = 8;
/// Mask of a bus number.
const BUS_MASK: u16 = 0xff;
/// Shift of the bus number in a requester id.
const REQUESTER_BUS_SHIFT: u32 = 8;

/// How the unit checks the requester of an interrupt that uses an entry (SVT, SQ, SID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceValidation {
    /// SVT = 0: no check.
    None,
    /// SVT = 1: the request's source-id must equal `sid` on every bit not in `ignore`
    /// (the low bits the SQ field tells the unit to ignore).
    RequesterId {
        /// The expected source-id.
        sid: u16,
        /// Request-id bits excluded from the comparison (from SQ: none, bit 2, bits 2:1,
        /// bits 2:0).
        ignore: u16,
    },
    /// SVT = 2: the request's bus number must lie in `start..=end`.
    BusRange {
        /// First bus allowed (SID 15:8).
        start: u8,
        /// Last bus allowed (SID 7:0).
        end: u8,
    },
}

impl SourceValidation {
    /// Decodes SVT, SQ and SID; `None` for the reserved SVT encoding 3.
    fn decode(high: u64) -> Option<Self> {
        let sid = (high & IRTE_SID_MASK) as u16;
        let sq = ((high >> IRTE_SQ_SHIFT) & IRTE_TWO_BITS) as usize;
        match (high >> IRTE_SVT_SHIFT) & IRTE_TWO_BITS {
            0 => Some(SourceValidation::None),
            1 => Some(SourceValidation::RequesterId {
                sid,
                ignore: SQ_IGNORE_MASKS.get(sq).copied().unwrap_or(0),
            }),
            2 => Some(SourceValidation::BusRange {
                start: ((sid >> SVT_BUS_START_SHIFT) & BUS_MASK) as u8,
                end: (sid & BUS_MASK) as u8,
            }),
            _ => None,
        }
    }

    /// True when a request from `source` passes this check.
    pub fn allows(&self, source: SourceId) -> bool {
        match *self {
            SourceValidation::None => true,
            SourceValidation::RequesterId { sid, ignore } => (source.0 ^ sid) & !ignore == 0,
            SourceValidation::BusRange { start, end } => {
                let bus = ((source.0 >> REQUESTER_BUS_SHIFT) & BUS_MASK) as u8;
                (start..=end).contains(&bus)
            }
        }
    }
}

/// A present, well-formed remapped-format entry: what a remapped interrupt becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemappedEntry {
    /// FPD: faults through this entry are not recorded.
    pub fault_processing_disabled: bool,
    /// DM: logical destination mode.
    pub logical: bool,
    /// RH: redirection hint.
    pub redirection_hint: bool,
    /// TM: level-triggered.
    pub level: bool,
    /// DLM: delivery mode.
    pub delivery_mode: DeliveryMode,
    /// V: vector.
    pub vector: u8,
    /// Destination APIC ID: 32-bit in x2APIC mode (EIME = 1), 8-bit otherwise.
    pub destination: u32,
    /// Source validation (SVT, SQ, SID).
    pub source_validation: SourceValidation,
}

impl RemappedEntry {
    /// The interrupt this entry produces, in KVM's x2APIC API layout (destination bits
    /// 7:0 in address bits 19:12, bits 31:8 in `address_hi` bits 31:8); trigger mode,
    /// delivery mode, vector, destination mode and redirection hint all come from the
    /// entry (VT-d spec 5.1.4: the remapped request takes every attribute from the IRTE).
    pub fn message(&self) -> MsiMessage {
        let mut msg = MsiMessage::compat(
            self.destination,
            self.logical,
            self.vector,
            self.delivery_mode,
            self.level,
        );
        if self.redirection_hint {
            msg.address_lo |= MSI_ADDR_REDIRECTION_HINT;
        }
        msg
    }
}

/// The fields of a posted-format entry (IM = 1) as stored, without any check
/// ([`Irte::posted`]; for diagnostics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostedEntry {
    /// URG: urgent.
    pub urgent: bool,
    /// The virtual vector to post.
    pub vector: u8,
    /// Guest-physical address of the posted-interrupt descriptor.
    pub descriptor_address: u64,
}

/// A present, well-formed posted-format entry (VT-d spec 9.11): what a posted interrupt
/// becomes, before the descriptor is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostedFormat {
    /// FPD: faults through this entry are not recorded.
    pub fault_processing_disabled: bool,
    /// URG: notify even when the descriptor's SN suppresses notifications.
    pub urgent: bool,
    /// VV: the vector to set in the descriptor's PIR.
    pub vector: u8,
    /// Guest-physical address of the 64-byte aligned posted-interrupt descriptor.
    pub descriptor_address: u64,
    /// Source validation (SVT, SQ, SID).
    pub source_validation: SourceValidation,
}

/// A decoded entry of either format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodedEntry {
    /// Remapped format (IM = 0).
    Remapped(RemappedEntry),
    /// Posted format (IM = 1) on a unit with CAP.PI.
    Posted(PostedFormat),
}

impl DecodedEntry {
    /// The entry's source validation.
    pub fn source_validation(&self) -> SourceValidation {
        match self {
            DecodedEntry::Remapped(e) => e.source_validation,
            DecodedEntry::Posted(p) => p.source_validation,
        }
    }
}

/// Why an entry cannot remap an interrupt.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum IrteError {
    /// P is clear (fault 0x22).
    #[error("entry not present")]
    NotPresent,
    /// Reserved bits are set (fault 0x24); the fields hold the offending bits.
    #[error("reserved bits set: low {low:#x}, high {high:#x}")]
    ReservedBits {
        /// Offending bits of the low qword.
        low: u64,
        /// Offending bits of the high qword.
        high: u64,
    },
    /// DLM holds a reserved encoding (3 or 6) (fault 0x24).
    #[error("reserved delivery mode {0}")]
    ReservedDeliveryMode(u8),
    /// SVT holds the reserved encoding 3 (fault 0x24).
    #[error("reserved source validation type")]
    ReservedSourceValidation,
    /// The entry is in posted format, which this unit does not support (fault 0x24).
    #[error("posted-format entry without posted-interrupt support: {0:?}")]
    PostedUnsupported(PostedEntry),
}

/// One raw 128-bit interrupt remapping table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Irte {
    /// Bits 63:0.
    pub low: u64,
    /// Bits 127:64.
    pub high: u64,
}

impl Irte {
    /// The entry stored little-endian in `bytes`.
    pub fn from_bytes(bytes: [u8; IRTE_SIZE]) -> Self {
        let mut low = [0u8; 8];
        let mut high = [0u8; 8];
        low.copy_from_slice(&bytes[..8]);
        high.copy_from_slice(&bytes[8..]);
        Irte {
            low: u64::from_le_bytes(low),
            high: u64::from_le_bytes(high),
        }
    }

    /// The entry's little-endian memory image.
    pub fn to_bytes(&self) -> [u8; IRTE_SIZE] {
        let mut bytes = [0u8; IRTE_SIZE];
        bytes[..8].copy_from_slice(&self.low.to_le_bytes());
        bytes[8..].copy_from_slice(&self.high.to_le_bytes());
        bytes
    }

    /// P: the entry is present.
    pub fn is_present(&self) -> bool {
        self.low & IRTE_P != 0
    }

    /// FPD: faults through this entry are not recorded (meaningful even when P = 0).
    pub fn fault_processing_disabled(&self) -> bool {
        self.low & IRTE_FPD != 0
    }

    /// IM: the entry is in posted format.
    pub fn is_posted(&self) -> bool {
        self.low & IRTE_IM != 0
    }

    /// Decodes a posted-format entry's fields (regardless of IM).
    pub fn posted(&self) -> PostedEntry {
        let pda_low =
            ((self.low & PIRTE_PDA_LOW_MASK) >> PIRTE_PDA_LOW_SHIFT) << PIRTE_PDA_ALIGN_SHIFT;
        let pda_high = (self.high >> PIRTE_PDA_HIGH_SHIFT) << PIRTE_PDA_HIGH_SHIFT;
        PostedEntry {
            urgent: self.low & PIRTE_URG != 0,
            vector: ((self.low >> IRTE_VECTOR_SHIFT) & IRTE_VECTOR_MASK) as u8,
            descriptor_address: pda_high | pda_low,
        }
    }

    /// Decodes the entry for a unit in x2APIC mode (`eime`) or xAPIC mode that does not
    /// report CAP.PI: a posted-format entry is rejected ([`IrteError::PostedUnsupported`]).
    pub fn decode(&self, eime: bool) -> Result<RemappedEntry, IrteError> {
        match self.decode_entry(eime, false)? {
            DecodedEntry::Remapped(e) => Ok(e),
            DecodedEntry::Posted(_) => Err(IrteError::PostedUnsupported(self.posted())),
        }
    }

    /// Decodes the entry in either format, checking the present bit, the format (IM is a
    /// reserved bit unless `posted_supported`, i.e. CAP.PI), reserved bits and reserved
    /// encodings, in that order. `eime` (x2APIC mode) matters to the remapped format only.
    pub fn decode_entry(
        &self,
        eime: bool,
        posted_supported: bool,
    ) -> Result<DecodedEntry, IrteError> {
        if !self.is_present() {
            return Err(IrteError::NotPresent);
        }
        if self.is_posted() {
            if !posted_supported {
                return Err(IrteError::PostedUnsupported(self.posted()));
            }
            return self.decode_posted().map(DecodedEntry::Posted);
        }
        self.decode_remapped(eime).map(DecodedEntry::Remapped)
    }

    /// The posted-format checks of [`Irte::decode_entry`] (P and IM already checked).
    fn decode_posted(&self) -> Result<PostedFormat, IrteError> {
        let low_bad = self.low & PIRTE_LOW_RESERVED;
        let high_bad = self.high & PIRTE_HIGH_RESERVED;
        if low_bad != 0 || high_bad != 0 {
            return Err(IrteError::ReservedBits {
                low: low_bad,
                high: high_bad,
            });
        }
        let source_validation =
            SourceValidation::decode(self.high).ok_or(IrteError::ReservedSourceValidation)?;
        let raw = self.posted();
        Ok(PostedFormat {
            fault_processing_disabled: self.fault_processing_disabled(),
            urgent: raw.urgent,
            vector: raw.vector,
            descriptor_address: raw.descriptor_address,
            source_validation,
        })
    }

    /// The remapped-format checks of [`Irte::decode_entry`] (P and IM already checked).
    fn decode_remapped(&self, eime: bool) -> Result<RemappedEntry, IrteError> {
        let mut low_reserved = IRTE_LOW_RESERVED;
        if !eime {
            low_reserved |= IRTE_LOW_RESERVED_XAPIC;
        }
        let low_bad = self.low & low_reserved;
        let high_bad = self.high & IRTE_HIGH_RESERVED;
        if low_bad != 0 || high_bad != 0 {
            return Err(IrteError::ReservedBits {
                low: low_bad,
                high: high_bad,
            });
        }
        let dlm = ((self.low >> IRTE_DLM_SHIFT) & IRTE_DLM_MASK) as u8;
        let delivery_mode =
            DeliveryMode::from_bits(dlm).ok_or(IrteError::ReservedDeliveryMode(dlm))?;
        let source_validation =
            SourceValidation::decode(self.high).ok_or(IrteError::ReservedSourceValidation)?;
        let dst = (self.low >> IRTE_DST_SHIFT) as u32;
        let destination = if eime {
            dst
        } else {
            (dst >> IRTE_XAPIC_DST_SHIFT) & IRTE_XAPIC_DST_MASK
        };
        Ok(RemappedEntry {
            fault_processing_disabled: self.fault_processing_disabled(),
            logical: self.low & IRTE_DM != 0,
            redirection_hint: self.low & IRTE_RH != 0,
            level: self.low & IRTE_TM != 0,
            delivery_mode,
            vector: ((self.low >> IRTE_VECTOR_SHIFT) & IRTE_VECTOR_MASK) as u8,
            destination,
            source_validation,
        })
    }
}

/// Builders for well-formed entries, for tests here and in the VMM.
pub mod build {
    use super::*;

    /// A present remapped-format entry. `destination` is placed as EIME = 1 expects (all
    /// 32 bits) when `eime`, else in `DST[15:8]` as xAPIC mode expects.
    pub fn remapped(
        vector: u8,
        destination: u32,
        eime: bool,
        mode: DeliveryMode,
        logical: bool,
        level: bool,
    ) -> Irte {
        let dst = if eime {
            u64::from(destination)
        } else {
            u64::from(destination & IRTE_XAPIC_DST_MASK) << IRTE_XAPIC_DST_SHIFT
        };
        let mut low = IRTE_P
            | ((mode as u64) << IRTE_DLM_SHIFT)
            | (u64::from(vector) << IRTE_VECTOR_SHIFT)
            | (dst << IRTE_DST_SHIFT);
        if logical {
            low |= IRTE_DM;
        }
        if level {
            low |= IRTE_TM;
        }
        Irte { low, high: 0 }
    }

    /// `irte` with SVT = 1 verifying `sid` under qualifier `sq` (0..=3).
    pub fn with_requester_id(irte: Irte, sid: u16, sq: u8) -> Irte {
        let high = u64::from(sid)
            | ((u64::from(sq) & IRTE_TWO_BITS) << IRTE_SQ_SHIFT)
            | (1 << IRTE_SVT_SHIFT);
        Irte {
            low: irte.low,
            high: high | (irte.high & PIRTE_PDA_HIGH_MASK),
        }
    }

    /// `irte` with SVT = 2 accepting buses `start..=end`.
    pub fn with_bus_range(irte: Irte, start: u8, end: u8) -> Irte {
        let sid = (u64::from(start) << SVT_BUS_START_SHIFT) | u64::from(end);
        Irte {
            low: irte.low,
            high: sid | (2 << IRTE_SVT_SHIFT) | (irte.high & PIRTE_PDA_HIGH_MASK),
        }
    }

    /// A present posted-format entry posting `vector` into the descriptor at
    /// `descriptor_address` (64-byte aligned; bits 5:0 are dropped), with URG as given.
    pub fn posted(vector: u8, descriptor_address: u64, urgent: bool) -> Irte {
        let pda_low = (descriptor_address & 0xffff_ffff) >> PIRTE_PDA_ALIGN_SHIFT;
        let mut low = IRTE_P
            | IRTE_IM
            | (u64::from(vector) << IRTE_VECTOR_SHIFT)
            | (pda_low << PIRTE_PDA_LOW_SHIFT);
        if urgent {
            low |= PIRTE_URG;
        }
        let high = (descriptor_address >> PIRTE_PDA_HIGH_SHIFT) << PIRTE_PDA_HIGH_SHIFT;
        Irte { low, high }
    }

    /// `irte` with FPD set.
    pub fn with_fpd(irte: Irte) -> Irte {
        Irte {
            low: irte.low | IRTE_FPD,
            high: irte.high,
        }
    }

    /// `irte` with the redirection hint set.
    pub fn with_redirection_hint(irte: Irte) -> Irte {
        Irte {
            low: irte.low | IRTE_RH,
            high: irte.high,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let e = Irte {
            low: 0x0102_0304_0506_0708,
            high: 0x1112_1314_1516_1718,
        };
        assert_eq!(Irte::from_bytes(e.to_bytes()), e);
        assert_eq!(e.to_bytes()[0], 0x08);
        assert_eq!(e.to_bytes()[15], 0x11);
    }

    #[test]
    fn x2apic_entry_decodes_32_bit_destination() {
        let e = remapped(0x41, 0x0001_2345, true, DeliveryMode::Fixed, false, false);
        let d = e.decode(true).unwrap();
        assert_eq!(d.destination, 0x0001_2345);
        assert_eq!(d.vector, 0x41);
        assert_eq!(d.delivery_mode, DeliveryMode::Fixed);
        assert!(!d.logical && !d.level && !d.redirection_hint);
        let m = d.message();
        assert_eq!(m.address_lo, 0xfee4_5000);
        assert_eq!(m.address_hi, 0x0001_2300);
        assert_eq!(m.data, 0x41);
        assert_eq!(m.destination(), 0x0001_2345);
    }

    #[test]
    fn xapic_entry_takes_dst_15_8_and_rejects_the_rest() {
        let e = remapped(0x30, 0x7, false, DeliveryMode::LowestPriority, true, true);
        assert_eq!(e.low >> 32, 0x700);
        let d = e.decode(false).unwrap();
        assert_eq!(d.destination, 7);
        assert!(d.logical && d.level);
        let m = d.message();
        assert_eq!(m.address_lo, 0xfee0_7004);
        assert_eq!(m.address_hi, 0);
        assert_eq!(m.data, 0x30 | (1 << 8) | (1 << 14) | (1 << 15));
        // The same bits read as 32-bit destination 0x700 in x2APIC mode.
        assert_eq!(e.decode(true).unwrap().destination, 0x700);
        // A 32-bit destination is reserved in xAPIC mode.
        let wide = remapped(0x30, 0x1234, true, DeliveryMode::Fixed, false, false);
        assert!(matches!(
            wide.decode(false),
            Err(IrteError::ReservedBits { .. })
        ));
    }

    #[test]
    fn redirection_hint_is_carried() {
        let e = with_redirection_hint(remapped(0x22, 1, true, DeliveryMode::Fixed, false, false));
        let m = e.decode(true).unwrap().message();
        assert_eq!(
            m.address_lo & MSI_ADDR_REDIRECTION_HINT,
            MSI_ADDR_REDIRECTION_HINT
        );
    }

    #[test]
    fn not_present_wins_over_everything() {
        let e = Irte {
            low: !IRTE_P,
            high: !0,
        };
        assert_eq!(e.decode(true), Err(IrteError::NotPresent));
        assert!(e.fault_processing_disabled());
    }

    #[test]
    fn reserved_bits_and_encodings() {
        let good = remapped(0x40, 1, true, DeliveryMode::Fixed, false, false);
        for bit in [12, 13, 14, 24, 31] {
            let e = Irte {
                low: good.low | (1 << bit),
                high: 0,
            };
            assert_eq!(
                e.decode(true),
                Err(IrteError::ReservedBits {
                    low: 1 << bit,
                    high: 0
                }),
                "bit {bit}"
            );
        }
        let e = Irte {
            low: good.low,
            high: 1 << 20,
        };
        assert!(matches!(
            e.decode(true),
            Err(IrteError::ReservedBits { .. })
        ));
        // AVAIL bits are software's.
        let e = Irte {
            low: good.low | (0xf << 8),
            high: 0,
        };
        assert!(e.decode(true).is_ok());
        for dlm in [3u64, 6] {
            let e = Irte {
                low: (good.low & !(0x7 << 5)) | (dlm << 5),
                high: 0,
            };
            assert_eq!(
                e.decode(true),
                Err(IrteError::ReservedDeliveryMode(dlm as u8))
            );
        }
        let e = Irte {
            low: good.low,
            high: 3 << 18,
        };
        assert_eq!(e.decode(true), Err(IrteError::ReservedSourceValidation));
    }

    #[test]
    fn posted_format_is_decoded_and_rejected() {
        let pda: u64 = 0x0000_0001_2345_6780;
        let e = Irte {
            low: IRTE_P | IRTE_IM | PIRTE_URG | (0x55 << 16) | ((pda & 0xffff_ffc0) << 32),
            high: (pda >> 32) << 32,
        };
        match e.decode(true) {
            Err(IrteError::PostedUnsupported(p)) => {
                assert!(p.urgent);
                assert_eq!(p.vector, 0x55);
                assert_eq!(p.descriptor_address, pda & !0x3f);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn posted_builder_round_trips_and_decodes_with_cap_pi() {
        let pda: u64 = 0x0000_00ab_cdef_1240;
        let e = with_requester_id(posted(0x81, pda, true), 0x0110, 2);
        assert_eq!(e.high >> 32, 0xab, "PDA 63:32 kept by the SID builder");
        match e.decode_entry(true, true) {
            Ok(DecodedEntry::Posted(p)) => {
                assert_eq!(p.descriptor_address, pda);
                assert_eq!(p.vector, 0x81);
                assert!(p.urgent && !p.fault_processing_disabled);
                assert_eq!(
                    p.source_validation,
                    SourceValidation::RequesterId {
                        sid: 0x0110,
                        ignore: 0x6
                    }
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        // The same entry on a unit without CAP.PI, and through the remapped-only decode.
        assert!(matches!(
            e.decode_entry(true, false),
            Err(IrteError::PostedUnsupported(_))
        ));
        assert!(matches!(
            e.decode(true),
            Err(IrteError::PostedUnsupported(_))
        ));
        // Address bits 5:0 cannot be expressed: the descriptor is always 64-byte aligned.
        let odd = posted(0x81, pda | 0x3f, false);
        assert_eq!(odd.posted().descriptor_address, pda);
        // Remapped entries decode as before through decode_entry.
        let r = remapped(0x40, 7, true, DeliveryMode::Fixed, false, false);
        assert!(matches!(
            r.decode_entry(true, true),
            Ok(DecodedEntry::Remapped(d)) if d.destination == 7
        ));
    }

    #[test]
    fn source_validation_sid_with_each_sq() {
        let base = remapped(0x40, 1, true, DeliveryMode::Fixed, false, false);
        let sid = 0x0110; // 01:02.0
                          // SQ = 0: all 16 bits.
        let v = with_requester_id(base, sid, 0)
            .decode(true)
            .unwrap()
            .source_validation;
        assert!(v.allows(SourceId(0x0110)));
        assert!(!v.allows(SourceId(0x0111)));
        assert!(!v.allows(SourceId(0x0114)));
        // SQ = 1: ignore bit 2.
        let v = with_requester_id(base, sid, 1)
            .decode(true)
            .unwrap()
            .source_validation;
        assert!(v.allows(SourceId(0x0114)));
        assert!(!v.allows(SourceId(0x0112)));
        assert!(!v.allows(SourceId(0x0111)));
        // SQ = 2: ignore bits 2:1.
        let v = with_requester_id(base, sid, 2)
            .decode(true)
            .unwrap()
            .source_validation;
        assert!(v.allows(SourceId(0x0116)));
        assert!(!v.allows(SourceId(0x0111)));
        // SQ = 3: ignore bits 2:0 (any function).
        let v = with_requester_id(base, sid, 3)
            .decode(true)
            .unwrap()
            .source_validation;
        assert!(v.allows(SourceId(0x0117)));
        assert!(!v.allows(SourceId(0x0118)));
        assert!(!v.allows(SourceId(0x0210)));
    }

    #[test]
    fn source_validation_bus_range() {
        let base = remapped(0x40, 1, true, DeliveryMode::Fixed, false, false);
        let v = with_bus_range(base, 2, 4)
            .decode(true)
            .unwrap()
            .source_validation;
        assert_eq!(v, SourceValidation::BusRange { start: 2, end: 4 });
        assert!(!v.allows(SourceId::new(1, 31, 7)));
        assert!(v.allows(SourceId::new(2, 0, 0)));
        assert!(v.allows(SourceId::new(4, 31, 7)));
        assert!(!v.allows(SourceId::new(5, 0, 0)));
        assert!(SourceValidation::None.allows(SourceId(0xffff)));
    }
}
