//! A QMP client (QEMU's machine protocol: JSON objects, one per line, on a Unix socket).
//!
//! [`Qmp::connect`] reads the greeting and negotiates capabilities; [`Qmp::execute`] sends one
//! command and returns its `return` value, skipping the asynchronous events QEMU interleaves
//! (`STOP`, `RESUME`, ...). Every read has a deadline, so a hung QEMU costs the caller at most
//! its timeout, never the tick.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::SandboxError;

/// The longest QMP line read (QEMU's replies to the commands used here are far shorter).
pub const MAX_REPLY: usize = 1 << 20;

/// A negotiated QMP connection.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

fn timeout(what: &'static str) -> SandboxError {
    SandboxError::Timeout {
        name: "qemu".into(),
        what,
    }
}

impl Qmp {
    /// Connects to `path` (retrying until `wait` has passed: QEMU creates the socket as it
    /// starts) and negotiates capabilities.
    pub fn connect(path: &Path, wait: Duration) -> Result<Qmp, SandboxError> {
        let deadline = Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(SandboxError::io(
                        format!("connecting to QMP at {}", path.display()),
                        e,
                    ));
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        };
        let writer = stream
            .try_clone()
            .map_err(|e| SandboxError::io("cloning the QMP socket", e))?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q.read(wait)?;
        if greeting.get("QMP").is_none() {
            return Err(SandboxError::Unavailable(format!(
                "{} did not greet as QMP: {greeting}",
                path.display()
            )));
        }
        q.execute("qmp_capabilities", None, wait)?;
        Ok(q)
    }

    /// One line, within `wait` in all (not per read: a QEMU that trickles bytes still ends
    /// at the deadline) and at most [`MAX_REPLY`] bytes.
    fn read(&mut self, wait: Duration) -> Result<Value, SandboxError> {
        let deadline = Instant::now() + wait;
        let mut line = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout("a QMP reply"));
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| SandboxError::io("setting the QMP timeout", e))?;
            let chunk = match self.reader.fill_buf() {
                Ok([]) => {
                    return Err(SandboxError::Unavailable(
                        "QEMU closed its QMP socket (it has exited)".into(),
                    ));
                }
                Ok(c) => c,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(SandboxError::io("reading QMP", e)),
            };
            let (used, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            line.extend_from_slice(&chunk[..used]);
            self.reader.consume(used);
            if line.len() > MAX_REPLY {
                return Err(SandboxError::Unavailable(format!(
                    "QMP sent a line longer than {MAX_REPLY} bytes"
                )));
            }
            if done {
                break;
            }
        }
        serde_json::from_slice(&line).map_err(|e| {
            SandboxError::Unavailable(format!("QMP sent a line that is not JSON ({e})"))
        })
    }

    /// Runs `command` with `arguments`; returns its `return` value. Fails on a QMP error, or
    /// when no answer came within `wait`.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        wait: Duration,
    ) -> Result<Value, SandboxError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        self.writer
            .set_write_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(|e| SandboxError::io("setting the QMP timeout", e))?;
        self.writer
            .write_all(&bytes)
            .map_err(|e| SandboxError::io(format!("sending QMP {command}"), e))?;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout("a QMP command"));
            }
            let v = self.read(left)?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(SandboxError::Unavailable(format!("QMP {command}: {e}")));
            }
            // An event: skip it.
        }
    }
}
