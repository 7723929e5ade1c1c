//! One rule: a `.rhai` file compiled, with what wakes it (`ON`, `EVERY`, `TZ`).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use rhai::{AST, Dynamic};

/// A problem with a rule file, located in it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

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
        } else if let Some((source, kind)) = text.split_once('.') {
            if valid_name(source) && !kind.is_empty() && !kind.contains('*') {
                return Ok(Pattern::Exact(text.to_owned()));
            }
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

/// A cron schedule in a time zone.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    pub(crate) text: String,
    pub(crate) cron: croner::Cron,
    pub(crate) tz: chrono_tz::Tz,
}

impl Schedule {
    /// The first tick strictly after `after_ms`.
    pub(crate) fn next_after(&self, after_ms: i64) -> Option<i64> {
        let after = self.local(after_ms);
        let tick = self.cron.find_next_occurrence(&after, false).ok()?;
        Some(tick.timestamp_millis())
    }

    /// The last tick at or before `at_ms`.
    pub(crate) fn last_at_or_before(&self, at_ms: i64) -> Option<i64> {
        let at = self.local(at_ms);
        let tick = self.cron.find_previous_occurrence(&at, true).ok()?;
        Some(tick.timestamp_millis())
    }

    fn local(&self, ms: i64) -> chrono::DateTime<chrono_tz::Tz> {
        gancho_core::millis_to_time(ms).with_timezone(&self.tz)
    }
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
    /// Functions a timer or expectation may name as its callback (one parameter).
    pub(crate) callbacks: std::rc::Rc<HashSet<String>>,
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
            "TZ" => tz = Some(value),
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
    Ok(Rule {
        name,
        path: path.to_owned(),
        hash: xxhash_rust::xxh3::xxh3_64(text.as_bytes()),
        ast,
        on,
        on_text,
        schedule,
        callbacks,
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
