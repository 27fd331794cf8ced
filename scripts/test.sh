#!/usr/bin/env bash
# The whole check CI runs (via .ci/run): test tools, formatting, lints, tests.
# Integration tests start the real binary and real peers (sshd, ssh, ...);
# with CI=true a missing tool fails a test instead of skipping it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() {
  printf '\n==== %s (%ds elapsed) ====\n' "$*" "$SECONDS"
}

section "install test dependencies"
scripts/install-test-deps.sh

section "toolchain"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy
  fi
fi
cargo --version
cargo fmt --version
cargo clippy --version

section "cargo fmt --check"
cargo fmt --check

section "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

section "cargo test --all-targets (CI=${CI:-})"
# CI passes through to the tests; the timeout keeps a hung test from eating
# the whole CI budget (everything must finish well under 30 minutes).
CI="${CI:-}" RUST_BACKTRACE="${RUST_BACKTRACE:-1}" \
  timeout --kill-after=30s 20m \
  cargo test --all-targets --no-fail-fast -- --test-threads=2

section "all checks passed"
