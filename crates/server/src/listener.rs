//! Where the service listens and whom it believes there: `--listen` (a TCP address, a Unix
//! socket `unix:/path`, or one of each), the socket file (`--listen-mode`; a stale file left by
//! a dead process replaced, a live socket or any other file refused, removed on a clean stop),
//! and the `--trusted-proxy` entries (networks, or `unix`: whatever connects to the socket).
//!
//! A connection on the Unix socket has no peer address. Unless `--trusted-proxy unix` is given,
//! a request on it has no client address at all: its forwarding header is ignored, a
//! `client-ip` caveat fails, and the per-address limits do not count it (docs/API.md).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// What `--listen` names: a TCP address (`127.0.0.1:8080`; port 0 picks a free port) or a Unix
/// socket (`unix:/run/tessera/tessera.sock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address, `host:port`.
    Tcp(String),
    /// The path of a Unix domain socket.
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("unix:") {
            Some("") => Err("give the socket's path after unix:, e.g. unix:/run/tessera/tessera.sock".into()),
            Some(path) if path.starts_with('@') => Err(format!(
                "unix:{path}: abstract sockets are not supported (no file mode guards them): give a file path"
            )),
            Some(path)
                if Path::new(path).file_name().is_none_or(|n| n.to_string_lossy().trim().is_empty()) =>
            {
                Err(format!("unix:{path}: give the socket's path, ending in a file name"))
            }
            Some(path) => Ok(Listen::Unix(PathBuf::from(path))),
            None if s.is_empty() => Err("give an address (127.0.0.1:8080) or unix:PATH".into()),
            None => Ok(Listen::Tcp(s.to_owned())),
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => f.write_str(addr),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The TCP address and the socket path of a `--listen` list: at most one of each.
pub(crate) fn split(listen: &[Listen]) -> Result<(Option<&str>, Option<&Path>), String> {
    let (mut tcp, mut unix) = (None, None);
    for l in listen {
        match l {
            Listen::Tcp(a) if tcp.is_some() => {
                return Err(format!(
                    "--listen: one TCP address at most (given {} and {a})",
                    tcp.unwrap_or("")
                ))
            }
            Listen::Unix(_) if unix.is_some() => return Err("--listen: one Unix socket at most".into()),
            Listen::Tcp(a) => tcp = Some(a.as_str()),
            Listen::Unix(p) => unix = Some(p.as_path()),
        }
    }
    if tcp.is_none() && unix.is_none() {
        return Err("--listen: give an address (127.0.0.1:8080) or unix:PATH".into());
    }
    Ok((tcp, unix))
}

/// A `--trusted-proxy` entry: whose forwarding header is believed about the client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustedProxy {
    /// Peers in this network (`127.0.0.1/32`, `10.0.0.0/8`, `::1/128`).
    Network(IpNet),
    /// Whatever connects to the Unix socket (`--listen unix:PATH`): who may is decided by the
    /// socket file's mode and its directory's permissions.
    UnixSocket,
}

impl TrustedProxy {
    /// Whether a peer at `ip` is trusted (never for [`TrustedProxy::UnixSocket`], which has no
    /// address).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match self {
            TrustedProxy::Network(net) => net.contains(ip),
            TrustedProxy::UnixSocket => false,
        }
    }

    /// The network, for an entry that is one.
    pub fn network(&self) -> Option<IpNet> {
        match self {
            TrustedProxy::Network(net) => Some(*net),
            TrustedProxy::UnixSocket => None,
        }
    }
}

impl std::str::FromStr for TrustedProxy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "unix" {
            return Ok(TrustedProxy::UnixSocket);
        }
        s.parse().map(TrustedProxy::Network).map_err(|_| {
            format!(
                "\"{s:.64}\" is neither a network (10.0.0.0/8, 127.0.0.1/32) nor unix (the peer of the \
                 --listen unix: socket)"
            )
        })
    }
}

impl std::fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrustedProxy::Network(net) => net.fmt(f),
            TrustedProxy::UnixSocket => f.write_str("unix"),
        }
    }
}

/// The socket file's mode when `--listen-mode` is not given.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// `--listen-mode`: permission bits in octal (`0660`, `660`, `0o660`), at most `0777`.
pub(crate) fn socket_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && digits.len() <= 4 && mode <= 0o777 => Ok(mode),
        _ => Err("permission bits in octal, at most 0777, e.g. 0660".into()),
    }
}

#[cfg(unix)]
mod socket;
#[cfg(unix)]
pub(crate) use socket::bind_unix;

/// The socket on a system without Unix sockets: none can be made.
#[cfg(not(unix))]
pub(crate) enum UnixSocket {}

#[cfg(not(unix))]
pub(crate) fn bind_unix(path: &Path, _mode: u32) -> Result<UnixSocket, String> {
    Err(format!("unix:{}: Unix sockets need a Unix system", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_values_parse() {
        assert_eq!("127.0.0.1:0".parse(), Ok(Listen::Tcp("127.0.0.1:0".into())));
        assert_eq!("unix:/run/t.sock".parse(), Ok(Listen::Unix("/run/t.sock".into())));
        assert!("unix:".parse::<Listen>().unwrap_err().contains("path after unix:"));
        assert!("".parse::<Listen>().is_err());
        let both = ["127.0.0.1:1".parse().unwrap(), "unix:/s".parse().unwrap()];
        assert_eq!(split(&both), Ok((Some("127.0.0.1:1"), Some(Path::new("/s")))));
        let two = ["127.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()];
        assert!(split(&two).unwrap_err().contains("one TCP address at most"));
        let socks = ["unix:/a".parse().unwrap(), "unix:/b".parse().unwrap()];
        assert!(split(&socks).unwrap_err().contains("one Unix socket at most"));
        assert!(split(&[]).is_err());
        assert_eq!(Listen::Unix("/s".into()).to_string(), "unix:/s");
    }

    #[test]
    fn trusted_proxies_parse() {
        assert_eq!("unix".parse(), Ok(TrustedProxy::UnixSocket));
        let net: TrustedProxy = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(&"10.1.2.3".parse().unwrap()));
        assert!(!TrustedProxy::UnixSocket.contains(&"127.0.0.1".parse().unwrap()));
        // Only the exact word: no address or other spelling becomes the socket.
        for bad in ["Unix", "unix:", "unix:/s", "127.0.0.1", "*"] {
            assert!(bad.parse::<TrustedProxy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn socket_modes_parse() {
        assert_eq!(socket_mode("0660"), Ok(0o660));
        assert_eq!(socket_mode("600"), Ok(0o600));
        assert_eq!(socket_mode("0o666"), Ok(0o666));
        for bad in ["", "0o", "1777", "04777", "888", "rw-rw----", "00660"] {
            assert!(socket_mode(bad).is_err(), "{bad}");
        }
    }
}
