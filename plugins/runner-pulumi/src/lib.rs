//! Pulumi runner plugin.
//!
//! Plan: `pulumi preview --json` (a PreviewDigest). Apply: `pulumi up --yes --json` (engine
//! events, one per line), with `--skip-preview` when planning was skipped. Targets become
//! `--target <urn>`. The stack is `CAIRN_PULUMI_STACK` from the stack environment, if set
//! (otherwise Pulumi's selected stack or `PULUMI_STACK`).

pub mod parse;

use std::path::{Path, PathBuf};

use cairn_proto::runner::v1::{
    apply_response, plan_response, ApplyRequest, ApplyResponse, ApplyResult, Capabilities,
    DescribeRequest, DescribeResponse, PlanRequest, PlanResponse, PlanResult, Workspace,
};
use cairn_proto::v1::{LogStream, Phase};
use cairn_runner_sdk::{
    spawn_stream, EventSink, EventStream, Redactor, RunnerService, VendorCommand, VendorOutcome,
};
use tonic::{Request, Response, Status};

const DESTROY_UNSUPPORTED: &str =
    "the pulumi plugin does not run destroy runs (its capabilities say destroy = false)";

/// Errors of the Pulumi plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Parse(String),
    #[error(transparent)]
    Sdk(#[from] cairn_runner_sdk::Error),
}

/// Remembers, from plan to apply, whether the preview was skipped (relative to the project
/// root; the workspace travels from plan to apply).
pub const PLAN_MARKER: &str = ".cairn/pulumi-plan.json";

/// The Runner contract for Pulumi.
#[derive(Debug, Clone)]
pub struct PulumiRunner {
    binary: PathBuf,
}

fn project_dir(ws: &Workspace) -> PathBuf {
    Path::new(&ws.root_dir).join(&ws.project_root)
}

fn redactor(ws: Option<&Workspace>) -> Redactor {
    Redactor::new(
        ws.into_iter()
            .flat_map(|ws| ws.secret_values.iter().cloned()),
    )
}

impl PulumiRunner {
    pub fn from_env() -> Self {
        Self {
            binary: std::env::var_os("CAIRN_PULUMI_BIN")
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from("pulumi"), PathBuf::from),
        }
    }

    fn command(&self, ws: &Workspace, verb: &str, targets: &[String]) -> VendorCommand {
        let mut cmd = VendorCommand::new(&self.binary)
            .arg(verb)
            .args(["--json", "--non-interactive"])
            .current_dir(project_dir(ws))
            .envs(&ws.env)
            // Pulumi config values, like Terraform input variables.
            .envs(
                ws.variables
                    .iter()
                    .map(|(k, v)| (format!("PULUMI_CONFIG_{k}"), v)),
            );
        if let Some(stack) = ws.env.get("CAIRN_PULUMI_STACK").filter(|s| !s.is_empty()) {
            cmd = cmd.args(["--stack", stack]);
        }
        for target in targets {
            cmd = cmd.args(["--target", target]);
        }
        cmd
    }

    async fn do_plan(
        &self,
        req: PlanRequest,
        sink: &EventSink<PlanResponse>,
    ) -> Result<PlanResult, Error> {
        let ws = req.workspace.unwrap_or_default();
        write_marker(&ws, req.skip_planning)?;
        if req.skip_planning {
            sink.system("preview skipped on request").await?;
            return Ok(PlanResult {
                success: true,
                skipped: true,
                ..Default::default()
            });
        }
        sink.phase(Phase::Planning).await?;
        let outcome = self
            .command(&ws, "preview", &req.targets)
            .capture_stdout(true)
            .run(sink, |_| None)
            .await?;
        let parsed = match parse::parse_preview(&outcome.stdout, sink.redactor()) {
            Ok(p) => p,
            Err(e) if !outcome.success() => {
                return Ok(plan_failed(format!("{}\n{e}", outcome.error_message())))
            }
            Err(e) => return Err(e),
        };
        for change in &parsed.changes {
            let e = change
                .entity
                .as_ref()
                .map(|e| e.address.as_str())
                .unwrap_or_default();
            sink.log(LogStream::Stdout, &format!("{:?} {e}", change.action()))
                .await?;
        }
        if let Some(error) = failure(&outcome, &parsed.errors) {
            return Ok(plan_failed(error));
        }
        Ok(PlanResult {
            success: true,
            error: String::new(),
            no_op: parsed.no_op,
            delta: Some(parsed.delta),
            changes: parsed.changes,
            plan_json: parsed.json,
            skipped: false,
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
        let mut cmd = self.command(&ws, "up", &req.targets).arg("--yes");
        if preview_was_skipped(&ws) {
            cmd = cmd.arg("--skip-preview");
        }
        let mut events = Vec::new();
        let outcome = cmd
            .run(sink, |line| {
                events.push(line.to_owned());
                parse::render_event(line)
            })
            .await?;
        let parsed = parse::parse_events(events.iter().map(String::as_str), sink.redactor());
        if let Some(error) = failure(&outcome, &parsed.errors) {
            return Ok(ApplyResult {
                success: false,
                error,
                ..Default::default()
            });
        }
        Ok(ApplyResult {
            success: true,
            error: String::new(),
            delta: Some(parsed.delta),
            changes: parsed.changes,
            outputs_json: serde_json::Value::Object(parsed.outputs).to_string(),
            skipped: false,
        })
    }
}

fn plan_failed(error: String) -> PlanResult {
    PlanResult {
        success: false,
        error,
        ..Default::default()
    }
}

fn failure(outcome: &VendorOutcome, errors: &[String]) -> Option<String> {
    if !errors.is_empty() {
        Some(errors.join("\n"))
    } else if !outcome.success() {
        Some(outcome.error_message())
    } else {
        None
    }
}

fn write_marker(ws: &Workspace, skipped: bool) -> Result<(), Error> {
    let path = project_dir(ws).join(PLAN_MARKER);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(cairn_runner_sdk::Error::from)?;
    }
    std::fs::write(
        &path,
        serde_json::json!({ "preview_skipped": skipped }).to_string(),
    )
    .map_err(cairn_runner_sdk::Error::from)?;
    Ok(())
}

fn preview_was_skipped(ws: &Workspace) -> bool {
    std::fs::read_to_string(project_dir(ws).join(PLAN_MARKER))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["preview_skipped"] == true)
}

#[tonic::async_trait]
impl RunnerService for PulumiRunner {
    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        let vendor_version = match VendorCommand::new(&self.binary)
            .arg("version")
            .output()
            .await
        {
            Ok(out) if out.success() => out.stdout.trim().trim_start_matches('v').to_owned(),
            _ => String::new(),
        };
        Ok(Response::new(DescribeResponse {
            vendor: "pulumi".to_owned(),
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
            // Describe advertises `destroy = false`; a caller that ignores it gets the same
            // answer here instead of a run that silently does something else.
            return Err(Status::failed_precondition(DESTROY_UNSUPPORTED));
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
            // Describe advertises `destroy = false`; a caller that ignores it gets the same
            // answer here instead of a run that silently does something else.
            return Err(Status::failed_precondition(DESTROY_UNSUPPORTED));
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
