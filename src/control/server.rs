//! The daemon's side of the control socket.
//!
//! The socket is created 0600 (0660 with `[control] group`) inside a
//! private directory and renamed into place, so nobody can connect in the
//! moment between `bind` and `chmod`. A socket file left by a dead daemon is
//! replaced; one that answers means another gatehouse runs, and the start
//! fails. Who connects is read from the kernel (`SO_PEERCRED`), never from
//! the request, and named in every audit event.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

use super::{Frame, Reload, Reply, Request, MAX_REQUEST};
use crate::audit;
use crate::config::ControlSettings;
use crate::live::{Registry, Watched};
use crate::locks::{Lock, LockKind, Locks};

/// Control commands served at once; more are told the daemon is busy.
const MAX_CLIENTS: usize = 16;
/// Watches open at once. A watch lasts as long as the session: watches
/// have their own slots, so open watches never leave an administrator
/// unable to kill or lock.
const MAX_WATCHES: usize = 32;
/// How long a client may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long a reply (or a watch frame) may wait on a client that does not read.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// What the control commands act on.
pub struct Control {
    pub live: Arc<Registry>,
    pub locks: Arc<Locks>,
    /// The daemon's reload (none: `reload` is refused).
    pub reload: Option<Arc<dyn Reload>>,
}

/// The bound control socket; the file is removed when this drops.
pub struct Bound {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates the control socket (see the module docs). Call inside the runtime.
pub fn bind(settings: &ControlSettings) -> anyhow::Result<Bound> {
    let path = settings.socket.clone();
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .context("[control] socket has no directory")?;
    let gid = match &settings.group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .with_context(|| format!("[control] group {name:?}: cannot look it up"))?
                .with_context(|| format!("[control] group {name:?} does not exist"))?
                .gid
                .as_raw(),
        ),
        None => None,
    };
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    check_directory(parent)?;
    match std::fs::symlink_metadata(&path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; remove it or set [control] socket",
                    path.display()
                );
            }
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                bail!(
                    "{} answers: another gatehouse is running with this control socket",
                    path.display()
                );
            }
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove the stale {}", path.display()))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    // Bind in a private directory, set the mode, then move into place.
    let nonce: u64 = rand::random();
    let private = parent.join(format!(".gatehouse-control-{nonce:016x}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("cannot create {}", private.display()))?;
    let result = (|| -> anyhow::Result<std::os::unix::net::UnixListener> {
        let tmp = private.join("s");
        let l = std::os::unix::net::UnixListener::bind(&tmp)
            .with_context(|| format!("cannot bind {}", tmp.display()))?;
        let mode = if gid.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {}", tmp.display()))?;
        if let Some(g) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(g))
                .with_context(|| format!("cannot give {} to group {g}", tmp.display()))?;
        }
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot move the socket to {}", path.display()))?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let l = result?;
    l.set_nonblocking(true)?;
    let listener = UnixListener::from_std(l)?;
    Ok(Bound { listener, path })
}

/// Refuses a socket directory where someone else could replace the socket
/// after it is created: one owned by another user (not root), or one that
/// others may write to without the sticky bit. There, anyone could rename
/// the daemon's socket away and put their own in its place, and the
/// administrators' `gatehouse lock` would talk to them.
fn check_directory(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(dir).with_context(|| format!("cannot inspect {}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        bail!(
            "{} belongs to uid {}: another user could replace the control socket; \
             use a directory of this user's or root's (e.g. /run/gatehouse)",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        bail!(
            "{} is writable by everyone (mode {:04o}) without the sticky bit: \
             anyone could replace the control socket; use a private directory \
             (e.g. /run/gatehouse) or chmod +t",
            dir.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

/// Serves the control socket until shutdown.
pub async fn serve(bound: Bound, control: Arc<Control>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let watch_slots = Arc::new(Semaphore::new(MAX_WATCHES));
    loop {
        let accepted = tokio::select! {
            a = bound.listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let control = control.clone();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = write_line(&mut stream, &Reply::error("gatehouse is busy; retry")).await;
            });
            continue;
        };
        let stop = shutdown.clone();
        let watch_slots = watch_slots.clone();
        tokio::spawn(async move {
            handle(stream, control, stop, permit, watch_slots).await;
        });
    }
    drop(bound);
}

/// The local user behind a connection: `name (uid N)`, and the pid.
fn who(stream: &UnixStream) -> (String, i32) {
    match stream.peer_cred() {
        Ok(c) => {
            let uid = c.uid();
            let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| "?".into());
            (format!("{name} (uid {uid})"), c.pid().unwrap_or(0))
        }
        Err(_) => ("unknown".into(), 0),
    }
}

async fn write_line<T: serde::Serialize>(stream: &mut UnixStream, v: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(io::Error::other)?;
    line.push(b'\n');
    match tokio::time::timeout(WRITE_DEADLINE, stream.write_all(&line)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client does not read",
        )),
    }
}

/// Reads one request line: bounded, with a deadline.
async fn read_request<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<Request, String> {
    let mut line = Vec::new();
    let mut limited = (&mut *r).take(MAX_REQUEST as u64 + 1);
    let read = limited.read_until(b'\n', &mut line);
    match tokio::time::timeout(REQUEST_DEADLINE, read).await {
        Err(_) => return Err("no request within 10 s".into()),
        Ok(Err(e)) => return Err(format!("read error: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST {
        return Err("request too long".into());
    }
    serde_json::from_slice(&line).map_err(|e| format!("not a request: {e}"))
}

async fn handle(
    stream: UnixStream,
    control: Arc<Control>,
    stop: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
    watch_slots: Arc<Semaphore>,
) {
    let (by, pid) = who(&stream);
    let mut reader = BufReader::new(stream);
    let req = match read_request(&mut reader).await {
        Ok(r) => r,
        Err(e) => {
            audit::control_command("invalid", &by, pid, "-", "refused", &e);
            let _ = write_line(reader.get_mut(), &Reply::error(e)).await;
            return;
        }
    };
    if let Request::Watch { id } = &req {
        // The command slot goes back now; the watch holds a watch slot.
        drop(permit);
        let Ok(_watching) = watch_slots.try_acquire_owned() else {
            let e = format!("{MAX_WATCHES} watches are open already; stop one first");
            audit::control_command("sessions watch", &by, pid, id, "failed", &e);
            let _ = write_line(reader.get_mut(), &Reply::error(e)).await;
            return;
        };
        watch(reader, &control, id, &by, pid, stop).await;
        return;
    }
    let (reply, subject) = run(&control, &req, &by).await;
    let result = if reply.ok { "ok" } else { "failed" };
    let detail = reply
        .error
        .as_deref()
        .or(reply.message.as_deref())
        .unwrap_or("");
    audit::control_command(req.name(), &by, pid, &subject, result, &first_line(detail));
    let _ = write_line(reader.get_mut(), &reply).await;
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

/// A reason an administrator typed, fit to show users and the journal.
fn clean(text: &str) -> String {
    crate::locks::clean_reason(text)
}

/// Runs one command; returns the reply and the subject for the audit log.
async fn run(control: &Control, req: &Request, by: &str) -> (Reply, String) {
    match req {
        Request::Sessions => (
            Reply {
                sessions: Some(control.live.list()),
                ..Reply::ok()
            },
            "-".into(),
        ),
        Request::Kill { id, reason } => {
            let Some(s) = control.live.get(id) else {
                return (
                    Reply::error(format!(
                        "no live session {id}; `gatehouse sessions` lists them"
                    )),
                    id.clone(),
                );
            };
            let reason = reason.as_deref().map(clean).filter(|r| !r.is_empty());
            let text = match &reason {
                Some(r) => format!("session ended by an administrator: {r}"),
                None => "session ended by an administrator".to_string(),
            };
            if !s.end(&text) {
                // A second kill (or a kill racing a lock): the first reason stands.
                return (
                    Reply::ok().message(format!(
                        "session {id} is already ending: {}",
                        s.end_requested().unwrap_or_default()
                    )),
                    id.clone(),
                );
            }
            (
                Reply {
                    ended: Some(vec![id.clone()]),
                    ..Reply::ok().message(format!(
                        "session {id} of {} on {} ended",
                        s.info.user, s.info.target
                    ))
                },
                id.clone(),
            )
        }
        Request::Lock {
            kind,
            name,
            reason,
            for_secs,
        } => {
            let subject = format!("{} {name}", kind.as_str());
            if let Err(e) = check_name(*kind, name) {
                return (Reply::error(e), subject);
            }
            let reason = clean(reason);
            let now = crate::auth::unix_now();
            let until = match for_secs {
                Some(0) => return (Reply::error("--for must be longer than 0s"), subject),
                Some(s) => Some(now.saturating_add(*s)),
                None => None,
            };
            let lock = Lock {
                kind: *kind,
                name: name.clone(),
                reason,
                created: now,
                until,
                by: by.to_string(),
            };
            if let Err(e) = control.locks.add(lock.clone()) {
                tracing::error!(error = %e, "cannot persist a lock");
                return (
                    Reply::error(format!("the lock could not be saved, nothing changed: {e}")),
                    subject,
                );
            }
            let ended = control.live.end_matching(
                |s| lock.covers(s),
                &format!("session ended: {}", lock.message()),
            );
            audit::lock_set(&subject, &lock.reason, until.unwrap_or(0), by, ended.len());
            let until_text = match until {
                Some(u) => format!(
                    "until {}",
                    humantime::format_rfc3339_seconds(
                        SystemTime::UNIX_EPOCH + Duration::from_secs(u)
                    )
                ),
                None => "until unlocked".to_string(),
            };
            (
                Reply {
                    ended: Some(ended.clone()),
                    ..Reply::ok().message(format!(
                        "locked {subject} {until_text}; {} live session(s) ended",
                        ended.len()
                    ))
                },
                subject,
            )
        }
        Request::Unlock { kind, name } => {
            let subject = format!("{} {name}", kind.as_str());
            match control.locks.remove(*kind, name) {
                Ok(Some(_)) => {
                    audit::lock_lifted(&subject, by);
                    (Reply::ok().message(format!("unlocked {subject}")), subject)
                }
                Ok(None) => (
                    Reply::error(format!(
                        "{subject} is not locked; `gatehouse locks` lists the locks"
                    )),
                    subject,
                ),
                Err(e) => (
                    Reply::error(format!(
                        "the lock could not be removed, nothing changed: {e}"
                    )),
                    subject,
                ),
            }
        }
        Request::Locks => (
            Reply {
                locks: Some(control.locks.list()),
                ..Reply::ok()
            },
            "-".into(),
        ),
        Request::Reload => match &control.reload {
            None => (Reply::error("this daemon cannot reload"), "-".into()),
            Some(r) => match r.reload(by.to_string()).await {
                Ok(summary) => (Reply::ok().message(summary), "-".into()),
                Err(text) => (
                    Reply {
                        config_error: true,
                        ..Reply::error(text)
                    },
                    "-".into(),
                ),
            },
        },
        // Handled by `watch`.
        Request::Watch { id } => (Reply::error("watch is a stream"), id.clone()),
    }
}

/// Names a lock can carry: what a user, target or device key looks like.
fn check_name(kind: LockKind, name: &str) -> Result<(), String> {
    match kind {
        LockKind::Device => {
            let key = base64::engine::general_purpose::STANDARD
                .decode(name)
                .map_err(|_| format!("{name:?} is not a WireGuard public key (base64)"))?;
            if key.len() != 32 {
                return Err(format!("{name:?} is not a WireGuard public key (32 bytes)"));
            }
            Ok(())
        }
        LockKind::User | LockKind::Target => {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-@".contains(c));
            if ok {
                Ok(())
            } else {
                Err(format!("{name:?} is not a {} name", kind.as_str()))
            }
        }
    }
}

/// `sessions watch`: the reply, then the session's terminal output as it
/// happens, until the session ends or the watcher hangs up. Read-only:
/// nothing the watcher sends reaches the session.
async fn watch(
    mut reader: BufReader<UnixStream>,
    control: &Control,
    id: &str,
    by: &str,
    pid: i32,
    mut stop: watch::Receiver<bool>,
) {
    let Some(s) = control.live.get(id) else {
        let e = format!("no live session {id}; `gatehouse sessions` lists them");
        audit::control_command("sessions watch", by, pid, id, "failed", &e);
        let _ = write_line(reader.get_mut(), &Reply::error(e)).await;
        return;
    };
    if s.info.kind != crate::live::SessionKind::Ssh {
        let e = format!(
            "session {id} is a {} session: only terminal sessions can be watched (its statements are in the recording)",
            s.info.kind.as_str()
        );
        audit::control_command("sessions watch", by, pid, id, "failed", &e);
        let _ = write_line(reader.get_mut(), &Reply::error(e)).await;
        return;
    }
    let mut watcher = s.watch();
    audit::control_command("sessions watch", by, pid, id, "ok", "");
    let announced = s.info.announce_watch;
    audit::session_watch("start", id, by, &s.info.user, &s.info.target, announced);
    if announced {
        s.notify(&format!(
            "an administrator ({by}) is now watching this session, read-only"
        ));
    }
    let reply = Reply {
        sessions: Some(vec![s.snapshot()]),
        ..Reply::ok()
    };
    let mut alive = write_line(reader.get_mut(), &reply).await.is_ok();
    let mut sink = [0u8; 256];
    while alive {
        let frame = tokio::select! {
            w = watcher.next() => match w {
                Watched::Output(b) => Frame::Output {
                    data: base64::engine::general_purpose::STANDARD.encode(&b),
                },
                Watched::Lost(n) => Frame::Lost { chunks: n },
                Watched::Ended => Frame::End,
            },
            // The watcher hung up (or sent something: ignored, never forwarded).
            n = reader.read(&mut sink) => match n {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            _ = stop.changed() => Frame::End,
        };
        let end = frame == Frame::End;
        alive = write_line(reader.get_mut(), &frame).await.is_ok() && !end;
    }
    drop(watcher);
    audit::session_watch("end", id, by, &s.info.user, &s.info.target, announced);
    if announced {
        s.notify(&format!("the administrator ({by}) stopped watching"));
    }
}

/// For tests and `Drop`: the socket's path.
impl Bound {
    pub fn path(&self) -> &Path {
        &self.path
    }
}
