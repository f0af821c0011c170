//! How a Rust runner plugin is written: a "shell" vendor that plans with `sh plan.sh` and
//! applies with `sh apply.sh` in the project root. The SDK's own tests launch it.

use cairn_proto::runner::v1::{
    apply_response, plan_response, ApplyRequest, ApplyResponse, ApplyResult, Capabilities,
    DescribeRequest, DescribeResponse, PlanRequest, PlanResponse, PlanResult, Workspace,
};
use cairn_proto::v1::Phase;
use cairn_runner_sdk::{
    event_stream, serve, EventSink, EventStream, Redactor, RunnerEvent, RunnerService,
    VendorCommand,
};
use tonic::{Request, Response, Status};

struct ShellRunner;

fn project_dir(ws: &Workspace) -> std::path::PathBuf {
    std::path::Path::new(&ws.root_dir).join(&ws.project_root)
}

async fn run_script<T: RunnerEvent>(
    sink: &EventSink<T>,
    ws: &Workspace,
    script: &str,
) -> Result<Result<(), String>, cairn_runner_sdk::Error> {
    let outcome = VendorCommand::new("sh")
        .arg(script)
        .current_dir(project_dir(ws))
        .envs(&ws.env)
        .run(sink, |line| Some(line.to_owned()))
        .await?;
    Ok(if outcome.success() {
        Ok(())
    } else {
        Err(outcome.error_message())
    })
}

#[tonic::async_trait]
impl RunnerService for ShellRunner {
    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        Ok(Response::new(DescribeResponse {
            vendor: "shell".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            vendor_version: String::new(),
            capabilities: Some(Capabilities::default()),
        }))
    }

    type PlanStream = EventStream<PlanResponse>;

    async fn plan(
        &self,
        request: Request<PlanRequest>,
    ) -> Result<Response<Self::PlanStream>, Status> {
        let ws = request.into_inner().workspace.unwrap_or_default();
        let (sink, stream) = event_stream::<PlanResponse>(Redactor::new(ws.secret_values.clone()));
        tokio::spawn(async move {
            if sink.phase(Phase::Planning).await.is_err() {
                return;
            }
            let Ok(outcome) = run_script(&sink, &ws, "plan.sh").await else {
                return;
            };
            let result = PlanResult {
                success: outcome.is_ok(),
                error: outcome.err().unwrap_or_default(),
                no_op: true,
                ..Default::default()
            };
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
        let ws = request.into_inner().workspace.unwrap_or_default();
        let (sink, stream) = event_stream::<ApplyResponse>(Redactor::new(ws.secret_values.clone()));
        tokio::spawn(async move {
            if sink.phase(Phase::Applying).await.is_err() {
                return;
            }
            let Ok(outcome) = run_script(&sink, &ws, "apply.sh").await else {
                return;
            };
            let result = ApplyResult {
                success: outcome.is_ok(),
                error: outcome.err().unwrap_or_default(),
                ..Default::default()
            };
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
    serve(ShellRunner).await
}
