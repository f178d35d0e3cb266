//! IAM policy documents: a typed model, a canonical form for semantic comparison, and the
//! Kinesis-specific lint.
//!
//! Live policies are never compared byte-for-byte: AWS may store or return a policy in another
//! layout, and a spurious difference would make every reconcile rewrite the policy. Everything
//! that compares policies goes through [`PolicyDocument::canonical`].

pub mod actions;
mod canonical;
pub mod lint;
mod parse;
#[cfg(test)]
mod proptests;

pub use canonical::{AccessChange, UNKNOWN_PARTITION, canonical_statements};
pub use parse::{STATEMENT_KEYS, strict_json, strict_value_opt};

use serde_json::Value;

/// A parsed IAM policy document. Fields keep the document's order and spelling as written;
/// [`PolicyDocument::canonical`] is where equivalence rules apply.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    version: Option<String>,
    id: Option<String>,
    statements: Vec<Statement>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl PolicyError {
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "Allow",
            Effect::Deny => "Deny",
        }
    }
}

/// The principal types IAM accepts inside a `Principal` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PrincipalType {
    Aws,
    Service,
    Federated,
    CanonicalUser,
}

impl PrincipalType {
    pub const ALL: [PrincipalType; 4] = [
        PrincipalType::Aws,
        PrincipalType::Service,
        PrincipalType::Federated,
        PrincipalType::CanonicalUser,
    ];

    /// The JSON key, e.g. `"AWS"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalType::Aws => "AWS",
            PrincipalType::Service => "Service",
            PrincipalType::Federated => "Federated",
            PrincipalType::CanonicalUser => "CanonicalUser",
        }
    }

    /// Exact match only: IAM rejects other spellings, so accepting them would hide a typo.
    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == key)
    }
}

/// A `Principal` or `NotPrincipal` value.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// The bare string `"*"`.
    Anyone,
    /// An object of principal type -> identifiers, in the order written.
    Typed(Vec<(PrincipalType, Vec<String>)>),
}

impl Principal {
    /// True for `"*"`, or a `"*"` identifier of any type (IAM only documents it for `AWS`, but a
    /// lint about public access should not depend on that).
    pub fn includes_anyone(&self) -> bool {
        match self {
            Principal::Anyone => true,
            Principal::Typed(entries) => entries
                .iter()
                .any(|(_, ids)| ids.iter().any(|id| id == "*")),
        }
    }

    /// True when no identifier is given at all (`{}` or only empty lists), which IAM treats as
    /// if the element were missing.
    pub fn is_empty(&self) -> bool {
        match self {
            Principal::Anyone => false,
            Principal::Typed(entries) => entries.iter().all(|(_, ids)| ids.is_empty()),
        }
    }

    /// The identifiers given for one principal type, as written (`"*"` counts as `AWS: "*"`).
    pub fn identifiers(&self, kind: PrincipalType) -> Vec<&str> {
        match self {
            Principal::Anyone if kind == PrincipalType::Aws => vec!["*"],
            Principal::Anyone => Vec::new(),
            Principal::Typed(entries) => entries
                .iter()
                .filter(|(t, _)| *t == kind)
                .flat_map(|(_, ids)| ids.iter().map(String::as_str))
                .collect(),
        }
    }
}

/// One condition value. IAM compares condition values as strings, but the document may write
/// numbers and booleans; they are kept as written and stringified only in the canonical form.
#[derive(Debug, Clone, PartialEq)]
pub enum ConditionValue {
    String(String),
    Number(serde_json::Number),
    Bool(bool),
}

impl ConditionValue {
    pub fn as_canonical_string(&self) -> String {
        match self {
            ConditionValue::String(s) => s.clone(),
            ConditionValue::Number(n) => n.to_string(),
            ConditionValue::Bool(b) => b.to_string(),
        }
    }
}

/// One condition operator block, e.g. `"StringEquals": {"aws:SourceAccount": "111122223333"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionBlock {
    operator: String,
    entries: Vec<(String, Vec<ConditionValue>)>,
}

impl ConditionBlock {
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// Condition key -> values, in the order written.
    pub fn entries(&self) -> &[(String, Vec<ConditionValue>)] {
        &self.entries
    }
}

/// A `Condition` element: operator blocks in the order written.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    blocks: Vec<ConditionBlock>,
}

impl Condition {
    pub fn blocks(&self) -> &[ConditionBlock] {
        &self.blocks
    }

    /// True when no condition key is given (`{}` or operators with empty objects): such a
    /// Condition constrains nothing, the same as no Condition.
    pub fn is_empty(&self) -> bool {
        self.blocks.iter().all(|b| b.entries.is_empty())
    }
}

/// One statement. IAM allows at most one of each pair (Principal/NotPrincipal,
/// Action/NotAction, Resource/NotResource); parsing enforces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    sid: Option<String>,
    effect: Effect,
    principal: Option<Principal>,
    not_principal: Option<Principal>,
    action: Option<Vec<String>>,
    not_action: Option<Vec<String>>,
    resource: Option<Vec<String>>,
    not_resource: Option<Vec<String>>,
    condition: Option<Condition>,
}

impl Statement {
    /// The Sid; `None` when missing or empty (`""` means no Sid).
    pub fn sid(&self) -> Option<&str> {
        self.sid.as_deref().filter(|s| !s.is_empty())
    }

    pub fn effect(&self) -> Effect {
        self.effect
    }

    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    pub fn not_principal(&self) -> Option<&Principal> {
        self.not_principal.as_ref()
    }

    /// `Action` values as written (a single string is a one-element slice).
    pub fn actions(&self) -> Option<&[String]> {
        self.action.as_deref()
    }

    pub fn not_actions(&self) -> Option<&[String]> {
        self.not_action.as_deref()
    }

    pub fn resources(&self) -> Option<&[String]> {
        self.resource.as_deref()
    }

    pub fn not_resources(&self) -> Option<&[String]> {
        self.not_resource.as_deref()
    }

    pub fn condition(&self) -> Option<&Condition> {
        self.condition.as_ref()
    }

    /// True when the statement is effectively unconditional.
    pub fn is_unconditional(&self) -> bool {
        self.condition.as_ref().is_none_or(Condition::is_empty)
    }
}

impl PolicyDocument {
    /// Parses policy JSON. Duplicate object keys are rejected here (serde_json would silently
    /// keep the last one, dropping part of the policy).
    pub fn from_json_str(s: &str) -> Result<Self, PolicyError> {
        let value = parse::strict_json(s)?;
        Self::from_value(&value)
    }

    pub fn from_value(v: &Value) -> Result<Self, PolicyError> {
        parse::document(v)
    }

    /// The canonical form as a JSON value: equivalent documents give identical values. The
    /// partition the policy's bare account ids are in is read from its Resource ARNs; see
    /// [`Self::canonical_in`] when the resource is known.
    pub fn canonical(&self) -> Value {
        canonical::document(self, None)
    }

    /// The canonical form of the policy of a resource in `partition`.
    pub fn canonical_in(&self, partition: &str) -> Value {
        canonical::document(self, Some(partition))
    }

    /// Pretty-printed canonical JSON (2-space indent, trailing newline).
    pub fn to_canonical_string(&self) -> String {
        self.to_canonical_string_in(None)
    }

    /// The same, for a resource in `partition` when it is known.
    pub fn to_canonical_string_in(&self, partition: Option<&str>) -> String {
        let mut s = serde_json::to_string_pretty(&canonical::document(self, partition))
            .expect("a serde_json::Value always serialises");
        s.push('\n');
        s
    }

    /// Compact canonical JSON, e.g. for sending a normalised policy.
    pub fn to_canonical_compact_string(&self) -> String {
        self.canonical().to_string()
    }

    /// Whether two documents grant the same, read in the one partition their Resource ARNs
    /// name (see [`Self::partition_named`]; [`Self::equivalent_in`] when the resource is
    /// known).
    pub fn equivalent(&self, other: &Self) -> bool {
        self.equivalent_in(other, Self::partition_named(&[self, other]))
    }

    /// The partition all of the documents' Resource and NotResource ARNs name, `aws` when
    /// they name none; when they disagree, one in which no account's root ARN is read as the
    /// account (never a false equality).
    pub fn partition_named<'a>(docs: &[&'a Self]) -> &'a str {
        canonical::named_partition(docs).unwrap_or(canonical::UNKNOWN_PARTITION)
    }

    /// As [`Self::partition_named`], with `otherwise` when no Resource names one.
    pub fn partition_named_or<'a>(docs: &[&'a Self], otherwise: &'a str) -> &'a str {
        canonical::named_partition_or(docs, otherwise).unwrap_or(canonical::UNKNOWN_PARTITION)
    }

    /// Whether two policies of a resource in `partition` grant the same.
    pub fn equivalent_in(&self, other: &Self, partition: &str) -> bool {
        // Equal models first: a policy another tool wrote usually differs from the manifest only
        // in layout (key order, spacing, escapes), which parsing already removed. Building two
        // canonical forms costs ~60k instructions per resource on every plan of such a policy.
        self == other || self.canonical_in(partition) == other.canonical_in(partition)
    }

    /// Statements in the order written.
    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }

    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

/// True when a live policy string means "no policy": AWS and moto answer `"{}"`; an empty or
/// whitespace-only string is treated the same.
pub fn is_empty_policy(raw: &str) -> bool {
    // Called on every policy read: a real policy is rejected at its second non-blank byte,
    // without parsing it.
    let trimmed = raw.trim();
    trimmed.is_empty()
        || trimmed
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .is_some_and(|inner| inner.trim().is_empty())
}

/// IAM wildcard match: `*` matches any run of characters (including none), `?` exactly one.
/// Case-sensitive; lowercase both sides for a case-insensitive match.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` seen and the text index it is currently assumed to cover up to;
    // backtracking only to the last star keeps this linear-ish instead of exponential.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The candidate closest to `word` by edit distance (case-insensitive), if within `max`.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    max: usize,
) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_policy_detection() {
        assert!(is_empty_policy("{}"));
        assert!(is_empty_policy(" { }\n"));
        assert!(is_empty_policy(""));
        assert!(is_empty_policy("  \n\t"));
        assert!(!is_empty_policy(
            r#"{"Version":"2012-10-17","Statement":[]}"#
        ));
        assert!(!is_empty_policy("[]"));
        assert!(!is_empty_policy("{"));
    }

    #[test]
    fn wildcard_matching() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("a*c", "abbbc"));
        assert!(wildcard_match("a*c", "ac"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "ac"));
        assert!(!wildcard_match("a*c", "abcd"));
        assert!(wildcard_match("*stream/*", "arn:aws:kinesis:r:1:stream/x"));
        assert!(wildcard_match("a*b*c", "aXbYbZc"));
        assert!(!wildcard_match("A*", "abc"), "case-sensitive");
        assert!(!wildcard_match("", "x"));
        assert!(wildcard_match("", ""));
        assert!(wildcard_match("**?", "x"));
    }

    #[test]
    fn closest_and_distance() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            closest("Princpal", ["Principal", "Resource"], 2),
            Some("Principal")
        );
        assert_eq!(closest("xyz", ["Principal", "Resource"], 2), None);
    }

    #[test]
    fn getters_expose_the_document_as_written() {
        let doc = PolicyDocument::from_json_str(
            r#"{"Version":"2012-10-17","Id":"p1","Statement":{"Sid":"","Effect":"Deny",
                "Principal":"*","Action":"kinesis:GetRecords","Resource":["a","b"],
                "Condition":{"Bool":{"aws:SecureTransport":false}}}}"#,
        )
        .unwrap();
        assert_eq!(doc.version(), Some("2012-10-17"));
        assert_eq!(doc.id(), Some("p1"));
        let st = &doc.statements()[0];
        assert_eq!(st.sid(), None);
        assert_eq!(st.effect(), Effect::Deny);
        assert_eq!(st.principal(), Some(&Principal::Anyone));
        assert_eq!(
            st.principal().unwrap().identifiers(PrincipalType::Aws),
            ["*"]
        );
        assert_eq!(st.actions().unwrap(), ["kinesis:GetRecords"]);
        assert_eq!(st.resources().unwrap(), ["a", "b"]);
        assert!(!st.is_unconditional());
        let block = &st.condition().unwrap().blocks()[0];
        assert_eq!(block.operator(), "Bool");
        assert_eq!(block.entries()[0].1, [ConditionValue::Bool(false)]);
    }

    #[test]
    fn canonical_string_is_pretty_with_trailing_newline() {
        let doc = PolicyDocument::from_json_str(
            r#"{"Statement":{"Effect":"Allow","Action":"kinesis:GetRecords"},"Version":"2012-10-17"}"#,
        )
        .unwrap();
        assert_eq!(
            doc.to_canonical_string(),
            "{\n  \"Statement\": [\n    {\n      \"Action\": \"kinesis:GetRecords\",\n      \"Effect\": \"Allow\"\n    }\n  ],\n  \"Version\": \"2012-10-17\"\n}\n"
        );
        assert_eq!(
            doc.to_canonical_compact_string(),
            r#"{"Statement":[{"Action":"kinesis:GetRecords","Effect":"Allow"}],"Version":"2012-10-17"}"#
        );
    }
}
