//! Paths, process helpers and the crate's error type.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status})")]
    Failed { command: String, status: ExitStatus },
    #[error("provisioning: {0}")]
    Provision(String),
    #[error("postgresql: {0}")]
    Postgres(String),
    #[error("{0}")]
    Usage(String),
    #[error("failed steps: {}", .0.join(", "))]
    Steps(Vec<String>),
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// The workspace root: xtask lives one level below it, and the binary is
/// always built from this checkout, so the compile-time path is the truth.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// `CAIRN_TOOLS_DIR` when set (so a second tool tree can be provisioned
/// beside the default one), else `<root>/target/tools`.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("CAIRN_TOOLS_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target").join("tools"),
    }
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.contains(' ') || arg.is_empty() {
            let _ = write!(text, " '{arg}'");
        } else {
            let _ = write!(text, " {arg}");
        }
    }
    text
}

/// Runs a command with inherited stdio, echoing it first so CI logs show
/// exactly what was executed.
pub fn run(cmd: &mut Command) -> Result<()> {
    let command = describe(cmd);
    eprintln!("$ {command}");
    let status = cmd.status().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Failed { command, status })
    }
}

/// Runs a command quietly and returns its stdout; on failure the captured
/// stderr is printed because it is the only clue left.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let command = describe(cmd);
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    } else {
        eprint!("{}", String::from_utf8_lossy(&stderr));
        Err(Error::Failed { command, status })
    }
}

/// Whether `program` resolves on PATH.
pub fn on_path(program: impl AsRef<OsStr>) -> bool {
    let program = program.as_ref();
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).any(|dir| {
                let candidate = dir.join(program);
                candidate.is_file() && is_executable(&candidate)
            })
        })
        .unwrap_or(false)
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    // Reading our own effective uid without libc: /proc/self/status has it.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Outcome of one named step, for the summary printed at the end.
pub struct StepReport {
    pub name: String,
    pub ok: bool,
    pub elapsed: Duration,
    pub detail: Option<String>,
}

#[derive(Default)]
pub struct Steps {
    pub reports: Vec<StepReport>,
}

impl Steps {
    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("\n==> {name}");
        let started = Instant::now();
        let result = f();
        let elapsed = started.elapsed();
        let (ok, detail) = match &result {
            Ok(_) => (true, None),
            Err(e) => (false, Some(e.to_string())),
        };
        if let Some(detail) = &detail {
            eprintln!("==> {name}: FAILED: {detail}");
        }
        self.reports.push(StepReport {
            name: name.to_string(),
            ok,
            elapsed,
            detail,
        });
        result
    }

    pub fn failed(&self) -> Vec<String> {
        self.reports
            .iter()
            .filter(|r| !r.ok)
            .map(|r| r.name.clone())
            .collect()
    }

    pub fn print_summary(&self, title: &str) {
        eprintln!("\n==== {title} summary ====");
        for r in &self.reports {
            let status = if r.ok { "ok  " } else { "FAIL" };
            eprintln!(
                "  [{status}] {:<40} {:>8}",
                r.name,
                format_duration(r.elapsed)
            );
            if let Some(detail) = &r.detail {
                eprintln!("         {detail}");
            }
        }
        let failed = self.failed();
        if failed.is_empty() {
            eprintln!(
                "==== {title}: all {} steps succeeded ====",
                self.reports.len()
            );
        } else {
            eprintln!(
                "==== {title}: {} of {} steps FAILED: {} ====",
                failed.len(),
                self.reports.len(),
                failed.join(", ")
            );
        }
    }

    pub fn into_result(self) -> Result<()> {
        let failed = self.failed();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::Steps(failed))
        }
    }
}
