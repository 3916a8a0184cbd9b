//! The signals that stop a VM in order (SIGINT, SIGTERM, SIGHUP), received as events.
//!
//! [`StopSignals::block`] blocks them in the calling thread, which must be the VMM's main
//! thread before it has created any other (threads inherit the mask, so no thread is ever
//! interrupted by them), and opens a signalfd the VM's event loop waits on. The signals stay
//! blocked for the life of the process: the VMM is then shutting down, and a second signal
//! must not kill it halfway through restoring the terminal.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The signals that stop the VM: interrupt, termination and hang-up (terminal closed).
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A signalfd for [`STOP_SIGNALS`].
#[derive(Debug)]
pub struct StopSignals {
    fd: OwnedFd,
}

impl StopSignals {
    /// Blocks [`STOP_SIGNALS`] in the calling thread and opens a signalfd for them.
    pub fn block() -> std::io::Result<StopSignals> {
        // SAFETY: the set is initialized by sigemptyset before use; pthread_sigmask changes
        // only this thread's mask; signalfd creates a new descriptor (checked below) that
        // only reads the set.
        let fd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in STOP_SIGNALS {
                libc::sigaddset(&mut set, s);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(StopSignals { fd })
    }

    /// The next received signal, if one is pending.
    pub fn read(&self) -> Option<i32> {
        // SAFETY: a zeroed signalfd_siginfo is a valid buffer of the size read asks for.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which has that size.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_read_from_the_fd() {
        // Runs on a thread of its own: the mask change stays there.
        std::thread::spawn(|| {
            let s = StopSignals::block().unwrap();
            assert_eq!(s.read(), None);
            // SAFETY: sends SIGHUP to this thread only, which has it blocked.
            unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
            assert_eq!(s.read(), Some(libc::SIGHUP));
            assert_eq!(s.read(), None);
        })
        .join()
        .unwrap();
    }
}
