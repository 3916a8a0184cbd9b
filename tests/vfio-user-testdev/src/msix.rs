//! MSI-X delivery: per-vector eventfds, and in direct mode the device's own table and PBA.
//!
//! Normal mode never reads the table or PBA (the VMM emulates the guest's table elsewhere):
//! firing vector k signals eventfd k. Direct mode behaves like real hardware: the
//! capability's enable and function mask and the entry's mask bit decide between dropping,
//! latching a pending bit, or signalling; a latched vector is signalled once when unmasked.

use std::fs::File;

use crate::bar::SharedBar;
use crate::config::ConfigSpace;
use crate::irq;
use crate::options::DeviceOptions;
use crate::regs::{MSIX_ENTRY_SIZE, MSIX_ENTRY_VECTOR_CONTROL, MSIX_VECTOR_CONTROL_MASKED};

/// What became of one fire of a vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fire {
    /// The vector's eventfd was signalled.
    Signalled,
    /// Nothing was delivered: no such vector, no eventfd, or MSI-X disabled (direct mode).
    Dropped,
    /// Direct mode: the vector was masked; its pending bit is set.
    Masked,
}

/// The MSI-X function: eventfds, and the pending bits direct mode latches.
pub struct Msix {
    vectors: u32,
    direct: bool,
    table: usize,
    pba: usize,
    fds: Vec<Option<File>>,
    pending: Vec<u64>,
}

impl Msix {
    /// An MSI-X function with no eventfds and nothing pending.
    pub fn new(options: &DeviceOptions) -> Msix {
        let vectors = options.vectors;
        Msix {
            vectors,
            direct: options.direct_msix,
            table: options.layout.table_offset() as usize,
            pba: options.layout.pba_offset() as usize,
            fds: (0..vectors).map(|_| None).collect(),
            pending: vec![0; vectors.div_ceil(64) as usize],
        }
    }

    /// Installs eventfds for vectors `start..start + fds.len()` (those past N are ignored).
    pub fn set_fds(&mut self, start: u32, fds: Vec<File>) {
        for (slot, fd) in self.fds.iter_mut().skip(start as usize).zip(fds) {
            *slot = Some(fd);
        }
    }

    /// Drops every eventfd.
    pub fn disable(&mut self) {
        self.fds.iter_mut().for_each(|slot| *slot = None);
    }

    /// Whether vector `vector` has an eventfd.
    #[cfg(test)]
    pub fn has_fd(&self, vector: u32) -> bool {
        self.fds.get(vector as usize).is_some_and(Option::is_some)
    }

    /// Whether vector `vector` is latched pending (direct mode).
    #[cfg(test)]
    pub fn is_pending(&self, vector: u32) -> bool {
        self.pending
            .get(vector as usize / 64)
            .is_some_and(|w| w & (1 << (vector % 64)) != 0)
    }

    fn signal(&self, vector: u32) -> Fire {
        match self.fds.get(vector as usize).and_then(Option::as_ref) {
            Some(fd) => match irq::signal(fd) {
                Ok(()) => Fire::Signalled,
                Err(e) => {
                    log::warn!("signalling the eventfd of MSI-X vector {vector}: {e}");
                    Fire::Dropped
                }
            },
            None => Fire::Dropped,
        }
    }

    /// The mask bit of table entry `vector`; `None` if the entry lies outside the BAR.
    fn entry_masked(&self, bar: &SharedBar, vector: u32) -> Option<bool> {
        let offset = (vector as usize)
            .checked_mul(MSIX_ENTRY_SIZE)?
            .checked_add(self.table + MSIX_ENTRY_VECTOR_CONTROL)?;
        bar.load32(offset)
            .map(|control| control & MSIX_VECTOR_CONTROL_MASKED != 0)
    }

    fn pba_qword(&self, vector: u32) -> (usize, u64) {
        (self.pba + (vector as usize / 64) * 8, 1 << (vector % 64))
    }

    fn set_pending(&mut self, bar: &SharedBar, vector: u32) {
        if let Some(word) = self.pending.get_mut(vector as usize / 64) {
            *word |= 1 << (vector % 64);
        }
        let (offset, bit) = self.pba_qword(vector);
        // A PBA that runs past the BAR keeps the bit only internally.
        bar.or64(offset, bit);
    }

    fn clear_pending(&mut self, bar: &SharedBar, vector: u32) {
        if let Some(word) = self.pending.get_mut(vector as usize / 64) {
            *word &= !(1 << (vector % 64));
        }
        let (offset, bit) = self.pba_qword(vector);
        bar.clear64(offset, bit);
    }

    /// Fires `vector` once.
    pub fn fire(&mut self, bar: &SharedBar, config: &ConfigSpace, vector: u32) -> Fire {
        if vector >= self.vectors {
            return Fire::Dropped;
        }
        if !self.direct {
            return self.signal(vector);
        }
        if !config.msix_enabled() {
            return Fire::Dropped;
        }
        let Some(entry_masked) = self.entry_masked(bar, vector) else {
            return Fire::Dropped;
        };
        if entry_masked || config.msix_function_masked() {
            self.set_pending(bar, vector);
            return Fire::Masked;
        }
        self.signal(vector)
    }

    /// Direct mode: signals (once) every pending vector that is no longer masked, clearing
    /// its pending bit. Returns the outcome of each delivery.
    pub fn deliver_pending(&mut self, bar: &SharedBar, config: &ConfigSpace) -> Vec<Fire> {
        if !self.direct || !config.msix_enabled() || config.msix_function_masked() {
            return Vec::new();
        }
        let mut ready = Vec::new();
        for (index, word) in self.pending.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let vector = index as u32 * 64 + bits.trailing_zeros();
                bits &= bits - 1;
                if self.entry_masked(bar, vector) == Some(false) {
                    ready.push(vector);
                }
            }
        }
        ready
            .into_iter()
            .map(|vector| {
                self.clear_pending(bar, vector);
                self.signal(vector)
            })
            .collect()
    }

    /// Device reset: nothing pending, PBA clear, every entry masked with a zero message.
    /// Entries and PBA qwords outside the BAR are skipped.
    pub fn reset(&mut self, bar: &SharedBar) {
        self.pending.iter_mut().for_each(|w| *w = 0);
        for qword in 0..self.pending.len() {
            let offset = self.pba + qword * 8;
            if !bar.clear64(offset, u64::MAX) {
                break;
            }
        }
        for vector in 0..self.vectors as usize {
            let entry = self.table + vector * MSIX_ENTRY_SIZE;
            if !bar.store32(
                entry + MSIX_ENTRY_VECTOR_CONTROL,
                MSIX_VECTOR_CONTROL_MASKED,
            ) {
                break;
            }
            for dword in 0..3 {
                bar.store32(entry + dword * 4, 0);
            }
        }
    }
}
