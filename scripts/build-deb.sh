#!/usr/bin/env bash
# Builds the Debian package: target/debian/gatehouse_<version>-<revision>_<arch>.deb.
#
#   scripts/build-deb.sh                 # release build (what you ship)
#   scripts/build-deb.sh --profile dev   # the test build's binary (CI: see below)
#   ... --prebuilt                       # package the binary already built (by
#                                        # `cargo test`: the one the tests ran)
#
# cargo-deb packages what Cargo.toml's [package.metadata.deb] lists; the man
# pages and completions are generated here from the built binary
# (`gatehouse manpage --dir`, `gatehouse completions SHELL`: the same CLI
# definition as --help) into target/deb-assets, then `cargo deb --no-build`.
# Installs cargo-deb (pinned: scripts/install-cargo-tools.sh) when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=release
fast=()
prebuilt=false
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --fast) fast=(--fast); shift ;;
    --prebuilt) prebuilt=true; shift ;;
    *) echo "usage: $0 [--profile release|dev] [--fast] [--prebuilt]" >&2; exit 64 ;;
  esac
done

scripts/install-cargo-tools.sh cargo-deb

if ! $prebuilt; then
  cargo build --locked --profile "$profile" --bin gatehouse
fi
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
case "$profile" in
  dev) out=debug ;;
  *) out="$profile" ;;
esac
bin="$target_dir/$out/gatehouse"
[ -x "$bin" ] || { echo "no $bin: build it first, or leave out --prebuilt" >&2; exit 1; }

assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" manpage --dir "$assets/man"
gzip -9n "$assets"/man/*.8
"$bin" completions bash >"$assets/completions/gatehouse"
"$bin" completions zsh >"$assets/completions/_gatehouse"
"$bin" completions fish >"$assets/completions/gatehouse.fish"

# Every commit's package has a version of its own, later commits' higher
# ones (the commit's time, then its hash): 0.1.0-1+git20261207091500.1a2b3c4.
# A rebuilt package with a new version is what `apt` and the Ansible role
# install; the same version would be taken as installed already.
revision=1
if commit=$(git log -1 --format='%cd.%h' --date=format-local:%Y%m%d%H%M%S 2>/dev/null); then
  revision="1+git$commit"
  if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    revision="$revision.dirty$(date -u +%Y%m%d%H%M%S)"
  fi
fi
extra=("${fast[@]}" --deb-revision "$revision")

rm -f target/debian/gatehouse_*.deb target/debian/gatehouse-dbgsym_*.ddeb
if [ "$profile" = release ]; then
  cargo deb --no-build --locked --dbgsym "${extra[@]}"
else
  # cargo-deb packages `target/release/gatehouse` only from a release-like
  # profile; the dev binary (CI's, already built by `cargo test`) is staged
  # in a release-shaped directory of its own so nothing is rebuilt.
  stage="$target_dir/deb-stage"
  rm -rf "$stage"
  mkdir -p "$stage/release"
  cp "$bin" "$stage/release/gatehouse"
  CARGO_TARGET_DIR="$stage" cargo deb --no-build --locked --strip \
    --output target/debian "${extra[@]}"
fi
ls -1 target/debian/*.deb
