//! A type-0 (endpoint) configuration space with per-byte write masks.
//!
//! The space is 4 KiB (PCIe-sized); the first 256 bytes are the conventional header and
//! capability area, the rest is extended space (reads as zero: an extended capability
//! header of 0 at 0x100 says "no extended capabilities").
//!
//! Every byte has a value and two masks: bits in the *writable* mask take the guest's value,
//! bits in the *write-1-to-clear* mask are cleared by writing 1, every other bit is read
//! only. Device models change read-only state (pending bits, error status) with the
//! `set_*` methods, which bypass the masks.
//!
//! # BARs
//!
//! A BAR's writable mask covers exactly its address bits (`!(size - 1)`), so writing all
//! ones reads back the size mask with the read-only type bits, which is how software sizes
//! BARs. After a write that touches BAR registers, [`PciConfigSpace::write`] reports each
//! BAR whose address changed as [`ConfigWriteEffect::BarMoved`], except while the BAR holds
//! the sizing pattern (all address bits of a dword set, as after writing all ones): sizing
//! is not a move, and the restore that follows it reports nothing when it puts back the
//! last reported address. A 64-bit BAR written one dword at a time reports the intermediate
//! address after the first dword. Unimplemented BARs, the CardBus CIS pointer and the
//! expansion ROM BAR read as zero and ignore writes.
//!
//! # Command and status
//!
//! Command bits I/O space, memory space, bus master, parity error response, SERR# enable
//! and INTx disable are writable; a change of either decode bit is reported as
//! [`ConfigWriteEffect::DecodeChanged`]. Status bit 4 (capabilities list) is set once a
//! capability is added; the error bits of the status register are write-1-to-clear.

use log::warn;

use super::PciError;

/// Size of a PCIe function's configuration space.
pub const PCI_CONFIG_SPACE_SIZE: usize = 0x1000;
/// Size of the conventional (non-extended) configuration space.
pub const PCI_CONFIG_LEGACY_SIZE: usize = 0x100;

/// Offset of the vendor ID (16 bits, read only).
pub const PCI_VENDOR_ID: u16 = 0x00;
/// Offset of the device ID (16 bits, read only).
pub const PCI_DEVICE_ID: u16 = 0x02;
/// Offset of the command register (16 bits).
pub const PCI_COMMAND: u16 = 0x04;
/// Offset of the status register (16 bits).
pub const PCI_STATUS: u16 = 0x06;
/// Offset of the revision ID (8 bits).
pub const PCI_REVISION_ID: u16 = 0x08;
/// Offset of the 24-bit class code (programming interface, sub-class, base class).
pub const PCI_CLASS_CODE: u16 = 0x09;
/// Offset of the cache line size register (8 bits, read-write, no effect).
pub const PCI_CACHE_LINE_SIZE: u16 = 0x0c;
/// Offset of the latency timer (8 bits, read-only zero: PCIe).
pub const PCI_LATENCY_TIMER: u16 = 0x0d;
/// Offset of the header type (8 bits).
pub const PCI_HEADER_TYPE: u16 = 0x0e;
/// Offset of the BIST register (8 bits, read-only zero: no built-in self test).
pub const PCI_BIST: u16 = 0x0f;
/// Offset of BAR 0; BAR `n` is at `PCI_BAR0 + 4 * n`.
pub const PCI_BAR0: u16 = 0x10;
/// Number of BAR registers in a type-0 header.
pub const PCI_BAR_COUNT: usize = 6;
/// Size of one BAR register.
pub const PCI_BAR_REG_SIZE: u16 = 4;
/// First offset past the BAR registers.
pub const PCI_BAR_END: u16 = 0x28;
/// Offset of the subsystem vendor ID (16 bits, read only).
pub const PCI_SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Offset of the subsystem ID (16 bits, read only).
pub const PCI_SUBSYSTEM_ID: u16 = 0x2e;
/// Offset of the expansion ROM BAR (not implemented: reads zero).
pub const PCI_EXPANSION_ROM: u16 = 0x30;
/// The index [`BarRegion`]s use for the expansion ROM BAR (register at
/// [`PCI_EXPANSION_ROM`]); functions without a ROM never report it.
pub const PCI_ROM_BAR_INDEX: u8 = 6;
/// Expansion ROM BAR: address decode enable (bit 0).
pub const PCI_ROM_ENABLE: u32 = 1;
/// Expansion ROM BAR: the address bits (31:11).
pub const PCI_ROM_ADDRESS_MASK: u32 = 0xffff_f800;
/// Smallest expansion ROM.
pub const PCI_ROM_MIN_SIZE: u64 = 0x800;

/// Offset of the capabilities pointer (8 bits, read only).
pub const PCI_CAPABILITY_LIST: u16 = 0x34;
/// Offset of the interrupt line register (8 bits, read-write, no effect).
pub const PCI_INTERRUPT_LINE: u16 = 0x3c;
/// Offset of the interrupt pin register (8 bits, read only; 0 = no INTx, 1 = INTA#).
pub const PCI_INTERRUPT_PIN: u16 = 0x3d;
/// First offset capabilities may use.
pub const PCI_CAP_AREA_START: u16 = 0x40;
/// End of the area capabilities may use.
pub const PCI_CAP_AREA_END: u16 = PCI_CONFIG_LEGACY_SIZE as u16;
/// Offset of the ID byte inside a capability.
pub const PCI_CAP_ID: u16 = 0x00;
/// Offset of the next-pointer byte inside a capability.
pub const PCI_CAP_NEXT: u16 = 0x01;
/// Size of a capability header (ID and next pointer).
pub const PCI_CAP_HEADER_SIZE: u8 = 2;
/// Capabilities start on dword boundaries.
pub const PCI_CAP_ALIGN: u16 = 4;
/// Bits of a capability pointer that hold the offset (the low two are reserved).
pub const PCI_CAP_POINTER_MASK: u8 = 0xfc;
/// Most capabilities a 256-byte space can link (bounds the list walk).
pub const PCI_CAP_MAX_COUNT: usize = (PCI_CAP_AREA_END - PCI_CAP_AREA_START) as usize / 4;

/// Command: I/O space decoding.
pub const PCI_COMMAND_IO: u16 = 1 << 0;
/// Command: memory space decoding.
pub const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// Command: bus master enable (required for MSI, which is a memory write).
pub const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// Command: parity error response.
pub const PCI_COMMAND_PARITY: u16 = 1 << 6;
/// Command: SERR# enable.
pub const PCI_COMMAND_SERR: u16 = 1 << 8;
/// Command: INTx emulation disable.
pub const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The command bits the guest can write.
pub const PCI_COMMAND_WRITABLE: u16 = PCI_COMMAND_IO
    | PCI_COMMAND_MEMORY
    | PCI_COMMAND_MASTER
    | PCI_COMMAND_PARITY
    | PCI_COMMAND_SERR
    | PCI_COMMAND_INTX_DISABLE;

/// Status: INTx asserted (read only).
pub const PCI_STATUS_INTERRUPT: u16 = 1 << 3;
/// Status: the capabilities list exists (read only).
pub const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
/// Status: master data parity error (write 1 to clear).
pub const PCI_STATUS_MASTER_PARITY: u16 = 1 << 8;
/// Status: signaled target abort (write 1 to clear).
pub const PCI_STATUS_SIG_TARGET_ABORT: u16 = 1 << 11;
/// Status: received target abort (write 1 to clear).
pub const PCI_STATUS_REC_TARGET_ABORT: u16 = 1 << 12;
/// Status: received master abort (write 1 to clear).
pub const PCI_STATUS_REC_MASTER_ABORT: u16 = 1 << 13;
/// Status: signaled system error (write 1 to clear).
pub const PCI_STATUS_SIG_SYSTEM_ERROR: u16 = 1 << 14;
/// Status: detected parity error (write 1 to clear).
pub const PCI_STATUS_DETECTED_PARITY: u16 = 1 << 15;
/// The write-1-to-clear bits of the status register.
pub const PCI_STATUS_W1C: u16 = PCI_STATUS_MASTER_PARITY
    | PCI_STATUS_SIG_TARGET_ABORT
    | PCI_STATUS_REC_TARGET_ABORT
    | PCI_STATUS_REC_MASTER_ABORT
    | PCI_STATUS_SIG_SYSTEM_ERROR
    | PCI_STATUS_DETECTED_PARITY;

/// Header type of an endpoint (type 0) function.
pub const PCI_HEADER_TYPE_NORMAL: u8 = 0x00;
/// Header type bit 7: the device has more than one function.
pub const PCI_HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;

/// BAR bit 0: 1 for an I/O BAR.
pub const PCI_BAR_SPACE_IO: u32 = 1 << 0;
/// Memory BAR type field (bits 2:1) value for a 64-bit BAR.
pub const PCI_BAR_MEM_TYPE_64: u32 = 0b10 << 1;
/// Memory BAR bit 3: prefetchable.
pub const PCI_BAR_MEM_PREFETCH: u32 = 1 << 3;
/// The read-only flag bits of a memory BAR (3:0).
pub const PCI_BAR_MEM_FLAGS_MASK: u32 = 0xf;
/// The read-only flag bits of an I/O BAR (1:0).
pub const PCI_BAR_IO_FLAGS_MASK: u32 = 0x3;
/// Smallest memory BAR.
pub const PCI_BAR_MEM_MIN_SIZE: u64 = 16;
/// Largest 32-bit memory BAR.
pub const PCI_BAR_MEM32_MAX_SIZE: u64 = 1 << 31;
/// Largest 64-bit memory BAR.
pub const PCI_BAR_MEM64_MAX_SIZE: u64 = 1 << 63;
/// Smallest I/O BAR.
pub const PCI_BAR_IO_MIN_SIZE: u64 = 4;
/// Largest I/O BAR.
pub const PCI_BAR_IO_MAX_SIZE: u64 = 256;

/// Bits in a dword.
const DWORD_BITS: u32 = 32;
/// Mask of a dword in a u64.
const DWORD_MASK: u64 = 0xffff_ffff;
/// Size of a dword register.
const DWORD_SIZE: u16 = 4;

/// What kind of BAR a register implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// An I/O-space BAR (x86 ports).
    Io,
    /// A memory BAR with a 32-bit address.
    Memory32,
    /// A memory BAR with a 64-bit address (takes this BAR register and the next).
    Memory64,
}

impl BarKind {
    /// The address space the BAR decodes.
    pub fn space(&self) -> BarSpace {
        match self {
            BarKind::Io => BarSpace::Io,
            BarKind::Memory32 | BarKind::Memory64 => BarSpace::Memory,
        }
    }

    /// The read-only flag bits of the BAR's low dword that describe this kind.
    fn flag_bits(&self, prefetchable: bool) -> u32 {
        let prefetch = if prefetchable {
            PCI_BAR_MEM_PREFETCH
        } else {
            0
        };
        match self {
            BarKind::Io => PCI_BAR_SPACE_IO,
            BarKind::Memory32 => prefetch,
            BarKind::Memory64 => PCI_BAR_MEM_TYPE_64 | prefetch,
        }
    }

    /// The flag bits that are never address bits.
    fn flags_mask(&self) -> u32 {
        match self {
            BarKind::Io => PCI_BAR_IO_FLAGS_MASK,
            BarKind::Memory32 | BarKind::Memory64 => PCI_BAR_MEM_FLAGS_MASK,
        }
    }

    /// Allowed sizes (inclusive).
    fn size_range(&self) -> (u64, u64) {
        match self {
            BarKind::Io => (PCI_BAR_IO_MIN_SIZE, PCI_BAR_IO_MAX_SIZE),
            BarKind::Memory32 => (PCI_BAR_MEM_MIN_SIZE, PCI_BAR_MEM32_MAX_SIZE),
            BarKind::Memory64 => (PCI_BAR_MEM_MIN_SIZE, PCI_BAR_MEM64_MAX_SIZE),
        }
    }
}

/// The address space a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarSpace {
    /// Memory space (the MMIO bus).
    Memory,
    /// I/O space (the PIO bus).
    Io,
}

/// One implemented BAR and its current programming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRegion {
    /// BAR index (0..6; a 64-bit BAR has the index of its low dword).
    pub index: u8,
    /// The kind of BAR.
    pub kind: BarKind,
    /// Whether a memory BAR is marked prefetchable.
    pub prefetchable: bool,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// The address the guest (or firmware) programmed.
    pub address: u64,
    /// True when the command register enables decoding of the BAR's space.
    pub decoding: bool,
}

impl BarRegion {
    /// True when the BAR decodes `len` bytes at `addr` of `space`.
    pub fn contains(&self, space: BarSpace, addr: u64, len: u64) -> bool {
        self.decoding
            && self.kind.space() == space
            && addr >= self.address
            && addr
                .checked_add(len)
                .zip(self.address.checked_add(self.size))
                .is_some_and(|(end, bar_end)| end <= bar_end)
    }
}

/// What a configuration write changed that the VMM may need to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigWriteEffect {
    /// BAR `bar` now sits at `new` instead of `old` (sizing probes are not reported).
    BarMoved {
        /// BAR index.
        bar: u8,
        /// Previously reported address.
        old: u64,
        /// Current address.
        new: u64,
    },
    /// The command register's decode enables changed; these are the new values.
    DecodeChanged {
        /// Memory space decoding enabled.
        memory: bool,
        /// I/O space decoding enabled.
        io: bool,
    },
}

/// The identity fields of a type-0 header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// 24-bit class code: base class << 16 | sub-class << 8 | programming interface.
    pub class_code: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Interrupt pin (0: no INTx; 1..4: INTA#..INTD#).
    pub interrupt_pin: u8,
}

/// A BAR definition kept beside the registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BarDef {
    kind: BarKind,
    size: u64,
    prefetchable: bool,
    /// The address last reported in a `BarMoved` (initially 0).
    reported: u64,
}

/// What a BAR register slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BarSlot {
    Unused,
    Bar(BarDef),
    /// The upper dword of the 64-bit BAR in the slot below.
    Upper,
}

/// Which per-byte table a raw setter updates.
#[derive(Clone, Copy)]
enum Table {
    Value,
    Writable,
    W1c,
}

/// A type-0 configuration space: values, write masks, BARs and the capability list.
#[derive(Clone, Debug)]
pub struct PciConfigSpace {
    regs: Vec<u8>,
    writable: Vec<u8>,
    w1c: Vec<u8>,
    bars: [BarSlot; PCI_BAR_COUNT],
    /// Offset of the last capability in the list.
    last_cap: Option<u16>,
    /// Where the next capability goes.
    next_cap: u16,
}

/// Offset of BAR register `index` (callers pass `index < PCI_BAR_COUNT`).
fn bar_offset(index: usize) -> u16 {
    PCI_BAR0 + PCI_BAR_REG_SIZE * index as u16
}

/// True when `[a, a + a_len)` and `[b, b + b_len)` overlap.
pub(crate) fn ranges_overlap(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

impl PciConfigSpace {
    /// Creates a header with `header`'s identity, no BARs and no capabilities.
    pub fn new(header: &PciHeader) -> Self {
        let mut cfg = PciConfigSpace {
            regs: vec![0; PCI_CONFIG_SPACE_SIZE],
            writable: vec![0; PCI_CONFIG_SPACE_SIZE],
            w1c: vec![0; PCI_CONFIG_SPACE_SIZE],
            bars: [BarSlot::Unused; PCI_BAR_COUNT],
            last_cap: None,
            next_cap: PCI_CAP_AREA_START,
        };
        cfg.set_u16(PCI_VENDOR_ID, header.vendor_id);
        cfg.set_u16(PCI_DEVICE_ID, header.device_id);
        cfg.set_u8(PCI_REVISION_ID, header.revision_id);
        let class = header.class_code.to_le_bytes();
        cfg.set_bytes(Table::Value, PCI_CLASS_CODE, &class[..3]);
        cfg.set_u8(PCI_HEADER_TYPE, PCI_HEADER_TYPE_NORMAL);
        cfg.set_u16(PCI_SUBSYSTEM_VENDOR_ID, header.subsystem_vendor_id);
        cfg.set_u16(PCI_SUBSYSTEM_ID, header.subsystem_id);
        cfg.set_u8(PCI_INTERRUPT_PIN, header.interrupt_pin);

        cfg.set_writable_u16(PCI_COMMAND, PCI_COMMAND_WRITABLE);
        cfg.set_w1c_u16(PCI_STATUS, PCI_STATUS_W1C);
        cfg.set_writable_u8(PCI_CACHE_LINE_SIZE, u8::MAX);
        cfg.set_writable_u8(PCI_INTERRUPT_LINE, u8::MAX);
        cfg
    }

    /// Defines BAR `index` as `kind` of `size` bytes (a power of two: 16 bytes to 2 GiB for
    /// 32-bit memory, up to 2^63 for 64-bit memory, 4 to 256 bytes for I/O). A 64-bit BAR
    /// also takes register `index + 1`. `prefetchable` is ignored for I/O BARs.
    pub fn add_bar(
        &mut self,
        index: u8,
        kind: BarKind,
        size: u64,
        prefetchable: bool,
    ) -> Result<(), PciError> {
        let slot = usize::from(index);
        let upper = (kind == BarKind::Memory64).then_some(slot + 1);
        if slot >= PCI_BAR_COUNT || upper.is_some_and(|u| u >= PCI_BAR_COUNT) {
            return Err(PciError::InvalidBarIndex(index));
        }
        for s in std::iter::once(slot).chain(upper) {
            if self.bars[s] != BarSlot::Unused {
                return Err(PciError::BarInUse(s as u8));
            }
        }
        let (min, max) = kind.size_range();
        if !size.is_power_of_two() || size < min || size > max {
            return Err(PciError::InvalidBarSize {
                bar: index,
                size,
                kind,
            });
        }
        let prefetchable = prefetchable && kind != BarKind::Io;
        let address_mask = !(size - 1);
        let low_mask = (address_mask & DWORD_MASK) as u32 & !kind.flags_mask();
        let offset = bar_offset(slot);
        self.set_u32(offset, kind.flag_bits(prefetchable));
        self.set_writable_u32(offset, low_mask);
        if let Some(u) = upper {
            let high_offset = bar_offset(u);
            self.set_u32(high_offset, 0);
            self.set_writable_u32(high_offset, (address_mask >> DWORD_BITS) as u32);
            self.bars[u] = BarSlot::Upper;
        }
        self.bars[slot] = BarSlot::Bar(BarDef {
            kind,
            size,
            prefetchable,
            reported: 0,
        });
        Ok(())
    }

    /// Adds a capability with ID `id` occupying `len` bytes (header included) at the next
    /// free dword-aligned offset of the 0x40..0x100 area, links it at the end of the list,
    /// sets status bit 4 and returns its offset. The body is zero and read-only until the
    /// caller sets values and masks.
    pub fn add_capability(&mut self, id: u8, len: u8) -> Result<u16, PciError> {
        let full = PciError::CapabilitySpaceFull { id, len };
        if len < PCI_CAP_HEADER_SIZE {
            return Err(full);
        }
        let offset = self.next_cap;
        let end = offset + u16::from(len);
        if end > PCI_CAP_AREA_END {
            return Err(full);
        }
        self.set_u8(offset + PCI_CAP_ID, id);
        self.set_u8(offset + PCI_CAP_NEXT, 0);
        // Offsets below 0x100 fit the 8-bit pointer.
        let pointer = offset as u8;
        match self.last_cap {
            Some(prev) => self.set_u8(prev + PCI_CAP_NEXT, pointer),
            None => self.set_u8(PCI_CAPABILITY_LIST, pointer),
        }
        let status = self.read_u16(PCI_STATUS);
        self.set_u16(PCI_STATUS, status | PCI_STATUS_CAP_LIST);
        self.last_cap = Some(offset);
        self.next_cap = end.div_ceil(PCI_CAP_ALIGN) * PCI_CAP_ALIGN;
        Ok(offset)
    }

    /// Walks the capability list the way software does: `(id, offset)` pairs in list
    /// order, stopping at a null pointer, an out-of-area pointer or after the most
    /// capabilities that fit (so a loop cannot run forever).
    pub fn capabilities(&self) -> Vec<(u8, u16)> {
        let mut caps = Vec::new();
        if self.read_u16(PCI_STATUS) & PCI_STATUS_CAP_LIST == 0 {
            return caps;
        }
        let mut pointer = self.read_u8(PCI_CAPABILITY_LIST) & PCI_CAP_POINTER_MASK;
        while pointer != 0 && caps.len() < PCI_CAP_MAX_COUNT {
            let offset = u16::from(pointer);
            if offset < PCI_CAP_AREA_START {
                break;
            }
            caps.push((self.read_u8(offset + PCI_CAP_ID), offset));
            pointer = self.read_u8(offset + PCI_CAP_NEXT) & PCI_CAP_POINTER_MASK;
        }
        caps
    }

    /// The offset of the first capability with ID `id`.
    pub fn find_capability(&self, id: u8) -> Option<u16> {
        self.capabilities()
            .into_iter()
            .find(|&(cap_id, _)| cap_id == id)
            .map(|(_, offset)| offset)
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the end of the space read as 0xff.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::from(offset)
                .checked_add(i)
                .and_then(|o| self.regs.get(o))
                .copied()
                .unwrap_or(u8::MAX);
        }
    }

    /// A guest write of `data` at `offset`, applying the masks; bytes past the end are
    /// ignored. Returns the BAR moves and decode changes it caused.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> Vec<ConfigWriteEffect> {
        let old_command = self.command();
        for (i, &value) in data.iter().enumerate() {
            let Some(o) = usize::from(offset).checked_add(i) else {
                break;
            };
            let (Some(reg), Some(&wm), Some(&w1c)) =
                (self.regs.get(o), self.writable.get(o), self.w1c.get(o))
            else {
                break;
            };
            let updated = ((reg & !wm) | (value & wm)) & !(value & w1c);
            if let Some(r) = self.regs.get_mut(o) {
                *r = updated;
            }
        }

        let mut effects = Vec::new();
        let start = u64::from(offset);
        let len = data.len() as u64;
        let command_len = u64::from(DWORD_SIZE / 2);
        if ranges_overlap(start, len, u64::from(PCI_COMMAND), command_len) {
            let new_command = self.command();
            let decode = PCI_COMMAND_MEMORY | PCI_COMMAND_IO;
            if (old_command ^ new_command) & decode != 0 {
                effects.push(ConfigWriteEffect::DecodeChanged {
                    memory: new_command & PCI_COMMAND_MEMORY != 0,
                    io: new_command & PCI_COMMAND_IO != 0,
                });
            }
        }
        let bars_len = u64::from(PCI_BAR_END - PCI_BAR0);
        if ranges_overlap(start, len, u64::from(PCI_BAR0), bars_len) {
            self.collect_bar_moves(&mut effects);
        }
        effects
    }

    /// Reports every BAR whose address differs from the last reported one, skipping BARs
    /// that hold the sizing pattern.
    fn collect_bar_moves(&mut self, effects: &mut Vec<ConfigWriteEffect>) {
        for slot in 0..PCI_BAR_COUNT {
            let BarSlot::Bar(def) = self.bars[slot] else {
                continue;
            };
            if self.bar_is_sizing(slot, &def) {
                continue;
            }
            let address = self.bar_address_of(slot, &def);
            if address != def.reported {
                effects.push(ConfigWriteEffect::BarMoved {
                    bar: slot as u8,
                    old: def.reported,
                    new: address,
                });
                self.bars[slot] = BarSlot::Bar(BarDef {
                    reported: address,
                    ..def
                });
            }
        }
    }

    /// True when one of the BAR's dwords has every writable bit set (what writing all ones
    /// leaves behind).
    fn bar_is_sizing(&self, slot: usize, def: &BarDef) -> bool {
        let all_set = |offset: u16| {
            let mask = self.writable_u32(offset);
            mask != 0 && self.read_u32(offset) & mask == mask
        };
        let offset = bar_offset(slot);
        all_set(offset) || (def.kind == BarKind::Memory64 && all_set(offset + DWORD_SIZE))
    }

    /// The address programmed into the BAR at `slot`.
    fn bar_address_of(&self, slot: usize, def: &BarDef) -> u64 {
        let offset = bar_offset(slot);
        let low = u64::from(self.read_u32(offset) & !def.kind.flags_mask());
        let high = if def.kind == BarKind::Memory64 {
            u64::from(self.read_u32(offset + DWORD_SIZE)) << DWORD_BITS
        } else {
            0
        };
        high | low
    }

    /// The implemented BARs with their current address and decoding state.
    pub fn bar_regions(&self) -> Vec<BarRegion> {
        let command = self.command();
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| match s {
                BarSlot::Bar(def) => Some(BarRegion {
                    index: slot as u8,
                    kind: def.kind,
                    prefetchable: def.prefetchable,
                    size: def.size,
                    address: self.bar_address_of(slot, def),
                    decoding: match def.kind.space() {
                        BarSpace::Memory => command & PCI_COMMAND_MEMORY != 0,
                        BarSpace::Io => command & PCI_COMMAND_IO != 0,
                    },
                }),
                BarSlot::Unused | BarSlot::Upper => None,
            })
            .collect()
    }

    /// BAR `index` with its current programming, if implemented.
    pub fn bar(&self, index: u8) -> Option<BarRegion> {
        self.bar_regions().into_iter().find(|b| b.index == index)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(PCI_COMMAND)
    }

    /// True when the command register's INTx disable bit is set.
    pub fn intx_disabled(&self) -> bool {
        self.command() & PCI_COMMAND_INTX_DISABLE != 0
    }

    /// True when Bus Master Enable is set (the function may send MSIs).
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & PCI_COMMAND_MASTER != 0
    }

    /// Reads a byte (0 past the end).
    pub fn read_u8(&self, offset: u16) -> u8 {
        self.regs.get(usize::from(offset)).copied().unwrap_or(0)
    }

    /// Reads a little-endian word (bytes past the end read 0).
    pub fn read_u16(&self, offset: u16) -> u16 {
        u16::from_le_bytes([self.read_u8(offset), self.read_u8(offset.saturating_add(1))])
    }

    /// Reads a little-endian dword (bytes past the end read 0).
    pub fn read_u32(&self, offset: u16) -> u32 {
        u32::from(self.read_u16(offset))
            | (u32::from(self.read_u16(offset.saturating_add(2))) << 16)
    }

    /// The writable mask of the dword at `offset`.
    fn writable_u32(&self, offset: u16) -> u32 {
        let byte = |o: u16| {
            self.writable
                .get(usize::from(o))
                .copied()
                .map_or(0, u32::from)
        };
        (0..DWORD_SIZE).fold(0, |acc, i| {
            acc | (byte(offset.saturating_add(i)) << (8 * u32::from(i)))
        })
    }

    /// Sets a byte, bypassing the masks (device-side state).
    pub fn set_u8(&mut self, offset: u16, value: u8) {
        self.set_bytes(Table::Value, offset, &[value]);
    }

    /// Sets a word, bypassing the masks.
    pub fn set_u16(&mut self, offset: u16, value: u16) {
        self.set_bytes(Table::Value, offset, &value.to_le_bytes());
    }

    /// Sets a dword, bypassing the masks.
    pub fn set_u32(&mut self, offset: u16, value: u32) {
        self.set_bytes(Table::Value, offset, &value.to_le_bytes());
    }

    /// Sets which bits of the byte at `offset` the guest can write.
    pub fn set_writable_u8(&mut self, offset: u16, mask: u8) {
        self.set_bytes(Table::Writable, offset, &[mask]);
    }

    /// Sets which bits of the word at `offset` the guest can write.
    pub fn set_writable_u16(&mut self, offset: u16, mask: u16) {
        self.set_bytes(Table::Writable, offset, &mask.to_le_bytes());
    }

    /// Sets which bits of the dword at `offset` the guest can write.
    pub fn set_writable_u32(&mut self, offset: u16, mask: u32) {
        self.set_bytes(Table::Writable, offset, &mask.to_le_bytes());
    }

    /// Sets which bits of the word at `offset` are write-1-to-clear (they must not also be
    /// writable).
    pub fn set_w1c_u16(&mut self, offset: u16, mask: u16) {
        self.set_bytes(Table::W1c, offset, &mask.to_le_bytes());
    }

    /// Copies `bytes` into `table` at `offset`. Offsets past the end are a device-model
    /// bug, never guest input: they are logged and dropped.
    fn set_bytes(&mut self, table: Table, offset: u16, bytes: &[u8]) {
        let target = match table {
            Table::Value => &mut self.regs,
            Table::Writable => &mut self.writable,
            Table::W1c => &mut self.w1c,
        };
        let start = usize::from(offset);
        match target.get_mut(start..start.saturating_add(bytes.len())) {
            Some(dst) => dst.copy_from_slice(bytes),
            None => warn!(
                "pci config: device model set {} bytes past the end at {offset:#x}",
                bytes.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1234,
            device_id: 0x5678,
            revision_id: 0x10,
            class_code: 0x0c_0330,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            interrupt_pin: 1,
        }
    }

    fn read32(cfg: &PciConfigSpace, offset: u16) -> u32 {
        let mut data = [0u8; 4];
        cfg.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(cfg: &mut PciConfigSpace, offset: u16, value: u32) -> Vec<ConfigWriteEffect> {
        cfg.write(offset, &value.to_le_bytes())
    }

    #[test]
    fn identity_fields_are_read_only() {
        let mut cfg = PciConfigSpace::new(&header());
        assert_eq!(read32(&cfg, 0), 0x5678_1234);
        assert_eq!(read32(&cfg, 8), 0x0c03_3010);
        assert_eq!(read32(&cfg, 0x2c), 0x1100_1af4);
        assert_eq!(cfg.read_u8(PCI_INTERRUPT_PIN), 1);
        assert_eq!(cfg.read_u8(PCI_HEADER_TYPE), 0);
        for offset in [0u16, 8, 0x2c, 0x34] {
            write32(&mut cfg, offset, 0xffff_ffff);
        }
        assert_eq!(read32(&cfg, 0), 0x5678_1234);
        assert_eq!(read32(&cfg, 8), 0x0c03_3010);
        assert_eq!(read32(&cfg, 0x2c), 0x1100_1af4);
        assert_eq!(cfg.read_u8(PCI_CAPABILITY_LIST), 0);
        // Interrupt line is writable, pin is not.
        write32(&mut cfg, 0x3c, 0xffff_ff0b);
        assert_eq!(read32(&cfg, 0x3c), 0x0000_010b);
        // Cache line size writable, latency timer, header type and BIST read-only.
        write32(&mut cfg, 0x0c, 0xffff_ffff);
        assert_eq!(read32(&cfg, 0x0c), 0x0000_00ff);
    }

    #[test]
    fn command_mask_and_decode_effect() {
        let mut cfg = PciConfigSpace::new(&header());
        let effects = cfg.write(PCI_COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(cfg.command(), PCI_COMMAND_WRITABLE);
        assert_eq!(
            effects,
            vec![ConfigWriteEffect::DecodeChanged {
                memory: true,
                io: true
            }]
        );
        assert!(cfg.bus_master_enabled());
        // Only bus master changes: no decode effect.
        let effects = cfg.write(
            PCI_COMMAND,
            &(PCI_COMMAND_WRITABLE & !PCI_COMMAND_MASTER).to_le_bytes(),
        );
        assert!(effects.is_empty());
        assert!(!cfg.bus_master_enabled());
        // Byte write to the command register's low byte.
        let effects = cfg.write(PCI_COMMAND, &[0]);
        assert_eq!(
            effects,
            vec![ConfigWriteEffect::DecodeChanged {
                memory: false,
                io: false
            }]
        );
    }

    #[test]
    fn status_is_read_only_except_rw1c() {
        let mut cfg = PciConfigSpace::new(&header());
        let errors = PCI_STATUS_REC_MASTER_ABORT | PCI_STATUS_DETECTED_PARITY;
        cfg.set_u16(PCI_STATUS, errors | PCI_STATUS_INTERRUPT);
        // Writing zeros changes nothing; writing ones to RO bits changes nothing.
        cfg.write(PCI_STATUS, &0u16.to_le_bytes());
        assert_eq!(cfg.read_u16(PCI_STATUS), errors | PCI_STATUS_INTERRUPT);
        // Write 1 to one error bit clears it only.
        cfg.write(PCI_STATUS, &PCI_STATUS_DETECTED_PARITY.to_le_bytes());
        assert_eq!(
            cfg.read_u16(PCI_STATUS),
            PCI_STATUS_REC_MASTER_ABORT | PCI_STATUS_INTERRUPT
        );
        // Writing all ones clears every RW1C bit but not the RO interrupt bit.
        cfg.write(PCI_STATUS, &0xffffu16.to_le_bytes());
        assert_eq!(cfg.read_u16(PCI_STATUS), PCI_STATUS_INTERRUPT);
        // A dword write at 0x04 reaches command and status together.
        cfg.set_u16(PCI_STATUS, PCI_STATUS_SIG_SYSTEM_ERROR);
        write32(&mut cfg, PCI_COMMAND, 0xffff_0002);
        assert_eq!(cfg.read_u16(PCI_STATUS), 0);
        assert_eq!(cfg.command(), PCI_COMMAND_MEMORY);
    }

    #[test]
    fn bar_sizing_32_bit_memory() {
        let mut cfg = PciConfigSpace::new(&header());
        cfg.add_bar(0, BarKind::Memory32, 0x10_0000, false).unwrap();
        assert_eq!(read32(&cfg, PCI_BAR0), 0);
        assert!(write32(&mut cfg, PCI_BAR0, 0xffff_ffff).is_empty());
        assert_eq!(read32(&cfg, PCI_BAR0), 0xfff0_0000);
        // Restoring 0 is not a move (0 was the reported address).
        assert!(write32(&mut cfg, PCI_BAR0, 0).is_empty());
        let effects = write32(&mut cfg, PCI_BAR0, 0xc010_0000 | 0xf);
        assert_eq!(
            effects,
            vec![ConfigWriteEffect::BarMoved {
                bar: 0,
                old: 0,
                new: 0xc010_0000
            }]
        );
        assert_eq!(read32(&cfg, PCI_BAR0), 0xc010_0000);
        // Sizing again, then restore: no effects.
        assert!(write32(&mut cfg, PCI_BAR0, 0xffff_ffff).is_empty());
        assert!(write32(&mut cfg, PCI_BAR0, 0xc010_0000).is_empty());
        let bar = cfg.bar(0).unwrap();
        assert_eq!(bar.address, 0xc010_0000);
        assert_eq!(bar.size, 0x10_0000);
        assert!(!bar.decoding);
    }

    #[test]
    fn bar_sizing_prefetchable_and_io() {
        let mut cfg = PciConfigSpace::new(&header());
        cfg.add_bar(1, BarKind::Memory32, 0x1000, true).unwrap();
        cfg.add_bar(4, BarKind::Io, 0x20, true).unwrap();
        write32(&mut cfg, PCI_BAR0 + 4, 0xffff_ffff);
        assert_eq!(read32(&cfg, PCI_BAR0 + 4), 0xffff_f008);
        write32(&mut cfg, PCI_BAR0 + 16, 0xffff_ffff);
        assert_eq!(read32(&cfg, PCI_BAR0 + 16), 0xffff_ffe1);
        let effects = write32(&mut cfg, PCI_BAR0 + 16, 0xc040);
        assert_eq!(
            effects,
            vec![ConfigWriteEffect::BarMoved {
                bar: 4,
                old: 0,
                new: 0xc040
            }]
        );
        let io = cfg.bar(4).unwrap();
        assert_eq!(io.kind, BarKind::Io);
        assert!(!io.prefetchable);
        cfg.write(PCI_COMMAND, &PCI_COMMAND_IO.to_le_bytes());
        let io = cfg.bar(4).unwrap();
        assert!(io.decoding && io.contains(BarSpace::Io, 0xc05c, 4));
        assert!(!io.contains(BarSpace::Io, 0xc05d, 4));
        assert!(!io.contains(BarSpace::Memory, 0xc040, 4));
        // Unimplemented BARs and the ROM BAR read zero even after all ones.
        for offset in [PCI_BAR0, PCI_BAR0 + 8, PCI_BAR0 + 20, PCI_EXPANSION_ROM] {
            write32(&mut cfg, offset, 0xffff_ffff);
            assert_eq!(read32(&cfg, offset), 0, "offset {offset:#x}");
        }
    }

    #[test]
    fn bar_sizing_64_bit_memory() {
        let mut cfg = PciConfigSpace::new(&header());
        cfg.add_bar(2, BarKind::Memory64, 0x4000, false).unwrap();
        let lo = PCI_BAR0 + 8;
        let hi = PCI_BAR0 + 12;
        assert_eq!(read32(&cfg, lo), PCI_BAR_MEM_TYPE_64);
        // Linux's order: size low, size high, restore low, restore high: no moves.
        assert!(write32(&mut cfg, lo, 0xffff_ffff).is_empty());
        assert_eq!(read32(&cfg, lo), 0xffff_c004);
        assert!(write32(&mut cfg, hi, 0xffff_ffff).is_empty());
        assert_eq!(read32(&cfg, hi), 0xffff_ffff);
        assert!(write32(&mut cfg, lo, 0).is_empty());
        assert!(write32(&mut cfg, hi, 0).is_empty());
        // Program 0x1_2345_8000: low then high reports the intermediate address.
        assert_eq!(
            write32(&mut cfg, lo, 0x2345_8000),
            vec![ConfigWriteEffect::BarMoved {
                bar: 2,
                old: 0,
                new: 0x2345_8000
            }]
        );
        assert_eq!(
            write32(&mut cfg, hi, 1),
            vec![ConfigWriteEffect::BarMoved {
                bar: 2,
                old: 0x2345_8000,
                new: 0x1_2345_8000
            }]
        );
        let bar = cfg.bar(2).unwrap();
        assert_eq!(bar.address, 0x1_2345_8000);
        assert_eq!(bar.kind, BarKind::Memory64);
        // The upper half is not a BAR of its own.
        assert!(cfg.bar(3).is_none());
        assert_eq!(cfg.bar_regions().len(), 1);
    }

    #[test]
    fn bar_sizing_large_64_bit_bar() {
        let mut cfg = PciConfigSpace::new(&header());
        cfg.add_bar(0, BarKind::Memory64, 1 << 33, true).unwrap();
        write32(&mut cfg, PCI_BAR0, 0xffff_ffff);
        write32(&mut cfg, PCI_BAR0 + 4, 0xffff_ffff);
        assert_eq!(read32(&cfg, PCI_BAR0), 0x0000_000c);
        assert_eq!(read32(&cfg, PCI_BAR0 + 4), 0xffff_fffe);
        write32(&mut cfg, PCI_BAR0, 0);
        let effects = write32(&mut cfg, PCI_BAR0 + 4, 0x4);
        assert_eq!(
            effects,
            vec![ConfigWriteEffect::BarMoved {
                bar: 0,
                old: 0,
                new: 0x4_0000_0000
            }]
        );
    }

    #[test]
    fn add_bar_rejects_bad_definitions() {
        let mut cfg = PciConfigSpace::new(&header());
        assert_eq!(
            cfg.add_bar(6, BarKind::Memory32, 0x1000, false),
            Err(PciError::InvalidBarIndex(6))
        );
        assert_eq!(
            cfg.add_bar(5, BarKind::Memory64, 0x1000, false),
            Err(PciError::InvalidBarIndex(5))
        );
        assert!(matches!(
            cfg.add_bar(0, BarKind::Memory32, 0x1800, false),
            Err(PciError::InvalidBarSize { .. })
        ));
        assert!(matches!(
            cfg.add_bar(0, BarKind::Io, 0x200, false),
            Err(PciError::InvalidBarSize { .. })
        ));
        assert!(matches!(
            cfg.add_bar(0, BarKind::Memory32, 1 << 32, false),
            Err(PciError::InvalidBarSize { .. })
        ));
        assert!(matches!(
            cfg.add_bar(0, BarKind::Memory32, 8, false),
            Err(PciError::InvalidBarSize { .. })
        ));
        cfg.add_bar(1, BarKind::Memory64, 0x1000, false).unwrap();
        assert_eq!(
            cfg.add_bar(2, BarKind::Memory32, 0x1000, false),
            Err(PciError::BarInUse(2))
        );
        assert_eq!(
            cfg.add_bar(0, BarKind::Memory64, 0x1000, false),
            Err(PciError::BarInUse(1))
        );
    }

    #[test]
    fn capability_list_walk() {
        let mut cfg = PciConfigSpace::new(&header());
        assert!(cfg.capabilities().is_empty());
        assert_eq!(cfg.read_u16(PCI_STATUS) & PCI_STATUS_CAP_LIST, 0);
        let a = cfg.add_capability(0x05, 0x18).unwrap();
        let b = cfg.add_capability(0x11, 0x0c).unwrap();
        let c = cfg.add_capability(0x09, 0x03).unwrap();
        assert_eq!((a, b, c), (0x40, 0x58, 0x64));
        assert_ne!(cfg.read_u16(PCI_STATUS) & PCI_STATUS_CAP_LIST, 0);
        assert_eq!(cfg.read_u8(PCI_CAPABILITY_LIST), 0x40);
        // Software's walk: pointer at 0x34, then each next byte.
        let mut walk = vec![];
        let mut p = read32(&cfg, PCI_CAPABILITY_LIST) as u8;
        while p != 0 {
            let hdr = read32(&cfg, u16::from(p));
            walk.push((hdr as u8, p));
            p = (hdr >> 8) as u8;
        }
        assert_eq!(walk, vec![(0x05, 0x40), (0x11, 0x58), (0x09, 0x64)]);
        assert_eq!(
            cfg.capabilities(),
            vec![(0x05, 0x40), (0x11, 0x58), (0x09, 0x64)]
        );
        assert_eq!(cfg.find_capability(0x11), Some(0x58));
        assert_eq!(cfg.find_capability(0x10), None);
        // Headers are read-only.
        write32(&mut cfg, 0x40, 0);
        assert_eq!(cfg.capabilities().len(), 3);
        // Space runs out below 0x100.
        assert_eq!(
            cfg.add_capability(0x10, 0xa0),
            Err(PciError::CapabilitySpaceFull {
                id: 0x10,
                len: 0xa0
            })
        );
        assert!(cfg.add_capability(0x10, 1).is_err());
        assert_eq!(cfg.add_capability(0x10, 0x98), Ok(0x68));
    }

    #[test]
    fn capability_walk_survives_loops() {
        let mut cfg = PciConfigSpace::new(&header());
        let a = cfg.add_capability(0x05, 4).unwrap();
        cfg.set_u8(a + PCI_CAP_NEXT, a as u8);
        assert_eq!(cfg.capabilities().len(), PCI_CAP_MAX_COUNT);
    }

    #[test]
    fn extended_space_and_out_of_range_accesses() {
        let mut cfg = PciConfigSpace::new(&header());
        assert_eq!(read32(&cfg, 0x100), 0);
        assert_eq!(read32(&cfg, 0xffc), 0);
        write32(&mut cfg, 0xffc, 0xffff_ffff);
        assert_eq!(read32(&cfg, 0xffc), 0);
        // Past the end: all ones, writes dropped, no panic.
        assert_eq!(read32(&cfg, 0xffe), 0xffff_0000);
        assert_eq!(read32(&cfg, u16::MAX), 0xffff_ffff);
        write32(&mut cfg, u16::MAX, 0);
        cfg.set_u32(0xffe, 1);
        let mut empty = [];
        cfg.read(0, &mut empty);
        assert!(cfg.write(0, &[]).is_empty());
    }
}
