//! VM errors, and the translation of lower layers' errors into usage errors that name the
//! flag to fix.

use std::path::PathBuf;

use thiserror::Error;

use crate::acpi;
use crate::boot::BootError;
use crate::bus::BusError;
use crate::cpuid::CpuidError;
use crate::vm::VmConfig;

/// VM errors. [`Error::Usage`] means the user's input was refused before anything started.
#[derive(Debug, Error)]
pub enum Error {
    /// Bad user input, detected before the VM existed. `flag` names the option to fix.
    #[error("{flag}: {message}")]
    Usage {
        /// The command-line flag (or resource) at fault.
        flag: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A KVM call failed.
    #[error("{what}: {source}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be created.
    #[error("guest memory: {0}")]
    Memory(#[from] crate::memory::MemoryError),
    /// Boot data could not be written.
    #[error("boot: {0}")]
    Boot(BootError),
    /// ACPI tables could not be built.
    #[error("ACPI: {0}")]
    Acpi(#[from] acpi::AcpiError),
    /// Device wiring failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// Serial output file.
    #[error("--serial: cannot open {path}: {source}")]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The platform could not be assembled.
    #[error("{0}")]
    Platform(String),
    /// The interrupt router failed.
    #[error("interrupts: {0}")]
    Router(#[from] crate::interrupt::RouterError),
    /// KVM_SET_MSRS set fewer MSRs than asked.
    #[error("KVM_SET_MSRS set {set} of {asked} boot MSRs")]
    Msrs {
        /// MSRs set.
        set: usize,
        /// MSRs asked for.
        asked: usize,
    },
    /// The vCPU threads could not be created or driven.
    #[error("vCPUs: {0}")]
    Cpus(#[from] crate::vcpu::manager::ManagerError),
    /// A host resource of the event loop (epoll, eventfd, signalfd, standard input).
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The VMM failed while the VM ran (a vCPU thread panicked, ...).
    #[error("{0}")]
    Failure(String),
}

impl Error {
    /// True when the error is the user's input (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage { .. })
    }

    pub(crate) fn usage(flag: &'static str, message: impl Into<String>) -> Self {
        Error::Usage {
            flag,
            message: message.into(),
        }
    }

    pub(crate) fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
        move |source| Error::Io { what, source }
    }

    pub(crate) fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { what, source }
    }
}

/// A boot error as the usage error of the flag that caused it (kernel, initramfs, cmdline),
/// or as a VMM failure when it is not the user's input.
pub(crate) fn boot_usage(e: BootError, config: &VmConfig) -> Error {
    let flag = match &e {
        BootError::Read { path, .. } | BootError::NotAFile(path)
            if Some(path) == config.initramfs.as_ref() =>
        {
            "--initramfs"
        }
        BootError::Read { .. }
        | BootError::NotAFile(_)
        | BootError::Empty(_)
        | BootError::UnknownFormat(_)
        | BootError::NoPvhEntry(_)
        | BootError::Loader { .. }
        | BootError::BadBzImage { .. } => "--kernel",
        BootError::Cmdline(_) => "--cmdline",
        BootError::InitramfsTooLarge { .. } => "--initramfs",
        BootError::GuestMemory { .. } => return Error::Boot(e),
    };
    let mut message = e.to_string();
    if let BootError::InitramfsTooLarge { .. } = e {
        message.push_str(" (give the guest more --memory)");
    }
    Error::usage(flag, message)
}

/// A CPUID template error: the `--cpu-features` the user gave.
pub(crate) fn cpuid_usage(e: CpuidError) -> Error {
    Error::usage("--cpu-features", e.to_string())
}
