//! The `virtio_pci_config` harness: one virtio-pci function (virtio-rng, with its real I/O
//! thread) driven through configuration space and BAR 0 with fuzzer-chosen offsets, sizes
//! (1 to 16 bytes, aligned or not) and values, over guest memory the fuzzer also fills (so
//! a device it starts processes fuzzer rings).
//!
//! Input: 1 byte of memory length (in 64-byte units), that many bytes copied to guest RAM
//! at 0, then operations of 12 bytes: kind (config read/write, BAR read/write, masked
//! fire), 16-bit offset, size, 8-byte value.
//!
//! Invariants: no panic; vendor and device IDs never change; notifications are registered
//! only at BAR 0 + 0x3000 (or nowhere); the MSI-X sink only hears of the device's vectors;
//! the status byte never shows FEATURES_OK for features without VERSION_1.

use std::sync::{Arc, Mutex};

use devices::pci::{MsiSink, PciFunction};
use virtio::transport::layout::{BAR_SIZE, NOTIFY_OFFSET};
use virtio::{IoEventRegistrar, Rng, VirtioPciDevice};
use virtual_iommu::msi::MsiMessage;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RAM: usize = 0x10000;
const OP: usize = 12;

/// Checks sink calls against the vector count.
struct Sink(u16);

impl MsiSink for Sink {
    fn set_vector_route(&self, index: u16, msg: Option<MsiMessage>) {
        assert!(index < self.0, "route for vector {index}");
        if let Some(m) = msg {
            crate::assert_raw_interrupt(&m, "virtio MSI-X route");
        }
    }
    fn trigger_vector(&self, index: u16) {
        assert!(index < self.0, "trigger of vector {index}");
    }
    fn set_vectors_masked(&self, changes: &[(u16, bool)]) {
        assert!(changes.iter().all(|(i, _)| *i < self.0));
    }
}

/// Records where notifications are registered.
#[derive(Default)]
struct Registrar(Mutex<Vec<u64>>);

impl IoEventRegistrar for Registrar {
    fn register(&self, addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(addr);
        Ok(())
    }
    fn unregister(&self, addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let at = v.iter().position(|&a| a == addr).expect("unregister of an unregistered address");
        v.remove(at);
        Ok(())
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mem_len, rest)) = data.split_first() else { return };
    let mem_len = (usize::from(mem_len) * 64).min(rest.len());
    let (fill, ops) = rest.split_at(mem_len);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest RAM");
    mem.write_slice(fill, GuestAddress(0)).expect("fill");
    let rng = Rng::open().expect("urandom");
    let spec = rng.spec();
    let vectors = spec.vectors();
    let fds = (0..vectors).map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"))).collect();
    let registrar = Arc::new(Registrar::default());
    let mut dev = VirtioPciDevice::new(
        spec,
        rng.into_handler(),
        Arc::new(Sink(vectors)),
        fds,
        registrar.clone(),
        mem,
    )
    .expect("device");
    for op in ops.chunks_exact(OP) {
        let offset = u16::from_le_bytes([op[1], op[2]]);
        let size = usize::from(op[3] % 16) + 1;
        let value = &op[4..12];
        let mut buf = [0u8; 16];
        for (i, b) in buf.iter_mut().enumerate().take(size) {
            *b = value[i % 8];
        }
        match op[0] % 5 {
            0 => {
                let off = offset % 0x1000;
                let len = size.min(4).min(usize::from(0x1000 - off));
                dev.config_read(off, &mut buf[..len]);
            }
            1 => {
                let off = offset % 0x1000;
                let len = size.min(4).min(usize::from(0x1000 - off));
                dev.config_write(off, &buf[..len]);
            }
            2 => dev.bar_read(op[3] >> 6, u64::from(offset), &mut buf[..size]),
            3 => dev.bar_write(op[3] >> 6, u64::from(offset), &buf[..size]),
            _ => dev.masked_fire(u16::from(op[1])),
        }
        let cfg = dev.config();
        assert_eq!(cfg.read_u16(0), 0x1af4);
        assert_eq!(cfg.read_u16(2), 0x1044);
        // Where BAR 0 was last placed (sizing is not a move): inside a 32 KiB-aligned BAR.
        if let Some(base) = dev.notify_base() {
            assert_eq!((base - NOTIFY_OFFSET) % BAR_SIZE, 0, "notifications at {base:#x}");
        }
        let reg = registrar.0.lock().unwrap_or_else(|p| p.into_inner());
        assert!(reg.len() <= 1, "notifications registered twice: {reg:x?}");
    }
    let _ = dev.interrupt().status();
}
