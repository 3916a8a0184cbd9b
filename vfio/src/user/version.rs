//! VERSION negotiation: the request irvmm sends (major 0, minor 1, its limits as JSON)
//! and a lenient but safe reading of the server's answer (spec defaults for whatever it
//! leaves out, errors for what has the wrong type). The JSON comes from the server, so it
//! is bounded by the reply size check and parsed by `serde_json`, whose recursion limit
//! turns absurd nesting into an error.

use crate::user::protocol::{fixed, DecodeError};

/// The protocol major version irvmm speaks.
pub const VERSION_MAJOR: u16 = 0;
/// The protocol minor version irvmm proposes.
pub const VERSION_MINOR: u16 = 1;

/// Fixed part of a VERSION payload: `u16 major; u16 minor;` (JSON data follows).
pub const VERSION_FIXED_SIZE: usize = 4;
/// Largest version data (JSON) irvmm accepts from a server.
pub const MAX_VERSION_DATA: usize = 64 << 10;
/// Default `max_msg_fds` when the peer does not say (spec).
pub const DEFAULT_MAX_MSG_FDS: u64 = 1;
/// Default `max_data_xfer_size` when the peer does not say (spec: 1 MiB).
pub const DEFAULT_MAX_DATA_XFER: u64 = 1 << 20;

/// The VERSION request payload: major, minor, then the capabilities JSON with its NUL.
pub fn version_request(max_msg_fds: u32, max_data_xfer_size: u32) -> Vec<u8> {
    let json = format!(
        "{{\"capabilities\":{{\"max_msg_fds\":{max_msg_fds},\"max_data_xfer_size\":{max_data_xfer_size}}}}}"
    );
    let mut out = Vec::with_capacity(VERSION_FIXED_SIZE + json.len() + 1);
    out.extend_from_slice(&VERSION_MAJOR.to_ne_bytes());
    out.extend_from_slice(&VERSION_MINOR.to_ne_bytes());
    out.extend_from_slice(json.as_bytes());
    out.push(0);
    out
}

/// A server's VERSION reply, split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerVersion<'a> {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// The version data (JSON, possibly NUL-terminated, possibly empty).
    pub data: &'a [u8],
}

/// Splits a VERSION reply payload.
pub fn parse_version(payload: &[u8]) -> Result<ServerVersion<'_>, DecodeError> {
    let f = fixed("VERSION reply", payload, VERSION_FIXED_SIZE)?;
    Ok(ServerVersion {
        major: u16::from_ne_bytes([f[0], f[1]]),
        minor: u16::from_ne_bytes([f[2], f[3]]),
        data: payload.get(VERSION_FIXED_SIZE..).unwrap_or_default(),
    })
}

/// The limits a server announced (spec defaults where it said nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCaps {
    /// File descriptors it accepts in one message.
    pub max_msg_fds: u64,
    /// Largest data count it accepts in one read or write.
    pub max_data_xfer_size: u64,
}

impl Default for PeerCaps {
    fn default() -> Self {
        PeerCaps {
            max_msg_fds: DEFAULT_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER,
        }
    }
}

/// Parses the version data leniently: everything after the first NUL is ignored, empty
/// data or a missing `capabilities` object or field takes the spec's default, unknown
/// fields are ignored. Wrong types (a string where a count belongs, a negative or
/// fractional count) and text that is not JSON are errors.
pub fn parse_capabilities(data: &[u8]) -> Result<PeerCaps, DecodeError> {
    let text = match data.iter().position(|&b| b == 0) {
        Some(nul) => data.get(..nul).unwrap_or_default(),
        None => data,
    };
    let text = std::str::from_utf8(text).map_err(|_| DecodeError::NotUtf8)?;
    let mut caps = PeerCaps::default();
    if text.trim().is_empty() {
        return Ok(caps);
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    let top = value
        .as_object()
        .ok_or_else(|| DecodeError::Json("not a JSON object".into()))?;
    let Some(c) = top.get("capabilities") else {
        return Ok(caps);
    };
    let c = c
        .as_object()
        .ok_or_else(|| DecodeError::Json("\"capabilities\" is not an object".into()))?;
    let count = |name: &str| -> Result<Option<u64>, DecodeError> {
        match c.get(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                DecodeError::Json(format!("\"{name}\" is not a non-negative integer: {v}"))
            }),
        }
    };
    if let Some(n) = count("max_msg_fds")? {
        caps.max_msg_fds = n;
    }
    if let Some(n) = count("max_data_xfer_size")? {
        caps.max_data_xfer_size = n;
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_request_is_the_documented_json() {
        let p = version_request(8, 1 << 20);
        assert_eq!(&p[..4], &[0, 0, 1, 0]);
        assert_eq!(p.last(), Some(&0));
        let json = std::str::from_utf8(&p[4..p.len() - 1]).unwrap();
        assert_eq!(
            json,
            r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}}"#
        );
        assert_eq!(
            parse_capabilities(&p[4..]),
            Ok(PeerCaps {
                max_msg_fds: 8,
                max_data_xfer_size: 1 << 20
            })
        );
    }

    #[test]
    fn capabilities_are_lenient_but_typed() {
        let d = PeerCaps::default();
        assert_eq!(parse_capabilities(b""), Ok(d));
        assert_eq!(parse_capabilities(b"\0garbage"), Ok(d));
        assert_eq!(parse_capabilities(b"{}"), Ok(d));
        assert_eq!(
            parse_capabilities(
                br#"{"capabilities":{"max_msg_fds":16,"migration":{"pgsize":4096},"x":[1]}}"#
            ),
            Ok(PeerCaps {
                max_msg_fds: 16,
                ..d
            })
        );
        // No NUL terminator: still parsed.
        assert_eq!(
            parse_capabilities(br#"{"capabilities":{"max_data_xfer_size":4096}}"#),
            Ok(PeerCaps {
                max_data_xfer_size: 4096,
                ..d
            })
        );
        for bad in [
            &br#"{"capabilities":{"max_msg_fds":-1}}"#[..],
            br#"{"capabilities":{"max_msg_fds":"8"}}"#,
            br#"{"capabilities":{"max_data_xfer_size":1.5}}"#,
            br#"{"capabilities":[]}"#,
            br#"[1,2]"#,
            br#"{"capabilities":"#,
            b"\xff\xfe",
        ] {
            assert!(parse_capabilities(bad).is_err(), "{bad:?}");
        }
        // Deep nesting is refused by serde_json's recursion limit, not a stack overflow.
        let deep = "[".repeat(100_000);
        assert!(parse_capabilities(deep.as_bytes()).is_err());
    }

    #[test]
    fn version_reply_splits() {
        assert!(parse_version(&[0, 0, 1]).is_err());
        let v = parse_version(&[1, 0, 2, 0, b'{']).unwrap();
        assert_eq!((v.major, v.minor, v.data), (1, 2, &b"{"[..]));
        assert_eq!(parse_version(&[0, 0, 1, 0]).unwrap().data, b"");
    }
}
