//! `cargo xtask provision | pg | test | bench | lint` — see `cargo xtask help`.

mod pg;
mod provision;
mod util;

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitCode};

use provision::Tools;
use util::{run, Error, Result, Steps};

const HELP: &str = "\
cargo xtask <command>

  dev [-- ARGS...]   the one command to try Cairn: provision the vendor tools, build every
                     binary in release mode (the CLI and the runner plugins), then run
                     `cairn dev ARGS` (SQLite in ./.cairn, one process, demo stacks)

  provision          install the tools tests need into target/tools (idempotent):
                     Debian packages (postgresql, git, npm, python3-venv) when missing,
                     a Python venv (terraform 1.0.3, ansible, grpcio, grpcio-tools),
                     buf, the cairntest Terraform provider mirror and terraformrc
  pg [-- CMD...]     start a throwaway PostgreSQL on 127.0.0.1; run CMD with
                     CAIRN_TEST_DATABASE_URL set, or wait for Enter/Ctrl-D; then stop it
  test [--no-lint] [-- ARGS...]
                     fmt check, provision, buf lint, clippy (lint fails fast), build all
                     binaries, start PostgreSQL, run doc tests and the test suite (nextest
                     when installed, ARGS go to it), stop PostgreSQL, print a summary
  bench [-- ARGS...] provision, start PostgreSQL, run
                     `cargo run --release -p cairn-tests --bin cairn-bench -- ARGS`
  lint               cargo fmt --check, buf lint, cargo clippy -D warnings (all run,
                     failures listed together)

Environment: CAIRN_TOOLS_DIR overrides the tools directory (default target/tools).
Tests see CAIRN_TOOLS_DIR, CAIRN_TEST_DATABASE_URL, TF_CLI_CONFIG_FILE and a PATH
starting with the tools bin directory.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("dev") => dev(after_dashes(&args[1..])),
        Some("provision") => provision::all().map(|_| ()),
        Some("pg") => pg::command(after_dashes(&args[1..])),
        Some("test") => test(&args[1..]),
        Some("bench") => bench(after_dashes(&args[1..])),
        Some("lint") => lint(),
        Some("help" | "-h" | "--help") => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(Error::Usage(format!("unknown command `{other}`\n\n{HELP}"))),
        None => Err(Error::Usage(HELP.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Arguments after a leading `--` (or all of them when there is none).
fn after_dashes(args: &[String]) -> &[String] {
    match args.first().map(String::as_str) {
        Some("--") => &args[1..],
        _ => args,
    }
}

/// The environment every test and bench process gets.
fn test_env(cmd: &mut Command, tools: &Tools, database_url: &str) {
    let mut path = vec![tools.bin()];
    if let Some(existing) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&existing));
    }
    let path: OsString = std::env::join_paths(path).unwrap_or_default();
    cmd.env("PATH", path)
        .env("CAIRN_TOOLS_DIR", &tools.dir)
        .env("CAIRN_TEST_DATABASE_URL", database_url)
        .env("TF_CLI_CONFIG_FILE", tools.terraformrc())
        // No network but the package registries: terraform must not phone home.
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_IN_AUTOMATION", "1")
        .env("ANSIBLE_NOCOLOR", "1");
}

/// `cargo xtask dev`: `cairn dev` needs the runner plugins next to its binary and the vendor
/// tools on PATH, which a bare `cargo run -p cairn` would not give it.
fn dev(args: &[String]) -> Result<()> {
    let tools = provision::all()?;
    run(util::cargo().args(["build", "--release", "--bins"]))?;
    let cairn = util::workspace_root().join("target/release/cairn");
    let mut cmd = Command::new(&cairn);
    cmd.arg("dev").args(args);
    test_env(&mut cmd, &tools, "");
    cmd.env_remove("CAIRN_TEST_DATABASE_URL");
    // Replace this process so that Ctrl-C reaches `cairn dev` alone and its clean shutdown is
    // what the terminal waits for.
    use std::os::unix::process::CommandExt;
    let err = cmd.exec();
    Err(Error::Provision(format!(
        "starting {}: {err}",
        cairn.display()
    )))
}

fn fmt_check() -> Result<()> {
    run(util::cargo().args(["fmt", "--all", "--", "--check"]))
}

fn clippy() -> Result<()> {
    run(util::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

fn buf_lint(buf: &Path) -> Result<()> {
    run(Command::new(buf)
        .arg("lint")
        .current_dir(util::workspace_root()))
}

/// Unlike `test`, runs every check even after a failure, so one run
/// lists everything to fix.
fn lint() -> Result<()> {
    let mut steps = Steps::default();
    let _ = steps.run("cargo fmt --check", fmt_check);
    if let Ok(tools) = steps.run("provision buf", provision::buf_only) {
        let _ = steps.run("buf lint", || buf_lint(&tools.buf()));
    }
    let _ = steps.run("cargo clippy -D warnings", clippy);
    steps.print_summary("lint");
    steps.into_result()
}

fn test(args: &[String]) -> Result<()> {
    let (flags, runner_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let mut skip_lint = false;
    for flag in flags {
        match flag.as_str() {
            "--no-lint" => skip_lint = true,
            other => {
                return Err(Error::Usage(format!(
                    "unknown test flag `{other}` (pass runner arguments after `--`)"
                )))
            }
        }
    }

    let mut steps = Steps::default();
    let outcome = run_tests(&mut steps, skip_lint, runner_args);
    steps.print_summary("cargo xtask test");
    // Failures were already reported step by step; the combined error
    // keeps the exit code non-zero.
    outcome.and(steps.into_result())
}

fn run_tests(steps: &mut Steps, skip_lint: bool, runner_args: &[String]) -> Result<()> {
    if !skip_lint {
        steps.run("cargo fmt --check", fmt_check)?;
    }
    let tools = steps.run("provision", provision::all)?;
    if !skip_lint {
        steps.run("buf lint", || buf_lint(&tools.buf()))?;
        steps.run("cargo clippy -D warnings", clippy)?;
    }
    // End-to-end tests run target/debug/cairn and the plugins, which a
    // test build alone would not produce.
    steps.run("cargo build --workspace --bins", || {
        run(util::cargo().args(["build", "--workspace", "--bins"]))
    })?;

    // The guard stops PostgreSQL when this function returns, whatever the
    // outcome of the steps below.
    let pg = steps.run("start PostgreSQL", pg::Postgres::start)?;
    let url = pg.url();

    // Both suites run even if one fails, so a single CI run reports every
    // broken test. Doc tests go first: CI reads the test runner's closing
    // lines, which must be the main suite's.
    let _ = steps.run("cargo test --doc", || {
        let mut cmd = util::cargo();
        cmd.args(["test", "--workspace", "--doc"]);
        test_env(&mut cmd, &tools, &url);
        run(&mut cmd)
    });
    let nextest = nextest_available();
    let name = if nextest {
        "cargo nextest run"
    } else {
        "cargo test"
    };
    let _ = steps.run(name, || {
        let mut cmd = util::cargo();
        if nextest {
            cmd.args([
                "nextest",
                "run",
                "--workspace",
                "--no-fail-fast",
                "--no-tests=warn",
            ]);
        } else {
            cmd.args(["test", "--workspace", "--no-fail-fast"]);
        }
        cmd.args(runner_args);
        test_env(&mut cmd, &tools, &url);
        run(&mut cmd)
    });
    drop(pg);
    Ok(())
}

fn nextest_available() -> bool {
    util::cargo()
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

const BENCH_PACKAGE: &str = "cairn-tests";
const BENCH_BIN: &str = "cairn-bench";

fn bench(args: &[String]) -> Result<()> {
    let metadata = provision::Metadata::load()?;
    if !metadata.has_bin(BENCH_PACKAGE, BENCH_BIN) {
        eprintln!(
            "bench: package {BENCH_PACKAGE} has no `{BENCH_BIN}` binary yet; no benchmarks to run"
        );
        return Ok(());
    }
    let mut steps = Steps::default();
    let outcome = (|| {
        let tools = steps.run("provision", provision::all)?;
        let pg = steps.run("start PostgreSQL", pg::Postgres::start)?;
        let url = pg.url();
        steps.run(BENCH_BIN, || {
            let mut cmd = util::cargo();
            cmd.args([
                "run",
                "--release",
                "-p",
                BENCH_PACKAGE,
                "--bin",
                BENCH_BIN,
                "--",
            ])
            .args(args);
            test_env(&mut cmd, &tools, &url);
            run(&mut cmd)
        })
    })();
    steps.print_summary("cargo xtask bench");
    outcome
}
