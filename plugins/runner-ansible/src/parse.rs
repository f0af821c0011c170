//! The `ansible.posix.json` callback's report as Runner results.

use cairn_proto::v1::{Change, ChangeAction, ChangePhase, Delta, Entity};
use cairn_runner_sdk::Redactor;
use serde_json::{json, Value};

use crate::Error;

/// What one playbook run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub delta: Delta,
    /// One per host and changed task.
    pub changes: Vec<Change>,
    /// Readable lines: one per task and host, and the recap.
    pub log: Vec<String>,
    /// Why the run failed (failed tasks, unreachable hosts), if it did.
    pub problem: Option<String>,
    /// The redacted report.
    pub json: String,
}

/// Splits targets into hosts (`--limit`) and tags (`--tags`).
pub fn split_targets(targets: &[String]) -> (Vec<String>, Vec<String>) {
    let mut hosts = Vec::new();
    let mut tags = Vec::new();
    for target in targets {
        if let Some(tag) = target.strip_prefix("tag:") {
            tags.push(tag.to_owned());
        } else {
            // A change address is `<host>/<task>`: target its host.
            let host = target.split('/').next().unwrap_or(target);
            if !hosts.iter().any(|h| h == host) {
                hosts.push(host.to_owned());
            }
        }
    }
    (hosts, tags)
}

/// `ansible-playbook [core 2.19.4]` → `2.19.4`.
pub fn version(output: &str) -> String {
    let first = output.lines().next().unwrap_or_default();
    first
        .split(['[', ']', ' '])
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or_default()
        .to_owned()
}

pub fn parse_report(stdout: &str, phase: ChangePhase, secrets: &Redactor) -> Result<Report, Error> {
    // The callback writes one JSON document; anything printed before it (e.g. a warning from a
    // plugin that went to stdout) is skipped.
    let start = stdout
        .find("{\n")
        .or_else(|| stdout.find('{'))
        .ok_or_else(|| Error::Parse("ansible printed no JSON report".into()))?;
    let mut doc: Value = serde_json::from_str(&stdout[start..])
        .map_err(|e| Error::Parse(format!("ansible's JSON report is unreadable: {e}")))?;
    secrets.redact_json(&mut doc);

    let mut changes = Vec::new();
    let mut log = Vec::new();
    let mut failures = Vec::new();
    for play in doc["plays"].as_array().into_iter().flatten() {
        let play_name = play["play"]["name"].as_str().unwrap_or_default();
        log.push(format!("PLAY [{play_name}]"));
        for task in play["tasks"].as_array().into_iter().flatten() {
            let task_name = task["task"]["name"].as_str().unwrap_or_default();
            log.push(format!("TASK [{task_name}]"));
            let Some(hosts) = task["hosts"].as_object() else {
                continue;
            };
            for (host, result) in hosts {
                let action = result["action"].as_str().unwrap_or_default();
                let msg = result["msg"].as_str().unwrap_or_default();
                let status = if result["unreachable"] == true {
                    failures.push(format!("{host}: unreachable: {msg}"));
                    "unreachable"
                } else if result["failed"] == true {
                    failures.push(format!("{host}: task `{task_name}` failed: {msg}"));
                    "failed"
                } else if result["skipped"] == true {
                    "skipping"
                } else if result["changed"] == true {
                    "changed"
                } else {
                    "ok"
                };
                log.push(if msg.is_empty() || status == "ok" || status == "changed" {
                    format!("{status}: [{host}]")
                } else {
                    format!("{status}: [{host}] {msg}")
                });
                if status != "changed" {
                    continue;
                }
                let data = json!({
                    "host": host,
                    "play": play_name,
                    "task": task_name,
                    "action": action,
                    "diff": result.get("diff").cloned().unwrap_or(Value::Null),
                });
                changes.push(Change {
                    action: ChangeAction::Changed as i32,
                    entity: Some(Entity {
                        address: format!("{host}/{task_name}"),
                        name: task_name.to_owned(),
                        r#type: action.to_owned(),
                        entity_vendor: "ansible".to_owned(),
                        entity_type: "task".to_owned(),
                        data_json: data.to_string(),
                    }),
                    phase: phase as i32,
                });
            }
        }
    }
    if let Some(stats) = doc["stats"].as_object() {
        log.push("PLAY RECAP".to_owned());
        for (host, s) in stats {
            log.push(format!(
                "{host}: ok={} changed={} unreachable={} failed={} skipped={} rescued={} ignored={}",
                s["ok"], s["changed"], s["unreachable"], s["failures"], s["skipped"], s["rescued"], s["ignored"]
            ));
        }
    }
    let delta = Delta {
        changed_resources: i32::try_from(changes.len()).unwrap_or(i32::MAX),
        ..Default::default()
    };
    Ok(Report {
        delta,
        changes,
        log,
        problem: (!failures.is_empty()).then(|| failures.join("\n")),
        json: doc.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_with_a_change_and_an_unreachable_host() {
        let text = include_str!("../tests/fixtures/check-unreachable.json");
        let report = parse_report(
            text,
            ChangePhase::Plan,
            &Redactor::new(["/tmp/ans/out.txt"]),
        )
        .unwrap();
        assert_eq!(report.changes.len(), 1);
        let change = &report.changes[0];
        assert_eq!(change.action(), ChangeAction::Changed);
        assert_eq!(change.phase(), ChangePhase::Plan);
        let entity = change.entity.as_ref().unwrap();
        assert_eq!(entity.address, "localhost/write file");
        assert_eq!(entity.r#type, "ansible.builtin.copy");
        assert_eq!(entity.entity_type, "task");
        assert!(
            !entity.data_json.contains("/tmp/ans/out.txt"),
            "secrets redacted: {}",
            entity.data_json
        );
        assert_eq!(report.delta.changed_resources, 1);
        let problem = report.problem.unwrap();
        assert!(problem.starts_with("badhost: unreachable"), "{problem}");
        assert!(
            report.log.contains(&"changed: [localhost]".to_owned()),
            "{:?}",
            report.log
        );
    }

    #[test]
    fn targets_split_into_hosts_and_tags() {
        let targets = [
            "web1".to_owned(),
            "tag:files".to_owned(),
            "web1/write file".to_owned(),
            "db".to_owned(),
        ];
        assert_eq!(
            split_targets(&targets),
            (
                vec!["web1".to_owned(), "db".to_owned()],
                vec!["files".to_owned()]
            )
        );
    }

    #[test]
    fn version_line() {
        assert_eq!(
            version("ansible-playbook [core 2.19.4]\n  config file = None\n"),
            "2.19.4"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_report(
            "ERROR! no playbook",
            ChangePhase::Plan,
            &Redactor::default()
        )
        .is_err());
    }
}
