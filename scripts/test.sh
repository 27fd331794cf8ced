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
# cargo-deny and cargo-deb compile (about 3 minutes on a new machine) while
# apt downloads and unpacks the peers.
mkdir -p target
scripts/install-cargo-tools.sh >target/install-cargo-tools.log 2>&1 &
cargo_tools=$!
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

section "cargo deny check licenses bans sources"
# The dependency policy in deny.toml (accepted licenses, banned and
# never-doubled crypto crates, crates.io only). Advisories need the RustSec
# database, which cannot be fetched here: README "Vulnerability management".
if ! wait "$cargo_tools"; then
  cat target/install-cargo-tools.log
  echo "installing cargo-deny/cargo-deb failed (above)" >&2
  exit 1
fi
cargo deny --offline check licenses bans sources

section "cargo test --all-targets (CI=${CI:-})"
# CI passes through to the tests; the timeout keeps a hung test from eating
# the whole CI budget (everything must finish well under 30 minutes).
CI="${CI:-}" RUST_BACKTRACE="${RUST_BACKTRACE:-1}" \
  timeout --kill-after=30s 20m \
  cargo test --all-targets --no-fail-fast -- --test-threads=2

section "the Debian package: build, install, check, remove, purge"
# Packages the binary `cargo test` just built and tested (`cargo build`
# would rebuild it with other dependency features; a release build would
# add 6 minutes to the CI budget; `scripts/deb-test.sh` alone packages a
# release).
scripts/deb-test.sh --profile dev --prebuilt

section "the Ansible role: ansible-playbook -c local against this machine"
GATEHOUSE_DEB="$(find target/debian -maxdepth 1 -name 'gatehouse_*.deb' -printf '%T@ %p\n' |
  sort -n | tail -1 | cut -d' ' -f2-)" scripts/ansible-test.sh

section "all checks passed"
