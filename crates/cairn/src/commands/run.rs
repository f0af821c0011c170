//! `cairn run …`

use std::io::{BufRead, Write};

use cairn_core::validate;
use cairn_proto::v1 as pb;
use futures::StreamExt;

use crate::cli::{RunCmd, RunTriggerArgs};
use crate::client::Api;
use crate::commands::stack::check_sha;
use crate::error::CliError;
use crate::output::{
    is_terminal_state, needs_attention, now_nanos, output_strip, paint, painted_state,
    relative_time, resource_strip, run_state_name, short, Color, Spinner, Table,
};
use crate::{call, json, Ctx};

pub async fn run(ctx: &Ctx, cmd: RunCmd) -> Result<(), CliError> {
    match cmd {
        RunCmd::List { stack, limit } => list(ctx, &stack, limit).await,
        RunCmd::Show { run } => show(ctx, &run).await,
        RunCmd::Trigger(a) => trigger(ctx, a).await,
        RunCmd::Confirm { run, wait } => {
            validate::run_id("run", &run)?;
            let api = ctx.api().await?;
            let r = call!(
                api,
                api.runs()
                    .confirm_run(pb::ConfirmRunRequest { run_id: run })
            )?
            .run
            .unwrap_or_default();
            report(ctx, &r, "Confirmed");
            if wait {
                return wait_for(ctx, &api, &r).await;
            }
            Ok(())
        }
        RunCmd::Discard { run } => {
            validate::run_id("run", &run)?;
            let api = ctx.api().await?;
            let r = call!(
                api,
                api.runs()
                    .discard_run(pb::DiscardRunRequest { run_id: run })
            )?
            .run;
            report(ctx, &r.unwrap_or_default(), "Discarded");
            Ok(())
        }
        RunCmd::Cancel { run } => {
            validate::run_id("run", &run)?;
            let api = ctx.api().await?;
            let r = call!(
                api,
                api.runs().cancel_run(pb::CancelRunRequest { run_id: run })
            )?
            .run;
            report(ctx, &r.unwrap_or_default(), "Canceled");
            Ok(())
        }
        RunCmd::Stop { run } => {
            validate::run_id("run", &run)?;
            let api = ctx.api().await?;
            let r = call!(api, api.runs().stop_run(pb::StopRunRequest { run_id: run }))?.run;
            report(ctx, &r.unwrap_or_default(), "Stop requested for");
            Ok(())
        }
        RunCmd::Replan { run, targets } => replan(ctx, &run, targets).await,
        RunCmd::Review {
            run,
            approve,
            reject,
            note,
        } => {
            validate::run_id("run", &run)?;
            // clap guarantees exactly one of the two.
            let approve = approve && !reject;
            let api = ctx.api().await?;
            let r = call!(
                api,
                api.runs().review_run(pb::ReviewRunRequest {
                    run_id: run,
                    approve,
                    note: note.unwrap_or_default(),
                })
            )?
            .run;
            report(
                ctx,
                &r.unwrap_or_default(),
                if approve { "Approved" } else { "Rejected" },
            );
            Ok(())
        }
        RunCmd::Logs { run, follow } => logs(ctx, &run, follow).await,
        RunCmd::Changes { run } => changes(ctx, &run).await,
    }
}

fn report(ctx: &Ctx, r: &pb::Run, verb: &str) {
    if ctx.json() {
        json::print(&json::run(r));
    } else {
        println!(
            "{verb} run {}: now {}",
            r.id,
            painted_state(r.state(), ctx.color)
        );
    }
}

async fn get(api: &Api, run: &str) -> Result<pb::Run, CliError> {
    Ok(call!(
        api,
        api.runs().get_run(pb::GetRunRequest {
            run_id: run.to_string()
        })
    )?
    .run
    .unwrap_or_default())
}

fn type_name(r: &pb::Run) -> String {
    r.r#type()
        .as_str_name()
        .trim_start_matches("RUN_TYPE_")
        .to_string()
}

async fn list(ctx: &Ctx, stack: &str, limit: i32) -> Result<(), CliError> {
    validate::stack_id("stack", stack)?;
    if !(1..=500).contains(&limit) {
        return Err(CliError::Invalid(format!(
            "--limit {limit}: expected 1 to 500"
        )));
    }
    let api = ctx.api().await?;
    let runs = call!(
        api,
        api.runs().list_runs(pb::ListRunsRequest {
            stack_id: stack.to_string(),
            page: Some(pb::PageRequest {
                page_size: limit,
                page_token: String::new(),
            }),
        })
    )?
    .runs;
    if ctx.json() {
        json::print(&runs.iter().map(json::run).collect());
        return Ok(());
    }
    if runs.is_empty() {
        println!("No runs on {stack}. Trigger one with `cairn run trigger {stack}`.");
        return Ok(());
    }
    let now = now_nanos();
    let mut t = Table::new([
        "ID",
        "TYPE",
        "STATE",
        "RESOURCES",
        "OUTPUTS",
        "COMMIT",
        "TRIGGERED BY",
        "CREATED",
    ]);
    for r in &runs {
        t.row([
            r.id.clone(),
            type_name(r),
            painted_state(r.state(), ctx.color),
            resource_strip(r.delta.as_ref(), ctx.color),
            output_strip(r.delta.as_ref(), ctx.color),
            short(
                &r.commit
                    .as_ref()
                    .map(|c| c.hash.clone())
                    .unwrap_or_default(),
                7,
            ),
            r.triggered_by.clone(),
            relative_time(r.created_at, now),
        ]);
    }
    print!("{}", t.render(ctx.color));
    Ok(())
}

async fn show(ctx: &Ctx, run: &str) -> Result<(), CliError> {
    validate::run_id("run", run)?;
    let api = ctx.api().await?;
    let r = get(&api, run).await?;
    if ctx.json() {
        json::print(&json::run(&r));
        return Ok(());
    }
    print!("{}", render_run(&r, now_nanos(), ctx.color));
    Ok(())
}

/// The human view of one run; pure so that it can be tested.
pub fn render_run(r: &pb::Run, now: i64, color: bool) -> String {
    let mut out = String::new();
    let mut kv = Table::new(["", ""]);
    kv.row(["Run".to_string(), paint(&r.id, Color::Bold, color)]);
    kv.row(["Stack".to_string(), r.stack_id.clone()]);
    let mode = r.mode().as_str_name().trim_start_matches("RUN_MODE_");
    let mut kind = type_name(r);
    if mode != "NORMAL" && mode != "UNSPECIFIED" {
        kind.push_str(&format!(" ({mode})"));
    }
    kv.row(["Type".to_string(), kind]);
    kv.row(["State".to_string(), painted_state(r.state(), color)]);
    if !r.deployment.is_empty() && r.deployment != "default" {
        kv.row(["Deployment".to_string(), r.deployment.clone()]);
    }
    if let Some(c) = &r.commit {
        if !c.hash.is_empty() {
            let msg = c.message.lines().next().unwrap_or("");
            kv.row([
                "Commit".to_string(),
                format!("{} {msg} ({})", short(&c.hash, 12), c.author)
                    .trim_end_matches(" ()")
                    .to_string(),
            ]);
        }
    }
    kv.row([
        "Triggered".to_string(),
        format!("{} {}", r.triggered_by, relative_time(r.created_at, now)),
    ]);
    kv.row([
        "Delta".to_string(),
        format!(
            "resources {}   outputs {}",
            resource_strip(r.delta.as_ref(), color),
            output_strip(r.delta.as_ref(), color)
        ),
    ]);
    if r.no_op {
        kv.row(["".to_string(), "no changes".to_string()]);
    }
    if !r.targets.is_empty() {
        kv.row(["Targets".to_string(), r.targets.join(", ")]);
    }
    for w in &r.policy_warnings {
        kv.row(["Warning".to_string(), paint(w, Color::Yellow, color)]);
    }
    for d in &r.policy_denies {
        kv.row(["Denied".to_string(), paint(d, Color::Red, color)]);
    }
    for v in &r.reviews {
        kv.row([
            "Review".to_string(),
            format!(
                "{} {} {}{}",
                v.login,
                if v.approve {
                    paint("approved", Color::Green, color)
                } else {
                    paint("rejected", Color::Red, color)
                },
                relative_time(v.timestamp, now),
                if v.note.is_empty() {
                    String::new()
                } else {
                    format!(": {}", v.note)
                }
            ),
        ]);
    }
    if !r.error.is_empty() {
        kv.row(["Error".to_string(), paint(&r.error, Color::Red, color)]);
    }
    for line in kv.render(false).lines().skip(1) {
        out.push_str(line);
        out.push('\n');
    }
    if !r.changes.is_empty() {
        out.push('\n');
        out.push_str(&changes_table(&r.changes, color).render(color));
    }
    if !r.states_history.is_empty() {
        out.push('\n');
        let mut h = Table::new(["STATE", "WHEN", "NOTE"]);
        for t in &r.states_history {
            h.row([
                painted_state(t.state(), color),
                relative_time(t.timestamp, now),
                t.note.clone(),
            ]);
        }
        out.push_str(&h.render(color));
    }
    out
}

fn action_mark(a: pb::ChangeAction, color: bool) -> String {
    match a {
        pb::ChangeAction::Added => paint("+ add", Color::Green, color),
        pb::ChangeAction::Changed => paint("~ change", Color::Yellow, color),
        pb::ChangeAction::Deleted => paint("- delete", Color::Red, color),
        pb::ChangeAction::Unspecified => "?".to_string(),
    }
}

fn changes_table(changes: &[pb::Change], color: bool) -> Table {
    let mut t = Table::new(["ACTION", "ADDRESS", "TYPE", "PHASE"]);
    for c in changes {
        let e = c.entity.clone().unwrap_or_default();
        t.row([
            action_mark(c.action(), color),
            e.address,
            e.r#type,
            c.phase()
                .as_str_name()
                .trim_start_matches("CHANGE_PHASE_")
                .to_lowercase(),
        ]);
    }
    t
}

async fn changes(ctx: &Ctx, run: &str) -> Result<(), CliError> {
    validate::run_id("run", run)?;
    let api = ctx.api().await?;
    let r = get(&api, run).await?;
    if ctx.json() {
        json::print(&r.changes.iter().map(json::change).collect());
        return Ok(());
    }
    if r.changes.is_empty() {
        println!(
            "Run {} has no changes (state {}).",
            r.id,
            run_state_name(r.state())
        );
        return Ok(());
    }
    print!("{}", changes_table(&r.changes, ctx.color).render(ctx.color));
    println!(
        "\nresources {}   outputs {}",
        resource_strip(r.delta.as_ref(), ctx.color),
        output_strip(r.delta.as_ref(), ctx.color)
    );
    Ok(())
}

async fn trigger(ctx: &Ctx, a: RunTriggerArgs) -> Result<(), CliError> {
    validate::stack_id("stack", &a.stack)?;
    if let Some(c) = &a.commit {
        check_sha(c)?;
    }
    if let Some(d) = &a.deployment {
        validate::slug("deployment", d)?;
    }
    let kind = if a.proposed {
        pb::RunType::Proposed
    } else if a.task {
        pb::RunType::Task
    } else {
        pb::RunType::Tracked
    };
    let mode = if a.destroy {
        pb::RunMode::Destroy
    } else {
        pb::RunMode::Normal
    };
    let api = ctx.api().await?;
    let r = call!(
        api,
        api.runs().trigger_run(pb::TriggerRunRequest {
            stack_id: a.stack,
            r#type: kind as i32,
            commit_sha: a.commit.unwrap_or_default(),
            mode: mode as i32,
            prioritized: a.prioritized,
            deployment: a.deployment.unwrap_or_default(),
        })
    )?
    .run
    .unwrap_or_default();
    if !a.wait {
        if ctx.json() {
            json::print(&json::run(&r));
        } else {
            println!(
                "Triggered {} run {} on {}: {}",
                type_name(&r).to_lowercase(),
                r.id,
                r.stack_id,
                painted_state(r.state(), ctx.color)
            );
            println!("Follow it with `cairn run logs {} --follow`.", r.id);
        }
        return Ok(());
    }
    if !ctx.json() {
        println!("Triggered run {} on {}", r.id, r.stack_id);
    }
    wait_for(ctx, &api, &r).await
}

/// Follows a run until it ends or waits for a person, with a spinner; prints the outcome.
/// Exit status: success if it FINISHED or needs a confirmation/review, else RunNotFinished.
async fn wait_for(ctx: &Ctx, api: &Api, start: &pb::Run) -> Result<(), CliError> {
    let spinner = Spinner::start(format!("{} {}", start.id, run_state_name(start.state())));
    let last = follow(api, start, |ev| match ev {
        Event::Run(r) => {
            spinner.set_message(format!(
                "{}  {}  {}",
                short(&r.id, 12),
                run_state_name(r.state()),
                resource_strip(r.delta.as_ref(), false)
            ));
            needs_attention(r.state())
        }
        Event::Log(_) => false,
    })
    .await?;
    drop(spinner);
    if ctx.json() {
        json::print(&json::run(&last));
    } else {
        println!(
            "Run {} {}  resources {}  outputs {}",
            last.id,
            painted_state(last.state(), ctx.color),
            resource_strip(last.delta.as_ref(), ctx.color),
            output_strip(last.delta.as_ref(), ctx.color)
        );
        match last.state() {
            pb::RunState::Unconfirmed => println!(
                "Review the changes with `cairn run changes {0}`, then `cairn run confirm {0}` or `cairn run discard {0}`.",
                last.id
            ),
            pb::RunState::PendingReview => println!(
                "Waiting for review: `cairn run review {} --approve` or `--reject`.",
                last.id
            ),
            _ => {}
        }
    }
    outcome(&last, true)
}

fn outcome(r: &pb::Run, attention_ok: bool) -> Result<(), CliError> {
    let s = r.state();
    if s == pb::RunState::Finished || (attention_ok && needs_attention(s)) {
        Ok(())
    } else {
        Err(CliError::RunNotFinished {
            run_id: r.id.clone(),
            state: if r.error.is_empty() {
                run_state_name(s).to_string()
            } else {
                format!(
                    "{}: {} (full log: `cairn run logs {}`)",
                    run_state_name(s),
                    summarize_error(&r.error),
                    r.id
                )
            },
        })
    }
}

/// Vendor errors span many lines; the CLI promises one. Keep the first line (Cairn's own
/// context, e.g. "planning failed: …") and the vendor's first `Error:` line, which names the
/// cause, each cut to a readable length.
pub fn summarize_error(error: &str) -> String {
    let cut = |s: &str| {
        let s = s.trim().trim_start_matches(['│', '╷', '╵']).trim();
        if s.chars().count() > 160 {
            format!("{}…", s.chars().take(159).collect::<String>())
        } else {
            s.to_string()
        }
    };
    let mut lines = error.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().map(cut).unwrap_or_default();
    let cause = error
        .lines()
        .skip(1)
        .map(|l| l.trim().trim_start_matches('│').trim())
        .find(|l| l.starts_with("Error:") || l.starts_with("error:"))
        .map(cut);
    match cause {
        Some(c) if !first.contains(&c) => format!("{first} … {c}"),
        _ => first,
    }
}

pub enum Event<'a> {
    Run(&'a pb::Run),
    Log(&'a pb::LogLine),
}

/// Streams WatchRun; `on_event` returns true to stop early. Ends at a terminal state. If the
/// stream closes before that (server restart, proxy timeout) it resumes after the last log
/// line seen, so nothing is printed twice or lost.
async fn follow(
    api: &Api,
    start: &pb::Run,
    mut on_event: impl FnMut(Event<'_>) -> bool,
) -> Result<pb::Run, CliError> {
    let mut last = start.clone();
    if is_terminal_state(last.state()) || on_event(Event::Run(&last)) {
        return Ok(last);
    }
    let mut after_seq = 0i64;
    let mut quiet_reconnects = 0;
    loop {
        let mut stream = call!(
            api,
            api.runs().watch_run(pb::WatchRunRequest {
                run_id: last.id.clone(),
                after_seq,
            })
        )?;
        let mut progressed = false;
        while let Some(item) = stream.next().await {
            let ev = item.map_err(|s| api.err(s))?;
            match ev.event {
                Some(pb::watch_run_response::Event::Run(r)) => {
                    last = r;
                    progressed = true;
                    if on_event(Event::Run(&last)) {
                        return Ok(last);
                    }
                    if is_terminal_state(last.state()) {
                        // The server sends a run before its log lines when catching up, so
                        // lines may still be due: collect them below rather than lose them.
                        break;
                    }
                }
                Some(pb::watch_run_response::Event::Log(l)) => {
                    after_seq = after_seq.max(l.seq);
                    progressed = true;
                    if on_event(Event::Log(&l)) {
                        return Ok(last);
                    }
                }
                None => {}
            }
        }
        // The stream ended (the server closes it when the run ends) or the run reached a
        // terminal state: look before resuming.
        if !is_terminal_state(last.state()) {
            last = get(api, &last.id).await?;
        }
        if is_terminal_state(last.state()) || on_event(Event::Run(&last)) {
            // Drain log lines written between our last event and the end.
            let rest = fetch_logs(api, &last.id, after_seq).await?;
            for l in &rest {
                on_event(Event::Log(l));
            }
            return Ok(last);
        }
        quiet_reconnects = if progressed { 0 } else { quiet_reconnects + 1 };
        if quiet_reconnects > 5 {
            return Err(CliError::Other(format!(
                "the server keeps closing the watch stream of run {} without events; try again later",
                last.id
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn fetch_logs(
    api: &Api,
    run: &str,
    mut after_seq: i64,
) -> Result<Vec<pb::LogLine>, CliError> {
    let mut all = Vec::new();
    loop {
        let lines = call!(
            api,
            api.runs().get_run_logs(pb::GetRunLogsRequest {
                run_id: run.to_string(),
                after_seq,
                limit: 1000,
            })
        )?
        .lines;
        let Some(last) = lines.last() else { break };
        if last.seq <= after_seq {
            break;
        }
        after_seq = last.seq;
        all.extend(lines);
    }
    Ok(all)
}

fn print_log(ctx: &Ctx, l: &pb::LogLine) {
    if ctx.json() {
        println!("{}", json::log_line(l));
        return;
    }
    let text = if l.stream() == pb::LogStream::System {
        paint(&format!("» {}", l.message), Color::Dim, ctx.color)
    } else {
        l.message.clone()
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", text.trim_end_matches('\n'));
}

async fn logs(ctx: &Ctx, run: &str, follow_it: bool) -> Result<(), CliError> {
    validate::run_id("run", run)?;
    let api = ctx.api().await?;
    if !follow_it {
        for l in fetch_logs(&api, run, 0).await? {
            print_log(ctx, &l);
        }
        return Ok(());
    }
    let start = get(&api, run).await?;
    let mut seen = 0i64;
    if is_terminal_state(start.state()) {
        for l in fetch_logs(&api, run, 0).await? {
            print_log(ctx, &l);
        }
    }
    let last = follow(&api, &start, |ev| {
        if let Event::Log(l) = ev {
            // Resumed streams and the final drain may repeat a line; print each seq once.
            if l.seq > seen {
                seen = l.seq;
                print_log(ctx, l);
            }
        }
        false
    })
    .await?;
    // Any other end state is reported by the error line (and exit code) instead.
    if !ctx.json() && last.state() == pb::RunState::Finished {
        eprintln!(
            "{} {}",
            paint("run", Color::Dim, output_color_stderr()),
            painted_state(last.state(), output_color_stderr())
        );
    }
    outcome(&last, false)
}

fn output_color_stderr() -> bool {
    use std::io::IsTerminal;
    crate::output::color_enabled(
        std::io::stderr().is_terminal(),
        std::env::var("NO_COLOR").ok().as_deref(),
    )
}

async fn replan(ctx: &Ctx, run: &str, targets: Vec<String>) -> Result<(), CliError> {
    validate::run_id("run", run)?;
    for t in &targets {
        validate::non_empty("target", t, 2048)?;
    }
    let api = ctx.api().await?;
    let targets = if targets.is_empty() {
        if !ctx.stdin_tty {
            return Err(CliError::Invalid(
                "give at least one --target ADDRESS (the picker needs a terminal)".into(),
            ));
        }
        let r = get(&api, run).await?;
        let addresses: Vec<String> = r
            .changes
            .iter()
            .filter_map(|c| c.entity.as_ref().map(|e| e.address.clone()))
            .filter(|a| !a.is_empty())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if addresses.is_empty() {
            return Err(CliError::Precondition(format!(
                "run {run} has no changed addresses to replan"
            )));
        }
        for (i, a) in addresses.iter().enumerate() {
            eprintln!("{:>3}) {a}", i + 1);
        }
        eprint!("Replan which addresses? (e.g. 1,3 or 2-4): ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let picked = parse_selection(&line, addresses.len())?;
        picked.into_iter().map(|i| addresses[i].clone()).collect()
    } else {
        targets
    };
    let r = call!(
        api,
        api.runs().replan_run(pb::ReplanRunRequest {
            run_id: run.to_string(),
            targets: targets.clone(),
        })
    )?
    .run
    .unwrap_or_default();
    if ctx.json() {
        json::print(&json::run(&r));
    } else {
        println!(
            "Replan of run {} requested for {}: now {}",
            r.id,
            targets.join(", "),
            painted_state(r.state(), ctx.color)
        );
    }
    Ok(())
}

/// Parses `1,3 5-7` into zero-based indexes below `n`, in order, without duplicates.
pub fn parse_selection(input: &str, n: usize) -> Result<Vec<usize>, CliError> {
    let bad = |part: &str| CliError::Invalid(format!("{part:?}: pick numbers between 1 and {n}"));
    let mut picked = Vec::new();
    for part in input
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
    {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>(), b.parse::<usize>()),
            None => (part.parse::<usize>(), part.parse::<usize>()),
        };
        let (Ok(lo), Ok(hi)) = (lo, hi) else {
            return Err(bad(part));
        };
        if lo == 0 || hi > n || lo > hi {
            return Err(bad(part));
        }
        for i in lo..=hi {
            if !picked.contains(&(i - 1)) {
                picked.push(i - 1);
            }
        }
    }
    if picked.is_empty() {
        return Err(CliError::Invalid("nothing picked".into()));
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections() {
        assert_eq!(parse_selection("1,3", 3).unwrap(), [0, 2]);
        assert_eq!(parse_selection(" 2-4 1 2\n", 5).unwrap(), [1, 2, 3, 0]);
        assert!(parse_selection("0", 3).is_err());
        assert!(parse_selection("4", 3).is_err());
        assert!(parse_selection("3-1", 3).is_err());
        assert!(parse_selection("x", 3).is_err());
        assert!(parse_selection("\n", 3).is_err());
    }

    #[test]
    fn run_view_shows_state_strip_and_changes() {
        const S: i64 = 1_000_000_000;
        let now = 1_700_000_000 * S;
        let r = pb::Run {
            id: "0190aaaabbbbccccddddeeeeffff0000".into(),
            stack_id: "net".into(),
            r#type: pb::RunType::Tracked as i32,
            mode: pb::RunMode::Destroy as i32,
            state: pb::RunState::Unconfirmed as i32,
            triggered_by: "user:admin".into(),
            created_at: now - 120 * S,
            delta: Some(pb::Delta {
                added_resources: 3,
                changed_resources: 1,
                deleted_resources: 2,
                ..Default::default()
            }),
            changes: vec![pb::Change {
                action: pb::ChangeAction::Deleted as i32,
                phase: pb::ChangePhase::Plan as i32,
                entity: Some(pb::Entity {
                    address: "null_resource.a".into(),
                    r#type: "null_resource".into(),
                    ..Default::default()
                }),
            }],
            states_history: vec![pb::StateTransition {
                state: pb::RunState::Queued as i32,
                timestamp: now - 120 * S,
                note: String::new(),
            }],
            ..Default::default()
        };
        let text = render_run(&r, now, false);
        assert!(text.contains("Type       TRACKED (DESTROY)"), "{text}");
        assert!(text.contains("State      UNCONFIRMED"), "{text}");
        assert!(text.contains("Triggered  user:admin 2m ago"), "{text}");
        assert!(
            text.contains("resources +3 ~1 -2   outputs +0 ~0 -0"),
            "{text}"
        );
        assert!(
            text.contains("- delete  null_resource.a  null_resource  plan"),
            "{text}"
        );
        assert!(text.contains("QUEUED  2m ago"), "{text}");
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn multi_line_errors_become_one_line() {
        let e = "planning failed: There are some problems with the CLI configuration:\n╷\n│ Warning: x\n╵\n\nError: Failed to query available provider packages\n\nmore";
        assert_eq!(
            summarize_error(e),
            "planning failed: There are some problems with the CLI configuration: … Error: Failed to query available provider packages"
        );
        assert_eq!(
            summarize_error("worker lost: lease expired"),
            "worker lost: lease expired"
        );
        assert!(!summarize_error(&"x".repeat(500)).contains('\n'));
        assert_eq!(summarize_error(&"x".repeat(500)).chars().count(), 160);
    }

    #[test]
    fn outcome_codes() {
        let mut r = pb::Run {
            state: pb::RunState::Finished as i32,
            ..Default::default()
        };
        assert!(outcome(&r, false).is_ok());
        r.state = pb::RunState::Unconfirmed as i32;
        assert!(outcome(&r, true).is_ok());
        assert_eq!(
            outcome(&r, false).unwrap_err().exit_code(),
            crate::error::exit::RUN_NOT_FINISHED
        );
    }
}
