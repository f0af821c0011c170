//! The worker: lease jobs, check out code, run plugins, stream logs.
//!
//! [`run`] connects to the control plane's `AgentService`, registers with the pool token and
//! keeps one Session stream open. For every lease it checks the repository out with the `git`
//! CLI (a bare cache per repository under [`Config::work_dir`]), launches the stack's runner
//! plugin (`cairn-runner-<vendor>`, found on [`Config::plugin_path`]) and forwards its phases,
//! log lines (secrets masked) and result. Plans that wait for confirmation upload their whole
//! work tree, encrypted with the run's AES-256-GCM key; applies download, verify, decrypt and
//! restore it, then apply exactly that plan.
//!
//! After a broken stream the agent reconnects while its jobs keep running; the first message
//! after `Registered` is a heartbeat listing their leases (so the control plane re-adopts them),
//! then the events queued meanwhile.
//!
//! Events of one job, in order: `phase` (PREPARING, INITIALIZING, PLANNING, APPLYING, each at
//! most once and never backwards), `log` lines (`seq` from 1 per job), then the end:
//! - PLAN: [`workspace_stored` if `upload_workspace` and the plan succeeded], `plan_result`;
//! - APPLY: `apply_result`;
//! - PLAN_AND_APPLY: `plan_result`; unless the plan failed or was a no-op, the job then waits
//!   (up to the lease timeout, else `failed`) for the control plane's `ProceedJob`:
//!   `apply` → `apply_result` from the same work tree; `upload_workspace` → `workspace_stored`;
//!   otherwise nothing more;
//! - or, at any point, `failed{reason}` or `stopped` (after a CancelJob) instead.

mod config;
mod error;
mod git;
mod job;
mod session;
mod workspace;

pub use config::{duration, Config, DEFAULT_SERVER_URL};
pub use error::{Error, Result};
pub use session::run;
