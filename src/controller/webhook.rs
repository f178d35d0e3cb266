//! Webhook authentication and payloads: GitHub (HMAC-SHA256 of the body), GitLab (shared
//! token) and a generic `Authorization: Bearer` caller, plus a bounded memory of delivery ids
//! that drops a delivery sent twice. The id is not covered by the signature, so this is no
//! defence against a replay with a new id; none is needed: a request only asks for a run, and
//! what the run applies comes from git, never from the request.
//!
//! Every comparison with the secret is constant-time.

use std::collections::{HashSet, VecDeque};

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    GitLab,
    Bearer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No signature, token or bearer header at all.
    Missing,
    /// One was present but it does not match (or is malformed).
    Invalid,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Equal-length-independent constant-time comparison: both sides go through one HMAC and the
/// tags are compared with `verify_slice`, so neither content nor length leaks through timing.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let tag = |data: &[u8]| {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(b"kpr constant-time compare")
            .expect("HMAC takes any key length");
        mac.update(data);
        mac
    };
    let expected = tag(a).finalize().into_bytes();
    tag(b).verify_slice(&expected).is_ok()
}

/// Whether `X-Hub-Signature-256` has the form GitHub sends (`sha256=` and 64 hex digits): only
/// then is the body worth reading to check it.
pub fn well_formed_signature(headers: &HeaderMap) -> bool {
    headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("sha256="))
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Which provider signed the request, if the signature holds.
pub fn authenticate(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<Provider, AuthError> {
    if let Some(sig) = headers.get("x-hub-signature-256") {
        let hex_sig = sig
            .to_str()
            .ok()
            .and_then(|s| s.strip_prefix("sha256="))
            .ok_or(AuthError::Invalid)?;
        let sig = hex::decode(hex_sig.trim()).map_err(|_| AuthError::Invalid)?;
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(secret).map_err(|_| AuthError::Invalid)?;
        mac.update(body);
        return mac
            .verify_slice(&sig)
            .map(|()| Provider::GitHub)
            .map_err(|_| AuthError::Invalid);
    }
    if let Some(token) = headers.get("x-gitlab-token") {
        return if ct_eq(token.as_bytes(), secret) {
            Ok(Provider::GitLab)
        } else {
            Err(AuthError::Invalid)
        };
    }
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        let value = auth.as_bytes();
        let token = value
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
            .map(|_| &value[7..])
            .ok_or(AuthError::Invalid)?;
        return if ct_eq(token, secret) {
            Ok(Provider::Bearer)
        } else {
            Err(AuthError::Invalid)
        };
    }
    Err(AuthError::Missing)
}

/// The provider's id of this delivery (the same on a redelivery): GitHub's delivery id;
/// GitLab's `Idempotency-Key`, which its retries keep (recent GitLab versions), else its
/// event UUID.
pub fn delivery_id(headers: &HeaderMap) -> Option<String> {
    [
        "x-github-delivery",
        "idempotency-key",
        "x-gitlab-event-uuid",
    ]
    .iter()
    .find_map(|h| header(headers, h))
    .map(|s| s.trim().to_string())
    .filter(|s| !s.is_empty())
}

/// What a push's payload says of the commit it moved the branch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// `after`: the branch's new head.
    pub commit: String,
    /// `before`: the head the push replaced; none for a branch the push created.
    pub from: Option<String>,
    /// GitHub's `forced`: the push rewrote history, so `from` is a head it took away. `None`
    /// when the payload does not say (GitLab): kpr tells it by ancestry once it has both
    /// commits.
    pub forced: Option<bool>,
    /// The webhook's delivery id ([`delivery_id`]), when it is a plain word (a UUID): what
    /// tells a redelivery after a restart.
    pub delivery: Option<String>,
}

impl Pushed {
    /// One line of the pending-push file (see `Shared::keep_pending`): `AFTER BEFORE FORCED
    /// DELIVERY`, `-` for what the payload did not say. Every field is a plain word.
    pub fn to_line(&self) -> String {
        let forced = match self.forced {
            Some(true) => "t",
            Some(false) => "f",
            None => "-",
        };
        format!(
            "{} {} {forced} {}",
            self.commit,
            self.from.as_deref().unwrap_or("-"),
            self.delivery.as_deref().unwrap_or("-")
        )
    }

    /// The push a [`Self::to_line`] line holds; `None` for anything else.
    pub fn from_line(line: &str) -> Option<Pushed> {
        let word = |w: &str| (w != "-").then(|| w.to_string());
        let hex = |w: &str| matches!(w.len(), 40 | 64) && w.bytes().all(|b| b.is_ascii_hexdigit());
        let mut words = line.split(' ');
        let (commit, from, forced, delivery) =
            (words.next()?, words.next()?, words.next()?, words.next()?);
        if words.next().is_some() || !hex(commit) || (from != "-" && !hex(from)) {
            return None;
        }
        Some(Pushed {
            commit: commit.to_string(),
            from: word(from),
            forced: match forced {
                "t" => Some(true),
                "f" => Some(false),
                "-" => None,
                _ => return None,
            },
            delivery: word(delivery),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ping,
    /// `git_ref` is None when a generic caller sent no payload: it just asks for a run.
    /// `pushed` is the commit the push moved the ref to, when the payload names one.
    Push {
        git_ref: Option<String>,
        pushed: Option<Pushed>,
        /// The repository the payload names, when it names one.
        repository: Option<Named>,
    },
    /// An event kpr does not act on (issues, tags, ...), by name.
    Other(String),
}

/// Body formats GitHub can send: JSON, or a form with the JSON in `payload`.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<serde_json::Value, String> {
    let form = header(headers, "content-type").is_some_and(|c| {
        c.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    // `curl -d` labels raw JSON as a form too. Such a body is JSON, never a form: a
    // `&payload=` inside one of its strings (a commit message, a branch name) is text, not a
    // field, or whoever can push to any branch would choose the push kpr sees.
    let raw_json = body.trim_ascii_start().starts_with(b"{");
    let payload = (form && !raw_json)
        .then(|| std::str::from_utf8(body).ok())
        .flatten()
        .and_then(|text| text.split('&').find_map(|kv| kv.strip_prefix("payload=")));
    match payload {
        Some(p) => {
            let json = super::source::form_decode(p).ok_or("payload is not valid")?;
            serde_json::from_str(&json).map_err(|e| format!("payload is not JSON: {e}"))
        }
        None => serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}")),
    }
}

/// A commit id in a payload: 40 or 64 hex digits, not all zeros (what a host sends for "no
/// commit": the `after` of a deleted branch, the `before` of a created one).
fn commit_id(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(|a| a.as_str())
        .filter(|a| matches!(a.len(), 40 | 64))
        .filter(|a| a.bytes().all(|b| b.is_ascii_hexdigit()) && a.bytes().any(|b| b != b'0'))
        .map(str::to_ascii_lowercase)
}

/// A push payload's ref, and the commits it moved the ref from and to.
fn push(v: &serde_json::Value) -> Event {
    let named = |object: &str, key: &str| {
        v.get(object)
            .and_then(|o| o.get(key))
            .and_then(|n| n.as_str())
            .map(str::to_string)
    };
    let urls: Vec<String> = [
        ("repository", "clone_url"),
        ("repository", "ssh_url"),
        ("repository", "git_url"),
        ("repository", "html_url"),
        ("project", "git_http_url"),
        ("project", "git_ssh_url"),
        ("project", "web_url"),
    ]
    .iter()
    .filter_map(|(o, k)| named(o, k))
    .collect();
    // GitHub's name, then GitLab's.
    let name = named("repository", "full_name").or_else(|| named("project", "path_with_namespace"));
    Event::Push {
        repository: (name.is_some() || !urls.is_empty()).then_some(Named { name, urls }),
        git_ref: v.get("ref").and_then(|r| r.as_str()).map(str::to_string),
        pushed: commit_id(v, "after").map(|commit| Pushed {
            commit,
            from: commit_id(v, "before"),
            forced: v.get("forced").and_then(|f| f.as_bool()),
            delivery: None,
        }),
    }
}

/// A git host's push, which always names its ref.
fn hosted_push(headers: &HeaderMap, body: &[u8]) -> Result<Event, String> {
    match push(&json_body(headers, body)?) {
        Event::Push { git_ref: None, .. } => Err("push without ref".into()),
        event => Ok(event),
    }
}

pub fn parse_event(provider: Provider, headers: &HeaderMap, body: &[u8]) -> Result<Event, String> {
    match provider {
        Provider::GitHub => match header(headers, "x-github-event").unwrap_or("") {
            "ping" => Ok(Event::Ping),
            "push" => hosted_push(headers, body),
            "" => Err("missing X-GitHub-Event header".into()),
            other => Ok(Event::Other(other.to_string())),
        },
        Provider::GitLab => match header(headers, "x-gitlab-event").unwrap_or("") {
            "Push Hook" => hosted_push(headers, body),
            "" => Err("missing X-Gitlab-Event header".into()),
            other => Ok(Event::Other(other.to_string())),
        },
        // A generic caller may forward a push payload (then its ref is checked), any JSON, or
        // nothing; a body that is not JSON is a mistake to report, not a trigger.
        Provider::Bearer => {
            if body.iter().all(u8::is_ascii_whitespace) {
                Ok(Event::Push {
                    git_ref: None,
                    pushed: None,
                    repository: None,
                })
            } else {
                Ok(push(&json_body(headers, body)?))
            }
        }
    }
}

/// What a push payload says of its repository: GitHub's `full_name` or GitLab's
/// `path_with_namespace`, and the URLs it gives for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub name: Option<String>,
    pub urls: Vec<String>,
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.name, self.urls.first()) {
            (Some(name), _) => f.write_str(name),
            (None, Some(url)) => f.write_str(url),
            (None, None) => f.write_str("an unnamed repository"),
        }
    }
}

/// The repository whose pushes count. Another repository that shares the secret (an
/// organisation's webhook, a GitLab group's, a fork) must not move what kpr awaits or pass for
/// a reset, so the match is exact: no suffix (GitLab's `team/policies` is not
/// `org/team/policies`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repository {
    /// From `--git-url`: a payload URL with its host and path, or a name equal to its path.
    Url {
        host_path: Option<String>,
        path: String,
    },
    /// Named with `--git-repository` (a mirror, a proxy, a renamed repository).
    Named(String),
}

impl Repository {
    pub fn from_settings(git_url: &str, named: Option<&str>) -> Self {
        match named {
            Some(name) => Repository::Named(normal_path(name)),
            None => {
                let host_path = host_path(git_url);
                let path = host_path.as_ref().map_or_else(
                    || normal_path(git_url),
                    |hp| hp.split_once('/').map_or(String::new(), |(_, p)| p.into()),
                );
                Repository::Url { host_path, path }
            }
        }
    }

    pub fn matches(&self, named: &Named) -> bool {
        let name = named.name.as_deref().map(normal_path);
        match self {
            Repository::Named(want) => name.as_ref() == Some(want),
            Repository::Url {
                host_path: hp,
                path,
            } => {
                name.as_ref() == Some(path)
                    || hp.as_ref().is_some_and(|hp| {
                        named.urls.iter().any(|u| host_path(u).as_ref() == Some(hp))
                    })
            }
        }
    }
}

impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repository::Named(name) => f.write_str(name),
            Repository::Url { path, .. } => f.write_str(path),
        }
    }
}

/// A repository path as hosts compare it: percent-escapes decoded, no slashes around it,
/// lower-case (GitHub and GitLab paths are not case-sensitive), without `.git`.
fn normal_path(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let decoded = super::source::percent_decode(path).unwrap_or_else(|| path.to_string());
    let lower = decoded.trim_matches('/').to_ascii_lowercase();
    lower
        .strip_suffix(".git")
        .unwrap_or(&lower)
        .trim_matches('/')
        .to_string()
}

/// `host/path` of a repository URL, without user, port or `.git`: `https://h:443/o/r.git`,
/// `ssh://git@h/o/r`, `git@h:o/r.git` all give `h/o/r`. `None` for a local path or `file://`.
fn host_path(url: &str) -> Option<String> {
    let (authority, path) = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/').unwrap_or((rest, "")),
        None => match url.split_once(':') {
            Some((host, p)) if !host.contains('/') && !host.is_empty() => (host, p),
            _ => return None,
        },
    };
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = host
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    (!host.is_empty()).then(|| format!("{host}/{}", normal_path(path)))
}

/// The most recent delivery ids, oldest forgotten first.
pub struct ReplayGuard {
    seen: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    /// True the first time an id is seen (and remembers it).
    pub fn first_time(&mut self, id: &str) -> bool {
        // Ids are provider UUIDs; the cap keeps an authenticated but odd caller from making the
        // set large.
        let id: String = id.chars().take(128).collect();
        if self.seen.contains(&id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(id.clone());
        self.order.push_back(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_pending_push_is_kept_as_one_line_and_read_back() {
        let a = "a".repeat(40);
        let b = "b".repeat(64);
        for pushed in [
            Pushed {
                commit: a.clone(),
                from: Some(b.clone()),
                forced: Some(true),
                delivery: Some("72d3162e-cc78-11e3-81ab-4c9367dc0958".into()),
            },
            Pushed {
                commit: b.clone(),
                from: None,
                forced: None,
                delivery: None,
            },
            Pushed {
                commit: a.clone(),
                from: Some(a.clone()),
                forced: Some(false),
                delivery: None,
            },
        ] {
            assert_eq!(Pushed::from_line(&pushed.to_line()), Some(pushed));
        }
        for bad in [
            "",
            "x - - -",
            &format!("{a} - - - extra"),
            &format!("{a} - maybe -"),
        ] {
            assert_eq!(Pushed::from_line(bad), None, "{bad:?}");
        }
    }

    fn github_sig(secret: &[u8], body: &[u8]) -> String {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    const SECRET: &[u8] = b"It's a Secret to Everybody";

    #[test]
    fn github_signature() {
        // The example from GitHub's documentation on validating webhook deliveries.
        let body = b"Hello, World!";
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(authenticate(&h, body, SECRET), Ok(Provider::GitHub));
        assert_eq!(
            authenticate(&h, b"Hello, World?", SECRET),
            Err(AuthError::Invalid)
        );
        assert_eq!(authenticate(&h, body, b"other"), Err(AuthError::Invalid));
        let sig = github_sig(SECRET, b"{}");
        assert_eq!(
            authenticate(&headers(&[("x-hub-signature-256", &sig)]), b"{}", SECRET),
            Ok(Provider::GitHub)
        );
        for bad in ["", "sha256=", "sha256=zz", "sha1=abcd", &sig[7..]] {
            assert_eq!(
                authenticate(&headers(&[("x-hub-signature-256", bad)]), b"{}", SECRET),
                Err(AuthError::Invalid),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn gitlab_token_and_bearer() {
        let ok = std::str::from_utf8(SECRET).unwrap();
        assert_eq!(
            authenticate(&headers(&[("x-gitlab-token", ok)]), b"", SECRET),
            Ok(Provider::GitLab)
        );
        assert_eq!(
            authenticate(&headers(&[("x-gitlab-token", "nope")]), b"", SECRET),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            authenticate(
                &headers(&[("x-gitlab-token", &ok[..ok.len() - 1])]),
                b"",
                SECRET
            ),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            authenticate(
                &headers(&[("authorization", &format!("Bearer {ok}"))]),
                b"",
                SECRET
            ),
            Ok(Provider::Bearer)
        );
        assert_eq!(
            authenticate(
                &headers(&[("authorization", &format!("bearer {ok}"))]),
                b"",
                SECRET
            ),
            Ok(Provider::Bearer)
        );
        for bad in ["Bearer nope", "Basic Zm9vOmJhcg==", "Bearer", ""] {
            assert_eq!(
                authenticate(&headers(&[("authorization", bad)]), b"", SECRET),
                Err(AuthError::Invalid),
                "{bad:?}"
            );
        }
        assert_eq!(
            authenticate(&HeaderMap::new(), b"{}", SECRET),
            Err(AuthError::Missing)
        );
        assert_eq!(
            authenticate(&headers(&[("x-github-event", "push")]), b"{}", SECRET),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn constant_time_equality_is_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(ct_eq(b"", b""));
    }

    /// A push of another repository sharing the secret (an organisation's webhook, a fork,
    /// a GitLab group's project of the same name) is told apart, exactly; ours is known by its
    /// name or any of its URLs, whatever the form of `--git-url`.
    #[test]
    fn a_push_names_its_repository() {
        let named = |name: &str| Named {
            name: Some(name.into()),
            urls: Vec::new(),
        };
        for url in [
            "https://github.com/Acme/Policies.GIT",
            "https://github.com:443/acme/policies/",
            "ssh://git@github.com:22/acme/policies.git",
            "git@github.com:acme/policies.git",
            "https://github.com/acme/%70olicies.git",
        ] {
            let ours = Repository::from_settings(url, None);
            assert!(ours.matches(&named("acme/policies")), "{url}: {ours:?}");
            assert!(ours.matches(&named("ACME/Policies")), "{url}");
            for other in ["someone/policies", "acme/policies-fork", "policies", ""] {
                assert!(!ours.matches(&named(other)), "{url}: {other}");
            }
        }
        let gitlab = Repository::from_settings("https://gitlab.com/org/team/policies.git", None);
        assert!(gitlab.matches(&named("org/team/policies")));
        for other in ["team/policies", "policies", "org/team"] {
            assert!(!gitlab.matches(&named(other)), "{other}");
        }
        // By URL: a payload's ssh URL for an ssh --git-url.
        let by_url = Named {
            name: Some("renamed/elsewhere".into()),
            urls: vec!["git@gitlab.com:org/team/policies.git".into()],
        };
        assert!(gitlab.matches(&by_url));
        // A mirror or a renamed repository is named.
        let mirror = Repository::from_settings(
            "https://git-cache.internal/github/acme/policies.git",
            Some("acme/policies"),
        );
        assert!(mirror.matches(&named("Acme/Policies")));
        assert!(!mirror.matches(&named("github/acme/policies")));
        let gh = headers(&[("x-github-event", "push")]);
        let body = br#"{"ref":"refs/heads/main","repository":{"full_name":"acme/policies","clone_url":"https://github.com/acme/policies.git"}}"#;
        assert!(matches!(
            parse_event(Provider::GitHub, &gh, body),
            Ok(Event::Push { repository: Some(r), .. })
                if r.name.as_deref() == Some("acme/policies") && r.urls.len() == 1
        ));
        let gl = headers(&[("x-gitlab-event", "Push Hook")]);
        let body =
            br#"{"ref":"refs/heads/main","project":{"path_with_namespace":"group/sub/policies"}}"#;
        assert!(matches!(
            parse_event(Provider::GitLab, &gl, body),
            Ok(Event::Push { repository: Some(r), .. })
                if r.name.as_deref() == Some("group/sub/policies")
        ));
    }

    #[test]
    fn events_and_refs() {
        const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
        let push = format!(
            r#"{{"ref":"refs/heads/main","after":"{}"}}"#,
            SHA.to_uppercase()
        );
        let push = push.as_bytes();
        let main = Ok(Event::Push {
            git_ref: Some("refs/heads/main".into()),
            pushed: Some(Pushed {
                commit: SHA.into(),
                from: None,
                forced: None,
                delivery: None,
            }),
            repository: None,
        });
        let gh = |event: &str| headers(&[("x-github-event", event)]);
        assert_eq!(
            parse_event(Provider::GitHub, &gh("push"), push),
            main.clone()
        );
        assert_eq!(
            parse_event(Provider::GitHub, &gh("ping"), b"{}"),
            Ok(Event::Ping)
        );
        assert_eq!(
            parse_event(Provider::GitHub, &gh("issues"), b"{}"),
            Ok(Event::Other("issues".into()))
        );
        assert!(parse_event(Provider::GitHub, &gh("push"), b"not json").is_err());
        let curl = headers(&[
            ("x-github-event", "push"),
            ("content-type", "application/x-www-form-urlencoded"),
        ]);
        assert_eq!(parse_event(Provider::GitHub, &curl, push), main.clone());
        // Raw JSON labelled as a form: a `&payload=` in a commit message is text, not a field
        // that replaces the push (a push to `dev` must not pass for one to `main`).
        let smuggled = br#"{"ref":"refs/heads/dev","commits":[{"message":"x&payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D&y"}]}"#;
        assert_eq!(
            parse_event(Provider::GitHub, &curl, smuggled),
            Ok(Event::Push {
                git_ref: Some("refs/heads/dev".into()),
                pushed: None,
                repository: None,
            })
        );
        let form = headers(&[
            ("x-github-event", "push"),
            ("content-type", "Application/X-WWW-Form-Urlencoded"),
        ]);
        assert_eq!(
            parse_event(
                Provider::GitHub,
                &form,
                b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fdev%22%7D"
            ),
            Ok(Event::Push {
                git_ref: Some("refs/heads/dev".into()),
                pushed: None,
                repository: None,
            })
        );
        let gl = headers(&[("x-gitlab-event", "Push Hook")]);
        assert_eq!(parse_event(Provider::GitLab, &gl, push), main.clone());
        assert_eq!(
            parse_event(
                Provider::GitLab,
                &headers(&[("x-gitlab-event", "Tag Push Hook")]),
                push
            ),
            Ok(Event::Other("Tag Push Hook".into()))
        );
        assert_eq!(
            parse_event(Provider::Bearer, &HeaderMap::new(), b""),
            Ok(Event::Push {
                git_ref: None,
                pushed: None,
                repository: None,
            })
        );
        assert_eq!(
            parse_event(Provider::Bearer, &HeaderMap::new(), push),
            main.clone()
        );
        // Nothing to wait for: a deleted branch (all zeros), a short or non-hex `after`.
        for after in [
            "0000000000000000000000000000000000000000",
            "0123456",
            "0123456789abcdef0123456789abcdef0123456z",
        ] {
            let body = format!(r#"{{"ref":"refs/heads/main","after":"{after}"}}"#);
            assert_eq!(
                parse_event(Provider::GitHub, &gh("push"), body.as_bytes()),
                Ok(Event::Push {
                    git_ref: Some("refs/heads/main".into()),
                    pushed: None,
                    repository: None,
                }),
                "{after}"
            );
        }
        let sha256 = "ab".repeat(32);
        let body = format!(r#"{{"ref":"refs/heads/main","after":"{sha256}"}}"#);
        assert!(matches!(
            parse_event(Provider::GitLab, &gl, body.as_bytes()),
            Ok(Event::Push { pushed: Some(p), .. }) if p.commit == sha256
        ));
        // The head the push replaced; a created branch replaced nothing.
        let before = "fe".repeat(20);
        let body = format!(
            r#"{{"ref":"refs/heads/main","before":"{}","after":"{SHA}","forced":true}}"#,
            before.to_uppercase()
        );
        assert_eq!(
            parse_event(Provider::GitHub, &gh("push"), body.as_bytes()),
            Ok(Event::Push {
                git_ref: Some("refs/heads/main".into()),
                pushed: Some(Pushed {
                    commit: SHA.into(),
                    from: Some(before),
                    forced: Some(true),
                    delivery: None,
                }),
                repository: None,
            })
        );
        let body = format!(
            r#"{{"ref":"refs/heads/main","before":"{}","after":"{SHA}"}}"#,
            "0".repeat(40)
        );
        assert!(matches!(
            parse_event(Provider::GitLab, &gl, body.as_bytes()),
            Ok(Event::Push {
                pushed: Some(Pushed { from: None, .. }),
                ..
            })
        ));
    }

    #[test]
    fn replay_guard_is_bounded() {
        let mut g = ReplayGuard::new(2);
        assert!(g.first_time("a"));
        assert!(!g.first_time("a"));
        assert!(g.first_time("b"));
        assert!(g.first_time("c"));
        assert!(g.first_time("a"), "oldest id forgotten");
        assert!(!g.first_time("c"));
        assert_eq!(g.order.len(), 2);
        assert_eq!(g.seen.len(), 2);
    }

    #[test]
    fn delivery_ids() {
        assert_eq!(
            delivery_id(&headers(&[("x-github-delivery", "d-1")])),
            Some("d-1".into())
        );
        assert_eq!(
            delivery_id(&headers(&[("x-gitlab-event-uuid", "u-1")])),
            Some("u-1".into())
        );
        assert_eq!(
            delivery_id(&headers(&[
                ("x-gitlab-event-uuid", "u-1"),
                ("idempotency-key", "k-1")
            ])),
            Some("k-1".into())
        );
        assert_eq!(delivery_id(&HeaderMap::new()), None);
    }
}
