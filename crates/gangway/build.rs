//! The git revision for `gangway_build_info{revision}`: from
//! `BUILD_GIT_REVISION` when set (packagers, container builds; not a
//! `GANGWAY_` name, which the gateway would read as configuration), else from
//! git when this source tree is a git checkout, else `unknown`. A tarball,
//! or a machine without git, still builds.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// Tells cargo to run this again when `path` changes, if it exists (a
/// missing path would make cargo run it on every build).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=BUILD_GIT_REVISION");
    println!("cargo:rerun-if-changed=build.rs");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let workspace = manifest.join("../..");
    let from_env = std::env::var("BUILD_GIT_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty());
    // Only this repository's own checkout: a tarball unpacked inside some
    // other repository must not take that one's revision.
    let own_checkout = git(&manifest, &["rev-parse", "--show-toplevel"])
        .and_then(|top| Path::new(&top).canonicalize().ok())
        .is_some_and(|top| workspace.canonicalize().is_ok_and(|w| w == top));
    let mut revision = from_env.clone();
    if own_checkout {
        // Run again when HEAD moves: HEAD itself, the branch it names (a
        // worktree keeps HEAD apart from the shared refs) and packed refs.
        if let Some(git_dir) = git(&manifest, &["rev-parse", "--absolute-git-dir"]) {
            watch(&Path::new(&git_dir).join("HEAD"));
        }
        if let Some(common) = git(
            &manifest,
            &["rev-parse", "--path-format=absolute", "--git-common-dir"],
        ) {
            let common = PathBuf::from(common);
            if let Some(branch) = git(&manifest, &["symbolic-ref", "-q", "HEAD"]) {
                watch(&common.join(branch));
            }
            watch(&common.join("packed-refs"));
        }
        if revision.is_none() {
            revision = git(&manifest, &["rev-parse", "--short=12", "HEAD"]);
        }
    }
    // A label value: no quotes, backslashes or line breaks from a stray
    // variable.
    let revision: String = revision
        .unwrap_or_else(|| "unknown".to_string())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._+-".contains(*c))
        .take(64)
        .collect();
    let revision = if revision.is_empty() {
        "unknown"
    } else {
        &revision
    };
    println!("cargo:rustc-env=BUILD_GIT_REVISION={revision}");
}
