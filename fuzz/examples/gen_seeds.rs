//! Writes the committed seed corpus: `cargo +nightly run --example gen_seeds` from `fuzz/`.
//!
//! Each seed is a meaningful guest scenario (Linux bringing up interrupt remapping, a
//! PVH kernel with an initramfs, ...) encoded with [`irvmm_fuzz::Encode`], so the
//! fuzzers start from deep states instead of discovering the register protocol byte by
//! byte. Every seed is checked to decode back to the scenario it encodes and to run
//! through its harness without a failure before it is written.

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use irvmm_fuzz::ioapic_mmio::IoApicOp;
use irvmm_fuzz::kernel_load::{Kernel, KernelInput, Note, Phdr};
use irvmm_fuzz::pci_config::PciOp;
use irvmm_fuzz::remap_decode::{RemapOp, RemapSetup};
use irvmm_fuzz::vtd_mmio::{Desc, VtdOp, VtdSetup};
use irvmm_fuzz::{for_each_op, Encode};

/// Decodes `bytes` (after `skip` bytes of setup) as a sequence of `T`.
fn decode_ops<'a, T: Arbitrary<'a>>(bytes: &'a [u8], skip: usize) -> Vec<T> {
    let mut ops = Vec::new();
    for_each_op::<T>(&bytes[skip..], |op| ops.push(op));
    ops
}

fn write_seed(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus directory");
    let path = dir.join(format!("seed-{name}"));
    std::fs::write(&path, bytes).expect("seed written");
    println!("{} ({} bytes)", path.display(), bytes.len());
}

fn vtd_seeds(dir: &Path) {
    const FAULT_VECTOR: u32 = 0x60;
    let valid_irte = |vector: u64, dest: u64| 1 | (vector << 16) | (dest << 32);
    let bring_up = vec![
        VtdOp::Event {
            completion: false,
            address: 0xfee0_0000,
            upper: 0,
            data: FAULT_VECTOR,
            unmask: true,
        },
        VtdOp::QueueAddress {
            page: 1,
            qs: 0,
            dw: false,
        },
        VtdOp::Command {
            set: 1 << 5,
            clear: 0,
        },
        VtdOp::Table {
            page: 2,
            s: 7,
            eime: true,
        },
        VtdOp::Descriptor {
            slot: 0,
            desc: Desc::IecGlobal {},
        },
        VtdOp::Descriptor {
            slot: 1,
            desc: Desc::Wait {
                interrupt: false,
                status: Some(0x8000),
                data: 1,
                fence: true,
            },
        },
        VtdOp::Tail { slot: 2 },
        VtdOp::Command {
            set: 1 << 6,
            clear: 0,
        },
        VtdOp::Entry {
            index: 0,
            low: valid_irte(0x41, 0x1_0002),
            high: (1 << 18) | 0x18,
        },
        VtdOp::Descriptor {
            slot: 2,
            desc: Desc::IecIndex { index: 0, mask: 0 },
        },
        VtdOp::Descriptor {
            slot: 3,
            desc: Desc::Wait {
                interrupt: true,
                status: Some(0x8004),
                data: 1,
                fence: false,
            },
        },
        VtdOp::Event {
            completion: true,
            address: 0xfee0_1000,
            upper: 0x100,
            data: 0x61,
            unmask: true,
        },
        VtdOp::Tail { slot: 4 },
        VtdOp::Remappable {
            sid: 0x18,
            handle: 0,
            shv: false,
            subhandle: 0,
        },
        VtdOp::Remappable {
            sid: 0x20,
            handle: 0,
            shv: false,
            subhandle: 0,
        },
        VtdOp::Remappable {
            sid: 0x18,
            handle: 5,
            shv: true,
            subhandle: 1,
        },
        VtdOp::Read {
            offset: 0x220,
            size: 3,
        },
        VtdOp::Read {
            offset: 0x228,
            size: 3,
        },
        VtdOp::Service {
            fsts: 0x7f,
            record: 0,
        },
        VtdOp::Command {
            set: 0,
            clear: 1 << 6,
        },
    ];
    let queue_errors = vec![
        VtdOp::QueueAddress {
            page: 3,
            qs: 0,
            dw: false,
        },
        VtdOp::Event {
            completion: false,
            address: 0xfee0_0000,
            upper: 0,
            data: 0x62,
            unmask: true,
        },
        VtdOp::Command {
            set: 1 << 5,
            clear: 0,
        },
        VtdOp::Descriptor {
            slot: 0,
            desc: Desc::Raw { qw0: 3, qw1: 0 },
        },
        VtdOp::Tail { slot: 1 },
        VtdOp::Descriptor {
            slot: 0,
            desc: Desc::Wait {
                interrupt: true,
                status: Some(0x10_0000),
                data: 7,
                fence: false,
            },
        },
        VtdOp::Service {
            fsts: 0x10,
            record: 0,
        },
        VtdOp::Descriptor {
            slot: 0,
            desc: Desc::ContextCache { granularity: 1 },
        },
        VtdOp::Service {
            fsts: 0x10,
            record: 0,
        },
        VtdOp::Tail { slot: 300 },
        VtdOp::Service {
            fsts: 0x10,
            record: 0,
        },
        VtdOp::Command {
            set: 0,
            clear: 1 << 5,
        },
        VtdOp::QueueAddress {
            page: 15,
            qs: 7,
            dw: false,
        },
        VtdOp::Command {
            set: 1 << 5,
            clear: 0,
        },
        VtdOp::Tail { slot: 0x7fff },
    ];
    let overflow = vec![
        VtdOp::Table {
            page: 4,
            s: 0,
            eime: false,
        },
        VtdOp::Command {
            set: (1 << 6) | (1 << 8),
            clear: 0,
        },
        VtdOp::Event {
            completion: false,
            address: 0xfee0_0000,
            upper: 0,
            data: 0x63,
            unmask: false,
        },
        VtdOp::Interrupt {
            sid: 1,
            address_lo: 0xfee0_0010,
            address_hi: 0,
            data: 0,
        },
        VtdOp::Interrupt {
            sid: 2,
            address_lo: 0xfee0_0070,
            address_hi: 0,
            data: 0,
        },
        VtdOp::Interrupt {
            sid: 3,
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 0x30,
        },
        VtdOp::Event {
            completion: false,
            address: 0xfee0_0000,
            upper: 0,
            data: 0x63,
            unmask: true,
        },
        VtdOp::Service { fsts: 1, record: 0 },
        VtdOp::Reg {
            reg: 37,
            qword: false,
            value: 1 << 31,
        },
    ];
    let registers: Vec<VtdOp> = (0..64u16)
        .map(|i| VtdOp::Read {
            offset: i * 8,
            size: (i % 4) as u8 + 2,
        })
        .chain([
            VtdOp::Reg {
                reg: 9,
                qword: true,
                value: 1 << 63 | 1 << 61,
            },
            VtdOp::Reg {
                reg: 31,
                qword: true,
                value: 1 << 63 | 2 << 60,
            },
            VtdOp::Write {
                offset: 0xffc,
                size: 3,
                value: !0,
            },
            VtdOp::Reset {},
        ])
        .collect();
    for (name, setup, ops) in [
        (
            "linux-bring-up",
            VtdSetup {
                eim: true,
                fault_records: 8,
            },
            bring_up,
        ),
        (
            "queue-errors",
            VtdSetup {
                eim: true,
                fault_records: 4,
            },
            queue_errors,
        ),
        (
            "fault-overflow",
            VtdSetup {
                eim: false,
                fault_records: 1,
            },
            overflow,
        ),
        (
            "register-sweep",
            VtdSetup {
                eim: true,
                fault_records: 64,
            },
            registers,
        ),
    ] {
        let bytes = irvmm_fuzz::vtd_mmio::encode_input(&setup, &ops);
        let mut u = Unstructured::new(&bytes);
        assert_eq!(VtdSetup::arbitrary(&mut u).unwrap(), setup);
        assert_eq!(decode_ops::<VtdOp>(&bytes, setup.to_bytes().len()), ops);
        irvmm_fuzz::vtd_mmio::run(&bytes);
        write_seed(dir, name, &bytes);
    }
}

fn remap_seeds(dir: &Path) {
    let x2apic = (
        RemapSetup {
            eim: true,
            eime: true,
            cfi: false,
            size: 7,
            page: 2,
            skip_sirtp: false,
        },
        vec![
            RemapOp::Built {
                index: 0,
                vector: 0x41,
                dest: 0x1_0203,
                mode: 0,
                svt: 1,
                sq: 0,
                sid: 0x18,
                flags: 0,
            },
            RemapOp::Built {
                index: 3,
                vector: 0x42,
                dest: 0x300,
                mode: 1,
                svt: 2,
                sq: 0,
                sid: 0x0003,
                flags: 0x10,
            },
            RemapOp::Remappable {
                sid: 0x18,
                handle: 0,
                shv: false,
                subhandle: 0,
                extra: 7,
            },
            RemapOp::Remappable {
                sid: 0x19,
                handle: 0,
                shv: false,
                subhandle: 0,
                extra: 7,
            },
            RemapOp::Remappable {
                sid: 0x200,
                handle: 1,
                shv: true,
                subhandle: 2,
                extra: 7,
            },
            RemapOp::Remappable {
                sid: 0x18,
                handle: 0xffff,
                shv: true,
                subhandle: 0xffff,
                extra: 7,
            },
            RemapOp::Ioapic {
                sid: 0xff00,
                rte: (1 << 48) | (3 << 49) | 3 | (1 << 15),
            },
            RemapOp::Raw {
                sid: 0x18,
                address_lo: 0xfee0_0000,
                address_hi: 0,
                data: 0x30,
            },
        ],
    );
    let xapic_cfi = (
        RemapSetup {
            eim: false,
            eime: false,
            cfi: true,
            size: 3,
            page: 17,
            skip_sirtp: false,
        },
        vec![
            RemapOp::Built {
                index: 1,
                vector: 0x50,
                dest: 0x7,
                mode: 0,
                svt: 0,
                sq: 0,
                sid: 0,
                flags: 0x4,
            },
            RemapOp::Remappable {
                sid: 1,
                handle: 1,
                shv: false,
                subhandle: 0,
                extra: 7,
            },
            RemapOp::Raw {
                sid: 1,
                address_lo: 0xfee0_1000,
                address_hi: 0,
                data: 0x4031,
            },
            RemapOp::Ioapic {
                sid: 0xff00,
                rte: 0x0100_0000_0000_0031,
            },
            RemapOp::Remappable {
                sid: 1,
                handle: 1,
                shv: false,
                subhandle: 0,
                extra: 1,
            },
        ],
    );
    let bad_entries = (
        RemapSetup {
            eim: true,
            eime: true,
            cfi: true,
            size: 15,
            page: 15,
            skip_sirtp: false,
        },
        vec![
            RemapOp::Entry {
                index: 0,
                low: 1 | (1 << 15) | (0x55 << 16),
                high: 0x1234_5678_0000_0000,
            },
            RemapOp::Entry {
                index: 1,
                low: 3 | (1 << 12),
                high: 0,
            },
            RemapOp::Entry {
                index: 2,
                low: 1 | (3 << 5),
                high: 3 << 18,
            },
            RemapOp::Entry {
                index: 3,
                low: 2,
                high: 0,
            },
            RemapOp::Remappable {
                sid: 0,
                handle: 0,
                shv: false,
                subhandle: 0,
                extra: 7,
            },
            RemapOp::Remappable {
                sid: 0,
                handle: 0,
                shv: true,
                subhandle: 1,
                extra: 7,
            },
            RemapOp::Remappable {
                sid: 0,
                handle: 2,
                shv: false,
                subhandle: 0,
                extra: 7,
            },
            RemapOp::Remappable {
                sid: 0,
                handle: 3,
                shv: false,
                subhandle: 0,
                extra: 7,
            },
            RemapOp::Remappable {
                sid: 0,
                handle: 0x1000,
                shv: false,
                subhandle: 0,
                extra: 7,
            },
            RemapOp::Raw {
                sid: 0,
                address_lo: 0xfee0_0000,
                address_hi: 0,
                data: 0x30,
            },
        ],
    );
    for (name, (setup, ops)) in [
        ("x2apic", x2apic),
        ("xapic-cfi", xapic_cfi),
        ("bad-entries", bad_entries),
    ] {
        let bytes = irvmm_fuzz::remap_decode::encode_input(&setup, &ops);
        let mut u = Unstructured::new(&bytes);
        assert_eq!(RemapSetup::arbitrary(&mut u).unwrap(), setup);
        assert_eq!(decode_ops::<RemapOp>(&bytes, setup.to_bytes().len()), ops);
        irvmm_fuzz::remap_decode::run(&bytes);
        write_seed(dir, name, &bytes);
    }
}

fn ioapic_seeds(dir: &Path) {
    let linux = vec![
        IoApicOp::Register { index: 1, value: 0 },
        IoApicOp::Rte {
            pin: 4,
            value: 0x0100_0000_0000_0024,
        },
        IoApicOp::Rte {
            pin: 9,
            value: 0x0200_0000_0000_a029,
        },
        IoApicOp::Pulse { pin: 4 },
        IoApicOp::Level {
            pin: 9,
            level: true,
        },
        IoApicOp::Eoi { vector: 0x29 },
        IoApicOp::Level {
            pin: 9,
            level: false,
        },
        IoApicOp::Eoi { vector: 0x29 },
        IoApicOp::Rte {
            pin: 9,
            value: 0x0200_0000_0001_a029,
        },
        IoApicOp::Level {
            pin: 9,
            level: true,
        },
        IoApicOp::Rte {
            pin: 9,
            value: 0x0200_0000_0000_a029,
        },
        IoApicOp::LapicEoi { vector: 0x29 },
        IoApicOp::Reset {},
        IoApicOp::Resync {},
    ];
    let remappable = vec![
        IoApicOp::Rte {
            pin: 2,
            value: (1 << 48) | (2 << 49) | (1 << 11) | 2,
        },
        IoApicOp::Rte {
            pin: 3,
            value: (1 << 48) | (3 << 49) | (1 << 15) | 3,
        },
        IoApicOp::Level {
            pin: 3,
            level: true,
        },
        IoApicOp::Eoi { vector: 3 },
        IoApicOp::EoiPin { pin: 3 },
        IoApicOp::Pulse { pin: 2 },
        IoApicOp::Level {
            pin: 40,
            level: true,
        },
    ];
    let raw = vec![
        IoApicOp::Write {
            offset: 0,
            size: 2,
            value: 0x10,
        },
        IoApicOp::Read {
            offset: 0x10,
            size: 2,
        },
        IoApicOp::Write {
            offset: 0x10,
            size: 0,
            value: 1,
        },
        IoApicOp::Read {
            offset: 0x20,
            size: 3,
        },
        IoApicOp::Write {
            offset: 0x40,
            size: 2,
            value: 0,
        },
        IoApicOp::Register {
            index: 0xff,
            value: !0,
        },
        IoApicOp::Register {
            index: 0,
            value: 0x0f00_0000,
        },
    ];
    for (name, ops) in [("linux", linux), ("remappable", remappable), ("raw", raw)] {
        let bytes = irvmm_fuzz::ioapic_mmio::encode_input(&ops);
        assert_eq!(decode_ops::<IoApicOp>(&bytes, 0), ops);
        irvmm_fuzz::ioapic_mmio::run(&bytes);
        write_seed(dir, name, &bytes);
    }
}

fn pci_seeds(dir: &Path) {
    let mut enumerate: Vec<PciOp> = (0..6u16)
        .map(|func| PciOp::Config {
            func,
            reg: 0,
            size: 2,
            value: 0,
            write: false,
            ecam: false,
        })
        .collect();
    enumerate.extend([
        PciOp::Config {
            func: 1,
            reg: 0x10,
            size: 2,
            value: !0,
            write: true,
            ecam: false,
        },
        PciOp::Config {
            func: 1,
            reg: 0x10,
            size: 2,
            value: 0,
            write: false,
            ecam: false,
        },
        PciOp::BarRegister {
            func: 0,
            bar: 0,
            value: 0xc010_0000,
        },
        PciOp::Config {
            func: 1,
            reg: 0x34,
            size: 0,
            value: 0,
            write: false,
            ecam: true,
        },
        PciOp::Command { func: 0, value: 6 },
        PciOp::Msi {
            func: 0,
            address: 0xfee0_0000,
            address_hi: 0,
            data: 0x45,
            control: 1,
            mask: 0,
        },
        PciOp::Raise { func: 0, value: 1 },
        PciOp::Msi {
            func: 0,
            address: 0xfee0_0000,
            address_hi: 0,
            data: 0x45,
            control: 1,
            mask: 1,
        },
        PciOp::Raise { func: 0, value: 2 },
        PciOp::Msi {
            func: 0,
            address: 0xfee0_0000,
            address_hi: 0,
            data: 0x45,
            control: 1,
            mask: 0,
        },
        PciOp::Bar {
            func: 0,
            bar: 0,
            offset: 8,
            size: 2,
            value: 10,
            write: true,
        },
        PciOp::Bar {
            func: 0,
            bar: 0,
            offset: 8,
            size: 2,
            value: 0,
            write: false,
        },
    ]);
    let msix = vec![
        PciOp::Command { func: 1, value: 6 },
        PciOp::MsixControl { value: 0x8000 },
        PciOp::MsixEntry {
            vector: 0,
            address: 0xfee0_0000,
            data: 0x50,
            control: 0,
            qword: true,
        },
        PciOp::MsixEntry {
            vector: 255,
            address: 0xfee0_1000,
            data: 0x51,
            control: 0,
            qword: false,
        },
        PciOp::MsixRaise { vector: 0 },
        PciOp::MsixRaise { vector: 255 },
        PciOp::MsixRaise { vector: 256 },
        PciOp::MsixControl { value: 0xc000 },
        PciOp::MsixRaise { vector: 0 },
        PciOp::MsixControl { value: 0x8000 },
        PciOp::MsixEntry {
            vector: 7,
            address: 0,
            data: 0,
            control: 0,
            qword: true,
        },
        PciOp::MsixRaise { vector: 7 },
        PciOp::Bar {
            func: 1,
            bar: 2,
            offset: 0x1000,
            size: 3,
            value: 0,
            write: false,
        },
        PciOp::MsixControl { value: 0 },
    ];
    let odd = vec![
        PciOp::AddressPort {
            offset: 1,
            size: 0,
            value: 0x8000_0000,
            write: true,
        },
        PciOp::AddressPort {
            offset: 0,
            size: 2,
            value: 0x8000_1800,
            write: true,
        },
        PciOp::DataPort {
            offset: 3,
            size: 1,
            value: 0,
            write: false,
        },
        PciOp::DataPort {
            offset: 2,
            size: 2,
            value: 0,
            write: true,
        },
        PciOp::Ecam {
            offset: 0x0fff_fffe,
            size: 2,
            value: 0,
            write: false,
        },
        PciOp::Ecam {
            offset: 0x1ffc,
            size: 3,
            value: !0,
            write: true,
        },
        PciOp::Window {
            io: true,
            offset: 0,
            size: 2,
            value: 0,
            write: false,
        },
        PciOp::Window {
            io: false,
            offset: 0x3dff_fffc,
            size: 3,
            value: 0,
            write: true,
        },
        PciOp::Config {
            func: 0x1234,
            reg: 0xffc,
            size: 2,
            value: 0,
            write: true,
            ecam: true,
        },
    ];
    for (name, ops) in [("enumerate-msi", enumerate), ("msix", msix), ("odd", odd)] {
        let bytes = irvmm_fuzz::pci_config::encode_input(&ops);
        assert_eq!(decode_ops::<PciOp>(&bytes, 0), ops);
        irvmm_fuzz::pci_config::run(&bytes);
        write_seed(dir, name, &bytes);
    }
}

fn kernel_seeds(dir: &Path) {
    let pvh_note = Note {
        namesz: 4,
        descsz: 8,
        ntype: 18,
        name: *b"Xen\0",
        desc: 0x10_0000,
    };
    let load = Phdr {
        kind: 0,
        offset: 0,
        raw_offset: false,
        page: 0,
        raw_paddr: None,
        filesz: 0x100,
        memsz: 0x1000,
        raw_memsz: false,
    };
    let note = Phdr {
        kind: 1,
        offset: 0,
        raw_offset: false,
        page: 0,
        raw_paddr: None,
        filesz: 24,
        memsz: 0,
        raw_memsz: false,
    };
    let pvh = KernelInput {
        kernel: Kernel::Elf {
            entry: 0x10_0000,
            phentsize: 0,
            phoff_delta: 0,
            phdrs: vec![load.clone(), note],
            notes: vec![pvh_note],
            body_len: 0x100,
            patches: vec![],
        },
        cmdline_len: 13,
        cmdline_fill: b'a',
        cmdline_bad: false,
        initramfs: Some(0x3000),
        initramfs_large: false,
    };
    let no_note = KernelInput {
        kernel: Kernel::Elf {
            entry: 0x10_0000,
            phentsize: 0,
            phoff_delta: 8,
            phdrs: vec![load],
            notes: vec![],
            body_len: 0x100,
            patches: vec![],
        },
        cmdline_len: 3000,
        cmdline_fill: b'x',
        cmdline_bad: false,
        initramfs: None,
        initramfs_large: false,
    };
    let bzimage = KernelInput {
        kernel: Kernel::BzImage {
            setup_sects: 4,
            version: 0x020f,
            loadflags: 1,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            xloadflags: 1,
            cmdline_size: 2047,
            init_size: 0x20_0000,
            payload_len: 0x1000,
            patches: vec![],
        },
        cmdline_len: 30,
        cmdline_fill: b'c',
        cmdline_bad: false,
        initramfs: Some(0x2_0000),
        initramfs_large: false,
    };
    let old_bzimage = KernelInput {
        kernel: Kernel::BzImage {
            setup_sects: 0,
            version: 0x0205,
            loadflags: 1,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x37ff_ffff,
            xloadflags: 0,
            cmdline_size: 0,
            init_size: 0,
            payload_len: 0x100,
            patches: vec![],
        },
        cmdline_len: 10,
        cmdline_fill: b'o',
        cmdline_bad: true,
        initramfs: Some(1),
        initramfs_large: true,
    };
    let raw = KernelInput {
        kernel: Kernel::Raw {
            bytes: b"\x7fELF\x02\x01\x01garbage".to_vec(),
        },
        cmdline_len: 0,
        cmdline_fill: 0,
        cmdline_bad: false,
        initramfs: None,
        initramfs_large: false,
    };
    for (name, input) in [
        ("pvh", pvh),
        ("elf-no-note", no_note),
        ("bzimage", bzimage),
        ("bzimage-old", old_bzimage),
        ("raw", raw),
    ] {
        let bytes = input.to_bytes();
        let mut u = Unstructured::new(&bytes);
        assert_eq!(KernelInput::arbitrary(&mut u).unwrap(), input);
        irvmm_fuzz::kernel_load::run(&bytes);
        write_seed(dir, name, &bytes);
    }
}

fn main() {
    let corpus: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    vtd_seeds(&corpus.join("vtd_mmio"));
    remap_seeds(&corpus.join("remap_decode"));
    ioapic_seeds(&corpus.join("ioapic_mmio"));
    pci_seeds(&corpus.join("pci_config"));
    kernel_seeds(&corpus.join("kernel_load"));
    for (name, bytes) in irvmm_fuzz::vfio_user_client::seeds() {
        irvmm_fuzz::vfio_user_client::run(&bytes);
        write_seed(&corpus.join("vfio_user_client"), name, &bytes);
    }
    for (name, bytes) in irvmm_fuzz::vfio_function::seeds() {
        irvmm_fuzz::vfio_function::run(&bytes);
        write_seed(&corpus.join("vfio_function"), name, &bytes);
    }
    for (name, bytes) in irvmm_fuzz::vtd_posting::seeds() {
        irvmm_fuzz::vtd_posting::run(&bytes);
        write_seed(&corpus.join("vtd_posting"), name, &bytes);
    }
    for (name, bytes) in irvmm_fuzz::vtd_dma::seeds() {
        irvmm_fuzz::vtd_dma::run(&bytes);
        write_seed(&corpus.join("vtd_dma"), name, &bytes);
    }
}
