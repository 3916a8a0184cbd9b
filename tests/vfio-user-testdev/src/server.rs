//! Socket glue: the vfio-user server, its backend, and the poller thread.
//!
//! The `vfio_user` crate's `Server` reads messages and calls the backend; the backend locks
//! the device model and forwards. The poller wakes every `--poll-us` (or earlier, when the
//! timer is due or a region write changed something) to act on writes the guest made
//! straight into the mapped BAR.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;
use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{
    DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion, SparseArea,
};

use crate::device::{
    region_size, Control, Device, DeviceError, NUM_REGIONS, REGION_BAR0, REGION_CONFIG, REGION_ROM,
};
use crate::irq::index_infos;
use crate::options::DeviceOptions;
use crate::regs::BAR0_SIZE;

/// Exit status of the process when the guest writes CONTROL_EXIT.
pub const EXIT_STATUS_CONTROL: i32 = 3;

/// How the server is run.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Socket path to listen on; must not exist.
    pub socket: PathBuf,
    /// The device model's options.
    pub device: DeviceOptions,
    /// Offer BAR0 for mmap.
    pub mmap: bool,
    /// Poller period.
    pub poll: Duration,
}

/// A failure that ends the server.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The device model could not be built.
    #[error("creating the device: {0}")]
    Device(#[source] DeviceError),
    /// Binding the socket failed (or the path exists).
    #[error("listening on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: vfio_user::Error,
    },
    /// The poller thread could not be started.
    #[error("starting the poller thread: {0}")]
    Poller(#[source] io::Error),
    /// The connection failed other than by the client going away.
    #[error("serving the client: {0}")]
    Serve(#[source] vfio_user::Error),
}

/// State shared by the socket thread and the poller.
struct Shared {
    device: Mutex<Device>,
    /// Woken after region writes and resets so the poller re-plans its sleep.
    wake: Condvar,
    /// The guest asked for a hung server.
    hung: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Device> {
        // Nothing panics while holding the lock; if something did, the state is still usable.
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Carries out a CONTROL request; returns for `Hang` (after recording it).
    fn act(&self, control: Option<Control>) {
        match control {
            Some(Control::Exit) => {
                log::warn!("guest wrote CONTROL_EXIT: exiting");
                std::process::exit(EXIT_STATUS_CONTROL);
            }
            Some(Control::Hang) => {
                log::warn!("guest wrote CONTROL_HANG: no more socket replies");
                self.hung.store(true, Ordering::SeqCst);
            }
            None => {}
        }
    }

    /// Blocks the socket thread forever once the guest has asked for a hang.
    fn stall_if_hung(&self) {
        if self.hung.load(Ordering::SeqCst) {
            loop {
                thread::park();
            }
        }
    }
}

fn region_infos(device: &Device, mmap: bool) -> Vec<ServerRegion> {
    (0..NUM_REGIONS)
        .map(|index| {
            let size = region_size(index).unwrap_or(0);
            let mut flags = match index {
                REGION_BAR0 | REGION_CONFIG => {
                    VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
                }
                REGION_ROM => VFIO_REGION_INFO_FLAG_READ,
                _ => 0,
            };
            let mut sparse_areas = Vec::new();
            let mut mmap_fd = None;
            if index == REGION_BAR0 && mmap {
                flags |= VFIO_REGION_INFO_FLAG_MMAP;
                sparse_areas.push(SparseArea {
                    area: vfio_region_sparse_mmap_area {
                        offset: 0,
                        size: BAR0_SIZE as u64,
                    },
                });
                mmap_fd = device.bar_fd();
            }
            ServerRegion {
                region_info: vfio_region_info {
                    argsz: std::mem::size_of::<vfio_region_info>() as u32,
                    flags,
                    index,
                    cap_offset: 0,
                    size,
                    offset: 0,
                },
                sparse_areas,
                mmap_fd,
            }
        })
        .collect()
}

fn to_io(e: DeviceError) -> io::Error {
    log::debug!("refused: {e}");
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// The `ServerBackend` that forwards to the shared device.
struct Backend {
    shared: Arc<Shared>,
}

impl Backend {
    /// Runs `op` on the device, then carries out any CONTROL request it uncovered.
    fn with_device<T>(&mut self, op: impl FnOnce(&mut Device) -> T) -> T {
        self.shared.stall_if_hung();
        let (result, control) = {
            let mut device = self.shared.lock();
            let result = op(&mut device);
            (result, device.take_control())
        };
        self.shared.wake.notify_one();
        self.shared.act(control);
        self.shared.stall_if_hung();
        result
    }
}

impl ServerBackend for Backend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.with_device(|d| d.region_read(region, offset, data, Instant::now()))
            .map_err(to_io)
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with_device(|d| d.region_write(region, offset, data, Instant::now()))
            .map_err(to_io)
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> io::Result<()> {
        let readable = flags.contains(DmaMapFlags::READ);
        let writable = flags.contains(DmaMapFlags::WRITE);
        self.with_device(|d| d.dma_map(address, size, fd, offset, readable, writable))
            .map_err(to_io)
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> io::Result<()> {
        let all = flags.contains(DmaUnmapFlags::UNMAP_ALL);
        let dirty = flags.contains(DmaUnmapFlags::GET_DIRTY_PAGE_INFO);
        self.with_device(|d| d.dma_unmap(address, size, all, dirty))
            .map_err(to_io)
    }

    fn reset(&mut self) -> io::Result<()> {
        self.with_device(|d| d.reset());
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> io::Result<()> {
        self.with_device(|d| d.set_irqs(index, flags, start, count, fds))
            .map_err(to_io)
    }
}

/// The poller: services the device every `period`, or at the timer's deadline if sooner.
fn poll(shared: &Shared, period: Duration) {
    let mut device = shared.lock();
    loop {
        let now = Instant::now();
        device.service(now);
        let control = device.take_control();
        if control.is_some() {
            drop(device);
            shared.act(control);
            device = shared.lock();
            continue;
        }
        let wait = match device.next_deadline() {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(period),
            None => period,
        };
        device = match shared.wake.wait_timeout(device, wait) {
            Ok((guard, _)) => guard,
            Err(e) => e.into_inner().0,
        };
    }
}

/// Whether a connection error just means the client went away.
fn is_disconnect(e: &vfio_user::Error) -> bool {
    let gone = |kind: io::ErrorKind| {
        matches!(
            kind,
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
        )
    };
    match e {
        vfio_user::Error::StreamRead(e) | vfio_user::Error::StreamWrite(e) => gone(e.kind()),
        vfio_user::Error::ReceiveWithFd(e) | vfio_user::Error::SendWithFd(e) => {
            matches!(e.errno(), libc::ECONNRESET | libc::EPIPE)
        }
        _ => false,
    }
}

/// Serves one client on `options.socket` until it disconnects.
pub fn serve(options: &ServerOptions) -> Result<(), ServeError> {
    let device = Device::new(options.device).map_err(ServeError::Device)?;
    let regions = region_infos(&device, options.mmap);
    let irqs = index_infos(options.device.vectors)
        .iter()
        .map(|i| IrqInfo {
            index: i.index,
            flags: i.flags,
            count: i.count,
        })
        .collect();
    let shared = Arc::new(Shared {
        device: Mutex::new(device),
        wake: Condvar::new(),
        hung: AtomicBool::new(false),
    });
    let server =
        Server::new(&options.socket, true, irqs, regions).map_err(|source| ServeError::Listen {
            path: options.socket.clone(),
            source,
        })?;
    eprintln!(
        "vfio-user-testdev: listening on {}",
        options.socket.display()
    );

    let poller_shared = Arc::clone(&shared);
    let period = options.poll;
    thread::Builder::new()
        .name("poller".into())
        .spawn(move || poll(&poller_shared, period))
        .map_err(ServeError::Poller)?;

    let mut backend = Backend { shared };
    match server.run(&mut backend) {
        Ok(()) => Ok(()),
        Err(e) if is_disconnect(&e) => {
            log::info!("client went away: {e}");
            Ok(())
        }
        Err(e) => Err(ServeError::Serve(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_table() {
        let device = Device::new(DeviceOptions::default()).unwrap();
        let regions = region_infos(&device, true);
        assert_eq!(regions.len(), 9);
        let bar0 = &regions[0];
        assert_eq!(bar0.region_info.flags, 7);
        assert_eq!(bar0.region_info.size, 0x10000);
        assert_eq!(bar0.sparse_areas.len(), 1);
        assert_eq!(bar0.sparse_areas[0].area.size, 0x10000);
        assert!(bar0.mmap_fd.is_some());
        assert_eq!(regions[6].region_info.flags, 1);
        assert_eq!(regions[6].region_info.size, 0x1000);
        assert_eq!(regions[7].region_info.flags, 3);
        assert_eq!(regions[7].region_info.size, 256);
        for i in [1, 2, 3, 4, 5, 8] {
            assert_eq!(regions[i].region_info.size, 0);
            assert_eq!(regions[i].region_info.index, i as u32);
        }
        let regions = region_infos(&device, false);
        assert_eq!(regions[0].region_info.flags, 3);
        assert!(regions[0].sparse_areas.is_empty());
        assert!(regions[0].mmap_fd.is_none());
    }
}
