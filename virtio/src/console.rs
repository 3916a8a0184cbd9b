//! virtio-console (`--console virtio`): one port, `hvc0` in Linux, on irvmm's standard
//! input and output, as an alternative to COM1. No multiport, no size: the configuration
//! structure is all zeros.
//!
//! Queue 0 (receiveq) takes input: a small thread reads standard input (which may be a
//! file, a pipe or a terminal, none of which epoll handles alike) and hands chunks to the
//! I/O thread through a bounded channel and an eventfd; the I/O thread copies them into the
//! buffers the driver offers, keeping what does not fit for the next buffer. Queue 1
//! (transmitq) output goes to standard output as it comes.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;

use log::{debug, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::DeviceMemory;
use crate::segments::{Cursor, Segments};
use crate::transport::DeviceSpec;
use crate::worker::{drain_queue, pop_chain, Activation, DeviceError, QueueHandler};

/// The receive queue.
pub const RECEIVEQ: usize = 0;
/// The transmit queue.
pub const TRANSMITQ: usize = 1;
/// Entries per queue.
pub const CONSOLE_QUEUE_SIZE: u16 = 128;
/// Size of `struct virtio_console_config` (cols, rows, max_nr_ports, emerg_wr).
pub const CONSOLE_CONFIG_SIZE: usize = 12;
/// PCI class code: communication, other (what QEMU's virtio-serial-pci says).
pub const CONSOLE_CLASS_CODE: u32 = 0x07_8000;
/// Input chunks in flight between the reader thread and the I/O thread.
const INPUT_CHUNKS: usize = 16;
/// Size of one input read.
const INPUT_CHUNK: usize = 4096;
/// Input kept while the driver offers no buffer; beyond it the reader thread waits.
const PENDING_LIMIT: usize = 64 * 1024;
/// Most bytes taken from one transmit buffer.
const TX_MAX: usize = 64 * 1024;

/// The virtio-console device.
pub struct Console {
    output: Box<dyn Write + Send>,
    input: Option<Box<dyn Read + Send>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Console {
    /// A console writing to `output` and, when given, reading `input`.
    pub fn new(output: Box<dyn Write + Send>, input: Option<Box<dyn Read + Send>>) -> Self {
        Console { output, input }
    }

    /// On irvmm's standard output and input.
    pub fn stdio() -> Self {
        Self::new(
            Box::new(std::io::stdout()),
            Some(Box::new(std::io::stdin())),
        )
    }

    /// What the transport needs to know.
    pub fn spec(&self) -> DeviceSpec {
        DeviceSpec {
            name: "console".into(),
            device_type: VIRTIO_ID_CONSOLE,
            class_code: CONSOLE_CLASS_CODE,
            features: 0,
            queue_sizes: vec![CONSOLE_QUEUE_SIZE; 2],
            config: vec![0; CONSOLE_CONFIG_SIZE],
        }
    }

    /// The device's I/O-thread side (starts the input reader thread).
    pub fn into_handler(self) -> std::io::Result<Box<dyn QueueHandler>> {
        let kick = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let rx = match self.input {
            Some(mut input) => {
                let (tx, rx) = sync_channel(INPUT_CHUNKS);
                let k = kick.clone();
                std::thread::Builder::new()
                    .name("virtio-console-in".into())
                    .spawn(move || loop {
                        let mut buf = vec![0u8; INPUT_CHUNK];
                        let n = match input.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.truncate(n);
                        if tx.send(buf).is_err() {
                            return;
                        }
                        let _ = k.write(1);
                    })?;
                Some(rx)
            }
            None => None,
        };
        Ok(Box::new(ConsoleHandler {
            output: self.output,
            rx,
            kick,
            pending: VecDeque::new(),
            tx_buf: vec![0; TX_MAX],
        }))
    }
}

struct ConsoleHandler {
    output: Box<dyn Write + Send>,
    rx: Option<Receiver<Vec<u8>>>,
    kick: Arc<EventFd>,
    pending: VecDeque<u8>,
    tx_buf: Vec<u8>,
}

impl ConsoleHandler {
    /// Moves input from the reader thread while there is room.
    fn take_input(&mut self) {
        let Some(rx) = &self.rx else { return };
        while self.pending.len() < PENDING_LIMIT {
            match rx.try_recv() {
                Ok(chunk) => self.pending.extend(chunk),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    debug!("console: end of input");
                    self.rx = None;
                    return;
                }
            }
        }
    }

    /// Fills the driver's receive buffers with pending input.
    fn fill_receiveq(&mut self, active: &mut Activation) -> Result<(), DeviceError> {
        let mem = active.mem.clone();
        let mut used = false;
        {
            let Some(Some(queue)) = active.queues.get_mut(RECEIVEQ) else {
                return Ok(());
            };
            let err = |source| DeviceError::Queue {
                queue: RECEIVEQ,
                source,
            };
            while !self.pending.is_empty() {
                let Some((head, segs)) = pop_chain(queue, &mem).map_err(err)? else {
                    break;
                };
                let len = write_input(&mut self.pending, &segs, &mem);
                virtio_queue::QueueT::add_used(queue, &mem, head, len).map_err(err)?;
                used = true;
            }
        }
        if used {
            active.notify(RECEIVEQ);
        }
        Ok(())
    }
}

/// Copies as much of `pending` as fits `segs`' writable buffers; returns the bytes copied.
fn write_input(pending: &mut VecDeque<u8>, segs: &Segments, mem: &DeviceMemory) -> u32 {
    let mut w = Cursor::new(&segs.writable);
    let n = usize::try_from(w.remaining())
        .unwrap_or(usize::MAX)
        .min(pending.len());
    let bytes: Vec<u8> = pending.iter().take(n).copied().collect();
    match w.write(mem, &bytes) {
        Ok(done) => {
            pending.drain(..done);
            u32::try_from(done).unwrap_or(0)
        }
        Err(_) => {
            debug!("console: receive buffer outside RAM");
            0
        }
    }
}

impl QueueHandler for ConsoleHandler {
    fn name(&self) -> &str {
        "console"
    }

    fn process_queue(
        &mut self,
        index: usize,
        active: &mut Activation,
    ) -> Result<bool, DeviceError> {
        match index {
            RECEIVEQ => {
                self.take_input();
                self.fill_receiveq(active)?;
                Ok(false)
            }
            TRANSMITQ => {
                let (output, buf) = (&mut self.output, &mut self.tx_buf);
                let (used, more) = drain_queue(TRANSMITQ, active, |segs, mem| {
                    let mut r = Cursor::new(&segs.readable);
                    while r.remaining() > 0 {
                        let n = usize::try_from(r.remaining()).unwrap_or(TX_MAX).min(TX_MAX);
                        let Some(chunk) = buf.get_mut(..n) else { break };
                        if r.read(mem, chunk).is_err() {
                            debug!("console: transmit buffer outside RAM");
                            break;
                        }
                        if let Err(e) = output.write_all(chunk) {
                            warn!("console: output: {e}");
                            break;
                        }
                    }
                    let _ = output.flush();
                    0
                })?;
                if used {
                    active.notify(TRANSMITQ);
                }
                Ok(more)
            }
            _ => Ok(false),
        }
    }

    fn sources(&self) -> Vec<RawFd> {
        vec![self.kick.as_raw_fd()]
    }

    fn process_source(
        &mut self,
        _index: usize,
        active: Option<&mut Activation>,
    ) -> Result<bool, DeviceError> {
        let _ = self.kick.read();
        self.take_input();
        if let Some(active) = active {
            self.fill_receiveq(active)?;
        }
        Ok(true)
    }

    fn reset(&mut self) {
        self.pending.clear();
    }
}
