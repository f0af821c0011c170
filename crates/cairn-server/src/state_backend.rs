//! Managed Terraform/OpenTofu state: a backend compatible with Terraform's `http` backend,
//! served on the control plane's HTTP port next to gRPC.
//!
//! `/state/{stack_id}/{deployment}` answers what Terraform's http backend client sends:
//! - `GET`: the current state (200 with the document) or 204 when there is none yet, which
//!   Terraform reads as an empty state.
//! - `POST` (or `PUT`): a new state version. The body must be a state document with a numeric
//!   `serial` and a `lineage`; a lower (or equal but different) serial or another lineage than
//!   the current version's is refused with 409 and the current version stays. While the
//!   deployment is locked the write must carry `?ID=<lock id>` of that lock (Terraform adds it).
//!   Bodies above `Config::state_max_bytes` get 413, malformed ones 400.
//! - `LOCK` / `UNLOCK` with Terraform's lock info JSON: a lock held by another gets 423 with the
//!   holder's lock info (which Terraform prints); unlocking with another ID gets 409.
//!
//! Callers authenticate with HTTP basic auth: username `run:<run id>` and the password handed
//! out in one of that run's leases. The password is the lease id sealed (AES-GCM) by the master
//! key with the run id as associated data, so any replica sharing the key can check it and
//! nothing is stored. It is short-lived: accepted only while the run holds a live lease (one
//! whose worker heartbeats; a stopped run's Terraform may still be writing its last state), so
//! it is dead while a run waits for confirmation and after the run's last lease. It does come
//! back to life for the apply lease of the same run, because Terraform applies a saved plan
//! with the backend settings recorded in the plan, i.e. with the planning lease's password. A
//! run may only reach its own stack and deployment; proposed runs may only read.
//!
//! A lock records its holder: the run, the worker of that run's lease, and Terraform's own
//! `Who`; a refused lock request gets the holder's lock info (Terraform's document, Cairn's run
//! and worker added to its `Info`) as the 423/409 body. Terraform 1.0.3 prints only the holder's
//! `ID` from it; `StateService.GetStateLock` shows the rest.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use cairn_core::{EnvVar, Lease, Run, RunType, Stack};
use cairn_store::{LockAttempt, StateLock, StateVersion, StoreError, UnlockOutcome};
use serde_json::Value;
use tracing::Instrument;

use crate::error::{Result, ServerError};
use crate::state::AppState;

/// Default largest state document accepted (32 MiB).
pub const DEFAULT_MAX_STATE_BYTES: u64 = 32 << 20;

/// Lease environment handed to Terraform/OpenTofu runs.
pub const ADDRESS_VAR: &str = "CAIRN_STATE_ADDRESS";
pub const USERNAME_VAR: &str = "CAIRN_STATE_USERNAME";
pub const PASSWORD_VAR: &str = "CAIRN_STATE_PASSWORD";
/// `1` for runs that may read the state but neither lock nor write it (proposed runs).
pub const READ_ONLY_VAR: &str = "CAIRN_STATE_READ_ONLY";
/// A stack variable: `false` (or `0`, `no`, `off`) leaves the stack's own backend in charge.
pub const MANAGED_VAR: &str = "CAIRN_MANAGED_STATE";

/// What the backend needs to know about the server it runs in.
#[derive(Debug, Default)]
pub struct StateBackend {
    /// The address actually bound (the configured one may have port 0).
    bound: OnceLock<SocketAddr>,
}

impl StateBackend {
    pub fn set_bound(&self, addr: SocketAddr) {
        let _ = self.bound.set(addr);
    }
}

/// The routes, to merge into the server's HTTP router (they do their own authentication).
pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/state/{stack_id}/{deployment}", axum::routing::any(handle))
        .with_state(state)
}

/// The URL agents reach this server at: `public_url` when configured, else the bound address
/// (an unspecified IP becomes loopback, right for agents on the same host).
pub fn base_url(state: &AppState) -> String {
    if let Some(url) = state.config.public_url.as_deref().filter(|u| !u.is_empty()) {
        return url.trim_end_matches('/').to_string();
    }
    let mut addr = state
        .state_backend
        .bound
        .get()
        .copied()
        .unwrap_or(state.config.listen);
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        });
    }
    format!("http://{addr}")
}

/// The state endpoint of one deployment.
pub fn address(state: &AppState, stack_id: &str, deployment: &str) -> String {
    format!(
        "{}/state/{}/{}",
        base_url(state),
        encode_segment(stack_id),
        encode_segment(deployment)
    )
}

fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn password_aad(run_id: &str) -> Vec<u8> {
    format!("cairn-state-password\0{run_id}").into_bytes()
}

/// A new password for `run_id`'s state access during lease `lease_id`.
pub fn issue_password(state: &AppState, run_id: &str, lease_id: &str) -> Result<String> {
    let sealed = state
        .master_key
        .wrap(lease_id.as_bytes(), &password_aad(run_id))?;
    Ok(hex::encode(sealed))
}

/// The lease a password was issued for, if it was issued for `run_id` with this master key.
fn password_lease(state: &AppState, run_id: &str, password: &str) -> Option<String> {
    let sealed = hex::decode(password).ok()?;
    let lease_id = state
        .master_key
        .unwrap(&sealed, &password_aad(run_id))
        .ok()?;
    String::from_utf8(lease_id.to_vec()).ok()
}

fn is_tf_vendor(vendor: &str) -> bool {
    matches!(vendor, "terraform" | "opentofu")
}

fn managed(env: &[EnvVar]) -> bool {
    !env.iter().any(|v| {
        v.name == MANAGED_VAR
            && matches!(
                v.value.trim().to_ascii_lowercase().as_str(),
                "false" | "0" | "no" | "off"
            )
    })
}

/// `env` plus the state backend variables for Terraform/OpenTofu stacks (the password marked
/// secret, so that it is masked in logs). Stacks opting out with `CAIRN_MANAGED_STATE=false`
/// and other vendors get `env` unchanged.
pub fn with_lease_env(
    state: &AppState,
    run: &Run,
    stack: &Stack,
    lease_id: &str,
    mut env: Vec<EnvVar>,
) -> Result<Vec<EnvVar>> {
    if !is_tf_vendor(&stack.vendor) || !managed(&env) {
        return Ok(env);
    }
    let reserved = [ADDRESS_VAR, USERNAME_VAR, PASSWORD_VAR, READ_ONLY_VAR];
    env.retain(|v| !reserved.contains(&v.name.as_str()));
    let var = |name: &str, value: String, secret: bool| EnvVar {
        name: name.into(),
        value,
        secret,
    };
    env.push(var(
        ADDRESS_VAR,
        address(state, &stack.id, &run.deployment),
        false,
    ));
    env.push(var(USERNAME_VAR, format!("run:{}", run.id), false));
    env.push(var(
        PASSWORD_VAR,
        issue_password(state, &run.id, lease_id)?,
        true,
    ));
    if run.run_type == RunType::Proposed {
        env.push(var(READ_ONLY_VAR, "1".into(), false));
    }
    Ok(env)
}

/// Frees the state locks a run still holds. Terraform holds a lock only while it runs, so once
/// the run's lease is over (ended, expired, or the run failed) any lock it left is stale.
pub async fn release_run_locks(state: &AppState, run_id: &str) {
    match state.store.force_release_state_locks(run_id).await {
        Ok(freed) => {
            for lock in freed {
                tracing::warn!(run.id = %run_id, stack.id = %lock.stack_id,
                    deployment = %lock.deployment, lock.id = %lock.id,
                    "released a state lock left by the run");
                state
                    .system_log(
                        run_id,
                        format!(
                            "released state lock {} of {}/{} left behind",
                            lock.id, lock.stack_id, lock.deployment
                        ),
                    )
                    .await;
            }
        }
        Err(e) => tracing::warn!(run.id = %run_id, error = %e, "state locks not released"),
    }
}

/// The `outputs` of a state document as `{name: value}`, sensitive values replaced by `***`.
pub fn redacted_outputs(doc: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(outputs) = doc.get("outputs").and_then(Value::as_object) {
        for (name, output) in outputs {
            let sensitive = output.get("sensitive").and_then(Value::as_bool) == Some(true);
            let value = if sensitive {
                Value::String("***".into())
            } else {
                output.get("value").cloned().unwrap_or(Value::Null)
            };
            out.insert(name.clone(), value);
        }
    }
    Value::Object(out)
}

/// A state document checked for what Cairn relies on: a JSON object in Terraform's state format
/// (`version` 3 or 4), a non-negative integer `serial`, a non-empty `lineage`, `outputs` an
/// object of `{value, type, sensitive}` and `resources` an array when present. Returns the
/// document, serial and lineage, or why it is not a state.
pub fn parse_state(body: &[u8]) -> std::result::Result<(Value, i64, String), String> {
    let doc: Value = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Value::Object(m),
        Ok(_) => return Err("the state must be a JSON object".into()),
        Err(e) => return Err(format!("the state is not JSON: {e}")),
    };
    match doc.get("version").and_then(Value::as_i64) {
        Some(3 | 4) => {}
        Some(v) => return Err(format!("the state's `version` {v} is not 3 or 4")),
        None => return Err("the state needs an integer `version` (4)".into()),
    }
    let serial = doc
        .get("serial")
        .and_then(Value::as_i64)
        .filter(|s| *s >= 0)
        .ok_or("the state needs a non-negative integer `serial`")?;
    let lineage = doc
        .get("lineage")
        .and_then(Value::as_str)
        .filter(|l| !l.is_empty())
        .ok_or("the state needs a `lineage`")?
        .to_string();
    match doc.get("outputs") {
        None | Some(Value::Null) => {}
        Some(Value::Object(outputs)) => {
            if let Some((name, _)) = outputs.iter().find(|(_, o)| !o.is_object()) {
                return Err(format!("the state's output {name:?} is not an object"));
            }
        }
        Some(_) => return Err("the state's `outputs` must be an object".into()),
    }
    if !matches!(
        doc.get("resources"),
        None | Some(Value::Null | Value::Array(_))
    ) {
        return Err("the state's `resources` must be an array".into());
    }
    Ok((doc, serial, lineage))
}

/// A request refused before it reaches the state (boxed: responses are large).
type Refused = Box<Response>;

/// A plain-text answer; 401s name the auth scheme.
fn plain(status: StatusCode, message: impl Into<String>) -> Response {
    let mut resp = (status, format!("{}\n", message.into())).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"cairn-state\""),
        );
    }
    resp
}

fn json_body(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut resp = (status, body.into()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "state backend failed");
    plain(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error; see the server log",
    )
}

/// `run:<id>` and the password from a basic `Authorization` header. The run id contains no
/// colon, so the password is everything after the second one.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let rest = text.strip_prefix("run:")?;
    let (run_id, password) = rest.split_once(':')?;
    (!run_id.is_empty()).then(|| (run_id.to_string(), password.to_string()))
}

/// The authenticated run and the lease its password came with, or the response refusing the
/// request.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    stack_id: &str,
    deployment: &str,
) -> std::result::Result<(Run, Lease), Refused> {
    let unauthorized = || {
        Box::new(plain(
            StatusCode::UNAUTHORIZED,
            "state access needs the run's credentials",
        ))
    };
    let (run_id, password) = basic_credentials(headers).ok_or_else(unauthorized)?;
    let sealed_lease = password_lease(state, &run_id, &password).ok_or_else(unauthorized)?;
    let timeout = i64::try_from(state.config.lease_timeout.as_nanos()).unwrap_or(i64::MAX);
    let now = cairn_core::now_nanos();
    // An expired lease not yet swept by the scheduler is already over.
    let mut live: Vec<Lease> = match state.store.list_leases().await {
        Ok(leases) => leases
            .into_iter()
            .filter(|l| l.run_id == run_id && !l.is_expired(now, timeout))
            .collect(),
        Err(e) => return Err(Box::new(internal(e))),
    };
    // The lease the password came with if it is still on, else the run's current one.
    live.sort_by_key(|l| l.id != sealed_lease);
    let Some(lease) = live.into_iter().next() else {
        return Err(Box::new(plain(
            StatusCode::UNAUTHORIZED,
            "the run's state credentials expired: the run holds no lease",
        )));
    };
    let run = match state.store.get_run(&run_id).await {
        Ok(run) => run,
        Err(StoreError::NotFound { .. }) => return Err(unauthorized()),
        Err(e) => return Err(Box::new(internal(e))),
    };
    if run.stack_id != stack_id || run.deployment != deployment {
        return Err(Box::new(plain(
            StatusCode::FORBIDDEN,
            "a run may only use its own stack's deployment state",
        )));
    }
    Ok((run, lease))
}

async fn handle(
    State(state): State<Arc<AppState>>,
    Path((stack_id, deployment)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let span = tracing::info_span!("state_backend", http.method = %req.method(), stack.id = %stack_id, deployment = %deployment);
    serve_request(&state, &stack_id, &deployment, query.get("ID"), req)
        .instrument(span)
        .await
}

async fn serve_request(
    state: &AppState,
    stack_id: &str,
    deployment: &str,
    lock_id: Option<&String>,
    req: Request,
) -> Response {
    let method = req.method().clone();
    let (run, lease) = match authenticate(state, req.headers(), stack_id, deployment).await {
        Ok(found) => found,
        Err(resp) => return *resp,
    };
    let writes = method != Method::GET && method != Method::HEAD;
    if writes && run.run_type == RunType::Proposed {
        return plain(
            StatusCode::FORBIDDEN,
            "proposed runs may read the state but not lock or change it",
        );
    }
    match method.as_str() {
        "GET" | "HEAD" => get_state(state, stack_id, deployment).await,
        "POST" | "PUT" => {
            let body = match read_body(state, req).await {
                Ok(b) => b,
                Err(resp) => return *resp,
            };
            put_state(state, &run, stack_id, deployment, lock_id, body).await
        }
        "LOCK" => {
            let body = match read_body(state, req).await {
                Ok(b) => b,
                Err(resp) => return *resp,
            };
            lock(state, &run, &lease, stack_id, deployment, &body).await
        }
        "UNLOCK" => {
            let body = match read_body(state, req).await {
                Ok(b) => b,
                Err(resp) => return *resp,
            };
            unlock(state, stack_id, deployment, &body).await
        }
        _ => {
            let mut resp = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET, POST, LOCK or UNLOCK",
            );
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, POST, PUT, LOCK, UNLOCK"),
            );
            resp
        }
    }
}

async fn read_body(state: &AppState, req: Request) -> std::result::Result<Vec<u8>, Refused> {
    let limit = state.config.state_max_bytes;
    let too_large = || {
        plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body exceeds the state size limit of {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Box::new(too_large()));
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(b) => Ok(b.to_vec()),
        // to_bytes fails this way only when the limit is crossed (or the client went away).
        Err(_) => Err(Box::new(too_large())),
    }
}

async fn get_state(state: &AppState, stack_id: &str, deployment: &str) -> Response {
    match state
        .store
        .current_state_version(stack_id, deployment)
        .await
    {
        Ok(Some(v)) => json_body(StatusCode::OK, v.body),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal(e),
    }
}

fn lock_conflict(status: StatusCode, lock: &StateLock) -> Response {
    json_body(status, holder_info(lock))
}

/// Terraform's lock info of a held lock with Cairn's holder (run and worker) added to its
/// `Info`, so that a refused Terraform names the run to look at, not only the host it ran on.
pub fn holder_info(lock: &StateLock) -> String {
    let Ok(Value::Object(mut doc)) = serde_json::from_str::<Value>(&lock.info_json) else {
        return lock.info_json.clone();
    };
    let mut holder = format!("held by Cairn run {}", lock.holder_run_id);
    if !lock.holder_worker_id.is_empty() {
        holder.push_str(&format!(" on worker {}", lock.holder_worker_id));
    }
    let info = match doc.get("Info").and_then(Value::as_str) {
        Some(existing) if !existing.is_empty() => format!("{existing} ({holder})"),
        _ => holder,
    };
    doc.insert("Info".into(), Value::String(info));
    Value::Object(doc).to_string()
}

async fn put_state(
    state: &AppState,
    run: &Run,
    stack_id: &str,
    deployment: &str,
    lock_id: Option<&String>,
    body: Vec<u8>,
) -> Response {
    let (doc, serial, lineage) = match parse_state(&body) {
        Ok(parsed) => parsed,
        Err(reason) => return plain(StatusCode::BAD_REQUEST, reason),
    };
    let lineage = lineage.as_str();
    match state.store.get_state_lock(stack_id, deployment).await {
        Ok(Some(held)) => {
            if lock_id != Some(&held.id) {
                return lock_conflict(StatusCode::CONFLICT, &held);
            }
        }
        Ok(None) => {
            if let Some(id) = lock_id {
                return plain(
                    StatusCode::CONFLICT,
                    format!("lock {id} is not held (it was released)"),
                );
            }
        }
        Err(e) => return internal(e),
    }
    let current = match state
        .store
        .current_state_version(stack_id, deployment)
        .await
    {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    if let Some(cur) = &current {
        if cur.serial == serial && cur.body == body {
            // A retried upload of the version that is already current.
            return StatusCode::OK.into_response();
        }
        if cur.lineage != lineage {
            return plain(
                StatusCode::CONFLICT,
                format!(
                    "lineage {lineage:?} does not match the current state's {:?}",
                    cur.lineage
                ),
            );
        }
        if serial <= cur.serial {
            return plain(
                StatusCode::CONFLICT,
                format!(
                    "serial {serial} is not above the current state's {}",
                    cur.serial
                ),
            );
        }
    }
    let version = StateVersion {
        stack_id: stack_id.to_string(),
        deployment: deployment.to_string(),
        serial,
        lineage: lineage.to_string(),
        outputs_json: redacted_outputs(&doc).to_string(),
        body,
        created_at: cairn_core::now_nanos(),
        created_by_run: run.id.clone(),
        note: String::new(),
    };
    match state.store.add_state_version(version).await {
        Ok(v) => {
            tracing::info!(run.id = %run.id, serial = v.serial, "state version stored");
            crate::upstream::outputs_written(state, current.as_ref(), &v).await;
            StatusCode::OK.into_response()
        }
        Err(e @ StoreError::Conflict { .. }) => plain(StatusCode::CONFLICT, e.to_string()),
        Err(StoreError::NotFound { .. }) => plain(StatusCode::NOT_FOUND, "no such stack"),
        Err(e) => internal(e),
    }
}

/// Terraform's lock info document; only its `ID` matters here, the rest is kept verbatim.
fn lock_info_id(body: &[u8]) -> std::result::Result<String, Refused> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| {
        plain(
            StatusCode::BAD_REQUEST,
            format!("the lock info is not JSON: {e}"),
        )
    })?;
    doc.get("ID")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            Box::new(plain(
                StatusCode::BAD_REQUEST,
                "the lock info needs an `ID`",
            ))
        })
}

async fn lock(
    state: &AppState,
    run: &Run,
    lease: &Lease,
    stack_id: &str,
    deployment: &str,
    body: &[u8],
) -> Response {
    let id = match lock_info_id(body) {
        Ok(id) => id,
        Err(resp) => return *resp,
    };
    let lock = StateLock {
        stack_id: stack_id.to_string(),
        deployment: deployment.to_string(),
        id,
        holder_run_id: run.id.clone(),
        holder_worker_id: lease.worker_id.clone(),
        info_json: String::from_utf8_lossy(body).into_owned(),
        created_at: cairn_core::now_nanos(),
    };
    match state.store.acquire_state_lock(lock).await {
        Ok(LockAttempt::Acquired(l)) => json_body(StatusCode::OK, l.info_json),
        Ok(LockAttempt::Held(holder)) => lock_conflict(StatusCode::LOCKED, &holder),
        Err(StoreError::NotFound { .. }) => plain(StatusCode::NOT_FOUND, "no such stack"),
        Err(e) => internal(e),
    }
}

async fn unlock(state: &AppState, stack_id: &str, deployment: &str, body: &[u8]) -> Response {
    let id = match lock_info_id(body) {
        Ok(id) => id,
        Err(resp) => return *resp,
    };
    match state
        .store
        .release_state_lock(stack_id, deployment, &id)
        .await
    {
        // Already free (e.g. force-released): what the caller wanted holds.
        Ok(UnlockOutcome::Released(_) | UnlockOutcome::NotLocked) => StatusCode::OK.into_response(),
        Ok(UnlockOutcome::HeldByOther(holder)) => lock_conflict(StatusCode::CONFLICT, &holder),
        Err(e) => internal(e),
    }
}

/// A deployment's current outputs (`{name: value}`, sensitive values redacted); `None` before
/// its first state version.
pub async fn current_outputs(
    state: &AppState,
    stack_id: &str,
    deployment: &str,
) -> Result<Option<Value>> {
    let Some(v) = state
        .store
        .current_state_version(stack_id, deployment)
        .await?
    else {
        return Ok(None);
    };
    serde_json::from_str(&v.outputs_json)
        .map(Some)
        .map_err(|e| ServerError::Internal(format!("stored outputs are not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_split_after_the_run_id() {
        let mut h = HeaderMap::new();
        let enc = base64::engine::general_purpose::STANDARD.encode("run:run_123:ab:cd");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {enc}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&h),
            Some(("run_123".to_string(), "ab:cd".to_string()))
        );
        let enc = base64::engine::general_purpose::STANDARD.encode("admin:pw");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {enc}").parse().unwrap(),
        );
        assert_eq!(basic_credentials(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_credentials(&h), None);
    }

    #[test]
    fn outputs_are_extracted_with_sensitive_values_redacted() {
        let doc: Value = serde_json::json!({
            "outputs": {
                "name": {"value": "web", "type": "string"},
                "token": {"value": "hunter2", "type": "string", "sensitive": true},
                "ids": {"value": [1, 2], "type": ["list", "number"]}
            }
        });
        assert_eq!(
            redacted_outputs(&doc),
            serde_json::json!({"name": "web", "token": "***", "ids": [1, 2]})
        );
        assert_eq!(
            redacted_outputs(&serde_json::json!({})),
            serde_json::json!({})
        );
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("net-prod_1.x"), "net-prod_1.x");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn opting_out_of_managed_state() {
        let v = |value: &str| EnvVar {
            name: MANAGED_VAR.into(),
            value: value.into(),
            secret: false,
        };
        assert!(managed(&[]));
        assert!(managed(&[v("true")]));
        assert!(!managed(&[v("false")]));
        assert!(!managed(&[v(" OFF ")]));
    }
}
