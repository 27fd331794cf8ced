#!/usr/bin/env bash
# The benchmark: gatehouse side by side with direct OpenSSH and an OpenSSH
# jump host, on loopback, in one run. See BENCHMARKS.md.
#
#   scripts/bench.sh            full run (~15 min); rewrites BENCHMARKS.md
#   scripts/bench.sh --quick    development run (< 2 min); prints only
#
# Other options (passed to bench/run.py): --rows throughput,setup,...
# --no-write, --keep. BENCH_NO_BUILD=1 skips the build (benchmarks whatever
# is in target/release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in sshd ssh sftp ssh-keygen oathtool python3; do
  if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$tool ]]; then
    echo "bench: $tool is missing; run scripts/install-test-deps.sh" >&2
    exit 1
  fi
done

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
  echo "bench: cargo build --release (gatehouse + bench-load)" >&2
  cargo build --release --bin gatehouse --example bench-load
fi

exec python3 bench/run.py "$@"
