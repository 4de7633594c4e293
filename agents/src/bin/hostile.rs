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
//!   word (whatever it would claim, the host measures its erasure);
//! - `free`: `--bytes B --rounds R --children C`: starts C copies of itself (each doing the
//!   same, without children), then R times maps B bytes, touches every page and frees them
//!   (glibc maps blocks above 32 MiB on their own and unmaps them on free), waits for the
//!   children, writes `freed` to stderr and sleeps;
//! - `churn`: `--seconds S`: maps 40 MiB, touches one page and unmaps it, in a loop, for S
//!   seconds; prints the number of rounds on stdout and exits (a syscall-heavy program for
//!   `maxwell bench ebpf`);
//! - `tcp`: opens a TCP connection to 127.0.0.1:9 after 200 ms, then sleeps (a network call
//!   for the syscall deny list to catch).

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

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Maps `bytes`, touches every page, frees them.
fn free_once(bytes: usize) {
    let mut v = vec![0u8; bytes];
    for page in v.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&v);
}

fn main() {
    match mode().as_str() {
        "free" => {
            let (bytes, rounds) = (arg("--bytes", 40 << 20) as usize, arg("--rounds", 1));
            let children: Vec<_> = (0..arg("--children", 0))
                .filter_map(|_| {
                    let exe = std::env::current_exe().ok()?;
                    std::process::Command::new(exe)
                        .args(["--mode", "free", "--bytes", &bytes.to_string()])
                        .args(["--rounds", &rounds.to_string(), "--exit"])
                        .spawn()
                        .ok()
                })
                .collect();
            for _ in 0..rounds {
                free_once(bytes);
            }
            for mut c in children {
                let _ = c.wait();
            }
            if std::env::args().any(|a| a == "--exit") {
                return;
            }
            eprintln!("freed");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "churn" => {
            let end = std::time::Instant::now() + Duration::from_secs(arg("--seconds", 1));
            let mut rounds = 0u64;
            while std::time::Instant::now() < end {
                let mut v = vec![0u8; 40 << 20];
                v[0] = 1;
                std::hint::black_box(&v);
                rounds += 1;
            }
            println!("{rounds}");
        }
        "tcp" => {
            std::thread::sleep(Duration::from_millis(200));
            let r = std::net::TcpStream::connect("127.0.0.1:9");
            eprintln!("hostile: connect: {r:?}");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
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
