//! Where everything lives in the device's one BAR and in configuration space.
//!
//! | BAR 0 offset | size | what |
//! |---|---|---|
//! | 0x0000 | 0x1000 | common configuration (0x38 bytes used) |
//! | 0x1000 | 0x1000 | ISR status (1 byte, read to clear) |
//! | 0x2000 | 0x1000 | device-specific configuration |
//! | 0x3000 | 0x1000 | notifications: queue `q` at `0x3000 + 4 q` (multiplier 4) |
//! | 0x4000 | 0x2000 | MSI-X table (16 bytes per vector) |
//! | 0x6000 | 0x2000 | MSI-X pending-bit array |
//!
//! The BAR is 64-bit, non-prefetchable, 32 KiB.

/// The BAR holding every structure.
pub const VIRTIO_BAR: u8 = 0;
/// Size of the BAR.
pub const BAR_SIZE: u64 = 0x8000;
/// Common configuration.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Size reserved for the common configuration.
pub const COMMON_SIZE: u64 = 0x1000;
/// ISR status.
pub const ISR_OFFSET: u64 = 0x1000;
/// Size reserved for the ISR status.
pub const ISR_SIZE: u64 = 0x1000;
/// Device-specific configuration.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Size reserved for the device-specific configuration.
pub const DEVICE_SIZE: u64 = 0x1000;
/// Notification area.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Size reserved for notifications.
pub const NOTIFY_SIZE: u64 = 0x1000;
/// `notify_off_multiplier`: bytes between two queues' notify addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// MSI-X table.
pub const MSIX_TABLE_OFFSET: u32 = 0x4000;
/// MSI-X PBA.
pub const MSIX_PBA_OFFSET: u32 = 0x6000;
/// Most MSI-X vectors the table area holds.
pub const MAX_VECTORS: u16 = 0x2000 / 16;
/// Most queues the notification area holds.
pub const MAX_QUEUES: usize = (NOTIFY_SIZE / NOTIFY_MULTIPLIER as u64) as usize;

/// The region of BAR 0 an offset falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// Common configuration, at this offset inside it.
    Common(u64),
    /// ISR status.
    Isr(u64),
    /// Device configuration.
    Device(u64),
    /// Notifications.
    Notify(u64),
    /// MSI-X table or PBA (the capability decodes the BAR offset itself).
    Msix,
    /// Beyond the BAR.
    Outside,
}

/// Classifies BAR 0 offset `offset`.
pub fn region(offset: u64) -> Region {
    match offset {
        o if o < COMMON_OFFSET + COMMON_SIZE => Region::Common(o - COMMON_OFFSET),
        o if o < ISR_OFFSET + ISR_SIZE => Region::Isr(o - ISR_OFFSET),
        o if o < DEVICE_OFFSET + DEVICE_SIZE => Region::Device(o - DEVICE_OFFSET),
        o if o < NOTIFY_OFFSET + NOTIFY_SIZE => Region::Notify(o - NOTIFY_OFFSET),
        o if o < BAR_SIZE => Region::Msix,
        _ => Region::Outside,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions() {
        assert_eq!(region(0x14), Region::Common(0x14));
        assert_eq!(region(0x1000), Region::Isr(0));
        assert_eq!(region(0x2008), Region::Device(8));
        assert_eq!(region(0x3004), Region::Notify(4));
        assert_eq!(region(0x4010), Region::Msix);
        assert_eq!(region(0x7fff), Region::Msix);
        assert_eq!(region(0x8000), Region::Outside);
        assert_eq!(region(u64::MAX), Region::Outside);
        assert_eq!(MAX_VECTORS, 512);
        assert_eq!(MAX_QUEUES, 1024);
    }
}
