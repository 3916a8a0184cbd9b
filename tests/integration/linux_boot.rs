//! Tier 3: Debian's kernel booted by irvmm.
//!
//! On the build machines (an emulating KVM without VT-x/AMD-V) Linux cannot reach user
//! space, so these tests check what it prints first: its banner and its reading of our
//! ACPI tables. On a host with hardware virtualization the initramfs test boots to
//! user space; elsewhere it says why it skips.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    asset, hardware_virtualization, kvm_available, run_guest, run_guest_env, skip, GuestRun,
    StopWhen,
};

/// Linux's console lines that show it found and parsed our ACPI tables.
const ACPI_LINES: [&str; 3] = [
    "ACPI: DSDT",
    "ACPI: APIC",
    "Using ACPI (MADT) for SMP configuration",
];
/// The features this KVM cannot emulate (see the build-machine notes).
const CPU_FEATURES: &str = "-cx16,-xsave";
/// `earlyprintk` makes Linux print from its first instructions instead of buffering until
/// its console driver registers, which on this KVM comes minutes later with many vCPUs.
const CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0 noxsave";

/// The guest asset `name` when /dev/kvm and the asset are there; else prints why `test`
/// skips and returns `None`.
/// The hardware-virtualization tests are `#[ignore]`d (reported as ignored, never as
/// passed, on hosts without VT-x/AMD-V); run explicitly on a host without it, they fail
/// and say why.
fn require_hardware_virtualization() {
    if let Err(why) = hardware_virtualization() {
        panic!("{why}; this test needs a host with VT-x/AMD-V");
    }
}

fn kernel_or_skip(test: &str, name: &str) -> Option<PathBuf> {
    if let Err(why) = kvm_available() {
        skip(test, &why);
        return None;
    }
    asset(name).map_err(|why| skip(test, &why)).ok()
}

/// Boots `kernel` with the features and command line this KVM needs (plus `extra`
/// arguments), until `done`.
fn early_boot(
    kernel: &Path,
    cpus: &str,
    extra: &[&str],
    deadline: Duration,
    done: StopWhen,
) -> GuestRun {
    let mut args = vec![
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
        "--cpu-features",
        CPU_FEATURES,
        "--cmdline",
        CMDLINE,
        "--cpus",
        cpus,
        "--memory",
        "256M",
    ];
    args.extend_from_slice(extra);
    run_guest(&args, deadline, Some(done))
}

fn banner_and_acpi(test: &str, image: &str) {
    let Some(kernel) = kernel_or_skip(test, image) else {
        return;
    };
    let done = |lines: &[String]| lines.iter().any(|l| l.contains("smpboot: Allowing"));
    let run = early_boot(&kernel, "2", &[], Duration::from_secs(600), &done);
    assert!(run.saw("Linux version"), "no banner\n{}", run.dump());
    for l in ACPI_LINES {
        assert!(run.saw(l), "missing '{l}'\n{}", run.dump());
    }
    assert!(run.saw("smpboot: Allowing 2 CPUs"), "{}", run.dump());
    assert!(!run.timed_out, "{}", run.dump());
}

#[test]
fn linux_pvh_vmlinux_prints_banner_and_acpi() {
    banner_and_acpi("linux_pvh_vmlinux_prints_banner_and_acpi", "vmlinux");
}

/// Debian's bzImage decompresses itself (xz, 65 MB) before printing anything; on an
/// emulating KVM that takes longer than a CI run can afford (measured: no output after six
/// minutes), so it runs where the host has hardware virtualization. The bzImage entry path
/// itself is covered on every host by the probe guest's bzImage flavour.
#[test]
#[ignore = "needs hardware virtualization (VT-x/AMD-V): run on such a host with `IRVMM_REQUIRE_ASSETS=1 cargo nextest run -p cli --run-ignored only -E 'binary(linux_boot)'`"]
fn linux_bzimage_prints_banner_and_acpi() {
    let test = "linux_bzimage_prints_banner_and_acpi";
    require_hardware_virtualization();
    banner_and_acpi(test, "bzImage");
}

#[test]
#[ignore = "needs hardware virtualization (VT-x/AMD-V): run on such a host with `IRVMM_REQUIRE_ASSETS=1 cargo nextest run -p cli --run-ignored only -E 'binary(linux_boot)'`"]
fn linux_initramfs_reaches_user_space() {
    let test = "linux_initramfs_reaches_user_space";
    require_hardware_virtualization();
    if let Err(why) = kvm_available() {
        return skip(test, &why);
    }
    let (kernel, initramfs) = match (asset("bzImage"), asset("initramfs.cpio.gz")) {
        (Ok(k), Ok(i)) => (k, i),
        (Err(why), _) | (_, Err(why)) => return skip(test, &why),
    };
    let run = run_guest(
        &[
            "--kernel",
            kernel.to_str().expect("utf-8 path"),
            "--initramfs",
            initramfs.to_str().expect("utf-8 path"),
            "--cmdline",
            "console=ttyS0 panic=-1",
            "--cpus",
            "4",
            "--memory",
            "512M",
        ],
        Duration::from_secs(300),
        None,
    );
    assert!(run.saw("IRVMM-INIT-OK cpus=4"), "{}", run.dump());
    assert_eq!(run.code(), Some(0), "power-off must exit 0\n{}", run.dump());
}

#[test]
fn linux_288_vcpus_come_up_in_x2apic_mode() {
    let Some(kernel) = kernel_or_skip("linux_288_vcpus_come_up_in_x2apic_mode", "vmlinux") else {
        return;
    };
    let x2apic = |l: &str| l.contains("x2apic enabled") || l.contains("x2apic: enabled by BIOS");
    let done = |lines: &[String]| {
        lines.iter().any(|l| x2apic(l)) && lines.iter().any(|l| l.contains("smpboot: Allowing"))
    };
    let run = early_boot(&kernel, "288", &[], Duration::from_secs(900), &done);
    assert!(run.saw("smpboot: Allowing 288 CPUs"), "{}", run.dump());
    assert!(
        run.lines.iter().any(|l| x2apic(l)),
        "x2APIC mode not reached\n{}",
        run.dump()
    );
}

#[test]
fn linux_288_vcpus_enable_interrupt_remapping_in_x2apic_mode() {
    let Some(kernel) = kernel_or_skip(
        "linux_288_vcpus_enable_interrupt_remapping_in_x2apic_mode",
        "vmlinux",
    ) else {
        return;
    };
    const ENABLED: &str = "DMAR-IR: Enabled IRQ remapping in x2apic mode";
    let done = |lines: &[String]| lines.iter().any(|l| l.contains(ENABLED));
    let run = early_boot(
        &kernel,
        "288",
        &["--iommu", "intel"],
        Duration::from_secs(1200),
        &done,
    );
    assert!(run.saw("ACPI: DMAR"), "{}", run.dump());
    assert!(
        run.saw("DMAR-IR: IOAPIC id 0 under DRHD base"),
        "{}",
        run.dump()
    );
    assert!(run.saw(ENABLED), "{}", run.dump());
    let faults: Vec<&String> = run
        .lines
        .iter()
        .filter(|l| l.contains("DMAR") && l.to_ascii_lowercase().contains("fault"))
        .collect();
    assert!(
        faults.is_empty(),
        "DMAR fault lines: {faults:?}\n{}",
        run.dump()
    );
    // DMA translation is attempted: the unit reports second-level address widths, so
    // alloc_iommu does not print "No supported address widths. Not attempting DMA
    // translation." (what it printed while CAP.SAGAW was 0). Linux enables translation
    // itself only in intel_iommu_init, after this KVM's int3 stop ("DMAR: Intel(R)
    // Virtualization Technology for Directed I/O": the user-space test checks it).
    assert!(!run.saw("Not attempting DMA translation"), "{}", run.dump());
    let cap = dmar0_cap(&run).unwrap_or_else(|| panic!("no dmar0 line\n{}", run.dump()));
    assert_ne!((cap >> 8) & 0x1f, 0, "CAP {cap:#x}: SAGAW 0");
    assert_ne!(cap & (1 << 7), 0, "CAP {cap:#x}: caching mode off");
}

/// The CAP value Linux printed in `DMAR: dmar0: reg_base_addr ... cap <hex> ecap <hex>`.
fn dmar0_cap(run: &GuestRun) -> Option<u64> {
    let line = run
        .lines
        .iter()
        .find(|l| l.contains("DMAR: dmar0: reg_base_addr"))?;
    let hex = line.split(" cap ").nth(1)?.split_whitespace().next()?;
    u64::from_str_radix(hex, 16).ok()
}

/// User space with DMA translation on in strict mode (every unmap invalidated at once, as
/// Linux does under caching mode anyway) and interrupt remapping: Linux enables the unit's
/// DMA translation ("DMAR: Intel(R) Virtualization Technology for Directed I/O"), takes
/// the strict policy CAP.CM asks for, records no DMAR fault, and reaches user space.
/// (Virtio devices without VIRTIO_F_ACCESS_PLATFORM bypass the IOMMU, as in Linux's virtio
/// core; none is attached here.)
#[test]
#[ignore = "needs hardware virtualization (VT-x/AMD-V): run on such a host with `IRVMM_REQUIRE_ASSETS=1 cargo nextest run -p cli --run-ignored only -E 'binary(linux_boot)'`"]
fn linux_initramfs_with_strict_dma_translation() {
    let test = "linux_initramfs_with_strict_dma_translation";
    require_hardware_virtualization();
    let Some(kernel) = kernel_or_skip(test, "bzImage") else {
        return;
    };
    let initramfs = match asset("initramfs.cpio.gz") {
        Ok(p) => p,
        Err(why) => return skip(test, &why),
    };
    let run = run_guest(
        &[
            "--kernel",
            kernel.to_str().expect("utf-8 path"),
            "--initramfs",
            initramfs.to_str().expect("utf-8 path"),
            "--cmdline",
            "console=ttyS0 panic=-1 iommu=strict",
            "--cpus",
            "4",
            "--memory",
            "1G",
            "--iommu",
            "intel",
            "--device",
            "edu",
        ],
        Duration::from_secs(300),
        None,
    );
    assert!(
        run.saw("DMAR: Intel(R) Virtualization Technology for Directed I/O"),
        "DMA translation not enabled\n{}",
        run.dump()
    );
    assert!(!run.saw("Not attempting DMA translation"), "{}", run.dump());
    assert!(
        run.saw("DMAR-IR: Enabled IRQ remapping in x2apic mode"),
        "{}",
        run.dump()
    );
    let faults: Vec<&String> = run
        .lines
        .iter()
        .filter(|l| l.contains("DMAR") && l.to_ascii_lowercase().contains("fault"))
        .collect();
    assert!(faults.is_empty(), "DMAR faults: {faults:?}\n{}", run.dump());
    assert!(run.saw("IRVMM-INIT-OK cpus=4"), "{}", run.dump());
    assert_eq!(run.code(), Some(0), "power-off must exit 0\n{}", run.dump());
}

/// Linux 6.1's AMD IOMMU driver uses 128-bit IRTEs (GA) and x2APIC mode (XT) only when the
/// CPU has CX16 (`init_iommu_one`: `!boot_cpu_has(X86_FEATURE_CX16)` forces legacy 32-bit
/// IRTEs, ignores XTSup and the EFR image), because it updates 128-bit IRTEs with
/// `cmpxchg_double`. This KVM cannot emulate the `lock cmpxchg16b` SLUB issues as soon as
/// CX16 is there (measured: the guest stops right after "Memory:"), so the AMD-Vi tests keep
/// CX16 and turn SLUB's double-word cmpxchg off with `slub_debug=F` (consistency checks
/// imply `SLAB_NO_CMPXCHG`). `amd_iommu_dump` makes the driver print the IVHD it parsed.
const AMD_CPU_FEATURES: &str = "-xsave";
/// The command line of the AMD-Vi tests here (see [`AMD_CPU_FEATURES`]).
const AMD_CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0 noxsave slub_debug=F amd_iommu_dump";
/// What Linux prints when AMD-Vi remapping or the IOMMU itself went wrong.
const AMD_VI_TROUBLE: [&str; 10] = [
    "AMD-Vi: Event logged",
    "IO_PAGE_FAULT",
    "Completion-Wait loop timed out",
    "Command buffer timeout",
    "No southbridge IOAPIC found",
    "not in IVRS table",
    "Disabling interrupt remapping",
    "IVRS table error",
    "Failed to initialize IOMMU",
    "AMD-Vi: Failed",
];

/// Debian's kernel with `--iommu amd` at 288 vCPUs, up to where this KVM stops it (the
/// `int3` of its self-test, right after interrupt remapping is switched on).
///
/// Linux 6.1 prints "AMD-Vi: Interrupt remapping enabled" / "AMD-Vi: X2APIC enabled" /
/// "AMD-Vi: Virtual APIC enabled" only in `amd_iommu_init_pci` (a `rootfs_initcall`, long
/// after the self-test), so here the test checks what happens before it: the IVRS parsed
/// (the IVHD, the IOAPIC's special entry with device ID 00:14.0, the EFR image with XTSup
/// and GASup), the APIC driver staying in cluster x2APIC mode (Linux switches to physical
/// x2APIC when remapping is not in x2APIC mode), the unit switched on by the guest in x2APIC
/// mode with 128-bit IRTEs (irvmm's log), and no AMD-Vi error. On a host with hardware
/// virtualization the kernel gets further and the enablement lines are required too.
#[test]
fn linux_288_vcpus_enable_amd_vi_interrupt_remapping_in_x2apic_mode() {
    let test = "linux_288_vcpus_enable_amd_vi_interrupt_remapping_in_x2apic_mode";
    let Some(kernel) = kernel_or_skip(test, "vmlinux") else {
        return;
    };
    const ENABLED: &str = "AMD-Vi: Interrupt remapping enabled";
    const X2APIC: &str = "AMD-Vi: X2APIC enabled";
    const VMM_MODE: &str =
        "AMD-Vi: guest set interrupt remapping on, 128-bit IRTEs, x2APIC destinations";
    let done = |lines: &[String]| lines.iter().any(|l| l.contains(X2APIC));
    let run = run_guest_env(
        &[
            "--kernel",
            kernel.to_str().expect("utf-8 path"),
            "--cpu-features",
            AMD_CPU_FEATURES,
            "--cmdline",
            AMD_CMDLINE,
            "--cpus",
            "288",
            "--memory",
            "256M",
            "--iommu",
            "amd",
        ],
        &[("RUST_LOG", "info")],
        Duration::from_secs(1200),
        Some(&done),
    );
    for line in [
        "ACPI: IVRS",
        "AMD-Vi: Using IVHD type 0x11",
        "device: 0000:00:1e.0 cap: 0040",
        "mmio-addr: 00000000fed80000",
        "AMD-Vi: Using global IVHD EFR:0x2000c4",
        "smpboot: Allowing 288 CPUs",
        "Setting APIC routing to cluster x2apic",
    ] {
        assert!(run.saw(line), "missing {line:?}\n{}", run.dump());
    }
    assert!(
        run.lines
            .iter()
            .any(|l| l.contains("DEV_SPECIAL(IOAPIC[0])") && l.contains("devid: 0000:00:14.0")),
        "the IOAPIC's special entry (device ID 00:14.0) was not parsed\n{}",
        run.dump()
    );
    assert!(
        !run.saw("Switched APIC routing to physical x2apic"),
        "remapping is not in x2APIC mode\n{}",
        run.dump()
    );
    let trouble: Vec<&String> = run
        .lines
        .iter()
        .filter(|l| AMD_VI_TROUBLE.iter().any(|t| l.contains(t)))
        .collect();
    assert!(trouble.is_empty(), "{trouble:?}\n{}", run.dump());
    assert!(
        run.stderr.contains(VMM_MODE),
        "the guest did not switch remapping on in x2APIC mode\n{}",
        run.dump()
    );
    if run.saw(ENABLED) || hardware_virtualization().is_ok() {
        assert!(run.saw(ENABLED), "{}", run.dump());
        assert!(run.saw(X2APIC), "{}", run.dump());
    } else {
        // This KVM stops the kernel at its int3 self-test, after the lines above.
        assert_eq!(run.code(), Some(120), "{}", run.dump());
        assert!(run.stderr.contains("KVM internal error"), "{}", run.dump());
    }
}

/// User space with 288 vCPUs and interrupt remapping on: the initramfs prints
/// /proc/interrupts, where COM1's interrupt must sit on the remapped IOAPIC chip.
/// (`IR-PCI-MSI` needs a PCI device whose built-in Linux driver uses MSI; the platform's
/// test devices have no Linux driver, so that chip name is not asserted.)
#[test]
#[ignore = "needs hardware virtualization (VT-x/AMD-V): run on such a host with `IRVMM_REQUIRE_ASSETS=1 cargo nextest run -p cli --run-ignored only -E 'binary(linux_boot)'`"]
fn linux_initramfs_288_vcpus_with_interrupt_remapping() {
    let test = "linux_initramfs_288_vcpus_with_interrupt_remapping";
    require_hardware_virtualization();
    let Some(kernel) = kernel_or_skip(test, "bzImage") else {
        return;
    };
    let initramfs = match asset("initramfs.cpio.gz") {
        Ok(p) => p,
        Err(why) => return skip(test, &why),
    };
    let run = run_guest(
        &[
            "--kernel",
            kernel.to_str().expect("utf-8 path"),
            "--initramfs",
            initramfs.to_str().expect("utf-8 path"),
            "--cmdline",
            "console=ttyS0 panic=-1",
            "--cpus",
            "288",
            "--memory",
            "2G",
            "--iommu",
            "intel",
        ],
        Duration::from_secs(600),
        None,
    );
    assert!(
        run.saw("DMAR-IR: Enabled IRQ remapping in x2apic mode"),
        "{}",
        run.dump()
    );
    assert!(
        run.saw("IR-IO-APIC"),
        "/proc/interrupts must show remapped IOAPIC pins\n{}",
        run.dump()
    );
    assert!(run.saw("IRVMM-INIT-OK cpus=288"), "{}", run.dump());
    assert_eq!(run.code(), Some(0), "power-off must exit 0\n{}", run.dump());
}

/// The AMD-Vi twin of [`linux_initramfs_288_vcpus_with_interrupt_remapping`]: Linux prints
/// its AMD-Vi enablement lines (interrupt remapping, x2APIC mode, guest virtual APIC for
/// KVM's posting) and COM1's interrupt sits on the remapped IOAPIC chip. The platform has no
/// device doing DMA, so the kernel needs no `iommu=pt` here (see `--iommu amd` in the
/// command-line help for when it does).
#[test]
#[ignore = "needs hardware virtualization (VT-x/AMD-V): run on such a host with `IRVMM_REQUIRE_ASSETS=1 cargo nextest run -p cli --run-ignored only -E 'binary(linux_boot)'`"]
fn linux_initramfs_288_vcpus_with_amd_vi_interrupt_remapping() {
    let test = "linux_initramfs_288_vcpus_with_amd_vi_interrupt_remapping";
    require_hardware_virtualization();
    let Some(kernel) = kernel_or_skip(test, "bzImage") else {
        return;
    };
    let initramfs = match asset("initramfs.cpio.gz") {
        Ok(p) => p,
        Err(why) => return skip(test, &why),
    };
    let run = run_guest(
        &[
            "--kernel",
            kernel.to_str().expect("utf-8 path"),
            "--initramfs",
            initramfs.to_str().expect("utf-8 path"),
            "--cmdline",
            "console=ttyS0 panic=-1",
            "--cpus",
            "288",
            "--memory",
            "2G",
            "--iommu",
            "amd",
        ],
        Duration::from_secs(600),
        None,
    );
    for line in [
        "AMD-Vi: Interrupt remapping enabled",
        "AMD-Vi: X2APIC enabled",
        "AMD-Vi: Virtual APIC enabled",
        "IR-IO-APIC",
        "IRVMM-INIT-OK cpus=288",
    ] {
        assert!(run.saw(line), "missing {line:?}\n{}", run.dump());
    }
    let trouble: Vec<&String> = run
        .lines
        .iter()
        .filter(|l| AMD_VI_TROUBLE.iter().any(|t| l.contains(t)))
        .collect();
    assert!(trouble.is_empty(), "{trouble:?}\n{}", run.dump());
    assert_eq!(run.code(), Some(0), "power-off must exit 0\n{}", run.dump());
}
