//! Router tests against the real VT-d model and a KVM recorder.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use devices::BusDevice;
use kvm_bindings::kvm_irq_routing_entry;
use virtual_iommu::msi::DeliveryMode;
use virtual_iommu::vtd::irte::build;
use virtual_iommu::vtd::regs::{
    FEADDR_REG, FECTL_REG, FEDATA_REG, FSTS_PPF, FSTS_REG, GCMD_IRE, GCMD_REG, GCMD_SIRTP,
    GSTS_REG, IRTA_EIME, IRTA_REG,
};
use virtual_iommu::{Effects, IecInvalidation, MsiMessage, SourceId, VtdConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::interrupt::routes::RouteError;
use crate::iommu::{Iommu, IommuEffects, VtdMmio};

/// A committed route: (address_lo, address_hi, data).
type Route = (u32, u32, u32);

/// Records what the router asks of KVM.
#[derive(Default)]
struct Kvm {
    /// Committed tables: gsi -> (address_lo, address_hi, data).
    commits: Mutex<Vec<BTreeMap<u32, Route>>>,
    lines: Mutex<Vec<u32>>,
    msis: Mutex<Vec<MsiMessage>>,
    /// Bound irqfds: gsi -> raw fd, with the route KVM held for the GSI when bound.
    irqfds: Mutex<BTreeMap<u32, (i32, Option<Route>)>>,
}

impl RoutingBackend for Kvm {
    fn set_routes(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), RouteError> {
        // SAFETY: the router only builds MSI entries, so `msi` is the live union member.
        let table = entries
            .iter()
            .map(|e| unsafe {
                (
                    e.gsi,
                    (e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data),
                )
            })
            .collect();
        self.commits.lock().unwrap().push(table);
        Ok(())
    }
}
impl IrqLine for Kvm {
    fn set_irq_line(&self, gsi: u32, _level: bool) -> Result<(), kvm_ioctls::Error> {
        self.lines.lock().unwrap().push(gsi);
        Ok(())
    }
}
impl MsiSignal for Kvm {
    fn signal_msi(&self, msg: MsiMessage) -> Result<(), kvm_ioctls::Error> {
        self.msis.lock().unwrap().push(msg);
        Ok(())
    }
}
impl IrqfdBackend for Kvm {
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
        let route = self.committed(gsi);
        self.irqfds
            .lock()
            .unwrap()
            .insert(gsi, (fd.as_raw_fd(), route));
        Ok(())
    }
    fn unregister_irqfd(&self, _fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
        self.irqfds.lock().unwrap().remove(&gsi);
        Ok(())
    }
}

impl Kvm {
    fn committed(&self, gsi: u32) -> Option<Route> {
        self.commits
            .lock()
            .unwrap()
            .last()
            .and_then(|t| t.get(&gsi).copied())
    }
    fn commit_count(&self) -> usize {
        self.commits.lock().unwrap().len()
    }
    fn msi_count(&self) -> usize {
        self.msis.lock().unwrap().len()
    }
    fn bound(&self, gsi: u32) -> bool {
        self.irqfds.lock().unwrap().contains_key(&gsi)
    }
}

const IRT: u64 = 0x10000;
/// IRTA size field: 2^(7+1) = 256 entries.
const IRT_SIZE_FIELD: u64 = 7;
const SID: SourceId = SourceId(0x0008);
const IOAPIC_SID: SourceId = SourceId(0xff00);
const PINS: u32 = 24;

/// A remappable-format MSI naming IRTE `handle` (no subhandle).
fn remappable(handle: u16) -> MsiMessage {
    MsiMessage {
        address_lo: 0xfee0_0000
            | (u32::from(handle & 0x7fff) << 5)
            | (1 << 4)
            | (u32::from(handle >> 15) << 2),
        address_hi: 0,
        data: 0,
    }
}

fn host(available: bool) -> HostPosting {
    HostPosting {
        available,
        reason: "test".into(),
    }
}

struct Rig {
    kvm: Arc<Kvm>,
    mem: GuestMemoryMmap,
    router: Arc<InterruptRouter<Kvm>>,
    mmio: VtdMmio<Kvm>,
}

impl Rig {
    fn new() -> Self {
        Self::with_host(host(true))
    }

    fn with_host(host: HostPosting) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let iommu = Arc::new(Iommu::new(VtdConfig::default(), mem.clone()));
        let kvm = Arc::new(Kvm::default());
        let router = InterruptRouter::new(
            kvm.clone(),
            TranslationPolicy::default(),
            Some(iommu.clone()),
            PINS,
            IOAPIC_SID,
            host,
        );
        let mmio = VtdMmio::new(iommu, Arc::downgrade(&router));
        Rig {
            kvm,
            mem,
            router,
            mmio,
        }
    }

    fn write_irte(&self, index: u64, dest: u32, vector: u8) {
        let e = build::remapped(vector, dest, true, DeliveryMode::Fixed, false, false);
        self.mem
            .write_slice(&e.to_bytes(), GuestAddress(IRT + 16 * index))
            .unwrap();
    }

    fn gcmd(&mut self, bit: u32) {
        let mut gsts = [0u8; 4];
        self.mmio.read(GSTS_REG, &mut gsts);
        let v = u32::from_le_bytes(gsts) | bit;
        self.mmio.write(GCMD_REG, &v.to_le_bytes());
    }

    /// Enables remapping in x2APIC mode as Linux does (table, SIRTP, IRE).
    fn enable_ir(&mut self) {
        self.mmio
            .write(IRTA_REG, &(IRT | IRTA_EIME | IRT_SIZE_FIELD).to_le_bytes());
        self.gcmd(GCMD_SIRTP);
        self.gcmd(GCMD_IRE);
    }

    /// Points the fault event at APIC 0 vector 0x42, unmasked.
    fn enable_fault_event(&mut self) {
        self.mmio.write(FEDATA_REG, &0x42u32.to_le_bytes());
        self.mmio.write(FEADDR_REG, &0xfee0_0000u32.to_le_bytes());
        self.mmio.write(FECTL_REG, &0u32.to_le_bytes());
    }

    fn fault_pending(&mut self) -> bool {
        let mut fsts = [0u8; 4];
        self.mmio.read(FSTS_REG, &mut fsts);
        u32::from_le_bytes(fsts) & FSTS_PPF != 0
    }
}

fn invalidate(start: u32, count: u32) -> IommuEffects {
    Effects {
        iec: vec![IecInvalidation::Range { start, count }],
        ..Effects::default()
    }
    .into()
}

fn global() -> IommuEffects {
    Effects {
        iec: vec![IecInvalidation::Global],
        ..Effects::default()
    }
    .into()
}

/// Waits (bounded) for `cond`, which the watcher thread makes true.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn signalled_vectors_invalidate_without_any_kvm_call() {
    let mut rig = Rig::new();
    let n = 64u32;
    for i in 0..n {
        rig.write_irte(u64::from(i), 300 + i, 0x40);
    }
    rig.enable_ir();
    let handles = rig.router.add_signal_vectors(SID, n).unwrap();
    let changes: Vec<_> = handles
        .clone()
        .map(|h| (IrqHandle(h), Some(remappable((h - handles.start) as u16))))
        .collect();
    rig.router.set_sources(&changes).unwrap();
    let h5 = IrqHandle(handles.start + 5);
    assert_eq!(rig.router.route(h5).unwrap().destination(), 305);
    let before = rig.router.stats();

    // The guest rewrites IRTE 5: nothing changes until it invalidates.
    rig.write_irte(5, 1000, 0x41);
    rig.router.trigger(h5);
    assert_eq!(rig.kvm.msis.lock().unwrap()[0].destination(), 305);
    rig.router.apply(&invalidate(5, 1)).unwrap();
    let after = rig.router.stats();
    assert_eq!(
        after.translations - before.translations,
        1,
        "only the covered source"
    );
    rig.router.trigger(h5);
    let last = *rig.kvm.msis.lock().unwrap().last().unwrap();
    assert_eq!((last.destination(), last.vector()), (1000, 0x41));
    assert_eq!(
        rig.kvm.commit_count(),
        0,
        "VMM-signalled vectors own no GSI route"
    );
    assert_eq!(after.signalled, 1);

    // A global invalidation re-translates every programmed source.
    rig.router.apply(&global()).unwrap();
    assert_eq!(
        rig.router.stats().translations - after.translations,
        u64::from(n)
    );
    assert_eq!(rig.kvm.commit_count(), 0);
}

#[test]
fn pin_routes_are_staged_and_committed_once_before_delivery() {
    let mut rig = Rig::new();
    rig.write_irte(4, 290, 0x34);
    rig.write_irte(5, 291, 0x35);
    rig.enable_ir();
    let pin4 = IrqHandle(4);
    rig.router
        .set_sources(&[
            (pin4, Some(remappable(4))),
            (IrqHandle(5), Some(remappable(5))),
        ])
        .unwrap();
    assert_eq!(rig.kvm.commit_count(), 0, "staged");
    rig.write_irte(4, 292, 0x36);
    rig.router.apply(&invalidate(4, 1)).unwrap();
    rig.router.apply(&global()).unwrap();
    assert_eq!(rig.kvm.commit_count(), 0, "still staged");
    rig.router.trigger(pin4);
    assert_eq!(rig.kvm.commit_count(), 1, "one commit before the delivery");
    assert_eq!(*rig.kvm.lines.lock().unwrap(), vec![4]);
    let route = rig.kvm.committed(4).unwrap();
    assert_eq!(route.2 & 0xff, 0x36);
    rig.router.trigger(pin4);
    assert_eq!(rig.kvm.commit_count(), 1, "nothing new to commit");
}

#[test]
fn pin_eoi_is_matched_by_last_delivered_vector_even_after_masking() {
    let mut rig = Rig::new();
    rig.write_irte(9, 290, 0x51);
    rig.enable_ir();
    let pin = IrqHandle(9);
    rig.router
        .set_sources(&[(pin, Some(remappable(9)))])
        .unwrap();
    rig.router.trigger(pin);
    assert_eq!(rig.router.eoi_pins(0x51), vec![9]);
    // Masked while in service: the route is gone, the EOI still finds the pin.
    rig.router.set_sources(&[(pin, None)]).unwrap();
    assert_eq!(rig.router.route(pin), None);
    assert_eq!(rig.router.eoi_pins(0x51), vec![9]);
    assert!(rig.router.eoi_pins(0x52).is_empty());
}

#[test]
fn blocked_signalled_vector_records_fault_when_it_fires() {
    let mut rig = Rig::new();
    rig.enable_ir();
    rig.enable_fault_event();
    let h = IrqHandle(rig.router.add_signal_vectors(SID, 1).unwrap().start);
    // IRTE 9 is not present.
    rig.router.set_sources(&[(h, Some(remappable(9)))]).unwrap();
    assert_eq!(rig.router.route(h), None);
    rig.router.trigger(h);
    assert!(rig.fault_pending(), "fault recorded");
    assert_eq!(rig.kvm.msi_count(), 1, "only the fault event was sent");
    assert_eq!(rig.kvm.msis.lock().unwrap()[0].vector(), 0x42);

    // The guest fills IRTE 9 and invalidates it: delivery works.
    rig.write_irte(9, 7, 0x50);
    rig.router.apply(&invalidate(8, 2)).unwrap();
    rig.router.trigger(h);
    assert_eq!(rig.kvm.msis.lock().unwrap()[1].destination(), 7);
}

#[test]
fn enabling_remapping_retranslates_existing_sources() {
    let mut rig = Rig::new();
    let h = IrqHandle(rig.router.add_signal_vectors(SID, 1).unwrap().start);
    rig.write_irte(3, 290, 0x33);
    rig.router.set_sources(&[(h, Some(remappable(3)))]).unwrap();
    assert_eq!(
        rig.router.route(h),
        None,
        "remapping off: remappable is blocked"
    );
    rig.enable_ir();
    assert_eq!(rig.router.route(h).unwrap().destination(), 290);
}

#[test]
fn without_iommu_the_policy_applies_and_gsis_run_out_cleanly() {
    let kvm = Arc::new(Kvm::default());
    let router = InterruptRouter::new(
        kvm,
        TranslationPolicy { ext_dest_id: true },
        None,
        PINS,
        IOAPIC_SID,
        host(false),
    );
    let h = IrqHandle(router.add_signal_vectors(SID, 1).unwrap().start);
    let raw = MsiMessage {
        address_lo: 0xfee0_0000 | (0x20 << 12) | (0x2 << 5),
        address_hi: 0,
        data: 0x45,
    };
    router.set_sources(&[(h, Some(raw))]).unwrap();
    assert_eq!(router.route(h).unwrap().destination(), 0x220);
    let none: Weak<dyn VectorOwner> = Weak::<NullOwner>::new();
    assert!(router
        .add_irqfd_vectors("big", SID, 2048, none.clone(), IrqfdMode::default())
        .is_ok());
    assert!(matches!(
        router.add_irqfd_vectors("bigger", SID, 2048, none, IrqfdMode::default()),
        Err(RouterError::Registry(_))
    ));
}

struct NullOwner;
impl VectorOwner for NullOwner {
    fn masked_fire(&self, _index: u16) {}
}

/// An owner that records masked fires and serves a direct table.
#[derive(Default)]
struct Owner {
    masked_fires: Mutex<Vec<u16>>,
    table: Mutex<BTreeMap<u16, MsiMessage>>,
}

impl VectorOwner for Owner {
    fn masked_fire(&self, index: u16) {
        self.masked_fires.lock().unwrap().push(index);
    }
    fn read_message(&self, index: u16) -> Option<MsiMessage> {
        self.table.lock().unwrap().get(&index).copied()
    }
}

struct Device {
    owner: Arc<Owner>,
    handles: std::ops::Range<u32>,
    fds: Vec<Arc<EventFd>>,
}

impl Device {
    fn new(rig: &Rig, n: u16, direct: bool) -> Self {
        let owner = Arc::new(Owner::default());
        let weak: Weak<dyn VectorOwner> = Arc::downgrade(&(owner.clone() as Arc<dyn VectorOwner>));
        let (handles, fds) = rig
            .router
            .add_irqfd_vectors(
                "vfio test",
                SID,
                n,
                weak,
                IrqfdMode {
                    direct,
                    vmm_only: false,
                },
            )
            .unwrap();
        Device {
            owner,
            handles,
            fds,
        }
    }
    fn h(&self, i: u32) -> IrqHandle {
        IrqHandle(self.handles.start + i)
    }
    fn gsi(&self, rig: &Rig, i: u32) -> u32 {
        rig.router.irqfd_info(self.h(i)).unwrap().gsi
    }
}

#[test]
fn irqfd_vectors_bind_after_their_route_is_committed_and_invalidations_commit_eagerly() {
    let mut rig = Rig::new();
    for i in 0..64 {
        rig.write_irte(i, 256 + i as u32, 0x60);
    }
    rig.enable_ir();
    let dev = Device::new(&rig, 64, false);
    let changes: Vec<_> = (0..64u32)
        .map(|i| (dev.h(i), Some(remappable(i as u16))))
        .collect();
    rig.router.set_sources(&changes).unwrap();
    assert_eq!(rig.kvm.commit_count(), 1, "all 64 routes in one commit");
    for i in 0..64 {
        let gsi = dev.gsi(&rig, i);
        let bound = rig.kvm.irqfds.lock().unwrap().get(&gsi).copied().unwrap();
        assert!(bound.1.is_some(), "route committed before KVM_IRQFD");
        let info = rig.router.irqfd_info(dev.h(i)).unwrap();
        assert!(info.in_kvm && info.postable);
    }
    let g = &rig.router.group_stats()[0];
    assert_eq!((g.counts.enabled, g.counts.postable), (64, 64));

    // Move vector 7: IRTE rewrite + index-selective invalidation.
    rig.write_irte(7, 1023, 0x61);
    let before = rig.router.stats();
    rig.router.apply(&invalidate(7, 1)).unwrap();
    let after = rig.router.stats();
    assert_eq!(after.translations - before.translations, 1);
    assert_eq!(
        after.routes.commits - before.routes.commits,
        1,
        "committed before apply returns"
    );
    let gsi7 = dev.gsi(&rig, 7);
    let (lo, hi, data) = rig.kvm.committed(gsi7).unwrap();
    let m = MsiMessage {
        address_lo: lo,
        address_hi: hi,
        data,
    };
    assert_eq!((m.destination(), m.vector()), (1023, 0x61));
    assert_eq!(
        after.irqfd_unbinds, 0,
        "the eventfd stays bound; only its route changed"
    );
    assert_eq!(rig.kvm.msi_count(), 0, "no VMM delivery");
}

#[test]
fn blocked_irqfd_vector_is_watched_and_faults_when_the_device_fires() {
    let mut rig = Rig::new();
    rig.write_irte(3, 300, 0x70);
    rig.enable_ir();
    rig.enable_fault_event();
    let dev = Device::new(&rig, 1, false);
    rig.router
        .set_sources(&[(dev.h(0), Some(remappable(3)))])
        .unwrap();
    let gsi = dev.gsi(&rig, 0);
    assert!(rig.kvm.bound(gsi));
    // The guest clears the IRTE and invalidates: the vector leaves KVM.
    rig.mem
        .write_slice(&[0u8; 16], GuestAddress(IRT + 16 * 3))
        .unwrap();
    rig.router.apply(&invalidate(3, 1)).unwrap();
    assert!(!rig.kvm.bound(gsi), "detached from KVM");
    assert!(!rig.router.irqfd_info(dev.h(0)).unwrap().in_kvm);
    dev.fds[0].write(1).unwrap();
    eventually("the fault event", || rig.kvm.msi_count() == 1);
    assert!(rig.fault_pending());
    assert_eq!(rig.router.group_stats()[0].blocked, 1);
    // Restored: back in KVM.
    rig.write_irte(3, 301, 0x71);
    rig.router.apply(&invalidate(3, 1)).unwrap();
    assert!(rig.kvm.bound(gsi));
}

#[test]
fn masked_irqfd_vector_reports_fires_to_its_owner_and_rebinds_on_unmask() {
    let mut rig = Rig::new();
    rig.write_irte(0, 300, 0x70);
    rig.enable_ir();
    let dev = Device::new(&rig, 2, false);
    rig.router
        .set_sources(&[(dev.h(0), Some(remappable(0)))])
        .unwrap();
    let gsi = dev.gsi(&rig, 0);
    rig.router.set_masked(&[(dev.h(0), true)]).unwrap();
    assert!(!rig.kvm.bound(gsi));
    dev.fds[0].write(1).unwrap();
    eventually("the masked fire", || {
        *dev.owner.masked_fires.lock().unwrap() == vec![0]
    });
    assert_eq!(rig.kvm.msi_count(), 0, "a masked vector is not delivered");
    rig.router.set_masked(&[(dev.h(0), false)]).unwrap();
    assert!(rig.kvm.bound(gsi));
    // The owner delivers the pending interrupt once through the VMM.
    rig.router.trigger(dev.h(0));
    assert_eq!(rig.kvm.msis.lock().unwrap()[0].destination(), 300);
    // A vector without a message that fires is dropped, not delivered.
    dev.fds[1].write(1).unwrap();
    eventually("the drop", || rig.router.group_stats()[0].blocked == 1);
    assert_eq!(rig.kvm.msi_count(), 1);
}

#[test]
fn direct_vectors_are_learnt_when_they_fire_and_reread_on_invalidation() {
    let mut rig = Rig::new();
    rig.write_irte(0x20, 290, 0x44);
    rig.enable_ir();
    let dev = Device::new(&rig, 2, true);
    let gsi0 = dev.gsi(&rig, 0);
    dev.owner.table.lock().unwrap().insert(0, remappable(0x20));
    // Compatibility format in the device's table: delivered by the VMM at every interrupt.
    let compat = MsiMessage::compat(5, false, 0x45, DeliveryMode::Fixed, false);
    dev.owner.table.lock().unwrap().insert(1, compat);
    assert!(
        !rig.kvm.bound(gsi0),
        "nothing known before the first interrupt"
    );
    dev.fds[0].write(1).unwrap();
    eventually("the first delivery", || rig.kvm.msi_count() == 1);
    assert_eq!(rig.kvm.msis.lock().unwrap()[0].destination(), 290);
    assert!(rig.kvm.bound(gsi0), "learnt: KVM delivers it from now on");

    // Compatibility-format vector: re-read and delivered by the VMM each time (it passes
    // through under IR only with CFI; here it is blocked, so it faults instead).
    dev.fds[1].write(1).unwrap();
    eventually("the compat fire", || {
        rig.router.group_stats()[0].blocked == 1
    });
    assert!(!rig.kvm.bound(dev.gsi(&rig, 1)));

    // The guest points its table entry at another IRTE and invalidates that one: re-read.
    rig.write_irte(0x21, 291, 0x46);
    dev.owner.table.lock().unwrap().insert(0, remappable(0x21));
    rig.router.apply(&invalidate(0x21, 1)).unwrap();
    let (lo, hi, data) = rig.kvm.committed(gsi0).unwrap();
    let m = MsiMessage {
        address_lo: lo,
        address_hi: hi,
        data,
    };
    assert_eq!((m.destination(), m.vector()), (291, 0x46));
}

#[test]
fn postable_report_follows_the_host_and_the_routes() {
    let mut rig = Rig::with_host(host(false));
    rig.write_irte(0, 300, 0x70);
    rig.enable_ir();
    let dev = Device::new(&rig, 1, false);
    rig.router
        .set_sources(&[(dev.h(0), Some(remappable(0)))])
        .unwrap();
    let g = &rig.router.group_stats()[0];
    assert_eq!(
        (g.counts.enabled, g.counts.in_kvm, g.counts.postable),
        (1, 1, 0)
    );
    assert!(!rig.router.irqfd_info(dev.h(0)).unwrap().postable);
}

#[test]
fn concurrent_updates_leave_kvm_with_the_newest_translation() {
    let rig = Rig::new();
    let dev = Device::new(&rig, 1, false);
    let h = dev.h(0);
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let router = rig.router.clone();
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    // Raw (untranslated) messages carry 8-bit destinations.
                    let m = MsiMessage::compat(
                        (t * 50 + i) % 256,
                        false,
                        0x40 + t as u8,
                        DeliveryMode::Fixed,
                        false,
                    );
                    router.set_sources(&[(h, Some(m))]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let cached = rig.router.route(h).unwrap();
    let gsi = dev.gsi(&rig, 0);
    let (lo, hi, data) = rig.kvm.committed(gsi).unwrap();
    assert_eq!(
        (cached.address_lo, cached.address_hi, cached.data),
        (lo, hi, data),
        "KVM holds the translation the router cached last"
    );
}

mod vtd_posting;
