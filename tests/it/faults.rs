//! `kpr apply` under injected faults: retryable errors, errors that must not be retried, a
//! request-rate limit, SIGKILL mid-apply, and the backend going away. kpr talks to kinesis-mock
//! through the fault proxy (`proxy.rs`), which also counts every call per resource.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::common::{self, Emulator, Run};
use crate::proxy::{Fault, Gone, Proxy};

const GET: &str = "GetResourcePolicy";
const PUT: &str = "PutResourcePolicy";

/// The Rust SDK straight to the emulator (no proxy): creating hundreds of streams through boto3
/// one process each would take minutes.
struct Bulk {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_kinesis::Client,
}

impl Bulk {
    /// For the emulator's account: kinesis-mock takes a private one from the access key id.
    fn new(emu: &Emulator) -> Bulk {
        use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let conf = aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(common::REGION))
            .endpoint_url(&emu.url)
            .credentials_provider(Credentials::new(
                if emu.private {
                    emu.account.as_str()
                } else {
                    "test"
                },
                "test",
                None,
                None,
                "t",
            ))
            .build();
        Bulk {
            rt,
            client: aws_sdk_kinesis::Client::from_conf(conf),
        }
    }

    /// Creates the streams and waits until all are ACTIVE; returns their ARNs in the order of
    /// `names`. kinesis-mock lets only 5 streams be CREATING at once across the whole instance
    /// (every test shares it), so "too many creating" is waited out against a deadline rather
    /// than a try count: under a loaded CI machine five tries were not enough.
    fn create_streams(&self, names: &[String]) -> Vec<String> {
        self.rt.block_on(async {
            let created: Vec<Result<(), String>> = futures::stream::iter(names)
                .map(|name| async move {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                    let mut tries: u64 = 0;
                    loop {
                        tries += 1;
                        match self
                            .client
                            .create_stream()
                            .stream_name(name)
                            .shard_count(1)
                            .send()
                            .await
                        {
                            Ok(_) => return Ok(()),
                            Err(e) => {
                                let e = aws_sdk_kinesis::error::DisplayErrorContext(e).to_string();
                                if e.contains("shard limit") {
                                    return Err(format!(
                                        "{e}: kinesis-mock was started with its default SHARD_LIMIT \
                                         of 50; scripts/emulators raises it (KINESIS_MOCK_SHARD_LIMIT)"
                                    ));
                                }
                                // CreateStream's ResourceInUse means "already exists": an
                                // earlier try got through.
                                if e.contains("ResourceInUseException") {
                                    return Ok(());
                                }
                                let busy = e.contains("LimitExceededException");
                                if !busy || tokio::time::Instant::now() >= deadline {
                                    return Err(format!("create {name} (try {tries}): {e}"));
                                }
                                tokio::time::sleep(Duration::from_millis(20 * tries.min(10)))
                                    .await;
                            }
                        }
                    }
                })
                .buffer_unordered(5)
                .collect()
                .await;
            for r in created {
                r.unwrap_or_else(|e| panic!("{e}"));
            }
            let arns: Vec<String> = futures::stream::iter(names)
                .map(|name| async move { self.wait_active(name).await })
                .buffered(32)
                .collect()
                .await;
            arns
        })
    }

    /// kinesis-mock keeps a stream CREATING for 500 ms.
    async fn wait_active(&self, name: &str) -> String {
        use aws_sdk_kinesis::types::StreamStatus;
        for _ in 0..200 {
            if let Ok(out) = self
                .client
                .describe_stream_summary()
                .stream_name(name)
                .send()
                .await
                && let Some(d) = out.stream_description_summary()
                && d.stream_status() == &StreamStatus::Active
            {
                return d.stream_arn().to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("stream {name} did not become ACTIVE within 10 s");
    }

    fn put_policies(&self, policies: &[(String, String)]) {
        self.rt.block_on(async {
            let results: Vec<_> = futures::stream::iter(policies)
                .map(|(arn, json)| async move {
                    self.client
                        .put_resource_policy()
                        .resource_arn(arn)
                        .policy(json)
                        .send()
                        .await
                        .map_err(|e| {
                            format!(
                                "put {arn}: {}",
                                aws_sdk_kinesis::error::DisplayErrorContext(e)
                            )
                        })
                })
                .buffer_unordered(32)
                .collect()
                .await;
            for r in results {
                r.unwrap();
            }
        })
    }
}

/// `n` fresh streams on the emulator.
fn streams(emu: &Emulator, bulk: &Bulk, prefix: &str, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n)
        .map(|i| format!("{}-{i}", common::unique(prefix)))
        .collect();
    let arns = bulk.create_streams(&names);
    assert_eq!(arns[0], emu.stream_arn(&names[0]));
    arns
}

fn desired(arn: &str, i: usize) -> serde_json::Value {
    common::read_policy(arn, &format!("arn:aws:iam::111122223333:role/reader-{i}"))
}

/// One manifest per resource, ten per file (multi-document files).
fn manifests(arns: &[String]) -> (common::Manifests, Vec<serde_json::Value>) {
    let want: Vec<serde_json::Value> = arns
        .iter()
        .enumerate()
        .map(|(i, a)| desired(a, i))
        .collect();
    let m = common::Manifests::new(&[]);
    for (chunk_no, chunk) in arns.chunks(10).enumerate() {
        let text = chunk
            .iter()
            .enumerate()
            .map(|(j, arn)| common::manifest(arn, &want[chunk_no * 10 + j]))
            .collect::<Vec<_>>()
            .join("---\n");
        m.write(&format!("part-{chunk_no:03}.yaml"), &text);
    }
    (m, want)
}

/// A policy that differs from the manifest, set behind kpr's back (exercises the update path).
fn stale(arn: &str) -> String {
    common::read_policy(arn, "arn:aws:iam::999999999999:role/old").to_string()
}

/// Every live policy as boto3 sees it, read in one Python process.
fn live_policies(emu: &Emulator, arns: &[String]) -> HashMap<String, Option<String>> {
    const SCRIPT: &str = r#"
import json, sys, boto3
from botocore.config import Config
c = boto3.client("kinesis", endpoint_url=sys.argv[1], region_name=sys.argv[2],
                 aws_access_key_id="test", aws_secret_access_key="test",
                 config=Config(retries={"max_attempts": 5, "mode": "standard"}))
out = {}
for arn in sys.stdin.read().split():
    try:
        out[arn] = c.get_resource_policy(ResourceARN=arn)["Policy"]
    except c.exceptions.ResourceNotFoundException:
        out[arn] = None
print(json.dumps(out))
"#;
    let python = std::env::var("KPR_TEST_PYTHON").expect("KPR_TEST_PYTHON (run via scripts/test)");
    let mut child = Command::new(python)
        .args(["-c", SCRIPT, &emu.url, common::REGION])
        .env_remove("AWS_PROFILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(arns.join("\n").as_bytes())
        .unwrap();
    let run = common::output(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0, "boto3 read-back failed: {run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

/// Asserts what a real client sees: every policy equivalent to its manifest; and that kpr itself
/// plans no change (straight to the emulator, no proxy).
fn assert_converged(
    emu: &Emulator,
    m: &common::Manifests,
    arns: &[String],
    want: &[serde_json::Value],
) {
    let live = live_policies(emu, arns);
    let wrong: Vec<&String> = arns
        .iter()
        .zip(want)
        .filter(|(a, w)| {
            !live[*a]
                .as_deref()
                .is_some_and(|l| common::same_grant(l, w))
        })
        .map(|(a, _)| a)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} policies differ from their manifest, e.g. {:?}: {:?}",
        wrong.len(),
        arns.len(),
        wrong[0],
        live[wrong[0]]
    );
    let plan = emu.kpr(&["plan", "--dir", &m.arg(), "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "plan after convergence: {plan:?}");
}

fn kpr_via(proxy: &Proxy) -> Command {
    common::kpr_cmd(&proxy.url())
}

/// `kpr plan --dir m --prune` and `extra` through `proxy`, in `emu`'s private account (a
/// prune lists every stream of the account it calls as).
fn prune_plan(proxy: &Proxy, emu: &Emulator, m: &common::Manifests, extra: &[&str]) -> Run {
    let mut cmd = kpr_via(proxy);
    cmd.env("AWS_ACCESS_KEY_ID", &emu.account)
        .args(["plan", "--dir", &m.arg(), "--prune"])
        .args(extra);
    common::output(cmd.output().expect("run kpr"))
}

/// Runs a command, killing it and failing the test if it outlives `limit` (a hang).
pub(crate) fn run_bounded(mut cmd: Command, limit: Duration) -> (Run, Duration) {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kpr");
    (
        common::output(wait_bounded(child, limit)),
        started.elapsed(),
    )
}

/// Waits for `child`'s exit and output, killing it and failing the test if it outlives
/// `limit` (a hang).
fn wait_bounded(child: Child, limit: Duration) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // The Child moved into the waiting thread: kill it by pid.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("kpr did not finish within {limit:?} (hang?)");
        }
    }
}

fn assert_no_panic(run: &Run) {
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
        "kpr panicked: {run:?}"
    );
}

/// Behind a forward proxy named in the environment every call goes through it: the SDK's and
/// the direct path's alike (the direct path once went straight to the endpoint).
#[test]
fn calls_go_through_the_proxy_the_environment_names() {
    let emu = common::kinesis_mock();
    let (arn, dir) = emu.stream_with_manifest("viaproxy");
    let proxy = Proxy::start(&emu.url);
    // Nothing listens at the endpoint: only the proxy, which forwards to the emulator whatever
    // host a request names, can answer.
    const NOWHERE: &str = "http://127.0.0.1:9";
    let run = |endpoint_var: &str, args: &[&str]| {
        let mut cmd = emu.kpr_cmd();
        cmd.env_remove("KPR_ENDPOINT_URL")
            .env(endpoint_var, NOWHERE)
            .env("HTTP_PROXY", proxy.url())
            .args(args);
        run_bounded(cmd, Duration::from_secs(60)).0
    };
    // An endpoint kpr is told is read directly from the first read (the read and the
    // verifying read); the write goes through the SDK.
    let applied = run("KPR_ENDPOINT_URL", &["apply", "--dir", &dir.arg()]);
    assert_eq!(applied.code, 0, "{applied:?}");
    assert_eq!(
        proxy.agents(GET).get("kpr"),
        Some(&2),
        "{:?}",
        proxy.agents(GET)
    );
    assert_eq!(proxy.op_on(PUT, &arn).forwarded, 1);
    // One from the AWS configuration is resolved by the SDK: its first read shows kpr where.
    let planned = run(
        "AWS_ENDPOINT_URL",
        &["plan", "--dir", &dir.arg(), "--detailed-exitcode"],
    );
    assert_eq!(planned.code, 0, "{planned:?}");
    let agents = proxy.agents(GET);
    assert_eq!(agents.get("aws-sdk-rust"), Some(&1), "{agents:?}");
    assert_eq!(agents.get("kpr"), Some(&2), "{agents:?}");
}

#[test]
fn mixed_faults_converge_within_the_retry_bound() {
    let emu = common::kinesis_mock();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "flt-mix", 200);
    // A quarter of the streams start with a stale policy, the rest with none.
    bulk.put_policies(
        &arns[..50]
            .iter()
            .map(|a| (a.clone(), stale(a)))
            .collect::<Vec<_>>(),
    );
    let (m, want) = manifests(&arns);

    let proxy = Proxy::start(&emu.url);
    // 36% of calls get a fault, five in six of which are failures: 30% of calls fail, and 6%
    // are only slowed down.
    proxy.random_faults(20_250_101, 0.36, &Fault::RETRYABLE_MIX);
    const MAX_ATTEMPTS: u64 = 10;
    let mut cmd = kpr_via(&proxy);
    cmd.args([
        "apply",
        "--dir",
        &m.arg(),
        "--max-attempts",
        "10",
        "--concurrency",
        "16",
    ]);
    let (run, took) = run_bounded(cmd, Duration::from_secs(120));
    assert_no_panic(&run);
    assert_eq!(run.code, 0, "{run:?}\n{}", proxy.describe());
    eprintln!("converged in {took:?}; {}", proxy.describe());

    let failed: u64 = proxy
        .faults()
        .iter()
        .filter(|(k, _)| **k != "delay")
        .map(|(_, v)| v)
        .sum();
    let share = failed as f64 / proxy.total() as f64;
    assert!(
        (0.2..0.4).contains(&share),
        "{share:.2} of calls failed: {}",
        proxy.describe()
    );
    // Per resource: the plan's read, the write and the verifying read, each at most
    // MAX_ATTEMPTS times; and exactly one write reached the backend.
    let bound = MAX_ATTEMPTS * 3;
    for arn in &arns {
        let c = proxy.on(arn);
        assert!(
            (3..=bound).contains(&c.seen),
            "{arn}: {} calls, bound {bound}",
            c.seen
        );
        assert_eq!(
            proxy.op_on(PUT, arn).forwarded,
            1,
            "{arn}: {:?}",
            proxy.op_on(PUT, arn)
        );
    }
    let per_arn = proxy.per_arn();
    let most = arns.iter().map(|a| per_arn[a]).max().unwrap();
    eprintln!("most calls for one resource: {most} (bound {bound})");
    assert_converged(&emu, &m, &arns, &want);
}

#[test]
fn errors_that_must_not_be_retried_are_tried_once() {
    let emu = common::kinesis_mock();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "flt-fatal", 30);
    let (m, want) = manifests(&arns);
    let proxy = Proxy::start(&emu.url);
    let get_denied = &arns[0..5];
    let put_invalid = &arns[5..10];
    let put_denied = &arns[10..15];
    let put_forbidden = &arns[15..20];
    let healthy = &arns[20..];
    for a in get_denied {
        proxy.always(Some(GET), a, Fault::AccessDenied);
    }
    for a in put_invalid {
        proxy.always(Some(PUT), a, Fault::InvalidArgument);
    }
    for a in put_denied {
        proxy.always(Some(PUT), a, Fault::AccessDenied);
    }
    // Writes go through the SDK: its error for an answer it cannot read must be judged by
    // the status too, not retried as a bad answer that "may have taken effect".
    for a in put_forbidden {
        proxy.always(Some(PUT), a, Fault::Http403Html);
    }
    // One at a time, and the endpoint from the AWS configuration, not told to kpr: the first
    // read goes through the SDK (it shows kpr the endpoint), every later one through kpr's
    // direct read path, which must classify errors the same way.
    let mut cmd = kpr_via(&proxy);
    cmd.env_remove("KPR_ENDPOINT_URL")
        .env("AWS_ENDPOINT_URL", proxy.url());
    let args = [
        "apply",
        "--dir",
        &m.arg(),
        "--max-attempts",
        "8",
        "--concurrency",
        "1",
    ];
    cmd.args(args);
    let (run, _) = run_bounded(cmd, Duration::from_secs(60));
    assert_no_panic(&run);
    assert_eq!(run.code, 1, "{run:?}");
    let agents = proxy.agents(GET);
    assert_eq!(agents.get("aws-sdk-rust"), Some(&1), "{agents:?}");
    let direct = agents.get("kpr").copied().unwrap_or(0);
    assert_eq!(direct, proxy.op(GET).seen - 1, "{agents:?}");
    let out = format!("{}\n{}", run.stdout, run.stderr);
    // Each failure is reported once, in the report: not also as a log line.
    assert!(!run.stderr.contains("change failed"), "{run:?}");
    for (group, code, gets, puts) in [
        (get_denied, "AccessDeniedException", 1, 0),
        (put_invalid, "InvalidArgumentException", 1, 1),
        (put_denied, "AccessDeniedException", 1, 1),
        (put_forbidden, "HTTP 403", 1, 1),
    ] {
        for a in group {
            assert_eq!(
                proxy.op_on(GET, a).seen,
                gets,
                "{a} ({code}): {}",
                proxy.describe()
            );
            assert_eq!(
                proxy.op_on(PUT, a).seen,
                puts,
                "{a} ({code}): {}",
                proxy.describe()
            );
        }
        // The five share one error but for their names (AWS names the resource in it): it is
        // said once, with each resource listed under it.
        let op = if puts == 0 { GET } else { PUT };
        let listed = shared_error_group(&out, &format!("{op}: {code}"));
        let mut want: Vec<&str> = group.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(listed, want, "{op} {code}:\n{out}");
    }
    for a in healthy {
        assert_eq!(proxy.op_on(GET, a).seen, 2, "{a}");
        assert_eq!(proxy.op_on(PUT, a).seen, 1, "{a}");
    }
    assert!(!out.contains("may have taken effect"), "{out}");
    let n = healthy.len();
    assert_converged_subset(&emu, healthy, &want[20..], n);
}

/// The ARNs listed under the text output's one "failed N resources, all with the same error"
/// block whose error starts with `error`, sorted; the block must count them right.
fn shared_error_group<'a>(out: &'a str, error: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = out.lines().collect();
    let blocks: Vec<usize> = (1..lines.len())
        .filter(|&i| {
            lines[i - 1].starts_with("! failed") && lines[i].trim_start().starts_with(error)
        })
        .collect();
    assert_eq!(blocks.len(), 1, "one block for {error}:\n{out}");
    let header = lines[blocks[0] - 1];
    let mut listed: Vec<&str> = lines[blocks[0] + 1..]
        .iter()
        .take_while(|l| l.starts_with("  arn:"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(
        header.contains(&format!(
            "! failed {} resources, all with the same error",
            listed.len()
        )),
        "{header}"
    );
    listed.sort_unstable();
    listed
}

/// Like [`assert_converged`] for part of a set (the rest failed on purpose).
fn assert_converged_subset(emu: &Emulator, arns: &[String], want: &[serde_json::Value], n: usize) {
    let live = live_policies(emu, arns);
    let ok = arns
        .iter()
        .zip(want)
        .filter(|(a, w)| {
            live[*a]
                .as_deref()
                .is_some_and(|l| common::same_grant(l, w))
        })
        .count();
    assert_eq!(ok, n, "{live:?}");
}

#[test]
fn a_rate_limiting_backend_slows_kpr_down_without_failures() {
    let emu = common::kinesis_mock();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "flt-rate", 40);
    let (m, want) = manifests(&arns);
    let proxy = Proxy::start(&emu.url);
    // The backend allows 20 calls/s; kpr is told 25/s, so its limiter paces it and backoff
    // absorbs the excess.
    const RATE: f64 = 20.0;
    proxy.rate_limit(Some((RATE, RATE)));
    let mut cmd = kpr_via(&proxy);
    cmd.args([
        "apply",
        "--dir",
        &m.arg(),
        "--rate-limit",
        "25",
        "--max-attempts",
        "10",
    ]);
    let (run, took) = run_bounded(cmd, Duration::from_secs(90));
    assert_no_panic(&run);
    assert_eq!(run.code, 0, "{run:?}\n{}", proxy.describe());
    let throttled = proxy
        .faults()
        .get("LimitExceededException")
        .copied()
        .unwrap_or(0);
    let accepted = proxy.total() - throttled;
    eprintln!(
        "{} calls accepted, {throttled} throttled, in {took:?}",
        accepted
    );
    assert_eq!(accepted, 3 * arns.len() as u64, "{}", proxy.describe());
    // Slowed down rather than hammering: kpr's limiter and backoff keep the throttled calls a
    // minority (measured: 31 against 120 accepted; 106 with --rate-limit 40, 161 with no
    // limiter). A count, not a clock: the proxy's own bucket bounds the time taken whatever
    // kpr does, so a duration would prove nothing.
    assert!(
        throttled <= accepted / 2,
        "{throttled} throttled against {accepted} accepted"
    );
    assert_converged(&emu, &m, &arns, &want);
}

#[test]
fn sigkill_mid_apply_then_rerun_converges_with_nothing_lost() {
    let emu = common::kinesis_mock();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "flt-kill", 200);
    let (m, want) = manifests(&arns);
    let proxy = Proxy::start(&emu.url);
    proxy.delay(Some(Duration::from_millis(20)));
    let mut child: Child = kpr_via(&proxy)
        .args(["apply", "--dir", &m.arg(), "--concurrency", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mid = proxy.wait_for(Duration::from_secs(60), |p| p.op(PUT).seen >= 40);
    // Child::kill is SIGKILL on Unix: no cleanup, no flush.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        mid,
        "no PutResourcePolicy reached the proxy: {}",
        proxy.describe()
    );
    assert!(
        status.code().is_none(),
        "kpr exited by itself before the kill: {status:?}"
    );
    // Forwards already under way finish (the proxy runs them to completion), and requests
    // kpr wrote just before it died are still read and forwarded: wait until all have ended.
    assert!(
        proxy.wait_for(Duration::from_secs(30), Proxy::quiet),
        "the proxy never went quiet after the kill: {}",
        proxy.describe()
    );
    let written = proxy.op(PUT).forwarded;
    eprintln!(
        "killed after {written} writes reached the backend; {}",
        proxy.describe()
    );
    assert!(
        written < arns.len() as u64,
        "apply finished before the kill"
    );

    proxy.delay(None);
    proxy.reset_counts();
    let mut cmd = kpr_via(&proxy);
    cmd.args(["apply", "--dir", &m.arg()]);
    let (run, _) = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(run.code, 0, "{run:?}");
    // Nothing lost and nothing redone: the second run writes exactly what the first did not.
    assert_eq!(
        proxy.op(PUT).seen,
        arns.len() as u64 - written,
        "{}",
        proxy.describe()
    );
    assert_eq!(proxy.op(GET).seen, arns.len() as u64 + proxy.op(PUT).seen);
    assert_converged(&emu, &m, &arns, &want);
}

#[test]
fn backend_gone_mid_run_fails_cleanly_then_recovers() {
    let emu = common::kinesis_mock();
    let bulk = Bulk::new(&emu);
    for (how, prefix) in [(Gone::Refuse, "flt-refuse"), (Gone::Drop, "flt-drop")] {
        let arns = streams(&emu, &bulk, prefix, 40);
        let (m, want) = manifests(&arns);
        let proxy = Proxy::start(&emu.url);
        // Every plan read, then 20 calls of the apply, then nothing.
        proxy.gone_after(arns.len() as u64 + 20, how);
        let mut cmd = kpr_via(&proxy);
        cmd.args([
            "apply",
            "--dir",
            &m.arg(),
            "--output",
            "json",
            "--max-attempts",
            "4",
            "--max-retry-time",
            "3s",
        ]);
        let (run, took) = run_bounded(cmd, Duration::from_secs(60));
        assert_no_panic(&run);
        assert_eq!(run.code, 1, "{how:?}: {run:?}");
        let report = run.json();
        // `failures` lists every failure: the plan's and the apply's.
        let failures = report["failures"].as_array().unwrap();
        let applied = report["summary"]["create"].as_u64().unwrap();
        eprintln!(
            "{how:?}: {} failed, {applied} applied in {took:?}; e.g. {}",
            failures.len(),
            failures
                .first()
                .map_or(String::new(), |f| f["message"].to_string())
        );
        assert!(!failures.is_empty() && applied > 0, "{how:?}: {report}");
        assert_eq!(
            failures.len() as u64 + applied,
            arns.len() as u64,
            "{report}"
        );
        for f in failures {
            let arn = f["arn"].as_str().unwrap();
            assert!(arns.iter().any(|a| a == arn), "{f}");
            assert!(
                f["retryable"].as_bool().unwrap(),
                "{how:?}: a lost backend is transient: {f}"
            );
            assert!(!f["message"].as_str().unwrap().is_empty(), "{f}");
        }
        proxy.heal();
        let mut cmd = kpr_via(&proxy);
        cmd.args(["apply", "--dir", &m.arg()]);
        let (run, _) = run_bounded(cmd, Duration::from_secs(60));
        assert_eq!(run.code, 0, "{how:?} after healing: {run:?}");
        assert_converged(&emu, &m, &arns, &want);
    }
}

/// `kpr apply` with its stderr read line by line while it runs.
struct Running {
    child: Child,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn start(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kpr");
        let pipe = child.stderr.take().unwrap();
        let (tx, stderr) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running { child, stderr }
    }

    /// `kpr apply` through `proxy`, sent SIGINT once `writes` writes have reached the proxy;
    /// returns once kpr has said it is stopping.
    fn interrupted_apply(
        proxy: &Proxy,
        m: &common::Manifests,
        concurrency: usize,
        writes: u64,
    ) -> Running {
        let mut cmd = kpr_via(proxy);
        cmd.args(["apply", "--dir", &m.arg(), "--concurrency"])
            .arg(concurrency.to_string());
        let run = Running::start(cmd);
        assert!(
            proxy.wait_for(Duration::from_secs(60), |p| p.op(PUT).seen >= writes),
            "fewer than {writes} writes: {}",
            proxy.describe()
        );
        run.signal("INT");
        run.stderr_until("SIGINT: starting no more changes", Duration::from_secs(10));
        run
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits for a stderr line containing `text`, returning every line read until then.
    fn stderr_until(&self, text: &str, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        while let Ok(line) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let found = line.contains(text);
            seen.push(line);
            if found {
                return seen;
            }
        }
        panic!("no stderr line with {text:?} within {limit:?}: {seen:?}");
    }

    /// Exit code and stdout, failing the test if kpr outlives `limit`.
    fn finish(self, limit: Duration) -> (i32, String, Vec<String>) {
        let Running { child, stderr } = self;
        let out = wait_bounded(child, limit);
        // Until the reader reaches the pipe's end: kpr has exited, so it is near.
        let rest = stderr.iter().collect();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            rest,
        )
    }
}

#[test]
fn sigint_mid_apply_finishes_the_writes_under_way_and_reports_the_rest() {
    let emu = common::kinesis_mock();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "flt-int", 60);
    let (m, want) = manifests(&arns);
    let proxy = Proxy::start(&emu.url);
    proxy.delay(Some(Duration::from_millis(20)));
    let run = Running::interrupted_apply(&proxy, &m, 4, 8);
    let (code, out, _) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 1, "{out}");
    let applied: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("Apply: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line:\n{out}"));
    let not_started = arns.len() - applied;
    assert!(applied >= 8 && not_started > 0, "{out}");
    assert!(
        out.contains(&format!(
            "Apply: {applied} created, 0 updated, 0 deleted, 0 unchanged, {not_started} not \
             started.\nInterrupted by SIGINT: {not_started} change(s) not started, nothing \
             written for them; apply again to make them:\n"
        )),
        "{out}"
    );
    // Not started is not failed: no failure block, and the never-started are listed once.
    assert!(!out.contains("failed"), "{out}");
    if not_started > 10 {
        assert!(
            out.contains(&format!("  and {} more (", not_started - 10)),
            "{out}"
        );
    }
    // What it reports is what happened: each write that reached the backend is a reported
    // success, checked by reading it back; nothing was written for the rest.
    assert_eq!(
        proxy.op(PUT).forwarded,
        applied as u64,
        "{}",
        proxy.describe()
    );
    assert_eq!(out.matches("  done\n").count(), applied, "{out}");
    let live = live_policies(&emu, &arns);
    let (mut granted, mut empty) = (0, 0);
    for (a, w) in arns.iter().zip(&want) {
        match live[a].as_deref() {
            Some(l) if common::same_grant(l, w) => granted += 1,
            None => empty += 1,
            other => panic!("{a}: {other:?}"),
        }
    }
    assert_eq!((granted, empty), (applied, not_started));

    // The next run makes exactly the changes the first one did not start.
    proxy.delay(None);
    proxy.reset_counts();
    let mut cmd = kpr_via(&proxy);
    cmd.args(["apply", "--dir", &m.arg()]);
    let (rerun, _) = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(rerun.code, 0, "{rerun:?}");
    assert_eq!(
        proxy.op(PUT).seen,
        not_started as u64,
        "{}",
        proxy.describe()
    );
    assert_converged(&emu, &m, &arns, &want);
}

/// A write waiting its turn at `--rate-limit` when the signal comes has not started: it is
/// reported not started and never sent. It used to go out when its turn came, after the stop.
#[test]
fn sigint_withholds_the_writes_waiting_for_the_rate_limit() {
    let emu = common::kinesis_mock();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "flt-int-rate", 10);
    let (m, _) = manifests(&arns);
    let proxy = Proxy::start(&emu.url);
    // One request a second: the first write goes at once, the other seven of the first
    // eight started wait their turn, a second apart.
    let mut cmd = kpr_via(&proxy);
    cmd.args(["apply", "--dir", &m.arg(), "--concurrency", "8"])
        .args(["--rate-limit", "1"]);
    let run = Running::start(cmd);
    assert!(
        proxy.wait_for(Duration::from_secs(60), |p| p.op(PUT).seen >= 1),
        "{}",
        proxy.describe()
    );
    run.signal("INT");
    let (code, out, _) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 1, "{out}");
    let writes = proxy.op(PUT).seen;
    // A second write could go out if the signal took over a second to arrive; seven did.
    assert!(writes <= 2, "{}", proxy.describe());
    assert!(
        out.contains(&format!(
            "Interrupted by SIGINT: {} change(s) not started",
            arns.len() as u64 - writes
        )),
        "{out}"
    );
}

/// Spawns `cmd` (an apply through `proxy`), sends it SIGINT once 4 writes reached the proxy,
/// and returns its exit code and stdout. `stderr_closed`: nobody reads its stderr.
fn sigint_after_some_writes(mut cmd: Command, proxy: &Proxy, stderr_closed: bool) -> (i32, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kpr");
    if stderr_closed {
        drop(child.stderr.take());
    }
    assert!(
        proxy.wait_for(Duration::from_secs(60), |p| p.op(PUT).seen >= 4),
        "{}",
        proxy.describe()
    );
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -INT");
    let out = wait_bounded(child, Duration::from_secs(60));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// With stderr a pipe nobody reads any more (`kpr apply 2>&1 | head`), the note kpr writes on
/// a stop signal cannot be written: the apply must still finish its writes and report, not
/// crash (it panicked, poisoned the progress bar and exited 101 with no report).
#[test]
fn a_stop_signal_with_stderr_closed_still_reports() {
    let emu = common::kinesis_mock();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "flt-int-epipe", 40);
    let (m, _) = manifests(&arns);
    let proxy = Proxy::start(&emu.url);
    proxy.delay(Some(Duration::from_millis(20)));
    let mut cmd = kpr_via(&proxy);
    cmd.args(["apply", "--dir", &m.arg(), "--concurrency", "4"]);
    let (code, stdout) = sigint_after_some_writes(cmd, &proxy, true);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("Interrupted by SIGINT"), "{stdout}");
}

/// Started with SIGINT ignored (a background job of a shell script), kpr leaves it so: a
/// Ctrl-C meant for the foreground does not interrupt its apply.
#[test]
fn an_inherited_ignored_sigint_stays_ignored() {
    let emu = common::kinesis_mock();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "flt-int-ign", 30);
    let (m, want) = manifests(&arns);
    let proxy = Proxy::start(&emu.url);
    proxy.delay(Some(Duration::from_millis(20)));
    let plain = kpr_via(&proxy);
    // The same command and environment, through a shell that ignores SIGINT before exec.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "trap '' INT; exec \"$0\" \"$@\""])
        .arg(plain.get_program())
        .args(["apply", "--dir", &m.arg(), "--concurrency", "4"])
        .envs(plain.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let (code, stdout) = sigint_after_some_writes(cmd, &proxy, false);
    assert_eq!(code, 0, "{stdout}");
    assert!(!stdout.contains("Interrupted"), "{stdout}");
    assert_converged(&emu, &m, &arns, &want);
}

#[test]
fn a_second_sigint_stops_at_once() {
    let emu = common::kinesis_mock();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "flt-int2", 20);
    let (m, _) = manifests(&arns);
    let proxy = Proxy::start(&emu.url);
    // Every write hangs, so the wait the first signal starts cannot end by itself.
    proxy
        .fault_ops(&[PUT])
        .random_faults(1, 1.0, &[Fault::Delay(Duration::from_secs(120))]);
    let run = Running::interrupted_apply(&proxy, &m, 2, 1);
    run.signal("INT");
    let (code, _, stderr) = run.finish(Duration::from_secs(10));
    assert_eq!(code, 130, "{stderr:?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.starts_with("SIGINT: stopping at once")),
        "{stderr:?}"
    );
    // The report never comes: the log says what is known instead, naming the writes cut off.
    let at = |head: &str| stderr.iter().position(|l| l == head);
    assert!(
        at("0 change(s) applied").is_some() && at("0 failed").is_some(),
        "{stderr:?}"
    );
    let under_way = stderr
        .iter()
        .position(|l| l.ends_with(" under way, which may or may not have been applied"))
        .unwrap_or_else(|| panic!("{stderr:?}"));
    let named = stderr[under_way + 1..]
        .iter()
        .take_while(|l| l.starts_with("  arn:"))
        .count();
    assert!(named > 0, "{stderr:?}");
    assert!(
        stderr[under_way].starts_with(&format!("{named} under way")),
        "{stderr:?}"
    );
}

/// A CI runner's cancel (SIGINT, then SIGTERM 7.5 s later) can cut writes off mid-way: the
/// pipeline must still learn which resources were written, which failed and which may or may
/// not have been. The log names each; with `--output json` the report comes all the same,
/// each change with its outcome.
#[test]
fn a_hard_stop_names_every_resource_and_still_reports_in_json() {
    let emu = common::kinesis_mock();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "flt-hard", 12);
    let (m, want) = manifests(&arns);
    let proxy = Proxy::start(&emu.url);
    // Plans and applies in ARN order: the first write is refused, the next ones land.
    proxy.always(Some(PUT), &arns[0], Fault::AccessDenied);
    let mut cmd = kpr_via(&proxy);
    cmd.args(["apply", "--dir", &m.arg(), "--concurrency", "2"])
        .args(["--output", "json"]);
    let run = Running::start(cmd);
    assert!(
        proxy.wait_for(Duration::from_secs(60), |p| p.op(PUT).forwarded >= 2),
        "{}",
        proxy.describe()
    );
    // From here every write waits in the proxy: those sent are under way until the stop.
    proxy.hold(PUT);
    let sent = proxy.op(PUT).seen;
    assert!(
        proxy.wait_for(Duration::from_secs(30), |p| p.op(PUT).seen > sent),
        "{}",
        proxy.describe()
    );
    run.signal("TERM");
    run.stderr_until("SIGTERM: starting no more changes", Duration::from_secs(10));
    run.signal("INT");
    let (code, stdout, stderr) = run.finish(Duration::from_secs(10));
    proxy.release();
    assert_eq!(code, 130, "{stderr:?}");
    let doc: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout:?} {stderr:?}"));
    assert_eq!(doc["interrupted"]["by"], "SIGTERM", "{doc:#}");
    assert_eq!(doc["interrupted"]["hard_stop"], "SIGINT", "{doc:#}");
    let by_outcome = |want: &str| -> Vec<String> {
        doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["outcome"] == want)
            .map(|r| r["arn"].as_str().unwrap().to_string())
            .collect()
    };
    let (applied, failed) = (by_outcome("applied"), by_outcome("failed"));
    let (under_way, not_started) = (by_outcome("under_way"), by_outcome("not_started"));
    assert_eq!(failed, [arns[0].clone()], "{doc:#}");
    assert!(!applied.is_empty() && !under_way.is_empty(), "{doc:#}");
    assert_eq!(
        applied.len() + failed.len() + under_way.len() + not_started.len(),
        arns.len(),
        "{doc:#}"
    );
    let summary = &doc["summary"];
    assert_eq!(summary["create"], applied.len(), "{doc:#}");
    assert_eq!(summary["under_way"], under_way.len(), "{doc:#}");
    assert_eq!(summary["not_started"], not_started.len(), "{doc:#}");
    assert_eq!(summary["failed"], 1, "{doc:#}");
    for arn in &applied {
        let i = arns.iter().position(|a| a == arn).unwrap();
        assert!(
            emu.get_policy(arn)
                .is_some_and(|p| common::same_grant(&p, &want[i])),
            "{arn} reported applied"
        );
    }
    // Under way means sent (a held one among them); not started means never sent.
    for arn in &under_way {
        assert!(proxy.op_on(PUT, arn).seen > 0, "{arn}");
    }
    assert!(
        under_way
            .iter()
            .any(|arn| proxy.op_on(PUT, arn).forwarded == 0),
        "{doc:#}"
    );
    for arn in &not_started {
        assert_eq!(proxy.op_on(PUT, arn).seen, 0, "{arn}");
    }
    // The log names them too, for a pipeline that reads text.
    let log = stderr.join("\n");
    for arn in applied.iter().chain(&failed).chain(&under_way) {
        assert!(log.contains(&format!("  {arn}")), "{arn} not named: {log}");
    }
    assert!(log.contains("AccessDeniedException"), "{log}");
}

/// kinesis-mock answers ListStreams 100 streams at a time with HasMoreStreams and no
/// NextToken: a listing that stopped there passed for the whole, and `--prune` (like `import`)
/// never saw the streams after the hundredth. The stray policy here is on the 105th.
#[test]
fn prune_lists_every_stream_past_the_first_page() {
    let emu = common::kinesis_mock_private();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "page", 105);
    let mut sorted = arns.clone();
    sorted.sort();
    let last = sorted.last().unwrap().clone();
    bulk.put_policies(&[(last.clone(), stale(&last))]);
    let m = common::Manifests::new(&[(
        "a.yaml",
        &common::manifest(&sorted[0], &desired(&sorted[0], 0)),
    )]);
    let run = emu.kpr(&[
        "plan",
        "--dir",
        &m.arg(),
        "--prune",
        "--detailed-exitcode",
        "--rate-limit",
        "0",
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stdout.contains(&format!("- delete stream {last}")),
        "{run:?}"
    );
}

/// A stream deleted between the listing of streams and that of its consumers has nothing left
/// to prune, as one deleted before its policy is read: not a failure that turns the run red
/// (nor one that stops a mistyped --target from being refused).
#[test]
fn a_stream_gone_before_its_consumers_are_listed_is_nothing_to_prune() {
    let emu = common::kinesis_mock_private();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "gone-listing", 2);
    let m =
        common::Manifests::new(&[("a.yaml", &common::manifest(&arns[0], &desired(&arns[0], 0)))]);
    let proxy = Proxy::start(&emu.url);
    // As the service answers once the stream is gone.
    proxy.always(
        Some("ListStreamConsumers"),
        &arns[1],
        Fault::ResourceNotFound,
    );
    proxy.always(Some(GET), &arns[1], Fault::ResourceNotFound);
    let plan =
        |extra: &[&str]| prune_plan(&proxy, &emu, &m, &[&["--output", "json"], extra].concat());
    let run = plan(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["summary"]["failed"], 0, "{run:?}");
    assert!(proxy.op_on("ListStreamConsumers", &arns[1]).faulted > 0);
    let typo = emu.stream_arn("gone-listing-typo");
    let refused = plan(&["--target", &typo]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert_eq!(
        refused.json()["refused"]["reason"],
        "unmatched_target",
        "{refused:?}"
    );
    // Refused, not gone: that stream's consumers went unchecked. The failure is named by the
    // stream, and must not read as the stream's own.
    proxy.always(Some("ListStreamConsumers"), &arns[0], Fault::AccessDenied);
    let run = plan(&[]);
    assert_eq!(run.code, 1, "{run:?}");
    let failure = &run.json()["failures"][0];
    assert_eq!(failure["arn"], arns[0].as_str(), "{run:?}");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .starts_with("its consumers were not checked for policies to prune: "),
        "{run:?}"
    );
}

/// A listing answer without a member the API must send (`{}` from a broken proxy or stub)
/// is no answer: read as "no streams", `--prune` would delete nothing and say all went well.
#[test]
fn a_listing_without_its_required_members_is_no_answer() {
    let emu = common::kinesis_mock_private();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "nomembers", 2);
    bulk.put_policies(&[(arns[1].clone(), stale(&arns[1]))]);
    let m =
        common::Manifests::new(&[("a.yaml", &common::manifest(&arns[0], &desired(&arns[0], 0)))]);
    let proxy = Proxy::start(&emu.url);
    let plan = || {
        prune_plan(
            &proxy,
            &emu,
            &m,
            &["--max-attempts", "2", "--detailed-exitcode"],
        )
    };
    // Through the proxy as it is: the undeclared policy is found.
    let whole = plan();
    assert_eq!(whole.code, 2, "{whole:?}");
    assert!(
        whole
            .stdout
            .contains(&format!("- delete stream {}", arns[1]))
    );
    proxy.rewrite("ListStreams", "\"HasMoreStreams\"", "\"Elided\"");
    let run = plan();
    assert_eq!(run.code, 1, "{run:?}");
    let out = format!("{}\n{}", run.stdout, run.stderr);
    assert!(
        out.contains("ListStreams") && out.contains("the answer has no HasMoreStreams"),
        "{out}"
    );
    assert!(!out.contains("- delete stream"), "{out}");
    // A target the failed listing would have found is not said to have no policy.
    let targeted = prune_plan(
        &proxy,
        &emu,
        &m,
        &[
            "--max-attempts",
            "2",
            "--target",
            &arns[1],
            "--output",
            "json",
        ],
    );
    assert_eq!(targeted.code, 1, "{targeted:?}");
    let said = "was not checked for a policy to prune: a listing failed";
    assert!(targeted.stderr.contains(said), "{targeted:?}");
    assert!(!targeted.stderr.contains("already deleted"), "{targeted:?}");
    // In the JSON too, which a pipeline's comment is built from.
    let diagnostics = targeted.json()["diagnostics"].to_string();
    assert!(diagnostics.contains(said), "{targeted:?}");
}

/// `--target` with `--prune` lists only where a target is: a one-resource run in a large
/// estate does not list every stream's consumers (nor every account).
#[test]
fn a_targeted_prune_lists_only_the_targets_streams() {
    let emu = common::kinesis_mock_private();
    let bulk = Bulk::new(&emu);
    let arns = streams(&emu, &bulk, "tprune", 3);
    let m =
        common::Manifests::new(&[("a.yaml", &common::manifest(&arns[0], &desired(&arns[0], 0)))]);
    let proxy = Proxy::start(&emu.url);
    let plan = |extra: &[&str]| prune_plan(&proxy, &emu, &m, extra);
    let run = plan(&["--target", &arns[1]]);
    assert_eq!(run.code, 0, "{run:?}");
    let listed = proxy.op("ListStreamConsumers").forwarded;
    assert_eq!(listed, 1, "{}", proxy.describe());
    proxy.reset_counts();
    let run = plan(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    let listed = proxy.op("ListStreamConsumers").forwarded;
    assert_eq!(listed, 3, "{}", proxy.describe());
}

/// A consumer declared by name is read and written where DescribeStreamConsumer says it is
/// registered; an answer naming another account (or stream, or consumer) must not send the
/// write there.
#[test]
fn a_consumer_resolved_to_another_resource_is_refused() {
    let emu = common::kinesis_mock_private();
    let stream = emu.create_stream(&common::unique("elsewhere"));
    emu.register_consumer(&stream, "analytics");
    let by_name = format!("{stream}/consumer/analytics");
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::444455556666:role/reader"},
            "Action": "kinesis:SubscribeToShard",
            "Resource": "*",
        }]
    });
    let dir = common::Manifests::new(&[("c.yaml", &common::manifest(&by_name, &policy))]);
    let proxy = Proxy::start(&emu.url);
    let other = "999999999999";
    proxy.rewrite(
        "DescribeStreamConsumer",
        &format!(":{}:stream/", emu.account),
        &format!(":{other}:stream/"),
    );
    let mut cmd = kpr_via(&proxy);
    cmd.env("AWS_ACCESS_KEY_ID", &emu.account)
        .args(["apply", "--dir", &dir.arg()]);
    let (run, _) = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains(&format!(":{other}:stream/")) && run.stdout.contains("which is not"),
        "{run:?}"
    );
    assert_eq!(proxy.writes(), 0, "{}", proxy.describe());
}
