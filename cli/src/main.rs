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
/// Exit status when the guest reset the machine (`--on-reset exit`).
const EXIT_GUEST_RESET: u8 = 122;
/// Exit status when the guest reported a panic through pvpanic.
const EXIT_GUEST_PANIC: u8 = 123;
/// Exit status when `--timeout` expired (the VM was stopped cleanly).
const EXIT_TIMEOUT: u8 = 124;
/// Exit status when the user typed `Ctrl-a x` on the console.
const EXIT_USER_QUIT: u8 = 125;
/// Exit status base for a stop on a signal: 128 + the signal number, as shells report.
const EXIT_SIGNAL_BASE: u8 = 128;

/// 128 + `signal`, as shells report a death by that signal.
fn signal_status(signal: i32) -> ExitCode {
    ExitCode::from(
        u8::try_from(signal)
            .ok()
            .and_then(|n| EXIT_SIGNAL_BASE.checked_add(n))
            .unwrap_or(EXIT_VMM_ERROR),
    )
}

/// The exit status for `outcome`, with one line on stderr saying why unless the guest
/// chose it (power-off, debug exit) or the user did (`Ctrl-a x`).
fn outcome_status(outcome: VmOutcome) -> ExitCode {
    match outcome {
        VmOutcome::DebugExit(v) => ExitCode::from(v),
        VmOutcome::PowerOff => ExitCode::SUCCESS,
        VmOutcome::Reset => {
            eprintln!("irvmm: the guest reset the machine");
            ExitCode::from(EXIT_GUEST_RESET)
        }
        VmOutcome::Panic => {
            eprintln!("irvmm: the guest panicked (pvpanic)");
            ExitCode::from(EXIT_GUEST_PANIC)
        }
        VmOutcome::Timeout => {
            eprintln!("irvmm: --timeout expired; the VM was stopped");
            ExitCode::from(EXIT_TIMEOUT)
        }
        VmOutcome::UserQuit => ExitCode::from(EXIT_USER_QUIT),
        VmOutcome::Signal(n) => {
            eprintln!("irvmm: stopped on signal {n}");
            signal_status(n)
        }
        VmOutcome::Crash(reason) => {
            eprintln!("irvmm: guest stopped: {reason}");
            ExitCode::from(EXIT_GUEST_CRASH)
        }
    }
}

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
        nets: args.nets,
        console: args.console,
        rng: args.rng,
        pvpanic: args.pvpanic,
        on_reset: args.on_reset,
        timeout: args.timeout,
        halt_poll_ns: args.halt_poll_ns,
    };
    match vmm::run(&config) {
        Ok(outcome) => outcome_status(outcome),
        Err(e) if e.is_usage() => usage_error(&e.to_string()),
        Err(e) => {
            eprintln!("irvmm: error: {e}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}
