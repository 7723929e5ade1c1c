use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// HTTP basic credentials a source must present (Mailjet sends those written into its
/// callback URL, `https://user:password@host/hooks/mailjet`).
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl BasicAuth {
    /// Whether an `Authorization` header value carries these credentials. Compares in constant
    /// time, so the time taken does not tell an attacker how much of a guess was right.
    pub fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(header) = header else { return false };
        let Some(encoded) = strip_scheme(header) else {
            return false;
        };
        let Ok(decoded) = STANDARD.decode(encoded.trim_ascii()) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        // Evaluate both comparisons before combining, so neither short-circuits the other.
        let user_ok = constant_time_eq(user, self.user.as_bytes());
        let password_ok = constant_time_eq(password, self.password.as_bytes());
        user_ok & password_ok
    }
}

fn strip_scheme(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(6)?;
    scheme.eq_ignore_ascii_case(b"basic ").then_some(rest)
}

pub use gancho_core::signature::constant_time_eq;

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
    }

    #[test]
    fn accepts_only_the_right_pair() {
        let auth = BasicAuth {
            user: "mailjet".into(),
            password: "s3cr:et".into(),
        };
        assert!(auth.accepts(Some(header("mailjet", "s3cr:et").as_bytes())));
        assert!(
            auth.accepts(Some(
                header("mailjet", "s3cr:et")
                    .replace("Basic", "basic")
                    .as_bytes()
            ))
        );
        assert!(!auth.accepts(Some(header("mailjet", "s3cr:e").as_bytes())));
        assert!(!auth.accepts(Some(header("mailje", "s3cr:et").as_bytes())));
        assert!(!auth.accepts(Some(header("", "").as_bytes())));
        assert!(!auth.accepts(Some(b"Basic !!!not-base64")));
        assert!(!auth.accepts(Some(b"Bearer abc")));
        assert!(!auth.accepts(Some(b"Ba")));
        assert!(!auth.accepts(None));
    }

    #[test]
    fn debug_output_hides_the_password() {
        let auth = BasicAuth {
            user: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
