//! Reading sysfs-like files with errors that say why, in words a user can act on.

use std::io;
use std::path::{Path, PathBuf};

/// Why a reading failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SensorReadError {
    /// The file or directory does not exist (no driver, a VM, a zone that vanished).
    #[error("{} does not exist", .0.display())]
    Absent(PathBuf),
    /// The file exists but this user may not read it.
    #[error("{} is not readable by this user (permission denied); {hint}", .path.display())]
    PermissionDenied {
        /// The file.
        path: PathBuf,
        /// What to do about it.
        hint: &'static str,
    },
    /// The content is not what the kernel writes there.
    #[error("{} holds {content:?}, not {expected}", .path.display())]
    Garbage {
        /// The file.
        path: PathBuf,
        /// What it held (cut to 40 characters).
        content: String,
        /// What was expected.
        expected: &'static str,
    },
    /// Any other I/O error.
    #[error("{}: {message}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        message: String,
    },
}

pub(crate) fn classify(path: &Path, e: &io::Error, hint: &'static str) -> SensorReadError {
    match e.kind() {
        io::ErrorKind::NotFound => SensorReadError::Absent(path.to_owned()),
        io::ErrorKind::PermissionDenied => SensorReadError::PermissionDenied {
            path: path.to_owned(),
            hint,
        },
        _ => SensorReadError::Io {
            path: path.to_owned(),
            message: e.to_string(),
        },
    }
}

/// Reads a small text file, trimmed.
pub(crate) fn read_text(path: &Path, hint: &'static str) -> Result<String, SensorReadError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| classify(path, &e, hint))
}

/// Reads a file holding one integer.
pub(crate) fn read_int<T: std::str::FromStr>(
    path: &Path,
    hint: &'static str,
    expected: &'static str,
) -> Result<T, SensorReadError> {
    let text = read_text(path, hint)?;
    text.parse().map_err(|_| SensorReadError::Garbage {
        path: path.to_owned(),
        content: text.chars().take(40).collect(),
        expected,
    })
}

/// Entries of a directory whose names start with `prefix`, sorted by name.
pub(crate) fn entries(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, SensorReadError> {
    let rd = std::fs::read_dir(dir).map_err(|e| classify(dir, &e, "run as root"))?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}
