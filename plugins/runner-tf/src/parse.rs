//! Pure functions from Terraform/OpenTofu machine-readable output to Runner results.
//!
//! Handles `show -json` plan documents of format_version 0.x (Terraform 0.15 – 1.0) and 1.x
//! (Terraform >= 1.1, every OpenTofu).

use std::collections::BTreeSet;

use cairn_proto::v1::{Change, ChangeAction, ChangePhase, Delta, Entity};
use cairn_runner_sdk::Redactor;
use serde_json::{json, Map, Value};

use crate::Error;

/// What replaces a sensitive value.
pub const REDACTED: &str = "***";

/// Sensitive strings shorter than this are not hunted for elsewhere in the document: masking
/// every "1" or "on" would shred it, and where they sit is already masked structurally.
const MIN_LEAKED_SECRET_LEN: usize = 4;

/// The plan, as the Runner contract reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedPlan {
    pub delta: Delta,
    pub changes: Vec<Change>,
    /// Nothing to do for resources and outputs.
    pub no_op: bool,
    /// The redacted `show -json` document.
    pub plan_json: String,
}

/// Parses a `show -json <planfile>` document. `vendor` is `terraform` or `opentofu`; `secrets`
/// are the workspace's secret values, masked wherever they appear.
pub fn parse_plan(
    show_json: &str,
    vendor: &str,
    phase: ChangePhase,
    secrets: &Redactor,
) -> Result<ParsedPlan, Error> {
    let mut doc: Value = serde_json::from_str(show_json)
        .map_err(|e| Error::Parse(format!("`show -json` output is not JSON: {e}")))?;
    check_format_version(&doc)?;
    redact_plan(&mut doc, secrets);

    let mut delta = Delta::default();
    let mut changes = Vec::new();

    for rc in doc["resource_changes"].as_array().into_iter().flatten() {
        let Some(action) = classify(&rc["change"]["actions"]) else {
            continue;
        };
        count(&mut delta, action, false);
        let data = json!({
            "actions": rc["change"]["actions"],
            "mode": rc["mode"],
            "provider_name": rc["provider_name"],
            "module_address": rc.get("module_address").cloned().unwrap_or(Value::Null),
            "deposed": rc.get("deposed").cloned().unwrap_or(Value::Null),
            "action_reason": rc.get("action_reason").cloned().unwrap_or(Value::Null),
            "before": rc["change"]["before"],
            "after": rc["change"]["after"],
        });
        changes.push(resource_change(
            action,
            phase,
            vendor,
            [&rc["address"], &rc["name"], &rc["type"]],
            &data,
        ));
    }

    if let Some(outputs) = doc["output_changes"].as_object() {
        for (name, oc) in outputs {
            let Some(action) = classify(&oc["actions"]) else {
                continue;
            };
            count(&mut delta, action, true);
            let data = json!({
                "actions": oc["actions"],
                "before": oc["before"],
                "after": oc["after"],
                "sensitive": oc["after_sensitive"] == Value::Bool(true)
                    || oc["before_sensitive"] == Value::Bool(true),
            });
            changes.push(Change {
                action: action as i32,
                entity: Some(Entity {
                    address: format!("output.{name}"),
                    name: name.clone(),
                    r#type: "output".to_owned(),
                    entity_vendor: vendor.to_owned(),
                    entity_type: "output".to_owned(),
                    data_json: data.to_string(),
                }),
                phase: phase as i32,
            });
        }
    }

    Ok(ParsedPlan {
        no_op: changes.is_empty(),
        delta,
        changes,
        plan_json: doc.to_string(),
    })
}

/// What `plan -json` itself says about the plan: its `planned_change` messages. Only used when
/// `show -json` could not describe a plan already handed over for applying (Terraform up to
/// 1.1 refuses to show a plan file once an apply has written the state: "Saved plan is stale").
/// It names resources only: Terraform 1.0 prints no output changes while planning.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamedPlan {
    changes: Vec<Change>,
    delta: Delta,
}

impl StreamedPlan {
    /// Takes in one message of `plan -json`; anything but a planned change is ignored.
    pub fn observe(&mut self, msg: &Value, vendor: &str) {
        if msg["type"] != "planned_change" {
            return;
        }
        let change = &msg["change"];
        // The UI's single action word, as the `actions` list `show -json` would hold.
        let actions = match change["action"].as_str() {
            Some("replace") => json!(["delete", "create"]),
            Some(action) => json!([action]),
            None => return,
        };
        let Some(action) = classify(&actions) else {
            return;
        };
        count(&mut self.delta, action, false);
        let resource = &change["resource"];
        self.changes.push(resource_change(
            action,
            ChangePhase::Plan,
            vendor,
            [
                &resource["addr"],
                &resource["resource_name"],
                &resource["resource_type"],
            ],
            &json!({ "actions": actions }),
        ));
    }

    /// The plan as far as `plan -json` told it: no plan document, and not a no-op (the plan's
    /// exit code said it has changes, even when they are all in outputs).
    pub fn into_parsed(self) -> ParsedPlan {
        ParsedPlan {
            delta: self.delta,
            changes: self.changes,
            no_op: false,
            plan_json: String::new(),
        }
    }
}

/// A change of the resource named by `[address, name, type]`.
fn resource_change(
    action: ChangeAction,
    phase: ChangePhase,
    vendor: &str,
    [address, name, r#type]: [&Value; 3],
    data: &Value,
) -> Change {
    Change {
        action: action as i32,
        entity: Some(Entity {
            address: str_of(address),
            name: str_of(name),
            r#type: str_of(r#type),
            entity_vendor: vendor.to_owned(),
            entity_type: "resource".to_owned(),
            data_json: data.to_string(),
        }),
        phase: phase as i32,
    }
}

/// Counts one change of a resource (or of an output, with `output`) in `delta`.
fn count(delta: &mut Delta, action: ChangeAction, output: bool) {
    let counter = match (action, output) {
        (ChangeAction::Added, false) => &mut delta.added_resources,
        (ChangeAction::Changed, false) => &mut delta.changed_resources,
        (ChangeAction::Deleted, false) => &mut delta.deleted_resources,
        (ChangeAction::Added, true) => &mut delta.added_outputs,
        (ChangeAction::Changed, true) => &mut delta.changed_outputs,
        (ChangeAction::Deleted, true) => &mut delta.deleted_outputs,
        (ChangeAction::Unspecified, _) => return,
    };
    *counter += 1;
}

/// Turns `output -json` into `{name: value}`, sensitive values masked.
pub fn parse_outputs(output_json: &str, secrets: &Redactor) -> Result<String, Error> {
    let doc: Value = serde_json::from_str(output_json)
        .map_err(|e| Error::Parse(format!("`output -json` output is not JSON: {e}")))?;
    let Value::Object(outputs) = doc else {
        return Err(Error::Parse(
            "`output -json` output is not an object".into(),
        ));
    };
    let mut leaked = BTreeSet::new();
    let mut result = Map::new();
    for (name, output) in outputs {
        let mut value = output.get("value").cloned().unwrap_or(Value::Null);
        if output["sensitive"] == Value::Bool(true) {
            mask(&mut value, &Value::Bool(true), &mut leaked);
        }
        result.insert(name, value);
    }
    let mut result = Value::Object(result);
    redactor_with(secrets, leaked).redact_json(&mut result);
    Ok(result.to_string())
}

/// Renders one line of `-json` UI output readably; lines that are not JSON pass through.
/// Returns the text and, for error diagnostics, the error message.
pub fn render_ui_line(line: &str) -> UiLine {
    let Ok(msg) = serde_json::from_str::<Value>(line) else {
        return UiLine {
            text: Some(line.to_owned()),
            error: None,
        };
    };
    let message = msg["@message"].as_str().unwrap_or_default();
    if msg["type"] == "diagnostic" {
        let diag = &msg["diagnostic"];
        let severity = diag["severity"].as_str().unwrap_or("error");
        let summary = diag["summary"].as_str().unwrap_or(message);
        let detail = diag["detail"].as_str().unwrap_or_default();
        let full = if detail.is_empty() {
            summary.to_owned()
        } else {
            format!("{summary}: {detail}")
        };
        let label = if severity == "warning" {
            "Warning"
        } else {
            "Error"
        };
        return UiLine {
            text: Some(format!("{label}: {full}")),
            error: (severity == "error").then_some(full),
        };
    }
    UiLine {
        text: (!message.is_empty()).then(|| message.to_owned()),
        error: None,
    }
}

/// One rendered `-json` UI message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiLine {
    pub text: Option<String>,
    pub error: Option<String>,
}

fn check_format_version(doc: &Value) -> Result<(), Error> {
    let version = doc["format_version"]
        .as_str()
        .ok_or_else(|| Error::Parse("plan has no format_version".into()))?;
    match version.split('.').next() {
        Some("0" | "1") => Ok(()),
        _ => Err(Error::Parse(format!(
            "unsupported plan format_version {version} (0.x and 1.x are understood)"
        ))),
    }
}

/// `None` for actions that change nothing (no-op, read) and for actions this parser does not
/// know (e.g. OpenTofu's `forget`, which leaves the real object alone).
fn classify(actions: &Value) -> Option<ChangeAction> {
    let actions: Vec<&str> = actions
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match actions.as_slice() {
        ["create"] => Some(ChangeAction::Added),
        ["update"] => Some(ChangeAction::Changed),
        ["delete"] => Some(ChangeAction::Deleted),
        // Replacement, whichever comes first.
        ["delete", "create"] | ["create", "delete"] => Some(ChangeAction::Changed),
        ["no-op"] | ["read"] => None,
        other => {
            tracing::debug!(actions = ?other, "ignoring unknown plan action");
            None
        }
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// Masks every sensitive value in a plan document, then every other occurrence of the values
/// found sensitive (e.g. a sensitive variable's default in `configuration`) and of the
/// workspace's secrets.
pub fn redact_plan(doc: &mut Value, secrets: &Redactor) {
    let mut leaked = BTreeSet::new();
    mask_structural(doc, &mut leaked);
    redact_sensitive_variables(doc, &mut leaked);
    redactor_with(secrets, leaked).redact_json(doc);
}

fn redactor_with(secrets: &Redactor, leaked: BTreeSet<String>) -> Redactor {
    Redactor::new(
        secrets.secrets().iter().cloned().chain(
            leaked
                .into_iter()
                .filter(|s| s.len() >= MIN_LEAKED_SECRET_LEN),
        ),
    )
}

/// Applies the sensitivity markers Terraform puts beside values: `before`/`before_sensitive`,
/// `after`/`after_sensitive`, `values`/`sensitive_values`, and `{sensitive: true, value}`
/// outputs.
fn mask_structural(node: &mut Value, leaked: &mut BTreeSet<String>) {
    match node {
        Value::Object(map) => {
            for (value_key, marker_key) in [
                ("before", "before_sensitive"),
                ("after", "after_sensitive"),
                ("values", "sensitive_values"),
            ] {
                if let Some(marker) = map.get(marker_key).cloned() {
                    if let Some(value) = map.get_mut(value_key) {
                        mask(value, &marker, leaked);
                    }
                }
            }
            if map.get("sensitive") == Some(&Value::Bool(true)) {
                if let Some(value) = map.get_mut("value") {
                    mask(value, &Value::Bool(true), leaked);
                }
                if let Some(Value::Object(expr)) = map.get_mut("expression") {
                    if let Some(value) = expr.get_mut("constant_value") {
                        mask(value, &Value::Bool(true), leaked);
                    }
                }
            }
            for child in map.values_mut() {
                mask_structural(child, leaked);
            }
        }
        Value::Array(items) => {
            for child in items {
                mask_structural(child, leaked);
            }
        }
        _ => {}
    }
}

/// `variables` at the top of the document carry no sensitivity; `configuration` says which
/// variables are sensitive.
fn redact_sensitive_variables(doc: &mut Value, leaked: &mut BTreeSet<String>) {
    let sensitive: Vec<String> = doc["configuration"]["root_module"]["variables"]
        .as_object()
        .map(|vars| {
            vars.iter()
                .filter(|(_, v)| v["sensitive"] == Value::Bool(true))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    for name in sensitive {
        if let Some(value) = doc
            .get_mut("variables")
            .and_then(|v| v.get_mut(&name))
            .and_then(|v| v.get_mut("value"))
        {
            mask(value, &Value::Bool(true), leaked);
        }
        if let Some(default) = doc.pointer_mut(&format!(
            "/configuration/root_module/variables/{name}/default"
        )) {
            mask(default, &Value::Bool(true), leaked);
        }
    }
}

/// Masks `value` where `marker` (true, or an object/array mirroring the value) says so,
/// remembering the masked strings.
fn mask(value: &mut Value, marker: &Value, leaked: &mut BTreeSet<String>) {
    match (marker, &mut *value) {
        (Value::Bool(true), Value::Null) => {}
        (Value::Bool(true), _) => {
            collect_strings(value, leaked);
            *value = Value::String(REDACTED.to_owned());
        }
        (Value::Object(markers), Value::Object(values)) => {
            for (k, m) in markers {
                if let Some(v) = values.get_mut(k) {
                    mask(v, m, leaked);
                }
            }
        }
        (Value::Array(markers), Value::Array(values)) => {
            for (m, v) in markers.iter().zip(values.iter_mut()) {
                mask(v, m, leaked);
            }
        }
        _ => {}
    }
}

fn collect_strings(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) if s != REDACTED => {
            out.insert(s.clone());
        }
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}
