//! A Linux tap device as virtio-net's back end: `/dev/net/tun` opened non-blocking with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (and `IFF_MULTI_QUEUE` when the device has several
//! queue pairs, one file per pair), attached by name with `TUNSETIFF`, which creates the
//! interface when it does not exist (that needs `CAP_NET_ADMIN`; so does attaching to a tap
//! another user owns). Every frame read or written starts with the 12-byte virtio-net
//! header (`TUNSETVNETHDRSZ`), which the kernel fills and reads: checksum and segmentation
//! offloads travel through it once `TUNSETOFFLOAD` says which ones the reader takes.
//!
//! A tap irvmm creates is not persistent: it disappears when irvmm exits. irvmm brings it
//! up (a tap nobody configured is down, and a down tap refuses frames); an existing tap's
//! link state and addresses are its owner's business and are left alone.
//!
//! The header is little-endian (virtio 1.x), which is the tap's native order on x86-64.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use libc::{c_int, c_short, c_uint, c_ulong};
use log::{debug, info};
use thiserror::Error;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

/// The tun/tap clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// Size of the virtio-net header on the tap (`struct virtio_net_hdr_v1`, virtio 1.x).
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name (`IFNAMSIZ` less the terminating NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
/// Offloads irvmm may ask the tap for.
pub const TAP_OFFLOADS: c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// Why a tap cannot be used (the user's to fix: exit status 2).
#[derive(Debug, Error)]
pub enum TapError {
    /// Not a name Linux accepts for an interface.
    #[error(
        "tap={0:?}: not an interface name (1 to {MAX_NAME_LEN} bytes, no '/', ':' or whitespace)"
    )]
    Name(String),
    /// `/dev/net/tun` could not be opened.
    #[error("{TUN_DEVICE}: {source}{hint}")]
    Device {
        /// The error.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// `TUNSETIFF` refused the name.
    #[error("tap={name}: {why}")]
    Attach {
        /// The interface.
        name: String,
        /// Why, in words.
        why: String,
    },
    /// Another tap ioctl failed.
    #[error("tap={name}: {op}: {source}")]
    Ioctl {
        /// The interface.
        name: String,
        /// Which request.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Checks `name` as the kernel's `dev_valid_name` does.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// An `ifreq` naming `name` (already checked by [`valid_name`]), with `flags`.
fn ifreq(name: &str, flags: c_int) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers and
    // addresses), for which all zeros is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    // The TUN flags all fit the 16-bit field.
    ifr.ifr_ifru.ifru_flags = flags as c_short;
    ifr
}

/// True when an interface called `name` exists in irvmm's network namespace.
pub fn exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated string that outlives the call, which only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// One queue of a tap: an open `/dev/net/tun` file attached to the interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens a queue of the tap `name`, creating the interface when it does not exist;
    /// `multi_queue` must match how the interface was made (`ip tuntap add ... multi_queue`).
    pub fn open(name: &str, multi_queue: bool) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|source| {
                let hint = match source.kind() {
                    io::ErrorKind::NotFound => " (load the tun module: modprobe tun)",
                    io::ErrorKind::PermissionDenied => {
                        " (irvmm needs read/write access to it, and CAP_NET_ADMIN to create a tap)"
                    }
                    _ => "",
                };
                TapError::Device { source, hint }
            })?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut ifr = ifreq(name, flags);
        // SAFETY: TUNSETIFF reads and writes the `ifreq` we own, valid for the call.
        let rc = unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            let why = match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => format!(
                    "cannot open it: {e} (creating a tap, or using one another user owns, needs CAP_NET_ADMIN)"
                ),
                Some(libc::EBUSY) => format!(
                    "{e}: a single-queue tap takes one user, and another process has it"
                ),
                Some(libc::EINVAL) => format!(
                    "{e}: it exists but is not a {} tap (a tun device, or made {} multi_queue)",
                    if multi_queue { "multi-queue" } else { "single-queue" },
                    if multi_queue { "without" } else { "with" },
                ),
                _ => e.to_string(),
            };
            return Err(TapError::Attach {
                name: name.to_string(),
                why,
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        let size = VNET_HDR_LEN as c_int;
        // SAFETY: TUNSETVNETHDRSZ reads the int we own, valid for the call.
        let rc = unsafe { ioctl_with_ref(&tap.file, libc::TUNSETVNETHDRSZ, &size) };
        if rc < 0 {
            return Err(tap.ioctl_error("TUNSETVNETHDRSZ"));
        }
        debug!("tap {name}: queue opened (multi_queue {multi_queue})");
        Ok(tap)
    }

    fn ioctl_error(&self, op: &'static str) -> TapError {
        TapError::Ioctl {
            name: self.name.clone(),
            op,
            source: io::Error::last_os_error(),
        }
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the tap which offloads its reader (the guest) takes: `TUN_F_*` flags. Frames
    /// then come with partial checksums and as large segments only where allowed.
    pub fn set_offload(&self, flags: c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe { ioctl_with_val(&self.file, libc::TUNSETOFFLOAD, c_ulong::from(flags)) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Attaches (`on`) or detaches this queue of a multi-queue tap: the kernel steers
    /// frames only to attached queues.
    pub fn set_queue_attached(&self, on: bool) -> io::Result<()> {
        let flag = if on {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        let mut ifr = ifreq(&self.name, flag);
        // SAFETY: TUNSETQUEUE reads the `ifreq` we own, valid for the call.
        let rc = unsafe { ioctl_with_mut_ref(&self.file, libc::TUNSETQUEUE, &mut ifr) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sets the interface administratively up (`IFF_UP`).
    pub fn set_up(&self) -> io::Result<()> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a socket we just opened and own from here on.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut ifr = ifreq(&self.name, 0);
        // SAFETY: SIOCGIFFLAGS writes into the `ifreq` we own, valid for the call.
        let rc = unsafe { ioctl_with_mut_ref(&sock, libc::SIOCGIFFLAGS, &mut ifr) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as c_short;
        // SAFETY: SIOCSIFFLAGS reads the `ifreq` we own, valid for the call.
        let rc = unsafe { ioctl_with_mut_ref(&sock, libc::SIOCSIFFLAGS, &mut ifr) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        info!("tap {}: created and set up", self.name);
        Ok(())
    }

    /// Reads one frame (header first) into `buf`: `Ok(None)` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match (&self.file).read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one frame (header first): `Ok(false)` when the tap cannot take it now.
    pub fn send(&self, frame: &[u8]) -> io::Result<bool> {
        match (&self.file).write(frame) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel() {
        assert!(valid_name("tap0"));
        assert!(valid_name("a-very-long-nam"));
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "sixteen-chars-xx",
            "t\0",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(matches!(
            Tap::open("bad/name", false),
            Err(TapError::Name(_))
        ));
    }

    #[test]
    fn ifreq_carries_name_and_flags() {
        let ifr = ifreq("tap7", libc::IFF_TAP | libc::IFF_NO_PI);
        assert_eq!(
            ifr.ifr_name[..5],
            [b't' as _, b'a' as _, b'p' as _, b'7' as _, 0]
        );
        // SAFETY: the flags member was the one written.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        assert_eq!(flags as c_int, libc::IFF_TAP | libc::IFF_NO_PI);
    }
}
