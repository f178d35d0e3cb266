//! Adoption: `kpr import` round-trips an estate into manifests that plan as in sync, and the
//! generated artefacts (JSON Schema, completions, man page) stay true to the code.

use std::process::Stdio;

use serde_json::json;

use crate::common::{self, output, read_policy, unique};

#[test]
fn import_then_plan_is_in_sync() {
    // A private account: import lists everything in it, so other tests' streams stay out.
    let emu = common::kinesis_mock_private();
    let account = emu.account.clone();
    let kpr = |args: &[&str]| emu.kpr(args);
    let a = emu.create_stream(&unique("imp-a"));
    let b = emu.create_stream(&unique("imp-b"));
    let bare = emu.create_stream(&unique("imp-bare"));
    let consumer = emu.register_consumer(&a, "reader");
    emu.put_policy_raw(&a, &read_policy(&a, "444455556666").to_string());
    // Written by hand in another shape, and public (its Condition limits nobody): import must
    // keep it as it is, flagged, or the manifest it writes would not validate.
    let public = json!({"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"kinesis:DescribeStreamSummary","Resource":b,"Condition":{"Bool":{"aws:SecureTransport":"true"}}}});
    emu.put_policy_raw(&b, &public.to_string());
    let cpol = json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::444455556666:role/l"},"Action":"kinesis:SubscribeToShard","Resource":consumer}]});
    emu.put_policy_raw(&consumer, &cpol.to_string());

    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("estate");
    let dir_s = dir.to_string_lossy().into_owned();
    // No --account: learned from the service.
    let run = kpr(&["--region", "us-east-1", "import", "--out", &dir_s]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("Imported 3 policies"), "{run:?}");
    assert!(run.stdout.contains("1 resource has no policy"), "{run:?}");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(
        !files
            .iter()
            .any(|f| f.contains(bare.rsplit('/').next().unwrap())),
        "{files:?}"
    );
    let consumer_file = files
        .iter()
        .find(|f| f.contains(".consumer.reader"))
        .expect("consumer manifest");
    let text = std::fs::read_to_string(dir.join(consumer_file)).unwrap();
    assert!(
        text.contains(&format!("arn: {a}/consumer/reader\n")),
        "consumer by name, no timestamp:\n{text}"
    );
    // Its Resource names this registration: kept as live, flagged for the reviewer.
    assert!(
        text.contains(&format!(
            "# REVIEW: Resource {consumer:?} names this registration of the consumer"
        )) && text.contains(&format!("\"{a}/consumer/reader:*\"")),
        "{text}"
    );
    let public_file =
        std::fs::read_to_string(dir.join(format!("{}.yaml", b.rsplit('/').next().unwrap())))
            .unwrap();
    assert!(public_file.contains("allowPublic: true"), "{public_file}");
    // A YAML 1.1 reader (PyYAML, as yamllint and many pipeline scripts use) reads each file as
    // kpr does: `Version: 2012-10-17` unquoted would be a date to it.
    for f in &files {
        let path = dir.join(f);
        let text = std::fs::read_to_string(&path).unwrap();
        let ours: serde_json::Value = serde_norway::from_str(&text).unwrap();
        let py = output(
            std::process::Command::new(std::env::var("KPR_TEST_PYTHON").unwrap())
                .args([
                    "-c",
                    "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
                ])
                .arg(&path)
                .output()
                .unwrap(),
        );
        assert_eq!(py.code, 0, "{py:?}");
        let theirs: serde_json::Value = serde_json::from_str(&py.stdout).unwrap();
        assert_eq!(theirs, ours, "{text}");
        assert!(text.contains("Version: \"2012-10-17\""), "{text}");
    }

    let plan = kpr(&["plan", "--dir", &dir_s, "--detailed-exitcode"]);
    assert_eq!(
        plan.code, 0,
        "imported estate must plan as in sync: {plan:?}"
    );
    assert!(plan.stdout.contains("3 unchanged"), "{plan:?}");

    // Importing again never overwrites, and says of a file that live has moved away from
    // (a hand edit since) that apply would put the file's back. The region this time is the
    // AWS profile's, as the AWS CLI would take it.
    emu.put_policy_raw(&a, &read_policy(&a, "777788889999").to_string());
    let config = out.path().join("aws-config");
    std::fs::write(&config, format!("[default]\nregion = {}\n", common::REGION)).unwrap();
    let again = output(
        emu.kpr_cmd()
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env("AWS_CONFIG_FILE", &config)
            .args(["import", "--account", &account, "--out", &dir_s])
            .output()
            .unwrap(),
    );
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("Imported 0 policies"), "{again:?}");
    assert_eq!(
        again.stderr.matches("never overwritten").count(),
        3,
        "{again:?}"
    );
    let a_name = a.rsplit('/').next().unwrap();
    let differs: Vec<&str> = again
        .stderr
        .lines()
        .filter(|l| l.contains("a policy other than the live one"))
        .collect();
    assert!(
        differs.len() == 1 && differs[0].contains(&format!("{a_name}.yaml")),
        "{again:?}"
    );
    // A region not spelled as one would go into every ARN import lists: refused first.
    let upper = kpr(&["--region", "US-EAST-1", "import", "--out", &dir_s]);
    assert_eq!(upper.code, 1, "{upper:?}");
    assert!(upper.stderr.contains("is not a region name"), "{upper:?}");
    // An import that fails leaves no directory it made and did not fill.
    let fresh = out.path().join("never-filled");
    let nested = fresh.join("a/b");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let failed = output(
        common::kpr_cmd(&format!("http://127.0.0.1:{port}"))
            .args(["import", "--out"])
            .arg(&nested)
            .output()
            .unwrap(),
    );
    assert_eq!(failed.code, 1, "{failed:?}");
    // Nor any level above it that it made.
    assert!(!fresh.exists(), "{failed:?}");
}

/// A re-run finds what --out declares in any file, whatever it is called or where a team moved
/// it: a resource gets no second manifest (the set would no longer validate), and a name taken
/// by another resource's file (streams `Orders` and `orders`) gives way.
#[test]
fn a_re_import_declares_nothing_twice() {
    let emu = common::kinesis_mock_private();
    let upper = emu.create_stream(&unique("Imp"));
    let lower_name = upper.rsplit('/').next().unwrap().to_lowercase();
    let lower = emu.create_stream(&lower_name);
    emu.put_policy_raw(&lower, &read_policy(&lower, "444455556666").to_string());
    let (_out, dir) = estate();
    let dir_s = dir.to_string_lossy().into_owned();
    let import = || emu.kpr(&["--region", "us-east-1", "import", "--out", &dir_s]);
    assert_eq!(import().code, 0, "the first import");
    std::fs::create_dir(dir.join("team")).unwrap();
    let file = format!("{lower_name}.yaml");
    std::fs::rename(dir.join(&file), dir.join("team").join(&file)).unwrap();

    emu.put_policy_raw(&upper, &read_policy(&upper, "444455556666").to_string());
    let again = import();
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("Imported 1 policy "), "{again:?}");
    let validate = emu.kpr(&["validate", "--dir", &dir_s]);
    assert_eq!(validate.code, 0, "{validate:?}");
    let plan = emu.kpr(&["plan", "--dir", &dir_s, "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{plan:?}");

    // A file kpr cannot read, at a resource's own name, may declare it: in the way, an error.
    let written: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    std::fs::write(&written[0], format!("arn: {upper}\npolicy: [broken\n")).unwrap();
    let third = import();
    assert_eq!(third.code, 1, "{third:?}");
    assert!(
        third.stderr.contains("cannot read what it declares"),
        "{third:?}"
    );
    // Its resource has no file: fixing files cannot help, importing again after does.
    assert!(third.stdout.contains("run this import again"), "{third:?}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        2,
        "a second file was written"
    );
}

/// A directory for import to make (it is not there yet), inside one removed after the test.
fn estate() -> (tempfile::TempDir, std::path::PathBuf) {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("estate");
    (out, dir)
}

/// Run again over a committed directory, import says what changed since: a policy deleted
/// by hand (the file would grant it again), a stream deleted (plan would fail for it).
#[test]
fn a_re_import_names_what_changed_since() {
    let emu = common::kinesis_mock_private();
    let kept = emu.create_stream(&unique("keep"));
    let gone_name = unique("gone");
    let gone = emu.create_stream(&gone_name);
    for arn in [&kept, &gone] {
        emu.put_policy_raw(arn, &read_policy(arn, "444455556666").to_string());
    }
    let (_out, dir) = estate();
    let dir_s = dir.to_string_lossy().into_owned();
    let import = || emu.kpr(&["--region", "us-east-1", "import", "--out", &dir_s]);
    assert_eq!(import().code, 0, "the first import");

    emu.admin(&["delete-policy", &kept], &[]);
    emu.admin(&["delete-stream", &gone_name], &[]);
    // The emulator takes a moment to forget a deleted stream: until then it is listed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let again = loop {
        let run = import();
        if run.stderr.contains("does not exist now") || std::time::Instant::now() > deadline {
            break run;
        }
    };
    assert_eq!(again.code, 1, "{again:?}");
    let kept_file = kept.rsplit('/').next().unwrap();
    assert!(
        again.stderr.contains(&format!(
            "{kept_file}.yaml exists (never overwritten), and declares a policy other than the \
             live one (or the resource has none now)"
        )),
        "{again:?}"
    );
    assert!(
        again.stderr.contains(&format!(
            "{gone}: {}/{gone_name}.yaml declares it, and it does not exist now",
            dir.display()
        )),
        "{again:?}"
    );
    // What the import said is what plan finds: the kept file puts its grant back.
    std::fs::remove_file(dir.join(format!("{gone_name}.yaml"))).unwrap();
    let plan = emu.kpr(&["plan", "--dir", &dir_s, "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(plan.stdout.contains("+ create"), "{plan:?}");
    // A link to nowhere may declare anything, as a file that does not parse may: the loader
    // refuses the directory for it, and import says so.
    std::os::unix::fs::symlink("/nonexistent/x.yaml", dir.join("other.yaml")).unwrap();
    let third = import();
    assert!(
        third
            .stderr
            .contains("other.yaml: kpr cannot read all of it"),
        "{third:?}"
    );
    assert!(
        third.stdout.contains("fix the files kpr cannot read"),
        "{third:?}"
    );
}

#[test]
fn import_without_any_region_says_where_one_can_come_from() {
    let out = tempfile::tempdir().unwrap();
    let run = output(
        common::kpr_cmd("http://127.0.0.1:9")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("KPR_REGION")
            .env("AWS_CONFIG_FILE", out.path().join("none"))
            .args(["import", "--out"])
            .arg(out.path().join("estate"))
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 1, "{run:?}");
    for source in ["--region", "KPR_REGION", "AWS_REGION", "profile"] {
        assert!(run.stderr.contains(source), "{source}: {run:?}");
    }
    assert!(!out.path().join("estate").exists(), "{run:?}");
}

fn kpr_offline(args: &[&str]) -> common::Run {
    output(
        common::kpr_cmd("http://127.0.0.1:9")
            .args(args)
            .output()
            .unwrap(),
    )
}

#[test]
fn checked_in_schema_matches_the_code() {
    let run = kpr_offline(&["schema"]);
    assert_eq!(run.code, 0);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/manifest.schema.json");
    // Byte for byte: every build prints the same key order (serde_json's preserve_order is a
    // stated feature), so regenerating the file must reproduce it exactly.
    assert_eq!(
        run.stdout,
        std::fs::read_to_string(path).unwrap(),
        "schema/manifest.schema.json is stale: run `kpr schema > schema/manifest.schema.json`"
    );
    let generated: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let props = generated["properties"].as_object().unwrap();
    for key in ["arn", "policy", "ensure", "allowPublic"] {
        assert!(props.contains_key(key), "{key} missing from schema");
    }
    assert_eq!(
        generated["additionalProperties"], false,
        "unknown keys must be flagged by editors too"
    );
    // As the loader has it: a policy unless `ensure: absent`, and none (or null) with it.
    assert_eq!(
        (
            &generated["if"]["properties"]["ensure"]["const"],
            &generated["then"]["properties"]["policy"]["type"],
            &generated["else"]["required"],
        ),
        (&json!("absent"), &json!("null"), &json!(["policy"])),
    );
}

#[test]
fn completions_and_man_page_cover_the_commands() {
    let bash = kpr_offline(&["completions", "bash"]);
    assert_eq!(bash.code, 0);
    for cmd in ["validate", "plan", "apply", "serve", "import", "policy"] {
        assert!(bash.stdout.contains(cmd), "bash completion lacks {cmd}");
    }
    assert!(bash.stdout.contains("--detailed-exitcode"));
    let zsh = kpr_offline(&["completions", "zsh"]);
    assert!(
        zsh.code == 0 && zsh.stdout.starts_with("#compdef kpr"),
        "{zsh:?}"
    );
    let man = kpr_offline(&["man"]);
    assert_eq!(man.code, 0);
    assert!(
        man.stdout.contains(".TH kpr"),
        "not roff: {}",
        &man.stdout[..man.stdout.len().min(200)]
    );
    assert!(man.stdout.contains("validate"));
    assert!(man.stdout.contains(".SH \"EXIT STATUS\""), "{}", man.stdout);
    // No page for `help`, which is a subcommand only on the command line.
    assert!(!man.stdout.contains("kpr\\-help"), "{}", man.stdout);
    // The pages kpr(1) refers to (kpr-plan(1), ...) exist: `man --dir` writes them all, into
    // a directory it makes, as `import --out` does.
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("share/man");
    let written = kpr_offline(&["man", "--dir", &dir.display().to_string()]);
    assert_eq!(written.code, 0, "{written:?}");
    for sub in [
        "validate",
        "plan",
        "apply",
        "serve",
        "import",
        "policy-diff",
    ] {
        let page = format!("kpr-{sub}(1)");
        // A nested one (kpr-policy-diff) is named in its parent's page.
        let named = man.stdout.contains(&page.replace('-', "\\-"));
        assert!(named || sub.contains('-'), "kpr(1) names no {page}");
        let file = dir.join(format!("kpr-{sub}.1"));
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            text.contains(".TH kpr-"),
            "{} is not a man page",
            file.display()
        );
    }
    let main = std::fs::read_to_string(dir.join("kpr.1")).unwrap();
    assert_eq!(main, man.stdout, "kpr.1 differs from `kpr man`");
}

/// The Kubernetes StatefulSet's container args, with the ConfigMap's config.yaml, are accepted by
/// `kpr serve --check-config` (paths that only exist in the pod are pointed at temp files).
#[test]
fn kubernetes_statefulset_args_pass_check_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read_yaml = |name: &str| -> serde_norway::Value {
        serde_norway::from_str(
            &std::fs::read_to_string(format!("{root}/deploy/kubernetes/{name}")).unwrap(),
        )
        .unwrap()
    };
    let workload = read_yaml("statefulset.yaml");
    assert_eq!(workload["kind"].as_str(), Some("StatefulSet"));
    assert_eq!(workload["spec"]["replicas"].as_u64(), Some(1));
    let container = &workload["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_sequence()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
    let configmap = read_yaml("configmap.yaml");
    let config = configmap["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml in the ConfigMap");

    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("webhook-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let config = config
        .replace(
            "/var/run/secrets/kpr/webhook-secret",
            &secret.to_string_lossy(),
        )
        .replace("/var/lib/kpr", &tmp.path().join("work").to_string_lossy());
    let config_path = tmp.path().join("config.yaml");
    std::fs::write(&config_path, &config).unwrap();
    let args: Vec<String> = args
        .into_iter()
        .map(|a| {
            if a == "/etc/kpr/config.yaml" {
                config_path.to_string_lossy().into_owned()
            } else {
                a
            }
        })
        .collect();

    let mut cmd = common::kpr_cmd("http://127.0.0.1:9");
    cmd.env_remove("KPR_ENDPOINT_URL")
        .args(&args)
        .arg("--check-config");
    let run = output(cmd.output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    // And the check is real: a config with an unknown key is rejected.
    std::fs::write(&config_path, format!("{config}\nscheduel: nope\n")).unwrap();
    let run = output(cmd.output().unwrap());
    assert_eq!(run.code, 1, "{run:?}");
}

/// `kpr ... | head` closes the pipe early: kpr must stop quietly, not panic.
#[test]
fn a_closed_stdout_is_not_a_crash() {
    for args in [&["completions", "fish"][..], &["man"][..], &["schema"][..]] {
        let mut child = common::kpr_cmd("http://127.0.0.1:9")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before kpr has started writing.
        drop(child.stdout.take());
        let run = output(child.wait_with_output().unwrap());
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        assert!(!run.stderr.contains("panicked"), "{args:?}: {run:?}");
    }
}
