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

impl ImportOptions {
    /// How kpr will load what import writes.
    fn load_options(&self) -> crate::manifest::LoadOptions {
        crate::manifest::LoadOptions {
            max_policy_size: self.max_policy_size,
            ..Default::default()
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub written: Vec<PathBuf>,
    /// Resources without a policy: nothing to manage yet.
    pub without_policy: usize,
    /// Files that already existed and were left untouched.
    pub skipped_existing: Vec<PathBuf>,
    /// Of those, the ones that declare the resource with a policy other than the live one:
    /// the next apply puts the file's back.
    pub differs_from_live: Vec<PathBuf>,
    /// Of those, the ones that declare the resource `ensure: absent`: the next apply deletes
    /// the live policy.
    pub pending_delete: Vec<PathBuf>,
    /// Of `written`, the policies kpr refuses, written for review (each also an error).
    pub for_review: usize,
    /// Lint findings of imported policies (e.g. a Resource that does not match): the manifest
    /// is written anyway, as it is the truth of today, and `kpr validate` will flag it.
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    /// Of `errors`, reads that failed (a policy, a stream's consumers): resources that may have
    /// a policy and have no file.
    pub unread: usize,
    /// Of `errors`, resources with a policy left without a file: one in the way at its name,
    /// or a write that failed.
    pub no_file: usize,
    /// Files under `--out` kpr cannot read all of (each also a warning): it refuses the
    /// directory until they are fixed.
    pub unreadable: usize,
    /// Resources declared under `--out` in this region that could not be checked against the
    /// listing: no stream listed, no `--account`, so the account's id is not known.
    pub unchecked: usize,
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
            Err(e) => {
                report.unread += 1;
                report.errors.push(e.to_string());
            }
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
    // What --out already declares, in any file: a re-run, or files a team renamed or moved
    // since, must not get a second manifest for one resource (the set would not validate).
    let mut declared = std::collections::HashMap::new();
    let mut names = FileNames::default();
    let mut unreadable_files = Vec::new();
    for crate::manifest::FileDeclarations {
        file,
        named,
        unreadable,
    } in crate::manifest::declarations_below(&opts.out)
    {
        if unreadable {
            unreadable_files.push(file.clone());
        }
        // A file kpr cannot read all of may declare the resource its name is for: that
        // resource's write then finds it in the way and says so, rather than going elsewhere.
        if !unreadable
            && file.parent() == Some(opts.out.as_path())
            && let Some(name) = file.file_name()
        {
            names.used.insert(name.to_string_lossy().to_lowercase());
        }
        for (text, _) in named {
            if let Ok(arn) = ResourceArn::parse(&text) {
                declared
                    .entry(arn.identity())
                    .or_insert_with(|| file.clone());
            }
        }
    }
    let listed: std::collections::HashSet<ResourceArn> =
        policies.iter().map(|(arn, _)| arn.identity()).collect();
    for (arn, policy) in policies {
        let id = arn.identity();
        match policy {
            // A file declaring it is judged as with a policy: its policy put back, or a
            // registration gone, must not pass unsaid on a re-run.
            Ok(None) => {
                report.without_policy += 1;
                if let Some(file) = declared.get(&id) {
                    keep_existing(&arn, None, file.clone(), opts, &mut report);
                }
            }
            Ok(Some(raw)) => match declared.get(&id) {
                Some(file) => keep_existing(&arn, Some(&raw), file.clone(), opts, &mut report),
                None => {
                    let path = opts.out.join(names.next(&id));
                    write_manifest(&arn, &path, &raw, opts, &mut report);
                }
            },
            Err(e) => {
                report.unread += 1;
                report.errors.push(format!("{arn}: {e}"));
            }
        }
    }
    // What --out declares in this account and region that the listing no longer holds: plan
    // fails for it. Only when every listing came back: a consumer not listed may still be.
    if report.unread == 0 {
        let mut gone: Vec<(&ResourceArn, &PathBuf)> = declared
            .iter()
            .filter(|(id, _)| {
                id.scope.account == scope.account
                    && id.scope.region == scope.region
                    && !listed.contains(*id)
            })
            .collect();
        gone.sort();
        for (id, file) in gone {
            report.errors.push(format!(
                "{id}: {} declares it, and it does not exist now (deleted since?): plan fails \
                 for it; remove the document that declares it (other documents of that file \
                 may declare live resources)",
                file.display()
            ));
        }
        // No stream listed, no --account: whose files are this account's cannot be told.
        if scope.account.is_empty() {
            let here = declared
                .keys()
                .filter(|id| id.scope.region == scope.region)
                .count();
            if here > 0 {
                report.unchecked = here;
                report.warnings.push(format!(
                    "no stream was listed in {}, so kpr cannot tell this account's id: {here} \
                     resource(s) there declared under --out may have been deleted since (plan \
                     fails for them); run import with --account to check",
                    scope.region
                ));
            }
        }
    }
    report.unreadable = unreadable_files.len();
    for file in unreadable_files {
        report.warnings.push(format!(
            "{}: kpr cannot read all of it, and refuses the directory until it is fixed; it may \
             also declare a resource imported here, which would then be declared twice \
             (`kpr validate --dir` says why)",
            file.display()
        ));
    }
    Ok(report)
}

/// One file name per imported resource. Every resource must get a manifest the loader reads,
/// or an `apply --prune` would later delete its policy: so no name is hidden (a stream may be
/// called `.audit`, and the loader skips dot files), and none is given twice, even where
/// names meet (stream `a.consumer.b` and consumer `b` of stream `a`) or differ only in case
/// (on a case-insensitive disk). `@` is in no stream or consumer name, so the marks it makes
/// cannot collide with another resource's name.
/// The longest name before `.yaml` and an `@N` mark, within the 255 bytes of a file name.
const MAX_BASE: usize = 200;

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
        // File systems take 255 bytes a name, and a stream and a consumer name may have 128
        // each: a long name keeps its start and a digest of the whole, which stays unique.
        if base.len() > MAX_BASE {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(base.as_bytes());
            let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
            base.truncate(MAX_BASE - 20);
            base = format!("{base}@{hex}");
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

/// How the file at `path` declares `arn`, in one of its documents, valid or not (a file import
/// wrote for review declares its resource, and blocks prune as it is), read as the loader reads
/// it. Only a regular file the loader would read: not a FIFO, a device, or more than it reads.
#[derive(Debug, PartialEq, Eq)]
enum Declared {
    No,
    /// Some document could not be read, and none readable names `arn`.
    Unreadable,
    Present,
    /// `ensure: absent`: apply would delete the policy import found.
    Absent,
    /// Pinned to a registration of the consumer other than the live one, written so: plan
    /// fails for it, and the live registration's policy has no manifest.
    OtherRegistration(String),
}

/// The file at `path`, when it is one the loader would read: a regular file within its size
/// limit (not a FIFO, a device, or more than it reads).
fn existing(path: &Path) -> Option<Vec<u8>> {
    let regular = std::fs::metadata(path)
        .is_ok_and(|m| m.is_file() && m.len() <= crate::manifest::MAX_FILE_BYTES);
    regular.then(|| std::fs::read(path).ok()).flatten()
}

fn declares(bytes: Option<&[u8]>, arn: &ResourceArn) -> Declared {
    let Some(bytes) = bytes else {
        return Declared::Unreadable;
    };
    let (named, unreadable) = crate::manifest::declared_in(bytes);
    let ours = named.into_iter().find_map(|(text, ensure)| {
        let declared = ResourceArn::parse(&text).ok()?;
        declared
            .same_resource(arn)
            .then_some((text, declared, ensure))
    });
    let created = |a: &ResourceArn| a.consumer.as_ref().and_then(|c| c.created);
    match ours {
        Some((text, declared, _))
            if created(&declared).is_some()
                && created(arn).is_some()
                && created(&declared) != created(arn) =>
        {
            Declared::OtherRegistration(text)
        }
        Some((_, _, crate::manifest::Ensure::Absent)) => Declared::Absent,
        Some(_) => Declared::Present,
        None if unreadable => Declared::Unreadable,
        None => Declared::No,
    }
}

/// A file is already at `path`: it is kept, and it is an error unless it declares `arn` as
/// present and kpr accepts it.
///
/// `live`: the resource as listed (a consumer with its registration's epoch).
fn keep_existing(
    live: &ResourceArn,
    raw: Option<&str>,
    path: PathBuf,
    opts: &ImportOptions,
    report: &mut ImportReport,
) {
    let arn = &live.identity();
    let bytes = existing(&path);
    match declares(bytes.as_deref(), live) {
        Declared::Present => {
            // Most likely import's own file for review, from an earlier run: still refused.
            let bytes = bytes.unwrap_or_default();
            match crate::manifest::load_bytes(&path, &bytes, &opts.load_options()).into_result() {
                Err(_) => report.errors.push(format!(
                    "{arn}: {} exists and declares it, but kpr refuses the file: fix it \
                     (`kpr validate --dir` says why)",
                    path.display()
                )),
                // Valid, yet plan fails for a registration that is gone: as the run that
                // wrote it said.
                Ok(state) => {
                    let gone = state.resources.iter().find_map(|r| match &r.intent {
                        crate::manifest::Intent::Present { document, .. }
                            if r.arn.same_resource(live) =>
                        {
                            match pinned_registration(document, live) {
                                Some(Pinned::Gone(message)) => Some(message),
                                _ => None,
                            }
                        }
                        _ => None,
                    });
                    if let Some(message) = gone {
                        report.errors.push(format!(
                            "{arn}: {} declares it, and its {}",
                            path.display(),
                            one_line(&message)
                        ));
                    } else if differs_from_live(&state, live, raw) {
                        report.differs_from_live.push(path.clone());
                    }
                }
            }
        }
        Declared::Unreadable => {
            report.no_file += usize::from(raw.is_some());
            report.errors.push(format!(
                "{arn}: {} exists and kpr cannot read what it declares; not overwritten, so \
                 {arn} may have no manifest, and a later `apply --prune` would delete its \
                 policy: fix or move the file, or import into an empty directory",
                path.display()
            ))
        }
        Declared::No => {
            report.no_file += usize::from(raw.is_some());
            report.errors.push(format!(
                "{arn}: {} exists and does not declare it; not overwritten, so {arn} has no \
                 manifest and a later `apply --prune` would delete its policy: import into an \
                 empty directory",
                path.display()
            ))
        }
        Declared::OtherRegistration(declared) => report.errors.push(format!(
            "{arn}: {} exists and declares {declared}, a registration that is gone (the \
             consumer is registered now as {live}): plan fails for it, and the live policy has \
             no manifest. Declare the consumer by name ({arn}) to follow re-registration",
            path.display()
        )),
        // A deletion pending: kept, and said, as a hand edit is (a live policy that grants
        // nothing, `Statement: []`, is one lint suggests).
        Declared::Absent if raw.is_some() => report.pending_delete.push(path.clone()),
        Declared::Absent => {}
    }
    report.skipped_existing.push(path);
}

/// Whether `state` declares `live` with a policy that is not equivalent to `raw`, the live one
/// (`None`: it has none).
fn differs_from_live(
    state: &crate::manifest::DesiredState,
    live: &ResourceArn,
    raw: Option<&str>,
) -> bool {
    let declared = state.resources.iter().find_map(|r| match &r.intent {
        crate::manifest::Intent::Present { document, .. } if r.arn.same_resource(live) => {
            Some(document)
        }
        _ => None,
    });
    declared.is_some_and(|d| {
        raw.is_none_or(|raw| {
            PolicyDocument::from_json_str(raw)
                .map_or(true, |l| !l.equivalent_in(d, &live.scope.partition))
        })
    })
}

/// A Resource of `doc` that names one registration (`<consumer>:<digits>`) of `consumer`.
fn pinned_epoch<'a>(doc: &'a PolicyDocument, consumer: &str) -> Option<&'a str> {
    doc.statements()
        .iter()
        .flat_map(|s| s.resources().unwrap_or_default())
        .map(String::as_str)
        .find(|r| lint::names_one_registration(r, consumer))
}

/// A consumer's policy whose Resource names one registration (`<consumer>:<epoch>`).
enum Pinned<'a> {
    /// The live one: it grants nothing once the consumer is registered again.
    Live(&'a str),
    /// One that is gone: the grant matches nothing, and plan fails for it (the message).
    Gone(String),
}

/// Whether `doc`, the policy of consumer `live` (as listed, with its registration's epoch),
/// names one registration in its Resource, and which.
fn pinned_registration<'a>(doc: &'a PolicyDocument, live: &ResourceArn) -> Option<Pinned<'a>> {
    let arn = live.identity();
    let arn_text = arn.to_string();
    let pinned = arn
        .needs_resolution()
        .then(|| pinned_epoch(doc, &arn_text))
        .flatten()?;
    let registered = live.consumer.as_ref().and_then(|c| c.created);
    if registered.is_some_and(|now| !pinned.ends_with(&format!(":{now}"))) {
        return Some(Pinned::Gone(format!(
            "Resource {pinned:?} names a registration of the consumer that is gone \
             (registered now as {live}): the grant matches nothing, and kpr plan fails for it. \
             Write \"{arn_text}:*\" to follow re-registration"
        )));
    }
    Some(Pinned::Live(pinned))
}

/// `live`: the resource as listed, a consumer with its registration's epoch; the manifest
/// names it by its identity.
fn write_manifest(
    live: &ResourceArn,
    path: &Path,
    raw: &str,
    opts: &ImportOptions,
    report: &mut ImportReport,
) {
    let arn = &live.identity();
    let path = path.to_path_buf();
    // An error said of the file written makes it one for review.
    let errors_before = report.errors.len();
    if std::fs::symlink_metadata(&path).is_ok() {
        keep_existing(live, Some(raw), path, opts, report);
        return;
    }
    let arn_text = arn.to_string();
    let mut text = String::new();
    text.push_str(&format!(
        "# Imported by `kpr import` from the live policy of {}.\n",
        arn_text
    ));
    text.push_str(&format!("arn: {arn_text}\n"));
    // What keeps this manifest from validating: each said in a REVIEW comment and as an
    // error. The file is written all the same: without a manifest a later `apply --prune`
    // would delete the policy, while this one stops every kpr run on the directory until
    // someone fixes it.
    let mut problems = Vec::new();
    // Read once, strictly (a key given twice is refused, not reduced to its last value), then
    // as a policy: PolicyDocument::from_json_str is these two steps.
    let value = crate::policy::strict_json(raw).map_err(crate::policy::PolicyError::from);
    let read = value.as_ref().map_err(ToString::to_string).and_then(|v| {
        PolicyDocument::from_value(v)
            .map(|doc| (v, doc))
            .map_err(|e| e.to_string())
    });
    let policy_yaml = match read {
        Ok((value, doc)) => {
            let findings = lint::lint(
                &doc,
                &LintContext {
                    resource_arn: &arn_text,
                    allow_public: true,
                    max_size: opts.max_policy_size,
                    // Measured as the loader will measure the manifest: compact JSON.
                    size: serde_json::to_string(value).map_or(raw.len(), |j| j.len()),
                },
            );
            for f in findings {
                match f.severity {
                    lint::Severity::Error => problems.push(format!("{}: {}", f.path, f.message)),
                    lint::Severity::Warning => report.warnings.push(one_line(&format!(
                        "{}: {}: {}",
                        path.display(),
                        f.path,
                        f.message
                    ))),
                }
            }
            // Importing states what is live today: a public grant is kept, and marked as
            // deliberate only so the manifest validates; a reviewer sees the flag in the pull
            // request.
            if doc.statements().iter().any(lint::grants_public) {
                text.push_str(
                    "# REVIEW: this policy grants access to any principal, with no condition that limits who calls.\n",
                );
                text.push_str("allowPublic: true\n");
            }
            // The manifest names the consumer without its epoch, so that it follows
            // re-registration; a Resource pinned to today's epoch would then grant nothing (and
            // plan refuses it). The policy is imported as it is, for a reviewer to widen.
            match pinned_registration(&doc, live) {
                Some(Pinned::Gone(message)) => {
                    // It validates, but plan refuses it: said here, not found at plan time.
                    text.push_str(&format!("# REVIEW: {}.\n", one_line(&message)));
                    report.errors.push(format!(
                        "{arn}: {}; written to {} for review",
                        one_line(&message),
                        path.display()
                    ));
                }
                Some(Pinned::Live(pinned)) => text.push_str(&format!(
                    "# REVIEW: Resource {pinned:?} names this registration of the consumer: \
                     once it is re-registered the grant matches nothing and kpr plan fails. \
                     Write \"{arn_text}:*\" to follow re-registration.\n"
                )),
                None => {}
            }
            // The live document itself (as YAML), not the canonical form: reviewers should
            // recognise what they see in the console.
            block_yaml(value)
        }
        Err(e) => {
            problems.push(format!("not a valid policy document: {e}"));
            // As YAML only when it is a JSON object read strictly: a lenient reader keeps the
            // last of a key given twice, which would make a document kpr accepts out of one
            // it refuses. Anything else goes in as the text itself, which the loader refuses
            // the same way.
            // A number JSON reads as a float (a decimal, an integer past 2^64) would be written
            // as the float's text, not the live one; IAM compares condition values as text.
            match &value {
                Ok(value @ serde_json::Value::Object(_)) if !has_inexact_number(value) => {
                    block_yaml(value)
                }
                Ok(value) if has_inexact_number(value) => {
                    problems.push(
                        "it holds numbers kpr cannot keep as written (a decimal, an integer past \
                         64 bits), so the policy below is the live JSON text: quote each such \
                         number in it (1.50 as \\\"1.50\\\"), as IAM compares them as text"
                            .into(),
                    );
                    format!("{}\n", yaml_scalar(raw))
                }
                _ => format!("{}\n", yaml_scalar(raw)),
            }
        }
    };
    let mut body = String::from("policy:\n");
    for line in policy_yaml.lines() {
        body.push_str("  ");
        body.push_str(line);
        body.push('\n');
    }
    // The file as kpr will read it: what the loader refuses that the checks above let through
    // (a character or a key YAML cannot carry as written) is a problem too.
    if problems.is_empty() {
        let whole = format!("{text}{body}");
        if let Err(errors) =
            crate::manifest::load_bytes(&path, whole.as_bytes(), &opts.load_options()).into_result()
        {
            // Lines as in the file written: below the header, after the REVIEW comment's two
            // lines and one per problem.
            let header = text.lines().count();
            let shift = 2 + errors.len();
            problems.extend(errors.iter().map(|e| match e.line {
                Some(line) if line > header => format!("line {}: {}", line + shift, e.message),
                Some(line) => format!("line {line}: {}", e.message),
                None => e.message.clone(),
            }));
        }
    }
    if !problems.is_empty() {
        text.push_str(
            "# REVIEW: kpr refuses this live policy as it is. Fix it here; until then kpr refuses\n\
             # this directory, so no `apply --prune` can delete the policy.\n",
        );
        for p in &problems {
            text.push_str(&format!("#   {}\n", one_line(p)));
        }
    }
    text.push_str(&body);
    // create_new: never overwrite, not even a file that appeared since the check, and never
    // write through a symlink.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    if !problems.is_empty() {
        // One line on a terminal too: the errors may quote the live policy's own keys.
        let refused = format!(
            "{arn}: live policy refused: {}",
            one_line(&problems.join("; "))
        );
        report.errors.push(match &written {
            Ok(()) => format!(
                "{refused}; written to {} for review: kpr refuses the directory until it is \
                 fixed",
                path.display()
            ),
            Err(_) => refused,
        });
    }
    match written {
        Ok(()) => {
            report.for_review += usize::from(report.errors.len() > errors_before);
            report.written.push(path);
        }
        // Appeared since the check above: judged as any file already there.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            keep_existing(live, Some(raw), path, opts, report)
        }
        Err(e) => {
            report.no_file += 1;
            report.errors.push(format!(
                "{arn}: writing {}: {e}; {arn} has no manifest, and a later `apply --prune` \
                 would delete its policy",
                path.display()
            ))
        }
    }
}

/// `s` on one line of a YAML comment: YAML also ends a line at CR, NEL, U+2028 and U+2029, and
/// the text (an error quoting the live policy) must not end the comment early; nor hold U+FFFE
/// or U+FFFF, which libyaml refuses even in a comment.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}') {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// `value` as block YAML that every YAML reader takes the same way. serde_norway writes YAML
/// 1.2, where `2012-10-17`, `on` and `yes` are strings, and leaves them plain; a YAML 1.1
/// reader (PyYAML, yamllint, many a pipeline's script) takes them for a date and booleans.
/// Here a string is plain only when it cannot be read as anything else by either.
fn block_yaml(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_block(&mut out, value, 0);
    out
}

fn write_block(out: &mut String, value: &serde_json::Value, indent: usize) {
    use serde_json::Value;
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                out.push_str(&pad);
                out.push_str(&yaml_scalar(k));
                out.push(':');
                write_child(out, v, indent);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for v in items {
                out.push_str(&pad);
                out.push('-');
                match v {
                    // A mapping in a list starts on the dash's line, its keys aligned after it.
                    Value::Object(map) if !map.is_empty() => {
                        let mut nested = String::new();
                        write_block(&mut nested, v, indent + 2);
                        out.push(' ');
                        out.push_str(&nested[indent + 2..]);
                    }
                    _ => write_child(out, v, indent),
                }
            }
        }
        _ => {
            out.push_str(&pad);
            out.push_str(&inline(value));
            out.push('\n');
        }
    }
}

/// Whether a number in `value` was read as a float, whose text may differ from the source's.
fn has_inexact_number(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(n) => !(n.is_i64() || n.is_u64()),
        Value::Array(a) => a.iter().any(has_inexact_number),
        Value::Object(m) => m.values().any(has_inexact_number),
        _ => false,
    }
}

/// What follows a key's colon or a list's dash: an inline value, or a nested block.
fn write_child(out: &mut String, value: &serde_json::Value, indent: usize) {
    use serde_json::Value;
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_block(out, value, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_block(out, value, indent + 2);
        }
        _ => {
            out.push(' ');
            out.push_str(&inline(value));
            out.push('\n');
        }
    }
}

fn inline(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => yaml_scalar(s),
        // YAML 1.1 wants a dot and a signed exponent in a float: `1e16` would be a string to
        // PyYAML, `1.0e+16` is a float to every reader.
        serde_json::Value::Number(n) => {
            let text = n.to_string();
            let Some((mantissa, exponent)) = text.split_once(['e', 'E']) else {
                return text;
            };
            let dot = if mantissa.contains('.') { "" } else { ".0" };
            let sign = if exponent.starts_with(['+', '-']) {
                ""
            } else {
                "+"
            };
            format!("{mantissa}{dot}e{sign}{exponent}")
        }
        // Booleans, null, `{}` and `[]` read the same in JSON and YAML.
        other => other.to_string(),
    }
}

/// A string as a YAML scalar: plain when it is safe to be, else JSON's double-quoted form,
/// which YAML reads the same.
fn yaml_scalar(s: &str) -> String {
    let first = s.bytes().next();
    let plain = first.is_some_and(|b| b.is_ascii_alphabetic() || b == b'$')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":/_.*${}@=+,-".contains(&b))
        && !s.contains("://")
        // A colon at the end makes a key of it.
        && !s.ends_with(':')
        // YAML 1.1's booleans and nulls (`y`, `On`, `NULL`, ...).
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "y" | "yes" | "n" | "no" | "true" | "false" | "on" | "off" | "null"
        );
    if plain {
        return s.to_string();
    }
    let quoted = serde_json::to_string(s).expect("a string serialises");
    // JSON leaves these raw; YAML reads NEL and the Unicode line and paragraph separators as
    // line breaks (folded to a space inside quotes) and refuses DEL and the C1 controls. The
    // bidi and zero-width characters would make the file read otherwise in the pull request
    // that commits it (`role/\u202Enimda` shown as `role/admin`).
    let raw_in_yaml = |c: char| {
        matches!(c, '\u{7f}'..='\u{9f}' | '\u{fffe}' | '\u{ffff}')
            || crate::manifest::reads_otherwise(c)
    };
    if !quoted.contains(raw_in_yaml) {
        return quoted;
    }
    let mut escaped = String::with_capacity(quoted.len() + 8);
    for c in quoted.chars() {
        if raw_in_yaml(c) {
            escaped.push_str(&format!("\\u{:04X}", c as u32));
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// Shown after an import: what to do next, as far as it went.
pub fn next_steps(out: &Path, report: &ImportReport) -> String {
    let plan = format!("`kpr plan --dir {} --detailed-exitcode`", out.display());
    // A resource left without a file (not read, or a file in the way): fixing the files there
    // cannot help, importing again does.
    if report.unread + report.no_file > 0 {
        format!(
            "Next: fix what the errors above name, then run this import again: a resource it \
             could not read or write a file for has no file yet, and `--prune` over this \
             directory would delete its policy. Then check that {plan} exits 0."
        )
    } else if !report.errors.is_empty() {
        format!("Next: fix what the errors above name, then check that {plan} exits 0.")
    } else if report.unreadable > 0 {
        format!(
            "Next: fix the files kpr cannot read (said above): it refuses the directory until \
             then. Then check that {plan} exits 0."
        )
    } else if report.unchecked > 0 {
        format!(
            "Next: run this import again with --account (the account's id) to check the files \
             said above, then check that {plan} exits 0."
        )
    } else if !report.differs_from_live.is_empty() || !report.pending_delete.is_empty() {
        let n = report.differs_from_live.len() + report.pending_delete.len();
        format!(
            "Next: {n} kept file(s) differ from the live policies (said above): `kpr plan --dir \
             {}` shows what `kpr apply` would change; commit the files when that is meant.",
            out.display()
        )
    } else if report.written.is_empty() && report.skipped_existing.is_empty() {
        "Next: nothing to review; give streams and consumers a policy, or import another \
         account or region."
            .into()
    } else if report.written.is_empty() {
        format!("Next: nothing new was written; check that {plan} exits 0.")
    } else {
        format!("Next: review the files, commit them, and check that {plan} exits 0.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hint fits what happened: no `plan` that would fail on an empty or refused directory.
    #[test]
    fn next_steps_fit_the_import() {
        let out = Path::new("mine");
        let mut report = ImportReport::default();
        assert!(next_steps(out, &report).contains("nothing to review"));
        report.skipped_existing.push(out.join("a.yaml"));
        assert!(next_steps(out, &report).contains("nothing new was written"));
        report.unreadable = 1;
        assert!(next_steps(out, &report).contains("fix the files kpr cannot read"));
        report.unreadable = 0;
        report.unchecked = 1;
        assert!(next_steps(out, &report).contains("again with --account"));
        report.unchecked = 0;
        report.written.push(out.join("a.yaml"));
        assert!(next_steps(out, &report).contains("review the files, commit them"));
        // A policy kpr refuses, written for review now or by an earlier run: a file to fix.
        report.errors.push("refused".into());
        let said = next_steps(out, &report);
        assert!(
            said.contains("fix what the errors above name, then check")
                && !said.contains("import again"),
            "{said}"
        );
        // A resource not read has no file: the file to fix does not exist, import again.
        report.errors.push("arn:...: AccessDenied".into());
        report.unread = 1;
        let said = next_steps(out, &report);
        assert!(said.contains("run this import again"), "{said}");
        // So does one whose name a file kpr cannot read is in the way of.
        (report.unread, report.no_file) = (0, 1);
        let said = next_steps(out, &report);
        assert!(said.contains("run this import again"), "{said}");
    }

    #[test]
    fn imported_yaml_reads_the_same_in_yaml_1_1_and_1_2() {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "on",
                "Effect": "Allow",
                "Principal": {"AWS": ["111122223333", "arn:aws:iam::111122223333:root", "*"]},
                "Action": "kinesis:GetRecords",
                "Resource": "arn:aws:kinesis:us-east-1:111122223333:stream/${aws:username}",
                "Condition": {
                    "DateGreaterThan": {"aws:CurrentTime": "2019-07-16T12:00:00Z"},
                    "Bool": {"aws:SecureTransport": "true"},
                    "StringEquals": {"x": ["yes", "", "a: b", "#c", "-1", ".5", "1:20", "A:",
                        "a\u{85}b\u{2028}c\u{7f}d", "role/\u{202e}nimda\u{200b}"]},
                    "NumericLessThan": {"n": 10, "f": 1.5, "z": null, "e": {}, "l": [], "x": 1e16}
                }
            }]
        });
        let text = block_yaml(&policy);
        for quoted in [
            "Version: \"2012-10-17\"",
            "Sid: \"on\"",
            "- \"111122223333\"",
            "- \"*\"",
            "aws:CurrentTime: \"2019-07-16T12:00:00Z\"",
            "aws:SecureTransport: \"true\"",
            "- \"yes\"",
            "x: 1.0e+16",
            "- \"a\\u0085b\\u2028c\\u007Fd\"",
            "- \"role/\\u202Enimda\\u200B\"",
        ] {
            assert!(text.contains(quoted), "{quoted} in\n{text}");
        }
        assert!(
            text.contains("- Sid: \"on\"\n    Effect: Allow\n"),
            "{text}"
        );
        assert!(text.contains("Action: kinesis:GetRecords\n"), "{text}");
        let back: serde_json::Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(back, policy, "{text}");
    }

    proptest::proptest! {
        /// Whatever the live document holds, the YAML written for it reads back as it.
        #[test]
        fn imported_yaml_round_trips(value in json_value()) {
            let text = block_yaml(&value);
            let back: serde_json::Value = serde_norway::from_str(&text)
                .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}\n{text}")))?;
            proptest::prop_assert_eq!(back, value, "{}", text);
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[ -~]{0,12}".prop_map(serde_json::Value::from),
            "\\PC{0,6}".prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::vec(("[ -~]{0,8}", inner), 0..4)
                    .prop_map(|kv| { serde_json::Value::Object(kv.into_iter().collect()) }),
            ]
        })
    }

    fn options(out: &Path, region: &str, max_policy_size: usize) -> ImportOptions {
        ImportOptions {
            region: region.into(),
            account: None,
            out: out.into(),
            concurrency: 1,
            max_policy_size,
        }
    }

    /// A live policy kpr cannot read still gets its manifest, marked for review: without one,
    /// a later `apply --prune` would delete the policy; with it, kpr refuses the directory.
    #[test]
    fn a_live_policy_kpr_refuses_is_written_for_review() {
        let dir = tempfile::tempdir().unwrap();
        let arn =
            ResourceArn::parse("arn:aws:kinesis:us-east-1:111122223333:stream/orders").unwrap();
        let opts = options(dir.path(), "us-east-1", 20_480);
        let stmt = |sid: &str| {
            format!(
                r#"{{"Sid":"{sid}","Effect":"Allow","Principal":{{"AWS":"444455556666"}},"Action":"kinesis:GetRecords","Resource":"arn:aws:kinesis:us-east-1:111122223333:stream/orders"}}"#
            )
        };
        let lower = format!(
            r#"{{"Version":"2012-10-17","Statement":[{}]}}"#,
            stmt("a").replace("\"Allow\"", "\"allow\"")
        );
        let twice = format!(
            r#"{{"Version":"2012-10-17","Statement":[{}],"Statement":[{}]}}"#,
            stmt("first"),
            stmt("second")
        );
        let quoted = serde_json::to_string(&format!(
            r#"{{"Version":"2012-10-17","Statement":[{}]}}"#,
            stmt("a")
        ))
        .unwrap();
        let no_version = format!(r#"{{"Statement":[{}]}}"#, stmt("a"));
        let injected = format!(
            r#"{{"Version":"2012-10-17","Statement":[{}],"X\rallowPublic: yes":1}}"#,
            stmt("a")
        );
        // Written as the live text: read as floats, they would turn into `1.5`, `100.0` and
        // `1.2345678901234568e+29`, which a reviewer would then quote.
        let decimals = stmt("a").replace(
            "\"Resource\"",
            r#""Condition":{"StringEquals":{"aws:PrincipalTag/v":[1.50,1e2,123456789012345678901234567890]}},"Resource""#,
        );
        let decimals = format!(r#"{{"Version":"2012-10-17","Statement":[{decimals}]}}"#);
        for (name, raw, why) in [
            ("decimals.yaml", decimals.as_str(), "not an integer"),
            (
                "lower.yaml",
                lower.as_str(),
                "\"allow\" is not a valid Effect",
            ),
            (
                "broken.yaml",
                "{\"Version\": \"2012-10-17\",\n",
                "not valid JSON",
            ),
            ("twice.yaml", twice.as_str(), "duplicate"),
            ("quoted.yaml", quoted.as_str(), "expected an object"),
            ("no-version.yaml", no_version.as_str(), "Version"),
            ("injected.yaml", injected.as_str(), "X allowPublic"),
        ] {
            let path = dir.path().join(name);
            let mut report = ImportReport::default();
            write_manifest(&arn, &path, raw, &opts, &mut report);
            assert_eq!(report.written, std::slice::from_ref(&path));
            assert_eq!(report.for_review, 1);
            assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
            assert!(
                report.errors[0].contains(why) && report.errors[0].contains("for review"),
                "{:?}",
                report.errors
            );
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.contains("# REVIEW: kpr refuses this live policy as it is."),
                "{text}"
            );
            let loaded = crate::manifest::load_bytes(
                &path,
                text.as_bytes(),
                &crate::manifest::LoadOptions::default(),
            );
            let errors = loaded.into_result().expect_err("kpr refuses it");
            assert!(
                !errors
                    .iter()
                    .any(|e| e.to_string().contains("error: allowPublic")),
                "{name}: the comment ended early: {errors:?}\n{text}"
            );
        }
        let text = std::fs::read_to_string(dir.path().join("decimals.yaml")).unwrap();
        assert!(
            text.contains("[1.50,1e2,123456789012345678901234567890]")
                && text.contains("quote each such number"),
            "{text}"
        );
    }

    /// A file of that name that declares another resource (say, the same stream name in
    /// another region, imported before into the same directory) is kept, and said to leave
    /// this resource without a manifest.
    #[test]
    fn an_existing_file_for_another_resource_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), "us-west-2", 20_480);
        let raw = |arn: &str| {
            format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"444455556666"}},"Action":"kinesis:GetRecords","Resource":"{arn}"}}]}}"#
            )
        };
        let east = "arn:aws:kinesis:us-east-1:111122223333:stream/orders";
        let west = "arn:aws:kinesis:us-west-2:111122223333:stream/orders";
        let path = dir.path().join("orders.yaml");
        let mut report = ImportReport::default();
        let mut import = |arn: &str| {
            write_manifest(
                &ResourceArn::parse(arn).unwrap(),
                &path,
                &raw(arn),
                &opts,
                &mut report,
            );
            report.errors.clone()
        };
        assert_eq!(import(east), Vec::<String>::new());
        // The same resource again: skipped, no error.
        assert_eq!(import(east), Vec::<String>::new());
        import(west);
        assert_eq!(report.skipped_existing.len(), 2);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert!(
            report.errors[0].starts_with(west) && report.errors[0].contains("--prune"),
            "{:?}",
            report.errors
        );
    }

    /// Re-importing over import's own files, or over a manifest naming a consumer with its
    /// creation time, finds the resource declared; a FIFO at the name is not read (it would
    /// block) and declares nothing.
    #[test]
    fn an_existing_file_declares_what_its_documents_name() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), "us-east-1", 20_480);
        let stream =
            ResourceArn::parse("arn:aws:kinesis:us-east-1:111122223333:stream/orders").unwrap();
        let refused = r#"{"Statement":[{"Effect":"allow"}]}"#;
        let path = dir.path().join("orders.yaml");
        let mut first = ImportReport::default();
        write_manifest(&stream, &path, refused, &opts, &mut first);
        assert_eq!(first.errors.len(), 1, "{:?}", first.errors);
        // Again over the file written for review: kept, and no claim that it declares
        // something else.
        let mut again = ImportReport::default();
        write_manifest(&stream, &path, refused, &opts, &mut again);
        assert_eq!(again.skipped_existing, std::slice::from_ref(&path));
        assert_eq!(again.errors.len(), 1, "{:?}", again.errors);
        assert!(
            again.errors[0].contains("declares it, but kpr refuses the file"),
            "{:?}",
            again.errors
        );
        let consumer = "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/app";
        let with_time = dir.path().join("app.yaml");
        std::fs::write(
            &with_time,
            format!("arn: {consumer}:1700000000\nensure: absent\n"),
        )
        .unwrap();
        assert_eq!(
            declares(
                existing(&with_time).as_deref(),
                &ResourceArn::parse(consumer).unwrap()
            ),
            Declared::Absent
        );
        assert_eq!(
            declares(existing(&with_time).as_deref(), &stream),
            Declared::No
        );
        assert_eq!(
            declares(existing(&path).as_deref(), &stream),
            Declared::Present
        );
        // Importing the consumer's live policy over it: a deletion pending, kept and said, as
        // a hand edit is (what lint suggests for a policy with no statements).
        let mut over_absent = ImportReport::default();
        write_manifest(
            &ResourceArn::parse(consumer).unwrap(),
            &with_time,
            r#"{"Version":"2012-10-17","Statement":[]}"#,
            &opts,
            &mut over_absent,
        );
        assert_eq!(over_absent.errors, Vec::<String>::new());
        assert_eq!(over_absent.pending_delete, std::slice::from_ref(&with_time));
        assert!(
            next_steps(dir.path(), &over_absent).contains("1 kept file(s) differ"),
            "{}",
            next_steps(dir.path(), &over_absent)
        );
        let fifo = dir.path().join("fifo.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            assert_eq!(
                declares(existing(&fifo).as_deref(), &stream),
                Declared::Unreadable
            );
        }
        // Read as the loader reads: a BOM before `ensure: absent`, or the variant as a tag,
        // still says absent; a broken document is unreadable, without hanging or panicking.
        let orders = "arn:aws:kinesis:us-east-1:111122223333:stream/orders";
        for (name, text, want) in [
            (
                "bom.yaml",
                format!("\u{feff}arn: {orders}\nensure: absent\n"),
                Declared::Absent,
            ),
            (
                "tag.yaml",
                format!("arn: {orders}\nensure: !absent\n"),
                Declared::Absent,
            ),
            (
                "open.yaml",
                format!("arn: {orders}x\npolicy: {{\n"),
                Declared::Unreadable,
            ),
            (
                "anchor.yaml",
                format!("arn: {orders}x\npolicy: *nope\n"),
                Declared::Unreadable,
            ),
            ("empty.yaml", String::new(), Declared::No),
            ("bom-only.yaml", "\u{feff}".to_string(), Declared::No),
            (
                "second.yaml",
                format!("arn: {orders}x\nensure: absent\n---\narn: {orders}\npolicy: [\n"),
                Declared::Unreadable,
            ),
        ] {
            let file = dir.path().join(name);
            std::fs::write(&file, &text).unwrap();
            assert_eq!(
                declares(existing(&file).as_deref(), &stream),
                want,
                "{name}"
            );
            if want == Declared::Absent {
                let loaded = crate::manifest::load_bytes(
                    &file,
                    text.as_bytes(),
                    &crate::manifest::LoadOptions::default(),
                );
                let state = loaded.into_result().unwrap();
                assert!(
                    matches!(state.resources[0].intent, crate::manifest::Intent::Absent),
                    "{name}: the loader reads it as absent too"
                );
            }
        }
    }

    /// A consumer's policy whose Resource pins a registration other than the live one grants
    /// nothing, and plan fails for it: import says so, as an error, not as advice.
    #[test]
    fn a_resource_pinned_to_a_gone_registration_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), "us-east-1", 20_000);
        let stream = "arn:aws:kinesis:us-east-1:111122223333:stream/orders";
        let live = ResourceArn::parse(&format!("{stream}/consumer/c:1700000002")).unwrap();
        let pinned_to = |epoch: &str| {
            serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Principal": {"AWS": "444455556666"}, "Action": "kinesis:SubscribeToShard",
                "Resource": format!("{stream}/consumer/c:{epoch}")}]})
            .to_string()
        };
        let mut report = ImportReport::default();
        write_manifest(
            &live,
            &dir.path().join("now.yaml"),
            &pinned_to("1700000002"),
            &opts,
            &mut report,
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        write_manifest(
            &live,
            &dir.path().join("gone.yaml"),
            &pinned_to("1700000001"),
            &opts,
            &mut report,
        );
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert!(report.errors[0].contains("a registration of the consumer that is gone"));
        let text = std::fs::read_to_string(dir.path().join("gone.yaml")).unwrap();
        assert!(
            text.contains(&format!(
                "# REVIEW: Resource \"{stream}/consumer/c:1700000001\" names a registration"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("arn: {stream}/consumer/c\n")),
            "{text}"
        );
        // A manifest already there, pinned to the gone registration, covers nothing live.
        let mine = dir.path().join("mine.yaml");
        let pinned = format!("{stream}/consumer/c:1700000001");
        let declared = format!("arn: {pinned}\npolicy: {}\n", pinned_to("1700000001"));
        std::fs::write(&mine, declared).unwrap();
        let mut report = ImportReport::default();
        keep_existing(&live, Some("{}"), mine, &opts, &mut report);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        let gone = format!("declares {pinned}, a registration that is gone");
        assert!(report.errors[0].contains(&gone), "{:?}", report.errors);
        // The file an earlier run wrote for review, run again: still an error, as plan fails.
        let mut report = ImportReport::default();
        keep_existing(
            &live,
            Some("{}"),
            dir.path().join("gone.yaml"),
            &opts,
            &mut report,
        );
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert!(
            report.errors[0].contains("a registration of the consumer that is gone"),
            "{:?}",
            report.errors
        );
    }

    /// The written file is checked as kpr will load it: a character YAML must escape is, a
    /// key YAML cannot carry as written is a problem like any other, and the size is the
    /// loader's (compact JSON), not the live text's.
    #[test]
    fn the_written_file_is_what_the_loader_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let arn =
            ResourceArn::parse("arn:aws:kinesis:us-east-1:111122223333:stream/orders").unwrap();
        let opts = options(dir.path(), "us-east-1", 2_000);
        let policy = |condition: serde_json::Value| {
            serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Principal": {"AWS": "444455556666"}, "Action": "kinesis:GetRecords",
                "Resource": arn.to_string(), "Condition": condition}]})
        };
        let noncharacter =
            policy(serde_json::json!({"StringEquals": {"aws:userid": "a\u{fffe}b\u{ffff}"}}));
        let long_key = policy(serde_json::json!({"StringEquals": {"k".repeat(1100): "v"}}));
        // Pretty, over 2,000 bytes; compact, well under.
        let pretty = serde_json::to_string_pretty(&policy(serde_json::json!({})))
            .unwrap()
            .replace("\n", &format!("\n{}", " ".repeat(400)));
        assert!(pretty.len() > 2_000);
        for (name, raw, refused) in [
            ("nonchar.yaml", noncharacter.to_string(), false),
            ("long.yaml", long_key.to_string(), true),
            ("pretty.yaml", pretty, false),
        ] {
            let path = dir.path().join(name);
            let mut report = ImportReport::default();
            write_manifest(&arn, &path, &raw, &opts, &mut report);
            assert_eq!(report.written, std::slice::from_ref(&path));
            assert_eq!(
                !report.errors.is_empty(),
                refused,
                "{name}: {:?}",
                report.errors
            );
            let text = std::fs::read_to_string(&path).unwrap();
            let loaded = crate::manifest::load_bytes(
                &path,
                text.as_bytes(),
                &crate::manifest::LoadOptions {
                    max_policy_size: 2_000,
                    ..Default::default()
                },
            );
            assert_eq!(loaded.into_result().is_err(), refused, "{name}:\n{text}");
        }
    }

    /// A stream and a consumer name may have 128 characters each: their file name must stay
    /// within the 255 bytes a file system takes, and two that differ only at the end apart.
    #[test]
    fn a_long_name_fits_a_file_name_and_stays_unique() {
        let stream = "s".repeat(128);
        let consumer = |last: char| {
            let name = format!("{}{last}", "c".repeat(127));
            ResourceArn::parse(&format!(
                "arn:aws:kinesis:us-east-1:111122223333:stream/{stream}/consumer/{name}"
            ))
            .unwrap()
        };
        let mut names = FileNames::default();
        let (a, b) = (names.next(&consumer('a')), names.next(&consumer('b')));
        assert_ne!(a, b);
        assert!(a.len() <= 255 && b.len() <= 255, "{a} {b}");
        assert!(a.ends_with(".yaml") && a.starts_with("sss"), "{a}");
    }

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
