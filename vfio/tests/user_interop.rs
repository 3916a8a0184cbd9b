//! irvmm's vfio-user client against the `vfio_user` crate's `Server` (the server the
//! project's test device is built on), with a small in-test device backend: open, config
//! and BAR accesses (one split at the transfer limit), a sparse BAR mapped through the
//! server's descriptor, DMA mapping of a memfd, eventfds the backend signals, interrupt
//! disable/unmask, and reset.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use vfio::backend::{IRQ_INFO_EVENTFD, IRQ_INTX, IRQ_MSIX};
use vfio::caps::{REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE};
use vfio::user::VfioUserDevice;
use vfio::{BackendKind, DmaRegion, VfioBackend};
use vfio_bindings::bindings::vfio::{vfio_region_info, vfio_region_sparse_mmap_area};
use vfio_user::{
    DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion, SparseArea,
};

const BAR0_SIZE: u64 = 0x4000;
const BAR2_SIZE: usize = 2 << 20;
const CONFIG_SIZE: usize = 256;

/// What the backend saw.
#[derive(Default)]
struct Device {
    config: Vec<u8>,
    bar2: Vec<u8>,
    /// `(index, flags, start, count, descriptors)` per SET_IRQS.
    set_irqs: Vec<(u32, u32, u32, u32, usize)>,
    /// `(flags, offset, address, size, what the device read at the offset)`.
    dma_maps: Vec<(u32, u64, u64, u64, [u8; 4])>,
    dma_unmaps: Vec<(u64, u64)>,
    resets: usize,
}

impl ServerBackend for Device {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        let src = match region {
            2 => &self.bar2,
            7 => &self.config,
            _ => return Err(std::io::ErrorKind::InvalidInput.into()),
        };
        let at = offset as usize;
        data.copy_from_slice(&src[at..at + data.len()]);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let dst = match region {
            2 => &mut self.bar2,
            7 => &mut self.config,
            _ => return Err(std::io::ErrorKind::InvalidInput.into()),
        };
        let at = offset as usize;
        dst[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        let file = fd.ok_or(std::io::ErrorKind::InvalidInput)?;
        // Read guest memory through the descriptor, and write an answer next to it.
        let mut seen = [0u8; 4];
        file.read_exact_at(&mut seen, offset)?;
        file.write_all_at(b"pong", offset + 8)?;
        self.dma_maps
            .push((flags.bits(), offset, address, size, seen));
        Ok(())
    }

    fn dma_unmap(&mut self, _flags: DmaUnmapFlags, address: u64, size: u64) -> std::io::Result<()> {
        self.dma_unmaps.push((address, size));
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.resets += 1;
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> std::io::Result<()> {
        // Raise every interrupt it was given an eventfd for, as a device would.
        for f in &fds {
            std::io::Write::write_all(&mut &*f, &1u64.to_ne_bytes())?;
        }
        self.set_irqs.push((index, flags, start, count, fds.len()));
        Ok(())
    }
}

fn memfd(size: i64) -> OwnedFd {
    // SAFETY: creating and sizing a fresh memfd that we then own.
    unsafe {
        let fd = libc::memfd_create(c"irvmm-interop".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, size), 0);
        OwnedFd::from_raw_fd(fd)
    }
}

fn eventfd() -> OwnedFd {
    // SAFETY: creating a fresh eventfd that we then own.
    unsafe {
        let fd = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
        assert!(fd >= 0);
        OwnedFd::from_raw_fd(fd)
    }
}

fn eventfd_count(fd: RawFd) -> u64 {
    let mut v = [0u8; 8];
    match std::io::Read::read(&mut File::from(fd_dup(fd)), &mut v) {
        Ok(8) => u64::from_ne_bytes(v),
        _ => 0,
    }
}

fn fd_dup(fd: RawFd) -> OwnedFd {
    // SAFETY: duplicating a descriptor we own; the copy is owned by the result.
    unsafe {
        let d = libc::dup(fd);
        assert!(d >= 0);
        OwnedFd::from_raw_fd(d)
    }
}

fn region(index: u32, flags: u32, size: u64, offset: u64) -> vfio_region_info {
    vfio_region_info {
        argsz: 32,
        flags,
        index,
        cap_offset: 0,
        size,
        offset,
    }
}

fn socket_path() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("irvmm-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("dev.sock")
}

#[test]
fn crate_server_interop() {
    let bar0 = memfd(0x10000);
    let rw = REGION_FLAG_READ | REGION_FLAG_WRITE;
    let mut regions = Vec::new();
    for index in 0..9u32 {
        regions.push(match index {
            0 => ServerRegion {
                region_info: region(index, rw | REGION_FLAG_MMAP, BAR0_SIZE, 0x1000),
                sparse_areas: vec![
                    SparseArea {
                        area: vfio_region_sparse_mmap_area {
                            offset: 0,
                            size: 0x1000,
                        },
                    },
                    SparseArea {
                        area: vfio_region_sparse_mmap_area {
                            offset: 0x2000,
                            size: 0x2000,
                        },
                    },
                ],
                mmap_fd: Some(bar0.as_raw_fd()),
            },
            2 => ServerRegion {
                region_info: region(index, rw, BAR2_SIZE as u64, 0),
                sparse_areas: vec![],
                mmap_fd: None,
            },
            7 => ServerRegion {
                region_info: region(index, rw, CONFIG_SIZE as u64, 0),
                sparse_areas: vec![],
                mmap_fd: None,
            },
            _ => ServerRegion {
                region_info: region(index, 0, 0, 0),
                sparse_areas: vec![],
                mmap_fd: None,
            },
        });
    }
    let irqs = [
        (IRQ_INFO_EVENTFD, 1),
        (IRQ_INFO_EVENTFD, 1),
        (IRQ_INFO_EVENTFD, 4),
        (0, 0),
        (0, 0),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(flags, count))| IrqInfo {
        index: i as u32,
        flags,
        count,
    })
    .collect();
    let path = socket_path();
    let _ = std::fs::remove_file(&path);
    let server = Server::new(&path, true, irqs, regions).expect("server");
    let mut device = Device {
        config: (0..CONFIG_SIZE).map(|i| i as u8).collect(),
        bar2: (0..BAR2_SIZE).map(|i| (i * 7) as u8).collect(),
        ..Default::default()
    };
    let thread = std::thread::spawn(move || {
        server.run(&mut device).expect("server run");
        device
    });

    let mut d = VfioUserDevice::connect(&path, Duration::from_secs(10)).expect("connect");
    assert_eq!(d.kind(), BackendKind::User);
    assert_eq!(d.describe(), path.display().to_string());
    assert_eq!(d.max_data_xfer(), 1 << 20);
    assert_eq!(d.max_msg_fds(), 1, "the crate's server takes the default");
    let r0 = d.region(0).unwrap();
    assert_ne!(r0.flags & REGION_FLAG_MMAP, 0);
    assert_eq!(r0.mmap_areas().len(), 2);
    assert_eq!(d.region(7).unwrap().size, CONFIG_SIZE as u64);
    assert_eq!(d.irq(IRQ_MSIX).unwrap().count, 4);

    // Config space and a BAR read split in two at the 1 MiB transfer limit.
    let mut id = [0u8; 4];
    d.region_read(7, 0, &mut id).unwrap();
    assert_eq!(id, [0, 1, 2, 3]);
    d.region_write(7, 0x40, &[0xde, 0xad, 0xbe, 0xef]).unwrap();
    d.region_read(7, 0x40, &mut id).unwrap();
    assert_eq!(id, [0xde, 0xad, 0xbe, 0xef]);
    let mut big = vec![0u8; (3 << 20) / 2];
    d.region_read(2, 0x10, &mut big).unwrap();
    assert!(big
        .iter()
        .enumerate()
        .all(|(i, &b)| b == ((i + 0x10) * 7) as u8));

    // The sparse BAR maps through the server's descriptor at the region's offset.
    let m = d.mmap(0, 0x2000, 0x2000).unwrap();
    assert!(m.write(0x10, &0x1234_5678u32.to_ne_bytes()));
    let mut b = [0u8; 4];
    File::from(fd_dup(bar0.as_raw_fd()))
        .read_exact_at(&mut b, 0x1000 + 0x2000 + 0x10)
        .unwrap();
    assert_eq!(u32::from_ne_bytes(b), 0x1234_5678);
    assert!(
        d.mmap(0, 0x1000, 0x1000).is_err(),
        "the hole is not mappable"
    );

    // DMA: the device reads guest memory through the memfd and writes back.
    let ram = memfd(0x4000);
    let ram_file = File::from(fd_dup(ram.as_raw_fd()));
    ram_file.write_all_at(b"ping", 0x1000).unwrap();
    d.dma_map(&DmaRegion {
        iova: 0x10_0000,
        size: 0x2000,
        host_addr: 0,
        fd: ram.as_raw_fd(),
        fd_offset: 0x1000,
    })
    .unwrap();
    let mut pong = [0u8; 4];
    ram_file.read_exact_at(&mut pong, 0x1008).unwrap();
    assert_eq!(&pong, b"pong");

    // Several eventfds, one per message (the server's max_msg_fds), one skipped.
    let efds: Vec<OwnedFd> = (0..4).map(|_| eventfd()).collect();
    let mut fds: Vec<Option<RawFd>> = efds.iter().map(|e| Some(e.as_raw_fd())).collect();
    fds[1] = None;
    d.set_irq_eventfds(IRQ_MSIX, 0, &fds).unwrap();
    let counts: Vec<u64> = efds.iter().map(|e| eventfd_count(e.as_raw_fd())).collect();
    assert_eq!(
        counts,
        vec![1, 0, 1, 1],
        "the backend signalled each eventfd it got"
    );
    d.disable_irqs(IRQ_MSIX).unwrap();
    d.unmask_intx().unwrap();
    d.reset().unwrap();
    d.dma_unmap(0x10_0000, 0x2000).unwrap();

    // A read the device backend fails: the server answers with an error reply, which is
    // Refused, and the stream stays usable.
    let mut b = [0u8; 4];
    assert!(matches!(
        d.region_read(0, 0, &mut b),
        Err(vfio::BackendError::Refused { .. })
    ));
    d.region_read(7, 0x40, &mut b).unwrap();
    assert_eq!(b, [0xde, 0xad, 0xbe, 0xef]);
    assert!(d.is_connected());
    drop(m);
    drop(d);
    let device = thread.join().expect("server thread");
    assert_eq!(
        device.set_irqs,
        vec![
            (IRQ_MSIX, 0x24, 0, 1, 1),
            (IRQ_MSIX, 0x24, 2, 1, 1),
            (IRQ_MSIX, 0x24, 3, 1, 1),
            (IRQ_MSIX, 0x21, 0, 0, 0),
            (IRQ_INTX, 0x11, 0, 1, 0),
        ]
    );
    assert_eq!(
        device.dma_maps,
        vec![(3, 0x1000, 0x10_0000, 0x2000, *b"ping")]
    );
    assert_eq!(device.dma_unmaps, vec![(0x10_0000, 0x2000)]);
    assert_eq!(device.resets, 1);
    assert_eq!(&device.config[0x40..0x44], &[0xde, 0xad, 0xbe, 0xef]);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
