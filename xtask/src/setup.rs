//! Makes the machine ready: rust-src for the nightly toolchain (eBPF builds
//! `core` from source), bpf-linker linked against the toolchain's own LLVM
//! (Debian has no LLVM 22), the Debian packages the lab and tests use, and a
//! mounted bpf filesystem. Idempotent; says what it installs.
use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util::{is_root, output, run_status};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages: `ip`, `bpftool`, `ethtool` for the lab's veths, `curl` and
/// `socat` for the client side, `procps` for sysctl, `iputils-ping` and `nftables` for the tests,
/// `keepalived` for the two-node lab and the failover tests, `bird2` (BIRD 2,
/// the BGP speaker of `examples/bird/`) for the BGP lab and tests,
/// `ca-certificates` for the roots `https` health checks trust by default,
/// `openssl` for the tests' certificates and TLS servers.
const PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "ethtool",
    "curl",
    "socat",
    "procps",
    "iputils-ping",
    "nftables",
    "keepalived",
    "bird2",
    "ca-certificates",
    "openssl",
];

/// The browser the stats-page test loads the page in, and a font for its
/// screenshot (about 100 MB), and `systemd-analyze` (package `systemd`,
/// which works offline, with no systemd running) with `man` (which it runs
/// for the unit's `Documentation=man:` pages) for the package's test to
/// verify the unit: only `cargo xtask test` needs them.
const TEST_PACKAGES: &[&str] = &["chromium", "fonts-dejavu-core", "systemd", "man-db"];

pub fn ensure() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    debian_packages(PACKAGES)?;
    bpffs()?;
    eprintln!(
        "setup: rust-src, bpf-linker {BPF_LINKER_VERSION}, {} and bpffs are ready",
        PACKAGES.join(" ")
    );
    Ok(())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"),
        PathBuf::from,
    )
}

/// PATH with cargo's bin directory appended (where bpf-linker is installed).
pub fn path_with_cargo_bin() -> String {
    let bin = cargo_home().join("bin");
    let path = env::var("PATH").unwrap_or_default();
    if path.split(':').any(|p| std::path::Path::new(p) == bin) {
        path
    } else {
        format!("{path}:{}", bin.display())
    }
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("rustup must have a nightly toolchain")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: installing rust-src for the nightly toolchain");
        run_status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker must use the same LLVM as rustc. rustup ships that LLVM as a
/// shared library; bpf-linker is built against it through a prefix of
/// symlinks, and rebuilt when the toolchain's library changes.
fn bpf_linker() -> Result<()> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so")))
        .with_context(|| format!("no libLLVM.so* in {}", libdir.display()))?;
    let prefix = PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into()))
        .join(".local/share/lb-llvm");
    let link = prefix.join("lib/libLLVM.so");
    let linker = cargo_home().join("bin/bpf-linker");
    let current = std::fs::read_link(&link).ok().as_deref() == Some(libllvm.as_path());
    let works = Command::new(&linker).arg("--version").output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
    });
    if current && works {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        libllvm.display()
    );
    std::fs::create_dir_all(prefix.join("lib"))?;
    for name in
        ["libLLVM.so".to_string(), libllvm.file_name().unwrap().to_string_lossy().into_owned()]
    {
        let path = prefix.join("lib").join(name);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&libllvm, &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    run_status(
        Command::new("cargo")
            .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked", "--force"])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", &prefix),
    )
}

/// What the end-to-end benchmark compares against and drives: HAProxy,
/// nginx on the backends, wrk on the client (not needed by the tests).
const BENCH_PACKAGES: &[&str] = &["haproxy", "nginx-light", "wrk"];

/// What `cargo xtask bench` needs on top of `ensure`.
pub fn ensure_for_bench() -> Result<()> {
    ensure()?;
    debian_packages(BENCH_PACKAGES)
}

/// What `cargo xtask test` needs on top of `ensure`.
pub fn ensure_for_tests() -> Result<()> {
    ensure()?;
    debian_packages(TEST_PACKAGES)
}

fn debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run as root, or apt-get install them",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run_status(Command::new("apt-get").args(["update", "-q"]))?;
    run_status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Pinned maps need a bpf filesystem on /sys/fs/bpf; some machines boot without it.
fn bpffs() -> Result<()> {
    let fs_type =
        output(Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"])).unwrap_or_default();
    if fs_type.trim() == "bpf_fs" {
        return Ok(());
    }
    if !is_root() {
        return Ok(()); // Commands that need it check for root themselves.
    }
    eprintln!("setup: mounting the bpf filesystem on /sys/fs/bpf");
    run_status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
