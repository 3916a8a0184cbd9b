//! PCI segment 0: the root bus, its host bridge, configuration access and BAR decoding.
//!
//! # Wiring (what the VMM does)
//!
//! ```text
//! let root: SharedPciRoot = Arc::new(Mutex::new(PciRoot::new()));   // host bridge at 00:00.0
//! let addr = PciAddress::new(0, 3, 0)?;                              // edu at 00:03.0
//! let edu = EduDevice::new(sink_for(addr.source_id()))?;             // one MsiSink per function
//! root.lock()?.add_function(addr, Arc::new(Mutex::new(edu)))?;
//! root.lock()?.assign_bars(PciWindow::MMIO32, Some(PciWindow::IO))?; // no BIOS: we place BARs
//! let address_port = PciConfigAddressPort::new();
//! let data_port = PciConfigDataPort::new(root.clone(), &address_port);
//! pio.insert(0xcf8, 1, Arc::new(Mutex::new(address_port)))?;   // 0xcf9 is the reset register
//! pio.insert(0xcfc, 4, Arc::new(Mutex::new(data_port)))?;
//! mmio.insert(PCI_ECAM_BASE, PCI_ECAM_SIZE, Arc::new(Mutex::new(PciEcam::new(root.clone()))))?;
//! mmio.insert(PCI_MMIO32_BASE, PCI_MMIO32_SIZE,
//!             Arc::new(Mutex::new(PciBarWindow::new(root.clone(), BarSpace::Memory, PCI_MMIO32_BASE))))?;
//! pio.insert(PCI_IO_BASE, PCI_IO_SIZE,
//!            Arc::new(Mutex::new(PciBarWindow::new(root.clone(), BarSpace::Io, PCI_IO_BASE))))?;
//! ```
//!
//! [`PciBarWindow`] decodes BARs dynamically, from the addresses currently programmed and
//! the command register's decode bits, so the VMM's buses never change after start-up even
//! when the guest moves a BAR. A VMM that maps BARs some other way (a KVM memory slot for a
//! passthrough BAR) registers a [`PciConfigListener`] and follows
//! [`ConfigWriteEffect::BarMoved`] and [`ConfigWriteEffect::DecodeChanged`].
//!
//! # Configuration mechanism #1 (ports 0xcf8 and 0xcfc)
//!
//! CONFIG_ADDRESS at 0xcf8 answers 4-byte accesses only (narrower ones belong to other
//! devices: 0xcf9 is the reset control register); it keeps the enable bit 31, bus 23:16,
//! device 15:11, function 10:8 and register 7:2 (reserved bits read 0). CONFIG_DATA at
//! 0xcfc..0xcff reaches the selected dword: a 1-, 2- or 4-byte access at port `0xcfc + k`
//! touches byte `k` of it, and must not cross the dword. With the enable bit clear, a
//! missing function or bus, or a bad access, reads are all ones and writes are dropped.
//!
//! # ECAM
//!
//! 256 MiB of MMIO: offset = bus << 20 | device << 15 | function << 12 | register. Only
//! bus 0 exists; everything else reads all ones. Accesses are 1, 2 or 4 bytes within a
//! dword, like mechanism #1, but reach all 4 KiB of each function.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use log::debug;

use super::config::{
    BarKind, BarRegion, BarSpace, ConfigWriteEffect, PciConfigSpace, PciHeader, PCI_BAR0,
    PCI_BAR_REG_SIZE, PCI_COMMAND, PCI_COMMAND_IO, PCI_COMMAND_MEMORY, PCI_CONFIG_SPACE_SIZE,
    PCI_EXPANSION_ROM, PCI_HEADER_TYPE, PCI_HEADER_TYPE_MULTIFUNCTION, PCI_ROM_BAR_INDEX,
};
use super::{PciAddress, PciError, PciFunction, SharedPciFunction};
use crate::{fill_ones, BusDevice};

/// I/O port of CONFIG_ADDRESS.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// I/O port of CONFIG_DATA.
pub const PCI_CONFIG_DATA_PORT: u16 = 0xcfc;
/// Number of CONFIG_DATA ports.
pub const PCI_CONFIG_DATA_SIZE: u64 = 4;
/// CONFIG_ADDRESS: configuration access enable.
pub const PCI_CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS: shift of the bus number.
pub const PCI_CONFIG_ADDRESS_BUS_SHIFT: u32 = 16;
/// CONFIG_ADDRESS: shift of the device number.
pub const PCI_CONFIG_ADDRESS_DEVICE_SHIFT: u32 = 11;
/// CONFIG_ADDRESS: shift of the function number.
pub const PCI_CONFIG_ADDRESS_FUNCTION_SHIFT: u32 = 8;
/// CONFIG_ADDRESS: the dword-aligned register number (bits 7:2).
pub const PCI_CONFIG_ADDRESS_REGISTER_MASK: u32 = 0xfc;
/// CONFIG_ADDRESS: the bits that hold state (reserved bits 30:24 and 1:0 read 0).
pub const PCI_CONFIG_ADDRESS_WRITABLE: u32 = 0x80ff_fffc;
/// Size of the only access CONFIG_ADDRESS answers.
pub const PCI_CONFIG_ADDRESS_ACCESS_SIZE: usize = 4;

/// Default ECAM base (q35-like; the MCFG table must say the same).
pub const PCI_ECAM_BASE: u64 = 0xb000_0000;
/// ECAM size: 256 buses × 32 devices × 8 functions × 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// ECAM: shift of the bus number.
pub const PCI_ECAM_BUS_SHIFT: u32 = 20;
/// ECAM: shift of the device number.
pub const PCI_ECAM_DEVICE_SHIFT: u32 = 15;
/// ECAM: shift of the function number.
pub const PCI_ECAM_FUNCTION_SHIFT: u32 = 12;
/// ECAM: the register offset bits.
pub const PCI_ECAM_REGISTER_MASK: u64 = 0xfff;

/// Default base of the 32-bit PCI MMIO window.
pub const PCI_MMIO32_BASE: u64 = 0xc000_0000;
/// Default size of the 32-bit PCI MMIO window (it ends at 0xfe00_0000).
pub const PCI_MMIO32_SIZE: u64 = 0xfe00_0000 - PCI_MMIO32_BASE;
/// Default base of the PCI I/O port window.
pub const PCI_IO_BASE: u64 = 0xc000;
/// Default size of the PCI I/O port window (it ends at 0x1_0000).
pub const PCI_IO_SIZE: u64 = 0x4000;
/// Memory BARs are placed on at least page boundaries (so each can be mapped alone).
pub const PCI_MMIO_MIN_ALIGN: u64 = 0x1000;

/// Host bridge vendor ID (Intel).
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Host bridge device ID (the q35 MCH's, so guests see a familiar bridge).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x29c0;
/// Host bridge class code: bridge (0x06), host bridge (0x00).
pub const HOST_BRIDGE_CLASS_CODE: u32 = 0x06_0000;

/// Bus-field masks (device 5 bits, function 3 bits, bus 8 bits).
const DEVICE_FIELD_MASK: u32 = 0x1f;
const FUNCTION_FIELD_MASK: u32 = 0x7;
const BUS_FIELD_MASK: u32 = 0xff;
/// Size of the dword a configuration access must stay inside.
const CONFIG_DWORD: usize = 4;

/// The PCI root shared by the configuration and BAR bus devices.
pub type SharedPciRoot = Arc<Mutex<PciRoot>>;

/// Receives configuration-write effects (BAR moves, decode changes) for mapping BARs
/// outside [`PciBarWindow`]. Called with the root locked: never call back into PCI.
pub trait PciConfigListener: Send + Sync {
    /// `effect` happened on the function at `address`.
    fn config_effect(&self, address: PciAddress, effect: ConfigWriteEffect);
}

/// An address range BARs may be placed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindow {
    /// First address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl PciWindow {
    /// The default 32-bit MMIO window, 0xc000_0000..0xfe00_0000.
    pub const MMIO32: PciWindow = PciWindow {
        base: PCI_MMIO32_BASE,
        size: PCI_MMIO32_SIZE,
    };
    /// The default I/O port window, 0xc000..0x1_0000.
    pub const IO: PciWindow = PciWindow {
        base: PCI_IO_BASE,
        size: PCI_IO_SIZE,
    };

    /// The first address past the window (saturating).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// Where [`PciRoot::assign_bars`] placed one BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarAssignment {
    /// The function.
    pub address: PciAddress,
    /// BAR index.
    pub bar: u8,
    /// BAR kind.
    pub kind: BarKind,
    /// Assigned base address.
    pub base: u64,
    /// BAR size.
    pub size: u64,
}

/// The BAR an access decodes to.
#[derive(Clone)]
pub struct BarTarget {
    /// The function owning the BAR.
    pub function: SharedPciFunction,
    /// Its address.
    pub address: PciAddress,
    /// BAR index.
    pub bar: u8,
    /// Offset of the access from the BAR's base.
    pub offset: u64,
}

/// The host bridge at 00:00.0: identity only, no BARs, no capabilities.
#[derive(Clone, Debug)]
pub struct HostBridge {
    config: PciConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    /// A host bridge with the q35 MCH's IDs and class 0x0600.
    pub fn new() -> Self {
        HostBridge {
            config: PciConfigSpace::new(&PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                class_code: HOST_BRIDGE_CLASS_CODE,
                ..PciHeader::default()
            }),
        }
    }
}

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<ConfigWriteEffect> {
        self.config.write(offset, data)
    }

    fn bars(&self) -> Vec<BarRegion> {
        Vec::new()
    }

    fn bar_read(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        fill_ones(data);
    }

    fn bar_write(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}

/// One function on the bus with the BARs it decodes.
struct Slot {
    function: SharedPciFunction,
    /// The function's BARs as of its last configuration write.
    bars: Vec<BarRegion>,
}

/// Bus 0 of PCI segment 0: functions by device and function number, configuration access
/// routing and BAR decoding.
pub struct PciRoot {
    slots: BTreeMap<PciAddress, Slot>,
    listener: Option<Arc<dyn PciConfigListener>>,
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

/// True for a configuration access that stays inside one dword of the 4 KiB space.
fn config_access_ok(offset: u16, len: usize) -> bool {
    (1..=CONFIG_DWORD).contains(&len)
        && usize::from(offset) % CONFIG_DWORD + len <= CONFIG_DWORD
        && usize::from(offset) + len <= PCI_CONFIG_SPACE_SIZE
}

/// `value` rounded up to a multiple of `align` (a power of two), `None` on overflow.
fn align_up(value: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    value.checked_add(mask).map(|v| v & !mask)
}

impl PciRoot {
    /// A root bus with the [`HostBridge`] at 00:00.0.
    pub fn new() -> Self {
        let mut slots = BTreeMap::new();
        slots.insert(
            PciAddress::default(),
            Slot {
                function: Arc::new(Mutex::new(HostBridge::new())),
                bars: Vec::new(),
            },
        );
        PciRoot {
            slots,
            listener: None,
        }
    }

    /// Adds `function` at `address` (bus 0). A device with functions besides 0 reports the
    /// multi-function bit in function 0's header type automatically.
    pub fn add_function(
        &mut self,
        address: PciAddress,
        function: SharedPciFunction,
    ) -> Result<(), PciError> {
        if address.bus() != 0 {
            return Err(PciError::NoSuchBus(address.bus()));
        }
        if self.slots.contains_key(&address) {
            return Err(PciError::AddressInUse(address));
        }
        let bars = function
            .lock()
            .map_err(|_| PciError::FunctionUnavailable(address))?
            .bars();
        self.slots.insert(address, Slot { function, bars });
        Ok(())
    }

    /// The function at `address`.
    pub fn function(&self, address: PciAddress) -> Option<SharedPciFunction> {
        self.slots.get(&address).map(|s| s.function.clone())
    }

    /// The addresses of every function, in order.
    pub fn addresses(&self) -> Vec<PciAddress> {
        self.slots.keys().copied().collect()
    }

    /// The lowest device number on bus 0 with no function.
    pub fn free_device(&self) -> Option<u8> {
        (0..super::PCI_DEVICES_PER_BUS).find(|&d| !self.slots.keys().any(|a| a.device() == d))
    }

    /// Registers the listener that receives configuration-write effects.
    pub fn set_listener(&mut self, listener: Arc<dyn PciConfigListener>) {
        self.listener = Some(listener);
    }

    /// True when device `device` has a function other than 0.
    fn is_multifunction(&self, device: u8) -> bool {
        self.slots
            .keys()
            .any(|a| a.device() == device && a.function() != 0)
    }

    /// A configuration read of `data.len()` bytes at `offset` of `address` (all ones for
    /// a missing function or an access that leaves its dword).
    pub fn config_read(&mut self, address: PciAddress, offset: u16, data: &mut [u8]) {
        if !config_access_ok(offset, data.len()) {
            debug!(
                "pci: {}-byte config read at {address} {offset:#x} ignored",
                data.len()
            );
            fill_ones(data);
            return;
        }
        let Some(slot) = self.slots.get(&address) else {
            fill_ones(data);
            return;
        };
        match slot.function.lock() {
            Ok(mut f) => f.config_read(offset, data),
            Err(_) => {
                fill_ones(data);
                return;
            }
        }
        if address.function() == 0 && self.is_multifunction(address.device()) {
            let lane = usize::from(PCI_HEADER_TYPE)
                .checked_sub(usize::from(offset))
                .and_then(|i| data.get_mut(i));
            if let Some(byte) = lane {
                *byte |= PCI_HEADER_TYPE_MULTIFUNCTION;
            }
        }
    }

    /// A configuration write of `data` at `offset` of `address`. Returns the effects (also
    /// sent to the listener); missing functions and bad accesses are ignored.
    pub fn config_write(
        &mut self,
        address: PciAddress,
        offset: u16,
        data: &[u8],
    ) -> Vec<ConfigWriteEffect> {
        if !config_access_ok(offset, data.len()) {
            debug!(
                "pci: {}-byte config write at {address} {offset:#x} ignored",
                data.len()
            );
            return Vec::new();
        }
        let Some(slot) = self.slots.get_mut(&address) else {
            return Vec::new();
        };
        let effects = match slot.function.lock() {
            Ok(mut f) => {
                let effects = f.config_write(offset, data);
                slot.bars = f.bars();
                effects
            }
            Err(_) => return Vec::new(),
        };
        if let Some(listener) = &self.listener {
            for &effect in &effects {
                listener.config_effect(address, effect);
            }
        }
        effects
    }

    /// The BAR that decodes `len` bytes at `addr` in `space`, if any.
    pub fn find_bar(&self, space: BarSpace, addr: u64, len: u64) -> Option<BarTarget> {
        self.slots.iter().find_map(|(address, slot)| {
            slot.bars
                .iter()
                .find(|b| b.contains(space, addr, len))
                .map(|b| BarTarget {
                    function: slot.function.clone(),
                    address: *address,
                    bar: b.index,
                    offset: addr - b.address,
                })
        })
    }

    /// Does the firmware's job: places every BAR of every function, largest first and
    /// naturally aligned (memory BARs on at least 4 KiB), memory BARs (64-bit ones too) in
    /// `mmio` and I/O BARs in `io`; programs the BAR registers and sets the command
    /// register's memory and I/O decode bits of each function that got a BAR of that
    /// space. Bus mastering is left to the guest's driver. Call it before the guest runs.
    pub fn assign_bars(
        &mut self,
        mmio: PciWindow,
        io: Option<PciWindow>,
    ) -> Result<Vec<BarAssignment>, PciError> {
        let mut requests = Vec::new();
        for (address, slot) in &self.slots {
            let function = slot
                .function
                .lock()
                .map_err(|_| PciError::FunctionUnavailable(*address))?;
            requests.extend(function.bars().into_iter().map(|b| (*address, b)));
        }
        requests.sort_by(|(a_addr, a), (b_addr, b)| {
            b.size
                .cmp(&a.size)
                .then(a_addr.cmp(b_addr))
                .then(a.index.cmp(&b.index))
        });

        let mut next_mem = mmio.base;
        let mut next_io = io.map(|w| w.base);
        let mut assignments = Vec::with_capacity(requests.len());
        for (address, bar) in requests {
            let space = bar.kind.space();
            let exhausted = PciError::WindowExhausted {
                address,
                bar: bar.index,
                size: bar.size,
                space,
            };
            let (window, cursor, align) = match (space, io, next_io.as_mut()) {
                (BarSpace::Memory, _, _) => (mmio, &mut next_mem, bar.size.max(PCI_MMIO_MIN_ALIGN)),
                (BarSpace::Io, Some(w), Some(c)) => (w, c, bar.size),
                (BarSpace::Io, _, _) => return Err(exhausted),
            };
            let base = align_up(*cursor, align).ok_or(exhausted.clone())?;
            let end = base.checked_add(bar.size).ok_or(exhausted.clone())?;
            if end > window.end() {
                return Err(exhausted);
            }
            *cursor = end;
            assignments.push(BarAssignment {
                address,
                bar: bar.index,
                kind: bar.kind,
                base,
                size: bar.size,
            });
        }

        let mut enables: BTreeMap<PciAddress, u16> = BTreeMap::new();
        for a in &assignments {
            // The expansion ROM is placed but left disabled, as firmware does.
            let offset = if a.bar == PCI_ROM_BAR_INDEX {
                PCI_EXPANSION_ROM
            } else {
                PCI_BAR0 + PCI_BAR_REG_SIZE * u16::from(a.bar)
            };
            self.config_write(a.address, offset, &(a.base as u32).to_le_bytes());
            if a.kind == BarKind::Memory64 {
                let high = (a.base >> u32::BITS) as u32;
                self.config_write(a.address, offset + PCI_BAR_REG_SIZE, &high.to_le_bytes());
            }
            let bit = match a.kind.space() {
                BarSpace::Memory => PCI_COMMAND_MEMORY,
                BarSpace::Io => PCI_COMMAND_IO,
            };
            *enables.entry(a.address).or_default() |= bit;
        }
        for (address, bits) in enables {
            let mut command = [0u8; 2];
            self.config_read(address, PCI_COMMAND, &mut command);
            let value = u16::from_le_bytes(command) | bits;
            self.config_write(address, PCI_COMMAND, &value.to_le_bytes());
        }
        Ok(assignments)
    }
}

/// CONFIG_ADDRESS (port 0xcf8). Register it at 0xcf8 with length 1 (0xcf9 is the reset
/// control register); a 4-byte access at 0xcf8 arrives as offset 0.
pub struct PciConfigAddressPort {
    latch: Arc<AtomicU32>,
}

impl Default for PciConfigAddressPort {
    fn default() -> Self {
        Self::new()
    }
}

impl PciConfigAddressPort {
    /// A CONFIG_ADDRESS register holding 0.
    pub fn new() -> Self {
        PciConfigAddressPort {
            latch: Arc::new(AtomicU32::new(0)),
        }
    }

    /// The current CONFIG_ADDRESS value.
    pub fn value(&self) -> u32 {
        self.latch.load(Ordering::SeqCst)
    }
}

impl BusDevice for PciConfigAddressPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == PCI_CONFIG_ADDRESS_ACCESS_SIZE {
            data.copy_from_slice(&self.value().to_le_bytes());
        } else {
            fill_ones(data);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match <[u8; PCI_CONFIG_ADDRESS_ACCESS_SIZE]>::try_from(data) {
            Ok(bytes) if offset == 0 => {
                let value = u32::from_le_bytes(bytes) & PCI_CONFIG_ADDRESS_WRITABLE;
                self.latch.store(value, Ordering::SeqCst);
            }
            _ => debug!(
                "pci: {}-byte write at CONFIG_ADDRESS+{offset:#x} ignored",
                data.len()
            ),
        }
    }
}

/// CONFIG_DATA (ports 0xcfc..0xcff): register it at 0xcfc with length 4.
pub struct PciConfigDataPort {
    latch: Arc<AtomicU32>,
    root: SharedPciRoot,
}

impl PciConfigDataPort {
    /// The data port that accesses what `address` selects on `root`.
    pub fn new(root: SharedPciRoot, address: &PciConfigAddressPort) -> Self {
        PciConfigDataPort {
            latch: address.latch.clone(),
            root,
        }
    }

    /// The function and register offset an access at data port `offset` reaches, when
    /// CONFIG_ADDRESS is enabled.
    fn target(&self, offset: u64) -> Option<(PciAddress, u16)> {
        let latch = self.latch.load(Ordering::SeqCst);
        if latch & PCI_CONFIG_ADDRESS_ENABLE == 0 || offset >= PCI_CONFIG_DATA_SIZE {
            return None;
        }
        let address = PciAddress::new(
            ((latch >> PCI_CONFIG_ADDRESS_BUS_SHIFT) & BUS_FIELD_MASK) as u8,
            ((latch >> PCI_CONFIG_ADDRESS_DEVICE_SHIFT) & DEVICE_FIELD_MASK) as u8,
            ((latch >> PCI_CONFIG_ADDRESS_FUNCTION_SHIFT) & FUNCTION_FIELD_MASK) as u8,
        )
        .ok()?;
        // Register (< 0x100) plus the port offset (< 4) fits u16.
        let register = (latch & PCI_CONFIG_ADDRESS_REGISTER_MASK) as u16 + offset as u16;
        Some((address, register))
    }
}

impl BusDevice for PciConfigDataPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (self.target(offset), self.root.lock()) {
            (Some((address, register)), Ok(mut root)) => root.config_read(address, register, data),
            _ => fill_ones(data),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some((address, register)), Ok(mut root)) = (self.target(offset), self.root.lock()) {
            root.config_write(address, register, data);
        }
    }
}

/// The ECAM window: register it at the ECAM base with [`PCI_ECAM_SIZE`].
pub struct PciEcam {
    root: SharedPciRoot,
}

impl PciEcam {
    /// ECAM access to `root`.
    pub fn new(root: SharedPciRoot) -> Self {
        PciEcam { root }
    }

    /// The function and register an ECAM offset names.
    fn decode(offset: u64) -> Option<(PciAddress, u16)> {
        if offset >= PCI_ECAM_SIZE {
            return None;
        }
        let field = |shift: u32, mask: u32| ((offset >> shift) as u32 & mask) as u8;
        let address = PciAddress::new(
            field(PCI_ECAM_BUS_SHIFT, BUS_FIELD_MASK),
            field(PCI_ECAM_DEVICE_SHIFT, DEVICE_FIELD_MASK),
            field(PCI_ECAM_FUNCTION_SHIFT, FUNCTION_FIELD_MASK),
        )
        .ok()?;
        Some((address, (offset & PCI_ECAM_REGISTER_MASK) as u16))
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (Self::decode(offset), self.root.lock()) {
            (Some((address, register)), Ok(mut root)) => root.config_read(address, register, data),
            _ => fill_ones(data),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some((address, register)), Ok(mut root)) = (Self::decode(offset), self.root.lock())
        {
            root.config_write(address, register, data);
        }
    }
}

/// A window of the MMIO or PIO bus in which BARs are decoded from their current
/// programming: register it at `base` over the whole PCI window. Accesses no BAR decodes
/// read all ones. The root's lock is released before the function's is taken.
pub struct PciBarWindow {
    root: SharedPciRoot,
    space: BarSpace,
    base: u64,
}

impl PciBarWindow {
    /// A window of `space` registered at bus address `base`.
    pub fn new(root: SharedPciRoot, space: BarSpace, base: u64) -> Self {
        PciBarWindow { root, space, base }
    }

    fn target(&self, offset: u64, len: usize) -> Option<BarTarget> {
        let addr = self.base.checked_add(offset)?;
        let root = self.root.lock().ok()?;
        root.find_bar(self.space, addr, len as u64)
    }
}

impl BusDevice for PciBarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(target) = self.target(offset, data.len()) else {
            fill_ones(data);
            return;
        };
        match target.function.lock() {
            Ok(mut f) => f.bar_read(target.bar, target.offset, data),
            Err(_) => fill_ones(data),
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(target) = self.target(offset, data.len()) else {
            debug!(
                "pci: {}-byte write at window offset {offset:#x} decodes to no BAR",
                data.len()
            );
            return;
        };
        if let Ok(mut f) = target.function.lock() {
            f.bar_write(target.bar, target.offset, data);
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{PCI_CLASS_CODE, PCI_INTERRUPT_LINE, PCI_VENDOR_ID};
    use crate::pci::edu::{EduDevice, EDU_ID_VALUE, EDU_REG_ID};
    use crate::pci::testing::RecordingMsiSink;

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
        let at = |bus: u64, dev: u64, func: u64, reg: u64| {
            (bus << 20) | (dev << 15) | (func << 12) | reg
        };
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
}
