#!/usr/bin/env bash
# WireGuard benchmark rows (see tests/wireguard_bench.rs):
#
#   1. TCP throughput through gatehouse's userspace tunnel (boringtun +
#      smoltcp) to an in-process sink/source, versus wireguard-go to
#      wireguard-go with kernel TCP on both ends; same veth pair, same
#      wireguard-go client, each direction, median of N runs.
#   2. SSH relay throughput over the tunnel: `ssh -J alice@10.77.0.1
#      LOGIN@web-1 'head -c 1G /dev/zero'` from a client namespace, next to
#      the same transfer over gatehouse's plain TCP listener on loopback.
#
# Needs root (network namespaces, TUN) and wireguard-go, wg, ip, python3,
# ssh, sshd, oathtool. All traffic stays inside namespaces this script's
# tests create. Every run is bounded in bytes and time.
#
#   bench/wireguard.sh                 512 MiB per run, 3 runs
#   GH_BENCH_BYTES=$((1<<30)) GH_BENCH_RUNS=5 bench/wireguard.sh
#   BENCH_NO_BUILD=1 bench/wireguard.sh   reuse the last release build
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) -ne 0 ]]; then
  echo "bench/wireguard.sh: needs root (network namespaces and TUN devices)" >&2
  exit 1
fi
for tool in wireguard-go wg ip python3 ssh oathtool; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "bench/wireguard.sh: $tool is missing; run scripts/install-test-deps.sh" >&2
    exit 1
  fi
done

export GH_BENCH_BYTES=${GH_BENCH_BYTES:-$((512 << 20))}
export GH_BENCH_RUNS=${GH_BENCH_RUNS:-3}

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
  echo "bench/wireguard.sh: cargo test --release --no-run (benchmark + tests)" >&2
  cargo test --release --test wireguard_bench --test wireguard --test ssh_jump --no-run >&2
fi

run_test() { # TEST-BINARY FILTER [ARGS...]
  local bin=$1 filter=$2
  shift 2
  timeout 1200 cargo test --release --test "$bin" -- --exact "$filter" --nocapture "$@" 2>&1
}

echo "## WireGuard ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $((GH_BENCH_BYTES >> 20)) MiB x $GH_BENCH_RUNS runs)"
echo
# The client matters: Debian 12's wireguard-go (0.0.20220316) leaves its UDP
# socket at the kernel default (net.core.rmem_default, 208 KiB here), which
# overflows under a burst that smoltcp (no SACK, no pacing) then recovers
# from slowly; newer wireguard-go releases raise their own socket buffers to
# several MiB, and the kernel module and the apps do not queue in a socket
# at all. The row runs both ways: as installed, and with the defaults the
# client's socket inherits raised to 4 MiB for the duration (net.core.*_default
# is not per network namespace; restored on exit). Both sides of each
# comparison use the same client.
orig_rmem=$(sysctl -n net.core.rmem_default)
orig_wmem=$(sysctl -n net.core.wmem_default)
restore() { sysctl -q -w net.core.rmem_default="$orig_rmem" net.core.wmem_default="$orig_wmem" || true; }
trap restore EXIT

mbit() { grep "^BENCH $2:" <<<"$1" | sed -E 's/.*: ([0-9]+) Mbit\/s.*/\1/' | head -1; }
ratio() { python3 -c "print(f'{$1/max($2,1):.2f}x')"; }
echo "| client UDP socket buffers | path | client -> gateway | gateway -> client |"
echo "|---|---|---|---|"
for variant in default raised; do
  if [[ $variant == raised ]]; then
    sysctl -q -w net.core.rmem_default=4194304 net.core.wmem_default=4194304
    label="4 MiB (as newer wireguard-go)"
  else
    label="$((orig_rmem / 1024)) KiB (kernel default; Debian 12 wireguard-go)"
  fi
  tcp=$(run_test wireguard_bench wireguard_tcp_throughput --include-ignored)
  restore
  if ! grep -q '^BENCH ratio' <<<"$tcp"; then
    echo "$tcp" >&2
    echo "bench/wireguard.sh: the TCP benchmark failed" >&2
    exit 1
  fi
  gh_up=$(mbit "$tcp" "gatehouse up"); go_up=$(mbit "$tcp" "wireguard-go up")
  gh_down=$(mbit "$tcp" "gatehouse down"); go_down=$(mbit "$tcp" "wireguard-go down")
  echo "| $label | TCP through gatehouse's tunnel (boringtun + smoltcp, in-process sink) | $gh_up Mbit/s | $gh_down Mbit/s |"
  echo "| $label | TCP through wireguard-go to wireguard-go (kernel TCP) | $go_up Mbit/s | $go_down Mbit/s |"
  echo "| $label | **gatehouse / wireguard-go** | **$(ratio "$gh_up" "$go_up")** | **$(ratio "$gh_down" "$go_down")** |"
done

secs_of_wg() { sed -E 's/.* in ([0-9.]+)s.*/\1/' <<<"$1"; }
ssh_wg=$(run_test wireguard one_gib_transfer_through_the_tunnel_completes | grep -o '1 GiB through the tunnel.*' || true)
sysctl -q -w net.core.rmem_default=4194304 net.core.wmem_default=4194304
ssh_wg_raised=$(run_test wireguard one_gib_transfer_through_the_tunnel_completes | grep -o '1 GiB through the tunnel.*' || true)
restore
ssh_tcp=$(run_test ssh_jump one_gib_transfer_completes_with_gateway_rss_bounded | grep -o '1 GiB in [^,]*' || true)
secs_wg=$(secs_of_wg "$ssh_wg")
secs_wg_raised=$(secs_of_wg "$ssh_wg_raised")
secs_tcp=$(sed -E 's/1 GiB in ([0-9.]+)(m?s).*/\1 \2/' <<<"$ssh_tcp" | awk '{printf "%.1f", ($2=="ms") ? $1/1000 : $1}')
mbit_of() { python3 -c "print(f'{(1<<30)*8/float($1)/1e6:.0f}')" 2>/dev/null || echo "?"; }
echo
echo "| SSH relay, 1 GiB down (\`ssh -J\` to web-1, \`head -c 1G /dev/zero\`, recorded) | seconds | Mbit/s |"
echo "|---|---|---|"
echo "| over the WireGuard tunnel, client socket buffers $((orig_rmem / 1024)) KiB | ${secs_wg:-?} | $(mbit_of "${secs_wg:-0}") |"
echo "| over the WireGuard tunnel, client socket buffers 4 MiB | ${secs_wg_raised:-?} | $(mbit_of "${secs_wg_raised:-0}") |"
echo "| over plain TCP on loopback (127.0.0.1) | ${secs_tcp:-?} | $(mbit_of "${secs_tcp:-0}") |"
