//! The capability chain that follows `struct vfio_region_info` in a
//! `VFIO_DEVICE_GET_REGION_INFO` answer, from the kernel (ioctl buffer) or from a vfio-user
//! server (the reply payload): one parser for both.
//!
//! Layout (`include/uapi/linux/vfio.h`): the 32-byte `vfio_region_info { u32 argsz, flags,
//! index, cap_offset; u64 size, offset; }`, then capabilities, each starting with
//! `{ u16 id; u16 version; u32 next; }`. `cap_offset` and every `next` are offsets from the
//! start of `vfio_region_info`; 0 ends the chain. Capabilities irvmm acts on:
//! SPARSE_MMAP (1: `u32 nr_areas; u32 reserved; { u64 offset, size } areas[]`) and
//! MSIX_MAPPABLE (3: header only). Others are skipped.
//!
//! The bytes come from the host kernel or from a device server, so nothing here trusts them:
//! offsets must advance and stay inside the buffer, counts must fit, and a malformed chain
//! is an error, never a panic.

use thiserror::Error;

/// Size of `struct vfio_region_info`.
pub const REGION_INFO_SIZE: usize = 32;
/// Size of a capability header.
pub const CAP_HEADER_SIZE: usize = 8;
/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`.
pub const CAP_SPARSE_MMAP: u16 = 1;
/// `VFIO_REGION_INFO_CAP_TYPE`.
pub const CAP_TYPE: u16 = 2;
/// `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`.
pub const CAP_MSIX_MAPPABLE: u16 = 3;
/// Size of one sparse mmap area (`u64 offset, size`).
pub const SPARSE_AREA_SIZE: usize = 16;
/// Size of the sparse mmap header after the capability header.
pub const SPARSE_HEADER_SIZE: usize = 8;
/// Most capabilities followed in one chain (a bound on hostile input).
pub const MAX_CAPS: usize = 64;

/// Region flag: readable.
pub const REGION_FLAG_READ: u32 = 1 << 0;
/// Region flag: writable.
pub const REGION_FLAG_WRITE: u32 = 1 << 1;
/// Region flag: mmap-able.
pub const REGION_FLAG_MMAP: u32 = 1 << 2;
/// Region flag: a capability chain follows.
pub const REGION_FLAG_CAPS: u32 = 1 << 3;

/// The fixed part of a region-info answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawRegionInfo {
    /// Size of the whole answer (fixed part and capabilities) the sender needs or used.
    pub argsz: u32,
    /// `REGION_FLAG_*`.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability from the start of this structure (0: none).
    pub cap_offset: u32,
    /// Region size in bytes.
    pub size: u64,
    /// Kernel: offset of the region in the device fd (for pread/pwrite/mmap);
    /// vfio-user: offset in the region's file descriptor.
    pub offset: u64,
}

impl RawRegionInfo {
    /// Decodes the first [`REGION_INFO_SIZE`] bytes of `bytes` (native endianness, as
    /// both the ioctl and vfio-user use on x86).
    pub fn parse(bytes: &[u8]) -> Result<Self, CapError> {
        let b = bytes.get(..REGION_INFO_SIZE).ok_or(CapError::Truncated {
            offset: 0,
            need: REGION_INFO_SIZE,
            len: bytes.len(),
        })?;
        Ok(RawRegionInfo {
            argsz: u32_at(b, 0),
            flags: u32_at(b, 4),
            index: u32_at(b, 8),
            cap_offset: u32_at(b, 12),
            size: u64_at(b, 16),
            offset: u64_at(b, 24),
        })
    }

    /// Encodes the structure (for tests and for building requests).
    pub fn to_bytes(&self) -> [u8; REGION_INFO_SIZE] {
        let mut b = [0u8; REGION_INFO_SIZE];
        b[0..4].copy_from_slice(&self.argsz.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b[8..12].copy_from_slice(&self.index.to_ne_bytes());
        b[12..16].copy_from_slice(&self.cap_offset.to_ne_bytes());
        b[16..24].copy_from_slice(&self.size.to_ne_bytes());
        b[24..32].copy_from_slice(&self.offset.to_ne_bytes());
        b
    }
}

/// One area of a region that may be mmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset in the region.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// What a region's capability chain says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionCaps {
    /// SPARSE_MMAP areas, in wire order (`None`: no SPARSE_MMAP capability).
    pub sparse: Option<Vec<SparseArea>>,
    /// The MSIX_MAPPABLE capability was present.
    pub msix_mappable: bool,
    /// TYPE capability `(type, subtype)`, when present.
    pub region_type: Option<(u32, u32)>,
}

/// A malformed capability chain.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CapError {
    /// Fewer bytes than a structure needs.
    #[error("capability data truncated at offset {offset}: need {need} bytes, have {len}")]
    Truncated {
        /// Offset from the start of the region info.
        offset: usize,
        /// Bytes needed from there.
        need: usize,
        /// Total bytes available.
        len: usize,
    },
    /// A capability offset points into the fixed part or does not move forward.
    #[error("capability offset {0} points backwards or into the region info")]
    NotAdvancing(usize),
    /// More capabilities than [`MAX_CAPS`].
    #[error("more than {MAX_CAPS} capabilities")]
    TooMany,
    /// A sparse mmap area count that cannot fit the data.
    #[error("sparse mmap capability at offset {offset} claims {count} areas")]
    AreaCount {
        /// Offset of the capability.
        offset: usize,
        /// The claimed count.
        count: u32,
    },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(x)
}

/// `len` bytes of `whole` at `offset`, or why not.
fn slice(whole: &[u8], offset: usize, len: usize) -> Result<&[u8], CapError> {
    offset
        .checked_add(len)
        .and_then(|end| whole.get(offset..end))
        .ok_or(CapError::Truncated {
            offset,
            need: len,
            len: whole.len(),
        })
}

/// Parses the chain in `whole`, which starts with the region info structure itself
/// (capability offsets count from there). `cap_offset` 0 means no chain.
pub fn parse_chain(whole: &[u8], cap_offset: u32) -> Result<RegionCaps, CapError> {
    let mut caps = RegionCaps::default();
    let mut next = cap_offset as usize;
    let mut previous = REGION_INFO_SIZE - 1;
    let mut seen = 0;
    while next != 0 {
        if next <= previous {
            return Err(CapError::NotAdvancing(next));
        }
        seen += 1;
        if seen > MAX_CAPS {
            return Err(CapError::TooMany);
        }
        let at = next;
        let header = slice(whole, at, CAP_HEADER_SIZE)?;
        let id = u16_at(header, 0);
        previous = at;
        next = u32_at(header, 4) as usize;
        match id {
            CAP_SPARSE_MMAP => {
                let body = slice(whole, at + CAP_HEADER_SIZE, SPARSE_HEADER_SIZE)?;
                let count = u32_at(body, 0);
                let areas_at = at + CAP_HEADER_SIZE + SPARSE_HEADER_SIZE;
                let bytes = (count as usize)
                    .checked_mul(SPARSE_AREA_SIZE)
                    .ok_or(CapError::AreaCount { offset: at, count })?;
                let raw = slice(whole, areas_at, bytes)
                    .map_err(|_| CapError::AreaCount { offset: at, count })?;
                let areas = raw
                    .chunks_exact(SPARSE_AREA_SIZE)
                    .map(|a| SparseArea {
                        offset: u64_at(a, 0),
                        size: u64_at(a, 8),
                    })
                    .collect::<Vec<_>>();
                caps.sparse.get_or_insert_with(Vec::new).extend(areas);
            }
            CAP_MSIX_MAPPABLE => caps.msix_mappable = true,
            CAP_TYPE => {
                let body = slice(whole, at + CAP_HEADER_SIZE, 8)?;
                caps.region_type = Some((u32_at(body, 0), u32_at(body, 4)));
            }
            other => log::debug!("vfio: region capability {other} ignored"),
        }
    }
    Ok(caps)
}

/// Builders for tests (here and in the backends): a region-info answer with a chain.
pub mod build {
    use super::*;

    /// One capability to encode.
    #[derive(Clone, Debug)]
    pub enum Cap {
        /// SPARSE_MMAP with these areas.
        Sparse(Vec<SparseArea>),
        /// MSIX_MAPPABLE.
        MsixMappable,
        /// TYPE.
        Type(u32, u32),
    }

    /// Encodes `info` followed by `caps` chained in order; fixes up `argsz`,
    /// `cap_offset` and the CAPS flag.
    pub fn region_info(mut info: RawRegionInfo, caps: &[Cap]) -> Vec<u8> {
        let mut tail = Vec::new();
        let mut offsets = Vec::new();
        for cap in caps {
            offsets.push(REGION_INFO_SIZE + tail.len());
            let (id, version, body): (u16, u16, Vec<u8>) = match cap {
                Cap::Sparse(areas) => {
                    let mut b = Vec::new();
                    b.extend_from_slice(&(areas.len() as u32).to_ne_bytes());
                    b.extend_from_slice(&0u32.to_ne_bytes());
                    for a in areas {
                        b.extend_from_slice(&a.offset.to_ne_bytes());
                        b.extend_from_slice(&a.size.to_ne_bytes());
                    }
                    (CAP_SPARSE_MMAP, 1, b)
                }
                Cap::MsixMappable => (CAP_MSIX_MAPPABLE, 1, Vec::new()),
                Cap::Type(t, s) => {
                    let mut b = t.to_ne_bytes().to_vec();
                    b.extend_from_slice(&s.to_ne_bytes());
                    (CAP_TYPE, 1, b)
                }
            };
            tail.extend_from_slice(&id.to_ne_bytes());
            tail.extend_from_slice(&version.to_ne_bytes());
            tail.extend_from_slice(&0u32.to_ne_bytes());
            tail.extend_from_slice(&body);
        }
        // Link each capability to the next.
        for w in offsets.windows(2) {
            let at = w[0] - REGION_INFO_SIZE + 4;
            tail[at..at + 4].copy_from_slice(&(w[1] as u32).to_ne_bytes());
        }
        if caps.is_empty() {
            info.cap_offset = 0;
        } else {
            info.flags |= REGION_FLAG_CAPS;
            info.cap_offset = REGION_INFO_SIZE as u32;
        }
        info.argsz = (REGION_INFO_SIZE + tail.len()) as u32;
        let mut out = info.to_bytes().to_vec();
        out.extend_from_slice(&tail);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::{region_info, Cap};
    use super::*;

    fn info() -> RawRegionInfo {
        RawRegionInfo {
            flags: REGION_FLAG_READ | REGION_FLAG_WRITE | REGION_FLAG_MMAP,
            index: 0,
            size: 0x4000,
            offset: 0,
            ..Default::default()
        }
    }

    fn parse(bytes: &[u8]) -> Result<RegionCaps, CapError> {
        let i = RawRegionInfo::parse(bytes)?;
        parse_chain(bytes, i.cap_offset)
    }

    /// What vfio-pci answers for a BAR holding an MSI-X table since Linux 4.16: the whole
    /// BAR mappable, MSIX_MAPPABLE present, no sparse areas.
    #[test]
    fn msix_mappable_without_sparse() {
        let bytes = region_info(info(), &[Cap::MsixMappable]);
        let caps = parse(&bytes).unwrap();
        assert!(caps.msix_mappable);
        assert_eq!(caps.sparse, None);
    }

    /// A sparse BAR whose table page is a hole, then MSIX_MAPPABLE.
    #[test]
    fn sparse_areas_then_msix_mappable() {
        let areas = vec![
            SparseArea {
                offset: 0,
                size: 0x1000,
            },
            SparseArea {
                offset: 0x2000,
                size: 0x2000,
            },
        ];
        let bytes = region_info(info(), &[Cap::Sparse(areas.clone()), Cap::MsixMappable]);
        let caps = parse(&bytes).unwrap();
        assert_eq!(caps.sparse, Some(areas));
        assert!(caps.msix_mappable);
    }

    #[test]
    fn hostile_chains_fail_cleanly() {
        let good = region_info(
            info(),
            &[Cap::Sparse(vec![SparseArea { offset: 0, size: 1 }])],
        );
        // Offset pointing into the fixed part.
        assert_eq!(parse_chain(&good, 8), Err(CapError::NotAdvancing(8)));
        // Next pointing at itself.
        let mut looped = good.clone();
        looped[REGION_INFO_SIZE + 4..REGION_INFO_SIZE + 8]
            .copy_from_slice(&(REGION_INFO_SIZE as u32).to_ne_bytes());
        assert_eq!(
            parse_chain(&looped, REGION_INFO_SIZE as u32),
            Err(CapError::NotAdvancing(REGION_INFO_SIZE))
        );
        // Area count beyond the data.
        let mut big = good.clone();
        big[REGION_INFO_SIZE + 8..REGION_INFO_SIZE + 12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(
            parse_chain(&big, REGION_INFO_SIZE as u32),
            Err(CapError::AreaCount { .. })
        ));
        // Truncated anywhere: never a panic.
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
        // Offset past the end.
        assert!(matches!(
            parse_chain(&good, u32::MAX),
            Err(CapError::Truncated { .. })
        ));
    }

    #[test]
    fn unknown_and_type_capabilities() {
        let bytes = region_info(info(), &[Cap::Type(1, 2), Cap::MsixMappable]);
        let caps = parse(&bytes).unwrap();
        assert_eq!(caps.region_type, Some((1, 2)));
        assert!(caps.msix_mappable);
    }
}
