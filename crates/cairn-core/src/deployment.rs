//! HCP Terraform-style deployments: named instances of a stack's configuration, each with its
//! own inputs and state, and the configuration versions (immutable snapshots) runs are built
//! from. Also the `cairn.toml` parser: the file at a project root that may declare them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::Nanos;

/// The deployment every stack has when it declares none.
pub const DEFAULT_DEPLOYMENT: &str = "default";

/// The file at the project root that may declare deployments.
pub const CONFIG_FILE: &str = "cairn.toml";

/// An input value: a literal JSON value, or a reference to an output of another stack's
/// deployment (resolved when a configuration version is created).
///
/// Serde shape: a reference is exactly an object with the three string keys `stack`,
/// `deployment` and `output` (`{"stack":"net","deployment":"prod","output":"vpc_id"}`);
/// anything else is a literal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InputValue {
    Upstream(UpstreamRef),
    Literal(serde_json::Value),
}

/// An output of another stack's deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamRef {
    pub stack: String,
    pub deployment: String,
    pub output: String,
}

impl InputValue {
    /// How the value reaches the vendor as a variable: strings raw, other JSON values as JSON
    /// text (Terraform parses `TF_VAR_` values of complex types as HCL, which JSON is). None for
    /// an unresolved upstream reference.
    pub fn as_variable(&self) -> Option<String> {
        match self {
            InputValue::Literal(serde_json::Value::String(s)) => Some(s.clone()),
            InputValue::Literal(v) => Some(v.to_string()),
            InputValue::Upstream(_) => None,
        }
    }
}

/// A deployment of a stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub stack_id: String,
    pub name: String,
    #[serde(default)]
    pub inputs: BTreeMap<String, InputValue>,
    /// Runs of this deployment destroy its resources (mode DESTROY).
    #[serde(default)]
    pub destroy: bool,
    /// Plans with changes are confirmed without a human.
    #[serde(default)]
    pub auto_approve: bool,
    /// Where it is declared: `api` (DeploymentService) or `file` (cairn.toml). A file
    /// deployment absent from a newer configuration is removed.
    #[serde(default = "api_source")]
    pub declared_in: String,
    /// Removal was asked for (API delete, or gone from cairn.toml); its destroy run follows.
    #[serde(default)]
    pub deleted: bool,
    /// The destroy run after a removal finished: history only.
    #[serde(default)]
    pub removed: bool,
    /// The newest configuration version (seq) that contained this deployment; 0 = none yet.
    #[serde(default)]
    pub last_config_version: i64,
    /// The run holding the deployment's state lock; empty when free. Kept by the store, not by
    /// the document.
    #[serde(default, skip_serializing)]
    pub lock_holder: String,
    pub created_at: Nanos,
    pub updated_at: Nanos,
}

fn api_source() -> String {
    "api".into()
}

impl Deployment {
    pub fn new(stack_id: &str, name: &str, now: Nanos) -> Deployment {
        Deployment {
            stack_id: stack_id.to_string(),
            name: name.to_string(),
            inputs: BTreeMap::new(),
            destroy: false,
            auto_approve: false,
            declared_in: api_source(),
            deleted: false,
            removed: false,
            last_config_version: 0,
            lock_holder: String::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// Still part of the stack's configuration.
    pub fn is_active(&self) -> bool {
        !self.deleted && !self.removed
    }

    pub fn snapshot(&self) -> DeploymentSnapshot {
        DeploymentSnapshot {
            name: self.name.clone(),
            inputs: self.inputs.clone(),
            destroy: self.destroy,
            auto_approve: self.auto_approve,
        }
    }
}

/// A deployment as one configuration version saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSnapshot {
    pub name: String,
    #[serde(default)]
    pub inputs: BTreeMap<String, InputValue>,
    #[serde(default)]
    pub destroy: bool,
    #[serde(default)]
    pub auto_approve: bool,
}

/// Why a configuration version was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConfigSource {
    /// The tracked commit changed and Cairn fetched it.
    #[default]
    Vcs,
    /// A user asked Cairn to fetch the tracked (or a given) commit.
    Manual,
    /// A user uploaded a configuration.
    Upload,
    /// Deployment inputs changed.
    Inputs,
    /// An upstream output this stack consumes changed.
    Upstream,
}

impl ConfigSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSource::Vcs => "VCS",
            ConfigSource::Manual => "MANUAL",
            ConfigSource::Upload => "UPLOAD",
            ConfigSource::Inputs => "INPUTS",
            ConfigSource::Upstream => "UPSTREAM",
        }
    }
}

/// An immutable snapshot of a stack's configuration; runs are built from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigurationVersion {
    pub id: String,
    pub stack_id: String,
    /// 1, 2, ... per stack, assigned by the store.
    pub seq: i64,
    pub commit_sha: String,
    /// Git tree hash of the project root at the commit.
    pub content_digest: String,
    /// Active deployments, ordered by name.
    pub deployments: Vec<DeploymentSnapshot>,
    pub source: ConfigSource,
    pub created_at: Nanos,
}

impl ConfigurationVersion {
    pub fn deployment(&self, name: &str) -> Option<&DeploymentSnapshot> {
        self.deployments.iter().find(|d| d.name == name)
    }

    /// Whether `other` snapshots the same configuration (commit content and deployments):
    /// no new version is needed then.
    pub fn same_configuration(
        &self,
        content_digest: &str,
        deployments: &[DeploymentSnapshot],
    ) -> bool {
        self.content_digest == content_digest && self.deployments == deployments
    }
}

/// Deployment names: `^[a-z][a-z0-9_-]{0,62}$`.
pub fn deployment_name(field: &str, v: &str) -> Result<(), CoreError> {
    let mut chars = v.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_lowercase() => {
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        }
        _ => false,
    };
    if !ok || v.len() > 63 {
        return Err(CoreError::invalid(
            field,
            format!(
                "{v:?} is not a deployment name (a lowercase letter, then up to 62 lowercase \
                 letters, digits, '_' or '-')"
            ),
        ));
    }
    Ok(())
}

/// Input names become `TF_VAR_<name>`: identifiers only.
pub fn input_name(field: &str, v: &str) -> Result<(), CoreError> {
    let mut chars = v.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {
            chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }
        _ => false,
    };
    if !ok || v.len() > 128 {
        return Err(CoreError::invalid(
            field,
            format!(
                "{v:?} is not an input name (a letter or '_', then letters, digits, '_' or '-')"
            ),
        ));
    }
    Ok(())
}

/// Checks the inputs of a deployment: names, and complete upstream references.
pub fn validate_inputs(
    field: &str,
    inputs: &BTreeMap<String, InputValue>,
) -> Result<(), CoreError> {
    for (k, v) in inputs {
        input_name(&format!("{field}.{k}"), k)?;
        if let InputValue::Upstream(u) = v {
            for (part, val) in [
                ("stack", &u.stack),
                ("deployment", &u.deployment),
                ("output", &u.output),
            ] {
                if val.trim().is_empty() {
                    return Err(CoreError::invalid(
                        format!("{field}.{k}.{part}"),
                        "must not be empty in an upstream reference",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// One `[deployments.<name>]` table of cairn.toml.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDeployment {
    #[serde(default)]
    inputs: BTreeMap<String, toml::Value>,
    #[serde(default)]
    destroy: bool,
    #[serde(default)]
    auto_approve: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    deployments: BTreeMap<String, FileDeployment>,
}

/// Parses cairn.toml into deployment snapshots, ordered by name:
///
/// ```toml
/// [deployments.prod]
/// inputs = { region = "eu-west-1", replicas = 3, vpc = { stack = "net", deployment = "prod", output = "vpc_id" } }
/// destroy = false
/// auto_approve = false
/// ```
pub fn parse_config_file(text: &str) -> Result<Vec<DeploymentSnapshot>, CoreError> {
    let doc: FileDoc = toml::from_str(text)
        .map_err(|e| CoreError::invalid(CONFIG_FILE, e.message().to_string()))?;
    let mut out = Vec::new();
    for (name, d) in doc.deployments {
        deployment_name(&format!("{CONFIG_FILE}: deployments.{name}"), &name)?;
        let mut inputs = BTreeMap::new();
        for (k, v) in d.inputs {
            let json = serde_json::to_value(&v).map_err(|e| {
                CoreError::invalid(
                    format!("{CONFIG_FILE}: deployments.{name}.inputs.{k}"),
                    e.to_string(),
                )
            })?;
            let value: InputValue = serde_json::from_value(json).map_err(|e| {
                CoreError::invalid(
                    format!("{CONFIG_FILE}: deployments.{name}.inputs.{k}"),
                    e.to_string(),
                )
            })?;
            inputs.insert(k, value);
        }
        validate_inputs(
            &format!("{CONFIG_FILE}: deployments.{name}.inputs"),
            &inputs,
        )?;
        out.push(DeploymentSnapshot {
            name,
            inputs,
            destroy: d.destroy,
            auto_approve: d.auto_approve,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_pattern() {
        for ok in [
            "dev",
            "prod-eu",
            "a",
            "x_1",
            &format!("a{}", "b".repeat(62)),
        ] {
            deployment_name("name", ok).unwrap();
        }
        for bad in [
            "",
            "Dev",
            "1dev",
            "-dev",
            "dev.eu",
            "dév",
            &format!("a{}", "b".repeat(63)),
        ] {
            let e = deployment_name("name", bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid name: "), "{e}");
        }
    }

    #[test]
    fn inputs_serde_tells_references_from_literals() {
        let r: InputValue =
            serde_json::from_str(r#"{"stack":"net","deployment":"prod","output":"vpc_id"}"#)
                .unwrap();
        assert_eq!(
            r,
            InputValue::Upstream(UpstreamRef {
                stack: "net".into(),
                deployment: "prod".into(),
                output: "vpc_id".into()
            })
        );
        // An object with other keys is a literal map.
        let l: InputValue = serde_json::from_str(r#"{"stack":"net","extra":1}"#).unwrap();
        assert!(matches!(
            l,
            InputValue::Literal(serde_json::Value::Object(_))
        ));
        assert_eq!(
            InputValue::Literal(serde_json::json!("eu"))
                .as_variable()
                .as_deref(),
            Some("eu")
        );
        assert_eq!(
            InputValue::Literal(serde_json::json!([1, 2]))
                .as_variable()
                .as_deref(),
            Some("[1,2]")
        );
        assert_eq!(r.as_variable(), None);
    }

    #[test]
    fn config_file_declares_deployments() {
        let d = parse_config_file(
            r#"
            [deployments.prod]
            inputs = { region = "eu", replicas = 3, vpc = { stack = "net", deployment = "prod", output = "vpc_id" } }
            auto_approve = true

            [deployments.dev]
            destroy = true
            "#,
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].name, "dev");
        assert!(d[0].destroy && d[0].inputs.is_empty());
        assert_eq!(d[1].name, "prod");
        assert!(d[1].auto_approve);
        assert_eq!(
            d[1].inputs["replicas"],
            InputValue::Literal(serde_json::json!(3))
        );
        assert!(matches!(d[1].inputs["vpc"], InputValue::Upstream(_)));
        assert!(parse_config_file("").unwrap().is_empty());
    }

    #[test]
    fn config_file_errors_name_the_place() {
        let e = parse_config_file("[deployments.Prod]\n").unwrap_err();
        assert!(e.to_string().contains("deployments.Prod"), "{e}");
        let e = parse_config_file("[deployments.dev]\ndestroyy = true\n").unwrap_err();
        assert!(e.to_string().contains("destroyy"), "{e}");
        let e = parse_config_file("[deployments.dev]\ninputs = { \"1x\" = 1 }\n").unwrap_err();
        assert!(e.to_string().contains("inputs.1x"), "{e}");
        let e = parse_config_file(
            "[deployments.dev]\ninputs = { v = { stack = \"\", deployment = \"p\", output = \"o\" } }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("inputs.v.stack"), "{e}");
    }
}
