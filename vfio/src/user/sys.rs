//! The system calls under the vfio-user transport: a non-blocking `AF_UNIX` connect,
//! `sendmsg`/`recvmsg` with file descriptors as `SCM_RIGHTS`, and `poll` for readiness.
//! Every call is non-blocking; [`super::client`] waits with [`poll_fd`] against a deadline.
//!
//! Received descriptors become [`OwnedFd`]s at once, so every descriptor a server sends is
//! closed unless irvmm keeps it, whatever else goes wrong.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Most descriptors accepted with one received message (more is a protocol violation).
pub const MAX_RECV_FDS: usize = 8;
/// Most descriptors sent with one message (`SCM_MAX_FD` is 253).
pub const MAX_SEND_FDS: usize = 64;

/// Why a connect did not happen.
#[derive(Debug)]
pub enum ConnectError {
    /// The path does not fit `sun_path`.
    PathTooLong,
    /// The listener's backlog is full: try again.
    WouldBlock,
    /// Anything else.
    Io(io::Error),
}

/// Connects a non-blocking, close-on-exec stream socket to the UNIX socket at `path`.
pub fn connect_unix(path: &Path) -> Result<OwnedFd, ConnectError> {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // Leave room for the terminating NUL.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ConnectError::PathTooLong);
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: creating a socket; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(ConnectError::Io(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(fd);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // A UNIX stream connect that cannot complete at once: the backlog is full.
        Some(libc::EAGAIN) => Err(ConnectError::WouldBlock),
        // Never for AF_UNIX on Linux, but harmless to treat as "retry".
        Some(libc::EINPROGRESS) => Err(ConnectError::WouldBlock),
        _ => Err(ConnectError::Io(err)),
    }
}

/// Sends `data` with `fds` attached (to its first byte), without blocking and without
/// SIGPIPE. Returns the bytes sent (possibly fewer than `data.len()`).
pub fn send_with_fds(fd: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    if fds.len() > MAX_SEND_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many file descriptors for one message",
        ));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Aligned for cmsghdr (u64 alignment covers it on x86-64).
    let mut cmsg_buf = [0u64; cmsg_words(MAX_SEND_FDS)];
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds);
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len());
        // SAFETY: msg_control points at CMSG_SPACE(payload) bytes (cmsg_words rounds up),
        // so the first header and its data are inside the buffer.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                payload,
            );
        }
    }
    // SAFETY: msg points at a live iovec over `data` and a live control buffer.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Bytes of control buffer for `n` descriptors (`CMSG_SPACE`).
const fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic on its argument only.
    unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// `u64` words holding [`cmsg_space`]`(n)` bytes (u64 keeps `cmsghdr` aligned).
const fn cmsg_words(n: usize) -> usize {
    cmsg_space(n).div_ceil(8)
}

/// Receives into `buf` without blocking; descriptors that came along are appended to
/// `fds`. Returns the bytes received (0: end of stream). More descriptors than
/// [`MAX_RECV_FDS`] in one message is an `InvalidData` error (those that arrived are
/// still closed).
pub fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg_buf = [0u64; cmsg_words(MAX_RECV_FDS)];
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(MAX_RECV_FDS);
    // SAFETY: msg points at a live iovec over `buf` and a live control buffer of the
    // stated length.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: walking the control messages the kernel wrote into `cmsg_buf`, bounded by
    // msg_controllen; each SCM_RIGHTS payload holds `(cmsg_len - CMSG_LEN(0)) / 4`
    // descriptors now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    if raw >= 0 {
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {MAX_RECV_FDS} file descriptors with one message"),
        ));
    }
    Ok(n as usize)
}

/// Waits up to `millis` for `events` on `fd`. Returns whether anything is pending
/// (readiness, hang-up or error: the next call finds out which).
pub fn poll_fd(fd: RawFd, events: libc::c_short, millis: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, millis) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n > 0)
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor the caller owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Shuts both directions of a socket down (the server sees end of stream at once).
pub fn shutdown(fd: RawFd) {
    // SAFETY: shutting down a socket the caller owns; failure changes nothing.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_travel_and_are_owned() {
        let (a, b) = UnixStream::pair().unwrap();
        set_nonblocking(b.as_raw_fd()).unwrap();
        let (p, q) = UnixStream::pair().unwrap();
        let sent = send_with_fds(a.as_raw_fd(), b"hello", &[p.as_raw_fd(), q.as_raw_fd()]);
        assert_eq!(sent.unwrap(), 5);
        let mut fds = Vec::new();
        let mut buf = [0u8; 2];
        assert_eq!(recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap(), 2);
        assert_eq!(fds.len(), 2);
        let mut rest = [0u8; 8];
        assert_eq!(
            recv_with_fds(b.as_raw_fd(), &mut rest, &mut fds).unwrap(),
            3
        );
        assert_eq!(fds.len(), 2, "descriptors come once");
        let e = recv_with_fds(b.as_raw_fd(), &mut rest, &mut fds).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(!poll_fd(b.as_raw_fd(), libc::POLLIN, 0).unwrap());
        drop(a);
        assert!(poll_fd(b.as_raw_fd(), libc::POLLIN, 0).unwrap());
        assert_eq!(
            recv_with_fds(b.as_raw_fd(), &mut rest, &mut fds).unwrap(),
            0
        );
    }

    #[test]
    fn too_many_fds_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let many: Vec<RawFd> = (0..MAX_RECV_FDS + 1).map(|_| a.as_raw_fd()).collect();
        assert_eq!(send_with_fds(a.as_raw_fd(), b"x", &many).unwrap(), 1);
        let mut fds = Vec::new();
        let mut buf = [0u8; 1];
        let e = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn connect_errors() {
        assert!(matches!(
            connect_unix(Path::new(&"x".repeat(200))),
            Err(ConnectError::PathTooLong)
        ));
        match connect_unix(Path::new("/nonexistent/irvmm-test.sock")) {
            Err(ConnectError::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT)),
            other => panic!("{other:?}"),
        }
    }
}
