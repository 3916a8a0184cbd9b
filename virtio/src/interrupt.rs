//! The device's side of its interrupts, shared by the transport (vCPU threads) and the
//! device's I/O thread: one eventfd per MSI-X vector, the vectors the driver assigned to
//! the queues and to configuration changes, the ISR status and the device status byte.
//!
//! Signalling a vector writes its eventfd. The VMM's interrupt router has bound that
//! eventfd to KVM as an irqfd whose route is the vector's (remapped) message, so KVM
//! delivers it; while the vector is masked or has no route, the router watches the
//! eventfd instead and reports masked fires back ([`crate::VirtioPciDevice::masked_fire`]),
//! which sets the vector's pending bit. [`VIRTIO_MSI_NO_VECTOR`] means "no interrupt":
//! the ISR bit is still set, nothing is signalled (irvmm offers no INTx fallback).

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use log::debug;
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET};
use vmm_sys_util::eventfd::EventFd;

use crate::spec::{VIRTIO_ISR_CONFIG, VIRTIO_ISR_QUEUE, VIRTIO_MSI_NO_VECTOR};

/// Interrupt and status state shared between the transport and the I/O thread.
#[derive(Debug)]
pub struct VirtioInterrupt {
    vectors: Vec<Arc<EventFd>>,
    queue_vectors: Vec<AtomicU16>,
    config_vector: AtomicU16,
    isr: AtomicU8,
    status: AtomicU8,
    signalled: AtomicU64,
    /// Bus Master Enable: an MSI is a memory write, which a function with it clear does
    /// not make.
    bus_master: AtomicBool,
}

impl VirtioInterrupt {
    /// State for `queues` queues whose interrupts go to `vectors` (MSI-X vector `i` is
    /// `vectors[i]`). Every queue and the configuration start with no vector.
    pub fn new(vectors: Vec<Arc<EventFd>>, queues: usize) -> Self {
        VirtioInterrupt {
            vectors,
            queue_vectors: (0..queues)
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            isr: AtomicU8::new(0),
            status: AtomicU8::new(0),
            signalled: AtomicU64::new(0),
            bus_master: AtomicBool::new(true),
        }
    }

    /// Number of MSI-X vectors.
    pub fn vector_count(&self) -> usize {
        self.vectors.len()
    }

    /// The value a driver's write of `vector` leaves in a vector register: the vector when
    /// it exists, else [`VIRTIO_MSI_NO_VECTOR`] (the spec's "could not allocate").
    fn accept(&self, vector: u16) -> u16 {
        if usize::from(vector) < self.vectors.len() {
            vector
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    /// Assigns `vector` to queue `queue` (out-of-range vectors read back as no vector).
    pub fn set_queue_vector(&self, queue: usize, vector: u16) {
        if let Some(v) = self.queue_vectors.get(queue) {
            v.store(self.accept(vector), Ordering::SeqCst);
        }
    }

    /// Queue `queue`'s vector.
    pub fn queue_vector(&self, queue: usize) -> u16 {
        self.queue_vectors
            .get(queue)
            .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::SeqCst))
    }

    /// Assigns `vector` to configuration changes.
    pub fn set_config_vector(&self, vector: u16) {
        self.config_vector
            .store(self.accept(vector), Ordering::SeqCst);
    }

    /// The configuration-change vector.
    pub fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::SeqCst)
    }

    /// Forgets every vector assignment and the ISR (device reset).
    pub fn reset_vectors(&self) {
        for v in &self.queue_vectors {
            v.store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        }
        self.config_vector
            .store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        self.isr.store(0, Ordering::SeqCst);
    }

    /// Follows the command register's Bus Master Enable.
    pub fn set_bus_master(&self, on: bool) {
        self.bus_master.store(on, Ordering::SeqCst);
    }

    fn fire(&self, vector: u16) {
        if !self.bus_master.load(Ordering::SeqCst) {
            debug!("virtio: interrupt dropped: bus mastering disabled");
            return;
        }
        match self.vectors.get(usize::from(vector)) {
            Some(fd) => {
                if let Err(e) = fd.write(1) {
                    log::error!("virtio: signalling MSI-X vector {vector} failed: {e}");
                } else {
                    self.signalled.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => debug!("virtio: interrupt without an MSI-X vector (no INTx); ISR only"),
        }
    }

    /// Queue `queue` used buffers: sets ISR bit 0 and signals the queue's vector.
    pub fn signal_queue(&self, queue: usize) {
        self.isr.fetch_or(VIRTIO_ISR_QUEUE, Ordering::SeqCst);
        self.fire(self.queue_vector(queue));
    }

    /// The device configuration (or status) changed: sets ISR bit 1 and signals the
    /// configuration vector.
    pub fn signal_config(&self) {
        self.isr.fetch_or(VIRTIO_ISR_CONFIG, Ordering::SeqCst);
        self.fire(self.config_vector());
    }

    /// Reads and clears the ISR status (a driver's read of the ISR byte).
    pub fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::SeqCst)
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.status.load(Ordering::SeqCst)
    }

    /// Sets the device status byte.
    pub fn set_status(&self, status: u8) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// The device hit an error it cannot recover from without a reset: sets
    /// `DEVICE_NEEDS_RESET` (once the driver is running) and sends a configuration-change
    /// interrupt, as the specification says.
    pub fn needs_reset(&self) {
        let status = self.status();
        if status & VIRTIO_CONFIG_S_NEEDS_RESET as u8 != 0 {
            return;
        }
        self.status
            .fetch_or(VIRTIO_CONFIG_S_NEEDS_RESET as u8, Ordering::SeqCst);
        if status & VIRTIO_CONFIG_S_DRIVER_OK as u8 != 0 {
            self.signal_config();
        }
    }

    /// True when `DEVICE_NEEDS_RESET` is set.
    pub fn is_broken(&self) -> bool {
        self.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8 != 0
    }

    /// How many interrupts were signalled (eventfd writes).
    pub fn signalled(&self) -> u64 {
        self.signalled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn fds(n: usize) -> Vec<Arc<EventFd>> {
        (0..n)
            .map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
            .collect()
    }

    #[test]
    fn queue_interrupts_follow_their_vector() {
        let v = fds(3);
        let irq = VirtioInterrupt::new(v.clone(), 2);
        irq.signal_queue(0);
        assert!(
            v.iter().all(|f| f.read().is_err()),
            "no vector: nothing fires"
        );
        assert_eq!(irq.take_isr(), VIRTIO_ISR_QUEUE);
        assert_eq!(irq.take_isr(), 0);
        irq.set_queue_vector(0, 2);
        irq.set_queue_vector(1, 7);
        assert_eq!(irq.queue_vector(1), VIRTIO_MSI_NO_VECTOR);
        irq.signal_queue(0);
        assert_eq!(v[2].read().unwrap(), 1);
        assert_eq!(irq.signalled(), 1);
        irq.set_config_vector(1);
        irq.signal_config();
        assert_eq!(v[1].read().unwrap(), 1);
        irq.set_bus_master(false);
        irq.signal_config();
        assert!(v[1].read().is_err(), "no MSI without bus mastering");
        irq.reset_vectors();
        assert_eq!(irq.queue_vector(0), VIRTIO_MSI_NO_VECTOR);
        assert_eq!(irq.config_vector(), VIRTIO_MSI_NO_VECTOR);
    }

    #[test]
    fn needs_reset_interrupts_a_running_driver_once() {
        let v = fds(1);
        let irq = VirtioInterrupt::new(v.clone(), 1);
        irq.set_config_vector(0);
        irq.needs_reset();
        assert!(irq.is_broken());
        assert!(v[0].read().is_err(), "driver not running: no interrupt");
        irq.set_status(VIRTIO_CONFIG_S_DRIVER_OK as u8);
        irq.needs_reset();
        irq.needs_reset();
        assert_eq!(v[0].read().unwrap(), 1);
        assert_eq!(irq.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0x40);
    }
}
