//! The interrupt sources the router knows, what each currently translates to, and the
//! indexes that let an invalidation find exactly the sources it covers.
//!
//! Sources have dense handles. Three kinds (see [`super`]): VMM-signalled vectors, IOAPIC
//! pins and irqfd vectors; pins and irqfd vectors own a GSI (pins 0..24, irqfd vectors from
//! 24), VMM-signalled vectors own none.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, Weak};

use virtual_iommu::{MsiMessage, SourceId};
use vmm_sys_util::eventfd::EventFd;

use super::policy::Xlat;

/// Highest GSI KVM routes (KVM_MAX_IRQ_ROUTES is 4096).
pub const MAX_GSI: u32 = 4096;

/// One interrupt source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IrqHandle(pub u32);

/// The device side of a group of irqfd vectors (a passthrough function's MSI-X or MSI).
///
/// Called by the router without its own lock held, from the thread that watches detached
/// eventfds, from vCPU threads (invalidations) and from whatever thread reprograms a vector.
pub trait VectorOwner: Send + Sync {
    /// Vector `index` fired while the device-level mask was set: the owner sets its
    /// pending bit, or, if the vector was unmasked meanwhile, delivers it once
    /// ([`super::InterruptRouter::trigger`]).
    fn masked_fire(&self, index: u16);

    /// For vectors whose message lives in the device's own table (`msix=direct`): reads
    /// entry `index`'s current message (`None` when it is not an interrupt, e.g. MSI-X is
    /// disabled). Must not take locks held while calling the router: it reads shared
    /// memory only. The default says the owner has no such table.
    fn read_message(&self, _index: u16) -> Option<MsiMessage> {
        None
    }
}

/// How a group of irqfd vectors is delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqfdMode {
    /// The messages live in the device's own table (`msix=direct`) and are read through
    /// the owner.
    pub direct: bool,
    /// Never bind the eventfds to KVM: the VMM delivers every interrupt itself (what a
    /// VMM without irqfds does; for comparisons, `irqfd=off`).
    pub vmm_only: bool,
}

/// An irqfd vector.
pub(crate) struct IrqfdVector {
    pub(crate) gsi: u32,
    pub(crate) fd: Arc<EventFd>,
    pub(crate) group: usize,
    pub(crate) index: u16,
    /// Masked at the device (the owner keeps the pending bit): KVM must not deliver it.
    pub(crate) masked: bool,
    /// The message is read from the device's own table (`msix=direct`).
    pub(crate) direct: bool,
    /// The VMM delivers it, never KVM.
    pub(crate) vmm_only: bool,
    /// A direct vector's message has been read at least once.
    pub(crate) learnt: bool,
    /// `KVM_IRQFD` binds `fd` to `gsi` now.
    pub(crate) attached: bool,
    /// The VMM's watcher polls `fd` now.
    pub(crate) watched: bool,
}

impl IrqfdVector {
    /// True when KVM may deliver this vector on its own: it has a route, is not masked,
    /// and is not a direct vector whose message the VMM must re-read at each interrupt
    /// (not learnt yet, or compatibility format, which no invalidation announces).
    pub(crate) fn wants_kvm(&self, raw: Option<MsiMessage>, xlat: &Xlat) -> bool {
        let direct_ok = !self.direct || (self.learnt && raw.is_some_and(|m| m.is_remappable()));
        xlat.route.is_some() && !self.masked && direct_ok && !self.vmm_only
    }
}

/// How a source reaches KVM.
pub(crate) enum Delivery {
    /// `KVM_SIGNAL_MSI` of the cached translation, by the VMM.
    Signal,
    /// IOAPIC pin: its GSI's route and `KVM_IRQ_LINE`.
    Pin {
        gsi: u32,
        /// The vector of the last delivery: the key a LAPIC EOI is matched by.
        last_vector: Option<u8>,
    },
    /// A device-signalled eventfd.
    Irqfd(IrqfdVector),
}

/// One source.
pub(crate) struct Source {
    pub(crate) sid: SourceId,
    pub(crate) raw: Option<MsiMessage>,
    pub(crate) xlat: Xlat,
    pub(crate) delivery: Delivery,
}

impl Source {
    /// The route its GSI should hold.
    pub(crate) fn gsi_route(&self) -> Option<MsiMessage> {
        self.xlat.route
    }
}

/// A named group of irqfd vectors (one device's MSI-X or MSI).
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) owner: Weak<dyn VectorOwner>,
    pub(crate) handles: Range<u32>,
    /// `(postable, enabled)` as last logged.
    pub(crate) reported: Option<(usize, usize)>,
}

/// Sources, groups and the IRTE index.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) sources: Vec<Source>,
    pub(crate) groups: Vec<Group>,
    /// IRTE index → sources whose translation named it.
    by_irte: BTreeMap<u32, BTreeSet<u32>>,
    /// Requester ID → sources (AMD-Vi invalidations name device IDs).
    by_sid: BTreeMap<u16, Vec<u32>>,
    next_gsi: u32,
}

/// Registry errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No GSIs left.
    #[error("no free GSIs for {0} more interrupt vectors (KVM routes at most {MAX_GSI})")]
    GsisExhausted(u32),
    /// More sources than handles.
    #[error("too many interrupt sources")]
    TooManySources,
}

impl Registry {
    fn push(&mut self, src: Source) {
        let h = self.sources.len() as u32;
        self.by_sid.entry(src.sid.0).or_default().push(h);
        self.sources.push(src);
    }

    /// A registry whose first `pins` GSIs belong to IOAPIC pins with source ID `sid`.
    pub(crate) fn with_pins(pins: u32, sid: SourceId) -> Self {
        let mut r = Registry {
            next_gsi: pins,
            ..Registry::default()
        };
        for gsi in 0..pins {
            r.push(Source {
                sid,
                raw: None,
                xlat: Xlat::default(),
                delivery: Delivery::Pin {
                    gsi,
                    last_vector: None,
                },
            });
        }
        r
    }

    fn next_handles(&self, count: u32) -> Result<Range<u32>, RegistryError> {
        let start = u32::try_from(self.sources.len()).map_err(|_| RegistryError::TooManySources)?;
        let end = start
            .checked_add(count)
            .ok_or(RegistryError::TooManySources)?;
        Ok(start..end)
    }

    /// Adds `count` VMM-signalled vectors from requester `sid`.
    pub(crate) fn add_signal(
        &mut self,
        sid: SourceId,
        count: u32,
    ) -> Result<Range<u32>, RegistryError> {
        let handles = self.next_handles(count)?;
        for _ in handles.clone() {
            self.push(Source {
                sid,
                raw: None,
                xlat: Xlat::default(),
                delivery: Delivery::Signal,
            });
        }
        Ok(handles)
    }

    /// Adds a group of irqfd vectors, one per eventfd, each with its own GSI.
    pub(crate) fn add_irqfd_group(
        &mut self,
        name: String,
        sid: SourceId,
        fds: Vec<Arc<EventFd>>,
        owner: Weak<dyn VectorOwner>,
        mode: IrqfdMode,
    ) -> Result<Range<u32>, RegistryError> {
        let count = u32::try_from(fds.len()).map_err(|_| RegistryError::TooManySources)?;
        let gsi_start = self.next_gsi;
        let gsi_end = gsi_start
            .checked_add(count)
            .filter(|e| *e <= MAX_GSI)
            .ok_or(RegistryError::GsisExhausted(count))?;
        let handles = self.next_handles(count)?;
        let group = self.groups.len();
        for (i, fd) in fds.into_iter().enumerate() {
            self.push(Source {
                sid,
                raw: None,
                xlat: Xlat::default(),
                delivery: Delivery::Irqfd(IrqfdVector {
                    gsi: gsi_start + i as u32,
                    fd,
                    group,
                    index: i as u16,
                    masked: false,
                    direct: mode.direct,
                    vmm_only: mode.vmm_only,
                    learnt: false,
                    attached: false,
                    watched: false,
                }),
            });
        }
        self.next_gsi = gsi_end;
        self.groups.push(Group {
            name,
            owner,
            handles: handles.clone(),
            reported: None,
        });
        Ok(handles)
    }

    /// The source `h`, if it exists.
    pub(crate) fn get(&self, h: IrqHandle) -> Option<&Source> {
        self.sources.get(h.0 as usize)
    }

    /// The source `h`, mutably.
    pub(crate) fn get_mut(&mut self, h: IrqHandle) -> Option<&mut Source> {
        self.sources.get_mut(h.0 as usize)
    }

    /// Replaces the translation of `h`, keeping the IRTE index in step.
    pub(crate) fn set_xlat(&mut self, h: IrqHandle, xlat: Xlat) {
        let Some(src) = self.sources.get_mut(h.0 as usize) else {
            return;
        };
        let old = std::mem::replace(&mut src.xlat, xlat).irte;
        if old == xlat.irte {
            return;
        }
        if let Some(i) = old {
            if let Some(set) = self.by_irte.get_mut(&i) {
                set.remove(&h.0);
                if set.is_empty() {
                    self.by_irte.remove(&i);
                }
            }
        }
        if let Some(i) = xlat.irte {
            self.by_irte.entry(i).or_default().insert(h.0);
        }
    }

    /// Sources whose translation named an IRTE index in `start..start + count`.
    pub(crate) fn by_irte_range(&self, start: u32, count: u32) -> impl Iterator<Item = u32> + '_ {
        let end = u64::from(start) + u64::from(count);
        self.by_irte
            .range(start..)
            .take_while(move |(i, _)| u64::from(**i) < end)
            .flat_map(|(_, set)| set.iter().copied())
    }

    /// Sources with requester ID `sid`.
    pub(crate) fn by_sid(&self, sid: u16) -> impl Iterator<Item = u32> + '_ {
        self.by_sid.get(&sid).into_iter().flatten().copied()
    }

    /// Every source with a message (the ones a global invalidation re-translates).
    pub(crate) fn programmed(&self) -> impl Iterator<Item = u32> + '_ {
        self.sources
            .iter()
            .enumerate()
            .filter(|(_, s)| s.raw.is_some() || direct_vector(s))
            .map(|(i, _)| i as u32)
    }

    /// Direct vectors (their message may have changed in the device's table).
    pub(crate) fn direct(&self) -> impl Iterator<Item = u32> + '_ {
        self.sources
            .iter()
            .enumerate()
            .filter(|(_, s)| direct_vector(s))
            .map(|(i, _)| i as u32)
    }

    /// Pins whose last delivery carried `vector`.
    pub(crate) fn pins_with_last_vector(&self, vector: u8) -> Vec<u32> {
        self.sources
            .iter()
            .filter_map(|s| match s.delivery {
                Delivery::Pin {
                    gsi,
                    last_vector: Some(v),
                } if v == vector => Some(gsi),
                _ => None,
            })
            .collect()
    }
}

fn direct_vector(s: &Source) -> bool {
    matches!(&s.delivery, Delivery::Irqfd(v) if v.direct)
}
