//! Manifests: a directory of YAML files -> the validated desired state.
//!
//! Everything that can be checked offline is checked here, for the whole directory, before any
//! API call: a pipeline must never apply half of a change because file 37 had a typo.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::hash::{DefaultHasher, Hasher};
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::arn::{ResourceArn, Scope};
use crate::policy::lint::{self, LintContext, Severity as LintSeverity};
use crate::policy::{PolicyDocument, PolicyError};

pub(crate) mod locate;

/// AWS does not document the maximum size of a Kinesis resource policy; 20 KiB is the limit of
/// other resource policies (e.g. Lambda) and is configurable.
pub const DEFAULT_MAX_POLICY_SIZE: usize = 20 * 1024;

// This type is also the source of schema/manifest.schema.json: its doc comments are what
// editors show.
/// A kpr manifest: the resource policy of one Kinesis data stream or stream consumer. A file may
/// hold several manifests separated by `---`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "kpr manifest", transform = policy_or_absent)]
pub struct ManifestDoc {
    /// ARN of a Kinesis data stream or stream consumer. A consumer may be named without its
    /// `:<creation-timestamp>` suffix; kpr then resolves the live registration at plan time.
    pub arn: String,
    /// The resource policy: a YAML mapping, or a string holding the policy JSON.
    #[serde(default, deserialize_with = "crate::policy::strict_value_opt")]
    #[schemars(with = "PolicySchema")]
    pub policy: Option<serde_json::Value>,
    /// `absent`: the resource must have no policy (kpr deletes it). Use instead of `policy`.
    #[serde(default)]
    pub ensure: Option<Ensure>,
    /// Accept an Allow statement with Principal "*" and no Condition, or a Condition that does
    /// not limit who calls (refused otherwise).
    #[serde(default)]
    pub allow_public: bool,
}

// Only used to describe `policy` in the JSON Schema (a `//` comment: schemars would put a
// doc comment in the schema, where editors show it).
/// The resource policy: a mapping (IAM's JSON written as YAML), or the JSON itself as a string.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum PolicySchema {
    Document(BTreeMap<String, serde_json::Value>),
    Json(String),
    /// As no `policy`: only with `ensure: absent`.
    Null(()),
}

/// The schema says what the loader requires, so that an editor flags what `kpr validate`
/// refuses: a `policy` unless `ensure: absent`, and none with it.
fn policy_or_absent(schema: &mut schemars::Schema) {
    let absent = serde_json::json!({
        "if": {"required": ["ensure"], "properties": {"ensure": {"const": "absent"}}},
        "then": {"properties": {"policy": {"type": "null"}}},
        "else": {"required": ["policy"], "properties": {"policy": {"not": {"type": "null"}}}}
    });
    for (key, value) in absent.as_object().expect("an object") {
        schema.insert(key.clone(), value.clone());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ensure {
    Present,
    Absent,
}

/// Read as a word. A derived enum also takes a YAML `!tag`, and serde's message for any other
/// shape ("expected a YAML tag starting with '!'") sent people looking for tags when they had
/// left a bracket open.
impl<'de> Deserialize<'de> for Ensure {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Word;
        impl<'de> serde::de::Visitor<'de> for Word {
            type Value = Ensure;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`present` or `absent`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Ensure, E> {
                match v {
                    "present" => Ok(Ensure::Present),
                    "absent" => Ok(Ensure::Absent),
                    other => Err(E::unknown_variant(other, &["present", "absent"])),
                }
            }
            // `ensure: !absent`, YAML's spelling of an enum, as before.
            fn visit_enum<A: serde::de::EnumAccess<'de>>(
                self,
                data: A,
            ) -> Result<Ensure, A::Error> {
                use serde::de::VariantAccess;
                let (word, variant): (String, _) = data.variant()?;
                variant.unit_variant()?;
                self.visit_str(&word)
            }
        }
        d.deserialize_any(Word)
    }
}

/// Where a manifest came from: shown in every error and in the plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Source {
    #[serde(serialize_with = "path_text")]
    pub file: PathBuf,
    pub line: usize,
}

/// A path as JSON text. A name that is not UTF-8 (git allows any bytes) shows with U+FFFD in
/// place of its odd bytes, where serde's own form would fail the whole document.
fn path_text<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            one_line(&self.file.to_string_lossy()),
            self.line
        )
    }
}

#[derive(Debug, Clone)]
pub enum Intent {
    /// `json` is what PutResourcePolicy sends: the user's own JSON when they wrote a string,
    /// else the YAML mapping serialised compactly.
    Present {
        document: Arc<PolicyDocument>,
        json: Arc<str>,
    },
    Absent,
}

#[derive(Debug, Clone)]
pub struct DesiredResource {
    pub arn: ResourceArn,
    pub intent: Intent,
    pub source: Source,
}

#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    /// Sorted by ARN, unique by [`ResourceArn::identity`].
    pub resources: Vec<DesiredResource>,
}

impl DesiredState {
    /// Every (partition, account, region) the manifests cover: the reach of `--prune`.
    pub fn scopes(&self) -> BTreeSet<Scope> {
        self.resources.iter().map(|r| r.arn.scope.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    #[serde(serialize_with = "path_text")]
    pub file: PathBuf,
    /// 1-based; `None` for problems of a whole directory or unreadable file.
    pub line: Option<usize>,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        // One line each, whatever a file name or a value quoted in the message holds: a line
        // break in a key or a file name must not forge a line of kpr's output (a pull
        // request's plan comment prints these).
        let file = one_line(&self.file.to_string_lossy()).into_owned();
        let message = one_line(&self.message);
        match self.line {
            Some(line) => write!(f, "{file}:{line}: {sev}: {message}"),
            None => write!(f, "{file}: {sev}: {message}"),
        }
    }
}

/// An invisible character that reorders or hides the text around it (bidi controls,
/// zero-width characters, the line and paragraph separators): written raw, text reads
/// otherwise than it is.
pub fn reads_otherwise(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
        | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}')
}

/// `text` as it may be printed: control characters (C0 and C1: line breaks, escapes) and the
/// invisible ones that reorder or hide text (bidi overrides, zero-width characters) escaped as
/// Rust writes them (`\n`, `\u{200b}`), so that text from a file, its name or a policy can
/// neither forge or overwrite output lines on a terminal nor read otherwise in a CI log's web
/// view.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| c.is_control() || reads_otherwise(c);
    if !text.contains(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if hidden(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub max_policy_size: usize,
    /// Record a digest of each file read (`Loaded::digests`): how `kpr serve` tells which files
    /// of a directory source changed between runs.
    pub digests: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_policy_size: DEFAULT_MAX_POLICY_SIZE,
            digests: false,
        }
    }
}

/// The outcome of loading a directory: the state is only usable when there is no error.
#[derive(Debug, Default)]
pub struct Loaded {
    pub state: DesiredState,
    pub diagnostics: Vec<Diagnostic>,
    pub files: usize,
    /// Each file read and a digest of its bytes, when `LoadOptions::digests` asks for them.
    /// Compared only within one process, so a fast non-cryptographic hash serves.
    pub digests: Vec<(PathBuf, u64)>,
    /// Symlinks the walk followed to a directory or a manifest. A git diff names the link's
    /// target, not the path kpr read, so an incremental run cannot trust one.
    pub symlinks: usize,
}

impl Loaded {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// The desired state, or every error when there is any.
    pub fn into_result(self) -> Result<DesiredState, Vec<Diagnostic>> {
        if self.has_errors() {
            Err(self
                .diagnostics
                .into_iter()
                .filter(|d| d.severity == Severity::Error)
                .collect())
        } else {
            Ok(self.state)
        }
    }
}

/// Far above any real manifest file (10,000 manifests in one file are ~4 MiB), and a bound on
/// what loading one costs: kpr holds the file and 4 bytes for each of its lines.
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 20;

/// Load and validate every `*.yaml` / `*.yml` below `dir`.
pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Loaded {
    let mut loaded = Loaded::default();
    let mut files = Vec::new();
    let mut seen_dirs = HashSet::new();
    // When `dir` cannot be resolved, collect_files says so.
    let root = link_bound(dir).unwrap_or_else(|| dir.to_path_buf());
    if std::fs::canonicalize(dir).is_ok_and(|real| !real.starts_with(&root)) {
        loaded.diagnostics.push(Diagnostic {
            file: dir.to_path_buf(),
            line: None,
            severity: Severity::Error,
            message: format!(
                "the manifest directory is a symlink to a place outside the git work tree {} \
                 that holds it; refusing to read it",
                root.display()
            ),
        });
    } else {
        collect_files(
            dir,
            &root,
            &mut files,
            &mut seen_dirs,
            &mut loaded.diagnostics,
            &mut loaded.symlinks,
        );
    }
    loaded.files = files.len();
    // Files skipped with a warning (`x.json`) are not manifests: a directory of only those
    // declares nothing, and would pass as an estate in sync.
    if files.is_empty() && !loaded.has_errors() {
        loaded.diagnostics.push(Diagnostic {
            file: dir.to_path_buf(),
            line: None,
            severity: Severity::Error,
            message: "no manifests (*.yaml, *.yml) found; refusing to treat a directory without \
                      any as the desired state"
                .into(),
        });
    }
    let mut declared = Declared::default();
    // One buffer for every file.
    let mut bytes = Vec::new();
    for file in &files {
        let read = std::fs::File::open(file).and_then(|f| read_bounded(f, &mut bytes));
        if read.as_ref().is_ok_and(|&fits| !fits) {
            loaded.diagnostics.push(Diagnostic {
                file: file.clone(),
                line: None,
                severity: Severity::Error,
                message: format!(
                    "larger than {} MiB: not a manifest file",
                    MAX_FILE_BYTES >> 20
                ),
            });
            continue;
        }
        match read {
            Err(e) => loaded.diagnostics.push(Diagnostic {
                file: file.clone(),
                line: None,
                severity: Severity::Error,
                message: format!("cannot read file: {e}"),
            }),
            Ok(_) => {
                if opts.digests {
                    let mut hasher = DefaultHasher::new();
                    hasher.write(&bytes);
                    loaded.digests.push((file.clone(), hasher.finish()));
                }
                parse_file(file, &bytes, opts, &mut declared, &mut loaded.diagnostics);
            }
        }
    }
    loaded.state = declared.dedupe(&mut loaded.diagnostics);
    loaded
}

/// Reads `from` into `buf` (cleared first), at most [`MAX_FILE_BYTES`]: `Ok(false)` when there
/// was more, which no manifest file has. Reading through `take` skips `fs::read`'s size probe
/// (a stat and a seek per file, two fifths of the system calls of loading small manifests) and
/// bounds what a stray huge file can cost.
pub(crate) fn read_bounded(from: impl std::io::Read, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    let n = from.take(MAX_FILE_BYTES + 1).read_to_end(buf)?;
    Ok(n as u64 <= MAX_FILE_BYTES)
}

/// What a manifest directory holds at one moment, as far as its files' names, the files their
/// links lead to, their sizes, times and inodes, and the directories and links on the way to
/// them tell: taken before and after a load, two that differ mean the directory changed while
/// it was read, and the load may mix two versions of it. Every directory from the root of the
/// file system down to each file's is taken as it is itself (`lstat`): a link renamed over
/// another (a ConfigMap's `..data`, a `current` link flipped), `--dir` itself or one of its
/// ancestors included, is a new inode, also when it swaps back, and changes its directory's
/// time.
#[derive(Debug, PartialEq, Eq)]
pub struct DirSnapshot {
    files: Vec<(PathBuf, Option<FileStamp>)>,
    dirs: BTreeMap<PathBuf, Option<(u64, Option<std::time::SystemTime>)>>,
}

/// The file a link leads to, its size, time and inode.
type FileStamp = (PathBuf, u64, Option<std::time::SystemTime>, u64);

impl DirSnapshot {
    pub fn of(dir: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let lstat = |p: &Path| {
            std::fs::symlink_metadata(p)
                .ok()
                .map(|m| (m.ino(), m.modified().ok()))
        };
        let files = files_below(dir);
        let mut dirs = BTreeMap::new();
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        for d in absolute.ancestors() {
            dirs.insert(d.to_path_buf(), lstat(d));
        }
        let files = files
            .into_iter()
            .map(|f| {
                for d in f.ancestors().skip(1) {
                    if dirs.contains_key(d) || !d.starts_with(dir) {
                        break;
                    }
                    dirs.insert(d.to_path_buf(), lstat(d));
                }
                let stamp = std::fs::canonicalize(&f).ok().and_then(|real| {
                    let meta = std::fs::metadata(&real).ok()?;
                    Some((real, meta.len(), meta.modified().ok(), meta.ino()))
                });
                (f, stamp)
            })
            .collect();
        DirSnapshot { files, dirs }
    }
}

/// The manifest files below `dir` as the loader finds them (what it would say of the others
/// left out).
fn files_below(dir: &Path) -> Vec<PathBuf> {
    files_and_errors_below(dir).0
}

/// [`files_below`], and the places the loader would refuse on the way (a directory it cannot
/// list, a dangling link, a link out of `dir`).
fn files_and_errors_below(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let root = link_bound(dir).unwrap_or_else(|| dir.to_path_buf());
    let (mut files, mut diags) = (Vec::new(), Vec::new());
    collect_files(
        dir,
        &root,
        &mut files,
        &mut HashSet::new(),
        &mut diags,
        &mut 0,
    );
    let refused = diags
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.file)
        .collect();
    (files, refused)
}

/// Loads the manifests of one file's bytes as [`load_dir`] does with each file it reads
/// (`kpr policy diff` and `fmt` take a manifest this way).
pub fn load_bytes(file: &Path, bytes: &[u8], opts: &LoadOptions) -> Loaded {
    let mut loaded = Loaded {
        files: 1,
        ..Loaded::default()
    };
    let mut declared = Declared::default();
    parse_file(file, bytes, opts, &mut declared, &mut loaded.diagnostics);
    loaded.state = declared.dedupe(&mut loaded.diagnostics);
    loaded
}

/// Lists the manifest files below `dir`, following symlinks that stay below `root` (see
/// [`link_bound`]), sorted.
fn collect_files(
    dir: &Path,
    root: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut HashSet<PathBuf>,
    diags: &mut Vec<Diagnostic>,
    symlinks: &mut usize,
) {
    // Directories reached through links are walked after every real one: a directory
    // reached both ways is read where git holds it, and the error for the second way names
    // the link, not the directory.
    let mut walk = Walk {
        root,
        out,
        seen,
        diags,
        symlinks,
        linked: Vec::new(),
    };
    walk.dir(dir);
    let mut next = 0;
    while let Some(d) = walk.linked.get(next).cloned() {
        walk.dir(&d);
        next += 1;
    }
    walk.out.sort();
}

/// A walk of [`collect_files`], and what it gathers.
struct Walk<'a> {
    root: &'a Path,
    out: &'a mut Vec<PathBuf>,
    seen: &'a mut HashSet<PathBuf>,
    diags: &'a mut Vec<Diagnostic>,
    symlinks: &'a mut usize,
    /// The directories links lead to, walked once every real one is.
    linked: Vec<PathBuf>,
}

impl Walk<'_> {
    /// One directory: its files, and its real subdirectories walked in turn; the directories
    /// its links lead to are left in `linked`.
    fn dir(&mut self, dir: &Path) {
        let diag = |message: String| Diagnostic {
            file: dir.to_path_buf(),
            line: None,
            severity: Severity::Error,
            message,
        };
        // Symlinked directories are followed, so a link back up the tree must end the walk.
        match std::fs::canonicalize(dir) {
            Ok(real) => {
                if !self.seen.insert(real) {
                    self.diags.push(diag(
                        "directory reached twice (a symlink loop, or a second link to one directory, whose \
                         manifests would then be declared twice); not read again"
                            .into(),
                    ));
                    return;
                }
            }
            Err(e) => {
                self.diags.push(diag(format!("cannot open directory: {e}")));
                return;
            }
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.diags.push(diag(format!("cannot read directory: {e}")));
                return;
            }
        };
        // The entry's own type comes with the directory listing; only symlinks (and file systems
        // that do not report types) need a stat to learn what they point to.
        let mut paths: Vec<(PathBuf, Option<std::fs::FileType>)> = entries
            .filter_map(|e| e.ok().map(|e| (e.path(), e.file_type().ok())))
            .collect();
        // Entries share a parent, so their names alone order them, as `Path`'s component order
        // would, at a fraction of its cost.
        paths.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
        for (path, file_type) in paths {
            // By bytes: a name that is not UTF-8 is still a manifest if it ends in .yaml. Skipped
            // as unreadable, its resource would count as undeclared, and --prune would delete it.
            let name = path.file_name().map_or(&[][..], |n| n.as_bytes());
            // Hidden entries are editor and VCS state (.git, .swp), never manifests. One named as
            // a manifest is said, as a near miss is below: its resource would count as
            // undeclared, and --prune would delete its policy.
            if name.starts_with(b".") {
                if is_manifest_name(name)
                    && file_type.is_some_and(|t| t.is_file() || t.is_symlink())
                {
                    self.diags.push(Diagnostic {
                        file: path.clone(),
                        line: None,
                        severity: Severity::Warning,
                        message:
                            "not read: hidden (its name starts with a dot); rename it if it is \
                                  a manifest"
                                .into(),
                    });
                }
                continue;
            }
            let is_yaml = is_manifest_name(name);
            if !is_yaml
                && let Some(why) = near_manifest_name(name)
                && file_type.is_some_and(|t| t.is_file() || t.is_symlink())
            {
                // Its resource would count as undeclared, and --prune would delete its policy.
                self.diags.push(Diagnostic {
                    file: path.clone(),
                    line: None,
                    severity: Severity::Warning,
                    message: format!("not read: {why}; only *.yaml and *.yml files are manifests"),
                });
            }
            if is_yaml && file_type.is_some_and(|t| t.is_file()) {
                self.out.push(path);
                continue;
            }
            let link = file_type.is_some_and(|t| t.is_symlink());
            match std::fs::metadata(&path) {
                Ok(meta) if link && (meta.is_dir() || is_yaml) && escapes(&path, self.root) => {
                    // The files a manifest set is read from are the ones under review: a link
                    // that a pull request adds must not make kpr read, and quote in its errors,
                    // a file of the machine it runs on (a token, a webhook secret).
                    self.diags.push(Diagnostic {
                        file: path.clone(),
                        line: None,
                        severity: Severity::Error,
                        message: format!(
                            "symlink to a place outside {}, or into its .git; refusing to follow it \
                             (links may lead anywhere in the git work tree that holds the manifests \
                             but its .git, or, outside one, below the manifest directory)",
                            self.root.display()
                        ),
                    });
                }
                Ok(meta) if meta.is_dir() => {
                    *self.symlinks += usize::from(link);
                    if link {
                        self.linked.push(path);
                    } else {
                        self.dir(&path);
                    }
                }
                Ok(meta) if is_yaml => {
                    if meta.is_file() {
                        *self.symlinks += usize::from(link);
                        self.out.push(path);
                    } else {
                        // Reading a FIFO would block forever, a device could be endless.
                        self.diags.push(Diagnostic {
                            file: path.clone(),
                            line: None,
                            severity: Severity::Error,
                            message:
                                "not a regular file (FIFO, socket or device); refusing to read it"
                                    .into(),
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => self.diags.push(Diagnostic {
                    file: path.clone(),
                    line: None,
                    severity: Severity::Error,
                    message: format!("cannot stat: {e} (dangling or looping symlink?)"),
                }),
            }
        }
    }
}

/// Whether a file of this name is read as manifests: `*.yaml` or `*.yml`, in any case (a
/// file saved as `orders.YAML` is as much a manifest to its author).
pub fn is_manifest_name(name: &[u8]) -> bool {
    let ends = |ext: &[u8]| {
        name.len() > ext.len() && name[name.len() - ext.len()..].eq_ignore_ascii_case(ext)
    };
    ends(b".yaml") || ends(b".yml")
}

/// Why a file that is not read looks like it was meant to be: said, not guessed at.
fn near_manifest_name(name: &[u8]) -> Option<&'static str> {
    if is_manifest_name(name.trim_ascii_end()) {
        Some("its name ends in white space after .yaml or .yml")
    } else if name.len() > 5 && name[name.len() - 5..].eq_ignore_ascii_case(b".json") {
        Some("a .json file")
    } else {
        None
    }
}

/// Where symlinks met in a walk of `dir` may lead (resolved): the git work tree that holds it,
/// which is what a review of a change covers (a link from `policies/prod` to `envs/prod` is
/// part of the repository), else `dir` itself. The work tree is found from the path as given,
/// before links: `dir` may itself be a link the repository holds.
fn link_bound(dir: &Path) -> Option<PathBuf> {
    // `..` taken as written (`repo/../other` is `other`, not inside `repo`): a `..` after a
    // link could only make the bound narrower than the real one, never wider.
    let mut path = PathBuf::new();
    for part in std::path::absolute(dir).ok()?.components() {
        match part {
            std::path::Component::ParentDir => {
                path.pop();
            }
            std::path::Component::CurDir => {}
            other => path.push(other),
        }
    }
    let tree = path.ancestors().find(|d| d.join(".git").exists());
    std::fs::canonicalize(tree.unwrap_or(dir)).ok()
}

/// Whether the symlink `path` resolves to a place outside `root`. One that cannot be resolved
/// is left to the caller's stat, which reports it.
fn escapes(path: &Path, root: &Path) -> bool {
    // The work tree's `.git` is no part of what a review covers: its config may hold a CI
    // job's token (actions/checkout keeps one there).
    std::fs::canonicalize(path).is_ok_and(|real| {
        !real.starts_with(root)
            || real
                .strip_prefix(root)
                .is_ok_and(|rest| rest.components().any(|c| c.as_os_str() == ".git"))
    })
}

/// Whether `line` is the document marker `marker` (`---` or `...`): at the start of the line,
/// followed by nothing or by white space.
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// A `---` or `...` line with nothing after it but a comment: no content of its own. (A
/// document may begin on its `---` line: `--- {arn: ...}`.)
fn bare_marker(line: &str) -> bool {
    (is_marker(line, "---") || is_marker(line, "..."))
        && line[3..]
            .trim_start()
            .chars()
            .next()
            .is_none_or(|c| c == '#')
}

/// Line numbers of each YAML document's start, and of top-level keys inside it: serde_norway
/// reports positions only for syntax errors, but semantic errors must name a line too.
struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset in the text of each line's start: 4 bytes a line (a file is at most
    /// [`MAX_FILE_BYTES`]), as a file of empty lines has millions of them.
    offsets: Vec<u32>,
    /// 0-based index of the first line of each document.
    doc_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        // As `str::lines` splits, keeping where each line starts.
        let mut offsets = Vec::new();
        let mut at = 0;
        for line in text.split_inclusive('\n') {
            offsets.push(u32::try_from(at).expect("a manifest file is smaller than 4 GiB"));
            at += line.len();
        }
        let mut index = Self {
            text,
            offsets,
            doc_starts: Vec::new(),
        };
        let mut doc_starts = Vec::new();
        let mut content_seen = false;
        // After a `...` (document end), where the next document begins: its directives, if
        // any, come before its `---` and belong to it. (Content with no `---` after `...` is
        // left to the YAML parser, which refuses it, as libyaml and yamllint do.)
        let mut after_end = None;
        for i in 0..index.len() {
            let line = index.line(i);
            if is_marker(line, "---") {
                doc_starts.push(after_end.take().unwrap_or(i));
                content_seen = false;
                continue;
            }
            if is_marker(line, "...") {
                after_end = Some(i + 1);
                continue;
            }
            let t = line.trim();
            if !t.is_empty() && !t.starts_with('#') && !t.starts_with('%') {
                after_end = None;
                if !content_seen {
                    content_seen = true;
                    if doc_starts.is_empty() {
                        doc_starts.push(0);
                    }
                }
            }
        }
        if doc_starts.is_empty() {
            doc_starts.push(0);
        }
        index.doc_starts = doc_starts;
        index
    }

    fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Line `i` (0-based) without its line ending.
    fn line(&self, i: usize) -> &'a str {
        let start = self.offsets[i] as usize;
        let end = self
            .offsets
            .get(i + 1)
            .map_or(self.text.len(), |&o| o as usize);
        let line = &self.text[start..end];
        let line = line.strip_suffix('\n').unwrap_or(line);
        line.strip_suffix('\r').unwrap_or(line)
    }

    /// Document `doc`'s text, and the 0-based number of its first line. The first document
    /// also holds what comes before it (comments, directives).
    fn doc_text(&self, doc: usize) -> (usize, &'a str) {
        let first = if doc == 0 { 0 } else { self.doc_starts[doc] };
        let end = self
            .doc_starts
            .get(doc + 1)
            .map_or(self.text.len(), |&line| self.offsets[line] as usize);
        (first, &self.text[self.offsets[first] as usize..end])
    }

    fn doc_range(&self, doc: usize) -> (usize, usize) {
        let start = self.doc_starts.get(doc).copied().unwrap_or(0);
        let end = self.doc_starts.get(doc + 1).copied().unwrap_or(self.len());
        (start, end)
    }

    /// 1-based line of a top-level `key:` in document `doc`, else the document's first content
    /// line.
    fn key_line(&self, doc: usize, key: &str) -> usize {
        if let Some(line) = self.key_lines(doc, key).next() {
            return line;
        }
        let (start, end) = self.doc_range(doc);
        (start..end)
            .find(|&i| {
                let line = self.line(i);
                let t = line.trim();
                !t.is_empty() && !t.starts_with(['#', '%']) && !bare_marker(line)
            })
            .map_or(start + 1, |i| i + 1)
    }

    /// 1-based lines of each top-level `key:` in document `doc` (more than one: a key given
    /// twice).
    fn key_lines<'k>(&'k self, doc: usize, key: &'k str) -> impl Iterator<Item = usize> + 'k {
        let (start, end) = self.doc_range(doc);
        (start..end)
            .filter(move |&i| {
                let line = self.line(i);
                // The key as written: plain, or quoted either way.
                let rest = line.strip_prefix(key).or_else(|| {
                    ['"', '\'']
                        .into_iter()
                        .find_map(|q| line.strip_prefix(q)?.strip_prefix(key)?.strip_prefix(q))
                });
                rest.is_some_and(|rest| rest.starts_with(':') || rest.starts_with(" :"))
            })
            .map(|i| i + 1)
    }

    /// Whether `key:` opens a literal block scalar (`|`), whose content starts on the next line
    /// and keeps its line breaks, so that a line of the text in it is a line of the file. (A
    /// folded one, `>`, joins its lines.)
    fn is_literal_block(&self, line: usize) -> bool {
        (line >= 1 && line <= self.len())
            .then(|| self.line(line - 1))
            .and_then(|l| l.split_once(':'))
            .is_some_and(|(_, v)| v.trim_start().starts_with('|'))
    }
}

/// Why a file holds no manifest text.
enum NoText {
    /// The 1-based line where its UTF-8 breaks.
    NotUtf8 {
        line: usize,
    },
    /// The 1-based line (as editors count) that ends in a carriage return alone.
    LoneCr {
        line: usize,
    },
    /// The 1-based line (as editors count) of a character libyaml takes for a line break and
    /// nothing else does, and which it is.
    UnicodeBreak {
        line: usize,
        name: &'static str,
    },
    /// The 1-based line of a byte order mark that does not start the file.
    InnerBom {
        line: usize,
    },
    /// More than [`MAX_LINES`].
    TooManyLines,
    /// More than [`MAX_DOCUMENTS`]: how many.
    TooManyDocuments(usize),
    Empty,
}

impl NoText {
    fn line_and_message(&self) -> (usize, std::borrow::Cow<'static, str>) {
        let (line, message) = match self {
            NoText::NotUtf8 { line } => (*line, "not valid UTF-8 text (binary file?)"),
            // kpr counts lines by line feeds, as git does; libyaml would take a lone CR as a
            // line break and every line kpr names would be wrong.
            NoText::LoneCr { line } => (
                *line,
                "line ends in a carriage return without a line feed (classic Mac line \
                 endings?): save the file with LF or CRLF line endings",
            ),
            NoText::UnicodeBreak { line, name } => {
                return (*line, unicode_line_break_message(name).into());
            }
            // libyaml skips it but counts it as a column: a key after it reads as indented,
            // and the errors name other causes.
            NoText::InnerBom { line } => (
                *line,
                "holds a byte order mark (U+FEFF) that does not start the file (files joined \
                 together?): YAML would read what follows it at another indentation. Remove it \
                 (in a double-quoted string, the escape \\ufeff keeps it)",
            ),
            NoText::TooManyLines => (
                1,
                "more than 1,000,000 lines in one file; refusing to parse it",
            ),
            NoText::TooManyDocuments(n) => {
                return (
                    1,
                    format!(
                        "{n} documents in one file, more than {MAX_DOCUMENTS}; refusing to \
                         parse it"
                    )
                    .into(),
                );
            }
            NoText::Empty => (1, "empty file: expected at least one manifest"),
        };
        (line, message.into())
    }
}

/// The first character in `text` that libyaml takes for a line break and editors, git and
/// kpr's line numbers do not, with its 1-based line: NEL, U+2028 or U+2029.
pub(crate) fn unicode_line_break(text: &str) -> Option<(usize, &'static str)> {
    // Most files are ASCII: one pass, a word at a time, passes them.
    if text.is_ascii() {
        return None;
    }
    let bytes = text.as_bytes();
    let (at, name) = text.char_indices().find_map(|(i, c)| {
        let name = match c {
            '\u{85}' => "U+0085 (NEXT LINE)",
            '\u{2028}' => "U+2028 (LINE SEPARATOR)",
            '\u{2029}' => "U+2029 (PARAGRAPH SEPARATOR)",
            _ => return None,
        };
        Some((i, name))
    })?;
    Some((
        bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1,
        name,
    ))
}

pub(crate) fn unicode_line_break_message(name: &str) -> String {
    format!(
        "holds {name}, which YAML reads as a line break though editors, git diffs and kpr's \
         line numbers do not: what follows it on this line, in a comment or a string to a \
         reader, would be read as YAML. Remove it (in a double-quoted string, an escape such \
         as \\u2028 keeps it)"
    )
}

/// A manifest file's documents as both readers below take them: its text (see
/// [`manifest_text`]), split into documents, no more of them than [`MAX_DOCUMENTS`].
fn manifest_index(bytes: &[u8]) -> Result<LineIndex<'_>, NoText> {
    let index = LineIndex::new(manifest_text(bytes)?);
    match index.doc_starts.len() {
        n if n > MAX_DOCUMENTS => Err(NoText::TooManyDocuments(n)),
        _ => Ok(index),
    }
}

/// A manifest file's text as both readers below take it: UTF-8, without a byte order mark
/// (editors on Windows may start a file with one; libyaml refuses it), and not blank (LineIndex
/// has no line to split in an empty text).
fn manifest_text(bytes: &[u8]) -> Result<&str, NoText> {
    let text = std::str::from_utf8(bytes).map_err(|e| NoText::NotUtf8 {
        line: bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1,
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(NoText::Empty);
    }
    let bytes = text.as_bytes();
    // Only a file longer than the limit can have more lines: most are never counted.
    if bytes.len() > MAX_LINES && bytes.iter().filter(|&&b| b == b'\n').count() > MAX_LINES {
        return Err(NoText::TooManyLines);
    }
    // `contains` is a memchr: the common file has no CR at all.
    if bytes.contains(&b'\r')
        && let Some(at) = first_lone_cr(bytes)
    {
        // Being the first, no lone CR before it ends a line: only line feeds do.
        let breaks = bytes[..at].iter().filter(|&&b| b == b'\n').count();
        return Err(NoText::LoneCr { line: breaks + 1 });
    }
    if let Some((line, name)) = unicode_line_break(text) {
        return Err(NoText::UnicodeBreak { line, name });
    }
    if !text.is_ascii()
        && let Some(at) = text.find('\u{feff}')
    {
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        return Err(NoText::InnerBom { line });
    }
    Ok(text)
}

/// Where the first carriage return not followed by a line feed is.
fn first_lone_cr(bytes: &[u8]) -> Option<usize> {
    bytes
        .iter()
        .enumerate()
        .position(|(i, &b)| b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
}

/// The largest document kpr hands to the YAML parser. libyaml's loader holds every event of a
/// document at once, 64 to 220 bytes for each byte of text (`? ? ? ...` is the dearest), so a
/// file of a few MiB could exhaust `kpr serve`'s memory; a manifest (a policy is at most tens
/// of KiB) is far below this.
const MAX_DOCUMENT_BYTES: usize = 256 << 10;
/// The most lines in one file: kpr indexes them (4 bytes each) before it parses any document.
const MAX_LINES: usize = 1_000_000;
/// The most flow collections (`[`, `{`) in one document. libyaml's scanner spends time on
/// every token for each level of flow nesting, so deep nesting costs time with the square of
/// the size: 200 KB of `[[[...` took 51 s. Counted in all of the text, quoted or not, so that
/// nothing can hide nesting from the count; a manifest has a few dozen.
const MAX_FLOW_COLLECTIONS: usize = 2_000;

/// The most documents in one file: each is parsed on its own, which costs a few µs even when
/// empty, and a file of `---` lines holds millions.
const MAX_DOCUMENTS: usize = 100_000;

/// Why a document is not given to the YAML parser at all, if it is not.
fn too_costly(doc_text: &str) -> Option<String> {
    if doc_text.len() > MAX_DOCUMENT_BYTES {
        return Some(format!(
            "document larger than {} KiB; refusing to parse it (a manifest is a few KiB)",
            MAX_DOCUMENT_BYTES >> 10
        ));
    }
    // As for lines: only a document longer than the limit is counted.
    let flows = if doc_text.len() > MAX_FLOW_COLLECTIONS {
        doc_text
            .bytes()
            .filter(|b| matches!(b, b'[' | b'{'))
            .count()
    } else {
        0
    };
    (flows > MAX_FLOW_COLLECTIONS).then(|| {
        format!(
            "{flows} '[' and '{{' in one document, more than {MAX_FLOW_COLLECTIONS}; refusing to \
             parse it (a manifest has a few dozen)"
        )
    })
}

/// What a manifest file says of each resource it names, read as the loader reads it (UTF-8,
/// the BOM, one document at a time, stopping a document at its first error) but without
/// checking the rest: `(arn, ensure)` of every document whose `arn` and `ensure` read, and
/// whether some document could not be read at all. For `kpr import`, which must know what an
/// existing file declares even when kpr refuses it.
pub(crate) fn declared_in(bytes: &[u8]) -> (Vec<(String, Ensure)>, bool) {
    #[derive(Deserialize)]
    struct Head {
        arn: Option<String>,
        ensure: Option<Ensure>,
    }
    let index = match manifest_index(bytes) {
        Ok(index) => index,
        // Nothing in it to read; otherwise what it holds cannot be read.
        Err(refused) => return (Vec::new(), !matches!(refused, NoText::Empty)),
    };
    let mut out = Vec::new();
    let mut unreadable = false;
    for doc_no in 0..index.doc_starts.len() {
        let (_, doc_text) = index.doc_text(doc_no);
        if too_costly(doc_text).is_some() {
            unreadable = true;
            continue;
        }
        for document in serde_norway::Deserializer::from_str(doc_text) {
            match Option::<Head>::deserialize(document) {
                Ok(Some(Head {
                    arn: Some(arn),
                    ensure,
                })) => out.push((arn, ensure.unwrap_or(Ensure::Present))),
                Ok(_) => {}
                // As the loader does: what follows an error in this piece would be read out
                // of place (and serde_norway repeats the error forever).
                Err(_) => {
                    unreadable = true;
                    break;
                }
            }
        }
    }
    (out, unreadable)
}

/// What one manifest file declares: `(arn, ensure)` of each document whose `arn` reads, and
/// whether some document could not be read.
pub(crate) struct FileDeclarations {
    pub file: PathBuf,
    pub named: Vec<(String, Ensure)>,
    pub unreadable: bool,
}

/// Every manifest file below `dir`, as the loader finds them, with what each declares and
/// whether some document of it could not be read (as [`declared_in`] reads it): for `kpr
/// import`, which must not declare a resource a second time in another file, whatever the
/// file is called or where it was moved.
pub(crate) fn declarations_below(dir: &Path) -> Vec<FileDeclarations> {
    let (files, refused) = files_and_errors_below(dir);
    // What cannot be opened, listed or followed may declare anything, as a file that does
    // not parse may: the loader refuses the directory for each.
    let unread = |file: PathBuf| FileDeclarations {
        file,
        named: Vec::new(),
        unreadable: true,
    };
    files
        .into_iter()
        .map(|file| {
            let mut bytes = Vec::new();
            match std::fs::File::open(&file).and_then(|f| read_bounded(f, &mut bytes)) {
                // As the loader: a file past the limit is refused, not read in part.
                Ok(true) => {
                    let (named, unreadable) = declared_in(&bytes);
                    FileDeclarations {
                        file,
                        named,
                        unreadable,
                    }
                }
                Ok(false) | Err(_) => unread(file),
            }
        })
        .chain(refused.into_iter().map(unread))
        .collect()
}

fn parse_file(
    file: &Path,
    bytes: &[u8],
    opts: &LoadOptions,
    out: &mut Declared,
    diags: &mut Vec<Diagnostic>,
) {
    let error = |line: Option<usize>, message: String| Diagnostic {
        file: file.to_path_buf(),
        line,
        severity: Severity::Error,
        message,
    };
    let index = match manifest_index(bytes) {
        Ok(index) => index,
        Err(refused) => {
            let (line, message) = refused.line_and_message();
            diags.push(error(Some(line), message.into_owned()));
            return;
        }
    };
    let mut found = 0usize;
    // Each document is parsed on its own, from its `---` to the next. An error, even one that
    // leaves the YAML parser mid-document (an unknown anchor), then spoils only its document,
    // and one run tells the errors of them all.
    for doc_no in 0..index.doc_starts.len() {
        let (first_line, doc_text) = index.doc_text(doc_no);
        if let Some(why) = too_costly(doc_text) {
            diags.push(error(Some(index.doc_starts[doc_no] + 1), why));
            continue;
        }
        for document in serde_norway::Deserializer::from_str(doc_text) {
            let doc: Option<ManifestDoc> = match Option::<ManifestDoc>::deserialize(document) {
                Ok(doc) => doc,
                Err(e) => {
                    let mut message = yaml_message(&e);
                    // libyaml's reader errors (a control character) give a byte offset in the
                    // document, and a location at its start.
                    let at_offset = message.rsplit_once(" at position ").and_then(|(text, at)| {
                        let before = doc_text.as_bytes().get(..at.parse().ok()?)?;
                        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                        Some((text.to_string(), line + first_line))
                    });
                    let line = if let Some((text, line)) = at_offset {
                        message = text;
                        line
                    } else {
                        e.location()
                            .map(|l| locate::line_at(doc_text, &l) + first_line)
                            .unwrap_or_else(|| index.key_line(doc_no, "arn"))
                    };
                    // The reader's alias bound comes without a place: the first alias is it.
                    let line = if message.starts_with(ALIASES_REPEAT) {
                        first_alias_line(doc_text).map_or(line, |l| l + first_line)
                    } else {
                        line
                    };
                    // serde's derive tells a field given twice at the end of the mapping: point
                    // at the second one.
                    let line = message
                        .strip_prefix("duplicate field `")
                        .and_then(|rest| rest.split_once('`'))
                        .and_then(|(key, _)| index.key_lines(doc_no, key).nth(1))
                        .unwrap_or(line);
                    if (1..=index.len()).contains(&line)
                        && index
                            .line(line - 1)
                            .trim_start_matches(' ')
                            .starts_with('\t')
                    {
                        message.push_str(" (YAML cannot be indented with tabs: use spaces)");
                    }
                    // libyaml's words for an alias without a name: `Principal: *` or
                    // `Resource: *`, the most common slip in a policy written as YAML.
                    if message.starts_with("did not find expected alphabetic or numeric")
                        && (1..=index.len()).contains(&line)
                        && index.line(line - 1).contains('*')
                    {
                        message.push_str(
                            " (an unquoted * starts a YAML alias: write \"*\" in quotes, as in \
                             Principal: \"*\")",
                        );
                    }
                    diags.push(error(Some(line), message));
                    // The parser may have stopped mid-document: what follows in this piece
                    // would be read out of place.
                    break;
                }
            };
            let Some(doc) = doc else { continue };
            found += 1;
            let arn_line = index.key_line(doc_no, "arn");
            let source = Source {
                file: file.to_path_buf(),
                line: arn_line,
            };
            let arn = match ResourceArn::parse(&doc.arn) {
                Ok(arn) => arn,
                Err(e) => {
                    diags.push(error(Some(arn_line), e.to_string()));
                    continue;
                }
            };
            let written = Written {
                index: &index,
                doc_no,
                doc_text,
                first_line,
                located: std::cell::Cell::new(0),
            };
            match resource_from_doc(doc, &arn, &written, opts) {
                Ok((intent, findings)) => {
                    let had_error = findings.iter().any(|f| f.1 == Severity::Error);
                    for (line, severity, message) in findings {
                        diags.push(Diagnostic {
                            file: file.to_path_buf(),
                            line: Some(line),
                            severity,
                            message,
                        });
                    }
                    if had_error {
                        out.spoiled.push((arn, source));
                    } else {
                        out.valid.push(DesiredResource {
                            arn,
                            intent,
                            source,
                        });
                    }
                }
                Err((line, message)) => {
                    diags.push(error(Some(line), message));
                    out.spoiled.push((arn, source));
                }
            }
        }
    }
    if found == 0 && !diags.iter().any(|d| d.file == file) {
        diags.push(error(
            Some(1),
            "no manifest in file (only empty documents or comments)".into(),
        ));
    }
}

const ALIASES_REPEAT: &str = "YAML aliases (`*name`) repeat";

/// The 1-based line of the first alias (`*name`) in a document, as far as a look at each line
/// tells (a `*` inside quotes may pass for one).
fn first_alias_line(doc: &str) -> Option<usize> {
    doc.lines()
        .position(|line| {
            let b = line.as_bytes();
            (0..b.len()).any(|j| {
                b[j] == b'*'
                    && (j == 0 || b" \t[,{:-".contains(&b[j - 1]))
                    && b.get(j + 1)
                        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
            })
        })
        .map(|i| i + 1)
}

fn yaml_message(e: &serde_norway::Error) -> String {
    // serde_norway appends " at line L column C"; the diagnostic already carries the line.
    let msg = e.to_string();
    // Speak of what the user wrote, not of kpr's type names.
    const MANIFEST: &str = "a manifest (a mapping with `arn` and `policy` or `ensure: absent`)";
    // A document that is one string is a file of some other kind (a token, a key): quoting it
    // would print the file whole. Checked on the whole message: the string may itself hold
    // " at line ".
    if msg.starts_with("invalid type: string ") && msg.contains(", expected struct ManifestDoc") {
        return format!("the document is a string, not {MANIFEST}");
    }
    // From the first position on, libyaml's positions count from the document's start, not
    // the file's: the diagnostic's own line replaces them.
    let msg = match msg.find(" at line ") {
        Some(pos) => msg[..pos].to_string(),
        None => msg,
    };
    // The YAML reader's own bound on aliases (nested ones, `&b [*a, *a]`, repeat by powers):
    // said as what to do.
    if msg == "repetition limit exceeded" {
        return format!(
            "{ALIASES_REPEAT} more than the reader allows (repetition limit exceeded); write the \
             document without them"
        );
    }
    msg.replace("struct ManifestDoc", MANIFEST)
}

type Finding = (usize, Severity, String);

/// Where a document is written: what its errors and warnings point into.
struct Written<'a> {
    index: &'a LineIndex<'a>,
    doc_no: usize,
    doc_text: &'a str,
    /// Lines of the file before the document.
    first_line: usize,
    /// Paths located so far (see [`Written::locate`]).
    located: std::cell::Cell<usize>,
}

/// Each path located reads its document again: a policy with thousands of findings would take
/// minutes. Past this many in one document, the rest point at `policy:`.
const LOCATED_PER_DOCUMENT: usize = 20;

impl Written<'_> {
    /// The line of a path inside the policy mapping (`Statement[2].Effect`); `None` when it
    /// cannot be told (the caller then points at `policy:`).
    fn locate(&self, path: &str) -> Option<usize> {
        if !self.may_locate() {
            return None;
        }
        locate::line_of(self.doc_text, &format!("policy.{path}")).map(|l| l + self.first_line)
    }

    /// The same for a policy written as JSON in a literal block (`policy: |`) starting on the
    /// line after `policy_line`: its lines are the file's, one for one.
    fn locate_in_json(&self, json: &str, policy_line: usize, path: &str) -> Option<usize> {
        if !self.may_locate() {
            return None;
        }
        locate::line_of_unaliased(json, path).map(|l| l + policy_line)
    }

    fn may_locate(&self) -> bool {
        let n = self.located.get();
        self.located.set(n + 1);
        n < LOCATED_PER_DOCUMENT
    }
}

fn resource_from_doc(
    doc: ManifestDoc,
    arn: &ResourceArn,
    written: &Written,
    opts: &LoadOptions,
) -> Result<(Intent, Vec<Finding>), (usize, String)> {
    let (index, doc_no) = (written.index, written.doc_no);
    let arn_line = index.key_line(doc_no, "arn");
    let ensure = doc.ensure.unwrap_or(Ensure::Present);
    match (ensure, doc.policy) {
        (Ensure::Absent, Some(_)) => Err((
            index.key_line(doc_no, "ensure"),
            "`ensure: absent` and `policy` contradict each other; keep one".into(),
        )),
        (Ensure::Absent, None) => Ok((Intent::Absent, Vec::new())),
        (Ensure::Present, None) => Err((
            arn_line,
            "missing `policy` (or `ensure: absent` to require that the resource has none)".into(),
        )),
        (Ensure::Present, Some(value)) => {
            let policy_line = index.key_line(doc_no, "policy");
            // A policy given as a JSON string is located in the string, when a literal block
            // keeps its lines the file's; otherwise its findings point at `policy:`.
            let mut json_block = None;
            let yaml_policy = value.is_object();
            let (document, json) = match value {
                serde_json::Value::String(s) => {
                    let in_block = index.is_literal_block(policy_line);
                    let document = PolicyDocument::from_json_str(&s).map_err(|e| match &e {
                        PolicyError::Json(j) if in_block => {
                            // serde_json's own position counts the string's lines: the
                            // diagnostic's line, the file's, replaces it.
                            let text = j.to_string();
                            let cut = text.find(" at line ").map_or(&text[..], |i| &text[..i]);
                            (
                                policy_line + j.line(),
                                format!("policy: policy is not valid JSON: {cut}"),
                            )
                        }
                        PolicyError::Invalid { path, .. } if in_block => (
                            written
                                .locate_in_json(&s, policy_line, path)
                                .unwrap_or(policy_line),
                            format!("policy: {e}"),
                        ),
                        _ => (policy_line, format!("policy: {e}")),
                    })?;
                    let json = s.trim().to_string();
                    if in_block {
                        json_block = Some(s);
                    }
                    (document, json)
                }
                serde_json::Value::Object(_) => {
                    let document = PolicyDocument::from_value(&value).map_err(|e| {
                        let line = match &e {
                            PolicyError::Invalid { path, .. } => {
                                written.locate(path).unwrap_or(policy_line)
                            }
                            PolicyError::Json(_) => policy_line,
                        };
                        (line, format!("policy: {e}"))
                    })?;
                    if let Some(respelled) = respelled_scalar(&value, written) {
                        return Err(respelled);
                    }
                    // Into bytes directly: `Display` goes through `fmt::Write`, several times
                    // slower, and this runs once per manifest.
                    let json = serde_json::to_string(&value).expect("a JSON value serialises");
                    (document, json)
                }
                other => {
                    return Err((
                        policy_line,
                        format!(
                            "policy must be a mapping or a string holding JSON, not {}",
                            json_type(&other)
                        ),
                    ));
                }
            };
            let arn_text = arn.to_string();
            let findings = lint::lint(
                &document,
                &LintContext {
                    resource_arn: &arn_text,
                    allow_public: doc.allow_public,
                    max_size: opts.max_policy_size,
                    size: json.len(),
                },
            )
            .into_iter()
            .map(|f| {
                let severity = match f.severity {
                    LintSeverity::Error => Severity::Error,
                    LintSeverity::Warning => Severity::Warning,
                };
                let line = match &json_block {
                    None if !yaml_policy => None,
                    None => written.locate(&f.path),
                    Some(json) => written.locate_in_json(json, policy_line, &f.path),
                };
                (
                    line.unwrap_or(policy_line),
                    severity,
                    format!("policy {}: {}", f.path, f.message),
                )
            })
            .collect();
            let intent = Intent::Present {
                document: Arc::new(document),
                json: json.into(),
            };
            Ok((intent, findings))
        }
    }
}

/// YAML reads `0x10`, `0o17`, `0b11`, `+5` and `-0` as integers, so a condition value so
/// written would reach AWS as `16`, `15`, `3`, `5` or `0`. IAM compares condition values as
/// text: a value sent otherwise than written is refused, as a float is, with both ways to
/// write it, and so is one whose text cannot be found. Only condition values can be numbers in
/// a valid policy. This does not draw on [`Written::locate`]'s allowance: spent here, it would
/// leave later findings pointing at `policy:`.
fn respelled_scalar(policy: &serde_json::Value, written: &Written) -> Option<(usize, String)> {
    use locate::Seg;
    use serde_json::Value;
    let statements = match policy.get("Statement")? {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    let mut numbers = Vec::new();
    for (i, statement) in statements.into_iter().enumerate() {
        let Some(Value::Object(operators)) = statement.get("Condition") else {
            continue;
        };
        for (operator, keys) in operators {
            let Value::Object(keys) = keys else { continue };
            for (key, values) in keys {
                // The parts themselves: a key may hold dots and brackets of its own.
                let at = [
                    Seg::Key("policy"),
                    Seg::Key("Statement"),
                    Seg::Index(i),
                    Seg::Key("Condition"),
                    Seg::Key(operator),
                    Seg::Key(key),
                ];
                let path = format!("Statement[{i}].Condition.{operator}.{key}");
                // Numbers and booleans: YAML 1.2 reads `TRUE` and `False` as booleans too.
                let scalar = |v: &Value| v.is_number() || v.is_boolean();
                match values {
                    Value::Array(items) => {
                        for (j, item) in items.iter().enumerate() {
                            if scalar(item) {
                                let mut parts = at.to_vec();
                                parts.push(Seg::Index(j));
                                numbers.push((format!("{path}[{j}]"), parts, item));
                            }
                        }
                    }
                    v if scalar(v) => numbers.push((path, at.to_vec(), v)),
                    _ => {}
                }
            }
        }
    }
    // Each number is found by reading the document again: only when some token could be a
    // number YAML respells, which a policy seldom holds, is any number looked at.
    if numbers.is_empty() || !may_hold_respelled_scalar(written.doc_text) {
        return None;
    }
    // Past this many, the rest are refused unread rather than let through unchecked (no
    // policy needs that many unquoted beside one written in hex, octal, binary or signed).
    const CHECKED: usize = 64;
    numbers
        .into_iter()
        .enumerate()
        .find_map(|(i, (path, parts, n))| {
            let found = (i < CHECKED)
                .then(|| locate::scalar_at(written.doc_text, parts))
                .flatten();
            let Some((line, as_written)) = found else {
                let why = if i < CHECKED {
                    "kpr cannot find how this number is written".to_string()
                } else {
                    format!(
                        "kpr checks how YAML read the first {CHECKED} numbers of a document \
                         that holds a tag or a signed, hex, octal or binary number, and this one \
                         is past them"
                    )
                };
                return Some((
                    written.locate(&path).unwrap_or(written.first_line + 1),
                    format!("policy: {path}: {why}: put it in quotes (\"{n}\")"),
                ));
            };
            let as_read = n.to_string();
            let kind = if n.is_boolean() { "boolean" } else { "number" };
            (as_written != as_read).then(|| {
                (
                    line + written.first_line,
                    format!(
                        "policy: {path}: YAML reads {as_written} as the {kind} {as_read}, and the \
                     policy would say {as_read}; IAM compares condition values as text, so write \
                     {as_read}, or \"{as_written}\" in quotes"
                    ),
                )
            })
        })
}

/// Whether some token of `text` may be a boolean YAML reads otherwise than written (`TRUE`,
/// `False`), or an integer: signed
/// (`+5`, `-0`), or in hex, octal or binary (`0x10`, `0o17`, `0b11`), quoted too (a tag such
/// as `!!int "0x10"` makes a number of a quoted string, escapes and all, so any tag counts, as
/// does a byte-order mark, which libyaml skips mid-document; a `!` that ends a word does not). A token in a comment or a string
/// may pass for one: that only costs the check.
fn may_hold_respelled_scalar(text: &str) -> bool {
    if text.contains('\u{feff}') {
        return true;
    }
    text.split(|c: char| c.is_whitespace() || ",[]{}:\"'".contains(c))
        .any(|token| {
            if matches!(token, "True" | "TRUE" | "False" | "FALSE") {
                return true;
            }
            if token.starts_with('!') {
                // A tag (`!!int`, `!<tag:yaml.org,2002:int>`); a `!` ending a word is none.
                return true;
            }
            let unsigned = token.trim_start_matches(['+', '-']);
            let digits = unsigned.strip_prefix('0').map(|rest| rest.chars().next());
            match digits {
                Some(Some('x' | 'o' | 'b')) => true,
                // `-0`, `+0`, `+5`: a sign before digits.
                _ => {
                    token.len() > unsigned.len()
                        && unsigned.starts_with(|c: char| c.is_ascii_digit())
                        && (token.starts_with('+') || unsigned.bytes().all(|b| b == b'0'))
                }
            }
        })
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

/// What the error of a second declaration of one resource says: the file's other manifests
/// may be fine (`kpr serve` still corrects drift of theirs while the revision is invalid).
pub const DECLARED_TWICE: &str = "is declared twice";

/// Every document whose ARN parsed: the ones that passed every check, and the others, which
/// still count when looking for a resource declared twice, so that one run tells that too.
#[derive(Default)]
struct Declared {
    valid: Vec<DesiredResource>,
    spoiled: Vec<(ResourceArn, Source)>,
}

impl Declared {
    /// The valid resources, each declared once; an error for every later declaration.
    fn dedupe(self, diags: &mut Vec<Diagnostic>) -> DesiredState {
        let Declared { valid, spoiled } = self;
        let n = valid.len();
        let entry = |i: usize| match valid.get(i) {
            Some(r) => (&r.arn, &r.source),
            None => (&spoiled[i - n].0, &spoiled[i - n].1),
        };
        let mut order: Vec<usize> = (0..n + spoiled.len()).collect();
        order.sort_by(|&a, &b| {
            let ((a_arn, a_src), (b_arn, b_src)) = (entry(a), entry(b));
            (a_arn.identity_key(), a_src).cmp(&(b_arn.identity_key(), b_src))
        });
        let mut keep = vec![true; n];
        let mut first: Option<usize> = None;
        for &i in &order {
            let (arn, source) = entry(i);
            if let Some(f) = first
                && entry(f).0.same_resource(arn)
            {
                diags.push(Diagnostic {
                    file: source.file.clone(),
                    line: Some(source.line),
                    severity: Severity::Error,
                    message: format!(
                        "{arn} {DECLARED_TWICE}: here and at {} (one manifest per resource)",
                        entry(f).1
                    ),
                });
                if i < n {
                    keep[i] = false;
                }
                continue;
            }
            first = Some(i);
        }
        // In the sorted order, as the plan wants them.
        let mut slots: Vec<Option<DesiredResource>> = valid.into_iter().map(Some).collect();
        let resources = order
            .into_iter()
            .filter(|&i| i < n && keep[i])
            .filter_map(|i| slots[i].take())
            .collect();
        DesiredState { resources }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    const GOOD: &str = "arn: arn:aws:kinesis:us-east-1:111122223333:stream/orders
policy:
  Version: \"2012-10-17\"
  Statement:
    - Effect: Allow
      Principal: {AWS: \"arn:aws:iam::444455556666:role/reader\"}
      Action: [kinesis:GetRecords, kinesis:GetShardIterator]
      Resource: arn:aws:kinesis:us-east-1:111122223333:stream/orders
";

    /// A manifest the walk skipped would count as undeclared, and --prune would delete its
    /// policy: the extension's case does not matter, and a near miss or a hidden one is said.
    #[test]
    fn manifests_are_found_in_any_case_and_near_misses_are_said() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.YAML", &GOOD.replace("orders", "a"));
        write(d.path(), "b.Yml", &GOOD.replace("orders", "b"));
        write(d.path(), "c.json", "{}");
        write(d.path(), "d.yaml ", GOOD);
        write(d.path(), "NOTES.md", "not a manifest");
        // Hidden: not read, but a manifest's name is said; editor state is not.
        write(d.path(), ".e.yaml", &GOOD.replace("orders", "e"));
        write(d.path(), ".e.yaml.swp", "swap");
        write(d.path(), ".git/config", "[core]");
        let loaded = load_dir(d.path(), &LoadOptions::default());
        let warned: Vec<_> = loaded.warnings().map(|w| w.file.clone()).collect();
        assert_eq!(
            warned,
            [
                d.path().join(".e.yaml"),
                d.path().join("c.json"),
                d.path().join("d.yaml ")
            ]
        );
        let state = loaded.into_result().unwrap();
        let names: Vec<_> = state.resources.iter().map(|r| r.arn.to_string()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names.iter().all(|n| n.ends_with("/a") || n.ends_with("/b")),
            "{names:?}"
        );
    }

    /// A link must not make kpr read, and quote in its errors, a file beyond what a review of
    /// the manifests covers; within the git work tree that holds them, links are followed.
    #[test]
    fn symlinks_are_followed_only_within_the_work_tree() {
        use std::os::unix::fs::symlink;
        const SECRET: &str = "ghp_0123456789abcdefSECRET";
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "token", &format!("{SECRET}\n"));
        write(d.path(), "elsewhere/ok.yaml", GOOD);
        let m = d.path().join("m");
        write(&m, "a.yaml", &GOOD.replace("orders", "a"));
        symlink("../token", m.join("token.yaml")).unwrap();
        symlink("../elsewhere", m.join("linked")).unwrap();
        let loaded = load_dir(&m, &LoadOptions::default());
        let errors: Vec<_> = loaded.errors().collect();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        for (e, name) in errors.iter().zip(["linked", "token.yaml"]) {
            assert_eq!(e.file, m.join(name));
            assert!(e.message.contains("symlink to a place outside"), "{e:?}");
        }
        assert!(!format!("{:?}", loaded.diagnostics).contains(SECRET));
        // In a git work tree, the tree is the bound: both links are followed, and the token,
        // now read, is still not quoted. Its .git is not: a CI job's token may be in its
        // config.
        std::fs::create_dir(d.path().join(".git")).unwrap();
        write(d.path(), ".git/config", &format!("arn: {SECRET}\n"));
        symlink("../.git/config", m.join("config.yaml")).unwrap();
        let loaded = load_dir(&m, &LoadOptions::default());
        let errors: Vec<_> = loaded.errors().collect();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(errors[0].file, m.join("config.yaml"));
        assert!(errors[0].message.contains("or into its .git"), "{errors:?}");
        assert_eq!(errors[1].file, m.join("token.yaml"));
        assert!(errors[1].message.contains("the document is a string"));
        assert!(!format!("{:?}", loaded.diagnostics).contains(SECRET));
        assert_eq!(loaded.files, 3);
        std::fs::remove_file(m.join("config.yaml")).unwrap();
        // A directory beside the work tree, named through it with `..`: not a link, read.
        let beside = tempfile::tempdir().unwrap();
        write(beside.path(), "b.yaml", GOOD);
        let mut relative = d.path().to_path_buf();
        for _ in d.path().components().skip(1) {
            relative.push("..");
        }
        let relative = relative.join(beside.path().strip_prefix("/").unwrap());
        let loaded = load_dir(&relative, &LoadOptions::default());
        assert_eq!(loaded.errors().count(), 0, "{:?}", loaded.diagnostics);
        // The manifest directory itself a link the work tree holds, to a place outside it.
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "token.yaml", &format!("{SECRET}\n"));
        symlink(outside.path(), d.path().join("linked-out")).unwrap();
        let loaded = load_dir(&d.path().join("linked-out"), &LoadOptions::default());
        let errors: Vec<_> = loaded.errors().collect();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0]
                .message
                .contains("the manifest directory is a symlink")
        );
        assert_eq!(loaded.files, 0);
    }

    /// A link flipped away and back between two snapshots, `--dir` itself or a link inside
    /// it, is told from one left alone: what lay behind it may have changed meanwhile.
    #[test]
    fn a_snapshot_tells_a_link_flipped_away_and_back() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        for v in ["..v0", "..v1"] {
            write(&d.path().join(v), "a.yaml", GOOD);
        }
        symlink("..v0", d.path().join("..data")).unwrap();
        symlink("..data/a.yaml", d.path().join("a.yaml")).unwrap();
        let flip = |to: &str| {
            symlink(to, d.path().join("..tmp")).unwrap();
            std::fs::rename(d.path().join("..tmp"), d.path().join("..data")).unwrap();
        };
        for dir in [d.path().to_path_buf(), d.path().join("..data")] {
            let before = DirSnapshot::of(&dir);
            assert_eq!(before, DirSnapshot::of(&dir), "{dir:?} changed by itself");
            flip("..v1");
            flip("..v0");
            assert_ne!(before, DirSnapshot::of(&dir), "{dir:?}");
        }
    }

    /// A directory reached both as itself and through a link that sorts first is read where
    /// git holds it, and the error names the link.
    #[test]
    fn a_second_way_into_a_directory_is_blamed_on_the_link() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join(".git")).unwrap();
        write(d.path(), "real/a.yaml", GOOD);
        symlink("real", d.path().join("alias")).unwrap();
        let loaded = load_dir(d.path(), &LoadOptions::default());
        let errors: Vec<_> = loaded.errors().collect();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].file, d.path().join("alias"));
        assert!(errors[0].message.contains("reached twice"), "{errors:?}");
        assert_eq!(
            loaded.state.resources[0].source.file,
            d.path().join("real/a.yaml")
        );
    }

    #[test]
    fn loads_multi_document_files_recursively() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.yaml", GOOD);
        write(
            d.path(),
            "sub/b.yml",
            "# leading comment\n---\narn: arn:aws:kinesis:us-east-1:111122223333:stream/audit\nensure: absent\n---\n\
             arn: arn:aws:kinesis:us-east-1:111122223333:stream/x\npolicy: '{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Principal\":{\"AWS\":\"111122223333\"},\"Action\":\"kinesis:PutRecord\",\"Resource\":\"arn:aws:kinesis:us-east-1:111122223333:stream/x\"}]}'\n",
        );
        write(d.path(), "ignored.txt", "not yaml");
        let loaded = load_dir(d.path(), &LoadOptions::default());
        assert_eq!(loaded.errors().count(), 0, "{:?}", loaded.diagnostics);
        let arns: Vec<String> = loaded
            .state
            .resources
            .iter()
            .map(|r| r.arn.stream.clone())
            .collect();
        assert_eq!(arns, ["audit", "orders", "x"]);
        let audit = &loaded.state.resources[0];
        assert!(matches!(audit.intent, Intent::Absent));
        assert_eq!(audit.source.line, 3);
        assert_eq!(loaded.state.resources[2].source.line, 6);
    }

    #[test]
    fn a_huge_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.yaml", GOOD);
        // Sparse: no disk space, and only the first 16 MiB + 1 byte are ever read.
        let f = std::fs::File::create(d.path().join("huge.yaml")).unwrap();
        f.set_len(MAX_FILE_BYTES * 2).unwrap();
        let loaded = load_dir(d.path(), &LoadOptions::default());
        let errs: Vec<String> = loaded.errors().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("huge.yaml") && errs[0].contains("larger than 16 MiB"));
        assert_eq!(loaded.state.resources.len(), 1);
    }

    #[test]
    fn files_come_in_path_order() {
        let d = tempfile::tempdir().unwrap();
        // '-' and '.' sort before '/' byte-wise, but after the end of a component: these names
        // would come out in another order if the walk compared whole paths as strings.
        for name in [
            "b.yaml",
            "a-b.yaml",
            "a/z.yaml",
            "a/c/y.yaml",
            "a.b/x.yaml",
            "a.yaml",
        ] {
            write(d.path(), name, "x: 1\n");
        }
        let mut files = Vec::new();
        collect_files(
            d.path(),
            &link_bound(d.path()).unwrap(),
            &mut files,
            &mut HashSet::new(),
            &mut Vec::new(),
            &mut 0,
        );
        let mut sorted = files.clone();
        sorted.sort();
        assert_eq!(files, sorted);
        assert_eq!(files.len(), 6);
    }

    /// Names that are not UTF-8 (a Latin-1 "é"): the manifest is read like any other, and its
    /// place still serialises, so the JSON output does not fail because of it.
    #[test]
    fn names_that_are_not_utf8_are_read() {
        use std::ffi::OsStr;
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join(OsStr::from_bytes(b"pr\xe9d"));
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join(OsStr::from_bytes(b"ord\xe9rs.yaml")), GOOD).unwrap();
        std::fs::write(d.path().join(OsStr::from_bytes(b"bad\xe9.yml")), "arn: [").unwrap();
        let loaded = load_dir(d.path(), &LoadOptions::default());
        assert_eq!(loaded.files, 2);
        assert_eq!(loaded.state.resources.len(), 1);
        let source = serde_json::to_value(&loaded.state.resources[0].source).unwrap();
        assert!(
            source["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("pr\u{fffd}d/ord\u{fffd}rs.yaml")),
            "{source}"
        );
        let errors: Vec<_> = loaded.errors().collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let error = serde_json::to_value(errors[0]).unwrap();
        assert!(
            error["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("bad\u{fffd}.yml")),
            "{error}"
        );
    }

    #[test]
    fn duplicate_names_both_places() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.yaml", GOOD);
        write(d.path(), "b.yaml", &format!("# c\n\n{GOOD}"));
        let loaded = load_dir(d.path(), &LoadOptions::default());
        let errs: Vec<String> = loaded.errors().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("b.yaml:3:"), "{}", errs[0]);
        assert!(errs[0].contains("a.yaml:1"), "{}", errs[0]);
    }

    /// A document ends at `...` too; the directives before the next `---` belong to that
    /// document, and a document may follow `...` without any `---`. A `---` may be followed by
    /// a tab.
    #[test]
    fn document_end_markers_and_directives_split_documents_as_yaml_does() {
        let d = tempfile::tempdir().unwrap();
        let other = GOOD.replace("stream/orders", "stream/billing");
        let third = GOOD.replace("stream/orders", "stream/audit");
        write(
            d.path(),
            "a.yaml",
            &format!("{GOOD}...\n%YAML 1.1\n---\n{other}...\n# a comment\n---\n{third}"),
        );
        let loaded = load_dir(d.path(), &LoadOptions::default());
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        assert_eq!(loaded.state.resources.len(), 3);
        // After `...` a document needs its `---`, as libyaml and yamllint have it.
        write(d.path(), "a.yaml", &format!("{GOOD}...\n{other}"));
        let loaded = load_dir(d.path(), &LoadOptions::default());
        assert!(loaded.has_errors(), "{:?}", loaded.diagnostics);
        let error_lines = |text: &str| {
            write(d.path(), "a.yaml", text);
            let loaded = load_dir(d.path(), &LoadOptions::default());
            let lines: Vec<Option<usize>> = loaded.errors().map(|e| e.line).collect();
            (lines, loaded.diagnostics)
        };
        // A document that begins on its `---` line is found there.
        let (lines, diags) = error_lines(
            "--- {arn: \"arn:aws:kinesis:us-east-1:111122223333:strem/z\", ensure: absent}\n",
        );
        assert_eq!(lines, [Some(1)], "{diags:?}");
        let (lines, diags) = error_lines("---\t\narn: [x]\n---\t# two\narn: a\nensure: gone\n");
        assert_eq!(lines, [Some(2), Some(5)], "{diags:?}");
    }

    /// A declaration with errors of its own still counts as one: both problems in one run.
    /// A number YAML reads otherwise than written is refused wherever it is: under an
    /// operator with a colon of its own, in a document with aliases, after many numbers; one
    /// written as read is not, a tag before it included. Later findings keep their lines.
    #[test]
    fn a_respelled_number_is_refused_however_the_policy_is_laid_out() {
        // With an alias, only what its check needs is located: later findings point at
        // `policy:` (line 2), as `locate::line_of` has it.
        let with = |condition: &str, alias: bool| {
            let (anchor, principal) = if alias {
                ("&p ", "*p")
            } else {
                ("", "\"111122223333\"")
            };
            let doc = format!(
                "{}      Condition:\n        {condition}\n    - Effect: Deny\n      \
                 Principal: {{AWS: {principal}}}\n      Action: kinesis:GetRecordz\n      \
                 Resource: arn:aws:kinesis:us-east-1:111122223333:stream/orders\n",
                GOOD.replace("{AWS: ", &format!("{{AWS: {anchor}"))
            );
            let loaded = load_bytes(Path::new("m.yaml"), doc.as_bytes(), &LoadOptions::default());
            loaded
                .diagnostics
                .iter()
                .map(|d| format!("{}:{:?}", d.line.unwrap_or(0), d.severity))
                .collect::<Vec<_>>()
        };
        let many: Vec<String> = (1..=30).map(|n| n.to_string()).collect();
        let many = many.join(", ");
        for (refused, alias) in [
            (
                "ForAnyValue:NumericEquals: {aws:MultiFactorAuthAge: [0x10]}".to_string(),
                false,
            ),
            ("NumericLessThan: {aws:MultiFactorAuthAge: +5}".into(), true),
            (
                format!("NumericLessThan: {{aws:MultiFactorAuthAge: [{many}, 0o17]}}"),
                false,
            ),
        ] {
            assert_eq!(with(&refused, alias), ["10:Error"], "{refused}");
        }
        for (accepted, warned_at) in [
            (
                "NumericLessThan: {aws:MultiFactorAuthAge: !!int 3600}".to_string(),
                13,
            ),
            (
                format!("NumericLessThan: {{aws:MultiFactorAuthAge: [{many}]}}"),
                13,
            ),
        ] {
            // The unknown action's warning, at its own line.
            let warning = format!("{warned_at}:Warning");
            assert_eq!(with(&accepted, false), [warning], "{accepted}");
        }
        assert_eq!(
            with("Bool: {aws:SecureTransport: true}", true),
            ["2:Warning"]
        );
        // YAML 1.2 reads TRUE and False as booleans: StringEquals would compare "true".
        for respelled in [
            "StringEquals: {aws:PrincipalTag/Quarantined: TRUE}",
            "StringEquals: {aws:PrincipalTag/Quarantined: [\"x\", False]}",
            "Bool: {aws:SecureTransport: True}",
        ] {
            assert_eq!(with(respelled, false), ["10:Error"], "{respelled}");
        }
        assert_eq!(
            with(
                "StringEquals: {aws:PrincipalTag/Quarantined: \"TRUE\"}",
                false
            ),
            ["13:Warning"]
        );
        // A key holding brackets and dots is one key; a decimal number under it is accepted,
        // a respelled one refused.
        let tagged = |n: &str| format!("NumericEquals: {{\"aws:RequestTag/a.b[0]\": [5, {n}]}}");
        assert_eq!(with(&tagged("6"), false), ["13:Warning"]);
        assert_eq!(with(&tagged("+6"), false), ["10:Error"]);
        // Many decimal numbers, and nothing that could be respelled: none is read again.
        let plenty: Vec<String> = (1..=100).map(|n| n.to_string()).collect();
        let plenty = format!(
            "NumericLessThan: {{aws:MultiFactorAuthAge: [{}]}}",
            plenty.join(", ")
        );
        assert_eq!(with(&plenty, false), ["13:Warning"]);
        for (text, may) in [
            ("a: 0x10", true),
            ("[1, -0]", true),
            ("{k: +5}", true),
            ("b: 0b11", true),
            ("Version: \"2012-10-17\"\nk: [1, 20, 007]", false),
            ("k: -5 # and 10", false),
            ("vpce-0b1c", false),
            ("k: !!int \"16\"", true),
            ("# do not edit by hand!\nk: [1, 2]", false),
            ("k: '+5'", true),
            ("[1,\n\u{feff}+5]", true),
            ("k: [TRUE]", true),
            ("k: False", true),
            ("k: TRUEish", false),
        ] {
            assert_eq!(may_hold_respelled_scalar(text), may, "{text}");
        }
    }

    #[test]
    fn a_resource_declared_twice_is_told_beside_other_errors() {
        let d = tempfile::tempdir().unwrap();
        let public = GOOD.replace("{AWS: \"arn:aws:iam::444455556666:role/reader\"}", "\"*\"");
        write(d.path(), "a.yaml", &public);
        write(d.path(), "b.yaml", GOOD);
        write(d.path(), "c.yaml", &format!("{GOOD}ensure: absent\n"));
        let loaded = load_dir(d.path(), &LoadOptions::default());
        let errs: Vec<String> = loaded.errors().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.contains("a.yaml:") && e.contains("allowPublic")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("c.yaml:") && e.contains("contradict")),
            "{errs:?}"
        );
        for later in ["b.yaml:1:", "c.yaml:1:"] {
            assert!(
                errs.iter().any(|e| e.contains(later)
                    && e.contains("declared twice")
                    && e.contains("a.yaml:1")),
                "{later}: {errs:?}"
            );
        }
    }

    #[test]
    fn consumer_by_name_and_by_timestamp_are_the_same_resource() {
        let d = tempfile::tempdir().unwrap();
        let base = "arn:aws:kinesis:us-east-1:111122223333:stream/o/consumer/c";
        let body = |arn: &str| {
            format!(
                "arn: {arn}\nallowPublic: false\npolicy:\n  Version: \"2012-10-17\"\n  Statement:\n  - Effect: Allow\n    Principal: {{AWS: \"111122223333\"}}\n    Action: kinesis:SubscribeToShard\n    Resource: \"{base}:*\"\n"
            )
        };
        write(d.path(), "a.yaml", &body(base));
        write(d.path(), "b.yaml", &body(&format!("{base}:1700000000")));
        let loaded = load_dir(d.path(), &LoadOptions::default());
        let errs: Vec<String> = loaded.errors().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("declared twice"));
    }

    /// libyaml's positions count from the document's start: left in a message about a later
    /// document, they would name a second, wrong line. And a string document is never quoted,
    /// even one that holds " at line ".
    #[test]
    fn yaml_messages_name_no_line_of_their_own() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "m.yaml",
            &format!("{GOOD}---\narn: x\npolicy: {{a: [b\n"),
        );
        write(d.path(), "s.yaml", "token at line 3 column 4 secret\n");
        let other = GOOD.replace("orders", "other");
        write(
            d.path(),
            "c.yaml",
            &format!("{other}---\n# a\nfoo: a\u{1}b\n"),
        );
        let loaded = load_dir(d.path(), &LoadOptions::default());
        let errors: Vec<_> = loaded.errors().collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        for e in &errors {
            assert!(!e.message.contains(" at line "), "{e:?}");
            assert!(!e.message.contains(" at position "), "{e:?}");
            assert!(!e.message.contains("secret"), "{e:?}");
        }
        // A key given twice, quoted the second time: the error names that line.
        write(
            d.path(),
            "q.yaml",
            &format!("{}\"arn\": x\n", GOOD.replace("orders", "q")),
        );
        let loaded = load_dir(d.path(), &LoadOptions::default());
        let errors: Vec<_> = loaded.errors().collect();
        let twice = errors.iter().find(|e| e.file.ends_with("q.yaml")).unwrap();
        assert_eq!(twice.line, Some(9), "{twice:?}");
        // JSON in a block scalar: a literal one (`|`) keeps its lines, so the error's line in
        // the JSON is a line of the file; a folded one (`>`) joins them, so only the key's line
        // is sure.
        let json = "  {\"Version\": \"2012-10-17\",\n  \"Statement\": [,]}\n";
        let arn = "arn: arn:aws:kinesis:us-east-1:111122223333:stream/j";
        for (style, want) in [("|", 4), (">", 2)] {
            let j = tempfile::tempdir().unwrap();
            write(
                j.path(),
                "j.yaml",
                &format!("{arn}\npolicy: {style}\n{json}"),
            );
            let loaded = load_dir(j.path(), &LoadOptions::default());
            let e: Vec<_> = loaded.errors().collect();
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].line, Some(want), "{style} {e:?}");
        }
        // The control character is on the file's line 11.
        let control = errors.iter().find(|e| e.file.ends_with("c.yaml")).unwrap();
        assert_eq!(control.line, Some(11), "{control:?}");
    }

    /// What would cost libyaml unbounded memory or time is refused before it parses: a huge
    /// document (~64 bytes of memory per byte), deep flow nesting (time with the square of
    /// the size), with the other documents of the file still read. A file of lone carriage
    /// returns, whose lines kpr would name wrongly, is refused at its first one.
    #[test]
    fn documents_too_costly_to_parse_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let deep = format!("arn: {}\n", "[".repeat(MAX_FLOW_COLLECTIONS + 1));
        write(d.path(), "deep.yaml", &format!("{GOOD}---\n{deep}"));
        let huge = format!("# {}\n{GOOD}", "x".repeat(MAX_DOCUMENT_BYTES));
        write(d.path(), "huge.yaml", &huge);
        write(d.path(), "cr.yaml", &GOOD.replace('\n', "\r"));
        write(
            d.path(),
            "crlf.yaml",
            &GOOD.replace("orders", "o2").replace('\n', "\r\n"),
        );
        write(d.path(), "mixed.yaml", "# a\r\n# b\n# c\rarn: x\n");
        write(d.path(), "many.yaml", &"---\n".repeat(MAX_DOCUMENTS + 1));
        // 6 KB that YAML's aliases repeat into 400,000 values: 2.7 GB at 120 KB of them.
        let anchored = vec!["1"; 800].join(",");
        let aliases = vec!["*a"; 500].join(",");
        write(
            d.path(),
            "aliases.yaml",
            &format!(
                "{}---\narn: x\npolicy:\n  Id: &a [{anchored}]\n  Version: [{aliases}]\n",
                GOOD.replace("orders", "o3")
            ),
        );
        write(
            d.path(),
            "lines.yaml",
            &format!("{GOOD}{}", "\n".repeat(MAX_LINES)),
        );
        let loaded = load_dir(d.path(), &LoadOptions::default());
        let mut errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
        errors.sort();
        assert_eq!(errors.len(), 7, "{errors:#?}");
        let at = |file: &str, line: usize, text: &str| {
            let want = format!("{}:{line}: error: ", d.path().join(file).display());
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with(&want) && e.contains(text)),
                "{want} {text}: {errors:#?}"
            );
        };
        at("cr.yaml", 1, "carriage return without a line feed");
        at("mixed.yaml", 3, "carriage return without a line feed");
        at("deep.yaml", 9, "refusing to parse it");
        at("huge.yaml", 1, "larger than 256 KiB");
        at("lines.yaml", 1, "lines in one file");
        at("many.yaml", 1, "documents in one file");
        // At the anchor, whose values the aliases were repeating.
        at(
            "aliases.yaml",
            GOOD.lines().count() + 4,
            "more than 262144 values, repeated by YAML aliases",
        );
        // The first documents of deep.yaml and aliases.yaml, and the CRLF file, load.
        assert_eq!(loaded.state.resources.len(), 3, "{errors:#?}");
    }

    #[test]
    fn a_diagnostic_is_one_line_whatever_it_quotes() {
        let d = Diagnostic {
            file: PathBuf::from("a\nb.yaml:1: error: forged.yaml"),
            line: Some(2),
            severity: Severity::Error,
            message: "unknown field `x\nc.yaml:1: error: FORGED\u{200b}`".into(),
        };
        let shown = d.to_string();
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(
            shown.contains("a\\nb.yaml") && shown.contains("\\u{200b}"),
            "{shown}"
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "typo.yaml",
                "arn: arn:aws:kinesis:us-east-1:111122223333:stream/o\npolcy: {}\n",
                2,
                "unknown field `polcy`",
            ),
            (
                "tabs.yaml",
                "arn: x\npolicy:\n\tVersion: 1\n",
                3,
                "YAML cannot be indented with tabs",
            ),
            (
                "badarn.yaml",
                "# c\narn: arn:aws:s3:us-east-1:111122223333:stream/o\nensure: absent\n",
                2,
                "not \"kinesis\"",
            ),
            ("empty.yaml", "\n\n", 1, "empty file"),
            (
                "both.yaml",
                "arn: arn:aws:kinesis:us-east-1:111122223333:stream/o\nensure: absent\npolicy: {}\n",
                2,
                "contradict",
            ),
            (
                "nopolicy.yaml",
                "arn: arn:aws:kinesis:us-east-1:111122223333:stream/o\n",
                1,
                "missing `policy`",
            ),
            (
                "json.yaml",
                "arn: arn:aws:kinesis:us-east-1:111122223333:stream/o\npolicy: |\n  {\"Version\": \"2012-10-17\",\n   \"Statement\": [ oops ]}\n",
                4,
                "not valid JSON",
            ),
            // In a literal block the JSON's lines are the file's: a key, and a lint finding,
            // point at their own line, not at `policy:`.
            (
                "jsonkey.yaml",
                "arn: arn:aws:kinesis:us-east-1:111122223333:stream/o\npolicy: |\n  {\"Version\": \"2012-10-17\",\n   \"Statement\": [{\"Effect\": \"Allow\",\n     \"Princpal\": \"*\"}]}\n",
                5,
                "unknown key \"Princpal\"",
            ),
            (
                "jsonpublic.yaml",
                "arn: arn:aws:kinesis:us-east-1:111122223333:stream/o\npolicy: |\n  {\"Version\": \"2012-10-17\",\n   \"Statement\": [{\"Effect\": \"Allow\", \"Action\": \"kinesis:GetRecords\",\n     \"Resource\": \"arn:aws:kinesis:us-east-1:111122223333:stream/o\",\n     \"Principal\": \"*\"}]}\n",
                6,
                "makes the resource public",
            ),
            (
                "wrongtype.yaml",
                "arn: arn:aws:kinesis:us-east-1:111122223333:stream/o\npolicy: [1]\n",
                2,
                "mapping or a string",
            ),
            ("comments.yaml", "# only\n---\n", 1, "no manifest"),
        ];
        for (name, text, line, needle) in cases {
            let d = tempfile::tempdir().unwrap();
            write(d.path(), name, text);
            let loaded = load_dir(d.path(), &LoadOptions::default());
            let errs: Vec<&Diagnostic> = loaded.errors().collect();
            assert!(!errs.is_empty(), "{name}: no error");
            let e = errs[0];
            assert_eq!(e.line, Some(*line), "{name}: {e}");
            assert!(e.to_string().contains(needle), "{name}: {e}");
            assert!(e.to_string().contains(name), "{name}: {e}");
            assert!(loaded.state.resources.is_empty(), "{name}");
        }
    }

    /// Each document is read on its own, so an error in one (even one that stops the YAML
    /// parser mid-document) neither hides nor garbles the next.
    #[test]
    fn every_document_of_a_file_is_read_on_its_own() {
        let d = tempfile::tempdir().unwrap();
        let docs = [
            "arn: [x]\npolicy: {}\n",
            GOOD,
            "arn: a\nensure: gone\n",
            "arn: b\npolicy: {a: [}\n",
            // An unknown field, then an alias the parser cannot resolve mid-mapping: reading
            // on after it in the same parser once panicked inside serde_norway.
            "polcy: 1\narn: *missing\nensure: absent\n",
            "allowPublic: 7\n",
        ];
        let text = docs.join("---\n");
        write(d.path(), "multi.yaml", &text);
        let loaded = load_dir(d.path(), &LoadOptions::default());
        let errs: Vec<(Option<usize>, &str)> = loaded
            .errors()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        let line_of = |needle: &str| text.lines().position(|l| l == needle).unwrap() + 1;
        let want = [
            (1, "invalid type: sequence, expected a string"),
            (line_of("ensure: gone"), "unknown variant `gone`"),
            (
                line_of("policy: {a: [}"),
                "did not find expected node content",
            ),
            (line_of("polcy: 1"), "unknown field `polcy`"),
            (line_of("allowPublic: 7"), "invalid type: integer `7`"),
        ];
        assert_eq!(errs.len(), want.len(), "{errs:?}");
        for ((line, said), (want_line, want_said)) in errs.iter().zip(want) {
            assert_eq!(*line, Some(want_line), "{errs:?}");
            assert!(said.contains(want_said), "{errs:?}");
        }
        // The good document still loads: only errors keep it from being applied.
        assert_eq!(loaded.state.resources.len(), 1);
    }

    #[test]
    fn empty_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let loaded = load_dir(d.path(), &LoadOptions::default());
        assert!(loaded.has_errors());
    }

    #[test]
    fn binary_garbage_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("bin.yaml"), [0x61u8, 0x0a, 0xff, 0xfe, 0x00]).unwrap();
        let loaded = load_dir(d.path(), &LoadOptions::default());
        let e = loaded.errors().next().unwrap();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("UTF-8"));
    }

    /// As editors on Windows write it: the byte order mark is not part of the YAML.
    #[test]
    fn a_byte_order_mark_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("bom.yaml"), format!("\u{feff}{GOOD}")).unwrap();
        let loaded = load_dir(d.path(), &LoadOptions::default());
        assert_eq!(loaded.errors().count(), 0, "{:?}", loaded.diagnostics);
        assert_eq!(loaded.state.resources.len(), 1);
    }
}
