//! The `vtd_posting` harness: VT-d posted-format IRTEs (CAP.PI) and interrupt posting
//! through [`VtdUnit::deliver`] against fuzzer-shaped guest memory: entries of either
//! format (built from fields or raw), posted-interrupt descriptors anywhere (in RAM, at
//! the edge of a region, in the hole between regions, beyond RAM, at arbitrary 64-bit
//! addresses), descriptor control words with any bits (ON, SN, NV, NDST, reserved), a guest
//! changing them between interrupts, and interrupts from any requester.
//!
//! Invariants asserted, from a snapshot of the descriptor taken before each interrupt:
//!
//! * no panic, and the translation `deliver` acts on is the one `translate` gives;
//! * a posted translation happens only with CAP.PI, names a 64-byte aligned descriptor
//!   whose address is the IRTE's PDA bits, and the unit's x2APIC mode;
//! * descriptor not wholly in RAM, or reserved control bits set: nothing is written, no
//!   notification is sent (only the fault event may be);
//! * otherwise the vector's PIR bit is set and no other PIR bit changes; with ON clear and
//!   (URG or SN clear) ON is set and exactly the notification event (fixed, physical, edge,
//!   vector NV to NDST, 32-bit NDST in x2APIC mode, `NDST[15:8]` in xAPIC mode) is sent,
//!   else the control qword is unchanged and nothing is sent; no byte outside the PIR
//!   dword and the control qword changes; every interrupt is one KVM accepts;
//! * anything that is not posted writes no guest memory and sends at most the fault event.

use virtual_iommu::msi::{MsiMessage, SourceId, MSI_ADDR_BASE, MSI_ADDR_REMAPPABLE};
use virtual_iommu::vtd::irte::{build, Irte};
use virtual_iommu::vtd::posted::{
    PD_CONTROL_RESERVED, PD_CONTROL_RESERVED_XAPIC, PD_NDST_SHIFT, PD_NV_SHIFT, PD_ON, PD_SN,
};
use virtual_iommu::vtd::regs::*;
use virtual_iommu::vtd::{Translation, VtdConfig, VtdUnit};

use crate::fake_mem::{FakeMem, HIGH_BASE, HIGH_SIZE, LOW_SIZE};
use crate::{assert_kvm_msi, for_each_op, fuzz_type};

/// The table: page 1, IRTA.S = 7 (256 entries, one page).
const TABLE_BASE: u64 = 0x1000;
const TABLE_S: u64 = 7;
/// Where in-RAM descriptor slots start (64 slots of 64 bytes).
const PD_SLOTS_BASE: u64 = 0x8000;
const PD_SLOTS: u64 = 64;
/// Descriptor size and alignment.
const PD_SIZE: u64 = 64;
/// The fault event the guest programs: vector 0x60 to APIC 0.
const FAULT_VECTOR: u32 = 0x60;

fuzz_type! {
    /// How the unit is configured and programmed before the interrupts.
    pub struct PostingSetup {
        /// Ask for x2APIC mode (IRTA.EIME).
        pub eime: bool,
        /// Report CAP.PI (else posted-format entries fault 0x24).
        pub posted: bool,
        /// Program and unmask the fault event.
        pub fault_event: bool,
    }
}

fuzz_type! {
    /// One step.
    pub enum PostingOp {
        /// IRTE `index` in posted format, from fields; `pd` chooses the descriptor
        /// address ([`descriptor_address`]); `junk` ORs into the reserved or ignored bits.
        Posted { index: u8, vector: u8, pd: u64, urgent: bool, fpd: bool, sid: Option<u16>, junk: u8 },
        /// IRTE `index` in remapped format (fixed, physical, to `dest`).
        Remapped { index: u8, vector: u8, dest: u32 },
        /// IRTE `index` from raw bits.
        Entry { index: u8, low: u64, high: u64 },
        /// A descriptor image (PIR qword 0 and the control qword) at `pd`'s address.
        Descriptor { pd: u64, pir: u64, control: u64 },
        /// The guest updates a descriptor's control qword: clears `clear`, then sets `set`.
        Control { pd: u64, clear: u64, set: u64 },
        /// The guest harvests a descriptor's PIR (zeroes it).
        Harvest { pd: u64 },
        /// An interrupt naming IRTE `index` (handle, plus subhandle when given) from `sid`.
        Fire { index: u8, sid: u16, subhandle: Option<u8> },
        /// The guest services the fault log (clears every F bit and FSTS).
        ClearFaults {},
    }
}

/// The descriptor address a fuzzer value picks: mostly in-RAM slots, sometimes the edges
/// of the RAM regions, the hole, beyond RAM, or any 64-byte aligned address.
pub fn descriptor_address(pd: u64) -> u64 {
    let choice = pd % 8;
    let rest = pd >> 3;
    match choice {
        0..=3 => PD_SLOTS_BASE + (rest % PD_SLOTS) * PD_SIZE,
        4 => LOW_SIZE - PD_SIZE,
        5 => LOW_SIZE + (rest % 64) * PD_SIZE,
        6 => HIGH_BASE + HIGH_SIZE - PD_SIZE * (1 + rest % 2),
        _ => rest << 6,
    }
}

/// The harness: a unit with remapping enabled and its memory.
pub struct Harness {
    unit: VtdUnit,
    mem: FakeMem,
    eime: bool,
    posted: bool,
}

/// The descriptor address an IRTE's PDA fields hold, decoded independently of the model.
fn pda(irte: &Irte) -> u64 {
    ((irte.low >> 38) << 6) | (irte.high & 0xffff_ffff_0000_0000)
}

impl Harness {
    /// Programs a unit as `setup` says, the way Linux does (IRTA, SIRTP, IRE).
    pub fn new(setup: &PostingSetup) -> Self {
        let mut unit = VtdUnit::new(VtdConfig {
            posted_interrupts: setup.posted,
            ..VtdConfig::default()
        });
        let mem = FakeMem::new();
        let mut irta = TABLE_BASE | TABLE_S;
        if setup.eime {
            irta |= IRTA_EIME;
        }
        unit.mmio_write(&mem, IRTA_REG, &irta.to_le_bytes());
        unit.mmio_write(&mem, GCMD_REG, &GCMD_SIRTP.to_le_bytes());
        unit.mmio_write(&mem, GCMD_REG, &GCMD_IRE.to_le_bytes());
        if setup.fault_event {
            unit.mmio_write(&mem, FEDATA_REG, &FAULT_VECTOR.to_le_bytes());
            unit.mmio_write(&mem, FEADDR_REG, &0xfee0_0000u32.to_le_bytes());
            unit.mmio_write(&mem, FECTL_REG, &0u32.to_le_bytes());
        }
        assert!(unit.remapping_enabled());
        assert_eq!(
            unit.capability() & CAP_PI != 0,
            setup.posted,
            "CAP.PI follows the configuration"
        );
        Harness {
            unit,
            mem,
            eime: setup.eime,
            posted: setup.posted,
        }
    }

    fn put_irte(&self, index: u8, irte: Irte) {
        self.mem
            .poke(TABLE_BASE + u64::from(index) * 16, &irte.to_bytes());
    }

    fn fault_event(&self) -> MsiMessage {
        MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: FAULT_VECTOR,
        }
    }

    /// One interrupt, checked against the descriptor snapshot.
    fn fire(&mut self, index: u8, sid: u16, subhandle: Option<u8>) {
        // index = handle + subhandle when SHV is set.
        let (handle, sub) = match subhandle {
            Some(s) => {
                let s = s.min(index);
                (index - s, Some(s))
            }
            None => (index, None),
        };
        let mut address_lo = MSI_ADDR_BASE | MSI_ADDR_REMAPPABLE | (u32::from(handle) << 5);
        let mut data = 0;
        if let Some(s) = sub {
            address_lo |= 1 << 3;
            data = u32::from(s);
        }
        let msg = MsiMessage {
            address_lo,
            address_hi: 0,
            data,
        };
        let source = SourceId(sid);
        let expected = self.unit.translate(&self.mem, source, msg);
        // The descriptor as it is before the interrupt, when the translation posts.
        let snapshot = expected.posted().map(|p| {
            let address = p.entry.descriptor_address;
            let mut pd = [0u8; PD_SIZE as usize];
            let readable =
                address.checked_add(PD_SIZE).is_some() && self.mem.peek(address, &mut pd);
            (address, readable.then_some(pd))
        });
        self.mem.reset_counters();
        let (t, effects) = self.unit.deliver(&self.mem, source, msg);
        assert_eq!(t, expected, "deliver acted on another translation");
        for m in &effects.interrupts {
            assert_kvm_msi(m, "posting unit interrupt");
        }
        let Some((address, before)) = snapshot else {
            assert!(!matches!(t, Translation::Posted(_)));
            assert_eq!(self.mem.writes(), 0, "{t:?} wrote guest memory");
            assert!(
                effects.interrupts.iter().all(|m| *m == self.fault_event()),
                "{t:?} sent {:x?}",
                effects.interrupts
            );
            return;
        };
        let p = t.posted().expect("posted");
        assert!(self.posted, "posted without CAP.PI");
        assert_eq!(p.x2apic, self.eime);
        assert_eq!(address % PD_SIZE, 0, "descriptor not 64-byte aligned");
        let irte = {
            let mut b = [0u8; 16];
            assert!(self.mem.peek(TABLE_BASE + u64::from(p.index) * 16, &mut b));
            Irte::from_bytes(b)
        };
        assert_eq!(address, pda(&irte), "PDA decode");
        assert_eq!(p.entry.vector, ((irte.low >> 16) & 0xff) as u8);
        assert_eq!(p.entry.urgent, irte.low & (1 << 14) != 0);

        let reserved = if self.eime {
            PD_CONTROL_RESERVED
        } else {
            PD_CONTROL_RESERVED | PD_CONTROL_RESERVED_XAPIC
        };
        let control_of = |pd: &[u8; 64]| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&pd[32..40]);
            u64::from_le_bytes(b)
        };
        let Some(before) = before.filter(|pd| control_of(pd) & reserved == 0) else {
            // Fault 0x27 or 0x28: nothing posted.
            assert_eq!(self.mem.writes(), 0, "failed post wrote guest memory");
            assert!(
                effects.interrupts.iter().all(|m| *m == self.fault_event()),
                "failed post sent {:x?}",
                effects.interrupts
            );
            return;
        };
        let mut after = [0u8; PD_SIZE as usize];
        assert!(self.mem.peek(address, &mut after));
        for (gpa, bytes) in self.mem.status_writes() {
            assert!(
                gpa >= address && gpa + bytes.len() as u64 <= address + 40,
                "write at {gpa:#x} outside descriptor {address:#x}'s PIR and control"
            );
        }
        assert!(self.mem.writes() <= 2, "{} writes", self.mem.writes());
        let bit = usize::from(p.entry.vector);
        for i in 0..256 {
            let was = before[i / 8] & (1 << (i % 8)) != 0;
            let is = after[i / 8] & (1 << (i % 8)) != 0;
            if i == bit {
                assert!(is, "PIR bit {i} not set");
            } else {
                assert_eq!(was, is, "PIR bit {i} changed");
            }
        }
        assert_eq!(
            before[40..],
            after[40..],
            "bytes past the control qword changed"
        );
        let (c0, c1) = (control_of(&before), control_of(&after));
        let notify = c0 & PD_ON == 0 && (p.entry.urgent || c0 & PD_SN == 0);
        if notify {
            assert_eq!(c1, c0 | PD_ON, "ON not set");
            let nv = ((c0 >> PD_NV_SHIFT) & 0xff) as u32;
            let ndst = (c0 >> PD_NDST_SHIFT) as u32;
            let dest = if self.eime { ndst } else { (ndst >> 8) & 0xff };
            assert_eq!(effects.interrupts.len(), 1, "{:x?}", effects.interrupts);
            let n = effects.interrupts[0];
            assert_eq!(n.vector(), nv as u8);
            assert_eq!(n.destination(), dest);
            assert!(!n.is_level() && !n.is_remappable());
            assert_eq!(n.data & 0x700, 0, "fixed delivery");
            assert_eq!(n.address_lo & 0x4, 0, "physical destination");
        } else {
            assert_eq!(c1, c0, "control changed without a notification");
            assert!(effects.interrupts.is_empty(), "{:x?}", effects.interrupts);
        }
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: &PostingOp) {
        match *op {
            PostingOp::Posted {
                index,
                vector,
                pd,
                urgent,
                fpd,
                sid,
                junk,
            } => {
                let mut e = build::posted(vector, descriptor_address(pd), urgent);
                if let Some(sid) = sid {
                    e = build::with_requester_id(e, sid, junk & 3);
                }
                if fpd {
                    e = build::with_fpd(e);
                }
                // AVAIL (11:8) is ignored; the other junk lands in reserved bits.
                let low_junk = match junk >> 5 {
                    0 => u64::from(junk & 0xf) << 8,
                    1 => 1 << (2 + u64::from(junk & 3)),
                    2 => 1 << (24 + u64::from(junk & 0xf)),
                    _ => 0,
                };
                e.low |= low_junk;
                if junk >> 5 == 3 && junk & 0x10 != 0 {
                    e.high |= 1 << (20 + u64::from(junk & 0xf) % 12);
                }
                self.put_irte(index, e);
            }
            PostingOp::Remapped {
                index,
                vector,
                dest,
            } => {
                let dest = if self.eime { dest } else { dest & 0xff };
                let e = build::remapped(
                    vector,
                    dest,
                    self.eime,
                    virtual_iommu::msi::DeliveryMode::Fixed,
                    false,
                    false,
                );
                self.put_irte(index, e);
            }
            PostingOp::Entry { index, low, high } => self.put_irte(index, Irte { low, high }),
            PostingOp::Descriptor { pd, pir, control } => {
                let address = descriptor_address(pd);
                let mut image = [0u8; PD_SIZE as usize];
                image[..8].copy_from_slice(&pir.to_le_bytes());
                image[32..40].copy_from_slice(&control.to_le_bytes());
                self.mem.poke(address, &image);
            }
            PostingOp::Control { pd, clear, set } => {
                let Some(address) = descriptor_address(pd).checked_add(32) else {
                    return;
                };
                let mut b = [0u8; 8];
                if self.mem.peek(address, &mut b) {
                    let c = (u64::from_le_bytes(b) & !clear) | set;
                    self.mem.poke(address, &c.to_le_bytes());
                }
            }
            PostingOp::Harvest { pd } => self.mem.poke(descriptor_address(pd), &[0u8; 32]),
            PostingOp::Fire {
                index,
                sid,
                subhandle,
            } => self.fire(index, sid, subhandle),
            PostingOp::ClearFaults {} => {
                for rec in 0..8u64 {
                    let at = FRCD_REG + 16 * rec + 12;
                    self.unit
                        .mmio_write(&self.mem, at, &(1u32 << 31).to_le_bytes());
                }
                self.unit
                    .mmio_write(&self.mem, FSTS_REG, &0xffff_ffffu32.to_le_bytes());
            }
        }
    }
}

/// Runs one `vtd_posting` input.
pub fn run(data: &[u8]) {
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(setup) = <PostingSetup as arbitrary::Arbitrary>::arbitrary(&mut u) else {
        return;
    };
    let mut h = Harness::new(&setup);
    let mut budget = 4096;
    for_each_op::<PostingOp>(u.take_rest(), |op| {
        if budget > 0 {
            budget -= 1;
            h.apply(&op);
        }
    });
}

/// The bytes [`run`] decodes into `setup` followed by `ops`.
pub fn encode_input(setup: &PostingSetup, ops: &[PostingOp]) -> Vec<u8> {
    use crate::Encode;
    let mut out = setup.to_bytes();
    for op in ops {
        op.encode(&mut out);
    }
    out
}

/// The committed seeds: a guest hypervisor's posting life cycle in x2APIC mode (post,
/// ON outstanding, harvest, SN, URG, back to remapped), the same in xAPIC mode, and bad
/// descriptors (outside RAM, in the hole, reserved control bits) with and without FPD.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    // Slot 3 (pd = 3 << 3 | 0): 0x80c0.
    let slot = 3 << 3;
    let control = |nv: u64, ndst: u64| (nv << PD_NV_SHIFT) | (ndst << PD_NDST_SHIFT);
    let lifecycle = |ndst: u64| {
        vec![
            PostingOp::Descriptor {
                pd: slot,
                pir: 0,
                control: control(0xf2, ndst),
            },
            PostingOp::Posted {
                index: 0x21,
                vector: 0x65,
                pd: slot,
                urgent: false,
                fpd: false,
                sid: Some(0x18),
                junk: 0,
            },
            PostingOp::Fire {
                index: 0x21,
                sid: 0x18,
                subhandle: None,
            },
            PostingOp::Fire {
                index: 0x21,
                sid: 0x18,
                subhandle: Some(1),
            },
            PostingOp::Control {
                pd: slot,
                clear: PD_ON,
                set: PD_SN,
            },
            PostingOp::Harvest { pd: slot },
            PostingOp::Fire {
                index: 0x21,
                sid: 0x18,
                subhandle: None,
            },
            PostingOp::Posted {
                index: 0x21,
                vector: 0x66,
                pd: slot,
                urgent: true,
                fpd: false,
                sid: Some(0x18),
                junk: 0,
            },
            PostingOp::Fire {
                index: 0x21,
                sid: 0x18,
                subhandle: None,
            },
            PostingOp::Fire {
                index: 0x21,
                sid: 0x20,
                subhandle: None,
            },
            PostingOp::Remapped {
                index: 0x21,
                vector: 0x45,
                dest: 0x1_0001,
            },
            PostingOp::Fire {
                index: 0x21,
                sid: 0x18,
                subhandle: None,
            },
        ]
    };
    let bad = vec![
        // In the hole between the regions.
        PostingOp::Posted {
            index: 1,
            vector: 0x30,
            pd: 5,
            urgent: false,
            fpd: false,
            sid: None,
            junk: 0,
        },
        PostingOp::Fire {
            index: 1,
            sid: 0,
            subhandle: None,
        },
        // Far beyond RAM, with FPD.
        PostingOp::Posted {
            index: 2,
            vector: 0x30,
            pd: (0x0123_4567_89ab << 3) | 7,
            urgent: false,
            fpd: true,
            sid: None,
            junk: 0,
        },
        PostingOp::Fire {
            index: 2,
            sid: 0,
            subhandle: None,
        },
        // Reserved control bits.
        PostingOp::Descriptor {
            pd: 1 << 3,
            pir: u64::MAX,
            control: control(0x40, 1) | (1 << 24),
        },
        PostingOp::Posted {
            index: 3,
            vector: 0xff,
            pd: 1 << 3,
            urgent: true,
            fpd: false,
            sid: None,
            junk: 0,
        },
        PostingOp::Fire {
            index: 3,
            sid: 0,
            subhandle: None,
        },
        PostingOp::ClearFaults {},
        // Reserved IRTE bits (37:24).
        PostingOp::Posted {
            index: 4,
            vector: 0x31,
            pd: slot,
            urgent: false,
            fpd: false,
            sid: None,
            junk: 0x45,
        },
        PostingOp::Fire {
            index: 4,
            sid: 0,
            subhandle: None,
        },
        // The last slot of the high region.
        PostingOp::Descriptor {
            pd: 6,
            pir: 0,
            control: control(0x41, 2),
        },
        PostingOp::Posted {
            index: 5,
            vector: 0x80,
            pd: 6,
            urgent: false,
            fpd: false,
            sid: None,
            junk: 0x03,
        },
        PostingOp::Fire {
            index: 5,
            sid: 0,
            subhandle: None,
        },
    ];
    let x2apic = PostingSetup {
        eime: true,
        posted: true,
        fault_event: true,
    };
    let xapic = PostingSetup {
        eime: false,
        posted: true,
        fault_event: true,
    };
    let no_pi = PostingSetup {
        eime: true,
        posted: false,
        fault_event: true,
    };
    vec![
        (
            "x2apic-lifecycle",
            encode_input(&x2apic, &lifecycle(0x1_0123)),
        ),
        (
            "xapic-lifecycle",
            encode_input(&xapic, &lifecycle(0x2a << 8)),
        ),
        ("bad-descriptors", encode_input(&x2apic, &bad)),
        ("without-cap-pi", encode_input(&no_pi, &lifecycle(0x1_0123))),
    ]
}

#[cfg(test)]
mod tests {
    use virtual_iommu::GuestMemoryReader;

    use super::*;

    #[test]
    fn seeds_decode_and_pass() {
        for (name, bytes) in seeds() {
            let mut u = arbitrary::Unstructured::new(&bytes);
            let setup = <PostingSetup as arbitrary::Arbitrary>::arbitrary(&mut u).unwrap();
            let mut ops = Vec::new();
            for_each_op::<PostingOp>(u.take_rest(), |op| ops.push(op));
            assert!(ops.len() >= 10, "{name}: {} ops", ops.len());
            assert_eq!(encode_input(&setup, &ops), bytes, "{name} round trip");
            run(&bytes);
        }
    }

    /// The committed seeds (`corpus/vtd_posting/seed-*`, written by
    /// `examples/gen_seeds.rs`) still pass.
    #[test]
    fn committed_seeds_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/vtd_posting");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("corpus directory") {
            let path = entry.expect("entry").path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
            {
                run(&std::fs::read(&path).expect("seed"));
                n += 1;
            }
        }
        assert!(n >= 3, "only {n} seeds");
    }

    #[test]
    fn descriptor_addresses_cover_ram_edges_and_holes() {
        assert_eq!(descriptor_address(0), PD_SLOTS_BASE);
        assert_eq!(descriptor_address(4), LOW_SIZE - PD_SIZE);
        assert_eq!(descriptor_address(5), LOW_SIZE);
        assert_eq!(descriptor_address(6), HIGH_BASE + HIGH_SIZE - PD_SIZE);
        assert_eq!(descriptor_address(7 | (1 << 60)), 1 << 63);
        let mem = FakeMem::new();
        let mut b = [0u8; 64];
        assert!(mem.read(descriptor_address(4), &mut b).is_ok());
        assert!(mem.read(descriptor_address(5), &mut b).is_err());
    }
}
