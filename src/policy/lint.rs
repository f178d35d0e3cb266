//! The Kinesis-specific lint, run on a manifest's policy before any API call. AWS documents
//! little of what Kinesis accepts in a resource policy and accepts some mistakes silently (a
//! policy naming another stream), so these checks catch what would otherwise reach production.

use super::actions::{
    KINESIS_PREFIX, closest_known, official_name, pattern_covers, pattern_matches_known_action,
    split_action,
};
use super::{
    Condition, ConditionBlock, Effect, PolicyDocument, Principal, PrincipalType, Statement,
    wildcard_match,
};

/// Policy versions IAM accepts.
const VERSIONS: &[&str] = &["2012-10-17", "2008-10-17"];

pub struct LintContext<'a> {
    /// The manifest's ARN as written; a consumer ARN may lack its `:<epoch>` suffix.
    pub resource_arn: &'a str,
    pub allow_public: bool,
    /// Maximum bytes of the compact JSON the tool will send.
    pub max_size: usize,
    /// Actual bytes of that JSON.
    pub size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    /// E.g. `Statement[0].Action` (index in the document as written, 0-based), `Version`, `size`.
    pub path: String,
    pub message: String,
}

pub fn lint(doc: &PolicyDocument, ctx: &LintContext) -> Vec<Finding> {
    let mut out = Findings(Vec::new());
    match doc.version() {
        None => out.error(
            "Version",
            "missing; a Kinesis resource policy needs \"Version\": \"2012-10-17\"".into(),
        ),
        Some(v) if !VERSIONS.contains(&v) => out.error(
            "Version",
            format!("{v:?} is not a policy language version; use \"2012-10-17\""),
        ),
        Some(_) => {}
    }
    if ctx.size > ctx.max_size {
        out.error(
            "size",
            format!(
                "the policy is {} bytes, over the maximum of {} bytes",
                ctx.size, ctx.max_size
            ),
        );
        // Refused whatever its statements say: judging them all could cost seconds (an
        // unknown action's suggestion is ~0.2 ms, and 256 KiB of YAML holds 16,000 of them).
        return out.0;
    }
    if doc.statements().is_empty() {
        out.error(
            "Statement",
            "the policy has no statements; use `ensure: absent` to remove a resource's policy"
                .into(),
        );
    }
    // The first statement of each Sid, in one pass: a policy of many statements must not cost
    // their square.
    let mut first_of_sid = std::collections::HashMap::new();
    for (i, s) in doc.statements().iter().enumerate() {
        if let Some(sid) = s.sid() {
            first_of_sid.entry(sid).or_insert(i);
        }
    }
    for (i, s) in doc.statements().iter().enumerate() {
        let path = format!("Statement[{i}]");
        let sid = s
            .sid()
            .map(|sid| format!(" (Sid {sid:?})"))
            .unwrap_or_default();
        if let Some(own) = s.sid()
            && let Some(&j) = first_of_sid.get(own).filter(|&&j| j != i)
        {
            out.warning(
                &format!("{path}.Sid"),
                format!("Sid {own:?} is also used by Statement[{j}]; Sids should be unique"),
            );
        }
        principal_rules(&mut out, s, &path, &sid, ctx);
        lockout_rules(&mut out, s, &path, &sid, ctx);
        resource_rules(&mut out, s, &path, &sid, ctx);
        action_rules(&mut out, s, &path, &sid);
        operator_rule(&mut out, s, &path, &sid);
        condition_key_rule(&mut out, s, &path, &sid);
        boolean_condition_rule(&mut out, s, &path, &sid);
        typed_value_rule(&mut out, s, &path, &sid);
        literal_wildcard_rule(&mut out, s, &path, &sid);
        empty_values_rule(&mut out, s, &path, &sid);
    }
    out.0
}

struct Findings(Vec<Finding>);

impl Findings {
    fn error(&mut self, path: &str, message: String) {
        self.push(Severity::Error, path, message);
    }

    fn warning(&mut self, path: &str, message: String) {
        self.push(Severity::Warning, path, message);
    }

    fn push(&mut self, severity: Severity, path: &str, message: String) {
        self.0.push(Finding {
            severity,
            path: path.to_string(),
            message,
        });
    }
}

fn principal_rules(out: &mut Findings, s: &Statement, path: &str, sid: &str, ctx: &LintContext) {
    let named = |p: Option<&Principal>| p.is_some_and(|p| !p.is_empty());
    if !named(s.principal()) && !named(s.not_principal()) {
        let (key, what) = match (s.principal(), s.not_principal()) {
            (_, Some(_)) => (
                "NotPrincipal",
                "an empty NotPrincipal, which excepts no one (in an Allow, everyone)",
            ),
            (Some(_), None) => ("Principal", "an empty Principal"),
            (None, None) => ("Principal", "no Principal"),
        };
        out.error(
            &format!("{path}.{key}"),
            format!("the statement has {what}; a resource policy must name who it applies to{sid}"),
        );
        return;
    }
    partition_rule(out, s, path, sid, ctx);
    principal_wildcard_rule(out, s, path, sid);
    principal_shape_rule(out, s, path, sid);
    confused_deputy_rule(out, s, path, sid);
    if ctx.allow_public {
        return;
    }
    if !grants_public(s) {
        return;
    }
    if !s.is_unconditional() {
        let key = if principal_is_anyone(s) {
            "Principal"
        } else {
            "NotPrincipal"
        };
        let why = s.condition().map(why_not_limiting).unwrap_or_default();
        out.error(
            &format!("{path}.Condition"),
            format!(
                "Allow to everyone ({key}) under a Condition that does not limit who calls \
                 ({why}): anyone who meets it is granted. Limit the caller with a positive operator on \
                 aws:PrincipalOrgID, aws:PrincipalAccount, aws:SourceAccount or aws:SourceArn \
                 with fixed values (no IfExists, no policy variable, no wildcard in the account \
                 or org, nor before the account under StringLike: use ArnLike), or set \
                 `allowPublic: true`{sid}"
            ),
        );
        return;
    }
    if principal_is_anyone(s) {
        out.error(
            &format!("{path}.Principal"),
            format!(
                "Allow to principal \"*\" without a Condition makes the resource public; add a \
                 Condition (e.g. aws:PrincipalOrgID or aws:SourceAccount) or set \
                 `allowPublic: true`{sid}"
            ),
        );
    }
    if grants_everyone_but(s) {
        out.error(
            &format!("{path}.NotPrincipal"),
            format!(
                "Allow with NotPrincipal and no Condition grants everyone else, making the \
                 resource public; add a Condition or set `allowPublic: true`{sid}"
            ),
        );
    }
}

/// IAM matches a principal within the resource's own partition: an ARN of another partition
/// names nobody here. It is refused rather than sent, also because kpr's comparison reads
/// `arn:<partition>:iam::ID:root` as the account ID in any partition, which is sound only for
/// principals a policy can hold.
fn partition_rule(out: &mut Findings, s: &Statement, path: &str, sid: &str, ctx: &LintContext) {
    let Some(own) = ctx.resource_arn.split(':').nth(1) else {
        return;
    };
    for (key, id) in aws_principal_ids(s) {
        let Some(other) = id.strip_prefix("arn:").and_then(|r| r.split(':').next()) else {
            continue;
        };
        if other != own {
            out.error(
                &format!("{path}.{key}.AWS"),
                format!(
                    "{id:?} is in partition {other}, the resource in {own}: IAM matches \
                     principals within the resource's partition only{sid}"
                ),
            );
        }
    }
}

/// IAM matches no part of a principal with a wildcard (only the whole `"*"`) and refuses a
/// policy that tries: told here, before any call, rather than as a failed write at apply.
fn principal_wildcard_rule(out: &mut Findings, s: &Statement, path: &str, sid: &str) {
    for (key, id) in aws_principal_ids(s) {
        if id != "*" && id.contains(['*', '?']) {
            out.error(
                &format!("{path}.{key}.AWS"),
                format!(
                    "{id:?} holds a wildcard: IAM matches no part of a principal with one, and \
                     refuses the policy. Name each principal, or use \"*\" with a Condition on \
                     aws:PrincipalArn (ArnLike) or aws:PrincipalAccount{sid}"
                ),
            );
        }
    }
}

/// An AWS principal is `"*"`, a 12-digit account id, or an IAM or STS ARN of an account:
/// anything else (a colon missing, an 11-digit id) names nobody, and the service refuses the
/// policy at apply, after a plan that looked fine. A unique id (`AROA...`), which AWS shows
/// in place of a principal deleted since, is flagged too: it names nobody any more.
fn principal_shape_rule(out: &mut Findings, s: &Statement, path: &str, sid: &str) {
    let account = crate::arn::is_account_id;
    for (key, id) in aws_principal_ids(s) {
        let arn_ok = id.strip_prefix("arn:").is_some_and(|rest| {
            let mut parts = rest.splitn(5, ':');
            let (_partition, service, region, acct, resource) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            );
            // What IAM takes as an AWS principal: an account's root, a role or a user, or
            // an STS session (not a group, nor a SAML provider, which is Federated).
            let named: &[&str] = match service {
                Some("iam") => &["role/", "user/"],
                Some("sts") => &["assumed-role/", "federated-user/"],
                _ => &[],
            };
            let kind_ok = |r: &str| {
                (service == Some("iam") && r == "root")
                    || named
                        .iter()
                        .any(|k| r.strip_prefix(k).is_some_and(|name| !name.is_empty()))
            };
            region == Some("")
                && acct.is_some_and(account)
                && resource.is_some_and(|r| kind_ok(r) && !r.contains(char::is_whitespace))
        });
        let unique_id = id.len() >= 16
            && id.starts_with('A')
            && id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if unique_id {
            out.warning(
                &format!("{path}.{key}.AWS"),
                format!(
                    "{id:?} is a unique id, which AWS shows in place of a user or role deleted \
                     since: it names nobody. Name the principal again, or remove it{sid}"
                ),
            );
        } else if id != "*" && !account(id) && !arn_ok && !id.contains(['*', '?']) {
            out.error(
                &format!("{path}.{key}.AWS"),
                format!(
                    "{id:?} is not an AWS principal: write a 12-digit account id, \
                     \"arn:aws:iam::ACCOUNT:root\", \"arn:aws:iam::ACCOUNT:role/NAME\" (or \
                     user/NAME), or an STS assumed-role ARN{sid}"
                ),
            );
        }
    }
}

/// The AWS identifiers of a statement's Principal and NotPrincipal, with the key of each.
fn aws_principal_ids(s: &Statement) -> impl Iterator<Item = (&'static str, &str)> {
    [
        ("Principal", s.principal()),
        ("NotPrincipal", s.not_principal()),
    ]
    .into_iter()
    .flat_map(|(key, p)| {
        p.map(|p| p.identifiers(PrincipalType::Aws))
            .unwrap_or_default()
            .into_iter()
            .map(move |id| (key, id))
    })
}

/// An Allow to an AWS service acts for whichever account the service works for, unless a
/// Condition names the source: another account's use of the service could reach this resource
/// (the confused deputy).
fn confused_deputy_rule(out: &mut Findings, s: &Statement, path: &str, sid: &str) {
    if s.effect() != Effect::Allow {
        return;
    }
    let Some(services) = s
        .principal()
        .map(|p| p.identifiers(PrincipalType::Service))
        .filter(|ids| !ids.is_empty())
    else {
        return;
    };
    let source_named = s.condition().is_some_and(|c| {
        limits(c, |key| {
            matches!(
                key,
                "aws:sourceaccount"
                    | "aws:sourceowner"
                    | "aws:sourcearn"
                    | "aws:sourceorgid"
                    | "aws:sourceorgpaths"
            )
        })
    });
    if !source_named {
        out.warning(
            &format!("{path}.Principal"),
            format!(
                "Allow to service {} with no fixed aws:SourceAccount, aws:SourceArn or \
                 aws:SourceOrgID in the Condition: the service may use it on behalf of any \
                 account (the confused deputy){sid}",
                services.join(", ")
            ),
        );
    }
}

/// How an operator matches a value: literally; with `*` / `?` wildcards over the whole string
/// (`StringLike`, where a `*` also spans `:`); with wildcards within each of an ARN's fields
/// (`ArnLike`, `ArnEquals`); or as a CIDR block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Match {
    Exact,
    Pattern,
    Arn,
    Cidr,
}

/// Whether a Condition limits the caller: some key that says who the caller is or where the
/// call comes from, under an operator that must match it (not a `Not...` operator, not
/// `...IfExists`, which passes when the key is absent, not `ForAllValues:`, which passes on an
/// empty set, not `Null`), with values that are all fixed. A fixed value, as S3's Block Public
/// Access defines it, holds no policy variable and no wildcard that reaches past one account:
/// `"${aws:PrincipalAccount}"`, `"o-*"` or `arn:aws:iam::*:role/x` admit every account. Tags
/// are left out (a principal in any account can carry any tag), and so are
/// `aws:PrincipalServiceName` (a service acts for any account) and `aws:VpcSourceIp` (anyone
/// can build a VPC with those addresses). Blocks are ANDed, so one such entry limits the whole
/// statement.
fn names_the_caller(c: &Condition) -> bool {
    limits(c, |_| true)
}

/// Whether some key `counts` accepts must match fixed values (see [`names_the_caller`]).
fn limits(c: &Condition, counts: impl Fn(&str) -> bool) -> bool {
    c.blocks().iter().any(|b| {
        let Some(how) = positive_match(b.operator()) else {
            return false;
        };
        b.entries().iter().any(|(key, values)| {
            let key = key.to_ascii_lowercase();
            counts(&key)
                && !values.is_empty()
                && values
                    .iter()
                    .all(|v| fixed_caller_value(&key, how, &v.as_canonical_string()))
        })
    })
}

/// An operator as IAM compares it, without case, its set qualifier (`ForAnyValue:`,
/// `ForAllValues:`) or `IfExists`: `bool` for `ForAnyValue:BoolIfExists`. For rules about a
/// key's values, which these leave as they are; not for whether a missing key matches.
fn base_operator(operator: &str) -> String {
    let lower = operator.to_ascii_lowercase();
    let op = lower
        .strip_prefix("foranyvalue:")
        .or_else(|| lower.strip_prefix("forallvalues:"))
        .unwrap_or(&lower);
    op.strip_suffix("ifexists").unwrap_or(op).to_string()
}

/// How a positive operator (`ForAnyValue:` allowed) matches its values; `None` for any other:
/// a `Not...` operator, `...IfExists` (which holds when the key is absent), `ForAllValues:`
/// (which holds on an empty set), `Null`, `Bool`.
fn positive_match(operator: &str) -> Option<Match> {
    let op = operator.to_ascii_lowercase();
    let op = op.strip_prefix("foranyvalue:").unwrap_or(&op);
    Some(match op {
        "stringequals" | "stringequalsignorecase" => Match::Exact,
        "stringlike" => Match::Pattern,
        "arnequals" | "arnlike" => Match::Arn,
        "ipaddress" => Match::Cidr,
        _ => return None,
    })
}

/// The keys [`fixed_caller_value`] knows: what can say who calls or from where.
const CALLER_KEYS: &[&str] = &[
    "aws:sourceip",
    "aws:principalaccount",
    "aws:sourceaccount",
    "aws:sourceowner",
    "aws:principalorgid",
    "aws:sourceorgid",
    "aws:principalorgpaths",
    "aws:sourceorgpaths",
    "aws:principalarn",
    "aws:sourcearn",
    "aws:userid",
    "aws:sourcevpc",
    "aws:sourcevpce",
];

/// Why no entry of a Condition limits the caller ([`names_the_caller`] said none does), entry
/// by entry, the first two: which rule each one breaks is what the writer needs to fix.
fn why_not_limiting(c: &Condition) -> String {
    let mut reasons = Vec::new();
    for b in c.blocks() {
        let op = b.operator();
        let lower = op.to_ascii_lowercase();
        for (key, values) in b.entries() {
            let k = key.to_ascii_lowercase();
            let reason = if !CALLER_KEYS.contains(&k.as_str()) {
                format!("{key} does not say who calls")
            } else if lower.ends_with("ifexists") {
                format!("{op} holds when {key} is missing")
            } else if lower.starts_with("forallvalues:") {
                format!("{op} holds when {key} has no values")
            } else if let Some(how) = positive_match(op) {
                let unfixed = values
                    .iter()
                    .map(|v| v.as_canonical_string())
                    .find(|v| !fixed_caller_value(&k, how, v));
                match unfixed {
                    _ if (how == Match::Cidr) != (k == "aws:sourceip") => {
                        format!("{op} cannot match {key} as meant")
                    }
                    Some(v) if v.contains("${") => format!("{v:?} holds a policy variable"),
                    Some(v) if k == "aws:sourceip" && !is_address_range(&v) => {
                        format!("{v} is not an address or address range")
                    }
                    Some(v) if k == "aws:sourceip" => {
                        format!("{v} admits more than an IPv4 /8 or an IPv6 /32")
                    }
                    Some(v) => format!(
                        "{key} {v:?} does not fix one account, organization, network or identity"
                    ),
                    None if values.is_empty() => format!("{key} has no values"),
                    None => continue,
                }
            } else if lower.starts_with("null") {
                format!("{op} only asks whether {key} is present")
            } else {
                format!("{op} does not require {key} to match: everyone else meets it")
            };
            reasons.push(reason);
            if reasons.len() == 2 {
                return reasons.join("; ");
            }
        }
    }
    if reasons.is_empty() {
        "no entry names the caller".into()
    } else {
        reasons.join("; ")
    }
}

/// Whether `value` of condition key `key` (lower case) admits callers of one account, org,
/// network or identity only.
fn fixed_caller_value(key: &str, how: Match, value: &str) -> bool {
    // The resource's own account and organization are variables with one value for this
    // policy (AWS writes its data perimeters so): as fixed as the literal id.
    let own = match value.to_ascii_lowercase().as_str() {
        "${aws:resourceaccount}" => Some("account"),
        "${aws:resourceorgid}" => Some("org"),
        _ => None,
    };
    if let Some(own) = own {
        return how != Match::Cidr
            && match key {
                "aws:principalaccount" | "aws:sourceaccount" | "aws:sourceowner" => {
                    own == "account"
                }
                "aws:principalorgid" | "aws:sourceorgid" => own == "org",
                _ => false,
            };
    }
    if value.contains("${") {
        return false;
    }
    let literal = |s: &str| how == Match::Exact || !s.contains(['*', '?']);
    let account = crate::arn::is_account_id;
    match key {
        _ if (how == Match::Cidr) != (key == "aws:sourceip") => false,
        "aws:sourceip" => narrow_cidr(value),
        "aws:principalaccount" | "aws:sourceaccount" | "aws:sourceowner" => account(value),
        "aws:principalorgid" | "aws:sourceorgid" => value.starts_with("o-") && literal(value),
        // o-xxxx/r-yyyy/ou-...: the organization must be fixed; below it, anything.
        "aws:principalorgpaths" | "aws:sourceorgpaths" => value
            .split_once('/')
            .is_some_and(|(org, _)| org.starts_with("o-") && literal(org)),
        // A wildcard may stand for a role or function, not for the account. Under StringLike
        // a `*` spans fields, so nothing before the account may be a wildcard either.
        "aws:principalarn" | "aws:sourcearn" => {
            let fields: Vec<&str> = value.splitn(6, ':').collect();
            literal(value)
                || (fields.len() == 6
                    && account(fields[4])
                    && (how == Match::Arn || fields[..4].iter().all(|f| literal(f))))
        }
        // Every session of one role: `AROAEXAMPLEID:*`.
        "aws:userid" => {
            literal(value)
                || value
                    .strip_suffix(":*")
                    .is_some_and(|id| !id.is_empty() && literal(id))
        }
        "aws:sourcevpc" | "aws:sourcevpce" => literal(value),
        _ => false,
    }
}

/// An address, or an address and a prefix length its family allows.
fn is_address_range(value: &str) -> bool {
    let (addr, bits) = value.split_once('/').unwrap_or((value, "0"));
    match (addr.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(bits)) => bits <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(bits)) => bits <= 128,
        _ => false,
    }
}

/// A CIDR block no wider than a /8 (IPv4) or a /32 (IPv6), or one address: `0.0.0.0/0` is
/// everyone.
fn narrow_cidr(value: &str) -> bool {
    let (addr, bits) = match value.split_once('/') {
        Some((addr, bits)) => match bits.parse::<u8>() {
            Ok(bits) => (addr, bits),
            Err(_) => return false,
        },
        None => return value.parse::<std::net::IpAddr>().is_ok(),
    };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => (8..=32).contains(&bits),
        // A range over the IPv4-mapped (::ffff:0:0/96) or IPv4-compatible (::/96) addresses
        // is, for an IPv4 caller, the IPv4 range in its last 32 bits: `::ffff:0:0/96` would
        // be the whole IPv4 internet, `::/32` contains both. It is held to the IPv4 bound.
        Ok(std::net::IpAddr::V6(v6)) if (32..=128).contains(&bits) => {
            let mask = |bits: u8| u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            let over_v4 = [0xffff_u128 << 32, 0]
                .iter()
                .any(|&v4| u128::from(v6) & mask(bits.min(96)) == v4 & mask(bits.min(96)));
            !over_v4 || bits >= 96 + 8
        }
        Ok(std::net::IpAddr::V6(_)) => false,
        Err(_) => false,
    }
}

/// Whether a statement makes the resource public: an Allow to principal "*", or to everyone
/// but a few (NotPrincipal), without a Condition that limits who calls. The one definition,
/// shared by the lint and `kpr import` (which marks such a policy `allowPublic: true`, for
/// review, rather than write a manifest that would not validate).
pub fn grants_public(s: &Statement) -> bool {
    allows_everyone(s) && !s.condition().is_some_and(names_the_caller)
}

/// An Allow to principal "*" or to everyone but a few, whatever its Condition.
fn allows_everyone(s: &Statement) -> bool {
    s.effect() == Effect::Allow && (principal_is_anyone(s) || grants_everyone_but(s))
}

/// Allow + NotPrincipal grants everyone except the listed principals: just as public. Only the
/// bare `"*"` leaves no one: `AWS: "*"` excludes the principals of every AWS account, yet not
/// service principals (kpr tells `"*"` and `{"AWS": "*"}` apart, see `canonical`), and a `"*"`
/// of another type excludes only that type.
fn grants_everyone_but(s: &Statement) -> bool {
    // An empty one spares no one: everyone (lint refuses it in a manifest as an empty
    // principal, but a live policy may hold it).
    s.not_principal().is_some_and(|p| *p != Principal::Anyone)
}

fn principal_is_anyone(s: &Statement) -> bool {
    s.principal().is_some_and(|p| p.includes_anyone())
}

/// A NotPrincipal that leaves out some AWS principals, kpr's own role among them unless listed
/// (for the lockout rule; an AWS `"*"` leaves out none). A `"*"` of another type (`Service:
/// "*"`) excludes only that type.
fn principal_is_everyone_but(s: &Statement) -> bool {
    s.not_principal()
        .is_some_and(|p| !p.is_empty() && !p.identifiers(PrincipalType::Aws).contains(&"*"))
}

/// The calls kpr makes on a resource to read, correct and remove its policy.
const MANAGEMENT_ACTIONS: &[&str] = &[
    "kinesis:GetResourcePolicy",
    "kinesis:PutResourcePolicy",
    "kinesis:DeleteResourcePolicy",
];

/// An unconditional Deny of kpr's own calls to everyone (or to the resource's account: every
/// identity of an account carries the account principal, so kpr's role matches it) applies to
/// kpr as well: once applied, no later manifest can undo it, and only the account's root user,
/// which resource policies do not bind here, or a principal the Deny misses can repair it. A
/// warning, not an error: freezing a policy can be meant, but it should never be a surprise.
fn lockout_rules(out: &mut Findings, s: &Statement, path: &str, sid: &str, ctx: &LintContext) {
    let mut arn = ctx.resource_arn.split(':');
    let (partition, account) = (arn.nth(1).unwrap_or(""), arn.nth(2).unwrap_or(""));
    // Conditions are ANDed: the Deny binds kpr when each block may hold for its calls. A Deny
    // unless the call comes from some network (a VPC endpoint, an address range) binds kpr
    // too, unless kpr's own calls come from there: a CI runner or a cluster elsewhere is locked
    // out by the apply that writes it. So does one that excepts only principals of other
    // accounts ("only the partner may use this"), as kpr calls from the resource's own account
    // (PutResourcePolicy must), and one that holds for any call over TLS or without MFA.
    let met = s.condition().and_then(|c| {
        let reasons: Option<Vec<Vec<&str>>> = c
            .blocks()
            .iter()
            .map(|b| kpr_may_meet(b, account))
            .collect();
        let mut reasons: Vec<&str> = reasons?.into_iter().flatten().collect();
        reasons.sort_unstable();
        reasons.dedup();
        (!reasons.is_empty()).then_some(reasons)
    });
    if s.effect() != Effect::Deny || !(s.is_unconditional() || met.is_some()) {
        return;
    }
    let own_root = format!("arn:{partition}:iam::{account}:root");
    // Everyone, or every AWS principal: a `"*"` of another type (`Service: "*"`) names no
    // role, kpr's included.
    let covers_roles = s.principal().is_some_and(|p| {
        *p == Principal::Anyone || p.identifiers(PrincipalType::Aws).contains(&"*")
    });
    let (key, whom) = if covers_roles {
        ("Principal", "to everyone, kpr included,".to_string())
    } else if principal_is_everyone_but(s) {
        (
            "NotPrincipal",
            "to everyone NotPrincipal does not list, kpr included unless it is listed,".to_string(),
        )
    } else if s.principal().is_some_and(|p| {
        p.identifiers(PrincipalType::Aws)
            .iter()
            .any(|id| *id == account || *id == own_root)
    }) {
        (
            "Principal",
            format!("to all of account {account}, kpr's role included when it runs there,"),
        )
    } else {
        return;
    };
    let denied: Vec<&str> = MANAGEMENT_ACTIONS
        .iter()
        .copied()
        .filter(|a| match (s.actions(), s.not_actions()) {
            (Some(listed), _) => listed.iter().any(|p| pattern_covers(p, a)),
            (None, Some(spared)) => !spared.iter().any(|p| pattern_covers(p, a)),
            (None, None) => false,
        })
        .collect();
    if denied.is_empty() {
        return;
    }
    let (when, unless) = match met {
        Some(reasons) => (
            format!(
                "with a Condition that kpr's own calls may meet ({})",
                reasons.join("; ")
            ),
            "make sure they do not, or exempt kpr's role",
        ),
        None => ("without a Condition".to_string(), "exempt kpr's role"),
    };
    out.warning(
        &format!("{path}.{key}"),
        format!(
            "Deny of {} {whom} {when}: once applied, kpr can no longer read or change this \
             policy, so no later manifest can undo it; {unless} with a Condition (e.g. \
             ArnNotEquals on aws:PrincipalArn){sid}",
            denied.join(", ")
        ),
    );
}

/// Why a Condition block may hold for kpr's own calls, if it may, entry by entry: its
/// entries are ANDed, so each must (see [`lockout_rules`]).
fn kpr_may_meet(b: &ConditionBlock, account: &str) -> Option<Vec<&'static str>> {
    if b.entries().is_empty() {
        return None;
    }
    b.entries()
        .iter()
        .map(|(key, values)| kpr_may_meet_entry(b.operator(), key, values, account))
        .collect()
}

fn kpr_may_meet_entry(
    operator: &str,
    key: &str,
    values: &[super::ConditionValue],
    account: &str,
) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    // The resource's own account, written as the variable that stands for it, is that account.
    let values: Vec<String> = values
        .iter()
        .map(|v| own_account_named(&v.as_canonical_string(), account))
        .collect();
    if values.is_empty() {
        return None;
    }
    // About the network: anything but a [`positive_match`] of one network (`IpAddress` of a
    // blocked range, `StringEquals aws:SourceVpce`), which holds only for calls from there,
    // may hold for calls from elsewhere, kpr's among them. `...IfExists` holds when the key is
    // missing (a call through no VPC endpoint), `ForAllValues:` on an empty set, and `Not...`
    // and `Null` elsewhere by their nature. `0.0.0.0/0` or `vpce-*` name every network, and
    // aws:VpcSourceIp private ranges, kpr's own likely among them.
    if NETWORK_KEYS.contains(&key.as_str()) {
        let narrow = positive_match(operator)
            .is_some_and(|how| values.iter().all(|v| fixed_caller_value(&key, how, v)));
        return (!narrow).then_some("about the network");
    }
    let lower = operator.to_ascii_lowercase();
    // Keys a direct call by kpr's role does not carry: an entry on one holds for kpr when it
    // holds without its key. `ForAllValues:` does (an empty set), `ForAnyValue:` does not;
    // otherwise `...IfExists`, a negated operator and `Null true` do.
    let holds_without_key = || {
        if lower.starts_with("forallvalues:") {
            true
        } else if lower.starts_with("foranyvalue:") {
            false
        } else if lower == "null" {
            values.iter().all(|v| v.eq_ignore_ascii_case("true"))
        } else {
            lower.ends_with("ifexists") || lower.contains("not")
        }
    };
    // A key no request carries (a typo: `aws:PrincipleArn`) is absent from kpr's calls too.
    if ABSENT_FROM_KPRS_CALLS.contains(&key.as_str()) || !is_known_key(&key) {
        return holds_without_key()
            .then_some("kpr's direct calls carry no such key, and it holds without it");
    }
    // Keys only a call through a VPC endpoint carries: absent from a call from elsewhere.
    if VPC_ENDPOINT_KEYS.contains(&key.as_str()) {
        return holds_without_key().then_some("about the network");
    }
    // A caller's account and ARN are single values: `ForAnyValue:` and `ForAllValues:`
    // change nothing.
    let base = base_operator(operator);
    let op = base.as_str();
    let all = |value: &str| values.iter().all(|v| v.eq_ignore_ascii_case(value));
    match (op, key.as_str()) {
        (
            "stringnotequals"
            | "stringnotequalsignorecase"
            | "stringnotlike"
            | "arnnotequals"
            | "arnnotlike",
            "aws:principalaccount" | "aws:principalarn",
        ) if values
            .iter()
            .all(|v| spares_no_one_of(op, &key, v, account)) =>
        {
            Some("it excepts no principal of the resource's own account, where kpr calls from")
        }
        // An exception written as a pattern under an operator that reads it as text: no
        // caller's id, name or ARN holds a `*` or `?`, so it spares no one.
        (
            "stringnotequals" | "stringnotequalsignorecase",
            "aws:userid" | "aws:username" | "aws:principalarn" | "aws:principalaccount",
        ) if values
            .iter()
            .all(|v| v.contains(['*', '?']) && !v.contains("${")) =>
        {
            Some(
                "its exception is a pattern its operator reads as plain text (StringNotEquals, not \
             StringNotLike), so it spares no one",
            )
        }
        // A Deny that names the resource's own account, or a pattern of its roles: kpr's.
        ("stringequals" | "stringlike", "aws:principalaccount")
            if values
                .iter()
                .any(|v| v == account || (op == "stringlike" && wildcard_match(v, account))) =>
        {
            Some("it names the resource's own account, where kpr calls from")
        }
        ("arnequals" | "arnlike" | "stringlike", "aws:principalarn")
            if values.iter().any(|arn| {
                let fields: Vec<&str> = arn.splitn(6, ':').collect();
                matches!(fields.as_slice(), [_, _, "iam", _, acct, resource]
                    if (*acct == account || wildcard_match(acct, account))
                        && resource.starts_with("role/")
                        && resource.contains(['*', '?']))
            }) =>
        {
            Some("it names roles of the resource's own account, kpr's among them")
        }
        ("bool", "aws:securetransport") if all("true") => {
            Some("it holds for every call over TLS, as every AWS call is")
        }
        ("bool", "aws:multifactorauthpresent") if all("false") => {
            Some("it holds for calls without MFA, as a pipeline's or a service's are")
        }
        // The key is absent for long-term access keys, as a systemd unit's may be.
        ("null", "aws:multifactorauthpresent") if all("true") => {
            Some("it holds for calls with access keys, which carry no MFA key")
        }
        // The data-perimeter exceptions for AWS services: kpr calls as itself.
        ("bool", "aws:principalisawsservice" | "aws:viaawsservice") if all("false") => {
            Some("it holds for calls a principal makes itself, not through an AWS service")
        }
        // Every call carries the time: a Deny from a date already past, or until one still to
        // come, holds for kpr's next call.
        (_, "aws:currenttime" | "aws:epochtime")
            if values.iter().any(|v| date_holds_now(op, v) == Some(true)) =>
        {
            Some("it holds at the time of writing, for every call")
        }
        _ => None,
    }
}

/// Whether `DateX value` (or `NumericX`, for aws:EpochTime) holds for a call made now; `None`
/// for another operator or a value not read here (ISO 8601 as `2020-01-01` or
/// `2020-01-01T00:00:00Z`, or epoch seconds).
fn date_holds_now(op: &str, value: &str) -> Option<bool> {
    let at = instant_of(value)?;
    let now = std::time::SystemTime::now();
    // aws:EpochTime takes the numeric operators too.
    Some(
        match op
            .strip_prefix("date")
            .or_else(|| op.strip_prefix("numeric"))?
        {
            "greaterthan" => now > at,
            "greaterthanequals" => now >= at,
            "lessthan" => now < at,
            "lessthanequals" => now <= at,
            "notequals" => now != at,
            _ => return None,
        },
    )
}

/// `value` with `${aws:ResourceAccount}` (in any case: IAM reads variable names so) written as
/// the account it stands for.
fn own_account_named(value: &str, account: &str) -> String {
    const VARIABLE: &str = "${aws:resourceaccount}";
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.to_ascii_lowercase().find(VARIABLE) {
        out.push_str(&rest[..i]);
        out.push_str(account);
        rest = &rest[i + VARIABLE.len()..];
    }
    out.push_str(rest);
    out
}

/// The instant a date value names: seconds since 1970, or the W3C forms of ISO 8601 IAM takes
/// (see [`is_date`]), a UTC offset included (`2026-01-01T00:00:00+01:00`).
fn instant_of(value: &str) -> Option<std::time::SystemTime> {
    use std::time::{Duration, UNIX_EPOCH};
    // All digits is seconds since 1970, a bare year too (`2030`): so IAM reads a number. One
    // past what a clock holds is as good as the end of time for whether a window is open now.
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let far = UNIX_EPOCH + Duration::from_secs(1 << 40);
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(
            UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .map_or(far, |t| t.min(far)),
        );
    }
    let (year, local, east) = w3c_date(value)?;
    // Before 1970 (which the reader below does not take) is long past: as good as 1970 for
    // whether a window is open now.
    if year < 1970 {
        return Some(UNIX_EPOCH);
    }
    let utc = humantime::parse_rfc3339_weak(&format!("{local}Z")).ok()?;
    // Local time `east` seconds ahead of UTC: the instant is that much earlier.
    if east >= 0 {
        utc.checked_sub(Duration::from_secs(east.unsigned_abs()))
    } else {
        utc.checked_add(Duration::from_secs(east.unsigned_abs()))
    }
}

/// IAM's global condition keys, as AWS spells them (they are read without regard to case),
/// those with a tag after them aside: what a request may carry. A key in `aws:` that is none of
/// these is most likely a typo.
const GLOBAL_KEYS: &[&str] = &[
    "aws:AssumedRoot",
    "aws:CalledVia",
    "aws:CalledViaAWSMCP",
    "aws:CalledViaFirst",
    "aws:CalledViaLast",
    "aws:ChatbotSourceArn",
    "aws:CurrentTime",
    "aws:Ec2InstanceSourcePrivateIPv4",
    "aws:Ec2InstanceSourceVpc",
    "aws:EpochTime",
    "aws:FederatedProvider",
    "aws:IsMcpServiceAction",
    "aws:MultiFactorAuthAge",
    "aws:MultiFactorAuthPresent",
    "aws:PrincipalAccount",
    "aws:PrincipalArn",
    "aws:PrincipalIsAWSService",
    "aws:PrincipalOrgID",
    "aws:PrincipalOrgPaths",
    "aws:PrincipalServiceName",
    "aws:PrincipalServiceNamesList",
    "aws:PrincipalType",
    "aws:Referer",
    "aws:RequestedRegion",
    "aws:ResourceAccount",
    "aws:ResourceOrgID",
    "aws:ResourceOrgPaths",
    "aws:SecureTransport",
    "aws:SourceAccount",
    "aws:SourceArn",
    "aws:SourceIdentity",
    "aws:SourceIp",
    "aws:SourceOrgID",
    "aws:SourceOrgPaths",
    "aws:SourceOwner",
    "aws:SourceVpc",
    "aws:SourceVpcArn",
    "aws:SourceVpce",
    "aws:TagKeys",
    "aws:TokenIssueTime",
    "aws:UserAgent",
    "aws:userid",
    "aws:username",
    "aws:ViaAWSMCPService",
    "aws:ViaAWSService",
    "aws:VpceAccount",
    "aws:VpceOrgID",
    "aws:VpceOrgPaths",
    "aws:VpcSourceIp",
];

/// Keys followed by a tag's name (`aws:PrincipalTag/team`).
const TAG_KEY_PREFIXES: &[&str] = &["aws:principaltag/", "aws:requesttag/", "aws:resourcetag/"];

/// Whether a (lowercase) condition key may be in a request: a global key, a tag key, or one of
/// another service's (`kinesis:`, `sts:`), which kpr does not list.
fn is_known_key(key: &str) -> bool {
    !key.starts_with("aws:")
        || GLOBAL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key))
        || TAG_KEY_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// A global key misspelt (`aws:PrincipleAccount`) is in no request: under a positive
/// operator its entry never matches, under a negated one or `IfExists` it always holds.
/// Warned of, not refused: AWS adds global keys, and kpr's list may lag behind.
fn condition_key_rule(out: &mut Findings, s: &Statement, path: &str, sid: &str) {
    let Some(c) = s.condition() else { return };
    for b in c.blocks() {
        for (key, _) in b.entries() {
            let lower = key.to_ascii_lowercase();
            if is_known_key(&lower) {
                continue;
            }
            let hint = super::closest(&lower, GLOBAL_KEYS.iter().copied(), 3)
                .map(|k| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            out.warning(
                &format!("{path}.Condition.{}.{key}", b.operator()),
                format!(
                    "{key} is not a global condition key kpr knows{hint}{sid}: a key no request \
                     carries never matches, and under a negated operator or IfExists always \
                     holds"
                ),
            );
        }
    }
}

/// Condition keys a call kpr's role makes itself does not carry: those of a service acting
/// for someone, and those of MFA, which a pipeline's session has none of.
const ABSENT_FROM_KPRS_CALLS: &[&str] = &[
    "aws:sourceaccount",
    "aws:sourcearn",
    "aws:sourceorgid",
    "aws:sourceorgpaths",
    "aws:sourceowner",
    "aws:principalservicename",
    "aws:principalservicenameslist",
    "aws:calledvia",
    "aws:calledviafirst",
    "aws:calledvialast",
    "aws:multifactorauthage",
];

/// The keys of the VPC endpoint a call came through (AWS's network-perimeter examples).
const VPC_ENDPOINT_KEYS: &[&str] = &[
    "aws:vpceorgid",
    "aws:vpceorgpaths",
    "aws:vpceaccount",
    "aws:sourcevpcarn",
];

/// Whether the exception `value` of `key` (`aws:PrincipalAccount` or `aws:PrincipalArn`)
/// under the negated operator `op` surely spares no principal of `account` that kpr may run
/// as: it names another account, or an ARN no role session has (`aws:PrincipalArn` of a role
/// session is its role's ARN, never the account's `root` nor an `sts` assumed-role ARN). A
/// policy variable may be anything.
fn spares_no_one_of(op: &str, key: &str, value: &str, account: &str) -> bool {
    if value.contains("${") {
        return false;
    }
    // IAM applies wildcards under ArnEquals as under ArnLike.
    let pattern = matches!(op, "stringnotlike" | "arnnotlike" | "arnnotequals");
    // A value that is neither an account id nor a pattern (`11112222333`, one digit short)
    // names nobody: the exception spares no one.
    let other = |a: &str| {
        if crate::arn::is_account_id(a) {
            a != account
        } else if pattern && a.contains(['*', '?']) {
            !wildcard_match(a, account)
        } else {
            true
        }
    };
    match key {
        "aws:principalaccount" => other(value),
        _ => {
            let fields: Vec<&str> = value.splitn(6, ':').collect();
            match fields.as_slice() {
                // No role session's ARN: an STS one, the root, a service-linked or reserved
                // (`aws:`-named) role, which kpr's cannot be.
                [_, _, service, _, _, resource]
                    if *service == "sts"
                        || *resource == "root"
                        || resource.starts_with("role/aws-service-role/")
                        || resource.starts_with("role/aws:") =>
                {
                    true
                }
                [_, _, _, _, acct, _] => other(acct),
                // Not an ARN (`arn:aws:iam:1111:role/kpr`, a colon short): nobody's, unless
                // a pattern that may match anyone.
                _ => !(pattern && value.contains(['*', '?'])),
            }
        }
    }
}

/// Condition keys that say where a call comes from, not who makes it.
const NETWORK_KEYS: &[&str] = &[
    "aws:sourcevpce",
    "aws:sourcevpc",
    "aws:sourceip",
    "aws:vpcsourceip",
];

fn resource_rules(out: &mut Findings, s: &Statement, path: &str, sid: &str, ctx: &LintContext) {
    let resources = match (s.resources(), s.not_resources()) {
        (Some(r), _) => r,
        (None, Some(_)) => {
            out.error(
                &format!("{path}.NotResource"),
                format!(
                    "a Kinesis resource policy needs \"Resource\": {}, not NotResource{sid}",
                    ctx.resource_arn
                ),
            );
            return;
        }
        (None, None) => {
            out.error(
                &format!("{path}.Resource"),
                format!(
                    "the statement has no Resource; set it to {}{sid}",
                    ctx.resource_arn
                ),
            );
            return;
        }
    };
    let rpath = format!("{path}.Resource");
    if resources.is_empty() {
        out.error(
            &rpath,
            format!("Resource is empty; set it to {}{sid}", ctx.resource_arn),
        );
    }
    for r in resources {
        if resource_matches(r, ctx.resource_arn) {
            continue;
        }
        // The ARN as written in the manifest: matching it is not enough when it names a
        // consumer without its epoch, as no live consumer ARN ends there.
        let hint = if is_consumer_without_epoch(ctx.resource_arn)
            && (r == ctx.resource_arn || wildcard_match(r, ctx.resource_arn))
        {
            format!(
                ": a consumer's ARN always ends in :<creation-epoch>, so this grant would \
                 match nothing; write \"{}:*\"",
                ctx.resource_arn
            )
        } else {
            String::new()
        };
        out.error(
            &rpath,
            format!(
                "{r:?} does not match this manifest's resource {}{sid}{hint}",
                ctx.resource_arn
            ),
        );
    }
}

/// Whether a policy Resource covers the manifest ARN. A consumer ARN in a manifest may omit its
/// `:<creation epoch>` suffix (it changes on re-registration); the live ARN the policy is put on,
/// and that IAM matches the Resource against, always has one, so then the Resource must match
/// `<arn>:<epoch>` for some epoch, and matching the bare `<arn>` is not enough.
fn resource_matches(resource: &str, arn: &str) -> bool {
    if !is_consumer_without_epoch(arn) {
        return resource == arn || wildcard_match(resource, arn);
    }
    names_one_registration(resource, arn) || matches_some_epoch(resource, arn)
}

/// Whether `resource` is `<consumer>:<digits>`: one registration of a consumer named without
/// its epoch.
pub fn names_one_registration(resource: &str, consumer: &str) -> bool {
    resource
        .strip_prefix(consumer)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|epoch| !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether the pattern matches `<arn>:<digits>` for at least one non-empty digit string. Runs
/// the pattern as an NFA over the fixed `<arn>:` part; some digit string then completes the
/// match exactly when a reachable remainder is non-empty and made only of digits, `?` and `*`.
/// (A single probe epoch would miss patterns such as `...:17*`.)
fn matches_some_epoch(pattern: &str, arn: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    // A state set as a list plus membership flags: linear in the pattern per character, so a
    // pattern of thousands of `*` costs no more than its length.
    let mut member = vec![false; p.len() + 1];
    let closure = |states: &mut Vec<usize>, member: &mut Vec<bool>| {
        let mut i = 0;
        while i < states.len() {
            let s = states[i];
            if s < p.len() && p[s] == '*' && !member[s + 1] {
                member[s + 1] = true;
                states.push(s + 1);
            }
            i += 1;
        }
    };
    let mut states = vec![0];
    member[0] = true;
    closure(&mut states, &mut member);
    for c in arn.chars().chain([':']) {
        for &s in &states {
            member[s] = false;
        }
        let mut next = Vec::new();
        for &s in &states {
            let to = match p.get(s) {
                Some('*') => s,
                Some('?') => s + 1,
                Some(&pc) if pc == c => s + 1,
                _ => continue,
            };
            if !member[to] {
                member[to] = true;
                next.push(to);
            }
        }
        closure(&mut next, &mut member);
        if next.is_empty() {
            return false;
        }
        states = next;
    }
    // digits_to_end[s]: the rest of the pattern from `s` can match a digit string.
    let mut digits_to_end = vec![true; p.len() + 1];
    for s in (0..p.len()).rev() {
        digits_to_end[s] =
            digits_to_end[s + 1] && (p[s].is_ascii_digit() || matches!(p[s], '?' | '*'));
    }
    states.iter().any(|&s| s < p.len() && digits_to_end[s])
}

fn is_consumer_without_epoch(arn: &str) -> bool {
    arn.rfind("/consumer/")
        .is_some_and(|i| !arn[i..].contains(':'))
}

/// IAM's condition operators, as [`base_operator`] reduces them (`ForAnyValue:`,
/// `ForAllValues:` and `IfExists` aside), in their documented spelling.
const OPERATORS: &[&str] = &[
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
    "NumericEquals",
    "NumericNotEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
    "DateEquals",
    "DateNotEquals",
    "DateLessThan",
    "DateLessThanEquals",
    "DateGreaterThan",
    "DateGreaterThanEquals",
    "Bool",
    "BinaryEquals",
    "IpAddress",
    "NotIpAddress",
    "ArnEquals",
    "ArnLike",
    "ArnNotEquals",
    "ArnNotLike",
    "Null",
];

/// An operator IAM does not know (`StringEqual`) is not a condition that limits nothing: in
/// a Deny, a typo would leave unblocked what the writer meant to block.
fn operator_rule(out: &mut Findings, s: &Statement, path: &str, sid: &str) {
    let Some(c) = s.condition() else { return };
    for b in c.blocks() {
        let base = base_operator(b.operator());
        if OPERATORS.iter().any(|o| o.eq_ignore_ascii_case(&base)) {
            // IAM takes IfExists on every operator but Null, which already asks whether the
            // key is there.
            if base == "null" && b.operator().to_ascii_lowercase().ends_with("ifexists") {
                out.error(
                    &format!("{path}.Condition.{}", b.operator()),
                    format!(
                        "{} is not an IAM condition operator{sid}: Null takes no IfExists, as \
                         it already asks whether the key is present; write Null",
                        b.operator()
                    ),
                );
            }
            continue;
        }
        let hint = super::closest(&base, OPERATORS.iter().copied(), 3)
            .map(|o| format!(" (did you mean {o}?)"))
            .unwrap_or_default();
        out.error(
            &format!("{path}.Condition.{}", b.operator()),
            format!(
                "{} is not an IAM condition operator{hint}{sid}; one of StringEquals, \
                 StringLike, ArnLike, IpAddress, Bool, Null... (with ForAnyValue:, \
                 ForAllValues: or IfExists where they apply)",
                b.operator()
            ),
        );
    }
}

/// `Bool` and `Null` match `true` or `false` only: any other value never matches, so a Deny so
/// written never denies. kpr reads YAML 1.2, where `no`, `off` and `yes` are strings; a reader
/// of YAML 1.1 (PyYAML, yamllint, a reviewer) takes them for booleans, so the manifest reads
/// as a working guard while the policy sent holds `"no"`.
fn boolean_condition_rule(out: &mut Findings, s: &Statement, path: &str, sid: &str) {
    for v in condition_values(s) {
        if !matches!(v.base_operator().as_str(), "bool" | "null") {
            continue;
        }
        let text = v.text();
        if text.eq_ignore_ascii_case("true") || text.eq_ignore_ascii_case("false") {
            continue;
        }
        let yaml_1_1 = match text.to_ascii_lowercase().as_str() {
            "yes" | "y" | "on" => Some(true),
            "no" | "n" | "off" => Some(false),
            _ => None,
        };
        let hint = match yaml_1_1 {
            Some(meant) => format!(
                "; YAML 1.1 reads {text} as {meant}, but kpr reads YAML 1.2, where it is the \
                 string {text:?}: write {meant}"
            ),
            None => String::new(),
        };
        out.error(
            &v.path(path),
            format!(
                "{} takes true or false; {text:?} never matches{sid}{hint}",
                v.operator()
            ),
        );
    }
}

/// A value a typed operator cannot read (`NumericLessThan "ten"`, `IpAddress "10.1.2.3/33"`,
/// `DateGreaterThan "01/02/2020"`) compares with nothing: the condition says something other
/// than its writer meant, and IAM's own validator calls it an error. Values holding a policy
/// variable are read only when a request comes, so they are left alone.
fn typed_value_rule(out: &mut Findings, s: &Statement, path: &str, sid: &str) {
    for v in condition_values(s) {
        let base = v.base_operator();
        let (reads, takes): (fn(&str) -> bool, &str) = if base.starts_with("numeric") {
            (is_number, "a number (42 or 4.2)")
        } else if base.starts_with("date") {
            (
                is_date,
                "an ISO 8601 date (2026-01-31 or 2026-01-31T12:00:00Z) or seconds since 1970",
            )
        } else if base == "ipaddress" || base == "notipaddress" {
            (
                is_address_range,
                "an IP address or CIDR block (203.0.113.0/24)",
            )
        } else {
            continue;
        };
        let text = v.text();
        if text.contains("${") || reads(&text) {
            continue;
        }
        out.error(
            &v.path(path),
            format!(
                "{} takes {takes}; IAM cannot compare {} with {text:?}{sid}",
                v.operator(),
                v.key
            ),
        );
    }
}

/// `StringEquals` and `StringNotEquals` read `*` and `?` as themselves: a Deny of
/// `StringEquals aws:PrincipalArn ".../role/sandbox-*"` applies to no sandbox role, and an
/// exception under `StringNotEquals` spares no one. No caller's ARN, account, org or network
/// holds either character, so on those keys it is never what was meant: an error. On another
/// key it may be (a `?` in `aws:Referer`), so a warning.
fn literal_wildcard_rule(out: &mut Findings, s: &Statement, path: &str, sid: &str) {
    for v in condition_values(s) {
        let negated = match v.base_operator().as_str() {
            "stringequals" | "stringequalsignorecase" => false,
            "stringnotequals" | "stringnotequalsignorecase" => true,
            _ => continue,
        };
        let value = v.text();
        if !outside_variables(&value).contains(['*', '?']) {
            continue;
        }
        let what = match (negated, s.effect()) {
            (false, Effect::Deny) => "this Deny applies to none of the callers it names",
            (false, Effect::Allow) => "this grants to none of the callers it names",
            (true, Effect::Deny) => "this Deny spares none of the callers it excepts",
            (true, Effect::Allow) => "this grants also to the callers it excepts",
        };
        let like = if negated {
            "StringNotLike (ArnNotLike for an ARN)"
        } else {
            "StringLike (ArnLike for an ARN)"
        };
        let message = format!(
            "{} reads {value:?} as plain text, not as a pattern: {what}{sid}; use {like}",
            v.operator()
        );
        if CALLER_KEYS.contains(&v.key.to_ascii_lowercase().as_str()) {
            out.error(&v.path(path), message);
        } else {
            out.warning(&v.path(path), message);
        }
    }
}

/// One value of a statement's Condition, and where it stands: what the rules about values
/// walk, each asking its operator first and the value's text only when it applies.
struct ValueAt<'s> {
    block: &'s super::ConditionBlock,
    key: &'s str,
    value: &'s super::ConditionValue,
    /// The values of its key, and its place among them.
    of: usize,
    i: usize,
}

impl ValueAt<'_> {
    fn operator(&self) -> &str {
        self.block.operator()
    }

    fn base_operator(&self) -> String {
        base_operator(self.block.operator())
    }

    fn text(&self) -> String {
        self.value.as_canonical_string()
    }

    /// The key itself for its only value (it may be written without a list), the list item
    /// otherwise, so that a finding names the item's own line.
    fn path(&self, statement: &str) -> String {
        let (operator, key) = (self.operator(), self.key);
        if self.of == 1 {
            format!("{statement}.Condition.{operator}.{key}")
        } else {
            format!("{statement}.Condition.{operator}.{key}[{}]", self.i)
        }
    }
}

/// Every value of `s`'s Condition, block by block and key by key.
fn condition_values(s: &Statement) -> impl Iterator<Item = ValueAt<'_>> {
    s.condition()
        .into_iter()
        .flat_map(|c| c.blocks())
        .flat_map(|block| {
            block.entries().iter().flat_map(move |(key, values)| {
                values.iter().enumerate().map(move |(i, value)| ValueAt {
                    block,
                    key,
                    value,
                    of: values.len(),
                    i,
                })
            })
        })
}

/// `value` without its policy variables (`${aws:username}`, and the escapes `${*}`, `${?}`,
/// `${$}`, which stand for the character itself): what a `*` or `?` left is written as text.
fn outside_variables(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        match rest[start..].find('}') {
            Some(end) => rest = &rest[start + end + 1..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A condition key given no values (`aws:PrincipalArn: []`): what IAM makes of it is not
/// documented, and whoever wrote it meant some values or none of the key. IAM's own validator
/// warns of it too.
fn empty_values_rule(out: &mut Findings, s: &Statement, path: &str, sid: &str) {
    let Some(c) = s.condition() else { return };
    for b in c.blocks() {
        for (key, values) in b.entries() {
            if values.is_empty() {
                out.warning(
                    &format!("{path}.Condition.{}.{key}", b.operator()),
                    format!(
                        "{key} has no values under {}{sid}: IAM does not document what such an \
                         entry matches; list the values meant, or remove the key",
                        b.operator()
                    ),
                );
            }
        }
    }
}

/// An integer or decimal, as IAM's numeric operators read them.
fn is_number(value: &str) -> bool {
    let digits = value.strip_prefix(['-', '+']).unwrap_or(value);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !(whole.is_empty() && fraction.is_empty())
        && all_digits(whole)
        && all_digits(fraction)
        && (!digits.ends_with('.') || !whole.is_empty())
}

/// Seconds since 1970, or a date in the W3C profile of ISO 8601 that IAM's date operators
/// take: `2026-01`, `2026-01-31`, `2026-01-31T12:00Z`, `2026-01-31T12:00:00.5+02:00` (a bare
/// `2026` is all digits: seconds since 1970).
fn is_date(value: &str) -> bool {
    (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())) || w3c_date(value).is_some()
}

/// A date in the W3C profile of ISO 8601 (see [`is_date`]), read: its year, its local time as
/// RFC 3339 writes one without a zone (the first day of a month alone, midnight of a day
/// alone), and its zone's offset east of UTC, in seconds. The one reader of these dates, for
/// whether a value is one and for the instant it names.
fn w3c_date(value: &str) -> Option<(u32, String, i64)> {
    let (date, time) = value
        .split_once(['T', 't'])
        .map_or((value, None), |(d, t)| (d, Some(t)));
    let number = |s: &str, len: usize, range: std::ops::RangeInclusive<u32>| {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
            .filter(|n| range.contains(n))
    };
    let parts: Vec<&str> = date.split('-').collect();
    let (y, m, d) = match parts[..] {
        [y] => (number(y, 4, 0..=9999)?, 1, 1),
        [y, m] => (number(y, 4, 0..=9999)?, number(m, 2, 1..=12)?, 1),
        [y, m, d] => (
            number(y, 4, 0..=9999)?,
            number(m, 2, 1..=12)?,
            number(d, 2, 1..=31)?,
        ),
        _ => return None,
    };
    let day = format!("{y:04}-{m:02}-{d:02}");
    let Some(time) = time else {
        return Some((y, format!("{day}T00:00:00"), 0));
    };
    if parts.len() != 3 {
        return None;
    }
    let (clock, zone) = match time.find(['Z', 'z', '+', '-']) {
        Some(i) => time.split_at(i),
        None => (time, ""),
    };
    let east = match zone {
        "" | "Z" | "z" => 0,
        _ => {
            let offset = &zone[1..];
            let (h, m) = offset.split_once(':').unwrap_or(if offset.len() == 4 {
                offset.split_at(2)
            } else {
                (offset, "00")
            });
            let secs =
                i64::from(number(h, 2, 0..=23)?) * 3600 + i64::from(number(m, 2, 0..=59)?) * 60;
            if zone.starts_with('-') { -secs } else { secs }
        }
    };
    let (hms, fraction) = clock
        .split_once('.')
        .map_or((clock, None), |(c, f)| (c, Some(f)));
    let fields: Vec<&str> = hms.split(':').collect();
    let (h, mi, sec) = match fields[..] {
        [h, mi] => (number(h, 2, 0..=23)?, number(mi, 2, 0..=59)?, 0),
        [h, mi, sec] => (
            number(h, 2, 0..=23)?,
            number(mi, 2, 0..=59)?,
            number(sec, 2, 0..=60)?,
        ),
        _ => return None,
    };
    // A fraction of a second needs the seconds.
    if fraction.is_some_and(|f| {
        fields.len() != 3 || f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())
    }) {
        return None;
    }
    let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
    Some((y, format!("{day}T{h:02}:{mi:02}:{sec:02}{fraction}"), east))
}

fn action_rules(out: &mut Findings, s: &Statement, path: &str, sid: &str) {
    let lists = [("Action", s.actions()), ("NotAction", s.not_actions())];
    if lists.iter().all(|(_, l)| l.is_none()) {
        out.error(
            &format!("{path}.Action"),
            format!("the statement has no Action{sid}"),
        );
        return;
    }
    for (key, list) in lists {
        let Some(list) = list else { continue };
        let apath = format!("{path}.{key}");
        if list.is_empty() {
            out.error(&apath, format!("{key} is empty{sid}"));
        }
        for action in list {
            match split_action(action) {
                Some((prefix, name)) if prefix.eq_ignore_ascii_case(KINESIS_PREFIX) => {
                    if name.contains(['*', '?']) {
                        if !pattern_matches_known_action(action) {
                            out.warning(
                                &apath,
                                format!("{action:?} matches no known Kinesis action{sid}"),
                            );
                        }
                    } else if official_name(name).is_none() {
                        let hint = closest_known(name)
                            .map(|c| format!(" (did you mean \"kinesis:{c}\"?)"))
                            .unwrap_or_default();
                        out.warning(
                            &apath,
                            format!("{action:?} is not a known Kinesis action{hint}{sid}"),
                        );
                    }
                }
                _ if action == "*" => out.error(
                    &apath,
                    format!(
                        "\"*\" means every action of every service; list kinesis: actions \
                         (or \"kinesis:*\"){sid}"
                    ),
                ),
                _ => out.error(
                    &apath,
                    format!(
                        "{action:?} is not a Kinesis action; a Kinesis resource policy can \
                         only grant kinesis: actions{sid}"
                    ),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const STREAM: &str = "arn:aws:kinesis:us-east-1:111122223333:stream/orders";
    const CONSUMER: &str = "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/app";

    fn ctx(arn: &str) -> LintContext<'_> {
        LintContext {
            resource_arn: arn,
            allow_public: false,
            max_size: 20_480,
            size: 100,
        }
    }

    /// A valid one-statement policy for STREAM, with fields overridden by `extra` (null removes).
    fn policy(extra: Value) -> PolicyDocument {
        let mut s = json!({
            "Sid": "Read",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::444455556666:root"},
            "Action": ["kinesis:GetRecords", "kinesis:GetShardIterator"],
            "Resource": STREAM
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                s.as_object_mut().unwrap().remove(k);
            } else {
                s[k] = v.clone();
            }
        }
        PolicyDocument::from_value(&json!({"Version": "2012-10-17", "Statement": [s]})).unwrap()
    }

    fn run(doc: &PolicyDocument, c: &LintContext) -> Vec<Finding> {
        lint(doc, c)
    }

    fn errors(f: &[Finding]) -> Vec<&Finding> {
        f.iter().filter(|f| f.severity == Severity::Error).collect()
    }

    #[track_caller]
    fn one_finding(f: &[Finding], severity: Severity, path: &str, needle: &str) {
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].severity, severity, "{f:#?}");
        assert_eq!(f[0].path, path, "{f:#?}");
        assert!(f[0].message.contains(needle), "{f:#?}");
    }

    #[test]
    fn valid_policy_is_clean() {
        assert_eq!(run(&policy(json!({})), &ctx(STREAM)), []);
    }

    #[test]
    fn version_rules() {
        let s = json!({"Effect": "Allow", "Principal": {"AWS": "444455556666"}, "Action": "kinesis:GetRecords", "Resource": STREAM});
        let with = |v: Option<&str>| {
            let mut d = json!({"Statement": [s.clone()]});
            if let Some(v) = v {
                d["Version"] = json!(v);
            }
            run(&PolicyDocument::from_value(&d).unwrap(), &ctx(STREAM))
        };
        one_finding(&with(None), Severity::Error, "Version", "missing");
        one_finding(
            &with(Some("2012-10-18")),
            Severity::Error,
            "Version",
            "\"2012-10-18\"",
        );
        assert_eq!(with(Some("2012-10-17")), []);
        assert_eq!(with(Some("2008-10-17")), []);
    }

    #[test]
    fn size_rule() {
        // Over the limit, nothing else is judged: a large policy's statements could cost
        // seconds. This one has no Principal, which is not said.
        let doc = policy(json!({"Principal": null}));
        let over = LintContext {
            size: 20_481,
            ..ctx(STREAM)
        };
        let f = run(&doc, &over);
        one_finding(&f, Severity::Error, "size", "20481 bytes");
        assert!(f[0].message.contains("20480"), "{f:?}");
        let at = LintContext {
            size: 20_480,
            ..ctx(STREAM)
        };
        one_finding(
            &run(&doc, &at),
            Severity::Error,
            "Statement[0].Principal",
            "no Principal",
        );
    }

    #[test]
    fn principal_required_but_not_principal_allowed() {
        let f = run(&policy(json!({"Principal": null})), &ctx(STREAM));
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].Principal",
            "no Principal",
        );
        assert!(f[0].message.contains("Sid \"Read\""), "{f:?}");
        let f = run(&policy(json!({"Principal": {"AWS": []}})), &ctx(STREAM));
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].Principal",
            "empty Principal",
        );
        let d = policy(
            json!({"Principal": null, "Effect": "Deny", "NotPrincipal": {"AWS": "444455556666"}}),
        );
        assert_eq!(run(&d, &ctx(STREAM)), []);
        // Told as what it is, at its own key: not a missing Principal.
        let f = run(
            &policy(json!({"Principal": null, "NotPrincipal": {}})),
            &ctx(STREAM),
        );
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].NotPrincipal",
            "an empty NotPrincipal, which excepts no one (in an Allow, everyone)",
        );
    }

    #[test]
    fn a_wildcard_in_part_of_a_principal_is_refused() {
        for id in [
            "arn:aws:iam::*:root",
            "arn:aws:iam::111122223333:role/*",
            "1111222233?3",
        ] {
            for key in ["Principal", "NotPrincipal"] {
                let mut extra = json!({"Principal": null, "Effect": "Deny"});
                extra[key] = json!({"AWS": ["444455556666", id]});
                let f = run(&policy(extra), &ctx(STREAM));
                one_finding(
                    &f,
                    Severity::Error,
                    &format!("Statement[0].{key}.AWS"),
                    &format!("{id:?} holds a wildcard"),
                );
            }
        }
        let whole = json!({"Principal": {"AWS": "*"}, "Effect": "Deny"});
        assert_eq!(run(&policy(whole), &ctx(STREAM)), []);
    }

    #[test]
    fn an_aws_principal_of_no_known_shape_is_refused() {
        for id in [
            "arn:aws:iam:444455556666:role/x",
            "44445555666",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::444455556666:",
            "reader",
            "arn:aws:iam::444455556666:group/devs",
            "arn:aws:sts::444455556666:role/x",
            "arn:aws:iam::444455556666:saml-provider/okta",
            "arn:aws:iam::444455556666:role/",
        ] {
            let extra = json!({"Principal": {"AWS": ["444455556666", id]}, "Effect": "Deny"});
            let f = run(&policy(extra), &ctx(STREAM));
            one_finding(
                &f,
                Severity::Error,
                "Statement[0].Principal.AWS",
                &format!("{id:?} is not an AWS principal"),
            );
        }
        let deleted = json!({"Principal": {"AWS": "AROAEXAMPLEID1234567"}, "Effect": "Deny"});
        let f = run(&policy(deleted), &ctx(STREAM));
        one_finding(
            &f,
            Severity::Warning,
            "Statement[0].Principal.AWS",
            "unique id",
        );
        for good in [
            "arn:aws:iam::444455556666:root",
            "arn:aws:iam::444455556666:role/path/reader",
            "arn:aws:iam::444455556666:user/u",
            "arn:aws:sts::444455556666:assumed-role/reader/session",
            "444455556666",
        ] {
            let extra = json!({"Principal": {"AWS": good}, "Effect": "Deny"});
            assert_eq!(run(&policy(extra), &ctx(STREAM)), [], "{good}");
        }
    }

    #[test]
    fn principals_of_another_partition_are_refused() {
        for (key, effect) in [("Principal", "Allow"), ("NotPrincipal", "Deny")] {
            let mut extra = json!({"Principal": null, "Effect": effect});
            extra[key] = json!({"AWS": ["444455556666", "arn:aws-cn:iam::444455556666:root"]});
            let f = run(&policy(extra), &ctx(STREAM));
            one_finding(
                &f,
                Severity::Error,
                &format!("Statement[0].{key}.AWS"),
                "\"arn:aws-cn:iam::444455556666:root\" is in partition aws-cn, the resource in aws",
            );
        }
        let own = json!({"Principal": {"AWS": "arn:aws:iam::444455556666:role/r"}});
        assert_eq!(run(&policy(own), &ctx(STREAM)), []);
        let china = "arn:aws-cn:kinesis:cn-north-1:111122223333:stream/orders";
        let doc = PolicyDocument::from_value(&json!({"Version": "2012-10-17", "Statement": {
            "Effect": "Allow", "Principal": {"AWS": "arn:aws-cn:iam::444455556666:root"},
            "Action": "kinesis:GetRecords", "Resource": china}}))
        .unwrap();
        assert_eq!(run(&doc, &ctx(china)), []);
    }

    #[test]
    fn resource_required() {
        let f = run(&policy(json!({"Resource": null})), &ctx(STREAM));
        one_finding(&f, Severity::Error, "Statement[0].Resource", "no Resource");
        let f = run(
            &policy(json!({"Resource": null, "NotResource": "x"})),
            &ctx(STREAM),
        );
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].NotResource",
            "needs \"Resource\"",
        );
        let f = run(&policy(json!({"Resource": []})), &ctx(STREAM));
        one_finding(&f, Severity::Error, "Statement[0].Resource", "empty");
    }

    #[test]
    fn resource_must_match_the_manifest_arn() {
        for ok in [
            STREAM,
            "arn:aws:kinesis:us-east-1:111122223333:stream/*",
            "arn:aws:kinesis:*:111122223333:stream/ord?rs",
            "*",
        ] {
            assert_eq!(
                run(&policy(json!({"Resource": ok})), &ctx(STREAM)),
                [],
                "{ok}"
            );
        }
        for bad in [
            "arn:aws:kinesis:us-east-1:111122223333:stream/other",
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders2",
            "arn:aws:kinesis:us-east-1:111122223333:stream/Orders",
            "arn:aws:kinesis:us-east-1:111122223333:stream/x*",
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders:123",
        ] {
            let f = run(&policy(json!({"Resource": bad})), &ctx(STREAM));
            one_finding(&f, Severity::Error, "Statement[0].Resource", bad);
        }
        // Every listed resource is checked.
        let f = run(
            &policy(json!({"Resource": [STREAM, "arn:x"]})),
            &ctx(STREAM),
        );
        one_finding(&f, Severity::Error, "Statement[0].Resource", "\"arn:x\"");
        // A value is quoted escaped: a line break in it cannot forge a line of kpr's output,
        // nor a zero-width space hide.
        for odd in [
            format!("{STREAM}\nm.yaml:1: error: forged"),
            format!("{STREAM}\u{200b}"),
        ] {
            let f = run(&policy(json!({"Resource": odd})), &ctx(STREAM));
            assert!(!f[0].message.contains(['\n', '\u{200b}']), "{f:?}");
        }
    }

    #[test]
    fn consumer_arn_without_epoch_accepts_any_epoch() {
        let c = ctx(CONSUMER);
        for ok in [
            format!("{CONSUMER}:1700000000"),
            format!("{CONSUMER}:*"),
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/*".to_string(),
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/app:17*".to_string(),
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/app*".to_string(),
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/app:1?00000000"
                .to_string(),
            "arn:aws:kinesis:*:111122223333:stream/*/consumer/app:*".to_string(),
        ] {
            assert_eq!(run(&policy(json!({"Resource": ok})), &c), [], "{ok}");
        }
        for bad in [
            // The live ARN always has an epoch: these match no live consumer.
            CONSUMER.to_string(),
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/ap?".to_string(),
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/a?p".to_string(),
            format!("{CONSUMER}:"),
            format!("{CONSUMER}:12a"),
            format!("{CONSUMER}2:1700000000"),
            STREAM.to_string(),
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/app:x*".to_string(),
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/app:".to_string(),
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/app:1x".to_string(),
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/ap?".to_string() + ":",
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/apps*".to_string(),
        ] {
            let f = run(&policy(json!({"Resource": bad})), &c);
            one_finding(
                &f,
                Severity::Error,
                "Statement[0].Resource",
                "does not match",
            );
        }
        let f = run(&policy(json!({"Resource": CONSUMER})), &c);
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].Resource",
            &format!("match nothing; write \"{CONSUMER}:*\""),
        );
        // With the epoch in the manifest, only that epoch matches.
        let with_epoch = format!("{CONSUMER}:1700000000");
        let c = ctx(&with_epoch);
        assert_eq!(run(&policy(json!({"Resource": with_epoch})), &c), []);
        let f = run(
            &policy(json!({"Resource": format!("{CONSUMER}:1700000001")})),
            &c,
        );
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].Resource",
            "does not match",
        );
        let f = run(&policy(json!({"Resource": CONSUMER})), &c);
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].Resource",
            "does not match",
        );
    }

    proptest::proptest! {
        /// Brute force over digit strings: the NFA answer equals "some epoch matches".
        #[test]
        fn some_epoch_matcher_agrees_with_brute_force(pattern in "[ab:12*?]{0,6}") {
            let arn = "ab";
            let mut epochs = vec![String::new()];
            let mut brute = false;
            for _ in 0..=pattern.len() {
                epochs = epochs
                    .iter()
                    .flat_map(|e| ["1", "2", "3"].map(|d| format!("{e}{d}")))
                    .collect();
                brute |= epochs.iter().any(|e| wildcard_match(&pattern, &format!("{arn}:{e}")));
            }
            proptest::prop_assert_eq!(matches_some_epoch(&pattern, arn), brute);
        }
    }

    #[test]
    fn actions_must_be_kinesis() {
        let f = run(
            &policy(json!({"Action": ["kinesis:GetRecords", "s3:GetObject"]})),
            &ctx(STREAM),
        );
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].Action",
            "\"s3:GetObject\" is not a Kinesis action",
        );
        let f = run(&policy(json!({"Action": "*"})), &ctx(STREAM));
        one_finding(&f, Severity::Error, "Statement[0].Action", "every action");
        let f = run(&policy(json!({"Action": "GetRecords"})), &ctx(STREAM));
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].Action",
            "not a Kinesis action",
        );
        let f = run(
            &policy(json!({"Action": null, "NotAction": "sqs:*"})),
            &ctx(STREAM),
        );
        one_finding(&f, Severity::Error, "Statement[0].NotAction", "\"sqs:*\"");
        let f = run(&policy(json!({"Action": null})), &ctx(STREAM));
        one_finding(&f, Severity::Error, "Statement[0].Action", "no Action");
        let f = run(&policy(json!({"Action": []})), &ctx(STREAM));
        one_finding(&f, Severity::Error, "Statement[0].Action", "empty");
        for ok in [
            json!("KINESIS:getrecords"),
            json!("kinesis:*"),
            json!(["kinesis:Get*", "kinesis:List*"]),
        ] {
            assert_eq!(
                run(&policy(json!({"Action": ok})), &ctx(STREAM)),
                [],
                "{ok}"
            );
        }
        let d =
            policy(json!({"Action": null, "NotAction": "kinesis:DeleteStream", "Effect": "Deny"}));
        assert_eq!(run(&d, &ctx(STREAM)), []);
    }

    #[test]
    fn condition_operators_are_iams() {
        let deny = |c: Value| {
            run(
                &policy(
                    json!({"Effect": "Deny", "Principal": {"AWS": "444455556666"},
                    "Condition": c}),
                ),
                &ctx(STREAM),
            )
        };
        let f = deny(json!({"StringEqual": {"aws:SourceVpce": "vpce-1"}}));
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].Condition.StringEqual",
            "StringEqual is not an IAM condition operator (did you mean StringEquals?)",
        );
        let f = deny(json!({"ForAnyValues:StringLike": {"aws:PrincipalOrgPaths": "o-1/*"}}));
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].Condition.ForAnyValues:StringLike",
            "is not an IAM condition operator",
        );
        for ok in [
            "ForAnyValue:StringLike",
            "ForAllValues:StringEquals",
            "StringNotEqualsIfExists",
            "arnlike",
        ] {
            assert_eq!(
                deny(json!({ok: {"aws:PrincipalArn": "arn:aws:iam::1:role/x"}})),
                [],
                "{ok}"
            );
        }
    }

    /// A misspelt global key is in no request: warned of, with the key meant; and in a Deny
    /// to everyone under a negated operator, it holds for kpr too (a lockout).
    #[test]
    fn an_unknown_global_key_is_warned_of() {
        let with = |effect: &str, principal: Value, c: Value| {
            run(
                &policy(
                    json!({"Effect": effect, "Principal": principal, "Condition": c,
                    "Action": "kinesis:*"}),
                ),
                &ctx(STREAM),
            )
        };
        let f = with(
            "Deny",
            json!({"AWS": "444455556666"}),
            json!({"StringEquals": {"aws:PrincipleAccount": "444455556666"}}),
        );
        one_finding(
            &f,
            Severity::Warning,
            "Statement[0].Condition.StringEquals.aws:PrincipleAccount",
            "is not a global condition key kpr knows (did you mean aws:PrincipalAccount?)",
        );
        for known in [
            "aws:PrincipalTag/team",
            "aws:sourcevpce",
            "kinesis:anything",
            "aws:ViaAWSMCPService",
        ] {
            let f = with(
                "Deny",
                json!({"AWS": "444455556666"}),
                json!({"StringEquals": {known: "x"}}),
            );
            assert_eq!(f, [], "{known}");
        }
        let f = with(
            "Deny",
            json!("*"),
            json!({"ArnNotEquals": {"aws:PrincipleArn": "arn:aws:iam::111122223333:role/kpr"}}),
        );
        assert!(
            f.iter()
                .any(|f| f.message.contains("kpr can no longer read")),
            "{f:?}"
        );
    }

    #[test]
    fn bool_and_null_conditions_take_true_or_false_only() {
        let with = |c: Value| run(&policy(json!({"Condition": c})), &ctx(STREAM));
        let f = with(json!({"Bool": {"aws:SecureTransport": "no"}}));
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].Condition.Bool.aws:SecureTransport",
            "YAML 1.1 reads no as false",
        );
        let f = with(json!({"ForAnyValue:Null": {"aws:SourceVpc": [true, "maybe"]}}));
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].Condition.ForAnyValue:Null.aws:SourceVpc[1]",
            "\"maybe\" never matches",
        );
        for ok in [
            json!({"Bool": {"aws:SecureTransport": false}}),
            json!({"bool": {"aws:SecureTransport": ["true", "FALSE"]}}),
            json!({"Null": {"aws:SourceVpc": "true"}}),
            json!({"StringEquals": {"aws:PrincipalTag/x": "no"}}),
        ] {
            assert_eq!(with(ok.clone()), [], "{ok}");
        }
    }

    #[test]
    fn typed_operators_take_values_they_can_read() {
        let with = |c: Value| run(&policy(json!({"Condition": c})), &ctx(STREAM));
        for (bad, key, said) in [
            (
                json!({"NumericLessThan": {"kinesis:Limit": "ten"}}),
                "NumericLessThan.kinesis:Limit",
                "\"ten\"",
            ),
            (
                json!({"IpAddress": {"aws:SourceIp": ["203.0.113.0/24", "10.1.2.3/33"]}}),
                "IpAddress.aws:SourceIp[1]",
                "\"10.1.2.3/33\"",
            ),
            (
                json!({"NotIpAddressIfExists": {"aws:SourceIp": "10.0.0.0/8 "}}),
                "NotIpAddressIfExists.aws:SourceIp",
                "\"10.0.0.0/8 \"",
            ),
            (
                json!({"DateGreaterThan": {"aws:CurrentTime": "01/02/2026"}}),
                "DateGreaterThan.aws:CurrentTime",
                "ISO 8601",
            ),
            (
                json!({"DateLessThan": {"aws:CurrentTime": "2026-13-01T00:00:00Z"}}),
                "DateLessThan.aws:CurrentTime",
                "\"2026-13-01T00:00:00Z\"",
            ),
            (
                json!({"DateLessThan": {"aws:CurrentTime": "2026-01-01T25:00Z"}}),
                "DateLessThan.aws:CurrentTime",
                "\"2026-01-01T25:00Z\"",
            ),
        ] {
            let f = with(bad.clone());
            one_finding(
                &f,
                Severity::Error,
                &format!("Statement[0].Condition.{key}"),
                said,
            );
        }
        for ok in [
            json!({"NumericLessThanEquals": {"aws:MultiFactorAuthAge": [3600, "-1", "0.5", "+2"]}}),
            json!({"IpAddress": {"aws:SourceIp": ["203.0.113.7", "2001:db8::/32", "10.1.2.3/8"]}}),
            json!({"NumericGreaterThan": {"aws:EpochTime": "${aws:TokenIssueTime}"}}),
            json!({"DateLessThan": {"aws:CurrentTime": [
                "2999", "2999-01", "2999-01-31", "2999-01-31T12:00Z", "2999-01-31T12:00:00Z",
                "2999-01-31T12:00:00.123+02:00", "2999-01-31T12:00:00-0530", "32503680000",
            ]}}),
            json!({"StringEquals": {"aws:PrincipalTag/limit": "ten"}}),
        ] {
            assert_eq!(with(ok.clone()), [], "{ok}");
        }
    }

    #[test]
    fn a_pattern_under_string_equals_is_plain_text() {
        let sandbox = "arn:aws:iam::444455556666:role/sandbox-*";
        let with = |effect: &str, c: Value| {
            run(
                &policy(
                    json!({"Effect": effect, "Principal": {"AWS": "444455556666"},
                               "Condition": c}),
                ),
                &ctx(STREAM),
            )
        };
        for (effect, c, severity, said) in [
            (
                "Deny",
                json!({"StringEquals": {"aws:PrincipalArn": sandbox}}),
                Severity::Error,
                "this Deny applies to none of the callers it names",
            ),
            (
                "Allow",
                json!({"ForAnyValue:StringEqualsIgnoreCase": {"aws:PrincipalOrgPaths": "o-a1b2c3d4e5/r-ab12/ou-?*"}}),
                Severity::Error,
                "this grants to none of the callers it names",
            ),
            (
                "Allow",
                json!({"StringNotEquals": {"aws:PrincipalArn": sandbox}}),
                Severity::Error,
                "this grants also to the callers it excepts (Sid \"Read\"); use StringNotLike",
            ),
            (
                "Deny",
                json!({"StringEquals": {"aws:Referer": "https://example.com/*"}}),
                Severity::Warning,
                "reads \"https://example.com/*\" as plain text",
            ),
        ] {
            let key = c.as_object().unwrap().iter().next().unwrap();
            let path = format!(
                "Statement[0].Condition.{}.{}",
                key.0,
                key.1.as_object().unwrap().keys().next().unwrap()
            );
            one_finding(&with(effect, c.clone()), severity, &path, said);
        }
        for ok in [
            json!({"StringLike": {"aws:PrincipalArn": sandbox}}),
            json!({"ArnEquals": {"aws:PrincipalArn": sandbox}}),
            json!({"StringEquals": {"aws:PrincipalArn": "arn:aws:iam::444455556666:role/${aws:PrincipalTag/team}"}}),
            // The escape for a literal `*`: written as meant.
            json!({"StringEquals": {"aws:PrincipalArn": "arn:aws:iam::444455556666:role/a${*}"}}),
        ] {
            assert_eq!(with("Deny", ok.clone()), [], "{ok}");
        }
        // Each pattern of a list, at its own item.
        let f = with(
            "Deny",
            json!({"StringEquals": {"aws:PrincipalArn": [
                "arn:aws:iam::444455556666:role/admin-*",
                "arn:aws:iam::444455556666:role/ops",
                "arn:aws:iam::444455556666:role/break?glass",
            ]}}),
        );
        let at: Vec<&str> = f.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            at,
            [
                "Statement[0].Condition.StringEquals.aws:PrincipalArn[0]",
                "Statement[0].Condition.StringEquals.aws:PrincipalArn[2]"
            ],
            "{f:?}"
        );
        // A `*` beside a variable is still text.
        let f = with(
            "Deny",
            json!({"StringEquals": {"aws:PrincipalArn": "arn:aws:iam::444455556666:role/${aws:PrincipalTag/team}-*"}}),
        );
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].Condition.StringEquals.aws:PrincipalArn",
            "as plain text",
        );
    }

    #[test]
    fn a_condition_key_without_values_is_a_warning() {
        let f = run(
            &policy(
                json!({"Effect": "Deny", "Principal": {"AWS": "444455556666"},
                           "Condition": {"ArnLike": {"aws:PrincipalArn": []}}}),
            ),
            &ctx(STREAM),
        );
        one_finding(
            &f,
            Severity::Warning,
            "Statement[0].Condition.ArnLike.aws:PrincipalArn",
            "aws:PrincipalArn has no values under ArnLike",
        );
    }

    #[test]
    fn a_date_is_read_with_its_offset() {
        let utc = instant_of("2026-01-01T00:00:00Z").unwrap();
        for same in [
            "2026-01-01T01:00:00+01:00",
            "2025-12-31T19:00:00-05:00",
            "2026-01-01T05:30:00+0530",
            "2026-01-01T00:00Z",
            "2026-01-01",
            "2026-01",
            "1767225600",
        ] {
            assert_eq!(instant_of(same), Some(utc), "{same}");
        }
        assert_eq!(instant_of("01/01/2026"), None);
        // A fraction of a second needs the seconds: not a date, nor an instant.
        assert!(!is_date("2026-01-31T12:00.0Z") && is_date("2026-01-31T12:00:00.0Z"));
        // Past what a clock can hold: the end of time, and no panic.
        let far = instant_of("18446744073709551615").unwrap();
        assert_eq!(instant_of("99999999999999999999999"), Some(far));
        assert!(far > instant_of("32503680000").unwrap());
        assert_eq!(instant_of("1960-01-01"), Some(std::time::UNIX_EPOCH));
    }

    #[test]
    fn null_takes_no_if_exists() {
        let f = run(
            &policy(json!({"Condition": {"NullIfExists": {"aws:SourceVpc": "true"}}})),
            &ctx(STREAM),
        );
        one_finding(
            &f,
            Severity::Error,
            "Statement[0].Condition.NullIfExists",
            "Null takes no IfExists",
        );
    }

    #[test]
    fn unknown_kinesis_actions_warn() {
        let f = run(
            &policy(json!({"Action": "kinesis:GetRecord"})),
            &ctx(STREAM),
        );
        one_finding(
            &f,
            Severity::Warning,
            "Statement[0].Action",
            "did you mean \"kinesis:GetRecords\"",
        );
        let f = run(&policy(json!({"Action": "kinesis:Fetch*"})), &ctx(STREAM));
        one_finding(
            &f,
            Severity::Warning,
            "Statement[0].Action",
            "matches no known",
        );
        assert!(errors(&f).is_empty());
    }

    #[test]
    fn a_condition_that_does_not_limit_the_caller_is_an_error() {
        let public_ok = LintContext {
            allow_public: true,
            ..ctx(STREAM)
        };
        for (principal, key) in [
            (json!("*"), "Principal"),
            (json!({"AWS": "*"}), "Principal"),
            (json!(null), "NotPrincipal"),
        ] {
            let with = |condition: Value| {
                let mut fields = json!({"Principal": principal, "Condition": condition});
                if key == "NotPrincipal" {
                    fields["NotPrincipal"] = json!({"AWS": "444455556666"});
                }
                policy(fields)
            };
            for weak in [
                json!({"Bool": {"aws:SecureTransport": "true"}}),
                json!({"StringLike": {"aws:PrincipalOrgID": "*"}}),
                json!({"Null": {"aws:SourceAccount": "false"}}),
                json!({"StringEqualsIfExists": {"aws:SourceAccount": "111122223333"}}),
                json!({"StringNotEquals": {"aws:PrincipalAccount": "111122223333"}}),
                json!({"ForAllValues:StringEquals": {"aws:PrincipalOrgPaths": ["o-a/r-b/"]}}),
                json!({"StringEquals": {"aws:PrincipalTag/team": "data"}}),
                // Fixed-looking values that admit every account.
                json!({"StringEquals": {"aws:PrincipalAccount": "${aws:PrincipalAccount}"}}),
                json!({"ArnEquals": {"aws:PrincipalArn": "${aws:PrincipalArn}"}}),
                json!({"StringLike": {"aws:PrincipalAccount": "?*"}}),
                json!({"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:*"}}),
                json!({"ArnEquals": {"aws:PrincipalArn": "arn:aws:iam::*:role/reader"}}),
                json!({"StringLike": {"aws:PrincipalOrgID": "o-*"}}),
                json!({"StringLike": {"aws:PrincipalOrgPaths": "o-*/r-ab12/*"}}),
                json!({"StringLike": {"aws:userid": "**"}}),
                json!({"StringLike": {"aws:PrincipalArn": ["arn:aws:iam::111122223333:role/x", "*?"]}}),
                json!({"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}),
                json!({"IpAddress": {"aws:SourceIp": "::/0"}}),
                json!({"IpAddress": {"aws:SourceIp": "0.0.0.0/1"}}),
                // Every IPv4 caller, in IPv6 notation.
                json!({"IpAddress": {"aws:SourceIp": "::ffff:0.0.0.0/96"}}),
                json!({"IpAddress": {"aws:SourceIp": "::/32"}}),
                json!({"IpAddress": {"aws:SourceIp": "::ffff:0.0.0.0/100"}}),
                json!({"IpAddress": {"aws:VpcSourceIp": "10.0.0.0/8"}}),
                json!({"StringLike": {"aws:SourceVpce": "vpce-*"}}),
                json!({"StringEquals": {"aws:PrincipalServiceName": "lambda.amazonaws.com"}}),
                json!({"StringEquals": {"aws:SourceIp": "203.0.113.7"}}),
                // Under StringLike a `*` before the account spans fields: any account.
                json!({"StringLike": {"aws:PrincipalArn": "arn:*:iam::111122223333:role/reader"}}),
            ] {
                let d = with(weak.clone());
                let f = run(&d, &ctx(STREAM));
                one_finding(
                    &f,
                    Severity::Error,
                    "Statement[0].Condition",
                    &format!("Allow to everyone ({key})"),
                );
                assert_eq!(run(&d, &public_ok), [], "{weak}");
                assert!(!f[0].message.contains("no entry names"), "{weak}: {f:?}");
            }
            // Which rule each entry breaks, in the words of the message.
            for (weak, why) in [
                (
                    json!({"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}),
                    "(0.0.0.0/0 admits more than an IPv4 /8",
                ),
                (
                    json!({"IpAddress": {"aws:SourceIp": "10.1.2.3/33"}}),
                    "(10.1.2.3/33 is not an address or address range)",
                ),
                (
                    json!({"Null": {"aws:SourceAccount": "false"}}),
                    "(Null only asks whether aws:SourceAccount is present)",
                ),
                (
                    json!({"StringEqualsIfExists": {"aws:SourceAccount": "111122223333"}}),
                    "(StringEqualsIfExists holds when aws:SourceAccount is missing)",
                ),
                (
                    json!({"StringEquals": {"aws:PrincipalAccount": "${aws:PrincipalAccount}"}}),
                    "holds a policy variable",
                ),
                (
                    json!({"StringEquals": {"aws:CalledVia": "athena.amazonaws.com"},
                           "StringNotEquals": {"aws:PrincipalAccount": "111122223333"}}),
                    "aws:CalledVia does not say who calls; StringNotEquals does not require",
                ),
                (
                    json!({"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:*"}}),
                    "does not fix one account",
                ),
                (
                    json!({"StringEquals": {"aws:SourceIp": "203.0.113.7"}}),
                    "StringEquals cannot match aws:SourceIp",
                ),
            ] {
                let f = run(&with(weak.clone()), &ctx(STREAM));
                assert!(f[0].message.contains(why), "{weak}: {f:?}");
            }
            for strong in [
                json!({"StringEquals": {"aws:PrincipalOrgID": "o-abc123"}}),
                json!({"stringequals": {"AWS:SourceAccount": ["111122223333"]}}),
                json!({"ArnLike": {"aws:SourceArn": "arn:aws:lambda:us-east-1:111122223333:*"},
                       "Bool": {"aws:SecureTransport": "true"}}),
                json!({"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": "o-a/r-b/*"}}),
                json!({"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}),
                json!({"IpAddress": {"aws:SourceIp": ["203.0.113.7", "2001:db8::/48"]}}),
                json!({"IpAddress": {"aws:SourceIp": "::ffff:203.0.113.0/120"}}),
                json!({"StringLike": {"aws:userid": "AROAEXAMPLEID:*"}}),
                json!({"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/*"}}),
                json!({"ArnLike": {"aws:PrincipalArn": "arn:*:iam::111122223333:role/reader"}}),
                json!({"StringLike": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/*"}}),
                json!({"StringEquals": {"aws:SourceVpce": "vpce-1a2b3c4d"}}),
                // The resource's own organization and account: one value for this policy, as
                // AWS writes its data perimeters.
                json!({"StringEquals": {"aws:PrincipalOrgID": "${aws:ResourceOrgID}"}}),
                json!({"StringEquals": {"aws:PrincipalAccount": "${aws:ResourceAccount}"}}),
            ] {
                assert_eq!(run(&with(strong.clone()), &ctx(STREAM)), [], "{strong}");
            }
            // Not the other way round: the resource's org id is no account.
            let crossed = json!({"StringEquals": {"aws:PrincipalAccount": "${aws:ResourceOrgID}"}});
            assert_eq!(
                run(&with(crossed.clone()), &ctx(STREAM)).len(),
                1,
                "{crossed}"
            );
        }
    }

    #[test]
    fn public_access_needs_a_condition_or_allow_public() {
        for principal in [
            json!("*"),
            json!({"AWS": "*"}),
            json!({"AWS": ["444455556666", "*"]}),
        ] {
            let d = policy(json!({"Principal": principal}));
            let f = run(&d, &ctx(STREAM));
            one_finding(
                &f,
                Severity::Error,
                "Statement[0].Principal",
                "add a Condition",
            );
            assert!(f[0].message.contains("`allowPublic: true`"), "{f:?}");
            assert!(f[0].message.contains("Sid \"Read\""), "{f:?}");
            let public_ok = LintContext {
                allow_public: true,
                ..ctx(STREAM)
            };
            assert_eq!(run(&d, &public_ok), []);
            let conditioned = policy(json!({"Principal": principal,
                "Condition": {"StringEquals": {"aws:PrincipalOrgID": "o-abc"}}}));
            assert_eq!(run(&conditioned, &ctx(STREAM)), []);
            // An empty Condition constrains nothing.
            let empty = policy(json!({"Principal": principal, "Condition": {}}));
            assert_eq!(errors(&run(&empty, &ctx(STREAM))).len(), 1);
            let deny = policy(json!({"Principal": principal, "Effect": "Deny"}));
            assert_eq!(run(&deny, &ctx(STREAM)), []);
        }
        // Everyone but the listed, whatever else the list holds: only the bare "*" excludes
        // all. An AWS "*" leaves service principals granted.
        for not_principal in [
            json!({"AWS": "444455556666"}),
            json!({"AWS": "444455556666", "Service": "*"}),
            json!({"Federated": "*", "CanonicalUser": "*"}),
            json!({"AWS": ["444455556666", "*"]}),
        ] {
            let f = run(
                &policy(json!({"Principal": null, "NotPrincipal": not_principal})),
                &ctx(STREAM),
            );
            one_finding(
                &f,
                Severity::Error,
                "Statement[0].NotPrincipal",
                "`allowPublic: true`",
            );
        }
        let excludes_all = policy(json!({"Principal": null, "NotPrincipal": "*"}));
        let f = run(&excludes_all, &ctx(STREAM));
        assert!(errors(&f).is_empty(), "{f:?}");
    }

    #[test]
    fn a_service_principal_without_a_named_source_is_a_warning() {
        let firehose = json!({"Service": "firehose.amazonaws.com"});
        let f = run(&policy(json!({"Principal": firehose})), &ctx(STREAM));
        one_finding(
            &f,
            Severity::Warning,
            "Statement[0].Principal",
            "firehose.amazonaws.com",
        );
        assert!(f[0].message.contains("confused deputy"), "{f:?}");
        for named in [
            json!({"StringEquals": {"aws:SourceAccount": "111122223333"}}),
            json!({"ArnLike": {"aws:SourceArn": "arn:aws:firehose:us-east-1:111122223333:*"}}),
            json!({"StringEquals": {"aws:SourceAccount": "${aws:ResourceAccount}"}}),
            json!({"StringEquals": {"aws:SourceOrgID": "${aws:ResourceOrgID}"}}),
        ] {
            let d = policy(json!({"Principal": firehose, "Condition": named}));
            assert_eq!(run(&d, &ctx(STREAM)), [], "{named}");
        }
        // A wildcard over the account names no source.
        let d = policy(json!({"Principal": firehose, "Condition":
            {"ArnLike": {"aws:SourceArn": "arn:aws:firehose:us-east-1:*:*"}}}));
        assert_eq!(run(&d, &ctx(STREAM)).len(), 1);
    }

    #[test]
    fn a_deny_that_locks_kpr_out_is_a_warning() {
        let deny = |extra: Value| {
            let mut fields = json!({"Effect": "Deny"});
            for (k, v) in extra.as_object().unwrap() {
                fields[k] = v.clone();
            }
            run(&policy(fields), &ctx(STREAM))
        };
        for (principal, key, whom) in [
            (json!("*"), "Principal", "to everyone"),
            (
                json!({"AWS": ["444455556666", "*"]}),
                "Principal",
                "to everyone",
            ),
            (
                json!({"AWS": "111122223333"}),
                "Principal",
                "account 111122223333",
            ),
            (
                json!({"AWS": "arn:aws:iam::111122223333:root"}),
                "Principal",
                "account 111122223333",
            ),
        ] {
            for action in [
                json!("kinesis:*"),
                json!("Kinesis:putresourcepolicy"),
                json!(["kinesis:GetRecords", "kinesis:*ResourcePolicy"]),
            ] {
                let f = deny(json!({"Principal": principal, "Action": action}));
                one_finding(&f, Severity::Warning, &format!("Statement[0].{key}"), whom);
                assert!(f[0].message.contains("PutResourcePolicy"), "{f:?}");
                assert!(f[0].message.contains("Sid \"Read\""), "{f:?}");
            }
        }
        // Everyone but the listed: kpr too, unless its role is listed.
        let f = deny(
            json!({"Principal": null, "NotPrincipal": {"AWS": "444455556666"},
            "Action": "kinesis:*"}),
        );
        one_finding(
            &f,
            Severity::Warning,
            "Statement[0].NotPrincipal",
            "kpr included unless it is listed",
        );
        // NotAction denies what it does not spare.
        let f = deny(json!({"Principal": "*", "Action": null,
            "NotAction": ["kinesis:GetResourcePolicy", "kinesis:PutResourcePolicy"]}));
        one_finding(
            &f,
            Severity::Warning,
            "Statement[0].Principal",
            "kinesis:DeleteResourcePolicy ",
        );
        assert!(!f[0].message.contains("kinesis:PutResourcePolicy"), "{f:?}");
        let spared = deny(json!({"Principal": "*", "Action": null,
            "NotAction": "kinesis:*ResourcePolicy"}));
        assert_eq!(spared, []);
        // What does not touch kpr's calls or names someone else is fine.
        assert_eq!(
            deny(json!({"Principal": "*", "Action": "kinesis:PutRecord*"})),
            []
        );
        assert_eq!(
            deny(
                json!({"Principal": {"AWS": "arn:aws:iam::444455556666:root"},
                "Action": "kinesis:*"})
            ),
            []
        );
        // A "*" of services names no role: the confused-deputy Deny for services.
        assert_eq!(
            deny(json!({"Principal": {"Service": "*"}, "Action": "kinesis:*",
                "Condition": {"StringNotEquals": {"aws:SourceAccount": "111122223333"}}})),
            []
        );
        // Everything denied to everyone under a Condition: whether kpr's own calls may meet it.
        let under = |condition: &Value| {
            deny(json!({"Principal": "*", "Action": "kinesis:*", "Condition": condition}))
        };
        // Only through our VPC endpoint: kpr too, wherever it runs.
        let f = under(&json!({"StringNotEquals": {"aws:SourceVpce": "vpce-1a2b3c4d"}}));
        one_finding(
            &f,
            Severity::Warning,
            "Statement[0].Principal",
            "that kpr's own calls may meet",
        );
        for (condition, warned) in [
            // A key about the caller may well spare kpr, alone or beside a network key.
            (
                json!({"ArnNotEquals": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/kpr"}}),
                false,
            ),
            (
                json!({"StringNotEquals": {"aws:SourceVpce": "vpce-1a2b3c4d"},
                       "ArnNotEquals": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/kpr"}}),
                false,
            ),
            (json!({"Bool": {"aws:SecureTransport": "false"}}), false),
            // Denying a blocked range denies only calls from there.
            (
                json!({"IpAddress": {"aws:SourceIp": "198.51.100.0/24"}}),
                false,
            ),
            // A positive match over every network is no exemption.
            (
                json!({"IpAddress": {"aws:SourceIp": ["0.0.0.0/0", "::/0"]}}),
                true,
            ),
            (json!({"StringLike": {"aws:SourceVpce": "vpce-*"}}), true),
            // A VPC's private range: kpr's own calls are likely among them.
            (
                json!({"IpAddress": {"aws:VpcSourceIp": "10.0.0.0/8"}}),
                true,
            ),
            // IfExists holds when the key is missing: a call through no VPC endpoint, as kpr's.
            (
                json!({"StringEqualsIfExists": {"aws:SourceVpce": "vpce-1a2b3c4d"}}),
                true,
            ),
            // No VPC endpoint at all: kpr too, unless it calls through one.
            (json!({"Null": {"aws:SourceVpce": "true"}}), true),
            // "Only the partner may use this": the resource's own account, kpr's, is denied.
            (
                json!({"StringNotEquals": {"aws:PrincipalAccount": "444455556666"}}),
                true,
            ),
            (
                json!({"ArnNotEqualsIfExists": {"aws:PrincipalArn": ["arn:aws:iam::444455556666:role/writer"]}}),
                true,
            ),
            (
                json!({"StringNotLike": {"aws:PrincipalArn": "arn:aws:iam::4444*:role/*"}}),
                true,
            ),
            // An exception that may name kpr's account, or anyone: it may spare kpr.
            (
                json!({"StringNotEquals": {"aws:PrincipalAccount": ["444455556666", "111122223333"]}}),
                false,
            ),
            (
                json!({"ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/admin"}}),
                false,
            ),
            (
                json!({"StringNotEquals": {"aws:PrincipalAccount": "${aws:ResourceAccount}"}}),
                false,
            ),
            // Beside a block that holds only for a blocked range: not every call.
            (
                json!({"StringNotEquals": {"aws:PrincipalAccount": "444455556666"},
                       "IpAddress": {"aws:SourceIp": "198.51.100.0/24"}}),
                false,
            ),
            // The TLS Deny with its value flipped, and the IAM guide's MFA Deny.
            (json!({"Bool": {"aws:SecureTransport": "true"}}), true),
            // A Deny from a date past, or until one to come, holds for kpr's next call; one
            // from a date to come, not yet.
            (
                json!({"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}),
                true,
            ),
            (
                json!({"DateLessThan": {"aws:CurrentTime": "2999-01-01"}}),
                true,
            ),
            (
                json!({"NumericLessThan": {"aws:EpochTime": "32503680000"}}),
                true,
            ),
            (
                json!({"NumericEquals": {"aws:EpochTime": "1577836800"}}),
                false,
            ),
            (
                json!({"DateLessThan": {"aws:EpochTime": "32503680000"}}),
                true,
            ),
            (
                json!({"DateGreaterThan": {"aws:CurrentTime": "2999-01-01"}}),
                false,
            ),
            // With a UTC offset, as ISO 8601 allows: past all the same.
            (
                json!({"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00+01:00"}}),
                true,
            ),
            (
                json!({"DateGreaterThan": {"aws:CurrentTime": "1960-01-01"}}),
                true,
            ),
            // The resource's own account, by the variable that stands for it: kpr's.
            (
                json!({"StringEquals": {"aws:PrincipalAccount": "${aws:ResourceAccount}"}}),
                true,
            ),
            (
                json!({"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::${aws:ResourceAccount}:role/*"}}),
                true,
            ),
            (
                json!({"StringEquals": {"aws:PrincipalAccount": "${AWS:resourceaccount}"}}),
                true,
            ),
            // Until a time past what a clock holds: open now.
            (
                json!({"DateLessThan": {"aws:CurrentTime": "18446744073709551615"}}),
                true,
            ),
            // An exception that can be nobody's (a digit or a colon short) spares no one.
            (
                json!({"StringNotEquals": {"aws:PrincipalAccount": "11112222333"}}),
                true,
            ),
            (
                json!({"ArnNotEquals": {"aws:PrincipalArn": "arn:aws:iam:111122223333:role/kpr"}}),
                true,
            ),
            (json!({"ArnNotLike": {"aws:PrincipalArn": "*"}}), false),
            // A pattern under StringNotEquals is read as text: it spares no one. Under
            // StringNotLike it spares the callers it matches.
            (
                json!({"StringNotEquals": {"aws:userid": "AROAEXAMPLE:*"}}),
                true,
            ),
            (
                json!({"StringNotEquals": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/*"}}),
                true,
            ),
            (
                json!({"StringNotLike": {"aws:userid": "AROAEXAMPLE:*"}}),
                false,
            ),
            (
                json!({"BoolIfExists": {"aws:MultiFactorAuthPresent": "false"}}),
                true,
            ),
            (
                json!({"Null": {"aws:MultiFactorAuthPresent": "true"}}),
                true,
            ),
            // Keys in one block are ANDed: each may hold for kpr, so the block does.
            (
                json!({"StringNotEquals": {"aws:SourceVpce": "vpce-1a2b3c",
                                           "aws:PrincipalAccount": "444455556666"}}),
                true,
            ),
            (
                json!({"Bool": {"aws:SecureTransport": "true", "aws:MultiFactorAuthPresent": "false"}}),
                true,
            ),
            // One entry of the block that spares kpr spares it.
            (
                json!({"StringNotEquals": {"aws:SourceVpce": "vpce-1a2b3c",
                                           "aws:PrincipalAccount": "111122223333"}}),
                false,
            ),
            // Exceptions no role session matches: the account's root, an STS session ARN.
            (
                json!({"ArnNotEquals": {"aws:PrincipalArn": "arn:aws:iam::111122223333:root"}}),
                true,
            ),
            (
                json!({"ArnNotLike": {"aws:PrincipalArn": "arn:aws:sts::111122223333:assumed-role/kpr/*"}}),
                true,
            ),
            // The data-perimeter service exceptions, and aws:Source* keys absent from kpr's
            // direct calls: each holds for kpr, and a network key beside them still does.
            (
                json!({"NotIpAddressIfExists": {"aws:SourceIp": "203.0.113.0/24"},
                       "BoolIfExists": {"aws:PrincipalIsAWSService": "false",
                                        "aws:ViaAWSService": "false"}}),
                true,
            ),
            (
                json!({"StringNotEquals": {"aws:SourceAccount": "111122223333"}}),
                true,
            ),
            // On a key kpr's calls lack: ForAnyValue: fails without it, ForAllValues: holds.
            (
                json!({"ForAnyValue:StringNotLike": {"aws:SourceOrgPaths": "o-abc123/r-ab12/*"}}),
                false,
            ),
            (
                json!({"ForAllValues:StringNotLike": {"aws:SourceOrgPaths": "o-abc123/r-ab12/*"}}),
                true,
            ),
            (json!({"Null": {"aws:SourceOrgPaths": "true"}}), true),
            (
                json!({"StringNotEqualsIfExists": {"aws:PrincipalServiceName": "firehose.amazonaws.com"}}),
                true,
            ),
            // On kpr's one account value, ForAllValues: is the plain operator.
            (
                json!({"ForAllValues:StringNotEquals": {"aws:PrincipalAccount": "444455556666"}}),
                true,
            ),
            // Service-linked roles, which kpr's role cannot be, spare it nothing.
            (
                json!({"NotIpAddressIfExists": {"aws:SourceIp": "203.0.113.0/24"},
                       "ArnNotLikeIfExists": {"aws:PrincipalArn": "arn:aws:iam::*:role/aws-service-role/*"}}),
                true,
            ),
            // AWS's network perimeter on the VPC endpoint's organization.
            (
                json!({"StringNotEqualsIfExists": {"aws:VpceOrgID": "o-abc123def4"}}),
                true,
            ),
            (
                json!({"StringEquals": {"aws:VpceAccount": "444455556666"}}),
                false,
            ),
            // Denies naming the own account, or a pattern of its roles.
            (
                json!({"StringEquals": {"aws:PrincipalAccount": "111122223333"}}),
                true,
            ),
            (
                json!({"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/*"}}),
                true,
            ),
            (
                json!({"ArnEquals": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/reader"}}),
                false,
            ),
            // MFA by its age, and the CalledVia keys: absent from kpr's calls.
            (json!({"Null": {"aws:MultiFactorAuthAge": "true"}}), true),
            (
                json!({"NumericGreaterThanIfExists": {"aws:MultiFactorAuthAge": "3600"}}),
                true,
            ),
            (json!({"Null": {"aws:CalledVia": "true"}}), true),
            // ArnEquals takes wildcards as ArnLike does.
            (
                json!({"ArnNotEquals": {"aws:PrincipalArn": "arn:aws:iam::4444*:role/x"}}),
                true,
            ),
            (
                json!({"ForAnyValue:StringNotEquals": {"aws:PrincipalAccount": "444455556666"}}),
                true,
            ),
        ] {
            // The lockout warning only: a pattern under StringNotEquals is also an error of
            // its own (see a_pattern_under_string_equals_is_plain_text).
            let f: Vec<_> = under(&condition)
                .into_iter()
                .filter(|f| f.severity == Severity::Warning)
                .collect();
            if warned {
                assert_eq!(f.len(), 1, "{condition}");
            } else {
                assert_eq!(f, [], "{condition}");
            }
        }
        let allow = run(
            &policy(json!({"Principal": {"AWS": "111122223333"}, "Action": "kinesis:*"})),
            &ctx(STREAM),
        );
        assert_eq!(allow, []);
    }

    #[test]
    fn paths_use_written_order_and_sid_is_optional_in_messages() {
        let d = PolicyDocument::from_value(&json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "444455556666"}, "Action": "kinesis:GetRecords", "Resource": STREAM},
            {"Effect": "Allow", "Principal": {"AWS": "444455556666"}, "Action": "s3:GetObject", "Resource": STREAM}
        ]}))
        .unwrap();
        let f = run(&d, &ctx(STREAM));
        one_finding(&f, Severity::Error, "Statement[1].Action", "s3:GetObject");
        assert!(!f[0].message.contains("Sid"), "{f:?}");
    }

    #[test]
    fn no_statements_and_duplicate_sids() {
        let d =
            PolicyDocument::from_value(&json!({"Version": "2012-10-17", "Statement": []})).unwrap();
        one_finding(
            &run(&d, &ctx(STREAM)),
            Severity::Error,
            "Statement",
            "no statements",
        );
        let s = json!({"Sid": "A", "Effect": "Allow", "Principal": {"AWS": "444455556666"}, "Action": "kinesis:GetRecords", "Resource": STREAM});
        let mut s2 = s.clone();
        s2["Action"] = json!("kinesis:ListShards");
        let d = PolicyDocument::from_value(&json!({"Version": "2012-10-17", "Statement": [s, s2]}))
            .unwrap();
        one_finding(
            &run(&d, &ctx(STREAM)),
            Severity::Warning,
            "Statement[1].Sid",
            "Statement[0]",
        );
    }
}
