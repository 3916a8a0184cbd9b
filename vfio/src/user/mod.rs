//! irvmm's vfio-user client: a PCI function served by a device server in another process,
//! reached over a UNIX socket (QEMU's `docs/interop/vfio-user.rst`, protocol 0.x), as a
//! [`crate::VfioBackend`].
//!
//! irvmm does not use the `vfio_user` crate's client, which asserts on reply sizes,
//! ignores error replies, message ids and the server's version, and has no timeouts. Here a
//! device server's replies never panic or hang the VMM: every reply is checked against
//! its request before anything is allocated from it, an error reply becomes
//! [`crate::BackendError::Refused`], and a timeout, end of stream or protocol violation
//! ends the connection for good ([`crate::BackendError::Gone`] from then on). The wire
//! format stays compatible with that crate's `Server`, libvfio-user and QEMU.
//!
//! * [`protocol`]: message layouts and pure encoders/decoders;
//! * [`version`]: VERSION negotiation (the capabilities JSON);
//! * `client`: the socket transport (ids, deadlines, checked replies);
//! * `sys`: the system calls (connect, `sendmsg`/`recvmsg` with `SCM_RIGHTS`, `poll`);
//! * `open`: the open sequence (version, device, regions, IRQ indices);
//! * `device`: [`VfioUserDevice`], the backend;
//! * `error`: [`UserOpenError`], one user-facing line per open failure.

mod client;
mod device;
mod error;
mod open;
pub mod protocol;
mod sys;
pub mod version;

#[cfg(test)]
mod tests;

pub use device::{VfioUserDevice, MAX_TIMEOUT};
pub use error::UserOpenError;
pub use open::{CLIENT_MAX_DATA_XFER, PCI_IRQS};
