//! A throwaway PostgreSQL server for test and bench runs.
//!
//! initdb into a fresh temporary directory, `postgres` as a direct child of
//! xtask listening on 127.0.0.1 with trust auth, and a guard that stops it
//! (fast shutdown) and deletes the directory when dropped, on success,
//! failure or panic alike. PostgreSQL refuses to run as root, so as root
//! the server runs as the system user `cairn-pg`, created on first use.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::provision;
use crate::util::{self, io_err, run, Error, Result};

const PG_USER: &str = "cairn-pg";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Postgres {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

/// Who the server runs as: ourselves, or an unprivileged account when root.
#[derive(Clone, Copy)]
struct RunAs {
    ids: Option<(u32, u32)>,
}

impl RunAs {
    fn apply(self, cmd: &mut Command) -> &mut Command {
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }
}

impl Postgres {
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start() -> Result<Self> {
        let bin = provision::postgres_bin_dir().ok_or_else(|| {
            Error::Postgres(
                "no initdb/postgres found (run `cargo xtask provision` as root to install them)"
                    .into(),
            )
        })?;
        let run_as = if util::is_root() {
            RunAs {
                ids: Some(ensure_pg_user()?),
            }
        } else {
            RunAs { ids: None }
        };

        let dir = unique_temp_dir();
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(format!("creating {}", dir.display())))?;
        if let Some((uid, gid)) = run_as.ids {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(io_err(format!("chown {}", dir.display())))?;
        }
        // From here on the guard owns the directory, so any failure below
        // still cleans it up.
        let mut server = Postgres {
            child: None,
            dir,
            port: 0,
        };
        let data = server.dir.join("data");
        let log = server.dir.join("postgres.log");

        let initdb_log = fs::File::create(server.dir.join("initdb.log"))
            .map_err(io_err("creating initdb.log"))?;
        let status = run_as
            .apply(
                Command::new(bin.join("initdb"))
                    .arg("-D")
                    .arg(&data)
                    .args([
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--locale=C",
                        "--no-sync",
                    ])
                    .stdin(Stdio::null())
                    .stdout(initdb_log.try_clone().map_err(io_err("initdb.log"))?)
                    .stderr(initdb_log),
            )
            .current_dir(&server.dir)
            .status()
            .map_err(io_err("running initdb"))?;
        if !status.success() {
            return Err(Error::Postgres(format!(
                "initdb failed ({status}):\n{}",
                fs::read_to_string(server.dir.join("initdb.log")).unwrap_or_default()
            )));
        }

        // A port picked by binding :0 can be taken by someone else before
        // postgres binds it; a few attempts make that race harmless.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let log_file = fs::File::create(&log).map_err(io_err("creating postgres.log"))?;
            let child = run_as
                .apply(
                    Command::new(bin.join("postgres"))
                        .arg("-D")
                        .arg(&data)
                        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
                        .arg(&server.dir)
                        .args([
                            "-c",
                            "fsync=off",
                            "-c",
                            "synchronous_commit=off",
                            "-c",
                            "full_page_writes=off",
                            "-c",
                            "max_connections=300",
                        ])
                        .stdin(Stdio::null())
                        .stdout(log_file.try_clone().map_err(io_err("postgres.log"))?)
                        .stderr(log_file),
                )
                .current_dir(&server.dir)
                .spawn()
                .map_err(io_err("starting postgres"))?;
            server.child = Some(child);
            server.port = port;
            match server.wait_ready(&data) {
                Ok(()) => {
                    eprintln!(
                        "pg: PostgreSQL ({}) ready at {} (data in {})",
                        bin.display(),
                        server.url(),
                        server.dir.display()
                    );
                    return Ok(server);
                }
                Err(e) => {
                    last_error = e;
                    server.stop();
                }
            }
        }
        Err(Error::Postgres(format!(
            "server did not start: {last_error}\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        )))
    }

    /// Ready means postmaster.pid says "ready" (PostgreSQL writes the
    /// status there once it accepts connections) and the port answers.
    fn wait_ready(&mut self, data: &Path) -> std::result::Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("postgres exited ({status})"));
                }
            }
            let ready = fs::read_to_string(data.join("postmaster.pid"))
                .map(|pid_file| pid_file.lines().nth(7).map(str::trim) == Some("ready"))
                .unwrap_or(false);
            if ready && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                return Err(format!("not ready after {}s", STARTUP_TIMEOUT.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients
        // instead of waiting for them, which a leaked test pool would do.
        let _ = Command::new("kill")
            .args(["-s", "INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("pg: postgres did not stop in time, killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let was_running = self.child.is_some();
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
        if was_running {
            eprintln!("pg: PostgreSQL on port {} stopped", self.port);
        }
    }
}

fn unique_temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("cairn-pg-{}-{nanos}", std::process::id()))
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("binding 127.0.0.1:0"))?;
    Ok(listener
        .local_addr()
        .map_err(io_err("reading local address"))?
        .port())
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

fn ensure_pg_user() -> Result<(u32, u32)> {
    if let Some(ids) = lookup_user(PG_USER) {
        return Ok(ids);
    }
    eprintln!("pg: creating system user {PG_USER}");
    run(Command::new("useradd").args([
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        PG_USER,
    ]))?;
    lookup_user(PG_USER)
        .ok_or_else(|| Error::Postgres(format!("user {PG_USER} missing after useradd")))
}

/// `cargo xtask pg [-- COMMAND...]`: with a command, runs it with
/// CAIRN_TEST_DATABASE_URL set and stops the server afterwards; without
/// one, serves until stdin reaches end of file (Enter or Ctrl-D).
pub fn command(args: &[String]) -> Result<()> {
    let server = Postgres::start()?;
    let url = server.url();
    match args.split_first() {
        Some((program, rest)) => {
            let result = run(Command::new(program)
                .args(rest)
                .env("CAIRN_TEST_DATABASE_URL", &url));
            drop(server);
            result
        }
        None => {
            println!("CAIRN_TEST_DATABASE_URL={url}");
            eprintln!("pg: press Enter or Ctrl-D to stop");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            drop(server);
            Ok(())
        }
    }
}
