use std::fmt;
use std::path::PathBuf;

use crate::Error;

/// Version of the go-plugin handshake format itself (first field).
pub const CORE_PROTOCOL_VERSION: u32 = 1;
/// Version of the Runner contract (second field).
pub const APP_PROTOCOL_VERSION: u32 = 1;

/// The one line a plugin prints on stdout: `1|1|unix|<socket path>|grpc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub socket: PathBuf,
}

impl Handshake {
    /// Parses and validates a handshake line (trailing newline allowed).
    pub fn parse(line: &str) -> Result<Self, Error> {
        let line = line.trim_end_matches(['\r', '\n']);
        let malformed = |reason: &str| Error::MalformedHandshake {
            line: line.to_owned(),
            reason: reason.to_owned(),
        };
        let parts: Vec<&str> = line.split('|').collect();
        let [core, app, network, address, protocol] = parts.as_slice() else {
            return Err(malformed(
                "expected 5 fields `core|app|network|address|protocol`",
            ));
        };
        let core: u32 = core
            .parse()
            .map_err(|_| malformed("core protocol version is not a number"))?;
        if core != CORE_PROTOCOL_VERSION {
            return Err(Error::ProtocolVersion {
                what: "handshake",
                expected: CORE_PROTOCOL_VERSION,
                got: core,
            });
        }
        let app: u32 = app
            .parse()
            .map_err(|_| malformed("app protocol version is not a number"))?;
        if app != APP_PROTOCOL_VERSION {
            return Err(Error::ProtocolVersion {
                what: "runner",
                expected: APP_PROTOCOL_VERSION,
                got: app,
            });
        }
        if *network != "unix" {
            return Err(malformed("network must be `unix`"));
        }
        if !address.starts_with('/') {
            return Err(malformed("socket path must be absolute"));
        }
        if *protocol != "grpc" {
            return Err(malformed("protocol must be `grpc`"));
        }
        Ok(Self {
            socket: PathBuf::from(address),
        })
    }
}

impl fmt::Display for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{}|grpc",
            self.socket.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Handshake {
            socket: PathBuf::from("/tmp/x/plugin.sock"),
        };
        assert_eq!(h.to_string(), "1|1|unix|/tmp/x/plugin.sock|grpc");
        assert_eq!(Handshake::parse(&format!("{h}\n")).unwrap(), h);
    }

    #[test]
    fn rejects_bad_lines() {
        for (line, want) in [
            ("hello", "5 fields"),
            ("1|1|tcp|127.0.0.1:1|grpc", "network"),
            ("1|1|unix|relative.sock|grpc", "absolute"),
            ("1|1|unix|/a.sock|netrpc", "grpc"),
            ("x|1|unix|/a.sock|grpc", "not a number"),
        ] {
            let err = Handshake::parse(line).unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
        assert!(matches!(
            Handshake::parse("1|2|unix|/a.sock|grpc"),
            Err(Error::ProtocolVersion {
                what: "runner",
                expected: 1,
                got: 2
            })
        ));
        assert!(matches!(
            Handshake::parse("2|1|unix|/a.sock|grpc"),
            Err(Error::ProtocolVersion {
                what: "handshake",
                ..
            })
        ));
    }
}
