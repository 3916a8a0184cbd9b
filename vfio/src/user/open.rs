//! Opening a vfio-user device: VERSION (protocol major 0, transfer limits), DEVICE_GET_INFO
//! (must be PCI), every region's info with its capability chain and mmap descriptor, and
//! every IRQ index's info, all before one deadline.
//!
//! A region or IRQ index the server refuses is treated as absent (logged); any other
//! failure is a [`UserOpenError`] naming the step.

use std::os::fd::OwnedFd;
use std::time::Instant;

use crate::backend::{BackendError, IrqInfo, RegionInfo, PCI_REGIONS};
use crate::caps::{self, RawRegionInfo, REGION_FLAG_CAPS, REGION_FLAG_MMAP, REGION_INFO_SIZE};
use crate::user::client::{Connection, Reply};
use crate::user::error::UserOpenError;
use crate::user::protocol::{self as p, Command};
use crate::user::sys::{MAX_RECV_FDS, MAX_SEND_FDS};
use crate::user::version::{parse_capabilities, parse_version, version_request, VERSION_MAJOR};

/// Largest data count irvmm moves in one REGION_READ/WRITE (and announces to servers).
pub const CLIENT_MAX_DATA_XFER: u32 = 1 << 20;
/// IRQ indices a PCI device defines (INTx, MSI, MSI-X, ERR, REQ); more are not queried.
pub const PCI_IRQS: u32 = 5;

/// One region as learnt at open.
#[derive(Debug)]
pub(super) struct UserRegion {
    /// What the passthrough function sees.
    pub info: RegionInfo,
    /// The descriptor to mmap (sent with the region-info reply).
    pub fd: Option<OwnedFd>,
    /// Offset of the region in `fd`.
    pub fd_offset: u64,
}

/// What opening learnt about the device.
#[derive(Debug)]
pub(super) struct Learnt {
    /// `VFIO_DEVICE_FLAGS_*`.
    pub device_flags: u32,
    /// Data bytes per REGION_READ/WRITE: the smaller of the server's and irvmm's limit.
    pub max_data_xfer: u32,
    /// Descriptors per message the server accepts (capped at what irvmm sends).
    pub max_msg_fds: u32,
    /// Regions 0.. (at most [`PCI_REGIONS`]).
    pub regions: Vec<UserRegion>,
    /// IRQ indices 0.. (at most [`PCI_IRQS`]).
    pub irqs: Vec<IrqInfo>,
}

/// Negotiates with the server behind `conn` (named `name` in errors) and learns its
/// device, before `deadline`.
pub(super) fn learn(
    conn: &mut Connection,
    name: &str,
    deadline: Instant,
) -> Result<Learnt, UserOpenError> {
    let fail = |step: &str, e: BackendError| UserOpenError::from_backend(name, step.into(), e);

    // VERSION.
    let request = version_request(MAX_RECV_FDS as u32, CLIENT_MAX_DATA_XFER);
    let step = Command::Version.name();
    let reply = conn
        .call(
            deadline,
            Command::Version,
            &request,
            &[],
            Command::Version.reply_payload(0),
        )
        .map_err(|e| fail(step, e))?;
    let malformed = |what: String| UserOpenError::Malformed {
        path: name.to_string(),
        step: step.into(),
        what,
    };
    let version = parse_version(&reply.payload).map_err(|e| malformed(e.to_string()))?;
    if version.major != VERSION_MAJOR {
        return Err(UserOpenError::Version {
            path: name.to_string(),
            major: version.major,
            minor: version.minor,
        });
    }
    let peer = parse_capabilities(version.data).map_err(|e| malformed(e.to_string()))?;
    if peer.max_data_xfer_size == 0 {
        return Err(malformed("max_data_xfer_size is 0".into()));
    }
    let max_data_xfer = u32::try_from(peer.max_data_xfer_size.min(u64::from(CLIENT_MAX_DATA_XFER)))
        .unwrap_or(CLIENT_MAX_DATA_XFER);
    let max_msg_fds = u32::try_from(peer.max_msg_fds.min(MAX_SEND_FDS as u64)).unwrap_or(1);
    log::debug!(
        "vfio-user {name}: version {}.{}, max_msg_fds {}, max_data_xfer_size {}",
        version.major,
        version.minor,
        peer.max_msg_fds,
        peer.max_data_xfer_size
    );

    // DEVICE_GET_INFO.
    let step = Command::DeviceGetInfo.name();
    let reply = conn
        .call(
            deadline,
            Command::DeviceGetInfo,
            &p::device_info_request(),
            &[],
            Command::DeviceGetInfo.reply_payload(0),
        )
        .map_err(|e| fail(step, e))?;
    let info = p::parse_device_info(&reply.payload).map_err(|e| UserOpenError::Malformed {
        path: name.to_string(),
        step: step.into(),
        what: e.to_string(),
    })?;
    if info.flags & p::DEVICE_FLAGS_PCI == 0 {
        return Err(UserOpenError::NotPci {
            path: name.to_string(),
            flags: info.flags,
        });
    }
    if info.num_regions > PCI_REGIONS || info.num_irqs > PCI_IRQS {
        log::debug!(
            "vfio-user {name}: {} regions and {} IRQ indices; using the first {PCI_REGIONS} and {PCI_IRQS}",
            info.num_regions,
            info.num_irqs
        );
    }

    let mut regions = Vec::new();
    for index in 0..info.num_regions.min(PCI_REGIONS) {
        let step = format!("{} for region {index}", Command::DeviceGetRegionInfo.name());
        match region_info(conn, deadline, index) {
            Ok(r) => regions.push(r),
            Err(BackendError::Refused { errno, .. }) => {
                log::warn!(
                    "vfio-user {name}: region {index} refused (errno {errno}); treated as absent"
                );
                regions.push(UserRegion {
                    info: RegionInfo {
                        index,
                        ..Default::default()
                    },
                    fd: None,
                    fd_offset: 0,
                });
            }
            Err(e) => return Err(UserOpenError::from_backend(name, step, e)),
        }
    }
    let mut irqs = Vec::new();
    for index in 0..info.num_irqs.min(PCI_IRQS) {
        let step = format!("{} for index {index}", Command::GetIrqInfo.name());
        match irq_info(conn, deadline, index) {
            Ok(i) => irqs.push(i),
            Err(BackendError::Refused { errno, .. }) => {
                log::warn!("vfio-user {name}: IRQ index {index} refused (errno {errno}); treated as absent");
                irqs.push(IrqInfo {
                    index,
                    flags: 0,
                    count: 0,
                });
            }
            Err(e) => return Err(UserOpenError::from_backend(name, step, e)),
        }
    }
    log::info!(
        "vfio-user {name}: PCI device with {} regions, {} IRQ indices",
        regions.len(),
        irqs.len()
    );
    Ok(Learnt {
        device_flags: info.flags,
        max_data_xfer,
        max_msg_fds,
        regions,
        irqs,
    })
}

/// Asks for region `index`'s info, twice when its capability chain does not fit the
/// first answer.
fn region_info(
    conn: &mut Connection,
    deadline: Instant,
    index: u32,
) -> Result<UserRegion, BackendError> {
    let cmd = Command::DeviceGetRegionInfo;
    let ask =
        |conn: &mut Connection, argsz: usize| -> Result<(Reply, RawRegionInfo), BackendError> {
            let reply = conn.call(
                deadline,
                cmd,
                &p::region_info_request(index, argsz as u32),
                &[],
                cmd.reply_payload(argsz),
            )?;
            let raw = match RawRegionInfo::parse(&reply.payload) {
                Ok(raw) => raw,
                Err(e) => return Err(conn.violation(cmd, e.to_string())),
            };
            if raw.index != index {
                return Err(conn.violation(
                    cmd,
                    format!(
                        "info for region {} when asked for region {index}",
                        raw.index
                    ),
                ));
            }
            Ok((reply, raw))
        };
    let (first, raw) = ask(conn, REGION_INFO_SIZE)?;
    let needed = raw.argsz as usize;
    let (mut reply, raw, mut spare_fds) = if needed > REGION_INFO_SIZE {
        if needed > p::MAX_REGION_INFO_SIZE {
            return Err(conn.violation(
                cmd,
                format!(
                    "region {index} info needs {needed} bytes, more than the {} irvmm accepts",
                    p::MAX_REGION_INFO_SIZE
                ),
            ));
        }
        let (second, raw2) = ask(conn, needed)?;
        if raw2.argsz as usize > needed {
            return Err(conn.violation(
                cmd,
                format!(
                    "region {index} info grew from {needed} to {} bytes between two requests",
                    raw2.argsz
                ),
            ));
        }
        (second, raw2, first.fds)
    } else {
        (first, raw, Vec::new())
    };
    let caps = if raw.flags & REGION_FLAG_CAPS != 0 && raw.cap_offset != 0 {
        match caps::parse_chain(&reply.payload, raw.cap_offset) {
            Ok(c) => c,
            Err(e) => return Err(conn.violation(cmd, format!("region {index} capabilities: {e}"))),
        }
    } else {
        caps::RegionCaps::default()
    };
    // The descriptor normally comes with the final answer; some servers send it with
    // the first.
    let fd = if reply.fds.is_empty() {
        spare_fds.drain(..).next()
    } else {
        reply.fds.drain(..).next()
    };
    let mut flags = raw.flags;
    if fd.is_none() && flags & REGION_FLAG_MMAP != 0 {
        log::debug!("vfio-user: region {index} is mmap-able but came without a descriptor");
        flags &= !REGION_FLAG_MMAP;
    }
    Ok(UserRegion {
        info: RegionInfo {
            index,
            flags,
            size: raw.size,
            caps,
        },
        fd,
        fd_offset: raw.offset,
    })
}

/// Asks for IRQ index `index`'s info.
fn irq_info(conn: &mut Connection, deadline: Instant, index: u32) -> Result<IrqInfo, BackendError> {
    let cmd = Command::GetIrqInfo;
    let reply = conn.call(
        deadline,
        cmd,
        &p::irq_info_request(index),
        &[],
        cmd.reply_payload(0),
    )?;
    let info = match p::parse_irq_info(&reply.payload) {
        Ok(i) => i,
        Err(e) => return Err(conn.violation(cmd, e.to_string())),
    };
    if info.index != index {
        return Err(conn.violation(
            cmd,
            format!("info for IRQ index {} when asked for {index}", info.index),
        ));
    }
    Ok(IrqInfo {
        index,
        flags: info.flags,
        count: info.count,
    })
}
