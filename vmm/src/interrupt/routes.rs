//! The interrupt-route table: GSI -> translated MSI message, committed to KVM in batches.
//!
//! Routes play the role of the interrupt-entry cache: a route holds the message after any
//! remapping or extended-destination decoding, and changes only when its source is
//! reprogrammed (or, with an IOMMU, when the guest invalidates). `KVM_SET_GSI_ROUTING`
//! replaces KVM's whole table (and waits for an SRCU grace period, ~200 µs here), so
//! changes are either committed as one call ([`RouteTable::update`]) or staged
//! ([`RouteTable::stage`]) and committed once by [`RouteTable::flush`] before a staged route
//! is next used: any number of changes between two deliveries cost one commit.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kvm_bindings::{kvm_irq_routing_entry, KVM_IRQ_ROUTING_MSI};
use thiserror::Error;
use virtual_iommu::MsiMessage;

pub use super::kvm::RoutingBackend;

/// Route-table errors.
#[derive(Debug, Error)]
pub enum RouteError {
    /// More routes than KVM's routing wrapper holds.
    #[error("too many interrupt routes: {0}")]
    TooMany(usize),
    /// `KVM_SET_GSI_ROUTING` failed.
    #[error("KVM_SET_GSI_ROUTING: {0}")]
    Commit(#[source] kvm_ioctls::Error),
    /// The table's lock was poisoned by a panicking thread.
    #[error("route table lock poisoned")]
    Poisoned,
}

/// Counters that let tests and benchmarks assert how much work route updates cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// `KVM_SET_GSI_ROUTING` calls made.
    pub commits: u64,
    /// Route entries changed (added, replaced or removed), committed or staged.
    pub changes: u64,
}

struct Inner {
    routes: BTreeMap<u32, MsiMessage>,
    stats: RouteStats,
    /// Staged changes not yet committed to KVM.
    dirty: bool,
}

/// The VM's GSI routing table.
pub struct RouteTable<B: RoutingBackend> {
    backend: B,
    inner: Mutex<Inner>,
}

/// Builds KVM's entry for an MSI route.
pub fn msi_entry(gsi: u32, msg: &MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = msg.address_lo;
    e.u.msi.address_hi = msg.address_hi;
    e.u.msi.data = msg.data;
    e
}

impl<B: RoutingBackend> RouteTable<B> {
    /// An empty table committing to `backend`.
    pub fn new(backend: B) -> Self {
        RouteTable {
            backend,
            inner: Mutex::new(Inner {
                routes: BTreeMap::new(),
                stats: RouteStats::default(),
                dirty: false,
            }),
        }
    }

    /// Applies `changes` (`None` removes the route) and commits once if anything changed
    /// (or earlier staged changes are pending). Returns the number of routes that changed.
    pub fn update<I>(&self, changes: I) -> Result<usize, RouteError>
    where
        I: IntoIterator<Item = (u32, Option<MsiMessage>)>,
    {
        let mut inner = self.inner.lock().map_err(|_| RouteError::Poisoned)?;
        let changed = Self::apply_changes(&mut inner, changes);
        self.commit_if_dirty(&mut inner)?;
        Ok(changed)
    }

    /// Applies `changes` to the table without committing; [`RouteTable::flush`] commits
    /// them. Returns the number of routes that changed.
    pub fn stage<I>(&self, changes: I) -> Result<usize, RouteError>
    where
        I: IntoIterator<Item = (u32, Option<MsiMessage>)>,
    {
        let mut inner = self.inner.lock().map_err(|_| RouteError::Poisoned)?;
        Ok(Self::apply_changes(&mut inner, changes))
    }

    /// Commits staged changes, if any, with one `KVM_SET_GSI_ROUTING`.
    pub fn flush(&self) -> Result<(), RouteError> {
        let mut inner = self.inner.lock().map_err(|_| RouteError::Poisoned)?;
        self.commit_if_dirty(&mut inner)
    }

    fn apply_changes<I>(inner: &mut Inner, changes: I) -> usize
    where
        I: IntoIterator<Item = (u32, Option<MsiMessage>)>,
    {
        let mut changed = 0;
        for (gsi, msg) in changes {
            let prev = match msg {
                Some(m) => inner.routes.insert(gsi, m),
                None => inner.routes.remove(&gsi),
            };
            if prev != msg {
                changed += 1;
            }
        }
        inner.stats.changes += changed as u64;
        inner.dirty |= changed > 0;
        changed
    }

    fn commit_if_dirty(&self, inner: &mut Inner) -> Result<(), RouteError> {
        if !inner.dirty {
            return Ok(());
        }
        let entries: Vec<_> = inner.routes.iter().map(|(g, m)| msi_entry(*g, m)).collect();
        self.backend.set_routes(&entries)?;
        inner.stats.commits += 1;
        inner.dirty = false;
        Ok(())
    }

    /// The current route of `gsi`.
    pub fn get(&self, gsi: u32) -> Option<MsiMessage> {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.routes.get(&gsi).copied())
    }

    /// Counters since creation.
    pub fn stats(&self) -> RouteStats {
        self.inner.lock().map(|i| i.stats).unwrap_or_default()
    }

    /// The backend (KVM's VM fd in production).
    pub fn backend(&self) -> &B {
        &self.backend
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// One committed route: (gsi, address_lo, address_hi, data).
    type Committed = (u32, u32, u32, u32);

    #[derive(Default)]
    struct Recorder(StdMutex<Vec<Vec<Committed>>>);

    impl RoutingBackend for Recorder {
        fn set_routes(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), RouteError> {
            // SAFETY: every entry this module builds is of MSI type, so `msi` is the live union member.
            let v = entries
                .iter()
                .map(|e| unsafe { (e.gsi, e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data) })
                .collect();
            self.0.lock().unwrap().push(v);
            Ok(())
        }
    }

    fn msg(dest: u32, vector: u8) -> MsiMessage {
        MsiMessage::compat(
            dest,
            false,
            vector,
            virtual_iommu::msi::DeliveryMode::Fixed,
            false,
        )
    }

    #[test]
    fn batch_commits_once_with_whole_table() {
        let t = RouteTable::new(Recorder::default());
        let n = t
            .update((0..10).map(|g| (g, Some(msg(g, 0x30 + g as u8)))))
            .unwrap();
        assert_eq!(n, 10);
        let calls = t.backend().0.lock().unwrap().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].len(), 10);
        assert_eq!(calls[0][3], (3, 0xfee0_3000, 0, 0x33));
        assert_eq!(
            t.stats(),
            RouteStats {
                commits: 1,
                changes: 10
            }
        );
    }

    #[test]
    fn unchanged_routes_do_not_commit() {
        let t = RouteTable::new(Recorder::default());
        t.update([(4, Some(msg(300, 0x40)))]).unwrap();
        assert_eq!(t.update([(4, Some(msg(300, 0x40)))]).unwrap(), 0);
        assert_eq!(t.update([(5, None)]).unwrap(), 0);
        assert_eq!(t.stats().commits, 1);
        assert_eq!(t.get(4).unwrap().destination(), 300);
    }

    #[test]
    fn staged_changes_commit_once_on_flush() {
        let t = RouteTable::new(Recorder::default());
        for v in 0..5u8 {
            t.stage([(u32::from(v), Some(msg(1, 0x30 + v)))]).unwrap();
        }
        t.stage([(2, Some(msg(9, 0x40)))]).unwrap();
        assert_eq!(t.stats().commits, 0, "staging does not commit");
        assert_eq!(
            t.get(2).unwrap().destination(),
            9,
            "lookups see staged routes"
        );
        t.flush().unwrap();
        t.flush().unwrap();
        let calls = t.backend().0.lock().unwrap().clone();
        assert_eq!(
            calls.len(),
            1,
            "one commit for all staged changes, none when clean"
        );
        assert_eq!(calls[0].len(), 5);
        assert_eq!(
            t.stats(),
            RouteStats {
                commits: 1,
                changes: 6
            }
        );
        // An eager update also carries earlier staged changes.
        t.stage([(7, Some(msg(2, 0x50)))]).unwrap();
        t.update([(8, Some(msg(3, 0x51)))]).unwrap();
        assert_eq!(t.backend().0.lock().unwrap().last().unwrap().len(), 7);
    }

    #[test]
    fn removal_commits_table_without_route() {
        let t = RouteTable::new(Recorder::default());
        t.update([(1, Some(msg(1, 0x21))), (2, Some(msg(2, 0x22)))])
            .unwrap();
        t.update([(1, None)]).unwrap();
        let calls = t.backend().0.lock().unwrap().clone();
        assert_eq!(calls.last().unwrap().len(), 1);
        assert_eq!(calls.last().unwrap()[0].0, 2);
        assert_eq!(t.get(1), None);
    }
}
