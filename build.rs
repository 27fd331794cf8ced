//! Build facts for `gatehouse --version`: the git commit (or "unknown" when
//! building from a tarball without `.git` or without git) and the versions
//! of the security-relevant crates, read from Cargo.lock, so that a fleet
//! can be checked against an advisory. Writes `$OUT_DIR/version.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The crates whose advisories matter most to a gateway: the SSH stack,
/// the WireGuard implementation, the recording encryption and the crypto
/// backends.
const SECURITY_CRATES: &[&str] = &["russh", "boringtun", "age", "aws-lc-rs", "ring"];

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Every version of `name` in Cargo.lock (usually one), joined with ", ".
fn locked_versions(lock: &str, name: &str) -> String {
    let mut versions = Vec::new();
    let mut current: Option<&str> = None;
    for line in lock.lines() {
        let line = line.trim();
        if line == "[[package]]" {
            current = None;
        } else if let Some(n) = line.strip_prefix("name = ") {
            current = Some(n.trim_matches('"'));
        } else if let Some(v) = line.strip_prefix("version = ") {
            if current == Some(name) {
                versions.push(v.trim_matches('"').to_string());
            }
        }
    }
    if versions.is_empty() {
        "none".to_string()
    } else {
        versions.join(", ")
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-env-changed=GATEHOUSE_COMMIT");

    // GATEHOUSE_COMMIT overrides (a packager building from a tarball knows
    // the commit the tarball came from).
    let commit = std::env::var("GATEHOUSE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // Only ask git about this crate's own repository.
            manifest.join(".git").exists().then_some(())?;
            let c = git(&["-C", manifest.to_str()?, "rev-parse", "--short", "HEAD"])?;
            // Rebuild when HEAD moves (a commit, a checkout).
            for p in ["HEAD", "packed-refs"] {
                if let Some(path) = git(&["-C", manifest.to_str()?, "rev-parse", "--git-path", p]) {
                    watch(&manifest.join(path));
                }
            }
            if let Some(r) = git(&["-C", manifest.to_str()?, "symbolic-ref", "-q", "HEAD"]) {
                if let Some(path) = git(&["-C", manifest.to_str()?, "rev-parse", "--git-path", &r])
                {
                    watch(&manifest.join(path));
                }
            }
            Some(c)
        })
        .unwrap_or_else(|| "unknown".to_string());

    let lock = std::fs::read_to_string(manifest.join("Cargo.lock")).unwrap_or_default();
    let pkg_version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let mut long = format!("{pkg_version}\ncommit: {commit}");
    let mut crates = String::new();
    for c in SECURITY_CRATES {
        let v = locked_versions(&lock, c);
        long.push_str(&format!("\n{c}: {v}"));
        crates.push_str(&format!("    ({c:?}, {v:?}),\n"));
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("version.rs");
    let code = format!(
        "/// The git commit gatehouse was built from, or \"unknown\".\n\
         pub const COMMIT: &str = {commit:?};\n\
         /// The security-relevant crates and their locked versions.\n\
         pub const CRATES: &[(&str, &str)] = &[\n{crates}];\n\
         /// What `gatehouse --version` prints after \"gatehouse \".\n\
         pub const LONG: &str = {long:?};\n"
    );
    write_if_changed(&out, &code);
}

/// Rebuilds when `path` changes; only for files that exist (cargo reruns
/// the script on every build for a missing one, e.g. no packed-refs yet).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn write_if_changed(path: &Path, contents: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(contents) {
        if let Err(e) = std::fs::write(path, contents) {
            panic!("cannot write {}: {e}", path.display());
        }
    }
}
