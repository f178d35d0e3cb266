//! JSON -> [`PolicyDocument`]. Strict on purpose: an unknown key, a wrong type or a duplicate
//! key is an error with a path, because silently dropping part of a policy would reconcile the
//! wrong permissions.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{
    Condition, ConditionBlock, ConditionValue, Effect, PolicyDocument, PolicyError, Principal,
    PrincipalType, Statement, closest,
};

/// Path used for errors about the document as a whole.
const ROOT: &str = "(document)";

const TOP_KEYS: &[&str] = &["Version", "Id", "Statement"];
/// Every key a statement may have; anything else is an error (a typo must not drop a field).
pub const STATEMENT_KEYS: &[&str] = &[
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
];

/// Parses JSON like `serde_json::from_str::<Value>`, but rejects duplicate object keys. The
/// error is a `serde_json::Error`, so callers still get a line and column.
pub fn strict_json(s: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(s);
    // Every value takes a byte of JSON at least: the text bounds them.
    let budget = std::cell::Cell::new(s.len() + 1);
    let value = StrictValue(&budget).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// The most values one policy read from YAML may hold. Each written out takes at least a byte,
/// and no document kpr parses is larger than this; only aliases (`*name`, which repeat what
/// they name) reach it: 120 KB of them expanded to 2.7 GB.
pub const MAX_YAML_VALUES: usize = 256 << 10;

/// For a `#[serde(deserialize_with)]` field of type `Option<Value>`, in any format: the same
/// strictness as [`strict_json`]. A manifest's YAML mapping went through `Value`'s own
/// `Deserialize`, where a repeated key silently replaced the first: a reviewer could read a
/// Condition that was never applied.
pub fn strict_value_opt<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    struct OptVisitor;
    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<Value>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any value")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            let budget = std::cell::Cell::new(MAX_YAML_VALUES);
            StrictValue(&budget).deserialize(d).map(Some)
        }
    }
    d.deserialize_option(OptVisitor)
}

/// A value, counted against the budget of values left to its document.
struct StrictValue<'b>(&'b std::cell::Cell<usize>);

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0.get().checked_sub(1) {
            Some(left) => self.0.set(left),
            None => {
                return Err(de::Error::custom(format_args!(
                    "the policy holds more than {MAX_YAML_VALUES} values, repeated by YAML \
                     aliases (`*name`); write it without them"
                )));
            }
        }
        d.deserialize_any(StrictVisitor(self.0))
    }
}

struct StrictVisitor<'b>(&'b std::cell::Cell<usize>);

impl<'de> Visitor<'de> for StrictVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // YAML's .inf and .nan: no JSON number holds them (read as null, they were refused
        // as "found null", which the manifest does not say).
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| {
                E::custom(format!(
                    "{v} (YAML reads .inf and .nan as numbers) is no number a policy can hold; \
                     quote it if it is text"
                ))
            })
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue(self.0))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(NewKey(&out))? {
            let value = map.next_value_seed(StrictValue(self.0))?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// A mapping's key, refused when the mapping has it already. Refused while the key is read, so
/// the error carries the position of the second one, not of the mapping.
struct NewKey<'m>(&'m Map<String, Value>);

impl<'de> DeserializeSeed<'de> for NewKey<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        // Inside the visitor: an error raised there takes the key's position.
        d.deserialize_string(self)
    }
}

impl<'de> Visitor<'de> for NewKey<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        if self.0.contains_key(key) {
            return Err(E::custom(format_args!("duplicate key {key:?}")));
        }
        Ok(key.to_string())
    }
}

pub(super) fn document(v: &Value) -> Result<PolicyDocument, PolicyError> {
    let obj = as_object(v, ROOT)?;
    check_keys(obj, TOP_KEYS, "")?;
    let version = opt_string(obj, "Version", "Version")?;
    let id = opt_string(obj, "Id", "Id")?;
    let statements = match obj.get("Statement") {
        None => {
            return Err(PolicyError::invalid(
                "Statement",
                "missing (a policy needs a Statement)",
            ));
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| statement(item, &format!("Statement[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(item @ Value::Object(_)) => vec![statement(item, "Statement[0]")?],
        Some(other) => {
            return Err(PolicyError::invalid(
                "Statement",
                format!(
                    "expected an object or an array of objects, found {}",
                    describe(other)
                ),
            ));
        }
    };
    Ok(PolicyDocument {
        version,
        id,
        statements,
    })
}

fn statement(v: &Value, path: &str) -> Result<Statement, PolicyError> {
    let obj = as_object(v, path)?;
    check_keys(obj, STATEMENT_KEYS, path)?;
    for (a, b) in [
        ("Principal", "NotPrincipal"),
        ("Action", "NotAction"),
        ("Resource", "NotResource"),
    ] {
        if obj.contains_key(a) && obj.contains_key(b) {
            return Err(PolicyError::invalid(
                path,
                format!("has both {a:?} and {b:?}; IAM allows only one of them"),
            ));
        }
    }
    let effect_path = join(path, "Effect");
    let effect = match obj.get("Effect") {
        None => {
            return Err(PolicyError::invalid(
                effect_path,
                "missing (expected \"Allow\" or \"Deny\")",
            ));
        }
        Some(Value::String(s)) if s == "Allow" => Effect::Allow,
        Some(Value::String(s)) if s == "Deny" => Effect::Deny,
        // IAM reads Effect case-sensitively: "deny" is not a Deny. A manifest so written is
        // refused, and a live policy so written does not parse, so it is rewritten, never
        // found in sync.
        Some(Value::String(s))
            if s.eq_ignore_ascii_case("allow") || s.eq_ignore_ascii_case("deny") =>
        {
            let want = if s.eq_ignore_ascii_case("allow") {
                "Allow"
            } else {
                "Deny"
            };
            return Err(PolicyError::invalid(
                effect_path,
                format!(
                    "{s:?} is not a valid Effect: IAM reads it case-sensitively; write \"{want}\""
                ),
            ));
        }
        Some(other) => {
            return Err(PolicyError::invalid(
                effect_path,
                format!(
                    "{} is not a valid Effect; expected \"Allow\" or \"Deny\"",
                    describe(other)
                ),
            ));
        }
    };
    let list = |key: &str| -> Result<Option<Vec<String>>, PolicyError> {
        obj.get(key)
            .map(|v| string_list(v, &join(path, key)))
            .transpose()
    };
    let principal_of = |key: &str| -> Result<Option<Principal>, PolicyError> {
        obj.get(key)
            .map(|v| principal(v, &join(path, key)))
            .transpose()
    };
    Ok(Statement {
        sid: opt_string(obj, "Sid", &join(path, "Sid"))?,
        effect,
        principal: principal_of("Principal")?,
        not_principal: principal_of("NotPrincipal")?,
        action: list("Action")?,
        not_action: list("NotAction")?,
        resource: list("Resource")?,
        not_resource: list("NotResource")?,
        condition: obj
            .get("Condition")
            .map(|v| condition(v, &join(path, "Condition")))
            .transpose()?,
    })
}

fn principal(v: &Value, path: &str) -> Result<Principal, PolicyError> {
    match v {
        Value::String(s) if s == "*" => Ok(Principal::Anyone),
        Value::Object(obj) => {
            let mut entries = Vec::with_capacity(obj.len());
            for (key, ids) in obj {
                let key_path = join(path, key);
                let kind = PrincipalType::from_key(key).ok_or_else(|| {
                    let names = PrincipalType::ALL.map(PrincipalType::as_str);
                    PolicyError::invalid(
                        &key_path,
                        format!(
                            "unknown principal type {key:?}{}; expected one of {}",
                            hint(key, &names),
                            names.join(", ")
                        ),
                    )
                })?;
                entries.push((kind, string_list(ids, &key_path)?));
            }
            Ok(Principal::Typed(entries))
        }
        other => Err(PolicyError::invalid(
            path,
            format!(
                "expected \"*\" or an object such as {{\"AWS\": \"111122223333\"}}, found {}",
                describe(other)
            ),
        )),
    }
}

/// IAM reads condition operators and keys without regard to case: two spellings of one name
/// side by side would leave unclear which of their values applies, so they are refused.
fn unique_ignoring_case<'a>(
    names: impl Iterator<Item = &'a String>,
    path: &str,
    what: &str,
) -> Result<(), PolicyError> {
    let mut seen = std::collections::HashMap::new();
    for name in names {
        if let Some(first) = seen.insert(name.to_ascii_lowercase(), name) {
            return Err(PolicyError::invalid(
                path,
                format!("{what} {first:?} and {name:?} differ only in case; IAM reads them as one"),
            ));
        }
    }
    Ok(())
}

fn condition(v: &Value, path: &str) -> Result<Condition, PolicyError> {
    let obj = as_object(v, path)?;
    unique_ignoring_case(obj.keys(), path, "operators")?;
    let mut blocks = Vec::with_capacity(obj.len());
    for (operator, block) in obj {
        let op_path = join(path, operator);
        let block = as_object(block, &op_path)?;
        unique_ignoring_case(block.keys(), &op_path, "condition keys")?;
        let mut entries = Vec::with_capacity(block.len());
        for (key, values) in block {
            let key_path = join(&op_path, key);
            let values = match values {
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| condition_value(item, &format!("{key_path}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?,
                single => vec![condition_value(single, &key_path)?],
            };
            entries.push((key.clone(), values));
        }
        blocks.push(ConditionBlock {
            operator: operator.clone(),
            entries,
        });
    }
    Ok(Condition { blocks })
}

fn condition_value(v: &Value, path: &str) -> Result<ConditionValue, PolicyError> {
    match v {
        Value::String(s) => Ok(ConditionValue::String(s.clone())),
        // IAM compares condition values as text. An integer has one way to be written; any
        // other number is held here as a float, in which `1e2` and `100.0`, or two integers
        // past 2^64, become one value though their texts differ.
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(ConditionValue::Number(n.clone())),
        Value::Number(_) => Err(PolicyError::invalid(
            path,
            "a number that is not an integer, or an integer too large for 64 bits: IAM compares \
             condition values as text, which kpr cannot keep for such a number; write the value \
             as a string (put it in quotes)",
        )),
        Value::Bool(b) => Ok(ConditionValue::Bool(*b)),
        other => Err(PolicyError::invalid(
            path,
            format!(
                "expected a string, number or boolean (or an array of them), found {}",
                describe(other)
            ),
        )),
    }
}

fn string_list(v: &Value, path: &str) -> Result<Vec<String>, PolicyError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(PolicyError::invalid(
                    format!("{path}[{i}]"),
                    format!(
                        "expected a string, found {}{}",
                        describe(other),
                        quote_hint(other)
                    ),
                )),
            })
            .collect(),
        other => Err(PolicyError::invalid(
            path,
            format!(
                "expected a string or an array of strings, found {}{}",
                describe(other),
                quote_hint(other)
            ),
        )),
    }
}

/// YAML turns an unquoted account id into a number (dropping any leading zero), so say how to
/// fix it rather than only that the type is wrong.
fn quote_hint(v: &Value) -> &'static str {
    if v.is_number() {
        " (put it in quotes)"
    } else {
        ""
    }
}

fn opt_string(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, PolicyError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(PolicyError::invalid(
            path,
            format!(
                "expected a string, found {}{}",
                describe(other),
                quote_hint(other)
            ),
        )),
    }
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], path: &str) -> Result<(), PolicyError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(PolicyError::invalid(
            join(path, key),
            format!(
                "unknown key {key:?}{}; expected one of {}",
                hint(key, allowed),
                allowed.join(", ")
            ),
        )),
    }
}

fn hint(word: &str, candidates: &[&str]) -> String {
    closest(word, candidates.iter().copied(), 2)
        .map(|c| format!(" (did you mean \"{c}\"?)"))
        .unwrap_or_default()
}

fn as_object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, PolicyError> {
    v.as_object().ok_or_else(|| {
        PolicyError::invalid(path, format!("expected an object, found {}", describe(v)))
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A short description of a JSON value for error messages: its type, and the value itself when
/// it is a short scalar.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.chars().count() <= 40 => format!("string {v}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invalid(v: Value) -> (String, String) {
        match PolicyDocument::from_value(&v) {
            Err(PolicyError::Invalid { path, message }) => (path, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn stmt(extra: Value) -> Value {
        let mut s = json!({"Effect": "Allow", "Action": "kinesis:GetRecords"});
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        json!({"Version": "2012-10-17", "Statement": [s]})
    }

    #[test]
    fn parses_a_full_statement() {
        let doc = PolicyDocument::from_value(&json!({
            "Version": "2012-10-17", "Id": "x",
            "Statement": [{"Sid": "A", "Effect": "Allow",
                "Principal": {"AWS": ["111122223333", "arn:aws:iam::444455556666:root"], "Service": "s.amazonaws.com"},
                "Action": ["kinesis:GetRecords"], "Resource": "arn:r",
                "Condition": {"StringEquals": {"aws:SourceAccount": ["1", 2, true]}}},
                {"Effect": "Deny", "NotPrincipal": "*", "NotAction": "x:y", "NotResource": ["r"]}]
        }))
        .unwrap();
        assert_eq!(doc.statements().len(), 2);
        let s = &doc.statements()[0];
        assert_eq!(s.sid(), Some("A"));
        assert_eq!(
            s.principal().unwrap().identifiers(PrincipalType::Aws),
            ["111122223333", "arn:aws:iam::444455556666:root"]
        );
        assert_eq!(
            s.condition().unwrap().blocks()[0].entries()[0].1,
            [
                ConditionValue::String("1".into()),
                ConditionValue::Number(2.into()),
                ConditionValue::Bool(true)
            ]
        );
        let s = &doc.statements()[1];
        assert_eq!(s.not_principal(), Some(&Principal::Anyone));
        assert_eq!(s.not_actions().unwrap(), ["x:y"]);
        assert_eq!(s.not_resources().unwrap(), ["r"]);
        assert!(s.principal().is_none() && s.actions().is_none() && s.resources().is_none());
    }

    #[test]
    fn statement_object_is_one_statement() {
        let doc =
            PolicyDocument::from_value(&json!({"Statement": {"Effect": "Allow", "Action": "a:b"}}))
                .unwrap();
        assert_eq!(doc.statements().len(), 1);
        assert_eq!(doc.version(), None);
    }

    #[test]
    fn unknown_top_level_key() {
        let (path, msg) =
            invalid(json!({"Version": "2012-10-17", "Statment": [], "Statement": []}));
        assert_eq!(path, "Statment");
        assert!(
            msg.contains("unknown key") && msg.contains("did you mean \"Statement\""),
            "{msg}"
        );
    }

    #[test]
    fn unknown_statement_key_has_index_path_and_hint() {
        let v = json!({"Statement": [
            {"Effect": "Allow", "Action": "a:b"},
            {"Effect": "Allow", "Princpal": "*", "Action": "a:b"}]});
        let (path, msg) = invalid(v);
        assert_eq!(path, "Statement[1].Princpal");
        assert!(msg.contains("did you mean \"Principal\""), "{msg}");
        let err = PolicyDocument::from_value(&json!({"Statement": {"Effect": "Allow", "Foo": 1}}))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Statement[0].Foo: unknown key \"Foo\""),
            "{err}"
        );
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn missing_statement() {
        let (path, _) = invalid(json!({"Version": "2012-10-17"}));
        assert_eq!(path, "Statement");
    }

    #[test]
    fn statement_wrong_types() {
        let (path, msg) = invalid(json!({"Statement": "x"}));
        assert_eq!(path, "Statement");
        assert!(msg.contains("found string \"x\""), "{msg}");
        let (path, _) = invalid(json!({"Statement": [{"Effect": "Allow"}, 3]}));
        assert_eq!(path, "Statement[1]");
        let (path, msg) = invalid(json!([1]));
        assert_eq!(path, ROOT);
        assert!(msg.contains("an array"), "{msg}");
    }

    #[test]
    fn effect_rules() {
        for ok in ["Allow", "Deny"] {
            PolicyDocument::from_value(&stmt(json!({"Effect": ok}))).unwrap();
        }
        for (bad, want) in [("allow", "Allow"), ("ALLOW", "Allow"), ("deny", "Deny")] {
            let (path, msg) = invalid(stmt(json!({"Effect": bad})));
            assert_eq!(path, "Statement[0].Effect");
            assert!(
                msg.contains("case-sensitively") && msg.contains(&format!("write \"{want}\"")),
                "{msg}"
            );
        }
        let (path, msg) = invalid(stmt(json!({"Effect": "Permit"})));
        assert_eq!(path, "Statement[0].Effect");
        assert!(msg.contains("\"Permit\""), "{msg}");
        let (path, msg) = invalid(json!({"Statement": [{"Action": "a:b"}]}));
        assert_eq!(path, "Statement[0].Effect");
        assert!(msg.contains("missing"), "{msg}");
        let (_, msg) = invalid(stmt(json!({"Effect": true})));
        assert!(msg.contains("boolean true"), "{msg}");
    }

    #[test]
    fn string_list_types() {
        let (path, msg) = invalid(stmt(json!({"Action": 5})));
        assert_eq!(path, "Statement[0].Action");
        assert!(msg.contains("number 5") && msg.contains("quotes"), "{msg}");
        let (path, _) = invalid(stmt(json!({"Resource": ["a", {"b": 1}]})));
        assert_eq!(path, "Statement[0].Resource[1]");
        let (path, _) = invalid(stmt(json!({"NotResource": null})));
        assert_eq!(path, "Statement[0].NotResource");
        let (path, _) = invalid(stmt(json!({"Sid": 1})));
        assert_eq!(path, "Statement[0].Sid");
        let (path, _) = invalid(json!({"Version": 2012, "Statement": []}));
        assert_eq!(path, "Version");
        let (path, _) = invalid(json!({"Id": [], "Statement": []}));
        assert_eq!(path, "Id");
    }

    #[test]
    fn condition_numbers_are_integers_or_quoted() {
        for text in ["1.5", "1e2", "100.0", "18446744073709551616"] {
            let doc = format!(
                r#"{{"Statement":{{"Effect":"Allow","Principal":"*","Action":"a:b","Resource":"r",
                    "Condition":{{"NumericLessThan":{{"k":[1,{text}]}}}}}}}}"#
            );
            let Err(PolicyError::Invalid { path, message }) = PolicyDocument::from_json_str(&doc)
            else {
                panic!("{text} accepted");
            };
            assert_eq!(
                path, "Statement[0].Condition.NumericLessThan.k[1]",
                "{text}"
            );
            assert!(message.contains("quotes"), "{message}");
        }
        for text in ["-5", "18446744073709551615", "\"1.5\""] {
            let doc = format!(
                r#"{{"Statement":{{"Effect":"Allow","Principal":"*","Action":"a:b","Resource":"r",
                    "Condition":{{"NumericLessThan":{{"k":{text}}}}}}}}}"#
            );
            PolicyDocument::from_json_str(&doc).unwrap();
        }
    }

    #[test]
    fn principal_rules() {
        let (path, msg) = invalid(stmt(json!({"Principal": {"AWS": "1", "Servise": "x"}})));
        assert_eq!(path, "Statement[0].Principal.Servise");
        assert!(msg.contains("did you mean \"Service\""), "{msg}");
        let (path, _) = invalid(stmt(json!({"Principal": {"aws": "1"}})));
        assert_eq!(path, "Statement[0].Principal.aws");
        let (path, msg) = invalid(stmt(json!({"Principal": "arn:aws:iam::1:root"})));
        assert_eq!(path, "Statement[0].Principal");
        assert!(msg.contains("expected \"*\""), "{msg}");
        let (path, msg) = invalid(stmt(json!({"Principal": {"AWS": [111122223333_u64]}})));
        assert_eq!(path, "Statement[0].Principal.AWS[0]");
        assert!(msg.contains("quotes"), "{msg}");
        let (path, _) = invalid(stmt(json!({"NotPrincipal": ["*"]})));
        assert_eq!(path, "Statement[0].NotPrincipal");
    }

    #[test]
    fn pairs_are_exclusive() {
        let (path, msg) = invalid(stmt(json!({"NotAction": "a:b"})));
        assert_eq!(path, "Statement[0]");
        assert!(msg.contains("\"Action\" and \"NotAction\""), "{msg}");
        let (_, msg) = invalid(stmt(json!({"Principal": "*", "NotPrincipal": "*"})));
        assert!(msg.contains("NotPrincipal"), "{msg}");
        let (_, msg) = invalid(stmt(json!({"Resource": "*", "NotResource": "*"})));
        assert!(msg.contains("NotResource"), "{msg}");
    }

    #[test]
    fn names_differing_only_in_case_are_refused() {
        let (path, msg) = invalid(stmt(json!({"Condition": {
            "StringEquals": {"aws:PrincipalOrgID": "o-abc123"},
            "stringEquals": {"aws:PrincipalOrgID": "o-other999"}}})));
        assert_eq!(path, "Statement[0].Condition");
        assert!(msg.contains("differ only in case"), "{msg}");
        let (path, msg) = invalid(stmt(json!({"Condition": {"StringEquals": {
            "aws:PrincipalOrgID": "o-abc123", "aws:principalorgid": "o-other999"}}})));
        assert_eq!(path, "Statement[0].Condition.StringEquals");
        assert!(msg.contains("condition keys"), "{msg}");
    }

    #[test]
    fn condition_types() {
        let (path, _) = invalid(stmt(json!({"Condition": "x"})));
        assert_eq!(path, "Statement[0].Condition");
        let (path, _) = invalid(stmt(json!({"Condition": {"StringEquals": ["a"]}})));
        assert_eq!(path, "Statement[0].Condition.StringEquals");
        let (path, _) = invalid(stmt(json!({"Condition": {"StringEquals": {"k": null}}})));
        assert_eq!(path, "Statement[0].Condition.StringEquals.k");
        let (path, _) = invalid(stmt(
            json!({"Condition": {"StringEquals": {"k": ["a", ["b"]]}}}),
        ));
        assert_eq!(path, "Statement[0].Condition.StringEquals.k[1]");
        PolicyDocument::from_value(&stmt(json!({"Condition": {"NumericLessThan": {"k": 2}}})))
            .unwrap();
    }

    #[test]
    fn json_errors_keep_position() {
        let err = PolicyDocument::from_json_str("{\n  \"Statement\": [ oops ]\n}").unwrap_err();
        match err {
            PolicyError::Json(e) => assert_eq!(e.line(), 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            PolicyDocument::from_json_str(r#"{"Statement": []} trailing"#),
            Err(PolicyError::Json(_))
        ));
    }

    #[test]
    fn duplicate_keys_are_rejected_with_position() {
        let src = "{\"Statement\": [{\n  \"Effect\": \"Allow\",\n  \"Action\": \"a:b\",\n  \"Action\": \"c:d\"\n}]}";
        match PolicyDocument::from_json_str(src).unwrap_err() {
            PolicyError::Json(e) => {
                assert!(e.to_string().contains("duplicate key \"Action\""), "{e}");
                assert_eq!(e.line(), 4);
            }
            other => panic!("{other:?}"),
        }
        // Same key at different levels is fine.
        PolicyDocument::from_json_str(
            r#"{"Statement":[{"Effect":"Allow","Action":"a:b"},{"Effect":"Allow","Action":"a:b"}]}"#,
        )
        .unwrap();
    }

    #[test]
    fn strict_json_matches_serde_json() {
        let src = r#"{"a":[1,-2,3.5,true,null,"s",{"b":{}}],"c":1e2,"d":18446744073709551615}"#;
        assert_eq!(
            strict_json(src).unwrap(),
            serde_json::from_str::<Value>(src).unwrap()
        );
    }
}
