//! The receive side's input: a bounded byte queue between whoever owns the host's input
//! (irvmm's console, on its event loop: standard input, raw mode and escape keys are its
//! business) and the device's I/O thread, which copies the bytes into the buffers the
//! driver offers.
//!
//! Two eventfds carry the wake-ups, so neither side polls: [`ConsoleInput::push`] signals
//! the I/O thread that there are bytes, and the I/O thread signals
//! [`ConsoleInput::room_event`] whenever it took some, so the producer can push what it
//! holds back. Nothing here blocks: a full queue takes fewer bytes than offered, and the
//! producer decides what to do with the rest (keep it, leave its source unread, drop it).
//! The queue's lock is never held while guest memory is touched.

use std::collections::VecDeque;
use std::io;
use std::sync::{Mutex, MutexGuard};

use log::debug;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Bytes a console's input queue holds by default.
pub const INPUT_CAPACITY: usize = 4096;

/// Bytes on their way to the guest's receive queue.
#[derive(Debug)]
pub struct ConsoleInput {
    bytes: Mutex<VecDeque<u8>>,
    capacity: usize,
    /// Signalled by the producer: there are bytes.
    ready: EventFd,
    /// Signalled by the device: it took bytes.
    room: EventFd,
}

fn signal(fd: &EventFd, what: &str) {
    // A full counter (never in practice) still leaves the eventfd readable.
    if let Err(e) = fd.write(1) {
        debug!("console input: {what} event lost: {e}");
    }
}

impl ConsoleInput {
    /// An empty queue holding at most `capacity` bytes (at least one).
    pub fn new(capacity: usize) -> io::Result<Self> {
        Ok(ConsoleInput {
            bytes: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            ready: EventFd::new(EFD_NONBLOCK)?,
            room: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<u8>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the longest prefix of `bytes` there is room for and wakes the device;
    /// returns its length (0 when the queue is full).
    pub fn push(&self, bytes: &[u8]) -> usize {
        let taken = {
            let mut q = self.lock();
            let n = bytes.len().min(self.capacity.saturating_sub(q.len()));
            q.extend(bytes.iter().take(n));
            n
        };
        if taken > 0 {
            signal(&self.ready, "ready");
        }
        taken
    }

    /// Bytes waiting for the guest.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no byte waits for the guest.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Readable once the device took bytes (after the queue was full, there is room
    /// again); the producer reads it to reset it.
    pub fn room_event(&self) -> &EventFd {
        &self.room
    }

    /// Readable once there are new bytes; the device's I/O thread watches it.
    pub(crate) fn ready_event(&self) -> &EventFd {
        &self.ready
    }

    /// Wakes the device as if bytes had arrived (it stopped with input and buffers left).
    pub(crate) fn wake(&self) {
        signal(&self.ready, "ready");
    }

    /// Copies up to `max` of the oldest bytes into `out` (cleared first), leaving them
    /// queued: only the device takes bytes out, so they are still the oldest when it
    /// [`ConsoleInput::consume`]s what it delivered.
    pub(crate) fn peek(&self, out: &mut Vec<u8>, max: usize) {
        out.clear();
        out.extend(self.lock().iter().take(max));
    }

    /// Drops the `n` oldest bytes (delivered to the guest) and tells the producer.
    pub(crate) fn consume(&self, n: usize) {
        if n == 0 {
            return;
        }
        {
            let mut q = self.lock();
            let n = n.min(q.len());
            q.drain(..n);
        }
        signal(&self.room, "room");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_takes_what_fits_and_signals() {
        let input = ConsoleInput::new(4).unwrap();
        assert!(input.ready_event().read().is_err(), "nothing yet");
        assert_eq!(input.push(b"abc"), 3);
        assert_eq!(input.push(b"\x01ef"), 1);
        assert_eq!(input.push(b"g"), 0);
        assert_eq!(input.len(), 4);
        assert!(input.ready_event().read().is_ok());

        let mut out = Vec::new();
        input.peek(&mut out, 2);
        assert_eq!(out, b"ab");
        assert_eq!(input.len(), 4, "peeking takes nothing");
        assert!(input.room_event().read().is_err());
        input.consume(2);
        assert!(input.room_event().read().is_ok());
        input.peek(&mut out, 10);
        assert_eq!(out, b"c\x01");
        input.consume(10);
        assert!(input.is_empty());
        assert_eq!(input.push(b""), 0);
        assert!(input.ready_event().read().is_err(), "no bytes, no wake-up");
    }
}
