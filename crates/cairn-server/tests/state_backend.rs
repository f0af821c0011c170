//! The HTTP state backend against the real Terraform CLI (1.0.3 from the shared tool layout,
//! `$CAIRN_TOOLS_DIR`, default `<workspace>/target/tools`, with the cairntest provider from its
//! filesystem mirror) and against raw HTTP requests for what Terraform never sends on purpose.
//! Credentials come from real leases of a real server on 127.0.0.1:0.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use cairn_proto::agent::v1 as apb;
use cairn_proto::v1 as pb;
use cairn_store::Store;
use common::{TestAgent, TestServer, SHA_A};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tools_dir() -> PathBuf {
    std::env::var_os("CAIRN_TOOLS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools"),
        PathBuf::from,
    )
}

/// A missing tool is a broken test environment, not a skip.
fn required(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask provision` (or set CAIRN_TOOLS_DIR)",
        path.display()
    );
    path
}

struct Creds {
    address: String,
    username: String,
    password: String,
}

impl Creds {
    fn of(lease: &apb::Lease) -> Creds {
        let get = |k: &str| {
            lease
                .env
                .get(k)
                .unwrap_or_else(|| panic!("lease env lacks {k}"))
                .clone()
        };
        Creds {
            address: get("CAIRN_STATE_ADDRESS"),
            username: get("CAIRN_STATE_USERNAME"),
            password: get("CAIRN_STATE_PASSWORD"),
        }
    }

    /// The request path of the state endpoint.
    fn path(&self) -> String {
        let rest = self.address.strip_prefix("http://").unwrap();
        rest[rest.find('/').unwrap()..].to_string()
    }
}

struct Tf {
    bin: PathBuf,
    rc: PathBuf,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Tf {
    fn new() -> Tf {
        let tools = tools_dir();
        Tf {
            bin: required(tools.join("bin/terraform")),
            rc: required(tools.join("terraformrc")),
        }
    }

    async fn run(&self, dir: &Path, args: &[&str]) -> Out {
        let out = tokio::process::Command::new(&self.bin)
            .args(args)
            .current_dir(dir)
            .env("TF_CLI_CONFIG_FILE", &self.rc)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .output()
            .await
            .expect("terraform runs");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn ok(&self, dir: &Path, args: &[&str]) -> Out {
        let out = self.run(dir, args).await;
        assert_eq!(
            out.code, 0,
            "terraform {args:?} failed:\n{}\n{}",
            out.stdout, out.stderr
        );
        out
    }

    /// What runner-tf does: the backend override file and `init -reconfigure` with the lease's
    /// backend settings on the command line, the password in a `-backend-config` file.
    async fn init(&self, dir: &Path, c: &Creds) {
        std::fs::write(
            dir.join("cairn_backend_override.tf"),
            "terraform {\n  backend \"http\" {}\n}\n",
        )
        .unwrap();
        let secret = dir.join("backend-password.hcl");
        std::fs::write(&secret, format!("password = \"{}\"\n", c.password)).unwrap();
        let args = [
            "init".to_string(),
            "-input=false".into(),
            "-no-color".into(),
            "-reconfigure".into(),
            format!("-backend-config=address={}", c.address),
            format!("-backend-config=lock_address={}", c.address),
            format!("-backend-config=unlock_address={}", c.address),
            format!("-backend-config=username={}", c.username),
            format!("-backend-config={}", secret.display()),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(dir, &args).await;
        std::fs::remove_file(&secret).unwrap();
    }
}

/// The managed file lives outside the work trees (as real infrastructure does), so that every
/// work tree sees the same object.
fn write_project(dir: &Path, target: &Path, content: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("main.tf"),
        format!(
            r#"
terraform {{
  required_providers {{
    cairntest = {{ source = "cairn.local/test/cairntest" }}
  }}
}}
resource "cairntest_file" "a" {{
  path    = "{target}"
  content = "{content}"
}}
output "content" {{
  value = cairntest_file.a.content
}}
output "token" {{
  value     = "tok-{content}"
  sensitive = true
}}
"#,
            target = target.display()
        ),
    )
    .unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

struct Reply {
    status: u16,
    body: String,
}

/// One HTTP/1.1 request over a fresh connection (custom methods included).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: &[u8],
    extra_headers: &[(&str, &str)],
) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some((user, pw)) = auth {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        head.push_str(&format!("Authorization: Basic {enc}\r\n"));
    }
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Reply { status, body }
}

struct Fixture {
    server: TestServer,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn fixture(lease_timeout: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        cairn_store_sqlite::SqliteStore::open(dir.path().join("cairn.db"))
            .await
            .unwrap(),
    );
    let server = TestServer::start_on(lease_timeout, Some(store.clone())).await;
    server.stack("net", false, SHA_A).await;
    Fixture {
        server,
        store,
        _dir: dir,
    }
}

async fn current_serial(store: &dyn Store) -> Option<i64> {
    store
        .current_state_version("net", "default")
        .await
        .unwrap()
        .map(|v| v.serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_keeps_its_state_in_cairn_across_work_trees() {
    let f = fixture(Duration::from_secs(60)).await;
    let s = &f.server;
    let tf = Tf::new();
    let mut agent = TestAgent::connect(s, 1).await;
    let run = s.trigger("net", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, run.id);
    let c = Creds::of(&lease);
    assert_eq!(
        c.address,
        format!("http://{}/state/net/default", s.addr),
        "the address is the server's own"
    );
    assert_eq!(c.username, format!("run:{}", run.id));
    assert!(
        lease
            .secret_names
            .contains(&"CAIRN_STATE_PASSWORD".to_string()),
        "the password is masked in logs"
    );
    assert!(!lease.env.contains_key("CAIRN_STATE_READ_ONLY"));

    // First work tree: apply → the first state version, written by this run, lock released.
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("managed/a.txt");
    let one = work.path().join("one");
    write_project(&one, &target, "v1");
    tf.init(&one, &c).await;
    tf.ok(
        &one,
        &["apply", "-auto-approve", "-input=false", "-no-color"],
    )
    .await;
    let v1 = f
        .store
        .current_state_version("net", "default")
        .await
        .unwrap()
        .expect("a state version");
    // Terraform numbers a new state's first write 0.
    assert_eq!(v1.serial, 0);
    assert_eq!(v1.created_by_run, run.id);
    let outputs: Value = serde_json::from_str(&v1.outputs_json).unwrap();
    assert_eq!(
        outputs,
        serde_json::json!({"content": "v1", "token": "***"})
    );
    assert_eq!(
        f.store.get_state_lock("net", "default").await.unwrap(),
        None
    );
    assert!(
        !one.join("terraform.tfstate").exists(),
        "no local state is written"
    );

    // A fresh work tree at the same commit plans nothing: the state came from Cairn.
    let two = work.path().join("two");
    write_project(&two, &target, "v1");
    tf.init(&two, &c).await;
    let plan = tf
        .run(
            &two,
            &["plan", "-detailed-exitcode", "-input=false", "-no-color"],
        )
        .await;
    assert_eq!(
        plan.code, 0,
        "expected a no-op plan:\n{}{}",
        plan.stdout, plan.stderr
    );
    assert_eq!(current_serial(f.store.as_ref()).await, Some(0));

    // A change planned into a file, applied from a copy of the work tree (as a restored
    // workspace is) after another `init -reconfigure`: the next serial.
    write_project(&two, &target, "v2");
    let plan = tf
        .run(
            &two,
            &[
                "plan",
                "-detailed-exitcode",
                "-input=false",
                "-no-color",
                "-out=plan.tfplan",
            ],
        )
        .await;
    assert_eq!(
        plan.code, 2,
        "expected changes:\n{}{}",
        plan.stdout, plan.stderr
    );
    let restored = work.path().join("restored");
    copy_dir(&two, &restored);
    tf.init(&restored, &c).await;
    tf.ok(
        &restored,
        &["apply", "-input=false", "-no-color", "plan.tfplan"],
    )
    .await;
    let v2 = f
        .store
        .current_state_version("net", "default")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v2.serial, 1);
    assert_eq!(v2.lineage, v1.lineage);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "v2");
    let listed = f
        .store
        .list_state_versions("net", "default", &cairn_store::Page::first(10))
        .await
        .unwrap()
        .items;
    assert_eq!(
        listed.iter().map(|v| v.serial).collect::<Vec<_>>(),
        vec![1, 0]
    );

    let addr = s.addr;
    let path = c.path();
    let auth = Some((c.username.as_str(), c.password.as_str()));

    // GET returns the current document.
    let got = http(addr, "GET", &path, auth, b"", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.as_bytes(), v2.body.as_slice());

    // A stale serial is refused and the previous version stays current.
    let stale = http(addr, "POST", &path, auth, &v1.body, &[]).await;
    assert_eq!(stale.status, 409, "{}", stale.body);
    assert_eq!(current_serial(f.store.as_ref()).await, Some(1));

    // So is another lineage, even with a higher serial.
    let mut foreign: Value = serde_json::from_slice(&v2.body).unwrap();
    foreign["serial"] = 3.into();
    foreign["lineage"] = "00000000-0000-0000-0000-000000000000".into();
    let refused = http(
        addr,
        "POST",
        &path,
        auth,
        foreign.to_string().as_bytes(),
        &[],
    )
    .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("lineage"), "{}", refused.body);
    assert_eq!(current_serial(f.store.as_ref()).await, Some(1));

    // Invalid documents: 400 and nothing stored.
    for bad in [
        b"{not json".as_slice(),
        b"[1,2]",
        b"{\"lineage\":\"x\"}",
        b"{\"serial\":9}",
    ] {
        let r = http(addr, "POST", &path, auth, bad, &[]).await;
        assert_eq!(
            r.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(bad),
            r.body
        );
    }
    assert_eq!(current_serial(f.store.as_ref()).await, Some(1));

    // A body above the limit is refused from its declared length.
    let big = (33u64 << 20).to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let enc =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                 Authorization: Basic {enc}\r\nContent-Length: {big}\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    // A held lock: Terraform itself is refused with the holder named, and so are other lockers
    // (423 with the holder's lock info) and writers without the lock's ID (409).
    let info = |id: &str| {
        serde_json::json!({"ID": id, "Operation": "OperationTypeApply", "Who": "test@host",
                           "Version": "1.0.3", "Created": "2024-01-01T00:00:00Z", "Path": "", "Info": ""})
        .to_string()
    };
    let locked = http(addr, "LOCK", &path, auth, info("lock-one").as_bytes(), &[]).await;
    assert_eq!(locked.status, 200, "{}", locked.body);
    let held = http(addr, "LOCK", &path, auth, info("lock-two").as_bytes(), &[]).await;
    assert_eq!(held.status, 423);
    let holder: Value = serde_json::from_str(&held.body).unwrap();
    assert_eq!(holder["ID"], "lock-one");
    assert_eq!(holder["Who"], "test@host");
    let blocked = tf
        .run(
            &two,
            &["plan", "-input=false", "-no-color", "-lock-timeout=0s"],
        )
        .await;
    assert_ne!(blocked.code, 0);
    assert!(
        blocked.stderr.contains("lock-one"),
        "terraform names the holder:\n{}",
        blocked.stderr
    );
    let mut next: Value = serde_json::from_slice(&v2.body).unwrap();
    next["serial"] = 2.into();
    let next = next.to_string();
    let unlocked_write = http(addr, "POST", &path, auth, next.as_bytes(), &[]).await;
    assert_eq!(unlocked_write.status, 409);
    let wrong_id = http(
        addr,
        "POST",
        &format!("{path}?ID=lock-two"),
        auth,
        next.as_bytes(),
        &[],
    )
    .await;
    assert_eq!(wrong_id.status, 409);
    assert_eq!(current_serial(f.store.as_ref()).await, Some(1));
    let with_id = http(
        addr,
        "POST",
        &format!("{path}?ID=lock-one"),
        auth,
        next.as_bytes(),
        &[],
    )
    .await;
    assert_eq!(with_id.status, 200, "{}", with_id.body);
    assert_eq!(current_serial(f.store.as_ref()).await, Some(2));
    // Unlocking needs the lock's ID.
    let wrong = http(
        addr,
        "UNLOCK",
        &path,
        auth,
        info("lock-two").as_bytes(),
        &[],
    )
    .await;
    assert_eq!(wrong.status, 409);
    assert!(f
        .store
        .get_state_lock("net", "default")
        .await
        .unwrap()
        .is_some());
    let right = http(
        addr,
        "UNLOCK",
        &path,
        auth,
        info("lock-one").as_bytes(),
        &[],
    )
    .await;
    assert_eq!(right.status, 200);
    assert_eq!(
        f.store.get_state_lock("net", "default").await.unwrap(),
        None
    );

    // Bad credentials: none, a wrong password, another run's name with this password.
    assert_eq!(http(addr, "GET", &path, None, b"", &[]).await.status, 401);
    let mut wrong_pw = c.password.clone();
    wrong_pw.replace_range(
        0..2,
        if wrong_pw.starts_with("00") {
            "11"
        } else {
            "00"
        },
    );
    assert_eq!(
        http(addr, "GET", &path, Some((&c.username, &wrong_pw)), b"", &[])
            .await
            .status,
        401
    );
    assert_eq!(
        http(
            addr,
            "GET",
            &path,
            Some(("run:run_other", &c.password)),
            b"",
            &[]
        )
        .await
        .status,
        401
    );
    // The run's credentials reach only its own stack and deployment.
    assert_eq!(
        http(addr, "GET", "/state/net/staging", auth, b"", &[])
            .await
            .status,
        403
    );
    assert_eq!(
        http(addr, "DELETE", &path, auth, b"", &[]).await.status,
        405
    );

    // When the run ends its credentials stop working.
    agent
        .event(
            &lease,
            apb::job_event::Event::Failed(apb::JobFailed {
                reason: "done with the test".into(),
            }),
        )
        .await;
    s.wait_state(&run.id, pb::RunState::Failed).await;
    let mut revoked = 0;
    for _ in 0..500 {
        revoked = http(addr, "GET", &path, auth, b"", &[]).await.status;
        if revoked == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(revoked, 401);
}

#[tokio::test]
async fn proposed_runs_read_but_do_not_lock_or_write() {
    let f = fixture(Duration::from_secs(60)).await;
    let s = &f.server;
    let mut agent = TestAgent::connect(s, 1).await;
    let run = s.trigger("net", pb::RunType::Proposed).await;
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, run.id);
    assert_eq!(
        lease.env.get("CAIRN_STATE_READ_ONLY").map(String::as_str),
        Some("1")
    );
    let c = Creds::of(&lease);
    let auth = Some((c.username.as_str(), c.password.as_str()));
    let path = c.path();
    // No state yet: 204, which Terraform reads as empty.
    assert_eq!(http(s.addr, "GET", &path, auth, b"", &[]).await.status, 204);
    let doc = br#"{"version":4,"serial":1,"lineage":"l","outputs":{},"resources":[]}"#;
    assert_eq!(
        http(s.addr, "POST", &path, auth, doc, &[]).await.status,
        403
    );
    assert_eq!(
        http(s.addr, "LOCK", &path, auth, br#"{"ID":"x"}"#, &[])
            .await
            .status,
        403
    );
    assert_eq!(current_serial(f.store.as_ref()).await, None);
}

#[tokio::test]
async fn a_lock_left_by_a_lost_worker_is_released_when_its_run_fails() {
    let f = fixture(Duration::from_millis(800)).await;
    let s = &f.server;
    let mut agent = TestAgent::connect(s, 1).await;
    let run = s.trigger("net", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    let c = Creds::of(&lease);
    let auth = Some((c.username.as_str(), c.password.as_str()));
    let r = http(
        s.addr,
        "LOCK",
        &c.path(),
        auth,
        br#"{"ID":"orphan","Operation":"OperationTypeApply"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        f.store
            .get_state_lock("net", "default")
            .await
            .unwrap()
            .map(|l| (l.id, l.holder_run_id)),
        Some(("orphan".to_string(), run.id.clone()))
    );
    // The agent goes silent: the lease expires, the run fails and its lock goes with it.
    s.wait_state(&run.id, pb::RunState::Failed).await;
    let mut lock = f.store.get_state_lock("net", "default").await.unwrap();
    for _ in 0..500 {
        if lock.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        lock = f.store.get_state_lock("net", "default").await.unwrap();
    }
    assert_eq!(lock, None);
    assert_eq!(
        http(s.addr, "GET", &c.path(), auth, b"", &[]).await.status,
        401
    );
}

#[tokio::test]
async fn stacks_can_keep_their_own_backend() {
    let f = fixture(Duration::from_secs(60)).await;
    let s = &f.server;
    s.stacks(&s.admin)
        .set_env_var(pb::SetEnvVarRequest {
            stack_id: "net".into(),
            var: Some(pb::EnvVar {
                name: "CAIRN_MANAGED_STATE".into(),
                value: "false".into(),
                secret: false,
            }),
        })
        .await
        .unwrap();
    let mut agent = TestAgent::connect(s, 1).await;
    s.trigger("net", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    let names: HashMap<_, _> = lease.env.iter().collect();
    assert!(!names.keys().any(|k| k.starts_with("CAIRN_STATE_")));
}
