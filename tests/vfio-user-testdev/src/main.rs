//! vfio-user-testdev: a PCI test device served over vfio-user.
//!
//! irvmm passes it through to a guest whose probe drives the BAR0 registers documented in
//! README.md: MSI-X doorbells and a timer, INTx and MSI, a DMA engine through the client's
//! DMA mappings, and failure injection. Exit status: 0 when the client disconnects, 1 on
//! errors, 2 on bad arguments, 3 when the guest asks the server to die.

mod bar;
mod config;
mod device;
mod dma;
mod irq;
mod msix;
mod options;
mod regs;
mod server;
mod timer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::Parser;

use options::{DeviceOptions, Layout, MAX_VECTORS};
use server::{serve, ServerOptions};

/// Serve a PCI test device (1234:11ea) over vfio-user on a UNIX socket, for one client.
#[derive(Debug, Parser)]
#[command(name = "vfio-user-testdev", version)]
struct Cli {
    /// Socket path to listen on (must not exist yet).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// MSI-X vectors; outside 1..=2048 the device is broken on purpose.
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_VECTORS)))]
    vectors: u32,
    /// Honour the device's own MSI-X table and PBA, as real hardware does.
    #[arg(long)]
    direct_msix: bool,
    /// Do not offer BAR0 for mmap: every access becomes a region read/write message.
    #[arg(long)]
    no_mmap: bool,
    /// Placement of the MSI-X table and PBA.
    #[arg(long, value_enum, default_value_t = Layout::Normal)]
    layout: Layout,
    /// Microseconds between polls of the mapped BAR for guest writes.
    #[arg(long, value_name = "U", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    poll_us: u64,
}

impl Cli {
    fn server_options(&self) -> ServerOptions {
        ServerOptions {
            socket: self.socket.clone(),
            device: DeviceOptions {
                vectors: self.vectors,
                direct_msix: self.direct_msix,
                layout: self.layout,
            },
            mmap: !self.no_mmap,
            poll: Duration::from_micros(self.poll_us),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let line = rendered.lines().next().unwrap_or("bad arguments");
            let line = line.strip_prefix("error: ").unwrap_or(line);
            eprintln!("vfio-user-testdev: {line}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match serve(&cli.server_options()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vfio-user-testdev: {e}");
            ExitCode::from(1)
        }
    }
}
