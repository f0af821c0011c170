//! Deployment runs (HCP Terraform Stacks): configuration versions, one run per deployment,
//! plan/apply cycles until a plan is empty, approval order and the deployment lock.
//!
//! A stack uses deployment runs once it declares a deployment, through DeploymentService or in
//! `cairn.toml` at its project root; other stacks keep Spacelift's tracked runs unchanged.
//!
//! - Entry points: every way a tracked run is asked for (push policies, the Git poller, trigger
//!   policies, TriggerRun TRACKED) creates an ordinary QUEUED tracked run. Before dispatching,
//!   the scheduler hands such runs to [`adopt_tracked_runs`]: on a deployment stack the run's
//!   commit becomes a configuration version (cairn.toml at that commit merged with the
//!   API-declared deployments), the run itself becomes the deployment run of the first
//!   deployment and one run is created for each other one. DeploymentService creates versions
//!   directly (manual fetch, upload, input changes, removals), and so does
//!   [`create_configuration_version`]. Runs of an uploaded version restore the upload instead
//!   of checking out Git ([`lease_source`], crate::uploads).
//! - Runs: plans are leased as ordinary PLAN jobs. A plan that does not hold the deployment lock
//!   runs with `CAIRN_STATE_READ_ONLY=1`, so Terraform's http backend takes no state lock: plans of
//!   several configuration versions may exist side by side. A plan with changes waits
//!   (UNCONFIRMED) unless the deployment auto-approves, in which case it is confirmed once its
//!   workspace is stored.
//! - Approval: confirming a deployment run dismisses every not-yet-approved run of that
//!   deployment built from an older configuration version (DISCARDED, or CANCELED/STOPPED
//!   while it still plans); newer ones stay and can be re-planned (ReplanRun without targets).
//! - Lock: a CONFIRMED deployment run is dispatched only once it holds the deployment lock
//!   (taken by the scheduler, approval order first); it keeps it through every cycle and frees
//!   it when it reaches a terminal state.
//! - Cycles: a successful apply moves the run to REPLAN_REQUESTED (event `Cycle`) and it plans
//!   again in a new lease; an empty plan finishes it (converged). A plan that still has changes
//!   after `deployments.max_cycles` applies fails it. A DESTROY run ends with its apply.
//! - Destroy: `destroy = true` makes the deployment's runs DESTROY runs; a removed deployment
//!   gets a DESTROY run built from the last configuration version that contained it, and is
//!   marked removed once that run finishes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use cairn_core::deployment::{parse_config_file, CONFIG_FILE};
use cairn_core::{
    Commit, ConfigSource, ConfigurationVersion, CoreError, CreatorSession, Deployment,
    DeploymentSnapshot, EnvVar, Run, RunEvent, RunMode, RunPatch, RunState, RunType, Stack,
};
use cairn_store::{Page, StoreError};

use crate::error::{Result, ServerError};
use crate::state::AppState;

/// Version creation and the deployment rows it syncs form one unit per server.
fn creation_lock() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// Tracked runs already looked at by [`adopt_tracked_runs`] (the answer for a run never
/// changes, and looking means a git fetch).
fn probed() -> std::sync::MutexGuard<'static, HashSet<String>> {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // Runs leave the queue quickly; forgetting them costs one more look, never a wrong answer.
    if seen.len() >= 100_000 {
        seen.clear();
    }
    seen
}

/// The cairn.toml paths of a commit, per (repository, commit): a push to a monorepo queues a
/// tracked run for many stacks at one commit, and each must be told apart without a git call.
type FileIndex = HashMap<(String, String), Arc<HashSet<String>>>;

fn file_index() -> std::sync::MutexGuard<'static, FileIndex> {
    static INDEX: OnceLock<Mutex<FileIndex>> = OnceLock::new();
    INDEX
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Records the cairn.toml paths of a pushed commit when they follow from its parent's without
/// a fetch: the paths at `before` are known and `changed` (every path that differs between
/// `before` and `after`) names no cairn.toml. Telling a pushed tracked run from a deployment
/// run then costs no git call on the webhook-to-run path.
pub(crate) fn learn_config_paths(repository: &str, before: &str, after: &str, changed: &[String]) {
    if changed
        .iter()
        .any(|p| crate::vcs::cache::is_named(p, CONFIG_FILE))
    {
        return;
    }
    let known = file_index()
        .get(&(repository.to_string(), before.to_string()))
        .cloned();
    if let Some(paths) = known {
        remember_config_paths((repository.to_string(), after.to_string()), paths);
    }
}

fn remember_config_paths(key: (String, String), paths: Arc<HashSet<String>>) {
    let mut index = file_index();
    // Old commits are not asked about again; keep the index small.
    if index.len() >= 1024 {
        index.clear();
    }
    index.insert(key, paths);
}

/// Whether `stack`'s project root has a cairn.toml at `sha`.
async fn has_config_file(state: &AppState, stack: &Stack, sha: &str) -> Result<bool> {
    let root = stack.project_root.trim_matches('/');
    let path = if root.is_empty() {
        CONFIG_FILE.to_string()
    } else {
        format!("{root}/{CONFIG_FILE}")
    };
    let key = (stack.repository.clone(), sha.to_string());
    if let Some(paths) = file_index().get(&key) {
        return Ok(paths.contains(&path));
    }
    let cache = state.config.data_dir.join("git-cache");
    let (repo, sha_c) = key.clone();
    let paths: HashSet<String> = crate::vcs::ingest::blocking(move || {
        let dir = crate::vcs::cache::fetch_commit(&cache, &repo, &sha_c)?;
        crate::vcs::cache::paths_named(&dir, &sha_c, CONFIG_FILE)
    })
    .await?
    .into_iter()
    .collect();
    let found = paths.contains(&path);
    remember_config_paths(key, Arc::new(paths));
    Ok(found)
}

/// The project root's content digest and the deployments its cairn.toml declares (none when
/// the file is absent) at `sha`, read from the server's Git cache.
pub async fn read_configuration(
    state: &AppState,
    stack: &Stack,
    sha: &str,
) -> Result<(String, Vec<DeploymentSnapshot>)> {
    let root = state.config.data_dir.join("git-cache");
    let (repo, sha_c, project_root) = (
        stack.repository.clone(),
        sha.to_string(),
        stack.project_root.clone(),
    );
    let (digest, file) = crate::vcs::ingest::blocking(move || {
        let dir = crate::vcs::cache::fetch_commit(&root, &repo, &sha_c)?;
        crate::vcs::cache::read_project_file(&dir, &sha_c, &project_root, CONFIG_FILE)
    })
    .await?;
    let deployments = match file {
        None => Vec::new(),
        Some(bytes) => {
            let text = String::from_utf8(bytes)
                .map_err(|_| ServerError::invalid(CONFIG_FILE, "is not UTF-8"))?;
            parse_config_file(&text)?
        }
    };
    Ok((digest, deployments))
}

/// Makes the deployment rows follow a cairn.toml: new names are created, declared ones updated
/// (or revived after a removal), and file deployments the file no longer has are marked
/// deleted. A name the API declared wins over the file.
async fn sync_file_deployments(
    state: &AppState,
    stack_id: &str,
    file: &[DeploymentSnapshot],
) -> Result<()> {
    let rows: HashMap<String, Deployment> = state
        .store
        .list_deployments(stack_id)
        .await?
        .into_iter()
        .map(|d| (d.name.clone(), d))
        .collect();
    let now = cairn_core::now_nanos();
    for f in file {
        match rows.get(&f.name) {
            None => {
                let mut d = Deployment::new(stack_id, &f.name, now);
                d.declared_in = "file".into();
                d.inputs = f.inputs.clone();
                d.destroy = f.destroy;
                d.auto_approve = f.auto_approve;
                state.store.create_deployment(d).await?;
            }
            Some(row) if row.declared_in == "file" => {
                let mut d = row.clone();
                d.inputs = f.inputs.clone();
                d.destroy = f.destroy;
                d.auto_approve = f.auto_approve;
                d.deleted = false;
                d.removed = false;
                if d != *row {
                    d.updated_at = now;
                    state.store.update_deployment(d).await?;
                }
            }
            Some(_) => {}
        }
    }
    for row in rows.values() {
        if row.declared_in == "file" && row.is_active() && !file.iter().any(|f| f.name == row.name)
        {
            let mut d = row.clone();
            d.deleted = true;
            d.updated_at = now;
            state.store.update_deployment(d).await?;
        }
    }
    Ok(())
}

/// Creates a configuration version of `stack_id` at `commit_sha` (cairn.toml there merged with
/// the API-declared deployments) and one QUEUED deployment run per deployment, plus a DESTROY
/// run for each deployment removed since. The runs are returned in deployment-name order
/// (destroy runs last).
pub async fn create_configuration_version(
    state: &AppState,
    stack_id: &str,
    source: ConfigSource,
    commit_sha: &str,
) -> Result<(ConfigurationVersion, Vec<Run>)> {
    let stack = state.store.get_stack(stack_id).await?;
    let commit = match &stack.tracked_commit {
        Some(c) if c.hash == commit_sha => c.clone(),
        _ => Commit {
            hash: commit_sha.to_string(),
            branch: stack.branch.clone(),
            ..Default::default()
        },
    };
    let triggered_by = format!("config_version:{}", source.as_str().to_ascii_lowercase());
    let (digest, file) = read_configuration(state, &stack, commit_sha).await?;
    create_version(
        state,
        &stack,
        source,
        commit,
        &triggered_by,
        (digest, file),
        None,
    )
    .await
}

/// Creates a configuration version (source UPLOAD) from an uploaded tar.gz of the project root:
/// its cairn.toml merged with the API-declared deployments, one run per deployment, exactly as
/// for a commit. A refused archive stores nothing. The runs have no commit; their plan leases
/// restore the upload ([`lease_source`]).
pub async fn create_uploaded_version(
    state: &AppState,
    stack_id: &str,
    archive: Vec<u8>,
) -> Result<(ConfigurationVersion, Vec<Run>)> {
    let stack = state.store.get_stack(stack_id).await?;
    let (max, root) = (
        state.config.deployment_upload_max_bytes,
        stack.project_root.clone(),
    );
    let upload =
        tokio::task::spawn_blocking(move || crate::uploads::normalize(&archive, max, &root))
            .await
            .map_err(|e| ServerError::Internal(format!("normalizing the upload: {e}")))??;
    let file = match &upload.config_file {
        None => Vec::new(),
        Some(bytes) => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| ServerError::invalid(CONFIG_FILE, "is not UTF-8"))?;
            parse_config_file(text)?
        }
    };
    state
        .artifacts
        .store_upload(&state.master_key, &upload.digest, &upload.archive)
        .await?;
    let commit = Commit {
        branch: stack.branch.clone(),
        ..Default::default()
    };
    create_version(
        state,
        &stack,
        ConfigSource::Upload,
        commit,
        "config_version:upload",
        (upload.digest, file),
        None,
    )
    .await
}

/// For a plan lease of `run`: when its configuration version was uploaded, the upload sealed
/// with the lease's data key (the artifact id the agent restores instead of checking out Git);
/// empty otherwise.
pub async fn lease_source(state: &AppState, run: &Run, data_key: &[u8]) -> Result<String> {
    if !run.is_deployment_run() {
        return Ok(String::new());
    }
    let version = state
        .store
        .get_configuration_version(&run.stack_id, run.config_version)
        .await?;
    if version.source != ConfigSource::Upload {
        return Ok(String::new());
    }
    state
        .artifacts
        .seal_upload_for_run(
            &state.master_key,
            &version.content_digest,
            &run.id,
            data_key,
        )
        .await
}

/// After SyncStack moved the tracked commit: on a deployment stack (API deployments, or a
/// cairn.toml at the commit) a configuration version of that commit (source MANUAL) with one
/// run per deployment, as CreateConfigurationVersion makes, unless the newest version already
/// is that commit with the same configuration.
pub async fn after_sync(state: &AppState, stack: &Stack) -> Result<()> {
    let Some(commit) = stack.tracked_commit.clone() else {
        return Ok(());
    };
    let declared = !state.store.list_deployments(&stack.id).await?.is_empty();
    if !declared {
        match has_config_file(state, stack, &commit.hash).await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            // Not fetchable: not a deployment stack as far as anyone can tell (and moving the
            // tracked commit does not need the server's Git cache).
            Err(e) => {
                tracing::debug!(stack.id = %stack.id, error = %e, "no cairn.toml looked for");
                return Ok(());
            }
        }
    }
    // A broken cairn.toml does not undo the sync: the tracked run asked for at this commit
    // fails naming the file, as without SyncStack.
    let config = match read_configuration(state, stack, &commit.hash).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(stack.id = %stack.id, error = %e, "no configuration version on sync");
            return Ok(());
        }
    };
    if !declared && config.1.is_empty() {
        return Ok(());
    }
    create_version_with(
        state,
        stack,
        ConfigSource::Manual,
        commit,
        "config_version:manual",
        config,
        None,
        true,
    )
    .await?;
    Ok(())
}

/// One run a new configuration version asks for.
struct RunSpec {
    deployment: String,
    mode: RunMode,
    config_version: i64,
    commit: Commit,
}

async fn create_version(
    state: &AppState,
    stack: &Stack,
    source: ConfigSource,
    commit: Commit,
    triggered_by: &str,
    (digest, file): (String, Vec<DeploymentSnapshot>),
    adopt: Option<Run>,
) -> Result<(ConfigurationVersion, Vec<Run>)> {
    let dedup = adopt.is_some();
    create_version_with(
        state,
        stack,
        source,
        commit,
        triggered_by,
        (digest, file),
        adopt,
        dedup,
    )
    .await
}

/// [`create_version`]; with `dedup`, a commit whose newest version already has the same
/// configuration makes no new version (and cancels the adopted run, if any).
#[allow(clippy::too_many_arguments)]
async fn create_version_with(
    state: &AppState,
    stack: &Stack,
    source: ConfigSource,
    commit: Commit,
    triggered_by: &str,
    (digest, file): (String, Vec<DeploymentSnapshot>),
    adopt: Option<Run>,
    dedup: bool,
) -> Result<(ConfigurationVersion, Vec<Run>)> {
    let _unit = creation_lock().lock().await;
    sync_file_deployments(state, &stack.id, &file).await?;
    let rows = state.store.list_deployments(&stack.id).await?;
    let snapshots: Vec<DeploymentSnapshot> = rows
        .iter()
        .filter(|d| d.is_active())
        .map(Deployment::snapshot)
        .collect();
    // A commit Cairn already made a version of (the poller and a manual trigger noticing the
    // same push, say) is not a new configuration: no new version, no new runs.
    if dedup {
        let latest = state
            .store
            .list_configuration_versions(&stack.id, 0, 1)
            .await?;
        if let Some(v) = latest
            .into_iter()
            .find(|v| v.commit_sha == commit.hash && v.same_configuration(&digest, &snapshots))
        {
            if let Some(r) = &adopt {
                let note = format!(
                    "configuration version {} already has commit {}: nothing new to run",
                    v.seq, commit.hash
                );
                state
                    .transition(&r.id, RunEvent::Cancel, &note, RunPatch::default())
                    .await?;
                state.system_log(&r.id, note).await;
            }
            return Ok((v, Vec::new()));
        }
    }
    let now = cairn_core::now_nanos();
    let version = state
        .store
        .add_configuration_version(ConfigurationVersion {
            id: cairn_core::ids::new_id("cv"),
            stack_id: stack.id.clone(),
            seq: 0,
            commit_sha: commit.hash.clone(),
            content_digest: digest,
            deployments: snapshots.clone(),
            source,
            created_at: now,
        })
        .await?;
    tracing::info!(stack.id = %stack.id, config_version = version.seq, source = source.as_str(),
        deployments = snapshots.len(), "configuration version created");

    let mut specs: Vec<RunSpec> = snapshots
        .iter()
        .map(|s| RunSpec {
            deployment: s.name.clone(),
            mode: if s.destroy {
                RunMode::Destroy
            } else {
                RunMode::Normal
            },
            config_version: version.seq,
            commit: commit.clone(),
        })
        .collect();
    for row in &rows {
        if row.is_active() {
            let mut d = row.clone();
            d.last_config_version = version.seq;
            d.updated_at = now;
            state.store.update_deployment(d).await?;
            continue;
        }
        if row.removed {
            continue;
        }
        // Removed from the configuration: destroy it with the last version that had it.
        if row.last_config_version == 0 {
            let mut d = row.clone();
            d.removed = true;
            d.updated_at = now;
            state.store.update_deployment(d).await?;
            continue;
        }
        let pending = state
            .store
            .unfinished_runs(&stack.id)
            .await?
            .into_iter()
            .any(|r| {
                r.is_deployment_run() && r.deployment == row.name && r.mode == RunMode::Destroy
            });
        if pending {
            continue;
        }
        let old = state
            .store
            .get_configuration_version(&stack.id, row.last_config_version)
            .await?;
        specs.push(RunSpec {
            deployment: row.name.clone(),
            mode: RunMode::Destroy,
            config_version: old.seq,
            commit: Commit {
                hash: old.commit_sha.clone(),
                branch: stack.branch.clone(),
                ..Default::default()
            },
        });
    }

    let mut adopt = adopt;
    let mut runs = Vec::new();
    for spec in specs {
        let run = match adopt.take() {
            Some(r) => {
                let (dep, mode, cv, commit) = (
                    spec.deployment.clone(),
                    spec.mode,
                    spec.config_version,
                    spec.commit.clone(),
                );
                state
                    .mutate_run(&r.id, move |run, _| {
                        if run.state != RunState::Queued {
                            return Err(CoreError::FailedPrecondition(format!(
                                "run {} is {}: it cannot become a deployment run",
                                run.id, run.state
                            )));
                        }
                        run.config_version = cv;
                        run.deployment = dep.clone();
                        run.mode = mode;
                        run.commit = commit.clone();
                        Ok(())
                    })
                    .await?
            }
            None => {
                let mut run = Run::new(
                    cairn_core::ids::new_run_id(),
                    stack.id.clone(),
                    RunType::Tracked,
                    spec.commit,
                    triggered_by.to_string(),
                    CreatorSession::default(),
                    cairn_core::now_nanos(),
                );
                run.config_version = spec.config_version;
                run.deployment = spec.deployment.clone();
                run.mode = spec.mode;
                let run = state.store.create_run(run).await?;
                crate::policies::after_run_created(state, &run).await;
                run
            }
        };
        let what = if run.mode == RunMode::Destroy {
            "destroy run"
        } else {
            "deployment run"
        };
        state
            .system_log(
                &run.id,
                format!(
                    "{what} of deployment {} at configuration version {} (created by version {})",
                    run.deployment, run.config_version, version.seq
                ),
            )
            .await;
        runs.push(run);
    }
    if let Some(r) = adopt {
        let note = format!(
            "configuration version {} has no deployment to run",
            version.seq
        );
        let _ = state
            .transition(&r.id, RunEvent::Cancel, &note, RunPatch::default())
            .await;
    }
    state.wake_scheduler();
    Ok((version, runs))
}

/// Turns plain QUEUED tracked runs of deployment stacks into deployment runs (see the module
/// documentation). True when something changed, so that the scheduler reads the queue again.
pub async fn adopt_tracked_runs(state: &AppState, runs: &[Run]) -> Result<bool> {
    let mut adopted = false;
    for run in runs {
        if run.state != RunState::Queued
            || run.run_type != RunType::Tracked
            || run.is_deployment_run()
            || run.commit.hash.is_empty()
            || !probed().insert(run.id.clone())
        {
            continue;
        }
        let stack = match state.store.get_stack(&run.stack_id).await {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let declared = !state.store.list_deployments(&stack.id).await?.is_empty();
        if !declared {
            match has_config_file(state, &stack, &run.commit.hash).await {
                Ok(true) => {}
                Ok(false) => continue,
                // Not fetchable: not a deployment stack as far as anyone can tell.
                Err(e) => {
                    tracing::debug!(run.id = %run.id, error = %e, "no cairn.toml looked for");
                    continue;
                }
            }
        }
        let read = read_configuration(state, &stack, &run.commit.hash).await;
        let config = match read {
            Ok(c) if declared || !c.1.is_empty() => c,
            Ok(_) => continue,
            Err(e) if declared => {
                let note = format!("no configuration version: {e}");
                crate::agents::fail_run(state, &run.id, &note).await;
                adopted = true;
                continue;
            }
            // Not a deployment stack as far as anyone can tell: a plain tracked run.
            Err(e) => {
                tracing::debug!(run.id = %run.id, error = %e, "no cairn.toml read");
                continue;
            }
        };
        let source = if run.triggered_by.starts_with("git:") {
            ConfigSource::Vcs
        } else {
            ConfigSource::Manual
        };
        let res = create_version(
            state,
            &stack,
            source,
            run.commit.clone(),
            &run.triggered_by,
            config,
            Some(run.clone()),
        )
        .await;
        if let Err(e) = res {
            crate::agents::fail_run(state, &run.id, &format!("no configuration version: {e}"))
                .await;
        }
        adopted = true;
    }
    Ok(adopted)
}

/// Whether the scheduler may lease `run` now. A CONFIRMED deployment run needs the deployment
/// lock; it is taken here (approval order comes from the dispatch order) and kept until the
/// run ends. A holder that already ended (a crash between its end and the release) is freed.
pub async fn may_dispatch(state: &AppState, run: &Run) -> bool {
    if !run.is_deployment_run() || run.state != RunState::Confirmed {
        return true;
    }
    match take_lock(state, run).await {
        Ok(taken) => taken,
        Err(e) => {
            tracing::warn!(run.id = %run.id, error = %e, "deployment lock not taken");
            false
        }
    }
}

async fn take_lock(state: &AppState, run: &Run) -> Result<bool> {
    let store = &state.store;
    let before = store
        .get_deployment(&run.stack_id, &run.deployment)
        .await?
        .lock_holder;
    if before == run.id {
        return Ok(true);
    }
    let mut holder = store
        .acquire_deployment_lock(&run.stack_id, &run.deployment, &run.id)
        .await?;
    if holder != run.id {
        let stale = match store.get_run(&holder).await {
            Ok(h) => h.state.is_terminal(),
            Err(StoreError::NotFound { .. }) => true,
            Err(e) => return Err(e.into()),
        };
        if !stale {
            return Ok(false);
        }
        store
            .release_deployment_lock(&run.stack_id, &run.deployment, &holder)
            .await?;
        holder = store
            .acquire_deployment_lock(&run.stack_id, &run.deployment, &run.id)
            .await?;
        if holder != run.id {
            return Ok(false);
        }
    }
    state
        .system_log(
            &run.id,
            format!("took the lock of deployment {}", run.deployment),
        )
        .await;
    Ok(true)
}

/// Called by [`AppState::transition`] after every transition of a deployment run.
pub async fn after_transition(state: &AppState, event: RunEvent, run: &Run) {
    if !run.is_deployment_run() {
        return;
    }
    if event == RunEvent::Confirm {
        dismiss_older(state, run).await;
    }
    if run.state.is_terminal() {
        run_ended(state, run).await;
    }
}

/// Approving a plan dismisses the pending plans of the deployment from older versions: they
/// can never be applied (a deployment does not go back to an older configuration).
async fn dismiss_older(state: &AppState, approved: &Run) {
    let runs = match state.store.unfinished_runs(&approved.stack_id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(run.id = %approved.id, error = %e, "older plans not dismissed");
            return;
        }
    };
    let note = format!(
        "dismissed: configuration version {} was approved",
        approved.config_version
    );
    for r in runs.into_iter().filter(|r| {
        r.is_deployment_run()
            && r.id != approved.id
            && r.deployment == approved.deployment
            && r.config_version < approved.config_version
            && r.approved_at == 0
    }) {
        let event = match r.state {
            RunState::Unconfirmed => RunEvent::Discard,
            RunState::Queued | RunState::ReplanRequested => RunEvent::Cancel,
            RunState::Preparing | RunState::Initializing | RunState::Planning => RunEvent::Stop,
            RunState::PendingReview => RunEvent::Reject,
            _ => continue,
        };
        match state
            .transition(&r.id, event, &note, RunPatch::default())
            .await
        {
            Ok(done) => {
                if event == RunEvent::Stop {
                    crate::agents::cancel_run_jobs(state, &done.id, &note).await;
                }
                state.system_log(&done.id, note.clone()).await;
                state
                    .artifacts
                    .delete_run(&done.id, &done.artifact_id)
                    .await;
            }
            Err(e) => tracing::info!(run.id = %r.id, error = %e, "plan not dismissed"),
        }
    }
}

async fn run_ended(state: &AppState, run: &Run) {
    match state
        .store
        .release_deployment_lock(&run.stack_id, &run.deployment, &run.id)
        .await
    {
        Ok(true) => {
            state
                .system_log(
                    &run.id,
                    format!("released the lock of deployment {}", run.deployment),
                )
                .await
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(run.id = %run.id, error = %e, "deployment lock not released"),
    }
    if run.mode == RunMode::Destroy && run.state == RunState::Finished {
        if let Ok(mut d) = state
            .store
            .get_deployment(&run.stack_id, &run.deployment)
            .await
        {
            if d.deleted && !d.removed {
                d.removed = true;
                d.updated_at = cairn_core::now_nanos();
                if let Err(e) = state.store.update_deployment(d).await {
                    tracing::warn!(run.id = %run.id, error = %e, "deployment not marked removed");
                }
            }
        }
    }
    state.wake_scheduler();
}

/// Once a plan has both its outcome and its stored workspace (agents report them in either
/// order): an UNCONFIRMED deployment run of an auto-approving deployment is confirmed (it then
/// queues for the deployment lock).
pub async fn workspace_stored(state: &AppState, run_id: &str) {
    let Ok(run) = state.store.get_run(run_id).await else {
        return;
    };
    if !run.is_deployment_run() || run.state != RunState::Unconfirmed || run.artifact_id.is_empty()
    {
        return;
    }
    let auto = state
        .store
        .get_deployment(&run.stack_id, &run.deployment)
        .await
        .is_ok_and(|d| d.auto_approve);
    if !auto {
        return;
    }
    let note = format!("auto-approved (deployment {} auto_approve)", run.deployment);
    match state
        .transition(run_id, RunEvent::Confirm, &note, RunPatch::default())
        .await
    {
        Ok(_) => state.system_log(run_id, note).await,
        Err(e) => tracing::info!(run.id = %run_id, error = %e, "not auto-approved"),
    }
}

/// The reason to fail a deployment run whose plan still has changes after the configured
/// number of cycles; None when it may go on.
pub fn cycle_cap(state: &AppState, run: &Run, no_op: bool) -> Option<String> {
    let max = state.config.deployment_max_cycles;
    (run.is_deployment_run() && !no_op && run.cycle > max).then(|| {
        format!(
            "did not converge after {max} cycles: the plan of cycle {} still has changes",
            run.cycle
        )
    })
}

/// The lease environment of a deployment run's plan: without the deployment lock it must not
/// take Terraform's state lock either (`CAIRN_STATE_READ_ONLY=1`: no lock address).
pub async fn lease_env(
    state: &AppState,
    run: &Run,
    apply: bool,
    mut env: Vec<EnvVar>,
) -> Result<Vec<EnvVar>> {
    if !run.is_deployment_run()
        || apply
        || !env
            .iter()
            .any(|v| v.name == crate::state_backend::ADDRESS_VAR)
    {
        return Ok(env);
    }
    let holder = state
        .store
        .get_deployment(&run.stack_id, &run.deployment)
        .await?
        .lock_holder;
    if holder != run.id {
        env.retain(|v| v.name != crate::state_backend::READ_ONLY_VAR);
        env.push(EnvVar {
            name: crate::state_backend::READ_ONLY_VAR.into(),
            value: "1".into(),
            secret: false,
        });
    }
    Ok(env)
}

/// The variables a deployment run hands the vendor: its configuration version's inputs for
/// its deployment (Terraform gets them as `TF_VAR_<name>`).
pub async fn lease_variables(state: &AppState, run: &Run) -> Result<HashMap<String, String>> {
    if !run.is_deployment_run() {
        return Ok(HashMap::new());
    }
    let version = state
        .store
        .get_configuration_version(&run.stack_id, run.config_version)
        .await?;
    Ok(version
        .deployment(&run.deployment)
        .map(|d| {
            d.inputs
                .iter()
                .filter_map(|(k, v)| v.as_variable().map(|v| (k.clone(), v)))
                .collect()
        })
        .unwrap_or_default())
}

/// One deployment's position for GetConvergence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentPosition {
    pub name: String,
    /// Configuration version of its last FINISHED run (0: none).
    pub config_version: i64,
    pub lock_holder: String,
    pub removed: bool,
}

/// The newest configuration version, whether every deployment still in the configuration has
/// a finished run at it, and each deployment's position.
pub async fn convergence(
    state: &AppState,
    stack_id: &str,
) -> Result<(i64, bool, Vec<DeploymentPosition>)> {
    state.store.get_stack(stack_id).await?;
    let latest = state
        .store
        .list_configuration_versions(stack_id, 0, 1)
        .await?
        .first()
        .map_or(0, |v| v.seq);
    let mut done: HashMap<String, i64> = HashMap::new();
    let mut page = Page::first(Page::MAX_SIZE);
    loop {
        let out = state.store.list_runs(stack_id, &page).await?;
        for r in out.items.iter().filter(|r| {
            r.is_deployment_run() && r.state == RunState::Finished && r.mode != RunMode::Import
        }) {
            let e = done.entry(r.deployment.clone()).or_default();
            *e = (*e).max(r.config_version);
        }
        match out.next {
            Some(t) => page.token = Some(t),
            None => break,
        }
    }
    let positions: Vec<DeploymentPosition> = state
        .store
        .list_deployments(stack_id)
        .await?
        .into_iter()
        .map(|d| DeploymentPosition {
            config_version: done.get(&d.name).copied().unwrap_or(0),
            removed: !d.is_active(),
            lock_holder: d.lock_holder,
            name: d.name,
        })
        .collect();
    let converged = latest > 0
        && positions
            .iter()
            .filter(|p| !p.removed)
            .all(|p| p.config_version == latest);
    Ok((latest, converged, positions))
}
