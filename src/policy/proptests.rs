//! Property tests for the canonical form. A policy is generated as an abstract spec, then
//! rendered to JSON in randomly chosen but equivalent ways (order, casing, single value vs list,
//! duplicates, account id vs root ARN, empty principals, condition
//! value types, object vs array statement, compact vs pretty text).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Map, Value, json};

use super::actions::{KINESIS_ACTIONS, canonical_action};
use super::{PolicyDocument, PrincipalType};

/// Tiny deterministic RNG (splitmix64): the renderer needs many independent choices and a seed
/// shrinks well enough.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum CondValue {
    Str(&'static str),
    Int(u8),
    Bool(bool),
}

#[derive(Debug, Clone)]
struct StmtSpec {
    sid: Option<&'static str>,
    allow: bool,
    not_principal: bool,
    principal: BTreeMap<PrincipalType, Vec<&'static str>>,
    not_action: bool,
    /// Canonical action names; the renderer varies their casing.
    actions: Vec<String>,
    resources: Option<Vec<&'static str>>,
    condition: BTreeMap<&'static str, BTreeMap<&'static str, Vec<CondValue>>>,
}

#[derive(Debug, Clone)]
struct Spec {
    version: Option<&'static str>,
    statements: Vec<StmtSpec>,
}

const ACCOUNTS: &[&str] = &["111122223333", "444455556666"];

fn action_pool() -> Vec<String> {
    let mut pool: Vec<String> = KINESIS_ACTIONS
        .iter()
        .map(|a| format!("kinesis:{a}"))
        .collect();
    pool.extend(
        [
            "kinesis:Get*",
            "kinesis:*",
            "s3:GetObject",
            "sqs:SendMessage",
            "*",
        ]
        .map(String::from),
    );
    pool
}

fn principal_pool(kind: PrincipalType) -> &'static [&'static str] {
    match kind {
        PrincipalType::Aws => &[
            "*",
            "111122223333",
            "444455556666",
            "arn:aws:iam::111122223333:role/reader",
        ],
        PrincipalType::Service => &["firehose.amazonaws.com", "lambda.amazonaws.com"],
        PrincipalType::Federated => &["cognito-identity.amazonaws.com"],
        PrincipalType::CanonicalUser => &["79a59df900b949e55d96a1e698fbaced"],
    }
}

fn principal_strategy() -> impl Strategy<Value = BTreeMap<PrincipalType, Vec<&'static str>>> {
    prop::collection::vec(
        (
            select(PrincipalType::ALL.to_vec()),
            prop::collection::vec(any::<Index>(), 0..3),
        ),
        0..3,
    )
    .prop_map(|entries| {
        let mut map: BTreeMap<PrincipalType, Vec<&'static str>> = BTreeMap::new();
        for (kind, idxs) in entries {
            let pool = principal_pool(kind);
            map.entry(kind)
                .or_default()
                .extend(idxs.iter().map(|i| *i.get(pool)));
        }
        map
    })
}

fn cond_value() -> impl Strategy<Value = CondValue> {
    prop_oneof![
        select(vec!["o-abc123", "111122223333", "x"]).prop_map(CondValue::Str),
        (0u8..20).prop_map(CondValue::Int),
        any::<bool>().prop_map(CondValue::Bool),
    ]
}

#[allow(clippy::type_complexity)]
fn condition_strategy()
-> impl Strategy<Value = BTreeMap<&'static str, BTreeMap<&'static str, Vec<CondValue>>>> {
    let op = select(vec![
        "StringEquals",
        "StringLike",
        "Bool",
        "NumericLessThan",
    ]);
    let key = select(vec![
        "aws:SourceAccount",
        "aws:PrincipalOrgID",
        "aws:SecureTransport",
    ]);
    prop::collection::vec(
        (
            op,
            prop::collection::vec((key, prop::collection::vec(cond_value(), 1..3)), 1..3),
        ),
        0..3,
    )
    .prop_map(|ops| {
        let mut out: BTreeMap<_, BTreeMap<_, Vec<_>>> = BTreeMap::new();
        for (op, keys) in ops {
            for (key, values) in keys {
                out.entry(op)
                    .or_default()
                    .entry(key)
                    .or_default()
                    .extend(values);
            }
        }
        out
    })
}

fn statement_strategy() -> impl Strategy<Value = StmtSpec> {
    (
        prop::option::of(select(vec!["Read", "Write", "Admin"])),
        any::<bool>(),
        any::<bool>(),
        principal_strategy(),
        any::<bool>(),
        prop::collection::vec(select(action_pool()), 1..4),
        prop::option::of(prop::collection::vec(
            select(vec![
                "arn:aws:kinesis:us-east-1:111122223333:stream/a",
                "arn:aws:kinesis:us-east-1:111122223333:stream/b",
                "arn:aws:kinesis:us-east-1:111122223333:stream/a/consumer/c:1700000000",
                "*",
            ]),
            1..3,
        )),
        condition_strategy(),
    )
        .prop_map(
            |(sid, allow, not_principal, principal, not_action, actions, resources, condition)| {
                StmtSpec {
                    sid,
                    allow,
                    not_principal,
                    principal,
                    not_action,
                    actions,
                    resources,
                    condition,
                }
            },
        )
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    (
        prop::option::of(select(vec!["2012-10-17", "2008-10-17"])),
        prop::collection::vec(statement_strategy(), 1..4),
    )
        .prop_map(|(version, statements)| Spec {
            version,
            statements,
        })
}

fn vary_case(rng: &mut Rng, s: &str) -> String {
    match rng.below(3) {
        0 => s.to_string(),
        1 => s.to_ascii_lowercase(),
        _ => s.to_ascii_uppercase(),
    }
}

/// A list in a random equivalent form: shuffled, maybe with a duplicate, a lone value maybe as a
/// plain string.
fn render_list(rng: &mut Rng, mut items: Vec<Value>) -> Value {
    rng.shuffle(&mut items);
    if !items.is_empty() && rng.below(4) == 0 {
        let dup = rng.pick(&items).clone();
        let at = rng.below(items.len() + 1);
        items.insert(at, dup);
    }
    if items.len() == 1 && rng.coin() {
        items.pop().expect("len is 1")
    } else {
        Value::Array(items)
    }
}

fn render_action(rng: &mut Rng, action: &str) -> String {
    let Some((prefix, name)) = action.split_once(':') else {
        return action.to_string();
    };
    let prefix = vary_case(rng, prefix);
    // Only known Kinesis names have an official casing to fold back to.
    let name = if prefix.eq_ignore_ascii_case("kinesis") && KINESIS_ACTIONS.contains(&name) {
        vary_case(rng, name)
    } else {
        name.to_string()
    };
    format!("{prefix}:{name}")
}

fn render_aws_id(rng: &mut Rng, id: &str) -> String {
    if ACCOUNTS.contains(&id) {
        // The generated resources are commercial (or none): only that partition's root ARN is
        // the account.
        match rng.below(3) {
            0 => format!("arn:aws:iam::{id}:root"),
            _ => id.to_string(),
        }
    } else {
        id.to_string()
    }
}

/// An object with its keys inserted in random order (serde_json keeps insertion order here).
fn shuffled_object(rng: &mut Rng, mut entries: Vec<(String, Value)>) -> Value {
    rng.shuffle(&mut entries);
    Value::Object(entries.into_iter().collect::<Map<_, _>>())
}

fn render_principal(
    rng: &mut Rng,
    p: &BTreeMap<PrincipalType, Vec<&'static str>>,
) -> Option<Value> {
    let named: Vec<_> = p.iter().filter(|(_, ids)| !ids.is_empty()).collect();
    if named.is_empty() {
        // Named nobody, which is not the same as missing.
        return match rng.below(2) {
            0 => Some(json!({})),
            _ => Some(json!({"AWS": [], "Service": []})),
        };
    }
    let mut entries = Vec::new();
    for kind in PrincipalType::ALL {
        let ids = p.get(&kind).cloned().unwrap_or_default();
        if ids.is_empty() {
            // An empty list names nobody; sometimes write one anyway.
            if rng.below(4) == 0 {
                entries.push((kind.as_str().to_string(), json!([])));
            }
            continue;
        }
        let values = ids
            .iter()
            .map(|id| {
                Value::String(if kind == PrincipalType::Aws {
                    render_aws_id(rng, id)
                } else {
                    id.to_string()
                })
            })
            .collect();
        entries.push((kind.as_str().to_string(), render_list(rng, values)));
    }
    Some(shuffled_object(rng, entries))
}

fn render_cond_value(rng: &mut Rng, v: &CondValue) -> Value {
    match (v, rng.coin()) {
        (CondValue::Str(s), _) => json!(s),
        (CondValue::Int(n), true) => json!(n),
        (CondValue::Int(n), false) => json!(n.to_string()),
        (CondValue::Bool(b), true) => json!(b),
        (CondValue::Bool(b), false) => json!(b.to_string()),
    }
}

fn render_statement(rng: &mut Rng, s: &StmtSpec) -> Value {
    let mut entries: Vec<(String, Value)> = Vec::new();
    match s.sid {
        Some(sid) => entries.push(("Sid".into(), json!(sid))),
        None if rng.coin() => entries.push(("Sid".into(), json!(""))),
        None => {}
    }
    let effect = if s.allow { "Allow" } else { "Deny" };
    entries.push(("Effect".into(), json!(effect)));
    if let Some(p) = render_principal(rng, &s.principal) {
        let key = if s.not_principal {
            "NotPrincipal"
        } else {
            "Principal"
        };
        entries.push((key.into(), p));
    }
    let actions = s
        .actions
        .iter()
        .map(|a| Value::String(render_action(rng, a)))
        .collect();
    let key = if s.not_action { "NotAction" } else { "Action" };
    entries.push((key.into(), render_list(rng, actions)));
    if let Some(resources) = &s.resources {
        let values = resources.iter().map(|r| json!(r)).collect();
        entries.push(("Resource".into(), render_list(rng, values)));
    }
    if s.condition.is_empty() {
        if rng.coin() {
            entries.push(("Condition".into(), json!({})));
        }
    } else {
        let ops = s
            .condition
            .iter()
            .map(|(op, keys)| {
                let keys = keys
                    .iter()
                    .map(|(k, vals)| {
                        let vals = vals.iter().map(|v| render_cond_value(rng, v)).collect();
                        (k.to_string(), render_list(rng, vals))
                    })
                    .collect();
                (op.to_string(), shuffled_object(rng, keys))
            })
            .collect();
        entries.push(("Condition".into(), shuffled_object(rng, ops)));
    }
    shuffled_object(rng, entries)
}

fn render(spec: &Spec, seed: u64) -> PolicyDocument {
    let mut rng = Rng(seed);
    let mut statements: Vec<Value> = spec
        .statements
        .iter()
        .map(|s| render_statement(&mut rng, s))
        .collect();
    if rng.below(4) == 0 {
        // An exact duplicate (rendered differently) collapses into the original.
        let i = rng.below(spec.statements.len());
        let dup = render_statement(&mut rng, &spec.statements[i]);
        statements.push(dup);
    }
    rng.shuffle(&mut statements);
    let statement = if statements.len() == 1 && rng.coin() {
        statements.pop().expect("len is 1")
    } else {
        Value::Array(statements)
    };
    let mut entries = vec![("Statement".to_string(), statement)];
    if let Some(v) = spec.version {
        entries.push(("Version".into(), json!(v)));
    }
    let value = shuffled_object(&mut rng, entries);
    let text = if rng.coin() {
        serde_json::to_string_pretty(&value)
    } else {
        serde_json::to_string(&value)
    }
    .expect("serialises");
    PolicyDocument::from_json_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn canonicalising_twice_changes_nothing(spec in spec_strategy(), seed in any::<u64>()) {
        let doc = render(&spec, seed);
        let canonical = doc.canonical();
        let again = PolicyDocument::from_value(&canonical).unwrap();
        prop_assert_eq!(again.canonical(), canonical.clone());
        prop_assert!(again.equivalent(&doc));
        let from_text = PolicyDocument::from_json_str(&doc.to_canonical_string()).unwrap();
        prop_assert_eq!(from_text.to_canonical_string(), doc.to_canonical_string());
    }

    #[test]
    fn equivalent_renderings_compare_equal(spec in spec_strategy(), a in any::<u64>(), b in any::<u64>()) {
        let (x, y) = (render(&spec, a), render(&spec, b));
        prop_assert!(x.equivalent(&y), "\n{}\n{}", x.to_canonical_string(), y.to_canonical_string());
        prop_assert_eq!(x.to_canonical_string(), y.to_canonical_string());
        prop_assert_eq!(super::canonical_statements(&x, None), super::canonical_statements(&y, None));
    }

    /// `equivalent` takes a short cut when the models are equal; it must never change the answer.
    #[test]
    fn equivalence_is_equality_of_canonical_forms(
        s in spec_strategy(),
        t in spec_strategy(),
        a in any::<u64>(),
        b in any::<u64>(),
    ) {
        for (x, y) in [
            (render(&s, a), render(&s, a)),
            (render(&s, a), render(&s, b)),
            (render(&s, a), render(&t, b)),
        ] {
            prop_assert_eq!(x.equivalent(&y), x.canonical() == y.canonical());
        }
    }

    #[test]
    fn changing_one_action_compares_unequal(
        spec in spec_strategy(),
        a in any::<u64>(),
        b in any::<u64>(),
        which_statement in any::<Index>(),
        which_action in any::<Index>(),
        replacement in any::<Index>(),
    ) {
        // The replacement appears nowhere in the original (not even in another statement), so
        // no reordering or de-duplication can hide the change.
        let used: BTreeSet<String> = spec
            .statements
            .iter()
            .flat_map(|s| s.actions.iter().map(|a| canonical_action(a)))
            .collect();
        let unused: Vec<String> = action_pool().into_iter().filter(|a| !used.contains(a)).collect();
        let new_action = if unused.is_empty() {
            "kinesis:NotARealAction".to_string()
        } else {
            replacement.get(&unused).clone()
        };
        let mut changed = spec.clone();
        let s = which_statement.get_mut(&mut changed.statements);
        *which_action.get_mut(&mut s.actions) = new_action;
        let (x, y) = (render(&spec, a), render(&changed, b));
        prop_assert!(!x.equivalent(&y), "\n{}\n{}", x.to_canonical_string(), y.to_canonical_string());
    }

    #[test]
    fn changing_effect_or_resource_compares_unequal(
        spec in spec_strategy(),
        a in any::<u64>(),
        b in any::<u64>(),
        which in any::<Index>(),
    ) {
        // Distinct Sids make every statement unique, so changing one cannot make it collapse
        // into another.
        let mut spec = spec;
        let sids = ["S0", "S1", "S2", "S3"];
        for (s, sid) in spec.statements.iter_mut().zip(sids) {
            s.sid = Some(sid);
        }
        let mut flipped = spec.clone();
        let s = which.get_mut(&mut flipped.statements);
        s.allow = !s.allow;
        prop_assert!(!render(&spec, a).equivalent(&render(&flipped, b)));

        let mut moved = spec.clone();
        let s = which.get_mut(&mut moved.statements);
        s.resources = Some(vec!["arn:aws:kinesis:eu-west-1:999999999999:stream/z"]);
        prop_assert!(!render(&spec, a).equivalent(&render(&moved, b)));
    }
}
