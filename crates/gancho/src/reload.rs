//! What `SIGHUP` changes in a running daemon besides the rules: the config file is read and
//! checked whole again; if it is invalid nothing changes. Otherwise the actions executor is
//! restarted on the new `[email]`, `[sms]`, `[http]` and `[retry]` (sends in flight finish
//! first; the outbox is durable, so nothing waiting is lost; `[retry]`'s retentions go to the
//! hourly prune), and each source's credentials are rotated. Whatever else differs is named in the log
//! as needing a restart, and keeps its running value.

use crate::config::Config;

/// The settings a reload does not apply, by the config key, that differ between `running`
/// and `new`. Sections are compared by their `Debug` form, which shows every setting and no
/// secret (a changed admin token is compared apart).
pub fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    fn differ(a: &impl std::fmt::Debug, b: &impl std::fmt::Debug) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let (a, b) = (&running.ingress, &new.ingress);
    let token = |c: &Config| {
        c.admin
            .token
            .as_ref()
            .and_then(|t| t.expose())
            .map(str::to_owned)
    };
    [
        ("listen", running.listen != new.listen),
        ("data_dir", running.data_dir != new.data_dir),
        ("rules_dir", running.rules_dir != new.rules_dir),
        ("max_body_bytes", a.max_body_bytes != b.max_body_bytes),
        ("http_workers", a.workers != b.workers),
        ("shutdown_grace", a.shutdown_grace != b.shutdown_grace),
        ("body_timeout", a.body_timeout != b.body_timeout),
        ("max_connections", a.max_connections != b.max_connections),
        ("log_format", running.log_format != new.log_format),
        ("[store]", running.store != new.store),
        ("[engine]", differ(&running.engine, &new.engine)),
        (
            "[admin]",
            differ(&running.admin.listen, &new.admin.listen)
                || running.admin.metrics_public != new.admin.metrics_public
                || running.admin.ready_max_lag != new.admin.ready_max_lag
                || token(running) != token(new),
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// Whether the actions' settings differ, secrets included (their `Debug` redacts them).
pub fn actions_changed(
    running: &gancho_actions::ActionsConfig,
    new: &gancho_actions::ActionsConfig,
) -> bool {
    let fingerprint = |config: &gancho_actions::ActionsConfig| {
        let mut config = config.clone();
        let secrets: Vec<String> = config
            .secrets_mut()
            .into_iter()
            .map(|(key, secret)| format!("{key}={:?}", secret.expose()))
            .collect();
        format!("{config:?}{secrets:?}")
    };
    fingerprint(running) != fingerprint(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(text, "test").unwrap()
    }

    #[test]
    fn what_a_reload_cannot_apply_is_named() {
        let running = config("listen = \"127.0.0.1:8080\"\n[retry]\ninitial = \"1s\"\n");
        let same_but_retry = config("listen = \"127.0.0.1:8080\"\n[retry]\ninitial = \"5s\"\n");
        assert!(needs_restart(&running, &same_but_retry).is_empty());
        let moved = config(
            "listen = \"127.0.0.1:8081\"\n[store]\nfsync = false\n[admin]\ntoken = \"0123456789abcdef\"\n",
        );
        assert_eq!(
            needs_restart(&running, &moved),
            vec!["listen", "[store]", "[admin]"]
        );
    }

    #[test]
    fn a_changed_secret_is_a_change_of_the_actions() {
        let smtp = |password: &str| {
            config(&format!(
                "[email]\nsmtp_url = \"smtp://user:{password}@127.0.0.1:2525\"\nfrom = \"a <a@b.c>\"\n"
            ))
            .actions
        };
        assert!(!actions_changed(&smtp("one"), &smtp("one")));
        assert!(actions_changed(&smtp("one"), &smtp("two")));
        let retry = config("[retry]\ninitial = \"5s\"\n").actions;
        assert!(actions_changed(&smtp("one"), &retry));
    }
}
