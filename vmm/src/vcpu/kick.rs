//! Kicking a vCPU thread out of `KVM_RUN`: a real-time signal plus the vCPU's
//! `kvm_run.immediate_exit` byte.
//!
//! # The protocol
//!
//! The manager wants a vCPU thread to look at a new request (pause, stop). The thread runs
//! `loop { read the request; KVM_RUN; if it returned EINTR, clear immediate_exit }`, the
//! manager
//! `write the request; set immediate_exit; send the kick signal`, every step a sequentially
//! consistent atomic (the signal is a system call). Then the thread cannot miss the request:
//! - it reads the request after the manager wrote it: it sees it;
//! - it read the request before: it cleared `immediate_exit` before that, so before the
//!   manager set it, and the flag stays set until the thread's next `KVM_RUN` returns.
//!   KVM reads the flag when `KVM_RUN` starts: if the manager set it by then, `KVM_RUN`
//!   returns `EINTR` at once without entering the guest; if not, the thread is already
//!   inside `KVM_RUN` when the signal (sent after the flag) arrives, and KVM leaves the guest
//!   (or a halted vCPU's wait) with `EINTR` for a pending signal. A signal that lands while
//!   the thread is in user space runs the no-op handler and is gone, which is fine: the flag
//!   is still set for the next entry.
//!
//! Only the vCPU thread clears the flag, and only between a return from `KVM_RUN` and its
//! next reading of the request, so a kick is never lost by a clear that races with it. It
//! clears it only after an interrupted entry: a flag still set when another exit overtook
//! the kick (or set before the first entry) only makes the next entry return at once, and
//! a vCPU that is never kicked never touches its `kvm_run` page from user space, which keeps
//! the pages of halted APs out of the VMM's resident memory.
//!
//! The handler does nothing: the signal exists only to make the kernel leave `KVM_RUN`. It is
//! installed with `SA_RESTART` so that a kick landing while a vCPU thread is in another
//! system call (a device model writing serial output, talking to a vfio-user server) restarts
//! that call instead of failing it with `EINTR`; `KVM_RUN` itself is never restarted (KVM
//! returns `EINTR`, not a restartable code).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use thiserror::Error;
use vmm_sys_util::signal::SIGRTMIN;

/// Errors setting up the kick signal.
#[derive(Debug, Error)]
pub enum KickError {
    /// `sigaction` failed.
    #[error("cannot install the vCPU kick signal handler (signal {signal}): {source}")]
    Handler {
        /// The signal.
        signal: i32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `pthread_sigmask` failed.
    #[error("cannot unblock the vCPU kick signal: {0}")]
    Unblock(std::io::Error),
}

/// The real-time signal that kicks vCPU threads (the first one, `SIGRTMIN`).
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing: the signal only makes the kernel leave KVM_RUN.
}

/// The set holding `signal` alone.
pub(super) fn signal_set(signal: i32) -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is valid storage; sigemptyset initialises it and sigaddset
    // adds one valid signal number.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        set
    }
}

/// Installs a no-op handler (`SA_RESTART`) for `signal` once per process: `installed`
/// remembers the first attempt's result (0, or the `sigaction` errno), which later calls
/// repeat. The vCPU signals exist only to make the kernel leave `KVM_RUN`; a no-op handler
/// means a delivery never takes the default action (ending the process).
pub(super) fn install_noop_handler(
    signal: i32,
    installed: &'static OnceLock<i32>,
) -> std::io::Result<()> {
    let errno = *installed.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; it is filled in
        // below before use.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_signal as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: `act.sa_mask` is a valid sigset_t to initialize; the handler is
        // async-signal-safe (it does nothing) and lives forever; the old action is not
        // wanted (null).
        let rc = unsafe {
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(signal, &act, std::ptr::null_mut())
        };
        if rc == 0 {
            0
        } else {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL)
        }
    });
    if errno == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(errno))
    }
}

/// Installs the no-op kick handler (once per process; later calls repeat the first result).
pub fn install_handler() -> Result<(), KickError> {
    static INSTALLED: OnceLock<i32> = OnceLock::new();
    let signal = kick_signal();
    install_noop_handler(signal, &INSTALLED).map_err(|source| KickError::Handler { signal, source })
}

/// Unblocks the kick signal in the calling thread (threads inherit their creator's mask, and
/// a blocked kick cannot interrupt `KVM_RUN`).
pub fn unblock_in_this_thread() -> Result<(), KickError> {
    let set = signal_set(kick_signal());
    // SAFETY: pthread_sigmask only changes the calling thread's mask; no old mask is wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(KickError::Unblock(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// A vCPU's `immediate_exit` flag, reachable from the manager's thread.
///
/// For a KVM vCPU it is the byte in the vCPU's `kvm_run` page, which KVM reads at every
/// `KVM_RUN` entry. Both the manager and the vCPU thread access it only with atomic
/// operations.
#[derive(Clone, Copy, Debug)]
pub struct ImmediateExit(NonNull<u8>);

// SAFETY: the flag is only ever accessed atomically (see `set`, `clear`, `get`), and the
// creator of an `ImmediateExit` guarantees the byte outlives every copy (`new`'s contract).
unsafe impl Send for ImmediateExit {}
// SAFETY: as above.
unsafe impl Sync for ImmediateExit {}

impl ImmediateExit {
    /// Wraps the flag at `byte`.
    ///
    /// # Safety
    ///
    /// `byte` must stay valid (mapped, and not freed) for as long as any copy of the returned
    /// value is used, and nothing may access it other than atomically while copies exist
    /// (KVM's own read at `KVM_RUN` entry is a single byte load, as an atomic load is).
    pub unsafe fn new(byte: NonNull<u8>) -> Self {
        ImmediateExit(byte)
    }

    fn atomic(&self) -> &AtomicU8 {
        // SAFETY: per `new`'s contract the byte is valid and only accessed atomically;
        // AtomicU8 has the size and alignment of u8.
        unsafe { AtomicU8::from_ptr(self.0.as_ptr()) }
    }

    /// Sets the flag: the vCPU's next `KVM_RUN` returns `EINTR` without entering the guest.
    pub fn set(&self) {
        self.atomic().store(1, Ordering::SeqCst);
    }

    /// Clears the flag (the vCPU thread, before it reads its requests).
    pub fn clear(&self) {
        self.atomic().store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.atomic().load(Ordering::SeqCst) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_round_trip() {
        let mut byte = Box::new(0u8);
        // SAFETY: the box outlives `flag`, which is only used in this test.
        let flag = unsafe { ImmediateExit::new(NonNull::from(&mut *byte)) };
        assert!(!flag.is_set());
        flag.set();
        assert!(flag.is_set());
        flag.clear();
        assert!(!flag.is_set());
        drop(byte);
    }

    #[test]
    fn handler_installs_once() {
        assert!(install_handler().is_ok());
        assert!(install_handler().is_ok());
        assert!(kick_signal() >= libc::SIGRTMIN());
        assert!(unblock_in_this_thread().is_ok());
    }
}
