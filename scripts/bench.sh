#!/usr/bin/env bash
# The benchmark: gatehouse side by side with direct OpenSSH and an OpenSSH
# jump host, (row `postgres`) with direct PostgreSQL and pgbouncer, and (row
# `mysql`) with direct MariaDB, on loopback, in one run. See BENCHMARKS.md.
#
#   scripts/bench.sh            full run (~25 min); rewrites BENCHMARKS.md
#   scripts/bench.sh --quick    development run (< 2 min); prints only
#
# Other options (passed to bench/run.py): --rows throughput,setup,...
# (`--rows postgres` alone rewrites only the PostgreSQL block of
# BENCHMARKS.md; `--rows postgres_profile` adds a perf profile; likewise
# `--rows mysql`, `--rows mysql,mysql_profile`), --no-write,
# --keep. BENCH_NO_BUILD=1 skips the build (benchmarks whatever is in
# $CARGO_TARGET_DIR/release, else target/release); BENCH_CARGO_LOCK=FILE
# runs the build under `flock -o FILE`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in sshd ssh sftp ssh-keygen oathtool python3; do
  if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$tool ]]; then
    echo "bench: $tool is missing; run scripts/install-test-deps.sh" >&2
    exit 1
  fi
done

# The PostgreSQL rows (part of the full run; `--rows postgres` alone) need
# Debian's postgresql (initdb, pg_ctl, pgbench, psql), pgbouncer and openssl;
# without them that row reports the failure and the others run.
if ! ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1 \
  || { ! command -v pgbouncer >/dev/null 2>&1 && [[ ! -x /usr/sbin/pgbouncer ]]; }; then
  echo "bench: postgresql or pgbouncer is missing; the postgres row will fail (scripts/install-test-deps.sh, apt-get install pgbouncer)" >&2
fi

# The MySQL rows (part of the full run; `--rows mysql` alone) need Debian's
# mariadb-server (mariadbd 10.11, mariadb-install-db, the mariadb client)
# and sysbench. sysbench is installed here when it is missing and this runs
# as root with apt-get; without the server that row reports the failure.
wants_mysql=1
for arg in "$@"; do
  case $arg in
    --rows=*) [[ ${arg#--rows=} == *mysql* ]] || wants_mysql= ;;
  esac
done
prev=
for arg in "$@"; do
  if [[ $prev == --rows ]]; then [[ $arg == *mysql* ]] || wants_mysql=; fi
  prev=$arg
done
if [[ -n $wants_mysql ]] && ! command -v sysbench >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: installing sysbench (apt-get install -y sysbench)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y sysbench >/dev/null \
      || echo "bench: apt-get install sysbench failed; the mysql row will fail" >&2
  else
    echo "bench: sysbench is missing; the mysql row will fail (apt-get install sysbench)" >&2
  fi
fi
if [[ -n $wants_mysql ]] && [[ ! -x /usr/sbin/mariadbd ]]; then
  echo "bench: mariadb-server is missing; the mysql row will fail (scripts/install-test-deps.sh)" >&2
fi

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
  echo "bench: cargo build --release (gatehouse + bench-load)" >&2
  # On a shared machine, BENCH_CARGO_LOCK=/tmp/cargo.lock serialises the
  # build with other cargo runs (flock -o).
  lock=()
  if [[ -n ${BENCH_CARGO_LOCK:-} ]]; then lock=(flock -o "$BENCH_CARGO_LOCK"); fi
  "${lock[@]}" cargo build --release --bin gatehouse --example bench-load
fi

exec python3 bench/run.py "$@"
