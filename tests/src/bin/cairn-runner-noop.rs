//! `cairn-runner-noop`: the trivial runner plugin of `cairn-bench`'s webhook section. Plan and
//! Apply answer at once with a no-op result, so that what the benchmark measures is Cairn's
//! path from a webhook to the plugin, not a vendor. When `CAIRN_BENCH_PLAN_LOG` names a file,
//! every Plan call appends `<run id> <Unix nanoseconds at the call>` to it: the benchmark
//! process shares the machine's wall clock, not this process's monotonic one.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_proto::runner::v1::{
    apply_response, plan_response, ApplyRequest, ApplyResponse, ApplyResult, Capabilities,
    DescribeRequest, DescribeResponse, PlanRequest, PlanResponse, PlanResult,
};
use cairn_runner_sdk::{event_stream, serve, EventStream, Redactor, RunnerService};
use tonic::{Request, Response, Status};

/// The environment variable naming the Plan log.
const PLAN_LOG: &str = "CAIRN_BENCH_PLAN_LOG";

struct Noop;

fn record_plan(run_id: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os(PLAN_LOG) else {
        return Ok(());
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write per line, so that concurrent plans never interleave within a line.
    f.write_all(format!("{run_id} {nanos}\n").as_bytes())
}

#[tonic::async_trait]
impl RunnerService for Noop {
    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        Ok(Response::new(DescribeResponse {
            vendor: "noop".into(),
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
        if let Err(e) = record_plan(&ws.run_id) {
            return Err(Status::internal(format!("{PLAN_LOG}: {e}")));
        }
        let (sink, stream) = event_stream::<PlanResponse>(Redactor::new(ws.secret_values));
        tokio::spawn(async move {
            let result = PlanResult {
                success: true,
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
        let (sink, stream) = event_stream::<ApplyResponse>(Redactor::new(ws.secret_values));
        tokio::spawn(async move {
            let result = ApplyResult {
                success: true,
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
    serve(Noop).await
}
