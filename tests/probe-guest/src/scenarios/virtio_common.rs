//! Shared parts of the virtio scenarios: the device's MSI-X vectors and where they go, and
//! waiting for a request's completion and its interrupt.
//!
//! With a DMAR (irvmm `--iommu intel`, QEMU `-device intel-iommu,intremap=on,eim=on`)
//! remapping is enabled as Linux does it, every AP is started ready for interrupts, and
//! MSI-X vector j goes through IRTE [`IRTE_BASE`] + j to the j-th highest APIC ID (above
//! 255 with 288 vCPUs); without one, every vector goes to the BSP in compatibility format.
//! Each completion must raise exactly one interrupt, on its vector's CPU; with
//! `probe.strict_irqs=0` extra interrupts on those CPUs are tolerated (the specification
//! allows spurious ones, and QEMU's virtio-serial sends one).

use super::ir_common::{self, NS_PER_MS};
use super::smp::{self, Smp};
use super::vfio_common;
use super::Context;
use crate::ap::ApMode;
use crate::clock::Clock;
use crate::report::Text;
use crate::tally::{self, DEVICE};
use crate::virtio::{Device, Virtq};
use crate::vtd::{irte, Irte, Vtd, TABLE_LOG2_LINUX};
use crate::{irq, pvh, sprintln, text};

/// The vector every device message delivers (counted in [`DEVICE`] by APIC ID).
pub const VECTOR: u8 = irq::TEST_VECTOR_A;
/// First IRTE the probe uses.
pub const IRTE_BASE: u32 = 0x500;
/// Most MSI-X vectors the scenarios program.
pub const MAX_VECTORS: usize = 9;
/// APIC IDs the expectations can name (vectors, plus the CPUs they were moved to).
const EXPECTED_IDS: usize = 2 * MAX_VECTORS;
/// How long a request may take.
pub const REQUEST_TIMEOUT_NS: u64 = 5_000_000_000;

/// Where the device's vectors go.
pub struct Irqs {
    /// Target APIC ID of each programmed vector.
    pub targets: [u32; MAX_VECTORS],
    /// Vectors programmed.
    pub count: usize,
    /// Through interrupt remapping.
    pub remapped: bool,
    /// The clock.
    pub clock: Clock,
    /// Interrupts expected so far, per APIC ID: (ID, count), `used` of them filled.
    expected: [(u32, u32); EXPECTED_IDS],
    used: usize,
    strict: bool,
    _vtd: Option<Vtd>,
}

/// Prepares the CPUs and programs `vectors` MSI-X vectors of `dev` (enabled, unmasked).
pub fn setup(ctx: &Context, dev: &Device, vectors: usize) -> Result<(Smp, Irqs), Text> {
    if vectors > MAX_VECTORS || usize::from(dev.msix.vectors()) < vectors {
        return Err(text!(
            "{} has {} MSI-X vectors; the scenario programs {}",
            dev.function,
            dev.msix.vectors(),
            vectors
        ));
    }
    let strict = pvh::cmdline_u32(ctx.cmdline, "probe.strict_irqs", 1)? != 0;
    let smp = smp::prepare(ctx)?;
    irq::set_handler(VECTOR, tally::on_device)?;
    let mut targets = [smp.bsp_id; MAX_VECTORS];
    let sid = dev.function.sid();
    let remapping = ir_common::discover(ctx).ok();
    let vtd = match remapping {
        Some(platform) => {
            let mut vtd = ir_common::enable(
                &platform.pci_unit(dev.function)?,
                smp.clock,
                TABLE_LOG2_LINUX,
            )?;
            smp::bring_up(ctx, &smp, ApMode::Interrupts)?;
            let ids = smp.cpus.ids();
            for (j, t) in targets.iter_mut().take(vectors).enumerate() {
                *t = ids
                    .get(ids.len().saturating_sub(1 + j))
                    .copied()
                    .unwrap_or(smp.bsp_id);
                vtd.set_irte(
                    IRTE_BASE + j as u32,
                    Irte::remapped(VECTOR, *t).verify_sid(sid),
                )?;
                vtd.invalidate_entries(IRTE_BASE + j as u32, 0)?;
            }
            Some(vtd)
        }
        None => None,
    };
    dev.msix.enable_masked();
    for (j, &t) in targets.iter().take(vectors).enumerate() {
        let j16 = j as u16;
        let address = match vtd {
            Some(_) => irte::remappable_msi_address(IRTE_BASE as u16 + j16, false),
            None => vfio_common::compat_address(t, true)
                .ok_or_else(|| text!("APIC ID {} needs remapping", t))?,
        };
        let data = if vtd.is_some() { 0 } else { u32::from(VECTOR) };
        dev.msix.set_entry(j16, address, data, false)?;
    }
    dev.msix.unmask_function();
    sprintln!(
        "virtio: {} MSI-X vectors {} to APIC IDs {:?}",
        vectors,
        if vtd.is_some() {
            "remapped"
        } else {
            "in compatibility format"
        },
        &targets[..vectors]
    );
    let clock = smp.clock;
    Ok((
        smp,
        Irqs {
            targets,
            count: vectors,
            remapped: vtd.is_some(),
            clock,
            expected: [(0, 0); EXPECTED_IDS],
            used: 0,
            strict,
            _vtd: vtd,
        },
    ))
}

impl Irqs {
    /// Waits for `q`'s next used entry and the interrupt of MSI-X vector `vector` on its
    /// CPU; returns (head, used length).
    pub fn complete(
        &mut self,
        q: &mut Virtq,
        vector: usize,
        what: &str,
    ) -> Result<(u16, u32), Text> {
        let mut used = None;
        let done = ir_common::wait(&self.clock, REQUEST_TIMEOUT_NS, || {
            if used.is_none() {
                used = q.pop_used();
            }
            used.is_some()
        });
        let Some(used) = used.filter(|_| done) else {
            return Err(text!(
                "{}: queue {} not completed within {} ms",
                what,
                q.index,
                REQUEST_TIMEOUT_NS / NS_PER_MS
            ));
        };
        let target = *self
            .targets
            .get(vector)
            .ok_or_else(|| text!("vector {}", vector))?;
        self.expect(target)?;
        let want = self.expected_on(target);
        let arrived = ir_common::wait(&self.clock, REQUEST_TIMEOUT_NS, || {
            DEVICE.hits(target) >= want
        });
        if !arrived {
            return Err(text!(
                "{}: no interrupt on APIC ID {} (vector {}) within {} ms; {}",
                what,
                target,
                vector,
                REQUEST_TIMEOUT_NS / NS_PER_MS,
                ir_common::Takers(&DEVICE)
            ));
        }
        Ok(used)
    }

    /// Waits for one more interrupt of MSI-X vector `vector` (a configuration change).
    pub fn expect_interrupt(&mut self, vector: usize, what: &str) -> Result<(), Text> {
        let target = *self
            .targets
            .get(vector)
            .ok_or_else(|| text!("vector {}", vector))?;
        self.expect(target)?;
        let want = self.expected_on(target);
        if ir_common::wait(&self.clock, REQUEST_TIMEOUT_NS, || {
            DEVICE.hits(target) >= want
        }) {
            return Ok(());
        }
        Err(text!(
            "{}: no interrupt on APIC ID {} (vector {}); {}",
            what,
            target,
            vector,
            ir_common::Takers(&DEVICE)
        ))
    }

    /// Claims the interrupts that arrived on MSI-X vector `vector`'s CPU beyond those
    /// expected so far, first waiting (with `wait`) until there is at least one: for queues
    /// whose device may signal once for several used entries (virtio-net receive), so the
    /// count per completion is not fixed. Returns how many it claimed.
    pub fn claim(&mut self, vector: usize, wait: bool, what: &str) -> Result<u32, Text> {
        let target = *self
            .targets
            .get(vector)
            .ok_or_else(|| text!("vector {}", vector))?;
        let due = self.expected_on(target);
        if wait
            && !ir_common::wait(&self.clock, REQUEST_TIMEOUT_NS, || {
                DEVICE.hits(target) > due
            })
        {
            return Err(text!(
                "{}: no interrupt on APIC ID {} (vector {}); {}",
                what,
                target,
                vector,
                ir_common::Takers(&DEVICE)
            ));
        }
        let extra = DEVICE.hits(target).saturating_sub(due);
        for _ in 0..extra {
            self.expect(target)?;
        }
        Ok(extra)
    }

    /// Counts one more interrupt due on APIC ID `id`.
    fn expect(&mut self, id: u32) -> Result<(), Text> {
        if let Some(e) = self.expected[..self.used].iter_mut().find(|e| e.0 == id) {
            e.1 += 1;
            return Ok(());
        }
        let slot = self
            .expected
            .get_mut(self.used)
            .ok_or_else(|| text!("more than {} target CPUs", EXPECTED_IDS))?;
        *slot = (id, 1);
        self.used += 1;
        Ok(())
    }

    /// Interrupts expected on APIC ID `id` so far.
    fn expected_on(&self, id: u32) -> u32 {
        self.expected[..self.used]
            .iter()
            .filter(|e| e.0 == id)
            .map(|e| e.1)
            .sum()
    }

    /// Hands the remapping unit over (for a scenario that goes on to enable DMA
    /// translation on it); vectors can no longer be moved afterwards.
    pub fn take_vtd(&mut self) -> Option<Vtd> {
        self._vtd.take()
    }

    /// Moves MSI-X vector `vector` to APIC ID `to` by rewriting its IRTE and invalidating
    /// it (index-selective), leaving the device's MSI-X table alone: the next interrupt
    /// must arrive there. Needs remapping.
    pub fn move_vector(&mut self, vector: usize, to: u32, sid: u16) -> Result<(), Text> {
        let vtd = self
            ._vtd
            .as_mut()
            .ok_or_else(|| text!("moving a vector needs interrupt remapping"))?;
        let index = IRTE_BASE + vector as u32;
        vtd.set_irte(index, Irte::remapped(VECTOR, to).verify_sid(sid))?;
        vtd.invalidate_entries(index, 0)?;
        if let Some(t) = self.targets.get_mut(vector) {
            *t = to;
        }
        Ok(())
    }

    /// Checks that every CPU took exactly the interrupts its vectors were due.
    pub fn check_all(&self) -> Result<u32, Text> {
        ir_common::settle(&self.clock, ir_common::SETTLE_NS);
        let total: u32 = self.expected[..self.used].iter().map(|e| e.1).sum();
        for &(t, due) in &self.expected[..self.used] {
            let hits = DEVICE.hits(t);
            if hits < due || self.strict && hits != due {
                return Err(text!(
                    "APIC ID {} took {} interrupts, expected {}; {}",
                    t,
                    hits,
                    due,
                    ir_common::Takers(&DEVICE)
                ));
            }
        }
        let on_targets: u32 = self.expected[..self.used]
            .iter()
            .map(|e| DEVICE.hits(e.0))
            .sum();
        if DEVICE.total() != on_targets || self.strict && DEVICE.total() != total {
            return Err(text!(
                "{} interrupts for {} completions; {}",
                DEVICE.total(),
                total,
                ir_common::Takers(&DEVICE)
            ));
        }
        Ok(total)
    }
}
