//! The VMM's watch over irqfd vectors KVM must not deliver on its own: masked vectors
//! (their pending bit is the device model's), vectors whose translation is blocked (the
//! fault is recorded when the device fires, as on hardware), and direct vectors whose
//! message the VMM reads from the device's table. One thread, one epoll set; the router
//! moves an eventfd between KVM (`KVM_IRQFD`) and this set.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Token of the stop eventfd (no source handle reaches it).
const STOP: u64 = u64::MAX;
/// Events handled per `epoll_wait`.
const BATCH: usize = 64;

/// The watcher: an epoll set and the thread that serves it. Dropping it stops the thread.
pub(crate) struct Watcher {
    epoll: Arc<Epoll>,
    stop: Arc<EventFd>,
}

impl Watcher {
    /// Starts the thread; `on_fire(handle)` runs for each signalled eventfd (it must read
    /// the eventfd) and returns false when the watcher should stop.
    pub(crate) fn start<F>(on_fire: F) -> io::Result<Self>
    where
        F: Fn(u32) -> bool + Send + 'static,
    {
        let epoll = Arc::new(Epoll::new()?);
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        let (e, s) = (epoll.clone(), stop.clone());
        thread::Builder::new()
            .name("irq-watch".into())
            .stack_size(256 << 10)
            .spawn(move || serve(&e, &s, on_fire))?;
        Ok(Watcher { epoll, stop })
    }

    /// Watches `fd` for source `handle`.
    pub(crate) fn watch(&self, fd: &EventFd, handle: u32) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, u64::from(handle)),
        )
    }

    /// Stops watching `fd`.
    pub(crate) fn unwatch(&self, fd: &EventFd) -> io::Result<()> {
        self.unwatch_raw(fd.as_raw_fd())
    }

    /// Watches a socket for its peer hanging up (not for data), reporting `token`.
    pub(crate) fn watch_hangup(&self, fd: RawFd, token: u32) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::READ_HANG_UP, u64::from(token)),
        )
    }

    /// Stops watching `fd`.
    pub(crate) fn unwatch_raw(&self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            log::error!("interrupt watcher: cannot stop: {e}");
        }
    }
}

fn serve<F: Fn(u32) -> bool>(epoll: &Epoll, stop: &EventFd, on_fire: F) {
    let mut events = vec![EpollEvent::default(); BATCH];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!(
                    "interrupt watcher: epoll_wait: {e}; detached vectors are no longer served"
                );
                return;
            }
        };
        for ev in events.iter().take(n) {
            let token = ev.data();
            if token == STOP {
                let _ = stop.read();
                return;
            }
            let Ok(handle) = u32::try_from(token) else {
                continue;
            };
            if !on_fire(handle) {
                return;
            }
        }
    }
}
