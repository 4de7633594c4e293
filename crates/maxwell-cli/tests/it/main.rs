//! End-to-end tests of the `maxwell` binary. One test binary for the crate; modules by command.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure should panic

mod auction;
mod cluster;
mod daemon;
mod ebpf;
mod experiment;
mod ledger;
mod microvm;
mod sandbox;
mod sensors;
mod simulate;
mod top;

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `maxwell` with `args` and `stdin`, returning its output.
pub fn maxwell(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_maxwell"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn maxwell");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `maxwell ledger verify --db db` must pass.
pub fn assert_ledger_verifies(db: &std::path::Path) {
    let v = maxwell(&["ledger", "verify", "--db", db.to_str().unwrap()], "");
    assert_eq!(v.status.code(), Some(0), "{}: {}", db.display(), stdout(&v));
}

/// An empty directory for one test, named after it and this process.
pub fn fresh_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("maxwell-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
