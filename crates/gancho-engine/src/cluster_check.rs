//! What `gancho check --cluster` finds in a rule that compiles and would not work in cluster
//! mode. There a partitioned rule (the default; see `rule::Scope`) runs in the partition of the
//! event that woke it, and its window queries and `expect` see that partition's events only.
//! A query sees every event it asks for only when it selects by the queried source's
//! `partition_key` or a key `colocated` with it: all those events then share one partition.
//! From the rule's text, this finds the queries that do not: a literal map of keys with none of
//! those, no keys at all, and a query of another source by a key that does not also place the
//! rule's own events. Keys given some other way (a variable, a quoted name) are not
//! judged, nor is a query of a source the config does not have (`rule_text::lint` reports that).
//! A rule that must see every partition declares `const SCOPE = "global";`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::diagnostic::Diagnostic;
use crate::rule_text::{SourceFacts, calls_of, literal_map_keys, without_comments_and_strings};

/// The queries and `expect`s, with how many arguments each takes when it is given no keys
/// (`None`: keys are always given).
const QUERIES: [(&str, Option<usize>); 6] = [
    ("count", Some(2)),
    ("exists", Some(2)),
    ("first", Some(2)),
    ("last", Some(2)),
    ("events", Some(3)),
    ("expect", None),
];

/// The cluster-mode mistakes of the partitioned rule in `path`, whose text is `text` and whose
/// `ON` patterns are `on_text`, against the config's sources, each with its line and column.
pub(crate) fn check(
    path: &Path,
    text: &str,
    on_text: &[String],
    sources: &BTreeMap<String, SourceFacts>,
) -> Vec<Diagnostic> {
    let code = without_comments_and_strings(text);
    let mut found = Vec::new();
    // The sources whose events wake the rule, and so decide its partition (none known when a
    // pattern names every source).
    let woken_by: Option<Vec<&str>> = on_text
        .iter()
        .filter_map(|p| p.split_once('.').map(|(source, _)| source))
        .filter(|source| !["timer", "cron"].contains(source))
        .map(|source| (source != "*").then_some(source))
        .collect();
    for (call, arity_without_keys) in QUERIES {
        for (start, end) in calls_of(&code, call) {
            let args = top_level_args(&code[start..end]);
            // The type: a literal string (its quotes kept in `code`, its text in `text`).
            let Some(&(ty_start, ty_end)) = args.first() else {
                continue;
            };
            let Some(ty) = text
                .get(start + ty_start..start + ty_end)
                .map(str::trim)
                .and_then(|t| t.strip_prefix('"'))
                .and_then(|t| t.strip_suffix('"'))
            else {
                continue;
            };
            let Some((source, _)) = ty.split_once('.') else {
                continue;
            };
            let Some(facts) = sources.get(source) else {
                continue;
            };
            // At the type literal itself, past any line break after the parenthesis.
            let at = start + ty_start + (ty_end - ty_start)
                - code[start + ty_start..start + ty_end].trim_start().len();
            let Some((key, colocated)) = &facts.partition else {
                found.push(Diagnostic::at(
                    path,
                    text,
                    at,
                    format!(
                        "{call}: source {source:?} has no partition_key, which cluster mode needs \
                         (set sources.{source}.partition_key, or declare `const SCOPE = \"global\";`)"
                    ),
                ));
                continue;
            };
            let allowed = || {
                let mut names = vec![key.clone()];
                names.extend(colocated.iter().cloned());
                names.join(", ")
            };
            let keys_arg = args.get(1).map(|&(s, e)| code[start + s..start + e].trim());
            let problem = match keys_arg {
                Some(keys) if keys.starts_with("#{") => {
                    let named = literal_map_keys(keys);
                    let entries = map_entries(keys);
                    let partitioned = named
                        .iter()
                        .any(|(name, _)| name == key || colocated.contains(name));
                    // A query of another source is in the rule's partition only if it selects
                    // by a key that also places the waking source's events (the same name: its
                    // value is then, in the usual case, the event's own).
                    let elsewhere = woken_by.as_ref().and_then(|woken| {
                        woken.iter().find_map(|&woken| {
                            let (wkey, wcolocated) = sources.get(woken)?.partition.as_ref()?;
                            let joined = named.iter().any(|(name, _)| {
                                (name == key || colocated.contains(name))
                                    && (name == wkey || wcolocated.contains(name))
                            });
                            (woken != source && !joined).then(|| (woken, wkey.clone()))
                        })
                    });
                    if let (true, Some((woken, wkey))) = (partitioned, elsewhere) {
                        Some(format!(
                            "joins source {source:?} by a key that does not place this rule's \
                             {woken:?} events (they are placed by {wkey}), so the events it asks \
                             for are in other partitions"
                        ))
                    } else if partitioned || named.len() < entries {
                        // By the partition: fine. A key not written as a name: not judged.
                        None
                    } else if entries == 0 {
                        Some("selects no keys, so it asks for events in every partition".to_owned())
                    } else {
                        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
                        Some(format!(
                            "selects by {}, which is not source {source:?}'s partition key or \
                             colocated with it, so the events it asks for are in other partitions",
                            names.join(", ")
                        ))
                    }
                }
                _ if arity_without_keys == Some(args.len()) => {
                    Some("selects no keys, so it asks for events in every partition".to_owned())
                }
                _ => None,
            };
            if let Some(problem) = problem {
                found.push(Diagnostic::at(
                    path,
                    text,
                    at,
                    format!(
                        "{call}: in cluster mode this rule runs in its event's partition, and this \
                         query {problem}: select by {} (source {source:?}), or declare \
                         `const SCOPE = \"global\";`",
                        allowed()
                    ),
                ));
            }
        }
    }
    found.sort_by_key(|d| (d.line, d.column));
    found
}

/// The (start, end) of each argument in `args` (the text inside a call's parentheses, with
/// strings blanked), split at its top-level commas.
fn top_level_args(args: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut depth = 0usize;
    let mut from = 0;
    for (i, b) in args.bytes().enumerate() {
        match b {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                found.push((from, i));
                from = i + 1;
            }
            _ => {}
        }
    }
    if !args[from..].trim().is_empty() {
        found.push((from, args.len()));
    }
    found
}

/// How many entries the map literal at the start of `code` has.
fn map_entries(code: &str) -> usize {
    let Some(open) = code.find('{') else {
        return 0;
    };
    let mut depth = 0usize;
    for (i, b) in code.bytes().enumerate().skip(open) {
        match b {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return top_level_args(&code[open + 1..i]).len();
                }
            }
            _ => {}
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailjet() -> BTreeMap<String, SourceFacts> {
        let facts = SourceFacts {
            types: None,
            keys: ["email", "MessageID", "hard_bounce", "campaign"]
                .map(str::to_owned)
                .into(),
            partition: Some(("email".to_owned(), ["MessageID".to_owned()].into())),
        };
        BTreeMap::from([("mailjet".to_owned(), facts)])
    }

    fn flagged(text: &str) -> Vec<(usize, usize, String)> {
        check(
            Path::new("r.rhai"),
            text,
            &["mailjet.open".to_owned()],
            &mailjet(),
        )
        .into_iter()
        .map(|d| (d.line, d.column, d.message))
        .collect()
    }

    #[test]
    fn queries_by_the_partition_key_or_a_colocated_one_pass() {
        let text = r#"
let a = exists("mailjet.sent", #{ MessageID: event.keys.MessageID }, hours(24));
let b = count("mailjet.open", #{ email: to, campaign: c }, days(7));
let c = events("mailjet.click", #{ email: to }, days(1), 10);
expect("mailjet.open", #{ MessageID: m }, hours(24), "remind");
// count("mailjet.open", days(1)) in a comment is not a query
let s = "count(\"mailjet.open\", days(1))";
"#;
        assert_eq!(flagged(text), vec![]);
    }

    #[test]
    fn queries_across_partitions_are_flagged_with_their_place() {
        let text = "let hard = count(\"mailjet.bounce\", #{ hard_bounce: true }, hours(1));\n\
                    let all = count(\"mailjet.sent\", days(1));\n\
                    let some = events(\"mailjet.open\", span(a, b), 100);\n\
                    let none = exists(\"mailjet.open\", #{}, hours(1));\n\
                    expect(\"mailjet.click\", #{ campaign: c }, hours(1), \"f\");\n";
        let found = flagged(text);
        let places: Vec<(usize, usize)> = found.iter().map(|(l, c, _)| (*l, *c)).collect();
        assert_eq!(places, vec![(1, 18), (2, 17), (3, 19), (4, 19), (5, 8)]);
        assert!(
            found[0].2.contains("selects by hard_bounce"),
            "{}",
            found[0].2
        );
        assert!(found[0].2.contains("select by email, MessageID"));
        assert!(found[0].2.contains("const SCOPE = \"global\";"));
        assert!(found[1].2.contains("selects no keys"), "{}", found[1].2);
        assert!(found[2].2.contains("selects no keys"));
        assert!(found[3].2.contains("selects no keys"));
        assert!(found[4].2.starts_with("expect: "));
    }

    #[test]
    fn keys_not_written_as_names_and_unknown_sources_are_not_judged() {
        let text = r#"
let k = #{ hard_bounce: true };
let a = count("mailjet.bounce", k, hours(1));
let b = events("mailjet.open", k, days(1), 10);
let c = count("mailjet.open", #{ "hard_bounce": true }, hours(1));
let d = count("shop.order", days(1));
let e = count(kind, days(1));
"#;
        assert_eq!(flagged(text), vec![]);
    }

    #[test]
    fn a_source_without_a_partition_key_is_named() {
        let mut sources = mailjet();
        if let Some(facts) = sources.get_mut("mailjet") {
            facts.partition = None;
        }
        let found = check(
            Path::new("r.rhai"),
            "let a = count(\n    \"mailjet.open\", #{ email: e }, days(1));",
            &[],
            &sources,
        );
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].line, found[0].column), (2, 5));
        assert!(found[0].message.contains("sources.mailjet.partition_key"));
    }
}

#[cfg(test)]
mod across_sources {
    use super::*;

    #[test]
    fn a_query_of_another_source_must_join_by_a_key_that_places_the_rules_events() {
        let facts = |key: &str, keys: &[&str]| SourceFacts {
            types: None,
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            partition: Some((key.to_owned(), Default::default())),
        };
        let sources = BTreeMap::from([
            ("mailjet".to_owned(), facts("email", &["email"])),
            ("bank".to_owned(), facts("account", &["account", "email"])),
            ("shop".to_owned(), facts("email", &["email", "order"])),
        ]);
        let on = |pattern: &str| vec![pattern.to_owned()];
        let query = "let n = count(\"mailjet.open\", #{ email: event.email }, days(1));";
        let path = Path::new("r.rhai");
        // Woken by bank events (placed by account): mailjet's email is in another partition.
        let found = check(path, query, &on("bank.withdrawal"), &sources);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].message.contains("they are placed by account"),
            "{}",
            found[0].message
        );
        // Woken by shop events, placed by email too: the same partition.
        assert!(check(path, query, &on("shop.order"), &sources).is_empty());
        // Its own source, or every source: not judged this way.
        assert!(check(path, query, &on("mailjet.open"), &sources).is_empty());
        assert!(check(path, query, &on("*"), &sources).is_empty());
    }
}
