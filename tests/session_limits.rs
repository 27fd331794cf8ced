//! A limit ends the session within a second of the decision, however full
//! the client's window is: a client that never reads cannot keep a session
//! alive, and stdin it sends after the limit never reaches the target. And
//! one person cannot use up the gateway: caps on jumps and channels.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::scripted::{grant_lease, run_script};
use common::world::World;
use common::*;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen", "oathtool"];

fn marks() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gh-marks-")
        .tempdir()
        .expect("marks dir")
}

/// A command that floods its stdout (which blocks once the client stops
/// reading) while it runs every line of its stdin.
///
/// Three megabytes: more than the client's window (so a client that does not
/// read leaves output queued in gatehouse, in front of the closing message),
/// less than what would stall the target connection (so stdin still flows).
const FLOOD_AND_RUN_STDIN: &str =
    "sh -c 'head -c 3000000 /dev/zero & while read l; do sh -c \"$l\"; done'";

/// [`FLOOD_AND_RUN_STDIN`] that first writes its shell's pid to `dir/pid`.
fn flood_noting_pid(dir: &Path) -> String {
    format!(
        "sh -c 'echo $$ > {}/pid; head -c 3000000 /dev/zero & while read l; do sh -c \"$l\"; done'",
        dir.display()
    )
}

/// The scripted client runs FLOOD_AND_RUN_STDIN on a jump; `reads` says
/// whether it reads the output. It sends a stdin line before the limit and
/// one every half second after it, and reports when the jump ended.
fn limit_scenario(limit_secs: u64, reads: bool) -> (World, tempfile::TempDir, serde_json::Value) {
    let w = World::start(|b| {
        b.role_line("web", &format!("max_session = \"{limit_secs}s\""))
            .role_line("web", "idle_timeout = \"0s\"")
    });
    scenario_in(w, limit_secs, reads, false)
}

/// The scenario in a started world; with `terminate`, the decision is a
/// SIGTERM to gatehouse at `limit_secs` instead of a limit.
fn scenario_in(
    w: World,
    limit_secs: u64,
    reads: bool,
    terminate: bool,
) -> (World, tempfile::TempDir, serde_json::Value) {
    grant_lease(&w);
    let pid = w.gw.pid().to_string();
    let m = marks();
    let run = run_script(
        &w,
        "web-1",
        r#"
LIMIT = float(CFG["limit"])
MARKS = CFG["marks"]
t = outer(); i = jump(t)
ch = i.open_session(timeout=10)
start = time.time()
raw_request(ch, "exec", True, CFG["cmd"])
wait_replies(ch, 1)
got = [0]
if CFG["reads"] == "yes":
    def drain():
        while True:
            try:
                d = ch.recv(65536)
            except Exception:
                return
            if not d:
                return
            got[0] += len(d)
    threading.Thread(target=drain, daemon=True).start()
time.sleep(1.0)
ch.sendall(("touch %s/before\n" % MARKS).encode())
ended = None
termed = False
sent_after = 0
n = 0
while time.time() - start < LIMIT + 8:
    now = time.time() - start
    if ended is None and not i.is_active():
        ended = now
    if CFG["term_pid"] and now >= LIMIT and not termed:
        os.kill(int(CFG["term_pid"]), 15)
        termed = True
    if now > LIMIT + 0.5 * (n + 1) and n < 12:
        n += 1
        try:
            ch.sendall(("touch %s/after-%d\n" % (MARKS, n)).encode())
            sent_after += 1
        except Exception:
            pass
    if ended is not None and n >= 12:
        break
    time.sleep(0.05)
out(what="result", ended=ended, sent_after=sent_after, read=got[0])
"#,
        &[
            ("limit", &limit_secs.to_string()),
            ("marks", &m.path().display().to_string()),
            ("cmd", &flood_noting_pid(m.path())),
            ("reads", if reads { "yes" } else { "no" }),
            ("term_pid", if terminate { &pid } else { "" }),
        ],
        Duration::from_secs(60),
    );
    let r = run.line("result");
    eprintln!("{}", run.describe());
    (w, m, r)
}

fn after_marks(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("after"))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_ended_at_the_limit(limit_secs: u64, reads: bool) {
    let (w, m, r) = limit_scenario(limit_secs, reads);
    assert!(
        m.path().join("before").exists(),
        "stdin before the limit should run (harness check)"
    );
    let ended = r["ended"]
        .as_f64()
        .unwrap_or_else(|| panic!("the jump never ended: {r}"));
    let limit = limit_secs as f64;
    assert!(
        // The session's clock starts when the jump connects to the target,
        // a little before the script's; the bound that matters is the upper.
        ended >= limit - 1.0 && ended < limit + 1.5,
        "ended {ended:.2}s after the start; limit {limit}s"
    );
    // Give anything that slipped through time to run on the target.
    std::thread::sleep(Duration::from_secs(1));
    let after = after_marks(m.path());
    assert!(
        after.is_empty(),
        "stdin sent after the limit ran: {after:?}"
    );
    // The target connection was cut: the command on the target is gone.
    let pid = std::fs::read_to_string(m.path().join("pid")).expect("the command's pid");
    let proc_dir = format!("/proc/{}", pid.trim());
    assert!(
        wait_until(Duration::from_secs(3), || !Path::new(&proc_dir).exists()),
        "the command still runs on the target"
    );
    let end = w.session_end();
    assert_eq!(
        end["reason"],
        format!("session reached its maximum length ({limit_secs}s)")
    );
}

#[test]
fn max_session_ends_a_jump_within_a_second_when_the_client_reads_nothing() {
    if !require_tools(TOOLS) {
        return;
    }
    assert_ended_at_the_limit(3, false);
}

#[test]
fn max_session_ends_a_jump_within_a_second_when_the_client_reads() {
    if !require_tools(TOOLS) {
        return;
    }
    assert_ended_at_the_limit(3, true);
}

#[test]
fn idle_timeout_ends_a_jump_whose_stock_client_stopped_reading() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b.role_line("web", "idle_timeout = \"2s\""));
    let m = marks();
    // Stock ssh whose stdout nobody reads (a paused terminal): the pipe
    // fills, ssh stops adjusting the window, the target's output stalls.
    let mut child = w.client.spawn(&[
        "-J",
        "gw",
        &format!("{}@web-1", w.login),
        FLOOD_AND_RUN_STDIN,
    ]);
    let t0 = Instant::now();
    let mut stdin = child.child().stdin.take().expect("stdin");
    // The idle limit fires ~2 s after the output stalled. Lines sent after
    // that must not run (sending is activity, so wait for the limit first).
    std::thread::sleep(Duration::from_secs(5));
    for n in 0..6 {
        let _ = writeln!(stdin, "touch {}/after-{n}", m.path().display());
        let _ = stdin.flush();
        std::thread::sleep(Duration::from_millis(300));
    }
    let exited = wait_until(Duration::from_secs(10), || {
        matches!(child.child().try_wait(), Ok(Some(_)))
    });
    assert!(exited, "the client's session was never ended");
    assert!(
        t0.elapsed() < Duration::from_secs(12),
        "took {:?}",
        t0.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));
    let after = after_marks(m.path());
    assert!(
        after.is_empty(),
        "stdin sent after the limit ran: {after:?}"
    );
    let end = w.session_end();
    assert_eq!(end["reason"], "session idle for 2s");
}

#[test]
fn jumps_beyond_the_per_connection_cap_are_refused_with_a_message() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b.gateway_line("max_jumps_per_connection = 2"));
    grant_lease(&w);
    let run = run_script(
        &w,
        "web-1",
        r#"
t = outer()
# Idle direct-tcpip channels count: nothing is sent on them.
a = t.open_channel("direct-tcpip", ("web-1", 22), ("127.0.0.1", 0), timeout=10)
b = t.open_channel("direct-tcpip", ("web-1", 22), ("127.0.0.1", 0), timeout=10)
try:
    t.open_channel("direct-tcpip", ("web-1", 22), ("127.0.0.1", 0), timeout=10)
    third = "opened"
except Exception:
    third = "refused"
a.close()
time.sleep(0.5)
try:
    t.open_channel("direct-tcpip", ("web-1", 22), ("127.0.0.1", 0), timeout=10)
    again = "opened"
except Exception:
    again = "refused"
out(what="result", third=third, again=again, failures=OPEN_FAILURES)
"#,
        &[],
        Duration::from_secs(40),
    );
    let r = run.line("result");
    assert_eq!(r["third"], "refused", "{}", run.describe());
    assert_eq!(r["again"], "opened", "a closed jump frees its place");
    let f = &r["failures"][0];
    assert_eq!(f["code"], 4, "resource shortage");
    assert!(
        f["description"]
            .as_str()
            .unwrap()
            .contains("too many jumps open on this connection (at most 2)"),
        "{f}"
    );
    let ev = w.gw.events("channel.refused");
    assert!(
        ev.iter()
            .any(|e| e["reason"] == "jumps per connection cap (2) reached"),
        "{ev:?}"
    );
}

#[test]
fn jumps_beyond_the_per_user_cap_are_refused_across_connections() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| {
        b.gateway_line("max_jumps_per_connection = 2")
            .gateway_line("max_jumps_per_user = 3")
    });
    grant_lease(&w);
    let run = run_script(
        &w,
        "web-1",
        r#"
def tcp(t):
    try:
        return t.open_channel("direct-tcpip", ("web-1", 22), ("127.0.0.1", 0), timeout=10)
    except Exception:
        return None
t1 = outer(); t2 = outer()
# Keep the channels: paramiko closes a channel that is garbage collected.
chans = [tcp(t1), tcp(t1), tcp(t2), tcp(t2)]
out(what="result", got=[c is not None for c in chans], failures=OPEN_FAILURES)
"#,
        &[],
        Duration::from_secs(40),
    );
    let r = run.line("result");
    assert_eq!(
        r["got"],
        serde_json::json!([true, true, true, false]),
        "{}",
        run.describe()
    );
    assert!(r["failures"][0]["description"]
        .as_str()
        .unwrap()
        .contains("too many jumps open for this user (at most 3)"));
    assert!(w
        .gw
        .events("channel.refused")
        .iter()
        .any(|e| e["reason"] == "jumps per user cap (3) reached"));
}

#[test]
fn channels_beyond_the_per_connection_cap_are_refused_on_a_jump() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b.gateway_line("max_channels_per_connection = 2"));
    grant_lease(&w);
    let run = run_script(
        &w,
        "web-1",
        r#"
t = outer(); i = jump(t)
a = i.open_session(timeout=10)
b = i.open_session(timeout=10)
try:
    i.open_session(timeout=10)
    third = "opened"
except Exception:
    third = "refused"
a.exec_command("echo alive")
alive = a.recv(100).decode()
out(what="result", third=third, alive=alive, failures=OPEN_FAILURES)
"#,
        &[],
        Duration::from_secs(40),
    );
    let r = run.line("result");
    assert_eq!(r["third"], "refused", "{}", run.describe());
    assert_eq!(r["alive"], "alive\n");
    assert!(r["failures"][0]["description"]
        .as_str()
        .unwrap()
        .contains("too many channels open on this connection (at most 2)"));
    assert!(w
        .gw
        .events("channel.refused")
        .iter()
        .any(|e| e["reason"] == "channels per connection cap (2) reached"));
}

#[test]
fn a_stock_client_refused_by_a_cap_is_told_which_cap() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b.gateway_line("max_jumps_per_user = 1"));
    grant_lease(&w);
    // OpenSSH prints a channel's open failure at its default level (INFO);
    // the harness's config is quieter.
    w.client.set_option("LogLevel", "INFO");
    let cfg = w.client.config_path().display().to_string();
    let run = run_script(
        &w,
        "web-1",
        r#"
import subprocess
t = outer()
held = t.open_channel("direct-tcpip", ("web-1", 22), ("127.0.0.1", 0), timeout=10)
# The stock client, admitted by the same lease, asks for a second jump.
p = subprocess.run(
    ["ssh", "-F", CFG["ssh_config"], "-J", "gw", CFG["login"] + "@web-1", "true"],
    stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
    env=dict(os.environ, SSH_ASKPASS="/bin/false", SSH_ASKPASS_REQUIRE="force"))
out(what="ssh", status=p.returncode, stderr=p.stderr.decode(errors="replace"))
"#,
        &[("ssh_config", &cfg)],
        Duration::from_secs(60),
    );
    let r = run.line("ssh");
    assert_ne!(r["status"], 0, "{}", run.describe());
    let stderr = r["stderr"].as_str().unwrap();
    eprintln!("stock ssh said: {stderr}");
    assert!(
        stderr.contains("too many jumps open for this user (at most 1)"),
        "{stderr}"
    );
}

#[test]
fn shutdown_ends_a_jump_within_a_second_when_the_client_reads_nothing() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b.role_line("web", "idle_timeout = \"0s\""));
    let (w, m, r) = scenario_in(w, 3, false, true);
    assert!(m.path().join("before").exists(), "harness check");
    let ended = r["ended"]
        .as_f64()
        .unwrap_or_else(|| panic!("the jump never ended: {r}"));
    assert!(
        (3.0..4.5).contains(&ended),
        "ended {ended:.2}s after the start; SIGTERM at 3s"
    );
    std::thread::sleep(Duration::from_secs(1));
    let after = after_marks(m.path());
    assert!(
        after.is_empty(),
        "stdin sent after the shutdown ran: {after:?}"
    );
    let end = w.session_end();
    assert_eq!(end["reason"], "gatehouse is shutting down");
}

#[test]
fn channels_that_ended_do_not_count_against_the_cap() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b.gateway_line("max_channels_per_connection = 2"));
    grant_lease(&w);
    let run = run_script(
        &w,
        "web-1",
        r#"
t = outer(); i = jump(t)
outs = []
for n in range(6):
    try:
        ch = i.open_session(timeout=10)
        ch.exec_command("echo %d" % n)
        outs.append(ch.makefile().read().decode().strip())
        ch.recv_exit_status()
        ch.close()
    except Exception as e:
        outs.append("refused")
    time.sleep(0.2)
out(what="result", outs=outs)
"#,
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(
        run.line("result")["outs"],
        serde_json::json!(["0", "1", "2", "3", "4", "5"]),
        "{}",
        run.describe()
    );
}

#[test]
fn session_channels_on_the_gateway_itself_share_the_channel_cap_and_free_it_when_answered() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b.gateway_line("max_channels_per_connection = 2"));
    grant_lease(&w);
    let run = run_script(
        &w,
        "web-1",
        r#"
t = outer()
# Two held session channels on the gateway's own server fill the cap.
a = t.open_session(timeout=10)
b = t.open_session(timeout=10)
try:
    t.open_session(timeout=10)
    third = "opened"
except Exception:
    third = "refused"
a.close(); b.close()
# `help` answered by gatehouse itself ends its channel: six in a row must
# fit under a cap of 2 (a channel gatehouse closed no longer counts).
helps = 0
for _ in range(6):
    c = t.open_session(timeout=10)
    c.exec_command("help")
    data = b""
    while True:
        d = c.recv(4096)
        if not d:
            break
        data += d
    if b"gatehouse is a gateway" in data:
        helps += 1
out(what="result", third=third, helps=helps, failures=OPEN_FAILURES)
"#,
        &[],
        Duration::from_secs(40),
    );
    let r = run.line("result");
    assert_eq!(r["third"], "refused", "{}", run.describe());
    assert_eq!(r["helps"], 6, "{}", run.describe());
    assert!(w.gw.events("channel.refused").iter().any(
        |e| e["kind"] == "session" && e["reason"] == "channels per connection cap (2) reached"
    ));
}
