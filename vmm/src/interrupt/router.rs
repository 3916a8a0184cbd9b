//! The interrupt router: every source's raw message, its translation (the interrupt-entry
//! cache), and how each kind of source reaches KVM. See [the module docs](super).

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use thiserror::Error;
use virtual_iommu::{MsiMessage, SourceId};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::kvm::InterruptBackend;
use super::policy::{translate_source, TranslationPolicy};
use super::registry::{Delivery, IrqHandle, IrqfdMode, Registry, RegistryError, VectorOwner};
use super::report::{self, GroupCounts, HostPosting};
use super::routes::{RouteError, RouteStats, RouteTable};
use super::watcher::Watcher;
use crate::iommu::{Covers, Iommu, IommuEffects, IommuFault};

/// Router errors.
#[derive(Debug, Error)]
pub enum RouterError {
    /// No room for more sources.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Committing routes failed.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// An eventfd or the watcher thread could not be created.
    #[error("interrupt eventfds: {0}")]
    Io(#[from] std::io::Error),
}

/// Work counters for tests, benchmarks and the exit log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Translations performed (each asks the IOMMU or applies the policy once).
    pub translations: u64,
    /// Invalidation batches handled.
    pub invalidations: u64,
    /// Route commits and changed routes.
    pub routes: RouteStats,
    /// Messages the VMM injected with `KVM_SIGNAL_MSI` for device vectors (emulated
    /// devices' vectors, and irqfd vectors the VMM delivered itself).
    pub signalled: u64,
    /// `KVM_IRQFD` bindings made.
    pub irqfd_binds: u64,
    /// `KVM_IRQFD` bindings removed.
    pub irqfd_unbinds: u64,
}

/// A group of irqfd vectors as seen from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStats {
    /// The group's name (`vfio 0000:01:00.0`, ...).
    pub name: String,
    /// Vectors in the group.
    pub vectors: usize,
    /// Current counts.
    pub counts: GroupCounts,
    /// Interrupts of this group the VMM delivered itself (watched vectors).
    pub vmm_deliveries: u64,
    /// Interrupts of this group that were dropped (no message) or faulted.
    pub blocked: u64,
}

/// One irqfd vector as seen from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqfdInfo {
    /// Its GSI.
    pub gsi: u32,
    /// KVM delivers it (`KVM_IRQFD` bound).
    pub in_kvm: bool,
    /// A posting host would post it.
    pub postable: bool,
}

#[derive(Default)]
struct State {
    reg: Registry,
    translations: u64,
    invalidations: u64,
    signalled: u64,
    binds: u64,
    unbinds: u64,
    /// Per group: VMM deliveries and blocked/dropped interrupts.
    group_counters: Vec<(u64, u64)>,
}

/// What to do for an interrupt of a watched vector, decided under the lock, done without.
enum Watched {
    Masked(Arc<dyn VectorOwner>, u16),
    Fault(IommuFault),
    Deliver(MsiMessage),
    /// An AMD-Vi guest-mode or VT-d posted-format entry: the IOMMU posts it.
    Guest(SourceId, MsiMessage),
    Drop,
}

/// Signals the IOMMU's own PCI MSI (AMD-Vi event interrupts without XT registers).
pub type OwnMsiHook = Arc<dyn Fn() + Send + Sync>;

/// The VM's interrupt router.
pub struct InterruptRouter<B: InterruptBackend> {
    backend: Arc<B>,
    routes: RouteTable<Arc<B>>,
    state: Mutex<State>,
    policy: TranslationPolicy,
    iommu: Option<Arc<Iommu>>,
    host: HostPosting,
    watcher: OnceLock<Watcher>,
    own_msi: OnceLock<OwnMsiHook>,
    me: Weak<Self>,
}

impl<B: InterruptBackend + 'static> InterruptRouter<B> {
    /// A router with `pins` IOAPIC pins (GSIs and handles `0..pins`) whose messages carry
    /// requester ID `ioapic_sid`.
    pub fn new(
        backend: Arc<B>,
        policy: TranslationPolicy,
        iommu: Option<Arc<Iommu>>,
        pins: u32,
        ioapic_sid: SourceId,
        host: HostPosting,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| InterruptRouter {
            routes: RouteTable::new(backend.clone()),
            backend,
            state: Mutex::new(State {
                reg: Registry::with_pins(pins, ioapic_sid),
                ..State::default()
            }),
            policy,
            iommu,
            host,
            watcher: OnceLock::new(),
            own_msi: OnceLock::new(),
            me: me.clone(),
        })
    }

    /// Sets how the IOMMU's own PCI MSI is signalled (once; AMD-Vi).
    pub fn set_own_msi(&self, hook: OwnMsiHook) {
        let _ = self.own_msi.set(hook);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `count` vectors of an emulated device (requester `sid`) that the VMM delivers
    /// with `KVM_SIGNAL_MSI`; returns their handles.
    pub fn add_signal_vectors(&self, sid: SourceId, count: u32) -> Result<Range<u32>, RouterError> {
        Ok(self.lock().reg.add_signal(sid, count)?)
    }

    /// Adds `count` vectors signalled by a device through eventfds (passthrough, virtio):
    /// each gets a GSI and a non-blocking eventfd, returned in vector order for the device.
    /// Until a vector has a deliverable route the VMM watches its eventfd. `mode` says
    /// whether the messages live in the device's own table (read through `owner`) and
    /// whether KVM may deliver them at all.
    pub fn add_irqfd_vectors(
        &self,
        name: &str,
        sid: SourceId,
        count: u16,
        owner: Weak<dyn VectorOwner>,
        mode: IrqfdMode,
    ) -> Result<(Range<u32>, Vec<Arc<EventFd>>), RouterError> {
        let fds = (0..count)
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let watcher = self.watcher()?;
        let mut st = self.lock();
        let handles = st
            .reg
            .add_irqfd_group(name.to_string(), sid, fds.clone(), owner, mode)?;
        for (h, fd) in handles.clone().zip(&fds) {
            watcher.watch(fd, h)?;
            if let Some(Delivery::Irqfd(v)) = st.reg.get_mut(IrqHandle(h)).map(|s| &mut s.delivery)
            {
                v.watched = true;
            }
        }
        st.group_counters.push((0, 0));
        let g = st.reg.groups.len() - 1;
        report::report(&mut st.reg, g, &self.host);
        Ok((handles, fds))
    }

    fn watcher(&self) -> Result<&Watcher, RouterError> {
        if let Some(w) = self.watcher.get() {
            return Ok(w);
        }
        let me = self.me.clone();
        let w = Watcher::start(move |h| match me.upgrade() {
            Some(router) => {
                router.watched_fire(IrqHandle(h));
                true
            }
            None => false,
        })?;
        // A racing caller may have started one first; the loser's thread stops on drop.
        Ok(self.watcher.get_or_init(|| w))
    }

    /// Sets the raw messages of sources (`None`: the source is disabled). Pin routes are
    /// staged and committed before their next delivery; irqfd routes are committed now
    /// (KVM delivers them without asking).
    pub fn set_sources(
        &self,
        changes: &[(IrqHandle, Option<MsiMessage>)],
    ) -> Result<(), RouterError> {
        let mut st = self.lock();
        for &(h, raw) in changes {
            if let Some(src) = st.reg.get_mut(h) {
                src.raw = raw;
            }
        }
        self.update(&mut st, changes.iter().map(|(h, _)| h.0), true)
    }

    /// Sets the device-level mask of irqfd vectors: a masked vector is not delivered by
    /// KVM; the VMM watches it and tells its owner when it fires.
    pub fn set_masked(&self, changes: &[(IrqHandle, bool)]) -> Result<(), RouterError> {
        let mut st = self.lock();
        for &(h, masked) in changes {
            if let Some(Delivery::Irqfd(v)) = st.reg.get_mut(h).map(|s| &mut s.delivery) {
                v.masked = masked;
            }
        }
        self.update(&mut st, changes.iter().map(|(h, _)| h.0), false)
    }

    /// Re-translates (when `retranslate`) the sources `handles`, stages their GSI routes
    /// under the lock that computed them, commits at once when an irqfd vector is
    /// involved, moves irqfd vectors between KVM and the watcher, and reports groups whose
    /// postable count changed.
    fn update(
        &self,
        st: &mut State,
        handles: impl Iterator<Item = u32>,
        retranslate: bool,
    ) -> Result<(), RouterError> {
        let mut pins = Vec::new();
        let mut irqfds = Vec::new();
        let mut touched = Vec::new();
        for h in handles {
            let h = IrqHandle(h);
            let Some(src) = st.reg.get(h) else { continue };
            if retranslate {
                let xlat = translate_source(self.iommu.as_deref(), self.policy, src.sid, src.raw);
                st.translations += 1;
                st.reg.set_xlat(h, xlat);
            }
            let Some(src) = st.reg.get(h) else { continue };
            match &src.delivery {
                Delivery::Signal => {}
                Delivery::Pin { gsi, .. } => pins.push((*gsi, src.gsi_route())),
                Delivery::Irqfd(v) => {
                    irqfds.push((v.gsi, src.gsi_route()));
                    touched.push(h);
                }
            }
        }
        self.routes.stage(pins)?;
        if touched.is_empty() {
            return Ok(());
        }
        // Routes first, so a vector KVM takes over already has its new route.
        self.routes.update(irqfds)?;
        let mut groups = BTreeSet::new();
        for h in touched {
            if let Some(g) = self.sync_irqfd(st, h) {
                groups.insert(g);
            }
        }
        for g in groups {
            report::report(&mut st.reg, g, &self.host);
        }
        Ok(())
    }

    /// Moves irqfd vector `h` to KVM or to the watcher, as its state wants. Returns its group.
    fn sync_irqfd(&self, st: &mut State, h: IrqHandle) -> Option<usize> {
        let watcher = self.watcher.get();
        let src = st.reg.get_mut(h)?;
        let (raw, xlat) = (src.raw, src.xlat);
        let Delivery::Irqfd(v) = &mut src.delivery else {
            return None;
        };
        let want = v.wants_kvm(raw, &xlat);
        if want && !v.attached {
            if let Some(w) = watcher.filter(|_| v.watched) {
                if let Err(e) = w.unwatch(&v.fd) {
                    log::error!("GSI {}: unwatching its eventfd failed: {e}", v.gsi);
                }
                v.watched = false;
            }
            match self.backend.register_irqfd(&v.fd, v.gsi) {
                Ok(()) => {
                    v.attached = true;
                    st.binds += 1;
                }
                Err(e) => log::error!("GSI {}: KVM_IRQFD failed: {e}", v.gsi),
            }
        } else if !want && v.attached {
            match self.backend.unregister_irqfd(&v.fd, v.gsi) {
                Ok(()) => {
                    v.attached = false;
                    st.unbinds += 1;
                }
                Err(e) => log::error!("GSI {}: KVM_IRQFD deassign failed: {e}", v.gsi),
            }
        }
        // A vector KVM does not deliver is always watched, so no interrupt is lost.
        if !v.attached && !v.watched {
            if let Some(w) = watcher {
                match w.watch(&v.fd, h.0) {
                    Ok(()) => v.watched = true,
                    Err(e) => log::error!("GSI {}: watching its eventfd failed: {e}", v.gsi),
                }
            }
        }
        Some(v.group)
    }

    /// An eventfd the watcher polls was signalled.
    fn watched_fire(&self, h: IrqHandle) {
        let fd = match self.lock().reg.get(h).map(|s| &s.delivery) {
            Some(Delivery::Irqfd(v)) => v.fd.clone(),
            _ => return,
        };
        if fd.read().is_err() {
            // Consumed meanwhile (KVM took the vector over): nothing to do.
            return;
        }
        self.learn_direct(h);
        let act = {
            let mut st = self.lock();
            let act = self.watched_action(&mut st, h);
            if let Watched::Deliver(_) = act {
                st.signalled += 1;
            }
            if let Some(Delivery::Irqfd(v)) = st.reg.get(h).map(|s| &s.delivery) {
                let g = v.group;
                if let Some(c) = st.group_counters.get_mut(g) {
                    match act {
                        Watched::Deliver(_) | Watched::Guest(..) => c.0 += 1,
                        Watched::Fault(_) | Watched::Drop => c.1 += 1,
                        Watched::Masked(..) => {}
                    }
                }
            }
            act
        };
        match act {
            Watched::Masked(owner, index) => owner.masked_fire(index),
            Watched::Fault(f) => self.record_fault(&f),
            Watched::Deliver(m) => self.signal(m),
            Watched::Guest(sid, raw) => self.deliver_guest(sid, raw),
            Watched::Drop => log::debug!("irq source {}: fired without a message; dropped", h.0),
        }
    }

    /// Reads a direct vector's message from its device's table when the VMM must.
    fn learn_direct(&self, h: IrqHandle) {
        let owner = {
            let st = self.lock();
            let Some(src) = st.reg.get(h) else { return };
            let Delivery::Irqfd(v) = &src.delivery else {
                return;
            };
            if !v.direct || v.learnt && src.raw.is_some_and(|m| m.is_remappable()) {
                return;
            }
            match st.reg.groups.get(v.group).and_then(|g| g.owner.upgrade()) {
                Some(o) => (o, v.index),
                None => return,
            }
        };
        let raw = owner.0.read_message(owner.1);
        let mut st = self.lock();
        if let Some(src) = st.reg.get_mut(h) {
            src.raw = raw;
            if let Delivery::Irqfd(v) = &mut src.delivery {
                v.learnt = true;
            }
        }
        if let Err(e) = self.update(&mut st, std::iter::once(h.0), true) {
            log::error!("irq source {}: route update failed: {e}", h.0);
        }
    }

    fn watched_action(&self, st: &mut State, h: IrqHandle) -> Watched {
        let Some(src) = st.reg.get(h) else {
            return Watched::Drop;
        };
        let Delivery::Irqfd(v) = &src.delivery else {
            return Watched::Drop;
        };
        if v.masked {
            return match st.reg.groups.get(v.group).and_then(|g| g.owner.upgrade()) {
                Some(owner) => Watched::Masked(owner, v.index),
                None => Watched::Drop,
            };
        }
        match (src.xlat.blocked, src.xlat.route, src.raw) {
            (Some(f), _, _) => Watched::Fault(f),
            (None, Some(m), _) => Watched::Deliver(m),
            (None, None, Some(raw)) if src.xlat.guest => Watched::Guest(src.sid, raw),
            (None, None, _) => Watched::Drop,
        }
    }

    /// Delivers source `h` once through the VMM: a VMM-signalled vector, an IOAPIC pin
    /// (after committing staged routes), or an irqfd vector whose pending bit was just
    /// cleared. A blocked source records its fault in the IOMMU instead.
    pub fn trigger(&self, h: IrqHandle) {
        let (xlat, pin, sid, raw) = {
            let mut st = self.lock();
            let Some(src) = st.reg.get_mut(h) else { return };
            let xlat = src.xlat;
            let (sid, raw) = (src.sid, src.raw);
            let mut group = None;
            let pin = match &mut src.delivery {
                Delivery::Pin { gsi, last_vector } => {
                    if xlat.blocked.is_none() {
                        *last_vector = xlat.route.map(|m| m.vector());
                    }
                    Some(*gsi)
                }
                Delivery::Irqfd(v) => {
                    group = Some(v.group);
                    None
                }
                Delivery::Signal => None,
            };
            // An irqfd vector delivered here (a pending one released on unmask) is a VMM
            // delivery of that device.
            if let Some(c) = group.and_then(|g| st.group_counters.get_mut(g)) {
                if xlat.blocked.is_some() || xlat.route.is_none() && !xlat.guest {
                    c.1 += 1;
                } else {
                    c.0 += 1;
                }
            }
            if pin.is_none() && xlat.blocked.is_none() && xlat.route.is_some() {
                st.signalled += 1;
            }
            (xlat, pin, sid, raw)
        };
        if let Some(f) = xlat.blocked {
            self.record_fault(&f);
            return;
        }
        if let (true, Some(raw)) = (xlat.guest, raw) {
            self.deliver_guest(sid, raw);
            return;
        }
        match (pin, xlat.route) {
            (Some(gsi), Some(_)) => {
                // Staged route changes reach KVM before this delivery uses them.
                if let Err(e) = self.routes.flush() {
                    log::error!("GSI {gsi}: committing routes failed: {e}");
                    return;
                }
                if let Err(e) = self.backend.set_irq_line(gsi, true) {
                    log::error!("GSI {gsi}: KVM_IRQ_LINE failed: {e}");
                }
            }
            (None, Some(m)) => self.signal(m),
            (_, None) => log::debug!("irq source {}: no message; dropped", h.0),
        }
    }

    fn signal(&self, m: MsiMessage) {
        if let Err(e) = self.backend.signal_msi(m) {
            log::error!("KVM_SIGNAL_MSI {m:x?} failed: {e}");
        }
    }

    fn record_fault(&self, f: &IommuFault) {
        if let Some(iommu) = &self.iommu {
            let effects = iommu.record_fault(f);
            self.deliver(&effects);
        }
    }

    /// One interrupt of an AMD-Vi guest-mode or VT-d posted source: the IOMMU re-reads the
    /// entry and posts it (sending a notification or GA log interrupt when due), records a
    /// fault, or says what to send when it left guest mode or posted format.
    fn deliver_guest(&self, sid: SourceId, raw: MsiMessage) {
        let Some(iommu) = &self.iommu else { return };
        let (msg, effects) = iommu.deliver_guest(sid, raw);
        if let Some(m) = msg {
            self.signal(m);
        }
        self.deliver(&effects);
    }

    /// Sends the IOMMU's own event interrupts.
    fn deliver(&self, effects: &IommuEffects) {
        for m in &effects.interrupts {
            if let Err(e) = self.backend.signal_msi(*m) {
                log::error!("IOMMU event interrupt {m:x?}: KVM_SIGNAL_MSI failed: {e}");
            }
        }
        if effects.own_msi > 0 {
            if let Some(hook) = self.own_msi.get() {
                for _ in 0..effects.own_msi {
                    hook();
                }
            }
        }
    }

    /// Sends `msg` as a message no IOMMU remaps (the IOMMU's own MSI): only the
    /// IOMMU-less policy (extended destination ID) applies.
    pub fn signal_unremapped(&self, msg: MsiMessage) {
        match super::policy::translate(msg, self.policy) {
            Some(m) => self.signal(m),
            None => log::debug!("unremapped message {msg:x?} is not an interrupt; dropped"),
        }
    }

    /// Acts on what an IOMMU register write did: re-translates the sources the
    /// invalidations cover (all when remapping state changed; direct vectors are re-read
    /// from their tables first), stages or commits their routes (irqfd routes before this
    /// returns, so a guest waiting for the invalidation's completion finds them in KVM),
    /// then sends the unit's event interrupts.
    pub fn apply(&self, effects: &IommuEffects) -> Result<(), RouterError> {
        if effects.covers != Covers::Nothing {
            let mut st = self.lock();
            st.invalidations += 1;
            let mut affected = self.reread_direct(&mut st);
            match &effects.covers {
                Covers::Nothing => {}
                Covers::All => affected.extend(st.reg.programmed()),
                Covers::Irte(ranges) => {
                    for &(start, count) in ranges {
                        affected.extend(st.reg.by_irte_range(start, count));
                    }
                }
                Covers::Devices(ids) => {
                    // Sources without a message have nothing to re-translate.
                    for id in ids {
                        let programmed: Vec<u32> = st
                            .reg
                            .by_sid(id.0)
                            .filter(|h| st.reg.get(IrqHandle(*h)).is_some_and(|s| s.raw.is_some()))
                            .collect();
                        affected.extend(programmed);
                    }
                }
            }
            self.update(&mut st, affected.into_iter(), true)?;
        }
        self.deliver(effects);
        Ok(())
    }

    /// Direct vectors whose message is known are re-read: the guest may have reprogrammed
    /// the device's table, which no trap told the VMM. Returns those whose message changed
    /// (the others are re-translated only if the invalidation covers them).
    fn reread_direct(&self, st: &mut State) -> BTreeSet<u32> {
        let mut changed = BTreeSet::new();
        let direct: Vec<u32> = st.reg.direct().collect();
        for h in direct {
            let h = IrqHandle(h);
            let Some(src) = st.reg.get(h) else { continue };
            let Delivery::Irqfd(v) = &src.delivery else {
                continue;
            };
            if !v.learnt {
                continue;
            }
            let Some(owner) = st.reg.groups.get(v.group).and_then(|g| g.owner.upgrade()) else {
                continue;
            };
            let raw = owner.read_message(v.index);
            if let Some(src) = st.reg.get_mut(h) {
                if src.raw != raw {
                    src.raw = raw;
                    changed.insert(h.0);
                }
            }
        }
        changed
    }

    /// The IOAPIC pins (GSIs) whose last delivery carried `vector`: the pins a
    /// `KVM_EXIT_IOAPIC_EOI` for `vector` may end (the IOAPIC checks Remote IRR), even if a
    /// pin was masked or re-routed while its interrupt was in service.
    pub fn eoi_pins(&self, vector: u8) -> Vec<u32> {
        self.lock().reg.pins_with_last_vector(vector)
    }

    /// The current translation of source `h` (what KVM delivers for it).
    pub fn route(&self, h: IrqHandle) -> Option<MsiMessage> {
        self.lock().reg.get(h).and_then(|s| s.xlat.route)
    }

    /// The route KVM holds for `gsi`.
    pub fn kvm_route(&self, gsi: u32) -> Option<MsiMessage> {
        self.routes.get(gsi)
    }

    /// Irqfd vector `h`'s state.
    pub fn irqfd_info(&self, h: IrqHandle) -> Option<IrqfdInfo> {
        let st = self.lock();
        let src = st.reg.get(h)?;
        let Delivery::Irqfd(v) = &src.delivery else {
            return None;
        };
        Some(IrqfdInfo {
            gsi: v.gsi,
            in_kvm: v.attached,
            postable: v.attached
                && self.host.available
                && src.xlat.route.is_some_and(|r| super::policy::postable(&r)),
        })
    }

    /// Work counters.
    pub fn stats(&self) -> RouterStats {
        let st = self.lock();
        RouterStats {
            translations: st.translations,
            invalidations: st.invalidations,
            routes: self.routes.stats(),
            signalled: st.signalled,
            irqfd_binds: st.binds,
            irqfd_unbinds: st.unbinds,
        }
    }

    /// Every irqfd group's counters.
    pub fn group_stats(&self) -> Vec<GroupStats> {
        let st = self.lock();
        (0..st.reg.groups.len())
            .map(|g| {
                let group = &st.reg.groups[g];
                let (vmm, blocked) = st.group_counters.get(g).copied().unwrap_or_default();
                GroupStats {
                    name: group.name.clone(),
                    vectors: group.handles.len(),
                    counts: report::count(&st.reg, g, &self.host),
                    vmm_deliveries: vmm,
                    blocked,
                }
            })
            .collect()
    }
}
