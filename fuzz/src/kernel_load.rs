//! The `kernel_load` harness: kernel files built from fuzzer input (raw bytes, a PVH ELF
//! with fuzzer-chosen program headers and notes, or a bzImage with a fuzzer-chosen setup
//! header), written to a temporary file and loaded by [`vmm::boot`] into a 32 MiB guest,
//! with a fuzzer-chosen command line and initramfs.
//!
//! Invariants asserted:
//!
//! * no panic: a bad file, header, command line or initramfs is an error;
//! * a successful load leaves the command line (NUL-terminated) at `CMDLINE_ADDR` and
//!   only accepts printable ASCII command lines within the protocol's limit;
//! * a PVH load puts a valid `hvm_start_info` at `PVH_INFO_ADDR` naming the command
//!   line, and a bzImage load puts `boot_params` at `ZERO_PAGE_ADDR` whose command line
//!   pointer, loader type and ramdisk fields are set, with the ramdisk inside low RAM
//!   above the kernel.

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::boot::{self, BootSetup, EntryMode, Initramfs, KernelImage};
use vmm::layout::{CMDLINE_ADDR, PVH_INFO_ADDR, ZERO_PAGE_ADDR};
use vmm::memory::{create_guest_memory, memory_map};

use crate::fuzz_type;

/// Guest RAM of the harness.
pub const MEMORY_SIZE: u64 = 32 << 20;
/// Where the harness says the RSDP is.
const RSDP: u64 = 0xe_0000;
/// Largest initramfs actually read (bigger ones are sparse files that must be refused).
const SMALL_INITRAMFS_MAX: u32 = 256 << 10;

fuzz_type! {
    /// A program header of the ELF the harness builds.
    pub struct Phdr {
        /// 0: PT_LOAD, 1: PT_NOTE, 2: PT_NULL, else the raw value.
        pub kind: u32,
        /// File offset: from the body start (LOAD), the note area (NOTE) or raw.
        pub offset: u32,
        /// Take `offset` as an absolute file offset.
        pub raw_offset: bool,
        /// Physical address in pages above 1 MiB, unless `raw_paddr` is set.
        pub page: u16,
        /// An absolute physical address instead.
        pub raw_paddr: Option<u64>,
        /// Bytes in the file.
        pub filesz: u32,
        /// Bytes in memory (`filesz` plus this, or raw when `raw_memsz`).
        pub memsz: u32,
        /// Take `memsz` as the whole size.
        pub raw_memsz: bool,
    }
}

fuzz_type! {
    /// An ELF note.
    pub struct Note {
        /// Note name size (4 for "Xen\0").
        pub namesz: u32,
        /// Descriptor size.
        pub descsz: u32,
        /// Note type (18 = XEN_ELFNOTE_PHYS32_ENTRY).
        pub ntype: u32,
        /// Name bytes.
        pub name: [u8; 4],
        /// Descriptor (the entry point for a PVH note).
        pub desc: u64,
    }
}

fuzz_type! {
    /// A byte patch applied to the built image.
    pub struct Patch {
        /// Offset (modulo the image size).
        pub offset: u32,
        /// The byte.
        pub value: u8,
    }
}

fuzz_type! {
    /// The kernel file.
    pub enum Kernel {
        /// Arbitrary bytes.
        Raw { bytes: Vec<u8> },
        /// An ELF64 image.
        Elf {
            entry: u64,
            phentsize: u16,
            phoff_delta: u16,
            phdrs: Vec<Phdr>,
            notes: Vec<Note>,
            body_len: u16,
            patches: Vec<Patch>,
        },
        /// A bzImage.
        BzImage {
            setup_sects: u8,
            version: u16,
            loadflags: u8,
            code32_start: u32,
            initrd_addr_max: u32,
            xloadflags: u16,
            cmdline_size: u32,
            init_size: u32,
            payload_len: u32,
            patches: Vec<Patch>,
        },
    }
}

fuzz_type! {
    /// A whole `kernel_load` input.
    pub struct KernelInput {
        /// The kernel file.
        pub kernel: Kernel,
        /// Command line length.
        pub cmdline_len: u16,
        /// Its filler byte (masked to 7 bits).
        pub cmdline_fill: u8,
        /// Put a non-printable byte in the middle.
        pub cmdline_bad: bool,
        /// Initramfs size: small ones (modulo 256 KiB) are real files, large ones (from
        /// 32 MiB up) sparse.
        pub initramfs: Option<u32>,
        /// Make the initramfs large.
        pub initramfs_large: bool,
    }
}

/// Size of an ELF64 header.
const EHDR_SIZE: usize = 64;
/// Size of an ELF64 program header.
const PHDR_SIZE: usize = 56;

/// The bytes of the ELF `kernel` describes.
pub fn build_elf(
    entry: u64,
    phentsize: u16,
    phoff_delta: u16,
    phdrs: &[Phdr],
    notes: &[Note],
    body_len: u16,
) -> Vec<u8> {
    let phdrs = &phdrs[..phdrs.len().min(16)];
    let notes = &notes[..notes.len().min(8)];
    let phoff = EHDR_SIZE + usize::from(phoff_delta % 64);
    let notes_off = phoff + PHDR_SIZE * phdrs.len();
    let mut note_bytes = Vec::new();
    for n in notes {
        note_bytes.extend_from_slice(&n.namesz.to_le_bytes());
        note_bytes.extend_from_slice(&n.descsz.to_le_bytes());
        note_bytes.extend_from_slice(&n.ntype.to_le_bytes());
        note_bytes.extend_from_slice(&n.name);
        note_bytes.extend_from_slice(&n.desc.to_le_bytes());
    }
    let body_off = notes_off + note_bytes.len();
    let mut f = vec![0u8; body_off + usize::from(body_len % 8192)];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // ELFCLASS64
    f[5] = 1; // little endian
    f[6] = 1; // EV_CURRENT
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&entry.to_le_bytes());
    f[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
    f[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    let phentsize = if phentsize.is_multiple_of(4) {
        PHDR_SIZE as u16
    } else {
        phentsize
    };
    f[54..56].copy_from_slice(&phentsize.to_le_bytes());
    f[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
    for (i, p) in phdrs.iter().enumerate() {
        let (p_type, base) = match p.kind {
            0 => (1u32, body_off),
            1 => (4, notes_off),
            2 => (0, 0),
            k => (k, 0),
        };
        let offset = if p.raw_offset {
            u64::from(p.offset)
        } else {
            (base + p.offset as usize % 4096) as u64
        };
        let paddr = p
            .raw_paddr
            .unwrap_or(0x10_0000 + u64::from(p.page % 4096) * 0x1000);
        let filesz = u64::from(p.filesz);
        let memsz = if p.raw_memsz {
            u64::from(p.memsz)
        } else {
            filesz + u64::from(p.memsz % 0x10_0000)
        };
        let o = phoff + i * PHDR_SIZE;
        let ph = &mut f[o..o + PHDR_SIZE];
        ph[0..4].copy_from_slice(&p_type.to_le_bytes());
        ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        ph[8..16].copy_from_slice(&offset.to_le_bytes());
        ph[16..24].copy_from_slice(&paddr.to_le_bytes()); // p_vaddr
        ph[24..32].copy_from_slice(&paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&filesz.to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        ph[48..56].copy_from_slice(&4096u64.to_le_bytes());
    }
    f[notes_off..body_off].copy_from_slice(&note_bytes);
    f
}

/// The bytes of the bzImage described by the setup header fields.
#[allow(clippy::too_many_arguments)]
pub fn build_bzimage(
    setup_sects: u8,
    version: u16,
    loadflags: u8,
    code32_start: u32,
    initrd_addr_max: u32,
    xloadflags: u16,
    cmdline_size: u32,
    init_size: u32,
    payload_len: u32,
) -> Vec<u8> {
    let setup = (usize::from(if setup_sects == 0 { 4 } else { setup_sects }) + 1) * 512;
    let mut f = vec![0u8; setup.max(0x300) + (payload_len % 0x2_0000) as usize];
    f[0x1f1] = setup_sects;
    f[0x1fe] = 0x55;
    f[0x1ff] = 0xaa;
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    f[0x211] = loadflags;
    f[0x214..0x218].copy_from_slice(&code32_start.to_le_bytes());
    f[0x22c..0x230].copy_from_slice(&initrd_addr_max.to_le_bytes());
    f[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    f[0x238..0x23c].copy_from_slice(&cmdline_size.to_le_bytes());
    f[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    f
}

fn apply_patches(f: &mut [u8], patches: &[Patch]) {
    if f.is_empty() {
        return;
    }
    for p in patches.iter().take(64) {
        let i = p.offset as usize % f.len();
        f[i] = p.value;
    }
}

/// The bytes of `kernel`.
pub fn kernel_bytes(kernel: &Kernel) -> Vec<u8> {
    match kernel {
        Kernel::Raw { bytes } => bytes.clone(),
        Kernel::Elf {
            entry,
            phentsize,
            phoff_delta,
            phdrs,
            notes,
            body_len,
            patches,
        } => {
            let mut f = build_elf(*entry, *phentsize, *phoff_delta, phdrs, notes, *body_len);
            apply_patches(&mut f, patches);
            f
        }
        Kernel::BzImage {
            setup_sects,
            version,
            loadflags,
            code32_start,
            initrd_addr_max,
            xloadflags,
            cmdline_size,
            init_size,
            payload_len,
            patches,
        } => {
            let mut f = build_bzimage(
                *setup_sects,
                *version,
                *loadflags,
                *code32_start,
                *initrd_addr_max,
                *xloadflags,
                *cmdline_size,
                *init_size,
                *payload_len,
            );
            apply_patches(&mut f, patches);
            f
        }
    }
}

/// Per-process scratch files and the guest memory, reused across inputs.
struct Scratch {
    dir: PathBuf,
    mem: GuestMemoryMmap,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

fn with_scratch<R>(f: impl FnOnce(&Scratch) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let scratch = s.get_or_insert_with(|| {
            let dir = std::env::temp_dir().join(format!("irvmm-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("scratch directory");
            Scratch {
                dir,
                mem: create_guest_memory(MEMORY_SIZE).expect("guest memory"),
            }
        });
        f(scratch)
    })
}

fn write_file(path: &PathBuf, bytes: &[u8], len: u64) {
    let mut file = std::fs::File::create(path).expect("scratch file");
    file.write_all(bytes).expect("scratch write");
    file.set_len(len).expect("scratch size");
}

fn read_u32(mem: &GuestMemoryMmap, addr: u64) -> u32 {
    mem.read_obj::<u32>(GuestAddress(addr)).expect("in RAM")
}

/// Loads the kernel `input` describes and checks the outcome.
pub fn load(input: &KernelInput) {
    let bytes = kernel_bytes(&input.kernel);
    let fill = char::from(input.cmdline_fill & 0x7f);
    let mut cmdline: String =
        std::iter::repeat_n(fill, usize::from(input.cmdline_len % 5000)).collect();
    if input.cmdline_bad && !cmdline.is_empty() {
        cmdline.replace_range(0..1, "\n");
    }
    with_scratch(|s| {
        let kpath = s.dir.join("kernel");
        write_file(&kpath, &bytes, bytes.len() as u64);
        let Ok(kernel) = KernelImage::open(&kpath) else {
            return;
        };
        let ipath = s.dir.join("initramfs");
        let initramfs = input.initramfs.map(|size| {
            let len = if input.initramfs_large {
                u64::from(size) + MEMORY_SIZE
            } else {
                u64::from(size % SMALL_INITRAMFS_MAX)
            };
            write_file(&ipath, b"070701", len);
            Initramfs::open(&ipath).expect("initramfs file")
        });
        let map = memory_map(MEMORY_SIZE);
        let setup = BootSetup {
            kernel: &kernel,
            initramfs: initramfs.as_ref(),
            cmdline: &cmdline,
            memory_map: &map,
            memory_size: MEMORY_SIZE,
            rsdp: RSDP,
        };
        let Ok(entry) = boot::load(&s.mem, &setup) else {
            return;
        };
        // Accepted: the command line is printable ASCII and in memory, NUL-terminated.
        assert!(cmdline.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
        let mut got = vec![0u8; cmdline.len() + 1];
        s.mem
            .read_slice(&mut got, GuestAddress(CMDLINE_ADDR))
            .expect("command line in RAM");
        assert_eq!(&got[..cmdline.len()], cmdline.as_bytes());
        assert_eq!(got[cmdline.len()], 0);
        match entry {
            EntryMode::Pvh { start_info, .. } => {
                assert_eq!(start_info, PVH_INFO_ADDR);
                assert_eq!(read_u32(&s.mem, start_info), 0x336e_c578, "PVH magic");
                assert!(cmdline.len() < 2048, "PVH command line over 2047 bytes");
            }
            EntryMode::Linux64 { entry, zero_page } => {
                assert_eq!(zero_page, ZERO_PAGE_ADDR);
                assert!(entry >= 0x10_0000, "entry {entry:#x} below 1 MiB");
                // boot_params.hdr: cmd_line_ptr at 0x228, ramdisk at 0x218/0x21c.
                assert_eq!(u64::from(read_u32(&s.mem, zero_page + 0x228)), CMDLINE_ADDR);
                assert_eq!(
                    s.mem.read_obj::<u8>(GuestAddress(zero_page + 0x210)).ok(),
                    Some(0xff)
                );
                let rd = u64::from(read_u32(&s.mem, zero_page + 0x218));
                let rd_size = u64::from(read_u32(&s.mem, zero_page + 0x21c));
                if initramfs.is_some() {
                    assert!(rd >= entry - 0x200, "ramdisk below the kernel");
                    assert!(rd + rd_size <= MEMORY_SIZE, "ramdisk past RAM");
                }
            }
        }
    });
}

/// Runs one `kernel_load` input.
pub fn run(data: &[u8]) {
    let mut u = arbitrary::Unstructured::new(data);
    if let Ok(input) = <KernelInput as arbitrary::Arbitrary>::arbitrary(&mut u) {
        load(&input);
    }
}
