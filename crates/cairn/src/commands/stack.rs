//! `cairn stack …`

use cairn_core::validate;
use cairn_proto::v1 as pb;

use crate::cli::{EnvCmd, StackCmd, StackCreateArgs, StackUpdateArgs};
use crate::client::all_pages;
use crate::commands::{check_labels, parse_assignment};
use crate::error::CliError;
use crate::output::{now_nanos, paint, relative_time, short, Color, Table};
use crate::{call, json, Ctx};

pub async fn run(ctx: &Ctx, cmd: StackCmd) -> Result<(), CliError> {
    match cmd {
        StackCmd::List { labels } => list(ctx, labels).await,
        StackCmd::Show { stack } => show(ctx, &stack).await,
        StackCmd::Create(a) => create(ctx, *a).await,
        StackCmd::Update(a) => update(ctx, *a).await,
        StackCmd::Delete { stack } => {
            validate::stack_id("stack", &stack)?;
            let api = ctx.api().await?;
            call!(
                api,
                api.stacks().delete_stack(pb::DeleteStackRequest {
                    stack_id: stack.clone()
                })
            )?;
            println!("Deleted stack {stack}");
            Ok(())
        }
        StackCmd::Lock { stack, note } => {
            validate::stack_id("stack", &stack)?;
            let api = ctx.api().await?;
            let s = call!(
                api,
                api.stacks().lock_stack(pb::LockStackRequest {
                    stack_id: stack,
                    note: note.unwrap_or_default(),
                })
            )?
            .stack
            .unwrap_or_default();
            print_stack_or(ctx, &s, || {
                println!("Locked stack {} for {}", s.id, s.locked_by)
            });
            Ok(())
        }
        StackCmd::Unlock { stack, force } => {
            validate::stack_id("stack", &stack)?;
            let api = ctx.api().await?;
            let s = call!(
                api,
                api.stacks().unlock_stack(pb::UnlockStackRequest {
                    stack_id: stack,
                    force,
                })
            )?
            .stack
            .unwrap_or_default();
            print_stack_or(ctx, &s, || println!("Unlocked stack {}", s.id));
            Ok(())
        }
        StackCmd::Env(e) => env(ctx, e).await,
        StackCmd::Sync { stack, commit } => {
            validate::stack_id("stack", &stack)?;
            if let Some(c) = &commit {
                check_sha(c)?;
            }
            let api = ctx.api().await?;
            let s = call!(
                api,
                api.stacks().sync_stack(pb::SyncStackRequest {
                    stack_id: stack,
                    commit: commit.map(|hash| pb::Commit {
                        hash,
                        ..Default::default()
                    }),
                })
            )?
            .stack
            .unwrap_or_default();
            print_stack_or(ctx, &s, || {
                let c = s.tracked_commit.clone().unwrap_or_default();
                println!(
                    "{}",
                    format!(
                        "Stack {} now tracks {} {}",
                        s.id,
                        short(&c.hash, 12),
                        first_line(&c.message)
                    )
                    .trim_end()
                )
            });
            Ok(())
        }
    }
}

fn print_stack_or(ctx: &Ctx, s: &pb::Stack, human: impl FnOnce()) {
    if ctx.json() {
        json::print(&json::stack(s));
    } else {
        human();
    }
}

/// Commit ids: 4..=64 hex digits (abbreviated or full SHA-1/SHA-256).
pub fn check_sha(c: &str) -> Result<(), CliError> {
    if !(4..=64).contains(&c.len()) || !c.chars().all(|ch| ch.is_ascii_hexdigit()) {
        return Err(CliError::Invalid(format!(
            "commit {c:?} is not a commit id (4 to 64 hex digits)"
        )));
    }
    Ok(())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

async fn list(ctx: &Ctx, labels: Vec<String>) -> Result<(), CliError> {
    check_labels(&labels)?;
    let api = &ctx.api().await?;
    let labels = &labels;
    let stacks = all_pages(|page_token| async move {
        let page = call!(
            api,
            api.stacks().list_stacks(pb::ListStacksRequest {
                labels: labels.clone(),
                page: Some(pb::PageRequest {
                    page_size: 500,
                    page_token,
                }),
            })
        )?;
        Ok((page.stacks, page.next_page_token))
    })
    .await?;
    if ctx.json() {
        json::print(&stacks.iter().map(json::stack).collect());
        return Ok(());
    }
    if stacks.is_empty() {
        println!("No stacks. Create one with `cairn stack create ID --repository URL`.");
        return Ok(());
    }
    let now = now_nanos();
    let mut t = Table::new([
        "ID",
        "VENDOR",
        "BRANCH",
        "STATE",
        "COMMIT",
        "LOCKED BY",
        "LABELS",
        "UPDATED",
    ]);
    for s in &stacks {
        t.row([
            s.id.clone(),
            s.vendor.clone(),
            s.branch.clone(),
            stack_state(&s.state, ctx.color),
            short(
                &s.tracked_commit
                    .as_ref()
                    .map(|c| c.hash.clone())
                    .unwrap_or_default(),
                7,
            ),
            s.locked_by.clone(),
            s.labels.join(","),
            relative_time(s.updated_at, now),
        ]);
    }
    print!("{}", t.render(ctx.color));
    Ok(())
}

fn stack_state(state: &str, color: bool) -> String {
    let c = match state {
        "FINISHED" => Color::Green,
        "FAILED" | "STOPPED" => Color::Red,
        "" | "NONE" => return paint("NONE", Color::Dim, color),
        _ => Color::Yellow,
    };
    paint(state, c, color)
}

async fn show(ctx: &Ctx, stack: &str) -> Result<(), CliError> {
    validate::stack_id("stack", stack)?;
    let api = ctx.api().await?;
    let s = call!(
        api,
        api.stacks().get_stack(pb::GetStackRequest {
            stack_id: stack.to_string()
        })
    )?
    .stack
    .unwrap_or_default();
    if ctx.json() {
        json::print(&json::stack(&s));
        return Ok(());
    }
    let now = now_nanos();
    let commit = s.tracked_commit.clone().unwrap_or_default();
    let mut t = Table::new(["", ""]);
    let mut field = |k: &str, v: String| {
        if !v.is_empty() {
            t.row([k.to_string(), v]);
        }
    };
    field("Stack", paint(&s.id, Color::Bold, ctx.color));
    if s.name != s.id {
        field("Name", s.name.clone());
    }
    field("Description", s.description.clone());
    field("Repository", s.repository.clone());
    field("Branch", s.branch.clone());
    field("Project root", s.project_root.clone());
    field("Globs", s.additional_project_globs.join(", "));
    field("Vendor", s.vendor.clone());
    field("Labels", s.labels.join(", "));
    field("Autodeploy", yes_no(s.autodeploy));
    field("Administrative", yes_no(s.administrative));
    field(
        "Worker pool",
        s.worker_pool
            .as_ref()
            .map(|p| p.id.clone())
            .unwrap_or_default(),
    );
    field("State", stack_state(&s.state, ctx.color));
    field(
        "Locked by",
        if s.locked_by.is_empty() {
            "-".into()
        } else {
            paint(&s.locked_by, Color::Yellow, ctx.color)
        },
    );
    if !commit.hash.is_empty() {
        field(
            "Tracked commit",
            format!(
                "{} {} ({}, {})",
                short(&commit.hash, 12),
                first_line(&commit.message),
                commit.author,
                relative_time(commit.created_at, now)
            ),
        );
    }
    field("Terraform", s.terraform_version.clone());
    field("Created", relative_time(s.created_at, now));
    field("Updated", relative_time(s.updated_at, now));
    // The header row of a key/value table is blank; skip it.
    let rendered = t.render(false);
    for line in rendered.lines().skip(1) {
        println!("{line}");
    }
    Ok(())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn check_common(
    id: &str,
    branch: Option<&str>,
    project_root: Option<&str>,
    vendor: Option<&str>,
    labels: &[String],
    globs: &[String],
) -> Result<(), CliError> {
    validate::stack_id("stack id", id)?;
    if let Some(b) = branch {
        validate::branch("branch", b)?;
    }
    if let Some(p) = project_root {
        validate::project_root("project_root", p)?;
    }
    if let Some(v) = vendor {
        validate::vendor("vendor", v)?;
    }
    check_labels(labels)?;
    for g in globs {
        validate::glob("glob", g)?;
    }
    Ok(())
}

async fn create(ctx: &Ctx, a: StackCreateArgs) -> Result<(), CliError> {
    check_common(
        &a.id,
        Some(&a.branch),
        Some(&a.project_root),
        Some(&a.vendor),
        &a.labels,
        &a.globs,
    )?;
    validate::non_empty("repository", &a.repository, 2048)?;
    if let Some(p) = &a.worker_pool {
        validate::slug("worker_pool", p)?;
    }
    let mut env = Vec::new();
    for (list, secret) in [(&a.env, false), (&a.secret_env, true)] {
        for assignment in list {
            let (name, value) = parse_assignment(assignment)?;
            env.push(pb::EnvVar {
                name,
                value,
                secret,
            });
        }
    }
    let stack = pb::Stack {
        id: a.id.clone(),
        name: a.name.unwrap_or_else(|| a.id.clone()),
        description: a.description.unwrap_or_default(),
        repository: a.repository,
        branch: a.branch,
        project_root: a.project_root,
        additional_project_globs: a.globs,
        vendor: a.vendor,
        labels: a.labels,
        autodeploy: a.autodeploy,
        administrative: a.administrative,
        worker_pool: a.worker_pool.map(|id| pb::WorkerPoolRef {
            id,
            ..Default::default()
        }),
        terraform_version: a.terraform_version.unwrap_or_default(),
        ..Default::default()
    };
    let api = ctx.api().await?;
    let s = call!(
        api,
        api.stacks().create_stack(pb::CreateStackRequest {
            stack: Some(stack),
            env
        })
    )?
    .stack
    .unwrap_or_default();
    print_stack_or(ctx, &s, || {
        println!(
            "Created stack {} ({} from {} @ {})",
            s.id, s.vendor, s.repository, s.branch
        )
    });
    Ok(())
}

async fn update(ctx: &Ctx, a: StackUpdateArgs) -> Result<(), CliError> {
    check_common(
        &a.stack,
        a.branch.as_deref(),
        a.project_root.as_deref(),
        a.vendor.as_deref(),
        a.labels.as_deref().unwrap_or_default(),
        &[],
    )?;
    if let Some(p) = a.worker_pool.as_deref().filter(|p| !p.is_empty()) {
        validate::slug("worker_pool", p)?;
    }
    let api = ctx.api().await?;
    let mut s = call!(
        api,
        api.stacks().get_stack(pb::GetStackRequest {
            stack_id: a.stack.clone()
        })
    )?
    .stack
    .unwrap_or_default();
    // The fetched version makes the server refuse the update if someone changed the stack
    // between our read and our write, instead of silently undoing their change.
    let mut changed = false;
    let mut set = |field: &mut String, v: Option<String>| {
        if let Some(v) = v {
            *field = v;
            changed = true;
        }
    };
    set(&mut s.name, a.name);
    set(&mut s.description, a.description);
    set(&mut s.repository, a.repository);
    set(&mut s.branch, a.branch);
    set(&mut s.project_root, a.project_root);
    set(&mut s.vendor, a.vendor);
    if let Some(l) = a.labels {
        s.labels = l;
        changed = true;
    }
    if let Some(v) = a.autodeploy {
        s.autodeploy = v;
        changed = true;
    }
    if let Some(v) = a.administrative {
        s.administrative = v;
        changed = true;
    }
    if let Some(p) = a.worker_pool {
        s.worker_pool = (!p.is_empty()).then(|| pb::WorkerPoolRef {
            id: p,
            ..Default::default()
        });
        changed = true;
    }
    if !changed {
        return Err(CliError::Invalid(
            "nothing to update: give at least one flag (see `cairn stack update --help`)".into(),
        ));
    }
    let s = call!(
        api,
        api.stacks()
            .update_stack(pb::UpdateStackRequest { stack: Some(s) })
    )?
    .stack
    .unwrap_or_default();
    print_stack_or(ctx, &s, || println!("Updated stack {}", s.id));
    Ok(())
}

async fn env(ctx: &Ctx, cmd: EnvCmd) -> Result<(), CliError> {
    match cmd {
        EnvCmd::Set {
            stack,
            assignment,
            secret,
        } => {
            validate::stack_id("stack", &stack)?;
            let (name, value) = parse_assignment(&assignment)?;
            let api = ctx.api().await?;
            let v = call!(
                api,
                api.stacks().set_env_var(pb::SetEnvVarRequest {
                    stack_id: stack.clone(),
                    var: Some(pb::EnvVar {
                        name,
                        value,
                        secret
                    }),
                })
            )?
            .var
            .unwrap_or_default();
            if ctx.json() {
                json::print(&json::env_var(&v));
            } else {
                println!(
                    "Set {}{} on stack {stack}",
                    v.name,
                    if v.secret { " (secret)" } else { "" }
                );
            }
            Ok(())
        }
        EnvCmd::List { stack } => {
            validate::stack_id("stack", &stack)?;
            let api = ctx.api().await?;
            let vars = call!(
                api,
                api.stacks()
                    .list_env_vars(pb::ListEnvVarsRequest { stack_id: stack })
            )?
            .vars;
            if ctx.json() {
                json::print(&vars.iter().map(json::env_var).collect());
                return Ok(());
            }
            let mut t = Table::new(["NAME", "VALUE"]);
            for v in &vars {
                let value = if v.secret {
                    paint("(secret)", Color::Dim, ctx.color)
                } else {
                    v.value.clone()
                };
                t.row([v.name.clone(), value]);
            }
            if t.is_empty() {
                println!("No variables.");
            } else {
                print!("{}", t.render(ctx.color));
            }
            Ok(())
        }
        EnvCmd::Unset { stack, name } => {
            validate::stack_id("stack", &stack)?;
            validate::env_name("env name", &name)?;
            let api = ctx.api().await?;
            call!(
                api,
                api.stacks().delete_env_var(pb::DeleteEnvVarRequest {
                    stack_id: stack.clone(),
                    name: name.clone(),
                })
            )?;
            println!("Removed {name} from stack {stack}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids() {
        assert!(check_sha("abc1234").is_ok());
        assert!(check_sha(&"a".repeat(40)).is_ok());
        assert!(check_sha("xyz").is_err());
        assert!(check_sha("main").is_err());
    }
}
