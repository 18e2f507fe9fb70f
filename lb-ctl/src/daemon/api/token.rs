//! The API token: the operator's (`admin.token_file`), or one `lb-ctl run`
//! generates when none is configured, so that nothing is ever open by
//! default. The generated one lives at a path the controller and the CLI
//! both compute from the admin port alone (the CLI knows no config file):
//! `$LB_RUN_DIR/admin-PORT.token`, `/run/lb-ctl` by default (root's, and
//! emptied at boot, so the secret never lands in a backup of `/etc`).
use std::{
    fmt::Write as _,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

/// Where `lb-ctl run` keeps what it generates, unless `$LB_RUN_DIR` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/lb-ctl";

/// Random bytes in a generated token: 256 bits, far above guessing.
const TOKEN_BYTES: usize = 32;

/// Why a token could not be had; the file is always named.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: the file is empty")]
    Empty { path: PathBuf },
    #[error("{path}: the token contains spaces or control characters")]
    Malformed { path: PathBuf },
    #[error(
        "{path}: open to group or others (mode {mode:04o}); a token must be its owner's alone: chmod 600 {path}"
    )]
    Open { path: PathBuf, mode: u32 },
    #[error("{path}: {why}")]
    Unsafe { path: PathBuf, why: String },
}

impl TokenError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self::Io { path: path.to_owned(), source }
    }
}

/// The directory of generated files: `$LB_RUN_DIR`, else [`DEFAULT_RUN_DIR`].
pub fn run_dir() -> PathBuf {
    std::env::var_os("LB_RUN_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from)
}

/// Where `lb-ctl run` listening on `port` keeps its generated token.
pub fn generated_path(run_dir: &Path, port: u16) -> PathBuf {
    run_dir.join(format!("admin-{port}.token"))
}

/// The operator's token file: its owner's alone, one word.
pub fn read_configured(path: &Path) -> Result<Arc<str>, TokenError> {
    let file = File::open(path).map_err(TokenError::io(path))?;
    read_private(path, file)
}

/// The token generated for `port` under `run_dir`, made now if there is
/// none (and kept for the next start, so a browser's credentials survive a
/// restart); whether it was made now.
pub fn generated(run_dir: &Path, port: u16) -> Result<(Arc<str>, PathBuf, bool), TokenError> {
    private_dir(run_dir)?;
    let path = generated_path(run_dir, port);
    match open_no_follow(&path) {
        Ok(file) => return Ok((read_private(&path, file)?, path, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(TokenError::Io { path, source: e }),
    }
    let token = random_hex(TOKEN_BYTES).map_err(TokenError::io(Path::new("/dev/urandom")))?;
    // Written whole under a private name, then linked into place: link(2)
    // fails if the name exists, so a token is never half-written when read,
    // never replaces another controller's, and never follows a planted link.
    let temporary = run_dir.join(format!(".admin-{port}.token.{}", std::process::id()));
    let _ = fs::remove_file(&temporary);
    let written = write_new(&temporary, &token).and_then(|()| fs::hard_link(&temporary, &path));
    let _ = fs::remove_file(&temporary);
    match written {
        Ok(()) => Ok((Arc::from(token), path, true)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Another controller made it first (same port, another namespace).
            let file = open_no_follow(&path).map_err(TokenError::io(&path))?;
            Ok((read_private(&path, file)?, path, false))
        }
        Err(e) => Err(TokenError::Io { path, source: e }),
    }
}

/// The CLI's read of a token file: one word, surrounding whitespace ignored.
pub fn read_any(path: &Path) -> Result<String, TokenError> {
    let text = fs::read_to_string(path).map_err(TokenError::io(path))?;
    one_word(path, &text).map(str::to_owned)
}

fn open_no_follow(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600: only a file this call creates.
fn write_new(path: &Path, token: &str) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()
}

/// The directory, made 0700 if missing; refused if another user could
/// write into it (and so swap the token for theirs).
fn private_dir(dir: &Path) -> Result<(), TokenError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(TokenError::io(dir))?;
    let meta = fs::symlink_metadata(dir).map_err(TokenError::io(dir))?;
    let unsafe_dir = |why: String| TokenError::Unsafe { path: dir.to_owned(), why };
    if !meta.is_dir() {
        return Err(unsafe_dir("not a directory (a symbolic link is refused)".into()));
    }
    if meta.uid() != effective_uid() {
        return Err(unsafe_dir(format!("owned by uid {}, not by this user", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "writable by group or others (mode {:04o}): chmod 700 {}",
            meta.mode() & 0o7777,
            dir.display()
        )));
    }
    Ok(())
}

/// The token in an open file that must be its owner's alone.
fn read_private(path: &Path, mut file: File) -> Result<Arc<str>, TokenError> {
    let meta = file.metadata().map_err(TokenError::io(path))?;
    if !meta.is_file() {
        return Err(TokenError::Unsafe { path: path.to_owned(), why: "not a regular file".into() });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(TokenError::Open { path: path.to_owned(), mode: meta.mode() & 0o7777 });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(TokenError::io(path))?;
    one_word(path, &text).map(Arc::from)
}

fn one_word<'a>(path: &Path, text: &'a str) -> Result<&'a str, TokenError> {
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty { path: path.to_owned() });
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TokenError::Malformed { path: path.to_owned() });
    }
    Ok(token)
}

/// `bytes` from the kernel's CSPRNG, in hex.
fn random_hex(bytes: usize) -> io::Result<String> {
    let mut random = vec![0_u8; bytes];
    File::open("/dev/urandom")?.read_exact(&mut random)?;
    Ok(random.iter().fold(String::with_capacity(2 * bytes), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    }))
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("lb-ctl-token-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Made once, 0600, 256 random bits in hex; the next start reads the
    /// same one back; another port gets another.
    #[test]
    fn a_token_is_generated_once_private_and_random() {
        let dir = TempDir::new("generated");
        let run = dir.0.join("run");
        let (token, path, created) = generated(&run, 9100).unwrap();
        assert!(created);
        assert_eq!(path, run.join("admin-9100.token"));
        assert_eq!(token.len(), 64, "{token}");
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&run).unwrap().mode() & 0o777, 0o700);
        let (again, _, created) = generated(&run, 9100).unwrap();
        assert!(!created);
        assert_eq!(again, token);
        let (other, _, _) = generated(&run, 9101).unwrap();
        assert_ne!(other, token);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&run).unwrap().count(), 2);
    }

    /// A token others can read is refused, naming the file and the fix.
    #[test]
    fn a_token_open_to_others_is_refused_with_the_fix() {
        let dir = TempDir::new("open");
        let path = dir.0.join("token");
        fs::write(&path, "s3cret\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_configured(&path).unwrap_err();
        let message = e.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&format!("chmod 600 {}", path.display())), "{message}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(&*read_configured(&path).unwrap(), "s3cret");

        // The generated one too, and it is not replaced behind the operator's back.
        let run = dir.0.join("run");
        let (_, generated_at, _) = generated(&run, 9100).unwrap();
        fs::set_permissions(&generated_at, fs::Permissions::from_mode(0o640)).unwrap();
        let e = generated(&run, 9100).unwrap_err();
        assert!(matches!(e, TokenError::Open { mode: 0o640, .. }), "{e}");
    }

    /// A symbolic link planted where the token goes is not followed.
    #[test]
    fn a_planted_link_is_not_followed() {
        let dir = TempDir::new("link");
        let run = dir.0.join("run");
        fs::create_dir_all(&run).unwrap();
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).unwrap();
        let target = dir.0.join("elsewhere");
        std::os::unix::fs::symlink(&target, generated_path(&run, 9100)).unwrap();
        let e = generated(&run, 9100).unwrap_err();
        assert!(e.to_string().contains("admin-9100.token"), "{e}");
        assert!(!target.exists(), "the link was followed");
        // A group-writable directory is refused, with the fix.
        fs::remove_file(generated_path(&run, 9100)).unwrap();
        fs::set_permissions(&run, fs::Permissions::from_mode(0o770)).unwrap();
        let e = generated(&run, 9100).unwrap_err().to_string();
        assert!(e.contains("chmod 700"), "{e}");
    }

    #[test]
    fn empty_and_spaced_tokens_are_refused() {
        let dir = TempDir::new("words");
        let path = dir.0.join("token");
        for (text, ok) in [("", false), ("  \n", false), ("a b", false), ("  tok\n", true)] {
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(read_configured(&path).is_ok(), ok, "{text:?}");
            assert_eq!(read_any(&path).is_ok(), ok, "{text:?}");
        }
    }
}
