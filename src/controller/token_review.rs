//! [`TokenReviewer`] on the Kubernetes API: each bearer token is POSTed as an
//! `authentication.k8s.io/v1` TokenReview with audiences `["istio-ca"]`, as istiod does.
//!
//! Invariants: a caller is accepted only when the API server says the token is authenticated,
//! for the `istio-ca` audience (checked in the answer too: an API server that ignored the
//! requested audiences must not widen them), and as a service account
//! (`system:serviceaccount:<namespace>:<name>`); the pod a token is bound to comes from the
//! answer's `authentication.kubernetes.io/pod-name`/`pod-uid` extras, never from the caller.
//! An API server that cannot be asked is `Unavailable`, never an acceptance.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::Api;

use super::auth::{AuthError, Caller, TokenReviewer, AUDIENCE};
use crate::tls::ca::BoxFuture;

/// TokenReview against the Kubernetes API.
pub(crate) struct KubeTokenReviewer {
    api: Api<TokenReview>,
}

impl KubeTokenReviewer {
    pub(crate) fn new(client: kube::Client) -> KubeTokenReviewer {
        KubeTokenReviewer { api: Api::all(client) }
    }

    async fn ask(&self, token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![AUDIENCE.to_string()]) },
            ..Default::default()
        };
        let answer = self.api.create(&PostParams::default(), &review).await.map_err(|e| AuthError::Unavailable(e.to_string()))?;
        caller(answer.status.unwrap_or_default())
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(self.ask(token))
    }
}

/// The caller a TokenReview's answer describes, or why it is refused.
fn caller(status: TokenReviewStatus) -> Result<Caller, AuthError> {
    if status.authenticated != Some(true) {
        let why = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "not authenticated".into());
        return Err(AuthError::Rejected(why));
    }
    let audiences = status.audiences.unwrap_or_default();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(AuthError::Rejected(format!("the token is for audiences [{}], not {AUDIENCE}", audiences.join(", "))));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = username.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) else {
        return Err(AuthError::Rejected(format!("{username:?} is not a service account")));
    };
    let extra = user.extra.unwrap_or_default();
    let one = |k: &str| extra.get(k).and_then(|v| v.first()).filter(|s| !s.is_empty()).cloned();
    Ok(Caller {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        pod: one("authentication.kubernetes.io/pod-name"),
        pod_uid: one("authentication.kubernetes.io/pod-uid"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn answer(authenticated: bool, username: &str, audiences: &[&str]) -> TokenReviewStatus {
        let extra = [("authentication.kubernetes.io/pod-name".to_string(), vec!["ztunnel-a".to_string()])].into_iter().collect();
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo { username: Some(username.into()), extra: Some(extra), ..Default::default() }),
            error: None,
        }
    }

    #[test]
    fn only_authenticated_service_accounts_for_istio_ca() {
        let ok = caller(answer(true, "system:serviceaccount:istio-system:ztunnel", &["istio-ca"])).unwrap();
        assert_eq!((ok.account(), ok.pod.as_deref(), ok.pod_uid), ("istio-system/ztunnel".into(), Some("ztunnel-a"), None));
        let cases = [
            (answer(false, "system:serviceaccount:istio-system:ztunnel", &["istio-ca"]), "not authenticated"),
            (answer(true, "system:serviceaccount:istio-system:ztunnel", &["api"]), "audiences [api], not istio-ca"),
            (answer(true, "system:serviceaccount:istio-system:ztunnel", &[]), "not istio-ca"),
            (answer(true, "alice", &["istio-ca"]), "\"alice\" is not a service account"),
            (answer(true, "system:serviceaccount:nocolon", &["istio-ca"]), "is not a service account"),
            (TokenReviewStatus::default(), "not authenticated"),
        ];
        for (status, want) in cases {
            let e = caller(status).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
    }
}
