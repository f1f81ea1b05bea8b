//! The JSON document of an event grain (`event_payload` in `mediagrains`).
//!
//! An event grain's payload bytes *are* this document; `mediagrains` writes them with
//! Python's `json.dumps`, and [`EventPayload::to_python_json`] writes the same bytes so
//! that a grain rebuilt from its metadata alone is byte-identical to one from Python.

use std::borrow::Cow;
use std::io::Write;

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::GrainError;

/// The document carried by an event grain: `{"type", "topic", "data": [..]}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventPayload {
    /// A URN naming the kind of event (`type`).
    #[serde(rename = "type")]
    pub event_type: String,
    /// An identifier of the event's topic.
    pub topic: String,
    /// The changes the event reports.
    pub data: Vec<EventDatum>,
}

/// One change in an event: a path and optional values before and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventDatum {
    /// What changed.
    pub path: String,
    /// The value before; `Some(Value::Null)` (an explicit `null`) differs from absent.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub pre: Option<Value>,
    /// The value after; `Some(Value::Null)` (an explicit `null`) differs from absent.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub post: Option<Value>,
}

/// Keeps an explicit `null` as `Some(Value::Null)`: serde's `Option` would make it `None`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The shape check of [`EventPayload::validate`], borrowing so that it allocates little.
#[derive(Deserialize)]
struct Shape<'a> {
    #[serde(rename = "type", borrow)]
    _event_type: Cow<'a, str>,
    #[serde(borrow, rename = "topic")]
    _topic: Cow<'a, str>,
    #[serde(borrow, rename = "data")]
    _data: Vec<Object<DatumShape<'a>>>,
}

/// A struct read from a JSON object only. serde's derived structs also take an array of
/// their fields in order (`["urn:x", "topic", []]`), which `mediagrains` cannot read as
/// an event: the payload bytes are kept as they came, so they must be the object form.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(Fields(std::marker::PhantomData))
            .map(Object)
    }
}

#[derive(Deserialize)]
struct DatumShape<'a> {
    #[serde(borrow, rename = "path")]
    _path: Cow<'a, str>,
    #[serde(rename = "pre")]
    _pre: Option<IgnoredAny>,
    #[serde(rename = "post")]
    _post: Option<IgnoredAny>,
}

impl EventPayload {
    /// Parses an event grain's payload.
    pub fn parse(bytes: &[u8]) -> Result<EventPayload, GrainError> {
        serde_json::from_slice(bytes).map_err(GrainError::EventPayload)
    }

    /// Checks that bytes are an event document without building one (the GSF decoder
    /// calls this for every event grain, so it must be cheap).
    pub fn validate(bytes: &[u8]) -> Result<(), GrainError> {
        serde_json::from_slice::<Object<Shape<'_>>>(bytes)
            .map(|_| ())
            .map_err(GrainError::EventPayload)
    }

    /// Serialises as Python's `json.dumps` does (`", "`/`": "` separators, non-ASCII as
    /// `\uXXXX`, Python float repr): the bytes `mediagrains` makes of the same document.
    pub fn to_python_json(&self) -> Bytes {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"{\"type\": ");
        write_py_str(&self.event_type, &mut out);
        out.extend_from_slice(b", \"topic\": ");
        write_py_str(&self.topic, &mut out);
        out.extend_from_slice(b", \"data\": [");
        for (i, datum) in self.data.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(b"{\"path\": ");
            write_py_str(&datum.path, &mut out);
            if let Some(pre) = &datum.pre {
                out.extend_from_slice(b", \"pre\": ");
                write_py_value(pre, &mut out);
            }
            if let Some(post) = &datum.post {
                out.extend_from_slice(b", \"post\": ");
                write_py_value(post, &mut out);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        Bytes::from(out)
    }
}

fn write_py_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                write_py_float(f, out);
            } else {
                // Integers print the same in Python and Rust.
                let _ = write!(out, "{n}");
            }
        }
        Value::String(s) => write_py_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_py_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_py_str(key, out);
                out.extend_from_slice(b": ");
                write_py_value(item, out);
            }
            out.push(b'}');
        }
    }
}

/// Python's `json.dumps` string form with `ensure_ascii=True`.
fn write_py_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            ' '..='~' => out.push(c as u8),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push(b'"');
}

/// Python's `repr(float)`: the shortest round-tripping digits, positional notation for
/// decimal exponents in `-4..16`, else `d.ddde+XX`.
fn write_py_float(f: f64, out: &mut Vec<u8>) {
    // Rust's `{:e}` gives the same shortest digits as Python's repr.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    if f.is_sign_negative() {
        out.push(b'-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.extend_from_slice(digits.as_bytes());
                out.extend(std::iter::repeat_n(b'0', int_len - digits.len()));
                out.extend_from_slice(b".0");
            } else {
                out.extend_from_slice(&digits.as_bytes()[..int_len]);
                out.push(b'.');
                out.extend_from_slice(&digits.as_bytes()[int_len..]);
            }
        } else {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-exp - 1) as usize));
            out.extend_from_slice(digits.as_bytes());
        }
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        out.extend_from_slice(first.as_bytes());
        if !rest.is_empty() {
            out.push(b'.');
            out.extend_from_slice(rest.as_bytes());
        }
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exp.abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(f: f64) -> String {
        let mut out = Vec::new();
        write_py_float(f, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn floats_print_as_python_repr() {
        assert_eq!(py(1.5), "1.5");
        assert_eq!(py(1.0), "1.0");
        assert_eq!(py(0.0), "0.0");
        assert_eq!(py(-2.5), "-2.5");
        assert_eq!(py(1e16), "1e+16");
        assert_eq!(py(1.5e-5), "1.5e-05");
        assert_eq!(py(0.0001), "0.0001");
        assert_eq!(py(123456789.125), "123456789.125");
        assert_eq!(py(1e15), "1000000000000000.0");
        assert_eq!(py(1.25e300), "1.25e+300");
    }

    #[test]
    fn strings_escape_as_python() {
        let mut out = Vec::new();
        write_py_str("a\"\\\n\u{1}é\u{1F600}", &mut out);
        assert_eq!(out, b"\"a\\\"\\\\\\n\\u0001\\u00e9\\ud83d\\ude00\"");
    }

    #[test]
    fn event_document_matches_json_dumps() {
        let event = EventPayload {
            event_type: "urn:x-ipstudio:format:event.query".into(),
            topic: "/dummy".into(),
            data: vec![
                EventDatum {
                    path: "/a".into(),
                    pre: Some(Value::from(1)),
                    post: None,
                },
                EventDatum {
                    path: "/b".into(),
                    pre: None,
                    post: Some(serde_json::json!({"x": [true, null]})),
                },
            ],
        };
        assert_eq!(
            &event.to_python_json()[..],
            &b"{\"type\": \"urn:x-ipstudio:format:event.query\", \"topic\": \"/dummy\", \"data\": [{\"path\": \"/a\", \"pre\": 1}, {\"path\": \"/b\", \"post\": {\"x\": [true, null]}}]}"[..]
        );
        assert!(EventPayload::validate(&event.to_python_json()).is_ok());
        assert!(EventPayload::validate(b"{\"type\": 1}").is_err());
    }

    /// serde would take a struct from an array of its fields; an event payload (which
    /// is stored as it came) must be the object form `mediagrains` reads, at both levels.
    #[test]
    fn event_documents_are_objects_not_arrays() {
        let ok = br#" {"type": "urn:x", "topic": "/t", "data": [{"path": "/a", "pre": [1]}]} "#;
        assert!(EventPayload::validate(ok).is_ok());
        for refused in [
            &br#"["urn:x", "/t", []]"#[..],
            br#"["urn:x", "/t", [{"path": "/a"}]]"#,
            br#"{"type": "urn:x", "topic": "/t", "data": [["/a"]]}"#,
            br#"{"type": "urn:x", "topic": "/t", "data": [["/a", 1, 2]]}"#,
        ] {
            let error = EventPayload::validate(refused).expect_err("an array is not an event");
            assert!(
                error.to_string().contains("a JSON object"),
                "{}: {error}",
                String::from_utf8_lossy(refused)
            );
        }
    }
}
