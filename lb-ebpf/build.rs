//! Link flags of the XDP object (the linker, bpf-linker, generates its code).
fn main() {
    // LLVM's BPF backend expands a zeroing (a struct literal's zero
    // fields, `mem::zeroed`) into stores only up to a few of them; past
    // that it calls `memset`, which BPF has not: the object then carries
    // compiler_builtins' byte loop as a BPF-to-BPF call, a store and a
    // branch per byte (measured: the first ACK of a connection paid
    // about 50 ns for two of them, a FIB lookup about 80 ns for its
    // parameters). Up to 128 stores are always expanded inline;
    // `lb_ctl`'s `the_data_plane_calls_only_its_global_functions` test keeps it so.
    println!("cargo:rustc-link-arg-bins=--llvm-args=--max-store-memset=128");
    println!("cargo:rerun-if-changed=build.rs");
}
