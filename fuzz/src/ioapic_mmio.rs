//! The `ioapic_mmio` harness: the userspace IOAPIC's register window (any offset, size
//! and value) interleaved with device line changes, EOIs, resets and route resyncs.
//!
//! Invariants asserted (by the mock [`IoApicSink`] and after every operation):
//!
//! * no panic;
//! * the sink only hears of pins 0..24;
//! * every route is a raw interrupt message: address in the `0xfee` window and
//!   `address_hi` zero (the IOAPIC never produces anything else);
//! * a delivery (`set_pin_level(pin, true)`) only happens on a pin that has a route, and
//!   the sink's route for every pin equals [`IoApic::pin_message`] after every operation;
//! * one operation delivers a bounded number of interrupts (at most two per pin);
//! * Remote IRR is only ever set on level-triggered pins, the delivery-status bit reads 0,
//!   and an asserted, unmasked level pin always has Remote IRR set (its interrupt was
//!   delivered and awaits its EOI: nothing is lost);
//! * reads of IOREGSEL return what was written (masked to 8 bits).

use std::sync::{Arc, Mutex};

use devices::ioapic::{
    IoApic, IoApicSink, RedirectionEntry, IOAPIC_EOI_OFFSET, IOAPIC_IOREGSEL_OFFSET,
    IOAPIC_IOWIN_OFFSET, IOAPIC_NUM_PINS, RTE_DELIVERY_STATUS,
};
use devices::BusDevice;
use virtual_iommu::msi::MsiMessage;

use crate::{access_size, assert_raw_interrupt, for_each_op, fuzz_type, value_bytes};

/// What the mock sink saw.
#[derive(Default)]
struct SinkState {
    routes: [Option<MsiMessage>; IOAPIC_NUM_PINS],
    deliveries: usize,
}

/// A route table that checks what the IOAPIC tells it.
#[derive(Default)]
pub struct CheckingSink {
    state: Mutex<SinkState>,
}

impl CheckingSink {
    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl IoApicSink for CheckingSink {
    fn set_pin_route(&self, pin: u8, msg: Option<MsiMessage>) {
        let pin = usize::from(pin);
        assert!(pin < IOAPIC_NUM_PINS, "route for pin {pin}");
        if let Some(m) = &msg {
            assert_raw_interrupt(m, "IOAPIC route");
        }
        self.lock().routes[pin] = msg;
    }

    fn set_pin_level(&self, pin: u8, level: bool) {
        let pin = usize::from(pin);
        assert!(pin < IOAPIC_NUM_PINS, "level for pin {pin}");
        let mut st = self.lock();
        if level {
            assert!(
                st.routes[pin].is_some(),
                "pin {pin} delivered without a route"
            );
            st.deliveries += 1;
        }
    }
}

fuzz_type! {
    /// One step of the guest or of a device.
    pub enum IoApicOp {
        /// A read of any size at any offset of the window.
        Read { offset: u16, size: u8 },
        /// A write of any size at any offset of the window.
        Write { offset: u16, size: u8, value: u64 },
        /// IOREGSEL = `index`, then a dword write of IOWIN.
        Register { index: u8, value: u32 },
        /// Programs pin `pin`'s whole RTE (high dword, then low dword), as Linux does.
        Rte { pin: u8, value: u64 },
        /// A write of the EOI register.
        Eoi { vector: u8 },
        /// A device drives line `pin` (pins past 23 included).
        Level { pin: u8, level: bool },
        /// A device pulses line `pin`.
        Pulse { pin: u8 },
        /// The VMM's EOI path for a LAPIC EOI of `vector`.
        LapicEoi { vector: u8 },
        /// The VMM's EOI path for a pin.
        EoiPin { pin: u8 },
        /// Platform reset.
        Reset {},
        /// The VMM rebuilt its routes.
        Resync {},
    }
}

/// The harness: an IOAPIC and its checking sink.
pub struct Harness {
    /// The IOAPIC under test.
    pub ioapic: IoApic,
    sink: Arc<CheckingSink>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A fresh IOAPIC with ID 0.
    pub fn new() -> Self {
        let sink = Arc::new(CheckingSink::default());
        Harness {
            ioapic: IoApic::new(0, sink.clone()),
            sink,
        }
    }

    fn write32(&mut self, offset: u64, value: u32) {
        self.ioapic.write(offset, &value.to_le_bytes());
    }

    /// Applies one operation and checks every invariant.
    pub fn apply(&mut self, op: &IoApicOp) {
        self.sink.lock().deliveries = 0;
        match *op {
            IoApicOp::Read { offset, size } => {
                let mut data = vec![0u8; access_size(size)];
                self.ioapic.read(u64::from(offset), &mut data);
            }
            IoApicOp::Write {
                offset,
                size,
                value,
            } => {
                let len = access_size(size);
                self.ioapic
                    .write(u64::from(offset), &value_bytes(value, len));
                if offset == 0 && len == 4 {
                    let mut b = [0u8; 4];
                    self.ioapic.read(IOAPIC_IOREGSEL_OFFSET, &mut b);
                    assert_eq!(u32::from_le_bytes(b), value as u32 & 0xff, "IOREGSEL");
                }
            }
            IoApicOp::Register { index, value } => {
                self.write32(IOAPIC_IOREGSEL_OFFSET, u32::from(index));
                self.write32(IOAPIC_IOWIN_OFFSET, value);
            }
            IoApicOp::Rte { pin, value } => {
                let index = 0x10 + 2 * u32::from(pin % 32);
                self.write32(IOAPIC_IOREGSEL_OFFSET, index + 1);
                self.write32(IOAPIC_IOWIN_OFFSET, (value >> 32) as u32);
                self.write32(IOAPIC_IOREGSEL_OFFSET, index);
                self.write32(IOAPIC_IOWIN_OFFSET, value as u32);
            }
            IoApicOp::Eoi { vector } => self.write32(IOAPIC_EOI_OFFSET, u32::from(vector)),
            IoApicOp::Level { pin, level } => self.ioapic.set_irq_level(usize::from(pin), level),
            IoApicOp::Pulse { pin } => self.ioapic.pulse_irq(usize::from(pin)),
            IoApicOp::LapicEoi { vector } => self.ioapic.end_of_interrupt(vector),
            IoApicOp::EoiPin { pin } => self.ioapic.end_of_interrupt_pin(usize::from(pin)),
            IoApicOp::Reset {} => self.ioapic.reset(),
            IoApicOp::Resync {} => self.ioapic.resync_routes(),
        }
        self.check();
    }

    /// The invariants that hold between operations.
    pub fn check(&self) {
        let st = self.sink.lock();
        assert!(
            st.deliveries <= 2 * IOAPIC_NUM_PINS,
            "{} deliveries in one operation",
            st.deliveries
        );
        for pin in 0..IOAPIC_NUM_PINS {
            let rte = RedirectionEntry(self.ioapic.rte(pin).expect("pin exists"));
            assert_eq!(
                st.routes[pin],
                self.ioapic.pin_message(pin),
                "pin {pin}: sink route differs from the RTE"
            );
            assert_eq!(rte.raw() & RTE_DELIVERY_STATUS, 0, "delivery status set");
            if rte.remote_irr() {
                assert!(rte.is_level(), "pin {pin}: Remote IRR on an edge pin");
            }
            if rte.is_level() && !rte.is_masked() && self.ioapic.pin_level(pin) {
                assert!(
                    rte.remote_irr(),
                    "pin {pin}: asserted level interrupt neither delivered nor pending"
                );
            }
        }
        assert!(self.ioapic.rte(IOAPIC_NUM_PINS).is_none());
        assert!(!self.ioapic.pin_level(IOAPIC_NUM_PINS));
    }
}

/// Runs one `ioapic_mmio` input.
pub fn run(data: &[u8]) {
    let mut h = Harness::new();
    let mut budget = 4096;
    for_each_op::<IoApicOp>(data, |op| {
        if budget > 0 {
            budget -= 1;
            h.apply(&op);
        }
    });
}

/// The bytes [`run`] decodes into `ops`.
pub fn encode_input(ops: &[IoApicOp]) -> Vec<u8> {
    use crate::Encode;
    let mut out = Vec::new();
    for op in ops {
        op.encode(&mut out);
    }
    out
}
