//! The script API: the rhai engine with gancho's host functions (the sandbox they run in is
//! `sandbox.rs`).
//!
//! Every function that reads time reads the event's time, never the wall clock (rhai's own
//! `timestamp` is compiled out with `no_time`). Functions that decide something (state, timers,
//! actions) stage a change in the run's [`Pending`](crate::ctx::Pending); the engine commits it.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::str::FromStr as _;

use chrono::{TimeZone as _, Utc};
use gancho_core::millis_to_time;
use gancho_state::{ExpectShape, Expectation, StateValue, Timer, expectation_name};
use gancho_store::{Order, Window};
use rhai::{Dynamic, EvalAltResult, INT, Map};

use crate::ctx::Ctx;
use crate::dynamic;
use crate::sandbox::{Limits, resolve_variables, sandbox, watch_run_time};

mod actions;

type Res<T> = Result<T, Box<EvalAltResult>>;

/// The longest timer name `after` takes, in bytes (the name becomes the firing event's type).
const MAX_TIMER_NAME: usize = 1024;

/// The most events `events(...)` returns.
pub const MAX_LIST: usize = 1_000;

/// A window relative to the event's time (`back`, `ahead`, `between`) or absolute (`span`).
#[derive(Debug, Clone, Copy)]
struct WindowSpec {
    from: i64,
    to: i64,
    absolute: bool,
}

fn err<T>(message: impl Into<String>) -> Res<T> {
    Err(message.into().into())
}

/// The functions [`build`] registers, by name: what `gancho check` knows as gancho's (a
/// test holds it to what is registered, and `docs/rules.md` documents each).
pub const FUNCTIONS: &[&str] = &[
    "after",
    "ahead",
    "back",
    "between",
    "cancel",
    "clear_state",
    "code",
    "count",
    "days",
    "email",
    "events",
    "exists",
    "expect",
    "first",
    "format_time",
    "get_state",
    "hours",
    "html_escape",
    "http",
    "last",
    "log",
    "minutes",
    "once",
    "seconds",
    "set_state",
    "sms",
    "span",
    "start_of_day",
    "throttle",
];

/// The engine rules run in: the sandbox plus gancho's functions, bound to `ctx`.
pub(crate) fn build(limits: &Limits, ctx: &Rc<RefCell<Ctx>>) -> rhai::Engine {
    let mut engine = sandbox(limits);
    watch_run_time(&mut engine, limits, ctx);
    resolve_variables(&mut engine, ctx);
    register_time(&mut engine);
    register_queries(&mut engine, ctx);
    register_state(&mut engine, ctx);
    register_timers(&mut engine, ctx);
    actions::register_actions(&mut engine, ctx);
    engine.register_fn("html_escape", html_escape);
    engine
}

fn scaled(n: INT, unit: INT) -> Res<INT> {
    n.checked_mul(unit)
        .map_or_else(|| err("duration overflows"), Ok)
}

fn parse_tz(name: &str) -> Res<chrono_tz::Tz> {
    chrono_tz::Tz::from_str(name).map_or_else(|_| err(format!("unknown time zone {name:?}")), Ok)
}

/// Times rules may format or convert: years 1 to 9999. Beyond them chrono's local-time
/// conversions panic; an event can carry such a time (it is only a number to the store).
const MIN_TIME_MS: INT = -62_135_596_800_000;
const MAX_TIME_MS: INT = 253_402_300_799_999;

fn in_range(ms: INT) -> Res<INT> {
    if (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms) {
        Ok(ms)
    } else {
        err(format!("time {ms} ms is outside the years 1 to 9999"))
    }
}

fn format_in<Tz: chrono::TimeZone>(ms: INT, format: &str, tz: &Tz) -> Res<String>
where
    Tz::Offset: std::fmt::Display,
{
    let time = millis_to_time(in_range(ms)?).with_timezone(tz);
    let mut out = String::new();
    match write!(out, "{}", time.format(format)) {
        Ok(()) => Ok(out),
        Err(_) => err(format!("bad time format {format:?}")),
    }
}

/// Event data made safe to place in HTML (an e-mail's `html`): `& < > " '` as entities.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

fn register_time(engine: &mut rhai::Engine) {
    engine.register_fn("seconds", |n: INT| scaled(n, 1_000));
    engine.register_fn("minutes", |n: INT| scaled(n, 60_000));
    engine.register_fn("hours", |n: INT| scaled(n, 3_600_000));
    engine.register_fn("days", |n: INT| scaled(n, 86_400_000));
    engine.register_fn("format_time", |ms: INT, format: &str| {
        format_in(ms, format, &Utc)
    });
    engine.register_fn("format_time", |ms: INT, format: &str, tz: &str| {
        format_in(ms, format, &parse_tz(tz)?)
    });
    engine.register_fn("start_of_day", |ms: INT, tz: &str| -> Res<INT> {
        let tz = parse_tz(tz)?;
        // A day away from the range's ends, so the local date exists in every zone.
        let ms = in_range(ms)?.clamp(MIN_TIME_MS + 86_400_000, MAX_TIME_MS - 86_400_000);
        let date = millis_to_time(ms).with_timezone(&tz).date_naive();
        let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
        // A zone may skip midnight (a daylight-saving change at 00:00): take the first instant
        // of the day that exists.
        let local = (0..=120)
            .find_map(|m| {
                tz.from_local_datetime(&(midnight + chrono::Duration::minutes(m)))
                    .earliest()
            })
            .map_or_else(|| err("no start of day"), Ok)?;
        Ok(local.timestamp_millis())
    });
    engine.register_type_with_name::<WindowSpec>("Window");
    engine.register_fn("back", |d: INT| match d.checked_neg() {
        Some(from) => window(from, 0, false),
        None => err("back: duration out of range"),
    });
    engine.register_fn("ahead", |d: INT| window(0, d, false));
    engine.register_fn("between", |from: INT, to: INT| window(from, to, false));
    engine.register_fn("span", |from: INT, to: INT| window(from, to, true));
}

fn window(from: INT, to: INT, absolute: bool) -> Res<WindowSpec> {
    if from > to {
        return err(format!("a window must end after it starts ({from} > {to})"));
    }
    Ok(WindowSpec { from, to, absolute })
}

/// Turns a script's (type, keys, window) into a store window for the running event.
fn resolve(ctx: &mut Ctx, ty: &str, keys: &Map, window: &Dynamic) -> Res<Window> {
    let Some((source, kind)) = ty.split_once('.') else {
        return err(format!("{ty:?} is not an event type (`source.type`)"));
    };
    let mut pairs = Vec::with_capacity(keys.len());
    for (name, value) in keys {
        if let Some(known) = ctx.source_keys.as_ref().and_then(|k| k.get(source))
            && !known.contains(name.as_str())
        {
            return err(format!(
                "{name:?} is not a correlation key of source {source:?} (keys: {})",
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        pairs.push((name.to_string(), dynamic::key_text(value)?));
    }
    if let Some(placement) = &ctx.placement {
        placement.check(source, &pairs).map_or_else(err, Ok)?;
    }
    let max_queries = ctx.max_queries;
    let run = ctx.run()?;
    run.queries += 1;
    if run.queries > max_queries {
        return err(format!("more than {max_queries} window queries in one run"));
    }
    let t = run.time_ms;
    let (from_ms, to_ms) = if let Ok(d) = window.as_int() {
        if d < 0 {
            return err("a look-back window must not be negative (use ahead(...))");
        }
        (t.saturating_sub(d), t)
    } else if let Some(w) = window.clone().try_cast::<WindowSpec>() {
        if w.absolute {
            (w.from, w.to)
        } else {
            (t.saturating_add(w.from), t.saturating_add(w.to))
        }
    } else {
        return err(format!(
            "a window is a duration or back/ahead/between/span(...), not {}",
            window.type_name()
        ));
    };
    let (rule, max_seq) = (run.rule.clone(), run.seq);
    if let Some(retention) = ctx.retention_ms
        && to_ms.saturating_sub(from_ms) > retention
        && ctx.told_retention.insert(rule.clone())
    {
        tracing::warn!(
            rule,
            window_ms = to_ms.saturating_sub(from_ms),
            retention_ms = retention,
            "a window of this rule is longer than the store's retention ([store] retention): it sees only the events kept"
        );
    }
    Ok(Window {
        source: source.to_owned(),
        kind: kind.to_owned(),
        keys: pairs,
        from_ms,
        to_ms,
        max_seq,
    })
}

fn run_query(
    ctx: &Rc<RefCell<Ctx>>,
    call: &str,
    (ty, keys, window): (&str, &Map, &Dynamic),
    order: Order,
    limit: usize,
) -> Res<Vec<(i64, u64)>> {
    let (store, w) = {
        let mut ctx = ctx.borrow_mut();
        let w = resolve(&mut ctx, ty, keys, window)?;
        (ctx.store.clone(), w)
    };
    let found = store
        .window(&w, order, limit)
        .map_or_else(|e| err(format!("window query: {e}")), Ok)?;
    trace_query(ctx, call, &w, found.len());
    Ok(found)
}

/// Keeps a window query and its answer in the run's trace (`gancho explain`).
fn trace_query(ctx: &Rc<RefCell<Ctx>>, call: &str, w: &gancho_store::Window, found: usize) {
    let Ok(mut ctx) = ctx.try_borrow_mut() else {
        return;
    };
    let Some(run) = ctx.run.as_mut() else {
        return;
    };
    run.traced.push(gancho_state::traces::QueryTrace {
        call: call.to_owned(),
        kind: format!("{}.{}", w.source, w.kind),
        keys: w.keys.clone(),
        from_ms: w.from_ms,
        to_ms: w.to_ms,
        found: found as u64,
    });
}

/// The event a window query found, as rules see it; `None` if a prune deleted it since.
fn load_event(ctx: &Rc<RefCell<Ctx>>, seq: u64) -> Res<Option<Dynamic>> {
    let store = ctx.borrow().store.clone();
    let found = store
        .get(seq)
        .map_or_else(|e| err(format!("reading event {seq}: {e}")), Ok)?;
    let Some(event) = found else {
        return Ok(None);
    };
    dynamic::event_map(&event, None)
        .map(|map| Some(Dynamic::from_map(map)))
        .map_or_else(|e| err(format!("event {seq}: {e}")), Ok)
}

fn register_queries(engine: &mut rhai::Engine, ctx: &Rc<RefCell<Ctx>>) {
    let c = ctx.clone();
    let count = move |ty: &str, keys: Map, w: Dynamic| -> Res<INT> {
        let (store, w) = {
            let mut ctx = c.borrow_mut();
            let w = resolve(&mut ctx, ty, &keys, &w)?;
            (ctx.store.clone(), w)
        };
        let n = store
            .count(&w, usize::MAX)
            .map_or_else(|e| err(format!("window query: {e}")), Ok)?;
        trace_query(&c, "count", &w, n);
        Ok(INT::try_from(n).unwrap_or(INT::MAX))
    };
    let count2 = count.clone();
    engine.register_fn("count", count);
    engine.register_fn("count", move |ty: &str, w: Dynamic| {
        count2(ty, Map::new(), w)
    });

    let c = ctx.clone();
    let exists = move |ty: &str, keys: Map, w: Dynamic| -> Res<bool> {
        Ok(!run_query(&c, "exists", (ty, &keys, &w), Order::Oldest, 1)?.is_empty())
    };
    let exists2 = exists.clone();
    engine.register_fn("exists", exists);
    engine.register_fn("exists", move |ty: &str, w: Dynamic| {
        exists2(ty, Map::new(), w)
    });

    for (name, order) in [("first", Order::Oldest), ("last", Order::Newest)] {
        let c = ctx.clone();
        let one = move |ty: &str, keys: Map, w: Dynamic| -> Res<Dynamic> {
            match run_query(&c, name, (ty, &keys, &w), order, 1)?.first() {
                None => Ok(Dynamic::UNIT),
                Some(&(_, seq)) => Ok(load_event(&c, seq)?.unwrap_or(Dynamic::UNIT)),
            }
        };
        let one2 = one.clone();
        engine.register_fn(name, one);
        engine.register_fn(name, move |ty: &str, w: Dynamic| one2(ty, Map::new(), w));
    }

    let c = ctx.clone();
    let events = move |ty: &str, keys: Map, w: Dynamic, limit: INT| -> Res<rhai::Array> {
        let limit = usize::try_from(limit).unwrap_or(0).min(MAX_LIST);
        run_query(&c, "events", (ty, &keys, &w), Order::Oldest, limit)?
            .into_iter()
            .filter_map(|(_, seq)| load_event(&c, seq).transpose())
            .collect()
    };
    let events2 = events.clone();
    engine.register_fn("events", events);
    engine.register_fn("events", move |ty: &str, w: Dynamic, limit: INT| {
        events2(ty, Map::new(), w, limit)
    });
}

fn register_state(engine: &mut rhai::Engine, ctx: &Rc<RefCell<Ctx>>) {
    let c = ctx.clone();
    engine.register_fn("get_state", move |key: &str| -> Res<Dynamic> {
        let found = c.borrow_mut().state(key)?;
        Ok(found.map_or(Dynamic::UNIT, |v| dynamic::from_json(&v.value)))
    });
    let c = ctx.clone();
    let set = move |key: &str, value: Dynamic, ttl: Option<INT>| -> Res<()> {
        let mut ctx = c.borrow_mut();
        let expires_ms = match ttl {
            None => None,
            Some(ttl) if ttl > 0 => Some(ctx.run()?.time_ms.saturating_add(ttl)),
            Some(_) => return err("a state TTL must be positive"),
        };
        let value = dynamic::to_json(&value)?;
        ctx.put_state(key, Some(StateValue { value, expires_ms }))?;
        Ok(())
    };
    let set2 = set.clone();
    engine.register_fn("set_state", move |k: &str, v: Dynamic| set(k, v, None));
    engine.register_fn("set_state", move |k: &str, v: Dynamic, ttl: INT| {
        set2(k, v, Some(ttl))
    });
    let c = ctx.clone();
    engine.register_fn("clear_state", move |key: &str| -> Res<()> {
        Ok(c.borrow_mut().put_state(key, None)?)
    });
    let c = ctx.clone();
    engine.register_fn("once", move |key: &str| -> Res<bool> {
        mark(&c, &format!("once:{key}"), None)
    });
    let c = ctx.clone();
    engine.register_fn("once", move |key: &str, ttl: INT| -> Res<bool> {
        if ttl <= 0 {
            return err("once: the time to live must be positive");
        }
        mark(&c, &format!("once:{key}"), Some(ttl))
    });
    let c = ctx.clone();
    engine.register_fn("throttle", move |key: &str, every: INT| -> Res<bool> {
        if every <= 0 {
            return err("throttle: the period must be positive");
        }
        mark(&c, &format!("throttle:{key}"), Some(every))
    });
}

/// Sets the mark `key` (its value: the event time), to expire `ttl` after the event's time
/// (never without one), unless it is set: whether it was not.
fn mark(ctx: &Rc<RefCell<Ctx>>, key: &str, ttl: Option<INT>) -> Res<bool> {
    let mut ctx = ctx.borrow_mut();
    if ctx.state(key)?.is_some() {
        return Ok(false);
    }
    let now = ctx.run()?.time_ms;
    ctx.put_state(
        key,
        Some(StateValue {
            value: serde_json::Value::from(now),
            expires_ms: ttl.map(|ttl| now.saturating_add(ttl)),
        }),
    )?;
    Ok(true)
}

fn check_callback(ctx: &mut Ctx, callback: &str) -> Res<()> {
    if ctx.run()?.callbacks.contains(callback) {
        Ok(())
    } else {
        err(format!(
            "no function {callback}(x) with one parameter in this rule to call back"
        ))
    }
}

/// Sets (or replaces) the running rule's timer `name`.
fn set_timer(
    ctx: &mut Ctx,
    name: String,
    due_ms: i64,
    callback: &str,
    data: serde_json::Value,
    expect: Option<Expectation>,
) -> Res<()> {
    check_callback(ctx, callback)?;
    let late_grace = ctx.late_grace_ms;
    let run = ctx.run()?;
    run.serial += 1;
    let (rule, seq, serial) = (run.rule.clone(), run.seq, run.serial);
    // Already due when set (its event is older than its wait: a backlog delivered at once
    // after an outage): it fires `late_grace` after its event arrived, not at once, so that
    // the events queued behind this one can still cancel it.
    let due_ms = match due_ms <= run.received_ms {
        true => run.received_ms.saturating_add(late_grace),
        false => due_ms,
    };
    // The timer it replaces goes with its entry by due time (left behind, a debounce-style
    // rule setting a long timer on every event would grow the store).
    let old = ctx
        .timer(&rule, &name)
        .map_or_else(|e| err(e.to_string()), Ok)?;
    let timer = Timer {
        uid: format!("{rule}/{name}/{seq}.{serial}"),
        rule,
        name,
        due_ms,
        callback: callback.to_owned(),
        data,
        origin_seq: seq,
        expect,
        orphaned: false,
    };
    ctx.set_timer(old, Some(timer));
    Ok(())
}

fn register_timers(engine: &mut rhai::Engine, ctx: &Rc<RefCell<Ctx>>) {
    let c = ctx.clone();
    let after = move |name: &str, delay: INT, callback: &str, data: Dynamic| -> Res<()> {
        if delay < 0 {
            return err("after: the delay must not be negative");
        }
        if name.len() > MAX_TIMER_NAME {
            return err(format!(
                "after: a timer name is at most {MAX_TIMER_NAME} bytes, this one has {}",
                name.len()
            ));
        }
        let data = dynamic::to_json(&data)?;
        let mut ctx = c.borrow_mut();
        let due = ctx.run()?.time_ms.saturating_add(delay);
        set_timer(&mut ctx, format!("timer:{name}"), due, callback, data, None)
    };
    let after2 = after.clone();
    engine.register_fn("after", after);
    engine.register_fn("after", move |name: &str, delay: INT, callback: &str| {
        after2(name, delay, callback, Dynamic::UNIT)
    });
    let c = ctx.clone();
    engine.register_fn("cancel", move |name: &str| -> Res<bool> {
        let mut ctx = c.borrow_mut();
        let rule = ctx.run()?.rule.clone();
        let old = ctx
            .timer(&rule, &format!("timer:{name}"))
            .map_or_else(|e| err(e.to_string()), Ok)?;
        let found = old.is_some();
        ctx.set_timer(old, None);
        Ok(found)
    });
    let c = ctx.clone();
    engine.register_fn(
        "expect",
        move |ty: &str, keys: Map, window: Dynamic, callback: &str| -> Res<bool> {
            // A duration means the window ahead of the event; the query forms (`ahead(d)`,
            // `between(a, b)`, `span(from, to)`) mean what they mean for queries.
            let window = match window.as_int() {
                Ok(within) if within < 0 => {
                    return err("expect: the window must not be negative");
                }
                Ok(within) => Dynamic::from(WindowSpec {
                    from: 0,
                    to: within,
                    absolute: false,
                }),
                Err(_) => window,
            };
            let mut ctx = c.borrow_mut();
            let w = resolve(&mut ctx, ty, &keys, &window)?;
            // Already there (webhooks arrive out of order): nothing to expect.
            let found = ctx
                .store
                .window(&w, Order::Oldest, 1)
                .map_or_else(|e| err(format!("window query: {e}")), Ok)?;
            if !found.is_empty() {
                return Ok(false);
            }
            let run = ctx.run()?;
            let seq = run.seq;
            let keys: Vec<(&str, &str)> = w
                .keys
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let name = expectation_name(&w.source, &w.kind, &keys, callback);
            if name.len() > MAX_TIMER_NAME * 4 {
                return err(format!(
                    "expect: the type, keys and function name are {} bytes, at most {} are allowed",
                    name.len(),
                    MAX_TIMER_NAME * 4
                ));
            }
            let shape = ExpectShape {
                source: w.source.clone(),
                kind: w.kind.clone(),
                names: w.keys.iter().map(|(n, _)| n.clone()).collect(),
                rule: run.rule.clone(),
                callback: callback.to_owned(),
            };
            let expect = Expectation {
                source: w.source,
                kind: w.kind,
                keys: w.keys,
                from_ms: w.from_ms,
                to_ms: w.to_ms,
            };
            let due = expect.to_ms;
            set_timer(
                &mut ctx,
                name,
                due,
                callback,
                serde_json::json!({ "seq": seq }),
                Some(expect),
            )?;
            ctx.new_shapes.push(shape);
            Ok(true)
        },
    );
}
