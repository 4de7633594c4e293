//! A hostile agent for the containment tests: `--mode M` (or `MAXWELL_MODE`) picks what it
//! does wrong. It needs no SDK; it writes to `MAXWELL_SOCKET` directly.
//!
//! - `garbage`: lines that are not JSON, then one longer than the protocol allows, forever;
//! - `flood`: valid claims as fast as it can write, never reading a reply;
//! - `silent`: connects, says nothing, never exits;
//! - `exit`: exits with code 3 at once;
//! - `crash-kernel` (in a microVM guest, where it runs as the guest's root): panics the guest's
//!   kernel through `/proc/sysrq-trigger`;
//! - `spin`: burns its CPU and never says a word;
//! - `erase`: overwrites 32 MiB of its memory with new values, over and over, and never says a
//!   word (whatever it would claim, the host measures its erasure).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn socket() -> UnixStream {
    let path = std::env::var("MAXWELL_SOCKET").unwrap_or_default();
    match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hostile: {path}: {e}");
            std::process::exit(2);
        }
    }
}

fn mode() -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--mode")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("MAXWELL_MODE").ok())
        .unwrap_or_else(|| "garbage".into())
}

fn main() {
    match mode().as_str() {
        "garbage" => {
            let mut s = socket();
            loop {
                if s.write_all(b"}{ not json at all\n\x00\xff\xfe\n").is_err() {
                    return;
                }
                let long = vec![b'x'; 10_000];
                if s.write_all(&long).is_err() {
                    s = socket();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        "flood" => {
            let mut s = socket();
            let line =
                b"{\"v\":1,\"op\":\"claim\",\"start\":0,\"end\":1000,\"count\":168,\"digest\":1}\n";
            loop {
                if s.write_all(line).is_err() {
                    s = socket();
                }
            }
        }
        "silent" => {
            let _s = socket();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "exit" => std::process::exit(3),
        "spin" => {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "erase" => {
            let mut mem = vec![0u8; 32 << 20];
            let mut v = 1u8;
            loop {
                for page in mem.chunks_mut(4096) {
                    page.fill(v);
                }
                std::hint::black_box(&mem);
                v = v.wrapping_add(1).max(1);
            }
        }
        "crash-kernel" => {
            let r = std::fs::write("/proc/sysrq-trigger", b"c");
            eprintln!("hostile: sysrq: {r:?}");
            std::process::exit(4);
        }
        other => {
            eprintln!("hostile: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}
