//! Interrupt-remapping faults of the AMD-Vi model and the event each one logs.
//!
//! A blocked interrupt becomes an [`AmdFault`]. Recording it (see
//! [`super::AmdViUnit::record_fault`]) writes the event the specification names for the
//! condition into the event log, unless the condition is suppressed:
//!
//! | condition | event | flags |
//! |-----------|-------|-------|
//! | device ID beyond the device table size | ILLEGAL_DEV_TABLE_ENTRY | I |
//! | DTE with a reserved interrupt encoding (IV = 1) | ILLEGAL_DEV_TABLE_ENTRY | I, RZ |
//! | DTE not readable (not in guest RAM) | DEV_TAB_HARDWARE_ERROR | I |
//! | IntCtl = 00b (target abort) | IO_PAGE_FAULT | I |
//! | NMI/INIT/ExtINT/SMI without its pass bit, or a reserved message type | IO_PAGE_FAULT | I |
//! | index beyond 2^IntTabLen | IO_PAGE_FAULT | I |
//! | IRTE not readable | PAGE_TAB_HARDWARE_ERROR | I |
//! | IRTE RemapEn = 0 | IO_PAGE_FAULT | I |
//! | IRTE reserved bits or encodings | IO_PAGE_FAULT | I, PR, RZ |
//! | vAPIC backing page not writable (guest mode) | PAGE_TAB_HARDWARE_ERROR | I, RW |
//!
//! The I(nterrupt) flag is what Linux's `amd_iommu_report_page_fault` uses to tell an
//! interrupt fault from a DMA fault. The event's address is the interrupt request's
//! address for IO_PAGE_FAULT and ILLEGAL_DEV_TABLE_ENTRY, and the guest-physical address
//! that could not be accessed for the hardware errors. IO_PAGE_FAULT events are suppressed
//! by the DTE's IG bit, and those detected after the IRTE was read also by its SupIOPF bit.
//! A message outside the interrupt address range is no interrupt at all: it is refused
//! without an event.

use thiserror::Error;

use crate::msi::MsiMessage;

use super::log::{Event, EVENT_FLAG_I, EVENT_FLAG_PR, EVENT_FLAG_RW, EVENT_FLAG_RZ};

/// What went wrong with an interrupt request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The address is not in the interrupt range `0xFEEx_xxxx` (or `address_hi` is set):
    /// not an interrupt. No event.
    NotInterrupt,
    /// The device ID is beyond the size of the device table.
    DeviceIdBeyondTable,
    /// The DTE could not be read from guest memory.
    DeviceTableReadFailed,
    /// The DTE holds a reserved interrupt-remapping encoding.
    IllegalDeviceTableEntry,
    /// The DTE's IntCtl target-aborts fixed and arbitrated interrupts.
    IntCtlAbort,
    /// The message type (MSI data 10:8) is not passed by the DTE or is reserved.
    MessageTypeBlocked,
    /// The interrupt index (MSI data 10:0) is beyond the device's interrupt table.
    IndexBeyondTable,
    /// The IRTE could not be read from guest memory.
    TableReadFailed,
    /// The IRTE's RemapEn bit is clear.
    EntryNotValid,
    /// The IRTE has reserved bits or encodings set (or is a guest-mode entry while guest
    /// virtual APIC mode is off).
    EntryReserved,
    /// The IRR dword of a guest-mode entry's vAPIC backing page could not be written.
    BackingPageWriteFailed,
}

impl FaultKind {
    /// True for faults logged as IO_PAGE_FAULT (which the DTE's IG bit suppresses).
    pub fn is_io_page_fault(self) -> bool {
        matches!(
            self,
            FaultKind::IntCtlAbort
                | FaultKind::MessageTypeBlocked
                | FaultKind::IndexBeyondTable
                | FaultKind::EntryNotValid
                | FaultKind::EntryReserved
        )
    }
}

/// A blocked interrupt request, as the unit would log it.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq, Hash)]
#[error("interrupt remapping fault {kind:?} from device {device_id:#06x}, index {index:?}")]
pub struct AmdFault {
    /// What went wrong.
    pub kind: FaultKind,
    /// The requester's device ID.
    pub device_id: u16,
    /// The domain ID of the DTE, when it was read (0 otherwise).
    pub domain_id: u16,
    /// The interrupt table index the request named, once known.
    pub index: Option<u32>,
    /// The request's address (address_hi:address_lo).
    pub request_address: u64,
    /// For hardware errors, the guest-physical address that could not be accessed.
    pub access_address: Option<u64>,
    /// The DTE's IG or the IRTE's SupIOPF suppresses the event.
    pub suppressed: bool,
}

impl AmdFault {
    /// A fault of `kind` for `msg` from `device_id`, with nothing else known yet.
    pub fn new(kind: FaultKind, device_id: u16, msg: &MsiMessage) -> Self {
        AmdFault {
            kind,
            device_id,
            domain_id: 0,
            index: None,
            request_address: (u64::from(msg.address_hi) << 32) | u64::from(msg.address_lo),
            access_address: None,
            suppressed: false,
        }
    }

    /// The event the unit logs for this fault, or `None` when no event is due (not an
    /// interrupt, or suppressed).
    pub fn event(&self) -> Option<Event> {
        if self.suppressed {
            return None;
        }
        let device_id = self.device_id;
        let domain_id = self.domain_id;
        let address = self.request_address;
        let access = self.access_address.unwrap_or(address);
        Some(match self.kind {
            FaultKind::NotInterrupt => return None,
            FaultKind::DeviceIdBeyondTable => Event::IllegalDevTableEntry {
                device_id,
                address,
                flags: EVENT_FLAG_I,
            },
            FaultKind::IllegalDeviceTableEntry => Event::IllegalDevTableEntry {
                device_id,
                address,
                flags: EVENT_FLAG_I | EVENT_FLAG_RZ,
            },
            FaultKind::DeviceTableReadFailed => Event::DevTabHardwareError {
                device_id,
                address: access,
                flags: EVENT_FLAG_I,
            },
            FaultKind::IntCtlAbort
            | FaultKind::MessageTypeBlocked
            | FaultKind::IndexBeyondTable
            | FaultKind::EntryNotValid => Event::IoPageFault {
                device_id,
                domain_id,
                address,
                flags: EVENT_FLAG_I,
            },
            FaultKind::EntryReserved => Event::IoPageFault {
                device_id,
                domain_id,
                address,
                flags: EVENT_FLAG_I | EVENT_FLAG_PR | EVENT_FLAG_RZ,
            },
            FaultKind::TableReadFailed => Event::PageTabHardwareError {
                device_id,
                domain_id,
                address: access,
                flags: EVENT_FLAG_I,
            },
            FaultKind::BackingPageWriteFailed => Event::PageTabHardwareError {
                device_id,
                domain_id,
                address: access,
                flags: EVENT_FLAG_I | EVENT_FLAG_RW,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> MsiMessage {
        MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 5,
        }
    }

    #[test]
    fn suppression_and_non_interrupts_log_nothing() {
        let mut f = AmdFault::new(FaultKind::EntryNotValid, 0x18, &msg());
        assert!(f.event().is_some());
        f.suppressed = true;
        assert_eq!(f.event(), None);
        let f = AmdFault::new(FaultKind::NotInterrupt, 0x18, &msg());
        assert_eq!(f.event(), None);
    }

    #[test]
    fn every_kind_maps_to_its_event() {
        use FaultKind::*;
        for kind in [
            DeviceIdBeyondTable,
            DeviceTableReadFailed,
            IllegalDeviceTableEntry,
            IntCtlAbort,
            MessageTypeBlocked,
            IndexBeyondTable,
            TableReadFailed,
            EntryNotValid,
            EntryReserved,
            BackingPageWriteFailed,
        ] {
            let mut f = AmdFault::new(kind, 0xff00, &msg());
            f.access_address = Some(0x1230);
            let e = f.event().expect("event");
            assert_eq!(e.flags() & EVENT_FLAG_I, EVENT_FLAG_I, "{kind:?}");
            assert_eq!(e.device_id(), Some(0xff00));
            let code = e.code();
            match kind {
                DeviceIdBeyondTable | IllegalDeviceTableEntry => assert_eq!(code, 1),
                DeviceTableReadFailed => assert_eq!(code, 3),
                TableReadFailed | BackingPageWriteFailed => assert_eq!(code, 4),
                _ => {
                    assert_eq!(code, 2);
                    assert!(kind.is_io_page_fault());
                }
            }
        }
    }
}
