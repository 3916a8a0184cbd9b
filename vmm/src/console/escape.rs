//! The console's escape key on a terminal, as QEMU's `-nographic` has it: `Ctrl-a` followed
//! by a command key. Everything else goes to the guest unchanged.
//!
//! | keys | effect |
//! |---|---|
//! | `Ctrl-a x` | quit irvmm (exit status 125) |
//! | `Ctrl-a h` | print this help on standard error |
//! | `Ctrl-a Ctrl-a` | send one `Ctrl-a` to the guest |
//! | `Ctrl-a` + any other key | ignored (both bytes) |
//!
//! The state survives across reads: `Ctrl-a` at the end of one read and `x` at the start of
//! the next still quit.

/// The escape byte: `Ctrl-a`.
pub const ESCAPE: u8 = 0x01;
/// After the escape: quit.
pub const KEY_QUIT: u8 = b'x';
/// After the escape: help.
pub const KEY_HELP: u8 = b'h';

/// The help text `Ctrl-a h` prints.
pub const HELP: &str = "irvmm console: Ctrl-a x  quit (exit status 125)\r\n\
                        \x20              Ctrl-a h  this help\r\n\
                        \x20              Ctrl-a Ctrl-a  send Ctrl-a to the guest\r\n";

/// A console command found in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `Ctrl-a x`.
    Quit,
    /// `Ctrl-a h`.
    Help,
}

/// Splits console input into guest bytes and commands.
#[derive(Clone, Copy, Debug, Default)]
pub struct EscapeParser {
    /// The last byte was an unconsumed escape.
    escaped: bool,
}

impl EscapeParser {
    /// A parser in its initial state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `input`: bytes for the guest are appended to `to_guest`, commands to
    /// `commands`. Input after `Ctrl-a x` is dropped (the console is quitting).
    pub fn feed(&mut self, input: &[u8], to_guest: &mut Vec<u8>, commands: &mut Vec<Command>) {
        for &b in input {
            if self.escaped {
                self.escaped = false;
                match b {
                    KEY_QUIT => {
                        commands.push(Command::Quit);
                        return;
                    }
                    KEY_HELP => commands.push(Command::Help),
                    ESCAPE => to_guest.push(ESCAPE),
                    _ => {}
                }
            } else if b == ESCAPE {
                self.escaped = true;
            } else {
                to_guest.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &mut EscapeParser, input: &[u8]) -> (Vec<u8>, Vec<Command>) {
        let (mut g, mut c) = (Vec::new(), Vec::new());
        p.feed(input, &mut g, &mut c);
        (g, c)
    }

    #[test]
    fn plain_bytes_pass_through() {
        let mut p = EscapeParser::new();
        assert_eq!(
            run(&mut p, b"ls -l\r\x03\x1b[A"),
            (b"ls -l\r\x03\x1b[A".to_vec(), vec![])
        );
    }

    #[test]
    fn ctrl_a_x_quits_and_drops_the_rest() {
        let mut p = EscapeParser::new();
        assert_eq!(
            run(&mut p, b"ab\x01xcd"),
            (b"ab".to_vec(), vec![Command::Quit])
        );
    }

    #[test]
    fn the_escape_spans_reads() {
        let mut p = EscapeParser::new();
        assert_eq!(run(&mut p, b"a\x01"), (b"a".to_vec(), vec![]));
        assert_eq!(run(&mut p, b"x"), (vec![], vec![Command::Quit]));
    }

    #[test]
    fn double_escape_sends_one_and_others_are_dropped() {
        let mut p = EscapeParser::new();
        assert_eq!(
            run(&mut p, b"\x01\x01\x01q\x01h!"),
            (vec![ESCAPE, b'!'], vec![Command::Help])
        );
        // 'x' alone is just a letter.
        assert_eq!(run(&mut p, b"x"), (b"x".to_vec(), vec![]));
    }
}
