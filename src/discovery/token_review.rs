//! Workload identity: a subscriber presents its pod's projected ServiceAccount token, and the
//! API server's TokenReview says whose it is. The review's `extra` carries the pod name
//! (`authentication.kubernetes.io/pod-name`, set for projected tokens bound to a pod) and its
//! username the namespace (`system:serviceaccount:<namespace>:<name>`), so the subscriber's
//! identity no longer depends on the address its stream comes from (a mesh sidecar or a NAT
//! changes that). RBAC: `create` on `tokenreviews` (cluster-scoped).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

use super::TokenCheck;

/// How long a review may take before the stream is refused (it holds a stream slot meanwhile).
const REVIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The `extra` key of a review that names the token's pod.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";

/// Reviews tokens through the Kubernetes API.
#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
    audience: Option<String>,
}

impl TokenReviewer {
    pub fn new(client: Client, audience: Option<String>) -> Self {
        Self { client, audience }
    }

    /// Whose token `token` is.
    pub async fn review(&self, token: &str) -> TokenCheck {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: self.audience.clone().map(|a| vec![a]) },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        match tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review)).await {
            Ok(Ok(answer)) => verdict(&answer, self.audience.as_deref()),
            Ok(Err(error)) => TokenCheck::Refused(format!("the TokenReview could not be made ({error}); retry later")),
            Err(_) => TokenCheck::Refused("the TokenReview did not answer in time; retry later".into()),
        }
    }
}

/// What a review answer says about the token, which must be valid for `audience`: an
/// authenticator that ignores the audiences asked for (a webhook) is not trusted to have
/// checked it.
pub fn verdict(answer: &TokenReview, audience: Option<&str>) -> TokenCheck {
    let Some(status) = &answer.status else {
        return TokenCheck::Refused("the TokenReview came back without a status".into());
    };
    if status.authenticated != Some(true) {
        let why = status.error.clone().filter(|e| !e.is_empty()).unwrap_or_else(|| "invalid or expired".into());
        return TokenCheck::Refused(format!("the token is not authenticated: {why}"));
    }
    if let Some(audience) = audience {
        if !status.audiences.as_ref().is_some_and(|a| a.iter().any(|x| x == audience)) {
            return TokenCheck::Refused(format!("the token is not valid for audience {audience}"));
        }
    }
    let user = status.user.clone().unwrap_or_default();
    let namespace = user
        .username
        .as_deref()
        .and_then(|u| u.strip_prefix("system:serviceaccount:"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(namespace, _)| namespace.to_string());
    let pod = user.extra.as_ref().and_then(|e| e.get(POD_NAME)).and_then(|v| v.first()).cloned();
    match (namespace, pod) {
        (Some(namespace), Some(name)) => TokenCheck::Pod { namespace, name },
        _ => TokenCheck::Refused(format!(
            "the token is {}'s but names no pod: subscribers must send their pod's projected ServiceAccount token",
            user.username.unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn answer(authenticated: bool, username: &str, pod: Option<&str>) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(vec!["fanout".into()]),
                user: Some(UserInfo {
                    username: Some(username.into()),
                    extra: pod.map(|p| [(POD_NAME.to_string(), vec![p.to_string()])].into_iter().collect()),
                    ..UserInfo::default()
                }),
                ..TokenReviewStatus::default()
            }),
            ..TokenReview::default()
        }
    }

    #[test]
    fn the_review_names_the_pod_and_its_namespace() {
        assert_eq!(
            verdict(&answer(true, "system:serviceaccount:shop:orders", Some("orders-7d9f")), Some("fanout")),
            TokenCheck::Pod { namespace: "shop".into(), name: "orders-7d9f".into() }
        );
        assert!(
            matches!(verdict(&answer(false, "", None), Some("fanout")), TokenCheck::Refused(m) if m.contains("not authenticated"))
        );
        assert!(matches!(
            verdict(&answer(true, "system:serviceaccount:shop:orders", None), Some("fanout")),
            TokenCheck::Refused(m) if m.contains("names no pod")
        ));
        assert!(
            matches!(verdict(&answer(true, "alice", Some("x")), Some("fanout")), TokenCheck::Refused(_)),
            "a user's token"
        );
        let elsewhere = verdict(&answer(true, "system:serviceaccount:shop:orders", Some("p")), Some("other"));
        assert!(
            matches!(elsewhere, TokenCheck::Refused(m) if m.contains("audience other")),
            "another audience's token"
        );
    }
}
