//! The engine's behaviour apart from any one shipped rule: hot reload, the sandbox, errors,
//! timers, and the atomicity of its commits.
#![allow(clippy::unwrap_used)]

mod support;

use gancho_core::Action;
use support::*;

fn http_rule(tag: &str) -> String {
    format!(
        r#"const ON = ["mailjet.open"];
http(#{{ url: "https://hooks.example.com/{tag}", json: #{{ email: event.email }} }});
"#
    )
}

fn sms_texts(world: &World) -> Vec<String> {
    world
        .outbox()
        .into_iter()
        .filter_map(|a| match a.action {
            Action::Sms(s) => Some(s.text),
            _ => None,
        })
        .collect()
}

/// The JSON bodies of the HTTP actions in the outbox.
fn http_bodies(world: &World) -> Vec<serde_json::Value> {
    world
        .outbox()
        .into_iter()
        .filter_map(|a| match a.action {
            Action::Http(h) => h.json,
            _ => None,
        })
        .collect()
}

fn urls(world: &World) -> Vec<String> {
    world
        .outbox()
        .into_iter()
        .filter_map(|a| match a.action {
            Action::Http(h) => Some(h.url),
            _ => None,
        })
        .collect()
}

#[test]
fn hot_reload_swaps_changed_rules_keeps_the_last_good_version_of_broken_ones_and_stops_deleted_ones()
 {
    let world = World::empty();
    world.write_rule("notify.rhai", &http_rule("v1"));
    world.write_rule("other.rhai", &http_rule("other"));
    let mut engine = world.engine();
    let mut n = 0;
    let mut open = |world: &World| {
        n += 1;
        world.append(vec![mailjet("open", "a@example.com", n, t0())]);
    };

    open(&world);
    run(&mut engine);
    world.write_rule("notify.rhai", &http_rule("v2"));
    let report = engine.reload().unwrap();
    assert_eq!(report.loaded, ["notify"]);
    open(&world);
    run(&mut engine);

    // Broken: a syntax error on line 2. v2 keeps running; the error names file, line, column.
    world.write_rule("notify.rhai", "const ON = [\"mailjet.open\"];\nlet x = ;\n");
    let report = engine.reload().unwrap();
    assert_eq!(report.failed.len(), 1);
    let diag = &report.failed[0];
    assert!(diag.file.ends_with("notify.rhai"));
    assert_eq!((diag.line, diag.column), (2, 9), "{diag}");
    let status = engine.status();
    let notify = status.rules.iter().find(|r| r.name == "notify").unwrap();
    assert!(notify.loaded && notify.error.is_some());
    open(&world);
    run(&mut engine);

    std::fs::remove_file(world.rules.join("notify.rhai")).unwrap();
    let report = engine.reload().unwrap();
    assert_eq!(report.removed, ["notify"]);
    open(&world);
    run(&mut engine);

    // Per event, in the outbox's order (rules by name length, then name).
    assert_eq!(
        urls(&world),
        [
            "https://hooks.example.com/other",
            "https://hooks.example.com/v1",
            "https://hooks.example.com/other",
            "https://hooks.example.com/v2",
            "https://hooks.example.com/other",
            "https://hooks.example.com/v2",
            "https://hooks.example.com/other",
        ]
    );
}

#[test]
fn a_runaway_rule_is_stopped_counted_and_named_while_a_healthy_one_runs() {
    let world = World::empty();
    world.write_rule("spin.rhai", "const ON = [\"mailjet.*\"];\nloop { }\n");
    world.write_rule("healthy.rhai", &http_rule("ok"));
    let mut engine = world.engine();
    world.append(vec![
        mailjet("open", "a@example.com", 1, t0()),
        mailjet("open", "b@example.com", 2, t0()),
    ]);
    run(&mut engine);
    assert_eq!(urls(&world).len(), 2);
    let status = engine.status();
    let spin = status.rules.iter().find(|r| r.name == "spin").unwrap();
    assert_eq!((spin.runs, spin.errors), (2, 2));
    let error = spin.last_error.as_deref().unwrap();
    assert!(error.contains("spin.rhai"), "{error}");
    assert!(error.to_lowercase().contains("operations"), "{error}");
    assert_eq!(engine.cursor(), 2);
}

#[test]
fn a_failing_rule_leaves_nothing_of_its_run_and_malformed_actions_are_rule_errors() {
    let world = World::empty();
    // The first action is fine, the second has no recipient: the run fails as a whole.
    world.write_rule(
        "half.rhai",
        r#"const ON = ["mailjet.open"];
set_state("seen", true);
sms(#{ to: "+34600000001", text: "first" });
email(#{ subject: "no recipient", text: "x" });
"#,
    );
    world.write_rule(
        "bad-url.rhai",
        r#"const ON = ["mailjet.open"];
http(#{ url: "not a url" });
"#,
    );
    let mut engine = world.engine();
    world.append(vec![mailjet("open", "a@example.com", 1, t0())]);
    run(&mut engine);
    assert!(world.outbox().is_empty());
    assert!(world.state.state("half", "seen").unwrap().is_none());
    let status = engine.status();
    let half = status.rules.iter().find(|r| r.name == "half").unwrap();
    assert!(
        half.last_error
            .as_deref()
            .unwrap()
            .contains("email: no recipient")
    );
    let bad = status.rules.iter().find(|r| r.name == "bad-url").unwrap();
    assert!(bad.last_error.as_deref().unwrap().contains("bad url"));
}

#[test]
fn the_sandbox_has_no_eval_no_import_and_no_wall_clock() {
    let world = World::empty();
    world.write_rule(
        "eval.rhai",
        "const ON = [\"mailjet.open\"];\neval(\"1\");\n",
    );
    world.write_rule(
        "import.rhai",
        "const ON = [\"mailjet.open\"];\nimport \"x\" as x;\n",
    );
    world.write_rule(
        "clock.rhai",
        "const ON = [\"mailjet.open\"];\nlet t = timestamp();\n",
    );
    world.write_rule("ok.rhai", &http_rule("ok"));
    let mut engine = world.engine();
    world.append(vec![mailjet("open", "a@example.com", 1, t0())]);
    run(&mut engine);
    assert_eq!(urls(&world).len(), 1);
    let status = engine.status();
    for name in ["eval", "import", "clock"] {
        let rule = status.rules.iter().find(|r| r.name == name).unwrap();
        assert!(
            rule.error.is_some() || rule.errors == 1,
            "{name} was not refused: {rule:?}"
        );
    }
}

#[test]
fn timers_fire_with_their_data_and_due_time_and_can_be_cancelled() {
    let world = World::empty();
    world.write_rule(
        "timers.rhai",
        r#"const ON = ["mailjet.sent", "mailjet.open"];
if event.kind == "sent" {
    after("follow-up:" + event.email, hours(2), "follow_up", #{ email: event.email, n: 1 });
} else {
    cancel("follow-up:" + event.email);
}
fn follow_up(timer) {
    http(#{ url: "https://hooks.example.com/t", json: #{
        email: timer.data.email, due: timer.due, name: timer.name, late: timer.fired - timer.due } });
}
"#,
    );
    let mut engine = world.engine();
    world.append(vec![
        mailjet("sent", "a@example.com", 1, t0()),
        mailjet("sent", "b@example.com", 2, t0()),
    ]);
    world.append(vec![mailjet("open", "b@example.com", 2, t0() + hours(1))]);
    run(&mut engine);
    world.clock.set(t0() + hours(3));
    run(&mut engine);
    let calls = http_bodies(&world);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let due = (t0() + hours(2)).timestamp_millis();
    assert_eq!(
        calls[0],
        serde_json::json!({ "email": "a@example.com", "due": due,
            "name": "follow-up:a@example.com", "late": 3_600_000 })
    );
}

#[test]
fn a_timer_set_again_fires_once_at_its_new_time() {
    let world = World::empty();
    world.write_rule(
        "nudge.rhai",
        r#"const ON = ["mailjet.sent", "mailjet.click"];
after("nudge:" + event.email, hours(2), "nudge");
fn nudge(timer) {
    http(#{ url: "https://hooks.example.com/n", json: #{ due: timer.due } });
}
"#,
    );
    let mut engine = world.engine();
    world.append(vec![mailjet("sent", "a@example.com", 1, t0())]);
    run(&mut engine);
    // Set again from a later batch: the first setting is in the store by then.
    world.append(vec![mailjet("click", "a@example.com", 1, t0() + hours(1))]);
    run(&mut engine);
    world
        .clock
        .set(t0() + hours(2) + chrono::Duration::minutes(30));
    run(&mut engine);
    assert!(world.outbox().is_empty(), "{:?}", world.outbox());
    world.clock.set(t0() + hours(4));
    run(&mut engine);
    run(&mut engine);
    let dues = http_bodies(&world);
    assert_eq!(
        dues,
        [serde_json::json!({ "due": (t0() + hours(3)).timestamp_millis() })]
    );
}

#[test]
fn state_with_a_ttl_expires_in_event_time() {
    let world = World::empty();
    world.write_rule(
        "ttl.rhai",
        r#"const ON = ["mailjet.open"];
if get_state("k") == () {
    set_state("k", event.email, minutes(30));
    sms(#{ to: "+34600000001", text: "set by " + event.email });
}
"#,
    );
    let mut engine = world.engine();
    world.append(vec![
        mailjet("open", "a@example.com", 1, t0()),
        mailjet(
            "open",
            "b@example.com",
            2,
            t0() + chrono::Duration::minutes(29),
        ),
        mailjet(
            "open",
            "c@example.com",
            3,
            t0() + chrono::Duration::minutes(30),
        ),
    ]);
    run(&mut engine);
    let texts = sms_texts(&world);
    assert_eq!(texts, ["set by a@example.com", "set by c@example.com"]);
}

#[test]
fn processing_resumes_from_the_committed_cursor_after_a_restart() {
    let world = World::empty();
    world.write_rule("ok.rhai", &http_rule("ok"));
    {
        let mut engine = world.engine();
        world.append(vec![mailjet("open", "a@example.com", 1, t0())]);
        run(&mut engine);
    }
    let world = world.restart();
    let mut engine = world.engine();
    assert_eq!(engine.cursor(), 1);
    world.append(vec![mailjet("open", "b@example.com", 2, t0())]);
    run(&mut engine);
    let ids: Vec<_> = world.outbox().into_iter().map(|a| a.event_seq).collect();
    assert_eq!(ids, [1, 2]);
}

#[test]
fn a_rule_cannot_change_the_event_other_rules_see() {
    let world = World::empty();
    world.write_rule(
        "a-assign.rhai",
        "const ON = [\"mailjet.open\"];\nevent.email = \"changed\";\n",
    );
    world.write_rule(
        "b-method.rhai",
        "const ON = [\"mailjet.open\"];\nevent.keys.clear();\n",
    );
    world.write_rule(
        "c-read.rhai",
        r#"const ON = ["mailjet.open"];
sms(#{ to: "+34600000001", text: event.email + " " + event.keys.len() });
"#,
    );
    let mut engine = world.engine();
    world.append(vec![mailjet("open", "a@example.com", 1, t0())]);
    run(&mut engine);
    let texts = sms_texts(&world);
    assert_eq!(texts, ["a@example.com 3"]);
    let status = engine.status();
    for name in ["a-assign", "b-method"] {
        let rule = status.rules.iter().find(|r| r.name == name).unwrap();
        assert_eq!(rule.errors, 1, "{rule:?}");
    }
}

#[test]
fn hostile_values_are_rule_errors_not_crashes() {
    let world = World::empty();
    // A time at the edge of what chrono can convert, a huge timer name, a deeply nested value.
    world.write_rule(
        "day.rhai",
        "const ON = [\"mailjet.open\"];\nlet d = start_of_day(event.time, \"Europe/Madrid\");\nformat_time(8210298412799000, \"%Y\", \"Europe/Madrid\");\n",
    );
    world.write_rule(
        "name.rhai",
        "const ON = [\"mailjet.open\"];\nlet n = \"x\";\nfor i in 0..11 { n += n; }\nafter(n, hours(1), \"f\");\nfn f(t) {}\n",
    );
    world.write_rule(
        "deep.rhai",
        "const ON = [\"mailjet.open\"];\nlet v = 1;\nfor i in 0..200 { v = [v]; }\nset_state(\"v\", v);\n",
    );
    world.write_rule("ok.rhai", &http_rule("ok"));
    let mut engine = world.engine();
    let far = chrono::DateTime::<chrono::Utc>::MAX_UTC - chrono::Duration::days(2);
    world.append(vec![mailjet("open", "a@example.com", 1, far)]);
    run(&mut engine);
    assert_eq!(urls(&world).len(), 1);
    let status = engine.status();
    for name in ["day", "name", "deep"] {
        let rule = status.rules.iter().find(|r| r.name == name).unwrap();
        assert_eq!(rule.errors, 1, "{rule:?}");
    }
}

#[test]
fn with_no_rules_left_the_engine_passes_over_events_and_still_clears_a_timer_that_fires() {
    let world = World::empty();
    world.write_rule(
        "nudge.rhai",
        r#"const ON = ["mailjet.sent"];
after("nudge:" + event.email, hours(2), "nudge");
fn nudge(timer) {
    http(#{ url: "https://hooks.example.com/n", json: #{} });
}
"#,
    );
    let mut engine = world.engine();
    world.append(vec![mailjet("sent", "a@example.com", 1, t0())]);
    run(&mut engine);
    std::fs::remove_file(world.rules.join("nudge.rhai")).unwrap();
    assert_eq!(engine.reload().unwrap().removed, ["nudge"]);
    // Events no rule wants, then the timer comes due: it fires (an event of the log), and with
    // its rule gone it is dropped, not acted on.
    for n in 2..50 {
        world.append(vec![mailjet("open", "b@example.com", n, t0())]);
    }
    world.clock.set(t0() + hours(3));
    run(&mut engine);
    run(&mut engine);
    let last = world.store.last_seq().unwrap();
    assert_eq!(last, 50, "49 webhooks and one timer firing");
    assert_eq!(engine.status().cursor, last);
    assert!(world.outbox().is_empty());
    // Dropped for good: no timer is left to fire.
    let far = (t0() + hours(1000)).timestamp_millis();
    assert!(world.state.due_timers(far, 10).unwrap().is_empty());
    // Batches that decided nothing commit the cursor lazily; at stop it is committed.
    engine.commit_cursor().unwrap();
    let state = world.state;
    assert!(state.wait_durable(std::time::Duration::from_secs(10)));
    assert_eq!(state.cursor().unwrap(), last);
}

/// A cron rule that calls `https://ticks.example.com/NAME` with its tick.
fn tick_rule(world: &World, name: &str, every: &str, zone: &str) {
    world.write_rule(
        &format!("{name}.rhai"),
        &format!(
            "const EVERY = \"{every}\";\nconst TZ = \"{zone}\";\nhttp(#{{ url: \"https://ticks.example.com/{name}\", json: #{{ tick: event.tick }} }});\n"
        ),
    );
}

/// The ticks rule `name` has acted on, as UTC times, in order.
fn ticks_of(world: &World, name: &str) -> Vec<String> {
    let url = format!("https://ticks.example.com/{name}");
    let mut ticks: Vec<i64> = world
        .outbox()
        .into_iter()
        .filter_map(|a| match a.action {
            Action::Http(h) if h.url == url => h.json?["tick"].as_i64(),
            _ => None,
        })
        .collect();
    ticks.sort();
    ticks
        .into_iter()
        .map(|ms| {
            gancho_core::millis_to_time(ms)
                .format("%m-%d %H:%M:%S")
                .to_string()
        })
        .collect()
}

fn utc(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text).unwrap().into()
}

#[test]
fn cron_catches_up_each_tick_missed_while_stopped_or_only_the_last_if_the_rule_says_so() {
    let world = World::empty();
    tick_rule(&world, "every10", "0 */10 * * * *", "UTC");
    world.write_rule(
        "lastonly.rhai",
        "const EVERY = \"0 */10 * * * *\";\nconst CATCH_UP = \"last\";\nhttp(#{ url: \"https://ticks.example.com/lastonly\", json: #{ tick: event.tick } });\n",
    );
    world.clock.set(utc("2026-11-02T10:00:05Z"));
    let mut engine = world.engine();
    run(&mut engine);
    world.clock.set(utc("2026-11-02T10:10:00.250Z"));
    run(&mut engine);
    assert_eq!(ticks_of(&world, "every10"), ["11-02 10:10:00"]);
    // Stopped over 10:20, 10:30 and 10:40.
    engine.commit_cursor().unwrap();
    drop(engine);
    let world = world.restart();
    world.clock.set(utc("2026-11-02T10:45:30Z"));
    let mut engine = world.engine();
    run(&mut engine);
    run(&mut engine);
    assert_eq!(
        ticks_of(&world, "every10"),
        [
            "11-02 10:10:00",
            "11-02 10:20:00",
            "11-02 10:30:00",
            "11-02 10:40:00"
        ],
        "each missed tick, with its own time"
    );
    assert_eq!(
        ticks_of(&world, "lastonly"),
        ["11-02 10:10:00", "11-02 10:40:00"],
        "one late tick, the last one missed"
    );
    world.clock.set(utc("2026-11-02T10:49:59Z"));
    run(&mut engine);
    world.clock.set(utc("2026-11-02T10:50:00Z"));
    run(&mut engine);
    assert_eq!(ticks_of(&world, "every10").len(), 5);
    assert_eq!(
        ticks_of(&world, "lastonly"),
        ["11-02 10:10:00", "11-02 10:40:00", "11-02 10:50:00"]
    );
}

/// Runs the engine every minute of `from..to` (UTC) with an every-20-minutes rule and a
/// fixed-time rule in `zone`; the first must tick every 20 minutes of real time, the second at
/// `fixed_ticks`.
fn ticks_through_a_change(zone: &str, fixed: &str, from: &str, to: &str, fixed_ticks: &[&str]) {
    let world = World::empty();
    tick_rule(&world, "every20", "0 */20 * * * *", zone);
    tick_rule(&world, "fixed", fixed, zone);
    let (from, to) = (utc(from), utc(to));
    world.clock.set(from);
    let mut engine = world.engine();
    let mut now = from;
    while now <= to {
        world.clock.set(now);
        run(&mut engine);
        now += chrono::Duration::minutes(1);
    }
    let mut want = Vec::new();
    let mut t = from + chrono::Duration::minutes(20);
    while t <= to {
        want.push(t.format("%m-%d %H:%M:%S").to_string());
        t += chrono::Duration::minutes(20);
    }
    assert_eq!(
        ticks_of(&world, "every20"),
        want,
        "{zone}: every 20 minutes"
    );
    assert_eq!(ticks_of(&world, "fixed"), fixed_ticks, "{zone}: {fixed}");
}

#[test]
fn cron_in_madrid_skips_the_spring_gap_and_ticks_through_the_repeated_autumn_hour() {
    // 29 March: 02:00 local (01:00 UTC) becomes 03:00. 02:30 does not exist: it runs at 03:00.
    ticks_through_a_change(
        "Europe/Madrid",
        "0 30 2 * * *",
        "2026-03-28T23:00:00Z",
        "2026-03-29T03:00:00Z",
        &["03-29 01:00:00"],
    );
    // 25 October: 03:00 local (01:00 UTC) becomes 02:00 again. 02:30 runs once, the first time.
    ticks_through_a_change(
        "Europe/Madrid",
        "0 30 2 * * *",
        "2026-10-24T23:00:00Z",
        "2026-10-25T03:00:00Z",
        &["10-25 00:30:00"],
    );
}

#[test]
fn cron_in_new_york_skips_the_spring_gap_and_ticks_through_the_repeated_autumn_hour() {
    // 8 March: 02:00 local (07:00 UTC) becomes 03:00; 02:30 runs at 03:00.
    ticks_through_a_change(
        "America/New_York",
        "0 30 2 * * *",
        "2026-03-08T05:00:00Z",
        "2026-03-08T09:00:00Z",
        &["03-08 07:00:00"],
    );
    // 1 November: 02:00 local (06:00 UTC) becomes 01:00 again; 01:30 runs once, the first time.
    ticks_through_a_change(
        "America/New_York",
        "0 30 1 * * *",
        "2026-11-01T04:00:00Z",
        "2026-11-01T08:00:00Z",
        &["11-01 05:30:00"],
    );
}

#[test]
fn a_rule_that_nests_a_value_deeply_fails_for_that_event_and_the_others_run() {
    // On a thread with the engine thread's stack, as in the daemon (a test thread's 2 MiB
    // overflow at 10,000 levels).
    std::thread::Builder::new()
        .stack_size(gancho_engine::ENGINE_STACK)
        .spawn(|| {
            let world = World::empty();
            let nest = |name: &str, n: u64| {
                world.write_rule(
                    &format!("{name}.rhai"),
                    &format!(
                        "const ON = [\"mailjet.open\"];\nlet a = [];\nfor i in 0..{n} {{ a = [a]; }}\nhttp(#{{ url: \"https://h.example.com/{name}\", json: #{{ a: a }} }});\n"
                    ),
                );
            };
            // 10,000 and 1,000,000 levels: the run fails at the 65th (the limit of stored
            // values), in microseconds, whatever the time limit; the other rule runs.
            nest("nest10k", 10_000);
            nest("nest1m", 1_000_000);
            // A variable shadowing the `event` constant is checked like any other.
            world.write_rule(
                "shadow.rhai",
                "const ON = [\"mailjet.open\"];\nlet event = [];\nfor i in 0..100000 { event = [event]; }\n",
            );
            world.write_rule("notify.rhai", &http_rule("ok"));
            let mut config = gancho_engine::EngineConfig::new(&world.rules);
            config.limits.max_run_time = std::time::Duration::from_secs(600);
            let errors = |engine: &gancho_engine::Engine, name: &str| {
                let status = engine.status();
                let rule = status.rules.iter().find(|r| r.name == name).cloned().unwrap();
                (rule.errors, rule.last_error.unwrap_or_default())
            };
            let mut engine = world.engine_with(config);
            world.append(vec![mailjet("open", "a@example.com", 1, t0())]);
            world.append(vec![mailjet("open", "b@example.com", 2, t0())]);
            run(&mut engine);
            assert_eq!(
                urls(&world),
                ["https://hooks.example.com/ok", "https://hooks.example.com/ok"]
            );
            for (name, variable) in [("nest10k", "a"), ("nest1m", "a"), ("shadow", "event")] {
                let (n, error) = errors(&engine, name);
                assert_eq!(n, 2, "{error}");
                assert!(
                    error.contains(&format!("{variable} nests deeper than 64 levels")),
                    "{error}"
                );
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn codes_and_action_ids_depend_on_the_store_not_only_on_the_rule_and_event() {
    let decide = |world: &World| {
        world.write_rule(
            "code.rhai",
            "const ON = [\"mailjet.open\"];\nhttp(#{ url: \"https://h.example.com/c\", json: #{ code: code(\"WELCOME\", 8) } });\n",
        );
        let mut engine = world.engine();
        world.append(vec![mailjet("open", "a@example.com", 1, t0())]);
        run(&mut engine);
        let actions = world.outbox();
        assert_eq!(actions.len(), 1);
        let code = http_bodies(world)[0]["code"].as_str().unwrap().to_owned();
        (code, actions[0].id.clone())
    };
    let (a, b) = (World::empty(), World::empty());
    let (code_a, id_a) = decide(&a);
    let (code_b, id_b) = decide(&b);
    assert!(code_a.starts_with("WELCOME-") && code_a.len() == "WELCOME-".len() + 8);
    assert_ne!(code_a, code_b, "same rule, same event, two stores");
    assert_ne!(id_a, id_b);
    // Nor is it the unkeyed hash of the rule and seq anyone could compute.
    assert_ne!(id_a, gancho_core::action_id("code", 1, 0));
}

#[test]
fn a_rules_functions_see_its_top_level_constants_when_a_timer_fires() {
    let world = World::empty();
    world.write_rule(
        "thanks.rhai",
        r#"const ON = ["mailjet.sent"];
const HOOK = "https://hooks.example.com/thanks";
const LIMITS = #{ tries: 3, codes: [1, 2] };
after("thanks:" + event.email, hours(48), "thanks");
fn thanks(timer) {
    http(#{ url: HOOK, json: #{ tries: LIMITS.tries, codes: LIMITS.codes } });
}
"#,
    );
    let mut engine = world.engine();
    world.append(vec![mailjet("sent", "a@example.com", 1, t0())]);
    run(&mut engine);
    world.clock.set(t0() + hours(49));
    run(&mut engine);
    run(&mut engine);
    let status = engine.status();
    let rule = &status.rules[0];
    assert_eq!(rule.errors, 0, "{:?}", rule.last_error);
    assert_eq!(urls(&world), ["https://hooks.example.com/thanks"]);
    assert_eq!(
        http_bodies(&world),
        [serde_json::json!({ "tries": 3, "codes": [1, 2] })]
    );
}

#[test]
fn once_with_a_time_to_live_expect_with_window_forms_and_html_escape() {
    let world = World::empty();
    world.write_rule(
        "api.rhai",
        r#"const ON = ["mailjet.open"];
if once("hello:" + event.email, hours(1)) {
    sms(#{ to: "+34600000001", text: "once " + event.email });
}
email(#{ to: "x@example.com", subject: "s", text: "t", html: "<p>" + html_escape(event.agent) + "</p>" });
"#,
    );
    world.write_rule(
        "later.rhai",
        r#"const ON = ["mailjet.sent"];
// An open expected between 1 and 2 hours after the sending.
expect("mailjet.open", #{ MessageID: event.keys.MessageID }, between(hours(1), hours(2)), "miss");
fn miss(sent) { sms(#{ to: "+34600000002", text: "missed " + sent.email }); }
"#,
    );
    world.write_rule(
        "nophone.rhai",
        r#"const ON = ["mailjet.click"];
sms(#{ to: event.phone, text: "hi" });
"#,
    );
    let mut engine = world.engine();
    let open = |n: u64, at| {
        mailjet_with(
            "open",
            "a@example.com",
            n,
            at,
            r#","agent":"<script>alert('x') & \"y\"</script>""#,
        )
    };
    world.append(vec![
        open(1, t0()),
        open(2, t0() + chrono::Duration::minutes(59)),
        open(3, t0() + hours(1)),
        // b opens 30 minutes after its sending: too early, so its `miss` fires.
        mailjet("sent", "b@example.com", 7, t0()),
        mailjet(
            "open",
            "b@example.com",
            7,
            t0() + chrono::Duration::minutes(30),
        ),
        // c opens 90 minutes after: within the window, no `miss`.
        mailjet("sent", "c@example.com", 8, t0()),
        mailjet(
            "open",
            "c@example.com",
            8,
            t0() + chrono::Duration::minutes(90),
        ),
        mailjet("click", "a@example.com", 1, t0()),
    ]);
    run(&mut engine);
    world.clock.set(t0() + hours(3));
    run(&mut engine);
    run(&mut engine);
    let texts = sms_texts(&world);
    assert_eq!(
        texts,
        [
            "once a@example.com",
            "once a@example.com",
            "missed b@example.com"
        ],
        "the second once comes an hour after the first"
    );
    let html: Vec<String> = world
        .outbox()
        .into_iter()
        .filter_map(|a| match a.action {
            gancho_core::Action::Email(mail) => mail.html,
            _ => None,
        })
        .collect();
    assert!(
        html.iter()
            .all(|h| h
                == "<p>&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;</p>"),
        "{html:?}"
    );
    let status = engine.status();
    let nophone = status.rules.iter().find(|r| r.name == "nophone").unwrap();
    let error = nophone.last_error.clone().unwrap_or_default();
    assert!(error.contains(r#"sms: no "to" number"#), "{error}");
    assert_eq!(error.matches("number").count(), 1, "{error}");
}

#[test]
fn a_rule_failing_100_times_in_a_row_is_paused_disabled_rules_sleep_and_counters_persist() {
    let world = World::empty();
    world.write_rule(
        "broken.rhai",
        "const ON = [\"mailjet.open\"];\nthrow \"always\";\n",
    );
    world.write_rule("ok.rhai", &http_rule("ok"));
    let mut engine = world.engine();
    let opens = |from: u64, n: u64| -> Vec<_> {
        (from..from + n)
            .map(|i| mailjet("open", &format!("r{i}@example.com"), i, t0()))
            .collect()
    };
    world.append(opens(0, 120));
    run(&mut engine);
    let rule = |engine: &gancho_engine::Engine, name: &str| {
        engine
            .status()
            .rules
            .into_iter()
            .find(|r| r.name == name)
            .unwrap()
    };
    let broken = rule(&engine, "broken");
    assert_eq!(broken.runs, 100, "paused at its 100th failure in a row");
    assert_eq!(
        broken.paused.as_deref(),
        Some("it failed 100 runs in a row")
    );
    assert_eq!(rule(&engine, "ok").runs, 120);
    // An operator disables the healthy one: events no longer wake it.
    world
        .state
        .set_rule_control(
            "ok",
            &gancho_state::rules::RuleControl {
                disabled: true,
                paused: None,
            },
        )
        .unwrap();
    engine.reload().unwrap();
    world.append(opens(200, 5));
    run(&mut engine);
    assert_eq!(rule(&engine, "ok").runs, 120);
    assert!(rule(&engine, "ok").disabled);
    // Both enabled again (after a restart: counters and controls are stored).
    engine.commit_cursor().unwrap();
    drop(engine);
    let world = world.restart();
    for name in ["ok", "broken"] {
        world
            .state
            .set_rule_control(name, &gancho_state::rules::RuleControl::default())
            .unwrap();
    }
    let mut engine = world.engine();
    assert_eq!(rule(&engine, "ok").runs, 120);
    assert_eq!(rule(&engine, "broken").runs, 100);
    world.append(opens(300, 3));
    run(&mut engine);
    assert_eq!(rule(&engine, "ok").runs, 123);
    let broken = rule(&engine, "broken");
    assert_eq!(broken.runs, 103);
    assert_eq!(broken.paused, None, "its count of failures starts afresh");
}

#[test]
fn a_timer_whose_function_or_rule_is_gone_when_due_is_kept_and_runs_once_it_is_back() {
    let world = World::empty();
    let rule = |callback: &str| {
        format!(
            r#"const ON = ["mailjet.sent"];
after("nudge:" + event.email, hours(2), "nudge", #{{ to: event.email }});
fn {callback}(timer) {{ http(#{{ url: "https://hooks.example.com/n", json: #{{ to: timer.data.to }} }}); }}
"#
        )
    };
    world.write_rule("nudge.rhai", &rule("nudge"));
    let mut engine = world.engine();
    world.append(vec![
        mailjet("sent", "a@example.com", 1, t0()),
        mailjet("sent", "b@example.com", 2, t0()),
    ]);
    run(&mut engine);
    // The callback renamed while the timers wait.
    world.write_rule("nudge.rhai", &rule("renamed"));
    engine.reload().unwrap();
    world.clock.set(t0() + hours(3));
    run(&mut engine);
    run(&mut engine);
    assert!(world.outbox().is_empty(), "{:?}", world.outbox());
    let mut orphaned = Vec::new();
    world
        .state
        .each_timer(None, |t| {
            orphaned.push((t.name, t.orphaned));
            Ok(())
        })
        .unwrap();
    assert_eq!(
        orphaned,
        [
            ("nudge:a@example.com".to_owned(), true),
            ("nudge:b@example.com".to_owned(), true)
        ]
    );
    assert_eq!(engine.status().rules[0].errors, 0);
    // One is discarded by an operator; the other runs once the function is back.
    assert!(world.state.wait_durable(std::time::Duration::from_secs(10)));
    assert!(
        world
            .state
            .discard_orphan("nudge", "nudge:b@example.com")
            .unwrap()
    );
    world.write_rule("nudge.rhai", &rule("nudge"));
    engine.reload().unwrap();
    run(&mut engine);
    run(&mut engine);
    run(&mut engine);
    assert_eq!(
        http_bodies(&world),
        [serde_json::json!({ "to": "a@example.com" })]
    );
    let mut left = 0;
    world
        .state
        .each_timer(None, |_| {
            left += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn cron_ticks_skipped_while_a_rule_is_disabled_are_not_caught_up_later() {
    let world = World::empty();
    tick_rule(&world, "every10", "0 */10 * * * *", "UTC");
    world.clock.set(utc("2026-11-02T10:00:05Z"));
    let mut engine = world.engine();
    run(&mut engine);
    world
        .state
        .set_rule_control(
            "every10",
            &gancho_state::rules::RuleControl {
                disabled: true,
                paused: None,
            },
        )
        .unwrap();
    engine.reload().unwrap();
    // Disabled over 10:10 to 10:50, the daemon running.
    for minute in [10, 20, 30, 40, 50] {
        world
            .clock
            .set(utc(&format!("2026-11-02T10:{minute}:00.100Z")));
        run(&mut engine);
    }
    assert!(ticks_of(&world, "every10").is_empty());
    engine.commit_cursor().unwrap();
    drop(engine);
    // Enabled, and the daemon restarted at 10:55: nothing to catch up.
    let world = world.restart();
    world
        .state
        .set_rule_control("every10", &gancho_state::rules::RuleControl::default())
        .unwrap();
    world.clock.set(utc("2026-11-02T10:55:00Z"));
    let mut engine = world.engine();
    run(&mut engine);
    run(&mut engine);
    assert!(ticks_of(&world, "every10").is_empty());
    world.clock.set(utc("2026-11-02T11:00:00Z"));
    run(&mut engine);
    assert_eq!(ticks_of(&world, "every10"), ["11-02 11:00:00"]);
}

#[test]
fn the_functions_gancho_check_knows_are_those_the_engine_registers() {
    let world = World::empty();
    let engine = world.engine();
    let registered = engine.functions();
    let known = gancho_engine::known_functions();
    for name in gancho_engine::FUNCTIONS {
        assert!(
            registered.contains(*name),
            "{name} is listed but not registered"
        );
    }
    for name in &registered {
        assert!(
            known.contains(name) || name.starts_with("get$") || name.starts_with("set$"),
            "{name} is registered but gancho check does not know it: add it to api::FUNCTIONS"
        );
    }
}
