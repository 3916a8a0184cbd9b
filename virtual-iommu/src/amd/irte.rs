//! AMD-Vi interrupt remapping table entries: the 32-bit legacy format and the 128-bit
//! guest virtual APIC (GA) format, in remapped and guest modes.
//!
//! Which format a table holds is a unit-wide choice: control `GAEn` = 1 selects 128-bit
//! entries. Entry `n` of a table lives at `root + n * size`.
//!
//! 32-bit format (`GAEn` = 0):
//!
//! | bits  | field |
//! |-------|-------|
//! | 0     | RemapEn (valid) |
//! | 1     | SupIOPF: do not log IO_PAGE_FAULT for this entry |
//! | 4:2   | IntType: 000b fixed, 001b arbitrated (others reserved) |
//! | 5     | RqEoi (ignored: the trigger mode comes from the request) |
//! | 6     | DM: 1 = logical destination |
//! | 7     | reserved (GuestMode exists only in the 128-bit format) |
//! | 15:8  | Destination (8-bit APIC ID) |
//! | 23:16 | Vector |
//! | 31:24 | reserved |
//!
//! 128-bit format (`GAEn` = 1), low qword then high qword:
//!
//! | qword | bits  | remapped mode (GuestMode = 0) | guest virtual APIC mode (GuestMode = 1) |
//! |-------|-------|-------------------------------|-----------------------------------------|
//! | lo    | 0     | RemapEn                       | RemapEn |
//! | lo    | 1     | SupIOPF                       | SupIOPF |
//! | lo    | 4:2   | IntType                       | bit 2 GALogIntr, 4:3 reserved |
//! | lo    | 5     | RqEoi                         | reserved |
//! | lo    | 6     | DM                            | IsRun |
//! | lo    | 7     | GuestMode = 0                 | GuestMode = 1 |
//! | lo    | 31:8  | Destination 23:0              | Destination 23:0 |
//! | lo    | 63:32 | ignored                       | GATag |
//! | hi    | 7:0   | Vector                        | Vector (the guest's) |
//! | hi    | 11:8  | reserved                      | reserved |
//! | hi    | 51:12 | ignored                       | GA root pointer (vAPIC backing page >> 12) |
//! | hi    | 55:52 | reserved                      | reserved |
//! | hi    | 63:56 | Destination 31:24             | Destination 31:24 |
//!
//! Destination bits above 7 count only with control `XTEn` = 1 (x2APIC mode); in xAPIC
//! mode the destination is bits 7:0 and the others are ignored, as QEMU and hardware do.
//! Guest mode is honoured only in guest virtual APIC mode (control `GAMEn` = 001b);
//! otherwise GuestMode = 1 is a reserved setting. Reserved bits are checked only in a valid
//! entry (RemapEn = 1); a violation blocks the interrupt with IO_PAGE_FAULT (RZ).

use thiserror::Error;

use crate::msi::DeliveryMode;

/// Size in bytes of a 32-bit IRTE.
pub const IRTE32_SIZE: usize = 4;
/// Size in bytes of a 128-bit IRTE.
pub const IRTE128_SIZE: usize = 16;

/// RemapEn (both formats).
const IRTE_REMAP_EN: u64 = 1 << 0;
/// SupIOPF (both formats).
const IRTE_SUP_IOPF: u64 = 1 << 1;
/// Shift of IntType (4:2).
const IRTE_INT_TYPE_SHIFT: u32 = 2;
/// Mask (after shifting) of IntType.
const IRTE_INT_TYPE_MASK: u64 = 0x7;
/// DM (remapped mode).
const IRTE_DM: u64 = 1 << 6;
/// GuestMode (128-bit format; reserved in the 32-bit format).
const IRTE_GUEST_MODE: u64 = 1 << 7;
/// Shift of the destination (32-bit: 15:8; 128-bit: 31:8).
const IRTE_DEST_SHIFT: u32 = 8;
/// Mask (after shifting) of the 8-bit destination of the 32-bit format.
const IRTE32_DEST_MASK: u64 = 0xff;
/// Shift of the vector in the 32-bit format (23:16).
const IRTE32_VECTOR_SHIFT: u32 = 16;
/// Reserved bits of the 32-bit format: 31:24 and 7.
const IRTE32_RESERVED: u64 = (0xff << 24) | IRTE_GUEST_MODE;
/// Mask (after shifting) of destination bits 23:0 in the 128-bit format.
const IRTE128_DEST_LO_MASK: u64 = 0xff_ffff;
/// Bits of the destination the low field holds.
const IRTE128_DEST_LO_BITS: u32 = 24;
/// Guest mode, low qword: GALogIntr.
const IRTE_GA_LOG_INTR: u64 = 1 << 2;
/// Guest mode, low qword: IsRun.
const IRTE_IS_RUN: u64 = 1 << 6;
/// Guest mode, low qword: reserved bits 5:3.
const IRTE_VAPIC_LO_RESERVED: u64 = 0x7 << 3;
/// Shift of GATag (63:32).
const IRTE_GA_TAG_SHIFT: u32 = 32;
/// High qword: mask of the vector.
const IRTE128_VECTOR_MASK: u64 = 0xff;
/// High qword: reserved bits 11:8 and 55:52.
const IRTE128_HI_RESERVED: u64 = (0xf << 8) | (0xf << 52);
/// High qword: shift of the GA root pointer (51:12).
const IRTE_GA_ROOT_SHIFT: u32 = 12;
/// High qword: mask (after shifting) of the 40-bit GA root pointer.
const IRTE_GA_ROOT_MASK: u64 = 0xff_ffff_ffff;
/// High qword: shift of destination bits 31:24.
const IRTE128_DEST_HI_SHIFT: u32 = 56;
/// Mask of an 8-bit xAPIC destination.
const XAPIC_DEST_MASK: u32 = 0xff;
/// Bytes per vAPIC backing page frame number step.
const PAGE_SHIFT: u32 = 12;

/// Why an entry cannot be used.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum IrteError {
    /// RemapEn is clear.
    #[error("IRTE not valid (RemapEn = 0)")]
    NotValid,
    /// IntType holds an encoding other than fixed or arbitrated.
    #[error("reserved IntType {0}")]
    ReservedIntType(u8),
    /// A reserved bit is set.
    #[error("reserved IRTE bits set")]
    ReservedBits,
    /// GuestMode = 1 while the unit is not in guest virtual APIC mode.
    #[error("guest-mode IRTE while guest virtual APIC mode is off")]
    GuestModeDisabled,
}

/// A valid remapped-mode entry: where and how the interrupt goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemappedIrte {
    /// Fixed or lowest-priority (arbitrated) delivery.
    pub delivery_mode: DeliveryMode,
    /// DM: logical destination mode.
    pub logical: bool,
    /// Destination APIC ID (8 bits in xAPIC mode, 32 in x2APIC mode).
    pub destination: u32,
    /// Vector.
    pub vector: u8,
}

/// A valid guest-mode entry: an interrupt for a vCPU of a guest hypervisor's guest.
/// Destination, IsRun and GATag are read from the table at every interrupt; nothing of
/// this entry may be cached (see [`super::ga`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestModeIrte {
    /// GALogIntr: log a GA entry when the vCPU is not running.
    pub ga_log_intr: bool,
    /// IsRun: the target vCPU is running on `destination`.
    pub is_run: bool,
    /// Physical APIC ID of the CPU running (or last running) the target vCPU.
    pub destination: u32,
    /// GATag, the guest hypervisor's opaque 32-bit name for the target vCPU.
    pub ga_tag: u32,
    /// The guest's vector.
    pub vector: u8,
    /// System physical address of the vAPIC backing page.
    pub backing_page: u64,
}

/// A valid entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodedIrte {
    /// Remapped mode: becomes an interrupt message.
    Remapped(RemappedIrte),
    /// Guest virtual APIC mode: becomes a posting into guest memory.
    GuestMode(GuestModeIrte),
}

/// How the unit interprets entries (from the control register).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrteMode {
    /// `GAEn`: 128-bit entries.
    pub ga: bool,
    /// `XTEn`: 32-bit destinations.
    pub xt: bool,
    /// `GAMEn` = vAPIC: guest-mode entries are honoured.
    pub guest_apic: bool,
}

impl IrteMode {
    /// Size in bytes of one entry in this mode.
    pub fn entry_size(&self) -> usize {
        if self.ga {
            IRTE128_SIZE
        } else {
            IRTE32_SIZE
        }
    }
}

/// One interrupt remapping table entry as read from guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Irte {
    /// 32-bit format.
    Legacy(u32),
    /// 128-bit format.
    Ga {
        /// Low qword.
        lo: u64,
        /// High qword.
        hi: u64,
    },
}

fn int_type(lo: u64) -> Result<DeliveryMode, IrteError> {
    match (lo >> IRTE_INT_TYPE_SHIFT) & IRTE_INT_TYPE_MASK {
        0 => Ok(DeliveryMode::Fixed),
        1 => Ok(DeliveryMode::LowestPriority),
        other => Err(IrteError::ReservedIntType(other as u8)),
    }
}

impl Irte {
    /// Builds an entry of `mode`'s format from its little-endian bytes (`bytes` holds at
    /// least [`IrteMode::entry_size`] bytes; missing bytes read as zero).
    pub fn from_bytes(mode: IrteMode, bytes: &[u8]) -> Self {
        let mut b = [0u8; IRTE128_SIZE];
        for (dst, src) in b.iter_mut().zip(bytes) {
            *dst = *src;
        }
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&b[..8]);
        hi.copy_from_slice(&b[8..]);
        if mode.ga {
            Irte::Ga {
                lo: u64::from_le_bytes(lo),
                hi: u64::from_le_bytes(hi),
            }
        } else {
            Irte::Legacy(u64::from_le_bytes(lo) as u32)
        }
    }

    /// The entry's bytes (4 or 16).
    pub fn to_bytes(&self) -> Vec<u8> {
        match *self {
            Irte::Legacy(v) => v.to_le_bytes().to_vec(),
            Irte::Ga { lo, hi } => {
                let mut v = lo.to_le_bytes().to_vec();
                v.extend_from_slice(&hi.to_le_bytes());
                v
            }
        }
    }

    fn low(&self) -> u64 {
        match *self {
            Irte::Legacy(v) => u64::from(v),
            Irte::Ga { lo, .. } => lo,
        }
    }

    /// SupIOPF: faults through this entry are not logged.
    pub fn suppresses_faults(&self) -> bool {
        self.low() & IRTE_SUP_IOPF != 0
    }

    /// Decodes the entry under `mode`.
    pub fn decode(&self, mode: IrteMode) -> Result<DecodedIrte, IrteError> {
        let lo = self.low();
        if lo & IRTE_REMAP_EN == 0 {
            return Err(IrteError::NotValid);
        }
        match *self {
            Irte::Legacy(_) => {
                if lo & IRTE32_RESERVED != 0 {
                    return Err(IrteError::ReservedBits);
                }
                Ok(DecodedIrte::Remapped(RemappedIrte {
                    delivery_mode: int_type(lo)?,
                    logical: lo & IRTE_DM != 0,
                    destination: ((lo >> IRTE_DEST_SHIFT) & IRTE32_DEST_MASK) as u32,
                    vector: (lo >> IRTE32_VECTOR_SHIFT) as u8,
                }))
            }
            Irte::Ga { lo, hi } => {
                if hi & IRTE128_HI_RESERVED != 0 {
                    return Err(IrteError::ReservedBits);
                }
                let dest_lo = ((lo >> IRTE_DEST_SHIFT) & IRTE128_DEST_LO_MASK) as u32;
                let dest_hi = (hi >> IRTE128_DEST_HI_SHIFT) as u32;
                let destination = if mode.xt {
                    dest_lo | (dest_hi << IRTE128_DEST_LO_BITS)
                } else {
                    dest_lo & XAPIC_DEST_MASK
                };
                let vector = (hi & IRTE128_VECTOR_MASK) as u8;
                if lo & IRTE_GUEST_MODE == 0 {
                    return Ok(DecodedIrte::Remapped(RemappedIrte {
                        delivery_mode: int_type(lo)?,
                        logical: lo & IRTE_DM != 0,
                        destination,
                        vector,
                    }));
                }
                if !mode.guest_apic {
                    return Err(IrteError::GuestModeDisabled);
                }
                if lo & IRTE_VAPIC_LO_RESERVED != 0 {
                    return Err(IrteError::ReservedBits);
                }
                let root = (hi >> IRTE_GA_ROOT_SHIFT) & IRTE_GA_ROOT_MASK;
                Ok(DecodedIrte::GuestMode(GuestModeIrte {
                    ga_log_intr: lo & IRTE_GA_LOG_INTR != 0,
                    is_run: lo & IRTE_IS_RUN != 0,
                    destination,
                    ga_tag: (lo >> IRTE_GA_TAG_SHIFT) as u32,
                    vector,
                    backing_page: root << PAGE_SHIFT,
                }))
            }
        }
    }
}

/// Builders for entries, for tests here and in the VMM.
pub mod build {
    use super::*;

    /// A valid 32-bit entry (fixed delivery).
    pub fn legacy(vector: u8, destination: u8, logical: bool) -> Irte {
        let mut v = IRTE_REMAP_EN as u32
            | (u32::from(destination) << IRTE_DEST_SHIFT)
            | (u32::from(vector) << IRTE32_VECTOR_SHIFT);
        if logical {
            v |= IRTE_DM as u32;
        }
        Irte::Legacy(v)
    }

    /// A valid 128-bit remapped-mode entry (fixed delivery) with a 32-bit destination, as
    /// Linux's `irte_ga_prepare` writes it.
    pub fn remapped(vector: u8, destination: u32, logical: bool) -> Irte {
        let mut lo =
            IRTE_REMAP_EN | ((u64::from(destination) & IRTE128_DEST_LO_MASK) << IRTE_DEST_SHIFT);
        if logical {
            lo |= IRTE_DM;
        }
        let hi = u64::from(vector)
            | (u64::from(destination >> IRTE128_DEST_LO_BITS) << IRTE128_DEST_HI_SHIFT);
        Irte::Ga { lo, hi }
    }

    /// A valid 128-bit guest-mode entry, as Linux's `amd_iommu_activate_guest_mode` and
    /// `amd_iommu_update_ga` write it.
    pub fn guest_mode(
        vector: u8,
        backing_page: u64,
        ga_tag: u32,
        destination: u32,
        is_run: bool,
        ga_log_intr: bool,
    ) -> Irte {
        let mut lo = IRTE_REMAP_EN
            | IRTE_GUEST_MODE
            | ((u64::from(destination) & IRTE128_DEST_LO_MASK) << IRTE_DEST_SHIFT)
            | (u64::from(ga_tag) << IRTE_GA_TAG_SHIFT);
        if is_run {
            lo |= IRTE_IS_RUN;
        }
        if ga_log_intr {
            lo |= IRTE_GA_LOG_INTR;
        }
        let hi = u64::from(vector)
            | (((backing_page >> PAGE_SHIFT) & IRTE_GA_ROOT_MASK) << IRTE_GA_ROOT_SHIFT)
            | (u64::from(destination >> IRTE128_DEST_LO_BITS) << IRTE128_DEST_HI_SHIFT);
        Irte::Ga { lo, hi }
    }

    /// `irte` with SupIOPF set.
    pub fn suppressing(irte: Irte) -> Irte {
        match irte {
            Irte::Legacy(v) => Irte::Legacy(v | IRTE_SUP_IOPF as u32),
            Irte::Ga { lo, hi } => Irte::Ga {
                lo: lo | IRTE_SUP_IOPF,
                hi,
            },
        }
    }

    /// `irte` with RemapEn cleared (Linux's allocated-but-unused entries also carry vector
    /// 0xff, which changes nothing).
    pub fn invalid(irte: Irte) -> Irte {
        match irte {
            Irte::Legacy(v) => Irte::Legacy(v & !(IRTE_REMAP_EN as u32)),
            Irte::Ga { lo, hi } => Irte::Ga {
                lo: lo & !IRTE_REMAP_EN,
                hi,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    const GA: IrteMode = IrteMode {
        ga: true,
        xt: true,
        guest_apic: true,
    };
    const LEGACY: IrteMode = IrteMode {
        ga: false,
        xt: false,
        guest_apic: false,
    };

    fn remap(e: Result<DecodedIrte, IrteError>) -> RemappedIrte {
        match e {
            Ok(DecodedIrte::Remapped(r)) => r,
            other => panic!("not remapped: {other:?}"),
        }
    }

    #[test]
    fn legacy_layout() {
        // union irte: valid 0, no_fault 1, int_type 4:2, rq_eoi 5, dm 6, rsvd 7,
        // destination 15:8, vector 23:16.
        let e = legacy(0x41, 3, true);
        assert_eq!(e, Irte::Legacy(0x0041_0341));
        let r = remap(e.decode(LEGACY));
        assert_eq!(r.vector, 0x41);
        assert_eq!(r.destination, 3);
        assert!(r.logical);
        assert_eq!(r.delivery_mode, DeliveryMode::Fixed);
        assert_eq!(Irte::from_bytes(LEGACY, &e.to_bytes()), e);
        assert_eq!(
            Irte::Legacy(0x0041_0301 | 1 << 2)
                .decode(LEGACY)
                .map(|_| ()),
            Ok(())
        );
    }

    #[test]
    fn legacy_errors() {
        assert_eq!(
            invalid(legacy(1, 1, false)).decode(LEGACY),
            Err(IrteError::NotValid)
        );
        assert_eq!(
            Irte::Legacy(0x0100_0001).decode(LEGACY),
            Err(IrteError::ReservedBits)
        );
        assert_eq!(
            Irte::Legacy(0x81).decode(LEGACY),
            Err(IrteError::ReservedBits),
            "GuestMode does not exist in the 32-bit format"
        );
        assert_eq!(
            Irte::Legacy(0x1 | 4 << 2).decode(LEGACY),
            Err(IrteError::ReservedIntType(4))
        );
        assert!(suppressing(legacy(1, 1, false)).suppresses_faults());
    }

    #[test]
    fn ga_remapped_destinations() {
        let e = remapped(0x30, 0x1234_5678, false);
        let r = remap(e.decode(GA));
        assert_eq!(r.destination, 0x1234_5678);
        assert_eq!(r.vector, 0x30);
        // xAPIC mode: bits 7:0 only.
        let r = remap(e.decode(IrteMode { xt: false, ..GA }));
        assert_eq!(r.destination, 0x78);
        assert_eq!(Irte::from_bytes(GA, &e.to_bytes()), e);
    }

    #[test]
    fn ga_reserved_bits() {
        let Irte::Ga { lo, hi } = remapped(0x30, 1, false) else {
            unreachable!()
        };
        for bad_hi in [hi | 1 << 8, hi | 1 << 55] {
            assert_eq!(
                Irte::Ga { lo, hi: bad_hi }.decode(GA),
                Err(IrteError::ReservedBits)
            );
        }
        // GA tag and root pointer are ignored in remapped mode.
        assert!(Irte::Ga {
            lo: lo | 0xdead_beef << 32,
            hi: hi | 0x1234 << 12
        }
        .decode(GA)
        .is_ok());
        assert_eq!(
            Irte::Ga {
                lo: lo | 2 << 2,
                hi
            }
            .decode(GA),
            Err(IrteError::ReservedIntType(2))
        );
    }

    #[test]
    fn guest_mode_fields() {
        let e = guest_mode(0x55, 0x7654_3000, 0xfeed_f00d, 0x0102_0304, true, false);
        match e.decode(GA) {
            Ok(DecodedIrte::GuestMode(g)) => {
                assert_eq!(g.vector, 0x55);
                assert_eq!(g.backing_page, 0x7654_3000);
                assert_eq!(g.ga_tag, 0xfeed_f00d, "the full 32-bit tag");
                assert_eq!(g.destination, 0x0102_0304);
                assert!(g.is_run && !g.ga_log_intr);
            }
            other => panic!("{other:?}"),
        }
        // Linux's layout: guest_mode bit 7, is_run bit 6, ga_log_intr bit 2, ga_tag 63:32,
        // ga_root_ptr hi 51:12.
        let Irte::Ga { lo, hi } = guest_mode(1, 0x5000, 7, 0, false, true) else {
            unreachable!()
        };
        assert_eq!(lo, 0x7_0000_0085);
        assert_eq!(hi, 0x5001);
        assert_eq!(
            e.decode(IrteMode {
                guest_apic: false,
                ..GA
            }),
            Err(IrteError::GuestModeDisabled)
        );
        assert_eq!(
            Irte::Ga {
                lo: lo | 1 << 4,
                hi
            }
            .decode(GA),
            Err(IrteError::ReservedBits)
        );
    }

    #[test]
    fn backing_page_uses_all_40_root_bits() {
        let page = 0x000f_ffff_ffff_f000;
        let e = guest_mode(0, page, 0, 0, false, false);
        match e.decode(GA) {
            Ok(DecodedIrte::GuestMode(g)) => assert_eq!(g.backing_page, page),
            other => panic!("{other:?}"),
        }
    }
}
