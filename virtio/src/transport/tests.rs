//! The transport driven the way a driver drives it, with a real I/O thread (virtio-rng).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::pci::config::{PCI_BAR0, PCI_COMMAND, PCI_DEVICE_ID, PCI_VENDOR_ID};
use devices::pci::msix::{MSIX_CONTROL, MSIX_CTRL_ENABLE};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtual_iommu::MsiMessage;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::common::*;
use super::*;
use crate::Rng;

/// Records ioeventfd registrations.
#[derive(Default)]
struct Registrar(Mutex<Vec<(bool, u64)>>);

impl IoEventRegistrar for Registrar {
    fn register(&self, addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        self.0.lock().unwrap().push((true, addr));
        Ok(())
    }
    fn unregister(&self, addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        self.0.lock().unwrap().push((false, addr));
        Ok(())
    }
}

/// Records what the MSI-X capability asks of the VMM.
#[derive(Default)]
struct Sink(Mutex<Vec<String>>);

impl MsiSink for Sink {
    fn set_vector_route(&self, index: u16, msg: Option<MsiMessage>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("route {index} {}", msg.is_some()));
    }
    fn trigger_vector(&self, index: u16) {
        self.0.lock().unwrap().push(format!("trigger {index}"));
    }
    fn set_vectors_masked(&self, changes: &[(u16, bool)]) {
        for (i, m) in changes {
            self.0.lock().unwrap().push(format!("mask {i} {m}"));
        }
    }
}

const BAR: u64 = 0xc000_0000;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUF: u64 = 0x10000;
const ACK: u8 = (VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER) as u8;
const FOK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const DOK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;

struct Bench {
    dev: VirtioPciDevice,
    mem: GuestMemoryMmap,
    vectors: Vec<Arc<EventFd>>,
    registrar: Arc<Registrar>,
    sink: Arc<Sink>,
}

fn rng() -> Bench {
    rng_with(None)
}

/// A virtio-rng bench whose device got `dma` (offering ACCESS_PLATFORM) when given.
fn rng_with(dma: Option<crate::memory::DmaView>) -> Bench {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
    let rng = Rng::open().unwrap();
    let spec = rng.spec();
    let vectors: Vec<_> = (0..spec.vectors())
        .map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
        .collect();
    let registrar = Arc::new(Registrar::default());
    let sink = Arc::new(Sink::default());
    let dev = VirtioPciDevice::new(
        spec,
        rng.into_handler(),
        sink.clone(),
        vectors.clone(),
        registrar.clone(),
        mem.clone(),
    )
    .unwrap();
    let dev = match dma {
        Some(view) => dev.with_dma(view),
        None => dev,
    };
    Bench {
        dev,
        mem,
        vectors,
        registrar,
        sink,
    }
}

impl Bench {
    fn w(&mut self, off: u64, data: &[u8]) {
        self.dev.bar_write(0, off, data);
    }
    fn r(&mut self, off: u64, len: usize) -> u64 {
        let mut d = [0u8; 8];
        self.dev.bar_read(0, off, &mut d[..len]);
        u64::from_le_bytes(d)
    }
    fn status(&mut self) -> u8 {
        self.r(COMMON_OFFSET + DEVICE_STATUS, 1) as u8
    }
    fn set_status(&mut self, s: u8) {
        self.w(COMMON_OFFSET + DEVICE_STATUS, &[s]);
    }
    fn place(&mut self) {
        self.dev.config_write(PCI_BAR0, &(BAR as u32).to_le_bytes());
        self.dev.config_write(PCI_BAR0 + 4, &0u32.to_le_bytes());
        self.dev.config_write(PCI_COMMAND, &6u16.to_le_bytes());
    }
    /// MSI-X on, entries 0 and 1 programmed and unmasked.
    fn msix(&mut self) {
        let cap = self.dev.msix().offset();
        self.dev
            .config_write(cap + MSIX_CONTROL, &MSIX_CTRL_ENABLE.to_le_bytes());
        for v in 0..2u64 {
            let e = u64::from(MSIX_TABLE_OFFSET) + 16 * v;
            self.w(e, &0xfee0_0000u32.to_le_bytes());
            self.w(e + 8, &(0x40 + v as u32).to_le_bytes());
            self.w(e + 12, &0u32.to_le_bytes());
        }
    }
    /// Negotiates VERSION_1 and programs queue 0 with 16 entries, vector 0 for it and
    /// vector 1 for configuration changes.
    fn setup(&mut self, size: u16) {
        self.setup_at(size, 1, 0);
    }
    /// As [`Bench::setup`], accepting the high feature dword `features_hi` and giving the
    /// device ring addresses `offset` above their guest-physical ones.
    fn setup_at(&mut self, size: u16, features_hi: u32, offset: u64) {
        self.place();
        self.msix();
        self.set_status(ACK);
        self.w(COMMON_OFFSET + DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
        self.w(COMMON_OFFSET + DRIVER_FEATURE, &features_hi.to_le_bytes());
        self.set_status(ACK | FOK);
        assert_eq!(self.status(), ACK | FOK);
        self.w(COMMON_OFFSET + CONFIG_MSIX_VECTOR, &1u16.to_le_bytes());
        self.w(COMMON_OFFSET + QUEUE_SELECT, &0u16.to_le_bytes());
        self.w(COMMON_OFFSET + QUEUE_SIZE, &size.to_le_bytes());
        self.w(COMMON_OFFSET + QUEUE_MSIX_VECTOR, &0u16.to_le_bytes());
        for (reg, addr) in [
            (QUEUE_DESC_LO, DESC),
            (QUEUE_DRIVER_LO, AVAIL),
            (QUEUE_DEVICE_LO, USED),
        ] {
            self.w(COMMON_OFFSET + reg, &(addr + offset).to_le_bytes());
        }
        self.w(COMMON_OFFSET + QUEUE_ENABLE, &1u16.to_le_bytes());
    }
    /// The device features, both dwords.
    fn device_features(&mut self) -> u64 {
        self.w(COMMON_OFFSET + DEVICE_FEATURE_SELECT, &0u32.to_le_bytes());
        let lo = self.r(COMMON_OFFSET + DEVICE_FEATURE, 4);
        self.w(COMMON_OFFSET + DEVICE_FEATURE_SELECT, &1u32.to_le_bytes());
        lo | self.r(COMMON_OFFSET + DEVICE_FEATURE, 4) << 32
    }
    /// Offers one writable buffer of `len` bytes as available entry `n` and kicks queue 0.
    fn offer(&mut self, n: u16, len: u32) {
        self.offer_at(n, len, 0);
    }
    /// As [`Bench::offer`], the buffer's address given `offset` above its guest-physical one.
    fn offer_at(&mut self, n: u16, len: u32, offset: u64) {
        let d = DESC + 16 * u64::from(n % 16);
        self.mem
            .write_obj(BUF + 0x100 * u64::from(n) + offset, GuestAddress(d))
            .unwrap();
        self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        self.mem
            .write_obj(VRING_DESC_F_WRITE as u16, GuestAddress(d + 12))
            .unwrap();
        self.mem
            .write_obj(n % 16, GuestAddress(AVAIL + 4 + 2 * u64::from(n % 16)))
            .unwrap();
        self.mem.write_obj(n + 1, GuestAddress(AVAIL + 2)).unwrap();
        self.w(NOTIFY_OFFSET, &0u16.to_le_bytes());
    }
    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }
}

fn wait(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

#[test]
fn identity_and_capabilities() {
    let mut b = rng();
    let mut id = [0u8; 4];
    b.dev.config_read(PCI_VENDOR_ID, &mut id);
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), 0x1af4);
    b.dev.config_read(PCI_DEVICE_ID, &mut id[..2]);
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), 0x1044);
    let caps = b.dev.config().capabilities();
    let types: Vec<u8> = caps
        .iter()
        .filter(|(id, _)| *id == PCI_CAP_ID_VENDOR)
        .map(|(_, off)| b.dev.config().read_u8(off + VIRTIO_PCI_CAP_CFG_TYPE))
        .collect();
    assert_eq!(types, vec![1, 2, 3, 4, 5]);
    assert!(caps.iter().any(|(id, _)| *id == 0x11));
    // Features through the PCI configuration access capability: select dword 1, read it.
    let cfg = b.dev.caps.pci_cfg;
    b.dev.config_write(cfg + VIRTIO_PCI_CAP_BAR, &[0]);
    b.dev
        .config_write(cfg + VIRTIO_PCI_CAP_LENGTH, &4u32.to_le_bytes());
    b.dev.config_write(
        cfg + VIRTIO_PCI_CAP_OFFSET,
        &(DEVICE_FEATURE_SELECT as u32).to_le_bytes(),
    );
    b.dev
        .config_write(cfg + VIRTIO_PCI_CFG_DATA, &1u32.to_le_bytes());
    b.dev.config_write(
        cfg + VIRTIO_PCI_CAP_OFFSET,
        &(DEVICE_FEATURE as u32).to_le_bytes(),
    );
    let mut v = [0u8; 4];
    b.dev.config_read(cfg + VIRTIO_PCI_CFG_DATA, &mut v);
    assert_eq!(u32::from_le_bytes(v), (TRANSPORT_FEATURES >> 32) as u32);
    // Vectors start masked.
    assert!(b
        .sink
        .0
        .lock()
        .unwrap()
        .contains(&"mask 0 true".to_string()));
}

#[test]
fn notifications_follow_the_bar() {
    let mut b = rng();
    b.place();
    assert_eq!(b.dev.notify_base(), Some(BAR + NOTIFY_OFFSET));
    assert_eq!(
        *b.registrar.0.lock().unwrap(),
        vec![(true, BAR + NOTIFY_OFFSET)]
    );
    // Sizing is not a move.
    b.dev.config_write(PCI_BAR0, &u32::MAX.to_le_bytes());
    assert_eq!(b.dev.notify_base(), Some(BAR + NOTIFY_OFFSET));
    b.dev
        .config_write(PCI_BAR0, &(0xd000_0000u32).to_le_bytes());
    assert_eq!(b.dev.notify_base(), Some(0xd000_0000 + NOTIFY_OFFSET));
    b.dev.config_write(PCI_COMMAND, &0u16.to_le_bytes());
    assert_eq!(b.dev.notify_base(), None);
    assert_eq!(
        *b.registrar.0.lock().unwrap(),
        vec![
            (true, BAR + NOTIFY_OFFSET),
            (false, BAR + NOTIFY_OFFSET),
            (true, 0xd000_3000),
            (false, 0xd000_3000)
        ]
    );
}

#[test]
fn rng_request_completes_with_an_interrupt_then_resets() {
    let mut b = rng();
    b.setup(16);
    b.set_status(ACK | FOK | DOK);
    assert_eq!(b.status(), ACK | FOK | DOK);
    b.offer(0, 64);
    assert!(wait(|| b.used_idx() == 1), "request not completed");
    let used_len: u32 = b.mem.read_obj(GuestAddress(USED + 8)).unwrap();
    assert_eq!(used_len, 64);
    let mut got = [0u8; 64];
    b.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert!(got.iter().any(|&x| x != 0));
    assert!(wait(|| b.vectors[0].read().is_ok()), "no queue interrupt");
    assert_eq!(b.r(ISR_OFFSET, 1), 1);
    assert_eq!(b.r(ISR_OFFSET, 1), 0, "ISR is read-to-clear");

    // A masked vector's fire becomes a pending bit, delivered at unmask.
    b.w(u64::from(MSIX_TABLE_OFFSET) + 12, &1u32.to_le_bytes());
    b.dev.masked_fire(0);
    assert!(b.dev.msix().is_pending(0));
    b.w(u64::from(MSIX_TABLE_OFFSET) + 12, &0u32.to_le_bytes());
    assert!(!b.dev.msix().is_pending(0));
    assert!(b.sink.0.lock().unwrap().contains(&"trigger 0".to_string()));

    // Reset: status reads 0 once the I/O thread dropped the queues.
    b.set_status(0);
    assert!(wait(|| b.status() == 0), "reset never completed");
    assert_eq!(
        b.r(COMMON_OFFSET + QUEUE_MSIX_VECTOR, 2),
        u64::from(VIRTIO_MSI_NO_VECTOR)
    );
    // And the device works again after re-initialisation.
    b.mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
    b.mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
    b.setup(8);
    b.set_status(ACK | FOK | DOK);
    b.offer(0, 32);
    assert!(wait(|| b.used_idx() == 1), "not working after reset");
}

#[test]
fn invalid_queue_size_needs_reset() {
    let mut b = rng();
    b.setup(12);
    assert_ne!(b.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0);
    b.set_status(ACK | FOK | DOK);
    b.offer(0, 16);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(b.used_idx(), 0, "a broken device serves nothing");
    b.set_status(0);
    assert!(wait(|| b.status() == 0));
}

#[test]
fn runaway_avail_index_needs_reset_with_a_config_interrupt() {
    let mut b = rng();
    b.setup(16);
    b.set_status(ACK | FOK | DOK);
    // The driver claims 100 new entries in a 16-entry ring.
    b.mem.write_obj(100u16, GuestAddress(AVAIL + 2)).unwrap();
    b.w(NOTIFY_OFFSET, &0u16.to_le_bytes());
    assert!(wait(|| b.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8 != 0));
    assert!(
        wait(|| b.vectors[1].read().is_ok()),
        "no configuration interrupt"
    );
    assert_eq!(b.r(ISR_OFFSET, 1) & 2, 2);
}

#[test]
fn chains_that_loop_or_point_nowhere_do_not_hurt() {
    let mut b = rng();
    b.setup(16);
    b.set_status(ACK | FOK | DOK);
    // Descriptor 0 chains to itself; then one pointing outside RAM; then a head index
    // beyond the queue.
    b.mem.write_obj(BUF, GuestAddress(DESC)).unwrap();
    b.mem.write_obj(8u32, GuestAddress(DESC + 8)).unwrap();
    b.mem.write_obj(3u16, GuestAddress(DESC + 12)).unwrap();
    b.mem.write_obj(0u16, GuestAddress(DESC + 14)).unwrap();
    b.mem
        .write_obj(0xdead_0000u64, GuestAddress(DESC + 16))
        .unwrap();
    b.mem.write_obj(64u32, GuestAddress(DESC + 24)).unwrap();
    b.mem.write_obj(2u16, GuestAddress(DESC + 28)).unwrap();
    for (i, head) in [0u16, 1, 200].iter().enumerate() {
        b.mem
            .write_obj(*head, GuestAddress(AVAIL + 4 + 2 * i as u64))
            .unwrap();
    }
    b.mem.write_obj(3u16, GuestAddress(AVAIL + 2)).unwrap();
    b.w(NOTIFY_OFFSET, &0u16.to_le_bytes());
    assert!(wait(|| b.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8 != 0));
    assert_eq!(
        b.used_idx(),
        2,
        "the first two complete, the bad head breaks the device"
    );
}

#[test]
fn device_config_and_odd_accesses() {
    let mut b = rng();
    b.w(DEVICE_OFFSET, &[1, 2, 3, 4, 5, 6, 7, 8]);
    b.w(DEVICE_OFFSET + 0xfff, &[1]);
    assert_eq!(b.r(DEVICE_OFFSET, 8), 0);
    b.w(ISR_OFFSET, &[0xff]);
    b.w(NOTIFY_OFFSET + 0x800, &[1, 2, 3]);
    assert_eq!(b.r(NOTIFY_OFFSET, 4), 0);
    assert_eq!(b.r(BAR_SIZE, 4), 0xffff_ffff);
    b.w(0x5000, &[1, 2]);
    let mut d = [0u8; 3];
    b.dev.bar_read(2, 0, &mut d);
    assert_eq!(d, [0xff; 3]);
    b.dev.bar_write(2, 0, &d);
}

#[test]
fn a_kick_before_driver_ok_is_served_once_started() {
    let mut b = rng();
    b.setup(16);
    // The driver kicks a queue that is not running yet: nothing happens...
    b.offer(0, 16);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(b.used_idx(), 0);
    assert_eq!(b.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0);
    // ...until it starts the device.
    b.set_status(ACK | FOK | DOK);
    assert!(wait(|| b.used_idx() == 1), "pending kick lost");
}

#[test]
fn no_interrupt_without_bus_mastering() {
    let mut b = rng();
    b.setup(16);
    b.set_status(ACK | FOK | DOK);
    b.dev.config_write(PCI_COMMAND, &2u16.to_le_bytes());
    b.offer(0, 16);
    assert!(wait(|| b.used_idx() == 1));
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        b.vectors[0].read().is_err(),
        "an MSI with bus mastering off"
    );
}

/// Where the IOMMU tests' IOVAs are: this far above the guest-physical addresses.
const IOVA_OFFSET: u64 = 0x40_0000_0000;

/// A page table mapping the rings' page range and the buffer pages at [`IOVA_OFFSET`].
fn iommu_table() -> Arc<crate::test_dma::PageTable> {
    use crate::test_dma::{PageTable, R, W};
    let table = PageTable::new();
    table.map_range(DESC + IOVA_OFFSET, DESC, 3, R | W);
    table.map_range(BUF + IOVA_OFFSET, BUF, 2, R | W);
    table
}

#[test]
fn access_platform_is_offered_only_with_a_translator() {
    let mut plain = rng();
    assert_eq!(plain.device_features() & ACCESS_PLATFORM, 0);
    let mut b = rng_with(Some(iommu_table().view()));
    let f = b.device_features();
    assert_eq!(f & ACCESS_PLATFORM, ACCESS_PLATFORM);
    assert_eq!(f & !ACCESS_PLATFORM, plain.device_features());
}

#[test]
fn negotiated_access_platform_serves_rings_and_buffers_at_iovas() {
    let table = iommu_table();
    let mut b = rng_with(Some(table.view()));
    // VERSION_1 | ACCESS_PLATFORM.
    b.setup_at(16, 3, IOVA_OFFSET);
    b.set_status(ACK | FOK | DOK);
    assert_eq!(b.status(), ACK | FOK | DOK);
    b.offer_at(0, 64, IOVA_OFFSET);
    assert!(wait(|| b.used_idx() == 1), "request not completed");
    let used_len: u32 = b.mem.read_obj(GuestAddress(USED + 8)).unwrap();
    assert_eq!(used_len, 64);
    let mut got = [0u8; 64];
    b.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert!(
        got.iter().any(|&x| x != 0),
        "the buffer's page got the bytes"
    );
    assert_eq!(table.faults(), 0);

    // The buffer's page unmapped: the request completes empty, the page is untouched and
    // the IOMMU saw the fault; the device keeps working.
    table.unmap(BUF + IOVA_OFFSET + 0x100);
    b.mem
        .write_slice(&[0u8; 64], GuestAddress(BUF + 0x100))
        .unwrap();
    b.offer_at(1, 64, IOVA_OFFSET);
    assert!(wait(|| b.used_idx() == 2), "request not completed");
    let used_len: u32 = b.mem.read_obj(GuestAddress(USED + 16)).unwrap();
    assert_eq!(used_len, 0);
    let mut page = [0u8; 64];
    b.mem
        .read_slice(&mut page, GuestAddress(BUF + 0x100))
        .unwrap();
    assert_eq!(page, [0u8; 64]);
    assert_eq!(
        table.last_fault(),
        Some((crate::test_dma::FAULT_WRITE, BUF + IOVA_OFFSET + 0x100))
    );
    assert_eq!(b.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0);

    // The available ring's page unmapped: the next kick needs a reset, with a
    // configuration interrupt, and nothing more is used.
    table.unmap(AVAIL + IOVA_OFFSET);
    while b.vectors[1].read().is_ok() {}
    b.offer_at(2, 64, IOVA_OFFSET);
    assert!(wait(|| b.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8 != 0));
    assert!(
        wait(|| b.vectors[1].read().is_ok()),
        "no configuration interrupt"
    );
    assert_eq!(b.used_idx(), 2);
    assert_eq!(
        table.last_fault(),
        Some((crate::test_dma::FAULT_READ, AVAIL + IOVA_OFFSET))
    );
}

#[test]
fn without_access_platform_addresses_stay_guest_physical() {
    let table = iommu_table();
    let mut b = rng_with(Some(table.view()));
    b.setup(16);
    b.set_status(ACK | FOK | DOK);
    b.offer(0, 32);
    assert!(wait(|| b.used_idx() == 1), "request not completed");
    assert_eq!(table.faults(), 0, "the IOMMU was never asked");
}

#[test]
fn unmapped_rings_at_driver_ok_need_a_reset() {
    let table = iommu_table();
    // The used ring only readable: the device cannot write it.
    table.map(USED + IOVA_OFFSET, USED, crate::test_dma::R);
    let mut b = rng_with(Some(table.view()));
    b.setup_at(16, 3, IOVA_OFFSET);
    b.set_status(ACK | FOK | DOK);
    assert_ne!(b.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0);
    assert_eq!(
        table.last_fault(),
        Some((crate::test_dma::FAULT_WRITE, USED + IOVA_OFFSET))
    );
    b.set_status(0);
    assert!(wait(|| b.status() == 0));
}
