//! Outgoing notifications of run state changes: commit statuses and pull-request comments on
//! GitHub ([`github`]) and configured webhooks ([`webhook`]).
//!
//! [`AppState`]'s single publishing point hands every persisted run change to [`Notifier::run_changed`],
//! which only queues it (a bounded channel, dropped with a warning when full), so sending never
//! delays run processing. One background task ([`run_loop`]) keeps changes that moved the run
//! to a new state and hands the work to one sequential worker per target (a stack's GitHub
//! statuses, a webhook's deliveries): retries of one target never reorder its messages and
//! never hold up another target.

pub mod github;
mod retry;
pub mod service;
pub mod webhook;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::{Delta, Run, Stack};
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::state::AppState;

pub use github::GithubApi;

/// Retry and log limits of outgoing requests.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// Attempts per message, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Per attempt.
    pub request_timeout: Duration,
    /// Deliveries kept per webhook.
    pub deliveries_kept: u32,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            max_attempts: 6,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            request_timeout: Duration::from_secs(15),
            deliveries_kept: 100,
        }
    }
}

/// Where a stack's commit statuses go and which pull request a run belongs to. Implemented by
/// the VCS integration layer (which owns integration secrets); without one, only webhooks fire.
#[async_trait]
pub trait VcsLookup: Send + Sync + 'static {
    /// The GitHub API to report `stack`'s runs to, or `None` (no GitHub integration).
    async fn github(&self, stack: &Stack) -> Option<GithubApi>;
    /// The pull request number a run was created for, if any.
    async fn pull_request(&self, run: &Run) -> Option<u64>;
}

/// Changes waiting for the background task; beyond this, new ones are dropped (and logged).
const QUEUE: usize = 10_000;
/// Finished runs remembered so that late rewrites of a finished run notify nobody twice.
const FINISHED_REMEMBERED: usize = 4096;

pub struct Notifier {
    tx: mpsc::Sender<Arc<Run>>,
    rx: Mutex<Option<mpsc::Receiver<Arc<Run>>>>,
    settings: RwLock<NotifySettings>,
    vcs: RwLock<Option<Arc<dyn VcsLookup>>>,
    client: reqwest::Client,
}

impl Default for Notifier {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Notifier {
            tx,
            rx: Mutex::new(Some(rx)),
            settings: RwLock::new(NotifySettings::default()),
            vcs: RwLock::new(None),
            client: reqwest::Client::builder()
                .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
        }
    }
}

impl Notifier {
    /// Queues a persisted run change; never waits.
    pub fn run_changed(&self, run: &Run) {
        if let Err(e) = self.tx.try_send(Arc::new(run.clone())) {
            tracing::warn!(run.id = %run.id, error = %e, "notification queue full or closed; change not notified");
        }
    }

    pub fn settings(&self) -> NotifySettings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_settings(&self, settings: NotifySettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    pub fn set_vcs_lookup(&self, lookup: Arc<dyn VcsLookup>) {
        *self.vcs.write().unwrap_or_else(|e| e.into_inner()) = Some(lookup);
    }

    fn vcs(&self) -> Option<Arc<dyn VcsLookup>> {
        self.vcs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// `+2 ~1 -0`: resources added, changed, deleted.
pub fn delta_summary(d: &Delta) -> String {
    format!(
        "+{} ~{} -{}",
        d.added_resources, d.changed_resources, d.deleted_resources
    )
}

/// `PENDING_REVIEW` → `Pending review`.
pub fn state_label(run: &Run) -> String {
    let s = run.state.as_str().replace('_', " ").to_lowercase();
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    }
}

/// Cuts `s` to at most `max` characters, marking the cut.
pub fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A run page for links, when the server knows its public URL.
pub(crate) fn run_url(state: &AppState, run: &Run) -> Option<String> {
    state.config.public_url.as_ref().map(|base| {
        format!(
            "{}/stacks/{}/runs/{}",
            base.trim_end_matches('/'),
            run.stack_id,
            run.id
        )
    })
}

/// Remembers how far each run's notifications got, so that only state changes notify.
#[derive(Default)]
struct Seen {
    history_len: HashMap<String, usize>,
    finished: HashSet<String>,
    finished_order: VecDeque<String>,
}

impl Seen {
    /// True when `run` reached a state not notified yet.
    fn is_new_state(&mut self, run: &Run) -> bool {
        if self.finished.contains(&run.id) {
            return false;
        }
        let len = run.states_history.len();
        let before = self.history_len.get(&run.id).copied().unwrap_or(0);
        if len <= before {
            return false;
        }
        if run.state.is_terminal() {
            self.history_len.remove(&run.id);
            self.finished.insert(run.id.clone());
            self.finished_order.push_back(run.id.clone());
            if self.finished_order.len() > FINISHED_REMEMBERED {
                if let Some(old) = self.finished_order.pop_front() {
                    self.finished.remove(&old);
                }
            }
        } else {
            self.history_len.insert(run.id.clone(), len);
        }
        true
    }
}

type Job = BoxFuture<'static, ()>;

/// One sequential worker per target key, created on first use.
#[derive(Default)]
struct Workers(HashMap<String, mpsc::UnboundedSender<Job>>);

impl Workers {
    fn submit(&mut self, key: String, job: Job) {
        let job = match self.0.get(&key) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                job.await;
            }
        });
        let _ = tx.send(job);
        self.0.insert(key, tx);
    }
}

/// The background task: runs until shutdown, turning state changes into GitHub and webhook
/// work. Only one may run per server (the queue has one receiver).
pub async fn run_loop(state: Arc<AppState>) {
    let rx = state
        .notifier
        .rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(mut rx) = rx else {
        tracing::warn!("notification loop already running");
        return;
    };
    let mut seen = Seen::default();
    let mut workers = Workers::default();
    loop {
        let run = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            run = rx.recv() => match run {
                Some(r) => r,
                None => return,
            },
        };
        if !seen.is_new_state(&run) {
            continue;
        }
        dispatch(&state, &mut workers, run).await;
    }
}

async fn dispatch(state: &Arc<AppState>, workers: &mut Workers, run: Arc<Run>) {
    match state.store.list_webhooks().await {
        Ok(hooks) => {
            for hook in hooks
                .into_iter()
                .filter(|h| h.stack_id.is_empty() || h.stack_id == run.stack_id)
            {
                let key = format!("webhook:{}", hook.id);
                let job = webhook::deliver(state.clone(), hook, run.clone());
                workers.submit(key, Box::pin(job));
            }
        }
        Err(e) => {
            tracing::warn!(run.id = %run.id, error = %e, "webhooks not listed; run change not delivered")
        }
    }
    let Some(vcs) = state.notifier.vcs() else {
        return;
    };
    let key = format!("github:{}", run.stack_id);
    workers.submit(key, Box::pin(github::report(state.clone(), vcs, run)));
}
