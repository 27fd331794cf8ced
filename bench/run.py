#!/usr/bin/env python3
"""gatehouse benchmark harness: gatehouse measured side by side with a
direct OpenSSH login and an OpenSSH jump host, in one run on one machine.

Run it through `scripts/bench.sh [--quick]`, which builds the release
binaries first. This file sets up the world on loopback (two target sshds,
one per cipher; a plain sshd as jump host; gatehouse; the `bench-load`
echo target), logs in once with a TOTP code so that the MFA lease admits
every later login, runs the rows of `rows.py`, prints the results as
markdown and, in full mode, rewrites the generated block of BENCHMARKS.md.
Standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import report  # noqa: E402
import rows  # noqa: E402
from harness import BenchError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CIPHERS = ["aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]


class Params:
    """How much of everything: full mode for the table, quick for development."""

    def __init__(self, quick):
        self.quick = quick
        self.size = (256 if quick else 1024) * rows.MIB
        self.warm_size = (32 if quick else 64) * rows.MIB
        self.reps = 2 if quick else 5
        # Per transfer; a stalled relay costs this much and is reported.
        self.timeout = 60 if quick else 120
        self.setup_n = 10 if quick else 40
        self.setup_warmup = 2 if quick else 3
        self.keys_n = 200 if quick else 1000
        self.keys_warmup = 20 if quick else 50
        self.keys_gap = 0.005
        self.levels = [50, 100] if quick else [100, 500, 1000]
        self.parallel = 16
        self.conc_deadline = 60 if quick else 400
        self.slow_secs = 5 if quick else 20
        # PostgreSQL rows: pgbench scale, seconds per run (-T), rounds of
        # the interleaved paths, warm-up seconds per path.
        self.pg_scale = 10
        self.pg_secs = 3 if quick else 12
        self.pg_rounds = 1 if quick else 2
        self.pg_warm_secs = 1 if quick else 3
        self.pg_attempts = 1 if quick else 2
        # MySQL rows: sysbench tables and rows per table, seconds per run
        # (--time), rounds of the interleaved paths, warm-up seconds.
        self.my_tables = 4
        self.my_table_size = 20000
        self.my_secs = 3 if quick else 10
        self.my_rounds = 1 if quick else 2
        self.my_warm_secs = 1 if quick else 3
        self.my_attempts = 1 if quick else 2
        # Everything, including setup and cleanup, ends by then.
        self.overall_limit = 420 if quick else 50 * 60


class World:
    pass


def login_name():
    return subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()


def make_file(path, size):
    """Random bytes (nothing compresses), then read once into the page cache."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * rows.MIB)
            f.write(os.urandom(n))
            left -= n
    with open(path, "rb") as f:
        while f.read(16 * rows.MIB):
            pass


def args_wait_idle(args, p):
    return args.wait_idle if args.wait_idle is not None else (0 if p.quick else 600)


PG_TARGET = "db-1"
PG_LOGIN = "bench"
PG_DB = "bench"


def build_pg(w, procs):
    """The PostgreSQL side of the world: the server (TLS, SCRAM), a login
    `bench` owning database `bench`, and pgbouncer in front of it. Returns
    an object with everything the rows need, or raises BenchError."""
    pg = World()
    # The server programs run as an unprivileged user that must reach
    # ROOT/pg (ROOT is mkdtemp's 0700).
    os.chmod(w.root, 0o711)
    pg.cluster = harness.PgCluster(procs, w.root)
    procs.cleanups.append(pg.cluster.stop)
    pg.target, pg.login, pg.db = PG_TARGET, PG_LOGIN, PG_DB
    pg.tunnel_port = 15432
    pg.password = "bench-db-" + os.urandom(9).hex()
    pg.cluster.psql(
        f"SET password_encryption = 'scram-sha-256'; CREATE ROLE {PG_LOGIN} LOGIN PASSWORD '{pg.password}'"
    )
    pg.cluster.psql(f"CREATE DATABASE {PG_DB} OWNER {PG_LOGIN}")
    pg.bouncer, pg.bouncer_error = None, None
    try:
        pg.bouncer = harness.PgBouncer(procs, pg.cluster, PG_DB, PG_LOGIN, pg.password)
    except BenchError as e:
        pg.bouncer_error = str(e)
    pg.gw_error = None
    pg.versions = {
        "postgres": pg.cluster.version(),
        "pgbench": subprocess.run([str(pg.cluster.bin / "pgbench"), "--version"], capture_output=True, text=True).stdout.strip(),
        "pgbouncer": pg.bouncer.version() if pg.bouncer else None,
    }
    return pg


def pg_gatehouse_toml(pg):
    """The database target and the role that grants its login."""
    return "\n".join(
        [
            "[[roles]]",
            'name = "bench-db"',
            f'targets = {{ names = ["{pg.target}"] }}',
            f'logins = ["{pg.login}"]',
            "",
            "[[targets]]",
            f'name = "{pg.target}"',
            'kind = "postgres"',
            f'address = "127.0.0.1:{pg.cluster.port}"',
            f"tunnel_port = {pg.tunnel_port}",
            f'tls_ca = "{pg.cluster.ca_pem}"',
        ]
    )


MY_TARGET = "db-my"
MY_LOGIN = "bench"
MY_DB = "sbtest"
# The database rows and the block of BENCHMARKS.md each group rewrites.
DB_ROWS = {
    "postgres": ("postgres", "postgres_profile"),
    "mysql": ("mysql", "mysql_profile"),
}


def build_my(w, p, procs):
    """The MariaDB side of the world: the server (TLS required on TCP), a
    login `bench` owning database `sbtest`. Returns an object with
    everything the rows need, or raises BenchError."""
    my = World()
    # The server runs as an unprivileged user that must reach ROOT/maria
    # (ROOT is mkdtemp's 0700).
    os.chmod(w.root, 0o711)
    my.server = harness.MariaDb(procs, w.root)
    my.target, my.login, my.db = MY_TARGET, MY_LOGIN, MY_DB
    my.tunnel_port = 13306
    my.tables, my.table_size = p.my_tables, p.my_table_size
    my.password = "bench-my-" + os.urandom(9).hex()
    my.server.create_user(MY_LOGIN, my.password, MY_DB)
    my.gw_error = None
    my.versions = {
        "server": my.server.version(),
        "sysbench": subprocess.run(["sysbench", "--version"], capture_output=True, text=True).stdout.strip(),
    }
    return my


def my_gatehouse_toml(my):
    """The MySQL target and the role that grants its login."""
    return "\n".join(
        [
            "[[roles]]",
            'name = "bench-my"',
            f'targets = {{ names = ["{my.target}"] }}',
            f'logins = ["{my.login}"]',
            "",
            "[[targets]]",
            f'name = "{my.target}"',
            'kind = "mysql"',
            f'address = "127.0.0.1:{my.server.port}"',
            f"tunnel_port = {my.tunnel_port}",
            f'tls_ca = "{my.server.ca_pem}"',
        ]
    )


def build_world(args, p, procs, root, wanted=()):
    w = World()
    w.verbose = True
    w.wait_for_idle = wait_for_idle
    w.procs = procs
    w.ciphers = CIPHERS
    w.root = root
    w.login = login_name()
    bins = Path(args.bin_dir)
    w.gw_bin = bins / "gatehouse"
    w.loadgen = bins / "examples" / "bench-load"
    for b in (w.gw_bin, w.loadgen):
        if not b.exists():
            raise BenchError(f"{b} is missing: run scripts/bench.sh (it builds both)")
    keys = w.root / "keys"
    keys.mkdir()
    w.key_path = keys / "bench"
    user_key = harness.keygen(w.key_path, "bench")

    # Targets (one sshd per cipher, so every leg into it uses that cipher),
    # the OpenSSH jump host, and the echo target's key.
    w.targets, w.target_name = {}, {}
    for cipher in CIPHERS:
        short = cipher.split("-")[0]
        name = f"target-{short}"
        # SHLVL=1: Debian's bash sources ~/.bashrc for a command run by sshd
        # only in a top-level shell; this machine's root .bashrc costs
        # ~0.25 s (pyenv init), the same on every path, which is not SSH.
        w.targets[cipher] = harness.Sshd(
            procs, w.root, name, [user_key], cipher, extra=["SetEnv SHLVL=1"]
        )
        w.target_name[cipher] = name
    w.jump = harness.Sshd(
        procs,
        w.root,
        "jump",
        [user_key],
        ",".join(CIPHERS),
        extra=["AllowTcpForwarding yes", "PermitOpen any"],
    )
    w.echo = harness.EchoTarget(w.loadgen, w.root)

    targets = [(w.target_name[c], w.targets[c].port, w.targets[c].host_key) for c in CIPHERS]
    targets.append(("echo", w.echo.port, w.echo.host_key))
    w.pg, w.pg_error = None, None
    if any(r in wanted for r in ("postgres", "postgres_profile")):
        try:
            w.pg = build_pg(w, procs)
        except BenchError as e:
            w.pg_error = f"PostgreSQL setup failed: {e}"
            print(f"  {w.pg_error[:400]}", flush=True)
    w.my, w.my_error = None, None
    if any(r in wanted for r in DB_ROWS["mysql"]):
        try:
            w.my = build_my(w, p, procs)
        except BenchError as e:
            w.my_error = f"MariaDB setup failed: {e}"
            print(f"  {w.my_error[:400]}", flush=True)
    extra_roles, extra_toml = [], []
    if w.pg is not None:
        extra_roles.append("bench-db")
        extra_toml.append(pg_gatehouse_toml(w.pg))
    if w.my is not None:
        extra_roles.append("bench-my")
        extra_toml.append(my_gatehouse_toml(w.my))
    extra_toml = "\n\n".join(extra_toml)
    w.gw = harness.Gatehouse(
        procs, w.gw_bin, w.root, "bench", user_key, w.login, targets, extra_roles=extra_roles, extra_toml=extra_toml
    )
    for kv in args.gatehouse_env:
        name, _, value = kv.partition("=")
        w.gw.env[name] = value
    for sshd in w.targets.values():
        sshd.set_authorized([user_key, w.gw.client_pubkey])
    secret = w.gw.enroll()
    if w.pg is not None:
        # The database password, sealed in gatehouse's state; the client
        # never holds it.
        try:
            w.gw.cli_stdin(["target", "credential", w.pg.target, w.pg.login, "--stdin"], w.pg.password + "\n")
        except BenchError as e:
            w.pg.gw_error = f"gatehouse target credential failed: {e}"
    if w.my is not None:
        try:
            w.gw.cli_stdin(["target", "credential", w.my.target, w.my.login, "--stdin"], w.my.password + "\n")
        except BenchError as e:
            w.my.gw_error = f"gatehouse target credential failed: {e}"
    # Outlives the run's own time limit plus every wait for an idle machine.
    w.echo.start(procs, w.gw.client_pubkey, p.overall_limit + 300 * 8 + args_wait_idle(args, p))
    w.gw.start(procs)

    w.client = harness.Client(
        w.root,
        w.key_path,
        w.gw,
        w.jump,
        {w.target_name[c]: (w.targets[c].port, w.targets[c].host_key) for c in CIPHERS},
        [(c, None) for c in CIPHERS] + [(CIPHERS[0], "curve25519-sha256")],
    )

    # One code login; from here on the MFA lease admits this key from
    # 127.0.0.1 without a code (a code is accepted once per 30 s step).
    code = harness.run_checked(["oathtool", "--totp", "-b", secret]).strip()
    w.client.set_code(code)
    cfg = CIPHERS[0]
    harness.run_checked(w.client.ssh(cfg, "gw", "help"), env=w.client.env)
    w.client.set_code("000000")  # any later prompt fails loudly instead of reusing
    harness.run_checked(
        w.client.ssh(cfg, *w.client.dest("gatehouse", w.target_name[cfg], w.login), "true"),
        env=w.client.env,
    )

    w.big_size = p.size
    w.big_file = w.root / "payload.bin"
    w.warm_file = w.root / "warmup.bin"
    if any(r in wanted for r in ("throughput", "profile")):
        make_file(w.big_file, p.size)
        make_file(w.warm_file, p.warm_size)
    return w


# ------------------------------------------------------------------ info ---


def _kex_legs(text):
    """[(kex, cipher)] in order of appearance in ssh -v / sshd DEBUG1 output."""
    legs = []
    for line in text.splitlines():
        m = re.search(r"kex: algorithm: (\S+)", line)
        if m:
            legs.append({"kex": m.group(1), "cipher": None})
            continue
        m = re.search(r"kex: (?:server->client|client->server) cipher: (\S+)", line)
        if m and legs and legs[-1]["cipher"] is None:
            legs[-1]["cipher"] = m.group(1)
    return legs


def probe_algorithms(w):
    """One `ssh -v ... true` per cipher and path: what each leg negotiated.
    The gatehouse -> target leg is read from the target sshd's log."""
    names = {
        "direct": ["client → target sshd"],
        "jump": ["client → jump host", "client → target sshd (end to end, through the jump host)"],
        "gatehouse": ["client → gatehouse", "client → gatehouse in-process server (on the direct-tcpip channel)"],
    }
    out = {}
    for cipher in CIPHERS:
        sshd = w.targets[cipher]
        out[cipher] = {}
        for path in rows.PATHS:
            off = sshd.log_size()
            args = w.client.ssh(cipher, "-v", *w.client.dest(path, w.target_name[cipher], w.login), "true")
            r = subprocess.run(
                args, capture_output=True, text=True, env=w.client.env, timeout=30, stdin=subprocess.DEVNULL
            )
            legs = _kex_legs(r.stderr)
            lst = []
            for i, leg in enumerate(legs):
                lst.append(dict(leg, leg=names[path][i] if i < len(names[path]) else f"leg {i + 1}"))
            if path == "gatehouse":
                time.sleep(0.3)
                server = _kex_legs(sshd.log_text().encode()[off:].decode(errors="replace"))
                leg = server[-1] if server else {"kex": None, "cipher": None}
                lst.append(dict(leg, leg="gatehouse → target sshd (target's log)"))
            if path == "jump":
                lst.append({"leg": "jump host → target", "kex": "plain TCP", "cipher": "(carries the end-to-end leg)"})
            out[cipher][path] = lst
    return out


def cpu_idle_pct(seconds=1.0):
    def snap():
        with open("/proc/stat") as fh:
            vals = [int(x) for x in fh.readline().split()[1:]]
        return vals[3] + vals[4], sum(vals)

    i0, t0 = snap()
    time.sleep(seconds)
    i1, t1 = snap()
    return 100.0 * (i1 - i0) / max(1, t1 - t0)


def wait_for_idle(max_wait, threshold=85.0):
    """Another engineer's test suite may be using the same two cores: wait
    (up to `max_wait` seconds) until the CPUs are at least `threshold` %
    idle over two seconds. Returns the last idle percentage seen. The
    overall time limit is paused meanwhile (it bounds the benchmark's own
    work)."""
    left = signal.alarm(0)
    try:
        deadline = time.monotonic() + max_wait
        said = False
        while True:
            idle = cpu_idle_pct(2.0)
            if idle >= threshold or time.monotonic() >= deadline:
                if said:
                    print(f"  ... {idle:.0f}% idle now; going on", flush=True)
                return idle
            if not said:
                print(f"  waiting up to {max_wait:.0f}s for the machine to go idle (now {idle:.0f}% idle)", flush=True)
                said = True
            time.sleep(3)
    finally:
        if left:
            signal.alarm(left)


def loadavg():
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def machine_info(w):
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kib = int(fh.readline().split()[1])
    ssh_v = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    gw_v = subprocess.run([str(w.gw_bin), "--version"], capture_output=True, text=True).stdout.strip()
    git = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--tags"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": mem_kib / 2**20,
        "kernel": platform.release(),
        "openssh": ssh_v,
        "gatehouse": f"{gw_v} (git {git or 'unknown'}), release build",
        "rustc": rustc,
    }


# ------------------------------------------------------------------ main ---


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repetitions (< 2 minutes)")
    ap.add_argument(
        "--bin-dir",
        default=str(Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target") / "release"),
        help="where gatehouse and examples/bench-load are (default: $CARGO_TARGET_DIR/release, else target/release)",
    )
    ap.add_argument(
        "--rows",
        default=",".join(name for name, _ in rows.ROWS),
        help="comma-separated subset of: "
        + ", ".join(name for name, _ in rows.ROWS + rows.EXTRA_ROWS)
        + " (profile: perf record of gatehouse during a relay, only when named)",
    )
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md in full mode")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    ap.add_argument(
        "--gatehouse-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for `gatehouse run`, for experiments (e.g. TOKIO_WORKER_THREADS=1); "
        "recorded in the results",
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="before the run and before each row, wait up to this long for the CPUs to be >= 85%% idle "
        "(default: 600 in full mode, 0 in quick mode)",
    )
    args = ap.parse_args()
    p = Params(args.quick)
    wanted = [r for r in args.rows.split(",") if r]
    unknown = set(wanted) - {name for name, _ in rows.ROWS + rows.EXTRA_ROWS}
    if unknown:
        ap.error(f"unknown rows: {', '.join(sorted(unknown))}")

    procs = harness.Procs()
    procs.install_signal_handlers()

    def overall(_signum, _frame):
        raise BenchError(f"overall time limit of {p.overall_limit}s reached")

    signal.signal(signal.SIGALRM, overall)
    wait_idle = args_wait_idle(args, p)
    nofile = harness.raise_nofile()
    harness.become_subreaper()
    root = Path(tempfile.mkdtemp(prefix="gh-bench-"))
    try:
        print(f"gatehouse benchmark ({'quick' if p.quick else 'full'} mode); RLIMIT_NOFILE {nofile}", flush=True)
        idle = wait_for_idle(wait_idle)
        # The time limit starts after the wait for an idle machine.
        signal.alarm(p.overall_limit)
        started = time.monotonic()
        waited = 0.0
        load_before = loadavg()
        if idle < 85:
            print(f"  note: the machine was only {idle:.0f}% idle before the run; numbers may be disturbed", flush=True)
        w = build_world(args, p, procs, root, wanted)
        print(f"  world up in {time.monotonic() - started:.0f}s ({root})", flush=True)
        info = machine_info(w)
        info["legs"] = probe_algorithms(w)
        if args.gatehouse_env:
            info["gatehouse"] += "; environment " + " ".join(args.gatehouse_env)
        if w.pg is not None:
            info["postgres"] = w.pg.versions
        if w.my is not None:
            info["mysql"] = w.my.versions
        results = {}
        idle_per_row = {}
        others_per_row = {}
        for name, fn in rows.ROWS + rows.EXTRA_ROWS:
            if name not in wanted:
                continue
            # In full mode a row that other processes disturbed (used more
            # than 15% of the CPUs meanwhile) is run once more.
            for attempt in range(1 if p.quick else 2):
                t_wait = time.monotonic()
                row_idle = wait_for_idle(min(wait_idle, 300))
                waited += time.monotonic() - t_wait
                idle_per_row[name] = round(row_idle)
                print(f"== {name} (CPUs {row_idle:.0f}% idle before it)", flush=True)
                dist = harness.Disturbance()
                try:
                    results[name] = fn(w, p)
                except BenchError as e:
                    # One broken row does not lose the others.
                    print(f"   {name} failed: {e}", flush=True)
                    results[name] = {"error": str(e)[:2000]}
                harness.reap_orphans({pr.pid for pr in procs.procs})
                others = dist.result()
                others_per_row[name] = round(others["other_pct"])
                print(
                    f"   other processes used {others['other_pct']:.0f}% of the CPUs during {name}",
                   flush=True,
                )
                if others["other_pct"] <= 15:
                    break
                if attempt == 0 and not p.quick:
                    print(f"   {name} was disturbed; running it again", flush=True)
        # Only the rows of one database (`--rows postgres[,postgres_profile]`
        # or `--rows mysql[,mysql_profile]`): the command is recorded.
        only_db = next((g for g, names in DB_ROWS.items() if set(wanted) <= set(names)), None)
        info.update(
            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            command="scripts/bench.sh"
            + (" --quick" if p.quick else "")
            + (" --rows " + ",".join(wanted) if only_db else ""),
            mode="quick" if p.quick else "full",
            duration_s=time.monotonic() - started - waited,
            idle_before_pct=idle,
            idle_before_rows=idle_per_row,
            others_during_rows=others_per_row,
            loadavg_before=load_before,
            loadavg_after=loadavg(),
        )
        db_names = {n for names in DB_ROWS.values() for n in names}
        main_results = {k: v for k, v in results.items() if k not in db_names}
        block = report.render(info, main_results) if main_results else ""
        pg_block = report.render_postgres(info, results) if "postgres" in results or "postgres_profile" in results else ""
        my_block = report.render_mysql(info, results) if "mysql" in results or "mysql_profile" in results else ""
        print()
        print(block)
        for b in (pg_block, my_block):
            if b:
                print()
                print(b)
        out_dir = REPO / "target" / "bench"
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        data = json.dumps({"info": info, "results": results}, indent=1, default=str)
        (out_dir / f"results-{stamp}.json").write_text(data)
        (out_dir / "latest.json").write_text(data)
        print(f"\nraw results: {out_dir / f'results-{stamp}.json'}")
        if not p.quick and not args.no_write and set(wanted) == {n for n, _ in rows.ROWS}:
            report.write_benchmarks_md(REPO / "BENCHMARKS.md", block)
            print("BENCHMARKS.md updated")
        # The database rows have their own blocks (sections "PostgreSQL" and
        # "MySQL"), each rewritten by a full run and by a full-mode
        # `--rows postgres[,...]` / `--rows mysql[,...]`.
        full = set(wanted) >= {n for n, _ in rows.ROWS}
        for group, blk, begin, end in (
            ("postgres", pg_block, report.PG_BEGIN, report.PG_END),
            ("mysql", my_block, report.MY_BEGIN, report.MY_END),
        ):
            if not p.quick and not args.no_write and group in results and group in wanted and (only_db == group or full):
                report.write_benchmarks_md(REPO / "BENCHMARKS.md", blk, begin, end)
                print(f"BENCHMARKS.md ({group}) updated")
        return 0
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"bench: interrupted ({str(e) or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.alarm(0)
        procs.stop_all()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
