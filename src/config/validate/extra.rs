//! Validation of `[recordings]`, `[wireguard]` and `users[].wireguard`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use toml::Spanned;

use super::super::raw::{index_path, key_path, RawRecordings, RawUser, RawWgPeer, RawWireGuard};
use super::super::{RecordingSettings, WireGuardPeer, WireGuardSettings};
use super::Checker;

const DEFAULT_RETENTION: Duration = Duration::from_secs(400 * 24 * 3600);
const DEFAULT_MIN_FREE: u64 = 256 * 1024 * 1024;
const DEFAULT_WG_PER_PEER: usize = 64;
const DEFAULT_WG_TOTAL: usize = 4096;

/// Parses "256MiB", "1GiB", "500MB", "4096" (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size; write e.g. \"256MiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit `{other}`; use B, KiB, MiB, GiB, TiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Whether `text` is an age recipient gatehouse can seal to.
pub fn parse_recipient(text: &str) -> Result<(), String> {
    let t = text.trim();
    if t.starts_with("age1") {
        return t
            .parse::<age::x25519::Recipient>()
            .map(|_| ())
            .map_err(|e| format!("not a valid age X25519 recipient ({e})"));
    }
    if t.starts_with("ssh-ed25519 ") || t.starts_with("ssh-rsa ") {
        return t
            .parse::<age::ssh::Recipient>()
            .map(|_| ())
            .map_err(|_| "not a valid ssh public key for age".to_string());
    }
    Err("expected an age recipient (`age1...`) or an `ssh-ed25519 AAAA...` public key".into())
}

impl Checker<'_, '_> {
    pub(super) fn recordings(
        &mut self,
        r: &RawRecordings,
        state_dir: Option<&Path>,
    ) -> Option<RecordingSettings> {
        let dir = match &r.dir {
            Some(d) if d.get_ref().is_empty() => {
                self.error(d.span(), "recordings.dir", "must not be empty");
                None
            }
            Some(d) => Some(PathBuf::from(d.get_ref())),
            None => state_dir.map(|s| s.join("recordings")),
        };
        let recipients = r.recipients.as_ref().and_then(|list| {
            if list.get_ref().is_empty() {
                self.error(
                    list.span(),
                    "recordings.recipients",
                    "must list at least one auditor key: there is no unrecorded mode",
                );
                return None;
            }
            self.each(
                list,
                "recordings.recipients",
                |c, item, path| match parse_recipient(item.get_ref()) {
                    Ok(()) => {
                        if super::super::is_sample_recipient(item.get_ref()) {
                            c.warnings.push(super::super::raw::Diag {
                                span: Some(item.span()),
                                path,
                                message: "this is config.example.toml's sample auditor key: nobody holds its private key, so recordings sealed to it could never be read; list your auditors' keys (`gatehouse run` refuses to start with it)".into(),
                            });
                        }
                        Some(item.get_ref().trim().to_string())
                    }
                    Err(m) => {
                        c.error(item.span(), path, m);
                        None
                    }
                },
            )
        });
        let retention = self.duration(
            r.retention.as_ref(),
            "recordings.retention",
            DEFAULT_RETENTION,
            false,
        );
        let min_free_bytes = match &r.min_free {
            None => Some(DEFAULT_MIN_FREE),
            Some(v) => match parse_size(v.get_ref()) {
                Ok(n) => Some(n),
                Err(m) => {
                    self.error(v.span(), "recordings.min_free", m);
                    None
                }
            },
        };
        Some(RecordingSettings {
            dir: dir?,
            recipients: recipients?,
            retention: retention?,
            min_free_bytes: min_free_bytes?,
        })
    }

    pub(super) fn wireguard(&mut self, w: &RawWireGuard) -> Option<WireGuardSettings> {
        let listen = w
            .listen
            .as_ref()
            .and_then(|l| match l.get_ref().parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.error(
                        l.span(),
                        "wireguard.listen",
                        format!(
                            "`{}` is not a socket address; write e.g. \"0.0.0.0:51820\"",
                            l.get_ref()
                        ),
                    );
                    None
                }
            });
        let address = w
            .address
            .as_ref()
            .and_then(|a| match parse_cidr(a.get_ref()) {
                Ok(x) => Some(x),
                Err(m) => {
                    self.error(a.span(), "wireguard.address", m);
                    None
                }
            });
        let endpoint = match &w.endpoint {
            None => Some(None),
            Some(e) => {
                let text = e.get_ref();
                let ok = text
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if ok {
                    Some(Some(text.clone()))
                } else {
                    self.error(
                        e.span(),
                        "wireguard.endpoint",
                        "write HOST:PORT, e.g. \"gw.example.org:51820\"",
                    );
                    None
                }
            }
        };
        let per_peer = self.positive(
            w.max_connections_per_peer.as_ref(),
            "wireguard.max_connections_per_peer",
            DEFAULT_WG_PER_PEER,
        );
        let total = self.positive(
            w.max_connections.as_ref(),
            "wireguard.max_connections",
            DEFAULT_WG_TOTAL,
        );
        let (address, prefix_len) = address?;
        Some(WireGuardSettings {
            listen: listen?,
            address,
            prefix_len,
            endpoint: endpoint?,
            max_connections_per_peer: per_peer?,
            max_connections: total?,
        })
    }

    /// Every user's devices: keys 32-byte base64, addresses inside the range,
    /// unique, and not the gateway's. `None` if anything is wrong.
    pub(super) fn wireguard_peers(
        &mut self,
        users: &[Option<Spanned<RawUser>>],
        wg: Option<&WireGuardSettings>,
        configured: bool,
    ) -> Option<Vec<Vec<WireGuardPeer>>> {
        let mut ok = true;
        let mut keys: HashMap<[u8; 32], usize> = HashMap::new();
        let mut addrs: HashMap<IpAddr, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, u) in users.iter().enumerate() {
            let mut devices = Vec::new();
            let Some(u) = u else {
                out.push(devices);
                continue;
            };
            let base = key_path(&index_path("users", i), "wireguard");
            for (j, p) in u.get_ref().wireguard.iter().enumerate() {
                let Some(p) = p else {
                    ok = false;
                    continue;
                };
                let path = index_path(&base, j);
                if !configured {
                    self.error(
                        p.span(),
                        path,
                        "a WireGuard device needs a [wireguard] table",
                    );
                    ok = false;
                    continue;
                }
                match self.wg_peer(p.get_ref(), &path, wg, &mut keys, &mut addrs) {
                    Some(d) => devices.push(d),
                    None => ok = false,
                }
            }
            out.push(devices);
        }
        ok.then_some(out)
    }

    fn wg_peer(
        &mut self,
        p: &RawWgPeer,
        path: &str,
        wg: Option<&WireGuardSettings>,
        keys: &mut HashMap<[u8; 32], usize>,
        addrs: &mut HashMap<IpAddr, usize>,
    ) -> Option<WireGuardPeer> {
        let key = p.public_key.as_ref().and_then(|k| {
            let kpath = key_path(path, "public_key");
            let decoded = base64::engine::general_purpose::STANDARD.decode(k.get_ref().trim());
            let Ok(bytes) = decoded
                .map_err(|_| ())
                .and_then(|b| <[u8; 32]>::try_from(b).map_err(|_| ()))
            else {
                self.error(
                    k.span(),
                    kpath,
                    "not a WireGuard public key (32 bytes in base64, as `wg pubkey` prints)",
                );
                return None;
            };
            if let Some(line) = keys.get(&bytes) {
                self.error(
                    k.span(),
                    kpath,
                    format!("this key is already a device on line {line}"),
                );
                return None;
            }
            keys.insert(bytes, self.lines.line(&k.span()));
            Some(bytes)
        });
        let address = p.address.as_ref().and_then(|a| {
            let apath = key_path(path, "address");
            let Ok(ip) = a.get_ref().trim().parse::<IpAddr>() else {
                self.error(
                    a.span(),
                    apath,
                    format!("`{}` is not an IP address", a.get_ref()),
                );
                return None;
            };
            if let Some(wg) = wg {
                if ip == wg.address {
                    self.error(a.span(), apath, "this is the gateway's own tunnel address");
                    return None;
                }
                if !in_range(ip, wg.address, wg.prefix_len) {
                    self.error(
                        a.span(),
                        apath,
                        format!(
                            "{ip} is outside the tunnel range {}/{}",
                            wg.address, wg.prefix_len
                        ),
                    );
                    return None;
                }
            }
            if let Some(line) = addrs.get(&ip) {
                self.error(
                    a.span(),
                    apath,
                    format!("{ip} is already a device's address on line {line}"),
                );
                return None;
            }
            addrs.insert(ip, self.lines.line(&a.span()));
            Some(ip)
        });
        Some(WireGuardPeer {
            public_key: key?,
            address: address?,
        })
    }
}

/// "10.77.0.1/24" -> (address, prefix length).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` needs a prefix length, e.g. \"10.77.0.1/24\""))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("`{ip}` is not an IP address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("`{len}` is not a prefix length"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len >= max {
        return Err(format!(
            "prefix length must be below {max}, leaving room for peers"
        ));
    }
    Ok((ip, len))
}

/// Whether `ip` is inside `net/len`.
pub fn in_range(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10"), Ok(10));
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn cidr_and_range() {
        let (a, l) = parse_cidr("10.77.0.1/24").unwrap();
        assert!(in_range("10.77.0.10".parse().unwrap(), a, l));
        assert!(!in_range("10.78.0.10".parse().unwrap(), a, l));
        assert!(parse_cidr("10.77.0.1").is_err());
        assert!(parse_cidr("10.77.0.1/32").is_err());
        let (a6, l6) = parse_cidr("fd00::1/64").unwrap();
        assert!(in_range("fd00::5".parse().unwrap(), a6, l6));
    }

    #[test]
    fn recipients_parse() {
        assert!(
            parse_recipient("age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj")
                .is_ok()
        );
        assert!(parse_recipient("age1notvalid").is_err());
        assert!(parse_recipient(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkWzpKc3ReKq2ByaVuIZTb9iZPOX5Dv0o1bJOSm/ozO"
        )
        .is_ok());
        assert!(parse_recipient("hello").is_err());
    }
}
