//! The vocabulary of config sections: secrets, durations, and an error about one key.
//!
//! Each crate owns the section of the config file it reads (`[email]` in `gancho-actions`,
//! `[sources.NAME]` in `gancho-ingress`); this module gives them the types a mistake in such a
//! section should be caught by while the file is read, so its error carries the line. It does
//! no I/O: a [`Secret`] given as `KEY_env` or `KEY_file` is read by the binary (the only crate
//! that reads the environment), which puts the value back as [`Secret::Value`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A complaint about one key of a section that can only be made once the whole section is read:
/// a secret given two ways, a field the chosen provider requires.
///
/// Serde carries a section's error as text, so this displays as `` `KEY`: MESSAGE `` and
/// [`KeyError::parse`] reads that back: the binary then names `SECTION.KEY` in its one-line
/// error. Serde's own messages never start with a backquote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct KeyError {
    /// The key within its section, as `account_sid`; empty for the section itself.
    pub key: String,
    pub message: String,
}

impl KeyError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> KeyError {
        KeyError {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The key and message of a [`KeyError`]'s text, or `None` for any other message.
    pub fn parse(text: &str) -> Option<(&str, &str)> {
        let rest = text.strip_prefix('`')?;
        let (key, message) = rest.split_once("`: ")?;
        (!key.contains('`')).then_some((key, message))
    }
}

/// A secret's value, as written in the file or read from its variable or file. Its `Debug`
/// prints `<redacted>`, so a config can be logged whole.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> SecretString {
        SecretString(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> SecretString {
        SecretString(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> SecretString {
        SecretString(value.to_owned())
    }
}

/// A secret as a config file gives it: `KEY = "value"`, `KEY_env = "VARIABLE"` or
/// `KEY_file = "/path"` (a trailing newline of the file is not part of it), exactly one.
///
/// The section that holds it reads the three keys as [`Option`]s and combines them with
/// [`Secret::from_keys`]: serde cannot flatten them without giving up `deny_unknown_fields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// Written in the file, or already read from its variable or file.
    Value(SecretString),
    /// The name of the environment variable that holds it.
    Env(String),
    /// The file that holds it.
    File(PathBuf),
}

impl Secret {
    /// The secret `name` from its three keys (`name`, `name_env`, `name_file`): `None` when
    /// none is given, an error naming `name` when more than one is.
    pub fn from_keys(
        name: &str,
        value: Option<SecretString>,
        env: Option<String>,
        file: Option<PathBuf>,
    ) -> Result<Option<Secret>, KeyError> {
        match (value, env, file) {
            (None, None, None) => Ok(None),
            (Some(value), None, None) => Ok(Some(Secret::Value(value))),
            (None, Some(var), None) => Ok(Some(Secret::Env(var))),
            (None, None, Some(path)) => Ok(Some(Secret::File(path))),
            _ => Err(KeyError::new(
                name,
                format!("give at most one of {name}, {name}_env, {name}_file"),
            )),
        }
    }

    /// The value, once known: `None` while it is still to be read from a variable or file.
    pub fn expose(&self) -> Option<&str> {
        match self {
            Secret::Value(value) => Some(value.expose()),
            Secret::Env(_) | Secret::File(_) => None,
        }
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret::Value(value.into())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret::Value(value.into())
    }
}

/// A secret's value must be a string. Anything else is refused without echoing it (serde's
/// "invalid type: integer `12345`" would print a numeric password).
impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SecretString, D::Error> {
        struct SecretVisitor;

        impl SecretVisitor {
            fn refuse<E: de::Error>(kind: &str) -> E {
                E::custom(format!(
                    "invalid type: {kind}, expected a string (the value is not shown)"
                ))
            }
        }

        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = SecretString;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretString, E> {
                Ok(SecretString(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<SecretString, E> {
                Ok(SecretString(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<SecretString, E> {
                Err(Self::refuse("boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<SecretString, E> {
                Err(Self::refuse("integer"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<SecretString, E> {
                Err(Self::refuse("integer"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<SecretString, E> {
                Err(Self::refuse("float"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<SecretString, A::Error> {
                Err(Self::refuse("array"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<SecretString, A::Error> {
                Err(Self::refuse("table"))
            }
        }

        deserializer.deserialize_string(SecretVisitor)
    }
}

/// A duration written as humantime text (`"30s"`, `"1h 30m"`, `"3d"`), for
/// `#[serde(with = "gancho_core::config::duration")]` on a [`Duration`] field. A bad one is an
/// error of the value itself, so it carries the value's line.
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\" or \"3d\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
                humantime::parse_duration(text).map_err(|err| E::custom(format!("{text:?}: {err}")))
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }

    /// For a retention (`Option<Duration>`): `"0"` (or any zero duration) keeps everything,
    /// `None`; any other duration is `Some`.
    pub mod retention {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            super::deserialize(deserializer).map(|d| (!d.is_zero()).then_some(d))
        }
    }

    /// For an `Option<Duration>` field: given means `Some`.
    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            super::deserialize(deserializer).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_error_reads_back_from_its_text() {
        let err = KeyError::new("account_sid", "required for provider twilio");
        assert_eq!(
            KeyError::parse(&err.to_string()),
            Some(("account_sid", "required for provider twilio"))
        );
        assert_eq!(KeyError::parse("missing field `from`"), None);
    }

    #[test]
    fn secrets_redact_themselves() {
        let secret = Secret::from("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.expose(), Some("hunter2"));
        assert_eq!(Secret::Env("X".to_owned()).expose(), None);
    }

    #[test]
    fn a_secret_is_given_at_most_one_way() {
        assert_eq!(Secret::from_keys("pw", None, None, None), Ok(None));
        let err = Secret::from_keys("pw", Some("a".into()), Some("A".to_owned()), None);
        assert_eq!(
            err,
            Err(KeyError::new(
                "pw",
                "give at most one of pw, pw_env, pw_file"
            ))
        );
    }
}
