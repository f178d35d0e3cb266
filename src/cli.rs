//! The `kpr` command line: argument definitions and the one-shot commands.
//!
//! Exit codes: 0 success (no changes with `--detailed-exitcode`), 1 error (a usage error, and
//! output lost to a write error, too), 2 changes present (`plan --detailed-exitcode`; with
//! `apply`, changes made). `policy diff` is diff(1)'s: 0 equivalent, 1 different, 2 trouble.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::apply::{self, ApplyOptions};
use crate::arn::ResourceArn;
use crate::config::FileConfig;
use crate::kinesis::{AwsKinesis, ClientOptions, Resilient, RetryPolicy};
use crate::manifest::{self, Diagnostic, LoadOptions};
use crate::plan::{self, PlanOptions};
use crate::policy::PolicyDocument;
use crate::render::{self, Style};

/// Set when stdout refused a write for any reason but a closed pipe (see [`stdout_failed`]).
static STDOUT_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes to stdout; a closed pipe (`kpr plan | head`) means the reader has what it wanted,
/// so it ends the output quietly instead of panicking as `print!` does.
pub fn emit_bytes(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        // Said once: the writes after it fail the same way.
        if !STDOUT_FAILED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            crate::errln!("error: cannot write to stdout: {e}");
        }
    }
}

/// Whether some output was lost (a full disk under `> plan.json`): the run must then fail,
/// or a pipeline would read exit 0 or 2 and an empty or cut document as the plan.
pub fn stdout_failed() -> bool {
    STDOUT_FAILED.load(std::sync::atomic::Ordering::Relaxed)
}

macro_rules! out {
    ($($arg:tt)*) => { emit_bytes(format!($($arg)*).as_bytes()) };
}
macro_rules! outln {
    ($($arg:tt)*) => { emit_bytes((format!($($arg)*) + "\n").as_bytes()) };
}

#[derive(Debug, Parser)]
#[command(
    name = "kpr",
    version,
    about = "Reconcile Kinesis stream and consumer resource policies from YAML manifests",
    long_about = "kpr keeps the resource-based policies of Kinesis data streams and stream consumers \
                  equal to YAML manifests kept in git: it compares them semantically, shows the \
                  difference, and applies it."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Region for API calls that are not addressed by an ARN (ARNs carry their own region).
    #[arg(long, global = true, env = "KPR_REGION")]
    pub region: Option<String>,
    /// Send every Kinesis call (and the STS calls of roles mapped under `accounts`) to this
    /// endpoint, e.g. a local emulator.
    /// AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_KINESIS are honoured too.
    #[arg(long, global = true, env = "KPR_ENDPOINT_URL", hide_env_values = true)]
    pub endpoint_url: Option<String>,
    /// Resources processed at once [default: 8].
    #[arg(long, global = true, env = "KPR_CONCURRENCY")]
    pub concurrency: Option<std::num::NonZeroUsize>,
    /// Requests per second per AWS account, 0 for no limit [default: 5].
    #[arg(long, global = true, env = "KPR_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Attempts per API call, counting the first [default: 8].
    #[arg(long, global = true, env = "KPR_MAX_ATTEMPTS")]
    pub max_attempts: Option<std::num::NonZeroU32>,
    /// No retry is scheduled after this long since a call's first attempt was sent (time
    /// queued behind --rate-limit before it does not count) [default: 2m].
    #[arg(long, global = true, env = "KPR_MAX_RETRY_TIME", value_parser = crate::config::parse_duration)]
    pub max_retry_time: Option<Duration>,
    /// Largest policy, in bytes of JSON, that validation accepts [default: 20480].
    #[arg(long, global = true, env = "KPR_MAX_POLICY_SIZE")]
    pub max_policy_size: Option<usize>,
    /// off, error, warn, info, debug or trace (or a tracing filter) [default: warn; serve: info].
    #[arg(long, global = true, env = "KPR_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format; default: text on a terminal, JSON otherwise (serve) / text (other commands).
    #[arg(long, global = true, env = "KPR_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// YAML configuration file (see README: every field is also a flag and a KPR_* variable).
    #[arg(long, global = true, env = "KPR_CONFIG")]
    pub config: Option<PathBuf>,
}

pub use crate::config::LogFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every manifest offline (syntax, ARNs, policy lint, duplicates); exit 0 or 1.
    Validate {
        /// Directory of manifests, searched recursively for *.yaml / *.yml (or `dir` in the
        /// config file).
        #[arg(long, env = "KPR_DIR")]
        dir: Option<PathBuf>,
        /// text for people; json for pipelines (a stable schema, see `format_version`).
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Show what apply would change.
    Plan(PlanArgs),
    /// Apply the manifests: validate everything, then write what differs.
    Apply {
        #[command(flatten)]
        plan: PlanArgs,
        #[command(flatten)]
        dry_run: DryRunArg,
        /// Skip reading each policy back after writing it.
        #[arg(long)]
        no_verify: bool,
    },
    /// Work with single policy documents: any IAM policy JSON (equivalence rules only, no
    /// Kinesis lint), or a manifest's policy (validated and linted as `validate` does).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Write a manifest for every stream and consumer that has a policy in one account/region.
    ///
    /// The region: --region, KPR_REGION or the config file's `region`, else AWS_REGION,
    /// AWS_DEFAULT_REGION or the AWS profile's.
    Import {
        /// Account id (default: learned from the first stream's ARN).
        #[arg(long)]
        account: Option<String>,
        /// Directory to write manifests into (existing files are never overwritten).
        #[arg(long, default_value = "imported")]
        out: PathBuf,
    },
    /// Run the GitOps controller: reconcile on a schedule and on signed git-push webhooks.
    Serve(Box<crate::controller::ServeArgs>),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page kpr(1) (roff), or with --dir write it and one page per subcommand
    /// (kpr-plan(1), ...), which it refers to.
    Man {
        /// Directory to write kpr.1 and kpr-*.1 into.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the JSON Schema of the manifest format.
    Schema,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// Directory of manifests, searched recursively for *.yaml / *.yml (or `dir` in the
    /// config file).
    #[arg(long, env = "KPR_DIR")]
    pub dir: Option<PathBuf>,
    /// text for people; json for pipelines (a stable schema, see `format_version`).
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Exit 0 when there is nothing to change, 2 when there is (apply: when it changed
    /// something), 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Only this resource (repeatable). A consumer may be given with or without its timestamp.
    #[arg(long = "target", value_name = "ARN")]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub deletes: PruneArgs,
}

/// `--dry-run`, as `apply` and `serve` take it.
#[derive(Debug, Clone, Args)]
pub struct DryRunArg {
    /// Plan and report what differs, write nothing (or `dryRun` in the config file).
    #[arg(
        long = "dry-run",
        env = "KPR_DRY_RUN",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL"
    )]
    pub value: Option<bool>,
}

impl DryRunArg {
    /// Flag, then `KPR_DRY_RUN`, then the config file's `dryRun`, else off.
    pub fn settle(&self, file: &FileConfig) -> bool {
        self.value.or(file.dry_run).unwrap_or(false)
    }
}

/// `--prune` and `--max-deletes`, as `plan`, `apply` and `serve` take them.
#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Delete policies of resources, in the accounts/regions the manifests cover, that no
    /// manifest declares (or `prune` in the config file).
    #[arg(
        long,
        env = "KPR_PRUNE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL"
    )]
    pub prune: Option<bool>,
    /// With --prune: refuse to delete more than this many policies that have no manifest in a
    /// run [default: 3] (or `maxDeletes` in the config file). Deletes a manifest asks for
    /// (`ensure: absent`) are not counted.
    #[arg(long, env = "KPR_MAX_DELETES", value_name = "N")]
    pub max_deletes: Option<usize>,
}

impl PruneArgs {
    /// Whether to prune, and the most deletes a run may make: flag, then `KPR_*`, then the
    /// config file, else off and [`plan::DEFAULT_MAX_DELETES`].
    pub fn settle(&self, file: &FileConfig) -> (bool, usize) {
        (
            self.prune.or(file.prune).unwrap_or(false),
            self.max_deletes
                .or(file.max_deletes)
                .unwrap_or(plan::DEFAULT_MAX_DELETES),
        )
    }
}

/// [`PlanArgs`] with the config file's keys filled in where flags and variables left them
/// unset: the config file serves `plan` and `apply` as it serves `serve`.
struct PlanSettings<'a> {
    args: &'a PlanArgs,
    dir: PathBuf,
    prune: bool,
    max_deletes: usize,
}

impl PlanArgs {
    fn settle(&self, file: &FileConfig) -> Result<PlanSettings<'_>, CliError> {
        let (prune, max_deletes) = self.deletes.settle(file);
        Ok(PlanSettings {
            args: self,
            dir: manifest_dir(self.dir.as_ref(), file)?,
            prune,
            max_deletes,
        })
    }
}

/// `--dir`, `KPR_DIR`, else the config file's `dir`.
fn manifest_dir(flag: Option<&PathBuf>, file: &FileConfig) -> Result<PathBuf, CliError> {
    flag.or(file.dir.as_ref()).cloned().ok_or_else(|| {
        CliError::Usage(
            "no manifest directory: give --dir DIR (or KPR_DIR, or `dir` in the config file)"
                .into(),
        )
    })
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Exit 0 when A and B are equivalent, 1 when not (prints the difference), 2 on error.
    Diff {
        /// A policy JSON file, a manifest (*.yaml, *.yml), or - for stdin.
        a: String,
        /// A policy JSON file, a manifest (*.yaml, *.yml), or - for stdin.
        b: String,
    },
    /// Print the canonical form of a policy (what kpr compares).
    Fmt {
        /// A policy JSON file, a manifest (*.yaml, *.yml), or - for stdin.
        file: String,
    },
}

/// Everything needed to build the engine, after flags, env and the config file are merged.
#[derive(Debug, Clone)]
pub struct Engine {
    pub client: ClientOptions,
    pub retry: RetryPolicy,
    pub rate_limit: u32,
    pub concurrency: usize,
    pub load: LoadOptions,
}

pub const DEFAULT_CONCURRENCY: usize = 8;
/// Other Kinesis control-plane calls allow about 5 requests/s per account; AWS does not publish
/// the resource-policy calls' limit, so kpr assumes the same until told otherwise.
pub const DEFAULT_RATE_LIMIT: u32 = 5;

impl Engine {
    pub fn resolve(g: &GlobalArgs, file: &FileConfig) -> Result<Self, CliError> {
        let endpoint_url = g.endpoint_url.clone().or_else(|| file.endpoint_url.clone());
        let defaults = RetryPolicy::default();
        Ok(Engine {
            client: ClientOptions {
                region: g.region.clone().or_else(|| file.region.clone()),
                endpoint_url,
                roles: file
                    .accounts
                    .iter()
                    .map(|(id, a)| (id.clone(), a.role_arn.clone()))
                    .collect(),
                attempt_timeout: None,
            },
            retry: RetryPolicy {
                max_attempts: g
                    .max_attempts
                    .or(file.max_attempts)
                    .map_or(defaults.max_attempts, std::num::NonZeroU32::get),
                max_elapsed: g
                    .max_retry_time
                    .or(file.max_retry_time)
                    .unwrap_or(defaults.max_elapsed),
                ..defaults
            },
            rate_limit: g
                .rate_limit
                .or(file.rate_limit)
                .unwrap_or(DEFAULT_RATE_LIMIT),
            concurrency: g
                .concurrency
                .or(file.concurrency)
                .map_or(DEFAULT_CONCURRENCY, std::num::NonZeroUsize::get),
            load: LoadOptions {
                max_policy_size: g
                    .max_policy_size
                    .or(file.max_policy_size)
                    .unwrap_or(manifest::DEFAULT_MAX_POLICY_SIZE),
                ..LoadOptions::default()
            },
        })
    }

    /// The client for the commands that call AWS; an endpoint it cannot use is a usage error,
    /// found here rather than for every command (`validate` calls nothing).
    pub async fn connect(&self) -> Result<Resilient<AwsKinesis>, CliError> {
        let problem = |message: String| Err(CliError::Usage(message));
        match self.client.endpoint_url.as_deref() {
            Some(url) if let Some(what) = crate::kinesis::endpoint_secret(url) => {
                return problem(format!(
                    "the endpoint URL (--endpoint-url, KPR_ENDPOINT_URL or endpointUrl) has {what}"
                ));
            }
            // The SDK panics on an empty one; and empty is no choice between AWS and an
            // emulator (a CI variable never set, say), so it is not taken for "AWS".
            Some(url) if url.trim().is_empty() => {
                return problem(
                    "the endpoint URL (--endpoint-url, KPR_ENDPOINT_URL or endpointUrl) is \
                     empty: give one, such as http://localhost:4567, or leave it unset to call AWS"
                        .into(),
                );
            }
            _ => {}
        }
        let kinesis = AwsKinesis::new(self.client.clone()).await;
        if let Some(message) = kinesis.configured_endpoint_problem() {
            return problem(message);
        }
        Ok(Resilient::new(kinesis, self.retry.clone(), self.rate_limit))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("{path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl CliError {
    /// The `refused.reason` of the JSON document that reports it.
    pub fn reason(&self) -> &'static str {
        match self {
            CliError::Config(_) => "invalid_config",
            CliError::Usage(_) => "usage",
            CliError::Io { .. } => "io_error",
        }
    }
}

/// For a command that ends in an error before printing its JSON document (`kind`, see
/// [`Cli::json_kind`]): the refusal document instead, so stdout is never empty.
pub fn refused_document(kind: Option<&str>, reason: &str, message: &str) {
    if let Some(kind) = kind {
        outln!("{}", render::refused_json(kind, reason, message, &[], None));
    }
}

impl Cli {
    /// The command line (and `KPR_*` variables), noting where a flag and a variable of two
    /// one-choice settings meet (see [`crate::controller::ServeArgs::from_env`]).
    pub fn parse_args() -> Result<Self, clap::Error> {
        let mut matches = Self::command()
            .try_get_matches()
            .map_err(|e| name_the_variable(e, std::env::args_os()))?;
        // Read before the values are taken out of the matches.
        let from_env: Vec<&'static str> = match matches.subcommand() {
            Some(("serve", m)) => ["dir", "git_url", "schedule", "interval"]
                .into_iter()
                .filter(|id| m.value_source(id) == Some(clap::parser::ValueSource::EnvVariable))
                .collect(),
            _ => Vec::new(),
        };
        let mut cli =
            Self::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut Self::command()))?;
        if let Command::Serve(args) = &mut cli.command {
            args.from_env = from_env;
        }
        Ok(cli)
    }

    /// The `kind` of the JSON document this command prints, when it prints one: what an error
    /// that ends it before its document (a config file that does not load) is reported as, so
    /// a pipeline that asked for JSON still reads one. `file`: the config, when it loaded.
    pub fn json_kind(&self, file: Option<&FileConfig>) -> Option<&'static str> {
        let json = |o: OutputFormat| o == OutputFormat::Json;
        match &self.command {
            Command::Validate { output, .. } if json(*output) => Some("validate"),
            Command::Plan(p) if json(p.output) => Some("plan"),
            Command::Apply { plan, dry_run, .. } if json(plan.output) => {
                let dry = dry_run.value.or(file.and_then(|f| f.dry_run));
                Some(if dry == Some(true) { "plan" } else { "apply" })
            }
            _ => None,
        }
    }

    /// The exit code for trouble: `policy diff` keeps 2, as diff(1) does (1 means "differ").
    pub fn error_code(&self) -> u8 {
        match self.command {
            Command::Policy(PolicyCommand::Diff { .. }) => EXIT_DIFF_TROUBLE,
            _ => EXIT_ERROR,
        }
    }
}

/// kpr(1)'s EXIT STATUS section, as the module's header and the README give the codes.
const EXIT_STATUS_ROFF: &str = r#".SH "EXIT STATUS"
.TP
0
Success; with \fB\-\-detailed\-exitcode\fR, no changes.
.TP
1
An error: invalid manifests, a failed resource, a refused prune, a usage error, or output that
could not be written.
.TP
2
Changes present (\fBplan \-\-detailed\-exitcode\fR, \fBapply \-\-dry\-run
\-\-detailed\-exitcode\fR), or made (\fBapply \-\-detailed\-exitcode\fR).
\fBpolicy diff\fR is diff(1)'s: 0 equivalent, 1 different, 2 trouble.
"#;

pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_CHANGES: u8 = 2;
/// `policy diff`'s code for trouble (1 means "the policies differ"), as diff(1) has it.
pub const EXIT_DIFF_TROUBLE: u8 = 2;

/// The exit code for arguments clap rejected. clap's own is 2, which `plan --detailed-exitcode`
/// means as "changes present": a pipeline would take a plan that never ran (a mistyped flag, a
/// bad `KPR_*` value) for one that found changes. `policy diff` keeps 2, its code for trouble,
/// as diff(1) does.
pub fn usage_error_code<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // Parsed again, leniently, only to learn which command was meant; without the help and
    // version flags, which end any parse (`policy diff --help > /dev/full`).
    let args = args
        .into_iter()
        .map(Into::into)
        .filter(|a: &std::ffi::OsString| {
            !matches!(a.to_str(), Some("-h" | "--help" | "-V" | "--version"))
        });
    let policy_diff = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .ok()
        .is_some_and(|m| match m.subcommand() {
            Some(("policy", sub)) => sub.subcommand_name() == Some("diff"),
            _ => false,
        });
    if policy_diff {
        EXIT_DIFF_TROUBLE
    } else {
        EXIT_ERROR
    }
}

/// clap names the flag of a value it cannot read (`--concurrency <CONCURRENCY>`) also when the
/// value came from its `KPR_*` variable and no such flag was given: the error then says so.
fn name_the_variable<I, T>(mut e: clap::Error, args: I) -> clap::Error
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString>,
{
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return e;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    let Some(long) = arg
        .strip_prefix("--")
        .and_then(|a| a.split([' ', '=', '[']).next())
    else {
        return e;
    };
    let flag = format!("--{long}");
    let given = args.into_iter().map(Into::into).any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
    });
    fn env_of(cmd: &clap::Command, long: &str) -> Option<String> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(clap::Arg::get_env)
            .map(|e| e.to_string_lossy().into_owned())
            .or_else(|| cmd.get_subcommands().find_map(|s| env_of(s, long)))
    }
    if let Some(var) = env_of(&Cli::command(), long)
        && !given
        && std::env::var_os(&var).is_some()
    {
        e.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![
                format!("the value comes from the environment variable {var}").into(),
            ]),
        );
    }
    e
}

/// The `KPR_*` variables kpr reads without clap: secrets kept out of `--help`'s defaults, and
/// what `serve` hands the git credential helper (itself `kpr`).
const READ_DIRECTLY: &[&str] = &[
    "KPR_WEBHOOK_SECRET",
    "KPR_GIT_TOKEN",
    "KPR_GIT_CREDENTIAL_PROTOCOL",
    "KPR_GIT_CREDENTIAL_HOST",
    "KPR_GIT_USERNAME",
    "KPR_GIT_PASSWORD",
];

/// The `KPR_*` variables of kpr's flags (a unit test holds this list to clap's). A list, not
/// clap's tree walked at each start: building that tree cost every run ~0.3 ms, an eighth of
/// `validate`'s whole time.
const FLAG_ENV: &[&str] = &[
    "KPR_CONCURRENCY",
    "KPR_CONFIG",
    "KPR_DIR",
    "KPR_DRY_RUN",
    "KPR_ENDPOINT_URL",
    "KPR_GIT_BRANCH",
    "KPR_GIT_PATH",
    "KPR_GIT_REPOSITORY",
    "KPR_GIT_TOKEN_FILE",
    "KPR_GIT_URL",
    "KPR_INTERVAL",
    "KPR_JITTER",
    "KPR_LISTEN",
    "KPR_LOG_FORMAT",
    "KPR_LOG_LEVEL",
    "KPR_MAX_ATTEMPTS",
    "KPR_MAX_DELETES",
    "KPR_MAX_POLICY_SIZE",
    "KPR_MAX_RETRY_TIME",
    "KPR_PRUNE",
    "KPR_RATE_LIMIT",
    "KPR_REGION",
    "KPR_RESET_SETTLE",
    "KPR_RETRY_DELAY",
    "KPR_SCHEDULE",
    "KPR_SHUTDOWN_TIMEOUT",
    "KPR_WEBHOOK_MAX_BODY",
    "KPR_WEBHOOK_SECRET_FILE",
    "KPR_WORKDIR",
];

/// Whether `name` starts as kpr's variables do, whatever the case and with `_` or `-`:
/// `KPR_`, `kpr_`, `KPR-` (docker and Kubernetes take a dash in a name).
fn kpr_prefixed(name: &str) -> bool {
    name.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("kpr"))
        && matches!(name.as_bytes().get(3), Some(b'_' | b'-'))
}

/// What the environment's `KPR_*` names say: an error for one that is surely one of kpr's own
/// misspelt (`KPR_DRYRUN` for `KPR_DRY_RUN`, `KPR_CONCURENCY`), which, ignored, could turn a
/// dry run into writes, as an unknown config key would (refused too); warnings for one that
/// may be (`KPR_REGIONS`). Other names, a pipeline's own `KPR_VERSION` or `KPR_ID`, are left
/// alone: a short name is near too many of kpr's to guess.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EnvCheck {
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

pub fn check_env_vars<I>(vars: I) -> EnvCheck
where
    I: IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
{
    let known: Vec<&str> = FLAG_ENV.iter().chain(READ_DIRECTLY).copied().collect();
    // Compared without the prefix, case, underscores and dashes: `KPR_DRYRUN`, `kpr_dry_run`
    // and `KPR-DRY-RUN` (spelt as the flag) are `KPR_DRY_RUN`.
    let bare = |name: &str| name[4..].replace(['_', '-'], "").to_ascii_lowercase();
    let mut names: Vec<String> = vars
        .into_iter()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| kpr_prefixed(k) && !known.contains(&k.as_str()))
        .collect();
    if names.is_empty() {
        return EnvCheck::default();
    }
    let known_bare: Vec<String> = known.iter().map(|k| bare(k)).collect();
    names.sort();
    let mut check = EnvCheck::default();
    for name in names {
        let word = bare(&name);
        // A part of one name (`KPR_DRY`, `KPR_ENDPOINT`, `KPR_BRANCH`): said, not refused.
        let part = (word.len() >= 3)
            .then(|| {
                known_bare
                    .iter()
                    .position(|k| k.starts_with(&word) || (word.len() >= 5 && k.ends_with(&word)))
            })
            .flatten();
        let near = (word.len() >= 5)
            .then(|| crate::policy::closest(&word, known_bare.iter().map(String::as_str), 2))
            .flatten()
            .and_then(|m| known_bare.iter().position(|k| k == m));
        let Some(i) = near.or(part) else {
            continue;
        };
        let (meant, distance) = (
            &known[i],
            crate::policy::edit_distance(&word, &known_bare[i]),
        );
        if distance == 0 || (distance == 1 && word.len() >= 8) {
            check.error.get_or_insert_with(|| {
                format!(
                    "error: the environment sets {name}, which kpr does not read: did you mean \
                     {meant}? Rename or unset it (as written, its setting would be ignored)"
                )
            });
        } else {
            check.warnings.push(format!(
                "warning: the environment sets {name}, which kpr does not read; if {meant} was \
                 meant, rename it (as written, it is ignored)"
            ));
        }
    }
    check
}

/// The log level and whether to log JSON: a flag or `KPR_*` variable, then the config file,
/// then the command's default. The service logs what it does, as JSON for a collector unless
/// on a terminal; one-shot commands print their result and log only problems.
pub fn log_settings(
    g: &GlobalArgs,
    file: &FileConfig,
    serving: bool,
) -> Result<(tracing_subscriber::EnvFilter, bool), String> {
    // An empty value (`KPR_LOG_LEVEL=` in an env file) is no value: tracing would read it as
    // a filter that enables nothing.
    let given = |l: &Option<String>| l.clone().filter(|l| !l.trim().is_empty());
    let level = given(&g.log_level)
        .or_else(|| given(&file.log_level))
        .unwrap_or_else(|| {
            // The SDK's credential chain warns of each link that found nothing, with the
            // error's whole Debug form; kpr's own error for the calls says it once, readably.
            let chain = "aws_config::meta::credentials::chain=error";
            if serving {
                format!("info,{chain}")
            } else {
                // A one-shot apply reports every failed change itself; the service's record of
                // each (a warning) would say it all a second time.
                format!("warn,kinesis_policy_reconciler::apply=error,{chain}")
            }
        });
    let json = match g.log_format.or(file.log_format) {
        Some(f) => f == LogFormat::Json,
        None => serving && !std::io::stderr().is_terminal(),
    };
    Ok((log_filter(&level)?, json))
}

/// The filter a log level names. tracing reads a bare word that is not a level as a target
/// to log alone: `warning` would silence every event, errors included, without a word.
fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    // tracing also takes 0 (off) to 5 (trace).
    const LEVELS: [&str; 12] = [
        "off", "error", "warn", "info", "debug", "trace", "0", "1", "2", "3", "4", "5",
    ];
    let problem = |why: String| {
        Err(format!(
            "invalid log level {level:?}: {why} (a level is one of {}; a filter is \
             comma-separated target=level directives)",
            LEVELS[..6].join(", ")
        ))
    };
    let directives: Vec<&str> = level
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return problem("it names no level".into());
    }
    for directive in directives {
        let bare = !directive.contains(['=', '[', '{']);
        if bare && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive)) {
            return problem(format!("{directive:?} is not a level"));
        }
    }
    // The credential chain warns of each provider that failed, with the error's whole Debug
    // form; kpr's own error for the call already says the same in words. A bare level up to
    // info leaves it out; debug, trace or a filter of the user's own keeps everything.
    let filter = match level {
        "error" | "warn" | "info" => format!("{level},aws_config::meta::credentials::chain=error"),
        // `kpr=debug` names the program: its events' target is the crate's name, and a filter
        // for a target nothing logs under would silence everything.
        other => other
            .split(',')
            .map(|d| match d.trim().strip_prefix("kpr") {
                Some(rest) if rest.starts_with(['=', ':', '[']) => {
                    format!("kinesis_policy_reconciler{rest}")
                }
                _ => d.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
    };
    tracing_subscriber::EnvFilter::try_new(filter).or_else(|e| problem(e.to_string()))
}

/// Runs a command to its end: one-shot commands return their exit code, `serve` returns when
/// it is told to stop.
pub async fn run(cli: Cli, file: FileConfig) -> Result<u8, CliError> {
    let engine = Engine::resolve(&cli.global, &file)?;
    match cli.command {
        Command::Validate { dir, output } => Ok(validate(
            &manifest_dir(dir.as_ref(), &file)?,
            output,
            &engine,
        )),
        Command::Plan(args) => run_plan(&args.settle(&file)?, &engine, None).await,
        Command::Apply {
            plan,
            dry_run,
            no_verify,
        } => {
            run_plan(
                &plan.settle(&file)?,
                &engine,
                Some(ApplyMode {
                    dry_run: dry_run.settle(&file),
                    verify: !no_verify,
                }),
            )
            .await
        }
        Command::Policy(cmd) => Ok(policy_command(
            cmd,
            &engine.load,
            engine.client.region.as_deref(),
        )),
        Command::Import { account, out } => {
            let region = match engine.client.region.clone() {
                Some(region) => region,
                None => ambient_region().await.ok_or_else(|| {
                    CliError::Usage(
                        "import needs a region: --region, KPR_REGION or `region` in the config \
                         file, else AWS_REGION, AWS_DEFAULT_REGION or the AWS profile's region"
                            .into(),
                    )
                })?,
            };
            run_import(&engine, region, account, out).await
        }
        Command::Serve(args) => crate::controller::serve(&cli.global, file, *args).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "kpr", &mut buf);
            emit_bytes(&buf);
            Ok(EXIT_OK)
        }
        Command::Man { dir } => {
            // As generate_to renders the others: `help` is a subcommand only on the command line.
            let cmd = <Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
            let mut page = Vec::new();
            let rendered = clap_mangen::Man::new(cmd.clone()).render(&mut page);
            page.extend_from_slice(EXIT_STATUS_ROFF.as_bytes());
            let Some(dir) = dir else {
                rendered.map_err(|source| CliError::Io {
                    path: "man page".into(),
                    source,
                })?;
                emit_bytes(&page);
                return Ok(EXIT_OK);
            };
            // As `import --out`: the directory is made when missing.
            std::fs::create_dir_all(&dir).map_err(|source| CliError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            // Every page, then kpr.1 again with its EXIT STATUS section.
            clap_mangen::generate_to(cmd, &dir)
                .and(rendered)
                .and_then(|()| std::fs::write(dir.join("kpr.1"), &page))
                .map_err(|source| CliError::Io {
                    path: dir.display().to_string(),
                    source,
                })?;
            outln!("man pages written to {}", dir.display());
            Ok(EXIT_OK)
        }
        Command::Schema => {
            outln!("{}", manifest_schema());
            Ok(EXIT_OK)
        }
    }
}

/// The manifest JSON Schema, generated from [`manifest::ManifestDoc`].
pub fn manifest_schema() -> String {
    let schema = schemars::schema_for!(manifest::ManifestDoc);
    serde_json::to_string_pretty(&schema).expect("schema serialises")
}

fn print_diagnostics<'a>(diags: impl IntoIterator<Item = &'a Diagnostic>) {
    for d in diags {
        crate::errln!("{d}");
    }
}

fn validate(dir: &Path, output: OutputFormat, engine: &Engine) -> u8 {
    let loaded = manifest::load_dir(dir, &engine.load);
    let errors = loaded.errors().count();
    match output {
        OutputFormat::Json => {
            let doc = serde_json::json!({
                "format_version": render::FORMAT_VERSION,
                "kind": "validate",
                "valid": errors == 0,
                "files": loaded.files,
                "resources": loaded.state.resources.len(),
                "diagnostics": loaded.diagnostics,
            });
            outln!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        }
        OutputFormat::Text => {
            print_diagnostics(&loaded.diagnostics);
            if errors == 0 {
                outln!(
                    "{} manifest(s) in {} file(s) are valid.",
                    loaded.state.resources.len(),
                    loaded.files
                );
            } else {
                crate::errln!("{errors} error(s); nothing was checked against AWS.");
            }
        }
    }
    if errors == 0 { EXIT_OK } else { EXIT_ERROR }
}

struct ApplyMode {
    dry_run: bool,
    verify: bool,
}

fn progress_bar(enabled: bool, msg: &'static str) -> indicatif::ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(0);
    // The message is in the template, not set on the bar: setting it would draw the bar at
    // once, as `0/0`, before the caller knows how much there is to do.
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{msg} [{{bar:30}}] {{pos}}/{{len}} {{elapsed}}"
        ))
        .expect("template")
        .progress_chars("=> "),
    );
    pb
}

/// With `--prune`, each target (once) that matched neither a manifest nor a policy to prune:
/// a warning on stderr, and among `warnings` for the JSON a pipeline's comment is built from.
fn warn_unmatched_targets(
    plan: &plan::Plan,
    targets: &[ResourceArn],
    dir: &Path,
    warnings: &mut Vec<Diagnostic>,
) {
    let unlisted = |a: &ResourceArn| plan.unlisted_targets.contains(a);
    let listing_failed = plan.listing_failed();
    let mut warned: Vec<&ResourceArn> = Vec::new();
    for t in targets.iter().filter(|t| !plan.covers(t)) {
        // A consumer with and without its timestamp names one registration, and is warned
        // about once; two timestamps are two registrations, each warned about (one may be
        // gone, the other live), as is any pair the plan found apart.
        if warned
            .iter()
            .any(|w| plan::target_names(w, t) && unlisted(w) == unlisted(t))
        {
            continue;
        }
        warned.push(t);
        let message = if unlisted(t) {
            // Only a plan the prune guard refused gets here with one: the others are refused
            // as unmatched before this.
            format!(
                "--target {t} matches no manifest in {} and no stream or consumer in reach",
                dir.display()
            )
        } else if listing_failed {
            // Not "no policy": the listing that would have found it failed.
            format!(
                "--target {t} matched no manifest in {}, and was not checked for a policy to \
                 prune: a listing failed (see the failures)",
                dir.display()
            )
        } else {
            format!(
                "--target {t} matched nothing: no manifest in {}, and it has no policy to \
                 prune (already deleted?)",
                dir.display()
            )
        };
        crate::errln!("warning: {message}");
        warnings.push(Diagnostic {
            file: dir.to_path_buf(),
            line: None,
            severity: crate::manifest::Severity::Warning,
            message,
        });
    }
}

async fn run_plan(
    settings: &PlanSettings<'_>,
    engine: &Engine,
    mode: Option<ApplyMode>,
) -> Result<u8, CliError> {
    let args = settings.args;
    // A dry run's document is a plan's, also when it is refused.
    let kind = if mode.as_ref().is_some_and(|m| !m.dry_run) {
        "apply"
    } else {
        "plan"
    };
    // Refused before anything was planned: a person reads why on stderr; a pipeline that asked
    // for JSON still gets a document on stdout, not nothing.
    // `plan`: the one the prune guard refused, with how many resources `--target` took.
    let refuse = |reason: &str,
                  message: String,
                  diagnostics: &[Diagnostic],
                  plan: Option<(&plan::Plan, Option<render::Targeted>)>| {
        crate::errln!("{message}");
        if args.output == OutputFormat::Json {
            outln!(
                "{}",
                render::refused_json(kind, reason, &message, diagnostics, plan)
            );
        }
        Ok(EXIT_ERROR)
    };
    // A target that is not an ARN matches nothing either.
    let targets: Vec<ResourceArn> =
        match args.targets.iter().map(|t| ResourceArn::parse(t)).collect() {
            Ok(targets) => targets,
            Err(e) => {
                return refuse(
                    "unmatched_target",
                    format!("error: --target: {e}"),
                    &[],
                    None,
                );
            }
        };
    // Validation of the whole desired state happens before the first call.
    let loaded = manifest::load_dir(&settings.dir, &engine.load);
    // Warnings go to stderr as `validate` prints them: a pipeline that only plans must see them.
    let mut warnings: Vec<Diagnostic> = loaded.warnings().cloned().collect();
    if loaded.has_errors() {
        // Errors and warnings together, in the order of the files, as `validate` shows them.
        print_diagnostics(&loaded.diagnostics);
        let message = format!(
            "{} error(s) in {}; nothing was planned or applied.",
            loaded.errors().count(),
            settings.dir.display()
        );
        return refuse("invalid_manifests", message, &loaded.diagnostics, None);
    }
    print_diagnostics(&warnings);
    let desired = loaded.state;
    // A target that names nothing would make the run a silent no-op: a typo in a pipeline's
    // --target must not pass as "no changes". Without --prune only a manifest can match, so
    // this is known before any call; with it, after planning (it may name a policy to delete).
    if !settings.prune
        && let Some(t) = targets.iter().find(|t| {
            !desired
                .resources
                .iter()
                .any(|r| plan::target_names(t, &r.arn))
        })
    {
        let message = format!(
            "error: --target {t} matches no manifest in {}; nothing was planned",
            settings.dir.display()
        );
        return refuse("unmatched_target", message, &warnings, None);
    }
    let api = engine.connect().await?;
    let opts = PlanOptions {
        concurrency: engine.concurrency,
        targets: targets.clone(),
        prune: settings.prune,
        max_deletes: settings.max_deletes,
    };
    let text = args.output == OutputFormat::Text;
    let style = Style::detect(std::io::stdout().is_terminal());
    // How many resources the manifests declare, when --target plans only some of them.
    let targeted = (!targets.is_empty()).then_some(desired.resources.len());
    let pb = progress_bar(text, "reading live policies");
    let plan = match plan::plan(&api, &desired, &opts, &pb).await {
        Ok(p) => p,
        Err(refused) => {
            pb.finish_and_clear();
            let plan = match &refused {
                plan::PlanRefused::TooManyDeletes { plan, .. } => plan.as_deref(),
                plan::PlanRefused::PruneWithoutManifests => None,
            };
            if let Some(p) = plan {
                warn_unmatched_targets(p, &targets, &settings.dir, &mut warnings);
            }
            // The whole plan it refused, as plan shows one (failures and summary too): the
            // deletes to review, and what else would change once the guard is raised.
            if let Some(p) = plan
                && text
            {
                out!("{}", render::plan_text(p, targeted, &style));
                outln!("Refused by the prune guard: nothing was written.");
            }
            let plan = plan.map(|p| {
                let targeted = targeted.map(|declared| render::Targeted {
                    planned: p.planned(),
                    declared,
                });
                (p, targeted)
            });
            return refuse("prune_guard", format!("error: {refused}"), &warnings, plan);
        }
    };
    pb.finish_and_clear();
    // With --prune a target may name an undeclared resource whose policy is already gone
    // (a repeated run): nothing to do is then the right answer, so only a warning. One that
    // names no resource at all is a typo, refused as it is without --prune.
    if let Some(t) = targets
        .iter()
        .find(|t| !plan.covers(t) && plan.unlisted_targets.contains(t))
    {
        let message = format!(
            "error: --target {t} matches no manifest in {} and no stream or consumer in \
             reach; nothing was {}",
            settings.dir.display(),
            if kind == "apply" {
                "applied"
            } else {
                "planned"
            }
        );
        return refuse("unmatched_target", message, &warnings, None);
    }
    warn_unmatched_targets(&plan, &targets, &settings.dir, &mut warnings);
    let apply_mode = match mode {
        Some(m) if !m.dry_run => m,
        dry => {
            if text {
                out!("{}", render::plan_text(&plan, targeted, &style));
                if dry.is_some() {
                    outln!("Dry run: nothing was written.");
                }
            } else {
                out!("{}", render::plan_json(&plan, &warnings, targeted));
            }
            return Ok(if !plan.failures.is_empty() {
                EXIT_ERROR
            } else if args.detailed_exitcode && plan.has_changes() {
                EXIT_CHANGES
            } else {
                EXIT_OK
            });
        }
    };
    if text {
        // Before the first write: a log cut short still says what was about to change.
        out!("{}", render::changes_text(&plan, &style));
    }
    let pb = progress_bar(text, "applying");
    let interrupt = crate::signals::Interrupt::default();
    let settled = apply::Settled::default();
    let (planned, pruned) = (plan.planned(), plan.pruned());
    let json_targeted = targeted.map(|declared| render::Targeted { planned, declared });
    // A pipeline reading JSON gets a document even from a hard stop, built from this copy.
    let hard_stop_json = (!text).then(|| HardStopJson {
        plan: plan.clone(),
        diagnostics: warnings.clone(),
        targeted: json_targeted,
    });
    // Only from here: until the first write, a stop signal may end the process as usual.
    let on_signal = tokio::spawn(stop_gracefully(
        crate::signals::StopSignals::new(),
        interrupt.clone(),
        settled.clone(),
        hard_stop_json,
        pb.clone(),
    ));
    let report = apply::apply(
        &api,
        plan,
        &ApplyOptions {
            concurrency: engine.concurrency,
            verify: apply_mode.verify,
            interrupt,
            settled,
            ..ApplyOptions::default()
        },
        &pb,
    )
    .await;
    on_signal.abort();
    pb.finish_and_clear();
    if text {
        out!("{}", render::apply_text(&report, &style));
        if let Some(declared) = targeted {
            out!(
                "{}",
                render::targeted_note(planned, pruned, declared, &style)
            );
        }
    } else {
        out!("{}", render::apply_json(&report, &warnings, json_targeted));
    }
    Ok(if report.incomplete() {
        EXIT_ERROR
    } else if args.detailed_exitcode
        && report
            .results
            .iter()
            .any(|r| r.outcome == apply::Outcome::Applied)
    {
        EXIT_CHANGES
    } else {
        EXIT_OK
    })
}

/// What `apply --output json` needs to print its report from a hard stop.
struct HardStopJson {
    plan: crate::plan::Plan,
    diagnostics: Vec<crate::manifest::Diagnostic>,
    targeted: Option<render::Targeted>,
}

/// As Terraform does on a CI runner's cancel: the first stop signal lets the writes under way
/// finish and report, so the log says what was changed; a second one stops at once.
async fn stop_gracefully(
    mut signals: crate::signals::StopSignals,
    interrupt: crate::signals::Interrupt,
    settled: apply::Settled,
    json: Option<HardStopJson>,
    pb: indicatif::ProgressBar,
) {
    let (first, _) = signals.next().await;
    interrupt.set(first);
    pb.suspend(|| {
        crate::errln!(
            "{first}: starting no more changes; waiting for the ones under way to finish \
             (a second SIGINT or SIGTERM stops at once)"
        )
    });
    let (second, status) = signals.next().await;
    // A CI runner's cancel sends SIGTERM a few seconds after SIGINT: the report never comes,
    // so say here what is known, resource by resource.
    pb.suspend(|| {
        crate::errln!(
            "{second}: stopping at once, before the end of the apply. So far:\n{}\n\
             (`kpr plan` shows where things stand)",
            settled.describe()
        )
    });
    if let Some(j) = json {
        let report = settled.report(j.plan, first, second);
        out!(
            "{}",
            render::apply_json(&report, &j.diagnostics, j.targeted)
        );
    }
    // On a terminal the bar would stay drawn above the shell's prompt.
    pb.finish_and_clear();
    std::process::exit(status.into());
}

/// The region the AWS CLI would pick: AWS_REGION or AWS_DEFAULT_REGION, else the profile's.
/// Only `import` needs one of its own (every other call takes its region from an ARN). EC2
/// instance metadata is not asked: without a region set, a clear error beats a wait.
async fn ambient_region() -> Option<String> {
    use aws_config::meta::region::RegionProviderChain;
    RegionProviderChain::first_try(
        aws_config::environment::EnvironmentVariableRegionProvider::new(),
    )
    .or_else(aws_config::profile::ProfileFileRegionProvider::new())
    .region()
    .await
    .map(|r| r.to_string())
}

async fn run_import(
    engine: &Engine,
    region: String,
    account: Option<String>,
    out: PathBuf,
) -> Result<u8, CliError> {
    if let Some(a) = &account
        && !crate::arn::is_account_id(a)
    {
        return Err(CliError::Usage(format!(
            "--account {a:?} is not a 12-digit account id"
        )));
    }
    // It goes into every ARN import lists and writes.
    if !crate::arn::is_region_name(&region) {
        return Err(CliError::Usage(format!(
            "region {region:?} (from --region, AWS_REGION or the AWS profile) is not a region \
             name (such as us-east-1)"
        )));
    }
    // Made before any call, so an unwritable place fails first; removed again (when still
    // empty) if the import fails, so a retry does not find a directory it did not fill.
    // Every level made here, deepest first.
    let created: Vec<PathBuf> = out
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(&out).map_err(|source| CliError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let api = engine.connect().await?;
    let opts = crate::import::ImportOptions {
        region,
        account,
        out: out.clone(),
        concurrency: engine.concurrency,
        max_policy_size: engine.load.max_policy_size,
    };
    let report = match crate::import::import(&api, &opts).await {
        Ok(r) => r,
        Err(e) => {
            crate::errln!("error: {e}");
            for dir in &created {
                // Only an empty directory goes: remove_dir refuses any other.
                let _ = std::fs::remove_dir(dir);
            }
            return Ok(EXIT_ERROR);
        }
    };
    for w in &report.warnings {
        crate::errln!("warning: {w}");
    }
    for p in &report.skipped_existing {
        if report.pending_delete.contains(p) {
            crate::errln!(
                "skipped: {} exists (never overwritten), and declares `ensure: absent`: \
                 `kpr apply` would delete the live policy",
                p.display()
            );
        } else if report.differs_from_live.contains(p) {
            crate::errln!(
                "skipped: {} exists (never overwritten), and declares a policy other than the \
                 live one (or the resource has none now): `kpr plan` shows the difference, and \
                 `kpr apply` would put the file's back",
                p.display()
            );
        } else {
            crate::errln!("skipped: {} exists (never overwritten)", p.display());
        }
    }
    for e in &report.errors {
        crate::errln!("error: {e}");
    }
    let plural = |n: usize, one: &'static str, many: &'static str| if n == 1 { one } else { many };
    let (written, bare) = (report.written.len(), report.without_policy);
    let review = match report.for_review {
        0 => String::new(),
        n => format!("{n} of them refused by kpr, written for review; "),
    };
    outln!(
        "Imported {written} {} into {} ({review}{bare} {} no policy).",
        plural(written, "policy", "policies"),
        out.display(),
        plural(bare, "resource has", "resources have")
    );
    outln!("{}", crate::import::next_steps(&out, &report));
    Ok(if report.errors.is_empty() {
        EXIT_OK
    } else {
        EXIT_ERROR
    })
}

/// A policy or manifest to compare: at most as large as a manifest file may be, and without
/// a byte order mark (editors on Windows write one; serde_json refuses it).
fn read_input(name: &str) -> Result<String, String> {
    let mut bytes = Vec::new();
    let fits = if name == "-" {
        manifest::read_bounded(std::io::stdin(), &mut bytes)
    } else {
        std::fs::File::open(name).and_then(|f| manifest::read_bounded(f, &mut bytes))
    };
    if !fits.map_err(|e| format!("{name}: error: {e}"))? {
        return Err(format!(
            "{name}: error: larger than {} MiB: not a policy",
            manifest::MAX_FILE_BYTES >> 20
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{name}: error: not valid UTF-8 text (binary file?)"))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// A policy JSON file, or a manifest (`*.yaml` / `*.yml`; on stdin, text that does not open
/// with `{`), whose policy is then taken as kpr would apply it. Errors come as whole lines,
/// `FILE[:LINE]: error: ...`, as `validate` prints them.
///
/// With a manifest, also the partition of its resource: what the policy is read in.
fn load_policy(name: &str, opts: &LoadOptions) -> Result<Compared, String> {
    let text = read_input(name)?;
    let manifest = if name == "-" {
        !text.trim_start().starts_with('{')
    } else {
        manifest::is_manifest_name(name.as_bytes())
    };
    if manifest {
        return policy_of_manifest(name, &text, opts);
    }
    // What `aws kinesis get-resource-policy --query Policy --output text` writes for a
    // resource without a policy, read as kpr reads the API's answer.
    // An empty file is most likely a read that failed (`aws ... > live.json` writes nothing
    // when the call fails): taken for "no policy", it would pass a check that there is none.
    if text.trim().is_empty() {
        return Err(format!(
            "{name}: error: empty file (write {{}} for no policy)"
        ));
    }
    if crate::policy::is_empty_policy(&text) {
        return Ok((None, None));
    }
    let doc = PolicyDocument::from_json_str(&text).map_err(|e| {
        let line = match &e {
            crate::policy::PolicyError::Json(j) => Some(j.line()),
            // JSON is YAML (without aliases): the manifest's locator finds the line of a
            // path in it too.
            crate::policy::PolicyError::Invalid { path, .. } => {
                manifest::locate::line_of_unaliased(&text, path)
            }
        };
        match line {
            Some(line) => format!("{name}:{line}: error: {e}"),
            None => format!("{name}: error: {e}"),
        }
    })?;
    Ok((Some(doc), None))
}

/// A manifest's policy, loaded and checked as `validate` would (its warnings printed).
/// A policy to compare: `None` for no policy (`{}`, as AWS shows a resource without one, or a
/// manifest with `ensure: absent`); and the partition of the resource a manifest names.
type Compared = (Option<PolicyDocument>, Option<String>);

fn policy_of_manifest(name: &str, text: &str, opts: &LoadOptions) -> Result<Compared, String> {
    let loaded = manifest::load_bytes(Path::new(name), text.as_bytes(), opts);
    print_diagnostics(loaded.warnings());
    let mut resources = match loaded.into_result() {
        Ok(state) => state.resources,
        Err(errors) => {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(errors.join("\n"));
        }
    };
    if resources.len() != 1 {
        return Err(format!(
            "{name}: error: holds {} manifests; give a file with one",
            resources.len()
        ));
    }
    let resource = resources.remove(0);
    let document = match resource.intent {
        manifest::Intent::Present { document, .. } => {
            Some(std::sync::Arc::unwrap_or_clone(document))
        }
        manifest::Intent::Absent => None,
    };
    Ok((document, Some(resource.arn.scope.partition.clone())))
}

/// `policy diff` exits 0/1/2 like diff(1): equal, different, trouble.
fn policy_command(cmd: PolicyCommand, opts: &LoadOptions, region: Option<&str>) -> u8 {
    // The partition the documents' Resource ARNs name, or else `--region`'s, or else the
    // commercial one.
    let named = |docs: &[&PolicyDocument]| {
        let otherwise = region.map_or("aws", crate::arn::partition_of);
        PolicyDocument::partition_named_or(docs, otherwise).to_string()
    };
    match cmd {
        PolicyCommand::Fmt { file } => match load_policy(&file, opts) {
            Ok((Some(doc), partition)) => {
                let partition = partition.unwrap_or_else(|| named(&[&doc]));
                let text = doc.to_canonical_string_in(Some(&partition));
                // They can only be in strings, where JSON's \u escape reads the same: raw, on a
                // terminal, they would make the policy read otherwise than it is.
                let mut shown = String::with_capacity(text.len());
                for c in text.chars() {
                    if manifest::reads_otherwise(c) {
                        shown.push_str(&format!("\\u{:04x}", c as u32));
                    } else {
                        shown.push(c);
                    }
                }
                out!("{shown}");
                EXIT_OK
            }
            Ok((None, _)) => {
                outln!("{{}}");
                EXIT_OK
            }
            Err(e) => {
                crate::errln!("{e}");
                EXIT_ERROR
            }
        },
        PolicyCommand::Diff { a, b } => {
            if a == "-" && b == "-" {
                crate::errln!("error: only one side can be read from stdin");
                return EXIT_DIFF_TROUBLE;
            }
            // One at a time: B's warnings are not printed when A already failed.
            let ((da, pa), (db, pb)) =
                match load_policy(&a, opts).and_then(|da| Ok((da, load_policy(&b, opts)?))) {
                    Ok(both) => both,
                    Err(e) => {
                        crate::errln!("{e}");
                        return EXIT_DIFF_TROUBLE;
                    }
                };
            // A manifest names its resource, and so the partition an account's root ARN and
            // its bare id are the same principal in; two policy files can only be read in
            // the one their Resource ARNs name.
            let partition = match (pa, pb) {
                // Resources of two partitions: read in neither, whichever comes first.
                (Some(a), Some(b)) if a != b => crate::policy::UNKNOWN_PARTITION.to_string(),
                (Some(p), _) | (None, Some(p)) => p,
                (None, None) => named(&[&da, &db].into_iter().flatten().collect::<Vec<_>>()),
            };
            let equivalent = match (&da, &db) {
                (Some(da), Some(db)) => da.equivalent_in(db, &partition),
                (None, None) => true,
                _ => false,
            };
            if equivalent {
                outln!("Equivalent: {a} and {b} grant the same access.");
                return 0;
            }
            let style = Style::detect(std::io::stdout().is_terminal());
            outln!("--- {a}\n+++ {b}");
            let (da, db) = (da.as_ref(), db.as_ref());
            let summary = render::access_summary(&crate::policy::AccessChange::between(
                da,
                db,
                Some(&partition),
            ));
            let diff = render::statement_diff(da, None, db, Some(&partition));
            let alike = summary.is_empty() && diff.is_empty();
            for line in summary {
                outln!("{}", render::summary_style(line, &style));
            }
            for line in diff {
                outln!("{}", render::diff_line(line, &style));
            }
            // Statements alike: what differs is outside them.
            if alike {
                let version = |d: Option<&PolicyDocument>| match d {
                    None => "no policy".to_string(),
                    Some(d) => format!("Version {}", d.version().unwrap_or("(none)")),
                };
                outln!(
                    "~ {} -> {} (the statements are alike)",
                    version(da),
                    version(db)
                );
            }
            1
        }
    }
}

/// Logs go to stderr, so stdout stays a clean plan or JSON document.
pub fn init_logging(filter: tracing_subscriber::EnvFilter, json: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        // As the plan's colours: on a terminal, unless NO_COLOR.
        builder
            .with_ansi(Style::detect(std::io::stderr().is_terminal()).color)
            .init();
    }
}

#[cfg(test)]
mod tests {
    use super::{EnvCheck, check_env_vars};

    /// A consumer named with and without its timestamp is one target, warned about once; two
    /// timestamps of one name are two registrations, each warned about.
    #[test]
    fn an_unmatched_target_is_warned_about_once_however_spelt() {
        let consumer = "arn:aws:kinesis:us-east-1:111122223333:stream/s/consumer/c";
        let warned = |targets: &[String]| {
            let targets: Vec<crate::arn::ResourceArn> = targets
                .iter()
                .map(|a| crate::arn::ResourceArn::parse(a).unwrap())
                .collect();
            let mut warnings = Vec::new();
            super::warn_unmatched_targets(
                &crate::plan::Plan::default(),
                &targets,
                std::path::Path::new("policies"),
                &mut warnings,
            );
            warnings.len()
        };
        let (plain, old, new) = (
            consumer.to_string(),
            format!("{consumer}:1795844491"),
            format!("{consumer}:1795845085"),
        );
        assert_eq!(warned(&[plain.clone(), old.clone(), plain.clone()]), 1);
        assert_eq!(warned(&[new, old, plain]), 2);
    }

    fn vars(names: &[&str]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        names.iter().map(|n| (n.into(), "1".into())).collect()
    }

    /// The list the check compares with holds every variable clap reads: a flag added
    /// without its variable there would be called a misspelling.
    #[test]
    fn the_flag_variables_are_claps() {
        fn walk(cmd: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
            out.extend(
                cmd.get_arguments()
                    .filter_map(clap::Arg::get_env)
                    .map(|e| e.to_string_lossy().into_owned()),
            );
            for sub in cmd.get_subcommands() {
                walk(sub, out);
            }
        }
        let mut want = std::collections::BTreeSet::new();
        walk(&<super::Cli as clap::CommandFactory>::command(), &mut want);
        let have: std::collections::BTreeSet<String> =
            super::FLAG_ENV.iter().map(ToString::to_string).collect();
        assert_eq!(have, want);
    }

    #[test]
    fn a_misspelt_variable_of_kprs_is_named_with_the_one_meant() {
        for (typo, meant) in [
            ("KPR_DRYRUN", "KPR_DRY_RUN"),
            ("KPR_CONCURENCY", "KPR_CONCURRENCY"),
            ("KPR_webhook_secret", "KPR_WEBHOOK_SECRET"),
            ("KPR_GIT_TOKENFILE", "KPR_GIT_TOKEN_FILE"),
            ("KPR_MAX_DELETE", "KPR_MAX_DELETES"),
        ] {
            let check = check_env_vars(vars(&["PATH", typo]));
            let said = check.error.expect(typo);
            assert!(
                said.contains(&format!("sets {typo},")) && said.contains(&format!("{meant}?")),
                "{said}"
            );
        }
        // Spelt as the flag, or in lower case: the same name.
        for typo in [
            "KPR_DRY-RUN",
            "kpr_dry_run",
            "Kpr_Prune",
            "KPR-DRY-RUN",
            "kpr-dry-run",
        ] {
            let check = check_env_vars(vars(&[typo]));
            assert!(check.error.is_some(), "{typo}: {check:?}");
        }
        // Near one of kpr's, or part of one, but a name a pipeline may well use: said, not
        // refused.
        for (near, meant) in [
            ("KPR_REGIONS", "KPR_REGION"),
            ("KPR_GIT_PAT", "KPR_GIT_PATH"),
            ("KPR_GIT_HASH", "KPR_GIT_PATH"),
            ("KPR_DRY", "KPR_DRY_RUN"),
            ("KPR_ENDPOINT", "KPR_ENDPOINT_URL"),
            ("KPR_BRANCH", "KPR_GIT_BRANCH"),
        ] {
            let check = check_env_vars(vars(&[near]));
            assert_eq!(check.error, None, "{near}");
            assert!(
                check.warnings.len() == 1 && check.warnings[0].contains(meant),
                "{near}: {check:?}"
            );
        }
        // kpr's own, a pipeline's own (short names are near too many to guess), and the test
        // suite's: nothing said.
        let fine = vars(&[
            "KPR_DRY_RUN",
            "KPR_GIT_TOKEN",
            "KPR_GIT_CREDENTIAL_HOST",
            "KPR_VERSION",
            "KPR_VER",
            "KPR_BIN",
            "KPR_ID",
            "KPR_RUN",
            "KPR_DIFF",
            "KPR_TEST_KINESIS_MOCK_URL",
            "KPR_TEST_MOTO_ACCOUNT",
            "KPR_TEST_PYTHON",
            "KPR_TEST_FAIL_FAST",
            // deploy/'s workflow and the install script.
            "KPR_ROLE_ARN",
            "KPR_PLAN_ROLE_ARN",
            "KPR_RELEASE_URL",
            "KPR_RELEASE_SHA256",
            "KPR_SOURCE_GIT_URL",
        ]);
        assert_eq!(check_env_vars(fine), EnvCheck::default());
    }
}
