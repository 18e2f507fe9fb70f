//! `lb-pkg DIR`: writes lb-ctl's man pages (`lb-ctl.1` and one per
//! subcommand, `lb-ctl-run.1`…) and its bash, zsh and fish completions
//! under DIR, generated from `lb_ctl::command`, the very definitions the
//! binary parses. `cargo xtask package` lays them out in the package.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap_complete::Shell;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        bail!("usage: lb-pkg DIR (writes DIR/man/*.1 and DIR/completions/*)");
    };
    let dir = PathBuf::from(dir);
    let pages = man_pages(&dir.join("man"))?;
    let scripts = completions(&dir.join("completions"))?;
    println!("{} man pages, {} completion scripts under {}", pages, scripts, dir.display());
    Ok(())
}

/// `lb-ctl.1`, and a page per subcommand at any depth (`lb-ctl-backend-add.1`),
/// as `git` and `cargo` have: `man lb-ctl-run` says every option of `run`.
fn man_pages(dir: &Path) -> Result<usize> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = lb_ctl::command::command();
    clap_mangen::generate_to(cmd, dir).with_context(|| format!("writing {}", dir.display()))?;
    Ok(fs::read_dir(dir)?.count())
}

/// `lb-ctl.bash`, `_lb-ctl` (zsh) and `lb-ctl.fish`.
fn completions(dir: &Path) -> Result<usize> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = lb_ctl::command::command();
        clap_complete::generate_to(shell, &mut cmd, "lb-ctl", dir)
            .with_context(|| format!("writing the {shell} completions under {}", dir.display()))?;
    }
    Ok(3)
}
