//! VT-d garbage: the register page with IQA pointing at a queue of random descriptors,
//! deliveries through the state the garbage left, and the reset a guest does to recover.

use core::sync::atomic::AtomicU32;

use super::pci::{overlaps, set_byte_bits};
use super::{Garbage, Targets, Window};
use crate::clock::Clock;
use crate::edu::Edu;
use crate::ioapic::RTE_MASKED;
use crate::mmio::Mmio;
use crate::msi::{Msi, MsiX};
use crate::pci::{COMMAND_INTX_DISABLE, COMMAND_MEMORY, REG_COMMAND};
use crate::raw::Width;
use crate::report::Text;
use crate::scenarios::ir_common::{self, DELIVERY_TIMEOUT_NS, NS_PER_MS, SETTLE_NS};
use crate::tally::{self, EVENT};
use crate::vtd::fault::{
    self, FEADDR_REG, FECTL_REG, FEDATA_REG, FEUADDR_REG, FR_TABLE_READ_FAILED, FSTS_PFO, FSTS_PPF,
};
use crate::vtd::qi::{IQA_REG, IQH_REG, IQT_REG};
use crate::vtd::{
    irte, Irte, CAP_REG, ECAP_REG, FSTS_REG, GCMD_CFI, GCMD_IRE, GCMD_ONE_SHOT, GCMD_QIE, GCMD_REG,
    GCMD_SFL, GCMD_SIRTP, GCMD_SRTP, GCMD_TE, GCMD_WBF, GSTS_REG, IRTA_EIME, IRTA_REG, REGS_SIZE,
    VER_REG,
};
use crate::{irq, serial, sprintln, text, x86};

/// Root table address register (64-bit).
const RTADDR_REG: u64 = 0x20;
/// Context command register (64-bit).
const CCMD_REG: u64 = 0x28;
/// Invalidation completion status register (bit 0: IWC, write 1 to clear).
const ICS_REG: u64 = 0x9c;
/// Invalidation completion event control, data, address, upper address.
const IECTL_REG: u64 = 0xa0;
const IEDATA_REG: u64 = 0xa4;
const IEADDR_REG: u64 = 0xa8;
const IEUADDR_REG: u64 = 0xac;
/// Page request event control, data, address, upper address.
const PECTL_REG: u64 = 0xe0;
const PEDATA_REG: u64 = 0xe4;
const PEADDR_REG: u64 = 0xe8;
const PEUADDR_REG: u64 = 0xec;
/// The event control registers: their mask bit (IM, bit 31) stays set through the garbage.
const EVENT_CONTROLS: [u64; 3] = [FECTL_REG, IECTL_REG, PECTL_REG];
/// The byte of an event control register holding IM, and IM's bit in it.
const IM_BYTE: u64 = 3;
const IM_BYTE_BIT: u8 = 1 << 7;
/// IM as a dword.
const EVENT_MASKED: u32 = 1 << 31;
/// ICS.IWC.
const ICS_IWC: u32 = 1 << 0;
/// ECAP.IRO (bits 17:8): the IOTLB registers' offset / 16.
const ECAP_IRO_SHIFT: u32 = 8;
const ECAP_IRO_MASK: u64 = 0x3ff;
/// Unit of ECAP.IRO.
const IRO_UNIT: u64 = 16;
/// Bytes of one fault-recording register.
const FRCD_BYTES: u64 = 16;
/// FSTS write-1-to-clear bits: PFO, AFO, APF, IQE, ICE, ITE.
const FSTS_W1C: u32 = 0x7d;
/// FSTS bits that must be clear after the reset: PFO, PPF, IQE, ICE, ITE.
const FSTS_ERRORS: u32 = FSTS_PFO | FSTS_PPF | 0x70;
/// GSTS bits that must be clear after the reset (same positions as in GCMD).
const GSTS_ACTIVE: u32 = GCMD_TE | GCMD_QIE | GCMD_IRE | GCMD_CFI;
/// GCMD bits a command is assembled from.
const GCMD_BITS: [u32; 9] = [
    GCMD_TE,
    GCMD_SRTP,
    GCMD_SFL,
    1 << 28,
    GCMD_WBF,
    GCMD_QIE,
    GCMD_IRE,
    GCMD_SIRTP,
    GCMD_CFI,
];
/// How long the unit gets to reflect a command in GSTS.
const COMMAND_TIMEOUT_NS: u64 = 1_000_000_000;

/// IQT/IQH: the descriptor index is in bits 18:4 (15 bits), so the unit can fetch at most
/// 2^15 128-bit (or 2^14 256-bit) descriptors from IQA: 512 KiB.
const QUEUE_ENTRIES: u32 = 1 << 15;
/// Descriptors filled with random contents (the rest of the 512 KiB is zero, an invalid
/// type).
const FILLED_DESCRIPTORS: u32 = 512;
/// IQT descriptor index shift.
const IQ_INDEX_SHIFT: u32 = 4;
/// Largest IQT index.
const IQ_INDEX_LIMIT: u64 = 1 << 15;
/// IQT values near the filled part of the queue (256 entries with IQA.QS = 0, so some of
/// these are beyond a one-page queue).
const IQT_NEAR: u64 = 320;
/// IQA.QS values the garbage favours (queues of 1 to 8 pages).
const IQA_QS_VALUES: u64 = 4;
/// IQA bits below the base address: QS (2:0), reserved, DW (11).
const IQA_LOW_BITS: u32 = 0xfff;
/// Bytes of IQA.
const IQA_BYTES: u64 = 8;
/// IRTA bits below the base address: S (3:0), reserved, EIME (11).
const IRTA_LOW_BITS: u64 = 0xfff;
/// An interrupt remapping table far beyond the RAM of any VM the probe runs in (252 GiB).
const BEYOND_RAM_TABLE: u64 = 0x3f_0000_0000;
/// IRTA.S values (table of 2^(S + 1) entries).
const IRTA_S_VALUES: u64 = 16;
/// Wait descriptors write their status to one of these.
const SCRATCH_DWORDS: usize = 4;
/// Descriptor type field: bits 3:0 and 11:9 of the low qword.
const TYPE_LOW_MASK: u64 = 0xf;
const TYPE_HIGH_SHIFT: u32 = 9;
const TYPE_HIGH_MASK: u64 = 0x7;
/// The type bits of the low qword.
const TYPE_BITS: u64 = TYPE_LOW_MASK | (TYPE_HIGH_MASK << TYPE_HIGH_SHIFT);
/// Descriptor types: context cache, IOTLB, interrupt entry cache, wait.
const TYPE_CONTEXT_CACHE: u64 = 0x1;
const TYPE_IOTLB: u64 = 0x2;
const TYPE_IEC: u64 = 0x4;
const TYPE_WAIT: u64 = 0x5;
/// Number of 7-bit descriptor types.
const TYPE_COUNT: u64 = 128;
/// IEC: G (index-selective), IM (31:27), IIDX (47:32).
const IEC_G: u64 = 1 << 4;
const IEC_IM_SHIFT: u32 = 27;
const IEC_IM_VALUES: u64 = 32;
const IEC_IIDX_SHIFT: u32 = 32;
const IEC_IIDX_VALUES: u64 = 1 << 16;
/// Wait: IF, SW, FN, PD (bits 7:4) and the status data (63:32).
const WAIT_FLAGS_SHIFT: u32 = 4;
const WAIT_FLAGS_VALUES: u64 = 16;
const WAIT_DATA_SHIFT: u32 = 32;
/// Wait: status address bits 1:0 (reserved).
const WAIT_ADDRESS_RESERVED: u64 = 0x3;
/// Context-cache / IOTLB granularity (bits 5:4).
const GRANULARITY_SHIFT: u32 = 4;
const GRANULARITY_VALUES: u64 = 4;

/// Percentage of VT-d accesses that write.
const WRITE_PERCENT: u32 = 55;
/// Percentage of VT-d accesses left misaligned.
const MISALIGNED_PERCENT: u32 = 20;
/// Widths of VT-d accesses, dwords and qwords (the architectural ones) most often.
const WIDTHS: [Width; 7] = [
    Width::Dword,
    Width::Dword,
    Width::Dword,
    Width::Qword,
    Width::Qword,
    Width::Word,
    Width::Byte,
];
/// Raises of the blocked-delivery check.
const BLOCKED_RAISES: u32 = 2;
/// The vector of the delivery check (counted in [`EVENT`]; `ir-basic` uses another).
const CHECK_VECTOR: u8 = irq::TEST_VECTOR_C;
/// The edu interrupt-status bit raised.
const RAISE_BIT: u32 = 1;

/// The fire phase's table: the second half of the interrupt-remapping table's memory (the
/// garbage queue has the first).
const FIRE_TABLE_OFFSET: u64 = 0x8_0000;
/// Its first entry, as an index into the table memory.
const FIRE_TABLE_FIRST: u32 = 1 << 15;
/// Entries filled with random contents (the rest is zero: not present).
const FIRE_ENTRIES: u32 = 1024;
/// IRTA.S values for it (at most 2^15 entries, which fit the half).
const FIRE_TABLE_S_VALUES: u64 = 15;
/// edu-msix vectors fired.
const FIRED_VECTORS: usize = 64;
/// How long COM1's transmitter-empty interrupt gets to fire.
const FIRE_SETTLE_NS: u64 = 20_000_000;
/// Destinations of the fire table: 2^30 and up, no CPU's APIC ID (KVM's largest is 4095)
/// and never the broadcast 0xffffffff.
const NOWHERE: u64 = 0x4000_0000;
const NOWHERE_SPAN: u64 = 1 << 24;
/// IRTE low qword: present, destination mode (1 = logical), trigger mode, delivery mode
/// (7:5), vector (23:16), destination (63:32).
const IRTE_PRESENT: u64 = 1 << 0;
const IRTE_DM: u64 = 1 << 2;
const IRTE_TM: u64 = 1 << 4;
const IRTE_DLM_SHIFT: u32 = 5;
const IRTE_DLM_VALUES: u64 = 8;
const IRTE_VECTOR_SHIFT: u32 = 16;
const IRTE_DEST_SHIFT: u32 = 32;
/// IRTE low qword bits kept from the random ones (everything below the destination).
const IRTE_LOW_KEPT: u64 = 0xffff_ffff;
/// RTE bits randomised around a remappable index: vector, polarity, trigger.
const RTE_RANDOM_LOW: u64 = 0xff | (1 << 13) | (1 << 15);

/// Status dwords the garbage queue's wait descriptors may write (only there).
static SCRATCH: [AtomicU32; SCRATCH_DWORDS] = [const { AtomicU32::new(0) }; SCRATCH_DWORDS];

/// The remapping unit under garbage.
pub(super) struct Unit {
    regs: Mmio,
    window: Window,
    ver: u32,
    cap: u64,
    ecap: u64,
}

impl Unit {
    /// The unit at `base`; remembers its read-only identification registers.
    pub(super) fn open(base: u64) -> Result<Unit, Text> {
        let regs = Mmio::new("VT-d", base, REGS_SIZE)?;
        let window = Window::new("VT-d", base, REGS_SIZE)?;
        Ok(Unit {
            regs,
            window,
            ver: regs.read32(VER_REG),
            cap: regs.read64(CAP_REG),
            ecap: regs.read64(ECAP_REG),
        })
    }

    /// The register page's address.
    pub(super) fn base(&self) -> u64 {
        self.regs.base()
    }

    fn gsts(&self) -> u32 {
        self.regs.read32(GSTS_REG)
    }

    /// Writes GCMD = (GSTS without one-shot bits and `clear`) | `set` and waits until GSTS
    /// shows all of `set` and none of `clear`.
    fn command(&self, clock: &Clock, set: u32, clear: u32) -> Result<(), Text> {
        let gcmd = (self.gsts() & !GCMD_ONE_SHOT & !clear) | set;
        self.regs.write32(GCMD_REG, gcmd);
        let deadline = clock.now_ns() + COMMAND_TIMEOUT_NS;
        loop {
            let gsts = self.gsts();
            if gsts & set == set && gsts & clear == 0 {
                return Ok(());
            }
            if clock.now_ns() >= deadline {
                return Err(text!(
                    "VT-d GCMD 0x{:08x} (set 0x{:x}, clear 0x{:x}): GSTS still 0x{:08x} after {} ms",
                    gcmd,
                    set,
                    clear,
                    gsts,
                    COMMAND_TIMEOUT_NS / NS_PER_MS
                ));
            }
            x86::pause();
        }
    }

    /// Clears FSTS's write-1-to-clear bits and every fault record.
    fn clear_faults(&self) {
        self.regs.write32(FSTS_REG, FSTS_W1C);
        for slot in 0..fault::record_count(self.cap) {
            fault::clear_record(&self.regs, self.cap, slot);
        }
    }

    /// Fails when VER, CAP or ECAP (read-only) changed.
    fn check_identity(&self) -> Result<(), Text> {
        let (ver, cap, ecap) = (
            self.regs.read32(VER_REG),
            self.regs.read64(CAP_REG),
            self.regs.read64(ECAP_REG),
        );
        if (ver, cap, ecap) != (self.ver, self.cap, self.ecap) {
            return Err(text!(
                "VT-d read-only registers changed: VER 0x{:x} CAP 0x{:x} ECAP 0x{:x} (were 0x{:x} 0x{:x} 0x{:x})",
                ver,
                cap,
                ecap,
                self.ver,
                self.cap,
                self.ecap
            ));
        }
        Ok(())
    }

    /// The IOTLB register pair's offset (ECAP.IRO), kept inside the page.
    fn iotlb_offset(&self) -> u64 {
        (((self.ecap >> ECAP_IRO_SHIFT) & ECAP_IRO_MASK) * IRO_UNIT).min(REGS_SIZE - IRO_UNIT)
    }

    /// Where the next access goes, and how wide it is.
    fn pick(&self, g: &mut Garbage) -> (u64, Width) {
        let width = g.rng.pick(&WIDTHS).unwrap_or(Width::Dword);
        let iotlb = self.iotlb_offset();
        let named = [
            VER_REG,
            CAP_REG,
            CAP_REG + 4,
            ECAP_REG,
            ECAP_REG + 4,
            GCMD_REG,
            GSTS_REG,
            RTADDR_REG,
            RTADDR_REG + 4,
            CCMD_REG,
            CCMD_REG + 4,
            FSTS_REG,
            FECTL_REG,
            FEDATA_REG,
            FEADDR_REG,
            FEUADDR_REG,
            IQH_REG,
            IQH_REG + 4,
            IQT_REG,
            IQT_REG + 4,
            IQA_REG,
            IQA_REG + 4,
            ICS_REG,
            IECTL_REG,
            IEDATA_REG,
            IEADDR_REG,
            IEUADDR_REG,
            IRTA_REG,
            IRTA_REG + 4,
            PECTL_REG,
            PEDATA_REG,
            PEADDR_REG,
            PEUADDR_REG,
            iotlb,
            iotlb + 4,
            iotlb + 8,
            iotlb + 12,
        ];
        let records = u64::from(fault::record_count(self.cap));
        let offset = match g.rng.below(100) {
            0..=14 => GCMD_REG,
            15..=26 => IQT_REG,
            27..=36 => {
                let slot = g.rng.below(records) as u32;
                fault::record_offset(self.cap, slot) + g.rng.below(FRCD_BYTES)
            }
            37..=41 => FSTS_REG,
            42..=46 => IQA_REG,
            47..=51 => IRTA_REG,
            52..=74 => g.rng.pick(&named).unwrap_or(GCMD_REG),
            _ => g.rng.below(REGS_SIZE),
        };
        let offset = if g.rng.chance(MISALIGNED_PERCENT) {
            offset + g.rng.below(width.bytes())
        } else {
            offset & !(width.bytes() - 1)
        };
        (self.window.fit(offset, width), width)
    }

    /// A value for the register at `offset`: commands, tails and table pointers with some
    /// sense in them, anything elsewhere.
    fn value(&self, g: &mut Garbage, offset: u64, queue: u64) -> u64 {
        match offset {
            GCMD_REG if g.rng.chance(60) => {
                let mut gcmd = 0;
                for bit in GCMD_BITS {
                    if g.rng.chance(35) {
                        gcmd |= bit;
                    }
                }
                u64::from(gcmd)
            }
            IQT_REG => match g.rng.below(10) {
                0..=5 => g.rng.below(IQT_NEAR) << IQ_INDEX_SHIFT,
                6..=7 => g.rng.below(IQ_INDEX_LIMIT) << IQ_INDEX_SHIFT,
                _ => g.rng.next_u64(),
            },
            IQA_REG => match g.rng.below(10) {
                // A one- to eight-page queue of 128-bit descriptors: the unit processes it.
                0..=5 => queue | g.rng.below(IQA_QS_VALUES),
                6..=8 => queue | g.rng.below(u64::from(IQA_LOW_BITS) + 1),
                _ => g.rng.next_u64(),
            },
            IRTA_REG => match g.rng.below(10) {
                0..=3 => BEYOND_RAM_TABLE | g.rng.below(IRTA_LOW_BITS + 1),
                4..=6 => queue | g.rng.below(IRTA_LOW_BITS + 1),
                _ => g.rng.next_u64(),
            },
            _ => g.rng.next_u64(),
        }
    }

    /// `count` accesses to the register page, IQA always naming the garbage queue (or an
    /// address above 4 GiB); then VER, CAP and ECAP must be unchanged.
    pub(super) fn garbage(&self, g: &mut Garbage, count: u32) -> Result<(), Text> {
        let queue = fill_queue(g);
        // Queued invalidation is off here (boot, or the previous round's reset), so the unit
        // takes the address: a garbage QIE never fetches from address 0.
        self.regs.write64(IQA_REG, queue);
        for _ in 0..count {
            let (offset, width) = self.pick(g);
            if !g.rng.chance(WRITE_PERCENT) {
                g.read(&self.window, offset, width);
                continue;
            }
            let value = self.value(g, offset, queue);
            match sanitise(offset, width, value, queue) {
                Some(value) => g.write(&self.window, offset, width, value),
                None => {
                    g.withhold();
                    g.read(&self.window, offset, width);
                }
            }
        }
        self.check_identity()
    }

    /// Two deliveries through the state the garbage left: with remapping off, edu's MSI in
    /// compatibility format must reach the BSP exactly once (every other source's route is
    /// garbage, and the VMM commits them all for this delivery); with the table beyond RAM
    /// and remapping on, a remappable MSI must be blocked, recorded as fault 0x23 on irvmm.
    pub(super) fn deliveries(&self, g: &mut Garbage, t: &Targets) -> Result<(), Text> {
        let (edu_fn, bsp_id, clock) = (t.edu, t.bsp_id, &t.clock);
        self.command(clock, 0, GCMD_TE | GCMD_QIE | GCMD_IRE | GCMD_CFI)?;
        // The unit's own event interrupts stay masked (the garbage kept them so, too).
        self.regs.write32(FECTL_REG, EVENT_MASKED);
        self.regs.write32(IECTL_REG, EVENT_MASKED);
        let Some(address) = irte::compatibility_msi_address(bsp_id) else {
            sprintln!(
                "hostile: delivery checks skipped: BSP APIC ID {} needs more than 8 bits",
                bsp_id
            );
            return Ok(());
        };
        super::quiet(&"before the delivery checks")?;
        irq::set_handler(CHECK_VECTOR, tally::on_event)?;
        let edu = Edu::open(edu_fn)?;
        let msi = Msi::find(edu_fn)?;

        // 1. Through garbage routes.
        msi.program(address, u16::from(CHECK_VECTOR));
        let (before, before_bsp) = (EVENT.total(), EVENT.hits(bsp_id));
        edu.raise(RAISE_BIT);
        let arrived = ir_common::wait(clock, DELIVERY_TIMEOUT_NS, || EVENT.total() > before);
        ir_common::settle(clock, SETTLE_NS);
        edu.ack(RAISE_BIT);
        let (total, on_bsp) = (EVENT.total() - before, EVENT.hits(bsp_id) - before_bsp);
        if !arrived || total != 1 || on_bsp != 1 {
            return Err(text!(
                "after the VT-d garbage, edu's MSI 0x{:08x}/0x{:x} (remapping off): {} interrupts, \
                 {} on the BSP, expected exactly 1 there; {}",
                address,
                CHECK_VECTOR,
                total,
                on_bsp,
                ir_common::Takers(&EVENT)
            ));
        }

        // 2. Blocked: the table is beyond RAM.
        self.clear_faults();
        let irta = BEYOND_RAM_TABLE | IRTA_EIME | g.rng.below(IRTA_S_VALUES);
        self.regs.write64(IRTA_REG, irta);
        self.command(clock, GCMD_SIRTP, 0)?;
        self.command(clock, GCMD_IRE, GCMD_CFI)?;
        // Below the smallest table (2 entries): the fault is the read, not the index.
        let handle = g.rng.below(2) as u16;
        msi.program(irte::remappable_msi_address(handle, false), 0);
        let before = EVENT.total();
        for _ in 0..BLOCKED_RAISES {
            edu.raise(RAISE_BIT);
            ir_common::settle(clock, SETTLE_NS);
            edu.ack(RAISE_BIT);
        }
        let delivered = EVENT.total() - before;
        msi.disable();
        edu_fn.write16(REG_COMMAND, COMMAND_MEMORY | COMMAND_INTX_DISABLE);
        let sid = edu_fn.sid();
        let recorded = (0..fault::record_count(self.cap))
            .filter_map(|slot| fault::read_pending(&self.regs, self.cap, slot))
            .any(|r| {
                r.reason() == FR_TABLE_READ_FAILED && r.sid() == sid && r.ir_index() == handle
            });
        let fsts = self.regs.read32(FSTS_REG);
        if delivered != 0 {
            return Err(text!(
                "IRTA 0x{:x} (beyond RAM), remapping on: {} of {} raises of handle {} delivered",
                irta,
                delivered,
                BLOCKED_RAISES,
                handle
            ));
        }
        if !recorded && g.strict() {
            return Err(text!(
                "IRTA 0x{:x} (beyond RAM): edu's MSI (handle {}) blocked but no fault 0x{:x} \
                 recorded with SID 0x{:04x} (FSTS 0x{:x})",
                irta,
                handle,
                FR_TABLE_READ_FAILED,
                sid,
                fsts
            ));
        }
        sprintln!(
            "hostile: VT-d deliveries: compatibility MSI past garbage routes reached the BSP \
             once; handle {} with IRTA 0x{:x} blocked{}",
            handle,
            irta,
            if recorded {
                " with fault 0x23"
            } else {
                " (observation: no fault recorded)"
            }
        );

        // 3. Garbage through remapping.
        self.fire(g, t)?;
        self.command(clock, 0, GCMD_IRE | GCMD_CFI)
    }

    /// Fires every source through a table of random entries, all aimed at an APIC ID no CPU
    /// has (physical mode, x2APIC): [`FIRED_VECTORS`] of edu-msix's vectors with random
    /// messages (remappable mostly, random handles and subhandles), edu's MSI, and COM1's pin
    /// with a random redirection entry. Compatibility-format messages are blocked (CFI clear).
    /// Nothing may reach the BSP; the unit records what it blocked.
    fn fire(&self, g: &mut Garbage, t: &Targets) -> Result<(), Text> {
        let clock = &t.clock;
        let base = irte::table_address() + FIRE_TABLE_OFFSET;
        for index in 0..FIRE_ENTRIES {
            irte::write_entry(FIRE_TABLE_FIRST + index, random_irte(g));
        }
        let irta = base | IRTA_EIME | g.rng.below(FIRE_TABLE_S_VALUES);
        self.regs.write64(IRTA_REG, irta);
        self.command(clock, GCMD_SIRTP, 0)?;
        self.command(clock, GCMD_IRE, GCMD_CFI)?;
        self.clear_faults();

        let mut fired = 0;
        if let Some(f) = t.edu_msix {
            let edu = Edu::open(f)?;
            let msix = MsiX::find(f)?;
            msix.enable_masked();
            let mut vectors = [0u16; FIRED_VECTORS];
            for vector in vectors.iter_mut() {
                *vector = g.rng.below(u64::from(msix.vectors())) as u16;
                let address = random_message_address(g);
                let data = g.rng.next_u32();
                msix.set_entry(*vector, address, data, g.rng.chance(10))?;
            }
            msix.unmask_function();
            for vector in vectors {
                edu.trigger_msix(vector);
                fired += 1;
            }
        }
        let edu = Edu::open(t.edu)?;
        let msi = Msi::find(t.edu)?;
        let address = random_message_address(g);
        msi.program(address, g.rng.next_u32() as u16);
        edu.raise(RAISE_BIT);
        edu.ack(RAISE_BIT);
        fired += 1;
        msi.disable();

        let handle = random_handle(g);
        let rte =
            (irte::remappable_rte(handle) | (g.rng.next_u64() & RTE_RANDOM_LOW)) & !RTE_MASKED;
        t.ioapic.set_rte(t.com1_pin, rte);
        serial::enable_thr_empty_interrupt();
        let deadline = clock.now_ns() + FIRE_SETTLE_NS;
        while clock.now_ns() < deadline {
            x86::pause();
        }
        serial::disable_interrupts();
        t.ioapic.set_rte(t.com1_pin, RTE_MASKED);
        fired += 1;

        let pending = (0..fault::record_count(self.cap))
            .filter(|&slot| fault::read_pending(&self.regs, self.cap, slot).is_some())
            .count();
        let fsts = self.regs.read32(FSTS_REG);
        super::quiet(&text!(
            "after firing {} sources through random entries",
            fired
        ))?;
        sprintln!(
            "hostile: fired {} sources through random IRTEs (IRTA 0x{:x}): nothing reached the \
             BSP; {} fault records pending, FSTS 0x{:x}",
            fired,
            irta,
            pending,
            fsts
        );
        Ok(())
    }

    /// Resets the unit the way a guest would: remapping and translation off, then queued
    /// invalidation off (Linux's order); FSTS and every fault record cleared; event
    /// interrupts masked with their messages zeroed, the completion status cleared; the
    /// queue, table and root pointers zeroed. Then checks that it took.
    pub(super) fn reset(&self, clock: &Clock) -> Result<(), Text> {
        self.command(clock, 0, GCMD_IRE | GCMD_CFI | GCMD_TE)?;
        self.command(clock, 0, GCMD_QIE)?;
        self.clear_faults();
        let events = [
            (FECTL_REG, [FEDATA_REG, FEADDR_REG, FEUADDR_REG]),
            (IECTL_REG, [IEDATA_REG, IEADDR_REG, IEUADDR_REG]),
        ];
        for (control, message) in events {
            self.regs.write32(control, EVENT_MASKED);
            for register in message {
                self.regs.write32(register, 0);
            }
        }
        self.regs.write32(ICS_REG, ICS_IWC);
        for register in [IQT_REG, IQA_REG, IRTA_REG, RTADDR_REG] {
            self.regs.write64(register, 0);
        }
        let (gsts, fsts, iqh) = (
            self.gsts(),
            self.regs.read32(FSTS_REG),
            self.regs.read64(IQH_REG),
        );
        let pending = (0..fault::record_count(self.cap))
            .filter(|&slot| fault::read_pending(&self.regs, self.cap, slot).is_some())
            .count();
        if gsts & GSTS_ACTIVE != 0 || fsts & FSTS_ERRORS != 0 || pending != 0 {
            return Err(text!(
                "VT-d reset did not take: GSTS 0x{:08x} FSTS 0x{:x}, {} fault records pending",
                gsts,
                fsts,
                pending
            ));
        }
        if iqh != 0 {
            sprintln!(
                "hostile: observation: IQH 0x{:x} after queued invalidation was disabled",
                iqh
            );
        }
        self.check_identity()
    }
}

/// A random entry aimed at an APIC ID no CPU has: half of them well-formed (present, no
/// source validation, random vector, delivery mode and trigger), half random bits; the
/// destination mode is always physical and the destination [`NOWHERE`] plus 24 random bits.
fn random_irte(g: &mut Garbage) -> Irte {
    let rng = &mut g.rng;
    let dest = NOWHERE + rng.below(NOWHERE_SPAN);
    let (low, high) = if rng.chance(50) {
        let low = IRTE_PRESENT
            | (rng.below(IRTE_DLM_VALUES) << IRTE_DLM_SHIFT)
            | (rng.below(2) * IRTE_TM)
            | (rng.below(u64::from(u8::MAX) + 1) << IRTE_VECTOR_SHIFT);
        (low, 0)
    } else {
        (rng.next_u64(), rng.next_u64())
    };
    Irte {
        low: (low & IRTE_LOW_KEPT & !IRTE_DM) | (dest << IRTE_DEST_SHIFT),
        high,
    }
}

/// An interrupt index: mostly one of the fire table's filled entries.
fn random_handle(g: &mut Garbage) -> u16 {
    if g.rng.chance(70) {
        g.rng.below(u64::from(FIRE_ENTRIES)) as u16
    } else {
        g.rng.next_u32() as u16
    }
}

/// A random MSI address for the fire phase: remappable format (random handle, SHV) most of
/// the time, else anything (compatibility format is blocked, other addresses are no
/// interrupts).
fn random_message_address(g: &mut Garbage) -> u32 {
    if g.rng.chance(75) {
        let handle = random_handle(g);
        let shv = g.rng.chance(50);
        irte::remappable_msi_address(handle, shv)
    } else {
        g.rng.next_u32()
    }
}

/// The garbage write `value` at `offset` made harmless to the probe, or `None` when it
/// cannot be (the caller reads instead): IQA only as a whole dword or qword, its base the
/// garbage queue's (above 4 GiB a quarter of the time, where the probe keeps nothing); the
/// event control registers keep IM.
fn sanitise(offset: u64, width: Width, value: u64, queue: u64) -> Option<u64> {
    let mut value = value;
    if overlaps(offset, width.bytes(), IQA_REG, IQA_BYTES) {
        // The queue is in the identity-mapped first 4 GiB: its address fits 32 bits.
        let low = (queue as u32 & !IQA_LOW_BITS) | (value as u32 & IQA_LOW_BITS);
        let high = if value >> 62 == 0 { value >> 32 } else { 0 };
        value = match (offset, width) {
            (IQA_REG, Width::Qword) => (high << 32) | u64::from(low),
            (IQA_REG, Width::Dword) => u64::from(low),
            (o, Width::Dword) if o == IQA_REG + 4 => high,
            _ => return None,
        };
    }
    for control in EVENT_CONTROLS {
        value = set_byte_bits(offset, width, value, control + IM_BYTE, IM_BYTE_BIT);
    }
    Some(value)
}

/// Zeroes the 512 KiB the unit may fetch descriptors from (the interrupt-remapping table's
/// memory, unused until the recovery enables remapping) and fills the first
/// [`FILLED_DESCRIPTORS`] with random ones; returns the queue's address.
fn fill_queue(g: &mut Garbage) -> u64 {
    irte::clear_table(QUEUE_ENTRIES);
    let scratch = SCRATCH.as_ptr() as u64;
    for index in 0..FILLED_DESCRIPTORS {
        let (low, mut high) = random_descriptor(g);
        if low & TYPE_LOW_MASK == TYPE_WAIT {
            // Whatever the other bits say, a status write can only land in the scratch.
            high = scratch + 4 * g.rng.below(SCRATCH_DWORDS as u64);
            if g.rng.chance(10) {
                high |= g.rng.below(WAIT_ADDRESS_RESERVED + 1);
            }
        }
        // A 128-bit descriptor has an entry's size; the table memory is the queue here.
        irte::write_entry(index, Irte { low, high });
    }
    irte::table_address()
}

/// A random descriptor: IEC and wait descriptors (mostly valid), context-cache and IOTLB
/// ones, unknown types and plain random bytes.
fn random_descriptor(g: &mut Garbage) -> (u64, u64) {
    let rng = &mut g.rng;
    match rng.below(10) {
        0..=2 => {
            let mut low = TYPE_IEC
                | (rng.below(2) * IEC_G)
                | (rng.below(IEC_IM_VALUES) << IEC_IM_SHIFT)
                | (rng.below(IEC_IIDX_VALUES) << IEC_IIDX_SHIFT);
            if rng.chance(20) {
                low ^= 1 << rng.below(64);
            }
            (low, if rng.chance(20) { rng.next_u64() } else { 0 })
        }
        3..=4 => {
            let low = TYPE_WAIT
                | (rng.below(WAIT_FLAGS_VALUES) << WAIT_FLAGS_SHIFT)
                | (u64::from(rng.next_u32()) << WAIT_DATA_SHIFT);
            (low, 0)
        }
        5 => {
            let kind = if rng.chance(50) {
                TYPE_CONTEXT_CACHE
            } else {
                TYPE_IOTLB
            };
            let low = kind
                | (rng.below(GRANULARITY_VALUES) << GRANULARITY_SHIFT)
                | (rng.next_u64() & !(TYPE_BITS | 0xff));
            (low, rng.next_u64())
        }
        6..=7 => {
            let kind = rng.below(TYPE_COUNT);
            let low = (rng.next_u64() & !TYPE_BITS)
                | (kind & TYPE_LOW_MASK)
                | ((kind >> 4) << TYPE_HIGH_SHIFT);
            (low, rng.next_u64())
        }
        _ => (rng.next_u64(), rng.next_u64()),
    }
}
