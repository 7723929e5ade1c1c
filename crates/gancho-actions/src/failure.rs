use std::time::Duration;

/// Why one try at delivering failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub message: String,
    /// The peer refused for good (SMTP 5xx, HTTP 4xx but 408 and 429, a provider's own
    /// permanent codes, a malformed action, a host the guard refuses): no retry.
    pub permanent: bool,
    /// The peer asked to wait this long (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn transient(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            permanent: false,
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            permanent: true,
            retry_after: None,
        }
    }

    pub(crate) fn after(mut self, retry_after: Option<Duration>) -> Failure {
        self.retry_after = retry_after;
        self
    }
}

/// Why the executor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActionsError {
    /// A config value that cannot work: the dotted key, and why.
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    #[error("email: {0}")]
    Email(String),
    #[error("sms: {0}")]
    Sms(String),
    #[error("http: {0}")]
    Http(String),
    #[error("starting the actions thread: {0}")]
    Thread(#[source] std::io::Error),
}
