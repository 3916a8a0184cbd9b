//! Priming an AP: KVM's one-time work for a vCPU's first entry into the guest, done before
//! the guest runs, without running a guest instruction.
//!
//! # Why
//!
//! The first time KVM enters the guest on a vCPU it fills the vCPU's MMU page caches (tens
//! of page allocations), loads its MMU roots and handles the requests left from its
//! creation, among them a clock update that makes KVM wake every vCPU of the VM 100 ms
//! later. For the boot vCPU that happens when the guest starts, but an AP's first entry
//! comes after the guest's SIPI, in the middle of the guest's AP bring-up, where all of it
//! is paid serially per AP and the wake-ups of all vCPUs land as well. A firmware that ran
//! the APs before the OS (as SeaBIOS does under QEMU) hides this; irvmm has no firmware, so
//! it primes each AP instead.
//!
//! # How
//!
//! The AP is made runnable and entered with a signal pending that KVM_RUN's signal mask
//! (KVM_SET_SIGNAL_MASK) lets through: KVM does everything up to the guest entry, sees the
//! signal and returns EINTR before the first instruction. The signal is blocked in the
//! calling thread's own mask all along, so it is never delivered: it is taken back with
//! `sigtimedwait`, and KVM's signal mask is switched off again. The AP is then put in
//! wait-for-SIPI, its registers untouched.
//!
//! Wait-for-SIPI is where an AP is after power-on (SDM vol. 3, 9.4.1). KVM creates APs in
//! UNINITIALIZED instead, which takes the INIT the guest sends first as a reason to leave
//! KVM_RUN with EAGAIN: one return to user space and re-entry per AP, on top of the
//! wake-up, while the boot vCPU is still sending the others theirs. In wait-for-SIPI, KVM
//! handles the INIT and SIPI in the kernel, as it does for the halted APs a firmware
//! leaves behind. The signal ([`prime_signal`], SIGRTMIN + 1) has
//! a no-op handler, so that even a delivery could not end the process.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::sync::OnceLock;

use kvm_bindings::{kvm_mp_state, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vmm_sys_util::ioctl::{ioctl_with_ptr, ioctl_with_ref};
use vmm_sys_util::ioctl_iow_nr;
use vmm_sys_util::signal::SIGRTMIN;

use super::kick::{install_noop_handler, signal_set};

/// KVM's ioctl type.
const KVMIO: u32 = 0xAE;
// KVM_SET_SIGNAL_MASK: _IOW(KVMIO, 0x8b, struct kvm_signal_mask), the 4-byte header.
ioctl_iow_nr!(
    KVM_SET_SIGNAL_MASK,
    KVMIO,
    0x8b,
    kvm_bindings::kvm_signal_mask
);

/// Size of the kernel's sigset_t on x86-64 (what KVM_SET_SIGNAL_MASK's `len` must be).
const KERNEL_SIGSET_BYTES: u32 = 8;

/// The signal that holds the entry back: the one after the kick signal (SIGRTMIN).
pub fn prime_signal() -> i32 {
    SIGRTMIN() + 1
}

/// Why priming failed.
#[derive(Debug, Error)]
pub enum PrimeError {
    /// A KVM ioctl failed.
    #[error("{op}: {source}")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A signal call failed.
    #[error("{op}: {source}")]
    Signal {
        /// The call.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// KVM_RUN entered the guest or exited for another reason.
    #[error("KVM_RUN did not stop at the pending signal: {0}")]
    NotHeld(String),
}

/// KVM_SET_SIGNAL_MASK's argument: the header and one kernel sigset.
#[repr(C)]
struct SignalMask {
    len: u32,
    sigset: [u8; KERNEL_SIGSET_BYTES as usize],
}

/// Sets (Some) or switches off (None) the signal mask KVM_RUN runs with.
fn set_kvm_signal_mask(fd: &VcpuFd, mask: Option<&libc::sigset_t>) -> Result<(), PrimeError> {
    let ret = match mask {
        Some(set) => {
            let mut arg = SignalMask {
                len: KERNEL_SIGSET_BYTES,
                sigset: [0; KERNEL_SIGSET_BYTES as usize],
            };
            // The kernel's sigset is the first 8 bytes of glibc's 128-byte sigset_t.
            // SAFETY: sigset_t is plain bytes at least 8 long.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (set as *const libc::sigset_t).cast::<u8>(),
                    size_of::<libc::sigset_t>(),
                )
            };
            arg.sigset
                .copy_from_slice(&bytes[..KERNEL_SIGSET_BYTES as usize]);
            // SAFETY: KVM reads the header and `len` bytes after it, all inside `arg`.
            unsafe { ioctl_with_ref(fd, KVM_SET_SIGNAL_MASK(), &arg) }
        }
        // SAFETY: a null argument switches KVM_RUN's signal mask off.
        None => unsafe { ioctl_with_ptr(fd, KVM_SET_SIGNAL_MASK(), std::ptr::null::<u8>()) },
    };
    if ret < 0 {
        return Err(PrimeError::Kvm {
            op: "KVM_SET_SIGNAL_MASK",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn set_mp_state(fd: &VcpuFd, state: u32) -> Result<(), PrimeError> {
    fd.set_mp_state(kvm_mp_state { mp_state: state })
        .map_err(|e| PrimeError::Kvm {
            op: "KVM_SET_MP_STATE",
            source: io::Error::from_raw_os_error(e.errno()),
        })
}

/// The calling thread's signal mask with `signal` added (the previous mask is returned).
fn block(signal: i32) -> Result<libc::sigset_t, PrimeError> {
    let set = signal_set(signal);
    let mut old = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: changing this thread's mask with valid set pointers.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, old.as_mut_ptr()) };
    if ret != 0 {
        return Err(PrimeError::Signal {
            op: "pthread_sigmask",
            source: io::Error::from_raw_os_error(ret),
        });
    }
    // SAFETY: pthread_sigmask succeeded, so it wrote the old mask.
    Ok(unsafe { old.assume_init() })
}

/// Puts the thread's mask back.
fn restore(old: &libc::sigset_t) {
    // SAFETY: setting this thread's mask from a mask it had.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

/// Takes the pending `signal` back (it is blocked, so it waits).
fn take_back(signal: i32) {
    let set = signal_set(signal);
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a one-signal set; a zero timeout never blocks.
    unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
}

/// Installs the no-op handler of [`prime_signal`] (once per process).
fn install_handler() -> Result<(), PrimeError> {
    static INSTALLED: OnceLock<i32> = OnceLock::new();
    install_noop_handler(prime_signal(), &INSTALLED).map_err(|source| PrimeError::Signal {
        op: "sigaction",
        source,
    })
}

/// Primes the AP `fd` (see the module documentation) and leaves it in wait-for-SIPI.
pub fn prime_ap(fd: &mut VcpuFd) -> Result<(), PrimeError> {
    install_handler()?;
    let signal = prime_signal();
    let old = block(signal)?;
    let result = held_entry(fd, signal, &old);
    take_back(signal);
    restore(&old);
    result?;
    set_mp_state(fd, KVM_MP_STATE_INIT_RECEIVED)
}

/// Raises `signal` (blocked here), lets KVM_RUN see it and enters.
fn held_entry(
    fd: &mut VcpuFd,
    signal: i32,
    thread_mask: &libc::sigset_t,
) -> Result<(), PrimeError> {
    let mut run_mask = *thread_mask;
    // SAFETY: removing one signal from an initialised set.
    unsafe { libc::sigdelset(&mut run_mask, signal) };
    let rip_before = rip(fd)?;
    set_mp_state(fd, KVM_MP_STATE_RUNNABLE)?;
    set_kvm_signal_mask(fd, Some(&run_mask))?;
    // SAFETY: a signal to this very thread, which blocks it: it stays pending.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), signal) };
    let result = if ret != 0 {
        Err(PrimeError::Signal {
            op: "tgkill",
            source: io::Error::last_os_error(),
        })
    } else {
        match fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(PrimeError::NotHeld(format!("error {e}"))),
            Ok(exit) => Err(PrimeError::NotHeld(format!("{exit:?}"))),
        }
    };
    let off = set_kvm_signal_mask(fd, None);
    result.and(off)?;
    // Not one instruction ran: the AP is where it was created.
    let rip_after = rip(fd)?;
    if rip_after != rip_before {
        return Err(PrimeError::NotHeld(format!(
            "the AP ran from RIP {rip_before:#x} to {rip_after:#x}"
        )));
    }
    Ok(())
}

fn rip(fd: &VcpuFd) -> Result<u64, PrimeError> {
    fd.get_regs().map(|r| r.rip).map_err(|e| PrimeError::Kvm {
        op: "KVM_GET_REGS",
        source: io::Error::from_raw_os_error(e.errno()),
    })
}
