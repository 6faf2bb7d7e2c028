//! Records the git commit advcomp is built from (`git describe --always --dirty`), which
//! every report names; `unknown` outside a git checkout or without git.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ADVCOMP_GIT_COMMIT={commit}");
    // A new commit moves HEAD's ref and rewrites the index; an edit makes the tree dirty.
    for path in [
        ".git/HEAD",
        ".git/index",
        "src",
        "shaders",
        "assets/presets",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
