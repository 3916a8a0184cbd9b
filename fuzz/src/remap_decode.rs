//! The `remap_decode` harness: interrupt-remapping decode through
//! [`VtdUnit::translate`] with arbitrary IRTE bytes at arbitrary indices, arbitrary
//! messages (raw MSIs, remappable MSIs with handle and subhandle, messages derived from
//! IOAPIC redirection entries by the real IOAPIC model) and arbitrary source-ids, after
//! the unit was programmed the way a guest enables interrupt remapping.
//!
//! Invariants asserted:
//!
//! * no panic;
//! * a `Remapped` message is valid for KVM ([`crate::assert_kvm_msi`]): address in the
//!   `0xfee` window, `address_hi` bits 7:0 clear; its destination is the IRTE's (8 bits in
//!   xAPIC mode, 32 in x2APIC mode), its vector and trigger mode are the IRTE's, and its
//!   index lies inside the table;
//! * a `Passthrough` message with remapping enabled is the unchanged compatibility-format
//!   request, allowed only with CFI in xAPIC mode, and is itself a valid interrupt (a
//!   32-bit address in the window: anything else is a memory write, not an interrupt);
//! * a `Blocked` fault names the requester, carries the request's index when the request
//!   was remappable, and is suppressed only for qualified reasons;
//! * a `Posted` translation (CAP.PI is on) names a present posted-format IRTE inside the
//!   table, its vector and 64-byte aligned descriptor, and a requester the entry accepts
//!   (posting itself is the `vtd_posting` harness's);
//! * translation is pure: the same request translates the same way twice, reads at most
//!   one IRTE and writes nothing; an IRTE read outside RAM is fault 0x23.

use devices::ioapic::RedirectionEntry;
use virtual_iommu::msi::{MsiMessage, SourceId, MSI_ADDR_BASE, MSI_ADDR_REMAPPABLE};
use virtual_iommu::vtd::irte::Irte;
use virtual_iommu::vtd::regs::*;
use virtual_iommu::vtd::remap::{decode_request, request_index, RequestFormat};
use virtual_iommu::vtd::{FaultReason, Translation, VtdConfig, VtdUnit};

use crate::fake_mem::FakeMem;
use crate::{assert_kvm_msi, for_each_op, fuzz_type};

fuzz_type! {
    /// How the guest programs the unit before the requests arrive.
    pub struct RemapSetup {
        /// Report ECAP.EIM.
        pub eim: bool,
        /// Ask for x2APIC mode (IRTA.EIME).
        pub eime: bool,
        /// GCMD.CFI.
        pub cfi: bool,
        /// IRTA.S: the table has 2^(S + 1) entries.
        pub size: u8,
        /// Table base page (RAM holds pages 0-15 and 17-20).
        pub page: u8,
        /// Skip SIRTP (remapping enabled without a table pointer).
        pub skip_sirtp: bool,
    }
}

fuzz_type! {
    /// One step: an IRTE write or a request.
    pub enum RemapOp {
        /// IRTE `index` (relative to the table base) becomes `low`, `high`.
        Entry { index: u16, low: u64, high: u64 },
        /// A well-formed IRTE built from fields (x2APIC-style 32-bit destination).
        Built { index: u16, vector: u8, dest: u32, mode: u8, svt: u8, sq: u8, sid: u16, flags: u8 },
        /// A raw message.
        Raw { sid: u16, address_lo: u32, address_hi: u32, data: u32 },
        /// A remappable-format MSI naming `handle` (plus `subhandle` when `shv`).
        Remappable { sid: u16, handle: u16, shv: bool, subhandle: u16, extra: u8 },
        /// The message the IOAPIC model puts on the bus for redirection entry `rte`.
        Ioapic { sid: u16, rte: u64 },
    }
}

/// The harness: a unit with remapping enabled and its memory.
pub struct Harness {
    unit: VtdUnit,
    mem: FakeMem,
    eime: bool,
    entries: u32,
    cfi: bool,
}

impl Harness {
    /// Programs a unit as `setup` says, the way Linux does: IRTA, SIRTP, then IRE (and
    /// CFI).
    pub fn new(setup: &RemapSetup) -> Self {
        let mut unit = VtdUnit::new(VtdConfig {
            extended_interrupt_mode: setup.eim,
            fault_records: 8,
            ..VtdConfig::default()
        });
        let mem = FakeMem::new();
        let mut irta = (u64::from(setup.page) << 12) | (u64::from(setup.size) & IRTA_S_MASK);
        if setup.eime {
            irta |= IRTA_EIME;
        }
        unit.mmio_write(&mem, IRTA_REG, &irta.to_le_bytes());
        let mut gcmd = 0;
        if !setup.skip_sirtp {
            unit.mmio_write(&mem, GCMD_REG, &GCMD_SIRTP.to_le_bytes());
        }
        gcmd |= GCMD_IRE;
        if setup.cfi {
            gcmd |= GCMD_CFI;
        }
        unit.mmio_write(&mem, GCMD_REG, &gcmd.to_le_bytes());
        assert!(unit.remapping_enabled());
        let table = unit.ir_table();
        Harness {
            eime: table.is_some_and(|t| t.eime),
            entries: table.map_or(0, |t| t.entries),
            cfi: setup.cfi,
            unit,
            mem,
        }
    }

    fn put_irte(&self, index: u16, irte: Irte) {
        if let Some(t) = self.unit.ir_table() {
            if let Some(gpa) = t.entry_address(u32::from(index)) {
                self.mem.poke(gpa, &irte.to_bytes());
            }
        }
    }

    /// The IRTE the unit would read for `index`, if readable.
    fn irte(&self, index: u32) -> Option<Irte> {
        let gpa = self.unit.ir_table()?.entry_address(index)?;
        let mut b = [0u8; 16];
        self.mem.peek(gpa, &mut b).then(|| Irte::from_bytes(b))
    }

    /// Translates `msg` from `sid` and checks the outcome.
    pub fn request(&self, sid: u16, msg: MsiMessage) {
        let source = SourceId(sid);
        self.mem.reset_counters();
        let t = self.unit.translate(&self.mem, source, msg);
        if self.mem.refused() > 0 {
            assert_eq!(
                t.fault().map(|f| f.reason),
                Some(FaultReason::TableReadFailed),
                "refused IRTE read: {t:?}"
            );
        }
        assert_eq!(self.mem.writes(), 0, "translation wrote guest memory");
        assert!(
            self.mem.reads() <= 1,
            "{} reads for one request",
            self.mem.reads()
        );
        assert_eq!(
            t,
            self.unit.translate(&self.mem, source, msg),
            "not deterministic"
        );
        match t {
            Translation::Remapped { index, message } => {
                assert_kvm_msi(&message, "remapped interrupt");
                assert!(index < self.entries, "index {index} of {}", self.entries);
                assert_eq!(Some(index), request_index(&msg));
                let irte = self
                    .irte(index)
                    .expect("remapped through an unreadable IRTE");
                let dst = (irte.low >> 32) as u32;
                let dest = message.destination();
                if self.eime {
                    assert_eq!(dest, dst, "x2APIC destination");
                } else {
                    assert_eq!(dest, (dst >> 8) & 0xff, "xAPIC destination");
                    assert_eq!(message.address_hi, 0);
                }
                assert_eq!(u64::from(message.vector()), (irte.low >> 16) & 0xff);
                assert_eq!(message.is_level(), irte.low & (1 << 4) != 0);
                assert_eq!(message.data >> 16, 0);
            }
            Translation::Posted(p) => {
                // CAP.PI is on (the default): a posted-format entry is no route; its
                // descriptor is neither read nor written by a translation.
                assert!(
                    p.index < self.entries,
                    "index {} of {}",
                    p.index,
                    self.entries
                );
                assert_eq!(Some(p.index), request_index(&msg));
                assert_eq!(p.source_id, source);
                assert_eq!(p.x2apic, self.eime);
                let irte = self
                    .irte(p.index)
                    .expect("posted through an unreadable IRTE");
                assert!(irte.is_present() && irte.is_posted(), "{irte:x?}");
                assert_eq!(p.entry.vector, irte.posted().vector);
                assert_eq!(p.entry.descriptor_address, irte.posted().descriptor_address);
                assert_eq!(p.entry.descriptor_address % 64, 0);
                assert!(p.entry.source_validation.allows(source));
                assert_eq!(t.message(), None);
            }
            Translation::Passthrough(m) => {
                assert_eq!(m, msg, "passthrough changed the message");
                assert_eq!(decode_request(&msg), Ok(RequestFormat::Compatibility));
                assert!(
                    self.cfi && !self.eime,
                    "compatibility format passed without CFI"
                );
                assert_kvm_msi(&m, "passed-through interrupt");
                assert_eq!(m.address_hi, 0, "passed-through 64-bit address: {m:x?}");
            }
            Translation::Blocked(f) => {
                assert_eq!(f.source_id, source);
                assert_eq!(f.index, request_index(&msg), "{f:?} for {msg:x?}");
                if f.suppressed {
                    assert!(f.reason.is_qualified(), "{f:?}");
                }
            }
        }
    }

    /// Applies one operation.
    pub fn apply(&self, op: &RemapOp) {
        match *op {
            RemapOp::Entry { index, low, high } => self.put_irte(index, Irte { low, high }),
            RemapOp::Built {
                index,
                vector,
                dest,
                mode,
                svt,
                sq,
                sid,
                flags,
            } => {
                let dst = if self.eime {
                    u64::from(dest)
                } else {
                    u64::from(dest & 0xff) << 8
                };
                let low = 1
                    | (u64::from(flags & 0x1e))
                    | (u64::from(mode & 7) << 5)
                    | (u64::from(vector) << 16)
                    | (dst << 32);
                let high = u64::from(sid) | (u64::from(sq & 3) << 16) | (u64::from(svt & 3) << 18);
                self.put_irte(index, Irte { low, high });
            }
            RemapOp::Raw {
                sid,
                address_lo,
                address_hi,
                data,
            } => self.request(
                sid,
                MsiMessage {
                    address_lo,
                    address_hi,
                    data,
                },
            ),
            RemapOp::Remappable {
                sid,
                handle,
                shv,
                subhandle,
                extra,
            } => {
                let h = u32::from(handle);
                let mut address_lo =
                    MSI_ADDR_BASE | MSI_ADDR_REMAPPABLE | ((h & 0x7fff) << 5) | ((h >> 15) << 2);
                if shv {
                    address_lo |= 1 << 3;
                }
                // Occasionally disturb the reserved bits.
                let (address_hi, data) = match extra % 8 {
                    0 => (1, u32::from(subhandle)),
                    1 => (0, u32::from(subhandle) | 0x1_0000),
                    2 => {
                        address_lo |= 0x3;
                        (0, u32::from(subhandle))
                    }
                    _ => (0, u32::from(subhandle)),
                };
                self.request(
                    sid,
                    MsiMessage {
                        address_lo,
                        address_hi,
                        data,
                    },
                );
            }
            RemapOp::Ioapic { sid, rte } => {
                let msg = RedirectionEntry(rte).msi_message();
                self.request(sid, msg);
            }
        }
    }
}

/// Runs one `remap_decode` input.
pub fn run(data: &[u8]) {
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(setup) = <RemapSetup as arbitrary::Arbitrary>::arbitrary(&mut u) else {
        return;
    };
    let h = Harness::new(&setup);
    let mut budget = 4096;
    for_each_op::<RemapOp>(u.take_rest(), |op| {
        if budget > 0 {
            budget -= 1;
            h.apply(&op);
        }
    });
}

/// The bytes [`run`] decodes into `setup` followed by `ops`.
pub fn encode_input(setup: &RemapSetup, ops: &[RemapOp]) -> Vec<u8> {
    use crate::Encode;
    let mut out = setup.to_bytes();
    for op in ops {
        op.encode(&mut out);
    }
    out
}
