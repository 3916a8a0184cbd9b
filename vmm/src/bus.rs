//! Port-I/O and MMIO buses: address ranges dispatched to [`BusDevice`]s.
//!
//! A bus is built before the vCPUs start and is immutable afterwards, so lookups need no
//! lock; each device has its own mutex. Accesses nothing claims are logged once per address
//! at debug level and answered with all ones.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use devices::{fill_ones, BusDevice};
use thiserror::Error;

/// Bus construction errors.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("{name}: range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Bus name.
        name: &'static str,
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A zero-length range.
    #[error("{0}: zero-length range")]
    Empty(&'static str),
}

/// A device shared between the bus and whoever else drives it (e.g. an input thread).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Range {
    len: u64,
    device: SharedDevice,
}

/// One address space (PIO or MMIO).
pub struct Bus {
    name: &'static str,
    ranges: BTreeMap<u64, Range>,
    unclaimed: Mutex<HashSet<u64>>,
}

impl Bus {
    /// An empty bus; `name` appears in log lines.
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            ranges: BTreeMap::new(),
            unclaimed: Mutex::new(HashSet::new()),
        }
    }

    /// Claims `[base, base + len)` for `device`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(self.name));
        }
        let end = base.checked_add(len).ok_or(BusError::Overlap {
            name: self.name,
            base,
            len,
        })?;
        let overlaps_prev = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(b, r)| b + r.len > base);
        if overlaps_prev {
            return Err(BusError::Overlap {
                name: self.name,
                base,
                len,
            });
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (base, r) = self.ranges.range(..=addr).next_back()?;
        (addr - base < r.len).then_some((addr - base, &r.device))
    }

    fn note_unclaimed(&self, addr: u64, write: bool, len: usize) {
        if let Ok(mut seen) = self.unclaimed.lock() {
            if seen.insert(addr) {
                log::debug!(
                    "{}: unclaimed {} of {} bytes at {:#x} (ignored; further ones not logged)",
                    self.name,
                    if write { "write" } else { "read" },
                    len,
                    addr
                );
            }
        }
    }

    /// Dispatches a guest read; unclaimed addresses read as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((offset, dev)) => match dev.lock() {
                Ok(mut d) => d.read(offset, data),
                Err(_) => fill_ones(data),
            },
            None => {
                self.note_unclaimed(addr, false, data.len());
                fill_ones(data);
            }
        }
    }

    /// Dispatches a guest write; unclaimed addresses ignore it.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.find(addr) {
            Some((offset, dev)) => {
                if let Ok(mut d) = dev.lock() {
                    d.write(offset, data);
                }
            }
            None => self.note_unclaimed(addr, true, data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.iter_mut().for_each(|b| *b = offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_offset_and_rejects_overlap() {
        let mut bus = Bus::new("pio");
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        assert!(bus.insert(0x3fc, 8, dev.clone()).is_err());
        assert!(bus.insert(0x3f0, 9, dev.clone()).is_err());
        bus.insert(0x3f0, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        bus.read(0x3fa, &mut b);
        assert_eq!(b, [2]);
        bus.write(0x3ff, &[9]);
        assert_eq!(dev.lock().unwrap().0, vec![(7, vec![9])]);
    }

    #[test]
    fn unclaimed_reads_all_ones() {
        let mut bus = Bus::new("mmio");
        let mut b = [0u8; 4];
        bus.read(0x1234, &mut b);
        assert_eq!(b, [0xff; 4]);
        bus.write(0x1234, &[1, 2]);
        assert!(bus
            .insert(u64::MAX, 2, Arc::new(Mutex::new(Echo(vec![]))))
            .is_err());
    }
}
