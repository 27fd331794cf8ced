"""The benchmark world: processes, services and client configs on loopback.

Everything started here is registered with `Procs`, which kills it (with
every descendant: sshd's per-connection processes call setsid, so a process
group is not enough) on exit, on an exception and on SIGINT/SIGTERM/SIGHUP.
Only loopback addresses are used. Standard library only.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(Exception):
    """A setup step failed; the message says which and shows its output."""


# --------------------------------------------------------------- /proc ---


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the `(comm)`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    close = text.rfind(")")
    comm = text[text.find("(") + 1 : close]
    return comm, text[close + 2 :].split()


def cpu_seconds(pid):
    """utime + stime of a live process (all its threads), in seconds."""
    st = _stat_fields(pid)
    if st is None:
        return None
    rest = st[1]
    # rest[0] is field 3 (state); utime/stime are fields 14/15.
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def rss_kib(pid):
    """VmRSS of a live process in KiB (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid):
    """Direct children, from /proc/PID/task/*/children."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def descendants(pid):
    found, frontier = [], [pid]
    while frontier:
        for c in children(frontier.pop()):
            if c not in found:
                found.append(c)
                frontier.append(c)
    return found


def comm(pid):
    st = _stat_fields(pid)
    return st[0] if st else None


class TreeCpu:
    """CPU seconds spent by a process tree while a measurement runs.

    Per-connection processes exit at the end of a transfer, taking their
    counters with them, so the tree is polled (every 20 ms by the caller)
    and the last value seen per pid is kept: the loss is at most one
    interval per process. For a daemon (`include_root=False`) only the
    processes that appear after construction count, so earlier sessions and
    the listener itself are excluded; `only_comm` keeps just the processes
    of that name (e.g. `sshd`, leaving out the `cat` a session runs)."""

    def __init__(self, root_pid, include_root=False, only_comm=None):
        self.root = root_pid
        self.include_root = include_root
        self.only_comm = only_comm
        self.before = set() if include_root else set(descendants(root_pid))
        self.seen = {}

    def poll(self):
        pids = descendants(self.root)
        if self.include_root:
            pids.append(self.root)
        for pid in pids:
            if pid in self.before:
                continue
            if self.only_comm is not None and comm(pid) != self.only_comm:
                continue
            cpu = cpu_seconds(pid)
            if cpu is not None:
                self.seen[pid] = max(cpu, self.seen.get(pid, 0.0))

    def total(self):
        return sum(self.seen.values())


def _tree_cpu_with_children(pid):
    """utime + stime + cutime + cstime (seconds) of `pid` and every live
    descendant: with the reaped children folded in, this is all the CPU the
    tree has used, including processes that already exited."""
    total = 0.0
    for p in [pid] + descendants(pid):
        st = _stat_fields(p)
        if st is not None:
            rest = st[1]
            total += sum(int(x) for x in rest[11:15]) / CLK_TCK
    return total


def _system_busy_seconds():
    """CPU seconds all processes spent in user and system mode (all CPUs).
    Interrupt and softirq time (the loopback network's, mostly) is left
    out: the kernel charges it to no process, so it could not be told
    apart from another process's."""
    with open("/proc/stat") as f:
        user, nice, system = (int(x) for x in f.readline().split()[1:4])
    return (user + nice + system) / CLK_TCK


class Disturbance:
    """How much CPU processes other than the benchmark's used while a row
    ran: the machine's user + system time minus that of this process's
    tree. Approximate, but a concurrent build or test suite shows up
    plainly."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.sys0 = _system_busy_seconds()
        self.own0 = _tree_cpu_with_children(os.getpid())

    def result(self):
        wall = time.monotonic() - self.t0
        sys_busy = _system_busy_seconds() - self.sys0
        own = _tree_cpu_with_children(os.getpid()) - self.own0
        foreign = max(0.0, sys_busy - own)
        return {
            "wall_s": wall,
            "busy_cpu_s": sys_busy,
            "bench_cpu_s": own,
            "other_cpu_s": foreign,
            "other_pct": 100.0 * foreign / max(1e-9, wall * (os.cpu_count() or 1)),
        }


def wait_for_port(port, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_checked(args, timeout=60, **kw):
    """Runs a setup command; BenchError with its output when it fails."""
    try:
        out = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
            **kw,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout}s: {' '.join(map(str, args))}")
    if out.returncode != 0:
        raise BenchError(
            f"`{' '.join(map(str, args))}` exited {out.returncode}:\n{out.stdout}{out.stderr}"
        )
    return out.stdout


def become_subreaper():
    """ssh exits without waiting for its `-J` proxy ssh, which would then be
    reparented to init and its CPU time lost to the accounting of the
    benchmark's own CPU (see `Disturbance`). As a child subreaper this
    process inherits such orphans and `reap_orphans` collects them."""
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_orphans(keep):
    """Waits for zombie children other than the pids in `keep` (which
    belong to `subprocess.Popen` objects that wait for themselves)."""
    for pid in children(os.getpid()):
        if pid in keep:
            continue
        st = _stat_fields(pid)
        if st is not None and st[1][0] == "Z":
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def raise_nofile():
    """Children inherit this: 1,000 held sessions need ~2,000 descriptors
    in gatehouse alone."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    want = min(want, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------ processes ---


class Procs:
    """Every long-running process the benchmark starts, stopped together."""

    def __init__(self):
        self.procs = []
        self.cleanups = []
        self._installed = False

    def spawn(self, args, log_path, env=None, **kw):
        log = open(log_path, "ab")
        p = subprocess.Popen(
            args,
            stdin=kw.pop("stdin", subprocess.DEVNULL),
            stdout=kw.pop("stdout", log),
            stderr=log,
            env=env,
            start_new_session=True,
            **kw,
        )
        log.close()
        self.procs.append(p)
        return p

    def track(self, p):
        self.procs.append(p)
        return p

    @staticmethod
    def kill(p):
        if p.poll() is None:
            tree = descendants(p.pid)
            for sig_target in [lambda: os.killpg(p.pid, signal.SIGKILL)] + [
                (lambda pid=pid: os.kill(pid, signal.SIGKILL)) for pid in tree
            ]:
                try:
                    sig_target()
                except OSError:
                    pass
            try:
                p.kill()
            except OSError:
                pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self):
        while self.procs:
            self.kill(self.procs.pop())
        # Daemons that are not our children (the postmaster `pg_ctl`
        # starts), last in, first out.
        while self.cleanups:
            try:
                self.cleanups.pop()()
            except Exception as e:  # noqa: BLE001 - cleanup goes on
                print(f"bench: cleanup failed: {e}", flush=True)

    def install_signal_handlers(self):
        """SIGTERM/SIGHUP behave like Ctrl-C (SIGINT): unwind, then `finally`
        cleans up."""
        if self._installed:
            return

        def interrupt(signum, _frame):
            raise KeyboardInterrupt(f"signal {signum}")

        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, interrupt)
        # Also when started with SIGINT ignored (a background job of a script).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self._installed = True


# ------------------------------------------------------------- services ---


def keygen(path, comment):
    run_checked(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return Path(f"{path}.pub").read_text().strip()


def key_only(line):
    """`TYPE BASE64` without the comment."""
    return " ".join(line.split()[:2])


class Sshd:
    """A real OpenSSH sshd on a loopback port with its own host key.

    `ciphers` restricts what it accepts, so every connection to it uses
    that cipher whatever the client prefers. LogLevel DEBUG1 so the
    negotiated algorithms can be read from its log."""

    def __init__(self, procs, root, name, authorized, ciphers, extra=()):
        self.name = name
        self.dir = Path(root) / name
        self.dir.mkdir(parents=True)
        host = self.dir / "host_ed25519"
        self.host_key = key_only(keygen(host, name))
        (self.dir / "authorized_keys").write_text("\n".join(authorized) + "\n")
        self.log_path = self.dir / "sshd.log"
        self.port = None
        self.proc = None
        for _ in range(3):
            self.port = free_port()
            lines = list(extra) + [
                "ListenAddress 127.0.0.1",
                f"Port {self.port}",
                f"HostKey {host}",
                "PidFile none",
                f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                "StrictModes no",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "Subsystem sftp /usr/lib/openssh/sftp-server",
                "PrintMotd no",
                "PrintLastLog no",
                "UseDNS no",
                f"Ciphers {ciphers}",
                # Setup rows open logins back to back: no throttling.
                "MaxStartups 1000:30:2000",
                "LogLevel DEBUG1",
            ]
            cfg = self.dir / "sshd_config"
            cfg.write_text("\n".join(lines) + "\n")
            Path("/run/sshd").mkdir(exist_ok=True)
            sshd = shutil.which("sshd") or "/usr/sbin/sshd"
            self.proc = procs.spawn([sshd, "-D", "-e", "-f", str(cfg)], self.log_path)
            if wait_for_port(self.port, 20, self.proc):
                return
            Procs.kill(self.proc)
        raise BenchError(f"sshd {name} did not start:\n{self.log_text()}")

    def set_authorized(self, lines):
        """sshd reads authorized_keys on every login."""
        tmp = self.dir / "authorized_keys.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.dir / "authorized_keys")

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0


class Gatehouse:
    """The release binary with a generated config and state dir."""

    def __init__(self, procs, binary, root, user, user_key_line, login, targets, extra_roles=(), extra_toml=""):
        """`targets`: list of (name, port, pinned host key). `extra_roles`
        are more roles of the user, defined (with their targets) in the raw
        TOML `extra_toml` appended to the config."""
        self.binary = binary
        self.dir = Path(root) / "gatehouse"
        state = self.dir / "state"
        state.mkdir(parents=True)
        os.chmod(self.dir, 0o700)
        os.chmod(state, 0o700)
        self.config = self.dir / "config.toml"
        self.port = free_port()
        self.user = user
        q = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
        names = ", ".join(q(t[0]) for t in targets)
        # Sessions are recorded (there is no unrecorded mode), sealed to an
        # auditor key nobody here uses; the benchmark deletes finished
        # recordings between runs (`clear_recordings`) so that gigabytes of
        # `cat` output do not pile up on disk.
        auditor = keygen(self.dir / "auditor", "bench-auditor")
        self.recordings = self.dir / "recordings"
        lines = [
            "[gateway]",
            f"state_dir = {q(str(state))}",
            f'ssh_listen = ["127.0.0.1:{self.port}"]',
            "max_connections = 4096",
            "",
            "[recordings]",
            f"recipients = [{q(key_only(auditor))}]",
            f"dir = {q(str(self.recordings))}",
            "",
            "[auth]",
            # One code login, then the lease admits every further login
            # from this key and 127.0.0.1 for the whole run.
            'mfa_lease = "4h"',
            "",
            "[[users]]",
            f"name = {q(user)}",
            "roles = [" + ", ".join(q(r) for r in ["bench", *extra_roles]) + "]",
            f"ssh_keys = [{q(user_key_line)}]",
            "",
            "[[roles]]",
            'name = "bench"',
            f"targets = {{ names = [{names}] }}",
            f"logins = [{q(login)}]",
        ]
        for name, port, host_key in targets:
            lines += [
                "",
                "[[targets]]",
                f"name = {q(name)}",
                'kind = "ssh"',
                f'address = "127.0.0.1:{port}"',
                f"host_keys = [{q(host_key)}]",
            ]
        if extra_toml:
            lines += ["", extra_toml.rstrip()]
        self.config.write_text("\n".join(lines) + "\n")
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "GATEHOUSE_CONFIG")
        }
        self.env["RUST_LOG"] = "info,russh=warn"
        self.log_path = self.dir / "gatehouse.stderr"
        self.client_pubkey = self._key_line(self.cli("pubkey"))
        self.host_key = key_only(self._key_line(self.cli("hostkey")))
        self.proc = None

    @staticmethod
    def _key_line(text):
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("ssh-") or " ssh-" in line:
                return line
        raise BenchError(f"no key line in:\n{text}")

    def cli(self, *args):
        return run_checked(
            [str(self.binary), *args, "--config", str(self.config)], env=self.env
        )

    def cli_stdin(self, args, data):
        """A CLI command with `data` on its stdin (e.g. `target credential
        ... --stdin`); BenchError with its output when it fails. The output
        is not echoed into the error when it could hold `data`."""
        out = subprocess.run(
            [str(self.binary), *args, "--config", str(self.config)],
            input=data,
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
            start_new_session=True,
        )
        if out.returncode != 0:
            text = (out.stdout + out.stderr).replace(data.strip(), "<stdin>")
            raise BenchError(f"`gatehouse {' '.join(args)}` exited {out.returncode}:\n{text}")
        return out.stdout

    def enroll(self):
        """Enrolls the user; returns the base32 secret from `Secret: ...`."""
        out = self.cli("user", "enroll", self.user)
        for line in out.splitlines():
            if line.strip().startswith("Secret:"):
                return "".join(line.split(":", 1)[1].split())
        raise BenchError(f"no `Secret:` line in `user enroll`:\n{out}")

    def start(self, procs):
        self.proc = procs.spawn(
            [str(self.binary), "run", "--config", str(self.config)],
            self.log_path,
            env=self.env,
        )
        if not wait_for_port(self.port, 30, self.proc):
            raise BenchError(
                f"gatehouse did not listen on 127.0.0.1:{self.port}:\n"
                + self.log_path.read_text(errors="replace")[-4000:]
            )

    @property
    def pid(self):
        return self.proc.pid

    def recordings_bytes(self):
        total = 0
        for dirpath, _dirs, files in os.walk(self.recordings):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(dirpath, name))
                except OSError:
                    pass
        return total

    def _recordings(self):
        """[(path, ended?)] of the recording directories."""
        out = []
        try:
            entries = list(os.scandir(self.recordings))
        except OSError:
            return out
        for e in entries:
            if not e.is_dir():
                continue
            try:
                ended = json.loads((Path(e.path) / "meta.json").read_text()).get("end") is not None
            except (OSError, ValueError):
                ended = False
            out.append((e.path, ended))
        return out

    def wait_recordings_ended(self, timeout=10.0):
        """Until every recording has its end written (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(ended for _, ended in self._recordings()):
                return True
            time.sleep(0.02)
        return False

    def clear_recordings(self):
        """Removes the recordings of sessions that have ended; open ones are
        left alone."""
        for path, ended in self._recordings():
            if ended:
                shutil.rmtree(path, ignore_errors=True)


class EchoTarget:
    """`bench-load target`: the lightweight SSH server for the concurrency
    row. Its host key and port exist before gatehouse's config is written;
    it starts once gatehouse's client key (the one key it accepts) is known."""

    def __init__(self, loadgen, root):
        self.loadgen = loadgen
        self.dir = Path(root) / "echo-target"
        self.dir.mkdir(parents=True)
        self.key = self.dir / "host_ed25519"
        self.host_key = key_only(keygen(self.key, "echo-target"))
        self.port = free_port()
        self.proc = None

    def start(self, procs, authorized_line, lifetime):
        log = self.dir / "target.log"
        self.proc = procs.spawn(
            [
                str(self.loadgen),
                "target",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--host-key",
                str(self.key),
                "--authorized-key",
                authorized_line,
                "--max-lifetime-secs",
                str(int(lifetime)),
            ],
            log,
        )
        if not wait_for_port(self.port, 20, self.proc):
            raise BenchError("bench-load target did not start: " + log.read_text())


class Client:
    """The stock OpenSSH client: key, known_hosts, one ssh_config per cipher.

    `ssh -J` starts a second ssh for the jump host which reads the same `-F`
    file, so `Ciphers` there applies to the outer leg as well. The TOTP code
    comes from an SSH_ASKPASS script reading `codes`."""

    def __init__(self, root, key_path, gw, jump, targets, variants):
        """`targets`: {alias: (port, host key)} reachable directly (and through
        the OpenSSH jump host); gatehouse target names are trusted with the
        gateway's host key. `variants`: [(cipher, kex or None)], one
        ssh_config each."""
        self.dir = Path(root) / "client"
        self.dir.mkdir(parents=True)
        self.key_path = key_path
        known = [
            f"[127.0.0.1]:{gw.port} {gw.host_key}",
            f"[127.0.0.1]:{jump.port} {jump.host_key}",
        ]
        for port, host_key in targets.values():
            known.append(f"[127.0.0.1]:{port} {host_key}")
        self.gw_names = []
        for alias in targets:
            self.gw_names.append(alias)
            known.append(f"{alias} {gw.host_key}")
        (self.dir / "known_hosts").write_text("\n".join(known) + "\n")
        self.codes = self.dir / "codes"
        self.codes.write_text("\n")
        askpass = self.dir / "askpass.sh"
        askpass.write_text(
            "#!/bin/sh\n"
            "# SSH_ASKPASS for the benchmark: log the prompt, print the code.\n"
            f"echo \"$*\" >> '{self.dir}/askpass.log'\n"
            f"head -n 1 '{self.codes}'\n"
        )
        os.chmod(askpass, 0o700)
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK",)
        }
        self.env.update(
            SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0"
        )
        self.configs = {}
        for cipher, kex in variants:
            self.configs[self.variant(cipher, kex)] = self._write_config(cipher, kex, gw, jump, targets)

    @staticmethod
    def variant(cipher, kex=None):
        """The name of one generated ssh_config: the cipher, plus the key
        exchange when that is pinned too."""
        return f"{cipher}|{kex}" if kex else cipher

    def _write_config(self, cipher, kex, gw, jump, targets):
        short = cipher.split("-")[0].split("@")[0]
        if kex:
            short += "." + kex.split("@")[0]
        path = self.dir / f"ssh_config.{short}"
        lines = [
            # ssh takes the first value it reads for an option.
            "Host *",
            f"  Ciphers {cipher}",
        ]
        if kex:
            lines.append(f"  KexAlgorithms {kex}")
        lines += [
            "",
            "Host gw",
            "  HostName 127.0.0.1",
            f"  Port {gw.port}",
            f"  User {gw.user}",
            "",
            "Host jump",
            "  HostName 127.0.0.1",
            f"  Port {jump.port}",
            "",
        ]
        for alias, (port, _) in targets.items():
            lines += [f"Host direct-{alias}", "  HostName 127.0.0.1", f"  Port {port}", ""]
        lines += [
            "Host *",
            f"  IdentityFile \"{self.key_path}\"",
            "  IdentitiesOnly yes",
            "  IdentityAgent none",
            f"  UserKnownHostsFile \"{self.dir / 'known_hosts'}\"",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  UpdateHostKeys no",
            "  CheckHostIP no",
            "  PasswordAuthentication no",
            "  KbdInteractiveAuthentication yes",
            "  PreferredAuthentications publickey,keyboard-interactive",
            "  NumberOfPasswordPrompts 1",
            "  BatchMode no",
            "  Compression no",
            "  ConnectTimeout 10",
            "  LogLevel ERROR",
            "  ServerAliveInterval 0",
            "  ControlMaster no",
            "  ControlPath none",
        ]
        path.write_text("\n".join(lines) + "\n")
        return path

    def set_code(self, code):
        self.codes.write_text(code + "\n")

    def dest(self, path, target, login):
        """ssh arguments naming `target` by `path`: direct, jump (OpenSSH
        jump host) or gatehouse."""
        if path == "direct":
            return [f"{login}@direct-{target}"]
        if path == "jump":
            return ["-J", "jump", f"{login}@direct-{target}"]
        if path == "gatehouse":
            return ["-J", "gw", f"{login}@{target}"]
        raise ValueError(path)

    def ssh(self, variant, *args):
        """`ssh -F CONFIG ARGS...`; `variant` is a cipher or `Client.variant(...)`."""
        return ["ssh", "-F", str(self.configs[variant]), *args]

    def sftp(self, cipher, *args):
        # sftp's -b turns BatchMode on, which would disable the code prompt;
        # the earlier -o wins.
        return ["sftp", "-F", str(self.configs[cipher]), "-o", "BatchMode=no", *args]


# ------------------------------------------------------------ PostgreSQL ---

PG_OS_USER = "gatehouse-test"

OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = gatehouse bench
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[v3_client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_certificates(d, client=False):
    """In directory `d`: a CA (`ca.pem`, `ca.key`) and a server certificate
    it signed (`server.crt`, `server.key`; SAN IP:127.0.0.1, DNS:localhost),
    ECDSA P-256, valid 3 days; with `client`, also a client certificate
    (`client.crt`, `client.key`, clientAuth)."""
    d = Path(d)
    (d / "openssl.cnf").write_text(OPENSSL_CNF)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run_checked(["openssl", "req", "-x509", "-config", "openssl.cnf", "-extensions", "v3_ca", *ec,
                 "-sha256", "-days", "3", "-subj", "/CN=gatehouse bench CA",
                 "-keyout", "ca.key", "-out", "ca.pem"], cwd=d)
    leaves = [("server", "localhost", "v3_server", "2")]
    if client:
        leaves.append(("client", "bench-client", "v3_client", "3"))
    for name, cn, ext, serial in leaves:
        run_checked(["openssl", "req", "-new", "-config", "openssl.cnf", *ec, "-subj", f"/CN={cn}",
                     "-keyout", f"{name}.key", "-out", f"{name}.csr"], cwd=d)
        run_checked(["openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                     "-set_serial", serial, "-sha256", "-days", "3", "-extfile", "openssl.cnf",
                     "-extensions", ext, "-out", f"{name}.crt"], cwd=d)
        os.chmod(d / f"{name}.key", 0o600)


def pg_bindir():
    """The newest /usr/lib/postgresql/N/bin with initdb, pg_ctl and pgbench."""
    best = None
    try:
        entries = os.listdir("/usr/lib/postgresql")
    except OSError:
        return None
    for e in entries:
        if not e.isdigit():
            continue
        b = Path("/usr/lib/postgresql") / e / "bin"
        if all((b / t).exists() for t in ("initdb", "pg_ctl", "pgbench", "psql")):
            if best is None or int(e) > best[0]:
                best = (int(e), b)
    return best[1] if best else None


def _os_user():
    """(uid, gid) to run the server programs as: `gatehouse-test` when this
    runs as root (postgres and pgbouncer refuse root; created here if
    missing), else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pw = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        run_checked(["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", PG_OS_USER])
        pw = pwd.getpwnam(PG_OS_USER)
    return pw.pw_uid, pw.pw_gid


def _as_user_kw(ids):
    if ids is None:
        return {}
    return {"user": ids[0], "group": ids[1], "extra_groups": []}


def _chown_tree(path, ids):
    if ids is None:
        return
    for dirpath, dirs, files in os.walk(path):
        os.chown(dirpath, *ids)
        for n in files:
            os.chown(os.path.join(dirpath, n), *ids)


def proc_cpu_with_children(pid):
    """utime + stime + cutime + cstime of one process (seconds): for the
    postmaster this includes every backend it has reaped."""
    st = _stat_fields(pid)
    if st is None:
        return None
    return sum(int(x) for x in st[1][11:15]) / CLK_TCK


class PgCluster:
    """A real PostgreSQL server on a loopback port: `initdb` in `dir`,
    TLS from a CA made here with `openssl` (server cert for IP:127.0.0.1),
    SCRAM over `hostssl` only (so every TCP client, pgbouncer and gatehouse
    included, speaks TLS to it), started with `pg_ctl`; stopped by `stop()`
    and, as a last resort, by `Procs` through its postmaster pid."""

    def __init__(self, procs, root, conf=()):
        self.bin = pg_bindir()
        if self.bin is None:
            raise BenchError("no /usr/lib/postgresql/*/bin with initdb, pg_ctl, pgbench, psql (postgresql package)")
        for tool in ("openssl",):
            if shutil.which(tool) is None:
                raise BenchError(f"{tool} is missing")
        self.ids = _os_user()
        self.dir = Path(root) / "pg"
        self.dir.mkdir()
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.sock.mkdir()
        self.log_path = self.dir / "postgres.log"
        self.superuser_password = "bench-super-" + os.urandom(6).hex()
        (self.dir / "pwfile").write_text(self.superuser_password + "\n")
        self._certificates()
        self.ca_pem = self.dir / "ca.pem"
        _chown_tree(self.dir, self.ids)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                   "--auth=scram-sha-256", "--pwfile", str(self.dir / "pwfile"),
                   "-E", "UTF8", "--locale=C", "-N"], timeout=180)
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
        )
        self.extra_conf = list(conf)
        self.procs = procs
        self.postmaster_pid = None
        for _ in range(3):
            self.port = free_port()
            self._write_conf()
            r = subprocess.run(
                [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60", "start"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                cwd=self.dir, **_as_user_kw(self.ids),
            )
            if r.returncode == 0:
                self.postmaster_pid = int((self.data / "postmaster.pid").read_text().split()[0])
                return
            log = self.log_text()
            if "could not bind" not in log and "in use" not in log:
                raise BenchError(f"postgres did not start:\n{r.stdout}{r.stderr}\n{log[-3000:]}")
        raise BenchError("postgres could not bind a free port")

    def _run(self, args, timeout=60):
        r = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, cwd=self.dir, **_as_user_kw(self.ids))
        if r.returncode != 0:
            raise BenchError(f"`{' '.join(args)}` exited {r.returncode}:\n{r.stdout}{r.stderr}")
        return r.stdout

    def _certificates(self):
        make_certificates(self.dir)

    def _write_conf(self):
        conf = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.sock}'",
            "ssl = on",
            f"ssl_cert_file = '{self.dir / 'server.crt'}'",
            f"ssl_key_file = '{self.dir / 'server.key'}'",
            "password_encryption = 'scram-sha-256'",
            "max_connections = 60",
            "shared_buffers = 256MB",
            "dynamic_shared_memory_type = mmap",
            # Durability is not what is measured: without these the
            # TPC-B-like row measures this VM's fsync.
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "autovacuum = off",
            "log_connections = off",
        ] + self.extra_conf
        (self.data / "bench.conf").write_text("\n".join(conf) + "\n")
        main = self.data / "postgresql.conf"
        text = main.read_text()
        if "include 'bench.conf'" not in text:
            main.write_text(text + "\ninclude 'bench.conf'\n")
        _chown_tree(self.dir, self.ids)

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def psql(self, sql, db="postgres"):
        """As the superuser over the Unix socket (trust)."""
        return run_checked([str(self.bin / "psql"), "-h", str(self.sock), "-p", str(self.port), "-U", "postgres",
                            "-d", db, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql], timeout=120)

    def version(self):
        return self.psql("show server_version").strip()

    def cpu(self):
        """Server CPU seconds so far: the postmaster with every backend it
        has reaped (a pgbench run's backends exit when it ends)."""
        return proc_cpu_with_children(self.postmaster_pid) if self.postmaster_pid else None

    def live_backend_cpu(self):
        """CPU seconds of the postmaster's live children (backends still
        running, background workers)."""
        if not self.postmaster_pid:
            return 0.0
        total = 0.0
        for c in children(self.postmaster_pid):
            v = cpu_seconds(c)
            total += v or 0.0
        return total

    def stop(self):
        if self.postmaster_pid is None:
            return
        subprocess.run(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "stop", "-m", "immediate", "-w", "-t", "20"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60, cwd=self.dir, **_as_user_kw(self.ids),
        )
        try:
            os.kill(self.postmaster_pid, signal.SIGKILL)
        except OSError:
            pass
        self.postmaster_pid = None


class PgBouncer:
    """Debian's pgbouncer in session mode on a loopback port: clients log in
    with SCRAM (plain TCP, as to a pooler next to the application), and it
    logs in to the server over TLS (`server_tls_sslmode = verify-full`
    against the cluster's CA, as gatehouse does)."""

    def __init__(self, procs, cluster, db, user, password, pool_size=20):
        exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.path.exists(exe):
            raise BenchError("pgbouncer is missing (Debian package pgbouncer)")
        self.exe = exe
        self.dir = cluster.dir.parent / "pgbouncer"
        self.dir.mkdir()
        (self.dir / "users.txt").write_text(f'"{user}" "{password}"\n')
        self.log_path = self.dir / "pgbouncer.log"
        for _ in range(3):
            self.port = free_port()
            ini = [
                "[databases]",
                f"{db} = host=127.0.0.1 port={cluster.port} dbname={db}",
                "",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = scram-sha-256",
                f"auth_file = {self.dir / 'users.txt'}",
                "pool_mode = session",
                "max_client_conn = 200",
                f"default_pool_size = {pool_size}",
                "server_tls_sslmode = verify-full",
                f"server_tls_ca_file = {cluster.ca_pem}",
                "log_connections = 0",
                "log_disconnections = 0",
                "stats_period = 3600",
                "ignore_startup_parameters = extra_float_digits",
            ]
            cfg = self.dir / "pgbouncer.ini"
            cfg.write_text("\n".join(ini) + "\n")
            os.chmod(self.dir / "users.txt", 0o600)
            _chown_tree(self.dir, cluster.ids)
            self.proc = procs.spawn([exe, str(cfg)], self.log_path, **_as_user_kw(cluster.ids), cwd=self.dir)
            if wait_for_port(self.port, 20, self.proc):
                return
            Procs.kill(self.proc)
        raise BenchError("pgbouncer did not start:\n" + self.log_path.read_text(errors="replace")[-3000:])

    @property
    def pid(self):
        return self.proc.pid

    def version(self):
        r = subprocess.run([self.exe, "--version"], capture_output=True, text=True)
        return r.stdout.splitlines()[0].strip() if r.stdout else "pgbouncer"


# --------------------------------------------------------------- MariaDB ---

MARIADBD = "/usr/sbin/mariadbd"


def sql_literal(text):
    """A quoted SQL string literal (backslashes escaped: MariaDB's default
    sql_mode treats them as escapes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class MariaDb:
    """A real MariaDB server (Debian's mariadbd) on a loopback port: a
    datadir made by `mariadb-install-db` in `root/maria`, TLS from a CA made
    here with `openssl` (server certificate for IP:127.0.0.1, and a client
    certificate for sysbench, which hands libmariadb a key, certificate and
    CA whenever it asks for TLS), `require_secure_transport = ON` (so every
    TCP login, gatehouse's included, is TLS; root logs in over the socket
    only). Run as the unprivileged `gatehouse-test` when this runs as root,
    as the PostgreSQL server is (and as tests/common/mariadb.rs does).
    Stopped by `stop()` (TERM, then KILL), registered as a cleanup."""

    def __init__(self, procs, root, args=()):
        for tool in (MARIADBD,):
            if not os.path.exists(tool):
                raise BenchError(f"{tool} is missing (Debian package mariadb-server)")
        for tool in ("mariadb-install-db", "mariadb", "openssl"):
            if shutil.which(tool) is None:
                raise BenchError(f"{tool} is missing (Debian packages mariadb-server, mariadb-client, openssl)")
        self.ids = _os_user()
        self.dir = Path(root) / "maria"
        self.dir.mkdir()
        self.data = self.dir / "data"
        self.sock = self.dir / "mysqld.sock"
        self.log_path = self.dir / "mariadb.err"
        self.out_path = self.dir / "mariadbd.out"
        self.cnf = self.dir / "client.cnf"
        self.root_password = "bench-root-" + os.urandom(6).hex()
        make_certificates(self.dir, client=True)
        self.ca_pem = self.dir / "ca.pem"
        self.extra_args = list(args)
        self.proc = None
        _chown_tree(self.dir, self.ids)
        r = subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", f"--tmpdir={self.dir}",
             "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, cwd=self.dir,
            **_as_user_kw(self.ids),
        )
        if r.returncode != 0:
            raise BenchError(f"mariadb-install-db exited {r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        self._write_cnf(None)
        procs.cleanups.append(self.stop)
        last = ""
        for _ in range(3):
            self.port = free_port()
            err = self._spawn()
            if err is None:
                self._secure_root()
                return
            last = err
            if "Bind on TCP/IP port" not in err and "in use" not in err:
                break
        raise BenchError(f"mariadbd did not start:\n{last[-3000:]}")

    def _spawn(self):
        """Starts mariadbd; None when root can log in over the socket, else
        the log."""
        args = [
            MARIADBD,
            "--no-defaults",
            f"--datadir={self.data}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.sock}",
            f"--pid-file={self.dir / 'mariadbd.pid'}",
            f"--log-error={self.log_path}",
            f"--tmpdir={self.dir}",
            "--skip-name-resolve",
            f"--ssl-ca={self.ca_pem}",
            f"--ssl-cert={self.dir / 'server.crt'}",
            f"--ssl-key={self.dir / 'server.key'}",
            "--require-secure-transport=ON",
            # The sysbench tables fit in memory; durability is not what is
            # measured (the rows are read-only anyway).
            "--innodb-buffer-pool-size=256M",
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0",
            "--max-connections=100",
            "--local-infile=0",
        ] + self.extra_args
        try:
            os.remove(self.log_path)
        except OSError:
            pass
        _chown_tree(self.dir, self.ids)
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=self.dir,
                                         start_new_session=True, **_as_user_kw(self.ids))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return f"mariadbd exited\n{self.log_text()}"
            if self.sock.exists() and wait_for_port(self.port, 0.2) and self._sql_output("SELECT 1").returncode == 0:
                return None
            time.sleep(0.1)
        self.stop()
        return f"mariadbd not ready within 60 s\n{self.log_text()}"

    def _write_cnf(self, password):
        text = f"[client]\nuser=root\nsocket={self.sock}\nprotocol=socket\n"
        if password:
            text += f"password={password}\n"
        self.cnf.write_text(text)
        os.chmod(self.cnf, 0o600)

    def _sql_output(self, sql):
        return subprocess.run(
            ["mariadb", f"--defaults-file={self.cnf}", "-N", "-B", "--connect-timeout=10", "-e", sql],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )

    def sql(self, sql):
        """As root over the socket; stdout without the trailing newline."""
        r = self._sql_output(sql)
        if r.returncode != 0:
            raise BenchError(f"mariadb exited {r.returncode}: {r.stderr.strip()[-1500:]}")
        return r.stdout.rstrip("\n")

    def _secure_root(self):
        """root@localhost gets a password; the other root and anonymous
        accounts go (they would let anyone on loopback in)."""
        self.sql(
            "DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost'); "
            "FLUSH PRIVILEGES; "
            f"ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD({sql_literal(self.root_password)})"
        )
        self._write_cnf(self.root_password)

    def create_user(self, name, password, database):
        """`name`@`%` (mysql_native_password) owning database `database`."""
        self.sql(
            f"CREATE USER `{name}`@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD({sql_literal(password)}); "
            f"CREATE DATABASE `{database}`; GRANT ALL PRIVILEGES ON `{database}`.* TO `{name}`@'%'"
        )

    def version(self):
        return self.sql("SELECT VERSION()").strip()

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def cpu(self):
        """Server CPU seconds so far (all threads; one process)."""
        return cpu_seconds(self.proc.pid) if self.proc is not None else None

    def log_text(self):
        text = ""
        for p in (self.log_path, self.out_path):
            try:
                text += p.read_text(errors="replace")
            except OSError:
                pass
        return text

    def stop(self):
        if self.proc is None:
            return
        try:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            Procs.kill(self.proc)
        except OSError:
            pass
        self.proc = None
