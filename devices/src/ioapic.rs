//! Userspace IOAPIC for KVM's split irqchip.
//!
//! An 82093AA-style IOAPIC, version 0x20 (with the EOI register), with 24 pins, normally at
//! MMIO [`IOAPIC_MMIO_BASE`]. The LAPICs live in KVM; this model owns the redirection table
//! and the pin state, and talks to the VMM's route table through [`IoApicSink`]: GSI `n`
//! is pin `n`, its route holds the message the pin's RTE produces, and raising the GSI
//! (`KVM_IRQ_LINE` on an MSI route) delivers that message.
//!
//! # Messages
//!
//! Each RTE is turned into the MSI a real IOAPIC would put on the bus, without
//! interpretation, so the VMM can apply interrupt remapping or the extended destination ID
//! convention the same way it does for PCI devices:
//!
//! * `address_lo = 0xfee0_0000 | RTE[63:48] << 4 | RTE[11] << 2`: destination `RTE[63:56]`
//!   lands in address bits 19:12, the extended destination ID `RTE[55:49]` in bits 11:5,
//!   the remappable-format bit 48 in address bit 4 and the destination mode (or, in
//!   remappable format, handle bit 15) in address bit 2;
//! * `address_hi = 0`;
//! * `data = vector | delivery mode << 8 | trigger << 15`, plus the level-assert bit 14 for
//!   level-triggered pins.
//!
//! The VMM decodes remappable messages (VT-d IRTE lookup) and compatibility messages with an
//! extended destination ID ([`MsiMessage::with_ext_dest_swizzled`]); the IOAPIC never does.
//!
//! # Pins
//!
//! [`IoApic::set_irq_level`] takes the logical state of the interrupt line (`true` =
//! asserted); the RTE polarity bit is stored and reported but not applied, since emulated
//! devices signal assertion rather than an electrical level. Delivery happens at once, so
//! the delivery-status bit always reads 0.
//!
//! # Locking
//!
//! The sink is called with the IOAPIC borrowed mutably (in practice: with the IOAPIC's
//! mutex held). A sink must therefore never call back into the IOAPIC.

use std::fmt;
use std::sync::Arc;

use log::debug;
use virtual_iommu::msi::{
    DeliveryMode, MsiMessage, MSI_ADDR_BASE, MSI_ADDR_DEST_MODE_LOGICAL, MSI_ADDR_REMAPPABLE,
    MSI_DATA_DELIVERY_SHIFT, MSI_DATA_LEVEL_ASSERT, MSI_DATA_TRIGGER_LEVEL,
};

use crate::{fill_ones, BusDevice};

/// Guest-physical base of the IOAPIC's MMIO window.
pub const IOAPIC_MMIO_BASE: u64 = 0xfec0_0000;
/// Size of the IOAPIC's MMIO window.
pub const IOAPIC_MMIO_SIZE: u64 = 0x1000;
/// Number of interrupt input pins (and of redirection table entries).
pub const IOAPIC_NUM_PINS: usize = 24;
/// The version this model reports in the VER register (0x20: has the EOI register).
pub const IOAPIC_VERSION: u32 = 0x20;

/// MMIO offset of IOREGSEL, the index of the register IOWIN accesses.
pub const IOAPIC_IOREGSEL_OFFSET: u64 = 0x00;
/// MMIO offset of IOWIN, the window onto the register IOREGSEL selects.
pub const IOAPIC_IOWIN_OFFSET: u64 = 0x10;
/// MMIO offset of the EOI register (version 0x20): a write of a vector ends the interrupt
/// of every level-triggered pin programmed with that vector.
pub const IOAPIC_EOI_OFFSET: u64 = 0x40;
/// Size in bytes of the only architecturally defined access to the MMIO registers.
pub const IOAPIC_ACCESS_SIZE: usize = 4;
/// IOREGSEL holds an 8-bit register index; the upper bits are reserved.
pub const IOAPIC_IOREGSEL_MASK: u32 = 0xff;
/// The EOI register takes the vector in bits 7:0.
pub const IOAPIC_EOI_VECTOR_MASK: u32 = 0xff;

/// Register index of the IOAPIC ID register.
pub const IOAPIC_REG_ID: u8 = 0x00;
/// Register index of the version register.
pub const IOAPIC_REG_VER: u8 = 0x01;
/// Register index of the arbitration ID register.
pub const IOAPIC_REG_ARB: u8 = 0x02;
/// Register index of the low dword of pin 0's RTE; pin `n` uses `0x10 + 2n` (low dword)
/// and `0x11 + 2n` (high dword).
pub const IOAPIC_REG_REDTBL_BASE: u8 = 0x10;

/// Shift of the 4-bit APIC ID in the ID and ARB registers (bits 27:24).
pub const IOAPIC_ID_SHIFT: u32 = 24;
/// Width mask of the APIC ID held in the ID register.
pub const IOAPIC_ID_MASK: u8 = 0x0f;
/// Shift of the maximum redirection entry field in the VER register (bits 23:16).
pub const IOAPIC_VER_MAX_REDIR_SHIFT: u32 = 16;

/// RTE vector field (bits 7:0). In remappable format Linux puts the pin number here.
pub const RTE_VECTOR_MASK: u64 = 0xff;
/// Shift of the RTE delivery mode field (bits 10:8).
pub const RTE_DELIVERY_MODE_SHIFT: u32 = 8;
/// Mask of the RTE delivery mode field.
pub const RTE_DELIVERY_MODE_MASK: u64 = 0x7 << RTE_DELIVERY_MODE_SHIFT;
/// RTE destination mode (bit 11): 1 = logical. In remappable format: interrupt index bit 15.
pub const RTE_DEST_MODE_LOGICAL: u64 = 1 << 11;
/// RTE delivery status (bit 12), read-only; always 0 in this model.
pub const RTE_DELIVERY_STATUS: u64 = 1 << 12;
/// RTE interrupt input pin polarity (bit 13): 1 = active low. Stored, not applied.
pub const RTE_POLARITY_LOW: u64 = 1 << 13;
/// RTE Remote IRR (bit 14), read-only: a level interrupt was accepted and awaits its EOI.
pub const RTE_REMOTE_IRR: u64 = 1 << 14;
/// RTE trigger mode (bit 15): 1 = level.
pub const RTE_TRIGGER_LEVEL: u64 = 1 << 15;
/// RTE mask (bit 16): 1 = masked.
pub const RTE_MASKED: u64 = 1 << 16;
/// RTE bits the guest cannot write.
pub const RTE_READ_ONLY_BITS: u64 = RTE_DELIVERY_STATUS | RTE_REMOTE_IRR;
/// Shift of the RTE bits 63:48 that become MSI address bits 19:4.
pub const RTE_ADDR_FIELD_SHIFT: u32 = 48;
/// Mask (after shifting) of the 16 RTE bits 63:48.
pub const RTE_ADDR_FIELD_MASK: u64 = 0xffff;
/// RTE interrupt format (bit 48): 1 = VT-d remappable format.
pub const RTE_REMAPPABLE: u64 = 1 << 48;
/// Shift of the extended destination ID (APIC ID bits 14:8) in RTE bits 55:49.
pub const RTE_EXT_DEST_SHIFT: u32 = 49;
/// Mask (after shifting) of the 7-bit extended destination ID.
pub const RTE_EXT_DEST_MASK: u64 = 0x7f;
/// Shift of the 8-bit destination field (RTE bits 63:56).
pub const RTE_DEST_SHIFT: u32 = 56;
/// Mask (after shifting) of the 8-bit destination field.
pub const RTE_DEST_MASK: u64 = 0xff;
/// Shift of interrupt-index bits 14:0 in a remappable RTE (bits 63:49).
pub const RTE_REMAP_INDEX_SHIFT: u32 = 49;
/// Mask (after shifting) of interrupt-index bits 14:0 in a remappable RTE.
pub const RTE_REMAP_INDEX_MASK: u64 = 0x7fff;
/// Interrupt-index bit that a remappable RTE carries in its bit 11.
pub const RTE_REMAP_INDEX_HIGH_BIT: u32 = 15;
/// The value of every RTE after reset: masked, everything else zero.
pub const RTE_RESET_VALUE: u64 = RTE_MASKED;

/// Shift from RTE bits 63:48 to MSI address bits 19:4 (bit 48 lands on the
/// remappable-format bit 4 of the address).
const RTE_TO_MSI_ADDR_SHIFT: u32 = MSI_ADDR_REMAPPABLE.trailing_zeros();
/// Mask of the low dword of a 64-bit register.
const LOW_DWORD_MASK: u64 = 0xffff_ffff;
/// Bits in a dword.
const DWORD_BITS: u32 = 32;

/// One 64-bit redirection table entry, with named accessors for its fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RedirectionEntry(pub u64);

impl RedirectionEntry {
    /// The raw 64-bit value.
    pub fn raw(&self) -> u64 {
        self.0
    }

    /// The vector field (bits 7:0); in remappable format, Linux stores the pin here.
    pub fn vector(&self) -> u8 {
        (self.0 & RTE_VECTOR_MASK) as u8
    }

    /// The raw 3-bit delivery mode field (bits 10:8).
    pub fn delivery_mode_bits(&self) -> u8 {
        ((self.0 & RTE_DELIVERY_MODE_MASK) >> RTE_DELIVERY_MODE_SHIFT) as u8
    }

    /// The delivery mode, `None` for the reserved encodings.
    pub fn delivery_mode(&self) -> Option<DeliveryMode> {
        DeliveryMode::from_bits(self.delivery_mode_bits())
    }

    /// True for logical destination mode (bit 11); in remappable format this bit is
    /// interrupt-index bit 15 instead.
    pub fn is_logical(&self) -> bool {
        self.0 & RTE_DEST_MODE_LOGICAL != 0
    }

    /// True when the input is declared active low (bit 13).
    pub fn is_active_low(&self) -> bool {
        self.0 & RTE_POLARITY_LOW != 0
    }

    /// True when Remote IRR (bit 14) is set.
    pub fn remote_irr(&self) -> bool {
        self.0 & RTE_REMOTE_IRR != 0
    }

    /// True for level trigger mode (bit 15).
    pub fn is_level(&self) -> bool {
        self.0 & RTE_TRIGGER_LEVEL != 0
    }

    /// True when the entry is masked (bit 16).
    pub fn is_masked(&self) -> bool {
        self.0 & RTE_MASKED != 0
    }

    /// True when the entry is in VT-d remappable format (bit 48).
    pub fn is_remappable(&self) -> bool {
        self.0 & RTE_REMAPPABLE != 0
    }

    /// The 8-bit destination (bits 63:56), meaningful in compatibility format.
    pub fn destination(&self) -> u8 {
        ((self.0 >> RTE_DEST_SHIFT) & RTE_DEST_MASK) as u8
    }

    /// The extended destination ID (bits 55:49: APIC ID bits 14:8), meaningful in
    /// compatibility format for guests that use KVM_FEATURE_MSI_EXT_DEST_ID.
    pub fn ext_destination(&self) -> u8 {
        ((self.0 >> RTE_EXT_DEST_SHIFT) & RTE_EXT_DEST_MASK) as u8
    }

    /// The 16-bit interrupt-remapping index (bits 63:49 are index 14:0, bit 11 is index
    /// bit 15), or `None` in compatibility format.
    pub fn remap_index(&self) -> Option<u16> {
        if !self.is_remappable() {
            return None;
        }
        let low = (self.0 >> RTE_REMAP_INDEX_SHIFT) & RTE_REMAP_INDEX_MASK;
        let high = u64::from(self.is_logical()) << RTE_REMAP_INDEX_HIGH_BIT;
        Some((low | high) as u16)
    }

    /// The MSI this entry puts on the bus, whether or not it is masked (see the module
    /// documentation for the encoding).
    pub fn msi_message(&self) -> MsiMessage {
        let addr_field = ((self.0 >> RTE_ADDR_FIELD_SHIFT) & RTE_ADDR_FIELD_MASK) as u32;
        let mut address_lo = MSI_ADDR_BASE | (addr_field << RTE_TO_MSI_ADDR_SHIFT);
        if self.is_logical() {
            address_lo |= MSI_ADDR_DEST_MODE_LOGICAL;
        }
        let mut data = u32::from(self.vector())
            | (u32::from(self.delivery_mode_bits()) << MSI_DATA_DELIVERY_SHIFT);
        if self.is_level() {
            data |= MSI_DATA_TRIGGER_LEVEL | MSI_DATA_LEVEL_ASSERT;
        }
        MsiMessage {
            address_lo,
            address_hi: 0,
            data,
        }
    }

    /// The MSI this entry produces, or `None` when it is masked.
    pub fn message(&self) -> Option<MsiMessage> {
        if self.is_masked() {
            None
        } else {
            Some(self.msi_message())
        }
    }
}

impl From<u64> for RedirectionEntry {
    fn from(raw: u64) -> Self {
        RedirectionEntry(raw)
    }
}

/// The userspace IOAPIC: register file, redirection table and pin state.
pub struct IoApic {
    /// The ID this IOAPIC was created with (restored by [`IoApic::reset`]).
    initial_id: u8,
    /// Current APIC ID (4 bits).
    id: u8,
    /// Current IOREGSEL value.
    ioregsel: u8,
    /// The redirection table.
    rtes: [u64; IOAPIC_NUM_PINS],
    /// Logical state of each input line, bit `n` for pin `n`.
    asserted: u32,
    /// The VMM's route table.
    sink: Arc<dyn IoApicSink>,
}

impl fmt::Debug for IoApic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoApic")
            .field("id", &self.id)
            .field("ioregsel", &self.ioregsel)
            .field("rtes", &self.rtes)
            .field("asserted", &format_args!("{:#08x}", self.asserted))
            .finish_non_exhaustive()
    }
}

/// The sink's name for `pin`. Callers have checked `pin < IOAPIC_NUM_PINS`, which fits.
fn sink_pin(pin: usize) -> u8 {
    pin as u8
}

impl IoApic {
    /// Creates an IOAPIC with APIC ID `id` (only the low 4 bits fit the ID register; use
    /// the same ID in the MADT and DMAR device scope) and every pin masked. No sink call is
    /// made: every pin starts without a route.
    pub fn new(id: u8, sink: Arc<dyn IoApicSink>) -> Self {
        let id = id & IOAPIC_ID_MASK;
        IoApic {
            initial_id: id,
            id,
            ioregsel: 0,
            rtes: [RTE_RESET_VALUE; IOAPIC_NUM_PINS],
            asserted: 0,
            sink,
        }
    }

    /// The current APIC ID (the ID register's bits 27:24).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The raw redirection table entry of `pin`, or `None` when `pin` does not exist.
    pub fn rte(&self, pin: usize) -> Option<u64> {
        self.rtes.get(pin).copied()
    }

    /// The redirection table entry of `pin` with field accessors, or `None` when `pin`
    /// does not exist.
    pub fn redirection_entry(&self, pin: usize) -> Option<RedirectionEntry> {
        self.rte(pin).map(RedirectionEntry)
    }

    /// The message `pin` currently produces (before remapping), or `None` when the pin is
    /// masked or does not exist.
    pub fn pin_message(&self, pin: usize) -> Option<MsiMessage> {
        self.redirection_entry(pin).and_then(|e| e.message())
    }

    /// The logical state of `pin`'s input line (`false` for pins that do not exist).
    pub fn pin_level(&self, pin: usize) -> bool {
        pin < IOAPIC_NUM_PINS && self.asserted & (1 << pin) != 0
    }

    /// Resets the IOAPIC: ID back to its initial value, IOREGSEL 0, every RTE masked
    /// (Remote IRR cleared). Pins that had a route get `set_pin_route(pin, None)`. The input
    /// lines keep their state: they belong to the devices, not to the IOAPIC.
    pub fn reset(&mut self) {
        self.id = self.initial_id;
        self.ioregsel = 0;
        for pin in 0..IOAPIC_NUM_PINS {
            let had_route = self.pin_message(pin).is_some();
            self.rtes[pin] = RTE_RESET_VALUE;
            if had_route {
                self.sink.set_pin_route(sink_pin(pin), None);
            }
        }
    }

    /// Sends every pin's current route to the sink (for instance after the VMM rebuilt its
    /// route table), masked pins as `None`.
    pub fn resync_routes(&self) {
        for pin in 0..IOAPIC_NUM_PINS {
            self.sink
                .set_pin_route(sink_pin(pin), self.pin_message(pin));
        }
    }

    /// Sets the logical level of input `pin` (`true` = asserted). Out-of-range pins are
    /// ignored.
    ///
    /// Edge-triggered pins deliver on a rising edge when unmasked (an edge on a masked pin
    /// is lost, as on the 82093AA). Level-triggered pins deliver while asserted, unmasked
    /// and with Remote IRR clear, and set Remote IRR on delivery; the next delivery waits
    /// for the EOI.
    pub fn set_irq_level(&mut self, pin: usize, level: bool) {
        if pin >= IOAPIC_NUM_PINS {
            debug!("ioapic: ignoring level change on nonexistent pin {pin}");
            return;
        }
        let bit = 1u32 << pin;
        let was_asserted = self.asserted & bit != 0;
        if level {
            self.asserted |= bit;
        } else {
            self.asserted &= !bit;
        }

        let entry = RedirectionEntry(self.rtes[pin]);
        if entry.is_level() {
            if level {
                self.service_level_pin(pin);
            } else if was_asserted {
                // Harmless on an MSI route; keeps the sink's view of the line in step.
                self.sink.set_pin_level(sink_pin(pin), false);
            }
        } else if level && !was_asserted && !entry.is_masked() {
            self.deliver_edge(pin);
        }
    }

    /// Pulses input `pin`: asserts then deasserts it (an edge for edge-triggered pins).
    pub fn pulse_irq(&mut self, pin: usize) {
        self.set_irq_level(pin, true);
        self.set_irq_level(pin, false);
    }

    /// Ends the interrupt of every level-triggered pin whose RTE vector field is `vector`
    /// and whose Remote IRR is set: clears Remote IRR and delivers again if the line is
    /// still asserted and the pin unmasked.
    ///
    /// Call it on `KVM_EXIT_IOAPIC_EOI` (the guest's LAPIC EOI of `vector`); writes to the
    /// EOI register call it too. With remappable RTEs the vector field holds what the guest
    /// put there (Linux: the pin number), not the remapped vector the LAPIC saw; for a
    /// LAPIC EOI of a remapped vector the VMM can use [`IoApic::end_of_interrupt_pin`]
    /// on the pins whose translated route carries that vector.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for pin in 0..IOAPIC_NUM_PINS {
            if RedirectionEntry(self.rtes[pin]).vector() == vector {
                self.end_of_interrupt_pin(pin);
            }
        }
    }

    /// Ends the interrupt of level-triggered `pin` if its Remote IRR is set (see
    /// [`IoApic::end_of_interrupt`]). Out-of-range pins and pins without Remote IRR are
    /// left alone.
    pub fn end_of_interrupt_pin(&mut self, pin: usize) {
        let Some(rte) = self.rtes.get_mut(pin) else {
            return;
        };
        if *rte & RTE_REMOTE_IRR == 0 {
            return;
        }
        *rte &= !RTE_REMOTE_IRR;
        self.service_level_pin(pin);
    }

    /// Delivers level-triggered `pin` if it is asserted, unmasked and has no interrupt in
    /// service (Remote IRR clear), then sets Remote IRR.
    fn service_level_pin(&mut self, pin: usize) {
        let entry = RedirectionEntry(self.rtes[pin]);
        if !entry.is_level() || entry.is_masked() || entry.remote_irr() || !self.pin_level(pin) {
            return;
        }
        self.rtes[pin] |= RTE_REMOTE_IRR;
        // Each `true` delivers the routed message once (KVM_IRQ_LINE on an MSI route).
        self.sink.set_pin_level(sink_pin(pin), true);
    }

    /// Delivers edge-triggered `pin` once.
    fn deliver_edge(&self, pin: usize) {
        self.sink.set_pin_level(sink_pin(pin), true);
        self.sink.set_pin_level(sink_pin(pin), false);
    }

    /// Reads the register `ioregsel` selects. Reserved indices read 0.
    fn read_register(&self) -> u32 {
        match self.ioregsel {
            IOAPIC_REG_ID | IOAPIC_REG_ARB => u32::from(self.id) << IOAPIC_ID_SHIFT,
            IOAPIC_REG_VER => {
                let max_redir = (IOAPIC_NUM_PINS - 1) as u32;
                IOAPIC_VERSION | (max_redir << IOAPIC_VER_MAX_REDIR_SHIFT)
            }
            index => match Self::rte_register(index) {
                Some((pin, high)) => {
                    let rte = self.rtes[pin];
                    if high {
                        (rte >> DWORD_BITS) as u32
                    } else {
                        (rte & LOW_DWORD_MASK) as u32
                    }
                }
                None => {
                    debug!("ioapic: read of reserved register {index:#x}");
                    0
                }
            },
        }
    }

    /// Writes `value` to the register `ioregsel` selects. VER, ARB and reserved indices
    /// ignore writes.
    fn write_register(&mut self, value: u32) {
        match self.ioregsel {
            IOAPIC_REG_ID => {
                self.id = ((value >> IOAPIC_ID_SHIFT) as u8) & IOAPIC_ID_MASK;
            }
            IOAPIC_REG_VER | IOAPIC_REG_ARB => {}
            index => match Self::rte_register(index) {
                Some((pin, high)) => self.write_rte_dword(pin, high, value),
                None => debug!("ioapic: write of reserved register {index:#x}"),
            },
        }
    }

    /// Maps a register index to `(pin, is_high_dword)` when it names an RTE half.
    fn rte_register(index: u8) -> Option<(usize, bool)> {
        let rel = usize::from(index.checked_sub(IOAPIC_REG_REDTBL_BASE)?);
        let pin = rel / 2;
        (pin < IOAPIC_NUM_PINS).then_some((pin, rel % 2 == 1))
    }

    /// Writes one dword of `pin`'s RTE, keeping the read-only bits, then brings the route
    /// and the pin's delivery state up to date.
    fn write_rte_dword(&mut self, pin: usize, high: bool, value: u32) {
        let old = self.rtes[pin];
        let written = if high {
            (old & LOW_DWORD_MASK) | (u64::from(value) << DWORD_BITS)
        } else {
            (old & !LOW_DWORD_MASK) | u64::from(value)
        };
        let mut new = (written & !RTE_READ_ONLY_BITS) | (old & RTE_READ_ONLY_BITS);
        // Remote IRR is undefined for edge-triggered pins; switching to edge clears it (the
        // way guests without an EOI register recover a stuck level interrupt).
        if new & RTE_TRIGGER_LEVEL == 0 {
            new &= !RTE_REMOTE_IRR;
        }
        self.rtes[pin] = new;

        let old_msg = RedirectionEntry(old).message();
        let new_msg = RedirectionEntry(new).message();
        if old_msg != new_msg {
            self.sink.set_pin_route(sink_pin(pin), new_msg);
        }
        // An asserted level pin that was just unmasked (or switched to level) fires now.
        self.service_level_pin(pin);
    }
}

impl BusDevice for IoApic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != IOAPIC_ACCESS_SIZE {
            debug!("ioapic: {}-byte read at {offset:#x} ignored", data.len());
            fill_ones(data);
            return;
        }
        let value = match offset {
            IOAPIC_IOREGSEL_OFFSET => u32::from(self.ioregsel),
            IOAPIC_IOWIN_OFFSET => self.read_register(),
            _ => {
                debug!("ioapic: read at unimplemented offset {offset:#x}");
                fill_ones(data);
                return;
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; IOAPIC_ACCESS_SIZE]>::try_from(data) else {
            debug!("ioapic: {}-byte write at {offset:#x} ignored", data.len());
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            IOAPIC_IOREGSEL_OFFSET => self.ioregsel = (value & IOAPIC_IOREGSEL_MASK) as u8,
            IOAPIC_IOWIN_OFFSET => self.write_register(value),
            IOAPIC_EOI_OFFSET => self.end_of_interrupt((value & IOAPIC_EOI_VECTOR_MASK) as u8),
            _ => debug!("ioapic: write at unimplemented offset {offset:#x} ignored"),
        }
    }
}

/// The userspace IOAPIC's view of the VMM's interrupt-route table.
///
/// GSI `pin` (0..24) belongs to IOAPIC pin `pin`. The IOAPIC tells the sink which message
/// each pin's RTE currently produces, and raises or lowers the pin's GSI.
pub trait IoApicSink: Send + Sync {
    /// Sets the route of pin `pin` to the raw message its RTE produces (before any
    /// remapping or extended-destination decoding, which the VMM applies), or removes it
    /// when the RTE is masked. The sink commits the change to KVM before returning.
    fn set_pin_route(&self, pin: u8, msg: Option<MsiMessage>);
    /// Drives the pin's GSI in KVM (`KVM_IRQ_LINE`): `true` delivers the routed message.
    fn set_pin_level(&self, pin: u8, level: bool);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{RecordingSink, SinkCall};

    const DEST_SHIFT: u32 = 56;

    fn setup() -> (IoApic, Arc<RecordingSink>) {
        let sink = RecordingSink::new();
        (IoApic::new(1, sink.clone()), sink)
    }

    fn write32(ioapic: &mut IoApic, offset: u64, value: u32) {
        ioapic.write(offset, &value.to_le_bytes());
    }

    fn read32(ioapic: &mut IoApic, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        ioapic.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write_reg(ioapic: &mut IoApic, index: u32, value: u32) {
        write32(ioapic, IOAPIC_IOREGSEL_OFFSET, index);
        write32(ioapic, IOAPIC_IOWIN_OFFSET, value);
    }

    fn read_reg(ioapic: &mut IoApic, index: u32) -> u32 {
        write32(ioapic, IOAPIC_IOREGSEL_OFFSET, index);
        read32(ioapic, IOAPIC_IOWIN_OFFSET)
    }

    /// Programs `pin` the way Linux does: high dword first, then low dword.
    fn program(ioapic: &mut IoApic, pin: usize, rte: u64) {
        let index = u32::from(IOAPIC_REG_REDTBL_BASE) + 2 * pin as u32;
        write_reg(ioapic, index + 1, (rte >> 32) as u32);
        write_reg(ioapic, index, rte as u32);
    }

    fn edge_rte(vector: u8, dest: u8) -> u64 {
        u64::from(vector) | (u64::from(dest) << DEST_SHIFT)
    }

    fn level_rte(vector: u8, dest: u8) -> u64 {
        edge_rte(vector, dest) | RTE_TRIGGER_LEVEL | RTE_POLARITY_LOW
    }

    #[test]
    fn id_register_reads_and_writes_bits_27_24() {
        let (mut ioapic, _) = setup();
        assert_eq!(read_reg(&mut ioapic, 0), 1 << 24);
        write_reg(&mut ioapic, 0, 0xffff_ffff);
        assert_eq!(read_reg(&mut ioapic, 0), 0xf << 24);
        assert_eq!(ioapic.id(), 0xf);
        // ARB follows the ID and ignores writes.
        assert_eq!(read_reg(&mut ioapic, 2), 0xf << 24);
        write_reg(&mut ioapic, 2, 0);
        assert_eq!(read_reg(&mut ioapic, 2), 0xf << 24);
    }

    #[test]
    fn id_is_truncated_to_four_bits() {
        let sink = RecordingSink::new();
        let ioapic = IoApic::new(0x21, sink);
        assert_eq!(ioapic.id(), 1);
    }

    #[test]
    fn version_register_reports_0x20_and_23_entries() {
        let (mut ioapic, _) = setup();
        assert_eq!(read_reg(&mut ioapic, 1), 0x0017_0020);
        write_reg(&mut ioapic, 1, 0);
        assert_eq!(read_reg(&mut ioapic, 1), 0x0017_0020);
    }

    #[test]
    fn ioregsel_reads_back_its_low_byte() {
        let (mut ioapic, _) = setup();
        write32(&mut ioapic, IOAPIC_IOREGSEL_OFFSET, 0x1234_5613);
        assert_eq!(read32(&mut ioapic, IOAPIC_IOREGSEL_OFFSET), 0x13);
    }

    #[test]
    fn reserved_registers_read_zero_and_ignore_writes() {
        let (mut ioapic, sink) = setup();
        for index in [0x03, 0x0f, 0x40, 0xff] {
            write_reg(&mut ioapic, index, 0xdead_beef);
            assert_eq!(read_reg(&mut ioapic, index), 0);
        }
        assert!(sink.take().is_empty());
    }

    #[test]
    fn rtes_reset_masked() {
        let (mut ioapic, _) = setup();
        for pin in 0..IOAPIC_NUM_PINS {
            assert_eq!(ioapic.rte(pin), Some(RTE_MASKED));
            assert_eq!(ioapic.pin_message(pin), None);
            let index = 0x10 + 2 * pin as u32;
            assert_eq!(read_reg(&mut ioapic, index), RTE_MASKED as u32);
            assert_eq!(read_reg(&mut ioapic, index + 1), 0);
        }
        assert_eq!(ioapic.rte(IOAPIC_NUM_PINS), None);
    }

    #[test]
    fn rte_round_trip_keeps_read_only_bits() {
        let (mut ioapic, _) = setup();
        // Everything writable except delivery status and Remote IRR.
        write_reg(&mut ioapic, 0x10 + 2 * 5, 0xffff_ffff);
        write_reg(&mut ioapic, 0x11 + 2 * 5, 0xabcd_ef01);
        let low = read_reg(&mut ioapic, 0x10 + 2 * 5);
        assert_eq!(low, !((1u32 << 12) | (1 << 14)));
        assert_eq!(read_reg(&mut ioapic, 0x11 + 2 * 5), 0xabcd_ef01);
        assert_eq!(ioapic.rte(5), Some(0xabcd_ef01_ffff_afff));
        // Other pins untouched.
        assert_eq!(ioapic.rte(4), Some(RTE_MASKED));
        assert_eq!(ioapic.rte(6), Some(RTE_MASKED));
    }

    #[test]
    fn remote_irr_cannot_be_written_away() {
        let (mut ioapic, _) = setup();
        program(&mut ioapic, 9, level_rte(0x39, 0));
        ioapic.set_irq_level(9, true);
        assert!(ioapic.redirection_entry(9).unwrap().remote_irr());
        // Rewriting the low dword (still level) with bit 14 clear keeps Remote IRR.
        write_reg(&mut ioapic, 0x10 + 2 * 9, level_rte(0x39, 0) as u32);
        assert!(ioapic.redirection_entry(9).unwrap().remote_irr());
        // Rewriting with bit 14 set on an idle pin does not set it.
        let (mut other, _) = setup();
        write_reg(
            &mut other,
            0x10 + 2 * 9,
            (level_rte(0x39, 0) | RTE_REMOTE_IRR) as u32,
        );
        assert!(!other.redirection_entry(9).unwrap().remote_irr());
    }

    #[test]
    fn switching_to_edge_clears_remote_irr() {
        let (mut ioapic, _) = setup();
        program(&mut ioapic, 9, level_rte(0x39, 0));
        ioapic.set_irq_level(9, true);
        assert!(ioapic.redirection_entry(9).unwrap().remote_irr());
        write_reg(&mut ioapic, 0x10 + 2 * 9, edge_rte(0x39, 0) as u32);
        assert!(!ioapic.redirection_entry(9).unwrap().remote_irr());
    }

    #[test]
    fn rte_write_reports_route_changes_only() {
        let (mut ioapic, sink) = setup();
        // Writing the high dword of a masked pin changes nothing it produces.
        write_reg(&mut ioapic, 0x11 + 2 * 3, 2 << 24);
        assert!(sink.take().is_empty());
        // Unmasking produces a route.
        write_reg(&mut ioapic, 0x10 + 2 * 3, 0x33);
        let msg = ioapic.pin_message(3).unwrap();
        assert_eq!(sink.take(), vec![SinkCall::Route(3, Some(msg))]);
        assert_eq!(msg.address_lo, 0xfee0_2000);
        // Same value again: no call. Polarity only: no call.
        write_reg(&mut ioapic, 0x10 + 2 * 3, 0x33);
        write_reg(&mut ioapic, 0x10 + 2 * 3, 0x33 | (1 << 13));
        assert!(sink.take().is_empty());
        // New vector: new route.
        write_reg(&mut ioapic, 0x10 + 2 * 3, 0x34);
        assert_eq!(
            sink.take(),
            vec![SinkCall::Route(3, Some(MsiMessage { data: 0x34, ..msg }))]
        );
        // Masking removes it.
        write_reg(&mut ioapic, 0x10 + 2 * 3, 0x34 | (1 << 16));
        assert_eq!(sink.take(), vec![SinkCall::Route(3, None)]);
    }

    #[test]
    fn masked_pins_do_not_deliver() {
        let (mut ioapic, sink) = setup();
        ioapic.set_irq_level(4, true);
        ioapic.set_irq_level(4, false);
        write_reg(
            &mut ioapic,
            0x10 + 2 * 10,
            (level_rte(0x3a, 0) | RTE_MASKED) as u32,
        );
        ioapic.set_irq_level(10, true);
        assert_eq!(sink.deliveries(4), 0);
        assert_eq!(sink.deliveries(10), 0);
        assert!(!ioapic.redirection_entry(10).unwrap().remote_irr());
    }

    #[test]
    fn edge_pin_delivers_on_rising_edge_only() {
        let (mut ioapic, sink) = setup();
        program(&mut ioapic, 4, edge_rte(0x24, 0));
        sink.take();
        ioapic.set_irq_level(4, true);
        assert_eq!(
            sink.take(),
            vec![SinkCall::Level(4, true), SinkCall::Level(4, false)]
        );
        // Staying high is not an edge.
        ioapic.set_irq_level(4, true);
        ioapic.set_irq_level(4, false);
        assert!(sink.take().is_empty());
        ioapic.pulse_irq(4);
        assert_eq!(sink.deliveries(4), 1);
        // Edge pins never set Remote IRR.
        assert!(!ioapic.redirection_entry(4).unwrap().remote_irr());
    }

    #[test]
    fn edge_on_masked_pin_is_lost() {
        let (mut ioapic, sink) = setup();
        write_reg(
            &mut ioapic,
            0x10 + 2 * 4,
            (edge_rte(0x24, 0) | RTE_MASKED) as u32,
        );
        ioapic.pulse_irq(4);
        write_reg(&mut ioapic, 0x10 + 2 * 4, edge_rte(0x24, 0) as u32);
        assert_eq!(sink.deliveries(4), 0);
    }

    #[test]
    fn level_pin_delivers_once_until_eoi() {
        let (mut ioapic, sink) = setup();
        program(&mut ioapic, 11, level_rte(0x3b, 0));
        sink.take();
        ioapic.set_irq_level(11, true);
        assert_eq!(sink.take(), vec![SinkCall::Level(11, true)]);
        assert!(ioapic.redirection_entry(11).unwrap().remote_irr());
        // Still asserted, Remote IRR set: nothing more.
        ioapic.set_irq_level(11, true);
        assert!(sink.take().is_empty());
        // EOI while still asserted: delivered again.
        ioapic.end_of_interrupt(0x3b);
        assert_eq!(sink.take(), vec![SinkCall::Level(11, true)]);
        assert!(ioapic.redirection_entry(11).unwrap().remote_irr());
        // Device deasserts, then EOI: Remote IRR clears, nothing delivered.
        ioapic.set_irq_level(11, false);
        assert_eq!(sink.take(), vec![SinkCall::Level(11, false)]);
        ioapic.end_of_interrupt(0x3b);
        assert!(sink.take().is_empty());
        assert!(!ioapic.redirection_entry(11).unwrap().remote_irr());
        // Next assertion delivers.
        ioapic.set_irq_level(11, true);
        assert_eq!(sink.take(), vec![SinkCall::Level(11, true)]);
    }

    #[test]
    fn eoi_of_other_vector_does_nothing() {
        let (mut ioapic, sink) = setup();
        program(&mut ioapic, 11, level_rte(0x3b, 0));
        ioapic.set_irq_level(11, true);
        sink.take();
        ioapic.end_of_interrupt(0x3c);
        assert!(sink.take().is_empty());
        assert!(ioapic.redirection_entry(11).unwrap().remote_irr());
    }

    #[test]
    fn eoi_register_write_ends_interrupt() {
        let (mut ioapic, sink) = setup();
        program(&mut ioapic, 16, level_rte(0x50, 0));
        ioapic.set_irq_level(16, true);
        sink.take();
        // Only bits 7:0 count.
        write32(&mut ioapic, IOAPIC_EOI_OFFSET, 0xffff_ff50);
        assert_eq!(sink.take(), vec![SinkCall::Level(16, true)]);
        ioapic.set_irq_level(16, false);
        write32(&mut ioapic, IOAPIC_EOI_OFFSET, 0x50);
        assert!(!ioapic.redirection_entry(16).unwrap().remote_irr());
        // Reading the EOI register answers all ones.
        assert_eq!(read32(&mut ioapic, IOAPIC_EOI_OFFSET), 0xffff_ffff);
    }

    #[test]
    fn eoi_by_pin() {
        let (mut ioapic, sink) = setup();
        // Remappable RTE: the vector field holds the pin, not the delivered vector.
        let rte = RTE_REMAPPABLE | (7 << RTE_REMAP_INDEX_SHIFT) | RTE_TRIGGER_LEVEL | 17;
        program(&mut ioapic, 17, rte);
        ioapic.set_irq_level(17, true);
        sink.take();
        ioapic.end_of_interrupt(0x61); // the remapped vector: no match
        assert!(ioapic.redirection_entry(17).unwrap().remote_irr());
        ioapic.end_of_interrupt_pin(17);
        assert_eq!(sink.take(), vec![SinkCall::Level(17, true)]);
        ioapic.end_of_interrupt_pin(99); // ignored
    }

    #[test]
    fn unmasking_asserted_level_pin_delivers_after_route() {
        let (mut ioapic, sink) = setup();
        write_reg(
            &mut ioapic,
            0x10 + 2 * 20,
            (level_rte(0x60, 0) | RTE_MASKED) as u32,
        );
        sink.take();
        ioapic.set_irq_level(20, true);
        assert!(sink.take().is_empty());
        write_reg(&mut ioapic, 0x10 + 2 * 20, level_rte(0x60, 0) as u32);
        let msg = ioapic.pin_message(20).unwrap();
        assert_eq!(
            sink.take(),
            vec![SinkCall::Route(20, Some(msg)), SinkCall::Level(20, true)]
        );
    }

    #[test]
    fn masked_level_pin_keeps_remote_irr_until_eoi() {
        let (mut ioapic, sink) = setup();
        program(&mut ioapic, 12, level_rte(0x3c, 0));
        ioapic.set_irq_level(12, true);
        write_reg(
            &mut ioapic,
            0x10 + 2 * 12,
            (level_rte(0x3c, 0) | RTE_MASKED) as u32,
        );
        sink.take();
        ioapic.end_of_interrupt(0x3c);
        // Remote IRR cleared, but masked: no delivery.
        assert!(sink.take().is_empty());
        assert!(!ioapic.redirection_entry(12).unwrap().remote_irr());
        // Unmask: delivered.
        write_reg(&mut ioapic, 0x10 + 2 * 12, level_rte(0x3c, 0) as u32);
        assert_eq!(sink.deliveries(12), 1);
    }

    #[test]
    fn out_of_range_pins_are_ignored() {
        let (mut ioapic, sink) = setup();
        ioapic.set_irq_level(IOAPIC_NUM_PINS, true);
        ioapic.set_irq_level(usize::MAX, true);
        ioapic.pulse_irq(1000);
        assert!(!ioapic.pin_level(IOAPIC_NUM_PINS));
        assert_eq!(ioapic.pin_message(IOAPIC_NUM_PINS), None);
        assert_eq!(ioapic.redirection_entry(usize::MAX), None);
        assert!(sink.take().is_empty());
        // Register indices past the last RTE are reserved.
        write_reg(&mut ioapic, 0x10 + 2 * 24, 0);
        assert_eq!(read_reg(&mut ioapic, 0x10 + 2 * 24), 0);
        assert!(sink.take().is_empty());
    }

    #[test]
    fn compat_message_encoding() {
        let (mut ioapic, _) = setup();
        // Physical, fixed, edge, dest 0x12, vector 0x31.
        program(&mut ioapic, 1, edge_rte(0x31, 0x12));
        assert_eq!(
            ioapic.pin_message(1),
            Some(MsiMessage {
                address_lo: 0xfee1_2000,
                address_hi: 0,
                data: 0x31,
            })
        );
        // Logical, lowest priority, level, dest 0x03.
        let rte = level_rte(0x41, 0x03) | RTE_DEST_MODE_LOGICAL | (1 << 8);
        program(&mut ioapic, 2, rte);
        let msg = ioapic.pin_message(2).unwrap();
        assert_eq!(msg.address_lo, 0xfee0_3004);
        assert_eq!(msg.data, 0x41 | (1 << 8) | (1 << 14) | (1 << 15));
        assert!(msg.is_level());
        assert_eq!(
            msg,
            MsiMessage::compat(3, true, 0x41, DeliveryMode::LowestPriority, true)
        );
        // NMI delivery mode goes into data bits 10:8.
        program(&mut ioapic, 3, edge_rte(0, 0) | (4 << 8));
        assert_eq!(ioapic.pin_message(3).unwrap().data, 4 << 8);
    }

    #[test]
    fn ext_dest_message_encoding() {
        let (mut ioapic, _) = setup();
        // APIC ID 0x1234: bits 7:0 = 0x34 in RTE[63:56], bits 14:8 = 0x12 in RTE[55:49].
        let rte = edge_rte(0x45, 0x34) | (0x12 << RTE_EXT_DEST_SHIFT);
        program(&mut ioapic, 6, rte);
        let entry = ioapic.redirection_entry(6).unwrap();
        assert_eq!(entry.destination(), 0x34);
        assert_eq!(entry.ext_destination(), 0x12);
        assert!(!entry.is_remappable());
        let msg = ioapic.pin_message(6).unwrap();
        assert_eq!(msg.address_lo, 0xfee3_4000 | (0x12 << 5));
        assert_eq!(msg.address_hi, 0);
        assert!(!msg.is_remappable());
        assert_eq!(msg.with_ext_dest_swizzled().destination(), 0x1234);
    }

    #[test]
    fn remappable_message_encoding() {
        let (mut ioapic, _) = setup();
        // Index 0x9abc: bits 14:0 = 0x1abc in RTE[63:49], bit 15 in RTE[11]. Vector = pin.
        let index: u64 = 0x9abc;
        let rte = RTE_REMAPPABLE
            | ((index & 0x7fff) << RTE_REMAP_INDEX_SHIFT)
            | RTE_DEST_MODE_LOGICAL
            | RTE_TRIGGER_LEVEL
            | 8;
        program(&mut ioapic, 8, rte);
        let entry = ioapic.redirection_entry(8).unwrap();
        assert_eq!(entry.remap_index(), Some(0x9abc));
        let msg = ioapic.pin_message(8).unwrap();
        assert!(msg.is_remappable());
        // addr[19:5] = handle[14:0], bit 4 = 1, bit 2 = handle[15], bit 3 (SHV) = 0.
        assert_eq!(
            msg.address_lo,
            0xfee0_0000 | (0x1abc << 5) | (1 << 4) | (1 << 2)
        );
        assert_eq!(msg.address_hi, 0);
        assert_eq!(msg.data, 8 | (1 << 14) | (1 << 15));
        assert_eq!(msg.data >> 16, 0);
        // Compatibility entries have no index.
        assert_eq!(RedirectionEntry(edge_rte(0x30, 1)).remap_index(), None);
    }

    #[test]
    fn redirection_entry_accessors() {
        let e = RedirectionEntry::from(
            0x5a | (5 << 8) | RTE_DEST_MODE_LOGICAL | RTE_POLARITY_LOW | RTE_MASKED,
        );
        assert_eq!(e.raw() & 0xff, 0x5a);
        assert_eq!(e.vector(), 0x5a);
        assert_eq!(e.delivery_mode(), Some(DeliveryMode::Init));
        assert!(e.is_logical() && e.is_active_low() && e.is_masked());
        assert!(!e.is_level() && !e.remote_irr());
        assert_eq!(e.message(), None);
        assert_eq!(e.msi_message().data, 0x5a | (5 << 8));
        assert_eq!(RedirectionEntry(3 << 8).delivery_mode(), None);
    }

    #[test]
    fn reset_masks_everything_and_removes_routes() {
        let (mut ioapic, sink) = setup();
        program(&mut ioapic, 4, edge_rte(0x24, 0));
        program(&mut ioapic, 9, level_rte(0x29, 0));
        ioapic.set_irq_level(9, true);
        write_reg(&mut ioapic, 0, 0x0700_0000);
        sink.take();
        ioapic.reset();
        let mut calls = sink.take();
        calls.sort_by_key(|c| match c {
            SinkCall::Route(p, _) | SinkCall::Level(p, _) => *p,
        });
        assert_eq!(
            calls,
            vec![SinkCall::Route(4, None), SinkCall::Route(9, None)]
        );
        for pin in 0..IOAPIC_NUM_PINS {
            assert_eq!(ioapic.rte(pin), Some(RTE_MASKED));
        }
        assert_eq!(ioapic.id(), 1);
        assert_eq!(read32(&mut ioapic, IOAPIC_IOREGSEL_OFFSET), 0);
        // The line is still asserted: unmasking the level pin delivers.
        assert!(ioapic.pin_level(9));
        program(&mut ioapic, 9, level_rte(0x29, 0));
        assert_eq!(sink.deliveries(9), 1);
    }

    #[test]
    fn resync_routes_reports_every_pin() {
        let (mut ioapic, sink) = setup();
        program(&mut ioapic, 0, edge_rte(0x20, 0));
        sink.take();
        ioapic.resync_routes();
        let calls = sink.take();
        assert_eq!(calls.len(), IOAPIC_NUM_PINS);
        assert_eq!(calls[0], SinkCall::Route(0, ioapic.pin_message(0)));
        assert!(calls[1..]
            .iter()
            .all(|c| matches!(c, SinkCall::Route(_, None))));
    }

    #[test]
    fn bad_sizes_and_offsets_do_not_panic() {
        let (mut ioapic, sink) = setup();
        write_reg(&mut ioapic, 0x10, 0x30);
        sink.take();
        for size in [0usize, 1, 2, 3, 5, 8, 16] {
            for offset in [0u64, 1, 2, 0x10, 0x12, 0x20, 0x40, 0xfff, u64::MAX] {
                let mut data = vec![0u8; size];
                ioapic.read(offset, &mut data);
                assert!(
                    data.iter().all(|b| *b == 0xff),
                    "size {size} offset {offset:#x}"
                );
                ioapic.write(offset, &vec![0u8; size]);
            }
        }
        // Nothing above changed state.
        assert_eq!(ioapic.rte(0), Some(0x30));
        assert_eq!(read32(&mut ioapic, IOAPIC_IOREGSEL_OFFSET), 0x10);
        assert!(sink.take().is_empty());
        // Valid size at unimplemented offsets.
        for offset in [0x04, 0x08, 0x14, 0x20, 0x44, 0xffc, u64::MAX] {
            assert_eq!(read32(&mut ioapic, offset), 0xffff_ffff);
            write32(&mut ioapic, offset, 0);
        }
        assert_eq!(ioapic.rte(0), Some(0x30));
    }
}
