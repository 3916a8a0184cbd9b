//! Tier 2: the probe guest boots under /dev/kvm and reports the platform it found.

mod common;

use std::time::Duration;

use common::{assert_probe_pass, asset, kvm_available, run_guest, run_probe, run_qemu_probe, skip};

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

/// The `key=value` fields of the last line starting with `prefix`.
fn fields(lines: &[String], prefix: &str) -> Vec<(String, String)> {
    lines
        .iter()
        .rfind(|l| l.starts_with(prefix))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Features the cpuid tests hide: two this KVM family shows the guest anyway (popcnt, SMAP:
/// README, "Known host quirks") and one every KVM hides when told (the TSC deadline timer).
const HIDDEN: &str = "-popcnt,-smap,-tsc_deadline_timer";

/// `probe=cpuid`: every vCPU sees the same leaves, and each feature `--cpu-features` hid is
/// either hidden from the guest or named in irvmm's warning that the host's KVM shows it
/// anyway (the build machines' emulating KVM ignores KVM_SET_CPUID2 for leaf 7 and for
/// popcnt in leaf 1, as it does for QEMU). A hidden SMAP must also be refused in CR4.
#[test]
fn probe_cpuid_shows_hidden_features_only_with_a_warning() {
    let test = "probe_cpuid_shows_hidden_features_only_with_a_warning";
    let run = match run_probe(
        "cpuid",
        &["--cpus", "4", "--memory", "64M", "--cpu-features", HIDDEN],
    ) {
        Ok(r) => r,
        Err(why) => return skip(test, &why),
    };
    assert_probe_pass(&run, "cpuid", &["cpus=4"]);
    let summary = fields(&run.lines, "cpuid: popcnt=");
    assert_eq!(
        field(&summary, "tsc_deadline"),
        Some("0"),
        "tsc_deadline_timer hidden\n{}",
        run.dump()
    );
    assert_eq!(field(&summary, "x2apic"), Some("1"), "{}", run.dump());
    let pass = fields(&run.lines, "PROBE PASS cpuid");
    for name in ["popcnt", "smap"] {
        let seen = field(&pass, name).unwrap_or_else(|| panic!("no {name}=\n{}", run.dump()));
        let warned = run.stderr.lines().any(|l| {
            l.contains("--cpu-features: this host's KVM shows the guest") && l.contains(name)
        });
        match seen {
            "0" => assert!(!warned, "{name} hidden, yet irvmm warned\n{}", run.dump()),
            _ => {
                assert!(
                    warned,
                    "{name} seen by the guest without irvmm's warning\n{}",
                    run.dump()
                );
                eprintln!(
                    "OBSERVED {test}: this host's KVM shows the guest {name} although irvmm hid it"
                );
            }
        }
    }
    if field(&pass, "smap") == Some("0") {
        assert_eq!(field(&pass, "cr4_smap"), Some("gp"), "{}", run.dump());
    }
}

/// QEMU 7.2 with `-cpu host,-popcnt,-smap`, running `probe=cpuid`: its PASS line's fields,
/// or why it cannot run here.
fn qemu_cpuid() -> Result<Vec<(String, String)>, String> {
    let (_, stdout, stderr) =
        run_qemu_probe("probe=cpuid", &["-cpu", "host,-popcnt,-smap", "-smp", "2"])?;
    let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("PROBE PASS cpuid")),
        "QEMU: {lines:?}\n{stderr}"
    );
    Ok(fields(&lines, "PROBE PASS cpuid"))
}

/// The same probe on QEMU 7.2 (`-cpu host,-popcnt,-smap`) and on irvmm
/// (`--cpu-features -popcnt,-smap`): the guest sees popcnt and SMAP on both or on neither,
/// so whatever it sees is the host's doing, not irvmm's.
#[test]
fn probe_cpuid_hidden_features_match_qemu() {
    let test = "probe_cpuid_hidden_features_match_qemu";
    let qemu = match qemu_cpuid() {
        Ok(f) => f,
        Err(why) => return skip(test, &why),
    };
    let run = match run_probe(
        "cpuid",
        &[
            "--cpus",
            "2",
            "--memory",
            "64M",
            "--cpu-features",
            "-popcnt,-smap",
        ],
    ) {
        Ok(r) => r,
        Err(why) => return skip(test, &why),
    };
    assert_probe_pass(&run, "cpuid", &["cpus=2"]);
    let irvmm = fields(&run.lines, "PROBE PASS cpuid");
    for key in ["popcnt", "smap", "cr4_smap", "vendor"] {
        assert_eq!(
            field(&irvmm, key),
            field(&qemu, key),
            "{key}: irvmm {irvmm:?} QEMU {qemu:?}"
        );
    }
}
