//! `kpr import`: bring an existing estate under git. Reads every stream's and consumer's policy
//! in one (account, region) and writes one manifest per resource that has one, in a form that
//! `kpr plan` then finds in sync.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::Serialize;

use crate::arn::{ResourceArn, Scope, partition_of};
use crate::kinesis::{ApiError, Kinesis, Resilient, concurrently};
use crate::policy::PolicyDocument;
use crate::policy::lint::{self, LintContext};

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub region: String,
    pub account: Option<String>,
    pub out: PathBuf,
    pub concurrency: usize,
    pub max_policy_size: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub written: Vec<PathBuf>,
    /// Resources without a policy: nothing to manage yet.
    pub without_policy: usize,
    /// Files that already existed and were left untouched.
    pub skipped_existing: Vec<PathBuf>,
    /// Lint findings of imported policies (e.g. a Resource that does not match): the manifest
    /// is written anyway, as it is the truth of today, and `kpr validate` will flag it.
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// `opts.out` must exist: the caller creates it before any call, so a bad path costs none.
pub async fn import<K: Kinesis>(
    api: &Resilient<K>,
    opts: &ImportOptions,
) -> Result<ImportReport, ApiError> {
    let mut scope = Scope {
        partition: partition_of(&opts.region).to_string(),
        region: opts.region.clone(),
        account: opts.account.clone().unwrap_or_default(),
    };
    let mut streams = api.list_streams(&scope).await?;
    if opts.account.is_none()
        && let Some(first) = streams.first()
    {
        let real = api.describe_stream_arn(&scope, &first.stream).await?;
        scope = real.scope;
        for s in &mut streams {
            s.scope = scope.clone();
        }
    }
    let consumers: Vec<Result<Vec<ResourceArn>, ApiError>> =
        concurrently(&streams, opts.concurrency, |s| api.list_consumers(s))
            .collect()
            .await;
    let mut resources = streams.clone();
    let mut report = ImportReport::default();
    for c in consumers {
        match c {
            Ok(c) => resources.extend(c),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    let policies: Vec<(ResourceArn, Result<Option<String>, ApiError>)> =
        concurrently(resources, opts.concurrency, |arn| async move {
            // A consumer listed without a timestamp (moto) cannot be addressed directly.
            let target = if arn.needs_resolution() {
                match api.describe_consumer(&arn).await {
                    Ok(t) => t,
                    Err(e) => return (arn, Err(e)),
                }
            } else {
                arn.clone()
            };
            let p = api.get_policy(&target).await;
            (arn, p)
        })
        .collect()
        .await;
    let mut policies: Vec<_> = policies.into_iter().collect();
    policies.sort_by(|a, b| a.0.cmp(&b.0));
    let mut names = FileNames::default();
    for (arn, policy) in policies {
        match policy {
            Ok(None) => report.without_policy += 1,
            Ok(Some(raw)) => {
                let id = arn.identity();
                let path = opts.out.join(names.next(&id));
                write_manifest(&id, &path, &raw, opts, &mut report);
            }
            Err(e) => report.errors.push(format!("{arn}: {e}")),
        }
    }
    Ok(report)
}

/// One file name per imported resource. Every resource must get a manifest the loader reads,
/// or an `apply --prune` would later delete its policy: so no name is hidden (a stream may be
/// called `.audit`, and the loader skips dot files), and none is given twice, even where
/// names meet (stream `a.consumer.b` and consumer `b` of stream `a`) or differ only in case
/// (on a case-insensitive disk). `@` is in no stream or consumer name, so the marks it makes
/// cannot collide with another resource's name.
#[derive(Default)]
struct FileNames {
    used: std::collections::HashSet<String>,
}

impl FileNames {
    fn next(&mut self, arn: &ResourceArn) -> String {
        let mut base = match &arn.consumer {
            None => arn.stream.clone(),
            Some(c) => format!("{}.consumer.{}", arn.stream, c.name),
        };
        if base.starts_with('.') {
            base.insert(0, '@');
        }
        let mut name = format!("{base}.yaml");
        let mut n = 1;
        while !self.used.insert(name.to_lowercase()) {
            n += 1;
            name = format!("{base}@{n}.yaml");
        }
        name
    }
}

fn write_manifest(
    arn: &ResourceArn,
    path: &Path,
    raw: &str,
    opts: &ImportOptions,
    report: &mut ImportReport,
) {
    let path = path.to_path_buf();
    if std::fs::symlink_metadata(&path).is_ok() {
        report.skipped_existing.push(path);
        return;
    }
    let doc = match PolicyDocument::from_json_str(raw) {
        Ok(d) => d,
        Err(e) => {
            report.errors.push(format!(
                "{arn}: live policy is not a valid policy document: {e}"
            ));
            return;
        }
    };
    let arn_text = arn.to_string();
    let findings = lint::lint(
        &doc,
        &LintContext {
            resource_arn: &arn_text,
            allow_public: true,
            max_size: opts.max_policy_size,
            size: raw.len(),
        },
    );
    // Importing states what is live today: a public grant is kept, and marked as deliberate
    // only so the manifest validates; a reviewer sees the flag in the pull request.
    let public = doc.statements().iter().any(lint::grants_public);
    for f in findings {
        report
            .warnings
            .push(format!("{}: {}: {}", path.display(), f.path, f.message));
    }
    // Write the live document itself (as YAML), not the canonical form: reviewers should
    // recognise what they see in the console.
    let value: serde_json::Value = serde_json::from_str(raw).expect("parsed above");
    let policy_yaml = serde_norway::to_string(&value).expect("JSON converts to YAML");
    let mut text = String::new();
    text.push_str(&format!(
        "# Imported by `kpr import` from the live policy of {}.\n",
        arn_text
    ));
    text.push_str(&format!("arn: {arn_text}\n"));
    if public {
        text.push_str(
            "# REVIEW: this policy grants access to any principal, with no condition that limits who calls.\n",
        );
        text.push_str("allowPublic: true\n");
    }
    text.push_str("policy:\n");
    for line in policy_yaml.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    // create_new: never overwrite, not even a file that appeared since the check, and never
    // write through a symlink.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    match written {
        Ok(()) => report.written.push(path),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            report.skipped_existing.push(path)
        }
        Err(e) => report.errors.push(format!("{}: {e}", path.display())),
    }
}

/// Shown after an import: what to do next.
pub fn next_steps(out: &Path) -> String {
    format!(
        "Next: review the files, commit them, and check that `kpr plan --dir {} --detailed-exitcode` exits 0.",
        out.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_gets_its_own_visible_file() {
        let mut names = FileNames::default();
        let arn = |s: &str| {
            ResourceArn::parse(&format!(
                "arn:aws:kinesis:us-east-1:111122223333:stream/{s}"
            ))
            .unwrap()
        };
        let got: Vec<String> = [
            arn("a.consumer.b"),
            arn("a/consumer/b:1700000000"),
            arn(".audit"),
            arn("Orders"),
            arn("orders"),
        ]
        .iter()
        .map(|a| names.next(&a.identity()))
        .collect();
        assert_eq!(
            got,
            [
                "a.consumer.b.yaml",
                "a.consumer.b@2.yaml",
                "@.audit.yaml",
                "Orders.yaml",
                "orders@2.yaml",
            ]
        );
    }
}
