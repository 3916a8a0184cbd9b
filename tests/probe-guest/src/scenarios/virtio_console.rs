//! `probe=virtio-console`: the virtio console found by PCI ID (1af4:1043), port 0 only (no
//! multiport): writes [`GREETING`] through the transmit queue (the host sees it on
//! standard output), then, with `probe.hvc_input=WORD`, offers receive buffers until WORD
//! arrives from the host's standard input. Every completion raises one interrupt on its
//! vector's CPU (remapped when there is a DMAR). Passes with `tx=N rx=N irqs=N remapped=0|1`.

use super::virtio_common;
use super::Context;
use crate::pvh;
use crate::report::Outcome;
use crate::virtio::{self, Buf, Device, TYPE_CONSOLE};
use crate::{sprintln, text};

/// What the probe writes to hvc0.
pub const GREETING: &[u8] = b"PROBE-HVC hello from the virtio console\n";
/// Data arena offsets of the transmit and receive buffers.
const TX_AT: usize = 0;
const RX_AT: usize = 4096;
/// Receive buffer size.
const RX_LEN: usize = 256;

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let dev = Device::find(TYPE_CONSOLE)?;
    sprintln!("virtio-console: {} found", dev.function);
    // Configuration, receive, transmit; QEMU's virtio-serial-pci has two vectors, so the
    // queues share one there.
    let vectors = usize::from(dev.msix.vectors()).clamp(2, 3);
    let tx_vector = vectors - 1;
    let (_smp, mut irqs) = virtio_common::setup(ctx, &dev, vectors)?;
    dev.init(&irqs.clock, 0)?;
    dev.set_config_vector(0);
    let mut rx = dev.setup_queue(0, 1)?;
    let mut tx = dev.setup_queue(1, tx_vector as u16)?;
    dev.driver_ok();
    for (i, b) in GREETING.iter().enumerate() {
        virtio::data_write(TX_AT + i, *b);
    }
    tx.submit(
        0,
        &[Buf {
            addr: virtio::data_addr(TX_AT),
            len: GREETING.len() as u32,
            write: false,
        }],
    );
    tx.kick();
    irqs.complete(&mut tx, tx_vector, "virtio-console transmit")?;
    let mut received = 0usize;
    if let Some(word) = pvh::cmdline_value(ctx.cmdline, "probe.hvc_input") {
        while received < word.len() {
            rx.submit(
                0,
                &[Buf {
                    addr: virtio::data_addr(RX_AT + received),
                    len: (RX_LEN - received) as u32,
                    write: true,
                }],
            );
            rx.kick();
            let (_, len) = irqs.complete(&mut rx, 1, "virtio-console receive")?;
            received += len as usize;
            if received >= RX_LEN {
                break;
            }
        }
        let matches = word
            .iter()
            .enumerate()
            .all(|(i, &b)| virtio::data_read(RX_AT + i) == b);
        if !matches {
            return Err(text!(
                "received {} bytes that do not start with the expected input",
                received
            ));
        }
        sprintln!("virtio-console: received {} bytes of input", received);
    }
    let total = irqs.check_all()?;
    Ok(text!(
        "tx={} rx={} irqs={} remapped={}",
        GREETING.len(),
        received,
        total,
        u8::from(irqs.remapped)
    ))
}
