//! # maxwell-guest-init: PID 1 of a Maxwell microVM
//!
//! The initramfs that `maxwell microvm image` builds holds this program as `/init`, the agent
//! program as `/agent` (its arguments, one per line, in `/agent.args`), the kernel modules the
//! guest needs and `/modules.load` (their paths in load order). At boot it:
//!
//! 1. mounts `/proc`, `/sys`, `/dev` (devtmpfs) and `/run` (tmpfs);
//! 2. loads the modules listed in `/modules.load` (virtio-mmio and the vsock transport, which
//!    Debian's cloud kernel builds as modules) with `finit_module`;
//! 3. connects to the host over vsock (CID 2, the port in `maxwell.port=` on the kernel command
//!    line, default 1024), retrying while the device comes up;
//! 4. listens on `/run/maxwell.sock` and starts `/agent` with `MAXWELL_SOCKET` pointing there
//!    and `MAXWELL_AGENT` set to `maxwell.agent=`; every connection the agent opens is relayed,
//!    byte for byte, over its own vsock connection to the host, which speaks docs/protocol.md
//!    exactly as it does to native agents;
//! 5. when the agent exits, prints `maxwell-guest: agent exited <code>` on the console and
//!    reboots, which ends the VMM (QEMU runs with `-no-reboot`; Firecracker exits on a guest
//!    reboot).
//!
//! It trusts nothing in the guest and the host trusts nothing it says: all it relays are the
//! agent's protocol lines, which the host checks as it checks a native agent's.

#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, VsockAddr, connect, socket};

/// The host's vsock context id.
const HOST_CID: u32 = 2;
/// The default port the host listens on.
const DEFAULT_PORT: u32 = 1024;
/// Where the agent's socket is inside the guest.
const AGENT_SOCKET: &str = "/run/maxwell.sock";
/// How long to wait for the vsock device.
const VSOCK_WAIT: Duration = Duration::from_secs(20);

fn main() {
    let code = match run() {
        Ok(code) => code,
        Err(e) => {
            println!("maxwell-guest: {e}");
            125
        }
    };
    println!("maxwell-guest: agent exited {code}");
    nix::unistd::sync();
    let Err(e) = reboot(RebootMode::RB_AUTOBOOT);
    println!("maxwell-guest: reboot failed: {e}");
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

/// What the kernel command line says to the init.
#[derive(Debug, PartialEq, Eq)]
struct Boot {
    agent: String,
    port: u32,
}

fn parse_cmdline(cmdline: &str) -> Boot {
    let mut boot = Boot {
        agent: "agent".into(),
        port: DEFAULT_PORT,
    };
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("maxwell.agent=") {
            boot.agent = v.to_string();
        } else if let Some(v) = word.strip_prefix("maxwell.port=")
            && let Ok(p) = v.parse()
        {
            boot.port = p;
        }
    }
    boot
}

fn mounts() -> Result<(), String> {
    for (src, dir, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/run", "tmpfs"),
    ] {
        fs::create_dir_all(dir).map_err(|e| format!("creating {dir}: {e}"))?;
        match mount(
            Some(src),
            dir,
            Some(fstype),
            MsFlags::MS_NOSUID,
            None::<&str>,
        ) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => return Err(format!("mounting {fstype} on {dir}: {e}")),
        }
    }
    Ok(())
}

fn load_modules(list: &str) -> Result<(), String> {
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f = File::open(path).map_err(|e| format!("opening module {path}: {e}"))?;
        match finit_module(&f, c"", ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(format!("loading module {path}: {e}")),
        }
    }
    Ok(())
}

fn vsock_connect(port: u32) -> io::Result<File> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(HOST_CID, port),
    )?;
    Ok(File::from(fd))
}

fn vsock_wait(port: u32) -> Result<File, String> {
    let deadline = Instant::now() + VSOCK_WAIT;
    loop {
        match vsock_connect(port) {
            Ok(f) => return Ok(f),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "no vsock connection to the host (cid {HOST_CID} port {port}) after {VSOCK_WAIT:?}: {e}"
                ));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Copies bytes from `from` to `to` until either side ends, then shuts both down.
fn pump(mut from: impl Read, mut to: impl Write, done: impl FnOnce()) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    done();
}

fn relay(agent: UnixStream, host: File) -> io::Result<()> {
    let (a2, h2) = (agent.try_clone()?, host.try_clone()?);
    let a3 = agent.try_clone()?;
    thread::spawn(move || {
        pump(a2, h2, || {
            let _ = a3.shutdown(std::net::Shutdown::Both);
        });
    });
    pump(host, &agent, || {
        let _ = agent.shutdown(std::net::Shutdown::Both);
    });
    Ok(())
}

fn serve(listener: UnixListener, first: File, port: u32) {
    let mut first = Some(first);
    for conn in listener.incoming() {
        let Ok(agent) = conn else { continue };
        let host = match first.take() {
            Some(h) => h,
            None => match vsock_connect(port) {
                Ok(h) => h,
                Err(e) => {
                    println!("maxwell-guest: vsock connect: {e}");
                    continue;
                }
            },
        };
        thread::spawn(move || relay(agent, host));
    }
}

fn run() -> Result<i32, String> {
    mounts()?;
    let boot = parse_cmdline(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
    if let Ok(list) = fs::read_to_string("/modules.load") {
        load_modules(&list)?;
    }
    let host = vsock_wait(boot.port)?;
    let listener = UnixListener::bind(AGENT_SOCKET)
        .map_err(|e| format!("listening on {AGENT_SOCKET}: {e}"))?;
    let port = boot.port;
    thread::spawn(move || serve(listener, host, port));
    let args: Vec<String> = fs::read_to_string("/agent.args")
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    let status = Command::new("/agent")
        .args(&args)
        .env_clear()
        .env("PATH", "/")
        .env("MAXWELL_SOCKET", AGENT_SOCKET)
        .env("MAXWELL_AGENT", &boot.agent)
        .current_dir("/run")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("starting /agent: {e}"))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_names_the_agent_and_port() {
        assert_eq!(
            parse_cmdline("console=ttyS0 maxwell.agent=sci-1 maxwell.port=2000 quiet"),
            Boot {
                agent: "sci-1".into(),
                port: 2000
            }
        );
        assert_eq!(parse_cmdline("maxwell.port=x").port, DEFAULT_PORT);
    }
}
