//! `_OSC` of the PCI host bridge (ACPI 6.3 §6.2.11, PCI Firmware Specification 3.2 §4.5):
//! the operating system asks for control of native PCI Express features and the platform
//! answers which ones it grants.
//!
//! Without `_OSC` an OS must assume the firmware keeps them (Linux: "platform retains control
//! of PCIe features (AE_NOT_FOUND)") and leaves native hot-plug, PME and AER off. irvmm has no
//! firmware that could handle any of them (no SMM, no firmware-first error handling, no ACPI
//! hot-plug), so it grants what QEMU's q35 grants without ACPI PCI hot-plug: native PCIe and
//! SHPC hot-plug, PME, AER and the PCIe capability structure ([`GRANTED_CONTROLS`]).
//!
//! The method, with `Arg0` the UUID, `Arg1` the revision, `Arg2` the dword count and `Arg3` the
//! capabilities buffer (dword 1 status, dword 2 support, dword 3 control):
//!
//! ```text
//! Method(_OSC, 4, NotSerialized) {
//!   CreateDWordField(Arg3, 0, CDW1)
//!   If (LEqual(Arg0, ToUUID("33DB4D5B-1FF7-401C-9657-7441C03DD766"))) {
//!     CreateDWordField(Arg3, 8, CDW3)
//!     Store(CDW3, Local0)
//!     And(Local0, GRANTED_CONTROLS, Local0)
//!     If (LNot(LEqual(Arg1, 1))) { Or(CDW1, 0x08, CDW1) }      // unrecognized revision
//!     If (LNot(LEqual(CDW3, Local0))) { Or(CDW1, 0x10, CDW1) } // capabilities masked
//!     Store(Local0, CDW3)
//!   } Else {
//!     Or(CDW1, 0x04, CDW1)                                      // unrecognized UUID
//!   }
//!   Return(Arg3)
//! }
//! ```
//!
//! The query flag (status bit 0) needs no handling: nothing is committed either way, so a
//! query and a request get the same answer.

use super::aml::{AmlError, Path};
use super::aml_code::{
    and, lequal, lnot, or, ret, store, Arg, CreateDWordField, If, Local, Method, Uuid,
};

/// The PCI host bridge `_OSC` UUID (PCI Firmware Specification 3.2 §4.5.1).
pub const PCI_HOST_BRIDGE_UUID: &str = "33DB4D5B-1FF7-401C-9657-7441C03DD766";
/// The `_OSC` revision this method implements.
pub const REVISION: u8 = 1;

/// Status dword (CDW1) bit 2: the UUID is not recognized.
pub const STATUS_UNRECOGNIZED_UUID: u8 = 1 << 2;
/// Status dword bit 3: the revision is not recognized.
pub const STATUS_UNRECOGNIZED_REVISION: u8 = 1 << 3;
/// Status dword bit 4: some control the OS asked for was not granted.
pub const STATUS_CAPABILITIES_MASKED: u8 = 1 << 4;

/// Control dword (CDW3) bit 0: PCI Express native hot-plug.
pub const CONTROL_PCIE_NATIVE_HOTPLUG: u8 = 1 << 0;
/// Control dword bit 1: SHPC native hot-plug.
pub const CONTROL_SHPC_NATIVE_HOTPLUG: u8 = 1 << 1;
/// Control dword bit 2: PCI Express native power management events.
pub const CONTROL_PCIE_PME: u8 = 1 << 2;
/// Control dword bit 3: PCI Express advanced error reporting.
pub const CONTROL_PCIE_AER: u8 = 1 << 3;
/// Control dword bit 4: PCI Express capability structure control.
pub const CONTROL_PCIE_CAPABILITY: u8 = 1 << 4;
/// The controls irvmm grants: all five that PCI Firmware 3.0 defines, as q35 does.
pub const GRANTED_CONTROLS: u8 = CONTROL_PCIE_NATIVE_HOTPLUG
    | CONTROL_SHPC_NATIVE_HOTPLUG
    | CONTROL_PCIE_PME
    | CONTROL_PCIE_AER
    | CONTROL_PCIE_CAPABILITY;

/// Arguments of `_OSC`.
const OSC_ARGS: u8 = 4;
/// `Arg0`: the UUID; `Arg1`: the revision; `Arg3`: the capabilities buffer.
const ARG_UUID: u8 = 0;
const ARG_REVISION: u8 = 1;
const ARG_CAPABILITIES: u8 = 3;
/// Byte offsets of the status and control dwords in the capabilities buffer.
const STATUS_DWORD_OFFSET: u64 = 0;
const CONTROL_DWORD_OFFSET: u64 = 8;
/// Names of the buffer fields over those dwords.
const STATUS_FIELD: &str = "CDW1";
const CONTROL_FIELD: &str = "CDW3";
/// The local that holds the granted controls.
const GRANTED_LOCAL: u8 = 0;

/// `Or(CDW1, bit, CDW1)`.
fn set_status(bit: u8) -> Result<Box<dyn super::aml::Aml>, AmlError> {
    Ok(Box::new(or(
        Path::new(STATUS_FIELD)?,
        bit,
        Path::new(STATUS_FIELD)?,
    )))
}

/// The `_OSC` method for the PCI host bridge (see the module documentation).
pub fn pci_host_bridge_osc() -> Result<Method, AmlError> {
    let caps = || Arg::new(ARG_CAPABILITIES);
    let cdw3 = || Path::new(CONTROL_FIELD);
    let granted = || Local::new(GRANTED_LOCAL);
    let pci_uuid = If::new(
        lequal(Arg::new(ARG_UUID)?, Uuid::parse(PCI_HOST_BRIDGE_UUID)?),
        vec![
            Box::new(CreateDWordField::new(
                caps()?,
                CONTROL_DWORD_OFFSET,
                CONTROL_FIELD,
            )?),
            Box::new(store(cdw3()?, granted()?)),
            Box::new(and(granted()?, GRANTED_CONTROLS, granted()?)),
            Box::new(If::new(
                lnot(lequal(Arg::new(ARG_REVISION)?, REVISION)),
                vec![set_status(STATUS_UNRECOGNIZED_REVISION)?],
            )),
            Box::new(If::new(
                lnot(lequal(cdw3()?, granted()?)),
                vec![set_status(STATUS_CAPABILITIES_MASKED)?],
            )),
            Box::new(store(granted()?, cdw3()?)),
        ],
    )
    .with_else(vec![set_status(STATUS_UNRECOGNIZED_UUID)?]);
    Method::new(
        "_OSC",
        OSC_ARGS,
        false,
        vec![
            Box::new(CreateDWordField::new(
                caps()?,
                STATUS_DWORD_OFFSET,
                STATUS_FIELD,
            )?),
            Box::new(pci_uuid),
            Box::new(ret(caps()?)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::aml::Aml;

    #[test]
    fn encodes_to_a_method_of_four_arguments() {
        let b = pci_host_bridge_osc().unwrap().to_aml_bytes().unwrap();
        // MethodOp, a one-byte PkgLength would not fit: the body is longer than 63 bytes.
        assert_eq!(b[0], 0x14);
        let name_at = 1 + usize::from(b[1] >> 6) + 1;
        assert_eq!(&b[name_at..name_at + 4], b"_OSC");
        assert_eq!(b[name_at + 4], 4, "4 arguments, not serialized");
        // The UUID buffer appears once, in ToUUID byte order.
        let uuid = Uuid::parse(PCI_HOST_BRIDGE_UUID).unwrap().bytes();
        assert_eq!(b.windows(16).filter(|w| *w == uuid).count(), 1);
        // Ends with Return(Arg3).
        assert_eq!(&b[b.len() - 2..], &[0xa4, 0x6b]);
        assert_eq!(GRANTED_CONTROLS, 0x1f);
    }
}
