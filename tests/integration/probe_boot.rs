//! Tier 2: the probe guest boots under /dev/kvm and reports the platform it found.

mod common;

use common::{assert_probe_pass, run_probe, skip};

fn boot_probe(test: &str, cpus: &str) {
    let run = match run_probe("boot", &["--cpus", cpus, "--memory", "64M"]) {
        Ok(r) => r,
        Err(why) => return skip(test, &why),
    };
    assert_probe_pass(&run, "boot", &[&format!("cpus={cpus}")]);
    let last = run.lines.last().cloned().unwrap_or_default();
    for sig in ["FACP", "APIC", "DSDT"] {
        assert!(
            last.contains(sig),
            "table {sig} not reported\n{}",
            run.dump()
        );
    }
}

#[test]
fn probe_boot_one_vcpu() {
    boot_probe("probe_boot_one_vcpu", "1");
}

#[test]
fn probe_boot_four_vcpus() {
    boot_probe("probe_boot_four_vcpus", "4");
}

#[test]
fn probe_unknown_scenario_fails_with_status_one() {
    let run = match run_probe("no-such-scenario", &[]) {
        Ok(r) => r,
        Err(why) => return skip("probe_unknown_scenario_fails_with_status_one", &why),
    };
    assert!(run.saw("PROBE FAIL no-such-scenario"), "{}", run.dump());
    assert_eq!(run.code(), Some(1), "{}", run.dump());
}
