//! The interrupt router: every interrupt source owns a GSI, and its KVM route is the
//! source's raw message translated by the guest's IOMMU (or by the IOMMU-less policy).
//!
//! Routes are the interrupt-entry cache. A source's route changes when the source is
//! reprogrammed or, with interrupt remapping, when the guest invalidates the IRTE the route
//! was built from, exactly as on hardware: an IRTE write alone changes nothing. An
//! index-selective invalidation re-translates only the routes keyed by the invalidated
//! indices. A source whose message is blocked has no route; when it fires, the fault is
//! recorded in the IOMMU then.
//!
//! Commits: every source here is delivered by the VMM itself (`KVM_IRQ_LINE` on its GSI),
//! so route changes are staged and committed with one `KVM_SET_GSI_ROUTING` just before
//! the next delivery. Any number of invalidations between two interrupts cost one commit,
//! and a delivery after an invalidation always uses the new route. Sources that KVM
//! delivers without asking the VMM (irqfd: VFIO vectors) are eager: a change to one is
//! committed before the invalidation completes.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use thiserror::Error;
use virtual_iommu::vtd::Fault;
use virtual_iommu::{Effects, MsiMessage, SourceId, Translation};

use crate::interrupts::{translate, IrqLine, TranslationPolicy};
use crate::iommu::Iommu;
use crate::routes::{RouteError, RouteStats, RouteTable, RoutingBackend};

/// Highest GSI KVM routes (KVM_MAX_IRQ_ROUTES is 4096).
pub const MAX_GSI: u32 = 4096;

/// Router errors.
#[derive(Debug, Error)]
pub enum RouterError {
    /// No GSIs left for a new source.
    #[error("no free GSIs for {0} more interrupt sources (KVM routes at most {MAX_GSI})")]
    Exhausted(u32),
    /// Committing routes failed.
    #[error(transparent)]
    Route(#[from] RouteError),
}

/// Injects one message directly (`KVM_SIGNAL_MSI`): the IOMMU's own event interrupts.
pub trait MsiSignal: Send + Sync {
    /// Delivers `msg` (KVM's x2APIC API layout).
    fn signal_msi(&self, msg: MsiMessage) -> Result<(), kvm_ioctls::Error>;
}

impl MsiSignal for VmFd {
    fn signal_msi(&self, msg: MsiMessage) -> Result<(), kvm_ioctls::Error> {
        let m = kvm_msi {
            address_lo: msg.address_lo,
            address_hi: msg.address_hi,
            data: msg.data,
            ..Default::default()
        };
        VmFd::signal_msi(self, m).map(|_| ())
    }
}

/// What KVM needs from the VM for routing: routes, lines and direct MSIs.
pub trait InterruptBackend: RoutingBackend + IrqLine + MsiSignal {}
impl<T: RoutingBackend + IrqLine + MsiSignal> InterruptBackend for T {}

/// One interrupt source and what its route was built from.
#[derive(Clone, Copy, Debug)]
struct Source {
    sid: SourceId,
    raw: Option<MsiMessage>,
    /// The IRTE index the last translation named: the key for IEC invalidations.
    irte: Option<u32>,
    /// Why the source is blocked, when it is.
    blocked: Option<Fault>,
    /// KVM delivers this source on its own (irqfd): its route changes commit at once.
    eager: bool,
}

/// Work counters for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Translations performed (each asks the IOMMU or applies the policy once).
    pub translations: u64,
    /// Invalidation batches handled.
    pub invalidations: u64,
    /// Route commits and changed routes.
    pub routes: RouteStats,
}

struct State {
    sources: BTreeMap<u32, Source>,
    next_gsi: u32,
    translations: u64,
    invalidations: u64,
}

/// The VM's interrupt router.
pub struct InterruptRouter<B: InterruptBackend> {
    routes: RouteTable<Arc<B>>,
    state: Mutex<State>,
    policy: TranslationPolicy,
    iommu: Option<Arc<Iommu>>,
}

impl<B: InterruptBackend> InterruptRouter<B> {
    /// A router whose first `reserved` GSIs (the IOAPIC pins) are pre-assigned.
    pub fn new(
        backend: Arc<B>,
        policy: TranslationPolicy,
        iommu: Option<Arc<Iommu>>,
        reserved: u32,
    ) -> Self {
        InterruptRouter {
            routes: RouteTable::new(backend),
            state: Mutex::new(State {
                sources: BTreeMap::new(),
                next_gsi: reserved,
                translations: 0,
                invalidations: 0,
            }),
            policy,
            iommu,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `count` consecutive GSIs for a new source's vectors.
    pub fn allocate(&self, count: u32) -> Result<Range<u32>, RouterError> {
        let mut st = self.lock();
        let start = st.next_gsi;
        let end = start
            .checked_add(count)
            .filter(|e| *e <= MAX_GSI)
            .ok_or(RouterError::Exhausted(count))?;
        st.next_gsi = end;
        Ok(start..end)
    }

    /// Translates one source's message: the route it gets and its IRTE key.
    fn translate_source(&self, st: &mut State, src: &mut Source) -> Option<MsiMessage> {
        st.translations += 1;
        src.irte = None;
        src.blocked = None;
        let raw = src.raw?;
        match &self.iommu {
            None => translate(raw, self.policy),
            Some(iommu) => match iommu.translate(src.sid, raw) {
                Translation::Passthrough(m) if !iommu.remapping_enabled() => {
                    translate(m, self.policy)
                }
                t => {
                    src.irte = t.irte_index();
                    src.blocked = t.fault();
                    t.message()
                }
            },
        }
    }

    /// Sets the raw messages of sources (`None`: the source is disabled); their routes are
    /// committed before the next delivery.
    pub fn set_sources(
        &self,
        changes: &[(u32, SourceId, Option<MsiMessage>)],
    ) -> Result<(), RouterError> {
        let mut st = self.lock();
        let mut batch = Vec::with_capacity(changes.len());
        for &(gsi, sid, raw) in changes {
            let mut src = Source {
                sid,
                raw,
                irte: None,
                blocked: None,
                eager: false,
            };
            let route = self.translate_source(&mut st, &mut src);
            st.sources.insert(gsi, src);
            batch.push((gsi, route));
        }
        self.routes.stage(batch)?;
        Ok(())
    }

    /// Delivers GSI `gsi`; a blocked source records its fault in the IOMMU instead.
    pub fn trigger(&self, gsi: u32) {
        let blocked = self.lock().sources.get(&gsi).and_then(|s| s.blocked);
        if let Some(fault) = blocked {
            if let Some(iommu) = &self.iommu {
                let effects = iommu.record_fault(&fault);
                self.deliver(&effects.interrupts);
            }
            return;
        }
        // Staged route changes reach KVM before this delivery uses them.
        if let Err(e) = self.routes.flush() {
            log::error!("GSI {gsi}: committing routes failed: {e}");
            return;
        }
        if let Err(e) = self.routes.backend().set_irq_line(gsi, true) {
            log::error!("GSI {gsi}: KVM_IRQ_LINE failed: {e}");
        }
    }

    /// Sends the IOMMU's own event interrupts.
    fn deliver(&self, interrupts: &[MsiMessage]) {
        for m in interrupts {
            if let Err(e) = self.routes.backend().signal_msi(*m) {
                log::error!("IOMMU event interrupt {m:x?}: KVM_SIGNAL_MSI failed: {e}");
            }
        }
    }

    /// Acts on what an IOMMU register write did: re-translates the routes the invalidations
    /// cover (all of them when remapping state changed), stages them (committing at once
    /// if an eager source changed, so a guest waiting for invalidation completion finds
    /// KVM's routes in place), then sends the unit's event interrupts.
    pub fn apply(&self, effects: &Effects) -> Result<(), RouterError> {
        if !effects.iec.is_empty() || effects.ir_state_changed {
            let mut st = self.lock();
            st.invalidations += 1;
            let all = effects.invalidates_all();
            let affected: Vec<u32> = st
                .sources
                .iter()
                .filter(|(_, s)| all || s.irte.is_some_and(|i| effects.invalidates(i)))
                .map(|(g, _)| *g)
                .collect();
            let mut batch = Vec::with_capacity(affected.len());
            let mut eager = false;
            for gsi in affected {
                if let Some(mut src) = st.sources.get(&gsi).copied() {
                    let route = self.translate_source(&mut st, &mut src);
                    eager |= src.eager;
                    st.sources.insert(gsi, src);
                    batch.push((gsi, route));
                }
            }
            drop(st);
            if eager {
                self.routes.update(batch)?;
            } else {
                self.routes.stage(batch)?;
            }
        }
        self.deliver(&effects.interrupts);
        Ok(())
    }

    /// IOAPIC pins (GSIs below `pins`) whose current route delivers `vector` level-triggered:
    /// the pins a `KVM_EXIT_IOAPIC_EOI` for `vector` ends.
    pub fn level_pins_with_vector(&self, pins: u32, vector: u8) -> Vec<u32> {
        (0..pins)
            .filter(|g| {
                self.routes
                    .get(*g)
                    .is_some_and(|m| m.vector() == vector && m.is_level())
            })
            .collect()
    }

    /// The route of `gsi`.
    pub fn route(&self, gsi: u32) -> Option<MsiMessage> {
        self.routes.get(gsi)
    }

    /// Work counters.
    pub fn stats(&self) -> RouterStats {
        let st = self.lock();
        RouterStats {
            translations: st.translations,
            invalidations: st.invalidations,
            routes: self.routes.stats(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommu::VtdMmio;
    use crate::routes::RouteError;
    use devices::BusDevice;
    use kvm_bindings::kvm_irq_routing_entry;
    use virtual_iommu::msi::DeliveryMode;
    use virtual_iommu::vtd::irte::build;
    use virtual_iommu::vtd::regs::{
        FEADDR_REG, FECTL_REG, FEDATA_REG, FSTS_PPF, FSTS_REG, GCMD_IRE, GCMD_REG, GCMD_SIRTP,
        GSTS_REG, IRTA_EIME, IRTA_REG,
    };
    use virtual_iommu::VtdConfig;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// Records what the router asks of KVM.
    #[derive(Default)]
    struct Kvm {
        commits: Mutex<Vec<usize>>,
        lines: Mutex<Vec<u32>>,
        msis: Mutex<Vec<MsiMessage>>,
    }

    impl RoutingBackend for Kvm {
        fn set_routes(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), RouteError> {
            self.commits.lock().unwrap().push(entries.len());
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

    const IRT: u64 = 0x10000;
    /// IRTA size field: 2^(7+1) = 256 entries.
    const IRT_SIZE_FIELD: u64 = 7;
    const SID: SourceId = SourceId(0x0008);

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

    struct Rig {
        kvm: Arc<Kvm>,
        mem: GuestMemoryMmap,
        router: Arc<InterruptRouter<Kvm>>,
        mmio: VtdMmio<Kvm>,
    }

    impl Rig {
        fn new() -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            let iommu = Arc::new(Iommu::new(VtdConfig::default(), mem.clone()));
            let kvm = Arc::new(Kvm::default());
            let router = Arc::new(InterruptRouter::new(
                kvm.clone(),
                TranslationPolicy::default(),
                Some(iommu.clone()),
                24,
            ));
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

        fn commits(&self) -> usize {
            self.kvm.commits.lock().unwrap().len()
        }
    }

    #[test]
    fn index_selective_invalidation_retranslates_only_covered_routes() {
        let mut rig = Rig::new();
        let n = 64u32;
        for i in 0..n {
            rig.write_irte(u64::from(i), 300 + i, 0x40);
        }
        rig.enable_ir();
        let gsis = rig.router.allocate(n).unwrap();
        let changes: Vec<_> = gsis
            .clone()
            .map(|g| (g, SID, Some(remappable((g - gsis.start) as u16))))
            .collect();
        rig.router.set_sources(&changes).unwrap();
        assert_eq!(rig.router.route(gsis.start + 5).unwrap().destination(), 305);
        let before = rig.router.stats();
        let commits = rig.commits();

        // The guest rewrites IRTE 5: nothing changes until it invalidates.
        rig.write_irte(5, 1000, 0x41);
        assert_eq!(rig.router.route(gsis.start + 5).unwrap().destination(), 305);
        let effects = Effects {
            iec: vec![virtual_iommu::IecInvalidation::Range { start: 5, count: 1 }],
            ..Effects::default()
        };
        rig.router.apply(&effects).unwrap();
        let after = rig.router.stats();
        assert_eq!(
            after.translations - before.translations,
            1,
            "only the covered route is re-translated"
        );
        assert_eq!(rig.commits(), commits, "staged until the next delivery");
        rig.router.trigger(gsis.start + 5);
        assert_eq!(
            rig.commits(),
            commits + 1,
            "one KVM_SET_GSI_ROUTING before the delivery"
        );
        let r = rig.router.route(gsis.start + 5).unwrap();
        assert_eq!((r.destination(), r.vector()), (1000, 0x41));
        assert_eq!(rig.router.route(gsis.start + 6).unwrap().destination(), 306);

        // A global invalidation re-translates every route; unchanged routes cost no commit.
        let global = Effects {
            iec: vec![virtual_iommu::IecInvalidation::Global],
            ..Effects::default()
        };
        rig.router.apply(&global).unwrap();
        assert_eq!(
            rig.router.stats().translations - after.translations,
            u64::from(n)
        );
        rig.router.trigger(gsis.start);
        assert_eq!(
            rig.commits(),
            commits + 1,
            "unchanged routes cost no commit"
        );
        // Two IRTEs rewritten and invalidated twice: still one commit before the delivery.
        rig.write_irte(7, 2000, 0x42);
        rig.write_irte(9, 2001, 0x42);
        rig.router.apply(&global).unwrap();
        rig.router.apply(&effects).unwrap();
        rig.router.trigger(gsis.start + 7);
        assert_eq!(rig.commits(), commits + 2);
        assert_eq!(
            rig.router.route(gsis.start + 9).unwrap().destination(),
            2001
        );
    }

    #[test]
    fn blocked_source_records_fault_when_it_fires() {
        let mut rig = Rig::new();
        rig.enable_ir();
        // Aim the fault event at APIC ID 0, vector 0x42, and unmask it (FECTL.IM clear).
        rig.mmio.write(FEDATA_REG, &0x42u32.to_le_bytes());
        rig.mmio.write(FEADDR_REG, &0xfee0_0000u32.to_le_bytes());
        rig.mmio.write(FECTL_REG, &0u32.to_le_bytes());
        let gsi = rig.router.allocate(1).unwrap().start;
        // IRTE 9 is not present.
        rig.router
            .set_sources(&[(gsi, SID, Some(remappable(9)))])
            .unwrap();
        assert_eq!(rig.router.route(gsi), None);
        rig.router.trigger(gsi);
        assert!(
            rig.kvm.lines.lock().unwrap().is_empty(),
            "a blocked interrupt must not reach KVM"
        );
        let mut fsts = [0u8; 4];
        rig.mmio.read(FSTS_REG, &mut fsts);
        assert_ne!(u32::from_le_bytes(fsts) & FSTS_PPF, 0, "fault recorded");
        assert_eq!(
            rig.kvm.msis.lock().unwrap().len(),
            1,
            "fault event interrupt sent"
        );

        // The guest fills IRTE 9 and invalidates it: the route appears, delivery works.
        rig.write_irte(9, 7, 0x50);
        let effects = Effects {
            iec: vec![virtual_iommu::IecInvalidation::Range { start: 8, count: 2 }],
            ..Effects::default()
        };
        rig.router.apply(&effects).unwrap();
        assert_eq!(rig.router.route(gsi).unwrap().destination(), 7);
        rig.router.trigger(gsi);
        assert_eq!(*rig.kvm.lines.lock().unwrap(), vec![gsi]);
    }

    #[test]
    fn enabling_remapping_retranslates_existing_sources() {
        let mut rig = Rig::new();
        let gsi = rig.router.allocate(1).unwrap().start;
        rig.write_irte(3, 290, 0x33);
        rig.router
            .set_sources(&[(gsi, SID, Some(remappable(3)))])
            .unwrap();
        // Remapping off: a remappable message passes through untranslated, so no route.
        assert_eq!(rig.router.route(gsi), None);
        rig.enable_ir();
        assert_eq!(rig.router.route(gsi).unwrap().destination(), 290);
    }

    #[test]
    fn without_iommu_the_policy_applies_and_gsis_run_out_cleanly() {
        let kvm = Arc::new(Kvm::default());
        let router = InterruptRouter::new(kvm, TranslationPolicy { ext_dest_id: true }, None, 24);
        let gsi = router.allocate(1).unwrap().start;
        assert_eq!(gsi, 24);
        let raw = MsiMessage {
            address_lo: 0xfee0_0000 | (0x20 << 12) | (0x2 << 5),
            address_hi: 0,
            data: 0x45,
        };
        router.set_sources(&[(gsi, SID, Some(raw))]).unwrap();
        assert_eq!(router.route(gsi).unwrap().destination(), 0x220);
        assert!(matches!(
            router.allocate(MAX_GSI),
            Err(RouterError::Exhausted(_))
        ));
    }
}
