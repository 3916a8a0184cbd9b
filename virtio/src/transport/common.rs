//! The common configuration structure (`struct virtio_pci_common_cfg`, virtio 1.2 §4.1.4.3)
//! as a register file: feature windows, the device status handshake and the per-queue
//! registers behind `queue_select`.
//!
//! Any access size and alignment is accepted: a write changes the bytes it covers and each
//! register it touches takes the merged value (a register's side effect happens when any of
//! its bytes is written); reads past the structure return zeros. What the transport must
//! act on comes back as [`CommonEffect`]s.
//!
//! Status rules: writing 0 resets the device (registers at once, the I/O thread
//! asynchronously: the status reads its old value until the thread has stopped using the
//! queues, then 0); `FEATURES_OK` sticks only when the driver's features are a subset of
//! the device's and include `VIRTIO_F_VERSION_1`; setting `DRIVER_OK` after `FEATURES_OK`
//! starts the device. Feature and queue registers are frozen once the step that uses them
//! has passed (driver features after `FEATURES_OK`, a queue's programming once it is
//! enabled or the device runs). `DEVICE_NEEDS_RESET` stays set until the reset.

use std::sync::Arc;

use log::debug;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};

use crate::interrupt::VirtioInterrupt;
use crate::queue::QueueRegs;
use crate::spec::feature;

/// Size of the structure.
pub const COMMON_CFG_SIZE: u64 = 0x38;

/// `device_feature_select` (le32, RW).
pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
/// `device_feature` (le32, RO).
pub const DEVICE_FEATURE: u64 = 0x04;
/// `driver_feature_select` (le32, RW).
pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
/// `driver_feature` (le32, RW).
pub const DRIVER_FEATURE: u64 = 0x0c;
/// `config_msix_vector` (le16, RW).
pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
/// `num_queues` (le16, RO).
pub const NUM_QUEUES: u64 = 0x12;
/// `device_status` (u8, RW).
pub const DEVICE_STATUS: u64 = 0x14;
/// `config_generation` (u8, RO).
pub const CONFIG_GENERATION: u64 = 0x15;
/// `queue_select` (le16, RW).
pub const QUEUE_SELECT: u64 = 0x16;
/// `queue_size` (le16, RW).
pub const QUEUE_SIZE: u64 = 0x18;
/// `queue_msix_vector` (le16, RW).
pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
/// `queue_enable` (le16, RW).
pub const QUEUE_ENABLE: u64 = 0x1c;
/// `queue_notify_off` (le16, RO).
pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
/// `queue_desc` low dword (le64 as two le32, RW).
pub const QUEUE_DESC_LO: u64 = 0x20;
/// `queue_desc` high dword.
pub const QUEUE_DESC_HI: u64 = 0x24;
/// `queue_driver` low dword.
pub const QUEUE_DRIVER_LO: u64 = 0x28;
/// `queue_driver` high dword.
pub const QUEUE_DRIVER_HI: u64 = 0x2c;
/// `queue_device` low dword.
pub const QUEUE_DEVICE_LO: u64 = 0x30;
/// `queue_device` high dword.
pub const QUEUE_DEVICE_HI: u64 = 0x34;

/// Status bits as bytes.
const S_FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const S_DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const S_NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;

/// The registers, by offset and size.
const FIELDS: [(u64, usize); 19] = [
    (DEVICE_FEATURE_SELECT, 4),
    (DEVICE_FEATURE, 4),
    (DRIVER_FEATURE_SELECT, 4),
    (DRIVER_FEATURE, 4),
    (CONFIG_MSIX_VECTOR, 2),
    (NUM_QUEUES, 2),
    (DEVICE_STATUS, 1),
    (CONFIG_GENERATION, 1),
    (QUEUE_SELECT, 2),
    (QUEUE_SIZE, 2),
    (QUEUE_MSIX_VECTOR, 2),
    (QUEUE_ENABLE, 2),
    (QUEUE_NOTIFY_OFF, 2),
    (QUEUE_DESC_LO, 4),
    (QUEUE_DESC_HI, 4),
    (QUEUE_DRIVER_LO, 4),
    (QUEUE_DRIVER_HI, 4),
    (QUEUE_DEVICE_LO, 4),
    (QUEUE_DEVICE_HI, 4),
];

/// What a write asks the transport to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommonEffect {
    /// The driver wrote 0 to the status: stop the device (registers are reset already).
    Reset,
    /// The driver enabled queue `n`: check its programming.
    QueueEnabled(usize),
    /// The driver set `DRIVER_OK`: start the device with these features.
    DriverOk(u64),
}

/// The common configuration of one device.
#[derive(Debug)]
pub struct CommonConfig {
    device_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    queues: Vec<QueueRegs>,
    interrupt: Arc<VirtioInterrupt>,
    reset_pending: bool,
}

/// Replaces `value`'s bytes that `[offset, offset + data.len())` covers, for a register of
/// `size` bytes at `reg`; `None` when the access misses it.
fn merge(value: u64, reg: u64, size: usize, offset: u64, data: &[u8]) -> Option<u64> {
    let end = offset.checked_add(data.len() as u64)?;
    let reg_end = reg + size as u64;
    if end <= reg || offset >= reg_end {
        return None;
    }
    let mut bytes = value.to_le_bytes();
    for (i, b) in data.iter().enumerate() {
        let at = offset + i as u64;
        if (reg..reg_end).contains(&at) {
            bytes[(at - reg) as usize] = *b;
        }
    }
    Some(u64::from_le_bytes(bytes))
}

impl CommonConfig {
    /// Registers for a device offering `device_features` with queues of the given maximum
    /// sizes; vectors and status live in `interrupt`.
    pub fn new(device_features: u64, queue_sizes: &[u16], interrupt: Arc<VirtioInterrupt>) -> Self {
        CommonConfig {
            device_features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            queues: queue_sizes.iter().map(|&m| QueueRegs::new(m)).collect(),
            interrupt,
            reset_pending: false,
        }
    }

    /// The features the driver wrote.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Queue `n`'s registers.
    pub fn queue(&self, n: usize) -> Option<&QueueRegs> {
        self.queues.get(n)
    }

    /// Every queue's registers.
    pub fn queues(&self) -> &[QueueRegs] {
        &self.queues
    }

    /// The device status as the driver reads it (the old value while a reset is pending).
    pub fn status(&mut self) -> u8 {
        let s = self.interrupt.status();
        if self.reset_pending && s == 0 {
            self.reset_pending = false;
        }
        s
    }

    /// True while a reset the driver asked for has not completed.
    pub fn reset_pending(&mut self) -> bool {
        self.status();
        self.reset_pending
    }

    fn selected(&self) -> Option<&QueueRegs> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn register(&mut self, reg: u64) -> u64 {
        let q = self.selected().copied();
        let qsel = usize::from(self.queue_select);
        let dword = |v: u64, hi: bool| if hi { v >> 32 } else { v & 0xffff_ffff };
        match reg {
            DEVICE_FEATURE_SELECT => u64::from(self.device_feature_select),
            DEVICE_FEATURE => match self.device_feature_select {
                0 => dword(self.device_features, false),
                1 => dword(self.device_features, true),
                _ => 0,
            },
            DRIVER_FEATURE_SELECT => u64::from(self.driver_feature_select),
            DRIVER_FEATURE => match self.driver_feature_select {
                0 => dword(self.driver_features, false),
                1 => dword(self.driver_features, true),
                _ => 0,
            },
            CONFIG_MSIX_VECTOR => u64::from(self.interrupt.config_vector()),
            NUM_QUEUES => self.queues.len() as u64,
            DEVICE_STATUS => u64::from(self.status()),
            CONFIG_GENERATION => 0,
            QUEUE_SELECT => u64::from(self.queue_select),
            QUEUE_SIZE => q.map_or(0, |q| u64::from(q.size)),
            QUEUE_MSIX_VECTOR => u64::from(self.interrupt.queue_vector(qsel)),
            QUEUE_ENABLE => q.map_or(0, |q| u64::from(q.enabled)),
            QUEUE_NOTIFY_OFF => q.map_or(0, |_| qsel as u64),
            QUEUE_DESC_LO | QUEUE_DESC_HI => q.map_or(0, |q| dword(q.desc, reg == QUEUE_DESC_HI)),
            QUEUE_DRIVER_LO | QUEUE_DRIVER_HI => {
                q.map_or(0, |q| dword(q.driver, reg == QUEUE_DRIVER_HI))
            }
            QUEUE_DEVICE_LO | QUEUE_DEVICE_HI => {
                q.map_or(0, |q| dword(q.device, reg == QUEUE_DEVICE_HI))
            }
            _ => 0,
        }
    }

    /// Reads `data.len()` bytes at `offset` (any size; zeros past the structure).
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        for (reg, size) in FIELDS {
            let value = self.register(reg).to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                let Some(at) = offset.checked_add(i as u64) else {
                    break;
                };
                if (reg..reg + size as u64).contains(&at) {
                    *b = value[(at - reg) as usize];
                }
            }
        }
    }

    /// Writes `data` at `offset` (any size); returns what the transport must do.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Vec<CommonEffect> {
        let mut effects = Vec::new();
        for (reg, size) in FIELDS {
            let old = self.register(reg);
            if let Some(value) = merge(old, reg, size, offset, data) {
                self.write_register(reg, value, &mut effects);
            }
        }
        effects
    }

    /// True when the selected queue may still be programmed.
    fn queue_writable(&mut self) -> bool {
        let running = self.status() & S_DRIVER_OK != 0;
        matches!(self.selected(), Some(q) if !q.enabled) && !running
    }

    fn set_dword(target: &mut u64, hi: bool, value: u64) {
        let v = value & 0xffff_ffff;
        *target = if hi {
            (*target & 0xffff_ffff) | (v << 32)
        } else {
            (*target & !0xffff_ffff) | v
        };
    }

    fn write_register(&mut self, reg: u64, value: u64, effects: &mut Vec<CommonEffect>) {
        if self.reset_pending() && reg != DEVICE_STATUS {
            debug!("virtio: register {reg:#x} written while a reset is pending; ignored");
            return;
        }
        let qsel = usize::from(self.queue_select);
        match reg {
            DEVICE_FEATURE_SELECT => self.device_feature_select = value as u32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = value as u32,
            DRIVER_FEATURE => {
                if self.status() & S_FEATURES_OK != 0 {
                    debug!("virtio: driver features written after FEATURES_OK; ignored");
                    return;
                }
                match self.driver_feature_select {
                    0 => Self::set_dword(&mut self.driver_features, false, value),
                    1 => Self::set_dword(&mut self.driver_features, true, value),
                    _ => {}
                }
            }
            CONFIG_MSIX_VECTOR => self.interrupt.set_config_vector(value as u16),
            DEVICE_STATUS => self.write_status(value as u8, effects),
            QUEUE_SELECT => self.queue_select = value as u16,
            QUEUE_MSIX_VECTOR if qsel < self.queues.len() => {
                self.interrupt.set_queue_vector(qsel, value as u16);
            }
            QUEUE_SIZE if self.queue_writable() => {
                if let Some(q) = self.queues.get_mut(qsel) {
                    q.size = value as u16;
                }
            }
            QUEUE_ENABLE if self.queue_writable() => {
                if value as u16 == 1 {
                    if let Some(q) = self.queues.get_mut(qsel) {
                        q.enabled = true;
                        effects.push(CommonEffect::QueueEnabled(qsel));
                    }
                } else {
                    debug!("virtio: queue_enable {value} ignored (only 1 enables)");
                }
            }
            QUEUE_DESC_LO | QUEUE_DESC_HI if self.queue_writable() => {
                if let Some(q) = self.queues.get_mut(qsel) {
                    Self::set_dword(&mut q.desc, reg == QUEUE_DESC_HI, value);
                }
            }
            QUEUE_DRIVER_LO | QUEUE_DRIVER_HI if self.queue_writable() => {
                if let Some(q) = self.queues.get_mut(qsel) {
                    Self::set_dword(&mut q.driver, reg == QUEUE_DRIVER_HI, value);
                }
            }
            QUEUE_DEVICE_LO | QUEUE_DEVICE_HI if self.queue_writable() => {
                if let Some(q) = self.queues.get_mut(qsel) {
                    Self::set_dword(&mut q.device, reg == QUEUE_DEVICE_HI, value);
                }
            }
            // Read-only registers, and queue registers that are frozen.
            _ => {}
        }
    }

    fn write_status(&mut self, value: u8, effects: &mut Vec<CommonEffect>) {
        let old = self.status();
        if value == 0 {
            if old == 0 && !self.reset_pending {
                return;
            }
            self.device_feature_select = 0;
            self.driver_feature_select = 0;
            self.driver_features = 0;
            self.queue_select = 0;
            self.queues.iter_mut().for_each(QueueRegs::reset);
            self.interrupt.reset_vectors();
            self.reset_pending = true;
            effects.push(CommonEffect::Reset);
            return;
        }
        if self.reset_pending {
            debug!("virtio: status {value:#x} written while a reset is pending; ignored");
            return;
        }
        let mut new = value & !S_NEEDS_RESET | (old & S_NEEDS_RESET);
        if new & S_FEATURES_OK != 0 && old & S_FEATURES_OK == 0 {
            let version_1 = feature(VIRTIO_F_VERSION_1);
            let ok = self.driver_features & !self.device_features == 0
                && self.driver_features & version_1 != 0;
            if !ok {
                debug!(
                    "virtio: driver features {:#x} refused (device offers {:#x})",
                    self.driver_features, self.device_features
                );
                new &= !S_FEATURES_OK;
            }
        }
        let starts = new & S_DRIVER_OK != 0 && old & S_DRIVER_OK == 0;
        if starts && new & S_FEATURES_OK == 0 {
            debug!("virtio: DRIVER_OK without FEATURES_OK; the device stays stopped");
            new &= !S_DRIVER_OK;
        }
        self.interrupt.set_status(new);
        if starts && new & S_DRIVER_OK != 0 {
            effects.push(CommonEffect::DriverOk(self.driver_features));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::VIRTIO_MSI_NO_VECTOR;
    use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER};

    const FEATURES: u64 = (1 << 32) | (1 << 9) | (1 << 5);

    fn setup() -> (CommonConfig, Arc<VirtioInterrupt>) {
        let irq = Arc::new(VirtioInterrupt::new(Vec::new(), 2));
        (CommonConfig::new(FEATURES, &[256, 64], irq.clone()), irq)
    }

    fn w32(c: &mut CommonConfig, off: u64, v: u32) -> Vec<CommonEffect> {
        c.write(off, &v.to_le_bytes())
    }
    fn w16(c: &mut CommonConfig, off: u64, v: u16) -> Vec<CommonEffect> {
        c.write(off, &v.to_le_bytes())
    }
    fn w8(c: &mut CommonConfig, off: u64, v: u8) -> Vec<CommonEffect> {
        c.write(off, &[v])
    }
    fn r32(c: &mut CommonConfig, off: u64) -> u32 {
        let mut d = [0; 4];
        c.read(off, &mut d);
        u32::from_le_bytes(d)
    }
    fn r16(c: &mut CommonConfig, off: u64) -> u16 {
        let mut d = [0; 2];
        c.read(off, &mut d);
        u16::from_le_bytes(d)
    }

    const ACK: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8 | VIRTIO_CONFIG_S_DRIVER as u8;

    fn negotiate(c: &mut CommonConfig, features: u64) -> u8 {
        w8(c, DEVICE_STATUS, ACK);
        w32(c, DRIVER_FEATURE_SELECT, 0);
        w32(c, DRIVER_FEATURE, features as u32);
        w32(c, DRIVER_FEATURE_SELECT, 1);
        w32(c, DRIVER_FEATURE, (features >> 32) as u32);
        w8(c, DEVICE_STATUS, ACK | S_FEATURES_OK);
        c.status()
    }

    #[test]
    fn feature_windows() {
        let (mut c, _) = setup();
        assert_eq!(r32(&mut c, DEVICE_FEATURE), FEATURES as u32);
        w32(&mut c, DEVICE_FEATURE_SELECT, 1);
        assert_eq!(r32(&mut c, DEVICE_FEATURE), 1);
        w32(&mut c, DEVICE_FEATURE_SELECT, 2);
        assert_eq!(r32(&mut c, DEVICE_FEATURE), 0);
        assert_eq!(r16(&mut c, NUM_QUEUES), 2);
        // Read-only registers ignore writes.
        w32(&mut c, DEVICE_FEATURE, 0xdead);
        w16(&mut c, NUM_QUEUES, 9);
        assert_eq!(r16(&mut c, NUM_QUEUES), 2);
    }

    #[test]
    fn features_ok_needs_a_subset_with_version_1() {
        let (mut c, _) = setup();
        assert_eq!(negotiate(&mut c, 1 << 9), ACK, "no VERSION_1");
        w8(&mut c, DEVICE_STATUS, 0);
        assert_eq!(c.status(), ACK, "reset pending until the I/O thread acks");
        let (mut c, _) = setup();
        assert_eq!(negotiate(&mut c, FEATURES | 1 << 12), ACK, "not offered");
        let (mut c, _) = setup();
        assert_eq!(negotiate(&mut c, FEATURES), ACK | S_FEATURES_OK);
        // Frozen now.
        w32(&mut c, DRIVER_FEATURE_SELECT, 0);
        w32(&mut c, DRIVER_FEATURE, 0);
        assert_eq!(c.driver_features(), FEATURES);
    }

    #[test]
    fn queue_programming_and_driver_ok() {
        let (mut c, irq) = setup();
        negotiate(&mut c, FEATURES);
        w16(&mut c, QUEUE_SELECT, 1);
        assert_eq!(r16(&mut c, QUEUE_SIZE), 64);
        assert_eq!(r16(&mut c, QUEUE_NOTIFY_OFF), 1);
        w16(&mut c, QUEUE_SIZE, 32);
        // 64-bit addresses as two dwords, and as one qword.
        w32(&mut c, QUEUE_DESC_LO, 0x1000);
        w32(&mut c, QUEUE_DESC_HI, 0x1);
        c.write(QUEUE_DRIVER_LO, &0x2_0000_2000u64.to_le_bytes());
        w32(&mut c, QUEUE_DEVICE_LO, 0x3000);
        w16(&mut c, QUEUE_MSIX_VECTOR, 1);
        assert_eq!(
            r16(&mut c, QUEUE_MSIX_VECTOR),
            VIRTIO_MSI_NO_VECTOR,
            "no vectors exist"
        );
        assert_eq!(
            w16(&mut c, QUEUE_ENABLE, 1),
            vec![CommonEffect::QueueEnabled(1)]
        );
        let q = *c.queue(1).unwrap();
        assert_eq!(
            (q.size, q.desc, q.driver, q.device),
            (32, 0x1_0000_1000, 0x2_0000_2000, 0x3000)
        );
        // Frozen once enabled.
        w16(&mut c, QUEUE_SIZE, 8);
        assert_eq!(c.queue(1).unwrap().size, 32);
        let fx = w8(&mut c, DEVICE_STATUS, ACK | S_FEATURES_OK | S_DRIVER_OK);
        assert_eq!(fx, vec![CommonEffect::DriverOk(FEATURES)]);
        assert_eq!(
            w8(&mut c, DEVICE_STATUS, ACK | S_FEATURES_OK | S_DRIVER_OK),
            vec![]
        );
        // Needs-reset sticks across status writes.
        irq.needs_reset();
        w8(&mut c, DEVICE_STATUS, ACK | S_FEATURES_OK | S_DRIVER_OK);
        assert_ne!(c.status() & S_NEEDS_RESET, 0);
        // Reset: registers at once, status when the I/O thread says so.
        assert_eq!(w8(&mut c, DEVICE_STATUS, 0), vec![CommonEffect::Reset]);
        assert!(c.reset_pending());
        w16(&mut c, QUEUE_SELECT, 1);
        assert_eq!(c.queue(1).unwrap(), &QueueRegs::new(64));
        irq.set_status(0);
        assert!(!c.reset_pending());
        assert_eq!(c.status(), 0);
    }

    #[test]
    fn driver_ok_without_features_ok_does_not_start() {
        let (mut c, _) = setup();
        assert!(w8(&mut c, DEVICE_STATUS, ACK | S_DRIVER_OK).is_empty());
        assert_eq!(c.status(), ACK);
    }

    #[test]
    fn odd_sizes_and_offsets_are_harmless() {
        let (mut c, _) = setup();
        // A 3-byte write across queue_select and queue_size of a nonexistent queue.
        c.write(QUEUE_SELECT, &[7, 0, 0x40]);
        assert_eq!(r16(&mut c, QUEUE_SIZE), 0);
        assert_eq!(r16(&mut c, QUEUE_NOTIFY_OFF), 0);
        w16(&mut c, QUEUE_ENABLE, 1);
        let mut big = [0xaau8; 64];
        c.read(0, &mut big);
        c.read(u64::MAX - 2, &mut big[..8]);
        assert!(c.write(u64::MAX - 1, &[1, 2, 3]).is_empty());
        assert_eq!(r32(&mut c, 0x100), 0);
        // A byte write to the upper half of a queue address dword.
        w16(&mut c, QUEUE_SELECT, 0);
        c.write(QUEUE_DESC_LO + 1, &[0x12]);
        assert_eq!(c.queue(0).unwrap().desc, 0x1200);
    }
}
