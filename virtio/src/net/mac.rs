//! MAC addresses: parsing `mac=` (six colon-separated hex octets), formatting, and the
//! random locally administered unicast address a device gets when none is given.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::str::FromStr;

use thiserror::Error;

/// Octets in a MAC address.
pub const MAC_LEN: usize = 6;
/// The I/G bit of the first octet: set for group (multicast and broadcast) addresses.
const GROUP_BIT: u8 = 0x01;
/// The U/L bit of the first octet: set for locally administered addresses.
const LOCAL_BIT: u8 = 0x02;
/// Where random addresses come from.
const RANDOM_SOURCE: &str = "/dev/urandom";

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; MAC_LEN]);

/// Why a `mac=` value is not a usable address.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MacError {
    /// Not six colon-separated pairs of hex digits.
    #[error("mac={0}: not an address of the form 52:54:00:12:34:56")]
    Syntax(String),
    /// A group address (I/G bit set): frames to it go to many stations, never one NIC.
    #[error("mac={0}: a multicast or broadcast address cannot be a NIC's address")]
    Multicast(String),
    /// All zeros.
    #[error("mac={0}: the all-zero address cannot be a NIC's address")]
    Zero(String),
}

impl MacAddr {
    /// A random locally administered unicast address.
    pub fn random() -> io::Result<MacAddr> {
        let mut b = [0u8; MAC_LEN];
        File::open(RANDOM_SOURCE)?.read_exact(&mut b)?;
        b[0] = (b[0] & !GROUP_BIT) | LOCAL_BIT;
        Ok(MacAddr(b))
    }

    /// The octets.
    pub fn octets(&self) -> [u8; MAC_LEN] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || MacError::Syntax(s.to_string());
        let mut b = [0u8; MAC_LEN];
        let mut parts = s.split(':');
        for octet in &mut b {
            let p = parts.next().ok_or_else(syntax)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *octet = u8::from_str_radix(p, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        if b[0] & GROUP_BIT != 0 {
            return Err(MacError::Multicast(s.to_string()));
        }
        if b == [0; MAC_LEN] {
            return Err(MacError::Zero(s.to_string()));
        }
        Ok(MacAddr(b))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
    }

    #[test]
    fn refuses_bad_addresses() {
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "5:54:00:12:34:56",
            "52:54:00:12:34:5g",
            "+5:54:00:12:34:56",
            "52:54:00:12:34:56:",
        ] {
            assert_eq!(
                bad.parse::<MacAddr>(),
                Err(MacError::Syntax(bad.into())),
                "{bad}"
            );
        }
        assert!(matches!(
            "ff:ff:ff:ff:ff:ff".parse::<MacAddr>(),
            Err(MacError::Multicast(_))
        ));
        assert!(matches!(
            "01:00:5e:00:00:01".parse::<MacAddr>(),
            Err(MacError::Multicast(_))
        ));
        assert!(matches!(
            "00:00:00:00:00:00".parse::<MacAddr>(),
            Err(MacError::Zero(_))
        ));
    }

    #[test]
    fn random_addresses_are_local_unicast() {
        for _ in 0..16 {
            let m = MacAddr::random().unwrap();
            assert_eq!(m.0[0] & GROUP_BIT, 0);
            assert_eq!(m.0[0] & LOCAL_BIT, LOCAL_BIT);
            assert_eq!(m.to_string().parse::<MacAddr>(), Ok(m));
        }
    }
}
