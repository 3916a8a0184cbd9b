//! Guest CPUID: KVM's supported leaves, the vCPU's topology, the hypervisor leaves, and
//! the user's feature overrides (`--cpu-features`).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use thiserror::Error;

use crate::topology::Topology;

/// CPUID errors.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpuidError {
    /// A `--cpu-features` entry names no known feature.
    #[error("unknown CPU feature '{name}' (known: {known})")]
    UnknownFeature {
        /// The name given.
        name: String,
        /// Comma-separated list of known names.
        known: String,
    },
    /// A `--cpu-features` entry lacks its `+` or `-` sign.
    #[error("'{0}' must start with '-' (hide) or '+' (offer)")]
    MissingSign(String),
    /// `+feature` for something the host's KVM cannot offer.
    #[error("CPU feature '{0}' cannot be offered: this host's KVM does not support it")]
    Unsupported(String),
    /// KVM's CPUID list has no room for the topology leaves.
    #[error("CPUID table full")]
    TableFull,
}

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// A named CPUID feature bit.
#[derive(Clone, Copy, Debug)]
pub struct FeatureBit {
    /// Name as used on the command line (Linux `/proc/cpuinfo` spelling where one exists).
    pub name: &'static str,
    /// CPUID leaf.
    pub leaf: u32,
    /// CPUID subleaf.
    pub subleaf: u32,
    /// Register.
    pub reg: Reg,
    /// Bit number.
    pub bit: u8,
}

const fn fb(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> FeatureBit {
    FeatureBit {
        name,
        leaf,
        subleaf,
        reg,
        bit,
    }
}

/// Leaf of the basic feature flags.
pub const LEAF_FEATURES: u32 = 1;
/// Deterministic cache parameters.
pub const LEAF_CACHE: u32 = 4;
/// Structured extended features.
pub const LEAF_EXT_FEATURES: u32 = 7;
/// Extended topology enumeration.
pub const LEAF_TOPOLOGY: u32 = 0xb;
/// Processor extended state.
pub const LEAF_XSAVE: u32 = 0xd;
/// V2 extended topology enumeration.
pub const LEAF_TOPOLOGY_V2: u32 = 0x1f;
/// KVM signature leaf.
pub const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
/// KVM paravirtual features leaf.
pub const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
/// Extended features (AMD-defined).
pub const LEAF_EXT_AMD: u32 = 0x8000_0001;

/// Leaf 1 EDX: hyper-threading (more than one logical processor per package).
const LEAF1_EDX_HTT: u8 = 28;
/// Leaf 1 EBX: initial APIC ID field shift.
const LEAF1_EBX_APIC_ID_SHIFT: u32 = 24;
/// Leaf 1 EBX: logical processors per package field shift.
const LEAF1_EBX_COUNT_SHIFT: u32 = 16;
/// Leaf 4 EAX: cores per package minus one, shift (bits 31:26).
const LEAF4_EAX_CORES_SHIFT: u32 = 26;
/// Leaf 4 EAX: threads sharing this cache minus one, shift (bits 25:14).
const LEAF4_EAX_SHARING_SHIFT: u32 = 14;
/// Leaf 4 EAX: cache level field (bits 7:5).
const LEAF4_EAX_LEVEL_SHIFT: u32 = 5;
/// Leaf 0xB/0x1F ECX: level type shift.
const TOPOLOGY_ECX_TYPE_SHIFT: u32 = 8;
/// Level type SMT.
const TOPOLOGY_TYPE_SMT: u32 = 1;
/// Level type core.
const TOPOLOGY_TYPE_CORE: u32 = 2;

/// KVM PV features that make the guest issue hypercalls; this KVM family may not complete
/// them (see the build-machine notes), so they are off unless asked for with `+name`.
const KVM_FEATURE_PV_UNHALT: u8 = 7;
const KVM_FEATURE_PV_SEND_IPI: u8 = 11;
const KVM_FEATURE_PV_SCHED_YIELD: u8 = 13;
const KVM_FEATURE_HC_MAP_GPA_RANGE: u8 = 16;
/// KVM_FEATURE_MSI_EXT_DEST_ID: the guest may use MSI address bits 11:5 for APIC ID 14:8.
pub const KVM_FEATURE_MSI_EXT_DEST_ID: u8 = 15;

/// Hypercall-based PV features hidden by default.
const HYPERCALL_FEATURES: [u8; 4] = [
    KVM_FEATURE_PV_UNHALT,
    KVM_FEATURE_PV_SEND_IPI,
    KVM_FEATURE_PV_SCHED_YIELD,
    KVM_FEATURE_HC_MAP_GPA_RANGE,
];

/// Features `--cpu-features` can name.
pub const FEATURES: &[FeatureBit] = &[
    fb("sse3", LEAF_FEATURES, 0, Reg::Ecx, 0),
    fb("pclmulqdq", LEAF_FEATURES, 0, Reg::Ecx, 1),
    fb("monitor", LEAF_FEATURES, 0, Reg::Ecx, 3),
    fb("ssse3", LEAF_FEATURES, 0, Reg::Ecx, 9),
    fb("fma", LEAF_FEATURES, 0, Reg::Ecx, 12),
    fb("cx16", LEAF_FEATURES, 0, Reg::Ecx, 13),
    fb("pcid", LEAF_FEATURES, 0, Reg::Ecx, 17),
    fb("sse4_1", LEAF_FEATURES, 0, Reg::Ecx, 19),
    fb("sse4_2", LEAF_FEATURES, 0, Reg::Ecx, 20),
    fb("x2apic", LEAF_FEATURES, 0, Reg::Ecx, 21),
    fb("movbe", LEAF_FEATURES, 0, Reg::Ecx, 22),
    fb("popcnt", LEAF_FEATURES, 0, Reg::Ecx, 23),
    fb("tsc_deadline_timer", LEAF_FEATURES, 0, Reg::Ecx, 24),
    fb("aes", LEAF_FEATURES, 0, Reg::Ecx, 25),
    fb("xsave", LEAF_FEATURES, 0, Reg::Ecx, 26),
    fb("avx", LEAF_FEATURES, 0, Reg::Ecx, 28),
    fb("f16c", LEAF_FEATURES, 0, Reg::Ecx, 29),
    fb("rdrand", LEAF_FEATURES, 0, Reg::Ecx, 30),
    fb("fsgsbase", LEAF_EXT_FEATURES, 0, Reg::Ebx, 0),
    fb("bmi1", LEAF_EXT_FEATURES, 0, Reg::Ebx, 3),
    fb("avx2", LEAF_EXT_FEATURES, 0, Reg::Ebx, 5),
    fb("smep", LEAF_EXT_FEATURES, 0, Reg::Ebx, 7),
    fb("bmi2", LEAF_EXT_FEATURES, 0, Reg::Ebx, 8),
    fb("erms", LEAF_EXT_FEATURES, 0, Reg::Ebx, 9),
    fb("invpcid", LEAF_EXT_FEATURES, 0, Reg::Ebx, 10),
    fb("avx512f", LEAF_EXT_FEATURES, 0, Reg::Ebx, 16),
    fb("rdseed", LEAF_EXT_FEATURES, 0, Reg::Ebx, 18),
    fb("adx", LEAF_EXT_FEATURES, 0, Reg::Ebx, 19),
    fb("smap", LEAF_EXT_FEATURES, 0, Reg::Ebx, 20),
    fb("umip", LEAF_EXT_FEATURES, 0, Reg::Ecx, 2),
    fb("pku", LEAF_EXT_FEATURES, 0, Reg::Ecx, 3),
    fb("la57", LEAF_EXT_FEATURES, 0, Reg::Ecx, 16),
    fb("rdpid", LEAF_EXT_FEATURES, 0, Reg::Ecx, 22),
    fb("xsaveopt", LEAF_XSAVE, 1, Reg::Eax, 0),
    fb("xsavec", LEAF_XSAVE, 1, Reg::Eax, 1),
    fb("xsaves", LEAF_XSAVE, 1, Reg::Eax, 3),
    fb("lahf_lm", LEAF_EXT_AMD, 0, Reg::Ecx, 0),
    fb("abm", LEAF_EXT_AMD, 0, Reg::Ecx, 5),
    fb("pdpe1gb", LEAF_EXT_AMD, 0, Reg::Edx, 26),
    fb("rdtscp", LEAF_EXT_AMD, 0, Reg::Edx, 27),
    fb("kvmclock", LEAF_KVM_FEATURES, 0, Reg::Eax, 3),
    fb("kvm-async-pf", LEAF_KVM_FEATURES, 0, Reg::Eax, 4),
    fb("kvm-steal-time", LEAF_KVM_FEATURES, 0, Reg::Eax, 5),
    fb("kvm-pv-eoi", LEAF_KVM_FEATURES, 0, Reg::Eax, 6),
    fb(
        "kvm-pv-unhalt",
        LEAF_KVM_FEATURES,
        0,
        Reg::Eax,
        KVM_FEATURE_PV_UNHALT,
    ),
    fb("kvm-pv-tlb-flush", LEAF_KVM_FEATURES, 0, Reg::Eax, 9),
    fb(
        "kvm-pv-send-ipi",
        LEAF_KVM_FEATURES,
        0,
        Reg::Eax,
        KVM_FEATURE_PV_SEND_IPI,
    ),
    fb("kvm-poll-control", LEAF_KVM_FEATURES, 0, Reg::Eax, 12),
    fb(
        "kvm-pv-sched-yield",
        LEAF_KVM_FEATURES,
        0,
        Reg::Eax,
        KVM_FEATURE_PV_SCHED_YIELD,
    ),
    fb(
        "kvm-msi-ext-dest-id",
        LEAF_KVM_FEATURES,
        0,
        Reg::Eax,
        KVM_FEATURE_MSI_EXT_DEST_ID,
    ),
];

/// One `--cpu-features` entry, resolved.
#[derive(Clone, Copy, Debug)]
pub struct FeatureOverride {
    /// The bit.
    pub feature: FeatureBit,
    /// `true` for `+name` (offer), `false` for `-name` (hide).
    pub enable: bool,
}

/// Parses a `--cpu-features` list such as `-cx16,-xsave,+kvm-pv-send-ipi`.
pub fn parse_overrides(spec: &str) -> Result<Vec<FeatureOverride>, CpuidError> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (enable, name) = match item.split_at(1) {
            ("-", rest) => (false, rest),
            ("+", rest) => (true, rest),
            _ => return Err(CpuidError::MissingSign(item.to_string())),
        };
        let feature = FEATURES
            .iter()
            .find(|f| f.name == name)
            .copied()
            .ok_or_else(|| CpuidError::UnknownFeature {
                name: name.to_string(),
                known: FEATURES
                    .iter()
                    .map(|f| f.name)
                    .collect::<Vec<_>>()
                    .join(","),
            })?;
        out.push(FeatureOverride { feature, enable });
    }
    Ok(out)
}

fn reg_mut(e: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// Options that shape the guest's CPUID beyond what KVM supports.
#[derive(Clone, Debug, Default)]
pub struct CpuidOptions {
    /// User overrides, applied last.
    pub overrides: Vec<FeatureOverride>,
    /// Offer KVM_FEATURE_MSI_EXT_DEST_ID.
    pub ext_dest_id: bool,
}

/// Builds the VM-wide CPUID template from KVM's supported list: hypercall PV features off,
/// extended destination ID per `opts`, then the overrides. Checks that every `+feature` is
/// one KVM supports.
pub fn vm_template(
    supported: &CpuId,
    opts: &CpuidOptions,
) -> Result<Vec<kvm_cpuid_entry2>, CpuidError> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    let supported_bit = |f: &FeatureBit| {
        supported.as_slice().iter().any(|e| {
            e.function == f.leaf && e.index == f.subleaf && {
                let mut c = *e;
                *reg_mut(&mut c, f.reg) & (1 << f.bit) != 0
            }
        })
    };
    for e in entries.iter_mut() {
        if e.function == LEAF_KVM_FEATURES {
            for bit in HYPERCALL_FEATURES {
                e.eax &= !(1 << bit);
            }
            if opts.ext_dest_id {
                e.eax |= 1 << KVM_FEATURE_MSI_EXT_DEST_ID;
            } else {
                e.eax &= !(1 << KVM_FEATURE_MSI_EXT_DEST_ID);
            }
        }
    }
    for o in &opts.overrides {
        let f = o.feature;
        // The extended destination ID is the VMM's own decoding, not a KVM capability.
        let vmm_provided = f.leaf == LEAF_KVM_FEATURES && f.bit == KVM_FEATURE_MSI_EXT_DEST_ID;
        if o.enable && !vmm_provided && !supported_bit(&f) {
            return Err(CpuidError::Unsupported(f.name.to_string()));
        }
        for e in entries
            .iter_mut()
            .filter(|e| e.function == f.leaf && e.index == f.subleaf)
        {
            let r = reg_mut(e, f.reg);
            if o.enable {
                *r |= 1 << f.bit;
            } else {
                *r &= !(1 << f.bit);
            }
        }
    }
    Ok(entries)
}

/// The `-name` entries of `overrides` whose bit `reported` (a vCPU's CPUID as KVM_GET_CPUID2
/// returns it after KVM_SET_CPUID2) still has set: features the host's KVM shows the guest
/// whatever the VMM asked. On the build machines' emulating KVM that is, for one, leaf 7 as a
/// whole and popcnt, SSE4, AES and XSAVE in leaf 1 (see README, "Known host quirks").
pub fn hidden_but_reported(
    overrides: &[FeatureOverride],
    reported: &[kvm_cpuid_entry2],
) -> Vec<&'static str> {
    overrides
        .iter()
        .filter(|o| !o.enable)
        .map(|o| o.feature)
        .filter(|f| {
            reported.iter().any(|e| {
                e.function == f.leaf && e.index == f.subleaf && {
                    let mut c = *e;
                    *reg_mut(&mut c, f.reg) & (1 << f.bit) != 0
                }
            })
        })
        .map(|f| f.name)
        .collect()
}

/// Reads vCPU `fd`'s CPUID back and warns about every feature `overrides` hid that KVM
/// reports anyway: the guest will see it, and a guest kernel must be told otherwise (Linux:
/// `clearcpuid=`). Does nothing when nothing is hidden.
pub fn warn_hidden_but_reported(overrides: &[FeatureOverride], fd: &kvm_ioctls::VcpuFd) {
    if overrides.iter().all(|o| o.enable) {
        return;
    }
    let reported = match fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES) {
        Ok(c) => c,
        Err(e) => {
            log::debug!("KVM_GET_CPUID2: {e}; hidden features not checked");
            return;
        }
    };
    let leaked = hidden_but_reported(overrides, reported.as_slice());
    if !leaked.is_empty() {
        let names = leaked.join(",");
        log::warn!(
            "--cpu-features: this host's KVM shows the guest {names} although irvmm hid them \
             (KVM_GET_CPUID2 reports them after KVM_SET_CPUID2); a Linux guest needs \
             clearcpuid={names} (README: Known host quirks)"
        );
    }
}

fn topology_level(
    leaf: u32,
    subleaf: u32,
    eax: u32,
    ebx: u32,
    ty: u32,
    apic_id: u32,
) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function: leaf,
        index: subleaf,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: subleaf | (ty << TOPOLOGY_ECX_TYPE_SHIFT),
        edx: apic_id,
        ..Default::default()
    }
}

/// Specialises the template for the vCPU with `apic_id`: leaf 1 APIC ID and counts, leaf 4
/// core counts, and leaves 0xB/0x1F describing `topo` with the full 32-bit x2APIC ID.
pub fn for_vcpu(
    template: &[kvm_cpuid_entry2],
    topo: &Topology,
    apic_id: u32,
) -> Result<CpuId, CpuidError> {
    let per_socket = topo.per_socket();
    let smt_shift = topo.thread_bits();
    let core_shift = smt_shift + topo.core_bits();
    let has_v2 = template.iter().any(|e| e.function == LEAF_TOPOLOGY_V2);
    let mut entries: Vec<kvm_cpuid_entry2> = template
        .iter()
        .filter(|e| e.function != LEAF_TOPOLOGY && e.function != LEAF_TOPOLOGY_V2)
        .copied()
        .collect();
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff)
                    | ((apic_id & 0xff) << LEAF1_EBX_APIC_ID_SHIFT)
                    | ((per_socket.min(0xff)) << LEAF1_EBX_COUNT_SHIFT);
                if per_socket > 1 {
                    e.edx |= 1 << LEAF1_EDX_HTT;
                } else {
                    e.edx &= !(1 << LEAF1_EDX_HTT);
                }
            }
            LEAF_CACHE => {
                let level = (e.eax >> LEAF4_EAX_LEVEL_SHIFT) & 0x7;
                let sharing = if level >= 3 { per_socket } else { topo.threads };
                let cores = topo.cores.min(64);
                e.eax = (e.eax & ((1 << LEAF4_EAX_SHARING_SHIFT) - 1))
                    | (((cores - 1) & 0x3f) << LEAF4_EAX_CORES_SHIFT)
                    | (((sharing - 1) & 0xfff) << LEAF4_EAX_SHARING_SHIFT);
            }
            _ => {}
        }
    }
    for leaf in std::iter::once(LEAF_TOPOLOGY).chain(has_v2.then_some(LEAF_TOPOLOGY_V2)) {
        entries.push(topology_level(
            leaf,
            0,
            smt_shift,
            topo.threads,
            TOPOLOGY_TYPE_SMT,
            apic_id,
        ));
        entries.push(topology_level(
            leaf,
            1,
            core_shift,
            per_socket,
            TOPOLOGY_TYPE_CORE,
            apic_id,
        ));
        entries.push(topology_level(leaf, 2, 0, 0, 0, apic_id));
    }
    CpuId::from_entries(&entries).map_err(|_| CpuidError::TableFull)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn supported() -> CpuId {
        let mut l1 = entry(1, 0);
        l1.ecx = (1 << 13) | (1 << 26) | (1 << 21);
        l1.ebx = 0x0001_0800;
        let mut kvm = entry(LEAF_KVM_FEATURES, 0);
        kvm.eax = (1 << 3) | (1 << KVM_FEATURE_PV_SEND_IPI) | (1 << KVM_FEATURE_PV_UNHALT);
        let mut l4 = entry(4, 0);
        l4.eax = (1 << LEAF4_EAX_LEVEL_SHIFT) | 1;
        CpuId::from_entries(&[l1, kvm, l4, entry(0xb, 0), entry(0x1f, 0)]).unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn parse_accepts_signed_names_and_rejects_others() {
        let o = parse_overrides("-cx16, -xsave,+kvm-pv-send-ipi").unwrap();
        assert_eq!(o.len(), 3);
        assert!(!o[0].enable && o[0].feature.bit == 13);
        assert!(o[2].enable);
        assert!(matches!(
            parse_overrides("-bogus"),
            Err(CpuidError::UnknownFeature { .. })
        ));
        assert!(matches!(parse_overrides("cx16"), Err(CpuidError::MissingSign(s)) if s == "cx16"));
    }

    #[test]
    fn template_hides_hypercall_features_and_applies_overrides() {
        let opts = CpuidOptions {
            overrides: parse_overrides("-cx16").unwrap(),
            ext_dest_id: true,
        };
        let t = vm_template(&supported(), &opts).unwrap();
        let kvm = t.iter().find(|e| e.function == LEAF_KVM_FEATURES).unwrap();
        assert_eq!(kvm.eax & (1 << KVM_FEATURE_PV_SEND_IPI), 0);
        assert_eq!(kvm.eax & (1 << KVM_FEATURE_PV_UNHALT), 0);
        assert_ne!(kvm.eax & (1 << KVM_FEATURE_MSI_EXT_DEST_ID), 0);
        let l1 = t.iter().find(|e| e.function == 1).unwrap();
        assert_eq!(l1.ecx & (1 << 13), 0);
        assert_ne!(l1.ecx & (1 << 26), 0);
    }

    #[test]
    fn enabling_unsupported_feature_fails() {
        let opts = CpuidOptions {
            overrides: parse_overrides("+avx2").unwrap(),
            ext_dest_id: false,
        };
        assert!(
            matches!(vm_template(&supported(), &opts), Err(CpuidError::Unsupported(s)) if s == "avx2")
        );
        let opts = CpuidOptions {
            overrides: parse_overrides("+kvm-pv-send-ipi").unwrap(),
            ext_dest_id: false,
        };
        assert!(vm_template(&supported(), &opts).is_ok());
    }

    /// On a host with /dev/kvm: what KVM offers, what irvmm sets with `-popcnt,-smap`, and
    /// what KVM_GET_CPUID2 then reports for the vCPU. irvmm's side must hide both bits; what
    /// the guest's CPUID instruction returns is the probe's `cpuid` scenario's business (on
    /// the build machines' emulating KVM it still returns them: see README, "Known host
    /// quirks"). Prints the three views of leaves 1 and 7 (`--nocapture`).
    #[test]
    fn kvm_keeps_the_bits_irvmm_hides() {
        use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("kvm_keeps_the_bits_irvmm_hides SKIPPED: /dev/kvm cannot be opened");
            return;
        };
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let opts = CpuidOptions {
            overrides: parse_overrides("-popcnt,-smap").unwrap(),
            ext_dest_id: false,
        };
        let template = vm_template(&supported, &opts).unwrap();
        let topo = Topology::new(1, 1, 1, 1).unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        vcpu.set_cpuid2(&for_vcpu(&template, &topo, 0).unwrap())
            .unwrap();
        let set = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
        let leaf = |c: &[kvm_cpuid_entry2], f: u32| {
            c.iter()
                .find(|e| e.function == f && e.index == 0)
                .copied()
                .unwrap_or_default()
        };
        for (name, c) in [
            ("KVM_GET_SUPPORTED_CPUID", supported.as_slice()),
            ("irvmm template", &template[..]),
            ("KVM_GET_CPUID2 (vCPU)", set.as_slice()),
        ] {
            let (l1, l7) = (leaf(c, LEAF_FEATURES), leaf(c, LEAF_EXT_FEATURES));
            eprintln!(
                "{name:24} leaf1 ecx={:#010x} (popcnt {}) leaf7 ebx={:#010x} (smap {}, smep {})",
                l1.ecx,
                (l1.ecx >> 23) & 1,
                l7.ebx,
                (l7.ebx >> 20) & 1,
                (l7.ebx >> 7) & 1
            );
        }
        // irvmm's side: both bits clear in what it sets.
        let (t1, t7) = (leaf(&template, 1), leaf(&template, 7));
        assert_eq!(t1.ecx & (1 << 23), 0, "popcnt hidden by irvmm");
        assert_eq!(t7.ebx & (1 << 20), 0, "smap hidden by irvmm");
        // KVM's side: a KVM that keeps what was set reports them clear; one that does not is
        // named by hidden_but_reported, which irvmm turns into a warning.
        let leaked = hidden_but_reported(&opts.overrides, set.as_slice());
        let (l1, l7) = (leaf(set.as_slice(), 1), leaf(set.as_slice(), 7));
        let kept = (l1.ecx & (1 << 23) == 0, l7.ebx & (1 << 20) == 0);
        assert_eq!(leaked.contains(&"popcnt"), !kept.0);
        assert_eq!(leaked.contains(&"smap"), !kept.1);
        if !leaked.is_empty() {
            eprintln!("OBSERVED: this host's KVM ignores the hiding of {leaked:?}");
        }
    }

    #[test]
    fn hidden_but_reported_names_only_hidden_features_still_set() {
        let overrides = parse_overrides("-popcnt,-smap,-cx16,+x2apic").unwrap();
        let mut l1 = entry(1, 0);
        l1.ecx = (1 << 23) | (1 << 21);
        let mut l7 = entry(7, 0);
        l7.ebx = 1 << 7;
        assert_eq!(hidden_but_reported(&overrides, &[l1, l7]), vec!["popcnt"]);
        l7.ebx |= 1 << 20;
        l1.ecx |= 1 << 13;
        assert_eq!(
            hidden_but_reported(&overrides, &[l1, l7]),
            vec!["popcnt", "smap", "cx16"]
        );
        assert!(hidden_but_reported(&[], &[l1, l7]).is_empty());
    }

    #[test]
    fn per_vcpu_topology_leaves_carry_32_bit_ids() {
        let t = vm_template(&supported(), &CpuidOptions::default()).unwrap();
        let topo = Topology::new(576, 2, 144, 2).unwrap();
        let id = topo.apic_id(575);
        assert!(id > 255);
        let c = for_vcpu(&t, &topo, id).unwrap();
        let smt = find(&c, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.edx), (1, 2, id));
        assert_eq!(smt.ecx, 1 << 8);
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx), (1 + 8, 288));
        assert_eq!(core.ecx, 1 | (2 << 8));
        assert_eq!(find(&c, 0x1f, 1).edx, id);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, id & 0xff);
        assert_ne!(l1.edx & (1 << LEAF1_EDX_HTT), 0);
        let l4 = find(&c, 4, 0);
        assert_eq!(l4.eax >> LEAF4_EAX_CORES_SHIFT, 63);
    }
}
