//! Tier 2: VT-d DMA remapping driven by the probe guest: edu's DMA engine through a
//! 4-level table (both directions, pass-through contexts), every DMA fault reason with its
//! record and event and FPD, IOTLB caching until a page-selective invalidation, 2 MiB and
//! 1 GiB pages, the throughput scenario briefly, and the passed-through vfio-user test
//! device's DMA shadowed from the guest's mappings. The same edu scenarios run on QEMU 7.2's
//! intel-iommu (caching mode, 48-bit) when QEMU is installed, as a third-party check.

mod common;

use common::{
    assert_probe_pass, run_probe, run_probe_cmdline, run_qemu_probe, skip, TestDevice, QEMU_PASS,
};

const PLATFORM: [&str; 8] = [
    "--cpus", "2", "--memory", "128M", "--iommu", "intel", "--device", "edu",
];

fn dma(test: &str, scenario: &str, fields: &[&str]) {
    let run = match run_probe(scenario, &PLATFORM) {
        Ok(r) => r,
        Err(why) => return skip(test, &why),
    };
    assert_probe_pass(&run, scenario, fields);
}

#[test]
fn dma_basic_both_directions_through_a_4_level_table() {
    dma(
        "dma_basic",
        "dma-basic",
        &[
            "levels=4",
            "iova=0x123456789000",
            "to_device=ok",
            "to_memory=ok",
            "pass_through=ok",
        ],
    );
}

#[test]
fn dma_faults_record_every_reason_and_fpd_suppresses() {
    dma("dma_faults", "dma-faults", &["reasons=5,6,5,4,2", "fpd=ok"]);
}

#[test]
fn dma_inval_iotlb_keeps_the_old_page_until_invalidated() {
    // irvmm caches translations in its IOTLB: "old" is required there.
    dma(
        "dma_inval",
        "dma-inval",
        &["before_invalidation=old", "after=new"],
    );
}

#[test]
fn dma_superpage_2m_and_1g() {
    dma(
        "dma_superpage",
        "dma-superpage",
        &["two_mib=ok", "one_gib=ok"],
    );
}

#[test]
fn dma_bench_runs_every_mode() {
    let run = match run_probe_cmdline("probe=dma-bench probe.iters=50", &PLATFORM) {
        Ok(r) => r,
        Err(why) => return skip("dma_bench", &why),
    };
    assert_probe_pass(&run, "dma-bench", &["iters=50", "bytes=2048"]);
}

#[test]
fn dma_scenarios_fail_cleanly_without_an_iommu() {
    let run = match run_probe(
        "dma-basic",
        &["--cpus", "2", "--memory", "128M", "--device", "edu"],
    ) {
        Ok(r) => r,
        Err(why) => return skip("dma_without_iommu", &why),
    };
    assert!(run.saw("PROBE FAIL dma-basic"), "{}", run.dump());
    assert_eq!(run.code(), Some(1), "{}", run.dump());
}

/// The vfio-user test device under the guest's DMA remapping: only what the guest mapped
/// reaches memory, with its permissions; unmapped again it fails; translation off maps all
/// of RAM again.
#[test]
fn vfio_dma_remap_shadows_guest_mappings_into_the_device_server() {
    let test = "vfio_dma_remap";
    let device = match TestDevice::start(&[]) {
        Ok(d) => d,
        Err(why) => return skip(test, &why),
    };
    let arg = device.device_arg(None);
    let run = match run_probe(
        "vfio-dma-remap",
        &[
            "--cpus", "2", "--memory", "128M", "--iommu", "intel", "--device", &arg,
        ],
    ) {
        Ok(r) => r,
        Err(why) => return skip(test, &why),
    };
    assert_probe_pass(
        &run,
        "vfio-dma-remap",
        &[
            "unmapped=failed",
            "mapped=ok",
            "readonly=failed",
            "after_unmap=failed",
            "te_off=identity",
        ],
    );
}

// --- the same scenarios on QEMU 7.2's intel-iommu --------------------------------------

/// QEMU 7.2 with its intel-iommu (interrupt remapping, caching mode, 48-bit tables) and
/// edu with an unmasked DMA address (its default keeps 28 bits), running `scenario`; the
/// last `PROBE` line and QEMU's exit status, or why it cannot run here.
fn qemu(scenario: &str) -> Result<(Option<i32>, String, String), String> {
    run_qemu_probe(
        &format!("probe={scenario}"),
        &[
            "-device",
            "intel-iommu,intremap=on,eim=on,caching-mode=on,aw-bits=48",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-smp",
            "2",
        ],
    )
}

fn qemu_pass(test: &str, scenario: &str, fields: &[&str]) {
    let (code, out, err) = match qemu(scenario) {
        Ok(r) => r,
        Err(why) => return skip(test, &why),
    };
    let line = out
        .lines()
        .rfind(|l| l.starts_with("PROBE "))
        .unwrap_or_default();
    assert!(
        line.starts_with(&format!("PROBE PASS {scenario}")),
        "{test}: {out}\n{err}"
    );
    for f in fields {
        assert!(
            line.split_whitespace().any(|w| w == *f),
            "{test}: {f} missing from {line}"
        );
    }
    assert_eq!(code, QEMU_PASS, "{test}: {out}\n{err}");
}

#[test]
fn qemu_dma_basic() {
    qemu_pass(
        "qemu_dma_basic",
        "dma-basic",
        &[
            "levels=4",
            "to_device=ok",
            "to_memory=ok",
            "pass_through=ok",
        ],
    );
}

#[test]
fn qemu_dma_faults() {
    qemu_pass(
        "qemu_dma_faults",
        "dma-faults",
        &["reasons=5,6,5,4,2", "fpd=ok"],
    );
}

#[test]
fn qemu_dma_inval() {
    // QEMU caches too; either outcome before the invalidation is allowed.
    qemu_pass("qemu_dma_inval", "dma-inval", &["after=new"]);
}

#[test]
fn qemu_dma_superpage() {
    qemu_pass(
        "qemu_dma_superpage",
        "dma-superpage",
        &["two_mib=ok", "one_gib=ok"],
    );
}
