//! The claims of a request's verified JWT, as authorization reads them (`requestPrincipals`,
//! `request.auth.*`). Produced only by the JWT verifier, from a payload whose signature held.

use serde_json::{Map, Value};

/// A verified token's principal and claims.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    principal: String,
    payload: Map<String, Value>,
}

impl Claims {
    /// A verified payload's claims; the principal is `<iss>/<sub>` (`sub` may be empty).
    pub(crate) fn from_payload(payload: Map<String, Value>) -> Claims {
        let text = |k: &str| payload.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Claims { principal: format!("{}/{}", text("iss"), text("sub")), payload }
    }

    /// A top-level claim as it is (`outputClaimToHeaders`).
    pub(crate) fn top_level(&self, name: &str) -> Option<&Value> {
        self.payload.get(name)
    }

    /// `<iss>/<sub>`.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// `aud`, a string or a list of strings.
    pub fn audiences(&self) -> Vec<&str> {
        strings(self.payload.get("aud"))
    }

    /// `azp`.
    pub fn presenter(&self) -> Option<&str> {
        self.payload.get("azp").and_then(Value::as_str)
    }

    /// A claim by path (`[a][b]` is `["a", "b"]`): its string, or the strings of a list.
    pub fn claim(&self, path: &[String]) -> Vec<&str> {
        let (first, rest) = match path.split_first() {
            Some(x) => x,
            None => return Vec::new(),
        };
        let mut v = self.payload.get(first.as_str());
        for p in rest {
            v = v.and_then(|v| v.get(p.as_str()));
        }
        strings(v)
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}
