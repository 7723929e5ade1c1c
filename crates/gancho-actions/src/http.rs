//! HTTP calls decided by rules: through the SSRF guard, with the action id as
//! `Idempotency-Key`, optionally signed the Standard Webhooks way.

use std::error::Error as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gancho_core::{Action, ActionRequest, Clock, HttpAction};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::HttpConfig;
use crate::channel::{Deliver, SendFuture, Settings, wrong_channel};
use crate::failure::{ActionsError, Failure};
use crate::sign::Signer;
use crate::ssrf::{Guard, Refused, resolver};

/// The most of a failure's reply body read (and kept, 300 characters of it).
const MAX_ERROR_BODY: usize = 4096;

#[derive(Debug)]
pub(crate) struct HttpSender {
    client: reqwest::Client,
    guard: Guard,
    signer: Option<Signer>,
    settings: Settings,
}

impl HttpSender {
    pub(crate) fn new(config: &HttpConfig) -> Result<HttpSender, ActionsError> {
        let guard = Guard::new(&config.allow_hosts, config.allow_private);
        let signer = config
            .signing_secret
            .as_ref()
            .map(|secret| {
                let secret = crate::config::exposed(secret, "http.signing_secret")?;
                Signer::new(secret)
                    .map_err(|err| ActionsError::Http(format!("signing_secret: {err}")))
            })
            .transpose()?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("gancho/", env!("CARGO_PKG_VERSION")))
            // Not followed: a redirect would carry the rule's headers, the signature and the
            // body to another host. A 3xx is a permanent failure naming the new location.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve names itself, past the guard.
            .no_proxy()
            .dns_resolver(resolver(config.allow_private))
            .pool_max_idle_per_host(config.per_host.max(1))
            .build()
            .map_err(|err| ActionsError::Http(format!("building the client: {err}")))?;
        Ok(HttpSender {
            client,
            guard,
            signer,
            settings: Settings {
                limits: config.limits,
                send_timeout: config.timeout.saturating_add(Duration::from_secs(5)),
                per_destination: config.per_host,
                single_destination: false,
            },
        })
    }

    /// The host (and port) of the call: calls are limited per destination.
    fn host(http: &HttpAction) -> String {
        match url::Url::parse(&http.url) {
            Ok(url) => format!(
                "{}:{}",
                url.host_str().unwrap_or_default(),
                url.port_or_known_default().unwrap_or_default()
            ),
            Err(_) => http.url.clone(),
        }
    }

    /// Makes the call; `clock` stamps its signature and, read when the reply comes, measures an
    /// HTTP-date `Retry-After`.
    async fn call(
        &self,
        request: &ActionRequest,
        http: &HttpAction,
        clock: &dyn Clock,
    ) -> Result<String, Failure> {
        let url = url::Url::parse(&http.url)
            .map_err(|err| Failure::permanent(format!("bad url {:?}: {err}", http.url)))?;
        self.guard
            .check_url(&url)
            .map_err(|reason| Failure::permanent(format!("refused by the SSRF guard: {reason}")))?;
        let method = reqwest::Method::from_bytes(http.method.as_bytes())
            .map_err(|_| Failure::permanent(format!("bad method {:?}", http.method)))?;

        let mut headers = HeaderMap::new();
        for (name, value) in &http.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Failure::permanent(format!("bad header name {name:?}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| Failure::permanent(format!("bad value of header {name}")))?;
            headers.insert(name, value);
        }
        let body: Vec<u8> = match (&http.json, &http.body) {
            (Some(json), _) => {
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                serde_json::to_vec(json)
                    .map_err(|err| Failure::permanent(format!("encoding the JSON body: {err}")))?
            }
            (None, Some(body)) => body.clone().into_bytes(),
            (None, None) => Vec::new(),
        };
        let id = HeaderValue::from_str(&request.id)
            .map_err(|_| Failure::permanent("the action id is not a header value"))?;
        // The rule's own value wins: it is just as stable.
        headers
            .entry(HeaderName::from_static("idempotency-key"))
            .or_insert(id.clone());
        if let Some(signer) = &self.signer {
            let timestamp = clock.now().timestamp();
            let signature = signer.sign(&request.id, timestamp, &body);
            headers.insert(HeaderName::from_static("webhook-id"), id);
            headers.insert(
                HeaderName::from_static("webhook-timestamp"),
                HeaderValue::from(timestamp),
            );
            headers.insert(
                HeaderName::from_static("webhook-signature"),
                HeaderValue::from_str(&signature)
                    .map_err(|_| Failure::permanent("the signature is not a header value"))?,
            );
        }

        let mut call = self.client.request(method, url).headers(headers);
        if !body.is_empty() {
            call = call.body(body);
        }
        let response = call.send().await.map_err(|err| request_failure(&err))?;
        let status = response.status();
        if status.is_success() {
            return Ok(format!("http {status}"));
        }
        let after = retry_after(response.headers(), clock.now());
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            return Err(Failure::permanent(format!(
                "http {status}: redirects are not followed (Location: {location})"
            )));
        }
        let text = read_capped(response, MAX_ERROR_BODY).await;
        Err(status_failure(status, format!("http {status}: {}", excerpt(&text))).after(after))
    }
}

impl Deliver for HttpSender {
    fn settings(&self) -> Settings {
        self.settings
    }

    fn destination(&self, action: &Action) -> String {
        match action {
            Action::Http(http) => HttpSender::host(http),
            _ => String::new(),
        }
    }

    fn send<'a>(&'a self, request: &'a ActionRequest, clock: &'a dyn Clock) -> SendFuture<'a> {
        Box::pin(async move {
            match &request.action {
                Action::Http(http) => self.call(request, http, clock).await,
                _ => Err(wrong_channel(request, "an HTTP call")),
            }
        })
    }
}

/// Whether a status is worth retrying: 408, 429 and 5xx are; other 4xx (and a redirect not
/// followed) are not.
pub(crate) fn status_failure(status: StatusCode, message: String) -> Failure {
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Failure::transient(message)
    } else {
        Failure::permanent(message)
    }
}

fn request_failure(err: &reqwest::Error) -> Failure {
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Failure::permanent(refused.to_string());
        }
        source = cause.source();
    }
    // With its causes: reqwest's own text is often just "error sending request".
    let mut message = format!("http: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if err.is_builder() {
        Failure::permanent(message)
    } else {
        Failure::transient(message)
    }
}

/// Reads at most `limit` bytes of a reply's body: a peer cannot make a failure costly by
/// streaming a large one.
pub(crate) async fn read_capped(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())])
            }
            _ => break,
        }
    }
    body
}

/// The first 300 characters of a body, for an error message.
pub(crate) fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(300).collect()
}

/// `Retry-After` as seconds or as an HTTP date (a wait from `now`).
pub(crate) fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.signed_duration_since(now);
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .to_utc();
        let retry_after = |headers: &HeaderMap| super::retry_after(headers, now);
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("120"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(120)));
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        let later = (now + chrono::Duration::seconds(90)).to_rfc2822();
        headers.insert("retry-after", HeaderValue::from_str(&later).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert_eq!(wait, Duration::from_secs(90));
        headers.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn statuses_are_transient_or_permanent() {
        let permanent = |code: u16| {
            status_failure(StatusCode::from_u16(code).unwrap(), String::new()).permanent
        };
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(!permanent(code), "{code}");
        }
        for code in [301, 400, 401, 403, 404, 410, 422] {
            assert!(permanent(code), "{code}");
        }
    }
}
