//! Tier 3: Debian's kernel booted by irvmm.
//!
//! On the build machines (an emulating KVM without VT-x/AMD-V) Linux cannot reach user
//! space, so these tests check what it prints first: its banner and its reading of our
//! ACPI tables. On a host with hardware virtualization the initramfs test boots to
//! user space; elsewhere it says why it skips. The root-disk tests (end of file) boot
//! Debian's kernel with `rootfs.ext4` as root; their assets are checked everywhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
/// What Linux says about the platform before this KVM's int3 stop: the ECAM window reserved
/// in the e820 map (so it can use MMCONFIG early), the FACS of a platform with ACPI fixed
/// hardware, LINT1 wired to NMI, the SCI's override, and COM1's ISA IRQ 4 routed from I/O
/// APIC pin 4 to Linux IRQ 4. The last is a KERN_DEBUG line of `apic=verbose`; on a
/// hardware-reduced platform Linux has no legacy IRQs and prints " apic 0 pin 4 not
/// connected" instead (COM1 then becomes IRQ 24 once its driver asks).
const PLATFORM_LINES: [&str; 5] = [
    "BIOS-e820: [mem 0x00000000b0000000-0x00000000bfffffff] reserved",
    "ACPI: FACS",
    "ACPI: LAPIC_NMI (acpi_id[0xff] high edge lint[0x1])",
    "ACPI: INT_SRC_OVR (bus 0 bus_irq 9 global_irq 9 high level)",
    "IOAPIC[0]: Preconfigured routing entry (0-4 -> IRQ 4 Level:0 ActiveLow:0)",
];
/// The routing line for COM1's pin, printed once Linux sets up its I/O APIC.
const COM1_ROUTING: &str = "(0-4 -> IRQ";
/// What Linux prints instead when it has no legacy IRQ for pin 4.
const COM1_UNROUTED: &str = "apic 0 pin 4 not connected";
/// Makes Linux print its I/O APIC routing (KERN_DEBUG lines, hence `ignore_loglevel`).
const APIC_VERBOSE: &str = "apic=verbose ignore_loglevel";
/// The features this KVM cannot emulate (see the build-machine notes).
const CPU_FEATURES: &str = "-cx16,-xsave";
/// `earlyprintk` makes Linux print from its first instructions instead of buffering until
/// its console driver registers, which on this KVM comes minutes later with many vCPUs.
const CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0 noxsave";

/// The hardware-virtualization tests are `#[ignore]`d (reported as ignored, never as
/// passed, on hosts without VT-x/AMD-V); run explicitly on a host without it, they fail
/// and say why.
fn require_hardware_virtualization() {
    if let Err(why) = hardware_virtualization() {
        panic!("{why}; this test needs a host with VT-x/AMD-V");
    }
}

/// `result`'s value; else prints why `test` skips and returns `None`.
fn or_skip<T>(test: &str, result: Result<T, String>) -> Option<T> {
    result.map_err(|why| skip(test, &why)).ok()
}

/// The guest asset `name` when /dev/kvm and the asset are there; else prints why `test`
/// skips and returns `None`.
fn kernel_or_skip(test: &str, name: &str) -> Option<PathBuf> {
    or_skip(test, kvm_available())?;
    or_skip(test, asset(name))
}

/// `path` as an irvmm argument.
fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// irvmm's arguments that boot `kernel` (with `initramfs` and `--cpu-features
/// cpu_features` where given) with the command line `cmdline`, `cpus` vCPUs and `memory`,
/// followed by `extra`.
fn guest_args<'a>(
    kernel: &'a Path,
    initramfs: Option<&'a Path>,
    cpu_features: Option<&'a str>,
    cmdline: &'a str,
    cpus: &'a str,
    memory: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["--kernel", arg(kernel)];
    if let Some(initramfs) = initramfs {
        args.extend(["--initramfs", arg(initramfs)]);
    }
    if let Some(features) = cpu_features {
        args.extend(["--cpu-features", features]);
    }
    args.extend(["--cmdline", cmdline, "--cpus", cpus, "--memory", memory]);
    args.extend_from_slice(extra);
    args
}

/// Asserts that the console shows each of `lines`.
fn assert_saw_all(run: &GuestRun, lines: &[&str]) {
    for line in lines {
        assert!(run.saw(line), "missing {line:?}\n{}", run.dump());
    }
}

/// Asserts that the console shows none of `lines`.
fn assert_saw_none(run: &GuestRun, lines: &[&str]) {
    for line in lines {
        assert!(!run.saw(line), "{line:?}\n{}", run.dump());
    }
}

/// Asserts that the guest powered off: irvmm exited 0.
fn assert_powered_off(run: &GuestRun) {
    assert_eq!(run.code(), Some(0), "power-off must exit 0\n{}", run.dump());
}

/// Asserts that Linux reported no DMAR fault.
fn assert_no_dmar_faults(run: &GuestRun) {
    let faults: Vec<&String> = run
        .lines
        .iter()
        .filter(|l| l.contains("DMAR") && l.to_ascii_lowercase().contains("fault"))
        .collect();
    assert!(faults.is_empty(), "DMAR faults: {faults:?}\n{}", run.dump());
}

/// What Linux prints once it enabled the VT-d unit's DMA translation.
const DMA_TRANSLATION_ENABLED: &str = "DMAR: Intel(R) Virtualization Technology for Directed I/O";
/// What Linux prints once it enabled VT-d interrupt remapping in x2APIC mode.
const DMAR_IR_ENABLED: &str = "DMAR-IR: Enabled IRQ remapping in x2apic mode";

/// Asserts that Linux enabled the VT-d unit's DMA translation.
fn assert_dma_translation_enabled(run: &GuestRun) {
    assert!(
        run.saw(DMA_TRANSLATION_ENABLED),
        "DMA translation not enabled\n{}",
        run.dump()
    );
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
    early_boot_cmdline(kernel, cpus, CMDLINE, extra, deadline, done)
}

/// [`early_boot`] with the command line `cmdline`.
fn early_boot_cmdline(
    kernel: &Path,
    cpus: &str,
    cmdline: &str,
    extra: &[&str],
    deadline: Duration,
    done: StopWhen,
) -> GuestRun {
    let args = guest_args(
        kernel,
        None,
        Some(CPU_FEATURES),
        cmdline,
        cpus,
        "256M",
        extra,
    );
    run_guest(&args, deadline, Some(done))
}

/// The command line of the user-space initramfs boots.
const INITRAMFS_CMDLINE: &str = "console=ttyS0 panic=-1";

/// Boots Debian's bzImage and the initramfs whose /init reports `IRVMM-INIT-OK` and powers
/// off, with `cmdline`, `cpus` vCPUs, `memory` and `extra` arguments, until the VM exits or
/// `deadline` passes. Fails on a host without hardware virtualization (see
/// [`require_hardware_virtualization`]); `None` after printing why `test` skips.
fn boot_initramfs_or_skip(
    test: &str,
    cmdline: &str,
    cpus: &str,
    memory: &str,
    extra: &[&str],
    deadline: Duration,
) -> Option<GuestRun> {
    require_hardware_virtualization();
    let kernel = kernel_or_skip(test, "bzImage")?;
    let initramfs = or_skip(test, asset("initramfs.cpio.gz"))?;
    let args = guest_args(
        &kernel,
        Some(&initramfs),
        None,
        cmdline,
        cpus,
        memory,
        extra,
    );
    Some(run_guest(&args, deadline, None))
}

fn banner_and_acpi(test: &str, image: &str) {
    let Some(kernel) = kernel_or_skip(test, image) else {
        return;
    };
    let done = |lines: &[String]| {
        lines
            .iter()
            .any(|l| l.contains(COM1_ROUTING) || l.contains(COM1_UNROUTED))
    };
    let cmdline = format!("{CMDLINE} {APIC_VERBOSE}");
    let run = early_boot_cmdline(&kernel, "2", &cmdline, &[], Duration::from_secs(600), &done);
    assert!(run.saw("Linux version"), "no banner\n{}", run.dump());
    assert_saw_all(&run, &ACPI_LINES);
    assert_saw_all(&run, &PLATFORM_LINES);
    assert_saw_none(&run, &[COM1_UNROUTED]);
    assert_saw_all(&run, &["smpboot: Allowing 2 CPUs"]);
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
    let Some(run) = boot_initramfs_or_skip(
        "linux_initramfs_reaches_user_space",
        INITRAMFS_CMDLINE,
        "4",
        "512M",
        &[],
        Duration::from_secs(300),
    ) else {
        return;
    };
    assert_saw_all(&run, &["IRVMM-INIT-OK cpus=4"]);
    assert_powered_off(&run);
    // What Linux reports about the platform once its drivers run (after this KVM's int3
    // stop, so derived from Linux 6.1's code paths, not yet seen here): COM1 on ISA IRQ 4
    // (24 while the FADT was hardware-reduced), the host bridge's _OSC granting native
    // control, MMCONFIG taken from the e820 reservation at once.
    assert_saw_all(&run, &USER_SPACE_PLATFORM_LINES);
    assert_saw_none(&run, &USER_SPACE_PLATFORM_COMPLAINTS);
}

/// Lines a Linux that reached user space prints about irvmm's platform.
const USER_SPACE_PLATFORM_LINES: [&str; 2] =
    ["ttyS0 at I/O 0x3f8 (irq = 4,", "_OSC: OS now controls ["];
/// Lines it must not print: what it said of the hardware-reduced platform without `_OSC`
/// and without the ECAM window in the e820 map.
const USER_SPACE_PLATFORM_COMPLAINTS: [&str; 2] = [
    "platform retains control of PCIe features",
    "PCI: not using MMCONFIG",
];

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
    assert_saw_all(&run, &["smpboot: Allowing 288 CPUs"]);
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
    let done = |lines: &[String]| lines.iter().any(|l| l.contains(DMAR_IR_ENABLED));
    let run = early_boot(
        &kernel,
        "288",
        &["--iommu", "intel"],
        Duration::from_secs(1200),
        &done,
    );
    assert_saw_all(
        &run,
        &[
            "ACPI: DMAR",
            "DMAR-IR: IOAPIC id 0 under DRHD base",
            DMAR_IR_ENABLED,
        ],
    );
    assert_no_dmar_faults(&run);
    // DMA translation is attempted: the unit reports second-level address widths, so
    // alloc_iommu does not print "No supported address widths. Not attempting DMA
    // translation." (what it printed while CAP.SAGAW was 0). Linux enables translation
    // itself only in intel_iommu_init, after this KVM's int3 stop ("DMAR: Intel(R)
    // Virtualization Technology for Directed I/O": the user-space test checks it).
    assert_saw_none(&run, &["Not attempting DMA translation"]);
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
    let Some(run) = boot_initramfs_or_skip(
        "linux_initramfs_with_strict_dma_translation",
        &format!("{INITRAMFS_CMDLINE} iommu=strict"),
        "4",
        "1G",
        &["--iommu", "intel", "--device", "edu"],
        Duration::from_secs(300),
    ) else {
        return;
    };
    assert_dma_translation_enabled(&run);
    assert_saw_none(&run, &["Not attempting DMA translation"]);
    assert_saw_all(&run, &[DMAR_IR_ENABLED]);
    assert_no_dmar_faults(&run);
    assert_saw_all(&run, &["IRVMM-INIT-OK cpus=4"]);
    assert_powered_off(&run);
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

/// Asserts that Linux printed none of [`AMD_VI_TROUBLE`].
fn assert_no_amd_vi_trouble(run: &GuestRun) {
    let trouble: Vec<&String> = run
        .lines
        .iter()
        .filter(|l| AMD_VI_TROUBLE.iter().any(|t| l.contains(t)))
        .collect();
    assert!(trouble.is_empty(), "{trouble:?}\n{}", run.dump());
}

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
    let args = guest_args(
        &kernel,
        None,
        Some(AMD_CPU_FEATURES),
        AMD_CMDLINE,
        "288",
        "256M",
        &["--iommu", "amd"],
    );
    let run = run_guest_env(
        &args,
        &[("RUST_LOG", "info")],
        Duration::from_secs(1200),
        Some(&done),
    );
    assert_saw_all(
        &run,
        &[
            "ACPI: IVRS",
            "AMD-Vi: Using IVHD type 0x11",
            "device: 0000:00:1e.0 cap: 0040",
            "mmio-addr: 00000000fed80000",
            "AMD-Vi: Using global IVHD EFR:0x2000c4",
            "smpboot: Allowing 288 CPUs",
            "Setting APIC routing to cluster x2apic",
        ],
    );
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
    assert_no_amd_vi_trouble(&run);
    assert!(
        run.stderr.contains(VMM_MODE),
        "the guest did not switch remapping on in x2APIC mode\n{}",
        run.dump()
    );
    if run.saw(ENABLED) || hardware_virtualization().is_ok() {
        assert_saw_all(&run, &[ENABLED, X2APIC]);
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
    let Some(run) = boot_initramfs_or_skip(
        "linux_initramfs_288_vcpus_with_interrupt_remapping",
        INITRAMFS_CMDLINE,
        "288",
        "2G",
        &["--iommu", "intel"],
        Duration::from_secs(600),
    ) else {
        return;
    };
    assert_saw_all(&run, &[DMAR_IR_ENABLED]);
    assert!(
        run.saw("IR-IO-APIC"),
        "/proc/interrupts must show remapped IOAPIC pins\n{}",
        run.dump()
    );
    assert_saw_all(&run, &["IRVMM-INIT-OK cpus=288"]);
    assert_powered_off(&run);
}

/// The AMD-Vi twin of [`linux_initramfs_288_vcpus_with_interrupt_remapping`]: Linux prints
/// its AMD-Vi enablement lines (interrupt remapping, x2APIC mode, guest virtual APIC for
/// KVM's posting) and COM1's interrupt sits on the remapped IOAPIC chip. The platform has no
/// device doing DMA, so the kernel needs no `iommu=pt` here (see `--iommu amd` in the
/// command-line help for when it does).
#[test]
#[ignore = "needs hardware virtualization (VT-x/AMD-V): run on such a host with `IRVMM_REQUIRE_ASSETS=1 cargo nextest run -p cli --run-ignored only -E 'binary(linux_boot)'`"]
fn linux_initramfs_288_vcpus_with_amd_vi_interrupt_remapping() {
    let Some(run) = boot_initramfs_or_skip(
        "linux_initramfs_288_vcpus_with_amd_vi_interrupt_remapping",
        INITRAMFS_CMDLINE,
        "288",
        "2G",
        &["--iommu", "amd"],
        Duration::from_secs(600),
    ) else {
        return;
    };
    assert_saw_all(
        &run,
        &[
            "AMD-Vi: Interrupt remapping enabled",
            "AMD-Vi: X2APIC enabled",
            "AMD-Vi: Virtual APIC enabled",
            "IR-IO-APIC",
            "IRVMM-INIT-OK cpus=288",
        ],
    );
    assert_no_amd_vi_trouble(&run);
    assert_powered_off(&run);
}

// ---------------------------------------------------------------------------------------------
// The root disk: resources/fetch-assets.sh's `disk` step builds initramfs-disk.cpio.gz (the
// kernel's virtio, ext4 and pvpanic modules and an /init that loads them and switches to
// /dev/vda) and rootfs.ext4 (busybox, the same modules, an /sbin/init that prints
// IRVMM-ROOT-OK, writes /root/irvmm-write-test and powers off; see resources/README.md).

/// Modules (file names) the disk initramfs loads, each with some it must load before it.
const DISK_MODULE_ORDER: [(&str, &[&str]); 8] = [
    (
        "virtio_pci.ko",
        &[
            "virtio.ko",
            "virtio_ring.ko",
            "virtio_pci_modern_dev.ko",
            "virtio_pci_legacy_dev.ko",
        ],
    ),
    ("virtio_blk.ko", &["virtio.ko", "virtio_ring.ko"]),
    (
        "virtio_net.ko",
        &["failover.ko", "net_failover.ko", "virtio_ring.ko"],
    ),
    ("virtio_console.ko", &["virtio_ring.ko"]),
    ("virtio-rng.ko", &["virtio_ring.ko"]),
    (
        "ext4.ko",
        &["jbd2.ko", "mbcache.ko", "crc16.ko", "crc32c_generic.ko"],
    ),
    ("pvpanic-mmio.ko", &["pvpanic.ko"]),
    ("pvpanic-pci.ko", &["pvpanic.ko"]),
];
/// The file the root disk's /sbin/init writes.
const WRITE_TEST_FILE: &str = "/root/irvmm-write-test";
/// The kernel command line of the root-disk boots, before what each adds.
const ROOT_DISK_CMDLINE: &str = "console=ttyS0 root=/dev/vda rw panic=-1";

/// The disk step's outputs and the kernel release whose modules they carry.
struct DiskAssets {
    release: String,
    initramfs: PathBuf,
    rootfs: PathBuf,
}

fn disk_assets() -> Result<DiskAssets, String> {
    let version = std::fs::read_to_string(asset("kernel-version")?).map_err(|e| e.to_string())?;
    let release = version
        .lines()
        .find_map(|l| l.strip_prefix("release="))
        .ok_or("target/guests/kernel-version has no release= line")?
        .to_string();
    Ok(DiskAssets {
        release,
        initramfs: asset("initramfs-disk.cpio.gz")?,
        rootfs: asset("rootfs.ext4")?,
    })
}

/// The path of host tool `name` (searched in PATH, then /usr/sbin and /sbin, where e2fsprogs
/// lives), or why it is missing: a failure with `IRVMM_REQUIRE_ASSETS` set (the asset script
/// installs these tools).
fn host_tool(name: &str) -> Result<PathBuf, String> {
    if let Some(p) = on_path(name) {
        return Ok(p);
    }
    let why = format!("host tool {name} is missing; resources/fetch-assets.sh installs it");
    assert!(std::env::var_os("IRVMM_REQUIRE_ASSETS").is_none(), "{why}");
    Err(why)
}

/// Where `name` is in PATH, /usr/sbin or /sbin.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd`, panicking unless it exits 0; its standard output.
fn output_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `debugfs -R REQUEST IMAGE`'s output (debugfs reports a missing file on stderr only).
fn debugfs(image: &Path, request: &str) -> String {
    let debugfs = host_tool("debugfs").expect("debugfs");
    output_of(Command::new(debugfs).arg("-R").arg(request).arg(image))
}

/// `cpio ARGS` on the decompressed contents of the gzip-compressed `archive`.
fn cpio_of(archive: &Path, args: &[&str]) -> String {
    let mut gzip = Command::new(host_tool("gzip").expect("gzip"))
        .arg("-dc")
        .arg(archive)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn gzip");
    let stdout = gzip.stdout.take().expect("gzip stdout");
    let out = output_of(
        Command::new(host_tool("cpio").expect("cpio"))
            .arg("--quiet")
            .args(args)
            .stdin(stdout),
    );
    assert!(gzip.wait().expect("wait gzip").success(), "gzip -dc failed");
    out
}

/// A directory of its own under the system's temporary directory, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(test: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("irvmm-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        ScratchDir(dir)
    }

    /// A private copy of the root-disk image (a boot writes to it; the asset stays intact).
    fn rootfs_copy(&self, assets: &DiskAssets) -> PathBuf {
        let copy = self.0.join("rootfs.ext4");
        std::fs::copy(&assets.rootfs, &copy).expect("copy rootfs.ext4");
        copy
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything the user-space root-disk tests need, or why they cannot run.
fn root_disk_or_skip(test: &str) -> Option<(PathBuf, DiskAssets)> {
    require_hardware_virtualization();
    let kernel = kernel_or_skip(test, "bzImage")?;
    let assets = or_skip(
        test,
        disk_assets().and_then(|a| host_tool("debugfs").map(|_| a)),
    )?;
    Some((kernel, assets))
}

/// Boots Debian's kernel with the disk initramfs and `disk` as root, `cmdline_extra` added
/// to the kernel command line, `extra` irvmm arguments and `env` for irvmm, until the VM
/// exits.
fn boot_root_disk(
    kernel: &Path,
    assets: &DiskAssets,
    disk: Option<&Path>,
    cmdline_extra: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> GuestRun {
    let cmdline = format!("{ROOT_DISK_CMDLINE} {cmdline_extra}");
    let disk_arg = disk.map(|d| format!("path={}", d.display()));
    let mut args = guest_args(
        kernel,
        Some(&assets.initramfs),
        None,
        &cmdline,
        "2",
        "512M",
        &[],
    );
    if let Some(d) = &disk_arg {
        args.extend(["--disk", d.as_str()]);
    }
    args.extend_from_slice(extra);
    run_guest_env(&args, env, Duration::from_secs(300), None)
}

/// A boot of a private copy of the root disk whose /sbin/init writes this boot's token to
/// [`WRITE_TEST_FILE`].
struct WritingBoot {
    run: GuestRun,
    /// The image booted: a copy, removed with `_scratch`.
    disk: PathBuf,
    token: String,
    assets: DiskAssets,
    _scratch: ScratchDir,
}

impl WritingBoot {
    /// Boots Debian's kernel with the disk initramfs and a fresh copy of the root disk,
    /// `cmdline_extra` and `irvmm.token=<a fresh token>` added to the kernel command line,
    /// `extra` irvmm arguments and `env` for irvmm, until the VM exits. `None` after printing
    /// why `test` skips (see [`root_disk_or_skip`]).
    fn run_or_skip(
        test: &str,
        cmdline_extra: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Option<WritingBoot> {
        let (kernel, assets) = root_disk_or_skip(test)?;
        let scratch = ScratchDir::new(test);
        let disk = scratch.rootfs_copy(&assets);
        let token = fresh_token();
        let token_arg = format!("irvmm.token={token}");
        let cmdline_extra = if cmdline_extra.is_empty() {
            token_arg
        } else {
            format!("{cmdline_extra} {token_arg}")
        };
        let run = boot_root_disk(&kernel, &assets, Some(&disk), &cmdline_extra, extra, env);
        Some(WritingBoot {
            run,
            disk,
            token,
            assets,
            _scratch: scratch,
        })
    }
}

/// Asserts that the root disk's /sbin/init ran and found its root read-write.
fn assert_root_ok(run: &GuestRun) {
    assert_saw_all(run, &["IRVMM-ROOT-OK root=/dev/vda mode=rw"]);
}

/// Asserts that the image `disk` holds the guest's [`WRITE_TEST_FILE`] with `record`.
fn assert_guest_wrote(disk: &Path, record: &str) {
    let written = debugfs(disk, &format!("cat {WRITE_TEST_FILE}"));
    assert!(
        written.contains(record),
        "{WRITE_TEST_FILE} in the image reads {written:?}"
    );
}

/// The assets the disk step wrote are what the boot tests expect: the initramfs holds
/// busybox, /init and the modules in dependency order; the image is a clean ext4 file system
/// with busybox, /sbin/init and the same modules with depmod's index. Needs no KVM.
#[test]
fn linux_disk_assets_are_well_formed() {
    let test = "linux_disk_assets_are_well_formed";
    let tools = ["debugfs", "e2fsck", "cpio", "gzip"].map(host_tool);
    if let Some(Err(why)) = tools.iter().find(|t| t.is_err()) {
        return skip(test, why);
    }
    let Some(assets) = or_skip(test, disk_assets()) else {
        return;
    };
    let moddir = format!("lib/modules/{}", assets.release);

    // The initramfs.
    let members = cpio_of(&assets.initramfs, &["-t"]);
    let members: Vec<&str> = members.lines().collect();
    let order_member = format!("{moddir}/irvmm-load-order");
    for m in [
        "init",
        "bin/busybox",
        "bin/sh",
        "sbin/insmod",
        "sbin/switch_root",
        "newroot",
        &order_member,
        &format!("{moddir}/modules.dep"),
    ] {
        assert!(members.contains(&m), "initramfs lacks {m}: {members:?}");
    }
    let init = cpio_of(&assets.initramfs, &["-i", "--to-stdout", "init"]);
    assert!(init.contains("switch_root"), "unexpected /init:\n{init}");
    let order = cpio_of(&assets.initramfs, &["-i", "--to-stdout", &order_member]);
    let order: Vec<&str> = order.lines().collect();
    for m in &order {
        let member = format!("{moddir}/{m}");
        assert!(
            members.contains(&member.as_str()),
            "initramfs lacks {member}"
        );
    }
    let position = |name: &str| {
        order
            .iter()
            .position(|m| m.rsplit('/').next() == Some(name))
            .unwrap_or_else(|| panic!("{name} is not in the load order {order:?}"))
    };
    for (module, before) in DISK_MODULE_ORDER {
        for b in before {
            assert!(
                position(b) < position(module),
                "{b} must load before {module}: {order:?}"
            );
        }
    }

    // The root disk.
    let e2fsck = host_tool("e2fsck").expect("e2fsck");
    output_of(Command::new(e2fsck).arg("-fn").arg(&assets.rootfs));
    let stats = debugfs(&assets.rootfs, "stats");
    assert!(stats.contains("irvmm-root"), "volume label:\n{stats}");
    for feature in ["has_journal", "extent"] {
        assert!(stats.contains(feature), "no {feature}:\n{stats}");
    }
    let init = debugfs(&assets.rootfs, "cat /sbin/init");
    assert!(
        init.contains("IRVMM-ROOT-OK"),
        "unexpected /sbin/init:\n{init}"
    );
    let busybox = debugfs(&assets.rootfs, "stat /bin/busybox");
    assert!(
        busybox.contains("Type: regular"),
        "/bin/busybox:\n{busybox}"
    );
    let dep = debugfs(&assets.rootfs, &format!("cat /{moddir}/modules.dep"));
    for m in [
        "kernel/fs/ext4/ext4.ko:",
        "kernel/drivers/block/virtio_blk.ko:",
    ] {
        assert!(dep.contains(m), "modules.dep lacks {m}:\n{dep}");
    }
    let disk_order = debugfs(&assets.rootfs, &format!("cat /{order_member}"));
    assert_eq!(
        disk_order.lines().collect::<Vec<_>>(),
        order,
        "the image's module list differs from the initramfs's"
    );
}

/// A boot token of this run, so a test never finds an earlier run's file.
fn fresh_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("t{}n{nanos}", std::process::id())
}

/// The disk assets themselves reach user space where irvmm's Linux boots cannot (an
/// emulating KVM): QEMU 7.2 with TCG (no KVM; about 10 s) boots Debian's kernel with the disk
/// initramfs and a copy of rootfs.ext4 on QEMU's own virtio-blk-pci (plus virtio-rng-pci and
/// the ISA pvpanic): every module loads, the root mounts read-write, the devices bind, and
/// the file the guest wrote is in the image after power-off. Without qemu-system-x86_64
/// (`.ci/run` installs it) it says SKIPPED.
#[test]
fn linux_root_disk_assets_boot_on_qemu_tcg() {
    let test = "linux_root_disk_assets_boot_on_qemu_tcg";
    let Some(qemu) = on_path("qemu-system-x86_64") else {
        return skip(
            test,
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
        );
    };
    let Some((kernel, assets)) =
        or_skip(test, asset("bzImage").and_then(|k| Ok((k, disk_assets()?))))
    else {
        return;
    };
    if or_skip(test, host_tool("debugfs")).is_none() {
        return;
    }
    let scratch = ScratchDir::new(test);
    let disk = scratch.rootfs_copy(&assets);
    let token = fresh_token();
    let out = output_of(
        Command::new("timeout")
            .arg("300")
            .arg(&qemu)
            .args(["-accel", "tcg", "-M", "q35", "-m", "256M", "-cpu", "max"])
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-display",
                "none",
            ])
            .args(["-monitor", "none", "-serial", "stdio", "-kernel"])
            .arg(&kernel)
            .arg("-initrd")
            .arg(&assets.initramfs)
            .arg("-drive")
            .arg(format!("file={},format=raw,if=none,id=d0", disk.display()))
            .args(["-device", "virtio-blk-pci,drive=d0,disable-legacy=on"])
            .args([
                "-device",
                "virtio-rng-pci,disable-legacy=on",
                "-device",
                "pvpanic",
            ])
            .arg("-append")
            .arg(format!("{ROOT_DISK_CMDLINE} irvmm.token={token}"))
            .stdin(Stdio::null()),
    );
    for line in [
        "IRVMM-ROOT-OK root=/dev/vda mode=rw",
        "=virtio_blk",
        "=virtio_rng",
        "IRVMM-ROOT: powering off",
    ] {
        assert!(out.contains(line), "missing {line:?}:\n{out}");
    }
    let failed: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("-FAIL") || l.contains("IRVMM-INITRD: insmod"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}\n{out}");
    assert_guest_wrote(
        &disk,
        &format!("IRVMM-WRITE token={token} kernel={}", assets.release),
    );
}

/// Here (no hardware virtualization) Linux stops long before it probes PCI, so this checks
/// what it does see: irvmm starts the kernel with the disk initramfs and a root disk
/// attached, and the kernel reserves the whole initramfs ("RAMDISK: [mem A-B]").
#[test]
fn linux_root_disk_boot_gets_its_initramfs() {
    let test = "linux_root_disk_boot_gets_its_initramfs";
    let Some(kernel) = kernel_or_skip(test, "vmlinux") else {
        return;
    };
    let Some(assets) = or_skip(test, disk_assets()) else {
        return;
    };
    let scratch = ScratchDir::new(test);
    let disk = format!("path={}", scratch.rootfs_copy(&assets).display());
    let done = |lines: &[String]| lines.iter().any(|l| l.contains("smpboot: Allowing"));
    let run = early_boot(
        &kernel,
        "1",
        &["--initramfs", arg(&assets.initramfs), "--disk", &disk],
        Duration::from_secs(600),
        &done,
    );
    assert_saw_all(&run, &["smpboot: Allowing 1 CPUs"]);
    let range = run
        .lines
        .iter()
        .find_map(|l| l.split("RAMDISK: [mem ").nth(1))
        .unwrap_or_else(|| panic!("no RAMDISK line\n{}", run.dump()));
    let (start, end) = range
        .trim_end_matches(']')
        .split_once('-')
        .expect("RAMDISK range");
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex");
    let reserved = hex(end) + 1 - hex(start);
    let size = std::fs::metadata(&assets.initramfs).expect("size").len();
    assert!(
        (size..size + 4096).contains(&reserved),
        "RAMDISK spans {reserved} bytes, initramfs-disk.cpio.gz has {size}\n{}",
        run.dump()
    );
}

/// Debian's kernel mounts the root disk and runs its /sbin/init: the initramfs loaded every
/// module, each virtio device (disk, console, entropy) is bound to its driver, the guest's
/// file is in the image after power-off (read with debugfs on the host), and irvmm exits 0.
#[test]
#[ignore = "needs hardware virtualization (VT-x/AMD-V): run on such a host with `IRVMM_REQUIRE_ASSETS=1 cargo nextest run -p cli --run-ignored only -E 'binary(linux_boot)'`"]
fn linux_root_disk_reaches_user_space_and_writes() {
    let Some(boot) = WritingBoot::run_or_skip(
        "linux_root_disk_reaches_user_space_and_writes",
        "",
        &["--console", "virtio", "--rng"],
        &[],
    ) else {
        return;
    };
    let run = &boot.run;
    let loaded = DISK_MODULE_ORDER.len();
    assert!(
        run.lines.iter().any(|l| l
            .split("IRVMM-INITRD: loaded ")
            .nth(1)
            .and_then(|n| n.split_whitespace().next()?.parse::<usize>().ok())
            .is_some_and(|n| n >= loaded)),
        "the initramfs did not load its modules\n{}",
        run.dump()
    );
    let failed: Vec<&String> = run
        .lines
        .iter()
        .filter(|l| l.contains("IRVMM-INITRD: insmod") && !l.contains("crc32c-intel"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}\n{}", run.dump());
    assert!(run.saw("[vda]"), "virtio-blk found no disk\n{}", run.dump());
    assert_root_ok(run);
    let virtio = run
        .lines
        .iter()
        .find(|l| l.contains("IRVMM-ROOT: virtio devices:"))
        .unwrap_or_else(|| panic!("no virtio device list\n{}", run.dump()));
    for driver in ["virtio_blk", "virtio_console", "virtio_rng"] {
        assert!(
            virtio.contains(&format!("={driver}")),
            "{driver} is not bound: {virtio}"
        );
    }
    assert_saw_none(run, &["IRVMM-ROOT-FAIL"]);
    assert_powered_off(run);
    assert_guest_wrote(
        &boot.disk,
        &format!(
            "IRVMM-WRITE token={} kernel={}",
            boot.token, boot.assets.release
        ),
    );
}

/// The root disk with `--iommu intel` and `intel_iommu=on iommu=strict` (issue 11): Linux
/// enables DMA translation, its virtio drivers accept VIRTIO_F_ACCESS_PLATFORM (irvmm logs
/// each device starting with its addresses through the IOMMU), so every ring and buffer of
/// the disk, console and rng goes through the emulated VT-d unit with strict (unmap-time)
/// invalidations; the guest reaches user space, mounts its root read-write, writes its test
/// file, and no DMAR fault is reported.
#[test]
#[ignore = "needs hardware virtualization (VT-x/AMD-V): run on such a host with `IRVMM_REQUIRE_ASSETS=1 cargo nextest run -p cli --run-ignored only -E 'binary(linux_boot)'`"]
fn linux_root_disk_through_the_iommu_with_strict_translation() {
    let Some(boot) = WritingBoot::run_or_skip(
        "linux_root_disk_through_the_iommu_with_strict_translation",
        "intel_iommu=on iommu=strict",
        &["--iommu", "intel", "--console", "virtio", "--rng"],
        &[("RUST_LOG", "info")],
    ) else {
        return;
    };
    let run = &boot.run;
    assert_dma_translation_enabled(run);
    for device in ["blk0", "console", "rng"] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains(&format!("{device}: started"))
                    && l.contains("addresses through the IOMMU")),
            "{device} did not negotiate ACCESS_PLATFORM\n{}",
            run.dump()
        );
    }
    assert_no_dmar_faults(run);
    assert_root_ok(run);
    assert_saw_none(run, &["IRVMM-ROOT-FAIL"]);
    assert_powered_off(run);
    assert_guest_wrote(&boot.disk, &format!("IRVMM-WRITE token={}", boot.token));
}

/// Panics reach irvmm through both pvpanic transports Linux drives (pvpanic-mmio for the
/// ISA device, pvpanic-pci): the root disk's init crashes the kernel on request, and irvmm
/// exits 123. An initramfs that finds no root disk says so and panics the same way.
#[test]
#[ignore = "needs hardware virtualization (VT-x/AMD-V): run on such a host with `IRVMM_REQUIRE_ASSETS=1 cargo nextest run -p cli --run-ignored only -E 'binary(linux_boot)'`"]
fn linux_root_disk_panics_exit_123() {
    let test = "linux_root_disk_panics_exit_123";
    let Some((kernel, assets)) = root_disk_or_skip(test) else {
        return;
    };
    let scratch = ScratchDir::new(test);
    for pvpanic in ["isa", "pci"] {
        let disk = scratch.rootfs_copy(&assets);
        let run = boot_root_disk(
            &kernel,
            &assets,
            Some(&disk),
            "irvmm.panic=1",
            &["--pvpanic", pvpanic],
            &[],
        );
        assert!(run.saw("IRVMM-ROOT-OK"), "{pvpanic}: {}", run.dump());
        assert!(
            run.saw("Kernel panic - not syncing: sysrq triggered crash"),
            "{pvpanic}: {}",
            run.dump()
        );
        assert_eq!(run.code(), Some(123), "{pvpanic}: {}", run.dump());
    }
    let run = boot_root_disk(&kernel, &assets, None, "irvmm.rootwait=2", &[], &[]);
    assert_saw_all(
        &run,
        &["IRVMM-INITRD-FAIL: root device /dev/vda did not appear"],
    );
    assert_eq!(run.code(), Some(123), "{}", run.dump());
}

/// A network namespace of the test's own holding a tap with the host side's address;
/// deleted (tap included) when dropped.
struct NetNs {
    name: String,
    tap: String,
}

impl NetNs {
    /// Creates it, or says why it cannot (`ip` missing, no CAP_SYS_ADMIN/CAP_NET_ADMIN).
    fn create(host_addr: &str) -> Result<NetNs, String> {
        let ip = host_tool("ip")?;
        let id = std::process::id();
        let name = format!("irvmm-linux-{id}");
        let out = Command::new(&ip)
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot create a network namespace (ip netns add: {}); run as root or with CAP_SYS_ADMIN and CAP_NET_ADMIN",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let ns = NetNs {
            name,
            tap: format!("irvmmlb{}", id % 100_000),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&[
            "ip", "tuntap", "add", "dev", &ns.tap, "mode", "tap", "vnet_hdr",
        ]);
        ns.exec(&["ip", "addr", "add", host_addr, "dev", &ns.tap]);
        ns.exec(&["ip", "link", "set", &ns.tap, "up"]);
        Ok(ns)
    }

    fn exec(&self, args: &[&str]) -> String {
        output_of(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
        )
    }

    /// Runs `f` on a thread that has entered the namespace: processes it starts (irvmm) live
    /// in it.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: setns on a descriptor we own; it changes only this thread's namespace.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.name, "ip", "link", "del", &self.tap])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// virtio-net to user space: the guest's eth0 (virtio_net) pings the host side of a tap in
/// a network namespace the test creates (so the host's own network is untouched). Needs
/// root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) besides hardware virtualization.
#[test]
#[ignore = "needs hardware virtualization (VT-x/AMD-V) and root: run on such a host with `IRVMM_REQUIRE_ASSETS=1 cargo nextest run -p cli --run-ignored only -E 'binary(linux_boot)'`"]
fn linux_root_disk_pings_over_tap() {
    let test = "linux_root_disk_pings_over_tap";
    let Some((kernel, assets)) = root_disk_or_skip(test) else {
        return;
    };
    let ns = match NetNs::create("10.0.0.1/24") {
        Ok(ns) => ns,
        Err(why) => {
            assert!(std::env::var_os("IRVMM_REQUIRE_ASSETS").is_none(), "{why}");
            return skip(test, &why);
        }
    };
    let scratch = ScratchDir::new(test);
    let disk = scratch.rootfs_copy(&assets);
    let net = format!("tap={},mac=52:54:00:12:34:56", ns.tap);
    let run = ns.run(|| {
        boot_root_disk(
            &kernel,
            &assets,
            Some(&disk),
            "irvmm.ping=10.0.0.1/10.0.0.2",
            &["--net", &net],
            &[],
        )
    });
    assert_saw_all(
        &run,
        &[
            "IRVMM-ROOT: eth0 52:54:00:12:34:56 10.0.0.2/24",
            "IRVMM-PING-OK peer=10.0.0.1",
        ],
    );
    assert_powered_off(&run);
    let stats = ns.exec(&["ip", "-s", "link", "show", &ns.tap]);
    assert!(stats.contains("RX:"), "{stats}");
}
