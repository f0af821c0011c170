//! `cairn deployment …` and `cairn config-version …`: a stack's deployments and the
//! configuration versions their runs are built from.

use std::collections::HashMap;

use cairn_core::deployment::{deployment_name, input_name};
use cairn_core::validate;
use cairn_proto::v1 as pb;
use serde_json::{json, Value};

use crate::cli::{ConfigVersionCmd, DeploymentCmd};
use crate::client::all_pages;
use crate::error::CliError;
use crate::output::{now_nanos, relative_time, Table};
use crate::{call, json, Ctx};

fn inputs_json(inputs: &HashMap<String, String>) -> Value {
    let mut names: Vec<&String> = inputs.keys().collect();
    names.sort();
    Value::Object(
        names
            .into_iter()
            .map(|k| {
                let v = serde_json::from_str(&inputs[k]).unwrap_or(Value::Null);
                (k.clone(), v)
            })
            .collect(),
    )
}

fn deployment_json(d: &pb::Deployment) -> Value {
    json!({
        "stack_id": d.stack_id,
        "name": d.name,
        "inputs": inputs_json(&d.inputs),
        "destroy": d.destroy,
        "auto_approve": d.auto_approve,
        "declared_in": d.declared_in,
        "deleted": d.deleted,
        "removed": d.removed,
        "last_config_version": d.last_config_version,
        "lock_holder": d.lock_holder,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    })
}

fn source_name(s: i32) -> &'static str {
    match pb::ConfigSource::try_from(s) {
        Ok(pb::ConfigSource::Vcs) => "VCS",
        Ok(pb::ConfigSource::Manual) => "MANUAL",
        Ok(pb::ConfigSource::Upload) => "UPLOAD",
        Ok(pb::ConfigSource::Inputs) => "INPUTS",
        Ok(pb::ConfigSource::Upstream) => "UPSTREAM",
        _ => "UNSPECIFIED",
    }
}

fn version_json(v: &pb::ConfigurationVersion) -> Value {
    json!({
        "id": v.id,
        "stack_id": v.stack_id,
        "seq": v.seq,
        "commit_sha": v.commit_sha,
        "content_digest": v.content_digest,
        "source": source_name(v.source),
        "created_at": v.created_at,
        "deployments": v.deployments.iter().map(|d| json!({
            "name": d.name,
            "inputs": inputs_json(&d.inputs),
            "destroy": d.destroy,
            "auto_approve": d.auto_approve,
        })).collect::<Vec<_>>(),
    })
}

/// `NAME=VALUE` as an API input: VALUE as JSON when it parses, else as a JSON string.
fn parse_input(s: &str) -> Result<(String, String), CliError> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| CliError::Invalid(format!("--input {s:?} is not NAME=VALUE")))?;
    input_name("--input", name)?;
    let json = match serde_json::from_str::<Value>(value) {
        Ok(_) => value.to_string(),
        Err(_) => Value::String(value.to_string()).to_string(),
    };
    Ok((name.to_string(), json))
}

fn flag(on: bool, name: &str) -> String {
    if on {
        name.to_string()
    } else {
        String::new()
    }
}

pub async fn run(ctx: &Ctx, cmd: DeploymentCmd) -> Result<(), CliError> {
    match cmd {
        DeploymentCmd::List { stack } => {
            validate::stack_id("stack", &stack)?;
            let api = ctx.api().await?;
            let res = call!(
                api,
                api.deployments()
                    .list_deployments(pb::ListDeploymentsRequest {
                        stack_id: stack.clone(),
                    })
            )?;
            if ctx.json() {
                json::print(&Value::Array(
                    res.deployments.iter().map(deployment_json).collect(),
                ));
                return Ok(());
            }
            if res.deployments.is_empty() {
                println!("{stack} declares no deployments: its runs are plain tracked runs.");
                return Ok(());
            }
            let now = now_nanos();
            let mut t = Table::new([
                "NAME",
                "FROM",
                "VERSION",
                "STATUS",
                "LOCKED BY",
                "INPUTS",
                "UPDATED",
            ]);
            for d in &res.deployments {
                let status = if d.removed {
                    "removed".to_string()
                } else if d.deleted {
                    "removing".to_string()
                } else {
                    [
                        flag(d.destroy, "destroy"),
                        flag(d.auto_approve, "auto-approve"),
                    ]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(",")
                };
                t.row([
                    d.name.clone(),
                    d.declared_in.clone(),
                    d.last_config_version.to_string(),
                    status,
                    d.lock_holder.clone(),
                    inputs_json(&d.inputs).to_string(),
                    relative_time(d.updated_at, now),
                ]);
            }
            print!("{}", t.render(ctx.color));
            Ok(())
        }
        DeploymentCmd::Create {
            stack,
            name,
            inputs,
            auto_approve,
            destroy,
        } => {
            validate::stack_id("stack", &stack)?;
            deployment_name("name", &name)?;
            let inputs = inputs
                .iter()
                .map(|i| parse_input(i))
                .collect::<Result<HashMap<_, _>, _>>()?;
            let api = ctx.api().await?;
            let res = call!(
                api,
                api.deployments()
                    .create_deployment(pb::CreateDeploymentRequest {
                        stack_id: stack.clone(),
                        name: name.clone(),
                        inputs,
                        destroy,
                        auto_approve,
                    })
            )?;
            let d = res.deployment.unwrap_or_default();
            if ctx.json() {
                json::print(&deployment_json(&d));
            } else {
                println!(
                    "Deployment {stack}/{name} declared; `cairn config-version create {stack}` runs it now."
                );
            }
            Ok(())
        }
        DeploymentCmd::Delete { stack, name } => {
            validate::stack_id("stack", &stack)?;
            deployment_name("name", &name)?;
            let api = ctx.api().await?;
            let res = call!(
                api,
                api.deployments()
                    .delete_deployment(pb::DeleteDeploymentRequest {
                        stack_id: stack.clone(),
                        name: name.clone(),
                    })
            )?;
            let d = res.deployment.unwrap_or_default();
            if ctx.json() {
                json::print(&json!({
                    "deployment": deployment_json(&d),
                    "configuration_version": res.configuration_version.as_ref().map(version_json),
                    "run_ids": res.run_ids,
                }));
            } else if d.removed && res.run_ids.is_empty() {
                println!("Deployment {stack}/{name} removed (it never ran).");
            } else {
                println!(
                    "Deployment {stack}/{name} is being removed: runs {}",
                    res.run_ids.join(", ")
                );
            }
            Ok(())
        }
    }
}

pub async fn config_versions(ctx: &Ctx, cmd: ConfigVersionCmd) -> Result<(), CliError> {
    match cmd {
        ConfigVersionCmd::List { stack } => {
            validate::stack_id("stack", &stack)?;
            let api = &ctx.api().await?;
            let stack = &stack;
            let versions = all_pages(|page_token| async move {
                let page = call!(
                    api,
                    api.deployments().list_configuration_versions(
                        pb::ListConfigurationVersionsRequest {
                            stack_id: stack.clone(),
                            page_size: 500,
                            page_token,
                        }
                    )
                )?;
                Ok((page.configuration_versions, page.next_page_token))
            })
            .await?;
            if ctx.json() {
                json::print(&Value::Array(versions.iter().map(version_json).collect()));
                return Ok(());
            }
            if versions.is_empty() {
                println!("{stack} has no configuration versions yet.");
                return Ok(());
            }
            let now = now_nanos();
            let mut t = Table::new(["SEQ", "COMMIT", "SOURCE", "DEPLOYMENTS", "CREATED"]);
            for v in &versions {
                t.row([
                    v.seq.to_string(),
                    v.commit_sha.chars().take(12).collect(),
                    source_name(v.source).to_string(),
                    v.deployments
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    relative_time(v.created_at, now),
                ]);
            }
            print!("{}", t.render(ctx.color));
            Ok(())
        }
        ConfigVersionCmd::Create { stack, commit } => {
            validate::stack_id("stack", &stack)?;
            let commit = commit.unwrap_or_default();
            if !commit.is_empty()
                && (!(7..=64).contains(&commit.len())
                    || !commit.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(CliError::Invalid(format!(
                    "--commit {commit:?} is not a commit hash (7 to 64 hex digits)"
                )));
            }
            let api = ctx.api().await?;
            let res = call!(
                api,
                api.deployments().create_configuration_version(
                    pb::CreateConfigurationVersionRequest {
                        stack_id: stack.clone(),
                        commit_sha: commit,
                        archive: Vec::new(),
                    }
                )
            )?;
            let v = res.configuration_version.unwrap_or_default();
            if ctx.json() {
                json::print(&json!({
                    "configuration_version": version_json(&v),
                    "run_ids": res.run_ids,
                }));
            } else {
                println!(
                    "Configuration version {} of {stack} at {}: runs {}",
                    v.seq,
                    v.commit_sha,
                    res.run_ids.join(", ")
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_json_or_plain_strings() {
        assert_eq!(parse_input("n=3").unwrap(), ("n".into(), "3".into()));
        assert_eq!(
            parse_input("region=eu").unwrap(),
            ("region".into(), "\"eu\"".into())
        );
        assert_eq!(
            parse_input("r=\"eu\"").unwrap(),
            ("r".into(), "\"eu\"".into())
        );
        assert_eq!(parse_input("l=[1,2]").unwrap().1, "[1,2]");
        assert!(parse_input("novalue").is_err());
        assert_eq!(
            parse_input("1x=2").unwrap_err().exit_code(),
            crate::error::exit::INVALID
        );
    }
}
