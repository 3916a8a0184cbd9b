//! What virtio-net needs of the host side of the link, one queue per queue pair: frames in
//! and out (each led by the 12-byte virtio-net header), the receive offloads, which queues
//! the kernel may steer frames to, and the file descriptors to wait on. [`TapQueues`] is
//! the real one; tests and the fuzzer plug in their own.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use libc::c_uint;

use super::tap::Tap;

/// The host side of a virtio-net device.
pub trait NetBackend: Send + 'static {
    /// Queues (one per virtqueue pair).
    fn queues(&self) -> usize;

    /// Reads one frame from queue `q` into `buf`: `Ok(None)` when none is waiting.
    fn recv(&mut self, q: usize, buf: &mut [u8]) -> io::Result<Option<usize>>;

    /// Writes one frame to queue `q`: `Ok(false)` when it cannot take it now (the caller
    /// waits for the queue to become writable).
    fn send(&mut self, q: usize, frame: &[u8]) -> io::Result<bool>;

    /// The guest's receive offloads as `TUN_F_*` flags.
    fn set_offloads(&mut self, flags: c_uint) -> io::Result<()>;

    /// Lets the kernel steer frames to queue `q` (`on`) or not.
    fn set_queue_enabled(&mut self, q: usize, on: bool) -> io::Result<()>;

    /// Queue `q`'s file descriptor, watched by the device's I/O thread.
    fn fds(&self) -> Vec<RawFd>;
}

/// The queues of one tap.
#[derive(Debug)]
pub struct TapQueues {
    taps: Vec<Tap>,
    /// Which queues are attached now (multi-queue taps only).
    attached: Vec<bool>,
}

impl TapQueues {
    /// The opened queues, all attached.
    pub fn new(taps: Vec<Tap>) -> Self {
        let attached = vec![true; taps.len()];
        TapQueues { taps, attached }
    }

    fn tap(&self, q: usize) -> io::Result<&Tap> {
        self.taps
            .get(q)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no tap queue {q}")))
    }
}

impl NetBackend for TapQueues {
    fn queues(&self) -> usize {
        self.taps.len()
    }

    fn recv(&mut self, q: usize, buf: &mut [u8]) -> io::Result<Option<usize>> {
        self.tap(q)?.recv(buf)
    }

    fn send(&mut self, q: usize, frame: &[u8]) -> io::Result<bool> {
        self.tap(q)?.send(frame)
    }

    fn set_offloads(&mut self, flags: c_uint) -> io::Result<()> {
        for t in &self.taps {
            t.set_offload(flags)?;
        }
        Ok(())
    }

    fn set_queue_enabled(&mut self, q: usize, on: bool) -> io::Result<()> {
        // A single-queue tap has nothing to steer.
        if self.taps.len() < 2 || self.attached.get(q) == Some(&on) {
            return Ok(());
        }
        self.tap(q)?.set_queue_attached(on)?;
        if let Some(a) = self.attached.get_mut(q) {
            *a = on;
        }
        Ok(())
    }

    fn fds(&self) -> Vec<RawFd> {
        self.taps.iter().map(AsRawFd::as_raw_fd).collect()
    }
}
