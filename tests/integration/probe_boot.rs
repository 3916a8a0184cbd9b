//! Tier 2: the probe guest boots under /dev/kvm and reports the platform it found.

mod common;

use std::time::Duration;

use common::{asset, kvm_available, run_guest, skip};

fn boot_probe(test: &str, cpus: u32) {
    if let Err(why) = kvm_available() {
        return skip(test, &why);
    }
    let probe = match asset("probe.elf") {
        Ok(p) => p,
        Err(why) => return skip(test, &why),
    };
    let cpus_arg = cpus.to_string();
    let run = run_guest(
        &[
            "--kernel",
            probe.to_str().expect("utf-8 path"),
            "--cmdline",
            "probe=boot",
            "--cpus",
            &cpus_arg,
            "--memory",
            "64M",
        ],
        Duration::from_secs(120),
        None,
    );
    let last = run.lines.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("PROBE PASS boot"),
        "last line must be PROBE PASS boot\n{}",
        run.dump()
    );
    assert!(
        last.contains(&format!("cpus={cpus}")),
        "MADT CPU count\n{}",
        run.dump()
    );
    for sig in ["FACP", "APIC", "DSDT"] {
        assert!(
            last.contains(sig),
            "table {sig} not reported\n{}",
            run.dump()
        );
    }
    assert_eq!(run.code(), Some(0), "exit status\n{}", run.dump());
}

#[test]
fn probe_boot_one_vcpu() {
    boot_probe("probe_boot_one_vcpu", 1);
}

#[test]
fn probe_boot_four_vcpus() {
    boot_probe("probe_boot_four_vcpus", 4);
}

#[test]
fn probe_unknown_scenario_fails_with_status_one() {
    let test = "probe_unknown_scenario_fails_with_status_one";
    if let Err(why) = kvm_available() {
        return skip(test, &why);
    }
    let probe = match asset("probe.elf") {
        Ok(p) => p,
        Err(why) => return skip(test, &why),
    };
    let run = run_guest(
        &[
            "--kernel",
            probe.to_str().expect("utf-8 path"),
            "--cmdline",
            "probe=no-such-scenario",
        ],
        Duration::from_secs(120),
        None,
    );
    assert!(run.saw("PROBE FAIL no-such-scenario"), "{}", run.dump());
    assert_eq!(run.code(), Some(1), "{}", run.dump());
}
