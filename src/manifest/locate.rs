//! The line where a policy path (`Statement[2].Effect`) is written in a manifest document, so
//! that an error or a warning about it points at that line rather than at `policy:`.
//!
//! serde_norway keeps no positions in its values, but it puts the position of the event it is
//! reading into an error raised there. So the document is read again with a visitor that walks
//! the path and raises a marker error where the path ends: at the key for a key, at the start
//! of the element for an index. The same parser reads it, so the two cannot disagree about its
//! shape; it only runs for documents that have something to report.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The marker error's message: anything else is the document's own error, not a find.
const FOUND: &str = "kpr: path found";

/// A path longer than this is not located: every part of a path costs a reading of the
/// document, and a key written with thousands of `[0]` (escaped past the bracket cap) would
/// cost minutes. A policy's deepest real path has ~8 parts.
const MAX_SEGMENTS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
    /// The node at the path, not its key: only ever last.
    Value,
}

/// `policy.Statement[2].Effect` -> `[Key(policy), Key(Statement), Index(2), Key(Effect)]`.
/// A condition key (`aws:PrincipalTag/team.name`) may hold dots and brackets of its own, and it
/// is the last key of any policy path: the key after an operator (`ForAnyValue:StringLike`,
/// which has a colon but no dot) under `Condition` is the rest, then its trailing indices.
fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        let condition_key = matches!(out.as_slice(), [.., Seg::Key("Condition"), Seg::Key(_)]);
        let end = if condition_key {
            trailing_indices(rest)
        } else {
            rest.find(['.', '[']).unwrap_or(rest.len())
        };
        if end > 0 {
            out.push(Seg::Key(&rest[..end]));
        }
        rest = &rest[end..];
        while let Some(inner) = rest.strip_prefix('[') {
            let Some((n, after)) = inner.split_once(']') else {
                return out;
            };
            let Ok(i) = n.parse() else {
                return out;
            };
            out.push(Seg::Index(i));
            rest = after;
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    out
}

/// Where the `[n]` indices at the end of `s` begin (`s.len()` when there are none).
fn trailing_indices(s: &str) -> usize {
    let mut end = s.len();
    while let Some(open) = s[..end]
        .strip_suffix(']')
        .and_then(|body| body.rfind('['))
        .filter(|&open| open + 2 < end && s[open + 1..end - 1].bytes().all(|b| b.is_ascii_digit()))
    {
        end = open;
    }
    end
}

/// The 1-based line, within `doc_text` (one YAML document), of the deepest part of `path`
/// that is written there; `None` when not even its first part is, or when the document may
/// use aliases: serde_norway replays an alias with its anchor's positions, which would point
/// into another statement.
pub fn line_of(doc_text: &str, path: &str) -> Option<usize> {
    if may_hold_an_alias(doc_text) {
        return None;
    }
    line_of_unaliased(doc_text, path)
}

/// Whether a `*` in the text may start an alias: an alias is a whole node, so its `*` opens a
/// line's content, or follows `- `, `: ` (`:` alone after a quoted key), `? `, `[`, `{` or `,`,
/// and a name follows it. The `*` of `"*"`, `kinesis:*` or `stream/*` never does, so the
/// usual policy keeps its lines. A `*` in a comment or a quoted string may pass for one: that
/// only costs the line.
fn may_hold_an_alias(text: &str) -> bool {
    let bytes = text.as_bytes();
    (0..bytes.len()).filter(|&at| bytes[at] == b'*').any(|at| {
        let named = bytes
            .get(at + 1)
            .is_some_and(|b| !b.is_ascii_whitespace() && !b",[]{}".contains(b));
        // What comes before it on its line, spaces and tabs aside.
        let last = bytes[..at].iter().rposition(|&b| b != b' ' && b != b'\t');
        let spaced = last.map_or(0, |i| i + 1) < at;
        // After a quoted key, `:` needs no space (`"Principal":*p`, in flow style).
        let after_quoted_key =
            last.is_some_and(|i| bytes[i] == b':' && i > 0 && matches!(bytes[i - 1], b'"' | b'\''));
        named
            && match last.map(|i| bytes[i]) {
                None | Some(b'\n' | b'[' | b'{' | b',') => true,
                Some(b'-' | b':' | b'?') => spaced || after_quoted_key,
                Some(_) => false,
            }
    })
}

/// [`line_of`] for a text that has no aliases, whatever characters it holds: JSON, where `&`
/// and `*` can only be inside strings.
pub fn line_of_unaliased(doc_text: &str, path: &str) -> Option<usize> {
    let segs = segments(path);
    if segs.len() > MAX_SEGMENTS {
        return None;
    }
    (1..=segs.len()).rev().find_map(|k| {
        let found = Find(&segs[..k]).deserialize(serde_norway::Deserializer::from_str(doc_text));
        match found {
            // serde_norway puts the path it was at before the message.
            Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| line_at(doc_text, &l)),
            _ => None,
        }
    })
}

/// The scalar at `path` in `doc_text` as written, which YAML's reading of it may not keep
/// (`0x10` is read as 16): its 1-based line, and its text past any anchor or tag, up to the
/// first blank or flow indicator (a quoted one's inside its quotes), which holds any number
/// whole. `None` when the path is not written there. Through an alias, its anchor's: where
/// its text is written (see [`line_of`] for why lines are otherwise not taken through
/// aliases).
/// The path is given as its parts: a key holding dots or brackets is one part, whatever it
/// holds.
pub(crate) fn scalar_at<'t>(doc_text: &'t str, mut segs: Vec<Seg<'_>>) -> Option<(usize, &'t str)> {
    if segs.len() > MAX_SEGMENTS {
        return None;
    }
    segs.push(Seg::Value);
    let at = match Find(&segs).deserialize(serde_norway::Deserializer::from_str(doc_text)) {
        Err(e) if e.to_string().contains(FOUND) => e.location()?,
        _ => return None,
    };
    let mut text = doc_text.get(at.index()..)?;
    // Node properties: `&anchor`, `!tag`, `!!int`, in either order.
    while let Some(property) = text.strip_prefix(['&', '!']) {
        let end = property
            .find([' ', '\t', '\r', '\n'])
            .unwrap_or(property.len());
        text = property[end..].trim_start_matches([' ', '\t', '\r', '\n']);
    }
    let text = match text.strip_prefix(['"', '\'']) {
        Some(quoted) => &quoted[..quoted.find(['"', '\'']).unwrap_or(quoted.len())],
        None => {
            &text[..text
                .find([' ', '\t', '\r', '\n', ',', ']', '}'])
                .unwrap_or(text.len())]
        }
    };
    Some((line_at(doc_text, &at), text))
}

/// The 1-based line of a position serde_norway reports in `text`, counted as editors, git and
/// grep count lines. libyaml also breaks lines at NEL, U+2028 and U+2029, so its own line
/// number is one too many for each of them before the position; its byte index is exact.
pub fn line_at(text: &str, at: &serde_norway::Location) -> usize {
    let before = text.as_bytes().get(..at.index()).unwrap_or(text.as_bytes());
    let breaks = before
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && before.get(i + 1) != Some(&b'\n')))
        .count();
    breaks + 1
}

/// Looks for what remains of the path (never empty) in the node it is given.
struct Find<'p>(&'p [Seg<'p>]);

impl<'de> DeserializeSeed<'de> for Find<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.0 {
            [Seg::Value] => Here.deserialize(d),
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Find<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match self.0 {
            // A statement given as one mapping, not a list, is `Statement[0]`.
            [Seg::Index(0)] => Err(de::Error::custom(FOUND)),
            [Seg::Index(0), rest @ ..] => Find(rest).visit_map(map),
            [Seg::Key(key), rest @ ..] => {
                while let Some(hit) = map.next_key_seed(IsKey(key, rest.is_empty()))? {
                    if hit {
                        map.next_value_seed(Find(rest))?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(())
            }
            _ => {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(())
            }
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let more = match self.0 {
                [Seg::Index(n)] if *n == i => seq.next_element_seed(Here)?,
                [Seg::Index(n), rest @ ..] if *n == i => seq.next_element_seed(Find(rest))?,
                _ => seq.next_element::<IgnoredAny>()?.map(drop),
            };
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.deserialize(d)
    }
}

/// Whether a key is the one sought; the last part of a path is found at its key.
struct IsKey<'k>(&'k str, bool);

impl<'de> DeserializeSeed<'de> for IsKey<'_> {
    type Value = bool;
    /// As text, as the policy's keys were read: `Null` (an operator) is YAML's null to
    /// `deserialize_any`.
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for IsKey<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match (v == self.0, self.1) {
            (true, true) => Err(E::custom(FOUND)),
            (hit, _) => Ok(hit),
        }
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// Raises the marker where the node it is given starts: once its first event is read, or
/// the error would carry the position of the list around it.
struct Here;

impl<'de> DeserializeSeed<'de> for Here {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Here {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
arn: arn:aws:kinesis:us-east-1:111122223333:stream/orders
policy:
  Version: \"2012-10-17\"
  Statement:
    - Sid: One
      Effect: Allow
      Principal: {AWS: \"111122223333\"}
      Action: [kinesis:GetRecords, kinesis:ListShards]
      Resource: '*'
    - Sid: Two
      Effect: Alow
      Condtion:
        StringEquals: {aws:SourceAccount: \"1\"}
";

    #[test]
    fn paths_are_found_at_their_key_or_element() {
        for (path, line) in [
            ("policy", 2),
            ("policy.Statement", 4),
            ("policy.Statement[0]", 5),
            ("policy.Statement[1]", 10),
            ("policy.Statement[1].Effect", 11),
            ("policy.Statement[1].Condtion", 12),
            ("policy.Statement[0].Principal.AWS", 7),
            ("policy.Statement[0].Action[1]", 8),
            // The deepest part written: no third statement, no such key.
            ("policy.Statement[2].Effect", 4),
            ("policy.Statement[1].Nope", 10),
        ] {
            assert_eq!(line_of(DOC, path), Some(line), "{path}");
        }
        assert_eq!(line_of(DOC, "nope.Statement"), None);
        // A parse error before the path: not found (after it: found, as written).
        assert_eq!(line_of("a: [x\nb: 1\n", "b"), None);
        assert_eq!(line_of("a: 1\nb: [x\n", "b"), Some(2));
    }

    #[test]
    fn a_scalar_is_read_as_written() {
        let doc = "a:\n  k: 0x10 # c\n  l: [1, +5 ]\n  m:\n    - \"7\"\n  t: !!int 0o7\n";
        assert_eq!(scalar_at(doc, segments("a.k")), Some((2, "0x10")));
        assert_eq!(scalar_at(doc, segments("a.l[1]")), Some((3, "+5")));
        assert_eq!(scalar_at(doc, segments("a.m[0]")), Some((5, "7")));
        assert_eq!(scalar_at(doc, segments("a.t")), Some((6, "0o7")));
        assert_eq!(scalar_at(doc, segments("a.n")), None);
        assert_eq!(scalar_at(doc, segments("a.l[2]")), None);
        // Through an alias: where its anchor writes it.
        assert_eq!(scalar_at("a: &x 1\nb: *x\n", segments("b")), Some((1, "1")));
        // A path of thousands of parts is not read thousands of times: not located at all.
        let deep = format!("a{}", "[0]".repeat(5000));
        assert_eq!(line_of(doc, &deep), None);
        // An operator named `Null` is a key like any other.
        assert_eq!(
            scalar_at("Null:\n  k: 5\n", segments("Null.k")),
            Some((2, "5"))
        );
    }

    /// U+2028 inside a string is a line break to libyaml, not to an editor.
    #[test]
    fn lines_are_counted_as_editors_count_them() {
        let doc = "a: \"x\u{2028}y\"\r\nb: 1\rc: 2\nd: 3\n";
        assert_eq!(line_of(doc, "b"), Some(2));
        assert_eq!(line_of(doc, "c"), Some(3));
        assert_eq!(line_of(doc, "d"), Some(4));
    }

    #[test]
    fn a_single_statement_mapping_is_statement_0() {
        let doc = "policy:\n  Statement:\n    Effect: Allow\n    Action: x\n";
        assert_eq!(line_of(doc, "policy.Statement[0]"), Some(3));
        assert_eq!(line_of(doc, "policy.Statement[0].Action"), Some(4));
    }

    #[test]
    fn an_alias_is_not_followed_into_its_anchor() {
        let doc =
            "policy:\n  Statement:\n    - &s {Sid: One, Effect: Allow}\n    - Sid: Two\n    - *s\n";
        assert_eq!(line_of(doc, "policy.Statement[2].Effect"), None);
    }

    /// Only a `*` that can start an alias gives up the line: one in `"*"` or `kinesis:*`,
    /// with an `&` anywhere (`# Sales & Marketing`), does not.
    #[test]
    fn stars_that_start_no_node_keep_the_line() {
        let doc = "# Owner: Sales & Marketing\npolicy:\n  Statement:\n    - Principal: \"*\"\n      \
                   Action: [kinesis:*, 'x']\n      Resource: arn:aws:kinesis:*:1:stream/*\n      \
                   Efect: Allow\n";
        assert_eq!(line_of(doc, "policy.Statement[0].Efect"), Some(7));
        for alias in [
            "- *s",
            "x: *s",
            "[a, *s]",
            "{a: *s}",
            "[*s]",
            "? *s",
            "*s",
            "{\"a\":*s}",
            "{'a':*s}",
        ] {
            assert!(may_hold_an_alias(&format!("a:\n  {alias}\n")), "{alias}");
        }
        for not in ["\"*\"", "kinesis:*", "a:*b", "'*'", "- * ", "x: *", "a-*b"] {
            assert!(!may_hold_an_alias(&format!("a:\n  {not}\n")), "{not}");
        }
    }

    #[test]
    fn a_condition_key_with_dots_is_one_key() {
        let doc = "policy:\n  Condition:\n    StringEquals:\n      aws:PrincipalTag/team: a\n      aws:PrincipalTag/team.name: [x, y]\n";
        let at = |p: &str| line_of(doc, &format!("policy.Condition.StringEquals.{p}"));
        assert_eq!(at("aws:PrincipalTag/team.name"), Some(5));
        assert_eq!(at("aws:PrincipalTag/team.name[1]"), Some(5));
        // Not written: its operator, not the other key it begins like.
        assert_eq!(at("aws:PrincipalTag/team.nam"), Some(3));
    }

    #[test]
    fn path_segments() {
        assert_eq!(
            segments("policy.Statement[2].Condition.StringEquals[0][1]"),
            [
                Seg::Key("policy"),
                Seg::Key("Statement"),
                Seg::Index(2),
                Seg::Key("Condition"),
                Seg::Key("StringEquals"),
                Seg::Index(0),
                Seg::Index(1),
            ]
        );
        assert_eq!(
            segments("Condition.StringLike.s3:x.y[z][3]"),
            [
                Seg::Key("Condition"),
                Seg::Key("StringLike"),
                Seg::Key("s3:x.y[z]"),
                Seg::Index(3),
            ]
        );
        // An operator has a colon of its own, and no dot.
        assert_eq!(
            segments("Condition.ForAnyValue:NumericEquals.aws:Tag/a.b[0]"),
            [
                Seg::Key("Condition"),
                Seg::Key("ForAnyValue:NumericEquals"),
                Seg::Key("aws:Tag/a.b"),
                Seg::Index(0),
            ]
        );
    }
}
