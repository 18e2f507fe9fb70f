//! Builds the XDP object (`lb-ebpf`) for bpfel-unknown-none with aya-build;
//! `lb_ctl::EBPF_OBJECT` embeds it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        ..Default::default()
    };
    // aya-build watches lb-ebpf only; the map layouts live in lb-common.
    println!("cargo:rerun-if-changed={}", concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-common"));
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .map_err(|e| anyhow!("{e:#}"))
        .context("building the eBPF object (is bpf-linker installed? run `cargo xtask setup`)")
}
