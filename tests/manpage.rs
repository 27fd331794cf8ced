//! gatehouse(8) and the shell completions are generated from the CLI
//! definition itself, so they cannot drift from `--help`: the page renders
//! with `man`, names every command, and each completion script is valid for
//! its shell.

mod common;

use std::process::Command;

use common::*;

fn generated(args: &[&str]) -> Vec<u8> {
    let out = gatehouse_command()
        .args(args)
        .output()
        .expect("run gatehouse");
    assert!(
        out.status.success(),
        "gatehouse {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty());
    out.stdout
}

fn generated_to(dir: &std::path::Path) {
    let out = gatehouse_command()
        .args(["manpage", "--dir"])
        .arg(dir)
        .output()
        .expect("run gatehouse");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_manual_page_renders_with_man_and_names_every_command() {
    if !require_tools(&["man"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("gatehouse.8");
    std::fs::write(&page, generated(&["manpage"])).unwrap();
    let out = Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(&page)
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gatehouse(8)"), "{text}");
    let cmds = [
        "run",
        "check",
        "sessions",
        "lock",
        "unlock",
        "locks",
        "reload",
        "recordings",
        "peer",
        "target",
        "user",
    ];
    for cmd in cmds {
        assert!(
            text.contains(&format!("gatehouse-{cmd}(8)")),
            "the page does not name `{cmd}`:\n{text}"
        );
    }
    // Every page it points to exists (`manpage --dir`) and renders.
    let pages = dir.path().join("pages");
    generated_to(&pages);
    for cmd in cmds {
        let p = pages.join(format!("gatehouse-{cmd}.8"));
        let out = Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{}",
            p.display()
        );
    }
    assert!(pages.join("gatehouse-sessions-kill.8").exists());
    // The title line carries the plain version, not the multi-line one.
    assert!(
        !text.lines().next().unwrap_or("").contains("commit"),
        "{text}"
    );
}

#[test]
fn completion_scripts_are_valid_bash_zsh_and_fish() {
    for (shell, check) in [
        ("bash", vec!["-n"]),
        ("zsh", vec!["-n"]),
        ("fish", vec!["--no-execute"]),
    ] {
        if !require_tools(&[shell]) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join(format!("gatehouse.{shell}"));
        let text = generated(&["completions", shell]);
        assert!(
            String::from_utf8_lossy(&text).contains("sessions"),
            "{shell}: no `sessions` in the completions"
        );
        std::fs::write(&script, text).unwrap();
        let out = Command::new(shell)
            .args(&check)
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell} rejects its completions: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A reader that goes away is not a crash.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} completions bash | head -c 10 >/dev/null",
            gatehouse_bin().display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
