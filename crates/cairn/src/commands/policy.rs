//! `cairn policy …`

use cairn_core::validate;
use cairn_proto::v1 as pb;

use crate::cli::{PolicyCmd, PolicyKind};
use crate::client::all_pages;
use crate::commands::{check_labels, read_input_file};
use crate::error::CliError;
use crate::output::{now_nanos, paint, relative_time, Color, Table};
use crate::{call, json, Ctx};

pub fn policy_type(k: PolicyKind) -> pb::PolicyType {
    match k {
        PolicyKind::Push => pb::PolicyType::Push,
        PolicyKind::Trigger => pb::PolicyType::Trigger,
        PolicyKind::Plan => pb::PolicyType::Plan,
        PolicyKind::Approval => pb::PolicyType::Approval,
    }
}

fn type_name(p: &pb::Policy) -> String {
    p.r#type()
        .as_str_name()
        .trim_start_matches("POLICY_TYPE_")
        .to_lowercase()
}

fn read_body(path: &std::path::Path) -> Result<String, CliError> {
    let body = read_input_file(path)?;
    if body.trim().is_empty() {
        return Err(CliError::Invalid(format!("{} is empty", path.display())));
    }
    Ok(body)
}

pub async fn run(ctx: &Ctx, cmd: PolicyCmd) -> Result<(), CliError> {
    match cmd {
        PolicyCmd::Test { dir, verbose } => test(ctx, &dir, verbose),
        PolicyCmd::List { kind } => list(ctx, kind).await,
        PolicyCmd::Show { policy } => {
            validate::slug("policy", &policy)?;
            let api = ctx.api().await?;
            let p = call!(
                api,
                api.policies()
                    .get_policy(pb::GetPolicyRequest { policy_id: policy })
            )?
            .policy
            .unwrap_or_default();
            if ctx.json() {
                json::print(&json::policy(&p));
                return Ok(());
            }
            let now = now_nanos();
            println!("Policy    {}", paint(&p.id, Color::Bold, ctx.color));
            if p.name != p.id {
                println!("Name      {}", p.name);
            }
            println!("Type      {}", type_name(&p));
            println!("Version   {}", p.version);
            if !p.labels.is_empty() {
                println!("Labels    {}", p.labels.join(", "));
            }
            if !p.stack_ids.is_empty() {
                println!("Stacks    {}", p.stack_ids.join(", "));
            }
            println!("Updated   {}", relative_time(p.updated_at, now));
            println!();
            print!("{}", p.body);
            if !p.body.ends_with('\n') {
                println!();
            }
            Ok(())
        }
        PolicyCmd::Create {
            id,
            kind,
            body,
            name,
            labels,
        } => {
            validate::slug("policy id", &id)?;
            check_labels(&labels)?;
            let body = read_body(&body)?;
            let api = ctx.api().await?;
            let p = call!(
                api,
                api.policies().create_policy(pb::CreatePolicyRequest {
                    policy: Some(pb::Policy {
                        name: name.unwrap_or_else(|| id.clone()),
                        id,
                        r#type: policy_type(kind) as i32,
                        body,
                        labels,
                        ..Default::default()
                    }),
                })
            )?
            .policy
            .unwrap_or_default();
            print_or(ctx, &p, || {
                println!(
                    "Created {} policy {} (version {})",
                    type_name(&p),
                    p.id,
                    p.version
                )
            });
            Ok(())
        }
        PolicyCmd::Update {
            policy,
            body,
            name,
            labels,
        } => {
            validate::slug("policy", &policy)?;
            if let Some(l) = &labels {
                check_labels(l)?;
            }
            let body = body.as_deref().map(read_body).transpose()?;
            if body.is_none() && name.is_none() && labels.is_none() {
                return Err(CliError::Invalid(
                    "nothing to update: give --body, --name or --label".into(),
                ));
            }
            let api = ctx.api().await?;
            let mut p = call!(
                api,
                api.policies()
                    .get_policy(pb::GetPolicyRequest { policy_id: policy })
            )?
            .policy
            .unwrap_or_default();
            if let Some(b) = body {
                p.body = b;
            }
            if let Some(n) = name {
                p.name = n;
            }
            if let Some(l) = labels {
                p.labels = l;
            }
            let p = call!(
                api,
                api.policies()
                    .update_policy(pb::UpdatePolicyRequest { policy: Some(p) })
            )?
            .policy
            .unwrap_or_default();
            print_or(ctx, &p, || {
                println!("Updated policy {} (version {})", p.id, p.version)
            });
            Ok(())
        }
        PolicyCmd::Delete { policy } => {
            validate::slug("policy", &policy)?;
            let api = ctx.api().await?;
            call!(
                api,
                api.policies().delete_policy(pb::DeletePolicyRequest {
                    policy_id: policy.clone()
                })
            )?;
            println!("Deleted policy {policy}");
            Ok(())
        }
        PolicyCmd::Attach { policy, stack } => {
            validate::slug("policy", &policy)?;
            validate::stack_id("stack", &stack)?;
            let api = ctx.api().await?;
            call!(
                api,
                api.policies().attach_policy(pb::AttachPolicyRequest {
                    policy_id: policy.clone(),
                    stack_id: stack.clone(),
                })
            )?;
            println!("Attached policy {policy} to stack {stack}");
            Ok(())
        }
        PolicyCmd::Detach { policy, stack } => {
            validate::slug("policy", &policy)?;
            validate::stack_id("stack", &stack)?;
            let api = ctx.api().await?;
            call!(
                api,
                api.policies().detach_policy(pb::DetachPolicyRequest {
                    policy_id: policy.clone(),
                    stack_id: stack.clone(),
                })
            )?;
            println!("Detached policy {policy} from stack {stack}");
            Ok(())
        }
        PolicyCmd::Samples { policy, limit } => samples(ctx, &policy, limit).await,
        PolicyCmd::Simulate {
            kind,
            body,
            input,
            sample,
        } => {
            let body = read_body(&body)?;
            let input = match (input, sample) {
                (Some(path), _) => {
                    let text = read_input_file(&path)?;
                    // Catch a broken input file here rather than as a server-side error.
                    serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
                        CliError::Invalid(format!("{}: not JSON: {e}", path.display()))
                    })?;
                    pb::simulate_policy_request::Input::InputJson(text)
                }
                (None, Some(id)) => {
                    validate::non_empty("sample", &id, 128)?;
                    pb::simulate_policy_request::Input::SampleId(id)
                }
                (None, None) => {
                    return Err(CliError::Invalid("give --input FILE or --sample ID".into()))
                }
            };
            let api = ctx.api().await?;
            let res = call!(
                api,
                api.policies().simulate_policy(pb::SimulatePolicyRequest {
                    r#type: policy_type(kind) as i32,
                    body,
                    input: Some(input),
                })
            )?;
            let decision: serde_json::Value = serde_json::from_str(&res.decision_json)
                .unwrap_or(serde_json::Value::String(res.decision_json.clone()));
            if ctx.json() {
                json::print(&serde_json::json!({
                    "decision": decision,
                    "duration_micros": res.duration_micros,
                }));
            } else {
                json::print(&decision);
                eprintln!("evaluated in {}µs", res.duration_micros);
            }
            Ok(())
        }
    }
}

fn print_or(ctx: &Ctx, p: &pb::Policy, human: impl FnOnce()) {
    if ctx.json() {
        json::print(&json::policy(p));
    } else {
        human();
    }
}

async fn list(ctx: &Ctx, kind: Option<PolicyKind>) -> Result<(), CliError> {
    let api = &ctx.api().await?;
    let r#type = kind.map(policy_type).unwrap_or(pb::PolicyType::Unspecified) as i32;
    let policies = all_pages(|page_token| async move {
        let page = call!(
            api,
            api.policies().list_policies(pb::ListPoliciesRequest {
                r#type,
                page: Some(pb::PageRequest {
                    page_size: 500,
                    page_token,
                }),
            })
        )?;
        Ok((page.policies, page.next_page_token))
    })
    .await?;
    if ctx.json() {
        json::print(&policies.iter().map(json::policy).collect());
        return Ok(());
    }
    if policies.is_empty() {
        println!("No policies.");
        return Ok(());
    }
    let now = now_nanos();
    let mut t = Table::new(["ID", "TYPE", "VERSION", "LABELS", "STACKS", "UPDATED"]);
    for p in &policies {
        t.row([
            p.id.clone(),
            type_name(p),
            p.version.to_string(),
            p.labels.join(","),
            p.stack_ids.join(","),
            relative_time(p.updated_at, now),
        ]);
    }
    print!("{}", t.render(ctx.color));
    Ok(())
}

async fn samples(ctx: &Ctx, policy: &str, limit: i32) -> Result<(), CliError> {
    validate::slug("policy", policy)?;
    if !(1..=500).contains(&limit) {
        return Err(CliError::Invalid(format!(
            "--limit {limit}: expected 1 to 500"
        )));
    }
    let api = ctx.api().await?;
    let samples = call!(
        api,
        api.policies()
            .list_policy_samples(pb::ListPolicySamplesRequest {
                policy_id: policy.to_string(),
                page: Some(pb::PageRequest {
                    page_size: limit,
                    page_token: String::new(),
                }),
            })
    )?
    .samples;
    if ctx.json() {
        json::print(&samples.iter().map(json::policy_sample).collect());
        return Ok(());
    }
    if samples.is_empty() {
        println!("No samples for {policy} yet: they are recorded as the policy is evaluated.");
        return Ok(());
    }
    let now = now_nanos();
    let mut t = Table::new(["ID", "VERSION", "WHEN", "DURATION", "DECISION"]);
    for s in &samples {
        let decision = if s.error.is_empty() {
            compact(&s.decision_json, 60)
        } else {
            paint(&format!("error: {}", s.error), Color::Red, ctx.color)
        };
        t.row([
            s.id.clone(),
            s.policy_version.to_string(),
            relative_time(s.created_at, now),
            format!("{}µs", s.duration_micros),
            decision,
        ]);
    }
    print!("{}", t.render(ctx.color));
    Ok(())
}

/// One-line JSON, cut to `max` characters for a table cell.
fn compact(json_text: &str, max: usize) -> String {
    let one = serde_json::from_str::<serde_json::Value>(json_text)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| json_text.replace('\n', " "));
    if one.chars().count() > max {
        format!("{}…", one.chars().take(max - 1).collect::<String>())
    } else {
        one
    }
}

/// `cairn policy test`: local, like `opa test`; regorus does the evaluation, so a policy that
/// passes here behaves the same on the server.
fn test(ctx: &Ctx, dir: &std::path::Path, verbose: bool) -> Result<(), CliError> {
    if !dir.is_dir() {
        return Err(CliError::Invalid(format!(
            "{} is not a directory of policies",
            dir.display()
        )));
    }
    let report = cairn_policy::run_tests(dir).map_err(|e| CliError::Invalid(e.to_string()))?;
    if report.results.is_empty() {
        return Err(CliError::Invalid(format!(
            "no test_* rules found in {} (tests live in *_test.rego files)",
            dir.display()
        )));
    }
    for r in &report.results {
        let (label, color) = match &r.outcome {
            cairn_policy::TestOutcome::Pass if !verbose => continue,
            cairn_policy::TestOutcome::Pass => ("PASS", Color::Green),
            cairn_policy::TestOutcome::Fail => ("FAIL", Color::Red),
            cairn_policy::TestOutcome::Error { .. } => ("ERROR", Color::Red),
        };
        let mut line = format!(
            "{} {}.{} ({}, {:?})",
            paint(label, color, ctx.color),
            r.package,
            r.name,
            r.file.display(),
            r.duration
        );
        if let cairn_policy::TestOutcome::Error { message } = &r.outcome {
            line.push_str(&format!(": {message}"));
        }
        println!("{line}");
    }
    let verdict = if report.success() { "PASS" } else { "FAIL" };
    println!("{verdict}: {}/{}", report.passed(), report.results.len());
    if report.success() {
        Ok(())
    } else {
        Err(CliError::TestsFailed {
            failed: report.results.len() - report.passed(),
            total: report.results.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_cuts_long_decisions() {
        assert_eq!(compact("{\n \"a\": 1\n}", 60), r#"{"a":1}"#);
        let long = format!("[{}]", "1,".repeat(50) + "1");
        let c = compact(&long, 10);
        assert_eq!(c.chars().count(), 10);
        assert!(c.ends_with('…'));
    }
}
