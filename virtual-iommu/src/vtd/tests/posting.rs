//! Posted-format IRTEs (CAP.PI) driven through [`VtdUnit`] the way a guest hypervisor
//! uses them: entries naming a posted-interrupt descriptor, interrupts delivered through
//! [`VtdUnit::deliver`], the descriptor's PIR/ON/SN read back from guest memory.

use super::*;
use crate::vtd::posted::{build as pd, PD_ON, PD_SN};

/// Where the tests put the posted-interrupt descriptor (64-byte aligned, in RAM).
const PD: u64 = 0x9040;
/// The notification vector and destination the descriptor names.
const NV: u8 = 0xf2;
const NDST: u32 = 0x0001_0123;

fn control(m: &FakeMem) -> u64 {
    let mut b = [0u8; 8];
    m.read(PD + 32, &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn set_control(m: &FakeMem, c: u64) {
    m.put(PD + 32, &c.to_le_bytes());
}

fn pir(m: &FakeMem, vector: u8) -> bool {
    m.get_u32(PD + u64::from(vector / 32) * 4) & (1 << (vector % 32)) != 0
}

/// A unit with remapping on (x2APIC mode), a descriptor at [`PD`] and entry 0x30 posting
/// `vector` into it (SVT = 1 with the device's SID).
fn posting_unit(vector: u8, urgent: bool) -> (VtdUnit, FakeMem) {
    let (u, m, _) = enabled_unit(true);
    m.put(
        PD,
        &pd::descriptor(pd::control(NV, NDST, true, false, false)),
    );
    m.put_irte(
        0x30,
        irte_build::with_requester_id(irte_build::posted(vector, PD, urgent), DEVICE_SID.0, 0),
    );
    (u, m)
}

fn fire(u: &mut VtdUnit, m: &FakeMem) -> Effects {
    let (t, e) = u.deliver(m, DEVICE_SID, remappable(0x30, None));
    assert!(t.posted().is_some(), "{t:?}");
    e
}

#[test]
fn posted_entry_translates_to_no_route_keyed_by_its_index() {
    let (u, m) = posting_unit(0x65, false);
    let t = u.translate(&m, DEVICE_SID, remappable(0x30, None));
    let p = t.posted().expect("posted");
    assert_eq!(t.message(), None, "no route");
    assert_eq!(t.irte_index(), Some(0x30));
    assert_eq!((p.entry.vector, p.entry.descriptor_address), (0x65, PD));
    assert!(p.x2apic && !p.entry.urgent);
    // Translation is pure: the descriptor is untouched.
    assert_eq!(control(&m), pd::control(NV, NDST, true, false, false));
    assert!(!pir(&m, 0x65));
}

#[test]
fn post_sets_pir_and_on_and_notifies_once_until_on_is_cleared() {
    let (mut u, m) = posting_unit(0x65, false);
    let e = fire(&mut u, &m);
    assert_eq!(e.interrupts.len(), 1);
    let n = e.interrupts[0];
    assert_eq!((n.destination(), n.vector()), (NDST, NV));
    assert!(pir(&m, 0x65));
    assert_eq!(control(&m) & PD_ON, PD_ON);
    // ON still set: posted, not notified.
    for _ in 0..3 {
        assert!(fire(&mut u, &m).is_empty());
    }
    // The guest clears ON (and harvests PIR): the next interrupt notifies again.
    set_control(&m, control(&m) & !PD_ON);
    m.put(PD, &[0u8; 32]);
    let e = fire(&mut u, &m);
    assert_eq!(e.interrupts, vec![n]);
    assert!(pir(&m, 0x65));
    assert_eq!(r32(&u, FSTS_REG), 0, "no fault");
}

#[test]
fn sn_suppresses_and_urgent_overrides() {
    let (mut u, m) = posting_unit(0x41, false);
    set_control(&m, control(&m) | PD_SN);
    assert!(fire(&mut u, &m).is_empty());
    assert!(pir(&m, 0x41));
    assert_eq!(control(&m) & PD_ON, 0, "suppressed: ON stays clear");
    // URG = 1 in the entry (rewritten; the unit reads it at this interrupt).
    m.put_irte(
        0x30,
        irte_build::with_requester_id(irte_build::posted(0x42, PD, true), DEVICE_SID.0, 0),
    );
    let e = fire(&mut u, &m);
    assert_eq!(e.interrupts.len(), 1);
    assert_eq!(control(&m) & (PD_ON | PD_SN), PD_ON | PD_SN);
    assert!(pir(&m, 0x41) && pir(&m, 0x42));
}

#[test]
fn xapic_mode_notifies_ndst_15_8() {
    let (mut u, m, _) = enabled_unit(false);
    m.put(
        PD,
        &pd::descriptor(pd::control(NV, 0x2a, false, false, false)),
    );
    m.put_irte(0x30, irte_build::posted(0x50, PD, false));
    let e = fire(&mut u, &m);
    assert_eq!(e.interrupts[0].destination(), 0x2a);
    assert_eq!(e.interrupts[0].address_hi, 0);
}

#[test]
fn descriptor_outside_ram_is_fault_0x27_and_fpd_suppresses_it() {
    let (mut u, m) = posting_unit(0x65, false);
    setup_fault_event(&mut u, &m);
    // Beyond RAM (1 MiB) and far beyond (bits 63:32 of the address).
    for (index, address) in [(0x31u16, RAM_SIZE as u64), (0x32, 0xdead_0000_0000_0040)] {
        m.put_irte(u32::from(index), irte_build::posted(0x65, address, false));
        let (t, e) = u.deliver(&m, DEVICE_SID, remappable(index, None));
        assert_eq!(t.posted().unwrap().entry.descriptor_address, address);
        // The fault event for the first record only (PPF was clear then), never a
        // notification.
        let expected = if index == 0x31 {
            vec![fault_event_msg()]
        } else {
            vec![]
        };
        assert_eq!(e.interrupts, expected);
    }
    // Two records: reason 0x27 with each index.
    let mut seen = Vec::new();
    for rec in 0..2u64 {
        let at = FRCD_REG + 16 * rec;
        let hi = r32(&u, at + 12);
        assert_ne!(hi & (1 << 31), 0, "F");
        seen.push(((hi & 0xff) as u8, (r64(&u, at) >> 48) as u16));
    }
    assert_eq!(seen, vec![(0x27, 0x31), (0x27, 0x32)]);
    assert_eq!(r32(&u, FSTS_REG) & FSTS_PPF, FSTS_PPF);
    // FPD: nothing recorded.
    let (mut u, m) = posting_unit(0x65, false);
    setup_fault_event(&mut u, &m);
    m.put_irte(
        0x33,
        irte_build::with_fpd(irte_build::posted(0x65, RAM_SIZE as u64, false)),
    );
    let (_, e) = u.deliver(&m, DEVICE_SID, remappable(0x33, None));
    assert!(e.is_empty());
    assert_eq!(r32(&u, FSTS_REG), 0);
}

#[test]
fn reserved_descriptor_bits_are_fault_0x28_and_post_nothing() {
    let (mut u, m) = posting_unit(0x65, false);
    setup_fault_event(&mut u, &m);
    set_control(&m, control(&m) | (1 << 24));
    let (_, e) = u.deliver(&m, DEVICE_SID, remappable(0x30, None));
    assert_eq!(e.interrupts, vec![fault_event_msg()]);
    assert_eq!(r32(&u, FRCD_REG + 12) & 0xff, 0x28);
    assert_eq!(r64(&u, FRCD_REG) >> 48, 0x30);
    assert!(!pir(&m, 0x65));
}

#[test]
fn posted_format_reserved_bits_and_source_validation() {
    let (mut u, m) = posting_unit(0x65, false);
    let good = irte_build::posted(0x65, PD, false);
    // Low 7:2, 13:12, 37:24; high 95:84.
    for bit in [2u32, 4, 7, 12, 13, 24, 31, 37] {
        m.put_irte(
            0x40,
            Irte {
                low: good.low | (1 << bit),
                high: good.high,
            },
        );
        let f = u
            .translate(&m, DEVICE_SID, remappable(0x40, None))
            .fault()
            .unwrap_or_else(|| panic!("low bit {bit} accepted"));
        assert_eq!(f.reason, FaultReason::EntryReserved, "low bit {bit}");
    }
    for bit in [84u32, 95] {
        m.put_irte(
            0x40,
            Irte {
                low: good.low,
                high: good.high | (1 << (bit - 64)),
            },
        );
        let f = u.translate(&m, DEVICE_SID, remappable(0x40, None)).fault();
        assert_eq!(
            f.map(|f| f.reason),
            Some(FaultReason::EntryReserved),
            "bit {bit}"
        );
    }
    // AVAIL (11:8) is software's; SVT = 3 is reserved.
    m.put_irte(
        0x40,
        Irte {
            low: good.low | (0xf << 8),
            high: good.high,
        },
    );
    assert!(u
        .translate(&m, DEVICE_SID, remappable(0x40, None))
        .posted()
        .is_some());
    m.put_irte(
        0x40,
        Irte {
            low: good.low,
            high: good.high | (3 << 18),
        },
    );
    let f = u.translate(&m, DEVICE_SID, remappable(0x40, None)).fault();
    assert_eq!(f.map(|f| f.reason), Some(FaultReason::EntryReserved));
    // Source validation applies as in remapped format: another requester faults 0x26.
    let (t, _) = u.deliver(&m, SourceId(0x0020), remappable(0x30, None));
    assert_eq!(
        t.fault().map(|f| f.reason),
        Some(FaultReason::SourceIdMismatch)
    );
    assert!(!pir(&m, 0x65), "a refused requester posts nothing");
}

#[test]
fn without_cap_pi_im_is_reserved() {
    let mut u = VtdUnit::new(VtdConfig {
        posted_interrupts: false,
        ..VtdConfig::default()
    });
    let m = FakeMem::new();
    linux_enable(&mut u, &m, true, false);
    assert_eq!(r64(&u, CAP_REG) & CAP_PI, 0);
    m.put(
        PD,
        &pd::descriptor(pd::control(NV, NDST, true, false, false)),
    );
    m.put_irte(0x30, irte_build::posted(0x65, PD, false));
    let (t, e) = u.deliver(&m, DEVICE_SID, remappable(0x30, None));
    assert_eq!(
        t.fault().map(|f| f.reason),
        Some(FaultReason::EntryReserved)
    );
    assert!(e.is_empty(), "fault event not set up");
    assert!(!pir(&m, 0x65));
}

#[test]
fn back_to_remapped_format_translates_to_a_route_again() {
    let (mut u, m) = posting_unit(0x65, false);
    assert!(!fire(&mut u, &m).is_empty());
    let remapped = irte_build::with_requester_id(
        irte_build::remapped(0x44, 300, true, DeliveryMode::Fixed, false, false),
        DEVICE_SID.0,
        0,
    );
    m.put_irte(0x30, remapped);
    let (t, e) = u.deliver(&m, DEVICE_SID, remappable(0x30, None));
    let msg = t.message().expect("a route again");
    assert_eq!((msg.destination(), msg.vector()), (300, 0x44));
    assert!(e.is_empty());
}
