//! Files only the controller may read or write (the state file): written
//! through a temporary that is created, never opened, and renamed over the
//! file, so that a reader or a crash sees the old file or the new one.
//!
//! The temporary sits next to the file, at a name anyone who can write the
//! directory can predict. Created with `O_CREAT|O_EXCL|O_NOFOLLOW`, a
//! symlink planted there is never followed (a plain `File::create` would
//! truncate and write whatever it points to), and mode 0600 keeps the
//! runtime changes from other users whatever the umask.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

/// Owner read and write only.
const MODE: u32 = 0o600;

/// Replaces `path` with `bytes`, durably (file and directory synced).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temporary(path);
    let written = create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()?;
        // rename(2) replaces a symlink at `path` itself, never its target.
        fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    });
    if written.is_err() {
        // Only what `create` made can be there (unlink does not follow links).
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `lb.state.json` -> `lb.state.json.tmp`.
pub fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Creates `tmp`, new, 0600, without following a link. Something already
/// there (a crash's leftover, or a planted link) is unlinked first, once:
/// if it is back by then, someone is racing us and the write fails.
fn create(tmp: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(tmp)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(tmp)?;
            open()
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    fn dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-private-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_link_planted_at_the_temporary_is_not_followed() {
        let dir = dir("planted");
        let path = dir.join("lb.state.json");
        let victim = dir.join("victim");
        fs::write(&victim, b"precious").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
        symlink(&victim, temporary(&path)).unwrap();
        // A dangling link too: following it would create its target.
        let elsewhere = dir.join("created-through-a-link");

        write_atomically(&path, b"{}\n").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious", "the link's target was written");
        let meta = fs::metadata(&victim).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644, "the link's target changed mode");
        let state = fs::symlink_metadata(&path).unwrap();
        assert!(state.file_type().is_file(), "the state file is a plain file");
        assert_eq!(state.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"{}\n");
        assert!(fs::symlink_metadata(temporary(&path)).is_err(), "no temporary left");

        symlink(&elsewhere, temporary(&path)).unwrap();
        write_atomically(&path, b"{\"again\": 1}\n").unwrap();
        assert!(fs::symlink_metadata(&elsewhere).is_err(), "a dangling link was followed");
        assert_eq!(fs::read(&path).unwrap(), b"{\"again\": 1}\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_is_private_whatever_the_umask() {
        let dir = dir("umask");
        let path = dir.join("lb.state.json");
        // An existing world-readable file is replaced by a private one.
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        write_atomically(&path, b"new").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }
}
