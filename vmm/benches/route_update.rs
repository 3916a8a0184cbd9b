//! Route-update cost with many live remapped passthrough vectors, on a real KVM VM.
//!
//! N irqfd vectors (N = 64 … 1024: a passed-through device's MSI-X vectors, each an
//! eventfd bound to its GSI with `KVM_IRQFD`) each route through their own VT-d IRTE. Each
//! iteration rewrites one IRTE and applies an index-selective IEC invalidation for that
//! index (what a guest kernel does when it moves one interrupt); the changed route is
//! committed with `KVM_SET_GSI_ROUTING` before the invalidation completes, because KVM
//! delivers irqfd vectors without asking the VMM. Measured per iteration: translations
//! and wall time. The same loop is then run applying a *global* invalidation per change,
//! which is QEMU's IEC-notifier strategy (re-translate and re-commit every route on every
//! flush), to show what touching only the affected routes saves at each N. A third column
//! gives the same move for N VMM-signalled vectors (emulated devices), which own no route
//! and cost no KVM call at all. A guest-driven comparison against QEMU itself runs the
//! probe guest (`probe=ir-bench`) on both VMMs.
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
use vmm::interrupt::{
    HostPosting, InterruptRouter, IrqHandle, IrqfdMode, TranslationPolicy, VectorOwner,
};
use vmm::iommu::{Iommu, VtdMmio};

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

struct NoOwner;
impl VectorOwner for NoOwner {
    fn masked_fire(&self, _index: u16) {}
}

/// Which vectors the loop moves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Irqfd,
    Signalled,
}

struct Result {
    translations: f64,
    micros: f64,
}

fn run(n: u32, global: bool, kind: Kind) -> Result {
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
    let router = InterruptRouter::new(
        vm,
        TranslationPolicy::default(),
        Some(iommu.clone()),
        24,
        SourceId(0xff00),
        HostPosting::default(),
    );
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
    let owner: Arc<dyn VectorOwner> = Arc::new(NoOwner);
    let handles = match kind {
        Kind::Irqfd => {
            router
                .add_irqfd_vectors(
                    "bench",
                    SID,
                    n as u16,
                    Arc::downgrade(&owner),
                    IrqfdMode::default(),
                )
                .expect("irqfd vectors")
                .0
        }
        Kind::Signalled => router.add_signal_vectors(SID, n).expect("vectors"),
    };
    let sources: Vec<_> = handles
        .clone()
        .map(|h| (IrqHandle(h), Some(remappable(h - handles.start))))
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
            .apply(
                &Effects {
                    iec: vec![iec],
                    ..Effects::default()
                }
                .into(),
            )
            .expect("invalidation");
    }
    let elapsed = start.elapsed();
    let after = router.stats();
    let expected = match kind {
        Kind::Irqfd => u64::from(ITERATIONS),
        Kind::Signalled => 0,
    };
    assert_eq!(after.routes.commits - before.routes.commits, expected);
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
    println!("move one vector (IRTE change + IEC invalidation), {ITERATIONS} iterations per row, real KVM");
    println!(
        "{:>6} {:>20} {:>10} {:>22} {:>10} {:>7} {:>18}",
        "irqfd",
        "irvmm: transl/inv",
        "us/inv",
        "all routes: transl/inv",
        "us/inv",
        "ratio",
        "signalled: us/inv"
    );
    // Warm-up: the first VM of the process pays one-time kernel costs.
    run(64, false, Kind::Irqfd);
    for n in [64u32, 128, 256, 512, 1024] {
        let s = run(n, false, Kind::Irqfd);
        let g = run(n, true, Kind::Irqfd);
        let e = run(n, false, Kind::Signalled);
        println!(
            "{:>6} {:>20.1} {:>10.1} {:>22.1} {:>10.1} {:>7.3} {:>18.1}",
            n,
            s.translations,
            s.micros,
            g.translations,
            g.micros,
            s.micros / g.micros,
            e.micros
        );
    }
}
