//! A virtqueue's registers as the driver programs them through the common configuration,
//! and their validation into a `virtio_queue::Queue` (split rings) when the queue is used.

use thiserror::Error;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory};

/// Why a queue's programming cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum QueueError {
    /// Zero, above the device's maximum, or not a power of two.
    #[error("queue size {size} is invalid (a power of two up to {max})")]
    Size {
        /// What the driver wrote.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// A ring address is misaligned (descriptor table 16, available ring 2, used ring 4).
    #[error("{ring} address {addr:#x} is misaligned")]
    Alignment {
        /// Which ring.
        ring: &'static str,
        /// Its address.
        addr: u64,
    },
    /// A ring does not lie in guest RAM (or, through an IOMMU, is not mapped with the
    /// access the device needs: read for the descriptor table and available ring, write
    /// for the used ring).
    #[error("rings (descriptors {desc:#x}, available {avail:#x}, used {used:#x}) are not all reachable in guest RAM")]
    OutsideRam {
        /// Descriptor table.
        desc: u64,
        /// Available ring.
        avail: u64,
        /// Used ring.
        used: u64,
    },
    /// The device's maximum itself is invalid (a bug in the device description).
    #[error("invalid maximum queue size {0}")]
    MaxSize(u16),
}

/// One queue's registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueRegs {
    /// The device's maximum size (what `queue_size` reads after reset).
    pub max_size: u16,
    /// `queue_size` as the driver set it.
    pub size: u16,
    /// `queue_enable`.
    pub enabled: bool,
    /// `queue_desc`.
    pub desc: u64,
    /// `queue_driver` (available ring).
    pub driver: u64,
    /// `queue_device` (used ring).
    pub device: u64,
}

impl QueueRegs {
    /// A queue of at most `max_size` entries, in its reset state.
    pub fn new(max_size: u16) -> Self {
        QueueRegs {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// Back to the reset state.
    pub fn reset(&mut self) {
        *self = QueueRegs::new(self.max_size);
    }

    /// Checks the programming without guest memory: size and alignments.
    pub fn check(&self) -> Result<(), QueueError> {
        let size = self.size;
        if size == 0 || size > self.max_size || !size.is_power_of_two() {
            return Err(QueueError::Size {
                size,
                max: self.max_size,
            });
        }
        for (ring, addr, align) in [
            ("descriptor table", self.desc, 16u64),
            ("available ring", self.driver, 2),
            ("used ring", self.device, 4),
        ] {
            if addr % align != 0 {
                return Err(QueueError::Alignment { ring, addr });
            }
        }
        Ok(())
    }

    /// The queue virtio-queue processes: checked, ready, with event index as negotiated,
    /// and every ring inside guest RAM as `mem` addresses it (through the IOMMU when it
    /// translates).
    pub fn build<M: GuestMemory>(&self, event_idx: bool, mem: &M) -> Result<Queue, QueueError> {
        self.check()?;
        let mut q = Queue::new(self.max_size).map_err(|_| QueueError::MaxSize(self.max_size))?;
        let size = self.size;
        let max = self.max_size;
        q.try_set_size(size)
            .map_err(|_| QueueError::Size { size, max })?;
        let misaligned = |ring, addr| QueueError::Alignment { ring, addr };
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(|_| misaligned("descriptor table", self.desc))?;
        q.try_set_avail_ring_address(GuestAddress(self.driver))
            .map_err(|_| misaligned("available ring", self.driver))?;
        q.try_set_used_ring_address(GuestAddress(self.device))
            .map_err(|_| misaligned("used ring", self.device))?;
        q.set_event_idx(event_idx);
        q.set_ready(true);
        if !q.is_valid(mem) {
            return Err(QueueError::OutsideRam {
                desc: self.desc,
                avail: self.driver,
                used: self.device,
            });
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn regs(size: u16) -> QueueRegs {
        QueueRegs {
            size,
            enabled: true,
            desc: 0x1000,
            driver: 0x2000,
            device: 0x3000,
            ..QueueRegs::new(256)
        }
    }

    #[test]
    fn valid_queue_builds_ready() {
        let q = regs(128).build(true, &mem()).unwrap();
        assert!(q.ready());
        assert_eq!(q.size(), 128);
        assert!(q.event_idx_enabled());
        assert_eq!(q.desc_table(), 0x1000);
    }

    #[test]
    fn sizes_must_be_powers_of_two_up_to_the_maximum() {
        for size in [0, 3, 100, 255, 512] {
            assert_eq!(
                regs(size).build(false, &mem()).unwrap_err(),
                QueueError::Size { size, max: 256 },
                "{size}"
            );
        }
        assert!(regs(1).build(false, &mem()).is_ok());
    }

    #[test]
    fn misaligned_and_outside_ram_rings_are_refused() {
        let mut r = regs(16);
        r.desc = 0x1008;
        assert!(matches!(
            r.build(false, &mem()),
            Err(QueueError::Alignment {
                ring: "descriptor table",
                ..
            })
        ));
        let mut r = regs(16);
        r.device = 0x3002;
        assert!(matches!(r.check(), Err(QueueError::Alignment { .. })));
        let mut r = regs(256);
        r.device = 0xfffc;
        assert!(matches!(
            r.build(false, &mem()),
            Err(QueueError::OutsideRam { .. })
        ));
        let mut r = regs(16);
        r.driver = u64::MAX - 1;
        assert!(matches!(
            r.build(false, &mem()),
            Err(QueueError::OutsideRam { .. })
        ));
    }

    #[test]
    fn reset_restores_the_maximum() {
        let mut r = regs(16);
        r.reset();
        assert_eq!(r, QueueRegs::new(256));
    }
}
