//! Bounded reads of files named by users (modules, manifests, scenarios, configurations): a
//! regular file only (a FIFO or a device such as `/dev/zero` would block or never end), at
//! most a stated size, and errors that name the file and the limit without quoting it.

use std::io::Read;
use std::path::Path;

/// The largest WASM module an agent may be: 16 MiB.
pub const MAX_MODULE: u64 = 16 << 20;
/// The largest text file (manifest, scenario, configuration) read: 1 MiB.
pub const MAX_TEXT: u64 = 1 << 20;

/// Reads at most `max` bytes of the regular file `path` (`what` names it in errors).
pub fn read_bounded(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read the {what} {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "the {what} {shown} is not a regular file (a FIFO, a device or a directory); give \
             the path of a file"
        ));
    }
    if meta.len() > max {
        return Err(format!(
            "the {what} {shown} is {} bytes, more than the limit of {max}",
            meta.len()
        ));
    }
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot open the {what} {shown}: {e}"))?;
    let mut out = Vec::new();
    // The file may grow after the check: read one byte past the limit to notice.
    f.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read the {what} {shown}: {e}"))?;
    if out.len() as u64 > max {
        return Err(format!(
            "the {what} {shown} grew past the limit of {max} bytes while it was read"
        ));
    }
    Ok(out)
}

/// [`read_bounded`] of a UTF-8 text file of at most [`MAX_TEXT`] bytes.
pub fn read_text(path: &Path, what: &str) -> Result<String, String> {
    let bytes = read_bounded(path, MAX_TEXT, what)?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the {what} {} is not UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn special_files_and_large_files_are_refused_without_reading_them() {
        let e = read_bounded(Path::new("/dev/zero"), 10, "manifest").unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let dir = std::env::temp_dir().join(format!("maxwell-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; 100]).unwrap();
        let e = read_bounded(&big, 99, "module").unwrap_err();
        assert!(e.contains("limit of 99") && !e.contains("xxx"), "{e}");
        assert_eq!(read_bounded(&big, 100, "module").unwrap().len(), 100);
        let e = read_bounded(&dir, 100, "module").unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
