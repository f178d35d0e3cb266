//! Runs one command for `scripts/bench` and prints `EXIT WALL_S CPU_S MAXRSS_KIB` (CPU = user +
//! sys, peak RSS: the command's own, from `wait4`).
//!
//! Not Python's `subprocess`: the kernel records the peak RSS of the memory a process leaves
//! at `exec`, so a command started by the bench's Python reported Python's ~23 MiB as its own
//! peak whenever its own was lower, and the copy of Python's address space it left cost
//! ~0.5 ms of CPU charged to the command (`/bin/true` measured 0.7-1.0 ms against 0.4 ms by
//! `perf stat`). Started from this small process, neither is there to see.
//!
//!   bench_run STDOUT_FILE STDERR_FILE COMMAND [ARGS...]

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [stdout, stderr, command, rest @ ..] = args.as_slice() else {
        eprintln!("usage: bench_run STDOUT_FILE STDERR_FILE COMMAND [ARGS...]");
        std::process::exit(2);
    };
    close_inherited_on_exec();
    let out = File::create(stdout).expect("STDOUT_FILE");
    let err = File::create(stderr).expect("STDERR_FILE");
    let start = Instant::now();
    // Reaped by wait4 below, which Child::wait cannot be: it discards the rusage.
    #[expect(clippy::zombie_processes)]
    let child = Command::new(command)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills; all-zero bytes are a valid value of it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are valid for writes for the duration of the call.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let wall = start.elapsed().as_secs_f64();
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = seconds(usage.ru_utime) + seconds(usage.ru_stime);
    let exit = ExitStatus::from_raw(status);
    // As Python's waitstatus_to_exitcode: a signal is its negated number.
    let code = exit.code().or(exit.signal().map(|s| -s)).unwrap_or(-1);
    println!("{code} {wall:.4} {cpu:.4} {}", usage.ru_maxrss);
}

/// As Python's `subprocess` did: the command gets stdin, stdout and stderr only, not whatever
/// else the bench's shell left open (a pipe it waits on, for one).
fn close_inherited_on_exec() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; one that is no longer open (the directory's
        // own) only fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}
