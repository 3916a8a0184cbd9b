//! Checks of the configuration against the host, before anything is built.

use kvm_ioctls::{Cap, Kvm};

use crate::memory::MIN_MEMORY;
use crate::vm::{ApicMode, Error, IommuKind, ResetAction, VmConfig};

/// Whether the vCPUs start in x2APIC mode.
fn x2apic_at_boot(config: &VmConfig, max_apic_id: u32) -> Result<bool, Error> {
    let x2apic_hidden = config
        .cpu_features
        .iter()
        .any(|o| !o.enable && o.feature.name == "x2apic");
    let needed = max_apic_id >= XAPIC_MAX_ID;
    let on = match config.apic_mode {
        ApicMode::Auto => needed,
        ApicMode::X2Apic => true,
        ApicMode::XApic if needed => {
            return Err(Error::usage(
                "--apic-mode",
                format!("xapic cannot address APIC ID {max_apic_id} (xAPIC IDs stop at 254); use x2apic or auto"),
            ))
        }
        ApicMode::XApic => false,
    };
    if on && x2apic_hidden {
        return Err(Error::usage(
            "--cpu-features",
            "-x2apic conflicts with starting in x2APIC mode (APIC IDs above 254 or --apic-mode x2apic)",
        ));
    }
    Ok(on)
}

/// Highest APIC ID an xAPIC can address (0xff is broadcast).
const XAPIC_MAX_ID: u32 = 0xff;

/// Host RAM in bytes, to refuse guests that could never be backed.
fn host_memory() -> Option<u64> {
    // SAFETY: sysconf only reads system configuration values.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

/// Checks the configuration against the host's KVM; the first step of building a VM.
/// Returns whether the vCPUs start in x2APIC mode.
pub(crate) fn preflight(config: &VmConfig, kvm: &Kvm) -> Result<bool, Error> {
    let cpus = config.topology.cpus();
    let max = kvm.get_max_vcpus();
    if cpus as usize > max {
        return Err(Error::usage(
            "--cpus",
            format!("{cpus} vCPUs asked for, but this host's KVM allows at most {max}"),
        ));
    }
    let max_id = config.topology.apic_ids().into_iter().max().unwrap_or(0);
    let x2apic = x2apic_at_boot(config, max_id)?;
    let id_limit = kvm.check_extension_int(Cap::MaxVcpuId).max(max as i32) as u64;
    if u64::from(max_id) >= id_limit {
        return Err(Error::usage(
            "--cpus",
            format!("the topology needs APIC ID {max_id}, but this host's KVM allows IDs below {id_limit}; use fewer sockets or a power-of-two core count"),
        ));
    }
    if config.memory < MIN_MEMORY {
        return Err(Error::usage(
            "--memory",
            format!(
                "{} bytes is too small; give at least {}M",
                config.memory,
                MIN_MEMORY >> 20
            ),
        ));
    }
    if let Some(host) = host_memory() {
        if config.memory > host {
            return Err(Error::usage(
                "--memory",
                format!(
                    "{} MiB asked for, but the host has only {} MiB of RAM",
                    config.memory >> 20,
                    host >> 20
                ),
            ));
        }
    }
    if max_id > 255 && !config.ext_dest_id && config.iommu == IommuKind::None {
        return Err(Error::usage(
            "--cpus",
            format!("APIC IDs up to {max_id} need interrupt remapping (--iommu intel or --iommu amd) or the extended destination ID (--ext-dest-id on) to receive device interrupts"),
        ));
    }
    if config.on_reset == ResetAction::Restart
        && config
            .devices
            .iter()
            .any(|d| matches!(d, crate::vm::DeviceConfig::Passthrough(_)))
    {
        return Err(Error::usage(
            "--on-reset",
            "restart cannot be combined with passed-through devices: a restart rebuilds the VM, and irvmm does not reset and re-open a passed-through device; use --on-reset exit",
        ));
    }
    Ok(x2apic)
}
