//! The passthrough function against an in-memory device with the test device's layout.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::pci::config::{
    ConfigWriteEffect, PCI_BAR0, PCI_COMMAND, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY, PCI_EXPANSION_ROM, PCI_ROM_BAR_INDEX,
};
use devices::pci::msix::{MSIX_CTRL_ENABLE, MSIX_CTRL_FUNCTION_MASK};
use devices::pci::{MsiSink, PciFunction};
use virtual_iommu::MsiMessage;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::layout::tests::testdev_config;
use super::plan::{MapArea, MsixPlacement, MsixPolicy};
use super::*;
use crate::backend::{BackendKind, IrqInfo, Isolation, RegionInfo, IRQ_INTX, IRQ_MSI, IRQ_MSIX};
use crate::caps::{RegionCaps, SparseArea, REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE};

const BAR_SIZE: u64 = 0x10000;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Read(u32, u64, usize),
    Write(u32, u64, Vec<u8>),
    SetIrqs(u32, usize),
    Disable(u32),
    Unmask,
}

struct FakeDevice {
    config: Vec<u8>,
    bar0: OwnedFd,
    regions: Vec<RegionInfo>,
    calls: Arc<Mutex<Vec<Call>>>,
    isolated: bool,
    broken: Arc<AtomicBool>,
    /// MSI-X interrupts the device reports (default: what its capability says).
    msix_irqs: Option<u32>,
}

fn memfd(size: u64) -> OwnedFd {
    // SAFETY: creating and sizing our own memfd.
    unsafe {
        let fd = libc::memfd_create(c"bar".as_ptr(), 0);
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, size as libc::off_t), 0);
        OwnedFd::from_raw_fd(fd)
    }
}

impl FakeDevice {
    fn new(vectors: u16, isolated: bool, mappable: bool) -> Self {
        let region = |index: u32, size: u64, flags: u32| RegionInfo {
            index,
            flags,
            size,
            caps: RegionCaps::default(),
        };
        let rw = REGION_FLAG_READ | REGION_FLAG_WRITE;
        let mut bar0 = region(0, BAR_SIZE, rw);
        if mappable {
            bar0.flags |= REGION_FLAG_MMAP;
            bar0.caps.sparse = Some(vec![SparseArea {
                offset: 0,
                size: BAR_SIZE,
            }]);
        }
        let mut regions: Vec<RegionInfo> = (0..9).map(|i| region(i, 0, 0)).collect();
        regions[0] = bar0;
        regions[6] = region(6, 0x1000, REGION_FLAG_READ);
        regions[7] = region(7, 256, rw);
        FakeDevice {
            config: testdev_config(vectors),
            bar0: memfd(BAR_SIZE),
            regions,
            calls: Arc::default(),
            isolated,
            broken: Arc::default(),
            msix_irqs: None,
        }
    }

    fn log(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }

    fn check(&self, op: &'static str) -> Result<(), BackendError> {
        if self.broken.load(Ordering::SeqCst) {
            Err(BackendError::Gone)
        } else {
            let _ = op;
            Ok(())
        }
    }
}

impl VfioBackend for FakeDevice {
    fn describe(&self) -> &str {
        "fake"
    }
    fn kind(&self) -> BackendKind {
        BackendKind::User
    }
    fn isolation(&self) -> Isolation {
        Isolation {
            isolated: self.isolated,
            reason: "fake".into(),
        }
    }
    fn region(&self, index: u32) -> Option<&RegionInfo> {
        self.regions.get(index as usize)
    }
    fn irq(&self, index: u32) -> Option<IrqInfo> {
        let vectors =
            u32::from(u16::from_le_bytes([self.config[0x42], self.config[0x43]]) & 0x7ff) + 1;
        let count = match index {
            IRQ_INTX | IRQ_MSI => 1,
            IRQ_MSIX => self.msix_irqs.unwrap_or(vectors),
            _ => 0,
        };
        Some(IrqInfo {
            index,
            flags: 1,
            count,
        })
    }
    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), BackendError> {
        self.check("read")?;
        self.log(Call::Read(index, offset, data.len()));
        match index {
            7 => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
                }
            }
            6 => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = [0x55u8, 0xaa]
                        .get(offset as usize + i)
                        .copied()
                        .unwrap_or(0);
                }
            }
            _ => data.iter_mut().for_each(|b| *b = 0x5a),
        }
        Ok(())
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.check("write")?;
        self.log(Call::Write(index, offset, data.to_vec()));
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
        assert_eq!(index, 0);
        RegionMmap::map(self.bar0.as_raw_fd(), offset, size as usize)
    }
    fn set_irq_eventfds(
        &mut self,
        index: u32,
        _start: u32,
        fds: &[Option<RawFd>],
    ) -> Result<(), BackendError> {
        self.check("set")?;
        self.log(Call::SetIrqs(index, fds.len()));
        Ok(())
    }
    fn disable_irqs(&mut self, index: u32) -> Result<(), BackendError> {
        self.log(Call::Disable(index));
        Ok(())
    }
    fn unmask_intx(&mut self) -> Result<(), BackendError> {
        self.log(Call::Unmask);
        Ok(())
    }
    fn reset(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
    fn dma_map(&mut self, _region: &DmaRegion) -> Result<(), BackendError> {
        Ok(())
    }
    fn dma_unmap(&mut self, _iova: u64, _size: u64) -> Result<(), BackendError> {
        Ok(())
    }
}

#[derive(Default)]
struct Sink {
    routes: Mutex<Vec<(u16, Option<MsiMessage>)>>,
    masks: Mutex<Vec<(u16, bool)>>,
    triggers: Mutex<Vec<u16>>,
}

impl MsiSink for Sink {
    fn set_vector_route(&self, index: u16, msg: Option<MsiMessage>) {
        self.routes.lock().unwrap().push((index, msg));
    }
    fn trigger_vector(&self, index: u16) {
        self.triggers.lock().unwrap().push(index);
    }
    fn set_vectors_masked(&self, changes: &[(u16, bool)]) {
        self.masks.lock().unwrap().extend_from_slice(changes);
    }
}

struct Rig {
    f: VfioPciFunction,
    calls: Arc<Mutex<Vec<Call>>>,
    broken: Arc<AtomicBool>,
    msix: Arc<Sink>,
    msi: Arc<Sink>,
}

fn fds(n: usize) -> Vec<Arc<EventFd>> {
    (0..n)
        .map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
        .collect()
}

impl Rig {
    fn new(policy: MsixPolicy, isolated: bool, mappable: bool) -> Self {
        let dev = FakeDevice::new(256, isolated, mappable);
        let (calls, broken) = (dev.calls.clone(), dev.broken.clone());
        let mut f = VfioPciFunction::open(Box::new(dev), "vfio test".into(), policy).unwrap();
        let (msix, msi) = (Arc::new(Sink::default()), Arc::new(Sink::default()));
        let needs = f.needs();
        f.connect(Interrupts {
            msix: Some(VectorSet {
                sink: msix.clone(),
                fds: fds(usize::from(needs.msix)),
            }),
            msi: Some(VectorSet {
                sink: msi.clone(),
                fds: fds(usize::from(needs.msi)),
            }),
            intx: Some(Arc::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        });
        Rig {
            f,
            calls,
            broken,
            msix,
            msi,
        }
    }

    fn cfg32(&mut self, off: u16) -> u32 {
        let mut b = [0u8; 4];
        self.f.config_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn cfg16(&mut self, off: u16) -> u16 {
        let mut b = [0u8; 2];
        self.f.config_read(off, &mut b);
        u16::from_le_bytes(b)
    }

    fn wcfg32(&mut self, off: u16, v: u32) -> Vec<ConfigWriteEffect> {
        self.f.config_write(off, &v.to_le_bytes())
    }

    fn wcfg16(&mut self, off: u16, v: u16) -> Vec<ConfigWriteEffect> {
        self.f.config_write(off, &v.to_le_bytes())
    }

    fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn bar_w32(&mut self, bar: u8, off: u64, v: u32) {
        self.f.bar_write(bar, off, &v.to_le_bytes());
    }

    fn bar_r32(&mut self, bar: u8, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.f.bar_read(bar, off, &mut b);
        u32::from_le_bytes(b)
    }
}

#[test]
fn relocation_adds_a_bar_and_maps_the_device_bar_whole() {
    let mut r = Rig::new(MsixPolicy::Auto, true, true);
    assert_eq!(
        r.f.msix_decision().placement,
        MsixPlacement::Relocated {
            bar: 2,
            size: 0x2000
        }
    );
    assert_eq!(r.cfg32(0), 0x11ea_1234);
    // BAR0 sizes as the device's 64-bit 64 KiB BAR, BAR2 as the added 8 KiB one.
    r.wcfg32(PCI_BAR0, u32::MAX);
    assert_eq!(r.cfg32(PCI_BAR0), 0xffff_0004);
    r.wcfg32(PCI_BAR0 + 8, u32::MAX);
    assert_eq!(r.cfg32(PCI_BAR0 + 8), 0xffff_e000);
    // The MSI-X capability sits at the device's offset, linked by the device's chain,
    // pointing at BAR 2.
    assert_eq!(r.cfg32(0x40) & 0xffff, 0x5011);
    assert_eq!(r.cfg16(0x42), 255);
    assert_eq!(r.cfg32(0x44), 2);
    assert_eq!(r.cfg32(0x48), 0x1000 | 2);
    // Other capabilities come from the device.
    assert_eq!(r.cfg32(0x68) & 0xff, 0x01);
    let areas: Vec<MapArea> = r.f.mapped_areas().iter().map(|a| a.area).collect();
    assert_eq!(
        areas,
        vec![MapArea {
            bar: 0,
            offset: 0,
            size: BAR_SIZE
        }]
    );
    assert!(r.f.trapped_accesses().is_empty());
}

#[test]
fn msix_enable_programs_the_device_with_the_vmm_eventfds() {
    let mut r = Rig::new(MsixPolicy::Auto, true, true);
    let calls = r.take_calls();
    assert!(
        calls.contains(&Call::SetIrqs(IRQ_INTX, 1)),
        "INTx on at start: {calls:?}"
    );
    assert_eq!(
        r.msix.masks.lock().unwrap().len(),
        256,
        "initial masks announced"
    );
    // Program vector 3 in the relocated table (BAR 2) and unmask it.
    r.bar_w32(2, 3 * 16, 0xfee0_0010);
    r.bar_w32(2, 3 * 16 + 8, 0x41);
    r.bar_w32(2, 3 * 16 + 12, 0);
    r.wcfg16(0x42, MSIX_CTRL_ENABLE);
    let calls = r.take_calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| matches!(c, Call::SetIrqs(..) | Call::Disable(_)))
            .cloned()
            .collect::<Vec<_>>(),
        vec![Call::Disable(IRQ_INTX), Call::SetIrqs(IRQ_MSIX, 256)]
    );
    let routes = r.msix.routes.lock().unwrap().clone();
    assert!(routes
        .iter()
        .any(|&(i, m)| i == 3 && m.is_some_and(|m| m.data == 0x41)));
    assert!(r.msix.masks.lock().unwrap().contains(&(3, false)));
    // A masked fire sets the pending bit; unmasking delivers it once.
    r.bar_w32(2, 3 * 16 + 12, 1);
    r.f.masked_fire(VectorKind::Msix, 3);
    assert_eq!(r.bar_r32(2, 0x1000) & (1 << 3), 1 << 3, "PBA bit set");
    r.bar_w32(2, 3 * 16 + 12, 0);
    assert_eq!(*r.msix.triggers.lock().unwrap(), vec![3]);
    assert_eq!(r.bar_r32(2, 0x1000) & (1 << 3), 0);
    // The function mask masks every unmasked vector at once.
    r.wcfg16(0x42, MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK);
    assert!(r.msix.masks.lock().unwrap().ends_with(&[(3, true)]));
    // Disabling MSI-X brings INTx back.
    r.wcfg16(0x42, 0);
    let calls = r.take_calls();
    assert!(
        calls.ends_with(&[Call::Disable(IRQ_MSIX), Call::SetIrqs(IRQ_INTX, 1)]),
        "{calls:?}"
    );
    assert!(r.msi.routes.lock().unwrap().is_empty());
}

#[test]
fn trap_mode_emulates_the_table_on_its_page_and_forwards_neighbours() {
    let mut r = Rig::new(MsixPolicy::Auto, false, true);
    assert_eq!(r.f.msix_decision().placement, MsixPlacement::Trap);
    assert_eq!(r.cfg32(0x44), 0x800, "table where the device has it");
    r.take_calls();
    // A register on the table's page goes to the device...
    assert_eq!(r.bar_r32(0, 0x8), 0x5a5a_5a5a);
    // ...the table itself is emulated (no device access).
    r.bar_w32(0, 0x800 + 8, 0x42);
    assert_eq!(r.bar_r32(0, 0x800 + 8), 0x42);
    assert_eq!(r.take_calls(), vec![Call::Read(0, 0x8, 4)]);
    assert_eq!(r.f.trapped_accesses().get(&(0, 0)), Some(&3));
    let areas: Vec<MapArea> = r.f.mapped_areas().iter().map(|a| a.area).collect();
    assert_eq!(areas.len(), 2, "table and PBA pages punched out: {areas:?}");
}

#[test]
fn header_rom_and_command_register() {
    let mut r = Rig::new(MsixPolicy::Trap, true, true);
    r.take_calls();
    // The command register is emulated and forwarded whole.
    let fx = r.wcfg16(PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    assert!(fx.contains(&ConfigWriteEffect::DecodeChanged {
        memory: true,
        io: false
    }));
    assert!(r.take_calls().contains(&Call::Write(
        7,
        u64::from(PCI_COMMAND),
        (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
            .to_le_bytes()
            .to_vec()
    )));
    // ROM BAR: sizing, placement, enable, contents through the device's ROM region.
    r.wcfg32(PCI_EXPANSION_ROM, 0xffff_f800);
    assert_eq!(r.cfg32(PCI_EXPANSION_ROM), 0xffff_f000);
    r.wcfg32(PCI_EXPANSION_ROM, 0xd000_0001);
    let rom =
        r.f.bars()
            .into_iter()
            .find(|b| b.index == PCI_ROM_BAR_INDEX)
            .unwrap();
    assert_eq!(
        (rom.address, rom.size, rom.decoding),
        (0xd000_0000, 0x1000, true)
    );
    let mut sig = [0u8; 2];
    r.f.bar_read(PCI_ROM_BAR_INDEX, 0, &mut sig);
    assert_eq!(sig, [0x55, 0xaa]);
    // INTx disable in the command register turns the device's INTx off.
    r.take_calls();
    r.wcfg16(PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_INTX_DISABLE);
    assert!(r.take_calls().contains(&Call::Disable(IRQ_INTX)));
    // The capability pointer and interrupt pin come from the device.
    assert_eq!(r.cfg32(0x34) & 0xff, 0x40);
    assert_eq!((r.cfg32(0x3c) >> 8) & 0xff, 1);
}

#[test]
fn msi_is_emulated_in_place_and_switches_the_device() {
    let mut r = Rig::new(MsixPolicy::Trap, true, true);
    assert_eq!(
        r.cfg32(0x50) & 0xffff,
        0x6805,
        "MSI at the device's offset, device's next"
    );
    r.wcfg32(0x54, 0xfee0_1000);
    r.wcfg32(0x58, 0);
    r.wcfg16(0x5c, 0x45);
    r.take_calls();
    r.wcfg16(0x52, 1);
    let calls = r.take_calls();
    assert!(
        calls.ends_with(&[Call::Disable(IRQ_INTX), Call::SetIrqs(IRQ_MSI, 1)]),
        "{calls:?}"
    );
    let routes = r.msi.routes.lock().unwrap().clone();
    assert_eq!(routes.last().unwrap().1.unwrap().data, 0x45);
}

#[test]
fn a_dead_device_reads_all_ones_and_is_logged_once() {
    let mut r = Rig::new(MsixPolicy::Trap, true, true);
    r.broken.store(true, Ordering::SeqCst);
    assert_eq!(r.bar_r32(0, 0x8), u32::MAX);
    assert_eq!(
        r.cfg32(0x68),
        u32::MAX,
        "device-owned config bytes read all ones"
    );
    assert_eq!(r.cfg32(0), 0x11ea_1234, "emulated identity stays");
    r.bar_w32(0, 0x8, 1);
    r.wcfg32(0x68, 1);
}

#[test]
fn direct_mode_passes_the_capability_through_and_reads_the_mapped_table() {
    let mut r = Rig::new(MsixPolicy::Direct, true, true);
    assert_eq!(r.f.msix_decision().placement, MsixPlacement::Direct);
    let table = r.f.direct_table().unwrap();
    assert_eq!(table.read_message(0), None, "MSI-X disabled");
    // The guest enables MSI-X in the device's own capability.
    r.take_calls();
    r.wcfg16(0x42, MSIX_CTRL_ENABLE);
    let calls = r.take_calls();
    assert!(calls.contains(&Call::Write(
        7,
        0x42,
        MSIX_CTRL_ENABLE.to_le_bytes().to_vec()
    )));
    assert!(calls.contains(&Call::SetIrqs(IRQ_MSIX, 256)), "{calls:?}");
    // It programs the device's table through the mapping; the VMM reads it from there.
    let m = &r.f.mapped_areas()[0].mmap;
    assert!(m.write(0x800 + 16 * 5, &0xfee0_0010u32.to_le_bytes()));
    assert!(m.write(0x800 + 16 * 5 + 8, &0x33u32.to_le_bytes()));
    let msg = table.read_message(5).unwrap();
    assert_eq!((msg.address_lo, msg.data), (0xfee0_0010, 0x33));
    assert!(r.f.needs().msix_direct);
}

#[test]
fn policies_that_cannot_be_met_are_refused() {
    let dev = FakeDevice::new(256, true, false);
    let e = VfioPciFunction::open(Box::new(dev), "x".into(), MsixPolicy::Direct)
        .err()
        .unwrap();
    assert!(e.to_string().contains("msix=direct"), "{e}");
    // A device that reports no MSI-X interrupts for its capability, or 4096.
    for irqs in [0, 4096] {
        let mut dev = FakeDevice::new(256, true, true);
        dev.msix_irqs = Some(irqs);
        let e = VfioPciFunction::open(Box::new(dev), "x".into(), MsixPolicy::Auto)
            .err()
            .unwrap();
        assert!(e.to_string().contains("MSI-X"), "{e}");
    }
}
