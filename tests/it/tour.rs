//! The README's five-minute tour, run as written against kinesis-mock: the example manifests in
//! `policies/` must plan, apply and come back in sync, and every line of kpr's output the README
//! shows must be a line kpr prints, in that order. `scripts/demo` runs the same tour for a
//! person; this keeps the README and the examples true in CI.

use std::path::Path;

use crate::common::{self, output};

/// The account the README and `policies/` are written for (`scripts/demo` runs kinesis-mock as
/// it). The test runs in an account of its own and maps it back before comparing.
const README_ACCOUNT: &str = "111122223333";
const CONSUMER: &str = "consumer/fraud-detector:";

struct Step {
    args: Vec<String>,
    /// From a trailing `; echo $?` and the line after the output; otherwise success.
    code: i32,
    /// What the README shows of the output, `...` elisions dropped.
    lines: Vec<String>,
}

fn tour(readme: &str) -> (Vec<Step>, String) {
    let tour = &readme[readme
        .find("## A five-minute tour")
        .expect("README has the tour")..];
    const FENCE: &str = "```console\n";
    let open = tour.find(FENCE).expect("the tour has a console block") + FENCE.len();
    let block = &tour[open..open + tour[open..].find("```").expect("the block ends")];
    let mut steps: Vec<Step> = Vec::new();
    let mut echo = false;
    for line in block.lines() {
        if let Some(command) = line.strip_prefix("$ ") {
            let (command, status) = match command.split_once(" ; echo $?") {
                Some((c, _)) => (c, true),
                None => (command, false),
            };
            echo = status;
            let mut words = command.split_whitespace();
            assert_eq!(words.next(), Some("kpr"), "a tour command runs kpr: {line}");
            steps.push(Step {
                args: words.map(String::from).collect(),
                code: 0,
                lines: Vec::new(),
            });
            continue;
        }
        let step = steps.last_mut().expect("output follows a command");
        if line.trim().is_empty() || line.trim() == "..." {
            continue;
        }
        match line.parse::<i32>() {
            Ok(code) if echo => step.code = code,
            _ => step.lines.push(line.to_string()),
        }
    }
    // The consumer's registration timestamp differs per run; the README shows one.
    let at = block.find(CONSUMER).expect("the tour shows the consumer") + CONSUMER.len();
    let epoch: String = block[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (steps, epoch)
}

fn copy_policies(from: &Path, to: &Path, account: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // The account appears only in the resources' own ARNs (checked by the tour itself:
        // a principal rewritten by mistake would change the plan's lines).
        std::fs::write(
            to.join(path.file_name().unwrap()),
            text.replace(README_ACCOUNT, account),
        )
        .unwrap();
    }
}

#[test]
fn the_readme_tour_runs_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let (steps, readme_epoch) = tour(&readme);
    assert_eq!(steps.len(), 3, "plan, apply, plan again");
    assert!(steps.iter().all(|s| !s.lines.is_empty()));

    // The resources scripts/demo creates, in an account no other test uses.
    let emu = common::kinesis_mock_private();
    let orders = emu.create_stream("orders");
    emu.create_stream("clickstream");
    emu.create_stream("audit");
    let consumer = emu.register_consumer(&orders, "fraud-detector");
    let work = tempfile::tempdir().unwrap();
    copy_policies(
        &repo.join("policies"),
        &work.path().join("policies"),
        &emu.account,
    );
    let readme_consumer = consumer
        .replace(&emu.account, README_ACCOUNT)
        .rsplit_once(':')
        .map(|(arn, _)| format!("{arn}:{readme_epoch}"))
        .unwrap();

    for step in &steps {
        let mut args = step.args.clone();
        if let Some(i) = args.iter().position(|a| a == "--endpoint-url") {
            args[i + 1] = emu.url.clone();
        }
        let run = output(
            emu.kpr_cmd()
                .current_dir(work.path())
                .args(&args)
                .output()
                .unwrap(),
        );
        assert_eq!(run.code, step.code, "kpr {args:?}: {run:?}");
        let printed: Vec<String> = run
            .stdout
            .lines()
            .map(|l| {
                l.replace(&consumer, &readme_consumer)
                    .replace(&emu.account, README_ACCOUNT)
            })
            .collect();
        // In order, each where the previous one left off.
        let mut rest = printed.iter();
        for want in &step.lines {
            assert!(
                rest.any(|got| got == want),
                "kpr {args:?} does not print, in the README's order:\n{want}\nit printed:\n{}",
                printed.join("\n")
            );
        }
    }
    let live = emu.get_policy(&orders).expect("orders has a policy");
    assert!(live.contains("analytics-reader"), "{live}");
}
