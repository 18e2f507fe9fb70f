//! `cargo xtask bench report`: the benchmark tables of `docs/benchmarks.md`,
//! rendered from the JSON reports under a directory (default
//! `target/bench`) and printed as marker-delimited regions that xtask
//! splices into the document (see `lb_bench::report`).
fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "target/bench".to_owned());
    print!("{}", lb_bench::report::render(std::path::Path::new(&dir)));
}
