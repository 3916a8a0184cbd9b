//! The `pci_config` harness: PCI segment 0 as the VMM wires it (host bridge at 00:00.0,
//! `edu` with MSI at 00:03.0, the MSI-X variant at 00:04.0 and a second `edu` at 00:04.1
//! to make device 4 multi-function), reached through configuration mechanism #1
//! (ports 0xcf8/0xcfc), ECAM, and the MMIO and I/O BAR windows.
//!
//! Invariants asserted (by the mock [`MsiSink`]s and after every operation):
//!
//! * no panic, whatever the port, offset, size or value;
//! * a sink only hears of vectors below its function's vector count (1 for MSI, 256 for
//!   MSI-X), and only delivers vectors that have a route;
//! * every route is a raw interrupt message (a 32-bit address in the `0xfee` window):
//!   anything else is a memory write, not an interrupt;
//! * the sink's routes equal what the function's MSI/MSI-X capability says it gave it;
//! * the read-only identity (vendor and device IDs) never changes;
//! * a function that does not exist reads as all ones through both access mechanisms.

use std::sync::{Arc, Mutex};

use devices::pci::bus::{PCI_IO_BASE, PCI_MMIO32_BASE};
use devices::pci::config::{BarSpace, PCI_COMMAND};
use devices::pci::msi::{MSI_ADDRESS_HI, MSI_ADDRESS_LO, MSI_CONTROL, MSI_DATA, MSI_MASK_BITS};
use devices::pci::msix::{MSIX_CONTROL, MSIX_ENTRY_SIZE};
use devices::pci::{
    EduDevice, MsiSink, PciAddress, PciBarWindow, PciConfigAddressPort, PciConfigDataPort, PciEcam,
    PciFunction, PciRoot, PciWindow, SharedPciRoot,
};
use devices::BusDevice;
use virtual_iommu::msi::MsiMessage;

use crate::{access_size, assert_raw_interrupt, for_each_op, fuzz_type, value_bytes};

/// What a mock sink saw.
struct SinkState {
    routes: Vec<Option<MsiMessage>>,
    triggers: usize,
}

/// One function's route table view, checking every call.
pub struct CheckingMsiSink {
    name: &'static str,
    vectors: u16,
    state: Mutex<SinkState>,
}

impl CheckingMsiSink {
    fn new(name: &'static str, vectors: u16) -> Arc<Self> {
        Arc::new(CheckingMsiSink {
            name,
            vectors,
            state: Mutex::new(SinkState {
                routes: vec![None; usize::from(vectors)],
                triggers: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn route(&self, index: u16) -> Option<MsiMessage> {
        self.lock().routes[usize::from(index)]
    }
}

impl MsiSink for CheckingMsiSink {
    fn set_vector_route(&self, index: u16, msg: Option<MsiMessage>) {
        assert!(
            index < self.vectors,
            "{}: route for vector {index} of {}",
            self.name,
            self.vectors
        );
        if let Some(m) = &msg {
            assert_raw_interrupt(m, self.name);
        }
        self.lock().routes[usize::from(index)] = msg;
    }

    fn trigger_vector(&self, index: u16) {
        assert!(
            index < self.vectors,
            "{}: trigger of vector {index} of {}",
            self.name,
            self.vectors
        );
        let mut st = self.lock();
        assert!(
            st.routes[usize::from(index)].is_some(),
            "{}: vector {index} triggered without a route",
            self.name
        );
        st.triggers += 1;
    }
}

/// A function the harness knows about.
struct Function {
    address: PciAddress,
    device: Arc<Mutex<EduDevice>>,
    sink: Arc<CheckingMsiSink>,
    device_id: u16,
}

fuzz_type! {
    /// One guest access (or device event).
    pub enum PciOp {
        /// CONFIG_ADDRESS access of any size at port 0xcf8 + `offset`.
        AddressPort { offset: u8, size: u8, value: u32, write: bool },
        /// CONFIG_DATA access of any size at port 0xcfc + `offset`.
        DataPort { offset: u8, size: u8, value: u32, write: bool },
        /// A configuration access to function `func` (one of the four, or any BDF for
        /// larger values) through 0xcf8/0xcfc or ECAM.
        Config { func: u16, reg: u16, size: u8, value: u32, write: bool, ecam: bool },
        /// An ECAM access at any offset.
        Ecam { offset: u32, size: u8, value: u32, write: bool },
        /// An access to BAR `bar` of `func` at its current address.
        Bar { func: u8, bar: u8, offset: u32, size: u8, value: u64, write: bool },
        /// An access anywhere in the MMIO (or I/O) window.
        Window { io: bool, offset: u32, size: u8, value: u64, write: bool },
        /// Programs the MSI capability of `func` (00:03.0 or 00:04.1).
        Msi { func: u8, address: u32, address_hi: u32, data: u16, control: u16, mask: u32 },
        /// Writes MSI-X table entry `vector` of 00:04.0 through its BAR.
        MsixEntry { vector: u16, address: u64, data: u32, control: u32, qword: bool },
        /// Writes the MSI-X message control of 00:04.0.
        MsixControl { value: u16 },
        /// Writes the command register of `func`.
        Command { func: u8, value: u16 },
        /// Writes BAR register `bar` of `func` (moves, sizing probes).
        BarRegister { func: u8, bar: u8, value: u32 },
        /// The edu interrupt-raise register of `func`.
        Raise { func: u8, value: u32 },
        /// The MSI-X variant's raise-vector register.
        MsixRaise { vector: u32 },
    }
}

/// The harness: the PCI root and the bus devices the VMM registers.
pub struct Harness {
    functions: Vec<Function>,
    address_port: PciConfigAddressPort,
    data_port: PciConfigDataPort,
    ecam: PciEcam,
    mmio: PciBarWindow,
    io: PciBarWindow,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// The platform's PCI segment with BARs assigned as the VMM does.
    pub fn new() -> Self {
        let root: SharedPciRoot = Arc::new(Mutex::new(PciRoot::new()));
        let mut functions = Vec::new();
        for (dev, func, msix, name) in [
            (3u8, 0u8, false, "edu 00:03.0"),
            (4, 0, true, "edu-msix 00:04.0"),
            (4, 1, false, "edu 00:04.1"),
        ] {
            let address = PciAddress::new(0, dev, func).expect("valid address");
            let (sink, device, device_id) = if msix {
                let sink = CheckingMsiSink::new(name, 256);
                let d = EduDevice::new_msix(sink.clone()).expect("edu-msix");
                (sink, d, 0x11e9)
            } else {
                let sink = CheckingMsiSink::new(name, 1);
                let d = EduDevice::new(sink.clone()).expect("edu");
                (sink, d, 0x11e8)
            };
            let device = Arc::new(Mutex::new(device));
            root.lock()
                .expect("root")
                .add_function(address, device.clone())
                .expect("add function");
            functions.push(Function {
                address,
                device,
                sink,
                device_id,
            });
        }
        root.lock()
            .expect("root")
            .assign_bars(PciWindow::MMIO32, Some(PciWindow::IO))
            .expect("BARs fit");
        let address_port = PciConfigAddressPort::new();
        let data_port = PciConfigDataPort::new(root.clone(), &address_port);
        Harness {
            ecam: PciEcam::new(root.clone()),
            mmio: PciBarWindow::new(root.clone(), BarSpace::Memory, PCI_MMIO32_BASE),
            io: PciBarWindow::new(root.clone(), BarSpace::Io, PCI_IO_BASE),
            functions,
            address_port,
            data_port,
        }
    }

    fn function(&self, func: u8) -> &Function {
        &self.functions[usize::from(func) % self.functions.len()]
    }

    /// The BDF `func` names: the host bridge and the three functions for small values,
    /// any address (present or not) otherwise.
    fn bdf(&self, func: u16) -> (u8, u8, u8) {
        match func % 0x100 {
            0 => (0, 0, 0),
            1 => (0, 3, 0),
            2 => (0, 4, 0),
            3 => (0, 4, 1),
            _ => (
                (func >> 8) as u8,
                ((func >> 3) & 0x1f) as u8,
                (func & 7) as u8,
            ),
        }
    }

    fn access(dev: &mut dyn BusDevice, offset: u64, size: u8, value: u64, write: bool) {
        let len = access_size(size);
        if write {
            dev.write(offset, &value_bytes(value, len));
        } else {
            let mut data = vec![0u8; len];
            dev.read(offset, &mut data);
        }
    }

    fn config(
        &mut self,
        bdf: (u8, u8, u8),
        reg: u16,
        size: u8,
        value: u32,
        write: bool,
        ecam: bool,
    ) {
        let (bus, dev, func) = bdf;
        if ecam {
            let offset = (u64::from(bus) << 20)
                | (u64::from(dev & 0x1f) << 15)
                | (u64::from(func & 7) << 12)
                | u64::from(reg & 0xfff);
            Self::access(&mut self.ecam, offset, size, u64::from(value), write);
        } else {
            let addr = (1u32 << 31)
                | (u32::from(bus) << 16)
                | (u32::from(dev & 0x1f) << 11)
                | (u32::from(func & 7) << 8)
                | u32::from(reg & 0xfc);
            self.address_port.write(0, &addr.to_le_bytes());
            Self::access(
                &mut self.data_port,
                u64::from(reg & 3),
                size,
                u64::from(value),
                write,
            );
        }
    }

    fn config_write(&mut self, f: u8, reg: u16, bytes: &[u8]) {
        let a = self.function(f).address;
        let offset =
            (u64::from(a.device()) << 15) | (u64::from(a.function()) << 12) | u64::from(reg);
        self.ecam.write(offset, bytes);
    }

    /// An access to BAR `bar` of function `func` at its current address.
    fn bar_access(&mut self, func: u8, bar: u8, offset: u32, size: u8, value: u64, write: bool) {
        let bars = self.function(func).device.lock().expect("function").bars();
        let Some(region) = bars.iter().find(|b| b.index == bar % 6).or(bars.first()) else {
            return;
        };
        let addr = region
            .address
            .wrapping_add(u64::from(offset) % region.size.max(1));
        match region.kind.space() {
            BarSpace::Memory => Self::access(
                &mut self.mmio,
                addr.wrapping_sub(PCI_MMIO32_BASE),
                size,
                value,
                write,
            ),
            BarSpace::Io => Self::access(
                &mut self.io,
                addr.wrapping_sub(PCI_IO_BASE),
                size,
                value,
                write,
            ),
        }
    }

    /// Applies one operation and checks every invariant.
    pub fn apply(&mut self, op: &PciOp) {
        match *op {
            PciOp::AddressPort {
                offset,
                size,
                value,
                write,
            } => Self::access(
                &mut self.address_port,
                u64::from(offset % 8),
                size,
                u64::from(value),
                write,
            ),
            PciOp::DataPort {
                offset,
                size,
                value,
                write,
            } => Self::access(
                &mut self.data_port,
                u64::from(offset % 8),
                size,
                u64::from(value),
                write,
            ),
            PciOp::Config {
                func,
                reg,
                size,
                value,
                write,
                ecam,
            } => {
                let bdf = self.bdf(func);
                self.config(bdf, reg, size, value, write, ecam);
            }
            PciOp::Ecam {
                offset,
                size,
                value,
                write,
            } => Self::access(
                &mut self.ecam,
                u64::from(offset),
                size,
                u64::from(value),
                write,
            ),
            PciOp::Bar {
                func,
                bar,
                offset,
                size,
                value,
                write,
            } => self.bar_access(func, bar, offset, size, value, write),
            PciOp::Window {
                io,
                offset,
                size,
                value,
                write,
            } => {
                if io {
                    Self::access(
                        &mut self.io,
                        u64::from(offset % 0x1_0000),
                        size,
                        value,
                        write,
                    )
                } else {
                    Self::access(&mut self.mmio, u64::from(offset), size, value, write)
                }
            }
            PciOp::Msi {
                func,
                address,
                address_hi,
                data,
                control,
                mask,
            } => {
                let f = if func % 2 == 0 { 0 } else { 2 };
                let cap = {
                    let d = self.function(f).device.lock().expect("function");
                    d.msi().map(|m| m.offset())
                };
                if let Some(cap) = cap {
                    self.config_write(f, cap + MSI_ADDRESS_LO, &address.to_le_bytes());
                    self.config_write(f, cap + MSI_ADDRESS_HI, &address_hi.to_le_bytes());
                    self.config_write(f, cap + MSI_DATA, &data.to_le_bytes());
                    self.config_write(f, cap + MSI_MASK_BITS, &mask.to_le_bytes());
                    self.config_write(f, cap + MSI_CONTROL, &control.to_le_bytes());
                }
            }
            PciOp::MsixEntry {
                vector,
                address,
                data,
                control,
                qword,
            } => {
                let entry = u32::from(vector) * MSIX_ENTRY_SIZE as u32;
                if qword {
                    self.bar_access(1, 2, entry, 3, address, true);
                    let tail = u64::from(data) | (u64::from(control) << 32);
                    self.bar_access(1, 2, entry + 8, 3, tail, true);
                } else {
                    self.bar_access(1, 2, entry, 2, address & 0xffff_ffff, true);
                    self.bar_access(1, 2, entry + 4, 2, address >> 32, true);
                    self.bar_access(1, 2, entry + 8, 2, u64::from(data), true);
                    self.bar_access(1, 2, entry + 12, 2, u64::from(control), true);
                }
            }
            PciOp::MsixControl { value } => {
                let cap = {
                    let d = self.function(1).device.lock().expect("function");
                    d.msix().map(|m| m.offset())
                };
                if let Some(cap) = cap {
                    self.config_write(1, cap + MSIX_CONTROL, &value.to_le_bytes());
                }
            }
            PciOp::Command { func, value } => {
                self.config_write(func, PCI_COMMAND, &value.to_le_bytes())
            }
            PciOp::BarRegister { func, bar, value } => {
                self.config_write(func, 0x10 + 4 * u16::from(bar % 6), &value.to_le_bytes())
            }
            PciOp::Raise { func, value } => {
                self.bar_access(func, 0, 0x60, 2, u64::from(value), true)
            }
            PciOp::MsixRaise { vector } => self.bar_access(1, 0, 0x68, 2, u64::from(vector), true),
        }
        self.check();
    }

    /// The invariants that hold between operations.
    pub fn check(&mut self) {
        for f in &self.functions {
            let d = f.device.lock().expect("function");
            let id = d.config().read_u32(0);
            assert_eq!(
                id,
                0x1234 | (u32::from(f.device_id) << 16),
                "identity changed"
            );
            if let Some(msi) = d.msi() {
                assert_eq!(msi.route(0), f.sink.route(0), "{}: MSI route", f.sink.name);
                assert!(msi.route(1).is_none());
            }
            if let Some(msix) = d.msix() {
                for v in 0..msix.vectors() {
                    assert_eq!(
                        msix.route(v),
                        f.sink.route(v),
                        "{}: vector {v}",
                        f.sink.name
                    );
                }
            }
        }
        // A function that does not exist reads all ones both ways.
        let mut b = [0u8; 4];
        self.ecam.read(5 << 15, &mut b);
        assert_eq!(b, [0xff; 4], "ECAM of an empty slot");
        let saved = self.address_port.value();
        self.address_port
            .write(0, &((1u32 << 31) | (5 << 11)).to_le_bytes());
        self.data_port.read(0, &mut b);
        assert_eq!(b, [0xff; 4], "config port of an empty slot");
        self.address_port.write(0, &saved.to_le_bytes());
        let mut b = [0u8; 2];
        self.ecam.read(0, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x8086, "host bridge vendor");
    }
}

/// Runs one `pci_config` input.
pub fn run(data: &[u8]) {
    let mut h = Harness::new();
    let mut budget = 2048;
    for_each_op::<PciOp>(data, |op| {
        if budget > 0 {
            budget -= 1;
            h.apply(&op);
        }
    });
}

/// The bytes [`run`] decodes into `ops`.
pub fn encode_input(ops: &[PciOp]) -> Vec<u8> {
    use crate::Encode;
    let mut out = Vec::new();
    for op in ops {
        op.encode(&mut out);
    }
    out
}
