//! Shared parts of the AMD-Vi scenarios (`amd-ir-basic`, `amd-ir-ioapic`, `amd-ir-faults`,
//! `amd-ir-many`, `amd-ga`, `amd-bench`): finding the unit through the IVRS, telling the
//! VMMs apart, enabling it as Linux does, and the device IDs of the requesters.
//!
//! Delivery checks, target choice and waiting are the VT-d scenarios' (`ir_common`).

use super::ir_common::{Vmm, NS_PER_MS};
use super::platform;
use super::Context;
use crate::acpi::ivrs::{Ivhd, Ivrs};
use crate::amdvi::{AmdVi, Options};
use crate::clock::Clock;
use crate::pci::Function;
use crate::report::Text;
use crate::{sprint, sprintln, text};

/// The AMD-Vi hardware as the IVRS describes it.
pub struct AmdPlatform {
    /// The parsed IVRS.
    pub ivrs: Ivrs,
    /// The unit the probe drives (segment 0, the IVHD with an EFR image when there is one).
    pub unit: Ivhd,
    /// Which VMM made the tables.
    pub vmm: Vmm,
}

impl AmdPlatform {
    /// The device ID of PCI function `function`'s requests, which the unit must cover.
    pub fn device_id(&self, function: Function) -> Result<u16, Text> {
        let id = function.sid();
        if !self.unit.covers(id) {
            return Err(text!(
                "the IVHD of the unit at 0x{:x} does not cover {} (device ID 0x{:04x})",
                self.unit.base,
                function,
                id
            ));
        }
        Ok(id)
    }

    /// The unit's own PCI function.
    pub fn unit_function(&self) -> Function {
        let id = self.unit.device_id;
        Function {
            bus: (id >> 8) as u8,
            device: ((id >> 3) & 0x1f) as u8,
            function: (id & 0x7) as u8,
        }
    }
}

/// The VMM, told by the table's OEM ID.
pub fn vmm_from_oem_id(oem: &[u8; 6]) -> Vmm {
    match oem {
        b"IRVMM " => Vmm::Irvmm,
        b"BOCHS " => Vmm::Qemu,
        _ => Vmm::Other,
    }
}

/// Finds and parses the IVRS; fails when the platform has no AMD-Vi unit.
pub fn discover(ctx: &Context) -> Result<AmdPlatform, Text> {
    let tables = platform::tables(ctx)?;
    let table = tables.find(b"IVRS").ok_or_else(|| {
        text!("no IVRS table (irvmm: --iommu amd; QEMU: -device amd-iommu,intremap=on,xtsup=on)")
    })?;
    let ivrs = Ivrs::parse(table)?;
    let unit = ivrs.unit()?;
    let vmm = vmm_from_oem_id(&ivrs.oem_id);
    sprint!(
        "amd: IVRS oem=\"{}\" ({}) ivinfo=0x{:x} IVHD type 0x{:x} flags=0x{:x} base=0x{:x} function=0x{:04x} cap=0x{:x} efr=",
        ivrs.oem(),
        vmm.name(),
        ivrs.ivinfo,
        unit.kind,
        unit.flags,
        unit.base,
        unit.device_id,
        unit.capability_offset
    );
    match unit.efr {
        Some(efr) => sprint!("0x{:x}", efr),
        None => sprint!("none"),
    }
    sprint!(" ranges=");
    for (i, r) in unit.ranges().iter().enumerate() {
        sprint!(
            "{}0x{:04x}-0x{:04x}",
            if i > 0 { "," } else { "" },
            r.first,
            r.last
        );
    }
    for s in unit.specials() {
        sprint!(
            " special(variety {} handle {} -> 0x{:04x})",
            s.variety,
            s.handle,
            s.device_id
        );
    }
    sprintln!();
    Ok(AmdPlatform { ivrs, unit, vmm })
}

/// Enables the unit as Linux does (see [`AmdVi::enable`]) and prints its state.
pub fn enable(platform: &AmdPlatform, clock: Clock, options: Options) -> Result<AmdVi, Text> {
    let begin = clock.now_ns();
    let vi = AmdVi::enable(&platform.unit, clock, options)?;
    sprintln!(
        "amd-vi: unit 0x{:x} EFR 0x{:x} control 0x{:x} status 0x{:x}: remapping on, 128-bit IRTEs, x2APIC destinations{} ({} ms)",
        platform.unit.base,
        vi.efr(),
        vi.control(),
        vi.status(),
        if options.guest_apic {
            ", guest virtual APIC"
        } else {
            ""
        },
        clock.now_ns().saturating_sub(begin) / NS_PER_MS
    );
    Ok(vi)
}
