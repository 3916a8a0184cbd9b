//! Device table entries (256 bits, four qwords), the parts the probe programs.
//!
//! | qword | bits | field |
//! |---|---|---|
//! | 0 | 0 | V: the DMA fields are valid |
//! | 0 | 1 | TV: the translation fields are valid (Linux sets V and TV for every device, so DMA of a device nobody set up is blocked) |
//! | 1 | 15:0 | domain ID (events report it) |
//! | 2 | 0 | IV: the interrupt fields are valid |
//! | 2 | 4:1 | IntTabLen: 2^IntTabLen table entries (Linux: 9; 12-15 reserved) |
//! | 2 | 5 | IG: no IO_PAGE_FAULT events for this device's interrupts |
//! | 2 | 51:6 | interrupt table root (64-byte aligned) |
//! | 2 | 61:60 | IntCtl: 00b abort, 01b forward unmapped, 10b remap, 11b reserved |
//!
//! Entry `d` of the table is at base + 32 * d. The probe writes qword 2 (the interrupt
//! half) last, so an entry never names a table before its other fields are in place, and
//! announces every change with INVALIDATE_DEVTAB_ENTRY, as Linux does (`iommu_flush_dte`).

use super::mem;

/// Bytes of one entry.
pub const DTE_BYTES: u64 = 32;
/// Entries of the probe's table (bus 0).
pub const ENTRIES: u32 = 256;
/// Qword 0: V and TV.
const Q0_VALID: u64 = 1 << 0;
const Q0_TRANSLATION_VALID: u64 = 1 << 1;
/// Qword 1: domain ID.
const Q1_DOMAIN_MASK: u64 = 0xffff;
/// Qword 2: IV.
const Q2_IV: u64 = 1 << 0;
/// Qword 2: shift of IntTabLen.
const Q2_INT_TAB_LEN_SHIFT: u32 = 1;
/// Qword 2: mask (after shifting) of IntTabLen.
const Q2_INT_TAB_LEN_MASK: u64 = 0xf;
/// Qword 2: IG.
const Q2_IG: u64 = 1 << 5;
/// Qword 2: the interrupt table root, bits 51:6 in place.
const Q2_ROOT_MASK: u64 = 0x000f_ffff_ffff_ffc0;
/// Qword 2: shift of IntCtl.
const Q2_INT_CTL_SHIFT: u32 = 60;
/// Largest legal IntTabLen (2048 entries).
pub const MAX_INT_TAB_LEN: u8 = 11;

/// What IntCtl says about fixed and arbitrated interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum IntCtl {
    /// 00b: target abort.
    Abort = 0,
    /// 01b: forwarded unmapped.
    Forward = 1,
    /// 10b: remapped through the table.
    Remap = 2,
    /// 11b: reserved (an illegal entry).
    Reserved = 3,
}

/// One entry's four qwords.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dte {
    /// Qwords 0..3.
    pub q: [u64; 4],
}

impl Dte {
    /// V and TV set, no interrupt fields (IV = 0: the device's interrupts pass unmapped), in
    /// domain `domain`: what Linux writes for every device before it sets up interrupts.
    pub fn blocked_dma(domain: u16) -> Dte {
        Dte {
            q: [
                Q0_VALID | Q0_TRANSLATION_VALID,
                u64::from(domain) & Q1_DOMAIN_MASK,
                0,
                0,
            ],
        }
    }

    /// [`Dte::blocked_dma`] with interrupts remapped through the table at `root` of
    /// 2^`len_log2` entries (Linux's `set_dte_irq_entry`).
    pub fn remapped(domain: u16, root: u64, len_log2: u8) -> Dte {
        Dte::blocked_dma(domain).with_interrupts(root, len_log2, IntCtl::Remap)
    }

    /// The entry with IV = 1 and the given interrupt fields (IntTabLen is taken as 4 bits,
    /// so reserved values can be written).
    pub fn with_interrupts(self, root: u64, len_log2: u8, int_ctl: IntCtl) -> Dte {
        let mut d = self;
        d.q[2] = Q2_IV
            | ((u64::from(len_log2) & Q2_INT_TAB_LEN_MASK) << Q2_INT_TAB_LEN_SHIFT)
            | (root & Q2_ROOT_MASK)
            | ((int_ctl as u64) << Q2_INT_CTL_SHIFT);
        d
    }

    /// The entry with IG set: the device's IO_PAGE_FAULT events are not logged.
    pub fn ignoring_faults(self) -> Dte {
        let mut d = self;
        d.q[2] |= Q2_IG;
        d
    }
}

/// The device table at its fixed place.
#[derive(Clone, Copy, Debug)]
pub struct DeviceTable {
    base: u64,
}

impl DeviceTable {
    /// The table (zeroed when the unit was enabled, see [`mem::reset`]).
    pub fn new() -> DeviceTable {
        DeviceTable {
            base: mem::address(mem::DEVICE_TABLE),
        }
    }

    /// The base register value: base | (size in 4 KiB pages - 1).
    pub fn register(&self) -> u64 {
        self.base | (mem::DEVICE_TABLE_BYTES / 0x1000 - 1)
    }

    /// Physical address of entry `device_id`.
    pub fn entry_address(&self, device_id: u16) -> Option<u64> {
        (u32::from(device_id) < ENTRIES).then(|| self.base + u64::from(device_id) * DTE_BYTES)
    }

    /// Writes entry `device_id` (qwords 0, 1, 3, then 2); `false` beyond the table.
    pub fn set(&self, device_id: u16, dte: Dte) -> bool {
        let Some(at) = self.entry_address(device_id) else {
            return false;
        };
        for q in [0, 1, 3, 2] {
            mem::write64(at + 8 * q as u64, dte.q[q]);
        }
        true
    }
}
