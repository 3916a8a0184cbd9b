//! Bad command-line input: one line on stderr naming the flag, exit status 2, no guest
//! output (nothing was started).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{asset, irvmm, kvm_available, skip};

/// Runs irvmm and checks the usage-error contract; returns the error line.
fn refused(args: &[&str], flag: &str) -> String {
    let out = Command::new(irvmm())
        .args(args)
        .output()
        .expect("run irvmm");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(2),
        "args {args:?}: stderr: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "args {args:?}: the guest must not have run"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "args {args:?}: one line expected, got: {stderr}"
    );
    assert!(
        lines[0].contains(flag),
        "args {args:?}: '{}' does not name {flag}",
        lines[0]
    );
    lines[0].to_string()
}

/// A scratch file with `bytes`, unique per test.
fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("irvmm-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("scratch file");
    p
}

/// The probe guest when present, else a file that passes the format check (so flag
/// checks that come later still run).
fn some_kernel() -> PathBuf {
    asset("probe.elf").unwrap_or_else(|_| scratch("fake.elf", b"\x7fELF\x02\x01\x01"))
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn missing_kernel_flag() {
    refused(&["--cpus", "1"], "--kernel");
}

#[test]
fn nonexistent_kernel() {
    let l = refused(&["--kernel", "/nonexistent/vmlinux"], "--kernel");
    assert!(l.contains("/nonexistent/vmlinux"), "{l}");
}

#[test]
fn directory_as_kernel() {
    let dir = std::env::temp_dir();
    refused(&["--kernel", s(&dir)], "--kernel");
}

#[test]
fn empty_kernel() {
    let p = scratch("empty", b"");
    let l = refused(&["--kernel", s(&p)], "--kernel");
    assert!(l.contains("empty"), "{l}");
}

#[test]
fn kernel_neither_elf_nor_bzimage() {
    let p = scratch("text", b"this is not a kernel at all, just some text\n");
    let l = refused(&["--kernel", s(&p)], "--kernel");
    assert!(l.contains("neither"), "{l}");
}

#[test]
fn truncated_elf_kernel() {
    if let Err(why) = kvm_available() {
        return skip("truncated_elf_kernel", &why);
    }
    let p = scratch("trunc.elf", b"\x7fELF\x02\x01\x01\x00\x00");
    refused(&["--kernel", s(&p)], "--kernel");
}

#[test]
fn missing_initramfs() {
    let k = some_kernel();
    refused(
        &["--kernel", s(&k), "--initramfs", "/nonexistent/initrd"],
        "--initramfs",
    );
}

#[test]
fn zero_cpus() {
    let k = some_kernel();
    refused(&["--kernel", s(&k), "--cpus", "0"], "--cpus");
}

#[test]
fn cpus_above_kvm_maximum() {
    if let Err(why) = kvm_available() {
        return skip("cpus_above_kvm_maximum", &why);
    }
    let k = some_kernel();
    let l = refused(&["--kernel", s(&k), "--cpus", "100000"], "--cpus");
    assert!(l.contains("at most"), "{l}");
}

#[test]
fn topology_product_mismatch() {
    let k = some_kernel();
    refused(
        &["--kernel", s(&k), "--cpus", "10,sockets=3,cores=3"],
        "--cpus",
    );
}

#[test]
fn unparseable_memory() {
    let k = some_kernel();
    refused(&["--kernel", s(&k), "--memory", "lots"], "--memory");
}

#[test]
fn too_small_memory() {
    if let Err(why) = kvm_available() {
        return skip("too_small_memory", &why);
    }
    let k = some_kernel();
    let l = refused(&["--kernel", s(&k), "--memory", "1M"], "--memory");
    assert!(l.contains("too small"), "{l}");
}

#[test]
fn memory_beyond_host() {
    if let Err(why) = kvm_available() {
        return skip("memory_beyond_host", &why);
    }
    let k = some_kernel();
    refused(&["--kernel", s(&k), "--memory", "1048576G"], "--memory");
}

#[test]
fn unknown_cpu_feature() {
    let k = some_kernel();
    let l = refused(
        &["--kernel", s(&k), "--cpu-features", "-cx16,-warpdrive"],
        "--cpu-features",
    );
    assert!(l.contains("warpdrive"), "{l}");
}

#[test]
fn cpu_feature_without_sign() {
    let k = some_kernel();
    refused(
        &["--kernel", s(&k), "--cpu-features", "cx16"],
        "--cpu-features",
    );
}

#[test]
fn bad_serial_mode() {
    let k = some_kernel();
    refused(&["--kernel", s(&k), "--serial", "telnet:1234"], "--serial");
}

#[test]
fn no_kvm_device() {
    let k = some_kernel();
    let l = refused(
        &["--kernel", s(&k), "--kvm-device", "/nonexistent/kvm"],
        "--kvm-device",
    );
    assert!(l.contains("/nonexistent/kvm"), "{l}");
}

#[test]
fn cmdline_too_long_for_pvh() {
    if let Err(why) = kvm_available() {
        return skip("cmdline_too_long_for_pvh", &why);
    }
    let k = match asset("probe.elf") {
        Ok(k) => k,
        Err(why) => return skip("cmdline_too_long_for_pvh", &why),
    };
    let long = "x".repeat(5000);
    refused(&["--kernel", s(&k), "--cmdline", &long], "--cmdline");
}

#[test]
fn xapic_mode_cannot_reach_high_apic_ids() {
    if let Err(why) = kvm_available() {
        return skip("xapic_mode_cannot_reach_high_apic_ids", &why);
    }
    let k = some_kernel();
    let l = refused(
        &["--kernel", s(&k), "--cpus", "300", "--apic-mode", "xapic"],
        "--apic-mode",
    );
    assert!(l.contains("299"), "{l}");
}

#[test]
fn hidden_x2apic_conflicts_with_high_apic_ids() {
    if let Err(why) = kvm_available() {
        return skip("hidden_x2apic_conflicts_with_high_apic_ids", &why);
    }
    let k = some_kernel();
    refused(
        &[
            "--kernel",
            s(&k),
            "--cpus",
            "300",
            "--cpu-features",
            "-x2apic",
        ],
        "--cpu-features",
    );
}

#[test]
fn bad_apic_mode() {
    let k = some_kernel();
    refused(&["--kernel", s(&k), "--apic-mode", "x3apic"], "--apic-mode");
}

#[test]
fn high_apic_ids_need_remapping_or_ext_dest() {
    if let Err(why) = kvm_available() {
        return skip("high_apic_ids_need_remapping_or_ext_dest", &why);
    }
    let k = some_kernel();
    let l = refused(
        &["--kernel", s(&k), "--cpus", "288", "--ext-dest-id", "off"],
        "--cpus",
    );
    assert!(l.contains("--iommu intel"), "{l}");
    assert!(l.contains("--iommu amd"), "{l}");
}

#[test]
fn unknown_device() {
    let k = some_kernel();
    refused(&["--kernel", s(&k), "--device", "gpu"], "--device");
}

#[test]
fn unknown_iommu() {
    let k = some_kernel();
    refused(&["--kernel", s(&k), "--iommu", "smmu"], "--iommu");
}

#[test]
fn initramfs_that_does_not_fit() {
    if let Err(why) = kvm_available() {
        return skip("initramfs_that_does_not_fit", &why);
    }
    let k = some_kernel();
    let big = scratch("big-initrd", &vec![0u8; 40 << 20]);
    refused(
        &["--kernel", s(&k), "--initramfs", s(&big), "--memory", "32M"],
        "--initramfs",
    );
}

/// A bzImage header with `setup_sects` = 255: the setup code would extend past the file.
fn absurd_bzimage() -> PathBuf {
    let mut b = vec![0u8; 0x1000];
    b[0x1f1] = 0xff;
    b[0x1fe] = 0x55;
    b[0x1ff] = 0xaa;
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
    scratch("absurd.bzImage", &b)
}

#[test]
fn bzimage_with_absurd_setup_size() {
    if let Err(why) = kvm_available() {
        return skip("bzimage_with_absurd_setup_size", &why);
    }
    let l = refused(&["--kernel", s(&absurd_bzimage())], "--kernel");
    assert!(l.contains("bzImage"), "{l}");
}

#[test]
fn cmdline_too_long_for_bzimage_header() {
    if let Err(why) = kvm_available() {
        return skip("cmdline_too_long_for_bzimage_header", &why);
    }
    let k = match asset("probe.bzImage") {
        Ok(k) => k,
        Err(why) => return skip("cmdline_too_long_for_bzimage_header", &why),
    };
    let long = "x".repeat(5000);
    let l = refused(&["--kernel", s(&k), "--cmdline", &long], "--cmdline");
    assert!(l.contains("4095"), "the header's cmdline_size: {l}");
}

#[test]
fn memory_at_the_minimum_is_accepted_and_below_refused() {
    if let Err(why) = kvm_available() {
        return skip("memory_at_the_minimum_is_accepted_and_below_refused", &why);
    }
    let k = some_kernel();
    refused(&["--kernel", s(&k), "--memory", "16383K"], "--memory");
    if let Ok(probe) = asset("probe.elf") {
        let out = Command::new(irvmm())
            .args([
                "--kernel",
                s(&probe),
                "--cmdline",
                "probe=boot",
                "--memory",
                "16M",
            ])
            .output()
            .expect("run irvmm");
        // 16M is the documented minimum: it must start (the probe's 6 MiB image fits).
        assert_ne!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn bad_lifecycle_flags() {
    let k = some_kernel();
    refused(&["--kernel", s(&k), "--on-reset", "reboot"], "--on-reset");
    refused(&["--kernel", s(&k), "--timeout", "0"], "--timeout");
    refused(&["--kernel", s(&k), "--timeout", "soon"], "--timeout");
    refused(&["--kernel", s(&k), "--pvpanic", "usb"], "--pvpanic");
}

#[test]
fn restart_with_passthrough_is_refused_before_the_device_is_opened() {
    if let Err(why) = kvm_available() {
        return skip(
            "restart_with_passthrough_is_refused_before_the_device_is_opened",
            &why,
        );
    }
    let k = some_kernel();
    // The socket does not exist: the --on-reset check comes first, so it is never opened.
    let l = refused(
        &[
            "--kernel",
            s(&k),
            "--on-reset",
            "restart",
            "--device",
            "vfio-user,socket=/nonexistent/irvmm-test.sock",
        ],
        "--on-reset",
    );
    assert!(l.contains("passed-through"), "{l}");
}
