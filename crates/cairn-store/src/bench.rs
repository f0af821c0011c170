//! Store throughput: how many run transitions per second a backend sustains through
//! [`transition`], the same read–apply–compare-and-swap path the services use.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{Commit, CreatorSession, Run, RunEvent, RunPatch, RunType, Stack};

use crate::{transition, Result, Store};

/// The full legal path of a tracked run that is confirmed and applied.
pub const PATH: [RunEvent; 8] = [
    RunEvent::Dispatch,
    RunEvent::Initialize,
    RunEvent::Plan,
    RunEvent::RequireConfirmation,
    RunEvent::Confirm,
    RunEvent::PickUpApply,
    RunEvent::Apply,
    RunEvent::FinishApply,
];

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Runs to walk from QUEUED to FINISHED (each is `PATH.len()` transitions).
    pub runs: usize,
    /// Tasks walking runs at the same time.
    pub concurrency: usize,
    /// Stacks the runs are spread over.
    pub stacks: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            runs: 2_000,
            concurrency: 16,
            stacks: 20,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchFigures {
    pub runs: usize,
    pub concurrency: usize,
    pub transitions: usize,
    /// Wall time of the transition phase only (stacks and runs are created beforehand).
    pub elapsed: Duration,
    pub transitions_per_second: f64,
    /// Latency of one `transition` call.
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl fmt::Display for BenchFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} transitions ({} runs, {} tasks) in {:.3}s: {:.0}/s, p50 {:.2}ms, p99 {:.2}ms, max {:.2}ms",
            self.transitions,
            self.runs,
            self.concurrency,
            self.elapsed.as_secs_f64(),
            self.transitions_per_second,
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Creates `opts.stacks` stacks and `opts.runs` QUEUED runs with fresh ids (so the store need not
/// be empty), then walks every run along [`PATH`] with `opts.concurrency` tasks and reports the
/// throughput and latency of the walk.
pub async fn transitions_per_second(
    store: Arc<dyn Store>,
    opts: &BenchOptions,
) -> Result<BenchFigures> {
    let prefix = format!("bench-{}", cairn_core::now_nanos());
    let stacks = opts.stacks.max(1);
    for i in 0..stacks {
        store
            .create_stack(
                Stack {
                    id: format!("{prefix}-s{i}"),
                    name: format!("bench {i}"),
                    repository: "file:///bench.git".into(),
                    branch: "main".into(),
                    vendor: "terraform".into(),
                    state: "NONE".into(),
                    ..Default::default()
                },
                Vec::new(),
            )
            .await?;
    }
    let mut ids = Vec::with_capacity(opts.runs);
    for i in 0..opts.runs {
        let id = format!("{prefix}-r{i:07}");
        let mut run = Run::new(
            id.clone(),
            format!("{prefix}-s{}", i % stacks),
            RunType::Tracked,
            Commit::default(),
            "bench".into(),
            CreatorSession::default(),
            cairn_core::now_nanos(),
        );
        // Spread runs over deployments so that the dispatch-order indexes see realistic fan-out.
        run.deployment = format!("d{}", i % 3);
        store.create_run(run).await?;
        ids.push(id);
    }

    let ids = Arc::new(ids);
    let next = Arc::new(AtomicUsize::new(0));
    let concurrency = opts.concurrency.max(1);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (store, ids, next) = (store.clone(), ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                for event in PATH {
                    let t = Instant::now();
                    transition(&*store, id, event, "", RunPatch::default()).await?;
                    latencies.push(t.elapsed());
                }
            }
            Ok::<_, crate::StoreError>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(opts.runs * PATH.len());
    for t in tasks {
        let part = t
            .await
            .map_err(|e| crate::StoreError::Backend(format!("bench task: {e}")))??;
        latencies.extend(part);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[idx]
    };
    let transitions = latencies.len();
    Ok(BenchFigures {
        runs: opts.runs,
        concurrency,
        transitions,
        elapsed,
        transitions_per_second: transitions as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        p50: pct(0.50),
        p99: pct(0.99),
        max: latencies.last().copied().unwrap_or_default(),
    })
}
