//! Raw mode for a terminal on standard input, restored on every way out.
//!
//! [`RawTerminal::enter`] saves the terminal's settings and switches it to raw mode
//! (`cfmakeraw`: no line editing, no echo, no signal keys, no output processing), so every
//! key reaches the guest as typed, `Ctrl-c` included. The settings come back when the guard
//! is dropped (every return path of the VMM, including orderly stops on SIGINT/SIGTERM,
//! which irvmm handles as events) and from a panic hook installed with the first guard, so
//! a panicking VMM does not leave the user's shell in raw mode.

use std::os::unix::io::RawFd;
use std::sync::{Mutex, Once};

/// The settings to restore: the terminal and its saved termios.
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);
static HOOK: Once = Once::new();

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

fn get_attr(fd: RawFd) -> std::io::Result<libc::termios> {
    // SAFETY: a zeroed termios is a valid buffer that tcgetattr overwrites entirely.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid, writable termios.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(t)
}

fn set_attr(fd: RawFd, t: &libc::termios) -> std::io::Result<()> {
    // SAFETY: tcsetattr only reads the termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Puts the saved settings back (idempotent; used by the guard and the panic hook).
fn restore_saved() {
    // try_lock: a panic while the lock is held (not expected) must not deadlock the hook.
    let taken = match SAVED.try_lock() {
        Ok(mut saved) => saved.take(),
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().take(),
        Err(std::sync::TryLockError::WouldBlock) => None,
    };
    if let Some((fd, t)) = taken {
        if let Err(e) = set_attr(fd, &t) {
            log::warn!("cannot restore the terminal settings: {e}");
        }
    }
}

/// A terminal in raw mode; its settings are restored on drop.
#[derive(Debug)]
pub struct RawTerminal {
    fd: RawFd,
}

impl RawTerminal {
    /// Switches the terminal at `fd` to raw mode; `None` when `fd` is not a terminal.
    pub fn enter(fd: RawFd) -> std::io::Result<Option<RawTerminal>> {
        if !is_terminal(fd) {
            return Ok(None);
        }
        let saved = get_attr(fd)?;
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_saved();
                previous(info);
            }));
        });
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some((fd, saved));
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the termios it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        if let Err(e) = set_attr(fd, &raw) {
            restore_saved();
            return Err(e);
        }
        Ok(Some(RawTerminal { fd }))
    }

    /// The terminal's descriptor.
    pub fn fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_saved();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_a_terminal_is_left_alone() {
        let (r, w) = {
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for the two descriptors.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            (fds[0], fds[1])
        };
        assert!(!is_terminal(r));
        assert!(RawTerminal::enter(r).unwrap().is_none());
        // SAFETY: both descriptors were opened above and are closed once.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    }

    #[test]
    fn raw_mode_on_a_pty_is_restored_on_drop_and_on_panic() {
        // SAFETY: posix_openpt/grantpt/unlockpt/ptsname are used as documented; the names
        // and descriptors are checked before use.
        let (master, slave) = unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            if master < 0 {
                eprintln!("no pty available; skipped");
                return;
            }
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let name = libc::ptsname(master);
            assert!(!name.is_null());
            let slave = libc::open(name, libc::O_RDWR | libc::O_NOCTTY);
            assert!(slave >= 0);
            (master, slave)
        };
        let before = get_attr(slave).unwrap();
        assert_ne!(before.c_lflag & libc::ICANON, 0);
        {
            let raw = RawTerminal::enter(slave)
                .unwrap()
                .expect("a pty is a terminal");
            assert_eq!(raw.fd(), slave);
            let now = get_attr(slave).unwrap();
            assert_eq!(now.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
            assert_eq!(now.c_oflag & libc::OPOST, 0);
        }
        let after = get_attr(slave).unwrap();
        assert_eq!(after.c_lflag, before.c_lflag);
        assert_eq!(after.c_iflag, before.c_iflag);
        assert_eq!(after.c_oflag, before.c_oflag);

        // A panic while raw: the hook restores the terminal before the guard is dropped.
        let raw = RawTerminal::enter(slave)
            .unwrap()
            .expect("a pty is a terminal");
        assert_eq!(get_attr(slave).unwrap().c_lflag & libc::ICANON, 0);
        let caught = std::panic::catch_unwind(|| panic!("VMM bug"));
        assert!(caught.is_err());
        assert_eq!(get_attr(slave).unwrap().c_lflag, before.c_lflag);
        drop(raw);
        assert_eq!(get_attr(slave).unwrap().c_lflag, before.c_lflag);
        // SAFETY: both descriptors were opened above and are closed once.
        unsafe {
            libc::close(slave);
            libc::close(master);
        }
    }
}
