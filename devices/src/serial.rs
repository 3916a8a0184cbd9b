//! COM1: a 16550A UART (vm-superio) on the PIO bus, interrupting through an IOAPIC pin.
//!
//! vm-superio keeps the UART registers and decides when the THR-empty and received-data
//! interrupts fire; each time it does, [`IoApicPinTrigger`] pulses the UART's IOAPIC pin
//! (ISA IRQs are edge-triggered, so a pulse is one interrupt). That is what a Linux 8250
//! driver needs for interrupt-driven transmit and receive.
//!
//! # Locking
//!
//! A guest access or [`SerialDevice::enqueue_input`] runs with the serial device borrowed
//! mutably (in the VMM: its mutex held) and may take the IOAPIC's mutex to raise the pin.
//! Lock order is therefore **serial → IOAPIC**: never touch the serial device while holding
//! the IOAPIC lock.

use std::io::Write;
use std::sync::{Arc, Mutex};

use log::{debug, warn};
use vm_superio::serial::Error as UartError;
/// vm-superio's UART event callbacks, re-exported for [`SerialDevice::with_events`] users.
pub use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};

use crate::ioapic::IoApic;
use crate::{byte_lane_offset, fill_ones, BusDevice};

/// Base I/O port of COM1.
pub const COM1_PORT_BASE: u64 = 0x3f8;
/// IOAPIC pin (ISA IRQ) of COM1.
pub const COM1_IRQ_PIN: usize = 4;
/// Number of consecutive I/O ports a 16550 decodes.
pub const SERIAL_PORT_COUNT: u64 = 8;

/// Why pulsing the serial interrupt failed.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// A thread panicked while holding the IOAPIC lock.
    #[error("IOAPIC lock poisoned; cannot raise pin {pin}")]
    PoisonedLock {
        /// The pin that could not be raised.
        pin: usize,
    },
}

/// Errors of [`SerialDevice::enqueue_input`].
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The receive FIFO has no room; retry once the guest has read some bytes.
    #[error("serial receive FIFO is full")]
    FifoFull,
    /// The bytes were queued but the received-data interrupt could not be raised.
    #[error("queued {accepted} input bytes but could not raise the interrupt: {source}")]
    Interrupt {
        /// How many bytes were queued nonetheless (do not send them again).
        accepted: usize,
        /// Why the interrupt failed.
        #[source]
        source: TriggerError,
    },
    /// The UART reported an output error while queueing input (not expected).
    #[error("serial I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A [`Trigger`] that pulses one IOAPIC pin: assert then deassert, i.e. one edge.
#[derive(Clone, Debug)]
pub struct IoApicPinTrigger {
    ioapic: Arc<Mutex<IoApic>>,
    pin: usize,
}

impl IoApicPinTrigger {
    /// Creates a trigger for `pin` of `ioapic`.
    pub fn new(ioapic: Arc<Mutex<IoApic>>, pin: usize) -> Self {
        IoApicPinTrigger { ioapic, pin }
    }

    /// The IOAPIC pin this trigger pulses.
    pub fn pin(&self) -> usize {
        self.pin
    }
}

impl Trigger for IoApicPinTrigger {
    type E = TriggerError;

    fn trigger(&self) -> Result<(), TriggerError> {
        let mut ioapic = self
            .ioapic
            .lock()
            .map_err(|_| TriggerError::PoisonedLock { pin: self.pin })?;
        ioapic.pulse_irq(self.pin);
        Ok(())
    }
}

/// Forwards vm-superio's serial events to an optional shared observer.
struct EventsHook(Option<Arc<dyn SerialEvents + Send + Sync>>);

impl SerialEvents for EventsHook {
    fn buffer_read(&self) {
        if let Some(events) = &self.0 {
            events.buffer_read();
        }
    }

    fn out_byte(&self) {
        if let Some(events) = &self.0 {
            events.out_byte();
        }
    }

    fn tx_lost_byte(&self) {
        if let Some(events) = &self.0 {
            events.tx_lost_byte();
        }
    }

    fn in_buffer_empty(&self) {
        if let Some(events) = &self.0 {
            events.in_buffer_empty();
        }
    }
}

/// A 16550A UART behind the PIO bus (8 ports from its base, usually [`COM1_PORT_BASE`]).
///
/// Registers are 8 bits wide: a wider access is split into byte accesses to consecutive
/// registers; bytes past the 8 ports read all ones and ignore writes.
pub struct SerialDevice {
    uart: Serial<IoApicPinTrigger, EventsHook, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// Creates a UART that writes guest output to `out` and interrupts through `trigger`.
    pub fn new(out: Box<dyn Write + Send>, trigger: IoApicPinTrigger) -> Self {
        SerialDevice {
            uart: Serial::with_events(trigger, EventsHook(None), out),
        }
    }

    /// Like [`SerialDevice::new`], and reports UART events to `events`; in particular
    /// `in_buffer_empty` tells an input thread that the FIFO has drained. The callbacks run
    /// with the serial device locked: they must not lock it.
    pub fn with_events(
        out: Box<dyn Write + Send>,
        trigger: IoApicPinTrigger,
        events: Arc<dyn SerialEvents + Send + Sync>,
    ) -> Self {
        SerialDevice {
            uart: Serial::with_events(trigger, EventsHook(Some(events)), out),
        }
    }

    /// Flushes the output writer (best effort, e.g. before the VMM exits; failures are
    /// logged). vm-superio already flushes after every byte the guest writes.
    pub fn flush_output(&mut self) {
        if let Err(e) = self.uart.writer_mut().flush() {
            warn!("serial: flushing output failed: {e}");
        }
    }

    /// Free space in the receive FIFO, in bytes.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues `bytes` of input for the guest and raises the received-data interrupt if the
    /// guest enabled it. Returns how many bytes were accepted: at most
    /// [`SerialDevice::fifo_capacity`]; the caller keeps the rest for later. `Ok(0)` for
    /// empty input, and while the guest has the UART in loopback mode (input is not
    /// connected then). [`SerialError::FifoFull`] when no byte fits.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        let accepted = bytes.len().min(self.uart.fifo_capacity());
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => Ok(n),
            Err(UartError::FullFifo) => Err(SerialError::FifoFull),
            Err(UartError::Trigger(source)) => Err(SerialError::Interrupt { accepted, source }),
            Err(UartError::IOError(e)) => Err(SerialError::Io(e)),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        fill_ones(data);
        for (lane, byte) in data.iter_mut().enumerate() {
            match byte_lane_offset(offset, lane) {
                Some(port) if port < SERIAL_PORT_COUNT => *byte = self.uart.read(port as u8),
                _ => debug!("serial: read past the UART at offset {offset:#x} lane {lane}"),
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (lane, &value) in data.iter().enumerate() {
            let port = match byte_lane_offset(offset, lane) {
                Some(port) if port < SERIAL_PORT_COUNT => port as u8,
                _ => {
                    debug!("serial: write past the UART at offset {offset:#x} lane {lane}");
                    continue;
                }
            };
            match self.uart.write(port, value) {
                Ok(()) => {}
                Err(UartError::IOError(e)) => warn!("serial: output lost: {e}"),
                Err(UartError::Trigger(e)) => warn!("serial: interrupt lost: {e}"),
                Err(UartError::FullFifo) => debug!("serial: loopback byte dropped, FIFO full"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioapic::{IOAPIC_IOREGSEL_OFFSET, IOAPIC_IOWIN_OFFSET};
    use crate::test_utils::{FailingWriter, RecordingSink, SharedBuffer, SinkCall};
    use std::sync::atomic::{AtomicUsize, Ordering};

    // 16550 register offsets and bits used by the tests.
    const THR: u64 = 0;
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const SCR: u64 = 7;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const IIR_NONE: u8 = 0x01;
    const IIR_THRE: u8 = 0x02;
    const IIR_RDA: u8 = 0x04;
    const LSR_DR: u8 = 0x01;
    const LSR_THRE: u8 = 0x20;
    const MCR_LOOP: u8 = 0x10;
    const LCR_DLAB: u8 = 0x80;
    const FIFO_SIZE: usize = 64;

    struct Rig {
        serial: SerialDevice,
        ioapic: Arc<Mutex<IoApic>>,
        sink: Arc<RecordingSink>,
        out: SharedBuffer,
    }

    /// COM1 wired to an IOAPIC whose pin 4 is unmasked, edge, vector 0x24.
    fn rig() -> Rig {
        let sink = RecordingSink::new();
        let ioapic = Arc::new(Mutex::new(IoApic::new(0, sink.clone())));
        {
            let mut io = ioapic.lock().unwrap();
            let index = 0x10 + 2 * COM1_IRQ_PIN as u32;
            io.write(IOAPIC_IOREGSEL_OFFSET, &index.to_le_bytes());
            io.write(IOAPIC_IOWIN_OFFSET, &0x24u32.to_le_bytes());
        }
        sink.take();
        let out = SharedBuffer::default();
        let trigger = IoApicPinTrigger::new(ioapic.clone(), COM1_IRQ_PIN);
        let serial = SerialDevice::new(Box::new(out.clone()), trigger);
        Rig {
            serial,
            ioapic,
            sink,
            out,
        }
    }

    fn inb(serial: &mut SerialDevice, port: u64) -> u8 {
        let mut data = [0u8];
        serial.read(port, &mut data);
        data[0]
    }

    fn outb(serial: &mut SerialDevice, port: u64, value: u8) {
        serial.write(port, &[value]);
    }

    const PIN: u8 = COM1_IRQ_PIN as u8;

    #[test]
    fn output_bytes_reach_the_writer() {
        let mut r = rig();
        for b in b"hello\n" {
            outb(&mut r.serial, THR, *b);
        }
        assert_eq!(r.out.contents(), b"hello\n");
        r.serial.flush_output();
        // THR always empty.
        assert_ne!(inb(&mut r.serial, LSR) & LSR_THRE, 0);
        // No interrupt without IER.
        assert_eq!(r.sink.deliveries(PIN), 0);
    }

    #[test]
    fn thr_write_with_thre_enabled_raises_pin_4() {
        let mut r = rig();
        outb(&mut r.serial, IER, IER_THRE);
        // Enabling THRE with an empty THR interrupts at once.
        assert_eq!(
            r.sink.take(),
            vec![SinkCall::Level(PIN, true), SinkCall::Level(PIN, false)]
        );
        assert_eq!(inb(&mut r.serial, IIR) & 0x0f, IIR_THRE);
        // IIR read acknowledged it; the next character interrupts again.
        outb(&mut r.serial, THR, b'x');
        assert_eq!(
            r.sink.take(),
            vec![SinkCall::Level(PIN, true), SinkCall::Level(PIN, false)]
        );
        assert_eq!(r.out.contents(), b"x");
        // The pin is left low: the next edge can be seen.
        assert!(!r.ioapic.lock().unwrap().pin_level(COM1_IRQ_PIN));
    }

    #[test]
    fn input_is_readable_via_rbr_and_interrupts() {
        let mut r = rig();
        outb(&mut r.serial, IER, IER_RDA);
        assert!(r.sink.take().is_empty());
        assert_eq!(r.serial.enqueue_input(b"ok").unwrap(), 2);
        assert_eq!(r.sink.deliveries(PIN), 1);
        assert_eq!(inb(&mut r.serial, IIR) & 0x0f, IIR_RDA);
        assert_ne!(inb(&mut r.serial, LSR) & LSR_DR, 0);
        assert_eq!(inb(&mut r.serial, RBR), b'o');
        assert_eq!(inb(&mut r.serial, RBR), b'k');
        assert_eq!(inb(&mut r.serial, LSR) & LSR_DR, 0);
        assert_eq!(inb(&mut r.serial, IIR) & 0x0f, IIR_NONE);
    }

    #[test]
    fn input_respects_fifo_capacity() {
        let mut r = rig();
        assert_eq!(r.serial.fifo_capacity(), FIFO_SIZE);
        assert_eq!(r.serial.enqueue_input(&[]).unwrap(), 0);
        let big = vec![b'a'; FIFO_SIZE + 10];
        assert_eq!(r.serial.enqueue_input(&big).unwrap(), FIFO_SIZE);
        assert_eq!(r.serial.fifo_capacity(), 0);
        assert!(matches!(
            r.serial.enqueue_input(b"b"),
            Err(SerialError::FifoFull)
        ));
        inb(&mut r.serial, RBR);
        assert_eq!(r.serial.enqueue_input(b"bc").unwrap(), 1);
    }

    #[test]
    fn loopback_mode_refuses_host_input_and_echoes() {
        let mut r = rig();
        outb(&mut r.serial, MCR, MCR_LOOP);
        assert_eq!(r.serial.enqueue_input(b"x").unwrap(), 0);
        outb(&mut r.serial, THR, b'z');
        assert_eq!(inb(&mut r.serial, RBR), b'z');
        assert!(r.out.contents().is_empty());
    }

    #[test]
    fn masked_ioapic_pin_swallows_serial_interrupts() {
        let sink = RecordingSink::new();
        let ioapic = Arc::new(Mutex::new(IoApic::new(0, sink.clone())));
        let trigger = IoApicPinTrigger::new(ioapic, COM1_IRQ_PIN);
        assert_eq!(trigger.pin(), COM1_IRQ_PIN);
        let mut serial = SerialDevice::new(Box::new(std::io::sink()), trigger);
        outb(&mut serial, IER, IER_THRE);
        assert!(sink.take().is_empty());
    }

    #[test]
    fn registers_round_trip_and_dlab() {
        let mut r = rig();
        outb(&mut r.serial, SCR, 0x5a);
        assert_eq!(inb(&mut r.serial, SCR), 0x5a);
        outb(&mut r.serial, LCR, LCR_DLAB | 0x03);
        outb(&mut r.serial, 0, 0x01);
        outb(&mut r.serial, 1, 0x00);
        assert_eq!(inb(&mut r.serial, 0), 0x01);
        assert_eq!(inb(&mut r.serial, LCR), LCR_DLAB | 0x03);
        outb(&mut r.serial, LCR, 0x03);
        // Divisor writes were not characters.
        assert!(r.out.contents().is_empty());
    }

    #[test]
    fn wide_accesses_split_into_bytes_and_out_of_range_is_ones() {
        let mut r = rig();
        // 2-byte write at SCR-1 (offset 6 = MSR, ignored) and SCR.
        r.serial.write(6, &[0x11, 0x22]);
        assert_eq!(inb(&mut r.serial, SCR), 0x22);
        // 4-byte read at 6: MSR, SCR, then two bytes past the UART.
        let mut data = [0u8; 4];
        r.serial.read(6, &mut data);
        assert_eq!(data[1], 0x22);
        assert_eq!(&data[2..], &[0xff, 0xff]);
        // Entirely outside, and at the end of the address space.
        let mut data = [0u8; 2];
        r.serial.read(8, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        r.serial.read(u64::MAX, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        r.serial.write(u64::MAX, &[1, 2, 3]);
        r.serial.write(100, &[1]);
        r.serial.read(0, &mut []);
        r.serial.write(0, &[]);
        assert!(r.out.contents().is_empty());
    }

    #[test]
    fn output_errors_do_not_panic() {
        let r = rig();
        let trigger = IoApicPinTrigger::new(r.ioapic.clone(), COM1_IRQ_PIN);
        let mut serial = SerialDevice::new(Box::new(FailingWriter), trigger);
        outb(&mut serial, IER, IER_THRE);
        inb(&mut serial, IIR);
        outb(&mut serial, THR, b'a');
        serial.flush_output();
        // The THRE interrupt still fires so the driver does not stall.
        assert_eq!(r.sink.deliveries(PIN), 2);
    }

    #[test]
    fn poisoned_ioapic_lock_is_an_error_not_a_panic() {
        let r = rig();
        let ioapic = r.ioapic.clone();
        let _ = std::thread::spawn(move || {
            let _guard = ioapic.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(r.ioapic.is_poisoned());
        let trigger = IoApicPinTrigger::new(r.ioapic.clone(), COM1_IRQ_PIN);
        assert!(matches!(
            trigger.trigger(),
            Err(TriggerError::PoisonedLock { pin: COM1_IRQ_PIN })
        ));
        let mut serial = r.serial;
        // Guest writes survive; host input reports the lost interrupt with the count.
        outb(&mut serial, IER, IER_THRE | IER_RDA);
        outb(&mut serial, THR, b'q');
        assert_eq!(r.out.contents(), b"q");
        match serial.enqueue_input(b"abc") {
            Err(SerialError::Interrupt { accepted, .. }) => assert_eq!(accepted, 3),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(serial.fifo_capacity(), FIFO_SIZE - 3);
    }

    #[derive(Default)]
    struct CountingEvents {
        drained: AtomicUsize,
        out: AtomicUsize,
    }

    impl SerialEvents for CountingEvents {
        fn buffer_read(&self) {}
        fn out_byte(&self) {
            self.out.fetch_add(1, Ordering::SeqCst);
        }
        fn tx_lost_byte(&self) {}
        fn in_buffer_empty(&self) {
            self.drained.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn events_reach_the_observer() {
        let r = rig();
        let events = Arc::new(CountingEvents::default());
        let trigger = IoApicPinTrigger::new(r.ioapic.clone(), COM1_IRQ_PIN);
        let mut serial =
            SerialDevice::with_events(Box::new(std::io::sink()), trigger, events.clone());
        outb(&mut serial, THR, b'a');
        assert_eq!(events.out.load(Ordering::SeqCst), 1);
        serial.enqueue_input(b"z").unwrap();
        inb(&mut serial, RBR);
        assert_eq!(events.drained.load(Ordering::SeqCst), 1);
    }
}
