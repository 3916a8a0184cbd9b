//! Loading a kernel and preparing the boot vCPU: PVH ELF (`vmlinux`, the probe guest) and
//! bzImage (64-bit boot protocol).
//!
//! [`KernelImage::open`] checks the file before any VM exists, so bad input is reported
//! without starting anything; [`load`] then places kernel, command line, initramfs and
//! boot structures in guest memory and says how the boot vCPU must start.

mod bzimage;
mod pvh;
pub mod regs;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::{KernelLoader, KernelLoaderResult};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{CMDLINE_ADDR, CMDLINE_MAX_SIZE, HIGH_RAM_START, LOW_RAM_END};
use crate::memory::MemoryMapEntry;

/// Boot errors. Those about the files are reported before the VM is created.
#[derive(Debug, Error)]
pub enum BootError {
    /// The kernel or initramfs cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A path names something other than a regular file.
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// The kernel file is empty.
    #[error("{0} is empty")]
    Empty(PathBuf),
    /// The kernel file is neither an ELF image nor a bzImage.
    #[error("{0} is neither an ELF kernel (vmlinux with a PVH note) nor a bzImage")]
    UnknownFormat(PathBuf),
    /// An ELF kernel without the PVH entry note.
    #[error("{0} is an ELF file without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); use a kernel built with CONFIG_PVH=y or its bzImage")]
    NoPvhEntry(PathBuf),
    /// linux-loader rejected the image.
    #[error("cannot load {path}: {source}")]
    Loader {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// bzImage too old or not 64-bit capable.
    #[error("{path}: {reason}")]
    BadBzImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The command line is too long for the boot protocol or contains bytes it cannot carry.
    #[error("{0}")]
    Cmdline(String),
    /// The initramfs does not fit in guest memory next to the kernel.
    #[error("initramfs of {size} bytes does not fit in guest RAM below {limit:#x} above the kernel (ends at {kernel_end:#x})")]
    InitramfsTooLarge {
        /// Its size.
        size: u64,
        /// The highest address it may end at.
        limit: u64,
        /// Where the kernel ends.
        kernel_end: u64,
    },
    /// Writing boot data into guest memory failed.
    #[error("writing {what} to guest memory: {source}")]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Kernel formats irvmm boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF with a Xen PVH entry note.
    PvhElf,
    /// bzImage, booted through its 64-bit entry.
    BzImage,
}

/// A kernel file, checked for readability and format.
#[derive(Debug)]
pub struct KernelImage {
    path: PathBuf,
    format: KernelFormat,
}

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// Offset of the boot sector signature 0xaa55 in a bzImage.
const BOOT_FLAG_OFFSET: usize = 0x1fe;
/// Offset of the "HdrS" setup header magic.
const HDRS_OFFSET: usize = 0x202;
const HDRS_MAGIC: &[u8; 4] = b"HdrS";
const BOOT_FLAG: [u8; 2] = [0x55, 0xaa];

/// Opens `path` as a regular file.
pub fn open_regular(path: &Path) -> Result<File, BootError> {
    let file = File::open(path).map_err(|source| BootError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| BootError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(BootError::NotAFile(path.to_path_buf()));
    }
    Ok(file)
}

impl KernelImage {
    /// Opens `path` and identifies its format from its headers.
    pub fn open(path: &Path) -> Result<Self, BootError> {
        let mut file = open_regular(path)?;
        let mut head = [0u8; HDRS_OFFSET + 4];
        let mut got = 0;
        while got < head.len() {
            match file.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(BootError::Read {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
        if got == 0 {
            return Err(BootError::Empty(path.to_path_buf()));
        }
        let format = if got >= 4 && head[..4] == ELF_MAGIC {
            KernelFormat::PvhElf
        } else if got == head.len()
            && head[BOOT_FLAG_OFFSET..BOOT_FLAG_OFFSET + 2] == BOOT_FLAG
            && &head[HDRS_OFFSET..HDRS_OFFSET + 4] == HDRS_MAGIC
        {
            KernelFormat::BzImage
        } else {
            return Err(BootError::UnknownFormat(path.to_path_buf()));
        };
        Ok(KernelImage {
            path: path.to_path_buf(),
            format,
        })
    }

    /// The detected format.
    pub fn format(&self) -> KernelFormat {
        self.format
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An initramfs file, checked for readability.
#[derive(Debug)]
pub struct Initramfs {
    path: PathBuf,
    size: u64,
}

impl Initramfs {
    /// Opens `path` and records its size.
    pub fn open(path: &Path) -> Result<Self, BootError> {
        let file = open_regular(path)?;
        let size = file
            .metadata()
            .map_err(|source| BootError::Read {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        Ok(Initramfs {
            path: path.to_path_buf(),
            size,
        })
    }
}

/// How the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 32-bit protected mode, paging off, `ebx` = `hvm_start_info` (PVH).
    Pvh {
        /// Entry point.
        entry: u64,
        /// `hvm_start_info` address.
        start_info: u64,
    },
    /// 64-bit long mode with identity paging, `rsi` = zero page (Linux 64-bit boot protocol).
    Linux64 {
        /// Entry point (startup_64).
        entry: u64,
        /// `boot_params` address.
        zero_page: u64,
    },
}

/// What the boot needs from the VM.
pub struct BootSetup<'a> {
    /// The kernel.
    pub kernel: &'a KernelImage,
    /// Optional initramfs.
    pub initramfs: Option<&'a Initramfs>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// The guest's memory map.
    pub memory_map: &'a [MemoryMapEntry],
    /// Guest RAM size.
    pub memory_size: u64,
    /// RSDP address.
    pub rsdp: u64,
}

/// Checks that `cmdline` can be passed to a kernel accepting `max` bytes (NUL included).
pub fn check_cmdline(cmdline: &str, max: usize) -> Result<(), BootError> {
    if cmdline
        .bytes()
        .any(|b| b == 0 || !(b.is_ascii_graphic() || b == b' '))
    {
        return Err(BootError::Cmdline(
            "--cmdline may contain printable ASCII only".to_string(),
        ));
    }
    if cmdline.len() + 1 > max {
        return Err(BootError::Cmdline(format!(
            "--cmdline is {} bytes; this kernel accepts at most {}",
            cmdline.len(),
            max - 1
        )));
    }
    Ok(())
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<u64, BootError> {
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    debug_assert!(bytes.len() <= CMDLINE_MAX_SIZE);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|source| BootError::GuestMemory {
            what: "command line",
            source,
        })?;
    Ok(CMDLINE_ADDR)
}

/// Places the initramfs at the top of low RAM (below `limit`), page aligned, above the
/// kernel and never below [`KERNEL_MIN_ADDR`]: the first megabyte holds the boot
/// structures, the command line and the ACPI tables, which a kernel image without
/// loadable segments there (`kernel_end` 0) must not let the initramfs overwrite.
fn load_initramfs(
    mem: &GuestMemoryMmap,
    initrd: &Initramfs,
    kernel_end: u64,
    limit: u64,
) -> Result<(u64, u64), BootError> {
    const PAGE: u64 = 4096;
    let kernel_end = kernel_end.max(KERNEL_MIN_ADDR);
    let too_large = BootError::InitramfsTooLarge {
        size: initrd.size,
        limit,
        kernel_end,
    };
    let addr = limit
        .checked_sub(initrd.size)
        .map(|a| a & !(PAGE - 1))
        .filter(|a| *a >= kernel_end)
        .ok_or(too_large)?;
    let mut file = open_regular(&initrd.path)?;
    let read_err = |source| BootError::Read {
        path: initrd.path.clone(),
        source,
    };
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, initrd.size as usize)
        .map_err(|source| BootError::GuestMemory {
            what: "initramfs",
            source,
        })?;
    Ok((addr, initrd.size))
}

/// Loads the kernel image with loader `L` (ELF or bzImage) above [`KERNEL_MIN_ADDR`].
fn load_image<L: KernelLoader>(
    mem: &GuestMemoryMmap,
    setup: &BootSetup,
    file: &mut File,
) -> Result<KernelLoaderResult, BootError> {
    L::load(mem, None, file, Some(GuestAddress(KERNEL_MIN_ADDR))).map_err(|source| {
        BootError::Loader {
            path: setup.kernel.path().to_path_buf(),
            source,
        }
    })
}

/// Loads the kernel and boot data into `mem`; returns how the boot vCPU enters it.
pub fn load(mem: &GuestMemoryMmap, setup: &BootSetup) -> Result<EntryMode, BootError> {
    let mut file = open_regular(setup.kernel.path())?;
    let low_end = setup.memory_size.min(LOW_RAM_END);
    match setup.kernel.format() {
        KernelFormat::PvhElf => pvh::load(mem, setup, &mut file, low_end),
        KernelFormat::BzImage => bzimage::load(mem, setup, &mut file, low_end),
    }
}

/// The lowest address the loaders may place a kernel at.
pub const KERNEL_MIN_ADDR: u64 = HIGH_RAM_START;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("irvmm-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    #[test]
    fn detects_formats_and_rejects_garbage() {
        let elf = temp("k.elf", &[0x7f, b'E', b'L', b'F', 2, 1, 1]);
        assert_eq!(
            KernelImage::open(&elf).unwrap().format(),
            KernelFormat::PvhElf
        );
        let mut bz = vec![0u8; 0x300];
        bz[0x1fe] = 0x55;
        bz[0x1ff] = 0xaa;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bz = temp("k.bz", &bz);
        assert_eq!(
            KernelImage::open(&bz).unwrap().format(),
            KernelFormat::BzImage
        );
        assert!(matches!(
            KernelImage::open(&temp("k.txt", b"hello")),
            Err(BootError::UnknownFormat(_))
        ));
        assert!(matches!(
            KernelImage::open(&temp("k.empty", b"")),
            Err(BootError::Empty(_))
        ));
        assert!(matches!(
            KernelImage::open(&std::env::temp_dir()),
            Err(BootError::NotAFile(_))
        ));
        assert!(matches!(
            KernelImage::open(Path::new("/nonexistent/k")),
            Err(BootError::Read { .. })
        ));
    }

    /// Found by the `kernel_load` fuzzer (minimized): a PVH ELF whose only program
    /// headers are a note (so `kernel_end` is 0) and an initramfs as large as low RAM.
    /// The initramfs was placed at address 0, over the command line written just before,
    /// the boot structures and the ACPI tables, and the load reported success.
    #[test]
    fn initramfs_never_lands_below_1mib() {
        const RAM: u64 = 4 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let path = temp("initrd.big", &[]);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(RAM)
            .unwrap();
        let big = Initramfs::open(&path).unwrap();
        write_cmdline(&mem, "console=ttyS0").unwrap();
        assert!(matches!(
            load_initramfs(&mem, &big, 0, RAM),
            Err(BootError::InitramfsTooLarge {
                kernel_end: KERNEL_MIN_ADDR,
                ..
            })
        ));
        let mut got = [0u8; 13];
        mem.read_slice(&mut got, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&got, b"console=ttyS0", "command line intact");
        // What fits above 1 MiB still loads at the top of RAM.
        let fits = temp("initrd.fits", &vec![7u8; (RAM - KERNEL_MIN_ADDR) as usize]);
        let fits = Initramfs::open(&fits).unwrap();
        assert_eq!(
            load_initramfs(&mem, &fits, 0, RAM).unwrap(),
            (KERNEL_MIN_ADDR, RAM - KERNEL_MIN_ADDR)
        );
        let over = temp(
            "initrd.over",
            &vec![7u8; (RAM - KERNEL_MIN_ADDR) as usize + 1],
        );
        let over = Initramfs::open(&over).unwrap();
        assert!(load_initramfs(&mem, &over, 0, RAM).is_err());
    }

    #[test]
    fn cmdline_limits() {
        assert!(check_cmdline("console=ttyS0 probe=boot", 2048).is_ok());
        assert!(check_cmdline(&"a".repeat(2047), 2048).is_ok());
        assert!(check_cmdline(&"a".repeat(2048), 2048).is_err());
        assert!(check_cmdline("bad\nline", 2048).is_err());
    }
}
