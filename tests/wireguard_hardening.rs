//! WireGuard hardening: a connection belongs to the device that sent it,
//! handshake floods do not cut devices off, a replayed initiation after a
//! restart is not a handshake, and the gateway answers `ping`.
//!
//! Like `tests/wireguard.rs`, every test runs in network namespaces it
//! creates (`common::netns`) with Debian's `wireguard-go` as the device;
//! they need root and say why they are skipped without it.

mod common;

use std::process::{Command, Stdio};
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

/// `ping -c 3 -W 2 [EXTRA...] ADDR` in client namespace `i`.
fn ping(w: &WgWorld, i: usize, extra: &[&str], addr: &str) -> std::process::Output {
    let mut p = Command::new("ping");
    p.args(["-n", "-c", "3", "-W", "2"]).args(extra).arg(addr);
    run(&mut netns::in_ns(w.lab.client(i), &p), Duration::from_secs(30))
}

/// After `wg-quick up` with the file `gatehouse peer add` wrote, `ping` of
/// the gateway's tunnel address is answered; an address of the tunnel
/// range that is not the gateway's gets no answer from gatehouse.
#[test]
fn the_gateway_tunnel_address_answers_ping() {
    let Some(lab) = netns::enter("the_gateway_tunnel_address_answers_ping", 1) else {
        return;
    };
    if !require_tools(&["ping"]) {
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
    let _c = netns::WgClient::start(
        w.lab.client(0),
        &w.devices[0].conf,
        None,
        &["10.77.0.0/24"],
    );
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
        let out = run(&mut w.jump(0, &["echo", &format!("login-{i}")]), SSH_TIMEOUT);
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
    assert!(failures.is_empty(), "{} of 20 logins failed: {failures:#?}", failures.len());

    let want = format!("wg:{}@{}", honest.public_key, honest.address);
    let logins = w.gw.events("login");
    assert!(logins.len() >= 21, "{logins:?}");
    for e in &logins {
        assert_eq!(e["source"], want.as_str(), "a login named another device: {e}");
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
    let refusals: Vec<_> = w
        .gw
        .audit_events()
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
