//! The guest's initramfs: a `newc` cpio archive holding the init, the agent program, its
//! arguments and the kernel modules the guest loads, built reproducibly (entries in a fixed
//! order, every timestamp 0, owner root, inode numbers by position), so the same inputs give
//! the same bytes. Uncompressed: the kernel unpacks it as it is, and a snapshot-restoring host
//! never reads it again.
//!
//! Modules are resolved from the kernel's own tree (`lib/modules/<version>`): each `.ko` names
//! what it needs in its `.modinfo` (`depends=`), so the image carries the wanted modules and
//! their dependencies and `/modules.load` lists them dependencies first. Modules built into
//! the kernel (`modules.builtin`) are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::SandboxError;

/// The modules a guest needs for virtio-mmio (the microvm machine's and Firecracker's
/// transport), vsock and virtio-serial (the channel of snapshot templates), where the kernel
/// builds them as modules (Debian's cloud kernel does).
pub const GUEST_MODULES: [&str; 3] = [
    "virtio_mmio",
    "vmw_vsock_virtio_transport",
    "virtio_console",
];

/// What goes into an image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The guest init (`maxwell-guest-init`, linked statically).
    pub init: PathBuf,
    /// The agent program (linked statically: the image has no libraries).
    pub agent: PathBuf,
    /// The agent's arguments.
    pub args: Vec<String>,
    /// The kernel's module tree (`.../lib/modules/<version>`) and the modules to carry.
    pub modules: Option<(PathBuf, Vec<String>)>,
}

fn read(path: &Path) -> Result<Vec<u8>, SandboxError> {
    fs::read(path).map_err(|e| SandboxError::io(format!("reading {}", path.display()), e))
}

/// A `newc` archive being written.
#[derive(Debug, Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, (0, 0), data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        // The kernel reads the archive in 512-byte blocks, as cpio(1) writes it.
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }
}

/// The `depends=` of a module, read from its `.modinfo` strings.
fn depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

fn index_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<(), SandboxError> {
    let entries =
        fs::read_dir(dir).map_err(|e| SandboxError::io(format!("listing {}", dir.display()), e))?;
    for e in entries {
        let e = e.map_err(|e| SandboxError::io(format!("listing {}", dir.display()), e))?;
        let path = e.path();
        if path.is_dir() {
            index_modules(&path, out)?;
        } else if let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            out.insert(stem.replace('-', "_"), path);
        }
    }
    Ok(())
}

/// The modules to load, dependencies first: `(name, path)`.
pub fn resolve_modules(
    tree: &Path,
    wanted: &[String],
) -> Result<Vec<(String, PathBuf)>, SandboxError> {
    let mut index = BTreeMap::new();
    index_modules(tree, &mut index)?;
    let builtin: BTreeSet<String> = fs::read_to_string(tree.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter_map(|n| n.strip_suffix(".ko"))
        .map(|n| n.replace('-', "_"))
        .collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, PathBuf)>,
        tree: &Path,
    ) -> Result<(), SandboxError> {
        if !seen.insert(name.to_string()) || builtin.contains(name) {
            return Ok(());
        }
        let Some(path) = index.get(name) else {
            return Err(SandboxError::InvalidSpec(format!(
                "kernel module {name} is neither in {} nor built in; use a guest kernel with \
                 virtio-mmio and virtio vsock (Debian's linux-image-cloud-amd64 has both)",
                tree.display()
            )));
        };
        for d in depends(&read(path)?) {
            visit(&d, index, builtin, seen, order, tree)?;
        }
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
    for w in wanted {
        visit(
            &w.replace('-', "_"),
            &index,
            &builtin,
            &mut seen,
            &mut order,
            tree,
        )?;
    }
    Ok(order)
}

/// Builds the image's bytes.
pub fn build(spec: &ImageSpec) -> Result<Vec<u8>, SandboxError> {
    let mut c = Cpio::default();
    for d in ["dev", "proc", "sys", "run", "lib", "lib/modules"] {
        c.dir(d);
    }
    // The kernel opens /dev/console for init's stdout before devtmpfs is mounted.
    c.entry("dev/console", 0o020600, (5, 1), &[]);
    c.file("init", 0o755, &read(&spec.init)?);
    c.file("agent", 0o755, &read(&spec.agent)?);
    let mut args = String::new();
    for a in &spec.args {
        if a.contains('\n') {
            return Err(SandboxError::InvalidSpec(format!(
                "agent argument {a:?}: arguments of a microVM agent cannot hold a newline"
            )));
        }
        args.push_str(a);
        args.push('\n');
    }
    c.file("agent.args", 0o644, args.as_bytes());
    let mut load = String::new();
    if let Some((tree, wanted)) = &spec.modules {
        for (name, path) in resolve_modules(tree, wanted)? {
            let inside = format!("lib/modules/{name}.ko");
            c.file(&inside, 0o644, &read(&path)?);
            load.push('/');
            load.push_str(&inside);
            load.push('\n');
        }
    }
    c.file("modules.load", 0o644, load.as_bytes());
    Ok(c.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_is_read_from_modinfo() {
        let ko = b"\x7fELF....\0license=GPL\0depends=virtio,virtio_ring\0intree=Y\0";
        assert_eq!(depends(ko), vec!["virtio", "virtio_ring"]);
        assert!(depends(b"\0depends=\0").is_empty());
        assert!(depends(b"nothing").is_empty());
    }

    #[test]
    fn the_archive_is_newc_and_reproducible() {
        let dir = std::env::temp_dir().join(format!("maxwell-image-{}", std::process::id()));
        fs::create_dir_all(dir.join("mods/kernel/a")).unwrap();
        fs::write(dir.join("init"), b"INIT").unwrap();
        fs::write(dir.join("agent"), b"AGENT!").unwrap();
        fs::write(dir.join("mods/kernel/a/leaf.ko"), b"\0depends=\0").unwrap();
        fs::write(dir.join("mods/kernel/a/top.ko"), b"\0depends=leaf,core\0").unwrap();
        fs::write(dir.join("mods/modules.builtin"), "kernel/x/core.ko\n").unwrap();
        let spec = ImageSpec {
            init: dir.join("init"),
            agent: dir.join("agent"),
            args: vec!["--ranges".into(), "3".into()],
            modules: Some((dir.join("mods"), vec!["top".into()])),
        };
        let a = build(&spec).unwrap();
        assert_eq!(a, build(&spec).unwrap(), "same inputs, same bytes");
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 512, 0);
        let text = String::from_utf8_lossy(&a);
        assert!(
            text.contains("/lib/modules/leaf.ko\n/lib/modules/top.ko\n"),
            "{text}"
        );
        assert!(text.contains("--ranges\n3\n"));
        assert!(text.contains("TRAILER!!!"));
        let missing = ImageSpec {
            modules: Some((dir.join("mods"), vec!["absent".into()])),
            ..spec
        };
        assert!(build(&missing).unwrap_err().to_string().contains("absent"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
