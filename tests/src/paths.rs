//! Where the workspace, its build outputs and the provisioned tools are.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The repository root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// `CARGO_TARGET_DIR` when set (relative to the root), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// The `debug` build directory, where `cargo build --workspace --bins` puts the binaries.
pub fn debug_dir() -> PathBuf {
    target_dir().join("debug")
}

/// A binary from `target/debug`, or a clear error naming the command that builds it.
pub fn binary(name: &str) -> Result<PathBuf> {
    binary_in(name, &[debug_dir()])
}

/// The first `dirs[i]/name` that exists.
pub fn binary_in(name: &str, dirs: &[PathBuf]) -> Result<PathBuf> {
    for dir in dirs {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(Error::Setup(format!(
        "binary `{name}` not found in {}: build the workspace binaries first \
         (`cargo build --workspace --bins`; `cargo xtask test` does it)",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// `CAIRN_TOOLS_DIR`, defaulting to `<root>/target/tools` (written by `cargo xtask provision`).
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("CAIRN_TOOLS_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target").join("tools"),
    }
}

/// A provisioned tool from `<tools>/bin`.
pub fn tool(name: &str) -> Result<PathBuf> {
    let path = tools_dir().join("bin").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Setup(format!(
            "tool `{name}` not found at {}: run `cargo xtask provision` (or set CAIRN_TOOLS_DIR)",
            path.display()
        )))
    }
}

/// The Terraform CLI configuration that installs the cairntest provider from the local mirror.
pub fn terraformrc() -> Result<PathBuf> {
    let path = tools_dir().join("terraformrc");
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Setup(format!(
            "{} is missing: run `cargo xtask provision` to build the cairntest provider mirror",
            path.display()
        )))
    }
}

/// The directory of the example Python runner plugin (`cairn-runner-shell`).
pub fn python_runner_dir() -> PathBuf {
    workspace_root().join("examples").join("python-runner")
}

/// The fake Pulumi CLI used where the real one cannot run.
pub fn fake_pulumi() -> PathBuf {
    workspace_root()
        .join("tests")
        .join("fixtures")
        .join("pulumi")
        .join("pulumi")
}

/// `PATH` with the tools first, as `cargo xtask test` sets it.
pub fn tools_path() -> OsString {
    let mut dirs = vec![tools_dir().join("bin")];
    if let Some(existing) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// The environment an agent (and through it, plugins and vendor CLIs) needs: the same variables
/// `cargo xtask test` exports, computed here so that a bare `cargo test` works too.
pub fn vendor_env() -> Result<Vec<(String, OsString)>> {
    Ok(vec![
        ("PATH".into(), tools_path()),
        ("CAIRN_TOOLS_DIR".into(), tools_dir().into_os_string()),
        ("TF_CLI_CONFIG_FILE".into(), terraformrc()?.into_os_string()),
        ("CHECKPOINT_DISABLE".into(), "1".into()),
        ("TF_IN_AUTOMATION".into(), "1".into()),
        ("ANSIBLE_NOCOLOR".into(), "1".into()),
        ("CAIRN_PYTHON".into(), tool("python3")?.into_os_string()),
    ])
}
