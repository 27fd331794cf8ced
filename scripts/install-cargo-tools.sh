#!/usr/bin/env bash
# Installs the cargo subcommands the checks use, pinned, from crates.io,
# when missing (or at another version):
#   cargo-deny  `cargo deny check licenses bans sources` (scripts/test.sh)
#   cargo-deb   the Debian package (scripts/build-deb.sh)
#
#   scripts/install-cargo-tools.sh            # both
#   scripts/install-cargo-tools.sh cargo-deb  # one
set -euo pipefail

declare -A PINNED=([cargo-deny]=0.20.2 [cargo-deb]=3.8.0)

tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(cargo-deny cargo-deb)
for tool in "${tools[@]}"; do
  version=${PINNED[$tool]:?"unknown tool $tool (known: ${!PINNED[*]})"}
  if cargo "${tool#cargo-}" --version 2>/dev/null | grep -qw "$version"; then
    continue
  fi
  echo "installing $tool $version"
  cargo install --locked --version "$version" "$tool"
done
