//! The unit's own interrupts: event log, completion wait and GA log.
//!
//! Each source is a line: *asserted* while its enable bit in the control register is set
//! and one of its status bits is pending. The unit sends an interrupt when a line goes from
//! deasserted to asserted, never again while it stays asserted. Software (Linux's
//! `amd_iommu_handle_irq`) clears the status bits by writing 1 before it drains the log and
//! re-reads the status afterwards, so an entry written meanwhile asserts the line again and
//! is not lost; an enable bit set while a status bit is already pending sends the held
//! interrupt at once.
//!
//! | source | status bits | enable bit | XT register |
//! |--------|-------------|------------|-------------|
//! | event log | EventLogInt, EventOverflow | EventIntEn | XT event (0x170) |
//! | completion wait | ComWaitInt | ComWaitIntEn | XT event (0x170) |
//! | GA log | GAInt, GALogOverflow | GAIntEn | XT GA (0x180) |
//!
//! How an interrupt is sent depends on `IntCapXTEn`: set, the message comes from the XT
//! interrupt control register (32-bit destination, vector, destination mode) and is handed
//! to the VMM in KVM's x2APIC API layout; clear, the unit signals its PCI function's MSI
//! (message 0, the only one: MsiNum = MsiNumGA = 0), which the VMM's PCI MSI capability
//! model turns into a message and sends if MSI is enabled and unmasked. The unit's own
//! interrupts are never remapped. An XT register with a vector below 16 (Linux writes 0 to
//! mask an XT interrupt) describes no deliverable interrupt: the interrupt is consumed
//! without a message, as a LAPIC would reject the illegal vector.

use crate::msi::{DeliveryMode, MsiMessage};

use super::regs::{
    DEST_LO_BITS, XT_DEST_HI_SHIFT, XT_DEST_LO_MASK, XT_DEST_LO_SHIFT, XT_DM, XT_VECTOR_SHIFT,
};

/// Lowest vector a LAPIC accepts (0..=15 are reserved).
pub const MIN_VECTOR: u8 = 16;

/// Which of the unit's interrupt sources fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterruptCause {
    /// An event was logged or the event log overflowed.
    EventLog,
    /// A COMPLETION_WAIT with its interrupt bit completed.
    CompletionWait,
    /// A GA log entry was written or the GA log overflowed.
    GaLog,
}

impl InterruptCause {
    /// Every source, in a fixed order.
    pub const ALL: [InterruptCause; 3] = [
        InterruptCause::EventLog,
        InterruptCause::CompletionWait,
        InterruptCause::GaLog,
    ];

    fn slot(self) -> usize {
        match self {
            InterruptCause::EventLog => 0,
            InterruptCause::CompletionWait => 1,
            InterruptCause::GaLog => 2,
        }
    }
}

/// The assertion state of the three lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterruptLines {
    asserted: [bool; 3],
}

impl InterruptLines {
    /// Records the new level of `cause`'s line; true when it rose (an interrupt is due).
    pub fn set(&mut self, cause: InterruptCause, level: bool) -> bool {
        let Some(slot) = self.asserted.get_mut(cause.slot()) else {
            return false;
        };
        let rose = level && !*slot;
        *slot = level;
        rose
    }

    /// True while `cause`'s line is asserted.
    pub fn is_asserted(&self, cause: InterruptCause) -> bool {
        self.asserted.get(cause.slot()).copied().unwrap_or(false)
    }
}

/// The interrupt an XT interrupt control register describes, in KVM's x2APIC API layout,
/// or `None` for a vector below 16.
pub fn xt_message(reg: u64) -> Option<MsiMessage> {
    let vector = (reg >> XT_VECTOR_SHIFT) as u8;
    if vector < MIN_VECTOR {
        return None;
    }
    let dest_lo = ((reg >> XT_DEST_LO_SHIFT) & XT_DEST_LO_MASK) as u32;
    let dest_hi = (reg >> XT_DEST_HI_SHIFT) as u32;
    let destination = dest_lo | (dest_hi << DEST_LO_BITS);
    Some(MsiMessage::compat(
        destination,
        reg & XT_DM != 0,
        vector,
        DeliveryMode::Fixed,
        false,
    ))
}

/// The XT register value for `destination`, `vector` and destination mode (what Linux's
/// `intcapxt_unmask_irq` writes), for tests and the VMM.
pub fn xt_register(destination: u32, vector: u8, logical: bool) -> u64 {
    let mut reg = ((u64::from(destination) & XT_DEST_LO_MASK) << XT_DEST_LO_SHIFT)
        | (u64::from(vector) << XT_VECTOR_SHIFT)
        | (u64::from(destination >> DEST_LO_BITS) << XT_DEST_HI_SHIFT);
    if logical {
        reg |= XT_DM;
    }
    reg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_fire_on_rising_edges_only() {
        let mut l = InterruptLines::default();
        assert!(l.set(InterruptCause::EventLog, true));
        assert!(!l.set(InterruptCause::EventLog, true));
        assert!(l.is_asserted(InterruptCause::EventLog));
        assert!(!l.is_asserted(InterruptCause::GaLog));
        assert!(!l.set(InterruptCause::EventLog, false));
        assert!(l.set(InterruptCause::EventLog, true));
        assert!(l.set(InterruptCause::GaLog, true));
    }

    #[test]
    fn xt_message_has_32_bit_destination() {
        let reg = xt_register(0x1234_5678, 0x61, false);
        let m = xt_message(reg).unwrap();
        assert_eq!(m.destination(), 0x1234_5678);
        assert_eq!(m.vector(), 0x61);
        assert_eq!(m.address_hi & 0xff, 0, "KVM rejects address_hi bits 7:0");
        assert_eq!(xt_message(0), None, "Linux's mask value");
        assert_eq!(xt_message(xt_register(1, 15, false)), None);
        let logical = xt_message(xt_register(3, 0x30, true)).unwrap();
        assert_ne!(
            logical.address_lo & crate::msi::MSI_ADDR_DEST_MODE_LOGICAL,
            0
        );
    }
}
