//! [`VfioUserDevice`]: a PCI function served by a vfio-user device server, behind
//! [`VfioBackend`].
//!
//! Opening (`super::open`) negotiates the version and transfer limits, checks that the
//! device is PCI, and learns every region (with its capability chain and mmap file
//! descriptor) and IRQ index up front, so the passthrough function can lay out BARs
//! without further round trips.
//! At run time each backend call is one or more request/reply exchanges that together
//! finish within the timeout given at open, or fail.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::backend::{
    BackendError, BackendKind, DmaRegion, IrqInfo, Isolation, RegionInfo, RegionMmap, VfioBackend,
    IRQ_INTX, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_EVENTFD,
    IRQ_SET_DATA_NONE,
};
use crate::user::client::Connection;
use crate::user::error::UserOpenError;
use crate::user::open::{learn, UserRegion};
use crate::user::protocol::{self as p, Command, RegionAccess};
use crate::user::sys;

/// Longest per-call timeout (a larger one is clamped so deadlines never overflow).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Why irvmm may map a vfio-user device's MSI-X table page into the guest.
const ISOLATION_REASON: &str =
    "vfio-user: the device process can only signal the eventfds it was given; it cannot write MSIs";

/// A device behind a vfio-user server. Calls are serialized by the caller (`&mut self`);
/// none blocks longer than the timeout given at open.
#[derive(Debug)]
pub struct VfioUserDevice {
    conn: Connection,
    name: String,
    device_flags: u32,
    /// Data bytes per REGION_READ/WRITE: the smaller of the server's and irvmm's limit.
    max_data_xfer: u32,
    /// Descriptors per message the server accepts (capped at what irvmm sends).
    max_msg_fds: u32,
    regions: Vec<UserRegion>,
    irqs: Vec<IrqInfo>,
}

impl VfioUserDevice {
    /// Connects to the server listening at `socket` and learns its device; `timeout`
    /// bounds the whole open and, later, each backend call.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, UserOpenError> {
        let timeout = timeout.min(MAX_TIMEOUT);
        let deadline = Instant::now() + timeout;
        let conn = Connection::connect(socket, timeout, deadline)?;
        Self::open(conn, socket.display().to_string(), deadline)
    }

    /// Opens the device behind an already connected stream (a socketpair shared with a
    /// device process it spawned, say); `name` stands for the socket path in messages.
    pub fn from_stream(
        stream: UnixStream,
        name: &str,
        timeout: Duration,
    ) -> Result<Self, UserOpenError> {
        let timeout = timeout.min(MAX_TIMEOUT);
        let deadline = Instant::now() + timeout;
        let fd = OwnedFd::from(stream);
        sys::set_nonblocking(fd.as_raw_fd()).map_err(|source| UserOpenError::Connect {
            path: name.to_string(),
            source,
        })?;
        Self::open(
            Connection::from_fd(fd, name.to_string(), timeout),
            name.to_string(),
            deadline,
        )
    }

    /// Data bytes moved per REGION_READ/WRITE message.
    pub fn max_data_xfer(&self) -> u32 {
        self.max_data_xfer
    }

    /// Eventfds sent per DEVICE_SET_IRQS message.
    pub fn max_msg_fds(&self) -> u32 {
        self.max_msg_fds
    }

    /// Whether the connection is still up: false after the first transport failure,
    /// timeout or protocol violation, when every call returns [`BackendError::Gone`].
    pub fn is_connected(&self) -> bool {
        self.conn.is_alive()
    }

    /// `VFIO_DEVICE_FLAGS_*` the server reported.
    pub fn device_flags(&self) -> u32 {
        self.device_flags
    }

    fn open(mut conn: Connection, name: String, deadline: Instant) -> Result<Self, UserOpenError> {
        let l = learn(&mut conn, &name, deadline)?;
        Ok(VfioUserDevice {
            conn,
            name,
            device_flags: l.device_flags,
            max_data_xfer: l.max_data_xfer,
            max_msg_fds: l.max_msg_fds,
            regions: l.regions,
            irqs: l.irqs,
        })
    }

    /// `Gone` once the connection died, before any argument is looked at.
    fn alive(&self) -> Result<(), BackendError> {
        if self.conn.is_alive() {
            Ok(())
        } else {
            Err(BackendError::Gone)
        }
    }

    fn user_region(&self, index: u32) -> Option<&UserRegion> {
        self.regions.get(usize::try_from(index).ok()?)
    }

    /// Checks that `[offset, offset + len)` lies inside region `index`.
    fn check_range(
        &self,
        op: &'static str,
        index: u32,
        offset: u64,
        len: usize,
    ) -> Result<(), BackendError> {
        let region = self
            .user_region(index)
            .ok_or_else(|| BackendError::Invalid {
                op,
                what: format!("no region {index}"),
            })?;
        let inside = u64::try_from(len)
            .ok()
            .and_then(|l| offset.checked_add(l))
            .is_some_and(|end| end <= region.info.size);
        if !inside {
            return Err(BackendError::Invalid {
                op,
                what: format!(
                    "{len} bytes at {offset:#x} leave region {index} ({:#x} bytes)",
                    region.info.size
                ),
            });
        }
        Ok(())
    }

    fn irq_count(&self, op: &'static str, index: u32) -> Result<u32, BackendError> {
        self.irq(index)
            .map(|i| i.count)
            .ok_or_else(|| BackendError::Invalid {
                op,
                what: format!("no IRQ index {index}"),
            })
    }

    /// One SET_IRQS exchange.
    fn set_irqs(
        &mut self,
        deadline: Instant,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        fds: &[RawFd],
    ) -> Result<(), BackendError> {
        self.conn
            .call(
                deadline,
                Command::SetIrqs,
                &p::set_irqs_request(flags, index, start, count),
                fds,
                Command::SetIrqs.reply_payload(0),
            )
            .map(drop)
    }

    /// The data-bearing chunks of a region access: `(offset, range in the caller's
    /// buffer)`.
    fn chunks(&self, offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let step = (self.max_data_xfer as usize).max(1);
        (0..len)
            .step_by(step)
            .map(move |at| (offset + at as u64, at, (at + step).min(len)))
    }
}

impl VfioBackend for VfioUserDevice {
    fn describe(&self) -> &str {
        &self.name
    }

    fn hangup_fd(&self) -> Option<OwnedFd> {
        self.conn.dup_socket()
    }

    fn kind(&self) -> BackendKind {
        BackendKind::User
    }

    fn isolation(&self) -> Isolation {
        Isolation {
            isolated: true,
            reason: ISOLATION_REASON.into(),
        }
    }

    fn region(&self, index: u32) -> Option<&RegionInfo> {
        self.user_region(index).map(|r| &r.info)
    }

    fn irq(&self, index: u32) -> Option<IrqInfo> {
        self.irqs.get(usize::try_from(index).ok()?).copied()
    }

    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), BackendError> {
        self.alive()?;
        let cmd = Command::RegionRead;
        self.check_range(cmd.name(), index, offset, data.len())?;
        let deadline = self.conn.deadline();
        let chunks: Vec<_> = self.chunks(offset, data.len()).collect();
        for (at, from, to) in chunks {
            let Some(dst) = data.get_mut(from..to) else {
                break;
            };
            let want = RegionAccess {
                offset: at,
                region: index,
                count: dst.len() as u32,
            };
            let reply = self.conn.call(
                deadline,
                cmd,
                &want.request(&[]),
                &[],
                cmd.reply_payload(dst.len()),
            )?;
            let got = RegionAccess::parse(&reply.payload).ok();
            let bytes = reply.payload.get(p::REGION_ACCESS_SIZE..);
            match (got, bytes) {
                (Some(got), Some(bytes)) if got == want && bytes.len() == dst.len() => {
                    dst.copy_from_slice(bytes)
                }
                (got, _) => {
                    return Err(self.conn.violation(
                        cmd,
                        format!("answer {got:?} does not match the request {want:?}"),
                    ))
                }
            }
        }
        Ok(())
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.alive()?;
        let cmd = Command::RegionWrite;
        self.check_range(cmd.name(), index, offset, data.len())?;
        let deadline = self.conn.deadline();
        let chunks: Vec<_> = self.chunks(offset, data.len()).collect();
        for (at, from, to) in chunks {
            let Some(src) = data.get(from..to) else {
                break;
            };
            let want = RegionAccess {
                offset: at,
                region: index,
                count: src.len() as u32,
            };
            let reply =
                self.conn
                    .call(deadline, cmd, &want.request(src), &[], cmd.reply_payload(0))?;
            let got = RegionAccess::parse(&reply.payload).ok();
            if got != Some(want) {
                return Err(self.conn.violation(
                    cmd,
                    format!("answer {got:?} does not match the request {want:?}"),
                ));
            }
        }
        Ok(())
    }

    fn mmap(&self, index: u32, offset: u64, size: u64) -> Result<RegionMmap, BackendError> {
        let op = "mmap";
        let region = self
            .user_region(index)
            .ok_or_else(|| BackendError::Invalid {
                op,
                what: format!("no region {index}"),
            })?;
        let end = offset.checked_add(size);
        let inside = size > 0
            && region.info.mmap_areas().iter().any(|a| {
                offset >= a.offset
                    && end.is_some_and(|e| a.offset.checked_add(a.size).is_some_and(|ae| e <= ae))
            });
        if !inside {
            return Err(BackendError::Invalid {
                op,
                what: format!(
                    "{size:#x} bytes at {offset:#x} are not inside one mmap area of region {index}"
                ),
            });
        }
        let fd = region.fd.as_ref().ok_or_else(|| BackendError::Invalid {
            op,
            what: format!("region {index} has no file descriptor"),
        })?;
        let file_offset =
            region
                .fd_offset
                .checked_add(offset)
                .ok_or_else(|| BackendError::Invalid {
                    op,
                    what: format!(
                        "file offset {:#x} + {offset:#x} overflows",
                        region.fd_offset
                    ),
                })?;
        let len = usize::try_from(size).map_err(|_| BackendError::Invalid {
            op,
            what: format!("{size:#x} bytes do not fit the address space"),
        })?;
        RegionMmap::map(fd.as_raw_fd(), file_offset, len)
    }

    fn set_irq_eventfds(
        &mut self,
        index: u32,
        start: u32,
        fds: &[Option<RawFd>],
    ) -> Result<(), BackendError> {
        self.alive()?;
        let op = Command::SetIrqs.name();
        let count = self.irq_count(op, index)?;
        let fits = u32::try_from(fds.len())
            .ok()
            .and_then(|n| start.checked_add(n))
            .is_some_and(|end| end <= count);
        if !fits {
            return Err(BackendError::Invalid {
                op,
                what: format!(
                    "interrupts {start}..+{} of IRQ index {index}, which has {count}",
                    fds.len()
                ),
            });
        }
        if fds.iter().flatten().any(|&fd| fd < 0) {
            return Err(BackendError::Invalid {
                op,
                what: "negative eventfd (use None for an interrupt not signalled)".into(),
            });
        }
        let per_message = self.max_msg_fds as usize;
        if per_message == 0 && fds.iter().any(Option::is_some) {
            return Err(BackendError::Invalid {
                op,
                what: "the server accepts no file descriptors".into(),
            });
        }
        let deadline = self.conn.deadline();
        let mut i = 0;
        while i < fds.len() {
            // Skip interrupts that are not signalled, then send a run of eventfds.
            let Some(Some(_)) = fds.get(i) else {
                i += 1;
                continue;
            };
            let run: Vec<RawFd> = fds
                .iter()
                .skip(i)
                .take(per_message)
                .map_while(|f| *f)
                .collect();
            let first = start + i as u32;
            self.set_irqs(
                deadline,
                IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
                index,
                first,
                run.len() as u32,
                &run,
            )?;
            i += run.len();
        }
        Ok(())
    }

    fn disable_irqs(&mut self, index: u32) -> Result<(), BackendError> {
        self.alive()?;
        self.irq_count(Command::SetIrqs.name(), index)?;
        let deadline = self.conn.deadline();
        self.set_irqs(
            deadline,
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
            index,
            0,
            0,
            &[],
        )
    }

    fn unmask_intx(&mut self) -> Result<(), BackendError> {
        self.alive()?;
        let deadline = self.conn.deadline();
        self.set_irqs(
            deadline,
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK,
            IRQ_INTX,
            0,
            1,
            &[],
        )
    }

    fn reset(&mut self) -> Result<(), BackendError> {
        self.alive()?;
        let cmd = Command::DeviceReset;
        let deadline = self.conn.deadline();
        self.conn
            .call(deadline, cmd, &[], &[], cmd.reply_payload(0))
            .map(drop)
    }

    fn dma_map(&mut self, region: &DmaRegion) -> Result<(), BackendError> {
        self.dma_map_with(region, true, true)
    }

    fn dma_map_with(
        &mut self,
        region: &DmaRegion,
        read: bool,
        write: bool,
    ) -> Result<(), BackendError> {
        self.alive()?;
        let cmd = Command::DmaMap;
        let invalid = |what: String| BackendError::Invalid {
            op: cmd.name(),
            what,
        };
        if region.size == 0 || region.iova.checked_add(region.size).is_none() {
            return Err(invalid(format!(
                "DMA region of {:#x} bytes at {:#x}",
                region.size, region.iova
            )));
        }
        if region.fd < 0 {
            return Err(invalid("DMA region without a file descriptor".into()));
        }
        if self.max_msg_fds == 0 {
            return Err(invalid("the server accepts no file descriptors".into()));
        }
        let deadline = self.conn.deadline();
        self.conn
            .call(
                deadline,
                cmd,
                &p::dma_map_request_with(
                    region.iova,
                    region.size,
                    region.fd_offset,
                    if read { p::DMA_FLAG_READ } else { 0 }
                        | if write { p::DMA_FLAG_WRITE } else { 0 },
                ),
                &[region.fd],
                cmd.reply_payload(0),
            )
            .map(drop)
    }

    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), BackendError> {
        self.alive()?;
        let cmd = Command::DmaUnmap;
        let deadline = self.conn.deadline();
        self.conn
            .call(
                deadline,
                cmd,
                &p::dma_unmap_request(iova, size),
                &[],
                cmd.reply_payload(0),
            )
            .map(drop)
    }
}
