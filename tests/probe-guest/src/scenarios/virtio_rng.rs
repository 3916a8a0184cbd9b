//! `probe=virtio-rng`: the virtio-rng device found by PCI ID (1af4:1044): two 64-byte
//! requests on its one queue, each completed with one interrupt on its CPU (remapped to the
//! highest APIC ID when there is a DMAR); the bytes must not be all zero and the two
//! requests must differ. Passes with `bytes=128 irqs=2 remapped=0|1`.

use super::virtio_common;
use super::Context;
use crate::report::Outcome;
use crate::virtio::{self, Buf, Device, TYPE_RNG};
use crate::{sprintln, text};

/// Bytes per request.
const REQUEST: usize = 64;

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let dev = Device::find(TYPE_RNG)?;
    sprintln!("virtio-rng: {} found", dev.function);
    let (_smp, mut irqs) = virtio_common::setup(ctx, &dev, 2)?;
    dev.init(&irqs.clock, 0)?;
    dev.set_config_vector(0);
    let mut q = dev.setup_queue(0, 1)?;
    dev.driver_ok();
    for i in 0..2 * REQUEST {
        virtio::data_write(i, 0);
    }
    for r in 0..2 {
        q.submit(
            0,
            &[Buf {
                addr: virtio::data_addr(r * REQUEST),
                len: REQUEST as u32,
                write: true,
            }],
        );
        q.kick();
        let (_, len) = irqs.complete(&mut q, 1, "virtio-rng request")?;
        if len == 0 || len as usize > REQUEST {
            return Err(text!("request {}: used length {}", r, len));
        }
    }
    let zero = (0..2 * REQUEST).all(|i| virtio::data_read(i) == 0);
    let same = (0..REQUEST).all(|i| virtio::data_read(i) == virtio::data_read(REQUEST + i));
    if zero || same {
        return Err(text!(
            "entropy looks wrong: all zero {} / both requests equal {}",
            zero,
            same
        ));
    }
    let irqs_total = irqs.check_all()?;
    Ok(text!(
        "bytes={} irqs={} remapped={}",
        2 * REQUEST,
        irqs_total,
        u8::from(irqs.remapped)
    ))
}
