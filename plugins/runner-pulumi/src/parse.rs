//! Pulumi's machine-readable output as Runner results: the `preview --json` PreviewDigest and
//! the engine events `up --json` streams, one JSON object per line.

use cairn_proto::v1::{Change, ChangeAction, ChangePhase, Delta, Entity};
use cairn_runner_sdk::Redactor;
use serde_json::{json, Map, Value};

use crate::Error;

const SECRET_SIG_KEY: &str = "4dabf18193072939515e22adb298388d";
const SECRET_SIG_VALUE: &str = "1b47061264138c4ac30d75fd1eb44270";
const STACK_TYPE: &str = "pulumi:pulumi:Stack";

/// Changes and counts of a preview or an update.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    pub delta: Delta,
    pub changes: Vec<Change>,
    pub no_op: bool,
    /// Stack outputs after the operation, secrets masked (updates only).
    pub outputs: Map<String, Value>,
    /// Error diagnostics, in Pulumi's words.
    pub errors: Vec<String>,
    /// The redacted document (preview only).
    pub json: String,
}

/// Masks Pulumi secret values (`{"4dabf…": "1b47…", …}`) and the workspace's secrets.
pub fn redact(value: &mut Value, secrets: &Redactor) {
    mask_secrets(value);
    secrets.redact_json(value);
}

fn mask_secrets(value: &mut Value) {
    match value {
        Value::Object(map)
            if map.get(SECRET_SIG_KEY).and_then(Value::as_str) == Some(SECRET_SIG_VALUE) =>
        {
            *value = Value::String("***".to_owned());
        }
        Value::Object(map) => map.values_mut().for_each(mask_secrets),
        Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

fn classify(op: &str) -> Option<ChangeAction> {
    match op {
        "create" | "import" => Some(ChangeAction::Added),
        "update" | "replace" => Some(ChangeAction::Changed),
        "delete" => Some(ChangeAction::Deleted),
        // same, read, refresh, and the halves of a replacement (create-replacement,
        // delete-replaced, ...) which `replace` already counts; unknown ops are tolerated.
        _ => None,
    }
}

/// Accumulates steps from either format.
#[derive(Default)]
struct Builder {
    parsed: Parsed,
}

impl Builder {
    fn step(&mut self, op: &str, urn: &str, old: &Value, new: &Value, phase: ChangePhase) {
        let typ = new["type"]
            .as_str()
            .or_else(|| old["type"].as_str())
            .unwrap_or_default();
        if typ == STACK_TYPE {
            self.stack_outputs(&old["outputs"], &new["outputs"], phase);
            if let Some(outputs) = new["outputs"].as_object() {
                self.parsed.outputs = outputs.clone();
            }
            return;
        }
        let Some(action) = classify(op) else { return };
        let d = &mut self.parsed.delta;
        match action {
            ChangeAction::Added => d.added_resources += 1,
            ChangeAction::Changed => d.changed_resources += 1,
            ChangeAction::Deleted => d.deleted_resources += 1,
            ChangeAction::Unspecified => {}
        }
        let data = json!({"op": op, "old": old, "new": new});
        self.parsed.changes.push(Change {
            action: action as i32,
            entity: Some(Entity {
                address: urn.to_owned(),
                name: urn.rsplit("::").next().unwrap_or(urn).to_owned(),
                r#type: typ.to_owned(),
                entity_vendor: "pulumi".to_owned(),
                entity_type: "resource".to_owned(),
                data_json: data.to_string(),
            }),
            phase: phase as i32,
        });
    }

    /// Stack outputs are the outputs of the root `pulumi:pulumi:Stack` resource.
    fn stack_outputs(&mut self, old: &Value, new: &Value, phase: ChangePhase) {
        let empty = Map::new();
        let old = old.as_object().unwrap_or(&empty);
        let new = new.as_object().unwrap_or(&empty);
        let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let action = match (old.get(name), new.get(name)) {
                (None, Some(_)) => ChangeAction::Added,
                (Some(_), None) => ChangeAction::Deleted,
                (Some(a), Some(b)) if a != b => ChangeAction::Changed,
                _ => continue,
            };
            let d = &mut self.parsed.delta;
            match action {
                ChangeAction::Added => d.added_outputs += 1,
                ChangeAction::Changed => d.changed_outputs += 1,
                _ => d.deleted_outputs += 1,
            }
            let data = json!({"before": old.get(name), "after": new.get(name)});
            self.parsed.changes.push(Change {
                action: action as i32,
                entity: Some(Entity {
                    address: format!("output.{name}"),
                    name: name.clone(),
                    r#type: "output".to_owned(),
                    entity_vendor: "pulumi".to_owned(),
                    entity_type: "output".to_owned(),
                    data_json: data.to_string(),
                }),
                phase: phase as i32,
            });
        }
    }

    fn finish(mut self) -> Parsed {
        self.parsed.no_op = self.parsed.changes.is_empty();
        self.parsed
    }
}

/// Parses a `pulumi preview --json` PreviewDigest.
pub fn parse_preview(text: &str, secrets: &Redactor) -> Result<Parsed, Error> {
    let mut doc: Value = serde_json::from_str(text)
        .map_err(|e| Error::Parse(format!("`pulumi preview --json` output is not JSON: {e}")))?;
    redact(&mut doc, secrets);
    let mut b = Builder::default();
    for step in doc["steps"].as_array().into_iter().flatten() {
        b.step(
            step["op"].as_str().unwrap_or_default(),
            step["urn"].as_str().unwrap_or_default(),
            &step["oldState"],
            &step["newState"],
            ChangePhase::Plan,
        );
    }
    for diag in doc["diagnostics"].as_array().into_iter().flatten() {
        if diag["severity"] == "error" {
            b.parsed.errors.push(
                diag["message"]
                    .as_str()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            );
        }
    }
    b.parsed.outputs.clear();
    b.parsed.json = doc.to_string();
    Ok(b.finish())
}

/// Renders one engine event line readably, if it deserves a log line.
pub fn render_event(line: &str) -> Option<String> {
    let Ok(ev) = serde_json::from_str::<Value>(line) else {
        return Some(line.to_owned());
    };
    if let Some(d) = ev.get("diagnosticEvent") {
        let prefix = d["prefix"].as_str().unwrap_or_default();
        let message = d["message"].as_str().unwrap_or_default().trim_end();
        return Some(format!("{prefix}{message}"));
    }
    if let Some(o) = ev.get("resOutputsEvent") {
        let m = &o["metadata"];
        let op = m["op"].as_str().unwrap_or_default();
        if op == "same" {
            return None;
        }
        return Some(format!(
            "{} {}: done",
            op,
            m["urn"].as_str().unwrap_or_default()
        ));
    }
    if let Some(s) = ev.get("summaryEvent") {
        return Some(format!("Resources: {}", s["resourceChanges"]));
    }
    ev.get("stdoutEvent")
        .and_then(|s| s["message"].as_str())
        .map(|m| m.trim_end().to_owned())
}

/// Builds the apply result from the engine events of `pulumi up --json`.
pub fn parse_events<'a>(lines: impl IntoIterator<Item = &'a str>, secrets: &Redactor) -> Parsed {
    let mut b = Builder::default();
    for line in lines {
        let Ok(mut ev) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        redact(&mut ev, secrets);
        if let Some(o) = ev.get("resOutputsEvent") {
            let m = &o["metadata"];
            b.step(
                m["op"].as_str().unwrap_or_default(),
                m["urn"].as_str().unwrap_or_default(),
                &m["old"],
                &m["new"],
                ChangePhase::Apply,
            );
        } else if let Some(d) = ev.get("diagnosticEvent") {
            if d["severity"] == "error" {
                b.parsed
                    .errors
                    .push(d["message"].as_str().unwrap_or_default().trim().to_owned());
            }
        } else if let Some(f) = ev.get("resOpFailedEvent") {
            b.parsed.errors.push(format!(
                "{} failed",
                f["metadata"]["urn"].as_str().unwrap_or_default()
            ));
        }
    }
    b.finish()
}
