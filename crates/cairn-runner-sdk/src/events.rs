use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_proto::runner::v1::{
    apply_response, plan_response, ApplyResponse, PhaseEvent, PlanResponse,
};
use cairn_proto::v1::{LogLine, LogStream, Phase};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;

use crate::{Error, Redactor};

/// A message of a Plan or Apply stream: both carry log lines and phase events the same way.
pub trait RunnerEvent: Send + 'static {
    fn log(line: LogLine) -> Self;
    fn phase(phase: Phase) -> Self;
}

impl RunnerEvent for PlanResponse {
    fn log(line: LogLine) -> Self {
        Self {
            event: Some(plan_response::Event::Log(line)),
        }
    }
    fn phase(phase: Phase) -> Self {
        Self {
            event: Some(plan_response::Event::Phase(PhaseEvent {
                phase: phase as i32,
            })),
        }
    }
}

impl RunnerEvent for ApplyResponse {
    fn log(line: LogLine) -> Self {
        Self {
            event: Some(apply_response::Event::Log(line)),
        }
    }
    fn phase(phase: Phase) -> Self {
        Self {
            event: Some(apply_response::Event::Phase(PhaseEvent {
                phase: phase as i32,
            })),
        }
    }
}

/// The receiving half, ready to be returned from a tonic streaming method.
pub type EventStream<T> = ReceiverStream<Result<T, tonic::Status>>;

/// Creates a bounded event channel; the receiver goes to tonic, the sink to the plugin's task.
/// Dropping the receiver (the client went away) makes every send fail with
/// [`Error::Cancelled`] and [`EventSink::closed`] resolve.
pub fn event_stream<T: RunnerEvent>(redactor: Redactor) -> (EventSink<T>, EventStream<T>) {
    let (tx, rx) = mpsc::channel(256);
    (
        EventSink {
            tx,
            seq: Arc::new(AtomicI64::new(0)),
            phase: Arc::new(Mutex::new(Phase::Unspecified)),
            redactor,
        },
        ReceiverStream::new(rx),
    )
}

/// Sends log lines (always redacted), phase events and the final result of one stream.
/// Clones share the sequence numbers and the current phase.
#[derive(Debug)]
pub struct EventSink<T> {
    tx: mpsc::Sender<Result<T, tonic::Status>>,
    seq: Arc<AtomicI64>,
    phase: Arc<Mutex<Phase>>,
    redactor: Redactor,
}

impl<T> Clone for EventSink<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            seq: Arc::clone(&self.seq),
            phase: Arc::clone(&self.phase),
            redactor: self.redactor.clone(),
        }
    }
}

/// Runs one Plan or Apply in its own task and returns the stream tonic hands to the client.
///
/// `work` streams logs through the sink and returns the result, which `wrap` turns into the
/// final message. An error ends the stream with a (redacted) gRPC `internal` status, unless
/// the client is already gone, in which case there is nobody to tell.
pub fn spawn_stream<T, R, E, F, Fut>(
    redactor: Redactor,
    work: F,
    wrap: fn(R) -> T,
) -> EventStream<T>
where
    T: RunnerEvent,
    F: FnOnce(EventSink<T>) -> Fut,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    R: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (sink, stream) = event_stream::<T>(redactor);
    let fut = work(sink.clone());
    // The work outlives the call's server span; its spans still belong under it.
    tokio::spawn(
        async move {
            match fut.await {
                Ok(result) => {
                    let _ = sink.send(wrap(result)).await;
                }
                Err(_) if sink.is_closed() => tracing::info!("stream cancelled by the client"),
                Err(e) => {
                    let message = sink.redactor().redact(&e.to_string());
                    tracing::error!(error = %message, "runner failed");
                    let _ = sink.system(&message).await;
                    let _ = sink.fail(tonic::Status::internal(message)).await;
                }
            }
        }
        .in_current_span(),
    );
    stream
}

impl<T: RunnerEvent> EventSink<T> {
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Announces a phase; later log lines carry it.
    pub async fn phase(&self, phase: Phase) -> Result<(), Error> {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
        self.send(T::phase(phase)).await
    }

    /// Sends one log line; secret values are replaced with `***`.
    pub async fn log(&self, stream: LogStream, message: &str) -> Result<(), Error> {
        let phase = *self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let line = LogLine {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                .unwrap_or_default(),
            phase: phase as i32,
            stream: stream as i32,
            message: self.redactor.redact(message),
        };
        self.send(T::log(line)).await
    }

    /// A line written by the plugin itself rather than the vendor tool.
    pub async fn system(&self, message: &str) -> Result<(), Error> {
        self.log(LogStream::System, message).await
    }

    pub async fn send(&self, event: T) -> Result<(), Error> {
        self.tx.send(Ok(event)).await.map_err(|_| Error::Cancelled)
    }

    /// Ends the stream with a gRPC error instead of a result.
    pub async fn fail(&self, status: tonic::Status) -> Result<(), Error> {
        self.tx
            .send(Err(status))
            .await
            .map_err(|_| Error::Cancelled)
    }

    /// Resolves once the client has dropped the stream.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
