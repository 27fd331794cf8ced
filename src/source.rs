//! Who connected, as a type. Every listener (plain TCP, the WireGuard
//! tunnel) describes the far end of a connection with one [`Source`], and
//! every service (the SSH server, later the database proxies) reads it
//! through typed accessors. It exists so that nothing formats "who
//! connected" into a string and parses it back: the string form
//! ([`Source`]'s `Display`) is only what the audit log, MFA leases and
//! recordings *name* the source, and it is exactly what it always was
//! (`ADDR` for an address, `wg:KEY@ADDR` for a WireGuard device).
//!
//! This is core: it imports no service and no listener.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;

/// Where a connection came from, whichever listener accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A plain TCP connection from this address (and port).
    Address(SocketAddr),
    /// A connection that came through the WireGuard tunnel from a
    /// configured device: its identity is cryptographic.
    Device(Device),
}

/// The WireGuard device a tunnelled connection came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The user the device belongs to (from the config).
    pub user: String,
    /// The device's public key.
    pub public_key: [u8; 32],
    /// The device's tunnel address, bound to its key: a packet from any
    /// other address is dropped by the tunnel.
    pub tunnel_address: IpAddr,
    /// The connection's source port inside the tunnel.
    pub port: u16,
    /// The UDP endpoint the device's packets came from, when known.
    pub endpoint: Option<SocketAddr>,
}

impl Device {
    /// The public key in base64, as `wg` prints it.
    pub fn public_key_b64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.public_key)
    }

    /// The connection's source address inside the tunnel.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.tunnel_address, self.port)
    }
}

impl Source {
    /// The source address of the connection (for a device, its tunnel
    /// address and port): what lockouts and connection caps count.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Source::Address(a) => *a,
            Source::Device(d) => d.addr(),
        }
    }

    /// The source IP address (for a device, its tunnel address).
    pub fn ip(&self) -> IpAddr {
        self.addr().ip()
    }

    /// The WireGuard device, for a tunnelled connection.
    pub fn device(&self) -> Option<&Device> {
        match self {
            Source::Address(_) => None,
            Source::Device(d) => Some(d),
        }
    }

    /// The user whose device this connection came through, if any.
    pub fn device_user(&self) -> Option<&str> {
        self.device().map(|d| d.user.as_str())
    }

    /// What a recording names as its WireGuard peer: `KEY@ADDR` (the
    /// device's base64 public key and tunnel address), None for a plain
    /// connection.
    pub fn wireguard_peer(&self) -> Option<String> {
        self.device()
            .map(|d| format!("{}@{}", d.public_key_b64(), d.tunnel_address))
    }
}

impl fmt::Display for Source {
    /// What the audit log and MFA leases name as the source: `wg:KEY@ADDR`
    /// for a device, the IP address otherwise (no port).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Address(a) => write!(f, "{}", a.ip()),
            Source::Device(d) => write!(f, "wg:{}@{}", d.public_key_b64(), d.tunnel_address),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> Source {
        Source::Device(Device {
            user: "alice".into(),
            public_key: [7u8; 32],
            tunnel_address: "10.77.0.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            port: 40000,
            endpoint: Some(SocketAddr::from(([192, 0, 2, 1], 51820))),
        })
    }

    #[test]
    fn device_source_displays_as_the_old_wg_key_at_address_string() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(device().to_string(), format!("wg:{key}@10.77.0.2"));
    }

    #[test]
    fn device_source_gives_its_peer_key_and_user_without_parsing() {
        let s = device();
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(s.wireguard_peer(), Some(format!("{key}@10.77.0.2")));
        assert_eq!(s.device().map(|d| d.public_key), Some([7u8; 32]));
        assert_eq!(s.device_user(), Some("alice"));
        assert_eq!(s.ip(), IpAddr::from([10, 77, 0, 2]));
        assert_eq!(s.addr(), SocketAddr::from(([10, 77, 0, 2], 40000)));
    }

    #[test]
    fn address_source_displays_as_the_ip_alone_and_has_no_device() {
        let v4 = Source::Address(SocketAddr::from(([192, 0, 2, 9], 50022)));
        assert_eq!(v4.to_string(), "192.0.2.9");
        assert_eq!(v4.wireguard_peer(), None);
        assert!(v4.device().is_none());
        let v6 = Source::Address("[2001:db8::1]:22".parse().unwrap_or(v4.addr()));
        assert_eq!(v6.to_string(), "2001:db8::1");
    }
}
