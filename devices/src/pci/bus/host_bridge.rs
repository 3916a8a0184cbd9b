//! The host bridge at 00:00.0 that [`PciRoot::new`] puts on every root bus: identity only
//! (the q35 MCH's IDs, so guests see a familiar bridge), no BARs, no capabilities.
//!
//! [`PciRoot::new`]: super::PciRoot::new

use crate::fill_ones;
use crate::pci::config::{BarRegion, ConfigWriteEffect, PciConfigSpace, PciHeader};
use crate::pci::PciFunction;

/// Host bridge vendor ID (Intel).
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Host bridge device ID (the q35 MCH's, so guests see a familiar bridge).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x29c0;
/// Host bridge class code: bridge (0x06), host bridge (0x00).
pub const HOST_BRIDGE_CLASS_CODE: u32 = 0x06_0000;

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
