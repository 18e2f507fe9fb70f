//! systemd's readiness protocol (`sd_notify(3)`), for a `Type=notify`
//! unit: one datagram per state change to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
//! `READY=1` once `/readyz` would answer 200, `RELOADING=1` at SIGHUP and
//! `READY=1` again when the reload is done, `STOPPING=1` at SIGTERM.
//! Without `$NOTIFY_SOCKET` (not started by systemd) every call does
//! nothing. A few lines of std: no crate needed.
use std::{
    ffi::OsStr,
    io,
    os::unix::{
        ffi::OsStrExt as _,
        net::{SocketAddr, UnixDatagram},
    },
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::watch;
use tracing::{info, warn};

use super::api::view::Stats;

/// Where the states go, and whether `READY=1` was sent (a reload before
/// it must not claim readiness, and `RELOADING=1` means nothing before it).
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    socket: Option<Arc<(UnixDatagram, SocketAddr)>>,
    ready: Arc<AtomicBool>,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` asks for; none without it, or with a
    /// value that names no socket (logged).
    pub fn from_env() -> Self {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Self::default(),
            Some(name) => Self::to(&name).unwrap_or_else(|e| {
                warn!(error = %e, "NOTIFY_SOCKET ignored: systemd will not hear that lb-ctl is ready");
                Self::default()
            }),
        }
    }

    /// A notifier sending to the socket `name` (`/path` or `@abstract`).
    pub fn to(name: &OsStr) -> io::Result<Self> {
        let bytes = name.as_bytes();
        let address = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(name)?,
            Some(b'@') => {
                use std::os::linux::net::SocketAddrExt as _;
                SocketAddr::from_abstract_name(&bytes[1..])?
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: neither an absolute path nor @name", name.to_string_lossy()),
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        Ok(Self { socket: Some(Arc::new((socket, address))), ready: Arc::default() })
    }

    /// Sends `state` (newline-separated `KEY=value` lines); a failure is
    /// logged, never fatal: the load balancer runs either way.
    fn send(&self, state: &str) {
        if let Some(socket) = &self.socket {
            let (socket, address) = &**socket;
            if let Err(e) = socket.send_to_addr(state.as_bytes(), address) {
                warn!(error = %e, state, "cannot notify systemd");
            }
        }
    }

    /// `READY=1`, once: the controller serves and the data plane is attached.
    pub fn ready(&self, status: &str) {
        if !self.ready.swap(true, Ordering::SeqCst) {
            self.send(&format!("READY=1\nSTATUS={status}"));
        }
    }

    /// `RELOADING=1` (with the monotonic time `Type=notify-reload` wants),
    /// if `READY=1` was sent; `reloaded` ends it.
    pub fn reloading(&self) {
        if self.ready.load(Ordering::SeqCst) {
            self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        }
    }

    /// `READY=1` after a reload (whether the file was taken or refused: the
    /// running configuration serves either way).
    pub fn reloaded(&self) {
        if self.ready.load(Ordering::SeqCst) {
            self.send("READY=1");
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// Sends `READY=1` as soon as a view published on `views` would make
    /// `/readyz` answer 200 (see `api::view::Stats::not_ready`); returns then, or
    /// when the controller stops publishing.
    pub async fn when_ready(self, mut views: watch::Receiver<Arc<Stats>>, status: String) {
        if self.socket.is_none() {
            return;
        }
        // Said once per distinct reason, not at every view (once a second).
        let mut said = None;
        loop {
            let problem = views.borrow_and_update().not_ready();
            match problem {
                None => {
                    info!("ready: READY=1 sent to systemd");
                    self.ready(&status);
                    return;
                }
                Some(problem) if said.as_ref() != Some(&problem) => {
                    info!(%problem, "not ready yet: systemd not told READY=1");
                    said = Some(problem);
                }
                Some(_) => {}
            }
            if views.changed().await.is_err() {
                return;
            }
        }
    }
}

/// CLOCK_MONOTONIC in microseconds.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1000
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0_u8; 512];
        let n = socket.recv(&mut buf).expect("a datagram within the timeout");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn listening(socket: &UnixDatagram) {
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    }

    /// The states in order over a socket path: nothing of a reload before
    /// READY=1, READY=1 once, RELOADING=1 with its time, READY=1 again.
    #[test]
    fn states_go_to_a_socket_path_in_order() {
        let dir = std::env::temp_dir().join(format!("lb-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        listening(&socket);
        let notifier = Notifier::to(path.as_os_str()).unwrap();
        notifier.reloading();
        notifier.reloaded();
        notifier.ready("running");
        assert_eq!(receive(&socket), "READY=1\nSTATUS=running", "nothing before READY=1");
        notifier.ready("again");
        notifier.reloading();
        let reloading = receive(&socket);
        let usec: u64 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{reloading:?}"));
        assert!(usec > 0 && usec <= monotonic_usec());
        notifier.reloaded();
        assert_eq!(receive(&socket), "READY=1", "the second ready() sent nothing");
        notifier.stopping();
        assert_eq!(receive(&socket), "STOPPING=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_abstract_socket_is_reached_by_its_at_name() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("lb-notify-test-{}", std::process::id());
        let socket =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        listening(&socket);
        Notifier::to(OsStr::new(&format!("@{name}"))).unwrap().stopping();
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    /// A relative path or an empty value names no socket: refused, and the
    /// default notifier (none) sends nothing without failing.
    #[test]
    fn a_value_naming_no_socket_is_refused() {
        for bad in ["notify", "", "vsock:2:1234"] {
            let err = Notifier::to(OsStr::new(bad)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(err.to_string().contains("neither an absolute path nor @name"), "{err}");
        }
        let none = Notifier::default();
        none.ready("x");
        none.stopping();
    }
}
