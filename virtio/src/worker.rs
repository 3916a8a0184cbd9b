//! The I/O thread of one virtio device: an event-manager loop that owns the device's
//! queues once the driver started it and runs the device's [`QueueHandler`].
//!
//! It watches
//! * each enabled queue's notification eventfd (the VMM's ioeventfd at the queue's notify
//!   address, so a driver's kick never runs device code on a vCPU thread),
//! * the device's own sources ([`QueueHandler::sources`], e.g. console input or a tap),
//!   each for what [`QueueHandler::source_interest`] asks (readable, writable, both or, to
//!   apply backpressure, nothing), re-read after every event the thread handles,
//! * a control eventfd with a channel: activation (the queues as the driver programmed
//!   them), reset and stop.
//!
//! A reset is asynchronous: the transport forgets its registers at once, and the thread,
//! once it dropped the queues (after any request it was in the middle of), sets the device
//! status to 0, which is what the driver waits for. A handler error the device cannot
//! recover from sets `DEVICE_NEEDS_RESET` (with a configuration interrupt) and stops queue
//! processing until the reset. When the device's addresses go through the IOMMU, every
//! event first checks that the started queues' rings are still mapped
//! ([`Activation::check_rings`]): a ring the guest unmapped is such an error.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use log::{debug, error, warn};
use thiserror::Error;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::interrupt::VirtioInterrupt;
use crate::memory::DeviceMemory;
use crate::segments::Segments;

/// Event data of the control eventfd.
const DATA_CONTROL: u32 = u32::MAX;
/// Event data of the device's own source `i` is `DATA_SOURCE_BASE + i`; queue `q`'s
/// notification is `q` (queue counts stay far below it).
const DATA_SOURCE_BASE: u32 = 0x1000_0000;

/// A failure that leaves the device needing a reset (the driver broke the rules).
#[derive(Debug, Error)]
pub enum DeviceError {
    /// The available ring or a ring element could not be used.
    #[error("queue {queue}: {source}")]
    Queue {
        /// Queue index.
        queue: usize,
        /// What virtio-queue said.
        source: virtio_queue::Error,
    },
    /// Through the IOMMU, a ring of the queue is not mapped with the access the device
    /// needs (the IOMMU recorded the fault).
    #[error("queue {queue}: a ring is not reachable through the IOMMU")]
    Unreachable {
        /// Queue index.
        queue: usize,
    },
}

/// What the I/O thread waits for on one of a device's own sources.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    /// Wake when it is readable.
    pub read: bool,
    /// Wake when it is writable.
    pub write: bool,
}

impl Interest {
    /// Not watched (backpressure: the device cannot take what the source has).
    pub const NONE: Interest = Interest {
        read: false,
        write: false,
    };
    /// Readable only (the default).
    pub const READ: Interest = Interest {
        read: true,
        write: false,
    };

    fn event_set(self) -> EventSet {
        let mut set = EventSet::empty();
        if self.read {
            set |= EventSet::IN;
        }
        if self.write {
            set |= EventSet::OUT;
        }
        set
    }
}

/// The queues of a started device and what handlers need alongside them.
pub struct Activation {
    /// Queue `i` as the driver programmed it; `None` for queues it did not enable.
    pub queues: Vec<Option<Queue>>,
    /// Guest memory as the device addresses it (through the IOMMU when the driver
    /// negotiated `VIRTIO_F_ACCESS_PLATFORM`).
    pub mem: DeviceMemory,
    /// The device's interrupts.
    pub interrupt: Arc<VirtioInterrupt>,
    /// The features the driver accepted.
    pub features: u64,
}

impl Activation {
    /// With translated addresses, checks that every started queue's rings are mapped for
    /// the device (descriptor table and available ring readable, used ring writable) before
    /// it uses them: an unmapped ring is an error that needs a reset, which virtio-queue
    /// alone would not report (a failed read of an available-ring entry just ends its
    /// walk, so the device would stall). Guest-physical rings were checked when the device
    /// started and RAM does not move.
    pub fn check_rings(&self) -> Result<(), DeviceError> {
        if !self.mem.is_translated() {
            return Ok(());
        }
        for (queue, q) in self.queues.iter().enumerate() {
            if q.as_ref().is_some_and(|q| !q.is_valid(&self.mem)) {
                return Err(DeviceError::Unreachable { queue });
            }
        }
        Ok(())
    }

    /// Tells the driver that queue `index` has new used buffers, unless it asked not to be
    /// told (event index or `VRING_AVAIL_F_NO_INTERRUPT`).
    pub fn notify(&mut self, index: usize) {
        let Some(Some(q)) = self.queues.get_mut(index) else {
            return;
        };
        match q.needs_notification(&self.mem) {
            Ok(false) => {}
            Ok(true) | Err(_) => self.interrupt.signal_queue(index),
        }
    }
}

/// Serves the available chains of `queue` in `active`, handing each to `serve` (which
/// returns the used length), at most one queue's worth per call, so a driver that keeps
/// adding entries (or rings that overlap, so the device's own writes look like new
/// entries) cannot hold the I/O thread. Returns (whether any was used, whether it stopped
/// with work left). Errors are the driver's (a bad available ring or head index).
pub fn drain_queue<F>(
    index: usize,
    active: &mut Activation,
    mut serve: F,
) -> Result<(bool, bool), DeviceError>
where
    F: FnMut(Segments, &DeviceMemory) -> u32,
{
    let mem = active.mem.clone();
    let Some(Some(queue)) = active.queues.get_mut(index) else {
        return Ok((false, false));
    };
    let err = |source| DeviceError::Queue {
        queue: index,
        source,
    };
    let mut used = false;
    let mut budget = queue.size();
    loop {
        queue.disable_notification(&mem).map_err(err)?;
        loop {
            if budget == 0 {
                return Ok((used, true));
            }
            budget -= 1;
            let chain = queue.iter(&mem).map_err(err)?.next();
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = serve(Segments::collect(chain), &mem);
            queue.add_used(&mem, head, len).map_err(err)?;
            used = true;
        }
        if !queue.enable_notification(&mem).map_err(err)? {
            break;
        }
    }
    Ok((used, false))
}

/// Takes the next available chain of `queue`: its head index and buffers.
pub fn pop_chain<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
) -> Result<Option<(u16, Segments)>, virtio_queue::Error> {
    let chain = queue.iter(mem)?.next();
    Ok(chain.map(|c| (c.head_index(), Segments::collect(c))))
}

/// A device's work, run on its I/O thread.
pub trait QueueHandler: Send + 'static {
    /// Name for logs and the thread.
    fn name(&self) -> &str;

    /// The driver started the device; `features` are the accepted ones.
    fn activate(&mut self, _features: u64) {}

    /// Queue `index` was notified: serve what the driver made available and
    /// [`Activation::notify`] it. An error sets `DEVICE_NEEDS_RESET`.
    /// Returns true when it stopped with work left: the thread comes back to the queue
    /// after its other events.
    fn process_queue(&mut self, index: usize, active: &mut Activation)
        -> Result<bool, DeviceError>;

    /// File descriptors of the device's own event sources (asked once, when the thread
    /// starts).
    fn sources(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// What the thread should wait for on source `index` now; asked again after every
    /// event it handles, so a device stops watching a source it cannot serve (no guest
    /// buffers) and watches it again once it can. Default: readable.
    fn source_interest(&self, _index: usize) -> Interest {
        Interest::READ
    }

    /// Source `index` of [`QueueHandler::sources`] is ready for what
    /// [`QueueHandler::source_interest`] asked (`active` is `None` before the driver
    /// started the device or after an error). Returns false to stop watching it for good.
    fn process_source(
        &mut self,
        _index: usize,
        _active: Option<&mut Activation>,
    ) -> Result<bool, DeviceError> {
        Ok(false)
    }

    /// The device was reset: forget what belongs to the driver's session.
    fn reset(&mut self) {}
}

/// What the transport asks of the thread.
enum Command {
    Activate(Activation),
    Reset,
    Stop,
}

/// A device source as the thread watches it.
struct Source {
    fd: RawFd,
    /// What epoll waits for now.
    watched: Interest,
    /// Removed for good (the handler said so, or it hung up).
    gone: bool,
}

/// The thread's only subscriber.
struct Subscriber {
    handler: Box<dyn QueueHandler>,
    sources: Vec<Source>,
    rx: Receiver<Command>,
    control: Arc<EventFd>,
    notifiers: Vec<Arc<EventFd>>,
    interrupt: Arc<VirtioInterrupt>,
    active: Option<Activation>,
    watched: Vec<usize>,
    stop: bool,
}

impl Subscriber {
    fn activate(&mut self, act: Activation, ops: &mut EventOps) {
        self.handler.activate(act.features);
        for (q, queue) in act.queues.iter().enumerate() {
            let Some(fd) = self.notifiers.get(q).filter(|_| queue.is_some()) else {
                continue;
            };
            let data = u32::try_from(q).unwrap_or(DATA_SOURCE_BASE - 1);
            match ops.add(Events::with_data(fd.as_ref(), data, EventSet::IN)) {
                Ok(()) => self.watched.push(q),
                Err(e) => error!("{}: watching queue {q}'s notifications: {e:?}", self.name()),
            }
        }
        self.active = Some(act);
    }

    fn reset(&mut self, ops: &mut EventOps) {
        for q in self.watched.drain(..) {
            if let Some(fd) = self.notifiers.get(q) {
                if let Err(e) = ops.remove(Events::empty(fd.as_ref())) {
                    warn!("{}: unwatching queue {q}: {e:?}", self.handler.name());
                }
            }
        }
        self.active = None;
        self.handler.reset();
        self.interrupt.set_status(0);
        debug!("{}: reset", self.handler.name());
    }

    fn name(&self) -> &str {
        self.handler.name()
    }

    fn control(&mut self, ops: &mut EventOps) {
        let _ = self.control.read();
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Activate(act) => self.activate(act, ops),
                Command::Reset => self.reset(ops),
                Command::Stop => self.stop = true,
            }
        }
    }

    fn queue(&mut self, q: usize) {
        if let Some(fd) = self.notifiers.get(q) {
            let _ = fd.read();
        }
        if self.interrupt.is_broken() {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match active
            .check_rings()
            .and_then(|()| self.handler.process_queue(q, active))
        {
            Ok(false) => {}
            Ok(true) => {
                if let Some(fd) = self.notifiers.get(q) {
                    let _ = fd.write(1);
                }
            }
            Err(e) => {
                warn!("{}: {e}; the device needs a reset", self.handler.name());
                self.interrupt.needs_reset();
            }
        }
    }

    fn source(&mut self, index: usize, events: &Events, ops: &mut EventOps) {
        let active = if self.interrupt.is_broken() {
            None
        } else {
            self.active.as_mut()
        };
        let checked = match active {
            Some(a) => a.check_rings().map(|()| Some(a)),
            None => Ok(None),
        };
        let keep = match checked.and_then(|a| self.handler.process_source(index, a)) {
            Ok(keep) => keep,
            Err(e) => {
                warn!("{}: {e}; the device needs a reset", self.handler.name());
                self.interrupt.needs_reset();
                true
            }
        };
        let hung_up = events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR);
        if !keep || hung_up {
            if let Err(e) = ops.remove(Events::empty_raw(events.fd())) {
                warn!("{}: unwatching source {index}: {e:?}", self.handler.name());
            }
            if let Some(s) = self.sources.get_mut(index) {
                s.gone = true;
                s.watched = Interest::NONE;
            }
        }
    }

    /// Brings epoll in line with what the handler wants of each source.
    fn sync_sources(&mut self, ops: &mut EventOps) {
        for (i, s) in self.sources.iter_mut().enumerate() {
            if s.gone {
                continue;
            }
            let want = self.handler.source_interest(i);
            if want == s.watched {
                continue;
            }
            let data = DATA_SOURCE_BASE.saturating_add(u32::try_from(i).unwrap_or(0));
            let result = if want == Interest::NONE {
                ops.remove(Events::empty_raw(s.fd))
            } else if s.watched == Interest::NONE {
                ops.add(Events::with_data_raw(s.fd, data, want.event_set()))
            } else {
                ops.modify(Events::with_data_raw(s.fd, data, want.event_set()))
            };
            match result {
                Ok(()) => s.watched = want,
                Err(e) => warn!("{}: watching source {i}: {e:?}", self.handler.name()),
            }
        }
    }
}

impl MutEventSubscriber for Subscriber {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            self.control.as_ref(),
            DATA_CONTROL,
            EventSet::IN,
        )) {
            error!("{}: watching the control eventfd: {e:?}", self.name());
        }
        self.sources = self
            .handler
            .sources()
            .into_iter()
            .map(|fd| Source {
                fd,
                watched: Interest::NONE,
                gone: false,
            })
            .collect();
        self.sync_sources(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            DATA_CONTROL => self.control(ops),
            d if d >= DATA_SOURCE_BASE => {
                self.source((d - DATA_SOURCE_BASE) as usize, &events, ops)
            }
            d => self.queue(d as usize),
        }
        self.sync_sources(ops);
    }
}

/// Why the I/O thread could not start.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// The control eventfd or the epoll instance.
    #[error("I/O thread set-up: {0}")]
    Io(#[from] io::Error),
    /// The event manager.
    #[error("I/O thread event manager: {0:?}")]
    EventManager(event_manager::Error),
}

/// A device's I/O thread (stopped and joined on drop).
pub struct Worker {
    tx: Sender<Command>,
    control: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts the thread for `handler`; `notifiers[q]` is queue `q`'s notification eventfd.
    pub fn spawn(
        handler: Box<dyn QueueHandler>,
        notifiers: Vec<Arc<EventFd>>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<Self, WorkerError> {
        let (tx, rx) = channel();
        let control = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let name = format!("virtio-{}", handler.name());
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(WorkerError::EventManager)?;
        let id = manager.add_subscriber(Subscriber {
            handler,
            sources: Vec::new(),
            rx,
            control: control.clone(),
            notifiers,
            interrupt,
            active: None,
            watched: Vec::new(),
            stop: false,
        });
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(manager, id))?;
        Ok(Worker {
            tx,
            control,
            thread: Some(thread),
        })
    }

    fn send(&self, cmd: Command) {
        if self.tx.send(cmd).is_err() {
            error!("virtio: the device's I/O thread is gone");
            return;
        }
        if let Err(e) = self.control.write(1) {
            error!("virtio: waking the I/O thread: {e}");
        }
    }

    /// Hands the started device's queues to the thread.
    pub fn activate(&self, act: Activation) {
        self.send(Command::Activate(act));
    }

    /// Asks the thread to drop the queues; it sets the device status to 0 when done.
    pub fn reset(&self) {
        self.send(Command::Reset);
    }
}

fn run(mut manager: EventManager<Subscriber>, id: event_manager::SubscriberId) {
    loop {
        if let Err(e) = manager.run() {
            error!("virtio I/O thread: {e:?}");
            return;
        }
        let stopped = manager.subscriber_mut(id).map(|s| s.stop).unwrap_or(true);
        if stopped {
            return;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Fd of an eventfd (for handlers listing their sources).
pub fn raw_fd(fd: &EventFd) -> RawFd {
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    /// A device whose one source is always readable (an eventfd nobody drains) and which
    /// wants it watched only while `want` is set.
    struct Stubborn {
        fd: EventFd,
        want: Arc<AtomicBool>,
        calls: Arc<AtomicU32>,
    }

    impl QueueHandler for Stubborn {
        fn name(&self) -> &str {
            "stubborn"
        }

        fn process_queue(&mut self, _: usize, _: &mut Activation) -> Result<bool, DeviceError> {
            Ok(false)
        }

        fn sources(&self) -> Vec<RawFd> {
            vec![self.fd.as_raw_fd()]
        }

        fn source_interest(&self, _: usize) -> Interest {
            if self.want.load(Ordering::SeqCst) {
                Interest::READ
            } else {
                Interest::NONE
            }
        }

        fn process_source(
            &mut self,
            _: usize,
            _: Option<&mut Activation>,
        ) -> Result<bool, DeviceError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            // Cannot take what the source has: stop watching it.
            self.want.store(false, Ordering::SeqCst);
            Ok(true)
        }
    }

    #[test]
    fn a_source_the_device_cannot_serve_is_not_watched() {
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        fd.write(1).unwrap();
        let want = Arc::new(AtomicBool::new(true));
        let calls = Arc::new(AtomicU32::new(0));
        let handler = Stubborn {
            fd,
            want: want.clone(),
            calls: calls.clone(),
        };
        let irq = Arc::new(VirtioInterrupt::new(Vec::new(), 1));
        let worker = Worker::spawn(Box::new(handler), Vec::new(), irq).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "served once, then left alone"
        );
        // Interest is re-read after any event: a control event brings it back.
        want.store(true, Ordering::SeqCst);
        worker.reset();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
