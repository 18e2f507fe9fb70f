//! Builds the XDP object (`lb-ebpf`) for bpfel-unknown-none with aya-build;
//! `lb_ctl::EBPF_OBJECT` embeds it.
use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, Write as _},
    os::fd::AsRawFd as _,
    path::PathBuf,
};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        ..Default::default()
    };
    // aya-build watches lb-ebpf only; the map layouts live in lb-common.
    println!("cargo:rerun-if-changed={}", concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-common"));
    let log = PathBuf::from(std::env::var("OUT_DIR")?).join("ebpf-build.log");
    let built = quietly(&log, || {
        aya_build::build_ebpf([package], aya_build::Toolchain::default())
            .map_err(|e| anyhow!("{e:#}"))
    })?;
    built.context("building the eBPF object (is bpf-linker installed? run `cargo xtask setup`)")
}

/// Runs `build` with this script's standard output going to `log`, then
/// passes its instructions to cargo, except the `cargo:warning` lines:
/// aya-build relays every line of the eBPF build's progress as one, which
/// a newcomer's first build would show as dozens of warnings. They are
/// passed on only when the build failed, where they say why.
fn quietly<T>(
    log: &PathBuf,
    run: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<anyhow::Result<T>> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    io::stdout().flush()?;
    // SAFETY: dup and dup2 on this process's standard output and a file it
    // owns; the saved descriptor is restored below and then closed.
    let redirected = unsafe {
        let saved = libc::dup(1);
        (saved >= 0 && libc::dup2(file.as_raw_fd(), 1) >= 0).then_some(saved)
    };
    let Some(saved) = redirected else {
        return Err(io::Error::last_os_error()).context("redirecting the build's output");
    };
    let built = run();
    io::stdout().flush()?;
    // SAFETY: as above: standard output back, the copy closed.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    for line in BufReader::new(File::open(log)?).lines() {
        let line = line?;
        if built.is_err() || !line.starts_with("cargo:warning=") {
            println!("{line}");
        }
    }
    Ok(built)
}
