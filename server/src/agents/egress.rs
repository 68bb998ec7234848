//! The operator's egress policy for agent backends, in one place: which environment variables an agent may name as
//! its secret, which hosts and addresses a backend may call, how large a reply may be, and which extra CA roots
//! https backends are verified against. Agents are checked when they are created and again before each reply,
//! since a stored agent predates the configuration it runs under.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context as _};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use url::Url;

use super::response::truncate;
use crate::domain::AgentBackend;

/// Variables under this prefix may always be named as an agent's secret. The operator opts a variable in by its
/// name, so that whoever creates agents cannot have `DATABASE_URL` or a cloud credential sent to their endpoint.
pub const SECRET_ENV_PREFIX: &str = "AGENT_SECRET_";

/// Default of [`EgressPolicy::max_reply_bytes`]: 1 MiB.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 1024 * 1024;

/// The settings that lift a refusal, named in refusals so that the operator knows what to change.
const SECRET_ENV_SETTING: &str = "--agent-secret-env (AGENT_SECRET_ENV)";
const ALLOWED_HOSTS_SETTING: &str = "--agent-allowed-hosts (AGENT_ALLOWED_HOSTS)";

/// What agent backends may reach and use.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    /// Variables an openai agent's `apiKeyEnv` may name besides those starting with [`SECRET_ENV_PREFIX`].
    pub secret_env: Vec<String>,
    /// When set, the only hosts backends may call. A host listed exactly (not through `*.`) may also be
    /// link-local or a cloud metadata address: listing it is how the operator opts in.
    pub allowed_hosts: Option<Vec<HostPattern>>,
    /// Most bytes read from one backend response body; past it the reply fails.
    pub max_reply_bytes: usize,
    /// Root certificates trusted besides the platform's, for https backends behind a private CA.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        Self {
            secret_env: Vec::new(),
            allowed_hosts: None,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            extra_roots: Vec::new(),
        }
    }
}

/// Why the policy refuses an agent backend: the offending field of the create-agent body, and a message that
/// says which rule refused it. Neither carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub field: &'static str,
    pub message: String,
}

impl EgressPolicy {
    /// Checks everything about `backend` that can be checked without a network: its host, its address when the
    /// URL names one, and its secret's name. Host names are checked again after DNS resolution (see `resolve`).
    pub fn check_backend(&self, backend: &AgentBackend) -> Result<(), Refusal> {
        match backend {
            AgentBackend::Echo => Ok(()),
            AgentBackend::Webhook { url } => self.check_url("backend.url", url),
            AgentBackend::OpenAi(openai) => {
                self.check_url("backend.baseUrl", &openai.base_url)?;
                match &openai.api_key_env {
                    Some(name) => self.check_secret_env(name),
                    None => Ok(()),
                }
            }
        }
    }

    /// Whether an agent may name `name` as the variable holding its secret.
    pub fn secret_env_allowed(&self, name: &str) -> bool {
        let prefixed = name.len() > SECRET_ENV_PREFIX.len() && name.starts_with(SECRET_ENV_PREFIX);
        prefixed || self.secret_env.iter().any(|listed| listed == name)
    }

    fn check_secret_env(&self, name: &str) -> Result<(), Refusal> {
        if self.secret_env_allowed(name) {
            return Ok(());
        }
        Err(Refusal {
            field: "backend.apiKeyEnv",
            message: format!(
                "backend.apiKeyEnv '{}' is not allowed: name a variable starting with {SECRET_ENV_PREFIX}, or list \
                 it in {SECRET_ENV_SETTING}",
                truncate(name, 100)
            ),
        })
    }

    /// Checks a URL the server is to call (an agent backend's, a webhook's), `field` naming it in the refusal:
    /// its host against the allowlist, and its address when it names one. Names are checked again after DNS
    /// resolution.
    pub fn check_url(&self, field: &'static str, raw: &str) -> Result<(), Refusal> {
        let refuse = |why: String| Refusal {
            field,
            message: format!("{field} {why}"),
        };
        let url = Url::parse(raw).map_err(|_| refuse("must be an http or https URL".into()))?;
        let host = url
            .host()
            .map(Target::from)
            .ok_or_else(|| refuse("must name a host".into()))?;
        if !self.is_listed(&host) {
            return Err(refuse(format!(
                "host '{host}' is not allowed: it is not listed in {ALLOWED_HOSTS_SETTING}"
            )));
        }
        if let Target::Ip(ip) = host {
            if let Some(kind) = refused_kind(ip) {
                if !self.opted_in(&host) {
                    return Err(refuse(format!(
                        "host '{host}' is not allowed: it is a {kind} address, and those are refused unless the \
                         host is listed in {ALLOWED_HOSTS_SETTING}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// True when there is no allowlist or `host` matches an entry of it.
    fn is_listed(&self, host: &Target) -> bool {
        match &self.allowed_hosts {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(host)),
        }
    }

    /// True when the allowlist names `host` exactly, which lets it be link-local or a metadata address. A `*.`
    /// entry does not: it says which domain backends may live in, not that any name there may reach the
    /// machine's metadata service.
    fn opted_in(&self, host: &Target) -> bool {
        self.allowed_hosts
            .iter()
            .flatten()
            .any(|p| p.is_exactly(host))
    }

    /// The addresses `name` resolved to that a backend may connect to. Only an error when the answer had
    /// addresses and the policy refused all of them.
    pub(crate) fn allowed_addresses(
        &self,
        name: &str,
        resolved: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, RefusedAddresses> {
        if self.opted_in(&Target::name(name)) {
            return Ok(resolved);
        }
        let (allowed, refused): (Vec<_>, Vec<_>) = resolved
            .into_iter()
            .partition(|addr| refused_kind(addr.ip()).is_none());
        if allowed.is_empty() && !refused.is_empty() {
            return Err(RefusedAddresses {
                name: truncate(name, 100),
                addresses: refused.iter().map(|a| a.ip()).collect(),
            });
        }
        Ok(allowed)
    }
}

/// A host name that resolved only to addresses the policy refuses.
#[derive(Debug, Clone)]
pub struct RefusedAddresses {
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

impl fmt::Display for RefusedAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addresses: Vec<String> = self.addresses.iter().map(IpAddr::to_string).collect();
        write!(
            f,
            "'{}' resolves only to refused addresses ({}): link-local and cloud metadata addresses are refused \
             unless the host is listed in {ALLOWED_HOSTS_SETTING}",
            self.name,
            addresses.join(", ")
        )
    }
}

impl std::error::Error for RefusedAddresses {}

/// Why an address is refused unless its host is listed: `Some("link-local")`, `Some("cloud metadata")`, or
/// `None` for an address backends may reach. Loopback stays allowed: a local model server is the common case.
pub fn refused_kind(ip: IpAddr) -> Option<&'static str> {
    const ALIBABA_METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
    const AWS_METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
    const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match embedded_ipv4(ip) {
        IpAddr::V4(v4) if v4 == AWS_METADATA_V4 || v4 == ALIBABA_METADATA => Some("cloud metadata"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) if v6 == AWS_METADATA_V6 => Some("cloud metadata"),
        // fe80::/10 (`Ipv6Addr::is_unicast_link_local` is the same test, stable only since Rust 1.84).
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some("link-local"),
        IpAddr::V6(_) => None,
    }
}

/// The IPv4 address an IPv6 address stands for, when it is IPv4-mapped (`::ffff:a.b.c.d`) or NAT64
/// (`64:ff9b::a.b.c.d`): both reach the IPv4 address, so they must be judged as it.
fn embedded_ipv4(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    }
    ip
}

/// A backend's host as the rules compare it: a lowercase name without a trailing dot, or an address (IPv4-mapped
/// IPv6 addresses as their IPv4 address).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Name(String),
    Ip(IpAddr),
}

impl Target {
    fn name(name: &str) -> Self {
        match name.parse::<IpAddr>() {
            Ok(ip) => Target::Ip(ip.to_canonical()),
            Err(_) => Target::Name(name.trim_end_matches('.').to_ascii_lowercase()),
        }
    }
}

impl From<url::Host<&str>> for Target {
    fn from(host: url::Host<&str>) -> Self {
        match host {
            url::Host::Domain(d) => Target::name(d),
            url::Host::Ipv4(v4) => Target::Ip(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Target::Ip(IpAddr::V6(v6).to_canonical()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Name(name) => f.write_str(&truncate(name, 100)),
            Target::Ip(ip) => ip.fmt(f),
        }
    }
}

/// One entry of `--agent-allowed-hosts`: a host name, an IP address (IPv6 with or without brackets), or
/// `*.example.com`, which matches every name under `example.com` (not `example.com` itself). Case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Name(String),
    Ip(IpAddr),
    /// The domain whose subdomains match, without the `*.`.
    Subdomains(String),
}

impl HostPattern {
    fn matches(&self, host: &Target) -> bool {
        match (self, host) {
            (HostPattern::Subdomains(domain), Target::Name(name)) => name
                .strip_suffix(domain.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            _ => self.is_exactly(host),
        }
    }

    fn is_exactly(&self, host: &Target) -> bool {
        match (self, host) {
            (HostPattern::Name(listed), Target::Name(name)) => listed == name,
            (HostPattern::Ip(listed), Target::Ip(ip)) => listed == ip,
            _ => false,
        }
    }
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let entry = raw.trim();
        let invalid = || {
            format!(
                "'{entry}' is not a host: expected a host name, an IP address or *.domain, without scheme, port or \
                 path"
            )
        };
        if entry.is_empty() {
            return Err("empty host entry (is there a stray comma?)".into());
        }
        let (wildcard, host) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        if host.contains('*') {
            return Err(invalid());
        }
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return match wildcard {
                true => Err(invalid()),
                false => Ok(HostPattern::Ip(ip.to_canonical())),
            };
        }
        // Parsed as URLs parse hosts (lowercase, IDNA, numeric IPv4 forms), so that an entry and a URL naming the
        // same host compare equal.
        match url::Host::parse(host).map_err(|_| invalid())? {
            url::Host::Domain(d) => {
                let domain = d.trim_end_matches('.').to_string();
                if domain.is_empty() || domain.contains(['/', ':', '@', '?', '#']) {
                    return Err(invalid());
                }
                Ok(match wildcard {
                    true => HostPattern::Subdomains(domain),
                    false => HostPattern::Name(domain),
                })
            }
            url::Host::Ipv4(v4) if !wildcard => Ok(HostPattern::Ip(IpAddr::V4(v4))),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Name(name) => f.write_str(name),
            HostPattern::Ip(ip) => ip.fmt(f),
            HostPattern::Subdomains(domain) => write!(f, "*.{domain}"),
        }
    }
}

/// One entry of `--agent-secret-env`: an environment variable name (letters, digits, `_`, not starting with a
/// digit), so that a typo is reported at startup rather than as a refused agent later.
pub fn parse_secret_env_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name.to_string())
    } else if name.is_empty() {
        Err("empty variable name (is there a stray comma?)".into())
    } else {
        Err(format!(
            "'{name}' is not an environment variable name (letters, digits and _, not starting with a digit)"
        ))
    }
}

/// Reads `--agent-ca-file`: one or more PEM certificates. Every failure names the file and says what is wrong
/// with it, since it stops the server from starting.
pub fn read_ca_file(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let shown = path.display();
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read --agent-ca-file {shown}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("--agent-ca-file {shown} is not a valid PEM file: {e}"))?;
    if certs.is_empty() {
        bail!(
            "--agent-ca-file {shown} holds no certificate (expected PEM blocks starting with \
             -----BEGIN CERTIFICATE-----)"
        );
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| {
            anyhow!(
                "--agent-ca-file {shown}: certificate {} of {} is not a valid CA certificate: {e}",
                i + 1,
                certs.len()
            )
        })?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OpenAiBackend;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn webhook(url: &str) -> AgentBackend {
        AgentBackend::Webhook { url: url.into() }
    }

    fn openai(base_url: &str, key: Option<&str>) -> AgentBackend {
        AgentBackend::OpenAi(OpenAiBackend {
            base_url: base_url.into(),
            model: "m".into(),
            api_key_env: key.map(str::to_string),
            system_prompt: None,
        })
    }

    fn listing(hosts: &[&str]) -> EgressPolicy {
        EgressPolicy {
            allowed_hosts: Some(hosts.iter().map(|h| h.parse().unwrap()).collect()),
            ..EgressPolicy::default()
        }
    }

    #[test]
    fn link_local_and_metadata_addresses_are_refused_loopback_and_private_are_not() {
        for (addr, kind) in [
            ("169.254.169.254", "cloud metadata"),
            ("169.254.0.1", "link-local"),
            ("169.254.255.255", "link-local"),
            ("100.100.100.200", "cloud metadata"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("fd00:ec2::254", "cloud metadata"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("::ffff:169.254.1.1", "link-local"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata"),
        ] {
            assert_eq!(refused_kind(ip(addr)), Some(kind), "{addr}");
        }
        for addr in [
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "192.168.1.1",
            "100.100.100.201",
            "169.253.255.255",
            "169.255.0.1",
            "fec0::1",
            "fd00:ec2::253",
            "8.8.8.8",
            "2001:db8::1",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(refused_kind(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn backends_at_refused_addresses_are_refused_with_the_field_and_the_rule() {
        let policy = EgressPolicy::default();
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:169.254.169.254]/",
            "http://100.100.100.200/",
            // URLs normalize other IPv4 notations, so these cannot sneak past.
            "http://0xa9fea9fe/",
            "http://169.254.43518/",
        ] {
            let refusal = policy.check_backend(&webhook(url)).unwrap_err();
            assert_eq!(refusal.field, "backend.url", "{url}");
            assert!(
                refusal.message.contains("--agent-allowed-hosts"),
                "{url}: {refusal}"
            );
        }
        let refusal = policy
            .check_backend(&openai("http://169.254.169.254/v1", None))
            .unwrap_err();
        assert_eq!(refusal.field, "backend.baseUrl");
        assert_eq!(
            refusal.message,
            "backend.baseUrl host '169.254.169.254' is not allowed: it is a cloud metadata address, and those are \
             refused unless the host is listed in --agent-allowed-hosts (AGENT_ALLOWED_HOSTS)"
        );
        for url in [
            "http://127.0.0.1:11434/v1",
            "http://localhost:11434/v1",
            "http://[::1]:8080/",
            "https://api.openai.com/v1",
            "http://10.1.2.3/hook",
        ] {
            assert_eq!(policy.check_backend(&webhook(url)), Ok(()), "{url}");
        }
    }

    #[test]
    fn an_exactly_listed_host_may_be_link_local() {
        let policy = listing(&["169.254.169.254", "[fe80::1]", "fd00:ec2::254"]);
        for url in [
            "http://169.254.169.254/latest/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            assert_eq!(policy.check_backend(&webhook(url)), Ok(()), "{url}");
        }
        assert!(policy
            .check_backend(&webhook("http://169.254.0.1/"))
            .is_err());
    }

    #[test]
    fn with_an_allowlist_only_listed_hosts_pass() {
        let policy = listing(&["LocalHost", "*.Example.com", "10.0.0.7"]);
        for url in [
            "http://localhost:11434/v1",
            "http://LOCALHOST./v1",
            "https://a.example.com/hook",
            "https://a.b.example.com/hook",
            "http://10.0.0.7/",
        ] {
            assert_eq!(policy.check_backend(&webhook(url)), Ok(()), "{url}");
        }
        for url in [
            "https://example.com/",
            "https://evilexample.com/",
            "https://example.com.evil.net/",
            "http://127.0.0.1/",
            "http://10.0.0.8/",
        ] {
            let refusal = policy.check_backend(&webhook(url)).unwrap_err();
            assert!(
                refusal
                    .message
                    .contains("is not listed in --agent-allowed-hosts"),
                "{url}: {refusal}"
            );
        }
        assert_eq!(
            policy
                .check_backend(&webhook("https://evil.net/x?token=secret"))
                .unwrap_err()
                .message,
            "backend.url host 'evil.net' is not allowed: it is not listed in --agent-allowed-hosts \
             (AGENT_ALLOWED_HOSTS)"
        );
    }

    #[test]
    fn secret_names_must_carry_the_prefix_or_be_listed() {
        let policy = EgressPolicy {
            secret_env: vec!["OPENAI_API_KEY".into()],
            ..EgressPolicy::default()
        };
        let local = "http://127.0.0.1:1/v1";
        for allowed in ["AGENT_SECRET_OPENAI", "AGENT_SECRET_X", "OPENAI_API_KEY"] {
            assert_eq!(
                policy.check_backend(&openai(local, Some(allowed))),
                Ok(()),
                "{allowed}"
            );
        }
        assert_eq!(policy.check_backend(&openai(local, None)), Ok(()));
        for refused in [
            "DATABASE_URL",
            "AGENT_SECRET_",
            "agent_secret_x",
            "AWS_SECRET_ACCESS_KEY",
            "OPENAI_API_KEY_2",
        ] {
            let refusal = policy
                .check_backend(&openai(local, Some(refused)))
                .unwrap_err();
            assert_eq!(refusal.field, "backend.apiKeyEnv");
        }
        assert_eq!(
            EgressPolicy::default()
                .check_backend(&openai(local, Some("DATABASE_URL")))
                .unwrap_err()
                .message,
            "backend.apiKeyEnv 'DATABASE_URL' is not allowed: name a variable starting with AGENT_SECRET_, or list \
             it in --agent-secret-env (AGENT_SECRET_ENV)"
        );
    }

    #[test]
    fn host_patterns_parse_and_reject_what_is_not_a_host() {
        assert_eq!(
            "Example.COM".parse(),
            Ok(HostPattern::Name("example.com".into()))
        );
        assert_eq!(
            " *.example.com. ".parse(),
            Ok(HostPattern::Subdomains("example.com".into()))
        );
        assert_eq!("[fe80::1]".parse(), Ok(HostPattern::Ip(ip("fe80::1"))));
        assert_eq!("fe80::1".parse(), Ok(HostPattern::Ip(ip("fe80::1"))));
        assert_eq!(
            "::ffff:169.254.169.254".parse(),
            Ok(HostPattern::Ip(ip("169.254.169.254")))
        );
        assert_eq!(
            "0xa9fea9fe".parse(),
            Ok(HostPattern::Ip(ip("169.254.169.254")))
        );
        for bad in [
            "",
            " ",
            "*",
            "*.",
            "a.*.com",
            "*.10.0.0.1",
            "http://example.com",
            "example.com:8080",
            "example.com/path",
            "user@example.com",
        ] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad:?}");
        }
        for entry in ["example.com", "*.example.com", "10.0.0.1", "fe80::1"] {
            assert_eq!(entry.parse::<HostPattern>().unwrap().to_string(), entry);
        }
    }

    #[test]
    fn resolved_addresses_are_filtered_unless_the_name_is_listed_exactly() {
        let sock = |s: &str| SocketAddr::new(ip(s), 80);
        let policy = EgressPolicy::default();
        assert_eq!(
            policy
                .allowed_addresses(
                    "mixed.test",
                    vec![sock("169.254.169.254"), sock("127.0.0.1")]
                )
                .unwrap(),
            vec![sock("127.0.0.1")]
        );
        let refused = policy
            .allowed_addresses(
                "rebind.test",
                vec![sock("169.254.169.254"), sock("fe80::1")],
            )
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "'rebind.test' resolves only to refused addresses (169.254.169.254, fe80::1): link-local and cloud \
             metadata addresses are refused unless the host is listed in --agent-allowed-hosts \
             (AGENT_ALLOWED_HOSTS)"
        );
        assert!(policy
            .allowed_addresses("empty.test", Vec::new())
            .unwrap()
            .is_empty());

        let listed = listing(&["metadata.google.internal", "*.corp.test"]);
        assert_eq!(
            listed
                .allowed_addresses("Metadata.Google.Internal.", vec![sock("169.254.169.254")])
                .unwrap(),
            vec![sock("169.254.169.254")]
        );
        assert!(listed
            .allowed_addresses("a.corp.test", vec![sock("169.254.169.254")])
            .is_err());
    }

    #[test]
    fn secret_env_names_are_checked_when_listed() {
        assert_eq!(
            parse_secret_env_name(" OPENAI_API_KEY "),
            Ok("OPENAI_API_KEY".into())
        );
        assert_eq!(parse_secret_env_name("_X1"), Ok("_X1".into()));
        for bad in ["", "1X", "A-B", "A B", "A=B"] {
            assert!(parse_secret_env_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ca_file_failures_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = read_ca_file(&missing).unwrap_err().to_string();
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = read_ca_file(&empty).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no certificate"),
            "{e}"
        );

        let truncated = dir.path().join("truncated.pem");
        std::fs::write(&truncated, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let e = read_ca_file(&truncated).unwrap_err().to_string();
        assert!(
            e.contains("truncated.pem") && e.contains("not a valid PEM"),
            "{e}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = read_ca_file(&garbage).unwrap_err().to_string();
        assert!(
            e.contains("garbage.pem") && e.contains("certificate 1 of 1"),
            "{e}"
        );
    }
}
