//! WireGuard hardening: a connection belongs to the device that sent it,
//! handshake floods do not cut devices off, a replayed initiation after a
//! restart is not a handshake, and the gateway answers `ping`.
//!
//! Like `tests/wireguard.rs`, every test runs in network namespaces it
//! creates (`common::netns`) with Debian's `wireguard-go` as the device;
//! they need root and say why they are skipped without it.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::netns::{self, WgWorld, TUNNEL_GATEWAY};
use common::{require_tools, run_with_timeout, ChildGuard};

const SSH_TIMEOUT: Duration = Duration::from_secs(90);

/// The running daemon's status file.
fn status(w: &WgWorld) -> serde_json::Value {
    let path = w.gw.setup().state_dir().join("wireguard-status.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default())
        .unwrap_or(serde_json::Value::Null)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs a command to completion within `t`; panics on timeout.
fn run(cmd: &mut Command, t: Duration) -> std::process::Output {
    run_with_timeout(cmd, t).unwrap_or_else(|| panic!("timed out: {cmd:?}"))
}

/// What `ping -c 3 -W 2 [-s SIZE] ADDR` does, for machines without
/// iputils-ping: three ICMP echo requests (raw socket), each awaited for 2
/// s; prints `N received` as ping does, and fails without a reply.
const PING: &str = r#"
import os, select, socket, struct, sys, time
addr, size = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xffff
def csum(b):
    if len(b) % 2:
        b += b'\0'
    c = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    c = (c >> 16) + (c & 0xffff)
    c += c >> 16
    return ~c & 0xffff
got = 0
for seq in range(1, 4):
    body = bytes((i & 0xff for i in range(size)))
    h = struct.pack('!BBHHH', 8, 0, 0, ident, seq)
    pkt = h[:2] + struct.pack('!H', csum(h + body)) + h[4:] + body
    s.sendto(pkt, (addr, 0))
    end = time.time() + 2
    while time.time() < end:
        r, _, _ = select.select([s], [], [], max(0, end - time.time()))
        if not r:
            break
        data, src = s.recvfrom(4096)
        icmp = data[(data[0] & 15) * 4:]
        if src[0] == addr and icmp[0] == 0 and struct.unpack('!HH', icmp[4:8]) == (ident, seq):
            got += 1
            break
    time.sleep(0.2)
print('3 packets transmitted, %d received' % got)
sys.exit(0 if got else 1)
"#;

/// `ping -n -c 3 -W 2 [EXTRA...] ADDR` in client namespace `i` (iputils
/// `ping`, or the same in Python where it is not installed).
fn ping(w: &WgWorld, i: usize, extra: &[&str], addr: &str) -> std::process::Output {
    let p = if common::find_tool("ping").is_some() {
        let mut p = Command::new("ping");
        p.args(["-n", "-c", "3", "-W", "2"]).args(extra).arg(addr);
        p
    } else {
        let size = match extra {
            ["-s", n] => n.to_string(),
            _ => "56".to_string(),
        };
        let mut p = Command::new("python3");
        p.args(["-c", PING, addr, &size]);
        p
    };
    run(
        &mut netns::in_ns(w.lab.client(i), &p),
        Duration::from_secs(30),
    )
}

/// After `wg-quick up` with the file `gatehouse peer add` wrote, `ping` of
/// the gateway's tunnel address is answered; an address of the tunnel
/// range that is not the gateway's gets no answer from gatehouse.
#[test]
fn the_gateway_tunnel_address_answers_ping() {
    let Some(lab) = netns::enter("the_gateway_tunnel_address_answers_ping", 1) else {
        return;
    };
    if common::find_tool("ping").is_none() && !require_tools(&["python3"]) {
        return;
    }
    let w = WgWorld::start(lab, 1, |b| b);
    let c = w.connect(0);
    // The stock client file, right after the interface came up: the first
    // echo request also starts the handshake.
    let out = ping(&w, 0, &[], TUNNEL_GATEWAY);
    assert!(
        out.status.success() && stdout(&out).contains("3 received"),
        "ping {TUNNEL_GATEWAY}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    // The smallest echo (no timestamp) and the largest that fits the
    // tunnel MTU without fragments are answered too.
    for size in ["0", "1392"] {
        let out = ping(&w, 0, &["-s", size], TUNNEL_GATEWAY);
        assert!(
            stdout(&out).contains("3 received"),
            "ping -s {size}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
    drop(c);
    // A client that routes the whole tunnel range into the tunnel: another
    // address of that range gets no answer (gatehouse routes nothing and
    // answers only for its own address).
    let _c = netns::WgClient::start(w.lab.client(0), &w.devices[0].conf, None, &["10.77.0.0/24"]);
    let out = ping(&w, 0, &[], TUNNEL_GATEWAY);
    assert!(stdout(&out).contains("3 received"), "{}", stdout(&out));
    let out = ping(&w, 0, &[], "10.77.0.9");
    assert!(
        !out.status.success() && stdout(&out).contains(" 0 received"),
        "ping 10.77.0.9: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// A Python program (run in a device's namespace) that sends TCP SYN/RST
/// pairs from the device's tunnel address to `DST:PORT` through the
/// tunnel with a raw socket: COUNT pairs at most, SECONDS at most, in
/// paced bursts. Prints how many pairs it sent.
const SYN_RST_FLOOD: &str = r#"
import random, socket, struct, sys, time
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
count, secs = int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
def csum(b):
    if len(b) % 2:
        b += b'\0'
    c = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    c = (c >> 16) + (c & 0xffff)
    c += c >> 16
    return ~c & 0xffff
def seg(sport, seq, flags):
    h = struct.pack('!HHIIBBHHH', sport, port, seq, 0, 5 << 4, flags, 65535, 0, 0)
    ph = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack('!BBH', 0, 6, len(h))
    return h[:16] + struct.pack('!H', csum(ph + h)) + h[18:]
t0 = time.time()
n = 0
while n < count and time.time() - t0 < secs:
    for _ in range(100):
        sport = random.randint(20000, 60000)
        seq = random.getrandbits(32)
        s.sendto(seg(sport, seq, 0x02), (dst, 0))
        s.sendto(seg(sport, (seq + 1) & 0xffffffff, 0x04), (dst, 0))
        n += 1
    time.sleep(0.001)
print(n, flush=True)
"#;

/// While one device streams TCP SYN/RST pairs at the gateway, another
/// device's ordinary `ssh` logins are all its own: every login succeeds,
/// and every `login` and `wg.conn.open` audit event names the device the
/// connection came from.
#[test]
fn a_connection_belongs_to_the_device_that_sent_it_under_a_syn_rst_flood() {
    let Some(lab) = netns::enter(
        "a_connection_belongs_to_the_device_that_sent_it_under_a_syn_rst_flood",
        2,
    ) else {
        return;
    };
    if !require_tools(&["python3"]) {
        return;
    }
    let w = WgWorld::start(lab, 2, |b| b);
    let (honest, flooder) = (w.devices[0].clone(), w.devices[1].clone());
    let _a = w.connect(0);
    let b = w.connect(1);
    // The first login with the code; the others ride the device's lease.
    let out = run(&mut w.jump(0, &["true"]), SSH_TIMEOUT);
    assert!(out.status.success(), "{}", stderr(&out));

    // Bounded: 2M pairs or 120 s, whichever comes first; killed once the
    // logins are done.
    let mut py = Command::new("python3");
    py.args([
        "-c",
        SYN_RST_FLOOD,
        &flooder.address,
        TUNNEL_GATEWAY,
        "22",
        "2000000",
        "120",
    ]);
    let mut flood = netns::in_ns(w.lab.client(1), &py);
    flood.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut flood = ChildGuard::spawn(&mut flood);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        flood.child().try_wait().expect("flood status").is_none(),
        "the flood program ended at once"
    );
    let t0 = Instant::now();
    let mut failures = Vec::new();
    for i in 0..20 {
        let out = run(
            &mut w.jump(0, &["echo", &format!("login-{i}")]),
            SSH_TIMEOUT,
        );
        if !out.status.success() || !stdout(&out).contains(&format!("login-{i}")) {
            failures.push(format!("login {i}: {}", stderr(&out)));
        }
    }
    let took = t0.elapsed();
    let still_flooding = flood.child().try_wait().expect("flood status").is_none();
    flood.kill();
    let transfer = b.wg(&["show", &b.ifname, "transfer"]);
    eprintln!("20 logins under the SYN/RST flood in {took:?}; flooder transfer: {transfer}");
    assert!(still_flooding, "the flood ended before the logins did");
    assert!(
        failures.is_empty(),
        "{} of 20 logins failed: {failures:#?}",
        failures.len()
    );

    let want = format!("wg:{}@{}", honest.public_key, honest.address);
    let logins = w.gw.events("login");
    assert!(logins.len() >= 21, "{logins:?}");
    for e in &logins {
        assert_eq!(
            e["source"],
            want.as_str(),
            "a login named another device: {e}"
        );
    }
    let opens = w.gw.events("wg.conn.open");
    assert!(opens.len() >= 21, "{opens:?}");
    for e in &opens {
        assert_eq!(e["public_key"], honest.public_key.as_str(), "{e}");
        assert!(
            e["source"]
                .as_str()
                .unwrap_or("")
                .starts_with(&format!("{}:", honest.address)),
            "{e}"
        );
    }
    let refusals: Vec<_> =
        w.gw.audit_events()
            .into_iter()
            .filter(|e| e["reason"].as_str().unwrap_or("").contains("another user"))
            .collect();
    assert!(refusals.is_empty(), "{refusals:?}");
    // The flood reached the gateway's stack.
    std::thread::sleep(Duration::from_millis(2500));
    let st = status(&w);
    eprintln!("tunnel counters: {}", st["counters"]);
    assert_eq!(st["counters"]["misbooked"].as_u64().unwrap_or(0), 0, "{st}");
}

/// A Python program (run in a device's namespace): COUNT times, a TCP
/// connection to HOST:22 through the tunnel and the SSH banner read, with
/// a pause between probes. Prints one line per probe: milliseconds, or
/// `fail`.
const BANNER_PROBES: &str = r#"
import socket, sys, time
host, count = sys.argv[1], int(sys.argv[2])
for _ in range(count):
    t = time.monotonic()
    try:
        s = socket.create_connection((host, 22), timeout=5)
        s.settimeout(5)
        data = b''
        while b'\n' not in data:
            chunk = s.recv(256)
            if not chunk:
                raise OSError('closed')
            data += chunk
        s.close()
        print('%.3f' % ((time.monotonic() - t) * 1000), flush=True)
    except OSError:
        print('fail', flush=True)
    time.sleep(0.05)
"#;

/// Probes a real device's connect-and-banner latency: (milliseconds of the
/// probes that succeeded, sorted; failures).
fn banner_latency(w: &WgWorld, count: usize) -> (Vec<f64>, usize) {
    let mut py = Command::new("python3");
    py.args(["-c", BANNER_PROBES, TUNNEL_GATEWAY, &count.to_string()]);
    let out = run(
        &mut netns::in_ns(w.lab.client(0), &py),
        Duration::from_secs(20 + 6 * count as u64),
    );
    let text = stdout(&out);
    let mut ms: Vec<f64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let failed = text.lines().filter(|l| l.trim() == "fail").count();
    assert_eq!(
        ms.len() + failed,
        count,
        "probe output: {text}{}",
        stderr(&out)
    );
    ms.sort_by(|a, b| a.total_cmp(b));
    (ms, failed)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::INFINITY;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Handshake initiations from `sources` loopback addresses of the gateway
/// namespace, each from its own key (one nobody configured), each with a
/// valid mac1 and — after the gateway answered with a cookie — a valid
/// mac2: what anyone who knows the gateway's public key can send.
/// Returns (source socket, its initiations) pairs.
fn initiations_with_cookies(
    gw_key: [u8; 32],
    sources: u8,
    per_source: usize,
) -> Vec<(UdpSocket, Vec<Vec<u8>>)> {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};
    let target = ("127.0.0.1", netns::WG_PORT);
    let new_tunn = || {
        Tunn::new(
            StaticSecret::from(gatehouse::tunnel::keys::random32().expect("random")),
            PublicKey::from(gw_key),
            None,
            None,
            1,
            None,
        )
    };
    // The gateway asks for cookies only under load: keep it there with
    // mac1-only initiations from 127.0.0.1 while the sources get theirs.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let mut t = new_tunn();
        let mut buf = [0u8; 256];
        let p = match t.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no initiation"),
        };
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let t0 = Instant::now();
            while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(60) {
                for _ in 0..20 {
                    let _ = s.send_to(&p, target);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut out = Vec::new();
    for n in 0..sources {
        let src = format!("127.0.0.{}", 2 + u16::from(n));
        let sock = UdpSocket::bind((src.as_str(), 0)).expect("bind a loopback source");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut t = new_tunn();
        let mut buf = [0u8; 256];
        let mut got = false;
        for _ in 0..50 {
            if let TunnResult::WriteToNetwork(p) = t.format_handshake_initiation(&mut buf, true) {
                let _ = sock.send_to(p, target);
            }
            let mut r = [0u8; 256];
            if let Ok(len) = sock.recv(&mut r) {
                if len == 64 && r[0] == 3 {
                    let mut scratch = [0u8; 256];
                    let ip = src.parse().expect("ip");
                    let _ = t.decapsulate(Some(ip), &r[..len], &mut scratch);
                    got = true;
                    break;
                }
            }
        }
        assert!(got, "source {src} got no cookie");
        let mut inits = Vec::new();
        for _ in 0..per_source {
            if let TunnResult::WriteToNetwork(p) = t.format_handshake_initiation(&mut buf, true) {
                inits.push(p.to_vec());
            }
        }
        out.push((sock, inits));
    }
    stop.store(true, Ordering::SeqCst);
    load.join().expect("load thread");
    out
}

/// A flood of handshake initiations that pass the cookie check (valid mac1
/// and mac2, from 40 source addresses, about 30,000 a second) does not
/// stall an established device: its connect-and-banner latency through the
/// tunnel stays within a small multiple of normal, and no probe fails. The
/// gateway's status shows the flood held to the handshake budget.
#[test]
fn a_handshake_flood_with_valid_cookies_does_not_stall_established_devices() {
    let Some(lab) = netns::enter(
        "a_handshake_flood_with_valid_cookies_does_not_stall_established_devices",
        1,
    ) else {
        return;
    };
    if !require_tools(&["python3"]) {
        return;
    }
    let w = WgWorld::start(lab, 1, |b| b);
    let _c = w.connect(0);
    let conf =
        netns::ClientConf::parse(&std::fs::read_to_string(&w.devices[0].conf).expect("read"));
    let gw_key = gatehouse::tunnel::keys::parse_b64(conf.get("PublicKey")).expect("gateway key");
    // Normal: the device's session is up, nothing else is going on.
    let _ = banner_latency(&w, 5);
    let (normal, failed) = banner_latency(&w, 40);
    assert_eq!(failed, 0, "probes failed without a flood");

    let sources = initiations_with_cookies(gw_key, 40, 25);
    // Bounded: 3M datagrams or 90 s; stopped once the probes are done.
    const MAX_PACKETS: u64 = 3_000_000;
    const MAX_TIME: Duration = Duration::from_secs(90);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst)
                && sent.load(Ordering::SeqCst) < MAX_PACKETS
                && t0.elapsed() < MAX_TIME
            {
                // ~300 datagrams per 10 ms: about 30,000 a second.
                for _ in 0..300 {
                    let (sock, inits) = &sources[i % sources.len()];
                    let p = &inits[(i / sources.len()) % inits.len()];
                    let _ = sock.send_to(p, ("127.0.0.1", netns::WG_PORT));
                    i += 1;
                }
                sent.fetch_add(300, Ordering::SeqCst);
                let spent = t0.elapsed();
                let due = Duration::from_millis(10) * (i / 300) as u32;
                if due > spent {
                    std::thread::sleep(due - spent);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let (flooded, failed) = banner_latency(&w, 40);
    let took = t0.elapsed();
    let still_flooding = !flood.is_finished();
    stop.store(true, Ordering::SeqCst);
    flood.join().expect("flood thread");
    let sent = sent.load(Ordering::SeqCst);
    let (n50, n90) = (percentile(&normal, 0.5), percentile(&normal, 0.9));
    let (f50, f90) = (percentile(&flooded, 0.5), percentile(&flooded, 0.9));
    eprintln!(
        "connect+banner through the tunnel: normal p50 {n50:.2} ms p90 {n90:.2} ms; \
         under a flood of {sent} initiations with valid cookies ({:.0}/s): p50 {f50:.2} ms \
         p90 {f90:.2} ms, {failed} failed",
        sent as f64 / (took.as_secs_f64() + 2.0)
    );
    std::thread::sleep(Duration::from_millis(2500));
    let st = status(&w);
    eprintln!("tunnel counters: {}", st["counters"]);
    assert!(still_flooding, "the flood ended before the probes did");
    assert_eq!(failed, 0, "probes failed under the flood");
    assert!(
        f50 <= (5.0 * n50).max(n50 + 20.0),
        "median latency {f50:.2} ms under the flood, {n50:.2} ms normally"
    );
    assert!(
        f90 <= (10.0 * n90).max(n90 + 100.0),
        "p90 latency {f90:.2} ms under the flood, {n90:.2} ms normally"
    );
    // The flood's initiations were held to the handshake budget (they got
    // no Diffie-Hellman beyond it), not answered one by one.
    let limited = st["counters"]["handshakes_limited"].as_u64().unwrap_or(0);
    assert!(limited * 2 > sent, "{limited} of {sent} limited: {st}");
    // The device still works end to end.
    let out = run(&mut w.jump(0, &["echo", "after-the-flood"]), SSH_TIMEOUT);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A Python program (run in a device's namespace): captures, on interface
/// IFACE, the first WireGuard handshake initiation sent to UDP port PORT
/// within SECONDS, and prints it as hex — what anyone on the path sees.
const CAPTURE_INITIATION: &str = r#"
import socket, sys, time
iface, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.bind((iface, 0))
s.settimeout(0.5)
print('ready', flush=True)
t0 = time.time()
while time.time() - t0 < secs:
    try:
        f = s.recv(65535)
    except socket.timeout:
        continue
    ip = f[14:]
    if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
        continue
    udp = ip[(ip[0] & 15) * 4:]
    payload = udp[8:]
    if int.from_bytes(udp[2:4], 'big') == port and len(payload) == 148 and payload[0] == 1:
        print(payload.hex(), flush=True)
        break
"#;

/// A handshake initiation captured on the wire and replayed after gatehouse
/// restarted (when the last timestamp it saw from the device is gone), from
/// another address, is not a handshake: it moves no endpoint and writes no
/// `wg.handshake` audit event, and the device keeps working.
#[test]
fn a_replayed_initiation_after_a_restart_is_not_a_handshake() {
    let Some(lab) = netns::enter(
        "a_replayed_initiation_after_a_restart_is_not_a_handshake",
        1,
    ) else {
        return;
    };
    if !require_tools(&["python3"]) {
        return;
    }
    let mut w = WgWorld::start(lab, 1, |b| b);
    let dev = w.devices[0].clone();
    let mut py = Command::new("python3");
    py.args([
        "-c",
        CAPTURE_INITIATION,
        "veth0",
        &netns::WG_PORT.to_string(),
        "60",
    ]);
    let mut sniff = netns::in_ns(w.lab.client(0), &py);
    sniff.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut sniff = ChildGuard::spawn(&mut sniff);
    let mut lines = std::io::BufReader::new(sniff.child().stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut lines, &mut line).expect("sniffer");
    assert_eq!(line.trim(), "ready", "the capture did not start");

    let _c = w.connect(0);
    let out = run(&mut w.jump(0, &["true"]), SSH_TIMEOUT);
    assert!(out.status.success(), "{}", stderr(&out));
    line.clear();
    std::io::BufRead::read_line(&mut lines, &mut line).expect("sniffer");
    let captured = hex::decode(line.trim()).expect("a captured initiation");
    assert_eq!(captured.len(), 148);

    // Let the daemon record the session, then restart it; the device is
    // back through the gateway's own re-initiation.
    std::thread::sleep(Duration::from_millis(2500));
    w.gw.restart();
    w.client.set_code(&w.next_code());
    assert!(
        common::wait_until(Duration::from_secs(30), || netns::tcp_probe(
            w.lab.client(0),
            TUNNEL_GATEWAY,
            22,
            Duration::from_secs(2)
        ) == Ok(true)),
        "the device did not recover after the restart"
    );

    // The replay, from an address the device never used.
    let attacker = UdpSocket::bind("127.0.0.1:0").expect("bind");
    attacker
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    for _ in 0..3 {
        attacker
            .send_to(&captured, ("127.0.0.1", netns::WG_PORT))
            .expect("send");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut reply = [0u8; 256];
    let answered = attacker.recv(&mut reply).map(|n| (n, reply[0])).ok();
    eprintln!("the replay was answered with {answered:?} (length, type)");
    std::thread::sleep(Duration::from_millis(2500));

    let handshakes = w.gw.events("wg.handshake");
    for e in &handshakes {
        assert!(
            !e["endpoint"]
                .as_str()
                .unwrap_or("")
                .starts_with("127.0.0.1"),
            "a replayed initiation was audited as a handshake: {e}"
        );
    }
    let moves = w.gw.events("wg.endpoint");
    for e in &moves {
        assert!(
            !e["new"].as_str().unwrap_or("").starts_with("127.0.0.1"),
            "a replayed initiation moved the endpoint: {e}"
        );
    }
    let st = status(&w);
    let row = st["peers"]
        .as_array()
        .and_then(|p| {
            p.iter()
                .find(|p| p["public_key"] == dev.public_key.as_str())
        })
        .cloned()
        .unwrap_or_default();
    assert!(
        row["endpoint"]
            .as_str()
            .unwrap_or("")
            .starts_with(&w.lab.client_ip(0)),
        "{row}"
    );
    // The device still works, at its own endpoint.
    let out = run(&mut w.jump(0, &["echo", "still-mine"]), SSH_TIMEOUT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("still-mine"));
}
