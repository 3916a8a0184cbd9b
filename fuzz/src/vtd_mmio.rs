//! The `vtd_mmio` harness: a guest programming the VT-d unit's register page while the
//! fuzzer also controls guest memory (the invalidation queue, wait status words and the
//! interrupt remapping table) and interrupts arrive from devices.
//!
//! Invariants asserted after every operation:
//!
//! * no panic, whatever the access size, offset or value;
//! * every interrupt in [`Effects::interrupts`] is a message KVM accepts
//!   ([`crate::assert_kvm_msi`]): the unit's own event messages are sent with
//!   `KVM_SIGNAL_MSI` without further checks;
//! * IEC invalidations name aligned power-of-two ranges inside the 16-bit index space;
//! * one register write processes at most one queue's worth of descriptors: at most
//!   `2^(IQA.QS + 8)` descriptor fetches and as many status writes (counted through
//!   [`FakeMem`]), so a guest cannot make the VMM loop;
//! * status writes are dwords at dword-aligned addresses;
//! * the queue never stays stuck: with QI enabled, no queue error and a tail inside the
//!   queue, the head has caught up with the tail when the write returns;
//! * the fault log stays inside its ring: FSTS.FRI names an existing record, PPF is the
//!   OR of the records' F bits, every recorded fault has an interrupt- or DMA-remapping reason,
//!   and the offsets past the last fault-recording register read as zero;
//! * GSTS reports DMA translation (TES) only on a unit with second-level address widths,
//!   and IQH stays inside the queue. (DMA translation itself is `vtd_dma`'s.)
//!
//! Guest-memory accesses outside [`FakeMem`]'s RAM are refused with `MemError`; the
//! model must turn them into the hardware's answer: a refused descriptor fetch or status
//! write sets FSTS.IQE, a refused IRTE read blocks the interrupt with fault 0x23, and
//! translation never writes guest memory.

use virtual_iommu::msi::{MsiMessage, SourceId, MSI_ADDR_BASE, MSI_ADDR_REMAPPABLE};
use virtual_iommu::vtd::regs::*;
use virtual_iommu::vtd::{Effects, FaultReason, IecInvalidation, VtdConfig, VtdUnit};

use crate::fake_mem::FakeMem;
use crate::{access_size, assert_kvm_msi, for_each_op, fuzz_type, value_bytes};

/// Offsets the [`VtdOp::Reg`] operation picks from (index modulo the length).
pub const NAMED_REGS: [u64; 40] = [
    VER_REG,
    CAP_REG,
    CAP_REG + 4,
    ECAP_REG,
    ECAP_REG + 4,
    GCMD_REG,
    GSTS_REG,
    RTADDR_REG,
    RTADDR_REG + 4,
    CCMD_REG,
    CCMD_REG + 4,
    FSTS_REG,
    FECTL_REG,
    FEDATA_REG,
    FEADDR_REG,
    FEUADDR_REG,
    IQH_REG,
    IQH_REG + 4,
    IQT_REG,
    IQT_REG + 4,
    IQA_REG,
    IQA_REG + 4,
    ICS_REG,
    IECTL_REG,
    IEDATA_REG,
    IEADDR_REG,
    IEUADDR_REG,
    IRTA_REG,
    IRTA_REG + 4,
    IVA_REG,
    IVA_REG + 4,
    IOTLB_REG,
    IOTLB_REG + 4,
    FRCD_REG,
    FRCD_REG + 8,
    FRCD_REG + 12,
    FRCD_REG + 16 + 12,
    FRCD_REG + 7 * 16 + 12,
    FRCD_REG + 63 * 16 + 12,
    0x30,
];

/// The GCMD bits, in the order [`VtdOp::Command`] numbers them.
pub const GCMD_BITS: [u32; 9] = [
    GCMD_TE, GCMD_SRTP, GCMD_SFL, GCMD_EAFL, GCMD_WBF, GCMD_QIE, GCMD_IRE, GCMD_SIRTP, GCMD_CFI,
];

fuzz_type! {
    /// How the unit is configured.
    pub struct VtdSetup {
        /// Report ECAP.EIM.
        pub eim: bool,
        /// Fault-recording registers (clamped by the model).
        pub fault_records: u8,
    }
}

fuzz_type! {
    /// A 128-bit invalidation descriptor the harness writes into the queue.
    pub enum Desc {
        IecGlobal {},
        IecIndex { index: u16, mask: u8 },
        Wait { interrupt: bool, status: Option<u32>, data: u32, fence: bool },
        ContextCache { granularity: u8 },
        Iotlb { granularity: u8 },
        Raw { qw0: u64, qw1: u64 },
    }
}

fuzz_type! {
    /// One step of the guest (or of a device).
    pub enum VtdOp {
        /// A read of `size` bytes anywhere in (or just past) the register page.
        Read { offset: u16, size: u8 },
        /// A write of `size` bytes anywhere in (or just past) the register page.
        Write { offset: u16, size: u8, value: u64 },
        /// A dword (or qword) write to a named register offset.
        Reg { reg: u8, qword: bool, value: u64 },
        /// GCMD written the way Linux does: GSTS with `set` bits added and `clear` bits
        /// removed (bit `n` is `GCMD_BITS[n]`).
        Command { set: u16, clear: u16 },
        /// IQA = `page` << 12 | DW | QS (taken while QI is disabled).
        QueueAddress { page: u8, qs: u8, dw: bool },
        /// IQT = `slot` << 4.
        Tail { slot: u16 },
        /// IRTA = `page` << 12 | EIME | S, then GCMD.SIRTP.
        Table { page: u8, s: u8, eime: bool },
        /// A descriptor written into queue slot `slot` (relative to IQA's base).
        Descriptor { slot: u16, desc: Desc },
        /// An IRTE written at `index` (relative to IRTA's base).
        Entry { index: u16, low: u64, high: u64 },
        /// A raw guest-memory write.
        Mem { addr: u32, value: u64 },
        /// Programs the fault (or completion) event registers and the mask.
        Event { completion: bool, address: u32, upper: u32, data: u32, unmask: bool },
        /// A device interrupt with any message; a blocked one records its fault.
        Interrupt { sid: u16, address_lo: u32, address_hi: u32, data: u32 },
        /// A remappable-format device interrupt naming `handle` (+ subhandle).
        Remappable { sid: u16, handle: u16, shv: bool, subhandle: u16 },
        /// Software services faults: writes FSTS and clears F of record `record`.
        Service { fsts: u32, record: u8 },
        /// Platform reset.
        Reset {},
    }
}

/// The harness state: the unit and its memory.
pub struct Harness {
    /// The unit under test.
    pub unit: VtdUnit,
    /// Its guest memory.
    pub mem: FakeMem,
}

impl Harness {
    /// A unit configured by `setup` over zeroed memory.
    pub fn new(setup: &VtdSetup) -> Self {
        Harness {
            unit: VtdUnit::new(VtdConfig {
                extended_interrupt_mode: setup.eim,
                fault_records: usize::from(setup.fault_records),
                ..VtdConfig::default()
            }),
            mem: FakeMem::new(),
        }
    }

    /// Reads a dword register.
    pub fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.unit.mmio_read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Reads a qword register.
    pub fn read64(&self, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        self.unit.mmio_read(offset, &mut b);
        u64::from_le_bytes(b)
    }

    /// A guest write, with every per-write invariant checked.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Effects {
        self.mem.reset_counters();
        let effects = self.unit.mmio_write(&self.mem, offset, data);
        if self.mem.refused() > 0 {
            // A descriptor fetch or status write outside RAM is an invalidation queue
            // error (FSTS.IQE), never silently skipped.
            assert_ne!(
                self.read32(FSTS_REG) & FSTS_IQE,
                0,
                "refused queue access without IQE"
            );
        }
        self.check_effects(&effects);
        self.check_queue_bound();
        self.check_queue_drained();
        effects
    }

    /// Writes a dword register.
    pub fn write32(&mut self, offset: u64, value: u32) -> Effects {
        self.write(offset, &value.to_le_bytes())
    }

    /// Writes a qword register.
    pub fn write64(&mut self, offset: u64, value: u64) -> Effects {
        self.write(offset, &value.to_le_bytes())
    }

    /// The invalidation queue's size in descriptors, per IQA.
    fn queue_entries(&self) -> usize {
        let iqa = self.read64(IQA_REG);
        1usize << ((iqa & IQA_QS_MASK) as u32 + IQ_ENTRIES_PER_PAGE_SHIFT)
    }

    fn check_effects(&self, effects: &Effects) {
        for m in &effects.interrupts {
            assert_kvm_msi(m, "VT-d event interrupt");
        }
        for inv in &effects.iec {
            if let IecInvalidation::Range { start, count } = *inv {
                assert!(count.is_power_of_two() && count <= 0x8000, "{inv:?}");
                assert_eq!(start % count, 0, "{inv:?}");
                assert!(u64::from(start) + u64::from(count) <= 0x1_0000, "{inv:?}");
            }
        }
        for (addr, bytes) in self.mem.status_writes() {
            assert_eq!(bytes.len(), 4, "status write of {} bytes", bytes.len());
            assert_eq!(addr % 4, 0, "unaligned status write at {addr:#x}");
        }
    }

    /// One write processes at most one queue's worth of descriptors.
    fn check_queue_bound(&self) {
        let entries = self.queue_entries();
        assert!(
            self.mem.reads() <= entries,
            "{} descriptor fetches for a queue of {entries}",
            self.mem.reads()
        );
        assert!(
            self.mem.writes() <= entries,
            "{} status writes for a queue of {entries}",
            self.mem.writes()
        );
    }

    /// With QI running and no error, the head has caught up with a valid tail.
    fn check_queue_drained(&self) {
        let gsts = self.read32(GSTS_REG);
        let fsts = self.read32(FSTS_REG);
        let iqa = self.read64(IQA_REG);
        let entries = self.queue_entries() as u64;
        let head = (self.read64(IQH_REG) >> IQ_INDEX_SHIFT) & IQ_INDEX_MASK;
        let tail = (self.read64(IQT_REG) >> IQ_INDEX_SHIFT) & IQ_INDEX_MASK;
        assert_eq!(self.read64(IQH_REG) & !(IQ_INDEX_MASK << IQ_INDEX_SHIFT), 0);
        if gsts & GSTS_QIES != 0 {
            assert!(head < entries, "IQH {head} outside a queue of {entries}");
        }
        if gsts & GSTS_QIES != 0 && fsts & FSTS_IQE == 0 && iqa & IQA_DW == 0 && tail < entries {
            assert_eq!(head, tail, "queue stuck without an error");
        }
    }

    /// Checks the status registers and the whole fault-recording ring.
    pub fn check_fault_log(&self) {
        let cap = self.read64(CAP_REG);
        let fro = ((cap >> CAP_FRO_SHIFT) & 0x3ff) * REG_OFFSET_UNIT;
        let nfr = ((cap >> CAP_NFR_SHIFT) & 0xff) + 1;
        assert_eq!(fro, FRCD_REG);
        assert!(fro + nfr * FRCD_SIZE <= VTD_MMIO_SIZE);
        assert_eq!(nfr, self.unit.config().fault_records as u64);
        let fsts = self.read32(FSTS_REG);
        let fri = u64::from((fsts >> FSTS_FRI_SHIFT) & 0xff);
        assert!(fri < nfr, "FSTS.FRI {fri} outside a ring of {nfr}");
        let mut any_pending = false;
        for r in 0..nfr {
            let base = fro + r * FRCD_SIZE;
            let high = self.read64(base + 8);
            if high >> 63 != 0 {
                any_pending = true;
                let reason = (high >> 32) & 0xff;
                assert!(
                    (0x20..=0x28).contains(&reason) || (0x1..=0xc).contains(&reason),
                    "record {r}: reason {reason:#x}"
                );
            } else {
                assert_eq!(self.read64(base), 0, "cleared record {r} keeps data");
                assert_eq!(high, 0, "cleared record {r} keeps data");
            }
        }
        assert_eq!(fsts & FSTS_PPF != 0, any_pending, "PPF vs records");
        let past = fro + nfr * FRCD_SIZE;
        let end = (fro + MAX_FAULT_RECORDS as u64 * FRCD_SIZE).min(VTD_MMIO_SIZE);
        let mut o = past;
        while o < end {
            assert_eq!(self.read32(o), 0, "offset {o:#x} past the FRCD ring");
            o += 4;
        }
        if (cap >> CAP_SAGAW_SHIFT) & 0x1f == 0 {
            assert_eq!(self.read32(GSTS_REG) & GSTS_TES, 0, "TES without SAGAW");
        }
    }

    /// Sends a device interrupt through the unit, recording a fault when blocked.
    fn interrupt(&mut self, sid: u16, msg: MsiMessage) {
        let before = self.unit.remapping_enabled();
        self.mem.reset_counters();
        let (t, effects) = self
            .unit
            .translate_and_record(&self.mem, SourceId(sid), msg);
        if self.mem.refused() > 0 {
            // An IRTE read outside RAM blocks the interrupt with fault 0x23.
            assert_eq!(
                t.fault().map(|f| f.reason),
                Some(FaultReason::TableReadFailed),
                "refused IRTE read: {t:?}"
            );
        }
        assert_eq!(self.mem.writes(), 0, "translation wrote guest memory");
        self.check_effects(&effects);
        if before {
            if let Some(m) = t.message() {
                if t.irte_index().is_some() {
                    assert_kvm_msi(&m, "remapped interrupt");
                }
            }
        }
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: &VtdOp) {
        match *op {
            VtdOp::Read { offset, size } => {
                let mut data = vec![0u8; access_size(size)];
                self.unit.mmio_read(u64::from(offset), &mut data);
            }
            VtdOp::Write {
                offset,
                size,
                value,
            } => {
                self.write(u64::from(offset), &value_bytes(value, access_size(size)));
            }
            VtdOp::Reg { reg, qword, value } => {
                let offset = NAMED_REGS[usize::from(reg) % NAMED_REGS.len()];
                if qword {
                    self.write64(offset & !7, value);
                } else {
                    self.write32(offset, value as u32);
                }
            }
            VtdOp::Command { set, clear } => {
                let mut gcmd = self.read32(GSTS_REG);
                for (n, bit) in GCMD_BITS.iter().enumerate() {
                    if set & (1 << n) != 0 {
                        gcmd |= bit;
                    }
                    if clear & (1 << n) != 0 {
                        gcmd &= !bit;
                    }
                }
                self.write32(GCMD_REG, gcmd);
            }
            VtdOp::QueueAddress { page, qs, dw } => {
                let mut iqa = (u64::from(page) << 12) | (u64::from(qs) & IQA_QS_MASK);
                if dw {
                    iqa |= IQA_DW;
                }
                self.write64(IQA_REG, iqa);
            }
            VtdOp::Tail { slot } => {
                self.write64(IQT_REG, u64::from(slot) << IQ_INDEX_SHIFT);
            }
            VtdOp::Table { page, s, eime } => {
                let mut irta = (u64::from(page) << 12) | (u64::from(s) & IRTA_S_MASK);
                if eime {
                    irta |= IRTA_EIME;
                }
                self.write64(IRTA_REG, irta);
                let gcmd = self.read32(GSTS_REG) | GCMD_SIRTP;
                self.write32(GCMD_REG, gcmd);
            }
            VtdOp::Descriptor { slot, ref desc } => {
                let base = self.read64(IQA_REG) & IQA_BASE_MASK;
                let (qw0, qw1) = encode_desc(desc);
                let gpa = base.wrapping_add(u64::from(slot) * 16);
                self.mem.poke(gpa, &qw0.to_le_bytes());
                self.mem.poke(gpa.wrapping_add(8), &qw1.to_le_bytes());
            }
            VtdOp::Entry { index, low, high } => {
                let base = self.read64(IRTA_REG) & IRTA_BASE_MASK;
                let gpa = base.wrapping_add(u64::from(index) * 16);
                self.mem.poke(gpa, &low.to_le_bytes());
                self.mem.poke(gpa.wrapping_add(8), &high.to_le_bytes());
            }
            VtdOp::Mem { addr, value } => self.mem.poke(u64::from(addr), &value.to_le_bytes()),
            VtdOp::Event {
                completion,
                address,
                upper,
                data,
                unmask,
            } => {
                let (ctl, dat, lo, hi) = if completion {
                    (IECTL_REG, IEDATA_REG, IEADDR_REG, IEUADDR_REG)
                } else {
                    (FECTL_REG, FEDATA_REG, FEADDR_REG, FEUADDR_REG)
                };
                self.write32(dat, data);
                self.write32(lo, address);
                self.write32(hi, upper);
                self.write32(ctl, if unmask { 0 } else { EVENT_CTL_IM });
            }
            VtdOp::Interrupt {
                sid,
                address_lo,
                address_hi,
                data,
            } => self.interrupt(
                sid,
                MsiMessage {
                    address_lo,
                    address_hi,
                    data,
                },
            ),
            VtdOp::Remappable {
                sid,
                handle,
                shv,
                subhandle,
            } => {
                let h = u32::from(handle);
                let mut address_lo =
                    MSI_ADDR_BASE | MSI_ADDR_REMAPPABLE | ((h & 0x7fff) << 5) | ((h >> 15) << 2);
                if shv {
                    address_lo |= 1 << 3;
                }
                self.interrupt(
                    sid,
                    MsiMessage {
                        address_lo,
                        address_hi: 0,
                        data: u32::from(subhandle),
                    },
                );
            }
            VtdOp::Service { fsts, record } => {
                self.write32(FSTS_REG, fsts);
                let offset = FRCD_REG + u64::from(record % 64) * FRCD_SIZE + 12;
                self.write32(offset, 1 << 31);
            }
            VtdOp::Reset {} => self.unit.reset(),
        }
        // Cheap per-op checks; the full ring sweep runs at the end.
        let fsts = self.read32(FSTS_REG);
        assert!(
            ((fsts >> FSTS_FRI_SHIFT) & 0xff) < self.unit.config().fault_records as u32,
            "FRI outside the ring"
        );
    }
}

/// The two qwords of `desc`.
pub fn encode_desc(desc: &Desc) -> (u64, u64) {
    use virtual_iommu::vtd::qi::build;
    match *desc {
        Desc::IecGlobal {} => build::iec_global(),
        Desc::IecIndex { index, mask } => build::iec_index(index, mask),
        Desc::Wait {
            interrupt,
            status,
            data,
            fence,
        } => build::wait(interrupt, status.map(|a| (u64::from(a), data)), fence),
        Desc::ContextCache { granularity } => (0x1 | (u64::from(granularity & 3) << 4), 0),
        Desc::Iotlb { granularity } => (0x2 | (u64::from(granularity & 3) << 4), 0),
        Desc::Raw { qw0, qw1 } => (qw0, qw1),
    }
}

/// Runs one `vtd_mmio` input.
pub fn run(data: &[u8]) {
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(setup) = <VtdSetup as arbitrary::Arbitrary>::arbitrary(&mut u) else {
        return;
    };
    let mut h = Harness::new(&setup);
    let rest = u.take_rest();
    // Bound the work per input so a long input cannot time out the fuzzer.
    let mut budget = 4096;
    for_each_op::<VtdOp>(rest, |op| {
        if budget > 0 {
            budget -= 1;
            h.apply(&op);
        }
    });
    h.check_fault_log();
}

/// The bytes [`run`] decodes into `setup` followed by `ops` (for seeds and regression
/// tests).
pub fn encode_input(setup: &VtdSetup, ops: &[VtdOp]) -> Vec<u8> {
    use crate::Encode;
    let mut out = setup.to_bytes();
    for op in ops {
        op.encode(&mut out);
    }
    out
}
