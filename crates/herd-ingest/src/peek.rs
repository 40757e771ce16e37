//! A single pass over a properties JSON text that picks out a few top-level members.
//!
//! Backfill reads 100–300 bytes of properties per event but needs only `$groups` and a few
//! `$group…` fields of them. Deserialising the text (even into a struct that ignores the other
//! keys) costs key matching and value tokenising per member; this walk finds each top-level
//! member's extent (strings skipped with `memchr`, containers by depth) and hands only the
//! wanted values to `serde_json`.
//!
//! What it checks: the text is one object; members are `"key": value` separated by commas;
//! strings and brackets are closed; nothing follows the object. Skipped scalar values are
//! delimited, not validated (`{"a": tru}` passes), and the wanted values are parsed by
//! `serde_json` in full. A key with an escape sequence is decoded by `serde_json`. A key given
//! twice keeps its last value, as a parsed `serde_json::Map` would.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// `$groups` as read: its members in order when it is an object (no map is built), else the
/// value itself, which the group rules refuse.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Members {
    /// `(key, value)` in the order of the text; a repeated key appears twice.
    Pairs(Vec<(String, Value)>),
    /// Not an object.
    Other(Value),
}

impl From<Value> for Members {
    fn from(v: Value) -> Self {
        match v {
            Value::Object(m) => Members::Pairs(m.into_iter().collect()),
            other => Members::Other(other),
        }
    }
}

/// An object's members straight into a vector.
struct Pairs(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(2));
                while let Some(kv) = map.next_entry()? {
                    out.push(kv);
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The members the group rules read.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct GroupFields {
    pub(crate) groups: Option<Members>,
    pub(crate) process_person_profile: Option<Value>,
    pub(crate) group_type: Option<Value>,
    pub(crate) group_key: Option<Value>,
    pub(crate) group_set: Option<Value>,
}

impl GroupFields {
    fn slot(&mut self, key: &str) -> Option<&mut Option<Value>> {
        match key {
            "$process_person_profile" => Some(&mut self.process_person_profile),
            "$group_type" => Some(&mut self.group_type),
            "$group_key" => Some(&mut self.group_key),
            "$group_set" => Some(&mut self.group_set),
            _ => None,
        }
    }
}

/// Reads the group fields of a properties object text.
pub(crate) fn group_fields(text: &str) -> Result<GroupFields, String> {
    let mut out = GroupFields::default();
    let b = text.as_bytes();
    let mut pos = skip_ws(b, 0);
    if b.get(pos) != Some(&b'{') {
        return Err(not_object("it does not start with '{'"));
    }
    pos = skip_ws(b, pos + 1);
    if b.get(pos) == Some(&b'}') {
        return finish(b, pos + 1, out);
    }
    loop {
        if b.get(pos) != Some(&b'"') {
            return Err(not_object(&format!("expected a key at byte {pos}")));
        }
        let end = string_end(b, pos).ok_or_else(|| not_object("unterminated key"))?;
        let raw = &text[pos + 1..end];
        let decoded;
        let key = if raw.contains('\\') {
            decoded = serde_json::from_str::<String>(&text[pos..=end])
                .map_err(|e| not_object(&format!("bad key: {e}")))?;
            decoded.as_str()
        } else {
            raw
        };
        pos = skip_ws(b, end + 1);
        if b.get(pos) != Some(&b':') {
            return Err(not_object(&format!("expected ':' at byte {pos}")));
        }
        pos = skip_ws(b, pos + 1);
        if key == "$groups" && b.get(pos) == Some(&b'{') {
            let pairs: Pairs = parse_value(text, &mut pos, key)?;
            out.groups = Some(Members::Pairs(pairs.0));
        } else if key == "$groups" {
            out.groups = Some(Members::Other(parse_value(text, &mut pos, key)?));
        } else {
            match out.slot(key) {
                Some(slot) => *slot = Some(parse_value(text, &mut pos, key)?),
                None => pos = value_end(b, pos).ok_or_else(|| not_object("unterminated value"))?,
            }
        }
        pos = skip_ws(b, pos);
        match b.get(pos) {
            Some(b',') => pos = skip_ws(b, pos + 1),
            Some(b'}') => return finish(b, pos + 1, out),
            _ => return Err(not_object(&format!("expected ',' or '}}' at byte {pos}"))),
        }
    }
}

/// Where one `$groups` member lies in the text: byte ranges of the group type and of the key
/// (both JSON strings without escapes, quotes excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupSpan {
    pub(crate) group_type: (u32, u32),
    pub(crate) key: (u32, u32),
}

/// The common case of an ordinary event, without building a value: `$groups` is absent,
/// `null`, or an object whose members are strings without escapes or control characters,
/// and `$process_person_profile` is absent or a literal `true`/`false`. Appends the members'
/// spans to `out` and returns whether the event is personless. `None` (with `out` as it was)
/// when anything else is met, valid or not: [`group_fields`] then decides, so the answer is
/// always the same as its.
pub(crate) fn group_spans(text: &str, out: &mut Vec<GroupSpan>) -> Option<bool> {
    let start = out.len();
    let found = spans_inner(text, out, start);
    if found.is_none() {
        out.truncate(start);
    }
    found
}

fn spans_inner(text: &str, out: &mut Vec<GroupSpan>, start: usize) -> Option<bool> {
    let b = text.as_bytes();
    if b.len() >= u32::MAX as usize {
        return None;
    }
    let mut personless = false;
    let mut pos = skip_ws(b, 0);
    if b.get(pos) != Some(&b'{') {
        return None;
    }
    pos = skip_ws(b, pos + 1);
    if b.get(pos) == Some(&b'}') {
        return (skip_ws(b, pos + 1) == b.len()).then_some(false);
    }
    loop {
        let (ks, ke) = plain_string(b, pos)?;
        let key = &b[ks..ke];
        pos = skip_ws(b, ke + 1);
        if b.get(pos) != Some(&b':') {
            return None;
        }
        pos = skip_ws(b, pos + 1);
        match key {
            b"$groups" => {
                // A repeated key keeps its last value.
                out.truncate(start);
                pos = group_members(b, pos, out)?;
            }
            b"$process_person_profile" => {
                let (value, end) = literal(b, pos)?;
                personless = value == Literal::False;
                pos = end;
            }
            _ => pos = value_end(b, pos)?,
        }
        pos = skip_ws(b, pos);
        match b.get(pos) {
            Some(b',') => pos = skip_ws(b, pos + 1),
            Some(b'}') => return (skip_ws(b, pos + 1) == b.len()).then_some(personless),
            _ => return None,
        }
    }
}

/// The content range of a string at `pos` that has no escapes and no control characters.
fn plain_string(b: &[u8], pos: usize) -> Option<(usize, usize)> {
    if b.get(pos) != Some(&b'"') {
        return None;
    }
    let end = string_end(b, pos)?;
    let content = &b[pos + 1..end];
    if content.iter().any(|&c| c == b'\\' || c < 0x20) {
        return None;
    }
    Some((pos + 1, end))
}

#[derive(PartialEq)]
enum Literal {
    True,
    False,
    Null,
}

/// `true`, `false` or `null` at `pos`, delimited; the index past it.
fn literal(b: &[u8], pos: usize) -> Option<(Literal, usize)> {
    let rest = b.get(pos..)?;
    let (value, len) = if rest.starts_with(b"true") {
        (Literal::True, 4)
    } else if rest.starts_with(b"false") {
        (Literal::False, 5)
    } else if rest.starts_with(b"null") {
        (Literal::Null, 4)
    } else {
        return None;
    };
    match b.get(pos + len) {
        None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') => Some((value, pos + len)),
        _ => None,
    }
}

/// `$groups` at `pos`: `null`, or an object of plain strings whose spans are appended.
fn group_members(b: &[u8], mut pos: usize, out: &mut Vec<GroupSpan>) -> Option<usize> {
    if b.get(pos) != Some(&b'{') {
        return match literal(b, pos)? {
            (Literal::Null, end) => Some(end),
            _ => None,
        };
    }
    pos = skip_ws(b, pos + 1);
    if b.get(pos) == Some(&b'}') {
        return Some(pos + 1);
    }
    loop {
        let (ts, te) = plain_string(b, pos)?;
        pos = skip_ws(b, te + 1);
        if b.get(pos) != Some(&b':') {
            return None;
        }
        pos = skip_ws(b, pos + 1);
        let (vs, ve) = plain_string(b, pos)?;
        out.push(GroupSpan {
            group_type: (ts as u32, te as u32),
            key: (vs as u32, ve as u32),
        });
        pos = skip_ws(b, ve + 1);
        match b.get(pos) {
            Some(b',') => pos = skip_ws(b, pos + 1),
            Some(b'}') => return Some(pos + 1),
            _ => return None,
        }
    }
}

/// One value at `pos` through `serde_json`; `pos` moves past it.
fn parse_value<T: for<'de> Deserialize<'de>>(
    text: &str,
    pos: &mut usize,
    key: &str,
) -> Result<T, String> {
    let mut values = serde_json::Deserializer::from_str(&text[*pos..]).into_iter();
    let value = match values.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) => return Err(not_object(&format!("value of {key:?}: {e}"))),
        None => return Err(not_object(&format!("value of {key:?} is missing"))),
    };
    *pos += values.byte_offset();
    Ok(value)
}

fn not_object(why: &str) -> String {
    format!("properties are not a JSON object: {why}")
}

fn finish(b: &[u8], pos: usize, out: GroupFields) -> Result<GroupFields, String> {
    if skip_ws(b, pos) == b.len() {
        Ok(out)
    } else {
        Err(not_object("text follows the object"))
    }
}

fn skip_ws(b: &[u8], mut pos: usize) -> usize {
    while let Some(c) = b.get(pos) {
        if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
            break;
        }
        pos += 1;
    }
    pos
}

/// The index of the quote closing the string that opens at `start`.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut pos = start + 1;
    loop {
        let at = pos + memchr::memchr2(b'"', b'\\', b.get(pos..)?)?;
        if b[at] == b'"' {
            return Some(at);
        }
        // An escape: the next byte is escaped whatever it is (`\"`, `\\`, `\u…`).
        pos = at + 2;
    }
}

/// The index just past the value that starts at `start`.
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    match b.get(start)? {
        b'"' => string_end(b, start).map(|e| e + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut pos = start;
            loop {
                match b.get(pos)? {
                    b'"' => pos = string_end(b, pos)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(pos + 1);
                        }
                    }
                    _ => {}
                }
                pos += 1;
            }
        }
        _ => {
            let len = b[start..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
                .unwrap_or(b.len() - start);
            (len > 0).then_some(start + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// What a full parse into a map gives (capture's path).
    fn reference(text: &str) -> Result<GroupFields, ()> {
        let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text) else {
            return Err(());
        };
        Ok(GroupFields {
            groups: m.get("$groups").cloned().map(Members::from),
            process_person_profile: m.get("$process_person_profile").cloned(),
            group_type: m.get("$group_type").cloned(),
            group_key: m.get("$group_key").cloned(),
            group_set: m.get("$group_set").cloned(),
        })
    }

    #[test]
    fn picks_top_level_members_only() {
        let text = r#" { "$browser" : "Chr\"ome{" , "nested":{"$groups":1,"a":[1,{"b":"]"}]},
            "$groups":{"company":"id:5","project":42}, "n": -1.5e3, "t": true, "z": null,
            "$group_type":"company", "$process_person_profile": false } "#;
        let f = group_fields(text).expect("object");
        assert_eq!(
            f.groups,
            Some(Members::from(json!({"company": "id:5", "project": 42})))
        );
        assert_eq!(f.group_type, Some(json!("company")));
        assert_eq!(f.process_person_profile, Some(json!(false)));
        assert_eq!(f.group_key, None);
        assert_eq!(Ok(f), reference(text).map_err(|_| "".to_string()));
    }

    #[test]
    fn escaped_keys_and_repeated_keys() {
        let f = group_fields(r#"{"$grou\u0070s":{"a":"1"},"$group_key":"x","$group_key":"y"}"#)
            .expect("object");
        assert_eq!(f.groups, Some(Members::from(json!({"a": "1"}))));
        assert_eq!(f.group_key, Some(json!("y")));
    }

    #[test]
    fn refuses_what_is_not_one_object() {
        for bad in [
            "",
            "[]",
            "1",
            "{",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a":"x}"#,
            r#"{"a":{"b":1}"#,
            r#"{"a":1} x"#,
            r#"{"a":1 "b":2}"#,
            r#"{"$groups":{"a":}}"#,
            r#"{"$groups":"#,
            r#"{"a":"\"#,
        ] {
            assert!(group_fields(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(group_fields(" {} ").expect("empty"), GroupFields::default());
    }

    /// The wanted keys, or another key made of `others`' characters.
    fn key(others: &'static str) -> impl Strategy<Value = String> + Clone {
        prop_oneof![
            Just("$groups".to_string()),
            Just("$group_key".to_string()),
            Just("$group_set".to_string()),
            Just("$group_type".to_string()),
            Just("$process_person_profile".to_string()),
            others,
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let inner_key = key("[a-z$\"\\\\{}\\[\\], :é]{0,6}");
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            "[a-z\"\\\\{}\\[\\], :\\n\u{1}é]{0,8}".prop_map(Value::from),
        ];
        let inner = leaf.prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((inner_key.clone(), inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        });
        prop::collection::vec((key("[a-z$\"\\\\ ]{0,6}"), inner), 0..8)
            .prop_map(|kv| Value::Object(kv.into_iter().collect()))
    }

    /// What [`group_spans`] found, as `(type, key)` strings.
    fn spans_of(text: &str) -> Option<(Vec<(String, String)>, bool)> {
        let mut out = vec![GroupSpan {
            group_type: (0, 0),
            key: (0, 0),
        }];
        let personless = group_spans(text, &mut out)?;
        let s = |(a, b): (u32, u32)| text[a as usize..b as usize].to_string();
        let pairs = out[1..]
            .iter()
            .map(|g| (s(g.group_type), s(g.key)))
            .collect();
        Some((pairs, personless))
    }

    #[test]
    fn spans_of_plain_groups_and_the_cases_left_to_the_full_path() {
        let text = r#" {"a":{"$groups":1},"$groups":{"company":"id:5", "project" : "p1"},
            "$process_person_profile": false, "n":[1,{"x":"]"}]} "#;
        assert_eq!(
            spans_of(text),
            Some((
                vec![
                    ("company".into(), "id:5".into()),
                    ("project".into(), "p1".into())
                ],
                true
            ))
        );
        assert_eq!(spans_of(r#"{"$groups":null}"#), Some((vec![], false)));
        assert_eq!(
            spans_of(r#"{"$groups":{"a":"1"},"$groups":{"b":"2"}}"#),
            Some((vec![("b".into(), "2".into())], false))
        );
        for slow in [
            r#"{"$groups":{"a":1}}"#,
            r#"{"$groups":{"a":"x\"y"}}"#,
            "{\"$groups\":{\"a\":\"x\ty\"}}",
            r#"{"$groups":"x"}"#,
            r#"{"$grou\u0070s":{"a":"1"}}"#,
            r#"{"$process_person_profile":"false"}"#,
            r#"{"$process_person_profile":fals}"#,
            r#"{"$groups":{"a":"1"}"#,
            r#"{"a":1} x"#,
            "[]",
        ] {
            assert_eq!(spans_of(slow), None, "{slow}");
        }
    }

    proptest! {
        /// Same members as a full parse, for any object, compact or pretty.
        #[test]
        fn agrees_with_a_full_parse(v in json_value(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&v).expect("json")
            } else {
                serde_json::to_string(&v).expect("json")
            };
            let expected = reference(&text).map_err(|_| ());
            prop_assert_eq!(group_fields(&text).map_err(|_| ()), expected.clone());
            // Where the span path answers, it answers as the full path does.
            if let Some((pairs, personless)) = spans_of(&text) {
                let Ok(full) = expected else {
                    return Err(TestCaseError::fail("spans of a refused text"));
                };
                let groups = match full.groups {
                    None | Some(Members::Other(Value::Null)) => vec![],
                    Some(Members::Pairs(p)) => p,
                    Some(Members::Other(_)) => {
                        return Err(TestCaseError::fail("spans of non-object $groups"));
                    }
                };
                let as_values: Vec<(String, Value)> =
                    pairs.into_iter().map(|(t, k)| (t, Value::String(k))).collect();
                prop_assert_eq!(as_values, groups);
                prop_assert_eq!(personless, full.process_person_profile == Some(Value::Bool(false)));
            }
        }

        /// Cut or damaged texts never panic, and whatever a full parse refuses is refused,
        /// except a damaged scalar inside a skipped member.
        #[test]
        fn damaged_texts_do_not_panic(v in json_value(), cut in any::<prop::sample::Index>()) {
            let text = serde_json::to_string(&v).expect("json");
            let cut = cut.index(text.len() + 1);
            if let Some(prefix) = text.get(..cut) {
                let _ = group_fields(prefix);
                if prefix.len() < text.len() {
                    prop_assert!(group_fields(prefix).is_err() || reference(prefix).is_ok());
                }
            }
        }
    }
}
