//! Tier 2: device passthrough over vfio-user. Each test starts the project's test device
//! (`vfio-user-testdev`) on a socket of its own, boots the probe guest with irvmm passing
//! it through (`--device vfio-user,socket=...`), and checks the probe's verdict and irvmm's
//! exit report (`RUST_LOG=info`): which BAR pages trapped, and how the MSI-X vectors were
//! delivered. Also the `--device` refusals a bad device or option must produce before
//! anything starts, and a server that dies while the guest runs.
//! Also one passed-through vector taken into AMD-Vi guest virtual APIC mode and back
//! (`vfio-amd-ga`, `--iommu amd`), with irvmm's irqfd binds and VMM deliveries checked.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{assert_probe_pass, asset, irvmm, run_probe_env, skip, GuestRun, TestDevice};

/// How long one passthrough run may take (they take about a second; a hang must fail).
const DEADLINE: Duration = Duration::from_secs(60);
/// irvmm's environment: its exit report is logged at info level.
const ENV: [(&str, &str); 1] = [("RUST_LOG", "info")];
/// How long a refused device's server may take to notice irvmm hung up.
const DEVICE_EXIT: Duration = Duration::from_secs(5);

/// Starts a test device with `device_args`, runs `scenario` with `irvmm_args` plus the
/// device (`msix=` when given); `None` (after printing why) when this host cannot run it.
fn passthrough(
    test: &str,
    device_args: &[&str],
    msix: Option<&str>,
    scenario: &str,
    irvmm_args: &[&str],
) -> Option<(GuestRun, TestDevice)> {
    let device = match TestDevice::start(device_args) {
        Ok(d) => d,
        Err(why) => {
            skip(test, &why);
            return None;
        }
    };
    let arg = device.device_arg(msix);
    let mut args = vec!["--memory", "128M"];
    args.extend_from_slice(irvmm_args);
    args.extend_from_slice(&["--device", &arg]);
    match run_probe_env(scenario, &args, &ENV, DEADLINE) {
        Ok(run) => Some((run, device)),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

/// The value of `key=` on the probe's last line.
fn field(run: &GuestRun, key: &str) -> String {
    let last = run.lines.last().cloned().unwrap_or_default();
    last.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
        .unwrap_or_else(|| panic!("no {key}= in '{last}'\n{}", run.dump()))
}

/// irvmm's `trapped BAR accesses:` report (what follows the colon).
fn trapped(run: &GuestRun) -> String {
    const MARK: &str = "trapped BAR accesses: ";
    run.stderr
        .lines()
        .find_map(|l| l.split_once(MARK).map(|(_, t)| t.trim().to_string()))
        .unwrap_or_else(|| panic!("no '{MARK}' line\n{}", run.dump()))
}

/// The count of trapped accesses to `BAR@page` (`BAR0@0x0`), 0 when not listed.
fn trapped_count(report: &str, page: &str) -> u64 {
    report
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{page}=")))
        .map_or(0, |n| n.parse().expect("count"))
}

/// From irvmm's `irqfd vectors ... MSI-X: V vectors, E enabled, K in KVM, P postable,
/// D delivered by the VMM, B blocked or dropped` line: (K, D).
fn msix_delivery(run: &GuestRun) -> (u64, u64) {
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("irqfd vectors") && l.contains("MSI-X:"))
        .unwrap_or_else(|| panic!("no irqfd vectors MSI-X line\n{}", run.dump()));
    let count = |what: &str| -> u64 {
        let (head, _) = line
            .split_once(what)
            .unwrap_or_else(|| panic!("'{what}' missing from '{line}'"));
        head.rsplit([' ', ',', ':'])
            .find(|w| !w.is_empty())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count before '{what}' in '{line}'"))
    };
    (count(" in KVM"), count(" delivered by the VMM"))
}

/// Asserts the run passed and neither irvmm nor the device complained.
fn assert_clean_pass(run: &GuestRun, scenario: &str, fields: &[&str]) {
    assert_probe_pass(run, scenario, fields);
    assert!(!run.stderr.contains("panicked"), "{}", run.dump());
    assert!(
        !run.stderr.lines().any(|l| l.contains(" ERROR ")),
        "irvmm logged errors\n{}",
        run.dump()
    );
}

// --- vfio-basic -----------------------------------------------------------------------

/// Runs vfio-basic; returns irvmm's trapped-access report and the probe's page-0
/// register access count.
fn basic(test: &str, msix: Option<&str>, fields: &[&str]) -> Option<(String, u64)> {
    let (run, _device) = passthrough(test, &[], msix, "vfio-basic", &["--cpus", "1"])?;
    assert_clean_pass(&run, "vfio-basic", fields);
    let accesses = field(&run, "accesses").parse().expect("accesses=N");
    Some((trapped(&run), accesses))
}

#[test]
fn vfio_basic_default_maps_bar0_page0() {
    let Some((report, _)) = basic(
        "vfio_basic_default",
        None,
        &["msix_bir=2", "table=0x0", "pba=0x1000", "rom=ok"],
    ) else {
        return;
    };
    assert!(
        !report.contains("BAR0@0x0="),
        "BAR0 page 0 must not trap with the table relocated: {report}"
    );
}

#[test]
fn vfio_basic_relocate_maps_bar0_page0() {
    let Some((report, _)) = basic(
        "vfio_basic_relocate",
        Some("relocate"),
        &["msix_bir=2", "table=0x0", "pba=0x1000", "rom=ok"],
    ) else {
        return;
    };
    assert!(
        !report.contains("BAR0@0x0="),
        "BAR0 page 0 must not trap with msix=relocate: {report}"
    );
}

#[test]
fn vfio_basic_trap_traps_bar0_page0() {
    let Some((report, accesses)) = basic(
        "vfio_basic_trap",
        Some("trap"),
        &["msix_bir=0", "table=0x800", "pba=0x9000", "rom=ok"],
    ) else {
        return;
    };
    let n = trapped_count(&report, "BAR0@0x0");
    assert!(
        n >= accesses,
        "with msix=trap every register access on the table's page ({accesses}) traps: {report}"
    );
}

// --- MSI-X across the APIC IDs ----------------------------------------------------------

#[test]
fn vfio_msix_ir_64_vectors_remapped_and_moved() {
    let Some((run, _device)) = passthrough(
        "vfio_msix_ir",
        &[],
        None,
        "vfio-msix-ir",
        &["--cpus", "288", "--iommu", "intel"],
    ) else {
        return;
    };
    assert_clean_pass(&run, "vfio-msix-ir", &["vectors=64", "cpus=288"]);
    let (in_kvm, by_vmm) = msix_delivery(&run);
    assert_eq!(
        by_vmm,
        0,
        "every vector must be delivered by KVM\n{}",
        run.dump()
    );
    assert!(in_kvm >= 64, "{in_kvm} vectors in KVM\n{}", run.dump());
}

#[test]
fn vfio_msix_direct_device_table_never_traps() {
    let Some((run, _device)) = passthrough(
        "vfio_msix_direct",
        &["--direct-msix"],
        Some("direct"),
        "vfio-msix-direct",
        &["--cpus", "288", "--iommu", "intel"],
    ) else {
        return;
    };
    assert_clean_pass(
        &run,
        "vfio-msix-direct",
        &["vectors=64", "cpus=288", "msix_bir=0", "table=0x800"],
    );
    let report = trapped(&run);
    for page in ["BAR0@0x0=", "BAR0@0x1000="] {
        assert!(
            !report.contains(page),
            "the device's table pages must not trap with msix=direct: {report}"
        );
    }
}

#[test]
fn vfio_msix_extdest_64_vectors_without_iommu() {
    let Some((run, _device)) = passthrough(
        "vfio_msix_extdest",
        &[],
        None,
        "vfio-msix-extdest",
        &["--cpus", "288"],
    ) else {
        return;
    };
    assert_clean_pass(
        &run,
        "vfio-msix-extdest",
        &["vectors=64", "cpus=288", "max_apic_id=287"],
    );
    let (in_kvm, by_vmm) = msix_delivery(&run);
    assert_eq!(
        by_vmm,
        0,
        "every vector must be delivered by KVM\n{}",
        run.dump()
    );
    assert!(in_kvm >= 64, "{in_kvm} vectors in KVM\n{}", run.dump());
}

// --- AMD-Vi guest virtual APIC mode ------------------------------------------------------

/// From irvmm's `interrupt router: ... irqfd_binds=N irqfd_unbinds=M` line: (N, M).
fn irqfd_bindings(run: &GuestRun) -> (u64, u64) {
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("interrupt router:"))
        .unwrap_or_else(|| panic!("no interrupt router line\n{}", run.dump()));
    let count = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key}N in '{line}'"))
    };
    (count("irqfd_binds="), count("irqfd_unbinds="))
}

#[test]
fn vfio_amd_ga_vector_leaves_kvm_in_guest_mode_and_comes_back() {
    let Some((run, _device)) = passthrough(
        "vfio_amd_ga",
        &[],
        None,
        "vfio-amd-ga",
        &["--cpus", "288", "--iommu", "amd"],
    ) else {
        return;
    };
    assert_clean_pass(
        &run,
        "vfio-amd-ga",
        &[
            "devid=0x0008",
            "vector=7",
            "irte=0x60",
            "tag=0x00000209",
            "guest_vector=0x41",
            "remapped_to=287",
            "posted=2",
            "ga_log=1",
            "back_to_remapped=ok",
        ],
    );
    // The test device is the only irqfd source, so the router's counters are its group's:
    // bound (remapped), unbound (guest mode: the VMM watches the eventfd), bound again.
    let (binds, unbinds) = irqfd_bindings(&run);
    assert!(
        binds >= 2 && unbinds >= 1,
        "expected at least 2 irqfd binds and 1 unbind, got {binds} and {unbinds}\n{}",
        run.dump()
    );
    let (in_kvm, by_vmm) = msix_delivery(&run);
    assert_eq!(
        by_vmm,
        2,
        "the two guest-mode interrupts are the VMM's, the remapped ones KVM's\n{}",
        run.dump()
    );
    assert!(
        in_kvm >= 1,
        "the vector must be back in KVM at exit ({in_kvm})\n{}",
        run.dump()
    );
}

// --- masking, DMA, INTx -----------------------------------------------------------------

/// Runs vfio-mask with the device started with `device_args`, `msix=` placement and extra
/// irvmm arguments; the PBA must be where `pba` (`pba_bir=B pba=0x..`) says.
fn mask(test: &str, device_args: &[&str], msix: Option<&str>, extra: &[&str], pba: [&str; 2]) {
    let mut args = vec!["--cpus", "1"];
    args.extend_from_slice(extra);
    let Some((run, _device)) = passthrough(test, device_args, msix, "vfio-mask", &args) else {
        return;
    };
    assert_clean_pass(
        &run,
        "vfio-mask",
        &[
            pba[0],
            pba[1],
            "entry_mask=ok",
            "function_mask=ok",
            "deliveries=3",
        ],
    );
}

/// Where the emulated PBA is with the table relocated (default).
const PBA_RELOCATED: [&str; 2] = ["pba_bir=2", "pba=0x1000"];
/// Where the PBA is when trapped or the device's own.
const PBA_DEVICE: [&str; 2] = ["pba_bir=0", "pba=0x9000"];

#[test]
fn vfio_mask_pending_bit_and_single_delivery() {
    mask("vfio_mask", &[], None, &[], PBA_RELOCATED);
}

#[test]
fn vfio_mask_with_an_iommu_present() {
    mask(
        "vfio_mask_iommu",
        &[],
        None,
        &["--iommu", "intel"],
        PBA_RELOCATED,
    );
}

#[test]
fn vfio_mask_trapped_table_and_pba() {
    mask("vfio_mask_trap", &[], Some("trap"), &[], PBA_DEVICE);
}

#[test]
fn vfio_mask_device_table_and_pba() {
    mask(
        "vfio_mask_direct",
        &["--direct-msix"],
        Some("direct"),
        &[],
        PBA_DEVICE,
    );
}

#[test]
fn vfio_dma_both_directions_and_unmapped_addresses() {
    let Some((run, _device)) = passthrough("vfio_dma", &[], None, "vfio-dma", &["--cpus", "1"])
    else {
        return;
    };
    assert_clean_pass(
        &run,
        "vfio-dma",
        &[
            "to_device=ok",
            "to_guest=ok",
            "unmapped=failed",
            "irqs=2",
            "dma_done=2",
        ],
    );
}

#[test]
fn vfio_intx_level_cycles() {
    let Some((run, _device)) = passthrough("vfio_intx", &[], None, "vfio-intx", &["--cpus", "1"])
    else {
        return;
    };
    assert_clean_pass(&run, "vfio-intx", &["line=16", "cycles=5"]);
    assert_eq!(
        field(&run, "interrupts"),
        field(&run, "intx_signals"),
        "every interrupt must be one the device signalled\n{}",
        run.dump()
    );
}

// --- a server that dies -------------------------------------------------------------------

/// Runs `vfio-die`: the guest kills the server, then reads BAR0 until it reads all ones.
/// Checks that irvmm neither hangs nor crashes and exits with the probe's status, and that
/// the device died as asked; returns irvmm's ERROR lines.
fn server_death(test: &str) -> Option<Vec<String>> {
    let (run, mut device) = passthrough(test, &[], None, "vfio-die", &["--cpus", "1"])?;
    assert!(!run.timed_out, "irvmm hung\n{}", run.dump());
    assert_probe_pass(&run, "vfio-die", &["id=0xffffffff"]);
    assert!(!run.stderr.contains("panicked"), "{}", run.dump());
    assert_eq!(
        device.wait_exit(DEVICE_EXIT).and_then(|s| s.code()),
        Some(3),
        "the device exits with 3 on CONTROL = 0xdead0001; stderr:\n{}",
        device.stderr()
    );
    let errors: Vec<String> = run
        .stderr
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .map(str::to_string)
        .collect();
    assert!(
        errors.iter().any(|l| l.contains("hung up")),
        "no error line about the server hanging up\n{}",
        run.dump()
    );
    Some(errors)
}

#[test]
fn vfio_server_death_mid_run() {
    server_death("vfio_die");
}

#[test]
fn vfio_server_death_logs_one_error_line() {
    let Some(errors) = server_death("vfio_die_one_line") else {
        return;
    };
    assert_eq!(
        errors.len(),
        1,
        "one error line expected for the dead server, got {errors:#?}"
    );
}

// --- refusals: exit status 2, one line naming --device, nothing started -----------------

/// Runs irvmm with `--device device_arg` (no `RUST_LOG`) and checks the usage-error
/// contract; returns the error line.
fn refused(device_arg: &str) -> Option<String> {
    let kernel = match asset("probe.elf") {
        Ok(k) => k,
        Err(why) => {
            skip("vfio refusal", &why);
            return None;
        }
    };
    let out = Command::new(irvmm())
        .args(["--kernel", kernel.to_str().expect("utf-8 path")])
        .args(["--cmdline", "probe=boot", "--device", device_arg])
        .env_remove("RUST_LOG")
        .output()
        .expect("run irvmm");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{device_arg}: stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{device_arg}: the guest must not have run"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{device_arg}: one line expected: {stderr}");
    assert!(
        lines[0].contains("--device"),
        "{device_arg}: '{}' does not name --device",
        lines[0]
    );
    Some(lines[0].to_string())
}

/// Starts a device with `device_args`, has irvmm refuse it, and checks that the device
/// then ends by itself (irvmm let go of it); returns the error line.
fn refused_device(test: &str, device_args: &[&str], msix: Option<&str>) -> Option<String> {
    let mut device = match TestDevice::start(device_args) {
        Ok(d) => d,
        Err(why) => {
            skip(test, &why);
            return None;
        }
    };
    let line = refused(&device.device_arg(msix))?;
    assert!(
        device.wait_exit(DEVICE_EXIT).is_some(),
        "{test}: the device server still runs after irvmm refused it"
    );
    Some(line)
}

#[test]
fn refuses_socket_without_server() {
    let dir = std::env::temp_dir().join(format!("irvmm-vfio-none-{}", std::process::id()));
    let socket = dir.join("absent.sock");
    let Some(line) = refused(&format!("vfio-user,socket={}", socket.display())) else {
        return;
    };
    assert!(line.contains("absent.sock"), "{line}");
}

#[test]
fn refuses_direct_msix_on_unmappable_bar() {
    let Some(line) = refused_device("direct_no_mmap", &["--no-mmap"], Some("direct")) else {
        return;
    };
    assert!(
        line.contains("msix=direct") && line.contains("mappable"),
        "{line}"
    );
}

#[test]
fn refuses_zero_msix_vectors() {
    let Some(line) = refused_device("vectors_0", &["--vectors", "0"], None) else {
        return;
    };
    assert!(line.contains("MSI-X"), "{line}");
}

#[test]
fn refuses_4096_msix_vectors() {
    let Some(line) = refused_device("vectors_4096", &["--vectors", "4096"], None) else {
        return;
    };
    assert!(line.contains("MSI-X"), "{line}");
}

#[test]
fn refuses_overlapping_table_and_pba() {
    let Some(line) = refused_device("layout_overlap", &["--layout", "overlap"], None) else {
        return;
    };
    assert!(line.contains("overlap"), "{line}");
}

#[test]
fn refuses_table_beyond_bar() {
    let Some(line) = refused_device("layout_beyond", &["--layout", "beyond"], None) else {
        return;
    };
    assert!(line.contains("exceeds"), "{line}");
}

#[test]
fn refuses_kernel_vfio_path_that_does_not_exist() {
    let Some(line) = refused("vfio,path=/nonexistent") else {
        return;
    };
    assert!(line.contains("/nonexistent"), "{line}");
}

#[test]
fn refuses_unknown_msix_placement() {
    let Some(line) = refused("vfio-user,socket=/tmp/irvmm-unused.sock,msix=sometimes") else {
        return;
    };
    assert!(line.contains("msix=sometimes"), "{line}");
}
