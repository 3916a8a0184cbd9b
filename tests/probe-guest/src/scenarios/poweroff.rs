//! `probe=poweroff`: ACPI S5 (soft off) the way an OS requests it.
//!
//! The sleep type comes from the DSDT's `Name(_S5_, Package(){SLP_TYPa, SLP_TYPb, ...})`.
//! On a hardware-reduced platform (FADT flag HW_REDUCED_ACPI) the probe writes
//! `SLP_TYPa << 2 | SLP_EN` to SLEEP_CONTROL_REG; otherwise it sets SLP_TYP (bits 12:10) and
//! SLP_EN (bit 13) in the PM1a control register (and PM1b's with SLP_TYPb, if the FADT has
//! one), keeping its other bits. Like an OS, it fails when the DSDT has no `_S5_`.
//! It does not switch the chipset to ACPI mode through SMI_CMD first (QEMU's PM1 control
//! register acts without it).
//!
//! Prints `PROBE PASS poweroff requesting S5` before the write, so that line is the last one
//! when the VMM powers off; `PROBE FAIL poweroff still running ...` if it does not within 2 s.

use super::{platform, Context};
use crate::acpi::fadt::{self, Fadt};
use crate::clock::Clock;
use crate::report::{self, Outcome};
use crate::{sprintln, text};

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let tables = platform::tables(ctx)?;
    let facp = tables.find(b"FACP").ok_or_else(|| text!("no FADT"))?;
    let dsdt = tables.find(b"DSDT").ok_or_else(|| text!("no DSDT"))?;
    let fadt = Fadt::new(facp)?;
    let s5 = fadt::s5_from_dsdt(dsdt)?;
    let clock = Clock::start()?;

    if fadt.hw_reduced() {
        let reg = fadt
            .sleep_control()?
            .ok_or_else(|| text!("hardware-reduced FADT without SLEEP_CONTROL_REG"))?;
        let value = fadt::sleep_control_value(s5.slp_typ_a);
        sprintln!(
            "poweroff: FADT hw_reduced=yes, _S5_ SLP_TYPa={}: writing 0x{:x} to SLEEP_CONTROL_REG at {}",
            s5.slp_typ_a,
            value,
            reg
        );
        report::announce_pass(&text!("requesting S5"));
        // SAFETY: the firmware's own power-off request; powering off is this scenario's aim.
        unsafe { reg.write(value) };
        return platform::still_running(
            &clock,
            &text!("writing 0x{:x} to SLEEP_CONTROL_REG at {}", value, reg),
        );
    }

    let (pm1a, pm1b) = fadt.pm1_control()?;
    let pm1a = pm1a.ok_or_else(|| text!("FADT has neither PM1a_CNT_BLK nor HW_REDUCED_ACPI"))?;
    let pm1b = match (pm1b, s5.slp_typ_b) {
        (Some(reg), Some(typ)) => Some((reg, typ)),
        (Some(_), None) => return Err(text!("FADT has PM1b_CNT_BLK but _S5_ no SLP_TYPb")),
        (None, _) => None,
    };
    // SAFETY: reading the PM1 control registers has no side effects.
    let a_value = fadt::pm1_sleep_value(unsafe { pm1a.read() }, s5.slp_typ_a);
    // SAFETY: as above.
    let b_value = pm1b.map(|(reg, typ)| (reg, fadt::pm1_sleep_value(unsafe { reg.read() }, typ)));
    sprintln!(
        "poweroff: FADT hw_reduced=no, _S5_ SLP_TYPa={}: writing 0x{:x} to PM1a_CNT at {}{}",
        s5.slp_typ_a,
        a_value,
        pm1a,
        if b_value.is_some() {
            " and PM1b_CNT"
        } else {
            ""
        }
    );
    report::announce_pass(&text!("requesting S5"));
    // SAFETY: the firmware's power-off sequence (PM1a, then PM1b, as ACPICA writes them);
    // powering off is this scenario's aim.
    unsafe {
        pm1a.write(a_value);
        if let Some((reg, value)) = b_value {
            reg.write(value);
        }
    }
    platform::still_running(
        &clock,
        &text!("writing 0x{:x} to PM1a_CNT at {}", a_value, pm1a),
    )
}
