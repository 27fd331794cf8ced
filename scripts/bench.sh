#!/usr/bin/env bash
# The benchmark: gatehouse side by side with direct OpenSSH and an OpenSSH
# jump host, and (row `postgres`) with direct PostgreSQL and pgbouncer, on
# loopback, in one run. See BENCHMARKS.md.
#
#   scripts/bench.sh            full run (~15 min); rewrites BENCHMARKS.md
#   scripts/bench.sh --quick    development run (< 2 min); prints only
#
# Other options (passed to bench/run.py): --rows throughput,setup,...
# (`--rows postgres` alone rewrites only the PostgreSQL block of
# BENCHMARKS.md; `--rows postgres_profile` adds a perf profile), --no-write,
# --keep. BENCH_NO_BUILD=1 skips the build (benchmarks whatever is in
# $CARGO_TARGET_DIR/release, else target/release).
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

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
  echo "bench: cargo build --release (gatehouse + bench-load)" >&2
  cargo build --release --bin gatehouse --example bench-load
fi

exec python3 bench/run.py "$@"
