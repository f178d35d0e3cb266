//! Property tests of the manifest loader and the policy parser through the library's public API:
//! arbitrary bytes, structured-but-random YAML/JSON, and mutations of a valid manifest. They must
//! never panic or hang, and every diagnostic must point at a line that exists.
//!
//! Short by default (256 cases each, `PROPTEST_CASES` overrides) and bounded in time: a run that
//! does not finish within the deadline fails as a hang instead of stalling CI.

use std::path::Path;
use std::time::Duration;

use kinesis_policy_reconciler::manifest::{LoadOptions, load_dir};
use kinesis_policy_reconciler::policy::PolicyDocument;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(120);

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        max_shrink_iters: 2_000,
        // Integration tests have no src/ to put regression files next to.
        failure_persistence: None,
        ..Config::default()
    }
}

/// Runs `test` over `strategy()` on another thread and fails if it outlives [`DEADLINE`].
fn run<S, F>(name: &'static str, strategy: fn() -> S, test: F)
where
    S: Strategy + 'static,
    S::Value: std::fmt::Debug,
    F: Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut runner = TestRunner::new(config());
            let result = runner.run(&strategy(), test).map_err(|e| match e {
                TestError::Abort(why) => format!("aborted: {why}"),
                TestError::Fail(why, value) => format!("{why}\nminimal input: {value:#?}"),
            });
            let _ = tx.send(result);
        })
        .unwrap();
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{name}: {e}"),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{name}: no result within {DEADLINE:?} (hang or pathological slowness)")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("{name}: the property panicked (see the output above)")
        }
    }
}

const ARN: &str = "arn:aws:kinesis:us-east-1:111122223333:stream/orders";

const WORDS: &[&str] = &[
    ARN,
    "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/app:1700000000",
    "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/app",
    "arn:aws:kinesis:us-east-1:111122223333:stream/*",
    "arn:aws:s3:::bucket",
    "arn:aws:iam::444455556666:role/reader",
    "arn:aws:iam::111122223333:root",
    "111122223333",
    "kinesis:GetRecords",
    "kinesis:Get*",
    "kinesis:*",
    "s3:GetObject",
    "*",
    "Allow",
    "Deny",
    "allow",
    "2012-10-17",
    "2008-10-17",
    "absent",
    "present",
    "true",
    "",
    "aws:SourceAccount",
    "aws:PrincipalOrgID",
    "o-abc123",
];

const KEYS: &[&str] = &[
    "arn",
    "policy",
    "ensure",
    "allowPublic",
    "Version",
    "Id",
    "Statement",
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "AWS",
    "Service",
    "Federated",
    "CanonicalUser",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
    "StringEquals",
    "StringLike",
    "ForAnyValue:StringEquals",
    "Bool",
    "NumericLessThan",
    "aws:SourceAccount",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        proptest::sample::select(WORDS).prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::from),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => "[A-Za-z:*]{0,12}",
    ]
}

/// Any JSON tree whose keys are mostly the ones manifests and policies use.
fn tree() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 96, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A statement-shaped object: the right keys, random values.
fn statement() -> impl Strategy<Value = Value> {
    let keys = proptest::sample::subsequence(
        kinesis_policy_reconciler::policy::STATEMENT_KEYS,
        0..=kinesis_policy_reconciler::policy::STATEMENT_KEYS.len(),
    );
    (
        keys,
        proptest::collection::vec(
            tree(),
            kinesis_policy_reconciler::policy::STATEMENT_KEYS.len(),
        ),
    )
        .prop_map(|(keys, values)| {
            Value::Object(
                keys.into_iter()
                    .zip(values)
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )
        })
}

/// A policy-shaped document: mostly the right structure, random content.
fn policy() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(prop_oneof![Just(Value::from("2012-10-17")), leaf()]),
        prop_oneof![
            3 => proptest::collection::vec(statement(), 0..4).prop_map(Value::Array),
            1 => statement(),
            1 => tree(),
        ],
    )
        .prop_map(|(version, statements)| {
            let mut m = serde_json::Map::new();
            if let Some(v) = version {
                m.insert("Version".into(), v);
            }
            m.insert("Statement".into(), statements);
            Value::Object(m)
        })
}

/// A manifest document: an ARN, and a policy as a mapping or as a JSON string, or noise.
fn manifest_doc() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (
            prop_oneof![proptest::sample::select(WORDS).prop_map(Value::from), leaf()],
            policy(),
            any::<bool>(),
            proptest::option::of(prop_oneof![Just(Value::from("absent")), leaf()]),
            proptest::option::of(leaf()),
        )
            .prop_map(|(arn, policy, as_string, ensure, allow_public)| {
                let mut m = serde_json::Map::new();
                m.insert("arn".into(), arn);
                let policy = if as_string { Value::from(policy.to_string()) } else { policy };
                m.insert("policy".into(), policy);
                if let Some(e) = ensure {
                    m.insert("ensure".into(), e);
                }
                if let Some(a) = allow_public {
                    m.insert("allowPublic".into(), a);
                }
                Value::Object(m)
            }),
        1 => tree(),
    ]
}

/// Writes `bytes` as the only manifest of `dir`, loads the directory, and checks every
/// diagnostic names that file (or the directory) at a line the file has.
fn load_and_check(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let file = dir.join("m.yaml");
    std::fs::write(&file, bytes).unwrap();
    let loaded = load_dir(dir, &LoadOptions::default());
    let lines = bytes.split(|&b| b == b'\n').count().max(1);
    for d in &loaded.diagnostics {
        prop_assert!(
            d.file == file || d.file == dir,
            "diagnostic for another path: {d}"
        );
        if let Some(line) = d.line {
            prop_assert!(
                (1..=lines + 1).contains(&line),
                "line {line} outside the file's {lines} lines: {d}"
            );
        }
    }
    if !loaded.has_errors() {
        // Accepted input must be usable: every resource came from this file.
        for r in &loaded.state.resources {
            prop_assert_eq!(&r.source.file, &file);
        }
    }
    Ok(())
}

fn yaml_stream(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_norway::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Parsing a canonical form again must give an equivalent document with the same canonical
/// form: otherwise kpr would see a difference where there is none and rewrite policies forever.
fn canonical_is_stable(doc: &PolicyDocument) -> Result<(), TestCaseError> {
    let text = doc.to_canonical_string();
    let again = PolicyDocument::from_json_str(&text)
        .map_err(|e| TestCaseError::fail(format!("canonical form does not parse: {e}\n{text}")))?;
    prop_assert!(
        again.equivalent(doc),
        "not equivalent after a round trip:\n{text}"
    );
    prop_assert_eq!(again.canonical(), doc.canonical());
    Ok(())
}

#[test]
fn policy_parser_survives_arbitrary_text() {
    run(
        "policy_parser_survives_arbitrary_text",
        || proptest::collection::vec(any::<u8>(), 0..2048),
        |bytes| {
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(doc) = PolicyDocument::from_json_str(&text) {
                canonical_is_stable(&doc)?;
            }
            Ok(())
        },
    );
}

#[test]
fn policy_parser_survives_structured_json() {
    run(
        "policy_parser_survives_structured_json",
        || prop_oneof![3 => policy(), 1 => tree()],
        |v| {
            let from_value = PolicyDocument::from_value(&v);
            let from_text = PolicyDocument::from_json_str(&v.to_string());
            prop_assert_eq!(
                from_value.is_ok(),
                from_text.is_ok(),
                "from_value and from_json_str disagree: {:?} vs {:?}",
                from_value.as_ref().err().map(ToString::to_string),
                from_text.as_ref().err().map(ToString::to_string)
            );
            if let Ok(doc) = from_value {
                canonical_is_stable(&doc)?;
                prop_assert!(doc.equivalent(&from_text.unwrap()));
            }
            Ok(())
        },
    );
}

#[test]
fn manifest_loader_survives_arbitrary_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(
        "manifest_loader_survives_arbitrary_bytes",
        || {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..1024),
                // Mostly printable, with YAML's structural characters over-represented.
                "[a-z:\\- \\[\\]{}\"'#&*!|>%@`\t\n,?]{0,400}".prop_map(String::into_bytes),
            ]
        },
        move |bytes| load_and_check(&path, &bytes),
    );
}

#[test]
fn manifest_loader_survives_structured_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(
        "manifest_loader_survives_structured_yaml",
        || proptest::collection::vec(manifest_doc(), 1..4),
        move |docs| load_and_check(&path, yaml_stream(&docs).as_bytes()),
    );
}

/// Lines that spoil a document in different ways: a wrong type, an unknown field, an unknown
/// enum value, an alias to no anchor (the YAML parser stops mid-document), an unclosed flow
/// collection or quote (a syntax error), a tab, a duplicate key.
const SPOILERS: &[&str] = &[
    "arn: [x]\n",
    "polcy: 1\n",
    "ensure: gone\n",
    "arn2: *missing\n",
    "policy: *missing\n",
    "policy: {a: [}\n",
    "arn: \"open\n",
    "\tarn: x\n",
    "allowPublic: 7\n",
    "ensure: absent\n",
    "arn: arn:aws:kinesis:us-east-1:111122223333:stream/orders\n",
    "a: &x 1\nb: *x\n",
    "...\n",
];

#[test]
fn manifest_loader_survives_streams_of_spoiled_documents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(
        "manifest_loader_survives_streams_of_spoiled_documents",
        || {
            proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(SPOILERS), 0..5),
                1..5,
            )
        },
        move |docs| {
            let text = docs
                .iter()
                .map(|lines| lines.concat())
                .collect::<Vec<_>>()
                .join("---\n");
            load_and_check(&path, text.as_bytes())
        },
    );
}

const VALID: &str = "# orders stream
arn: arn:aws:kinesis:us-east-1:111122223333:stream/orders
policy:
  Version: \"2012-10-17\"
  Statement:
    - Sid: Read
      Effect: Allow
      Principal: {AWS: \"arn:aws:iam::444455556666:role/reader\"}
      Action: [kinesis:GetRecords, kinesis:GetShardIterator]
      Resource: arn:aws:kinesis:us-east-1:111122223333:stream/orders
---
arn: arn:aws:kinesis:us-east-1:111122223333:stream/billing
policy: |
  {\"Version\": \"2012-10-17\", \"Statement\": [{\"Effect\": \"Allow\",
   \"Principal\": {\"AWS\": \"111122223333\"}, \"Action\": \"kinesis:PutRecord\",
   \"Resource\": \"arn:aws:kinesis:us-east-1:111122223333:stream/billing\"}]}
";

#[test]
fn manifest_loader_survives_mutations_of_a_valid_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // The unmutated manifest must load: otherwise the mutations test nothing.
    std::fs::write(path.join("m.yaml"), VALID).unwrap();
    let loaded = load_dir(&path, &LoadOptions::default());
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    assert_eq!(loaded.state.resources.len(), 2);
    run(
        "manifest_loader_survives_mutations_of_a_valid_manifest",
        || {
            proptest::collection::vec(
                (
                    any::<proptest::sample::Index>(),
                    0usize..4,
                    proptest::sample::select(
                        &[
                            ":", "-", " ", "\t", "\n", "[", "]", "{", "}", "\"", "'", "#", "&a",
                            "*a", "!", "|", ">", ",", "---\n", "\u{feff}", "\u{0}",
                        ][..],
                    ),
                ),
                1..6,
            )
        },
        move |edits| {
            let mut text = VALID.as_bytes().to_vec();
            for (at, kind, s) in edits {
                let i = at.index(text.len() + 1);
                match kind {
                    0 => {
                        text.splice(i..i, s.bytes());
                    }
                    1 if i < text.len() => {
                        text.remove(i);
                    }
                    2 if i < text.len() => {
                        let end = (i + s.len()).min(text.len());
                        text.splice(i..end, s.bytes());
                    }
                    _ => {
                        // Duplicate a line: repeated keys and documents.
                        let start = text[..i]
                            .iter()
                            .rposition(|&b| b == b'\n')
                            .map_or(0, |p| p + 1);
                        let end = text[i..]
                            .iter()
                            .position(|&b| b == b'\n')
                            .map_or(text.len(), |p| i + p + 1);
                        let line = text[start..end].to_vec();
                        text.splice(start..start, line);
                    }
                }
            }
            load_and_check(&path, &text)
        },
    );
}
