//! A scripted jump client (Python paramiko) for messages stock OpenSSH never
//! sends: a second run request on a channel, a request without `want_reply`,
//! data before the run request, forwarding channel kinds, unknown requests,
//! a client that never reads.
//!
//! The script logs in to gatehouse with the user's key alone, so the test
//! first logs in once with the stock client and a code: the MFA lease then
//! admits the key from the same address (paramiko's key + keyboard-interactive
//! login is a separate issue). It opens a `direct-tcpip` channel to the
//! target and runs a second SSH transport over it with the same key, exactly
//! as `ssh -J` does.
//!
//! A test's Python body runs after this prelude; it prints JSON lines with
//! `out(...)`, which [`ScriptRun::lines`] returns.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use super::util::run_with_timeout;
use super::world::World;

/// What every script starts with (see the module doc).
pub const PRELUDE: &str = r#"
import json, os, socket, sys, threading, time
import paramiko
from paramiko.message import Message
from paramiko import common as C

CFG = json.loads(sys.argv[1])
KEY = paramiko.Ed25519Key.from_private_key_file(CFG["key"])
REPLIES = []        # ("success" | "failure", local channel id), in arrival order
OPEN_FAILURES = []  # {"code", "description"} of refused channel opens

def out(**kw):
    print(json.dumps(kw), flush=True)

# Record channel request replies without paramiko's side effects (it closes
# a channel whose request failed).
def _ok(chan, m):
    REPLIES.append(("success", chan.chanid))
    chan.event_ready = True
    chan.event.set()
def _fail(chan, m):
    REPLIES.append(("failure", chan.chanid))
    chan.event_ready = False
    chan.event.set()
paramiko.Transport._channel_handler_table[C.MSG_CHANNEL_SUCCESS] = _ok
paramiko.Transport._channel_handler_table[C.MSG_CHANNEL_FAILURE] = _fail

# Keep the server's description of a refused channel open (paramiko keeps
# only the generic text of the code).
_orig_open_failure = paramiko.Transport._handler_table[C.MSG_CHANNEL_OPEN_FAILURE]
def _open_failure(t, m):
    pos = m.packet.tell()
    m.get_int()
    code = m.get_int()
    desc = m.get_text()
    OPEN_FAILURES.append({"code": code, "description": desc})
    m.packet.seek(pos)
    _orig_open_failure(t, m)
paramiko.Transport._handler_table[C.MSG_CHANNEL_OPEN_FAILURE] = _open_failure

def outer():
    s = socket.create_connection(("127.0.0.1", CFG["port"]), timeout=10)
    t = paramiko.Transport(s)
    t.start_client(timeout=10)
    t.auth_publickey(CFG["user"], KEY)
    if not t.is_authenticated():
        raise SystemExit("outer login failed")
    return t

def jump(t, target=None):
    ch = t.open_channel("direct-tcpip", (target or CFG["target"], 22), ("127.0.0.1", 0), timeout=10)
    inner = paramiko.Transport(ch)
    inner.start_client(timeout=10)
    inner.auth_publickey(CFG["login"], KEY)
    if not inner.is_authenticated():
        raise SystemExit("inner login failed")
    return inner

def raw_request(chan, kind, want_reply, *fields):
    m = Message()
    m.add_byte(C.cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string(kind)
    m.add_boolean(want_reply)
    for f in fields:
        if isinstance(f, int):
            m.add_int(f)
        else:
            m.add_string(f)
    chan.transport._send_user_message(m)

def raw_open(t, kind, *fields):
    # A channel open paramiko cannot send itself; the reply is not awaited.
    m = Message()
    m.add_byte(C.cMSG_CHANNEL_OPEN)
    m.add_string(kind)
    m.add_int(4242)
    m.add_int(2097152)
    m.add_int(32768)
    for f in fields:
        if isinstance(f, int):
            m.add_int(f)
        else:
            m.add_string(f)
    t._send_user_message(m)

def replies_for(chan):
    return [r for (r, c) in REPLIES if c == chan.chanid]

def wait_replies(chan, n, timeout=10):
    end = time.time() + timeout
    while time.time() < end and len(replies_for(chan)) < n:
        time.sleep(0.05)
    return replies_for(chan)
"#;

/// The outcome of one script.
pub struct ScriptRun {
    pub output: Output,
}

impl ScriptRun {
    /// The JSON lines the script printed with `out(...)`.
    pub fn lines(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The first line whose `what` is `what`.
    pub fn line(&self, what: &str) -> Value {
        self.lines()
            .into_iter()
            .find(|l| l["what"] == what)
            .unwrap_or_else(|| panic!("no line {what:?} in script output:\n{}", self.describe()))
    }

    /// stdout and stderr, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status {:?}\nstdout:\n{}\nstderr:\n{}",
            self.output.status,
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }
}

/// Logs in once with the stock client (key + code) so that the MFA lease
/// admits the scripted client's key alone.
pub fn grant_lease(w: &World) {
    let out = w.client.run(&["gw", "help"]);
    assert!(
        out.status.success(),
        "login with a code failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `body` after [`PRELUDE`] for alice in `w`, jumping to `target` as
/// the world's login; killed after `timeout`.
pub fn run_script(
    w: &World,
    target: &str,
    body: &str,
    extra: &[(&str, &str)],
    timeout: Duration,
) -> ScriptRun {
    let dir = w.keys.path();
    let path = dir.join(format!("script-{}.py", std::process::id()));
    std::fs::write(&path, format!("{PRELUDE}\n{body}\n")).expect("write the script");
    let mut cfg = serde_json::json!({
        "port": w.gw.port,
        "key": w.key.private_path.display().to_string(),
        "user": "alice",
        "login": w.login,
        "target": target,
    });
    for (k, v) in extra {
        cfg[*k] = Value::String((*v).to_string());
    }
    let output = run_with_timeout(
        Command::new(python()).arg(&path).arg(cfg.to_string()),
        timeout,
    )
    .unwrap_or_else(|| panic!("the scripted client did not finish within {timeout:?}"));
    ScriptRun { output }
}

/// The Python that has paramiko (Debian's python3-paramiko).
pub fn python() -> &'static Path {
    Path::new("/usr/bin/python3")
}
