//! AMD-Vi register offsets, field layouts, and the feature values this model reports.
//!
//! Offsets and bit positions follow the AMD I/O Virtualization Technology (IOMMU)
//! specification's MMIO register chapter, with the names Linux uses in
//! `drivers/iommu/amd/amd_iommu_types.h`. The register window is 16 KiB, the size Linux maps
//! when the unit reports no performance counters (`MMIO_CNTR_CONF_OFFSET`). Offsets that are
//! not named here read as zero and ignore writes, as reserved registers do.
//!
//! # What the extended feature register promises
//!
//! The model does interrupt remapping (with the command buffer and event log that go with
//! it) and guest virtual APIC posting, and nothing else:
//!
//! * `XTSup` (bit 2, configurable): 32-bit x2APIC destinations in 128-bit IRTEs (control
//!   `XTEn`) and the XT interrupt control registers for the unit's own interrupts
//!   (`IntCapXTEn`). Linux needs it for x2APIC with interrupt remapping, i.e. for APIC IDs
//!   above 255; it also needs `GASup`, so XT implies GA here.
//! * `IASup` (bit 6): `INVALIDATE_IOMMU_ALL` is implemented. Without it Linux flushes every
//!   device table entry and interrupt table one command at a time (2 × 65536 commands).
//! * `GASup` (bit 7, configurable): the 128-bit IRTE format (control `GAEn`).
//! * `GAMSup` = 001b (bits 23:21, configurable): guest virtual APIC mode, i.e. guest-mode
//!   IRTEs (control `GAMEn` = 001b) and the GA log. Linux then reports "Virtual APIC
//!   enabled" and lets KVM post interrupts.
//! * Nothing else: no prefetch, PPR, NX, guest translation (`GTSup`), hardware error or
//!   performance counter registers, `HATS`/`GATS` = 0, no MSI capability mirror in MMIO.
//!   The unit does **no DMA translation**; the IVRS builder marks host address translation
//!   as disabled (IVHD attribute `HATDis`) so a recent Linux uses the unit for interrupt
//!   remapping only. Older guests that ignore `HATDis` must be run with `iommu=pt`, or DMA
//!   of devices behind the unit goes untranslated (see the module documentation of
//!   [`super`]).

// ---- Window -------------------------------------------------------------------------------

/// Size of the register window (16 KiB: the control page at 0 and the pointer page at
/// 0x2000).
pub const AMDVI_MMIO_SIZE: u64 = 0x4000;

// ---- Register offsets ---------------------------------------------------------------------

/// Device table base address register (64-bit): base 51:12, size 8:0.
pub const DEV_TAB_BASE_REG: u64 = 0x0000;
/// Command buffer base address register (64-bit): base 51:12, ComLen 59:56.
pub const CMD_BUF_BASE_REG: u64 = 0x0008;
/// Event log base address register (64-bit): base 51:12, EventLen 59:56.
pub const EVT_LOG_BASE_REG: u64 = 0x0010;
/// Control register (64-bit).
pub const CONTROL_REG: u64 = 0x0018;
/// Exclusion range base register (64-bit; stored, no effect without DMA translation).
pub const EXCL_BASE_REG: u64 = 0x0020;
/// Exclusion range limit register (64-bit; stored, no effect without DMA translation).
pub const EXCL_LIMIT_REG: u64 = 0x0028;
/// Extended feature register (64-bit, read-only).
pub const EXT_FEATURE_REG: u64 = 0x0030;
/// Guest virtual APIC log base address register (64-bit): base 51:12, GALogLen 59:56.
pub const GA_LOG_BASE_REG: u64 = 0x00e0;
/// Guest virtual APIC log tail address register (64-bit): 51:3, where the unit mirrors
/// the GA log tail pointer (8 bytes) after each entry it writes, once software programmed
/// it (Linux points it at an 8-byte buffer of its own); 0 means no mirror.
pub const GA_LOG_TAIL_ADDR_REG: u64 = 0x00e8;
/// XT event interrupt control register (64-bit): event log and completion-wait
/// interrupts while `IntCapXTEn` is set.
pub const XT_EVT_INT_CTL_REG: u64 = 0x0170;
/// XT PPR interrupt control register (64-bit; stored, the unit has no PPR log).
pub const XT_PPR_INT_CTL_REG: u64 = 0x0178;
/// XT GA log interrupt control register (64-bit).
pub const XT_GA_INT_CTL_REG: u64 = 0x0180;
/// Command buffer head pointer register (64-bit): byte offset 18:4.
pub const CMD_HEAD_REG: u64 = 0x2000;
/// Command buffer tail pointer register (64-bit): byte offset 18:4.
pub const CMD_TAIL_REG: u64 = 0x2008;
/// Event log head pointer register (64-bit): byte offset 18:4.
pub const EVT_HEAD_REG: u64 = 0x2010;
/// Event log tail pointer register (64-bit): byte offset 18:4.
pub const EVT_TAIL_REG: u64 = 0x2018;
/// Status register (64-bit; bits 31:0 implemented).
pub const STATUS_REG: u64 = 0x2020;
/// GA log head pointer register (64-bit): byte offset 18:3.
pub const GA_HEAD_REG: u64 = 0x2040;
/// GA log tail pointer register (64-bit): byte offset 18:3.
pub const GA_TAIL_REG: u64 = 0x2048;

// ---- Base address registers -------------------------------------------------------------

/// Bits 51:12 of a base address register: the 4 KiB-aligned system physical address.
pub const BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Shift of the length fields (ComLen, EventLen, GALogLen) in bits 59:56.
pub const LEN_SHIFT: u32 = 56;
/// Mask (after shifting) of a length field.
pub const LEN_MASK: u64 = 0xf;
/// Device table base register: size field 8:0 ((size + 1) × 4 KiB of table).
pub const DEV_TAB_SIZE_MASK: u64 = 0x1ff;
/// Bytes of device table one unit of the size field adds.
pub const DEV_TAB_SIZE_UNIT: u64 = 0x1000;
/// Exclusion base register bits stored: base 51:12, ExAllow bit 1, ExEn bit 0.
pub const EXCL_BASE_WRITABLE: u64 = BASE_ADDR_MASK | 0x3;
/// GA log tail address register bits stored: 51:3.
pub const GA_LOG_TAIL_ADDR_MASK: u64 = 0x000f_ffff_ffff_fff8;

// ---- Control register ---------------------------------------------------------------------

/// IommuEn: the unit translates (here: remaps interrupts).
pub const CTRL_IOMMU_EN: u64 = 1 << 0;
/// HtTunEn (stored, no effect).
pub const CTRL_HT_TUN_EN: u64 = 1 << 1;
/// EventLogEn: events are written to the event log.
pub const CTRL_EVT_LOG_EN: u64 = 1 << 2;
/// EventIntEn: event log interrupts.
pub const CTRL_EVT_INT_EN: u64 = 1 << 3;
/// ComWaitIntEn: completion-wait interrupts.
pub const CTRL_COMWAIT_INT_EN: u64 = 1 << 4;
/// InvTimeOut 7:5 (stored, no effect: no device IOTLB).
pub const CTRL_INV_TIMEOUT_MASK: u64 = 0x7 << 5;
/// PassPW, ResPassPW, Coherent, Isoc (bits 11:8; stored, no effect).
pub const CTRL_BUS_ATTRS_MASK: u64 = 0xf << 8;
/// CmdBufEn: the command buffer is fetched.
pub const CTRL_CMDBUF_EN: u64 = 1 << 12;
/// GAEn: 128-bit IRTEs (guest virtual APIC format).
pub const CTRL_GA_EN: u64 = 1 << 17;
/// Shift of GAMEn (27:25): guest APIC mode, 001b = guest virtual APIC mode.
pub const CTRL_GAM_SHIFT: u32 = 25;
/// Mask of the GAMEn field.
pub const CTRL_GAM_MASK: u64 = 0x7 << CTRL_GAM_SHIFT;
/// GAMEn value selecting guest virtual APIC mode (guest-mode IRTEs are honoured).
pub const CTRL_GAM_VAPIC: u64 = 1;
/// GALogEn: guest virtual APIC log.
pub const CTRL_GALOG_EN: u64 = 1 << 28;
/// GAIntEn: GA log interrupts.
pub const CTRL_GAINT_EN: u64 = 1 << 29;
/// XTEn: 32-bit destinations in 128-bit IRTEs.
pub const CTRL_XT_EN: u64 = 1 << 50;
/// IntCapXTEn: the unit's own interrupts use the XT interrupt control registers.
pub const CTRL_INTCAPXT_EN: u64 = 1 << 51;

/// The control bits every configuration implements.
pub const CTRL_BASE_WRITABLE: u64 = CTRL_IOMMU_EN
    | CTRL_HT_TUN_EN
    | CTRL_EVT_LOG_EN
    | CTRL_EVT_INT_EN
    | CTRL_COMWAIT_INT_EN
    | CTRL_INV_TIMEOUT_MASK
    | CTRL_BUS_ATTRS_MASK
    | CTRL_CMDBUF_EN;
/// The control bits of the 128-bit IRTE format (GASup).
pub const CTRL_GA_WRITABLE: u64 = CTRL_GA_EN;
/// The control bits of guest virtual APIC mode (GAMSup = vAPIC).
pub const CTRL_VAPIC_WRITABLE: u64 = CTRL_GAM_MASK | CTRL_GALOG_EN | CTRL_GAINT_EN;
/// The control bits of x2APIC support (XTSup).
pub const CTRL_XT_WRITABLE: u64 = CTRL_XT_EN | CTRL_INTCAPXT_EN;
/// Control bits whose change alters what an interrupt message translates to.
pub const CTRL_REMAP_STATE: u64 = CTRL_IOMMU_EN | CTRL_GA_EN | CTRL_GAM_MASK | CTRL_XT_EN;

// ---- Status register ----------------------------------------------------------------------

/// EventOverflow (RW1C): an event was lost because the event log was full.
pub const STATUS_EVT_OVERFLOW: u32 = 1 << 0;
/// EventLogInt (RW1C): an event was written to the event log.
pub const STATUS_EVT_INT: u32 = 1 << 1;
/// ComWaitInt (RW1C): a COMPLETION_WAIT with its interrupt bit completed.
pub const STATUS_COMWAIT_INT: u32 = 1 << 2;
/// EventLogRun (read-only): the event log accepts events.
pub const STATUS_EVT_RUN: u32 = 1 << 3;
/// CmdBufRun (read-only): the command buffer is being fetched.
pub const STATUS_CMDBUF_RUN: u32 = 1 << 4;
/// GALogRun (read-only): the GA log accepts entries.
pub const STATUS_GALOG_RUN: u32 = 1 << 8;
/// GALogOverflow (RW1C): a GA log entry was lost because the GA log was full.
pub const STATUS_GALOG_OVERFLOW: u32 = 1 << 9;
/// GAInt (RW1C): an entry was written to the GA log.
pub const STATUS_GA_INT: u32 = 1 << 10;
/// Status bits software clears by writing 1.
pub const STATUS_RW1C: u32 = STATUS_EVT_OVERFLOW
    | STATUS_EVT_INT
    | STATUS_COMWAIT_INT
    | STATUS_GALOG_OVERFLOW
    | STATUS_GA_INT;

// ---- Head / tail pointers -----------------------------------------------------------------

/// Command buffer and event log pointers: byte offsets of 16-byte entries, bits 18:4.
pub const PTR16_MASK: u64 = 0x7_fff0;
/// GA log pointers: byte offsets of 8-byte entries, bits 18:3.
pub const PTR8_MASK: u64 = 0x7_fff8;

// ---- Extended feature register --------------------------------------------------------------

/// XTSup: x2APIC (32-bit) interrupt destinations.
pub const EFR_XT_SUP: u64 = 1 << 2;
/// IASup: INVALIDATE_IOMMU_ALL.
pub const EFR_IA_SUP: u64 = 1 << 6;
/// GASup: guest virtual APIC (128-bit IRTE) format.
pub const EFR_GA_SUP: u64 = 1 << 7;
/// Shift of GAMSup (23:21): supported guest APIC modes.
pub const EFR_GAM_SUP_SHIFT: u32 = 21;
/// GAMSup value: guest virtual APIC mode supported.
pub const EFR_GAM_SUP_VAPIC: u64 = 1;

/// Builds the extended feature register for a unit with the given features (see the module
/// documentation for what each one promises). `xt` and `vapic` imply `ga`.
pub fn extended_features(xt: bool, ga: bool, vapic: bool) -> u64 {
    let mut efr = EFR_IA_SUP;
    if ga || xt || vapic {
        efr |= EFR_GA_SUP;
    }
    if xt {
        efr |= EFR_XT_SUP;
    }
    if vapic {
        efr |= EFR_GAM_SUP_VAPIC << EFR_GAM_SUP_SHIFT;
    }
    efr
}

/// The control bits a unit with extended features `efr` implements.
pub fn control_writable(efr: u64) -> u64 {
    let mut writable = CTRL_BASE_WRITABLE;
    if efr & EFR_GA_SUP != 0 {
        writable |= CTRL_GA_WRITABLE;
    }
    if (efr >> EFR_GAM_SUP_SHIFT) & 0x7 == EFR_GAM_SUP_VAPIC {
        writable |= CTRL_VAPIC_WRITABLE;
    }
    if efr & EFR_XT_SUP != 0 {
        writable |= CTRL_XT_WRITABLE;
    }
    writable
}

// ---- XT interrupt control registers -------------------------------------------------------

/// XT interrupt control: destination mode (1 = logical), bit 2.
pub const XT_DM: u64 = 1 << 2;
/// XT interrupt control: shift of destination bits 23:0 (register bits 31:8).
pub const XT_DEST_LO_SHIFT: u32 = 8;
/// XT interrupt control: mask (after shifting) of destination bits 23:0.
pub const XT_DEST_LO_MASK: u64 = 0xff_ffff;
/// XT interrupt control: shift of the vector (39:32).
pub const XT_VECTOR_SHIFT: u32 = 32;
/// XT interrupt control: shift of destination bits 31:24 (register bits 63:56).
pub const XT_DEST_HI_SHIFT: u32 = 56;
/// XT interrupt control bits stored; the others are reserved.
pub const XT_WRITABLE: u64 = XT_DM
    | (XT_DEST_LO_MASK << XT_DEST_LO_SHIFT)
    | (0xff << XT_VECTOR_SHIFT)
    | (0xff << XT_DEST_HI_SHIFT);
/// Bits of a destination ID that live in the low destination field.
pub const DEST_LO_BITS: u32 = 24;

// ---- Access helpers -----------------------------------------------------------------------

/// Size of a dword register access.
pub const DWORD: usize = 4;
/// Size of a qword register access.
pub const QWORD: usize = 8;
/// Offset bits that select a byte inside a 64-bit register.
pub const REG_OFFSET_MASK: u64 = 0x7;
/// Bits in a byte.
pub const BYTE_BITS: u32 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efr_layout() {
        let efr = extended_features(true, true, true);
        assert_eq!(efr & EFR_XT_SUP, EFR_XT_SUP);
        assert_eq!(efr & EFR_GA_SUP, EFR_GA_SUP);
        assert_eq!(efr & EFR_IA_SUP, EFR_IA_SUP);
        assert_eq!((efr >> 21) & 7, 1, "GAMSup = vAPIC");
        assert_eq!(efr, 0x20_00c4);
        // Nothing about DMA translation: PreF, PPR, NX, GT, HE, PC, HATS, GATS all zero.
        assert_eq!(efr & 0x3f1b, 0);
        // XT implies GA.
        assert_eq!(
            extended_features(true, false, false) & EFR_GA_SUP,
            EFR_GA_SUP
        );
        assert_eq!(extended_features(false, false, false), EFR_IA_SUP);
    }

    #[test]
    fn control_writable_follows_features() {
        let none = control_writable(extended_features(false, false, false));
        assert_eq!(none & (CTRL_GA_EN | CTRL_XT_EN | CTRL_GALOG_EN), 0);
        let all = control_writable(extended_features(true, true, true));
        for bit in [
            CTRL_GA_EN,
            CTRL_XT_EN,
            CTRL_INTCAPXT_EN,
            CTRL_GALOG_EN,
            CTRL_GAINT_EN,
        ] {
            assert_eq!(all & bit, bit);
        }
        // Never writable: PPR (13..15), GT (16), IRTCacheDis (59).
        assert_eq!(all & ((0x7 << 13) | (1 << 16) | (1 << 59)), 0);
    }

    #[test]
    fn xt_mask_matches_linux_layout() {
        // union intcapxt: reserved 1:0, dest_mode_logical 2, reserved 7:3, destid_0_23
        // 31:8, vector 39:32, reserved 55:40, destid_24_31 63:56.
        assert_eq!(XT_WRITABLE, 0xff00_00ff_ffff_ff04);
    }
}
