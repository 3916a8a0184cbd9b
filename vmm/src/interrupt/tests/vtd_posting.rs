//! VT-d posted-format IRTEs through the router: a source whose entry is posted has no
//! route; each interrupt is posted into the descriptor in guest memory by the IOMMU, and
//! the notification event (vector NV to NDST) is what KVM is asked to deliver.

use virtual_iommu::vtd::posted::{build as pd, PD_ON, PD_SN};

use super::*;

/// The descriptor (64-byte aligned, in the rig's 1 MiB of RAM).
const PD: u64 = 0x2_0040;
/// Notification vector and destination (an x2APIC ID above 255).
const NV: u8 = 0xf2;
const NDST: u32 = 287;
/// The IRTE the source names, and the vector it posts.
const INDEX: u16 = 0x21;
const VV: u8 = 0x65;

impl Rig {
    fn write_posted(&self, index: u16, vector: u8, address: u64, urgent: bool) {
        let e = build::posted(vector, address, urgent);
        self.mem
            .write_slice(&e.to_bytes(), GuestAddress(IRT + 16 * u64::from(index)))
            .unwrap();
    }

    fn control(&self) -> u64 {
        self.mem.read_obj(GuestAddress(PD + 32)).unwrap()
    }

    fn set_control(&self, c: u64) {
        self.mem.write_obj(c, GuestAddress(PD + 32)).unwrap();
    }

    fn pir_set(&self, vector: u8) -> bool {
        let dword: u32 = self
            .mem
            .read_obj(GuestAddress(PD + u64::from(vector / 32) * 4))
            .unwrap();
        dword & (1 << (vector % 32)) != 0
    }

    fn clear_pir(&self) {
        self.mem.write_slice(&[0u8; 32], GuestAddress(PD)).unwrap();
    }

    /// Remapping on, the descriptor at [`PD`], IRTE [`INDEX`] posting [`VV`] into it.
    fn posting() -> Rig {
        let mut rig = Rig::new();
        rig.enable_ir();
        rig.mem
            .write_slice(
                &pd::descriptor(pd::control(NV, NDST, true, false, false)),
                GuestAddress(PD),
            )
            .unwrap();
        rig.write_posted(INDEX, VV, PD, false);
        rig
    }

    fn notifications(&self) -> usize {
        self.kvm
            .msis
            .lock()
            .unwrap()
            .iter()
            .filter(|m| (m.vector(), m.destination()) == (NV, NDST))
            .count()
    }
}

#[test]
fn posted_vector_sets_pir_and_on_and_notifies_once_until_the_guest_clears_on() {
    let rig = Rig::posting();
    let h = IrqHandle(rig.router.add_signal_vectors(SID, 1).unwrap().start);
    rig.router
        .set_sources(&[(h, Some(remappable(INDEX)))])
        .unwrap();
    assert_eq!(rig.router.route(h), None, "a posted entry is no route");

    rig.router.trigger(h);
    assert!(rig.pir_set(VV));
    assert_eq!(rig.control() & PD_ON, PD_ON);
    assert_eq!(rig.kvm.msi_count(), 1);
    assert_eq!(rig.notifications(), 1, "NV to NDST");
    let n = rig.kvm.msis.lock().unwrap()[0];
    assert!(!n.is_level() && !n.is_remappable());

    // ON still set: more interrupts post, none notifies.
    rig.clear_pir();
    for _ in 0..3 {
        rig.router.trigger(h);
    }
    assert!(rig.pir_set(VV));
    assert_eq!(rig.kvm.msi_count(), 1);

    // The guest's notification handler clears ON (and harvests PIR): notified again.
    rig.set_control(rig.control() & !PD_ON);
    rig.clear_pir();
    rig.router.trigger(h);
    assert_eq!(rig.notifications(), 2);
    assert!(rig.pir_set(VV));
    assert_eq!(rig.kvm.commit_count(), 0, "no route was ever committed");
}

#[test]
fn sn_suppresses_urg_overrides_and_remapped_format_returns_a_route() {
    let rig = Rig::posting();
    let h = IrqHandle(rig.router.add_signal_vectors(SID, 1).unwrap().start);
    rig.router
        .set_sources(&[(h, Some(remappable(INDEX)))])
        .unwrap();
    rig.set_control(rig.control() | PD_SN);
    rig.router.trigger(h);
    assert!(rig.pir_set(VV));
    assert_eq!(rig.control() & PD_ON, 0, "suppressed: ON stays clear");
    assert_eq!(rig.kvm.msi_count(), 0);

    // URG: rewritten and invalidated as a guest hypervisor would.
    rig.write_posted(INDEX, VV, PD, true);
    rig.router.apply(&invalidate(u32::from(INDEX), 1)).unwrap();
    rig.clear_pir();
    rig.router.trigger(h);
    assert!(rig.pir_set(VV));
    assert_eq!(rig.control() & (PD_ON | PD_SN), PD_ON | PD_SN);
    assert_eq!(rig.notifications(), 1, "urgent overrides SN");

    // Back to remapped format + invalidation: a cached route again, delivered as such.
    rig.write_irte(u64::from(INDEX), 300, 0x45);
    let before = rig.router.stats();
    rig.router.apply(&invalidate(u32::from(INDEX), 1)).unwrap();
    assert_eq!(
        rig.router.stats().translations - before.translations,
        1,
        "the invalidation reached the posted source by its IRTE index"
    );
    let route = rig.router.route(h).expect("a route again");
    assert_eq!((route.destination(), route.vector()), (300, 0x45));
    rig.clear_pir();
    rig.set_control(0);
    rig.router.trigger(h);
    let last = *rig.kvm.msis.lock().unwrap().last().unwrap();
    assert_eq!(last, route);
    assert!(!rig.pir_set(VV), "the descriptor is no longer used");
    assert_eq!(rig.control(), 0);
}

#[test]
fn posted_irqfd_vector_is_watched_and_returns_to_kvm_when_remapped_again() {
    let rig = Rig::posting();
    let dev = Device::new(&rig, 1, false);
    rig.router
        .set_sources(&[(dev.h(0), Some(remappable(INDEX)))])
        .unwrap();
    let gsi = dev.gsi(&rig, 0);
    assert!(
        !rig.kvm.bound(gsi),
        "KVM cannot post into the guest's descriptor"
    );
    dev.fds[0].write(1).unwrap();
    eventually("the notification", || rig.kvm.msi_count() == 1);
    assert!(rig.pir_set(VV));
    assert_eq!(rig.notifications(), 1);
    assert_eq!(rig.router.group_stats()[0].vmm_deliveries, 1);

    rig.write_irte(u64::from(INDEX), 290, 0x46);
    rig.router.apply(&invalidate(u32::from(INDEX), 1)).unwrap();
    assert!(rig.kvm.bound(gsi), "back in KVM");
    let (lo, hi, data) = rig.kvm.committed(gsi).unwrap();
    let m = MsiMessage {
        address_lo: lo,
        address_hi: hi,
        data,
    };
    assert_eq!((m.destination(), m.vector()), (290, 0x46));
}

#[test]
fn descriptor_outside_ram_records_fault_0x27_and_notifies_nobody() {
    let mut rig = Rig::posting();
    rig.enable_fault_event();
    rig.write_posted(INDEX, VV, 1 << 40, false);
    let h = IrqHandle(rig.router.add_signal_vectors(SID, 1).unwrap().start);
    rig.router
        .set_sources(&[(h, Some(remappable(INDEX)))])
        .unwrap();
    rig.router.trigger(h);
    assert!(rig.fault_pending());
    assert_eq!(rig.notifications(), 0);
    let msis = rig.kvm.msis.lock().unwrap().clone();
    assert_eq!(msis.len(), 1, "the fault event only");
    assert_eq!(msis[0].vector(), 0x42);
    let mut rec = [0u8; 4];
    rig.mmio
        .read(virtual_iommu::vtd::regs::FRCD_REG + 12, &mut rec);
    assert_eq!(u32::from_le_bytes(rec) & 0xff, 0x27);
}
