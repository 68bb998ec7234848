//! Fake agent backends: HTTP/1.1 spoken by hand over TCP or TLS, so that each test controls every byte and write
//! of the answer, and a throwaway CA (rcgen) whose certificates the TLS ones present.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long any single wait may take before the test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

/// A request as the fake server saw it.
#[derive(Debug)]
pub struct Captured {
    pub method: String,
    pub path: String,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body (what reqwest sends for `.json()`).
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Captured {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut piece = [0u8; 4096];
        let n = stream.read(&mut piece).await.expect("read request");
        assert!(n > 0, "client closed before sending a whole request");
        buf.extend_from_slice(&piece[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("UTF-8 head");
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().expect("request line").split(' ');
    let method = request_line.next().expect("method").to_string();
    let path = request_line.next().expect("path").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().expect("numeric content-length"))
        .expect("request has a content-length");
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut piece = [0u8; 4096];
        let n = stream.read(&mut piece).await.expect("read body");
        assert!(n > 0, "client closed mid-body");
        body.extend_from_slice(&piece[..n]);
    }
    Captured {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).expect("request body is JSON"),
    }
}

/// A fake server for one exchange: accepts one connection, reads the request, and hands it with the socket to
/// `respond`. The handle yields `respond`'s result, so a server-side assertion failure fails the test.
pub async fn serve_once<F, Fut, T>(respond: F) -> (String, JoinHandle<T>)
where
    F: FnOnce(Captured, TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let handle = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let captured = read_request(&mut stream).await;
        respond(captured, stream).await
    });
    (base, handle)
}

/// Like [`serve_once`] over TLS with `tls`'s certificate, on 127.0.0.1; returns the port (the test picks the
/// host name its URL uses). The handle yields `Err` when the TLS handshake failed, e.g. because the client did
/// not trust the certificate.
pub async fn serve_once_tls<F, Fut, T>(
    tls: Arc<rustls::ServerConfig>,
    respond: F,
) -> (u16, JoinHandle<io::Result<T>>)
where
    F: FnOnce(Captured, TlsStream<TcpStream>) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut stream = TlsAcceptor::from(tls).accept(tcp).await?;
        let captured = read_request(&mut stream).await;
        Ok(respond(captured, stream).await)
    });
    (port, handle)
}

pub async fn respond_whole<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    body: &str,
) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(response.as_bytes())
        .await
        .expect("write response");
    stream.flush().await.expect("flush");
    // A TLS stream only sends close_notify on shutdown; without it the client may see a truncated stream.
    let _ = stream.shutdown().await;
}

/// Starts a chunked response; each `write_piece` is then one separate network write.
pub async fn start_stream<S: AsyncWrite + Unpin>(stream: &mut S, content_type: &str) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.flush().await.expect("flush");
}

/// One chunk of a chunked response, as one write; `Err` once the client has gone.
pub async fn try_write_piece<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> io::Result<()> {
    let mut framed = format!("{:x}\r\n", bytes.len()).into_bytes();
    framed.extend_from_slice(bytes);
    framed.extend_from_slice(b"\r\n");
    stream.write_all(&framed).await?;
    stream.flush().await
}

pub async fn write_piece<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    try_write_piece(stream, bytes).await.expect("write piece");
}

pub async fn end_stream<S: AsyncWrite + Unpin>(stream: &mut S) {
    stream.write_all(b"0\r\n\r\n").await.expect("write end");
    stream.flush().await.expect("flush");
    let _ = stream.shutdown().await;
}

pub async fn joined<T>(handle: JoinHandle<T>) -> T {
    tokio::time::timeout(WAIT, handle)
        .await
        .expect("fake server finishes within the wait")
        .expect("fake server assertions hold")
}

/// A CA made for one test, and server certificates it signs.
pub struct TestCa {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA's certificate, after `others` (more PEM certificates), as an `--agent-ca-file`.
    pub fn write_ca_file(&self, dir: &Path, others: &[&TestCa]) -> PathBuf {
        let path = dir.join("agent-ca.pem");
        let mut pem: String = others.iter().map(|ca| ca.pem()).collect();
        pem.push_str(&self.pem());
        std::fs::write(&path, pem).expect("write CA file");
        path
    }

    /// A TLS server config presenting a certificate for `names` (host names or IP addresses) signed by this CA,
    /// with the aws-lc-rs provider named explicitly (no process-wide default provider is installed).
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().expect("server key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .expect("server params")
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server TLS config");
        Arc::new(config)
    }
}
