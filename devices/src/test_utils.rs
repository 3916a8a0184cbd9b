//! Test doubles shared by the device unit tests: sinks and handlers that record calls.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use virtual_iommu::{GuestMemoryReader, MemError, MsiMessage};

use crate::{ExitRequest, IoApicSink, VmExitHandler};

/// One call the IOAPIC made on its sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkCall {
    /// `set_pin_route(pin, msg)`.
    Route(u8, Option<MsiMessage>),
    /// `set_pin_level(pin, level)`.
    Level(u8, bool),
}

/// An [`IoApicSink`] that records every call in order.
#[derive(Default)]
pub struct RecordingSink {
    calls: Mutex<Vec<SinkCall>>,
}

impl RecordingSink {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Returns and forgets the calls recorded so far.
    pub fn take(&self) -> Vec<SinkCall> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// Number of deliveries (`set_pin_level(pin, true)`) on `pin` recorded so far.
    pub fn deliveries(&self, pin: u8) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| **c == SinkCall::Level(pin, true))
            .count()
    }
}

impl IoApicSink for RecordingSink {
    fn set_pin_route(&self, pin: u8, msg: Option<MsiMessage>) {
        self.calls.lock().unwrap().push(SinkCall::Route(pin, msg));
    }

    fn set_pin_level(&self, pin: u8, level: bool) {
        self.calls.lock().unwrap().push(SinkCall::Level(pin, level));
    }
}

/// A [`VmExitHandler`] that records every request.
#[derive(Default)]
pub struct RecordingExitHandler {
    requests: Mutex<Vec<ExitRequest>>,
}

impl RecordingExitHandler {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn requests(&self) -> Vec<ExitRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl VmExitHandler for RecordingExitHandler {
    fn request_exit(&self, request: ExitRequest) {
        self.requests.lock().unwrap().push(request);
    }
}

/// A `Write` whose bytes the test can inspect after handing it to a device.
#[derive(Clone, Default)]
pub struct SharedBuffer(pub Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `Write` that always fails, to check that output errors never reach the guest as panics.
pub struct FailingWriter;

impl Write for FailingWriter {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("broken pipe"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::other("broken pipe"))
    }
}

/// 64 KiB of guest RAM at address 0, for DMA tests.
pub struct TestRam(pub Mutex<Vec<u8>>);

impl TestRam {
    pub fn new() -> Arc<TestRam> {
        Arc::new(TestRam(Mutex::new(vec![0; 0x1_0000])))
    }
}

impl GuestMemoryReader for TestRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let ram = self.0.lock().unwrap();
        let s = usize::try_from(gpa).unwrap_or(usize::MAX);
        let src =
            s.checked_add(buf.len())
                .and_then(|e| ram.get(s..e))
                .ok_or(MemError::Unmapped {
                    gpa,
                    len: buf.len(),
                })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        let mut ram = self.0.lock().unwrap();
        let s = usize::try_from(gpa).unwrap_or(usize::MAX);
        let dst = s
            .checked_add(buf.len())
            .and_then(|e| ram.get_mut(s..e))
            .ok_or(MemError::Unmapped {
                gpa,
                len: buf.len(),
            })?;
        dst.copy_from_slice(buf);
        Ok(())
    }
}
