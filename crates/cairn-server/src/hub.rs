//! Per-run broadcast of state changes and log lines, for WatchRun.
//!
//! Every transition and every stored log line is published here after it is persisted, so a
//! watcher that subscribes first and then reads the store misses nothing: anything it reads is
//! either in the store snapshot or arrives on the channel (duplicates are filtered by seq and
//! version).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// One event of a run.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    Run(Arc<cairn_core::Run>),
    Log(cairn_core::LogLine),
}

/// Channels are created on first use and dropped when the run ends, so memory follows the
/// number of active runs.
#[derive(Default)]
pub struct Hub {
    channels: Mutex<HashMap<String, broadcast::Sender<WatchEvent>>>,
}

/// Buffer per run; a slow watcher that falls further behind re-reads the store.
const CAPACITY: usize = 1024;

impl Hub {
    pub fn subscribe(&self, run_id: &str) -> broadcast::Receiver<WatchEvent> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(run_id.to_string())
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe()
    }

    pub fn publish_run(&self, run: &cairn_core::Run) {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(&run.id) {
            // No receivers is not an error: nobody is watching.
            let _ = tx.send(WatchEvent::Run(Arc::new(run.clone())));
        }
        if run.state.is_terminal() {
            // Dropping the sender closes every receiver once it drained the final state.
            map.remove(&run.id);
        }
    }

    pub fn publish_logs(&self, run_id: &str, lines: &[cairn_core::LogLine]) {
        let map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(run_id) {
            for l in lines {
                let _ = tx.send(WatchEvent::Log(l.clone()));
            }
        }
    }

    /// Forgets a channel nobody listens to any more (a watcher left before the run ended).
    pub fn release(&self, run_id: &str) {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(run_id).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(run_id);
        }
    }
}
