//! Reads a report body into a tree whose size is bounded by `max_repayments`, whatever the
//! body holds. A `serde_json::Value` of the whole body costs about 100 bytes per JSON value:
//! an 8 MiB `{"repayments":[0,0,…]}` became 450 MB before it could be refused. Here the
//! `repayments` array is counted while it is read and the read stops at `max_repayments + 1`;
//! only the properties the schema knows are kept, each as a scalar (an array or object in
//! their place is skipped and stands as an empty one, which the schema then refuses); unknown
//! properties are counted, and only the first few named.

use std::fmt;
use std::sync::LazyLock;

use serde::de::{self, Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::schema::{SCHEMA_DOCUMENT, escape_pointer, truncate};
use super::{IntakeError, Violation, Violations};

/// Property names the schema allows at the top level and in each repayment.
static TOP_FIELDS: LazyLock<Vec<String>> =
    LazyLock::new(|| property_names(&SCHEMA_DOCUMENT["properties"]));
static ITEM_FIELDS: LazyLock<Vec<String>> = LazyLock::new(|| {
    property_names(&SCHEMA_DOCUMENT["properties"]["repayments"]["items"]["properties"])
});

fn property_names(properties: &Value) -> Vec<String> {
    properties
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// What was read: the bounded tree for the schema, and the unknown properties found.
pub(super) struct Parsed {
    pub value: Value,
    pub unknown: Violations,
}

pub(super) fn parse(body: &[u8], max_repayments: usize) -> Result<Parsed, IntakeError> {
    // Syntax first, over the whole body, without building anything: the raw value borrows
    // the body. Line and column are then those of the body.
    let document: &RawValue = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    let mut reader = Reader {
        max_repayments,
        unknown: Violations::default(),
        too_many: false,
    };
    match reader.document(document) {
        Ok(value) => Ok(Parsed {
            value,
            unknown: reader.unknown,
        }),
        Err(_) if reader.too_many => Err(IntakeError::TooManyRepayments {
            at_least: max_repayments + 1,
            max: max_repayments,
        }),
        // The syntax was checked above; what is left is e.g. a number serde_json reads as
        // text but not as a value. Reported as malformed, without a position inside the body.
        Err(e) => Err(IntakeError::MalformedJson {
            message: e.to_string(),
            line: 0,
            column: 0,
        }),
    }
}

/// serde_json's message ends with " at line L column C"; the error carries the position on
/// its own, so the message is kept without it (said once, by `IntakeError`'s text).
fn malformed(error: &serde_json::Error) -> IntakeError {
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    IntakeError::MalformedJson {
        message: text.strip_suffix(&position).unwrap_or(&text).to_owned(),
        line: error.line(),
        column: error.column(),
    }
}

struct Reader {
    max_repayments: usize,
    unknown: Violations,
    too_many: bool,
}

type Result2<T> = Result<T, serde_json::Error>;

impl Reader {
    fn document(&mut self, raw: &RawValue) -> Result2<Value> {
        let mut fields = Map::new();
        let object = members(raw, &mut |name, value| {
            if name == "repayments" {
                let items = self.repayments(value)?;
                fields.insert(name, items);
            } else if TOP_FIELDS.contains(&name) {
                fields.insert(name, scalar(value)?);
            } else {
                self.unknown_field("", &name);
            }
            Ok(())
        })?;
        if object {
            Ok(Value::Object(fields))
        } else {
            scalar(raw)
        }
    }

    fn repayments(&mut self, raw: &RawValue) -> Result2<Value> {
        if !raw.get().starts_with('[') {
            return scalar(raw);
        }
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let elements: Vec<&RawValue> = de.deserialize_seq(Counted {
            max: self.max_repayments,
            too_many: &mut self.too_many,
        })?;
        let items = elements
            .into_iter()
            .enumerate()
            .map(|(position, raw)| self.repayment(position, raw))
            .collect::<Result2<Vec<_>>>()?;
        Ok(Value::Array(items))
    }

    fn repayment(&mut self, position: usize, raw: &RawValue) -> Result2<Value> {
        let mut fields = Map::new();
        let object = members(raw, &mut |name, value| {
            if ITEM_FIELDS.contains(&name) {
                fields.insert(name, scalar(value)?);
            } else {
                self.unknown_field(&format!("/repayments/{position}"), &name);
            }
            Ok(())
        })?;
        if object {
            Ok(Value::Object(fields))
        } else {
            scalar(raw)
        }
    }

    fn unknown_field(&mut self, parent: &str, name: &str) {
        self.unknown.push_with(|| {
            Violation::new(
                format!("{parent}/{}", escape_pointer(name)),
                format!(
                    "{:?} is not a field of this report; check its spelling",
                    truncate(name.to_owned())
                ),
            )
        });
    }
}

/// A known property's value: scalars as they are (a number keeps its literal text), arrays and
/// objects as empty ones, so the schema names the wrong type without the body being copied.
fn scalar(raw: &RawValue) -> Result2<Value> {
    match raw.get().as_bytes().first() {
        Some(b'[') => Ok(Value::Array(Vec::new())),
        Some(b'{') => Ok(Value::Object(Map::new())),
        _ => serde_json::from_str(raw.get()),
    }
}

/// The elements of an array as raw values; an error as soon as there are more than `max`.
struct Counted<'a> {
    max: usize,
    too_many: &'a mut bool,
}

impl<'de> Visitor<'de> for Counted<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element()? {
            elements.push(element);
            if elements.len() > self.max {
                // The rest of the array is never looked at.
                *self.too_many = true;
                return Err(de::Error::custom("too many repayments"));
            }
        }
        Ok(elements)
    }
}

/// Calls `each` with every member of a JSON object, its value left as raw text, one at a time
/// (an object of a million members costs one member's memory). Duplicate names are all seen;
/// the last one wins, as in `serde_json::Value`. `false` when `raw` is not an object.
fn members<'de>(
    raw: &'de RawValue,
    each: &mut dyn FnMut(String, &'de RawValue) -> Result2<()>,
) -> Result2<bool> {
    if !raw.get().starts_with('{') {
        return Ok(false);
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_map(Members { each })?;
    Ok(true)
}

struct Members<'a, 'de> {
    each: &'a mut dyn FnMut(String, &'de RawValue) -> Result2<()>,
}

impl<'de> Visitor<'de> for Members<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key::<String>()? {
            let value: &'de RawValue = map.next_value()?;
            (self.each)(name, value).map_err(de::Error::custom)?;
        }
        Ok(())
    }
}
