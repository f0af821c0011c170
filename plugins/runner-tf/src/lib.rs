//! Terraform and OpenTofu runner plugins.
//!
//! One implementation, two binaries: `cairn-runner-terraform` runs `terraform` (or
//! `$CAIRN_TERRAFORM_BIN`), `cairn-runner-opentofu` runs `tofu` (or `$CAIRN_TOFU_BIN`).
//!
//! When the lease carries Cairn's state backend (`CAIRN_STATE_ADDRESS`), [`backend`] points
//! Terraform at it: an `http` backend override file and `init -reconfigure` with its settings.
//!
//! Plan: `init`, `plan -out=<project>/.cairn/plan.tfplan -detailed-exitcode -json`, then
//! `show -json` of the plan file, parsed by [`parse::parse_plan`] and kept next to the plan
//! file. Apply: `apply -json` of that plan file; the changes come from the kept `show -json`
//! and the outputs from apply's own `outputs` message, so that applying runs Terraform once
//! (each extra `show`/`output` started Terraform and its providers again, ~0.3 s each).
//!
//! A plan with changes (exit code 2) is final before `show` runs, so the plugin says so at once
//! (`PlanSaved`): the agent of an autodeploy run may then call Apply while `show` still works
//! out the details, and that Apply takes them from the Plan in flight ([`TfRunner::shows`])
//! instead of running `show` itself.

pub mod backend;
pub mod parse;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cairn_proto::runner::v1::{
    apply_response, plan_response, ApplyRequest, ApplyResponse, ApplyResult, Capabilities,
    DescribeRequest, DescribeResponse, PlanRequest, PlanResponse, PlanResult, PlanSaved, Workspace,
};
use cairn_proto::v1::{ChangePhase, Phase};
use cairn_runner_sdk::{
    spawn_stream, EventSink, EventStream, Redactor, RunnerEvent, RunnerService, VendorCommand,
    VendorOutcome,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

/// Errors of the Terraform/OpenTofu plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Parse(String),
    #[error(transparent)]
    Sdk(#[from] cairn_runner_sdk::Error),
}

/// Which CLI this plugin drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Terraform,
    OpenTofu,
}

impl Flavor {
    pub fn vendor(self) -> &'static str {
        match self {
            Self::Terraform => "terraform",
            Self::OpenTofu => "opentofu",
        }
    }

    fn bin_env(self) -> &'static str {
        match self {
            Self::Terraform => "CAIRN_TERRAFORM_BIN",
            Self::OpenTofu => "CAIRN_TOFU_BIN",
        }
    }

    fn default_bin(self) -> &'static str {
        match self {
            Self::Terraform => "terraform",
            Self::OpenTofu => "tofu",
        }
    }

    /// The CLI to run: the override from the environment, else the name on PATH.
    pub fn binary(self) -> PathBuf {
        std::env::var_os(self.bin_env())
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(self.default_bin()), PathBuf::from)
    }
}

/// Where the saved plan lives, relative to the project root; the agent carries the whole
/// workspace from plan to apply, this file included.
pub const PLAN_FILE: &str = ".cairn/plan.tfplan";

/// `show -json` of [`PLAN_FILE`], written by the plan that wrote the plan file (and removed
/// with it), so that apply need not run `show` again.
pub const PLAN_JSON_FILE: &str = ".cairn/plan.json";

/// What `show` made of a saved plan: the plan, or why it could not be read.
type Shown = Result<parse::ParsedPlan, String>;

/// The `show` of a Plan that sent `PlanSaved`, by project directory.
type Shows = Arc<Mutex<HashMap<PathBuf, ShowWatch>>>;

/// A `show` in flight as an Apply sees it.
#[derive(Debug, Clone)]
struct ShowWatch {
    /// `None` until the show is done.
    done: watch::Receiver<Option<Shown>>,
    /// Set by the Apply that goes ahead without waiting for it.
    applying: Arc<AtomicBool>,
}

/// The Runner contract for Terraform or OpenTofu.
#[derive(Debug, Clone)]
pub struct TfRunner {
    flavor: Flavor,
    binary: PathBuf,
    /// Plans whose details are still being read while an Apply of them may already run.
    shows: Shows,
}

impl TfRunner {
    pub fn new(flavor: Flavor) -> Self {
        Self {
            flavor,
            binary: flavor.binary(),
            shows: Shows::default(),
        }
    }

    /// The `show` in flight for the plan saved in `dir`, if a Plan is still reading it; the
    /// caller applies that plan meanwhile.
    fn apply_beside_show(&self, dir: &Path) -> Option<watch::Receiver<Option<Shown>>> {
        let shows = self.shows.lock().unwrap_or_else(|e| e.into_inner());
        let show = shows.get(dir)?;
        show.applying.store(true, Ordering::SeqCst);
        Some(show.done.clone())
    }
}

/// A `show` in flight, published in [`TfRunner::shows`] until it is dropped; dropping it
/// without [`InFlightShow::finish`] tells a waiting Apply that the details were lost.
struct InFlightShow {
    shows: Shows,
    dir: PathBuf,
    done: watch::Sender<Option<Shown>>,
    applying: Arc<AtomicBool>,
}

impl InFlightShow {
    fn start(shows: &Shows, dir: &Path) -> Self {
        let (done, waiting) = watch::channel(None);
        let applying = Arc::<AtomicBool>::default();
        shows.lock().unwrap_or_else(|e| e.into_inner()).insert(
            dir.to_owned(),
            ShowWatch {
                done: waiting,
                applying: Arc::clone(&applying),
            },
        );
        Self {
            shows: Arc::clone(shows),
            dir: dir.to_owned(),
            done,
            applying,
        }
    }

    /// Takes the show out of [`TfRunner::shows`]; whether an Apply of the plan has started
    /// (then the plan can no longer fail).
    fn close(&self) -> bool {
        let mut shows = self.shows.lock().unwrap_or_else(|e| e.into_inner());
        // A later Plan of the same directory may have put its own show there meanwhile.
        if shows
            .get(&self.dir)
            .is_some_and(|w| w.done.same_channel(&self.done.subscribe()))
        {
            shows.remove(&self.dir);
        }
        self.applying.load(Ordering::SeqCst)
    }

    fn finish(self, shown: &Shown) {
        self.done.send_replace(Some(shown.clone()));
    }
}

impl Drop for InFlightShow {
    fn drop(&mut self) {
        self.close();
    }
}

/// Serves the plugin for `flavor`; what both binaries' `main` does.
pub async fn run_main(flavor: Flavor) -> Result<(), cairn_runner_sdk::Error> {
    cairn_runner_sdk::init_logging();
    cairn_runner_sdk::serve(TfRunner::new(flavor)).await
}

fn project_dir(ws: &Workspace) -> PathBuf {
    Path::new(&ws.root_dir).join(&ws.project_root)
}

/// The vendor's environment: the stack's, input variables as `TF_VAR_*`, and automation mode.
fn vendor_env(ws: &Workspace) -> HashMap<String, String> {
    let mut env = ws.env.clone();
    for (name, value) in &ws.variables {
        env.insert(format!("TF_VAR_{name}"), value.clone());
    }
    env.insert("TF_IN_AUTOMATION".into(), "1".into());
    env.insert("TF_INPUT".into(), "0".into());
    env.entry(NO_FORK.0.into())
        .or_insert_with(|| NO_FORK.1.into());
    env
}

/// Terraform (up to 1.0) and OpenTofu re-execute themselves under a panic catcher that only
/// writes crash.log; the plugin keeps the vendor's stderr anyway, and the second process start
/// costs ~40 ms per command. A stack can still set `TF_FORK` itself.
const NO_FORK: (&str, &str) = ("TF_FORK", "0");

fn redactor(ws: Option<&Workspace>) -> Redactor {
    Redactor::new(
        ws.into_iter()
            .flat_map(|ws| ws.secret_values.iter().cloned()),
    )
}

/// A finished step: success, or the vendor's explanation of the failure.
type StepResult = Result<(), String>;

struct Session<'a, T: RunnerEvent> {
    runner: &'a TfRunner,
    sink: &'a EventSink<T>,
    dir: PathBuf,
    env: HashMap<String, String>,
    /// Cairn's state backend, when the lease hands one out.
    backend: Option<backend::HttpBackend>,
    run_id: String,
    stack_id: String,
}

impl<'a, T: RunnerEvent> Session<'a, T> {
    fn new(runner: &'a TfRunner, sink: &'a EventSink<T>, ws: &Workspace) -> Session<'a, T> {
        Session {
            runner,
            sink,
            dir: project_dir(ws),
            env: vendor_env(ws),
            backend: backend::HttpBackend::from_env(&ws.env),
            run_id: ws.run_id.clone(),
            stack_id: ws.stack_id.clone(),
        }
    }

    /// A span for one vendor command, named after it, tagged with the run it serves.
    fn step_span(&self, step: &'static str) -> tracing::Span {
        tracing::info_span!(
            "vendor",
            otel.name = step,
            run.id = %self.run_id,
            stack.id = %self.stack_id,
            vendor = self.runner.flavor.vendor(),
        )
    }

    fn command(&self) -> VendorCommand {
        VendorCommand::new(&self.runner.binary)
            .current_dir(&self.dir)
            .envs(&self.env)
    }

    /// Runs a `-json` command, rendering its UI messages, collecting error diagnostics and
    /// handing every JSON message to `each`.
    async fn run_json(
        &self,
        args: &[String],
        mut each: impl FnMut(&serde_json::Value) + Send,
    ) -> Result<(VendorOutcome, StepResult), Error> {
        let mut errors = Vec::new();
        let outcome = self
            .command()
            .args(args)
            .run(self.sink, |line| {
                if let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) {
                    each(&msg);
                }
                let ui = parse::render_ui_line(line);
                errors.extend(ui.error);
                ui.text
            })
            .await?;
        let step = step_result(&outcome, &errors, self.sink.redactor());
        Ok((outcome, step))
    }

    async fn run_plain(&self, args: &[&str]) -> Result<StepResult, Error> {
        let outcome = self
            .command()
            .args(args)
            .run(self.sink, |line| Some(line.to_owned()))
            .await?;
        Ok(step_result(&outcome, &[], self.sink.redactor()))
    }

    async fn capture(&self, args: &[&str]) -> Result<(VendorOutcome, StepResult), Error> {
        let outcome = self
            .command()
            .args(args)
            .capture_stdout(true)
            .run(self.sink, |_| None)
            .await?;
        let step = step_result(&outcome, &[], self.sink.redactor());
        Ok((outcome, step))
    }

    async fn init(&self) -> Result<StepResult, Error> {
        self.init_untraced()
            .instrument(self.step_span("init"))
            .await
    }

    async fn init_untraced(&self) -> Result<StepResult, Error> {
        self.sink.phase(Phase::Initializing).await?;
        let Some(b) = &self.backend else {
            return self.run_plain(&["init", "-input=false", "-no-color"]).await;
        };
        let secret = b
            .prepare(&self.dir)
            .map_err(cairn_runner_sdk::Error::from)?;
        let args = b.init_args(&secret);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let step = self.run_plain(&args).await;
        // The password file is only needed by init (Terraform keeps the settings in .terraform).
        let _ = std::fs::remove_file(&secret);
        step
    }

    /// `plan` into [`PLAN_FILE`]: whether something changes and what `plan -json` said.
    async fn plan(
        &self,
        targets: &[String],
        destroy: bool,
    ) -> Result<Result<Planned, String>, Error> {
        self.sink.phase(Phase::Planning).await?;
        let plan_file = self.dir.join(PLAN_FILE);
        if let Some(parent) = plan_file.parent() {
            std::fs::create_dir_all(parent).map_err(cairn_runner_sdk::Error::from)?;
        }
        // Whatever `show` said about an earlier plan file no longer holds.
        let _ = std::fs::remove_file(self.dir.join(PLAN_JSON_FILE));
        let mut args = vec![
            "plan".to_owned(),
            "-input=false".to_owned(),
            format!("-out={}", plan_file.display()),
            "-detailed-exitcode".to_owned(),
            "-json".to_owned(),
        ];
        args.extend(targets.iter().map(|t| format!("-target={t}")));
        if destroy {
            args.push("-destroy".to_owned());
        }
        let vendor = self.runner.flavor.vendor();
        let mut streamed = parse::StreamedPlan::default();
        let (outcome, step) = self
            .run_json(&args, |msg| streamed.observe(msg, vendor))
            .instrument(self.step_span("plan"))
            .await?;
        // -detailed-exitcode: 0 no changes, 2 changes, anything else an error.
        Ok(match (outcome.code(), step) {
            (Some(code @ (0 | 2)), _) => Ok(Planned {
                changes: code == 2,
                streamed,
            }),
            (_, Err(e)) => Err(e),
            (_, Ok(())) => Err(outcome.error_message()),
        })
    }

    /// The saved plan, parsed: from the `show -json` kept by the plan that wrote it, else by
    /// running `show -json` (and keeping its output).
    async fn show_plan(
        &self,
        phase: ChangePhase,
    ) -> Result<Result<parse::ParsedPlan, String>, Error> {
        let kept = self.dir.join(PLAN_JSON_FILE);
        let show_json = match std::fs::read_to_string(&kept) {
            Ok(json) => json,
            Err(_) => {
                let plan_file = self.dir.join(PLAN_FILE);
                let plan_file = plan_file.to_string_lossy();
                let (outcome, step) = self
                    .capture(&["show", "-json", &plan_file])
                    .instrument(self.step_span("show"))
                    .await?;
                if let Err(e) = step {
                    return Ok(Err(e));
                }
                std::fs::write(&kept, &outcome.stdout).map_err(cairn_runner_sdk::Error::from)?;
                outcome.stdout
            }
        };
        Ok(parse::parse_plan(
            &show_json,
            self.runner.flavor.vendor(),
            phase,
            self.sink.redactor(),
        )
        .map_err(|e| e.to_string()))
    }
}

/// Where an Apply gets the details of the plan it applies.
enum Details {
    Shown(parse::ParsedPlan),
    /// From the Plan that saved it, still running `show`.
    InFlight(watch::Receiver<Option<Shown>>),
}

/// Waits for the `show` of the Plan in flight.
async fn shown_by_plan(mut waiting: watch::Receiver<Option<Shown>>) -> Shown {
    const LOST: &str = "the plan's details were lost: its Plan call ended before `show` did";
    match waiting.wait_for(Option::is_some).await {
        Ok(shown) => shown.clone().unwrap_or_else(|| Err(LOST.to_owned())),
        Err(_) => Err(LOST.to_owned()),
    }
}

/// A plan saved by `plan -detailed-exitcode`.
struct Planned {
    /// Exit code 2: something changes (resources or outputs).
    changes: bool,
    streamed: parse::StreamedPlan,
}

fn step_result(outcome: &VendorOutcome, errors: &[String], redactor: &Redactor) -> StepResult {
    if outcome.success() {
        Ok(())
    } else if errors.is_empty() {
        Err(outcome.error_message())
    } else {
        Err(redactor.redact(&errors.join("\n")))
    }
}

impl TfRunner {
    async fn do_plan(
        &self,
        req: PlanRequest,
        sink: &EventSink<PlanResponse>,
    ) -> Result<PlanResult, Error> {
        let ws = req.workspace.unwrap_or_default();
        let session = Session::new(self, sink, &ws);
        let failed = |error: String| PlanResult {
            success: false,
            error,
            ..Default::default()
        };
        if let Err(e) = session.init().await? {
            return Ok(failed(e));
        }
        if req.skip_planning {
            sink.system("planning skipped on request").await?;
            // A stale plan file from an earlier run must not be applied by mistake.
            let _ = std::fs::remove_file(session.dir.join(PLAN_FILE));
            let _ = std::fs::remove_file(session.dir.join(PLAN_JSON_FILE));
            return Ok(PlanResult {
                success: true,
                skipped: true,
                ..Default::default()
            });
        }
        let planned = match session.plan(&req.targets, req.destroy).await? {
            Ok(planned) => planned,
            Err(e) => return Ok(failed(e)),
        };
        let in_flight = if planned.changes {
            // Published before the agent hears of the plan, so that its Apply finds it.
            let in_flight = InFlightShow::start(&self.shows, &session.dir);
            sink.send(PlanResponse {
                event: Some(plan_response::Event::Saved(PlanSaved {})),
            })
            .await?;
            Some(in_flight)
        } else {
            None
        };
        let mut shown = session.show_plan(ChangePhase::Plan).await?;
        if let Some(in_flight) = in_flight {
            // Closed before the outcome is settled, so that no Apply joins a failed plan late.
            if let (Err(e), true) = (&shown, in_flight.close()) {
                // Terraform up to 1.1 refuses to show a plan whose state an apply has written
                // ("Saved plan is stale"). Being applied, it stays the plan, described less
                // fully; a plan nobody applies yet fails as before (plan policies need the
                // document).
                sink.system(&format!(
                    "`show -json` of the saved plan failed ({e}); its changes come from the \
                     plan's own output (resources only, no plan document)"
                ))
                .await?;
                shown = Ok(planned.streamed.into_parsed());
            }
            in_flight.finish(&shown);
        }
        Ok(match shown {
            Ok(plan) => PlanResult {
                success: true,
                error: String::new(),
                no_op: plan.no_op,
                delta: Some(plan.delta),
                changes: plan.changes,
                plan_json: plan.plan_json,
                skipped: false,
            },
            Err(e) => failed(e),
        })
    }

    async fn do_apply(
        &self,
        req: ApplyRequest,
        sink: &EventSink<ApplyResponse>,
    ) -> Result<ApplyResult, Error> {
        let ws = req.workspace.unwrap_or_default();
        let session = Session::new(self, sink, &ws);
        let failed = |error: String| ApplyResult {
            success: false,
            error,
            ..Default::default()
        };
        if req.skip_applying {
            sink.system("applying skipped on request").await?;
            return Ok(ApplyResult {
                success: true,
                skipped: true,
                ..Default::default()
            });
        }
        // A workspace restored on another worker may lack the provider cache.
        if !session.dir.join(".terraform").is_dir() {
            if let Err(e) = session.init().await? {
                return Ok(failed(e));
            }
        }
        let plan_file = session.dir.join(PLAN_FILE);
        let in_flight = self.apply_beside_show(&session.dir);
        if in_flight.is_none() && !plan_file.exists() {
            // Planning was skipped: plan now, then apply that plan, so there is one way to apply.
            sink.system("no saved plan (planning was skipped): planning before applying")
                .await?;
            if let Err(e) = session.plan(&req.targets, req.destroy).await? {
                return Ok(failed(e));
            }
        }
        // The plan's details before applying it (Terraform up to 1.1 shows no plan file whose
        // state has moved on), unless the Plan that saved it is reading them right now.
        let details = match in_flight {
            Some(waiting) => Details::InFlight(waiting),
            None => match session.show_plan(ChangePhase::Apply).await? {
                Ok(plan) => Details::Shown(plan),
                Err(e) => return Ok(failed(e)),
            },
        };
        sink.phase(Phase::Applying).await?;
        let args = vec![
            "apply".to_owned(),
            "-input=false".to_owned(),
            "-json".to_owned(),
            plan_file.to_string_lossy().into_owned(),
        ];
        let mut outputs = None;
        let (_, step) = session
            .run_json(&args, |msg| {
                if msg["type"] == "outputs" {
                    outputs = Some(msg["outputs"].to_string());
                }
            })
            .instrument(session.step_span("apply"))
            .await?;
        if let Err(e) = step {
            return Ok(failed(e));
        }
        let plan = match details {
            Details::Shown(plan) => plan,
            Details::InFlight(waiting) => match shown_by_plan(waiting).await {
                Ok(mut plan) => {
                    for change in &mut plan.changes {
                        change.phase = ChangePhase::Apply as i32;
                    }
                    plan
                }
                Err(e) => return Ok(failed(e)),
            },
        };
        // `apply -json` reports the root module's outputs (sensitive values included, as
        // `output -json` does) in an `outputs` message; none when there are none.
        let outputs = outputs.unwrap_or_else(|| "{}".to_owned());
        let outputs_json = match parse::parse_outputs(&outputs, sink.redactor()) {
            Ok(o) => o,
            Err(e) => return Ok(failed(e.to_string())),
        };
        Ok(ApplyResult {
            success: true,
            error: String::new(),
            delta: Some(plan.delta),
            changes: plan.changes,
            outputs_json,
            skipped: false,
        })
    }
}

#[tonic::async_trait]
impl RunnerService for TfRunner {
    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        // A missing CLI is reported by Plan/Apply with the vendor's error; Describe stays useful.
        let vendor_version = match VendorCommand::new(&self.binary)
            .env(NO_FORK.0, NO_FORK.1)
            .args(["version", "-json"])
            .output()
            .await
        {
            Ok(out) if out.success() => serde_json::from_str::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v["terraform_version"].as_str().map(str::to_owned))
                .unwrap_or_default(),
            _ => String::new(),
        };
        Ok(Response::new(DescribeResponse {
            vendor: self.flavor.vendor().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            vendor_version,
            capabilities: Some(Capabilities {
                targets: true,
                destroy: true,
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
        let runner = self.clone();
        let stream = spawn_stream(
            redactor(req.workspace.as_ref()),
            move |sink| async move { runner.do_plan(req, &sink).await },
            |r| PlanResponse {
                event: Some(plan_response::Event::Result(r)),
            },
        );
        Ok(Response::new(stream))
    }

    type ApplyStream = EventStream<ApplyResponse>;

    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<Self::ApplyStream>, Status> {
        let req = request.into_inner();
        let runner = self.clone();
        let stream = spawn_stream(
            redactor(req.workspace.as_ref()),
            move |sink| async move { runner.do_apply(req, &sink).await },
            |r| ApplyResponse {
                event: Some(apply_response::Event::Result(r)),
            },
        );
        Ok(Response::new(stream))
    }
}
