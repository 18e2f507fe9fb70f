//! The Debian package `lb` (`cargo xtask package`) installed into a scratch
//! root by the real dpkg: its own database under the root, the maintainer
//! scripts run unchrooted with `$DPKG_ROOT` set (they honour it: the lb
//! user goes into the root's `/etc/passwd`, nothing touches the host's
//! systemd). Removed with the root.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The `.deb` under test: `$LB_DEB` (set by `cargo xtask test`), else the
/// one `cargo xtask package` left in the build directory of this test.
pub fn deb_path() -> PathBuf {
    if let Some(path) = std::env::var_os("LB_DEB") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    // target/debug/deps/THIS -> target/debian/lb_*.deb
    let debian = exe.ancestors().nth(3).expect("the target directory").join("debian");
    std::fs::read_dir(&debian)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| {
            panic!("no .deb in {}: run `cargo xtask package --debug`", debian.display())
        })
}

/// A directory that dpkg treats as a whole system, the package installed.
pub struct ScratchRoot {
    pub dir: PathBuf,
}

impl ScratchRoot {
    /// A fresh root `/tmp/NAME` with `lb` installed in it.
    pub fn with_package(name: &str) -> Self {
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
            std::fs::create_dir_all(dir.join(sub)).expect("the scratch root's dpkg database");
        }
        std::fs::write(dir.join("var/lib/dpkg/status"), "").expect("an empty dpkg status");
        let root = Self { dir };
        // The root has no libc6 package to satisfy Depends: the host's is used.
        let deb = deb_path();
        root.dpkg_ok(&["--force-depends", "-i", &deb.to_string_lossy()]);
        root
    }

    /// `dpkg --root=DIR ARGS`, its output.
    pub fn dpkg(&self, args: &[&str]) -> Output {
        Command::new("dpkg")
            .arg(format!("--root={}", self.dir.display()))
            .args(["--force-script-chrootless", "--log=/dev/null"])
            .args(args)
            .output()
            .expect("running dpkg")
    }

    pub fn dpkg_ok(&self, args: &[&str]) -> String {
        let out = self.dpkg(args);
        assert!(
            out.status.success(),
            "dpkg {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `dpkg-query --root=DIR -W -f=FORMAT lb`: what dpkg knows of lb.
    pub fn query(&self, format: &str) -> String {
        let out = Command::new("dpkg-query")
            .arg(format!("--root={}", self.dir.display()))
            .args(["-W", &format!("-f={format}"), "lb"])
            .output()
            .expect("running dpkg-query");
        assert!(out.status.success(), "dpkg-query: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `path` (absolute, as in the package) inside the root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.dir.join(path.trim_start_matches('/'))
    }

    /// Every file and symlink under the root but dpkg's own database, as
    /// absolute paths of the installed system, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut dirs = vec![self.dir.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("reading the scratch root") {
                let path = entry.expect("a directory entry").path();
                let shown = format!("/{}", path.strip_prefix(&self.dir).unwrap().display());
                if shown == "/var/lib/dpkg" {
                    continue;
                }
                if path.is_dir() && !path.is_symlink() {
                    dirs.push(path);
                } else {
                    found.push(shown);
                }
            }
        }
        found.sort();
        found
    }
}

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The values of `key=` lines in a unit file's text, split on spaces.
pub fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .flat_map(|v| v.split_whitespace().map(str::to_owned))
        .collect()
}

/// `systemd-analyze verify` of the unit `name` as the root holds it, on
/// top of this host's system (its targets, `/bin/kill`…): the root and the
/// host overlaid, in a mount namespace of its own that nothing else sees
/// (a tmpfs over `/mnt` there: overlayfs refuses a layer inside another).
/// Its output (empty when the unit is clean) and whether it passed.
pub fn verify_unit(root: &Path, name: &str) -> (bool, String) {
    analyze(root, name, "verify")
}

/// `systemd-analyze security --offline=true` of the unit `name` (as
/// `verify_unit` sees it): its overall exposure (0 to 10, lower is safer).
pub fn exposure(root: &Path, name: &str) -> f64 {
    let (_, text) = analyze(root, name, "security --offline=true");
    let line = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for ").map(|(_, rest)| rest.to_owned()))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    let score = line.split_whitespace().nth(1).and_then(|n| n.parse().ok());
    score.unwrap_or_else(|| panic!("no score in {line:?}"))
}

/// `systemd-analyze COMMAND UNIT` over the root and the host overlaid.
fn analyze(root: &Path, name: &str, command: &str) -> (bool, String) {
    let script = r#"set -e
view=/mnt
mount -t tmpfs tmpfs "$view"
mkdir "$view/root" "$view/all"
cp -a "$0/." "$view/root/"
mount -t overlay overlay -o lowerdir="$view/root":/ "$view/all"
MANPATH="$view/all/usr/share/man" systemd-analyze $2 --root="$view/all" "$1" 2>&1
"#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(root)
        .arg(name)
        .arg(command)
        .output()
        .expect("running systemd-analyze");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
