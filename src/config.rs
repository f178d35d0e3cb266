//! The optional YAML configuration file (`--config`), shared by the CLI and `kpr serve`.
//!
//! Precedence, highest first: flag, `KPR_*` environment variable, this file, built-in default.
//! Secrets are never fields here: only paths to files holding them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub concurrency: Option<std::num::NonZeroUsize>,
    pub rate_limit: Option<u32>,
    pub max_attempts: Option<std::num::NonZeroU32>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_retry_time: Option<Duration>,
    pub max_policy_size: Option<usize>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    /// Account id -> how to reach it.
    #[serde(default, deserialize_with = "unique_accounts")]
    pub accounts: BTreeMap<String, AccountConfig>,

    // `kpr serve`
    pub dir: Option<PathBuf>,
    pub git: Option<GitConfig>,
    pub workdir: Option<PathBuf>,
    #[serde(default, deserialize_with = "cron_schedule")]
    pub schedule: Option<String>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub interval: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub jitter: Option<Duration>,
    #[serde(default, deserialize_with = "listen_address")]
    pub listen: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
    /// Largest webhook body accepted, in bytes.
    pub webhook_max_body: Option<usize>,
    pub dry_run: Option<bool>,
    pub prune: Option<bool>,
    pub max_deletes: Option<usize>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub retry_delay: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub reset_settle: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub shutdown_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccountConfig {
    pub role_arn: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitConfig {
    pub url: Option<String>,
    pub branch: Option<String>,
    pub path: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// The repository as webhooks name it, when the URL does not end in it.
    pub repository: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // As manifests: an editor's byte-order mark is no part of the YAML.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let parse_error = |line, message| ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            message,
        };
        if let Some((line, name)) = crate::manifest::unicode_line_break(text) {
            return Err(parse_error(
                line,
                crate::manifest::unicode_line_break_message(name),
            ));
        }
        let cfg: FileConfig = serde_norway::from_str(text).map_err(|e| {
            let mut message = e.to_string();
            // The line is told once, before the message.
            if let Some(at) = message.find(" at line ") {
                message.truncate(at);
            }
            let line = e
                .location()
                .map_or(1, |l| crate::manifest::locate::line_at(text, &l));
            // serde tells a key given twice at the start of its mapping (a nested one's path
            // before the message): the second below that is meant.
            let twice = message
                .split_once("duplicate field `")
                .and_then(|(_, rest)| rest.split_once('`'))
                .map(|(key, _)| key)
                .or_else(|| {
                    let (_, rest) = message.split_once(TWICE_PREFIX)?;
                    rest.split_once(' ').map(|(id, _)| id)
                })
                .and_then(|key| second_key_line(text, key, line));
            parse_error(twice.unwrap_or(line), message)
        })?;
        if let Some((key, line)) = key_without_value(text) {
            let default = if key == "endpointUrl" {
                "give one, such as http://localhost:4567, or leave the key out to call AWS"
            } else {
                "give one, or leave the key out for its default"
            };
            return Err(parse_error(line, format!("{key} has no value: {default}")));
        }
        // Where each account and its role are written, for the errors below.
        let accounts = key_line(text, "accounts", 1).unwrap_or(1);
        for (account, a) in &cfg.accounts {
            let id_line = key_line(text, account, accounts).unwrap_or(accounts);
            let role_line = key_line(text, "roleArn", id_line).unwrap_or(id_line);
            if !crate::arn::is_account_id(account) {
                return Err(parse_error(
                    id_line,
                    format!("accounts: {account:?} is not a 12-digit account id"),
                ));
            }
            // Only an identity of the owning account may manage a resource's policy: a role
            // of any other account would fail every call, as "does not exist" or denied.
            match role_account(&a.role_arn) {
                None => {
                    return Err(parse_error(
                        role_line,
                        format!(
                            "accounts.{account}.roleArn {:?} is not an IAM role ARN \
                             (arn:PARTITION:iam::ACCOUNT:role/NAME)",
                            a.role_arn
                        ),
                    ));
                }
                Some(owner) if owner != account => {
                    return Err(parse_error(
                        role_line,
                        format!(
                            "accounts.{account}.roleArn {:?} is a role of account {owner}: only \
                             an identity of account {account} can manage its streams' policies",
                            a.role_arn
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(cfg)
    }

    pub fn load_opt(path: Option<&Path>) -> Result<Self, ConfigError> {
        path.map_or_else(|| Ok(Self::default()), Self::load)
    }
}

/// The account of an IAM role ARN (`arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`).
fn role_account(arn: &str) -> Option<&str> {
    let rest = arn.strip_prefix("arn:")?;
    let (partition, rest) = rest.split_once(':')?;
    let (account, name) = rest.strip_prefix("iam::")?.split_once(":role/")?;
    let id = crate::arn::is_account_id(account);
    // IAM's own rules for a role's path and name: a typo (a space, a line break, a partition
    // that does not exist) is told here, not as an AssumeRole failure at the first call.
    // The name: 1 to 64 of [A-Za-z0-9+=,.@_-]; a path before it, any printable ASCII
    // (`/team~ops/`), 512 at most with its slashes (the split drops the last one and `role/`
    // holds the first).
    let (path, last) = name.rsplit_once('/').unwrap_or(("", name));
    let name_ok = (1..=64).contains(&last.len())
        && last
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
        && path.len() <= 510
        && path.bytes().all(|b| b.is_ascii_graphic());
    (crate::arn::PARTITIONS.contains(&partition) && id && name_ok).then_some(account)
}

/// The accounts, each once: written twice (`"111122223333"` and `111122223333` are one id),
/// the last would win without a word, and with it its role.
fn unique_accounts<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, AccountConfig>, D::Error> {
    struct Accounts;
    impl<'de> serde::de::Visitor<'de> for Accounts {
        type Value = BTreeMap<String, AccountConfig>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a mapping of account ids to their settings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((id, account)) = map.next_entry::<String, AccountConfig>()? {
                if out.insert(id.clone(), account).is_some() {
                    return Err(serde::de::Error::custom(format!(
                        "{TWICE_PREFIX}{id} is given twice"
                    )));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(Accounts)
}

const TWICE_PREFIX: &str = "account ";

/// The 1-based line where `key` (plain or quoted) is written as a key the second time, from
/// line `from` on.
fn second_key_line(text: &str, key: &str, from: usize) -> Option<usize> {
    key_lines(text, key, from).nth(1)
}

/// The 1-based lines where `key` (plain or quoted) is written as a key, from line `from` on.
fn key_lines<'a>(text: &'a str, key: &'a str, from: usize) -> impl Iterator<Item = usize> + 'a {
    let is_key = move |line: &str| {
        let line = line.trim_start();
        [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
            .iter()
            .any(|k| {
                line.strip_prefix(k.as_str())
                    .is_some_and(|r| r.trim_start().starts_with(':'))
            })
    };
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .filter(move |(_, l)| is_key(l))
        .map(|(i, _)| i + 1)
}

/// A key written with no value (`dryRun:`, what `envsubst` leaves of an unset variable), as
/// `key` or `git.key`, and its line. serde reads it as the key left out: a dry run would
/// turn into writes, an emulator's calls would go to AWS.
fn key_without_value(text: &str) -> Option<(String, usize)> {
    // Only once the typed parse has passed: this one cannot fail on what that one accepted.
    let doc: serde_norway::Value = serde_norway::from_str(text).ok()?;
    let mut at = 0;
    let mut find = |key: &str, from: usize| {
        at = key_line(text, key, from).unwrap_or(from);
        at
    };
    for (key, value) in doc.as_mapping()? {
        let key = key.as_str()?;
        let line = find(key, 0);
        if value.is_null() {
            return Some((key.to_string(), line.max(1)));
        }
        for (inner, v) in value
            .as_mapping()
            .filter(|_| key == "git")
            .into_iter()
            .flatten()
        {
            if v.is_null() {
                let inner = inner.as_str()?;
                return Some((format!("{key}.{inner}"), find(inner, line).max(1)));
            }
        }
    }
    None
}

/// The 1-based line where `key` (plain or quoted) is first written as a key, from line
/// `from` on.
fn key_line(text: &str, key: &str, from: usize) -> Option<usize> {
    key_lines(text, key, from).next()
}

/// A setting parsed as it is read, inside the YAML deserializer, so that an error names the
/// key and its line (parsed later, it could name neither).
fn parsed<'de, D: serde::Deserializer<'de>, T>(
    d: D,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, D::Error> {
    struct Value<T>(fn(&str) -> Result<T, String>);
    impl<T> serde::de::Visitor<'_> for Value<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<T, E> {
            (self.0)(s).map_err(E::custom)
        }
    }
    struct Optional<T>(fn(&str) -> Result<T, String>);
    impl<'de, T> serde::de::Visitor<'de> for Optional<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(Value(self.0)).map(Some)
        }
    }
    d.deserialize_option(Optional(parse))
}

fn cron_schedule<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parsed(d, |s| {
        crate::controller::Schedule::parse_cron(s).map(|_| s.to_string())
    })
}

fn listen_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parsed(d, |s| {
        crate::controller::parse_listen(s).map(|_| s.to_string())
    })
}

/// Durations as humans write them (`30s`, `5m`, `1h 30m`), by [`parse_duration`].
fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed(d, parse_duration)
}

/// The longest duration any setting takes: a year, as humantime counts one (365.25 days).
/// Past it timers overflow (`Instant` plus 500000000000y panics), and no schedule, delay or
/// timeout of kpr needs more.
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

/// A duration as humans write it (`30s`, `5m`, `1h 30m`), a year at most: the parser of every
/// duration flag, variable and config key.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > MAX_DURATION {
        return Err(format!(
            "{s} is longer than any setting takes ({} at most)",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<FileConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kpr.yaml");
        std::fs::write(&path, text).unwrap();
        FileConfig::load(&path).map_err(|e| e.to_string())
    }

    /// Each problem once, at the line it is on: a key given twice at its second place, an
    /// account written twice (quoted and not) refused rather than the last winning.
    #[test]
    fn mistakes_are_told_at_their_line() {
        let cases = [
            (
                "region: a\r\nregion: b\r\n",
                "kpr.yaml:2: duplicate field `region`",
            ),
            (
                "accounts:\n  \"111122223333\":\n    roleArn: arn:aws:iam::111122223333:role/a\n  \
                 111122223333:\n    roleArn: arn:aws:iam::111122223333:role/b\n",
                "kpr.yaml:4: accounts: account 111122223333 is given twice",
            ),
            (
                "git:\n  branch: main\n  url: a\n  url: b\nregion: x\n",
                "kpr.yaml:4: git: duplicate field `url`",
            ),
            (
                "accounts:\n  \"111122223333\":\n    roleArn: arn:aws:iam::111122223333:role/a\n  \
                 \"222233334444\":\n    roleArn: arn:aws:iam::222233334444:role/a\n    \
                 roleArn: arn:aws:iam::222233334444:role/b\n",
                "kpr.yaml:6: accounts.222233334444: duplicate field `roleArn`",
            ),
            (
                "maxAttempts: 0\n",
                "kpr.yaml:1: maxAttempts: invalid value: integer `0`",
            ),
            (
                "concurrency: 0\n",
                "kpr.yaml:1: concurrency: invalid value: integer `0`",
            ),
            (
                "region: a # note\u{2028}endpointUrl: x\n",
                "kpr.yaml:1: holds U+2028",
            ),
            // What envsubst leaves of unset variables: not the keys left out.
            ("region: a\ndryRun:\n", "kpr.yaml:2: dryRun has no value"),
            ("maxRetryTime: ~\n", "kpr.yaml:1: maxRetryTime has no value"),
            (
                "git:\n  url: x\n  branch:\nregion: a\n",
                "kpr.yaml:3: git.branch has no value",
            ),
            ("prune: true\ngit:\n", "kpr.yaml:2: git has no value"),
            ("accounts:\n", "kpr.yaml:1: accounts has no value"),
            (
                "region: a\nmaxRetryTime: 90\n",
                "kpr.yaml:2: maxRetryTime: time unit needed",
            ),
            (
                "region: a\nschedule: not a cron\n",
                "kpr.yaml:2: schedule: cron expression \"not a cron\" has 3 fields",
            ),
            (
                "region: a\nlisten: nowhere\n",
                "kpr.yaml:2: listen: listen address \"nowhere\" is not an IP address and port",
            ),
            (
                "region: a\n\nshutdownTimeout: 500000000000y\n",
                "kpr.yaml:3: shutdownTimeout: 500000000000y is longer than any setting takes",
            ),
            (
                "\"endpointUrl\":\n",
                "kpr.yaml:1: endpointUrl has no value: give one, such",
            ),
        ];
        for (text, want) in cases {
            let got = load(text).unwrap_err();
            let got = &got[got.rfind("kpr.yaml").unwrap()..];
            assert!(got.starts_with(want), "{text:?}: {got}");
            assert!(!got.contains(" at line "), "{got}");
        }
    }

    /// Saved by an editor that writes a byte-order mark, as manifests may be.
    #[test]
    fn a_byte_order_mark_is_no_part_of_the_yaml() {
        let cfg = load("\u{feff}region: eu-west-1\ndryRun: true\n").unwrap();
        assert_eq!(cfg.region.as_deref(), Some("eu-west-1"));
        assert_eq!(cfg.dry_run, Some(true));
    }

    #[test]
    fn a_role_must_be_of_the_account_it_serves() {
        let role = |arn: &str| {
            load(&format!(
                "accounts:\n  \"222233334444\":\n    roleArn: {arn}\n"
            ))
        };
        for good in [
            "arn:aws:iam::222233334444:role/kpr",
            "arn:aws-cn:iam::222233334444:role/path/kpr",
            "arn:aws:iam::222233334444:role/team~ops/a!b/kpr",
        ] {
            assert!(role(good).is_ok(), "{good}");
        }
        let other = role("arn:aws:iam::999999999999:role/kpr").unwrap_err();
        assert!(
            other.contains("kpr.yaml:3: accounts.222233334444.roleArn")
                && other.contains("is a role of account 999999999999"),
            "{other}"
        );
        let id = load("region: a\naccounts:\n  \"2222\":\n    roleArn: x\n").unwrap_err();
        assert!(
            id.contains("kpr.yaml:3: accounts: \"2222\" is not a 12-digit"),
            "{id}"
        );
        for bad in [
            "arn:role/",
            "arn:aws:iam::2222:role/kpr",
            "arn:aws:iam::222233334444:role/",
            "arn:aws:iam::222233334444:user/kpr",
            "arn:bogus:iam::222233334444:role/kpr",
            "arn:aws:iam::222233334444:role/kpr target",
            // A YAML escape: a line break in the role's name.
            "\"arn:aws:iam::222233334444:role/kpr\\nx\"",
        ] {
            let e = role(bad).unwrap_err();
            assert!(e.contains("is not an IAM role ARN"), "{bad}: {e}");
        }
    }
}
