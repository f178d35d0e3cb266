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
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

/// A connect and a read timeout: what distinguishes one connector's settings from another's.
type Timeouts = (Option<Duration>, Option<Duration>);

/// Cheap to clone: clones share the pool.
#[derive(Debug, Clone)]
pub struct Transport(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    settings: HttpConnectorSettings,
    plain: OnceLock<Connector>,
    tls: OnceLock<Connector>,
    /// For SDK clients that ask for other timeouts than kpr's (the IMDS credential client
    /// does): a transport of their own, built as they ask, so their timeouts hold.
    others: Mutex<HashMap<Timeouts, Transport>>,
}

impl Transport {
    pub fn new(connect_timeout: Duration) -> Self {
        Self::with_settings(
            HttpConnectorSettings::builder()
                .connect_timeout(connect_timeout)
                .build(),
        )
    }

    fn with_settings(settings: HttpConnectorSettings) -> Self {
        Self(Arc::new(Inner {
            settings,
            plain: OnceLock::new(),
            tls: OnceLock::new(),
            others: Mutex::new(HashMap::new()),
        }))
    }

    fn timeouts(settings: &HttpConnectorSettings) -> Timeouts {
        (settings.connect_timeout(), settings.read_timeout())
    }

    fn connector(&self, uri: &str) -> &Connector {
        let inner = &*self.0;
        // The proxy from the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), as the SDK's own
        // client takes it under kpr's behavior version.
        let builder = || {
            Connector::builder()
                .connector_settings(inner.settings.clone())
                .proxy_config(ProxyConfig::from_env())
        };
        let plain = uri
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"));
        if plain {
            inner.plain.get_or_init(|| builder().build_http())
        } else {
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

impl HttpConnector for Transport {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        self.connector(request.uri()).call(request)
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
            Self::with_settings(settings.clone())
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

    /// kpr's own clients share one pool; a client with other timeouts gets a connector that
    /// keeps them, built once.
    #[test]
    fn a_connector_per_timeouts() {
        let transport = Transport::new(Duration::from_secs(5));
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
    }
}
