//! `cairn server`, `cairn agent` and `cairn dev`: glue from flags to the server and agent crates.
//!
//! Layering is defaults → file → `CAIRN_*` environment → flags; the crates own the first three
//! and these functions add the flags on top.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::cli::{AgentArgs, DevArgs, ServerArgs};
use crate::error::CliError;
use crate::output::{paint, stdout_color, Color};
use crate::profile::ADMIN_KEY_FILE;

/// Resolves on Ctrl-C or SIGTERM (systemd, Kubernetes and `docker stop` send the latter).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A token cancelled by the first signal; a second Ctrl-C exits at once, for when a graceful
/// stop takes longer than the person is willing to wait.
fn signal_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        t.cancel();
        eprintln!("stopping (Ctrl-C again to quit at once)");
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
    token
}

fn telemetry(
    service: &str,
    otlp: Option<&str>,
    json_logs: bool,
) -> Result<cairn_telemetry::Guard, CliError> {
    let mut cfg = cairn_telemetry::TelemetryConfig::new(service).with_json_logs(json_logs);
    if let Some(e) = otlp.filter(|e| !e.is_empty()) {
        cfg = cfg.with_otlp_endpoint(e);
    }
    cairn_telemetry::init(cfg).map_err(|e| CliError::Other(format!("telemetry: {e}")))
}

fn server_config(args: &ServerArgs) -> Result<cairn_server::Config, CliError> {
    let overrides = cairn_server::ConfigLayer {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        database_url: args.database_url.clone(),
        otlp_endpoint: args.otlp_endpoint.clone(),
        ..Default::default()
    };
    let file = args
        .config
        .clone()
        .or_else(|| std::env::var_os("CAIRN_CONFIG").map(PathBuf::from));
    cairn_server::Config::load(file.as_deref(), overrides).map_err(server_err)
}

fn server_err(e: cairn_server::ServerError) -> CliError {
    match e {
        cairn_server::ServerError::Config(m) => CliError::Invalid(format!("configuration: {m}")),
        other => CliError::Other(other.to_string()),
    }
}

fn agent_err(e: cairn_agent::Error) -> CliError {
    CliError::Other(format!("agent: {e}"))
}

async fn bind(server: &cairn_server::Server) -> Result<tokio::net::TcpListener, CliError> {
    let addr = server.config().listen;
    server.bind().await.map_err(|e| match &e {
        cairn_server::ServerError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            CliError::Precondition(format!(
                "{addr} is already in use (another cairn server or dev?); stop it or pick another address with --listen"
            ))
        }
        _ => server_err(e),
    })
}

pub async fn server(args: ServerArgs) -> Result<(), CliError> {
    let config = server_config(&args)?;
    let _telemetry = telemetry(
        "cairn-server",
        config.otlp_endpoint.as_deref(),
        args.json_logs,
    )?;
    let server = cairn_server::Server::builder(config)
        .build()
        .await
        .map_err(server_err)?;
    let listener = bind(&server).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %server.config().data_dir.display(), "serving gRPC and HTTP");
    let token = signal_token();
    server
        .serve(listener, async move { token.cancelled().await })
        .await
        .map_err(server_err)
}

/// Applies `cairn agent` flags (and the global `--server`) over the file and environment.
pub fn agent_config(
    args: &AgentArgs,
    server: Option<String>,
) -> Result<cairn_agent::Config, CliError> {
    let file = args
        .config
        .clone()
        .or_else(|| std::env::var_os("CAIRN_AGENT_CONFIG").map(PathBuf::from));
    let mut config = cairn_agent::Config::load(file.as_deref()).map_err(agent_err)?;
    if let Some(s) = server {
        config.server_url = crate::profile::normalize(&s);
    }
    if let Some(t) = &args.token_file {
        config.pool_token_file = Some(t.clone());
    }
    if let Some(n) = &args.name {
        config.name = n.clone();
    }
    if let Some(d) = &args.work_dir {
        config.work_dir = d.clone();
    }
    if let Some(d) = &args.plugin_dir {
        // Searched first, so a plugin under development wins over an installed one.
        config.plugin_path.insert(0, d.clone());
    }
    if let Some(n) = args.max_jobs {
        config.max_jobs = n;
    }
    if !args.labels.is_empty() {
        config.labels = args.labels.clone();
    }
    if let Some(e) = args.otlp_endpoint.as_ref().filter(|e| !e.is_empty()) {
        // Handed on to runner plugins, whose spans then join the run's trace.
        config.otlp_endpoint = Some(e.clone());
    }
    Ok(config)
}

pub async fn agent(args: AgentArgs, server: Option<String>) -> Result<(), CliError> {
    let config = agent_config(&args, server)?;
    let _telemetry = telemetry(
        "cairn-agent",
        config.otlp_endpoint.as_deref(),
        args.json_logs,
    )?;
    let token = signal_token();
    cairn_agent::run(config, async move { token.cancelled().await })
        .await
        .map_err(agent_err)
}

/// The runner plugins (`cairn-runner-<vendor>`) found on a plugin path, by vendor name.
pub fn find_plugins(path: &[PathBuf]) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    for dir in path {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(vendor) = name.strip_prefix("cairn-runner-") {
                // Skip build by-products such as `cairn-runner-tf.d`.
                if !vendor.contains('.') && e.path().is_file() {
                    found.insert(vendor.to_string());
                }
            }
        }
    }
    found.into_iter().collect()
}

pub async fn dev(args: DevArgs) -> Result<(), CliError> {
    let _telemetry = telemetry("cairn-dev", None, false)?;
    let data_dir = absolute(&args.data_dir)?;
    let server_args = ServerArgs {
        listen: Some(args.listen),
        data_dir: Some(data_dir.clone()),
        ..Default::default()
    };
    let mut config = server_config(&server_args)?;
    // Dev is the embedded default whatever the environment says: SQLite in the data directory.
    config.database_url = String::new();
    let server = cairn_server::Server::builder(config)
        .build()
        .await
        .map_err(server_err)?;
    let pool_token = server.config().default_pool_token_path();
    let listener = bind(&server).await?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");

    let token = signal_token();
    let server_stop = token.clone();
    let mut server_task = tokio::spawn(async move {
        server
            .serve(listener, async move { server_stop.cancelled().await })
            .await
    });

    let agent_args = AgentArgs {
        token_file: Some(pool_token),
        work_dir: Some(data_dir.join("agent")),
        plugin_dir: args.plugin_dir.clone(),
        ..Default::default()
    };
    let agent_config = agent_config(&agent_args, Some(url.clone()))?;
    let plugins = find_plugins(&agent_config.plugin_path);
    print_banner(&url, addr, &data_dir, &agent_config, &plugins);

    let agent_stop = token.clone();
    let mut agent_task = tokio::spawn(cairn_agent::run(agent_config, async move {
        agent_stop.cancelled().await
    }));

    if !args.no_demo {
        tokio::select! {
            () = demo(&url, &data_dir) => {}
            () = token.cancelled() => {}
        }
    }

    // Whichever ends first (a signal, or one half failing) stops the other half too.
    let (server_res, agent_res) = tokio::select! {
        r = &mut server_task => {
            token.cancel();
            (r, agent_task.await)
        }
        r = &mut agent_task => {
            token.cancel();
            (server_task.await, r)
        }
    };
    let joined = |e: tokio::task::JoinError| CliError::Other(format!("task failed: {e}"));
    server_res.map_err(joined)?.map_err(server_err)?;
    agent_res.map_err(joined)?.map_err(agent_err)?;
    eprintln!("cairn dev stopped");
    Ok(())
}

/// Sets the demo up on the first start; a failure is reported and dev keeps running, since the
/// server and agent are useful without it.
async fn demo(url: &str, data_dir: &Path) {
    let c = stdout_color();
    let tools = crate::demo::tools_dir();
    let caps = crate::demo::Capabilities::detect(&tools);
    if data_dir.join(crate::demo::DEMO_DIR).exists() {
        println!(
            "Demo repository: {} (push there to trigger runs)",
            data_dir.join(crate::demo::DEMO_DIR).join("infra").display()
        );
        return;
    }
    if !caps.terraform {
        println!(
            "{}: no Terraform test provider in {} (run `cargo xtask provision`, or set CAIRN_TOOLS_DIR), so the Terraform demo stacks network and app are left out",
            paint("demo", Color::Yellow, c),
            tools.display()
        );
        if !caps.ansible {
            println!("demo: ansible-playbook is not on PATH either: no demo stacks are created");
            return;
        }
    }
    match crate::demo::ensure(url, data_dir, caps).await {
        Ok(crate::demo::Outcome::Created { stacks }) => {
            println!();
            print!("{}", crate::demo::try_this(data_dir, &stacks));
        }
        Ok(crate::demo::Outcome::AlreadyThere) => {}
        Err(e) => println!(
            "{}: {e} (dev keeps running; the demo is retried on the next start, or pass --no-demo)",
            paint("demo setup failed", Color::Red, c)
        ),
    }
}

fn absolute(p: &Path) -> Result<PathBuf, CliError> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

fn print_banner(
    url: &str,
    addr: SocketAddr,
    data_dir: &Path,
    agent: &cairn_agent::Config,
    plugins: &[String],
) {
    let c = stdout_color();
    let b = |s: &str| paint(s, Color::Bold, c);
    println!("{} is running", paint("Cairn dev", Color::Green, c));
    println!("  gRPC   {url}  (reflection on: grpcurl -plaintext {addr} list)");
    println!("  HTTP   {url}/healthz  (webhooks and health on the same port)");
    println!(
        "  data   {}  (SQLite cairn.db, admin key in {ADMIN_KEY_FILE})",
        data_dir.display()
    );
    if plugins.is_empty() {
        println!(
            "  agent  {:?} in pool default; {}: build them with `cargo build --release -p cairn-runner-tf -p cairn-runner-ansible -p cairn-runner-pulumi` or pass --plugin-dir",
            agent.name,
            paint("no runner plugins found", Color::Yellow, c)
        );
    } else {
        println!(
            "  agent  {:?} in pool default, plugins: {}",
            agent.name,
            plugins.join(", ")
        );
    }
    println!();
    println!(
        "In another terminal, in this directory: {} then {}",
        b("cairn whoami"),
        b("cairn stack list")
    );
    println!("Ctrl-C stops.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_are_found_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "cairn-runner-opentofu",
            "cairn-runner-ansible",
            "cairn-runner-tf.d",
            "other",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("cairn-runner-dir")).unwrap();
        let missing = dir.path().join("missing");
        assert_eq!(
            find_plugins(&[missing, dir.path().to_path_buf()]),
            ["ansible", "opentofu"]
        );
    }

    #[test]
    fn agent_flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "server_url = \"http://file:1\"\nmax_jobs = 3\nname = \"from-file\"\n",
        )
        .unwrap();
        let args = AgentArgs {
            config: Some(file),
            max_jobs: Some(5),
            plugin_dir: Some(dir.path().join("plugins")),
            ..Default::default()
        };
        let c = agent_config(&args, Some("127.0.0.1:9".into())).unwrap();
        assert_eq!(c.server_url, "http://127.0.0.1:9");
        assert_eq!(c.max_jobs, 5);
        assert_eq!(c.name, "from-file");
        assert_eq!(c.plugin_path[0], dir.path().join("plugins"));
    }

    #[test]
    fn server_flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/from/file\"\n",
        )
        .unwrap();
        let args = ServerArgs {
            config: Some(file),
            listen: Some("127.0.0.1:2".parse().unwrap()),
            ..Default::default()
        };
        let c = server_config(&args).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        let bad = ServerArgs {
            config: Some(dir.path().join("missing.toml")),
            ..Default::default()
        };
        assert_eq!(
            server_config(&bad).unwrap_err().exit_code(),
            crate::error::exit::INVALID
        );
    }
}
