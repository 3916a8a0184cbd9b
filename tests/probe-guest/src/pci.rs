//! PCI configuration space through the legacy ports (configuration mechanism #1: address
//! at 0xcf8, data at 0xcfc), a scan of bus 0, BARs and the capability list.
//!
//! Both VMMs the probe runs on offer the ports (irvmm also has ECAM, QEMU q35 too); the
//! ports need no MCFG parsing and reach the first 256 bytes of each function, which holds
//! everything the probe programs.

use crate::report::Text;
use crate::{text, x86};

/// CONFIG_ADDRESS port.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// CONFIG_DATA port (plus the low two offset bits for narrower accesses).
pub const CONFIG_DATA: u16 = 0xcfc;
/// CONFIG_ADDRESS bit 31: enable (a configuration cycle).
pub const CONFIG_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS: bus number shift (23:16).
pub const ADDR_BUS_SHIFT: u32 = 16;
/// CONFIG_ADDRESS: device number shift (15:11).
pub const ADDR_DEVICE_SHIFT: u32 = 11;
/// CONFIG_ADDRESS: function number shift (10:8).
pub const ADDR_FUNCTION_SHIFT: u32 = 8;
/// CONFIG_ADDRESS: register offset bits (7:2; the low two bits go to the data port).
const ADDR_OFFSET_MASK: u16 = 0xfc;
/// Offset bits selecting the byte lane within the data port.
const DATA_LANE_MASK: u16 = 0x3;

/// Devices per bus.
pub const DEVICES: u8 = 32;
/// Functions per device.
pub const FUNCTIONS: u8 = 8;
/// Functions a bus can hold: the most [`find_all_on_bus0`] can report.
pub const BUS_FUNCTIONS: usize = DEVICES as usize * FUNCTIONS as usize;

/// Vendor ID register (16-bit); 0xffff when no function answers.
pub const REG_VENDOR: u16 = 0x00;
/// Device ID register (16-bit).
pub const REG_DEVICE: u16 = 0x02;
/// Command register (16-bit).
pub const REG_COMMAND: u16 = 0x04;
/// Status register (16-bit).
pub const REG_STATUS: u16 = 0x06;
/// Header type register (8-bit; bit 7 = multi-function device).
pub const REG_HEADER_TYPE: u16 = 0x0e;
/// First BAR register; BAR n is at `REG_BAR0 + 4 * n`.
pub const REG_BAR0: u16 = 0x10;
/// Capabilities pointer (8-bit).
const REG_CAPABILITIES: u16 = 0x34;
/// Distance between BAR registers.
pub const BAR_STRIDE: u16 = 4;
/// Requester ID: bus number shift (15:8).
const SID_BUS_SHIFT: u32 = 8;
/// Requester ID: device number shift (7:3); the function is bits 2:0.
const SID_DEVICE_SHIFT: u32 = 3;
/// Vendor ID of an absent function.
pub const NO_VENDOR: u16 = 0xffff;
/// Header type bit 7: the device has functions 1-7.
pub const HEADER_MULTI_FUNCTION: u8 = 1 << 7;
/// Header type bits 6:0 = 0: a general (type 0) device header with six BARs.
const HEADER_TYPE_MASK: u8 = 0x7f;
/// BARs of a type 0 header.
pub const TYPE0_BARS: u8 = 6;

/// Command bit 1: memory space decode.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command bit 2: bus master enable (needed for a device's MSI writes).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command bit 10: INTx disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status bit 4: the capabilities list exists.
const STATUS_CAPABILITIES: u16 = 1 << 4;

/// BAR bit 0: I/O space BAR.
pub const BAR_IO: u32 = 1 << 0;
/// BAR bits 2:1 (memory): type; 0b10 = 64-bit.
pub const BAR_TYPE_MASK: u32 = 0b110;
/// BAR type 64-bit.
pub const BAR_TYPE_64: u32 = 0b100;
/// Memory BAR address bits (31:4).
pub const BAR_MEMORY_MASK: u32 = !0xf;

/// Capability list entries hold a dword-aligned pointer; bits 1:0 are reserved.
const CAP_POINTER_MASK: u8 = 0xfc;
/// First offset after the standard header: no capability lives below it.
const CAP_MIN_OFFSET: u8 = 0x40;
/// Longest capability chain followed (48 dwords fit between 0x40 and 0x100).
const CAP_MAX_CHAIN: usize = 48;

/// Capability ID of MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

/// A PCI function on segment 0, by bus/device/function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// Bus number.
    pub bus: u8,
    /// Device number (0-31).
    pub device: u8,
    /// Function number (0-7).
    pub function: u8,
}

impl Function {
    /// The requester ID (source-id) its transactions carry: bus << 8 | device << 3 | function.
    pub fn sid(&self) -> u16 {
        (u16::from(self.bus) << SID_BUS_SHIFT)
            | (u16::from(self.device) << SID_DEVICE_SHIFT)
            | u16::from(self.function)
    }

    fn select(&self, offset: u16) {
        let address = CONFIG_ENABLE
            | (u32::from(self.bus) << ADDR_BUS_SHIFT)
            | (u32::from(self.device) << ADDR_DEVICE_SHIFT)
            | (u32::from(self.function) << ADDR_FUNCTION_SHIFT)
            | u32::from(offset & ADDR_OFFSET_MASK);
        // SAFETY: CONFIG_ADDRESS only selects the register the next data access reaches;
        // the probe is single-threaded when it touches PCI (only the BSP does).
        unsafe { x86::outl(CONFIG_ADDRESS, address) }
    }

    fn data_port(offset: u16) -> u16 {
        CONFIG_DATA + (offset & DATA_LANE_MASK)
    }

    /// Reads the 32-bit register at `offset` (dword aligned).
    pub fn read32(&self, offset: u16) -> u32 {
        self.select(offset);
        // SAFETY: a configuration read of the selected register; reads have no side effects
        // on the registers the probe uses.
        unsafe { x86::inl(CONFIG_DATA) }
    }

    /// Writes the 32-bit register at `offset` (dword aligned).
    pub fn write32(&self, offset: u16, value: u32) {
        self.select(offset);
        // SAFETY: the caller owns the effect on the device (BARs, capabilities).
        unsafe { x86::outl(CONFIG_DATA, value) }
    }

    /// Reads the 16-bit register at `offset` (word aligned).
    pub fn read16(&self, offset: u16) -> u16 {
        self.select(offset);
        // SAFETY: as in `read32`.
        unsafe { x86::inw(Self::data_port(offset)) }
    }

    /// Writes the 16-bit register at `offset` (word aligned), leaving its neighbours alone
    /// (a dword write would also hit write-1-to-clear status bits).
    pub fn write16(&self, offset: u16, value: u16) {
        self.select(offset);
        // SAFETY: as in `write32`.
        unsafe { x86::outw(Self::data_port(offset), value) }
    }

    /// Reads the 8-bit register at `offset`.
    pub fn read8(&self, offset: u16) -> u8 {
        self.select(offset);
        // SAFETY: as in `read32`.
        unsafe { x86::inb(Self::data_port(offset)) }
    }

    /// Sets `bits` in the command register (keeping the others).
    pub fn enable_command(&self, bits: u16) {
        let command = self.read16(REG_COMMAND);
        self.write16(REG_COMMAND, command | bits);
    }

    /// The memory address BAR `index` decodes (a 64-bit BAR takes two registers). Fails on
    /// an I/O BAR, an unassigned (zero) BAR or an index beyond the type 0 header's six.
    pub fn memory_bar(&self, index: u8) -> Result<u64, Text> {
        if index >= TYPE0_BARS {
            return Err(text!("{} has no BAR {}", self, index));
        }
        let offset = REG_BAR0 + BAR_STRIDE * u16::from(index);
        let low = self.read32(offset);
        if low & BAR_IO != 0 {
            return Err(text!("{} BAR {} is an I/O BAR (0x{:x})", self, index, low));
        }
        let mut addr = u64::from(low & BAR_MEMORY_MASK);
        if low & BAR_TYPE_MASK == BAR_TYPE_64 {
            if index + 1 >= TYPE0_BARS {
                return Err(text!("{} 64-bit BAR {} has no upper half", self, index));
            }
            addr |= u64::from(self.read32(offset + BAR_STRIDE)) << 32;
        }
        if addr == 0 {
            return Err(text!("{} BAR {} is not assigned", self, index));
        }
        Ok(addr)
    }

    /// Offset of the first capability with `id`, if the function lists one.
    pub fn find_capability(&self, id: u8) -> Result<Option<u16>, Text> {
        if self.read16(REG_STATUS) & STATUS_CAPABILITIES == 0 {
            return Ok(None);
        }
        let mut pointer = self.read8(REG_CAPABILITIES) & CAP_POINTER_MASK;
        for _ in 0..CAP_MAX_CHAIN {
            if pointer == 0 {
                return Ok(None);
            }
            if pointer < CAP_MIN_OFFSET {
                return Err(text!(
                    "{} capability pointer 0x{:x} in the header",
                    self,
                    pointer
                ));
            }
            let at = u16::from(pointer);
            if self.read8(at) == id {
                return Ok(Some(at));
            }
            pointer = self.read8(at + 1) & CAP_POINTER_MASK;
        }
        Err(text!("{} capability list does not end", self))
    }
}

impl core::fmt::Display for Function {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// The first function on bus 0 with `vendor:device`, scanning devices in order (functions
/// 1-7 only of multi-function devices).
pub fn find_on_bus0(vendor: u16, device: u16) -> Option<Function> {
    let mut found = [Function {
        bus: 0,
        device: 0,
        function: 0,
    }];
    (find_all_on_bus0(vendor, device, &mut found) > 0).then_some(found[0])
}

/// Every function on bus 0 (any vendor, any header type), in scan order (devices ascending,
/// then functions; functions 1-7 only of multi-function devices), copied into `out` as far
/// as it holds them; returns how many there are.
pub fn all_on_bus0(out: &mut [Function]) -> usize {
    scan_bus0(out, |_| true)
}

/// Every type 0 function on bus 0 with `vendor:device`, in scan order (devices ascending,
/// then functions; functions 1-7 only of multi-function devices), copied into `out` as far
/// as it holds them; returns how many there are.
pub fn find_all_on_bus0(vendor: u16, device: u16, out: &mut [Function]) -> usize {
    scan_bus0(out, |f| {
        f.read8(REG_HEADER_TYPE) & HEADER_TYPE_MASK == 0
            && f.read16(REG_VENDOR) == vendor
            && f.read16(REG_DEVICE) == device
    })
}

/// Scans bus 0 (functions 1-7 only of multi-function devices) and copies the present
/// functions that `keep` accepts into `out` as far as it holds them; returns how many
/// there are.
fn scan_bus0(out: &mut [Function], mut keep: impl FnMut(&Function) -> bool) -> usize {
    let mut n = 0;
    for dev in 0..DEVICES {
        let first = Function {
            bus: 0,
            device: dev,
            function: 0,
        };
        if first.read16(REG_VENDOR) == NO_VENDOR {
            continue;
        }
        let functions = if first.read8(REG_HEADER_TYPE) & HEADER_MULTI_FUNCTION != 0 {
            FUNCTIONS
        } else {
            1
        };
        for function in 0..functions {
            let f = Function {
                bus: 0,
                device: dev,
                function,
            };
            if f.read16(REG_VENDOR) != NO_VENDOR && keep(&f) {
                if let Some(slot) = out.get_mut(n) {
                    *slot = f;
                }
                n += 1;
            }
        }
    }
    n
}
