//! `check = "script"` (keepalived's `MISC_CHECK`): a program run for each
//! probe, without a shell, with the probed address and port as its last
//! two arguments and in its environment. Exit 0 is a success; with
//! `dynamic_weight`, an exit status 2 to 255 is a success that sets the
//! backend's weight to that status (keepalived's `misc_dynamic` sets it to
//! the status minus 2); any other status, or a signal, is a failure.
//!
//! At the timeout the program's whole process group gets SIGKILL (a
//! program that ignores SIGTERM, or left children behind, goes all the
//! same) and is waited for: no zombie is left. At most `MAX_SCRIPTS`
//! programs run at once, whatever the number of backends: a probe that
//! finds every slot taken for its whole timeout is a local failure (this
//! host's, not the backend's), not a DOWN.
use std::{
    net::SocketAddr,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant, SystemTime},
};

use tokio::{process::Command, sync::Semaphore};

use super::{
    probe::{Failure, LocalCause, LocalFailure, Probed, local, outcome},
    state::CheckResult,
};

/// The most check programs running at once, over all services.
pub const MAX_SCRIPTS: usize = 16;

static SLOTS: Semaphore = Semaphore::const_new(MAX_SCRIPTS);

/// The search path a program gets (its environment is otherwise ours only).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct ScriptProbe {
    program: String,
    /// `command`'s arguments, then the probed address and port.
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    dynamic_weight: bool,
}

/// Where a backend is, as a script sees it.
#[derive(Clone, Copy, Debug)]
pub struct Where {
    /// The backend's own address and port.
    pub backend: SocketAddr,
    /// Where it is probed (`check_address` / `check_port`, else its own).
    pub target: SocketAddr,
    /// Its service's VIP and port.
    pub service: SocketAddr,
}

impl ScriptProbe {
    /// `command` is not empty (the config checked it names an executable).
    pub fn new(command: &[String], dynamic_weight: bool, at: Where) -> Self {
        let (program, rest) = command.split_first().map_or(("", &[][..]), |(p, r)| (p.as_str(), r));
        let mut args = rest.to_vec();
        args.extend([at.target.ip().to_string(), at.target.port().to_string()]);
        let env = vec![
            ("PATH", PATH.to_owned()),
            ("LB_BACKEND_ADDRESS", at.backend.ip().to_string()),
            ("LB_BACKEND_PORT", at.backend.port().to_string()),
            ("LB_CHECK_ADDRESS", at.target.ip().to_string()),
            ("LB_CHECK_PORT", at.target.port().to_string()),
            ("LB_SERVICE_ADDRESS", at.service.ip().to_string()),
            ("LB_SERVICE_PORT", at.service.port().to_string()),
        ];
        Self { program: program.to_owned(), args, env, dynamic_weight }
    }

    /// Runs the program once, killing it at `timeout`. The address it is
    /// given was fixed at `new` (`_addr` is the same target).
    pub async fn run(&self, _addr: SocketAddr, timeout: Duration) -> Probed {
        // Waiting for a slot is not the backend's time.
        let Ok(Ok(_slot)) = tokio::time::timeout(timeout, SLOTS.acquire()).await else {
            return Err(local(
                LocalCause::ScriptSlots,
                format!("{MAX_SCRIPTS} check programs were running for the whole timeout"),
            ));
        };
        let at = SystemTime::now();
        let started = Instant::now();
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so that the kill reaches its children too.
            .process_group(0)
            // If this task is aborted (the backend removed), the program
            // goes too, and tokio reaps it.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| LocalFailure {
                cause: LocalCause::of(&e).unwrap_or(LocalCause::CheckSetup),
                error: e,
            })?;
        // Should this task be aborted (its backend removed) while the
        // program runs, the guard kills the whole group, not only the
        // program `kill_on_drop` reaches (the guard drops first: the
        // program is not reaped yet).
        let mut group = Group(child.id());
        let waited = tokio::time::timeout(timeout, child.wait()).await;
        // Past this point the program may be reaped, and its group's id
        // free for another: the guard must not signal it any more.
        let pgid = group.0.take();
        let status = match waited {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return Err(LocalFailure { cause: LocalCause::CheckSetup, error: e }),
            Err(_) => {
                // Not reaped yet (its zombie holds the group's id): safe.
                kill_group(pgid);
                let _ = child.wait().await;
                return outcome(Err(Failure::Timeout(timeout)), at, started.elapsed());
            }
        };
        Ok(self.judge(status, at, started.elapsed()))
    }

    fn judge(&self, status: ExitStatus, at: SystemTime, duration: Duration) -> CheckResult {
        use std::os::unix::process::ExitStatusExt as _;
        let (ok, detail, weight) = match (status.code(), status.signal()) {
            (Some(0), _) => (true, "exit status 0".to_owned(), None),
            (Some(code @ 2..=255), _) if self.dynamic_weight => {
                let weight = code.unsigned_abs();
                (true, format!("exit status {code}: weight {weight}"), Some(weight))
            }
            (Some(code), _) => (false, Failure::Exit(code).to_string(), None),
            (None, Some(signal)) => (false, Failure::Signal(signal).to_string(), None),
            (None, None) => (false, "ended without a status".to_owned(), None),
        };
        CheckResult { ok, detail, at, duration, weight }
    }
}

/// A running program's process group, killed when dropped (unless taken).
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

/// SIGKILL to the process group `pid` leads.
fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else { return };
    // SAFETY: kill(2) with a negative pid signals that process group; no
    // memory is involved. Callers pass the group of a child of ours
    // (`process_group(0)`) that is not reaped yet, so that no other
    // process can have taken its id.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::PermissionsExt as _,
        path::{Path, PathBuf},
    };

    use super::*;
    use crate::daemon::health::probe::Prober;

    /// A directory for this test's scripts, removed at the end.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("lb-script-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// An executable shell script `name` with `body`.
        fn script(&self, name: &str, body: &str) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path.display().to_string()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn at() -> Where {
        Where {
            backend: "10.77.2.11:80".parse().unwrap(),
            target: "127.0.0.1:8081".parse().unwrap(),
            service: "10.77.1.100:80".parse().unwrap(),
        }
    }

    async fn run(command: &[String], dynamic_weight: bool, timeout_ms: u64) -> CheckResult {
        let prober = Prober::Script(ScriptProbe::new(command, dynamic_weight, at()));
        prober.run(at().target, Duration::from_millis(timeout_ms)).await.expect("it ran")
    }

    #[tokio::test]
    async fn exit_statuses_decide_and_dynamic_weight_sets_the_weight() {
        let dir = Dir::new("exit");
        let exit = |code: u8| vec![dir.script(&format!("exit{code}"), &format!("exit {code}"))];
        let r = run(&exit(0), false, 2000).await;
        assert_eq!((r.ok, r.detail.as_str(), r.weight), (true, "exit status 0", None));
        let r = run(&exit(1), true, 2000).await;
        assert_eq!((r.ok, r.detail.as_str(), r.weight), (false, "exit status 1", None));
        let r = run(&exit(5), false, 2000).await;
        assert_eq!(
            (r.ok, r.detail.as_str()),
            (false, "exit status 5"),
            "a weight needs dynamic_weight"
        );
        let r = run(&exit(5), true, 2000).await;
        assert_eq!((r.ok, r.detail.as_str(), r.weight), (true, "exit status 5: weight 5", Some(5)));
        let r = run(&exit(2), true, 2000).await;
        assert_eq!(r.weight, Some(2), "the lowest weight an exit status gives");
        let r = run(&exit(255), true, 2000).await;
        assert_eq!(r.weight, Some(255));
        let r = run(&exit(0), true, 2000).await;
        assert_eq!((r.ok, r.weight), (true, None), "0: the backend's own weight");
        let killed = vec![dir.script("killed", "kill -9 $$")];
        assert_eq!(run(&killed, false, 2000).await.detail, "killed by signal 9");
    }

    #[tokio::test]
    async fn the_backend_is_in_the_arguments_and_the_environment() {
        let dir = Dir::new("args");
        let out = dir.0.join("out");
        let script = dir.script(
            "args",
            "echo \"$@|$LB_BACKEND_ADDRESS:$LB_BACKEND_PORT|$LB_CHECK_ADDRESS:$LB_CHECK_PORT|$LB_SERVICE_ADDRESS:$LB_SERVICE_PORT|$HOME\" > \"$1\"",
        );
        let r = run(&[script, out.display().to_string()], false, 2000).await;
        assert!(r.ok, "{r:?}");
        let seen = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            seen.trim(),
            format!(
                "{} 127.0.0.1 8081|10.77.2.11:80|127.0.0.1:8081|10.77.1.100:80|",
                out.display()
            )
        );
    }

    /// Whether process `pid` exists at all (a zombie does: it is not reaped).
    fn exists(pid: &str) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    /// A program that ignores SIGTERM and leaves a child behind is killed,
    /// child included, at the timeout, and reaped.
    #[tokio::test]
    async fn a_program_past_its_timeout_is_killed_with_its_children_and_reaped() {
        let dir = Dir::new("timeout");
        let pids = dir.0.join("pids");
        let script =
            dir.script("stubborn", "trap '' TERM\nsleep 30 &\necho \"$$ $!\" > \"$1\"\nwait");
        let started = Instant::now();
        let r = run(&[script, pids.display().to_string()], false, 300).await;
        assert_eq!((r.ok, r.detail.as_str()), (false, "timeout after 300 ms"));
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        let seen = std::fs::read_to_string(&pids).unwrap();
        let (script_pid, child_pid) = seen.trim().split_once(' ').unwrap();
        assert!(!exists(script_pid), "the program {script_pid} is still there (a zombie?)");
        // The child is init's to reap now; it must at least be dead.
        let deadline = Instant::now() + Duration::from_secs(2);
        while exists(child_pid)
            && !std::fs::read_to_string(format!("/proc/{child_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "its child {child_pid} still runs");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether `pid` is gone or only a zombie (dead, its parent's to reap).
    fn dead(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    }

    /// A probe stopped while its program runs (its backend removed: the
    /// prober task aborted) takes the program and its children with it.
    #[tokio::test]
    async fn an_aborted_probe_kills_its_program_and_children() {
        let dir = Dir::new("abort");
        let pids = dir.0.join("pids");
        let script = dir.script("slow", "sleep 30 &\necho \"$$ $!\" > \"$1\"\nwait");
        let command = vec![script, pids.display().to_string()];
        let probe = tokio::spawn(async move { run(&command, false, 60_000).await });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&pids).is_ok_and(|p| p.ends_with('\n')) {
            assert!(Instant::now() < deadline, "the program never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        probe.abort();
        let seen = std::fs::read_to_string(&pids).unwrap();
        let (program, child) = seen.trim().split_once(' ').unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !(dead(program) && dead(child)) {
            assert!(Instant::now() < deadline, "{program} or its child {child} still runs");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Three times `MAX_SCRIPTS` probes at once: never more than
    /// `MAX_SCRIPTS` programs run together, and all of them do run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_max_scripts_run_at_once() {
        let dir = Dir::new("bound");
        let running = dir.0.join("running");
        std::fs::create_dir(&running).unwrap();
        let script = dir.script("hold", "mkdir \"$1/$$\"; sleep 0.2; rmdir \"$1/$$\"");
        let command = vec![script, running.display().to_string()];
        let mut probes = tokio::task::JoinSet::new();
        for _ in 0..3 * MAX_SCRIPTS {
            let command = command.clone();
            probes.spawn(async move { run(&command, false, 10_000).await });
        }
        let mut most = 0;
        while !probes.is_empty() {
            most = most.max(std::fs::read_dir(&running).unwrap().count());
            if let Some(done) = probes.try_join_next() {
                assert!(done.unwrap().ok);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(most <= MAX_SCRIPTS, "{most} programs ran at once");
        assert!(most >= MAX_SCRIPTS / 2, "only {most} at once: the test saw no crowd");
    }
}
