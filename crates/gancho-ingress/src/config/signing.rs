//! What a source's signature check is made of: its secrets (`secret`, `signing_key`,
//! `auth_token`, each also as `_env` / `_file`, and `secrets = [...]` for a rotation), the
//! generic `hmac` section, and the `Verifier` they build, with a fingerprint that tells a
//! reload's rotation from no change.

use gancho_core::{KeyError, Secret};
use serde::Deserialize;

use super::{BasicAuthConfig, KindName, SourceConfig};

/// `hmac = { … }`: a generic HMAC signature check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacSection {
    /// The header that carries the signature. Required.
    pub header: String,
    /// `"sha256"` or `"sha1"`. Default: `"sha256"`.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// How the signature is written: `"hex"` or `"base64"`. Default: `"hex"`.
    #[serde(default = "default_encoding")]
    pub encoding: crate::verify::Encoding,
    /// Text before the signature in the header, such as `"sha256="`. Default: none.
    pub prefix: Option<String>,
    /// A header with the request's Unix time: then `TIMESTAMP.BODY` is signed, and the time
    /// must be within `tolerance`. Default: none (the body alone is signed).
    pub timestamp_header: Option<String>,
}

fn default_algorithm() -> String {
    "sha256".to_owned()
}

fn default_encoding() -> crate::verify::Encoding {
    crate::verify::Encoding::Hex
}

/// The shortest signing secret accepted.
const MIN_SECRET_LEN: usize = 8;

/// The default `tolerance` of the timestamped schemes.
const DEFAULT_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(300);

impl SourceConfig {
    /// The source's secrets, with their keys within the section, so the binary can read those
    /// given as `KEY_env` or `KEY_file`.
    pub fn secrets_mut(&mut self) -> Vec<(&'static str, &mut Secret)> {
        if self.resolved.is_none() {
            let secret = Secret::from_keys(
                "secret",
                self.secret.take(),
                self.secret_env.take(),
                self.secret_file.take(),
            );
            let signing_key = Secret::from_keys(
                "signing_key",
                self.signing_key.take(),
                self.signing_key_env.take(),
                self.signing_key_file.take(),
            );
            let auth_token = Secret::from_keys(
                "auth_token",
                self.auth_token.take(),
                self.auth_token_env.take(),
                self.auth_token_file.take(),
            );
            // One secret, under the name its kind's provider gives it.
            let mut given = Vec::new();
            let mut failed = None;
            for (name, read) in [
                ("secret", secret),
                ("signing_key", signing_key),
                ("auth_token", auth_token),
            ] {
                match read {
                    Ok(Some(secret)) => given.push((name, secret)),
                    Ok(None) => {}
                    Err(err) => failed = Some(err),
                }
            }
            self.resolved = Some(match (failed, given.len()) {
                (Some(err), _) => Err(err),
                (None, 0) => Ok(None),
                (None, 1) => Ok(given.pop()),
                (None, _) => Err(KeyError::new(
                    given[1].0,
                    "give the key once: secret, signing_key or auth_token",
                )),
            });
        }
        let mut secrets = Vec::new();
        if let Some(BasicAuthConfig {
            password: Some(password),
            ..
        }) = &mut self.basic_auth
        {
            secrets.push(("basic_auth.password", password));
        }
        if let Some(Ok(Some((key, secret)))) = &mut self.resolved {
            secrets.push((*key, secret));
        }
        secrets
    }

    /// The signing secrets as given: `secret` (read by [`SourceConfig::secrets_mut`]) first,
    /// then `secrets`.
    pub(super) fn signing_secrets(&mut self) -> Result<Vec<String>, KeyError> {
        self.secrets_mut();
        let mut all = Vec::new();
        match self.resolved.take() {
            Some(Err(err)) => return Err(err),
            Some(Ok(Some((key, secret)))) => match secret.expose() {
                Some(value) => all.push(value.to_owned()),
                None => {
                    return Err(KeyError::new(
                        key,
                        "the secret was not read from its variable or file",
                    ));
                }
            },
            _ => {}
        }
        all.extend(self.secrets.iter().map(|s| s.expose().to_owned()));
        // An empty key (a variable that came out empty) would let anyone sign.
        if all.iter().any(|s| s.len() < MIN_SECRET_LEN) {
            return Err(KeyError::new(
                if self.secrets.is_empty() {
                    "secret"
                } else {
                    "secrets"
                },
                format!("a signing secret must be at least {MIN_SECRET_LEN} bytes"),
            ));
        }
        Ok(all)
    }
}

impl SourceConfig {
    /// A digest of what the signature check is made of (its settings and `secrets`): a reload
    /// that changes any of it is a rotation.
    fn fingerprint(&self, secrets: &[String]) -> gancho_core::signature::Fingerprint {
        let settings = format!(
            "{:?}|{:?}|{:?}|{:?}",
            self.tolerance, self.hmac, self.public_url, self.public_key
        );
        let mut parts: Vec<&[u8]> = vec![settings.as_bytes()];
        parts.extend(secrets.iter().map(|s| s.as_bytes()));
        gancho_core::signature::Fingerprint::of(&parts)
    }

    /// The signature check the kind takes, built from `secrets`, and a keyed digest of them.
    pub(super) fn verifier(
        &self,
        secrets: &[String],
    ) -> Result<
        (
            Option<crate::verify::Verifier>,
            Option<gancho_core::signature::Fingerprint>,
        ),
        KeyError,
    > {
        use gancho_core::signature::{HmacHash, HmacKey, StandardWebhooks};
        if self.hmac.is_some()
            && !matches!(self.kind, KindName::Json | KindName::Form | KindName::Xml)
        {
            return Err(KeyError::new(
                "hmac",
                "only the json, form and xml kinds take a generic check; the others sign their own way",
            ));
        }
        if let Some(hmac) = &self.hmac
            && hmac.timestamp_header.is_none()
            && self.tolerance.is_some()
        {
            return Err(KeyError::new(
                "tolerance",
                "it applies to a signed timestamp: give hmac.timestamp_header",
            ));
        }
        if self.public_key.is_some() && self.kind != KindName::Sendgrid {
            return Err(KeyError::new(
                "public_key",
                "only the sendgrid kind takes it",
            ));
        }
        if self.public_url.is_some() && self.kind != KindName::Twilio {
            return Err(KeyError::new("public_url", "only the twilio kind takes it"));
        }
        if self.kind == KindName::Sendgrid {
            if !secrets.is_empty() {
                return Err(KeyError::new(
                    "secret",
                    "sendgrid signs with a key pair: give its public_key",
                ));
            }
            let Some(public_key) = &self.public_key else {
                if self.tolerance.is_some() {
                    return Err(KeyError::new("tolerance", "it applies with a public_key"));
                }
                return Ok((None, None));
            };
            let point = crate::verify::p256_point(public_key)
                .map_err(|why| KeyError::new("public_key", why))?;
            let verifier = crate::verify::Verifier::Sendgrid {
                point,
                tolerance: self.tolerance.unwrap_or(DEFAULT_TOLERANCE),
            };
            return Ok((Some(verifier), Some(self.fingerprint(&[]))));
        }
        if let Some(hmac) = &self.hmac {
            if secrets.is_empty() {
                return Err(KeyError::new(
                    "secret",
                    "required with hmac: the shared secret (secret, secret_env, secret_file, or secrets = [...])",
                ));
            }
            let hash = match hmac.algorithm.as_str() {
                "sha256" => HmacHash::Sha256,
                "sha1" => HmacHash::Sha1,
                _ => return Err(KeyError::new("hmac.algorithm", "sha256 or sha1")),
            };
            let header_name = |name: &str, key: &str| {
                actix_web::http::header::HeaderName::from_bytes(name.as_bytes())
                    .map(|h| h.as_str().to_owned())
                    .map_err(|_| KeyError::new(key, format!("{name:?} is not a header name")))
            };
            let verifier = crate::verify::Verifier::Hmac {
                keys: secrets
                    .iter()
                    .map(|s| HmacKey::new(hash, s.as_bytes()))
                    .collect(),
                header: header_name(&hmac.header, "hmac.header")?,
                encoding: hmac.encoding,
                prefix: hmac.prefix.clone().filter(|p| !p.is_empty()),
                timestamp_header: hmac
                    .timestamp_header
                    .as_deref()
                    .map(|h| header_name(h, "hmac.timestamp_header"))
                    .transpose()?,
                tolerance: self.tolerance.unwrap_or(DEFAULT_TOLERANCE),
            };
            return Ok((Some(verifier), Some(self.fingerprint(secrets))));
        }
        if !self.kind.signed() {
            if !secrets.is_empty() {
                return Err(KeyError::new(
                    "secret",
                    "only the signed kinds (stripe, github, standard-webhooks, mailgun, twilio), and json or form with hmac, take a secret",
                ));
            }
            if self.tolerance.is_some() {
                return Err(KeyError::new(
                    "tolerance",
                    "only the signed kinds with timestamps (stripe, standard-webhooks) take it",
                ));
            }
            return Ok((None, None));
        }
        if secrets.is_empty() {
            return Err(KeyError::new(
                "secret",
                "required for a signed kind: the signing secret the provider shows (secret, secret_env, secret_file, or secrets = [...])",
            ));
        }
        let tolerance = self.tolerance.unwrap_or(DEFAULT_TOLERANCE);
        let hmac = |s: &String| HmacKey::new(HmacHash::Sha256, s.as_bytes());
        let verifier = match self.kind {
            KindName::Stripe => crate::verify::Verifier::Stripe {
                keys: secrets.iter().map(hmac).collect(),
                tolerance,
            },
            KindName::Github => {
                if self.tolerance.is_some() {
                    return Err(KeyError::new(
                        "tolerance",
                        "GitHub signs no timestamp: the github kind takes no tolerance",
                    ));
                }
                crate::verify::Verifier::GitHub {
                    keys: secrets.iter().map(hmac).collect(),
                }
            }
            KindName::Twilio => {
                if self.tolerance.is_some() {
                    return Err(KeyError::new(
                        "tolerance",
                        "Twilio signs no timestamp: the twilio kind takes no tolerance",
                    ));
                }
                let Some(public_url) = self.public_url.clone() else {
                    return Err(KeyError::new(
                        "public_url",
                        "required for twilio: the callback URL exactly as Twilio calls it, which it signs",
                    ));
                };
                if secrets.len() > 1 {
                    return Err(KeyError::new(
                        "secrets",
                        "Twilio signs with the account's one auth token",
                    ));
                }
                crate::verify::Verifier::Twilio {
                    key: HmacKey::new(HmacHash::Sha1, secrets[0].as_bytes()),
                    public_url,
                }
            }
            KindName::Mailgun => crate::verify::Verifier::Mailgun {
                keys: secrets.iter().map(hmac).collect(),
                tolerance,
                seen: Default::default(),
            },
            _ => crate::verify::Verifier::StandardWebhooks {
                scheme: StandardWebhooks::new(secrets)
                    .map_err(|err| KeyError::new("secret", err.to_string()))?,
                tolerance,
            },
        };
        Ok((Some(verifier), Some(self.fingerprint(secrets))))
    }
}
