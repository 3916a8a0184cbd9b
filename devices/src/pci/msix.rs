//! The MSI-X capability (ID 0x11), its vector table and its pending-bit array (PBA).
//!
//! Capability layout (offsets from the capability):
//!
//! | off | register | guest access |
//! |---|---|---|
//! | 0x00 | ID 0x11, next pointer | read only |
//! | 0x02 | message control | table size − 1 (bits 10:0) read only; function mask (bit 14) and enable (bit 15) read-write |
//! | 0x04 | table offset (31:3) and BIR (2:0) | read only |
//! | 0x08 | PBA offset (31:3) and BIR (2:0) | read only |
//!
//! The table lives in a memory BAR: entry `n` is 16 bytes at `table offset + 16 n`:
//! message address (bits 1:0 read 0), upper address, data, vector control (bit 0 = mask;
//! the rest reads 0). Entries start masked with a zero message. The PBA holds one pending
//! bit per vector in little-endian qwords and is read only.
//!
//! Table and PBA accept the accesses the PCIe specification allows: 4 bytes dword-aligned
//! or 8 bytes qword-aligned. Other sizes or alignments, and offsets past the last entry,
//! read as all ones and ignore writes.
//!
//! # Semantics
//!
//! * Routes (see the [`pci` module documentation](super)): while MSI-X is enabled, vector
//!   `n`'s route is entry `n`'s message; enabling or disabling sends every changed route in
//!   one batch; rewriting an entry's address or data while enabled updates that route.
//!   Neither the function mask nor a vector's mask touches routes.
//! * A vector raised while enabled but masked (its mask bit or the function mask) sets its
//!   pending bit; when it becomes unmasked it is delivered once and the bit is cleared.
//!   Vectors raised while MSI-X is disabled are dropped.

use std::sync::Arc;

use log::debug;
use virtual_iommu::MsiMessage;

use super::config::{BarSpace, PciConfigSpace, PCI_BAR_COUNT};
use super::{emit_routes, routable, MsiSink, PciError};
use crate::fill_ones;

/// Capability ID of MSI-X.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
/// Offset of the message control register.
pub const MSIX_CONTROL: u16 = 0x02;
/// Offset of the table offset/BIR register.
pub const MSIX_TABLE: u16 = 0x04;
/// Offset of the PBA offset/BIR register.
pub const MSIX_PBA: u16 = 0x08;
/// Length of the capability.
pub const MSIX_CAP_LEN: u8 = 0x0c;

/// Message control: table size − 1.
pub const MSIX_CTRL_TABLE_SIZE_MASK: u16 = 0x07ff;
/// Message control: function mask.
pub const MSIX_CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Message control: MSI-X enable.
pub const MSIX_CTRL_ENABLE: u16 = 1 << 15;
/// Table/PBA register: BAR indicator (BIR) bits.
pub const MSIX_BIR_MASK: u32 = 0x7;
/// Most vectors an MSI-X table can have.
pub const MSIX_MAX_VECTORS: u16 = 2048;

/// Size of one table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Entry offset of the message address (low dword).
pub const MSIX_ENTRY_ADDRESS_LO: u64 = 0x0;
/// Entry offset of the message upper address.
pub const MSIX_ENTRY_ADDRESS_HI: u64 = 0x4;
/// Entry offset of the message data.
pub const MSIX_ENTRY_DATA: u64 = 0x8;
/// Entry offset of the vector control dword.
pub const MSIX_ENTRY_VECTOR_CONTROL: u64 = 0xc;
/// Vector control: the vector is masked.
pub const MSIX_VECTOR_MASKED: u32 = 1 << 0;
/// Writable bits of the message address (dword aligned).
pub const MSIX_ADDRESS_LO_WRITABLE: u32 = !0x3;
/// Vectors per PBA qword.
pub const MSIX_PBA_BITS_PER_QWORD: u16 = 64;
/// Size of a PBA qword.
pub const MSIX_PBA_QWORD_SIZE: u64 = 8;
/// Table and PBA offsets are qword aligned (the low 3 bits hold the BIR).
pub const MSIX_OFFSET_ALIGN: u32 = 8;

/// Size of a dword access.
const DWORD: usize = 4;
/// Size of a qword access.
const QWORD: usize = 8;
/// Index of the vector control dword in an entry.
const FIELD_VECTOR_CONTROL: u64 = MSIX_ENTRY_VECTOR_CONTROL / DWORD as u64;
/// Index of the message address dword in an entry.
const FIELD_ADDRESS_LO: u64 = MSIX_ENTRY_ADDRESS_LO / DWORD as u64;
/// Index of the upper address dword in an entry.
const FIELD_ADDRESS_HI: u64 = MSIX_ENTRY_ADDRESS_HI / DWORD as u64;
/// Index of the data dword in an entry.
const FIELD_DATA: u64 = MSIX_ENTRY_DATA / DWORD as u64;

/// Where the table and PBA live and how many vectors there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// Number of vectors (table entries), 1..=2048.
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in its BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the PBA.
    pub pba_bar: u8,
    /// Offset of the PBA in its BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl MsixLayout {
    /// Size of the table in bytes.
    pub fn table_size(&self) -> u64 {
        u64::from(self.vectors) * MSIX_ENTRY_SIZE
    }

    /// Size of the PBA in bytes (whole qwords).
    pub fn pba_size(&self) -> u64 {
        u64::from(self.vectors.div_ceil(MSIX_PBA_BITS_PER_QWORD)) * MSIX_PBA_QWORD_SIZE
    }
}

/// One table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MsixEntry {
    address_lo: u32,
    address_hi: u32,
    data: u32,
    control: u32,
}

impl Default for MsixEntry {
    fn default() -> Self {
        MsixEntry {
            address_lo: 0,
            address_hi: 0,
            data: 0,
            control: MSIX_VECTOR_MASKED,
        }
    }
}

impl MsixEntry {
    fn masked(&self) -> bool {
        self.control & MSIX_VECTOR_MASKED != 0
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            address_lo: self.address_lo,
            address_hi: self.address_hi,
            data: self.data,
        }
    }

    /// Dword `field` (0..4) of the entry.
    fn field(&self, field: u64) -> u32 {
        match field {
            FIELD_ADDRESS_LO => self.address_lo,
            FIELD_ADDRESS_HI => self.address_hi,
            FIELD_DATA => self.data,
            _ => self.control,
        }
    }

    /// Writes dword `field` (0..4), keeping read-only bits zero.
    fn set_field(&mut self, field: u64, value: u32) {
        match field {
            FIELD_ADDRESS_LO => self.address_lo = value & MSIX_ADDRESS_LO_WRITABLE,
            FIELD_ADDRESS_HI => self.address_hi = value,
            FIELD_DATA => self.data = value,
            FIELD_VECTOR_CONTROL => self.control = value & MSIX_VECTOR_MASKED,
            _ => {}
        }
    }
}

/// True when `value` is a multiple of `align` (a power of two).
fn aligned(value: u64, align: u64) -> bool {
    value & align.wrapping_sub(1) == 0
}

/// The value of a 4- or 8-byte naturally aligned access, or `None` for any other access.
fn access_value(offset: u64, data: &[u8]) -> Option<u64> {
    match data.len() {
        DWORD if aligned(offset, DWORD as u64) => {
            let bytes: [u8; DWORD] = data.try_into().ok()?;
            Some(u64::from(u32::from_le_bytes(bytes)))
        }
        QWORD if aligned(offset, QWORD as u64) => {
            let bytes: [u8; QWORD] = data.try_into().ok()?;
            Some(u64::from_le_bytes(bytes))
        }
        _ => None,
    }
}

/// True for a 4- or 8-byte naturally aligned access.
fn valid_access(offset: u64, len: usize) -> bool {
    matches!(len, DWORD | QWORD) && aligned(offset, len as u64)
}

/// Stores `value`'s low `data.len()` bytes (4 or 8) in `data`.
fn store(data: &mut [u8], value: u64) {
    let bytes = value.to_le_bytes();
    if let Some(src) = bytes.get(..data.len()) {
        data.copy_from_slice(src);
    }
}

/// The MSI-X capability's behaviour: table, PBA, routes, masking and triggering.
pub struct MsixCapability {
    offset: u16,
    layout: MsixLayout,
    entries: Vec<MsixEntry>,
    pending: Vec<u64>,
    /// The route last given to the sink, per vector.
    routes: Vec<Option<MsiMessage>>,
    enabled: bool,
    function_masked: bool,
    sink: Arc<dyn MsiSink>,
}

impl std::fmt::Debug for MsixCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixCapability")
            .field("offset", &self.offset)
            .field("layout", &self.layout)
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish_non_exhaustive()
    }
}

impl MsixCapability {
    /// Adds an MSI-X capability with `layout` to `config`. The table's and PBA's BARs must
    /// already be defined as memory BARs large enough to hold them; table and PBA must be
    /// 8-byte aligned and must not overlap. MSI-X starts disabled with every entry masked;
    /// no sink call is made.
    pub fn new(
        config: &mut PciConfigSpace,
        layout: MsixLayout,
        sink: Arc<dyn MsiSink>,
    ) -> Result<Self, PciError> {
        if layout.vectors == 0 || layout.vectors > MSIX_MAX_VECTORS {
            return Err(PciError::InvalidVectorCount(layout.vectors));
        }
        let align = u64::from(MSIX_OFFSET_ALIGN);
        if !aligned(u64::from(layout.table_offset), align)
            || !aligned(u64::from(layout.pba_offset), align)
        {
            return Err(PciError::InvalidMsixLayout(
                "table or PBA offset not 8-byte aligned",
            ));
        }
        let fits = |bar: u8, offset: u32, size: u64| {
            usize::from(bar) < PCI_BAR_COUNT
                && config.bar(bar).is_some_and(|b| {
                    b.kind.space() == BarSpace::Memory
                        && u64::from(offset).saturating_add(size) <= b.size
                })
        };
        if !fits(layout.table_bar, layout.table_offset, layout.table_size()) {
            return Err(PciError::InvalidMsixLayout(
                "table does not fit a memory BAR",
            ));
        }
        if !fits(layout.pba_bar, layout.pba_offset, layout.pba_size()) {
            return Err(PciError::InvalidMsixLayout("PBA does not fit a memory BAR"));
        }
        if layout.table_bar == layout.pba_bar
            && super::config::ranges_overlap(
                u64::from(layout.table_offset),
                layout.table_size(),
                u64::from(layout.pba_offset),
                layout.pba_size(),
            )
        {
            return Err(PciError::InvalidMsixLayout("table and PBA overlap"));
        }

        let offset = config.add_capability(PCI_CAP_ID_MSIX, MSIX_CAP_LEN)?;
        config.set_u16(offset + MSIX_CONTROL, layout.vectors - 1);
        config.set_writable_u16(
            offset + MSIX_CONTROL,
            MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK,
        );
        config.set_u32(
            offset + MSIX_TABLE,
            layout.table_offset | u32::from(layout.table_bar),
        );
        config.set_u32(
            offset + MSIX_PBA,
            layout.pba_offset | u32::from(layout.pba_bar),
        );
        let vectors = usize::from(layout.vectors);
        Ok(MsixCapability {
            offset,
            layout,
            entries: vec![MsixEntry::default(); vectors],
            pending: vec![0; usize::from(layout.vectors.div_ceil(MSIX_PBA_BITS_PER_QWORD))],
            routes: vec![None; vectors],
            enabled: false,
            function_masked: false,
            sink,
        })
    }

    /// The capability's offset in configuration space.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// Where the table and PBA live.
    pub fn layout(&self) -> MsixLayout {
        self.layout
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.layout.vectors
    }

    /// True when the guest enabled MSI-X.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// True when the function mask is set.
    pub fn is_function_masked(&self) -> bool {
        self.function_masked
    }

    /// True when entry `vector`'s mask bit is set (false for vectors that do not exist).
    pub fn is_vector_masked(&self, vector: u16) -> bool {
        self.entries
            .get(usize::from(vector))
            .is_some_and(MsixEntry::masked)
    }

    /// True when `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let (word, bit) = pba_position(vector);
        self.pending.get(word).is_some_and(|w| w & bit != 0)
    }

    /// The message entry `vector` holds.
    pub fn entry_message(&self, vector: u16) -> Option<MsiMessage> {
        self.entries
            .get(usize::from(vector))
            .map(MsixEntry::message)
    }

    /// The route the sink currently holds for `vector`.
    pub fn route(&self, vector: u16) -> Option<MsiMessage> {
        self.routes.get(usize::from(vector)).copied().flatten()
    }

    /// Brings enable and function mask up to date with the message control register after
    /// a configuration write (any write: unchanged state produces no sink call).
    pub fn config_written(&mut self, config: &PciConfigSpace) {
        let control = config.read_u16(self.offset + MSIX_CONTROL);
        let enabled = control & MSIX_CTRL_ENABLE != 0;
        let function_masked = control & MSIX_CTRL_FUNCTION_MASK != 0;
        if enabled == self.enabled && function_masked == self.function_masked {
            return;
        }
        if enabled != self.enabled {
            self.enabled = enabled;
            let mut changes = Vec::new();
            for vector in 0..self.layout.vectors {
                let desired = self.desired_route(vector);
                if let Some(route) = self.routes.get_mut(usize::from(vector)) {
                    if *route != desired {
                        *route = desired;
                        changes.push((vector, desired));
                    }
                }
            }
            emit_routes(self.sink.as_ref(), &changes);
        }
        let mask_changed = function_masked != self.function_masked;
        self.function_masked = function_masked;
        for vector in 0..self.layout.vectors {
            self.deliver_if_pending(vector);
        }
        if mask_changed {
            // Vectors masked at the entry level keep their state; the others flip.
            let changes: Vec<_> = (0..self.layout.vectors)
                .filter(|v| !self.is_vector_masked(*v))
                .map(|v| (v, function_masked))
                .collect();
            if !changes.is_empty() {
                self.sink.set_vectors_masked(&changes);
            }
        }
    }

    /// True when `vector` is masked by its entry or by the function mask.
    pub fn is_effectively_masked(&self, vector: u16) -> bool {
        self.function_masked || self.is_vector_masked(vector)
    }

    /// Tells the sink every vector's effective mask (once, when a sink that cares is
    /// connected; later changes are reported as they happen).
    pub fn announce_masks(&self) {
        let all: Vec<_> = (0..self.layout.vectors)
            .map(|v| (v, self.is_effectively_masked(v)))
            .collect();
        self.sink.set_vectors_masked(&all);
    }

    /// Handles a read of BAR `bar` at `offset` if it falls in the table or the PBA;
    /// returns false (leaving `data` alone) otherwise.
    pub fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> bool {
        if let Some(rel) = self.table_offset_of(bar, offset) {
            self.table_read(rel, data);
            true
        } else if let Some(rel) = self.pba_offset_of(bar, offset) {
            self.pba_read(rel, data);
            true
        } else {
            false
        }
    }

    /// Handles a write of BAR `bar` at `offset` if it falls in the table or the PBA;
    /// returns false otherwise.
    pub fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> bool {
        if let Some(rel) = self.table_offset_of(bar, offset) {
            self.table_write(rel, data);
            true
        } else if self.pba_offset_of(bar, offset).is_some() {
            debug!("msix: write to the read-only PBA at {offset:#x} ignored");
            true
        } else {
            false
        }
    }

    /// `offset` relative to the table when BAR `bar` at `offset` is inside it.
    fn table_offset_of(&self, bar: u8, offset: u64) -> Option<u64> {
        let rel = offset.checked_sub(u64::from(self.layout.table_offset))?;
        (bar == self.layout.table_bar && rel < self.layout.table_size()).then_some(rel)
    }

    /// `offset` relative to the PBA when BAR `bar` at `offset` is inside it.
    fn pba_offset_of(&self, bar: u8, offset: u64) -> Option<u64> {
        let rel = offset.checked_sub(u64::from(self.layout.pba_offset))?;
        (bar == self.layout.pba_bar && rel < self.layout.pba_size()).then_some(rel)
    }

    /// Reads the table at `offset` from its start.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        let entry = usize::try_from(offset / MSIX_ENTRY_SIZE)
            .ok()
            .and_then(|i| self.entries.get(i));
        let (Some(entry), true) = (entry, valid_access(offset, data.len())) else {
            debug!(
                "msix: table read of {} bytes at {offset:#x} ignored",
                data.len()
            );
            fill_ones(data);
            return;
        };
        let field = (offset % MSIX_ENTRY_SIZE) / DWORD as u64;
        let mut value = u64::from(entry.field(field));
        if data.len() == QWORD {
            value |= u64::from(entry.field(field + 1)) << u32::BITS;
        }
        store(data, value);
    }

    /// Writes the table at `offset` from its start, then updates the route and delivers a
    /// pending vector that this write unmasked.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let index = usize::try_from(offset / MSIX_ENTRY_SIZE).ok();
        let value = access_value(offset, data);
        let (Some(index), Some(value)) = (index, value) else {
            debug!(
                "msix: table write of {} bytes at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        let Some(entry) = self.entries.get_mut(index) else {
            debug!("msix: table write past the last entry at {offset:#x} ignored");
            return;
        };
        let field = (offset % MSIX_ENTRY_SIZE) / DWORD as u64;
        let was_masked = entry.masked();
        entry.set_field(field, value as u32);
        if data.len() == QWORD {
            entry.set_field(field + 1, (value >> u32::BITS) as u32);
        }
        let now_masked = entry.masked();
        // The index is below the table size, which fits u16.
        let vector = index as u16;
        let desired = self.desired_route(vector);
        if let Some(route) = self.routes.get_mut(index) {
            if *route != desired {
                *route = desired;
                self.sink.set_vector_route(vector, desired);
            }
        }
        self.deliver_if_pending(vector);
        if was_masked != now_masked && !self.function_masked {
            self.sink.set_vectors_masked(&[(vector, now_masked)]);
        }
    }

    /// Reads the PBA at `offset` from its start.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        let word = usize::try_from(offset / MSIX_PBA_QWORD_SIZE)
            .ok()
            .and_then(|i| self.pending.get(i));
        let (Some(&word), true) = (word, valid_access(offset, data.len())) else {
            debug!(
                "msix: PBA read of {} bytes at {offset:#x} ignored",
                data.len()
            );
            fill_ones(data);
            return;
        };
        let shift = (offset % MSIX_PBA_QWORD_SIZE) * u64::from(u8::BITS);
        store(data, word >> shift);
    }

    /// Raises `vector`: delivered when enabled and unmasked, recorded as pending when
    /// masked (vector or function mask), dropped when MSI-X is disabled or the vector does
    /// not exist. Returns true when the sink was asked to deliver.
    pub fn trigger(&mut self, vector: u16) -> bool {
        let Some(entry) = self.entries.get(usize::from(vector)) else {
            debug!("msix: raise of nonexistent vector {vector} dropped");
            return false;
        };
        if !self.enabled {
            debug!("msix: vector {vector} raised while MSI-X is disabled; dropped");
            return false;
        }
        if self.function_masked || entry.masked() {
            let (word, bit) = pba_position(vector);
            if let Some(w) = self.pending.get_mut(word) {
                *w |= bit;
            }
            return false;
        }
        self.deliver(vector)
    }

    /// The route `vector` should have now.
    fn desired_route(&self, vector: u16) -> Option<MsiMessage> {
        if !self.enabled {
            return None;
        }
        self.entries
            .get(usize::from(vector))
            .map(MsixEntry::message)
            .and_then(routable)
    }

    /// Asks the sink to deliver `vector` if it has a route.
    fn deliver(&self, vector: u16) -> bool {
        if self.route(vector).is_some() {
            self.sink.trigger_vector(vector);
            true
        } else {
            debug!("msix: vector {vector} has no interrupt address; dropped");
            false
        }
    }

    /// Delivers `vector` and clears its pending bit when it is pending and deliverable.
    fn deliver_if_pending(&mut self, vector: u16) {
        if !self.enabled
            || self.function_masked
            || self.is_vector_masked(vector)
            || !self.is_pending(vector)
        {
            return;
        }
        let (word, bit) = pba_position(vector);
        if let Some(w) = self.pending.get_mut(word) {
            *w &= !bit;
        }
        self.deliver(vector);
    }
}

/// The PBA qword index and bit of `vector`.
fn pba_position(vector: u16) -> (usize, u64) {
    let word = usize::from(vector / MSIX_PBA_BITS_PER_QWORD);
    (word, 1u64 << (vector % MSIX_PBA_BITS_PER_QWORD))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{BarKind, PciHeader};
    use crate::pci::testing::{MsiCall, RecordingMsiSink};

    const VECTORS: u16 = 70;
    const TABLE_OFFSET: u32 = 0x1000;
    const PBA_OFFSET: u32 = 0x2000;

    fn setup() -> (PciConfigSpace, MsixCapability, Arc<RecordingMsiSink>) {
        let mut config = PciConfigSpace::new(&PciHeader::default());
        config.add_bar(2, BarKind::Memory64, 0x4000, false).unwrap();
        let sink = RecordingMsiSink::new();
        let layout = MsixLayout {
            vectors: VECTORS,
            table_bar: 2,
            table_offset: TABLE_OFFSET,
            pba_bar: 2,
            pba_offset: PBA_OFFSET,
        };
        let msix = MsixCapability::new(&mut config, layout, sink.clone()).unwrap();
        (config, msix, sink)
    }

    fn control(config: &mut PciConfigSpace, msix: &mut MsixCapability, value: u16) {
        config.write(msix.offset() + MSIX_CONTROL, &value.to_le_bytes());
        msix.config_written(config);
    }

    fn entry_offset(vector: u16, field: u64) -> u64 {
        u64::from(TABLE_OFFSET) + u64::from(vector) * MSIX_ENTRY_SIZE + field
    }

    fn write32(msix: &mut MsixCapability, offset: u64, value: u32) {
        assert!(msix.bar_write(2, offset, &value.to_le_bytes()));
    }

    fn read32(msix: &MsixCapability, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        assert!(msix.bar_read(2, offset, &mut data));
        u32::from_le_bytes(data)
    }

    fn read64(msix: &MsixCapability, offset: u64) -> u64 {
        let mut data = [0u8; 8];
        assert!(msix.bar_read(2, offset, &mut data));
        u64::from_le_bytes(data)
    }

    fn msg(vector: u16) -> MsiMessage {
        MsiMessage {
            address_lo: 0xfee0_0000 | (u32::from(vector) << 12),
            address_hi: 0,
            data: 0x30 + u32::from(vector),
        }
    }

    /// Programs entry `vector` with `msg(vector)` using dword writes, leaving the mask.
    fn program(msix: &mut MsixCapability, vector: u16) {
        let m = msg(vector);
        write32(
            msix,
            entry_offset(vector, MSIX_ENTRY_ADDRESS_LO),
            m.address_lo,
        );
        write32(
            msix,
            entry_offset(vector, MSIX_ENTRY_ADDRESS_HI),
            m.address_hi,
        );
        write32(msix, entry_offset(vector, MSIX_ENTRY_DATA), m.data);
    }

    fn unmask(msix: &mut MsixCapability, vector: u16) {
        write32(msix, entry_offset(vector, MSIX_ENTRY_VECTOR_CONTROL), 0);
    }

    #[test]
    fn capability_registers() {
        let (mut config, msix, _) = setup();
        let off = msix.offset();
        assert_eq!(config.find_capability(PCI_CAP_ID_MSIX), Some(off));
        assert_eq!(config.read_u16(off + MSIX_CONTROL), VECTORS - 1);
        assert_eq!(config.read_u32(off + MSIX_TABLE), TABLE_OFFSET | 2);
        assert_eq!(config.read_u32(off + MSIX_PBA), PBA_OFFSET | 2);
        for reg in [MSIX_CONTROL, MSIX_TABLE, MSIX_PBA] {
            config.write(off + reg, &u32::MAX.to_le_bytes());
        }
        assert_eq!(
            config.read_u16(off + MSIX_CONTROL),
            (VECTORS - 1) | MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK
        );
        assert_eq!(config.read_u32(off + MSIX_TABLE), TABLE_OFFSET | 2);
        assert_eq!(config.read_u32(off + MSIX_PBA), PBA_OFFSET | 2);
    }

    #[test]
    fn entries_reset_masked_and_read_back() {
        let (_, mut msix, sink) = setup();
        assert_eq!(read32(&msix, entry_offset(0, MSIX_ENTRY_VECTOR_CONTROL)), 1);
        assert_eq!(read64(&msix, entry_offset(69, 0)), 0);
        // 4-byte writes, with read-only bits.
        write32(
            &mut msix,
            entry_offset(5, MSIX_ENTRY_ADDRESS_LO),
            0xfee0_1003,
        );
        write32(
            &mut msix,
            entry_offset(5, MSIX_ENTRY_ADDRESS_HI),
            0x1234_5678,
        );
        write32(&mut msix, entry_offset(5, MSIX_ENTRY_DATA), 0xabcd_ef01);
        write32(
            &mut msix,
            entry_offset(5, MSIX_ENTRY_VECTOR_CONTROL),
            0xffff_fffe,
        );
        assert_eq!(
            read32(&msix, entry_offset(5, MSIX_ENTRY_ADDRESS_LO)),
            0xfee0_1000
        );
        assert_eq!(
            read32(&msix, entry_offset(5, MSIX_ENTRY_ADDRESS_HI)),
            0x1234_5678
        );
        assert_eq!(read32(&msix, entry_offset(5, MSIX_ENTRY_DATA)), 0xabcd_ef01);
        assert_eq!(read32(&msix, entry_offset(5, MSIX_ENTRY_VECTOR_CONTROL)), 0);
        assert_eq!(read64(&msix, entry_offset(5, 0)), 0x1234_5678_fee0_1000);
        assert_eq!(read64(&msix, entry_offset(5, 8)), 0xabcd_ef01);
        // 8-byte writes.
        assert!(msix.bar_write(
            2,
            entry_offset(6, 0),
            &0x0000_0001_fee0_2000u64.to_le_bytes()
        ));
        assert!(msix.bar_write(
            2,
            entry_offset(6, 8),
            &0x0000_0001_0000_0042u64.to_le_bytes()
        ));
        assert_eq!(
            msix.entry_message(6),
            Some(MsiMessage {
                address_lo: 0xfee0_2000,
                address_hi: 1,
                data: 0x42
            })
        );
        assert!(msix.is_vector_masked(6));
        // Disabled: no routes were sent.
        assert!(sink.take().is_empty());
    }

    #[test]
    fn bad_sizes_alignment_and_indices_are_ignored() {
        let (_, mut msix, sink) = setup();
        program(&mut msix, 1);
        for (offset, len) in [
            (entry_offset(1, 0), 1usize),
            (entry_offset(1, 0), 2),
            (entry_offset(1, 2), 4),
            (entry_offset(1, 4), 8),
            (entry_offset(1, 0), 16),
            (entry_offset(1, 0), 0),
        ] {
            let mut data = vec![0u8; len];
            assert!(msix.bar_read(2, offset, &mut data));
            assert!(data.iter().all(|b| *b == 0xff), "{offset:#x}/{len}");
            assert!(msix.bar_write(2, offset, &vec![0u8; len]));
        }
        assert_eq!(msix.entry_message(1), Some(msg(1)));
        // Past the table: not the table (the BAR's owner answers).
        let past = entry_offset(VECTORS, 0);
        let mut data = [0u8; 4];
        assert!(!msix.bar_read(2, past, &mut data));
        assert!(!msix.bar_write(2, past, &[0; 4]));
        // Direct table access beyond the last entry is ignored / all ones.
        msix.table_write(u64::from(VECTORS) * MSIX_ENTRY_SIZE, &[0; 4]);
        msix.table_read(u64::MAX - 3, &mut data);
        assert_eq!(data, [0xff; 4]);
        msix.table_write(u64::MAX - 7, &[0; 8]);
        // Other BARs are not ours.
        assert!(!msix.bar_read(0, entry_offset(0, 0), &mut data));
        assert!(sink.take().is_empty());
    }

    #[test]
    fn enable_batches_routes_and_disable_removes_them() {
        let (mut config, mut msix, sink) = setup();
        program(&mut msix, 0);
        program(&mut msix, 65);
        control(&mut config, &mut msix, MSIX_CTRL_ENABLE);
        assert!(msix.is_enabled());
        // Only programmed entries (MSI-window addresses) get routes; masked ones too.
        assert_eq!(
            sink.take(),
            vec![MsiCall::Batch(vec![(0, Some(msg(0))), (65, Some(msg(65)))])]
        );
        // Rewriting data while enabled: single route update.
        write32(&mut msix, entry_offset(65, MSIX_ENTRY_DATA), 0x99);
        let updated = MsiMessage {
            data: 0x99,
            ..msg(65)
        };
        assert_eq!(sink.take(), vec![MsiCall::Route(65, Some(updated))]);
        // Same value again: nothing.
        write32(&mut msix, entry_offset(65, MSIX_ENTRY_DATA), 0x99);
        // Masking and unmasking do not touch routes.
        unmask(&mut msix, 65);
        write32(&mut msix, entry_offset(65, MSIX_ENTRY_VECTOR_CONTROL), 1);
        assert!(sink.take().is_empty());
        control(&mut config, &mut msix, 0);
        assert_eq!(
            sink.take(),
            vec![MsiCall::Batch(vec![(0, None), (65, None)])]
        );
        // Rewriting while disabled: no route.
        program(&mut msix, 3);
        assert!(sink.take().is_empty());
    }

    #[test]
    fn function_mask_holds_vectors_pending() {
        let (mut config, mut msix, sink) = setup();
        // Linux: enable with the function mask set, program, unmask entries, clear mask.
        control(
            &mut config,
            &mut msix,
            MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK,
        );
        assert!(msix.is_function_masked());
        assert!(sink.take().is_empty());
        program(&mut msix, 2);
        unmask(&mut msix, 2);
        // Each dword that changes the message updates the route (address first).
        let partial = MsiMessage { data: 0, ..msg(2) };
        assert_eq!(
            sink.take(),
            vec![
                MsiCall::Route(2, Some(partial)),
                MsiCall::Route(2, Some(msg(2)))
            ]
        );
        assert!(!msix.trigger(2));
        assert!(!msix.trigger(2));
        assert!(msix.is_pending(2));
        assert!(sink.take().is_empty());
        control(&mut config, &mut msix, MSIX_CTRL_ENABLE);
        assert_eq!(sink.take(), vec![MsiCall::Trigger(2)]);
        assert!(!msix.is_pending(2));
        assert!(msix.trigger(2));
        assert_eq!(sink.take(), vec![MsiCall::Trigger(2)]);
    }

    #[test]
    fn vector_mask_pending_and_pba() {
        let (mut config, mut msix, sink) = setup();
        for v in [1, 64, 69] {
            program(&mut msix, v);
        }
        control(&mut config, &mut msix, MSIX_CTRL_ENABLE);
        sink.take();
        // All masked: raises go pending.
        for v in [1, 64, 69] {
            assert!(!msix.trigger(v));
        }
        assert!(sink.take().is_empty());
        let pba = u64::from(PBA_OFFSET);
        assert_eq!(read64(&msix, pba), 1 << 1);
        assert_eq!(read64(&msix, pba + 8), (1 << 0) | (1 << 5));
        assert_eq!(read32(&msix, pba), 2);
        assert_eq!(read32(&msix, pba + 4), 0);
        assert_eq!(read32(&msix, pba + 8), 0x21);
        // The PBA is read only; bad sizes read all ones; past the PBA is not ours.
        write32(&mut msix, pba, 0);
        assert_eq!(read32(&msix, pba), 2);
        let mut two = [0u8; 2];
        assert!(msix.bar_read(2, pba, &mut two));
        assert_eq!(two, [0xff; 2]);
        let mut four = [0u8; 4];
        assert!(!msix.bar_read(2, pba + 16, &mut four));
        // Unmask 64 with a 4-byte write and 69 with an 8-byte write of data + control.
        unmask(&mut msix, 64);
        assert_eq!(sink.take(), vec![MsiCall::Trigger(64)]);
        let data_and_control = u64::from(msg(69).data);
        assert!(msix.bar_write(2, entry_offset(69, 8), &data_and_control.to_le_bytes()));
        assert_eq!(sink.take(), vec![MsiCall::Trigger(69)]);
        assert_eq!(read64(&msix, pba + 8), 0);
        assert_eq!(read64(&msix, pba), 2);
        // Unmasked vectors deliver directly and set no pending bit.
        assert!(msix.trigger(64));
        assert_eq!(sink.take(), vec![MsiCall::Trigger(64)]);
        assert_eq!(read64(&msix, pba + 8), 0);
    }

    #[test]
    fn disabled_or_unprogrammed_vectors_are_dropped() {
        let (mut config, mut msix, sink) = setup();
        program(&mut msix, 4);
        unmask(&mut msix, 4);
        assert!(!msix.trigger(4), "disabled");
        assert!(!msix.is_pending(4));
        control(&mut config, &mut msix, MSIX_CTRL_ENABLE);
        sink.take();
        assert!(!msix.trigger(VECTORS), "nonexistent");
        assert!(!msix.trigger(u16::MAX));
        unmask(&mut msix, 7);
        assert!(!msix.trigger(7), "zero address is no interrupt");
        assert!(msix.trigger(4));
        assert_eq!(sink.take(), vec![MsiCall::Trigger(4)]);
    }

    #[test]
    fn layout_validation() {
        let sink = RecordingMsiSink::new();
        let mut config = PciConfigSpace::new(&PciHeader::default());
        config.add_bar(0, BarKind::Memory32, 0x1000, false).unwrap();
        config.add_bar(1, BarKind::Io, 0x100, false).unwrap();
        let good = MsixLayout {
            vectors: 128,
            table_bar: 0,
            table_offset: 0,
            pba_bar: 0,
            pba_offset: 0x800,
        };
        let cases = [
            MsixLayout { vectors: 0, ..good },
            MsixLayout {
                vectors: 2049,
                ..good
            },
            MsixLayout {
                table_offset: 4,
                ..good
            },
            MsixLayout {
                pba_offset: 0x7f8,
                ..good
            },
            MsixLayout {
                table_bar: 1,
                ..good
            },
            MsixLayout {
                table_bar: 3,
                ..good
            },
            MsixLayout { pba_bar: 7, ..good },
            MsixLayout {
                vectors: 256,
                pba_offset: 0xff8,
                ..good
            },
            MsixLayout {
                pba_offset: 0xff8,
                table_offset: 0x800,
                vectors: 129,
                ..good
            },
        ];
        for layout in cases {
            assert!(
                MsixCapability::new(&mut config, layout, sink.clone()).is_err(),
                "{layout:?}"
            );
        }
        assert!(config.capabilities().is_empty());
        let msix = MsixCapability::new(&mut config, good, sink).unwrap();
        assert_eq!(good.pba_size(), 16);
        assert_eq!(msix.vectors(), 128);
    }

    #[test]
    fn effective_mask_changes_reach_the_sink() {
        let (mut config, mut msix, sink) = setup();
        msix.announce_masks();
        let all = sink.take_masks();
        assert_eq!(all.len(), usize::from(VECTORS));
        assert!(all.iter().all(|&(_, m)| m), "entries start masked");
        control(&mut config, &mut msix, MSIX_CTRL_ENABLE);
        assert!(
            sink.take_masks().is_empty(),
            "enabling does not change masks"
        );
        unmask(&mut msix, 3);
        assert_eq!(sink.take_masks(), vec![(3, false)]);
        // Rewriting the control dword with the same mask reports nothing.
        write32(&mut msix, entry_offset(3, MSIX_ENTRY_VECTOR_CONTROL), 0);
        assert!(sink.take_masks().is_empty());
        // The function mask flips every vector whose entry is unmasked.
        control(
            &mut config,
            &mut msix,
            MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK,
        );
        assert_eq!(sink.take_masks(), vec![(3, true)]);
        // An entry change under the function mask changes nothing effective.
        unmask(&mut msix, 4);
        assert!(sink.take_masks().is_empty());
        control(&mut config, &mut msix, MSIX_CTRL_ENABLE);
        assert_eq!(sink.take_masks(), vec![(3, false), (4, false)]);
        assert!(!msix.is_effectively_masked(4));
        assert!(msix.is_effectively_masked(5));
    }
}
