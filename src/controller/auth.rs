//! Who is calling: every xDS stream and CA request carries a bearer token (a projected service
//! account token, audience `istio-ca`), reviewed before anything is served (protocols.md §5,
//! waypoint-and-k8s §3.1). The review is behind [`TokenReviewer`]: on Kubernetes it is a
//! TokenReview (`token_review.rs`); in the simulated cluster the harness issues tokens into a file and
//! [`TokenFile`] answers for it. Either way the same code decides what a caller may get.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::tls::ca::BoxFuture;
use ferry_core::identity::Identity;

/// An authenticated caller, as a TokenReview describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    pub(crate) namespace: String,
    pub(crate) service_account: String,
    /// The pod the token is bound to (`authentication.kubernetes.io/pod-name`), if any.
    pub(crate) pod: Option<String>,
    pub(crate) pod_uid: Option<String>,
}

impl Caller {
    pub(crate) fn account(&self) -> String {
        format!("{}/{}", self.namespace, self.service_account)
    }

    pub(crate) fn identity(&self, trust_domain: &str) -> Option<Identity> {
        Identity::new(trust_domain, &self.namespace, &self.service_account).ok()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum AuthError {
    #[error("no bearer token in the request's authorization metadata")]
    Missing,
    #[error("the token was not accepted: {0}")]
    Rejected(String),
    #[error("cannot review the token: {0}")]
    Unavailable(String),
}

/// Reviews a bearer token.
pub(crate) trait TokenReviewer: Send + Sync + 'static {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>>;
}

/// The bearer token of a request's metadata.
pub(crate) fn bearer(meta: &tonic::metadata::MetadataMap) -> Result<&str, AuthError> {
    let v = meta.get("authorization").and_then(|v| v.to_str().ok()).ok_or(AuthError::Missing)?;
    v.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty()).ok_or(AuthError::Missing)
}

/// The audience every token must be issued for, as istiod requires (protocols.md §5).
pub(crate) const AUDIENCE: &str = "istio-ca";

/// Tokens issued by the simulated cluster's harness: a file of
/// `token namespace/sa[/pod[/uid]] [audiences=a,b]` lines (audience `istio-ca` when none is
/// named), re-read when it changes. Stands in for the API server's TokenReview, and refuses
/// what a TokenReview with audience `istio-ca` refuses.
pub(crate) struct TokenFile {
    path: PathBuf,
    cache: std::sync::Mutex<(Option<std::time::SystemTime>, Tokens)>,
}

impl TokenFile {
    pub(crate) fn new(path: &Path) -> TokenFile {
        TokenFile { path: path.to_path_buf(), cache: Default::default() }
    }

    fn lookup(&self, token: &str) -> Result<Caller, AuthError> {
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != Some(modified) {
            let text = std::fs::read_to_string(&self.path).map_err(|e| AuthError::Unavailable(e.to_string()))?;
            *cache = (Some(modified), parse_token_file(&text));
        }
        let (caller, audiences) = cache.1.get(token).cloned().ok_or_else(|| AuthError::Rejected("unknown token".into()))?;
        if !audiences.iter().any(|a| a == AUDIENCE) {
            return Err(AuthError::Rejected(format!("the token is for audiences [{}], not {AUDIENCE}", audiences.join(", "))));
        }
        Ok(caller)
    }
}

/// Token to its caller and the audiences it was issued for.
type Tokens = HashMap<String, (Caller, Vec<String>)>;

fn parse_token_file(text: &str) -> Tokens {
    let mut out = HashMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut words = line.split_whitespace();
        let (Some(token), Some(who)) = (words.next(), words.next()) else { continue };
        let audiences = match words.next().and_then(|w| w.strip_prefix("audiences=")) {
            Some(list) => list.split(',').map(String::from).collect(),
            None => vec![AUDIENCE.to_string()],
        };
        let parts: Vec<&str> = who.split('/').collect();
        if parts.len() < 2 {
            continue;
        }
        let opt = |i: usize| parts.get(i).filter(|s| !s.is_empty()).map(|s| s.to_string());
        let caller = Caller { namespace: parts[0].to_string(), service_account: parts[1].to_string(), pod: opt(2), pod_uid: opt(3) };
        out.insert(token.to_string(), (caller, audiences));
    }
    out
}

impl TokenReviewer for TokenFile {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move { self.lookup(token) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_name_accounts_and_pods() {
        let m = parse_token_file(
            "# comment\ntok1 istio-system/ztunnel/ztunnel-abc/uid-1\ntok2 shop/frontend\nbroken\ntok3 shop/frontend audiences=api,other\n",
        );
        assert_eq!(m["tok1"].0.account(), "istio-system/ztunnel");
        assert_eq!(m["tok1"].0.pod.as_deref(), Some("ztunnel-abc"));
        assert_eq!(m["tok2"].0.pod, None);
        assert_eq!((m["tok2"].1.clone(), m["tok3"].1.clone()), (vec![AUDIENCE.to_string()], vec!["api".to_string(), "other".to_string()]));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn bearer_tokens_are_required() {
        let mut meta = tonic::metadata::MetadataMap::new();
        assert_eq!(bearer(&meta), Err(AuthError::Missing));
        meta.insert("authorization", "Basic x".parse().unwrap());
        assert_eq!(bearer(&meta), Err(AuthError::Missing));
        meta.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&meta), Ok("abc"));
    }
}
