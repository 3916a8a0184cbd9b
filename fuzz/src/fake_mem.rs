//! A small fake guest memory for the IOMMU harnesses: a few RAM regions with a hole
//! between them, every access counted, and every access outside RAM refused with
//! [`MemError::Unmapped`] and recorded.

use std::cell::{Cell, RefCell};

use virtual_iommu::{GuestMemoryReader, MemError};

/// Guest memory the fuzzer controls: RAM at `[0, LOW_SIZE)` and
/// `[HIGH_BASE, HIGH_BASE + HIGH_SIZE)`, nothing elsewhere.
pub struct FakeMem {
    regions: Vec<(u64, RefCell<Vec<u8>>)>,
    reads: Cell<usize>,
    writes: Cell<usize>,
    refused: Cell<usize>,
    /// The status writes performed, in order: (address, bytes).
    status_writes: RefCell<Vec<(u64, Vec<u8>)>>,
}

/// Size of the low RAM region (16 pages).
pub const LOW_SIZE: u64 = 0x1_0000;
/// Base of the second RAM region (a one-page hole separates it from low RAM).
pub const HIGH_BASE: u64 = 0x1_1000;
/// Size of the second RAM region (4 pages).
pub const HIGH_SIZE: u64 = 0x4000;

impl Default for FakeMem {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeMem {
    /// Zeroed RAM in both regions.
    pub fn new() -> Self {
        FakeMem {
            regions: vec![
                (0, RefCell::new(vec![0; LOW_SIZE as usize])),
                (HIGH_BASE, RefCell::new(vec![0; HIGH_SIZE as usize])),
            ],
            reads: Cell::new(0),
            writes: Cell::new(0),
            refused: Cell::new(0),
            status_writes: RefCell::new(Vec::new()),
        }
    }

    /// The region index and offset holding all of `[gpa, gpa + len)`, if one does.
    fn locate(&self, gpa: u64, len: usize) -> Option<(usize, usize)> {
        let len = u64::try_from(len).ok()?;
        let end = gpa.checked_add(len)?;
        self.regions
            .iter()
            .enumerate()
            .find_map(|(i, (base, bytes))| {
                let size = bytes.borrow().len() as u64;
                (gpa >= *base && end <= base + size).then(|| (i, (gpa - base) as usize))
            })
    }

    /// Writes `bytes` at `gpa` from the harness (not counted); bytes outside RAM are
    /// dropped.
    pub fn poke(&self, gpa: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            if let Some((r, off)) = gpa.checked_add(i as u64).and_then(|a| self.locate(a, 1)) {
                self.regions[r].1.borrow_mut()[off] = *b;
            }
        }
    }

    /// Reads `buf.len()` bytes at `gpa` from the harness (not counted); `false` when any
    /// byte is outside RAM.
    pub fn peek(&self, gpa: u64, buf: &mut [u8]) -> bool {
        match self.locate(gpa, buf.len()) {
            Some((r, off)) => {
                buf.copy_from_slice(&self.regions[r].1.borrow()[off..off + buf.len()]);
                true
            }
            None => false,
        }
    }

    /// Resets the access counters.
    pub fn reset_counters(&self) {
        self.reads.set(0);
        self.writes.set(0);
        self.refused.set(0);
        self.status_writes.borrow_mut().clear();
    }

    /// Reads since the last reset (refused ones included).
    pub fn reads(&self) -> usize {
        self.reads.get()
    }

    /// Writes since the last reset (refused ones included).
    pub fn writes(&self) -> usize {
        self.writes.get()
    }

    /// Accesses refused (outside RAM) since the last reset.
    pub fn refused(&self) -> usize {
        self.refused.get()
    }

    /// Status writes since the last reset.
    pub fn status_writes(&self) -> Vec<(u64, Vec<u8>)> {
        self.status_writes.borrow().clone()
    }
}

impl GuestMemoryReader for FakeMem {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.reads.set(self.reads.get() + 1);
        match self.locate(gpa, buf.len()) {
            Some((r, off)) => {
                buf.copy_from_slice(&self.regions[r].1.borrow()[off..off + buf.len()]);
                Ok(())
            }
            None => {
                self.refused.set(self.refused.get() + 1);
                Err(MemError::Unmapped {
                    gpa,
                    len: buf.len(),
                })
            }
        }
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        self.writes.set(self.writes.get() + 1);
        match self.locate(gpa, buf.len()) {
            Some((r, off)) => {
                self.regions[r].1.borrow_mut()[off..off + buf.len()].copy_from_slice(buf);
                self.status_writes.borrow_mut().push((gpa, buf.to_vec()));
                Ok(())
            }
            None => {
                self.refused.set(self.refused.get() + 1);
                Err(MemError::Unmapped {
                    gpa,
                    len: buf.len(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_holes_and_straddles() {
        let m = FakeMem::new();
        let mut b = [0u8; 8];
        assert!(m.read(0, &mut b).is_ok());
        assert!(m.read(LOW_SIZE - 4, &mut b).is_err());
        assert!(m.read(LOW_SIZE, &mut b).is_err());
        assert!(m.read(HIGH_BASE, &mut b).is_ok());
        assert!(m.read(HIGH_BASE + HIGH_SIZE - 8, &mut b).is_ok());
        assert!(m.read(HIGH_BASE + HIGH_SIZE - 7, &mut b).is_err());
        assert!(m.read(u64::MAX - 3, &mut b).is_err());
        assert_eq!(m.refused(), 4);
        assert_eq!(m.reads(), 7);
        assert!(m.write(0x100, &[1, 2, 3, 4]).is_ok());
        assert!(m.peek(0x100, &mut b[..4]));
        assert_eq!(&b[..4], &[1, 2, 3, 4]);
    }
}
