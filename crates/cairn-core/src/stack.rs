//! Stacks: a project root in a repository, deployed by one vendor.

use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::run::Commit;
use crate::validate;
use crate::Nanos;

/// The default deployment every stack has.
pub const DEFAULT_DEPLOYMENT: &str = "default";

/// A worker pool reference as policies see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WorkerPoolRef {
    pub id: String,
    pub labels: Vec<String>,
    pub name: String,
    pub public: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Stack {
    pub id: String,
    pub name: String,
    pub description: String,
    pub repository: String,
    pub namespace: String,
    pub branch: String,
    pub project_root: String,
    pub additional_project_globs: Vec<String>,
    pub vendor: String,
    pub labels: Vec<String>,
    pub autodeploy: bool,
    pub administrative: bool,
    /// Empty means the default (public) pool.
    pub worker_pool_id: String,
    /// Login of the lock owner; empty when unlocked.
    pub locked_by: String,
    pub lock_note: String,
    pub tracked_commit: Option<Commit>,
    /// State of the last blocking run, or `NONE`.
    pub state: String,
    pub terraform_version: String,
    pub vcs_integration_id: String,
    pub created_at: Nanos,
    pub updated_at: Nanos,
    pub version: i64,
}

impl Stack {
    /// Validates every user-settable field, naming the field in the error.
    pub fn validate(&self) -> Result<(), CoreError> {
        validate::stack_id("stack.id", &self.id)?;
        validate::non_empty("stack.name", &self.name, 256)?;
        validate::max_len("stack.description", &self.description, 4096)?;
        validate::non_empty("stack.repository", &self.repository, 2048)?;
        validate::branch("stack.branch", &self.branch)?;
        validate::project_root("stack.project_root", &self.project_root)?;
        validate::vendor("stack.vendor", &self.vendor)?;
        for (i, g) in self.additional_project_globs.iter().enumerate() {
            validate::glob(&format!("stack.additional_project_globs[{i}]"), g)?;
        }
        for (i, l) in self.labels.iter().enumerate() {
            validate::non_empty(&format!("stack.labels[{i}]"), l, 256)?;
        }
        if self.labels.len() > 100 {
            return Err(CoreError::invalid("stack.labels", "at most 100 labels"));
        }
        Ok(())
    }

    pub fn has_labels(&self, wanted: &[String]) -> bool {
        wanted.iter().all(|w| self.labels.contains(w))
    }
}

/// A stack environment variable. Secret values are write-only outside the agent's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
    pub secret: bool,
}

impl EnvVar {
    pub fn validate(&self, field: &str) -> Result<(), CoreError> {
        validate::env_name(&format!("{field}.name"), &self.name)?;
        validate::max_len(&format!("{field}.value"), &self.value, 64 * 1024)
    }

    /// The variable as the API shows it: secret values never leave the server.
    pub fn redacted(&self) -> EnvVar {
        EnvVar {
            value: if self.secret {
                String::new()
            } else {
                self.value.clone()
            },
            ..self.clone()
        }
    }
}

/// What `lock` does, per the push-policy seed's owner rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    /// The stack was unlocked and is now locked by the owner.
    Locked,
    /// Already locked by the same owner: no change.
    AlreadyHeld,
    /// Locked by someone else: the attempt is refused (and a push-policy run is rejected).
    HeldByOther(String),
}

/// Decides a lock attempt by `owner` on a stack currently locked by `locked_by` ("" = unlocked).
pub fn decide_lock(locked_by: &str, owner: &str) -> LockOutcome {
    if locked_by.is_empty() {
        LockOutcome::Locked
    } else if locked_by == owner {
        LockOutcome::AlreadyHeld
    } else {
        LockOutcome::HeldByOther(locked_by.to_string())
    }
}

/// What `unlock` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockOutcome {
    Unlocked,
    /// Not locked: no change.
    NotLocked,
    /// Locked by someone else: no change (unless forced by an admin).
    HeldByOther(String),
}

/// Decides an unlock by `owner`; `force` (admins) unlocks whoever holds it.
pub fn decide_unlock(locked_by: &str, owner: &str, force: bool) -> UnlockOutcome {
    if locked_by.is_empty() {
        UnlockOutcome::NotLocked
    } else if locked_by == owner || force {
        UnlockOutcome::Unlocked
    } else {
        UnlockOutcome::HeldByOther(locked_by.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack() -> Stack {
        Stack {
            id: "net-prod".into(),
            name: "Network".into(),
            repository: "file:///repos/infra.git".into(),
            branch: "main".into(),
            project_root: "network/prod".into(),
            vendor: "terraform".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_stack_passes() {
        stack().validate().unwrap();
    }

    type Mutation = Box<dyn Fn(&mut Stack)>;

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.id = "Net Prod".into()), "stack.id"),
            (Box::new(|s| s.id = String::new()), "stack.id"),
            (Box::new(|s| s.branch = String::new()), "stack.branch"),
            (Box::new(|s| s.branch = "a..b".into()), "stack.branch"),
            (
                Box::new(|s| s.project_root = "../up".into()),
                "stack.project_root",
            ),
            (
                Box::new(|s| s.project_root = "/abs".into()),
                "stack.project_root",
            ),
            (Box::new(|s| s.vendor = "Bad Vendor".into()), "stack.vendor"),
            (Box::new(|s| s.name = "x".repeat(300)), "stack.name"),
            (
                Box::new(|s| s.additional_project_globs = vec!["a/[".into()]),
                "stack.additional_project_globs[0]",
            ),
        ];
        for (mutate, field) in cases {
            let mut s = stack();
            mutate(&mut s);
            match s.validate() {
                Err(CoreError::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn lock_owner_rules_follow_the_push_policy_seed() {
        assert_eq!(decide_lock("", "alice"), LockOutcome::Locked);
        assert_eq!(decide_lock("alice", "alice"), LockOutcome::AlreadyHeld);
        assert_eq!(
            decide_lock("alice", "bob"),
            LockOutcome::HeldByOther("alice".into())
        );
        assert_eq!(decide_unlock("", "alice", false), UnlockOutcome::NotLocked);
        assert_eq!(
            decide_unlock("alice", "alice", false),
            UnlockOutcome::Unlocked
        );
        assert_eq!(
            decide_unlock("alice", "bob", false),
            UnlockOutcome::HeldByOther("alice".into())
        );
        assert_eq!(decide_unlock("alice", "bob", true), UnlockOutcome::Unlocked);
    }

    #[test]
    fn secret_values_are_redacted() {
        let v = EnvVar {
            name: "TOKEN".into(),
            value: "s3cret".into(),
            secret: true,
        };
        assert_eq!(v.redacted().value, "");
        let p = EnvVar {
            secret: false,
            ..v.clone()
        };
        assert_eq!(p.redacted().value, "s3cret");
    }
}

/// Whether a stack's environment asks to skip planning and applying: `CAIRN_SKIP_PLANNING` /
/// `CAIRN_SKIP_APPLYING`, and Spacelift's `SPACELIFT_SKIP_*` names so that migrated stacks keep
/// working. Only `true` (any case) or `1` count, as a stray value must not skip a phase.
pub fn skip_flags(env: &[EnvVar]) -> SkipFlags {
    let set = |names: [&str; 2]| {
        env.iter().any(|v| {
            names.contains(&v.name.as_str())
                && (v.value.eq_ignore_ascii_case("true") || v.value == "1")
        })
    };
    SkipFlags {
        planning: set(["CAIRN_SKIP_PLANNING", "SPACELIFT_SKIP_PLANNING"]),
        applying: set(["CAIRN_SKIP_APPLYING", "SPACELIFT_SKIP_APPLYING"]),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SkipFlags {
    pub planning: bool,
    pub applying: bool,
}

#[cfg(test)]
mod skip_tests {
    use super::*;

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
            secret: false,
        }
    }

    #[test]
    fn both_spellings_and_only_true_values_skip() {
        assert_eq!(skip_flags(&[]), SkipFlags::default());
        let f = skip_flags(&[
            var("SPACELIFT_SKIP_PLANNING", "TRUE"),
            var("CAIRN_SKIP_APPLYING", "1"),
        ]);
        assert_eq!(
            f,
            SkipFlags {
                planning: true,
                applying: true
            }
        );
        let f = skip_flags(&[
            var("CAIRN_SKIP_PLANNING", "false"),
            var("SPACELIFT_SKIP_APPLYING", "yes please"),
        ]);
        assert_eq!(f, SkipFlags::default());
    }
}
