//! WireGuard throughput benchmark (run by `bench/wireguard.sh`; ignored in
//! the normal test run): TCP through gatehouse's userspace tunnel to an
//! in-process sink/source, against `wireguard-go` to `wireguard-go` with
//! kernel TCP, over the same veth pair, each direction.
//!
//! Both sides run on this machine: the client is a kernel TCP socket
//! (python3) behind `wireguard-go` in a client namespace; the server is
//! either gatehouse's tunnel ([`gatehouse::tunnel::Tunnel`] in this
//! process, in the gateway namespace) or a second `wireguard-go` there with
//! a kernel TCP sink. Every run is bounded in bytes and time.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::netns::{self, in_ns, WgClient};
use common::ChildGuard;
use gatehouse::tunnel::{self, keys, PeerConfig, Service, Tunnel, TunnelConfig, TunnelStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SINK_PORT: u16 = 5001;
const SOURCE_PORT: u16 = 5002;

/// The client side: a kernel TCP socket sending or receiving N bytes.
const CLIENT_PY: &str = r#"
import socket, sys, time
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection((host, port), timeout=60)
buf = bytearray(1 << 20)
mv = memoryview(buf)
t = time.perf_counter()
left = n
if mode == "up":
    while left:
        k = min(left, len(buf))
        s.sendall(mv[:k])
        left -= k
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # the server closes after reading everything
else:
    while left:
        k = s.recv_into(buf, min(left, len(buf)))
        if not k:
            sys.exit("short read")
        left -= k
dt = time.perf_counter() - t
print(f"{n * 8 / dt / 1e6:.0f}")
"#;

/// The kernel-TCP server for the wireguard-go baseline.
const SERVER_PY: &str = r#"
import socket, sys, threading
host = sys.argv[1]
def sink(c):
    buf = bytearray(1 << 20)
    while c.recv_into(buf):
        pass
    c.close()
def source(c):
    buf = bytes(1 << 20)
    try:
        while True:
            c.sendall(buf)
    except OSError:
        pass
    c.close()
def serve(port, f):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((host, port))
    l.listen(16)
    while True:
        c, _ = l.accept()
        threading.Thread(target=f, args=(c,), daemon=True).start()
threading.Thread(target=serve, args=(5001, sink), daemon=True).start()
serve(5002, source)
"#;

/// Runs the python client in `ns`; Mbit/s.
fn measure(ns: &str, dir: &std::path::Path, mode: &str, host: &str, port: u16, bytes: u64) -> f64 {
    let script = dir.join("client.py");
    std::fs::write(&script, CLIENT_PY).expect("write client.py");
    let mut c = Command::new("python3");
    c.arg(&script)
        .args([mode, host, &port.to_string(), &bytes.to_string()]);
    let out = common::run_with_timeout(&mut in_ns(ns, &c), Duration::from_secs(120));
    let Some(out) = out else {
        let status = std::fs::read_to_string(dir.join("status.json")).unwrap_or_default();
        panic!("benchmark client timed out; tunnel status:\n{status}");
    };
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("Mbit/s from the client")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[test]
#[ignore = "benchmark: run bench/wireguard.sh"]
fn wireguard_tcp_throughput() {
    let Some(lab) = netns::enter("wireguard_tcp_throughput", 1) else {
        return;
    };
    if !common::require_tools(&["python3"]) {
        return;
    }
    let bytes: u64 = std::env::var("GH_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512 << 20);
    let runs: usize = std::env::var("GH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let client_ns = lab.client(0).to_string();
    let gw_ip = lab.gateway_ip(0);

    // gatehouse: the tunnel in this process with a sink and a source.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let handle = rt.handle().clone();
    let service: Service = Arc::new(move |mut s: TunnelStream, peer: tunnel::Peer| {
        handle.spawn(async move {
            if peer.local.port() == SINK_PORT {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            } else {
                let buf = vec![0u8; 256 * 1024];
                while s.write_all(&buf).await.is_ok() {}
            }
        });
    });
    let gw_key = keys::PrivateKey::generate().expect("key");
    let (dev_private, dev_public) = netns::wg_genkey();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tunnel = {
        let _guard = rt.enter();
        Tunnel::spawn(
            TunnelConfig {
                listen: SocketAddr::new(IpAddr::from([0, 0, 0, 0]), netns::WG_PORT),
                address: "10.77.0.1".parse().expect("ip"),
                prefix_len: 24,
                private_key: gw_key.clone(),
                peers: vec![PeerConfig {
                    user: "bench".into(),
                    public_key: keys::parse_b64(&dev_public).expect("device key"),
                    address: "10.77.0.2".parse().expect("ip"),
                    preshared_key: None,
                }],
                ports: vec![SINK_PORT, SOURCE_PORT],
                max_connections_per_peer: 64,
                max_connections: 1024,
                status_file: Some(dir.path().join("status.json")),
            },
            service,
            stop_rx,
        )
        .expect("tunnel")
    };
    let gh_conf = dir.path().join("gatehouse.conf");
    std::fs::write(
        &gh_conf,
        format!(
            "[Interface]\nPrivateKey = {dev_private}\nAddress = 10.77.0.2/32\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.77.0.1/32\nEndpoint = {gw_ip}:{}\n",
            keys::b64(&tunnel.public_key()),
            netns::WG_PORT
        ),
    )
    .expect("write client conf");
    let _gh_client = WgClient::start(&client_ns, &gh_conf, None, &[]);

    // wireguard-go to wireguard-go, kernel TCP on both ends.
    let (srv_private, srv_public) = netns::wg_genkey();
    let (cli_private, cli_public) = netns::wg_genkey();
    let srv_conf = dir.path().join("wggo-server.conf");
    std::fs::write(
        &srv_conf,
        format!("[Interface]\nPrivateKey = {srv_private}\nListenPort = 51821\nAddress = 10.88.0.1/32\n\n[Peer]\nPublicKey = {cli_public}\nAllowedIPs = 10.88.0.2/32\n"),
    )
    .expect("write server conf");
    let cli_conf = dir.path().join("wggo-client.conf");
    std::fs::write(
        &cli_conf,
        format!("[Interface]\nPrivateKey = {cli_private}\nAddress = 10.88.0.2/32\n\n[Peer]\nPublicKey = {srv_public}\nAllowedIPs = 10.88.0.1/32\nEndpoint = {gw_ip}:51821\n"),
    )
    .expect("write client conf");
    let _wg_server = WgClient::start(&lab.gateway_ns, &srv_conf, None, &[]);
    let _wg_client = WgClient::start(&client_ns, &cli_conf, None, &[]);
    let server_py = dir.path().join("server.py");
    std::fs::write(&server_py, SERVER_PY).expect("write server.py");
    let _server = ChildGuard::spawn(
        Command::new("python3")
            .arg(&server_py)
            .arg("10.88.0.1")
            .stdin(Stdio::null()),
    );
    std::thread::sleep(Duration::from_millis(500));

    // Warm up (handshakes), then interleave the paths.
    measure(
        &client_ns,
        dir.path(),
        "up",
        "10.77.0.1",
        SINK_PORT,
        8 << 20,
    );
    measure(
        &client_ns,
        dir.path(),
        "up",
        "10.88.0.1",
        SINK_PORT,
        8 << 20,
    );
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("gatehouse up", vec![]),
        ("wireguard-go up", vec![]),
        ("gatehouse down", vec![]),
        ("wireguard-go down", vec![]),
    ];
    let only = std::env::var("GH_BENCH_ONLY").unwrap_or_default();
    for _ in 0..runs {
        for (name, samples) in rows.iter_mut() {
            if !only.is_empty() && !name.contains(only.as_str()) {
                continue;
            }
            let host = if name.starts_with("gatehouse") {
                "10.77.0.1"
            } else {
                "10.88.0.1"
            };
            let (mode, port) = if name.ends_with("up") {
                ("up", SINK_PORT)
            } else {
                ("down", SOURCE_PORT)
            };
            let m = measure(&client_ns, dir.path(), mode, host, port, bytes);
            eprintln!("{name}: {m} Mbit/s");
            samples.push(m);
        }
    }
    println!(
        "WireGuard TCP throughput, {} MiB per run, median of {runs} (Mbit/s):",
        bytes >> 20
    );
    let med: Vec<(String, f64)> = rows
        .iter()
        .map(|(n, s)| (n.to_string(), median(s.clone())))
        .collect();
    for ((name, m), (_, s)) in med.iter().zip(rows.iter()) {
        println!("BENCH {name}: {m:.0} Mbit/s  (runs: {s:?})");
    }
    let ratio = |a: usize, b: usize| med[a].1 / med[b].1.max(1.0);
    println!(
        "BENCH ratio up: {:.2}x  down: {:.2}x  (gatehouse / wireguard-go)",
        ratio(0, 1),
        ratio(2, 3)
    );
    let _ = stop_tx.send(true);
    drop(rt);
    drop(tunnel);
}
