//! Runs: what happened, to which stack, at which commit, and what it changed.

use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::state::{next_state, RunEvent, RunState};
use crate::Nanos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunType {
    Proposed,
    #[default]
    Tracked,
    Task,
    DriftDetection,
}

impl RunType {
    /// Tracked runs and tasks block their stack: one at a time, in order.
    pub fn is_blocking(self) -> bool {
        matches!(self, RunType::Tracked | RunType::Task)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunType::Proposed => "PROPOSED",
            RunType::Tracked => "TRACKED",
            RunType::Task => "TASK",
            RunType::DriftDetection => "DRIFT_DETECTION",
        }
    }

    /// Dispatch order class: lower goes first (after prioritized runs).
    pub fn schedule_class(self) -> u8 {
        match self {
            RunType::Tracked | RunType::Task => 1,
            RunType::Proposed => 2,
            RunType::DriftDetection => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunMode {
    #[default]
    Normal,
    Destroy,
    Import,
}

/// A Git commit as policies see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Commit {
    pub author: String,
    pub branch: String,
    pub created_at: Nanos,
    pub hash: String,
    pub message: String,
}

/// Who created a run (policy input `creator_session`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CreatorSession {
    pub admin: bool,
    pub creator_ip: String,
    pub login: String,
    pub name: String,
    pub teams: Vec<String>,
    pub machine: bool,
}

/// Resources and outputs added, changed and deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Delta {
    pub added_resources: i32,
    pub changed_resources: i32,
    pub deleted_resources: i32,
    pub added_outputs: i32,
    pub changed_outputs: i32,
    pub deleted_outputs: i32,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        *self == Delta::default()
    }

    /// Counts changes by action and entity kind (`type == "output"` counts as an output).
    pub fn from_changes<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Delta {
        let mut d = Delta::default();
        for c in changes {
            let output = c.entity.r#type == "output";
            let slot = match (c.action, output) {
                (ChangeAction::Added, false) => &mut d.added_resources,
                (ChangeAction::Changed, false) => &mut d.changed_resources,
                (ChangeAction::Deleted, false) => &mut d.deleted_resources,
                (ChangeAction::Added, true) => &mut d.added_outputs,
                (ChangeAction::Changed, true) => &mut d.changed_outputs,
                (ChangeAction::Deleted, true) => &mut d.deleted_outputs,
            };
            *slot += 1;
        }
        d
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeAction {
    Added,
    Changed,
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangePhase {
    Plan,
    Apply,
}

/// The entity a change touches (trigger-policy schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Entity {
    pub address: String,
    pub name: String,
    pub r#type: String,
    pub entity_vendor: String,
    pub entity_type: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub action: ChangeAction,
    pub entity: Entity,
    pub phase: ChangePhase,
}

/// One entry of `states_history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateTransition {
    pub state: RunState,
    pub timestamp: Nanos,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepKind {
    Plan,
    Apply,
    Import,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepState {
    Pending,
    Running,
    Waiting,
    Success,
    Failed,
    Cancelled,
}

/// One plan or apply cycle of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub index: i32,
    pub kind: StepKind,
    pub state: StepState,
    pub started_at: Nanos,
    pub ended_at: Nanos,
    pub delta: Delta,
}

/// A reviewer's decision; only a reviewer's newest counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub login: String,
    pub approve: bool,
    pub note: String,
    pub timestamp: Nanos,
}

/// A run: one execution against a stack (and one of its deployments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub stack_id: String,
    pub run_type: RunType,
    pub mode: RunMode,
    pub state: RunState,
    pub states_history: Vec<StateTransition>,
    /// `user:<login>`, `machine:<login>`, `git:<event>` or `trigger_policy:<policy id>`.
    pub triggered_by: String,
    pub creator_session: CreatorSession,
    pub commit: Commit,
    pub workflow_id: String,
    pub prioritized: bool,
    pub flags: Vec<String>,
    pub delta: Delta,
    pub changes: Vec<Change>,
    pub steps: Vec<Step>,
    pub targets: Vec<String>,
    pub deployment: String,
    pub created_at: Nanos,
    pub updated_at: Nanos,
    /// Incremented by every change; stores compare-and-swap on it.
    pub version: i64,
    pub no_op: bool,
    pub reviews: Vec<Review>,
    pub policy_denies: Vec<String>,
    pub policy_warnings: Vec<String>,
    pub error: String,
    /// Encrypted workspace archive kept between plan and apply.
    pub artifact_id: String,
    /// The vendor's redacted machine-readable plan, input to plan policies.
    #[serde(default)]
    pub plan_json: String,
    /// The pull request (number within its repository) whose event created the run; where
    /// commit statuses' pull-request comments go. Not shown to policies.
    #[serde(default)]
    pub pull_request: Option<u64>,
    /// The configuration version (seq) a deployment run is built from; 0 = not a deployment
    /// run (Spacelift-style run).
    #[serde(default)]
    pub config_version: i64,
    /// Plan/apply cycles a deployment run has started (1 for its first plan).
    #[serde(default)]
    pub cycle: u32,
    /// When the run was first confirmed; deployment runs queue for their lock in this order.
    #[serde(default)]
    pub approved_at: Nanos,
}

/// Field updates that travel with a transition, persisted in the same write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunPatch {
    pub delta: Option<Delta>,
    pub changes: Option<Vec<Change>>,
    pub no_op: Option<bool>,
    pub targets: Option<Vec<String>>,
    pub error: Option<String>,
    pub artifact_id: Option<String>,
    pub plan_json: Option<String>,
    pub policy_denies: Option<Vec<String>>,
    pub policy_warnings: Option<Vec<String>>,
    pub flags: Option<Vec<String>>,
    pub steps: Option<Vec<Step>>,
}

impl Run {
    /// What makes a VCS-created run unique: one run per (stack, deployment, commit SHA, run
    /// type), however many events (a push and its pull request, redeliveries, several server
    /// replicas processing the same delivery) resolve to it. The SHA is lower-cased so one
    /// commit written two ways is one key; stack ids and deployment names are slugs and SHAs
    /// hex, so `/` cannot occur inside a part.
    pub fn dedup_key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.stack_id,
            self.deployment,
            self.commit.hash.trim().to_ascii_lowercase(),
            self.run_type.as_str()
        )
    }

    /// A new QUEUED run with its first history entry.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        stack_id: String,
        run_type: RunType,
        commit: Commit,
        triggered_by: String,
        creator_session: CreatorSession,
        now: Nanos,
    ) -> Run {
        Run {
            workflow_id: id.clone(),
            id,
            stack_id,
            run_type,
            mode: RunMode::Normal,
            state: RunState::Queued,
            states_history: vec![StateTransition {
                state: RunState::Queued,
                timestamp: now,
                note: String::new(),
            }],
            triggered_by,
            creator_session,
            commit,
            prioritized: false,
            flags: Vec::new(),
            delta: Delta::default(),
            changes: Vec::new(),
            steps: Vec::new(),
            targets: Vec::new(),
            deployment: "default".into(),
            created_at: now,
            updated_at: now,
            version: 1,
            no_op: false,
            reviews: Vec::new(),
            policy_denies: Vec::new(),
            policy_warnings: Vec::new(),
            error: String::new(),
            artifact_id: String::new(),
            plan_json: String::new(),
            pull_request: None,
            config_version: 0,
            cycle: 0,
            approved_at: 0,
        }
    }

    /// Applies `event` with its patch: checks the table, appends the history entry, bumps the
    /// version. On error the run is untouched.
    pub fn apply(
        &mut self,
        event: RunEvent,
        note: &str,
        patch: RunPatch,
        now: Nanos,
    ) -> Result<RunState, CoreError> {
        let to = next_state(self.state, event).ok_or(CoreError::IllegalTransition {
            state: self.state,
            event,
        })?;
        self.state = to;
        if event == RunEvent::Confirm && self.approved_at == 0 {
            self.approved_at = now;
        }
        self.states_history.push(StateTransition {
            state: to,
            timestamp: now,
            note: note.to_string(),
        });
        self.apply_patch(patch, now);
        if self.is_deployment_run() {
            self.record_step(event, now);
        }
        Ok(to)
    }

    /// Built from a configuration version: plan/apply cycles until a plan is empty.
    pub fn is_deployment_run(&self) -> bool {
        self.config_version > 0
    }

    /// Keeps `steps` in line with a transition that just happened (HCP Terraform's step
    /// states): each dispatch opens a RUNNING plan step; a plan that needs approval opens a
    /// WAITING apply step, PENDING once confirmed (queued for the deployment lock), RUNNING when
    /// picked up; anything ending the run closes what is still open.
    fn record_step(&mut self, event: RunEvent, now: Nanos) {
        use StepState as St;
        let delta = self.delta;
        let open = |s: &Step| matches!(s.state, St::Pending | St::Running | St::Waiting);
        let close_open = |steps: &mut [Step], state: St| {
            for s in steps.iter_mut().filter(|s| open(s)) {
                s.state = state;
                s.ended_at = now;
            }
        };
        let push = |steps: &mut Vec<Step>, kind: StepKind, state: St| {
            let index = i32::try_from(steps.len()).unwrap_or(i32::MAX);
            let running = state == St::Running;
            steps.push(Step {
                index,
                kind,
                state,
                started_at: if running { now } else { 0 },
                ended_at: 0,
                delta,
            });
        };
        let finish_plan = |steps: &mut [Step]| {
            if let Some(s) = steps
                .iter_mut()
                .rev()
                .find(|s| s.kind == StepKind::Plan && s.state == St::Running)
            {
                s.state = St::Success;
                s.ended_at = now;
                s.delta = delta;
            }
        };
        let open_apply = |steps: &[Step]| {
            steps
                .iter()
                .rposition(|s| s.kind != StepKind::Plan && open(s))
        };
        match event {
            RunEvent::Dispatch => {
                close_open(&mut self.steps, St::Cancelled);
                push(&mut self.steps, StepKind::Plan, St::Running);
                // A cycle is a plan after each successful apply; re-planning an unapproved plan
                // stays in the same cycle.
                let applied = self
                    .steps
                    .iter()
                    .filter(|s| s.kind != StepKind::Plan && s.state == St::Success)
                    .count();
                self.cycle = u32::try_from(applied + 1).unwrap_or(u32::MAX);
            }
            RunEvent::FinishNoOp | RunEvent::FinishProposed => {
                finish_plan(&mut self.steps);
                close_open(&mut self.steps, St::Cancelled);
            }
            RunEvent::RequireConfirmation | RunEvent::RequireReview => {
                finish_plan(&mut self.steps);
                if open_apply(&self.steps).is_none() {
                    push(&mut self.steps, StepKind::Apply, St::Waiting);
                }
            }
            RunEvent::Autodeploy => {
                finish_plan(&mut self.steps);
                push(&mut self.steps, StepKind::Apply, St::Running);
            }
            RunEvent::Confirm => {
                if let Some(i) = open_apply(&self.steps) {
                    self.steps[i].state = St::Pending;
                }
            }
            RunEvent::PickUpApply => {
                if let Some(i) = open_apply(&self.steps) {
                    self.steps[i].state = St::Running;
                    self.steps[i].started_at = now;
                }
            }
            RunEvent::FinishApply | RunEvent::Cycle => {
                if let Some(i) = open_apply(&self.steps) {
                    self.steps[i].state = St::Success;
                    self.steps[i].ended_at = now;
                }
                close_open(&mut self.steps, St::Cancelled);
            }
            RunEvent::Fail => {
                if let Some(s) = self.steps.iter_mut().rev().find(|s| s.state == St::Running) {
                    s.state = St::Failed;
                    s.ended_at = now;
                }
                close_open(&mut self.steps, St::Cancelled);
            }
            RunEvent::Stop
            | RunEvent::Cancel
            | RunEvent::Discard
            | RunEvent::Reject
            | RunEvent::Replan => close_open(&mut self.steps, St::Cancelled),
            RunEvent::Initialize | RunEvent::Plan | RunEvent::Apply => {}
        }
    }

    /// Applies field updates without a state change (e.g. recording a review).
    pub fn apply_patch(&mut self, patch: RunPatch, now: Nanos) {
        let RunPatch {
            delta,
            changes,
            no_op,
            targets,
            error,
            artifact_id,
            plan_json,
            policy_denies,
            policy_warnings,
            flags,
            steps,
        } = patch;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = $f { self.$f = v; } )* };
        }
        set!(
            delta,
            changes,
            no_op,
            targets,
            error,
            artifact_id,
            plan_json,
            policy_denies,
            policy_warnings,
            flags,
            steps
        );
        self.updated_at = now;
        self.version += 1;
    }

    /// Records a review, keeping only each reviewer's newest.
    pub fn record_review(&mut self, review: Review, now: Nanos) {
        self.reviews.retain(|r| r.login != review.login);
        self.reviews.push(review);
        self.updated_at = now;
        self.version += 1;
    }

    /// Addresses of the resources this run would change: what a targeted replan can pick from.
    pub fn changed_addresses(&self) -> Vec<&str> {
        self.changes
            .iter()
            .filter(|c| c.entity.r#type != "output")
            .map(|c| c.entity.address.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Run {
        Run::new(
            "r1".into(),
            "s1".into(),
            RunType::Tracked,
            Commit::default(),
            "user:alice".into(),
            CreatorSession::default(),
            1,
        )
    }

    #[test]
    fn apply_checks_the_table_and_leaves_the_run_untouched_on_error() {
        let mut r = run();
        let before = r.clone();
        let err = r
            .apply(RunEvent::Confirm, "", RunPatch::default(), 2)
            .unwrap_err();
        assert_eq!(
            err,
            CoreError::IllegalTransition {
                state: RunState::Queued,
                event: RunEvent::Confirm
            }
        );
        assert_eq!(r, before);
        r.apply(RunEvent::Dispatch, "", RunPatch::default(), 3)
            .unwrap();
        assert_eq!(r.state, RunState::Preparing);
        assert_eq!(r.version, 2);
        assert_eq!(r.states_history.len(), 2);
        assert_eq!(r.states_history[1].timestamp, 3);
    }

    #[test]
    fn deployment_runs_record_plan_and_apply_steps_per_cycle() {
        use RunEvent::*;
        use StepState as St;
        let mut r = run();
        r.config_version = 1;
        let mut t = 10;
        let mut go = |r: &mut Run, events: &[RunEvent]| {
            for e in events {
                t += 1;
                r.apply(*e, "", RunPatch::default(), t).unwrap();
            }
        };
        go(&mut r, &[Dispatch, Initialize, Plan, RequireConfirmation]);
        let states = |r: &Run| {
            r.steps
                .iter()
                .map(|s| (s.kind, s.state))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            states(&r),
            [
                (StepKind::Plan, St::Success),
                (StepKind::Apply, St::Waiting)
            ]
        );
        go(&mut r, &[Confirm]);
        assert_eq!(r.steps[1].state, St::Pending);
        assert_eq!(r.approved_at, 15);
        go(
            &mut r,
            &[
                PickUpApply,
                Apply,
                Cycle,
                Dispatch,
                Initialize,
                Plan,
                FinishNoOp,
            ],
        );
        assert_eq!(
            states(&r),
            [
                (StepKind::Plan, St::Success),
                (StepKind::Apply, St::Success),
                (StepKind::Plan, St::Success)
            ]
        );
        assert_eq!(r.state, RunState::Finished);
        assert_eq!(
            r.steps.iter().map(|s| s.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        // A discarded plan cancels its waiting apply; a failed plan fails its step.
        let mut d = run();
        d.config_version = 2;
        go(
            &mut d,
            &[Dispatch, Initialize, Plan, RequireConfirmation, Discard],
        );
        assert_eq!(d.steps[1].state, St::Cancelled);
        let mut f = run();
        f.config_version = 2;
        go(&mut f, &[Dispatch, Fail]);
        assert_eq!(states(&f), [(StepKind::Plan, St::Failed)]);
        // Spacelift-style runs keep no steps.
        let mut plain = run();
        go(&mut plain, &[Dispatch, Initialize, Plan, FinishNoOp]);
        assert!(plain.steps.is_empty());
    }

    #[test]
    fn delta_counts_resources_and_outputs_apart() {
        let ch = |action, ty: &str| Change {
            action,
            entity: Entity {
                r#type: ty.into(),
                ..Default::default()
            },
            phase: ChangePhase::Plan,
        };
        let changes = vec![
            ch(ChangeAction::Added, "aws_s3_bucket"),
            ch(ChangeAction::Added, "aws_s3_bucket"),
            ch(ChangeAction::Changed, "aws_iam_role"),
            ch(ChangeAction::Deleted, "output"),
            ch(ChangeAction::Added, "output"),
        ];
        let d = Delta::from_changes(&changes);
        assert_eq!(
            d,
            Delta {
                added_resources: 2,
                changed_resources: 1,
                deleted_resources: 0,
                added_outputs: 1,
                changed_outputs: 0,
                deleted_outputs: 1
            }
        );
        assert!(!d.is_empty());
    }

    #[test]
    fn only_the_newest_review_per_reviewer_counts() {
        let mut r = run();
        let rev = |login: &str, approve| Review {
            login: login.into(),
            approve,
            note: String::new(),
            timestamp: 0,
        };
        r.record_review(rev("bob", false), 2);
        r.record_review(rev("carol", true), 3);
        r.record_review(rev("bob", true), 4);
        assert_eq!(r.reviews.len(), 2);
        assert!(r.reviews.iter().all(|x| x.approve));
    }
}

/// The phase an agent reports while it works on a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    Preparing,
    Initializing,
    Planning,
    Applying,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Lines written by Cairn itself (state changes, policy results).
    System,
}

/// One line of a run's log; `seq` is monotonic per run from 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: i64,
    pub timestamp: Nanos,
    pub phase: Option<Phase>,
    pub stream: LogStream,
    pub message: String,
}
