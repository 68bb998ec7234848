//! DNS for agent backends: resolves a host name, then drops the addresses the egress policy refuses. Checking the
//! addresses actually connected to, rather than the name an agent was created with, is what keeps a name whose
//! answer changes later (DNS rebinding) away from link-local and metadata addresses.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::egress::EgressPolicy;

/// Turns a host name into addresses. The system resolver in production; tests substitute answers that no real
/// name here resolves to.
pub(crate) trait Lookup: Send + Sync + 'static {
    fn lookup(&self, name: String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// The operating system's resolver (`getaddrinfo` on a blocking thread, as reqwest's default does).
pub(crate) struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, name: String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((name.as_str(), 0)).await?.collect()) })
    }
}

/// reqwest's resolver for agent backends. URLs naming an IP address never reach it (they are checked by
/// `EgressPolicy::check_backend` before each request).
pub(crate) struct PolicyResolver {
    policy: Arc<EgressPolicy>,
    lookup: Arc<dyn Lookup>,
}

impl PolicyResolver {
    pub(crate) fn new(policy: Arc<EgressPolicy>, lookup: Arc<dyn Lookup>) -> Self {
        Self { policy, lookup }
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let lookup = self.lookup.clone();
        let name = name.as_str().to_string();
        Box::pin(async move {
            let resolved = lookup.lookup(name.clone()).await?;
            let allowed = policy.allowed_addresses(&name, resolved)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::agents::egress::HostPattern;

    /// Fixed answers; any other name fails as an unknown name does.
    pub(crate) struct FakeLookup(pub HashMap<&'static str, Vec<SocketAddr>>);

    impl Lookup for FakeLookup {
        fn lookup(&self, name: String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
            let answer = self.0.get(name.as_str()).cloned();
            Box::pin(async move {
                answer.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such name"))
            })
        }
    }

    fn addr(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 0)
    }

    fn resolver(policy: EgressPolicy) -> PolicyResolver {
        let answers = HashMap::from([
            (
                "rebind.test",
                vec![addr("169.254.169.254"), addr("fe80::1")],
            ),
            (
                "mixed.test",
                vec![addr("169.254.169.254"), addr("127.0.0.1")],
            ),
            ("metadata.test", vec![addr("169.254.169.254")]),
        ]);
        PolicyResolver::new(Arc::new(policy), Arc::new(FakeLookup(answers)))
    }

    async fn resolve(resolver: &PolicyResolver, name: &str) -> Result<Vec<SocketAddr>, String> {
        match resolver.resolve(name.parse().unwrap()).await {
            Ok(addrs) => Ok(addrs.collect()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[tokio::test]
    async fn refused_addresses_are_dropped_and_a_name_with_nothing_left_fails() {
        let r = resolver(EgressPolicy::default());
        assert_eq!(resolve(&r, "mixed.test").await, Ok(vec![addr("127.0.0.1")]));
        let e = resolve(&r, "rebind.test").await.unwrap_err();
        assert!(
            e.starts_with(
                "'rebind.test' resolves only to refused addresses (169.254.169.254, fe80::1)"
            ),
            "{e}"
        );
        assert!(resolve(&r, "unknown.test")
            .await
            .unwrap_err()
            .contains("no such name"));
    }

    #[tokio::test]
    async fn a_name_listed_exactly_may_resolve_to_a_metadata_address() {
        let policy = EgressPolicy {
            allowed_hosts: Some(vec![HostPattern::Name("metadata.test".into())]),
            ..EgressPolicy::default()
        };
        let r = resolver(policy);
        assert_eq!(
            resolve(&r, "metadata.test").await,
            Ok(vec![addr("169.254.169.254")])
        );
        assert!(resolve(&r, "rebind.test").await.is_err());
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback_through_the_system_resolver() {
        let r = PolicyResolver::new(Arc::new(EgressPolicy::default()), Arc::new(SystemLookup));
        let addrs = resolve(&r, "localhost").await.expect("localhost resolves");
        assert!(
            addrs
                .iter()
                .any(|a| a.ip() == std::net::Ipv4Addr::LOCALHOST),
            "{addrs:?}"
        );
    }
}
