//! Sending one HTTP request with retries: network errors, 5xx and 429 are retried with
//! exponential backoff; any other answer is final.

use std::future::Future;

use super::NotifySettings;

/// The outcome of one attempt (and, for the last one, of the whole send).
#[derive(Debug, Clone, Default)]
pub(crate) struct Attempt {
    /// 1-based.
    pub number: u32,
    /// HTTP status, `None` when no response arrived.
    pub status: Option<u16>,
    /// Why the attempt failed; empty on a 2xx.
    pub error: String,
    pub body: String,
    /// No further attempt follows.
    pub last: bool,
}

impl Attempt {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

fn retryable(status: Option<u16>) -> bool {
    match status {
        None => true,
        Some(s) => s >= 500 || s == 429,
    }
}

/// Answers are read up to this size (error messages, created comment ids).
const MAX_BODY: usize = 64 * 1024;

/// Sends the request `build` makes until it succeeds, fails for good or runs out of attempts,
/// calling `on_attempt` after each one.
pub(crate) async fn send<B, F, Fut>(
    settings: &NotifySettings,
    build: B,
    mut on_attempt: F,
) -> Attempt
where
    B: Fn() -> reqwest::RequestBuilder,
    F: FnMut(Attempt) -> Fut,
    Fut: Future<Output = ()>,
{
    let max = settings.max_attempts.max(1);
    let mut delay = settings.base_delay;
    let mut number = 0;
    loop {
        number += 1;
        let mut attempt = Attempt {
            number,
            ..Attempt::default()
        };
        match build().timeout(settings.request_timeout).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                attempt.status = Some(status);
                let body = resp.bytes().await.unwrap_or_default();
                attempt.body = String::from_utf8_lossy(&body[..body.len().min(MAX_BODY)]).into();
                if !(200..300).contains(&status) {
                    attempt.error = format!(
                        "HTTP {status}: {}",
                        super::truncate_chars(attempt.body.trim(), 200)
                    );
                }
            }
            Err(e) => attempt.error = error_chain(&e),
        }
        attempt.last = attempt.succeeded() || !retryable(attempt.status) || number >= max;
        on_attempt(attempt.clone()).await;
        if attempt.last {
            return attempt;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(settings.max_delay);
    }
}

/// reqwest's top-level message hides the cause ("error sending request"): keep the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
