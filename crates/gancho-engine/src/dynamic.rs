//! JSON to rhai values and back, without an intermediate tree.
//!
//! Integers that fit an `i64` become rhai integers (Mailjet's 17-digit ids do); larger ones
//! become strings of their exact digits rather than lossy floats.

use std::collections::HashSet;
use std::fmt;

use gancho_core::{Event, time_to_millis};
use rhai::{Array, Dynamic, FLOAT, INT, Map};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

struct Dyn(Dynamic);

impl<'de> de::Deserialize<'de> for Dyn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Dyn, D::Error> {
        deserializer.deserialize_any(DynVisitor)
    }
}

struct DynVisitor;

impl<'de> Visitor<'de> for DynVisitor {
    type Value = Dyn;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Dyn, E> {
        Ok(Dyn(Dynamic::from_bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Dyn, E> {
        Ok(Dyn(Dynamic::from_int(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Dyn, E> {
        Ok(Dyn(match INT::try_from(v) {
            Ok(v) => Dynamic::from_int(v),
            Err(_) => Dynamic::from(v.to_string()),
        }))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Dyn, E> {
        Ok(Dyn(Dynamic::from_float(v as FLOAT)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Dyn, E> {
        Ok(Dyn(Dynamic::from(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Dyn, E> {
        Ok(Dyn(Dynamic::from(v)))
    }

    fn visit_unit<E>(self) -> Result<Dyn, E> {
        Ok(Dyn(Dynamic::UNIT))
    }

    fn visit_none<E>(self) -> Result<Dyn, E> {
        Ok(Dyn(Dynamic::UNIT))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dyn, A::Error> {
        let mut array = Array::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Dyn(item)) = seq.next_element()? {
            array.push(item);
        }
        Ok(Dyn(Dynamic::from_array(array)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Dyn, A::Error> {
        let mut map = Map::new();
        while let Some((key, Dyn(value))) = access.next_entry::<String, Dyn>()? {
            map.insert(key.into(), value);
        }
        Ok(Dyn(Dynamic::from_map(map)))
    }
}

/// Parses JSON text straight into a rhai value.
pub(crate) fn from_json_text(text: &str) -> Result<Dynamic, serde_json::Error> {
    serde_json::from_str::<Dyn>(text).map(|d| d.0)
}

/// A JSON object as a rhai map of only the wanted keys; the other values are parsed (so the
/// text is still checked) but not built.
struct FilteredVisitor<'a>(&'a HashSet<String>);

impl<'de> Visitor<'de> for FilteredVisitor<'_> {
    type Value = Map;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Map, A::Error> {
        let mut map = Map::new();
        while let Some(Key(key)) = access.next_key::<Key<'de>>()? {
            if self.0.contains(key.as_ref()) {
                let Dyn(value) = access.next_value()?;
                map.insert(key.as_ref().into(), value);
            } else {
                access.next_value::<de::IgnoredAny>()?;
            }
        }
        Ok(map)
    }
}

/// A map key, borrowed from the text when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key<'de>, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A JSON value as a rhai value.
pub(crate) fn from_json(value: &Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None if n.is_u64() => Dynamic::from(n.to_string()),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(items) => Dynamic::from_array(items.iter().map(from_json).collect()),
        Value::Object(fields) => Dynamic::from_map(
            fields
                .iter()
                .map(|(k, v)| (k.as_str().into(), from_json(v)))
                .collect(),
        ),
    }
}

/// A rhai value as JSON. Values JSON cannot hold (function pointers, custom types) are an
/// error naming their type.
pub(crate) fn to_json(value: &Dynamic) -> Result<Value, String> {
    to_json_at(value, 0)
}

/// How deeply stored or sent values may nest (well inside what serde_json reads back, 128), and
/// values a rule builds (`sandbox::resolve_variables`).
pub(crate) const MAX_DEPTH: usize = 64;

fn to_json_at(value: &Dynamic, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "a value nested more than {MAX_DEPTH} levels deep cannot be stored or sent"
        ));
    }
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(f) = value.as_float() {
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} cannot be stored (not a finite number)"));
    }
    if value.is_string() {
        return Ok(Value::String(
            value.clone().into_string().unwrap_or_default(),
        ));
    }
    if let Ok(c) = value.as_char() {
        return Ok(Value::String(c.to_string()));
    }
    if value.is_array() {
        let array = value.read_lock::<Array>().ok_or("array is locked")?;
        return array
            .iter()
            .map(|v| to_json_at(v, depth + 1))
            .collect::<Result<_, _>>()
            .map(Value::Array);
    }
    if value.is_map() {
        let map = value.read_lock::<Map>().ok_or("map is locked")?;
        return map
            .iter()
            .map(|(k, v)| Ok((k.to_string(), to_json_at(v, depth + 1)?)))
            .collect::<Result<_, String>>()
            .map(Value::Object);
    }
    Err(format!(
        "a value of type {} cannot be stored or sent",
        value.type_name()
    ))
}

/// A rhai value as the text of a correlation key: strings as they are, integers in decimal.
pub(crate) fn key_text(value: &Dynamic) -> Result<String, String> {
    if value.is_string() {
        return Ok(value.clone().into_string().unwrap_or_default());
    }
    if let Ok(i) = value.as_int() {
        return Ok(i.to_string());
    }
    if let Ok(b) = value.as_bool() {
        return Ok(b.to_string());
    }
    if let Ok(f) = value.as_float() {
        return Ok(Value::from(f).to_string());
    }
    Err(format!(
        "a key value must be a string or a number, not {}",
        value.type_name()
    ))
}

/// gancho's own fields of `event`, and how each is made.
type MakeField = fn(&Event) -> Dynamic;
const OWN_FIELDS: [(&str, MakeField); 8] = [
    ("type", |e| Dynamic::from(e.qualified_type())),
    ("source", |e| Dynamic::from(e.source.clone())),
    ("kind", |e| Dynamic::from(e.kind.clone())),
    ("time", |e| Dynamic::from_int(time_to_millis(e.time))),
    ("received", |e| {
        Dynamic::from_int(time_to_millis(e.received))
    }),
    ("id", |e| Dynamic::from(e.id.as_str().to_owned())),
    ("seq", |e| {
        Dynamic::from_int(INT::try_from(e.seq).unwrap_or(INT::MAX))
    }),
    ("keys", |e| {
        Dynamic::from_map(
            e.keys
                .iter()
                .map(|(k, v)| (k.as_str().into(), Dynamic::from(v.clone())))
                .collect(),
        )
    }),
];

/// The fields [`event_map`] builds for rules that read these names as `event.NAME`: a payload
/// field shadowed by one of gancho's own (`payload_NAME`) is built under its own name first.
pub(crate) fn wanted_fields(names: impl IntoIterator<Item = String>) -> HashSet<String> {
    let mut wanted = HashSet::new();
    for name in names {
        if let Some(own) = name.strip_prefix("payload_")
            && OWN_FIELDS.iter().any(|(n, _)| *n == own)
        {
            wanted.insert(own.to_owned());
        }
        wanted.insert(name);
    }
    wanted
}

/// The map a rule sees as `event`: the payload's fields, and gancho's own (`type`, `source`,
/// `kind`, `time`, `received`, `id`, `seq`, `keys`). A payload field that one of gancho's
/// replaces stays readable as `payload_NAME` (Mailjet's own `time`, in seconds, is
/// `event.payload_time`). A payload that is not an object is under `payload`.
///
/// With `wanted` (see [`wanted_fields`]), only the fields of those names are built, the
/// payload's and gancho's own: the rules reading this event read no others
/// (`rule::event_fields`).
pub(crate) fn event_map(
    event: &Event,
    wanted: Option<&HashSet<String>>,
) -> Result<Map, serde_json::Error> {
    let text = event.data.get();
    let mut map = match wanted {
        Some(wanted) if text.trim_start().starts_with('{') => {
            let mut de = serde_json::Deserializer::from_str(text);
            let map = de.deserialize_map(FilteredVisitor(wanted))?;
            de.end()?;
            map
        }
        _ => {
            let data = from_json_text(text)?;
            if data.is_map() {
                data.cast::<Map>()
            } else {
                let mut map = Map::new();
                map.insert("payload".into(), data);
                map
            }
        }
    };
    // A payload field of an own field's name is built only when that name is wanted
    // (`wanted_fields`), so it is always shadowed here.
    for (name, make) in OWN_FIELDS {
        if wanted.is_none_or(|w| w.contains(name))
            && let Some(replaced) = map.insert(name.into(), make(event))
        {
            map.insert(format!("payload_{name}").into(), replaced);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_integers_stay_exact() {
        let v = from_json_text(r#"{"a": 288230387505203290, "b": 18446744073709551615, "c": 1.5}"#)
            .unwrap();
        let map = v.cast::<Map>();
        assert_eq!(map["a"].as_int().unwrap(), 288230387505203290);
        assert_eq!(
            map["b"].clone().into_string().unwrap(),
            "18446744073709551615"
        );
        assert_eq!(map["c"].as_float().unwrap(), 1.5);
    }

    #[test]
    fn a_narrowed_map_holds_only_the_wanted_fields() {
        let event = Event {
            seq: 7,
            source: "mailjet".to_owned(),
            kind: "open".to_owned(),
            time: chrono::DateTime::from_timestamp(1_764_320_000, 0).unwrap(),
            received: chrono::DateTime::from_timestamp(1_764_320_001, 0).unwrap(),
            id: gancho_core::EventId::from_provider("x"),
            keys: Default::default(),
            data: serde_json::value::RawValue::from_string(
                r#"{"email":"a@b.c","type":"t","geo":{"x":[1,2]},"esc\u0061ped":1}"#.to_owned(),
            )
            .unwrap(),
        };
        let wanted = wanted_fields(["email", "payload_type", "escaped"].map(str::to_owned));
        let map = event_map(&event, Some(&wanted)).unwrap();
        assert_eq!(map["email"].clone().into_string().unwrap(), "a@b.c");
        assert!(!map.contains_key("geo"));
        assert_eq!(map["escaped"].as_int().unwrap(), 1);
        assert_eq!(map["payload_type"].clone().into_string().unwrap(), "t");
        assert_eq!(map["type"].clone().into_string().unwrap(), "mailjet.open");
        // gancho's own fields too are built only when read.
        assert!(!map.contains_key("seq"));
        let map = event_map(&event, Some(&wanted_fields(["seq".to_owned()]))).unwrap();
        assert_eq!(map.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["seq"]);
        assert_eq!(map["seq"].as_int().unwrap(), 7);
        let full = event_map(&event, None).unwrap();
        assert!(full.contains_key("geo"));
    }

    #[test]
    fn round_trip() {
        let text = r#"{"a":[1,"x",true,null,{"b":2.5}]}"#;
        let v = from_json_text(text).unwrap();
        assert_eq!(to_json(&v).unwrap().to_string(), text);
    }
}
