//! Threads that evaluations run on. Deep inputs and deep rule chains recurse in the interpreter,
//! so evaluations need a stack far larger than a default thread's; starting such a thread costs
//! tens of microseconds, as much as evaluating a small policy, so finished threads wait for the
//! next evaluation instead of exiting.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Stack of an evaluator thread: large enough that a pathological policy fails on the time
/// budget rather than overflowing.
const STACK_BYTES: usize = 64 * 1024 * 1024;

/// Idle threads kept at most; more concurrent evaluations start threads that exit afterwards.
const MAX_IDLE: usize = 16;

/// An idle thread exits after waiting this long for work.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Idle {
    next_id: u64,
    /// Waiting threads, each with the sender its next job goes to; the most recent last.
    workers: Vec<(u64, mpsc::Sender<Job>)>,
}

static IDLE: Mutex<Idle> = Mutex::new(Idle {
    next_id: 0,
    workers: Vec::new(),
});

fn idle() -> MutexGuard<'static, Idle> {
    IDLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `job` on an idle evaluator thread, or on a new one when none is idle. A job that never
/// returns keeps its thread; later jobs go to other threads.
pub(crate) fn spawn(job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let mut job: Job = Box::new(job);
    loop {
        let Some((_, worker)) = idle().workers.pop() else {
            break;
        };
        match worker.send(job) {
            Ok(()) => return Ok(()),
            // That thread gave up waiting at this very moment; try the next one.
            Err(mpsc::SendError(back)) => job = back,
        }
    }
    std::thread::Builder::new()
        .name("policy-eval".to_string())
        .stack_size(STACK_BYTES)
        .spawn(move || work(job))?;
    Ok(())
}

fn work(mut job: Job) {
    loop {
        job();
        let (tx, rx) = mpsc::channel();
        let id = {
            let mut idle = idle();
            if idle.workers.len() >= MAX_IDLE {
                return;
            }
            let id = idle.next_id;
            idle.next_id += 1;
            idle.workers.push((id, tx));
            id
        };
        job = match rx.recv_timeout(IDLE_TIMEOUT) {
            Ok(next) => next,
            Err(RecvTimeoutError::Timeout) => {
                let mut idle = idle();
                if let Some(at) = idle.workers.iter().position(|(w, _)| *w == id) {
                    idle.workers.swap_remove(at);
                    return;
                }
                drop(idle);
                // A caller took this thread off the idle list just now: its job is on the way.
                match rx.recv() {
                    Ok(next) => next,
                    Err(_) => return,
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Instant;

    fn run_and_wait<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn");
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    fn wait_for_an_idle_thread() {
        let started = Instant::now();
        while idle().workers.is_empty() && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn finished_threads_run_later_jobs() {
        let mut threads = BTreeSet::new();
        for _ in 0..8 {
            let id = run_and_wait(|| std::thread::current().id()).expect("job ran");
            threads.insert(format!("{id:?}"));
            wait_for_an_idle_thread();
        }
        // Other tests of this binary may borrow an idle thread meanwhile, but not every time.
        assert!(threads.len() < 8, "{} threads for 8 jobs", threads.len());
    }

    #[test]
    fn a_panicking_job_leaves_later_jobs_running() {
        assert_eq!(run_and_wait(|| -> u32 { panic!("evaluation bug") }), None);
        assert_eq!(run_and_wait(|| 7), Some(7));
    }

    #[test]
    fn jobs_get_the_large_stack() {
        fn depth(n: u32) -> u32 {
            // About 4 KiB of stack per level: 4,000 levels need ~16 MiB, far over the 2 MiB
            // of a default thread.
            let pad = std::hint::black_box([n as u8; 4096]);
            if n == 0 {
                u32::from(pad[0])
            } else {
                depth(n - 1) + 1
            }
        }
        assert_eq!(run_and_wait(|| depth(4_000)), Some(4_000));
    }
}
