#!/usr/bin/env bash
# Installs the external programs the integration tests drive (real peers:
# sshd, ssh/scp/sftp, oathtool, rsync, ssh-audit, age, asciinema, WireGuard,
# PostgreSQL, MariaDB, sysbench), the MySQL drivers the tests speak through
# (mysql-connector-python and PyMySQL from PyPI, mysql2 from npm, MariaDB
# Connector/J from Debian with a JDK to compile the test's Java client),
# the Prometheus text parser (python3-prometheus-client, tests/metrics.rs),
# and Debian's ansible-core (scripts/ansible-test.sh tests deploy/ansible).
# Idempotent: apt is only touched when something is missing, and then
# `apt-get update` runs once. Debian/Ubuntu only.
set -euo pipefail

# One entry per Debian package: "package:check[,check...]". A check is a
# command looked up on PATH (and in the sbin dirs) or an absolute path (globs
# allowed). Extend here, e.g.:
#   "postgresql:/usr/lib/postgresql/*/bin/postgres,psql"
#   "mariadb-server:mariadbd"
#   "mariadb-client:mariadb"
DEPS=(
  "openssh-server:/usr/sbin/sshd,/usr/lib/openssh/sftp-server"
  "openssh-client:ssh,scp,sftp,ssh-keygen"
  "oathtool:oathtool"
  "rsync:rsync"
  "ssh-audit:ssh-audit"
  "age:age,age-keygen"
  "asciinema:asciinema"
  "wireguard-tools:wg"
  "wireguard-go:wireguard-go"
  "iproute2:ip"
  "nftables:nft"
  "procps:ps,/usr/bin/kill"
  "tmux:tmux"
  "coreutils:sha256sum,timeout"
  "iputils-ping:ping"
  "python3-paramiko:/usr/bin/python3,/usr/lib/python3/dist-packages/paramiko/__init__.py"
  "python3-prometheus-client:/usr/lib/python3/dist-packages/prometheus_client/parser.py"
  "postgresql:/usr/lib/postgresql/*/bin/postgres,/usr/lib/postgresql/*/bin/initdb,/usr/lib/postgresql/*/bin/pg_ctl"
  "postgresql-client:psql"
  "postgresql-contrib:/usr/lib/postgresql/*/bin/pgbench"
  "pgbouncer:pgbouncer"
  "openssl:openssl"
  "util-linux:runuser,setpriv"
  "systemd:systemd-analyze"
  "man-db:man"
  "zsh:zsh"
  "fish:fish"
  "ansible-core:ansible-playbook"
  "mariadb-server:/usr/sbin/mariadbd,/usr/bin/mariadb-install-db"
  "mariadb-client:mariadb"
  "sysbench:sysbench"
  "libmariadb-java:/usr/share/java/mariadb-java-client.jar"
  "default-jdk-headless:java,javac"
  "nodejs:node"
  "npm:npm"
)

# PyPI packages for the `python3` first on PATH (the one the tests run), as
# "package:module": installed with `python3 -m pip` only when the module
# does not import. mysql-connector-python's pure-Python protocol
# (`use_pure=True`, `cursor(prepared=True)`) sends COM_STMT_PREPARE/EXECUTE
# with typed binary parameters and COM_CHANGE_USER (tests/db_mysql.rs).
PIP_DEPS=(
  "mysql-connector-python:mysql.connector"
  "PyMySQL:pymysql"
)

# npm packages, installed (only when missing) into target/test-deps/node,
# where tests/db_mysql_drivers.rs looks for them.
NPM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/test-deps/node"
NPM_DEPS=(mysql2)

have() {
  local check=$1 dir
  if [[ $check == /* ]]; then
    compgen -G "$check" >/dev/null
    return
  fi
  type -P "$check" >/dev/null 2>&1 && return 0
  for dir in /usr/local/sbin /usr/sbin /sbin; do
    [[ -x $dir/$check ]] && return 0
  done
  return 1
}

missing_packages() {
  local entry pkg checks check
  for entry in "${DEPS[@]}"; do
    pkg=${entry%%:*}
    IFS=, read -r -a checks <<<"${entry#*:}"
    for check in "${checks[@]}"; do
      if ! have "$check"; then
        echo "$pkg"
        break
      fi
    done
  done
}

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  fi
fi

mapfile -t MISSING < <(missing_packages)
if ((${#MISSING[@]})); then
  echo "install-test-deps: installing ${MISSING[*]}"
  if [[ $(id -u) -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
    echo "install-test-deps: need root (or sudo) to install: ${MISSING[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${MISSING[@]}"
  mapfile -t STILL < <(missing_packages)
  if ((${#STILL[@]})); then
    echo "install-test-deps: still missing after install: ${STILL[*]}" >&2
    exit 1
  fi
else
  echo "install-test-deps: all test tools present"
fi

missing_pip() {
  local entry
  for entry in "${PIP_DEPS[@]}"; do
    python3 -c "import ${entry#*:}" >/dev/null 2>&1 || echo "${entry%%:*}"
  done
}

if ! command -v python3 >/dev/null 2>&1; then
  echo "install-test-deps: no python3 on PATH for ${PIP_DEPS[*]}" >&2
  exit 1
fi
mapfile -t PIP_MISSING < <(missing_pip)
if ((${#PIP_MISSING[@]})); then
  echo "install-test-deps: pip installing ${PIP_MISSING[*]} for $(command -v python3)"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    python3 -m ensurepip --upgrade >/dev/null 2>&1 || {
      echo "install-test-deps: python3 has no pip (install python3-pip)" >&2
      exit 1
    }
  fi
  # A Debian python3 is "externally managed" (PEP 668): install for this
  # user there rather than into the system's site-packages.
  if ! python3 -m pip install --quiet --disable-pip-version-check "${PIP_MISSING[@]}"; then
    python3 -m pip install --quiet --disable-pip-version-check --user \
      --break-system-packages "${PIP_MISSING[@]}"
  fi
  mapfile -t PIP_STILL < <(missing_pip)
  if ((${#PIP_STILL[@]})); then
    echo "install-test-deps: still missing after pip install: ${PIP_STILL[*]}" >&2
    exit 1
  fi
fi

for pkg in "${NPM_DEPS[@]}"; do
  if [[ ! -d $NPM_DIR/node_modules/$pkg ]]; then
    echo "install-test-deps: npm installing $pkg into $NPM_DIR"
    mkdir -p "$NPM_DIR"
    npm install --prefix "$NPM_DIR" --no-audit --no-fund --silent "$pkg"
  fi
done

# sshd's privilege separation directory (tmpfs on most systems, so it may be
# gone after a reboot even when openssh-server is installed).
if [[ ! -d /run/sshd ]]; then
  "${SUDO[@]}" mkdir -p /run/sshd
  "${SUDO[@]}" chmod 0755 /run/sshd
fi
