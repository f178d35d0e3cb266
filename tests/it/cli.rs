//! `kpr validate / plan / apply / policy` against real emulators, read back with boto3.

use std::process::Stdio;

use serde_json::json;

use crate::common::{self, Emulator, Manifests, absent, manifest, read_policy, same_grant, unique};

/// create -> no-op -> update -> no-op, as a pipeline sees it (exit codes and JSON), and as a real
/// client sees it (boto3).
fn lifecycle(emu: &Emulator) {
    let name = unique("life");
    let arn = emu.create_stream(&name);
    let v1 = read_policy(&arn, "arn:aws:iam::444455556666:role/reader");
    let dir = Manifests::new(&[("s.yaml", &manifest(&arn, &v1))]);

    let plan = emu.kpr(&[
        "plan",
        "--dir",
        &dir.arg(),
        "--detailed-exitcode",
        "--output",
        "json",
    ]);
    assert_eq!(plan.code, 2, "{plan:?}");
    let j = plan.json();
    assert_eq!(j["format_version"], "1");
    assert_eq!(j["kind"], "plan");
    assert_eq!(
        j["summary"],
        json!({"create":1,"update":0,"delete":0,"unchanged":0,"failed":0})
    );
    assert_eq!(j["resources"][0]["arn"], arn.as_str());
    assert_eq!(j["resources"][0]["action"], "create");
    assert_eq!(j["resources"][0]["before"], serde_json::Value::Null);
    assert_eq!(j["resources"][0]["source"]["line"], 1);
    assert!(emu.get_policy(&arn).is_none(), "plan must not write");

    // With --detailed-exitcode, apply tells a pipeline that it changed something.
    let apply = emu.kpr(&["apply", "--dir", &dir.arg(), "--detailed-exitcode"]);
    assert_eq!(apply.code, 2, "{apply:?}");
    assert!(
        apply
            .stdout
            .contains("Apply: 1 created, 0 updated, 0 deleted, 0 unchanged."),
        "{apply:?}"
    );
    let live = emu.get_policy(&arn).expect("policy after apply");
    assert!(same_grant(&live, &v1), "live {live} != {v1}");

    let again = emu.kpr(&["plan", "--dir", &dir.arg(), "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "no perpetual diff: {again:?}");
    assert!(
        again
            .stdout
            .contains("Plan: 0 to create, 0 to update, 0 to delete, 1 unchanged."),
        "{again:?}"
    );

    // A real change: another principal.
    let v2 = read_policy(&arn, "arn:aws:iam::444455556666:role/other");
    dir.write("s.yaml", &manifest(&arn, &v2));
    let plan = emu.kpr(&["plan", "--dir", &dir.arg(), "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(plan.stdout.contains("~ update stream"), "{plan:?}");
    let diff_line = |sign: char, needle: &str| {
        plan.stdout
            .lines()
            .any(|l| l.trim_start().starts_with(sign) && l.contains(needle))
    };
    assert!(
        diff_line('-', "\"AWS\": \"arn:aws:iam::444455556666:role/reader\""),
        "{plan:?}"
    );
    assert!(
        diff_line('+', "\"AWS\": \"arn:aws:iam::444455556666:role/other\""),
        "{plan:?}"
    );
    assert!(
        !diff_line('+', "kinesis:GetRecords"),
        "unchanged lines are not marked: {plan:?}"
    );
    // Whom the change adds and drops, before the diff.
    assert!(
        plan.stdout
            .contains("allows now: arn:aws:iam::444455556666:role/other\n")
            && plan
                .stdout
                .contains("allows no longer: arn:aws:iam::444455556666:role/reader\n"),
        "{plan:?}"
    );
    let j = emu
        .kpr(&["plan", "--dir", &dir.arg(), "--output", "json"])
        .json();
    assert_eq!(
        j["resources"][0]["access"],
        json!({"allows_now": ["arn:aws:iam::444455556666:role/other"],
            "allows_no_longer": ["arn:aws:iam::444455556666:role/reader"],
            "denies_now": [], "denies_no_longer": [], "before_unknown": false,
            "public_before": false, "public_after": false})
    );
    assert!(
        plan.stdout
            .contains("Plan: 0 to create, 1 to update, 0 to delete, 0 unchanged.")
    );
    let apply = emu.kpr(&["apply", "--dir", &dir.arg(), "--output", "json"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let j = apply.json();
    assert_eq!(j["kind"], "apply");
    assert_eq!(j["resources"][0]["outcome"], "applied");
    assert_eq!(j["summary"]["update"], 1);
    assert!(same_grant(&emu.get_policy(&arn).unwrap(), &v2));
    assert_eq!(
        emu.kpr(&["plan", "--dir", &dir.arg(), "--detailed-exitcode"])
            .code,
        0
    );
}

#[test]
fn lifecycle_on_kinesis_mock() {
    lifecycle(&common::kinesis_mock());
}

#[test]
fn lifecycle_on_moto() {
    lifecycle(&common::moto());
}

/// The live policy is written by someone else in a different shape: same grant, so no change.
fn formatting_only(emu: &Emulator) {
    let arn = emu.create_stream(&unique("fmt"));
    let acct = "444455556666";
    // Live: JSON with reordered keys, list order, single values, account id as root ARN,
    // a condition number.
    let live = json!({
        "Statement": {
            "Resource": arn,
            "Condition": {"NumericLessThan": {"aws:MultiFactorAuthAge": 3600}},
            "Action": ["kinesis:GetShardIterator", "kinesis:GetRecords"],
            "Principal": {"AWS": [format!("arn:aws:iam::{acct}:root")]},
            "Effect": "Allow",
            "Sid": ""
        },
        "Version": "2012-10-17"
    });
    emu.put_policy_raw(&arn, &serde_json::to_string_pretty(&live).unwrap());
    let yaml = format!(
        "# same grant, written differently\narn: {arn}\npolicy:\n  Version: '2012-10-17'\n  Statement:\n    - Effect: Allow\n      Principal:\n        AWS: '{acct}'\n      Action:\n        - kinesis:GetRecords\n        - kinesis:GetShardIterator\n      Resource: [{arn}]\n      Condition:\n        NumericLessThan:\n          aws:MultiFactorAuthAge: '3600'\n"
    );
    let dir = Manifests::new(&[("f.yaml", &yaml)]);
    let plan = emu.kpr(&["plan", "--dir", &dir.arg(), "--detailed-exitcode"]);
    assert_eq!(
        plan.code, 0,
        "formatting-only difference must be no change: {plan:?}"
    );
    // IAM reads Effect case-sensitively: a live "allow" is not this grant, and is rewritten.
    let lower = serde_json::to_string_pretty(&live)
        .unwrap()
        .replace("\"Allow\"", "\"allow\"");
    emu.put_policy_raw(&arn, &lower);
    let plan = emu.kpr(&["plan", "--dir", &dir.arg(), "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "a live \"allow\" is a change: {plan:?}");
    emu.put_policy_raw(&arn, &serde_json::to_string_pretty(&live).unwrap());

    // ... while one real difference in the condition value is a change.
    dir.write("f.yaml", &yaml.replace("'3600'", "'7200'"));
    let plan = emu.kpr(&["plan", "--dir", &dir.arg(), "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{plan:?}");
}

#[test]
fn formatting_only_differences_on_kinesis_mock() {
    formatting_only(&common::kinesis_mock());
}

#[test]
fn formatting_only_differences_on_moto() {
    formatting_only(&common::moto());
}

fn ensure_absent(emu: &Emulator) {
    let arn = emu.create_stream(&unique("absent"));
    emu.put_policy_raw(&arn, &read_policy(&arn, "111122223333").to_string());
    let dir = Manifests::new(&[("a.yaml", &absent(&arn))]);
    let plan = emu.kpr(&["plan", "--dir", &dir.arg(), "--output", "json"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let j = plan.json();
    assert_eq!(j["resources"][0]["action"], "delete");
    assert_eq!(j["resources"][0]["delete_cause"], "ensure_absent");
    let apply = emu.kpr(&["apply", "--dir", &dir.arg()]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(apply.stdout.contains("1 deleted"), "{apply:?}");
    assert_eq!(emu.get_policy(&arn), None, "boto3 still sees a policy");
    let again = emu.kpr(&["plan", "--dir", &dir.arg(), "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "{again:?}");

    // A stream that does not exist has no policy, but a mistyped name in a manifest meant
    // to remove one must not pass as done: an error that says so.
    let ghost = emu.stream_arn(&unique("absent-ghost"));
    dir.write("ghost.yaml", &absent(&ghost));
    let plan = emu.kpr(&["plan", "--dir", &dir.arg(), "--detailed-exitcode"]);
    assert_eq!(plan.code, 1, "{plan:?}");
    assert!(plan.stdout.contains("does not exist"), "{plan:?}");
}

#[test]
fn ensure_absent_on_kinesis_mock() {
    ensure_absent(&common::kinesis_mock());
}

#[test]
fn ensure_absent_on_moto() {
    ensure_absent(&common::moto());
}

/// moto cannot read consumer policies (it parses the stream name from the last `/`), so
/// consumers are tested on kinesis-mock only.
#[test]
fn consumer_by_name_resolves_to_the_live_registration() {
    let emu = common::kinesis_mock();
    let stream = emu.create_stream(&unique("cons"));
    let live_arn = emu.register_consumer(&stream, "analytics");
    let by_name = format!("{stream}/consumer/analytics");
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::444455556666:role/lambda"},
            "Action": ["kinesis:SubscribeToShard", "kinesis:DescribeStreamConsumer"],
            "Resource": format!("{by_name}:*"),
        }]
    });
    let dir = Manifests::new(&[("c.yaml", &manifest(&by_name, &policy))]);
    let plan = emu.kpr(&["plan", "--dir", &dir.arg(), "--output", "json"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let j = plan.json();
    assert_eq!(
        j["resources"][0]["arn"],
        live_arn.as_str(),
        "plan shows the resolved ARN"
    );
    assert_eq!(j["resources"][0]["declared_arn"], by_name.as_str());
    assert_eq!(j["resources"][0]["kind"], "consumer");
    let apply = emu.kpr(&["apply", "--dir", &dir.arg()]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(same_grant(
        &emu.get_policy(&live_arn).expect("consumer policy"),
        &policy
    ));
    assert_eq!(
        emu.kpr(&["plan", "--dir", &dir.arg(), "--detailed-exitcode"])
            .code,
        0
    );

    // A Resource pinned to this registration grants nothing once the consumer is registered
    // again (a new creation epoch): plan says so instead of calling it in sync.
    let pinned = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::444455556666:role/lambda"},
            "Action": "kinesis:SubscribeToShard",
            "Resource": live_arn,
        }]
    });
    dir.write("c.yaml", &manifest(&by_name, &pinned));
    assert_eq!(emu.kpr(&["apply", "--dir", &dir.arg()]).code, 0);
    // The epoch is in seconds: registered again until it differs.
    let again = (0..20)
        .map(|_| {
            emu.admin(&["deregister-consumer", &stream, "analytics"], &[]);
            emu.register_consumer(&stream, "analytics")
        })
        .find(|arn| *arn != live_arn)
        .expect("a new registration");
    let plan = emu.kpr(&["plan", "--dir", &dir.arg(), "--detailed-exitcode"]);
    assert_eq!(plan.code, 1, "{plan:?}");
    assert!(
        plan.stdout.contains(&format!(
            "the policy's Resource \"{live_arn}\" is not the consumer as registered now ({again})"
        )),
        "{plan:?}"
    );
    assert!(
        emu.get_policy(&again).is_none(),
        "a stale grant was written"
    );
    dir.write("c.yaml", &manifest(&by_name, &policy));
    // A target naming the past registration does not act on the one registered now.
    let stale = emu.kpr(&["apply", "--dir", &dir.arg(), "--target", &live_arn]);
    assert_eq!(stale.code, 1, "{stale:?}");
    assert!(
        stale.stdout.contains("--target names another registration"),
        "{stale:?}"
    );
    assert!(
        emu.get_policy(&again).is_none(),
        "the current registration was written"
    );

    // A manifest naming one registration, and a target naming another: matches nothing.
    let pinned_dir = Manifests::new(&[("p.yaml", &manifest(&again, &policy))]);
    let typo = emu.kpr(&["plan", "--dir", &pinned_dir.arg(), "--target", &live_arn]);
    assert_eq!(typo.code, 1, "{typo:?}");
    assert!(typo.stderr.contains("matches no manifest"), "{typo:?}");

    // Unknown consumer name: an error for that resource, naming it.
    let missing = format!("{stream}/consumer/nobody");
    let policy2 = json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":"kinesis:SubscribeToShard","Resource":format!("{missing}:*")}]});
    dir.write("d.yaml", &manifest(&missing, &policy2));
    let plan = emu.kpr(&["plan", "--dir", &dir.arg(), "--detailed-exitcode"]);
    assert_eq!(plan.code, 1, "{plan:?}");
    assert!(
        plan.stdout.contains("\"nobody\" is not registered"),
        "{plan:?}"
    );

    // Pinned to a registration that is gone, a manifest covers nothing live: under --prune,
    // the policy of the consumer registered now by that name is undeclared.
    emu.put_policy_raw(&again, &policy.to_string());
    let old_pin = Manifests::new(&[("p.yaml", &manifest(&live_arn, &pinned))]);
    let prune = emu.kpr(&[
        "plan",
        "--dir",
        &old_pin.arg(),
        "--prune",
        "--target",
        &again,
        "--output",
        "json",
    ]);
    let deletes: Vec<_> = prune.json()["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "delete")
        .map(|r| r["arn"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deletes, std::slice::from_ref(&again), "{prune:?}");
}

fn nonexistent_stream(emu: &Emulator) {
    let arn = emu.stream_arn(&unique("ghost"));
    let ok_arn = emu.create_stream(&unique("real"));
    let dir = Manifests::new(&[
        (
            "ghost.yaml",
            &manifest(&arn, &read_policy(&arn, "111122223333")),
        ),
        (
            "real.yaml",
            &manifest(&ok_arn, &read_policy(&ok_arn, "111122223333")),
        ),
    ]);
    let apply = emu.kpr(&["apply", "--dir", &dir.arg(), "--output", "json"]);
    assert_eq!(apply.code, 1, "{apply:?}");
    let j = apply.json();
    let failures = j["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{j}");
    assert_eq!(failures[0]["arn"], arn.as_str());
    assert_eq!(
        failures[0]["source"]["file"],
        dir.path().join("ghost.yaml").to_string_lossy().as_ref()
    );
    // The failure of one resource does not stop the others.
    assert!(
        emu.get_policy(&ok_arn).is_some(),
        "the valid resource was applied"
    );
}

#[test]
fn nonexistent_stream_is_an_error_not_a_create() {
    nonexistent_stream(&common::kinesis_mock());
}

/// clap ends a usage error with 2, which `plan --detailed-exitcode` means as "changes present":
/// a pipeline would take a plan that never ran for one that found changes. kpr exits 1 instead,
/// except in `policy diff`, where 2 is trouble, as in diff(1).
#[test]
fn usage_errors_exit_1_not_the_changes_code() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = common::kpr_cmd("http://127.0.0.1:9");
        c.args(args).envs(env.iter().copied());
        common::output(c.output().expect("run kpr"))
    };
    let plan = ["plan", "--dir", "policies", "--detailed-exitcode"];
    let typo = run(&[&plan[..], &["--output", "yaml"]].concat(), &[]);
    assert_eq!(typo.code, 1, "{typo:?}");
    assert!(typo.stderr.contains("'yaml'"), "{typo:?}");
    let env = run(&plan, &[("KPR_CONCURRENCY", "eight")]);
    assert_eq!(env.code, 1, "{env:?}");
    assert!(env.stderr.contains("'eight'"), "{env:?}");
    // clap names the flag; no flag was given, so the error names the variable too.
    assert!(
        env.stderr
            .contains("the value comes from the environment variable KPR_CONCURRENCY"),
        "{env:?}"
    );
    // An optional-value flag too, which clap names `--dry-run[=<BOOL>]`.
    let dry = run(&["apply", "--dir", "policies"], &[("KPR_DRY_RUN", "true ")]);
    assert_eq!(dry.code, 1, "{dry:?}");
    assert!(
        dry.stderr
            .contains("the value comes from the environment variable KPR_DRY_RUN"),
        "{dry:?}"
    );
    let flag = run(&[&plan[..], &["--concurrency", "eight"]].concat(), &[]);
    assert_eq!(flag.code, 1, "{flag:?}");
    assert!(!flag.stderr.contains("environment variable"), "{flag:?}");
    let unknown = run(&["aply", "--dir", "policies"], &[]);
    assert_eq!(unknown.code, 1, "{unknown:?}");

    let diff = run(&["policy", "diff", "only-one.json"], &[]);
    assert_eq!(diff.code, 2, "{diff:?}");
    // A config file that cannot be read is trouble too, not "the policies differ".
    let same = ["policy", "diff", "README.md", "README.md"];
    let config = run(&same, &[("KPR_CONFIG", "no-such-config.yaml")]);
    assert_eq!(config.code, 2, "{config:?}");

    // tracing reads a bare word as a target to log alone: `warning` would silence every event.
    for level in ["warning", "Verbose", "info,debg", ","] {
        let bad = run(
            &["validate", "--dir", "policies"],
            &[("KPR_LOG_LEVEL", level)],
        );
        assert_eq!(bad.code, 1, "{bad:?}");
        assert!(bad.stderr.contains("invalid log level"), "{bad:?}");
        let bad = run(&same, &[("KPR_LOG_LEVEL", level)]);
        assert_eq!(bad.code, 2, "{bad:?}");
    }
    // A pipeline that asked for JSON reads a document for these too, not an empty stdout.
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "bogus: 1\n").unwrap();
    let config = cfg.path().display().to_string();
    let dir = ["--dir", "policies"];
    let with_dir = |args: &[&'static str]| [args, &dir[..]].concat();
    for (args, env, kind, reason) in [
        (
            with_dir(&["plan", "--output", "json"]),
            ("KPR_CONFIG", &*config),
            "plan",
            "invalid_config",
        ),
        (
            with_dir(&["apply", "--dry-run", "--output", "json"]),
            ("KPR_LOG_LEVEL", "warning"),
            "plan",
            "usage",
        ),
        // A query in the endpoint URL: the SDK would log it (a token?).
        (
            with_dir(&["plan", "--output", "json"]),
            ("KPR_ENDPOINT_URL", "http://127.0.0.1:9/?token=QUERYTOKEN"),
            "plan",
            "usage",
        ),
        // Nor a user name and password: the SDK's debug log prints the endpoint.
        (
            with_dir(&["plan", "--output", "json"]),
            ("KPR_ENDPOINT_URL", "http://u:USERSECRET@127.0.0.1:9/"),
            "plan",
            "usage",
        ),
        // An empty endpoint, ours or the SDK's: the SDK panicked on it (exit 101), and an
        // empty one is no choice between AWS and an emulator.
        (
            with_dir(&["plan", "--output", "json"]),
            ("KPR_ENDPOINT_URL", ""),
            "plan",
            "usage",
        ),
        // One of kpr's variables misspelt: ignored, this dry run would write.
        (
            with_dir(&["apply", "--output", "json"]),
            ("KPR_DRYRUN", "true"),
            "apply",
            "usage",
        ),
        // No --dir at all.
        (
            vec!["apply", "--output", "json"],
            ("KPR_LOG_LEVEL", "warn"),
            "apply",
            "usage",
        ),
        (
            with_dir(&["validate", "--output", "json"]),
            ("KPR_CONFIG", &*config),
            "validate",
            "invalid_config",
        ),
    ] {
        let got = run(&args, &[env]);
        assert_eq!(got.code, 1, "{args:?}: {got:?}");
        let doc: serde_json::Value = serde_json::from_str(&got.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not a JSON document ({e}): {got:?}"));
        assert_eq!(
            (doc["kind"].as_str(), doc["refused"]["reason"].as_str()),
            (Some(kind), Some(reason)),
            "{args:?}: {got:?}"
        );
    }
    // The SDK's own settings, empty, with no endpoint of kpr's to take their place: refused
    // by the commands that call AWS, as the SDK would look them up (the service's variable
    // first), and by `serve --check-config`; the others do not care.
    let profile = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(profile.path(), "[default]\nendpoint_url =\n").unwrap();
    let profile = profile.path().to_string_lossy().into_owned();
    let sdk = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = common::kpr_cmd("http://127.0.0.1:9");
        c.args(args)
            .env_remove("KPR_ENDPOINT_URL")
            .envs(env.iter().copied());
        common::output(c.output().expect("run kpr"))
    };
    let apply = ["apply", "--output", "json", "--dir", "policies"];
    for (env, named) in [
        (
            &[("AWS_ENDPOINT_URL_KINESIS", " ")][..],
            "AWS_ENDPOINT_URL_KINESIS",
        ),
        (&[("AWS_ENDPOINT_URL", "")], "AWS_ENDPOINT_URL"),
        (
            &[("AWS_CONFIG_FILE", &*profile)],
            "endpoint_url in the AWS profile",
        ),
    ] {
        let got = sdk(&apply, env);
        assert_eq!(got.code, 1, "{env:?}: {got:?}");
        assert!(
            got.stdout.contains("\"usage\"")
                && got.stdout.contains(&format!("{named} is set but empty")),
            "{env:?}: {got:?}"
        );
        let check = sdk(&["serve", "--check-config", "--dir", "policies"], env);
        assert_eq!(check.code, 1, "{env:?}: {check:?}");
        assert!(check.stderr.contains("configuration invalid"), "{check:?}");
        assert_eq!(sdk(&["validate", "--dir", "policies"], env).code, 0);
    }
    // The SDK's own, with a password in it: refused as kpr's own is.
    let secret = sdk(
        &apply,
        &[("AWS_ENDPOINT_URL", "http://u:SDKSECRET@127.0.0.1:9")],
    );
    assert!(
        secret.code == 1
            && secret
                .stdout
                .contains("AWS_ENDPOINT_URL has a user name or password")
            && !secret.stdout.contains("SDKSECRET")
            && !secret.stderr.contains("SDKSECRET"),
        "{secret:?}"
    );
    let behind = sdk(
        &[
            "plan",
            "--dir",
            "policies",
            "--output",
            "json",
            "--max-attempts",
            "1",
        ],
        &[
            ("AWS_ENDPOINT_URL", ""),
            ("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:9"),
        ],
    );
    assert!(
        behind.stdout.contains("\"failed\": 4") && !behind.stdout.contains("\"refused\""),
        "the service's variable comes first: {behind:?}"
    );
    // With a role to assume, STS takes the empty global one: refused, not a panic per call.
    let roles = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        roles.path(),
        "accounts:\n  \"111122223333\": {roleArn: \"arn:aws:iam::111122223333:role/kpr\"}\n",
    )
    .unwrap();
    let roles = roles.path().to_string_lossy().into_owned();
    let sts = sdk(
        &[
            "plan", "--dir", "policies", "--output", "json", "--config", &roles,
        ],
        &[
            ("AWS_ENDPOINT_URL", ""),
            ("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:9"),
        ],
    );
    assert!(
        sts.code == 1 && sts.stdout.contains("\"usage\"") && sts.stdout.contains("STS client"),
        "{sts:?}"
    );
    assert_eq!(
        run(
            &["validate", "--dir", "policies"],
            &[("KPR_ENDPOINT_URL", "")]
        )
        .code,
        0
    );
    // kpr's own endpoint does not serve the default chain's STS (web identity, as on EKS):
    // an empty one it would take is refused as well.
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "token").unwrap();
    let mut c = common::kpr_cmd("http://127.0.0.1:9");
    c.args(["plan", "--dir", "policies"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", token.path())
        .env("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/kpr")
        .env("AWS_ENDPOINT_URL_STS", "");
    let web = common::output(c.output().expect("run kpr"));
    assert!(
        web.code == 1 && web.stderr.contains("AWS_ENDPOINT_URL_STS is set but empty"),
        "{web:?}"
    );
    // `endpointUrl:` with no value, as envsubst leaves an unset variable.
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "endpointUrl:\n").unwrap();
    let config = cfg.path().to_string_lossy().into_owned();
    let unset = run(&["validate", "--dir", "policies", "--config", &config], &[]);
    assert_eq!(unset.code, 1, "{unset:?}");
    assert!(
        unset.stderr.contains("endpointUrl has no value"),
        "{unset:?}"
    );
    // An empty variable is unset: the default level.
    for level in [
        "WARN",
        "info,kinesis_policy_reconciler=debug",
        "off",
        "2",
        "",
    ] {
        let good = run(
            &["validate", "--dir", "policies"],
            &[("KPR_LOG_LEVEL", level)],
        );
        assert_eq!(good.code, 0, "{level}: {good:?}");
    }
    // `kpr=` names the program: its events, not a target nothing logs under (all silence).
    let named = run(
        &["plan", "--dir", "policies", "--max-attempts", "2"],
        &[("KPR_LOG_LEVEL", "kpr=debug")],
    );
    assert!(
        named.stderr.contains("DEBUG kinesis_policy_reconciler"),
        "{named:?}"
    );

    let help = run(&["plan", "--help"], &[]);
    assert_eq!(help.code, 0, "{help:?}");
    assert!(help.stdout.contains("--detailed-exitcode"), "{help:?}");
    // Help names the variables, never their values: a URL may carry a token.
    for (args, var) in [
        (&["serve", "--help"][..], "KPR_GIT_URL"),
        (&["plan", "--help"][..], "KPR_ENDPOINT_URL"),
    ] {
        let help = run(args, &[(var, "https://u:HELPTOKEN@h/r.git")]);
        assert_eq!(help.code, 0, "{help:?}");
        assert!(help.stdout.contains(var), "{help:?}");
        assert!(!help.stdout.contains("HELPTOKEN"), "{help:?}");
    }
    let version = run(&["--version"], &[]);
    assert_eq!(version.code, 0, "{version:?}");
    assert!(
        version.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{version:?}"
    );
}

/// Output lost to a full disk fails the run: `kpr plan --output json > plan.json` must not
/// read as "no changes" (or "changes") with an empty file. A reader that closed the pipe
/// (`kpr schema | head`) has what it wanted: that is not an error.
#[test]
fn lost_output_fails_the_run_and_a_closed_pipe_does_not() {
    let run = |args: &[&str], stdout: Stdio| {
        let mut c = common::kpr_cmd("http://127.0.0.1:9");
        c.args(args).stdout(stdout).stderr(Stdio::piped());
        let out = c.output().expect("run kpr");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let full = || Stdio::from(std::fs::File::create("/dev/full").expect("open /dev/full"));
    for (args, code) in [
        (
            &["validate", "--dir", "policies", "--output", "json"][..],
            1,
        ),
        (&["schema"][..], 1),
        (
            &["policy", "fmt", "policies/orders-cross-account-reader.yaml"][..],
            1,
        ),
        (&["policy", "diff", "README.md", "README.md"][..], 2),
        (&["--help"][..], 1),
        (&["--version"][..], 1),
    ] {
        let (got, stderr) = run(args, full());
        assert_eq!(got, Some(code), "{args:?}: {stderr}");
        if code == 1 {
            // Once, however many writes failed.
            assert_eq!(
                stderr.matches("cannot write to stdout").count(),
                1,
                "{args:?}: {stderr}"
            );
        }
    }
    // Its reader closed before kpr starts: every write meets a closed pipe.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let (got, stderr) = run(&["schema"], Stdio::from(writer));
    assert_eq!(got, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// `logLevel` and `logFormat` in the config file set the logs, below a flag or `KPR_*`
/// variable, and a value that is neither text nor json is an error naming the file and line.
#[test]
fn the_config_file_sets_how_kpr_logs() {
    let emu = common::kinesis_mock();
    let (_, dir) = emu.stream_with_manifest("logs");
    let files = Manifests::new(&[
        ("kpr.yaml", "logLevel: debug\nlogFormat: json\n"),
        ("bad.yaml", "logLevel: info\nlogFormat: xml\n"),
    ]);
    let config = files.path().join("kpr.yaml").to_string_lossy().into_owned();
    let manifests = dir.arg();
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", "--dir", &manifests];
        args.extend_from_slice(extra);
        emu.kpr(&args)
    };
    // Each log line as JSON at DEBUG; none unless the config file asks for it.
    let debug_lines = |run: &common::Run| {
        run.stderr
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["level"] == "DEBUG")
            })
            .count()
    };

    let plain = plan(&[]);
    assert_eq!(plain.code, 0, "{plain:?}");
    assert_eq!(debug_lines(&plain), 0, "{plain:?}");
    let from_file = plan(&["--config", &config]);
    assert_eq!(from_file.code, 0, "{from_file:?}");
    assert!(debug_lines(&from_file) > 0, "{from_file:?}");
    let flag_wins = plan(&["--config", &config, "--log-level", "warn"]);
    assert_eq!(flag_wins.code, 0, "{flag_wins:?}");
    assert_eq!(debug_lines(&flag_wins), 0, "{flag_wins:?}");

    let bad = files.path().join("bad.yaml").to_string_lossy().into_owned();
    let run = plan(&["--config", &bad]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("bad.yaml") && run.stderr.contains("xml"),
        "{run:?}"
    );
}

/// The config file serves `plan` and `apply` as it serves `serve` (one file for both is what
/// the README and the workflow suggest): `dir`, `dryRun`, `prune` and `maxDeletes`, each below a
/// flag or a `KPR_*` variable. A `dryRun: true` that `apply` ignored would write.
#[test]
fn the_config_file_settles_plan_and_apply() {
    let emu = common::kinesis_mock_private();
    let a = emu.create_stream(&unique("cfg-a"));
    let stray = emu.create_stream(&unique("cfg-stray"));
    let stray_policy = read_policy(&stray, "arn:aws:iam::111122223333:role/stray");
    emu.put_policy_raw(&stray, &stray_policy.to_string());
    let dir = Manifests::new(&[("a.yaml", &manifest(&a, &read_policy(&a, "111122223333")))]);
    let files = Manifests::new(&[(
        "kpr.yaml",
        &format!(
            "dir: {}\ndryRun: true\nprune: true\nmaxDeletes: 1\n",
            dir.arg()
        ),
    )]);
    let config = files.path().join("kpr.yaml").to_string_lossy().into_owned();
    let kpr = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = emu.kpr_cmd();
        c.arg("--config").arg(&config).args(args);
        c.envs(env.iter().copied());
        common::output(c.output().expect("run kpr"))
    };

    let dry = kpr(&["apply"], &[]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(emu.get_policy(&a).is_none(), "dryRun: true wrote: {dry:?}");
    assert!(emu.get_policy(&stray).is_some());
    assert!(
        dry.stdout.contains("1 to create") && dry.stdout.contains("1 to delete"),
        "{dry:?}"
    );
    // The file's maxDeletes guards a prune the variable asks for.
    let zero = kpr(&["plan"], &[("KPR_MAX_DELETES", "0")]);
    assert_eq!(zero.code, 1, "{zero:?}");
    let no_prune = kpr(&["plan", "--prune=false"], &[]);
    assert!(no_prune.stdout.contains("0 to delete"), "{no_prune:?}");

    let applied = kpr(&["apply"], &[("KPR_DRY_RUN", "false")]);
    assert_eq!(applied.code, 0, "{applied:?}");
    assert!(emu.get_policy(&a).is_some(), "{applied:?}");
    assert!(emu.get_policy(&stray).is_none(), "{applied:?}");

    let mut c = emu.kpr_cmd();
    let none = common::output(c.args(["validate"]).output().expect("run kpr"));
    assert_eq!(none.code, 1, "{none:?}");
    assert!(none.stderr.contains("no manifest directory"), "{none:?}");
}

/// Keys in the environment let kpr skip building the rest of the default credential chain; without
/// them the whole chain must still run. Here its profile-file link finds the keys, and with no
/// file either, each resource fails naming every link tried, before any write.
#[test]
fn without_keys_in_the_environment_the_default_credential_chain_runs() {
    let emu = common::kinesis_mock();
    let (arn, dir) = emu.stream_with_manifest("creds");
    let files = Manifests::new(&[
        ("config", ""),
        (
            "credentials",
            "[default]\naws_access_key_id = fromfile\naws_secret_access_key = fromfile\n",
        ),
    ]);
    let config = files.path().join("config");
    let keys = files.path().join("credentials");
    let plan = |credentials_file: &std::path::Path| {
        let mut c = emu.kpr_cmd();
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", credentials_file)
            // Off EC2 the last link would wait on a metadata service that is not there.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["plan", "--dir", &dir.arg(), "--output", "json"]);
        common::output(c.output().expect("run kpr"))
    };

    let from_file = plan(&keys);
    assert_eq!(from_file.code, 0, "{from_file:?}");
    assert_eq!(from_file.json()["resources"][0]["action"], "create");

    // A profile whose keys come from a program (aws-vault, a company's login tool), as the
    // AWS CLI runs it.
    let program = files.path().join("creds.sh");
    std::fs::write(
        &program,
        "#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"fromprocess\", \"SecretAccessKey\": \"x\"}'\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let process_config = files.path().join("process-config");
    std::fs::write(
        &process_config,
        format!(
            "[profile tool]\ncredential_process = {}\n",
            program.display()
        ),
    )
    .unwrap();
    let mut c = emu.kpr_cmd();
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_CONFIG_FILE", &process_config)
        .env("AWS_SHARED_CREDENTIALS_FILE", files.path().join("absent"))
        .env("AWS_PROFILE", "tool")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["plan", "--dir", &dir.arg(), "--output", "json"]);
    let from_process = common::output(c.output().expect("run kpr"));
    assert_eq!(from_process.code, 0, "{from_process:?}");

    let none = plan(&files.path().join("absent"));
    assert_eq!(none.code, 1, "{none:?}");
    let message = none.json()["failures"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for link in [
        "Environment",
        "Profile",
        "WebIdentityToken",
        "Ec2InstanceMetadata",
    ] {
        assert!(message.contains(link), "{link} not tried: {message}");
    }
    // Said once, with what to do, and not again in the SDK's warnings (its Debug dumps).
    assert!(
        message.contains("no credentials: none in the environment")
            && message.contains("AWS_ACCESS_KEY_ID"),
        "{message}"
    );
    assert!(!none.stderr.contains("provider failed"), "{none:?}");
    assert_eq!(emu.get_policy(&arn), None, "a plan wrote a policy");
}

/// The SDK's profile provider tells why it failed to its first caller only, and "initialization
/// error already taken" to the rest: a run's second account (a second set of clients) lost
/// the cause. Every resource must carry it. No call is made: the endpoint is never reached.
#[test]
fn a_missing_profile_is_named_for_every_account() {
    let files = Manifests::new(&[("config", "[profile other]\nregion = us-east-1\n")]);
    let manifests: Vec<(String, String)> = ["111122223333", "444455556666", "777788889999"]
        .iter()
        .map(|account| {
            let arn = format!("arn:aws:kinesis:us-east-1:{account}:stream/s");
            (
                format!("{account}.yaml"),
                manifest(&arn, &read_policy(&arn, "arn:aws:iam::111122223333:role/r")),
            )
        })
        .collect();
    let dir = Manifests::new(
        &manifests
            .iter()
            .map(|(f, t)| (f.as_str(), t.as_str()))
            .collect::<Vec<_>>(),
    );
    let mut c = common::kpr_cmd("http://127.0.0.1:9");
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_CONFIG_FILE", files.path().join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", files.path().join("absent"))
        .env("AWS_PROFILE", "nosuch")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["plan", "--dir", &dir.arg(), "--output", "json"]);
    let run = common::output(c.output().expect("run kpr"));
    assert_eq!(run.code, 1, "{run:?}");
    let failures = run.json()["failures"].as_array().unwrap().clone();
    assert_eq!(failures.len(), 3, "{run:?}");
    for f in &failures {
        let message = f["message"].as_str().unwrap();
        assert!(
            message.contains("profile `nosuch` was not defined"),
            "{}: {message}",
            f["arn"]
        );
    }
}

#[test]
fn invalid_manifest_means_zero_writes() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("inval"));
    let good = manifest(&arn, &read_policy(&arn, "111122223333"));
    // One good manifest and one with a typo'd key: nothing may be written.
    let dir = Manifests::new(&[
        ("good.yaml", &good),
        (
            "bad.yaml",
            "arn: arn:aws:kinesis:us-east-1:000000000000:stream/x\nensure: absent\nalowPublic: true\n",
        ),
        (
            "warn.yaml",
            &common::manifest(
                "arn:aws:kinesis:us-east-1:000000000000:stream/w",
                &json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                    "Principal": {"AWS": "444455556666"}, "Action": "kinesis:GetRecordz",
                    "Resource": "arn:aws:kinesis:us-east-1:000000000000:stream/w"}]}),
            ),
        ),
    ]);
    for cmd in ["plan", "apply"] {
        let run = emu.kpr(&[cmd, "--dir", &dir.arg()]);
        assert_eq!(run.code, 1, "{run:?}");
        assert!(
            run.stderr
                .contains("bad.yaml:3: error: unknown field `alowPublic`"),
            "{run:?}"
        );
        assert!(
            run.stderr.contains("nothing was planned or applied"),
            "{run:?}"
        );
        // A pipeline that asked for JSON gets a document saying why, not an empty stdout.
        let json = emu.kpr(&[cmd, "--dir", &dir.arg(), "--output", "json"]);
        assert_eq!(json.code, 1, "{json:?}");
        let doc = json.json();
        assert_eq!(doc["kind"], cmd);
        assert_eq!(doc["refused"]["reason"], "invalid_manifests", "{doc}");
        let diagnostic = &doc["diagnostics"][0];
        assert!(
            diagnostic["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("bad.yaml"))
                && diagnostic["line"] == 3,
            "{doc}"
        );
        // The set's warnings are not lost for its errors, in the document or on stderr.
        assert_eq!(doc["diagnostics"][1]["severity"], "warning", "{doc}");
        assert!(json.stderr.contains("warn.yaml"), "{json:?}");
    }
    assert_eq!(
        emu.get_policy(&arn),
        None,
        "an invalid manifest set must write nothing"
    );
    let validate = emu.kpr(&["validate", "--dir", &dir.arg()]);
    assert_eq!(validate.code, 1);
    std::fs::remove_file(dir.path().join("bad.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("warn.yaml")).unwrap();
    let validate = emu.kpr(&["validate", "--dir", &dir.arg()]);
    assert_eq!(validate.code, 0, "{validate:?}");
    assert!(
        validate
            .stdout
            .contains("1 manifest(s) in 1 file(s) are valid.")
    );
}

#[test]
fn public_principal_needs_allow_public() {
    let emu = common::kinesis_mock();
    let arn = emu.create_stream(&unique("pub"));
    let public = json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kinesis:GetRecords","Resource":arn}]});
    let dir = Manifests::new(&[("p.yaml", &manifest(&arn, &public))]);
    let run = emu.kpr(&["apply", "--dir", &dir.arg()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        // At the statement's Principal, not at `policy:`.
        run.stderr.contains("p.yaml:6:") && run.stderr.contains("allowPublic"),
        "{run:?}"
    );
    assert_eq!(emu.get_policy(&arn), None);
    dir.write(
        "p.yaml",
        &format!("allowPublic: true\n{}", manifest(&arn, &public)),
    );
    let run = emu.kpr(&["apply", "--dir", &dir.arg()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(emu.get_policy(&arn).is_some());

    // A warning stops nothing, and plan prints it where a pipeline that only plans sees it.
    let mut locked = public.clone();
    locked["Statement"]
        .as_array_mut()
        .unwrap()
        .push(json!({"Effect": "Deny",
        "Principal": "*", "Action": "kinesis:PutResourcePolicy", "Resource": arn}));
    dir.write(
        "p.yaml",
        &format!("allowPublic: true\n{}", manifest(&arn, &locked)),
    );
    let run = emu.kpr(&["plan", "--dir", &dir.arg(), "--detailed-exitcode"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("p.yaml:11: warning:") && run.stderr.contains("kpr can no longer read"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("warning"), "{run:?}");
    // A pull-request comment built from the JSON has them too.
    let json = emu
        .kpr(&["plan", "--dir", &dir.arg(), "--output", "json"])
        .json();
    let diags = json["diagnostics"].as_array().expect("diagnostics");
    assert!(
        diags.iter().any(|d| d["severity"] == "warning"
            && d["line"] == 11
            && d["message"]
                .as_str()
                .unwrap()
                .contains("kpr can no longer read")),
        "{json:#}"
    );
}

/// Prune lists consumers too: an undeclared consumer's policy goes, while one declared by name
/// (no timestamp), which the listing returns with its timestamp, stays.
#[test]
fn prune_deletes_an_undeclared_consumers_policy_and_keeps_one_declared_by_name() {
    let emu = common::kinesis_mock_private();
    let stream = emu.create_stream(&unique("prune-cons"));
    let kept = emu.register_consumer(&stream, "kept");
    let stray = emu.register_consumer(&stream, "stray");
    let grant = |arn: &str| {
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::444455556666:role/reader"},
            "Action": "kinesis:SubscribeToShard", "Resource": arn}]})
    };
    let by_name = format!("{stream}/consumer/kept");
    let kept_policy = grant(&format!("{by_name}:*"));
    emu.put_policy_raw(&kept, &kept_policy.to_string());
    emu.put_policy_raw(&stray, &grant(&stray).to_string());
    let dir = Manifests::new(&[("kept.yaml", &manifest(&by_name, &kept_policy))]);
    let plan = emu.kpr(&[
        "plan",
        "--dir",
        &dir.arg(),
        "--prune",
        "--detailed-exitcode",
    ]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stdout.contains(&format!("- delete consumer {stray}")),
        "{plan:?}"
    );
    assert!(
        !plan.stdout.contains(&format!("delete consumer {kept}")),
        "{plan:?}"
    );
    let apply = emu.kpr(&["apply", "--dir", &dir.arg(), "--prune"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(emu.get_policy(&stray).is_none(), "{apply:?}");
    assert!(
        emu.get_policy(&kept)
            .is_some_and(|p| same_grant(&p, &kept_policy)),
        "{apply:?}"
    );
    let again = emu.kpr(&[
        "plan",
        "--dir",
        &dir.arg(),
        "--prune",
        "--detailed-exitcode",
    ]);
    assert_eq!(again.code, 0, "{again:?}");
}

#[test]
fn prune_deletes_undeclared_policies_within_its_guards() {
    // A private account keeps other tests' streams out of this one's reach.
    let emu = common::kinesis_mock_private();
    let kept = emu.create_stream(&unique("kept"));
    let mut stray = Vec::new();
    for _ in 0..3 {
        let arn = emu.create_stream(&unique("stray"));
        emu.put_policy_raw(&arn, &read_policy(&arn, "111122223333").to_string());
        stray.push(arn);
    }
    let dir = Manifests::new(&[(
        "k.yaml",
        &manifest(&kept, &read_policy(&kept, "111122223333")),
    )]);
    let kpr = |args: &[&str]| emu.kpr(args);
    // Guard 1: more deletes than --max-deletes (default 3 allows exactly these 3; ask for 2).
    let refused = kpr(&[
        "apply",
        "--dir",
        &dir.arg(),
        "--prune",
        "--max-deletes",
        "2",
    ]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("would delete 3 policies, more than the limit of 2"),
        "{refused:?}"
    );
    let json = kpr(&[
        "plan",
        "--dir",
        &dir.arg(),
        "--prune",
        "--max-deletes",
        "2",
        "--output",
        "json",
    ]);
    assert_eq!(json.code, 1, "{json:?}");
    let doc = json.json();
    assert_eq!(doc["refused"]["reason"], "prune_guard", "{json:?}");
    // The plan it refused comes with it, as data: the three deletes, and the create beside them.
    let actions = |want: &str| -> Vec<String> {
        doc["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .filter(|r| r["action"] == want)
            .map(|r| r["arn"].as_str().unwrap().to_string())
            .collect()
    };
    let mut deletes = actions("delete");
    deletes.sort();
    let mut want = stray.clone();
    want.sort();
    assert_eq!(deletes, want, "{doc:#}");
    assert_eq!(actions("create"), std::slice::from_ref(&kept), "{doc:#}");
    assert_eq!(doc["summary"]["delete"], 3, "{doc:#}");
    assert!(doc["targeted"].is_null(), "{doc:#}");
    // Targeted, the refused plan says it is not about the whole set, as a plan's would. A
    // target with neither a manifest nor a policy is warned about, once however often named,
    // also when the guard refuses the plan.
    let bare = emu.create_stream(&unique("bare"));
    let typo = emu.stream_arn(&unique("no-such-stream"));
    let targeted = kpr(&[
        "plan",
        "--dir",
        &dir.arg(),
        "--prune",
        "--max-deletes",
        "1",
        "--output",
        "json",
        "--target",
        &stray[0],
        "--target",
        &stray[1],
        "--target",
        &bare,
        "--target",
        &bare,
        "--target",
        &typo,
    ]);
    assert_eq!(targeted.code, 1, "{targeted:?}");
    let t = targeted.json();
    assert_eq!(t["refused"]["reason"], "prune_guard", "{t:#}");
    assert_eq!(t["targeted"]["declared"], 1, "{t:#}");
    assert_eq!(t["targeted"]["planned"], 0, "{t:#}");
    let warned = format!("--target {bare} matched nothing");
    // One that names nothing at all is not taken for a policy already deleted.
    let mistyped = format!("--target {typo} matches no manifest");
    let diagnostics: Vec<&str> = t["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["message"].as_str().unwrap())
        .collect();
    assert_eq!(diagnostics.len(), 2, "{t:#}");
    assert!(diagnostics[0].starts_with(&warned), "{t:#}");
    assert!(
        diagnostics[1].starts_with(&mistyped)
            && diagnostics[1].ends_with("no stream or consumer in reach")
            && !diagnostics[1].contains("already deleted"),
        "{t:#}"
    );
    assert_eq!(targeted.stderr.matches(&warned).count(), 1, "{targeted:?}");
    // And in text, as plan shows changes, before the refusal.
    assert!(
        refused
            .stdout
            .contains(&format!("- delete stream {}", stray[0]))
            && refused.stdout.contains(&format!("+ create stream {kept}"))
            && refused.stdout.contains("Plan: 1 to create")
            && refused
                .stdout
                .contains("Refused by the prune guard: nothing was written."),
        "{refused:?}"
    );
    assert!(
        emu.get_policy(&stray[0]).is_some(),
        "refused prune wrote nothing"
    );
    assert!(
        emu.get_policy(&kept).is_none(),
        "refused prune wrote nothing"
    );
    // An empty manifest set never reaches planning: the loader refuses it, so --prune cannot
    // read "no manifests" as "delete everything" (the planner's own guard stays as a backstop).
    let empty = tempfile::tempdir().unwrap();
    let refused = kpr(&["plan", "--dir", &empty.path().to_string_lossy(), "--prune"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("no manifests"), "{refused:?}");
    // Within the guard: the plan lists the deletes, apply performs them.
    let plan = kpr(&["plan", "--dir", &dir.arg(), "--prune", "--output", "json"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let j = plan.json();
    assert_eq!(j["summary"]["delete"], 3, "{j}");
    assert_eq!(j["summary"]["create"], 1, "{j}");
    let apply = kpr(&["apply", "--dir", &dir.arg(), "--prune"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    for arn in &stray {
        assert_eq!(emu.get_policy(arn), None, "{arn} still has a policy");
    }
    assert!(emu.get_policy(&kept).is_some());
    // Converged: nothing left to prune.
    assert_eq!(
        kpr(&[
            "plan",
            "--dir",
            &dir.arg(),
            "--prune",
            "--detailed-exitcode"
        ])
        .code,
        0
    );
    // Without --prune, an undeclared policy is left alone.
    let unmanaged = emu.create_stream(&unique("unmanaged"));
    emu.put_policy_raw(
        &unmanaged,
        &read_policy(&unmanaged, "111122223333").to_string(),
    );
    let apply = kpr(&["apply", "--dir", &dir.arg(), "--detailed-exitcode"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(
        emu.get_policy(&unmanaged).is_some(),
        "deleted without --prune"
    );
}

/// Credentials of one account (moto's), manifests of another and no role mapped for it: the
/// service lists the credentials' account. Those streams must not pass for the manifests'
/// account's under --prune: an error names both accounts, and nothing is deleted.
#[test]
fn prune_refuses_a_listing_of_another_accounts_streams() {
    let emu = common::moto();
    let own = emu.create_stream(&unique("listed"));
    emu.put_policy_raw(&own, &read_policy(&own, "111122223333").to_string());
    let foreign_account = if emu.account == "111122223333" {
        "444455556666"
    } else {
        "111122223333"
    };
    let foreign = format!("arn:aws:kinesis:us-east-1:{foreign_account}:stream/elsewhere");
    let dir = Manifests::new(&[("a.yaml", &absent(&foreign))]);
    let run = emu.kpr(&["apply", "--dir", &dir.arg(), "--prune"]);
    assert_eq!(run.code, 1, "{run:?}");
    let wanted = format!(
        "listing streams for account {foreign_account} in us-east-1 returned account {}'s streams",
        emu.account
    );
    assert!(run.stdout.contains(&wanted), "{run:?}");
    assert!(
        emu.get_policy(&own).is_some(),
        "a listed stream's policy was deleted"
    );
}

#[test]
fn target_limits_the_run() {
    let emu = common::kinesis_mock();
    let a = emu.create_stream(&unique("ta"));
    let b = emu.create_stream(&unique("tb"));
    let dir = Manifests::new(&[
        ("a.yaml", &manifest(&a, &read_policy(&a, "111122223333"))),
        ("b.yaml", &manifest(&b, &read_policy(&b, "111122223333"))),
    ]);
    let run = emu.kpr(&["apply", "--dir", &dir.arg(), "--target", &a]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(emu.get_policy(&a).is_some());
    assert!(
        emu.get_policy(&b).is_none(),
        "untargeted resource was written"
    );
    let partial = "Partial: --target planned 1 of the 2 declared resource(s)";
    assert!(run.stdout.contains(partial), "{run:?}");
    // b has no policy yet: a targeted plan must not say all is well.
    let plan = emu.kpr(&["plan", "--dir", &dir.arg(), "--target", &a]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(
        plan.stdout
            .contains("No changes in the targeted resources.")
            && plan.stdout.contains(partial)
            && !plan.stdout.contains("Every live policy"),
        "{plan:?}"
    );
    // A pipeline reading the JSON must see the run was partial, too.
    let json = emu.kpr(&[
        "plan",
        "--dir",
        &dir.arg(),
        "--target",
        &a,
        "--output",
        "json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        doc["targeted"],
        json!({"planned": 1, "declared": 2}),
        "{json:?}"
    );
    let whole = emu.kpr(&["plan", "--dir", &dir.arg(), "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&whole.stdout).unwrap();
    assert!(doc.get("targeted").is_none(), "{whole:?}");
    let bad = emu.kpr(&["plan", "--dir", &dir.arg(), "--target", "arn:aws:s3:::x"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    // A target that names nothing is an error, not a silent "no changes".
    let typo = format!("{a}-typo");
    let miss = emu.kpr(&[
        "plan",
        "--dir",
        &dir.arg(),
        "--target",
        &typo,
        "--detailed-exitcode",
    ]);
    assert_eq!(miss.code, 1, "{miss:?}");
    assert!(miss.stderr.contains("matches no manifest"), "{miss:?}");
    // With --prune the target is checked after listing the account: a private one, so the
    // listing neither crawls nor reaches other tests' streams.
    let own = common::kinesis_mock_private();
    let (own_arn, own_dir) = own.stream_with_manifest("tp");
    let own_typo = format!("{own_arn}-typo");
    // `apply --prune --target TARGET` on the private account, with `extra` flags.
    let pruning = |target: &str, extra: &[&str]| {
        let args = [
            "apply",
            "--dir",
            &own_dir.arg(),
            "--target",
            target,
            "--prune",
        ];
        own.kpr(&[&args[..], extra].concat())
    };
    let miss = pruning(&own_typo, &[]);
    // Under --prune a target that names no stream at all is a typo too, and a dry run's
    // refusal is a plan's document.
    assert_eq!(miss.code, 1, "{miss:?}");
    assert!(miss.stderr.contains("matches no manifest in "), "{miss:?}");
    assert!(
        miss.stderr.contains("and no stream or consumer in reach"),
        "{miss:?}"
    );
    assert!(own.get_policy(&own_arn).is_none(), "a targeted miss wrote");
    let json = pruning(&own_typo, &["--dry-run", "--output", "json"]);
    assert_eq!(json.code, 1, "{json:?}");
    let doc = json.json();
    assert_eq!(
        (doc["kind"].as_str(), doc["refused"]["reason"].as_str()),
        (Some("plan"), Some("unmatched_target")),
        "{json:?}"
    );
    // One that names a stream with no manifest and no policy (pruned by an earlier run):
    // nothing to do, with a warning.
    let bare = own.create_stream(&unique("tp-bare"));
    let done = pruning(&bare, &[]);
    assert_eq!(done.code, 0, "{done:?}");
    assert!(done.stderr.contains("matched nothing"), "{done:?}");
    // A target no manifest declares, whose policy --prune deletes: the note counts it.
    let stray = own.create_stream(&unique("tp-stray"));
    own.put_policy_raw(&stray, &read_policy(&stray, "111122223333").to_string());
    let args = [
        "plan",
        "--dir",
        &own_dir.arg(),
        "--target",
        &stray,
        "--prune",
    ];
    let pruned = own.kpr(&args);
    assert_eq!(pruned.code, 0, "{pruned:?}");
    assert!(
        pruned.stdout.contains(
            "Partial: --target planned 0 of the 1 declared resource(s), and 1 undeclared \
             one(s) to delete (--prune)"
        ),
        "{pruned:?}"
    );
    let json = emu.kpr(&[
        "plan",
        "--dir",
        &dir.arg(),
        "--target",
        &typo,
        "--output",
        "json",
    ]);
    assert_eq!(
        json.json()["refused"]["reason"],
        "unmatched_target",
        "{json:?}"
    );
    // A target that is not an ARN at all: still a document for the pipeline.
    let args = ["plan", "--dir", &dir.arg(), "--target", "orders-stream"];
    let json = emu.kpr(&[&args[..], &["--output", "json"]].concat());
    assert_eq!(json.code, 1, "{json:?}");
    let doc = json.json();
    assert_eq!(doc["refused"]["reason"], "unmatched_target", "{json:?}");
    assert!(
        doc["refused"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("invalid Kinesis ARN")),
        "{json:?}"
    );
}

#[test]
fn dry_run_writes_nothing() {
    let emu = common::kinesis_mock();
    let (arn, dir) = emu.stream_with_manifest("dry");
    let run = emu.kpr(&["apply", "--dir", &dir.arg(), "--dry-run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("+ create stream")
            && run.stdout.contains("Dry run: nothing was written."),
        "{run:?}"
    );
    assert_eq!(emu.get_policy(&arn), None);
}

#[test]
fn policy_diff_and_fmt() {
    let dir = Manifests::new(&[
        (
            "a.json",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["111122223333"]},"Action":["s3:GetObject","s3:ListBucket"],"Resource":"arn:aws:s3:::b/*"}]}"#,
        ),
        (
            "b.json",
            r#"{"Statement":{"Resource":["arn:aws:s3:::b/*"],"Action":["s3:ListBucket","s3:GetObject"],"Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Effect":"Allow"},"Version":"2012-10-17"}"#,
        ),
        (
            "lower.json",
            "{\"Version\": \"2012-10-17\",\n \"Statement\": {\"Principal\": \"*\", \"Action\": \"s3:*\",\n  \"Effect\": \"allow\", \"Resource\": \"a&b\"}}",
        ),
        (
            "c.json",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*"}]}"#,
        ),
        (
            "bad.json",
            "{\"Version\": \"2012-10-17\",\n \"Statement\": [,]}",
        ),
    ]);
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        common::output(
            common::kpr_cmd("http://127.0.0.1:9")
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let same = run(&["policy", "diff", &p("a.json"), &p("b.json")]);
    assert_eq!(same.code, 0, "{same:?}");
    // Naming no ARN, an account's root and its id are one principal in the partition of
    // `--region`, or the commercial one without it; not in China's.
    let wild = |principal: &str| {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"{principal}"}},"Action":"kinesis:GetRecords","Resource":"*"}}]}}"#
        )
    };
    dir.write("root.json", &wild("arn:aws:iam::444455556666:root"));
    dir.write("id.json", &wild("444455556666"));
    let ids = [p("root.json"), p("id.json")];
    let ids = ["policy", "diff", &ids[0], &ids[1]];
    assert_eq!(run(&ids).code, 0);
    assert_eq!(
        run(&[&ids[..], &["--region", "us-west-2"]].concat()).code,
        0
    );
    let cn = run(&[&ids[..], &["--region", "cn-north-1"]].concat());
    assert_eq!(cn.code, 1, "{cn:?}");
    let differ = run(&["policy", "diff", &p("a.json"), &p("c.json")]);
    assert_eq!(differ.code, 1, "{differ:?}");
    assert!(
        differ.stdout.contains("+     \"Effect\": \"Deny\""),
        "{differ:?}"
    );
    // `{}`: a resource without a policy, as the AWS CLI prints it.
    let none = dir.write("none.json", "{}\n");
    let none = none.to_string_lossy();
    let added = run(&["policy", "diff", &none, &p("a.json")]);
    assert_eq!(added.code, 1, "{added:?}");
    assert!(
        added.stdout.contains("allows now: 111122223333") && added.stdout.contains("+ statement"),
        "{added:?}"
    );
    assert_eq!(run(&["policy", "diff", &none, &none]).code, 0);
    // No policy against one with no statements: they differ, and the diff says where.
    let empty = dir.write("empty.json", r#"{"Version":"2012-10-17","Statement":[]}"#);
    let to_empty = run(&["policy", "diff", &none, &empty.to_string_lossy()]);
    assert_eq!(to_empty.code, 1, "{to_empty:?}");
    assert!(
        to_empty.stdout.contains("no policy -> Version 2012-10-17"),
        "{to_empty:?}"
    );
    // As kpr reads the API's answer: white space inside is still no policy.
    let spaced = dir.write("spaced.json", "{ \n }");
    assert_eq!(
        run(&["policy", "diff", &spaced.to_string_lossy(), &none]).code,
        0
    );
    // An empty file is a read that failed, not "no policy".
    let blank = dir.write("blank.json", "\n");
    let blank = run(&["policy", "diff", &blank.to_string_lossy(), &none]);
    assert_eq!(blank.code, 2, "{blank:?}");
    assert!(
        blank.stderr.contains("blank.json: error: empty file"),
        "{blank:?}"
    );
    let broken = run(&["policy", "diff", &p("a.json"), &p("bad.json")]);
    assert_eq!(broken.code, 2, "{broken:?}");
    assert!(broken.stderr.contains("bad.json:2:"), "{broken:?}");
    let lower = run(&["policy", "diff", &p("a.json"), &p("lower.json")]);
    assert_eq!(lower.code, 2, "{lower:?}");
    assert!(
        lower.stderr.contains("lower.json:3:") && lower.stderr.contains("write \"Allow\""),
        "{lower:?}"
    );
    let fmt_a = run(&["policy", "fmt", &p("a.json")]);
    let fmt_b = run(&["policy", "fmt", &p("b.json")]);
    assert_eq!(fmt_a.code, 0, "{fmt_a:?}");
    assert_eq!(fmt_b.code, 0, "{fmt_b:?}");
    // The canonical form: sorted keys and lists, one value unwrapped, the root ARN as the
    // account id.
    let canonical = json!({"Statement": [{"Action": ["s3:GetObject", "s3:ListBucket"],
        "Effect": "Allow", "Principal": {"AWS": "111122223333"},
        "Resource": "arn:aws:s3:::b/*"}], "Version": "2012-10-17"});
    assert_eq!(
        fmt_a.stdout,
        format!("{}\n", serde_json::to_string_pretty(&canonical).unwrap()),
        "{fmt_a:?}"
    );
    assert_eq!(
        fmt_a.stdout, fmt_b.stdout,
        "equivalent documents have one canonical form"
    );
    // Saved by an editor that starts files with a byte order mark.
    let bom = dir.write(
        "bom.json",
        &format!("\u{feff}{}", std::fs::read_to_string(p("a.json")).unwrap()),
    );
    let fmt_bom = run(&["policy", "fmt", &bom.to_string_lossy()]);
    assert_eq!(fmt_bom.stdout, fmt_a.stdout, "{fmt_bom:?}");
    // A right-to-left override would show `role/\u202enimda` as `role/admin`: escaped, and
    // still the same document to a JSON reader.
    let hidden = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:role/\u{202e}nimda"},
        "Action": "kinesis:GetRecords", "Resource": "*"}]});
    let bidi = dir.write("bidi.json", &hidden.to_string());
    let fmt_bidi = run(&["policy", "fmt", &bidi.to_string_lossy()]);
    assert!(
        fmt_bidi.stdout.contains("role/\\u202enimda") && !fmt_bidi.stdout.contains('\u{202e}'),
        "{fmt_bidi:?}"
    );
    let back: serde_json::Value = serde_json::from_str(&fmt_bidi.stdout).unwrap();
    assert_eq!(
        back["Statement"][0]["Principal"]["AWS"],
        hidden["Statement"][0]["Principal"]["AWS"]
    );
}

/// A manifest stands for its policy, so the live policy can be compared with the file in git.
#[test]
fn policy_diff_and_fmt_take_a_manifest() {
    let arn = "arn:aws:kinesis:us-east-1:111122223333:stream/orders";
    let policy = read_policy(arn, "444455556666");
    let public = json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kinesis:GetRecords","Resource":arn}]});
    let dir = Manifests::new(&[
        ("live.json", &policy.to_string()),
        ("orders.yaml", &manifest(arn, &policy)),
        (
            "other.yml",
            &manifest(arn, &read_policy(arn, "999988887777")),
        ),
        ("gone.yaml", &absent(arn)),
        ("public.yaml", &manifest(arn, &public)),
    ]);
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = common::kpr_cmd("http://127.0.0.1:9");
        cmd.args(args);
        match stdin {
            Some(text) => {
                cmd.stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                let mut child = cmd.spawn().unwrap();
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(text.as_bytes())
                    .unwrap();
                common::output(child.wait_with_output().unwrap())
            }
            None => common::output(cmd.output().unwrap()),
        }
    };
    let same = run(
        &["policy", "diff", &p("live.json"), &p("orders.yaml")],
        None,
    );
    assert_eq!(same.code, 0, "{same:?}");
    let differ = run(
        &["policy", "diff", &p("orders.yaml"), &p("other.yml")],
        None,
    );
    assert_eq!(differ.code, 1, "{differ:?}");
    assert!(
        differ.stdout.contains("+       \"AWS\": \"999988887777\""),
        "{differ:?}"
    );
    // On stdin, text that does not open with `{` is a manifest.
    let piped = run(
        &["policy", "diff", "-", &p("live.json")],
        Some(&manifest(arn, &policy)),
    );
    assert_eq!(piped.code, 0, "{piped:?}");
    let (from_manifest, from_live) = (
        run(&["policy", "fmt", &p("orders.yaml")], None),
        run(&["policy", "fmt", &p("live.json")], None),
    );
    assert_eq!(from_manifest.code, 0, "{from_manifest:?}");
    assert!(
        from_manifest.stdout.starts_with("{\n  \"Statement\": ["),
        "{from_manifest:?}"
    );
    assert_eq!(from_manifest.stdout, from_live.stdout);
    // `ensure: absent` asks for no policy: all of the live one goes.
    let gone = run(&["policy", "diff", &p("live.json"), &p("gone.yaml")], None);
    assert_eq!(gone.code, 1, "{gone:?}");
    assert!(
        gone.stdout.contains("allows no longer: ") && gone.stdout.contains("- statement"),
        "{gone:?}"
    );
    assert!(!gone.stdout.contains("+ statement"), "{gone:?}");
    // A manifest kpr would refuse is refused here too, with its file and line.
    let refused = run(&["policy", "fmt", &p("public.yaml")], None);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("public.yaml:"), "{refused:?}");
    assert!(refused.stderr.contains("allowPublic"), "{refused:?}");
    // As validate prints it: FILE:LINE: error: ..., with no second prefix.
    assert!(
        refused.stderr.contains("public.yaml:6: error: "),
        "{refused:?}"
    );
    assert!(
        !refused.stderr.contains("error: /"),
        "one prefix: {refused:?}"
    );
    // With the same settings as validate: the size limit, and its warnings.
    let small = run(
        &[
            "--max-policy-size",
            "100",
            "policy",
            "fmt",
            &p("orders.yaml"),
        ],
        None,
    );
    assert_eq!(small.code, 1, "{small:?}");
    assert!(
        small.stderr.contains("over the maximum of 100 bytes"),
        "{small:?}"
    );
    let typo = manifest(arn, &read_policy(arn, "444455556666"))
        .replace("kinesis:GetRecords", "kinesis:GetRecordz");
    let warned = run(&["policy", "diff", "-", &p("live.json")], Some(&typo));
    assert_eq!(warned.code, 1, "{warned:?}");
    assert!(warned.stderr.contains("warning:"), "{warned:?}");
    assert!(warned.stderr.contains("GetRecordz"), "{warned:?}");
}

/// A manifest's policy is read in its resource's partition, as plan reads it: with `Resource:
/// "*"`, only the manifest says that the stream is in aws-cn, where the commercial root ARN
/// names nobody.
#[test]
fn policy_diff_reads_a_manifest_in_its_partition() {
    let arn = "arn:aws-cn:kinesis:cn-north-1:111122223333:stream/orders";
    let grant = |who: &str| read_policy("*", who);
    let dir = Manifests::new(&[
        ("m.yaml", &manifest(arn, &grant("444455556666"))),
        (
            "commercial.json",
            &grant("arn:aws:iam::444455556666:root").to_string(),
        ),
        (
            "china.json",
            &grant("arn:aws-cn:iam::444455556666:root").to_string(),
        ),
    ]);
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let diff = |a: &str, b: &str| {
        common::output(
            common::kpr_cmd("http://127.0.0.1:9")
                .args(["policy", "diff", &p(a), &p(b)])
                .output()
                .unwrap(),
        )
    };
    let commercial = diff("commercial.json", "m.yaml");
    assert_eq!(commercial.code, 1, "{commercial:?}");
    assert!(
        commercial.stdout.contains("allows now: 444455556666"),
        "{commercial:?}"
    );
    let china = diff("m.yaml", "china.json");
    assert_eq!(china.code, 0, "{china:?}");
    // Manifests of two partitions: read in neither, the same answer both ways.
    let stream = "arn:aws:kinesis:us-east-1:111122223333:stream/orders";
    dir.write(
        "com.yaml",
        &manifest(stream, &grant("arn:aws:iam::444455556666:root")),
    );
    for (a, b) in [("m.yaml", "com.yaml"), ("com.yaml", "m.yaml")] {
        let two = diff(a, b);
        assert_eq!(two.code, 1, "{a} {b}: {two:?}");
    }
}

#[test]
fn unreachable_endpoint_fails_cleanly() {
    // Nothing listens on port 9 of loopback: connection refused, retried, then a clean error.
    let arn = "arn:aws:kinesis:us-east-1:000000000000:stream/unreachable";
    let dir = Manifests::new(&[("u.yaml", &manifest(arn, &read_policy(arn, "111122223333")))]);
    let run = common::output(
        common::kpr_cmd("http://127.0.0.1:9")
            .args([
                "plan",
                "--dir",
                &dir.arg(),
                "--max-attempts",
                "2",
                "--output",
                "json",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 1, "{run:?}");
    let j = run.json();
    assert_eq!(j["failures"][0]["arn"], arn);
    assert_eq!(j["failures"][0]["retryable"], true);
    let message = j["failures"][0]["message"].as_str().unwrap();
    assert!(message.contains("after 2 attempts"), "{j}");
    // The cause, said once, in words rather than as a Debug dump of the error types.
    assert!(message.contains("Connection refused"), "{j}");
    assert_eq!(message.matches("Connection refused").count(), 1, "{j}");
    assert!(!message.contains("ConnectorError"), "{j}");

    // For a person, an error every resource shares is said once, over the resources it hit.
    let more = |i: usize| format!("{arn}-{i}");
    let files: Vec<(String, String)> = (0..3)
        .map(|i| {
            (
                format!("u{i}.yaml"),
                manifest(&more(i), &read_policy(&more(i), "111122223333")),
            )
        })
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let dir = Manifests::new(&files);
    let run = common::output(
        common::kpr_cmd("http://127.0.0.1:9")
            .args(["plan", "--dir", &dir.arg(), "--max-attempts", "1"])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains("! failed 3 resources, all with the same error:"),
        "{run:?}"
    );
    assert_eq!(
        run.stdout.matches("Connection refused").count(),
        1,
        "{run:?}"
    );
    for i in 0..3 {
        assert!(run.stdout.contains(&format!("  {}  (", more(i))), "{run:?}");
    }
}

/// `accounts:` in the config file: kpr assumes the mapped role (moto's real STS) for resources in
/// that account, and without the mapping it cannot reach them.
#[test]
fn assumes_the_configured_role_for_another_account() {
    let emu = common::moto();
    let account = "222233334444";
    let role = format!("arn:aws:iam::{account}:role/kpr-target");
    let name = unique("xacct");
    let setup = format!(
        r#"
import boto3, sys
kw = dict(endpoint_url="{url}", region_name="us-east-1")
sts = boto3.client("sts", aws_access_key_id="test", aws_secret_access_key="test", **kw)
c = sts.assume_role(RoleArn="{role}", RoleSessionName="setup")["Credentials"]
k = boto3.client("kinesis", aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"], **kw)
k.create_stream(StreamName="{name}", ShardCount=1)
if sys.argv[1:] == ["read"]:
    print(k.get_resource_policy(ResourceARN=k.describe_stream_summary(StreamName="{name}")["StreamDescriptionSummary"]["StreamARN"])["Policy"])
"#,
        url = emu.url
    );
    let python = |args: &[&str]| {
        common::output(
            std::process::Command::new(std::env::var("KPR_TEST_PYTHON").unwrap())
                .arg("-c")
                .arg(setup.replace(
                    "k.create_stream(",
                    "0 if sys.argv[1:] else k.create_stream(",
                ))
                .args(args)
                .output()
                .unwrap(),
        )
    };
    assert_eq!(python(&[]).code, 0);
    let arn = format!("arn:aws:kinesis:us-east-1:{account}:stream/{name}");
    let policy = read_policy(&arn, "111122223333");
    let dir = Manifests::new(&[("x.yaml", &manifest(&arn, &policy))]);
    let without = emu.kpr(&["plan", "--dir", &dir.arg(), "--max-attempts", "1"]);
    assert_eq!(
        without.code, 1,
        "other account must be unreachable without a role: {without:?}"
    );
    let config = dir.write(
        "../kpr-config.yml",
        &format!("accounts:\n  \"{account}\":\n    roleArn: {role}\n"),
    );
    let with = emu.kpr(&[
        "--config",
        &config.to_string_lossy(),
        "--log-level",
        "debug",
        "apply",
        "--dir",
        &dir.arg(),
    ]);
    assert_eq!(with.code, 0, "{with:?}");
    // STS sends through kpr's one transport (its pool, its root certificates), not one built
    // for other timeouts.
    assert!(
        !with.stderr.contains("an HTTP transport of its own"),
        "{}",
        with.stderr
    );
    let live = python(&["read"]);
    assert_eq!(live.code, 0, "{live:?}");
    assert!(same_grant(live.stdout.trim(), &policy), "{live:?}");
}

/// An I/O error is reported once, with its cause, not repeated by the error chain.
#[test]
fn io_errors_name_the_path_and_cause_once() {
    let dir = Manifests::new(&[("not-a-dir", "x")]);
    let missing = dir.path().join("missing.yaml");
    let run = common::output(
        common::kpr_cmd("http://127.0.0.1:9")
            .args([
                "--config",
                &missing.to_string_lossy(),
                "validate",
                "--dir",
                &dir.arg(),
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("missing.yaml: cannot read config"),
        "{run:?}"
    );
    assert_eq!(
        run.stderr.matches("No such file or directory").count(),
        1,
        "{run:?}"
    );

    let out = dir.path().join("not-a-dir").join("estate");
    let run = common::output(
        common::kpr_cmd("http://127.0.0.1:9")
            .args([
                "--region",
                "us-east-1",
                "import",
                "--out",
                &out.to_string_lossy(),
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.matches("Not a directory").count(), 1, "{run:?}");
    assert!(
        !run.stderr.contains("ListStreams"),
        "no call before the output directory exists: {run:?}"
    );
}
