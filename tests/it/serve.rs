//! `kpr serve` end to end: the real binary as a child process, a real kinesis-mock, a local bare
//! git repository (`file://`) and plain HTTP/1.1 over std sockets.
//!
//! Every wait is a bounded poll. "Nothing happened" is asserted with counters that change
//! synchronously with the request (`kpr_webhooks_total{result="accepted"}`, run counts) plus
//! `/status` saying nothing is running or queued.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::common::{self, Emulator, manifest, read_policy, same_grant, unique};

const SECRET: &str = "serve-test-secret";

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

// ------------------------------------------------------------------ HTTP

struct Response {
    status: u16,
    body: String,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.body)
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&body[..eol]).unwrap().trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[eol + 4 + size..];
    }
}

/// One request on a fresh connection (`Connection: close`), so the response ends at EOF.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write request head");
    // The server may answer (413) and close before reading a large body; the answer is what
    // counts, so a failed body write is not an error here.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the response arrived (unread request body) still leaves the answer.
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{method} {path}: read failed: {e}"),
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn sign(body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn push_body(branch: &str) -> Vec<u8> {
    serde_json::json!({"ref": format!("refs/heads/{branch}"), "after": "0"})
        .to_string()
        .into_bytes()
}

/// Sum of every sample of `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, lbl) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| lbl.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

// ------------------------------------------------------------------ git

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=kpr test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare "remote" plus a clone to commit from.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        git(
            dir.path(),
            &["init", "-q", "--bare", "-b", "main", "origin.git"],
        );
        git(dir.path(), &["init", "-q", "-b", "main", "work"]);
        Repo { dir }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.path().join("origin.git").display())
    }

    fn write(&self, name: &str, text: &str) {
        let p = self.work().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.work().join(name)).unwrap();
    }

    /// `kpr serve`'s arguments for this repository's `main`, then `extra`.
    fn source_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = owned(&["--git-url", &self.url(), "--git-branch", "main"]);
        args.extend(owned(extra));
        args
    }

    /// Commits everything and pushes it to `branch`; returns the commit.
    fn push(&self, branch: &str, message: &str) -> String {
        self.commit(message);
        self.push_head(branch)
    }

    /// Commits everything, without pushing; returns the commit.
    fn commit(&self, message: &str) -> String {
        git(&self.work(), &["add", "-A"]);
        git(
            &self.work(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(&self.work(), &["rev-parse", "HEAD"])
    }

    /// Amends the last commit with `name` written as `text` and force-pushes it as main.
    fn amend(&self, name: &str, text: &str) -> String {
        git(&self.work(), &["reset", "-q", "--soft", "HEAD~1"]);
        self.write(name, text);
        self.force_main("amended")
    }

    /// A commit on `base` with `name` written as `text`, force-pushed as main: the branch
    /// reset to `base` and moved on from there.
    fn commit_on(&self, base: &str, name: &str, text: &str, message: &str) -> String {
        git(&self.work(), &["reset", "-q", "--hard", base]);
        self.write(name, text);
        self.force_main(message)
    }

    /// Commits everything and force-pushes it as main; returns the commit.
    fn force_main(&self, message: &str) -> String {
        let commit = self.commit(message);
        self.force_main_as_is();
        commit
    }

    /// Force-pushes the work tree's commit as main.
    fn force_main_as_is(&self) {
        git(
            &self.work(),
            &["push", "-q", "--force", &self.url(), "HEAD:refs/heads/main"],
        );
    }

    /// Pushes the last commit to `branch`; returns it.
    fn push_head(&self, branch: &str) -> String {
        git(
            &self.work(),
            &[
                "push",
                "-q",
                &self.url(),
                &format!("HEAD:refs/heads/{branch}"),
            ],
        );
        git(&self.work(), &["rev-parse", "HEAD"])
    }
}

/// `kpr serve` on `repo`'s main with --prune, no scheduled scan within a test, and `extra`
/// (a retry delay, say); returns once `first` is applied.
fn serve_pruning(emu: &Emulator, repo: &Repo, extra: &[&str], first: &str) -> Serve {
    let mut args = vec!["--interval", "1h", "--prune"];
    args.extend_from_slice(extra);
    let serve = Serve::start(
        emu,
        Options {
            args: repo.source_args(&args),
            ..Options::default()
        },
    );
    serve.applied(first);
    serve
}

/// Pruning, with no schedule, retry or settle time that could act within a test: every run
/// comes from the test.
const PRUNING_NO_TIMERS: [&str; 7] = [
    "--interval",
    "1h",
    "--prune",
    "--retry-delay",
    "1h",
    "--reset-settle",
    "1h",
];

/// `kpr serve` on `repo` with `args`, keeping its working copy in `workdir` for the next
/// start; returns at once (no wait for a first run).
fn restartable(emu: &Emulator, repo: &Repo, workdir: &Path, args: &[&str]) -> Serve {
    Serve::start(
        emu,
        Options {
            args: repo.source_args(args),
            workdir: Some(workdir),
            wait_ready: false,
            ..Options::default()
        },
    )
}

/// A read grant to `role/one` on `arn`.
fn role_one(arn: &str) -> serde_json::Value {
    read_policy(arn, "arn:aws:iam::111122223333:role/one")
}

/// Streams of these names (made unique), and a repository whose main grants on each in turn:
/// `a.yaml` in the first commit, `b.yaml` added in the second, and so on.
fn granted_in_turn<const N: usize>(
    emu: &Emulator,
    names: [&str; N],
) -> ([String; N], Repo, [String; N]) {
    let arns = names.map(|n| emu.create_stream(&unique(n)));
    let repo = Repo::new();
    let commits = std::array::from_fn(|i| {
        let file = format!("{}.yaml", (b'a' + i as u8) as char);
        repo.write(&file, &manifest(&arns[i], &role_one(&arns[i])));
        repo.push("main", &file)
    });
    (arns, repo, commits)
}

/// Makes the origin serve `commit` as main's head: a replica behind (or a force-push).
fn serve_at(repo: &Repo, commit: &str) {
    git(
        &repo.dir.path().join("origin.git"),
        &["update-ref", "refs/heads/main", commit],
    );
}

/// A signed GitHub webhook for a push of main from `before` to `after`, each its own event
/// (delivery id), which it returns.
fn push_hook(serve: &Serve, before: &str, after: &str) -> String {
    hook(serve, before, after, false)
}

/// A push from `before` to `after` that the origin serves at once, its webhook delivered:
/// returns once `after` is applied.
fn pushed_and_applied(serve: &Serve, repo: &Repo, before: &str, after: &str) {
    serve_at(repo, after);
    push_hook(serve, before, after);
    serve.applied(after);
}

/// The same for a forced push (an amend, a rebase).
fn forced_hook(serve: &Serve, before: &str, after: &str) -> String {
    hook(serve, before, after, true)
}

fn hook(serve: &Serve, before: &str, after: &str, forced: bool) -> String {
    static DELIVERIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = DELIVERIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let delivery = format!("hook-{n}");
    let body = serde_json::json!({"ref": "refs/heads/main", "before": before, "after": after,
        "forced": forced});
    let r = serve.github_push_body(body.to_string().as_bytes(), &delivery);
    assert_eq!(r.status, 202, "{r:?}");
    delivery
}

/// The webhook of a push delivered as `delivery`: GitHub's redeliveries keep the event's id.
fn delivered(serve: &Serve, before: &str, after: &str, delivery: &str) -> Response {
    let body = serde_json::json!({"ref": "refs/heads/main", "before": before, "after": after});
    serve.github_push_body(body.to_string().as_bytes(), delivery)
}

/// Owned arguments for [`Options::args`].
fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A directory source whose schedule is an hour away and whose retries come within a second:
/// any run after the first is a retry.
fn retrying(dir: &common::Manifests) -> Vec<String> {
    owned(&[
        "--dir",
        &dir.arg(),
        "--interval",
        "1h",
        "--retry-delay",
        "300ms",
    ])
}

// ------------------------------------------------------------------ the service

struct Serve {
    child: RefCell<Option<Child>>,
    port: u16,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

struct Options<'a> {
    args: Vec<String>,
    env: Vec<(&'a str, String)>,
    secret: bool,
    wait_ready: bool,
    /// `--workdir`; a fresh one when `None`.
    workdir: Option<&'a Path>,
    /// The limit on open files, soft and hard (`ulimit -n`).
    open_files: Option<u32>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            args: Vec::new(),
            env: Vec::new(),
            secret: true,
            wait_ready: true,
            workdir: None,
            open_files: None,
        }
    }
}

impl Serve {
    fn git(emu: &Emulator, repo: &Repo, extra: &[&str]) -> Self {
        Self::with_args(emu, repo.source_args(&[]), extra)
    }

    fn dir(emu: &Emulator, dir: &common::Manifests, extra: &[&str]) -> Self {
        Self::with_args(emu, vec!["--dir".to_string(), dir.arg()], extra)
    }

    fn with_args(emu: &Emulator, mut args: Vec<String>, extra: &[&str]) -> Self {
        args.extend(owned(extra));
        Self::start(
            emu,
            Options {
                args,
                ..Options::default()
            },
        )
    }

    fn start(emu: &Emulator, opts: Options) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = tmp.path().join("serve.log");
        // A private emulator account comes with the command (its access key id).
        let mut cmd = emu.kpr_cmd();
        cmd.env_remove("KPR_WEBHOOK_SECRET")
            .env_remove("KPR_GIT_TOKEN")
            .args(["serve", "--log-format", "json", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--workdir")
            .arg(
                opts.workdir
                    .map_or_else(|| tmp.path().join("work"), Path::to_path_buf),
            )
            .args(&opts.args);
        if let Some(n) = opts.open_files {
            let mut limited = Command::new("sh");
            limited
                .arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(cmd.get_program())
                .args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => limited.env(k, v),
                    None => limited.env_remove(k),
                };
            }
            cmd = limited;
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if opts.secret {
            let secret = tmp.path().join("secret");
            std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
            cmd.arg("--webhook-secret-file").arg(secret);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let serve = Serve {
            child: RefCell::new(Some(cmd.spawn().expect("spawn kpr serve"))),
            port,
            log,
            _tmp: tmp,
        };
        // Listening comes before the first reconcile; health first, then (maybe) readiness.
        serve.poll("/healthz answering", Duration::from_secs(20), |s| {
            TcpStream::connect(("127.0.0.1", s.port)).ok().map(|_| ())
        });
        if opts.wait_ready {
            serve.poll("/readyz to answer 200", Duration::from_secs(30), |s| {
                (s.get("/readyz").status == 200).then_some(())
            });
        }
        serve
    }

    /// Like [`wait_for`], failing early (with the log) if the service died.
    fn poll<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = probe(self) {
                return v;
            }
            let exited = self
                .child
                .borrow_mut()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "kpr serve exited ({status}) while waiting for {what}:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Response {
        http(self.port, "GET", path, &[], b"")
    }

    fn webhook(&self, headers: &[(&str, &str)], body: &[u8]) -> Response {
        http(self.port, "POST", "/webhook", headers, body)
    }

    /// A correctly signed GitHub push to `branch`.
    /// A run, asked for by a webhook with no payload.
    fn trigger(&self) {
        let r = self.webhook(&[("Authorization", &format!("Bearer {SECRET}"))], b"");
        assert_eq!(r.status, 202, "{r:?}");
    }

    /// Waits for a run after the `runs` counted before to end.
    fn run_after(&self, runs: u64, what: &str) -> serde_json::Value {
        self.status_when(what, Duration::from_secs(20), |st| {
            st["runs"].as_u64() > Some(runs) && st["running"] == false
        })
    }

    /// Waits for a run refused for fetching a head a reset replaced.
    fn refused_as_replaced(&self, what: &str) -> serde_json::Value {
        self.status_when(what, Duration::from_secs(20), |st| {
            st["last_run"]["result"] == "fetch_failed"
                && st["last_run"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("what a reset replaced"))
        })
    }

    fn github_push(&self, branch: &str, delivery: &str) -> Response {
        self.github_push_body(&push_body(branch), delivery)
    }

    /// A correctly signed GitHub push event with this payload.
    fn github_push_body(&self, body: &[u8], delivery: &str) -> Response {
        self.webhook(
            &[
                ("Content-Type", "application/json"),
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", &sign(body)),
            ],
            body,
        )
    }

    fn metrics(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200);
        r.body
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics(), name, labels)
    }

    fn status(&self) -> serde_json::Value {
        let r = self.get("/status");
        assert_eq!(r.status, 200, "{r:?}");
        serde_json::from_str(&r.body).unwrap()
    }

    /// Polls `/status` until `ready` holds for it; returns that status.
    fn status_when(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.poll(what, timeout, |s| Some(s.status()).filter(|st| ready(st)))
    }

    fn runs(&self) -> u64 {
        self.status()["runs"].as_u64().unwrap()
    }

    /// Waits until no run is in flight or queued; returns the status.
    fn idle(&self) -> serde_json::Value {
        self.status_when("the service to be idle", Duration::from_secs(30), |st| {
            st["running"] == false && st["pending"].is_null()
        })
    }

    /// Waits until no run is in flight and `commit`, pushed, is awaited; returns the status.
    fn awaits(&self, commit: &str, what: &str) -> serde_json::Value {
        self.status_when(what, Duration::from_secs(20), |st| {
            st["awaited_commit"] == commit && st["running"] == false
        })
    }

    /// Waits until a completed run has applied `revision`.
    fn applied(&self, revision: &str) -> serde_json::Value {
        self.status_when(
            &format!("revision {revision} to be applied"),
            Duration::from_secs(30),
            |st| st["last_good_revision"] == revision && st["running"] == false,
        )
    }

    /// SIGTERM, then the exit code must be 0 within the deadline. Returns the log.
    fn stop(self) -> String {
        let mut child = self.child.borrow_mut().take().unwrap();
        let started = Instant::now();
        assert!(
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let deadline = started + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "kpr serve did not exit within 15 s of SIGTERM:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            status.code(),
            Some(0),
            "exit status {status}:\n{}",
            self.logs()
        );
        let logs = self.logs();
        assert!(logs.contains("kpr serve stopped"), "{logs}");
        logs
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.get_mut().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The first line of `logs` that holds `needle`; the test fails, with the logs, when none
/// does.
fn log_line<'a>(logs: &'a str, needle: &str) -> &'a str {
    logs.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no log line with {needle:?}:\n{logs}"))
}

fn live(emu: &Emulator, arn: &str) -> Option<String> {
    emu.get_policy(arn)
}

// ------------------------------------------------------------------ tests

#[test]
fn signed_push_is_applied_and_bad_requests_change_nothing() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("serve-push"));
    let v1 = read_policy(&arn, "arn:aws:iam::111122223333:role/one");
    let v2 = read_policy(&arn, "arn:aws:iam::111122223333:role/two");
    let repo = Repo::new();
    repo.write("streams/s.yaml", &manifest(&arn, &v1));
    let first = repo.push("main", "one");
    // A small body limit, to test it without sending GitHub's 25 MB (the default).
    let serve = Serve::git(
        &emu,
        &repo,
        &["--interval", "1h", "--webhook-max-body", "1048576"],
    );
    assert_eq!(serve.get("/healthz").status, 200);
    let st = serve.applied(&first);
    assert_eq!(st["last_run"]["trigger"], "startup");
    assert!(same_grant(&live(&emu, &arn).unwrap(), &v1));

    repo.write("streams/s.yaml", &manifest(&arn, &v2));
    let second = repo.push("main", "two");
    let sent = Instant::now();
    let r = serve.github_push("main", "delivery-1");
    assert_eq!(r.status, 202, "{r:?}");
    let st = serve.applied(&second);
    let latency = sent.elapsed();
    eprintln!("webhook -> applied: {latency:?}");
    assert_eq!(st["last_run"]["trigger"], "webhook");
    assert_eq!(st["last_run"]["scope"], "incremental");
    assert_eq!(st["last_run"]["revision"], second);
    assert_eq!(st["last_run"]["summary"]["update"], 1);
    assert_eq!(st["last_run"]["resources"][0]["outcome"], "applied");
    assert!(same_grant(&live(&emu, &arn).unwrap(), &v2));

    // Now everything that must not trigger a run.
    let runs = serve.runs();
    let accepted = serve.metric("kpr_webhooks_total", &[("result", "accepted")]);
    let body = push_body("main");
    let bad = serve.webhook(
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "delivery-bad"),
            ("X-Hub-Signature-256", &sign(b"some other body")),
        ],
        &body,
    );
    assert_eq!(bad.status, 401, "{bad:?}");
    let unsigned = serve.webhook(&[("X-GitHub-Event", "push")], &body);
    assert_eq!(unsigned.status, 401, "{unsigned:?}");
    let wrong_token = serve.webhook(
        &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "guess")],
        &body,
    );
    assert_eq!(wrong_token.status, 401, "{wrong_token:?}");
    // Who probes the webhook can be traced: each refusal's log names the peer.
    let refusals = serve
        .logs()
        .lines()
        .filter(|l| l.contains("\"status\":401") && l.contains("\"peer\":\"127.0.0.1:"))
        .count();
    assert_eq!(refusals, 3, "{}", serve.logs());
    let other_branch = serve.github_push("feature", "delivery-2");
    assert_eq!(other_branch.status, 200, "{other_branch:?}");
    assert!(other_branch.body.contains("ignored"), "{other_branch:?}");
    // Signed with the same secret (an organisation's webhook), of another repository.
    let fork = serde_json::json!({"ref": "refs/heads/main", "after": "ab".repeat(20),
        "repository": {"full_name": "someone/kinesis-policies-fork"}});
    let fork = serve.github_push_body(fork.to_string().as_bytes(), "delivery-fork");
    assert!(
        fork.status == 200 && fork.body.contains("ignored"),
        "{fork:?}"
    );
    assert!(
        serve
            .logs()
            .contains("a push of another repository ignored"),
        "a repository renamed or mirrored would lose every push: say so"
    );
    let big = vec![b' '; 1024 * 1024 + 1];
    let too_large = serve.webhook(
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(&big)),
        ],
        &big,
    );
    assert_eq!(too_large.status, 413, "{too_large:?}");
    assert!(
        too_large.body.contains("--webhook-max-body"),
        "{too_large:?}"
    );
    let replay = serve.github_push("main", "delivery-1");
    assert_eq!(replay.status, 200, "{replay:?}");
    assert!(replay.body.contains("duplicate"), "{replay:?}");
    let ping_body = br#"{"zen":"Keep it logically awesome."}"#;
    let ping = serve.webhook(
        &[
            ("X-GitHub-Event", "ping"),
            ("X-GitHub-Delivery", "delivery-ping"),
            ("X-Hub-Signature-256", &sign(ping_body)),
        ],
        ping_body,
    );
    assert_eq!(ping.status, 200, "{ping:?}");
    let st = serve.idle();
    assert_eq!(
        st["runs"].as_u64().unwrap(),
        runs,
        "a rejected webhook started a run"
    );
    assert_eq!(
        serve.metric("kpr_webhooks_total", &[("result", "accepted")]),
        accepted
    );
    assert_eq!(
        serve.metric("kpr_webhooks_total", &[("result", "unauthorized")]),
        3.0
    );
    assert_eq!(
        serve.metric("kpr_webhooks_total", &[("result", "duplicate")]),
        1.0
    );
    assert_eq!(
        serve.metric("kpr_webhooks_total", &[("result", "too_large")]),
        1.0
    );
    assert!(same_grant(&live(&emu, &arn).unwrap(), &v2));
    let metrics = serve.metrics();
    assert!(
        metrics.contains(&format!(
            "kpr_applied_revision_info{{revision=\"{second}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(metric(&metrics, "kpr_last_success_timestamp_seconds", &[]) > 0.0);
    assert!(metric(&metrics, "kpr_reconcile_duration_seconds_count", &[]) >= 2.0);
    let logs = serve.logs();
    assert!(!logs.contains(SECRET), "the secret leaked into the log");
    // Inside the reconcile span (the revision), with what changed, why and from which line;
    // and said before the write too, so a process killed in between leaves the change named.
    let event_at = |event: &str| {
        logs.lines().position(|l| {
            l.contains(event)
                && l.contains(&arn)
                && l.contains(&second)
                && l.contains("\"reason\":\"live policy differs\"")
                && l.contains("\"source\":\"streams/s.yaml:1\"")
        })
    };
    let applied = event_at("\"change applied\"");
    let starting = event_at("\"change starting\"");
    assert!(
        starting.is_some() && starting < applied,
        "no change events inside the reconcile span, before and after the write:\n{logs}"
    );
    // What the write replaces, kept in the log: the access summary alone misses a drift that
    // keeps the principals (a condition loosened).
    let starting = logs.lines().nth(starting.unwrap()).unwrap();
    assert!(
        starting.contains(r#""before":"{\"Statement\""#),
        "{starting}"
    );
    serve.stop();
}

/// Counters that alerts watch are exported at 0 from the start: a series that first appears
/// at 1 has no `increase()`, and the first invalid revision after a start would alert no one.
#[test]
fn alerted_counters_are_exported_at_zero_from_the_start() {
    let emu = common::kinesis_mock();
    let (_, dir) = emu.stream_with_manifest("serve-zero");
    let serve = Serve::dir(&emu, &dir, &["--interval", "1h"]);
    let metrics = serve.metrics();
    for (name, labels) in [
        (
            "kpr_reconcile_runs_total",
            &[("trigger", "webhook"), ("result", "invalid")][..],
        ),
        (
            "kpr_reconcile_runs_total",
            &[("trigger", "schedule"), ("result", "fetch_failed")],
        ),
        ("kpr_webhooks_total", &[("result", "unauthorized")]),
        (
            "kpr_changes_total",
            &[("action", "delete"), ("outcome", "failed")],
        ),
        (
            "kpr_changes_total",
            &[("action", "update"), ("outcome", "unchanged")],
        ),
        ("kpr_http_connections_refused_total", &[]),
    ] {
        let series = metrics.lines().find(|l| {
            l.split(['{', ' ']).next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        });
        assert!(
            series.is_some_and(|l| l.ends_with(" 0")),
            "{name} {labels:?}: {series:?}\n{metrics}"
        );
    }
    serve.stop();
}

/// Senders that open a signed delivery and never send its body hold nothing while they wait:
/// other deliveries go through, and theirs end with 408. A malformed signature or an oversize
/// Content-Length is answered before any body is read.
#[test]
fn stalled_webhook_senders_block_nothing() {
    let emu = common::kinesis_mock();
    let (_, dir) = emu.stream_with_manifest("serve-stall");
    let serve = Serve::dir(&emu, &dir, &["--interval", "1h"]);
    let wrong = format!("sha256={}", "0".repeat(64));
    let stalled: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", serve.port)).unwrap();
            s.write_all(
                format!(
                    "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\
                     X-GitHub-Event: push\r\nX-Hub-Signature-256: {wrong}\r\n\r\n"
                )
                .as_bytes(),
            )
            .unwrap();
            s
        })
        .collect();
    let bearer = serve.webhook(&[("Authorization", &format!("Bearer {SECRET}"))], b"");
    assert_eq!(bearer.status, 202, "{bearer:?}");
    let signed = serve.github_push("main", "stalled-1");
    assert_eq!(signed.status, 202, "{signed:?}");
    let malformed = serve.webhook(
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", "garbage"),
        ],
        b"{}",
    );
    assert_eq!(malformed.status, 401, "{malformed:?}");
    // The declared length alone says it is too large: no wait for the bytes.
    let mut big = TcpStream::connect(("127.0.0.1", serve.port)).unwrap();
    big.write_all(
        format!(
            "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\
             Authorization: Bearer {SECRET}\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = [0u8; 12];
    big.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&head));
    // A body that is not JSON is a mistake, not a trigger.
    let not_json = serve.webhook(&[("Authorization", &format!("Bearer {SECRET}"))], b"{\"ref");
    assert_eq!(not_json.status, 400, "{not_json:?}");
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 408", "{}", String::from_utf8_lossy(&head));
    }
    serve.stop();
}

/// Clients that open connections and send nothing cannot spend the descriptors runs need:
/// past a quarter of the open-file limit new connections are closed as they come, and a
/// connection that sends no request head within 10 s is closed. One address cannot take them
/// all, nor can two: the last slots go to addresses holding few, and a probe from another
/// still gets an answer.
#[test]
fn idle_connections_are_capped_and_closed() {
    let emu = common::kinesis_mock_private();
    let ([_, b], repo, [first, second]) = granted_in_turn(&emu, ["ic-a", "ic-b"]);
    serve_at(&repo, &first);
    let serve = Serve::start(
        &emu,
        Options {
            // Scheduled runs go on while every connection the service takes is held.
            args: repo.source_args(&["--interval", "1s"]),
            open_files: Some(64),
            ..Options::default()
        },
    );
    serve.applied(&first);
    serve_at(&repo, &second);
    let held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", serve.port)).unwrap())
        .collect();
    wait_for(
        "the connections past 8 from one address to be closed",
        Duration::from_secs(5),
        || (held.iter().filter(|c| is_closed(c)).count() >= 32).then_some(()),
    );
    // A second address takes the rest of its share, but not the last two slots of 16.
    let second_holder: Vec<TcpStream> = (0..8)
        .map(|_| connect_from("127.0.0.3", serve.port))
        .collect();
    wait_for(
        "the second address's connections past the reserve to be closed",
        Duration::from_secs(5),
        || (second_holder.iter().filter(|c| is_closed(c)).count() >= 2).then_some(()),
    );
    assert_eq!(
        healthz_from("127.0.0.2", serve.port),
        "HTTP/1.1 200",
        "a probe from another address while one holds connections"
    );
    wait_for("the held ones to time out", Duration::from_secs(30), || {
        held.iter().all(is_closed).then_some(())
    });
    let st = serve.applied(&second);
    assert!(live(&emu, &b).is_some(), "{st:#}");
    let logs = serve.logs();
    assert!(
        logs.contains("too many HTTP connections open") && !logs.contains("Too many open files"),
        "{logs}"
    );
    assert_eq!(
        serve.metric("kpr_reconcile_runs_total", &[("result", "fetch_failed")]),
        0.0
    );
    serve.stop();
}

/// `GET /healthz` sent from `source` (a loopback address: all of 127/8 is local): the status
/// line's start, or what came instead.
fn healthz_from(source: &str, port: u16) -> String {
    let mut conn = connect_from(source, port);
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let _ = conn.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned()
}

/// A connection to kpr on loopback from `source` (std has no bind before connect).
fn connect_from(source: &str, port: u16) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let conn = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        let conn = conn.into_std().unwrap();
        conn.set_nonblocking(false).unwrap();
        conn
    })
}

/// Whether the server closed `c`: a read finds the end of the stream (or a reset) rather than
/// nothing yet.
fn is_closed(c: &TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    match (&*c).read_to_end(&mut Vec::new()) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn a_burst_of_webhooks_coalesces_into_at_most_two_runs() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("serve-burst"));
    let v1 = read_policy(&arn, "arn:aws:iam::111122223333:role/one");
    let v2 = read_policy(&arn, "arn:aws:iam::111122223333:role/two");
    let repo = Repo::new();
    repo.write("s.yaml", &manifest(&arn, &v1));
    let first = repo.push("main", "one");
    let serve = Serve::git(&emu, &repo, &["--interval", "1h"]);
    serve.applied(&first);
    repo.write("s.yaml", &manifest(&arn, &v2));
    let second = repo.push("main", "two");
    let runs = serve.runs();

    // All connections are open before any request is sent, so the burst really is one.
    let n = 100;
    let barrier = Arc::new(Barrier::new(n));
    let port = serve.port;
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let body = push_body("main");
                let sig = sign(&body);
                let delivery = format!("burst-{i}");
                barrier.wait();
                http(
                    port,
                    "POST",
                    "/webhook",
                    &[
                        ("X-GitHub-Event", "push"),
                        ("X-GitHub-Delivery", &delivery),
                        ("X-Hub-Signature-256", &sig),
                    ],
                    &body,
                )
                .status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 202);
    }
    let st = serve.idle();
    let burst_runs = st["runs"].as_u64().unwrap() - runs;
    eprintln!("100 webhooks -> {burst_runs} run(s)");
    assert!((1..=2).contains(&burst_runs), "{burst_runs} runs");
    assert_eq!(st["last_good_revision"], second);
    assert!(same_grant(&live(&emu, &arn).unwrap(), &v2));
    serve.stop();
}

#[test]
fn invalid_manifests_are_never_applied_and_the_last_good_revision_stays() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("serve-invalid"));
    let v1 = read_policy(&arn, "arn:aws:iam::111122223333:role/one");
    let v2 = read_policy(&arn, "arn:aws:iam::111122223333:role/two");
    let repo = Repo::new();
    repo.write("s.yaml", &format!("{}polcy: {{}}\n", manifest(&arn, &v1)));
    let broken_at_start = repo.push("main", "broken from the start");
    let serve = Serve::start(
        &emu,
        Options {
            args: vec![
                "--git-url".into(),
                repo.url(),
                "--git-branch".into(),
                "main".into(),
                "--interval".into(),
                "1h".into(),
            ],
            wait_ready: false,
            ..Options::default()
        },
    );
    let st = serve.status_when("the first run", Duration::from_secs(30), |st| {
        st["runs"] == 1
    });
    assert_eq!(st["last_run"]["result"], "invalid");
    assert_eq!(st["last_run"]["revision"], broken_at_start);
    assert!(st["last_good_revision"].is_null());
    assert_eq!(serve.get("/readyz").status, 503, "ready without a good run");
    assert_eq!(serve.get("/healthz").status, 200);
    assert_eq!(
        emu.get_policy(&arn),
        None,
        "an invalid revision was applied"
    );

    repo.write("s.yaml", &manifest(&arn, &v1));
    let good = repo.push("main", "fixed");
    assert_eq!(serve.github_push("main", "fix").status, 202);
    serve.applied(&good);
    assert_eq!(serve.get("/readyz").status, 200);
    assert!(same_grant(&live(&emu, &arn).unwrap(), &v1));

    // A broken push: v2 in one document, a bad ARN in another file, whose name would start
    // a new log line and clear it on a terminal if it were printed as it is.
    repo.write("s.yaml", &manifest(&arn, &v2));
    repo.write(
        "bad\n\u{1b}[2K.yaml",
        "arn: arn:aws:kinesis:us-east-1:12:stream/x\nensure: absent\n",
    );
    let broken = repo.push("main", "broken");
    let runs = serve.runs();
    assert_eq!(serve.github_push("main", "broken").status, 202);
    let st = serve.status_when(
        "the broken push to be rejected",
        Duration::from_secs(30),
        |st| st["runs"].as_u64().unwrap() > runs && st["running"] == false,
    );
    assert_eq!(st["last_run"]["result"], "invalid", "{st:#}");
    assert_eq!(st["last_run"]["revision"], broken);
    // As its retry will be: the webhook's scope, not a full scan it never made.
    assert_eq!(st["last_run"]["scope"], "incremental", "{st:#}");
    assert_eq!(st["last_good_revision"], good);
    assert_eq!(st["last_error"]["revision"], broken);
    let message = st["last_error"]["message"].as_str().unwrap();
    assert!(message.contains("bad\\n\\u{1b}[2K.yaml:1"), "{message}");
    assert!(
        same_grant(&live(&emu, &arn).unwrap(), &v1),
        "v2 leaked from an invalid revision"
    );
    assert_eq!(
        serve.metric(
            "kpr_reconcile_runs_total",
            &[("trigger", "webhook"), ("result", "invalid")]
        ),
        1.0
    );
    assert!(serve.metrics().contains(&format!(
        "kpr_applied_revision_info{{revision=\"{good}\"}} 1"
    )));
    assert_eq!(serve.get("/healthz").status, 200);
    assert_eq!(serve.get("/readyz").status, 200);
    let logs = serve.stop();
    // The run's span names the revision it refused, as every run's does.
    assert!(
        logs.lines().any(|l| l.contains("invalid manifests")
            && l.contains(&format!("\"revision\":\"{broken}\""))),
        "{logs}"
    );
}

/// Git runs credential helpers, ssh and remote helpers with its own environment: kpr's AWS
/// credentials and secrets must not be in it.
#[test]
fn git_and_its_helpers_never_see_kprs_credentials() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("serve-gitenv"));
    let repo = Repo::new();
    repo.write(
        "s.yaml",
        &manifest(&arn, &read_policy(&arn, "111122223333")),
    );
    let head = repo.push("main", "one stream");
    // A `git` first on PATH that writes down its environment, then runs the real one.
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let bin = tempfile::tempdir().unwrap();
    let seen = bin.path().join("seen");
    std::fs::create_dir(&seen).unwrap();
    let wrapper = bin.path().join("git");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nenv > \"{}/$$\"\nexec {} \"$@\"\n",
            seen.display(),
            real.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let serve = Serve::start(
        &emu,
        Options {
            args: repo.source_args(&["--interval", "1h"]),
            env: vec![
                ("PATH", path),
                ("AWS_SESSION_TOKEN", "session-token-xyz".into()),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/irsa/token".into()),
                (
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                    "container-token-xyz".into(),
                ),
                ("KPR_WEBHOOK_SECRET", "webhook-secret-xyz".into()),
            ],
            ..Options::default()
        },
    );
    serve.applied(&head);
    serve.stop();
    let envs: Vec<String> = std::fs::read_dir(&seen)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(!envs.is_empty(), "the wrapper never ran");
    for env in &envs {
        // No AWS_* variable at all, whatever its name: a list would miss the next one.
        let aws: Vec<&str> = env.lines().filter(|l| l.starts_with("AWS_")).collect();
        assert!(aws.is_empty(), "git saw {aws:?}");
        for secret in [
            "session-token-xyz",
            "container-token-xyz",
            "webhook-secret-xyz",
        ] {
            assert!(!env.contains(secret), "git saw {secret}:\n{env}");
        }
    }
}

/// A failed listing (what --prune deletes from) concerns no one resource, so nothing backs it
/// off: the full scan it was part of stays owed and is retried on its own clock (the schedule
/// here is an hour away), and the failure is logged as it happens.
#[test]
fn a_failed_prune_listing_is_retried_by_a_full_scan() {
    use crate::proxy::{Fault, Proxy};
    let emu = common::kinesis_mock_private();
    let arn = emu.create_stream(&unique("serve-list"));
    let stray = emu.create_stream(&unique("serve-list-stray"));
    emu.put_policy_raw(
        &stray,
        &read_policy(&stray, "arn:aws:iam::111122223333:role/stray").to_string(),
    );
    let dir = common::Manifests::new(&[(
        "a.yaml",
        &manifest(
            &arn,
            &read_policy(&arn, "arn:aws:iam::111122223333:role/one"),
        ),
    )]);
    let proxy = Proxy::start(&emu.url);
    proxy
        .fault_ops(&["ListStreams"])
        .random_faults(1, 1.0, &[Fault::AccessDenied]);
    let via = Emulator {
        url: proxy.url(),
        ..emu.clone()
    };
    let mut args = retrying(&dir);
    args.extend(owned(&["--prune", "--max-deletes", "1"]));
    let serve = Serve::start(
        &via,
        Options {
            args,
            ..Options::default()
        },
    );
    let st = serve.status_when("the first run to end", Duration::from_secs(30), |st| {
        st["runs"].as_u64() >= Some(1) && st["running"] == false
    });
    assert_eq!(st["last_run"]["result"], "partial", "{st:#}");
    assert!(emu.get_policy(&stray).is_some());
    assert!(proxy.op("ListStreams").seen >= 1, "{}", proxy.describe());

    proxy.random_faults(1, 0.0, &[]);
    let st = serve.status_when("a full retry to prune", Duration::from_secs(30), |st| {
        st["last_run"]["trigger"] == "retry" && st["last_run"]["result"] == "success"
    });
    assert_eq!(st["last_run"]["scope"], "full", "{st:#}");
    assert_eq!(emu.get_policy(&stray), None);
    let logs = serve.stop();
    let failed = log_line(&logs, "\"planning failed\"");
    assert!(failed.contains("ListStreams"), "{failed}");
}

/// A --git-path that git could read as pathspec magic (`:pol` is `pol` to git) is the
/// directory of that name: a push that edits a manifest there is applied by its incremental
/// run, and one to the like-named sibling changes nothing.
#[test]
fn a_git_path_is_a_directory_name_not_a_pattern() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("serve-literal"));
    let v1 = read_policy(&arn, "arn:aws:iam::111122223333:role/one");
    let v2 = read_policy(&arn, "arn:aws:iam::111122223333:role/two");
    let repo = Repo::new();
    repo.write(":pol/s.yaml", &manifest(&arn, &v1));
    repo.write("pol/README.md", "a sibling, not the manifests\n");
    let first = repo.push("main", "one");
    let serve = Serve::git(&emu, &repo, &["--git-path", ":pol", "--interval", "1h"]);
    serve.applied(&first);
    repo.write(":pol/s.yaml", &manifest(&arn, &v2));
    repo.write("pol/README.md", "changed too\n");
    let second = repo.push("main", "two");
    assert_eq!(serve.github_push("main", "literal-1").status, 202);
    let st = serve.applied(&second);
    assert_eq!(st["last_run"]["scope"], "incremental", "{st:#}");
    assert_eq!(
        st["last_run"]["changed_files"],
        serde_json::json!([":pol/s.yaml"]),
        "{st:#}"
    );
    assert!(same_grant(&live(&emu, &arn).unwrap(), &v2), "{st:#}");
    serve.stop();
}

#[test]
fn a_one_file_merge_costs_only_that_resources_calls() {
    // A private account keeps the prune listing away from every other test's streams.
    let emu = common::kinesis_mock_private();
    let admin = |args: &[&str]| emu.admin(args, &[3]);
    let repo = Repo::new();
    let mut arns = Vec::new();
    for i in 0..4 {
        let arn = admin(&["create-stream", &unique(&format!("serve-inc{i}"))])
            .stdout
            .trim()
            .to_string();
        repo.write(
            &format!("m/s{i}.yaml"),
            &manifest(
                &arn,
                &read_policy(&arn, "arn:aws:iam::111122223333:role/one"),
            ),
        );
        arns.push(arn);
    }
    repo.write("README.md", "not a manifest\n");
    let first = repo.push("main", "four streams");
    let serve = Serve::start(
        &emu,
        Options {
            args: repo.source_args(&[
                "--git-path",
                "m",
                "--interval",
                "1h",
                "--prune",
                "--max-deletes",
                "1",
            ]),
            ..Options::default()
        },
    );
    serve.applied(&first);
    let calls = |s: &Serve| {
        let m = s.metrics();
        [
            "GetResourcePolicy",
            "PutResourcePolicy",
            "DeleteResourcePolicy",
            "DescribeStreamConsumer",
            "ListStreams",
            "ListStreamConsumers",
        ]
        .map(|op| metric(&m, "kpr_api_calls_total", &[("operation", op)]))
    };

    // One file edited (and a non-manifest file, which costs nothing).
    let before = calls(&serve);
    let v2 = read_policy(&arns[1], "arn:aws:iam::111122223333:role/two");
    repo.write("m/s1.yaml", &manifest(&arns[1], &v2));
    repo.write("README.md", "still not a manifest\n");
    let second = repo.push("main", "edit s1");
    assert_eq!(serve.github_push("main", "inc-1").status, 202);
    let st = serve.applied(&second);
    let after = calls(&serve);
    let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    // One read to plan, one write, one read-back to verify; no listing despite --prune.
    assert_eq!(delta, [2.0, 1.0, 0.0, 0.0, 0.0, 0.0], "{st:#}");
    assert_eq!(st["last_run"]["scope"], "incremental");
    assert_eq!(
        st["last_run"]["changed_files"],
        serde_json::json!(["m/s1.yaml"])
    );
    let got = admin(&["get-policy", &arns[1]]).stdout;
    assert!(same_grant(&got, &v2));

    // One file removed: with --prune its policy is deleted, again without listing anything.
    let before = calls(&serve);
    repo.remove("m/s2.yaml");
    let third = repo.push("main", "drop s2");
    assert_eq!(serve.github_push("main", "inc-2").status, 202);
    let st = serve.applied(&third);
    let delta: Vec<f64> = calls(&serve)
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(delta, [2.0, 0.0, 1.0, 0.0, 0.0, 0.0], "{st:#}");
    assert_eq!(st["last_run"]["summary"]["delete"], 1);
    assert_eq!(
        admin(&["get-policy", &arns[2]]).code,
        3,
        "s2's policy survived"
    );
    for i in [0, 3] {
        assert_eq!(admin(&["get-policy", &arns[i]]).code, 0);
    }
    // The scheduled scan still sees all three remaining resources.
    assert_eq!(st["resources"]["in_sync"], 3, "{st:#}");
    serve.stop();
}

/// A push's webhook may come before the git host serves the pushed commit to a fetch (a
/// replica behind the one that took the push). kpr applies what it fetched and fetches again
/// on its own clock: the commit is applied when it arrives, not at the next scheduled run.
#[test]
fn a_pushed_commit_the_remote_serves_late_is_fetched_again() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("serve-late"));
    let repo = Repo::new();
    let v1 = read_policy(&arn, "arn:aws:iam::111122223333:role/one");
    repo.write("s.yaml", &manifest(&arn, &v1));
    let first = repo.push("main", "v1");
    let serve = Serve::git(&emu, &repo, &["--interval", "1h"]);
    serve.applied(&first);

    // The push's commit exists (in the clone that made it) before the remote serves it.
    let v2 = read_policy(&arn, "arn:aws:iam::111122223333:role/two");
    repo.write("s.yaml", &manifest(&arn, &v2));
    let second = repo.commit("v2");
    let body = serde_json::json!({"ref": "refs/heads/main", "before": first, "after": second, "forced": false})
        .to_string();
    let r = serve.github_push_body(body.as_bytes(), "late-1");
    assert_eq!(r.status, 202, "{r:?}");
    assert!(r.body.contains(&second), "{r:?}");
    let st = serve.status_when(
        "the webhook's run to miss the commit and plan a fetch",
        Duration::from_secs(20),
        |st| st["next_retry"]["reason"] == "awaited_commit",
    );
    assert_eq!(st["awaited_commit"], second.as_str(), "{st:#}");
    assert_eq!(st["last_good_revision"], first.as_str(), "{st:#}");
    assert!(live(&emu, &arn).is_some_and(|p| same_grant(&p, &v1)));
    let logs = serve.logs();
    assert!(
        logs.contains("does not contain the pushed commit yet"),
        "{logs}"
    );
    // What was fetched changed nothing; of the push itself nothing is known yet.
    assert!(
        logs.contains("the pushed commit is not here yet")
            && !logs.contains("the push changed no manifest"),
        "{logs}"
    );

    // The remote catches up; no other push, no schedule: kpr's own fetch applies it.
    repo.push_head("main");
    let st = serve.applied(&second);
    assert!(st["awaited_commit"].is_null(), "{st:#}");
    assert!(live(&emu, &arn).is_some_and(|p| same_grant(&p, &v2)));
    assert!(serve.logs().contains("the pushed commit has arrived"));
    serve.stop();
}

/// A replica behind its webhook may serve a branch head older than what kpr already applied.
/// Taking it would undo applied commits (and, with --prune, delete the policies they added):
/// kpr applies nothing until the branch is back, while a reset that a webhook names (the
/// branch moved back on purpose) is applied.
#[test]
fn a_branch_served_behind_what_was_applied_is_not_rolled_back() {
    let emu = common::kinesis_mock_private();
    let [a, b] = ["serve-lag-a", "serve-lag-b"].map(|n| emu.create_stream(&unique(n)));
    let one = role_one;
    let repo = Repo::new();
    repo.write("a.yaml", &manifest(&a, &one(&a)));
    let first = repo.push("main", "a");
    let serve = serve_pruning(&emu, &repo, &["--retry-delay", "300ms"], &first);
    repo.write("b.yaml", &manifest(&b, &one(&b)));
    let second = repo.push("main", "b");
    assert_eq!(serve.github_push("main", "lag-1").status, 202);
    serve.applied(&second);
    assert!(live(&emu, &b).is_some());

    // The replica serves the first commit again; a webhook names a third, not served yet.
    serve_at(&repo, &first);
    let body = serde_json::json!({"ref": "refs/heads/main", "after": "f".repeat(40)});
    let r = serve.github_push_body(body.to_string().as_bytes(), "lag-2");
    assert_eq!(r.status, 202, "{r:?}");
    let st = serve.status_when(
        "the run that fetched the old head",
        Duration::from_secs(20),
        |st| st["last_run"]["trigger"] == "webhook" && st["last_run"]["result"] == "fetch_failed",
    );
    assert!(
        st["last_run"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("is behind")),
        "{st:#}"
    );
    assert_eq!(st["last_good_revision"], second.as_str(), "{st:#}");
    assert!(live(&emu, &b).is_some(), "b's policy was pruned: {st:#}");

    // A reset its webhook names is the branch's owner moving it back: applied, b pruned. Its
    // webhook comes while the host still serves the head before the reset, which contains
    // the older commit too: the reset is awaited until the head is that commit.
    serve_at(&repo, &second);
    forced_hook(&serve, &second, &first);
    let st = serve.awaits(&first, "the reset to be awaited");
    assert!(live(&emu, &b).is_some(), "{st:#}");
    // Still awaited after the awaited fetches that find the old head (what was applied, which
    // contains the reset's commit too): the reset's own runs complete, and must not end it.
    let runs = st["runs"].as_u64().unwrap();
    let st = serve.status_when(
        "two more fetches of the old head",
        Duration::from_secs(20),
        |st| st["runs"].as_u64() >= Some(runs + 2) && st["running"] == false,
    );
    assert_eq!(st["awaited_commit"], first.as_str(), "{st:#}");
    serve_at(&repo, &first);
    serve.status_when("the reset to be applied", Duration::from_secs(30), |st| {
        st["last_good_revision"] == first.as_str()
    });
    assert!(live(&emu, &b).is_none());
    // The head the reset replaced, fetched (and so completed) while the reset was pending, is
    // still refused when a replica serves it again.
    serve_at(&repo, &second);
    serve.trigger();
    let st = serve.refused_as_replaced("the replaced head to be refused");
    assert!(live(&emu, &b).is_none(), "{st:#}");
    serve.stop();
}

/// A push's webhook may come after a later push was applied. It names a commit behind what
/// was applied, as a reset's does, but its push moved the branch forward: kpr must not await
/// it, nor take a replica that serves exactly that commit for the branch moved back.
#[test]
fn a_late_webhook_is_not_taken_for_a_reset() {
    let emu = common::kinesis_mock_private();
    let [a, b] = ["serve-late-a", "serve-late-b"].map(|n| emu.create_stream(&unique(n)));
    let role =
        |arn: &str, name: &str| read_policy(arn, &format!("arn:aws:iam::111122223333:role/{name}"));
    let repo = Repo::new();
    repo.write("a.yaml", &manifest(&a, &role(&a, "one")));
    let first = repo.push("main", "a");
    let serve = serve_pruning(&emu, &repo, &["--retry-delay", "1h"], &first);
    repo.write("b.yaml", &manifest(&b, &role(&b, "one")));
    let second = repo.push("main", "b");
    let v2 = role(&a, "two");
    repo.write("a.yaml", &manifest(&a, &v2));
    let third = repo.push("main", "a v2");
    assert_eq!(serve.github_push("main", "late-3").status, 202);
    serve.applied(&third);

    // The replica serves the second commit when that push's webhook arrives, from GitLab
    // (which does not say whether a push was forced) and from GitHub.
    serve_at(&repo, &second);
    let late = serde_json::json!({"ref": "refs/heads/main", "before": first, "after": second});
    let mut github = late.clone();
    github["forced"] = false.into();
    // A force-push back to the first commit from the second, superseded too: the third was
    // applied since, and the push did not come from it.
    let forced = serde_json::json!({
        "ref": "refs/heads/main", "before": second, "after": first, "forced": true
    });
    for (delivery, body) in [
        ("late-2", late.clone()),
        ("late-2-github", github),
        ("late-forced", forced),
    ] {
        let runs = serve.status()["runs"].as_u64().unwrap();
        let r = serve.github_push_body(body.to_string().as_bytes(), delivery);
        assert_eq!(r.status, 202, "{r:?}");
        let st = serve.run_after(runs, "the late webhook's run");
        assert_eq!(
            st["last_run"]["result"], "fetch_failed",
            "{delivery}: {st:#}"
        );
        assert_eq!(
            st["last_good_revision"],
            third.as_str(),
            "{delivery}: {st:#}"
        );
        assert!(st["awaited_commit"].is_null(), "{delivery}: {st:#}");
        assert!(
            live(&emu, &a).is_some_and(|p| same_grant(&p, &v2)),
            "{delivery}: rolled back: {st:#}"
        );
    }
    assert!(serve.logs().contains("a late webhook"));

    // A real reset (from what was applied), then late webhooks: of the push to what was
    // applied, and one redelivered: neither replaces the reset nor is taken for one.
    let reset = serde_json::json!({
        "ref": "refs/heads/main", "before": third, "after": first, "forced": true
    });
    // A late webhook of the push to what was applied, too: the reset came from it.
    let to_applied =
        serde_json::json!({"ref": "refs/heads/main", "before": second, "after": third});
    for (delivery, body) in [("reset", reset), ("late-applied", to_applied)] {
        let r = serve.github_push_body(body.to_string().as_bytes(), delivery);
        assert_eq!(r.status, 202, "{r:?}");
    }
    // An old push's webhook again: the same event, so a duplicate (GitHub's redeliveries keep
    // the delivery id).
    let again = serve.github_push_body(late.to_string().as_bytes(), "late-2");
    assert_eq!(again.status, 200, "{again:?}");
    let st = serve.status_when("the reset to be awaited", Duration::from_secs(20), |st| {
        st["awaited_commit"] == first.as_str() && st["running"] == false && st["pending"].is_null()
    });
    assert_eq!(st["last_good_revision"], third.as_str(), "{st:#}");
    serve_at(&repo, &first);
    serve.status_when("the reset to be applied", Duration::from_secs(30), |st| {
        st["last_good_revision"] == first.as_str()
    });
    assert!(
        live(&emu, &b).is_none(),
        "b was added after the first commit: pruned"
    );
    assert!(live(&emu, &a).is_some_and(|p| same_grant(&p, &role(&a, "one"))));

    // Two pushes on top of the reset; the second's webhook comes first, while the replica
    // still serves the reset, then the first's, late: the newer commit stays awaited.
    let work = repo.work();
    git(&work, &["reset", "-q", "--hard", &first]);
    let v3 = role(&a, "three");
    repo.write("a.yaml", &manifest(&a, &v3));
    let fourth = repo.push("main", "a v3");
    let v4 = role(&a, "four");
    repo.write("a.yaml", &manifest(&a, &v4));
    let fifth = repo.push("main", "a v4");
    serve_at(&repo, &first);
    push_hook(&serve, &fourth, &fifth);
    serve.awaits(&fifth, "the fifth commit to be awaited");
    pushed_and_applied(&serve, &repo, &first, &fourth);
    let st = serve.idle();
    assert_eq!(
        st["awaited_commit"],
        fifth.as_str(),
        "{st:#}\n{}",
        serve.logs()
    );
    serve_at(&repo, &fifth);
    serve.applied(&fifth);
    assert!(live(&emu, &a).is_some_and(|p| same_grant(&p, &v4)));
    serve.stop();
}

/// A reset must survive what comes around it: the late webhook of the very push it undid, a
/// replica still serving the head it replaced (never applied), and a reset back to what was
/// applied away from a commit still awaited.
#[test]
fn a_reset_survives_late_webhooks_and_the_head_it_replaced() {
    let emu = common::kinesis_mock_private();
    let [a, b, c, d] = ["rs-a", "rs-b", "rs-c", "rs-d"].map(|n| emu.create_stream(&unique(n)));
    let one = role_one;
    let repo = Repo::new();
    repo.write("a.yaml", &manifest(&a, &one(&a)));
    let first = repo.push("main", "a");
    let serve = serve_pruning(&emu, &repo, &["--retry-delay", "1h"], &first);

    // 1. Undo the last push; that push's webhook is then redelivered (same event id): a
    //    duplicate, which changes nothing.
    repo.write("b.yaml", &manifest(&b, &one(&b)));
    let second = repo.push("main", "b");
    let pushed = push_hook(&serve, &first, &second);
    serve.applied(&second);
    push_hook(&serve, &second, &first);
    let again = delivered(&serve, &first, &second, &pushed);
    assert_eq!(again.status, 200, "a redelivery is a duplicate: {again:?}");
    let st = serve.idle();
    assert_eq!(
        st["awaited_commit"],
        first.as_str(),
        "{st:#}\n{}",
        serve.logs()
    );
    serve_at(&repo, &first);
    serve.applied(&first);
    assert!(live(&emu, &b).is_none(), "the reset was lost");

    // 2. The head a reset replaced was never applied (its webhook was lost): a replica still
    //    serving it is refused, not taken for the branch moved on.
    let work = repo.work();
    git(&work, &["reset", "-q", "--hard", &first]);
    repo.write("b.yaml", &manifest(&b, &one(&b)));
    let third = repo.push("main", "b again");
    push_hook(&serve, &first, &third);
    serve.applied(&third);
    repo.write("c.yaml", &manifest(&c, &one(&c)));
    let fourth = repo.push("main", "c, whose webhook is lost");
    push_hook(&serve, &fourth, &first);
    let st = serve.status_when(
        "the head the reset replaced to be refused",
        Duration::from_secs(20),
        |st| st["last_run"]["result"] == "fetch_failed" && st["running"] == false,
    );
    assert!(
        st["last_run"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("replaced")),
        "{st:#}"
    );
    assert!(
        live(&emu, &c).is_none(),
        "the commit the reset replaced was applied"
    );
    serve_at(&repo, &first);
    serve.applied(&first);
    assert!(live(&emu, &b).is_none() && live(&emu, &c).is_none());

    // 3. A push not fetched yet, then a reset back to what was applied: the replica then
    //    serving the push's commit is refused.
    git(&work, &["reset", "-q", "--hard", &first]);
    repo.write("d.yaml", &manifest(&d, &one(&d)));
    let fifth = repo.push("main", "d");
    serve_at(&repo, &first);
    push_hook(&serve, &first, &fifth);
    serve.awaits(&fifth, "the pushed commit to be awaited");
    push_hook(&serve, &fifth, &first);
    serve_at(&repo, &fifth);
    let st = serve.status_when(
        "the replaced head to be refused",
        Duration::from_secs(20),
        |st| st["last_run"]["result"] == "fetch_failed" && st["running"] == false,
    );
    assert!(live(&emu, &d).is_none(), "{st:#}");
    serve_at(&repo, &first);
    let st = serve.status_when("the reset to be settled", Duration::from_secs(30), |st| {
        st["awaited_commit"].is_null() && st["last_run"]["result"] == "success"
    });
    assert_eq!(st["last_good_revision"], first.as_str(), "{st:#}");
    assert!(live(&emu, &d).is_none());
    serve.stop();
}

/// More ways a reset must hold: back to what was applied away from a head kpr never saw; two
/// resets in a row; and an old webhook redelivered while a newer push is awaited.
#[test]
fn resets_hold_against_unseen_heads_second_resets_and_redeliveries() {
    let emu = common::kinesis_mock_private();
    let [a, b, c, x] = ["rh-a", "rh-b", "rh-c", "rh-x"].map(|n| emu.create_stream(&unique(n)));
    let one = role_one;
    let repo = Repo::new();
    repo.write("a.yaml", &manifest(&a, &one(&a)));
    let first = repo.push("main", "a");
    repo.write("b.yaml", &manifest(&b, &one(&b)));
    let second = repo.push("main", "b");
    let serve = serve_pruning(&emu, &repo, &["--retry-delay", "1h"], &second);
    let refused = |what: &str| {
        serve.status_when(what, Duration::from_secs(20), |st| {
            st["last_run"]["result"] == "fetch_failed"
                && st["running"] == false
                && st["pending"].is_null()
        })
    };

    // 1. A push whose webhook is lost, undone at once: the undo's webhook names what was
    //    applied, from a commit kpr never saw. A replica still serving that commit is refused.
    repo.write("x.yaml", &manifest(&x, &one(&x)));
    let mistake = repo.push("main", "x, by mistake");
    push_hook(&serve, &mistake, &second);
    let st = refused("the undone head to be refused");
    assert!(live(&emu, &x).is_none(), "{st:#}");
    serve_at(&repo, &second);

    // 2. Two resets in a row, in order, while the replica still serves the first's old head.
    let work = repo.work();
    git(&work, &["reset", "-q", "--hard", &second]);
    repo.write("c.yaml", &manifest(&c, &one(&c)));
    let third = repo.push("main", "c");
    push_hook(&serve, &second, &third);
    serve.applied(&third);
    push_hook(&serve, &third, &second);
    let second_reset = push_hook(&serve, &second, &first);
    serve_at(&repo, &first);
    let st = serve.status_when(
        "the second reset to be applied",
        Duration::from_secs(30),
        |st| st["last_good_revision"] == first.as_str(),
    );
    assert!(
        live(&emu, &b).is_none() && live(&emu, &c).is_none(),
        "{st:#}"
    );

    // 3. A push awaited (the replica lags), and meanwhile an old reset's webhook redelivered:
    //    the awaited push still arrives and is applied.
    git(&work, &["reset", "-q", "--hard", &first]);
    repo.write("c.yaml", &manifest(&c, &one(&c)));
    let fourth = repo.push("main", "c again");
    serve_at(&repo, &first);
    push_hook(&serve, &first, &fourth);
    serve.awaits(&fourth, "the push to be awaited");
    let again = delivered(&serve, &second, &first, &second_reset);
    assert_eq!(again.status, 200, "a redelivery is a duplicate: {again:?}");
    serve_at(&repo, &fourth);
    serve.applied(&fourth);
    assert!(live(&emu, &c).is_some());

    // 4. A reset, pending while the replica lags, undone at once by its owner: the same move
    //    as the push before, as a new event. The branch is where the undo put it: the reset's
    //    commit is no longer awaited, and a replica serving it is refused.
    push_hook(&serve, &fourth, &first);
    serve.awaits(&first, "the reset to be awaited");
    push_hook(&serve, &first, &fourth);
    let st = serve.status_when("the undo to settle", Duration::from_secs(20), |st| {
        st["awaited_commit"].is_null() && st["running"] == false && st["pending"].is_null()
    });
    assert_eq!(st["last_good_revision"], fourth.as_str(), "{st:#}");
    serve_at(&repo, &first);
    serve.trigger();
    let st = serve.status_when(
        "the undone reset's commit to be refused",
        Duration::from_secs(20),
        |st| st["last_run"]["result"] == "fetch_failed",
    );
    assert!(live(&emu, &c).is_some(), "{st:#}");
    serve.stop();
}

/// A refused head that stays the branch head is where its owner put it: a reset whose webhook
/// never came is applied after --reset-settle. And once a reset is applied, a replica still
/// serving the head it replaced is refused, not applied.
#[test]
fn a_refused_head_that_stays_is_applied_after_the_settle_time() {
    let emu = common::kinesis_mock_private();
    let ([_, b], repo, [first, second]) = granted_in_turn(&emu, ["st-a", "st-b"]);
    // Retries far apart: the refused head must be fetched again when the settle time is up,
    // not at the next retry (the wait below would run out first).
    let extra = ["--retry-delay", "1m", "--reset-settle", "3s"];
    let serve = serve_pruning(&emu, &repo, &extra, &second);
    // Reset with no webhook; a payload-less trigger fetches it.
    serve_at(&repo, &first);
    serve.trigger();
    let st = serve.status_when(
        "the head behind to be refused",
        Duration::from_secs(20),
        |st| st["last_run"]["result"] == "fetch_failed",
    );
    assert!(
        st["last_run"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("applied if the branch stays there for 3s")),
        "{st:#}"
    );
    assert!(
        live(&emu, &b).is_some(),
        "applied before the settle time: {st:#}"
    );
    // The fetch to come is the settle time's, awaiting no commit.
    let st = serve.status_when(
        "the fetch at the settle time to be scheduled",
        Duration::from_secs(3),
        |st| st["next_retry"]["reason"].is_string(),
    );
    assert_eq!(st["next_retry"]["reason"], "reset_settle", "{st:#}");
    assert!(st["awaited_commit"].is_null(), "{st:#}");
    serve.status_when(
        "the settled reset to be applied",
        Duration::from_secs(30),
        |st| st["last_good_revision"] == first.as_str(),
    );
    assert!(live(&emu, &b).is_none());
    assert!(serve.logs().contains("taken as where its owner put it"));
    // The replica serves the head the reset replaced again: refused, until it settles.
    serve_at(&repo, &second);
    serve.trigger();
    let st = serve.refused_as_replaced("the replaced head to be refused");
    assert!(live(&emu, &b).is_none(), "{st:#}");
    serve.stop();
}

/// The heads resets replaced stay refused: through a second reset, a push on top of the reset,
/// and a restart. (A replica still serving one of them would re-grant what the reset revoked.)
#[test]
fn the_heads_resets_replaced_stay_refused() {
    let emu = common::kinesis_mock_private();
    let ([_, b, c, d], repo, [first, second, third, _]) =
        granted_in_turn(&emu, ["hr-a", "hr-b", "hr-c", "hr-d"]);
    // The fourth commit is not wanted yet: main starts at the third.
    serve_at(&repo, &third);
    let workdir = tempfile::tempdir().unwrap();
    let start = |wait_ready: bool| {
        Serve::start(
            &emu,
            Options {
                args: repo.source_args(&["--interval", "1h", "--prune", "--retry-delay", "1h"]),
                workdir: Some(workdir.path()),
                wait_ready,
                ..Options::default()
            },
        )
    };
    let serve = start(true);
    serve.applied(&third);
    let refused = |serve: &Serve, what: &str| {
        let st = serve.refused_as_replaced(what);
        assert!(
            live(&emu, &c).is_none(),
            "what the reset revoked is granted again: {st:#}"
        );
    };

    // A reset, applied; then a second one, while a replica serves the first's old head.
    pushed_and_applied(&serve, &repo, &third, &second);
    serve_at(&repo, &third);
    push_hook(&serve, &second, &first);
    refused(&serve, "the first reset's old head to be refused");
    serve_at(&repo, &first);
    serve.status_when(
        "the second reset to be applied",
        Duration::from_secs(30),
        |st| st["last_good_revision"] == first.as_str(),
    );
    assert!(live(&emu, &b).is_none());

    // A push on top of the reset; a replica then serves the old head again.
    let work = repo.work();
    git(&work, &["reset", "-q", "--hard", &first]);
    repo.write("d.yaml", &manifest(&d, &role_one(&d)));
    let fresh = repo.push("main", "d on the reset");
    push_hook(&serve, &first, &fresh);
    serve.applied(&fresh);
    serve_at(&repo, &third);
    serve.trigger();
    refused(&serve, "the old head to be refused after a push");

    // And after a restart (whose first run is refused: not ready).
    serve.stop();
    let serve = start(false);
    refused(&serve, "the old head to be refused after a restart");
    serve_at(&repo, &fresh);
    serve.trigger();
    serve.applied(&fresh);
    assert!(live(&emu, &d).is_some());

    // And after a restart that finds the working copy damaged, moves it aside and clones
    // afresh: what the old copy kept comes along.
    serve.stop();
    std::fs::write(workdir.path().join("repo/.git/HEAD"), "garbage\n").unwrap();
    serve_at(&repo, &third);
    let serve = start(false);
    // Refused as what a reset replaced, or (the fresh clone could not fetch what was applied
    // from a replica serving the old head) as a head that cannot hold what was applied.
    let st = serve.status_when(
        "the old head to be refused after a fresh clone",
        Duration::from_secs(20),
        |st| {
            st["last_run"]["result"] == "fetch_failed"
                && st["last_run"]["error"].as_str().is_some_and(|e| {
                    e.contains("what a reset replaced") || e.contains("which was already applied")
                })
        },
    );
    assert!(
        live(&emu, &c).is_none(),
        "what the reset revoked is granted again: {st:#}"
    );
    // The heads resets replaced came along into the fresh clone.
    let config = std::fs::read_to_string(workdir.path().join("repo/.git/config")).unwrap();
    assert!(
        config
            .lines()
            .any(|l| l.trim_start().starts_with("replaced") && l.contains(&third)),
        "{config}"
    );
    assert!(
        serve.logs().contains("the git working copy is damaged"),
        "{}",
        serve.logs()
    );
    serve.stop();
}

/// Ordinary moves around a reset take effect at once, in order and with one lagging fetch:
/// a reset redone after it was applied, a pending reset of two pushes undone, and a force-push
/// back to the head before an amend. (The settle time is an hour: none of this may wait for it.)
#[test]
fn ordinary_moves_around_a_reset_take_effect_at_once() {
    let emu = common::kinesis_mock_private();
    let ([_, b, c, d], repo, [first, second, third, fourth]) =
        granted_in_turn(&emu, ["om-a", "om-b", "om-c", "om-d"]);
    serve_at(&repo, &second);
    let extra = ["--retry-delay", "1h", "--reset-settle", "1h"];
    let serve = serve_pruning(&emu, &repo, &extra, &second);

    // A push, a reset of it (applied), and the push again as a new event: applied at once.
    pushed_and_applied(&serve, &repo, &second, &third);
    pushed_and_applied(&serve, &repo, &third, &second);
    pushed_and_applied(&serve, &repo, &second, &third);
    assert!(live(&emu, &c).is_some());

    // Two pushes, a reset of both (pending: the replica lags), undone at once: the branch is
    // where the undo put it, nothing awaited, and a fetch of the reset's commit is refused.
    pushed_and_applied(&serve, &repo, &third, &fourth);
    push_hook(&serve, &fourth, &second);
    push_hook(&serve, &second, &fourth);
    let st = serve.idle();
    assert!(st["awaited_commit"].is_null(), "{st:#}\n{}", serve.logs());
    serve_at(&repo, &second);
    serve.trigger();
    let st = serve.status_when(
        "the undone reset's commit to be refused",
        Duration::from_secs(20),
        |st| st["last_run"]["result"] == "fetch_failed",
    );
    assert!(
        live(&emu, &c).is_some() && live(&emu, &d).is_some(),
        "{st:#}"
    );

    // An amend force-pushed, then a force-push back to the head before it, while one fetch
    // still serves the amend: the head before is awaited and applied when served.
    let amended = repo.commit_on(
        &third,
        "d.yaml",
        &manifest(&d, &read_policy(&d, "arn:aws:iam::111122223333:role/two")),
        "d, amended",
    );
    push_hook(&serve, &fourth, &amended);
    serve.applied(&amended);
    push_hook(&serve, &amended, &fourth);
    serve.awaits(&fourth, "the head before the amend to be awaited");
    serve_at(&repo, &fourth);
    serve.applied(&fourth);
    assert!(
        live(&emu, &b).is_some() && live(&emu, &d).is_some_and(|p| same_grant(&p, &role_one(&d)))
    );
    let _ = first;
    serve.stop();
}

/// A push nobody announced, then reset away while a replica still serves it: the reset's
/// webhook names what was applied, as a late one would, but the pushes seen had brought the
/// branch back there, so it is a reset and the unannounced head is refused.
#[test]
fn a_reset_of_an_unannounced_push_is_not_taken_for_a_late_webhook() {
    let emu = common::kinesis_mock_private();
    let ([_, _, c], repo, [_, second, third]) = granted_in_turn(&emu, ["ru-a", "ru-b", "ru-c"]);
    serve_at(&repo, &second);
    let extra = ["--retry-delay", "1h", "--reset-settle", "1h"];
    let serve = serve_pruning(&emu, &repo, &extra, &second);
    pushed_and_applied(&serve, &repo, &second, &third);
    pushed_and_applied(&serve, &repo, &third, &second);
    assert!(live(&emu, &c).is_none());

    let unannounced = repo.commit_on(
        &second,
        "c.yaml",
        &manifest(&c, &role_one(&c)),
        "c again, its webhook lost",
    );
    forced_hook(&serve, &unannounced, &second);
    let st = serve.refused_as_replaced("the unannounced head to be refused");
    assert!(live(&emu, &c).is_none(), "{st:#}\n{}", serve.logs());
    serve.stop();
}

/// A push whose webhook comes only after the reset that undid it: the head it brought stays
/// refused (a push of it again would be applied after the settle time), and the reset stands.
#[test]
fn a_push_announced_after_the_reset_that_undid_it_stays_undone() {
    let emu = common::kinesis_mock_private();
    let ([_, b], repo, [first, second]) = granted_in_turn(&emu, ["pa-a", "pa-b"]);
    serve_at(&repo, &first);
    let extra = ["--retry-delay", "1h", "--reset-settle", "1h"];
    let serve = serve_pruning(&emu, &repo, &extra, &first);
    // `second` pushed, its webhook delayed; reset away, announced at once, while a replica
    // still serves it.
    serve_at(&repo, &second);
    forced_hook(&serve, &second, &first);
    serve.refused_as_replaced("the reset-away head to be refused");
    let runs = serve.runs();
    push_hook(&serve, &first, &second);
    let st = serve.run_after(runs, "the late webhook's run");
    assert!(
        st["last_run"]["result"] == "fetch_failed" && live(&emu, &b).is_none(),
        "{st:#}\n{}",
        serve.logs()
    );
    serve.stop();
}

/// A force-push from what was applied back to an earlier head is the owner's move, even when
/// a webhook before it was lost: awaited, and applied once a replica serves it.
#[test]
fn a_force_push_back_from_what_was_applied_is_taken_with_a_webhook_missing() {
    let emu = common::kinesis_mock_private();
    let ([_, _, c, d], repo, [first, second, third, _]) =
        granted_in_turn(&emu, ["fb-a", "fb-b", "fb-c", "fb-d"]);
    serve_at(&repo, &first);
    let extra = ["--retry-delay", "1h", "--reset-settle", "1h"];
    let serve = serve_pruning(&emu, &repo, &extra, &first);
    pushed_and_applied(&serve, &repo, &first, &second);
    pushed_and_applied(&serve, &repo, &second, &third);
    // Reset to `first`, its webhook lost; then a new commit on it, announced.
    let other = repo.commit_on(&first, "d.yaml", &manifest(&d, &role_one(&d)), "d on first");
    push_hook(&serve, &first, &other);
    serve.applied(&other);
    // The owner force-pushes back to `second`, while a replica still serves `other`.
    serve_at(&repo, &other);
    forced_hook(&serve, &other, &second);
    serve.awaits(&second, "the force-push's head to be awaited");
    serve_at(&repo, &second);
    serve.applied(&second);
    assert!(live(&emu, &c).is_none() && live(&emu, &d).is_none());
    serve.stop();
}

/// An amend undone by a force-push back, whose webhook comes only after a second amend: it is
/// older than that amend's push, so the head both amends replaced stays refused and the second
/// amend stays awaited.
#[test]
fn a_late_force_push_back_does_not_undo_a_later_amend() {
    let emu = common::kinesis_mock_private();
    let ([_, b], repo, [first, second]) = granted_in_turn(&emu, ["la-a", "la-b"]);
    let _ = first;
    let extra = ["--retry-delay", "1h", "--reset-settle", "1h"];
    let serve = serve_pruning(&emu, &repo, &extra, &second);
    let two = read_policy(&b, "arn:aws:iam::111122223333:role/two");
    let amended = repo.amend("b.yaml", &manifest(&b, &two));
    forced_hook(&serve, &second, &amended);
    serve.applied(&amended);
    // Back to `second` (its webhook delayed), then amended again, announced while a replica
    // still serves `second`.
    serve_at(&repo, &second);
    let work = repo.work();
    git(&work, &["reset", "-q", "--hard", &second]);
    let three = read_policy(&b, "arn:aws:iam::111122223333:role/three");
    let again = repo.amend("b.yaml", &manifest(&b, &three));
    serve_at(&repo, &second);
    forced_hook(&serve, &second, &again);
    serve.awaits(&again, "the second amend to be awaited");
    let runs = serve.runs();
    forced_hook(&serve, &amended, &second);
    let st = serve.run_after(runs, "the late webhook's run");
    assert!(
        st["awaited_commit"] == again.as_str()
            && live(&emu, &b).is_some_and(|p| same_grant(&p, &two)),
        "{st:#}\n{}",
        serve.logs()
    );
    serve_at(&repo, &again);
    serve.applied(&again);
    assert!(live(&emu, &b).is_some_and(|p| same_grant(&p, &three)));
    serve.stop();
}

/// A force-push from what was applied back to an earlier head, after a reset and a push that
/// no webhook announced (a restart applied the push): the owner's move, awaited and applied.
#[test]
fn a_force_push_from_a_head_no_webhook_announced_is_taken() {
    let emu = common::kinesis_mock_private();
    let ([_, _, c, d], repo, [first, second, third, _]) =
        granted_in_turn(&emu, ["fh-a", "fh-b", "fh-c", "fh-d"]);
    let workdir = tempfile::tempdir().unwrap();
    let args = PRUNING_NO_TIMERS;
    serve_at(&repo, &first);
    let serve = restartable(&emu, &repo, workdir.path(), &args);
    serve.applied(&first);
    pushed_and_applied(&serve, &repo, &first, &second);
    pushed_and_applied(&serve, &repo, &second, &third);
    serve.stop();
    // Reset to `first` and a push on it, neither announced; a restart applies the push.
    let other = repo.commit_on(&first, "d.yaml", &manifest(&d, &role_one(&d)), "d on first");
    let serve = restartable(&emu, &repo, workdir.path(), &args);
    serve.applied(&other);
    // The owner force-pushes back to `second`, announced a fetch ahead of the replica.
    forced_hook(&serve, &other, &second);
    serve.awaits(&second, "the force-push's head to be awaited");
    serve_at(&repo, &second);
    serve.applied(&second);
    assert!(live(&emu, &c).is_none() && live(&emu, &d).is_none());
    serve.stop();
}

/// An amend force-pushed takes the old head away like a reset: the next push's fetch, served
/// by a replica still at the old head, is refused rather than bringing it back.
#[test]
fn a_head_a_forced_push_took_away_is_refused() {
    amended_away_is_refused("fp", |serve, before, after, amend| {
        if amend {
            forced_hook(serve, before, after);
        } else {
            push_hook(serve, before, after);
        }
    });
}

/// GitLab's payload does not say whether a push was forced: an amend pushed there takes the
/// old head away all the same, told by ancestry once the amend is fetched.
#[test]
fn a_head_an_amend_pushed_to_gitlab_took_away_is_refused() {
    amended_away_is_refused("gl", |serve, before, after, _| {
        gitlab_hook(serve, before, after)
    });
}

/// An amend announced by `hook` (its last argument says whether the push is the amend), then
/// a push whose fetch a replica still at the old head serves: refused.
fn amended_away_is_refused(prefix: &str, hook: impl Fn(&Serve, &str, &str, bool)) {
    let emu = common::kinesis_mock_private();
    let names = [format!("{prefix}-a"), format!("{prefix}-b")];
    let ([_, b], repo, [_, second]) = granted_in_turn(&emu, names.each_ref().map(|n| n.as_str()));
    let extra = ["--retry-delay", "1h", "--reset-settle", "1h"];
    let serve = serve_pruning(&emu, &repo, &extra, &second);
    let two = read_policy(&b, "arn:aws:iam::111122223333:role/two");
    let amended = repo.amend("b.yaml", &manifest(&b, &two));
    hook(&serve, &second, &amended, true);
    serve.applied(&amended);
    repo.write("b.yaml", &format!("# reviewed\n{}", manifest(&b, &two)));
    let next = repo.push("main", "a note");
    serve_at(&repo, &second);
    hook(&serve, &amended, &next, false);
    let st = serve.refused_as_replaced("the amended-away head to be refused");
    assert!(
        live(&emu, &b).is_some_and(|p| same_grant(&p, &two)),
        "{st:#}"
    );
    serve_at(&repo, &next);
    serve.applied(&next);
    serve.stop();
}

/// A forced push that takes away the head a run is applying stops that run's writes: a grant
/// withdrawn by an amend goes no further live than the write under way when the webhook came,
/// not even when a replica still serves the withdrawn head, and the first run of the new
/// head, a full scan, puts back what it declares.
#[test]
fn a_forced_push_stops_the_apply_of_the_head_it_replaced() {
    use crate::proxy::Proxy;
    let emu = common::kinesis_mock_private();
    let ([a, b], repo, [_, base]) = granted_in_turn(&emu, ["serve-stop-a", "serve-stop-b"]);
    let proxy = Proxy::start(&emu.url);
    let via = Emulator {
        url: proxy.url(),
        ..emu.clone()
    };
    // One write at a time: the second waits for the first.
    let serve = serve_pruning(&via, &repo, &["--concurrency", "1"], &base);
    let mistake = |arn: &str| read_policy(arn, "arn:aws:iam::444455556666:role/mistake");
    repo.write("a.yaml", &manifest(&a, &mistake(&a)));
    repo.write("b.yaml", &manifest(&b, &mistake(&b)));
    let granted = repo.push("main", "a grant by mistake");
    proxy.reset_counts();
    proxy.hold("PutResourcePolicy");
    push_hook(&serve, &base, &granted);
    assert!(
        proxy.wait_for(Duration::from_secs(30), |p| p.op("PutResourcePolicy").seen
            >= 1),
        "no write came: {}",
        proxy.describe()
    );
    let withdrawn = repo.commit_on(&base, "NOTES.md", "the grant was a mistake\n", "withdrawn");
    // A replica behind the force-push still serves the head it took away.
    serve_at(&repo, &granted);
    forced_hook(&serve, &granted, &withdrawn);
    proxy.release();
    let st = serve.refused_as_replaced("the withdrawn head, still served, to be refused");
    // Stopped part-way, it was never the revision applied.
    assert_eq!(st["last_good_revision"], base.as_str(), "{st:#}");
    let stopped = serve.metric("kpr_reconcile_runs_total", &[("result", "stopped")]);
    assert_eq!(stopped, 1.0, "{st:#}");
    serve_at(&repo, &withdrawn);
    let st = serve.applied(&withdrawn);
    assert_eq!(st["last_run"]["scope"], "full", "{st:#}");
    let written = |arn: &str| proxy.op_on("PutResourcePolicy", arn).seen;
    let (first, second) = if written(&a) > 0 { (&a, &b) } else { (&b, &a) };
    // The first write was under way: it went through, and the full run took it back.
    assert_eq!(written(first), 2, "{}", proxy.describe());
    assert_eq!(written(second), 0, "{}", proxy.describe());
    for arn in [&a, &b] {
        assert!(
            live(&emu, arn).is_some_and(|p| same_grant(&p, &role_one(arn))),
            "{arn}: {:?}",
            live(&emu, arn)
        );
    }
    let logs = serve.stop();
    let stopped = log_line(&logs, "stopped by a forced push");
    assert!(
        stopped.contains("1 of its change(s) not started"),
        "{stopped}"
    );
}

/// A push answered 202 is kept until a run has judged it: a crash before that does not lose
/// it. Here a force-push back, announced while a run is busy writing, then kpr killed: the
/// restarted kpr still refuses the head it took away, which a replica behind serves.
#[test]
fn a_push_answered_but_not_yet_judged_survives_a_kill() {
    use crate::proxy::Proxy;
    let emu = common::kinesis_mock_private();
    let ([_, _, c], repo, [_, second, third]) =
        granted_in_turn(&emu, ["serve-pend-a", "serve-pend-b", "serve-pend-c"]);
    serve_at(&repo, &second);
    let proxy = Proxy::start(&emu.url);
    let via = Emulator {
        url: proxy.url(),
        ..emu.clone()
    };
    let workdir = tempfile::tempdir().unwrap();
    // One write at a time: the run stays busy behind the one held.
    let args = [&PRUNING_NO_TIMERS[..], &["--concurrency", "1"]].concat();
    let serve = restartable(&via, &repo, workdir.path(), &args);
    serve.applied(&second);
    serve_at(&repo, &third);
    proxy.hold("PutResourcePolicy");
    push_hook(&serve, &second, &third);
    assert!(
        proxy.wait_for(Duration::from_secs(30), |p| p.op("PutResourcePolicy").seen
            >= 1),
        "no write came: {}",
        proxy.describe()
    );
    // The owner force-pushes back: answered while the run is busy, then kpr dies.
    serve_at(&repo, &second);
    forced_hook(&serve, &third, &second);
    let pending = std::fs::read_to_string(workdir.path().join("pending-pushes"));
    assert!(
        pending
            .as_deref()
            .is_ok_and(|p| p.contains(&format!("{second} {third} t"))),
        "{pending:?}"
    );
    drop(serve);
    proxy.release();
    // A replica behind the force-push serves the head it took away.
    serve_at(&repo, &third);
    let serve = restartable(&via, &repo, workdir.path(), &args);
    let st = serve.refused_as_replaced("the head taken away to be refused after the restart");
    assert_eq!(st["last_good_revision"], second.as_str(), "{st:#}");
    serve_at(&repo, &second);
    serve.trigger();
    serve.applied(&second);
    assert!(live(&emu, &c).is_none(), "the head taken away was applied");
    serve.stop();
}

/// The pending-push file is appended to, one line per push: after a crash it may hold more
/// than the queue's bound, and a line cut short. A restart takes the newest within the bound
/// and skips the cut line.
#[test]
fn pending_pushes_are_restored_within_the_bound() {
    let emu = common::kinesis_mock_private();
    let ([_], repo, _) = granted_in_turn(&emu, ["serve-bound-a"]);
    let workdir = tempfile::tempdir().unwrap();
    let url = repo.source_args(&[])[1].clone();
    let hex = |i: usize| format!("{i:040x}");
    let mut text = format!("source {url} main \n");
    for i in 1..=1100 {
        text.push_str(&format!("{} {} f d{i}\n", hex(i + 1), hex(i)));
    }
    text.push_str(&hex(5000)[..20]);
    std::fs::write(workdir.path().join("pending-pushes"), text).unwrap();
    let serve = restartable(&emu, &repo, workdir.path(), &PRUNING_NO_TIMERS);
    serve.poll(
        "the restored pushes to be judged",
        Duration::from_secs(120),
        |s| s.logs().contains("reconcile finished").then_some(()),
    );
    let logs = serve.stop();
    let restored = log_line(&logs, "had not judged");
    assert!(restored.contains("\"pushes\":1024"), "{restored}");
}

/// What a working copy kept for one branch (heads a force-push replaced, pushes not yet
/// judged) is not used for another: after `--git-branch` changes, the new branch's head is
/// applied, not refused as a head the old branch's force-push replaced.
#[test]
fn state_kept_for_another_branch_is_not_used() {
    let emu = common::kinesis_mock_private();
    let ([_, b], repo, [first, second]) = granted_in_turn(&emu, ["serve-other-a", "serve-other-b"]);
    let workdir = tempfile::tempdir().unwrap();
    let serve = restartable(&emu, &repo, workdir.path(), &PRUNING_NO_TIMERS);
    serve.applied(&second);
    // An amend of main: `second` is what a force-push replaced.
    serve_at(&repo, &first);
    forced_hook(&serve, &second, &first);
    serve.applied(&first);
    serve.stop();
    // The same repository spelt otherwise (a trailing slash) keeps what was kept: a replica
    // behind the amend still serves `second`, refused.
    let url = repo.source_args(&[])[1].clone();
    // On `branch` of `url`, in the same workdir, not waiting for a first run.
    let start_on = |url: &str, branch: &str| {
        let mut args = owned(&["--git-url", url, "--git-branch", branch]);
        args.extend(owned(&PRUNING_NO_TIMERS));
        Serve::start(
            &emu,
            Options {
                args,
                workdir: Some(workdir.path()),
                wait_ready: false,
                ..Options::default()
            },
        )
    };
    serve_at(&repo, &second);
    let respelt = start_on(&format!("{url}/"), "main");
    respelt.refused_as_replaced("the amended head to stay refused under a respelt URL");
    respelt.stop();
    serve_at(&repo, &first);
    // And a push of main never judged, left on disk.
    let pending = workdir.path().join("pending-pushes");
    std::fs::write(
        &pending,
        format!("source {url} main \n{second} {first} t -\n"),
    )
    .unwrap();
    // The same workdir now follows `release`, whose head is `second`.
    git(
        &repo.dir.path().join("origin.git"),
        &["update-ref", "refs/heads/release", &second],
    );
    let serve = start_on(&url, "release");
    serve.applied(&second);
    assert!(live(&emu, &b).is_some(), "{}", serve.logs());
    let logs = serve.stop();
    assert!(
        logs.contains("kept for another repository, branch or path"),
        "{logs}"
    );
}

/// A GitLab push hook for main from `before` to `after`: no `forced` in it.
fn gitlab_hook(serve: &Serve, before: &str, after: &str) {
    static EVENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = EVENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = serde_json::json!({"ref": "refs/heads/main", "before": before, "after": after});
    let r = serve.webhook(
        &[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", SECRET),
            ("X-Gitlab-Event-UUID", &format!("gl-{n}")),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 202, "{r:?}");
}

/// A working copy git can no longer use (a crash or a full disk empties object files) failed
/// every run from then on, restarts included. kpr moves it aside and fetches afresh, and keeps
/// its last good revision.
#[test]
fn a_damaged_working_copy_is_replaced() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("serve-damaged"));
    let repo = Repo::new();
    repo.write(
        "s.yaml",
        &manifest(
            &arn,
            &read_policy(&arn, "arn:aws:iam::111122223333:role/one"),
        ),
    );
    let first = repo.push("main", "v1");
    let workdir = tempfile::tempdir().unwrap();
    let serve = Serve::start(
        &emu,
        Options {
            args: repo.source_args(&["--interval", "1h"]),
            workdir: Some(workdir.path()),
            ..Options::default()
        },
    );
    serve.applied(&first);
    let mut emptied = 0;
    let mut dirs = vec![workdir.path().join("repo/.git/objects")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                std::fs::write(&path, b"").unwrap();
                emptied += 1;
            }
        }
    }
    assert!(emptied > 0);

    let v2 = read_policy(&arn, "arn:aws:iam::111122223333:role/two");
    repo.write("s.yaml", &manifest(&arn, &v2));
    let second = repo.push("main", "v2");
    assert_eq!(serve.github_push("main", "damaged").status, 202);
    let st = serve.applied(&second);
    assert!(
        live(&emu, &arn).is_some_and(|p| same_grant(&p, &v2)),
        "{st:#}"
    );
    assert!(serve.logs().contains("the git working copy is damaged"));
    let aside = workdir.path().join("repo.damaged");
    assert!(aside.is_dir());

    // One blob emptied after its fetch (a crash before it reached the disk): fsck finds every
    // object present, git names the empty file, and the copy is replaced all the same.
    std::fs::remove_dir_all(&aside).unwrap();
    let v3 = read_policy(&arn, "arn:aws:iam::111122223333:role/three");
    repo.write("s.yaml", &manifest(&arn, &v3));
    let fourth = repo.push("main", "v3");
    let copy = workdir.path().join("repo");
    git(&copy, &["fetch", "-q", "origin", "main"]);
    let blob = git(&copy, &["rev-parse", &format!("{fourth}:s.yaml")]);
    let blob = blob.trim();
    std::fs::write(
        copy.join(".git/objects").join(&blob[..2]).join(&blob[2..]),
        b"",
    )
    .unwrap();
    assert_eq!(serve.github_push("main", "empty-blob").status, 202);
    serve.applied(&fourth);
    assert!(live(&emu, &arn).is_some_and(|p| same_grant(&p, &v3)));
    assert!(aside.is_dir());

    // A failure that is not the copy's (a commit this file system cannot check out) leaves
    // the copy alone: a fresh clone would fail the same way, on every run.
    std::fs::remove_dir_all(&aside).unwrap();
    let work = repo.work();
    let blob = git(&work, &["hash-object", "-w", "s.yaml"]);
    let entry = format!("100644,{},{}.txt", blob.trim(), "n".repeat(300));
    git(&work, &["update-index", "--add", "--cacheinfo", &entry]);
    git(
        &work,
        &["commit", "-q", "-m", "a file name too long to check out"],
    );
    let third = repo.push_head("main");
    assert_eq!(serve.github_push("main", "too-long").status, 202);
    let st = serve.status_when(
        "the run that cannot check out",
        Duration::from_secs(20),
        |st| st["last_run"]["result"] == "fetch_failed" && st["last_run"]["revision"].is_null(),
    );
    assert_eq!(st["last_good_revision"], fourth.as_str(), "{st:#}");
    assert!(
        !aside.exists(),
        "an intact working copy was moved aside: {st:#}"
    );
    let _ = third;
    serve.stop();
}

/// A run whose prune is refused applies nothing, but what it would have changed is not
/// hidden: a hand-made grant on a declared resource is logged, listed and counted as drift.
#[test]
fn a_refused_prune_still_shows_the_drift_it_leaves() {
    let emu = common::kinesis_mock_private();
    let [a, x, y] =
        ["serve-rp-a", "serve-rp-x", "serve-rp-y"].map(|n| emu.create_stream(&unique(n)));
    for arn in [&x, &y] {
        emu.put_policy_raw(arn, &role_one(arn).to_string());
    }
    let intruder = read_policy(&a, "arn:aws:iam::999999999999:role/intruder");
    emu.put_policy_raw(&a, &intruder.to_string());
    let dir = common::Manifests::new(&[("a.yaml", &manifest(&a, &role_one(&a)))]);
    let mut args = vec!["--dir".to_string(), dir.arg()];
    args.extend(owned(&[
        "--interval",
        "1h",
        "--prune",
        "--max-deletes",
        "1",
    ]));
    // Never ready: no run completes.
    let serve = Serve::start(
        &emu,
        Options {
            args,
            wait_ready: false,
            ..Options::default()
        },
    );
    let st = serve.status_when("the run to be refused", Duration::from_secs(30), |st| {
        st["last_run"]["result"] == "refused"
    });
    assert!(same_grant(&live(&emu, &a).unwrap(), &intruder), "{st:#}");
    let listed: Vec<(&str, &str)> = st["last_run"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["arn"].as_str().unwrap(), r["action"].as_str().unwrap()))
        .collect();
    for (arn, action) in [(&a, "update"), (&x, "delete"), (&y, "delete")] {
        assert!(listed.contains(&(arn.as_str(), action)), "{arn}: {st:#}");
    }
    assert_eq!(st["resources"]["drifted"], 3, "{st:#}");
    let logs = serve.stop();
    assert!(
        logs.lines()
            .any(|l| l.contains("drift not corrected") && l.contains(&a) && l.contains("a.yaml:1")),
        "{logs}"
    );
}

/// A reset's webhook run that could not apply it (here its prune was refused) must not lose
/// the reset: the commit the webhook named is kept, across a restart too, and applied once
/// the run can go through.
#[test]
fn a_reset_whose_run_was_refused_is_applied_after_a_restart() {
    let emu = common::kinesis_mock_private();
    let ([_, b], repo, [first, second]) = granted_in_turn(&emu, ["serve-rst-a", "serve-rst-b"]);
    let workdir = tempfile::tempdir().unwrap();
    let start = |max_deletes: &str| {
        restartable(
            &emu,
            &repo,
            workdir.path(),
            &["--interval", "1h", "--prune", "--max-deletes", max_deletes],
        )
    };
    let serve = start("0");
    serve.applied(&second);
    serve_at(&repo, &first);
    let body = serde_json::json!({"ref": "refs/heads/main", "after": first});
    assert_eq!(
        serve
            .github_push_body(body.to_string().as_bytes(), "rst-1")
            .status,
        202
    );
    let st = serve.status_when(
        "the reset's run to be refused",
        Duration::from_secs(20),
        |st| st["last_run"]["result"] == "refused",
    );
    assert!(live(&emu, &b).is_some(), "{st:#}");
    serve.stop();

    let serve = start("5");
    serve.status_when("the reset to be applied", Duration::from_secs(30), |st| {
        st["last_good_revision"] == first.as_str()
    });
    assert!(live(&emu, &b).is_none());
    serve.stop();
}

/// What the service judged and awaits survives a restart: the late webhook of a push an
/// amend replaced does not bring the replaced head back, a redelivery is still a duplicate,
/// and a pushed commit a replica had not served yet is still awaited.
#[test]
fn what_was_judged_and_awaited_survives_a_restart() {
    let emu = common::kinesis_mock_private();
    let ([_, b, c], repo, [first, second, _]) = granted_in_turn(&emu, ["rm-a", "rm-b", "rm-c"]);
    let workdir = tempfile::tempdir().unwrap();
    let start = || {
        let args = [
            "--interval",
            "1h",
            "--retry-delay",
            "1h",
            "--reset-settle",
            "1h",
        ];
        restartable(&emu, &repo, workdir.path(), &args)
    };
    serve_at(&repo, &first);
    let serve = start();
    serve.applied(&first);
    // `second` is pushed, its webhook late; an amend replaces it, announced at once.
    let work = repo.work();
    git(&work, &["reset", "-q", "--hard", &second]);
    let two = read_policy(&b, "arn:aws:iam::111122223333:role/two");
    let amended = repo.amend("b.yaml", &manifest(&b, &two));
    let amend = forced_hook(&serve, &second, &amended);
    serve.applied(&amended);
    serve.stop();

    // Restarted while a replica serves the replaced head: refused, and still refused when
    // the replaced push's webhook comes at last.
    serve_at(&repo, &second);
    let serve = start();
    serve.refused_as_replaced("the replaced head to be refused after the restart");
    let runs = serve.runs();
    push_hook(&serve, &first, &second);
    let st = serve.run_after(runs, "the late webhook's run");
    assert!(
        st["last_run"]["result"] == "fetch_failed"
            && live(&emu, &b).is_some_and(|p| same_grant(&p, &two)),
        "{st:#}\n{}",
        serve.logs()
    );
    let again = delivered(&serve, &second, &amended, &amend);
    assert!(again.body.contains("duplicate"), "{again:?}");

    // A push announced while the replica lags, then a restart: still awaited, and applied
    // once served, with no webhook or scheduled run to bring it.
    serve_at(&repo, &amended);
    git(&work, &["reset", "-q", "--hard", &amended]);
    repo.write("c.yaml", &manifest(&c, &role_one(&c)));
    let next = repo.commit("c");
    git(&work, &["push", "-q", &repo.url(), "HEAD:refs/heads/next"]);
    push_hook(&serve, &amended, &next);
    serve.awaits(&next, "the push to be awaited");
    serve.stop();
    let serve = start();
    serve.applied(&amended);
    serve_at(&repo, &next);
    serve.applied(&next);
    assert!(live(&emu, &c).is_some());
    serve.stop();
}

/// With AWS unreachable every resource fails: the run completes (ready, its revision the last
/// good one) but converged nothing, so the time of the last success does not move from the
/// start's, where it is from the first scrape (missing, it kept the alert on it quiet). Nor
/// does a run with nothing to do while the resource still fails (a push that changed no
/// manifest, a payload-less trigger).
#[test]
fn a_run_where_every_resource_failed_is_no_success() {
    let emu = common::kinesis_mock_private();
    let arn = emu.create_stream(&unique("af"));
    let dir = common::Manifests::new(&[("s.yaml", &manifest(&arn, &role_one(&arn)))]);
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let serve = Serve::start(
        &emu,
        Options {
            args: owned(&[
                "--dir",
                &dir.arg(),
                "--interval",
                "1s",
                "--retry-delay",
                "1h",
            ]),
            env: vec![("KPR_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))],
            ..Options::default()
        },
    );
    let started = serve.metric("kpr_last_success_timestamp_seconds", &[]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started > now - 60.0 && started <= now,
        "{}",
        serve.metrics()
    );
    // The first run fails the resource; scheduled runs after it leave it to its backoff.
    // Neither converges anything.
    let st = serve.status_when("three runs", Duration::from_secs(60), |st| {
        st["runs"].as_u64() >= Some(3) && st["running"] == false
    });
    assert!(
        st["last_error"]["result"] == "partial"
            && st["last_run"]["skipped"]
                .as_array()
                .is_some_and(|s| s.len() == 1)
            && st["last_success_at"].is_null(),
        "{st:#}"
    );
    // A payload-less trigger finds nothing changed: a run with nothing to do.
    let runs = st["runs"].as_u64().unwrap();
    serve.trigger();
    let st = serve.run_after(runs, "the triggered run");
    assert!(
        st["last_run"]["result"] == "success" && st["last_success_at"].is_null(),
        "{st:#}"
    );
    assert_eq!(serve.get("/readyz").status, 200);
    assert_eq!(
        serve.metric("kpr_last_success_timestamp_seconds", &[]),
        started,
        "{}",
        serve.metrics()
    );
    serve.stop();
}

/// While a revision is invalid, a scheduled scan corrects the files it did not change, but
/// not the resources waiting out their backoff: its report counts only what it took, and
/// lists the others as skipped.
#[test]
fn an_invalid_scan_reports_what_it_left_to_backoff() {
    let emu = common::kinesis_mock();
    let a = emu.create_stream(&unique("serve-inv-a"));
    let missing = emu.stream_arn(&unique("serve-inv-missing"));
    let dir = common::Manifests::new(&[
        ("a.yaml", &manifest(&a, &read_policy(&a, "111122223333"))),
        (
            "m.yaml",
            &manifest(&missing, &read_policy(&missing, "111122223333")),
        ),
    ]);
    let serve = Serve::dir(&emu, &dir, &["--interval", "1s", "--retry-delay", "1h"]);
    serve.status_when("the first run", Duration::from_secs(20), |st| {
        st["last_run"]["result"] == "partial"
    });
    dir.write("bad.yaml", "arn: x\n");
    let st = serve.status_when("a scan of the invalid set", Duration::from_secs(20), |st| {
        st["last_run"]["result"] == "invalid" && st["last_run"]["trigger"] == "schedule"
    });
    let error = st["last_run"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the 1 resource(s)") && error.contains("1 more wait out their backoff"),
        "{st:#}"
    );
    assert_eq!(
        st["last_run"]["skipped"][0]["arn"],
        missing.as_str(),
        "{st:#}"
    );
    // Where to look: the manifest that declares it.
    assert_eq!(st["last_run"]["skipped"][0]["source"], "m.yaml:1", "{st:#}");
    serve.stop();
}

/// A fetch that fails while a pushed commit is awaited counts as a miss: the fetches for it
/// space out and end, rather than asking a git host that is down every second.
#[test]
fn a_failing_fetch_spaces_out_the_wait_for_a_pushed_commit() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("serve-late-down"));
    let repo = Repo::new();
    let v1 = read_policy(&arn, "arn:aws:iam::111122223333:role/one");
    repo.write("s.yaml", &manifest(&arn, &v1));
    let first = repo.push("main", "v1");
    let serve = Serve::git(&emu, &repo, &["--interval", "1h", "--retry-delay", "1h"]);
    serve.applied(&first);
    let unpushed = repo.commit("never served");
    let body = serde_json::json!({"ref": "refs/heads/main", "after": unpushed}).to_string();
    assert_eq!(
        serve.github_push_body(body.as_bytes(), "down-1").status,
        202
    );
    serve.poll("the commit to be awaited", Duration::from_secs(20), |s| {
        (s.status()["awaited_commit"] == unpushed.as_str()).then_some(())
    });
    // The git host goes away.
    let origin = repo.dir.path().join("origin.git");
    std::fs::rename(&origin, repo.dir.path().join("gone.git")).unwrap();
    let waits = serve.poll(
        "three failed fetches for the awaited commit",
        Duration::from_secs(30),
        |s| {
            let waits: Vec<Duration> = s
                .logs()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|l| l["reason"] == "awaited_commit")
                .map(|l| humantime::parse_duration(l["after"].as_str().unwrap()).unwrap())
                .collect();
            let failed = s.logs().matches("fetching the manifests failed").count();
            (failed >= 3 && waits.len() >= 4).then_some(waits)
        },
    );
    // One wait after the miss of the webhook's own run, then one per failed fetch, each longer.
    assert!(
        waits.windows(2).all(|w| w[1] > w[0]),
        "{waits:?}\n{}",
        serve.logs()
    );
    serve.stop();
}

#[test]
fn a_scheduled_run_undoes_a_hand_edit() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("serve-heal"));
    let want = read_policy(&arn, "arn:aws:iam::111122223333:role/one");
    let dir = common::Manifests::new(&[("s.yaml", &manifest(&arn, &want))]);
    let serve = Serve::dir(&emu, &dir, &["--interval", "1s"]);
    wait_for("the startup run to apply", Duration::from_secs(20), || {
        live(&emu, &arn).filter(|p| same_grant(p, &want))
    });
    let hand = read_policy(&arn, "arn:aws:iam::999999999999:role/intruder");
    emu.put_policy_raw(&arn, &hand.to_string());
    let healed_at = Instant::now();
    wait_for("self-heal", Duration::from_secs(20), || {
        live(&emu, &arn).filter(|p| same_grant(p, &want))
    });
    eprintln!("hand edit undone after {:?}", healed_at.elapsed());
    // The write lands before the run counts it (after its read-back, and at the run's end).
    serve.poll(
        "the healing run to be counted",
        Duration::from_secs(20),
        |s| {
            let m = s.metrics();
            (metric(&m, "kpr_reconcile_runs_total", &[("trigger", "schedule")]) >= 1.0
                && metric(
                    &m,
                    "kpr_changes_total",
                    &[("action", "update"), ("outcome", "applied")],
                ) >= 1.0)
                .then_some(())
        },
    );
    // With a directory source a webhook triggers a run too (incremental: see below).
    let runs = serve.metric("kpr_reconcile_runs_total", &[("trigger", "webhook")]);
    serve.trigger();
    serve.poll("the webhook run", Duration::from_secs(20), |s| {
        (s.metric("kpr_reconcile_runs_total", &[("trigger", "webhook")]) > runs).then_some(())
    });
    let logs = serve.stop();
    // The log says whom the correction stopped granting, not only that the policy differed.
    assert!(
        logs.lines().any(|l| l.contains("\"change applied\"")
            && l.contains("allows no longer: arn:aws:iam::999999999999:role/intruder")),
        "{logs}"
    );
}

/// A scheduled scan that fails (here: an invalid file) is owed: a webhook's incremental run
/// that succeeds in the meantime does not pay for it, and the full retry still comes and
/// undoes drift in files the webhook did not touch.
#[test]
fn a_failed_scheduled_scan_is_retried_even_after_a_webhook_run_succeeds() {
    let emu = common::kinesis_mock();
    let a = emu.create_stream(&unique("serve-owed-a"));
    let b = emu.create_stream(&unique("serve-owed-b"));
    let pa = read_policy(&a, "arn:aws:iam::111122223333:role/one");
    let pb = read_policy(&b, "arn:aws:iam::111122223333:role/two");
    let dir = common::Manifests::new(&[
        ("a.yaml", &manifest(&a, &pa)),
        ("b.yaml", &manifest(&b, &pb)),
    ]);
    // One scheduled scan, 20 s from now (the schedule is daily, in UTC); none after it. The
    // start and the edits below must come before it, and the webhook before the retry 12 s
    // after it: margins for a loaded 2-core machine, checked below rather than assumed.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let fire = now() + 20;
    let day = fire % 86_400;
    let cron = format!("{} {} {} * * *", day % 60, day / 60 % 60, day / 3600);
    let serve = Serve::dir(&emu, &dir, &["--schedule", &cron, "--retry-delay", "12s"]);
    wait_for("the startup run to apply", Duration::from_secs(15), || {
        live(&emu, &b).filter(|p| same_grant(p, &pb))
    });
    emu.put_policy_raw(
        &b,
        &read_policy(&b, "arn:aws:iam::999999999999:role/intruder").to_string(),
    );
    dir.write("a.yaml", &format!("{}polcy: {{}}\n", manifest(&a, &pa)));
    assert!(
        now() < fire,
        "the machine was too slow to set up before the scheduled scan"
    );
    let st = serve.status_when(
        "the scheduled scan to fail",
        Duration::from_secs(30),
        |st| st["last_run"]["trigger"] == "schedule",
    );
    assert_eq!(st["last_run"]["result"], "invalid", "{st:#}");
    assert_eq!(st["next_retry"]["scan"], "full", "{st:#}");
    // Fixed, and a webhook reconciles the edited file before the retry is due.
    dir.write("a.yaml", &manifest(&a, &pa));
    serve.trigger();
    let st = serve.status_when("the webhook run", Duration::from_secs(30), |st| {
        st["last_run"]["trigger"] == "webhook"
    });
    assert_eq!(st["last_run"]["result"], "success", "{st:#}");
    assert_eq!(st["next_retry"]["scan"], "full", "still owed: {st:#}");
    wait_for(
        "the owed full scan to undo the hand edit",
        Duration::from_secs(30),
        || live(&emu, &b).filter(|p| same_grant(p, &pb)),
    );
    let st = serve.status_when("the retry to be counted", Duration::from_secs(30), |st| {
        st["last_run"]["trigger"] == "retry"
    });
    assert_eq!(st["last_run"]["scope"], "full", "{st:#}");
    assert!(st["next_retry"].is_null(), "paid: {st:#}");
    serve.stop();
}

/// A failing resource is left out of full scans while it waits out its backoff, but not once its
/// manifest changed: the change may be its fix, and it must not wait for the backoff (here an
/// hour) to end.
#[test]
fn a_full_scan_takes_a_backed_off_resource_whose_manifest_changed() {
    let emu = common::kinesis_mock();
    let name = unique("serve-fixed");
    let arn = emu.stream_arn(&name);
    let v1 = read_policy(&arn, "arn:aws:iam::111122223333:role/one");
    let v2 = read_policy(&arn, "arn:aws:iam::111122223333:role/two");
    let dir = common::Manifests::new(&[("a.yaml", &manifest(&arn, &v1))]);
    let serve = Serve::start(
        &emu,
        Options {
            args: owned(&[
                "--dir",
                &dir.arg(),
                "--interval",
                "1s",
                "--retry-delay",
                "1h",
            ]),
            wait_ready: false,
            ..Options::default()
        },
    );
    // The stream does not exist yet: the first run fails it, for an hour.
    serve.status_when("the resource to back off", Duration::from_secs(30), |st| {
        st["resources"]["backing_off"] == 1
    });
    let scans = serve.metric("kpr_reconcile_runs_total", &[("trigger", "schedule")]);
    serve.poll(
        "a scheduled scan that skips it",
        Duration::from_secs(30),
        |s| {
            (s.metric("kpr_reconcile_runs_total", &[("trigger", "schedule")]) > scans).then_some(())
        },
    );
    emu.create_stream(&name);
    dir.write("a.yaml", &manifest(&arn, &v2));
    wait_for(
        "a scheduled scan to apply the edited manifest",
        Duration::from_secs(30),
        || live(&emu, &arn).filter(|p| same_grant(p, &v2)),
    );
    serve.stop();
}

/// While the manifests are invalid, nothing from the bad revision is applied, not even its
/// valid changes; but scheduled scans still undo drift in the files it did not touch.
#[test]
fn an_invalid_revision_does_not_stop_self_healing_of_the_files_it_left_alone() {
    let emu = common::kinesis_mock();
    let [a, b, c] =
        ["serve-bad-a", "serve-bad-b", "serve-bad-c"].map(|n| emu.create_stream(&unique(n)));
    let one = role_one;
    let two = |arn: &str| read_policy(arn, "arn:aws:iam::111122223333:role/two");
    let dir = common::Manifests::new(&[
        ("a.yaml", &manifest(&a, &one(&a))),
        ("b.yaml", &manifest(&b, &one(&b))),
        ("c.yaml", &manifest(&c, &one(&c))),
    ]);
    let serve = Serve::dir(&emu, &dir, &["--interval", "1s", "--retry-delay", "1h"]);
    wait_for("the startup run to apply", Duration::from_secs(20), || {
        live(&emu, &c).filter(|p| same_grant(p, &one(&c)))
    });
    // A bad revision: a.yaml broken, c.yaml validly changed. And b's policy edited by hand.
    dir.write(
        "a.yaml",
        &format!("{}polcy: {{}}\n", manifest(&a, &two(&a))),
    );
    dir.write("c.yaml", &manifest(&c, &two(&c)));
    emu.put_policy_raw(
        &b,
        &read_policy(&b, "arn:aws:iam::999999999999:role/intruder").to_string(),
    );
    wait_for(
        "a scheduled scan to undo the hand edit",
        Duration::from_secs(30),
        || live(&emu, &b).filter(|p| same_grant(p, &one(&b))),
    );
    let st = serve.status_when("the run to be recorded", Duration::from_secs(30), |st| {
        st["last_run"]["result"] == "invalid" && st["last_run"]["summary"]["update"] == 1
    });
    assert!(
        st["last_run"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not change")),
        "{st:#}"
    );
    // Nothing of the bad revision: neither the broken file nor the valid change beside it.
    assert!(same_grant(&live(&emu, &a).unwrap(), &one(&a)));
    assert!(same_grant(&live(&emu, &c).unwrap(), &one(&c)));
    serve.stop();
}

/// The same after a restart: the last good revision is recorded in the working copy, so the
/// first run of a new process, on a branch already invalid, still corrects the files the bad
/// revision left alone.
#[test]
fn a_restart_on_an_invalid_branch_still_corrects_the_files_it_left_alone() {
    let emu = common::kinesis_mock();
    let [a, b] = ["serve-rbad-a", "serve-rbad-b"].map(|n| emu.create_stream(&unique(n)));
    let one = role_one;
    let two = |arn: &str| read_policy(arn, "arn:aws:iam::111122223333:role/two");
    let repo = Repo::new();
    repo.write("a.yaml", &manifest(&a, &one(&a)));
    repo.write("b.yaml", &manifest(&b, &one(&b)));
    let good = repo.push("main", "good");
    let workdir = tempfile::tempdir().unwrap();
    let start = || {
        Serve::start(
            &emu,
            Options {
                args: repo.source_args(&["--interval", "1h", "--retry-delay", "1h"]),
                workdir: Some(workdir.path()),
                wait_ready: false,
                ..Options::default()
            },
        )
    };
    let serve = start();
    serve.applied(&good);
    serve.stop();

    // While kpr is down: a bad push (a.yaml validly changed, then broken) and a hand edit of b.
    repo.write(
        "a.yaml",
        &format!("{}polcy: {{}}\n", manifest(&a, &two(&a))),
    );
    repo.push("main", "bad");
    emu.put_policy_raw(
        &b,
        &read_policy(&b, "arn:aws:iam::999999999999:role/intruder").to_string(),
    );
    let serve = start();
    let st = serve.status_when("the startup run to end", Duration::from_secs(30), |st| {
        st["last_run"]["result"] == "invalid"
    });
    assert_eq!(st["last_run"]["summary"]["update"], 1, "{st:#}");
    // What the earlier process applied, not "none".
    assert_eq!(st["last_good_revision"], good.as_str(), "{st:#}");
    assert!(st["last_success_at"].is_null(), "{st:#}");
    assert!(same_grant(&live(&emu, &b).unwrap(), &one(&b)), "{st:#}");
    assert!(same_grant(&live(&emu, &a).unwrap(), &one(&a)));
    assert!(
        serve.logs().contains(&good) && serve.logs().contains("before it"),
        "{}",
        serve.logs()
    );
    serve.stop();
}

/// While the git host is down, self-healing goes on: a full scan corrects drift as the last
/// good revision declares it, after a restart too, and the run still fails (it is retried,
/// and "stopped converging" still fires). The restarted service is then ready: out of its
/// Service it would miss the webhooks of the pushes made once git is back.
#[test]
fn a_git_host_down_does_not_stop_self_healing() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("serve-gitdown"));
    let repo = Repo::new();
    repo.write("a.yaml", &manifest(&arn, &role_one(&arn)));
    let good = repo.push("main", "good");
    let workdir = tempfile::tempdir().unwrap();
    let args = ["--interval", "1h", "--retry-delay", "1h"];
    let serve = restartable(&emu, &repo, workdir.path(), &args);
    serve.applied(&good);
    serve.stop();

    let origin = repo.dir.path().join("origin.git");
    std::fs::rename(&origin, repo.dir.path().join("gone.git")).unwrap();
    emu.put_policy_raw(
        &arn,
        &read_policy(&arn, "arn:aws:iam::999999999999:role/intruder").to_string(),
    );
    let serve = restartable(&emu, &repo, workdir.path(), &args);
    let st = serve.status_when("the startup run to end", Duration::from_secs(30), |st| {
        st["last_run"]["result"] == "fetch_failed"
    });
    assert!(
        same_grant(&live(&emu, &arn).unwrap(), &role_one(&arn)),
        "{st:#}"
    );
    assert_eq!(st["last_run"]["summary"]["update"], 1, "{st:#}");
    let error = st["last_run"]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "1 resource(s) of the last good revision {good} were reconciled"
        )),
        "{error}"
    );
    assert!(st["last_success_at"].is_null(), "{st:#}");
    assert_eq!(st["resources"]["in_sync"], 1, "{st:#}");
    assert_eq!(serve.get("/readyz").status, 200, "{st:#}");
    serve.stop();
}

/// A stream granted to `role/one` at `base`, and to an intruder at `granted` (a grant by
/// mistake), served every second with resets refused for an hour; returned once `granted`
/// is applied.
struct Mistake {
    arn: String,
    repo: Repo,
    base: String,
    granted: String,
    serve: Serve,
    /// Its working copy, kept for [`Mistake::restart`].
    workdir: tempfile::TempDir,
}

impl Mistake {
    fn applied(emu: &Emulator, name: &str) -> Mistake {
        let arn = emu.create_stream(&unique(name));
        let repo = Repo::new();
        repo.write("a.yaml", &manifest(&arn, &role_one(&arn)));
        let base = repo.push("main", "base");
        let intruder = read_policy(&arn, "arn:aws:iam::999999999999:role/intruder");
        repo.write("a.yaml", &manifest(&arn, &intruder));
        let granted = repo.push("main", "a grant by mistake");
        let workdir = tempfile::tempdir().unwrap();
        let serve = Self::serve(emu, &repo, workdir.path());
        serve.applied(&granted);
        Mistake {
            arn,
            repo,
            base,
            granted,
            serve,
            workdir,
        }
    }

    fn serve(emu: &Emulator, repo: &Repo, workdir: &Path) -> Serve {
        restartable(
            emu,
            repo,
            workdir,
            &["--interval", "1s", "--reset-settle", "1h"],
        )
    }

    /// The service stopped and started again on the same working copy; returns once its
    /// start-up run has ended.
    fn restart(self, emu: &Emulator) -> Mistake {
        self.serve.stop();
        let serve = Self::serve(emu, &self.repo, self.workdir.path());
        serve.status_when("the start-up run to end", Duration::from_secs(30), |st| {
            st["runs"].as_u64() >= Some(1) && st["running"] == false
        });
        Mistake { serve, ..self }
    }

    /// Waits for two more runs (scans, every second) to end; returns the status.
    fn two_scans(&self) -> serde_json::Value {
        let runs = self.serve.runs();
        self.serve
            .status_when("two more scans", Duration::from_secs(20), |st| {
                st["runs"].as_u64() >= Some(runs + 2) && st["running"] == false
            })
    }

    /// Webhooks, not the commits, of a push on `granted` and of the branch then rewritten
    /// from it onto `base`, the grant withdrawn; the owner puts the live policy back by hand.
    /// Two scans later, nothing has put the grant back. Returns the rewritten head.
    fn rewritten_unserved(&self, emu: &Emulator) -> String {
        self.repo.write("NOTES.md", "more\n");
        let next = self.repo.commit("more");
        push_hook(&self.serve, &self.granted, &next);
        git(&self.repo.work(), &["reset", "-q", "--hard", &self.base]);
        self.repo.write("NOTES.md", "the grant was a mistake\n");
        let rewritten = self.repo.commit("withdrawn");
        forced_hook(&self.serve, &next, &rewritten);
        emu.put_policy_raw(&self.arn, &role_one(&self.arn).to_string());
        let st = self.two_scans();
        assert_eq!(st["last_run"]["result"], "fetch_failed", "{st:#}");
        assert!(self.as_base(emu), "{st:#}");
        rewritten
    }

    /// Whether the live policy is `base`'s, as the owner put it back by hand.
    fn as_base(&self, emu: &Emulator) -> bool {
        live(emu, &self.arn).is_some_and(|p| same_grant(&p, &role_one(&self.arn)))
    }
}

/// Once a reset is applied, the scans that follow take the branch's head: the reset's commit
/// is an ancestor of the head it replaced, not that head.
#[test]
fn scans_after_an_applied_reset_take_the_head() {
    let emu = common::kinesis_mock();
    let m = Mistake::applied(&emu, "serve-reset-then-scan");
    serve_at(&m.repo, &m.base);
    forced_hook(&m.serve, &m.granted, &m.base);
    m.serve.applied(&m.base);
    let st = m.two_scans();
    assert_eq!(st["last_run"]["result"], "success", "{st:#}");
    assert!(m.as_base(&emu), "{st:#}");
    m.serve.stop();
}

/// A replica still serves what was applied while a force-push announced since, from a commit
/// kpr never fetched, has not arrived: the owner's hand fix to match it is not undone.
#[test]
fn a_force_push_not_yet_served_keeps_what_was_applied_from_coming_back() {
    let emu = common::kinesis_mock();
    let m = Mistake::applied(&emu, "serve-forced-lag");
    let rewritten = m.rewritten_unserved(&emu);
    m.repo.force_main_as_is();
    m.serve.applied(&rewritten);
    m.serve.stop();
}

/// A reset's webhook came while a replica still serves the head it replaced, which is what
/// was applied, and the owner removed by hand the grant the reset withdraws: scans must not
/// put it back while the replica lags.
#[test]
fn a_scan_does_not_reapply_the_head_a_pending_reset_replaced() {
    let emu = common::kinesis_mock();
    let m = Mistake::applied(&emu, "serve-reset-lag");
    // The reset's webhook; the replica still serves `granted`.
    forced_hook(&m.serve, &m.granted, &m.base);
    emu.put_policy_raw(&m.arn, &role_one(&m.arn).to_string());
    m.serve
        .refused_as_replaced("the replaced head to be refused");
    let st = m.two_scans();
    assert!(m.as_base(&emu), "{st:#}");
    serve_at(&m.repo, &m.base);
    m.serve.applied(&m.base);
    m.serve.stop();
}

/// A force-push announced during an outage, from a commit kpr never fetched, may take the
/// last good revision back: it is not put back while the git host is down, nor by the
/// start-up run of a restart during the outage.
#[test]
fn a_git_host_down_after_a_forced_push_puts_nothing_back() {
    let emu = common::kinesis_mock();
    let m = Mistake::applied(&emu, "serve-gitdown-forced");
    let origin = m.repo.dir.path().join("origin.git");
    let gone = m.repo.dir.path().join("gone.git");
    std::fs::rename(&origin, &gone).unwrap();
    // Pushed while kpr cannot fetch: a commit on `granted`, then the branch rewritten from it.
    let rewritten = m.rewritten_unserved(&emu);
    let m = m.restart(&emu);
    assert!(m.as_base(&emu), "{}", m.serve.logs());
    std::fs::rename(&gone, &origin).unwrap();
    m.repo.force_main_as_is();
    m.serve.applied(&rewritten);
    m.serve.stop();
}

/// Not while the branch may be going back from the last good revision: a head fetched behind
/// it (a reset no webhook announced) was refused, and the owner removed by hand the grant the
/// reset withdraws. The outage that follows must not put it back, nor a restart during it.
#[test]
fn a_git_host_down_after_a_refused_head_puts_nothing_back() {
    let emu = common::kinesis_mock();
    let m = Mistake::applied(&emu, "serve-gitdown-reset");
    serve_at(&m.repo, &m.base);
    m.serve.status_when(
        "the reset-away head to be refused",
        Duration::from_secs(20),
        |st| {
            st["last_run"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("is behind"))
        },
    );
    emu.put_policy_raw(&m.arn, &role_one(&m.arn).to_string());
    let origin = m.repo.dir.path().join("origin.git");
    std::fs::rename(&origin, m.repo.dir.path().join("gone.git")).unwrap();
    let st = m.two_scans();
    assert!(
        st["last_run"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("git fetch failed")),
        "{st:#}"
    );
    assert!(m.as_base(&emu), "{st:#}");
    let m = m.restart(&emu);
    assert!(m.as_base(&emu), "{}", m.serve.logs());
    m.serve.stop();
}

/// A forced push that may take the last good revision away, arriving while an outage's scan
/// heals from that revision, stops the scan's writes: what the revision granted may be what
/// the push withdrew. The writes already sent finish; those waiting their turn are not sent.
#[test]
fn a_forced_push_during_an_outage_heal_stops_its_writes() {
    let emu = common::kinesis_mock();
    let arns: Vec<String> = (0..6)
        .map(|i| emu.create_stream(&unique(&format!("serve-heal-stop-{i}"))))
        .collect();
    let repo = Repo::new();
    for (i, arn) in arns.iter().enumerate() {
        repo.write(&format!("s{i}.yaml"), &manifest(arn, &role_one(arn)));
    }
    let good = repo.push("main", "granted");
    // Two requests a second and one resource at a time: the heal's reads, then each change's
    // write and read-back, about a second each. (Concurrent, the writes could all win the
    // limiter's turns before the first read-back, and all be sent before the push came.)
    let serve = Serve::git(
        &emu,
        &repo,
        &[
            "--interval",
            "5s",
            "--retry-delay",
            "1h",
            "--rate-limit",
            "2",
            "--concurrency",
            "1",
        ],
    );
    serve.applied(&good);
    let origin = repo.dir.path().join("origin.git");
    std::fs::rename(&origin, repo.dir.path().join("gone.git")).unwrap();
    let mut st = serve.status_when("a scan to find git down", Duration::from_secs(30), |st| {
        st["last_run"]["result"] == "fetch_failed" && st["running"] == false
    });
    // The heal must read every policy gone: the deletes are taken again until they fell
    // between two scans (no scan started or ended meanwhile).
    let mut delete_args = vec!["delete-policy"];
    delete_args.extend(arns.iter().map(String::as_str));
    for attempt in 0.. {
        assert!(attempt < 5, "no quiet moment between scans: {st:#}");
        let runs = st["runs"].clone();
        emu.admin(&delete_args, &[]);
        let after = serve.status();
        if after["runs"] == runs && after["running"] == false {
            break;
        }
        st = serve.idle();
    }
    let applied = |logs: &str| logs.matches("\"change applied\"").count();
    let before = applied(&serve.logs());
    wait_for("the heal's first write", Duration::from_secs(30), || {
        (applied(&serve.logs()) > before).then_some(())
    });
    // From a head kpr never saw (pushed during the outage), not from the revision it heals
    // from: with git down, nothing tells whether that head still holds it.
    forced_hook(&serve, &"2".repeat(40), &"1".repeat(40));
    let logs = wait_for("the heal to end", Duration::from_secs(30), || {
        let logs = serve.logs();
        let hooked = logs.find("webhook: reconcile queued")?;
        logs[hooked..]
            .contains("\"reconcile finished\"")
            .then_some(logs)
    });
    // After the push, only the writes already sent finish (their read-backs wait their turn
    // too); the rest are left.
    let hooked = logs.find("webhook: reconcile queued").unwrap();
    let end = hooked + logs[hooked..].find("\"reconcile finished\"").unwrap();
    assert!(
        logs[hooked..end].contains("interrupted by a push that may have taken the last good"),
        "the heal went on:\n{logs}"
    );
    assert!(applied(&logs) - before < arns.len(), "{logs}");
    serve.stop();
}

/// A ConfigMap mounted as the manifest directory is updated by swapping its `..data` link
/// whole. A run that read some files before a swap and some after mixed two versions: a
/// resource moved between files was missing from it, and --prune deleted its policy. Runs
/// every second, swaps as fast as they come: no delete, the policy never gone.
#[test]
fn a_configmap_swapped_mid_read_is_read_again_not_pruned_from() {
    use std::os::unix::fs::symlink;
    // Its own account: --prune must find nothing else to delete.
    let emu = common::kinesis_mock_private();
    let [other, victim, third, fourth] = [
        "serve-cm-other",
        "serve-cm-victim",
        "serve-cm-third",
        "serve-cm-fourth",
    ]
    .map(|n| emu.create_stream(&unique(n)));
    let one = role_one;
    let dir = common::Manifests::new(&[]);
    let base = dir.path();
    let both = format!(
        "{}---\n{}",
        manifest(&other, &one(&other)),
        manifest(&victim, &one(&victim))
    );
    // Both versions declare every stream; the victim moves from z.yaml, beside the fourth,
    // to a.yaml, beside the first. A read that took a.yaml before a swap and z.yaml after it
    // declares no victim. Comments
    // between them (8 MB, in documents of 100 KB) make each read long enough to straddle a
    // swap.
    let comments = format!("# {}\n", "x".repeat(198)).repeat(500) + "---\n";
    let filler = comments.repeat(80) + &manifest(&third, &one(&third));
    for (generation, a, z) in [
        (
            "..gen1",
            manifest(&other, &one(&other)),
            format!(
                "{}---\n{}",
                manifest(&victim, &one(&victim)),
                manifest(&fourth, &one(&fourth))
            ),
        ),
        ("..gen2", both.clone(), manifest(&fourth, &one(&fourth))),
    ] {
        let g = base.join(generation);
        std::fs::create_dir(&g).unwrap();
        std::fs::write(g.join("a.yaml"), a).unwrap();
        std::fs::write(g.join("m.yaml"), &filler).unwrap();
        std::fs::write(g.join("z.yaml"), z).unwrap();
    }
    symlink("..gen1", base.join("..data")).unwrap();
    for f in ["a.yaml", "m.yaml", "z.yaml"] {
        symlink(format!("..data/{f}"), base.join(f)).unwrap();
    }
    let serve = Serve::dir(
        &emu,
        &dir,
        &["--interval", "1s", "--prune", "--retry-delay", "1h"],
    );
    assert!(live(&emu, &victim).is_some());
    // As kubelet swaps: a new link beside, renamed over `..data`.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, base) = (stop.clone(), base.to_path_buf());
        std::thread::spawn(move || {
            let mut swaps = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let next = if swaps.is_multiple_of(2) {
                    "..gen2"
                } else {
                    "..gen1"
                };
                symlink(next, base.join("..data_tmp")).unwrap();
                std::fs::rename(base.join("..data_tmp"), base.join("..data")).unwrap();
                swaps += 1;
                std::thread::sleep(Duration::from_millis(37));
            }
            swaps
        })
    };
    let runs = serve.runs();
    serve.status_when("ten runs amid the swaps", Duration::from_secs(150), |st| {
        st["runs"].as_u64().unwrap() >= runs + 10
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(swapper.join().unwrap() > 20);
    let logs = serve.stop();
    assert!(
        !logs.lines().any(|l| l.contains("\"action\":\"delete\"")),
        "a policy both versions declare was deleted:\n{logs}"
    );
    assert!(live(&emu, &victim).is_some());
}

/// A bad revision that declares a resource a second time, in a new file that sorts first,
/// puts the error on the unchanged file's declaration: that one resource is left out of the
/// correction, not the rest of its file.
#[test]
fn a_duplicate_in_a_new_file_leaves_the_rest_of_the_old_file_corrected() {
    let emu = common::kinesis_mock();
    let [b, d] = ["serve-dup-b", "serve-dup-d"].map(|n| emu.create_stream(&unique(n)));
    let one = role_one;
    let both = format!("{}---\n{}", manifest(&b, &one(&b)), manifest(&d, &one(&d)));
    let dir = common::Manifests::new(&[("m.yaml", &both)]);
    let serve = Serve::dir(&emu, &dir, &["--interval", "1s", "--retry-delay", "1h"]);
    wait_for("the startup run to apply", Duration::from_secs(20), || {
        live(&emu, &d).filter(|p| same_grant(p, &one(&d)))
    });
    dir.write("0dup.yaml", &manifest(&d, &one(&d)));
    let intruder = |arn: &str| read_policy(arn, "arn:aws:iam::999999999999:role/intruder");
    emu.put_policy_raw(&b, &intruder(&b).to_string());
    emu.put_policy_raw(&d, &intruder(&d).to_string());
    wait_for(
        "a scheduled scan to undo the hand edit",
        Duration::from_secs(30),
        || live(&emu, &b).filter(|p| same_grant(p, &one(&b))),
    );
    // The write lands before the run records its result: wait for that, not the first look.
    let st = serve.status_when("the invalid scan to end", Duration::from_secs(20), |st| {
        st["last_run"]["result"] == "invalid" && st["running"] == false
    });
    // Both places named as the source names its files.
    let error = st["last_run"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("m.yaml:") && error.contains("here and at 0dup.yaml:1 "),
        "{st:#}"
    );
    // The resource declared twice is the one left alone: which declaration would apply?
    assert!(
        live(&emu, &d).is_some_and(|p| same_grant(&p, &intruder(&d))),
        "{st:#}"
    );
    serve.stop();
}

/// Behind a symlink git diff names the link's target, not the path kpr read: an invalid
/// revision's change there must not pass for an untouched file and be applied. Both a link in
/// the tree and a `--git-path` that is itself a link.
#[test]
fn an_invalid_revision_applies_nothing_behind_a_symlink() {
    let emu = common::kinesis_mock();
    for linked_path in [false, true] {
        let [a, c] = ["serve-badlink-a", "serve-badlink-c"].map(|n| emu.create_stream(&unique(n)));
        let one = role_one;
        let two = |arn: &str| read_policy(arn, "arn:aws:iam::111122223333:role/two");
        let repo = Repo::new();
        // Either m/link.yaml -> ../shared/c.yaml, or m -> real with both files in real/.
        let (a_file, c_file) = if linked_path {
            std::fs::create_dir_all(repo.work().join("real")).unwrap();
            std::os::unix::fs::symlink("real", repo.work().join("m")).unwrap();
            ("real/a.yaml", "real/c.yaml")
        } else {
            std::fs::create_dir_all(repo.work().join("m")).unwrap();
            std::os::unix::fs::symlink("../shared/c.yaml", repo.work().join("m/link.yaml"))
                .unwrap();
            ("m/a.yaml", "shared/c.yaml")
        };
        repo.write(a_file, &manifest(&a, &one(&a)));
        repo.write(c_file, &manifest(&c, &one(&c)));
        let first = repo.push("main", "a and c, one of them through a link");
        let serve = Serve::git(&emu, &repo, &["--git-path", "m", "--interval", "1s"]);
        serve.applied(&first);
        repo.write(a_file, &format!("{}polcy: {{}}\n", manifest(&a, &two(&a))));
        repo.write(c_file, &manifest(&c, &two(&c)));
        let bad = repo.push("main", "a broken, c changed behind the link");
        let st = serve.status_when(
            "a scheduled scan of the bad revision",
            Duration::from_secs(30),
            |st| {
                st["last_run"]["revision"] == bad.as_str()
                    && st["last_run"]["trigger"] == "schedule"
            },
        );
        assert_eq!(st["last_run"]["result"], "invalid", "{st:#}");
        assert!(
            st["last_run"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("reached through a symlink")),
            "{st:#}"
        );
        assert!(
            same_grant(&live(&emu, &c).unwrap(), &one(&c)),
            "{linked_path}"
        );
        serve.stop();
    }
}

/// A `--git-path` the repository does not have is reported as missing, not as a symlink
/// (a path that cannot be resolved is behind no link).
#[test]
fn a_mistyped_git_path_is_reported_as_missing() {
    let emu = common::kinesis_mock();
    let a = emu.create_stream(&unique("serve-nopath"));
    let repo = Repo::new();
    repo.write("policies/a.yaml", &manifest(&a, &role_one(&a)));
    let first = repo.push("main", "a");
    let args = repo.source_args(&["--git-path", "policy", "--interval", "1h"]);
    let serve = Serve::start(
        &emu,
        Options {
            args,
            wait_ready: false,
            ..Options::default()
        },
    );
    let st = serve.status_when("the first run", Duration::from_secs(30), |st| {
        st["last_run"]["revision"] == first.as_str() && st["running"] == false
    });
    let error = st["last_run"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("policy") && !error.contains("symlink"),
        "{st:#}\n{}",
        serve.logs()
    );
    assert!(!serve.logs().contains("symlink"), "{}", serve.logs());
    serve.stop();
}

/// A directory has no commits to diff, so kpr compares each file's content with what the last
/// run read: a webhook reconciles only the files that changed, and nothing when none did.
#[test]
fn a_directory_webhook_reconciles_only_the_edited_files() {
    let emu = common::kinesis_mock();
    let arns: Vec<String> = (0..3)
        .map(|i| emu.create_stream(&unique(&format!("serve-dirinc{i}"))))
        .collect();
    let v1 = |arn: &str| read_policy(arn, "arn:aws:iam::111122223333:role/one");
    let files: Vec<(String, String)> = arns
        .iter()
        .enumerate()
        .map(|(i, arn)| (format!("s{i}.yaml"), manifest(arn, &v1(arn))))
        .collect();
    let dir = common::Manifests::new(
        &files
            .iter()
            .map(|(f, t)| (f.as_str(), t.as_str()))
            .collect::<Vec<_>>(),
    );
    let serve = Serve::dir(&emu, &dir, &["--interval", "1h"]);
    let first = serve.idle();
    assert_eq!(first["last_run"]["scope"], "full", "{first:#}");
    assert_eq!(first["resources"]["in_sync"], 3, "{first:#}");
    let calls = |s: &Serve| {
        ["GetResourcePolicy", "PutResourcePolicy"]
            .map(|op| s.metric("kpr_api_calls_total", &[("operation", op)]))
    };
    let webhook_run = |s: &Serve| {
        let runs = s.runs();
        let r = s.webhook(&[("Authorization", &format!("Bearer {SECRET}"))], b"");
        assert_eq!(r.status, 202, "{r:?}");
        s.poll("the webhook run", Duration::from_secs(20), |s| {
            (s.runs() > runs).then_some(())
        });
        s.idle()
    };

    let before = calls(&serve);
    let v2 = read_policy(&arns[1], "arn:aws:iam::111122223333:role/two");
    dir.write("s1.yaml", &manifest(&arns[1], &v2));
    let st = webhook_run(&serve);
    let delta: Vec<f64> = calls(&serve)
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    // One read to plan, one write, one read-back to verify: the two other files cost nothing.
    assert_eq!(delta, [2.0, 1.0], "{st:#}");
    assert_eq!(st["last_run"]["scope"], "incremental", "{st:#}");
    assert_eq!(
        st["last_run"]["changed_files"],
        serde_json::json!(["s1.yaml"])
    );
    assert_ne!(st["last_good_revision"], first["last_good_revision"]);
    assert!(same_grant(&live(&emu, &arns[1]).unwrap(), &v2));

    // Nothing changed since: no call at all.
    let before = calls(&serve);
    let st = webhook_run(&serve);
    assert_eq!(calls(&serve), before, "{st:#}");
    assert_eq!(st["last_run"]["scope"], "incremental", "{st:#}");
    assert_eq!(st["last_run"]["changed_files"], serde_json::json!([]));
    serve.stop();
}

/// A directory with one good manifest and `ghost.yaml`, whose stream does not exist: it
/// fails, and backs off, until the file is removed.
fn with_a_ghost(emu: &Emulator, prefix: &str) -> common::Manifests {
    let (_, dir) = emu.stream_with_manifest(prefix);
    let ghost = emu.stream_arn(&unique(&format!("{prefix}-ghost")));
    dir.write(
        "ghost.yaml",
        &manifest(&ghost, &read_policy(&ghost, "111122223333")),
    );
    dir
}

/// A failing resource whose manifest is then removed (no --prune): the run that sees it go
/// leaves it alone and forgets its backoff. No retry is left pending, neither an empty run
/// every --retry-delay until the schedule nor a full scan.
#[test]
fn a_failure_nobody_declares_any_more_stops_being_retried() {
    let emu = common::kinesis_mock();
    let dir = with_a_ghost(&emu, "serve-forget");
    let serve = Serve::start(
        &emu,
        Options {
            args: retrying(&dir),
            secret: false,
            ..Options::default()
        },
    );
    let st = serve.idle();
    assert_eq!(st["last_run"]["result"], "partial", "{st:#}");
    std::fs::remove_file(dir.path().join("ghost.yaml")).unwrap();
    let st = serve.status_when("the retries to end", Duration::from_secs(30), |st| {
        st["running"] == false && st["next_retry"].is_null() && st["last_run"]["trigger"] == "retry"
    });
    // The run that saw the manifest go (without --prune: left alone) drops its backoff too;
    // no full scan is needed to forget it.
    assert_eq!(st["last_run"]["scope"], "incremental", "{st:#}");
    assert_eq!(st["last_run"]["result"], "success", "{st:#}");
    assert_eq!(st["resources"]["backing_off"], 0, "{st:#}");
    serve.stop();
}

/// The same on the schedule: a full scan that no longer sees the manifest of a resource still
/// waiting out its backoff (here an hour) forgets it, without --prune, at once.
#[test]
fn a_full_scan_forgets_the_backoff_of_a_resource_nobody_declares() {
    let emu = common::kinesis_mock();
    let dir = with_a_ghost(&emu, "serve-forget-full");
    let serve = Serve::start(
        &emu,
        Options {
            args: owned(&[
                "--dir",
                &dir.arg(),
                "--interval",
                "1s",
                "--retry-delay",
                "1h",
            ]),
            secret: false,
            wait_ready: false,
            ..Options::default()
        },
    );
    serve.poll("the ghost to back off", Duration::from_secs(30), |s| {
        (s.status()["resources"]["backing_off"] == 1).then_some(())
    });
    std::fs::remove_file(dir.path().join("ghost.yaml")).unwrap();
    let st = serve.status_when(
        "a scheduled scan to forget it",
        Duration::from_secs(30),
        |st| st["resources"]["backing_off"] == 0,
    );
    assert_eq!(st["last_run"]["scope"], "full", "{st:#}");
    assert!(st["next_retry"].is_null(), "{st:#}");
    serve.stop();
}

/// A webhook secret rotated in its file (a Kubernetes Secret update) works at once, and the
/// old one stops working, without a restart.
#[test]
fn a_rotated_webhook_secret_file_takes_effect_without_a_restart() {
    let emu = common::kinesis_mock();
    let (_, dir) = emu.stream_with_manifest("serve-rotate");
    let serve = Serve::dir(&emu, &dir, &["--interval", "1h"]);
    let bearer = |secret: &str| {
        serve
            .webhook(&[("Authorization", &format!("Bearer {secret}"))], b"")
            .status
    };
    assert_eq!(bearer(SECRET), 202);
    let rotated = "rotated-0123456789abcdef";
    std::fs::write(serve._tmp.path().join("secret"), format!("{rotated}\n")).unwrap();
    assert_eq!(bearer(SECRET), 401, "the old secret still works");
    assert_eq!(bearer(rotated), 202, "the new secret does not work");
    // Rotated to something kpr refuses: no secret works, the one before included.
    std::fs::write(serve._tmp.path().join("secret"), "spaced \n").unwrap();
    assert_eq!(
        bearer(rotated),
        503,
        "a refused rotation left the old secret working"
    );
    // Anyone can send requests while it is so: the log does not grow with each.
    for _ in 0..30 {
        assert_eq!(bearer("x"), 503);
    }
    std::fs::write(serve._tmp.path().join("secret"), format!("{rotated}\n")).unwrap();
    assert_eq!(bearer(rotated), 202);
    let logs = serve.stop();
    let said = logs.matches("cannot read the webhook secret").count();
    assert!((1..=10).contains(&said), "{said} lines:\n{logs}");
}

/// A manifest reached through a symlink: `git diff` names the link's target (here outside
/// --git-path, so nothing at all), never the path kpr read. A push that edits the target must
/// still be applied, by a full run.
#[test]
fn a_push_behind_a_symlink_is_applied_by_a_full_run() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("serve-link"));
    let v1 = read_policy(&arn, "arn:aws:iam::111122223333:role/one");
    let v2 = read_policy(&arn, "arn:aws:iam::111122223333:role/two");
    let repo = Repo::new();
    repo.write("envs/prod/s.yaml", &manifest(&arn, &v1));
    std::fs::create_dir_all(repo.work().join("policies")).unwrap();
    std::os::unix::fs::symlink("../envs/prod", repo.work().join("policies/prod")).unwrap();
    let first = repo.push("main", "linked");
    let serve = Serve::git(&emu, &repo, &["--git-path", "policies", "--interval", "1h"]);
    serve.applied(&first);
    assert!(same_grant(&live(&emu, &arn).unwrap(), &v1));

    repo.write("envs/prod/s.yaml", &manifest(&arn, &v2));
    let second = repo.push("main", "edit behind the link");
    assert_eq!(serve.github_push("main", "edit").status, 202);
    let st = serve.applied(&second);
    assert_eq!(st["last_run"]["trigger"], "webhook", "{st:#}");
    assert_eq!(st["last_run"]["scope"], "full", "{st:#}");
    assert!(same_grant(&live(&emu, &arn).unwrap(), &v2));
    serve.stop();
}

/// With a schedule an hour away and no webhook, failures are still tried again, on their own
/// backoff: a run that failed as a whole (invalid manifests at start, so not ready), then a
/// resource that failed (its stream did not exist yet). Each fix is picked up by a retry run.
#[test]
fn failures_are_retried_on_their_own_clock_not_the_schedules() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("serve-retry"));
    let later = emu.stream_arn(&unique("serve-retry-later"));
    let policy = read_policy(&arn, "arn:aws:iam::111122223333:role/one");
    let later_policy = read_policy(&later, "arn:aws:iam::111122223333:role/two");
    let dir = common::Manifests::new(&[
        (
            "a.yaml",
            &format!("{}polcy: {{}}\n", manifest(&arn, &policy)),
        ),
        ("b.yaml", &manifest(&later, &later_policy)),
    ]);
    let serve = Serve::start(
        &emu,
        Options {
            args: retrying(&dir),
            secret: false,
            wait_ready: false,
            ..Options::default()
        },
    );
    let st = serve.status_when("the first run to fail", Duration::from_secs(30), |st| {
        st["runs"].as_u64() >= Some(1) && st["running"] == false
    });
    assert_eq!(st["last_run"]["result"], "invalid", "{st:#}");
    assert_eq!(serve.get("/readyz").status, 503);

    // Fixed on disk; nothing triggers a run but the retry.
    dir.write("a.yaml", &manifest(&arn, &policy));
    let st = serve.status_when("a retry to apply the fix", Duration::from_secs(30), |st| {
        st["last_run"]["result"] == "partial"
    });
    assert_eq!(st["last_run"]["trigger"], "retry", "{st:#}");
    assert_eq!(st["last_run"]["scope"], "full", "{st:#}");
    assert_eq!(serve.get("/readyz").status, 200);
    assert!(same_grant(&live(&emu, &arn).unwrap(), &policy));

    // The missing stream appears; a retry for the failed resource alone applies it.
    emu.create_stream(later.rsplit('/').next().unwrap());
    let st = serve.status_when(
        "a retry to apply the late resource",
        Duration::from_secs(60),
        |st| st["last_run"]["result"] == "success",
    );
    assert_eq!(st["last_run"]["trigger"], "retry", "{st:#}");
    assert_eq!(st["last_run"]["scope"], "incremental", "{st:#}");
    assert!(same_grant(&live(&emu, &later).unwrap(), &later_policy));
    assert!(st["next_retry"].is_null(), "nothing left to retry: {st:#}");
    assert!(
        serve.metric(
            "kpr_reconcile_runs_total",
            &[("trigger", "retry"), ("result", "success")]
        ) >= 1.0
    );
    serve.stop();
}

#[test]
fn dry_run_reports_drift_and_writes_nothing() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("serve-dry"));
    let live_before = read_policy(&arn, "arn:aws:iam::111122223333:role/hand");
    emu.put_policy_raw(&arn, &live_before.to_string());
    let in_sync_arn = emu.create_stream(&unique("serve-dry-ok"));
    let ok = read_policy(&in_sync_arn, "arn:aws:iam::111122223333:role/ok");
    emu.put_policy_raw(&in_sync_arn, &ok.to_string());
    let dir = common::Manifests::new(&[
        (
            "s.yaml",
            &manifest(
                &arn,
                &read_policy(&arn, "arn:aws:iam::111122223333:role/one"),
            ),
        ),
        ("ok.yaml", &manifest(&in_sync_arn, &ok)),
    ]);
    let serve = Serve::start(
        &emu,
        Options {
            args: owned(&["--dir", &dir.arg(), "--dry-run", "--interval", "1h"]),
            secret: false,
            ..Options::default()
        },
    );
    let st = serve.idle();
    assert_eq!(st["last_run"]["dry_run"], true);
    assert_eq!(st["last_run"]["summary"]["update"], 1, "{st:#}");
    let m = serve.metrics();
    assert_eq!(
        metric(&m, "kpr_resources", &[("state", "drifted")]),
        1.0,
        "{m}"
    );
    assert!(!m.contains("kpr_applied_revision_info"), "{m}");
    assert_eq!(
        metric(&m, "kpr_resources", &[("state", "in_sync")]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "kpr_api_calls_total",
            &[("operation", "PutResourcePolicy")]
        ),
        0.0
    );
    assert!(same_grant(&live(&emu, &arn).unwrap(), &live_before));
    let logs = serve.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("drift (dry run: not applied)")
                && l.contains(&arn)
                && l.contains("if applied: allows now: arn:aws:iam::111122223333:role/one")
                && l.contains("allows no longer: arn:aws:iam::111122223333:role/hand")
                // The drift itself, as it is live now.
                && l.contains(r#""before":"{\"Statement\""#)
                && l.contains(r#"role/hand\""#)),
        "{logs}"
    );
    // No secret: the webhook refuses everything rather than accepting unsigned triggers.
    let r = serve.webhook(&[("X-GitHub-Event", "push")], &push_body("main"));
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("no secret"), "{r:?}");
    serve.stop();
}

#[test]
fn check_config_accepts_a_good_config_and_rejects_bad_ones() {
    let emu = common::kinesis_mock();
    let arn = emu.stream_arn("check-config-only");
    let dir = common::Manifests::new(&[(
        "s.yaml",
        &manifest(&arn, &read_policy(&arn, "111122223333")),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "s\n").unwrap();
    let config = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let check = |config: &str, extra: &[&str]| {
        let mut args = vec!["serve", "--check-config", "--config", config];
        args.extend_from_slice(extra);
        common::output(
            common::kpr_cmd(&emu.url)
                .env_remove("KPR_WEBHOOK_SECRET")
                .args(&args)
                .output()
                .unwrap(),
        )
    };
    let good = config(
        "good.yaml",
        &format!(
            "dir: {}\nschedule: \"*/5 * * * *\"\njitter: 30s\nlisten: 127.0.0.1:9999\nwebhookSecretFile: {}\nprune: true\nmaxDeletes: 5\nshutdownTimeout: 10s\nmaxAttempts: 3\nmaxRetryTime: 45s\n",
            dir.arg(),
            secret.display()
        ),
    );
    let run = check(&good, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("configuration OK"), "{run:?}");
    assert!(run.stdout.contains("1 manifest(s)"), "{run:?}");
    assert!(run.stdout.contains("0 */5 * * * *\" (UTC)"), "{run:?}");
    assert!(run.stdout.contains("webhook: enabled"), "{run:?}");
    // Where the calls go, and nothing about git for a directory.
    let endpoint = format!("AWS: endpoint {}, region ", emu.url);
    assert!(run.stdout.contains(&endpoint), "{run:?}");
    assert!(
        run.stdout
            .contains("calls: up to 3 attempt(s) each, retried for at most 45s"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("branch head"), "{run:?}");
    // Warnings do not fail the check, but it shows them.
    let locked = emu.stream_arn("check-config-locked");
    let lock = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Deny",
        "Principal": "*", "Action": "kinesis:*", "Resource": &locked}]});
    let locked_file = dir.write("locked.yaml", &manifest(&locked, &lock));
    let run = check(&good, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("2 manifest(s) in 2 file(s), valid; 1 warning(s) below"),
        "{run:?}"
    );
    assert!(run.stdout.contains("locked.yaml:6: warning:"), "{run:?}");
    assert!(run.stdout.contains("kpr can no longer read"), "{run:?}");
    std::fs::remove_file(locked_file).unwrap();
    // A flag wins over the file, also across schedule/interval.
    let run = check(&good, &["--interval", "2m", "--listen", ":7000"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("schedule: every 2m,"), "{run:?}");
    assert!(run.stdout.contains("listen: 0.0.0.0:7000"), "{run:?}");
    let run = check(&good, &["--interval", "2m", "--schedule", "0 0 * * * *"]);
    assert_eq!(run.code, 1, "{run:?}");
    // ... and over a KPR_* variable, also across schedule/interval and dir/git-url; a variable
    // for each of the two is still a conflict.
    let with_env = |env: &[(&str, &str)], extra: &[&str]| {
        let mut cmd = common::kpr_cmd(&emu.url);
        cmd.args(["serve", "--check-config"]).args(extra);
        common::output(cmd.envs(env.iter().copied()).output().unwrap())
    };
    let dir_arg = dir.arg();
    let dir_flag = ["--dir", dir_arg.as_str()];
    let run = with_env(
        &[("KPR_SCHEDULE", "0 * * * *")],
        &[&dir_flag[..], &["--interval", "2m"]].concat(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("schedule: every 2m"), "{run:?}");
    let git = [
        "--git-url",
        "https://git.example.com/p.git",
        "--git-branch",
        "main",
    ];
    let run = with_env(&[("KPR_DIR", dir_arg.as_str())], &git);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("source: git https://git.example.com/p.git"),
        "{run:?}"
    );
    let run = with_env(
        &[("KPR_DIR", dir_arg.as_str()), ("KPR_GIT_URL", git[1])],
        &git[2..],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("not both"), "{run:?}");

    let cases: &[(&str, String, &str)] = &[
        (
            "bad-cron.yaml",
            format!("dir: {}\nschedule: \"61 * * * *\"\n", dir.arg()),
            "cron expression \"0 61 * * * *\" does not parse",
        ),
        (
            "no-source.yaml",
            "interval: 5m\n".into(),
            "no manifest source",
        ),
        (
            "two-sources.yaml",
            format!(
                "dir: {}\ngit:\n  url: https://example.com/r.git\n  branch: main\n",
                dir.arg()
            ),
            "not both",
        ),
        (
            "no-branch.yaml",
            "git:\n  url: https://example.com/r.git\n".into(),
            "--git-branch is required",
        ),
        (
            "bad-listen.yaml",
            format!("dir: {}\nlisten: localhost\n", dir.arg()),
            "listen address \"localhost\" is not an IP address and port",
        ),
        (
            "no-secret-file.yaml",
            format!(
                "dir: {}\nwebhookSecretFile: /nonexistent/secret\n",
                dir.arg()
            ),
            "/nonexistent/secret",
        ),
        (
            "bad-manifest.yaml",
            format!("dir: {}\n", tmp.path().join("manifests").display()),
            "broken.yaml",
        ),
        ("unknown-field.yaml", "intervall: 5m\n".into(), "intervall"),
    ];
    std::fs::create_dir_all(tmp.path().join("manifests")).unwrap();
    std::fs::write(
        tmp.path().join("manifests/broken.yaml"),
        "arn: nope\nensure: absent\n",
    )
    .unwrap();
    for (name, text, needle) in cases {
        let run = check(&config(name, text), &[]);
        assert_eq!(run.code, 1, "{name}: {run:?}");
        assert!(
            run.stderr.contains(needle),
            "{name}: expected {needle:?} in {run:?}"
        );
    }
    // A token over plain http:// is said to travel in cleartext; to loopback, it is not.
    for (host, warned) in [("git.internal", true), ("127.0.0.1:9", false)] {
        let mut cmd = common::kpr_cmd(&emu.url);
        cmd.args(["serve", "--check-config", "--git-branch", "main"])
            .arg("--git-url")
            .arg(format!("http://{host}/r.git"))
            .arg("--git-token-file")
            .arg(&secret);
        let run = common::output(cmd.output().unwrap());
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(
            run.stderr.contains("in cleartext"),
            warned,
            "{host}: {run:?}"
        );
    }
}

/// `kpr serve` whose first reconcile is stuck (nothing listens on its endpoint, so every call
/// fails and is retried for minutes), once that run is in flight.
fn stuck_serve(shutdown_timeout: &str) -> (Serve, common::Manifests) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let emu = Emulator {
        url: format!("http://127.0.0.1:{port}"),
        account: "000000000000".into(),
        name: "nowhere",
        private: false,
    };
    let arn = emu.stream_arn("stuck");
    let dir = common::Manifests::new(&[(
        "s.yaml",
        &manifest(&arn, &read_policy(&arn, "111122223333")),
    )]);
    let serve = Serve::start(
        &emu,
        Options {
            args: owned(&["--dir", &dir.arg(), "--shutdown-timeout", shutdown_timeout]),
            env: vec![("KPR_MAX_RETRY_TIME", "10m".into())],
            wait_ready: false,
            ..Options::default()
        },
    );
    serve.poll(
        "the first run to be in flight",
        Duration::from_secs(20),
        |s| (s.status()["running"] == true).then_some(()),
    );
    (serve, dir)
}

#[test]
fn sigterm_cancels_a_stuck_reconcile_within_the_shutdown_timeout() {
    let (serve, _dir) = stuck_serve("1s");
    assert_eq!(serve.get("/readyz").status, 503);
    let started = Instant::now();
    let logs_before_stop = serve.logs();
    assert!(
        !logs_before_stop.contains("reconcile finished"),
        "{logs_before_stop}"
    );
    let logs = serve.stop();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "shutdown took {took:?}");
    assert!(logs.contains("did not finish in time"), "{logs}");
}

#[test]
fn sigterm_mid_apply_drains_the_changes_under_way_and_starts_no_more() {
    use crate::proxy::{Fault, Proxy};
    const PUT: &str = "PutResourcePolicy";
    let emu = common::kinesis_mock();
    let prefix = unique("drain");
    let arns: Vec<String> = (0..16)
        .map(|i| emu.create_stream(&format!("{prefix}-{i}")))
        .collect();
    let files: Vec<(String, String)> = arns
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let name = format!("s{i:02}.yaml");
            (name, manifest(a, &read_policy(a, "111122223333")))
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let dir = common::Manifests::new(&refs);
    // Slow writes, so the reconcile is mid-apply for seconds.
    let proxy = Proxy::start(&emu.url);
    proxy
        .fault_ops(&[PUT])
        .random_faults(1, 1.0, &[Fault::Delay(Duration::from_millis(500))]);
    let via = Emulator {
        url: proxy.url(),
        account: emu.account.clone(),
        name: "kinesis-mock via the fault proxy",
        private: emu.private,
    };
    let serve = Serve::start(
        &via,
        Options {
            args: owned(&[
                "--dir",
                &dir.arg(),
                "--concurrency",
                "2",
                "--rate-limit",
                "0",
                "--shutdown-timeout",
                "60s",
            ]),
            wait_ready: false,
            ..Options::default()
        },
    );
    assert!(
        proxy.wait_for(Duration::from_secs(60), |p| p.op(PUT).seen >= 1),
        "{}",
        proxy.describe()
    );
    let logs = serve.stop();
    // Drained, not cancelled: the run ended by itself, long before the shutdown timeout.
    assert!(!logs.contains("did not finish in time"), "{logs}");
    let written = proxy.op(PUT).forwarded;
    let applied = logs.matches("\"change applied\"").count() as u64;
    assert_eq!(applied, written, "{}\n{logs}", proxy.describe());
    assert!(written >= 1 && written < arns.len() as u64, "{written}");
    // The run says why it stopped short, and does not call the rest failures.
    let finished = log_line(&logs, "\"reconcile finished\"");
    let not_started = arns.len() as u64 - written;
    assert!(finished.contains("\"result\":\"partial\""), "{finished}");
    assert!(finished.contains("\"failed\":0"), "{finished}");
    assert!(
        finished.contains(&format!(
            "interrupted by SIGTERM: {not_started} change(s) not started, left for the next run"
        )),
        "{finished}"
    );
    let granted = arns.iter().filter(|a| emu.get_policy(a).is_some()).count() as u64;
    assert_eq!(granted, written);
}

#[test]
fn a_second_sigterm_cancels_a_stuck_reconcile_at_once() {
    let (serve, _dir) = stuck_serve("10m");
    let pid = serve.child.borrow().as_ref().unwrap().id();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    serve.poll(
        "the first SIGTERM to be taken",
        Duration::from_secs(10),
        |s| s.logs().contains("shutting down").then_some(()),
    );
    // The second one, from stop(): without it the shutdown would wait out the 10 minutes.
    let started = Instant::now();
    let logs = serve.stop();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "shutdown took {took:?}");
    assert!(
        logs.contains("second stop signal: cancelling the running reconcile now"),
        "{logs}"
    );
}
