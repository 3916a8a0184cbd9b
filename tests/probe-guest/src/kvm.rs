//! KVM's paravirtual CPUID leaves: finding the hypervisor base leaf ("KVMKVMKVM") and
//! reading its feature bits (Documentation/virt/kvm/x86/cpuid.rst).
//!
//! The base is 0x40000000 unless another hypervisor interface (e.g. Hyper-V enlightenments)
//! sits there, in which case KVM's leaves move up in steps of 0x100; the probe looks at the
//! same range Linux does.

use crate::x86;

/// First hypervisor CPUID leaf.
const HYPERVISOR_LEAF_FIRST: u32 = 0x4000_0000;
/// Last base the search looks at.
const HYPERVISOR_LEAF_LAST: u32 = 0x4000_ff00;
/// Distance between candidate bases.
const HYPERVISOR_LEAF_STEP: u32 = 0x100;
/// CPUID leaf 1 ECX bit 31: running under a hypervisor.
const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;
/// KVM's signature in EBX, ECX, EDX of the base leaf.
const KVM_SIGNATURE: [u8; 12] = *b"KVMKVMKVM\0\0\0";
/// Offset of the features leaf from the base.
const FEATURES_OFFSET: u32 = 1;

/// `KVM_FEATURE_CLOCKSOURCE2` (EAX bit 3): kvmclock at MSR 0x4b564d01.
pub const FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// `KVM_FEATURE_MSI_EXT_DEST_ID` (EAX bit 15): MSI address bits 11:5 (IOAPIC RTE bits
/// 55:49) carry APIC ID bits 14:8.
pub const FEATURE_MSI_EXT_DEST_ID: u32 = 1 << 15;

/// KVM's paravirtual interface as CPUID describes it.
#[derive(Clone, Copy, Debug)]
pub struct Kvm {
    /// The base leaf ("KVMKVMKVM").
    pub base: u32,
    /// EAX of the base leaf: the highest KVM leaf.
    pub max_leaf: u32,
    /// EAX of the features leaf (0 when the base leaf says it does not exist).
    pub features: u32,
}

impl Kvm {
    /// Finds KVM's leaves; `None` when not running under KVM (or KVM hides itself).
    pub fn detect() -> Option<Kvm> {
        if x86::cpuid(1, 0).ecx & CPUID1_ECX_HYPERVISOR == 0 {
            return None;
        }
        let mut base = HYPERVISOR_LEAF_FIRST;
        while base <= HYPERVISOR_LEAF_LAST {
            let leaf = x86::cpuid(base, 0);
            let mut signature = [0u8; 12];
            signature[..4].copy_from_slice(&leaf.ebx.to_le_bytes());
            signature[4..8].copy_from_slice(&leaf.ecx.to_le_bytes());
            signature[8..].copy_from_slice(&leaf.edx.to_le_bytes());
            if signature == KVM_SIGNATURE {
                // Old KVMs leave EAX 0 and still have the features leaf.
                let max_leaf = if leaf.eax == 0 {
                    base + FEATURES_OFFSET
                } else {
                    leaf.eax
                };
                let features = if max_leaf >= base + FEATURES_OFFSET {
                    x86::cpuid(base + FEATURES_OFFSET, 0).eax
                } else {
                    0
                };
                return Some(Kvm {
                    base,
                    max_leaf,
                    features,
                });
            }
            base += HYPERVISOR_LEAF_STEP;
        }
        None
    }

    /// Whether every bit of `feature` is set in the features leaf's EAX.
    pub fn has(&self, feature: u32) -> bool {
        self.features & feature == feature
    }
}
