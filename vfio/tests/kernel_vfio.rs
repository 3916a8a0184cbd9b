//! Kernel VFIO end to end: a real device bound to vfio-pci, opened, read, mapped, its MSI-X
//! enabled and disabled with eventfds, guest-like memory DMA-mapped. Needs a VFIO host, so
//! it is ignored unless asked for; the KVM pseudo-device test needs only /dev/kvm.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use kvm_ioctls::Kvm;
use vfio::backend::{CONFIG_REGION, IRQ_MSIX, PCI_REGIONS};
use vfio::{DmaRegion, KernelVfio, RegionMmap, VfioBackend};
use vmm_sys_util::eventfd::EventFd;

/// The variable naming the device to use.
const DEVICE_VAR: &str = "IRVMM_VFIO_DEVICE";
/// Where the DMA test buffer goes in the device's I/O address space.
const TEST_IOVA: u64 = 1 << 30;
/// Its size.
const TEST_DMA_SIZE: u64 = 2 << 20;
/// Most MSI-X vectors the test enables.
const TEST_VECTORS: u32 = 4;

/// A VM's KVM VFIO pseudo-device when /dev/kvm opens, else none.
fn kvm_container() -> std::sync::Arc<KernelVfio> {
    match Kvm::new().and_then(|k| k.create_vm()) {
        Ok(vm) => KernelVfio::for_vm(&vm).unwrap_or_else(|e| panic!("{e}")),
        Err(e) => {
            eprintln!("/dev/kvm unusable ({e}); opening the container without KVM's device");
            KernelVfio::new()
        }
    }
}

/// An fd-backed 2 MiB buffer to DMA-map (kept alive by the returned values).
fn dma_buffer() -> (RegionMmap, RawFd) {
    // SAFETY: creating an anonymous memfd; the result is checked.
    let fd = unsafe { libc::memfd_create(c"irvmm-dma-test".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: sizing our own memfd.
    let sized = unsafe { libc::ftruncate(fd, TEST_DMA_SIZE as libc::off_t) };
    assert_eq!(sized, 0);
    (RegionMmap::map(fd, 0, TEST_DMA_SIZE as usize).unwrap(), fd)
}

#[test]
#[ignore = "needs /dev/vfio and IRVMM_VFIO_DEVICE=<sysfs path of a device bound to vfio-pci>; run with: IRVMM_VFIO_DEVICE=... cargo test -p vfio -- --ignored"]
fn kernel_vfio_device_end_to_end() {
    let path = std::env::var(DEVICE_VAR)
        .unwrap_or_else(|_| panic!("{DEVICE_VAR} is not set: name a device bound to vfio-pci"));
    assert!(
        Path::new("/dev/vfio/vfio").exists(),
        "/dev/vfio/vfio does not exist: this host has no VFIO"
    );
    let host = kvm_container();
    let mut dev = host.open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    eprintln!(
        "{}: group {}, {:?}",
        dev.describe(),
        dev.group(),
        dev.isolation()
    );

    // Vendor ID through the config region, against sysfs.
    let mut id = [0u8; 2];
    dev.region_read(CONFIG_REGION, 0, &mut id).unwrap();
    let vendor = u16::from_le_bytes(id);
    let sysfs_vendor = std::fs::read_to_string(dev.sysfs_path().join("vendor")).unwrap();
    let sysfs_vendor =
        u16::from_str_radix(sysfs_vendor.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(vendor, sysfs_vendor, "config-space vendor ID");
    assert_ne!(vendor, 0xffff);

    // Region infos, and every mappable area mapped.
    let config = dev.region(CONFIG_REGION).expect("config region").clone();
    assert!(config.size >= 256);
    assert!(
        config.mmap_areas().is_empty(),
        "config space is never mapped"
    );
    for index in 0..PCI_REGIONS {
        let Some(r) = dev.region(index).cloned() else {
            continue;
        };
        eprintln!(
            "region {index}: flags {:#x} size {:#x} sparse {:?} msix_mappable {}",
            r.flags, r.size, r.caps.sparse, r.caps.msix_mappable
        );
        for area in r.mmap_areas() {
            let m = dev
                .mmap(index, area.offset, area.size)
                .unwrap_or_else(|e| panic!("region {index} {area:?}: {e}"));
            assert_eq!(m.len() as u64, area.size);
        }
    }
    assert!(dev
        .region_read(CONFIG_REGION, config.size, &mut id)
        .is_err());

    // MSI-X on with eventfds, one vector switched off with -1, then all off.
    match dev.irq(IRQ_MSIX).filter(|i| i.count > 0) {
        Some(irq) => {
            let n = irq.count.min(TEST_VECTORS);
            let fds: Vec<EventFd> = (0..n)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect();
            let raw: Vec<Option<RawFd>> = fds.iter().map(|f| Some(f.as_raw_fd())).collect();
            dev.set_irq_eventfds(IRQ_MSIX, 0, &raw).unwrap();
            if n > 1 {
                dev.set_irq_eventfds(IRQ_MSIX, n - 1, &[None]).unwrap();
            }
            assert!(dev.set_irq_eventfds(IRQ_MSIX, irq.count, &[None]).is_err());
            dev.disable_irqs(IRQ_MSIX).unwrap();
        }
        None => eprintln!("{}: no MSI-X; skipped that part", dev.describe()),
    }

    // DMA: the device's mapping and the container's identical one are shared.
    let (buf, fd) = dma_buffer();
    let region = DmaRegion {
        iova: TEST_IOVA,
        size: TEST_DMA_SIZE,
        host_addr: buf.host_addr(),
        fd,
        fd_offset: 0,
    };
    dev.dma_map(&region).unwrap();
    host.dma_map(&region).unwrap();
    dev.dma_unmap(TEST_IOVA, TEST_DMA_SIZE).unwrap();
    assert!(
        host.dma_mapped(TEST_IOVA, TEST_DMA_SIZE),
        "still claimed by the container"
    );
    host.dma_unmap(TEST_IOVA, TEST_DMA_SIZE).unwrap();
    assert!(!host.dma_mapped(TEST_IOVA, TEST_DMA_SIZE));

    if dev.resettable() {
        dev.reset().unwrap();
    }
    drop(dev);
    // SAFETY: closing our own memfd after its last use.
    unsafe { libc::close(fd) };
}

/// KVM's VFIO pseudo-device can be created on a VM (no VFIO host needed).
#[test]
fn kvm_vfio_pseudo_device_is_created() {
    let vm = match Kvm::new().and_then(|k| k.create_vm()) {
        Ok(vm) => vm,
        Err(e) if std::env::var_os("IRVMM_REQUIRE_ASSETS").is_none() => {
            eprintln!("skipped: /dev/kvm unusable ({e})");
            return;
        }
        Err(e) => panic!("/dev/kvm unusable ({e}) and IRVMM_REQUIRE_ASSETS is set"),
    };
    let host = KernelVfio::for_vm(&vm).unwrap_or_else(|e| panic!("{e}"));
    assert!(!host.dma_mapped(TEST_IOVA, TEST_DMA_SIZE));
}
