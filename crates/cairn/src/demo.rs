//! The demo that `cairn dev` sets up on its first start: a local Git repository with two
//! Terraform projects and an Ansible one, stacks over it, and the `depends-on:` trigger policy,
//! so that `git push` in `.cairn/demo/infra` shows the whole flow without any account anywhere.
//!
//! Everything goes through the public API with the admin key, as a person would do it by hand,
//! so the demo exercises the same paths as real use.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use cairn_proto::v1 as pb;

use crate::client::Api;
use crate::error::CliError;
use crate::profile::Connection;

/// Below the data directory; its presence means the demo was set up already.
pub const DEMO_DIR: &str = "demo";

/// The trigger policy from the product documentation: a finished tracked run on stack X triggers
/// every stack labelled `depends-on:X`.
pub const DEPENDS_ON_POLICY: &str = r#"package spacelift

trigger[stack.id] {
  stack := input.stacks[_]
  input.run.state == "FINISHED"
  input.run.type == "TRACKED"
  stack.labels[_] == concat("", ["depends-on:", input.stack.id])
}
"#;

const NETWORK_TF: &str = r#"terraform {
  required_providers {
    cairntest = { source = "cairn.local/test/cairntest" }
  }
}

# Set by the stack's environment (TF_VAR_out_dir): where the demo's "infrastructure" lives.
variable "out_dir" {
  type = string
}

resource "cairntest_file" "subnet_a" {
  path    = "${var.out_dir}/network-subnet-a.txt"
  content = "10.0.1.0/24\n"
}

resource "cairntest_file" "subnet_b" {
  path    = "${var.out_dir}/network-subnet-b.txt"
  content = "10.0.2.0/24\n"
}

output "subnets" {
  value = [cairntest_file.subnet_a.content, cairntest_file.subnet_b.content]
}
"#;

const APP_TF: &str = r#"terraform {
  required_providers {
    cairntest = { source = "cairn.local/test/cairntest" }
  }
}

variable "out_dir" {
  type = string
}

# Runs after `network` thanks to the stack label depends-on:network and the trigger policy.
resource "cairntest_file" "app" {
  path    = "${var.out_dir}/app.txt"
  content = "app v1 deployed into the demo network\n"
}

output "app_file" {
  value = cairntest_file.app.path
}
"#;

const PLAYBOOK: &str = r#"- name: Demo configuration
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the demo config file
      ansible.builtin.copy:
        dest: "{{ lookup('ansible.builtin.env', 'CAIRN_DEMO_OUT') }}/config.txt"
        content: "configured by Ansible through Cairn\n"
        mode: "0644"
"#;

const INVENTORY: &str =
    "localhost ansible_connection=local ansible_python_interpreter=\"{{ ansible_playbook_python }}\"\n";

const README: &str = "# Cairn demo infrastructure\n\n\
Stacks: `network` (Terraform), `app` (Terraform, label `depends-on:network`), `config` (Ansible).\n\
Edit a file, `git commit -am ...`, `git push`: Cairn notices the push and plans.\n";

/// Where the shared tools live: `CAIRN_TOOLS_DIR`, else `./target/tools` (a source checkout
/// after `cargo xtask provision`).
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("CAIRN_TOOLS_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => std::env::current_dir()
            .unwrap_or_default()
            .join("target")
            .join("tools"),
    }
}

/// Points the embedded agent's plugins at the provisioned tools. The plugins inherit this
/// process's environment, so this must run in `main` before the async runtime starts any
/// thread: changing the environment is only sound while the process is single-threaded.
pub fn apply_tool_env(tools: &Path) {
    let rc = tools.join("terraformrc");
    if !rc.is_file() {
        return;
    }
    let mut path = vec![tools.join("bin")];
    if let Some(existing) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&existing));
    }
    let joined = std::env::join_paths(path).unwrap_or_else(|_| OsString::from(tools.join("bin")));
    std::env::set_var("PATH", joined);
    std::env::set_var("TF_CLI_CONFIG_FILE", rc);
}

/// A program of that name on `PATH`, if any.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// What the demo can run here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The cairntest provider is reachable (a terraformrc in the tools directory).
    pub terraform: bool,
    pub ansible: bool,
}

impl Capabilities {
    pub fn detect(tools: &Path) -> Capabilities {
        Capabilities {
            terraform: tools.join("terraformrc").is_file() && on_path("terraform").is_some(),
            ansible: on_path("ansible-playbook").is_some(),
        }
    }
}

/// What [`ensure`] did.
#[derive(Debug)]
pub enum Outcome {
    /// The demo directory existed: nothing was touched.
    AlreadyThere,
    /// Set up now, with these stacks.
    Created { stacks: Vec<String> },
}

/// Sets the demo up unless `<data_dir>/demo` exists. On failure the demo directory is removed
/// again so that the next start retries instead of keeping half a demo.
pub async fn ensure(url: &str, data_dir: &Path, caps: Capabilities) -> Result<Outcome, CliError> {
    let demo = data_dir.join(DEMO_DIR);
    if demo.exists() {
        return Ok(Outcome::AlreadyThere);
    }
    match create(url, data_dir, &demo, caps).await {
        Ok(stacks) => Ok(Outcome::Created { stacks }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&demo);
            Err(e)
        }
    }
}

async fn create(
    url: &str,
    data_dir: &Path,
    demo: &Path,
    caps: Capabilities,
) -> Result<Vec<String>, CliError> {
    let bare = demo.join("infra.git");
    let work = demo.join("infra");
    let out = demo.join("out");
    std::fs::create_dir_all(&out).map_err(|e| file_err(&out, e))?;

    git(demo, &["init", "--quiet", "--bare", path_str(&bare)?]).await?;
    git(&bare, &["symbolic-ref", "HEAD", "refs/heads/main"]).await?;
    git(
        demo,
        &["clone", "--quiet", path_str(&bare)?, path_str(&work)?],
    )
    .await?;
    git(&work, &["symbolic-ref", "HEAD", "refs/heads/main"]).await?;
    // Commits made by hand in the clone need an identity; keep the person's own if they have one.
    if git(&work, &["config", "user.email"]).await.is_err() {
        git(&work, &["config", "user.name", "Cairn demo"]).await?;
        git(&work, &["config", "user.email", "demo@cairn.invalid"]).await?;
    }
    let files: [(&str, &str); 6] = [
        ("README.md", README),
        ("network/main.tf", NETWORK_TF),
        ("app/main.tf", APP_TF),
        ("config/playbook.yml", PLAYBOOK),
        ("config/inventory", INVENTORY),
        (".gitignore", ".terraform/\n"),
    ];
    for (rel, text) in files {
        let p = work.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| file_err(parent, e))?;
        }
        std::fs::write(&p, text).map_err(|e| file_err(&p, e))?;
    }
    git(&work, &["add", "-A"]).await?;
    git(
        &work,
        &[
            "commit",
            "--quiet",
            "-m",
            "Demo infrastructure: network, app, config",
        ],
    )
    .await?;
    git(
        &work,
        &["push", "--quiet", "--set-upstream", "origin", "main"],
    )
    .await?;

    let key_path = data_dir.join(crate::profile::ADMIN_KEY_FILE);
    let key = std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, e))?;
    let (api, _) = Api::connect(&Connection {
        server: url.to_string(),
        api_key: Some(key.trim().to_string()),
    })
    .await?;

    let repository = path_str(&bare)?.to_string();
    let out_dir = path_str(&out)?.to_string();
    let mut specs = Vec::new();
    if caps.terraform {
        specs.push(StackSpec {
            id: "network",
            vendor: "terraform",
            labels: &["demo"],
            autodeploy: false,
            env: ("TF_VAR_out_dir", out_dir.clone()),
            description: "Demo: two files standing in for subnets",
        });
        specs.push(StackSpec {
            id: "app",
            vendor: "terraform",
            labels: &["demo", "depends-on:network"],
            autodeploy: true,
            env: ("TF_VAR_out_dir", out_dir.clone()),
            description: "Demo: triggered after network by the depends-on policy",
        });
    }
    if caps.ansible {
        specs.push(StackSpec {
            id: "config",
            vendor: "ansible",
            labels: &[],
            autodeploy: false,
            env: ("CAIRN_DEMO_OUT", out_dir.clone()),
            description: "Demo: an Ansible playbook on localhost",
        });
    }
    if caps.terraform {
        create_policy(&api).await?;
    }
    let mut created = Vec::new();
    for spec in &specs {
        create_stack(&api, &repository, spec).await?;
        let res = api
            .stacks()
            .sync_stack(pb::SyncStackRequest {
                stack_id: spec.id.to_string(),
                commit: None,
            })
            .await;
        res.map_err(|s| api.err(s))?;
        created.push(spec.id.to_string());
    }
    Ok(created)
}

struct StackSpec {
    id: &'static str,
    vendor: &'static str,
    labels: &'static [&'static str],
    autodeploy: bool,
    env: (&'static str, String),
    description: &'static str,
}

async fn create_stack(api: &Api, repository: &str, spec: &StackSpec) -> Result<(), CliError> {
    let stack = pb::Stack {
        id: spec.id.to_string(),
        name: spec.id.to_string(),
        description: spec.description.to_string(),
        repository: repository.to_string(),
        branch: "main".into(),
        project_root: spec.id.to_string(),
        vendor: spec.vendor.to_string(),
        labels: spec.labels.iter().map(|l| l.to_string()).collect(),
        autodeploy: spec.autodeploy,
        ..Default::default()
    };
    let res = api
        .stacks()
        .create_stack(pb::CreateStackRequest {
            stack: Some(stack),
            env: vec![pb::EnvVar {
                name: spec.env.0.to_string(),
                value: spec.env.1.clone(),
                secret: false,
            }],
        })
        .await;
    match res {
        Ok(_) => Ok(()),
        // A stack left by an interrupted first start: the demo directory is new, the stack is
        // not; keep it rather than fail every start from now on.
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(api.err(s)),
    }
}

async fn create_policy(api: &Api) -> Result<(), CliError> {
    let res = api
        .policies()
        .create_policy(pb::CreatePolicyRequest {
            policy: Some(pb::Policy {
                id: "depends-on".into(),
                name: "Trigger stacks labelled depends-on:<stack>".into(),
                r#type: pb::PolicyType::Trigger as i32,
                body: DEPENDS_ON_POLICY.into(),
                labels: vec!["autoattach:demo".into()],
                ..Default::default()
            }),
        })
        .await;
    match res {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(api.err(s)),
    }
}

fn path_str(p: &Path) -> Result<&str, CliError> {
    p.to_str()
        .ok_or_else(|| CliError::Invalid(format!("{}: not valid UTF-8", p.display())))
}

fn file_err(path: &Path, source: std::io::Error) -> CliError {
    CliError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs the real `git` CLI; its stderr becomes the error.
async fn git(dir: &Path, args: &[&str]) -> Result<String, CliError> {
    let out = tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| CliError::Other(format!("running git (is it installed?): {e}")))?;
    if !out.status.success() {
        return Err(CliError::Other(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The "try this" block printed after the demo was set up. Git runs with `-C` so that the
/// commands stay in the dev directory, where the CLI finds `.cairn/admin.key`.
pub fn try_this(data_dir: &Path, stacks: &[String]) -> String {
    let infra = data_dir.join(DEMO_DIR).join("infra");
    let infra = infra.display();
    let mut s = format!(
        "Demo set up ({}) in {infra}. Try this:\n",
        stacks.join(", ")
    );
    if stacks.iter().any(|s| s == "network") {
        s.push_str(&format!(
            "  $EDITOR {infra}/network/main.tf   # change a subnet's content\n  \
             git -C {infra} commit -qam 'network: change' && git -C {infra} push -q\n  \
             cairn run list network        # a tracked run plans, then waits UNCONFIRMED\n  \
             cairn run confirm <run id>    # applies; then watch app get triggered:\n  \
             cairn run list app\n"
        ));
    } else if stacks.iter().any(|s| s == "config") {
        s.push_str(&format!(
            "  $EDITOR {infra}/config/playbook.yml\n  \
             git -C {infra} commit -qam 'config: change' && git -C {infra} push -q\n  \
             cairn run list config\n"
        ));
    }
    s.push_str("  (a push to another branch makes a proposed run: plan only)\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_this_names_the_clone_and_the_verbs() {
        let t = try_this(Path::new("/x/.cairn"), &["network".into(), "app".into()]);
        assert!(t.contains("/x/.cairn/demo/infra"));
        assert!(t.contains("cairn run confirm"));
        let only_config = try_this(Path::new("/x/.cairn"), &["config".into()]);
        assert!(only_config.contains("config/playbook.yml"));
        assert!(!only_config.contains("network"));
    }
}
