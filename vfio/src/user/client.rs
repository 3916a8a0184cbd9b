//! The vfio-user transport: one request, one checked reply, on a non-blocking UNIX
//! stream socket, within a deadline.
//!
//! Each request gets the next message id; its reply must carry the same id and command,
//! the Reply type and a payload size the command allows ([`Command::reply_payload`]), so
//! nothing is ever allocated from an unchecked size. An error reply becomes
//! [`BackendError::Refused`] and leaves the stream usable. Anything else that goes wrong
//! (end of stream, a reset, a timeout, a reply that breaks the protocol) kills the
//! connection: the socket is shut down and closed, the failure is logged once at error
//! level, and every later call returns [`BackendError::Gone`] without a system call.
//!
//! Waiting is `poll` against the caller's deadline, so no call blocks past it, however
//! slowly a server dribbles its bytes.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::backend::BackendError;
use crate::user::error::UserOpenError;
use crate::user::protocol::{check_reply, Command, Header, PayloadRange, ReplyKind, HEADER_SIZE};
use crate::user::sys::{self, ConnectError, MAX_RECV_FDS};

/// How long to wait before retrying a connect to a listener whose backlog is full.
const CONNECT_RETRY: Duration = Duration::from_millis(5);

/// A successful reply.
#[derive(Debug)]
pub struct Reply {
    /// The payload (its size already checked against the command).
    pub payload: Vec<u8>,
    /// Descriptors that came with it (closed on drop unless taken).
    pub fds: Vec<OwnedFd>,
}

/// Why bytes did not move.
enum Transport {
    Timeout,
    Eof,
    TooManyFds,
    Io(io::Error),
}

/// A connection to a device server.
#[derive(Debug)]
pub struct Connection {
    /// The socket; `None` once the connection died.
    fd: Option<OwnedFd>,
    /// Names the device in log lines.
    name: String,
    /// Per-call time limit.
    timeout: Duration,
    /// Id of the next request.
    next_id: u16,
}

impl Connection {
    /// Connects to the server listening at `path` before `deadline`.
    pub fn connect(
        path: &Path,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Self, UserOpenError> {
        let name = path.display().to_string();
        let fd = loop {
            match sys::connect_unix(path) {
                Ok(fd) => break fd,
                Err(ConnectError::WouldBlock) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(UserOpenError::Timeout {
                            path: name,
                            step: "connect".into(),
                            millis: millis(timeout),
                        });
                    }
                    std::thread::sleep(CONNECT_RETRY.min(deadline - now));
                }
                Err(ConnectError::PathTooLong) => {
                    return Err(UserOpenError::PathTooLong { path: name })
                }
                Err(ConnectError::Io(e)) => {
                    return Err(match e.raw_os_error() {
                        Some(libc::ENOENT | libc::ECONNREFUSED) => {
                            UserOpenError::NotListening { path: name }
                        }
                        Some(libc::EACCES | libc::EPERM) => {
                            UserOpenError::PermissionDenied { path: name }
                        }
                        _ => UserOpenError::Connect {
                            path: name,
                            source: e,
                        },
                    })
                }
            }
        };
        Ok(Self::from_fd(fd, name, timeout))
    }

    /// Wraps a connected, non-blocking stream socket.
    pub fn from_fd(fd: OwnedFd, name: String, timeout: Duration) -> Self {
        Connection {
            fd: Some(fd),
            name,
            timeout,
            next_id: 0,
        }
    }

    /// The deadline of a call starting now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// A duplicate of the socket (for watching the server hang up), while connected.
    pub fn dup_socket(&self) -> Option<OwnedFd> {
        self.fd.as_ref().and_then(|fd| fd.try_clone().ok())
    }

    /// Whether the connection is still up (no transport failure, timeout or protocol
    /// violation yet).
    pub fn is_alive(&self) -> bool {
        self.fd.is_some()
    }

    /// Sends `command` with `payload` and `fds`, and returns its reply, whose payload
    /// size lies in `allowed`.
    pub fn call(
        &mut self,
        deadline: Instant,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
        allowed: PayloadRange,
    ) -> Result<Reply, BackendError> {
        let Some(fd) = self.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return Err(BackendError::Gone);
        };
        let op = command.name();
        let size =
            u32::try_from(HEADER_SIZE + payload.len()).map_err(|_| BackendError::Invalid {
                op,
                what: format!("request of {} bytes", payload.len()),
            })?;
        let id = self.next_id;
        self.next_id = id.wrapping_add(1);
        let header = Header {
            id,
            command: command as u16,
            size,
            flags: 0,
            error: 0,
        };
        let mut msg = Vec::with_capacity(HEADER_SIZE + payload.len());
        msg.extend_from_slice(&header.to_bytes());
        msg.extend_from_slice(payload);
        if let Err(t) = send_all(fd, deadline, &msg, fds) {
            return Err(self.transport_failure(op, t));
        }

        let mut fds_in = Vec::new();
        let mut hb = [0u8; HEADER_SIZE];
        if let Err(t) = recv_exact(fd, deadline, &mut hb, &mut fds_in) {
            return Err(self.transport_failure(op, t));
        }
        let reply = Header::parse(&hb);
        let kind = match check_reply(&reply, id, command, allowed) {
            Ok(k) => k,
            Err(e) => return Err(self.violation(command, e.to_string())),
        };
        let (len, errno) = match kind {
            ReplyKind::Ok { payload } => (payload, None),
            ReplyKind::Error { errno, payload } => (payload, Some(errno)),
        };
        // Bounded by `allowed.max` in check_reply.
        let mut body = vec![0u8; len];
        if let Err(t) = recv_exact(fd, deadline, &mut body, &mut fds_in) {
            return Err(self.transport_failure(op, t));
        }
        if let Some(errno) = errno {
            log::debug!("vfio-user {}: {op} refused with errno {errno}", self.name);
            return Err(BackendError::Refused {
                op,
                errno: errno as i32,
            });
        }
        Ok(Reply {
            payload: body,
            fds: fds_in,
        })
    }

    /// Kills the connection for a reply to `command` that broke the protocol.
    pub fn violation(&mut self, command: Command, what: String) -> BackendError {
        let err = BackendError::Protocol {
            op: command.name(),
            what,
        };
        self.kill(&err);
        err
    }

    fn transport_failure(&mut self, op: &'static str, t: Transport) -> BackendError {
        let err = match t {
            Transport::Timeout => BackendError::Timeout {
                op,
                millis: millis(self.timeout),
            },
            Transport::Eof => BackendError::Gone,
            Transport::TooManyFds => BackendError::Protocol {
                op,
                what: format!("more than {MAX_RECV_FDS} file descriptors with one reply"),
            },
            Transport::Io(e) => match e.raw_os_error() {
                Some(libc::EPIPE | libc::ECONNRESET | libc::ECONNABORTED | libc::ENOTCONN) => {
                    BackendError::Gone
                }
                _ if e.kind() == io::ErrorKind::InvalidData => BackendError::Protocol {
                    op,
                    what: e.to_string(),
                },
                _ => BackendError::Io { op, source: e },
            },
        };
        self.kill(&err);
        err
    }

    /// Closes the socket and logs why, the first time only.
    fn kill(&mut self, why: &BackendError) {
        if let Some(fd) = self.fd.take() {
            // A server that went away is reported once by whoever watches its socket
            // (the VMM logs the hang-up); a server that broke the protocol or stopped
            // answering is only known here.
            match why {
                BackendError::Gone => log::debug!(
                    "vfio-user device {}: the server closed the connection",
                    self.name
                ),
                other => log::error!(
                    "vfio-user device {}: {other}; the connection is closed and the device is gone",
                    self.name
                ),
            }
            sys::shutdown(fd.as_raw_fd());
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Waits for `events` on `fd` until `deadline`.
fn wait(fd: RawFd, events: libc::c_short, deadline: Instant) -> Result<(), Transport> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(Transport::Timeout);
        }
        // Round up so a sub-millisecond remainder waits instead of spinning.
        let ms = (deadline - now).as_micros().div_ceil(1000);
        let ms = i32::try_from(ms).unwrap_or(i32::MAX);
        match sys::poll_fd(fd, events, ms) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Transport::Io(e)),
        }
    }
}

fn send_all(fd: RawFd, deadline: Instant, data: &[u8], fds: &[RawFd]) -> Result<(), Transport> {
    let mut sent = 0;
    let mut fds = fds;
    while let Some(rest) = data.get(sent..).filter(|r| !r.is_empty()) {
        match sys::send_with_fds(fd, rest, fds) {
            Ok(0) => return Err(Transport::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                sent += n;
                // The descriptors went with the first byte.
                fds = &[];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(fd, libc::POLLOUT, deadline)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Transport::Io(e)),
        }
    }
    Ok(())
}

fn recv_exact(
    fd: RawFd,
    deadline: Instant,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), Transport> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
        match sys::recv_with_fds(fd, rest, fds) {
            Ok(0) => return Err(Transport::Eof),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(fd, libc::POLLIN, deadline)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Transport::Io(e)),
        }
        if fds.len() > MAX_RECV_FDS {
            return Err(Transport::TooManyFds);
        }
    }
    Ok(())
}
