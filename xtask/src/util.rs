//! Small process helpers shared by the xtask commands.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// A binary of the workspace's debug build.
/// Cargo's build directory: `$CARGO_TARGET_DIR`, else `target` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

pub fn bin(name: &str) -> PathBuf {
    target_dir().join("debug").join(name)
}

pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

pub fn cargo_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(root());
    // bpf-linker lives in ~/.cargo/bin, which a root shell may not have on PATH.
    cmd.env("PATH", crate::setup::path_with_cargo_bin());
    cmd
}

pub fn cargo(args: &[&str]) -> Result<()> {
    run_status(&mut cargo_cmd(args))
}

/// Builds the controller (with its embedded XDP object) and `lb-lab`, the
/// lab's command, which the end-to-end tests also run as their backends'
/// servers.
pub fn build() -> Result<()> {
    step("building lb-ctl (and the XDP object) and lb-lab");
    cargo(&["build", "-p", "lb-ctl", "-p", "lb-lab"])
}

/// Builds the XDP object again with the `upgrade-marker` feature (one
/// harmless extra instruction), as lb-ctl's build script builds the real one
/// (aya-build's flags); the upgrade test loads it over a running data plane.
pub fn build_upgrade_object() -> Result<PathBuf> {
    step("building a variant of the XDP object (the upgrade test's)");
    let dir = target_dir().join("ebpf-variant");
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "build", "-q", "-p", "lb-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--features", "upgrade-marker", "--target-dir"])
        .arg(&dir)
        .current_dir(root().join("lb-ebpf"))
        .env("PATH", crate::setup::path_with_cargo_bin())
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                &format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
            ]
            .join("\x1f"),
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    run_status(&mut cmd)?;
    Ok(dir.join("bpfel-unknown-none/release/lb-ebpf"))
}

pub fn run_status(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{} failed ({status})", cmd.get_program().display());
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root (network namespaces, XDP, bpffs): run as root or with sudo");
    }
    Ok(())
}
