#!/usr/bin/env bash
# The Ansible role's test (deploy/ansible/roles/gatehouse), the way an
# operator runs it: Debian's ansible-core, `ansible-playbook -c local -i
# localhost,` against this machine (needs root: it installs the package).
#
#   GATEHOUSE_DEB=path/to/gatehouse.deb scripts/ansible-test.sh
#   scripts/ansible-test.sh      # builds one: scripts/build-deb.sh --profile dev --fast
#   ANSIBLE_TEST_LOGS=DIR ...    # keeps the playbook and daemon logs in DIR
#
# Steps: the first run installs the package and places the config; with
# gatehouse running (started here, as the unit would) a second run changes
# nothing and the daemon keeps its PID; a changed config is reloaded, not
# restarted (and `--check --diff` shows it first and changes nothing); a
# broken config (TOML syntax, then a role naming a missing target) fails the
# play, leaves the old file and reloads nothing; a valid file with a
# restart-only change is placed but its reload is refused: the role puts the
# previous file back and fails the play without a restart, and a rerun
# tries (and fails) again instead of going green; a package with a higher
# version is installed by the role without restarting the running daemon;
# the state directory's listing never changes. It refuses to run where
# gatehouse is installed or has state, and always purges what it installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

t0=$SECONDS
tstep=$SECONDS
step_name=
# Each step's header; the previous step's time ends it.
step() {
  if [ -n "$step_name" ]; then
    printf -- '     (%s: %ds)\n' "${step_name%%:*}" "$((SECONDS - tstep))"
  fi
  printf -- '---- ansible-test: %s (at %ds)\n' "$*" "$((SECONDS - t0))"
  step_name=$*
  tstep=$SECONDS
}
fail() { printf 'ansible-test FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (apt installs the package, /etc/gatehouse)"
for tool in ansible-playbook apt-get dpkg dpkg-deb dpkg-query flock python3 ssh ssh-keygen sha256sum; do
  command -v "$tool" >/dev/null || fail "$tool is missing (scripts/install-test-deps.sh installs ansible-core and openssh-client)"
done
ansible_version=$(ansible-playbook --version 2>&1 | sed -n 1p)
echo "ansible-test: $ansible_version"

# The role must not name the state directory (the property the brief asks
# for, checked on the source; the listing check below is the behaviour).
if grep -rnE 'var/lib|state_dir' deploy/ansible/roles/gatehouse; then
  fail "the role names the state directory (above)"
fi

if [ -n "${GATEHOUSE_DEB:-}" ]; then
  deb=$(readlink -f "$GATEHOUSE_DEB")
  [ -f "$deb" ] || fail "GATEHOUSE_DEB=$GATEHOUSE_DEB is not a file"
else
  step "build the package (scripts/build-deb.sh --profile dev --fast)"
  scripts/build-deb.sh --profile dev --fast
  deb=$(find target/debian -maxdepth 1 -name 'gatehouse_*.deb' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
  [ -n "$deb" ] || fail "scripts/build-deb.sh made no target/debian/gatehouse_*.deb"
  deb=$(readlink -f "$deb")
fi

# One package test at a time on this machine (scripts/deb-test.sh takes it too).
exec 9>/tmp/deb-test.lock
flock 9

if dpkg-query -W -f='${Status}' gatehouse 2>/dev/null | grep -qv "not-installed"; then
  fail "dpkg knows a gatehouse package here ($(dpkg-query -W -f='${Status}' gatehouse)); this test installs and purges it"
fi
for dir in /var/lib/gatehouse /var/lib/private/gatehouse /etc/gatehouse; do
  if [ -e "$dir" ] || [ -L "$dir" ]; then
    fail "$dir exists: a gatehouse installation lives here; the test would purge it"
  fi
done

tmp=$(mktemp -d /tmp/ansible-test.XXXXXX)
chmod 0755 "$tmp"
daemon_pid=
cleanup() {
  local rc=$?
  set +e
  if [ -n "$daemon_pid" ]; then
    kill "$daemon_pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$daemon_pid" 2>/dev/null
    wait "$daemon_pid" 2>/dev/null
  fi
  if [ "$rc" != 0 ] && [ -f "$tmp/daemon.log" ]; then
    echo "---- the daemon's last log lines:" >&2
    tail -20 "$tmp/daemon.log" >&2
  fi
  if dpkg-query -W gatehouse >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -q gatehouse >"$tmp/purge.log" 2>&1 ||
      { cat "$tmp/purge.log" >&2; echo "ansible-test: apt-get purge gatehouse failed" >&2; }
  fi
  if [ -n "${ANSIBLE_TEST_LOGS:-}" ]; then
    mkdir -p "$ANSIBLE_TEST_LOGS" && cp "$tmp"/*.log "$ANSIBLE_TEST_LOGS"/ 2>/dev/null
  fi
  rm -rf "$tmp"
  printf -- '---- ansible-test: cleaned up (total %ds)\n' "$((SECONDS - t0))"
  return "$rc"
}
trap cleanup EXIT

# --- the configs: config.example.toml on loopback, state and socket in $tmp
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
state="$tmp/state"
mkdir -m 0700 "$state"
mkdir -m 0755 "$tmp/run" "$tmp/configs"
cfg="$tmp/configs"
# The example's sample auditor key is refused by `gatehouse run`: an
# auditor key of the test's own.
ssh-keygen -q -t ed25519 -N '' -C auditor@ansible-test -f "$tmp/auditor"
python3 - "$repo/config.example.toml" "$cfg/v1.toml" "$state" "$port" "$tmp/run/control.sock" "$(cut -d' ' -f1,2 "$tmp/auditor.pub")" <<'PY'
import re, sys
src, dst, state, port, sock, auditor = sys.argv[1:]
text = open(src).read()
sample = re.search(r'^recipients = \["(ssh-ed25519 [A-Za-z0-9+/=]+) auditor@ops"\]$', text, re.M)
if not sample:
    sys.exit("config.example.toml no longer has its sample `recipients` line")
text = text.replace(sample.group(0), f'recipients = ["{auditor}"]')
for old, new in [
    ('state_dir = "/var/lib/gatehouse"', f'state_dir = "{state}"'),
    ('ssh_listen = ["0.0.0.0:2222"]', f'ssh_listen = ["127.0.0.1:{port}"]'),
    ('# socket = "/run/gatehouse/control.sock"', f'socket = "{sock}"'),
]:
    if text.count(old) != 1:
        sys.exit(f"config.example.toml no longer has exactly one `{old}`")
    text = text.replace(old, new)
open(dst, "w").write(text)
PY
ssh-keygen -q -t ed25519 -N '' -C bob@ansible-test -f "$tmp/bob"
cp "$cfg/v1.toml" "$cfg/v2.toml"
printf '\n[[users]]\nname = "bob"\nroles = ["web-deploy"]\nssh_keys = ["%s"]\n' "$(cat "$tmp/bob.pub")" >>"$cfg/v2.toml"
cp "$cfg/v2.toml" "$cfg/bad-syntax.toml"
printf '\n[[users]]\nname = "carol"\nroles = = ["web-deploy"]\n' >>"$cfg/bad-syntax.toml"
cp "$cfg/v2.toml" "$cfg/bad-target.toml"
printf '\n[[roles]]\nname = "ghost"\ntargets = { names = ["no-such-target"] }\nlogins = ["deploy"]\n' >>"$cfg/bad-target.toml"
# A restart-only field changed (config.example.toml marks them "(restart)"):
# valid, so it is placed, but the daemon refuses to reload it.
sed 's/^max_connections = 1024$/max_connections = 1000/' "$cfg/v2.toml" >"$cfg/restart-only.toml"
cmp -s "$cfg/v2.toml" "$cfg/restart-only.toml" && fail "config.example.toml has no 'max_connections = 1024' line to change"
# Each good config must pass and each bad one fail `gatehouse check`, or the
# test below proves nothing: that is checked after the install, with the
# installed binary.

# --- helpers
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 ANSIBLE_RETRY_FILES_ENABLED=0
export ANSIBLE_LOCAL_TEMP="$tmp/ansible-local" ANSIBLE_REMOTE_TEMP="$tmp/ansible-remote"
export ANSIBLE_HOME="$tmp/ansible-home" ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3
run_no=0
play_rc=0
play_changed=
play_failed=
# play NAME CONFIG [ARGS]: one ansible-playbook run with that config as
# gatehouse_config_src and $play_deb (default: $deb) as gatehouse_deb; its
# log in $tmp/NAME.log; sets play_rc, play_changed and play_failed from
# PLAY RECAP.
play_deb=
play() {
  local name=$1 config=$2 recap
  shift 2
  run_no=$((run_no + 1))
  play_rc=0
  ansible-playbook -c local -i localhost, deploy/ansible/tests/test.yml \
    -e "gatehouse_config_src=$config" -e "gatehouse_deb=${play_deb:-$deb}" \
    -e "gatehouse_deb_cache_dir=$tmp/deb-cache" "$@" >"$tmp/$name.log" 2>&1 || play_rc=$?
  recap=$(grep -E '^localhost +: ok=' "$tmp/$name.log" || true)
  if [ -z "$recap" ]; then
    cat "$tmp/$name.log" >&2
    fail "run $run_no ($name): no PLAY RECAP line (ansible-playbook exit $play_rc)"
  fi
  play_changed=$(sed -E 's/.* changed=([0-9]+).*/\1/' <<<"$recap")
  play_failed=$(sed -E 's/.* failed=([0-9]+).*/\1/' <<<"$recap")
  echo "run $run_no ($name): exit $play_rc; $recap"
}
# ran_ok: the last run exited 0 and its recap says failed=0.
ran_ok() { [ "$play_rc" = 0 ] && [ "$play_failed" = 0 ]; }
show_log() { echo "---- $1.log:" >&2; cat "$tmp/$1.log" >&2; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
# The state directory: every path with its type, mode and owner, once no
# atomic write (NAME.tmpPID.N, then rename) is under way: two equal reads
# 0.2 s apart (at most 5 s).
listing() {
  local a b
  a=$(find "$1" -printf '%P %y %m %u:%g\n' | sort)
  for _ in $(seq 1 25); do
    sleep 0.2
    b=$(find "$1" -printf '%P %y %m %u:%g\n' | sort)
    if [ "$a" = "$b" ] && ! grep -q '\.tmp[0-9]' <<<"$b"; then break; fi
    a=$b
  done
  echo "$b"
}
same_listing() {
  local now
  now=$(listing "$state")
  [ "$now" = "$1" ] || fail "$2 changed the state directory's listing:
$(diff <(echo "$1") <(echo "$now"))"
}
no_package_state() {
  local dir
  for dir in /var/lib/gatehouse /var/lib/private/gatehouse; do
    if [ -e "$dir" ] || [ -L "$dir" ]; then fail "$1 created $dir"; fi
  done
}
# /etc/gatehouse holds config.toml only: the copy's backup of the previous
# file is gone once the reload handler has its answer.
only_config() {
  local names
  names=$(find /etc/gatehouse -mindepth 1 -printf '%P\n' | sort)
  [ "$names" = config.toml ] || fail "$1 left files in /etc/gatehouse: $(tr '\n' ' ' <<<"$names")"
}
reload_events() { grep -cE '"event":"config\.reload(_failed)?"' "$tmp/daemon.log" || true; }
# bob's key at the SSH publickey step: "partial" (known: a code is asked
# next) or "refused". BatchMode: no prompt, so the login never completes.
bob_publickey() {
  local out
  out=$(timeout 20 ssh -v -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile="$tmp/bob" \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 \
    -p "$port" bob@127.0.0.1 true 2>&1 || true)
  if grep -q 'Authenticated using "publickey" with partial success' <<<"$out"; then
    echo partial
  elif grep -q 'Permission denied (publickey)' <<<"$out"; then
    echo refused
  else
    echo "unexpected ssh output: $(grep -iE 'denied|refused|closed|error' <<<"$out" | head -3)"
  fi
}

# --- a. the first run installs the package and places the config
step "a. first run: installs $deb and places the config"
listing_before=$(listing "$state")
play first "$cfg/v1.toml"
ran_ok || { show_log first; fail "the first run failed"; }
[ "$play_changed" -gt 0 ] || { show_log first; fail "the first run reports changed=0"; }
dpkg-query -W -f='${Status}' gatehouse | grep -q "install ok installed" ||
  fail "after the first run dpkg -s gatehouse is not 'install ok installed'"
cmp -s "$cfg/v1.toml" /etc/gatehouse/config.toml ||
  fail "/etc/gatehouse/config.toml is not the config the play was given"
[ "$(stat -c '%a %U:%G' /etc/gatehouse/config.toml)" = "644 root:root" ] ||
  fail "/etc/gatehouse/config.toml is $(stat -c '%a %U:%G' /etc/gatehouse/config.toml), not 644 root:root"
grep -q "gatehouse is not running" "$tmp/first.log" ||
  { show_log first; fail "the first run's reload handler did not say that no gatehouse was running"; }
same_listing "$listing_before" "the first run"
only_config "the first run (over the package's example)"
no_package_state "the first run"
for good in v1 v2 restart-only; do
  /usr/bin/gatehouse check --config "$cfg/$good.toml" >/dev/null || fail "$good.toml does not pass gatehouse check"
done
for bad in bad-syntax bad-target; do
  if /usr/bin/gatehouse check --config "$cfg/$bad.toml" >/dev/null 2>&1; then
    fail "$bad.toml passes gatehouse check: the broken-config steps would prove nothing"
  fi
done

# --- b. gatehouse runs; a second run changes nothing
step "b. start gatehouse run --config /etc/gatehouse/config.toml (as the unit would)"
/usr/bin/gatehouse run --config /etc/gatehouse/config.toml 2>"$tmp/daemon.log" &
daemon_pid=$!
up=
for _ in $(seq 1 100); do
  kill -0 "$daemon_pid" 2>/dev/null || fail "gatehouse run exited: $(tail -5 "$tmp/daemon.log")"
  if /usr/bin/gatehouse sessions --config /etc/gatehouse/config.toml >/dev/null 2>&1; then up=1; break; fi
  sleep 0.1
done
[ -n "$up" ] || fail "gatehouse's control socket did not answer within 10 s"
echo "gatehouse runs, pid $daemon_pid"
[ "$(bob_publickey)" = refused ] || fail "before bob is configured, his key is not refused at publickey: $(bob_publickey)"
state_listing=$(listing "$state")
[ -n "$state_listing" ] || fail "the daemon made nothing in its state directory"
echo "state directory: $(wc -l <<<"$state_listing") paths (compared after every later run)"

step "b. second run with the same config: idempotent"
play second "$cfg/v1.toml"
ran_ok || { show_log second; fail "the second run failed"; }
[ "$play_changed" = 0 ] || { show_log second; fail "the second run is not idempotent: changed=$play_changed"; }
kill -0 "$daemon_pid" 2>/dev/null || fail "gatehouse (pid $daemon_pid) is gone after the second run"
[ "$(reload_events)" = 0 ] || fail "the second run reloaded gatehouse"
same_listing "$state_listing" "the second run"

# --- --check --diff: how an operator previews a change; it changes nothing
step "c. --check --diff with one more user: shows the change, makes none"
play preview "$cfg/v2.toml" --check --diff
ran_ok || { show_log preview; fail "the --check --diff run failed"; }
[ "$play_changed" -gt 0 ] || { show_log preview; fail "--check does not report the config change"; }
grep -q '^+name = "bob"' "$tmp/preview.log" || { show_log preview; fail "--diff does not show the new user"; }
cmp -s "$cfg/v1.toml" /etc/gatehouse/config.toml || fail "--check changed the config on disk"
kill -0 "$daemon_pid" 2>/dev/null || fail "gatehouse (pid $daemon_pid) is gone after --check"
[ "$(reload_events)" = 0 ] || fail "--check reloaded gatehouse"
same_listing "$state_listing" "the --check run"

# --- c. a changed valid config is reloaded, not restarted
step "c. run with one more user: the file changes and gatehouse reloads"
play changed "$cfg/v2.toml"
ran_ok || { show_log changed; fail "the run with a changed config failed"; }
[ "$play_changed" -gt 0 ] || { show_log changed; fail "the run with a changed config reports changed=0"; }
cmp -s "$cfg/v2.toml" /etc/gatehouse/config.toml || fail "the changed config was not placed"
kill -0 "$daemon_pid" 2>/dev/null || fail "gatehouse (pid $daemon_pid) is gone: the change restarted or killed it"
[ "$(grep -c '"message":"control socket ready"' "$tmp/daemon.log")" = 1 ] ||
  fail "the daemon's log shows a second start"
grep -q 'RUNNING HANDLER \[.*Reload gatehouse' "$tmp/changed.log" || { show_log changed; fail "the reload handler did not run"; }
[ "$(reload_events)" = 1 ] || fail "expected one reload event in the daemon's log, found $(reload_events)"
grep '"event":"config.reload"' "$tmp/daemon.log" | grep -q '"users":2' ||
  fail "the daemon's config.reload event does not say 2 users: $(grep '"event":"config.reload' "$tmp/daemon.log")"
[ "$(bob_publickey)" = partial ] || fail "after the reload bob's key does not get past publickey: $(bob_publickey)"
echo "same pid $daemon_pid; config.reload with 2 users; bob's key now passes publickey"
same_listing "$state_listing" "the run with a changed config"
only_config "the run with a changed config"

# --- d. broken configs are refused; the old file and config stay
for bad in bad-syntax bad-target; do
  step "d. run with a broken config ($bad): the play fails, nothing changes"
  before=$(sha /etc/gatehouse/config.toml)
  events=$(reload_events)
  play "$bad" "$cfg/$bad.toml"
  if [ "$play_rc" = 0 ] || [ "$play_failed" = 0 ]; then show_log "$bad"; fail "the run with $bad.toml did not fail"; fi
  grep -q "failed to validate" "$tmp/$bad.log" || { show_log "$bad"; fail "the $bad run did not fail at validate (gatehouse check)"; }
  [ "$(sha /etc/gatehouse/config.toml)" = "$before" ] || fail "$bad.toml replaced the config on disk"
  cmp -s "$cfg/v2.toml" /etc/gatehouse/config.toml || fail "the config on disk is not the previous one after $bad"
  kill -0 "$daemon_pid" 2>/dev/null || fail "gatehouse (pid $daemon_pid) is gone after the $bad run"
  [ "$(reload_events)" = "$events" ] || fail "the $bad run reloaded gatehouse"
  same_listing "$state_listing" "the $bad run"
  only_config "the $bad run"
  echo "refused at validate: $(grep -m1 -oE '(TOML syntax error|no target named)[^"\\]*' "$tmp/$bad.log" | head -1)"
done
[ "$(bob_publickey)" = partial ] || fail "after the refused runs the config in force changed"

# --- d. a valid file the daemon cannot take without a restart: placed, the
# reload refused (exit 64), the role puts the previous file back and fails
# the play; no restart, the old config serves, and the file on disk is it
v2_sha=$(sha "$cfg/v2.toml")
for try in 1 2; do
  step "d. run with a restart-only change (try $try): reload refused, previous file back, the play fails, no restart"
  events=$(reload_events)
  play "restart-only-$try" "$cfg/restart-only.toml"
  if [ "$play_rc" = 0 ] || [ "$play_failed" = 0 ]; then
    show_log "restart-only-$try"
    fail "the run with a refused reload did not fail (try $try: a rerun must try again, not go green)"
  fi
  [ "$play_changed" -gt 0 ] || { show_log "restart-only-$try"; fail "try $try placed nothing: the refused file was not copied again"; }
  grep -q 'RUNNING HANDLER \[.*Put the previous config back' "$tmp/restart-only-$try.log" ||
    { show_log "restart-only-$try"; fail "try $try: the restore handler did not run"; }
  grep -q 'gatehouse reload --config /etc/gatehouse/config.toml exited 64' "$tmp/restart-only-$try.log" ||
    { show_log "restart-only-$try"; fail "try $try: the play did not fail with gatehouse reload's exit 64"; }
  grep -q 'max_connections' "$tmp/restart-only-$try.log" ||
    { show_log "restart-only-$try"; fail "try $try: the failure does not carry gatehouse's reason (max_connections)"; }
  [ "$(sha /etc/gatehouse/config.toml)" = "$v2_sha" ] ||
    fail "try $try: the file on disk is not the previous config (v2) again: $(grep -m1 '^max_connections' /etc/gatehouse/config.toml)"
  [ "$(stat -c '%a %U:%G' /etc/gatehouse/config.toml)" = "644 root:root" ] ||
    fail "try $try: the restored file is $(stat -c '%a %U:%G' /etc/gatehouse/config.toml), not 644 root:root"
  only_config "the restart-only run (try $try)"
  kill -0 "$daemon_pid" 2>/dev/null || fail "gatehouse (pid $daemon_pid) is gone: the role restarted or killed it"
  [ "$(reload_events)" = $((events + 1)) ] || fail "try $try: expected one more reload event, found $(reload_events) after $events"
  [ "$(grep '"event":"config.reload_failed"' "$tmp/daemon.log" | grep -c '"reason":"restart_required"')" = "$try" ] ||
    fail "the daemon did not log config.reload_failed restart_required for try $try"
  [ "$(grep -c '"message":"control socket ready"' "$tmp/daemon.log")" = 1 ] || fail "the daemon's log shows a second start"
  /usr/bin/gatehouse reload --config /etc/gatehouse/config.toml >/dev/null 2>&1 ||
    fail "try $try: gatehouse refuses to reload the file on disk: it is not the config in force"
  same_listing "$state_listing" "the restart-only run (try $try)"
  echo "refused, v2 back on disk: $(grep -m1 -oE 'max_connections[^"\\]*' "$tmp/restart-only-$try.log" | head -1)"
done
[ "$(bob_publickey)" = partial ] || fail "after the refused reloads the config in force changed"

# --- e. a package with a higher version (a new commit's build) is installed;
# the role does not restart the running daemon
step "e. run with a package of a higher version: installed, gatehouse not restarted"
old_version=$(dpkg-query -W -f='${Version}' gatehouse)
new_version="$old_version+test2"
dpkg --compare-versions "$new_version" gt "$old_version" || fail "$new_version is not above $old_version"
dpkg-deb -R "$deb" "$tmp/repack"
sed -i "s/^Version: .*/Version: $new_version/" "$tmp/repack/DEBIAN/control"
grep -qx "Version: $new_version" "$tmp/repack/DEBIAN/control" || fail "the repacked control file has no Version: $new_version"
deb2="$tmp/gatehouse_${new_version}_amd64.deb"
# gzip -1: the same contents, built in 0.3 s instead of xz's 12 s.
dpkg-deb -Zgzip -z1 -b "$tmp/repack" "$deb2" >/dev/null
rm -rf "$tmp/repack"
config_sha=$(sha /etc/gatehouse/config.toml)
events=$(reload_events)
play_deb=$deb2
play upgrade "$cfg/v2.toml"
play_deb=
ran_ok || { show_log upgrade; fail "the run with a package of a higher version failed"; }
[ "$play_changed" -gt 0 ] || { show_log upgrade; fail "the run with a package of a higher version reports changed=0"; }
[ "$(dpkg-query -W -f='${Version}' gatehouse)" = "$new_version" ] ||
  fail "the role did not install $new_version (installed: $(dpkg-query -W -f='${Version}' gatehouse))"
[ "$(sha /etc/gatehouse/config.toml)" = "$config_sha" ] || fail "the upgrade changed /etc/gatehouse/config.toml"
kill -0 "$daemon_pid" 2>/dev/null || fail "gatehouse (pid $daemon_pid) is gone after the upgrade run"
[ "$(grep -c '"message":"control socket ready"' "$tmp/daemon.log")" = 1 ] || fail "the daemon's log shows a second start"
[ "$(reload_events)" = "$events" ] || fail "the upgrade run reloaded gatehouse (its config did not change)"
same_listing "$state_listing" "the upgrade run"
echo "installed $old_version -> $new_version; same pid $daemon_pid, no reload, no restart"
play_deb=$deb2
play upgrade-again "$cfg/v2.toml"
play_deb=
ran_ok || { show_log upgrade-again; fail "the rerun with the same package failed"; }
[ "$play_changed" = 0 ] || { show_log upgrade-again; fail "the rerun with the same package is not idempotent: changed=$play_changed"; }

step "f. the state directory"
no_package_state "the role"
same_listing "$state_listing" "the role"
echo "its listing ($(wc -l <<<"$state_listing") paths: names, types, modes, owners) was the same after every run;"
echo "/var/lib/gatehouse and /var/lib/private/gatehouse never appeared; the role names no state path"
step "ansible role test passed"
