//! Certificates for the `https` health checks' tests and benchmark: a test
//! CA, another CA that signed nothing, and a server certificate the first
//! signed, made with Debian's openssl command (`cargo xtask setup`
//! installs it) in a directory of the caller's.
use std::{path::Path, process::Command};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (cargo xtask setup installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// In `dir`: `ca.pem`, `other-ca.pem`, and `server.pem` / `server.key` for
/// `backend.test` and the IPv4 addresses `ips`, signed by `ca.pem`
/// (P-256 keys, valid two days).
pub fn make(dir: &Path, ips: &[&str]) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for ca in ["ca", "other-ca"] {
        let (key, pem, subject) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN={ca}"));
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subject]);
        openssl(dir, &args);
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=backend.test"]);
    openssl(dir, &args);
    let ips: Vec<String> = ips.iter().map(|a| format!(",IP:{a}")).collect();
    let san = format!("subjectAltName=DNS:backend.test{}\n", ips.concat());
    std::fs::write(dir.join("san.ext"), san).expect("writing san.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}
