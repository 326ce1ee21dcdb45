//! Opening clients: URL checks, the TLS roots, and how the client's errors map
//! to ours (connection failures count against the breaker, data problems do not).

use redis::{ConnectionAddr, IntoConnectionInfo, RedisError};

use crate::backend::config::RedisConfig;
use crate::error::{config_err, ConnectionErrorKind as Kind, Error, Result};
use crate::keys::{self, redact_url};

/// Checks that a `CACHE_REDIS_URL` is one the client accepts (no secret in the error).
pub(crate) fn check_url(url: &str) -> Result<()> {
    url.into_connection_info().map(|_| ()).map_err(|e| {
        config_err(
            keys::REDIS_URL,
            &redact_url(url),
            format!("a valid Redis URL ({})", e.kind_name()),
        )
    })
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for RedisError {
    fn kind_name(&self) -> String {
        self.category().to_string()
    }
}

/// The PEM file of `CACHE_REDIS_TLS_CA`, read; `None` for the system's roots.
#[cfg(feature = "tls")]
pub(crate) fn tls_root_cert(config: &RedisConfig) -> Result<Option<Vec<u8>>> {
    let Some(path) = &config.tls_ca else {
        return Ok(None);
    };
    std::fs::read(path).map(Some).map_err(|e| {
        config_err(
            keys::REDIS_TLS_CA,
            &path.display().to_string(),
            format!("a readable PEM file ({e})"),
        )
    })
}

/// A client for `info`, with the configured TLS roots for `rediss://`.
pub(crate) fn open_client(config: &RedisConfig, info: redis::ConnectionInfo) -> Result<redis::Client> {
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let unusable = |e: RedisError| {
        config_err(
            keys::REDIS_URL,
            &config.endpoint(),
            format!("a usable Redis address ({})", e.category()),
        )
    };
    if !tls {
        return redis::Client::open(info).map_err(unusable);
    }
    #[cfg(feature = "tls")]
    {
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: tls_root_cert(config)?,
        };
        redis::Client::build_with_tls(info, certs).map_err(|e| {
            config_err(
                keys::REDIS_TLS_CA,
                &config
                    .tls_ca
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                format!("PEM certificates the TLS client accepts ({})", e.category()),
            )
        })
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = unusable;
        Err(config_err(
            keys::REDIS_URL,
            &config.endpoint(),
            "a redis:// URL in this build: rediss:// (TLS) needs the Cargo feature `tls` of resilient-cache",
        ))
    }
}

/// Maps a client error to our kinds. Data problems (a key of another type)
/// are serialization errors: they must not count against the breaker.
pub(crate) fn map_err(e: RedisError) -> Error {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    if e.is_timeout() {
        return Error::connection(Kind::Timeout, e.to_string());
    }
    if e.is_connection_refusal() {
        return Error::connection(Kind::Refused, e.to_string());
    }
    if e.code() == Some("WRONGTYPE") {
        return Error::Serialization("the key holds a value that is not a string".into());
    }
    let kind = match e.kind() {
        K::AuthenticationFailed | K::Server(S::NoPerm) => Kind::Auth,
        _ if e.code().is_some_and(|c| c == "NOAUTH" || c == "WRONGPASS") => Kind::Auth,
        K::UnexpectedReturnType => return Error::Serialization(e.to_string()),
        K::Server(_) | K::Extension => Kind::Server,
        _ => Kind::Io,
    };
    Error::connection(kind, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_url_error_hides_the_password() {
        let e = check_url("redis://u:hunter2@[bad").unwrap_err().to_string();
        assert!(e.contains("CACHE_REDIS_URL") && !e.contains("hunter2"), "{e}");
    }
}
