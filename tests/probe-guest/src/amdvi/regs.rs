//! AMD-Vi register offsets and bit layouts (the specification's MMIO chapter, with the names
//! Linux uses in `drivers/iommu/amd/amd_iommu_types.h`).

/// Size of the register window the probe maps (the control page and the pointer page).
pub const WINDOW: u64 = 0x4000;

/// Device table base (64-bit): base 51:12, size 8:0 (pages - 1).
pub const DEV_TABLE_BASE: u64 = 0x0000;
/// Command buffer base (64-bit): base 51:12, ComLen 59:56.
pub const CMD_BUF_BASE: u64 = 0x0008;
/// Event log base (64-bit): base 51:12, EventLen 59:56.
pub const EVT_LOG_BASE: u64 = 0x0010;
/// Control (64-bit).
pub const CONTROL: u64 = 0x0018;
/// Exclusion base and limit (64-bit).
pub const EXCL_BASE: u64 = 0x0020;
pub const EXCL_LIMIT: u64 = 0x0028;
/// Extended feature register (64-bit, read-only).
pub const EXT_FEATURES: u64 = 0x0030;
/// PPR log base (64-bit).
pub const PPR_LOG_BASE: u64 = 0x0038;
/// GA log base (64-bit): base 51:12, GALogLen 59:56.
pub const GA_LOG_BASE: u64 = 0x00e0;
/// GA log tail mirror address (64-bit, bits 51:3).
pub const GA_LOG_TAIL_ADDR: u64 = 0x00e8;
/// XT interrupt control registers (64-bit): event log / completion wait, PPR, GA log.
pub const XT_EVT_INT: u64 = 0x0170;
pub const XT_PPR_INT: u64 = 0x0178;
pub const XT_GA_INT: u64 = 0x0180;
/// Command buffer head and tail (byte offsets 18:4).
pub const CMD_HEAD: u64 = 0x2000;
pub const CMD_TAIL: u64 = 0x2008;
/// Event log head and tail (byte offsets 18:4).
pub const EVT_HEAD: u64 = 0x2010;
pub const EVT_TAIL: u64 = 0x2018;
/// Status (bits 31:0 used).
pub const STATUS: u64 = 0x2020;
/// PPR log head and tail.
pub const PPR_HEAD: u64 = 0x2030;
pub const PPR_TAIL: u64 = 0x2038;
/// GA log head and tail (byte offsets 18:3).
pub const GA_HEAD: u64 = 0x2040;
pub const GA_TAIL: u64 = 0x2048;

/// Control bits.
pub const CTRL_IOMMU_EN: u64 = 1 << 0;
pub const CTRL_HT_TUN_EN: u64 = 1 << 1;
pub const CTRL_EVT_LOG_EN: u64 = 1 << 2;
pub const CTRL_EVT_INT_EN: u64 = 1 << 3;
pub const CTRL_COMWAIT_INT_EN: u64 = 1 << 4;
/// InvTimeOut (7:5) and Linux's 1-second setting.
pub const CTRL_INV_TIMEOUT_SHIFT: u32 = 5;
pub const CTRL_INV_TIMEOUT_MASK: u64 = 0x7 << CTRL_INV_TIMEOUT_SHIFT;
pub const INV_TIMEOUT_1S: u64 = 4;
pub const CTRL_PASS_PW: u64 = 1 << 8;
pub const CTRL_RES_PASS_PW: u64 = 1 << 9;
pub const CTRL_COHERENT: u64 = 1 << 10;
pub const CTRL_ISOC: u64 = 1 << 11;
pub const CTRL_CMDBUF_EN: u64 = 1 << 12;
pub const CTRL_PPR_LOG_EN: u64 = 1 << 13;
pub const CTRL_PPR_INT_EN: u64 = 1 << 14;
pub const CTRL_PPR_EN: u64 = 1 << 15;
pub const CTRL_GT_EN: u64 = 1 << 16;
pub const CTRL_GA_EN: u64 = 1 << 17;
/// GAMEn (27:25): 001b = guest virtual APIC mode.
pub const CTRL_GAM_SHIFT: u32 = 25;
pub const CTRL_GAM_MASK: u64 = 0x7 << CTRL_GAM_SHIFT;
pub const GAM_VAPIC: u64 = 1;
pub const CTRL_GALOG_EN: u64 = 1 << 28;
pub const CTRL_GAINT_EN: u64 = 1 << 29;
pub const CTRL_XT_EN: u64 = 1 << 50;
pub const CTRL_INTCAPXT_EN: u64 = 1 << 51;
pub const CTRL_IRTCACHEDIS: u64 = 1 << 59;

/// IVHD flags that map to control bits (Linux's `iommu_init_flags`).
pub const IVHD_FLAG_HT_TUN_EN: u8 = 1 << 0;
pub const IVHD_FLAG_PASS_PW: u8 = 1 << 1;
pub const IVHD_FLAG_RES_PASS_PW: u8 = 1 << 2;
pub const IVHD_FLAG_ISOC: u8 = 1 << 3;

/// Status bits.
pub const STATUS_EVT_OVERFLOW: u32 = 1 << 0;
pub const STATUS_EVT_INT: u32 = 1 << 1;
pub const STATUS_COMWAIT_INT: u32 = 1 << 2;
pub const STATUS_EVT_RUN: u32 = 1 << 3;
pub const STATUS_CMDBUF_RUN: u32 = 1 << 4;
pub const STATUS_GALOG_RUN: u32 = 1 << 8;
pub const STATUS_GALOG_OVERFLOW: u32 = 1 << 9;
pub const STATUS_GA_INT: u32 = 1 << 10;
/// Status bits software clears by writing 1.
pub const STATUS_RW1C: u32 = STATUS_EVT_OVERFLOW
    | STATUS_EVT_INT
    | STATUS_COMWAIT_INT
    | STATUS_GALOG_OVERFLOW
    | STATUS_GA_INT;

/// Extended features: XTSup (x2APIC), IASup (INVALIDATE_IOMMU_ALL), GASup (128-bit IRTEs),
/// GAMSup (23:21; 001b = guest virtual APIC mode).
pub const EFR_XT_SUP: u64 = 1 << 2;
pub const EFR_IA_SUP: u64 = 1 << 6;
pub const EFR_GA_SUP: u64 = 1 << 7;
pub const EFR_GAM_SHIFT: u32 = 21;
pub const EFR_GAM_MASK: u64 = 0x7;

/// XT interrupt control register: destination mode 2, destination 23:0 in 31:8, vector
/// 39:32, destination 31:24 in 63:56 (Linux's `union intcapxt`).
pub const XT_DEST_LO_SHIFT: u32 = 8;
pub const XT_DEST_LO_MASK: u64 = 0xff_ffff;
pub const XT_VECTOR_SHIFT: u32 = 32;
pub const XT_DEST_HI_SHIFT: u32 = 56;
pub const XT_DEST_LO_BITS: u32 = 24;

/// The XT register value for fixed, physical delivery of `vector` to x2APIC ID `dest`.
pub fn xt_interrupt(vector: u8, dest: u32) -> u64 {
    ((u64::from(dest) & XT_DEST_LO_MASK) << XT_DEST_LO_SHIFT)
        | (u64::from(vector) << XT_VECTOR_SHIFT)
        | (u64::from(dest >> XT_DEST_LO_BITS) << XT_DEST_HI_SHIFT)
}
