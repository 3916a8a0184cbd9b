//! Route-update cost with many live remapped vectors, on a real KVM VM.
//!
//! N sources (N = 64 … 1024) each route through their own VT-d IRTE. Each iteration rewrites
//! one IRTE, applies an index-selective IEC invalidation for that index (what a guest kernel
//! does when it moves one interrupt) and then delivers that vector once, which is when the
//! staged route reaches KVM. Measured per iteration: translations performed and wall time
//! (translation, the `KVM_SET_GSI_ROUTING` commit and `KVM_IRQ_LINE`). The same
//! loop is then run applying a *global* invalidation per change, which is QEMU's strategy
//! (it re-translates every route on every IEC flush), to show what touching only the
//! affected routes saves at each N. A guest-driven comparison against QEMU itself runs the
//! probe guest (`probe=ir-basic` etc.) on both VMMs.
//!
//!     cargo bench -p vmm --bench route_update

use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::{kvm_enable_cap, KVM_CAP_SPLIT_IRQCHIP};
use kvm_ioctls::Kvm;
use virtual_iommu::msi::DeliveryMode;
use virtual_iommu::vtd::irte::build;
use virtual_iommu::vtd::regs::{GCMD_IRE, GCMD_REG, GCMD_SIRTP, GSTS_REG, IRTA_EIME, IRTA_REG};
use virtual_iommu::{Effects, IecInvalidation, MsiMessage, SourceId, VtdConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::interrupts::TranslationPolicy;
use vmm::iommu::{Iommu, VtdMmio};
use vmm::router::InterruptRouter;

use devices::BusDevice;

const IRT: u64 = 0x10000;
/// IRTA size field 11: 2^12 = 4096 entries.
const IRT_SIZE_FIELD: u64 = 11;
const ITERATIONS: u32 = 200;
const SID: SourceId = SourceId(0x0018);

fn remappable(handle: u32) -> MsiMessage {
    MsiMessage {
        address_lo: 0xfee0_0000 | ((handle & 0x7fff) << 5) | (1 << 4) | ((handle >> 15) << 2),
        address_hi: 0,
        data: 0,
    }
}

fn write_irte(mem: &GuestMemoryMmap, index: u32, dest: u32) {
    let e = build::remapped(
        0x40 + (index % 0x80) as u8,
        dest,
        true,
        DeliveryMode::Fixed,
        false,
        false,
    );
    mem.write_slice(&e.to_bytes(), GuestAddress(IRT + 16 * u64::from(index)))
        .expect("IRTE write");
}

struct Result {
    translations: f64,
    micros: f64,
}

fn run(n: u32, global: bool) -> Result {
    let kvm = Kvm::new().expect("/dev/kvm");
    let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = 24;
    vm.enable_cap(&cap).expect("split irqchip");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
    let iommu = Arc::new(Iommu::new(VtdConfig::default(), mem.clone()));
    let router = Arc::new(InterruptRouter::new(
        vm,
        TranslationPolicy::default(),
        Some(iommu.clone()),
        24,
    ));
    let mut mmio = VtdMmio::new(iommu, Arc::downgrade(&router));
    for i in 0..n {
        write_irte(&mem, i, i % 1024);
    }
    mmio.write(IRTA_REG, &(IRT | IRTA_EIME | IRT_SIZE_FIELD).to_le_bytes());
    for bit in [GCMD_SIRTP, GCMD_IRE] {
        let mut gsts = [0u8; 4];
        mmio.read(GSTS_REG, &mut gsts);
        mmio.write(GCMD_REG, &(u32::from_le_bytes(gsts) | bit).to_le_bytes());
    }
    let gsis = router.allocate(n).expect("GSIs");
    let sources: Vec<_> = gsis
        .clone()
        .map(|g| (g, SID, Some(remappable(g - gsis.start))))
        .collect();
    router.set_sources(&sources).expect("routes");

    let before = router.stats();
    let start = Instant::now();
    for k in 0..ITERATIONS {
        let index = k % n;
        write_irte(&mem, index, (index + 1 + k) % 1024);
        let iec = if global {
            IecInvalidation::Global
        } else {
            IecInvalidation::Range {
                start: index,
                count: 1,
            }
        };
        router
            .apply(&Effects {
                iec: vec![iec],
                ..Effects::default()
            })
            .expect("invalidation");
        router.trigger(gsis.start + index);
    }
    let elapsed = start.elapsed();
    let after = router.stats();
    assert_eq!(
        after.routes.commits - before.routes.commits,
        u64::from(ITERATIONS)
    );
    Result {
        translations: (after.translations - before.translations) as f64 / f64::from(ITERATIONS),
        micros: elapsed.as_secs_f64() * 1e6 / f64::from(ITERATIONS),
    }
}

fn main() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("route_update: /dev/kvm is not available; nothing measured");
        return;
    }
    println!("one IRTE change + IEC invalidation + one delivery of that vector, {ITERATIONS} iterations per row, real KVM");
    println!(
        "{:>6} {:>22} {:>16} {:>24} {:>16} {:>8}",
        "routes", "selective: transl/inv", "us/inv", "global (QEMU): transl/inv", "us/inv", "ratio"
    );
    // Warm-up: the first VM of the process pays one-time kernel costs.
    run(64, false);
    for n in [64u32, 128, 256, 512, 1024] {
        let s = run(n, false);
        let g = run(n, true);
        println!(
            "{:>6} {:>22.1} {:>16.1} {:>24.1} {:>16.1} {:>8.3}",
            n,
            s.translations,
            s.micros,
            g.translations,
            g.micros,
            s.micros / g.micros
        );
    }
}
