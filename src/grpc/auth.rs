//! Bearer-token auth for the admin API, as a tower layer on the admin server: every call that
//! changes something needs `authorization: Bearer <token>`, the token being the content of
//! `server.admin_token_file` (a mounted Secret), or an mTLS client certificate that names one
//! of `server.admin_allowed_identities`; read-only calls are open unless configured otherwise. The token is compared in constant time, re-read when its file changes (a rotated
//! Secret needs no restart) and never logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::future::{Either, Ready};
use parking_lot::Mutex;
use rustls::pki_types::{CertificateDer, ServerName};
use subtle::ConstantTimeEq;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use tower::{Layer, Service};
use tracing::warn;

/// Methods of the admin API that change nothing; every other method of a `fanout.admin.`
/// service needs the token, so a method added later is guarded unless listed here.
const READ_ONLY: &[&str] = &[
    "/fanout.admin.v1.Admin/Status",
    "/fanout.admin.v1.Admin/GetReplay",
    "/fanout.admin.v1.Admin/ListReplays",
    "/fanout.admin.v1.Admin/GetRollout",
    "/fanout.admin.v1.DeadLetters/List",
];
/// The admin API's services; reflection and health on the admin port stay open.
const GUARDED_PREFIX: &str = "/fanout.admin.";

/// The admin port's token check.
pub struct AdminAuth {
    token_file: Option<PathBuf>,
    open_reads: bool,
    /// DNS names of client certificates (verified against `server.admin_tls.client_ca_file`
    /// during the handshake) that may make changing calls without the token.
    allowed_identities: Vec<String>,
    /// The token as last read, with its file's modification time.
    cached: Mutex<Option<(Option<SystemTime>, Vec<u8>)>>,
}

impl AdminAuth {
    pub fn new(token_file: Option<PathBuf>, open_reads: bool) -> Self {
        Self { token_file, open_reads, allowed_identities: Vec::new(), cached: Mutex::new(None) }
    }

    /// Client certificates naming one of `names` (a DNS subject alternative name) may make
    /// changing calls without the token.
    pub fn with_allowed_identities(mut self, names: Vec<String>) -> Self {
        self.allowed_identities = names;
        self
    }

    /// Whether a call to `path` with these headers, over a connection whose client presented
    /// `peer_certs` (mTLS), may go on; the refusal says what to fix.
    pub fn check(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer_certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<(), Status> {
        if !path.starts_with(GUARDED_PREFIX) || (self.open_reads && READ_ONLY.contains(&path)) {
            return Ok(());
        }
        if let Some(leaf) = peer_certs.and_then(<[_]>::first) {
            if identity_allowed(leaf, &self.allowed_identities) {
                return Ok(());
            }
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated(format!(
                "{path} needs `authorization: Bearer <token>` metadata, the token in the gateway's \
                 server.admin_token_file (fanoutctl: --token-file or FANOUT_ADMIN_TOKEN)"
            )));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("the authorization metadata must be `Bearer <token>`"))?;
        let expected = self.token()?;
        if expected.is_empty() || !bool::from(presented.as_bytes().ct_eq(&expected)) {
            warn!(method = path, "admin call refused: wrong bearer token");
            return Err(Status::permission_denied(
                "the bearer token does not match this gateway's admin token (server.admin_token_file)",
            ));
        }
        Ok(())
    }

    /// The configured token, read again when its file changed.
    fn token(&self) -> Result<Vec<u8>, Status> {
        let Some(path) = &self.token_file else {
            return Err(Status::permission_denied(
                "this gateway has no admin token (server.admin_token_file is unset): calls that change it are disabled",
            ));
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut cached = self.cached.lock();
        if let Some((at, token)) = cached.as_ref() {
            if *at == modified && modified.is_some() {
                return Ok(token.clone());
            }
        }
        match std::fs::read(path) {
            Ok(bytes) => {
                let token = trim(&bytes).to_vec();
                *cached = Some((modified, token.clone()));
                Ok(token)
            }
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot read the admin token file; changing calls are refused");
                Err(Status::unavailable(format!(
                    "the gateway cannot read its admin token file {}: {error}",
                    path.display()
                )))
            }
        }
    }
}

/// Whether a client certificate (its chain already verified in the TLS handshake) names one of
/// `allowed` as a DNS subject alternative name, exactly: a wildcard name (`*.example`) stands
/// for no identity on the list.
fn identity_allowed(leaf: &CertificateDer<'static>, allowed: &[String]) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else { return false };
    allowed.iter().any(|name| {
        let valid =
            ServerName::try_from(name.as_str()).is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok());
        valid && cert.valid_dns_names().any(|d| d.eq_ignore_ascii_case(name))
    })
}

/// The file's content without surrounding whitespace (a Secret written with `echo` ends with
/// a newline).
fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// The tower layer that puts [`AdminAuth`] in front of the admin server's services.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<AdminAuth>,
}

impl AuthLayer {
    pub fn new(auth: AdminAuth) -> Self {
        Self { auth: Arc::new(auth) }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated { inner, auth: self.auth.clone() }
    }
}

/// A service behind [`AuthLayer`]: refused calls are answered with their status at once and
/// never reach it.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Arc<AdminAuth>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Authenticated<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The client certificate of an mTLS connection, as tonic files it on each request.
        let peer = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.peer_certs());
        match self.auth.check(request.uri().path(), request.headers(), peer.as_deref().map(Vec::as_slice)) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(status) => Either::Right(futures::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = "/fanout.admin.v1.Admin/SetWeights";
    const STATUS: &str = "/fanout.admin.v1.Admin/Status";

    fn bearer(token: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
        h
    }

    fn with_token(text: &str, open_reads: bool) -> (tempfile::TempDir, AdminAuth) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, text).expect("write");
        (dir, AdminAuth::new(Some(path), open_reads))
    }

    #[test]
    fn changing_calls_need_the_token_and_reads_are_open() {
        let (_dir, auth) = with_token("s3cret\n", true);
        let none = http::HeaderMap::new();
        assert_eq!(auth.check(SET, &none, None).expect_err("no token").code(), tonic::Code::Unauthenticated);
        assert_eq!(auth.check(SET, &bearer("guess"), None).expect_err("wrong").code(), tonic::Code::PermissionDenied);
        assert_eq!(
            auth.check(SET, &bearer("s3cre"), None).expect_err("a prefix").code(),
            tonic::Code::PermissionDenied
        );
        auth.check(SET, &bearer("s3cret"), None).expect("right token, trailing newline of the file ignored");
        auth.check(STATUS, &none, None).expect("reads are open");
        auth.check("/grpc.health.v1.Health/Check", &none, None).expect("health is open");
        auth.check("/fanout.admin.v1.Admin/SomethingNew", &bearer("s3cret"), None).expect("guarded, allowed");
        assert!(
            auth.check("/fanout.admin.v1.Admin/SomethingNew", &none, None).is_err(),
            "unlisted methods are guarded"
        );
        let mut basic = http::HeaderMap::new();
        basic.insert(http::header::AUTHORIZATION, "Basic czNjcmV0".parse().expect("header"));
        assert_eq!(auth.check(SET, &basic, None).expect_err("not bearer").code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn an_allowed_client_certificate_stands_for_the_token() {
        let issuer_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, issuer_key);
        let cert = |name: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
            params.signed_by(&key, &issuer).expect("signed").der().clone()
        };
        let (_dir, auth) = with_token("s3cret", true);
        let auth = auth.with_allowed_identities(vec!["ops.fanoutctl".into()]);
        let none = http::HeaderMap::new();
        let operator = [cert("ops.fanoutctl")];
        auth.check(SET, &none, Some(&operator)).expect("an allowed identity needs no token");
        let wildcard = [cert("*.fanoutctl")];
        assert!(auth.check(SET, &none, Some(&wildcard)).is_err(), "a wildcard name is no identity on the list");
        let other = [cert("orders-0.shop")];
        let refused = auth.check(SET, &none, Some(&other)).expect_err("not on the list");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "falls back to the token");
        auth.check(SET, &bearer("s3cret"), Some(&other)).expect("the token still works");
    }

    #[test]
    fn closed_reads_need_the_token_too() {
        let (_dir, auth) = with_token("t", false);
        assert!(auth.check(STATUS, &http::HeaderMap::new(), None).is_err());
        auth.check(STATUS, &bearer("t"), None).expect("with the token");
    }

    #[test]
    fn without_a_token_file_changing_calls_are_disabled_and_an_empty_token_matches_nothing() {
        let auth = AdminAuth::new(None, true);
        let err = auth.check(SET, &bearer("anything"), None).expect_err("disabled");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("admin_token_file"), "{}", err.message());
        let (_dir, empty) = with_token("  \n", true);
        assert!(empty.check(SET, &bearer(""), None).is_err());
    }

    #[test]
    fn a_rotated_token_file_is_read_again() {
        let (dir, auth) = with_token("old", true);
        auth.check(SET, &bearer("old"), None).expect("old token");
        let path = dir.path().join("token");
        // A new file (as a Secret update swaps it) with a later modification time.
        std::fs::write(dir.path().join("next"), "new").expect("write");
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("next"))
            .and_then(|f| f.set_modified(later))
            .expect("set mtime");
        std::fs::rename(dir.path().join("next"), &path).expect("swap");
        auth.check(SET, &bearer("new"), None).expect("new token");
        assert!(auth.check(SET, &bearer("old"), None).is_err(), "the old token no longer works");
    }
}
