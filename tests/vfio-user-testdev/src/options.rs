//! What the command line decides about the device model.

use crate::regs;

/// Largest vector count reported in IRQ info (`--vectors`).
pub const MAX_VECTORS: u32 = 4096;

/// Where the MSI-X table and PBA sit in BAR0 (`--layout`).
///
/// Only `Normal` is a sane device; the others exist so the VMM's checks of device-provided
/// layouts can be exercised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// Table at 0x800, PBA at 0x9000.
    #[default]
    Normal,
    /// PBA 16 bytes after the table start, overlapping the table.
    Overlap,
    /// Table at 0xf800, so a large table ends past the 64 KiB BAR.
    Beyond,
}

impl Layout {
    /// Offset of the MSI-X table in BAR0.
    pub fn table_offset(self) -> u32 {
        match self {
            Layout::Normal | Layout::Overlap => regs::MSIX_TABLE_OFFSET,
            Layout::Beyond => regs::MSIX_TABLE_OFFSET_BEYOND,
        }
    }

    /// Offset of the MSI-X PBA in BAR0.
    pub fn pba_offset(self) -> u32 {
        match self {
            Layout::Normal | Layout::Beyond => regs::MSIX_PBA_OFFSET,
            Layout::Overlap => self.table_offset() + regs::MSIX_PBA_OVERLAP_DISTANCE,
        }
    }
}

/// The device model's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceOptions {
    /// MSI-X vectors (N), 0..=[`MAX_VECTORS`]; outside 1..=2048 the capability is broken on
    /// purpose.
    pub vectors: u32,
    /// The device honours its own MSI-X table, PBA and the capability's enable/mask bits.
    pub direct_msix: bool,
    /// Table and PBA placement.
    pub layout: Layout,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            vectors: 256,
            direct_msix: false,
            layout: Layout::Normal,
        }
    }
}
