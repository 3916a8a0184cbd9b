//! A descriptor chain as the device uses it: its readable (driver → device) and writable
//! (device → driver) buffers, and cursors that copy bytes in and out of them through
//! vm-memory, so every guest address is bounds-checked and a buffer outside RAM is an
//! error, never an access.
//!
//! Chains are walked by virtio-queue's iterator, which ends a looping chain after as many
//! descriptors as the queue has (or the indirect table holds) and a chain whose total
//! length would exceed 4 GiB.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError};

/// One buffer: guest address and length.
pub type Segment = (GuestAddress, u32);

/// A chain's buffers, split by direction (in chain order within each).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segments {
    /// Buffers the device reads.
    pub readable: Vec<Segment>,
    /// Buffers the device writes.
    pub writable: Vec<Segment>,
}

impl Segments {
    /// Walks `chain`.
    pub fn collect<M>(chain: DescriptorChain<M>) -> Self
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let mut s = Segments::default();
        for d in chain {
            if d.len() == 0 {
                continue;
            }
            let seg = (d.addr(), d.len());
            if d.is_write_only() {
                s.writable.push(seg);
            } else {
                s.readable.push(seg);
            }
        }
        s
    }

    /// Total readable bytes.
    pub fn readable_len(&self) -> u64 {
        total(&self.readable)
    }

    /// Total writable bytes.
    pub fn writable_len(&self) -> u64 {
        total(&self.writable)
    }

    /// Takes the last writable byte off the writable buffers (virtio-blk's status byte,
    /// which follows the data): its address, or `None` without writable bytes.
    pub fn pop_last_writable_byte(&mut self) -> Option<GuestAddress> {
        let (addr, len) = self.writable.pop()?;
        let last = addr.checked_add(u64::from(len) - 1)?;
        if len > 1 {
            self.writable.push((addr, len - 1));
        }
        Some(last)
    }
}

/// Total length of `segs`.
pub fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|&(_, l)| u64::from(l)).sum()
}

/// A position in a list of segments.
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    segs: &'a [Segment],
    index: usize,
    offset: u32,
    moved: u64,
}

impl<'a> Cursor<'a> {
    /// At the start of `segs`.
    pub fn new(segs: &'a [Segment]) -> Self {
        Cursor {
            segs,
            index: 0,
            offset: 0,
            moved: 0,
        }
    }

    /// Bytes moved so far (read, written or skipped).
    pub fn moved(&self) -> u64 {
        self.moved
    }

    /// Bytes left.
    pub fn remaining(&self) -> u64 {
        total(self.segs.get(self.index..).unwrap_or(&[])) - u64::from(self.offset)
    }

    /// The next contiguous piece of at most `max` bytes, advancing past it.
    fn next_piece(&mut self, max: usize) -> Option<(GuestAddress, usize)> {
        loop {
            let &(addr, len) = self.segs.get(self.index)?;
            if self.offset >= len {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let left = (len - self.offset) as usize;
            let n = left.min(max);
            let at = addr.checked_add(u64::from(self.offset))?;
            // n <= left, which fits u32.
            self.offset += n as u32;
            self.moved += n as u64;
            return Some((at, n));
        }
    }

    /// Skips `n` bytes (fewer at the end).
    pub fn skip(&mut self, mut n: u64) {
        while n > 0 {
            let step = usize::try_from(n).unwrap_or(usize::MAX);
            match self.next_piece(step) {
                Some((_, got)) => n -= got as u64,
                None => return,
            }
        }
    }

    /// Copies guest bytes into `buf`; returns how many (fewer when the segments end).
    pub fn read<M: GuestMemory>(
        &mut self,
        mem: &M,
        buf: &mut [u8],
    ) -> Result<usize, GuestMemoryError> {
        let mut done = 0;
        while done < buf.len() {
            let Some((at, n)) = self.next_piece(buf.len() - done) else {
                break;
            };
            let dst = buf.get_mut(done..done + n).unwrap_or_default();
            mem.read_slice(dst, at)?;
            done += n;
        }
        Ok(done)
    }

    /// Copies `buf` into guest memory; returns how many bytes (fewer when the segments end).
    pub fn write<M: GuestMemory>(
        &mut self,
        mem: &M,
        buf: &[u8],
    ) -> Result<usize, GuestMemoryError> {
        let mut done = 0;
        while done < buf.len() {
            let Some((at, n)) = self.next_piece(buf.len() - done) else {
                break;
            };
            let src = buf.get(done..done + n).unwrap_or_default();
            mem.write_slice(src, at)?;
            done += n;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn cursors_cross_segments() {
        let m = mem();
        let segs = [(GuestAddress(0x100), 3), (GuestAddress(0x200), 5)];
        let mut w = Cursor::new(&segs);
        assert_eq!(w.remaining(), 8);
        assert_eq!(w.write(&m, b"abcdefghij").unwrap(), 8);
        assert_eq!(w.remaining(), 0);
        let mut r = Cursor::new(&segs);
        r.skip(2);
        let mut buf = [0u8; 4];
        assert_eq!(r.read(&m, &mut buf).unwrap(), 4);
        assert_eq!(&buf, b"cdef");
        assert_eq!(r.moved(), 6);
    }

    #[test]
    fn outside_ram_is_an_error() {
        let m = mem();
        let segs = [(GuestAddress(0xfffe), 4)];
        assert!(Cursor::new(&segs).write(&m, &[1, 2, 3, 4]).is_err());
        let segs = [(GuestAddress(u64::MAX - 1), 4)];
        let mut buf = [0u8; 4];
        let _ = Cursor::new(&segs).read(&m, &mut buf);
    }

    #[test]
    fn status_byte_comes_off_the_end() {
        let mut s = Segments {
            readable: vec![],
            writable: vec![(GuestAddress(0x100), 512), (GuestAddress(0x400), 1)],
        };
        assert_eq!(s.pop_last_writable_byte(), Some(GuestAddress(0x400)));
        assert_eq!(s.writable_len(), 512);
        assert_eq!(s.pop_last_writable_byte(), Some(GuestAddress(0x2ff)));
        assert_eq!(s.writable, vec![(GuestAddress(0x100), 511)]);
        assert_eq!(Segments::default().pop_last_writable_byte(), None);
    }
}
