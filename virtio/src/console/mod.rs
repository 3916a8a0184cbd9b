//! virtio-console (`--console virtio`): one port, `hvc0` in Linux, on irvmm's standard
//! input and output, as an alternative to COM1. No multiport, no size: the configuration
//! structure is all zeros.
//!
//! Queue 0 (receiveq) takes input from a [`ConsoleInput`], which the VMM fills (its console
//! owns standard input: raw mode, escape keys, flow control); the I/O thread watches the
//! input's eventfd and copies the bytes into the buffers the driver offers, in order, as
//! far as they fit, leaving the rest queued for the next buffer. Input the driver has not
//! taken stays queued across a device reset: a driver that restarts loses no keystroke or
//! piped byte. Queue 1 (transmitq) output goes to standard output as it comes.

mod input;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use log::{debug, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;

pub use input::{ConsoleInput, INPUT_CAPACITY};

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
/// Most bytes put into one receive buffer.
const RX_MAX: usize = 64 * 1024;
/// Most bytes taken from one transmit buffer.
const TX_MAX: usize = 64 * 1024;

/// The virtio-console device.
pub struct Console {
    output: Box<dyn Write + Send>,
    input: Option<Arc<ConsoleInput>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Console {
    /// A console writing to `output` and, when given, taking its input from `input`
    /// (whoever holds the other `Arc` pushes bytes into it).
    pub fn new(output: Box<dyn Write + Send>, input: Option<Arc<ConsoleInput>>) -> Self {
        Console { output, input }
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

    /// The device's I/O-thread side.
    pub fn into_handler(self) -> Box<dyn QueueHandler> {
        Box::new(ConsoleHandler {
            output: self.output,
            input: self.input,
            rx_buf: Vec::new(),
            tx_buf: vec![0; TX_MAX],
        })
    }
}

struct ConsoleHandler {
    output: Box<dyn Write + Send>,
    input: Option<Arc<ConsoleInput>>,
    /// Input on its way into one receive buffer.
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
}

impl ConsoleHandler {
    /// Fills the driver's receive buffers with waiting input, at most one ring's worth of
    /// buffers per call (a driver that keeps offering buffers with no room cannot hold the
    /// I/O thread). Returns true when it stopped with input and buffers possibly left.
    fn fill_receiveq(&mut self, active: &mut Activation) -> Result<bool, DeviceError> {
        let Some(input) = &self.input else {
            return Ok(false);
        };
        let mem = active.mem.clone();
        let mut used = false;
        let mut more = false;
        {
            let Some(Some(queue)) = active.queues.get_mut(RECEIVEQ) else {
                return Ok(false);
            };
            let err = |source| DeviceError::Queue {
                queue: RECEIVEQ,
                source,
            };
            let mut budget = virtio_queue::QueueT::size(queue);
            while !input.is_empty() {
                if budget == 0 {
                    more = true;
                    break;
                }
                budget -= 1;
                let Some((head, segs)) = pop_chain(queue, &mem).map_err(err)? else {
                    break;
                };
                let len = receive(input, &mut self.rx_buf, &segs, &mem);
                virtio_queue::QueueT::add_used(queue, &mem, head, len).map_err(err)?;
                used = true;
            }
        }
        if used {
            active.notify(RECEIVEQ);
        }
        Ok(more)
    }
}

/// Copies as much waiting input as fits `segs`' writable buffers (through `scratch`, so
/// the input's lock is not held while guest memory is written) and takes it out of
/// `input`; returns the bytes copied. A buffer outside RAM takes nothing.
fn receive(
    input: &ConsoleInput,
    scratch: &mut Vec<u8>,
    segs: &Segments,
    mem: &DeviceMemory,
) -> u32 {
    let mut w = Cursor::new(&segs.writable);
    let room = usize::try_from(w.remaining())
        .unwrap_or(usize::MAX)
        .min(RX_MAX);
    input.peek(scratch, room);
    if scratch.is_empty() {
        return 0;
    }
    match w.write(mem, scratch) {
        Ok(done) => {
            input.consume(done);
            // At most RX_MAX.
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
            RECEIVEQ => self.fill_receiveq(active),
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
        self.input
            .iter()
            .map(|i| i.ready_event().as_raw_fd())
            .collect()
    }

    fn process_source(
        &mut self,
        _index: usize,
        active: Option<&mut Activation>,
    ) -> Result<bool, DeviceError> {
        let Some(input) = &self.input else {
            return Ok(false);
        };
        // Drain the counter; a failed read just means it was zero.
        let _ = input.ready_event().read();
        // Before the driver started the device, the bytes wait; its first receive-queue
        // notification takes them.
        if let Some(active) = active {
            if self.fill_receiveq(active)? {
                if let Some(input) = &self.input {
                    input.wake();
                }
            }
        }
        Ok(true)
    }

    // reset: input stays queued for the next driver (see the module documentation).
}
