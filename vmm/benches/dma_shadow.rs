//! Shadowing a passed-through device's DMA mappings from the guest's VT-d DMA remapping:
//! host map and unmap operations per second, and invalidation batches per second, with
//! 1 … 4096 mappings per batch.
//!
//! The guest side is real: a VT-d unit over memfd-backed guest RAM, its register page
//! driven through the MMIO bus device ([`VtdMmio`]) as a vCPU would, a 4-level table in
//! guest memory, translation enabled for one device (00:01.0) in domain 5. One batch is
//! what a Linux guest does in caching mode when it maps (or unmaps) a scatter list of B
//! pages: B leaf entries written, then one page-selective IOTLB invalidation covering them
//! (IVA/IOTLB registers, AM = log2 B), during which irvmm re-walks those pages and issues
//! B host operations. Each round maps B fresh pages then unmaps them (two batches).
//!
//! Host sides:
//! * `null`: a target that only counts (what the VMM's walk, diff and region lookup cost);
//! * `vfio-user`: the project's vfio-user test device server (a separate process that
//!   mmaps each DMA_MAP of the guest RAM memfd and munmaps each DMA_UNMAP), when its binary
//!   is found next to this bench's target dir or in `IRVMM_TESTDEV`; every operation is one
//!   socket round trip. Kernel VFIO (VFIO_IOMMU_MAP_DMA, pinning) needs /dev/vfio and a
//!   device, which the build machines lack.
//!
//!     cargo bench -p vmm --bench dma_shadow

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use devices::BusDevice;
use kvm_ioctls::VmFd;
use vfio::user::VfioUserDevice;
use vfio::{DmaRegion, VfioBackend};
use virtual_iommu::vtd::dma::context::{build as ctx, AW_48};
use virtual_iommu::vtd::dma::walk::build as sl;
use virtual_iommu::vtd::regs::*;
use virtual_iommu::{SourceId, VtdConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::interrupt::InterruptRouter;
use vmm::iommu::shadow::{DmaShadows, DmaTarget};
use vmm::iommu::{Iommu, VtdMmio};

const RAM: u64 = 256 << 20;
const ROOT: u64 = 0x10_0000;
const CONTEXT: u64 = 0x10_1000;
const PML4: u64 = 0x10_2000;
const PDPT: u64 = 0x10_3000;
const PD: u64 = 0x10_4000;
/// Page tables for up to 4096 pages (8 page tables): 0x10_5000..0x10_d000.
const PT: u64 = 0x10_5000;
/// Guest pages the mappings point at.
const DATA: u64 = 0x100_0000;
const IOVA: u64 = 0x40_0000_0000;
const DOMAIN: u16 = 5;
const SID: SourceId = SourceId(0x0008);
const BATCHES: [u64; 7] = [1, 4, 16, 64, 256, 1024, 4096];

/// Counts operations.
#[derive(Default)]
struct Null;

impl DmaTarget for Null {
    fn map(&self, _r: &DmaRegion, _read: bool, _write: bool) -> Result<(), String> {
        Ok(())
    }
    fn unmap(&self, _iova: u64, _size: u64) -> Result<(), String> {
        Ok(())
    }
}

/// A vfio-user device's DMA table.
struct User(Mutex<VfioUserDevice>);

impl DmaTarget for User {
    fn map(&self, r: &DmaRegion, read: bool, write: bool) -> Result<(), String> {
        let mut d = self.0.lock().unwrap();
        d.dma_map_with(r, read, write).map_err(|e| e.to_string())
    }
    fn unmap(&self, iova: u64, size: u64) -> Result<(), String> {
        let mut d = self.0.lock().unwrap();
        d.dma_unmap(iova, size).map_err(|e| e.to_string())
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    shadows: Arc<DmaShadows>,
    mmio: VtdMmio<VmFd>,
}

impl Rig {
    fn new(mem: GuestMemoryMmap, target: Arc<dyn DmaTarget>) -> Rig {
        let iommu = Arc::new(Iommu::new(VtdConfig::default(), mem.clone()));
        let shadows = Arc::new(DmaShadows::new(vmm::passthrough::dma_regions(&mem)));
        shadows.add("bench", SID, target);
        let mmio =
            VtdMmio::new(iommu, Weak::<InterruptRouter<VmFd>>::new()).with_shadows(shadows.clone());
        let mut rig = Rig { mem, shadows, mmio };
        let (lo, hi) = ctx::root(CONTEXT);
        rig.put(ROOT, lo);
        rig.put(ROOT + 8, hi);
        let (lo, hi) = ctx::translated(PML4, AW_48, DOMAIN, false);
        rig.put(CONTEXT + 16 * u64::from(SID.0 & 0xff), lo);
        rig.put(CONTEXT + 16 * u64::from(SID.0 & 0xff) + 8, hi);
        rig.put(PML4 + 8 * sl::index(IOVA, 4), sl::table(PDPT, true, true));
        rig.put(PDPT + 8 * sl::index(IOVA, 3), sl::table(PD, true, true));
        for t in 0..8u64 {
            let iova = IOVA + t * 0x20_0000;
            rig.put(
                PD + 8 * sl::index(iova, 2),
                sl::table(PT + t * 0x1000, true, true),
            );
        }
        rig.write(RTADDR_REG, ROOT, 8);
        rig.write(GCMD_REG, u64::from(GCMD_SRTP), 4);
        rig.write(GCMD_REG, u64::from(GCMD_TE), 4);
        rig
    }

    fn put(&self, gpa: u64, v: u64) {
        self.mem.write_obj(v, GuestAddress(gpa)).unwrap();
    }

    fn write(&mut self, offset: u64, value: u64, len: usize) {
        self.mmio.write(offset, &value.to_le_bytes()[..len]);
    }

    /// Writes the leaves of pages `0..n` (mapped or cleared), then one page-selective
    /// invalidation covering them.
    fn batch(&mut self, n: u64, map: bool) {
        for p in 0..n {
            let iova = IOVA + p * 0x1000;
            let slot = PT + (p / 512) * 0x1000 + 8 * sl::index(iova, 1);
            let v = if map {
                sl::page(DATA + p * 0x1000, true, p % 4 != 0)
            } else {
                0
            };
            self.put(slot, v);
        }
        let am = n.trailing_zeros() as u64;
        self.write(IVA_REG, IOVA | am, 8);
        self.write(
            IOTLB_REG,
            IOTLB_IVT
                | (GRANULARITY_DEVICE_OR_PAGE << IOTLB_IIRG_SHIFT)
                | (u64::from(DOMAIN) << IOTLB_DID_SHIFT),
            8,
        );
    }
}

/// Rounds of map + unmap batches of `n` pages; returns (ops/s, batches/s, µs per batch).
fn measure(rig: &mut Rig, n: u64, min_time: Duration) -> (f64, f64, f64) {
    let before = rig.shadows.stats();
    let start = Instant::now();
    let mut batches = 0u64;
    while start.elapsed() < min_time || batches < 4 {
        rig.batch(n, true);
        rig.batch(n, false);
        batches += 2;
    }
    let secs = start.elapsed().as_secs_f64();
    let after = rig.shadows.stats();
    let ops = (after.maps - before.maps) + (after.unmaps - before.unmaps);
    assert_eq!(after.failures, before.failures, "host operations failed");
    assert_eq!(ops, batches * n, "one host operation per page");
    (
        ops as f64 / secs,
        batches as f64 / secs,
        secs * 1e6 / batches as f64,
    )
}

/// The test device's binary, if built.
fn testdev() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("IRVMM_TESTDEV") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/dma_shadow-... -> target/{release,debug}/vfio-user-testdev
    let target = exe.parent()?.parent()?.parent()?;
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("vfio-user-testdev"))
        .find(|p| p.is_file())
}

fn start_testdev(bin: &PathBuf) -> (Child, PathBuf) {
    let dir = std::env::temp_dir().join(format!("irvmm-dma-shadow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("dev.sock");
    let child = Command::new(bin)
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vfio-user-testdev");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, socket)
}

fn table(name: &str, rig: &mut Rig, min_time: Duration) {
    println!("\n{name}");
    println!(
        "{:>8} {:>14} {:>14} {:>14}",
        "pages/B", "host ops/s", "batches/s", "us/batch"
    );
    for n in BATCHES {
        let (ops, batches, us) = measure(rig, n, min_time);
        println!("{n:>8} {ops:>14.0} {batches:>14.1} {us:>14.1}");
    }
}

fn main() {
    let min_time = Duration::from_millis(
        std::env::var("DMA_SHADOW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    );
    println!(
        "VT-d DMA-remapping shadowing: B leaves written, one page-selective IOTLB invalidation \
         (AM = log2 B), B host operations; rounds of map + unmap (two batches), {} ms per row",
        min_time.as_millis()
    );
    let mem = vmm::memory::create_guest_memory(RAM).expect("guest RAM");
    let mut null = Rig::new(mem, Arc::new(Null));
    table(
        "host side: null (the VMM's walk, diff and region lookup only)",
        &mut null,
        min_time,
    );
    match testdev() {
        Some(bin) => {
            let (mut child, socket) = start_testdev(&bin);
            let mut dev = VfioUserDevice::connect(&socket, Duration::from_secs(2))
                .expect("connect to the test device");
            // All of RAM mapped, as at attach.
            let mem = vmm::memory::create_guest_memory(RAM).expect("guest RAM");
            for r in vmm::passthrough::dma_regions(&mem) {
                dev.dma_map(&r).expect("DMA_MAP of guest RAM");
            }
            let mut rig = Rig::new(mem, Arc::new(User(Mutex::new(dev))));
            assert_eq!(rig.shadows.stats().failures, 0, "switching to translation");
            table(
                "host side: vfio-user test device (DMA_MAP/DMA_UNMAP round trips, server mmap/munmap)",
                &mut rig,
                min_time,
            );
            let _ = child.kill();
            let _ = child.wait();
        }
        None => println!(
            "\nhost side: vfio-user test device: SKIPPED (build it: cargo build --release -p vfio-user-testdev, or set IRVMM_TESTDEV)"
        ),
    }
}
