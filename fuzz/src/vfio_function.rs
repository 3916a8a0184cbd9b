//! The `vfio_function` harness: a passed-through PCI function (`vfio::VfioPciFunction`) over
//! a fake device whose shape the fuzzer chooses (configuration bytes, MSI-X vector count,
//! table and PBA placement, BAR size, mappability, MSI isolation, the user's `msix=`), then
//! driven by guest configuration and BAR accesses of any offset and size, masked-vector
//! fires from the VMM's watcher, INTx EOIs and a device that dies half-way.
//!
//! Invariants asserted (by the checking sinks and after every operation):
//!
//! * no panic, whatever the device's layout or the guest's accesses; a layout irvmm cannot
//!   present is refused at open, never half-built;
//! * sinks only hear of vectors below the device's vector count, routes are raw interrupt
//!   messages (a 32-bit address in the `0xfee` window), deliveries only of routed vectors;
//! * the device is asked to signal at most as many vectors as it has, on IRQ indices that
//!   exist, and at most one of INTx, MSI and MSI-X is enabled at a time;
//! * the guest-visible vendor and device IDs never change;
//! * accesses past a BAR read all ones; a dead device reads all ones where the device
//!   answers, and the emulated identity stays.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::pci::config::{PCI_BAR0, PCI_COMMAND, PCI_VENDOR_ID};
use devices::pci::{MsiSink, PciFunction};
use vfio::backend::{
    BackendError, BackendKind, DmaRegion, IrqInfo, Isolation, RegionInfo, RegionMmap, VfioBackend,
};
use vfio::caps::{RegionCaps, SparseArea, REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE};
use vfio::function::plan::MsixPolicy;
use vfio::function::VectorKind;
use vfio::{Interrupts, VectorSet, VfioPciFunction};
use virtual_iommu::msi::MsiMessage;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{access_size, assert_raw_interrupt, fuzz_type, value_bytes};

fuzz_type! {
    /// One byte of configuration space overwritten.
    pub struct Patch {
        /// Offset (below 0x34 ignored: the header stays sane enough to open).
        pub offset: u8,
        /// Value.
        pub value: u8,
    }
}

fuzz_type! {
    /// The device's shape.
    pub struct Shape {
        /// MSI-X table size field (vectors − 1, 11 bits) and what the device reports.
        pub msix_field: u16,
        /// MSI-X interrupts the device reports (0: take the capability's count).
        pub msix_irqs: u16,
        /// Table offset/BIR and PBA offset/BIR registers.
        pub table: u32,
        /// PBA offset/BIR.
        pub pba: u32,
        /// log2 of BAR0's size (clamped to 4..=20).
        pub bar_log: u8,
        /// BAR0's type bits (I/O, 32- or 64-bit).
        pub bar_flags: u8,
        /// BAR0 offered mappable whole.
        pub mappable: bool,
        /// The host isolates MSIs.
        pub isolated: bool,
        /// `msix=` (auto, relocate, trap, direct).
        pub policy: u8,
        /// Byte patches applied to the capability area 0x34..0x100.
        pub patches: Vec<Patch>,
    }
}

fuzz_type! {
    /// One event.
    pub enum Op {
        /// A configuration access.
        Config { offset: u16, size: u8, value: u32, write: bool },
        /// A BAR access (index 0..=6; 6 is the ROM).
        Bar { bar: u8, offset: u32, size: u8, value: u64, write: bool },
        /// The VMM's watcher saw a masked vector fire.
        MaskedFire { msix: bool, index: u16 },
        /// The guest ended INTx.
        IntxEoi {},
        /// The device dies (every later call fails).
        Die {},
    }
}

fuzz_type! {
    /// A whole run.
    pub struct Input {
        /// The device.
        pub shape: Shape,
        /// What happens to it.
        pub ops: Vec<Op>,
    }
}

/// The test device's configuration space (see `tests/vfio-user-testdev`).
fn base_config(shape: &Shape) -> Vec<u8> {
    let mut c = vec![0u8; 256];
    let mut put = |o: usize, b: &[u8]| c[o..o + b.len()].copy_from_slice(b);
    put(0, &0x1234u16.to_le_bytes());
    put(2, &0x11eau16.to_le_bytes());
    put(6, &0x10u16.to_le_bytes());
    put(8, &0x00ff_0001u32.to_le_bytes());
    put(0x10, &u32::from(shape.bar_flags & 0x7).to_le_bytes());
    put(0x34, &[0x40]);
    put(0x3d, &[1]);
    put(0x40, &[0x11, 0x50]);
    put(0x42, &(shape.msix_field & 0x7ff).to_le_bytes());
    put(0x44, &shape.table.to_le_bytes());
    put(0x48, &shape.pba.to_le_bytes());
    put(0x50, &[0x05, 0x68]);
    put(0x52, &0x0180u16.to_le_bytes());
    put(0x68, &[0x01, 0x00]);
    for p in &shape.patches {
        if p.offset >= 0x34 {
            c[usize::from(p.offset)] = p.value;
        }
    }
    c
}

/// What the checks need to know of the device's calls.
#[derive(Default)]
struct DeviceLog {
    /// IRQ index → eventfds set.
    enabled: [usize; 3],
    dead: bool,
}

struct FakeDevice {
    config: Vec<u8>,
    bar: OwnedFd,
    regions: Vec<RegionInfo>,
    irqs: [u32; 3],
    isolated: bool,
    log: Arc<Mutex<DeviceLog>>,
}

fn memfd(size: u64) -> Option<OwnedFd> {
    // SAFETY: creating and sizing our own memfd; the result is checked.
    unsafe {
        let fd = libc::memfd_create(c"fuzz-bar".as_ptr(), 0);
        if fd < 0 {
            return None;
        }
        let owned = OwnedFd::from_raw_fd(fd);
        (libc::ftruncate(fd, size as libc::off_t) == 0).then_some(owned)
    }
}

impl FakeDevice {
    fn check(&self) -> Result<(), BackendError> {
        if self.log.lock().map(|l| l.dead).unwrap_or(true) {
            Err(BackendError::Gone)
        } else {
            Ok(())
        }
    }

    fn in_region(&self, index: u32, offset: u64, len: usize) -> Result<(), BackendError> {
        let size = self
            .regions
            .get(index as usize)
            .map(|r| r.size)
            .unwrap_or(0);
        if offset.checked_add(len as u64).is_some_and(|e| e <= size) {
            Ok(())
        } else {
            Err(BackendError::Invalid {
                op: "region access",
                what: format!("{index}:{offset:#x}+{len}"),
            })
        }
    }
}

impl VfioBackend for FakeDevice {
    fn describe(&self) -> &str {
        "fuzz"
    }
    fn kind(&self) -> BackendKind {
        BackendKind::User
    }
    fn isolation(&self) -> Isolation {
        Isolation {
            isolated: self.isolated,
            reason: "fuzz".into(),
        }
    }
    fn region(&self, index: u32) -> Option<&RegionInfo> {
        self.regions.get(index as usize)
    }
    fn irq(&self, index: u32) -> Option<IrqInfo> {
        Some(IrqInfo {
            index,
            flags: 1,
            count: self.irqs.get(index as usize).copied().unwrap_or(0),
        })
    }
    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), BackendError> {
        self.check()?;
        self.in_region(index, offset, data.len())?;
        for (i, b) in data.iter_mut().enumerate() {
            *b = match index {
                7 => self.config.get(offset as usize + i).copied().unwrap_or(0),
                _ => 0x5a,
            };
        }
        Ok(())
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.check()?;
        self.in_region(index, offset, data.len())?;
        if index == 7 {
            for (i, b) in data.iter().enumerate() {
                if let Some(c) = self.config.get_mut(offset as usize + i) {
                    *c = *b;
                }
            }
        }
        Ok(())
    }
    fn mmap(&self, index: u32, offset: u64, size: u64) -> Result<RegionMmap, BackendError> {
        assert_eq!(index, 0, "only BAR0 is mappable");
        self.in_region(index, offset, size as usize)?;
        RegionMmap::map(self.bar.as_raw_fd(), offset, size as usize)
    }
    fn set_irq_eventfds(
        &mut self,
        index: u32,
        start: u32,
        fds: &[Option<RawFd>],
    ) -> Result<(), BackendError> {
        self.check()?;
        let count = self.irqs.get(index as usize).copied().unwrap_or(0);
        assert!(
            u64::from(start) + fds.len() as u64 <= u64::from(count),
            "device asked to signal {start}+{} of {count} interrupts at index {index}",
            fds.len()
        );
        let mut log = self.log.lock().map_err(|_| BackendError::Gone)?;
        let others = (0..3)
            .filter(|i| *i != index as usize)
            .map(|i| log.enabled[i])
            .sum::<usize>();
        assert_eq!(others, 0, "two interrupt kinds enabled at once");
        log.enabled[index as usize] = fds.len();
        Ok(())
    }
    fn disable_irqs(&mut self, index: u32) -> Result<(), BackendError> {
        if let (Ok(mut log), Some(slot)) = (self.log.lock(), [0usize, 1, 2].get(index as usize)) {
            log.enabled[*slot] = 0;
        }
        self.check()
    }
    fn unmask_intx(&mut self) -> Result<(), BackendError> {
        self.check()
    }
    fn reset(&mut self) -> Result<(), BackendError> {
        self.check()
    }
    fn dma_map(&mut self, _region: &DmaRegion) -> Result<(), BackendError> {
        self.check()
    }
    fn dma_unmap(&mut self, _iova: u64, _size: u64) -> Result<(), BackendError> {
        self.check()
    }
}

/// A sink checking what the function tells the VMM.
struct Sink {
    vectors: u16,
    routes: Mutex<Vec<Option<MsiMessage>>>,
}

impl MsiSink for Sink {
    fn set_vector_route(&self, index: u16, msg: Option<MsiMessage>) {
        assert!(
            index < self.vectors,
            "route for vector {index} of {}",
            self.vectors
        );
        if let Some(m) = &msg {
            assert_raw_interrupt(m, "passthrough");
        }
        if let Ok(mut r) = self.routes.lock() {
            r[usize::from(index)] = msg;
        }
    }
    fn trigger_vector(&self, index: u16) {
        assert!(
            index < self.vectors,
            "delivery of vector {index} of {}",
            self.vectors
        );
        let routed = self.routes.lock().map(|r| r[usize::from(index)].is_some());
        assert!(
            routed.unwrap_or(true),
            "vector {index} delivered without a route"
        );
    }
    fn set_vectors_masked(&self, changes: &[(u16, bool)]) {
        for (i, _) in changes {
            assert!(*i < self.vectors, "mask of vector {i} of {}", self.vectors);
        }
    }
}

fn vectors(n: u16) -> Option<(Arc<Sink>, VectorSet)> {
    if n == 0 {
        return None;
    }
    let sink = Arc::new(Sink {
        vectors: n,
        routes: Mutex::new(vec![None; usize::from(n)]),
    });
    let fds = (0..n)
        .filter_map(|_| EventFd::new(EFD_NONBLOCK).ok().map(Arc::new))
        .collect();
    let set = VectorSet {
        sink: sink.clone(),
        fds,
    };
    Some((sink, set))
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(input) = <Input as arbitrary::Arbitrary>::arbitrary(&mut u) else {
        return;
    };
    let shape = &input.shape;
    let bar_size = 1u64 << shape.bar_log.clamp(4, 20);
    let Some(bar) = memfd(bar_size) else { return };
    let mut bar0 = RegionInfo {
        index: 0,
        flags: REGION_FLAG_READ | REGION_FLAG_WRITE,
        size: bar_size,
        caps: RegionCaps::default(),
    };
    if shape.mappable {
        bar0.flags |= REGION_FLAG_MMAP;
        bar0.caps.sparse = Some(vec![SparseArea {
            offset: 0,
            size: bar_size,
        }]);
    }
    let mut regions: Vec<RegionInfo> = (0..9)
        .map(|index| RegionInfo {
            index,
            ..RegionInfo::default()
        })
        .collect();
    regions[0] = bar0;
    regions[6].size = 0x1000;
    regions[6].flags = REGION_FLAG_READ;
    regions[7].size = 256;
    regions[7].flags = REGION_FLAG_READ | REGION_FLAG_WRITE;
    let cap_vectors = u32::from(shape.msix_field & 0x7ff) + 1;
    let irqs = [
        1,
        1,
        if shape.msix_irqs == 0 {
            cap_vectors
        } else {
            u32::from(shape.msix_irqs)
        },
    ];
    let log = Arc::new(Mutex::new(DeviceLog::default()));
    let device = FakeDevice {
        config: base_config(shape),
        bar,
        regions,
        irqs,
        isolated: shape.isolated,
        log: log.clone(),
    };
    let policy = match shape.policy % 4 {
        0 => MsixPolicy::Auto,
        1 => MsixPolicy::Relocate,
        2 => MsixPolicy::Trap,
        _ => MsixPolicy::Direct,
    };
    // A layout irvmm cannot present is refused here, cleanly.
    let Ok(mut f) = VfioPciFunction::open(Box::new(device), "fuzz".into(), policy) else {
        return;
    };
    let needs = f.needs();
    let msix = vectors(needs.msix);
    let msi = vectors(needs.msi);
    f.connect(Interrupts {
        msix: msix.map(|(_, s)| s),
        msi: msi.map(|(_, s)| s),
        intx: EventFd::new(EFD_NONBLOCK).ok().map(Arc::new),
    });
    let mut id = [0u8; 4];
    f.config_read(PCI_VENDOR_ID, &mut id);
    for op in input.ops {
        match op {
            Op::Config {
                offset,
                size,
                value,
                write,
            } => {
                let len = access_size(size).min(4);
                let offset = offset % 0x1000;
                // The root only forwards accesses inside one dword.
                if len == 0 || usize::from(offset % 4) + len > 4 {
                    continue;
                }
                if write {
                    f.config_write(offset, &value_bytes(u64::from(value), len));
                } else {
                    let mut b = vec![0u8; len];
                    f.config_read(offset, &mut b);
                }
            }
            Op::Bar {
                bar,
                offset,
                size,
                value,
                write,
            } => {
                let len = access_size(size);
                let bar = bar % 7;
                if write {
                    f.bar_write(bar, u64::from(offset), &value_bytes(value, len));
                } else {
                    let mut b = vec![0u8; len];
                    f.bar_read(bar, u64::from(offset), &mut b);
                    let past = u64::from(offset) + len as u64 > bar_size.max(0x10_0000);
                    if past && bar == 0 {
                        assert!(b.iter().all(|x| *x == 0xff), "read past BAR0: {b:x?}");
                    }
                }
            }
            Op::MaskedFire { msix, index } => {
                let (kind, n) = if msix {
                    (VectorKind::Msix, needs.msix)
                } else {
                    (VectorKind::Msi, needs.msi)
                };
                if n > 0 {
                    f.masked_fire(kind, index % n);
                }
            }
            Op::IntxEoi {} => f.intx_eoi(),
            Op::Die {} => {
                if let Ok(mut l) = log.lock() {
                    l.dead = true;
                }
            }
        }
        let mut now = [0u8; 4];
        f.config_read(PCI_VENDOR_ID, &mut now);
        assert_eq!(now, id, "the guest-visible identity changed");
    }
    // The emulated BAR registers still size sanely.
    f.config_write(PCI_BAR0, &[0xff; 4]);
    let mut b = [0u8; 4];
    f.config_read(PCI_BAR0, &mut b);
    f.config_write(PCI_COMMAND, &[0, 0]);
}

/// Seeds: the test device in each placement, with a guest enabling MSI-X and MSI.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::Encode;
    let shape = |policy: u8, isolated: bool, mappable: bool| Shape {
        msix_field: 255,
        msix_irqs: 0,
        table: 0x800,
        pba: 0x9000,
        bar_log: 16,
        bar_flags: 4,
        mappable,
        isolated,
        policy,
        patches: Vec::new(),
    };
    let ops = vec![
        Op::Config {
            offset: 4,
            size: 1,
            value: 0x6,
            write: true,
        },
        Op::Bar {
            bar: 2,
            offset: 0x30,
            size: 2,
            value: 0xfee0_0010,
            write: true,
        },
        Op::Bar {
            bar: 2,
            offset: 0x3c,
            size: 2,
            value: 0,
            write: true,
        },
        Op::Config {
            offset: 0x42,
            size: 1,
            value: 0x8000,
            write: true,
        },
        Op::MaskedFire {
            msix: true,
            index: 3,
        },
        Op::Bar {
            bar: 0,
            offset: 0x808,
            size: 2,
            value: 0x41,
            write: true,
        },
        Op::Config {
            offset: 0x52,
            size: 1,
            value: 1,
            write: true,
        },
        Op::IntxEoi {},
        Op::Die {},
        Op::Bar {
            bar: 0,
            offset: 0x8,
            size: 2,
            value: 0,
            write: false,
        },
    ];
    [
        ("relocate", shape(0, true, true)),
        ("trap", shape(2, false, true)),
        ("direct", shape(3, true, true)),
        ("unmappable", shape(0, true, false)),
    ]
    .into_iter()
    .map(|(name, shape)| {
        (
            name,
            Input {
                shape,
                ops: ops.clone(),
            }
            .to_bytes(),
        )
    })
    .collect()
}
