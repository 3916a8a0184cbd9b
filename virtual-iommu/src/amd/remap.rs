//! Interrupt request remapping: the spec-ordered pipeline from a device's message to an
//! interrupt, a guest-mode posting, or a fault.
//!
//! With the unit enabled (`IommuEn`), a request from device ID `d` goes through:
//!
//! 1. **Is it an interrupt?** The address must lie in `0xFEE0_0000..=0xFEEF_FFFF` with
//!    `address_hi` = 0. Anything else is a memory write, not an interrupt: refused without
//!    an event ([`FaultKind::NotInterrupt`]).
//! 2. **Device table entry.** `d` must be inside the device table (its size field), else
//!    ILLEGAL_DEV_TABLE_ENTRY; the 32-byte DTE must be readable, else
//!    DEV_TAB_HARDWARE_ERROR; with IV = 1 its interrupt fields must not hold reserved
//!    encodings, else ILLEGAL_DEV_TABLE_ENTRY. With IV = 0 the request passes unmapped.
//! 3. **Message type** (MSI data 10:8, the delivery mode). Fixed (000b) and arbitrated
//!    (001b) interrupts follow IntCtl: target abort (IO_PAGE_FAULT), forward unmapped, or
//!    remap. NMI, INIT and ExtINT pass unmapped when their DTE pass bit is set, SMI when
//!    SysMgt = 01b; otherwise, and for the reserved types 011b and 110b, they are aborted
//!    with IO_PAGE_FAULT.
//! 4. **Index** = MSI data 10:0, which must be below 2^IntTabLen (else IO_PAGE_FAULT).
//!    Only data bits 10:8 = 000b/001b reach this step, so indexes 0..=511 are usable, the
//!    table size Linux allocates.
//! 5. **IRTE** at `root + index * size` (4 or 16 bytes by `GAEn`): unreadable →
//!    PAGE_TAB_HARDWARE_ERROR; RemapEn = 0 → IO_PAGE_FAULT; reserved bits or encodings →
//!    IO_PAGE_FAULT (RZ).
//! 6. **Result.** A remapped-mode entry gives a message in KVM's x2APIC API layout: vector,
//!    destination, destination mode and fixed/lowest-priority delivery from the entry, the
//!    trigger mode (data bit 15) from the request, since the AMD IRTE has no trigger field
//!    and level-triggered IOAPIC pins rely on it for the EOI broadcast. A guest-mode entry
//!    gives a [`GuestPost`] to perform now (see [`super::ga`]).
//!
//! IO_PAGE_FAULT events are suppressed by the DTE's IG bit, and those found in step 5 also
//! by the IRTE's SupIOPF bit; the fault is still returned, the interrupt still blocked.

use crate::memory::GuestMemoryReader;
use crate::msi::{MsiMessage, MSI_ADDR_BASE, MSI_ADDR_BASE_MASK};

use super::dte::{Dte, IntCtl, DTE_SIZE};
use super::fault::{AmdFault, FaultKind};
use super::ga::GuestPost;
use super::irte::{DecodedIrte, Irte, IrteError, IrteMode, IRTE128_SIZE};

/// MSI data bits 10:0: the interrupt table index.
pub const MSI_DATA_INDEX_MASK: u32 = 0x7ff;
/// Shift of the message type (delivery mode) in MSI data (10:8).
const MSI_DATA_TYPE_SHIFT: u32 = 8;
/// Mask (after shifting) of the message type.
const MSI_DATA_TYPE_MASK: u32 = 0x7;
/// Message type SMI.
const TYPE_SMI: u32 = 2;
/// Message type NMI.
const TYPE_NMI: u32 = 4;
/// Message type INIT.
const TYPE_INIT: u32 = 5;
/// Message type ExtINT.
const TYPE_EXTINT: u32 = 7;

/// The device table the unit uses: base and number of entries (from its base register).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTable {
    /// Guest-physical base (4 KiB aligned).
    pub base: u64,
    /// Number of 32-byte entries: (size + 1) * 128.
    pub entries: u32,
}

impl DeviceTable {
    /// Guest-physical address of the DTE of `device_id`, or `None` beyond the table.
    pub fn entry_address(&self, device_id: u16) -> Option<u64> {
        if u32::from(device_id) >= self.entries {
            return None;
        }
        self.base
            .checked_add(u64::from(device_id) * DTE_SIZE as u64)
    }
}

/// The unit state a translation depends on (taken from the registers at call time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemapSettings {
    /// The device table.
    pub device_table: DeviceTable,
    /// How IRTEs are interpreted.
    pub mode: IrteMode,
}

/// What remapping did with an interrupt request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemapOutcome {
    /// Forwarded unmapped (IV = 0, IntCtl = forward, or a passed NMI/INIT/ExtINT/SMI).
    Passthrough(MsiMessage),
    /// Remapped through IRTE `index` of the requester's table.
    Remapped {
        /// The IRTE index.
        index: u32,
        /// The interrupt, in KVM's x2APIC API layout.
        message: MsiMessage,
    },
    /// A guest-mode IRTE: post into guest memory.
    GuestMode(GuestPost),
}

/// True when `msg` targets the interrupt address range with a 32-bit address.
pub fn is_interrupt_request(msg: &MsiMessage) -> bool {
    msg.address_hi == 0 && msg.address_lo & MSI_ADDR_BASE_MASK == MSI_ADDR_BASE
}

/// Reads the DTE of `device_id`.
pub fn read_dte(
    table: &DeviceTable,
    mem: &dyn GuestMemoryReader,
    device_id: u16,
) -> Result<Dte, (FaultKind, Option<u64>)> {
    let gpa = table
        .entry_address(device_id)
        .ok_or((FaultKind::DeviceIdBeyondTable, None))?;
    let mut bytes = [0u8; DTE_SIZE];
    mem.read(gpa, &mut bytes)
        .map_err(|_| (FaultKind::DeviceTableReadFailed, Some(gpa)))?;
    Ok(Dte::from_bytes(bytes))
}

/// Remaps `msg` from `device_id` (the unit being enabled), reading the DTE and IRTE from
/// `mem` now. Pure: nothing is written, the fault is returned rather than logged.
pub fn remap(
    settings: &RemapSettings,
    mem: &dyn GuestMemoryReader,
    device_id: u16,
    msg: &MsiMessage,
) -> Result<RemapOutcome, AmdFault> {
    let mut fault = AmdFault::new(FaultKind::NotInterrupt, device_id, msg);
    let fail = |mut f: AmdFault, kind: FaultKind| {
        f.kind = kind;
        f
    };
    if !is_interrupt_request(msg) {
        return Err(fault);
    }
    let dte = match read_dte(&settings.device_table, mem, device_id) {
        Ok(dte) => dte,
        Err((kind, access)) => {
            fault.access_address = access;
            return Err(fail(fault, kind));
        }
    };
    fault.domain_id = dte.domain_id();
    let ir = match dte.interrupt_remapping() {
        Ok(Some(ir)) => ir,
        Ok(None) => return Ok(RemapOutcome::Passthrough(*msg)),
        Err(e) => {
            log::debug!("amd-vi: DTE of {device_id:#06x} ({dte:x?}) illegal: {e}");
            return Err(fail(fault, FaultKind::IllegalDeviceTableEntry));
        }
    };
    fault.suppressed = ir.ignore_unmapped;
    let message_type = (msg.data >> MSI_DATA_TYPE_SHIFT) & MSI_DATA_TYPE_MASK;
    let pass = match message_type {
        0 | 1 => match ir.int_ctl {
            IntCtl::Abort => return Err(fail(fault, FaultKind::IntCtlAbort)),
            IntCtl::Forward => true,
            IntCtl::Remap => false,
        },
        TYPE_SMI => ir.smi_pass,
        TYPE_NMI => ir.nmi_pass,
        TYPE_INIT => ir.init_pass,
        TYPE_EXTINT => ir.eint_pass,
        _ => false,
    };
    if pass {
        return Ok(RemapOutcome::Passthrough(*msg));
    }
    if message_type > 1 {
        return Err(fail(fault, FaultKind::MessageTypeBlocked));
    }
    let index = msg.data & MSI_DATA_INDEX_MASK;
    fault.index = Some(index);
    if index >= ir.entries() {
        return Err(fail(fault, FaultKind::IndexBeyondTable));
    }
    let size = settings.mode.entry_size();
    // A hardware error is not an IO_PAGE_FAULT: IG does not suppress it.
    let read_failed = |mut f: AmdFault, gpa: Option<u64>| {
        f.access_address = gpa;
        f.suppressed = false;
        fail(f, FaultKind::TableReadFailed)
    };
    let Some(gpa) = ir.table_root.checked_add(u64::from(index) * size as u64) else {
        return Err(read_failed(fault, Some(ir.table_root)));
    };
    let mut bytes = [0u8; IRTE128_SIZE];
    let buf = bytes.get_mut(..size).unwrap_or(&mut []);
    if mem.read(gpa, buf).is_err() {
        return Err(read_failed(fault, Some(gpa)));
    }
    let irte = Irte::from_bytes(settings.mode, &bytes);
    fault.suppressed |= irte.suppresses_faults();
    match irte.decode(settings.mode) {
        Ok(DecodedIrte::Remapped(r)) => {
            let message = MsiMessage::compat(
                r.destination,
                r.logical,
                r.vector,
                r.delivery_mode,
                msg.is_level(),
            );
            Ok(RemapOutcome::Remapped { index, message })
        }
        Ok(DecodedIrte::GuestMode(g)) => Ok(RemapOutcome::GuestMode(GuestPost::new(
            &g,
            device_id,
            index,
            fault.domain_id,
            fault.request_address,
        ))),
        Err(e) => {
            log::debug!("amd-vi: IRTE {index} of {device_id:#06x} ({irte:x?}) rejected: {e}");
            let kind = match e {
                IrteError::NotValid => FaultKind::EntryNotValid,
                _ => FaultKind::EntryReserved,
            };
            Err(fail(fault, kind))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_window() {
        let m = |lo, hi| MsiMessage {
            address_lo: lo,
            address_hi: hi,
            data: 0,
        };
        assert!(is_interrupt_request(&m(0xfee0_0000, 0)));
        assert!(is_interrupt_request(&m(0xfeef_fffc, 0)));
        assert!(!is_interrupt_request(&m(0xfef0_0000, 0)));
        assert!(!is_interrupt_request(&m(0xfee0_0000, 1)));
        assert!(!is_interrupt_request(&m(0, 0)));
    }

    #[test]
    fn device_table_bounds() {
        let t = DeviceTable {
            base: 0x10_0000,
            entries: 128,
        };
        assert_eq!(t.entry_address(0), Some(0x10_0000));
        assert_eq!(t.entry_address(127), Some(0x10_0000 + 127 * 32));
        assert_eq!(t.entry_address(128), None);
        let t = DeviceTable {
            base: u64::MAX - 16,
            entries: 65536,
        };
        assert_eq!(t.entry_address(1), None);
    }
}
