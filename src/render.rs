//! Plans and reports for people (text) and pipelines (JSON, `format_version` 1).
//!
//! JSON schema, stable within a format_version (fields may be added, never removed or renamed):
//! ```text
//! { "format_version": "1", "kind": "plan" | "apply",
//!   "summary": { "create", "update", "delete", "unchanged", "failed",     // integers
//!                "not_started"?, "under_way"? },   // only when an interrupted apply left some
//!   "resources": [ { "arn", "declared_arn"?, "kind": "stream"|"consumer",
//!                    "action": "create"|"update"|"delete"|"no-op", "reason",
//!                    "source": {"file","line"}|null,
//!                    "before": policy|null, "after": policy|null,   // null for no-ops
//!                    "access"?: { "allows_now", "allows_no_longer", "denies_now",
//!                                 "denies_no_longer" },  // principals; not for no-ops
//!                    "delete_cause"?: "ensure_absent"|"prune",
//!                    "outcome"?: "applied"|"unchanged"|"failed"|"not_started"|"under_way",
//!                    "error"?: failure } ],
//!   "failures": [ { "arn", "source", "operation", "code", "retryable", "message" } ],
//!   "diagnostics": [ { "file", "line", "severity": "warning", "message" } ],  // lint warnings,
//!                    // and a --prune target that matched nothing (file: the directory)
//!   "targeted"?: { "planned", "declared" },   // with --target: the others were not read
//!   "interrupted"?: null | { "by": "SIGINT"|"SIGTERM", "not_started",       // apply only
//!                            "hard_stop"?: "SIGINT"|"SIGTERM" } }  // a second signal's report
//! ```
//! A run refused before it wrote anything (invalid manifests or an unmatched target, before
//! any call; the prune guard, after listing) has no summary or resources, except the prune
//! guard's, which has the plan it refused (deletes included) for review:
//! ```text
//! { "format_version": "1", "kind": "plan" | "apply",
//!   "refused": { "reason": "invalid_manifests"|"unmatched_target"|"prune_guard", "message" },
//!   "diagnostics": [ { "file", "line", "severity", "message" } ],
//!   "summary"?, "resources"?, "failures"?, "targeted"? }             // prune_guard only
//! ```

use std::fmt::Write as _;

use serde::Serialize;

use crate::apply::{Outcome, Report};
use crate::manifest::{Diagnostic, Source, one_line};
use crate::plan::{Action, Change, Failure, Plan, Summary};
use crate::policy::{AccessChange, PolicyDocument, canonical_statements};

pub const FORMAT_VERSION: &str = "1";

/// The JSON document of a plan or apply refused before it wrote anything (see the module
/// doc); with the `plan` it refused, when there is one to review (the prune guard's).
pub fn refused_json(
    kind: &str,
    reason: &str,
    message: &str,
    diagnostics: &[crate::manifest::Diagnostic],
    plan: Option<(&Plan, Option<Targeted>)>,
) -> String {
    let mut doc = serde_json::json!({
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "refused": {"reason": reason, "message": message},
        "diagnostics": diagnostics,
    });
    if let (Some((plan, targeted)), Some(obj)) = (plan, doc.as_object_mut()) {
        obj.insert("summary".into(), serde_json::json!(plan.summary()));
        obj.insert("resources".into(), serde_json::json!(plan.changes));
        obj.insert("failures".into(), serde_json::json!(plan.failures));
        // As in a plan's document: with --target, not about the whole set.
        if let Some(t) = targeted {
            obj.insert("targeted".into(), serde_json::json!(t));
        }
    }
    serde_json::to_string_pretty(&doc).expect("a json! value serialises")
}

/// ANSI styling, on only for a terminal without NO_COLOR.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub fn detect(stream_is_tty: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            color: stream_is_tty && !no_color,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn green(&self, t: &str) -> String {
        self.paint("32", t)
    }
    fn red(&self, t: &str) -> String {
        self.paint("31", t)
    }
    fn yellow(&self, t: &str) -> String {
        self.paint("33", t)
    }
    fn bold(&self, t: &str) -> String {
        self.paint("1", t)
    }
    fn dim(&self, t: &str) -> String {
        self.paint("2", t)
    }
}

fn symbol(action: Action, style: &Style) -> String {
    match action {
        Action::Create => style.green("+ create"),
        Action::Update => style.yellow("~ update"),
        Action::Delete => style.red("- delete"),
        Action::NoOp => "  no-op ".into(),
    }
}

/// One line per changed resource, its statement-level diff, failures, then the summary line.
/// `targeted`: how many resources the manifests declare, when `--target` planned only some.
pub fn plan_text(plan: &Plan, targeted: Option<usize>, style: &Style) -> String {
    let mut out = changes_text(plan, style);
    failures_text(&mut out, &plan.failures, style);
    if !plan.has_changes() && plan.failures.is_empty() {
        out.push_str(match targeted {
            None => "No changes. Every live policy is equivalent to its manifest.\n",
            Some(_) => "No changes in the targeted resources.\n",
        });
    }
    let _ = writeln!(out, "{}", summary_line("Plan", &plan.summary(), style));
    if let Some(declared) = targeted {
        out.push_str(&targeted_note(
            plan.planned(),
            plan.pruned(),
            declared,
            style,
        ));
    }
    out
}

/// Said under a plan or apply limited by `--target`, as Terraform does: the others were not
/// even read, so "no changes" says nothing about them.
pub fn targeted_note(planned: usize, pruned: usize, declared: usize, style: &Style) -> String {
    let pruned = match pruned {
        0 => String::new(),
        n => format!(", and {n} undeclared one(s) to delete (--prune)"),
    };
    // Every declared one targeted: partial only in what --prune may list beyond them.
    let others = if planned >= declared {
        "no other was declared"
    } else {
        "the others were not read"
    };
    format!(
        "{}\n",
        style.yellow(&format!(
            "Partial: --target planned {planned} of the {declared} declared resource(s){pruned}; \
             {others}."
        ))
    )
}

/// Each change of a plan with its reason and statement-level diff: what `plan` shows, and what
/// `apply` shows before it writes, so its log says what it set out to change and why.
pub fn changes_text(plan: &Plan, style: &Style) -> String {
    let mut out = String::new();
    for c in plan.changes.iter().filter(|c| c.action != Action::NoOp) {
        change_text(&mut out, c, style);
    }
    out
}

fn change_text(out: &mut String, c: &Change, style: &Style) {
    let _ = writeln!(
        out,
        "{} {} {}",
        symbol(c.action, style),
        c.kind,
        located(&c.arn, c.source.as_ref(), style)
    );
    if let Some(declared) = &c.declared_arn
        && declared != &c.arn
    {
        let _ = writeln!(out, "    {}", style.dim(&format!("declared as {declared}")));
    }
    let _ = writeln!(
        out,
        "    {}",
        style.dim(&format!("reason: {}", indented(&c.reason)))
    );
    let partition = Some(c.target.scope.partition.as_str());
    for line in c.access().iter().flat_map(access_summary) {
        let _ = writeln!(out, "    {}", summary_style(line, style));
    }
    for line in statement_diff(
        c.live.as_ref(),
        c.live_raw.as_deref(),
        c.desired.as_deref(),
        partition,
    ) {
        let _ = writeln!(out, "    {}", diff_line(line, style));
    }
    let _ = writeln!(out);
}

/// The lines [`access_summary`] leads with, which [`summary_style`] colours by their meaning.
const BECOMES_PUBLIC: &str =
    "becomes public: anyone may make the calls it allows (no Condition limits who)";
const NO_LONGER_PUBLIC: &str = "no longer public";
const PUBLIC_BEFORE_UNKNOWN: &str = "public after this change: anyone may make the calls it \
     allows (no Condition limits who); whether it was before is not known";

/// Whom a change starts or stops naming, by effect, in a line each: `allows now: ...`,
/// `allows no longer: ...` (and `denies ...`). What a reader of a plan asks first; the
/// statement diff below it says under which actions and conditions.
pub fn access_summary(a: &AccessChange) -> Vec<String> {
    let mut lines: Vec<String> = [
        ("allows now", &a.allows_now),
        ("allows no longer", &a.allows_no_longer),
        ("denies now", &a.denies_now),
        ("denies no longer", &a.denies_no_longer),
    ]
    .into_iter()
    .filter(|(_, who)| !who.is_empty())
    .map(|(label, who)| {
        let who: Vec<_> = who.iter().map(|w| one_line(w)).collect();
        format!("{label}: {}", who.join(", "))
    })
    .collect();
    match (a.public_before, a.public_after) {
        // `public_before` stays false, so a gate on `public_after && !public_before` refuses
        // it; the reader is told only what is known.
        (false, true) if a.before_unknown => lines.insert(0, PUBLIC_BEFORE_UNKNOWN.into()),
        (false, true) => lines.insert(0, BECOMES_PUBLIC.into()),
        (true, false) => lines.insert(0, NO_LONGER_PUBLIC.into()),
        _ => {}
    }
    if a.before_unknown {
        lines.push(
            "allowed and denied before: not known (kpr cannot parse the live policy; its lines \
             are marked -)"
                .into(),
        );
    }
    lines
}

/// A line of [`access_summary`], coloured as the diff below it: green for a principal the
/// policy now names, red for one it no longer does.
pub fn summary_style(line: String, style: &Style) -> String {
    if line == BECOMES_PUBLIC {
        style.red(&line)
    } else if line.contains(" now: ") || line == NO_LONGER_PUBLIC {
        style.green(&line)
    } else {
        style.red(&line)
    }
}

/// A line of [`statement_diff`], green when added and red when removed.
pub fn diff_line(line: String, style: &Style) -> String {
    match line.chars().next() {
        Some('+') => style.green(&line),
        Some('-') => style.red(&line),
        _ => line,
    }
}

/// Statements matched by Sid (or by identical content); only what differs is printed.
/// `partition`: the resource's, when known (see [`PolicyDocument::canonical_in`]).
pub fn statement_diff(
    before: Option<&PolicyDocument>,
    before_raw: Option<&str>,
    after: Option<&PolicyDocument>,
    partition: Option<&str>,
) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(raw) = before_raw {
        // Every line marked: what a revoke takes away must not read as unchanged context.
        lines.push("- (unparsable live policy)".to_string());
        lines.extend(raw.lines().map(|l| format!("-   {}", one_line(l))));
    }
    let header = |d: Option<&PolicyDocument>| {
        d.map(|d| {
            let mut v = d.canonical();
            if let Some(o) = v.as_object_mut() {
                o.remove("Statement");
            }
            v
        })
    };
    let (hb, ha) = (header(before), header(after));
    if before.is_some() && after.is_some() && hb != ha {
        lines.push(format!(
            "- {}",
            one_line(&hb.unwrap_or_default().to_string())
        ));
        lines.push(format!(
            "+ {}",
            one_line(&ha.unwrap_or_default().to_string())
        ));
    }
    let old = before
        .map(|d| canonical_statements(d, partition))
        .unwrap_or_default();
    let new = after
        .map(|d| canonical_statements(d, partition))
        .unwrap_or_default();
    let mut new_left: Vec<Option<&(String, String)>> = new.iter().map(Some).collect();
    let mut removed = Vec::new();
    for o in &old {
        if let Some(slot) = new_left.iter_mut().find(|n| n.is_some_and(|n| n.1 == o.1)) {
            *slot = None; // identical statement: not shown
        } else {
            removed.push(o);
        }
    }
    let mut added: Vec<&(String, String)> = new_left.into_iter().flatten().collect();
    for o in removed {
        match counterpart(o, &added) {
            Some(i) => {
                let n = added.remove(i);
                // The effect, which the context may leave out, says whether a `+` grants.
                let effect = effect_of(&n.1).map_or(String::new(), |e| format!(" ({e})"));
                if n.0 == o.0 {
                    lines.push(format!("~ statement {}{effect}", one_line(&o.0)));
                } else {
                    lines.push(format!(
                        "~ statement {} -> {}{effect}",
                        one_line(&o.0),
                        one_line(&n.0)
                    ));
                }
                // Lines compare without their trailing comma: removing a list's last item
                // takes the comma off the one before, which is no change to show.
                let (old_lines, new_lines): (Vec<&str>, Vec<&str>) =
                    (o.1.lines().collect(), n.1.lines().collect());
                let ops = similar::capture_diff_slices_by_key(
                    similar::Algorithm::Myers,
                    &old_lines,
                    &new_lines,
                    |l| l.trim_end_matches(','),
                );
                // Three lines of context around each change, as `diff -u`: a long statement
                // with one principal changed reads as that principal.
                // A gap of one line is shown, not said: `...` would be no shorter.
                // A gap of more says which keys the next lines are under, as `diff -p` names
                // the function: `... "Condition": { "ArnNotLike": {`.
                let gap = |lines: &mut Vec<String>, from: usize, to: usize| match to - from {
                    0 => {}
                    1 => lines.push(format!("    {}", one_line(old_lines[from]))),
                    _ => {
                        let keys = enclosing_keys(&old_lines[from..to], old_lines.get(to));
                        let keys = one_line(&keys);
                        lines.push(format!(
                            "    ...{}{keys}",
                            if keys.is_empty() { "" } else { " " }
                        ));
                    }
                };
                let mut shown = 0;
                for group in similar::group_diff_ops(ops, 3) {
                    let start = group.first().map_or(0, |op| op.old_range().start);
                    gap(&mut lines, shown, start.max(shown));
                    for op in &group {
                        shown = op.old_range().end;
                        for change in op.iter_changes(&old_lines, &new_lines) {
                            let (sign, text) = match change.tag() {
                                similar::ChangeTag::Delete => ('-', change.value()),
                                similar::ChangeTag::Insert => ('+', change.value()),
                                // As the new side has it: an item added after it gives it a
                                // comma, and the context then reads as the JSON it shows.
                                similar::ChangeTag::Equal => (
                                    ' ',
                                    change.new_index().map_or(change.value(), |i| new_lines[i]),
                                ),
                            };
                            lines.push(format!("{sign}   {}", one_line(text)));
                        }
                    }
                }
                gap(&mut lines, shown, old_lines.len().max(shown));
            }
            None => {
                lines.push(format!("- statement {}", one_line(&o.0)));
                lines.extend(o.1.lines().map(|l| format!("-   {}", one_line(l))));
            }
        }
    }
    for n in added {
        lines.push(format!("+ statement {}", one_line(&n.0)));
        lines.extend(n.1.lines().map(|l| format!("+   {}", one_line(l))));
    }
    lines
}

/// The added statement a removed one became: the one with its Sid, else (no Sid, or a renamed
/// one) the most alike by lines, if mostly alike, so an edit shows as the lines it changed
/// rather than as a whole statement taken away and another granted.
fn counterpart(removed: &(String, String), added: &[&(String, String)]) -> Option<usize> {
    if !removed.0.starts_with('#')
        && let Some(i) = added.iter().position(|n| n.0 == removed.0)
    {
        return Some(i);
    }
    added
        .iter()
        .enumerate()
        .map(|(i, n)| (i, similar::TextDiff::from_lines(&removed.1, &n.1).ratio()))
        .filter(|(_, ratio)| *ratio >= 0.6)
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i)
}

/// A canonical statement's `Effect`, from its pretty JSON.
fn effect_of(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("\"Effect\": \""))
        .and_then(|rest| rest.split('"').next())
}

/// The keys that open the blocks `next` sits in, among the `elided` lines before it (pretty
/// JSON: an opener ends in `{` or `[`, and each level is indented further).
fn enclosing_keys(elided: &[&str], next: Option<&&str>) -> String {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut depth = next.map_or(0, |l| indent(l));
    let mut keys = Vec::new();
    for l in elided.iter().rev() {
        let t = l.trim();
        if indent(l) < depth && (t.ends_with('{') || t.ends_with('[')) && t.starts_with('"') {
            depth = indent(l);
            keys.push(t);
        }
    }
    keys.reverse();
    keys.join(" ")
}

/// A resource's ARN and, when a manifest declared it, where: `ARN  (file:line)`.
fn located(arn: &str, source: Option<&Source>, style: &Style) -> String {
    match source {
        Some(src) => format!("{}  {}", style.bold(arn), style.dim(&format!("({src})"))),
        None => style.bold(arn),
    }
}

/// How many resources a shared error lists by name before it counts the rest.
const SHARED_ERROR_LISTED: usize = 10;

/// Stands for each listed resource's ARN in an error said once for several resources.
const EACH_ARN: &str = "<ARN>";

/// Each failure with its error; failures that share one error (no credentials, an endpoint that
/// refuses connections, a role without kinesis:GetResourcePolicy) are said once, with the
/// resources listed under it: a thousand copies of the same eight lines would hide the one
/// thing to fix. AWS names the resource in some errors (AccessDenied: "... on resource: ARN
/// because ..."); such errors count as the same when they differ only by that name.
fn failures_text(out: &mut String, failures: &[Failure], style: &Style) {
    struct Group<'a> {
        message: std::borrow::Cow<'a, str>,
        names_each: bool,
        members: Vec<&'a Failure>,
        /// The fewest and most attempts among the members (retried errors).
        attempts: Option<(u32, u32)>,
    }
    // In order of first appearance; indexed, since 10,000 distinct errors must not cost a
    // comparison with every group before.
    let mut groups: Vec<Group> = Vec::new();
    let mut index: std::collections::HashMap<std::borrow::Cow<str>, usize> =
        std::collections::HashMap::new();
    for f in failures {
        let (message, attempts) = crate::kinesis::split_attempts(&f.message);
        let masked = mask_arn(message, &f.arn);
        let names_each = masked.is_some();
        let key = masked.map_or(std::borrow::Cow::Borrowed(message), Into::into);
        let attempts = attempts.map(|n| (n, n));
        match index.get(&key) {
            Some(&i) => {
                let g = &mut groups[i];
                g.members.push(f);
                g.attempts = match (g.attempts, attempts) {
                    (Some((lo, hi)), Some((n, _))) => Some((lo.min(n), hi.max(n))),
                    (a, b) => a.or(b),
                };
            }
            None => {
                index.insert(key.clone(), groups.len());
                groups.push(Group {
                    message: key,
                    names_each,
                    members: vec![f],
                    attempts,
                });
            }
        }
    }
    for g in groups {
        if let [f] = g.members[..] {
            let _ = writeln!(
                out,
                "{} {}\n    {}\n",
                style.red("! failed"),
                located(&f.arn, f.source.as_ref(), style),
                indented(&f.message)
            );
            continue;
        }
        let attempts = match g.attempts {
            Some((lo, hi)) if lo == hi => format!(" (after {hi} attempts)"),
            Some((lo, hi)) => format!(" (after {lo} to {hi} attempts)"),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{} {} resources, all with the same error{}:\n    {}{attempts}",
            style.red("! failed"),
            g.members.len(),
            if g.names_each {
                format!(" ({EACH_ARN} is each one's ARN)")
            } else {
                String::new()
            },
            indented(&g.message)
        );
        let members = g
            .members
            .iter()
            .map(|f| (f.arn.as_str(), f.source.as_ref()));
        list_some(out, members, g.members.len(), style);
        out.push('\n');
    }
}

/// The first [`SHARED_ERROR_LISTED`] of `total` resources, one a line, then a count of the rest.
fn list_some<'a>(
    out: &mut String,
    resources: impl Iterator<Item = (&'a str, Option<&'a Source>)>,
    total: usize,
    style: &Style,
) {
    for (arn, source) in resources.take(SHARED_ERROR_LISTED) {
        let _ = writeln!(out, "  {}", located(arn, source, style));
    }
    if total > SHARED_ERROR_LISTED {
        let _ = writeln!(
            out,
            "  and {} more (`--output json` lists every one)",
            total - SHARED_ERROR_LISTED
        );
    }
}

/// The SDK's errors can run over several lines (each credential source it tried); they stay
/// indented under the first, apart from the resources listed below.
/// A message's lines, indented under its header; each escaped as [`one_line`], since a
/// message may quote a policy (a key kpr refused, say).
fn indented(message: &str) -> String {
    message
        .split('\n')
        .map(one_line)
        .collect::<Vec<_>>()
        .join("\n    ")
}

/// `message` with each mention of the resource `arn` replaced by [`EACH_ARN`], or `None` when
/// it names no such resource. A consumer declared by name is addressed by its full ARN, so a
/// mention may carry a `:creation-timestamp` the declared ARN lacks. A mention must stand
/// alone: `stream/a` inside `stream/ab` or `stream/a/consumer/c` is another resource.
fn mask_arn(message: &str, arn: &str) -> Option<String> {
    fn in_arn(c: u8) -> bool {
        c.is_ascii_alphanumeric() || b":/_-.".contains(&c)
    }
    if arn.is_empty() {
        return None;
    }
    let bytes = message.as_bytes();
    let mut masked = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(at) = message[from..].find(arn).map(|i| from + i) {
        let mut end = at + arn.len();
        if bytes.get(end) == Some(&b':') {
            let digits = bytes[end + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if digits > 0 {
                end += 1 + digits;
            }
        }
        // A sentence may end right after the ARN.
        let mut rest = end;
        while bytes.get(rest) == Some(&b'.') {
            rest += 1;
        }
        let alone_before = at == 0 || !in_arn(bytes[at - 1]);
        let alone_after = bytes.get(rest).is_none_or(|&c| !in_arn(c));
        if alone_before && alone_after {
            masked.push_str(&message[copied..at]);
            masked.push_str(EACH_ARN);
            copied = end;
            from = end;
        } else {
            from = at + 1;
        }
    }
    if copied == 0 {
        return None;
    }
    masked.push_str(&message[copied..]);
    Some(masked)
}

pub fn summary_line(verb: &str, s: &Summary, style: &Style) -> String {
    let (created, updated, deleted) = if verb == "Plan" {
        ("to create", "to update", "to delete")
    } else {
        ("created", "updated", "deleted")
    };
    let mut line = format!(
        "{verb}: {} {created}, {} {updated}, {} {deleted}, {} unchanged",
        s.create, s.update, s.delete, s.unchanged
    );
    if s.failed > 0 {
        line.push_str(&format!(", {} failed", s.failed));
    }
    if s.not_started > 0 {
        line.push_str(&format!(", {} not started", s.not_started));
    }
    if s.under_way > 0 {
        line.push_str(&format!(", {} under way", s.under_way));
    }
    line.push('.');
    if s.failed > 0 {
        style.red(&line)
    } else {
        style.bold(&line)
    }
}

pub fn apply_text(report: &Report, style: &Style) -> String {
    let mut out = String::new();
    for r in &report.results {
        // Changes never started are listed once, below the summary.
        if r.change.action == Action::NoOp || r.outcome == Outcome::NotStarted {
            continue;
        }
        let status = match r.outcome {
            Outcome::Applied => style.green("done"),
            Outcome::Failed => style.red("FAILED"),
            Outcome::UnderWay => style.yellow("under way, may or may not have landed"),
            // A late re-read found it made by someone else. A prune's delete has no manifest.
            Outcome::Unchanged if r.change.action == Action::Delete => {
                style.yellow("already without a policy: changed since kpr read it, nothing deleted")
            }
            Outcome::Unchanged => style
                .yellow("already as the manifest asks: changed since kpr read it, nothing written"),
            Outcome::NotStarted => String::new(),
        };
        // Located as in the plan above it: a failure is fixed in its file.
        let _ = writeln!(
            out,
            "{} {} {}  {status}",
            symbol(r.change.action, style),
            r.change.kind,
            located(&r.change.arn, r.change.source.as_ref(), style)
        );
    }
    let failures: Vec<Failure> = report.failures().cloned().collect();
    if !failures.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            style.red(&format!("{} resource(s) failed:", failures.len()))
        );
        failures_text(&mut out, &failures, style);
    }
    let _ = writeln!(out, "{}", summary_line("Apply", &report.summary(), style));
    if let Some(i) = &report.interrupted {
        if i.not_started == 0 {
            let line = format!(
                "Interrupted by {}, after every change had started: each ended as shown above.",
                i.by
            );
            let _ = writeln!(out, "{}", style.yellow(&line));
        } else {
            let line = format!(
                "Interrupted by {}: {} change(s) not started, nothing written for them; apply \
                 again to make them:",
                i.by, i.not_started
            );
            let _ = writeln!(out, "{}", style.yellow(&line));
            let never = report
                .results
                .iter()
                .filter(|r| r.outcome == Outcome::NotStarted)
                .map(|r| &r.change);
            list_some(
                &mut out,
                never.map(|c| (c.arn.as_str(), c.source.as_ref())),
                i.not_started,
                style,
            );
        }
    }
    out
}

#[derive(Serialize)]
struct PlanJson<'a> {
    format_version: &'static str,
    kind: &'static str,
    summary: Summary,
    resources: &'a [Change],
    failures: &'a [Failure],
    diagnostics: &'a [Diagnostic],
    #[serde(skip_serializing_if = "Option::is_none")]
    targeted: Option<Targeted>,
}

/// With `--target`: how many declared resources the run took, of how many the manifests
/// declare. Without it a pipeline could take a targeted "no changes" for the whole set.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Targeted {
    pub planned: usize,
    pub declared: usize,
}

/// `diagnostics`: the manifests' warnings (lint), which a pull-request comment built from the
/// JSON must not lose.
pub fn plan_json(plan: &Plan, diagnostics: &[Diagnostic], targeted: Option<usize>) -> String {
    let doc = PlanJson {
        format_version: FORMAT_VERSION,
        kind: "plan",
        summary: plan.summary(),
        resources: &plan.changes,
        failures: &plan.failures,
        diagnostics,
        targeted: targeted.map(|declared| Targeted {
            planned: plan.planned(),
            declared,
        }),
    };
    serde_json::to_string_pretty(&doc).expect("plan serialises") + "\n"
}

#[derive(Serialize)]
struct ApplyJson<'a> {
    format_version: &'static str,
    kind: &'static str,
    summary: Summary,
    resources: &'a [crate::apply::ResourceResult],
    failures: Vec<Failure>,
    interrupted: Option<&'a crate::apply::Interrupted>,
    diagnostics: &'a [Diagnostic],
    #[serde(skip_serializing_if = "Option::is_none")]
    targeted: Option<Targeted>,
}

pub fn apply_json(
    report: &Report,
    diagnostics: &[Diagnostic],
    targeted: Option<Targeted>,
) -> String {
    let doc = ApplyJson {
        format_version: FORMAT_VERSION,
        kind: "apply",
        summary: report.summary(),
        resources: &report.results,
        failures: report.failures().cloned().collect(),
        interrupted: report.interrupted.as_ref(),
        diagnostics,
        targeted,
    };
    serde_json::to_string_pretty(&doc).expect("report serialises") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_targeted_note_speaks_of_others_only_when_there_are_some() {
        let plain = Style::detect(false);
        assert!(
            targeted_note(1, 0, 3, &plain)
                .contains("1 of the 3 declared resource(s); the others were not read.")
        );
        let all = targeted_note(1, 0, 1, &plain);
        assert!(
            all.contains("1 of the 1 declared resource(s); no other was declared."),
            "{all}"
        );
    }

    fn failure(arn: &str, message: &str) -> Failure {
        Failure {
            arn: arn.into(),
            source: Some(Source {
                file: format!("{arn}.yaml").into(),
                line: 1,
            }),
            operation: Some("GetResourcePolicy"),
            code: None,
            retryable: false,
            message: message.into(),
        }
    }

    fn denied(arn: &str) -> String {
        format!(
            "GetResourcePolicy: AccessDeniedException: User: arn:aws:iam::111122223333:user/ci \
             is not authorized to perform: kinesis:GetResourcePolicy on resource: {arn} because \
             no identity-based policy allows the kinesis:GetResourcePolicy action"
        )
    }

    /// The text diff reads bare account ids in the resource's partition, as plan compares:
    /// an update must show what differs.
    #[test]
    fn a_statement_diff_reads_principals_in_the_resources_partition() {
        let deny = |principal: &str| {
            PolicyDocument::from_value(&serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Deny", "Principal": {"AWS": principal},
                    "Action": "kinesis:*", "Resource": "*"}]
            }))
            .unwrap()
        };
        let (live, want) = (deny("arn:aws:iam::444455556666:root"), deny("444455556666"));
        let diff = |partition| statement_diff(Some(&live), None, Some(&want), partition);
        assert!(diff(Some("aws")).is_empty());
        let lines = diff(Some("aws-cn")).join("\n");
        assert!(
            lines.contains("arn:aws:iam::444455556666:root") && lines.contains("\"444455556666\""),
            "{lines}"
        );
    }

    fn statements(statements: serde_json::Value) -> PolicyDocument {
        PolicyDocument::from_value(&serde_json::json!({
            "Version": "2012-10-17", "Statement": statements
        }))
        .unwrap()
    }

    fn read_by(role: &str, sid: Option<&str>) -> serde_json::Value {
        let mut s = serde_json::json!({"Effect": "Allow",
            "Principal": {"AWS": [format!("arn:aws:iam::111122223333:role/{role}"),
                "arn:aws:iam::111122223333:role/audit"]},
            "Action": ["kinesis:GetRecords", "kinesis:GetShardIterator"], "Resource": "*"});
        if let Some(sid) = sid {
            s["Sid"] = sid.into();
        }
        s
    }

    /// Context lines read as the new side has them: an action added at the end of a list
    /// shows the line before it with its comma.
    #[test]
    fn context_lines_are_the_new_sides() {
        let before = statements(serde_json::json!([read_by("etl", Some("Read"))]));
        let mut more = read_by("etl", Some("Read"));
        more["Action"] = serde_json::json!([
            "kinesis:GetRecords",
            "kinesis:GetShardIterator",
            "kinesis:ListShards"
        ]);
        let after = statements(serde_json::json!([more]));
        let lines = statement_diff(Some(&before), None, Some(&after), None);
        let at = lines
            .iter()
            .position(|l| l.contains("+") && l.contains("kinesis:ListShards"))
            .unwrap_or_else(|| panic!("{lines:#?}"));
        assert!(
            lines[at - 1]
                .trim_end()
                .ends_with("\"kinesis:GetShardIterator\","),
            "{lines:#?}"
        );
    }

    /// An edit of a statement without a Sid, or one that renames its Sid, shows the lines it
    /// changed; a statement unlike any other is still shown whole.
    #[test]
    fn an_edited_statement_shows_its_changed_lines_with_or_without_a_sid() {
        let deny = serde_json::json!({"Effect": "Deny", "Principal": "*",
            "Action": "kinesis:DeleteStream", "Resource": "*"});
        let before = statements(serde_json::json!([read_by("etl", None), deny]));
        let after = statements(serde_json::json!([read_by("billing", None)]));
        let lines = statement_diff(Some(&before), None, Some(&after), None);
        let headers: Vec<&String> = lines.iter().filter(|l| l.contains(" statement ")).collect();
        assert!(
            headers.len() == 2
                && headers.iter().any(|h| h.starts_with("~ statement #"))
                && headers.iter().any(|h| h.starts_with("- statement #")),
            "{lines:#?}"
        );
        let added: Vec<&String> = lines.iter().filter(|l| l.starts_with("+   ")).collect();
        assert!(
            added.len() == 1 && added[0].contains("role/billing"),
            "{lines:#?}"
        );

        let before = statements(serde_json::json!([read_by("etl", Some("Etl"))]));
        let after = statements(serde_json::json!([read_by("etl", Some("Pipeline"))]));
        let lines = statement_diff(Some(&before), None, Some(&after), None);
        assert_eq!(
            lines[0], "~ statement Etl -> Pipeline (Allow)",
            "{lines:#?}"
        );
        let changed: Vec<&String> = lines[1..]
            .iter()
            .filter(|l| l.starts_with(['-', '+']))
            .collect();
        assert!(
            changed.len() == 2 && changed.iter().all(|l| l.contains("\"Sid\"")),
            "{lines:#?}"
        );
        // The Action lines are more than three lines away: left out, the key the next lines
        // are under said.
        assert!(
            lines[1] == "    ... \"Principal\": {"
                && !lines.iter().any(|l| l.contains("kinesis:GetRecords")),
            "{lines:#?}"
        );
    }

    /// A message may quote a policy: its lines stay lines, each escaped.
    #[test]
    fn a_quoted_message_cannot_forge_plan_lines() {
        assert_eq!(
            indented("key \"Bo\u{202e}gus\u{1b}[31m\nPlan: 0 to create\""),
            "key \"Bo\\u{202e}gus\\u{1b}[31m\n    Plan: 0 to create\""
        );
    }

    /// Whom a change starts and stops naming, by effect, in canonical form (an account's
    /// root as its id); a principal kept is not mentioned.
    #[test]
    fn the_access_summary_names_whom_a_change_adds_and_drops() {
        fn summary(
            before: Option<&PolicyDocument>,
            after: Option<&PolicyDocument>,
            partition: Option<&str>,
        ) -> Vec<String> {
            access_summary(&AccessChange::between(before, after, partition))
        }
        let deny_anyone = serde_json::json!({"Effect": "Deny", "Principal": "*",
            "Action": "kinesis:DeleteStream", "Resource": "*"});
        let service = serde_json::json!({"Effect": "Allow",
            "Principal": {"Service": "firehose.amazonaws.com"},
            "Action": "kinesis:GetRecords", "Resource": "*"});
        let before = statements(serde_json::json!([read_by("etl", None), deny_anyone]));
        let mut billing = read_by("billing", None);
        billing["Principal"]["AWS"][1] = "111122223333".into();
        let after = statements(serde_json::json!([billing, service]));
        assert_eq!(
            summary(Some(&before), Some(&after), Some("aws")),
            [
                "allows now: 111122223333, Service firehose.amazonaws.com, \
                 arn:aws:iam::111122223333:role/billing",
                "allows no longer: arn:aws:iam::111122223333:role/audit, \
                 arn:aws:iam::111122223333:role/etl",
                "denies no longer: *",
            ]
        );
        assert!(summary(Some(&after), Some(&after), None).is_empty());
        // Any AWS principal reads `*`, as anyone does: JSON gates written against
        // `allows_now` holding "*" keep working within format_version 1; unconditioned, it is
        // public, and the plan leads with that.
        let mut any_aws = read_by("etl", None);
        any_aws["Principal"] = serde_json::json!({"AWS": "*"});
        assert_eq!(
            summary(
                None,
                Some(&statements(serde_json::json!([any_aws.clone()]))),
                None
            ),
            [
                "becomes public: anyone may make the calls it allows (no Condition limits who)",
                "allows now: *"
            ]
        );
        // A live policy kpr cannot parse may have been public already: not "becomes".
        let unknown = crate::policy::AccessChange {
            allows_now: vec!["*".into()],
            before_unknown: true,
            public_after: true,
            ..Default::default()
        };
        let lines = access_summary(&unknown);
        assert!(
            lines[0].starts_with("public after this change")
                && lines[0].ends_with("whether it was before is not known"),
            "{lines:?}"
        );
        // Limited to an organization: "*" still, but not public.
        let mut org = any_aws;
        org["Condition"] = serde_json::json!({"StringEquals": {"aws:PrincipalOrgID": "o-abc"}});
        assert_eq!(
            summary(None, Some(&statements(serde_json::json!([org]))), None),
            ["allows now: *"]
        );
        // A NotPrincipal is read as its whole list: a member dropped from an Allow's list
        // gains access, which must not read as access withdrawn.
        let all_but = |spared: serde_json::Value| {
            let mut s = read_by("etl", None);
            s.as_object_mut().unwrap().remove("Principal");
            s["NotPrincipal"] = serde_json::json!({"AWS": spared});
            statements(serde_json::json!([s]))
        };
        let quarantined = "arn:aws:iam::111122223333:role/quarantined";
        assert_eq!(
            summary(
                Some(&all_but(serde_json::json!(["444455556666", quarantined]))),
                Some(&all_but(serde_json::json!(["444455556666"]))),
                Some("aws")
            ),
            [
                "allows now: all but 444455556666".to_string(),
                format!("allows no longer: all but [444455556666, {quarantined}]"),
            ]
        );
        // Everyone but nobody, in an Allow, is everyone, public: it must not read as no one.
        let mut all_but_nobody = read_by("etl", None);
        all_but_nobody.as_object_mut().unwrap().remove("Principal");
        all_but_nobody["NotPrincipal"] = serde_json::json!({"AWS": []});
        let public = statements(serde_json::json!([all_but_nobody]));
        assert_eq!(
            summary(Some(&public), None, None),
            ["no longer public", "allows no longer: all but nobody"]
        );
    }

    /// Text taken from a policy cannot forge plan lines: a Sid's control characters are
    /// escaped, and every line of an unparsable live policy is marked as removed.
    #[test]
    fn text_from_a_policy_cannot_pass_for_plan_lines() {
        let forged = "Audit\r~ statement Audit (comment only)\n\nPlan: 0 to create.\n\u{1b}[8m\
                      \u{9b}2K\u{85}\u{202e}desrever";
        let after = statements(serde_json::json!([read_by("etl", Some(forged))]));
        let raw = "{\n  \"Statement\": [\n    {\"Principal\": \"*\"}\n  ]\n}";
        let lines = statement_diff(None, Some(raw), Some(&after), None);
        assert!(
            lines
                .iter()
                .all(|l| !l.chars().any(|c| c.is_control() || c == '\u{202e}')),
            "{lines:#?}"
        );
        assert!(
            lines.iter().all(|l| l.starts_with(['-', '+'])),
            "{lines:#?}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with('-')).count(),
            6,
            "{lines:#?}"
        );
    }

    /// Dropping a list's last item takes the comma off the item before it: not a change.
    #[test]
    fn a_moved_comma_is_no_change_in_a_statement_diff() {
        let doc = |actions: &[&str]| {
            PolicyDocument::from_value(&serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [{"Sid": "Read", "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::111122223333:role/r"},
                    "Action": actions, "Resource": "*"}]
            }))
            .unwrap()
        };
        let before = doc(&[
            "kinesis:DescribeStream",
            "kinesis:ListShards",
            "kinesis:PutRecord",
        ]);
        let after = doc(&["kinesis:DescribeStream", "kinesis:ListShards"]);
        let lines = statement_diff(Some(&before), None, Some(&after), None);
        let changed: Vec<&String> = lines.iter().filter(|l| l.starts_with(['-', '+'])).collect();
        assert!(
            changed.len() == 1 && changed[0].contains("kinesis:PutRecord"),
            "{lines:#?}"
        );
    }

    /// How often an error was retried varies from resource to resource; it is still one
    /// error, said once with the range.
    #[test]
    fn errors_that_differ_only_by_their_attempts_are_said_once() {
        let style = Style { color: false };
        let refused = "GetResourcePolicy: dispatch failure: io error: Connection refused";
        let failures: Vec<Failure> = [2, 5, 3, 1]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let suffix = if *n > 1 {
                    format!(" (after {n} attempts)")
                } else {
                    String::new()
                };
                failure(
                    &format!("arn:aws:kinesis:us-east-1:1:stream/s{i}"),
                    &format!("{refused}{suffix}"),
                )
            })
            .collect();
        let mut out = String::new();
        failures_text(&mut out, &failures, &style);
        assert!(
            out.contains(&format!(
                "! failed 4 resources, all with the same error:\n    {refused} (after 2 to 5 attempts)\n"
            )),
            "{out}"
        );
        assert_eq!(out.matches("! failed").count(), 1, "{out}");
        assert_eq!(
            crate::kinesis::split_attempts("x (after 12 attempts)"),
            ("x", Some(12))
        );
        assert_eq!(
            crate::kinesis::split_attempts("x (after many attempts)"),
            ("x (after many attempts)", None)
        );
    }

    #[test]
    fn errors_that_differ_only_by_their_resource_are_said_once() {
        let style = Style { color: false };
        let arns: Vec<String> = (0..3)
            .map(|i| format!("arn:aws:kinesis:us-east-1:111122223333:stream/s{i}"))
            .collect();
        let mut failures: Vec<Failure> = arns.iter().map(|a| failure(a, &denied(a))).collect();
        // Another resource's name in the message is not this resource's: its own group.
        failures.push(failure(
            "arn:aws:kinesis:us-east-1:111122223333:stream/x",
            &denied(&arns[0]),
        ));
        let mut out = String::new();
        failures_text(&mut out, &failures, &style);
        assert!(
            out.contains(&format!(
                "! failed 3 resources, all with the same error (<ARN> is each one's ARN):\n    {}\n",
                denied("<ARN>")
            )),
            "{out}"
        );
        for a in &arns {
            assert!(out.contains(&format!("\n  {a}  ({a}.yaml:1)\n")), "{out}");
        }
        // The odd one out keeps its message as AWS wrote it.
        assert!(
            out.contains(&format!(
                "! failed arn:aws:kinesis:us-east-1:111122223333:stream/x  \
                 (arn:aws:kinesis:us-east-1:111122223333:stream/x.yaml:1)\n    {}\n",
                denied(&arns[0])
            )),
            "{out}"
        );
        assert_eq!(out.matches("! failed").count(), 2, "{out}");
    }

    #[test]
    fn only_a_mention_of_the_resource_itself_is_masked() {
        let s = "arn:aws:kinesis:us-east-1:111122223333:stream/a";
        let c = "arn:aws:kinesis:us-east-1:111122223333:stream/a/consumer/c";
        assert_eq!(
            mask_arn(&format!("on {s}."), s).as_deref(),
            Some("on <ARN>.")
        );
        assert_eq!(mask_arn(s, s).as_deref(), Some("<ARN>"));
        assert_eq!(
            mask_arn(&format!("'{s}' and \"{s}\""), s).as_deref(),
            Some("'<ARN>' and \"<ARN>\"")
        );
        // A consumer declared by name, named by AWS with its creation timestamp.
        assert_eq!(
            mask_arn(&format!("on resource: {c}:1700000000 because"), c).as_deref(),
            Some("on resource: <ARN> because")
        );
        // Longer names that merely start with the resource's are other resources.
        for other in [
            format!("{s}b"),
            format!("{s}/consumer/c"),
            format!("{s}.x"),
            format!("x{s}"),
        ] {
            assert_eq!(mask_arn(&format!("on {other} now"), s), None, "{other}");
        }
        assert_eq!(mask_arn("no credentials", s), None);
        assert_eq!(mask_arn("anything", ""), None);
    }

    #[test]
    fn an_interrupted_apply_counts_changes_not_started_apart_from_failures() {
        use crate::apply::{Interrupted, ResourceResult};
        let result = |name: &str, outcome| {
            let arn = format!("arn:aws:kinesis:us-east-1:111122223333:stream/{name}");
            let mut change = Change::new(crate::arn::ResourceArn::parse(&arn).unwrap());
            change.action = Action::Create;
            ResourceResult {
                change,
                outcome,
                error: None,
            }
        };
        let report = Report {
            results: vec![
                result("done", Outcome::Applied),
                result("never", Outcome::NotStarted),
            ],
            plan_failures: Vec::new(),
            interrupted: Some(Interrupted {
                by: "SIGTERM",
                not_started: 1,
                hard_stop: None,
            }),
        };
        assert!(report.incomplete());
        let json: serde_json::Value =
            serde_json::from_str(&apply_json(&report, &[], None)).unwrap();
        assert_eq!(
            json["summary"],
            serde_json::json!({"create": 1, "update": 0, "delete": 0, "unchanged": 0,
                               "failed": 0, "not_started": 1})
        );
        assert_eq!(json["resources"][1]["outcome"], "not_started");
        assert_eq!(json["failures"], serde_json::json!([]));
        assert_eq!(
            json["interrupted"],
            serde_json::json!({"by": "SIGTERM", "not_started": 1})
        );
        // A plan never has any: the key stays out of its summary.
        let plan: serde_json::Value =
            serde_json::from_str(&plan_json(&Plan::default(), &[], None)).unwrap();
        assert!(plan["summary"].get("not_started").is_none(), "{plan}");
        let text = apply_text(&report, &Style { color: false });
        assert!(
            text.ends_with(
                "Apply: 1 created, 0 updated, 0 deleted, 0 unchanged, 1 not started.\n\
                 Interrupted by SIGTERM: 1 change(s) not started, nothing written for them; \
                 apply again to make them:\n  \
                 arn:aws:kinesis:us-east-1:111122223333:stream/never\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches("stream/never").count(), 1, "{text}");
    }

    #[test]
    fn a_shared_error_is_said_once_over_its_resources() {
        let style = Style { color: false };
        let shared = "GetResourcePolicy: no credentials: none in the chain";
        let mut failures: Vec<Failure> = (0..12)
            .map(|i| failure(&format!("s{i:02}"), shared))
            .collect();
        failures.insert(
            3,
            failure("own", "GetResourcePolicy: AccessDeniedException: no"),
        );
        let mut out = String::new();
        failures_text(&mut out, &failures, &style);
        assert_eq!(out.matches(shared).count(), 1, "{out}");
        assert!(
            out.contains("! failed 12 resources, all with the same error:"),
            "{out}"
        );
        for i in 0..SHARED_ERROR_LISTED {
            assert!(
                out.contains(&format!("  s{i:02}  (s{i:02}.yaml:1)\n")),
                "{out}"
            );
        }
        assert!(!out.contains("s10 "), "{out}");
        assert!(
            out.contains("and 2 more (`--output json` lists every one)"),
            "{out}"
        );
        // Groups come in the order their first failure did.
        assert!(out.find("12 resources") < out.find("! failed own"), "{out}");
        // An error of its own keeps the one-resource form.
        assert!(
            out.contains(
                "! failed own  (own.yaml:1)\n    GetResourcePolicy: AccessDeniedException: no\n"
            ),
            "{out}"
        );

        let mut two = String::new();
        failures_text(&mut two, &failures[..2], &style);
        assert!(two.contains("! failed 2 resources"), "{two}");
        assert!(!two.contains("more"), "{two}");

        let mut lines = String::new();
        failures_text(
            &mut lines,
            &[failure("a", "no credentials:\n  Environment: not set")],
            &style,
        );
        assert!(
            lines.contains("    no credentials:\n      Environment: not set\n"),
            "{lines}"
        );
    }
}
