//! The sources a running server accepts, swapped whole on a reload: a request loads the map
//! once (an `ArcSwap`), so a rotation never shows it half done; and what a source is.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::warn;

use crate::adapter::SourceKind;
use crate::auth::BasicAuth;

/// A configured source: where `POST /hooks/{name}` goes.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    /// How its event times are read and bounded.
    pub time: crate::adapter::TimePolicy,
    /// The signature its requests must carry, checked over the raw body before it is parsed.
    pub verify: Option<crate::verify::Verifier>,
    /// A digest of the verifier's settings and secrets: tells a change (SIGHUP) from none.
    pub verify_fingerprint: Option<gancho_core::signature::Fingerprint>,
    /// Headers that give its events' type or id.
    pub headers: crate::verify::HeaderFields,
    /// What its bodies are: JSON, or an HTML form (`application/x-www-form-urlencoded`).
    pub format: BodyFormat,
    /// Credentials the sender must present; `None` accepts any sender.
    pub auth: Option<BasicAuth>,
    /// Cluster mode: which key places its events in a partition; `None` for a kind without a
    /// default whose section names none (cluster mode then refuses the config).
    pub partition: Option<PartitionSpec>,
}

/// A source's partition key and the keys that follow it (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    /// The correlation key whose value decides an event's partition.
    pub key: String,
    /// Correlation keys whose events share a partition whenever they share a value.
    pub colocated: Vec<String>,
}

/// How a source's bodies are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BodyFormat {
    #[default]
    Json,
    /// `application/x-www-form-urlencoded` (Twilio's callbacks): read as a JSON object of its
    /// fields (a field given more than once: an array of its values).
    Form,
    /// `application/xml` or `text/xml`: read as a JSON object (`adapter::xml_to_json`).
    Xml,
}

/// The sources a running server accepts. Their credentials can be changed while it runs
/// ([`Sources::rotate`], on `SIGHUP`); their set and kinds are fixed at start.
#[derive(Clone)]
pub struct Sources(pub(crate) Arc<arc_swap::ArcSwap<HashMap<String, Source>>>);

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Sources")
            .field(&self.0.load().keys())
            .finish()
    }
}

/// What [`Sources::rotate`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// Sources whose credentials changed: requests from now on need the new ones.
    pub changed: Vec<String>,
    /// Sources added, removed, or read another way (kind, JSON pointers) in the new config: a
    /// restart applies them.
    pub need_restart: Vec<String>,
}

impl Sources {
    pub(crate) fn new(sources: Vec<Source>) -> Sources {
        let map = sources.into_iter().map(|s| (s.name.clone(), s)).collect();
        Sources(Arc::new(arc_swap::ArcSwap::from_pointee(map)))
    }

    /// Takes the credentials of `new` for each source the server has under the same name and
    /// kind. Requests already past their credentials check are not affected.
    pub fn rotate(&self, new: &[Source]) -> Rotated {
        let current = self.0.load_full();
        let mut next = (*current).clone();
        let mut rotated = Rotated::default();
        for source in new {
            match next.get_mut(&source.name) {
                Some(have)
                    if have.kind == source.kind
                        && have.format == source.format
                        && have.headers == source.headers =>
                {
                    let checked = |s: &Source| s.auth.is_some() || s.verify.is_some();
                    if checked(have) && !checked(source) {
                        warn!(source = %source.name, "the reloaded config gives this source no credentials and no signature: anyone who can reach the port can post events to it");
                    }
                    if have.auth != source.auth
                        || have.verify_fingerprint != source.verify_fingerprint
                        || have.time != source.time
                    {
                        let mut verify = source.verify.clone();
                        if let (Some(new), Some(old)) = (&mut verify, &have.verify) {
                            new.keep_memory_of(old);
                        }
                        have.auth.clone_from(&source.auth);
                        have.verify = verify;
                        have.verify_fingerprint
                            .clone_from(&source.verify_fingerprint);
                        have.time = source.time;
                        rotated.changed.push(source.name.clone());
                    }
                }
                _ => rotated.need_restart.push(source.name.clone()),
            }
        }
        for name in current.keys() {
            if !new.iter().any(|s| s.name == *name) {
                rotated.need_restart.push(name.clone());
            }
        }
        rotated.need_restart.sort();
        self.0.store(Arc::new(next));
        rotated
    }
}
