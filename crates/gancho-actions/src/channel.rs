//! What the executor knows of a channel: one type per channel, each in a module of its own
//! (`email.rs`, `sms.rs`, `http.rs`), behind [`Deliver`]: where an action goes, how to send it,
//! and how the channel is paced. The executor picks the type once per lane, from the channel
//! (`executor::deliverer`); nothing else in it depends on which channel a lane serves.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use gancho_core::{Action, ActionRequest, Clock};

use crate::config::ChannelLimits;
use crate::failure::Failure;

/// A send under way: the peer's id for the message, or why it failed.
pub(crate) type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<String, Failure>> + Send + 'a>>;

/// How the executor paces a channel, from the channel's config section.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Sends in flight and started per second, all destinations.
    pub(crate) limits: ChannelLimits,
    /// One send, whole (SMTP's timeout is per command, and a message takes several).
    pub(crate) send_timeout: Duration,
    /// Sends in flight to one destination.
    pub(crate) per_destination: usize,
    /// Whether every action goes to one destination (an SMTP relay, an SMS provider): then its
    /// backlog may hold as much as the lane, so a long backlog waits in memory instead of
    /// being deferred.
    pub(crate) single_destination: bool,
}

/// One channel's way of delivering.
pub(crate) trait Deliver: Send + Sync + std::fmt::Debug {
    fn settings(&self) -> Settings;

    /// Where the action goes: the destination whose share of sends and health it counts
    /// against (the SMTP relay, the SMS provider, an HTTP host:port).
    fn destination(&self, action: &Action) -> String;

    /// Delivers it; `clock` stamps what needs a time (a signature, a file line) and, read when
    /// the reply comes, measures an HTTP-date `Retry-After` from then.
    fn send<'a>(&'a self, request: &'a ActionRequest, clock: &'a dyn Clock) -> SendFuture<'a>;
}

/// The failure for an action handed to another channel's type (a bug, or a damaged record).
pub(crate) fn wrong_channel(request: &ActionRequest, expected: &str) -> Failure {
    Failure::permanent(format!(
        "action {} is not {expected}: it is {:?}",
        request.id,
        request.action.channel()
    ))
}
