//! `gatehouse peer add` and `gatehouse peers`.
//!
//! `peer add` makes a WireGuard device for a user: a key pair (or only the
//! public key, so that the private key never leaves the laptop), the next
//! free tunnel address, a preshared key sealed in the state directory, the
//! `[[users]] wireguard` entry to paste into the config, and a wg-quick
//! client file (mode 0600) also shown as a terminal QR code for the mobile
//! apps. The daemon loads devices at start: restart it after editing the
//! config.
//!
//! `peers` lists the devices with last handshake, endpoint and bytes, from
//! the status file the running daemon rewrites every few seconds.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::keys::{self, b64, PrivateKey};
use super::status;
use crate::config::{in_range, Settings};
use crate::state::StateDir;

/// `gatehouse peer` subcommands.
#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Add a WireGuard device for a user: prints the config entry to paste
    /// and writes a wg-quick client file (also shown as a QR code).
    Add {
        /// User name, as in the config.
        user: String,
        /// The device's public key (`wg pubkey` output), when its private
        /// key should never leave it. Without this a key pair is generated.
        #[arg(long)]
        public_key: Option<String>,
        /// Where to write the client file (default: ./gh-USER.conf; wg-quick
        /// names the interface after the file, at most 15 characters).
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
        /// Endpoint clients connect to (default: `[wireguard] endpoint`).
        #[arg(long)]
        endpoint: Option<String>,
        /// Replace an existing client file.
        #[arg(long)]
        force: bool,
        /// Do not print the QR code.
        #[arg(long)]
        no_qr: bool,
    },
}

/// Addresses handed out by `peer add` (kept so that two devices added
/// before the config is edited do not get the same address).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Issued {
    devices: Vec<IssuedDevice>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IssuedDevice {
    user: String,
    public_key: String,
    address: IpAddr,
    created_unix: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs a `peer` subcommand.
pub fn run_peer(settings: &Settings, cmd: PeerCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PeerCommand::Add {
            user,
            public_key,
            out,
            endpoint,
            force,
            no_qr,
        } => add(
            settings,
            &user,
            public_key.as_deref(),
            out,
            endpoint,
            force,
            no_qr,
        ),
    }
}

fn add(
    settings: &Settings,
    user: &str,
    public_key: Option<&str>,
    out: Option<PathBuf>,
    endpoint: Option<String>,
    force: bool,
    no_qr: bool,
) -> anyhow::Result<ExitCode> {
    let Some(wg) = &settings.wireguard else {
        bail!(
            "{} has no [wireguard] table; add one (listen, address, endpoint) first",
            settings.source.display()
        );
    };
    let Some(u) = settings.users.iter().find(|u| u.name == user) else {
        bail!(
            "no user named {user:?} in {}; add a [[users]] entry first",
            settings.source.display()
        );
    };
    let endpoint = match endpoint.or_else(|| wg.endpoint.clone()) {
        Some(e) => e,
        None if !wg.listen.ip().is_unspecified() => wg.listen.to_string(),
        None => bail!(
            "[wireguard] listen is {} and there is no endpoint: set `endpoint = \"HOST:PORT\"` \
             (what clients connect to) in [wireguard], or pass --endpoint",
            wg.listen
        ),
    };
    let (private, public) = match public_key {
        Some(text) => {
            let Some(k) = keys::parse_b64(text) else {
                bail!("--public-key: not a WireGuard public key (32 bytes in base64, as `wg pubkey` prints)");
            };
            (None, k)
        }
        None => {
            let k = PrivateKey::generate().map_err(|_| anyhow::anyhow!("no system randomness"))?;
            let p = k.public();
            (Some(k), p)
        }
    };
    if let Some(owner) = settings
        .users
        .iter()
        .find(|u| u.wireguard.iter().any(|d| d.public_key == public))
    {
        bail!("this key is already a device of {}", owner.name);
    }
    let state = StateDir::open(&settings.gateway.state_dir)?;
    let gateway_key = PrivateKey::from_bytes(state.wireguard_private_key()?).public();
    let issued_path = state.wireguard_dir()?.join("issued.json");
    let mut issued: Issued = fs::read_to_string(&issued_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut taken: Vec<IpAddr> = settings
        .users
        .iter()
        .flat_map(|u| u.wireguard.iter().map(|d| d.address))
        .collect();
    taken.extend(issued.devices.iter().map(|d| d.address));
    taken.push(wg.address);
    let Some(address) = next_free(wg.address, wg.prefix_len, &taken) else {
        bail!("no free address left in {}/{}", wg.address, wg.prefix_len);
    };
    let out = out.unwrap_or_else(|| default_out(user));
    if out.exists() && !force {
        bail!(
            "{} exists; pass --force to replace it or --out to choose another file",
            out.display()
        );
    }
    // Wiped when this function returns, as is the client file's text.
    let psk = zeroize::Zeroizing::new(
        keys::random32().map_err(|_| anyhow::anyhow!("no system randomness"))?,
    );
    state.store_wireguard_psk(&public, &psk)?;
    issued.devices.push(IssuedDevice {
        user: user.to_string(),
        public_key: b64(&public),
        address,
        created_unix: now_unix(),
    });
    crate::state::write_secret_file(
        &issued_path,
        &serde_json::to_vec_pretty(&issued).unwrap_or_default(),
    )?;
    let client = zeroize::Zeroizing::new(client_config(
        user,
        private.as_ref(),
        address,
        &gateway_key,
        &psk,
        wg.address,
        &endpoint,
    ));
    write_client_file(&out, &client, force)?;

    let host_bits = if address.is_ipv4() { 32 } else { 128 };
    println!("New WireGuard device for {user}");
    println!("Public key: {}", b64(&public));
    println!("Address: {address}");
    println!();
    println!(
        "1. Add it to {user} in {} (the whole list, ready to paste):",
        settings.source.display()
    );
    println!();
    println!("[[users]]");
    println!("name = {}", toml_str(user));
    println!("wireguard = [");
    for d in &u.wireguard {
        println!(
            "  {{ public_key = \"{}\", address = \"{}\" }},",
            b64(&d.public_key),
            d.address
        );
    }
    println!(
        "  {{ public_key = \"{}\", address = \"{address}\" }},  # new",
        b64(&public)
    );
    println!("]");
    println!();
    println!("2. Restart gatehouse: it loads devices when it starts.");
    println!();
    println!(
        "3. Give {user} the client file {} (mode 0600{}):",
        out.display(),
        if private.is_some() {
            "; it holds the device's private key"
        } else {
            ""
        }
    );
    println!(
        "   wg-quick up {}   (it routes only {}/{host_bits} into the tunnel)",
        out.display(),
        wg.address
    );
    println!("   then: ssh -J {user}@{} LOGIN@TARGET", wg.address);
    if private.is_none() {
        println!();
        println!(
            "   The file has no PrivateKey: add the device's own private key under [Interface]."
        );
    } else if !no_qr {
        if let Ok(code) = qrcode::QrCode::new(client.as_bytes()) {
            let qr = code
                .render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build();
            println!();
            println!("   Or scan this with the WireGuard app:");
            println!();
            println!("{qr}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// `./gh-USER.conf`, the name short and plain enough for wg-quick.
fn default_out(user: &str) -> PathBuf {
    let safe: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_=+.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(12)
        .collect();
    PathBuf::from(format!("gh-{safe}.conf"))
}

/// The wg-quick file.
fn client_config(
    user: &str,
    private: Option<&PrivateKey>,
    address: IpAddr,
    gateway_key: &[u8; 32],
    psk: &[u8; 32],
    gateway: IpAddr,
    endpoint: &str,
) -> String {
    let bits = if address.is_ipv4() { 32 } else { 128 };
    let mut s = String::new();
    s.push_str(&format!(
        "# gatehouse: WireGuard device of {user} ({address})\n"
    ));
    s.push_str("[Interface]\n");
    match private {
        Some(k) => s.push_str(&format!("PrivateKey = {}\n", k.to_base64())),
        None => s.push_str("# PrivateKey = (this device's own private key)\n"),
    }
    s.push_str(&format!("Address = {address}/{bits}\n\n"));
    s.push_str("[Peer]\n");
    s.push_str(&format!("PublicKey = {}\n", b64(gateway_key)));
    s.push_str(&format!("PresharedKey = {}\n", b64(psk)));
    s.push_str(&format!("AllowedIPs = {gateway}/{bits}\n"));
    s.push_str(&format!("Endpoint = {endpoint}\n"));
    s.push_str("PersistentKeepalive = 25\n");
    s
}

fn write_client_file(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its mode on truncate: make sure it is 0600.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The first address in `net/len` after the network address that is not
/// taken (nor the broadcast address of an IPv4 range).
pub fn next_free(net: IpAddr, len: u8, taken: &[IpAddr]) -> Option<IpAddr> {
    match net {
        IpAddr::V4(n) => {
            let host_bits = 32u32.checked_sub(u32::from(len))?;
            let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
            let base = u32::from(n) & mask;
            let size = 1u64 << host_bits;
            (1..size.saturating_sub(1))
                .filter_map(|i| u32::try_from(i).ok())
                .map(|i| IpAddr::V4(Ipv4Addr::from(base | i)))
                .find(|a| !taken.contains(a) && in_range(*a, net, len))
        }
        IpAddr::V6(n) => {
            let host_bits = 128u32.checked_sub(u32::from(len))?;
            let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
            let base = u128::from(n) & mask;
            let limit: u128 = if host_bits >= 16 {
                1 << 16
            } else {
                1 << host_bits
            };
            (1..limit)
                .map(|i| IpAddr::V6(Ipv6Addr::from(base | i)))
                .find(|a| !taken.contains(a) && in_range(*a, net, len))
        }
    }
}

/// `gatehouse peers`: peers of the running daemon.
pub fn run_peers(settings: &Settings) -> anyhow::Result<ExitCode> {
    let Some(wg) = &settings.wireguard else {
        println!("WireGuard is not configured (no [wireguard] table).");
        return Ok(ExitCode::SUCCESS);
    };
    let path = status::path(&settings.gateway.state_dir);
    let st = status::read(&path);
    let now = now_unix();
    let live = st.as_ref().is_some_and(|s| {
        now.saturating_sub(s.written_unix) <= 10 && Path::new(&format!("/proc/{}", s.pid)).exists()
    });
    match &st {
        Some(s) if live => println!(
            "gatehouse (pid {}) on {} — tunnel address {}, public key {}, {} connection(s)",
            s.pid, s.listen, s.address, s.public_key, s.connections
        ),
        Some(s) => println!(
            "warning: the daemon's status is {} old (pid {}): is gatehouse running? Showing it anyway.",
            ago(now.saturating_sub(s.written_unix)),
            s.pid
        ),
        None => println!(
            "warning: no status from a running gatehouse ({} is missing); showing the configured devices.",
            path.display()
        ),
    }
    println!();
    let rows: Vec<[String; 8]> = settings
        .users
        .iter()
        .flat_map(|u| u.wireguard.iter().map(move |d| (u, d)))
        .map(|(u, d)| {
            let key = b64(&d.public_key);
            let p = st
                .as_ref()
                .and_then(|s| s.peers.iter().find(|p| p.public_key == key));
            match p {
                Some(p) => [
                    u.name.clone(),
                    d.address.to_string(),
                    key,
                    p.endpoint.clone().unwrap_or_else(|| "-".into()),
                    p.last_handshake_unix
                        .map(|t| format!("{} ago", ago(now.saturating_sub(t))))
                        .unwrap_or_else(|| "never".into()),
                    human_bytes(p.rx_bytes),
                    human_bytes(p.tx_bytes),
                    p.connections.to_string(),
                ],
                None => [
                    u.name.clone(),
                    d.address.to_string(),
                    key,
                    "-".into(),
                    "not loaded (restart gatehouse)".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ],
            }
        })
        .collect();
    let header = [
        "USER",
        "ADDRESS",
        "PUBLIC KEY",
        "ENDPOINT",
        "LAST HANDSHAKE",
        "RECEIVED",
        "SENT",
        "CONNS",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |r: &[String; 8]| {
        let cells: Vec<String> = r
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    };
    line(&header);
    for r in &rows {
        line(r);
    }
    if rows.is_empty() {
        println!(
            "(no devices: add one with `gatehouse peer add USER`; tunnel range {}/{})",
            wg.address, wg.prefix_len
        );
    }
    if let Some(s) = st.as_ref().filter(|_| live) {
        let c = &s.counters;
        println!();
        println!(
            "dropped since start: {} spoofed, {} not for the gateway, {} other protocols, {} malformed, {} invalid datagrams, {} unknown keys; {} connections refused by a cap; {} cookies sent",
            c.spoofed, c.not_for_gateway, c.protocol, c.malformed, c.invalid, c.unknown_peer, c.refused, c.cookies_sent
        );
        println!(
            "TCP loss recovery: {} segments resent ({} recoveries, {} probes)",
            c.tcp_resent, c.tcp_recoveries, c.tcp_probes
        );
        println!(
            "handshakes over budget ({}/s per source, {}/s in total): {} dropped",
            super::budget::PER_SOURCE_RATE,
            super::budget::GLOBAL_RATE,
            c.handshakes_limited
        );
        if c.misbooked > 0 {
            println!(
                "connections dropped because their packets came from another device or 4-tuple than booked: {}",
                c.misbooked
            );
        }
    }
    Ok(if live {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn ago(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        unit = u;
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
    }
    if unit == "B" {
        format!("{n} B")
    } else {
        format!("{v:.1} {unit}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn next_free_skips_taken_gateway_and_edges() {
        let net: IpAddr = "10.77.0.1".parse().unwrap();
        let taken: Vec<IpAddr> = vec![
            net,
            "10.77.0.2".parse().unwrap(),
            "10.77.0.4".parse().unwrap(),
        ];
        assert_eq!(
            next_free(net, 24, &taken),
            Some("10.77.0.3".parse().unwrap())
        );
        let all: Vec<IpAddr> = (1..=254)
            .map(|i| IpAddr::V4(Ipv4Addr::new(10, 77, 0, i)))
            .collect();
        assert_eq!(next_free(net, 24, &all), None);
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(next_free(v6, 64, &[v6]), Some("fd00::2".parse().unwrap()));
    }

    #[test]
    fn client_file_has_what_wg_quick_needs() {
        let k = PrivateKey::generate().unwrap();
        let text = client_config(
            "alice",
            Some(&k),
            "10.77.0.10".parse().unwrap(),
            &[7; 32],
            &[9; 32],
            "10.77.0.1".parse().unwrap(),
            "gw.example.org:51820",
        );
        for want in [
            format!("PrivateKey = {}", k.to_base64()),
            "Address = 10.77.0.10/32".into(),
            format!("PublicKey = {}", b64(&[7; 32])),
            format!("PresharedKey = {}", b64(&[9; 32])),
            "AllowedIPs = 10.77.0.1/32".into(),
            "Endpoint = gw.example.org:51820".into(),
            "PersistentKeepalive = 25".into(),
        ] {
            assert!(text.contains(&want), "{want} missing in\n{text}");
        }
    }

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(600), "10m");
        assert!(
            default_out("a-very-long-user-name").to_string_lossy().len() <= "gh-.conf".len() + 12
        );
    }
}
