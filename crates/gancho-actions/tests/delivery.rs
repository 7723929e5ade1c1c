//! Delivery against real peers: an SMTP server, HTTP servers speaking Twilio's and Vonage's
//! wire formats (replies from `tests/fixtures`), and an HTTP receiver. Actions go into a real
//! store's outbox as the engine puts them there; the executor runs as in the daemon.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use gancho_actions::{
    ActionsConfig, ActionsHandle, EmailTransport, RetryPolicy, SmsProvider, sign_webhook,
};
use gancho_core::{
    Action, ActionRequest, Clock as _, EmailAction, HttpAction, SmsAction, SystemClock, action_id,
};
use gancho_state::{Change, DeadLetter, EngineState, StoreConfig};
use gancho_testkit::{HttpReceiver, Reply, SmtpServer, SmtpTls, wait_until};

const WAIT: Duration = Duration::from_secs(20);

fn fixture(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

struct World {
    dir: tempfile::TempDir,
    store: EngineState,
    config: ActionsConfig,
    seq: u64,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = EngineState::open(
            &dir.path().join("store"),
            &StoreConfig {
                fsync: false,
                cache_capacity: 16 << 20,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        let mut config = ActionsConfig::local(dir.path());
        config.http.allow_private = true;
        config.retry = RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            max_attempts: 5,
            max_age: None,
            dead_retention: None,
            sent_retention: None,
        };
        config.shutdown_grace = Duration::from_secs(2);
        World {
            dir,
            store,
            config,
            seq: 0,
        }
    }

    /// Commits actions as the engine does, each for an event of its own, and waits until they
    /// are durable.
    fn decide(&mut self, actions: Vec<Action>) -> Vec<ActionRequest> {
        let requests: Vec<ActionRequest> = actions
            .into_iter()
            .map(|action| {
                self.seq += 1;
                ActionRequest {
                    id: action_id("test", self.seq, 0),
                    rule: "test".to_owned(),
                    event_seq: self.seq,
                    position: 0,
                    decided_ms: 0,
                    action,
                }
            })
            .collect();
        let changes: Vec<Change> = requests.iter().cloned().map(Change::PutAction).collect();
        let state = &self.store;
        state.commit(changes, self.seq).unwrap();
        assert!(state.wait_durable(WAIT));
        requests
    }

    fn start(&self) -> ActionsHandle {
        gancho_actions::spawn(
            &self.store.outbox(),
            Arc::new(SystemClock),
            self.config.clone(),
        )
        .unwrap()
    }

    fn pending(&self) -> usize {
        self.store.outbox().pending_actions(0).unwrap().len()
    }

    fn dead(&self) -> Vec<DeadLetter> {
        self.store.outbox().dead_letters(0).unwrap()
    }

    fn wait_settled(&self) {
        assert!(
            wait_until(WAIT, || (self.pending() == 0).then_some(())).is_some(),
            "the outbox did not empty: {:?}",
            self.store.outbox().pending_actions(0).unwrap()
        );
    }
}

fn email(to: &str, subject: &str, html: Option<&str>) -> Action {
    Action::Email(EmailAction {
        to: vec![to.to_owned()],
        subject: subject.to_owned(),
        text: "Hola Ana,\n\nTu código: OPEN-1234\n.\nuna línea con punto\n".to_owned(),
        html: html.map(str::to_owned),
    })
}

fn sms(to: &str, text: &str) -> Action {
    Action::Sms(SmsAction {
        to: to.to_owned(),
        text: text.to_owned(),
    })
}

fn http(url: &str, json: serde_json::Value) -> Action {
    Action::Http(HttpAction {
        method: "POST".to_owned(),
        url: url.to_owned(),
        headers: BTreeMap::from([("X-Shop".to_owned(), "eu".to_owned())]),
        json: Some(json),
        body: None,
    })
}

#[test]
fn email_goes_over_smtp_with_the_exact_message() {
    let smtp = SmtpServer::start();
    let mut world = World::new();
    world.config.email.transport = EmailTransport::Smtp {
        url: format!("smtp://shop:s3cret@{}", smtp.addr()).into(),
    };
    world.config.email.from = "Shop <shop@example.com>".to_owned();
    let decided = world.decide(vec![
        email("Ana <ana@example.com>", "Tu descuento ✓", None),
        email("bob@example.com", "Both", Some("<p>Hi <b>Bob</b></p>")),
    ]);
    let executor = world.start();
    let mails = smtp.wait_for_mails(2, WAIT);
    world.wait_settled();
    executor.stop();

    assert_eq!(mails.len(), 2, "{:?}", smtp.transactions());
    let (ana, bob) = if mails[0].to == ["ana@example.com"] {
        (&mails[0], &mails[1])
    } else {
        (&mails[1], &mails[0])
    };
    assert_eq!(ana.from, "shop@example.com");
    assert_eq!(ana.to, ["ana@example.com"]);
    assert_eq!(ana.user.as_deref(), Some("shop"));
    assert_eq!(ana.header("From").unwrap(), "Shop <shop@example.com>");
    assert_eq!(ana.header("To").unwrap(), "Ana <ana@example.com>");
    assert_eq!(
        ana.header("Message-ID").unwrap(),
        format!("<{}@example.com>", decided[0].id)
    );
    assert!(ana.header("Date").is_some());
    // UTF-8 subject, encoded as RFC 2047 says.
    let subject = ana.header("Subject").unwrap();
    assert!(subject.contains("=?utf-8?b?"), "{subject}");
    assert!(
        ana.header("Content-Type")
            .unwrap()
            .starts_with("text/plain; charset=utf-8")
    );
    assert_eq!(
        ana.header("Content-Transfer-Encoding").unwrap(),
        "quoted-printable"
    );
    let body = ana.data.split_once("\r\n\r\n").unwrap().1;
    // The exact text, quoted-printable; its line of a lone dot survived SMTP's dot-stuffing.
    assert_eq!(
        body.trim_end(),
        "Hola Ana,\r\n\r\nTu c=C3=B3digo: OPEN-1234\r\n.\r\nuna l=C3=ADnea con punto"
    );

    assert!(
        bob.header("Content-Type")
            .unwrap()
            .starts_with("multipart/alternative")
    );
    assert!(bob.data.contains("Content-Type: text/plain"));
    assert!(bob.data.contains("Content-Type: text/html"));
    assert!(bob.data.contains("<p>Hi <b>Bob</b></p>"));
    assert!(world.dead().is_empty());
}

/// Where the executor holds a retry before sending it, in test builds.
const HOLD_RETRY: &str = "actions.send.retry";

/// Runs `test` alone in a process of its own with the first retry held
/// (`actions.send.retry`: fail points are global to a process) until it releases it.
fn with_a_retry_held(name: &str, test: impl FnOnce()) {
    let dir = tempfile::tempdir().unwrap();
    gancho_testkit::crash::run_in_child(module_path!(), name, dir.path(), |_| {
        gancho_core::failpoint::set(HOLD_RETRY, "1*pause").unwrap();
        test();
    });
}

/// The item's delivery record once its first retry is held: what the outbox shows meanwhile.
fn held_retry(world: &World) -> gancho_state::Delivery {
    assert!(
        gancho_core::failpoint::wait_hits(HOLD_RETRY, 1, WAIT),
        "no retry came"
    );
    let items = world.store.outbox().pending_actions(0).unwrap();
    let delivery = items[0].delivery.clone().unwrap();
    gancho_core::failpoint::release(HOLD_RETRY);
    delivery
}

#[test]
fn smtp_451_twice_then_250_delivers_once_after_three_tries() {
    with_a_retry_held(
        "smtp_451_twice_then_250_delivers_once_after_three_tries",
        smtp_451_twice_then_250,
    );
}

fn smtp_451_twice_then_250() {
    let smtp = SmtpServer::start();
    smtp.refuse_next(&[
        (451, "4.7.1 greylisted, try again"),
        (451, "4.7.1 greylisted, try again"),
    ]);
    let mut world = World::new();
    world.config.email.transport = EmailTransport::Smtp {
        url: smtp.url().into(),
    };
    world.decide(vec![email("ana@example.com", "Hi", None)]);
    let executor = world.start();
    // While it waits for its second try, the outbox shows why it failed.
    let seen = held_retry(&world);
    assert_eq!(seen.attempts.len(), 1, "{seen:?}");
    assert!(seen.attempts[0].error.contains("451"), "{seen:?}");
    assert!(!seen.attempts[0].permanent);
    let mails = smtp.wait_for_mails(1, WAIT);
    world.wait_settled();
    executor.stop();
    assert_eq!(mails.len(), 1);
    let codes: Vec<u16> = smtp.transactions().iter().map(|t| t.code).collect();
    assert_eq!(codes, [451, 451, 250]);
    assert!(world.dead().is_empty());
}

#[test]
fn smtp_550_is_a_dead_letter_at_once() {
    let smtp = SmtpServer::start();
    smtp.refuse_next(&[(550, "5.1.1 no such user")]);
    let mut world = World::new();
    world.config.email.transport = EmailTransport::Smtp {
        url: smtp.url().into(),
    };
    world.decide(vec![email("nobody@example.com", "Hi", None)]);
    let executor = world.start();
    let dead = wait_until(WAIT, || Some(world.dead()).filter(|d| !d.is_empty())).unwrap();
    executor.stop();
    assert_eq!(dead[0].attempts.len(), 1);
    assert!(dead[0].attempts[0].permanent);
    assert!(dead[0].attempts[0].error.contains("550"), "{dead:?}");
    assert_eq!(smtp.transactions().len(), 1);
    assert_eq!(world.pending(), 0);
}

#[test]
fn without_smtp_mail_is_written_as_eml_files() {
    let mut world = World::new();
    let decided = world.decide(vec![email("ana@example.com", "Hi", None)]);
    let executor = world.start();
    world.wait_settled();
    executor.stop();
    let path = world
        .dir
        .path()
        .join("mail")
        .join(format!("{}.eml", decided[0].id));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("To: ana@example.com"), "{text}");
    assert!(text.contains(&format!("Message-ID: <{}@", decided[0].id)));
}

fn twilio() -> HttpReceiver {
    HttpReceiver::start(|request| {
        let auth = request.header("authorization").unwrap_or_default();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ACtest:token")
        );
        if auth != expected {
            return Reply::json(401, &fixture("twilio/error_401_20003.json"));
        }
        if request.form().get("To").map(String::as_str) == Some("+34999999999") {
            return Reply::json(400, &fixture("twilio/error_400_21211.json"));
        }
        Reply::json(201, &fixture("twilio/create_message_201_queued.json"))
    })
}

#[test]
fn sms_goes_through_twilio_and_its_errors_are_kept() {
    let server = twilio();
    let mut world = World::new();
    world.config.sms.provider = SmsProvider::Twilio {
        base_url: server.url(""),
        account_sid: "ACtest".to_owned(),
        auth_token: "token".into(),
        from: Some("+15017122661".to_owned()),
        messaging_service_sid: None,
    };
    world.decide(vec![
        sms("+34600000001", "Retirada de 120 EUR ✓"),
        sms("+34999999999", "x"),
    ]);
    let executor = world.start();
    let dead = wait_until(WAIT, || Some(world.dead()).filter(|d| !d.is_empty())).unwrap();
    world.wait_settled();
    executor.stop();

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let ok = requests
        .iter()
        .find(|r| r.form()["To"] == "+34600000001")
        .unwrap();
    assert_eq!(ok.method, "POST");
    assert_eq!(ok.path, "/2010-04-01/Accounts/ACtest/Messages.json");
    assert!(
        ok.header("content-type")
            .unwrap()
            .starts_with("application/x-www-form-urlencoded")
    );
    let form = ok.form();
    assert_eq!(form["From"], "+15017122661");
    assert_eq!(form["Body"], "Retirada de 120 EUR ✓");
    // Twilio's error body is read and kept, and a 400 is not retried.
    assert_eq!(dead.len(), 1);
    let error = &dead[0].attempts[0].error;
    assert!(
        error.contains("21211") && error.contains("not a valid phone number"),
        "{error}"
    );
}

#[test]
fn sms_goes_through_vonage_whose_200_can_be_a_failure() {
    let server = HttpReceiver::start(|request| {
        if request.form()["to"] == "34600000002" {
            Reply::json(200, &fixture("vonage/sms_error_http200.json"))
        } else {
            Reply::json(200, &fixture("vonage/sms_success.json"))
        }
    });
    let mut world = World::new();
    world.config.sms.provider = SmsProvider::Vonage {
        base_url: server.url("/"),
        api_key: "key".to_owned(),
        api_secret: "secret".into(),
        from: "Shop".to_owned(),
    };
    let decided = world.decide(vec![
        sms("+34600000001", "hola"),
        sms("+34600000002", "adiós"),
    ]);
    let executor = world.start();
    let dead = wait_until(WAIT, || Some(world.dead()).filter(|d| !d.is_empty())).unwrap();
    world.wait_settled();
    executor.stop();
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "status 2 is permanent: not retried");
    let first = requests
        .iter()
        .find(|r| r.form()["to"] == "34600000001")
        .unwrap();
    assert_eq!(first.path, "/sms/json");
    let form = first.form();
    assert_eq!(form["api_key"], "key");
    assert_eq!(form["from"], "Shop");
    assert_eq!(form["text"], "hola");
    assert_eq!(form["client-ref"], decided[0].id);
    let second = requests
        .iter()
        .find(|r| r.form()["to"] == "34600000002")
        .unwrap();
    assert_eq!(second.form()["type"], "unicode");
    assert!(dead[0].attempts[0].error.contains("Missing to param"));
}

#[test]
fn http_calls_carry_the_id_and_a_valid_signature() {
    let receiver = HttpReceiver::ok();
    let mut world = World::new();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    world.config.http.signing_secret = Some(secret.into());
    let decided = world.decide(vec![http(
        &receiver.url("/hooks/discount?x=1"),
        serde_json::json!({"email": "ana@example.com", "id": 19421777835146490u64}),
    )]);
    let executor = world.start();
    let requests = receiver.wait_for(1, WAIT);
    world.wait_settled();
    executor.stop();
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/discount?x=1");
    assert_eq!(request.header("x-shop"), Some("eu"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.header("idempotency-key"),
        Some(decided[0].id.as_str())
    );
    assert_eq!(request.header("webhook-id"), Some(decided[0].id.as_str()));
    assert_eq!(
        request.text(),
        r#"{"email":"ana@example.com","id":19421777835146490}"#
    );
    let timestamp: i64 = request
        .header("webhook-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    assert!((timestamp - SystemClock.now().timestamp()).abs() < 60);
    let expected = sign_webhook(secret, &decided[0].id, timestamp, &request.body).unwrap();
    assert_eq!(request.header("webhook-signature"), Some(expected.as_str()));
}

#[test]
fn a_503_with_retry_after_is_retried_no_sooner() {
    let receiver = HttpReceiver::start(|_| Reply::status(200));
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    receiver.set_handler(move |_| {
        if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::status(503).header("Retry-After", "1")
        } else {
            Reply::status(200)
        }
    });
    let mut world = World::new();
    world.decide(vec![http(&receiver.url("/x"), serde_json::json!({}))]);
    let executor = world.start();
    let requests = receiver.wait_for(2, WAIT);
    world.wait_settled();
    executor.stop();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at - requests[0].at;
    // The backoff alone would be 25-50 ms.
    assert!(gap >= Duration::from_millis(990), "retried after {gap:?}");
}

#[test]
fn a_400_goes_to_dead_letters_and_dead_retry_delivers_it_once_fixed() {
    let receiver = HttpReceiver::start(|_| Reply::status(400).body("bad coupon"));
    let mut world = World::new();
    let decided = world.decide(vec![http(&receiver.url("/x"), serde_json::json!({"n": 1}))]);
    let executor = world.start();
    let dead = wait_until(WAIT, || Some(world.dead()).filter(|d| !d.is_empty())).unwrap();
    assert_eq!(receiver.requests().len(), 1, "a 400 is not retried");
    assert_eq!(dead[0].action, decided[0]);
    assert!(dead[0].attempts[0].error.contains("400"));
    assert!(dead[0].attempts[0].error.contains("bad coupon"));

    receiver.set_handler(|_| Reply::status(204));
    let state = world.store.outbox();
    assert_eq!(
        state
            .retry_dead(Some(&decided[0].id), SystemClock.now().timestamp_millis())
            .unwrap(),
        1
    );
    let requests = receiver.wait_for(2, WAIT);
    world.wait_settled();
    executor.stop();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].header("idempotency-key"),
        Some(decided[0].id.as_str())
    );
    assert!(world.dead().is_empty());
}

#[test]
fn the_ssrf_guard_refuses_loopback_unless_allowed() {
    let receiver = HttpReceiver::ok();
    let mut world = World::new();
    world.config.http.allow_private = false;
    world.decide(vec![
        http(&receiver.url("/x"), serde_json::json!({})),
        http(
            &format!("http://localhost:{}/y", receiver.addr().port()),
            serde_json::json!({}),
        ),
    ]);
    let executor = world.start();
    let dead = wait_until(WAIT, || Some(world.dead()).filter(|d| d.len() == 2)).unwrap();
    executor.stop();
    assert!(receiver.requests().is_empty());
    for letter in &dead {
        let error = &letter.attempts[0].error;
        assert!(error.contains("SSRF guard"), "{error}");
        assert!(letter.attempts[0].permanent);
    }
}

#[test]
fn a_slow_host_does_not_stall_the_others() {
    let slow = HttpReceiver::start(|_| Reply::status(200).after(Duration::from_secs(3)));
    let fast = HttpReceiver::ok();
    let mut world = World::new();
    world.config.http.limits.concurrency = 4;
    world.config.http.per_host = 2;
    let mut actions: Vec<Action> = (0..10)
        .map(|n| http(&slow.url(&format!("/{n}")), serde_json::json!({})))
        .collect();
    actions.extend((0..10).map(|n| http(&fast.url(&format!("/{n}")), serde_json::json!({}))));
    world.decide(actions);
    let started = Instant::now();
    let executor = world.start();
    let fast_done = fast.wait_for(10, WAIT);
    let took = started.elapsed();
    assert_eq!(fast_done.len(), 10);
    assert!(
        took < Duration::from_secs(3),
        "the fast host waited for the slow one: {took:?}"
    );
    assert!(slow.requests().len() <= 2, "more than per_host at once");
    executor.stop();
}

#[test]
fn redirects_are_not_followed() {
    let target = HttpReceiver::ok();
    let location = target.url("/elsewhere");
    let receiver = HttpReceiver::start(move |_| Reply::status(307).header("Location", &location));
    let mut world = World::new();
    world.decide(vec![http(&receiver.url("/x"), serde_json::json!({}))]);
    let executor = world.start();
    let dead = wait_until(WAIT, || Some(world.dead()).filter(|d| !d.is_empty())).unwrap();
    executor.stop();
    let error = &dead[0].attempts[0].error;
    assert!(
        error.contains("307") && error.contains("/elsewhere"),
        "{error}"
    );
    assert!(
        target.requests().is_empty(),
        "the signature and body stay with their host"
    );
}

#[test]
fn a_failure_that_lasts_ends_in_dead_letters_after_max_attempts_with_every_try() {
    let receiver = HttpReceiver::start(|_| Reply::status(502).body("bad gateway"));
    let mut world = World::new();
    world.config.retry.max_attempts = 3;
    world.decide(vec![http(&receiver.url("/x"), serde_json::json!({}))]);
    let executor = world.start();
    let dead = wait_until(WAIT, || Some(world.dead()).filter(|d| !d.is_empty())).unwrap();
    executor.stop();
    assert_eq!(receiver.requests().len(), 3);
    let attempts = &dead[0].attempts;
    assert_eq!(attempts.len(), 3);
    assert!(
        attempts
            .iter()
            .all(|a| !a.permanent && a.error.contains("502"))
    );
    assert!(attempts.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    assert_eq!(world.pending(), 0);
}

#[test]
fn the_channel_rate_limit_spaces_sends() {
    let receiver = HttpReceiver::ok();
    let mut world = World::new();
    world.config.http.limits.rate_per_sec = 20.0;
    world.decide(
        (0..6)
            .map(|n| http(&receiver.url(&format!("/{n}")), serde_json::json!({})))
            .collect(),
    );
    let executor = world.start();
    let requests = receiver.wait_for(6, WAIT);
    executor.stop();
    assert_eq!(requests.len(), 6);
    // 20/s: starts 50 ms apart, so six take at least 250 ms from the first to the last.
    let spread = requests[5].at - requests[0].at;
    assert!(spread >= Duration::from_millis(240), "{spread:?}");
}

#[test]
fn stop_waits_for_a_send_in_flight_within_the_grace_period() {
    let receiver = HttpReceiver::start(|_| Reply::status(200).after(Duration::from_millis(800)));
    let mut world = World::new();
    world.config.shutdown_grace = Duration::from_secs(10);
    world.decide(vec![http(&receiver.url("/x"), serde_json::json!({}))]);
    let executor = world.start();
    assert_eq!(receiver.wait_for(1, WAIT).len(), 1);
    executor.stop();
    // The reply came within the grace period: delivered, not left for the next start.
    assert_eq!(world.pending(), 0);
}

#[test]
fn a_send_abandoned_at_stop_is_sent_again_after_the_restart() {
    let receiver = HttpReceiver::start(|_| Reply::status(200).after(Duration::from_secs(5)));
    let mut world = World::new();
    world.config.shutdown_grace = Duration::from_millis(300);
    let decided = world.decide(vec![http(&receiver.url("/x"), serde_json::json!({}))]);
    let executor = world.start();
    assert_eq!(receiver.wait_for(1, WAIT).len(), 1);
    let stopping = Instant::now();
    executor.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stop waited past its grace"
    );
    assert_eq!(world.pending(), 1, "abandoned, not lost");

    receiver.set_handler(|_| Reply::status(200));
    let executor = world.start();
    let requests = receiver.wait_for(2, WAIT);
    world.wait_settled();
    executor.stop();
    assert_eq!(requests.len(), 2);
    assert!(
        requests
            .iter()
            .all(|r| r.header("idempotency-key") == Some(decided[0].id.as_str()))
    );
}

#[test]
fn email_goes_over_implicit_tls_and_starttls_to_a_server_of_a_private_ca() {
    for mode in [SmtpTls::Implicit, SmtpTls::StartTls] {
        let smtp = SmtpServer::start_tls(mode);
        let mut world = World::new();
        let ca = world.dir.path().join("ca.pem");
        std::fs::write(&ca, smtp.ca_pem().unwrap()).unwrap();
        world.config.email.ca_file = Some(ca);
        let url = smtp.url().replacen("://", "://shop:s3cret@", 1);
        world.config.email.transport = EmailTransport::Smtp { url: url.into() };
        world.decide(vec![email("ana@example.com", "Hi", None)]);
        let executor = world.start();
        let mails = smtp.wait_for_mails(1, WAIT);
        world.wait_settled();
        executor.stop();
        assert_eq!(mails.len(), 1, "{mode:?}: {:?}", world.dead());
        assert!(mails[0].tls, "{mode:?}: sent in the clear");
        assert_eq!(mails[0].user.as_deref(), Some("shop"));
    }
}

#[test]
fn a_server_certificate_no_trusted_ca_signed_is_refused() {
    let smtp = SmtpServer::start_tls(SmtpTls::Implicit);
    let mut world = World::new();
    // The system's trust store does not know the test CA.
    world.config.email.transport = EmailTransport::Smtp {
        url: smtp.url().into(),
    };
    world.config.retry.max_attempts = 1;
    world.decide(vec![email("ana@example.com", "Hi", None)]);
    let executor = match gancho_actions::spawn(
        &world.store.outbox(),
        Arc::new(SystemClock),
        world.config.clone(),
    ) {
        Ok(executor) => executor,
        // A machine without a system trust store refuses TLS from the start, which is fine.
        Err(err) => {
            assert!(err.to_string().contains("CA certificates"), "{err}");
            return;
        }
    };
    let dead = wait_until(WAIT, || Some(world.dead()).filter(|d| !d.is_empty())).unwrap();
    executor.stop();
    assert!(smtp.mails().is_empty());
    assert!(dead[0].attempts[0].error.contains("smtp"), "{dead:?}");
}

#[test]
fn a_call_past_its_timeout_is_retried_and_a_raw_body_goes_as_is() {
    with_a_retry_held(
        "a_call_past_its_timeout_is_retried_and_a_raw_body_goes_as_is",
        a_call_past_its_timeout,
    );
}

fn a_call_past_its_timeout() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let receiver = HttpReceiver::start(move |_| {
        if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::status(200).after(Duration::from_secs(3))
        } else {
            Reply::status(200)
        }
    });
    let mut world = World::new();
    world.config.http.timeout = Duration::from_millis(300);
    world.decide(vec![Action::Http(HttpAction {
        method: "PUT".to_owned(),
        url: receiver.url("/raw"),
        headers: BTreeMap::from([("Content-Type".to_owned(), "text/csv".to_owned())]),
        json: None,
        body: Some("a,b\n1,2\n".to_owned()),
    })]);
    let executor = world.start();
    // While it waits for its second try, the outbox says the first timed out.
    let seen = held_retry(&world);
    assert!(seen.attempts[0].error.contains("timed out"), "{seen:?}");
    let requests = receiver.wait_for(2, WAIT);
    world.wait_settled();
    executor.stop();
    assert_eq!(requests[1].method, "PUT");
    assert_eq!(requests[1].header("content-type"), Some("text/csv"));
    assert_eq!(requests[1].text(), "a,b\n1,2\n");
}

#[test]
fn nothing_is_sent_for_an_action_above_the_durable_cursor() {
    let dir = tempfile::tempdir().unwrap();
    // Alone in a process: it holds the engine state's applier with a (global) fail point.
    gancho_testkit::crash::run_in_child(
        module_path!(),
        "nothing_is_sent_for_an_action_above_the_durable_cursor",
        dir.path(),
        |_| {
            use gancho_core::failpoint;
            let receiver = HttpReceiver::ok();
            let world = World::new();
            // The commit's writes are in the tree, its sync not done: the executor can read the
            // item, and must not send it, since a crash now would undo the decision.
            failpoint::set("state.apply.before_sync", "pause").unwrap();
            let action = ActionRequest {
                id: action_id("test", 1, 0),
                rule: "test".to_owned(),
                event_seq: 1,
                position: 0,
                decided_ms: 0,
                action: http(&receiver.url("/x"), serde_json::json!({})),
            };
            world
                .store
                .commit(vec![Change::PutAction(action)], 1)
                .unwrap();
            assert!(failpoint::wait_hits("state.apply.before_sync", 1, WAIT));
            assert_eq!(world.store.durable_cursor(), 0);
            let executor = world.start();
            // The HTTP lane has read the outbox twice since: the item was there to be seen.
            let read = failpoint::hits("outbox.fresh_actions.http");
            assert!(failpoint::wait_hits(
                "outbox.fresh_actions.http",
                read + 2,
                WAIT
            ));
            assert!(receiver.requests().is_empty(), "sent before it was durable");
            failpoint::release("state.apply.before_sync");
            assert_eq!(receiver.wait_for(1, WAIT).len(), 1);
            world.wait_settled();
            executor.stop();
        },
    );
}
