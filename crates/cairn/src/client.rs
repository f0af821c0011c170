//! The gRPC connection: one channel, an interceptor that adds the API key, and a version check
//! before the first real call so that a mismatched server fails with one clear line instead of
//! a confusing decode error halfway through a command.

use std::time::Duration;

use cairn_proto::v1::{
    deployment_service_client::DeploymentServiceClient, policy_service_client::PolicyServiceClient,
    run_service_client::RunServiceClient, stack_service_client::StackServiceClient,
    state_service_client::StateServiceClient, system_service_client::SystemServiceClient,
    worker_pool_service_client::WorkerPoolServiceClient, GetVersionRequest, GetVersionResponse,
};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::CliError;
use crate::profile::Connection;

/// The API version this CLI speaks; the server's `GetVersion.api_version` must match.
pub const API_VERSION: i32 = 1;

#[derive(Clone)]
pub struct Auth {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Auth>;

#[derive(Clone)]
pub struct Api {
    channel: Channel,
    auth: Auth,
    pub url: String,
    has_key: bool,
}

impl Api {
    /// Connects and checks the API version.
    pub async fn connect(conn: &Connection) -> Result<(Api, GetVersionResponse), CliError> {
        let api = Api::connect_unchecked(conn).await?;
        let version = api.version().await?;
        if version.api_version != API_VERSION {
            return Err(CliError::VersionMismatch {
                server: version.api_version,
                client: API_VERSION,
                server_version: version.version,
            });
        }
        Ok((api, version))
    }

    pub async fn connect_unchecked(conn: &Connection) -> Result<Api, CliError> {
        let url = conn.server.clone();
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| CliError::Invalid(format!("server address {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            // Built without TLS support on purpose: it keeps one small dependency tree. Say so
            // rather than fail with a transport error.
            return Err(CliError::Invalid(format!(
                "{url}: this cairn build speaks plain HTTP/2 only; reach TLS servers through a local proxy or use http://"
            )));
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| CliError::Unreachable {
                url: url.clone(),
                reason: transport_reason(&e),
            })?;
        let header = match &conn.api_key {
            Some(k) => Some(format!("Bearer {k}").parse().map_err(|_| {
                CliError::Invalid(
                    "the API key contains characters that cannot be sent in a header".into(),
                )
            })?),
            None => None,
        };
        Ok(Api {
            channel,
            auth: Auth { header },
            url,
            has_key: conn.api_key.is_some(),
        })
    }

    pub async fn version(&self) -> Result<GetVersionResponse, CliError> {
        self.system()
            .get_version(GetVersionRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.err(s))
    }

    /// Maps a status, knowing whether we sent a key at all.
    pub fn err(&self, status: tonic::Status) -> CliError {
        if status.code() == tonic::Code::Unauthenticated && !self.has_key {
            return CliError::NoApiKey {
                url: self.url.clone(),
            };
        }
        CliError::from_status(status, &self.url)
    }

    pub fn stacks(&self) -> StackServiceClient<Svc> {
        StackServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
    pub fn runs(&self) -> RunServiceClient<Svc> {
        RunServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
    pub fn policies(&self) -> PolicyServiceClient<Svc> {
        PolicyServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
    pub fn pools(&self) -> WorkerPoolServiceClient<Svc> {
        WorkerPoolServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
    pub fn deployments(&self) -> DeploymentServiceClient<Svc> {
        DeploymentServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
    pub fn states(&self) -> StateServiceClient<Svc> {
        StateServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
    pub fn system(&self) -> SystemServiceClient<Svc> {
        SystemServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
}

/// The innermost cause ("Connection refused (os error 111)") is the useful part.
fn transport_reason(e: &tonic::transport::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

/// `.await` a unary call and turn the status into a CLI error.
#[macro_export]
macro_rules! call {
    ($api:expr, $fut:expr) => {
        $fut.await
            .map(tonic::Response::into_inner)
            .map_err(|s| $api.err(s))
    };
}

/// Every item of a paged list. `fetch(token)` asks for one page (the first with an empty token)
/// and returns its items and the next page's token, empty after the last page.
pub async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, CliError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), CliError>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}
