use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;
use std::time::Duration;

use cairn_proto::runner::v1::runner_service_server::RunnerServiceServer;
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

use crate::{Error, Handshake, RunnerService};

/// How long in-flight streams get to finish after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Where a plugin exports its spans: set by the agent for the plugins it starts (its own
/// `--otlp-endpoint`); the standard OpenTelemetry variable is the fallback.
pub const OTLP_ENDPOINT_ENV: &str = "CAIRN_OTLP_ENDPOINT";
const STANDARD_OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The telemetry guard of this process; [`serve`] drops it on the way out so that spans still
/// in the batch are exported before the plugin exits.
static TELEMETRY: Mutex<Option<cairn_telemetry::Guard>> = Mutex::new(None);

/// Sends `tracing` output to stderr (stdout belongs to the handshake) and, when
/// `CAIRN_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) is set, exports spans over OTLP with
/// `service.name` set to the executable's name (`cairn-runner-<vendor>`). `CAIRN_LOG` or
/// `RUST_LOG` set the filter; the default is `info`.
///
/// Spans of served calls continue the caller's trace (the `traceparent` metadata the agent
/// sends). [`serve`] flushes pending spans when it returns; a plugin that exits without
/// serving calls [`shutdown_telemetry`].
pub fn init_logging() {
    let filter = std::env::var("CAIRN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let mut config = cairn_telemetry::TelemetryConfig::new(service_name()).with_log_filter(filter);
    if let Some(endpoint) = [OTLP_ENDPOINT_ENV, STANDARD_OTLP_ENDPOINT_ENV]
        .iter()
        .filter_map(|key| std::env::var(key).ok())
        .find(|v| !v.trim().is_empty())
    {
        config = config.with_otlp_endpoint(endpoint);
    }
    match cairn_telemetry::init(config) {
        Ok(guard) => *TELEMETRY.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard),
        // Only the first subscriber of a process wins; a plugin whose host (a test, say)
        // installed one keeps logging through it.
        Err(cairn_telemetry::Error::AlreadyInitialized(_)) => {}
        Err(e) => eprintln!("cairn-runner-sdk: telemetry disabled: {e}"),
    }
}

/// Exports the spans still pending and stops the exporter. Idempotent; [`serve`] calls it.
pub fn shutdown_telemetry() {
    let guard = TELEMETRY.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(guard);
}

fn service_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "cairn-runner".to_owned())
}

/// Serves a runner plugin until SIGTERM, SIGINT or the end of stdin (the host went away).
///
/// Binds a unix socket in a fresh 0700 directory, serves the Runner contract and
/// `grpc.health.v1` (reported SERVING) on it, prints the handshake line, and removes the
/// directory on the way out.
pub async fn serve<S: RunnerService>(service: S) -> Result<(), Error> {
    let dir = tempfile::Builder::new().prefix("cairn-plugin-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    let socket = dir.path().join("plugin.sock");
    let listener = UnixListener::bind(&socket)?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<RunnerServiceServer<S>>().await;
    // The empty service name means "the server as a whole" to health checkers.
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    let handshake = Handshake { socket };
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{handshake}")?;
        stdout.flush()?;
    }
    tracing::info!(socket = %handshake.socket.display(), "runner plugin serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_shutdown().await;
        let _ = stop_tx.send(true);
    });

    let mut stop_signal = stop_rx.clone();
    // Every call gets a server span parented to the agent's `traceparent`.
    let server = tonic::transport::Server::builder()
        .layer(cairn_telemetry::grpc::GrpcTraceLayer)
        .add_service(health)
        .add_service(RunnerServiceServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            let _ = stop_signal.wait_for(|stop| *stop).await;
        });

    let mut stop_deadline = stop_rx;
    let result = tokio::select! {
        r = server => r.map_err(Error::from),
        () = async move {
            let _ = stop_deadline.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("in-flight streams did not finish in time, exiting anyway");
            Ok(())
        }
    };
    tracing::info!("runner plugin stopped");
    drop(dir);
    shutdown_telemetry();
    result
}

async fn wait_for_shutdown() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        // The host keeps our stdin open for as long as it wants us; EOF means it is gone.
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        () = stdin_closed => tracing::info!("stdin closed"),
    }
}
