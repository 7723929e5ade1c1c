//! E-mail: a message built from an action (plain text, or multipart/alternative with HTML),
//! sent over SMTP through a pool of connections, or written as an `.eml` file.

use std::path::PathBuf;

use gancho_core::{ActionRequest, EmailAction};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::failure::{ActionsError, Failure};
use crate::{EmailConfig, EmailTransport};

#[derive(Debug)]
pub(crate) struct EmailSender {
    transport: Transport,
    from: Mailbox,
    destination: String,
}

#[derive(Debug)]
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(PathBuf),
}

impl EmailSender {
    pub(crate) fn new(
        config: &EmailConfig,
        data_dir: &std::path::Path,
    ) -> Result<EmailSender, ActionsError> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|err| ActionsError::Email(format!("from {:?}: {err}", config.from)))?;
        let (transport, destination) = match &config.transport {
            EmailTransport::Smtp { url } => {
                let parsed = url::Url::parse(url)
                    .map_err(|err| ActionsError::Email(format!("smtp_url: {err}")))?;
                let destination = format!(
                    "smtp {}:{}",
                    parsed.host_str().unwrap_or_default(),
                    parsed.port().map_or_else(String::new, |p| p.to_string())
                );
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|err| ActionsError::Email(format!("smtp_url: {err}")))?
                    .timeout(Some(config.timeout))
                    .pool_config(
                        PoolConfig::new()
                            .max_size(u32::try_from(config.limits.concurrency).unwrap_or(u32::MAX)),
                    )
                    .build();
                (Transport::Smtp(transport), destination)
            }
            EmailTransport::Files => {
                let dir = data_dir.join("mail");
                std::fs::create_dir_all(&dir).map_err(|err| {
                    ActionsError::Email(format!("creating {}: {err}", dir.display()))
                })?;
                (Transport::Files(dir), "files".to_owned())
            }
        };
        Ok(EmailSender {
            transport,
            from,
            destination,
        })
    }

    /// One destination for the whole channel: the SMTP server (or the folder).
    pub(crate) fn destination(&self) -> &str {
        &self.destination
    }

    pub(crate) async fn send(
        &self,
        request: &ActionRequest,
        email: &EmailAction,
    ) -> Result<String, Failure> {
        let message = build_message(request, email, &self.from)?;
        match &self.transport {
            Transport::Smtp(smtp) => match smtp.send(message).await {
                Ok(response) => Ok(format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                )),
                Err(err) => Err(classify(&err)),
            },
            Transport::Files(dir) => {
                let path = dir.join(format!("{}.eml", request.id));
                let tmp = dir.join(format!(".{}.eml.tmp", request.id));
                std::fs::write(&tmp, message.formatted())
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .map_err(|err| {
                        Failure::transient(format!("writing {}: {err}", path.display()))
                    })?;
                Ok(format!("written to {}", path.display()))
            }
        }
    }
}

fn classify(err: &lettre::transport::smtp::Error) -> Failure {
    let message = format!("smtp: {err}");
    if err.is_permanent() {
        Failure::permanent(message)
    } else {
        Failure::transient(message)
    }
}

/// The message for an action: `From` the configured sender, `Message-ID` from the action id
/// (so a repeat after a crash is the same message), `Date` now, UTF-8 subject and bodies.
pub(crate) fn build_message(
    request: &ActionRequest,
    email: &EmailAction,
    from: &Mailbox,
) -> Result<Message, Failure> {
    let domain = from.email.domain().to_owned();
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(email.subject.clone())
        .message_id(Some(format!("<{}@{domain}>", request.id)));
    for to in &email.to {
        let mailbox: Mailbox = to
            .parse()
            .map_err(|err| Failure::permanent(format!("recipient {to:?}: {err}")))?;
        builder = builder.to(mailbox);
    }
    let built = match &email.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            html.clone(),
        )),
        None => builder.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(email.text.clone()),
        ),
    };
    built.map_err(|err| Failure::permanent(format!("building the message: {err}")))
}
