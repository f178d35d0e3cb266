//! Shared harness: the real `kpr` binary against real emulators started by `scripts/test`
//! (`scripts/emulators`), and boto3 (`scripts/kinesis_admin.py`) as the independent client that
//! sets up resources and reads policies back.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Which emulator a test talks to.
#[derive(Debug, Clone)]
pub struct Emulator {
    pub url: String,
    pub account: String,
    pub name: &'static str,
    /// Every call (boto3 and kpr) selects `account` through a 12-digit access key id.
    pub private: bool,
}

fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: integration tests run against real emulators; run them with \
             `scripts/test` (it installs and starts kinesis-mock and moto and exports {var})"
        )
    })
}

pub fn kinesis_mock() -> Emulator {
    Emulator {
        url: required("KPR_TEST_KINESIS_MOCK_URL"),
        account: std::env::var("KPR_TEST_KINESIS_MOCK_ACCOUNT")
            .unwrap_or_else(|_| "000000000000".into()),
        name: "kinesis-mock",
        private: false,
    }
}

/// kinesis-mock in an account of the caller's own, unique per call: listings (`--prune`,
/// `import`) then see only what the test created. kinesis-mock selects the account from a
/// 12-digit access key id; moto has no such switch.
pub fn kinesis_mock_private() -> Emulator {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let seed = u64::from(std::process::id()) * 1_000_003
        + u64::from(nanos)
        + u64::from(N.fetch_add(1, Ordering::Relaxed)) * 7_919;
    Emulator {
        account: format!("{:012}", 900_000_000_000u64 + seed % 99_999_999_999),
        private: true,
        ..kinesis_mock()
    }
}

pub fn moto() -> Emulator {
    Emulator {
        url: required("KPR_TEST_MOTO_URL"),
        account: std::env::var("KPR_TEST_MOTO_ACCOUNT").unwrap_or_else(|_| "123456789012".into()),
        name: "moto",
        private: false,
    }
}

pub const REGION: &str = "us-east-1";

/// kinesis-mock has no reset: every test uses names no other test (or earlier run) used.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn kpr_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kpr")
}

/// A `kpr` command with dummy credentials; no rate limit (the emulator is local).
pub fn kpr_cmd(endpoint: &str) -> Command {
    let mut c = Command::new(kpr_bin());
    c.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", REGION)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_KINESIS")
        .env("NO_COLOR", "1")
        .env("KPR_RATE_LIMIT", "0")
        .env("KPR_ENDPOINT_URL", endpoint)
        .stdin(Stdio::null());
    // kpr honours a proxy from the environment; the emulators are on loopback.
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
        c.env_remove(var).env_remove(var.to_lowercase());
    }
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn output(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Emulator {
    /// A `kpr` command for this emulator (and its account, when private).
    pub fn kpr_cmd(&self) -> Command {
        let mut c = kpr_cmd(&self.url);
        if self.private {
            c.env("AWS_ACCESS_KEY_ID", &self.account);
        }
        c
    }

    /// A new stream, and a directory with one manifest (`a.yaml`) for it.
    pub fn stream_with_manifest(&self, prefix: &str) -> (String, Manifests) {
        let arn = self.create_stream(&unique(prefix));
        let policy = read_policy(&arn, "111122223333");
        let dir = Manifests::new(&[("a.yaml", &manifest(&arn, &policy))]);
        (arn, dir)
    }

    pub fn kpr(&self, args: &[&str]) -> Run {
        output(self.kpr_cmd().args(args).output().expect("run kpr"))
    }

    fn admin_cmd(&self) -> Command {
        let mut c = Command::new(required("KPR_TEST_PYTHON"));
        c.arg(required("KPR_TEST_ADMIN"))
            .args(["--endpoint-url", &self.url, "--region", REGION])
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::piped());
        if self.private {
            c.args(["--account", &self.account]);
        }
        c
    }

    /// Runs kinesis_admin.py (boto3); panics on failure unless `allow` lists the exit code.
    pub fn admin(&self, args: &[&str], allow: &[i32]) -> Run {
        let run = output(
            self.admin_cmd()
                .args(args)
                .output()
                .expect("run kinesis_admin.py"),
        );
        if run.code != 0 && !allow.contains(&run.code) {
            panic!("kinesis_admin.py {args:?} failed: {run:?}");
        }
        run
    }

    pub fn stream_arn(&self, name: &str) -> String {
        format!("arn:aws:kinesis:{REGION}:{}:stream/{name}", self.account)
    }

    /// Creates (and waits for) a stream; returns its ARN.
    pub fn create_stream(&self, name: &str) -> String {
        self.admin(&["create-stream", name], &[])
            .stdout
            .trim()
            .to_string()
    }

    /// Registers (and waits for) a consumer; returns its timestamped ARN.
    pub fn register_consumer(&self, stream_arn: &str, name: &str) -> String {
        self.admin(&["register-consumer", stream_arn, name], &[])
            .stdout
            .trim()
            .to_string()
    }

    /// The live policy as a real client (boto3) sees it; `None` when there is none.
    pub fn get_policy(&self, arn: &str) -> Option<String> {
        let run = self.admin(&["get-policy", arn], &[3]);
        (run.code == 0).then_some(run.stdout)
    }

    /// A change made behind kpr's back.
    pub fn put_policy_raw(&self, arn: &str, json: &str) {
        let mut child = self
            .admin_cmd()
            .args(["put-policy", arn, "-"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(json.as_bytes())
            .unwrap();
        let run = output(child.wait_with_output().unwrap());
        assert_eq!(run.code, 0, "put-policy failed: {run:?}");
    }
}

/// A policy (as JSON) letting `principal` read `arn`.
pub fn read_policy(arn: &str, principal: &str) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "Read",
            "Effect": "Allow",
            "Principal": {"AWS": principal},
            "Action": ["kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:DescribeStreamSummary"],
            "Resource": arn,
        }]
    })
}

/// A manifest document (YAML) holding `policy` as a YAML mapping.
pub fn manifest(arn: &str, policy: &serde_json::Value) -> String {
    let policy_yaml = serde_norway::to_string(policy).unwrap();
    let indented: String = policy_yaml.lines().map(|l| format!("  {l}\n")).collect();
    format!("arn: {arn}\npolicy:\n{indented}")
}

pub fn absent(arn: &str) -> String {
    format!("arn: {arn}\nensure: absent\n")
}

/// A temporary manifest directory.
pub struct Manifests {
    pub dir: tempfile::TempDir,
}

impl Manifests {
    pub fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        Manifests { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn arg(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// Semantic comparison done by the test itself (not by kpr): parse both and compare the parts a
/// grant depends on, with lists as sets.
pub fn same_grant(live: &str, want: &serde_json::Value) -> bool {
    fn norm(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Array(a) => {
                let mut items: Vec<serde_json::Value> = a.iter().map(norm).collect();
                items.sort_by_key(|x| x.to_string());
                if items.len() == 1 {
                    items.pop().unwrap()
                } else {
                    serde_json::Value::Array(items)
                }
            }
            serde_json::Value::Object(o) => {
                serde_json::Value::Object(o.iter().map(|(k, v)| (k.clone(), norm(v))).collect())
            }
            other => other.clone(),
        }
    }
    let live: serde_json::Value = serde_json::from_str(live).expect("live policy is JSON");
    norm(&live) == norm(want)
}
