//! The config file's tests: the embedded defaults, `deploy/gancho.toml` with every key, and
//! each error naming its key.

use super::*;

#[test]
fn embedded_defaults_are_valid() {
    let config = load(None).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.data_dir, PathBuf::from("data"));
    assert!(config.store.fsync);
}

#[test]
fn the_deploy_example_parses_with_every_key() {
    let text = include_str!("../../../../deploy/gancho.toml");
    let config = parse(text, "deploy/gancho.toml").unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/gancho"));
    assert_eq!(config.rules_dir, PathBuf::from("/etc/gancho/rules"));
    assert!(config.store.fsync);
    assert_eq!(config.store.cache_capacity, 64 * 1024 * 1024);

    let ingress = &config.ingress;
    assert_eq!(ingress.max_body_bytes, 1048576);
    assert_eq!(ingress.workers, 0);
    assert_eq!(ingress.shutdown_grace, Duration::from_secs(30));
    let names: Vec<_> = ingress.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["bank", "mailjet"]);
    let bank = &ingress.sources[0];
    assert_eq!(bank.auth.as_ref().unwrap().user, "bank");
    assert_eq!(bank.auth.as_ref().unwrap().password, "change-me-too");
    let gancho_ingress::SourceKind::Json(spec) = &bank.kind else {
        panic!("bank is not a json source: {:?}", bank.kind);
    };
    assert_eq!(spec.kind, "/kind");
    assert_eq!(spec.time.as_deref(), Some("/at"));
    assert_eq!(spec.id.as_deref(), Some("/id"));
    assert_eq!(spec.keys, [("account".to_owned(), "/account".to_owned())]);
    let partition = bank.partition.as_ref().unwrap();
    assert_eq!(partition.key, "account");
    assert!(partition.colocated.is_empty());
    assert!(config.cluster.is_none());
    let mailjet = &ingress.sources[1];
    assert!(matches!(mailjet.kind, gancho_ingress::SourceKind::Mailjet));
    assert_eq!(mailjet.auth.as_ref().unwrap().user, "mailjet");

    let actions = &config.actions;
    assert_eq!(actions.shutdown_grace, Duration::from_secs(10));
    assert!(matches!(
        &actions.email.transport,
        gancho_actions::EmailTransport::Smtp { url }
            if url.expose().is_some_and(|url| url.starts_with("smtps://"))
    ));
    assert_eq!(actions.email.from, "Shop <shop@example.com>");
    assert_eq!(actions.email.timeout, Duration::from_secs(30));
    assert_eq!(actions.email.limits.concurrency, 4);
    assert_eq!(actions.email.limits.rate_per_sec, 0.0);
    assert_eq!(actions.email.ca_file, None);

    let gancho_actions::SmsProvider::Twilio {
        base_url,
        account_sid,
        auth_token,
        from,
        messaging_service_sid,
    } = &actions.sms.provider
    else {
        panic!("not twilio: {:?}", actions.sms.provider);
    };
    assert_eq!(base_url, "https://api.twilio.com");
    assert_eq!(account_sid, "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_eq!(auth_token.expose(), Some("change-me"));
    assert_eq!(from.as_deref(), Some("+15017122661"));
    assert_eq!(messaging_service_sid, &None);
    assert_eq!(actions.sms.timeout, Duration::from_secs(15));
    assert_eq!(actions.sms.limits.concurrency, 4);
    assert_eq!(actions.sms.limits.rate_per_sec, 1.0);

    assert_eq!(
        actions.http.allow_hosts,
        ["hooks.example.com", "*.shop.example"]
    );
    assert!(!actions.http.allow_private);
    assert_eq!(actions.http.timeout, Duration::from_secs(10));
    assert_eq!(
        actions
            .http
            .signing_secret
            .as_ref()
            .and_then(Secret::expose),
        Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    );
    assert_eq!(actions.http.limits.concurrency, 32);
    assert_eq!(actions.http.per_host, 8);
    assert_eq!(actions.http.limits.rate_per_sec, 0.0);

    assert_eq!(actions.retry.initial, Duration::from_secs(2));
    assert_eq!(actions.retry.max, Duration::from_secs(3600));
    assert_eq!(actions.retry.max_attempts, 0);
    assert_eq!(
        actions.retry.max_age,
        Some(Duration::from_secs(3 * 24 * 3600))
    );
}

#[test]
fn the_deploy_example_states_the_defaults() {
    // Every key of the example that is not a site's choice (paths, sources, credentials)
    // holds its default, as its comments say.
    let example = parse(include_str!("../../../../deploy/gancho.toml"), "deploy").unwrap();
    let defaults = parse("", "t").unwrap();
    assert_eq!(example.listen, defaults.listen);
    assert_eq!(example.store.fsync, defaults.store.fsync);
    assert_eq!(example.store.cache_capacity, defaults.store.cache_capacity);
    assert_eq!(example.store, defaults.store);
    assert_eq!(example.engine, defaults.engine);
    assert_eq!(example.actions.retry, defaults.actions.retry);
    assert_eq!(
        example.ingress.max_body_bytes,
        defaults.ingress.max_body_bytes
    );
    assert_eq!(example.ingress.workers, defaults.ingress.workers);
    assert_eq!(
        example.ingress.shutdown_grace,
        defaults.ingress.shutdown_grace
    );
    assert_eq!(
        example.actions.email.timeout,
        defaults.actions.email.timeout
    );
    assert_eq!(example.actions.email.limits, defaults.actions.email.limits);
    assert_eq!(example.actions.sms.timeout, defaults.actions.sms.timeout);
    assert_eq!(example.actions.http.timeout, defaults.actions.http.timeout);
    assert_eq!(example.actions.http.limits, defaults.actions.http.limits);
    assert_eq!(
        example.actions.http.per_host,
        defaults.actions.http.per_host
    );
    assert_eq!(example.actions.retry, defaults.actions.retry);
}

#[test]
fn debug_output_redacts_every_secret() {
    let text = include_str!("../../../../deploy/gancho.toml");
    let config = parse(text, "deploy/gancho.toml").unwrap();
    let debug = format!("{config:?}");
    for secret in [
        "change-me",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "smtps://shop%40example.com",
    ] {
        assert!(text.contains(secret));
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    assert!(debug.contains("<redacted>"));
}

#[test]
fn section_errors_carry_the_line_and_hide_secret_values() {
    for (text, want) in [
        (
            "listen = \"127.0.0.1:0\"\n[email]\ntimeout = \"soon\"\n",
            "t.toml:3: email.timeout: \"soon\": ",
        ),
        (
            "[retry]\ninitial = \"1s\"\nmax_age = \"2 fortnights\"\n",
            "t.toml:3: retry.max_age: \"2 fortnights\": ",
        ),
        (
            "\n[sms]\nprovider = \"twilio\"\nauth_token = \"t\"\nfrom = \"+1\"\n",
            "t.toml:2: sms.account_sid: required for provider twilio",
        ),
        (
            "[sms]\nprovider = \"twilio\"\nacount_sid = \"AC1\"\n",
            "t.toml:3: sms.acount_sid: unknown field `acount_sid`",
        ),
        (
            "[sms]\nprovider = \"pigeon\"\n",
            "t.toml:2: sms.provider: unknown variant `pigeon`",
        ),
        (
            "[sms]\nprovider = \"twilio\"\nbase_url = \"ftp://x\"\n",
            "t.toml:1: sms.base_url: \"ftp://x\" is not an http(s) URL",
        ),
        (
            "[http]\nsigning_secret = 12345\n",
            "t.toml:2: http.signing_secret: invalid type: integer, expected a string",
        ),
        (
            "[sources.m]\nkind = \"mailjet\"\nbasic_auth = { user = \"u\", password = 12345 }\n",
            "t.toml:3: sources.m.basic_auth.password: invalid type: integer",
        ),
        (
            "[sources.m]\nkind = \"mailjet\"\nbasic_auth = { user = \"u\", password = \"p\", password_env = \"P\" }\n",
            "t.toml:3: sources.m.basic_auth.password: give at most one of password, password_env, password_file",
        ),
    ] {
        let got = err(text);
        assert!(got.starts_with(want), "{text:?}\n got: {got}\nwant: {want}");
        assert!(!got.contains("12345"), "{got}");
        assert!(!got.contains('\n'), "{got:?} is not one line");
    }
}

#[test]
fn secrets_are_read_from_the_environment_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-a-file\r\n").unwrap();
    // Cargo sets CARGO_PKG_NAME for the tests it runs, as it does for the build.
    let text = format!(
        "[sms]\nprovider = \"twilio\"\naccount_sid = \"AC1\"\nauth_token_file = {:?}\nfrom = \"+1\"\n\
         [sources.m]\nkind = \"mailjet\"\nbasic_auth = {{ user = \"u\", password_env = \"CARGO_PKG_NAME\" }}\n",
        file.display().to_string(),
    );
    let config = parse(&text, "t").unwrap();
    let gancho_actions::SmsProvider::Twilio { auth_token, .. } = &config.actions.sms.provider
    else {
        panic!("not twilio: {:?}", config.actions.sms.provider);
    };
    assert_eq!(auth_token.expose(), Some("from-a-file"));
    let auth = config.ingress.sources[0].auth.as_ref().unwrap();
    assert_eq!(auth.password, env!("CARGO_PKG_NAME"));

    let missing = dir.path().join("missing").display().to_string();
    let got = err(&format!("[email]\nsmtp_url_file = {missing:?}\n"));
    assert!(
        got.starts_with("t.toml: email.smtp_url_file: cannot read "),
        "{got}"
    );
    std::fs::write(&file, "\n").unwrap();
    assert!(err(&text).starts_with("t.toml: sms.auth_token: is empty"));
}

#[test]
fn action_sections_are_checked() {
    for (text, expected) in [
        (
            "[email]\nsmtp_url = \"http://mail.example.com\"\n",
            "email.smtp_url: must be smtp://",
        ),
        (
            "[email]\nsmtp_url = \"smtp://mail.example.com?tls=maybe\"\n",
            "email.smtp_url: tls= takes",
        ),
        ("[email]\nfrom = \"not an address\"\n", "email.from:"),
        (
            "[sms]\nprovider = \"twilio\"\naccount_sid = \"AC1\"\nauth_token = \"t\"\n",
            "sms.from: twilio needs exactly one of from, messaging_service_sid",
        ),
        (
            "[sms]\nprovider = \"vonage\"\napi_key = \"k\"\nfrom = \"Shop\"\n",
            "sms.api_secret: required for provider vonage",
        ),
        (
            "[http]\nsigning_secret = \"whsec_!!\"\n",
            "http.signing_secret:",
        ),
        (
            "[http]\nper_host = 0\n",
            "http.per_host: must be at least 1",
        ),
        ("[retry]\nmax = \"soon\"\n", "retry.max:"),
        (
            "[email]\nsmtp_url = \"smtp://a.example\"\nsmtp_url_env = \"X\"\n",
            "email.smtp_url: give at most one of",
        ),
    ] {
        let message = err(text);
        assert!(message.contains(expected), "{text}: {message}");
    }
}

fn err(text: &str) -> String {
    parse(text, "t.toml").unwrap_err().to_string()
}

#[test]
fn errors_name_the_key_in_one_line() {
    let cases = [
        (
            "listen = \"nowhere\"",
            "t.toml: listen: \"nowhere\" is not an address",
        ),
        ("lisen = \"x\"", "t.toml:1: lisen: unknown field `lisen`"),
        (
            "[sources.bank]\nkind = \"json\"\n",
            "t.toml: sources.bank.type: required for kind \"json\"",
        ),
        (
            "[sources.bank]\nkind = \"json\"\ntype = \"kind\"\n",
            "t.toml: sources.bank.type: \"kind\" is not a JSON pointer",
        ),
        (
            "[sources.m]\nkind = \"mailjet\"\ntype = \"/x\"\n",
            "t.toml: sources.m.type: only sources of kind \"json\"",
        ),
        (
            "[sources.m]\nkind = \"smtp\"\n",
            "t.toml:2: sources.m.kind: unknown variant `smtp`",
        ),
        (
            "[sources.m]\nkind = \"mailjet\"\nbasic_auth = { user = \"u\" }\n",
            "t.toml: sources.m.basic_auth: give exactly one of",
        ),
        (
            "[sources.m]\nkind = \"mailjet\"\nbasic_auth = { user = \"u\", password_env = \"GANCHO_TEST_SURELY_UNSET\" }\n",
            "t.toml: sources.m.basic_auth.password_env: environment variable GANCHO_TEST_SURELY_UNSET is not set",
        ),
        (
            "[sources.\"a b\"]\nkind = \"mailjet\"\n",
            "t.toml: sources.a b: a source name may hold only",
        ),
        (
            "[sources.cron]\nkind = \"mailjet\"\n",
            "t.toml: sources.cron: the source name \"cron\" is reserved",
        ),
        (
            "shutdown_grace = \"soon\"",
            "t.toml:1: shutdown_grace: \"soon\"",
        ),
        (
            "[store]\nfsync = \"yes\"\n",
            "t.toml:2: store.fsync: invalid type",
        ),
        (
            "[store]\ncache_mb = 0\n",
            "t.toml:1: store.cache_mb: must be at least 1",
        ),
    ];
    for (text, want) in cases {
        let got = err(text);
        assert!(got.starts_with(want), "{text:?}\n got: {got}\nwant: {want}");
        assert!(!got.contains('\n'), "{got:?} is not one line");
    }
}

#[test]
fn password_file_is_read_without_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret\n").unwrap();
    let text = format!(
        "[sources.m]\nkind = \"mailjet\"\nbasic_auth = {{ user = \"u\", password_file = {:?} }}\n",
        file.display().to_string()
    );
    let config = parse(&text, "t").unwrap();
    assert_eq!(
        config.ingress.sources[0].auth.as_ref().unwrap().password,
        "s3cret"
    );
}

/// The `[cluster]` example in `deploy/gancho.toml`, commented out there, parses once
/// uncommented.
#[test]
fn the_deploy_examples_cluster_section_parses_uncommented() {
    let text = include_str!("../../../../deploy/gancho.toml");
    let (before, example) = text.split_once("# [cluster]\n").unwrap();
    let mut uncommented = format!("{before}[cluster]\n");
    for line in example.lines() {
        let line = line.strip_prefix("# ").unwrap_or(line);
        // `key = value` lines; the prose between them stays out.
        let is_key = line.split_once(" = ").is_some_and(|(key, _)| {
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        });
        if is_key {
            uncommented.push_str(line);
            uncommented.push('\n');
        }
    }
    let config = parse(&uncommented, "deploy/gancho.toml, [cluster] uncommented").unwrap();
    let cluster = config.cluster.unwrap();
    assert_eq!(cluster.node, "gancho-1");
    assert_eq!(cluster.partitions, 16);
    assert_eq!(cluster.lease, Duration::from_secs(10));
    assert_eq!(cluster.nats.len(), 3);
    assert_eq!(cluster.monitor.len(), 3);
    assert_eq!(
        cluster.auth,
        gancho_cluster::NatsAuth::Creds("/etc/gancho/nats.creds".into())
    );
}
