//! The guest's console input with `--serial stdio` or `--console virtio`: standard input
//! fed to the guest's UART (COM1) or, with `--console virtio`, to the virtio console's
//! receive queue (Linux's `hvc0`), through an [`InputSink`]; on a terminal, raw mode
//! ([`terminal`]) and the `Ctrl-a` escape keys ([`escape`]). Piped or file input reaches
//! the guest byte for byte (no escape keys: it may be binary). The console outlives one VM
//! (`--on-reset restart` builds a new one; the terminal stays raw, unread input carries
//! over).
//!
//! No thread and no polling with sleeps: the VM's event loop waits for standard input to be
//! readable and for the sink to have room (the UART's receive FIFO drained, or the virtio
//! console's I/O thread took bytes into the driver's buffers), and calls
//! [`Console::read_input`] and [`Console::feed`]; guest memory is only touched by the
//! device (the virtio console's I/O thread), never here. What standard input is decides
//! the flow control:
//! - a terminal is always read, so `Ctrl-a x` works even when the guest does not read its
//!   console; keystrokes beyond [`TERMINAL_BACKLOG`] bytes the guest has not taken are
//!   dropped (and counted once in the log), as a real serial line overruns;
//! - a pipe or socket is read only while fewer than [`STREAM_BACKLOG`] bytes wait for the
//!   guest, so nothing is lost: the writer blocks instead;
//! - a regular file (or `/dev/null`) cannot be polled: it is read whenever the sink has
//!   room.

pub mod escape;
pub mod sink;
pub mod terminal;

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, RawFd};

pub use escape::Command;
use escape::{EscapeParser, HELP};
pub use sink::InputSink;
use terminal::RawTerminal;

/// Bytes read from standard input at once.
const READ_CHUNK: usize = 4096;
/// Keystrokes kept for a guest that does not read its console before new ones are dropped.
pub const TERMINAL_BACKLOG: usize = 64 << 10;
/// Bytes of piped input kept for the guest before standard input is left unread.
pub const STREAM_BACKLOG: usize = 4096;

/// What standard input is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A terminal (put in raw mode).
    Terminal,
    /// A pipe, socket or other pollable stream.
    Stream,
    /// A regular file or another descriptor epoll refuses (e.g. `/dev/null`).
    File,
}

/// Standard input as the guest's keyboard.
pub struct Console {
    // Declared (so dropped) before `input`: the terminal is restored through its descriptor.
    raw: Option<RawTerminal>,
    input: File,
    kind: InputKind,
    parser: EscapeParser,
    pending: VecDeque<u8>,
    eof: bool,
    dropped: u64,
}

impl Console {
    /// Takes standard input (a duplicate of descriptor 0); a terminal goes into raw mode
    /// until the console is dropped.
    pub fn stdin() -> std::io::Result<Console> {
        let input = File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
        let raw = RawTerminal::enter(input.as_raw_fd())?;
        let kind = if raw.is_some() {
            InputKind::Terminal
        } else {
            InputKind::Stream
        };
        let mut console = Console::from_file(input, kind);
        console.raw = raw;
        Ok(console)
    }

    /// A console reading `input`, which is of `kind` (no raw mode).
    pub fn from_file(input: File, kind: InputKind) -> Console {
        Console {
            input,
            kind,
            parser: EscapeParser::new(),
            pending: VecDeque::new(),
            eof: false,
            dropped: 0,
            raw: None,
        }
    }

    /// The descriptor to wait on.
    pub fn fd(&self) -> RawFd {
        self.input.as_raw_fd()
    }

    /// What standard input is.
    pub fn kind(&self) -> InputKind {
        self.kind
    }

    /// Records that epoll refused the descriptor: it is a file, read when the sink has room.
    pub fn set_unpollable(&mut self) {
        self.kind = InputKind::File;
    }

    /// Whether the terminal is in raw mode.
    pub fn is_raw(&self) -> bool {
        self.raw.is_some()
    }

    /// Whether the event loop should wait for input now.
    pub fn wants_input(&self) -> bool {
        !self.eof
            && match self.kind {
                InputKind::Terminal => true,
                InputKind::Stream => self.pending.len() < STREAM_BACKLOG,
                InputKind::File => false,
            }
    }

    /// Bytes waiting for the guest.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Reads once from standard input (call when it is readable); returns the console
    /// commands found. `Ctrl-a h` prints its help here.
    pub fn read_input(&mut self) -> Vec<Command> {
        let mut buf = [0u8; READ_CHUNK];
        let n = match self.input.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                return Vec::new();
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) =>
            {
                return Vec::new()
            }
            Err(e) => {
                log::warn!("console: reading standard input failed, input ends: {e}");
                self.eof = true;
                return Vec::new();
            }
        };
        self.accept(&buf[..n])
    }

    /// Runs `input` through the escape parser (on a terminal) into the backlog.
    fn accept(&mut self, input: &[u8]) -> Vec<Command> {
        let mut to_guest = Vec::with_capacity(input.len());
        let mut commands = Vec::new();
        if self.kind == InputKind::Terminal {
            self.parser.feed(input, &mut to_guest, &mut commands);
        } else {
            to_guest.extend_from_slice(input);
        }
        if commands.contains(&Command::Help) {
            eprint!("{HELP}");
        }
        let room = match self.kind {
            InputKind::Terminal => TERMINAL_BACKLOG.saturating_sub(self.pending.len()),
            InputKind::Stream | InputKind::File => usize::MAX,
        };
        let kept = to_guest.len().min(room);
        if kept < to_guest.len() {
            if self.dropped == 0 {
                log::warn!(
                    "console: the guest is not reading its console input; further keystrokes are dropped"
                );
            }
            self.dropped += (to_guest.len() - kept) as u64;
        }
        self.pending.extend(&to_guest[..kept]);
        commands
    }

    /// Moves waiting bytes into `sink` as far as it has room (call when it has room again,
    /// and after new input). A file is read here, as the sink takes it. Returns the console
    /// commands met in file input.
    pub fn feed(&mut self, sink: &dyn InputSink) -> Vec<Command> {
        let mut commands = Vec::new();
        loop {
            if self.pending.is_empty() && self.kind == InputKind::File && !self.eof {
                commands.extend(self.read_input());
                if commands.contains(&Command::Quit) {
                    return commands;
                }
            }
            if self.pending.is_empty() {
                return commands;
            }
            let taken = sink.accept(self.pending.make_contiguous());
            self.pending.drain(..taken.min(self.pending.len()));
            if taken == 0 || self.kind != InputKind::File {
                return commands;
            }
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if self.dropped > 0 {
            log::warn!(
                "console: {} keystrokes were dropped because the guest did not read them",
                self.dropped
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::FromRawFd;

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe creates.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors are new and owned by nothing else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn backlog_limits_by_kind() {
        let (r, _w) = pipe();
        let mut c = Console::from_file(r, InputKind::Terminal);
        let big = vec![b'a'; TERMINAL_BACKLOG + 10];
        assert!(c.accept(&big).is_empty());
        assert_eq!(c.pending(), TERMINAL_BACKLOG);
        assert_eq!(c.dropped, 10);
        assert!(c.wants_input(), "a terminal is always read");
        assert_eq!(c.accept(b"\x01x"), vec![Command::Quit]);

        c.kind = InputKind::Stream;
        assert!(!c.wants_input(), "a stream waits for the guest");
        c.pending.clear();
        assert!(c.wants_input());
        c.eof = true;
        assert!(!c.wants_input());
        c.dropped = 0;
    }

    #[test]
    fn a_terminal_reads_escapes() {
        let (r, mut w) = pipe();
        let mut c = Console::from_file(r, InputKind::Terminal);
        w.write_all(b"hi\x01\x01").unwrap();
        assert!(c.read_input().is_empty());
        assert_eq!(c.pending.iter().copied().collect::<Vec<_>>(), b"hi\x01");
        w.write_all(b"\x01x").unwrap();
        assert_eq!(c.read_input(), vec![Command::Quit]);
    }

    /// A sink with room for `room` bytes at a time.
    struct Fifo {
        got: std::cell::RefCell<Vec<u8>>,
        room: std::cell::Cell<usize>,
    }

    impl InputSink for Fifo {
        fn accept(&self, bytes: &[u8]) -> usize {
            let n = bytes.len().min(self.room.get());
            self.got.borrow_mut().extend_from_slice(&bytes[..n]);
            self.room.set(self.room.get() - n);
            n
        }
    }

    #[test]
    fn feed_gives_the_sink_what_it_has_room_for() {
        let (r, mut w) = pipe();
        let mut c = Console::from_file(r, InputKind::Stream);
        let all: Vec<u8> = (0..=255).collect();
        w.write_all(&all).unwrap();
        assert!(c.read_input().is_empty());
        let sink = Fifo {
            got: Default::default(),
            room: 100.into(),
        };
        assert!(c.feed(&sink).is_empty());
        assert_eq!(c.pending(), 156);
        sink.room.set(1000);
        assert!(c.feed(&sink).is_empty());
        assert_eq!(c.pending(), 0);
        assert_eq!(*sink.got.borrow(), all, "escape bytes included, in order");

        // The virtio console's input is a sink too.
        let virtio = virtio::ConsoleInput::new(10).unwrap();
        w.write_all(b"\x01x and more").unwrap();
        assert!(c.read_input().is_empty(), "no escape keys on a pipe");
        assert!(c.feed(&virtio).is_empty());
        assert_eq!((virtio.len(), c.pending()), (10, 1));
    }

    #[test]
    fn feed_reads_a_file_as_the_sink_takes_it() {
        let path = std::env::temp_dir().join(format!("irvmm-console-{}", std::process::id()));
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut c = Console::from_file(File::open(&path).unwrap(), InputKind::File);
        let _ = std::fs::remove_file(&path);
        let sink = Fifo {
            got: Default::default(),
            room: 6000.into(),
        };
        assert!(c.feed(&sink).is_empty());
        assert_eq!(sink.got.borrow().len(), 6000);
        sink.room.set(usize::MAX);
        assert!(c.feed(&sink).is_empty());
        assert_eq!(*sink.got.borrow(), data);
        assert!(c.eof);
    }

    #[test]
    fn a_pipe_passes_every_byte_and_ends() {
        let (r, mut w) = pipe();
        let mut c = Console::from_file(r, InputKind::Stream);
        let all: Vec<u8> = (0..=255).collect();
        w.write_all(&all).unwrap();
        assert!(c.read_input().is_empty());
        assert_eq!(c.pending.iter().copied().collect::<Vec<_>>(), all);
        drop(w);
        assert!(c.read_input().is_empty());
        assert!(c.eof);
        assert!(!c.wants_input());
    }
}
