//! Files only the user can read: the home directory (0700), the key file, the store and the
//! config (0600). A secret file that others can read is refused rather than used.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::Error;

/// Creates `dir` (and parents) if missing and restricts it to the user (0700).
pub fn ensure_private_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// Creates a new file with mode 0600; fails if it exists.
pub fn create_private_file(path: &Path) -> Result<File, Error> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(|e| Error::io(path, e))
}

/// Writes `data` to `path` atomically (temporary file, fsync, rename), mode 0600.
pub fn write_private_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    // A leftover from a crash is ours and incomplete.
    let _ = std::fs::remove_file(&tmp);
    let mut f = create_private_file(&tmp)?;
    f.write_all(data).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// Opens a secret file for reading after checking that only the user can read it.
pub fn read_private_file(path: &Path) -> Result<File, Error> {
    if !path.exists() {
        return Err(Error::NotInitialised(path.to_path_buf()));
    }
    check_private(path)?;
    File::open(path).map_err(|e| Error::io(path, e))
}

/// Refuses a file that group or others may read or write.
pub fn check_private(path: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Error::InsecurePermissions {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
    }
    Ok(())
}
