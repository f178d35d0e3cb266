//! kpr's one HTTP transport, for the SDK clients and the direct read path alike.
//!
//! The SDK's default HTTPS client loads the system's root certificates when a client is built
//! (~3 ms of CPU, most of a one-resource run), whether or not an `https` URL is ever used, and
//! the direct path had its own connector and so its own pool and its own copy of the roots.
//! Here both send through one [`Transport`]: one connection pool (the direct path reuses the
//! connection the SDK opened for a scope's first read, where it was a second TLS handshake
//! before), the roots loaded once, on the first `https` request, and never for a plain-HTTP
//! endpoint however it was named (`--endpoint-url`, `AWS_ENDPOINT_URL`, a profile setting).
//! Both connectors take the proxy from the environment, as the SDK's default client does: the
//! direct path used to ignore it, so behind a proxy its reads went elsewhere than the SDK's.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_smithy_http_client::Connector;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

/// A connect and a read timeout: what distinguishes one connector's settings from another's.
type Timeouts = (Option<Duration>, Option<Duration>);

/// Cheap to clone: clones share the pool.
#[derive(Debug, Clone)]
pub struct Transport(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    settings: HttpConnectorSettings,
    proxy: ProxyConfig,
    /// Plain-HTTP requests take the TLS connector when a proxy variable names an `https://`
    /// proxy: only it can reach one (the SDK's client, TLS for every scheme, would), and the
    /// plain connector warns at any such variable, even one that applies only to `https` URLs.
    plain_needs_tls: bool,
    plain: OnceLock<Connector>,
    tls: OnceLock<Connector>,
    /// For SDK clients that ask for other timeouts than kpr's (the IMDS credential client
    /// does): a transport of their own, built as they ask, so their timeouts hold.
    others: Mutex<HashMap<Timeouts, Transport>>,
}

/// Every variable that can name a proxy.
const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

impl Transport {
    /// With the proxy from the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`,
    /// `NO_PROXY`), as the SDK's own client takes it under kpr's behavior version.
    pub fn new(connect_timeout: Duration) -> Self {
        let (proxy, plain_needs_tls) = proxy_from(|var| std::env::var(var).ok());
        Self::with(Self::settings(connect_timeout), proxy, plain_needs_tls)
    }

    /// With no proxy, whatever the environment says: for tests on loopback.
    pub fn without_proxy(connect_timeout: Duration) -> Self {
        Self::with(
            Self::settings(connect_timeout),
            ProxyConfig::disabled(),
            false,
        )
    }

    fn settings(connect_timeout: Duration) -> HttpConnectorSettings {
        HttpConnectorSettings::builder()
            .connect_timeout(connect_timeout)
            .build()
    }

    fn with(settings: HttpConnectorSettings, proxy: ProxyConfig, plain_needs_tls: bool) -> Self {
        Self(Arc::new(Inner {
            settings,
            proxy,
            plain_needs_tls,
            plain: OnceLock::new(),
            tls: OnceLock::new(),
            others: Mutex::new(HashMap::new()),
        }))
    }

    /// Another transport, the same but for its connector settings.
    fn with_settings(&self, settings: HttpConnectorSettings) -> Self {
        Self::with(settings, self.0.proxy.clone(), self.0.plain_needs_tls)
    }

    fn timeouts(settings: &HttpConnectorSettings) -> Timeouts {
        (settings.connect_timeout(), settings.read_timeout())
    }

    fn connector(&self, uri: &str) -> &Connector {
        let inner = &*self.0;
        let builder = || {
            Connector::builder()
                .connector_settings(inner.settings.clone())
                .proxy_config(inner.proxy.clone())
        };
        let plain = !inner.plain_needs_tls && has_scheme(uri, "http://");
        if plain {
            inner.plain.get_or_init(|| builder().build_http())
        } else {
            // hyper-rustls speaks plain HTTP to an `http://` URL too.
            inner.tls.get_or_init(|| {
                builder()
                    .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                    .build()
            })
        }
    }

    /// Whether an `https` connector was ever built, i.e. root certificates loaded.
    #[cfg(test)]
    pub(super) fn loaded_tls(&self) -> bool {
        self.0.tls.get().is_some()
    }
}

/// The proxy configuration for the variables `var` reads, and whether plain HTTP needs the TLS
/// connector. With no proxy variable, no proxy: the same answer as `from_env`, minus its check
/// (NO_PROXY, parsing the host) on every request.
fn proxy_from(var: impl Fn(&str) -> Option<String>) -> (ProxyConfig, bool) {
    let values: Vec<String> = PROXY_VARS
        .iter()
        .filter_map(|name| var(name))
        .filter(|v| !v.trim().is_empty())
        .collect();
    if values.is_empty() {
        return (ProxyConfig::disabled(), false);
    }
    let tls = values.iter().any(|v| has_scheme(v.trim(), "https://"));
    (ProxyConfig::from_env(), tls)
}

fn has_scheme(url: &str, scheme: &str) -> bool {
    url.get(..scheme.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
}

impl Transport {
    /// Sends `request`; its answer's body is not bounded: the caller bounds it (the direct
    /// path, on its own body type, where wrapping it as [`HttpConnector::call`] does would
    /// cost an allocation per read).
    pub(crate) fn send(&self, request: HttpRequest) -> HttpConnectorFuture {
        // Read only on an error: this is every request's path.
        let uri = request.uri().to_owned();
        let proxied = !self.0.proxy.is_disabled();
        let sent = self.connector(request.uri()).call(request);
        // hyper's errors do not say where they were going ("tcp connect error: Connection
        // refused"); with an endpoint from a flag, a variable or a profile, that is the first
        // thing a reader needs.
        HttpConnectorFuture::new(async move {
            sent.await.map_err(|e| {
                let mut to = endpoint_of(&uri);
                if proxied {
                    // The proxy may be what failed: not only the endpoint is to be checked.
                    to.push_str(
                        " through the proxy HTTP_PROXY, HTTPS_PROXY or ALL_PROXY names (unless \
                         NO_PROXY spares it)",
                    );
                }
                naming(e, to)
            })
        })
    }
}

impl HttpConnector for Transport {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let bound = answer_bound(&request);
        let sent = self.send(request);
        // Every answer the SDK reads is bounded, as the direct path bounds its own: a 200 MB
        // answer to a read took a plan to 617 MB on the SDK's path.
        HttpConnectorFuture::new(async move {
            sent.await.map(|response| {
                response.map(|body| {
                    aws_smithy_types::body::SdkBody::from_body_1_x(http_body_util::Limited::new(
                        body, bound,
                    ))
                })
            })
        })
    }
}

/// The largest answer to GetResourcePolicy read: a policy is at most a few tens of KiB;
/// anything far larger is not an AWS answer.
pub(crate) const MAX_POLICY_ANSWER: usize = 1 << 20;
/// The largest other answer read. AWS sends 100 streams a ListStreams page, ~50 KB; moto sends
/// every stream on every page, 1.4 MB for 3,000 streams with long names.
const MAX_ANSWER: usize = 64 << 20;

/// The bound on the answer to `request`, by its operation (the `X-Amz-Target` header of
/// Kinesis' JSON protocol).
fn answer_bound(request: &HttpRequest) -> usize {
    let target = request.headers().get("x-amz-target").unwrap_or_default();
    if target.ends_with(".GetResourcePolicy") {
        MAX_POLICY_ANSWER
    } else {
        MAX_ANSWER
    }
}

/// `scheme://host[:port]` of a URL, without user info.
fn endpoint_of(uri: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}")
}

/// A connector's error, said to be on the way to `to`; its kind (what decides a retry) and
/// connection are kept.
fn naming(e: ConnectorError, to: String) -> ConnectorError {
    #[derive(Debug)]
    struct Sending {
        to: String,
        source: BoxError,
    }
    impl std::fmt::Display for Sending {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "sending to {}", self.to)
        }
    }
    impl std::error::Error for Sending {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(self.source.as_ref())
        }
    }
    let connection = e.connection_metadata().cloned();
    let (io, timeout, user, other) = (e.is_io(), e.is_timeout(), e.is_user(), e.as_other());
    let source = Box::new(Sending {
        to,
        source: e.into_source(),
    });
    let named = if io {
        ConnectorError::io(source)
    } else if timeout {
        ConnectorError::timeout(source)
    } else if user {
        ConnectorError::user(source)
    } else {
        ConnectorError::other(source, other)
    };
    match connection {
        Some(c) => named.with_connection(c),
        None => named,
    }
}

impl HttpClient for Transport {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let wanted = Self::timeouts(settings);
        if wanted == Self::timeouts(&self.0.settings) {
            return SharedHttpConnector::new(self.clone());
        }
        let mut others = self.0.others.lock().expect("transports");
        let other = others.entry(wanted).or_insert_with(|| {
            tracing::debug!(
                connect_timeout = ?wanted.0,
                read_timeout = ?wanted.1,
                "an HTTP transport of its own for a client with other timeouts"
            );
            self.with_settings(settings.clone())
        });
        SharedHttpConnector::new(other.clone())
    }

    // No `validate_base_client_config`: the SDK's own client builds its connector there so that
    // the roots load early; these load when first needed.

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        Some(ConnectorMetadata::new("hyper", Some(Cow::Borrowed("1.x"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::client::runtime_components::RuntimeComponentsBuilder;

    #[test]
    fn proxy_variables() {
        fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |name| {
                pairs
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            }
        }
        let (proxy, tls) = proxy_from(env(&[]));
        assert!(proxy.is_disabled() && !tls);
        let (proxy, tls) = proxy_from(env(&[("NO_PROXY", "*"), ("HTTP_PROXY", " ")]));
        assert!(proxy.is_disabled() && !tls);
        let (proxy, tls) = proxy_from(env(&[("http_proxy", "http://proxy:3128")]));
        assert!(!proxy.is_disabled() && !tls);
        for (name, url) in [
            ("HTTPS_PROXY", "HTTPS://proxy:3129"),
            ("https_proxy", "https://proxy:3129"),
            ("ALL_PROXY", " https://proxy:3129"),
            ("HTTP_PROXY", "https://proxy:3129"),
        ] {
            let (proxy, tls) = proxy_from(env(&[(name, url)]));
            assert!(!proxy.is_disabled() && tls, "{name}");
        }
    }

    #[test]
    fn schemes() {
        assert!(has_scheme("HTTPS://proxy:3128", "https://"));
        assert!(has_scheme("http://127.0.0.1:4567/", "http://"));
        assert!(!has_scheme("https://x", "http://"));
        assert!(!has_scheme("http://x", "https://"));
        assert!(!has_scheme("htt", "http://"));
    }

    /// Behind an `https://` proxy a plain-HTTP request goes through the TLS connector (only it
    /// can reach such a proxy); otherwise through the plain one, loading no root certificates.
    /// A connection refused says where it was going, and stays retryable.
    #[tokio::test]
    async fn an_answer_is_read_within_the_bound() {
        use http_body_util::BodyExt;
        let app = axum::Router::new().fallback(|| async { vec![b'x'; MAX_POLICY_ANSWER + 1] });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let transport = Transport::without_proxy(Duration::from_secs(5));
        // Past the bound for a policy; within the one for a listing page.
        for (target, refused) in [
            ("Kinesis_20131202.GetResourcePolicy", true),
            ("Kinesis_20131202.ListStreams", false),
        ] {
            let mut request = HttpRequest::new(aws_smithy_types::body::SdkBody::from("{}"));
            *request.uri_mut() = url.as_str().try_into().unwrap();
            request.headers_mut().insert("x-amz-target", target);
            let answer = transport.call(request).await.unwrap();
            let read = answer.into_body().collect().await;
            assert_eq!(
                read.as_ref()
                    .is_err_and(|e| e.to_string().contains("length limit")),
                refused,
                "{target}: {:?}",
                read.map(|b| b.to_bytes().len())
            );
        }
    }

    #[tokio::test]
    async fn a_failed_connection_names_its_endpoint() {
        // A port just freed: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let transport = Transport::without_proxy(Duration::from_secs(5));
        let mut request = HttpRequest::new(aws_smithy_types::body::SdkBody::from("{}"));
        *request.uri_mut() = format!("http://u:PW@127.0.0.1:{port}/")
            .as_str()
            .try_into()
            .unwrap();
        let e = transport.call(request).await.unwrap_err();
        let text = crate::kinesis::error_chain(&e);
        assert!(
            text.contains(&format!("sending to http://127.0.0.1:{port}: ")) && !text.contains("PW"),
            "{text}"
        );
        assert!(text.contains("Connection refused"), "{text}");
        assert_eq!(
            crate::kinesis::dispatch_class(&e),
            crate::kinesis::ErrorClass::Retryable
        );
        // Behind a proxy, the proxy may be what refused: the message says it was in the way.
        let proxy = ProxyConfig::all(format!("http://127.0.0.1:{port}")).unwrap();
        let behind = Transport::with(Transport::settings(Duration::from_secs(5)), proxy, false);
        let mut request = HttpRequest::new(aws_smithy_types::body::SdkBody::from("{}"));
        *request.uri_mut() = "http://198.51.100.1:4568/".try_into().unwrap();
        let e = behind.call(request).await.unwrap_err();
        let text = crate::kinesis::error_chain(&e);
        assert!(
            text.contains("sending to http://198.51.100.1:4568 through the proxy"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn plain_http_takes_the_tls_connector_only_behind_a_tls_proxy() {
        let app = axum::Router::new().fallback(|| async { "{}" });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        for needs_tls in [false, true] {
            let transport = Transport::with(
                Transport::settings(Duration::from_secs(5)),
                ProxyConfig::disabled(),
                needs_tls,
            );
            let mut request = HttpRequest::new(aws_smithy_types::body::SdkBody::from("{}"));
            *request.uri_mut() = url.as_str().try_into().unwrap();
            let response = transport.call(request).await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            assert_eq!(transport.loaded_tls(), needs_tls);
            assert_eq!(transport.0.plain.get().is_some(), !needs_tls);
        }
    }

    /// kpr's own clients share one pool; a client with other timeouts gets a connector that
    /// keeps them, built once.
    #[test]
    fn a_connector_per_timeouts() {
        let transport = Transport::with(
            Transport::settings(Duration::from_secs(5)),
            ProxyConfig::http("http://proxy:3128").unwrap(),
            true,
        );
        let components = RuntimeComponentsBuilder::for_tests().build().unwrap();
        let ours = HttpConnectorSettings::builder()
            .connect_timeout(Duration::from_secs(5))
            .build();
        let imds = HttpConnectorSettings::builder()
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(1))
            .build();
        let _ = transport.http_connector(&ours, &components);
        assert!(transport.0.others.lock().unwrap().is_empty());
        for _ in 0..2 {
            let _ = transport.http_connector(&imds, &components);
        }
        let others = transport.0.others.lock().unwrap();
        assert_eq!(others.len(), 1);
        let other = others.values().next().unwrap();
        assert_eq!(
            Transport::timeouts(&other.0.settings),
            Transport::timeouts(&imds)
        );
        // ... and the same proxy.
        assert!(other.0.plain_needs_tls);
        assert_eq!(
            format!("{:?}", other.0.proxy),
            format!("{:?}", transport.0.proxy)
        );
    }
}
