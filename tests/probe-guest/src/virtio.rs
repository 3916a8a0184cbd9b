//! A virtio-pci (modern) driver for the probe: finds a device by PCI ID (vendor 0x1af4,
//! device 0x1040 + type), locates its structures through the vendor-specific capabilities
//! (common, notify, ISR, device configuration; any BAR), negotiates features, and runs
//! split virtqueues whose rings and buffers live in static page-aligned arenas.
//!
//! Written from the virtio 1.2 specification so it runs against irvmm's devices and QEMU's
//! (`-device virtio-blk-pci,disable-legacy=on` and friends) alike.

use core::cell::UnsafeCell;
use core::sync::atomic::{fence, Ordering};

use crate::clock::Clock;
use crate::mmio::Mmio;
use crate::msi::MsiX;
use crate::pci::{self, Function};
use crate::report::Text;
use crate::text;

/// Vendor ID of virtio devices.
pub const VENDOR: u16 = 0x1af4;
/// Modern device IDs are this plus the device type.
pub const DEVICE_BASE: u16 = 0x1040;
/// Device type: network card.
pub const TYPE_NET: u16 = 1;
/// Device type: block.
pub const TYPE_BLOCK: u16 = 2;
/// Device type: console.
pub const TYPE_CONSOLE: u16 = 3;
/// Device type: entropy source.
pub const TYPE_RNG: u16 = 4;

/// Capability ID of vendor-specific capabilities.
const CAP_VENDOR: u8 = 0x09;
/// `cfg_type` values.
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
/// Offsets inside a virtio capability.
const CAP_CFG_TYPE: u16 = 3;
const CAP_BAR: u16 = 4;
const CAP_OFFSET: u16 = 8;
const CAP_LENGTH: u16 = 12;
const CAP_NOTIFY_MULTIPLIER: u16 = 16;
/// Capability list walk bound.
const CAP_MAX_CHAIN: usize = 48;

/// Common configuration registers.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const DEVICE_STATUS: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
/// Size of the common configuration structure.
const COMMON_SIZE: u64 = 0x38;

/// Status bits.
pub const S_ACKNOWLEDGE: u8 = 1;
pub const S_DRIVER: u8 = 2;
pub const S_DRIVER_OK: u8 = 4;
pub const S_FEATURES_OK: u8 = 8;

/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_F_ACCESS_PLATFORM`: the device's addresses go through the platform's IOMMU.
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;
/// "No MSI-X vector".
pub const NO_VECTOR: u16 = 0xffff;

/// Descriptor flags.
pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;
/// Available ring flag: no interrupt wanted.
pub const AVAIL_NO_INTERRUPT: u16 = 1;
/// Used ring flag: no notification wanted.
pub const USED_NO_NOTIFY: u16 = 1;

/// Entries per queue the probe uses (at most).
pub const QUEUE_ENTRIES: u16 = 32;
/// Queues the arena holds rings for.
pub const MAX_QUEUES: usize = 8;
/// Bytes of one queue's rings (descriptors, available and used rings in one page).
const RING_BYTES: usize = 4096;
/// Offsets of the rings inside a queue's page.
const AVAIL_AT: u64 = 16 * QUEUE_ENTRIES as u64;
const USED_AT: u64 = 2048;
/// Bytes of the data arena.
pub const DATA_BYTES: usize = 1024 * 1024;
/// How long a reset may take.
const RESET_TIMEOUT_NS: u64 = 1_000_000_000;

/// Page-aligned static memory the device reads and writes.
#[repr(C, align(4096))]
struct Arena<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: only the BSP touches the arenas (volatile accesses), the device only the parts the
// BSP handed it through a queue.
unsafe impl<const N: usize> Sync for Arena<N> {}

static RINGS: Arena<{ RING_BYTES * MAX_QUEUES }> =
    Arena(UnsafeCell::new([0; RING_BYTES * MAX_QUEUES]));
static DATA: Arena<DATA_BYTES> = Arena(UnsafeCell::new([0; DATA_BYTES]));

/// Guest-physical address of queue `index`'s ring page (descriptor table, available and
/// used rings in one 4 KiB page), for a driver that maps it into an IOMMU.
pub fn ring_page(index: u16) -> Result<u64, Text> {
    if usize::from(index) >= MAX_QUEUES {
        return Err(text!("queue {} beyond the probe's {}", index, MAX_QUEUES));
    }
    Ok(RINGS.0.get() as u64 + RING_BYTES as u64 * u64::from(index))
}

/// Guest-physical (identity-mapped) address of data arena offset `offset`.
pub fn data_addr(offset: usize) -> u64 {
    assert!(offset <= DATA_BYTES);
    DATA.0.get() as u64 + offset as u64
}

/// Writes `value` at data arena offset `offset`.
pub fn data_write(offset: usize, value: u8) {
    assert!(offset < DATA_BYTES);
    // SAFETY: in bounds (asserted); see the `Sync` note.
    unsafe { core::ptr::write_volatile((DATA.0.get() as *mut u8).add(offset), value) }
}

/// Reads data arena offset `offset`.
pub fn data_read(offset: usize) -> u8 {
    assert!(offset < DATA_BYTES);
    // SAFETY: in bounds (asserted); see the `Sync` note.
    unsafe { core::ptr::read_volatile((DATA.0.get() as *const u8).add(offset)) }
}

/// Reads the `T` at physical address `addr` (inside an arena).
fn load<T: Copy>(addr: u64) -> T {
    // SAFETY: callers pass addresses inside the ring arena, aligned for `T`.
    unsafe { core::ptr::read_volatile(addr as *const T) }
}

/// Writes the `T` at physical address `addr` (inside an arena).
fn store<T: Copy>(addr: u64, value: T) {
    // SAFETY: as in `load`.
    unsafe { core::ptr::write_volatile(addr as *mut T, value) }
}

/// One buffer of a request: address, length, device-writable.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// The device writes it.
    pub write: bool,
}

/// A virtio device on PCI.
pub struct Device {
    /// Its PCI function.
    pub function: Function,
    common: Mmio,
    notify_base: u64,
    notify_multiplier: u32,
    config: Mmio,
    /// Its MSI-X capability.
    pub msix: MsiX,
}

/// One split virtqueue.
pub struct Virtq {
    /// Queue index.
    pub index: u16,
    /// Entries.
    pub size: u16,
    ring: u64,
    notify: Mmio,
    notify_at: u64,
    next_avail: u16,
    last_used: u16,
}

impl Device {
    /// The first function with virtio device type `kind`, memory decoding and bus
    /// mastering on, its structures located.
    pub fn find(kind: u16) -> Result<Device, Text> {
        let id = DEVICE_BASE + kind;
        let function = pci::find_on_bus0(VENDOR, id)
            .ok_or_else(|| text!("no virtio device {:04x}:{:04x} on bus 0", VENDOR, id))?;
        function.enable_command(pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER);
        let (mut common, mut notify, mut isr, mut config) = (None, None, None, None);
        let mut multiplier = 0;
        let mut at = function
            .find_capability(CAP_VENDOR)?
            .ok_or_else(|| text!("{} has no virtio capabilities", function))?;
        for _ in 0..CAP_MAX_CHAIN {
            if function.read8(at) == CAP_VENDOR {
                let kind = function.read8(at + CAP_CFG_TYPE);
                let bar = function.read8(at + CAP_BAR);
                let offset = u64::from(function.read32(at + CAP_OFFSET));
                let length = u64::from(function.read32(at + CAP_LENGTH));
                let place = || -> Result<(u64, u64), Text> {
                    Ok((function.memory_bar(bar)? + offset, length))
                };
                match kind {
                    CFG_COMMON if common.is_none() => common = Some(place()?),
                    CFG_NOTIFY if notify.is_none() => {
                        notify = Some(place()?);
                        multiplier = function.read32(at + CAP_NOTIFY_MULTIPLIER);
                    }
                    CFG_ISR if isr.is_none() => isr = Some(place()?),
                    CFG_DEVICE if config.is_none() => config = Some(place()?),
                    _ => {}
                }
            }
            let next = function.read8(at + 1) & 0xfc;
            if next == 0 {
                break;
            }
            at = u16::from(next);
        }
        let missing = |what| text!("{} lacks the {} capability", function, what);
        let (cb, cl) = common.ok_or_else(|| missing("common"))?;
        let (nb, _) = notify.ok_or_else(|| missing("notify"))?;
        isr.ok_or_else(|| missing("ISR"))?;
        let (db, dl) = config.unwrap_or((cb, 8));
        if cl < COMMON_SIZE {
            return Err(text!("{} common configuration is {} bytes", function, cl));
        }
        Ok(Device {
            function,
            common: Mmio::new("virtio common", cb, COMMON_SIZE)?,
            notify_base: nb,
            notify_multiplier: multiplier,
            config: Mmio::new("virtio device config", db, dl.max(8).next_multiple_of(8))?,
            msix: MsiX::find(function)?,
        })
    }

    /// The device status.
    pub fn status(&self) -> u8 {
        self.common.read8(DEVICE_STATUS)
    }

    /// Sets the device status.
    pub fn set_status(&self, status: u8) {
        self.common.write8(DEVICE_STATUS, status);
    }

    /// Resets the device and waits until the status reads 0.
    pub fn reset(&self, clock: &Clock) -> Result<(), Text> {
        self.set_status(0);
        let end = clock.now_ns() + RESET_TIMEOUT_NS;
        while self.status() != 0 {
            if clock.now_ns() > end {
                return Err(text!(
                    "{}: status 0x{:x} after reset",
                    self.function,
                    self.status()
                ));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// The device's features.
    pub fn device_features(&self) -> u64 {
        self.common.write32(DEVICE_FEATURE_SELECT, 0);
        let lo = u64::from(self.common.read32(DEVICE_FEATURE));
        self.common.write32(DEVICE_FEATURE_SELECT, 1);
        let hi = u64::from(self.common.read32(DEVICE_FEATURE));
        lo | hi << 32
    }

    /// Reset, ACKNOWLEDGE, DRIVER, then accepts `wanted & offered` (VERSION_1 required) and
    /// sets FEATURES_OK; returns the accepted features.
    pub fn init(&self, clock: &Clock, wanted: u64) -> Result<u64, Text> {
        self.reset(clock)?;
        self.set_status(S_ACKNOWLEDGE);
        self.set_status(S_ACKNOWLEDGE | S_DRIVER);
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            return Err(text!("{} does not offer VIRTIO_F_VERSION_1", self.function));
        }
        let accepted = (wanted | F_VERSION_1) & offered;
        self.common.write32(DRIVER_FEATURE_SELECT, 0);
        self.common.write32(DRIVER_FEATURE, accepted as u32);
        self.common.write32(DRIVER_FEATURE_SELECT, 1);
        self.common.write32(DRIVER_FEATURE, (accepted >> 32) as u32);
        self.set_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if self.status() & S_FEATURES_OK == 0 {
            return Err(text!("{} refused features 0x{:x}", self.function, accepted));
        }
        Ok(accepted)
    }

    /// Configuration changes go to MSI-X vector `vector`; returns what the device kept.
    pub fn set_config_vector(&self, vector: u16) -> u16 {
        self.common.write16(CONFIG_MSIX_VECTOR, vector);
        self.common.read16(CONFIG_MSIX_VECTOR)
    }

    /// Sets up queue `index` with at most [`QUEUE_ENTRIES`] entries (power of two) whose
    /// interrupts go to MSI-X vector `vector`, and enables it.
    pub fn setup_queue(&self, index: u16, vector: u16) -> Result<Virtq, Text> {
        let q = self.setup_queue_unenabled(index, vector)?;
        self.common.write16(QUEUE_ENABLE, 1);
        Ok(q)
    }

    /// [`Device::setup_queue`] with the ring page given to the device as `iova` (where
    /// the driver mapped [`ring_page`] in the IOMMU); the probe itself keeps using the
    /// guest-physical page.
    pub fn setup_queue_iova(&self, index: u16, vector: u16, iova: u64) -> Result<Virtq, Text> {
        let q = self.setup_queue_unenabled_at(index, vector, Some(iova))?;
        self.common.write16(QUEUE_ENABLE, 1);
        Ok(q)
    }

    /// [`Device::setup_queue`] without the final enable.
    fn setup_queue_unenabled(&self, index: u16, vector: u16) -> Result<Virtq, Text> {
        self.setup_queue_unenabled_at(index, vector, None)
    }

    /// [`Device::setup_queue_unenabled`], the rings at `device_addr` as the device sees
    /// them (their guest-physical address when `None`).
    fn setup_queue_unenabled_at(
        &self,
        index: u16,
        vector: u16,
        device_addr: Option<u64>,
    ) -> Result<Virtq, Text> {
        let ring = ring_page(index)?;
        self.common.write16(QUEUE_SELECT, index);
        let max = self.common.read16(QUEUE_SIZE);
        if max == 0 {
            return Err(text!("{} has no queue {}", self.function, index));
        }
        let size = max.min(QUEUE_ENTRIES);
        for i in (0..RING_BYTES as u64).step_by(8) {
            store::<u64>(ring + i, 0);
        }
        self.common.write16(QUEUE_SIZE, size);
        self.common.write16(QUEUE_MSIX_VECTOR, vector);
        if vector != NO_VECTOR && self.common.read16(QUEUE_MSIX_VECTOR) != vector {
            return Err(text!(
                "{} queue {} refused MSI-X vector {}",
                self.function,
                index,
                vector
            ));
        }
        let seen = device_addr.unwrap_or(ring);
        self.common.write64(QUEUE_DESC, seen);
        self.common.write64(QUEUE_DRIVER, seen + AVAIL_AT);
        self.common.write64(QUEUE_DEVICE, seen + USED_AT);
        let off = u64::from(self.common.read16(QUEUE_NOTIFY_OFF));
        // The notify address is 2-byte aligned at least; map the qword around it.
        let addr = self.notify_base + off * u64::from(self.notify_multiplier);
        let notify = Mmio::new("virtio notify", addr & !7, 8)?;
        let notify_at = addr & 7;
        Ok(Virtq {
            index,
            size,
            ring,
            notify,
            notify_at,
            next_avail: 0,
            last_used: 0,
        })
    }

    /// Programs queue `index` with `size` entries exactly as given (a hostile driver may
    /// write any size) and enables it; returns the queue (its ring holds
    /// [`QUEUE_ENTRIES`] entries at most).
    pub fn setup_queue_sized(&self, index: u16, vector: u16, size: u16) -> Result<Virtq, Text> {
        let mut q = self.setup_queue_unenabled(index, vector)?;
        self.common.write16(QUEUE_SIZE, size);
        q.size = size.clamp(1, QUEUE_ENTRIES);
        self.common.write16(QUEUE_ENABLE, 1);
        Ok(q)
    }

    /// Writes `data` (1, 2, 4 or 8 bytes) into the device configuration at `offset`.
    pub fn config_write(&self, offset: u64, data: u64, size: u64) {
        match size {
            1 => self.config.write8(offset, data as u8),
            2 => self.config.write16(offset, data as u16),
            4 => self.config.write32(offset, data as u32),
            _ => self.config.write64(offset, data),
        }
    }

    /// Notifies queue `index` through the notification area (whatever the queue's state).
    pub fn notify_raw(&self, index: u16) -> Result<(), Text> {
        let addr = self.notify_base + u64::from(index) * u64::from(self.notify_multiplier);
        Mmio::new("virtio notify", addr & !7, 8)?.write16(addr & 7, index);
        Ok(())
    }

    /// Sets DRIVER_OK.
    pub fn driver_ok(&self) {
        self.set_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    }

    /// Reads the 64-bit device configuration field at `offset` as two dwords.
    pub fn config64(&self, offset: u64) -> u64 {
        u64::from(self.config.read32(offset)) | u64::from(self.config.read32(offset + 4)) << 32
    }

    /// Reads the 16-bit device configuration field at `offset`.
    pub fn config16(&self, offset: u64) -> u16 {
        self.config.read16(offset)
    }

    /// Reads the device configuration byte at `offset`.
    pub fn config8(&self, offset: u64) -> u8 {
        self.config.read8(offset)
    }
}

impl Virtq {
    fn desc(&self, i: u16) -> u64 {
        self.ring + 16 * u64::from(i % self.size)
    }

    /// Makes `bufs` available as one chain whose descriptors start at `first` (callers keep
    /// chains in flight apart); returns the head.
    pub fn submit(&mut self, first: u16, bufs: &[Buf]) -> u16 {
        for (k, b) in bufs.iter().enumerate() {
            let i = first.wrapping_add(k as u16) % self.size;
            let d = self.desc(i);
            let mut flags = if b.write { DESC_WRITE } else { 0 };
            if k + 1 < bufs.len() {
                flags |= DESC_NEXT;
            }
            store::<u64>(d, b.addr);
            store::<u32>(d + 8, b.len);
            store::<u16>(d + 12, flags);
            store::<u16>(d + 14, (i + 1) % self.size);
        }
        let head = first % self.size;
        let avail = self.ring + AVAIL_AT;
        store::<u16>(avail + 4 + 2 * u64::from(self.next_avail % self.size), head);
        fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        store::<u16>(avail + 2, self.next_avail);
        fence(Ordering::SeqCst);
        head
    }

    /// Writes descriptor `i` as given (hostile chains).
    pub fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc(i);
        store::<u64>(d, addr);
        store::<u32>(d + 8, len);
        store::<u16>(d + 12, flags);
        store::<u16>(d + 14, next);
    }

    /// Makes `head` available without touching descriptors.
    pub fn push_head(&mut self, head: u16) {
        let avail = self.ring + AVAIL_AT;
        store::<u16>(avail + 4 + 2 * u64::from(self.next_avail % self.size), head);
        fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        store::<u16>(avail + 2, self.next_avail);
        fence(Ordering::SeqCst);
    }

    /// Claims `ahead` more available entries than were written (a runaway index).
    pub fn runaway_avail(&self, ahead: u16) {
        store::<u16>(
            self.ring + AVAIL_AT + 2,
            self.next_avail.wrapping_add(ahead),
        );
        fence(Ordering::SeqCst);
    }

    /// Asks for no interrupts (polling) or for them again.
    pub fn set_no_interrupt(&self, quiet: bool) {
        store::<u16>(
            self.ring + AVAIL_AT,
            if quiet { AVAIL_NO_INTERRUPT } else { 0 },
        );
    }

    /// Notifies the device.
    pub fn kick(&self) {
        fence(Ordering::SeqCst);
        self.notify.write16(self.notify_at, self.index);
    }

    /// False while the device asks not to be notified (`VRING_USED_F_NO_NOTIFY`).
    pub fn wants_kick(&self) -> bool {
        fence(Ordering::SeqCst);
        load::<u16>(self.ring + USED_AT) & USED_NO_NOTIFY == 0
    }

    /// The used index the device published.
    pub fn used_published(&self) -> u16 {
        fence(Ordering::SeqCst);
        load(self.ring + USED_AT + 2)
    }

    /// The index of the next used entry [`Virtq::pop_used`] returns.
    pub fn used_seen(&self) -> u16 {
        self.last_used
    }

    /// The next used entry, if the device produced one: (head, length).
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let used = self.ring + USED_AT;
        fence(Ordering::SeqCst);
        let idx: u16 = load(used + 2);
        if idx == self.last_used {
            return None;
        }
        let e = used + 4 + 8 * u64::from(self.last_used % self.size);
        let id: u32 = load(e);
        let len: u32 = load(e + 4);
        self.last_used = self.last_used.wrapping_add(1);
        Some((id as u16, len))
    }
}
