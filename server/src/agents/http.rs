//! The HTTP client all agent backends share: https verified against the platform's roots plus `--agent-ca-file`,
//! DNS answers filtered by the egress policy, no redirects, no proxy, and a connect timeout.

use std::sync::Arc;
use std::time::Duration;

use super::egress::EgressPolicy;
use super::resolve::{Lookup, PolicyResolver, SystemLookup};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared client, and whether it can verify any server certificate at all.
pub(crate) struct AgentHttp {
    pub client: reqwest::Client,
    /// False on a machine without CA certificates and without `--agent-ca-file`: https backends then fail
    /// before connecting, with a message that says what to set, instead of with a certificate error.
    pub has_roots: bool,
}

impl AgentHttp {
    pub(crate) fn new(policy: Arc<EgressPolicy>) -> Self {
        Self::with_lookup(policy, Arc::new(SystemLookup))
    }

    /// Does not give up when the platform's roots cannot be loaded: on a machine without CA certificates the
    /// platform verifier refuses to build, and that must not stop a server whose agents may all be plain http.
    pub(crate) fn with_lookup(policy: Arc<EgressPolicy>, lookup: Arc<dyn Lookup>) -> Self {
        let extra = || -> Vec<reqwest::Certificate> {
            policy
                .extra_roots
                .iter()
                .filter_map(|der| reqwest::Certificate::from_der(der).ok())
                .collect()
        };
        let builder = || base(policy.clone(), lookup.clone());
        match builder().tls_certs_merge(extra()).build() {
            Ok(client) => Self {
                client,
                has_roots: true,
            },
            Err(platform) => {
                let has_roots = !policy.extra_roots.is_empty();
                tracing::warn!(
                    error = %innermost(&platform),
                    "the platform's CA certificates could not be loaded; https agent backends are verified against \
                     --agent-ca-file only{}",
                    if has_roots { "" } else { " (not set: they will fail)" }
                );
                // Only the CA file's roots (maybe none): the same verification, just fewer trusted issuers. The last
                // resort reads no file and parses nothing, so it cannot fail.
                let client = builder()
                    .tls_certs_only(extra())
                    .build()
                    .or_else(|_| builder().tls_certs_only(Vec::new()).build())
                    .expect("an HTTP client with an empty root store builds");
                Self { client, has_roots }
            }
        }
    }
}

/// The innermost cause of a client build error ("No CA certificates were loaded from the system"); the outer
/// ones only say that building failed.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn base(policy: Arc<EgressPolicy>, lookup: Arc<dyn Lookup>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        // A redirected POST would be replayed as a GET, and a redirect could lead anywhere: an agent endpoint that
        // moved is an error.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve backend names itself, out of the egress policy's reach.
        .no_proxy()
        .dns_resolver(Arc::new(PolicyResolver::new(policy, lookup)))
}

#[cfg(test)]
mod tests {
    use crate::agents::response::describe;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::agents::resolve::tests::FakeLookup;
    use crate::agents::Backends;
    use crate::domain::AgentBackend;

    /// Answers every connection with a fixed 200.
    async fn ok_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn host_names_are_resolved_through_the_policy() {
        let server = ok_server().await;
        let lookup = FakeLookup(HashMap::from([
            ("wired.test", vec![SocketAddr::new(server.ip(), 0)]),
            (
                "rebind.test",
                vec![SocketAddr::new("169.254.169.254".parse().unwrap(), 0)],
            ),
        ]));
        let http = AgentHttp::with_lookup(Arc::new(EgressPolicy::default()), Arc::new(lookup));
        // Only the fake lookup knows this name: an answer proves the client resolves through it.
        let answer = http
            .client
            .get(format!("http://wired.test:{}/", server.port()))
            .send()
            .await
            .expect("wired.test resolves through the policy resolver");
        assert_eq!(answer.text().await.unwrap(), "ok");

        let e = http
            .client
            .get(format!("http://rebind.test:{}/", server.port()))
            .send()
            .await
            .unwrap_err();
        let described = describe(e);
        assert!(
            described.starts_with("could not connect: dns error: ")
                && described
                    .contains("'rebind.test' resolves only to refused addresses (169.254.169.254)"),
            "{described}"
        );

        let e = http
            .client
            .get(format!("http://unknown.test:{}/", server.port()))
            .send()
            .await
            .unwrap_err();
        assert_eq!(describe(e), "could not connect: dns error: no such name");
    }

    fn test_ca() -> rustls::pki_types::CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().clone()
    }

    /// Set in the child process of the test below, which runs with no system CA certificates.
    const NO_SYSTEM_ROOTS: &str = "AGENT_SESSIONS_TEST_WITHOUT_SYSTEM_ROOTS";

    /// rustls-platform-verifier refuses to build on a machine without CA certificates; that must neither panic nor
    /// keep the server from starting. The certificates are hidden by pointing `SSL_CERT_FILE` and `SSL_CERT_DIR`
    /// at nothing, which only works in a process of its own: the test runs itself again as a child.
    #[test]
    fn without_system_certificates_the_client_still_builds() {
        if std::env::var_os(NO_SYSTEM_ROOTS).is_none() {
            let module = module_path!().split_once("::").unwrap().1;
            let name = format!("{module}::without_system_certificates_the_client_still_builds");
            let empty = tempfile::tempdir().unwrap();
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
                .env(NO_SYSTEM_ROOTS, "1")
                .env("SSL_CERT_FILE", empty.path().join("none.pem"))
                .env("SSL_CERT_DIR", empty.path())
                .output()
                .unwrap();
            let output = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{output}");
            assert!(
                output.contains("1 passed"),
                "the child ran the test: {output}"
            );
            return;
        }
        let bare = AgentHttp::new(Arc::new(EgressPolicy::default()));
        assert!(!bare.has_roots);
        let with_ca = AgentHttp::new(Arc::new(EgressPolicy {
            extra_roots: vec![test_ca()],
            ..EgressPolicy::default()
        }));
        assert!(with_ca.has_roots);

        let backends = Backends::new(EgressPolicy::default());
        let https = AgentBackend::Webhook {
            url: "https://localhost:1/hook".into(),
        };
        let e = backends.for_agent(&https).err().expect("https is refused");
        assert!(e.to_string().contains("--agent-ca-file"), "{e}");
        let http = AgentBackend::Webhook {
            url: "http://localhost:1/hook".into(),
        };
        assert!(backends.for_agent(&http).is_ok());
    }
}
