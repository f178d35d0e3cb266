//! The invalid-manifest corpus (`tests/corpus/`, format in its README), plus the cases git cannot
//! store, built at run time. Every set must make `kpr apply` exit 1 with a `path:LINE:` diagnostic,
//! and not one call may reach the backend: validation of the whole set comes first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common;
use crate::faults::run_bounded;
use crate::proxy::Proxy;

struct Expect {
    /// Path relative to the set (`.` for the set itself).
    path: String,
    line: Option<usize>,
    texts: Vec<String>,
}

fn parse_expect(text: &str) -> Vec<Expect> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.split(" | ").map(str::trim);
            let location = parts.next().unwrap();
            let (path, line) = match location.rsplit_once(':') {
                Some((p, n)) if n.bytes().all(|b| b.is_ascii_digit()) => {
                    (p.to_string(), Some(n.parse().unwrap()))
                }
                _ => (location.to_string(), None),
            };
            let texts: Vec<String> = parts.map(str::to_string).collect();
            assert!(!texts.is_empty(), "expect line without a message: {l}");
            Expect { path, line, texts }
        })
        .collect()
}

/// Runs `kpr apply` on one set through the proxy; returns what is wrong, if anything.
fn check(proxy: &Proxy, dir: &Path, expects: &[Expect]) -> Result<(), String> {
    let before = proxy.total();
    let mut cmd = common::kpr_cmd(&proxy.url());
    cmd.arg("apply").arg("--dir").arg(dir);
    let (run, _) = run_bounded(cmd, Duration::from_secs(30));
    let mut problems = Vec::new();
    if run.code != 1 {
        problems.push(format!("exit code {} (want 1)", run.code));
    }
    if run.stderr.contains("panicked") {
        problems.push("kpr panicked".into());
    }
    let calls = proxy.total() - before;
    if calls != 0 {
        problems.push(format!(
            "{calls} API call(s) reached the proxy: {}",
            proxy.describe()
        ));
    }
    // Exactly the expected diagnostics: one blaming a good file too would be a bug.
    let errors = run
        .stderr
        .lines()
        .filter(|l| l.contains(": error: "))
        .count();
    if errors != expects.len() {
        problems.push(format!(
            "{errors} error diagnostic(s), want {}",
            expects.len()
        ));
    }
    for e in expects {
        let path = if e.path == "." {
            dir.to_path_buf()
        } else {
            dir.join(&e.path)
        };
        let prefix = match e.line {
            Some(line) => format!("{}:{line}: error: ", path.display()),
            None => format!("{}: error: ", path.display()),
        };
        let found = run
            .stderr
            .lines()
            .any(|l| l.starts_with(&prefix) && e.texts.iter().all(|t| l.contains(t.as_str())));
        if !found {
            problems.push(format!(
                "no diagnostic `{prefix}...` containing {:?}",
                e.texts
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}\n--- stderr\n{}",
            dir.display(),
            problems.join("; "),
            run.stderr
        ))
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

#[test]
fn every_corpus_set_is_refused_before_any_call() {
    let emu = common::kinesis_mock();
    let proxy = Proxy::start(&emu.url);
    let mut sets: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    assert!(sets.len() >= 40, "only {} sets in the corpus", sets.len());
    let failures: Vec<String> = sets
        .iter()
        .filter_map(|dir| {
            let expect = std::fs::read_to_string(dir.join("expect.txt"))
                .unwrap_or_else(|e| panic!("{}/expect.txt: {e}", dir.display()));
            let expects = parse_expect(&expect);
            assert!(!expects.is_empty(), "{}: empty expect.txt", dir.display());
            check(&proxy, dir, &expects).err()
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} sets failed:\n\n{}",
        failures.len(),
        sets.len(),
        failures.join("\n\n")
    );
    assert_eq!(proxy.total(), 0);
    // Control: the same path with a valid set does reach the proxy, so zero above means
    // something.
    let valid = common::Manifests::new(&[("ok.yaml", VALID)]);
    let mut cmd = common::kpr_cmd(&proxy.url());
    cmd.args(["apply", "--dir", &valid.arg(), "--max-attempts", "1"]);
    run_bounded(cmd, Duration::from_secs(30));
    assert!(
        proxy.total() > 0,
        "a valid set made no call: the proxy is not in the path"
    );
}

const VALID: &str = "arn: arn:aws:kinesis:us-east-1:111122223333:stream/orders\nensure: absent\n";

/// A set built in a temp dir by `build`, checked like a corpus set.
fn runtime_case(
    proxy: &Proxy,
    name: &str,
    build: impl FnOnce(&Path),
    expect: &str,
) -> Option<String> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    build(&dir);
    check(proxy, &dir, &parse_expect(expect)).err()
}

#[test]
fn sets_git_cannot_store_are_refused_before_any_call() {
    use std::os::unix::fs::symlink;
    let emu = common::kinesis_mock();
    let proxy = Proxy::start(&emu.url);
    let failures: Vec<String> = [
        runtime_case(
            &proxy,
            "symlink-loop",
            |d| {
                std::fs::create_dir(d.join("sub")).unwrap();
                std::fs::write(d.join("sub/ok.yaml"), VALID).unwrap();
                symlink("..", d.join("sub/back")).unwrap();
            },
            "sub/back | symlink loop",
        ),
        // Running as root, chmod 000 does not stop a read: a dangling symlink is the unreadable
        // file here.
        runtime_case(
            &proxy,
            "dangling-symlink",
            |d| {
                std::fs::write(d.join("ok.yaml"), VALID).unwrap();
                symlink("missing.yaml", d.join("x.yaml")).unwrap();
            },
            "x.yaml | cannot stat | No such file or directory",
        ),
        runtime_case(
            &proxy,
            "self-symlink",
            |d| symlink("self.yaml", d.join("self.yaml")).unwrap(),
            "self.yaml | cannot stat | Too many levels of symbolic links",
        ),
        // The set's directory is in a temporary directory, not a git work tree: a link may not
        // leave it.
        runtime_case(
            &proxy,
            "symlink-outside",
            |d| {
                std::fs::write(d.join("ok.yaml"), VALID).unwrap();
                let outside = d.parent().unwrap().join("outside.yaml");
                std::fs::write(&outside, VALID).unwrap();
                symlink(&outside, d.join("x.yaml")).unwrap();
            },
            "x.yaml | symlink to a place outside",
        ),
        runtime_case(&proxy, "empty-directory", |_| {}, ". | no manifests"),
        runtime_case(
            &proxy,
            "directory-named-like-a-manifest",
            |d| std::fs::create_dir(d.join("x.yaml")).unwrap(),
            ". | no manifests",
        ),
        runtime_case(
            &proxy,
            "binary-garbage",
            |d| {
                std::fs::write(d.join("ok.yaml"), VALID).unwrap();
                let mut rng = fastrand::Rng::with_seed(3);
                let mut bytes = b"arn: x\n".to_vec();
                bytes.extend([0xff, 0xfe, 0x00]);
                bytes.extend((0..4096).map(|_| rng.u8(..)));
                std::fs::write(d.join("bin.yaml"), bytes).unwrap();
            },
            "bin.yaml:2 | not valid UTF-8",
        ),
        runtime_case(
            &proxy,
            "missing-directory",
            |d| std::fs::remove_dir(d).unwrap(),
            ". | cannot open directory",
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(proxy.total(), 0);
}

/// A FIFO named like a manifest: reading it blocks until something writes to it, so kpr must
/// refuse non-regular files instead of reading them.
#[test]
fn a_fifo_is_refused_not_read() {
    let emu = common::kinesis_mock();
    let proxy = Proxy::start(&emu.url);
    let failure = runtime_case(
        &proxy,
        "fifo",
        |d| {
            std::fs::write(d.join("ok.yaml"), VALID).unwrap();
            let status = std::process::Command::new("mkfifo")
                .arg(d.join("pipe.yaml"))
                .status()
                .unwrap();
            assert!(status.success());
        },
        "pipe.yaml | not a regular file",
    );
    assert!(failure.is_none(), "{}", failure.unwrap());
}
