//! Signed-in browsers. Signing in with the admin token opens a session: a random 256-bit id in
//! a cookie (`HttpOnly`, `SameSite=Strict`, `Secure` when the request came over TLS, expiring
//! with the session) and, kept with it here, a CSRF token that every state-changing form
//! carries and that is checked in constant time. Sessions live in memory only: a restart or
//! "Sign out" ends them, and at most [`MAX_SESSIONS`] are held (the oldest go first).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

/// The session cookie's name.
pub const COOKIE: &str = "gancho_session";
/// How long a session lasts from sign-in.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Sessions held at most; signing in past it ends the oldest.
const MAX_SESSIONS: usize = 256;

/// A signed-in browser's session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Its id, as the cookie carries it (hex).
    pub id: String,
    /// What its forms must carry.
    pub csrf: String,
    pub expires: Instant,
}

/// The open sessions.
#[derive(Debug)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
    random: SystemRandom,
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("the system's random number generator failed")]
pub struct NoRandom;

impl Sessions {
    pub fn new() -> Sessions {
        Sessions {
            open: Mutex::new(HashMap::new()),
            random: SystemRandom::new(),
        }
    }

    /// Opens a session, as a right token was given.
    pub fn open(&self, now: Instant) -> Result<Session, NoRandom> {
        let session = Session {
            id: self.random_hex()?,
            csrf: self.random_hex()?,
            expires: now + LIFETIME,
        };
        let mut open = self.lock();
        open.retain(|_, s| s.expires > now);
        while open.len() >= MAX_SESSIONS {
            let Some(oldest) = open
                .values()
                .min_by_key(|s| s.expires)
                .map(|s| s.id.clone())
            else {
                break;
            };
            open.remove(&oldest);
        }
        open.insert(session.id.clone(), session.clone());
        Ok(session)
    }

    /// The session whose id the cookie carries, if it is open and not expired.
    pub fn find(&self, id: &str, now: Instant) -> Option<Session> {
        let mut open = self.lock();
        match open.get(id) {
            Some(session) if session.expires > now => Some(session.clone()),
            Some(_) => {
                open.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends the session `id` ("Sign out").
    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn random_hex(&self) -> Result<String, NoRandom> {
        let mut bytes = [0u8; 32];
        self.random.fill(&mut bytes).map_err(|_| NoRandom)?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl Session {
    /// Whether `given` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, given: &str) -> bool {
        gancho_ingress::constant_time_eq(given.as_bytes(), self.csrf.as_bytes())
    }

    /// The `Set-Cookie` value that gives this session to the browser.
    pub fn cookie(&self, secure: bool, now: Instant) -> String {
        let max_age = self.expires.saturating_duration_since(now).as_secs();
        let secure = if secure { "; Secure" } else { "" };
        format!(
            "{COOKIE}={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}",
            self.id
        )
    }
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn removal_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_until_it_expires_or_is_closed() {
        let sessions = Sessions::new();
        let now = Instant::now();
        let session = sessions.open(now).unwrap();
        assert_eq!(session.id.len(), 64);
        assert_ne!(session.id, session.csrf);
        assert!(sessions.find(&session.id, now).is_some());
        assert!(sessions.find("0000", now).is_none());
        assert!(sessions.find(&session.id, now + LIFETIME).is_none());
        let other = sessions.open(now).unwrap();
        sessions.close(&other.id);
        assert!(sessions.find(&other.id, now).is_none());
    }

    #[test]
    fn the_csrf_token_must_match_whole() {
        let session = Sessions::new().open(Instant::now()).unwrap();
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(&session.csrf[..10]));
        assert!(!session.csrf_matches(""));
    }

    #[test]
    fn the_oldest_sessions_go_first_past_the_cap() {
        let sessions = Sessions::new();
        let start = Instant::now();
        let first = sessions.open(start).unwrap();
        for i in 1..=MAX_SESSIONS {
            sessions
                .open(start + Duration::from_millis(i as u64))
                .unwrap();
        }
        assert!(sessions.find(&first.id, start).is_none());
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let now = Instant::now();
        let session = Sessions::new().open(now).unwrap();
        let plain = session.cookie(false, now);
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(plain.contains("Max-Age=28800") && !plain.contains("Secure"));
        assert!(session.cookie(true, now).ends_with("; Secure"));
    }
}
