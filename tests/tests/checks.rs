//! The health check types beyond tcp and http, end to end in the lab
//! topology with the real controller: `udp` against the backends' UDP
//! echo, `https` against `openssl s_server` with a certificate of a test
//! CA, `script` with a program whose exit status the test sets.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use lb_testbed::{
    harness::{Checks, FAST_CHECKS, Lab, Setup, udp_query},
    netns::{block_input, in_ns, terminate, unblock_input},
    topology::{BACKENDS, Topology},
};

/// fall x interval + timeout of the checks below (2 x 200 + 100 ms), and the
/// margin `health.rs` allows for scheduling on a shared machine.
const DETECTION_BOUND: Duration = Duration::from_millis(500 + 200);

fn address(name: &str) -> &'static str {
    BACKENDS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a).unwrap()
}

/// A directory of the test's own files, removed on drop.
struct Files(PathBuf);

impl Files {
    fn new(dir: &str) -> Self {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        Self(PathBuf::from(dir))
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The UDP echo service checked with a datagram whose echo must come back
/// (`web2 lb-check`), the other two as `FAST_CHECKS`.
const UDP_CHECKS: Checks = Checks {
    web: FAST_CHECKS.web,
    echo: FAST_CHECKS.echo,
    udp: "check = \"udp\"\nsend = \"lb-check\"\nexpect = \"^web[0-9] lb-check$\"\ninterval_ms = 200\ntimeout_ms = 100\nrise = 2\nfall = 2\n",
};

/// A UDP backend whose datagrams an nftables rule drops goes DOWN within
/// fall x interval + timeout, gets no query, and comes back unblocked.
#[test]
fn a_udp_backend_blocked_goes_down_and_comes_back() {
    let lab = Lab::start_with_checks("lbk1", Some(&UDP_CHECKS));
    lab.wait_lines(&["backend is UP"], 9, Duration::from_secs(10));
    let web2 = format!("backend={}:5353", address("web2"));
    block_input(&lab.topo.web("web2"), &["udp", "dport", "5353", "drop"]);
    let took = lab.wait_lines(&["backend is DOWN", &web2], 1, Duration::from_secs(10));
    eprintln!("web2:5353 DOWN {} ms after the block", took.as_millis());
    assert!(took <= DETECTION_BOUND, "took {took:?}");
    lab.wait_lines(&["backend is DOWN", &web2, "timeout after 100 ms"], 1, Duration::from_secs(1));
    lab.wait_lines(&["health applied", "down=1"], 1, Duration::from_secs(5));
    let answers: Vec<String> = in_ns(&lab.topo.client(), || {
        (0..40).map(|i| udp_query(&format!("q{i}")).expect("a UDP answer")).collect()
    });
    assert!(!answers.iter().any(|a| a == "web2"), "a DOWN backend got queries: {answers:?}");

    unblock_input(&lab.topo.web("web2"));
    lab.wait_lines(&["backend is UP", &web2], 2, Duration::from_secs(10));
    lab.wait_lines(&["health applied", "down=0"], 1, Duration::from_secs(5));
    let answers: Vec<String> = in_ns(&lab.topo.client(), || {
        (0..60).map(|i| udp_query(&format!("r{i}")).expect("a UDP answer")).collect()
    });
    assert!(answers.iter().any(|a| a == "web2"), "web2 should answer again: {answers:?}");
}

/// Where the https test keeps its CA and certificates (named in its config).
const PKI: &str = "/tmp/lbk2-pki";
const TLS_PORT: u16 = 8443;

/// `openssl s_server -www` on every backend: `GET /` answers 200.
fn tls_servers(topo: &Topology, dir: &Path) -> Vec<Child> {
    BACKENDS
        .iter()
        .map(|(name, _)| {
            Command::new("ip")
                .args(["netns", "exec", &topo.web(name), "openssl", "s_server", "-quiet", "-www"])
                .args([
                    "-accept",
                    &TLS_PORT.to_string(),
                    "-cert",
                    "server.pem",
                    "-key",
                    "server.key",
                ])
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl s_server")
        })
        .collect()
}

const HTTPS_WITH_THE_CA: Checks = Checks {
    web: "check = \"https\"\ncheck_port = 8443\nca_file = \"/tmp/lbk2-pki/ca.pem\"\nexpect_status = 200\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n",
    echo: FAST_CHECKS.echo,
    udp: "",
};

/// https with the test CA: UP; with another CA: DOWN, the reason named;
/// with `verify = false`: UP again; with `sni` and the CA: UP.
#[test]
fn https_checks_verify_the_certificate_against_the_ca() {
    let files = Files::new(PKI);
    let ips: Vec<&str> = BACKENDS.iter().map(|(_, a)| *a).collect();
    lb_testbed::pki::make(&files.0, &ips);
    let mut servers = Vec::new();
    let setup = Setup { checks: Some(&HTTPS_WITH_THE_CA), ..Setup::default() };
    let mut lab = Lab::start_prepared("lbk2", setup, [Some(1); 3], |topo| {
        servers = tls_servers(topo, &files.0);
        // s_server listens within milliseconds; the first probe waits its offset.
        std::thread::sleep(Duration::from_millis(300));
    });
    let web_up = |lab: &Lab, count| {
        for (name, addr) in BACKENDS {
            let tag = format!("backend={addr}:80");
            lab.wait_lines(&["backend is UP", &tag], count, Duration::from_secs(10));
            assert_eq!(lab.backend_view(addr, 80).health.status, "UP", "{name}");
        }
    };
    web_up(&lab, 1);
    let view = lab.backend_view(address("web1"), 80);
    assert_eq!(view.health.last_check.map(|c| c.detail).as_deref(), Some("HTTP 200"));

    let config = lab.config_text([Some(1); 3]);
    let other = config.replace("/ca.pem", "/other-ca.pem");
    lab.reload_text(&other, "configuration reloaded");
    for (_, addr) in BACKENDS {
        let tag = format!("backend={addr}:80");
        let why = "TLS handshake failed: invalid peer certificate: UnknownIssuer";
        lab.wait_lines(&["backend is DOWN", &tag, why], 1, Duration::from_secs(10));
    }
    lab.wait_lines(&["health applied", "down=3"], 1, Duration::from_secs(5));

    let any = config.replace("ca_file = \"/tmp/lbk2-pki/ca.pem\"", "verify = false");
    lab.reload_text(&any, "configuration reloaded");
    web_up(&lab, 2);

    // A name: sent as SNI, and the certificate verified for it.
    let named = config.replace("check = \"https\"", "check = \"https\"\nsni = \"backend.test\"");
    lab.reload_text(&named, "configuration reloaded");
    let named_wrong = named.replace("backend.test", "other.test");
    lab.reload_text(&named_wrong, "configuration reloaded");
    let tag = format!("backend={}:80", address("web1"));
    let why = "certificate not valid for name";
    lab.wait_lines(&["backend is DOWN", &tag, why], 1, Duration::from_secs(10));
    drop(lab);
    servers.into_iter().for_each(terminate);
}

/// Where the script test keeps its program and each backend's exit status.
const SCRIPTS: &str = "/tmp/lbk3-scripts";

const SCRIPT_CHECKS: Checks = Checks {
    web: "check = \"script\"\ncommand = [\"/tmp/lbk3-scripts/check\", \"/tmp/lbk3-scripts\"]\ndynamic_weight = true\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n",
    echo: FAST_CHECKS.echo,
    udp: "",
};

/// The status the script exits with for backend `name`.
fn set_exit(name: &str, code: u8) {
    std::fs::write(Path::new(SCRIPTS).join(address(name)), code.to_string()).unwrap();
}

/// A script exiting 1 takes its backend DOWN, 0 brings it UP, and 5 with
/// `dynamic_weight` gives it weight 5: in the API, in `lb-ctl list`, and in
/// the share of new flows it gets.
#[test]
fn a_script_decides_up_down_and_the_weight() {
    let files = Files::new(SCRIPTS);
    // $1: this directory; $2 and $3: the probed address and port.
    let program = files.0.join("check");
    std::fs::write(&program, "#!/bin/sh\nexit \"$(cat \"$1/$2\")\"\n").unwrap();
    std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    for (name, _) in BACKENDS {
        set_exit(name, 0);
    }
    let lab = Lab::start_with_checks("lbk3", Some(&SCRIPT_CHECKS));
    lab.wait_lines(&["backend is UP"], 6, Duration::from_secs(10));
    let web2 = format!("backend={}:80", address("web2"));

    set_exit("web2", 1);
    lab.wait_lines(&["backend is DOWN", &web2, "exit status 1"], 1, Duration::from_secs(10));
    lab.wait_lines(&["health applied", "down=1"], 1, Duration::from_secs(5));
    let answers = lab.who_answers(30);
    assert!(!answers.iter().any(|a| a == "web2"), "web2 got new flows: {answers:?}");

    set_exit("web2", 0);
    lab.wait_lines(&["backend is UP", &web2], 2, Duration::from_secs(10));
    lab.wait_lines(&["health applied", "down=0"], 1, Duration::from_secs(5));
    assert!((lab.backend_view(address("web2"), 80).effective_weight - 1.0).abs() < f64::EPSILON);

    set_exit("web2", 5);
    lab.wait_lines(&["backend weight set by its check", &web2], 1, Duration::from_secs(10));
    // The view is published once the weight is applied, after the log line.
    let view = weighted(&lab, Some(5));
    assert_eq!((view.weight, view.check_weight, view.effective_weight), (1, Some(5), 5.0));
    let list = lab.ctl_ok(&["list"]);
    let line = format!("-> {}:80", address("web2"));
    let row = list.lines().find(|l| l.contains(&line)).unwrap_or_else(|| panic!("{list}"));
    assert!(row.split_whitespace().nth(3) == Some("5*"), "{row}\n{list}");
    // Weights 1, 5, 1: web2 holds 5/7 of the Maglev table.
    let answers = lab.who_answers(70);
    let web2_share = answers.iter().filter(|a| *a == "web2").count();
    eprintln!("web2 answered {web2_share} of 70 new connections at weight 5 of 7");
    assert!(web2_share > 35, "web2 answered {web2_share} of 70: {answers:?}");

    // 0 again: its own weight.
    set_exit("web2", 0);
    lab.wait_lines(
        &["backend weight set by its check", &web2, "its own"],
        1,
        Duration::from_secs(10),
    );
    let view = weighted(&lab, None);
    assert_eq!((view.check_weight, view.effective_weight), (None, 1.0));
}

/// web2's view once its check weight is `weight`.
fn weighted(lab: &Lab, weight: Option<u32>) -> lb_ctl::daemon::api::view::BackendView {
    lb_testbed::harness::wait_for("web2's weight in the API", Duration::from_secs(2), || {
        let view = lab.backend_view(address("web2"), 80);
        if view.check_weight == weight { Ok(view) } else { Err(view.check_weight) }
    })
}
