//! The interrupt router: every interrupt source owns a GSI, and its KVM route is the
//! source's raw message translated by the guest's IOMMU (or by the IOMMU-less policy).
//!
//! Routes are the interrupt-entry cache. A source's route changes when the source is
//! reprogrammed or, with interrupt remapping, when the guest invalidates the IRTE the route
//! was built from, exactly as on hardware: an IRTE write alone changes nothing. Each batch of
//! changes is committed with one `KVM_SET_GSI_ROUTING`, and an index-selective invalidation
//! re-translates only the routes keyed by the invalidated indices. A source whose message is
//! blocked has no route; when it fires, the fault is recorded in the IOMMU then.

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

    /// Sets the raw messages of sources (`None`: the source is disabled) and commits their
    /// routes with one `KVM_SET_GSI_ROUTING`.
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
            };
            let route = self.translate_source(&mut st, &mut src);
            st.sources.insert(gsi, src);
            batch.push((gsi, route));
        }
        self.routes.update(batch)?;
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
    /// cover (all of them when remapping state changed), commits once, then sends the
    /// unit's event interrupts, so a guest waiting for invalidation completion sees the
    /// new routes in place.
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
            for gsi in affected {
                if let Some(mut src) = st.sources.get(&gsi).copied() {
                    let route = self.translate_source(&mut st, &mut src);
                    st.sources.insert(gsi, src);
                    batch.push((gsi, route));
                }
            }
            drop(st);
            self.routes.update(batch)?;
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
