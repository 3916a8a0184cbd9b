//! Root and context entries in legacy mode (VT-d spec 9.1, 9.3).
//!
//! The root table (RTADDR, 4 KiB) has one 128-bit root entry per bus; a present root entry
//! points at a context table (4 KiB) with one 128-bit context entry per device/function.
//! A context entry says how the requester's DMA is translated:
//!
//! | bits | field |
//! |---|---|
//! | 0 | P, present |
//! | 1 | FPD, fault processing disable (looked at even when P = 0) |
//! | 3:2 | TT: 00 second-level tables, 01 the same with device-TLBs (needs ECAP.DT), 10 pass-through (needs ECAP.PT), 11 reserved |
//! | 11:4 | reserved |
//! | 63:12 | SLPTPTR, the top second-level table |
//! | 66:64 | AW: 1 = 39 bits (3 levels), 2 = 48 bits (4 levels); others per CAP.SAGAW |
//! | 70:67 | ignored |
//! | 71 | reserved |
//! | 87:72 | DID, domain identifier |
//! | 127:88 | reserved |
//!
//! Decoding goes in the specification's order, each step with its fault reason: root
//! entry present (0x1), root reserved bits (0xA), context entry present (0x2), context
//! reserved bits (0xB), translation type and address width supported (0x3).

use super::fault::DmaFaultReason;
use super::walk::{Levels, ADDRESS_BITS};

/// Size of a root or context entry.
pub const ENTRY_SIZE: u64 = 16;
/// Entry bit 0: present.
const PRESENT: u64 = 1 << 0;
/// Root entry low qword: reserved bits 11:1.
const ROOT_LO_RESERVED: u64 = 0xffe;
/// Table pointers: bits 63:12, of which those at and above [`ADDRESS_BITS`] are reserved.
const POINTER_MASK: u64 = !0xfff;
/// Context entry low qword: FPD.
const CONTEXT_FPD: u64 = 1 << 1;
/// Context entry low qword: shift of TT.
const CONTEXT_TT_SHIFT: u32 = 2;
/// Mask (after shifting) of TT.
const CONTEXT_TT_MASK: u64 = 0x3;
/// Context entry low qword: reserved bits 11:4.
const CONTEXT_LO_RESERVED: u64 = 0xff0;
/// Context entry high qword: AW (2:0).
const CONTEXT_AW_MASK: u64 = 0x7;
/// Context entry high qword: reserved bit 7.
const CONTEXT_HI_RESERVED_7: u64 = 1 << 7;
/// Context entry high qword: shift of DID (23:8).
const CONTEXT_DID_SHIFT: u32 = 8;
/// Mask (after shifting) of DID.
const CONTEXT_DID_MASK: u64 = 0xffff;
/// Context entry high qword: reserved bits 63:24.
const CONTEXT_HI_RESERVED: u64 = !0 << 24;
/// TT: second-level translation of untranslated requests.
const TT_TRANSLATED: u64 = 0b00;
/// TT: as 00 with device-TLBs (ATS).
const TT_DEVICE_TLB: u64 = 0b01;
/// TT: pass-through.
const TT_PASS_THROUGH: u64 = 0b10;
/// AW encoding of 39-bit, 3-level tables.
pub const AW_39: u8 = 1;
/// AW encoding of 48-bit, 4-level tables.
pub const AW_48: u8 = 2;

/// Address bits above the unit's address width: reserved in table pointers.
fn pointer_reserved() -> u64 {
    !((1u64 << ADDRESS_BITS) - 1)
}

/// What the unit can do, as far as context entries are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextSupport {
    /// CAP.SAGAW.
    pub sagaw: u64,
    /// ECAP.PT.
    pub pass_through: bool,
}

/// A root entry's context-table pointer for a present, well-formed entry.
pub fn root_entry(lo: u64, hi: u64) -> Result<u64, DmaFaultReason> {
    if lo & PRESENT == 0 {
        return Err(DmaFaultReason::RootNotPresent);
    }
    if lo & (ROOT_LO_RESERVED | pointer_reserved()) != 0 || hi != 0 {
        return Err(DmaFaultReason::RootReserved);
    }
    Ok(lo & POINTER_MASK)
}

/// How a device's requests are translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextKind {
    /// Through second-level tables at `root` with `levels` levels.
    Translated {
        /// Guest-physical address of the top table.
        root: u64,
        /// 3 or 4.
        levels: Levels,
    },
    /// Untranslated: the input address is the output address.
    PassThrough,
}

/// A present, valid context entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Context {
    /// The domain its mappings are cached under.
    pub domain: u16,
    /// How requests are translated.
    pub kind: ContextKind,
    /// Fault processing disable.
    pub fpd: bool,
}

/// The FPD bit of a context entry, valid whether or not the entry is present.
pub fn context_fpd(lo: u64) -> bool {
    lo & CONTEXT_FPD != 0
}

/// Decodes the context entry `lo`, `hi` for a unit with `support`.
pub fn context_entry(lo: u64, hi: u64, support: ContextSupport) -> Result<Context, DmaFaultReason> {
    if lo & PRESENT == 0 {
        return Err(DmaFaultReason::ContextNotPresent);
    }
    if lo & (CONTEXT_LO_RESERVED | pointer_reserved()) != 0
        || hi & (CONTEXT_HI_RESERVED | CONTEXT_HI_RESERVED_7) != 0
    {
        return Err(DmaFaultReason::ContextReserved);
    }
    let domain = ((hi >> CONTEXT_DID_SHIFT) & CONTEXT_DID_MASK) as u16;
    let fpd = context_fpd(lo);
    let aw = (hi & CONTEXT_AW_MASK) as u8;
    let kind = match (lo >> CONTEXT_TT_SHIFT) & CONTEXT_TT_MASK {
        TT_TRANSLATED => {
            let levels = match aw {
                AW_39 if support.sagaw & super::super::regs::SAGAW_39 != 0 => Levels::Three,
                AW_48 if support.sagaw & super::super::regs::SAGAW_48 != 0 => Levels::Four,
                _ => return Err(DmaFaultReason::ContextInvalid),
            };
            ContextKind::Translated {
                root: lo & POINTER_MASK,
                levels,
            }
        }
        TT_PASS_THROUGH if support.pass_through => ContextKind::PassThrough,
        // Device-TLB translation needs ECAP.DT, which the unit does not report.
        TT_DEVICE_TLB => return Err(DmaFaultReason::ContextInvalid),
        // Pass-through without ECAP.PT, and the reserved type 11.
        _ => return Err(DmaFaultReason::ContextInvalid),
    };
    Ok(Context { domain, kind, fpd })
}

/// Builders of root and context entries, for tests here and in the VMM.
pub mod build {
    use super::*;

    /// A present root entry pointing at the context table `ctp`.
    pub fn root(ctp: u64) -> (u64, u64) {
        ((ctp & POINTER_MASK) | PRESENT, 0)
    }

    /// A present context entry translating through `root` with `aw` (1: 39 bits, 2: 48
    /// bits) in domain `did`.
    pub fn translated(root: u64, aw: u8, did: u16, fpd: bool) -> (u64, u64) {
        let mut lo = (root & POINTER_MASK) | PRESENT | (TT_TRANSLATED << CONTEXT_TT_SHIFT);
        if fpd {
            lo |= CONTEXT_FPD;
        }
        (
            lo,
            u64::from(aw & 0x7) | (u64::from(did) << CONTEXT_DID_SHIFT),
        )
    }

    /// A present pass-through context entry in domain `did` (AW 48 bits, as Linux programs
    /// the largest supported width).
    pub fn pass_through(did: u16) -> (u64, u64) {
        (
            PRESENT | (TT_PASS_THROUGH << CONTEXT_TT_SHIFT),
            u64::from(AW_48) | (u64::from(did) << CONTEXT_DID_SHIFT),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use crate::vtd::regs::{SAGAW_39, SAGAW_48};

    const FULL: ContextSupport = ContextSupport {
        sagaw: SAGAW_39 | SAGAW_48,
        pass_through: true,
    };

    #[test]
    fn root_entries() {
        let (lo, hi) = root(0x12_3000);
        assert_eq!(root_entry(lo, hi), Ok(0x12_3000));
        assert_eq!(root_entry(0, 0), Err(DmaFaultReason::RootNotPresent));
        // A not-present entry is not looked at further.
        assert_eq!(root_entry(0xffe, 1), Err(DmaFaultReason::RootNotPresent));
        for (l, h) in [
            (lo | 0x2, hi),
            (lo | (1 << 11), hi),
            (lo, 1),
            (lo | (1 << 48), hi),
        ] {
            assert_eq!(
                root_entry(l, h),
                Err(DmaFaultReason::RootReserved),
                "{l:#x} {h:#x}"
            );
        }
    }

    #[test]
    fn context_entries() {
        let (lo, hi) = translated(0x5000, AW_48, 0x42, false);
        assert_eq!(
            context_entry(lo, hi, FULL),
            Ok(Context {
                domain: 0x42,
                kind: ContextKind::Translated {
                    root: 0x5000,
                    levels: Levels::Four
                },
                fpd: false
            })
        );
        let (lo3, hi3) = translated(0x5000, AW_39, 7, true);
        let c = context_entry(lo3, hi3, FULL).unwrap();
        assert_eq!(
            c.kind,
            ContextKind::Translated {
                root: 0x5000,
                levels: Levels::Three
            }
        );
        assert!(c.fpd);
        let (plo, phi) = pass_through(3);
        assert_eq!(
            context_entry(plo, phi, FULL).unwrap().kind,
            ContextKind::PassThrough
        );
    }

    #[test]
    fn context_faults() {
        let (lo, hi) = translated(0x5000, AW_48, 1, false);
        assert_eq!(
            context_entry(0, hi, FULL),
            Err(DmaFaultReason::ContextNotPresent)
        );
        assert!(context_fpd(CONTEXT_FPD), "FPD counts even without P");
        for (l, h) in [
            (lo | (1 << 4), hi),
            (lo | (1 << 11), hi),
            (lo | (1 << 50), hi),
            (lo, hi | (1 << 7)),
            (lo, hi | (1 << 24)),
            (lo, hi | (1 << 63)),
        ] {
            assert_eq!(
                context_entry(l, h, FULL),
                Err(DmaFaultReason::ContextReserved)
            );
        }
        // Ignored bits 70:67 are fine.
        assert!(context_entry(lo, hi | (0xf << 3), FULL).is_ok());
        // Address widths outside SAGAW, translation types not supported.
        for aw in [0u8, 3, 4, 7] {
            let (l, h) = translated(0x5000, aw, 1, false);
            assert_eq!(
                context_entry(l, h, FULL),
                Err(DmaFaultReason::ContextInvalid)
            );
        }
        let only39 = ContextSupport {
            sagaw: SAGAW_39,
            pass_through: false,
        };
        assert_eq!(
            context_entry(lo, hi, only39),
            Err(DmaFaultReason::ContextInvalid)
        );
        let (plo, phi) = pass_through(3);
        assert_eq!(
            context_entry(plo, phi, only39),
            Err(DmaFaultReason::ContextInvalid)
        );
        for tt in [TT_DEVICE_TLB, 0b11] {
            let l = (lo & !(CONTEXT_TT_MASK << CONTEXT_TT_SHIFT)) | (tt << CONTEXT_TT_SHIFT);
            assert_eq!(
                context_entry(l, hi, FULL),
                Err(DmaFaultReason::ContextInvalid)
            );
        }
    }
}
