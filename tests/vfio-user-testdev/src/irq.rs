//! Interrupt indexes (GET_IRQ_INFO), SET_IRQS decoding, eventfd signalling and the INTx line.

use std::fs::File;
use std::io::{self, Write};

use thiserror::Error;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK,
};

/// INTx (INTA) index.
pub const INTX: u32 = 0;
/// MSI index.
pub const MSI: u32 = 1;
/// MSI-X index.
pub const MSIX: u32 = 2;
/// Error reporting index (no interrupts).
pub const ERR: u32 = 3;
/// Device request index (no interrupts).
pub const REQ: u32 = 4;
/// Number of interrupt indexes.
pub const NUM_INDEXES: u32 = 5;

/// GET_IRQ_INFO answer for one index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexInfo {
    /// The index.
    pub index: u32,
    /// VFIO_IRQ_INFO_* flags.
    pub flags: u32,
    /// Number of interrupts.
    pub count: u32,
}

/// What GET_IRQ_INFO reports for every index, for a device with `vectors` MSI-X vectors.
pub fn index_infos(vectors: u32) -> [IndexInfo; NUM_INDEXES as usize] {
    let info = |index, flags, count| IndexInfo {
        index,
        flags,
        count,
    };
    [
        info(
            INTX,
            VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
            1,
        ),
        info(MSI, VFIO_IRQ_INFO_EVENTFD, 1),
        info(MSIX, VFIO_IRQ_INFO_EVENTFD, vectors),
        info(ERR, VFIO_IRQ_INFO_EVENTFD, 0),
        info(REQ, VFIO_IRQ_INFO_EVENTFD, 0),
    ]
}

/// A SET_IRQS message this device does not accept.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IrqError {
    /// No such index.
    #[error("interrupt index {0} does not exist")]
    BadIndex(u32),
    /// The flags do not name exactly one data type and one action this device handles.
    #[error("SET_IRQS flags {flags:#x} are not supported for index {index}")]
    Unsupported {
        /// The index.
        index: u32,
        /// The flags.
        flags: u32,
    },
    /// The interrupts named lie outside the index.
    #[error("interrupts {start}..+{count} are outside index {index}'s {limit}")]
    BadRange {
        /// The index.
        index: u32,
        /// First interrupt.
        start: u32,
        /// Number of interrupts.
        count: u32,
        /// Interrupts the index has.
        limit: u32,
    },
    /// The message carried a different number of fds than interrupts.
    #[error("SET_IRQS for {count} interrupts carried {fds} fds")]
    FdCount {
        /// Interrupts named.
        count: u32,
        /// Fds received.
        fds: usize,
    },
}

/// A decoded SET_IRQS request.
#[derive(Debug)]
pub enum IrqRequest {
    /// Use `fds` as the eventfds of interrupts `start..start + fds.len()` of `index`.
    SetEventfds {
        /// The index.
        index: u32,
        /// First interrupt.
        start: u32,
        /// One eventfd per interrupt.
        fds: Vec<File>,
    },
    /// Drop every eventfd of `index`.
    Disable {
        /// The index.
        index: u32,
    },
    /// Mask INTx.
    MaskIntx,
    /// Unmask INTx.
    UnmaskIntx,
}

/// Decodes a SET_IRQS message for a device with `vectors` MSI-X vectors.
pub fn decode_set_irqs(
    index: u32,
    flags: u32,
    start: u32,
    count: u32,
    fds: Vec<File>,
    vectors: u32,
) -> Result<IrqRequest, IrqError> {
    let limit = index_infos(vectors)
        .iter()
        .find(|i| i.index == index)
        .map(|i| i.count)
        .ok_or(IrqError::BadIndex(index))?;
    let unsupported = IrqError::Unsupported { index, flags };
    if flags & !(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0 {
        return Err(unsupported);
    }
    let data = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
    let action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
    let in_range = start.checked_add(count).is_some_and(|end| end <= limit);
    let bad_range = IrqError::BadRange {
        index,
        start,
        count,
        limit,
    };
    match (action, data) {
        (VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_EVENTFD)
            if count == 0 =>
        {
            Ok(IrqRequest::Disable { index })
        }
        (VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD) => {
            if !in_range {
                return Err(bad_range);
            }
            if fds.len() != count as usize {
                return Err(IrqError::FdCount {
                    count,
                    fds: fds.len(),
                });
            }
            Ok(IrqRequest::SetEventfds { index, start, fds })
        }
        (VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_NONE)
            if index == INTX =>
        {
            if start != 0 || count != 1 {
                return Err(bad_range);
            }
            if action == VFIO_IRQ_SET_ACTION_MASK {
                Ok(IrqRequest::MaskIntx)
            } else {
                Ok(IrqRequest::UnmaskIntx)
            }
        }
        _ => Err(unsupported),
    }
}

/// Signals an eventfd once.
pub fn signal(fd: &File) -> io::Result<()> {
    let mut writer = fd;
    writer.write_all(&1u64.to_ne_bytes())
}

/// INTA: a level-triggered line with Linux vfio-pci's automasking.
///
/// Asserting the line (or unmasking while it is asserted) signals the eventfd once and masks
/// the line, so the VMM sees one edge per guest interrupt and unmasks after the guest's EOI.
#[derive(Default)]
pub struct Intx {
    level: bool,
    masked: bool,
    fd: Option<File>,
}

impl Intx {
    /// The line's level as the device drives it.
    pub fn level(&self) -> bool {
        self.level
    }

    /// Whether the line is masked.
    #[cfg(test)]
    pub fn masked(&self) -> bool {
        self.masked
    }

    /// Drives the line; returns true if that signalled the eventfd.
    pub fn set_level(&mut self, level: bool) -> bool {
        let rising = level && !self.level;
        self.level = level;
        rising && self.try_signal()
    }

    /// Masks the line.
    pub fn mask(&mut self) {
        self.masked = true;
    }

    /// Unmasks the line; if it is still asserted, signals again (and masks). Returns true if
    /// it signalled.
    pub fn unmask(&mut self) -> bool {
        self.masked = false;
        self.level && self.try_signal()
    }

    /// Sets (or with `None`, drops) the eventfd; dropping it also unmasks the line.
    pub fn set_fd(&mut self, fd: Option<File>) {
        if fd.is_none() {
            self.masked = false;
        }
        self.fd = fd;
    }

    /// Device reset: the line is deasserted and unmasked; the eventfd stays.
    pub fn reset(&mut self) {
        self.level = false;
        self.masked = false;
    }

    fn try_signal(&mut self) -> bool {
        if self.masked {
            return false;
        }
        let Some(fd) = &self.fd else {
            return false;
        };
        match signal(fd) {
            Ok(()) => {
                self.masked = true;
                true
            }
            Err(e) => {
                log::warn!("signalling the INTx eventfd: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{FromRawFd, IntoRawFd};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// A non-blocking eventfd as two files: one for the device, one to read the count.
    pub(crate) fn eventfd() -> (File, File) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        // SAFETY: into_raw_fd hands over ownership of a valid eventfd.
        let file = unsafe { File::from_raw_fd(evt.into_raw_fd()) };
        let reader = file.try_clone().unwrap();
        (file, reader)
    }

    /// Reads and resets an eventfd's counter (0 if it was not signalled).
    pub(crate) fn take(reader: &File) -> u64 {
        let mut buf = [0u8; 8];
        let mut r = reader;
        match r.read(&mut buf) {
            Ok(8) => u64::from_ne_bytes(buf),
            _ => 0,
        }
    }

    #[test]
    fn infos() {
        let i = index_infos(256);
        assert_eq!(i[0].flags, 7);
        assert_eq!(
            i[1],
            IndexInfo {
                index: 1,
                flags: 1,
                count: 1
            }
        );
        assert_eq!(i[2].count, 256);
        assert_eq!((i[3].count, i[4].count), (0, 0));
    }

    #[test]
    fn decode() {
        let (a, _) = eventfd();
        assert!(matches!(
            decode_set_irqs(MSIX, 0x24, 5, 1, vec![a], 8),
            Ok(IrqRequest::SetEventfds {
                index: 2,
                start: 5,
                ..
            })
        ));
        let (a, _) = eventfd();
        assert!(matches!(
            decode_set_irqs(MSIX, 0x24, 8, 1, vec![a], 8),
            Err(IrqError::BadRange { .. })
        ));
        assert!(matches!(
            decode_set_irqs(MSIX, 0x24, 0, 2, vec![], 8),
            Err(IrqError::FdCount { .. })
        ));
        assert!(matches!(
            decode_set_irqs(MSIX, 0x24, u32::MAX, 2, vec![], 8),
            Err(IrqError::BadRange { .. })
        ));
        assert!(matches!(
            decode_set_irqs(MSIX, 0x21, 0, 0, vec![], 8),
            Ok(IrqRequest::Disable { index: 2 })
        ));
        assert!(matches!(
            decode_set_irqs(INTX, 0x11, 0, 1, vec![], 8),
            Ok(IrqRequest::UnmaskIntx)
        ));
        assert!(matches!(
            decode_set_irqs(INTX, 0x09, 0, 1, vec![], 8),
            Ok(IrqRequest::MaskIntx)
        ));
        assert!(decode_set_irqs(MSIX, 0x09, 0, 1, vec![], 8).is_err());
        assert!(decode_set_irqs(INTX, 0x21, 0, 1, vec![], 8).is_err());
        assert!(decode_set_irqs(INTX, 0x31, 0, 1, vec![], 8).is_err());
        assert!(decode_set_irqs(INTX, 0x14, 0, 1, vec![], 8).is_err());
        assert!(decode_set_irqs(9, 0x21, 0, 0, vec![], 8).is_err());
        assert!(decode_set_irqs(ERR, 0x21, 0, 0, vec![], 8).is_ok());
    }

    #[test]
    fn intx_automask() {
        let (fd, reader) = eventfd();
        let mut intx = Intx::default();
        assert!(!intx.set_level(true));
        intx.set_level(false);
        intx.set_fd(Some(fd));
        assert!(intx.set_level(true));
        assert!(intx.masked());
        assert_eq!(take(&reader), 1);
        assert!(!intx.set_level(true));
        assert!(intx.unmask());
        assert_eq!(take(&reader), 1);
        intx.set_level(false);
        assert!(!intx.unmask());
        assert!(!intx.masked());
        intx.mask();
        assert!(!intx.set_level(true));
        assert!(intx.unmask());
        assert_eq!(take(&reader), 1);
    }
}
