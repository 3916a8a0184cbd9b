//! The vfio-user wire format (QEMU's `docs/interop/vfio-user.rst`, protocol 0.x): message
//! header, command numbers, the fixed payload layouts irvmm sends and receives, and pure
//! encode/decode functions over byte slices. Nothing here touches a socket, so every
//! decoder can be unit-tested and fuzzed on its own.
//!
//! Every message starts with a 16-byte header `{ u16 id; u16 command; u32 size; u32 flags;
//! u32 error; }` (`size` counts the header too), followed by the command's payload. All
//! fields are in the host's byte order. Replies echo the request's id and command and set
//! the Reply type; an error reply sets the Error flag, carries an errno and no payload.
//!
//! The bytes of a reply come from the device server, which irvmm does not trust: decoders
//! check lengths before reading and return [`DecodeError`], never panic.

use thiserror::Error;

use crate::user::version::{MAX_VERSION_DATA, VERSION_FIXED_SIZE};

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;
/// Header flags: mask of the message type.
pub const FLAG_TYPE_MASK: u32 = 0xf;
/// Header flags type: a command.
pub const FLAG_TYPE_COMMAND: u32 = 0;
/// Header flags type: a reply.
pub const FLAG_TYPE_REPLY: u32 = 1;
/// Header flag: the sender wants no reply.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// Header flag: the reply reports an error (errno in the header's error field).
pub const FLAG_ERROR: u32 = 1 << 5;

/// DEVICE_GET_INFO payload: `u32 argsz, flags, num_regions, num_irqs`.
pub const DEVICE_INFO_SIZE: usize = 16;
/// GET_IRQ_INFO payload: `u32 argsz, flags, index, count`.
pub const IRQ_INFO_SIZE: usize = 16;
/// SET_IRQS payload without data: `u32 argsz, flags, index, start, count`.
pub const SET_IRQS_SIZE: usize = 20;
/// REGION_READ/WRITE fixed payload: `u64 offset; u32 region; u32 count;` (data follows).
pub const REGION_ACCESS_SIZE: usize = 16;
/// DMA_MAP payload: `u32 argsz, flags; u64 offset, address, size`.
pub const DMA_MAP_SIZE: usize = 32;
/// DMA_UNMAP payload: `u32 argsz, flags; u64 address, size`.
pub const DMA_UNMAP_SIZE: usize = 24;
/// Largest region-info answer (structure and capability chain) irvmm asks for.
pub const MAX_REGION_INFO_SIZE: usize = 64 << 10;

/// Device info flag `VFIO_DEVICE_FLAGS_RESET`.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// Device info flag `VFIO_DEVICE_FLAGS_PCI`.
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;
/// DMA_MAP flag: the server may read the region.
pub const DMA_FLAG_READ: u32 = 1 << 0;
/// DMA_MAP flag: the server may write the region.
pub const DMA_FLAG_WRITE: u32 = 1 << 1;

/// The commands irvmm sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Command {
    /// `VFIO_USER_VERSION`.
    Version = 1,
    /// `VFIO_USER_DMA_MAP`.
    DmaMap = 2,
    /// `VFIO_USER_DMA_UNMAP`.
    DmaUnmap = 3,
    /// `VFIO_USER_DEVICE_GET_INFO`.
    DeviceGetInfo = 4,
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`.
    DeviceGetRegionInfo = 5,
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
    GetIrqInfo = 7,
    /// `VFIO_USER_DEVICE_SET_IRQS`.
    SetIrqs = 8,
    /// `VFIO_USER_REGION_READ`.
    RegionRead = 9,
    /// `VFIO_USER_REGION_WRITE`.
    RegionWrite = 10,
    /// `VFIO_USER_DEVICE_RESET`.
    DeviceReset = 13,
}

impl Command {
    /// The command's name without the `VFIO_USER_` prefix (log lines and errors).
    pub fn name(self) -> &'static str {
        match self {
            Command::Version => "VERSION",
            Command::DmaMap => "DMA_MAP",
            Command::DmaUnmap => "DMA_UNMAP",
            Command::DeviceGetInfo => "DEVICE_GET_INFO",
            Command::DeviceGetRegionInfo => "DEVICE_GET_REGION_INFO",
            Command::GetIrqInfo => "DEVICE_GET_IRQ_INFO",
            Command::SetIrqs => "DEVICE_SET_IRQS",
            Command::RegionRead => "REGION_READ",
            Command::RegionWrite => "REGION_WRITE",
            Command::DeviceReset => "DEVICE_RESET",
        }
    }

    /// The payload sizes a successful reply to this command may have, given the `argsz`
    /// irvmm put in the request where the command has one, or the data count of a read.
    pub fn reply_payload(self, arg: usize) -> PayloadRange {
        let exact = |n| PayloadRange { min: n, max: n };
        match self {
            Command::Version => PayloadRange {
                min: VERSION_FIXED_SIZE,
                max: VERSION_FIXED_SIZE + MAX_VERSION_DATA,
            },
            // No payload; tolerate a server that echoes the request.
            Command::DmaMap => PayloadRange {
                min: 0,
                max: DMA_MAP_SIZE,
            },
            // The spec echoes the request; the crate's and older servers send nothing.
            Command::DmaUnmap => PayloadRange {
                min: 0,
                max: DMA_UNMAP_SIZE,
            },
            Command::DeviceGetInfo => exact(DEVICE_INFO_SIZE),
            Command::DeviceGetRegionInfo => PayloadRange {
                min: crate::caps::REGION_INFO_SIZE,
                max: arg.max(crate::caps::REGION_INFO_SIZE),
            },
            Command::GetIrqInfo => exact(IRQ_INFO_SIZE),
            Command::SetIrqs | Command::DeviceReset => exact(0),
            Command::RegionRead => exact(REGION_ACCESS_SIZE + arg),
            Command::RegionWrite => exact(REGION_ACCESS_SIZE),
        }
    }
}

/// Inclusive bounds on a reply's payload size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadRange {
    /// Fewest bytes.
    pub min: usize,
    /// Most bytes.
    pub max: usize,
}

/// A message header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Message id (replies echo the request's).
    pub id: u16,
    /// Command number.
    pub command: u16,
    /// Whole message size, header included.
    pub size: u32,
    /// `FLAG_*`.
    pub flags: u32,
    /// errno of an error reply.
    pub error: u32,
}

impl Header {
    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.id.to_ne_bytes());
        b[2..4].copy_from_slice(&self.command.to_ne_bytes());
        b[4..8].copy_from_slice(&self.size.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.error.to_ne_bytes());
        b
    }

    /// Decodes a header.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Self {
        Header {
            id: u16::from_ne_bytes([b[0], b[1]]),
            command: u16::from_ne_bytes([b[2], b[3]]),
            size: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            error: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        }
    }
}

/// What a reply header says, once it passed [`check_reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// Success; this many payload bytes follow.
    Ok {
        /// Payload bytes.
        payload: usize,
    },
    /// The server refused the command; this many payload bytes (none per the spec) follow
    /// and are discarded.
    Error {
        /// The errno it gave (may be 0).
        errno: u32,
        /// Payload bytes to discard.
        payload: usize,
    },
}

/// A reply header that does not answer the request.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ReplyError {
    /// Not a reply (a command from the server, or an unknown type).
    #[error("expected a reply, got a message with flags {0:#x}")]
    NotReply(u32),
    /// Another message id.
    #[error("reply id {got} does not match request id {want}")]
    WrongId {
        /// The reply's id.
        got: u16,
        /// The request's id.
        want: u16,
    },
    /// Another command.
    #[error("reply to command {got} for a {want} request")]
    WrongCommand {
        /// The reply's command.
        got: u16,
        /// The request's command name.
        want: &'static str,
    },
    /// A size below the header.
    #[error("message size {0} is smaller than the header")]
    BelowHeader(u32),
    /// A payload size the command does not allow.
    #[error("{command} reply of {size} bytes (allowed: {min}..={max} payload bytes)")]
    BadSize {
        /// The command name.
        command: &'static str,
        /// The message size.
        size: u32,
        /// Fewest payload bytes allowed.
        min: usize,
        /// Most payload bytes allowed.
        max: usize,
    },
}

/// Checks a reply header against the request (`id`, `command`) and the payload sizes the
/// command allows. An error reply may carry at most `allowed.max` bytes, which the caller
/// reads and discards.
pub fn check_reply(
    h: &Header,
    id: u16,
    command: Command,
    allowed: PayloadRange,
) -> Result<ReplyKind, ReplyError> {
    if h.flags & FLAG_TYPE_MASK != FLAG_TYPE_REPLY {
        return Err(ReplyError::NotReply(h.flags));
    }
    if h.id != id {
        return Err(ReplyError::WrongId {
            got: h.id,
            want: id,
        });
    }
    if h.command != command as u16 {
        return Err(ReplyError::WrongCommand {
            got: h.command,
            want: command.name(),
        });
    }
    let payload = (h.size as usize)
        .checked_sub(HEADER_SIZE)
        .ok_or(ReplyError::BelowHeader(h.size))?;
    let bad = || ReplyError::BadSize {
        command: command.name(),
        size: h.size,
        min: allowed.min,
        max: allowed.max,
    };
    if payload > allowed.max {
        return Err(bad());
    }
    if h.flags & FLAG_ERROR != 0 {
        return Ok(ReplyKind::Error {
            errno: h.error,
            payload,
        });
    }
    if payload < allowed.min {
        return Err(bad());
    }
    Ok(ReplyKind::Ok { payload })
}

/// A payload too short for what it must hold.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the structure.
    #[error("{what}: {have} bytes, need {need}")]
    Short {
        /// The structure.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The version data is not UTF-8.
    #[error("version data is not UTF-8")]
    NotUtf8,
    /// The version data is not the JSON the spec describes.
    #[error("version data: {0}")]
    Json(String),
}

pub(crate) fn fixed<'a>(
    what: &'static str,
    b: &'a [u8],
    need: usize,
) -> Result<&'a [u8], DecodeError> {
    b.get(..need).ok_or(DecodeError::Short {
        what,
        need,
        have: b.len(),
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_ne_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_ne_bytes(x)
}

fn put_u32s(out: &mut Vec<u8>, v: &[u32]) {
    for x in v {
        out.extend_from_slice(&x.to_ne_bytes());
    }
}

/// The DEVICE_GET_INFO request payload (argsz: the reply payload irvmm accepts).
pub fn device_info_request() -> Vec<u8> {
    let mut out = Vec::with_capacity(DEVICE_INFO_SIZE);
    put_u32s(&mut out, &[DEVICE_INFO_SIZE as u32, 0, 0, 0]);
    out
}

/// A DEVICE_GET_INFO reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Size of the full answer.
    pub argsz: u32,
    /// `DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ indices.
    pub num_irqs: u32,
}

/// Decodes a DEVICE_GET_INFO reply payload.
pub fn parse_device_info(payload: &[u8]) -> Result<DeviceInfo, DecodeError> {
    let b = fixed("DEVICE_GET_INFO reply", payload, DEVICE_INFO_SIZE)?;
    Ok(DeviceInfo {
        argsz: u32_at(b, 0),
        flags: u32_at(b, 4),
        num_regions: u32_at(b, 8),
        num_irqs: u32_at(b, 12),
    })
}

/// The DEVICE_GET_REGION_INFO request payload: a `vfio_region_info` with only `argsz`
/// (the answer size irvmm accepts) and `index` set.
pub fn region_info_request(index: u32, argsz: u32) -> Vec<u8> {
    crate::caps::RawRegionInfo {
        argsz,
        index,
        ..Default::default()
    }
    .to_bytes()
    .to_vec()
}

/// The GET_IRQ_INFO request payload.
pub fn irq_info_request(index: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(IRQ_INFO_SIZE);
    put_u32s(&mut out, &[IRQ_INFO_SIZE as u32, 0, index, 0]);
    out
}

/// A GET_IRQ_INFO reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqInfoReply {
    /// Size of the full answer.
    pub argsz: u32,
    /// `IRQ_INFO_*`.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// Interrupts at this index.
    pub count: u32,
}

/// Decodes a GET_IRQ_INFO reply payload.
pub fn parse_irq_info(payload: &[u8]) -> Result<IrqInfoReply, DecodeError> {
    let b = fixed("DEVICE_GET_IRQ_INFO reply", payload, IRQ_INFO_SIZE)?;
    Ok(IrqInfoReply {
        argsz: u32_at(b, 0),
        flags: u32_at(b, 4),
        index: u32_at(b, 8),
        count: u32_at(b, 12),
    })
}

/// The SET_IRQS request payload (no data: eventfds travel as SCM_RIGHTS).
pub fn set_irqs_request(flags: u32, index: u32, start: u32, count: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(SET_IRQS_SIZE);
    put_u32s(
        &mut out,
        &[SET_IRQS_SIZE as u32, flags, index, start, count],
    );
    out
}

/// The fixed part of a REGION_READ/WRITE request or reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionAccess {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Data bytes.
    pub count: u32,
}

impl RegionAccess {
    /// Encodes the fixed part followed by `data` (a write's bytes, empty for a read).
    pub fn request(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(REGION_ACCESS_SIZE + data.len());
        out.extend_from_slice(&self.offset.to_ne_bytes());
        out.extend_from_slice(&self.region.to_ne_bytes());
        out.extend_from_slice(&self.count.to_ne_bytes());
        out.extend_from_slice(data);
        out
    }

    /// Decodes the fixed part of a reply payload; the data follows at
    /// [`REGION_ACCESS_SIZE`].
    pub fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        let b = fixed("region access reply", payload, REGION_ACCESS_SIZE)?;
        Ok(RegionAccess {
            offset: u64_at(b, 0),
            region: u32_at(b, 8),
            count: u32_at(b, 12),
        })
    }
}

/// The DMA_MAP request payload: the region `[iova, iova + size)` backed by the file sent
/// with the message at `fd_offset`, readable and writable by the device.
pub fn dma_map_request(iova: u64, size: u64, fd_offset: u64) -> Vec<u8> {
    dma_map_request_with(iova, size, fd_offset, DMA_FLAG_READ | DMA_FLAG_WRITE)
}

/// [`dma_map_request`] with the permission `flags` ([`DMA_FLAG_READ`], [`DMA_FLAG_WRITE`]).
pub fn dma_map_request_with(iova: u64, size: u64, fd_offset: u64, flags: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(DMA_MAP_SIZE);
    put_u32s(&mut out, &[DMA_MAP_SIZE as u32, flags]);
    for v in [fd_offset, iova, size] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    out
}

/// The DMA_UNMAP request payload.
pub fn dma_unmap_request(iova: u64, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(DMA_UNMAP_SIZE);
    put_u32s(&mut out, &[DMA_UNMAP_SIZE as u32, 0]);
    for v in [iova, size] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(id: u16, command: Command, payload: usize, flags: u32) -> Header {
        Header {
            id,
            command: command as u16,
            size: (HEADER_SIZE + payload) as u32,
            flags,
            error: 0,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = Header {
            id: 0xbeef,
            command: 9,
            size: 0x1234_5678,
            flags: FLAG_TYPE_REPLY | FLAG_ERROR,
            error: 22,
        };
        assert_eq!(Header::parse(&h.to_bytes()), h);
    }

    #[test]
    fn reply_checks() {
        let range = Command::RegionRead.reply_payload(4);
        assert_eq!(range, PayloadRange { min: 20, max: 20 });
        let ok = reply(7, Command::RegionRead, 20, FLAG_TYPE_REPLY);
        assert_eq!(
            check_reply(&ok, 7, Command::RegionRead, range),
            Ok(ReplyKind::Ok { payload: 20 })
        );
        assert!(matches!(
            check_reply(&ok, 8, Command::RegionRead, range),
            Err(ReplyError::WrongId { got: 7, want: 8 })
        ));
        assert!(matches!(
            check_reply(&ok, 7, Command::RegionWrite, range),
            Err(ReplyError::WrongCommand { got: 9, .. })
        ));
        let cmd = reply(7, Command::RegionRead, 20, FLAG_TYPE_COMMAND);
        assert!(matches!(
            check_reply(&cmd, 7, Command::RegionRead, range),
            Err(ReplyError::NotReply(0))
        ));
        let huge = Header {
            size: u32::MAX,
            ..ok
        };
        assert!(matches!(
            check_reply(&huge, 7, Command::RegionRead, range),
            Err(ReplyError::BadSize { .. })
        ));
        let short = reply(7, Command::RegionRead, 19, FLAG_TYPE_REPLY);
        assert!(check_reply(&short, 7, Command::RegionRead, range).is_err());
        let tiny = Header { size: 3, ..ok };
        assert_eq!(
            check_reply(&tiny, 7, Command::RegionRead, range),
            Err(ReplyError::BelowHeader(3))
        );
        let err = Header {
            flags: FLAG_TYPE_REPLY | FLAG_ERROR,
            error: 5,
            size: HEADER_SIZE as u32,
            ..ok
        };
        assert_eq!(
            check_reply(&err, 7, Command::RegionRead, range),
            Ok(ReplyKind::Error {
                errno: 5,
                payload: 0
            })
        );
    }

    #[test]
    fn fixed_payloads_decode_and_refuse_short_input() {
        let mut b = Vec::new();
        put_u32s(&mut b, &[16, DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET, 9, 5]);
        assert_eq!(
            parse_device_info(&b),
            Ok(DeviceInfo {
                argsz: 16,
                flags: 3,
                num_regions: 9,
                num_irqs: 5
            })
        );
        assert!(parse_device_info(&b[..15]).is_err());
        assert!(parse_irq_info(&b[..3]).is_err());
        assert_eq!(parse_irq_info(&b).map(|i| i.count), Ok(5));
        let a = RegionAccess {
            offset: 0x1000,
            region: 7,
            count: 4,
        };
        let req = a.request(&[1, 2, 3, 4]);
        assert_eq!(req.len(), REGION_ACCESS_SIZE + 4);
        assert_eq!(RegionAccess::parse(&req), Ok(a));
        assert!(RegionAccess::parse(&req[..15]).is_err());
    }

    #[test]
    fn request_layouts() {
        assert_eq!(device_info_request().len(), DEVICE_INFO_SIZE);
        assert_eq!(irq_info_request(2)[8..12], 2u32.to_ne_bytes());
        let s = set_irqs_request(0x24, 2, 3, 4);
        assert_eq!(s.len(), SET_IRQS_SIZE);
        assert_eq!(s[0..4], 20u32.to_ne_bytes());
        assert_eq!(s[16..20], 4u32.to_ne_bytes());
        let m = dma_map_request(0x1000, 0x2000, 0x3000);
        assert_eq!(m.len(), DMA_MAP_SIZE);
        assert_eq!(m[4..8], 3u32.to_ne_bytes());
        assert_eq!(m[8..16], 0x3000u64.to_ne_bytes());
        assert_eq!(m[16..24], 0x1000u64.to_ne_bytes());
        assert_eq!(m[24..32], 0x2000u64.to_ne_bytes());
        let ro = dma_map_request_with(0x1000, 0x2000, 0x3000, DMA_FLAG_READ);
        assert_eq!(ro[4..8], 1u32.to_ne_bytes());
        assert_eq!(ro[8..], m[8..]);
        let u = dma_unmap_request(0x1000, 0x2000);
        assert_eq!(u.len(), DMA_UNMAP_SIZE);
        let r = region_info_request(7, 32);
        assert_eq!(r.len(), crate::caps::REGION_INFO_SIZE);
        assert_eq!(r[8..12], 7u32.to_ne_bytes());
    }
}
