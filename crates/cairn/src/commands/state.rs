//! `cairn state …`: the Terraform state Cairn keeps for each deployment.

use cairn_core::validate;
use cairn_proto::v1 as pb;
use serde_json::{json, Value};

use crate::cli::StateCmd;
use crate::client::all_pages;
use crate::error::CliError;
use crate::output::{now_nanos, relative_time, Table};
use crate::{call, json, Ctx};

fn output_json(o: &pb::StateOutput) -> Value {
    json!({
        "name": o.name,
        "value": if o.sensitive { Value::Null } else {
            serde_json::from_str(&o.value_json).unwrap_or(Value::Null)
        },
        "sensitive": o.sensitive,
    })
}

fn version_json(v: &pb::StateVersion) -> Value {
    json!({
        "stack_id": v.stack_id,
        "deployment": v.deployment,
        "serial": v.serial,
        "lineage": v.lineage,
        "created_at": v.created_at,
        "created_by_run": v.created_by_run,
        "note": v.note,
        "size_bytes": v.size_bytes,
        "outputs": v.outputs.iter().map(output_json).collect::<Vec<_>>(),
    })
}

/// What `terraform output` prints for a value: strings quoted, sensitive ones hidden.
fn shown(o: &pb::StateOutput) -> String {
    if o.sensitive {
        "<sensitive>".into()
    } else {
        o.value_json.clone()
    }
}

fn check(stack: &str, deployment: &str) -> Result<(), CliError> {
    validate::stack_id("stack", stack)?;
    validate::slug("deployment", deployment)?;
    Ok(())
}

pub async fn run(ctx: &Ctx, cmd: StateCmd) -> Result<(), CliError> {
    match cmd {
        StateCmd::List { stack, deployment } => {
            check(&stack, &deployment)?;
            let api = &ctx.api().await?;
            let (stack, deployment) = (&stack, &deployment);
            let versions = all_pages(|page_token| async move {
                let page = call!(
                    api,
                    api.states()
                        .list_state_versions(pb::ListStateVersionsRequest {
                            stack_id: stack.clone(),
                            deployment: deployment.clone(),
                            page: Some(pb::PageRequest {
                                page_size: 500,
                                page_token,
                            }),
                        })
                )?;
                Ok((page.versions, page.next_page_token))
            })
            .await?;
            if ctx.json() {
                json::print(&versions.iter().map(version_json).collect());
                return Ok(());
            }
            if versions.is_empty() {
                println!("{stack}/{deployment} has no state yet.");
                return Ok(());
            }
            let now = now_nanos();
            let mut t = Table::new(["SERIAL", "CREATED", "BY RUN", "SIZE", "NOTE"]);
            for v in &versions {
                t.row([
                    v.serial.to_string(),
                    relative_time(v.created_at, now),
                    v.created_by_run.clone(),
                    format!("{} B", v.size_bytes),
                    v.note.clone(),
                ]);
            }
            print!("{}", t.render(ctx.color));
            Ok(())
        }
        StateCmd::Outputs { stack, deployment } => {
            check(&stack, &deployment)?;
            let api = ctx.api().await?;
            let res = call!(
                api,
                api.states().get_outputs(pb::GetOutputsRequest {
                    stack_id: stack.clone(),
                    deployment: deployment.clone(),
                })
            )?;
            if ctx.json() {
                json::print(&json!({
                    "serial": res.serial,
                    "outputs": res.outputs.iter().map(output_json).collect::<Vec<_>>(),
                }));
                return Ok(());
            }
            for o in &res.outputs {
                println!("{} = {}", o.name, shown(o));
            }
            Ok(())
        }
        StateCmd::Restore {
            stack,
            serial,
            deployment,
        } => {
            check(&stack, &deployment)?;
            if serial < 0 {
                return Err(CliError::Invalid(format!(
                    "serial {serial} is negative; see `cairn state list {stack}`"
                )));
            }
            let api = ctx.api().await?;
            let res = call!(
                api,
                api.states()
                    .restore_state_version(pb::RestoreStateVersionRequest {
                        stack_id: stack.clone(),
                        deployment: deployment.clone(),
                        serial,
                    })
            )?;
            let v = res.version.unwrap_or_default();
            if ctx.json() {
                json::print(&version_json(&v));
            } else {
                println!(
                    "Restored serial {serial} of {stack}/{deployment} as serial {}.",
                    v.serial
                );
            }
            Ok(())
        }
        StateCmd::Import {
            stack,
            file,
            deployment,
            force,
        } => {
            check(&stack, &deployment)?;
            let state = std::fs::read(&file).map_err(|source| CliError::File {
                path: file.clone(),
                source,
            })?;
            if serde_json::from_slice::<Value>(&state).is_err() {
                return Err(CliError::Invalid(format!(
                    "{} is not a JSON state document",
                    file.display()
                )));
            }
            let api = ctx.api().await?;
            let res = call!(
                api,
                api.states().import_state(pb::ImportStateRequest {
                    stack_id: stack.clone(),
                    deployment: deployment.clone(),
                    state,
                    force,
                })
            )?;
            let v = res.version.unwrap_or_default();
            let run = res.run.unwrap_or_default();
            if ctx.json() {
                json::print(&json!({"version": version_json(&v), "run_id": run.id}));
            } else {
                println!(
                    "Imported serial {} (lineage {}) into {stack}/{deployment}; run {} plans \
                     against it (`cairn run logs {} --follow`).",
                    v.serial, v.lineage, run.id, run.id
                );
            }
            Ok(())
        }
    }
}
