//! Per-CPU interrupt receipts, indexed by x2APIC ID, for scenarios that must tell which CPU
//! took an interrupt and how often. Handlers run on any CPU (APs included) and only count;
//! the BSP reads the counters.
//!
//! Two tallies exist: [`DEVICE`] for the interrupts under test (device MSIs, I/O APIC pins)
//! and [`EVENT`] for the VT-d unit's fault event. Their handlers ([`on_device`],
//! [`on_event`]) have the [`irq::Handler`](crate::irq::Handler) signature.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::apic;

/// APIC IDs below this have their own counter (KVM's largest vCPU ID is 4095).
pub const MAX_ID: u32 = 4096;

/// Interrupt counts by APIC ID.
pub struct Tally {
    hits: [AtomicU32; MAX_ID as usize],
    /// Receipts on all CPUs (those with IDs `>= MAX_ID` count only here).
    total: AtomicU32,
}

impl Tally {
    const fn new() -> Tally {
        Tally {
            hits: [const { AtomicU32::new(0) }; MAX_ID as usize],
            total: AtomicU32::new(0),
        }
    }

    /// Counts one interrupt on the calling CPU.
    fn record(&self) {
        if let Some(slot) = self.hits.get(apic::id() as usize) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        self.total.fetch_add(1, Ordering::Release);
    }

    /// Interrupts taken by the CPU with APIC ID `id` (0 for IDs beyond [`MAX_ID`]).
    pub fn hits(&self, id: u32) -> u32 {
        self.hits
            .get(id as usize)
            .map_or(0, |h| h.load(Ordering::Acquire))
    }

    /// Interrupts taken by all CPUs.
    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Acquire)
    }

    /// The IDs (ascending, below [`MAX_ID`]) of CPUs that took at least one interrupt, copied
    /// into `out`; returns how many there are (possibly more than `out` holds).
    pub fn takers(&self, out: &mut [u32]) -> usize {
        let mut n = 0;
        for (id, h) in self.hits.iter().enumerate() {
            if h.load(Ordering::Acquire) != 0 {
                if let Some(o) = out.get_mut(n) {
                    *o = id as u32;
                }
                n += 1;
            }
        }
        n
    }
}

/// Interrupts under test.
pub static DEVICE: Tally = Tally::new();
/// VT-d fault events.
pub static EVENT: Tally = Tally::new();

/// Handler counting into [`DEVICE`].
pub fn on_device() {
    DEVICE.record();
}

/// Handler counting into [`EVENT`].
pub fn on_event() {
    EVENT.record();
}
