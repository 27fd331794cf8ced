"""The measurements. Each row function takes the running `World` and the
mode's `Params` and returns a JSON-able dict; `report.py` turns those into
text and markdown. A new row (WireGuard, pgbench, ...) is one more function
here, one entry in `ROWS`, and one formatter in `report.py`.

Every loop is bounded in count and every child process in time. Paths are
measured interleaved (direct, jump, gatehouse, direct, ...) so drift on the
shared machine hits all of them alike.
"""

import os
import select
import subprocess
import tempfile
import threading
import time

from harness import BenchError, Procs, TreeCpu, cpu_seconds, descendants, rss_kib

PATHS = ("direct", "jump", "gatehouse")
GIB = 1024**3
MIB = 1024**2


def percentile(samples, p):
    """Nearest-rank percentile (p in 0..100)."""
    if not samples:
        return None
    s = sorted(samples)
    rank = max(1, min(len(s), -(-p * len(s) // 100)))
    return s[int(rank) - 1]


def median(samples):
    if not samples:
        return None
    s = sorted(samples)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def summary(samples):
    return {
        "n": len(samples),
        "median": median(samples),
        "min": min(samples) if samples else None,
        "max": max(samples) if samples else None,
        "p95": percentile(samples, 95),
        "p99": percentile(samples, 99),
        "samples": samples,
    }


def _run_client(w, args, timeout, stdin=subprocess.DEVNULL, poll=()):
    """Runs a client to completion, polling `poll` (TreeCpu) every 20 ms
    meanwhile. Returns wall seconds (and, with `poll`, the client tree's CPU
    seconds); BenchError with stderr on failure or timeout.

    A thread blocks in waitpid, so the end is seen the moment the client
    exits (`Popen.wait(timeout=...)` polls with sleeps of up to 50 ms)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            args,
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=w.client.env,
            start_new_session=True,
        )
        w.procs.track(p)
        ended = []
        done = threading.Event()

        def waiter():
            p.wait()
            ended.append(time.perf_counter())
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        # The client too: ssh and its `-J` proxy ssh, sftp and its ssh.
        client = TreeCpu(p.pid, include_root=True)
        trees = list(poll) + [client] if poll else []
        deadline = t0 + timeout
        while not done.wait(0.02 if trees else max(0.0, deadline - time.perf_counter())):
            for tree in trees:
                tree.poll()
            if time.perf_counter() > deadline:
                Procs.kill(p)
                done.wait(10)
                w.procs.procs.remove(p)
                raise BenchError(f"timed out after {timeout}s: {' '.join(args)}")
        wall = ended[0] - t0
        w.procs.procs.remove(p)
        if p.returncode != 0:
            err.seek(0)
            raise BenchError(
                f"`{' '.join(args)}` exited {p.returncode}: {err.read().decode(errors='replace')[-2000:]}"
            )
        if poll:
            return wall, client.total()
        return wall


# ------------------------------------------------------------ throughput ---


def _transfer(w, cipher, method, path, remote_file, timeout):
    target = w.target_name[cipher]
    dest = w.client.dest(path, target, w.login)
    if method == "cat":
        args = w.client.ssh(cipher, *dest, f"cat {remote_file}")
    else:
        batch = w.root / "sftp.batch"
        batch.write_text(f"get {remote_file} /dev/null\n")
        args = w.client.sftp(cipher, "-q", "-b", str(batch), *dest)
    target_tree = TreeCpu(w.targets[cipher].proc.pid, only_comm="sshd")
    trees = [target_tree]
    jump_tree = None
    if path == "jump":
        jump_tree = TreeCpu(w.jump.proc.pid, only_comm="sshd")
        trees.append(jump_tree)
    gw0 = cpu_seconds(w.gw.pid)
    try:
        wall, client_cpu = _run_client(w, args, timeout, poll=trees)
    finally:
        if path == "gatehouse":
            # Recordings of finished transfers are measured, then deleted so
            # that gigabytes of `cat` output do not fill the disk.
            w.gw.wait_recordings_ended()
            recorded = w.gw.recordings_bytes()
            w.gw.clear_recordings()
    gw1 = cpu_seconds(w.gw.pid)
    out = {"wall": wall, "target_cpu": target_tree.total(), "client_cpu": client_cpu}
    if path == "gatehouse":
        out["proxy_cpu"] = gw1 - gw0
        out["recorded"] = recorded
    elif jump_tree is not None:
        out["proxy_cpu"] = jump_tree.total()
    return out


def throughput(w, p):
    """Target -> client: `cat FILE` to /dev/null and `sftp get FILE
    /dev/null`, per cipher, through each path. MiB/s counts the whole
    command (login included), as a user timing a copy would."""
    size = w.big_size
    results = []
    for cipher in w.ciphers:
        for method in ("cat", "sftp"):
            wall = {path: [] for path in PATHS}
            proxy_cpu = {path: [] for path in PATHS}
            target_cpu = {path: [] for path in PATHS}
            client_cpu = {path: [] for path in PATHS}
            recorded = []
            # A transfer that fails or times out is reported and left out of
            # the medians; it does not lose the rest of the row.
            failures = {path: [] for path in PATHS}
            # Warm-up: page cache, sshd/gatehouse code paths, CPU frequency.
            for path in PATHS:
                try:
                    _transfer(w, cipher, method, path, w.warm_file, p.timeout)
                except BenchError as e:
                    failures[path].append(f"warm-up: {e}")
            for _rep in range(p.reps):
                for path in PATHS:
                    try:
                        r = _transfer(w, cipher, method, path, w.big_file, p.timeout)
                    except BenchError as e:
                        failures[path].append(str(e))
                        continue
                    if "recorded" in r:
                        recorded.append(r["recorded"] / size)
                    wall[path].append(r["wall"])
                    target_cpu[path].append(r["target_cpu"] * GIB / size)
                    client_cpu[path].append(r["client_cpu"] * GIB / size)
                    if "proxy_cpu" in r:
                        proxy_cpu[path].append(r["proxy_cpu"] * GIB / size)
            mibs = {
                path: summary([size / MIB / t for t in wall[path]]) for path in PATHS
            }
            ratio = [
                g / t for g, t in zip(proxy_cpu["gatehouse"], target_cpu["gatehouse"]) if t > 0
            ]
            results.append(
                {
                    "method": method,
                    "cipher": cipher,
                    "bytes": size,
                    "mib_s": mibs,
                    "cpu_s_per_gib": {
                        "gatehouse": summary(proxy_cpu["gatehouse"]),
                        "jump_sshd": summary(proxy_cpu["jump"]),
                        "target_sshd_via_gatehouse": summary(target_cpu["gatehouse"]),
                        "target_sshd_direct": summary(target_cpu["direct"]),
                        "client": {path: summary(client_cpu[path]) for path in PATHS},
                        "total": {
                            path: summary(
                                [
                                    sum(x)
                                    for x in zip(
                                        *(
                                            [client_cpu[path], target_cpu[path]]
                                            + ([proxy_cpu[path]] if path != "direct" else [])
                                        )
                                    )
                                ]
                            )
                            for path in PATHS
                        },
                    },
                    "cpu_ratio": summary(ratio),
                    "recorded_bytes_per_byte": summary(recorded),
                    "failures": failures,
                }
            )
            _progress(w, f"throughput {method} {cipher}", mibs)
    return {"size": size, "reps": p.reps, "rows": results}


# ----------------------------------------------------------------- setup ---


def setup(w, p):
    """Wall time of `ssh ... true` (key; the MFA lease stands in for the
    code) per path, interleaved; once with the client's default key
    exchange and once with curve25519-sha256 pinned on every leg (OpenSSH
    9.x prefers a post-quantum hybrid that gatehouse does not offer to it,
    which makes the OpenSSH legs slower by itself)."""
    cipher = w.ciphers[0]
    target = w.target_name[cipher]
    out = {"cipher": cipher, "variants": []}
    for kex in (None, "curve25519-sha256"):
        variant = w.client.variant(cipher, kex)
        times = {path: [] for path in PATHS}
        for i in range(p.setup_warmup + p.setup_n):
            for path in PATHS:
                args = w.client.ssh(variant, *w.client.dest(path, target, w.login), "true")
                t = _run_client(w, args, 30)
                if i >= p.setup_warmup:
                    times[path].append(t * 1000)
        ms = {path: summary(times[path]) for path in PATHS}
        out["variants"].append({"kex": kex or "client default", "ms": ms})
        _progress(w, f"setup ms ({kex or 'default kex'})", {k: v["median"] for k, v in ms.items()})
    return out


# --------------------------------------------------------------- latency ---


def _read_exact(fd, n, timeout):
    got = b""
    deadline = time.perf_counter() + timeout
    while len(got) < n:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise BenchError(f"no echo within {timeout}s (got {got!r})")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, n - len(got))
            if not chunk:
                raise BenchError(f"session ended (got {got!r})")
            got += chunk
    return got


def _wait_for(fd, marker, timeout):
    buf = b""
    deadline = time.perf_counter() + timeout
    while marker not in buf:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise BenchError(f"no {marker!r} within {timeout}s (got {buf[-200:]!r})")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise BenchError(f"session ended before {marker!r}: {buf[-200:]!r}")
            buf += chunk


def _keystrokes(w, cipher, path, n, warmup, gap):
    """Round trips of one byte through `ssh -tt` to a pty in raw mode whose
    `cat` echoes it (what a shell does with a typed character)."""
    target = w.target_name[cipher]
    remote = "stty raw -echo; printf '%s' RE''ADY; exec cat"
    args = w.client.ssh(cipher, "-tt", "-e", "none", *w.client.dest(path, target, w.login), remote)
    p = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=w.client.env,
        bufsize=0,
        start_new_session=True,
    )
    w.procs.track(p)
    try:
        fin, fout = p.stdin.fileno(), p.stdout.fileno()
        _wait_for(fout, b"READY", 30)
        rtts = []
        for i in range(warmup + n):
            t0 = time.perf_counter_ns()
            os.write(fin, b"k")
            _read_exact(fout, 1, 5)
            dt = (time.perf_counter_ns() - t0) / 1000
            if i >= warmup:
                rtts.append(dt)
            time.sleep(gap)
        return rtts
    finally:
        Procs.kill(p)
        w.procs.procs.remove(p)


def latency(w, p):
    cipher = w.ciphers[0]
    out = {}
    for path in PATHS:
        out[path] = summary(_keystrokes(w, cipher, path, p.keys_n, p.keys_warmup, p.keys_gap))
    _progress(w, "keystroke us", out)
    return {"cipher": cipher, "gap_ms": p.keys_gap * 1000, "us": out}


# ----------------------------------------------------------- concurrency ---


def concurrency(w, p):
    """Interactive sessions (pty + shell) held open through gatehouse by
    `bench-load sessions`, in cumulative steps; gatehouse's RSS after each."""
    import json

    args = [
        str(w.loadgen),
        "sessions",
        "--gateway",
        f"127.0.0.1:{w.gw.port}",
        "--gateway-host-key",
        w.gw.host_key,
        "--user",
        w.gw.user,
        "--key",
        str(w.key_path),
        "--target",
        "echo",
        "--login",
        w.login,
        "--levels",
        ",".join(str(n) for n in p.levels),
        "--parallel",
        str(p.parallel),
        "--watch-pid",
        str(w.gw.pid),
        "--settle-secs",
        "2",
        "--timeout-secs",
        "60",
        "--deadline-secs",
        str(p.conc_deadline),
    ]
    log = w.root / "loadgen.stderr"
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
        )
    w.procs.track(proc)
    try:
        out, _ = proc.communicate(timeout=p.conc_deadline + 180)
    except subprocess.TimeoutExpired:
        Procs.kill(proc)
        raise BenchError("bench-load sessions did not finish in time")
    finally:
        if proc in w.procs.procs:
            w.procs.procs.remove(proc)
    events = [json.loads(l) for l in out.decode().splitlines() if l.strip().startswith("{")]
    if proc.returncode != 0 or not events:
        raise BenchError(f"bench-load sessions failed: {log.read_text()[-2000:]}")
    levels = [e for e in events if e["event"] == "level"]
    base = next((e for e in events if e["event"] == "baseline"), None)
    done = next((e for e in events if e["event"] == "done"), None)
    xs = [e["held"] for e in levels]
    ys = [e["memory"]["rss_kib"] for e in levels]
    slope = _least_squares_slope(xs, ys)
    result = {
        "levels": levels,
        "baseline": base,
        "done": done,
        "rss_slope_kib_per_session": slope,
        "parallel": p.parallel,
    }
    _progress(w, "concurrency", {"slope KiB/session": slope, "levels": [(e["held"], e["ok"], e["attempted"], e["setup_ms"]["p99"], e["memory"]["rss_kib"]) for e in levels]})
    return result


def _least_squares_slope(xs, ys):
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


# ----------------------------------------------------------- slow reader ---


def slow_reader(w, p):
    """`cat /dev/zero` on the target, read by the client at 1 MiB/s through
    gatehouse; gatehouse's RSS sampled every 100 ms."""
    cipher = w.ciphers[0]
    target = w.target_name[cipher]
    rate = 1 * MIB
    args = w.client.ssh(cipher, *w.client.dest("gatehouse", target, w.login), "cat /dev/zero")
    rss_before = rss_kib(w.gw.pid)
    p_ = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=w.client.env,
        bufsize=0,
        start_new_session=True,
    )
    w.procs.track(p_)
    samples = []
    received = 0
    try:
        fd = p_.stdout.fileno()
        t0 = time.perf_counter()
        next_sample = t0
        while True:
            now = time.perf_counter()
            el = now - t0
            if el >= p.slow_secs:
                break
            if now >= next_sample:
                samples.append((round(el, 2), rss_kib(w.gw.pid)))
                next_sample += 0.1
            allowed = int(rate * el) - received
            if allowed > 0:
                r, _, _ = select.select([fd], [], [], 0.05)
                if r:
                    chunk = os.read(fd, min(allowed, 64 * 1024))
                    if not chunk:
                        raise BenchError("slow reader: session ended early")
                    received += len(chunk)
            else:
                time.sleep(0.005)
        elapsed = time.perf_counter() - t0
    finally:
        Procs.kill(p_)
        w.procs.procs.remove(p_)
    time.sleep(1)
    rss_after = rss_kib(w.gw.pid)
    vals = [v for _, v in samples if v is not None]
    out = {
        "seconds": elapsed,
        "read_mib_s": received / MIB / elapsed,
        "rss_before_kib": rss_before,
        "rss_peak_kib": max(vals) if vals else None,
        "rss_end_kib": vals[-1] if vals else None,
        "rss_after_close_kib": rss_after,
        "rss_first_second_kib": max((v for t, v in samples if t <= 1.0 and v), default=None),
        "samples": samples,
    }
    _progress(w, "slow reader", {k: v for k, v in out.items() if k != "samples"})
    return out


# --------------------------------------------------------------- profile ---

# Symbol -> where the time goes. First match wins; order matters.
CATEGORIES = [
    ("AES-GCM (ring)", r"aes|gcm|ghash|gfmul|clmul"),
    ("ChaCha20-Poly1305", r"chacha|poly1305"),
    ("memcpy/memmove/memset", r"memcpy|memmove|memset"),
    ("allocator", r"malloc|free|realloc|calloc|_int_|arena|tcache"),
    ("kernel: TCP/loopback send+receive", r"tcp_|skb|loopback|ip_|__dev_|net_rx|netif|sock_|inet_|copy_user|_copy_to_iter|_copy_from_iter|raw_copy"),
    ("kernel: scheduling, futex, epoll, syscalls", r"futex|schedule|epoll|ep_|syscall|entry_|switch_|finish_task|pick_|enqueue|dequeue|wake|ttwu|do_sys|__x64|update_|rcu_|irq|timer|hrtimer|native_"),
    ("tokio runtime", r"tokio"),
    ("russh (framing, channels, windows)", r"russh"),
]


def profile(w, p):
    """`perf record -e cpu-clock` of the gatehouse process during one `cat`
    of the payload through it, per cipher: flat profile by symbol, grouped
    into CATEGORIES. Not part of the default run (`--rows profile`)."""
    import re
    import signal

    out = {}
    for cipher in w.ciphers:
        short = cipher.split("-")[0]
        data = w.root / f"perf-{short}.data"
        rec = subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", "1999", *(["--call-graph", "dwarf,32768"] if os.environ.get("BENCH_PERF_CALLGRAPH") else []), "-p", str(w.gw.pid), "-o", str(data)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        w.procs.track(rec)
        time.sleep(0.5)
        try:
            _transfer(w, cipher, "cat", "gatehouse", w.big_file, p.timeout)
        finally:
            rec.send_signal(signal.SIGINT)
            try:
                rec.wait(timeout=30)
            except subprocess.TimeoutExpired:
                Procs.kill(rec)
            w.procs.procs.remove(rec)
        rep = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,symbol", "--percent-limit", "0.3"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        symbols = []
        for line in rep.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
            if m:
                symbols.append((float(m.group(1)), m.group(2), m.group(3).strip()))
        cats = {}
        for pct, dso, sym in symbols:
            name = "other"
            for cat, pat in CATEGORIES:
                if re.search(pat, sym, re.I):
                    name = cat
                    break
            cats[name] = cats.get(name, 0.0) + pct
        out[cipher] = {
            "categories": sorted(cats.items(), key=lambda kv: -kv[1]),
            "top": symbols[:25],
        }
        _progress(w, f"profile {cipher}", out[cipher]["categories"])
    return out


# -------------------------------------------------------------- postgres ---

PG_PATHS = ("direct", "pgbouncer", "gatehouse")
# (name, pgbench arguments, clients, threads, statements per transaction).
# select-only: one SELECT; TPC-B-like: BEGIN, 3 UPDATEs, SELECT, INSERT, END.
PG_TESTS = [
    ("select_c1", ["-S"], 1, 1, 1),
    ("select_c8", ["-S"], 8, 2, 1),
    ("tpcb_c8", [], 8, 2, 7),
]


def _pg_env(w, path):
    """libpq environment for `path`: direct (TLS, password), pgbouncer
    (password; plain TCP to the pooler, TLS from it to the server) or
    gatehouse (the `ssh -L` port; no password: the SSH login admits)."""
    pg = w.pg
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST="127.0.0.1", PGUSER=pg.login, PGDATABASE=pg.db, PGCONNECT_TIMEOUT="20", PGAPPNAME="bench")
    if path == "direct":
        env.update(PGPORT=str(pg.cluster.port), PGSSLMODE="require", PGPASSWORD=pg.password)
    elif path == "pgbouncer":
        if pg.bouncer is None:
            raise BenchError(pg.bouncer_error or "pgbouncer did not start")
        env.update(PGPORT=str(pg.bouncer.port), PGSSLMODE="disable", PGPASSWORD=pg.password)
    elif path == "gatehouse":
        env.update(PGPORT=str(pg.door_port), PGSSLMODE="disable")
    else:
        raise ValueError(path)
    return env


def _pg_probe(w, path):
    """`psql -c 'select 1'` on a path: BenchError with psql's message."""
    pg = w.pg
    args = [str(pg.cluster.bin / "psql"), "-X", "-At", "-c", "select 1"]
    r = subprocess.run(args, env=_pg_env(w, path), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, start_new_session=True)
    if r.returncode != 0 or r.stdout.strip() != "1":
        raise BenchError(f"psql through {path} failed: {(r.stdout + r.stderr).strip()[-1500:]}")


def _pg_start_door(w, p):
    """`ssh -N -L 127.0.0.1:LPORT:db-1:15432 gw`: gatehouse's database door
    for a process on this host (the lease admits the key login)."""
    _start_door(w, w.pg, "ssh-L.log")


def _start_door(w, db, log_name, host="gw"):
    """`ssh -N -L 127.0.0.1:LPORT:TARGET:TUNNEL_PORT HOST` for the database
    world `db` (its `target` and `tunnel_port`; HOST is gatehouse, or the
    OpenSSH jump host with the server's own address); sets `db.door` (the
    ssh process), `db.door_port` and `db.door_cipher`. Kept up across
    runs."""
    from harness import free_port, wait_for_port

    if getattr(db, "door", None) is not None and db.door.poll() is None:
        return
    cipher = w.ciphers[0]
    db.door_cipher = cipher
    for _ in range(3):
        db.door_port = free_port()
        # gatehouse answers a direct-tcpip channel to a database target on
        # the target's port or its tunnel_port; the latter is fixed here.
        spec = f"127.0.0.1:{db.door_port}:{db.target}:{db.tunnel_port}"
        args = w.client.ssh(cipher, "-N", "-o", "ExitOnForwardFailure=yes", "-L", spec, host)
        db.door = w.procs.spawn(args, w.root / log_name, env=w.client.env)
        if wait_for_port(db.door_port, 30, db.door):
            return
        Procs.kill(db.door)
    raise BenchError("the ssh -L door did not come up: " + (w.root / log_name).read_text(errors="replace")[-1000:])


def _pg_latencies(logdir):
    """Per-transaction latencies (µs) from pgbench's `-l` files, which are
    then deleted. Columns: client_id transaction_no time script_no
    time_epoch time_us; `time` is not a number for failed/skipped ones."""
    lat = []
    for f in sorted(os.listdir(logdir)):
        path = os.path.join(logdir, f)
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
        os.remove(path)
    return lat


def _pgbench_number(text, pattern):
    import re

    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def _ctx_switches(pid):
    """Voluntary + involuntary context switches of all threads of `pid`."""
    total = 0
    for tid in _tasks(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                for line in fh:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def _pg_cpu_snapshot(w, path):
    pg = w.pg
    snap = {"server": (pg.cluster.cpu() or 0.0) + pg.cluster.live_backend_cpu()}
    snap["pgbouncer"] = (cpu_seconds(pg.bouncer.pid) or 0.0) if pg.bouncer is not None else 0.0
    snap["gatehouse"] = cpu_seconds(w.gw.pid) or 0.0
    door = getattr(pg, "door", None)
    snap["ssh_client"] = (cpu_seconds(door.pid) or 0.0) if door is not None else 0.0
    return snap


def _pg_ctx_snapshot(w):
    pg = w.pg
    door = getattr(pg, "door", None)
    return {
        "gatehouse": _ctx_switches(w.gw.pid),
        "ssh_client": _ctx_switches(door.pid) if door is not None else 0,
        "pgbouncer": _ctx_switches(pg.bouncer.pid) if pg.bouncer is not None else 0,
    }


def _children_cpu():
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _pgbench(w, path, test, seconds, tag, log=True):
    """One pgbench run; returns its numbers (TPS without connection time,
    transactions, per-transaction latencies, CPU of every process on the
    path)."""
    pg = w.pg
    name, extra, clients, jobs, stmts = test
    logdir = w.root / "pglog" / f"{tag}-{name}-{path}"
    logdir.mkdir(parents=True, exist_ok=True)
    args = [str(pg.cluster.bin / "pgbench"), "-n", *extra, "-c", str(clients), "-j", str(jobs), "-T", str(seconds)]
    if log:
        args += ["-l", f"--log-prefix={logdir / 'tx'}"]
    if path == "gatehouse":
        w.gw.clear_recordings()
    from harness import Disturbance

    ctx0 = _pg_ctx_snapshot(w)
    before = _pg_cpu_snapshot(w, path)
    before["pgbench"] = _children_cpu()
    dist = Disturbance()
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=_pg_env(w, path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=logdir)
    w.procs.track(proc)
    timer = threading.Timer(seconds + 90, lambda: Procs.kill(proc))
    timer.start()
    try:
        out, err = proc.communicate()
    finally:
        timer.cancel()
        if proc in w.procs.procs:
            w.procs.procs.remove(proc)
    wall = time.perf_counter() - t0
    # pgbench itself: the only child of this process reaped meanwhile.
    pgbench_cpu = _children_cpu()
    others_pct = dist.result()["other_pct"]
    time.sleep(0.3)  # the postmaster reaps the exited backends
    after = _pg_cpu_snapshot(w, path)
    after["pgbench"] = pgbench_cpu
    ctx1 = _pg_ctx_snapshot(w)
    out, err = out.decode(errors="replace"), err.decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"pgbench {name} through {path} exited {proc.returncode}: {(out + err)[-1500:]}")
    tps = _pgbench_number(out, r"tps = ([\d.]+) \(without initial connection time\)")
    txns = _pgbench_number(out, r"number of transactions actually processed: (\d+)")
    failed = _pgbench_number(out, r"number of failed transactions: (\d+)") or 0
    lat = _pg_latencies(logdir) if log else []
    r = {
        "tps": tps,
        "transactions": int(txns or 0),
        "failed": int(failed),
        "statements": int(txns or 0) * stmts,
        "seconds": seconds,
        "wall": wall,
        "latency_avg_ms": _pgbench_number(out, r"latency average = ([\d.]+) ms"),
        "latency_us": lat,
        "cpu": {k: after[k] - before[k] for k in after},
        "others_pct": others_pct,
        "ctx_switches": {k: ctx1[k] - ctx0[k] for k in ctx1},
    }
    if path == "gatehouse":
        w.gw.wait_recordings_ended()
        r["recorded_bytes"] = w.gw.recordings_bytes()
        w.gw.clear_recordings()
    return r


def postgres(w, p):
    """pgbench side by side on loopback: direct to PostgreSQL (TLS),
    through pgbouncer (session mode, TLS to the server) and through
    gatehouse (recording every statement; the `ssh -L` door, TLS
    verify-full to the server). select-only at -c 1 and -c 8 and TPC-B-like
    at -c 8; the paths interleaved, `p.pg_rounds` rounds each. Reports TPS
    (median of the rounds), per-transaction latency percentiles (pooled
    `-l` logs) and CPU seconds per 10k statements of each process on the
    path."""
    pg = getattr(w, "pg", None)
    if pg is None:
        raise BenchError(getattr(w, "pg_error", None) or "postgres world not set up")
    failures = {}
    # Initialise once, directly (TLS): pgbench_* at scale p.pg_scale.
    t0 = time.monotonic()
    init = [str(pg.cluster.bin / "pgbench"), "-i", "-q", "-s", str(p.pg_scale)]
    env = _pg_env(w, "direct")
    r = subprocess.run(init, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise BenchError(f"pgbench -i failed: {(r.stdout + r.stderr)[-1500:]}")
    init_s = time.monotonic() - t0
    paths = []
    for path in PG_PATHS:
        try:
            if path == "gatehouse":
                if getattr(pg, "gw_error", None):
                    raise BenchError(pg.gw_error)
                _pg_start_door(w, p)
            _pg_probe(w, path)
            paths.append(path)
        except BenchError as e:
            failures[path] = str(e)[:2000]
            print(f"   postgres: {path} left out: {str(e)[:300]}", flush=True)
    # Warm-up: buffer cache, connection code paths, CPU frequency.
    warm = PG_TESTS[1]
    for path in list(paths):
        try:
            _pgbench(w, path, warm, p.pg_warm_secs, "warm", log=False)
        except BenchError as e:
            failures[path] = str(e)[:2000]
            paths.remove(path)
    tests = []
    for test in PG_TESTS:
        runs = {path: [] for path in PG_PATHS}
        for rnd in range(p.pg_rounds):
            order = paths if rnd % 2 == 0 else list(reversed(paths))
            for path in order:
                # A run during which other processes used more than 15% of
                # the CPUs is run again (full mode: once, after waiting up
                # to 60 s for idle CPUs); the less disturbed one is kept.
                best = None
                for attempt in range(p.pg_attempts):
                    if attempt:
                        w.wait_for_idle(60)
                    try:
                        r = _pgbench(w, path, test, p.pg_secs, f"r{rnd}a{attempt}")
                    except BenchError as e:
                        failures.setdefault(path, str(e)[:2000])
                        continue
                    r["attempts"] = attempt + 1
                    if best is None or r["others_pct"] < best["others_pct"]:
                        best = r
                    if r["others_pct"] <= 15:
                        break
                if best is not None:
                    runs[path].append(best)
        tests.append(_pg_summarise(test, runs))
        _progress(w, f"postgres {test[0]}", {path: (d.get("tps"), d.get("p99_ms")) for path, d in tests[-1]["paths"].items()})
    return {
        "scale": p.pg_scale,
        "seconds": p.pg_secs,
        "rounds": p.pg_rounds,
        "init_s": init_s,
        "door": {
            "kind": "ssh -L",
            "command": f"ssh -N -L 127.0.0.1:LPORT:{pg.target}:{pg.tunnel_port} bench@gw",
            "cipher": getattr(pg, "door_cipher", None),
        },
        "versions": pg.versions,
        "tests": tests,
        "failures": failures,
    }


def _pg_summarise(test, runs):
    name, extra, clients, jobs, stmts = test
    out = {"name": name, "clients": clients, "jobs": jobs, "statements_per_tx": stmts, "paths": {}}
    for path, rs in runs.items():
        if not rs:
            continue
        lat = [x for r in rs for x in r["latency_us"]]
        stmts_total = sum(r["statements"] for r in rs)
        cpu = {}
        for k in rs[0]["cpu"]:
            total = sum(r["cpu"][k] for r in rs)
            cpu[k] = total * 10000 / stmts_total if stmts_total else None
        d = {
            "tps": median([r["tps"] for r in rs if r["tps"] is not None]),
            "tps_runs": [r["tps"] for r in rs],
            "transactions": sum(r["transactions"] for r in rs),
            "failed": sum(r["failed"] for r in rs),
            "statements": stmts_total,
            "p50_ms": (percentile(lat, 50) or 0) / 1000 if lat else None,
            "p99_ms": (percentile(lat, 99) or 0) / 1000 if lat else None,
            "p999_ms": (percentile(lat, 99.9) or 0) / 1000 if lat else None,
            "latency_avg_ms": median([r["latency_avg_ms"] for r in rs if r["latency_avg_ms"] is not None]),
            "others_pct": [round(r["others_pct"]) for r in rs],
            "ctx_switches_per_statement": {
                k: sum(r["ctx_switches"][k] for r in rs) / stmts_total if stmts_total else None
                for k in rs[0]["ctx_switches"]
            },
            "cpu_s_per_10k_statements": cpu,
        }
        if path == "gatehouse":
            rec = sum(r.get("recorded_bytes", 0) for r in rs)
            d["recorded_bytes_per_statement"] = rec / stmts_total if stmts_total else None
        out["paths"][path] = d
    return out


def postgres_profile(w, p):
    """`perf record -a` (cpu-clock, all CPUs) during `pgbench -S -c 8`
    through each path: the share of the two CPUs each program used (by
    command name), and gatehouse's own time by symbol. Only when named
    (`--rows postgres_profile`); needs `perf`."""
    import re
    import signal

    pg = getattr(w, "pg", None)
    if pg is None:
        raise BenchError(getattr(w, "pg_error", None) or "postgres world not set up")
    has_tables = subprocess.run(
        [str(pg.cluster.bin / "psql"), "-X", "-At", "-c", "select count(*) from pgbench_branches"],
        env=_pg_env(w, "direct"), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    if has_tables.returncode != 0:
        r = subprocess.run([str(pg.cluster.bin / "pgbench"), "-i", "-q", "-s", str(p.pg_scale)],
                           env=_pg_env(w, "direct"), capture_output=True, text=True, timeout=600,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise BenchError(f"pgbench -i failed: {(r.stdout + r.stderr)[-1500:]}")
    _pg_start_door(w, p)
    out = {}
    test = PG_TESTS[1]
    for path in PG_PATHS:
        data = w.root / f"perf-pg-{path}.data"
        rec = subprocess.Popen(
            ["perf", "record", "-a", "-e", "cpu-clock", "-F", "999", "-o", str(data)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        w.procs.track(rec)
        time.sleep(0.5)
        # Which threads are whose: collected while pgbench runs (backends
        # and pgbench exist only then), so that other people's processes on
        # the shared machine land in "other" and not under "postgres".
        owners = {}
        stop = threading.Event()
        collector = threading.Thread(target=_collect_owners, args=(w, owners, stop), daemon=True)
        collector.start()
        try:
            res = _pgbench(w, path, test, p.pg_secs, "perf", log=False)
        finally:
            stop.set()
            collector.join(5)
            rec.send_signal(signal.SIGINT)
            try:
                rec.wait(timeout=60)
            except subprocess.TimeoutExpired:
                Procs.kill(rec)
            w.procs.procs.remove(rec)
        rep = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "pid"],
            capture_output=True, text=True, timeout=300,
        ).stdout
        split = {}
        for line in rep.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\d+):(.*?)\s*$", line)
            if not m:
                continue
            pct, tid, comm = float(m.group(1)), int(m.group(2)), m.group(3)
            who = "idle" if tid == 0 else owners.get(tid, "other processes")
            split[who] = split.get(who, 0.0) + pct
        d = {"tps": res["tps"], "by_command": sorted(((v, k) for k, v in split.items()), reverse=True)}
        if path == "gatehouse":
            rep = subprocess.run(
                ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--pid", str(w.gw.pid), "--percentage", "relative",
                 "--sort", "dso,symbol", "--percent-limit", "0.05"],
                capture_output=True, text=True, timeout=300,
            ).stdout
            symbols = []
            for line in rep.splitlines():
                m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
                if m:
                    symbols.append((float(m.group(1)), m.group(2), m.group(3).strip()))
            cats = {}
            for pct, dso, sym in symbols:
                cat = "kernel: other" if "kernel" in dso else ("libc: other" if dso.startswith("libc") else "other")
                for cname, pat in PG_CATEGORIES:
                    if re.search(pat, sym, re.I):
                        cat = cname
                        break
                cats[cat] = cats.get(cat, 0.0) + pct
            d["gatehouse_categories"] = sorted(cats.items(), key=lambda kv: -kv[1])
            d["gatehouse_top"] = symbols[:30]
        out[path] = d
        _progress(w, f"postgres profile {path}", d["by_command"])
        try:
            os.remove(data)
        except OSError:
            pass
    return out


def _tasks(pid):
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _collect_owners(w, owners, stop):
    """{tid: role} of every thread on the measured path, polled every
    0.5 s until `stop`."""
    from harness import descendants, comm

    pg = w.pg
    while True:
        roles = [("gatehouse", [w.gw.pid]), ("postgres", descendants(pg.cluster.postmaster_pid) + [pg.cluster.postmaster_pid])]
        if pg.bouncer is not None:
            roles.append(("pgbouncer", [pg.bouncer.pid]))
        door = getattr(pg, "door", None)
        if door is not None:
            roles.append(("ssh client", [door.pid]))
        roles.append(("pgbench", [c for c in descendants(os.getpid()) if comm(c) == "pgbench"]))
        for role, pids in roles:
            for pid in pids:
                for tid in _tasks(pid):
                    owners[tid] = role
        if stop.wait(0.5):
            return


# Symbol -> where gatehouse's time goes in the PostgreSQL relay.
PG_CATEGORIES = [
    ("AES-GCM (SSH leg, TLS leg)", r"aes|gcm|ghash|gfmul|clmul"),
    ("ChaCha20-Poly1305 (recording seal)", r"chacha|poly1305"),
    ("SHA-256 (recording chain)", r"sha256|sha2"),
    ("memcpy/memmove/memset", r"memcpy|memmove|memset"),
    ("allocator", r"malloc|free|realloc|calloc|_int_|arena|tcache"),
    ("kernel: TCP/loopback send+receive", r"tcp_|skb|loopback|ip_|__dev_|net_rx|netif|sock_|inet_|copy_user|_copy_to_iter|_copy_from_iter|raw_copy"),
    ("kernel: scheduling, futex, epoll, syscalls", r"futex|schedule|epoll|ep_|syscall|entry_|switch_|finish_task|pick_|enqueue|dequeue|wake|ttwu|do_sys|__x64|update_|rcu_|irq|timer|hrtimer|native_"),
    ("tokio runtime", r"tokio"),
    ("russh (SSH channel)", r"russh"),
    ("rustls (TLS to the server)", r"rustls"),
    ("serde_json (recording events)", r"serde"),
    ("gatehouse db proxy", r"gatehouse::db"),
    ("gatehouse recording", r"gatehouse::recording"),
]


# ----------------------------------------------------------------- mysql ---

MY_PATHS = ("direct", "ssh_jump", "gatehouse")


class _JumpDoor:
    """`ssh -N -L LPORT:127.0.0.1:SERVER_PORT jump`: the OpenSSH baseline, a
    DBA's tunnel through a plain bastion (TLS to the server end to end,
    nothing recorded)."""

    def __init__(self, port):
        self.target = "127.0.0.1"
        self.tunnel_port = port
        self.door = None


def _my_door(w, path):
    """The ssh process (and its holder) of `path`'s door, or None."""
    my = w.my
    holder = {"gatehouse": my, "ssh_jump": getattr(my, "jump", None)}.get(path)
    return getattr(holder, "door", None) if holder is not None else None


def _my_start_doors(w, path):
    my = w.my
    if path == "gatehouse":
        _start_door(w, my, "ssh-L-mysql.log")
    elif path == "ssh_jump":
        if getattr(my, "jump", None) is None:
            my.jump = _JumpDoor(my.server.port)
        _start_door(w, my.jump, "ssh-L-mysql-jump.log", host="jump")
# (name, sysbench test, threads).
MY_TESTS = [
    ("point_select_t1", "oltp_point_select", 1),
    ("point_select_t8", "oltp_point_select", 8),
    ("read_only_t1", "oltp_read_only", 1),
    ("read_only_t8", "oltp_read_only", 8),
]


def _sysbench_args(w, path, threads=1):
    """sysbench's connection options for `path`: direct (TLS: sysbench's
    `--mysql-ssl=on` hands libmariadb `client-key.pem`, `client-cert.pem`
    and `cacert.pem` from its working directory, made by the harness),
    ssh_jump (the OpenSSH `ssh -L` port, the same TLS login end to end) or
    gatehouse (the `ssh -L` port, plain TCP to the ssh client; the password
    is ignored there: the SSH login admits)."""
    my = w.my
    args = [
        "sysbench",
        "--db-driver=mysql",
        "--mysql-host=127.0.0.1",
        f"--mysql-user={my.login}",
        f"--mysql-db={my.db}",
        f"--tables={my.tables}",
        f"--table-size={my.table_size}",
        f"--threads={threads}",
    ]
    if path == "direct":
        args += [f"--mysql-port={my.server.port}", f"--mysql-password={my.password}", "--mysql-ssl=on"]
    elif path == "ssh_jump":
        args += [f"--mysql-port={my.jump.door_port}", f"--mysql-password={my.password}", "--mysql-ssl=on"]
    elif path == "gatehouse":
        args += [f"--mysql-port={my.door_port}", "--mysql-password=ignored-by-gatehouse", "--mysql-ssl=off"]
    else:
        raise ValueError(path)
    return args


def _my_sysbench_dir(w):
    """sysbench's working directory: the TLS files `--mysql-ssl=on` reads."""
    import shutil

    my = w.my
    d = w.root / "sysbench"
    if not d.exists():
        d.mkdir()
        shutil.copy(my.server.dir / "client.key", d / "client-key.pem")
        shutil.copy(my.server.dir / "client.crt", d / "client-cert.pem")
        shutil.copy(my.server.ca_pem, d / "cacert.pem")
    return d


def _my_probe(w, path):
    """A 1-second `oltp_point_select` on a path: BenchError with sysbench's
    message (the stock client has no way to skip TLS that works on both
    paths alike, so the probe is sysbench itself)."""
    args = _sysbench_args(w, path) + ["--time=1", "oltp_point_select", "run"]
    r = subprocess.run(args, cwd=_my_sysbench_dir(w), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, start_new_session=True)
    if r.returncode != 0:
        raise BenchError(f"sysbench through {path} failed: {(r.stdout + r.stderr).strip()[-1500:]}")


def _sysbench_histogram(text):
    """[(upper bound ms, count)] from sysbench's `--histogram` output."""
    import re

    out = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d.]+)\s+\|\**\s+(\d+)\s*$", line)
        if m:
            out.append((float(m.group(1)), int(m.group(2))))
    return out


def _hist_percentile(hist, pct):
    """Nearest-rank percentile of a pooled histogram (bucket value, ms)."""
    total = sum(c for _, c in hist)
    if not total:
        return None
    rank = max(1, -(-pct * total // 100))
    seen = 0
    for v, c in sorted(hist):
        seen += c
        if seen >= rank:
            return v
    return None


def _jump_sshd_cpu(w):
    """CPU seconds of the jump host's live per-connection sshd processes
    (the `ssh -L` door's connection lives across runs)."""
    return sum(cpu_seconds(pid) or 0.0 for pid in descendants(w.jump.proc.pid))


def _my_cpu_snapshot(w, path):
    my = w.my
    door = _my_door(w, path)
    return {
        "server": my.server.cpu() or 0.0,
        "gatehouse": cpu_seconds(w.gw.pid) or 0.0,
        "ssh_client": (cpu_seconds(door.pid) or 0.0) if door is not None else 0.0,
        "jump_sshd": _jump_sshd_cpu(w) if path == "ssh_jump" else 0.0,
    }


def _my_ctx_snapshot(w, path):
    door = _my_door(w, path)
    return {
        "gatehouse": _ctx_switches(w.gw.pid),
        "ssh_client": _ctx_switches(door.pid) if door is not None else 0,
        "jump_sshd": sum(_ctx_switches(pid) for pid in descendants(w.jump.proc.pid)) if path == "ssh_jump" else 0,
    }


def _sysbench(w, path, test, seconds):
    """One `sysbench TEST run`; returns its numbers (transactions and
    queries per second, the latency histogram, CPU of every process on the
    path)."""
    import re

    from harness import Disturbance

    name, script, threads = test
    args = _sysbench_args(w, path, threads) + [
        f"--time={seconds}",
        "--percentile=99",
        "--histogram=on",
        "--report-interval=0",
        script,
        "run",
    ]
    if path == "gatehouse":
        w.gw.clear_recordings()
    ctx0 = _my_ctx_snapshot(w, path)
    before = _my_cpu_snapshot(w, path)
    before["sysbench"] = _children_cpu()
    dist = Disturbance()
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=_my_sysbench_dir(w), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    w.procs.track(proc)
    timer = threading.Timer(seconds + 90, lambda: Procs.kill(proc))
    timer.start()
    try:
        out, err = proc.communicate()
    finally:
        timer.cancel()
        if proc in w.procs.procs:
            w.procs.procs.remove(proc)
    wall = time.perf_counter() - t0
    after = _my_cpu_snapshot(w, path)
    after["sysbench"] = _children_cpu()
    ctx1 = _my_ctx_snapshot(w, path)
    others_pct = dist.result()["other_pct"]
    out, err = out.decode(errors="replace"), err.decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"sysbench {name} through {path} exited {proc.returncode}: {(out + err)[-1500:]}")

    def num(pattern):
        m = re.search(pattern, out)
        return float(m.group(1)) if m else None

    queries = num(r"queries:\s+(\d+)")
    r = {
        "tps": num(r"transactions:\s+\d+\s+\(([\d.]+) per sec"),
        "qps": num(r"queries:\s+\d+\s+\(([\d.]+) per sec"),
        "transactions": int(num(r"transactions:\s+(\d+)") or 0),
        "queries": int(queries or 0),
        "errors": int(num(r"ignored errors:\s+(\d+)") or 0),
        "reconnects": int(num(r"reconnects:\s+(\d+)") or 0),
        "seconds": seconds,
        "wall": wall,
        "latency_avg_ms": num(r"avg:\s+([\d.]+)"),
        "p99_ms_sysbench": num(r"99th percentile:\s+([\d.]+)"),
        "histogram": _sysbench_histogram(out),
        "cpu": {k: after[k] - before[k] for k in after},
        "others_pct": others_pct,
        "ctx_switches": {k: ctx1[k] - ctx0[k] for k in ctx1},
    }
    if path == "gatehouse":
        w.gw.wait_recordings_ended()
        r["recorded_bytes"] = w.gw.recordings_bytes()
        w.gw.clear_recordings()
    return r


def _my_prepare(w, p):
    """`sysbench oltp_read_only prepare` once, directly (TLS), unless the
    tables are there already. Returns the seconds it took."""
    my = w.my
    if getattr(my, "prepared", False):
        return 0.0
    t0 = time.monotonic()
    args = _sysbench_args(w, "direct", 2) + ["oltp_read_only", "prepare"]
    r = subprocess.run(args, cwd=_my_sysbench_dir(w), capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL, start_new_session=True)
    if r.returncode != 0:
        raise BenchError(f"sysbench prepare failed: {(r.stdout + r.stderr)[-1500:]}")
    # Into the buffer pool: every row read once.
    my.server.sql("; ".join(f"SELECT COUNT(*), SUM(LENGTH(c)) FROM `{my.db}`.sbtest{i + 1}" for i in range(my.tables)))
    my.prepared = True
    return time.monotonic() - t0


def mysql(w, p):
    """sysbench side by side on loopback: direct to MariaDB (TLS), through
    an OpenSSH `ssh -L` to the jump host (TLS end to end, nothing recorded)
    and through gatehouse (recording every statement; the `ssh -L` door,
    TLS verify-full to the server). oltp_point_select and oltp_read_only at 1
    and 8 threads; the paths interleaved, `p.my_rounds` rounds each.
    Reports transactions and queries per second (median of the rounds),
    latency percentiles (sysbench's histograms of all rounds pooled) and
    CPU seconds per 10k queries of each process on the path."""
    my = getattr(w, "my", None)
    if my is None:
        raise BenchError(getattr(w, "my_error", None) or "mysql world not set up")
    failures = {}
    init_s = _my_prepare(w, p)
    paths = []
    for path in MY_PATHS:
        try:
            if path == "gatehouse" and getattr(my, "gw_error", None):
                raise BenchError(my.gw_error)
            _my_start_doors(w, path)
            _my_probe(w, path)
            paths.append(path)
        except BenchError as e:
            failures[path] = str(e)[:2000]
            print(f"   mysql: {path} left out: {str(e)[:300]}", flush=True)
    # Warm-up: connection code paths, CPU frequency.
    for path in list(paths):
        try:
            _sysbench(w, path, MY_TESTS[1], p.my_warm_secs)
        except BenchError as e:
            failures[path] = str(e)[:2000]
            paths.remove(path)
    tests = []
    for test in MY_TESTS:
        runs = {path: [] for path in MY_PATHS}
        for rnd in range(p.my_rounds):
            order = paths if rnd % 2 == 0 else list(reversed(paths))
            for path in order:
                # As in the PostgreSQL row: a run during which other
                # processes used more than 15% of the CPUs is run again
                # (full mode: once, after waiting up to 60 s for idle
                # CPUs); the less disturbed one is kept.
                best = None
                for attempt in range(p.my_attempts):
                    if attempt:
                        w.wait_for_idle(60)
                    try:
                        r = _sysbench(w, path, test, p.my_secs)
                    except BenchError as e:
                        failures.setdefault(path, str(e)[:2000])
                        continue
                    r["attempts"] = attempt + 1
                    if best is None or r["others_pct"] < best["others_pct"]:
                        best = r
                    if r["others_pct"] <= 15:
                        break
                if best is not None:
                    runs[path].append(best)
        tests.append(_my_summarise(test, runs))
        _progress(w, f"mysql {test[0]}", {path: (d.get("qps"), d.get("p99_ms")) for path, d in tests[-1]["paths"].items()})
    return {
        "tables": my.tables,
        "table_size": my.table_size,
        "seconds": p.my_secs,
        "rounds": p.my_rounds,
        "init_s": init_s,
        "door": {
            "kind": "ssh -L",
            "command": f"ssh -N -L 127.0.0.1:LPORT:{my.target}:{my.tunnel_port} bench@gw",
            "cipher": getattr(my, "door_cipher", None),
        },
        "jump_door": {
            "command": "ssh -N -L 127.0.0.1:LPORT:127.0.0.1:SERVER_PORT jump",
            "cipher": getattr(getattr(my, "jump", None), "door_cipher", None),
        },
        "versions": my.versions,
        "tests": tests,
        "failures": failures,
    }


def _my_summarise(test, runs):
    name, script, threads = test
    out = {"name": name, "script": script, "threads": threads, "paths": {}}
    for path, rs in runs.items():
        if not rs:
            continue
        hist = {}
        for r in rs:
            for v, c in r["histogram"]:
                hist[v] = hist.get(v, 0) + c
        hist = list(hist.items())
        queries = sum(r["queries"] for r in rs)
        cpu = {k: sum(r["cpu"][k] for r in rs) * 10000 / queries if queries else None for k in rs[0]["cpu"]}
        d = {
            "tps": median([r["tps"] for r in rs if r["tps"] is not None]),
            "qps": median([r["qps"] for r in rs if r["qps"] is not None]),
            "qps_runs": [r["qps"] for r in rs],
            "transactions": sum(r["transactions"] for r in rs),
            "queries": queries,
            "errors": sum(r["errors"] for r in rs),
            "reconnects": sum(r["reconnects"] for r in rs),
            "p50_ms": _hist_percentile(hist, 50),
            "p99_ms": _hist_percentile(hist, 99),
            "p99_ms_sysbench_runs": [r["p99_ms_sysbench"] for r in rs],
            "latency_avg_ms": median([r["latency_avg_ms"] for r in rs if r["latency_avg_ms"] is not None]),
            "others_pct": [round(r["others_pct"]) for r in rs],
            "ctx_switches_per_query": {
                k: sum(r["ctx_switches"][k] for r in rs) / queries if queries else None for k in rs[0]["ctx_switches"]
            },
            "cpu_s_per_10k_queries": cpu,
        }
        if path == "gatehouse":
            rec = sum(r.get("recorded_bytes", 0) for r in rs)
            d["recorded_bytes_per_query"] = rec / queries if queries else None
        out["paths"][path] = d
    return out


def mysql_profile(w, p):
    """`perf record -g` (DWARF call graphs) of the gatehouse process during
    `sysbench oltp_point_select --threads=8` through it: gatehouse's
    samples by symbol, self and with children. Only when named
    (`--rows mysql_profile`); needs `perf`."""
    import re
    import signal

    my = getattr(w, "my", None)
    if my is None:
        raise BenchError(getattr(w, "my_error", None) or "mysql world not set up")
    if getattr(my, "gw_error", None):
        raise BenchError(my.gw_error)
    _my_prepare(w, p)
    _start_door(w, my, "ssh-L-mysql.log")
    data = w.root / "perf-mysql.data"
    secs = min(p.my_secs, 8)
    rec = subprocess.Popen(
        ["perf", "record", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,8192", "-p", str(w.gw.pid), "-o", str(data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    w.procs.track(rec)
    time.sleep(0.5)
    try:
        res = _sysbench(w, "gatehouse", MY_TESTS[1], secs)
    finally:
        rec.send_signal(signal.SIGINT)
        try:
            rec.wait(timeout=60)
        except subprocess.TimeoutExpired:
            Procs.kill(rec)
        w.procs.procs.remove(rec)

    def report(children):
        args = ["perf", "report", "-i", str(data), "--stdio", "-g", "none", "--percent-limit", "0.3",
                "--sort", "dso,symbol" if not children else "symbol"]
        args.append("--children" if children else "--no-children")
        try:
            text = subprocess.run(args, capture_output=True, text=True, timeout=400).stdout
        except subprocess.TimeoutExpired:
            return []
        rows_ = []
        for line in text.splitlines():
            # perf 6.x appends IPC columns ("-   -") without LBR data.
            line = re.sub(r"\s+-\s+-\s*$", "", line)
            if children:
                m = re.match(r"\s*([\d.]+)%\s+([\d.]+)%\s+\[[.k]\]\s+(.*)", line)
                if m:
                    rows_.append((float(m.group(1)), float(m.group(2)), m.group(3).strip()))
            else:
                m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
                if m:
                    rows_.append((float(m.group(1)), m.group(2), m.group(3).strip()))
        return rows_

    flat = report(False)
    dso_split = []
    try:
        text = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso"],
                              capture_output=True, text=True, timeout=400).stdout
        for line in text.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
            if m:
                dso_split.append((float(m.group(1)), m.group(2)))
    except subprocess.TimeoutExpired:
        pass
    inclusive = report(True)
    cats = {}
    for pct, dso, sym in flat:
        cat = "kernel: other" if "kernel" in dso else ("libc: other" if dso.startswith("libc") else "other")
        for cname, pat in MY_CATEGORIES:
            if re.search(pat, sym, re.I):
                cat = cname
                break
        cats[cat] = cats.get(cat, 0.0) + pct
    if not os.environ.get("BENCH_KEEP_PERF"):
        try:
            os.remove(data)
        except OSError:
            pass
    out = {
        "seconds": secs,
        "qps": res["qps"],
        "p99_ms": _hist_percentile(res["histogram"], 99),
        "gatehouse_cpu_s_per_10k_queries": res["cpu"]["gatehouse"] * 10000 / res["queries"] if res["queries"] else None,
        "categories": sorted(cats.items(), key=lambda kv: -kv[1]),
        "top_self": flat[:30],
        # Inclusive time of gatehouse's own frames, of the crates it relays
        # through, and of each system call (who pays for the wakeups).
        "top_children": [r for r in inclusive if re.search(MY_PROFILE_FRAMES, r[2])][:120],
        "dso": dso_split,
    }
    _progress(w, "mysql profile", out["categories"])
    return out


# Frames whose inclusive time the MySQL profile keeps: gatehouse's own, the
# crates it relays through, and the kernel's milestones (a send on loopback
# runs the receiver's TCP input and wakeup in the sender's context; sleeping
# and being woken; the syscalls).
MY_PROFILE_FRAMES = (
    r"gatehouse::|russh::|rustls::|^__x64_sys_|^do_writev$|^tcp_sendmsg$|^sock_def_readable$"
    r"|^schedule$|^exit_to_user_mode_loop$|^tcp_recvmsg$"
)

# Symbol -> where gatehouse's time goes in the MySQL relay.
MY_CATEGORIES = [
    ("AES-GCM (SSH leg, TLS leg)", r"aes|gcm|ghash|gfmul|clmul"),
    ("ChaCha20-Poly1305 (recording seal)", r"chacha|poly1305"),
    ("SHA-256 (recording chain)", r"sha256|sha2"),
    ("memcpy/memmove/memset", r"memcpy|memmove|memset"),
    ("allocator", r"malloc|free|realloc|calloc|_int_|arena|tcache"),
    ("kernel: TCP/loopback send+receive", r"tcp_|skb|loopback|ip_|__dev_|net_rx|netif|sock_|inet_|copy_user|_copy_to_iter|_copy_from_iter|raw_copy"),
    ("kernel: scheduling, futex, epoll, syscalls", r"futex|schedule|epoll|ep_|syscall|entry_|switch_|finish_task|pick_|enqueue|dequeue|wake|ttwu|do_sys|__x64|update_|rcu_|irq|timer|hrtimer|native_"),
    ("tokio runtime", r"tokio"),
    ("russh (SSH channel)", r"russh"),
    ("rustls (TLS to the server)", r"rustls"),
    ("serde_json (recording events)", r"serde"),
    ("gatehouse mysql proxy", r"gatehouse::db::mysql"),
    ("gatehouse db (shared)", r"gatehouse::db"),
    ("gatehouse recording", r"gatehouse::recording"),
]


def _progress(w, what, data):
    if w.verbose:
        import json

        text = json.dumps(data, default=str)
        if len(text) > 600:
            text = text[:600] + "..."
        print(f"  [{time.strftime('%H:%M:%S')}] {what}: {text}", flush=True)


# Order matters only for the run's duration; each row is independent.
ROWS = [
    ("throughput", throughput),
    ("setup", setup),
    ("latency", latency),
    ("concurrency", concurrency),
    ("slow_reader", slow_reader),
    ("postgres", postgres),
    ("mysql", mysql),
]

# Rows run only when named with --rows.
EXTRA_ROWS = [
    ("profile", profile),
    ("postgres_profile", postgres_profile),
    ("mysql_profile", mysql_profile),
]
