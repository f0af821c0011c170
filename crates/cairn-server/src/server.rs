//! Building and serving: one port for gRPC (every service, reflection, health) and plain HTTP.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use cairn_core::Role;
use cairn_proto::agent::v1::agent_service_server::AgentServiceServer;
use cairn_proto::v1::deployment_service_server::DeploymentServiceServer;
use cairn_proto::v1::notification_service_server::NotificationServiceServer;
use cairn_proto::v1::policy_service_server::PolicyServiceServer;
use cairn_proto::v1::run_service_server::RunServiceServer;
use cairn_proto::v1::stack_service_server::StackServiceServer;
use cairn_proto::v1::state_service_server::StateServiceServer;
use cairn_proto::v1::system_service_server::SystemServiceServer;
use cairn_proto::v1::vcs_service_server::VcsServiceServer;
use cairn_proto::v1::worker_pool_service_server::WorkerPoolServiceServer;
use cairn_store::{Store, StoreError};
use tokio::net::TcpListener;

use crate::artifacts::ArtifactStore;
use crate::config::Config;
use crate::crypto::{write_secret_file, MasterKey};
use crate::error::{Result, ServerError};
use crate::notify::service::NotificationSvc;
use crate::services::agent::AgentSvc;
use crate::services::policy::PolicySvc;
use crate::services::run::RunSvc;
use crate::services::stack::StackSvc;
use crate::services::system::{create_api_key, SystemSvc};
use crate::services::worker_pool::{create_pool, WorkerPoolSvc};
use crate::state::AppState;

/// Builds a [`Server`]: opens the store, creates the data directory and first-start secrets.
pub struct ServerBuilder {
    config: Config,
    store: Option<Arc<dyn Store>>,
}

impl ServerBuilder {
    /// Uses this store instead of opening the one `config.database_url` names.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    pub async fn build(self) -> Result<Server> {
        let config = self.config;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| ServerError::io(format!("creating {}", config.data_dir.display()), e))?;
        let store = match self.store {
            Some(s) => s,
            None => open_store(&config).await?,
        };
        let master_key = MasterKey::load_or_create(&config.master_key_path())?;
        let artifacts = ArtifactStore::open(&config.artifact_dir())?;
        let state = Arc::new(AppState::new(store, config, artifacts, master_key));
        crate::vcs::lookup::IntegrationLookup::install(&state);
        bootstrap(&state).await?;
        Ok(Server { state })
    }
}

/// Opens the store `config.database_url` names: empty → SQLite at `<data_dir>/cairn.db`,
/// `sqlite:<path>` → that SQLite file, `postgres://…` → PostgreSQL (several replicas).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    let url = config.database_url.trim();
    let sqlite_path = if url.is_empty() {
        Some(config.sqlite_path())
    } else {
        url.strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .map(std::path::PathBuf::from)
    };
    if let Some(path) = sqlite_path {
        let store = cairn_store_sqlite::SqliteStore::open(&path)
            .await
            .map_err(ServerError::from)?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = cairn_store_postgres::PostgresStore::connect(url)
            .await
            .map_err(ServerError::from)?;
        return Ok(Arc::new(store));
    }
    // The URL may carry a password: name only its scheme.
    let scheme = url.split(':').next().unwrap_or_default();
    Err(ServerError::Config(format!(
        "database_url: unsupported scheme {scheme:?} (use sqlite:<path> or postgres://…)"
    )))
}

/// First start: an admin key written to `<data_dir>/admin.key` when no key exists at all, and
/// the `default` worker pool with its token in `<data_dir>/default-pool.token`.
async fn bootstrap(state: &AppState) -> Result<()> {
    let config = &state.config;
    if state.store.list_api_keys().await?.is_empty() {
        let path = config.admin_key_path();
        if path.exists() {
            return Err(ServerError::Config(format!(
                "{} exists but the database has no API key; move the file away to create a new admin key",
                path.display()
            )));
        }
        let (key, secret) = create_api_key(
            state,
            "admin",
            "Administrator",
            Vec::new(),
            false,
            Role::Admin,
        )
        .await?;
        write_secret_file(&path, format!("{secret}\n").as_bytes())?;
        tracing::info!(key.id = %key.id, path = %path.display(), "created the first admin API key");
    }
    match state.store.get_worker_pool(cairn_core::DEFAULT_POOL).await {
        Ok(_) => {}
        Err(StoreError::NotFound { .. }) => {
            let path = config.default_pool_token_path();
            if path.exists() {
                std::fs::remove_file(&path).map_err(|e| {
                    ServerError::io(format!("replacing stale {}", path.display()), e)
                })?;
            }
            let (_, token) =
                create_pool(state, cairn_core::DEFAULT_POOL, "Default pool", Vec::new()).await?;
            write_secret_file(&path, format!("{token}\n").as_bytes())?;
            tracing::info!(path = %path.display(), "created the default worker pool");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// A built server, ready to serve.
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            config,
            store: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.state.config
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
    }

    /// The shared state, for in-process callers of server-internal functions (e.g.
    /// [`crate::policies::push::handle_push`]).
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Binds `config.listen`.
    pub async fn bind(&self) -> Result<TcpListener> {
        let addr = self.state.config.listen;
        TcpListener::bind(addr)
            .await
            .map_err(|e| ServerError::io(format!("binding {addr}"), e))
    }

    /// The gRPC services (behind the auth layer), reflection, health, and `/healthz`.
    async fn router(&self) -> Result<axum::Router> {
        let state = &self.state;
        let (health, health_svc) = tonic_health::server::health_reporter();
        health.set_serving::<StackServiceServer<StackSvc>>().await;
        health.set_serving::<RunServiceServer<RunSvc>>().await;
        health.set_serving::<SystemServiceServer<SystemSvc>>().await;
        health
            .set_serving::<WorkerPoolServiceServer<WorkerPoolSvc>>()
            .await;
        health.set_serving::<AgentServiceServer<AgentSvc>>().await;
        health.set_serving::<PolicyServiceServer<PolicySvc>>().await;
        health
            .set_serving::<VcsServiceServer<crate::services::vcs::VcsSvc>>()
            .await;
        health
            .set_serving::<NotificationServiceServer<NotificationSvc>>()
            .await;
        health
            .set_serving::<StateServiceServer<crate::services::state::StateSvc>>()
            .await;
        health
            .set_serving::<DeploymentServiceServer<crate::services::deployment::DeploymentSvc>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(cairn_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServerError::Internal(format!("reflection: {e}")))?;
        let grpc = tonic::service::Routes::new(SystemServiceServer::new(SystemSvc {
            state: state.clone(),
        }))
        .add_service(StackServiceServer::new(StackSvc {
            state: state.clone(),
        }))
        .add_service(RunServiceServer::new(RunSvc {
            state: state.clone(),
        }))
        .add_service(WorkerPoolServiceServer::new(WorkerPoolSvc {
            state: state.clone(),
        }))
        .add_service(AgentServiceServer::new(AgentSvc {
            state: state.clone(),
        }))
        .add_service(PolicyServiceServer::new(PolicySvc {
            state: state.clone(),
        }))
        .add_service(VcsServiceServer::new(crate::services::vcs::VcsSvc {
            state: state.clone(),
        }))
        .add_service(NotificationServiceServer::new(NotificationSvc {
            state: state.clone(),
        }))
        .add_service(StateServiceServer::new(crate::services::state::StateSvc {
            state: state.clone(),
        }))
        .add_service(
            DeploymentServiceServer::new(crate::services::deployment::DeploymentSvc {
                state: state.clone(),
            })
            // An upload arrives in one message; the archive limit is checked with its reason.
            .max_decoding_message_size(
                usize::try_from(state.config.deployment_upload_max_bytes)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1 << 20),
            ),
        )
        .add_service(health_svc)
        .add_service(reflection)
        .prepare()
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            state.store.clone(),
            crate::auth::layer,
        ));
        let http = axum::Router::new()
            .route("/healthz", get(healthz))
            .merge(crate::state_backend::router(state.clone()))
            .merge(crate::vcs::webhook::router(state.clone()));
        Ok(http.merge(grpc))
    }

    /// Serves on `listener` until `shutdown` completes; then ends agent sessions and watches,
    /// stops the scheduler and waits for open requests.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let router = self.router().await?;
        let addr = listener.local_addr().ok();
        if let Some(addr) = addr {
            self.state.state_backend.set_bound(addr);
        }
        tracing::info!(addr = ?addr, "cairn server listening");
        let scheduler = tokio::spawn(crate::agents::scheduler(self.state.clone()));
        let triggers = tokio::spawn(crate::policies::trigger::run_loop(self.state.clone()));
        // Also processes what a previous process stored but did not process.
        let vcs_tasks = crate::vcs::spawn(self.state.clone());
        let notifications = tokio::spawn(crate::notify::run_loop(self.state.clone()));
        let upstream = tokio::spawn(crate::upstream::run_loop(self.state.clone()));
        let token = self.state.shutdown.clone();
        let stop = async move {
            shutdown.await;
            token.cancel();
        };
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await;
        self.state.shutdown.cancel();
        let _ = scheduler.await;
        let _ = triggers.await;
        for t in vcs_tasks {
            let _ = t.await;
        }
        let _ = notifications.await;
        let _ = upstream.await;
        served.map_err(|e| ServerError::io("serving", e))
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}
