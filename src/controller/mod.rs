//! `kpr serve`: the long-running GitOps controller.
//!
//! One worker task owns every reconcile ([`reconcile`]), so two can never overlap; the schedule
//! and the webhook only put a trigger into a coalescing queue ([`trigger`]). The HTTP side
//! ([`http`]) reads shared status but never touches AWS.
//!
//! Settings come from flags, `KPR_*` variables, the config file and defaults, in that order;
//! secrets only ever from a file or an environment variable.

mod backoff;
mod file_index;
mod http;
mod memory;
mod reconcile;
mod source;
mod trigger;
mod webhook;

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{CliError, EXIT_ERROR, EXIT_OK, Engine, GlobalArgs};
use crate::config::FileConfig;

pub use memory::single_malloc_arena;
pub use source::redact_url;
pub use trigger::Schedule;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Validate the configuration (and, with --dir, the manifests), print a summary and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Manifests from a local directory (instead of a git repository).
    #[arg(long, env = "KPR_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Manifests from this git repository (https, ssh or file URL). Put no token in it: use
    /// --git-token-file or KPR_GIT_TOKEN.
    #[arg(long, env = "KPR_GIT_URL", value_name = "URL", hide_env_values = true)]
    pub git_url: Option<String>,
    /// Branch whose head is applied; only pushes to it trigger a run.
    #[arg(long, env = "KPR_GIT_BRANCH", value_name = "BRANCH")]
    pub git_branch: Option<String>,
    /// Directory of the manifests inside the repository [default: the whole repository].
    #[arg(long, env = "KPR_GIT_PATH", value_name = "PATH")]
    pub git_path: Option<PathBuf>,
    /// The repository as its git host's webhooks name it (GitHub: owner/name; GitLab:
    /// group/subgroup/name), when --git-url does not end in that path (a mirror, a proxy, a
    /// renamed repository) [default: --git-url's path].
    #[arg(long, env = "KPR_GIT_REPOSITORY", value_name = "NAME")]
    pub git_repository: Option<String>,
    /// File holding an https token for the repository (KPR_GIT_TOKEN may hold the token itself).
    #[arg(long, env = "KPR_GIT_TOKEN_FILE", value_name = "FILE")]
    pub git_token_file: Option<PathBuf>,
    /// Where the working copy of the repository lives [default: ./.kpr-work].
    #[arg(long, env = "KPR_WORKDIR", value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Full drift scan on this cron schedule, in UTC: 5 fields (min hour dom month dow),
    /// 6 (with seconds first) or 7 (with year last).
    #[arg(long, env = "KPR_SCHEDULE", value_name = "CRON")]
    pub schedule: Option<String>,
    /// Full drift scan every DURATION (e.g. 5m) [default: 10m when no --schedule].
    #[arg(long, env = "KPR_INTERVAL", value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub interval: Option<Duration>,
    /// Wait a random delay up to DURATION before each scheduled run [default: 0s].
    #[arg(long, env = "KPR_JITTER", value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub jitter: Option<Duration>,
    /// Address of the HTTP endpoints (webhook, health, metrics, status) [default: 0.0.0.0:8080].
    #[arg(long, env = "KPR_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// File holding the webhook secret (KPR_WEBHOOK_SECRET may hold the secret itself).
    /// Without a secret the webhook endpoint is disabled.
    #[arg(long, env = "KPR_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Largest webhook body accepted, in bytes, at most 1 GiB [default: 26214400, 25 MiB:
    /// GitHub's limit].
    #[arg(long, env = "KPR_WEBHOOK_MAX_BODY", value_name = "BYTES")]
    pub webhook_max_body: Option<usize>,
    #[command(flatten)]
    pub dry_run: crate::cli::DryRunArg,
    #[command(flatten)]
    pub deletes: crate::cli::PruneArgs,
    /// After a failure, try again this long after: a run that failed as a whole (fetch,
    /// invalid manifests, a refused prune) and each failed resource, doubling on each further
    /// failure up to 30m, whatever the schedule [default: 30s].
    #[arg(long, env = "KPR_RETRY_DELAY", value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub retry_delay: Option<Duration>,
    /// A branch head kpr refuses (behind what was applied with no webhook naming it, or the
    /// head a reset replaced) is applied once it has stayed the head this long [default: 2m].
    #[arg(long, env = "KPR_RESET_SETTLE", value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub reset_settle: Option<Duration>,
    /// On SIGTERM/SIGINT, wait this long for a running reconcile before cancelling it
    /// [default: 30s].
    #[arg(long, env = "KPR_SHUTDOWN_TIMEOUT", value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Which of the one-choice settings (`dir`/`git_url`, `schedule`/`interval`) came from a
    /// `KPR_*` variable rather than a flag (see [`crate::cli::Cli::parse_args`]).
    #[arg(skip)]
    pub from_env: Vec<&'static str>,
}

/// A secret kept out of `Debug` output, so no log line or error can print it by accident.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A secret that may come from a file rotated in place (a Kubernetes Secret update, a GitHub
/// App's hourly token): [`RotatingSecret::current`] reads the file again, and keeps the last
/// value read while the file is missing mid-rotation. Without a file it never changes.
pub struct RotatingSecret {
    what: &'static str,
    file: Option<PathBuf>,
    last: std::sync::RwLock<Option<Secret>>,
}

impl RotatingSecret {
    pub fn new(what: &'static str, initial: Option<Secret>, file: Option<PathBuf>) -> Self {
        Self {
            what,
            file,
            last: std::sync::RwLock::new(initial),
        }
    }

    /// Read from its file now, if it has one; the one read before when that fails (a file
    /// being replaced, say).
    pub fn current(&self) -> Option<Secret> {
        self.read_now().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "re-reading the {} failed; using the one read before", self.what);
            self.last()
        })
    }

    /// Read from its file now, if it has one, failing when that fails: for a secret whose
    /// rotation must end the old one (a leaked webhook secret), no fallback.
    pub fn read_now(&self) -> Result<Option<Secret>, String> {
        if let Some(path) = &self.file {
            let secret = read_secret(path, self.what)?;
            *self.last.write().expect("secret lock") = Some(secret);
        }
        Ok(self.last())
    }

    /// As last read.
    pub fn last(&self) -> Option<Secret> {
        self.last.read().expect("secret lock").clone()
    }
}

#[derive(Debug, Clone)]
pub enum SourceSpec {
    Dir(PathBuf),
    Git(GitSpec),
}

#[derive(Debug, Clone)]
pub struct GitSpec {
    /// Without any password: a token found in the URL moves to `token`, so it never reaches
    /// git's argv or `.git/config`.
    pub url: String,
    pub branch: String,
    /// Relative to the repository root; empty for the whole repository.
    pub path: PathBuf,
    pub token: Option<Secret>,
    /// The file the token came from, read again before each fetch: a short-lived token (a
    /// GitHub App's lasts an hour) is rotated in place by whatever issues it.
    pub token_file: Option<PathBuf>,
    /// An https URL's user name, moved out of it like a password: it may be a token
    /// (`https://TOKEN@github.com/...`).
    pub user: Option<Secret>,
    pub workdir: PathBuf,
    /// The name webhooks give the repository, when set (see [`webhook::Repository`]).
    pub repository: Option<String>,
}

/// Everything `kpr serve` runs with, after flags, env, the config file and defaults are merged.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: SourceSpec,
    pub schedule: Schedule,
    pub jitter: Duration,
    pub listen: SocketAddr,
    pub webhook_secret: Option<Secret>,
    /// Read again on each webhook, so a rotated secret works without a restart.
    pub webhook_secret_file: Option<PathBuf>,
    pub webhook_max_body: usize,
    pub dry_run: bool,
    pub prune: bool,
    pub max_deletes: usize,
    pub retry_delay: Duration,
    pub reset_settle: Duration,
    pub shutdown_timeout: Duration,
}

pub const DEFAULT_WORKDIR: &str = ".kpr-work";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// GitHub's own limit on a webhook payload: a larger default would never be needed, a smaller
/// one drops the pushes that touch the most files.
pub const DEFAULT_WEBHOOK_MAX_BODY: usize = 25 * 1024 * 1024;
const MAX_WEBHOOK_MAX_BODY: usize = 1 << 30;
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

fn read_secret(path: &Path, what: &str) -> Result<Secret, String> {
    // Read again for every delivery, on the server's threads: a FIFO there would block them
    // all (and a stop with them), a large file cost each request its size.
    // Opened without waiting (a FIFO opens at once, with no writer) and judged by what was
    // opened, not by the path, which a rename may point elsewhere meanwhile.
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    const MAX_SECRET_FILE: u64 = 64 * 1024;
    let failed = |e: std::io::Error| format!("{what} file {}: {e}", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    if !meta.is_file() {
        return Err(format!(
            "{what} file {} is not a regular file (a directory, a FIFO or a device)",
            path.display()
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(format!(
            "{what} file {} is more than a secret's {MAX_SECRET_FILE} bytes",
            path.display()
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{what} file {} is not UTF-8 text", path.display()))?;
    // Files written by `echo` or editors end in a newline that is not part of the secret.
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(format!("{what} file {} is empty", path.display()));
    }
    spaced(trimmed).map_err(|e| format!("{what} file {}: {e}", path.display()))?;
    Ok(Secret(trimmed.to_string()))
}

/// A secret with spaces or tabs around it can never be presented: HTTP drops them from a
/// header's value, so a GitLab token or a Bearer caller would get 401 forever while GitHub's
/// signatures still pass. Said at start, not found out at the first push. Nor may it hold a
/// control character: a line break in a git token ends the credential helper's line, and git
/// quotes what follows it in its errors, into the logs.
fn spaced(secret: &str) -> Result<(), String> {
    if secret.trim().is_empty() {
        return Err("holds only spaces".into());
    }
    if secret.chars().any(char::is_control) {
        return Err(
            "holds a control character (a line break inside it?), which no HTTP header or \
             credential line can carry"
                .into(),
        );
    }
    if secret.trim() != secret {
        return Err(
            "begins or ends with a space or a tab, which no HTTP header can carry: \
                    remove it (from the git host's settings too)"
                .into(),
        );
    }
    Ok(())
}

fn env_secret(var: &str) -> Result<Option<Secret>, String> {
    let Some(v) = std::env::var(var)
        .ok()
        .map(|v| v.trim_end_matches(['\n', '\r']).to_string())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    spaced(&v).map_err(|e| format!("{var} {e}"))?;
    Ok(Some(Secret(v)))
}

/// A file path, a `KPR_*` variable holding the secret itself, or the config file's path.
/// A secret by the usual precedence, and the file it was read from (`None` when it came from
/// the environment): such a file is read again where a rotation must take effect without a
/// restart.
fn resolve_secret(
    flag_file: Option<&Path>,
    env_var: &str,
    file_cfg: Option<&Path>,
    what: &str,
) -> Result<(Option<Secret>, Option<PathBuf>), String> {
    if let Some(p) = flag_file {
        return Ok((Some(read_secret(p, what)?), Some(p.to_path_buf())));
    }
    if let Some(s) = env_secret(env_var)? {
        return Ok((Some(s), None));
    }
    match file_cfg {
        Some(p) => Ok((Some(read_secret(p, what)?), Some(p.to_path_buf()))),
        None => Ok((None, None)),
    }
}

pub(crate) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    // ":8080" is the Go-style shorthand many deployment templates use.
    // `localhost` is the one name taken: binding resolves no other (which of a name's
    // addresses would it be?).
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else if let Some(port) = s.strip_prefix("localhost:") {
        format!("127.0.0.1:{port}")
    } else {
        s.to_string()
    };
    full.parse().map_err(|_| {
        format!(
            "listen address {s:?} is not an IP address and port (0.0.0.0:8080, [::]:8080, \
             127.0.0.1:8080, localhost:8080 or :8080)"
        )
    })
}

/// The repository sub-path must stay inside the working copy.
fn normalize_git_path(p: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => {
                return Err(format!(
                    "git path {:?} must be a relative path inside the repository",
                    p.display()
                ));
            }
        }
    }
    Ok(out)
}

fn valid_branch(b: &str) -> bool {
    !b.is_empty()
        && !b.starts_with('-')
        && !b.starts_with('/')
        && !b.ends_with('/')
        && !b.contains("..")
        && !b.contains("//")
        && !b.ends_with(".lock")
        && b.bytes()
            .all(|c| c.is_ascii_graphic() && !b"~^:?*[\\".contains(&c))
}

/// Two settings that are one choice, each with whether it came from a `KPR_*` variable: a
/// flag beats a variable, as it does for any one setting (a `KPR_DIR` left set for `kpr plan`
/// must not stop `kpr serve --git-url`). Both from the same layer stay both, a mistake to report.
fn flag_over_env<A, B>(
    (a, a_env): (Option<A>, bool),
    (b, b_env): (Option<B>, bool),
) -> (Option<A>, Option<B>) {
    match (a, b) {
        (Some(a), Some(b)) if a_env != b_env => {
            if a_env {
                (None, Some(b))
            } else {
                (Some(a), None)
            }
        }
        other => other,
    }
}

/// A duration setting, refused below `min`: "{what} 0s is too short (at least {min}{why})".
fn at_least(
    value: Option<Duration>,
    min: Duration,
    what: &str,
    why: &str,
) -> Result<Option<Duration>, String> {
    match value {
        Some(d) if d < min => Err(format!(
            "{what} {} is too short (at least {}{why})",
            humantime::format_duration(d),
            humantime::format_duration(min)
        )),
        other => Ok(other),
    }
}

impl Settings {
    pub fn resolve(args: &ServeArgs, file: &FileConfig) -> Result<Self, String> {
        let source = Self::resolve_source(args, file)?;
        // Schedule and interval are one choice: the highest layer that sets either wins, so a
        // `--interval` flag overrides a `schedule:` in the file instead of conflicting with it.
        let (cron, interval) = flag_over_env(
            (args.schedule.as_ref(), args.from_env.contains(&"schedule")),
            (args.interval, args.from_env.contains(&"interval")),
        );
        let schedule = match (cron, interval) {
            (Some(_), Some(_)) => {
                return Err("set either --schedule or --interval, not both".into());
            }
            (Some(c), None) => Schedule::parse_cron(c)?,
            (None, Some(i)) => Schedule::interval(i)?,
            (None, None) => match (&file.schedule, file.interval) {
                (Some(_), Some(_)) => {
                    return Err(
                        "config file sets both schedule and interval; keep one of them".into(),
                    );
                }
                (Some(c), None) => Schedule::parse_cron(c)?,
                (None, Some(i)) => Schedule::interval(i)?,
                (None, None) => Schedule::interval(DEFAULT_INTERVAL)?,
            },
        };
        let listen = parse_listen(
            args.listen
                .as_deref()
                .or(file.listen.as_deref())
                .unwrap_or(DEFAULT_LISTEN),
        )?;
        let (webhook_secret, webhook_secret_file) = resolve_secret(
            args.webhook_secret_file.as_deref(),
            "KPR_WEBHOOK_SECRET",
            file.webhook_secret_file.as_deref(),
            "webhook secret",
        )?;
        let webhook_max_body = args
            .webhook_max_body
            .or(file.webhook_max_body)
            .unwrap_or(DEFAULT_WEBHOOK_MAX_BODY);
        if webhook_max_body == 0 {
            return Err("webhook max body must be at least 1 byte".into());
        }
        // Far above any payload a git host sends (GitHub's cap is 25 MB).
        if webhook_max_body > MAX_WEBHOOK_MAX_BODY {
            return Err(format!(
                "webhook max body {webhook_max_body} is over {} bytes (1 GiB)",
                MAX_WEBHOOK_MAX_BODY
            ));
        }
        let (prune, max_deletes) = args.deletes.settle(file);
        Ok(Settings {
            source,
            schedule,
            jitter: args.jitter.or(file.jitter).unwrap_or(Duration::ZERO),
            listen,
            webhook_secret,
            webhook_secret_file,
            webhook_max_body,
            dry_run: args.dry_run.settle(file),
            prune,
            max_deletes,
            // Zero would take every stale replica's head at once: no protection at all.
            reset_settle: at_least(
                args.reset_settle.or(file.reset_settle),
                Duration::from_secs(1),
                "reset settle time",
                "; it must outlast how far a git host's replicas lag",
            )?
            .unwrap_or(reconcile::RESET_SETTLE),
            // Zero would mean runs back to back, each with a fetch and AWS calls.
            retry_delay: at_least(
                args.retry_delay.or(file.retry_delay),
                Duration::from_millis(100),
                "retry delay",
                "",
            )?
            .unwrap_or(backoff::BASE_DELAY),
            shutdown_timeout: args
                .shutdown_timeout
                .or(file.shutdown_timeout)
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
        })
    }

    fn resolve_source(args: &ServeArgs, file: &FileConfig) -> Result<SourceSpec, String> {
        let file_git = file.git.clone().unwrap_or_default();
        // Like the schedule, the source is one choice made by the highest layer that sets one.
        let (dir, git_url) = if args.dir.is_some() || args.git_url.is_some() {
            let (dir, url) = flag_over_env(
                (args.dir.as_ref(), args.from_env.contains(&"dir")),
                (args.git_url.as_ref(), args.from_env.contains(&"git_url")),
            );
            (dir.cloned(), url.cloned())
        } else {
            (file.dir.clone(), file_git.url.clone())
        };
        match (dir, git_url) {
            (Some(_), Some(_)) => Err(
                "set either a manifest directory (--dir) or a git repository (--git-url), not both"
                    .into(),
            ),
            (None, None) => Err(
                "no manifest source: set --dir DIR, or --git-url URL --git-branch BRANCH \
                 (or `dir:` / `git:` in the config file)"
                    .into(),
            ),
            (Some(dir), None) => Ok(SourceSpec::Dir(dir)),
            (None, Some(url)) => {
                let branch = args
                    .git_branch
                    .clone()
                    .or(file_git.branch.clone())
                    .ok_or("--git-branch is required with a git repository")?;
                if !valid_branch(&branch) {
                    return Err(format!("git branch {branch:?} is not a valid branch name"));
                }
                // A full ref would be fetched as refs/heads/refs/heads/main, and every push
                // compared with that and ignored.
                if let Some(name) = branch.strip_prefix("refs/heads/") {
                    return Err(format!(
                        "git branch {branch:?} is a ref, not a branch name: write {name:?}"
                    ));
                }
                let path = normalize_git_path(
                    args.git_path
                        .as_deref()
                        .or(file_git.path.as_deref())
                        .unwrap_or(Path::new("")),
                )?;
                let source::UrlCredentials {
                    url,
                    user,
                    password: url_password,
                } = source::split_credentials(&url)?;
                let (mut token, token_file) = resolve_secret(
                    args.git_token_file.as_deref(),
                    "KPR_GIT_TOKEN",
                    file_git.token_file.as_deref(),
                    "git token",
                )?;
                if url_password.is_some()
                    || user
                        .as_ref()
                        .is_some_and(|u| u.len() >= source::TOKEN_LIKE_LEN)
                {
                    tracing::warn!(
                        "the git URL carries a password or token; kpr moved it out of the URL, \
                         but where the URL is written it is in plain sight (a flag in process \
                         lists, a variable in a pod spec, a config file): prefer \
                         --git-token-file or KPR_GIT_TOKEN"
                    );
                }
                if token.is_none() {
                    token = url_password.map(Secret);
                }
                if token.is_some() && url.starts_with("http://") && !source::loopback_url(&url) {
                    tracing::warn!(
                        "the git token goes to {} over plain http://, in cleartext to anyone on \
                         the way: use an https:// URL",
                        redact_url(&url)
                    );
                }
                if token.is_some() && !url.starts_with("https://") && !url.starts_with("http://") {
                    return Err(
                        "a git token is only used with an https:// repository URL; ssh \
                         repositories authenticate with the usual ssh keys (GIT_SSH_COMMAND, \
                         ~/.ssh)"
                            .into(),
                    );
                }
                Ok(SourceSpec::Git(GitSpec {
                    url,
                    branch,
                    path,
                    token,
                    token_file,
                    user: user.map(Secret),
                    workdir: args
                        .workdir
                        .clone()
                        .or(file.workdir.clone())
                        .unwrap_or_else(|| PathBuf::from(DEFAULT_WORKDIR)),
                    repository: match args
                        .git_repository
                        .clone()
                        .or(file_git.repository.clone())
                        .filter(|r| !r.trim_matches('/').is_empty())
                    {
                        Some(r) if r.contains([':', '@']) => {
                            return Err(format!(
                                "git repository {r:?}: name it as its webhooks do \
                                 (owner/name; GitLab: group/subgroup/name), not as a URL"
                            ));
                        }
                        r => r,
                    },
                }))
            }
        }
    }
}

/// `kpr serve --check-config`: everything that can be checked without touching AWS or the
/// repository's remote.
fn check_config(settings: &Settings, engine: &Engine) -> u8 {
    let mut problems = Vec::new();
    let mut lines = Vec::new();
    match &settings.source {
        SourceSpec::Dir(dir) => {
            let loaded = crate::manifest::load_dir(dir, &engine.load);
            let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
            if errors.is_empty() {
                // Warnings do not stop the service, but whoever checks the configuration
                // should read them (a Deny that would lock kpr out is one).
                let warnings: Vec<String> = loaded.warnings().map(|d| format!("  {d}")).collect();
                lines.push(format!(
                    "source: directory {} ({} manifest(s) in {} file(s), valid{})",
                    dir.display(),
                    loaded.state.resources.len(),
                    loaded.files,
                    match warnings.len() {
                        0 => String::new(),
                        n => format!("; {n} warning(s) below"),
                    }
                ));
                lines.extend(warnings);
            } else {
                problems.extend(errors);
            }
        }
        SourceSpec::Git(g) => {
            lines.push(format!(
                "source: git {} branch {} path {} (token: {}; working copy in {})",
                redact_url(&g.url),
                g.branch,
                if g.path.as_os_str().is_empty() {
                    ".".into()
                } else {
                    g.path.display().to_string()
                },
                if g.token.is_some() { "set" } else { "none" },
                g.workdir.display()
            ));
        }
    }
    lines.push(format!(
        "schedule: {}{}{}",
        settings.schedule,
        // A cron expression's hours are UTC's; an interval has none.
        if matches!(settings.schedule, Schedule::Cron { .. }) {
            " (UTC)"
        } else {
            ""
        },
        if settings.jitter.is_zero() {
            String::new()
        } else {
            format!(
                ", jitter up to {}",
                humantime::format_duration(settings.jitter)
            )
        }
    ));
    lines.push(format!(
        "retry after a failure: {}, doubling up to {}",
        humantime::format_duration(settings.retry_delay),
        humantime::format_duration(backoff::cap(settings.retry_delay))
    ));
    if let SourceSpec::Git(_) = &settings.source {
        lines.push(format!(
            "a refused branch head is applied after staying the head for {}",
            humantime::format_duration(settings.reset_settle)
        ));
    }
    // Where the calls go, so an emulator's endpoint (or its absence) shows before any call.
    let client = &engine.client;
    let mut roles: Vec<&String> = client.roles.keys().collect();
    roles.sort();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let region = match (
        &client.region,
        env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
    ) {
        (Some(r), _) => r.clone(),
        (None, Some(r)) => format!("{r} (from the environment)"),
        (None, None) => {
            "us-east-1 (the fallback; a call addressed by an ARN takes its region)".into()
        }
    };
    lines.push(format!(
        "AWS: endpoint {}, region {region}, {}, concurrency {}{}",
        client.endpoint_url.as_deref().map_or(
            "the SDK's (AWS_ENDPOINT_URL*, the profile, or AWS's)".into(),
            redact_url
        ),
        match engine.rate_limit {
            0 => "no rate limit".to_string(),
            n => format!("{n} request(s)/s per account"),
        },
        engine.concurrency,
        if roles.is_empty() {
            String::new()
        } else {
            format!(
                "; roles assumed for account(s) {}",
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    lines.push(format!(
        "calls: up to {} attempt(s) each, retried for at most {}; policies up to {} bytes",
        engine.retry.max_attempts,
        humantime::format_duration(engine.retry.max_elapsed),
        engine.load.max_policy_size
    ));
    lines.push(format!("listen: {}", settings.listen));
    lines.push(format!(
        "webhook: {}{}",
        if settings.webhook_secret.is_some() {
            "enabled (secret set)"
        } else {
            "disabled (no secret)"
        },
        match &settings.source {
            SourceSpec::Git(g) => format!(
                "; pushes of {}",
                webhook::Repository::from_settings(&g.url, g.repository.as_deref())
            ),
            SourceSpec::Dir(_) => String::new(),
        }
    ));
    lines.push(format!(
        "mode: {}{}",
        if settings.dry_run { "dry run" } else { "apply" },
        if settings.prune {
            format!(", prune (max {} deletes)", settings.max_deletes)
        } else {
            String::new()
        }
    ));
    if problems.is_empty() {
        lines.push("configuration OK".into());
        crate::cli::emit_bytes((lines.join("\n") + "\n").as_bytes());
        EXIT_OK
    } else {
        for p in &problems {
            crate::errln!("{p}");
        }
        crate::errln!("configuration invalid: {} problem(s)", problems.len());
        EXIT_ERROR
    }
}

pub async fn serve(global: &GlobalArgs, file: FileConfig, args: ServeArgs) -> Result<u8, CliError> {
    let settings = match Settings::resolve(&args, &file) {
        Ok(s) => s,
        Err(e) if args.check_config => {
            crate::errln!("configuration invalid: {e}");
            return Ok(EXIT_ERROR);
        }
        Err(e) => return Err(CliError::Usage(e)),
    };
    // Checked already, as for every command (cli::run).
    let engine = Engine::resolve(global, &file)?;
    if args.check_config {
        // An endpoint the clients cannot use fails every run: the check says so now.
        if let Err(e) = engine.connect().await {
            crate::errln!("configuration invalid: {e}");
            return Ok(EXIT_ERROR);
        }
        return Ok(check_config(&settings, &engine));
    }
    run(settings, engine).await
}

async fn run(settings: Settings, engine: Engine) -> Result<u8, CliError> {
    // First: a SIGTERM during start-up (a fetch of a large repository) then waits its turn
    // instead of killing the process outright.
    let mut signals = crate::signals::StopSignals::new();
    let metrics = http::install_metrics()?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| CliError::Io {
            path: format!("listen {}", settings.listen),
            source,
        })?;
    let source = source::Source::new(&settings.source)
        .await
        .map_err(CliError::Usage)?;
    let shared = Arc::new(http::Shared::new(&settings, metrics, source.describe()));
    tracing::info!(
        listen = %settings.listen,
        source = %source.describe(),
        schedule = %settings.schedule,
        dry_run = settings.dry_run,
        prune = settings.prune,
        webhook = settings.webhook_secret.is_some(),
        "kpr serve starting"
    );
    let restored = shared.restore_pending();
    if restored > 0 {
        tracing::info!(
            pushes = restored,
            "pushes an earlier process answered but had not judged: the first run judges them"
        );
    }

    let api = engine.connect().await?;
    let reconciler = reconcile::Reconciler::new(
        source,
        api,
        engine,
        reconcile::RunOptions {
            dry_run: settings.dry_run,
            prune: settings.prune,
            max_deletes: settings.max_deletes,
            retry_delay: settings.retry_delay,
            reset_settle: settings.reset_settle,
        },
        shared.clone(),
    );
    let mut worker = tokio::spawn(reconcile::worker(reconciler, shared.clone()));
    // The first run starts at once: readiness should not wait a whole interval.
    shared.queue.push(trigger::Trigger::Startup);
    let scheduler = tokio::spawn(trigger::run_schedule(
        settings.schedule.clone(),
        settings.jitter,
        shared.clone(),
    ));

    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let mut server = tokio::spawn(http::serve(listener, shared.clone(), http_stopped));

    // What ends the service: a stop signal; or a worker or HTTP server that ended on its own,
    // which exits 1 for what supervises kpr (systemd and Docker do not probe /healthz) to
    // start it afresh.
    enum End {
        Signal(&'static str),
        /// The worker only ends on its own by a panic: nothing would run again.
        WorkerDied,
        /// Without the HTTP server no webhook arrives, and no probe can tell.
        HttpDied,
    }
    let end = tokio::select! {
        (signal, _) = signals.next() => End::Signal(signal),
        _ = &mut worker => End::WorkerDied,
        _ = &mut server => End::HttpDied,
    };
    shared.queue.close();
    scheduler.abort();
    let mut deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
    let code = match end {
        End::Signal(signal) => {
            shared.interrupt.set(signal);
            tracing::info!(
                signal,
                "shutting down: no new triggers accepted; a running apply starts no more changes"
            );
            tokio::select! {
                ended = &mut worker => match ended {
                    // A panic during the last run: the exit status must not say all went well.
                    Err(e) if e.is_panic() => {
                        tracing::error!(
                            "the reconcile worker died (a panic, logged above) while stopping"
                        );
                        EXIT_ERROR
                    }
                    _ => {
                        tracing::info!("reconcile worker stopped");
                        EXIT_OK
                    }
                },
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        timeout = %humantime::format_duration(settings.shutdown_timeout),
                        "the running reconcile did not finish in time; cancelling it (the next \
                         start reconciles again)"
                    );
                    worker.abort();
                    let _ = worker.await;
                    EXIT_OK
                }
                // As the CLI's apply does: whoever sends a second signal wants out now.
                (second, _) = signals.next() => {
                    tracing::warn!(
                        signal = second,
                        "second stop signal: cancelling the running reconcile now (the next \
                         start reconciles again)"
                    );
                    worker.abort();
                    let _ = worker.await;
                    deadline = tokio::time::Instant::now();
                    EXIT_OK
                }
            }
        }
        End::WorkerDied => {
            tracing::error!(
                "the reconcile worker died (a panic, logged above): exiting so that kpr is \
                 restarted"
            );
            deadline = tokio::time::Instant::now();
            EXIT_ERROR
        }
        End::HttpDied => {
            tracing::error!(
                "the HTTP server stopped (logged above): exiting so that kpr is restarted"
            );
            worker.abort();
            let _ = worker.await;
            EXIT_ERROR
        }
    };
    // A finished server's handle must not be polled again.
    if !matches!(end, End::HttpDied) {
        let _ = stop_http.send(true);
        // Idle keep-alive connections close at once; a stuck client must not hold the exit.
        let grace = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_secs(1));
        if tokio::time::timeout(grace, &mut server).await.is_err() {
            server.abort();
        }
    }
    tracing::info!("kpr serve stopped");
    Ok(code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_listen_address_is_an_ip_and_port_or_localhost() {
        for (given, bound) in [
            (":8080", "0.0.0.0:8080"),
            ("localhost:9090", "127.0.0.1:9090"),
            ("[::]:8080", "[::]:8080"),
        ] {
            assert_eq!(super::parse_listen(given).unwrap().to_string(), bound);
        }
        for bad in ["localhost", "kpr.internal:8080", "0.0.0.0"] {
            let e = super::parse_listen(bad).unwrap_err();
            assert!(e.contains("is not an IP address and port"), "{e}");
        }
    }

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn args(argv: &[&str]) -> ServeArgs {
        let mut v = vec!["kpr"];
        v.extend_from_slice(argv);
        Wrap::try_parse_from(v).unwrap().args
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file: FileConfig = serde_norway::from_str(
            "dir: /from-file\ninterval: 1m\nlisten: 127.0.0.1:9000\nprune: true\nmaxDeletes: 7\n",
        )
        .unwrap();
        let s = Settings::resolve(
            &args(&["--dir", "/from-flag", "--schedule", "*/5 * * * *"]),
            &file,
        )
        .unwrap();
        assert!(matches!(&s.source, SourceSpec::Dir(d) if d == Path::new("/from-flag")));
        assert_eq!(s.schedule.to_string(), "cron \"0 */5 * * * *\"");
        assert_eq!(s.listen.to_string(), "127.0.0.1:9000");
        assert!(s.prune);
        assert_eq!(s.max_deletes, 7);
        assert!(!s.dry_run);
        assert_eq!(s.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert_eq!(args(&["--dry-run"]).dry_run.value, Some(true));
        assert_eq!(args(&["--dry-run=no"]).dry_run.value, Some(false));
        assert_eq!(args(&["--prune=1"]).deletes.prune, Some(true));
        assert_eq!(args(&[]).deletes.prune, None);
        let s = Settings::resolve(&args(&["--prune=false"]), &file).unwrap();
        assert!(!s.prune);
        assert_eq!(s.schedule.to_string(), "every 1m");
        let s = Settings::resolve(&args(&["--dir", "x"]), &FileConfig::default()).unwrap();
        assert_eq!(s.schedule.to_string(), "every 10m");
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn a_retry_delay_of_zero_is_refused() {
        let none = FileConfig::default();
        let err = Settings::resolve(&args(&["--dir", "x", "--retry-delay", "0s"]), &none);
        assert!(err.unwrap_err().contains("too short"));
        let ok = Settings::resolve(&args(&["--dir", "x", "--retry-delay", "2s"]), &none);
        assert_eq!(ok.unwrap().retry_delay, Duration::from_secs(2));
    }

    #[test]
    fn inconsistent_sources_are_rejected() {
        let none = FileConfig::default();
        let err = |a: &[&str]| Settings::resolve(&args(a), &none).unwrap_err();
        assert!(err(&[]).contains("no manifest source"));
        assert!(err(&["--dir", "d", "--git-url", "https://h/r.git"]).contains("not both"));
        assert!(err(&["--git-url", "https://h/r.git"]).contains("--git-branch"));
        assert!(err(&["--git-url", "https://h/r", "--git-branch", "a..b"]).contains("not a valid"));
        assert!(
            err(&["--git-url", "h", "--git-branch", "refs/heads/main"])
                .contains("a ref, not a branch name: write \"main\"")
        );
        assert!(
            err(&["--git-url", "f", "--git-branch", "m", "--git-path", "../x"])
                .contains("inside the repository")
        );
        assert!(err(&["--dir", "d", "--listen", "nope"]).contains("listen"));
        assert!(err(&["--dir", "d", "--schedule", "* * *"]).contains("cron"));
        assert!(
            err(&["--dir", "d", "--schedule", "* * * * *", "--interval", "1m"]).contains("both")
        );
    }

    #[test]
    fn a_password_in_the_url_becomes_the_token() {
        let s = Settings::resolve(
            &args(&[
                "--git-url",
                "https://bot:s3cret@git.example.com/org/repo.git",
                "--git-branch",
                "main",
                "--git-path",
                "./policies/",
            ]),
            &FileConfig::default(),
        )
        .unwrap();
        let SourceSpec::Git(g) = s.source else {
            panic!()
        };
        assert_eq!(g.url, "https://git.example.com/org/repo.git");
        assert_eq!(g.token.unwrap().expose(), "s3cret");
        assert_eq!(g.user.unwrap().expose(), "bot");
        assert_eq!(g.path, Path::new("policies"));
        assert!(!format!("{:?}", Secret("x".into())).contains('x'));
    }

    #[test]
    fn secret_files_lose_their_trailing_newline() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        std::fs::write(&p, "hunter2\n").unwrap();
        assert_eq!(read_secret(&p, "x").unwrap().expose(), "hunter2");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_secret(&p, "x").unwrap_err().contains("empty"));
        std::fs::write(&p, "  \n").unwrap();
        assert!(read_secret(&p, "x").unwrap_err().contains("only spaces"));
        std::fs::write(&p, "first\nLEAKED\n").unwrap();
        let broken = read_secret(&p, "x").unwrap_err();
        assert!(broken.contains("control character"), "{broken}");
        assert!(!broken.contains("LEAKED"), "{broken}");
        std::fs::write(&p, "tok-with-space \n").unwrap();
        assert!(
            read_secret(&p, "x")
                .unwrap_err()
                .contains("ends with a space")
        );
        std::fs::write(&p, "\ttok\n").unwrap();
        assert!(read_secret(&p, "x").is_err());
        assert!(read_secret(&d.path().join("none"), "x").is_err());
        // A FIFO would block the reading thread until a writer came: refused, not opened.
        let fifo = d.path().join("fifo");
        if std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success())
        {
            let e = read_secret(&fifo, "x").unwrap_err();
            assert!(e.contains("not a regular file"), "{e}");
        }
        std::fs::write(&p, "é".repeat(40_000)).unwrap();
        assert!(
            read_secret(&p, "x")
                .unwrap_err()
                .contains("more than a secret's")
        );
        let e = read_secret(d.path(), "x").unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
