//! The gRPC channel to a control plane: TLS verified against the configured roots and name
//! (never an insecure fallback), and the per-call metadata (bearer token, `clusterid`, extra
//! headers). Roots and token are read fresh for every connection or call, so rotated files
//! take effect without a restart.

use std::time::Duration;

use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::settings::{Roots, Target, Token};
use super::XdsError;

/// Larger files are not roots or tokens; refusing them bounds what a bad mount makes us read.
const MAX_FILE: u64 = 1 << 20;
/// Istio's limit for one xDS message.
pub(crate) const MAX_MESSAGE: usize = 200 << 20;

fn read_small(path: &std::path::Path, what: &'static str) -> Result<String, XdsError> {
    use std::io::Read;
    let err = |source| XdsError::File { what, path: path.to_path_buf(), source };
    let f = std::fs::File::open(path).map_err(err)?;
    let mut s = String::new();
    f.take(MAX_FILE + 1).read_to_string(&mut s).map_err(err)?;
    if s.len() as u64 > MAX_FILE {
        return Err(err(std::io::Error::other("larger than 1 MiB")));
    }
    Ok(s)
}

/// The PEM roots the server certificate must chain to.
pub(crate) fn read_roots(r: &Roots) -> Result<String, XdsError> {
    match r {
        Roots::File(p) => read_small(p, "root certificate"),
        Roots::Inline(pem) => Ok(pem.clone()),
        // What the OS trusts: the bundle OpenSSL would use.
        Roots::System => {
            let path = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
            read_small(path.as_deref().unwrap_or("/etc/ssl/certs/ca-certificates.crt".as_ref()), "system root bundle")
        }
    }
}

pub(crate) fn read_token(t: &Token) -> Result<String, XdsError> {
    let raw = match t {
        Token::File(p) => read_small(p, "bearer token")?,
        Token::Literal(s) => s.clone(),
    };
    let token = raw.trim().to_string();
    if token.is_empty() {
        return Err(XdsError::EmptyToken);
    }
    Ok(token)
}

/// A connected channel to `t`, TLS only.
pub(crate) async fn connect(t: &Target) -> Result<Channel, XdsError> {
    endpoint(t)?.connect().await.map_err(|e| XdsError::Connect { url: t.url.clone(), reason: chain(&e) })
}

/// A channel that connects on first use (and reconnects by itself): the CA client's.
pub(crate) fn lazy(t: &Target) -> Result<Channel, XdsError> {
    Ok(endpoint(t)?.connect_lazy())
}

fn endpoint(t: &Target) -> Result<Endpoint, XdsError> {
    let roots = read_roots(&t.roots)?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(roots)).domain_name(t.tls_name.clone());
    let bad = |e: tonic::transport::Error| XdsError::Connect { url: t.url.clone(), reason: chain(&e) };
    Ok(Endpoint::from_shared(t.url.clone())
        .map_err(bad)?
        .tls_config(tls)
        .map_err(bad)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(300)))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// Adds the bearer token, `clusterid` and the configured headers to a request.
pub(crate) fn authorize<T>(req: &mut tonic::Request<T>, t: &Target) -> Result<(), XdsError> {
    let token = read_token(&t.token)?;
    let m = req.metadata_mut();
    let value = |v: &str| MetadataValue::try_from(v).map_err(|_| XdsError::Header(v.chars().take(20).collect()));
    m.insert("authorization", value(&format!("Bearer {token}"))?);
    m.insert("clusterid", value(&t.cluster_id)?);
    for (k, v) in &t.headers {
        let key = MetadataKey::from_bytes(k.as_bytes()).map_err(|_| XdsError::Header(k.clone()))?;
        m.insert(key, value(v)?);
    }
    Ok(())
}

/// An error and its causes on one line (transport errors hide the useful part in `source`).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
