//! The interrupt messages the remapping unit itself sends: the fault event (FECTL, FEDATA,
//! FEADDR, FEUADDR) and the invalidation completion event (IECTL, IEDATA, IEADDR,
//! IEUADDR). Both follow the same rules (VT-d spec 10.4.10-13 and 10.4.25-28):
//!
//! * An *interrupt condition* (a status bit going from clear to set while no other status
//!   bit of the same register was set) sends the message at once unless the mask bit IM
//!   is set; then IP is set and the message is held.
//! * Clearing IM while IP is set sends the held message and clears IP.
//! * Software servicing every status bit (clearing them) while the message is held
//!   clears IP without sending anything.
//!
//! These messages are not subject to interrupt remapping. The model returns them in KVM's
//! x2APIC API layout, which is exactly what the registers hold: the address register gives
//! address bits 31:0 (destination 7:0 in bits 19:12) and the upper address register gives
//! destination bits 31:8 in its bits 31:8 (Linux programs it that way for the DMAR fault
//! interrupt). Upper-address bits 7:0 are reserved and dropped, because KVM rejects an MSI
//! whose `address_hi` bits 7:0 are set.
//!
//! An event is an interrupt only when the address register names the interrupt window
//! (`0xFEEx_xxxx`). With any other address (a guest that never programmed it, or wrote
//! garbage) the message would be a plain memory write, not an interrupt: the event is
//! consumed exactly as if it had been sent (IP is not set) but nothing is delivered, the
//! way the PCI model drops an MSI aimed outside the window. Handing such a message to
//! `KVM_SIGNAL_MSI` would inject an interrupt the hardware never raises.

use crate::msi::MsiMessage;

use super::regs::{EVENT_ADDR_MASK, EVENT_CTL_IM, EVENT_CTL_IP, EVENT_DATA_MASK};

/// Bits 7:0 of the upper address: reserved, not part of the destination.
const UPPER_ADDR_RESERVED: u32 = 0xff;

/// One event-interrupt register block (control, data, address, upper address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventInterrupt {
    masked: bool,
    pending: bool,
    data: u32,
    address: u32,
    upper_address: u32,
    upper_implemented: bool,
}

impl EventInterrupt {
    /// The reset state: masked, nothing pending, zero message. `upper_implemented` says
    /// whether the upper address register exists (it does when the unit reports EIM;
    /// otherwise it reads as zero and ignores writes).
    pub fn new(upper_implemented: bool) -> Self {
        EventInterrupt {
            masked: true,
            pending: false,
            data: 0,
            address: 0,
            upper_address: 0,
            upper_implemented,
        }
    }

    /// The control register: IM (bit 31) and IP (bit 30).
    pub fn control(&self) -> u32 {
        let mut value = 0;
        if self.masked {
            value |= EVENT_CTL_IM;
        }
        if self.pending {
            value |= EVENT_CTL_IP;
        }
        value
    }

    /// Handles a write of the control register. Only IM is writable; unmasking with a
    /// held message returns that message for delivery and clears IP.
    pub fn write_control(&mut self, value: u32) -> Option<MsiMessage> {
        self.masked = value & EVENT_CTL_IM != 0;
        if !self.masked && self.pending {
            self.pending = false;
            return self.deliverable();
        }
        None
    }

    /// The data register (16 implemented bits).
    pub fn data(&self) -> u32 {
        self.data
    }

    /// Handles a write of the data register.
    pub fn write_data(&mut self, value: u32) {
        self.data = value & EVENT_DATA_MASK;
    }

    /// The address register (bits 31:2 implemented).
    pub fn address(&self) -> u32 {
        self.address
    }

    /// Handles a write of the address register.
    pub fn write_address(&mut self, value: u32) {
        self.address = value & EVENT_ADDR_MASK;
    }

    /// The upper address register.
    pub fn upper_address(&self) -> u32 {
        self.upper_address
    }

    /// Handles a write of the upper address register (ignored when not implemented).
    pub fn write_upper_address(&mut self, value: u32) {
        if self.upper_implemented {
            self.upper_address = value;
        }
    }

    /// True while a message is held pending (IP).
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// Signals a new interrupt condition: returns the message to send now, or holds it
    /// (sets IP) when masked.
    pub fn signal(&mut self) -> Option<MsiMessage> {
        if self.masked {
            self.pending = true;
            None
        } else {
            self.deliverable()
        }
    }

    /// Software serviced every status bit behind this event: a held message is dropped.
    pub fn clear_pending(&mut self) {
        self.pending = false;
    }

    /// The message sending an event produces now: [`EventInterrupt::message`] when the
    /// address register names the interrupt window, `None` (a memory write, dropped)
    /// otherwise.
    fn deliverable(&self) -> Option<MsiMessage> {
        let msg = self.message();
        if msg.is_msi_window() {
            Some(msg)
        } else {
            log::debug!("vt-d: event message to non-interrupt address {msg:x?} dropped");
            None
        }
    }

    /// The message this block sends, in KVM's x2APIC API layout.
    pub fn message(&self) -> MsiMessage {
        MsiMessage {
            address_lo: self.address,
            address_hi: self.upper_address & !UPPER_ADDR_RESERVED,
            data: self.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_is_masked() {
        let e = EventInterrupt::new(true);
        assert_eq!(e.control(), EVENT_CTL_IM);
        assert!(!e.is_pending());
    }

    #[test]
    fn masked_signal_is_held_until_unmask() {
        let mut e = EventInterrupt::new(true);
        e.write_data(0x1_0041);
        e.write_address(0xfee0_1003);
        e.write_upper_address(0x0001_23ff);
        assert_eq!(e.data(), 0x41);
        assert_eq!(e.address(), 0xfee0_1000);
        assert_eq!(e.signal(), None);
        assert_eq!(e.control(), EVENT_CTL_IM | EVENT_CTL_IP);
        let msg = e.write_control(0).expect("held message sent on unmask");
        assert_eq!(
            msg,
            MsiMessage {
                address_lo: 0xfee0_1000,
                address_hi: 0x0001_2300,
                data: 0x41
            }
        );
        assert_eq!(msg.destination(), 0x0001_2301);
        assert_eq!(e.control(), 0);
        // Unmasked: immediate.
        assert_eq!(e.signal(), Some(msg));
        assert_eq!(e.control(), 0);
    }

    /// Found by the `vtd_mmio` fuzzer: an event whose address register is outside the
    /// interrupt window (here never programmed, so 0) was returned for `KVM_SIGNAL_MSI`,
    /// which KVM would have delivered to APIC 0 as an interrupt.
    #[test]
    fn event_outside_the_interrupt_window_is_not_an_interrupt() {
        let mut e = EventInterrupt::new(true);
        e.write_data(0x41);
        assert_eq!(e.write_control(0), None);
        assert_eq!(
            e.signal(),
            None,
            "address 0 is a memory write, not an interrupt"
        );
        assert_eq!(e.control(), 0, "the event was consumed, not held");
        e.write_address(0x1c);
        e.write_upper_address(0x7777_7700);
        assert_eq!(e.signal(), None);
        // Held while masked, dropped on unmask with a bad address.
        e.write_control(EVENT_CTL_IM);
        assert_eq!(e.signal(), None);
        assert_eq!(e.control(), EVENT_CTL_IM | EVENT_CTL_IP);
        assert_eq!(e.write_control(0), None);
        assert_eq!(e.control(), 0);
        // Once the guest programs the window, events are interrupts again.
        e.write_address(0xfee0_2000);
        let msg = e.signal().expect("interrupt");
        assert_eq!(msg.address_lo, 0xfee0_2000);
        assert_eq!(msg.address_hi, 0x7777_7700);
    }

    #[test]
    fn clear_pending_drops_the_message() {
        let mut e = EventInterrupt::new(false);
        e.write_upper_address(0xffff_ff00);
        assert_eq!(e.upper_address(), 0, "not implemented without EIM");
        e.signal();
        e.clear_pending();
        assert_eq!(e.write_control(0), None);
    }
}
