//! A real MariaDB server for tests: a datadir made by `mariadb-install-db`
//! in a temp dir, TLS from a CA the harness makes with `openssl` (the same
//! certificates as [`super::postgres`]: server SAN IP:127.0.0.1 and
//! DNS:localhost, plus an unrelated CA), on a free loopback port, its socket
//! in the temp dir; `mariadbd` runs in the background and is stopped (TERM,
//! then KILL) on drop.
//!
//! When the tests run as root the datadir belongs to the OS user
//! `gatehouse-test` (created if missing, as the PostgreSQL harness does) and
//! `mariadb-install-db`/`mariadbd` run as it through `setpriv` (which execs,
//! so the child is the server itself). As any other user they run directly.
//!
//! ```ignore
//! if !mariadb_available() { return; }
//! let db = MariaDb::start(MariaOptions::default());
//! db.create_user("app", "app-pw");            // mysql_native_password
//! db.create_user_ed25519("edu", "pw");        // false when the plugin is missing
//! db.create_database("app", "app");
//! assert_eq!(db.sql("select 1"), "1");        // as root over the socket
//! // db.port, db.ca_pem, db.wrong_ca_pem, db.log()
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::postgres::{ensure_os_user, is_root, make_certificates, PG_OS_USER};
use super::util::{
    find_tool, free_port, port_is_listening, require_tools, run_with_timeout, send_signal,
};

/// The server program.
pub const MARIADBD: &str = "/usr/sbin/mariadbd";
/// Where Debian keeps the server plugins (auth_ed25519.so).
pub const PLUGIN_DIR: &str = "/usr/lib/mysql/plugin";

/// True when everything the harness needs is installed. Otherwise: under
/// `CI=true` this panics naming what is missing; elsewhere it prints
/// `skipping: ...` and returns false so the test can `return`.
pub fn mariadb_available() -> bool {
    let mut tools = vec![MARIADBD, "mariadb-install-db", "mariadb", "openssl"];
    if is_root() {
        tools.extend(["setpriv", "useradd"]);
    }
    require_tools(&tools)
}

/// Whether the `ed25519` authentication plugin can be loaded.
pub fn ed25519_plugin_available() -> bool {
    Path::new(PLUGIN_DIR).join("auth_ed25519.so").exists()
}

/// How the server is started.
#[derive(Debug, Clone, Default)]
pub struct MariaOptions {
    /// `require_secure_transport = ON`: TCP logins without TLS are refused.
    pub require_secure_transport: bool,
    /// Extra `mariadbd` options (`--name=value`).
    pub args: Vec<String>,
}

impl MariaOptions {
    pub fn require_secure_transport(mut self) -> Self {
        self.require_secure_transport = true;
        self
    }
}

/// A running server; stopped on drop.
pub struct MariaDb {
    pub port: u16,
    /// The CA that signed the server's certificate (SAN IP:127.0.0.1,
    /// DNS:localhost): what a target's `tls_ca` pins.
    pub ca_pem: PathBuf,
    /// An unrelated CA, for certificate mismatch tests.
    pub wrong_ca_pem: PathBuf,
    /// root@localhost's password (root logs in over the socket only).
    pub root_password: String,
    /// Whether the ed25519 plugin was loaded.
    pub ed25519: bool,
    socket: PathBuf,
    child: Option<Child>,
    as_user: bool,
    dir: TempDir,
}

impl MariaDb {
    /// Makes the datadir, certificates and users, and starts the server.
    /// Panics with the server's log when it does not come up.
    pub fn start(opts: MariaOptions) -> MariaDb {
        let as_user = is_root();
        if as_user {
            ensure_os_user();
        }
        let dir = tempfile::Builder::new()
            .prefix("gh-maria-")
            .tempdir()
            .expect("mariadb temp dir");
        let root = dir.path().to_path_buf();
        make_certificates(&root);
        let mut db = MariaDb {
            port: 0,
            ca_pem: root.join("ca.pem"),
            wrong_ca_pem: root.join("wrong-ca.pem"),
            root_password: format!("gh-root-{}", std::process::id()),
            ed25519: ed25519_plugin_available(),
            socket: root.join("mysqld.sock"),
            child: None,
            as_user,
            dir,
        };
        db.chown_all();
        let install = find_tool("mariadb-install-db").expect("mariadb-install-db");
        let datadir = format!("--datadir={}", db.datadir().display());
        // Its own tmpdir: parallel bootstraps sharing /tmp collide on
        // temporary table names ("Could not remove temporary table").
        let tmpdir = format!("--tmpdir={}", root.display());
        let mut cmd = db.as_owner(&install);
        cmd.args([
            "--no-defaults",
            &datadir,
            &tmpdir,
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ])
        .current_dir(&root)
        .stdin(Stdio::null());
        let out = run_with_timeout(&mut cmd, Duration::from_secs(120))
            .expect("mariadb-install-db timed out");
        assert!(
            out.status.success(),
            "mariadb-install-db failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // root without a password until the server is up.
        db.write_client_cnf(None);
        let mut last = String::new();
        for _attempt in 0..3 {
            db.port = free_port();
            match db.spawn(&opts) {
                Ok(()) => {
                    db.secure_root();
                    return db;
                }
                Err(log) if log.contains("Bind on TCP/IP port") || log.contains("in use") => {
                    last = log
                }
                Err(log) => panic!("mariadbd did not start:\n{log}"),
            }
        }
        panic!("mariadbd could not bind a free port:\n{last}");
    }

    /// The temp dir holding data, certificates and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn datadir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's error log (with its start-up notes).
    pub fn log(&self) -> String {
        let mut text =
            std::fs::read_to_string(self.dir.path().join("mariadb.err")).unwrap_or_default();
        text.push_str(
            &std::fs::read_to_string(self.dir.path().join("mariadbd.out")).unwrap_or_default(),
        );
        text
    }

    /// Runs `sql` as root over the unix socket (`mariadb -N -B -e`), returns
    /// the raw output. stdin is closed.
    pub fn sql_output(&self, sql: &str) -> Output {
        let mut cmd = Command::new("mariadb");
        cmd.arg(format!(
            "--defaults-file={}",
            self.dir.path().join("client.cnf").display()
        ))
        .args(["-N", "-B", "--connect-timeout=10", "-e", sql])
        .stdin(Stdio::null());
        run_with_timeout(&mut cmd, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("mariadb timed out: {sql}"))
    }

    /// Like [`MariaDb::sql_output`]; panics on failure and returns stdout
    /// without its trailing newline.
    pub fn sql(&self, sql: &str) -> String {
        let out = self.sql_output(sql);
        assert!(
            out.status.success(),
            "mariadb failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// `mariadb` as `user` over TCP with TLS verified against [`MariaDb::ca_pem`]
    /// (password in `MYSQL_PWD`, never on the command line). Add `-e SQL` etc.
    pub fn tcp_client(&self, user: &str, password: &str, database: Option<&str>) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &self.port.to_string(),
            "-u",
            user,
            "--ssl",
            "--ssl-verify-server-cert",
            "--connect-timeout=10",
        ])
        .arg(format!("--ssl-ca={}", self.ca_pem.display()))
        .env("MYSQL_PWD", password)
        .stdin(Stdio::null());
        if let Some(db) = database {
            cmd.arg(db);
        }
        cmd
    }

    /// Creates `name`@`%` with `password` (mysql_native_password).
    pub fn create_user(&self, name: &str, password: &str) {
        self.sql(&format!(
            "CREATE USER {}@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD({})",
            literal(name),
            literal(password)
        ));
    }

    /// Creates `name`@`%` authenticated by the ed25519 plugin. False (and
    /// nothing created) when the plugin is not available.
    pub fn create_user_ed25519(&self, name: &str, password: &str) -> bool {
        if !self.ed25519 {
            return false;
        }
        self.sql(&format!(
            "CREATE USER {}@'%' IDENTIFIED VIA ed25519 USING PASSWORD({})",
            literal(name),
            literal(password)
        ));
        true
    }

    /// Creates database `name` and grants everything on it to `owner`@`%`.
    pub fn create_database(&self, name: &str, owner: &str) {
        self.sql(&format!(
            "CREATE DATABASE {db}; GRANT ALL PRIVILEGES ON {db}.* TO {}@'%'",
            literal(owner),
            db = ident(name)
        ));
    }

    /// Stops the server and starts it again on the same port and datadir
    /// with `opts` (e.g. another `--version=` string). Panics with the log
    /// when it does not come back.
    pub fn restart(&mut self, opts: &MariaOptions) {
        self.stop();
        // The port was just freed; retry briefly if a TIME_WAIT or another
        // process holds it.
        let mut last = String::new();
        for _attempt in 0..5 {
            match self.spawn(opts) {
                Ok(()) => return,
                Err(log) => last = log,
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("mariadbd did not restart:\n{last}");
    }

    /// Stops the server now (TERM, up to 30 s, then KILL).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        send_signal(&[i64::from(child.id())], "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts mariadbd and waits until root can log in over the socket.
    fn spawn(&mut self, opts: &MariaOptions) -> Result<(), String> {
        let root = self.dir.path().to_path_buf();
        let _ = std::fs::remove_file(root.join("mariadb.err"));
        let mut args = vec![
            "--no-defaults".to_string(),
            format!("--datadir={}", self.datadir().display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".into(),
            format!("--socket={}", self.socket.display()),
            format!("--pid-file={}", root.join("mariadbd.pid").display()),
            format!("--log-error={}", root.join("mariadb.err").display()),
            format!("--tmpdir={}", root.display()),
            "--skip-name-resolve".into(),
            format!("--ssl-ca={}", root.join("ca.pem").display()),
            format!("--ssl-cert={}", root.join("server.crt").display()),
            format!("--ssl-key={}", root.join("server.key").display()),
            "--innodb-buffer-pool-size=16M".into(),
            "--innodb-flush-log-at-trx-commit=0".into(),
            "--innodb-doublewrite=0".into(),
            "--max-connections=60".into(),
            // The server would serve LOCAL INFILE; a client that does not
            // offer CLIENT_LOCAL_FILES must still be refused by it.
            "--local-infile=1".into(),
            format!(
                "--require-secure-transport={}",
                if opts.require_secure_transport {
                    "ON"
                } else {
                    "OFF"
                }
            ),
        ];
        if self.ed25519 {
            args.push("--plugin-load-add=auth_ed25519".into());
        }
        args.extend(opts.args.iter().cloned());
        self.chown_all();
        let out = File::create(root.join("mariadbd.out")).expect("mariadbd.out");
        let err = out.try_clone().expect("mariadbd.out");
        let mut cmd = self.as_owner(Path::new(MARIADBD));
        cmd.args(&args)
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn mariadbd: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("mariadbd exited with {status}\n{}", self.log()));
            }
            if self.socket.exists()
                && port_is_listening(self.port)
                && self.sql_output("SELECT 1").status.success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("mariadbd not ready within 60 s\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// root@localhost gets a password; every other root and anonymous
    /// account goes (they would let anyone on loopback in without one).
    fn secure_root(&mut self) {
        self.sql(&format!(
            "DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost'); \
             FLUSH PRIVILEGES; \
             ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD({})",
            literal(&self.root_password)
        ));
        self.write_client_cnf(Some(&self.root_password.clone()));
        assert_eq!(self.sql("SELECT CURRENT_USER()"), "root@localhost");
    }

    fn write_client_cnf(&self, password: Option<&str>) {
        let mut text = format!(
            "[client]\nuser=root\nsocket={}\nprotocol=socket\n",
            self.socket.display()
        );
        if let Some(pw) = password {
            text.push_str(&format!("password={pw}\n"));
        }
        std::fs::write(self.dir.path().join("client.cnf"), text).expect("write client.cnf");
    }

    /// A command running `program` as the datadir's owner.
    fn as_owner(&self, program: &Path) -> Command {
        if self.as_user {
            let mut c = Command::new(find_tool("setpriv").unwrap_or_else(|| "setpriv".into()));
            c.args([
                &format!("--reuid={PG_OS_USER}"),
                &format!("--regid={PG_OS_USER}"),
                "--clear-groups",
                "--",
            ])
            .arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// Gives the whole temp dir to the server's owner (when running as root).
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
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A quoted SQL string literal (backslashes escaped too: MariaDB's default
/// sql_mode treats them as escapes).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}
