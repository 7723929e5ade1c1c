//! The web dashboard in a real browser (`browser.rs`), against the real binary: signing in,
//! the shipped rules, the live tail, an event's trace, disabling a rule, a dead letter retried
//! and delivered, and text from outside that must never run as script. Each page visited is
//! saved as a screenshot under `CARGO_TARGET_TMPDIR/browser-screenshots/`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use fantoccini::key::Key;
use gancho_testkit::{HttpReceiver, Reply};

use crate::browser::{Browser, with_browser};
use crate::support::{Request, Setup, call_rule, withdrawal, write_rule};

const TOKEN: &str = "a-dashboard-token-0123456789";

fn admin_section() -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n")
}

/// The shipped rules (`rules/*.rhai`) copied into the setup's rules folder.
fn ship_rules(setup: &Setup) -> Vec<String> {
    let dir = setup.dir.path().join("rules");
    std::fs::create_dir_all(&dir).unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(crate::support::repo_root().join("rules")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rhai") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
            names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    names
}

fn now_s() -> i64 {
    std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .map(|d| d.as_secs() as i64)
        .unwrap()
}

/// A Mailjet event of `kind` for `email` and message `id`, timed now.
fn mailjet(kind: &str, email: &str, id: u64) -> Vec<u8> {
    serde_json::json!({ "event": kind, "time": now_s(), "email": email, "MessageID": id })
        .to_string()
        .into_bytes()
}

/// The path of the page the browser is on.
async fn path(browser: &Browser) -> String {
    browser
        .client
        .current_url()
        .await
        .unwrap()
        .path()
        .to_owned()
}

async fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser
        .client
        .goto(&format!("{base}/sign-in"))
        .await
        .unwrap();
    browser.fill("#token", token).await;
    browser.click("form button[type=submit]").await;
}

/// Loads `url` again until the page's text satisfies `ready` (up to `timeout`).
async fn reload_until(
    browser: &Browser,
    url: &str,
    timeout: Duration,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        browser.client.goto(url).await.unwrap();
        let text = browser.text().await;
        if ready(&text) || Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn an_operator_signs_in_sees_the_rules_follows_an_event_live_and_disables_a_rule() {
    let setup = Setup::standard_with(&admin_section());
    let rules = ship_rules(&setup);
    let daemon = setup.start();
    let admin: SocketAddr = daemon.admin.unwrap();
    with_browser("operator", move |b| async move {
        let base = format!("http://{admin}");

        // Without a session, a page sends the browser to the sign-in form.
        b.client.goto(&format!("{base}/rules")).await.unwrap();
        assert_eq!(path(&b).await, "/sign-in");
        b.shot("sign-in").await;
        let violations = b.accessibility_violations().await;
        assert!(violations.is_empty(), "sign-in:\n{}", violations.join("\n"));
        sign_in(&b, &base, "not-the-token-0123456789").await;
        assert!(b.text().await.contains("Wrong token"));
        b.shot("sign-in-wrong").await;

        // The right token: the overview, its navigation, and a page light enough (each
        // resource counted whole, whether this load took it from the cache or not).
        sign_in(&b, &base, TOKEN).await;
        assert_eq!(path(&b).await, "/");
        let weight = b
            .eval(
                "const size = (r) => Math.max(r.transferSize, r.encodedBodySize); \
                 const n = performance.getEntriesByType('navigation')[0]; \
                 return performance.getEntriesByType('resource') \
                   .reduce((sum, r) => sum + size(r), size(n));",
            )
            .await
            .as_f64()
            .unwrap();
        eprintln!("overview transfer: {weight} bytes");
        assert!(weight > 0.0 && weight < 200_000.0, "{weight} bytes");
        for label in [
            "Overview",
            "Rules",
            "Events",
            "Outbox",
            "Dead letters",
            "Quarantine",
            "Timers",
        ] {
            b.client
                .find(Locator::XPath(&format!(
                    "//nav//a[normalize-space()='{label}']"
                )))
                .await
                .unwrap_or_else(|_| panic!("no link {label:?} in the navigation"));
        }

        // The shipped rules, each loaded.
        b.click("nav a[href='/rules']").await;
        let text = b.text().await;
        for rule in &rules {
            assert!(text.contains(rule.as_str()), "{rule} missing:\n{text}");
        }
        let loaded = b
            .client
            .find_all(Locator::Css("#rules td.status .ok"))
            .await
            .unwrap();
        assert_eq!(loaded.len(), rules.len(), "{text}");
        b.shot("rules").await;

        // The live tail shows an event within 2 s of its being posted.
        b.click("nav a[href='/events']").await;
        assert!(
            b.wait_text(Duration::from_secs(10), |t| t.contains("Live: new events"))
                .await,
            "the live tail did not connect"
        );
        assert_eq!(
            daemon
                .post_mailjet(&mailjet("sent", "ana@example.com", 501))
                .status,
            200
        );
        assert_eq!(
            daemon
                .post_mailjet(&mailjet("open", "ana@example.com", 501))
                .status,
            200
        );
        let posted = Instant::now();
        let row = "#live-tail tbody tr[data-seq='2']";
        loop {
            if b.client.find(Locator::Css(row)).await.is_ok() {
                break;
            }
            assert!(
                posted.elapsed() < Duration::from_secs(2),
                "the event did not appear in the live tail within 2 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("in the live tail after {:?}", posted.elapsed());
        b.shot("events").await;

        // Its page: the rule it woke and the action that rule decided, delivered.
        b.click(&format!("{row} a")).await;
        assert_eq!(path(&b).await, "/events/2");
        let url = format!("{base}/events/2");
        let text = reload_until(&b, &url, Duration::from_secs(20), |t| {
            t.contains("open-discount") && t.contains("delivered")
        })
        .await;
        assert!(text.contains("open-discount"), "{text}");
        assert!(text.contains("delivered"), "{text}");
        assert!(text.contains("ana@example.com"), "{text}");
        b.shot("event").await;
        b.click("article[aria-label='Run of rule open-discount'] h3 a")
            .await;
        assert_eq!(path(&b).await, "/rules/open-discount");
        assert!(
            b.client
                .find(Locator::Css("table.source .hl-k"))
                .await
                .is_ok()
        );
        b.shot("rule").await;

        // Disable a rule from its row; the row says so, and so does the CLI.
        b.click("nav a[href='/rules']").await;
        b.click("tr[data-rule='bounce-alert'] button").await;
        assert_eq!(path(&b).await, "/rules");
        // The engine takes the change within a second, and the page waits for it (5 s at
        // most); a slow machine may need a reload.
        let notice = b.text().await;
        assert!(notice.contains("Rule bounce-alert"), "{notice}");
        let status_of =
            "return document.querySelector(\"tr[data-rule='bounce-alert'] td.status\").innerText;";
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.eval(status_of).await != "disabled" && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            b.client.goto(&format!("{base}/rules")).await.unwrap();
        }
        assert_eq!(b.eval(status_of).await, "disabled", "{notice}");
        let listed = setup.json(&["rules", "--json"]);
        let bounce = listed["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "bounce-alert")
            .unwrap();
        assert_eq!(bounce["disabled"], true, "{listed}");
        b.shot("rules-disabled").await;

        for (page, name) in [
            ("/", "overview"),
            ("/outbox", "outbox"),
            ("/dead", "dead-letters"),
            ("/quarantine", "quarantine"),
            ("/timers", "timers"),
        ] {
            b.client.goto(&format!("{base}{page}")).await.unwrap();
            b.shot(name).await;
        }

        // Every page passes WCAG 2.1 A and AA as axe-core checks it (contrast, names, labels,
        // landmarks, structure).
        for page in [
            "/",
            "/rules",
            "/rules/open-discount",
            "/events",
            "/events?source=mailjet&type=open",
            "/events/2",
            "/outbox",
            "/dead",
            "/quarantine",
            "/timers",
        ] {
            b.client.goto(&format!("{base}{page}")).await.unwrap();
            // The figures stop refreshing, so axe sees one page throughout.
            b.eval("document.querySelectorAll('[data-live]').forEach(e => e.removeAttribute('data-live')); return null;").await;
            let violations = b.accessibility_violations().await;
            assert!(violations.is_empty(), "{page}:\n{}", violations.join("\n"));
        }

        // From the keyboard: the first Tab reaches "Skip to content", which moves the focus to
        // the page's content.
        b.client.goto(&format!("{base}/rules")).await.unwrap();
        let body = b.client.find(Locator::Css("body")).await.unwrap();
        body.send_keys(&Key::Tab.to_string()).await.unwrap();
        let focused = b.eval("return document.activeElement.textContent;").await;
        assert_eq!(focused, "Skip to content");
        let skip = b.client.find(Locator::Css("a.skip")).await.unwrap();
        skip.send_keys(&Key::Enter.to_string()).await.unwrap();
        let focused = b.eval("return document.activeElement.id;").await;
        assert_eq!(focused, "main");

        // A narrow screen: the navigation still reaches every page.
        b.client.set_window_size(390, 844).await.unwrap();
        b.client.goto(&format!("{base}/")).await.unwrap();
        b.shot("overview-phone").await;
        let overflow = b
            .eval("return document.documentElement.scrollWidth > window.innerWidth + 1;")
            .await;
        assert_eq!(overflow, false, "the overview scrolls sideways on a phone");
        b.client.set_window_size(1280, 1000).await.unwrap();

        // Signing out ends the session.
        b.click("form.signout button").await;
        assert_eq!(path(&b).await, "/sign-in");
        b.client.goto(&format!("{base}/")).await.unwrap();
        assert_eq!(path(&b).await, "/sign-in");
        drop(daemon);
    });
}

#[test]
fn a_dead_letter_is_retried_from_the_browser_and_delivered() {
    let receiver = HttpReceiver::start(|_| Reply::status(422).body("unknown account"));
    let setup = Setup::standard_with(&format!(
        "[http]\nallow_private = true\n\n{}",
        admin_section()
    ));
    call_rule(&setup, &receiver.url("/hook"));
    let daemon = setup.start();
    let admin = daemon.admin.unwrap();
    with_browser("dead-letters", move |b| async move {
        let base = format!("http://{admin}");
        sign_in(&b, &base, TOKEN).await;
        assert_eq!(daemon.post("bank", &withdrawal("w1")).status, 200);
        assert_eq!(daemon.post("bank", &withdrawal("w2")).status, 200);
        let url = format!("{base}/dead");
        let text = reload_until(&b, &url, Duration::from_secs(30), |t| {
            t.matches("unknown account").count() >= 2
        })
        .await;
        assert_eq!(text.matches("unknown account").count(), 2, "{text}");
        b.shot("dead-letters").await;

        // Fixed on the receiver's side (it answers slowly, so the item is seen in the outbox
        // before it is delivered).
        receiver.set_handler(|_| Reply::status(200).after(Duration::from_secs(3)));
        let first = b
            .client
            .find(Locator::Css("#dead tbody tr"))
            .await
            .unwrap()
            .attr("id")
            .await
            .unwrap()
            .unwrap();
        b.click(&format!("#{first} a.button")).await;
        assert!(b.text().await.contains("back in the outbox?"));
        b.shot("retry-confirm").await;
        let violations = b.accessibility_violations().await;
        assert!(violations.is_empty(), "{}", violations.join("\n"));
        b.click("form.confirm button[type=submit]").await;
        assert_eq!(path(&b).await, "/outbox");
        let text = b.text().await;
        assert!(
            text.contains("1 dead letter is back in the outbox."),
            "{text}"
        );
        assert!(
            b.client
                .find(Locator::Css(&format!("#outbox #{first}")))
                .await
                .is_ok(),
            "the retried item is not in the outbox:\n{text}"
        );
        b.shot("outbox-retried").await;

        // "Retry all" asks too, then puts the other back.
        b.client.goto(&url).await.unwrap();
        b.click("a.button[href='/dead/retry-all']").await;
        assert!(
            b.text()
                .await
                .contains("Put every dead letter back in the outbox (1 now)?")
        );
        b.click("form.confirm button[type=submit]").await;
        assert!(
            b.text()
                .await
                .contains("1 dead letter is back in the outbox.")
        );

        // Both delivered, as the event pages say.
        let delivered = receiver.wait_for(4, Duration::from_secs(30));
        assert_eq!(delivered.len(), 4, "two refused, two delivered");
        for seq in [1, 2] {
            let text = reload_until(
                &b,
                &format!("{base}/events/{seq}"),
                Duration::from_secs(20),
                |t| t.contains("delivered"),
            )
            .await;
            assert!(text.contains("delivered"), "{text}");
        }
        b.shot("event-delivered").await;
        drop(daemon);
    });
}

/// Text that would run if a page wrote it as HTML.
const HOSTILE_SCRIPT: &str = "<script>window.__xss=1</script>";
const HOSTILE_IMG: &str = "<img src=x onerror=\"window.__xss=2\">";

/// Nothing from outside ran, and no element came from it.
async fn nothing_ran(b: &Browser, page: &str) {
    let state = b
        .eval(
            "return [typeof window.__xss, document.images.length, \
             document.scripts.length];",
        )
        .await;
    assert_eq!(state[0], "undefined", "{page}: a script ran");
    assert_eq!(state[1], 0, "{page}: an <img> came from outside");
    assert_eq!(state[2], 1, "{page}: a <script> came from outside");
}

#[test]
fn what_came_from_outside_is_shown_as_text_and_never_runs() {
    let setup = Setup::standard_with(&admin_section());
    // A rule whose error carries the event's text.
    write_rule(
        &setup,
        "echo.rhai",
        "const ON = [\"bank.*\"];\nthrow event.note;\n",
    );
    let daemon = setup.start();
    let admin = daemon.admin.unwrap();
    with_browser("hostile", move |b| async move {
        let base = format!("http://{admin}");
        sign_in(&b, &base, TOKEN).await;
        b.client.goto(&format!("{base}/events")).await.unwrap();
        assert!(
            b.wait_text(Duration::from_secs(10), |t| t.contains("Live: new events"))
                .await
        );
        let hostile = serde_json::json!({
            "kind": "withdrawal",
            "at": now_s(),
            "id": HOSTILE_IMG,
            "account": HOSTILE_IMG,
            "note": format!("{HOSTILE_SCRIPT}{HOSTILE_IMG}"),
        });
        assert_eq!(
            daemon.post("bank", hostile.to_string().as_bytes()).status,
            200
        );
        // Not an event at all (no time): kept in quarantine, as sent.
        let refused = serde_json::json!([{ "kind": HOSTILE_SCRIPT, "id": "q1" }]);
        daemon.post("bank", refused.to_string().as_bytes());
        assert!(
            b.wait_text(Duration::from_secs(5), |t| t.contains(HOSTILE_IMG))
                .await,
            "the live tail did not show the event"
        );
        nothing_ran(&b, "live tail").await;

        let pages = [
            ("/events", "events"),
            ("/events/1", "event"),
            ("/rules", "rules"),
            ("/rules/echo", "rule"),
            ("/quarantine", "quarantine"),
        ];
        for (page, name) in pages {
            let url = format!("{base}{page}");
            let text = reload_until(&b, &url, Duration::from_secs(20), |t| {
                t.contains("<script>") || t.contains("<img")
            })
            .await;
            assert!(
                text.contains(HOSTILE_SCRIPT) || text.contains(HOSTILE_IMG),
                "{page} does not show the text as text:\n{text}"
            );
            nothing_ran(&b, page).await;
            b.shot(name).await;
        }
        drop(daemon);
    });
}

/// A form POST to the dashboard, with `cookie` if given.
fn form(path: &str, body: &str, cookie: Option<&str>) -> Request {
    let request = Request::post(path, body.as_bytes())
        .header("Content-Type", "application/x-www-form-urlencoded");
    match cookie {
        Some(cookie) => request.header("Cookie", cookie),
        None => request,
    }
}

/// The CSRF token a page's forms carry.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF field")
        + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

fn rule_disabled(setup: &Setup, name: &str) -> bool {
    let listed = setup.json(&["rules", "--json"]);
    listed["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == name && r["disabled"] == true)
}

/// Sessions, CSRF and the answers' headers, over plain HTTP: no browser needed.
#[test]
fn pages_need_a_session_and_changes_need_its_csrf_token() {
    let setup = Setup::standard_with(&admin_section());
    write_rule(
        &setup,
        "alert.rhai",
        "const ON = [\"bank.withdrawal\"];\nlog(event.id);\n",
    );
    let daemon = setup.start();
    let admin = daemon.admin.unwrap();
    let send = |request: &Request| request.send(admin).unwrap();

    // Without a session: pages go to the sign-in form, the rest is refused.
    let page = send(&Request::get("/rules?x=1"));
    assert_eq!(page.status, 303);
    assert_eq!(
        page.header("location"),
        Some("/sign-in?next=%2Frules%3Fx%3D1")
    );
    for path in ["/overview/figures", "/events/live"] {
        assert_eq!(send(&Request::get(path)).status, 401, "{path}");
    }
    assert_eq!(
        send(&form("/rules/alert/disable", "csrf=x", None)).status,
        401
    );
    assert_eq!(send(&form("/dead/retry-all", "csrf=x", None)).status, 401);
    assert!(!rule_disabled(&setup, "alert"));

    // A wrong token: 401 and the form again; an offsite `next` is not followed.
    let wrong = send(&form(
        "/sign-in",
        "token=nope-nope-nope-nope&next=%2F",
        None,
    ));
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong token"));
    assert!(wrong.header("set-cookie").is_none());
    let right = format!("token={TOKEN}&next=%2F%2Fevil.example%2F");
    let signed = send(&form("/sign-in", &right, None));
    assert_eq!(signed.status, 303);
    assert_eq!(signed.header("location"), Some("/"));
    let cookie_line = signed.header("set-cookie").unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(cookie_line.contains(attribute), "{cookie_line}");
    }
    assert!(!cookie_line.contains("Secure"), "plain HTTP: {cookie_line}");
    let behind_tls = send(&form("/sign-in", &right, None).header("X-Forwarded-Proto", "https"));
    assert!(
        behind_tls
            .header("set-cookie")
            .unwrap()
            .ends_with("; Secure")
    );
    let cookie = cookie_line.split(';').next().unwrap().to_owned();

    // With the session: pages, with headers that keep them to themselves.
    let rules = send(&Request::get("/rules").header("Cookie", &cookie));
    assert_eq!(rules.status, 200);
    let policy = rules.header("content-security-policy").unwrap();
    assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"));
    assert_eq!(rules.header("x-frame-options"), Some("DENY"));
    assert_eq!(rules.header("cache-control"), Some("no-store"));

    // A change without the session's CSRF token is refused; with it, done.
    let refused = send(&form("/rules/alert/disable", "csrf=forged", Some(&cookie)));
    assert_eq!(refused.status, 403);
    assert!(!rule_disabled(&setup, "alert"));
    let csrf = csrf_of(&rules.body);
    let done = send(&form(
        "/rules/alert/disable",
        &format!("csrf={csrf}"),
        Some(&cookie),
    ));
    assert_eq!(done.status, 303);
    let back = done.header("location").unwrap().to_owned();
    assert!(
        [
            "/rules?rule=alert&now=disabled",
            "/rules?rule=alert&now=pending"
        ]
        .contains(&back.as_str()),
        "{back}"
    );
    assert!(rule_disabled(&setup, "alert"));
    let notice = send(&Request::get(&back).header("Cookie", &cookie));
    assert!(notice.body.contains("Rule alert"), "{}", notice.body);
    // The notice is the page's sentence: nothing given in the query string is shown.
    for spoof in [
        "/rules?rule=alert&now=Session+expired",
        "/rules?rule=Enter+your+token&now=disabled",
    ] {
        let page = send(&Request::get(spoof).header("Cookie", &cookie));
        assert!(!page.body.contains("class=\"notice\""), "{spoof}");
    }
    let unknown = send(&form(
        "/rules/nope/disable",
        &format!("csrf={csrf}"),
        Some(&cookie),
    ));
    assert_eq!(unknown.status, 404);

    // The live tail ends with the session: an event stored after "Sign out" is not sent.
    let tail = {
        let cookie = cookie.clone();
        std::thread::spawn(move || {
            Request::get("/events/live")
                .header("Cookie", &cookie)
                .send(admin)
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        daemon.post("bank", &withdrawal("before-sign-out")).status,
        200
    );
    std::thread::sleep(Duration::from_millis(800));

    // Signing out ends the session: the cookie no longer opens a page.
    let out = send(&form("/sign-out", &format!("csrf={csrf}"), Some(&cookie)));
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(
        send(&Request::get("/rules").header("Cookie", &cookie)).status,
        303
    );
    assert_eq!(
        daemon.post("bank", &withdrawal("after-sign-out")).status,
        200
    );
    let streamed = tail.join().unwrap();
    assert_eq!(streamed.status, 200);
    assert!(
        streamed.body.contains("before-sign-out"),
        "{}",
        streamed.body
    );
    assert!(
        !streamed.body.contains("after-sign-out"),
        "{}",
        streamed.body
    );
    // The API is unchanged: the bearer token, not a session.
    assert_eq!(
        send(&Request::get("/admin/rules").header("Cookie", &cookie)).status,
        401
    );
    drop(daemon);
}
