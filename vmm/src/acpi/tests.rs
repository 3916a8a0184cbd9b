//! Whole-set tests of [`build`]: lengths, checksums, pointers between tables, MADT contents,
//! fitting 1024 vCPUs below 1 MiB, and a disassembly by ACPICA's `iasl -d` when installed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::sdt::checksum;
use super::*;

const BASE: u64 = 0xe0000;
const LIMIT: u64 = 0x10_0000;

fn cfg(n: u32) -> AcpiConfig {
    AcpiConfig {
        apic_ids: (0..n).collect(),
        ..AcpiConfig::default()
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn blob_at(t: &AcpiTables, addr: u64) -> &[u8] {
    &t.blobs
        .iter()
        .find(|(a, _)| *a == addr)
        .unwrap_or_else(|| panic!("no blob at {addr:#x}"))
        .1
}

fn table<'a>(t: &'a AcpiTables, sig: &[u8; 4]) -> &'a [u8] {
    &t.blobs
        .iter()
        .find(|(_, b)| &b[..4] == sig)
        .unwrap_or_else(|| panic!("no {}", String::from_utf8_lossy(sig)))
        .1
}

/// Checks everything that must hold for any configuration.
fn check_consistent(t: &AcpiTables, base: u64, limit: u64) {
    assert_eq!(t.rsdp_addr, base);
    // Blobs ascend, do not overlap, are aligned and stay in the window.
    let mut prev_end = base;
    for (addr, bytes) in &t.blobs {
        assert!(*addr >= prev_end, "overlap at {addr:#x}");
        assert_eq!(addr % 16, 0);
        prev_end = addr + bytes.len() as u64;
    }
    assert!(prev_end <= limit);
    assert_eq!(t.end(), prev_end);

    // RSDP.
    let rsdp = blob_at(t, t.rsdp_addr);
    assert_eq!(rsdp.len(), 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(checksum(&rsdp[..20]), 0);
    assert_eq!(checksum(rsdp), 0);
    assert_eq!(u32_at(rsdp, 20), 36);

    // Every other blob has a right length; all but the FACS are SDTs with a checksum.
    for (addr, bytes) in &t.blobs[1..] {
        assert_eq!(
            u32_at(bytes, 4) as usize,
            bytes.len(),
            "length at {addr:#x}"
        );
        if !bytes.starts_with(b"FACS") {
            assert_eq!(checksum(bytes), 0, "checksum at {addr:#x}");
        }
    }

    // XSDT -> FADT, MADT (then MCFG, DMAR, IVRS when configured); FADT -> DSDT.
    let xsdt = blob_at(t, u64_at(rsdp, 24));
    assert_eq!(&xsdt[..4], b"XSDT");
    let sigs: Vec<[u8; 4]> = xsdt[36..]
        .chunks(8)
        .map(|e| {
            blob_at(t, u64::from_le_bytes(e.try_into().unwrap()))[..4]
                .try_into()
                .unwrap()
        })
        .collect();
    let mut expected = vec![*b"FACP", *b"APIC"];
    if t.blobs.iter().any(|(_, b)| b.starts_with(b"MCFG")) {
        expected.push(*b"MCFG");
    }
    if t.blobs.iter().any(|(_, b)| b.starts_with(b"DMAR")) {
        expected.push(*b"DMAR");
    }
    if t.blobs.iter().any(|(_, b)| b.starts_with(b"IVRS")) {
        expected.push(*b"IVRS");
    }
    assert_eq!(sigs, expected);
    let fadt = table(t, b"FACP");
    let dsdt_addr = u64_at(fadt, 140);
    assert_eq!(&blob_at(t, dsdt_addr)[..4], b"DSDT");
    assert_eq!(u64::from(u32_at(fadt, 40)), dsdt_addr);
    // FADT -> FACS (64-byte aligned, FIRMWARE_CTRL below 4 GiB, else X_FIRMWARE_CTRL).
    let facs_addr = match u32_at(fadt, 36) {
        0 => u64_at(fadt, 132),
        a => {
            assert_eq!(u64_at(fadt, 132), 0, "only one FACS pointer");
            u64::from(a)
        }
    };
    assert_eq!(facs_addr % 64, 0);
    assert_eq!(&blob_at(t, facs_addr)[..4], b"FACS");
    // Every blob is reachable: RSDP, XSDT, FACS, DSDT plus the XSDT's entries.
    assert_eq!(t.blobs.len(), 4 + sigs.len());
}

/// (type count 0, type count 9, type count 1) of a MADT, after checking its one interrupt
/// source override (the SCI) and its NMI entries: a type 4 one when there are type 0
/// entries, a type 0xA one when there are type 9 entries.
fn madt_counts(madt: &[u8]) -> (usize, usize, usize) {
    let (mut c0, mut c9, mut c1, mut c2, mut c4, mut c10) = (0, 0, 0, 0, 0, 0);
    let mut off = 44;
    while off < madt.len() {
        match madt[off] {
            0 => c0 += 1,
            9 => c9 += 1,
            1 => c1 += 1,
            2 => c2 += 1,
            4 => c4 += 1,
            0xa => c10 += 1,
            other => panic!("unexpected MADT entry type {other}"),
        }
        off += usize::from(madt[off + 1]);
    }
    assert_eq!(off, madt.len());
    assert_eq!(c2, 1, "one interrupt source override");
    assert_eq!(c4, usize::from(c0 > 0), "Local APIC NMI entries");
    assert_eq!(c10, usize::from(c9 > 0), "Local x2APIC NMI entries");
    (c0, c9, c1)
}

#[test]
fn madt_entry_counts() {
    for (n, expected) in [
        (1, (1, 0, 1)),
        (4, (4, 0, 1)),
        (288, (255, 33, 1)),
        (1024, (255, 769, 1)),
    ] {
        let t = build(&cfg(n), BASE, LIMIT).unwrap();
        check_consistent(&t, BASE, LIMIT);
        assert_eq!(madt_counts(table(&t, b"APIC")), expected, "{n} vCPUs");
    }
}

#[test]
fn sparse_x2apic_ids() {
    let ids = vec![0, 2, 300, 70_000, 4];
    let t = build(
        &AcpiConfig {
            apic_ids: ids,
            ..AcpiConfig::default()
        },
        BASE,
        LIMIT,
    )
    .unwrap();
    check_consistent(&t, BASE, LIMIT);
    assert_eq!(madt_counts(table(&t, b"APIC")), (3, 2, 1));
}

#[test]
fn fits_1024_cpus_below_1mib() {
    let t = build(&cfg(1024), BASE, LIMIT).unwrap();
    assert!(t.end() <= LIMIT);
    let footprint = t.end() - BASE;
    eprintln!(
        "ACPI footprint with 1024 vCPUs: {footprint} bytes ({:#x})",
        footprint
    );
    for (addr, b) in &t.blobs {
        eprintln!(
            "  {addr:#07x} {} {} bytes",
            String::from_utf8_lossy(&b[..4]),
            b.len()
        );
    }
}

#[test]
fn errors() {
    assert_eq!(build(&cfg(0), BASE, LIMIT), Err(AcpiError::NoCpus));
    let dup = AcpiConfig {
        apic_ids: vec![0, 1, 2, 1],
        ..AcpiConfig::default()
    };
    assert_eq!(build(&dup, BASE, LIMIT), Err(AcpiError::DuplicateApicId(1)));
    let bcast = AcpiConfig {
        apic_ids: vec![0, u32::MAX],
        ..AcpiConfig::default()
    };
    assert_eq!(
        build(&bcast, BASE, LIMIT),
        Err(AcpiError::InvalidApicId(u32::MAX))
    );
    assert_eq!(
        build(&cfg(1), BASE + 8, LIMIT),
        Err(AcpiError::MisalignedBase(BASE + 8))
    );
    assert!(matches!(
        build(&cfg(1024), BASE, BASE + 0x1000),
        Err(AcpiError::DoesNotFit { .. })
    ));
    assert!(matches!(
        build(&cfg(1), u64::MAX - 15, u64::MAX),
        Err(AcpiError::DoesNotFit { .. })
    ));
    assert!(matches!(
        build(&cfg(1), BASE, BASE),
        Err(AcpiError::DoesNotFit { .. })
    ));
    assert!(matches!(
        build(&cfg(dsdt::MAX_CPUS as u32 + 1), 0, u64::MAX),
        Err(AcpiError::TooManyCpus(_))
    ));
}

#[test]
fn tables_above_4gib() {
    let base = 0x1_0000_0000;
    let t = build(&cfg(2), base, base + 0x10000).unwrap();
    check_consistent_64(&t);
}

fn check_consistent_64(t: &AcpiTables) {
    let fadt = table(t, b"FACP");
    assert_eq!(u32_at(fadt, 40), 0);
    assert_eq!(&blob_at(t, u64_at(fadt, 140))[..4], b"DSDT");
    assert_eq!(u32_at(fadt, 36), 0);
    assert_eq!(&blob_at(t, u64_at(fadt, 132))[..4], b"FACS");
}

// ---- iasl ----------------------------------------------------------------------------------

/// A scratch directory removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("irvmm-acpi-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `iasl` can be run; prints the reason when it cannot, straight to stderr so the
/// notice shows even though the test harness captures `eprintln!`.
fn iasl_available() -> bool {
    match Command::new("iasl").arg("-v").output() {
        Ok(_) => true,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "iasl_disassembles_tables SKIPPED: iasl not runnable ({e}); install \
                 acpica-tools to check the tables with the ACPICA disassembler"
            );
            false
        }
    }
}

/// Disassembles `bytes` with `iasl -d` in `dir`; returns the .dsl text after checking that
/// iasl succeeded and reported no errors, warnings or checksum complaints.
fn iasl_disassemble(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let dat = dir.join(format!("{name}.dat"));
    std::fs::write(&dat, bytes).unwrap();
    let out = Command::new("iasl")
        .current_dir(dir)
        .arg("-d")
        .arg(&dat)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "iasl -d {name} failed:\n{log}");
    let lower = log.to_lowercase();
    for bad in ["error", "warning", "checksum", "invalid", "unknown"] {
        assert!(
            !lower.contains(bad),
            "iasl -d {name} reported {bad:?}:\n{log}"
        );
    }
    let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
    let lower = dsl.to_lowercase();
    for bad in ["**** ", "incorrect checksum", "invalid"] {
        assert!(!lower.contains(bad), "{name}.dsl mentions {bad:?}:\n{dsl}");
    }
    dsl
}

/// Recompiles a disassembled DSDT with iasl and checks it compiles without errors.
fn iasl_recompile(dir: &Path, name: &str) {
    let out = Command::new("iasl")
        .current_dir(dir)
        .arg("-p")
        .arg(format!("{name}-re"))
        .arg(format!("{name}.dsl"))
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "iasl {name}.dsl failed:\n{log}");
    assert!(log.contains(" 0 Errors"), "iasl {name}.dsl:\n{log}");
}

#[test]
fn iasl_disassembles_tables() {
    if !iasl_available() {
        return;
    }
    for n in [1u32, 288, 1024] {
        let t = build(&cfg(n), BASE, LIMIT).unwrap();
        let dir = ScratchDir::new(&format!("{n}"));

        let dsdt = iasl_disassemble(&dir.0, "dsdt", table(&t, b"DSDT"));
        assert!(dsdt.contains("_S5_"), "{dsdt}");
        assert!(dsdt.contains("PNP0501"), "{dsdt}");
        assert!(dsdt.contains("IO (Decode16,"), "{dsdt}");
        assert!(dsdt.contains("IRQNoFlags ()"), "{dsdt}");
        assert!(dsdt.contains("ACPI0007"), "{dsdt}");
        iasl_recompile(&dir.0, "dsdt");

        let fadt = iasl_disassemble(&dir.0, "facp", table(&t, b"FACP"));
        for field in [
            "Hardware Reduced (V5) : 0",
            "Reset Register Supported (V2) : 1",
            "SCI Interrupt : 0009",
            "SMI Command Port : 00000000",
            "PM1A Event Block Address : 00000600",
            "PM1A Control Block Address : 00000604",
            "PM1 Event Block Length : 04",
            "PM1 Control Block Length : 02",
            "PM Timer Block Length : 00",
            "Hypervisor ID : 0000004D4D565249",
        ] {
            assert!(squash(&fadt).contains(field), "{field:?} missing:\n{fadt}");
        }
        iasl_disassemble(&dir.0, "facs", table(&t, b"FACS"));

        let madt = iasl_disassemble(&dir.0, "apic", table(&t, b"APIC"));
        let x2 = madt.matches("Processor Local x2APIC").count();
        assert_eq!(x2, n.saturating_sub(255) as usize, "{madt}");
        let flat = squash(&madt);
        for field in [
            "Subtable Type : 02 [Interrupt Source Override]",
            "Source : 09",
            "Interrupt : 00000009",
            "Polarity : 1",
            "Trigger Mode : 3",
            "Subtable Type : 04 [Local APIC NMI]",
            "Processor ID : FF",
            "Interrupt Input LINT : 01",
        ] {
            assert!(flat.contains(field), "{field:?} missing:\n{madt}");
        }
        assert_eq!(
            flat.contains("Subtable Type : 0A [Local x2APIC NMI]"),
            n > 255,
            "{madt}"
        );

        // iasl 20200925 refuses a lone RSDP ("not a valid ACPI table"), so the RSDP is
        // checked by check_consistent only.
        let xsdt = iasl_disassemble(&dir.0, "xsdt", table(&t, b"XSDT"));
        assert_eq!(xsdt.matches("ACPI Table Address").count(), 2, "{xsdt}");
    }
}

/// Collapses runs of whitespace so iasl's column alignment does not matter.
fn squash(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn iasl_disassembles_dmar_mcfg_and_pci_host() {
    if !iasl_available() {
        return;
    }
    let mut c = cfg(288);
    c.pci = Some(super::PciHostConfig {
        ecam: super::mcfg::EcamConfig {
            base: 0xb000_0000,
            start_bus: 0,
            end_bus: 0xff,
        },
        mmio32_base: 0xc000_0000,
        mmio32_size: 0x3e00_0000,
        intx_routes: vec![
            super::IntxRoute {
                device: 3,
                pin: 0,
                gsi: 16,
            },
            super::IntxRoute {
                device: 5,
                pin: 1,
                gsi: 17,
            },
        ],
    });
    c.dmar = Some(super::dmar::DmarConfig {
        register_base: 0xfed9_0000,
        host_address_width: 38,
        ioapic_id: 0,
        ioapic_bdf: (0xff, 0, 0),
    });
    let t = build(&c, BASE, LIMIT).unwrap();
    check_consistent(&t, BASE, LIMIT);
    let dir = ScratchDir::new("dmar");
    let xsdt = iasl_disassemble(&dir.0, "xsdt", table(&t, b"XSDT"));
    assert_eq!(xsdt.matches("ACPI Table Address").count(), 4, "{xsdt}");
    let dmar = squash(&iasl_disassemble(&dir.0, "dmar", table(&t, b"DMAR")));
    for field in [
        "Host Address Width : 26",
        "Flags : 01",
        "Register Base Address : 00000000FED90000",
        "Device Scope Type : 03",
        "Enumeration ID : 00",
        "PCI Bus Number : FF",
    ] {
        assert!(dmar.contains(field), "{field:?} missing:\n{dmar}");
    }
    let dsdt = iasl_disassemble(&dir.0, "dsdt", table(&t, b"DSDT"));
    for needle in [
        "PNP0A08",
        "PNP0A03",
        "PNP0C02",
        "WordBusNumber",
        "DWordMemory",
        "0xFDFFFFFF",
        "Memory32Fixed",
        "_PRT",
    ] {
        assert!(dsdt.contains(needle), "{needle} missing:\n{dsdt}");
    }
    let prt: String = dsdt.split_whitespace().collect();
    for entry in ["0x0003FFFF,Zero,Zero,0x10", "0x0005FFFF,One,Zero,0x11"] {
        assert!(prt.contains(entry), "_PRT entry {entry:?} missing:\n{dsdt}");
    }
    iasl_recompile(&dir.0, "dsdt");
    let mcfg = squash(&iasl_disassemble(&dir.0, "mcfg", table(&t, b"MCFG")));
    assert!(mcfg.contains("Base Address : 00000000B0000000"), "{mcfg}");
    assert!(mcfg.contains("End Bus Number : FF"), "{mcfg}");
}

/// The table set `--iommu amd` emits (the platform's own IVRS configuration): an IVRS
/// instead of the DMAR, naming the unit's function, window and EFR, and an IOAPIC special
/// entry whose handle is the MADT's IOAPIC ID and whose device ID is 00:14.0.
#[test]
fn iasl_disassembles_the_amd_vi_table_set() {
    let mut c = cfg(288);
    c.pci = Some(super::PciHostConfig {
        ecam: super::mcfg::EcamConfig {
            base: 0xb000_0000,
            start_bus: 0,
            end_bus: 0xff,
        },
        mmio32_base: 0xc000_0000,
        mmio32_size: 0x3e00_0000,
        intx_routes: Vec::new(),
    });
    let ivrs_cfg = crate::platform::amd_ivrs_config().unwrap();
    c.ivrs = Some(ivrs_cfg);
    let t = build(&c, BASE, LIMIT).unwrap();
    check_consistent(&t, BASE, LIMIT);
    assert!(
        !t.blobs.iter().any(|(_, b)| &b[..4] == b"DMAR"),
        "no DMAR under AMD-Vi"
    );
    // The special entry's handle is the MADT's IOAPIC ID (MADT type 1: ID at +2).
    let madt = table(&t, b"APIC");
    let mut off = 44;
    let mut ioapic_ids = Vec::new();
    while off + 2 <= madt.len() {
        let (kind, len) = (madt[off], usize::from(madt[off + 1]));
        if kind == 1 {
            ioapic_ids.push(madt[off + 2]);
        }
        off += len.max(2);
    }
    assert_eq!(ioapic_ids, vec![ivrs_cfg.ioapic_id]);
    let ivrs = table(&t, b"IVRS");
    assert_eq!(
        &ivrs[ivrs.len() - 8..],
        &[0x48, 0, 0, 0, 0, 0xa0, 0x00, 0x01]
    );

    if !iasl_available() {
        return;
    }
    let dir = ScratchDir::new("ivrs");
    let xsdt = iasl_disassemble(&dir.0, "xsdt", table(&t, b"XSDT"));
    assert_eq!(xsdt.matches("ACPI Table Address").count(), 4, "{xsdt}");
    let dsl = squash(&iasl_disassemble(&dir.0, "ivrs", ivrs));
    for field in [
        "Signature : \"IVRS\"",
        "Subtable Type : 11",
        "Attributes : 00000001",
        "DeviceId : 00F0",
        "Capability Offset : 0040",
        "Base Address : 00000000FED80000",
        "EFR Image : 00000000002000C4",
        "Entry Type : 03",
        "Entry Type : 04",
        "Entry Type : 48",
        "Handle : 00",
        "Source Used Device ID : 00A0",
        "Variety : 01",
    ] {
        assert!(dsl.contains(field), "{field:?} missing:\n{dsl}");
    }
    let madt = squash(&iasl_disassemble(&dir.0, "apic", table(&t, b"APIC")));
    assert!(madt.contains("I/O Apic ID : 00"), "{madt}");
    iasl_disassemble(&dir.0, "mcfg", table(&t, b"MCFG"));
}

#[test]
fn iasl_disassembles_the_pvpanic_device() {
    if !iasl_available() {
        return;
    }
    let mut c = cfg(4);
    c.pvpanic_port = Some(0x505);
    let t = build(&c, BASE, LIMIT).unwrap();
    check_consistent(&t, BASE, LIMIT);
    let dir = ScratchDir::new("pvpanic");
    let dsdt = iasl_disassemble(&dir.0, "dsdt", table(&t, b"DSDT"));
    let flat: String = dsdt.split_whitespace().collect();
    for needle in [
        "Device(PEVT)",
        "Name(_HID,\"QEMU0001\")",
        "IO(Decode16,0x0505,//RangeMinimum0x0505,//RangeMaximum0x01,//Alignment0x01,//Length",
    ] {
        assert!(flat.contains(needle), "{needle} missing:\n{dsdt}");
    }
    iasl_recompile(&dir.0, "dsdt");
}

// ---- acpiexec ------------------------------------------------------------------------------

/// The PCI host bridge configuration the platform uses.
fn pci_host() -> PciHostConfig {
    PciHostConfig {
        ecam: mcfg::EcamConfig {
            base: 0xb000_0000,
            start_bus: 0,
            end_bus: 0xff,
        },
        mmio32_base: 0xc000_0000,
        mmio32_size: 0x3e00_0000,
        intx_routes: Vec::new(),
    }
}

/// Whether ACPICA's `acpiexec` can be run; prints the reason when it cannot.
fn acpiexec_available() -> bool {
    match Command::new("acpiexec").arg("-v").output() {
        Ok(_) => true,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "acpiexec_evaluates_the_pci_host_bridge_osc SKIPPED: acpiexec not runnable \
                 ({e}); install acpica-tools to run the DSDT's methods in ACPICA"
            );
            false
        }
    }
}

/// `acpiexec`'s argument syntax for a buffer: `(b0 b1 ...)` in hex.
fn acpiexec_buffer(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("({})", hex.join(" "))
}

/// Evaluates `\_SB.PCI0._OSC(uuid, revision, 3, {status, support, control})` in ACPICA's
/// interpreter on the DSDT file `dsdt` and returns the three dwords of the buffer it returns.
fn evaluate_osc(dsdt: &Path, uuid: &str, revision: u8, dwords: [u32; 3]) -> [u32; 3] {
    let uuid = aml_code::Uuid::parse(uuid).unwrap().bytes();
    let caps: Vec<u8> = dwords.iter().flat_map(|d| d.to_le_bytes()).collect();
    let command = format!(
        "execute \\_SB.PCI0._OSC {} {revision} 3 {}",
        acpiexec_buffer(&uuid),
        acpiexec_buffer(&caps)
    );
    let out = Command::new("acpiexec")
        .arg("-b")
        .arg(&command)
        .arg(dsdt)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "acpiexec {command}:\n{log}");
    // "  [Buffer] Length 0C =     0000: 10 00 00 00 1F 01 00 00 1F 00 00 00   // ..."
    let line = log
        .lines()
        .find(|l| l.contains("[Buffer] Length 0C"))
        .unwrap_or_else(|| panic!("no 12-byte buffer returned by {command}:\n{log}"));
    let hex = line
        .split("0000:")
        .nth(1)
        .unwrap()
        .split("//")
        .next()
        .unwrap();
    let bytes: Vec<u8> = hex
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    assert_eq!(bytes.len(), 12, "{line}");
    [0, 4, 8].map(|o| u32_at(&bytes, o))
}

/// The PCI host bridge's `_OSC` run by ACPICA, as Linux calls it: granted controls come back
/// in dword 3, masked ones set "capabilities masked", an unknown revision or UUID is
/// reported in dword 1.
#[test]
fn acpiexec_evaluates_the_pci_host_bridge_osc() {
    if !acpiexec_available() {
        return;
    }
    let mut c = cfg(2);
    c.pci = Some(pci_host());
    let t = build(&c, BASE, LIMIT).unwrap();
    let dir = ScratchDir::new("osc");
    let dsdt = dir.0.join("dsdt.dat");
    std::fs::write(&dsdt, table(&t, b"DSDT")).unwrap();
    let pci = osc::PCI_HOST_BRIDGE_UUID;
    // Linux 6.1's query, then its request: support 0x1f (extended config, ASPM, clock PM,
    // segments, MSI), control 0xbf (hot-plug, SHPC, PME, AER, capability, LTR, DPC).
    assert_eq!(
        evaluate_osc(&dsdt, pci, 1, [1, 0x1f, 0xbf]),
        [0x11, 0x1f, 0x1f]
    );
    assert_eq!(
        evaluate_osc(&dsdt, pci, 1, [0, 0x1f, 0x1f]),
        [0, 0x1f, 0x1f]
    );
    assert_eq!(
        evaluate_osc(&dsdt, pci, 1, [0, 0x1f, 0x0c]),
        [0, 0x1f, 0x0c]
    );
    // Unknown revision.
    assert_eq!(evaluate_osc(&dsdt, pci, 2, [0, 0, 0x1f]), [0x08, 0, 0x1f]);
    // Another UUID (the CXL host bridge's): unrecognized, nothing granted or changed.
    let cxl = "68F2D50B-C469-4D8A-BD3D-941A103FD3FC";
    assert_eq!(evaluate_osc(&dsdt, cxl, 1, [0, 0, 0xbf]), [0x04, 0, 0xbf]);
}
