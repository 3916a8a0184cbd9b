//! `probe=vfio-mask`: MSI-X masking of the passed-through test device: a masked vector's
//! fire sets its pending bit instead of interrupting, and unmasking delivers it once.
//!
//! Runs on the BSP alone, with any IOMMU setting (the probe enables no remapping): MSI-X
//! entry [`MASKED_VECTOR`] gets a compatibility-format message (fixed, edge, [`VECTOR`]) to
//! the BSP's APIC ID, masked. Then:
//!
//! 1. entry mask: the device fires the vector twice; its PBA bit (wherever the capability
//!    puts the PBA: BAR2+0x1000 when irvmm relocates the table) must become set and
//!    nothing may arrive; the device counts both signals. Clearing the entry's mask bit
//!    must deliver exactly one interrupt (a pending bit is one message) and clear the bit.
//! 2. function mask: with the entry unmasked, MSI-X control's function mask set, one fire
//!    must again only set the pending bit; clearing the function mask delivers it once and
//!    clears the bit.
//! 3. a fire with nothing masked is delivered at once.
//!
//! Passes with `vector=V pba_bir=B pba=0x.. entry_mask=ok function_mask=ok deliveries=3`.

use super::ir_common::{self, NS_PER_MS};
use super::smp;
use super::vfio_common::{self, DELIVERY_TIMEOUT_NS, SETTLE_NS, VECTOR};
use super::Context;
use crate::clock::Clock;
use crate::msi::MsiX;
use crate::report::{Outcome, Text};
use crate::tally::{self, DEVICE};
use crate::testdev::{self, Testdev};
use crate::{irq, sprintln, text};

/// The vector under test (not the first, and in the PBA's first qword).
const MASKED_VECTOR: u16 = 5;

/// Waits until `vector`'s pending bit reads `pending` (or the deadline); returns whether it
/// did.
fn wait_pending(msix: &MsiX, clock: &Clock, vector: u16, pending: bool) -> Result<bool, Text> {
    let mut error = None;
    let reached = ir_common::wait(clock, DELIVERY_TIMEOUT_NS, || {
        match msix.is_pending(vector) {
            Ok(p) => p == pending,
            Err(e) => {
                error = Some(e);
                true
            }
        }
    });
    match error {
        Some(e) => Err(e),
        None => Ok(reached),
    }
}

/// Fires the vector `times` while it is masked (`how`), and checks that it only became
/// pending; then `unmask()` must deliver it exactly once and clear the pending bit.
fn masked_then_released(
    dev: &Testdev,
    msix: &MsiX,
    clock: &Clock,
    times: u32,
    how: &str,
    unmask: impl FnOnce() -> Result<(), Text>,
) -> Result<(), Text> {
    let v = MASKED_VECTOR;
    let (total, signals) = (DEVICE.total(), dev.read(testdev::REG_SIGNALS));
    for _ in 0..times {
        dev.ring(clock, v, 1)?;
    }
    let signalled = dev.read(testdev::REG_SIGNALS).wrapping_sub(signals);
    if !wait_pending(msix, clock, v, true)? {
        return Err(text!(
            "{}: vector {} fired {} times ({} device signals) but its PBA bit stays clear after {} ms; {} interrupts",
            how,
            v,
            times,
            signalled,
            DELIVERY_TIMEOUT_NS / NS_PER_MS,
            DEVICE.total() - total
        ));
    }
    ir_common::settle(clock, SETTLE_NS);
    if DEVICE.total() != total {
        return Err(text!(
            "{}: {} interrupts arrived while vector {} was masked",
            how,
            DEVICE.total() - total,
            v
        ));
    }
    unmask()?;
    let arrived = ir_common::wait(clock, DELIVERY_TIMEOUT_NS, || DEVICE.total() > total);
    ir_common::settle(clock, SETTLE_NS);
    let got = DEVICE.total() - total;
    if !arrived || got != 1 {
        return Err(text!(
            "{}: unmasking the pending vector {} gave {} interrupts, expected 1",
            how,
            v,
            got
        ));
    }
    if msix.is_pending(v)? {
        return Err(text!(
            "{}: vector {} delivered on unmask but its PBA bit is still set",
            how,
            v
        ));
    }
    sprintln!(
        "vfio-mask: {}: {} fires ({} device signals) -> pending, no interrupt; unmask -> 1 interrupt, PBA clear",
        how,
        times,
        signalled
    );
    Ok(())
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let dev = Testdev::find()?;
    let msix = vfio_common::msix(&dev, usize::from(MASKED_VECTOR) + 1)?;
    let address = vfio_common::compat_address(smp.bsp_id, false)
        .ok_or_else(|| text!("BSP APIC ID {} does not fit an xAPIC message", smp.bsp_id))?;
    let clock = smp.clock;
    let v = MASKED_VECTOR;
    irq::set_handler(VECTOR, tally::on_device)?;

    msix.enable_masked();
    msix.set_entry(v, address, u32::from(VECTOR), true)?;
    msix.unmask_function();
    if msix.is_pending(v)? {
        return Err(text!("vector {} is pending before it ever fired", v));
    }
    let pba = msix.pba_location();
    sprintln!(
        "vfio-mask: {} vector {} -> APIC ID {} (0x{:08x}), PBA BAR{}+0x{:x}",
        dev.function,
        v,
        smp.bsp_id,
        address,
        pba.bir,
        pba.offset
    );

    masked_then_released(&dev, &msix, &clock, 2, "entry mask", || {
        msix.set_masked(v, false)
    })?;
    msix.mask_function();
    masked_then_released(&dev, &msix, &clock, 1, "function mask", || {
        msix.unmask_function();
        Ok(())
    })?;
    vfio_common::fire_one(&dev, &clock, v, smp.bsp_id, "unmasked fire")?;
    irq::stop_tick();
    Ok(text!(
        "vector={} pba_bir={} pba=0x{:x} entry_mask=ok function_mask=ok deliveries={}",
        v,
        pba.bir,
        pba.offset,
        DEVICE.total()
    ))
}
