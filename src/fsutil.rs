//! Small filesystem helpers every module shares: atomic writes (temp file,
//! fsync, rename, fsync of the directory) and the secret-file permission
//! check. A failed write leaves no partial file behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A file operation that failed, with the path it concerned.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct FileError {
    /// What was being done ("read", "write", "create directory", …).
    pub action: &'static str,
    /// The file concerned.
    pub path: PathBuf,
    /// The underlying I/O error.
    #[source]
    pub source: io::Error,
}

impl FileError {
    /// Wraps an I/O error with the action and path it concerned.
    pub fn new(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// File mode for secrets (private keys): owner read/write only.
pub const SECRET_MODE: u32 = 0o600;
/// File mode for public material (certificates, CRLs, configs).
pub const PUBLIC_MODE: u32 = 0o644;

/// Writes `bytes` to `path` atomically with file mode `mode`: the data goes
/// to a temporary file in the same directory, is fsynced, then renamed over
/// `path`, and the directory is fsynced so the rename survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` above is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| FileError::new("write", path, e))
}

/// Like [`write_atomic`], but refuses to replace an existing file.
pub fn create_new_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    if path.exists() {
        return Err(FileError::new(
            "create",
            path,
            io::Error::new(io::ErrorKind::AlreadyExists, "file already exists"),
        ));
    }
    write_atomic(path, bytes, mode)
}

/// Removes `path` (if it is there) and fsyncs its directory, so the
/// removal survives a crash.
pub fn remove_file_durably(path: &Path) -> Result<(), FileError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FileError::new("remove", path, e)),
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
        .map_err(|e| FileError::new("sync the directory of", path, e))
}

/// fsyncs a directory so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a whole file, naming the path on failure.
pub fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    fs::read(path).map_err(|e| FileError::new("read", path, e))
}

/// Reads a whole UTF-8 file, naming the path on failure.
pub fn read_to_string(path: &Path) -> Result<String, FileError> {
    fs::read_to_string(path).map_err(|e| FileError::new("read", path, e))
}

/// Creates a directory (and its parents) with mode 0700.
pub fn create_private_dir(path: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| FileError::new("create directory", path, e))
}

use std::os::unix::fs::DirBuilderExt;

/// Checks that `dir` takes a durable write: a small file is written,
/// fsynced and removed (a full disk or a read-only mount fails here).
pub fn probe_write(dir: &Path) -> Result<(), FileError> {
    let probe = dir.join(".write-probe");
    let written = (|| {
        let mut f = fs::File::create(&probe)?;
        io::Write::write_all(&mut f, b"dsnode")?;
        f.sync_all()
    })();
    let _ = fs::remove_file(&probe);
    written.map_err(|e| FileError::new("write", &probe, e))
}

/// A secret file whose permissions let group or others read it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} is readable by group or others (mode {mode:04o}); a private key must be mode 0600: run `chmod 600 {path}`"
)]
pub struct ExposedSecret {
    /// The offending file.
    pub path: String,
    /// Its permission bits.
    pub mode: u32,
}

/// Reads a secret file, refusing it if group or others may access it.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    let meta = fs::metadata(path).map_err(|e| FileError::new("read", path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Exposed(ExposedSecret {
            path: path.display().to_string(),
            mode,
        }));
    }
    Ok(read(path)?)
}

/// Why a secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file's permissions expose it.
    #[error(transparent)]
    Exposed(#[from] ExposedSecret),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        write_atomic(&path, b"secret", SECRET_MODE).expect("write");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
        assert_eq!(read_secret(&path).expect("read"), b"secret");
    }

    #[test]
    fn exposed_secret_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        write_atomic(&path, b"secret", 0o644).expect("write");
        let err = read_secret(&path).expect_err("must refuse 0644");
        let msg = err.to_string();
        assert!(msg.contains("mode 0644"), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
    }

    #[test]
    fn create_new_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        create_new_atomic(&path, b"a", PUBLIC_MODE).expect("first");
        assert!(create_new_atomic(&path, b"b", PUBLIC_MODE).is_err());
        assert_eq!(fs::read(&path).expect("read"), b"a");
    }
}
