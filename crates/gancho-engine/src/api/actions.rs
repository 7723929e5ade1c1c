//! The script functions that decide actions (`email`, `sms`, `http`), and `log` and `code`:
//! each action is checked and given an id that is stable for (rule, event, position) within a
//! store and unguessable outside it.

use std::cell::RefCell;
use std::rc::Rc;

use gancho_core::{Action, ActionRequest, EmailAction, HttpAction, SmsAction};
use rhai::{Dynamic, INT, ImmutableString, Map};

use super::{Res, err};
use crate::ctx::Ctx;
use crate::dynamic;

fn get_str(map: &Map, field: &str, channel: &str) -> Res<String> {
    match map.get(field) {
        Some(v) if v.is_string() => Ok(v.clone().into_string().unwrap_or_default()),
        Some(v) => err(format!(
            "{channel}: `{field}` must be a string, not {}",
            v.type_name()
        )),
        None => err(format!("{channel}: `{field}` is missing")),
    }
}

fn opt_str(map: &Map, field: &str, channel: &str) -> Res<Option<String>> {
    match map.get(field) {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(_) => get_str(map, field, channel).map(Some),
    }
}

fn check_fields(map: &Map, allowed: &[&str], channel: &str) -> Res<()> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => err(format!(
            "{channel}: unknown field `{k}` (fields: {})",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

fn email_action(map: &Map) -> Res<Action> {
    check_fields(map, &["to", "subject", "text", "html"], "email")?;
    let to = match map.get("to") {
        Some(v) if v.is_array() => v
            .read_lock::<rhai::Array>()
            .map(|a| {
                a.iter()
                    .map(|v| v.clone().into_string())
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap_or(Ok(Vec::new()))
            .map_or_else(|_| err("email: `to` must be strings"), Ok)?,
        Some(v) if v.is_unit() => Vec::new(),
        Some(_) => vec![get_str(map, "to", "email")?],
        None => Vec::new(),
    };
    Ok(Action::Email(EmailAction {
        to,
        subject: get_str(map, "subject", "email")?,
        text: get_str(map, "text", "email")?,
        html: opt_str(map, "html", "email")?,
    }))
}

fn sms_action(map: &Map) -> Res<Action> {
    check_fields(map, &["to", "text"], "sms")?;
    // A missing number (an event without a phone field reads as `()`) says so, once.
    let to = match map.get("to") {
        None => return err(r#"sms: no "to" number"#),
        Some(v) if v.is_unit() => return err(r#"sms: no "to" number"#),
        _ => get_str(map, "to", "sms")?,
    };
    if to.trim().is_empty() {
        return err(r#"sms: no "to" number"#);
    }
    Ok(Action::Sms(SmsAction {
        to,
        text: get_str(map, "text", "sms")?,
    }))
}

fn http_action(map: &Map) -> Res<Action> {
    check_fields(map, &["method", "url", "headers", "json", "body"], "http")?;
    let mut headers = std::collections::BTreeMap::new();
    if let Some(h) = map.get("headers") {
        let h = h
            .read_lock::<Map>()
            .map_or_else(|| err("http: `headers` must be a map"), |h| Ok(h.clone()))?;
        for (name, value) in &h {
            headers.insert(name.to_string(), dynamic::key_text(value)?);
        }
    }
    Ok(Action::Http(HttpAction {
        method: opt_str(map, "method", "http")?
            .unwrap_or_else(|| "POST".to_owned())
            .to_ascii_uppercase(),
        url: get_str(map, "url", "http")?,
        headers,
        json: map.get("json").map(dynamic::to_json).transpose()?,
        body: opt_str(map, "body", "http")?,
    }))
}

pub(super) fn register_actions(engine: &mut rhai::Engine, ctx: &Rc<RefCell<Ctx>>) {
    type Build = fn(&Map) -> Res<Action>;
    for (name, build) in [
        ("email", email_action as Build),
        ("sms", sms_action as Build),
        ("http", http_action as Build),
    ] {
        let c = ctx.clone();
        engine.register_fn(name, move |map: Map| -> Res<ImmutableString> {
            let action = build(&map)?;
            action.validate().map_or_else(|e| err(e.0), Ok)?;
            let mut ctx = c.borrow_mut();
            let secret = ctx.state.secret().bytes().to_owned();
            let run = ctx.run()?;
            let position = run.position;
            run.position += 1;
            let request = ActionRequest {
                id: keyed_action_id(&secret, &run.rule, run.seq, position),
                rule: run.rule.clone(),
                event_seq: run.seq,
                position,
                decided_ms: run.now_ms,
                action,
            };
            let id = request.id.clone();
            ctx.push_action(request)?;
            Ok(id.into())
        });
    }
    let c = ctx.clone();
    engine.register_fn("log", move |value: Dynamic| {
        let ctx = c.borrow();
        let rule = ctx.run.as_ref().map_or("", |r| r.rule.as_str());
        tracing::info!(target: "gancho::rule", rule, "{value}");
    });
    let c = ctx.clone();
    engine.register_fn("code", move |prefix: &str, len: INT| -> Res<String> {
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let len = usize::try_from(len).unwrap_or(0);
        if !(4..=24).contains(&len) {
            return err("code: the length must be 4 to 24");
        }
        let mut ctx = c.borrow_mut();
        let secret = ctx.state.secret().bytes().to_owned();
        let run = ctx.run()?;
        run.serial += 1;
        let seed = format!("code\u{0}{}\u{0}{}\u{0}{}", run.rule, run.seq, run.serial);
        let mut hash = mac(&secret, &seed);
        let mut out = String::with_capacity(prefix.len() + 1 + len);
        out.push_str(prefix);
        if !prefix.is_empty() {
            out.push('-');
        }
        for _ in 0..len {
            out.push(char::from(ALPHABET[(hash % 32) as usize]));
            hash /= 32;
        }
        Ok(out)
    });
}

/// HMAC-SHA256 of `text` under the store's secret, its first 128 bits: what a rule's `code()`
/// and an action's id are made of, so that nobody without the store can compute them from the
/// rule's name and an event's seq (which `/status` shows). The same store gives the same
/// answer when it processes an event again.
fn mac(secret: &[u8; 32], text: &str) -> u128 {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, text.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&tag.as_ref()[..16]);
    u128::from_be_bytes(first)
}

/// An action's id: stable for (rule, event seq, position) within a store, unguessable outside.
fn keyed_action_id(secret: &[u8; 32], rule: &str, seq: u64, position: u32) -> String {
    format!(
        "{:032x}",
        mac(
            secret,
            &format!("action\u{0}{rule}\u{0}{seq}\u{0}{position}")
        )
    )
}
