//! SMS through a provider: Twilio's Messages API, Vonage's SMS API, or a local file.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gancho_core::{Action, ActionRequest, Clock, SecretString, SmsAction};
use serde::Deserialize;

use crate::channel::{Deliver, SendFuture, Settings, wrong_channel};
use crate::config::exposed;
use crate::failure::{ActionsError, Failure};
use crate::http::{excerpt, read_capped, retry_after, status_failure};
use crate::{SmsConfig, SmsProvider};

/// The most of a provider's reply read.
const MAX_REPLY: usize = 64 * 1024;

#[derive(Debug)]
pub(crate) struct SmsSender {
    provider: Provider,
    destination: String,
    settings: Settings,
}

#[derive(Debug)]
enum Provider {
    Twilio {
        client: reqwest::Client,
        url: String,
        account_sid: String,
        auth_token: SecretString,
        from: Option<String>,
        messaging_service_sid: Option<String>,
    },
    Vonage {
        client: reqwest::Client,
        url: String,
        api_key: String,
        api_secret: SecretString,
        from: String,
    },
    /// Appends are serialized so lines never interleave.
    File(Mutex<PathBuf>),
}

impl SmsSender {
    pub(crate) fn new(
        config: &SmsConfig,
        data_dir: &std::path::Path,
    ) -> Result<SmsSender, ActionsError> {
        let client = || {
            reqwest::Client::builder()
                .timeout(config.timeout)
                .user_agent(concat!("gancho/", env!("CARGO_PKG_VERSION")))
                .no_proxy()
                .build()
                .map_err(|err| ActionsError::Sms(format!("building the HTTP client: {err}")))
        };
        let base = |base_url: &str| {
            url::Url::parse(base_url)
                .map_err(|err| ActionsError::Sms(format!("base_url {base_url:?}: {err}")))
                .map(|u| u.as_str().trim_end_matches('/').to_owned())
        };
        let (provider, destination) = match &config.provider {
            SmsProvider::Twilio {
                base_url,
                account_sid,
                auth_token,
                from,
                messaging_service_sid,
            } => {
                if from.is_none() == messaging_service_sid.is_none() {
                    return Err(ActionsError::Sms(
                        "twilio: give exactly one of from, messaging_service_sid".to_owned(),
                    ));
                }
                let base = base(base_url)?;
                (
                    Provider::Twilio {
                        client: client()?,
                        url: format!("{base}/2010-04-01/Accounts/{account_sid}/Messages.json"),
                        account_sid: account_sid.clone(),
                        auth_token: exposed(auth_token, "sms.auth_token")?.into(),
                        from: from.clone(),
                        messaging_service_sid: messaging_service_sid.clone(),
                    },
                    format!("twilio {base}"),
                )
            }
            SmsProvider::Vonage {
                base_url,
                api_key,
                api_secret,
                from,
            } => {
                let base = base(base_url)?;
                (
                    Provider::Vonage {
                        client: client()?,
                        url: format!("{base}/sms/json"),
                        api_key: api_key.clone(),
                        api_secret: exposed(api_secret, "sms.api_secret")?.into(),
                        from: from.clone(),
                    },
                    format!("vonage {base}"),
                )
            }
            SmsProvider::File => {
                std::fs::create_dir_all(data_dir).map_err(|err| {
                    ActionsError::Sms(format!("creating {}: {err}", data_dir.display()))
                })?;
                (
                    Provider::File(Mutex::new(data_dir.join("sms.jsonl"))),
                    "file".to_owned(),
                )
            }
        };
        Ok(SmsSender {
            provider,
            destination,
            settings: Settings {
                limits: config.limits,
                send_timeout: config.timeout.saturating_add(Duration::from_secs(5)),
                per_destination: config.limits.concurrency,
                single_destination: true,
            },
        })
    }

    /// Sends the message; `clock` stamps file lines and, read when the reply comes, measures an
    /// HTTP-date `Retry-After`.
    async fn send_sms(
        &self,
        request: &ActionRequest,
        sms: &SmsAction,
        clock: &dyn Clock,
    ) -> Result<String, Failure> {
        match &self.provider {
            Provider::Twilio {
                client,
                url,
                account_sid,
                auth_token,
                from,
                messaging_service_sid,
            } => {
                let mut form = vec![("To", sms.to.as_str()), ("Body", sms.text.as_str())];
                if let Some(from) = from {
                    form.push(("From", from));
                }
                if let Some(service) = messaging_service_sid {
                    form.push(("MessagingServiceSid", service));
                }
                let response = client
                    .post(url)
                    .basic_auth(account_sid, Some(auth_token.expose()))
                    .header("Idempotency-Key", &request.id)
                    .form(&form)
                    .send()
                    .await
                    .map_err(|err| Failure::transient(format!("twilio: {err}")))?;
                twilio_outcome(response, clock.now()).await
            }
            Provider::Vonage {
                client,
                url,
                api_key,
                api_secret,
                from,
            } => {
                let to = sms.to.trim_start_matches('+');
                let mut form = vec![
                    ("api_key", api_key.as_str()),
                    ("api_secret", api_secret.expose()),
                    ("from", from.as_str()),
                    ("to", to),
                    ("text", sms.text.as_str()),
                    ("client-ref", request.id.as_str()),
                ];
                if !sms.text.is_ascii() {
                    form.push(("type", "unicode"));
                }
                let response = client
                    .post(url)
                    .form(&form)
                    .send()
                    .await
                    .map_err(|err| Failure::transient(format!("vonage: {err}")))?;
                vonage_outcome(response, clock.now()).await
            }
            Provider::File(path) => {
                let line = serde_json::json!({
                    "id": request.id,
                    "rule": request.rule,
                    "to": sms.to,
                    "text": sms.text,
                    "at": clock.now().to_rfc3339(),
                });
                let path = path.lock().unwrap_or_else(|e| e.into_inner());
                let mut text = line.to_string();
                text.push('\n');
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&*path)
                    .and_then(|mut file| file.write_all(text.as_bytes()))
                    .map_err(|err| {
                        Failure::transient(format!("writing {}: {err}", path.display()))
                    })?;
                Ok(format!("written to {}", path.display()))
            }
        }
    }
}

impl Deliver for SmsSender {
    fn settings(&self) -> Settings {
        self.settings
    }

    fn destination(&self, _: &Action) -> String {
        self.destination.clone()
    }

    fn send<'a>(&'a self, request: &'a ActionRequest, clock: &'a dyn Clock) -> SendFuture<'a> {
        Box::pin(async move {
            match &request.action {
                Action::Sms(sms) => self.send_sms(request, sms, clock).await,
                _ => Err(wrong_channel(request, "an SMS")),
            }
        })
    }
}

/// Twilio's error body.
#[derive(Debug, Deserialize)]
struct TwilioError {
    code: Option<i64>,
    message: Option<String>,
    more_info: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TwilioMessage {
    sid: Option<String>,
    status: Option<String>,
}

/// 2xx is success (the message's sid is logged; an unreadable 2xx body is still success: the
/// message was accepted, and sending it again would send it twice); an error body
/// `{code, message, more_info, status}` is kept in the failure; 429 and 5xx are transient, and
/// so are 401 and 403 (credentials being rotated), other 4xx permanent.
async fn twilio_outcome(
    response: reqwest::Response,
    now: DateTime<Utc>,
) -> Result<String, Failure> {
    let status = response.status();
    let after = retry_after(response.headers(), now);
    let body = read_capped(response, MAX_REPLY).await;
    if status.is_success() {
        return Ok(match serde_json::from_slice::<TwilioMessage>(&body) {
            Ok(message) => format!(
                "twilio {} {}",
                message.sid.unwrap_or_default(),
                message.status.unwrap_or_default()
            ),
            Err(err) => {
                tracing::warn!(%status, error = %err, "twilio accepted a message with an unreadable reply");
                format!("twilio {status}")
            }
        });
    }
    let detail = match serde_json::from_slice::<TwilioError>(&body) {
        Ok(err) => format!(
            "{} {} ({})",
            err.code.map_or_else(String::new, |c| c.to_string()),
            err.message.unwrap_or_default(),
            err.more_info.unwrap_or_default()
        ),
        Err(_) => excerpt(&body),
    };
    Err(provider_failure(status, format!("twilio {status}: {detail}")).after(after))
}

#[derive(Debug, Deserialize)]
struct VonageReply {
    #[serde(default)]
    messages: Vec<VonageMessage>,
}

#[derive(Debug, Deserialize)]
struct VonageMessage {
    status: String,
    #[serde(rename = "message-id")]
    message_id: Option<String>,
    #[serde(rename = "error-text")]
    error_text: Option<String>,
}

/// An error status from a provider: as for any HTTP call, except that 401 and 403 (bad
/// credentials, usually being rotated) are retried rather than sending every SMS to dead
/// letters.
fn provider_failure(status: reqwest::StatusCode, message: String) -> Failure {
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        Failure::transient(message)
    } else {
        status_failure(status, message)
    }
}

/// Vonage answers 200 even on failure: every `messages[i].status` must be `"0"`. Statuses 1
/// (throttled), 4 (invalid credentials), 5 (internal error), 9 (quota) and 10 (too many binds)
/// are worth retrying. A 200 whose body cannot be read counts as sent (sending again could
/// send twice).
async fn vonage_outcome(
    response: reqwest::Response,
    now: DateTime<Utc>,
) -> Result<String, Failure> {
    let status = response.status();
    let after = retry_after(response.headers(), now);
    let body = read_capped(response, MAX_REPLY).await;
    if !status.is_success() {
        return Err(
            provider_failure(status, format!("vonage {status}: {}", excerpt(&body))).after(after),
        );
    }
    let reply: VonageReply = match serde_json::from_slice(&body) {
        Ok(reply) => reply,
        Err(err) => {
            tracing::warn!(error = %err, "vonage answered 200 with an unreadable reply");
            return Ok(format!("vonage {status}"));
        }
    };
    if reply.messages.is_empty() {
        tracing::warn!("vonage answered 200 without messages");
        return Ok(format!("vonage {status}"));
    }
    if let Some(failed) = reply.messages.iter().find(|m| m.status != "0") {
        let message = format!(
            "vonage status {}: {}",
            failed.status,
            failed.error_text.as_deref().unwrap_or("")
        );
        return Err(match failed.status.as_str() {
            "1" | "4" | "5" | "9" | "10" => Failure::transient(message),
            _ => Failure::permanent(message),
        });
    }
    let ids: Vec<&str> = reply
        .messages
        .iter()
        .filter_map(|m| m.message_id.as_deref())
        .collect();
    Ok(format!("vonage {}", ids.join(" ")))
}
