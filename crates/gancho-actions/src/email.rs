//! E-mail: a message built from an action (plain text, or multipart/alternative with HTML),
//! sent over SMTP through a pool of connections, or written as an `.eml` file.

use std::path::PathBuf;

use gancho_core::{Action, ActionRequest, Clock, EmailAction};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::channel::{Deliver, SendFuture, Settings, wrong_channel};
use crate::failure::{ActionsError, Failure};
use crate::{EmailConfig, EmailTransport};

#[derive(Debug)]
pub(crate) struct EmailSender {
    transport: Transport,
    from: Mailbox,
    destination: String,
    settings: Settings,
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
                let url = crate::config::exposed(url, "email.smtp_url")?;
                let target = SmtpTarget::parse(url).map_err(|message| ActionsError::Config {
                    key: "email.smtp_url".to_owned(),
                    message,
                })?;
                let ca = read_ca(config.ca_file.as_deref())?;
                let destination = format!("smtp {}:{}", target.host, target.port);
                (
                    Transport::Smtp(target.transport(config, ca.as_deref())?),
                    destination,
                )
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
            settings: Settings {
                limits: config.limits,
                // SMTP's timeout is per command; a message takes several.
                send_timeout: config.timeout.saturating_mul(4),
                per_destination: config.limits.concurrency,
                single_destination: true,
            },
        })
    }

    /// One destination for the whole channel: the SMTP server (or the folder).
    async fn send_email(
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

impl Deliver for EmailSender {
    fn settings(&self) -> Settings {
        self.settings
    }

    fn destination(&self, _: &Action) -> String {
        self.destination.clone()
    }

    fn send<'a>(&'a self, request: &'a ActionRequest, _: &'a dyn Clock) -> SendFuture<'a> {
        Box::pin(async move {
            match &request.action {
                Action::Email(email) => self.send_email(request, email).await,
                _ => Err(wrong_channel(request, "an e-mail")),
            }
        })
    }
}

/// How to reach the SMTP server, from `smtp_url`: `smtp://` (plain, port 25), `smtp://…?tls=
/// required` (STARTTLS, port 587; `opportunistic`: when offered), `smtps://` (implicit TLS, port
/// 465); user and password percent-encoded; a path names the EHLO name. The same URL form as
/// lettre's `from_url`, parsed here so that a private CA can be added.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SmtpTarget {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: SmtpTls,
    pub(crate) credentials: Option<(String, String)>,
    pub(crate) hello: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SmtpTls {
    None,
    StartTls,
    Opportunistic,
    Implicit,
}

impl SmtpTarget {
    /// Errors never repeat the URL: it may hold a password.
    pub(crate) fn parse(text: &str) -> Result<SmtpTarget, String> {
        let url = url::Url::parse(text).map_err(|err| format!("not a URL: {err}"))?;
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err("no host: smtp://HOST[:PORT] or smtps://HOST[:PORT]".to_owned()),
        };
        let tls = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let (tls, port) = match (url.scheme(), tls.as_deref()) {
            ("smtp", None) => (SmtpTls::None, 25),
            ("smtp", Some("required")) => (SmtpTls::StartTls, 587),
            ("smtp", Some("opportunistic")) => (SmtpTls::Opportunistic, 587),
            ("smtp", Some(_)) => {
                return Err("tls= takes required (STARTTLS) or opportunistic".to_owned());
            }
            ("smtps", _) => (SmtpTls::Implicit, 465),
            _ => {
                return Err("must be smtp://HOST[:PORT] or smtps://HOST[:PORT]".to_owned());
            }
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| "the user or password is not UTF-8 once decoded".to_owned())
        };
        let credentials = if url.username().is_empty() {
            None
        } else {
            Some((
                decode(url.username())?,
                decode(url.password().unwrap_or_default())?,
            ))
        };
        let hello = Some(url.path().trim_matches('/'))
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        Ok(SmtpTarget {
            host,
            port: url.port().unwrap_or(port),
            tls,
            credentials,
            hello,
        })
    }

    fn transport(
        &self,
        config: &EmailConfig,
        ca: Option<&[u8]>,
    ) -> Result<AsyncSmtpTransport<Tokio1Executor>, ActionsError> {
        let tls_failed = |err: lettre::transport::smtp::Error| ActionsError::Config {
            key: "email.ca_file".to_owned(),
            message: err.to_string(),
        };
        let parameters = || -> Result<TlsParameters, ActionsError> {
            let mut builder = TlsParameters::builder(self.host.clone());
            if let Some(pem) = ca {
                // Only the given CA: a private relay's certificate is not in the system store.
                builder = builder
                    .certificate_store(CertificateStore::None)
                    .add_root_certificate(Certificate::from_pem(pem).map_err(tls_failed)?);
            }
            builder.build_rustls().map_err(tls_failed)
        };
        let tls = match self.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::Required(parameters()?),
            SmtpTls::Opportunistic => Tls::Opportunistic(parameters()?),
            SmtpTls::Implicit => Tls::Wrapper(parameters()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .tls(tls)
            .timeout(Some(config.timeout))
            .pool_config(
                PoolConfig::new()
                    .max_size(u32::try_from(config.limits.concurrency).unwrap_or(u32::MAX)),
            );
        if let Some((user, password)) = &self.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        if let Some(hello) = &self.hello {
            builder = builder.hello_name(ClientId::Domain(hello.clone()));
        }
        Ok(builder.build())
    }
}

/// The PEM of `email.ca_file`, if set.
pub(crate) fn read_ca(path: Option<&std::path::Path>) -> Result<Option<Vec<u8>>, ActionsError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|err| ActionsError::Config {
        key: "email.ca_file".to_owned(),
        message: format!("cannot read {}: {err}", path.display()),
    })?;
    Certificate::from_pem(&pem).map_err(|err| ActionsError::Config {
        key: "email.ca_file".to_owned(),
        message: format!("{}: {err}", path.display()),
    })?;
    Ok(Some(pem))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn smtp_urls_give_host_port_tls_credentials() {
        let t = SmtpTarget::parse("smtps://shop%40example.com:p%3Ass@smtp.example.com").unwrap();
        assert_eq!(
            t,
            SmtpTarget {
                host: "smtp.example.com".to_owned(),
                port: 465,
                tls: SmtpTls::Implicit,
                credentials: Some(("shop@example.com".to_owned(), "p:ss".to_owned())),
                hello: None,
            }
        );
        let t = SmtpTarget::parse("smtp://mail.example.com?tls=required").unwrap();
        assert_eq!(
            (t.port, t.tls, t.credentials),
            (587, SmtpTls::StartTls, None)
        );
        let t = SmtpTarget::parse("smtp://127.0.0.1:2525/gancho.example.com").unwrap();
        assert_eq!((t.port, t.tls), (2525, SmtpTls::None));
        assert_eq!(t.hello.as_deref(), Some("gancho.example.com"));
        assert!(
            SmtpTarget::parse("smtp://mail.example.com?tls=opportunistic")
                .is_ok_and(|t| t.tls == SmtpTls::Opportunistic)
        );
        for bad in [
            "http://mail.example.com",
            "smtp://u:secret@mail.example.com?tls=maybe",
            "smtp:///nohost",
        ] {
            let err = SmtpTarget::parse(bad).unwrap_err();
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
