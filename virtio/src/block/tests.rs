use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{BlockHandler, HEADER_SIZE};
use super::*;
use crate::segments::Segments;

/// A temporary image file, removed on drop.
struct TempImage(PathBuf);

impl TempImage {
    fn new(sectors: u64) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "irvmm-blk-test-{}-{}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let data: Vec<u8> = (0..sectors * 512)
            .map(|i| (i / 512) as u8 ^ (i as u8))
            .collect();
        fs::write(&path, data).unwrap();
        TempImage(path)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x12_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
}

fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
    let mut h = [0u8; HEADER_SIZE];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(HDR)).unwrap();
}

fn handler(img: &TempImage, readonly: bool, serial: Option<&str>) -> BlockHandler {
    let cfg = DiskConfig {
        readonly,
        serial: serial.map(String::from),
        ..DiskConfig::new(&img.0)
    };
    let b = Block::open(&cfg, "blk-test").unwrap();
    BlockHandler::new("blk-test".into(), b.image, b.serial)
}

/// Runs one chain; returns (used length, status byte).
fn run(h: &mut BlockHandler, m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> (u32, u8) {
    m.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    let q = MockSplitQueue::new(m, 16);
    let chain = q.build_desc_chain(descs).unwrap();
    let len = h.execute(Segments::collect(chain), m);
    (len, m.read_obj(GuestAddress(STATUS)).unwrap())
}

fn expected(sector: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let at = sector * 512 + i;
            (at / 512) as u8 ^ (at as u8)
        })
        .collect()
}

#[test]
fn reads_across_descriptors() {
    let img = TempImage::new(64);
    let m = mem();
    let mut h = handler(&img, false, None);
    header(&m, VIRTIO_BLK_T_IN, 3);
    // Header split over two descriptors, data over two, then the status.
    let (len, status) = run(
        &mut h,
        &m,
        &[
            d(HDR, 10, 0),
            d(HDR + 10, 6, 0),
            d(DATA, 512, W),
            d(DATA + 512, 1024, W),
            d(STATUS, 1, W),
        ],
    );
    assert_eq!((len, status), (1537, 0));
    let mut got = vec![0u8; 1536];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, expected(3, 1536));
    assert_eq!(h.stats().ok, 1);
}

#[test]
fn writes_reach_the_image_and_flush() {
    let img = TempImage::new(64);
    let m = mem();
    let mut h = handler(&img, false, None);
    m.write_slice(&[0x5a; 1024], GuestAddress(DATA)).unwrap();
    header(&m, VIRTIO_BLK_T_OUT, 10);
    let (len, status) = run(
        &mut h,
        &m,
        &[d(HDR, 16, 0), d(DATA, 1024, 0), d(STATUS, 1, W)],
    );
    assert_eq!((len, status), (1, 0));
    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(run(&mut h, &m, &[d(HDR, 16, 0), d(STATUS, 1, W)]), (1, 0));
    let file = fs::read(&img.0).unwrap();
    assert!(file[10 * 512..12 * 512].iter().all(|&b| b == 0x5a));
    assert_eq!(&file[12 * 512..13 * 512], &expected(12, 512)[..]);
}

#[test]
fn discard_and_write_zeroes_leave_zeros() {
    let img = TempImage::new(64);
    let m = mem();
    let mut h = handler(&img, false, None);
    let seg = |sector: u64, count: u32, flags: u32| {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&count.to_le_bytes());
        s[12..].copy_from_slice(&flags.to_le_bytes());
        s
    };
    m.write_slice(&seg(8, 8, 0), GuestAddress(DATA)).unwrap();
    header(&m, VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, W)]
        )
        .1,
        0
    );
    m.write_slice(&seg(20, 2, 0), GuestAddress(DATA)).unwrap();
    m.write_slice(&seg(30, 1, 1), GuestAddress(DATA + 16))
        .unwrap();
    header(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(DATA, 32, 0), d(STATUS, 1, W)]
        )
        .1,
        0
    );
    let file = fs::read(&img.0).unwrap();
    for (start, n) in [(8usize, 8usize), (20, 2), (30, 1)] {
        assert!(
            file[start * 512..(start + n) * 512].iter().all(|&b| b == 0),
            "{start}"
        );
    }
    assert_eq!(&file[16 * 512..17 * 512], &expected(16, 512)[..]);
    // Discard takes no flags; unknown write-zeroes flags are unsupported too.
    m.write_slice(&seg(8, 8, 1), GuestAddress(DATA)).unwrap();
    header(&m, VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, W)]
        )
        .1,
        2
    );
    // Past the end.
    m.write_slice(&seg(60, 8, 0), GuestAddress(DATA)).unwrap();
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, W)]
        )
        .1,
        1
    );
    // Not whole segments.
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(DATA, 15, 0), d(STATUS, 1, W)]
        )
        .1,
        1
    );
}

#[test]
fn get_id_returns_the_serial() {
    let img = TempImage::new(8);
    let m = mem();
    let mut h = handler(&img, true, Some("irvmm-disk-7"));
    header(&m, VIRTIO_BLK_T_GET_ID, 0);
    let (len, status) = run(
        &mut h,
        &m,
        &[d(HDR, 16, 0), d(DATA, 20, W), d(STATUS, 1, W)],
    );
    assert_eq!((len, status), (21, 0));
    let mut id = [0u8; 20];
    m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..12], b"irvmm-disk-7");
    assert!(id[12..].iter().all(|&b| b == 0));
}

#[test]
fn bad_requests_fail_with_ioerr_or_unsupp() {
    let img = TempImage::new(16);
    let m = mem();
    let mut h = handler(&img, false, None);
    // Header too short.
    header(&m, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 8, 0), d(DATA, 512, W), d(STATUS, 1, W)]
        ),
        (1, 1)
    );
    // Past the end of the image, and overflowing the sector arithmetic.
    header(&m, VIRTIO_BLK_T_IN, 15);
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(DATA, 1024, W), d(STATUS, 1, W)]
        ),
        (1, 1)
    );
    header(&m, VIRTIO_BLK_T_IN, u64::MAX);
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, W)]
        ),
        (1, 1)
    );
    // Not whole sectors.
    header(&m, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(DATA, 100, W), d(STATUS, 1, W)]
        ),
        (1, 1)
    );
    // Data outside RAM.
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(0x1f_ff00, 512, W), d(STATUS, 1, W)]
        ),
        (1, 1)
    );
    header(&m, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(u64::MAX - 100, 512, 0), d(STATUS, 1, W)]
        ),
        (1, 1)
    );
    // Header outside RAM.
    assert_eq!(
        run(&mut h, &m, &[d(0x40_0000, 16, 0), d(STATUS, 1, W)]),
        (1, 1)
    );
    // Unknown type.
    header(&m, 0x77, 0);
    assert_eq!(run(&mut h, &m, &[d(HDR, 16, 0), d(STATUS, 1, W)]), (1, 2));
    // No status byte at all: nothing to report.
    header(&m, VIRTIO_BLK_T_IN, 0);
    assert_eq!(run(&mut h, &m, &[d(HDR, 16, 0)]).0, 0);
    // Status outside RAM.
    assert_eq!(run(&mut h, &m, &[d(HDR, 16, 0), d(0x40_0000, 1, W)]).0, 0);
    let s = h.stats();
    assert_eq!((s.ioerr, s.unsupp, s.dropped), (7, 1, 2));
}

#[test]
fn read_only_disks_refuse_writes() {
    let img = TempImage::new(16);
    let m = mem();
    let mut h = handler(&img, true, None);
    header(&m, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, W)]
        )
        .1,
        1
    );
    header(&m, VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, W)]
        )
        .1,
        1
    );
    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(run(&mut h, &m, &[d(HDR, 16, 0), d(STATUS, 1, W)]).1, 0);
    assert_eq!(fs::read(&img.0).unwrap()[..512], expected(0, 512)[..]);
}

#[test]
fn opening_checks_the_image_and_locks_it() {
    let img = TempImage::new(8);
    let missing = DiskConfig::new("/nonexistent/irvmm.img");
    assert!(matches!(
        Block::open(&missing, "b"),
        Err(BlockError::Open { .. })
    ));
    let dir = DiskConfig::new(std::env::temp_dir());
    assert!(matches!(
        Block::open(&dir, "b"),
        Err(BlockError::Directory(_))
    ));
    let q0 = DiskConfig {
        queues: 0,
        ..DiskConfig::new(&img.0)
    };
    assert!(matches!(Block::open(&q0, "b"), Err(BlockError::Queues(0))));
    let long = DiskConfig {
        serial: Some("x".repeat(21)),
        ..DiskConfig::new(&img.0)
    };
    assert!(matches!(
        Block::open(&long, "b"),
        Err(BlockError::Serial(_))
    ));

    let writer = Block::open(&DiskConfig::new(&img.0), "b").unwrap();
    assert!(matches!(
        Block::open(&DiskConfig::new(&img.0), "b"),
        Err(BlockError::Locked(_))
    ));
    let ro = DiskConfig {
        readonly: true,
        ..DiskConfig::new(&img.0)
    };
    assert!(matches!(Block::open(&ro, "b"), Err(BlockError::Locked(_))));
    drop(writer);
    let r1 = Block::open(&ro, "b").unwrap();
    let r2 = Block::open(&ro, "b").unwrap();
    assert!(matches!(
        Block::open(&DiskConfig::new(&img.0), "b"),
        Err(BlockError::Locked(_))
    ));
    drop((r1, r2));
}

#[test]
fn direct_io_reads_and_writes() {
    let img = TempImage::new(32);
    let cfg = DiskConfig {
        direct: true,
        ..DiskConfig::new(&img.0)
    };
    let b = match Block::open(&cfg, "b") {
        Ok(b) => b,
        // tmpfs has no O_DIRECT; nothing to test there.
        Err(BlockError::Direct(_)) => return,
        Err(e) => panic!("{e}"),
    };
    assert!(b.image().direct());
    let m = mem();
    let mut h = BlockHandler::new("b".into(), b.image, b.serial);
    m.write_slice(&[0xc3; 4096], GuestAddress(DATA + 100))
        .unwrap();
    header(&m, VIRTIO_BLK_T_OUT, 8);
    // An unaligned guest buffer still works through the bounce buffer.
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(DATA + 100, 4096, 0), d(STATUS, 1, W)]
        )
        .1,
        0
    );
    header(&m, VIRTIO_BLK_T_IN, 8);
    assert_eq!(
        run(
            &mut h,
            &m,
            &[d(HDR, 16, 0), d(DATA + 8192 + 3, 4096, W), d(STATUS, 1, W)]
        )
        .1,
        0
    );
    let mut got = [0u8; 4096];
    m.read_slice(&mut got, GuestAddress(DATA + 8192 + 3))
        .unwrap();
    assert!(got.iter().all(|&b| b == 0xc3));
}

#[test]
fn features_and_config_space() {
    let img = TempImage::new(100);
    let cfg = DiskConfig {
        queues: 4,
        ..DiskConfig::new(&img.0)
    };
    let b = Block::open(&cfg, "b").unwrap();
    let spec = b.spec();
    assert_eq!(spec.queue_sizes, vec![QUEUE_SIZE; 4]);
    assert_eq!(spec.vectors(), 5);
    let f = spec.features;
    for bit in [
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & (1 << bit), 0, "{bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    let c = &spec.config;
    assert_eq!(c.len(), 60);
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 100);
    assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 4);
    assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
    drop(b);
    let ro = DiskConfig {
        readonly: true,
        ..DiskConfig::new(&img.0)
    };
    let f = Block::open(&ro, "b").unwrap().features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_MQ), 0);
}

/// Runs one chain whose addresses are IOVAs, served through `dm`; returns (used length,
/// status byte at the status page's guest-physical address).
fn run_through(
    h: &mut BlockHandler,
    m: &GuestMemoryMmap,
    dm: &crate::memory::DeviceMemory,
    descs: &[RawDescriptor],
) -> (u32, u8) {
    m.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    let q = MockSplitQueue::new(m, 16);
    let chain = q.build_desc_chain(descs).unwrap();
    let len = h.execute(Segments::collect(chain), dm);
    (len, m.read_obj(GuestAddress(STATUS)).unwrap())
}

#[test]
fn requests_through_the_iommu_land_in_the_mapped_pages_and_faults_fail_them() {
    use crate::test_dma::{PageTable, FAULT_READ, FAULT_WRITE, PAGE, R};
    const IOVA_HDR: u64 = 0x7_0000_0000;
    const IOVA_DATA: u64 = 0x7_0001_0000;
    const IOVA_STATUS: u64 = 0x7_0002_0000;
    let img = TempImage::new(64);
    let m = mem();
    let mut h = handler(&img, false, None);
    let table = PageTable::new();
    table.map(IOVA_HDR, HDR, R);
    table.map(IOVA_STATUS, STATUS, crate::test_dma::W);
    // Three IOVA-contiguous data pages in reverse guest-physical order.
    let rw = R | crate::test_dma::W;
    for i in 0..3 {
        table.map(IOVA_DATA + i * PAGE, DATA + (2 - i) * PAGE, rw);
    }
    let dm = table.memory(&m);
    let guard = DATA + 3 * PAGE;
    m.write_slice(&[0x77; 0x1000], GuestAddress(guard)).unwrap();

    // A 12 KiB read in one descriptor reaches the three pages.
    header(&m, VIRTIO_BLK_T_IN, 2);
    let chain = [
        d(IOVA_HDR, 16, 0),
        d(IOVA_DATA, 0x3000, W),
        d(IOVA_STATUS, 1, W),
    ];
    assert_eq!(run_through(&mut h, &m, &dm, &chain), (0x3001, 0));
    let want = expected(2, 0x3000);
    for i in 0..3u64 {
        let mut got = vec![0u8; 0x1000];
        m.read_slice(&mut got, GuestAddress(DATA + (2 - i) * PAGE))
            .unwrap();
        let o = (i * PAGE) as usize;
        assert_eq!(got, want[o..o + 0x1000], "IOVA page {i}");
    }

    // A write from the same buffer reaches the image.
    header(&m, VIRTIO_BLK_T_OUT, 20);
    let chain = [
        d(IOVA_HDR, 16, 0),
        d(IOVA_DATA, 0x3000, 0),
        d(IOVA_STATUS, 1, W),
    ];
    assert_eq!(run_through(&mut h, &m, &dm, &chain), (1, 0));
    let image = fs::read(&img.0).unwrap();
    assert_eq!(image[20 * 512..20 * 512 + 0x3000], want[..]);
    assert_eq!(table.faults(), 0);

    // The middle page unmapped: the read fails with IOERR, the unmapped page and the
    // guard page keep their bytes, the fault names the page.
    table.unmap(IOVA_DATA + PAGE);
    m.write_slice(&[0x55; 0x1000], GuestAddress(DATA + PAGE))
        .unwrap();
    header(&m, VIRTIO_BLK_T_IN, 0);
    let chain = [
        d(IOVA_HDR, 16, 0),
        d(IOVA_DATA, 0x3000, W),
        d(IOVA_STATUS, 1, W),
    ];
    assert_eq!(run_through(&mut h, &m, &dm, &chain), (1, 1));
    assert_eq!(table.last_fault(), Some((FAULT_WRITE, IOVA_DATA + PAGE)));
    let mut page = vec![0u8; 0x1000];
    m.read_slice(&mut page, GuestAddress(DATA + PAGE)).unwrap();
    assert!(page.iter().all(|&b| b == 0x55), "the unmapped page changed");
    m.read_slice(&mut page, GuestAddress(guard)).unwrap();
    assert!(page.iter().all(|&b| b == 0x77), "the guard page changed");

    // A write whose source is unmapped fails too and leaves the image alone.
    header(&m, VIRTIO_BLK_T_OUT, 40);
    let chain = [
        d(IOVA_HDR, 16, 0),
        d(IOVA_DATA, 0x3000, 0),
        d(IOVA_STATUS, 1, W),
    ];
    assert_eq!(run_through(&mut h, &m, &dm, &chain), (1, 1));
    assert_eq!(table.last_fault(), Some((FAULT_READ, IOVA_DATA + PAGE)));
    assert_eq!(
        fs::read(&img.0).unwrap()[40 * 512..44 * 512],
        image[40 * 512..44 * 512]
    );

    // A header that cannot be read is IOERR; a status byte that cannot be written
    // leaves nothing to report.
    table.unmap(IOVA_HDR);
    assert_eq!(run_through(&mut h, &m, &dm, &chain), (1, 1));
    table.map(IOVA_HDR, HDR, R);
    table.unmap(IOVA_STATUS);
    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    let chain = [d(IOVA_HDR, 16, 0), d(IOVA_STATUS, 1, W)];
    assert_eq!(run_through(&mut h, &m, &dm, &chain), (0, 0xee));
    assert_eq!(h.stats().ioerr, 3);
}
