use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use cairn_proto::v1::LogStream;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::{Error, EventSink, RunnerEvent};

/// How long a vendor process gets between SIGINT and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

const STDERR_TAIL_LINES: usize = 40;

/// A vendor CLI invocation (terraform, tofu, pulumi, ansible-playbook, ...).
///
/// The process runs in its own process group so that cancelling reaches every process it
/// started (providers, language hosts, ssh), not only the CLI itself.
#[derive(Debug, Clone)]
pub struct VendorCommand {
    program: OsString,
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    capture_stdout: bool,
    grace: Duration,
}

/// How a vendor process ended.
#[derive(Debug, Clone)]
pub struct VendorOutcome {
    pub status: ExitStatus,
    /// All of stdout, unredacted, when capture was asked for; empty otherwise.
    pub stdout: String,
    /// The last stderr lines, already redacted.
    pub stderr_tail: Vec<String>,
}

impl VendorOutcome {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The vendor's own explanation of a failure: the tail of its stderr, or the exit status.
    pub fn error_message(&self) -> String {
        let tail = self.stderr_tail.join("\n");
        let tail = tail.trim();
        if tail.is_empty() {
            format!("exited with {}", self.status)
        } else {
            tail.to_owned()
        }
    }
}

impl VendorCommand {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            capture_stdout: false,
            grace: DEFAULT_GRACE,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Keep stdout whole in [`VendorOutcome::stdout`] instead of logging it line by line
    /// (machine-readable output such as `terraform show -json`).
    pub fn capture_stdout(mut self, capture: bool) -> Self {
        self.capture_stdout = capture;
        self
    }

    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    fn program_name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    fn spawn(&self, stdout: Stdio) -> Result<(Child, GroupGuard), Error> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            program: self.program_name(),
            source,
        })?;
        let guard = GroupGuard {
            pgid: child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(Pid::from_raw),
        };
        Ok((child, guard))
    }

    /// Runs the command to completion, streaming stderr (and stdout unless captured) to `sink`
    /// as redacted log lines. `on_stdout` turns a stdout line into the log line to send
    /// (`None` drops it), e.g. to render JSON UI messages readably.
    ///
    /// When the client drops the stream, the process group gets SIGINT, then SIGKILL after the
    /// grace period, and this returns [`Error::Cancelled`].
    pub async fn run<T, F>(
        &self,
        sink: &EventSink<T>,
        mut on_stdout: F,
    ) -> Result<VendorOutcome, Error>
    where
        T: RunnerEvent,
        F: FnMut(&str) -> Option<String> + Send,
    {
        tracing::debug!(program = %self.program_name(), args = ?self.args, "starting vendor process");
        let (mut child, mut guard) = self.spawn(Stdio::piped())?;
        let (tx, mut rx) = mpsc::channel::<(LogStream, String)>(256);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_lines(out, LogStream::Stdout, tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_lines(err, LogStream::Stderr, tx.clone()));
        }
        drop(tx);

        let mut stdout = String::new();
        let mut stderr_tail = VecDeque::new();
        let cancelled = loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                () = sink.closed() => break true,
            };
            let Some((stream, line)) = next else {
                break false;
            };
            let message = match stream {
                LogStream::Stdout if self.capture_stdout => {
                    stdout.push_str(&line);
                    stdout.push('\n');
                    None
                }
                LogStream::Stdout => on_stdout(&line),
                _ => {
                    if stderr_tail.len() == STDERR_TAIL_LINES {
                        stderr_tail.pop_front();
                    }
                    stderr_tail.push_back(sink.redactor().redact(&line));
                    Some(line)
                }
            };
            if let Some(message) = message {
                if sink.log(stream, &message).await.is_err() {
                    break true;
                }
            }
        };
        if cancelled {
            tracing::info!(program = %self.program_name(), "stream cancelled, stopping vendor process");
            terminate(&mut child, &mut guard, self.grace).await;
            return Err(Error::Cancelled);
        }
        let status = child.wait().await?;
        guard.disarm();
        Ok(VendorOutcome {
            status,
            stdout,
            stderr_tail: stderr_tail.into(),
        })
    }

    /// Runs the command without a stream (e.g. `terraform version`), capturing stdout and
    /// stderr.
    pub async fn output(&self) -> Result<VendorOutcome, Error> {
        let (child, mut guard) = self.spawn(Stdio::piped())?;
        let out = child.wait_with_output().await?;
        guard.disarm();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<String> = stderr.lines().map(str::to_owned).collect();
        let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
        Ok(VendorOutcome {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr_tail: lines[start..].to_vec(),
        })
    }
}

async fn forward_lines(
    reader: impl AsyncRead + Unpin,
    stream: LogStream,
    tx: mpsc::Sender<(LogStream, String)>,
) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']).to_owned();
                if tx.send((stream, line)).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn terminate(child: &mut Child, guard: &mut GroupGuard, grace: Duration) {
    guard.signal(Signal::SIGINT);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        guard.signal(Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Stragglers of the group (e.g. provider plugins) must not outlive the cancelled run.
    guard.signal(Signal::SIGKILL);
    guard.disarm();
}

/// Kills the whole process group if the owning future is dropped mid-run (task aborted,
/// plugin shutting down): nothing may keep running unsupervised.
#[derive(Debug)]
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, signal);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}
