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

/// The package's files agree with each other: the shipped config pins where
/// the unit prepares the pin directory, keeps its state where the unit lets
/// the service write, and parses; the example service in its comments is a
/// valid one once uncommented.
#[cfg(test)]
mod tests {
    const UNIT: &str = include_str!("../debian/lb-ctl.service");
    const CONFIG: &str = include_str!("../debian/lb.toml");

    fn unit_value(key: &str) -> &'static str {
        let prefix = format!("{key}=");
        UNIT.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {key}="))
    }

    #[test]
    fn the_shipped_config_fits_the_unit() {
        let config = lb_ctl::desired::config::parse(CONFIG).unwrap();
        let pins = config.dataplane.pin_path.display().to_string();
        assert!(
            UNIT.lines().any(|l| l.starts_with("ExecStartPre=+/usr/bin/install -d -o lb -g lb")
                && l.ends_with(&format!(" {pins}"))),
            "the unit prepares {pins} for the lb user"
        );
        let state = config.admin.state_file.expect("admin.state_file is set");
        let writable = format!("/var/lib/{}/", unit_value("StateDirectory"));
        assert!(state.starts_with(&writable), "{} is not under {writable}", state.display());
        assert_eq!(unit_value("RuntimeDirectory"), "lb-ctl", "LB_RUN_DIR's default, /run/lb-ctl");
        assert!(unit_value("ExecStart").ends_with("run --config /etc/lb/lb.toml"));
        assert!(config.services.is_empty(), "no service runs until the operator writes one");

        let uncommented: String = CONFIG
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.trim_start().starts_with('[') || r.contains(" = "))
            })
            .map(|l| l.map_or(String::new(), |r| format!("{r}\n")))
            .collect();
        let with_service = format!("{CONFIG}\n{uncommented}");
        let example = lb_ctl::desired::config::parse(&with_service).unwrap();
        assert_eq!(example.services.len(), 1);
        assert_eq!(example.services[0].backends.len(), 2);
    }
}
