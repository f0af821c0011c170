//! The one storage trait. Each backend (cairn-store-sqlite, cairn-store-postgres) implements it
//! with its own migrations and must pass [`conformance`], the shared suite.
//!
//! Runs and stacks are stored as JSON documents next to the indexed columns that queries need
//! (state, stack, type, creation order, version). Every write of a run is a compare-and-swap on
//! its `version`; the domain logic of a transition lives in cairn-core ([`Run::apply`]) and
//! [`transition`] retries it on a lost race, so the state machine is enforced in one place.

use async_trait::async_trait;
use cairn_core::{
    ApiKey, ConfigurationVersion, CoreError, Deployment, DispatchView, EnvVar, Lease, LogLine,
    Nanos, Run, RunEvent, RunPatch, Stack, Worker, WorkerPool,
};

pub mod bench;
pub mod conformance;
pub mod notify;
pub mod tfstate;
pub mod vcs;

pub use notify::{DeliveryRecord, WebhookRecord};
pub use tfstate::{LockAttempt, StateLock, StateVersion, UnlockOutcome};
pub use vcs::{GitRefRecord, PullRequestRecord, VcsEventRecord, VcsIntegration};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    /// Optimistic concurrency: the row changed since it was read.
    #[error("{kind} {id:?} was changed concurrently (expected version {expected})")]
    Conflict {
        kind: &'static str,
        id: String,
        expected: i64,
    },
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("storage backend: {0}")]
    Backend(String),
}

impl StoreError {
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        StoreError::NotFound {
            kind,
            id: id.into(),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Refuses a [`Store::update_stacks`] batch naming one stack twice (its second expected
/// version could never match), before anything is written.
pub fn check_distinct_stacks(stacks: &[Stack]) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(stacks.len());
    match stacks.iter().find(|s| !seen.insert(s.id.as_str())) {
        Some(dup) => Err(StoreError::Core(CoreError::invalid(
            "stacks",
            format!("stack {:?} appears more than once in one update", dup.id),
        ))),
        None => Ok(()),
    }
}

/// One page request: `token` is the opaque `next` of the previous page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub size: u32,
    pub token: Option<String>,
}

impl Page {
    pub const DEFAULT_SIZE: u32 = 50;
    pub const MAX_SIZE: u32 = 500;

    pub fn first(size: u32) -> Page {
        Page { size, token: None }
    }

    /// The effective size: 0 means the default; capped at the maximum.
    pub fn limit(&self) -> u32 {
        match self.size {
            0 => Self::DEFAULT_SIZE,
            n => n.min(Self::MAX_SIZE),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PageOut<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Stacks. `version` starts at 1 and every update bumps it.
    async fn create_stack(&self, stack: Stack, env: Vec<EnvVar>) -> Result<Stack>;
    async fn get_stack(&self, id: &str) -> Result<Stack>;
    /// Stacks carrying all `labels`, ordered by id.
    async fn list_stacks(&self, labels: &[String], page: &Page) -> Result<PageOut<Stack>>;
    /// Every stack (policy inputs, push fan-out).
    async fn all_stacks(&self) -> Result<Vec<Stack>>;
    /// Replaces the stored stack if its version is still `stack.version`; returns the stored
    /// stack with the bumped version, or `Conflict`.
    async fn update_stack(&self, stack: Stack) -> Result<Stack>;
    /// [`Store::update_stack`] for many stacks in one transaction, all or nothing: when any
    /// stack's stored version is no longer its `version` (or it is gone) nothing is written
    /// and the error (`Conflict` or NotFound) names the first such stack. Returns the stored
    /// stacks, in input order. (One push fans out to thousands of stacks.)
    async fn update_stacks(&self, stacks: Vec<Stack>) -> Result<Vec<Stack>>;
    /// Deletes a stack, its variables and runs; refused (FailedPrecondition) while a run of the
    /// stack is not terminal. The check and the delete are one transaction.
    async fn delete_stack(&self, id: &str) -> Result<()>;

    // Environment variables (values in clear: the service redacts secrets).
    async fn set_env_var(&self, stack_id: &str, var: EnvVar) -> Result<()>;
    async fn delete_env_var(&self, stack_id: &str, name: &str) -> Result<()>;
    async fn list_env_vars(&self, stack_id: &str) -> Result<Vec<EnvVar>>;

    // Runs.
    async fn create_run(&self, run: Run) -> Result<Run>;
    /// Creates each run unless a run with the same [`Run::dedup_key`] exists — stored earlier,
    /// earlier in the same batch, or inserted concurrently by another writer (another replica
    /// on the same database): that run is then returned as [`Dedup::Existing`] and nothing is
    /// written for it. Per key, of any number of concurrent callers exactly one gets
    /// [`Dedup::Created`]. Results are in input order. The batch is one transaction (keys are
    /// inserted in sorted order, so concurrent batches cannot deadlock); NotFound names a
    /// missing stack. Runs created by [`Store::create_run`] carry no key and never collide.
    async fn create_runs_dedup(&self, runs: Vec<Run>) -> Result<Vec<Dedup>>;
    async fn get_run(&self, id: &str) -> Result<Run>;
    /// A stack's runs, newest first.
    async fn list_runs(&self, stack_id: &str, page: &Page) -> Result<PageOut<Run>>;
    /// Writes `run` if the stored version is still `expected_version` (the caller has already
    /// bumped `run.version`); otherwise `Conflict` and nothing changes.
    async fn update_run(&self, run: &Run, expected_version: i64) -> Result<Run>;
    /// Runs of a stack that are not terminal.
    async fn unfinished_runs(&self, stack_id: &str) -> Result<Vec<Run>>;
    /// [`Store::unfinished_runs`] of many stacks in one read (the `in_progress` input of every
    /// stack a push fans out to), ordered by stack, then oldest first (created_at, then id).
    async fn unfinished_runs_of(&self, stack_ids: &[String]) -> Result<Vec<Run>>;
    /// Runs in a dispatchable state plus the head of each stack's blocking queue; order them
    /// with [`cairn_core::dispatch_order`].
    async fn dispatch_view(&self) -> Result<DispatchView>;
    async fn workflow_runs(&self, workflow_id: &str) -> Result<Vec<Run>>;

    // Logs.
    async fn append_logs(&self, run_id: &str, lines: &[LogLine]) -> Result<()>;
    async fn read_logs(&self, run_id: &str, after_seq: i64, limit: u32) -> Result<Vec<LogLine>>;
    /// The highest seq stored for a run (0 when none).
    async fn last_log_seq(&self, run_id: &str) -> Result<i64>;

    // Worker pools, workers, leases.
    async fn create_worker_pool(&self, pool: WorkerPool) -> Result<WorkerPool>;
    async fn get_worker_pool(&self, id: &str) -> Result<WorkerPool>;
    async fn find_worker_pool_by_token_hash(&self, token_hash: &str) -> Result<WorkerPool>;
    async fn list_worker_pools(&self) -> Result<Vec<WorkerPool>>;
    async fn upsert_worker(&self, worker: Worker) -> Result<()>;
    async fn list_workers(&self, pool_id: &str) -> Result<Vec<Worker>>;
    async fn create_lease(&self, lease: Lease) -> Result<()>;
    async fn get_lease(&self, id: &str) -> Result<Lease>;
    /// Refreshes the heartbeat of the given leases of one worker.
    async fn heartbeat_leases(
        &self,
        worker_id: &str,
        lease_ids: &[String],
        now: Nanos,
    ) -> Result<()>;
    async fn delete_lease(&self, id: &str) -> Result<()>;
    async fn list_leases(&self) -> Result<Vec<Lease>>;

    // Terraform state per (stack, deployment): append-only versions, current = highest serial.
    /// Appends a version if its serial is above the current one and its lineage is the current
    /// one's (any lineage for the first); check and insert are atomic. Otherwise `Conflict`
    /// (`expected` = the current serial) and nothing changes; NotFound when the stack is missing.
    async fn add_state_version(&self, version: StateVersion) -> Result<StateVersion>;
    async fn current_state_version(
        &self,
        stack_id: &str,
        deployment: &str,
    ) -> Result<Option<StateVersion>>;
    async fn get_state_version(
        &self,
        stack_id: &str,
        deployment: &str,
        serial: i64,
    ) -> Result<StateVersion>;
    /// A deployment's versions, newest first.
    async fn list_state_versions(
        &self,
        stack_id: &str,
        deployment: &str,
        page: &Page,
    ) -> Result<PageOut<StateVersion>>;
    /// Takes the deployment's lock unless another id holds it (then returns the holder).
    async fn acquire_state_lock(&self, lock: StateLock) -> Result<LockAttempt>;
    /// Releases the lock only when it is held with `lock_id`.
    async fn release_state_lock(
        &self,
        stack_id: &str,
        deployment: &str,
        lock_id: &str,
    ) -> Result<UnlockOutcome>;
    async fn get_state_lock(&self, stack_id: &str, deployment: &str) -> Result<Option<StateLock>>;
    /// Releases every lock a run holds (its worker died or the run ended); returns them.
    async fn force_release_state_locks(&self, run_id: &str) -> Result<Vec<StateLock>>;

    // API keys (secrets stored as hashes only).
    async fn create_api_key(&self, key: ApiKey) -> Result<ApiKey>;
    async fn find_api_key_by_hash(&self, secret_hash: &str) -> Result<ApiKey>;
    async fn list_api_keys(&self) -> Result<Vec<ApiKey>>;
    async fn revoke_api_key(&self, id: &str) -> Result<()>;

    // Policies. `version` starts at 1 and every update bumps it; `stack_ids` (direct
    // attachments) are managed by attach/detach only and ignored by create/update.
    async fn create_policy(&self, policy: PolicyRecord) -> Result<PolicyRecord>;
    async fn get_policy(&self, id: &str) -> Result<PolicyRecord>;
    /// Policies ordered by id, optionally of one kind.
    async fn list_policies(&self, kind: Option<&str>, page: &Page)
        -> Result<PageOut<PolicyRecord>>;
    /// Every policy with its attachments (evaluation picks the ones that apply to a stack).
    async fn all_policies(&self) -> Result<Vec<PolicyRecord>>;
    /// Replaces name, body and labels if the stored version is still `policy.version`; returns
    /// the stored policy with the bumped version, or `Conflict`.
    async fn update_policy(&self, policy: PolicyRecord) -> Result<PolicyRecord>;
    /// Deletes a policy with its attachments and samples.
    async fn delete_policy(&self, id: &str) -> Result<()>;
    /// Attaches a policy to a stack (idempotent); NotFound names whichever of the two is missing.
    async fn attach_policy(&self, policy_id: &str, stack_id: &str) -> Result<()>;
    /// NotFound when the policy is not attached to the stack.
    async fn detach_policy(&self, policy_id: &str, stack_id: &str) -> Result<()>;

    // Policy samples: the newest `keep` per policy are retained.
    async fn add_policy_sample(&self, sample: PolicySample, keep: u32) -> Result<()>;
    async fn get_policy_sample(&self, id: &str) -> Result<PolicySample>;
    /// A policy's samples, newest first.
    async fn list_policy_samples(
        &self,
        policy_id: &str,
        page: &Page,
    ) -> Result<PageOut<PolicySample>>;

    // Reviews of runs (every review is kept: approval policies see older ones too) and the
    // approval outcome reached in a given run state.
    async fn add_review(&self, review: ReviewRecord) -> Result<()>;
    /// A run's reviews, oldest first.
    async fn list_reviews(&self, run_id: &str) -> Result<Vec<ReviewRecord>>;
    /// Records what the approval policies concluded for a run in `state` (replacing any earlier
    /// outcome for that state).
    async fn set_run_approval(&self, run_id: &str, state: &str, outcome: &str) -> Result<()>;
    async fn run_approval(&self, run_id: &str, state: &str) -> Result<Option<String>>;

    // VCS integrations (AlreadyExists on a taken id), listed by id.
    async fn create_vcs_integration(&self, integration: VcsIntegration) -> Result<VcsIntegration>;
    async fn get_vcs_integration(&self, id: &str) -> Result<VcsIntegration>;
    async fn list_vcs_integrations(&self) -> Result<Vec<VcsIntegration>>;

    // Received deliveries. AlreadyExists (id = the delivery id) when the integration already
    // has a delivery with this id: the caller answers "duplicate" and does nothing.
    async fn add_vcs_event(&self, event: VcsEventRecord) -> Result<VcsEventRecord>;
    async fn get_vcs_event_by_delivery(
        &self,
        integration_id: &str,
        delivery_id: &str,
    ) -> Result<VcsEventRecord>;
    /// Events not yet marked processed, oldest first.
    async fn unprocessed_vcs_events(&self) -> Result<Vec<VcsEventRecord>>;
    async fn mark_vcs_event_processed(&self, id: &str, at: Nanos, result: &str) -> Result<()>;

    // Refs last seen by the plain-Git poller, per repository (URL or path), ordered by name.
    async fn git_refs(&self, repository: &str) -> Result<Vec<GitRefRecord>>;
    /// Replaces every ref stored for `repository`.
    async fn set_git_refs(&self, repository: &str, refs: &[GitRefRecord]) -> Result<()>;

    // The newest event of each pull request, for comment events that name only its number.
    /// Inserts or replaces the pull request's record; NotFound when the integration is gone.
    async fn put_pull_request(&self, pr: PullRequestRecord) -> Result<()>;
    async fn get_pull_request(
        &self,
        integration_id: &str,
        repository: &str,
        number: i64,
    ) -> Result<Option<PullRequestRecord>>;

    // Outgoing webhooks (AlreadyExists on a taken id), listed by id. Deleting one (NotFound
    // when absent) deletes its deliveries.
    async fn create_webhook(&self, webhook: WebhookRecord) -> Result<WebhookRecord>;
    async fn get_webhook(&self, id: &str) -> Result<WebhookRecord>;
    async fn list_webhooks(&self) -> Result<Vec<WebhookRecord>>;
    async fn delete_webhook(&self, id: &str) -> Result<()>;
    /// Inserts or replaces a delivery (by id); NotFound when its webhook is gone. Only the
    /// newest `keep` deliveries of the webhook are kept.
    async fn put_webhook_delivery(&self, delivery: DeliveryRecord, keep: u32) -> Result<()>;
    /// The newest `limit` deliveries of a webhook first.
    async fn list_webhook_deliveries(
        &self,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>>;

    // Deployments of a stack (HCP Terraform) and its configuration versions.
    /// AlreadyExists when the stack has a deployment of that name; NotFound without the stack.
    async fn create_deployment(&self, deployment: Deployment) -> Result<Deployment>;
    async fn get_deployment(&self, stack_id: &str, name: &str) -> Result<Deployment>;
    /// A stack's deployments (removed ones too), ordered by name.
    async fn list_deployments(&self, stack_id: &str) -> Result<Vec<Deployment>>;
    /// Replaces a deployment's document (its lock is untouched); NotFound when absent.
    async fn update_deployment(&self, deployment: Deployment) -> Result<Deployment>;
    /// Takes the deployment's lock for `run_id` unless another run holds it: one atomic
    /// compare-and-set. Returns the holder afterwards (`run_id` when taken or already held).
    async fn acquire_deployment_lock(
        &self,
        stack_id: &str,
        name: &str,
        run_id: &str,
    ) -> Result<String>;
    /// Frees the lock if `run_id` holds it; true when it did.
    async fn release_deployment_lock(
        &self,
        stack_id: &str,
        name: &str,
        run_id: &str,
    ) -> Result<bool>;
    /// Appends a configuration version with the stack's next `seq` (1, 2, ...), assigned
    /// atomically; the returned version carries it. NotFound without the stack.
    async fn add_configuration_version(
        &self,
        version: ConfigurationVersion,
    ) -> Result<ConfigurationVersion>;
    async fn get_configuration_version(
        &self,
        stack_id: &str,
        seq: i64,
    ) -> Result<ConfigurationVersion>;
    /// Newest first, at most `limit`, with `seq` below `before` when `before` > 0.
    async fn list_configuration_versions(
        &self,
        stack_id: &str,
        before: i64,
        limit: u32,
    ) -> Result<Vec<ConfigurationVersion>>;

    // The provider comment id of the pull-request comment Cairn keeps for a stack.
    async fn pr_comment_id(&self, stack_id: &str, pull_request: i64) -> Result<Option<i64>>;
    async fn set_pr_comment_id(
        &self,
        stack_id: &str,
        pull_request: i64,
        comment_id: i64,
    ) -> Result<()>;
}

/// What [`Store::create_runs_dedup`] did with one run.
#[derive(Debug, Clone, PartialEq)]
pub enum Dedup {
    /// The run was stored as given.
    Created(Run),
    /// A run with the same dedup key already existed: this is that run, unchanged.
    Existing(Run),
}

impl Dedup {
    pub fn run(&self) -> &Run {
        match self {
            Dedup::Created(r) | Dedup::Existing(r) => r,
        }
    }

    pub fn into_run(self) -> Run {
        match self {
            Dedup::Created(r) | Dedup::Existing(r) => r,
        }
    }

    pub fn created(&self) -> bool {
        matches!(self, Dedup::Created(_))
    }
}

/// [`Store::create_runs_dedup`] for one run.
pub async fn create_run_dedup(store: &dyn Store, run: Run) -> Result<Dedup> {
    store
        .create_runs_dedup(vec![run])
        .await?
        .pop()
        .ok_or_else(|| StoreError::Backend("create_runs_dedup returned no result".into()))
}

/// A stored Rego policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyRecord {
    pub id: String,
    pub name: String,
    /// `PUSH` | `TRIGGER` | `PLAN` | `APPROVAL`.
    pub kind: String,
    pub body: String,
    pub labels: Vec<String>,
    pub version: i64,
    /// Stacks attached directly, ordered by id.
    pub stack_ids: Vec<String>,
    pub created_at: Nanos,
    pub updated_at: Nanos,
}

/// One evaluation of a policy, kept for inspection and replay.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicySample {
    pub id: String,
    pub policy_id: String,
    pub policy_version: i64,
    /// The run the evaluation was about, if any.
    pub run_id: String,
    pub input_json: String,
    pub decision_json: String,
    pub duration_micros: i64,
    pub created_at: Nanos,
    /// Why the evaluation failed; empty on success.
    pub error: String,
}

/// A review of a run, with the run state it was made in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReviewRecord {
    pub run_id: String,
    pub login: String,
    pub name: String,
    pub teams: Vec<String>,
    pub approve: bool,
    pub note: String,
    pub run_state: String,
    pub remote_ip: String,
    pub timestamp: Nanos,
}

/// Applies `event` to a run through the state machine and persists it atomically with its
/// history entry. Lost races are retried against the fresh run, so of several concurrent
/// conflicting calls exactly one wins and the others see FAILED_PRECONDITION from the table.
pub async fn transition(
    store: &dyn Store,
    run_id: &str,
    event: RunEvent,
    note: &str,
    patch: RunPatch,
) -> Result<Run> {
    mutate_run(store, run_id, |run, now| {
        run.apply(event, note, patch.clone(), now).map(|_| ())
    })
    .await
}

/// Reads, mutates and compare-and-swaps a run, retrying on conflicts. `f` must be a pure
/// function of the run it is given.
pub async fn mutate_run<F>(store: &dyn Store, run_id: &str, f: F) -> Result<Run>
where
    F: Fn(&mut Run, Nanos) -> std::result::Result<(), CoreError> + Send + Sync,
{
    // Each retry means another writer won; 64 rounds is far beyond any realistic contention and
    // keeps a pathological loop bounded.
    for _ in 0..64 {
        let mut run = store.get_run(run_id).await?;
        let expected = run.version;
        f(&mut run, cairn_core::now_nanos())?;
        match store.update_run(&run, expected).await {
            Err(StoreError::Conflict { .. }) => {
                tokio::task::yield_now().await;
                continue;
            }
            other => return other,
        }
    }
    Err(StoreError::Conflict {
        kind: "run",
        id: run_id.to_string(),
        expected: -1,
    })
}
