//! virtio for irvmm: the virtio-pci modern transport and the devices behind it.
//!
//! # Layout
//!
//! * [`transport`]: [`VirtioPciDevice`], a PCI function (vendor 0x1af4, device 0x1040 +
//!   virtio type, modern only) with one 64-bit BAR holding the common configuration, ISR,
//!   device-specific configuration and notification areas and the MSI-X table and PBA; the
//!   common configuration register file ([`transport::common`]) is a pure state machine.
//! * [`queue`]: a queue's registers as the driver programs them and their validation into a
//!   `virtio_queue::Queue` (split rings; the rings themselves are parsed by virtio-queue).
//! * [`interrupt`]: the device's side of its MSI-X vectors: one eventfd per vector (the
//!   VMM binds it to KVM as an irqfd through the interrupt router), the queue → vector
//!   map the driver programs, and the ISR and device-status bits the I/O thread sets.
//! * [`worker`]: the I/O thread each device gets: an event-manager loop over the queues'
//!   notification eventfds (ioeventfds in KVM), the device's own sources (console input, a tap)
//!   and a control channel for activation and reset. vCPU threads never do device work.
//! * Devices: [`block`] (virtio-blk on a raw image file), [`net`] (virtio-net on a tap),
//!   [`console`] (hvc0: output to standard output, input from a [`ConsoleInput`] the VMM
//!   fills) and [`rng`] (virtio-rng from the host's `/dev/urandom`).
//!
//! # Where this sits
//!
//! The crate depends on `devices` for the PCI pieces (configuration space, MSI-X
//! capability, [`devices::pci::MsiSink`]) and knows nothing of KVM: the VMM hands each
//! device an [`IoEventRegistrar`] (KVM_IOEVENTFD) and the MSI-X sink and eventfds of
//! irqfd vectors from its interrupt router, and calls
//! [`VirtioPciDevice::masked_fire`] when a masked vector's eventfd fires.
//!
//! Guest memory is only reached through vm-memory (bounds-checked), as [`DeviceMemory`]:
//! guest-physical addresses, or I/O virtual addresses translated by the platform's IOMMU
//! when the driver negotiated `VIRTIO_F_ACCESS_PLATFORM` ([`memory`]); nothing a guest writes
//! into rings, descriptors or registers can panic the VMM: bad chains fail the request
//! (virtio-blk: `VIRTIO_BLK_S_IOERR`) or, where the specification says so, the device sets
//! `DEVICE_NEEDS_RESET` and sends a configuration-change interrupt.

pub mod block;
pub mod console;
pub mod interrupt;
pub mod memory;
pub mod net;
pub mod queue;
pub mod rng;
pub mod segments;
pub mod spec;
#[cfg(test)]
mod test_dma;
pub mod transport;
pub mod worker;

use std::io;

use vmm_sys_util::eventfd::EventFd;

pub use block::{Block, BlockError, DiskConfig};
pub use console::{Console, ConsoleInput};
pub use memory::{DeviceMemory, DmaView};
pub use net::{Net, NetConfig, NetError};
pub use rng::Rng;
pub use transport::{DeviceSpec, VirtioPciDevice, VirtioPciError};
pub use worker::{Activation, Interest, QueueHandler};

/// Places a queue's notification eventfd at a guest-physical MMIO address (KVM_IOEVENTFD
/// with no data match in the VMM; a recorder in tests).
pub trait IoEventRegistrar: Send + Sync {
    /// Guest writes of any size at `addr` signal `fd` without leaving KVM.
    fn register(&self, addr: u64, fd: &EventFd) -> io::Result<()>;
    /// Undoes [`IoEventRegistrar::register`].
    fn unregister(&self, addr: u64, fd: &EventFd) -> io::Result<()>;
}

/// A registrar for places without KVM (fuzzing, unit tests): the transport's own notify
/// handler then signals the eventfds from the trapped writes.
#[derive(Debug, Default)]
pub struct NoIoEvents;

impl IoEventRegistrar for NoIoEvents {
    fn register(&self, _addr: u64, _fd: &EventFd) -> io::Result<()> {
        Ok(())
    }

    fn unregister(&self, _addr: u64, _fd: &EventFd) -> io::Result<()> {
        Ok(())
    }
}
