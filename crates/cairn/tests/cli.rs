//! Drives the real `cairn` binary against a real server started in this process on
//! 127.0.0.1:0 (SQLite in a temporary directory, no agent: runs stay QUEUED until steered).

use std::path::{Path, PathBuf};
use std::process::Output;

use cairn::client::Api;
use cairn::profile::Connection;
use cairn_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

struct TestServer {
    url: String,
    admin_key: PathBuf,
    data_dir: tempfile::TempDir,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    async fn start() -> TestServer {
        let data_dir = tempfile::tempdir().unwrap();
        let overrides = cairn_server::ConfigLayer {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(data_dir.path().join("data")),
            ..Default::default()
        };
        // An explicit, empty environment: CAIRN_* variables of the caller must not leak in.
        let config = cairn_server::Config::load_with_env(None, |_| None, overrides).unwrap();
        let admin_key = config.admin_key_path();
        let server = cairn_server::Server::builder(config).build().await.unwrap();
        let listener = server.bind().await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async move { s.cancelled().await })
                .await
                .unwrap();
        });
        TestServer {
            url,
            admin_key,
            data_dir,
            stop,
            task: Some(task),
        }
    }

    fn home(&self) -> PathBuf {
        let h = self.data_dir.path().join("home");
        std::fs::create_dir_all(&h).unwrap();
        h
    }

    /// Runs `cairn` with a clean environment, in a directory without `.cairn/`.
    async fn cairn(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let home = self.home();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(args)
            .env_clear()
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("NO_COLOR", "1")
            .current_dir(&home);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().await.unwrap()
    }

    /// `cairn --server URL --api-key-file admin.key ARGS`.
    async fn admin(&self, args: &[&str]) -> Output {
        let key = self.admin_key.to_str().unwrap().to_string();
        let mut all = vec!["--server", &self.url, "--api-key-file", &key];
        all.extend_from_slice(args);
        self.cairn(&[], &all).await
    }

    async fn admin_api(&self) -> Api {
        let key = std::fs::read_to_string(&self.admin_key).unwrap();
        Api::connect(&Connection {
            server: self.url.clone(),
            api_key: Some(key.trim().to_string()),
        })
        .await
        .unwrap()
        .0
    }

    /// A second user's key, written to a file.
    async fn user_key(&self, login: &str, role: pb::Role) -> PathBuf {
        let api = self.admin_api().await;
        let res = api
            .system()
            .create_api_key(pb::CreateApiKeyRequest {
                login: login.into(),
                name: login.into(),
                teams: vec![],
                machine: false,
                role: role as i32,
            })
            .await
            .unwrap()
            .into_inner();
        let path = self.data_dir.path().join(format!("{login}.key"));
        std::fs::write(&path, &res.secret).unwrap();
        path
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

#[track_caller]
fn assert_exit(o: &Output, code: i32, needle: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "errors are one line: {err:?}"
    );
}

fn json(o: &Output) -> serde_json::Value {
    assert_ok(o);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// A local Git repository with one commit, so that the stack has a real tracked commit.
fn git_repo(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let git = |args: &[&str]| {
        let s = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .status()
            .unwrap();
        assert!(s.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("main.tf"), "output \"x\" { value = 1 }\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    dir.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacks_locks_and_runs_through_the_binary() {
    let srv = TestServer::start().await;
    let repo = git_repo(&srv.data_dir.path().join("repo"));

    let who = srv.admin(&["whoami"]).await;
    assert_ok(&who);
    assert!(stdout(&who).starts_with("admin (user, admin) on http://127.0.0.1:"));

    let created = srv
        .admin(&[
            "stack",
            "create",
            "net",
            "--repository",
            &repo,
            "--vendor",
            "terraform",
            "--label",
            "team-a",
            "--env",
            "TF_VAR_x=1",
            "--secret-env",
            "TOKEN=s3cret",
        ])
        .await;
    assert_ok(&created);
    assert!(stdout(&created).contains("Created stack net"));

    let list = srv.admin(&["stack", "list"]).await;
    assert_ok(&list);
    let text = stdout(&list);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("ID   VENDOR     BRANCH  STATE"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("net  terraform  main    NONE"),
        "{text}"
    );
    // Columns line up: every header starts where its cells start.
    let state_col = lines[0].find("STATE").unwrap();
    assert_eq!(&lines[1][state_col..state_col + 4], "NONE");

    let listed = json(
        &srv.admin(&["stack", "list", "-o", "json", "--label", "team-a"])
            .await,
    );
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let none = json(
        &srv.admin(&["stack", "list", "-o", "json", "--label", "nope"])
            .await,
    );
    assert_eq!(none.as_array().unwrap().len(), 0);

    let shown = json(
        &srv.admin(&["stack", "show", "net", "--output", "json"])
            .await,
    );
    assert_eq!(shown["id"], "net");
    assert_eq!(shown["vendor"], "terraform");
    assert_eq!(shown["labels"][0], "team-a");

    let vars = json(
        &srv.admin(&["stack", "env", "list", "net", "-o", "json"])
            .await,
    );
    let token = vars
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "TOKEN")
        .unwrap();
    assert_eq!(token["secret"], true);
    assert_eq!(token["value"], "", "secret values are never shown");

    let updated = srv
        .admin(&["stack", "update", "net", "--autodeploy", "true"])
        .await;
    assert_ok(&updated);
    let shown = json(&srv.admin(&["stack", "show", "net", "-o", "json"]).await);
    assert_eq!(shown["autodeploy"], true);

    // Locks: admin holds it; another user is refused with the precondition exit code.
    assert_ok(
        &srv.admin(&["stack", "lock", "net", "--note", "maintenance"])
            .await,
    );
    let shown = json(&srv.admin(&["stack", "show", "net", "-o", "json"]).await);
    assert_eq!(shown["locked_by"], "admin");
    let bob_key = srv.user_key("bob", pb::Role::Writer).await;
    let bob_key = bob_key.to_str().unwrap();
    let bob_lock = srv
        .cairn(
            &[],
            &[
                "--server",
                &srv.url,
                "--api-key-file",
                bob_key,
                "stack",
                "lock",
                "net",
            ],
        )
        .await;
    assert_exit(&bob_lock, 6, "admin");
    let bob_unlock = srv
        .cairn(
            &[("CAIRN_SERVER", &srv.url)],
            &["--api-key-file", bob_key, "stack", "unlock", "net"],
        )
        .await;
    assert_exit(&bob_unlock, 6, "error: ");
    assert_ok(&srv.admin(&["stack", "unlock", "net"]).await);

    // Runs: no agent is connected, so a triggered run waits in QUEUED.
    assert_ok(&srv.admin(&["stack", "sync", "net"]).await);
    let triggered = json(&srv.admin(&["run", "trigger", "net", "-o", "json"]).await);
    let run_id = triggered["id"].as_str().unwrap().to_string();
    assert_eq!(triggered["state"], "QUEUED");
    assert_eq!(triggered["type"], "TRACKED");

    let proposed = json(
        &srv.admin(&["run", "trigger", "net", "--proposed", "-o", "json"])
            .await,
    );
    assert_eq!(proposed["type"], "PROPOSED");

    let runs = srv.admin(&["run", "list", "net"]).await;
    assert_ok(&runs);
    let text = stdout(&runs);
    assert!(text.starts_with("ID "), "{text}");
    assert!(text.contains(&run_id), "{text}");
    assert!(text.contains("+0 ~0 -0"), "{text}");
    assert!(text.contains("user:admin"), "{text}");
    let runs = json(&srv.admin(&["run", "list", "net", "-o", "json"]).await);
    assert_eq!(runs.as_array().unwrap().len(), 2);

    let shown = srv.admin(&["run", "show", &run_id]).await;
    assert_ok(&shown);
    let text = stdout(&shown);
    assert!(text.contains("State      QUEUED"), "{text}");
    assert!(
        text.contains("resources +0 ~0 -0   outputs +0 ~0 -0"),
        "{text}"
    );
    let shown = json(&srv.admin(&["run", "show", &run_id, "-o", "json"]).await);
    assert_eq!(shown["stack_id"], "net");
    assert_eq!(shown["states_history"][0]["state"], "QUEUED");

    // A QUEUED run cannot be confirmed: the server's state machine refuses, exit 6.
    assert_exit(&srv.admin(&["run", "confirm", &run_id]).await, 6, "error: ");

    let canceled = srv.admin(&["run", "cancel", &run_id]).await;
    assert_ok(&canceled);
    assert!(
        stdout(&canceled).contains("CANCELED"),
        "{}",
        stdout(&canceled)
    );

    // Following a run that ended in anything but FINISHED exits 9.
    let follow = srv.admin(&["run", "logs", &run_id, "--follow"]).await;
    assert_exit(&follow, 9, "ended CANCELED");

    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_their_exit_codes() {
    let srv = TestServer::start().await;

    // Missing things: 5.
    assert_exit(&srv.admin(&["stack", "show", "nope"]).await, 5, "not found");
    assert_exit(
        &srv.admin(&["run", "show", "0190aaaabbbbccccddddeeeeffff0000"])
            .await,
        5,
        "not found",
    );

    // Wrong key: 4, and the message says how to fix it.
    let wrong = srv.data_dir.path().join("wrong.key");
    std::fs::write(&wrong, "cairn_not_a_real_key").unwrap();
    let o = srv
        .cairn(
            &[],
            &[
                "--server",
                &srv.url,
                "--api-key-file",
                wrong.to_str().unwrap(),
                "stack",
                "list",
            ],
        )
        .await;
    assert_exit(&o, 4, "cairn login --server");

    // No key at all (no profile, no env, no .cairn here): 4.
    let o = srv.cairn(&[("CAIRN_SERVER", &srv.url)], &["whoami"]).await;
    assert_exit(&o, 4, "no API key");

    // A reader may not write: 4.
    let reader = srv.user_key("rita", pb::Role::Reader).await;
    let o = srv
        .cairn(
            &[
                ("CAIRN_SERVER", &srv.url),
                ("CAIRN_API_KEY", &std::fs::read_to_string(&reader).unwrap()),
            ],
            &["stack", "create", "x", "--repository", "/r"],
        )
        .await;
    assert_exit(&o, 4, "permission denied");

    // Unreachable: 3. Bind and drop to find a port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{closed}");
    let o = srv
        .cairn(
            &[("CAIRN_SERVER", &url), ("CAIRN_API_KEY", "k")],
            &["stack", "list"],
        )
        .await;
    assert_exit(&o, 3, "cannot reach the Cairn server");

    // Invalid input is refused before any request: 7 even though the server is unreachable.
    let o = srv
        .cairn(
            &[("CAIRN_SERVER", &url), ("CAIRN_API_KEY", "k")],
            &["stack", "show", "Not_A_Slug"],
        )
        .await;
    assert_exit(&o, 7, "not a slug");
    let o = srv
        .cairn(
            &[("CAIRN_SERVER", &url), ("CAIRN_API_KEY", "k")],
            &["run", "show", "123"],
        )
        .await;
    assert_exit(&o, 7, "not a run id");
    let o = srv
        .cairn(
            &[("CAIRN_SERVER", &url), ("CAIRN_API_KEY", "k")],
            &[
                "policy",
                "create",
                "p",
                "--type",
                "plan",
                "--body",
                "/does/not/exist.rego",
            ],
        )
        .await;
    assert_exit(&o, 7, "/does/not/exist.rego");

    // Usage errors: 2, with a suggestion.
    let o = srv.cairn(&[], &["stak", "list"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("'stack'"), "{}", stderr(&o));

    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_saves_profiles_used_by_later_commands() {
    let srv = TestServer::start().await;
    let key = srv.admin_key.to_str().unwrap().to_string();

    let o = srv
        .cairn(
            &[],
            &[
                "login",
                "--server",
                &srv.url,
                "--api-key-file",
                &key,
                "--profile",
                "local",
            ],
        )
        .await;
    assert_ok(&o);
    assert!(stdout(&o).contains("as admin"), "{}", stdout(&o));
    let profiles = srv.home().join(".config/cairn/profiles.toml");
    let text = std::fs::read_to_string(&profiles).unwrap();
    assert!(text.contains("current = \"local\""), "{text}");

    // No flags: the current profile is used.
    let o = srv.cairn(&[], &["whoami", "-o", "json"]).await;
    let v = json(&o);
    assert_eq!(v["login"], "admin");
    assert_eq!(v["server"], srv.url.as_str());

    // A second profile with a bad key; selecting it by flag or env fails with exit 4.
    let bad = srv.data_dir.path().join("bad.key");
    std::fs::write(&bad, "nope").unwrap();
    let o = srv
        .cairn(
            &[],
            &[
                "login",
                "--server",
                &srv.url,
                "--api-key-file",
                bad.to_str().unwrap(),
                "--profile",
                "bad",
            ],
        )
        .await;
    assert_exit(&o, 4, "refused the API key");
    // The failed login saved nothing.
    let text = std::fs::read_to_string(&profiles).unwrap();
    assert!(!text.contains("[profiles.bad]"), "{text}");

    let o = srv.cairn(&[], &["whoami", "--profile", "missing"]).await;
    assert_exit(&o, 7, "no profile named \"missing\"");

    // Env overrides the profile's key.
    let o = srv.cairn(&[("CAIRN_API_KEY", "nope")], &["whoami"]).await;
    assert_exit(&o, 4, "refused the API key");

    srv.shutdown().await;
}

/// A server that answers GetVersion with another API version.
struct FutureServer;

#[tonic::async_trait]
impl pb::system_service_server::SystemService for FutureServer {
    async fn get_version(
        &self,
        _: tonic::Request<pb::GetVersionRequest>,
    ) -> Result<tonic::Response<pb::GetVersionResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::GetVersionResponse {
            version: "9.0.0".into(),
            api_version: cairn::client::API_VERSION + 1,
        }))
    }
    async fn who_am_i(
        &self,
        _: tonic::Request<pb::WhoAmIRequest>,
    ) -> Result<tonic::Response<pb::WhoAmIResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the CLI must stop at GetVersion",
        ))
    }
    async fn create_api_key(
        &self,
        _: tonic::Request<pb::CreateApiKeyRequest>,
    ) -> Result<tonic::Response<pb::CreateApiKeyResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not needed"))
    }
    async fn list_api_keys(
        &self,
        _: tonic::Request<pb::ListApiKeysRequest>,
    ) -> Result<tonic::Response<pb::ListApiKeysResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not needed"))
    }
    async fn revoke_api_key(
        &self,
        _: tonic::Request<pb::RevokeApiKeyRequest>,
    ) -> Result<tonic::Response<pb::RevokeApiKeyResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not needed"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_api_version_is_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(pb::system_service_server::SystemServiceServer::new(
                FutureServer,
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { s.cancelled().await },
            )
            .await
            .unwrap();
    });
    let home = tempfile::tempdir().unwrap();
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["stack", "list"])
        .env_clear()
        .env("HOME", home.path())
        .env("CAIRN_SERVER", &url)
        .env("CAIRN_API_KEY", "k")
        .current_dir(home.path())
        .output()
        .await
        .unwrap();
    assert_exit(&o, 8, "API version 2");
    stop.cancel();
    task.await.unwrap();
}

/// `cairn state`: import a state file, list its versions, show outputs as `terraform output`
/// does (sensitive hidden), restore an older version as an admin and not as a writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_verbs_import_list_outputs_and_restore() {
    let srv = TestServer::start().await;
    let repo = git_repo(&srv.data_dir.path().join("repo"));
    assert_ok(
        &srv.admin(&[
            "stack",
            "create",
            "net",
            "--repository",
            &repo,
            "--vendor",
            "terraform",
        ])
        .await,
    );
    assert_ok(&srv.admin(&["stack", "sync", "net"]).await);
    let state = |serial: i64, vpc: &str| {
        serde_json::json!({
            "version": 4, "terraform_version": "1.0.3", "serial": serial,
            "lineage": "9d3c7f2e-1111-2222-3333-444455556666",
            "outputs": {
                "vpc_id": {"value": vpc, "type": "string"},
                "token": {"value": "hunter2", "type": "string", "sensitive": true}
            },
            "resources": []
        })
        .to_string()
    };
    let file = srv.data_dir.path().join("terraform.tfstate");
    std::fs::write(&file, state(4, "vpc-1")).unwrap();
    let file = file.to_str().unwrap();

    let none = srv.admin(&["state", "list", "net"]).await;
    assert_ok(&none);
    assert_eq!(stdout(&none), "net/default has no state yet.\n");

    let imported = srv.admin(&["state", "import", "net", file]).await;
    assert_ok(&imported);
    assert!(
        stdout(&imported).starts_with("Imported serial 4 (lineage 9d3c7f2e-"),
        "{}",
        stdout(&imported)
    );
    let again = srv.admin(&["state", "import", "net", file]).await;
    assert_exit(&again, 6, "already has state");

    let outputs = srv.admin(&["state", "outputs", "net"]).await;
    assert_ok(&outputs);
    assert_eq!(
        stdout(&outputs),
        "token = <sensitive>\nvpc_id = \"vpc-1\"\n"
    );
    assert!(!stdout(&outputs).contains("hunter2"));
    let as_json = json(&srv.admin(&["state", "outputs", "net", "-o", "json"]).await);
    assert_eq!(as_json["serial"], 4);
    assert_eq!(as_json["outputs"][1]["value"], "vpc-1");
    assert_eq!(as_json["outputs"][0]["value"], serde_json::Value::Null);

    // A forced import replaces it as serial 5, then serial 4 is restored as serial 6.
    std::fs::write(
        srv.data_dir.path().join("terraform.tfstate"),
        state(1, "vpc-2"),
    )
    .unwrap();
    assert_ok(
        &srv.admin(&["state", "import", "net", file, "--force"])
            .await,
    );
    let writer = srv.user_key("walt", pb::Role::Writer).await;
    let denied = srv
        .cairn(
            &[],
            &[
                "--server",
                &srv.url,
                "--api-key-file",
                writer.to_str().unwrap(),
                "state",
                "restore",
                "net",
                "4",
            ],
        )
        .await;
    assert_exit(&denied, 4, "admin");
    let restored = srv.admin(&["state", "restore", "net", "4"]).await;
    assert_ok(&restored);
    assert_eq!(
        stdout(&restored),
        "Restored serial 4 of net/default as serial 6.\n"
    );
    let listed = json(&srv.admin(&["state", "list", "net", "-o", "json"]).await);
    let serials: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["serial"].as_i64().unwrap())
        .collect();
    assert_eq!(serials, [6, 5, 4]);
    assert_eq!(listed[0]["outputs"][1]["value"], "vpc-1");
    assert!(listed[0]["note"]
        .as_str()
        .unwrap()
        .starts_with("restored from serial 4 by admin"));
    let table = srv.admin(&["state", "list", "net"]).await;
    assert_ok(&table);
    assert!(
        stdout(&table).starts_with("SERIAL  CREATED"),
        "{}",
        stdout(&table)
    );
    let bad = srv
        .admin(&["state", "import", "net", "/nonexistent.tfstate"])
        .await;
    assert_exit(&bad, 7, "/nonexistent.tfstate");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_and_config_version_verbs() {
    let srv = TestServer::start().await;
    let repo = git_repo(&srv.data_dir.path().join("repo"));
    assert_ok(
        &srv.admin(&[
            "stack",
            "create",
            "app",
            "--repository",
            &repo,
            "--vendor",
            "terraform",
        ])
        .await,
    );
    assert_ok(&srv.admin(&["stack", "sync", "app"]).await);
    let none = srv.admin(&["deployment", "list", "app"]).await;
    assert_ok(&none);
    assert!(
        stdout(&none).contains("declares no deployments"),
        "{}",
        stdout(&none)
    );

    let bad = srv.admin(&["deployment", "create", "app", "Prod"]).await;
    assert_exit(&bad, 7, "invalid name");
    let created = srv
        .admin(&[
            "deployment",
            "create",
            "app",
            "prod",
            "--input",
            "region=eu",
            "--input",
            "replicas=3",
            "--auto-approve",
        ])
        .await;
    assert_ok(&created);
    let dup = srv.admin(&["deployment", "create", "app", "prod"]).await;
    assert_exit(&dup, 6, "collides");

    let listed = json(
        &srv.admin(&["deployment", "list", "app", "-o", "json"])
            .await,
    );
    assert_eq!(listed[0]["name"], "prod");
    assert_eq!(listed[0]["inputs"]["region"], "eu");
    assert_eq!(listed[0]["inputs"]["replicas"], 3);
    assert_eq!(listed[0]["auto_approve"], true);
    assert_eq!(listed[0]["declared_in"], "api");

    let made = json(
        &srv.admin(&["config-version", "create", "app", "-o", "json"])
            .await,
    );
    assert_eq!(made["configuration_version"]["seq"], 1);
    assert_eq!(made["configuration_version"]["source"], "MANUAL");
    assert_eq!(made["run_ids"].as_array().map(Vec::len), Some(1));
    let versions = srv.admin(&["config-version", "list", "app"]).await;
    assert_ok(&versions);
    let text = stdout(&versions);
    assert!(text.starts_with("SEQ  COMMIT"), "{text}");
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.contains("MANUAL") && l.contains("prod")),
        "{text}"
    );

    let deleted = srv.admin(&["deployment", "delete", "app", "prod"]).await;
    assert_ok(&deleted);
    assert!(
        stdout(&deleted).contains("is being removed: runs "),
        "{}",
        stdout(&deleted)
    );
    let listed = json(
        &srv.admin(&["deployment", "list", "app", "-o", "json"])
            .await,
    );
    assert_eq!(listed[0]["deleted"], true);
}
