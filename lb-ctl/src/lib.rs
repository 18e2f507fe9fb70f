//! `lb-ctl`: the controller of the XDP load balancer, and the operator's CLI.
//!
//! Its modules follow the path of a change, from what is asked to what the
//! kernel holds:
//!
//! - `desired`: what is desired (the config file, the API's changes on top
//!   of it), checked into plain data;
//! - `plan`: how it is planned, in pure code (stable ids, the image the
//!   kernel maps should hold, the ordered writes between two images);
//! - `write`: how it is written (the reconciler, the data plane's maps and
//!   programs, the host's interface settings);
//! - `daemon`: `lb-ctl run`, which keeps the data plane as desired (its
//!   loop, the health checks, the admin API);
//! - `operator`: the operator's side (the CLI, a client of the admin API);
//! - `command`: the command line of them all.
pub mod command;
pub mod daemon;
pub mod desired;
pub mod operator;
pub mod plan;
pub mod write;

/// The compiled XDP object (built by build.rs from `lb-ebpf`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

#[cfg(test)]
mod tests {
    use object::{
        Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionIndex,
        SymbolKind,
    };

    /// What compiler_builtins puts in the object for a memory operation
    /// LLVM did not expand: a byte loop, one call per use.
    const BYTE_LOOPS: [&str; 5] = ["memset", "memcpy", "memmove", "memcmp", "bcmp"];

    /// No program calls a byte loop (see lb-ebpf's build script), nor any
    /// function but the global ones it declares (`lb_*`): every
    /// BPF-to-BPF call (`call` with `src_reg` 1) is followed to its
    /// target: its relocation's function, or, relocated against a section
    /// (a local function) or not relocated (in its own section), the
    /// function at `imm + 1` instructions from there (libbpf's rule); a
    /// call that leads to no function fails the test too.
    #[test]
    fn the_data_plane_calls_only_its_global_functions() {
        let elf = object::File::parse(super::EBPF_OBJECT).expect("the XDP object parses");
        let function_at = |section: Option<SectionIndex>, address: u64| {
            elf.symbols()
                .find(|s| {
                    s.kind() == SymbolKind::Text
                        && s.section_index() == section
                        && s.address() == address
                })
                .and_then(|s| s.name().ok().map(str::to_owned))
                .unwrap_or_else(|| panic!("a call to no function: {address} of {section:?}"))
        };
        let mut calls = 0;
        for section in elf.sections().filter(|s| s.kind() == object::SectionKind::Text) {
            let code = section.data().expect("the section's code");
            let relocated: std::collections::HashMap<u64, object::read::Symbol<'_, '_>> = section
                .relocations()
                .filter_map(|(offset, rel)| match rel.target() {
                    RelocationTarget::Symbol(i) => Some((offset, elf.symbol_by_index(i).ok()?)),
                    _ => None,
                })
                .collect();
            for (i, insn) in code.chunks_exact(8).enumerate() {
                let offset = 8 * i as u64;
                // BPF_JMP | BPF_CALL with src_reg BPF_PSEUDO_CALL.
                if insn[0] != 0x85 || insn[1] >> 4 != 1 {
                    continue;
                }
                calls += 1;
                let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
                let next = 8 * (i64::from(imm) + 1);
                let target = match relocated.get(&offset) {
                    Some(symbol) if symbol.kind() == SymbolKind::Section => {
                        function_at(symbol.section_index(), 0_u64.wrapping_add_signed(next))
                    }
                    Some(symbol) => symbol.name().unwrap_or_default().to_owned(),
                    None => function_at(Some(section.index()), offset.wrapping_add_signed(next)),
                };
                assert!(
                    !BYTE_LOOPS.contains(&target.as_str()),
                    "{} calls {target} at offset {offset}",
                    section.name().unwrap_or("?")
                );
                // Every call is to one of the program's own global
                // functions: a Rust function LLVM outlined (a small one
                // called from several places) would cost each packet a
                // call it was meant to inline.
                let global =
                    elf.symbols().any(|s| s.name() == Ok(target.as_str()) && s.is_global());
                assert!(
                    target.starts_with("lb_") && global,
                    "{} calls {target} at offset {offset}: not a global function of ours",
                    section.name().unwrap_or("?")
                );
            }
        }
        // The global functions are called (the scan sees calls at all).
        assert!(calls >= 3, "{calls} BPF-to-BPF calls found");
    }
}
