//! `cargo xtask package`: the Debian package `lb`, built with `dpkg-deb`
//! from a tree laid out here (dpkg-deb comes with dpkg, which every Debian
//! has; cargo-deb would be one more tool to build on a fresh machine, for
//! a layout this short). The tree: `lb-ctl` (its XDP object is built in,
//! `lb_ctl::EBPF_OBJECT`), the systemd unit and the sysusers.d entry of
//! its user, `/etc/lb/lb.toml` (a conffile), the man pages and bash, zsh
//! and fish completions generated from lb-ctl's own command line
//! (`lb-pkg`, a crate of its own so that lb-ctl's builds never compile the
//! generators), the keepalived example, the Grafana dashboard and the
//! configuration reference under `/usr/share/doc/lb/`, and the maintainer scripts of `pkg/debian/`.
use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, output, root, run_status, step, target_dir};

/// Which build of lb-ctl goes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `cargo build --release`: what `cargo xtask package` ships.
    Release,
    /// The debug build the tests run anyway (stripped): `cargo xtask test`
    /// checks the package's layout, scripts and service with it, without a
    /// release build of every dependency (minutes on a small machine).
    Debug,
}

/// What a package holds, from the repository to its path in the package
/// (mode 0644).
const FILES: [(&str, &str); 6] = [
    ("pkg/debian/lb-ctl.service", "lib/systemd/system/lb-ctl.service"),
    ("pkg/debian/lb-ctl.sysusers", "usr/lib/sysusers.d/lb-ctl.conf"),
    ("pkg/debian/lb.toml", "etc/lb/lb.toml"),
    ("pkg/debian/copyright", "usr/share/doc/lb/copyright"),
    ("examples/keepalived/keepalived.conf", "usr/share/doc/lb/examples/keepalived/keepalived.conf"),
    ("examples/grafana/lb.json", "usr/share/doc/lb/examples/grafana/lb.json"),
];

/// Documents compressed into `/usr/share/doc/lb/` (Debian's convention).
const DOCS: [&str; 1] = ["docs/configuration.md"];

/// The maintainer scripts (mode 0755) and the other control files.
const SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];

/// Where the generated completions go, by file name (`lb-pkg`'s names).
const COMPLETIONS: [(&str, &str); 3] = [
    ("lb-ctl.bash", "usr/share/bash-completion/completions/lb-ctl"),
    ("_lb-ctl", "usr/share/zsh/vendor-completions/_lb-ctl"),
    ("lb-ctl.fish", "usr/share/fish/vendor_completions.d/lb-ctl.fish"),
];

/// The package's file: `target/debian/lb_VERSION_ARCH.deb`.
pub fn deb_path() -> Result<PathBuf> {
    Ok(target_dir().join("debian").join(format!("lb_{}_{}.deb", version()?, arch()?)))
}

/// Builds lb-ctl and the generator, lays out the tree, builds the `.deb`.
pub fn build(profile: Profile) -> Result<PathBuf> {
    step("building the Debian package lb (dpkg-deb)");
    let binary = match profile {
        Profile::Release => {
            util::cargo(&["build", "--release", "-p", "lb-ctl"])?;
            target_dir().join("release/lb-ctl")
        }
        Profile::Debug => {
            util::cargo(&["build", "-p", "lb-ctl"])?;
            util::bin("lb-ctl")
        }
    };
    let work = target_dir().join("debian");
    let tree = work.join("tree");
    let generated = work.join("generated");
    for dir in [&tree, &generated] {
        let _ = fs::remove_dir_all(dir);
    }
    util::cargo(&["run", "-q", "-p", "lb-pkg", "--", &generated.to_string_lossy()])?;

    let bin = place(&tree, "usr/bin/lb-ctl")?;
    run_status(Command::new("strip").args(["--strip-debug", "-o"]).arg(&bin).arg(&binary))?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    for (from, to) in FILES {
        copy(&root().join(from), &place(&tree, to)?, 0o644)?;
    }
    for doc in DOCS {
        let name = Path::new(doc).file_name().unwrap().to_string_lossy();
        gzip(&root().join(doc), &place(&tree, &format!("usr/share/doc/lb/{name}.gz"))?)?;
    }
    for page in fs::read_dir(generated.join("man"))? {
        let page = page?.path();
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        gzip(&page, &place(&tree, &format!("usr/share/man/man1/{name}.gz"))?)?;
    }
    for (name, to) in COMPLETIONS {
        copy(&generated.join("completions").join(name), &place(&tree, to)?, 0o644)?;
    }
    control(&tree)?;

    let deb = deb_path()?;
    run_status(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&tree)
            .arg(&deb),
    )?;
    eprintln!("package: {}", deb.display());
    Ok(deb)
}

/// The control area: `control` with its version, architecture and size,
/// `conffiles`, the scripts, and `md5sums` of every file.
fn control(tree: &Path) -> Result<()> {
    let debian = root().join("pkg/debian");
    let files = files_under(tree)?;
    let mut size = 0;
    let mut md5sums = String::new();
    for file in &files {
        size += fs::metadata(tree.join(file))?.len();
        let sum = output(Command::new("md5sum").arg(tree.join(file)))?;
        let hash = sum.split_whitespace().next().context("md5sum printed nothing")?;
        let _ = writeln!(md5sums, "{hash}  {file}");
    }
    let text = fs::read_to_string(debian.join("control"))?
        .replace("@VERSION@", &version()?)
        .replace("@ARCH@", &arch()?)
        .replace("@SIZE@", &size.div_ceil(1024).to_string());
    fs::write(place(tree, "DEBIAN/control")?, text)?;
    fs::write(place(tree, "DEBIAN/md5sums")?, md5sums)?;
    copy(&debian.join("conffiles"), &place(tree, "DEBIAN/conffiles")?, 0o644)?;
    for script in SCRIPTS {
        copy(&debian.join(script), &place(tree, &format!("DEBIAN/{script}"))?, 0o755)?;
    }
    Ok(())
}

/// Copies `from` to `to` with `mode` (not the checkout's).
fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `tree/path` with its directories made (0755), for a file about to be
/// written there.
fn place(tree: &Path, path: &str) -> Result<PathBuf> {
    let full = tree.join(path);
    let parent = full.parent().context("a file in a directory")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let mut dir = parent;
    while dir.starts_with(tree) {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        dir = dir.parent().context("the tree's parent")?;
    }
    Ok(full)
}

/// `gzip -9n` (no name or time in the header: the same input makes the
/// same package).
fn gzip(from: &Path, to: &Path) -> Result<()> {
    let bytes = Command::new("gzip")
        .args(["-9nc"])
        .arg(from)
        .output()
        .with_context(|| format!("gzip {}", from.display()))?;
    if !bytes.status.success() {
        bail!("gzip {} failed", from.display());
    }
    fs::write(to, bytes.stdout)?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Every file under `tree` but the control area, as paths relative to it.
fn files_under(tree: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut dirs = vec![tree.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let relative = path.strip_prefix(tree)?.to_string_lossy().into_owned();
            if relative == "DEBIAN" {
                continue;
            }
            if path.is_dir() { dirs.push(path) } else { found.push(relative) }
        }
    }
    found.sort();
    Ok(found)
}

/// lb-ctl's version (its Cargo.toml), the package's.
fn version() -> Result<String> {
    let manifest = fs::read_to_string(root().join("lb-ctl/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_owned))
        .context("no version in lb-ctl/Cargo.toml")
}

fn arch() -> Result<String> {
    Ok(output(Command::new("dpkg").arg("--print-architecture"))?.trim().to_owned())
}
