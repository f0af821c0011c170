//! Ansible runner plugin.
//!
//! Plan is `ansible-playbook --check --diff`, apply the real run, both with the
//! `ansible.posix.json` stdout callback, whose report [`parse::parse_report`] turns into one
//! change per host and changed task.
//!
//! Conventions, relative to the project root: the playbook is `playbook.yml` and the inventory
//! `inventory`, unless `CAIRN_ANSIBLE_PLAYBOOK` / `CAIRN_ANSIBLE_INVENTORY` (stack environment
//! first, then the plugin's own) say otherwise. Targets: `tag:<name>` selects tags (`--tags`),
//! anything else is a host (`--limit`); a change address `<host>/<task>` targets its host.

pub mod parse;

use std::path::{Path, PathBuf};

use cairn_proto::runner::v1::{
    apply_response, plan_response, ApplyRequest, ApplyResponse, ApplyResult, Capabilities,
    DescribeRequest, DescribeResponse, PlanRequest, PlanResponse, PlanResult, Workspace,
};
use cairn_proto::v1::{ChangePhase, Phase};
use cairn_runner_sdk::{
    spawn_stream, EventSink, EventStream, Redactor, RunnerEvent, RunnerService, VendorCommand,
};
use tonic::{Request, Response, Status};

/// Errors of the Ansible plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Parse(String),
    #[error(transparent)]
    Sdk(#[from] cairn_runner_sdk::Error),
}

pub const DEFAULT_PLAYBOOK: &str = "playbook.yml";
pub const DEFAULT_INVENTORY: &str = "inventory";

/// The Runner contract for Ansible.
#[derive(Debug, Clone)]
pub struct AnsibleRunner {
    binary: PathBuf,
}

impl AnsibleRunner {
    pub fn from_env() -> Self {
        Self {
            binary: std::env::var_os("CAIRN_ANSIBLE_PLAYBOOK_BIN")
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from("ansible-playbook"), PathBuf::from),
        }
    }

    fn setting(ws: &Workspace, key: &str, default: &str) -> String {
        ws.env
            .get(key)
            .cloned()
            .or_else(|| std::env::var(key).ok())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_owned())
    }

    /// Runs the playbook; `check` makes it a preview.
    async fn run<T: RunnerEvent>(
        &self,
        ws: &Workspace,
        targets: &[String],
        check: bool,
        sink: &EventSink<T>,
    ) -> Result<Result<parse::Report, String>, Error> {
        let dir = Path::new(&ws.root_dir).join(&ws.project_root);
        let playbook = Self::setting(ws, "CAIRN_ANSIBLE_PLAYBOOK", DEFAULT_PLAYBOOK);
        let inventory = Self::setting(ws, "CAIRN_ANSIBLE_INVENTORY", DEFAULT_INVENTORY);
        let mut args = vec!["-i".to_owned(), inventory];
        if check {
            args.extend(["--check".to_owned(), "--diff".to_owned()]);
        }
        let (hosts, tags) = parse::split_targets(targets);
        if !hosts.is_empty() {
            args.extend(["--limit".to_owned(), hosts.join(",")]);
        }
        if !tags.is_empty() {
            args.extend(["--tags".to_owned(), tags.join(",")]);
        }
        // Playbook variables, like Terraform input variables.
        for (name, value) in &ws.variables {
            args.extend(["-e".to_owned(), format!("{name}={value}")]);
        }
        args.push(playbook);
        let outcome = VendorCommand::new(&self.binary)
            .args(&args)
            .current_dir(&dir)
            .envs(&ws.env)
            .env("ANSIBLE_STDOUT_CALLBACK", "ansible.posix.json")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .capture_stdout(true)
            .run(sink, |_| None)
            .await?;
        let phase = if check {
            ChangePhase::Plan
        } else {
            ChangePhase::Apply
        };
        let report = match parse::parse_report(&outcome.stdout, phase, sink.redactor()) {
            Ok(report) => report,
            // No report at all: ansible stopped before running (bad playbook, inventory, ...).
            Err(e) if !outcome.success() => {
                return Ok(Err(format!("{}\n{e}", outcome.error_message())))
            }
            Err(e) => return Err(e),
        };
        for line in &report.log {
            sink.log(cairn_proto::v1::LogStream::Stdout, line).await?;
        }
        if let Some(problem) = &report.problem {
            return Ok(Err(problem.clone()));
        }
        if !outcome.success() {
            return Ok(Err(outcome.error_message()));
        }
        Ok(Ok(report))
    }

    async fn do_plan(
        &self,
        req: PlanRequest,
        sink: &EventSink<PlanResponse>,
    ) -> Result<PlanResult, Error> {
        let ws = req.workspace.unwrap_or_default();
        if req.skip_planning {
            sink.system("planning skipped on request").await?;
            return Ok(PlanResult {
                success: true,
                skipped: true,
                ..Default::default()
            });
        }
        sink.phase(Phase::Planning).await?;
        Ok(match self.run(&ws, &req.targets, true, sink).await? {
            Ok(report) => PlanResult {
                success: true,
                error: String::new(),
                no_op: report.changes.is_empty(),
                delta: Some(report.delta),
                changes: report.changes,
                plan_json: report.json,
                skipped: false,
            },
            Err(error) => PlanResult {
                success: false,
                error,
                ..Default::default()
            },
        })
    }

    async fn do_apply(
        &self,
        req: ApplyRequest,
        sink: &EventSink<ApplyResponse>,
    ) -> Result<ApplyResult, Error> {
        let ws = req.workspace.unwrap_or_default();
        if req.skip_applying {
            sink.system("applying skipped on request").await?;
            return Ok(ApplyResult {
                success: true,
                skipped: true,
                ..Default::default()
            });
        }
        sink.phase(Phase::Applying).await?;
        Ok(match self.run(&ws, &req.targets, false, sink).await? {
            Ok(report) => ApplyResult {
                success: true,
                error: String::new(),
                delta: Some(report.delta),
                changes: report.changes,
                outputs_json: "{}".to_owned(),
                skipped: false,
            },
            Err(error) => ApplyResult {
                success: false,
                error,
                ..Default::default()
            },
        })
    }
}

fn redactor(ws: Option<&Workspace>) -> Redactor {
    Redactor::new(
        ws.into_iter()
            .flat_map(|ws| ws.secret_values.iter().cloned()),
    )
}

#[tonic::async_trait]
impl RunnerService for AnsibleRunner {
    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        let vendor_version = match VendorCommand::new(&self.binary)
            .arg("--version")
            .output()
            .await
        {
            Ok(out) if out.success() => parse::version(&out.stdout),
            _ => String::new(),
        };
        Ok(Response::new(DescribeResponse {
            vendor: "ansible".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            vendor_version,
            capabilities: Some(Capabilities {
                targets: true,
                destroy: false,
                skip_planning: true,
                import: false,
            }),
        }))
    }

    type PlanStream = EventStream<PlanResponse>;

    async fn plan(
        &self,
        request: Request<PlanRequest>,
    ) -> Result<Response<Self::PlanStream>, Status> {
        let req = request.into_inner();
        if req.destroy {
            return Err(Status::invalid_argument("ansible has no destroy mode"));
        }
        let runner = self.clone();
        Ok(Response::new(spawn_stream(
            redactor(req.workspace.as_ref()),
            move |sink| async move { runner.do_plan(req, &sink).await },
            |r| PlanResponse {
                event: Some(plan_response::Event::Result(r)),
            },
        )))
    }

    type ApplyStream = EventStream<ApplyResponse>;

    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<Self::ApplyStream>, Status> {
        let req = request.into_inner();
        if req.destroy {
            return Err(Status::invalid_argument("ansible has no destroy mode"));
        }
        let runner = self.clone();
        Ok(Response::new(spawn_stream(
            redactor(req.workspace.as_ref()),
            move |sink| async move { runner.do_apply(req, &sink).await },
            |r| ApplyResponse {
                event: Some(apply_response::Event::Result(r)),
            },
        )))
    }
}
