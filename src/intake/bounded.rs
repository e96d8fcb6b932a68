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
    let mut reader = Reader {
        max_repayments,
        unknown: Violations::default(),
        too_many: false,
    };
    // An object (every report) is read as it is checked, in one pass over the body: its
    // members, each repayment's and each value's syntax are all checked on the way, and a
    // read to the end (`end`) leaves nothing unchecked. Only when that read fails does the
    // syntax pass below run, so a syntax error still gets the body's line and column, and a
    // body with too many repayments and a syntax error past them is still called malformed.
    // (The syntax pass first, always, was a tenth of a 200-repayment report's CPU.)
    if let Ok(text) = std::str::from_utf8(body) {
        let text = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
        if text.starts_with('{') {
            if let Ok(value) = reader.plain_document(text) {
                return Ok(Parsed {
                    value,
                    unknown: reader.unknown,
                });
            }
            // Anything else is read again, from the start, the general way.
            reader.unknown = Violations::default();
            match reader.document(text, true) {
                Ok(value) => {
                    return Ok(Parsed {
                        value,
                        unknown: reader.unknown,
                    });
                }
                Err(e) => return Err(refused(body, &reader, e)),
            }
        }
    }
    // Not an object (or not UTF-8): the syntax pass, then the value as a scalar.
    let document: &RawValue = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    match reader.document(document.get(), false) {
        Ok(value) => Ok(Parsed {
            value,
            unknown: reader.unknown,
        }),
        // The syntax was checked just above.
        Err(e) => Err(refused_for_content(&reader, e)),
    }
}

/// Why a body whose read failed is refused: its syntax error, with the position, when it has
/// one; else what its content is refused for.
fn refused(body: &[u8], reader: &Reader, error: serde_json::Error) -> IntakeError {
    match serde_json::from_slice::<&RawValue>(body) {
        Err(syntax) => malformed(&syntax),
        Ok(_) => refused_for_content(reader, error),
    }
}

/// Why a body of sound syntax whose read failed is refused: too many repayments, else what the
/// read said.
fn refused_for_content(reader: &Reader, error: serde_json::Error) -> IntakeError {
    if reader.too_many {
        return IntakeError::TooManyRepayments {
            at_least: reader.max_repayments + 1,
            max: reader.max_repayments,
        };
    }
    // The syntax is sound; what is left is e.g. a number serde_json reads as text but not as
    // a value. Reported as malformed, without a position inside the body.
    IntakeError::MalformedJson {
        message: error.to_string(),
        line: 0,
        column: 0,
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
    /// `whole`: `raw` is the whole body, not yet checked past its first value.
    fn document(&mut self, raw: &str, whole: bool) -> Result2<Value> {
        let mut fields = Map::new();
        let object = members(raw, whole, &mut |name, value| {
            if name == "repayments" {
                let items = self.repayments(value)?;
                fields.insert(name, items);
                Ok(())
            } else {
                self.top_member(&mut fields, name, value)
            }
        })?;
        if object {
            Ok(Value::Object(fields))
        } else {
            scalar(raw)
        }
    }

    fn repayments(&mut self, raw: &RawValue) -> Result2<Value> {
        if !raw.get().starts_with('[') {
            return scalar(raw.get());
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
        let object = members(raw.get(), false, &mut |name, value| {
            self.item_member(position, &mut fields, name, value)
        })?;
        if object {
            Ok(Value::Object(fields))
        } else {
            scalar(raw.get())
        }
    }

    /// The usual report, read in one pass: `repayments` an array of objects, no more than
    /// `max_repayments`. Any other shape, and any error, fails this read; `document` then
    /// reads the body the general way, which gives the same tree for the usual report (a
    /// test compares them) and the refusals for the rest. `document` reads the repayments
    /// three times over (the array, each element, each member) to be able to take any shape.
    fn plain_document(&mut self, text: &str) -> Result2<Value> {
        let mut de = serde_json::Deserializer::from_str(text);
        let value = de.deserialize_map(PlainReport { reader: self })?;
        de.end()?;
        Ok(value)
    }

    /// A top-level member other than `repayments`: kept if the schema knows it.
    fn top_member(
        &mut self,
        fields: &mut Map<String, Value>,
        name: String,
        value: &RawValue,
    ) -> Result2<()> {
        if TOP_FIELDS.contains(&name) {
            fields.insert(name, scalar(value.get())?);
        } else {
            self.unknown_field("", &name);
        }
        Ok(())
    }

    /// A member of the repayment at `position`: kept if the schema knows it.
    fn item_member(
        &mut self,
        position: usize,
        fields: &mut Map<String, Value>,
        name: String,
        value: &RawValue,
    ) -> Result2<()> {
        if ITEM_FIELDS.contains(&name) {
            fields.insert(name, scalar(value.get())?);
        } else {
            self.unknown_field(&format!("/repayments/{position}"), &name);
        }
        Ok(())
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

struct PlainReport<'r> {
    reader: &'r mut Reader,
}

impl<'de> Visitor<'de> for PlainReport<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a report")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if name == "repayments" {
                let items = map.next_value_seed(PlainRepayments {
                    reader: &mut *self.reader,
                })?;
                fields.insert(name, items);
            } else {
                let value: &'de RawValue = map.next_value()?;
                self.reader
                    .top_member(&mut fields, name, value)
                    .map_err(de::Error::custom)?;
            }
        }
        Ok(Value::Object(fields))
    }
}

struct PlainRepayments<'r> {
    reader: &'r mut Reader,
}

impl<'de> de::DeserializeSeed<'de> for PlainRepayments<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PlainRepayments<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of repayments")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(PlainRepayment {
            reader: &mut *self.reader,
            position: items.len(),
        })? {
            items.push(item);
            if items.len() > self.reader.max_repayments {
                return Err(de::Error::custom("too many repayments"));
            }
        }
        Ok(Value::Array(items))
    }
}

struct PlainRepayment<'r> {
    reader: &'r mut Reader,
    position: usize,
}

impl<'de> de::DeserializeSeed<'de> for PlainRepayment<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PlainRepayment<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a repayment")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let value: &'de RawValue = map.next_value()?;
            self.reader
                .item_member(self.position, &mut fields, name, value)
                .map_err(de::Error::custom)?;
        }
        Ok(Value::Object(fields))
    }
}

/// A known property's value: scalars as they are (a number keeps its literal text), arrays and
/// objects as empty ones, so the schema names the wrong type without the body being copied.
fn scalar(raw: &str) -> Result2<Value> {
    match raw.as_bytes().first() {
        Some(b'[') => Ok(Value::Array(Vec::new())),
        Some(b'{') => Ok(Value::Object(Map::new())),
        _ => serde_json::from_str(raw),
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
/// the last one wins, as in `serde_json::Value`. `false` when `raw` is not an object. `whole`:
/// nothing but white space may follow the object.
fn members<'de>(
    raw: &'de str,
    whole: bool,
    each: &mut dyn FnMut(String, &'de RawValue) -> Result2<()>,
) -> Result2<bool> {
    if !raw.starts_with('{') {
        return Ok(false);
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    de.deserialize_map(Members { each })?;
    if whole {
        de.end()?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(max_repayments: usize) -> Reader {
        Reader {
            max_repayments,
            unknown: Violations::default(),
            too_many: false,
        }
    }

    /// The one-pass read gives the general read's tree and unknown properties, or fails and
    /// leaves the body to the general read.
    #[test]
    fn the_one_pass_read_agrees_with_the_general_read() {
        let item = r#"{"loan_id":"L1","client_id":7,"amount":"25.00"}"#;
        let plain = [
            format!(r#"{{"period":"2026-10","repayments":[{item},{item}]}}"#),
            r#"{"repayments":[],"period":"2026-10","correction":true,"partner_id":"p1"}"#.into(),
            // Unknown properties, at the top and in a repayment, in the order met.
            r#"{"x":1,"repayments":[{"loan_id":"L1","nick":[1],"amount":2.5e1,"y":{}}],"z":null}"#
                .into(),
            // Values of the wrong kind where a scalar belongs stand as empty ones.
            r#"{"period":[1,[2]],"repayments":[{"loan_id":{"a":1},"amount":[3]}]}"#.into(),
            // Duplicates: the last wins, in both reads; escaped names are names.
            r#"{"repayments":[{"loan_id":"A","loan_id":"B","amo\u0075nt":"1"}],"repayments":[]}"#
                .into(),
            format!(r#"{{"repayments":[{item},{item},{item}]}}"#),
        ];
        for body in &plain {
            let mut one = reader(3);
            let fast = one.plain_document(body).expect(body);
            let mut general = reader(3);
            assert_eq!(fast, general.document(body, true).unwrap(), "{body}");
            assert_eq!(one.unknown, general.unknown, "{body}");
            assert!(!general.too_many);
        }
        let other = [
            // More repayments than allowed.
            format!(r#"{{"repayments":[{item},{item},{item},{item}]}}"#),
            // Repayments that are not an array, or not objects.
            r#"{"repayments":{"loan_id":"L1"}}"#.into(),
            r#"{"repayments":"none"}"#.into(),
            r#"{"repayments":[1,{"loan_id":"L1"}]}"#.into(),
            r#"{"repayments":[[]]}"#.into(),
            // Syntax errors and trailing text.
            r#"{"repayments":[{"loan_id":"L1",}]}"#.into(),
            r#"{"repayments":[]} x"#.into(),
        ];
        for body in &other {
            assert!(reader(3).plain_document(body).is_err(), "{body}");
        }
    }
}
