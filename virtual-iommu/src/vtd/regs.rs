//! VT-d register offsets, field layouts, and the capability values this model reports.
//!
//! Offsets and bit positions follow the Intel VT-d specification, chapter 10 ("Register
//! Descriptions"). Only the registers this model implements are named; every other offset
//! in the 4 KiB window reads as zero and ignores writes, as reserved registers do.
//!
//! # What the capability registers promise
//!
//! The model does DMA remapping (legacy root and context tables, second-level page
//! tables), interrupt remapping and queued invalidation:
//!
//! * `CAP.SAGAW = 0b00110`: 39-bit (3-level) and 48-bit (4-level) second-level tables;
//!   `CAP.MGAW` = 48 bits; `CAP.SLLPS = 0b11`: 2 MiB and 1 GiB superpages. With
//!   [`super::VtdConfig::dma_translation`] off the unit reports `SAGAW = 0` instead, as it
//!   did before DMA remapping existed: Linux (since c40aaaac1018, "Gracefully handle DMAR
//!   units with no supported address widths") then prints "No supported address widths.
//!   Not attempting DMA translation." and uses the unit for interrupt remapping only.
//! * `CAP.CM` (configurable, on by default): caching mode. The unit may cache not-present
//!   and invalid entries, so software invalidates after *every* change, mappings made
//!   included; that is what lets the VMM shadow a passed-through device's mappings into
//!   the host IOMMU at each invalidation.
//! * `CAP.PSI` with `CAP.MAMV` = 18: page-selective IOTLB invalidation of up to 2^18 pages
//!   (1 GiB) at once; `CAP.DRD`/`CAP.DWD`: read and write draining (every invalidation
//!   completes synchronously, so draining is implied).
//! * `CAP.ND = 6`: 16-bit domain IDs, as QEMU reports.
//! * `CAP.FRO`/`CAP.NFR`: the fault-recording registers at [`FRCD_REG`], one per
//!   configured record; DMA and interrupt-remapping faults share them.
//! * `CAP.PI` (configurable, on by default): posted-format IRTEs post into the guest's
//!   posted-interrupt descriptors (see [`super::posted`]). Linux offers posting to KVM only
//!   when every unit reports PI and the CPU has CX16 (it updates posted entries with
//!   `cmpxchg16b`); it changes nothing else about how Linux sets remapping up.
//! * No `ESIRTPS`, `ESRTPS`, `AFL`, `RWBF`, `PLMR`, `PHMR`, `ZLR`, `FL1GP`: the model does
//!   none of those.
//! * `ECAP.QI | ECAP.IR | ECAP.EIM` (EIM configurable), `ECAP.PT` (pass-through context
//!   entries, with DMA remapping), `ECAP.MHMV = 0xf` (index-selective IEC invalidation of
//!   up to 2^15 entries), `ECAP.IRO` pointing at the register-based IOTLB invalidation pair
//!   at [`IVA_REG`].
//! * `ECAP.C = 1`: the model reads remapping structures (page tables, context entries,
//!   interrupt-remapping entries) from guest memory through the coherent path every CPU
//!   access uses, so the guest need not flush caches after writing them (Linux skips
//!   `clflush` then).
//! * No `DT`, `SC`, `SMTS`, `PASID` and friends: no device-TLB, snoop control or scalable
//!   mode.

/// Guest-physical base of the VT-d unit's register window on the q35-like platform.
pub const VTD_MMIO_BASE: u64 = 0xfed9_0000;
/// Size of the register window (one 4 KiB page).
pub const VTD_MMIO_SIZE: u64 = 0x1000;

// ---- Register offsets -------------------------------------------------------------------

/// Version register (32-bit, read-only).
pub const VER_REG: u64 = 0x00;
/// Capability register (64-bit, read-only).
pub const CAP_REG: u64 = 0x08;
/// Extended capability register (64-bit, read-only).
pub const ECAP_REG: u64 = 0x10;
/// Global command register (32-bit, write-only; reads return 0).
pub const GCMD_REG: u64 = 0x18;
/// Global status register (32-bit, read-only).
pub const GSTS_REG: u64 = 0x1c;
/// Root table address register (64-bit).
pub const RTADDR_REG: u64 = 0x20;
/// Context command register (64-bit), register-based context-cache invalidation.
pub const CCMD_REG: u64 = 0x28;
/// Fault status register (32-bit).
pub const FSTS_REG: u64 = 0x34;
/// Fault event control register (32-bit).
pub const FECTL_REG: u64 = 0x38;
/// Fault event data register (32-bit).
pub const FEDATA_REG: u64 = 0x3c;
/// Fault event address register (32-bit).
pub const FEADDR_REG: u64 = 0x40;
/// Fault event upper address register (32-bit); carries destination bits 31:8 in x2APIC
/// mode.
pub const FEUADDR_REG: u64 = 0x44;
/// Invalidation queue head register (64-bit, read-only).
pub const IQH_REG: u64 = 0x80;
/// Invalidation queue tail register (64-bit).
pub const IQT_REG: u64 = 0x88;
/// Invalidation queue address register (64-bit).
pub const IQA_REG: u64 = 0x90;
/// Invalidation completion status register (32-bit).
pub const ICS_REG: u64 = 0x9c;
/// Invalidation completion event control register (32-bit).
pub const IECTL_REG: u64 = 0xa0;
/// Invalidation completion event data register (32-bit).
pub const IEDATA_REG: u64 = 0xa4;
/// Invalidation completion event address register (32-bit).
pub const IEADDR_REG: u64 = 0xa8;
/// Invalidation completion event upper address register (32-bit).
pub const IEUADDR_REG: u64 = 0xac;
/// Interrupt remapping table address register (64-bit).
pub const IRTA_REG: u64 = 0xb8;
/// Invalidate address register (64-bit), first of the IOTLB register pair ([`ECAP_IRO`]).
pub const IVA_REG: u64 = 0xf0;
/// IOTLB invalidate register (64-bit), register-based IOTLB invalidation.
pub const IOTLB_REG: u64 = IVA_REG + 8;
/// First fault-recording register ([`CAP_FRO`]); record `n` is at `FRCD_REG + 16 * n`.
pub const FRCD_REG: u64 = 0x220;
/// Size in bytes of one fault-recording register.
pub const FRCD_SIZE: u64 = 16;
/// Largest number of fault-recording registers the model accepts in its configuration
/// (the records must fit in the register page).
pub const MAX_FAULT_RECORDS: usize = 64;

/// Granularity of the offset fields in CAP (FRO) and ECAP (IRO): 16 bytes.
pub const REG_OFFSET_UNIT: u64 = 16;

// ---- VER ------------------------------------------------------------------------------

/// The architecture version reported in VER: 1.0 (major in bits 7:4, minor in 3:0), as
/// QEMU reports; Linux only prints it.
pub const VER_VALUE: u32 = 0x10;

// ---- CAP ------------------------------------------------------------------------------

/// Shift of CAP.ND (number of domains supported, 2:0).
pub const CAP_ND_SHIFT: u32 = 0;
/// Shift of CAP.SAGAW (supported adjusted guest address widths, 12:8).
pub const CAP_SAGAW_SHIFT: u32 = 8;
/// Shift of CAP.MGAW (maximum guest address width - 1, 21:16).
pub const CAP_MGAW_SHIFT: u32 = 16;
/// Shift of CAP.FRO (fault-recording register offset / 16, 33:24).
pub const CAP_FRO_SHIFT: u32 = 24;
/// Shift of CAP.NFR (number of fault-recording registers - 1, 47:40).
pub const CAP_NFR_SHIFT: u32 = 40;
/// CAP.CM, caching mode (reported unless configured off).
pub const CAP_CM: u64 = 1 << 7;
/// Shift of CAP.SLLPS (second-level large page support, 37:34).
pub const CAP_SLLPS_SHIFT: u32 = 34;
/// CAP.SLLPS bit for 2 MiB pages.
pub const SLLPS_2M: u64 = 1 << 0;
/// CAP.SLLPS bit for 1 GiB pages.
pub const SLLPS_1G: u64 = 1 << 1;
/// CAP.PSI, page-selective IOTLB invalidation (reported with DMA remapping).
pub const CAP_PSI: u64 = 1 << 39;
/// Shift of CAP.MAMV (maximum address mask value of page-selective invalidation, 53:48).
pub const CAP_MAMV_SHIFT: u32 = 48;
/// CAP.DWD, write draining (reported with DMA remapping).
pub const CAP_DWD: u64 = 1 << 54;
/// CAP.DRD, read draining (reported with DMA remapping).
pub const CAP_DRD: u64 = 1 << 55;
/// CAP.PI, posted interrupts (reported unless configured off).
pub const CAP_PI: u64 = 1 << 59;
/// CAP.ESIRTPS: SIRTP invalidates the interrupt entry cache itself (not reported, so the
/// guest issues the global IEC invalidation after SIRTP, which the VMM relies on).
pub const CAP_ESIRTPS: u64 = 1 << 62;
/// The value of CAP.ND with DMA remapping: 6, i.e. 16-bit domain IDs (QEMU's value).
pub const CAP_ND_VALUE: u64 = 6;
/// The value of CAP.ND without DMA remapping: 0, the smallest encoding (16 domains).
pub const CAP_ND_NO_DMA: u64 = 0;
/// CAP.SAGAW bit for 39-bit, 3-level second-level tables.
pub const SAGAW_39: u64 = 1 << 1;
/// CAP.SAGAW bit for 48-bit, 4-level second-level tables.
pub const SAGAW_48: u64 = 1 << 2;
/// The value of CAP.SAGAW with DMA remapping: 39- and 48-bit tables.
pub const CAP_SAGAW_VALUE: u64 = SAGAW_39 | SAGAW_48;
/// The guest address width CAP.MGAW describes (bits); reported as width - 1.
pub const CAP_MGAW_BITS: u64 = 48;
/// The value of CAP.MGAW (plus one) without DMA remapping, as before: 39 bits.
pub const CAP_MGAW_BITS_NO_DMA: u64 = 39;
/// The value of CAP.SLLPS with DMA remapping: 2 MiB and 1 GiB pages.
pub const CAP_SLLPS_VALUE: u64 = SLLPS_2M | SLLPS_1G;
/// The value of CAP.MAMV: page-selective invalidations of up to 2^18 pages (QEMU's).
pub const CAP_MAMV_VALUE: u64 = 18;
/// CAP.FRO as reported: [`FRCD_REG`] in 16-byte units.
pub const CAP_FRO: u64 = FRCD_REG / REG_OFFSET_UNIT;

/// What the capability registers are built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Fault-recording registers (clamped to 1..=[`MAX_FAULT_RECORDS`]).
    pub fault_records: usize,
    /// CAP.PI.
    pub posted_interrupts: bool,
    /// DMA remapping: SAGAW, SLLPS, PSI, MAMV, draining, ECAP.PT.
    pub dma_translation: bool,
    /// CAP.CM (only with DMA remapping).
    pub caching_mode: bool,
    /// ECAP.EIM.
    pub extended_interrupt_mode: bool,
}

/// Builds the CAP register.
pub fn capability(c: &Capabilities) -> u64 {
    let records = c.fault_records.clamp(1, MAX_FAULT_RECORDS);
    // `records - 1` is at most 63, so the conversion cannot fail; fall back to one record.
    let nfr = u64::try_from(records - 1).unwrap_or(0);
    let pi = if c.posted_interrupts { CAP_PI } else { 0 };
    let common = (CAP_FRO << CAP_FRO_SHIFT) | (nfr << CAP_NFR_SHIFT) | pi;
    if !c.dma_translation {
        return common
            | (CAP_ND_NO_DMA << CAP_ND_SHIFT)
            | ((CAP_MGAW_BITS_NO_DMA - 1) << CAP_MGAW_SHIFT);
    }
    let cm = if c.caching_mode { CAP_CM } else { 0 };
    common
        | (CAP_ND_VALUE << CAP_ND_SHIFT)
        | cm
        | (CAP_SAGAW_VALUE << CAP_SAGAW_SHIFT)
        | ((CAP_MGAW_BITS - 1) << CAP_MGAW_SHIFT)
        | (CAP_SLLPS_VALUE << CAP_SLLPS_SHIFT)
        | CAP_PSI
        | (CAP_MAMV_VALUE << CAP_MAMV_SHIFT)
        | CAP_DWD
        | CAP_DRD
}

// ---- ECAP -----------------------------------------------------------------------------

/// ECAP.C: hardware accesses to remapping structures are coherent.
pub const ECAP_C: u64 = 1 << 0;
/// ECAP.QI: queued invalidation.
pub const ECAP_QI: u64 = 1 << 1;
/// ECAP.DT: device-TLB (not reported).
pub const ECAP_DT: u64 = 1 << 2;
/// ECAP.IR: interrupt remapping.
pub const ECAP_IR: u64 = 1 << 3;
/// ECAP.EIM: extended interrupt mode (32-bit x2APIC destinations).
pub const ECAP_EIM: u64 = 1 << 4;
/// ECAP.PT: pass-through translation type (reported with DMA remapping).
pub const ECAP_PT: u64 = 1 << 6;
/// Shift of ECAP.IRO (IOTLB register offset / 16, 17:8).
pub const ECAP_IRO_SHIFT: u32 = 8;
/// ECAP.IRO as reported: [`IVA_REG`] in 16-byte units.
pub const ECAP_IRO: u64 = IVA_REG / REG_OFFSET_UNIT;
/// Shift of ECAP.MHMV (maximum handle mask value, 23:20).
pub const ECAP_MHMV_SHIFT: u32 = 20;
/// ECAP.MHMV as reported: index-selective IEC invalidations may cover up to 2^15 entries.
pub const ECAP_MHMV: u64 = 0xf;

/// Builds the ECAP register.
pub fn extended_capability(c: &Capabilities) -> u64 {
    let mut ecap =
        ECAP_C | ECAP_QI | ECAP_IR | (ECAP_IRO << ECAP_IRO_SHIFT) | (ECAP_MHMV << ECAP_MHMV_SHIFT);
    if c.extended_interrupt_mode {
        ecap |= ECAP_EIM;
    }
    if c.dma_translation {
        ecap |= ECAP_PT;
    }
    ecap
}

// ---- GCMD / GSTS ----------------------------------------------------------------------

/// GCMD.TE: translation enable (DMA remapping).
pub const GCMD_TE: u32 = 1 << 31;
/// GCMD.SRTP: set root table pointer (one-shot).
pub const GCMD_SRTP: u32 = 1 << 30;
/// GCMD.SFL: set fault log (advanced fault logging; not supported, ignored).
pub const GCMD_SFL: u32 = 1 << 29;
/// GCMD.EAFL: enable advanced fault logging (not supported, ignored).
pub const GCMD_EAFL: u32 = 1 << 28;
/// GCMD.WBF: write buffer flush (CAP.RWBF is 0; ignored).
pub const GCMD_WBF: u32 = 1 << 27;
/// GCMD.QIE: queued invalidation enable.
pub const GCMD_QIE: u32 = 1 << 26;
/// GCMD.IRE: interrupt remapping enable.
pub const GCMD_IRE: u32 = 1 << 25;
/// GCMD.SIRTP: set interrupt remap table pointer (one-shot).
pub const GCMD_SIRTP: u32 = 1 << 24;
/// GCMD.CFI: compatibility format interrupts allowed (pass-through).
pub const GCMD_CFI: u32 = 1 << 23;

/// GSTS.TES: translation enable status.
pub const GSTS_TES: u32 = GCMD_TE;
/// GSTS.RTPS: root table pointer status.
pub const GSTS_RTPS: u32 = GCMD_SRTP;
/// GSTS.QIES: queued invalidation enable status.
pub const GSTS_QIES: u32 = GCMD_QIE;
/// GSTS.IRES: interrupt remapping enable status.
pub const GSTS_IRES: u32 = GCMD_IRE;
/// GSTS.IRTPS: interrupt remapping table pointer status.
pub const GSTS_IRTPS: u32 = GCMD_SIRTP;
/// GSTS.CFIS: compatibility format interrupt status.
pub const GSTS_CFIS: u32 = GCMD_CFI;

// ---- RTADDR / CCMD / IOTLB ----------------------------------------------------------------

/// RTADDR bits the model stores: the 4 KiB-aligned root table address (63:12).
pub const RTADDR_MASK: u64 = !0xfff;
/// CCMD.ICC (bit 63): invalidate context cache; cleared when the invalidation completes.
pub const CCMD_ICC: u64 = 1 << 63;
/// Shift of CCMD.CIRG (requested granularity, 62:61).
pub const CCMD_CIRG_SHIFT: u32 = 61;
/// Shift of CCMD.CAIG (actual granularity, 60:59).
pub const CCMD_CAIG_SHIFT: u32 = 59;
/// Mask (after shifting) of the two-bit CCMD granularity fields.
pub const CCMD_GRANULARITY_MASK: u64 = 0x3;
/// IOTLB.IVT (bit 63): invalidate IOTLB; cleared when the invalidation completes.
pub const IOTLB_IVT: u64 = 1 << 63;
/// Shift of IOTLB.IIRG (requested granularity, 61:60).
pub const IOTLB_IIRG_SHIFT: u32 = 60;
/// Shift of IOTLB.IAIG (actual granularity, 58:57).
pub const IOTLB_IAIG_SHIFT: u32 = 57;
/// Mask (after shifting) of the two-bit IOTLB granularity fields.
pub const IOTLB_GRANULARITY_MASK: u64 = 0x3;
/// CCMD bits 15:0: domain ID (domain-selective and device-selective invalidation).
pub const CCMD_DID_MASK: u64 = 0xffff;
/// Shift of CCMD.SID (31:16, device-selective invalidation).
pub const CCMD_SID_SHIFT: u32 = 16;
/// Shift of CCMD.FM (33:32, function mask of device-selective invalidation).
pub const CCMD_FM_SHIFT: u32 = 32;
/// Shift of IOTLB.DID (47:32).
pub const IOTLB_DID_SHIFT: u32 = 32;
/// Mask (after shifting) of the 16-bit domain IDs in CCMD and IOTLB.
pub const DID_MASK: u64 = 0xffff;
/// Granularity encodings shared by CCMD.CIRG/CAIG and IOTLB.IIRG/IAIG: global.
pub const GRANULARITY_GLOBAL: u64 = 1;
/// Granularity: domain-selective.
pub const GRANULARITY_DOMAIN: u64 = 2;
/// Granularity: device-selective (CCMD) or page-selective (IOTLB).
pub const GRANULARITY_DEVICE_OR_PAGE: u64 = 3;
/// IVA bits 63:12: the page address of a page-selective invalidation.
pub const IVA_ADDR_MASK: u64 = !0xfff;
/// IVA bit 6: invalidation hint (only leaf entries changed).
pub const IVA_IH: u64 = 1 << 6;
/// IVA bits 5:0: address mask (2^AM pages).
pub const IVA_AM_MASK: u64 = 0x3f;
/// RTADDR.TTM (11:10): translation table mode; only 00 (legacy) is supported.
pub const RTADDR_TTM_MASK: u64 = 0xc00;

// ---- FSTS -----------------------------------------------------------------------------

/// FSTS.PFO: primary fault overflow (RW1C).
pub const FSTS_PFO: u32 = 1 << 0;
/// FSTS.PPF: primary pending fault (read-only; OR of the records' F bits).
pub const FSTS_PPF: u32 = 1 << 1;
/// FSTS.IQE: invalidation queue error (RW1C).
pub const FSTS_IQE: u32 = 1 << 4;
/// FSTS.ICE: invalidation completion error (RW1C; device-TLB only, never set here).
pub const FSTS_ICE: u32 = 1 << 5;
/// FSTS.ITE: invalidation time-out error (RW1C; device-TLB only, never set here).
pub const FSTS_ITE: u32 = 1 << 6;
/// Shift of FSTS.FRI (index of the first pending fault record, 15:8).
pub const FSTS_FRI_SHIFT: u32 = 8;
/// FSTS bits software clears by writing 1.
pub const FSTS_RW1C: u32 = FSTS_PFO | FSTS_IQE | FSTS_ICE | FSTS_ITE;

// ---- Event control registers (FECTL, IECTL) --------------------------------------------

/// Event control IM (bit 31): interrupt mask.
pub const EVENT_CTL_IM: u32 = 1 << 31;
/// Event control IP (bit 30): interrupt pending (read-only).
pub const EVENT_CTL_IP: u32 = 1 << 30;
/// Event data register bits implemented: 16-bit message data (EIMD, 31:16, is not).
pub const EVENT_DATA_MASK: u32 = 0xffff;
/// Event address register bits implemented: the dword-aligned address (31:2).
pub const EVENT_ADDR_MASK: u32 = !0x3;

// ---- IQH / IQT / IQA / ICS --------------------------------------------------------------

/// Shift of the descriptor index in IQH and IQT (18:4, 128-bit descriptors).
pub const IQ_INDEX_SHIFT: u32 = 4;
/// Mask (after shifting) of the 15-bit descriptor index in IQH and IQT.
pub const IQ_INDEX_MASK: u64 = 0x7fff;
/// IQA bits holding the 4 KiB-aligned queue base (63:12).
pub const IQA_BASE_MASK: u64 = !0xfff;
/// IQA.DW (bit 11): 256-bit descriptors (not supported: no scalable mode).
pub const IQA_DW: u64 = 1 << 11;
/// IQA.QS (2:0): the queue has 2^(QS + 8) 128-bit descriptors.
pub const IQA_QS_MASK: u64 = 0x7;
/// log2 of the number of 128-bit descriptors per 4 KiB queue page.
pub const IQ_ENTRIES_PER_PAGE_SHIFT: u32 = 8;
/// IQA bits the model stores.
pub const IQA_WRITABLE: u64 = IQA_BASE_MASK | IQA_DW | IQA_QS_MASK;
/// ICS.IWC (bit 0): invalidation wait descriptor complete (RW1C).
pub const ICS_IWC: u32 = 1 << 0;

// ---- IRTA -----------------------------------------------------------------------------

/// IRTA bits holding the 4 KiB-aligned table base (63:12).
pub const IRTA_BASE_MASK: u64 = !0xfff;
/// IRTA.EIME (bit 11): extended interrupt mode enable (x2APIC, 32-bit destinations).
pub const IRTA_EIME: u64 = 1 << 11;
/// IRTA.S (3:0): the table has 2^(S + 1) entries.
pub const IRTA_S_MASK: u64 = 0xf;

// ---- Access helpers ---------------------------------------------------------------------

/// Size of a dword register access.
pub const DWORD: usize = 4;
/// Size of a qword register access.
pub const QWORD: usize = 8;
/// Offset of the high dword of a 64-bit register; also the offset bit that tells a dword
/// access to the high half from one to the low half.
pub const HIGH_DWORD_OFFSET: u64 = 4;
/// Mask of the low dword of a 64-bit value.
pub const LOW_DWORD: u64 = 0xffff_ffff;
/// Bits in a dword.
pub const DWORD_BITS: u32 = 32;

/// The low dword of `value`.
pub fn low_dword(value: u64) -> u32 {
    (value & LOW_DWORD) as u32
}

/// The high dword of `value`.
pub fn high_dword(value: u64) -> u32 {
    (value >> DWORD_BITS) as u32
}

/// `old` with its high dword (`high = true`) or its low dword replaced by `value`: how a
/// dword access updates half of a 64-bit register.
pub fn with_dword(old: u64, high: bool, value: u32) -> u64 {
    if high {
        (old & LOW_DWORD) | (u64::from(value) << DWORD_BITS)
    } else {
        (old & !LOW_DWORD) | u64::from(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(posted: bool, dma: bool) -> Capabilities {
        Capabilities {
            fault_records: 8,
            posted_interrupts: posted,
            dma_translation: dma,
            caching_mode: true,
            extended_interrupt_mode: true,
        }
    }

    #[test]
    fn cap_layout_without_dma() {
        let cap = capability(&caps(false, false));
        assert_eq!((cap >> CAP_SAGAW_SHIFT) & 0x1f, 0, "no DMA translation");
        assert_eq!((cap >> CAP_MGAW_SHIFT) & 0x3f, 38);
        assert_eq!(((cap >> CAP_FRO_SHIFT) & 0x3ff) * 16, FRCD_REG);
        assert_eq!((cap >> CAP_NFR_SHIFT) & 0xff, 7);
        assert_eq!(cap & (CAP_CM | CAP_PSI | CAP_PI | CAP_ESIRTPS), 0);
        assert_eq!(cap, 0x0000_0700_2226_0000);
        // Posted interrupts add CAP.PI (bit 59) and nothing else.
        assert_eq!(capability(&caps(true, false)), cap | CAP_PI);
        assert_eq!(capability(&caps(true, false)), 0x0800_0700_2226_0000);
    }

    #[test]
    fn cap_layout_with_dma() {
        let cap = capability(&caps(true, true));
        assert_eq!((cap >> CAP_SAGAW_SHIFT) & 0x1f, 0b00110, "39 and 48 bits");
        assert_eq!((cap >> CAP_MGAW_SHIFT) & 0x3f, 47);
        assert_eq!((cap >> CAP_SLLPS_SHIFT) & 0xf, 0b11, "2 MiB and 1 GiB");
        assert_eq!((cap >> CAP_MAMV_SHIFT) & 0x3f, 18);
        assert_eq!(cap & 0x7, 6, "16-bit domain IDs");
        assert_eq!(
            cap & (CAP_CM | CAP_PSI | CAP_PI | CAP_DRD | CAP_DWD),
            CAP_CM | CAP_PSI | CAP_PI | CAP_DRD | CAP_DWD
        );
        assert_eq!(cap & CAP_ESIRTPS, 0);
        assert_eq!(((cap >> CAP_FRO_SHIFT) & 0x3ff) * 16, FRCD_REG);
        assert_eq!(cap, 0x08d2_078c_222f_0686);
        let no_cm = Capabilities {
            caching_mode: false,
            ..caps(true, true)
        };
        assert_eq!(capability(&no_cm), cap & !CAP_CM);
        // Clamping.
        let few = Capabilities {
            fault_records: 0,
            ..caps(true, true)
        };
        assert_eq!((capability(&few) >> CAP_NFR_SHIFT) & 0xff, 0);
        let many = Capabilities {
            fault_records: 1000,
            ..caps(true, true)
        };
        assert_eq!(
            (capability(&many) >> CAP_NFR_SHIFT) & 0xff,
            (MAX_FAULT_RECORDS - 1) as u64
        );
        // The last record still fits in the page.
        assert!(FRCD_REG + FRCD_SIZE * MAX_FAULT_RECORDS as u64 <= VTD_MMIO_SIZE);
    }

    #[test]
    fn ecap_layout() {
        let ecap = extended_capability(&caps(true, false));
        assert_eq!(
            ecap & (ECAP_QI | ECAP_IR | ECAP_EIM),
            ECAP_QI | ECAP_IR | ECAP_EIM
        );
        assert_eq!(ecap & (ECAP_DT | ECAP_PT), 0);
        assert_eq!(((ecap >> ECAP_IRO_SHIFT) & 0x3ff) * 16, IVA_REG);
        assert_eq!((ecap >> ECAP_MHMV_SHIFT) & 0xf, 0xf);
        assert_eq!(ecap, 0xf0_0f1b);
        let no_eim = Capabilities {
            extended_interrupt_mode: false,
            ..caps(true, false)
        };
        assert_eq!(extended_capability(&no_eim) & ECAP_EIM, 0);
        let dma = extended_capability(&caps(true, true));
        assert_eq!(dma, ecap | ECAP_PT);
        assert_eq!(dma & ECAP_DT, 0);
    }

    #[test]
    fn dword_helpers() {
        let v = 0x1122_3344_5566_7788;
        assert_eq!(low_dword(v), 0x5566_7788);
        assert_eq!(high_dword(v), 0x1122_3344);
        assert_eq!(with_dword(v, false, 0xaabb_ccdd), 0x1122_3344_aabb_ccdd);
        assert_eq!(with_dword(v, true, 0xaabb_ccdd), 0xaabb_ccdd_5566_7788);
    }
}
