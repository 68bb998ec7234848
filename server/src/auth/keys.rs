//! API keys: the operator's credentials. Compared in constant time and kept only as digests, so that neither a
//! timing difference nor a memory dump or a `Debug` print gives a key away.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Which configured key a caller presented (its position in the configuration): rate limits are per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub usize);

/// The configured API keys. Several at once, so that a key can be rotated: add the new one, move the clients,
/// remove the old one.
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    /// Keys as configured; surrounding blanks are trimmed and empty entries ignored (`API_KEYS="a, b,"`).
    pub fn new<I, S>(keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut digests: Vec<[u8; 32]> = Vec::new();
        for key in keys {
            let key = key.as_ref().trim();
            if key.is_empty() {
                continue;
            }
            let digest = digest(key);
            if !digests.contains(&digest) {
                digests.push(digest);
            }
        }
        Self { digests }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// The key `presented` is, if any. Every configured key is compared, with digests of equal length and no
    /// early exit, so the time taken says nothing about which bytes matched.
    pub fn find(&self, presented: &str) -> Option<KeyId> {
        let presented = digest(presented.trim());
        let mut found = None;
        for (i, key) in self.digests.iter().enumerate() {
            if bool::from(key.ct_eq(&presented)) {
                found = Some(KeyId(i));
            }
        }
        found
    }

    /// A stable name of the key `id`, safe to store: a digest of the key's digest under a label of its own, so
    /// that it is the same on every instance configured with the key (whatever its position in the list),
    /// never reveals the key, and is not the digest keys are compared by.
    pub fn identity(&self, id: KeyId) -> Option<String> {
        let key_digest = self.digests.get(id.0)?;
        let mut named = Sha256::new();
        named.update(b"agent-sessions principal\0");
        named.update(key_digest);
        Some(
            named
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.digests.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_value_and_never_printed() {
        let keys = ApiKeys::new(["alpha-key", " beta-key ", "", "alpha-key"]);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.find("alpha-key"), Some(KeyId(0)));
        assert_eq!(keys.find("beta-key"), Some(KeyId(1)));
        assert_eq!(keys.find("alpha-ke"), None);
        assert_eq!(keys.find(""), None);
        let printed = format!("{keys:?}");
        assert!(
            !printed.contains("alpha") && printed.contains('2'),
            "{printed}"
        );
        assert!(ApiKeys::new(Vec::<String>::new()).is_empty());
    }

    #[test]
    fn identities_follow_the_key_not_its_position_and_never_show_it() {
        let a = ApiKeys::new(["alpha-key", "beta-key"]);
        let b = ApiKeys::new(["beta-key", "alpha-key"]);
        let alpha = a.identity(KeyId(0)).unwrap();
        assert_eq!(b.identity(KeyId(1)), Some(alpha.clone()));
        assert_ne!(a.identity(KeyId(1)), Some(alpha.clone()));
        assert_eq!(alpha.len(), 64);
        assert!(!alpha.contains("alpha"));
        let compared: String = digest("alpha-key")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(alpha, compared);
        assert_eq!(a.identity(KeyId(2)), None);
    }
}
