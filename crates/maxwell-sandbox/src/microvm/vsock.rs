//! The host side of vsock as Firecracker and `vhost-device-vsock` both present it.
//!
//! A guest's connection to the host's port `P` arrives on the Unix socket `<uds>_P` (the host
//! listens there, as [`crate::process`]'s `wire` does for the agent protocol). The host reaches
//! a guest's port `P` by connecting to `<uds>` itself and sending `CONNECT P\n`; the VMM
//! answers `OK <host port>\n` once the guest accepted, and the stream is then the guest's.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::SandboxError;

/// Connects to the guest's `port` through the VMM's vsock socket `uds`, waiting at most
/// `wait` for the guest to accept.
pub fn connect(uds: &Path, port: u32, wait: Duration) -> Result<UnixStream, SandboxError> {
    let deadline = Instant::now() + wait;
    let mut s = UnixStream::connect(uds)
        .map_err(|e| SandboxError::io(format!("connecting to {}", uds.display()), e))?;
    s.set_write_timeout(Some(wait))
        .and_then(|()| s.write_all(format!("CONNECT {port}\n").as_bytes()))
        .map_err(|e| SandboxError::io(format!("CONNECT {port} on {}", uds.display()), e))?;
    // Read the answer a byte at a time: what follows the newline is the guest's.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || line.len() > 64 {
            return Err(SandboxError::Timeout {
                name: uds.display().to_string(),
                what: "vsock CONNECT",
            });
        }
        s.set_read_timeout(Some(left))
            .map_err(|e| SandboxError::io("setting a vsock timeout", e))?;
        match s.read(&mut b) {
            Ok(0) => {
                return Err(SandboxError::Unavailable(format!(
                    "vsock CONNECT {port} on {}: refused (nothing listens on that port in the \
                     guest)",
                    uds.display()
                )));
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(SandboxError::io("reading the vsock CONNECT answer", e)),
        }
    }
    let answer = String::from_utf8_lossy(&line);
    if !answer.starts_with("OK ") {
        return Err(SandboxError::Unavailable(format!(
            "vsock CONNECT {port} on {}: the VMM answered {answer:?}",
            uds.display()
        )));
    }
    s.set_read_timeout(None)
        .map_err(|e| SandboxError::io("clearing a vsock timeout", e))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn connect_speaks_the_vmm_protocol() {
        let p = std::env::temp_dir().join(format!("maxwell-vsock-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let l = UnixListener::bind(&p).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, "CONNECT 1025\n");
            let mut w = s;
            w.write_all(b"OK 1073741824\nhello").unwrap();
            let (s2, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(s2).read_line(&mut line).unwrap(); // then refused
        });
        let mut s = connect(&p, 1025, Duration::from_secs(5)).unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        let e = connect(&p, 7, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        t.join().unwrap();
        std::fs::remove_file(&p).unwrap();
    }
}
