//! Tier 2: the virtual AMD-Vi unit driven by the probe guest at 288 vCPUs the way Linux
//! drives it: remapped MSIs moved by INVALIDATE_INTERRUPT_TABLE, a remapped IOAPIC pin
//! through the IVRS special entry's device ID, every fault with its event and event
//! interrupt, an illegal command stopping the command buffer, 64 MSI-X vectors across the
//! APIC IDs, guest virtual APIC mode (posting, GA log tags, never-cached fields), the
//! benchmark scenario, and register garbage (`hostile`) followed by the remapping steps.

mod common;

use common::{assert_probe_pass, run_probe, run_probe_cmdline, skip, GuestRun};

const PLATFORM: [&str; 10] = [
    "--cpus", "288", "--memory", "128M", "--iommu", "amd", "--device", "edu", "--device",
    "edu-msix",
];

fn amd(test: &str, scenario: &str, fields: &[&str]) -> Option<GuestRun> {
    let run = match run_probe(scenario, &PLATFORM) {
        Ok(r) => r,
        Err(why) => {
            skip(test, &why);
            return None;
        }
    };
    assert_probe_pass(&run, scenario, fields);
    Some(run)
}

#[test]
fn amd_ir_basic_moves_delivery_on_interrupt_table_invalidation() {
    let Some(run) = amd(
        "amd_ir_basic",
        "amd-ir-basic",
        &["from=287", "to=1", "index=291", "devid=0x0008"],
    ) else {
        return;
    };
    // irvmm's routes are the interrupt remapping cache: the unannounced rewrite must not
    // have moved the interrupt.
    assert!(
        run.saw("before invalidation the interrupt went to APIC ID 287 (the cached entry"),
        "{}",
        run.dump()
    );
}

#[test]
fn amd_ir_ioapic_pin_remapped_through_the_special_entry_device_id() {
    amd(
        "amd_ir_ioapic",
        "amd-ir-ioapic",
        &["apic_id=287", "index=4", "devid=0x00a0"],
    );
}

#[test]
fn amd_ir_faults_log_events_and_stop_on_an_illegal_command() {
    amd(
        "amd_ir_faults",
        "amd-ir-faults",
        &[
            "events=not-valid,beyond,reserved,intctl-abort,bad-dte",
            "suppressed=ok",
            "illegal_command=ok",
            "interrupts=msi,xt",
        ],
    );
}

#[test]
fn amd_ir_many_64_msix_vectors_across_apic_ids() {
    amd(
        "amd_ir_many",
        "amd-ir-many",
        &["vectors=64", "cpus=288", "devid=0x0010"],
    );
}

#[test]
fn amd_ga_posts_logs_exact_tags_and_never_caches_guest_mode_fields() {
    amd(
        "amd_ga",
        "amd-ga",
        &[
            "targets=4",
            "bucket=0x61",
            "vms=1,234,611",
            "posted=11",
            "ga_log=5",
            "lookups=exact",
            "wide_vcpu=600",
            "uncached=isrun,tag",
            "left_guest_mode=ok",
        ],
    );
}

#[test]
fn amd_bench_scenario_runs_short() {
    // The benchmark's scenario with a few iterations, so it keeps working between
    // benchmark runs: 256 live vectors on one edu-msix, every delivery mode.
    let run = match run_probe_cmdline(
        "probe=amd-bench probe.vectors=256 probe.iters=50 probe.deliveries=50",
        &PLATFORM,
    ) {
        Ok(r) => r,
        Err(why) => return skip("amd_bench", &why),
    };
    assert_probe_pass(
        &run,
        "amd-bench",
        &["vectors=256", "iters=50", "kind=msix", "deliveries=50"],
    );
    let last = run.lines.last().cloned().unwrap_or_default();
    for rate in ["remapped_per_s=", "posted_per_s=", "galog_per_s="] {
        let value = last
            .split_whitespace()
            .find_map(|w| w.strip_prefix(rate))
            .unwrap_or("");
        assert!(
            value.parse::<u64>().is_ok_and(|v| v > 0),
            "{rate} must be a positive rate on irvmm: '{last}'"
        );
    }
}

#[test]
fn hostile_amd_vi_garbage_then_remapping_still_works() {
    for seed in ["1", "7"] {
        let run = match run_probe_cmdline(&format!("probe=hostile probe.seed={seed}"), &PLATFORM) {
            Ok(r) => r,
            Err(why) => return skip("hostile_amd", &why),
        };
        assert_probe_pass(&run, "hostile", &[&format!("seed={seed}")]);
        assert!(
            run.saw("hostile: round 1 AMD-Vi: 1000 accesses"),
            "{}",
            run.dump()
        );
        assert!(
            run.saw("table beyond RAM blocked with PAGE_TAB_HARDWARE_ERROR"),
            "{}",
            run.dump()
        );
        assert!(
            run.saw("recovering with the amd-ir-basic steps"),
            "{}",
            run.dump()
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        let warnings = run
            .stderr
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count();
        assert!(
            warnings <= 2,
            "guest garbage must not flood the host log:\n{}",
            run.stderr
        );
    }
}

#[test]
fn amd_scenarios_fail_without_an_amd_vi_unit() {
    // Negative control: without an IVRS every AMD-Vi scenario must report failure, never
    // pass; with a VT-d unit instead (a DMAR, no IVRS) too.
    let none = [
        "--cpus", "288", "--memory", "128M", "--device", "edu", "--device", "edu-msix",
    ];
    for scenario in [
        "amd-ir-basic",
        "amd-ir-ioapic",
        "amd-ir-faults",
        "amd-ir-many",
        "amd-ga",
        "amd-bench",
        "vfio-amd-ga",
    ] {
        let run = match run_probe(scenario, &none) {
            Ok(r) => r,
            Err(why) => return skip("amd_scenarios_fail_without_an_amd_vi_unit", &why),
        };
        assert!(
            run.saw(&format!("PROBE FAIL {scenario} no IVRS table")),
            "{}",
            run.dump()
        );
        assert_eq!(run.code(), Some(1), "{}", run.dump());
    }
    let mut intel = none.to_vec();
    intel.extend(["--iommu", "intel"]);
    let run = match run_probe("amd-ir-basic", &intel) {
        Ok(r) => r,
        Err(why) => return skip("amd_scenarios_fail_without_an_amd_vi_unit", &why),
    };
    assert!(
        run.saw("PROBE FAIL amd-ir-basic no IVRS table"),
        "{}",
        run.dump()
    );
    assert_eq!(run.code(), Some(1), "{}", run.dump());
}
