//! The shipped rules' tests (`rules/tests/`): for each `NAME.events.jsonl`, `gancho test
//! rules/NAME.rhai` must decide the actions of `NAME.expect.jsonl` (run on to the time in
//! `NAME.until`, when there is one). And `gancho test` itself: a difference or a rule error
//! fails it, with a diff or the error's file and line.

use crate::support::{Setup, repo_root};

fn gancho_test(setup: &Setup, args: &[&str]) -> std::process::Output {
    let mut all = vec!["test"];
    all.extend_from_slice(args);
    setup.command(&all)
}

#[test]
fn each_shipped_rule_decides_what_its_test_expects() {
    let setup = Setup::standard();
    let root = repo_root();
    let tests = root.join("rules/tests");
    let mut ran = Vec::new();
    for entry in std::fs::read_dir(&tests).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".events.jsonl"))
        else {
            continue;
        };
        let rule = root.join("rules").join(format!("{name}.rhai"));
        let expect = tests.join(format!("{name}.expect.jsonl"));
        let mut args = vec![
            rule.to_str().unwrap().to_owned(),
            "--events".to_owned(),
            path.to_str().unwrap().to_owned(),
            "--expect".to_owned(),
            expect.to_str().unwrap().to_owned(),
        ];
        if let Ok(until) = std::fs::read_to_string(tests.join(format!("{name}.until"))) {
            args.extend(["--until".to_owned(), until.trim().to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = gancho_test(&setup, &args);
        assert!(
            out.status.success(),
            "rules/tests/{name}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        ran.push(name.to_owned());
    }
    ran.sort();
    // Every shipped rule has its test.
    let mut shipped: Vec<String> = std::fs::read_dir(root.join("rules"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".rhai").map(str::to_owned)
        })
        .collect();
    shipped.sort();
    assert_eq!(ran, shipped);
}

#[test]
fn gancho_test_fails_on_a_difference_or_a_rule_error_and_says_where() {
    let setup = Setup::standard();
    let dir = setup.dir.path();
    let rule = dir.join("greet.rhai");
    std::fs::write(
        &rule,
        "const ON = [\"bank.withdrawal\"];\nif event.amount > 100 { throw \"too much\"; }\nsms(#{ to: event.phone, text: \"hi \" + event.amount });\n",
    )
    .unwrap();
    let events = dir.join("events.jsonl");
    let withdrawal = |id: &str, amount: u32| {
        format!(
            r#"{{"source":"bank","payload":{{"id":"{id}","kind":"withdrawal","at":1764583200,"account":"A","phone":"+34600000001","amount":{amount}}}}}"#
        ) + "\n"
    };
    std::fs::write(&events, withdrawal("a", 20)).unwrap();
    let expect = dir.join("expect.jsonl");
    std::fs::write(&expect, r#"{"channel":"sms","action":{"text":"hi 30"}}"#).unwrap();
    let out = gancho_test(
        &setup,
        &[
            rule.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--expect",
            expect.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("- expected") && said.contains("+ decided"),
        "{said}"
    );
    let decided: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(decided["action"]["text"], "hi 20");
    assert_eq!(decided["at"], "2025-12-01T10:00:00.000Z");
    // A rule error: exit 1, with the file, line and event.
    std::fs::write(&events, withdrawal("b", 500)).unwrap();
    let out = gancho_test(
        &setup,
        &[rule.to_str().unwrap(), "--events", events.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("greet.rhai: event 1:") && said.contains("line 2"),
        "{said}"
    );
}

#[test]
fn every_rhai_example_of_the_rules_reference_compiles_runs_and_every_function_has_one() {
    // The reference's examples name a `shop` source too.
    let setup = Setup::standard_with("[sources.shop]\nkind = \"json\"\ntype = \"/type\"\n");
    let doc = std::fs::read_to_string(repo_root().join("docs/rules.md")).unwrap();
    let dir = setup.dir.path().join("examples");
    std::fs::create_dir_all(&dir).unwrap();
    let mut block: Option<String> = None;
    let mut n = 0;
    for line in doc.lines() {
        match (&mut block, line.trim_start()) {
            (None, "```rhai") => block = Some(String::new()),
            (Some(text), "```") => {
                n += 1;
                // A fragment is checked as the body of a rule woken by Mailjet's events.
                if !text.contains("const ON") && !text.contains("const EVERY") {
                    text.insert_str(0, "const ON = [\"mailjet.*\"];\n");
                }
                std::fs::write(dir.join(format!("example{n}.rhai")), text.as_str()).unwrap();
                block = None;
            }
            (Some(text), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(n >= 5, "only {n} examples found");
    let out = setup.command(&["check", dir.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("{n} rule(s) in")), "{said}");
    // Every function of gancho's has an example.
    let mut code = String::new();
    for i in 1..=n {
        code.push_str(&std::fs::read_to_string(dir.join(format!("example{i}.rhai"))).unwrap());
    }
    for name in gancho_engine::FUNCTIONS {
        assert!(
            code.contains(&format!("{name}(")),
            "docs/rules.md has no rhai example calling {name}"
        );
    }
    // And each runs without a rule error over a Mailjet campaign's events (a day and more of
    // them, so that timers, expectations and cron ticks fire too).
    let events = setup.dir.path().join("events.jsonl");
    let mailjet = |kind: &str, at: i64| {
        format!(
            r#"{{"source":"mailjet","payload":{{"event":"{kind}","time":{at},"MessageID":288230387505203290,"email":"ana@example.com","mj_campaign_id":7257,"CustomID":"spring"}}}}"#
        )
    };
    let t0 = 1_764_583_200; // 2025-12-01T10:00:00Z
    let lines = [
        mailjet("sent", t0),
        mailjet("open", t0 + 600),
        mailjet("click", t0 + 660),
        mailjet("open", t0 + 7_200),
    ];
    std::fs::write(&events, lines.join("\n")).unwrap();
    for i in 1..=n {
        let file = dir.join(format!("example{i}.rhai"));
        let out = setup.command(&[
            "test",
            file.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--until",
            "+25h",
        ]);
        assert!(
            out.status.success(),
            "example {i} of docs/rules.md:\n{}\n{}",
            std::fs::read_to_string(&file).unwrap(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The blocks of `lang` in a Markdown text, in order.
fn blocks(doc: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}");
    let mut found = Vec::new();
    let mut block: Option<String> = None;
    for line in doc.lines() {
        match (&mut block, line.trim_start()) {
            (None, l) if l == fence => block = Some(String::new()),
            (Some(_), "```") => found.extend(block.take()),
            (Some(text), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    found
}

#[test]
fn every_source_and_rule_example_of_the_sources_reference_passes_gancho_check() {
    let doc = std::fs::read_to_string(repo_root().join("docs/sources.md")).unwrap();
    // The sources of the examples, their secrets given as literals (the examples read them
    // from variables and files this machine has not got).
    let mut sources = toml::Table::new();
    for block in blocks(&doc, "toml") {
        let table: toml::Table = toml::from_str(&block).unwrap_or_else(|e| panic!("{e}\n{block}"));
        let Some(toml::Value::Table(defined)) = table.get("sources") else {
            continue;
        };
        for (name, section) in defined {
            let mut section = section.as_table().unwrap().clone();
            for (key, value) in [
                ("secret", "a-long-test-secret"),
                ("signing_key", "a-long-test-key"),
                ("auth_token", "a-long-test-token"),
            ] {
                if section.remove(&format!("{key}_env")).is_some()
                    || section.remove(&format!("{key}_file")).is_some()
                {
                    section.insert(key.to_owned(), toml::Value::String(value.to_owned()));
                }
            }
            if let Some(toml::Value::Table(auth)) = section.get_mut("basic_auth")
                && (auth.remove("password_env").is_some() || auth.remove("password_file").is_some())
            {
                auth.insert(
                    "password".into(),
                    toml::Value::String("test-password".into()),
                );
            }
            // The page shows a key cut short; a real one in its place.
            if section.contains_key("public_key") {
                section.insert(
                    "public_key".into(),
                    toml::Value::String("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEaxfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpZP40Li/hp/m47n60p8D54WK84zV2sxXs7LtkBoN79R9Q==".into()),
                );
            }
            sources.insert(name.clone(), toml::Value::Table(section));
        }
    }
    assert!(sources.len() >= 10, "{sources:?}");
    let mut config = toml::Table::new();
    config.insert("sources".into(), toml::Value::Table(sources));
    let setup = Setup::new(&toml::to_string(&config).unwrap());
    let out = setup.command(&["check-config"]);
    assert!(
        out.status.success(),
        "the sources of docs/sources.md:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = setup.dir.path().join("examples");
    std::fs::create_dir_all(&dir).unwrap();
    let rules = blocks(&doc, "rhai");
    assert!(rules.len() >= 10);
    for (i, rule) in rules.iter().enumerate() {
        std::fs::write(dir.join(format!("example{i}.rhai")), rule).unwrap();
    }
    let out = setup.command(&["check", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "the rules of docs/sources.md:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
