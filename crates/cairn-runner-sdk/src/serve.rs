use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use cairn_proto::runner::v1::runner_service_server::RunnerServiceServer;
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

use crate::{Error, Handshake, RunnerService};

/// How long in-flight streams get to finish after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Sends `tracing` output to stderr (stdout belongs to the handshake). `CAIRN_LOG` or
/// `RUST_LOG` set the filter; the default is `info`.
pub fn init_logging() {
    let filter = std::env::var("CAIRN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .try_init();
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
    let server = tonic::transport::Server::builder()
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
