//! `gatehouse quickstart`: a working demo gateway from nothing.
//!
//! Creates DIR (0700) with an embedded default config, a demo user with a
//! generated SSH key, an enrolled TOTP secret, and an ssh_config/known_hosts
//! pair so the stock OpenSSH client connects without editing anything. If an
//! sshd answers on 127.0.0.1:22 it becomes the demo target `localhost`, its
//! host key pinned from a scan. Then the gateway runs in the foreground.
//! Re-running reuses everything already in DIR.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::state::{KeyPair, StateDir};

const TEMPLATE: &str = include_str!("../config.quickstart.toml");

fn current_login() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into())
}

pub fn quickstart(dir: &Path, port: u16) -> anyhow::Result<ExitCode> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let dir = dir.canonicalize()?;
    let user_key = KeyPair::load_or_create(&dir.join("demo_ed25519"), "demo@gatehouse-quickstart")?;
    let auditor =
        KeyPair::load_or_create(&dir.join("auditor_ed25519"), "auditor@gatehouse-quickstart")?;
    let config_path = dir.join("config.toml");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let login = current_login();
    if !config_path.exists() {
        let scanned = rt.block_on(crate::ssh::upstream::keyscan(
            "127.0.0.1:22",
            Duration::from_secs(2),
        ));
        let (target_keys, note) = match scanned {
            Ok(keys) => (
                keys.iter()
                    .filter_map(|k| {
                        let mut k = k.clone();
                        k.set_comment("");
                        k.to_openssh().ok()
                    })
                    .map(|l| format!("\"{}\"", l.trim()))
                    .collect::<Vec<_>>()
                    .join(", "),
                "",
            ),
            Err(_) => (
                String::new(),
                "# no sshd answered on 127.0.0.1:22 when this was written\n",
            ),
        };
        let text = TEMPLATE
            .replace("@STATE_DIR@", &dir.join("state").display().to_string())
            .replace("@DIR@", &dir.display().to_string())
            .replace("@PORT@", &port.to_string())
            .replace("@USER_KEY@", user_key.public_line().trim())
            .replace("@AUDITOR_KEY@", auditor.public_line().trim())
            .replace("@LOGIN@", &login)
            .replace("@TARGET_KEYS@", &target_keys)
            .replace("@NOTE@", note);
        fs::write(&config_path, text)?;
    }
    let settings = match crate::config::load(&config_path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(crate::cli::EXIT_CONFIG));
        }
    };
    let st = StateDir::open(&settings.gateway.state_dir)?;
    let host = st.host_key()?;
    let client = st.client_key()?;
    let secret_file = dir.join("demo.totp");
    if st.totp_secret("demo")?.is_none() || !secret_file.exists() {
        let b32 = crate::cli::enroll(&st, "demo")?;
        crate::state::write_secret_file(&secret_file, b32.as_bytes())?;
    }
    let host_line = host.public_line();
    let host_key = host_line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    fs::write(
        dir.join("known_hosts"),
        format!("[127.0.0.1]:{port} {host_key}\nlocalhost {host_key}\n"),
    )?;
    fs::write(
        dir.join("ssh_config"),
        format!(
            "Host gatehouse-demo\n  HostName 127.0.0.1\n  Port {port}\n  User demo\n\n\
             Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  \
             StrictHostKeyChecking yes\n  PasswordAuthentication no\n",
            key = dir.join("demo_ed25519").display(),
            kh = dir.join("known_hosts").display(),
        ),
    )?;
    let d = dir.display();
    println!(
        "\ngatehouse demo gateway on 127.0.0.1:{port}  (config: {d}/config.toml)\n\n\
         Log in to the gateway (key + verification code):\n\
         \x20   ssh -F {d}/ssh_config gatehouse-demo\n\
         The code comes from your authenticator app, or:\n\
         \x20   oathtool --totp -b $(cat {d}/demo.totp)\n\n\
         Jump to this machine's sshd as {login}:\n\
         \x20   ssh -F {d}/ssh_config -J gatehouse-demo {login}@localhost\n\
         which needs gatehouse's client key in ~{login}/.ssh/authorized_keys:\n\
         \x20   {}\n\n\
         Sessions are recorded and sealed to the demo auditor key; its private\n         half, for `gatehouse recordings ... -i` and `age -d -i`, is:\n         \x20   {d}/auditor_ed25519\n\n         Stop with Ctrl-C. Audit events follow as JSON lines.\n",
        client.public_line()
    );
    crate::audit::init_logging();
    rt.block_on(crate::daemon::run(Arc::new(settings), async {
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    Ok(ExitCode::SUCCESS)
}
