//! The canonical form: one JSON value per equivalence class of policies.
//!
//! Maps are built in sorted key order by hand: serde_json's `preserve_order` feature is enabled
//! (a mapping policy is sent as written), so `serde_json::Map` keeps insertion order and the
//! printed form would otherwise depend on how the document was written.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::actions::canonical_action;
use super::{Condition, PolicyDocument, Principal, PrincipalType, Statement};

/// `partition`: the partition of the resource the policy is on; `None` when unknown (a
/// document on its own), then read from the document (see [`named_partition`]).
pub(super) fn document(doc: &PolicyDocument, partition: Option<&str>) -> Value {
    let mut out = BTreeMap::new();
    if let Some(version) = &doc.version {
        out.insert("Version", Value::String(version.clone()));
    }
    if let Some(id) = &doc.id {
        out.insert("Id", Value::String(id.clone()));
    }
    let partition = partition.unwrap_or_else(|| own_partition(doc));
    out.insert("Statement", Value::Array(statement_values(doc, partition)));
    object(out)
}

/// Canonical statements, sorted by their serialisation, exact duplicates removed.
fn statement_values(doc: &PolicyDocument, partition: &str) -> Vec<Value> {
    doc.statements
        .iter()
        .map(|s| {
            let v = statement(s, partition);
            (v.to_string(), v)
        })
        .collect::<BTreeMap<_, _>>()
        .into_values()
        .collect()
}

/// Who the statements name, as `(effect, who)` in the canonical form: `*`, an AWS principal
/// by its ARN (an account's root by its id), another kind as `Service firehose.amazonaws.com`;
/// a `NotPrincipal` as one entry, `all but` its whole list: who it spares is its list taken
/// together, so a member added or removed must read as the set changing, not as that member
/// granted or withdrawn (which is backwards: a member added to an Allow's NotPrincipal loses
/// access). For a plan's one-line summary of whom a change grants or stops granting; the
/// statement diff stays the full account.
fn principals_named(
    doc: &PolicyDocument,
    partition: Option<&str>,
) -> std::collections::BTreeSet<(String, String)> {
    let mut out = std::collections::BTreeSet::new();
    for v in statement_values(doc, partition.unwrap_or_else(|| own_partition(doc))) {
        let effect = v.get("Effect").and_then(Value::as_str).unwrap_or_default();
        let named = |kind: &str, id: &str| {
            if kind == "AWS" {
                id.to_string()
            } else {
                format!("{kind} {id}")
            }
        };
        match v.get("Principal") {
            Some(Value::String(who)) => {
                out.insert((effect.to_string(), who.clone()));
            }
            Some(Value::Object(kinds)) => {
                for (kind, ids) in kinds {
                    for id in ids_of(ids) {
                        out.insert((effect.to_string(), named(kind, id)));
                    }
                }
            }
            _ => {}
        }
        match v.get("NotPrincipal") {
            Some(Value::String(who)) => {
                out.insert((effect.to_string(), format!("all but {who}")));
            }
            Some(Value::Object(kinds)) => {
                let spared: Vec<String> = kinds
                    .iter()
                    .flat_map(|(kind, ids)| ids_of(ids).into_iter().map(|id| named(kind, id)))
                    .collect();
                // `NotPrincipal: {"AWS": []}` (canonical `{}`) is everyone, in an Allow: it
                // must not read as no one.
                let spared = match spared.as_slice() {
                    [] => "nobody".to_string(),
                    [one] => one.clone(),
                    many => format!("[{}]", many.join(", ")),
                };
                out.insert((effect.to_string(), format!("all but {spared}")));
            }
            _ => {}
        }
    }
    out
}

fn is_public(doc: &PolicyDocument) -> bool {
    doc.statements.iter().any(super::lint::grants_public)
}

/// The ids of one principal type, as the canonical form has them (a string or a list).
fn ids_of(ids: &Value) -> Vec<&str> {
    match ids {
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        Value::String(id) => vec![id.as_str()],
        _ => Vec::new(),
    }
}

/// Whom a change starts and stops naming, by effect ([`principals_named`]), each list sorted.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AccessChange {
    pub allows_now: Vec<String>,
    pub allows_no_longer: Vec<String>,
    pub denies_now: Vec<String>,
    pub denies_no_longer: Vec<String>,
    /// The live policy could not be parsed: whom it named is not known, so the `no_longer`
    /// lists are empty without meaning that nobody loses access.
    pub before_unknown: bool,
    /// Whether the policy before and after grants public access, as lint defines it (an Allow
    /// to everyone, or to everyone but a few, without a Condition that limits who calls): the
    /// lists above are by principal only, and a Condition removed from a `"*"` grant, or a
    /// `"*"` limited to an organization, reads the same in them.
    pub public_before: bool,
    pub public_after: bool,
}

impl AccessChange {
    pub fn between(
        before: Option<&PolicyDocument>,
        after: Option<&PolicyDocument>,
        partition: Option<&str>,
    ) -> Self {
        let named = |d: Option<&PolicyDocument>| {
            d.map(|d| principals_named(d, partition))
                .unwrap_or_default()
        };
        let (old, new) = (named(before), named(after));
        let only = |from: &std::collections::BTreeSet<(String, String)>,
                    to: &std::collections::BTreeSet<(String, String)>,
                    effect: &str| {
            from.difference(to)
                .filter(|(e, _)| e == effect)
                .map(|(_, who)| who.clone())
                .collect()
        };
        AccessChange {
            allows_now: only(&new, &old, "Allow"),
            allows_no_longer: only(&old, &new, "Allow"),
            denies_now: only(&new, &old, "Deny"),
            denies_no_longer: only(&old, &new, "Deny"),
            before_unknown: false,
            public_before: before.is_some_and(is_public),
            public_after: after.is_some_and(is_public),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Statement-by-statement canonical JSON, in canonical order, for renderers that diff per
/// statement. The label is the Sid, or `#n` (1-based position in canonical order) without one;
/// labels are made unique by appending ` #n` where they would collide. Each text is pretty JSON
/// with a trailing newline.
pub fn canonical_statements(
    doc: &PolicyDocument,
    partition: Option<&str>,
) -> Vec<(String, String)> {
    let values = statement_values(doc, partition.unwrap_or_else(|| own_partition(doc)));
    let base: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| match v.get("Sid") {
            Some(Value::String(sid)) => sid.clone(),
            _ => format!("#{}", i + 1),
        })
        .collect();
    values
        .iter()
        .zip(&base)
        .enumerate()
        .map(|(i, (v, label))| {
            let label = if base.iter().filter(|l| *l == label).count() > 1 {
                format!("{label} #{}", i + 1)
            } else {
                label.clone()
            };
            let mut text =
                serde_json::to_string_pretty(v).expect("a serde_json::Value always serialises");
            text.push('\n');
            (label, text)
        })
        .collect()
}

/// The partition that every Resource and NotResource ARN of `docs` names: `aws` when they
/// name none (a Resource may be `"*"`), `None` when they disagree. Only a guess, for
/// documents compared without their resource (`kpr policy diff` of two JSON files): plan and
/// apply pass the resource's own partition. Read from both documents at once, so that two
/// documents are compared in one partition, whatever order their statements come in.
pub(super) fn named_partition<'a>(docs: &[&'a PolicyDocument]) -> Option<&'a str> {
    named_partition_or(docs, "aws")
}

/// As [`named_partition`], with `otherwise` when no Resource names a partition.
pub(super) fn named_partition_or<'a>(
    docs: &[&'a PolicyDocument],
    otherwise: &'a str,
) -> Option<&'a str> {
    let mut named = docs
        .iter()
        .flat_map(|d| &d.statements)
        .flat_map(|s| s.resource.iter().chain(&s.not_resource).flatten())
        .filter_map(|r| {
            let (partition, _) = r.strip_prefix("arn:")?.split_once(':')?;
            // `arn:*:...` matches any partition and names none: it makes the partition one
            // that cannot be told, or `arn:*:iam::ID:root` would pass for the account id.
            match partition {
                "" => None,
                p if p.contains(['*', '?']) => Some(UNKNOWN_PARTITION),
                p => Some(p),
            }
        });
    let first = named.next().unwrap_or(otherwise);
    named.all(|p| p == first).then_some(first)
}

/// Stands for a partition that cannot be told: no account's root ARN is read as the account,
/// so two documents are never taken as equal by reading them in the wrong one.
pub const UNKNOWN_PARTITION: &str = "";

fn own_partition(doc: &PolicyDocument) -> &str {
    named_partition(&[doc]).unwrap_or(UNKNOWN_PARTITION)
}

fn statement(s: &Statement, partition: &str) -> Value {
    let mut out = BTreeMap::new();
    if let Some(sid) = s.sid() {
        out.insert("Sid", Value::String(sid.to_string()));
    }
    out.insert("Effect", Value::String(s.effect.as_str().to_string()));
    for (key, p) in [
        ("Principal", &s.principal),
        ("NotPrincipal", &s.not_principal),
    ] {
        if let Some(p) = p {
            out.insert(key, principal(p, partition));
        }
    }
    for (key, actions) in [("Action", &s.action), ("NotAction", &s.not_action)] {
        if let Some(actions) = actions {
            out.insert(key, string_set(actions.iter().map(|a| canonical_action(a))));
        }
    }
    for (key, resources) in [("Resource", &s.resource), ("NotResource", &s.not_resource)] {
        if let Some(resources) = resources {
            out.insert(key, string_set(resources.iter().cloned()));
        }
    }
    if let Some(v) = s.condition.as_ref().and_then(condition) {
        out.insert("Condition", v);
    }
    object(out)
}

/// A principal that names nobody is `{}`, kept apart from a missing one: `NotPrincipal: {}`
/// in an Allow would be everyone but nobody, `Principal: {}` nobody at all.
fn principal(p: &Principal, partition: &str) -> Value {
    let mut by_type: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    match p {
        // Not `{"AWS": "*"}`: that is every principal of an AWS account, while "*" is anyone,
        // service principals too. Merging them would let a live "*" pass for a narrower grant,
        // or a narrower Deny pass for a live "*" one.
        Principal::Anyone => return Value::String("*".into()),
        Principal::Typed(entries) => {
            for (kind, ids) in entries {
                let set = by_type.entry(kind.as_str()).or_default();
                for id in ids {
                    set.insert(if *kind == PrincipalType::Aws {
                        canonical_aws_principal(id, partition)
                    } else {
                        id.clone()
                    });
                }
            }
        }
    }
    by_type.retain(|_, ids| !ids.is_empty());
    object(
        by_type
            .into_iter()
            .map(|(k, ids)| (k, string_set(ids)))
            .collect(),
    )
}

/// An account's root ARN in the policy's own partition means the account itself: both forms
/// become the bare 12-digit id. One of another partition names nobody here (lint refuses it in
/// a manifest), so a live policy holding it must not pass for one naming the account.
fn canonical_aws_principal(id: &str, partition: &str) -> String {
    root_account(id, partition).unwrap_or(id).to_string()
}

fn root_account<'a>(arn: &'a str, partition: &str) -> Option<&'a str> {
    if partition == UNKNOWN_PARTITION {
        return None;
    }
    let rest = arn.strip_prefix("arn:")?.strip_prefix(partition)?;
    let account = rest.strip_prefix(":iam::")?.strip_suffix(":root")?;
    crate::arn::is_account_id(account).then_some(account)
}

/// `None` when no condition key is given: such a Condition constrains nothing. A key with an
/// empty value list is kept (as `[]`): what IAM makes of it is not obvious, so it stays distinct.
fn condition(c: &Condition) -> Option<Value> {
    let mut ops: BTreeMap<&str, BTreeMap<&str, BTreeSet<String>>> = BTreeMap::new();
    for block in &c.blocks {
        for (key, values) in &block.entries {
            ops.entry(block.operator.as_str())
                .or_default()
                .entry(key.as_str())
                .or_default()
                .extend(values.iter().map(|v| v.as_canonical_string()));
        }
    }
    if ops.is_empty() {
        return None;
    }
    Some(object(
        ops.into_iter()
            .map(|(op, keys)| {
                let keys = keys
                    .into_iter()
                    .map(|(k, vals)| (k, string_set(vals)))
                    .collect();
                (op, object(keys))
            })
            .collect(),
    ))
}

/// One value as a plain string, otherwise a sorted, de-duplicated array.
fn string_set(items: impl IntoIterator<Item = String>) -> Value {
    let set: BTreeSet<String> = items.into_iter().collect();
    if set.len() == 1 {
        Value::String(set.into_iter().next().expect("len is 1"))
    } else {
        Value::Array(set.into_iter().map(Value::String).collect())
    }
}

fn object(entries: BTreeMap<&str, Value>) -> Value {
    let mut map = Map::new();
    for (k, v) in entries {
        map.insert(k.to_string(), v);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> PolicyDocument {
        PolicyDocument::from_value(&v).unwrap_or_else(|e| panic!("{e}: {v}"))
    }

    /// A one-statement policy: `base` fields overridden/extended by `extra` (null removes).
    fn one(extra: Value) -> PolicyDocument {
        let mut s = json!({
            "Effect": "Allow",
            "Principal": {"AWS": "111122223333"},
            "Action": "kinesis:GetRecords",
            "Resource": "arn:aws:kinesis:us-east-1:111122223333:stream/s"
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                s.as_object_mut().unwrap().remove(k);
            } else {
                s[k] = v.clone();
            }
        }
        doc(json!({"Version": "2012-10-17", "Statement": [s]}))
    }

    #[track_caller]
    fn same(a: &PolicyDocument, b: &PolicyDocument) {
        assert!(
            a.equivalent(b),
            "expected equivalent:\n{}\n{}",
            a.to_canonical_string(),
            b.to_canonical_string()
        );
        assert!(b.equivalent(a));
    }

    #[track_caller]
    fn differ(a: &PolicyDocument, b: &PolicyDocument) {
        assert!(
            !a.equivalent(b),
            "expected different:\n{}",
            a.to_canonical_string()
        );
        assert!(!b.equivalent(a));
    }

    #[test]
    fn canonical_shape() {
        let d = doc(json!({
            "Version": "2012-10-17",
            "Statement": {
                "Sid": "",
                "Effect": "Allow",
                "Principal": {"AWS": ["arn:aws:iam::111122223333:root", "444455556666", "111122223333"]},
                "Action": ["KINESIS:getrecords", "kinesis:DescribeStream"],
                "Resource": "r",
                "Condition": {"Bool": {"aws:SecureTransport": true}, "NumericLessThan": {"n": [5, "3"]}}
            }
        }));
        assert_eq!(
            d.canonical(),
            json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": {"AWS": ["111122223333", "444455556666"]},
                    "Action": ["kinesis:DescribeStream", "kinesis:GetRecords"],
                    "Resource": "r",
                    "Condition": {"Bool": {"aws:SecureTransport": "true"}, "NumericLessThan": {"n": ["3", "5"]}}
                }]
            })
        );
        // Printed keys are sorted even though serde_json preserves insertion order here.
        let text = d.to_canonical_string();
        let pos = |k: &str| text.find(k).unwrap();
        assert!(pos("\"Statement\"") < pos("\"Version\""));
        assert!(
            pos("\"Action\"") < pos("\"Condition\"") && pos("\"Condition\"") < pos("\"Effect\"")
        );
        assert!(pos("\"Principal\"") < pos("\"Resource\""));
    }

    #[test]
    fn single_string_equals_one_element_list() {
        let base = one(json!({}));
        same(&base, &one(json!({"Action": ["kinesis:GetRecords"]})));
        same(
            &base,
            &one(json!({"Resource": ["arn:aws:kinesis:us-east-1:111122223333:stream/s"]})),
        );
        same(&base, &one(json!({"Principal": {"AWS": ["111122223333"]}})));
        same(
            &one(json!({"NotAction": "a:b", "Action": null})),
            &one(json!({"NotAction": ["a:b"], "Action": null})),
        );
        same(
            &one(json!({"NotResource": "x", "Resource": null})),
            &one(json!({"NotResource": ["x"], "Resource": null})),
        );
        differ(
            &base,
            &one(json!({"Action": ["kinesis:GetRecords", "kinesis:ListShards"]})),
        );
    }

    #[test]
    fn lists_are_unordered_and_deduplicated() {
        let a = one(
            json!({"Action": ["kinesis:GetRecords", "kinesis:ListShards"], "Resource": ["r1", "r2"]}),
        );
        same(
            &a,
            &one(
                json!({"Action": ["kinesis:ListShards", "kinesis:GetRecords"], "Resource": ["r2", "r1"]}),
            ),
        );
        same(
            &a,
            &one(
                json!({"Action": ["kinesis:ListShards", "kinesis:GetRecords", "kinesis:ListShards"],
                         "Resource": ["r2", "r1", "r2"]}),
            ),
        );
        same(
            &one(json!({})),
            &one(json!({"Action": ["kinesis:GetRecords", "kinesis:GetRecords"]})),
        );
        differ(
            &a,
            &one(
                json!({"Action": ["kinesis:GetRecords", "kinesis:PutRecord"], "Resource": ["r1", "r2"]}),
            ),
        );
        differ(
            &a,
            &one(
                json!({"Action": ["kinesis:GetRecords", "kinesis:ListShards"], "Resource": ["r1", "r3"]}),
            ),
        );
    }

    #[test]
    fn statements_are_unordered_object_equals_array_and_duplicates_collapse() {
        let s1 = json!({"Effect": "Allow", "Principal": "*", "Action": "kinesis:GetRecords", "Resource": "r"});
        let s2 = json!({"Effect": "Deny", "Principal": "*", "Action": "kinesis:PutRecord", "Resource": "r"});
        let object = doc(json!({"Version": "2012-10-17", "Statement": s1.clone()}));
        let array = doc(json!({"Version": "2012-10-17", "Statement": [s1.clone()]}));
        same(&object, &array);
        same(
            &array,
            &doc(json!({"Version": "2012-10-17", "Statement": [s1.clone(), s1.clone()]})),
        );
        let ab = doc(json!({"Version": "2012-10-17", "Statement": [s1.clone(), s2.clone()]}));
        let ba = doc(json!({"Version": "2012-10-17", "Statement": [s2.clone(), s1.clone()]}));
        same(&ab, &ba);
        differ(&ab, &array);
        differ(
            &doc(json!({"Version": "2012-10-17", "Statement": [s2]})),
            &array,
        );
        differ(
            &doc(json!({"Version": "2012-10-17", "Statement": []})),
            &array,
        );
    }

    #[test]
    fn effect_is_compared() {
        differ(&one(json!({})), &one(json!({"Effect": "Deny"})));
    }

    #[test]
    fn empty_sid_equals_missing_sid() {
        same(&one(json!({})), &one(json!({"Sid": ""})));
        differ(&one(json!({})), &one(json!({"Sid": "A"})));
        differ(&one(json!({"Sid": "A"})), &one(json!({"Sid": "B"})));
        differ(&one(json!({"Sid": "A"})), &one(json!({"Sid": "a"})));
    }

    /// Without their resource, two documents are read in one partition: when their Resource
    /// ARNs name two, an account's root ARN is read as the account in neither, whatever order
    /// their statements come in.
    #[test]
    fn two_documents_are_read_in_one_partition() {
        let cn_stream = "arn:aws-cn:kinesis:cn-north-1:111122223333:stream/s";
        let stream = "arn:aws:kinesis:us-east-1:111122223333:stream/s";
        let statement = |sid: &str, who: &str, resource: &str| {
            json!({"Sid": sid, "Effect": "Allow", "Principal": {"AWS": who},
                "Action": "kinesis:GetRecords", "Resource": resource})
        };
        let policy =
            |statements: Vec<Value>| doc(json!({"Version": "2012-10-17", "Statement": statements}));
        let cn_root = "arn:aws-cn:iam::999988887777:root";
        let first = policy(vec![
            statement("A", "111122223333", cn_stream),
            statement("B", cn_root, stream),
        ]);
        let second = policy(vec![
            statement("B", "999988887777", stream),
            statement("A", "111122223333", cn_stream),
        ]);
        differ(&first, &second);
        differ(&second, &first);
        let reordered = policy(vec![
            statement("B", cn_root, stream),
            statement("A", "111122223333", cn_stream),
        ]);
        same(&first, &reordered);
    }

    #[test]
    fn account_id_equals_root_arn_in_the_policys_partition() {
        let id = one(json!({"Principal": {"AWS": "111122223333"}}));
        same(
            &id,
            &one(json!({"Principal": {"AWS": "arn:aws:iam::111122223333:root"}})),
        );
        // A root ARN of another partition names nobody here.
        for arn in [
            "arn:aws-cn:iam::111122223333:root",
            "arn:aws-us-gov:iam::111122223333:root",
            "arn:x:iam::111122223333:root",
            "arn:aws-cn-x:iam::111122223333:root",
        ] {
            differ(&id, &one(json!({"Principal": {"AWS": arn}})));
        }
        // In aws-cn, its own root ARN is the account, and the commercial one is not.
        let cn = |principal: &str| {
            one(json!({
                "Principal": {"AWS": principal},
                "Resource": "arn:aws-cn:kinesis:cn-north-1:111122223333:stream/s"
            }))
        };
        same(
            &cn("111122223333"),
            &cn("arn:aws-cn:iam::111122223333:root"),
        );
        differ(&cn("111122223333"), &cn("arn:aws:iam::111122223333:root"));
        // A wildcard partition names none: no root ARN is read as the account in it.
        let any = |principal: &str| {
            one(json!({
                "Principal": {"AWS": principal},
                "Resource": "arn:*:kinesis:us-east-1:111122223333:stream/s"
            }))
        };
        differ(&any("111122223333"), &any("arn:*:iam::111122223333:root"));
        differ(&any("111122223333"), &any("arn:aws:iam::111122223333:root"));
        // The resource's partition, when known, beats the guess from Resource ARNs.
        let star = |principal: &str| one(json!({"Principal": {"AWS": principal}, "Resource": "*"}));
        let acct = "111122223333";
        let cn_root = "arn:aws-cn:iam::111122223333:root";
        assert_eq!(
            star(acct).canonical_in("aws-cn"),
            star(cn_root).canonical_in("aws-cn")
        );
        assert!(star(acct).equivalent_in(&star(cn_root), "aws-cn"));
        assert!(!star(acct).equivalent_in(&star("arn:aws:iam::111122223333:root"), "aws-cn"));
        assert!(!star(acct).equivalent_in(&star(cn_root), "aws"));
        // A policy naming no resource ARN is read as commercial without its resource.
        let anywhere =
            |principal: &str| one(json!({"Principal": {"AWS": principal}, "Resource": "*"}));
        same(
            &anywhere("111122223333"),
            &anywhere("arn:aws:iam::111122223333:root"),
        );
        differ(
            &anywhere("111122223333"),
            &anywhere("arn:aws-cn:iam::111122223333:root"),
        );
        same(
            &one(json!({"Principal": {"AWS": ["111122223333", "arn:aws:iam::111122223333:root"]}})),
            &id,
        );
        differ(&id, &one(json!({"Principal": {"AWS": "444455556666"}})));
        differ(
            &id,
            &one(json!({"Principal": {"AWS": "arn:aws:iam::444455556666:root"}})),
        );
        differ(
            &id,
            &one(json!({"Principal": {"AWS": "arn:aws:iam::111122223333:user/root"}})),
        );
        differ(
            &id,
            &one(json!({"Principal": {"AWS": "arn:aws:iam::111122223333:role/x"}})),
        );
        differ(
            &id,
            &one(json!({"Principal": {"AWS": "arn::iam::111122223333:root"}})),
        );
        differ(&id, &one(json!({"Principal": {"AWS": "11112222333"}})));
        // Only AWS principals are account ids.
        differ(
            &one(json!({"Principal": {"Federated": "111122223333"}})),
            &one(json!({"Principal": {"Federated": "arn:aws:iam::111122223333:root"}})),
        );
    }

    #[test]
    fn star_principal_is_not_aws_star() {
        for aws_star in [json!({"AWS": "*"}), json!({"AWS": ["*"]})] {
            differ(
                &one(json!({"Principal": "*"})),
                &one(json!({"Principal": aws_star})),
            );
            differ(
                &one(json!({"NotPrincipal": "*", "Principal": null})),
                &one(json!({"NotPrincipal": aws_star, "Principal": null})),
            );
        }
        same(
            &one(json!({"Principal": {"AWS": "*"}})),
            &one(json!({"Principal": {"AWS": ["*"]}})),
        );
        differ(
            &one(json!({"Principal": "*"})),
            &one(json!({"Principal": {"Service": "*"}})),
        );
        differ(&one(json!({"Principal": "*"})), &one(json!({})));
        assert_eq!(
            one(json!({"Principal": "*"})).canonical()["Statement"][0]["Principal"],
            json!("*")
        );
    }

    #[test]
    fn an_empty_principal_is_kept_apart() {
        let missing = one(json!({"Principal": null}));
        let empty = one(json!({"Principal": {}}));
        same(&empty, &one(json!({"Principal": {"AWS": []}})));
        same(
            &empty,
            &one(json!({"Principal": {"AWS": [], "Service": []}})),
        );
        // In an Allow, `NotPrincipal: {}` is everyone but nobody: public, not nobody.
        let not_empty = one(json!({"Principal": null, "NotPrincipal": {"AWS": []}}));
        differ(&empty, &not_empty);
        differ(&missing, &empty);
        differ(&missing, &not_empty);
        same(
            &one(json!({"Principal": {"Service": "x"}})),
            &one(json!({"Principal": {"AWS": [], "Service": ["x"]}})),
        );
        differ(&missing, &one(json!({})));
    }

    #[test]
    fn principal_real_differences() {
        let base = one(json!({}));
        differ(
            &base,
            &one(json!({"Principal": {"Service": "111122223333"}})),
        );
        differ(
            &base,
            &one(json!({"Principal": {"AWS": ["111122223333", "444455556666"]}})),
        );
        differ(
            &base,
            &one(json!({"Principal": null, "NotPrincipal": {"AWS": "111122223333"}})),
        );
        differ(
            &one(json!({"Principal": {"Service": "a.amazonaws.com"}})),
            &one(json!({"Principal": {"Service": "b.amazonaws.com"}})),
        );
    }

    #[test]
    fn condition_rules() {
        let c = |cond: Value| one(json!({"Condition": cond}));
        let base = c(
            json!({"StringEquals": {"k": ["a", "b"]}, "Bool": {"b": true}, "NumericEquals": {"n": 5}}),
        );
        same(
            &base,
            &c(
                json!({"NumericEquals": {"n": "5"}, "Bool": {"b": "true"}, "StringEquals": {"k": ["b", "a", "b"]}}),
            ),
        );
        same(
            &base,
            &c(
                json!({"Bool": {"b": [true]}, "NumericEquals": {"n": ["5"]}, "StringEquals": {"k": ["b", "a"]}}),
            ),
        );
        same(
            &c(json!({"Bool": {"b": false}})),
            &c(json!({"Bool": {"b": "false"}})),
        );
        // Real differences: value, key, operator, missing key, case.
        differ(
            &base,
            &c(
                json!({"StringEquals": {"k": ["a", "c"]}, "Bool": {"b": true}, "NumericEquals": {"n": 5}}),
            ),
        );
        differ(
            &base,
            &c(
                json!({"StringEquals": {"k": ["a"]}, "Bool": {"b": true}, "NumericEquals": {"n": 5}}),
            ),
        );
        differ(
            &base,
            &c(
                json!({"StringEquals": {"k2": ["a", "b"]}, "Bool": {"b": true}, "NumericEquals": {"n": 5}}),
            ),
        );
        differ(
            &base,
            &c(
                json!({"StringLike": {"k": ["a", "b"]}, "Bool": {"b": true}, "NumericEquals": {"n": 5}}),
            ),
        );
        differ(
            &base,
            &c(
                json!({"StringEquals": {"k": ["a", "b"]}, "Bool": {"b": false}, "NumericEquals": {"n": 5}}),
            ),
        );
        differ(
            &base,
            &c(
                json!({"StringEquals": {"k": ["a", "b"]}, "Bool": {"b": true}, "NumericEquals": {"n": 6}}),
            ),
        );
        differ(
            &base,
            &c(json!({"StringEquals": {"k": ["a", "b"]}, "Bool": {"b": true}})),
        );
        differ(
            &c(json!({"Bool": {"b": true}})),
            &c(json!({"Bool": {"b": "True"}})),
        );
        differ(
            &c(json!({"NumericEquals": {"n": 5}})),
            &c(json!({"NumericEquals": {"n": "5.0"}})),
        );
        differ(&base, &one(json!({})));
    }

    #[test]
    fn empty_condition_equals_missing() {
        same(&one(json!({})), &one(json!({"Condition": {}})));
        same(
            &one(json!({})),
            &one(json!({"Condition": {"StringEquals": {}}})),
        );
        differ(
            &one(json!({})),
            &one(json!({"Condition": {"StringEquals": {"k": []}}})),
        );
    }

    #[test]
    fn action_casing() {
        let base = one(json!({}));
        same(&base, &one(json!({"Action": "kinesis:getrecords"})));
        same(&base, &one(json!({"Action": "KINESIS:GETRECORDS"})));
        same(
            &one(json!({"Action": "kinesis:Get*"})),
            &one(json!({"Action": "Kinesis:Get*"})),
        );
        same(
            &one(json!({"Action": "s3:GetObject"})),
            &one(json!({"Action": "S3:GetObject"})),
        );
        // Names outside the known list keep their spelling.
        differ(
            &one(json!({"Action": "kinesis:Get*"})),
            &one(json!({"Action": "kinesis:get*"})),
        );
        differ(
            &one(json!({"Action": "s3:GetObject"})),
            &one(json!({"Action": "s3:getobject"})),
        );
        differ(&base, &one(json!({"Action": "kinesis:GetRecord"})));
        differ(
            &base,
            &one(json!({"Action": null, "NotAction": "kinesis:GetRecords"})),
        );
    }

    #[test]
    fn resource_real_difference() {
        differ(
            &one(json!({})),
            &one(json!({"Resource": "arn:aws:kinesis:us-east-1:111122223333:stream/t"})),
        );
        differ(
            &one(json!({})),
            &one(
                json!({"Resource": null, "NotResource": "arn:aws:kinesis:us-east-1:111122223333:stream/s"}),
            ),
        );
        differ(&one(json!({})), &one(json!({"Resource": []})));
    }

    #[test]
    fn version_and_id_compared_as_given() {
        let s = json!({"Effect": "Allow", "Action": "a:b"});
        let v = |v: Value| doc(v);
        let with = v(json!({"Version": "2012-10-17", "Statement": s}));
        same(
            &with,
            &v(json!({"Version": "2012-10-17", "Statement": [s]})),
        );
        differ(&with, &v(json!({"Statement": s})));
        differ(&with, &v(json!({"Version": "2008-10-17", "Statement": s})));
        differ(
            &with,
            &v(json!({"Version": "2012-10-17", "Id": "x", "Statement": s})),
        );
        differ(
            &v(json!({"Id": "x", "Statement": s})),
            &v(json!({"Id": "y", "Statement": s})),
        );
    }

    #[test]
    fn formatting_and_key_order_never_matter() {
        let a = PolicyDocument::from_json_str(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":"kinesis:GetRecords","Resource":"r"}]}"#,
        )
        .unwrap();
        let b = PolicyDocument::from_json_str(
            "{\n  \"Statement\": {\n    \"Resource\": [\"r\"],\n    \"Action\": \"kinesis:getRecords\",\n    \"Principal\": {\"AWS\": \"arn:aws:iam::111122223333:root\"},\n    \"Effect\": \"Allow\"\n  },\n  \"Version\": \"2012-10-17\"\n}\n",
        )
        .unwrap();
        same(&a, &b);
        assert_eq!(a.to_canonical_string(), b.to_canonical_string());
    }

    #[test]
    fn canonical_statement_labels() {
        let d = doc(json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "Read", "Effect": "Allow", "Action": "kinesis:GetRecords"},
            {"Effect": "Allow", "Action": "kinesis:PutRecord"},
            {"Effect": "Allow", "Action": "kinesis:PutRecord"},
            {"Sid": "Dup", "Effect": "Allow", "Action": "kinesis:ListShards"},
            {"Sid": "Dup", "Effect": "Deny", "Action": "kinesis:ListShards"}
        ]}));
        let stmts = canonical_statements(&d, None);
        let labels: Vec<&str> = stmts.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(stmts.len(), 4, "{labels:?}");
        let unique: BTreeSet<&str> = labels.iter().copied().collect();
        assert_eq!(unique.len(), 4, "{labels:?}");
        assert!(labels.contains(&"Read"));
        assert!(
            labels.iter().filter(|l| l.starts_with("Dup #")).count() == 2,
            "{labels:?}"
        );
        assert!(labels.iter().any(|l| l.starts_with('#')), "{labels:?}");
        let (_, read) = stmts.iter().find(|(l, _)| l == "Read").unwrap();
        assert_eq!(
            read,
            "{\n  \"Action\": \"kinesis:GetRecords\",\n  \"Effect\": \"Allow\",\n  \"Sid\": \"Read\"\n}\n"
        );
        // Same policy written differently gives the same list.
        let reordered = doc(json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "Dup", "Effect": "Deny", "Action": ["kinesis:listshards"]},
            {"Effect": "Allow", "Action": "kinesis:PutRecord", "Sid": ""},
            {"Sid": "Dup", "Effect": "Allow", "Action": "kinesis:ListShards"},
            {"Sid": "Read", "Effect": "Allow", "Action": "kinesis:GetRecords"}
        ]}));
        assert_eq!(canonical_statements(&reordered, None), stmts);
    }
}
