//! The MSI capability (ID 0x05): 64-bit address, 1 to 32 vectors, optional per-vector
//! masking.
//!
//! Layout (offsets from the capability):
//!
//! | off | register | guest access |
//! |---|---|---|
//! | 0x00 | ID 0x05, next pointer | read only |
//! | 0x02 | message control | enable (bit 0) and multiple message enable (bits 6:4) writable; multiple message capable (3:1), 64-bit (7), per-vector masking (8) read only |
//! | 0x04 | message address, bits 31:2 | read-write (bits 1:0 read 0) |
//! | 0x08 | message upper address | read-write |
//! | 0x0c | message data (16 bits) | read-write; 0x0e reads 0 |
//! | 0x10 | mask bits | one writable bit per capable vector (per-vector masking only) |
//! | 0x14 | pending bits | read only (per-vector masking only) |
//!
//! With multiple message enable = `k` (clamped to the capable count), vectors `0..2^k` are
//! enabled and vector `i` sends the programmed data with its low `k` bits replaced by `i`.
//! Routes and masking follow the rules in the [`pci` module documentation](super): the
//! model keeps the configuration space registers as the single copy of guest state and
//! re-reads them in [`MsiCapability::config_written`] after every configuration write.

use std::sync::Arc;

use log::debug;
use virtual_iommu::MsiMessage;

use super::config::PciConfigSpace;
use super::{emit_routes, routable, MsiSink, PciError};

/// Capability ID of MSI.
pub const PCI_CAP_ID_MSI: u8 = 0x05;
/// Offset of the message control register.
pub const MSI_CONTROL: u16 = 0x02;
/// Offset of the message address (low dword).
pub const MSI_ADDRESS_LO: u16 = 0x04;
/// Offset of the message upper address (64-bit capability).
pub const MSI_ADDRESS_HI: u16 = 0x08;
/// Offset of the message data (64-bit capability).
pub const MSI_DATA: u16 = 0x0c;
/// Offset of the mask bits (64-bit capability with per-vector masking).
pub const MSI_MASK_BITS: u16 = 0x10;
/// Offset of the pending bits (64-bit capability with per-vector masking).
pub const MSI_PENDING_BITS: u16 = 0x14;
/// Length of a 64-bit capability without per-vector masking.
pub const MSI_CAP_LEN_64: u8 = 0x10;
/// Length of a 64-bit capability with per-vector masking.
pub const MSI_CAP_LEN_64_MASKABLE: u8 = 0x18;

/// Message control: MSI enable.
pub const MSI_CTRL_ENABLE: u16 = 1 << 0;
/// Message control: shift of multiple message capable (log2 of the capable count).
pub const MSI_CTRL_MMC_SHIFT: u32 = 1;
/// Message control: shift of multiple message enable (log2 of the enabled count).
pub const MSI_CTRL_MME_SHIFT: u32 = 4;
/// Message control: mask of multiple message enable.
pub const MSI_CTRL_MME_MASK: u16 = 0x7 << MSI_CTRL_MME_SHIFT;
/// Message control: 64-bit address capable.
pub const MSI_CTRL_64BIT: u16 = 1 << 7;
/// Message control: per-vector masking capable.
pub const MSI_CTRL_PER_VECTOR_MASK: u16 = 1 << 8;
/// Writable bits of the message address: the low two are reserved (dword aligned).
pub const MSI_ADDRESS_LO_WRITABLE: u32 = !0x3;
/// Writable bits of the 16-bit message data.
pub const MSI_DATA_WRITABLE: u16 = 0xffff;
/// Most vectors an MSI function can have.
pub const MSI_MAX_VECTORS: u16 = 32;

/// The MSI capability's behaviour: routes, masking, pending bits and triggering.
pub struct MsiCapability {
    offset: u16,
    /// Capable vector count (power of two, 1..=32).
    vectors: u16,
    maskable: bool,
    /// The route last given to the sink, per capable vector.
    routes: Vec<Option<MsiMessage>>,
    /// Vectors enabled (0 while MSI is disabled).
    enabled_count: u16,
    mask: u32,
    pending: u32,
    sink: Arc<dyn MsiSink>,
}

impl std::fmt::Debug for MsiCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsiCapability")
            .field("offset", &self.offset)
            .field("vectors", &self.vectors)
            .field("maskable", &self.maskable)
            .field("enabled_count", &self.enabled_count)
            .field("mask", &format_args!("{:#x}", self.mask))
            .field("pending", &format_args!("{:#x}", self.pending))
            .finish_non_exhaustive()
    }
}

impl MsiCapability {
    /// Adds a 64-bit MSI capability with `vectors` vectors (a power of two, 1..=32) to
    /// `config`, with per-vector masking when `per_vector_mask`. MSI starts disabled; no
    /// sink call is made.
    pub fn new(
        config: &mut PciConfigSpace,
        vectors: u16,
        per_vector_mask: bool,
        sink: Arc<dyn MsiSink>,
    ) -> Result<Self, PciError> {
        if !vectors.is_power_of_two() || vectors > MSI_MAX_VECTORS {
            return Err(PciError::InvalidVectorCount(vectors));
        }
        let len = if per_vector_mask {
            MSI_CAP_LEN_64_MASKABLE
        } else {
            MSI_CAP_LEN_64
        };
        let offset = config.add_capability(PCI_CAP_ID_MSI, len)?;
        let mmc = vectors.trailing_zeros() as u16;
        let mut control = (mmc << MSI_CTRL_MMC_SHIFT) | MSI_CTRL_64BIT;
        if per_vector_mask {
            control |= MSI_CTRL_PER_VECTOR_MASK;
        }
        config.set_u16(offset + MSI_CONTROL, control);
        config.set_writable_u16(offset + MSI_CONTROL, MSI_CTRL_ENABLE | MSI_CTRL_MME_MASK);
        config.set_writable_u32(offset + MSI_ADDRESS_LO, MSI_ADDRESS_LO_WRITABLE);
        config.set_writable_u32(offset + MSI_ADDRESS_HI, u32::MAX);
        config.set_writable_u16(offset + MSI_DATA, MSI_DATA_WRITABLE);
        if per_vector_mask {
            config.set_writable_u32(offset + MSI_MASK_BITS, vector_bits(vectors));
        }
        Ok(MsiCapability {
            offset,
            vectors,
            maskable: per_vector_mask,
            routes: vec![None; usize::from(vectors)],
            enabled_count: 0,
            mask: 0,
            pending: 0,
            sink,
        })
    }

    /// The capability's offset in configuration space.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// The number of vectors the function is capable of.
    pub fn vectors(&self) -> u16 {
        self.vectors
    }

    /// True when the guest enabled MSI.
    pub fn is_enabled(&self) -> bool {
        self.enabled_count != 0
    }

    /// The number of enabled vectors (0 while disabled).
    pub fn enabled_vectors(&self) -> u16 {
        self.enabled_count
    }

    /// True when `vector` is masked by the per-vector mask bits.
    pub fn is_masked(&self, vector: u16) -> bool {
        self.mask & vector_bit(vector) != 0
    }

    /// True when `vector` was raised while masked and not delivered yet.
    pub fn is_pending(&self, vector: u16) -> bool {
        self.pending & vector_bit(vector) != 0
    }

    /// The route the sink currently holds for `vector`.
    pub fn route(&self, vector: u16) -> Option<MsiMessage> {
        self.routes.get(usize::from(vector)).copied().flatten()
    }

    /// The message `vector` sends per the registers in `config` (whether or not MSI is
    /// enabled), or `None` when `vector` is not capable.
    pub fn message(&self, config: &PciConfigSpace, vector: u16) -> Option<MsiMessage> {
        if vector >= self.vectors {
            return None;
        }
        let count = self.enabled_count.max(1);
        let base = u32::from(config.read_u16(self.offset + MSI_DATA));
        let vector_bits = u32::from(count - 1);
        Some(MsiMessage {
            address_lo: config.read_u32(self.offset + MSI_ADDRESS_LO),
            address_hi: config.read_u32(self.offset + MSI_ADDRESS_HI),
            data: (base & !vector_bits) | (u32::from(vector) & vector_bits),
        })
    }

    /// Brings routes and masking up to date with the registers after a configuration
    /// write (any write: unchanged state produces no sink call), then delivers pending
    /// vectors that became deliverable.
    pub fn config_written(&mut self, config: &mut PciConfigSpace) {
        let control = config.read_u16(self.offset + MSI_CONTROL);
        self.enabled_count = if control & MSI_CTRL_ENABLE != 0 {
            let mme = (control & MSI_CTRL_MME_MASK) >> MSI_CTRL_MME_SHIFT;
            (1u16 << mme).min(self.vectors)
        } else {
            0
        };
        let mut changes = Vec::new();
        for vector in 0..self.vectors {
            let desired = if vector < self.enabled_count {
                self.message(config, vector).and_then(routable)
            } else {
                None
            };
            if let Some(route) = self.routes.get_mut(usize::from(vector)) {
                if *route != desired {
                    *route = desired;
                    changes.push((vector, desired));
                }
            }
        }
        emit_routes(self.sink.as_ref(), &changes);
        if self.maskable {
            let old = self.mask;
            self.mask = config.read_u32(self.offset + MSI_MASK_BITS) & vector_bits(self.vectors);
            if old != self.mask {
                let flips: Vec<_> = (0..self.vectors)
                    .filter(|v| (old ^ self.mask) & vector_bit(*v) != 0)
                    .map(|v| (v, self.is_masked(v)))
                    .collect();
                self.deliver_pending(config);
                self.sink.set_vectors_masked(&flips);
                return;
            }
        }
        self.deliver_pending(config);
    }

    /// Tells the sink every vector's mask (once, when a sink that cares is connected).
    pub fn announce_masks(&self) {
        let all: Vec<_> = (0..self.vectors).map(|v| (v, self.is_masked(v))).collect();
        self.sink.set_vectors_masked(&all);
    }

    /// Raises `vector`: delivered at once when enabled and unmasked, recorded as pending
    /// when masked, dropped when MSI is disabled or the vector is not enabled. Returns true
    /// when the sink was asked to deliver.
    pub fn trigger(&mut self, config: &mut PciConfigSpace, vector: u16) -> bool {
        if vector >= self.enabled_count {
            debug!("msi: vector {vector} raised while not enabled; dropped");
            return false;
        }
        if self.is_masked(vector) {
            self.pending |= vector_bit(vector);
            self.sync_pending(config);
            return false;
        }
        self.deliver(vector)
    }

    /// Asks the sink to deliver `vector` if it has a route.
    fn deliver(&self, vector: u16) -> bool {
        if self.route(vector).is_some() {
            self.sink.trigger_vector(vector);
            true
        } else {
            debug!("msi: vector {vector} has no interrupt address; dropped");
            false
        }
    }

    /// Delivers (and clears) every pending vector that is enabled and unmasked.
    fn deliver_pending(&mut self, config: &mut PciConfigSpace) {
        if self.pending == 0 {
            return;
        }
        for vector in 0..self.enabled_count {
            if self.is_pending(vector) && !self.is_masked(vector) {
                self.pending &= !vector_bit(vector);
                self.deliver(vector);
            }
        }
        self.sync_pending(config);
    }

    /// Mirrors the pending bits into the read-only pending register.
    fn sync_pending(&self, config: &mut PciConfigSpace) {
        if self.maskable {
            config.set_u32(self.offset + MSI_PENDING_BITS, self.pending);
        }
    }
}

/// The bit of `vector` in the mask and pending registers (0 when out of range).
fn vector_bit(vector: u16) -> u32 {
    1u32.checked_shl(u32::from(vector)).unwrap_or(0)
}

/// The mask-register bits of `count` vectors.
fn vector_bits(count: u16) -> u32 {
    u32::MAX >> (u32::BITS - u32::from(count.min(MSI_MAX_VECTORS)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{PciHeader, PCI_CAPABILITY_LIST};
    use crate::pci::testing::{MsiCall, RecordingMsiSink};

    const ADDR: u32 = 0xfee0_1000;

    fn setup(
        vectors: u16,
        maskable: bool,
    ) -> (PciConfigSpace, MsiCapability, Arc<RecordingMsiSink>) {
        let mut config = PciConfigSpace::new(&PciHeader::default());
        let sink = RecordingMsiSink::new();
        let msi = MsiCapability::new(&mut config, vectors, maskable, sink.clone()).unwrap();
        (config, msi, sink)
    }

    fn write(config: &mut PciConfigSpace, msi: &mut MsiCapability, reg: u16, data: &[u8]) {
        config.write(msi.offset() + reg, data);
        msi.config_written(config);
    }

    fn program(config: &mut PciConfigSpace, msi: &mut MsiCapability, data: u16) {
        write(config, msi, MSI_ADDRESS_LO, &ADDR.to_le_bytes());
        write(config, msi, MSI_ADDRESS_HI, &0u32.to_le_bytes());
        write(config, msi, MSI_DATA, &data.to_le_bytes());
    }

    fn msg(data: u32) -> MsiMessage {
        MsiMessage {
            address_lo: ADDR,
            address_hi: 0,
            data,
        }
    }

    #[test]
    fn capability_layout_and_read_only_bits() {
        let (mut config, mut msi, sink) = setup(4, true);
        assert_eq!(config.read_u8(PCI_CAPABILITY_LIST), 0x40);
        assert_eq!(config.find_capability(PCI_CAP_ID_MSI), Some(msi.offset()));
        let control = config.read_u16(msi.offset() + MSI_CONTROL);
        assert_eq!(
            control,
            (2 << 1) | MSI_CTRL_64BIT | MSI_CTRL_PER_VECTOR_MASK
        );
        // All ones: only enable, MME, address bits, data, 4 mask bits take.
        for reg in [
            MSI_CONTROL,
            MSI_ADDRESS_LO,
            MSI_ADDRESS_HI,
            MSI_DATA,
            MSI_MASK_BITS,
            MSI_PENDING_BITS,
        ] {
            config.write(msi.offset() + reg, &u32::MAX.to_le_bytes());
        }
        assert_eq!(
            config.read_u16(msi.offset() + MSI_CONTROL),
            control | MSI_CTRL_ENABLE | MSI_CTRL_MME_MASK
        );
        assert_eq!(config.read_u32(msi.offset() + MSI_ADDRESS_LO), 0xffff_fffc);
        assert_eq!(config.read_u32(msi.offset() + MSI_ADDRESS_HI), u32::MAX);
        assert_eq!(config.read_u32(msi.offset() + MSI_DATA), 0xffff);
        assert_eq!(config.read_u32(msi.offset() + MSI_MASK_BITS), 0xf);
        assert_eq!(config.read_u32(msi.offset() + MSI_PENDING_BITS), 0);
        // MME beyond the capable count is clamped; address outside the window: no routes.
        msi.config_written(&mut config);
        assert_eq!(msi.enabled_vectors(), 4);
        assert!(sink.take().is_empty());
    }

    #[test]
    fn enable_sets_route_and_disable_removes_it() {
        let (mut config, mut msi, sink) = setup(1, false);
        program(&mut config, &mut msi, 0x41);
        assert!(sink.take().is_empty(), "no routes while disabled");
        write(
            &mut config,
            &mut msi,
            MSI_CONTROL,
            &MSI_CTRL_ENABLE.to_le_bytes(),
        );
        assert!(msi.is_enabled());
        assert_eq!(sink.take(), vec![MsiCall::Route(0, Some(msg(0x41)))]);
        // Rewriting the same value: nothing; new data: route update.
        write(&mut config, &mut msi, MSI_DATA, &0x41u16.to_le_bytes());
        assert!(sink.take().is_empty());
        write(&mut config, &mut msi, MSI_DATA, &0x42u16.to_le_bytes());
        assert_eq!(sink.take(), vec![MsiCall::Route(0, Some(msg(0x42)))]);
        assert!(msi.trigger(&mut config, 0));
        assert_eq!(sink.take(), vec![MsiCall::Trigger(0)]);
        write(&mut config, &mut msi, MSI_CONTROL, &0u16.to_le_bytes());
        assert_eq!(sink.take(), vec![MsiCall::Route(0, None)]);
        assert!(!msi.trigger(&mut config, 0));
        assert!(sink.take().is_empty());
    }

    #[test]
    fn multiple_vectors_replace_low_data_bits() {
        let (mut config, mut msi, sink) = setup(8, false);
        program(&mut config, &mut msi, 0x40);
        let enable_4 = MSI_CTRL_ENABLE | (2 << MSI_CTRL_MME_SHIFT);
        write(&mut config, &mut msi, MSI_CONTROL, &enable_4.to_le_bytes());
        assert_eq!(msi.enabled_vectors(), 4);
        assert_eq!(
            sink.take(),
            vec![MsiCall::Batch(vec![
                (0, Some(msg(0x40))),
                (1, Some(msg(0x41))),
                (2, Some(msg(0x42))),
                (3, Some(msg(0x43))),
            ])]
        );
        assert!(msi.trigger(&mut config, 3));
        assert!(!msi.trigger(&mut config, 4));
        assert!(!msi.trigger(&mut config, 40));
        assert_eq!(sink.take(), vec![MsiCall::Trigger(3)]);
        // Shrinking to 2 vectors removes routes 2 and 3.
        let enable_2 = MSI_CTRL_ENABLE | (1 << MSI_CTRL_MME_SHIFT);
        write(&mut config, &mut msi, MSI_CONTROL, &enable_2.to_le_bytes());
        assert_eq!(
            sink.take(),
            vec![MsiCall::Batch(vec![(2, None), (3, None)])]
        );
    }

    #[test]
    fn masked_vector_goes_pending_and_is_delivered_on_unmask() {
        let (mut config, mut msi, sink) = setup(2, true);
        program(&mut config, &mut msi, 0x50);
        write(&mut config, &mut msi, MSI_MASK_BITS, &2u32.to_le_bytes());
        let enable_2 = MSI_CTRL_ENABLE | (1 << MSI_CTRL_MME_SHIFT);
        write(&mut config, &mut msi, MSI_CONTROL, &enable_2.to_le_bytes());
        sink.take();
        assert!(msi.is_masked(1) && !msi.is_masked(0));
        assert!(!msi.trigger(&mut config, 1));
        assert!(msi.is_pending(1));
        assert_eq!(config.read_u32(msi.offset() + MSI_PENDING_BITS), 2);
        // Masking kept the route; nothing delivered yet.
        assert_eq!(msi.route(1), Some(msg(0x51)));
        assert!(sink.take().is_empty());
        // Pending bits are read-only to the guest.
        write(&mut config, &mut msi, MSI_PENDING_BITS, &0u32.to_le_bytes());
        assert!(msi.is_pending(1));
        assert!(sink.take().is_empty());
        // Unmask: delivered once, pending cleared.
        write(&mut config, &mut msi, MSI_MASK_BITS, &0u32.to_le_bytes());
        assert_eq!(sink.take(), vec![MsiCall::Trigger(1)]);
        assert!(!msi.is_pending(1));
        assert_eq!(config.read_u32(msi.offset() + MSI_PENDING_BITS), 0);
        write(&mut config, &mut msi, MSI_MASK_BITS, &0u32.to_le_bytes());
        assert!(sink.take().is_empty());
    }

    #[test]
    fn non_interrupt_address_has_no_route() {
        let (mut config, mut msi, sink) = setup(1, false);
        write(
            &mut config,
            &mut msi,
            MSI_CONTROL,
            &MSI_CTRL_ENABLE.to_le_bytes(),
        );
        assert!(msi.is_enabled());
        assert!(sink.take().is_empty());
        assert!(!msi.trigger(&mut config, 0));
        assert!(sink.take().is_empty());
        program(&mut config, &mut msi, 0x33);
        // Address low written first: route appears with the old (zero) data.
        assert_eq!(
            sink.take(),
            vec![
                MsiCall::Route(0, Some(msg(0))),
                MsiCall::Route(0, Some(msg(0x33)))
            ]
        );
    }

    #[test]
    fn rejects_bad_vector_counts() {
        let mut config = PciConfigSpace::new(&PciHeader::default());
        for n in [0u16, 3, 64] {
            assert_eq!(
                MsiCapability::new(&mut config, n, false, RecordingMsiSink::new()).err(),
                Some(PciError::InvalidVectorCount(n))
            );
        }
        assert!(MsiCapability::new(&mut config, 32, true, RecordingMsiSink::new()).is_ok());
        assert_eq!(vector_bits(32), u32::MAX);
        assert_eq!(vector_bit(40), 0);
    }
}
