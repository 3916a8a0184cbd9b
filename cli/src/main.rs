//! `irvmm`: parse the command line, run the VM, turn the outcome into an exit status.

mod args;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use vmm::{VmConfig, VmOutcome};

use args::Args;

/// Exit status for bad command-line input.
const EXIT_USAGE: u8 = 2;
/// Exit status when the guest crashed (triple fault, KVM internal error).
const EXIT_GUEST_CRASH: u8 = 120;
/// Exit status when the VMM itself failed.
const EXIT_VMM_ERROR: u8 = 121;

/// Prints a one-line error and returns the usage exit status.
fn usage_error(line: &str) -> ExitCode {
    eprintln!("irvmm: error: {line}");
    ExitCode::from(EXIT_USAGE)
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message spans several lines: keep its first paragraph (which names
            // the flag) on one line, and leave the usage summary to --help.
            let text = e.to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = first.join(" ");
            let line = line.trim_start_matches("error: ");
            return usage_error(&format!("{line} (see irvmm --help)"));
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();

    let cpu_features = match vmm::cpuid::parse_overrides(&args.cpu_features) {
        Ok(f) => f,
        Err(e) => return usage_error(&format!("--cpu-features: {e}")),
    };
    let config = VmConfig {
        kernel: args.kernel,
        initramfs: args.initramfs,
        cmdline: args.cmdline,
        topology: args.cpus,
        memory: args.memory,
        serial: args.serial,
        cpu_features,
        ext_dest_id: args.ext_dest_id,
        kvm_device: args.kvm_device,
        apic_mode: args.apic_mode,
        iommu: args.iommu,
        devices: args.devices,
        disks: args.disks,
        console: args.console,
        rng: args.rng,
    };
    match vmm::run(&config) {
        Ok(VmOutcome::DebugExit(v)) => ExitCode::from(v),
        Ok(VmOutcome::PowerOff) | Ok(VmOutcome::Reset) => ExitCode::SUCCESS,
        Ok(VmOutcome::Crash(reason)) => {
            eprintln!("irvmm: guest stopped: {reason}");
            ExitCode::from(EXIT_GUEST_CRASH)
        }
        Err(e) if e.is_usage() => usage_error(&e.to_string()),
        Err(e) => {
            eprintln!("irvmm: error: {e}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}
