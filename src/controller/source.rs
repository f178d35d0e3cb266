//! Where the desired state comes from: a local directory, or a git working copy that kpr owns
//! (fetch, check out the branch head, diff two revisions).
//!
//! Git runs as a child process (the git CLI handles every transport and credential mechanism
//! users already have). A token never reaches git's argv, `.git/config` or a log line: git
//! asks for it through a credential helper, given on the command line as static text, that
//! reads it from the child's environment (see [`CREDENTIAL_HELPER`]).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::{RotatingSecret, Secret, SourceSpec};

/// A fetch of a large repository over a slow link can take minutes; a hung one must not stall
/// the controller forever.
const GIT_TIMEOUT: Duration = Duration::from_secs(300);
/// Where a git source's working copy keeps the last good revision (see
/// [`Source::record_good`]). Outside `refs/remotes`, so no fetch moves or prunes it.
const LAST_GOOD_REF: &str = "refs/kpr/last-good";
/// Beside it, in the working copy's git config: which source it is the last good revision of.
const LAST_GOOD_SOURCE: &str = "kpr.lastGoodSource";
/// The last good revision of a working copy recovered afresh, until a fetch has brought it
/// and it is the ref again (the recovery in `GitRepo::sync`).
const LAST_GOOD_PENDING: &str = "kpr.lastGoodPending";
const RESET_NAMED: &str = "kpr.resetNamed";
/// Where the heads resets replaced are kept (space-separated), for a restart.
const REPLACED: &str = "kpr.replaced";
/// The pushes judged (`before:after`), and the delivery ids of the webhooks that named them:
/// after a restart a late or redelivered webhook is told as before it.
const SEEN_PUSHES: &str = "kpr.seenPushes";
const SEEN_DELIVERIES: &str = "kpr.seenDeliveries";
/// A pushed commit kpr waits for a fetch to bring.
const AWAITED: &str = "kpr.awaited";
/// Present when the last good revision may be on its way out (see `Reconciler::good_in_doubt`).
const IN_DOUBT: &str = "kpr.lastGoodInDoubt";

pub enum Source {
    Dir(PathBuf),
    Git(GitRepo),
}

/// What a git source's kept state is of: the repository, branch and path. State kept for
/// another (a changed `--git-branch`) would judge this one's pushes by that one's history.
pub fn identity(url: &str, branch: &str, path: &Path) -> String {
    format!("{url} {branch} {}", path.display())
}

/// Whether two [`identity`] texts name the same source: the same repository however its URL
/// is spelt (`file://` or a bare path, a trailing `/`, a hosted one with or without `.git`),
/// branch and path. An edit of the URL's spelling must not drop what kpr kept (the heads
/// resets replaced among it).
pub fn same_source(a: &str, b: &str) -> bool {
    fn parts(id: &str) -> Option<(String, &str, &str)> {
        let (url, rest) = id.split_once(' ')?;
        let (branch, path) = rest.split_once(' ')?;
        Some((repository_key(url), branch, path))
    }
    a == b || parts(a).is_some_and(|pa| parts(b) == Some(pa))
}

/// One text per repository, however its URL is spelt: a local one by its real path (`file://`
/// or not, slashes doubled or trailing, through a symlink); a hosted one with its scheme and
/// host in lower case, scp syntax (`git@host:org/r`) as `ssh://` (`/~/` where relative), and
/// `.git` optional, as git hosts serve `r` and `r.git` alike (on disk they are two
/// directories).
fn repository_key(url: &str) -> String {
    let collapse = |p: &str| {
        let mut out = String::with_capacity(p.len());
        for c in p.chars() {
            if !(c == '/' && out.ends_with('/')) {
                out.push(c);
            }
        }
        out.trim_end_matches('/').to_string()
    };
    let local = url
        .strip_prefix("file://")
        .or(url.starts_with('/').then_some(url));
    if let Some(path) = local {
        return std::fs::canonicalize(path)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| collapse(path));
    }
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest.to_string()),
        // scp syntax: `[user@]host:path`, relative to the user's home unless absolute, as
        // `ssh://host/~/path` is.
        None => match url.split_once(':') {
            Some((host, path)) if !host.contains('/') => match path.strip_prefix('/') {
                Some(absolute) => ("ssh".to_string(), format!("{host}/{absolute}")),
                None => ("ssh".to_string(), format!("{host}/~/{path}")),
            },
            _ => (String::new(), url.to_string()),
        },
    };
    let (authority, path) = rest.split_once('/').unwrap_or((&rest, ""));
    // The host's case, not the user's.
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => format!("{user}@{}", host.to_ascii_lowercase()),
        None => authority.to_ascii_lowercase(),
    };
    let path = collapse(path);
    let path = path.strip_suffix(".git").unwrap_or(&path);
    format!("{scheme}://{authority}/{}", path.trim_end_matches('/'))
}

pub struct GitRepo {
    url: String,
    branch: String,
    path: PathBuf,
    /// Read again from its file, if it has one, before each fetch.
    token: RotatingSecret,
    /// The URL's user name, answered by [`CREDENTIAL_HELPER`] like the token.
    user: Option<Secret>,
    checkout: PathBuf,
}

impl Source {
    pub async fn new(spec: &SourceSpec) -> Result<Self, String> {
        match spec {
            SourceSpec::Dir(d) => Ok(Source::Dir(d.clone())),
            SourceSpec::Git(g) => {
                tokio::fs::create_dir_all(&g.workdir)
                    .await
                    .map_err(|e| format!("workdir {}: {e}", g.workdir.display()))?;
                // Absolute, so manifest paths in logs and status do not depend on the cwd.
                let workdir = tokio::fs::canonicalize(&g.workdir)
                    .await
                    .map_err(|e| format!("workdir {}: {e}", g.workdir.display()))?;
                // Left by versions that answered git's prompts with a script.
                let _ = tokio::fs::remove_file(workdir.join("askpass.sh")).await;
                Ok(Source::Git(GitRepo {
                    url: g.url.clone(),
                    branch: g.branch.clone(),
                    path: g.path.clone(),
                    token: RotatingSecret::new("git token", g.token.clone(), g.token_file.clone()),
                    user: g.user.clone(),
                    checkout: workdir.join("repo"),
                }))
            }
        }
    }

    /// For logs and `/status`: credentials removed.
    pub fn describe(&self) -> String {
        match self {
            Source::Dir(d) => format!("dir {}", d.display()),
            Source::Git(g) => {
                let mut s = format!("git {} branch {}", redact_url(&g.url), g.branch);
                if !g.path.as_os_str().is_empty() {
                    s.push_str(&format!(" path {}", g.path.display()));
                }
                s
            }
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Source::Dir(_))
    }

    /// Whether the way to the manifests (`--git-path`) passes through a symlink in the
    /// repository: `git diff` then names other paths than the ones kpr read.
    pub fn manifest_dir_is_linked(&self) -> bool {
        match self {
            Source::Dir(_) => false,
            Source::Git(g) => {
                // A directory that is not there (a mistyped --git-path, a revision that
                // renamed it) is reported as missing: it is behind no link, and holds no
                // file a diff could miss.
                let Ok(real) = std::fs::canonicalize(self.manifest_dir()) else {
                    return false;
                };
                std::fs::canonicalize(&g.checkout)
                    .map(|c| c.join(&g.path))
                    .ok()
                    != Some(real)
            }
        }
    }

    /// The directory `manifest::load_dir` reads.
    pub fn manifest_dir(&self) -> PathBuf {
        match self {
            Source::Dir(d) => d.clone(),
            Source::Git(g) if g.path.as_os_str().is_empty() => g.checkout.clone(),
            Source::Git(g) => g.checkout.join(&g.path),
        }
    }

    /// What manifest paths are shown relative to (and what `git diff` paths are relative to).
    pub fn root(&self) -> &Path {
        match self {
            Source::Dir(d) => d,
            Source::Git(g) => &g.checkout,
        }
    }

    /// Brings the manifests up to date; returns the commit now checked out (`None` for a
    /// directory, which has no revisions).
    pub async fn sync(&self) -> Result<Option<String>, String> {
        match self {
            Source::Dir(_) => Ok(None),
            Source::Git(g) => g.sync().await.map(Some),
        }
    }

    /// Puts `revision`, a commit the working copy has, in the work tree, as a sync would
    /// (git sources; a directory has only what it holds).
    pub async fn check_out(&self, revision: &str) -> Result<(), String> {
        match self {
            Source::Dir(_) => Ok(()),
            Source::Git(g) => g.check_out(revision).await,
        }
    }

    /// Keeps `revision` as the last good one where a restart finds it (git sources only): a
    /// process that starts on an invalid branch still knows which files it may correct.
    pub async fn record_good(&self, revision: &str) -> Result<(), String> {
        match self {
            Source::Dir(_) => Ok(()),
            Source::Git(g) => {
                g.keep_config(&[LAST_GOOD_SOURCE, &g.identity()]).await?;
                g.git(["update-ref", LAST_GOOD_REF, revision]).await?;
                // A recovery's, now superseded.
                drop(g.keep_config(&["--unset-all", LAST_GOOD_PENDING]).await);
                Ok(())
            }
        }
    }

    /// Keeps (or, `None`, drops) the commit a reset's webhook named, and the head it replaced
    /// when known, where a restart finds them: the webhook is not sent again, and without it
    /// the branch could not go back.
    pub async fn note_reset(&self, reset: Option<(&str, Option<&str>)>) {
        let words: Vec<&str> = reset
            .map(|(commit, from)| std::iter::once(commit).chain(from).collect())
            .unwrap_or_default();
        self.keep_words(RESET_NAMED, &words, "the reset a webhook named")
            .await;
    }

    /// What [`Self::note_reset`] kept.
    pub async fn noted_reset(&self) -> Option<(String, Option<String>)> {
        let mut words = self.kept_words(RESET_NAMED).await.into_iter();
        Some((words.next()?, words.next()))
    }

    /// Keeps the heads resets replaced where a restart finds them.
    pub async fn note_replaced(&self, heads: &[String]) {
        let words: Vec<&str> = heads.iter().map(String::as_str).collect();
        self.keep_words(REPLACED, &words, "the heads resets replaced")
            .await;
    }

    /// Drops the working copy's kept state when it was kept for another source (the last
    /// good revision's source says so): it is not used.
    pub async fn forget_foreign_state(&self) {
        let Source::Git(g) = self else {
            return;
        };
        if g.kept_for().await == Some(false) {
            tracing::info!(
                "what the working copy kept (last good revision, pushes seen, replaced heads) was kept for another repository, branch or path: not used"
            );
            drop(g.keep_config(&["--remove-section", "kpr"]).await);
        }
    }

    /// What [`Self::note_replaced`] kept.
    pub async fn noted_replaced(&self) -> Vec<String> {
        self.kept_words(REPLACED).await
    }

    /// Keeps the pushes judged and the deliveries that named them where a restart finds them.
    pub async fn note_seen<'a>(
        &self,
        pushes: impl Iterator<Item = &'a (String, String)>,
        deliveries: impl Iterator<Item = &'a String>,
    ) {
        let pushes: Vec<String> = pushes.map(|(b, a)| format!("{b}:{a}")).collect();
        let pushes: Vec<&str> = pushes.iter().map(String::as_str).collect();
        self.keep_words(SEEN_PUSHES, &pushes, "the pushes seen")
            .await;
        let deliveries: Vec<&str> = deliveries.map(String::as_str).collect();
        self.keep_words(SEEN_DELIVERIES, &deliveries, "the webhook deliveries seen")
            .await;
    }

    /// What [`Self::note_seen`] kept.
    pub async fn noted_seen(&self) -> (Vec<(String, String)>, Vec<String>) {
        let pushes = self
            .kept_words(SEEN_PUSHES)
            .await
            .into_iter()
            .filter_map(|w| {
                w.split_once(':')
                    .map(|(b, a)| (b.to_string(), a.to_string()))
            })
            .collect();
        (pushes, self.kept_words(SEEN_DELIVERIES).await)
    }

    /// Keeps (or drops) the pushed commit awaited where a restart finds it: its webhook is
    /// not sent again.
    pub async fn note_awaited(&self, commit: Option<&str>) {
        let words: Vec<&str> = commit.into_iter().collect();
        self.keep_words(AWAITED, &words, "the pushed commit awaited")
            .await;
    }

    /// What [`Self::note_awaited`] kept.
    pub async fn noted_awaited(&self) -> Option<String> {
        self.kept_words(AWAITED).await.into_iter().next()
    }

    /// Keeps (or drops) the mark that the last good revision may be on its way out, where a
    /// restart finds it: what put it there (a refused head, a force-push announced while
    /// fetches failed) is not told again.
    pub async fn note_in_doubt(&self, doubt: bool) {
        let words: &[&str] = if doubt { &["true"] } else { &[] };
        self.keep_words(IN_DOUBT, words, "the doubt about the last good revision")
            .await;
    }

    /// What [`Self::note_in_doubt`] kept.
    pub async fn noted_in_doubt(&self) -> bool {
        !self.kept_words(IN_DOUBT).await.is_empty()
    }

    /// Keeps words under `key` in the working copy's git config (none: drops the key). A
    /// failure costs only a restart's memory of them: it is logged.
    async fn keep_words(&self, key: &str, words: &[&str], what: &str) {
        let Source::Git(g) = self else { return };
        let joined = words.join(" ");
        if words.is_empty() {
            // Fails only when there is nothing to drop.
            drop(g.keep_config(&["--unset-all", key]).await);
        } else if let Err(e) = g.keep_config(&[key, &joined]).await {
            tracing::warn!(error = %e, "cannot keep {what} in the working copy");
        }
    }

    /// What [`Self::keep_words`] kept under `key`. Read from the config file itself: a working
    /// copy git no longer opens (a garbled HEAD) still tells what it kept, before the copy is
    /// moved aside and cloned afresh.
    async fn kept_words(&self, key: &str) -> Vec<String> {
        let Source::Git(g) = self else {
            return Vec::new();
        };
        match g.kept_config(&["--get", key]).await {
            Ok(v) => v.split_whitespace().map(str::to_string).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The last good revision an earlier process recorded, if it is still there and was
    /// recorded for the same repository, branch and path: one of another source would make
    /// files that differ look untouched.
    pub async fn recorded_good(&self) -> Option<String> {
        let Source::Git(g) = self else {
            return None;
        };
        if !g.kept_for().await? {
            tracing::info!(
                "the last good revision in the working copy was recorded for another repository, branch or path: not used"
            );
            return None;
        }
        // Read as files when git no longer opens the copy (a garbled HEAD): its recovery
        // carries the revision into the fresh clone.
        match g.commit_of(LAST_GOOD_REF).await {
            Ok(sha) => Some(sha),
            Err(_) => g.last_good_ref().await,
        }
    }

    /// Whether `commit` was fetched and is `head` or one of its ancestors. Always true for a
    /// directory, which has no commits.
    pub async fn contains(&self, commit: &str, head: &str) -> bool {
        match self {
            Source::Dir(_) => true,
            Source::Git(g) => g.contains(commit, head).await,
        }
    }

    /// Whether the working copy has this commit.
    pub async fn has_commit(&self, commit: &str) -> bool {
        match self {
            Source::Dir(_) => false,
            Source::Git(g) => g.commit_of(commit).await.is_ok(),
        }
    }

    /// Repository-relative paths of the manifest files that differ between two commits,
    /// including deleted ones. `None` for a directory source.
    pub async fn changed_files(
        &self,
        old: &str,
        new: &str,
    ) -> Option<Result<Vec<PathBuf>, String>> {
        match self {
            Source::Dir(_) => None,
            Source::Git(g) => Some(g.changed_files(old, new).await),
        }
    }
}

/// How git gets the token and user name: a credential helper that reads them from its own
/// environment. Static text (the secret itself only ever lives in the git child's
/// environment), and `printf` is a shell builtin, so neither value is ever in a process's
/// argv. An askpass program was handed git's prompt as its argument, and git's password
/// prompt quotes the user name, which in the `https://TOKEN@host` form is the token.
///
/// It answers only for the protocol and host of `--git-url` (git says which on stdin): git
/// follows a redirect and asks again for the host it was sent to, and a compromised git host
/// or anyone on an `http://` path could send it anywhere.
const CREDENTIAL_HELPER: &str = "!f() { test \"$1\" = get || exit 0; \
    while IFS='=' read -r k v; do case \"$k\" in protocol) p=$v;; host) h=$v;; esac; done; \
    h=$(printf '%s' \"$h\" | tr '[:upper:]' '[:lower:]'); \
    test \"$p\" = \"$KPR_GIT_CREDENTIAL_PROTOCOL\" && test \"$h\" = \"$KPR_GIT_CREDENTIAL_HOST\" \
    || exit 0; \
    printf 'username=%s\\npassword=%s\\n' \"${KPR_GIT_USERNAME:-x-access-token}\" \
    \"$KPR_GIT_PASSWORD\"; }; f";

/// The protocol and host (`host:port` when it has one) git names a request to `url` by, as its
/// credential helpers are told: `https` and `github.com` of `https://github.com/o/r.git`.
fn credential_origin(url: &str) -> Option<(&str, &str)> {
    let (protocol, _, after) = url_parts(url)?;
    Some((protocol, after.split(['/', '?', '#']).next()?))
}

/// Whether `url`'s host is this machine (`localhost`, 127.0.0.0/8, `[::1]`), where a token
/// sent over plain http:// crosses no network.
pub fn loopback_url(url: &str) -> bool {
    let Some((_, host)) = credential_origin(url) else {
        return false;
    };
    // Without the port: after `]` for an IPv6 address, else after the one colon.
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.split(':').next().unwrap_or(host),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl GitRepo {
    /// The repository (its URL without credentials), branch and path, as one string.
    fn identity(&self) -> String {
        identity(&self.url, &self.branch, &self.path)
    }

    /// The commit a revision (a ref, a SHA) names; an error, quietly, when it names none.
    async fn commit_of(&self, revision: &str) -> Result<String, String> {
        let object = format!("{revision}^{{commit}}");
        let sha = self
            .git(["rev-parse", "--verify", "--quiet", &object])
            .await?;
        Ok(sha.trim().to_string())
    }

    async fn git<I, S>(&self, args: I) -> Result<String, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.git_bytes(args).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Standard output as git wrote it: paths are bytes, not always UTF-8.
    async fn git_bytes<I, S>(&self, args: I) -> Result<Vec<u8>, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_git(&self.checkout, args).await
    }

    /// git in `dir`, with kpr's credentials and environment rules.
    async fn run_git<I, S>(&self, dir: &Path, args: I) -> Result<Vec<u8>, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let what = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let token = self.token.last();
        let credentials = token.is_some() || self.user.is_some();
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("-C").arg(dir);
        if credentials {
            // The empty value first empties the list: no helper of the machine's (a `store`
            // helper writes what it is given to ~/.git-credentials) sees or keeps the token.
            cmd.args(["-c", "credential.helper=", "-c"])
                .arg(format!("credential.helper={CREDENTIAL_HELPER}"));
        }
        cmd.args(&args)
            // Never wait for a human at a password prompt: fail and report instead.
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            // --git-path is a directory, never a pattern: `:pol` read as pathspec magic is
            // `pol`, and an incremental run diffed the wrong directory, saying "no manifest
            // changed" of a push that changed one.
            .env("GIT_LITERAL_PATHSPECS", "1")
            // Git, ssh and credential helpers have no business seeing kpr's own secrets.
            .env_remove("KPR_WEBHOOK_SECRET")
            .env_remove("KPR_GIT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Nor kpr's AWS credentials (keys, session token, web identity token file): git runs
        // credential helpers, ssh and remote helpers with this environment. Except for AWS
        // CodeCommit, whose credential and remote helpers sign git's requests with them.
        if !is_codecommit(&self.url) {
            for (key, _) in std::env::vars_os() {
                if key.as_encoded_bytes().starts_with(b"AWS_") {
                    cmd.env_remove(key);
                }
            }
        }
        if credentials {
            // Host names are read without regard to case; the helper lowers git's too.
            let (protocol, host) = credential_origin(&self.url).unwrap_or_default();
            cmd.env("KPR_GIT_CREDENTIAL_PROTOCOL", protocol)
                .env("KPR_GIT_CREDENTIAL_HOST", host.to_ascii_lowercase())
                .env(
                    "KPR_GIT_PASSWORD",
                    token.as_ref().map_or("", Secret::expose),
                );
            if let Some(user) = &self.user {
                cmd.env("KPR_GIT_USERNAME", user.expose());
            }
        }
        let out = match tokio::time::timeout(GIT_TIMEOUT, cmd.output()).await {
            Err(_) => {
                return Err(format!(
                    "git {what}: no answer after {}",
                    humantime::format_duration(GIT_TIMEOUT)
                ));
            }
            Ok(Err(e)) => return Err(format!("git {what}: cannot run git: {e}")),
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "git {what} failed ({}): {}",
                out.status,
                self.redact(stderr.trim())
            ))
        }
    }

    /// git quotes remote URLs in its errors; a token must not travel with them into logs.
    fn redact(&self, text: &str) -> String {
        let mut out = redact_urls_in(text);
        if let Some(t) = &self.token.last() {
            out = out.replace(t.expose(), "***");
        }
        // A user name as long as a token may be one; a short one ("oauth2") is left, or every
        // "git" in git's own words would go.
        if let Some(u) = self
            .user
            .as_ref()
            .filter(|u| u.expose().len() >= TOKEN_LIKE_LEN)
        {
            out = out.replace(u.expose(), "***");
        }
        out
    }

    /// Fetches and checks out the branch head. A working copy that git can no longer use
    /// (objects emptied by a crash or a full disk, a garbled HEAD) would fail every run from
    /// then on, restarts included: when git's own check finds the copy broken and the remote
    /// answers for the branch, it is moved aside and cloned afresh, keeping its last good
    /// revision. Any other failure (the server's, a commit that cannot be checked out here)
    /// leaves the copy as it is: a fresh clone would fail the same way, every run.
    async fn sync(&self) -> Result<String, String> {
        let failed = match self.sync_once().await {
            Ok(sha) => return Ok(sha),
            Err(e) => e,
        };
        // git names a broken object file in its error; fsck finds the rest (a garbled HEAD,
        // a missing object), but not an object file emptied after its fetch: it checks that
        // objects exist, not what they hold.
        // Not the remote's corruption, which git relays as `remote: ...`, nor a full disk
        // ("unable to write loose object file"): a fresh clone would fail the same way.
        let broken_object = ["object file", "loose object", "is corrupt"]
            .iter()
            .any(|said| failed.contains(said))
            && !failed.contains("remote")
            && !failed.contains("unable to write");
        if !self.checkout.join(".git").exists()
            || failed.contains("no answer after")
            || (!broken_object && self.intact().await)
            || !self.remote_has_branch().await
        {
            return Err(failed);
        }
        tracing::warn!(error = %failed, "the git working copy is damaged: moving it aside and fetching afresh");
        let last_good = self.last_good_ref().await;
        // Everything kpr keeps beside it (the heads resets replaced, the pushes seen, a reset
        // pending, the doubt about the last good revision): without it, a replica serving a
        // replaced head would have that head applied again.
        // State kept for another source (a changed branch) is not carried, nor relabelled as
        // this one's: its last good revision would be healed from.
        let ours = self.kept_for().await != Some(false);
        let kept = match ours {
            true => self
                .kept_config(&["--get-regexp", r"^kpr\."])
                .await
                .unwrap_or_default(),
            false => String::new(),
        };
        let aside = self.checkout.with_extension("damaged");
        let _ = tokio::fs::remove_dir_all(&aside).await;
        tokio::fs::rename(&self.checkout, &aside)
            .await
            .map_err(|e| format!("{failed}; moving the working copy aside: {e}"))?;
        // Into the new copy before its fetch, which may take long: a stop during it must not
        // leave a copy that kept nothing. The last good revision too: not as its ref, which
        // would point at a commit not fetched yet (git's fetch then fails on it), but in
        // `kpr.lastGoodPending`, which a restart reads (see `recorded_good`); made the ref once
        // fetched, or dropped if the remote has it no more.
        let good = last_good.filter(|_| ours);
        let carried = async {
            self.init().await?;
            for (key, value) in kept.lines().filter_map(|l| l.split_once(' ')) {
                if !key.eq_ignore_ascii_case(LAST_GOOD_SOURCE) {
                    self.keep_config(&[key, value]).await?;
                }
            }
            if let Some(good) = &good {
                self.keep_config(&[LAST_GOOD_PENDING, good]).await?;
                self.keep_config(&[LAST_GOOD_SOURCE, &self.identity()])
                    .await?;
            }
            Ok::<_, String>(())
        };
        if let Err(e) = carried.await {
            tracing::warn!(error = %e, "cannot keep what the damaged working copy kept in the new one");
        }
        let sha = self.sync_once().await?;
        if let Some(good) = &good {
            let kept = match self.commit_of(good).await {
                Ok(_) => self.git(["update-ref", LAST_GOOD_REF, good]).await,
                Err(_) => self.keep_config(&["--unset-all", LAST_GOOD_SOURCE]).await,
            };
            if let Err(e) = kept {
                tracing::warn!(error = %e, "cannot keep the last good revision in the new working copy");
            }
            drop(self.keep_config(&["--unset-all", LAST_GOOD_PENDING]).await);
        }
        Ok(sha)
    }

    /// An empty repository where the working copy goes, unless there is one.
    async fn init(&self) -> Result<(), String> {
        if !self.checkout.join(".git").is_dir() {
            tokio::fs::create_dir_all(&self.checkout)
                .await
                .map_err(|e| format!("{}: {e}", self.checkout.display()))?;
            self.git(["init", "--quiet"]).await?;
        }
        Ok(())
    }

    /// Writes kept state into the working copy's config file itself, as [`Self::kept_config`]
    /// reads it: a copy git no longer opens (a garbled HEAD) still takes it, and its recovery
    /// carries it into the fresh clone.
    async fn keep_config(&self, args: &[&str]) -> Result<String, String> {
        // Before the first clone: the repository it will fetch into, as `sync` makes it. Never
        // a `git config` git would send up to an enclosing repository.
        self.init().await?;
        self.kept_config(args).await
    }

    /// Whether what the working copy kept is this source's, as its last good revision's source
    /// says; `None` when it names none.
    async fn kept_for(&self) -> Option<bool> {
        let source = self.kept_config(&["--get", LAST_GOOD_SOURCE]).await.ok()?;
        Some(same_source(source.trim_end_matches('\n'), &self.identity()))
    }

    /// `git config --file CHECKOUT/.git/config ARGS`, run from the workdir: it reads the file
    /// whether or not git can open the repository around it.
    async fn kept_config(&self, args: &[&str]) -> Result<String, String> {
        let file = self.checkout.join(".git").join("config");
        let mut all: Vec<&OsStr> =
            vec![OsStr::new("config"), OsStr::new("--file"), file.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        let workdir = self.checkout.parent().unwrap_or(&self.checkout);
        let out = self.run_git(workdir, all).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Whether git finds the working copy sound: its repository opens and every object it
    /// refers to is there and readable (`git fsck --connectivity-only`: no hashing of file
    /// contents, quick for a repository of manifests).
    async fn intact(&self) -> bool {
        self.git([
            "fsck",
            "--connectivity-only",
            "--no-dangling",
            "--no-progress",
        ])
        .await
        .is_ok()
    }

    /// What `refs/kpr/last-good` holds in the working copy, read as files (loose, or packed by
    /// git's housekeeping): git itself may not open a damaged copy.
    async fn last_good_ref(&self) -> Option<String> {
        let git_dir = self.checkout.join(".git");
        if let Ok(loose) = tokio::fs::read_to_string(git_dir.join(LAST_GOOD_REF)).await {
            return Some(loose.trim().to_string());
        }
        let packed = tokio::fs::read_to_string(git_dir.join("packed-refs"))
            .await
            .unwrap_or_default();
        let packed = packed.lines().find_map(|line| {
            let (sha, name) = line.split_once(' ')?;
            (name == LAST_GOOD_REF).then(|| sha.to_string())
        });
        match packed {
            Some(sha) => Some(sha),
            // A recovery stopped before its fetch brought the revision.
            None => self
                .kept_config(&["--get", LAST_GOOD_PENDING])
                .await
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        }
    }

    /// Whether the remote answers, and has the branch: `git ls-remote`, which needs no
    /// working copy.
    async fn remote_has_branch(&self) -> bool {
        let branch = format!("refs/heads/{}", self.branch);
        // Run from the workdir, outside the (damaged) working copy.
        let workdir = self.checkout.parent().unwrap_or(&self.checkout);
        self.run_git(
            workdir,
            ["ls-remote", "--heads", self.url.as_str(), branch.as_str()],
        )
        .await
        .is_ok_and(|out| !out.trim_ascii().is_empty())
    }

    async fn sync_once(&self) -> Result<String, String> {
        self.init().await?;
        self.remove_stale_locks().await?;
        // A rotated token is picked up here, once per run.
        self.token.current();
        // Setting the URL each time follows a changed --git-url without a fresh clone.
        self.git(["config", "remote.origin.url", self.url.as_str()])
            .await?;
        let tracking = format!("refs/remotes/origin/{}", self.branch);
        self.git([
            "fetch",
            "--quiet",
            "--no-tags",
            "origin",
            &format!("+refs/heads/{}:{tracking}", self.branch),
        ])
        .await?;
        let sha = self.commit_of(&tracking).await?;
        self.check_out(&sha).await?;
        Ok(sha)
    }

    /// The work tree at `sha`, exactly as committed.
    async fn check_out(&self, sha: &str) -> Result<(), String> {
        let head = self
            .git(["rev-parse", "--verify", "--quiet", "HEAD"])
            .await
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if head != sha {
            self.git(["checkout", "--quiet", "--force", "--detach", sha])
                .await?;
        } else {
            // Same commit: a tracked file edited in place (by a person) would still be read.
            self.git(["reset", "--quiet", "--hard"]).await?;
        }
        // Stray files (from an interrupted checkout, or a person) would become manifests.
        self.git(["clean", "-ffdxq"]).await.map(drop)
    }

    /// A git killed mid-write (its timeout, a shutdown, the OOM killer) leaves its lock files
    /// behind, and every later fetch or checkout then fails with "File exists" until someone
    /// cleans up. Runs never overlap and nothing else uses this working copy, so any lock seen
    /// before a run starts is stale.
    async fn remove_stale_locks(&self) -> Result<(), String> {
        let git_dir = self.checkout.join(".git");
        let refs = git_dir.join("refs");
        let mut pending = vec![git_dir.clone(), refs.clone()];
        let mut removed = Vec::new();
        while let Some(dir) = pending.pop() {
            let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
                continue;
            };
            while let Ok(Some(entry)) = entries.next_entry().await {
                let path = entry.path();
                let is_dir = entry.file_type().await.is_ok_and(|t| t.is_dir());
                // Only refs/ is walked below the top: objects/ is large and holds no locks
                // that outlive the command that took them.
                if is_dir && path.starts_with(&refs) {
                    pending.push(path);
                } else if !is_dir && path.extension().is_some_and(|e| e == "lock") {
                    tokio::fs::remove_file(&path)
                        .await
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    removed.push(path);
                }
            }
        }
        for path in removed {
            tracing::warn!(lock = %path.display(), "removed a stale git lock, left by a git that was stopped");
        }
        Ok(())
    }

    async fn contains(&self, commit: &str, head: &str) -> bool {
        if commit == head {
            return true;
        }
        // Both exit non-zero quietly when the commit is unknown (`merge-base` alone would say
        // "fatal"); a git that fails outright failed the fetch before this.
        self.commit_of(commit).await.is_ok()
            && self
                .git(["merge-base", "--is-ancestor", commit, head])
                .await
                .is_ok()
    }

    async fn changed_files(&self, old: &str, new: &str) -> Result<Vec<PathBuf>, String> {
        let pathspec = if self.path.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            self.path.clone()
        };
        // --no-renames: a rename must show the old path too, or the resources it declared would
        // not be seen as removed.
        let out = self
            .git_bytes([
                OsStr::new("diff"),
                OsStr::new("--name-only"),
                OsStr::new("--no-renames"),
                OsStr::new("--no-ext-diff"),
                OsStr::new("-z"),
                OsStr::new(old),
                OsStr::new(new),
                OsStr::new("--"),
                pathspec.as_os_str(),
            ])
            .await?;
        // As bytes: a name that is not UTF-8 must match the path the loader read.
        Ok(out
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| PathBuf::from(OsStr::from_bytes(s)))
            .collect())
    }
}

/// A URL's scheme, its user info (up to the authority's last `@`) and what follows:
/// `https://u:p@host/r` -> `("https", Some("u:p"), "host/r")`.
fn url_parts(url: &str) -> Option<(&str, Option<&str>, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(match rest[..authority_end].rfind('@') {
        Some(at) => (scheme, Some(&rest[..at]), &rest[at + 1..]),
        None => (scheme, None, rest),
    })
}

/// `scheme://user:pass@host/...` -> `scheme://***@host/...`, and a query string (which may
/// carry a token: `?access_token=...`) -> `?***`; anything else unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, mut userinfo, mut after)) = url_parts(url) else {
        return url.to_string();
    };
    // A password holding a raw '/', '?' or '#' ends the authority early: anything up to an
    // '@' after it may be one.
    if userinfo.is_none()
        && let Some(at) = after.rfind('@')
    {
        (userinfo, after) = (Some(&after[..at]), &after[at + 1..]);
    }
    let after = match after.split_once('?') {
        Some((path, _)) => format!("{path}?***"),
        None => after.to_string(),
    };
    match userinfo {
        Some(_) => format!("{scheme}://***@{after}"),
        None => format!("{scheme}://{after}"),
    }
}

fn redact_urls_in(text: &str) -> String {
    let delimiter = |c: char| c.is_whitespace() || c == '\'' || c == '"';
    text.split_inclusive(delimiter)
        .map(|word| {
            if word.contains("://") {
                let url = word.trim_end_matches(delimiter);
                format!("{}{}", redact_url(url), &word[url.len()..])
            } else {
                word.to_string()
            }
        })
        .collect()
}

/// A URL's user name at least this long is taken for a token (GitHub's are 40 and more); a
/// short one ("oauth2", "git") is a name.
pub const TOKEN_LIKE_LEN: usize = 16;

/// What [`split_credentials`] takes out of a git URL.
#[derive(Debug, PartialEq, Eq)]
pub struct UrlCredentials {
    /// The URL without them.
    pub url: String,
    /// An http(s) URL's user name (percent-decoded). It may be a token itself:
    /// `https://TOKEN@github.com/...` is a form GitHub documents.
    pub user: Option<String>,
    /// The password (percent-decoded).
    pub password: Option<String>,
}

/// Moves credentials out of a git URL, so they reach git only through [`CREDENTIAL_HELPER`], never its
/// argv or `.git/config`. An http(s) URL loses its whole `user:password@`; any other keeps its
/// user name, which ssh needs in the URL (`ssh://git@host/...`), and loses a password.
pub fn split_credentials(url: &str) -> Result<UrlCredentials, String> {
    let unchanged = || UrlCredentials {
        url: url.to_string(),
        user: None,
        password: None,
    };
    if let Some(("https" | "http", _, after)) = url_parts(url)
        && after.split('#').next().unwrap_or("").contains('?')
    {
        // Left in, it would sit in .git/config and on git's command line (`ps`); git's smart
        // HTTP takes no parameters of its own, so one there is most likely a token.
        return Err(
            "the git URL has a query string (?access_token=... ?): git would keep it in \
             .git/config and on its command line. Give a token with --git-token-file or \
             KPR_GIT_TOKEN instead"
                .into(),
        );
    }
    if let Some(("https" | "http", None, after)) = url_parts(url)
        && after.contains('@')
    {
        // User info cannot hold a raw '/', '?' or '#' (RFC 3986): with one, the password
        // reads as the path, and would be shown wherever the URL is.
        return Err(
            "the git URL has an '@' after its host: a user name or password holding '/', '?' \
             or '#' must be percent-encoded (%2F, %3F, %23), or given with --git-token-file or \
             KPR_GIT_TOKEN instead"
                .into(),
        );
    }
    let Some((scheme, Some(userinfo), after)) = url_parts(url) else {
        return Ok(unchanged());
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    // A control character (`%0A`) would end the credential helper's line: git would read
    // the rest as another field, and quote it in its errors.
    let decoded = |text: &str, what: &str| {
        percent_decode(text)
            .filter(|t| !t.chars().any(char::is_control))
            .ok_or_else(|| {
                format!(
                    "the {what} in the git URL is not valid (bad escapes, or a control character)"
                )
            })
    };
    let password = password
        .map(|p| decoded(p, "password"))
        .transpose()?
        .filter(|p| !p.is_empty());
    let http = scheme == "https" || scheme == "http";
    let (user_part, user) = if http {
        let user = decoded(user, "user name")?;
        (String::new(), Some(user).filter(|u| !u.is_empty()))
    } else if user.is_empty() {
        (String::new(), None)
    } else {
        (format!("{user}@"), None)
    };
    Ok(UrlCredentials {
        url: format!("{scheme}://{user_part}{after}"),
        user,
        password,
    })
}

/// A CodeCommit repository over HTTPS (`https://git-codecommit[-fips].REGION.amazonaws.com/...`
/// with the AWS CLI's credential helper, or a VPC endpoint's name for it) or through
/// git-remote-codecommit (`codecommit::REGION://...`): AWS credentials are how git signs in.
/// Over ssh it uses ssh keys, and gets no AWS credentials.
fn is_codecommit(url: &str) -> bool {
    if url.starts_with("codecommit:") {
        return true;
    }
    let Some(("https" | "http", _, after)) = url_parts(url) else {
        return false;
    };
    let authority = after.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority
        .split(':')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let host = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"));
    let service = |label: &str| label == "git-codecommit" || label == "git-codecommit-fips";
    // git-codecommit[-fips].REGION, or VPCE-ID.git-codecommit[-fips].REGION.vpce
    let region = crate::arn::is_region_name;
    match host.map(|h| h.split('.').collect::<Vec<_>>()).as_deref() {
        Some([svc, r]) => service(svc) && region(r),
        Some([_vpce, svc, r, "vpce"]) => service(svc) && region(r),
        _ => false,
    }
}

/// `%XX` escapes, as in a URL's user name and password (RFC 3986): a `+` there is a `+`.
pub fn percent_decode(s: &str) -> Option<String> {
    decode(s, false)
}

/// A form-encoded value (`application/x-www-form-urlencoded`), where `+` stands for a space.
pub fn form_decode(s: &str) -> Option<String> {
    decode(s, true)
}

fn decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // from_str_radix alone would take a sign: "%+A".
                let hex = s
                    .get(i + 1..i + 3)
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_source_is_the_same_however_its_url_is_spelt() {
        let id = |url: &str, branch: &str| identity(url, branch, Path::new("policies"));
        let base = id("file:///srv/git/policies.git", "main");
        for same in ["file:///srv/git/policies.git/", "/srv/git/policies.git"] {
            assert!(same_source(&base, &id(same, "main")), "{same}");
        }
        // On disk `policies` and `policies.git` are two directories.
        assert!(!same_source(&base, &id("/srv/git/policies", "main")));
        assert!(same_source(
            &base,
            &id("file:///srv//git/policies.git", "main")
        ));
        let hosted = id("https://github.com/acme/policies.git", "main");
        for same in [
            "https://github.com/acme/policies",
            "https://github.com/acme/policies/",
            "HTTPS://GitHub.com/acme/policies.git",
        ] {
            assert!(same_source(&hosted, &id(same, "main")), "{same}");
        }
        // Only the host's case: a path's is the repository's.
        assert!(!same_source(
            &hosted,
            &id("https://github.com/Acme/Policies", "main")
        ));
        let ssh = id("ssh://git@github.com/acme/policies.git", "main");
        assert!(same_source(
            &ssh,
            &id("git@GitHub.com:/acme/policies", "main")
        ));
        assert!(!same_source(
            &ssh,
            &id("git@github.com:/acme/other", "main")
        ));
        // Relative to the user's home: another path on a server of one's own.
        let home = id("git@gitsrv:policies.git", "main");
        assert!(!same_source(
            &home,
            &id("ssh://git@gitsrv/policies.git", "main")
        ));
        assert!(same_source(
            &home,
            &id("ssh://git@gitsrv/~/policies", "main")
        ));
        // A local repository through a symlink is the repository itself.
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.git");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link.git")).unwrap();
        let at = |p: &Path| id(&format!("file://{}", p.display()), "main");
        assert!(same_source(&at(&real), &at(&dir.path().join("link.git"))));
        assert!(!same_source(
            &base,
            &id("file:///srv/git/other.git", "main")
        ));
        assert!(!same_source(
            &base,
            &id("file:///srv/git/policies.git", "release")
        ));
        assert!(!same_source(
            &base,
            &identity("file:///srv/git/policies.git", "main", Path::new("other"))
        ));
        // A path with spaces stays one path.
        let spaced = identity("https://h/r.git", "main", Path::new("a b"));
        assert!(same_source(
            &spaced,
            &identity("https://h/r", "main", Path::new("a b"))
        ));
        assert!(!same_source(
            &spaced,
            &identity("https://h/r", "main", Path::new("a"))
        ));
    }

    /// The helper answers git with the token and user name from its environment, and only
    /// them, and only for `--git-url`'s protocol and host: run through git's own credential
    /// machinery, with a `store` helper configured that must never be asked.
    #[test]
    fn the_credential_helper_answers_from_the_environment() {
        use std::io::Write;
        let home = tempfile::tempdir().unwrap();
        let credential = |action: &str, input: &[u8]| {
            let mut child = std::process::Command::new("git")
                .env("HOME", home.path())
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .args([
                    "-c",
                    "credential.helper=store",
                    "-c",
                    "credential.helper=",
                    "-c",
                ])
                .arg(format!("credential.helper={CREDENTIAL_HELPER}"))
                .args(["credential", action])
                .env("KPR_GIT_USERNAME", "ghp_user_is_the_token")
                .env("KPR_GIT_PASSWORD", "")
                .env("KPR_GIT_CREDENTIAL_PROTOCOL", "https")
                .env("KPR_GIT_CREDENTIAL_HOST", "git.example.com")
                .env("GIT_TERMINAL_PROMPT", "0")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(input).unwrap();
            child.wait_with_output().unwrap()
        };
        // Another host (a redirect's), or the same over plain http: no answer, so git has
        // nothing to send and, unable to prompt, fails.
        for elsewhere in [
            &b"protocol=https\nhost=attacker.example\n\n"[..],
            b"protocol=http\nhost=git.example.com\n\n",
            b"protocol=https\nhost=git.example.com:8443\n\n",
        ] {
            let out = credential("fill", elsewhere);
            assert!(!out.status.success(), "{out:?}");
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("ghp_"),
                "{out:?}"
            );
        }
        // Host names are case-insensitive: a redirect that only changes case still gets it.
        let upper = credential("fill", b"protocol=https\nhost=GIT.Example.com\n\n");
        assert!(upper.status.success(), "{upper:?}");
        let out = credential("fill", b"protocol=https\nhost=git.example.com\n\n");
        assert!(out.status.success(), "{out:?}");
        let out = String::from_utf8(out.stdout).unwrap();
        assert!(out.contains("username=ghp_user_is_the_token\n"), "{out}");
        assert!(out.contains("password=\n"), "{out}");
        // What git does after a fetch that signed in: no helper but kpr's hears of it.
        assert!(credential("approve", out.as_bytes()).status.success());
        assert!(!home.path().join(".git-credentials").exists());
        assert_eq!(
            credential_origin("https://u:t@git.example.com:8443/o/r.git"),
            Some(("https", "git.example.com:8443"))
        );
        assert_eq!(
            credential_origin("http://127.0.0.1/r.git"),
            Some(("http", "127.0.0.1"))
        );
        for (url, is) in [
            ("http://127.0.0.1:9/r.git", true),
            ("http://LOCALHOST/r.git", true),
            ("http://[::1]:8080/r.git", true),
            ("http://u:t@localhost/r.git", true),
            ("http://127.evil.example/r.git", false),
            ("http://localhost.evil.example/r.git", false),
            ("http://git.internal/r.git", false),
        ] {
            assert_eq!(loopback_url(url), is, "{url}");
        }
    }

    use super::*;

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(
            redact_url("https://x:tok@github.com/o/r.git"),
            "https://***@github.com/o/r.git"
        );
        assert_eq!(
            redact_url("https://github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(
            redact_url("git@github.com:o/r.git"),
            "git@github.com:o/r.git"
        );
        assert_eq!(
            redact_urls_in("fatal: unable to access 'https://u:p@h/r/': 403"),
            "fatal: unable to access 'https://***@h/r/': 403"
        );
        assert_eq!(
            redact_urls_in("fatal: unable to access 'https://h/r.git?access_token=tok': 403"),
            "fatal: unable to access 'https://h/r.git?***': 403"
        );
    }

    #[test]
    fn credentials_are_split_off() {
        let split = |url: &str| {
            let c = split_credentials(url).unwrap();
            (c.url, c.user, c.password)
        };
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            split("https://bot:a%2Fb@h/r"),
            ("https://h/r".into(), some("bot"), some("a/b"))
        );
        assert_eq!(
            split("https://:t@h/r"),
            ("https://h/r".into(), None, some("t"))
        );
        // A token as the user name, as GitHub documents: out of the URL as well.
        assert_eq!(
            split("https://ghp_0123456789abcdef@github.com/o/r.git"),
            (
                "https://github.com/o/r.git".into(),
                some("ghp_0123456789abcdef"),
                None
            )
        );
        assert_eq!(split("ssh://git@h/r"), ("ssh://git@h/r".into(), None, None));
        assert_eq!(
            split("ssh://git:pw@h/r"),
            ("ssh://git@h/r".into(), None, some("pw"))
        );
        assert_eq!(split("file:///tmp/r"), ("file:///tmp/r".into(), None, None));
        assert!(split_credentials("https://a%zz@h/r").is_err());
        // A password with a raw '/' or '#' ends the authority early: refused, not shown.
        for bad in ["https://u:ab/SECRET=@h/r.git", "http://u:Pa#SECRET@h/r"] {
            let e = split_credentials(bad).unwrap_err();
            assert!(!e.contains("SECRET"), "{e}");
            assert!(!redact_url(bad).contains("SECRET"), "{}", redact_url(bad));
        }
        // Nothing that would end the credential helper's line, nor a token in a query.
        for bad in [
            "https://u:a%0Ab@h/r",
            "https://a%0Db@h/r",
            "http://h/r.git?access_token=t",
        ] {
            let e = split_credentials(bad).unwrap_err();
            assert!(!e.contains("a%0") && !e.contains("=t"), "{e}");
        }
        // A `+` in userinfo is itself, as git and curl read it; only forms make it a space.
        assert_eq!(
            split("https://u:a+b@h/r"),
            ("https://h/r".into(), some("u"), some("a+b"))
        );
        assert_eq!(form_decode("a+b%2B").as_deref(), Some("a b+"));
        // A sign is not a hex digit.
        assert_eq!(percent_decode("%+A"), None);
        assert_eq!(percent_decode("%-1"), None);
    }

    #[test]
    fn codecommit_urls_are_told_apart() {
        assert!(is_codecommit(
            "https://git-codecommit.eu-west-1.amazonaws.com/v1/repos/policies"
        ));
        assert!(is_codecommit(
            "https://u:p@git-codecommit.eu-west-1.amazonaws.com/v1/repos/policies"
        ));
        assert!(is_codecommit("codecommit::eu-west-1://policies"));
        assert!(is_codecommit(
            "https://git-codecommit-fips.us-east-1.amazonaws.com/v1/repos/p"
        ));
        assert!(is_codecommit(
            "https://vpce-0123-abcd.git-codecommit.eu-west-1.vpce.amazonaws.com/v1/repos/p"
        ));
        assert!(is_codecommit(
            "https://GIT-CODECOMMIT.eu-west-1.amazonaws.com:443/v1/repos/p"
        ));
        assert!(!is_codecommit("https://github.com/o/git-codecommit.x"));
        assert!(!is_codecommit("https://git-codecommit.example.com/r"));
        assert!(!is_codecommit(
            "https://git-codecommit.mybucket.s3.amazonaws.com/r.git"
        ));
        assert!(!is_codecommit(
            "https://git-codecommit.s3.amazonaws.com/r.git"
        ));
        assert!(!is_codecommit(
            "https://git-codecommit.s3-website-us-east-1.amazonaws.com/r.git"
        ));
        assert!(is_codecommit(
            "https://git-codecommit.us-gov-west-1.amazonaws.com/v1/repos/p"
        ));
        assert!(!is_codecommit(
            "ssh://git-codecommit.eu-west-1.amazonaws.com/v1/repos/p"
        ));
        assert!(!is_codecommit("file:///tmp/r"));
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@e",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[tokio::test]
    async fn fetches_checks_out_and_diffs() {
        let origin = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        git(origin.path(), &["init", "-q", "-b", "main"]);
        std::fs::create_dir_all(origin.path().join("m")).unwrap();
        std::fs::write(origin.path().join("m/a.yaml"), "a").unwrap();
        std::fs::write(origin.path().join("m/b.yaml"), "b").unwrap();
        std::fs::write(origin.path().join("outside.yaml"), "o").unwrap();
        git(origin.path(), &["add", "-A"]);
        git(origin.path(), &["commit", "-qm", "one"]);
        let spec = SourceSpec::Git(super::super::GitSpec {
            url: format!("file://{}", origin.path().display()),
            branch: "main".into(),
            path: PathBuf::from("m"),
            token: None,
            token_file: None,
            user: None,
            workdir: work.path().to_path_buf(),
            repository: None,
        });
        let src = Source::new(&spec).await.unwrap();
        let first = src.sync().await.unwrap().unwrap();
        assert!(src.manifest_dir().join("a.yaml").is_file());
        std::fs::write(src.manifest_dir().join("stray.yaml"), "x").unwrap();

        std::fs::write(origin.path().join("m/a.yaml"), "a2").unwrap();
        git(origin.path(), &["mv", "m/b.yaml", "m/c.yaml"]);
        std::fs::write(origin.path().join("outside.yaml"), "o2").unwrap();
        git(origin.path(), &["add", "-A"]);
        git(origin.path(), &["commit", "-qm", "two"]);
        let second = src.sync().await.unwrap().unwrap();
        assert_ne!(first, second);
        assert_eq!(
            std::fs::read_to_string(src.manifest_dir().join("a.yaml")).unwrap(),
            "a2"
        );
        assert!(!src.manifest_dir().join("stray.yaml").exists());

        // A git killed mid-write leaves locks; a person edits a tracked file. The next run
        // still fetches, and reads what the commit says.
        let git_dir = work.path().join("repo/.git");
        std::fs::write(git_dir.join("index.lock"), "").unwrap();
        std::fs::write(git_dir.join("refs/remotes/origin/main.lock"), "").unwrap();
        std::fs::write(src.manifest_dir().join("a.yaml"), "edited").unwrap();
        assert_eq!(src.sync().await.unwrap().unwrap(), second);
        assert_eq!(
            std::fs::read_to_string(src.manifest_dir().join("a.yaml")).unwrap(),
            "a2"
        );
        assert!(!git_dir.join("index.lock").exists());

        // A name that is not UTF-8 comes back as the same bytes, the path the loader reads.
        let latin1 = PathBuf::from(OsStr::from_bytes(b"m/ord\xe9rs.yaml"));
        std::fs::write(origin.path().join(&latin1), "x").unwrap();
        git(origin.path(), &["add", "-A"]);
        git(origin.path(), &["commit", "-qm", "three"]);
        let third = src.sync().await.unwrap().unwrap();
        assert!(src.root().join(&latin1).is_file());
        let changed = src.changed_files(&second, &third).await.unwrap().unwrap();
        assert_eq!(changed, [latin1]);
        let mut changed = src.changed_files(&first, &second).await.unwrap().unwrap();
        changed.sort();
        assert_eq!(
            changed,
            [
                PathBuf::from("m/a.yaml"),
                PathBuf::from("m/b.yaml"),
                PathBuf::from("m/c.yaml")
            ]
        );
        assert!(
            src.changed_files("0000000000000000000000000000000000000000", &second)
                .await
                .unwrap()
                .is_err()
        );

        // The last good revision survives a new process on the same working copy, and only
        // for the same repository, branch and path.
        assert_eq!(src.recorded_good().await, None);
        src.record_good(&second).await.unwrap();
        let again = Source::new(&spec).await.unwrap();
        assert_eq!(
            again.recorded_good().await.as_deref(),
            Some(second.as_str())
        );
        let SourceSpec::Git(g) = &spec else {
            unreachable!()
        };
        let other_path = SourceSpec::Git(super::super::GitSpec {
            path: PathBuf::from("elsewhere"),
            ..g.clone()
        });
        let other = Source::new(&other_path).await.unwrap();
        assert_eq!(other.recorded_good().await, None);
    }

    #[tokio::test]
    async fn fetch_errors_name_no_secret() {
        let work = tempfile::tempdir().unwrap();
        let token_file = work.path().join("token");
        std::fs::write(&token_file, "tok-123\n").unwrap();
        let spec = SourceSpec::Git(super::super::GitSpec {
            url: "https://127.0.0.1:9/none.git".into(),
            branch: "main".into(),
            path: PathBuf::new(),
            token: Some(Secret("tok-123".into())),
            token_file: Some(token_file.clone()),
            user: Some(Secret("ghp_0123456789abcdef".into())),
            workdir: work.path().to_path_buf(),
            repository: None,
        });
        let src = Source::new(&spec).await.unwrap();
        // Rotated in place after start: the next fetch uses the new token.
        std::fs::write(&token_file, "tok-456\n").unwrap();
        let err = src.sync().await.unwrap_err();
        assert!(err.contains("git fetch failed"), "{err}");
        assert!(
            !err.contains("tok-123") && !err.contains("tok-456"),
            "{err}"
        );
        let Source::Git(g) = &src else { panic!() };
        let token = g.token.last().map(|t| t.expose().to_string());
        assert_eq!(token.as_deref(), Some("tok-456"));
        // Neither secret is in the working copy's configuration, where git would keep a URL's.
        let config = std::fs::read_to_string(work.path().join("repo/.git/config")).unwrap();
        assert!(
            config.contains("url = https://127.0.0.1:9/none.git"),
            "{config}"
        );
        assert!(
            !config.contains("ghp_") && !config.contains("tok-123"),
            "{config}"
        );
    }
}
