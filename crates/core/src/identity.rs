//! SPIFFE workload identities (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`).
//!
//! Parsing is strict on purpose: exactly five path segments, no percent-encoding, no NUL or
//! control bytes, no `.`/`..` segments, lower-case trust domain. Anything else is rejected, so
//! the identity that is verified in TLS is byte-for-byte the identity that is authorized.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// SPIFFE IDs longer than this are invalid (SPIFFE ID specification §2.3).
const MAX_LEN: usize = 2048;
/// The trust domain used when a workload does not name one (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The service account used when a workload does not name one (Kubernetes' default).
pub(crate) const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// A workload identity in Istio's SPIFFE form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("identity {0:?} does not start with spiffe://")]
    Scheme(String),
    #[error("identity is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("identity {0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    Shape(String),
    #[error("identity {id:?}: invalid {part} {value:?}")]
    Segment { id: String, part: &'static str, value: String },
}

impl Identity {
    /// Builds an identity from its parts, validating each exactly as the parser does.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, IdentityError> {
        let id = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        check_trust_domain(&id, trust_domain)?;
        check_segment(&id, "namespace", namespace)?;
        check_segment(&id, "service account", service_account)?;
        Ok(Identity {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The identity without the `spiffe://` prefix, the form Istio's policies match principals on.
    pub(crate) fn principal(&self) -> String {
        format!("{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl Serialize for Identity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_LEN {
            return Err(IdentityError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| IdentityError::Scheme(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => {
                check_trust_domain(s, td)?;
                check_segment(s, "namespace", ns)?;
                check_segment(s, "service account", sa)?;
                Ok(Identity { trust_domain: td.to_string(), namespace: ns.to_string(), service_account: sa.to_string() })
            }
            _ => Err(IdentityError::Shape(s.to_string())),
        }
    }
}

fn check_trust_domain(id: &str, td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty() && td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Segment { id: id.to_string(), part: "trust domain", value: td.to_string() })
    }
}

fn check_segment(id: &str, part: &'static str, v: &str) -> Result<(), IdentityError> {
    let ok = !v.is_empty() && v != "." && v != ".." && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Segment { id: id.to_string(), part, value: v.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_canonical_form() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/client".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "client");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/client");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/client");
    }

    #[test]
    fn rejects_everything_else() {
        let bad = [
            "",
            "spiffe://",
            "http://cluster.local/ns/default/sa/client",
            "SPIFFE://cluster.local/ns/default/sa/client",
            "spiffe://cluster.local/ns/default/sa/",
            "spiffe://cluster.local/ns/default/sa/client/",
            "spiffe://cluster.local/ns/default/sa/client/extra",
            "spiffe://cluster.local/ns/default/x/client",
            "spiffe://cluster.local/sa/default/ns/client",
            "spiffe://cluster.local//ns/default/sa/client",
            "spiffe://Cluster.Local/ns/default/sa/client",
            "spiffe://cluster.local/ns/../sa/client",
            "spiffe://cluster.local/ns/./sa/client",
            "spiffe://cluster.local/ns/def%61ult/sa/client",
            "spiffe://cluster.local/ns/default/sa/cli\0ent",
            "spiffe://cluster.local\0.evil/ns/default/sa/client",
            "spiffe://cluster.local/ns/default/sa/client?x=1",
            "spiffe://cluster.local/ns/default/sa/client#frag",
            "spiffe://user@cluster.local/ns/default/sa/client",
            "spiffe://cluster.local:443/ns/default/sa/client",
            " spiffe://cluster.local/ns/default/sa/client",
            "spiffe://cluster.local/ns/default/sa/client ",
        ];
        for b in bad {
            assert!(b.parse::<Identity>().is_err(), "{b:?} must be rejected");
        }
        let long = format!("spiffe://cluster.local/ns/default/sa/{}", "a".repeat(MAX_LEN));
        assert_eq!(long.parse::<Identity>(), Err(IdentityError::TooLong));
    }

    #[test]
    fn new_validates_like_parse() {
        assert!(Identity::new("cluster.local", "ns", "sa").is_ok());
        assert!(Identity::new("", "ns", "sa").is_err());
        assert!(Identity::new("td", "a/b", "sa").is_err());
        assert!(Identity::new("td", "ns", "").is_err());
    }

    #[test]
    fn equality_is_exact() {
        let a: Identity = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let b: Identity = "spiffe://td/ns/a/sa/bb".parse().unwrap();
        let c: Identity = "spiffe://td2/ns/a/sa/b".parse().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, Identity::new("td", "a", "b").unwrap());
    }
}
