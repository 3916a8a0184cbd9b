//! Where the console's input goes: COM1's receive FIFO (`--serial stdio`) or the virtio
//! console's receive side (`--console virtio`). Both take what they have room for and say
//! when they have room again through an eventfd the VM's event loop waits on (the UART's
//! "receive FIFO drained" event, [`virtio::ConsoleInput::room_event`]).

use std::sync::Mutex;

use devices::serial::{SerialDevice, SerialError};

/// The guest's side of the console.
pub trait InputSink {
    /// Takes the longest prefix of `bytes` there is room for (none when full); returns
    /// its length.
    fn accept(&self, bytes: &[u8]) -> usize;
}

impl InputSink for Mutex<SerialDevice> {
    fn accept(&self, bytes: &[u8]) -> usize {
        let mut uart = self.lock().unwrap_or_else(|p| p.into_inner());
        match uart.enqueue_input(bytes) {
            Ok(n) => n,
            Err(SerialError::Interrupt { accepted, source }) => {
                log::warn!("console: serial input interrupt lost: {source}");
                accepted
            }
            Err(SerialError::FifoFull) => 0,
            Err(e) => {
                log::warn!("console: serial input failed: {e}");
                0
            }
        }
    }
}

impl InputSink for virtio::ConsoleInput {
    fn accept(&self, bytes: &[u8]) -> usize {
        self.push(bytes)
    }
}
