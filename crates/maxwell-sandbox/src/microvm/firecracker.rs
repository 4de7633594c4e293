//! Firecracker: its HTTP API on a Unix socket, the process started under its jailer.
//!
//! [`Firecracker::launch`] starts the binary, under the jailer where one is given (a chroot of
//! its own with only the files the VM needs, `/dev/kvm` made for the VM's uid, cgroups with
//! memory and pids limits, then the unprivileged uid), and connects to its API socket.
//! [`Firecracker`] then speaks the API: `PUT /machine-config`, `/boot-source`, `/vsock`,
//! `/actions` (InstanceStart), `PATCH /vm` (Paused, Resumed), `PUT /snapshot/create` and
//! `/snapshot/load`. HTTP is hyper's client over the socket; each call has a deadline.
//!
//! Firecracker needs working KVM. On a KVM-PVM host its whole API works but a guest cannot run
//! (see [`super::probe`]), so this machine's tests drive the real binary through everything
//! except a booted guest; the microvm backend uses QEMU there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes as Body;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::Vmm;
use crate::SandboxError;

/// How to contain Firecracker.
#[derive(Debug, Clone)]
pub struct Jail {
    /// The jailer binary.
    pub jailer: PathBuf,
    /// Where the jails go (`<base>/firecracker/<id>/root`).
    pub chroot_base: PathBuf,
    /// The unprivileged uid and gid the VMM runs as.
    pub uid: u32,
    /// Memory limit of the VM's cgroup, bytes.
    pub memory_max: u64,
    /// Process limit of the VM's cgroup.
    pub pids_max: u32,
}

/// A running Firecracker process and its API.
#[derive(Debug)]
pub struct Firecracker {
    rt: tokio::runtime::Runtime,
    sender: SendRequest<Full<Body>>,
    child: Child,
    /// The VM's root: the jail's chroot, or the directory it was started in. Paths given to
    /// the API are relative to it.
    root: PathBuf,
    jail: Option<(PathBuf, Vec<PathBuf>)>,
    timeout: Duration,
}

fn api_error(what: String) -> SandboxError {
    SandboxError::Unavailable(format!("firecracker: {what}"))
}

/// The parent cgroup of this process's jails, `maxwell-firecracker-<pid>`: a successor of a
/// daemon killed without cleaning up finds its jails by the dead pid ([`reap_jails`]).
pub fn parent_cgroup() -> String {
    format!("maxwell-firecracker-{}", std::process::id())
}

/// Kills the processes in, and removes, the jail cgroups of Maxwell processes that are gone
/// (the jailer's VMs are not under the process backend's watchdog); one line each.
pub fn reap_jails() -> Vec<String> {
    let mut out = Vec::new();
    let roots = [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
    ];
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("maxwell-firecracker-")
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let parent = e.path();
            for vm in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                if !vm.path().is_dir() {
                    continue;
                }
                let procs = crate::process::testing::procs_of(&vm.path());
                for p in &procs {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let deadline = Instant::now() + Duration::from_secs(2);
                while !crate::process::testing::procs_of(&vm.path()).is_empty()
                    && Instant::now() < deadline
                {
                    thread::sleep(Duration::from_millis(10));
                }
                let _ = std::fs::remove_dir(vm.path());
                out.push(format!(
                    "{}: a dead daemon's Firecracker jail, {} process(es) killed",
                    vm.path().display(),
                    procs.len()
                ));
            }
            let _ = std::fs::remove_dir(&parent);
        }
    }
    out
}

/// Whether the cgroup v2 hierarchy is mounted at `/sys/fs/cgroup` (a pure cgroup2 host).
fn pure_cgroup2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The shared libraries `binary` loads (none for a static build, such as Firecracker's musl
/// releases), from `ldd`.
pub fn libraries(binary: &Path) -> Result<Vec<PathBuf>, SandboxError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| SandboxError::io("running ldd (package libc-bin)", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(parse_ldd(&text))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

impl Firecracker {
    /// Starts `binary` for VM `id` in `dir` (direct) or under `jail`, and connects to its API.
    pub fn launch(
        binary: &Path,
        id: &str,
        dir: &Path,
        jail: Option<&Jail>,
        timeout: Duration,
    ) -> Result<Firecracker, SandboxError> {
        crate::check_name(id)?;
        let (mut cmd, root, api, cgroups) = match jail {
            None => {
                let api = dir.join("firecracker.socket");
                let mut c = Command::new(binary);
                c.arg("--id").arg(id).arg("--api-sock").arg(&api);
                c.current_dir(dir);
                (c, dir.to_path_buf(), api, Vec::new())
            }
            Some(j) => {
                let root = j.chroot_base.join("firecracker").join(id).join("root");
                std::fs::create_dir_all(&j.chroot_base).map_err(|e| {
                    SandboxError::io(format!("creating {}", j.chroot_base.display()), e)
                })?;
                // The jailer copies only the binary into the chroot: a glibc build (as the one
                // built from source for this machine) also needs its libraries there.
                for lib in libraries(binary)? {
                    let to = root.join(lib.strip_prefix("/").unwrap_or(&lib));
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| {
                            SandboxError::io(format!("creating {}", parent.display()), e)
                        })?;
                    }
                    std::fs::copy(&lib, &to).map_err(|e| {
                        SandboxError::io(format!("copying {} into the jail", lib.display()), e)
                    })?;
                }
                let mut c = Command::new(&j.jailer);
                let v2 = pure_cgroup2();
                c.args(["--id", id, "--exec-file"])
                    .arg(binary)
                    .args(["--uid", &j.uid.to_string(), "--gid", &j.uid.to_string()])
                    .arg("--chroot-base-dir")
                    .arg(&j.chroot_base)
                    .args(["--cgroup-version", if v2 { "2" } else { "1" }])
                    .args(["--parent-cgroup", &parent_cgroup()]);
                let mut cgroups = Vec::new();
                if v2 {
                    c.args(["--cgroup", &format!("memory.max={}", j.memory_max)]);
                    c.args(["--cgroup", &format!("pids.max={}", j.pids_max)]);
                    cgroups.push(PathBuf::from(format!(
                        "/sys/fs/cgroup/{}/{id}",
                        parent_cgroup()
                    )));
                } else {
                    c.args([
                        "--cgroup",
                        &format!("memory.limit_in_bytes={}", j.memory_max),
                    ]);
                    c.args(["--cgroup", &format!("pids.max={}", j.pids_max)]);
                    for ctl in ["memory", "pids"] {
                        cgroups.push(PathBuf::from(format!(
                            "/sys/fs/cgroup/{ctl}/{}/{id}",
                            parent_cgroup()
                        )));
                    }
                }
                c.arg("--");
                let api = root.join("run/firecracker.socket");
                (c, root, api, cgroups)
            }
        };
        let log = std::fs::File::create(dir.join("firecracker.log"))
            .map_err(|e| SandboxError::io(format!("creating {}", dir.display()), e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| SandboxError::io("cloning the log", e))?,
            )
            .stderr(log)
            .spawn()
            .map_err(|e| SandboxError::io(format!("starting {}", binary.display()), e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SandboxError::io("starting the API client's runtime", e))?;
        let jail_state = jail.map(|j| (j.chroot_base.join("firecracker").join(id), cgroups));
        let mut child = child;
        let deadline = Instant::now() + timeout.max(Duration::from_secs(5));
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(&api) {
                Ok(s) => break s,
                Err(e) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let log = std::fs::read_to_string(dir.join("firecracker.log"))
                            .unwrap_or_default();
                        return Err(api_error(format!(
                            "exited ({status}) before serving its API: {}",
                            log.lines().last().unwrap_or("")
                        )));
                    }
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(SandboxError::io(
                            format!("connecting to {}", api.display()),
                            e,
                        ));
                    }
                    thread::sleep(Duration::from_millis(2));
                }
            }
        };
        stream
            .set_nonblocking(true)
            .map_err(|e| SandboxError::io("making the API socket non-blocking", e))?;
        let sender = rt.block_on(async {
            let s = tokio::net::UnixStream::from_std(stream)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Ok::<_, std::io::Error>(sender)
        });
        let sender = match sender {
            Ok(s) => s,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SandboxError::io("the API handshake", e));
            }
        };
        Ok(Firecracker {
            rt,
            sender,
            child,
            root,
            jail: jail_state,
            timeout,
        })
    }

    /// The jail's cgroup directories (none when started without the jailer).
    pub fn cgroups(&self) -> Vec<PathBuf> {
        self.jail.as_ref().map_or_else(Vec::new, |(_, c)| c.clone())
    }

    /// The VM's root directory (paths given to the API are relative to it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The Firecracker process id (under the jailer, the jailer exec's into it: same pid).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One API call: `method path` with a JSON body; returns the status and the body.
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), SandboxError> {
        let data = body.map(Value::to_string).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://localhost{path}"))
            .header("Host", "localhost")
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(Full::new(Body::from(data)))
            .map_err(|e| api_error(format!("building {method} {path}: {e}")))?;
        let timeout = self.timeout;
        let sender = &mut self.sender;
        let out = self.rt.block_on(async {
            tokio::time::timeout(timeout, async {
                sender.ready().await?;
                let resp = sender.send_request(req).await?;
                let status = resp.status().as_u16();
                let bytes = resp.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, String::from_utf8_lossy(&bytes).into_owned()))
            })
            .await
        });
        match out {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(api_error(format!("{method} {path}: {e}"))),
            Err(_) => Err(SandboxError::Timeout {
                name: "firecracker".into(),
                what: "an API call",
            }),
        }
    }

    /// A call that must answer 2xx.
    pub fn ok(&mut self, method: &str, path: &str, body: Value) -> Result<(), SandboxError> {
        let (status, text) = self.call(method, path, Some(&body))?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(api_error(format!(
                "{method} {path} answered {status}: {text}"
            )))
        }
    }

    /// Configures the machine: vCPUs, memory, kernel, initrd, command line and vsock (paths
    /// relative to [`Firecracker::root`]).
    pub fn configure(
        &mut self,
        mem_mib: u64,
        kernel: &str,
        initrd: Option<&str>,
        boot_args: &str,
        vsock_uds: &str,
    ) -> Result<(), SandboxError> {
        self.ok(
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": 1, "mem_size_mib": mem_mib }),
        )?;
        let mut boot = json!({ "kernel_image_path": kernel, "boot_args": boot_args });
        if let Some(i) = initrd {
            boot["initrd_path"] = json!(i);
        }
        self.ok("PUT", "/boot-source", boot)?;
        self.ok(
            "PUT",
            "/vsock",
            json!({ "guest_cid": super::GUEST_CID, "uds_path": vsock_uds }),
        )
    }

    /// Boots the configured machine.
    pub fn start(&mut self) -> Result<(), SandboxError> {
        self.ok("PUT", "/actions", json!({ "action_type": "InstanceStart" }))
    }

    /// Writes a full snapshot of the paused VM (state and memory files, relative to the root).
    pub fn snapshot_create(&mut self, state: &str, memory: &str) -> Result<(), SandboxError> {
        self.ok(
            "PUT",
            "/snapshot/create",
            json!({ "snapshot_type": "Full", "snapshot_path": state, "mem_file_path": memory }),
        )
    }

    /// Loads a snapshot into this (fresh) process, paused unless `resume`.
    pub fn snapshot_load(
        &mut self,
        state: &str,
        memory: &str,
        resume: bool,
    ) -> Result<(), SandboxError> {
        self.ok(
            "PUT",
            "/snapshot/load",
            json!({
                "snapshot_path": state,
                "mem_backend": { "backend_type": "File", "backend_path": memory },
                "resume_vm": resume
            }),
        )
    }

    /// Whether the process is still there.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process and removes the jail (chroot and cgroups).
    pub fn kill(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some((dir, cgroups)) = self.jail.take() {
            let _ = std::fs::remove_dir_all(&dir);
            for c in cgroups {
                let _ = std::fs::remove_dir(&c);
                // The per-process parent goes with the last jail in it.
                if let Some(parent) = c.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
    }
}

impl Drop for Firecracker {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Vmm for Firecracker {
    fn kind(&self) -> &'static str {
        "firecracker"
    }
    fn pause(&mut self) -> Result<(), SandboxError> {
        self.ok("PATCH", "/vm", json!({ "state": "Paused" }))
    }
    fn resume(&mut self) -> Result<(), SandboxError> {
        self.ok("PATCH", "/vm", json!({ "state": "Resumed" }))
    }
}

/// A minimal x86-64 ELF "kernel" (one loadable segment at 16 MiB whose code is a `pause; jmp`
/// loop): enough for Firecracker to load and start, for testing the API where no real guest can
/// boot. Not a kernel.
pub fn spin_elf() -> Vec<u8> {
    const BASE: u64 = 0x100_0000;
    let code: [u8; 4] = [0xF3, 0x90, 0xEB, 0xFC]; // pause; jmp -4
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    let le16 = |v: u16| v.to_le_bytes();
    let le32 = |v: u32| v.to_le_bytes();
    let le64 = |v: u64| v.to_le_bytes();
    e.extend_from_slice(&le16(2)); // ET_EXEC
    e.extend_from_slice(&le16(0x3E)); // x86-64
    e.extend_from_slice(&le32(1));
    e.extend_from_slice(&le64(BASE + 0x78)); // entry
    e.extend_from_slice(&le64(64)); // phoff
    e.extend_from_slice(&le64(0)); // shoff
    e.extend_from_slice(&le32(0));
    e.extend_from_slice(&le16(64));
    e.extend_from_slice(&le16(56));
    e.extend_from_slice(&le16(1));
    e.extend_from_slice(&le16(0));
    e.extend_from_slice(&le16(0));
    e.extend_from_slice(&le16(0));
    // PT_LOAD covering the whole file, read + execute.
    e.extend_from_slice(&le32(1));
    e.extend_from_slice(&le32(5));
    e.extend_from_slice(&le64(0));
    e.extend_from_slice(&le64(BASE));
    e.extend_from_slice(&le64(BASE));
    let size = 0x78 + code.len() as u64;
    e.extend_from_slice(&le64(size));
    e.extend_from_slice(&le64(size));
    e.extend_from_slice(&le64(0x1000));
    e.extend_from_slice(&code);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_the_libraries() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }
}
