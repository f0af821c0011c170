//! The run state machine: one transition table, Spacelift's state names.
//!
//! Every state change of a run goes through [`next_state`]. Stores persist the result together
//! with its history entry; anything the table does not list is an illegal transition, reported
//! as FAILED_PRECONDITION by the API and never applied.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::run::RunType;

/// Run states, named as in Spacelift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunState {
    Queued,
    Preparing,
    Initializing,
    Planning,
    PendingReview,
    Unconfirmed,
    Confirmed,
    Discarded,
    PreparingApply,
    Applying,
    ReplanRequested,
    Finished,
    Failed,
    Canceled,
    Stopped,
}

impl RunState {
    pub const ALL: [RunState; 15] = [
        RunState::Queued,
        RunState::Preparing,
        RunState::Initializing,
        RunState::Planning,
        RunState::PendingReview,
        RunState::Unconfirmed,
        RunState::Confirmed,
        RunState::Discarded,
        RunState::PreparingApply,
        RunState::Applying,
        RunState::ReplanRequested,
        RunState::Finished,
        RunState::Failed,
        RunState::Canceled,
        RunState::Stopped,
    ];

    /// Terminal states: nothing supersedes them.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Finished
                | RunState::Failed
                | RunState::Discarded
                | RunState::Canceled
                | RunState::Stopped
        )
    }

    /// States in which a worker holds (or is about to take) the run.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunState::Preparing
                | RunState::Initializing
                | RunState::Planning
                | RunState::PreparingApply
                | RunState::Applying
        )
    }

    /// States waiting for a worker to pick the run up.
    pub fn is_dispatchable(self) -> bool {
        matches!(
            self,
            RunState::Queued | RunState::ReplanRequested | RunState::Confirmed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "QUEUED",
            RunState::Preparing => "PREPARING",
            RunState::Initializing => "INITIALIZING",
            RunState::Planning => "PLANNING",
            RunState::PendingReview => "PENDING_REVIEW",
            RunState::Unconfirmed => "UNCONFIRMED",
            RunState::Confirmed => "CONFIRMED",
            RunState::Discarded => "DISCARDED",
            RunState::PreparingApply => "PREPARING_APPLY",
            RunState::Applying => "APPLYING",
            RunState::ReplanRequested => "REPLAN_REQUESTED",
            RunState::Finished => "FINISHED",
            RunState::Failed => "FAILED",
            RunState::Canceled => "CANCELED",
            RunState::Stopped => "STOPPED",
        }
    }

    pub fn parse(s: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a run. The planning outcome is an event of its own per path (see
/// [`after_planning`]) so that the table stays finite and can be walked exhaustively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEvent {
    /// A worker leased the run (QUEUED / REPLAN_REQUESTED → PREPARING).
    Dispatch,
    /// The worker checked out the code and starts the vendor's init.
    Initialize,
    /// The vendor's preview starts.
    Plan,
    /// Planning found no changes to resources or outputs.
    FinishNoOp,
    /// A proposed run ends after planning (or after its review).
    FinishProposed,
    /// Plan-policy warnings with approval policies attached.
    RequireReview,
    /// Changes that need a human (or policy) to confirm.
    RequireConfirmation,
    /// Changes applied without confirmation: autodeploy and no warnings.
    Autodeploy,
    /// A user confirms the plan.
    Confirm,
    /// A user discards the plan.
    Discard,
    /// A user asks for a targeted replan.
    Replan,
    /// A user cancels a run that no worker holds.
    Cancel,
    /// A user stops a run while it plans.
    Stop,
    /// An approval policy rejects the run.
    Reject,
    /// Planning or applying failed, a plan policy denied, or the worker was lost.
    Fail,
    /// A worker picks up a confirmed run for applying.
    PickUpApply,
    /// The vendor's apply starts.
    Apply,
    /// The apply succeeded (or was skipped on request).
    FinishApply,
    /// A deployment run's apply succeeded: it plans again (a new cycle) to reach convergence.
    Cycle,
}

impl RunEvent {
    pub const ALL: [RunEvent; 19] = [
        RunEvent::Dispatch,
        RunEvent::Initialize,
        RunEvent::Plan,
        RunEvent::FinishNoOp,
        RunEvent::FinishProposed,
        RunEvent::RequireReview,
        RunEvent::RequireConfirmation,
        RunEvent::Autodeploy,
        RunEvent::Confirm,
        RunEvent::Discard,
        RunEvent::Replan,
        RunEvent::Cancel,
        RunEvent::Stop,
        RunEvent::Reject,
        RunEvent::Fail,
        RunEvent::PickUpApply,
        RunEvent::Apply,
        RunEvent::FinishApply,
        RunEvent::Cycle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunEvent::Dispatch => "dispatch",
            RunEvent::Initialize => "initialize",
            RunEvent::Plan => "plan",
            RunEvent::FinishNoOp => "finish as no-op",
            RunEvent::FinishProposed => "finish a proposed run",
            RunEvent::RequireReview => "require review",
            RunEvent::RequireConfirmation => "require confirmation",
            RunEvent::Autodeploy => "autodeploy",
            RunEvent::Confirm => "confirm",
            RunEvent::Discard => "discard",
            RunEvent::Replan => "replan",
            RunEvent::Cancel => "cancel",
            RunEvent::Stop => "stop",
            RunEvent::Reject => "reject",
            RunEvent::Fail => "fail",
            RunEvent::PickUpApply => "pick up for applying",
            RunEvent::Apply => "apply",
            RunEvent::FinishApply => "finish applying",
            RunEvent::Cycle => "plan the next cycle",
        }
    }
}

impl fmt::Display for RunEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

use RunEvent as E;
use RunState as S;

/// The transition table. Each row: from-state, event, to-state. Nothing else is legal.
pub const TRANSITIONS: &[(RunState, RunEvent, RunState)] = &[
    (S::Queued, E::Dispatch, S::Preparing),
    (S::Queued, E::Cancel, S::Canceled),
    (S::Queued, E::Reject, S::Failed),
    // Nothing can be built to run (a deployment stack's configuration cannot be read).
    (S::Queued, E::Fail, S::Failed),
    (S::ReplanRequested, E::Dispatch, S::Preparing),
    (S::ReplanRequested, E::Cancel, S::Canceled),
    (S::Preparing, E::Initialize, S::Initializing),
    (S::Preparing, E::Stop, S::Stopped),
    (S::Preparing, E::Fail, S::Failed),
    (S::Initializing, E::Plan, S::Planning),
    (S::Initializing, E::Stop, S::Stopped),
    (S::Initializing, E::Fail, S::Failed),
    (S::Planning, E::FinishNoOp, S::Finished),
    (S::Planning, E::FinishProposed, S::Finished),
    (S::Planning, E::RequireReview, S::PendingReview),
    (S::Planning, E::RequireConfirmation, S::Unconfirmed),
    (S::Planning, E::Autodeploy, S::PreparingApply),
    (S::Planning, E::Stop, S::Stopped),
    (S::Planning, E::Fail, S::Failed),
    // Approval policies decide a run under review: approved proposed runs finish, approved
    // tracked runs wait for confirmation (warnings always stop autodeploy).
    (S::PendingReview, E::FinishProposed, S::Finished),
    (S::PendingReview, E::RequireConfirmation, S::Unconfirmed),
    (S::PendingReview, E::Reject, S::Failed),
    (S::Unconfirmed, E::Confirm, S::Confirmed),
    (S::Unconfirmed, E::Discard, S::Discarded),
    (S::Unconfirmed, E::Replan, S::ReplanRequested),
    (S::Unconfirmed, E::Cancel, S::Canceled),
    (S::Unconfirmed, E::Reject, S::Failed),
    // "There is no way to stop a run once it's confirmed"; only a lost worker fails it.
    (S::Confirmed, E::PickUpApply, S::PreparingApply),
    (S::Confirmed, E::Fail, S::Failed),
    (S::PreparingApply, E::Apply, S::Applying),
    (S::PreparingApply, E::FinishApply, S::Finished),
    (S::PreparingApply, E::Fail, S::Failed),
    (S::Applying, E::FinishApply, S::Finished),
    (S::Applying, E::Fail, S::Failed),
    // Deployment runs: after a successful apply the run plans again (HCP Terraform's
    // plan/apply cycles) until a plan is empty.
    (S::PreparingApply, E::Cycle, S::ReplanRequested),
    (S::Applying, E::Cycle, S::ReplanRequested),
];

/// The state `event` leads to from `state`, or `None` when the table does not allow it.
pub fn next_state(state: RunState, event: RunEvent) -> Option<RunState> {
    TRANSITIONS
        .iter()
        .find(|(from, ev, _)| *from == state && *ev == event)
        .map(|(_, _, to)| *to)
}

/// What planning produced, as far as the path after planning is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanOutcome {
    pub run_type: RunType,
    /// No changes to resources and outputs.
    pub no_op: bool,
    pub autodeploy: bool,
    /// Plan policies returned deny messages.
    pub denied: bool,
    /// Plan policies returned warn messages.
    pub warnings: bool,
    /// At least one approval policy is attached to the stack.
    pub approval_policies: bool,
}

/// The event that ends planning, as the tracked-run and proposed-run pages describe:
/// a deny fails the run; warnings with approval policies attached go to review; proposed runs
/// and no-ops finish; changes autodeploy only with autodeploy on and no warnings; everything
/// else waits for confirmation.
pub fn after_planning(o: PlanOutcome) -> RunEvent {
    if o.denied {
        RunEvent::Fail
    } else if o.warnings && o.approval_policies {
        RunEvent::RequireReview
    } else if o.run_type == RunType::Proposed {
        RunEvent::FinishProposed
    } else if o.no_op {
        RunEvent::FinishNoOp
    } else if o.autodeploy && !o.warnings {
        RunEvent::Autodeploy
    } else {
        RunEvent::RequireConfirmation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented transitions, written out independently of TRANSITIONS so that a typo in
    /// the table is caught.
    fn documented(state: RunState, event: RunEvent) -> Option<RunState> {
        use RunEvent::*;
        use RunState::*;
        Some(match (state, event) {
            (Queued | ReplanRequested, Dispatch) => Preparing,
            (Queued | ReplanRequested | Unconfirmed, Cancel) => Canceled,
            (Queued | PendingReview | Unconfirmed, Reject) => Failed,
            (Preparing, Initialize) => Initializing,
            (Initializing, RunEvent::Plan) => Planning,
            (Preparing | Initializing | Planning, Stop) => Stopped,
            (
                Queued | Preparing | Initializing | Planning | Confirmed | PreparingApply
                | Applying,
                Fail,
            ) => Failed,
            (Planning, FinishNoOp) => Finished,
            (Planning | PendingReview, FinishProposed) => Finished,
            (Planning, RequireReview) => PendingReview,
            (Planning | PendingReview, RequireConfirmation) => Unconfirmed,
            (Planning, Autodeploy) => PreparingApply,
            (Unconfirmed, Confirm) => Confirmed,
            (Unconfirmed, Discard) => Discarded,
            (Unconfirmed, Replan) => ReplanRequested,
            (Confirmed, PickUpApply) => PreparingApply,
            (PreparingApply, RunEvent::Apply) => Applying,
            (PreparingApply | Applying, FinishApply) => Finished,
            (PreparingApply | Applying, Cycle) => ReplanRequested,
            _ => return None,
        })
    }

    #[test]
    fn every_state_event_pair_matches_the_documented_machine() {
        let mut legal = 0;
        for state in RunState::ALL {
            for event in RunEvent::ALL {
                assert_eq!(
                    next_state(state, event),
                    documented(state, event),
                    "{state} + {event}"
                );
                if next_state(state, event).is_some() {
                    legal += 1;
                }
            }
        }
        assert_eq!(legal, TRANSITIONS.len(), "table has duplicate rows");
    }

    #[test]
    fn terminal_states_accept_nothing() {
        for state in RunState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in RunEvent::ALL {
                assert_eq!(next_state(state, event), None, "{state} + {event}");
            }
        }
    }

    #[test]
    fn every_non_terminal_state_can_reach_a_terminal_state() {
        for state in RunState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            let mut seen = vec![state];
            let mut frontier = vec![state];
            let mut reached = false;
            while let Some(s) = frontier.pop() {
                for (from, _, to) in TRANSITIONS {
                    if *from == s && !seen.contains(to) {
                        reached |= to.is_terminal();
                        seen.push(*to);
                        frontier.push(*to);
                    }
                }
            }
            assert!(reached, "{state} cannot terminate");
        }
    }

    #[test]
    fn state_names_round_trip() {
        for s in RunState::ALL {
            assert_eq!(RunState::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
    }

    fn outcome(run_type: RunType) -> PlanOutcome {
        PlanOutcome {
            run_type,
            ..Default::default()
        }
    }

    #[test]
    fn path_after_planning_follows_the_seeds() {
        let tracked = outcome(RunType::Tracked);
        let proposed = outcome(RunType::Proposed);
        // No-op tracked run: "transitions directly from planning to finished".
        assert_eq!(
            after_planning(PlanOutcome {
                no_op: true,
                ..tracked
            }),
            RunEvent::FinishNoOp
        );
        // Proposed runs always finish after planning.
        assert_eq!(after_planning(proposed), RunEvent::FinishProposed);
        // Changes without autodeploy: unconfirmed.
        assert_eq!(after_planning(tracked), RunEvent::RequireConfirmation);
        // Autodeploy and no warnings: straight to applying.
        let auto = PlanOutcome {
            autodeploy: true,
            ..tracked
        };
        assert_eq!(after_planning(auto), RunEvent::Autodeploy);
        // Warnings stop autodeploy.
        assert_eq!(
            after_planning(PlanOutcome {
                warnings: true,
                ..auto
            }),
            RunEvent::RequireConfirmation
        );
        // Warnings and approval policies: pending review, for proposed runs too.
        for base in [auto, proposed] {
            assert_eq!(
                after_planning(PlanOutcome {
                    warnings: true,
                    approval_policies: true,
                    ..base
                }),
                RunEvent::RequireReview
            );
        }
        // Approval policies without warnings change nothing.
        assert_eq!(
            after_planning(PlanOutcome {
                approval_policies: true,
                ..auto
            }),
            RunEvent::Autodeploy
        );
        // A deny fails the run whatever else holds.
        for base in [tracked, proposed, auto] {
            assert_eq!(
                after_planning(PlanOutcome {
                    denied: true,
                    warnings: true,
                    approval_policies: true,
                    ..base
                }),
                RunEvent::Fail
            );
        }
        // Every event after_planning returns is legal from PLANNING.
        for denied in [false, true] {
            for warnings in [false, true] {
                for approval_policies in [false, true] {
                    for no_op in [false, true] {
                        for autodeploy in [false, true] {
                            for run_type in [RunType::Tracked, RunType::Proposed] {
                                let ev = after_planning(PlanOutcome {
                                    run_type,
                                    no_op,
                                    autodeploy,
                                    denied,
                                    warnings,
                                    approval_policies,
                                });
                                assert!(next_state(RunState::Planning, ev).is_some());
                            }
                        }
                    }
                }
            }
        }
    }
}
