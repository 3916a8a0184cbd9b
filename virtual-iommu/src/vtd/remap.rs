//! Interrupt request decoding and remapping (VT-d spec 5.1).
//!
//! An interrupt request is a dword write to `0xFEEx_xxxx`. Address bit 4 tells its format:
//!
//! * **Compatibility format** (bit 4 = 0): an ordinary xAPIC MSI. With interrupt
//!   remapping enabled it passes through unchanged when GSTS.CFIS = 1 and the unit is in
//!   xAPIC mode (IRTA.EIME = 0); otherwise it is blocked with fault 0x25. (CFI "is
//!   effective only when interrupt remapping is enabled and Extended Interrupt Mode is
//!   disabled": in x2APIC mode compatibility-format interrupts are always blocked.)
//! * **Remappable format** (bit 4 = 1): address bits 19:5 are handle 14:0, bit 2 is
//!   handle 15, bit 3 is SHV. With SHV = 1 the interrupt index is handle + `data[15:0]`
//!   (the subhandle); with SHV = 0 it is the handle. Address bits 63:32 and data bits
//!   31:16 must be zero (fault 0x20).
//!
//! IOAPIC interrupts take the same path: the IOAPIC model copies RTE bits 63:48 into
//! address bits 19:4 and RTE bit 11 into address bit 2, so a remappable RTE (bit 48 = 1,
//! index 14:0 in 63:49, index 15 in bit 11) arrives as a remappable MSI with SHV = 0 and
//! its data holding the RTE's vector field (by Linux's convention the pin number), which
//! the remapped interrupt does not use.
//!
//! Every attribute of a remapped interrupt comes from the IRTE, the trigger mode included.
//! Linux programs TM = 0 (edge) even for level-triggered IOAPIC pins and instead ends such
//! an interrupt by writing the pin number to the IOAPIC's EOI register (IOAPIC version
//! 0x20, `ioapic_ir_ack_level`), so a level pin's route is an edge route in KVM and the
//! IOAPIC model sees the EOI as an MMIO write rather than a `KVM_EXIT_IOAPIC_EOI`.
//!
//! A remappable request then goes through these checks, each with its fault reason:
//! index within the table (0x21), entry readable (0x23), entry present (0x22), entry
//! well-formed (0x24; IM = 1 is well-formed only with CAP.PI), source-id accepted (0x26).
//! The last three are *qualified*: the entry's FPD bit suppresses their recording. A
//! posted-format entry ends here in [`RemapOutcome::Posted`]: the descriptor is read and
//! written only when the interrupt is posted ([`super::posted`], faults 0x27 and 0x28).

use crate::memory::GuestMemoryReader;
use crate::msi::{MsiMessage, SourceId, MSI_ADDR_REMAPPABLE};

use super::fault::{Fault, FaultReason};
use super::irte::{DecodedEntry, Irte, IrteError, IRTE_SIZE};
use super::posted::PostedInterrupt;

/// Address bits 19:5: handle bits 14:0.
const REMAP_ADDR_HANDLE_SHIFT: u32 = 5;
/// Mask (after shifting) of handle bits 14:0.
const REMAP_ADDR_HANDLE_MASK: u32 = 0x7fff;
/// Address bit 3: SHV, subhandle valid.
const REMAP_ADDR_SHV: u32 = 1 << 3;
/// Address bit 2: handle bit 15.
const REMAP_ADDR_HANDLE_15: u32 = 1 << 2;
/// The handle bit address bit 2 carries.
const HANDLE_HIGH_BIT: u32 = 15;
/// Data bits 15:0: the subhandle.
const REMAP_DATA_SUBHANDLE_MASK: u32 = 0xffff;
/// Data bits 31:16: reserved in remappable requests.
const REMAP_DATA_RESERVED: u32 = 0xffff_0000;

/// The active interrupt remapping table: what SIRTP latched from IRTA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrTable {
    /// Guest-physical base address (4 KiB aligned).
    pub base: u64,
    /// Number of entries, 2^(S + 1): 2 to 65536.
    pub entries: u32,
    /// EIME: x2APIC mode, 32-bit destinations.
    pub eime: bool,
}

impl IrTable {
    /// Guest-physical address of entry `index`, or `None` on overflow.
    pub fn entry_address(&self, index: u32) -> Option<u64> {
        let size = u64::try_from(IRTE_SIZE).ok()?;
        self.base.checked_add(u64::from(index).checked_mul(size)?)
    }
}

/// The remapping state a translation depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemapSettings {
    /// The latched table, `None` until SIRTP has been issued.
    pub table: Option<IrTable>,
    /// GSTS.CFIS.
    pub compatibility_allowed: bool,
    /// CAP.PI: posted-format entries post (else IM is a reserved bit, fault 0x24).
    pub posted_interrupts: bool,
}

impl RemapSettings {
    /// True when compatibility-format requests pass through: CFIS set and xAPIC mode.
    pub fn passes_compatibility_format(&self) -> bool {
        let eime = self.table.is_some_and(|t| t.eime);
        self.compatibility_allowed && !eime
    }
}

/// The format of an interrupt request, as far as the request itself tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFormat {
    /// Compatibility format (address bit 4 clear).
    Compatibility,
    /// Remappable format, naming interrupt `index` (handle, plus subhandle with SHV).
    Remappable {
        /// The interrupt index (may exceed 0xffff when handle + subhandle overflows).
        index: u32,
    },
}

/// Why a request could not even be decoded (fault 0x20), with the index when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MalformedRequest {
    /// The interrupt index the request names, when it is in remappable format.
    pub index: Option<u32>,
}

/// The interrupt index a remappable-format request names (whether or not the rest of
/// the request is valid); `None` for compatibility format.
pub fn request_index(msg: &MsiMessage) -> Option<u32> {
    if msg.address_lo & MSI_ADDR_REMAPPABLE == 0 {
        return None;
    }
    let low = (msg.address_lo >> REMAP_ADDR_HANDLE_SHIFT) & REMAP_ADDR_HANDLE_MASK;
    let high = u32::from(msg.address_lo & REMAP_ADDR_HANDLE_15 != 0) << HANDLE_HIGH_BIT;
    let handle = low | high;
    if msg.address_lo & REMAP_ADDR_SHV != 0 {
        Some(handle + (msg.data & REMAP_DATA_SUBHANDLE_MASK))
    } else {
        Some(handle)
    }
}

/// Decodes the format of `msg`, checking the fields the remappable format reserves.
///
/// An interrupt request is a write to the 32-bit window `0xFEEx_xxxx`: a message whose
/// `address_hi` is not zero targets a 64-bit address above 4 GiB and is no interrupt
/// request in either format (a device's raw message carries no destination bits there;
/// those only appear in the translated message, in KVM's layout). It is refused like any
/// other address outside the window, so it can never pass through as a compatibility
/// interrupt with a destination KVM would read from `address_hi`.
pub fn decode_request(msg: &MsiMessage) -> Result<RequestFormat, MalformedRequest> {
    let index = request_index(msg);
    if !msg.is_msi_window() || msg.address_hi != 0 {
        return Err(MalformedRequest { index });
    }
    let Some(index) = index else {
        return Ok(RequestFormat::Compatibility);
    };
    if msg.data & REMAP_DATA_RESERVED != 0 {
        return Err(MalformedRequest { index: Some(index) });
    }
    Ok(RequestFormat::Remappable { index })
}

/// A successfully remapped request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remapped {
    /// The IRTE index used.
    pub index: u32,
    /// The resulting interrupt, in KVM's x2APIC API layout.
    pub message: MsiMessage,
}

/// What remapping did with a request while interrupt remapping is enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemapOutcome {
    /// Compatibility format, passed through unchanged (CFIS = 1, xAPIC mode).
    Passthrough(MsiMessage),
    /// Remapped through an IRTE.
    Remapped(Remapped),
    /// A posted-format IRTE: the interrupt is to be posted into its descriptor
    /// ([`super::posted::post`]).
    Posted(PostedInterrupt),
}

/// Remaps `msg` from `source` under `settings` (interrupt remapping enabled), reading the
/// entry from `mem`.
pub fn remap(
    settings: &RemapSettings,
    mem: &dyn GuestMemoryReader,
    source: SourceId,
    msg: &MsiMessage,
) -> Result<RemapOutcome, Fault> {
    let fault = |reason: FaultReason, index: Option<u32>, suppressed: bool| Fault {
        reason,
        source_id: source,
        index,
        suppressed,
    };
    let index = match decode_request(msg) {
        Err(bad) => return Err(fault(FaultReason::RequestReserved, bad.index, false)),
        Ok(RequestFormat::Compatibility) => {
            return if settings.passes_compatibility_format() {
                Ok(RemapOutcome::Passthrough(*msg))
            } else {
                Err(fault(FaultReason::CompatibilityBlocked, None, false))
            };
        }
        Ok(RequestFormat::Remappable { index }) => index,
    };
    let Some(table) = settings.table else {
        return Err(fault(FaultReason::TableReadFailed, Some(index), false));
    };
    if index >= table.entries {
        return Err(fault(FaultReason::IndexBeyondTable, Some(index), false));
    }
    let irte = read_irte(&table, mem, index)
        .ok_or_else(|| fault(FaultReason::TableReadFailed, Some(index), false))?;
    let fpd = irte.fault_processing_disabled();
    let entry = irte
        .decode_entry(table.eime, settings.posted_interrupts)
        .map_err(|e| {
            let reason = match e {
                IrteError::NotPresent => FaultReason::EntryNotPresent,
                _ => FaultReason::EntryReserved,
            };
            log::debug!("vt-d: IRTE {index} ({irte:x?}) rejected: {e}");
            fault(reason, Some(index), fpd)
        })?;
    if !entry.source_validation().allows(source) {
        return Err(fault(FaultReason::SourceIdMismatch, Some(index), fpd));
    }
    Ok(match entry {
        DecodedEntry::Remapped(entry) => RemapOutcome::Remapped(Remapped {
            index,
            message: entry.message(),
        }),
        DecodedEntry::Posted(entry) => RemapOutcome::Posted(PostedInterrupt {
            index,
            source_id: source,
            entry,
            x2apic: table.eime,
        }),
    })
}

/// Reads entry `index` of `table`; `None` when it is not in guest RAM.
pub fn read_irte(table: &IrTable, mem: &dyn GuestMemoryReader, index: u32) -> Option<Irte> {
    let gpa = table.entry_address(index)?;
    let mut bytes = [0u8; IRTE_SIZE];
    mem.read(gpa, &mut bytes).ok()?;
    Some(Irte::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remappable(handle: u16, shv: bool, data: u32) -> MsiMessage {
        let h = u32::from(handle);
        let mut address_lo = 0xfee0_0000
            | MSI_ADDR_REMAPPABLE
            | ((h & 0x7fff) << REMAP_ADDR_HANDLE_SHIFT)
            | ((h >> 15) << 2);
        if shv {
            address_lo |= REMAP_ADDR_SHV;
        }
        MsiMessage {
            address_lo,
            address_hi: 0,
            data,
        }
    }

    #[test]
    fn handle_bits_including_bit_15() {
        for handle in [0u16, 1, 0x7fff, 0x8000, 0xffff, 0x1234] {
            let m = remappable(handle, false, 0x41);
            assert_eq!(
                decode_request(&m),
                Ok(RequestFormat::Remappable {
                    index: u32::from(handle)
                })
            );
        }
    }

    #[test]
    fn subhandle_adds_when_shv() {
        let m = remappable(0x100, true, 3);
        assert_eq!(
            decode_request(&m),
            Ok(RequestFormat::Remappable { index: 0x103 })
        );
        // Without SHV the data is not a subhandle.
        let m = remappable(0x100, false, 3);
        assert_eq!(
            decode_request(&m),
            Ok(RequestFormat::Remappable { index: 0x100 })
        );
        // Handle + subhandle may leave the 16-bit space.
        let m = remappable(0xffff, true, 0xffff);
        assert_eq!(
            decode_request(&m),
            Ok(RequestFormat::Remappable { index: 0x1_fffe })
        );
    }

    #[test]
    fn reserved_request_fields() {
        let mut m = remappable(5, true, 0);
        m.address_hi = 1;
        assert_eq!(decode_request(&m), Err(MalformedRequest { index: Some(5) }));
        let m = remappable(5, false, 0x1_0000);
        assert_eq!(decode_request(&m), Err(MalformedRequest { index: Some(5) }));
        let mut m = remappable(5, false, 0);
        m.address_lo &= !0xfff0_0000;
        assert_eq!(decode_request(&m), Err(MalformedRequest { index: Some(5) }));
        let c = MsiMessage::compat(1, false, 0x30, crate::msi::DeliveryMode::Fixed, false);
        assert_eq!(decode_request(&c), Ok(RequestFormat::Compatibility));
        assert_eq!(request_index(&c), None);
    }

    /// Found by the `remap_decode` fuzzer: a compatibility-format request with a 64-bit
    /// address (`address_hi` 0x2_0000) passed through CFI unchanged, so the route handed
    /// to KVM read `address_hi` as x2APIC destination bits 31:8 (and a nonzero low byte
    /// makes KVM reject the whole routing table). Above 4 GiB is no interrupt address.
    #[test]
    fn compatibility_request_above_4gib_is_not_an_interrupt() {
        let m = MsiMessage {
            address_lo: 0xfee0_1000,
            address_hi: 0x2_0000,
            data: 0x4031,
        };
        assert_eq!(decode_request(&m), Err(MalformedRequest { index: None }));
        let m = MsiMessage { address_hi: 1, ..m };
        assert_eq!(decode_request(&m), Err(MalformedRequest { index: None }));
        let settings = RemapSettings {
            table: None,
            compatibility_allowed: true,
            posted_interrupts: true,
        };
        assert!(settings.passes_compatibility_format());
        struct NoMemory;
        impl GuestMemoryReader for NoMemory {
            fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), crate::MemError> {
                Err(crate::MemError::Unmapped {
                    gpa,
                    len: buf.len(),
                })
            }
            fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), crate::MemError> {
                Err(crate::MemError::Unmapped {
                    gpa,
                    len: buf.len(),
                })
            }
        }
        let fault = remap(&settings, &NoMemory, SourceId(0x18), &m).unwrap_err();
        assert_eq!(fault.reason, FaultReason::RequestReserved);
        assert_eq!(fault.index, None);
        // The same request below 4 GiB still passes through.
        let low = MsiMessage { address_hi: 0, ..m };
        assert_eq!(
            remap(&settings, &NoMemory, SourceId(0x18), &low),
            Ok(RemapOutcome::Passthrough(low))
        );
    }

    #[test]
    fn ioapic_rte_in_remappable_format_decodes_like_msi() {
        // What devices/src/ioapic.rs produces: RTE bits 63:48 -> address 19:4, bit 11 ->
        // address bit 2, data = vector field (pin) | trigger.
        let index: u64 = 0x9abc;
        let rte: u64 = (1 << 48) | ((index & 0x7fff) << 49) | ((index >> 15) << 11) | 5 | (1 << 15);
        let address_lo =
            0xfee0_0000 | (((rte >> 48) as u32) << 4) | (((rte >> 11) & 1) as u32) << 2;
        let m = MsiMessage {
            address_lo,
            address_hi: 0,
            data: 5 | (1 << 15) | (1 << 14),
        };
        assert_eq!(
            decode_request(&m),
            Ok(RequestFormat::Remappable { index: 0x9abc })
        );
    }

    #[test]
    fn compatibility_rule() {
        let table = IrTable {
            base: 0,
            entries: 2,
            eime: false,
        };
        let mut s = RemapSettings {
            table: Some(table),
            compatibility_allowed: true,
            posted_interrupts: true,
        };
        assert!(s.passes_compatibility_format());
        s.table = Some(IrTable {
            eime: true,
            ..table
        });
        assert!(
            !s.passes_compatibility_format(),
            "x2APIC mode blocks compat format"
        );
        s.table = Some(table);
        s.compatibility_allowed = false;
        assert!(!s.passes_compatibility_format());
        let no_table = RemapSettings {
            table: None,
            compatibility_allowed: true,
            posted_interrupts: true,
        };
        assert!(no_table.passes_compatibility_format());
    }

    #[test]
    fn entry_address_overflow() {
        let t = IrTable {
            base: u64::MAX - 0xf,
            entries: 4,
            eime: true,
        };
        assert_eq!(t.entry_address(0), Some(u64::MAX - 0xf));
        assert_eq!(t.entry_address(1), None);
    }
}
