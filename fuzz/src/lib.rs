//! Fuzzing harnesses for irvmm's guest-facing surfaces.
//!
//! Every target in `fuzz_targets/` is a thin wrapper around a `run` function here, so the
//! harnesses can also be driven from ordinary tests and from the seed generator
//! (`examples/gen_seeds.rs`). Each harness drives the real model code of the workspace
//! crates (`virtual-iommu`, `devices`, `vmm`) with a structured input decoded by
//! [`arbitrary`], and asserts the hardware-level invariants inside: a violated invariant
//! panics, which libFuzzer reports as a crash.
//!
//! * [`vtd_mmio`]: the VT-d register file, invalidation queue and fault log against a
//!   small fake guest memory.
//! * [`remap_decode`]: interrupt-remapping decode (IRTEs, remappable and IOAPIC-derived
//!   messages, source-id checks) through `VtdUnit::translate`.
//! * [`vtd_dma`]: VT-d DMA remapping (root, context and second-level tables the fuzzer
//!   writes, TE/SRTP, context-cache and IOTLB invalidations through the queue and the
//!   registers, DMA requests checked against an uncached walk, leaf enumeration and the
//!   host-IOMMU shadow against a model).
//! * [`vtd_posting`]: VT-d posted-format IRTEs and interrupt posting into
//!   posted-interrupt descriptors (PIR, ON, SN, URG, notification, faults 0x27/0x28)
//!   against fuzzer-shaped guest memory.
//! * [`ioapic_mmio`]: the userspace IOAPIC's register window and pin logic.
//! * [`pci_config`]: PCI configuration mechanism #1, ECAM, MSI, MSI-X and BAR windows.
//! * [`kernel_load`]: kernel image detection and loading (PVH ELF and bzImage).
//! * [`amd_mmio`]: the AMD-Vi register window, command buffer, event and GA logs, and
//!   interrupt remapping and guest-mode posting against fuzzer-controlled guest memory.
//! * [`vfio_user_client`]: the vfio-user client against a scripted device server whose
//!   answers the fuzzer chooses.
//! * [`virtio_queue`]: virtqueue parsing and the virtio-blk, virtio-rng and virtio-console
//!   request paths over fuzzer-written rings, descriptors and buffers, and
//!   ([`virtio_net_queue`]) virtio-net's receive, transmit and control paths over a fake tap,
//!   each also with its addresses translated by an IOMMU ([`virtio_iommu`]:
//!   `VIRTIO_F_ACCESS_PLATFORM`).
//! * [`virtio_pci_config`]: the virtio-pci transport (configuration space, capabilities,
//!   common configuration, ISR, device configuration, notifications, MSI-X) with its real
//!   I/O thread.
//! * [`vfio_function`]: a passed-through PCI function (emulated configuration space, MSI,
//!   MSI-X table and PBA, BAR forwarding) over a device whose layout the fuzzer chooses.
//!
//! # Inputs and seeds
//!
//! Input types are declared with [`fuzz_type!`], which derives [`arbitrary::Arbitrary`]
//! and an [`Encode`] implementation that produces exactly the bytes `arbitrary` decodes
//! back into the same value. The seed generator uses it to write meaningful seed inputs
//! (a guest enabling interrupt remapping, a well-formed PVH kernel, ...) into
//! `fuzz/corpus/<target>/`.

pub mod amd_mmio;
pub mod encode;
pub mod fake_mem;
pub mod ioapic_mmio;
pub mod kernel_load;
pub mod pci_config;
pub mod remap_decode;
pub mod vfio_function;
pub mod vfio_user_client;
pub mod virtio_iommu;
pub mod virtio_pci_config;
pub mod virtio_net_queue;
pub mod virtio_queue;
pub mod vtd_dma;
pub mod vtd_mmio;
pub mod vtd_posting;

pub use encode::Encode;
pub use fake_mem::FakeMem;

use arbitrary::{Arbitrary, Unstructured};
use virtual_iommu::msi::{MsiMessage, MSI_ADDR_BASE, MSI_ADDR_BASE_MASK};

/// Decodes `data` as a sequence of `T` (one after the other until the bytes run out) and
/// hands each to `f`. Stops at the first element that fails to decode.
pub fn for_each_op<'a, T: Arbitrary<'a>>(data: &'a [u8], mut f: impl FnMut(T)) {
    let mut u = Unstructured::new(data);
    while !u.is_empty() {
        match T::arbitrary(&mut u) {
            Ok(op) => f(op),
            Err(_) => break,
        }
    }
}

/// Asserts that `msg` is an interrupt KVM accepts in its x2APIC API layout: address in the
/// `0xfeeX_XXXX` window and `address_hi` bits 7:0 clear (KVM rejects a route or
/// `KVM_SIGNAL_MSI` whose `address_hi` low byte is set). `what` names the producer.
pub fn assert_kvm_msi(msg: &MsiMessage, what: &str) {
    assert_eq!(
        msg.address_lo & MSI_ADDR_BASE_MASK,
        MSI_ADDR_BASE,
        "{what}: interrupt outside the 0xfee window: {msg:x?}"
    );
    assert_eq!(
        msg.address_hi & 0xff,
        0,
        "{what}: address_hi bits 7:0 set (KVM rejects it): {msg:x?}"
    );
}

/// Asserts that `msg` is a raw (untranslated) interrupt message a device may put on the
/// bus as an interrupt: a 32-bit address in the `0xfeeX_XXXX` window. A message whose
/// 64-bit address is anywhere else is a memory write, not an interrupt.
pub fn assert_raw_interrupt(msg: &MsiMessage, what: &str) {
    assert_eq!(
        msg.address_lo & MSI_ADDR_BASE_MASK,
        MSI_ADDR_BASE,
        "{what}: route outside the 0xfee window: {msg:x?}"
    );
    assert_eq!(
        msg.address_hi, 0,
        "{what}: route with a 64-bit address above 4 GiB: {msg:x?}"
    );
}

/// The access sizes guests can produce on x86 (plus a few they cannot, which every bus
/// device must still survive): index `n % 8` of `[1, 2, 4, 8, 0, 3, 16, 6]`.
pub fn access_size(n: u8) -> usize {
    const SIZES: [usize; 8] = [1, 2, 4, 8, 0, 3, 16, 6];
    SIZES[usize::from(n % 8)]
}

/// `value`'s low `len` bytes, little-endian, zero-extended past 8 bytes.
pub fn value_bytes(value: u64, len: usize) -> Vec<u8> {
    let mut v = value.to_le_bytes().to_vec();
    v.resize(len.max(8), 0);
    v.truncate(len);
    v
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every committed seed still runs through its harness without a failure (the seeds
    /// are also the regression inputs for the bugs the fuzzers found).
    #[test]
    fn committed_seeds_pass() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        type Harness = fn(&[u8]);
        let targets: [(&str, Harness); 8] = [
            ("vtd_mmio", crate::vtd_mmio::run),
            ("remap_decode", crate::remap_decode::run),
            ("ioapic_mmio", crate::ioapic_mmio::run),
            ("pci_config", crate::pci_config::run),
            ("kernel_load", crate::kernel_load::run),
            ("vfio_user_client", crate::vfio_user_client::run),
            ("vfio_function", crate::vfio_function::run),
            ("vtd_dma", crate::vtd_dma::run),
        ];
        for (target, run) in targets {
            let mut seeds = 0;
            for entry in std::fs::read_dir(corpus.join(target)).expect("corpus directory") {
                let path = entry.expect("entry").path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with("seed-") {
                    run(&std::fs::read(&path).expect("seed"));
                    seeds += 1;
                }
            }
            assert!(seeds >= 3, "{target}: only {seeds} seeds");
        }
    }
}
