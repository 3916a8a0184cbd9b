//! Unit tests of the root bus: configuration mechanism #1, ECAM, function registration,
//! BAR assignment and BAR decoding, driven together through a [`PciRoot`] with the host
//! bridge, a BAR-recording test function and the `edu` devices.

use super::assign::align_up;
use super::*;
use crate::pci::config::{
    BarKind, BarSpace, PciConfigSpace, PciHeader, PCI_BAR0, PCI_CLASS_CODE, PCI_COMMAND,
    PCI_COMMAND_IO, PCI_COMMAND_MEMORY, PCI_INTERRUPT_LINE, PCI_VENDOR_ID,
};
use crate::pci::edu::{EduDevice, EDU_ID_VALUE, EDU_REG_ID};
use crate::pci::testing::RecordingMsiSink;
use crate::pci::PciFunction;
use crate::BusDevice;

/// A function with configurable BARs that records BAR accesses.
struct TestFunction {
    config: PciConfigSpace,
    accesses: Vec<(u8, u64, usize)>,
}

impl TestFunction {
    fn new(device_id: u16, bars: &[(u8, BarKind, u64)]) -> Self {
        let mut config = PciConfigSpace::new(&PciHeader {
            vendor_id: 0x1b36,
            device_id,
            ..PciHeader::default()
        });
        for &(index, kind, size) in bars {
            config.add_bar(index, kind, size, false).unwrap();
        }
        TestFunction {
            config,
            accesses: Vec::new(),
        }
    }

    fn shared(device_id: u16, bars: &[(u8, BarKind, u64)]) -> Arc<Mutex<TestFunction>> {
        Arc::new(Mutex::new(Self::new(device_id, bars)))
    }
}

impl PciFunction for TestFunction {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<ConfigWriteEffect> {
        self.config.write(offset, data)
    }
    fn bars(&self) -> Vec<BarRegion> {
        self.config.bar_regions()
    }
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        self.accesses.push((bar, offset, data.len()));
        data.iter_mut().for_each(|b| *b = bar);
    }
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        self.accesses.push((bar, offset, data.len()));
    }
}

#[derive(Default)]
struct RecordingListener(Mutex<Vec<(PciAddress, ConfigWriteEffect)>>);

impl PciConfigListener for RecordingListener {
    fn config_effect(&self, address: PciAddress, effect: ConfigWriteEffect) {
        self.0.lock().unwrap().push((address, effect));
    }
}

fn addr(device: u8, function: u8) -> PciAddress {
    PciAddress::new(0, device, function).unwrap()
}

fn cf8(bus: u8, device: u8, function: u8, register: u8) -> u32 {
    PCI_CONFIG_ADDRESS_ENABLE
        | (u32::from(bus) << 16)
        | (u32::from(device) << 11)
        | (u32::from(function) << 8)
        | u32::from(register)
}

struct Ports {
    address: PciConfigAddressPort,
    data: PciConfigDataPort,
}

impl Ports {
    fn new(root: &SharedPciRoot) -> Self {
        let address = PciConfigAddressPort::new();
        let data = PciConfigDataPort::new(root.clone(), &address);
        Ports { address, data }
    }

    fn select(&mut self, value: u32) {
        self.address.write(0, &value.to_le_bytes());
    }

    fn read(&mut self, port_offset: u64, len: usize) -> u32 {
        let mut data = vec![0u8; len];
        self.data.read(port_offset, &mut data);
        let mut bytes = [0u8; 4];
        bytes[..len].copy_from_slice(&data);
        u32::from_le_bytes(bytes)
    }
}

fn root_with_test_device() -> (SharedPciRoot, Arc<Mutex<TestFunction>>) {
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let f = TestFunction::shared(0x0005, &[(0, BarKind::Memory32, 0x1000)]);
    root.lock()
        .unwrap()
        .add_function(addr(3, 0), f.clone())
        .unwrap();
    (root, f)
}

#[test]
fn host_bridge_through_cf8() {
    let (root, _) = root_with_test_device();
    let mut ports = Ports::new(&root);
    ports.select(cf8(0, 0, 0, 0));
    assert_eq!(ports.read(0, 4), 0x29c0_8086);
    ports.select(cf8(0, 0, 0, 8));
    assert_eq!(ports.read(0, 4) >> 8, HOST_BRIDGE_CLASS_CODE);
    ports.select(cf8(0, 0, 0, 0x0c));
    assert_eq!(ports.read(2, 1), 0, "single-function header type");
    ports.select(cf8(0, 0, 0, 0x10));
    ports.data.write(0, &u32::MAX.to_le_bytes());
    assert_eq!(ports.read(0, 4), 0, "no BARs");
}

#[test]
fn cf8_byte_offsets_and_access_sizes() {
    let (root, _) = root_with_test_device();
    let mut ports = Ports::new(&root);
    ports.select(cf8(0, 3, 0, 0));
    assert_eq!(ports.read(0, 4), 0x0005_1b36);
    assert_eq!(ports.read(0, 1), 0x36);
    assert_eq!(ports.read(1, 1), 0x1b);
    assert_eq!(ports.read(2, 1), 0x05);
    assert_eq!(ports.read(3, 1), 0x00);
    assert_eq!(ports.read(0, 2), 0x1b36);
    assert_eq!(ports.read(2, 2), 0x0005);
    assert_eq!(ports.read(1, 2), 0x051b, "within the dword");
    // Crossing the dword or past the data ports: all ones.
    assert_eq!(ports.read(3, 2), 0xffff);
    assert_eq!(ports.read(2, 4), u32::MAX);
    assert_eq!(ports.read(4, 1), 0xff);
    // Byte write to the interrupt line at port 0xcfc.
    ports.select(cf8(0, 3, 0, PCI_INTERRUPT_LINE as u8));
    ports.data.write(0, &[0x0b]);
    ports.data.write(1, &[0x55]);
    assert_eq!(ports.read(0, 4), 0x0000_000b);
    // The register field ignores bits 1:0 of CONFIG_ADDRESS.
    ports.select(cf8(0, 3, 0, 0x3f));
    assert_eq!(ports.address.value(), cf8(0, 3, 0, 0x3c));
    assert_eq!(ports.read(0, 1), 0x0b);
}

#[test]
fn cf8_enable_bit_and_missing_functions() {
    let (root, f) = root_with_test_device();
    let mut ports = Ports::new(&root);
    ports.select(cf8(0, 3, 0, 0) & !PCI_CONFIG_ADDRESS_ENABLE);
    assert_eq!(ports.read(0, 4), u32::MAX);
    ports.select(cf8(0, 3, 0, PCI_INTERRUPT_LINE as u8) & !PCI_CONFIG_ADDRESS_ENABLE);
    ports.data.write(0, &[0x0b]);
    assert_eq!(f.lock().unwrap().config.read_u8(PCI_INTERRUPT_LINE), 0);
    for (bus, device, function) in [(0, 4, 0), (0, 3, 1), (1, 3, 0), (0xff, 0, 0)] {
        ports.select(cf8(bus, device, function, 0));
        assert_eq!(ports.read(0, 4), u32::MAX, "{bus}:{device}.{function}");
        ports.data.write(0, &0u32.to_le_bytes());
    }
}

#[test]
fn cf8_address_register() {
    let (root, _) = root_with_test_device();
    let mut ports = Ports::new(&root);
    ports.address.write(0, &u32::MAX.to_le_bytes());
    let mut data = [0u8; 4];
    ports.address.read(0, &mut data);
    assert_eq!(u32::from_le_bytes(data), PCI_CONFIG_ADDRESS_WRITABLE);
    // Narrow accesses and other offsets: all ones, ignored.
    ports.address.write(0, &[0, 0]);
    ports.address.write(1, &0u32.to_le_bytes());
    assert_eq!(ports.address.value(), PCI_CONFIG_ADDRESS_WRITABLE);
    let mut byte = [0u8; 1];
    ports.address.read(0, &mut byte);
    assert_eq!(byte, [0xff]);
    ports.address.read(4, &mut data);
    assert_eq!(data, [0xff; 4]);
}

#[test]
fn ecam_decode() {
    let (root, f) = root_with_test_device();
    let second = TestFunction::shared(0x0006, &[]);
    root.lock()
        .unwrap()
        .add_function(addr(3, 2), second)
        .unwrap();
    let mut ecam = PciEcam::new(root.clone());
    let at =
        |bus: u64, dev: u64, func: u64, reg: u64| (bus << 20) | (dev << 15) | (func << 12) | reg;
    let read = |ecam: &mut PciEcam, offset: u64, len: usize| {
        let mut data = vec![0u8; len];
        ecam.read(offset, &mut data);
        let mut bytes = [0u8; 4];
        bytes[..len.min(4)].copy_from_slice(&data[..len.min(4)]);
        u32::from_le_bytes(bytes)
    };
    assert_eq!(read(&mut ecam, at(0, 0, 0, 0), 4), 0x29c0_8086);
    assert_eq!(read(&mut ecam, at(0, 3, 0, 0), 4), 0x0005_1b36);
    assert_eq!(read(&mut ecam, at(0, 3, 2, 0), 4), 0x0006_1b36);
    assert_eq!(read(&mut ecam, at(0, 3, 0, 2), 2), 0x0005);
    assert_eq!(read(&mut ecam, at(0, 3, 0, 1), 1), 0x1b);
    // Multi-function bit on function 0 only.
    let header = at(0, 3, 0, u64::from(PCI_HEADER_TYPE));
    assert_eq!(read(&mut ecam, header, 1), 0x80);
    assert_eq!(read(&mut ecam, at(0, 3, 0, 0x0c), 4) >> 16, 0x80);
    assert_eq!(read(&mut ecam, at(0, 3, 2, 0x0e), 1), 0);
    assert_eq!(read(&mut ecam, at(0, 0, 0, 0x0e), 1), 0);
    // Extended space is reachable through ECAM.
    assert_eq!(read(&mut ecam, at(0, 3, 0, 0x100), 4), 0);
    assert_eq!(read(&mut ecam, at(0, 3, 0, 0xffc), 4), 0);
    // Writes land in the right function.
    let line = u64::from(PCI_INTERRUPT_LINE);
    ecam.write(at(0, 3, 0, line), &[0x0a]);
    assert_eq!(f.lock().unwrap().config.read_u8(PCI_INTERRUPT_LINE), 0x0a);
    // Other buses, missing devices, the end of the window, bad sizes: all ones.
    for offset in [
        at(1, 3, 0, 0),
        at(0xff, 31, 7, 0),
        at(0, 4, 0, 0),
        at(0, 31, 7, 0xffc),
        PCI_ECAM_SIZE,
        u64::MAX,
    ] {
        assert_eq!(read(&mut ecam, offset, 4), u32::MAX, "{offset:#x}");
        ecam.write(offset, &0u32.to_le_bytes());
    }
    let mut wide = [0u8; 8];
    ecam.read(at(0, 3, 0, 0), &mut wide);
    assert_eq!(wide, [0xff; 8]);
    assert_eq!(read(&mut ecam, at(0, 3, 0, 2), 4), u32::MAX, "unaligned");
    assert_eq!(read(&mut ecam, at(0, 3, 0, 0), 0), 0);
}

#[test]
fn add_function_errors_and_free_device() {
    let (root, _) = root_with_test_device();
    let mut root = root.lock().unwrap();
    let f = TestFunction::shared(1, &[]);
    assert_eq!(
        root.add_function(addr(3, 0), f.clone()),
        Err(PciError::AddressInUse(addr(3, 0)))
    );
    assert_eq!(
        root.add_function(PciAddress::new(1, 0, 0).unwrap(), f.clone()),
        Err(PciError::NoSuchBus(1))
    );
    assert!(PciAddress::new(0, 32, 0).is_err());
    assert!(PciAddress::new(0, 0, 8).is_err());
    assert_eq!(root.free_device(), Some(1));
    assert_eq!(root.addresses(), vec![addr(0, 0), addr(3, 0)]);
    assert_eq!(addr(3, 0).source_id().0, 0x18);
    assert_eq!(format!("{}", addr(3, 2)), "00:03.2");
    assert!(root.function(addr(3, 0)).is_some());
    assert!(root.function(addr(4, 0)).is_none());
}

#[test]
fn assign_bars_places_programs_and_enables() {
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let listener = Arc::new(RecordingListener::default());
    let edu = Arc::new(Mutex::new(EduDevice::new(RecordingMsiSink::new()).unwrap()));
    let edu_msix = Arc::new(Mutex::new(
        EduDevice::new_msix(RecordingMsiSink::new()).unwrap(),
    ));
    let io = TestFunction::shared(
        7,
        &[
            (0, BarKind::Io, 0x20),
            (1, BarKind::Memory32, 0x100),
            (2, BarKind::Io, 0x100),
        ],
    );
    {
        let mut r = root.lock().unwrap();
        r.set_listener(listener.clone());
        r.add_function(addr(3, 0), edu.clone()).unwrap();
        r.add_function(addr(4, 0), edu_msix.clone()).unwrap();
        r.add_function(addr(5, 0), io.clone()).unwrap();
    }
    let assignments = root
        .lock()
        .unwrap()
        .assign_bars(PciWindow::MMIO32, Some(PciWindow::IO))
        .unwrap();
    let find = |a: PciAddress, bar: u8| {
        assignments
            .iter()
            .find(|x| x.address == a && x.bar == bar)
            .copied()
            .unwrap()
    };
    assert_eq!(assignments.len(), 6);
    assert_eq!(find(addr(3, 0), 0).base, 0xc000_0000);
    assert_eq!(find(addr(4, 0), 0).base, 0xc010_0000);
    assert_eq!(find(addr(4, 0), 2).base, 0xc020_0000);
    assert_eq!(find(addr(4, 0), 2).kind, BarKind::Memory64);
    assert_eq!(find(addr(5, 0), 1).base, 0xc020_2000, "page aligned");
    assert_eq!(find(addr(5, 0), 2).base, 0xc000);
    assert_eq!(find(addr(5, 0), 0).base, 0xc100);
    for a in &assignments {
        assert_eq!(a.base % a.size, 0);
    }
    // Programmed and decoding.
    let bars = edu_msix.lock().unwrap().bars();
    assert!(bars.iter().all(|b| b.decoding));
    assert_eq!(bars[1].address, 0xc020_0000);
    let mut cmd = [0u8; 2];
    root.lock()
        .unwrap()
        .config_read(addr(5, 0), PCI_COMMAND, &mut cmd);
    assert_eq!(u16::from_le_bytes(cmd), PCI_COMMAND_MEMORY | PCI_COMMAND_IO);
    root.lock()
        .unwrap()
        .config_read(addr(3, 0), PCI_COMMAND, &mut cmd);
    assert_eq!(u16::from_le_bytes(cmd), PCI_COMMAND_MEMORY);
    // The listener saw every move and decode change.
    let events = listener.0.lock().unwrap().clone();
    assert!(events.contains(&(
        addr(4, 0),
        ConfigWriteEffect::BarMoved {
            bar: 2,
            old: 0,
            new: 0xc020_0000
        }
    )));
    assert!(events.contains(&(
        addr(5, 0),
        ConfigWriteEffect::DecodeChanged {
            memory: true,
            io: true
        }
    )));
    // The windows decode the BARs.
    let mut mmio = PciBarWindow::new(root.clone(), BarSpace::Memory, PCI_MMIO32_BASE);
    let mut data = [0u8; 4];
    mmio.read(EDU_REG_ID, &mut data);
    assert_eq!(u32::from_le_bytes(data), EDU_ID_VALUE);
    let mut pio = PciBarWindow::new(root.clone(), BarSpace::Io, PCI_IO_BASE);
    pio.read(0x104, &mut data);
    assert_eq!(data, [0; 4]);
    pio.write(0x10, &[1, 2]);
    assert_eq!(io.lock().unwrap().accesses, vec![(0, 4, 4), (2, 0x10, 2)]);
}

#[test]
fn assign_bars_reports_exhaustion() {
    let root = PciRoot::new();
    let mut root = root;
    let f = TestFunction::shared(1, &[(0, BarKind::Memory32, 0x10_0000), (1, BarKind::Io, 4)]);
    root.add_function(addr(1, 0), f).unwrap();
    let small = PciWindow {
        base: 0xc000_0000,
        size: 0x8_0000,
    };
    assert!(matches!(
        root.assign_bars(small, Some(PciWindow::IO)),
        Err(PciError::WindowExhausted {
            bar: 0,
            space: BarSpace::Memory,
            ..
        })
    ));
    assert!(matches!(
        root.assign_bars(PciWindow::MMIO32, None),
        Err(PciError::WindowExhausted {
            bar: 1,
            space: BarSpace::Io,
            ..
        })
    ));
    let unaligned = PciWindow {
        base: 0xc008_0000,
        size: 0x10_0000,
    };
    assert!(root.assign_bars(unaligned, Some(PciWindow::IO)).is_err());
    let top = PciWindow {
        base: u64::MAX - 0xfff,
        size: 0x1000,
    };
    assert!(root.assign_bars(top, Some(PciWindow::IO)).is_err());
    assert!(root
        .assign_bars(PciWindow::MMIO32, Some(PciWindow::IO))
        .is_ok());
}

#[test]
fn bar_window_follows_guest_programming() {
    let (root, f) = root_with_test_device();
    let mut window = PciBarWindow::new(root.clone(), BarSpace::Memory, PCI_MMIO32_BASE);
    let mut ports = Ports::new(&root);
    // BAR 0 at 0xc000_3000, decoding still off: nothing answers.
    ports.select(cf8(0, 3, 0, PCI_BAR0 as u8));
    ports.data.write(0, &0xc000_3000u32.to_le_bytes());
    let mut data = [0u8; 4];
    window.read(0x3000, &mut data);
    assert_eq!(data, [0xff; 4]);
    ports.select(cf8(0, 3, 0, PCI_COMMAND as u8));
    ports.data.write(0, &PCI_COMMAND_MEMORY.to_le_bytes());
    window.read(0x3ffc, &mut data);
    assert_eq!(data, [0; 4]);
    // Straddling the BAR's end or outside it: all ones.
    window.read(0x3ffe, &mut data);
    assert_eq!(data, [0xff; 4]);
    window.read(0x4000, &mut data);
    assert_eq!(data, [0xff; 4]);
    window.read(u64::MAX, &mut data);
    assert_eq!(data, [0xff; 4]);
    // The guest moves the BAR: the window follows.
    ports.select(cf8(0, 3, 0, PCI_BAR0 as u8));
    ports.data.write(0, &0xc100_0000u32.to_le_bytes());
    window.write(0x100_0010, &[0; 8]);
    window.read(0x3000, &mut data);
    assert_eq!(data, [0xff; 4]);
    assert_eq!(
        f.lock().unwrap().accesses,
        vec![(0, 0xffc, 4), (0, 0x10, 8)]
    );
    // An I/O window does not decode memory BARs.
    let mut pio = PciBarWindow::new(root.clone(), BarSpace::Io, 0);
    pio.read(0xc100_0000, &mut data);
    assert_eq!(data, [0xff; 4]);
}

#[test]
fn config_access_validation() {
    assert!(config_access_ok(0, 4));
    assert!(config_access_ok(0xffc, 4));
    assert!(config_access_ok(0xfff, 1));
    assert!(config_access_ok(1, 2));
    assert!(!config_access_ok(3, 2));
    assert!(!config_access_ok(0, 0));
    assert!(!config_access_ok(0, 8));
    assert!(!config_access_ok(0x1000, 1));
    assert_eq!(align_up(0x1001, 0x1000), Some(0x2000));
    assert_eq!(align_up(u64::MAX, 0x1000), None);
    assert_eq!(align_up(5, 0), None);
    // Reading the class code through the root.
    let mut root = PciRoot::new();
    let mut data = [0u8; 4];
    root.config_read(addr(0, 0), PCI_CLASS_CODE - 1, &mut data);
    assert_eq!(u32::from_le_bytes(data) >> 8, HOST_BRIDGE_CLASS_CODE);
    root.config_read(addr(0, 0), PCI_VENDOR_ID, &mut data[..2]);
    assert_eq!(&data[..2], &[0x86, 0x80]);
}
