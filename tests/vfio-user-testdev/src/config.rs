//! PCI configuration space (region 7): identity, BARs and the MSI-X, MSI and PM capabilities.
//!
//! Reads return the stored bytes; writes change only the bits a per-byte write mask allows,
//! so BAR sizing, the command register and the capabilities' control bits behave like a
//! real function's.

use thiserror::Error;

use crate::options::DeviceOptions;
use crate::regs::BAR0_SIZE;

/// Size of the configuration region.
pub const CONFIG_SIZE: usize = 256;

/// PCI vendor ID.
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID.
pub const DEVICE_ID: u16 = 0x11ea;
/// Revision ID.
pub const REVISION_ID: u8 = 1;
/// Class code (class 0x00, subclass 0xff, programming interface 0x00).
pub const CLASS_CODE: u32 = 0x00ff00;
/// Subsystem vendor ID.
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1234;
/// Subsystem ID.
pub const SUBSYSTEM_ID: u16 = 0x0001;

const VENDOR: usize = 0x00;
const DEVICE: usize = 0x02;
/// Command register offset.
pub const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const REVISION: usize = 0x08;
const CLASS: usize = 0x09;
const CACHE_LINE_SIZE: usize = 0x0c;
const HEADER_TYPE: usize = 0x0e;
/// BAR0 register offset.
pub const BAR0: usize = 0x10;
/// BAR1 register offset (upper half of the 64-bit BAR0).
pub const BAR1: usize = 0x14;
const SUBSYSTEM_VENDOR: usize = 0x2c;
const SUBSYSTEM: usize = 0x2e;
/// Expansion ROM BAR offset.
pub const ROM_BAR: usize = 0x30;
const CAP_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;

/// Command bits the guest may change: I/O, memory, bus master, interrupt disable.
pub const COMMAND_WRITABLE: u16 = 0x0407;
const STATUS_CAP_LIST: u16 = 1 << 4;
/// BAR0 flags: 64-bit, non-prefetchable memory.
pub const BAR0_FLAGS: u32 = 0x4;
/// Size of the expansion ROM.
pub const ROM_SIZE: usize = 0x1000;
const ROM_BAR_WRITABLE: u32 = !(ROM_SIZE as u32 - 1) | 1;
const INTA: u8 = 1;

/// MSI-X capability offset.
pub const MSIX_CAP: usize = 0x40;
const MSIX_CAP_ID: u8 = 0x11;
/// MSI-X message control offset.
pub const MSIX_CONTROL: usize = MSIX_CAP + 2;
/// MSI-X table offset/BIR offset.
pub const MSIX_TABLE: usize = MSIX_CAP + 4;
/// MSI-X PBA offset/BIR offset.
pub const MSIX_PBA: usize = MSIX_CAP + 8;
/// MSI-X message control: enable.
pub const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
/// MSI-X message control: function mask.
pub const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// MSI-X message control: table size minus one.
pub const MSIX_CONTROL_TABLE_SIZE: u16 = 0x7ff;

/// MSI capability offset.
pub const MSI_CAP: usize = 0x50;
const MSI_CAP_ID: u8 = 0x05;
/// MSI message control offset.
pub const MSI_CONTROL: usize = MSI_CAP + 2;
/// MSI control: 64-bit address capable, per-vector masking, one vector.
pub const MSI_CONTROL_VALUE: u16 = 0x0180;
/// MSI control: enable.
pub const MSI_CONTROL_ENABLE: u16 = 1 << 0;
const MSI_ADDRESS_LO: usize = MSI_CAP + 4;
const MSI_ADDRESS_HI: usize = MSI_CAP + 8;
const MSI_DATA: usize = MSI_CAP + 0xc;
const MSI_MASK: usize = MSI_CAP + 0x10;

/// Power management capability offset.
pub const PM_CAP: usize = 0x68;
const PM_CAP_ID: u8 = 0x01;
const PM_CAPABILITIES: usize = PM_CAP + 2;
const PM_CAPABILITIES_VALUE: u16 = 0x0003;
/// Power management control/status offset.
pub const PM_CONTROL: usize = PM_CAP + 4;
const PM_CONTROL_POWER_STATE: u16 = 0x3;

/// A configuration access outside the 256-byte region.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("{len} bytes at offset {offset:#x} are outside the {CONFIG_SIZE}-byte config space")]
pub struct ConfigOutOfRange {
    /// First byte of the access.
    pub offset: u64,
    /// Length of the access.
    pub len: usize,
}

/// The function's configuration space.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    writable: [u8; CONFIG_SIZE],
}

impl ConfigSpace {
    /// Builds the configuration space described in README.md for `options`.
    pub fn new(options: &DeviceOptions) -> ConfigSpace {
        let mut c = ConfigSpace {
            bytes: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
        };
        c.set16(VENDOR, VENDOR_ID);
        c.set16(DEVICE, DEVICE_ID);
        c.set16(COMMAND, 0);
        c.mask16(COMMAND, COMMAND_WRITABLE);
        c.set16(STATUS, STATUS_CAP_LIST);
        c.set8(REVISION, REVISION_ID);
        for (i, byte) in CLASS_CODE.to_le_bytes().iter().take(3).enumerate() {
            c.set8(CLASS + i, *byte);
        }
        c.mask8(CACHE_LINE_SIZE, 0xff);
        c.set8(HEADER_TYPE, 0);
        c.set32(BAR0, BAR0_FLAGS);
        c.mask32(BAR0, !(BAR0_SIZE as u32 - 1));
        c.mask32(BAR1, u32::MAX);
        c.set16(SUBSYSTEM_VENDOR, SUBSYSTEM_VENDOR_ID);
        c.set16(SUBSYSTEM, SUBSYSTEM_ID);
        c.mask32(ROM_BAR, ROM_BAR_WRITABLE);
        c.set8(CAP_POINTER, MSIX_CAP as u8);
        c.mask8(INTERRUPT_LINE, 0xff);
        c.set8(INTERRUPT_PIN, INTA);

        // The size field is (N - 1) truncated to 11 bits, broken on purpose for N outside
        // 1..=2048.
        let table_size = (options.vectors.wrapping_sub(1) as u16) & MSIX_CONTROL_TABLE_SIZE;
        c.set8(MSIX_CAP, MSIX_CAP_ID);
        c.set8(MSIX_CAP + 1, MSI_CAP as u8);
        c.set16(MSIX_CONTROL, table_size);
        c.mask16(
            MSIX_CONTROL,
            MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK,
        );
        c.set32(MSIX_TABLE, options.layout.table_offset());
        c.set32(MSIX_PBA, options.layout.pba_offset());

        c.set8(MSI_CAP, MSI_CAP_ID);
        c.set8(MSI_CAP + 1, PM_CAP as u8);
        c.set16(MSI_CONTROL, MSI_CONTROL_VALUE);
        c.mask16(MSI_CONTROL, MSI_CONTROL_ENABLE);
        c.mask32(MSI_ADDRESS_LO, !0x3);
        c.mask32(MSI_ADDRESS_HI, u32::MAX);
        c.mask16(MSI_DATA, u16::MAX);
        c.mask32(MSI_MASK, 1);

        c.set8(PM_CAP, PM_CAP_ID);
        c.set8(PM_CAP + 1, 0);
        c.set16(PM_CAPABILITIES, PM_CAPABILITIES_VALUE);
        c.mask16(PM_CONTROL, PM_CONTROL_POWER_STATE);
        c
    }

    fn set8(&mut self, offset: usize, value: u8) {
        if let Some(b) = self.bytes.get_mut(offset) {
            *b = value;
        }
    }

    fn set16(&mut self, offset: usize, value: u16) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            self.set8(offset + i, b);
        }
    }

    fn set32(&mut self, offset: usize, value: u32) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            self.set8(offset + i, b);
        }
    }

    fn mask8(&mut self, offset: usize, mask: u8) {
        if let Some(b) = self.writable.get_mut(offset) {
            *b = mask;
        }
    }

    fn mask16(&mut self, offset: usize, mask: u16) {
        for (i, b) in mask.to_le_bytes().into_iter().enumerate() {
            self.mask8(offset + i, b);
        }
    }

    fn mask32(&mut self, offset: usize, mask: u32) {
        for (i, b) in mask.to_le_bytes().into_iter().enumerate() {
            self.mask8(offset + i, b);
        }
    }

    fn range(offset: u64, len: usize) -> Result<std::ops::Range<usize>, ConfigOutOfRange> {
        let err = ConfigOutOfRange { offset, len };
        let start = usize::try_from(offset).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > CONFIG_SIZE {
            return Err(err);
        }
        Ok(start..end)
    }

    /// Copies `buf.len()` bytes at `offset` out of the configuration space.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ConfigOutOfRange> {
        let range = Self::range(offset, buf.len())?;
        let src = self.bytes.get(range).ok_or(ConfigOutOfRange {
            offset,
            len: buf.len(),
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    /// Writes `data` at `offset`, changing only writable bits.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ConfigOutOfRange> {
        let range = Self::range(offset, data.len())?;
        let err = ConfigOutOfRange {
            offset,
            len: data.len(),
        };
        let bytes = self.bytes.get_mut(range.clone()).ok_or(err)?;
        let writable = self.writable.get(range).ok_or(err)?;
        for ((byte, mask), new) in bytes.iter_mut().zip(writable).zip(data) {
            *byte = (*byte & !mask) | (new & mask);
        }
        Ok(())
    }

    /// The 16-bit value at `offset` (0 outside the space).
    pub fn read16(&self, offset: usize) -> u16 {
        let lo = self.bytes.get(offset).copied().unwrap_or(0);
        let hi = self.bytes.get(offset + 1).copied().unwrap_or(0);
        u16::from_le_bytes([lo, hi])
    }

    /// The 32-bit value at `offset` (0 outside the space).
    #[cfg(test)]
    pub fn read32(&self, offset: usize) -> u32 {
        u32::from(self.read16(offset)) | (u32::from(self.read16(offset + 2)) << 16)
    }

    /// Whether the guest has set MSI-X enable.
    pub fn msix_enabled(&self) -> bool {
        self.read16(MSIX_CONTROL) & MSIX_CONTROL_ENABLE != 0
    }

    /// Whether the guest has set the MSI-X function mask.
    pub fn msix_function_masked(&self) -> bool {
        self.read16(MSIX_CONTROL) & MSIX_CONTROL_FUNCTION_MASK != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Layout;

    fn space(vectors: u32, layout: Layout) -> ConfigSpace {
        ConfigSpace::new(&DeviceOptions {
            vectors,
            direct_msix: false,
            layout,
        })
    }

    #[test]
    fn identity() {
        let c = space(256, Layout::Normal);
        assert_eq!(c.read32(0), 0x11ea_1234);
        assert_eq!(c.read32(0x08), 0x00ff_0001);
        assert_eq!(c.read16(STATUS), 0x0010);
        assert_eq!(c.read32(0x2c), 0x0001_1234);
        assert_eq!(c.read32(BAR0), 0x4);
        assert_eq!(c.read32(0x18), 0);
        assert_eq!(c.read32(0x24), 0);
        assert_eq!(c.bytes[CAP_POINTER], 0x40);
        assert_eq!(c.bytes[INTERRUPT_PIN], 1);
        assert_eq!(c.bytes[HEADER_TYPE], 0);
    }

    #[test]
    fn capability_chain() {
        let c = space(256, Layout::Normal);
        assert_eq!(c.read16(0x40), 0x5011);
        assert_eq!(c.read16(0x42), 255);
        assert_eq!(c.read32(0x44), 0x800);
        assert_eq!(c.read32(0x48), 0x9000);
        assert_eq!(c.read16(0x50), 0x6805);
        assert_eq!(c.read16(0x52), 0x0180);
        assert_eq!(c.read16(0x68), 0x0001);
        assert_eq!(c.read16(0x6a), 0x0003);
    }

    #[test]
    fn bar_sizing_and_writable_bits() {
        let mut c = space(256, Layout::Normal);
        c.write(BAR0 as u64, &[0xff; 8]).unwrap();
        assert_eq!(c.read32(BAR0), 0xffff_0004);
        assert_eq!(c.read32(BAR1), 0xffff_ffff);
        c.write(0x18, &[0xff; 4]).unwrap();
        assert_eq!(c.read32(0x18), 0);
        c.write(ROM_BAR as u64, &[0xff; 4]).unwrap();
        assert_eq!(c.read32(ROM_BAR), 0xffff_f001);
        c.write(COMMAND as u64, &[0xff, 0xff]).unwrap();
        assert_eq!(c.read16(COMMAND), 0x0407);
        c.write(0, &[0; 4]).unwrap();
        assert_eq!(c.read32(0), 0x11ea_1234);
    }

    #[test]
    fn msix_control_tracks_enable_and_mask() {
        let mut c = space(256, Layout::Normal);
        assert!(!c.msix_enabled());
        c.write(MSIX_CONTROL as u64, &0xffffu16.to_le_bytes())
            .unwrap();
        assert_eq!(c.read16(MSIX_CONTROL), 0xc0ff);
        assert!(c.msix_enabled() && c.msix_function_masked());
        c.write(MSIX_CONTROL as u64 + 1, &[0x80]).unwrap();
        assert!(c.msix_enabled() && !c.msix_function_masked());
    }

    #[test]
    fn msi_and_pm_writable_fields() {
        let mut c = space(256, Layout::Normal);
        c.write(MSI_CAP as u64, &[0xff; 0x18]).unwrap();
        assert_eq!(c.read16(MSI_CONTROL), 0x0181);
        assert_eq!(c.read32(MSI_ADDRESS_LO), 0xffff_fffc);
        assert_eq!(c.read32(MSI_ADDRESS_HI), 0xffff_ffff);
        assert_eq!(c.read32(MSI_DATA), 0x0000_ffff);
        assert_eq!(c.read32(MSI_MASK), 1);
        assert_eq!(c.read32(MSI_CAP + 0x14), 0);
        c.write(PM_CONTROL as u64, &[0xff, 0xff]).unwrap();
        assert_eq!(c.read16(PM_CONTROL), 3);
    }

    #[test]
    fn broken_vector_counts_and_layouts() {
        assert_eq!(space(0, Layout::Normal).read16(MSIX_CONTROL), 0x7ff);
        assert_eq!(space(4096, Layout::Normal).read16(MSIX_CONTROL), 0x7ff);
        assert_eq!(space(2049, Layout::Normal).read16(MSIX_CONTROL), 0);
        let c = space(256, Layout::Overlap);
        assert_eq!(c.read32(MSIX_PBA), 0x810);
        let c = space(256, Layout::Beyond);
        assert_eq!(c.read32(MSIX_TABLE), 0xf800);
        assert_eq!(c.read32(MSIX_PBA), 0x9000);
    }

    #[test]
    fn accesses_outside_fail() {
        let mut c = space(256, Layout::Normal);
        let mut b = [0u8; 4];
        assert!(c.read(0xfd, &mut b).is_err());
        assert!(c.read(u64::MAX, &mut b).is_err());
        assert!(c.write(0x100, &[0]).is_err());
        assert!(c.read(0xfc, &mut b).is_ok());
    }
}
