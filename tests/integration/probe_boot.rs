//! Tier 2: the probe guest boots under /dev/kvm and reports the platform it found.

mod common;

use std::time::Duration;

use common::{assert_probe_pass, asset, kvm_available, run_guest, run_probe, skip};

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

#[test]
fn probe_bzimage_boots_through_the_64_bit_entry() {
    let test = "probe_bzimage_boots_through_the_64_bit_entry";
    if let Err(why) = kvm_available() {
        return skip(test, &why);
    }
    let bz = match asset("probe.bzImage") {
        Ok(p) => p,
        Err(why) => return skip(test, &why),
    };
    let initrd = std::env::temp_dir().join(format!("irvmm-probe-initrd-{}", std::process::id()));
    std::fs::write(&initrd, vec![0x5a; 1 << 20]).expect("initrd");
    let run = run_guest(
        &[
            "--kernel",
            bz.to_str().expect("utf-8 path"),
            "--initramfs",
            initrd.to_str().expect("utf-8 path"),
            "--cmdline",
            "probe=boot",
            "--cpus",
            "4",
            "--memory",
            "64M",
        ],
        Duration::from_secs(120),
        None,
    );
    let _ = std::fs::remove_file(&initrd);
    assert!(
        run.saw("entry=linux64"),
        "the bzImage must enter at startup_64\n{}",
        run.dump()
    );
    assert_probe_pass(&run, "boot", &["cpus=4"]);
}

#[test]
fn acpi_poweroff_exits_zero() {
    let run = match run_probe("poweroff", &[]) {
        Ok(r) => r,
        Err(why) => return skip("acpi_poweroff_exits_zero", &why),
    };
    assert_probe_pass(&run, "poweroff", &[]);
}

/// A guest reset is not a clean power-off: irvmm exits 122 (`--on-reset exit`, the default).
#[test]
fn reset_exits_122() {
    let run = match run_probe("reset", &[]) {
        Ok(r) => r,
        Err(why) => return skip("reset_exits_122", &why),
    };
    let last = run.lines.last().cloned().unwrap_or_default();
    assert_eq!(last, "PROBE PASS reset requesting reset", "{}", run.dump());
    assert_eq!(run.code(), Some(122), "exit status\n{}", run.dump());
}

#[test]
fn triple_fault_is_reported_with_rip() {
    let run = match run_probe("triple-fault", &[]) {
        Ok(r) => r,
        Err(why) => return skip("triple_fault_is_reported_with_rip", &why),
    };
    assert!(run.saw("PROBE PASS triple-fault"), "{}", run.dump());
    assert_eq!(run.code(), Some(120), "{}", run.dump());
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line expected: {}", run.stderr);
    assert!(
        lines[0].contains("triple fault") && lines[0].contains("RIP 0x"),
        "{}",
        run.stderr
    );
    assert!(
        lines[0].contains("instruction bytes: 0f 0b"),
        "the faulting ud2: {}",
        run.stderr
    );
}
