//! Emulated devices that sit behind irvmm's PIO and MMIO buses.
//!
//! Every device implements [`BusDevice`]; the VMM's buses dispatch guest accesses to it
//! with the offset from the device's base. Devices never talk to KVM directly: interrupts
//! leave through [`IoApicSink`] (the userspace IOAPIC's view of the route table) and
//! requests to stop the VM through [`VmExitHandler`]. Their DMA goes through a
//! [`dma::DmaTranslator`] (the platform's IOMMU, or identity without one).

pub mod acpi_pm;
pub mod dma;
pub mod ioapic;
pub mod legacy;
pub mod pci;
pub mod pvpanic;
pub mod serial;
#[cfg(test)]
mod test_utils;

pub use acpi_pm::AcpiPm1;
pub use ioapic::{IoApic, IoApicSink, RedirectionEntry};
pub use legacy::{DebugExit, ResetControl};
pub use pvpanic::{PvPanic, PvPanicIsa};
pub use serial::{IoApicPinTrigger, SerialDevice, SerialError, TriggerError};

/// A device reachable through a guest bus (port I/O or MMIO).
///
/// `offset` is relative to the base the device was registered at; `data.len()` is the
/// access size (1, 2, 4 or 8). Guest-controlled: implementations must accept any offset
/// and size without panicking, answering unsupported reads with all ones.
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data.len()` bytes at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why the guest asked the VMM to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitRequest {
    /// The guest wrote `status` to the debug-exit port; irvmm exits with that status.
    DebugExit(u8),
    /// ACPI S5 (soft power-off).
    PowerOff,
    /// Platform reset (0xcf9, ACPI reset register); the VMM exits or restarts the guest.
    Reset,
    /// The guest reported a panic through the pvpanic device (its PANICKED event).
    Panic,
}

/// Receives a device's request to end the VM. Implemented by the VMM.
pub trait VmExitHandler: Send + Sync {
    /// Asks the VMM to stop all vCPUs and exit for `request`.
    fn request_exit(&self, request: ExitRequest);
}

/// Fills `data` with all ones: the answer to a read nothing decodes.
pub fn fill_ones(data: &mut [u8]) {
    data.iter_mut().for_each(|b| *b = 0xff);
}

/// The offset byte `lane` of an access at `offset` touches, as seen by a device with 8-bit
/// registers: a wider access reaches consecutive registers one byte at a time, the way the
/// chipset splits it on the ISA bus. `None` when the sum overflows.
pub(crate) fn byte_lane_offset(offset: u64, lane: usize) -> Option<u64> {
    offset.checked_add(u64::try_from(lane).ok()?)
}
