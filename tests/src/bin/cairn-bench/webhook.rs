//! The `webhook` section: a signed GitHub push webhook to the first runner Plan call of the run
//! it creates (warm agent, trivial plugin), and webhooks accepted per second on SQLite and
//! PostgreSQL.
//!
//! The path measured is event-driven end to end: the webhook handler stores the delivery and
//! wakes the ingest task, which creates the run and wakes the scheduler, which pushes the
//! lease down the connected agent's stream; no step waits for a timer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_proto::v1::vcs_service_client::VcsServiceClient;
use cairn_tests::{paths, pb, stack_spec, Error, GitRepo, Result, ServerOptions, TestServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ms, percentile, verdict, Better};

const SECRET: &[u8] = b"bench webhook secret";
const PLUGIN: &str = "cairn-runner-noop";

pub async fn run(quick: bool) -> Result<()> {
    latency(quick).await?;
    let deliveries = if quick { 300 } else { 2_000 };
    let sqlite = throughput(ServerOptions::default(), deliveries).await?;
    println!("[webhook] SQLite: {deliveries} signed push deliveries accepted in {sqlite:.0}/s");
    verdict(
        "webhook accepted/s SQLite",
        500.0,
        sqlite,
        "/s",
        Better::Higher,
    );
    match std::env::var("CAIRN_TEST_DATABASE_URL") {
        Ok(url) => {
            let opts = ServerOptions {
                database_url: url,
                ..ServerOptions::default()
            };
            let pg = throughput(opts, deliveries).await?;
            println!(
                "[webhook] PostgreSQL: {deliveries} signed push deliveries accepted in {pg:.0}/s \
                 (SQLite/PostgreSQL {:.2})",
                sqlite / pg.max(f64::MIN_POSITIVE)
            );
            verdict(
                "webhook accepted/s PostgreSQL",
                500.0,
                pg,
                "/s",
                Better::Higher,
            );
        }
        Err(_) => println!("[webhook] PostgreSQL: skipped (CAIRN_TEST_DATABASE_URL is not set)"),
    }
    Ok(())
}

/// The directory holding `cairn-runner-noop`: next to this binary, else built there.
fn plugin_dir() -> Result<PathBuf> {
    let here = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| paths::target_dir().join("release"));
    if here.join(PLUGIN).exists() {
        return Ok(here);
    }
    let release = here.ends_with("release");
    println!("[webhook] building {PLUGIN}");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "cairn-tests", "--bin", PLUGIN]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .current_dir(paths::workspace_root())
        .status()
        .map_err(|e| Error::io("running cargo build", e))?;
    if !status.success() || !here.join(PLUGIN).exists() {
        return Err(Error::Setup(format!("could not build {PLUGIN}")));
    }
    Ok(here)
}

async fn create_integration(server: &TestServer, id: &str) -> Result<()> {
    let auth = format!("Bearer {}", server.admin_key);
    let mut client = VcsServiceClient::with_interceptor(
        server.channel.clone(),
        move |mut req: tonic::Request<()>| {
            let v = auth
                .parse()
                .map_err(|_| tonic::Status::internal("bad key header"))?;
            req.metadata_mut().insert("authorization", v);
            Ok(req)
        },
    );
    client
        .create_integration(pb::CreateIntegrationRequest {
            integration: Some(pb::Integration {
                id: id.into(),
                provider: pb::VcsProvider::Github as i32,
                webhook_secret: String::from_utf8_lossy(SECRET).into_owned(),
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

/// The first push example of `@octokit/webhooks-examples` that lists commits: a real payload.
fn push_example() -> Result<Value> {
    let path = paths::tools_dir()
        .join("node/node_modules/@octokit/webhooks-examples/api.github.com/index.json");
    let text = std::fs::read(&path).map_err(|e| {
        Error::io(
            format!("{} (run `cargo xtask provision`)", path.display()),
            e,
        )
    })?;
    let index: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
    index
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["name"] == "push")
        .flat_map(|e| e["examples"].as_array().cloned().unwrap_or_default())
        .find(|x| x["commits"].as_array().is_some_and(|c| !c.is_empty()))
        .ok_or_else(|| Error::Setup("no push example with commits".into()))
}

/// The example as a push of `after` to `main` of `clone_url`, changing `file`.
fn push_payload(
    example: &Value,
    full_name: &str,
    clone_url: &str,
    before: &str,
    after: &str,
    file: &str,
) -> Vec<u8> {
    let mut p = example.clone();
    p["ref"] = Value::from("refs/heads/main");
    p["before"] = Value::from(before);
    p["after"] = Value::from(after);
    let mut c = p["commits"][0].clone();
    c["id"] = Value::from(after);
    c["added"] = serde_json::json!([]);
    c["removed"] = serde_json::json!([]);
    c["modified"] = serde_json::json!([file]);
    p["commits"] = Value::from(vec![c.clone()]);
    p["head_commit"] = c;
    p["repository"]["full_name"] = Value::from(full_name);
    p["repository"]["clone_url"] = Value::from(clone_url);
    serde_json::to_vec(&p).unwrap_or_default()
}

/// One POST as GitHub sends it (a connection per delivery); the HTTP status.
async fn post(addr: SocketAddr, path: &str, delivery: &str, body: &[u8]) -> Result<u16> {
    let sig = cairn_vcs::github_signature(SECRET, body);
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| Error::io("connecting to the webhook endpoint", e))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {delivery}\r\n\
         X-Hub-Signature-256: {sig}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| Error::io("sending a webhook", e))?;
    s.write_all(body)
        .await
        .map_err(|e| Error::io("sending a webhook", e))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .await
        .map_err(|e| Error::io("reading the webhook answer", e))?;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::Check(format!("no HTTP status in {text:?}")))
}

fn unix_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default()
}

/// The `index`-th Plan call (0-based, in call order) in the plugin's log: its run id and Unix
/// nanoseconds. Only whole lines count (the plugin writes each line at once, but a read may
/// still land between its bytes).
async fn nth_plan(log: &Path, index: usize, deadline: Duration) -> Result<(String, i128)> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let line = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .nth(index);
        if let Some((id, at)) = line.and_then(|l| l.trim_end().split_once(' ')) {
            let at = at
                .parse::<i128>()
                .map_err(|e| Error::Check(format!("Plan log line {line:?}: {e}")))?;
            return Ok((id.to_string(), at));
        }
        if started.elapsed() > deadline {
            return Err(Error::Timeout {
                what: format!("Plan call {index} of the webhook runs"),
                after: deadline,
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn latency(quick: bool) -> Result<()> {
    let rounds = if quick { 10 } else { 60 };
    let plugins = plugin_dir()?;
    let work = tempfile::tempdir().map_err(|e| Error::io("temporary dir", e))?;
    let log = work.path().join("plans.log");
    // The agent runs in this process and its plugins inherit this environment.
    std::env::set_var("CAIRN_BENCH_PLAN_LOG", &log);
    let server = TestServer::start(ServerOptions::default()).await?;
    create_integration(&server, "gh").await?;
    let repo = GitRepo::new()?;
    repo.write("app/main.tf", "# 0\n")?;
    let mut before = repo.commit_and_push("first")?;
    let mut stack = stack_spec("hook", &repo.url(), "app", "noop", true);
    // Bound to the integration: its pushes come by webhook, the poller leaves it alone.
    stack.vcs_integration_id = "gh".into();
    server.create_stack(stack, vec![], &before).await?;

    let agent_config = cairn_agent::Config {
        server_url: server.url(),
        pool_token_file: Some(server.pool_token_file.clone()),
        name: "bench-webhook".into(),
        max_jobs: 1,
        plugin_path: vec![plugins],
        work_dir: work.path().join("agent"),
        ..Default::default()
    };
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(cairn_agent::run(agent_config, async move {
        let _ = stopped.changed().await;
    }));
    let example = push_example()?;
    let addr = server.addr;
    let mut lat = Vec::new();
    let mut steps: [Vec<Duration>; 3] = Default::default();
    // Round 0 warms the agent (first plugin launch, first checkout) and is not counted.
    for i in 0..=rounds {
        repo.write("app/main.tf", &format!("# {}\n", i + 1))?;
        let after = repo.commit_and_push(&format!("change {}", i + 1))?;
        let body = push_payload(
            &example,
            "bench/infra",
            &repo.url(),
            &before,
            &after,
            "app/main.tf",
        );
        let status = post(addr, "/webhooks/github/gh", &format!("lat-{i}"), &body).await?;
        let accepted = unix_nanos();
        if status != 202 {
            return Err(Error::Check(format!("webhook answered {status}, not 202")));
        }
        // Found by the plugin's log, not by asking the server for the stack's new run: polling
        // the server every few milliseconds would take CPU and store reads from the very path
        // measured. Each round plans one run, after the previous one finished.
        let (run_id, planned) = nth_plan(&log, i, cairn_tests::WAIT).await?;
        let done = server.wait(&run_id, &[pb::RunState::Finished]).await?;
        let commit = done.commit.as_ref().map(|c| c.hash.as_str());
        if done.stack_id != "hook" || commit != Some(after.as_str()) {
            return Err(Error::Check(format!(
                "Plan call {i} was of run {run_id} ({} at {commit:?}), not of the webhook's \
                 push of {after}",
                done.stack_id
            )));
        }
        if i > 0 {
            let nanos = u64::try_from(planned - accepted).unwrap_or(0);
            lat.push(Duration::from_nanos(nanos));
            // Where the time goes: to the run's creation, to its lease (leaving QUEUED), to
            // the Plan call.
            let created = i128::from(done.created_at);
            let leased = done
                .states_history
                .get(1)
                .map_or(created, |h| i128::from(h.timestamp));
            for (k, d) in [created - accepted, leased - created, planned - leased]
                .into_iter()
                .enumerate()
            {
                steps[k].push(Duration::from_nanos(u64::try_from(d).unwrap_or(0)));
            }
        }
        before = after;
    }
    let _ = stop.send(true);
    let _ = agent.await;
    std::env::remove_var("CAIRN_BENCH_PLAN_LOG");
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
    println!(
        "[webhook] push webhook accepted (202) -> first runner Plan call started, {rounds} runs, \
         warm agent, trivial plugin, SQLite: p50 {:.1}ms, p99 {:.1}ms, max {:.1}ms",
        ms(p50),
        ms(p99),
        ms(lat.last().copied().unwrap_or_default())
    );
    let [created, leased, planned] = steps.map(super::median);
    println!(
        "[webhook] medians: accepted -> run created {:.1}ms, created -> leased {:.1}ms, \
         leased -> Plan call {:.1}ms (checkout, plugin start)",
        ms(created),
        ms(leased),
        ms(planned)
    );
    verdict("webhook to Plan p50", 50.0, ms(p50), "ms", Better::Lower);
    server.stop().await
}

/// Deliveries accepted per second by one server: `n` signed pushes of a repository no stack
/// uses (so that accepting, not running, is measured), 16 senders at a time.
async fn throughput(opts: ServerOptions, n: usize) -> Result<f64> {
    const SENDERS: usize = 16;
    let server = TestServer::start(opts).await?;
    // Unique per run: a PostgreSQL database may be shared with earlier runs.
    let integration = format!("bench-{}", unix_nanos());
    create_integration(&server, &integration).await?;
    let example = push_example()?;
    let body = Arc::new(push_payload(
        &example,
        "bench/unused",
        "/nonexistent/unused.git",
        "1111111111111111111111111111111111111111",
        "2222222222222222222222222222222222222222",
        "app/main.tf",
    ));
    let path = Arc::new(format!("/webhooks/github/{integration}"));
    let addr = server.addr;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..SENDERS {
        let (body, path, next) = (body.clone(), path.clone(), next.clone());
        let integration = integration.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, Error>(());
                }
                let status = post(addr, &path, &format!("{integration}-{i}"), &body).await?;
                if status != 202 {
                    return Err(Error::Check(format!("delivery {i} answered {status}")));
                }
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| Error::Check(format!("sender task: {e}")))??;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    server.stop().await?;
    Ok(rate)
}
