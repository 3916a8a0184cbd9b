//! virtio-rng (`--rng`): fills each buffer the driver offers with bytes from the host's
//! `/dev/urandom` (at most 64 KiB per request; the used length says how many).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use log::debug;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

use crate::segments::Cursor;
use crate::transport::DeviceSpec;
use crate::worker::{drain_queue, Activation, DeviceError, QueueHandler};

/// The entropy source.
pub const RNG_SOURCE: &str = "/dev/urandom";
/// Entries of the request queue.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// Most bytes given per request.
pub const RNG_MAX_REQUEST: usize = 64 * 1024;
/// PCI class code: other (what QEMU's virtio-rng-pci says).
pub const RNG_CLASS_CODE: u32 = 0xff_0000;

/// The virtio-rng device.
#[derive(Debug)]
pub struct Rng {
    source: File,
}

impl Rng {
    /// Opens the host's entropy source.
    pub fn open() -> io::Result<Self> {
        Self::with_source(Path::new(RNG_SOURCE))
    }

    /// Uses `path` as the entropy source (tests).
    pub fn with_source(path: &Path) -> io::Result<Self> {
        Ok(Rng {
            source: File::open(path)?,
        })
    }

    /// What the transport needs to know.
    pub fn spec(&self) -> DeviceSpec {
        DeviceSpec {
            name: "rng".into(),
            device_type: VIRTIO_ID_RNG,
            class_code: RNG_CLASS_CODE,
            features: 0,
            queue_sizes: vec![RNG_QUEUE_SIZE],
            config: Vec::new(),
        }
    }

    /// The device's I/O-thread side.
    pub fn into_handler(self) -> Box<dyn QueueHandler> {
        Box::new(RngHandler {
            source: self.source,
            buf: vec![0; RNG_MAX_REQUEST],
        })
    }
}

struct RngHandler {
    source: File,
    buf: Vec<u8>,
}

impl QueueHandler for RngHandler {
    fn name(&self) -> &str {
        "rng"
    }

    fn process_queue(
        &mut self,
        index: usize,
        active: &mut Activation,
    ) -> Result<bool, DeviceError> {
        let (source, buf) = (&mut self.source, &mut self.buf);
        let (used, more) = drain_queue(index, active, |segs, mem| {
            let mut w = Cursor::new(&segs.writable);
            let n = usize::try_from(w.remaining())
                .unwrap_or(RNG_MAX_REQUEST)
                .min(RNG_MAX_REQUEST);
            let Some(chunk) = buf.get_mut(..n) else {
                return 0;
            };
            if let Err(e) = source.read_exact(chunk) {
                debug!("rng: reading {RNG_SOURCE}: {e}");
                return 0;
            }
            match w.write(mem, chunk) {
                Ok(done) => u32::try_from(done).unwrap_or(0),
                Err(_) => {
                    debug!("rng: buffer outside RAM");
                    0
                }
            }
        })?;
        if used {
            active.notify(index);
        }
        Ok(more)
    }
}
