//! Device table entries: the interrupt-remapping half of an AMD-Vi DTE.
//!
//! The device table is indexed by device ID (the requester ID, bus << 8 | devfn); each
//! entry is 256 bits, four little-endian qwords. Interrupt remapping uses:
//!
//! | qword | bits  | field |
//! |-------|-------|-------|
//! | 1     | 15:0  | DomainID (reported in events) |
//! | 1     | 41:40 | SysMgt: 01b forwards system-management (SMI) messages untranslated |
//! | 2     | 0     | IV: the interrupt fields below are valid |
//! | 2     | 4:1   | IntTabLen: the interrupt table has 2^IntTabLen entries (0..=11; 12..=15 reserved) |
//! | 2     | 5     | IG: do not log IO_PAGE_FAULT events for this device's interrupts |
//! | 2     | 51:6  | IntTableRootPtr: system physical address of the interrupt table (64-byte aligned) |
//! | 2     | 56    | InitPass: INIT messages pass untranslated |
//! | 2     | 57    | EIntPass: ExtINT messages pass untranslated |
//! | 2     | 58    | NMIPass: NMI messages pass untranslated |
//! | 2     | 61:60 | IntCtl: fixed/arbitrated interrupts are 00b target-aborted, 01b forwarded unmapped, 10b remapped, 11b reserved |
//! | 2     | 62    | Lint0Pass |
//! | 2     | 63    | Lint1Pass |
//!
//! With IV = 0 the interrupt fields are ignored and every interrupt from the device passes
//! unmapped, whatever DTE.V says: V and TV govern DMA translation, which this model does
//! not do. The DMA half of the entry (qwords 0, 1 and 3) is therefore not checked; in the
//! interrupt half a reserved encoding (IntCtl = 11b, IntTabLen above 1011b) makes the entry
//! illegal when IV = 1 (event ILLEGAL_DEV_TABLE_ENTRY). Bits that newer specification
//! revisions give meanings for other features (e.g. guest paging mode in qword 2 bits
//! 55:54) are ignored, as hardware without those features ignores them.

use thiserror::Error;

/// Size in bytes of one device table entry.
pub const DTE_SIZE: usize = 32;
/// Qwords per device table entry.
const DTE_QWORDS: usize = 4;

/// Qword 1: mask of the domain ID.
const DTE_DOMAIN_ID_MASK: u64 = 0xffff;
/// Qword 1: shift of SysMgt (41:40).
const DTE_SYSMGT_SHIFT: u32 = 40;
/// Qword 1: SysMgt value that forwards SMI messages untranslated.
const DTE_SYSMGT_FORWARD: u64 = 0b01;
/// Qword 2: IV.
const DTE_IV: u64 = 1 << 0;
/// Qword 2: shift of IntTabLen (4:1).
const DTE_INTTABLEN_SHIFT: u32 = 1;
/// Qword 2: IG.
const DTE_IG: u64 = 1 << 5;
/// Qword 2: IntTableRootPtr, bits 51:6 in place.
const DTE_INT_ROOT_MASK: u64 = 0x000f_ffff_ffff_ffc0;
/// Qword 2: InitPass.
const DTE_INIT_PASS: u64 = 1 << 56;
/// Qword 2: EIntPass.
const DTE_EINT_PASS: u64 = 1 << 57;
/// Qword 2: NMIPass.
const DTE_NMI_PASS: u64 = 1 << 58;
/// Qword 2: shift of IntCtl (61:60).
const DTE_INTCTL_SHIFT: u32 = 60;
/// Qword 2: Lint0Pass.
const DTE_LINT0_PASS: u64 = 1 << 62;
/// Qword 2: Lint1Pass.
const DTE_LINT1_PASS: u64 = 1 << 63;
/// Mask (after shifting) of two-bit fields.
const TWO_BITS: u64 = 0x3;
/// Mask (after shifting) of four-bit fields.
const FOUR_BITS: u64 = 0xf;
/// Largest IntTabLen encoding: 2^11 = 2048 entries.
pub const MAX_INT_TAB_LEN: u8 = 11;

/// What the DTE says about fixed and arbitrated interrupts (IntCtl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntCtl {
    /// 00b: target abort.
    Abort,
    /// 01b: forwarded unmapped.
    Forward,
    /// 10b: remapped through the interrupt table.
    Remap,
}

/// Why a DTE with IV = 1 is illegal.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DteError {
    /// IntCtl holds the reserved encoding 11b.
    #[error("reserved IntCtl encoding 11b")]
    ReservedIntCtl,
    /// IntTabLen names more than 2048 entries.
    #[error("reserved IntTabLen {0:#x}")]
    ReservedIntTabLen(u8),
}

/// The interrupt fields of a DTE with IV = 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptRemapping {
    /// log2 of the number of interrupt table entries (0..=11).
    pub table_len_log2: u8,
    /// IG: IO_PAGE_FAULT events for this device's interrupts are not logged.
    pub ignore_unmapped: bool,
    /// System physical address of the interrupt table.
    pub table_root: u64,
    /// What happens to fixed and arbitrated interrupts.
    pub int_ctl: IntCtl,
    /// INIT messages pass untranslated.
    pub init_pass: bool,
    /// ExtINT messages pass untranslated.
    pub eint_pass: bool,
    /// NMI messages pass untranslated.
    pub nmi_pass: bool,
    /// LINT0 messages pass untranslated (decoded for completeness; MSIs never carry them).
    pub lint0_pass: bool,
    /// LINT1 messages pass untranslated (decoded for completeness).
    pub lint1_pass: bool,
    /// SysMgt = 01b: SMI messages pass untranslated.
    pub smi_pass: bool,
}

impl InterruptRemapping {
    /// Number of entries in the interrupt table.
    pub fn entries(&self) -> u32 {
        1u32 << self.table_len_log2
    }
}

/// A device table entry as read from guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Dte {
    /// The four qwords.
    pub qwords: [u64; DTE_QWORDS],
}

impl Dte {
    /// Builds a DTE from its 32 little-endian bytes.
    pub fn from_bytes(bytes: [u8; DTE_SIZE]) -> Self {
        let mut qwords = [0u64; DTE_QWORDS];
        for (q, chunk) in qwords.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *q = u64::from_le_bytes(b);
        }
        Dte { qwords }
    }

    /// The DTE's 32 bytes.
    pub fn to_bytes(&self) -> [u8; DTE_SIZE] {
        let mut bytes = [0u8; DTE_SIZE];
        for (chunk, q) in bytes.chunks_exact_mut(8).zip(self.qwords) {
            chunk.copy_from_slice(&q.to_le_bytes());
        }
        bytes
    }

    fn qword(&self, n: usize) -> u64 {
        self.qwords.get(n).copied().unwrap_or(0)
    }

    /// The domain ID (qword 1 bits 15:0), which events report.
    pub fn domain_id(&self) -> u16 {
        (self.qword(1) & DTE_DOMAIN_ID_MASK) as u16
    }

    /// The interrupt fields: `Ok(None)` when IV = 0 (interrupts pass unmapped), an error
    /// when IV = 1 and a field holds a reserved encoding.
    pub fn interrupt_remapping(&self) -> Result<Option<InterruptRemapping>, DteError> {
        let q2 = self.qword(2);
        if q2 & DTE_IV == 0 {
            return Ok(None);
        }
        let len = ((q2 >> DTE_INTTABLEN_SHIFT) & FOUR_BITS) as u8;
        if len > MAX_INT_TAB_LEN {
            return Err(DteError::ReservedIntTabLen(len));
        }
        let int_ctl = match (q2 >> DTE_INTCTL_SHIFT) & TWO_BITS {
            0 => IntCtl::Abort,
            1 => IntCtl::Forward,
            2 => IntCtl::Remap,
            _ => return Err(DteError::ReservedIntCtl),
        };
        Ok(Some(InterruptRemapping {
            table_len_log2: len,
            ignore_unmapped: q2 & DTE_IG != 0,
            table_root: q2 & DTE_INT_ROOT_MASK,
            int_ctl,
            init_pass: q2 & DTE_INIT_PASS != 0,
            eint_pass: q2 & DTE_EINT_PASS != 0,
            nmi_pass: q2 & DTE_NMI_PASS != 0,
            lint0_pass: q2 & DTE_LINT0_PASS != 0,
            lint1_pass: q2 & DTE_LINT1_PASS != 0,
            smi_pass: (self.qword(1) >> DTE_SYSMGT_SHIFT) & TWO_BITS == DTE_SYSMGT_FORWARD,
        }))
    }

    /// True when IG is set (meaningful only with IV = 1).
    pub fn ignore_unmapped(&self) -> bool {
        self.qword(2) & DTE_IV != 0 && self.qword(2) & DTE_IG != 0
    }
}

/// Builders for DTEs, for tests here and in the VMM.
pub mod build {
    use super::*;

    /// A DTE whose interrupts are remapped through the table at `root` with
    /// 2^`len_log2` entries, in domain `domain_id`, as Linux writes it (V = 1, TV = 1 so
    /// DMA is blocked, IV = 1, IntCtl = 10b).
    pub fn remapped(domain_id: u16, root: u64, len_log2: u8) -> Dte {
        let mut dte = Dte::default();
        dte.qwords[0] = 0x3;
        dte.qwords[1] = u64::from(domain_id);
        dte.qwords[2] = DTE_IV
            | ((u64::from(len_log2) & FOUR_BITS) << DTE_INTTABLEN_SHIFT)
            | (root & DTE_INT_ROOT_MASK)
            | (2 << DTE_INTCTL_SHIFT);
        dte
    }

    /// `dte` with IntCtl set to the raw two-bit `int_ctl`.
    pub fn with_int_ctl(mut dte: Dte, int_ctl: u8) -> Dte {
        dte.qwords[2] &= !(TWO_BITS << DTE_INTCTL_SHIFT);
        dte.qwords[2] |= (u64::from(int_ctl) & TWO_BITS) << DTE_INTCTL_SHIFT;
        dte
    }

    /// `dte` with IG set or clear.
    pub fn with_ignore_unmapped(mut dte: Dte, ig: bool) -> Dte {
        dte.qwords[2] &= !DTE_IG;
        if ig {
            dte.qwords[2] |= DTE_IG;
        }
        dte
    }

    /// `dte` with the NMI, INIT and ExtINT pass bits and SysMgt forwarding as given.
    pub fn with_pass(mut dte: Dte, nmi: bool, init: bool, eint: bool, smi: bool) -> Dte {
        for (on, bit) in [
            (nmi, DTE_NMI_PASS),
            (init, DTE_INIT_PASS),
            (eint, DTE_EINT_PASS),
        ] {
            dte.qwords[2] &= !bit;
            if on {
                dte.qwords[2] |= bit;
            }
        }
        dte.qwords[1] &= !(TWO_BITS << DTE_SYSMGT_SHIFT);
        if smi {
            dte.qwords[1] |= DTE_SYSMGT_FORWARD << DTE_SYSMGT_SHIFT;
        }
        dte
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_dte_decodes() {
        // What Linux writes: data[2] = root | (2 << 60) | (9 << 1) | 1.
        let root = 0x1234_5680u64;
        let mut dte = Dte::default();
        dte.qwords[2] = root | (2 << 60) | (9 << 1) | 1;
        dte.qwords[1] = 0x42;
        let ir = dte.interrupt_remapping().unwrap().unwrap();
        assert_eq!(ir.table_len_log2, 9);
        assert_eq!(ir.entries(), 512);
        assert_eq!(ir.table_root, root);
        assert_eq!(ir.int_ctl, IntCtl::Remap);
        assert!(!ir.ignore_unmapped && !ir.nmi_pass && !ir.smi_pass);
        assert_eq!(dte.domain_id(), 0x42);
        assert_eq!(Dte::from_bytes(dte.to_bytes()), dte);
        assert_eq!(
            build::remapped(0x42, root, 9).interrupt_remapping(),
            Ok(Some(ir))
        );
    }

    #[test]
    fn iv_clear_ignores_interrupt_fields() {
        let mut dte = Dte::default();
        dte.qwords[2] = 3 << 60 | (15 << 1);
        assert_eq!(dte.interrupt_remapping(), Ok(None));
        assert!(!dte.ignore_unmapped());
    }

    #[test]
    fn reserved_encodings() {
        let dte = build::with_int_ctl(build::remapped(1, 0x1000, 9), 3);
        assert_eq!(dte.interrupt_remapping(), Err(DteError::ReservedIntCtl));
        let dte = build::remapped(1, 0x1000, 12);
        assert_eq!(
            dte.interrupt_remapping(),
            Err(DteError::ReservedIntTabLen(12))
        );
        assert!(build::remapped(1, 0x1000, 11).interrupt_remapping().is_ok());
    }

    #[test]
    fn pass_bits_and_ig() {
        let dte = build::with_pass(build::remapped(1, 0x1000, 0), true, false, true, true);
        let dte = build::with_ignore_unmapped(dte, true);
        let ir = dte.interrupt_remapping().unwrap().unwrap();
        assert!(ir.nmi_pass && !ir.init_pass && ir.eint_pass && ir.smi_pass);
        assert!(ir.ignore_unmapped && dte.ignore_unmapped());
        // Linux's bit numbers: NMI pass 0xba, INIT pass 0xb8, ExtINT pass 0xb9.
        assert_eq!(dte.qwords[2] >> (0xba - 128) & 1, 1);
        assert_eq!(dte.qwords[2] >> (0xb9 - 128) & 1, 1);
        assert_eq!(dte.qwords[1] >> (0x68 - 64) & 3, 1);
    }
}
