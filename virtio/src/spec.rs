//! Constants of the virtio specification (1.2) that virtio-bindings does not carry: the
//! virtio-pci capability layout, PCI identity and the MSI-X "no vector" value.

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern device IDs are this plus the virtio device type.
pub const VIRTIO_PCI_MODERN_DEVICE_BASE: u16 = 0x1040;
/// Subsystem ID of modern devices (≥ 0x40; QEMU's choice).
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;
/// Revision ID of a modern-only ("non-transitional") device.
pub const VIRTIO_PCI_REVISION: u8 = 1;

/// PCI capability ID of vendor-specific capabilities, which virtio's are.
pub const PCI_CAP_ID_VENDOR: u8 = 0x09;
/// `cfg_type` of the common configuration capability.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notification capability.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR status capability.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device-specific configuration capability.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type` of the PCI configuration access capability.
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;

/// Length of `struct virtio_pci_cap`.
pub const VIRTIO_PCI_CAP_LEN: u8 = 16;
/// Length of `struct virtio_pci_notify_cap` (the cap plus `notify_off_multiplier`).
pub const VIRTIO_PCI_NOTIFY_CAP_LEN: u8 = 20;
/// Length of `struct virtio_pci_cfg_cap` (the cap plus `pci_cfg_data[4]`).
pub const VIRTIO_PCI_CFG_CAP_LEN: u8 = 20;
/// Offset of `cap_len` in a virtio capability.
pub const VIRTIO_PCI_CAP_LEN_OFFSET: u16 = 2;
/// Offset of `cfg_type`.
pub const VIRTIO_PCI_CAP_CFG_TYPE: u16 = 3;
/// Offset of `bar`.
pub const VIRTIO_PCI_CAP_BAR: u16 = 4;
/// Offset of `id`.
pub const VIRTIO_PCI_CAP_ID: u16 = 5;
/// Offset of `offset` (le32).
pub const VIRTIO_PCI_CAP_OFFSET: u16 = 8;
/// Offset of `length` (le32).
pub const VIRTIO_PCI_CAP_LENGTH: u16 = 12;
/// Offset of `notify_off_multiplier` in the notify capability.
pub const VIRTIO_PCI_NOTIFY_MULTIPLIER: u16 = 16;
/// Offset of `pci_cfg_data` in the PCI configuration access capability.
pub const VIRTIO_PCI_CFG_DATA: u16 = 16;

/// "No MSI-X vector" in `config_msix_vector` / `queue_msix_vector`.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// ISR status bit 0: a queue interrupt.
pub const VIRTIO_ISR_QUEUE: u8 = 1 << 0;
/// ISR status bit 1: a configuration change.
pub const VIRTIO_ISR_CONFIG: u8 = 1 << 1;

/// Sector size of virtio-blk requests.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;

/// A feature bit as a mask.
pub const fn feature(bit: u32) -> u64 {
    1u64 << bit
}
