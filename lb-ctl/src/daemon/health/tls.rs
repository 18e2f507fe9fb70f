//! The TLS side of `check = "https"`: which certificates are trusted (the
//! system's roots, or a `ca_file`), the name verified, and the client
//! configuration each prober connects with. rustls with the `ring`
//! provider; no TLS of our own.
//!
//! The system's roots are read with rustls-native-certs, from the files
//! Debian's `ca-certificates` keeps (`/etc/ssl/certs`, or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR`): the roots the host's own tools trust, updated by the
//! host's packages and extended by its administrator, rather than a copy
//! compiled into the binary (webpki-roots) that only a new build updates.
//! They are read once, on first use.
use std::{
    path::Path,
    sync::{Arc, OnceLock},
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};
use tokio_rustls::TlsConnector;

use crate::desired::model::Tls;

/// Where the system's roots are looked for, for the error that finds none.
pub const SYSTEM_ROOTS_HINT: &str = "/etc/ssl/certs, or SSL_CERT_FILE / SSL_CERT_DIR";

/// ring's provider, its key exchange X25519 first. rustls deprecates it
/// for lacking post-quantum key exchange, which protects recorded traffic
/// for years to come; a health check's GET has no such secret, and
/// aws-lc-rs would add a C and CMake build to every build of the
/// controller. Its default puts P-384 first, which ring computes with
/// generic big-number code: 1.1 ms of CPU per probe against 0.33 with
/// X25519, measured with `lb-bench-health`. P-384 stays last, for a server
/// that takes nothing else (it asks again: one more round trip).
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{default_provider, kx_group};
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| {
        let kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
        Arc::new(CryptoProvider { kx_groups, ..default_provider() })
    }))
}

/// The system's root certificates, read once (unreadable ones are skipped).
pub fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
        Arc::new(roots)
    }))
}

/// The certificates of a PEM file, as trust anchors: at least one.
pub fn read_ca_file(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("{shown:?}: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| format!("{shown:?}: not PEM certificates: {e}"))?;
        roots.add(cert).map_err(|e| format!("{shown:?}: a certificate is unusable: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{shown:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(roots)
}

/// `sni`: a DNS name (an address is verified without `sni`).
pub fn server_name(text: &str) -> Result<ServerName<'static>, &'static str> {
    match ServerName::try_from(text.to_owned()) {
        Ok(name @ ServerName::DnsName(_)) => Ok(name),
        Ok(_) => Err("is an address: leave sni out to verify the probed address"),
        Err(_) => Err("is not a DNS name"),
    }
}

/// A prober's connector for `tls` (each its own: its own session cache, so
/// that a thousand backends do not evict each other's sessions).
pub fn connector(tls: &Tls) -> Result<TlsConnector, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if tls.verify {
        let roots = match &tls.ca_file {
            Some(path) => Arc::new(read_ca_file(path)?),
            None => system_roots(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                provider().signature_verification_algorithms,
            )))
            .with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `verify = false`: any certificate, for any name, is accepted; the
/// handshake's signatures are still checked (the peer holds the key of
/// the certificate it sent), so a TLS server that is not one still fails.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A test CA and a server certificate it signed, made with the openssl
/// command in a directory of their own (removed on drop).
#[cfg(test)]
pub(crate) mod testing {
    use std::{
        path::{Path, PathBuf},
        process::Command,
    };

    pub(crate) struct TestPki {
        pub dir: PathBuf,
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect(
            "the openssl command (Debian's openssl package; cargo xtask setup installs it)",
        );
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    impl TestPki {
        /// `ca.pem`, `other-ca.pem` (a CA that signed nothing here), and
        /// `server.pem` / `server.key` for `backend.test` and 127.0.0.1,
        /// signed by `ca.pem`.
        pub(crate) fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("lb-pki-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
            for ca in ["ca", "other-ca"] {
                let (key, pem, subject) =
                    (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=lb test {ca}"));
                let mut args = vec!["req", "-x509"];
                args.extend(ec);
                args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subject]);
                openssl(&dir, &args);
            }
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend([
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=backend.test",
            ]);
            openssl(&dir, &args);
            std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:backend.test,IP:127.0.0.1\n")
                .unwrap();
            openssl(
                &dir,
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
            Self { dir }
        }

        pub(crate) fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }
    }

    impl Drop for TestPki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_is_a_dns_name() {
        assert!(server_name("www.example.net").is_ok());
        assert_eq!(
            server_name("10.77.2.11").unwrap_err(),
            "is an address: leave sni out to verify the probed address"
        );
        assert_eq!(server_name("not a name").unwrap_err(), "is not a DNS name");
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let missing = read_ca_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert_eq!(missing, "\"/nonexistent/ca.pem\": No such file or directory (os error 2)");
        let dir = std::env::temp_dir().join(format!("lb-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "just text\n").unwrap();
        let why = read_ca_file(&empty).unwrap_err();
        assert!(why.ends_with("holds no PEM certificate (-----BEGIN CERTIFICATE-----)"), "{why}");
        let bad = dir.join("bad.pem");
        std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap();
        let why = read_ca_file(&bad).unwrap_err();
        assert!(why.contains("a certificate is unusable"), "{why}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// An HTTPS server on 127.0.0.1 with `pki`'s server certificate that
    /// answers `answer` and sends the request's head back on `heads`.
    async fn https_server(
        pki: &testing::TestPki,
        answer: &'static [u8],
    ) -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use rustls::pki_types::PrivateKeyDer;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let certs: Vec<_> = CertificateDer::pem_file_iter(pki.path("server.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, heads) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut head = vec![0_u8; 2048];
                    let n = tls.read(&mut head).await.unwrap_or(0);
                    let _ = tx.send(String::from_utf8_lossy(&head[..n]).into_owned());
                    let _ = tls.write_all(answer).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (addr, heads)
    }

    async fn https_probe(
        addr: std::net::SocketAddr,
        tls: &Tls,
        expect_body: Option<&str>,
    ) -> (bool, String) {
        use crate::daemon::health::probe::{HttpProbe, Prober, TlsProbe};
        let name = tls.sni.as_deref().map(|n| server_name(n).unwrap());
        let host = tls.sni.clone().unwrap_or(addr.to_string());
        let tls = TlsProbe { connector: connector(tls).unwrap(), name };
        let prober = Prober::Http(HttpProbe::new("/", &host, 200, expect_body, Some(tls)));
        let r = prober.run(addr, std::time::Duration::from_secs(2)).await.expect("it ran");
        (r.ok, r.detail)
    }

    #[tokio::test]
    async fn https_verifies_the_certificate_and_reuses_the_http_check() {
        let pki = testing::TestPki::new("probe");
        let (addr, mut heads) =
            https_server(&pki, b"HTTP/1.0 200 OK\r\n\r\nBienvenue sur WEB1").await;
        let ca = |name: &str| Tls { sni: None, ca_file: Some(pki.path(name)), verify: true };
        // The test CA, the certificate naming 127.0.0.1: UP.
        assert_eq!(
            https_probe(addr, &ca("ca.pem"), Some("Bienvenue")).await,
            (true, "HTTP 200".into())
        );
        let head = heads.recv().await.unwrap();
        assert!(head.contains(&format!("\r\nHost: {addr}\r\n")), "{head}");
        // The body check is the HTTP check's, over TLS.
        assert_eq!(
            https_probe(addr, &ca("ca.pem"), Some("Willkommen")).await,
            (false, "body did not match /Willkommen/".into())
        );
        // With a name: sent as SNI, verified, and the request's Host.
        let named = Tls { sni: Some("backend.test".into()), ..ca("ca.pem") };
        assert_eq!(https_probe(addr, &named, None).await, (true, "HTTP 200".into()));
        heads.recv().await.unwrap();
        let head = heads.recv().await.unwrap();
        assert!(head.contains("\r\nHost: backend.test\r\n"), "{head}");
        // A CA that did not sign it: DOWN, named.
        assert_eq!(
            https_probe(addr, &ca("other-ca.pem"), None).await,
            (false, "TLS handshake failed: invalid peer certificate: UnknownIssuer".into())
        );
        // A name the certificate does not hold.
        let wrong = Tls { sni: Some("other.test".into()), ..ca("ca.pem") };
        let (ok, detail) = https_probe(addr, &wrong, None).await;
        assert!(
            !ok && detail.starts_with(
                "TLS handshake failed: invalid peer certificate: certificate not valid for name"
            ),
            "{detail}"
        );
        // The system's roots do not know the test CA.
        let system = Tls { sni: None, ca_file: None, verify: true };
        assert!(!https_probe(addr, &system, None).await.0);
        // verify = false: any certificate.
        let any = Tls { sni: Some("other.test".into()), ca_file: None, verify: false };
        assert_eq!(https_probe(addr, &any, None).await, (true, "HTTP 200".into()));
    }

    /// A plain HTTP server is no TLS server, even with verify = false.
    #[tokio::test]
    async fn a_server_without_tls_fails_the_handshake() {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").await;
            }
        });
        let any = Tls { sni: None, ca_file: None, verify: false };
        let (ok, detail) = https_probe(addr, &any, None).await;
        assert!(!ok && detail.starts_with("TLS handshake failed:"), "{detail}");
    }
}
