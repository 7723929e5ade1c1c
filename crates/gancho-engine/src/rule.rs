//! One rule: a `.rhai` file compiled, with what wakes it (`ON`, `EVERY`, `TZ`) and where it runs
//! in cluster mode (`SCOPE`). What its text says without running it is `rule_text.rs`'.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use rhai::{AST, Dynamic};

pub use crate::diagnostic::Diagnostic;
pub use crate::rule_text::SourceFacts;
pub(crate) use crate::rule_text::{event_fields, lint, longest_literal_window_ms};
pub(crate) use crate::schedule::Schedule;

/// Which event types wake a rule: `mailjet.open`, `mailjet.*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    Exact(String),
    /// `source.*`: the prefix `source.`.
    Prefix(String),
    Any,
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        if text == "*" {
            return Ok(Pattern::Any);
        }
        if let Some(source) = text.strip_suffix(".*") {
            if valid_name(source) {
                return Ok(Pattern::Prefix(format!("{source}.")));
            }
        } else if let Some((source, kind)) = text.split_once('.')
            && valid_name(source)
            && !kind.is_empty()
            && !kind.contains('*')
        {
            return Ok(Pattern::Exact(text.to_owned()));
        }
        Err(format!(
            "ON: {text:?} is not an event type (`source.type`, `source.*` or `*`)"
        ))
    }

    pub(crate) fn matches(&self, qualified_type: &str) -> bool {
        match self {
            Pattern::Exact(t) => t == qualified_type,
            Pattern::Prefix(p) => qualified_type.starts_with(p.as_str()),
            Pattern::Any => true,
        }
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    /// xxh3 of the file's text: a file is recompiled only when it changed.
    pub(crate) hash: u64,
    pub(crate) ast: AST,
    pub(crate) on: Vec<Pattern>,
    pub(crate) on_text: Vec<String>,
    pub(crate) schedule: Option<Schedule>,
    /// Cron ticks missed while the daemon was down: all caught up (the default), or the last
    /// one only (`const CATCH_UP = "last";`).
    pub(crate) catch_up_all: bool,
    /// Where it runs in cluster mode (no effect on a single node).
    pub(crate) scope: Scope,
    /// Functions a timer or expectation may name as its callback (one parameter).
    pub(crate) callbacks: std::rc::Rc<HashSet<String>>,
    /// Its top-level constants whose values are literals (or fold into one), which its
    /// functions see as well as its top level (rhai's functions see no outer variable).
    pub(crate) constants: std::rc::Rc<Vec<(String, Dynamic)>>,
    /// The fields of `event` the rule reads, when it reads it only as `event.NAME`; `None`
    /// when it may read any (the map it gets then holds every field).
    pub(crate) fields: Option<HashSet<String>>,
}

/// Where a rule runs in cluster mode: in the partition of the event that woke it (its windows,
/// `expect` and state are that partition's), or on the one global lane over all partitions
/// (`const SCOPE = "global";`, and every `EVERY` rule). A single node has one lane: there the
/// scope changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Partition,
    Global,
}

/// The rule name of a file: its name without `.rhai`.
pub(crate) fn rule_name(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    valid_name(stem).then(|| stem.to_owned())
}

/// Compiles a rule file's text.
pub(crate) fn compile(engine: &rhai::Engine, path: &Path, text: &str) -> Result<Rule, Diagnostic> {
    let at = |line: usize, column: usize, message: String| Diagnostic {
        file: path.to_owned(),
        line,
        column,
        message,
    };
    let name = rule_name(path).ok_or_else(|| {
        at(
            1,
            1,
            "a rule's file name must be letters, digits, `_` or `-`, then `.rhai`".to_owned(),
        )
    })?;
    let ast = engine.compile(text).map_err(|err| {
        let pos = err.position();
        at(
            pos.line().unwrap_or(1),
            pos.position().unwrap_or(1),
            err.err_type().to_string(),
        )
    })?;
    // Where a declaration is, for messages about it.
    let decl = |name: &str| -> (usize, usize) {
        let needle = format!("const {name}");
        text.lines()
            .enumerate()
            .find_map(|(i, line)| line.find(&needle).map(|col| (i + 1, col + 1)))
            .unwrap_or((1, 1))
    };
    let mut on_text = Vec::new();
    let mut every = None;
    let mut tz = None;
    let mut catch_up = None;
    let mut scope = None;
    for (var, _is_const, value) in ast.iter_literal_variables(true, false) {
        match var {
            "ON" => {
                on_text = strings(&value).ok_or_else(|| {
                    let (l, c) = decl("ON");
                    at(
                        l,
                        c,
                        "ON must be a string or an array of strings".to_owned(),
                    )
                })?;
            }
            "EVERY" => every = Some(value),
            "CATCH_UP" => catch_up = Some(value),
            "TZ" => tz = Some(value),
            "SCOPE" => scope = Some(value),
            _ => {}
        }
    }
    let mut on = Vec::with_capacity(on_text.len());
    for text in &on_text {
        on.push(Pattern::parse(text).map_err(|msg| {
            let (l, c) = decl("ON");
            at(l, c, msg)
        })?);
    }
    let tz = match tz {
        None => chrono_tz::Tz::UTC,
        Some(value) => {
            let (l, c) = decl("TZ");
            let text = value
                .into_string()
                .map_err(|_| at(l, c, "TZ must be a string".to_owned()))?;
            chrono_tz::Tz::from_str(&text)
                .map_err(|_| at(l, c, format!("TZ: unknown time zone {text:?}")))?
        }
    };
    let catch_up_all = match catch_up {
        None => true,
        Some(value) => {
            let (l, c) = decl("CATCH_UP");
            match value.into_string().as_deref() {
                Ok("all") => true,
                Ok("last") => false,
                _ => {
                    return Err(at(l, c, "CATCH_UP must be \"all\" or \"last\"".to_owned()));
                }
            }
        }
    };
    let schedule = match every {
        None => None,
        Some(value) => {
            let (l, c) = decl("EVERY");
            let text = value
                .into_string()
                .map_err(|_| at(l, c, "EVERY must be a string".to_owned()))?;
            if text.split_whitespace().count() != 6 {
                return Err(at(
                    l,
                    c,
                    format!(
                        "EVERY: {text:?} needs six fields: second minute hour day month weekday"
                    ),
                ));
            }
            let cron = croner::parser::CronParser::builder()
                .seconds(croner::parser::Seconds::Required)
                .year(croner::parser::Year::Disallowed)
                .build()
                .parse(&text)
                .map_err(|err| at(l, c, format!("EVERY: {text:?}: {err}")))?;
            Some(Schedule { text, cron, tz })
        }
    };
    let scope = match scope {
        None if schedule.is_some() => Scope::Global,
        None => Scope::Partition,
        Some(value) => {
            let (l, c) = decl("SCOPE");
            match value.into_string().as_deref() {
                Ok("global") => Scope::Global,
                Ok("partition") if schedule.is_none() => Scope::Partition,
                Ok("partition") => {
                    return Err(at(
                        l,
                        c,
                        "SCOPE: an EVERY rule runs on the global lane in cluster mode: leave SCOPE out or make it \"global\"".to_owned(),
                    ));
                }
                _ => {
                    return Err(at(
                        l,
                        c,
                        "SCOPE must be \"partition\" or \"global\"".to_owned(),
                    ));
                }
            }
        }
    };
    if on.is_empty() && schedule.is_none() {
        return Err(at(
            1,
            1,
            "the rule declares nothing that wakes it: add `const ON = [\"source.type\"];` or `const EVERY = \"sec min hour day month weekday\";`".to_owned(),
        ));
    }
    let callbacks = ast
        .iter_functions()
        .filter(|f| f.params.len() == 1)
        .map(|f| f.name.to_owned())
        .collect::<HashSet<_>>()
        .into();
    let constants = std::rc::Rc::new(
        ast.iter_literal_variables(true, false)
            .map(|(name, _, value)| (name.to_owned(), value))
            .collect(),
    );
    Ok(Rule {
        name,
        path: path.to_owned(),
        hash: xxhash_rust::xxh3::xxh3_64(text.as_bytes()),
        ast,
        on,
        on_text,
        schedule,
        catch_up_all,
        scope,
        callbacks,
        constants,
        // A payload field named like one of gancho's is read as `payload_NAME`.
        fields: event_fields(text).map(|mut fields| {
            let unprefixed: Vec<String> = fields
                .iter()
                .filter_map(|f| f.strip_prefix("payload_").map(str::to_owned))
                .collect();
            fields.extend(unprefixed);
            fields
        }),
    })
}

fn strings(value: &Dynamic) -> Option<Vec<String>> {
    if value.is_string() {
        return Some(vec![value.clone().into_string().ok()?]);
    }
    value
        .read_lock::<rhai::Array>()?
        .iter()
        .map(|v| v.clone().into_string().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope_of(text: &str) -> Result<Scope, String> {
        let engine = crate::sandbox::sandbox(&crate::sandbox::Limits::default());
        compile(&engine, Path::new("r.rhai"), text)
            .map(|rule| rule.scope)
            .map_err(|d| format!("{}:{}: {}", d.line, d.column, d.message))
    }

    #[test]
    fn a_rule_is_partitioned_unless_global_or_scheduled() {
        let on = "const ON = [\"mailjet.open\"];\n";
        let every = "const EVERY = \"0 0 9 * * *\";\n";
        assert_eq!(scope_of(on), Ok(Scope::Partition));
        assert_eq!(
            scope_of(&format!("{on}const SCOPE = \"partition\";")),
            Ok(Scope::Partition)
        );
        assert_eq!(
            scope_of(&format!("{on}const SCOPE = \"global\";")),
            Ok(Scope::Global)
        );
        assert_eq!(scope_of(every), Ok(Scope::Global));
        assert_eq!(
            scope_of(&format!("{every}const SCOPE = \"global\";")),
            Ok(Scope::Global)
        );
        let err = scope_of(&format!("{every}const SCOPE = \"partition\";")).unwrap_err();
        assert!(
            err.starts_with("2:1: SCOPE: an EVERY rule runs on the global lane"),
            "{err}"
        );
        let err = scope_of(&format!("{on}const SCOPE = 1;")).unwrap_err();
        assert_eq!(err, "2:1: SCOPE must be \"partition\" or \"global\"");
    }
}
