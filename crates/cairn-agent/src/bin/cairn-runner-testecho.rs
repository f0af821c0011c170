//! A runner plugin for the agent's tests, written with the SDK like any real plugin.
//!
//! Vendor `testecho`: planning lists the regular, non-hidden files of the project root and
//! reports one added resource per file, saving the list as the plan file `.testecho-plan`;
//! applying reads that plan file (so it only works in the workspace the plan produced) and
//! writes `.testecho-applied`. Knobs, read from the workspace environment:
//! - `TESTECHO_NO_REDACT=1`: do not mask secrets here (to prove the agent masks them itself);
//! - `TESTECHO_SLEEP=<secs>`: plan runs `sleep` as its vendor process, writing the process id
//!   to `$TESTECHO_PIDFILE` first (for cancellation tests);
//! - `TESTECHO_CRASH=plan|apply`: exit abruptly in that call;
//! - `TESTECHO_SAVED=send|wait|fail`: once the plan file is written, plan sends `PlanSaved`;
//!   with `wait` and `fail` it then waits for an Apply of it to begin (apply writes
//!   `.testecho-applying` first) and ends with its result (`wait`) or fails (`fail`; that apply
//!   then runs `sleep` as its vendor process, writing the process id to `.testecho-apply-pid`,
//!   so that its stop can be seen).
//!
//! Planning also logs the `traceparent` it received in the request metadata.

use std::path::{Path, PathBuf};

use cairn_proto::runner::v1::{
    apply_response, plan_response, ApplyRequest, ApplyResponse, ApplyResult, Capabilities,
    DescribeRequest, DescribeResponse, PlanRequest, PlanResponse, PlanResult, PlanSaved, Workspace,
};
use cairn_proto::v1::{Change, ChangeAction, ChangePhase, Delta, Entity, LogStream, Phase};
use cairn_runner_sdk::{
    event_stream, serve, EventSink, EventStream, Redactor, RunnerService, VendorCommand,
};
use tonic::{Request, Response, Status};

const PLAN_FILE: &str = ".testecho-plan";
const APPLIED_FILE: &str = ".testecho-applied";
const APPLYING_FILE: &str = ".testecho-applying";
const APPLY_PID_FILE: &str = ".testecho-apply-pid";

struct TestEcho;

fn project_dir(ws: &Workspace) -> PathBuf {
    Path::new(&ws.root_dir).join(&ws.project_root)
}

fn redactor(ws: &Workspace) -> Redactor {
    if ws.env.get("TESTECHO_NO_REDACT").map(String::as_str) == Some("1") {
        Redactor::default()
    } else {
        Redactor::new(ws.secret_values.clone())
    }
}

fn crash_in(ws: &Workspace, call: &str) -> bool {
    ws.env.get("TESTECHO_CRASH").map(String::as_str) == Some(call)
}

fn saved_mode(ws: &Workspace) -> Option<&str> {
    ws.env.get("TESTECHO_SAVED").map(String::as_str)
}

fn change(name: &str, size: u64, phase: ChangePhase) -> Change {
    Change {
        action: ChangeAction::Added as i32,
        entity: Some(Entity {
            address: format!("testecho_file.{name}"),
            name: name.to_owned(),
            r#type: "testecho_file".into(),
            entity_vendor: "testecho".into(),
            entity_type: "resource".into(),
            data_json: format!("{{\"size\":{size}}}"),
        }),
        phase: phase as i32,
    }
}

fn delta(n: usize) -> Delta {
    Delta {
        added_resources: i32::try_from(n).unwrap_or(i32::MAX),
        ..Delta::default()
    }
}

async fn plan(
    sink: &EventSink<PlanResponse>,
    req: PlanRequest,
    traceparent: Option<String>,
) -> Result<PlanResult, String> {
    let ws = req.workspace.unwrap_or_default();
    let dir = project_dir(&ws);
    sink.phase(Phase::Initializing)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(traceparent) = traceparent {
        sink.system(&format!("traceparent {traceparent}"))
            .await
            .map_err(|e| e.to_string())?;
    }
    sink.system(&format!("testecho initializing in {}", dir.display()))
        .await
        .map_err(|e| e.to_string())?;
    if crash_in(&ws, "plan") {
        std::process::exit(3);
    }
    sink.phase(Phase::Planning)
        .await
        .map_err(|e| e.to_string())?;
    let mut env: Vec<_> = ws.env.iter().collect();
    env.sort();
    for (k, v) in env {
        sink.log(LogStream::Stdout, &format!("env {k}={v}"))
            .await
            .map_err(|e| e.to_string())?;
    }
    if ws.env.contains_key("TESTECHO_SLEEP") {
        let outcome = VendorCommand::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$TESTECHO_PIDFILE\"; echo vendor sleeping; exec sleep \"$TESTECHO_SLEEP\"")
            .current_dir(&dir)
            .envs(&ws.env)
            .grace(std::time::Duration::from_secs(5))
            .run(sink, |line| Some(line.to_owned()))
            .await
            .map_err(|e| e.to_string())?;
        if !outcome.success() {
            return Err(outcome.error_message());
        }
    }
    if req.skip_planning {
        return Ok(PlanResult {
            success: true,
            skipped: true,
            ..PlanResult::default()
        });
    }
    let mut files = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata().map_err(|e| e.to_string())?;
        if meta.is_file() && !name.starts_with('.') {
            files.push((name, meta.len()));
        }
    }
    files.sort();
    let mut changes = Vec::new();
    for (name, size) in &files {
        sink.log(
            LogStream::Stdout,
            &format!("+ testecho_file.{name} ({size} bytes)"),
        )
        .await
        .map_err(|e| e.to_string())?;
        changes.push(change(name, *size, ChangePhase::Plan));
    }
    let plan_text: String = files.iter().map(|(n, _)| format!("{n}\n")).collect();
    std::fs::write(dir.join(PLAN_FILE), plan_text).map_err(|e| format!("writing plan: {e}"))?;
    if let Some(mode) = saved_mode(&ws) {
        sink.send(PlanResponse {
            event: Some(plan_response::Event::Saved(PlanSaved {})),
        })
        .await
        .map_err(|e| e.to_string())?;
        let applying = dir.join(APPLYING_FILE);
        let waits = if mode == "send" { 0 } else { 6000 };
        for _ in 0..waits {
            if applying.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if mode == "fail" {
            return Err("the plan's details could not be read".into());
        }
    }
    Ok(PlanResult {
        success: true,
        no_op: files.is_empty(),
        delta: Some(delta(files.len())),
        changes,
        plan_json: format!("{{\"files\":{}}}", files.len()),
        ..PlanResult::default()
    })
}

async fn apply(sink: &EventSink<ApplyResponse>, req: ApplyRequest) -> Result<ApplyResult, String> {
    let ws = req.workspace.unwrap_or_default();
    let dir = project_dir(&ws);
    sink.phase(Phase::Applying)
        .await
        .map_err(|e| e.to_string())?;
    let plan = std::fs::read_to_string(dir.join(PLAN_FILE))
        .map_err(|e| format!("no saved plan at {}: {e}", dir.join(PLAN_FILE).display()))?;
    std::fs::write(dir.join(APPLYING_FILE), "").map_err(|e| e.to_string())?;
    if saved_mode(&ws) == Some("fail") {
        let outcome = VendorCommand::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {APPLY_PID_FILE}; exec sleep 600"))
            .current_dir(&dir)
            .grace(std::time::Duration::from_secs(5))
            .run(sink, |line| Some(line.to_owned()))
            .await
            .map_err(|e| e.to_string())?;
        return Err(outcome.error_message());
    }
    if crash_in(&ws, "apply") {
        std::process::exit(3);
    }
    if req.skip_applying {
        return Ok(ApplyResult {
            success: true,
            skipped: true,
            ..ApplyResult::default()
        });
    }
    let mut changes = Vec::new();
    for name in plan.lines().filter(|l| !l.is_empty()) {
        let size = std::fs::metadata(dir.join(name))
            .map_err(|e| format!("planned file {name} is gone: {e}"))?
            .len();
        sink.log(LogStream::Stdout, &format!("applied testecho_file.{name}"))
            .await
            .map_err(|e| e.to_string())?;
        changes.push(change(name, size, ChangePhase::Apply));
    }
    std::fs::write(dir.join(APPLIED_FILE), &plan).map_err(|e| e.to_string())?;
    Ok(ApplyResult {
        success: true,
        delta: Some(delta(changes.len())),
        outputs_json: format!("{{\"applied\":{}}}", changes.len()),
        changes,
        ..ApplyResult::default()
    })
}

#[tonic::async_trait]
impl RunnerService for TestEcho {
    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        Ok(Response::new(DescribeResponse {
            vendor: "testecho".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            vendor_version: String::new(),
            capabilities: Some(Capabilities {
                skip_planning: true,
                ..Capabilities::default()
            }),
        }))
    }

    type PlanStream = EventStream<PlanResponse>;

    async fn plan(
        &self,
        request: Request<PlanRequest>,
    ) -> Result<Response<Self::PlanStream>, Status> {
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let req = request.into_inner();
        let ws = req.workspace.clone().unwrap_or_default();
        let (sink, stream) = event_stream::<PlanResponse>(redactor(&ws));
        tokio::spawn(async move {
            let result = plan(&sink, req, traceparent)
                .await
                .unwrap_or_else(|error| PlanResult {
                    success: false,
                    error,
                    ..PlanResult::default()
                });
            let _ = sink
                .send(PlanResponse {
                    event: Some(plan_response::Event::Result(result)),
                })
                .await;
        });
        Ok(Response::new(stream))
    }

    type ApplyStream = EventStream<ApplyResponse>;

    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<Self::ApplyStream>, Status> {
        let req = request.into_inner();
        let ws = req.workspace.clone().unwrap_or_default();
        let (sink, stream) = event_stream::<ApplyResponse>(redactor(&ws));
        tokio::spawn(async move {
            let result = apply(&sink, req).await.unwrap_or_else(|error| ApplyResult {
                success: false,
                error,
                ..ApplyResult::default()
            });
            let _ = sink
                .send(ApplyResponse {
                    event: Some(apply_response::Event::Result(result)),
                })
                .await;
        });
        Ok(Response::new(stream))
    }
}

#[tokio::main]
async fn main() -> Result<(), cairn_runner_sdk::Error> {
    cairn_runner_sdk::init_logging();
    serve(TestEcho).await
}
