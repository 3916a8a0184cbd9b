//! virtio-blk on a raw image file (`--disk path=IMG[,readonly=on][,direct=on][,queues=N][,serial=ID]`).
//!
//! Offered features: `SEG_MAX`, `BLK_SIZE` (512), `FLUSH`, `MQ` with more than one queue,
//! `RO` for read-only images, `DISCARD` and `WRITE_ZEROES` for writable ones. Requests:
//! read, write, flush, get-ID (the serial, up to 20 bytes), discard (hole punching) and
//! write-zeroes ([`request`]). Every failure is the request's (`VIRTIO_BLK_S_IOERR`, or
//! `VIRTIO_BLK_S_UNSUPP` for unknown types): a bad image, a short chain or a buffer outside
//! RAM never stops the VMM. The image is opened before the VM exists and locked
//! ([`image`]): exclusively when writable, shared when read-only.

pub mod image;
pub mod request;

use std::mem::offset_of;
use std::path::PathBuf;

use thiserror::Error;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use crate::spec::feature;
use crate::transport::DeviceSpec;
use crate::worker::QueueHandler;
pub use image::DiskImage;
pub use request::BlockHandler;

/// Entries per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most queues a disk may have.
pub const MAX_QUEUES: u16 = 64;
/// Length of the serial (`VIRTIO_BLK_ID_BYTES`).
pub const SERIAL_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Logical block size offered (`blk_size`).
pub const BLOCK_SIZE: u32 = 512;
/// Most segments in one discard or write-zeroes request.
pub const MAX_DISCARD_SEGMENTS: u32 = 32;
/// Most sectors one discard or write-zeroes segment may cover.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 30;
/// Discard granularity in sectors (4 KiB).
pub const DISCARD_ALIGNMENT: u32 = 8;
/// PCI class code: mass storage, SCSI (what QEMU's virtio-blk-pci says).
pub const BLOCK_CLASS_CODE: u32 = 0x01_0000;

/// One `--disk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image.
    pub path: PathBuf,
    /// Open read-only (the guest sees `VIRTIO_BLK_F_RO`).
    pub readonly: bool,
    /// Open with `O_DIRECT` (no host page cache).
    pub direct: bool,
    /// Request queues (1..=64).
    pub queues: u16,
    /// Serial reported by `VIRTIO_BLK_T_GET_ID` (at most 20 bytes).
    pub serial: Option<String>,
}

impl DiskConfig {
    /// A writable, cached, single-queue disk on `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DiskConfig {
            path: path.into(),
            readonly: false,
            direct: false,
            queues: 1,
            serial: None,
        }
    }
}

/// Why a disk cannot be used (user input: the command line or the image).
#[derive(Debug, Error)]
pub enum BlockError {
    /// Opening or sizing the image failed.
    #[error("{}: {source}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The path is a directory.
    #[error("{}: is a directory, not a disk image", .0.display())]
    Directory(PathBuf),
    /// Another process holds a conflicting lock.
    #[error("{}: locked by another process (in use by another VM?)", .0.display())]
    Locked(PathBuf),
    /// The file system refuses `O_DIRECT`.
    #[error("{}: the file system does not support direct=on (O_DIRECT)", .0.display())]
    Direct(PathBuf),
    /// `queues=` out of range.
    #[error("queues={0}: must be 1 to {MAX_QUEUES}")]
    Queues(u16),
    /// `serial=` too long.
    #[error("serial={0:?}: longer than {SERIAL_LEN} bytes")]
    Serial(String),
}

/// An opened disk, ready to become a device.
#[derive(Debug)]
pub struct Block {
    name: String,
    image: DiskImage,
    queues: u16,
    serial: [u8; SERIAL_LEN],
}

impl Block {
    /// Checks `config` and opens (and locks) its image; `name` is for logs (`blk0`, ...).
    pub fn open(config: &DiskConfig, name: &str) -> Result<Self, BlockError> {
        if config.queues == 0 || config.queues > MAX_QUEUES {
            return Err(BlockError::Queues(config.queues));
        }
        let mut serial = [0u8; SERIAL_LEN];
        if let Some(s) = &config.serial {
            let bytes = s.as_bytes();
            let dst = serial
                .get_mut(..bytes.len())
                .ok_or_else(|| BlockError::Serial(s.clone()))?;
            dst.copy_from_slice(bytes);
        }
        let image = DiskImage::open(&config.path, config.readonly, config.direct)?;
        Ok(Block {
            name: name.to_string(),
            image,
            queues: config.queues,
            serial,
        })
    }

    /// The open image.
    pub fn image(&self) -> &DiskImage {
        &self.image
    }

    /// Device-type features.
    pub fn features(&self) -> u64 {
        let mut f = feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_BLK_SIZE)
            | feature(VIRTIO_BLK_F_FLUSH);
        if self.queues > 1 {
            f |= feature(VIRTIO_BLK_F_MQ);
        }
        if self.image.readonly() {
            f |= feature(VIRTIO_BLK_F_RO);
        } else {
            f |= feature(VIRTIO_BLK_F_DISCARD) | feature(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    /// The `virtio_blk_config` structure (up to the secure-erase fields, not offered).
    pub fn config_space(&self) -> Vec<u8> {
        let mut c = vec![0u8; offset_of!(virtio_blk_config, max_secure_erase_sectors)];
        let mut put = |off: usize, bytes: &[u8]| {
            if let Some(dst) = c.get_mut(off..off + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        };
        put(
            offset_of!(virtio_blk_config, capacity),
            &self.image.sectors().to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, seg_max),
            &u32::from(QUEUE_SIZE - 2).to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, blk_size),
            &BLOCK_SIZE.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, num_queues),
            &self.queues.to_le_bytes(),
        );
        for (field, value) in [
            (
                offset_of!(virtio_blk_config, max_discard_sectors),
                MAX_DISCARD_SECTORS,
            ),
            (
                offset_of!(virtio_blk_config, max_discard_seg),
                MAX_DISCARD_SEGMENTS,
            ),
            (
                offset_of!(virtio_blk_config, discard_sector_alignment),
                DISCARD_ALIGNMENT,
            ),
            (
                offset_of!(virtio_blk_config, max_write_zeroes_sectors),
                MAX_DISCARD_SECTORS,
            ),
            (
                offset_of!(virtio_blk_config, max_write_zeroes_seg),
                MAX_DISCARD_SEGMENTS,
            ),
        ] {
            put(field, &value.to_le_bytes());
        }
        put(offset_of!(virtio_blk_config, write_zeroes_may_unmap), &[1]);
        c
    }

    /// What the transport needs to know.
    pub fn spec(&self) -> DeviceSpec {
        DeviceSpec {
            name: self.name.clone(),
            device_type: VIRTIO_ID_BLOCK,
            class_code: BLOCK_CLASS_CODE,
            features: self.features(),
            queue_sizes: vec![QUEUE_SIZE; usize::from(self.queues)],
            config: self.config_space(),
        }
    }

    /// The device's I/O-thread side.
    pub fn into_handler(self) -> Box<dyn QueueHandler> {
        Box::new(BlockHandler::new(self.name, self.image, self.serial))
    }
}

#[cfg(test)]
mod tests;
