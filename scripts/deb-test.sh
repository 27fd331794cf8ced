#!/usr/bin/env bash
# The package test (.ci/run runs it; needs root and apt): builds the Debian
# package, installs it with `apt-get install ./gatehouse_*.deb` on this
# machine, checks what it installed, then removes and purges it.
#
#   scripts/deb-test.sh                  # packages a release build
#   scripts/deb-test.sh --profile dev --prebuilt   # CI: packages the binary cargo test built
#   GATEHOUSE_DEB=path scripts/deb-test.sh   # tests a package built before
#
# It refuses to run where gatehouse is installed or has state, so that a
# real installation is never touched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n---- deb-test: %s (%ds)\n' "$*" "$SECONDS"; }
fail() { printf 'deb-test FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (apt-get install, /etc, /var/lib)"
for tool in apt-get dpkg dpkg-deb man; do
  command -v "$tool" >/dev/null || fail "$tool is missing (scripts/install-test-deps.sh installs man-db)"
done

exec 9>/tmp/deb-test.lock
flock 9

if dpkg-query -W -f='${Status}' gatehouse 2>/dev/null | grep -q "install ok installed"; then
  fail "the gatehouse package is already installed here; this test installs and purges it"
fi
for dir in /var/lib/gatehouse /var/lib/private/gatehouse /etc/gatehouse; do
  [ ! -e "$dir" ] || fail "$dir exists: a gatehouse installation lives here; the test would purge it"
done

if [ -n "${GATEHOUSE_DEB:-}" ]; then
  deb="$GATEHOUSE_DEB"
else
  step "build the package"
  scripts/build-deb.sh --fast "$@"
  deb=$(ls -t target/debian/gatehouse_*.deb | head -1)
fi
deb=$(readlink -f "$deb")
version=$(dpkg-deb -f "$deb" Version)
[ "${version%-*}" = "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] ||
  fail "package version $version is not Cargo.toml's"

cleanup() {
  if dpkg-query -W gatehouse >/dev/null 2>&1; then
    apt-get purge -y -q gatehouse >/dev/null 2>&1 || true
  fi
  rm -rf /var/lib/private/gatehouse /var/lib/gatehouse /etc/gatehouse
}
trap cleanup EXIT

step "apt-get install $deb"
install_log=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$deb" 2>&1) ||
  { echo "$install_log"; fail "apt-get install failed"; }
echo "$install_log" | tail -12

step "the file list"
expected=(
  /usr/bin/gatehouse
  /usr/lib/systemd/system/gatehouse.service
  /etc/gatehouse/config.toml
  /usr/share/man/man8/gatehouse.8.gz
  /usr/share/man/man8/gatehouse-run.8.gz
  /usr/share/man/man8/gatehouse-check.8.gz
  /usr/share/man/man8/gatehouse-sessions.8.gz
  /usr/share/man/man8/gatehouse-recordings-verify.8.gz
  /usr/share/bash-completion/completions/gatehouse
  /usr/share/zsh/vendor-completions/_gatehouse
  /usr/share/fish/vendor_completions.d/gatehouse.fish
  /usr/share/doc/gatehouse/README.md
  /usr/share/doc/gatehouse/DEPLOY.md
  /usr/share/doc/gatehouse/config.example.toml
  /usr/share/doc/gatehouse/copyright
)
files=$(dpkg -L gatehouse)
for f in "${expected[@]}"; do
  grep -qx "$f" <<<"$files" || fail "$f is not in the package"
  [ -f "$f" ] || fail "$f is listed but not installed"
done
# Nothing outside the expected places.
unexpected=$(grep -vE '^/(\.|usr|usr/bin|usr/lib|usr/lib/systemd|usr/lib/systemd/system|usr/share|usr/share/(man|man/man8|doc|doc/gatehouse|bash-completion|bash-completion/completions|zsh|zsh/vendor-completions|fish|fish/vendor_completions\.d)|etc|etc/gatehouse)$' <<<"$files" |
  grep -vE '^/(usr/bin/gatehouse|usr/lib/systemd/system/gatehouse\.service|etc/gatehouse/config\.toml|usr/share/man/man8/gatehouse(-[a-z-]+)?\.8\.gz|usr/share/bash-completion/completions/gatehouse|usr/share/zsh/vendor-completions/_gatehouse|usr/share/fish/vendor_completions\.d/gatehouse\.fish|usr/share/doc/gatehouse/(README\.md|DEPLOY\.md|config\.example\.toml|copyright))$' || true)
[ -z "$unexpected" ] || fail "unexpected files in the package: $unexpected"
grep -qx /etc/gatehouse/config.toml /var/lib/dpkg/info/gatehouse.conffiles ||
  fail "/etc/gatehouse/config.toml is not a conffile"
cmp -s /etc/gatehouse/config.toml config.example.toml ||
  fail "/etc/gatehouse/config.toml is not the documented example"
[ "$(stat -c %a /usr/bin/gatehouse)" = 755 ] || fail "/usr/bin/gatehouse is not 0755"
echo "$(wc -l <<<"$files") paths, all expected"

step "installing created nothing secret and started nothing"
for dir in /var/lib/gatehouse /var/lib/private/gatehouse; do
  [ ! -e "$dir" ] || fail "install created $dir"
done
[ "$(find /etc/gatehouse -mindepth 1)" = /etc/gatehouse/config.toml ] ||
  fail "install put more than config.toml in /etc/gatehouse: $(find /etc/gatehouse -mindepth 1)"
# (The binary names these markers: it parses keys. Every other file is text.)
while read -r f; do
  [ -f "$f" ] && [ "$f" != /usr/bin/gatehouse ] || continue
  if zgrep -qaE 'PRIVATE KEY|AGE-SECRET-KEY' "$f"; then fail "$f holds a private key"; fi
done <<<"$files"
if pgrep -x gatehouse >/dev/null; then fail "installing started gatehouse"; fi
grep -q "not enabled" <<<"$install_log" ||
  fail "the install did not tell the administrator to edit the config first"

step "gatehouse --version"
out=$(gatehouse --version)
echo "$out"
grep -qx "gatehouse ${version%-*}" <<<"$(head -1 <<<"$out")" || fail "--version's first line is not 'gatehouse ${version%-*}'"
for crate in commit russh boringtun age aws-lc-rs ring; do
  grep -qE "^$crate: [0-9a-f.]+" <<<"$out" || fail "--version does not name $crate"
done

step "man -w gatehouse"
page=$(man -w gatehouse) || fail "man -w gatehouse found no page"
[ "$page" = /usr/share/man/man8/gatehouse.8.gz ] || fail "man -w gatehouse: $page"
man -w 8 gatehouse-sessions >/dev/null || fail "no gatehouse-sessions(8)"
rendered=$(MANWIDTH=80 man 8 gatehouse 2>/dev/null | col -b)
grep -q "gatehouse" <<<"$rendered" && grep -q "SUBCOMMANDS" <<<"$rendered" ||
  fail "gatehouse(8) does not render with its subcommands"

step "gatehouse check on the shipped config"
gatehouse check --config /etc/gatehouse/config.toml
gatehouse check >/dev/null || fail "gatehouse check (default path) failed"

step "the shipped config is not run until it is edited"
# It passes the check (with a warning), but its auditor key is the sample
# nobody holds: `gatehouse run` refuses before it binds or creates anything.
set +e
run_out=$(timeout 20 gatehouse run 2>&1)
run_rc=$?
set -e
echo "$run_out" | tail -2
[ "$run_rc" = 64 ] || fail "gatehouse run on the shipped config exited $run_rc, not 64"
grep -q "sample auditor key" <<<"$run_out" || fail "gatehouse run did not say why it refused"
for dir in /var/lib/gatehouse /var/lib/private/gatehouse; do
  [ ! -e "$dir" ] || fail "gatehouse run on the shipped config created $dir"
done

step "the completions parse"
bash -n /usr/share/bash-completion/completions/gatehouse || fail "bash completion does not parse"
if command -v zsh >/dev/null; then zsh -n /usr/share/zsh/vendor-completions/_gatehouse || fail "zsh completion"; fi
if command -v fish >/dev/null; then fish -n /usr/share/fish/vendor_completions.d/gatehouse.fish || fail "fish completion"; fi

step "an upgrade restarts a running gatehouse only if the new binary accepts the config"
# No systemd runs as PID 1 here: a systemctl that says gatehouse is active
# and a deb-systemd-invoke that logs what it was asked, first on PATH (apt
# gives dpkg and its maintainer scripts DPkg::Path). The next version is this
# package with its Version raised.
fake=$(mktemp -d)
export FAKE_LOG="$fake/log"
printf '#!/bin/sh\necho "systemctl $*" >>"$FAKE_LOG"\n' >"$fake/systemctl"
printf '#!/bin/sh\necho "deb-systemd-invoke $*" >>"$FAKE_LOG"\n' >"$fake/deb-systemd-invoke"
chmod 755 "$fake/systemctl" "$fake/deb-systemd-invoke"
next_version() {
  rm -rf "$fake/pkg"
  dpkg-deb -R "$deb" "$fake/pkg"
  sed -i "s/^Version: .*/Version: $1/" "$fake/pkg/DEBIAN/control"
  dpkg-deb -b "$fake/pkg" "$fake/next.deb" >/dev/null
}
upgrade() {
  : >"$FAKE_LOG"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    -o DPkg::Path="$fake:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    "$fake/next.deb" 2>&1
}
# 1. The shipped example (`gatehouse run` refuses its sample key): no restart.
next_version "${version}+up1"
up_log=$(upgrade) || { echo "$up_log"; fail "the upgrade failed"; }
grep -q "NOT restarted" <<<"$up_log" || { echo "$up_log"; cat "$FAKE_LOG"; fail "the upgrade did not say why it did not restart"; }
if grep -q "try-restart" "$FAKE_LOG"; then fail "the upgrade restarted gatehouse onto a config its binary refuses"; fi
# 2. An edited config the new binary accepts: restarted.
ssh-keygen -q -t ed25519 -N '' -C auditor@deb-test -f "$fake/auditor"
sed -i "s|^recipients = .*|recipients = [\"$(cut -d' ' -f1,2 "$fake/auditor.pub")\"]|" /etc/gatehouse/config.toml
gatehouse check >/dev/null 2>&1 || fail "the edited config does not pass gatehouse check"
next_version "${version}+up2"
up_log=$(upgrade) || { echo "$up_log"; fail "the upgrade failed"; }
grep -qx "deb-systemd-invoke try-restart gatehouse.service" "$FAKE_LOG" ||
  { echo "$up_log"; cat "$FAKE_LOG"; fail "the upgrade did not restart a running gatehouse"; }
[ "$(dpkg-query -W -f='${Version}' gatehouse)" = "${version}+up2" ] || fail "the upgrade did not install"
echo "refused config: not restarted; accepted config: try-restart"
rm -rf "$fake"

step "remove keeps the state directory and the config"
# What systemd's DynamicUser= leaves after a first start: the state in
# /var/lib/private/gatehouse, a link at /var/lib/gatehouse; and a credential.
mkdir -p /var/lib/private/gatehouse/recordings/r1 /var/lib/private/gatehouse/recordings/r2
chmod 0700 /var/lib/private /var/lib/private/gatehouse
echo key >/var/lib/private/gatehouse/master.key
echo seg >/var/lib/private/gatehouse/recordings/r1/000000.age
ln -s private/gatehouse /var/lib/gatehouse
echo cred >/etc/gatehouse/master-key.cred
echo "# edited" >>/etc/gatehouse/config.toml
remove_log=$(DEBIAN_FRONTEND=noninteractive apt-get remove -y -q gatehouse 2>&1) ||
  { echo "$remove_log"; fail "apt-get remove failed"; }
[ ! -e /usr/bin/gatehouse ] || fail "remove left /usr/bin/gatehouse"
[ -f /var/lib/gatehouse/master.key ] && [ -f /var/lib/gatehouse/recordings/r1/000000.age ] ||
  fail "remove deleted the state directory"
[ -f /etc/gatehouse/config.toml ] || fail "remove deleted the edited config"
echo "state and config kept"

step "purge says what it deletes, and deletes it"
purge_log=$(DEBIAN_FRONTEND=noninteractive apt-get purge -y -q gatehouse 2>&1) ||
  { echo "$purge_log"; fail "apt-get purge failed"; }
grep "gatehouse: purge" <<<"$purge_log"
grep -q "purge deletes /var/lib/private/gatehouse.* 2 recording" <<<"$purge_log" ||
  fail "purge did not say it deletes the state directory and its 2 recordings"
grep -q "purge deletes /etc/gatehouse:.*master-key.cred" <<<"$purge_log" ||
  fail "purge did not name the credential it deletes"
for p in /var/lib/private/gatehouse /var/lib/gatehouse /etc/gatehouse; do
  [ ! -e "$p" ] && [ ! -L "$p" ] || fail "purge left $p"
done
if dpkg-query -W gatehouse >/dev/null 2>&1 && dpkg-query -W -f='${Status}' gatehouse | grep -qv "not-installed"; then
  fail "dpkg still knows gatehouse after purge"
fi
trap - EXIT
step "package test passed"
