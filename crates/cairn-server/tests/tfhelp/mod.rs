//! Helpers for tests that drive the real Terraform CLI (1.0.3 from the shared tool layout,
//! `$CAIRN_TOOLS_DIR`, default `<workspace>/target/tools`, with the cairntest provider from its
//! filesystem mirror) against the state backend, and raw HTTP for what Terraform never sends.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use base64::Engine as _;
use cairn_proto::agent::v1 as apb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn tools_dir() -> PathBuf {
    std::env::var_os("CAIRN_TOOLS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools"),
        PathBuf::from,
    )
}

/// A missing tool is a broken test environment, not a skip.
pub fn required(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask provision` (or set CAIRN_TOOLS_DIR)",
        path.display()
    );
    path
}

pub struct Creds {
    pub address: String,
    pub username: String,
    pub password: String,
}

impl Creds {
    pub fn of(lease: &apb::Lease) -> Creds {
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
    pub fn path(&self) -> String {
        let rest = self.address.strip_prefix("http://").unwrap();
        rest[rest.find('/').unwrap()..].to_string()
    }
}

pub struct Tf {
    pub bin: PathBuf,
    pub rc: PathBuf,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Tf {
    pub fn new() -> Tf {
        let tools = tools_dir();
        Tf {
            bin: required(tools.join("bin/terraform")),
            rc: required(tools.join("terraformrc")),
        }
    }

    pub async fn run(&self, dir: &Path, args: &[&str]) -> Out {
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

    pub async fn ok(&self, dir: &Path, args: &[&str]) -> Out {
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
    pub async fn init(&self, dir: &Path, c: &Creds) {
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
pub fn write_project(dir: &Path, target: &Path, content: &str) {
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

pub fn copy_dir(from: &Path, to: &Path) {
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

pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// One HTTP/1.1 request over a fresh connection (custom methods included).
pub async fn http(
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
