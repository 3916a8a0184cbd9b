//! Why a vfio-user device could not be opened: one user-facing line per failure, naming
//! the socket and what to fix.

use thiserror::Error;

use crate::backend::BackendError;

/// A failure connecting to a vfio-user device server or learning its device.
#[derive(Debug, Error)]
pub enum UserOpenError {
    /// Nothing listens at the path (no such file, or no listener on it).
    #[error("no vfio-user server is listening at {path} (start the device server first)")]
    NotListening {
        /// The socket path.
        path: String,
    },
    /// The path cannot be a UNIX socket address.
    #[error(
        "the socket path {path} does not fit a UNIX socket address (at most 107 bytes, no NUL); \
         use a shorter path"
    )]
    PathTooLong {
        /// The socket path.
        path: String,
    },
    /// The socket exists but irvmm may not connect to it.
    #[error("permission denied connecting to {path} (check the socket's owner and mode)")]
    PermissionDenied {
        /// The socket path.
        path: String,
    },
    /// Another connect failure.
    #[error("cannot connect to the vfio-user server at {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server speaks an incompatible protocol version.
    #[error("the server at {path} speaks vfio-user {major}.{minor}; irvmm speaks 0.x")]
    Version {
        /// The socket path.
        path: String,
        /// Its major version.
        major: u16,
        /// Its minor version.
        minor: u16,
    },
    /// The device is not a PCI device.
    #[error(
        "the vfio-user device at {path} is not a PCI device (device flags {flags:#x}); \
         irvmm passes through PCI devices only"
    )]
    NotPci {
        /// The socket path.
        path: String,
        /// The device flags it reported.
        flags: u32,
    },
    /// A reply that does not follow the protocol.
    #[error(
        "the vfio-user server at {path} sent a malformed reply during {step}: {what} \
         (fix or update the device server)"
    )]
    Malformed {
        /// The socket path.
        path: String,
        /// The step (command) that failed.
        step: String,
        /// What was wrong.
        what: String,
    },
    /// The server did not answer in time.
    #[error(
        "the vfio-user server at {path} did not answer {step} within {millis} ms \
         (is it stuck? check the server, or raise the timeout)"
    )]
    Timeout {
        /// The socket path.
        path: String,
        /// The step (command) that timed out.
        step: String,
        /// The limit.
        millis: u64,
    },
    /// The server closed the connection.
    #[error(
        "the vfio-user server at {path} closed the connection during {step} \
         (see the server's log)"
    )]
    Closed {
        /// The socket path.
        path: String,
        /// The step (command) it closed during.
        step: String,
    },
    /// The server refused a setup command.
    #[error("the vfio-user server at {path} refused {step} (errno {errno})")]
    Refused {
        /// The socket path.
        path: String,
        /// The refused step.
        step: String,
        /// The errno it gave.
        errno: i32,
    },
    /// A system call failed while talking to the server.
    #[error("talking to the vfio-user server at {path} failed during {step}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The step.
        step: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl UserOpenError {
    /// The open error for `err`, a failure of `step` while opening the device at `path`.
    pub(crate) fn from_backend(path: &str, step: String, err: BackendError) -> Self {
        let path = path.to_string();
        match err {
            BackendError::Timeout { millis, .. } => UserOpenError::Timeout { path, step, millis },
            BackendError::Gone => UserOpenError::Closed { path, step },
            BackendError::Refused { errno, .. } => UserOpenError::Refused { path, step, errno },
            BackendError::Io { source, .. } => UserOpenError::Io { path, step, source },
            BackendError::Protocol { what, .. } | BackendError::Invalid { what, .. } => {
                UserOpenError::Malformed { path, step, what }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_is_one_line_naming_the_path() {
        let p = || "/run/dev.sock".to_string();
        let io = || std::io::Error::from_raw_os_error(libc::EIO);
        let all = [
            UserOpenError::NotListening { path: p() },
            UserOpenError::PathTooLong { path: p() },
            UserOpenError::PermissionDenied { path: p() },
            UserOpenError::Connect {
                path: p(),
                source: io(),
            },
            UserOpenError::Version {
                path: p(),
                major: 1,
                minor: 0,
            },
            UserOpenError::NotPci {
                path: p(),
                flags: 1,
            },
            UserOpenError::Malformed {
                path: p(),
                step: "VERSION".into(),
                what: "x".into(),
            },
            UserOpenError::Timeout {
                path: p(),
                step: "VERSION".into(),
                millis: 5,
            },
            UserOpenError::Closed {
                path: p(),
                step: "VERSION".into(),
            },
            UserOpenError::Refused {
                path: p(),
                step: "VERSION".into(),
                errno: 22,
            },
            UserOpenError::Io {
                path: p(),
                step: "VERSION".into(),
                source: io(),
            },
        ];
        for e in all {
            let line = e.to_string();
            assert!(!line.contains('\n'), "{line}");
            assert!(line.contains("/run/dev.sock"), "{line}");
        }
        assert_eq!(
            UserOpenError::Version {
                path: p(),
                major: 1,
                minor: 0
            }
            .to_string(),
            "the server at /run/dev.sock speaks vfio-user 1.0; irvmm speaks 0.x"
        );
    }
}
