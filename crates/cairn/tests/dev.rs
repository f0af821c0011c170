//! The seeds' story end to end through the real binaries: a `cairn dev` child process in a fresh
//! directory sets its demo up; pushes to the demo repository make runs that real Terraform plans
//! and applies; the `cairn` CLI steers them (targeted replan, confirm, logs --follow, locks);
//! Ctrl-C stops dev and a restart keeps the data.
//!
//! Needs `cargo xtask provision` (Terraform, the cairntest provider, ansible) and the runner
//! plugins built next to the `cairn` binary (`cargo build --workspace --bins`); `cargo xtask
//! test` does both.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::client::Api;
use cairn::profile::Connection;
use cairn_proto::v1 as pb;

/// A guard against hanging forever when something is broken; never a performance assertion.
const PATIENCE: Duration = Duration::from_secs(180);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

fn tools_dir() -> PathBuf {
    std::env::var_os("CAIRN_TOOLS_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| workspace_root().join("target/tools"), PathBuf::from)
}

fn cairn_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

fn check_prerequisites(tools: &Path) {
    for t in ["terraformrc", "bin/terraform", "bin/ansible-playbook"] {
        assert!(
            tools.join(t).exists(),
            "{} is missing: run `cargo xtask provision` (or set CAIRN_TOOLS_DIR)",
            tools.join(t).display()
        );
    }
    let plugins = cairn_bin().parent().unwrap().to_path_buf();
    for p in ["cairn-runner-terraform", "cairn-runner-ansible"] {
        assert!(
            plugins.join(p).is_file(),
            "{} is missing: run `cargo build --workspace --bins` (cargo xtask test does it)",
            plugins.join(p).display()
        );
    }
}

/// A `cairn dev` child process and everything it printed.
struct Dev {
    child: Child,
    stdout: Arc<Mutex<String>>,
    url: String,
}

impl Dev {
    fn start(cwd: &Path, home: &Path, tools: &Path, log: &Path) -> Dev {
        Dev::start_with(cwd, home, tools, log, &[], None)
    }

    /// With extra `cairn dev` flags and, when given, this `PATH` instead of the inherited one.
    fn start_with(
        cwd: &Path,
        home: &Path,
        tools: &Path,
        log: &Path,
        flags: &[&str],
        path: Option<&Path>,
    ) -> Dev {
        let stderr = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new(cairn_bin());
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        let mut child = cmd
            .args(["dev", "--listen", "127.0.0.1:0"])
            .args(flags)
            .current_dir(cwd)
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("CAIRN_TOOLS_DIR", tools)
            .env("NO_COLOR", "1")
            .env_remove("CAIRN_CONFIG")
            .env_remove("CAIRN_DATABASE_URL")
            .env_remove("CAIRN_LISTEN")
            .env_remove("CAIRN_DATA_DIR")
            .env_remove("TF_CLI_CONFIG_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut dev = Dev {
            child,
            stdout,
            url: String::new(),
        };
        let banner = dev.wait_for_line("  gRPC   ", log);
        dev.url = banner
            .split_whitespace()
            .nth(1)
            .expect("the gRPC line names the URL")
            .to_string();
        dev
    }

    /// The first line containing `needle`; fails with dev's output if dev exits first.
    fn wait_for_line(&mut self, needle: &str, log: &Path) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .stdout
                .lock()
                .unwrap()
                .lines()
                .find(|l| l.contains(needle))
            {
                return l.to_string();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "cairn dev exited ({status}) before printing {needle:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout.lock().unwrap(),
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < PATIENCE,
                "no {needle:?} from cairn dev; stdout:\n{}",
                self.stdout.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ctrl-C, as a person in the terminal would; returns the exit status.
    fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(kill.success());
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > PATIENCE {
                let _ = self.child.kill();
                panic!("cairn dev did not stop after SIGINT");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Env {
    home: PathBuf,
    cwd: PathBuf,
    url: String,
    admin_key: PathBuf,
}

impl Env {
    /// The real `cairn` binary as `key`'s owner, in the dev directory.
    fn cairn_as(&self, key: &Path, args: &[&str]) -> Output {
        let mut all = vec![
            "--server",
            &self.url,
            "--api-key-file",
            key.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        Command::new(cairn_bin())
            .args(&all)
            .current_dir(&self.cwd)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("NO_COLOR", "1")
            .env_remove("CAIRN_API_KEY")
            .env_remove("CAIRN_PROFILE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn cairn(&self, args: &[&str]) -> Output {
        self.cairn_as(&self.admin_key, args)
    }

    fn cairn_ok(&self, args: &[&str]) -> String {
        let o = self.cairn(args);
        assert!(
            o.status.success(),
            "cairn {args:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    async fn api(&self) -> Api {
        let key = std::fs::read_to_string(&self.admin_key).unwrap();
        Api::connect(&Connection {
            server: self.url.clone(),
            api_key: Some(key.trim().to_string()),
        })
        .await
        .unwrap()
        .0
    }
}

fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

async fn runs(api: &Api, stack: &str) -> Vec<pb::Run> {
    api.runs()
        .list_runs(pb::ListRunsRequest {
            stack_id: stack.into(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .runs
}

async fn get_run(api: &Api, id: &str) -> pb::Run {
    api.runs()
        .get_run(pb::GetRunRequest { run_id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap()
}

/// The newest run of `stack` of type `ty` not in `seen`, once there is one.
async fn new_run(api: &Api, stack: &str, ty: pb::RunType, seen: &[String]) -> pb::Run {
    let start = Instant::now();
    loop {
        if let Some(r) = runs(api, stack)
            .await
            .into_iter()
            .find(|r| r.r#type == ty as i32 && !seen.contains(&r.id))
        {
            return r;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no new {ty:?} run on {stack}; runs: {:?}",
            runs(api, stack)
                .await
                .iter()
                .map(|r| (&r.id, r.r#type, r.state))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn is_terminal(state: i32) -> bool {
    use pb::RunState as S;
    [
        S::Finished,
        S::Failed,
        S::Canceled,
        S::Stopped,
        S::Discarded,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

/// Waits until the run is in one of `states`, or fails with its error if it ended elsewhere.
async fn wait_state(api: &Api, id: &str, states: &[pb::RunState]) -> pb::Run {
    let start = Instant::now();
    loop {
        let r = get_run(api, id).await;
        if states.iter().any(|s| *s as i32 == r.state) {
            return r;
        }
        assert!(
            !is_terminal(r.state),
            "run {id} ended {:?} (error: {}), wanted {states:?}",
            pb::RunState::try_from(r.state),
            r.error
        );
        assert!(
            start.elapsed() < PATIENCE,
            "run {id} still {:?}",
            pb::RunState::try_from(r.state)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn delta_resources(r: &pb::Run) -> (i32, i32, i32) {
    let d = r.delta.unwrap_or_default();
    (d.added_resources, d.changed_resources, d.deleted_resources)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_demo_story_through_the_real_binaries() {
    let tools = tools_dir();
    check_prerequisites(&tools);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let cwd = tmp.path().join("work");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&cwd).unwrap();
    let log = tmp.path().join("dev.log");

    let mut dev = Dev::start(&cwd, &home, &tools, &log);
    let created = dev.wait_for_line("Demo set up (", &log);
    assert!(
        created.contains("network, app, config"),
        "all three demo stacks with the provisioned tools: {created}"
    );
    let env = Env {
        home: home.clone(),
        cwd: cwd.clone(),
        url: dev.url.clone(),
        admin_key: cwd.join(".cairn/admin.key"),
    };
    let api = env.api().await;
    let demo = cwd.join(".cairn/demo");
    let infra = demo.join("infra");
    let out = demo.join("out");

    let listed = env.cairn_ok(&["stack", "list"]);
    for s in ["network", "app", "config"] {
        assert!(listed.contains(s), "{s} in `stack list`:\n{listed}");
    }
    let network = api
        .stacks()
        .get_stack(pb::GetStackRequest {
            stack_id: "network".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stack
        .unwrap();
    assert_eq!(network.repository, demo.join("infra.git").to_str().unwrap());
    assert!(
        network.tracked_commit.is_some_and(|c| c.hash.len() == 40),
        "the tracked commit is synced at creation"
    );

    // The poller takes its first look at a repository as the baseline, and says nothing when it
    // has: push to a side branch until a push is noticed (a proposed run on config, planned by
    // real Ansible in check mode), so that the pushes below cannot be swallowed by the baseline.
    git(&infra, &["checkout", "-qb", "warmup"]);
    let playbook = infra.join("config/playbook.yml");
    let mut warmup = None;
    for attempt in 0..30 {
        let text = std::fs::read_to_string(&playbook).unwrap();
        std::fs::write(&playbook, format!("{text}# warm-up {attempt}\n")).unwrap();
        git(&infra, &["commit", "-qam", "config: warm-up"]);
        git(&infra, &["push", "-q", "origin", "warmup"]);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(6) && warmup.is_none() {
            warmup = runs(&api, "config").await.into_iter().next();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if warmup.is_some() {
            break;
        }
    }
    let warmup = warmup.expect("a push to the demo repository is noticed");
    assert_eq!(warmup.r#type, pb::RunType::Proposed as i32, "{warmup:?}");
    wait_state(&api, &warmup.id, &[pb::RunState::Finished]).await;
    git(&infra, &["checkout", "-q", "main"]);

    // A push to the tracked branch: a tracked run that real Terraform plans.
    let main_tf = infra.join("network/main.tf");
    let tf = std::fs::read_to_string(&main_tf).unwrap();
    std::fs::write(
        &main_tf,
        tf.replace("10.0.1.0/24", "10.1.1.0/24")
            .replace("10.0.2.0/24", "10.1.2.0/24"),
    )
    .unwrap();
    git(&infra, &["commit", "-qam", "network: renumber"]);
    // As the "try this" block says: main tracks origin/main in the demo clone.
    git(&infra, &["push", "-q"]);

    let run = new_run(&api, "network", pb::RunType::Tracked, &[]).await;
    let run = wait_state(&api, &run.id, &[pb::RunState::Unconfirmed]).await;
    assert_eq!(
        delta_resources(&run),
        (2, 0, 0),
        "both files are new: {:?}",
        run.delta
    );

    // A targeted replan narrows the delta to one resource.
    env.cairn_ok(&[
        "run",
        "replan",
        &run.id,
        "--target",
        "cairntest_file.subnet_a",
    ]);
    let start = Instant::now();
    let replanned = loop {
        let r = wait_state(&api, &run.id, &[pb::RunState::Unconfirmed]).await;
        if r.targets == ["cairntest_file.subnet_a"] && delta_resources(&r) == (1, 0, 0) {
            break r;
        }
        assert!(start.elapsed() < PATIENCE, "replan never narrowed: {r:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(replanned
        .states_history
        .iter()
        .any(|t| t.state == pb::RunState::ReplanRequested as i32));

    env.cairn_ok(&["run", "confirm", &run.id]);
    // --follow exits 0 only when the run FINISHED.
    let logs = env.cairn_ok(&["run", "logs", &run.id, "--follow"]);
    assert!(
        logs.contains("Apply complete"),
        "terraform apply in logs:\n{logs}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("network-subnet-a.txt")).unwrap(),
        "10.1.1.0/24\n"
    );
    assert!(
        !out.join("network-subnet-b.txt").exists(),
        "the targeted apply leaves subnet_b alone"
    );

    // The trigger policy starts app after network's tracked run finished.
    let app = new_run(&api, "app", pb::RunType::Tracked, &[]).await;
    assert!(
        !app.triggered_by.is_empty(),
        "app's run says what triggered it: {app:?}"
    );
    let app = wait_state(
        &api,
        &app.id,
        &[pb::RunState::Unconfirmed, pb::RunState::Finished],
    )
    .await;
    if app.state == pb::RunState::Unconfirmed as i32 {
        env.cairn_ok(&["run", "confirm", &app.id]);
    }
    wait_state(&api, &app.id, &[pb::RunState::Finished]).await;
    assert!(std::fs::read_to_string(out.join("app.txt"))
        .unwrap()
        .contains("app v1"));

    // A push to another branch: a proposed run that plans and finishes without applying.
    git(&infra, &["checkout", "-qb", "feature/more-subnets"]);
    let tf = std::fs::read_to_string(&main_tf).unwrap();
    std::fs::write(&main_tf, tf.replace("10.1.1.0/24", "10.2.1.0/24")).unwrap();
    git(&infra, &["commit", "-qam", "network: proposal"]);
    git(&infra, &["push", "-q", "origin", "feature/more-subnets"]);
    let proposed = new_run(&api, "network", pb::RunType::Proposed, &[]).await;
    let proposed = wait_state(&api, &proposed.id, &[pb::RunState::Finished]).await;
    assert_eq!(
        proposed.commit.as_ref().map(|c| c.branch.as_str()),
        Some("feature/more-subnets")
    );
    assert_eq!(
        std::fs::read_to_string(out.join("network-subnet-a.txt")).unwrap(),
        "10.1.1.0/24\n",
        "a proposed run never applies"
    );

    // Locks: the admin takes network; another writer is refused with exit code 6.
    env.cairn_ok(&["stack", "lock", "network"]);
    let bob = api
        .system()
        .create_api_key(pb::CreateApiKeyRequest {
            login: "bob".into(),
            name: "bob".into(),
            teams: vec![],
            machine: false,
            role: pb::Role::Writer as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let bob_key = tmp.path().join("bob.key");
    std::fs::write(&bob_key, &bob.secret).unwrap();
    let refused = env.cairn_as(&bob_key, &["stack", "lock", "network"]);
    assert_eq!(
        refused.status.code(),
        Some(6),
        "a second lock is a failed precondition: {}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Ctrl-C stops dev cleanly; a restart keeps the stacks and does not redo the demo.
    drop(api);
    let status = dev.interrupt();
    assert!(
        status.success(),
        "cairn dev exits 0 on SIGINT ({status}); stderr:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let log2 = tmp.path().join("dev2.log");
    let mut dev = Dev::start(&cwd, &home, &tools, &log2);
    dev.wait_for_line("Demo repository:", &log2);
    let env = Env {
        url: dev.url.clone(),
        ..env
    };
    let listed = env.cairn_ok(&["stack", "list"]);
    for s in ["network", "app", "config"] {
        assert!(listed.contains(s), "{s} kept across restarts:\n{listed}");
    }
    assert!(
        !dev.stdout.lock().unwrap().contains("Demo set up"),
        "the demo is not recreated"
    );
    let network = env
        .api()
        .await
        .stacks()
        .get_stack(pb::GetStackRequest {
            stack_id: "network".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stack
        .unwrap();
    assert!(
        !network.locked_by.is_empty(),
        "the lock survives a restart: {network:?}"
    );
    assert!(dev.interrupt().success());
}

/// `--no-demo` sets nothing up; without the provisioned tools the demo says why the Terraform
/// stacks are missing and keeps only what it can run (here: Ansible, linked onto `PATH`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_demo_adapts_to_missing_tools_and_can_be_skipped() {
    let tools = tools_dir();
    check_prerequisites(&tools);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let cwd = tmp.path().join("work");
    let no_tools = tmp.path().join("no-tools");
    let bin = tmp.path().join("bin");
    for d in [&home, &cwd, &no_tools, &bin] {
        std::fs::create_dir_all(d).unwrap();
    }
    let git_path = cairn::demo::on_path("git").expect("git on PATH");
    std::os::unix::fs::symlink(git_path, bin.join("git")).unwrap();
    std::os::unix::fs::symlink(
        tools.join("bin/ansible-playbook"),
        bin.join("ansible-playbook"),
    )
    .unwrap();

    let log = tmp.path().join("dev.log");
    let mut dev = Dev::start_with(&cwd, &home, &no_tools, &log, &["--no-demo"], Some(&bin));
    dev.wait_for_line("Ctrl-C stops.", &log);
    let env = Env {
        home: home.clone(),
        cwd: cwd.clone(),
        url: dev.url.clone(),
        admin_key: cwd.join(".cairn/admin.key"),
    };
    let listed = env.cairn_ok(&["stack", "list", "-o", "json"]);
    assert!(
        !listed.contains("\"config\""),
        "--no-demo: no stacks: {listed}"
    );
    assert!(!cwd.join(".cairn/demo").exists());
    assert!(dev.interrupt().success());

    let log = tmp.path().join("dev2.log");
    let mut dev = Dev::start_with(&cwd, &home, &no_tools, &log, &[], Some(&bin));
    let why = dev.wait_for_line("cargo xtask provision", &log);
    assert!(why.contains("network and app"), "{why}");
    let created = dev.wait_for_line("Demo set up (", &log);
    assert!(created.contains("(config)"), "{created}");
    let env = Env {
        url: dev.url.clone(),
        ..env
    };
    let listed = env.cairn_ok(&["stack", "list"]);
    assert!(listed.contains("config"), "{listed}");
    assert!(!listed.contains("network"), "{listed}");
    assert!(dev.interrupt().success());
}
