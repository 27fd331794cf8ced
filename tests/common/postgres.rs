//! A real PostgreSQL server for tests: a cluster made by `initdb` in a temp
//! dir, TLS from a CA the harness makes with `openssl`, SCRAM logins, on a
//! free loopback port; stopped (`pg_ctl stop -m immediate`) on drop.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the
//! cluster belongs to the OS user `gatehouse-test` (created here if missing,
//! `useradd -r -M -s /usr/sbin/nologin`) and `initdb`/`pg_ctl` run through
//! `runuser -u gatehouse-test --`. As any other user they run directly.
//!
//! ```ignore
//! if !pg_available() { return; }
//! let pg = PgServer::start(PgOptions::default());
//! pg.create_role("app_ro", "app-ro-pw");
//! pg.create_database("app", "app_ro");
//! assert_eq!(pg.psql("app", "select 1"), "1");
//! // pg.port, pg.ca_pem (signed the server cert: SAN IP:127.0.0.1, DNS:localhost),
//! // pg.wrong_ca_pem (an unrelated CA), pg.log()
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;

use super::util::{find_tool, free_port, require_tools, run_with_timeout};

/// The unprivileged OS user that owns test clusters when tests run as root.
pub const PG_OS_USER: &str = "gatehouse-test";
/// The cluster's superuser role.
pub const PG_SUPERUSER: &str = "postgres";

/// The newest `/usr/lib/postgresql/N/bin` holding `initdb` and `pg_ctl`.
pub fn pg_bindir() -> Option<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let Some(version) = entry
            .file_name()
            .to_str()
            .and_then(|v| v.parse::<u32>().ok())
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("initdb").exists()
            && bin.join("pg_ctl").exists()
            && best.as_ref().is_none_or(|(v, _)| version > *v)
        {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

/// True when everything the harness needs is installed. Otherwise: under
/// `CI=true` this panics naming what is missing; elsewhere it prints
/// `skipping: ...` and returns false so the test can `return`.
pub fn pg_available() -> bool {
    let bin = pg_bindir().unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    let initdb = bin.join("initdb");
    let pg_ctl = bin.join("pg_ctl");
    let psql = bin.join("psql");
    let mut tools = vec![
        initdb.to_str().unwrap_or("initdb"),
        pg_ctl.to_str().unwrap_or("pg_ctl"),
        psql.to_str().unwrap_or("psql"),
        "openssl",
    ];
    if is_root() {
        tools.extend(["runuser", "useradd"]);
    }
    require_tools(&tools)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// How the server authenticates TCP clients (`pg_hba.conf`).
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Lines placed before the defaults in pg_hba.conf (first match wins).
    pub hba_first: Vec<String>,
    /// Also accept connections without TLS (`host ... scram-sha-256`).
    /// Without it only `hostssl` lines exist.
    pub plain_host: bool,
    /// Extra postgresql.conf lines.
    pub conf: Vec<String>,
}

impl PgOptions {
    /// `user` logs in with MD5 (`hostssl`, and `host` with `plain_host`);
    /// create it with [`PgServer::create_role_md5`].
    pub fn md5_user(mut self, user: &str) -> Self {
        self.hba_first
            .push(format!("hostssl all {user} 127.0.0.1/32 md5"));
        self.hba_first
            .push(format!("host    all {user} 127.0.0.1/32 md5"));
        self
    }

    /// `user` logs in with a cleartext password (`password` method).
    pub fn cleartext_user(mut self, user: &str) -> Self {
        self.hba_first
            .push(format!("hostssl all {user} 127.0.0.1/32 password"));
        self.hba_first
            .push(format!("host    all {user} 127.0.0.1/32 password"));
        self
    }

    pub fn plain_host(mut self) -> Self {
        self.plain_host = true;
        self
    }
}

/// A running cluster; stopped on drop.
pub struct PgServer {
    pub port: u16,
    /// The CA that signed the server's certificate (SAN IP:127.0.0.1,
    /// DNS:localhost): what a target's `tls_ca` pins.
    pub ca_pem: PathBuf,
    /// An unrelated CA, for certificate mismatch tests.
    pub wrong_ca_pem: PathBuf,
    /// The superuser's password (role [`PG_SUPERUSER`]).
    pub superuser_password: String,
    bin: PathBuf,
    data: PathBuf,
    as_user: bool,
    running: bool,
    dir: TempDir,
}

/// Serialises `useradd` between tests of one binary.
static USERADD: Mutex<()> = Mutex::new(());

impl PgServer {
    /// Makes the cluster, certificates and config, and starts the server.
    /// Panics with the server's log when it does not come up.
    pub fn start(opts: PgOptions) -> PgServer {
        let bin = pg_bindir().expect("no /usr/lib/postgresql/*/bin with initdb (pg_available()?)");
        let as_user = is_root();
        if as_user {
            ensure_os_user();
        }
        let dir = tempfile::Builder::new()
            .prefix("gh-pg-")
            .tempdir()
            .expect("postgres temp dir");
        let root = dir.path().to_path_buf();
        let superuser_password = format!("gh-super-{}", std::process::id());
        std::fs::write(root.join("pwfile"), format!("{superuser_password}\n"))
            .expect("write pwfile");
        make_certificates(&root);
        std::fs::create_dir(root.join("sock")).expect("socket dir");
        let mut pg = PgServer {
            port: 0,
            ca_pem: root.join("ca.pem"),
            wrong_ca_pem: root.join("wrong-ca.pem"),
            superuser_password,
            bin,
            data: root.join("data"),
            as_user,
            running: false,
            dir,
        };
        pg.chown_all();
        let out = pg.run_as_owner(
            &pg.bin.join("initdb"),
            &[
                "-D",
                pg.data.to_str().expect("utf-8 temp path"),
                "-U",
                PG_SUPERUSER,
                "--auth=scram-sha-256",
                "--pwfile",
                root.join("pwfile").to_str().expect("utf-8 temp path"),
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        pg.write_hba(&opts);
        let mut last = String::new();
        for _attempt in 0..3 {
            pg.port = free_port();
            pg.write_conf(&opts);
            match pg.pg_ctl_start() {
                Ok(()) => return pg,
                Err(log) if log.contains("could not bind") || log.contains("in use") => last = log,
                Err(log) => panic!("postgres did not start:\n{log}"),
            }
        }
        panic!("postgres could not bind a free port:\n{last}");
    }

    /// The temp dir holding data, certificates and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's log (connections are logged).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// A libpq connection string for `user`/`dbname` over TLS verified
    /// against [`PgServer::ca_pem`] (give the password in `PGPASSWORD`).
    pub fn conninfo(&self, user: &str, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={dbname} sslmode=verify-full sslrootcert={}",
            self.port,
            self.ca_pem.display()
        )
    }

    /// Runs `sql` in `dbname` as the superuser (TLS, password), returns the
    /// raw output. stdin is closed.
    pub fn psql_output(&self, dbname: &str, sql: &str) -> Output {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.arg(format!(
            "host=127.0.0.1 port={} user={PG_SUPERUSER} dbname={dbname} sslmode=require sslrootcert={}",
            self.port,
            self.ca_pem.display()
        ))
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", &self.superuser_password)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
        run_with_timeout(&mut cmd, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("psql timed out: {sql}"))
    }

    /// Like [`PgServer::psql_output`]; panics on failure and returns stdout
    /// without its trailing newline.
    pub fn psql(&self, dbname: &str, sql: &str) -> String {
        let out = self.psql_output(dbname, sql);
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Creates a login role with `password` stored as SCRAM-SHA-256.
    pub fn create_role(&self, name: &str, password: &str) {
        self.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256'; CREATE ROLE {} LOGIN PASSWORD {}",
                ident(name),
                literal(password)
            ),
        );
    }

    /// Creates a login role with `password` stored as MD5 (for an `md5` hba
    /// line: a SCRAM-stored password would make the server use SCRAM).
    pub fn create_role_md5(&self, name: &str, password: &str) {
        self.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'md5'; CREATE ROLE {} LOGIN PASSWORD {}",
                ident(name),
                literal(password)
            ),
        );
    }

    /// Creates database `name` owned by `owner`.
    pub fn create_database(&self, name: &str, owner: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {} OWNER {}", ident(name), ident(owner)),
        );
    }

    /// Stops the server now (`pg_ctl stop -m immediate`).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let data = self.data.to_str().unwrap_or_default().to_string();
        let out = self.run_as_owner(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "stop", "-m", "immediate", "-w", "-t", "20"],
        );
        if !out.status.success() {
            // Last resort: kill the postmaster named in postmaster.pid.
            if let Some(pid) = std::fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i64>().ok()))
            {
                super::util::send_signal(&[pid], "KILL");
            }
        }
    }

    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let data = self.data.to_str().expect("utf-8 temp path").to_string();
        let log = self.dir.path().join("postgres.log");
        let log = log.to_str().expect("utf-8 temp path").to_string();
        let out = self.run_as_owner(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
        );
        if out.status.success() {
            self.running = true;
            return Ok(());
        }
        Err(format!(
            "{}{}\n--- postgres.log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        ))
    }

    fn write_conf(&self, opts: &PgOptions) {
        let root = self.dir.path();
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {}", self.port),
            format!(
                "unix_socket_directories = '{}'",
                root.join("sock").display()
            ),
            "ssl = on".to_string(),
            format!("ssl_cert_file = '{}'", root.join("server.crt").display()),
            format!("ssl_key_file = '{}'", root.join("server.key").display()),
            "password_encryption = 'scram-sha-256'".to_string(),
            "fsync = off".to_string(),
            "synchronous_commit = off".to_string(),
            "full_page_writes = off".to_string(),
            "shared_buffers = 16MB".to_string(),
            "max_connections = 40".to_string(),
            "dynamic_shared_memory_type = mmap".to_string(),
            "log_connections = on".to_string(),
            "log_disconnections = on".to_string(),
        ];
        conf.extend(opts.conf.iter().cloned());
        let path = self.data.join("gatehouse-test.conf");
        std::fs::write(&path, conf.join("\n") + "\n").expect("write gatehouse-test.conf");
        let main = self.data.join("postgresql.conf");
        let text = std::fs::read_to_string(&main).expect("read postgresql.conf");
        if !text.contains("include 'gatehouse-test.conf'") {
            std::fs::write(&main, text + "\ninclude 'gatehouse-test.conf'\n")
                .expect("write postgresql.conf");
        }
        self.chown_all();
    }

    fn write_hba(&self, opts: &PgOptions) {
        let mut hba = vec!["local all all trust".to_string()];
        hba.extend(opts.hba_first.iter().cloned());
        hba.push("hostssl all all 127.0.0.1/32 scram-sha-256".into());
        if opts.plain_host {
            hba.push("host    all all 127.0.0.1/32 scram-sha-256".into());
        }
        std::fs::write(self.data.join("pg_hba.conf"), hba.join("\n") + "\n")
            .expect("write pg_hba.conf");
        self.chown_all();
    }

    /// Gives the whole temp dir to the cluster's owner (when running as root).
    fn chown_all(&self) {
        if !self.as_user {
            return;
        }
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{PG_OS_USER}:"))
            .arg(self.dir.path())
            .output()
            .expect("run chown");
        assert!(
            out.status.success(),
            "chown failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a PostgreSQL server program as the cluster's owner.
    fn run_as_owner(&self, program: &Path, args: &[&str]) -> Output {
        let mut cmd = if self.as_user {
            let mut c = Command::new(find_tool("runuser").unwrap_or_else(|| "runuser".into()));
            c.args(["-u", PG_OS_USER, "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        run_with_timeout(&mut cmd, Duration::from_secs(120))
            .unwrap_or_else(|| panic!("{} timed out", program.display()))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates [`PG_OS_USER`] if it does not exist (idempotent, race-safe within
/// one test binary; `useradd` exit 9 = already exists from another binary).
fn ensure_os_user() {
    let _guard = USERADD.lock().unwrap_or_else(|e| e.into_inner());
    let exists = |u: &str| {
        Command::new("id")
            .arg("-u")
            .arg(u)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if exists(PG_OS_USER) {
        return;
    }
    let useradd = find_tool("useradd").unwrap_or_else(|| "useradd".into());
    let out = Command::new(useradd)
        .args(["-r", "-M", "-s", "/usr/sbin/nologin", PG_OS_USER])
        .output()
        .expect("run useradd");
    assert!(
        out.status.success() || out.status.code() == Some(9) || exists(PG_OS_USER),
        "useradd {PG_OS_USER} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = gatehouse test
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// `ca.pem`/`ca.key`, `server.crt`/`server.key` signed by it, and an
/// unrelated `wrong-ca.pem`; P-256 keys, ecdsa-with-SHA256 signatures.
fn make_certificates(root: &Path) {
    let cnf = root.join("openssl.cnf");
    std::fs::write(&cnf, OPENSSL_CNF).expect("write openssl.cnf");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(root)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (name, cn) in [
        ("ca", "/CN=gatehouse test CA"),
        ("wrong-ca", "/CN=some other CA"),
    ] {
        openssl(&[
            "req",
            "-x509",
            "-config",
            "openssl.cnf",
            "-extensions",
            "v3_ca",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-sha256",
            "-days",
            "3",
            "-subj",
            cn,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }
    openssl(&[
        "req",
        "-new",
        "-config",
        "openssl.cnf",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "2",
        "-sha256",
        "-days",
        "3",
        "-extfile",
        "openssl.cnf",
        "-extensions",
        "v3_server",
        "-out",
        "server.crt",
    ]);
    std::fs::set_permissions(
        root.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod server.key");
}

/// A quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
