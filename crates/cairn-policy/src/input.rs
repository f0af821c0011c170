//! Input documents, field for field as Spacelift documents them, as plain serde types. The
//! server maps its domain onto these.
//!
//! `Option` fields documented as "string or null" serialize as `null` (policies test them with
//! `is_null`); fields documented as possibly missing are skipped when `None`.

use std::collections::BTreeMap;

use regorus::Value;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value as Json;

use crate::error::{PolicyError, Result};

/// Something a policy can be evaluated against.
pub trait PolicyInput {
    /// The input as a regorus value (what evaluation consumes).
    fn to_rego(&self) -> Result<Value>;
    /// The input as JSON (what a policy sample stores).
    fn to_json(&self) -> Result<Json>;
}

fn json_of<T: Serialize>(value: &T) -> Result<Json> {
    serde_json::to_value(value).map_err(|e| PolicyError::Input(e.to_string()))
}

impl PolicyInput for Json {
    fn to_rego(&self) -> Result<Value> {
        Ok(Value::from(self.clone()))
    }
    fn to_json(&self) -> Result<Json> {
        Ok(self.clone())
    }
}

macro_rules! serde_input {
    ($($ty:ty),*) => {$(
        impl PolicyInput for $ty {
            fn to_rego(&self) -> Result<Value> {
                Ok(Value::from(json_of(self)?))
            }
            fn to_json(&self) -> Result<Json> {
                json_of(self)
            }
        }
    )*};
}

serde_input!(PushInput, PlanInput, ApprovalInput);

// ---------------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Commit {
    /// VCS login if available, name otherwise.
    pub author: String,
    pub branch: String,
    /// Unix nanoseconds.
    pub created_at: i64,
    pub hash: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChangeEntity {
    pub address: String,
    pub name: String,
    /// Full resource type, or `output` for outputs.
    pub r#type: String,
    pub entity_vendor: String,
    pub entity_type: String,
    pub data: Json,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunChange {
    /// `added` | `changed` | `deleted`.
    pub action: String,
    pub entity: ChangeEntity,
    /// `plan` | `apply`.
    pub phase: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreatorSession {
    pub admin: bool,
    pub creator_ip: String,
    pub login: String,
    pub name: String,
    pub teams: Vec<String>,
    pub machine: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    pub before_init: Vec<String>,
    pub project_root: String,
    pub runner_image: String,
    pub terraform_version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StateTransition {
    pub new_state: String,
}

/// The `run` document (trigger, plan, approval policies).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunInfo {
    pub based_on_local_workspace: bool,
    pub branch: String,
    pub changes: Vec<RunChange>,
    /// Set for tasks (approval policies); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub commit: Commit,
    pub created_at: i64,
    pub creator_session: Option<CreatorSession>,
    pub drift_detection: bool,
    pub flags: Vec<String>,
    pub id: String,
    pub runtime_config: RuntimeConfig,
    pub state: String,
    pub states_history: Vec<StateTransition>,
    /// User or trigger policy that triggered the run; `null` for VCS events.
    pub triggered_by: Option<String>,
    /// `PROPOSED` | `TRACKED` | `TASK` | ...
    pub r#type: String,
    pub updated_at: i64,
    pub user_provided_metadata: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerPoolInfo {
    pub id: Option<String>,
    pub labels: Vec<String>,
    pub name: Option<String>,
    pub public: bool,
}

/// The `stack` document, and each element of `stacks`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StackInfo {
    /// Push policies read it (default push behaviour); other kinds ignore it.
    pub additional_project_globs: Vec<String>,
    pub administrative: bool,
    pub autodeploy: bool,
    /// Tracked branch.
    pub branch: String,
    pub id: String,
    pub labels: Vec<String>,
    pub locked_by: Option<String>,
    pub name: String,
    pub namespace: String,
    pub project_root: Option<String>,
    pub repository: String,
    pub state: String,
    pub terraform_version: Option<String>,
    pub tracked_commit: Option<Commit>,
    pub worker_pool: WorkerPoolInfo,
}

// ---------------------------------------------------------------------------------------------
// Trigger
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkflowRun {
    pub id: String,
    pub stack_id: String,
    pub state: String,
    /// `TRACKED` | `TASK`.
    pub r#type: String,
}

/// `input.stacks`, converted to a Rego value once and shared: regorus values are reference
/// counted, so every trigger evaluation reuses the same tree instead of re-serialising the
/// account's stacks. Rebuild it when a stack changes.
#[derive(Debug, Clone, PartialEq)]
pub struct StacksDocument {
    value: Value,
    len: usize,
}

impl StacksDocument {
    pub fn new(stacks: &[StackInfo]) -> Result<Self> {
        // Parsed from text rather than converted from a JSON tree: regorus' parser shares one
        // string per distinct object key, so the field names of thousands of stacks stay in
        // cache while a policy looks up `stack.labels` in each of them.
        let text = serde_json::to_string(stacks).map_err(|e| PolicyError::Input(e.to_string()))?;
        Ok(Self {
            value: Value::from_json_str(&text).map_err(|e| PolicyError::Input(e.to_string()))?,
            len: stacks.len(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_value(&self) -> &Value {
        &self.value
    }
}

impl Default for StacksDocument {
    fn default() -> Self {
        Self {
            value: Value::new_array(),
            len: 0,
        }
    }
}

impl Serialize for StacksDocument {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for StacksDocument {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let stacks = Vec::<StackInfo>::deserialize(deserializer)?;
        Self::new(&stacks).map_err(serde::de::Error::custom)
    }
}

/// Input of a trigger policy, evaluated when a blocking run reaches a terminal state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TriggerInput {
    pub run: RunInfo,
    /// The stack the finished run belongs to.
    pub stack: StackInfo,
    /// Every stack of the account.
    pub stacks: StacksDocument,
    /// Runs of the same workflow.
    pub workflow: Vec<WorkflowRun>,
}

impl PolicyInput for TriggerInput {
    fn to_rego(&self) -> Result<Value> {
        // Built as a whole map rather than inserted into an empty object: regorus keeps an
        // object made from a map in its compact sorted form, which `input.x` looks up faster
        // than the mutable tree that inserts leave behind.
        let doc = BTreeMap::from([
            (Value::from("run"), Value::from(json_of(&self.run)?)),
            (Value::from("stack"), Value::from(json_of(&self.stack)?)),
            (Value::from("stacks"), self.stacks.value.clone()),
            (
                Value::from("workflow"),
                Value::from(json_of(&self.workflow)?),
            ),
        ]);
        Ok(Value::from(doc))
    }
    fn to_json(&self) -> Result<Json> {
        json_of(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Push
// ---------------------------------------------------------------------------------------------

/// A pushed commit (`push`, `pull_request.head`, `pull_request.base`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PushCommit {
    /// Files touched by any commit of the push.
    pub affected_files: Vec<String>,
    pub author: String,
    pub branch: String,
    pub created_at: i64,
    pub message: String,
    /// Tag name for tag pushes, empty otherwise.
    pub tag: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PullRequest {
    /// opened, reopened, closed, merged, edited, labeled, synchronize, unlabeled, commented.
    pub action: String,
    pub action_initiator: String,
    pub approved: bool,
    pub author: String,
    pub base: PushCommit,
    pub closed: bool,
    /// Body of the comment for `commented` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Files changed between base and head.
    pub diff: Vec<String>,
    pub draft: bool,
    pub head: PushCommit,
    pub head_owner: String,
    pub id: i64,
    pub labels: Vec<String>,
    pub mergeable: bool,
    pub title: String,
    pub undiverged: bool,
}

/// A run still queued or awaiting confirmation (`in_progress`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InProgressRun {
    pub based_on_local_workspace: bool,
    pub branch: String,
    pub created_at: i64,
    pub id: String,
    pub state: String,
    pub triggered_by: Option<String>,
    pub r#type: String,
    pub updated_at: i64,
    pub user_provided_metadata: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpaceInfo {
    pub id: String,
    pub labels: Vec<String>,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VcsIntegration {
    pub id: String,
    pub name: String,
    /// AZURE_DEVOPS, BITBUCKET_CLOUD, BITBUCKET_DATACENTER, GIT, GITHUB, GITHUB_ENTERPRISE, GITLAB.
    pub provider: String,
    pub description: String,
    pub is_default: bool,
    pub space: SpaceInfo,
    pub labels: Vec<String>,
    pub updated_at: i64,
    pub created_at: i64,
}

/// Input of a push policy, evaluated per stack for each push or pull-request event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PushInput {
    /// The pushed commit; for pull-request events the head (or merge) commit.
    pub push: PushCommit,
    /// `null` for plain pushes.
    pub pull_request: Option<PullRequest>,
    pub stack: StackInfo,
    pub in_progress: Vec<InProgressRun>,
    pub vcs_integration: Option<VcsIntegration>,
}

// ---------------------------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestInfo {
    /// Evaluation time, Unix nanoseconds (policies cannot call `time.now_ns`).
    pub timestamp_ns: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanContext {
    pub commit: Commit,
    pub request: RequestInfo,
    /// Missing on a stack's first run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_run: Option<RunInfo>,
    pub run: RunInfo,
    pub stack: StackInfo,
}

/// Input of a plan policy: Spacelift metadata plus the vendor's plan document (for Terraform,
/// `resource_changes` etc. from `terraform show -json`, with sensitive strings sanitized).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanInput {
    pub spacelift: PlanContext,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terraform: Option<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulumi: Option<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ansible: Option<Json>,
    /// `input.third_party_metadata.custom.<key>` from `<key>.custom.spacelift.json` files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub third_party_metadata: Option<BTreeMap<String, Json>>,
}

// ---------------------------------------------------------------------------------------------
// Approval
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReviewRequest {
    pub remote_ip: String,
    pub timestamp_ns: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReviewSession {
    pub login: String,
    pub name: String,
    pub teams: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Review {
    pub author: String,
    pub request: ReviewRequest,
    pub session: ReviewSession,
    /// Run state when the review was made.
    pub state: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReviewSet {
    pub approvals: Vec<Review>,
    pub rejections: Vec<Review>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reviews {
    /// Reviews made in the run's current state (each user's newest only).
    pub current: ReviewSet,
    /// Reviews made in previous states.
    pub older: Vec<ReviewSet>,
}

/// Input of an approval policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApprovalInput {
    pub reviews: Reviews,
    pub run: RunInfo,
    pub stack: StackInfo,
}
