//! virtio-net's I/O-thread side: queue pair `p` (receiveq `2p`, transmitq `2p + 1`) on
//! back-end queue `p`, the control queue last.
//!
//! Back-end queue `p` is watched for readability while the device runs, the pair is in use
//! and the guest has receive buffers; for writability while a frame waits to be sent.
//! State per pair: the frame read but not yet delivered (it waits for buffers) and whether
//! transmission waits for the tap.

use std::sync::atomic::Ordering;

use log::{debug, info, warn};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::QueueT;

use super::backend::NetBackend;
use super::ctrl::{self, Command};
use super::offload::{fix_rx, tap_offloads, GUEST_OFFLOADS};
use super::rx::{deliver, Delivery};
use super::tx::{transmit, TxCounts, TxEnd, TX_FRAME_MAX};
use crate::spec::feature;
use crate::worker::{drain_queue, Activation, DeviceError, Interest, QueueHandler};

/// Largest frame the tap hands over: the header, a 64 KiB segment, Ethernet and VLAN
/// headers.
pub const RX_FRAME_MAX: usize = TX_FRAME_MAX;

/// Frame counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx: u64,
    /// Frames from the tap dropped (too large, offloads the guest did not take, buffers
    /// outside RAM).
    pub rx_dropped: u64,
    /// Frames written to the tap.
    pub tx: u64,
    /// Frames from the guest dropped.
    pub tx_dropped: u64,
}

/// One queue pair's receive state.
#[derive(Debug)]
struct RxPair {
    buf: Vec<u8>,
    /// Length of the frame in `buf` waiting for buffers.
    pending: Option<usize>,
    /// The guest has no buffers: the tap is not watched until it adds some.
    blocked: bool,
}

/// The handler of a virtio-net device over back end `B`.
pub struct NetHandler<B: NetBackend> {
    name: String,
    backend: B,
    pairs: usize,
    features: u64,
    /// Receive offloads in force (feature bits).
    offloads: u64,
    running: bool,
    /// Pairs the driver uses.
    active_pairs: usize,
    rx: Vec<RxPair>,
    tx_blocked: Vec<bool>,
    tx_buf: Vec<u8>,
    rx_dropped: u64,
    rx_delivered: u64,
    tx: TxCounts,
}

impl<B: NetBackend> NetHandler<B> {
    /// A handler for `pairs` queue pairs over `backend` (which has as many queues).
    pub fn new(name: String, backend: B, pairs: usize) -> Self {
        NetHandler {
            name,
            backend,
            pairs,
            features: 0,
            offloads: 0,
            running: false,
            active_pairs: 0,
            rx: (0..pairs)
                .map(|_| RxPair {
                    buf: vec![0; RX_FRAME_MAX],
                    pending: None,
                    blocked: false,
                })
                .collect(),
            tx_blocked: vec![false; pairs],
            tx_buf: vec![0; TX_FRAME_MAX],
            rx_dropped: 0,
            rx_delivered: 0,
            tx: TxCounts::default(),
        }
    }

    /// Frame counts so far.
    pub fn stats(&self) -> NetStats {
        NetStats {
            rx: self.rx_delivered,
            rx_dropped: self.rx_dropped,
            tx: self.tx.sent,
            tx_dropped: self.tx.dropped,
        }
    }

    /// The back end.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Index of the control queue.
    fn ctrl_queue(&self) -> usize {
        2 * self.pairs
    }

    /// Sets the tap's receive offloads to `offloads` (feature bits).
    fn apply_offloads(&mut self, offloads: u64) -> bool {
        match self.backend.set_offloads(tap_offloads(offloads)) {
            Ok(()) => {
                self.offloads = offloads;
                true
            }
            Err(e) => {
                warn!("{}: setting the tap's offloads: {e}", self.name);
                false
            }
        }
    }

    /// Uses the first `n` pairs: the back end steers frames to them only.
    fn use_pairs(&mut self, n: usize) -> bool {
        let mut ok = true;
        for q in 0..self.pairs {
            if let Err(e) = self.backend.set_queue_enabled(q, q < n) {
                warn!("{}: tap queue {q}: {e}", self.name);
                ok = false;
            }
        }
        for rx in self.rx.iter_mut().skip(n) {
            rx.pending = None;
        }
        self.active_pairs = n;
        ok
    }

    /// Moves frames from back-end queue `p` into receiveq `2p` until the back end has none
    /// left, the guest has no buffers, or a ring's worth went in.
    fn receive(&mut self, p: usize, active: &mut Activation) -> Result<(), DeviceError> {
        let index = 2 * p;
        let mergeable = self.features & feature(VIRTIO_NET_F_MRG_RXBUF) != 0;
        let mem = active.mem.clone();
        let Some(rx) = self.rx.get_mut(p) else {
            return Ok(());
        };
        let Some(Some(queue)) = active.queues.get_mut(index) else {
            // The driver did not enable this receiveq: leave frames in the tap.
            rx.blocked = true;
            return Ok(());
        };
        let err = |source| DeviceError::Queue {
            queue: index,
            source,
        };
        let mut used = false;
        for _ in 0..queue.size() {
            let len = match rx.pending {
                Some(len) => len,
                None => match self.backend.recv(p, &mut rx.buf) {
                    Ok(Some(len)) => {
                        let frame = rx.buf.get_mut(..len).unwrap_or_default();
                        if let Err(e) = fix_rx(frame, self.offloads) {
                            debug!("{} rx {p}: dropped: {e}", self.name);
                            self.rx_dropped += 1;
                            continue;
                        }
                        len
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!("{} rx {p}: reading the tap: {e}", self.name);
                        break;
                    }
                },
            };
            let seen = queue.avail_idx(&mem, Ordering::Acquire).map_err(err)?;
            let frame = rx.buf.get_mut(..len).unwrap_or_default();
            let out = deliver(queue, &mem, frame, mergeable).map_err(err)?;
            used |= out.used;
            match out.delivery {
                Delivery::Delivered => {
                    rx.pending = None;
                    self.rx_delivered += 1;
                }
                Delivery::Dropped => {
                    rx.pending = None;
                    self.rx_dropped += 1;
                }
                Delivery::NoBuffers => {
                    rx.pending = Some(len);
                    // Ask for a kick when buffers come; they may have come already.
                    queue.enable_notification(&mem).map_err(err)?;
                    if queue.avail_idx(&mem, Ordering::Acquire).map_err(err)? != seen {
                        continue;
                    }
                    rx.blocked = true;
                    break;
                }
            }
        }
        if used {
            active.notify(index);
        }
        Ok(())
    }

    /// Sends what transmitq `2p + 1` holds; true when work is left.
    fn transmit(&mut self, p: usize, active: &mut Activation) -> Result<bool, DeviceError> {
        if self.tx_blocked.get(p) != Some(&false) {
            return Ok(false);
        }
        let end = transmit(
            2 * p + 1,
            p,
            active,
            &mut self.backend,
            &mut self.tx_buf,
            &mut self.tx,
        )?;
        if end == TxEnd::Blocked {
            if let Some(b) = self.tx_blocked.get_mut(p) {
                *b = true;
            }
        }
        Ok(end == TxEnd::More)
    }

    /// Serves the control queue.
    fn control(&mut self, active: &mut Activation) -> Result<bool, DeviceError> {
        let index = self.ctrl_queue();
        let (pairs, features) = (self.pairs, self.features);
        let (used, more) = drain_queue(index, active, |segs, mem| {
            ctrl::serve(segs, mem, pairs, features, |cmd| match cmd {
                Command::SetPairs(n) => {
                    info!("{}: {n} queue pair(s) in use", self.name);
                    self.use_pairs(usize::from(n))
                }
                Command::SetOffloads(o) => {
                    debug!("{}: receive offloads {o:#x}", self.name);
                    self.apply_offloads(o)
                }
                Command::Unsupported { .. } | Command::Malformed => false,
            })
        })?;
        if used {
            active.notify(index);
        }
        Ok(more)
    }
}

impl<B: NetBackend> QueueHandler for NetHandler<B> {
    fn name(&self) -> &str {
        &self.name
    }

    fn activate(&mut self, features: u64) {
        self.features = features;
        self.apply_offloads(features & GUEST_OFFLOADS);
        self.use_pairs(1);
        for rx in &mut self.rx {
            rx.blocked = false;
        }
        self.running = true;
    }

    fn process_queue(
        &mut self,
        index: usize,
        active: &mut Activation,
    ) -> Result<bool, DeviceError> {
        if index == self.ctrl_queue() {
            return self.control(active);
        }
        let p = index / 2;
        if p >= self.pairs {
            return Ok(false);
        }
        if index.is_multiple_of(2) {
            if let Some(rx) = self.rx.get_mut(p) {
                rx.blocked = false;
            }
            if p < self.active_pairs {
                self.receive(p, active)?;
            }
            Ok(false)
        } else {
            self.transmit(p, active)
        }
    }

    fn sources(&self) -> Vec<std::os::fd::RawFd> {
        self.backend.fds()
    }

    fn source_interest(&self, index: usize) -> Interest {
        if !self.running {
            return Interest::NONE;
        }
        Interest {
            read: index < self.active_pairs && self.rx.get(index).is_some_and(|r| !r.blocked),
            write: self.tx_blocked.get(index) == Some(&true),
        }
    }

    fn process_source(
        &mut self,
        index: usize,
        active: Option<&mut Activation>,
    ) -> Result<bool, DeviceError> {
        let Some(active) = active else {
            // Not started, or broken until the driver resets it.
            self.running = false;
            return Ok(true);
        };
        if self.tx_blocked.get(index) == Some(&true) {
            if let Some(b) = self.tx_blocked.get_mut(index) {
                *b = false;
            }
            if self.transmit(index, active)? {
                // More than a ring's worth waits: come back when the tap is writable,
                // which is at once unless it is full, after the thread's other events.
                if let Some(b) = self.tx_blocked.get_mut(index) {
                    *b = true;
                }
            }
        }
        if self.source_interest(index).read {
            self.receive(index, active)?;
        }
        Ok(true)
    }

    fn reset(&mut self) {
        let s = self.stats();
        debug!(
            "{}: reset (rx {} dropped {}, tx {} dropped {})",
            self.name, s.rx, s.rx_dropped, s.tx, s.tx_dropped
        );
        self.running = false;
        self.features = 0;
        for rx in &mut self.rx {
            rx.pending = None;
            rx.blocked = false;
        }
        self.tx_blocked.fill(false);
        self.apply_offloads(0);
    }
}
