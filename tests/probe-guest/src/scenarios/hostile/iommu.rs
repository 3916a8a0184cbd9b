//! The platform's IOMMU as `hostile` sees it: an Intel VT-d unit (DMAR) or an AMD-Vi unit
//! (IVRS), with the same three phases for each (garbage, deliveries, a guest's reset) and
//! the matching recovery (`ir-basic` or `amd-ir-basic` steps).

use super::{amdvi, vtd, Garbage, Targets};
use crate::clock::Clock;
use crate::pci::Function;
use crate::report::Text;
use crate::scenarios::amd_basic;
use crate::scenarios::amd_common::{self, AmdPlatform};
use crate::scenarios::ir_basic;
use crate::scenarios::ir_common::{self, IrPlatform, Vmm};
use crate::scenarios::platform;
use crate::scenarios::smp::Smp;
use crate::scenarios::Context;
use crate::text;

/// Which IOMMU the platform describes.
pub(super) enum Platform {
    /// A DMAR: VT-d.
    Vtd(IrPlatform),
    /// An IVRS: AMD-Vi.
    Amd(AmdPlatform),
}

impl Platform {
    /// The DMAR's unit when there is a DMAR, else the IVRS's; fails with neither.
    pub(super) fn discover(ctx: &Context) -> Result<Platform, Text> {
        let tables = platform::tables(ctx)?;
        if tables.find(b"DMAR").is_some() {
            return Ok(Platform::Vtd(ir_common::discover(ctx)?));
        }
        if tables.find(b"IVRS").is_some() {
            return Ok(Platform::Amd(amd_common::discover(ctx)?));
        }
        Err(text!(
            "no DMAR or IVRS table (irvmm: --iommu intel or --iommu amd)"
        ))
    }

    /// Which VMM made the tables.
    pub(super) fn vmm(&self) -> Vmm {
        match self {
            Platform::Vtd(p) => p.vmm,
            Platform::Amd(p) => p.vmm,
        }
    }

    /// The unit that remaps `edu`'s interrupts, opened for garbage.
    pub(super) fn unit(&self, edu: Function) -> Result<Unit, Text> {
        Ok(match self {
            Platform::Vtd(p) => Unit::Vtd(vtd::Unit::open(p.pci_unit(edu)?.base)?),
            Platform::Amd(p) => {
                p.device_id(edu)?;
                Unit::Amd(amdvi::Unit::open(p.unit.base)?)
            }
        })
    }

    /// The scenario whose steps [`Platform::recover`] runs.
    pub(super) fn recovery_name(&self) -> &'static str {
        match self {
            Platform::Vtd(_) => "ir-basic",
            Platform::Amd(_) => "amd-ir-basic",
        }
    }

    /// The recovery: the `ir-basic` or `amd-ir-basic` steps; returns (from, to, index).
    pub(super) fn recover(&self, ctx: &Context, smp: &Smp) -> Result<(u32, u32, u32), Text> {
        Ok(match self {
            Platform::Vtd(p) => {
                let m = ir_basic::exercise(ctx, smp, p)?;
                (m.from, m.to, m.index)
            }
            Platform::Amd(p) => {
                let m = amd_basic::exercise(ctx, smp, p)?;
                (m.from, m.to, m.index)
            }
        })
    }
}

/// The unit under garbage.
pub(super) enum Unit {
    /// VT-d's register page.
    Vtd(vtd::Unit),
    /// AMD-Vi's register window.
    Amd(amdvi::Unit),
}

impl Unit {
    /// Name for progress lines.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Unit::Vtd(_) => "VT-d",
            Unit::Amd(_) => "AMD-Vi",
        }
    }

    /// The register window (base, length).
    pub(super) fn window(&self) -> (u64, u64) {
        match self {
            Unit::Vtd(u) => (u.base(), crate::vtd::REGS_SIZE),
            Unit::Amd(u) => (u.base(), crate::amdvi::regs::WINDOW),
        }
    }

    /// `count` garbage accesses to the registers.
    pub(super) fn garbage(&self, g: &mut Garbage, count: u32) -> Result<(), Text> {
        match self {
            Unit::Vtd(u) => u.garbage(g, count),
            Unit::Amd(u) => u.garbage(g, count),
        }
    }

    /// Deliveries through the state the garbage left.
    pub(super) fn deliveries(&self, g: &mut Garbage, t: &Targets) -> Result<(), Text> {
        match self {
            Unit::Vtd(u) => u.deliveries(g, t),
            Unit::Amd(u) => u.deliveries(g, t),
        }
    }

    /// The reset a guest does to recover.
    pub(super) fn reset(&self, clock: &Clock) -> Result<(), Text> {
        match self {
            Unit::Vtd(u) => u.reset(clock),
            Unit::Amd(u) => u.reset(clock),
        }
    }
}
