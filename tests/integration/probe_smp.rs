//! Tier 2: hundreds to a thousand x2APIC vCPUs, fixed IPIs across the 32-bit ID range, and
//! the extended destination ID as the IOMMU-less path to APIC IDs above 255.

mod common;

use common::{assert_probe_pass, run_probe, run_probe_cmdline, skip};

macro_rules! probe_or_skip {
    ($test:expr, $scenario:expr, $args:expr) => {
        match run_probe($scenario, $args) {
            Ok(r) => r,
            Err(why) => return skip($test, &why),
        }
    };
}

#[test]
fn smp_288_vcpus_with_apic_ids_above_255() {
    let run = probe_or_skip!("smp_288", "smp", &["--cpus", "288", "--memory", "128M"]);
    assert_probe_pass(&run, "smp", &["cpus=288", "max_apic_id=287"]);
}

#[test]
fn smp_1024_vcpus() {
    let run = probe_or_skip!("smp_1024", "smp", &["--cpus", "1024", "--memory", "128M"]);
    assert_probe_pass(&run, "smp", &["cpus=1024", "max_apic_id=1023"]);
}

/// APs start in wait-for-SIPI, as after power-on: SIPIs without an INIT start them (KVM's
/// own initial state would ignore such SIPIs, and a firmware's halted APs would too).
#[test]
fn smp_sipi_alone_starts_power_on_aps() {
    let run = match run_probe_cmdline(
        "probe=smp probe.init=0",
        &["--cpus", "288", "--memory", "128M"],
    ) {
        Ok(r) => r,
        Err(why) => return skip("smp_sipi_alone", &why),
    };
    assert_probe_pass(&run, "smp", &["cpus=288", "max_apic_id=287"]);
}

#[test]
fn smp_sparse_topology_ids() {
    // 2 sockets x 144 cores: core IDs take 8 bits, so socket 1 starts at APIC ID 256.
    let run = probe_or_skip!(
        "smp_sparse_topology_ids",
        "smp",
        &[
            "--cpus",
            "288,sockets=2,cores=144,threads=1",
            "--memory",
            "128M"
        ]
    );
    assert_probe_pass(&run, "smp", &["cpus=288", "max_apic_id=399"]);
}

#[test]
fn smp_one_vcpu() {
    let run = probe_or_skip!("smp_one_vcpu", "smp", &["--cpus", "1", "--memory", "64M"]);
    assert_probe_pass(&run, "smp", &["cpus=1", "max_apic_id=0"]);
}

#[test]
fn ipi_to_every_vcpu_of_288() {
    let run = probe_or_skip!("ipi_288", "ipi", &["--cpus", "288", "--memory", "128M"]);
    assert_probe_pass(&run, "ipi", &["cpus=288", "acked=288"]);
}

#[test]
fn ioapic_extdest_reaches_highest_apic_id() {
    let run = probe_or_skip!(
        "ioapic_extdest",
        "ioapic-extdest",
        &["--cpus", "288", "--memory", "128M"]
    );
    assert_probe_pass(&run, "ioapic-extdest", &["apic_id=287"]);
}

#[test]
fn ioapic_extdest_needs_the_feature() {
    // Negative control: without KVM_FEATURE_MSI_EXT_DEST_ID the guest must not pretend.
    // (Without an IOMMU irvmm refuses such a VM; with one the guest boots but has no
    // extended destination ID.)
    let run = probe_or_skip!(
        "ioapic_extdest_needs_the_feature",
        "ioapic-extdest",
        &[
            "--cpus",
            "288",
            "--memory",
            "128M",
            "--ext-dest-id",
            "off",
            "--iommu",
            "intel"
        ]
    );
    assert!(run.saw("PROBE FAIL ioapic-extdest"), "{}", run.dump());
    assert_eq!(run.code(), Some(1), "{}", run.dump());
}
