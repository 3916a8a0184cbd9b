//! Property test of [`build`]: ACPI tables are generated, not parsed, so instead of fuzzing
//! a parser this checks that every table [`build`] generates is well-formed for many
//! random configurations: vCPU counts from 1 to 1024 with random sockets/cores/threads
//! (APIC IDs from [`Topology::apic_ids`]) or random sparse x2APIC IDs, with and without
//! the PCI host bridge (MCFG) and the VT-d unit (DMAR), with and without COM1, in the
//! platform's ACPI window.
//!
//! For every generated set: each table's length field equals its size and its checksum
//! is zero; the RSDP's v1 and extended checksums are zero; the XSDT lists exactly the
//! FADT, the MADT and (when configured) the MCFG and DMAR, at the addresses they were
//! placed at; the FADT points at the DSDT; the MADT describes every vCPU exactly once
//! (type 0 below APIC ID 255, type 9 from 255) plus the IOAPIC, and its entries tile it
//! exactly; tables are 16-byte aligned, disjoint and inside the window.
//!
//! The random numbers come from a fixed-seed SplitMix64, so failures reproduce; the
//! failing case's seed and configuration are in the panic message.

use std::collections::HashSet;

use super::dmar::DmarConfig;
use super::mcfg::EcamConfig;
use super::sdt::checksum;
use super::*;
use crate::layout::{ACPI_END, ACPI_START};
use crate::topology::Topology;

/// Random cases run per test (plus the fixed edge cases).
const CASES: u64 = 300;

/// SplitMix64: a tiny deterministic PRNG (no dependency needed).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `lo..=hi`.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u32
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }

    /// A random divisor of `n`.
    fn divisor(&mut self, n: u32) -> u32 {
        let divisors: Vec<u32> = (1..=n).filter(|d| n.checked_rem(*d) == Some(0)).collect();
        divisors[(self.next() % divisors.len() as u64) as usize]
    }
}

/// A random topology of `cpus` vCPUs: threads and cores are random divisors.
fn random_topology(rng: &mut SplitMix64, cpus: u32) -> Topology {
    let threads = rng.divisor(cpus);
    let cores = rng.divisor(cpus / threads);
    let sockets = cpus / threads / cores;
    Topology::new(cpus, sockets, cores, threads).expect("valid topology")
}

/// `n` distinct x2APIC IDs in ascending order (so IDs below 255 come first, as the MADT's
/// 8-bit UIDs require), sparse over the 32-bit space but never 0xffffffff.
fn random_sparse_ids(rng: &mut SplitMix64, n: u32) -> Vec<u32> {
    let mut set = HashSet::new();
    while set.len() < n as usize {
        let id = match rng.next() % 3 {
            0 => rng.range(0, 254),
            1 => rng.range(255, 0xffff),
            _ => rng.range(0, u32::MAX - 1),
        };
        set.insert(id);
    }
    let mut ids: Vec<u32> = set.into_iter().collect();
    // Ascending: the (at most 255) IDs below 255 get the first UIDs.
    ids.sort_unstable();
    ids
}

/// The PCI host bridge the VMM describes.
fn pci_host() -> PciHostConfig {
    PciHostConfig {
        ecam: EcamConfig {
            base: 0xb000_0000,
            start_bus: 0,
            end_bus: 0xff,
        },
        mmio32_base: 0xc000_0000,
        mmio32_size: 0x3e00_0000,
        intx_routes: Vec::new(),
    }
}

/// The VT-d unit the VMM describes.
fn vtd() -> DmarConfig {
    DmarConfig {
        register_base: 0xfed9_0000,
        host_address_width: 38,
        ioapic_id: 0,
        ioapic_bdf: (0xff, 0, 0),
    }
}

/// A configuration like the VMM's, with the optional parts chosen by `rng`.
fn config(rng: &mut SplitMix64, apic_ids: Vec<u32>) -> AcpiConfig {
    AcpiConfig {
        apic_ids,
        serial: rng.coin().then_some((0x3f8, 4)),
        pci: rng.coin().then(pci_host),
        dmar: rng.coin().then(vtd),
        ..AcpiConfig::default()
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// The blob placed at `addr`.
fn blob_at(t: &AcpiTables, addr: u64) -> &[u8] {
    &t.blobs
        .iter()
        .find(|(a, _)| *a == addr)
        .unwrap_or_else(|| panic!("nothing placed at {addr:#x}"))
        .1
}

/// Checks every property of `t`, built from `cfg` in `[base, limit)`.
fn check(cfg: &AcpiConfig, t: &AcpiTables, base: u64, limit: u64) {
    // Placement.
    assert_eq!(t.rsdp_addr, base);
    let mut end = base;
    for (addr, bytes) in &t.blobs {
        assert_eq!(addr % TABLE_ALIGN, 0, "table at {addr:#x} misaligned");
        assert!(*addr >= end, "table at {addr:#x} overlaps the previous one");
        end = addr + bytes.len() as u64;
    }
    assert!(end <= limit, "tables end at {end:#x}, past {limit:#x}");

    // RSDP: both checksums, length, revision, XSDT pointer.
    let rsdp = blob_at(t, t.rsdp_addr);
    assert_eq!(rsdp.len(), root::RSDP_LEN);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(checksum(&rsdp[..root::RSDP_V1_LEN]), 0, "RSDP v1 checksum");
    assert_eq!(checksum(rsdp), 0, "RSDP extended checksum");
    assert_eq!(u32_at(rsdp, 20) as usize, root::RSDP_LEN);
    assert_eq!(rsdp[15], root::RSDP_REVISION);

    // Every SDT: length field and checksum (the FACS has a length but no checksum).
    for (addr, bytes) in &t.blobs[1..] {
        assert!(bytes.len() >= sdt::HEADER_LEN, "short table at {addr:#x}");
        let sig = String::from_utf8_lossy(&bytes[..4]);
        assert_eq!(
            u32_at(bytes, sdt::LENGTH_OFFSET) as usize,
            bytes.len(),
            "{sig}: length field"
        );
        if sig != "FACS" {
            assert_eq!(checksum(bytes), 0, "{sig}: checksum");
        }
    }

    // XSDT: FADT, MADT, then MCFG and DMAR when configured, each placed exactly there.
    let xsdt = blob_at(t, u64_at(rsdp, 24));
    assert_eq!(&xsdt[..4], b"XSDT");
    let entries: Vec<u64> = xsdt[sdt::HEADER_LEN..]
        .chunks(root::XSDT_ENTRY_LEN)
        .map(|e| u64::from_le_bytes(e.try_into().expect("8-byte entry")))
        .collect();
    let sigs: Vec<&[u8]> = entries.iter().map(|a| &blob_at(t, *a)[..4]).collect();
    let mut expected: Vec<&[u8]> = vec![b"FACP", b"APIC"];
    if cfg.pci.is_some() {
        expected.push(b"MCFG");
    }
    if cfg.dmar.is_some() {
        expected.push(b"DMAR");
    }
    assert_eq!(sigs, expected, "XSDT entries");
    assert_eq!(t.blobs.len(), 4 + entries.len(), "unreferenced blobs");

    // FADT -> DSDT (both pointers) and FACS (64-byte aligned).
    let fadt = blob_at(t, entries[0]);
    let dsdt_addr = u64_at(fadt, 140);
    assert_eq!(u64::from(u32_at(fadt, 40)), dsdt_addr);
    assert_eq!(&blob_at(t, dsdt_addr)[..4], b"DSDT");
    let facs_addr = u64::from(u32_at(fadt, 36));
    assert_eq!(facs_addr % 64, 0, "FACS alignment");
    assert_eq!(&blob_at(t, facs_addr)[..4], b"FACS");

    // MADT: entries tile the table; every vCPU once, with the right entry type.
    let madt = blob_at(t, entries[1]);
    let mut off = sdt::HEADER_LEN + 8;
    let mut seen = Vec::new();
    let (mut ioapics, mut overrides, mut nmis, mut x2nmis) = (0, 0, 0, 0);
    while off < madt.len() {
        let len = usize::from(madt[off + 1]);
        assert!(len >= 2 && off + len <= madt.len(), "MADT entry at {off}");
        match madt[off] {
            0 => {
                assert_eq!(len, 8);
                let id = u32::from(madt[off + 3]);
                assert!(id < 255, "type 0 entry for APIC ID {id}");
                assert_eq!(usize::from(madt[off + 2]), seen.len(), "UID order");
                seen.push(id);
            }
            9 => {
                assert_eq!(len, 16);
                let id = u32_at(madt, off + 4);
                assert!(id >= 255, "type 9 entry for APIC ID {id}");
                assert_eq!(u32_at(madt, off + 12) as usize, seen.len(), "UID order");
                seen.push(id);
            }
            1 => ioapics += 1,
            2 => overrides += 1,
            4 => nmis += 1,
            0xa => x2nmis += 1,
            other => panic!("unexpected MADT entry type {other}"),
        }
        off += len;
    }
    assert_eq!(off, madt.len(), "MADT entries overrun");
    assert_eq!(seen, cfg.apic_ids, "MADT vCPUs");
    assert_eq!(ioapics, 1);
    assert_eq!(overrides, 1, "the SCI's override");
    assert_eq!(
        nmis,
        usize::from(seen.iter().any(|id| *id < 255)),
        "LAPIC NMI"
    );
    assert_eq!(
        x2nmis,
        usize::from(seen.iter().any(|id| *id >= 255)),
        "x2APIC NMI"
    );
}

/// Builds `cfg` in the platform's window and checks it, naming `case` on failure.
fn build_and_check(cfg: &AcpiConfig, case: &str) {
    let t = build(cfg, ACPI_START, ACPI_END).unwrap_or_else(|e| {
        panic!(
            "{case}: {} vCPUs (pci {}, dmar {}): {e}",
            cfg.apic_ids.len(),
            cfg.pci.is_some(),
            cfg.dmar.is_some()
        )
    });
    check(cfg, &t, ACPI_START, ACPI_END);
}

#[test]
fn random_topologies_generate_well_formed_tables() {
    let mut rng = SplitMix64(0xac91_7ab1_e5ee_d001);
    let edges = [1u32, 2, 254, 255, 256, 257, 511, 512, 1000, 1023, 1024];
    for case in 0..CASES + edges.len() as u64 {
        let cpus = match edges.get(case as usize) {
            Some(&n) => n,
            None => rng.range(1, 1024),
        };
        let topo = random_topology(&mut rng, cpus);
        let cfg = config(&mut rng, topo.apic_ids());
        build_and_check(
            &cfg,
            &format!(
                "case {case}: {}x{}x{}",
                topo.sockets, topo.cores, topo.threads
            ),
        );
    }
}

#[test]
fn random_sparse_apic_ids_generate_well_formed_tables() {
    let mut rng = SplitMix64(0x0b5e_55ed_u64);
    for case in 0..CASES {
        let cpus = rng.range(1, 1024);
        let ids = random_sparse_ids(&mut rng, cpus);
        let cfg = config(&mut rng, ids);
        build_and_check(&cfg, &format!("sparse case {case}"));
    }
}

#[test]
fn all_four_optional_table_combinations_at_the_extremes() {
    for cpus in [1u32, 1024] {
        for (pci, dmar) in [(false, false), (true, false), (false, true), (true, true)] {
            let cfg = AcpiConfig {
                apic_ids: Topology::flat(cpus).expect("flat").apic_ids(),
                pci: pci.then(pci_host),
                dmar: dmar.then(vtd),
                ..AcpiConfig::default()
            };
            build_and_check(&cfg, &format!("{cpus} vCPUs, pci {pci}, dmar {dmar}"));
        }
    }
}
