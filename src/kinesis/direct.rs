//! GetResourcePolicy without the SDK's orchestrator: the one call kpr makes once per resource
//! on every run.
//!
//! Measured on loopback, the SDK spends ~200 µs of CPU per call in its orchestrator (runtime
//! plugins, interceptors, identity and endpoint resolution, signing), more than the HTTP
//! exchange itself and six times kpr's own work per resource. This path keeps every part that
//! decides correctness from the SDK's own crates: the SDK's HTTP connector (same TLS stack and
//! pool settings), `aws-sigv4` for signing, the SDK's credential provider (cached here until
//! it nears expiry, as the SDK's identity cache does).
//!
//! It never guesses where to send a request. The first read of each scope goes through the SDK,
//! and an interceptor records the URL it resolved (account endpoints, FIPS, dual-stack,
//! `AWS_ENDPOINT_URL*`, profile settings) and the region and service name it signed with;
//! only reads after that take this path. The one exception leaves nothing to resolve: an
//! endpoint kpr is told, without a path and without FIPS or dual-stack, is used as it is (see
//! [`Route::told`]), and then every read takes this path. Writes, listings and
//! DescribeStreamConsumer always use the SDK.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::future::ProvideCredentials as ProvideCredentialsFuture;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_kinesis::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use http_body_util::{BodyExt, Limited};

use super::transport::MAX_POLICY_ANSWER;
use super::{ApiError, ErrorClass, Op, Transport, dispatch_class, none_if_empty};

const TARGET: &str = "Kinesis_20131202.GetResourcePolicy";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const USER_AGENT: &str = concat!("kpr/", env!("CARGO_PKG_VERSION"));
/// Refresh credentials this long before they expire, when the provider gives that long.
const CREDENTIALS_BUFFER: Duration = Duration::from_secs(300);
/// Credentials with less time left than [`CREDENTIALS_BUFFER`] (a `credential_process` that
/// hands out its own cached session to the end) are used this long at most before asking
/// again, and never closer than [`EXPIRY_MARGIN`] to their expiry: asking on every request
/// spawned the process once a read.
const SHORT_LIVED_REUSE: Duration = Duration::from_secs(60);
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// Credentials without an expiry are asked for again after this long, as the SDK's identity
/// cache does.
const NO_EXPIRY_REUSE: Duration = Duration::from_secs(15 * 60);
/// How long a call waits for the provider: the SDK's identity cache waits as long. The load
/// itself goes on (see [`CredentialCache::fetch`]).
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A load still unanswered after this long is given up for a new one: a provider stuck once
/// (a `credential_process` that hung) must not stop the refreshes of the next minutes, nor a
/// stuck one leave more than a process per this long behind (the SDK cannot stop one it runs).
const LOAD_ABANDONED: Duration = Duration::from_secs(30);

/// Where and how the SDK sent a scope's GetResourcePolicy: all this path needs to send its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Route {
    uri: http::Uri,
    host: String,
    region: String,
    service: String,
}

impl Route {
    /// From a request the SDK signed: its URL, and the scope of its `Authorization` header
    /// (`Credential=AKID/DATE/REGION/SERVICE/aws4_request`).
    fn from_signed(uri: &http::Uri, authorization: &str) -> Option<Route> {
        let scope = authorization
            .split("Credential=")
            .nth(1)?
            .split(',')
            .next()?;
        let mut parts = scope.split('/').skip(2);
        let (region, service) = (parts.next()?, parts.next()?);
        Route::new(uri, region, service)
    }

    /// For an endpoint kpr is told (`--endpoint-url`), when the SDK would neither refuse it
    /// (FIPS or dual-stack asked for) nor add to it (a path): Kinesis' endpoint rules then
    /// return the URL as it is, whatever the ARN, and the SDK signs for the client's region as
    /// `kinesis`. So the scope's first read need not go through the SDK to learn it; the
    /// test `a_told_route_is_the_one_the_sdk_records` holds the two equal.
    pub(super) fn told(
        endpoint: &str,
        region: &str,
        fips: bool,
        dual_stack: bool,
    ) -> Option<Route> {
        if fips || dual_stack {
            return None;
        }
        let uri = endpoint.parse::<http::Uri>().ok()?;
        let bare = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
        let scheme = uri.scheme_str()?;
        if !bare || !(scheme == "http" || scheme == "https") {
            return None;
        }
        Route::new(&uri, region, "kinesis")
    }

    fn new(uri: &http::Uri, region: &str, service: &str) -> Option<Route> {
        let host = uri.authority()?.as_str().to_string();
        let uri = http::Uri::builder()
            .scheme(uri.scheme()?.clone())
            .authority(host.as_str())
            .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
            .build()
            .ok()?;
        Some(Route {
            uri,
            host,
            region: region.to_string(),
            service: service.to_string(),
        })
    }
}

/// Records the route of the first GetResourcePolicy the SDK sends for one scope.
#[derive(Debug, Default, Clone)]
pub(super) struct RouteRecorder(Arc<OnceLock<Route>>);

impl RouteRecorder {
    /// Already holding `route`: the SDK's first read then records nothing.
    pub(super) fn knowing(route: Route) -> Self {
        Self(Arc::new(OnceLock::from(route)))
    }

    pub(super) fn get(&self) -> Option<&Route> {
        self.0.get()
    }
}

impl Intercept for RouteRecorder {
    fn name(&self) -> &'static str {
        "kpr-route-recorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.0.get().is_some() {
            return Ok(());
        }
        let req = context.request();
        let headers = req.headers();
        if headers.get("x-amz-target") != Some(TARGET) {
            return Ok(());
        }
        let Ok(uri) = req.uri().parse::<http::Uri>() else {
            return Ok(());
        };
        if let Some(route) = headers
            .get("authorization")
            .and_then(|a| Route::from_signed(&uri, a))
        {
            let _ = self.0.set(route);
        }
        Ok(())
    }
}

/// The credentials of one scope, resolved once and reused until they near expiry, and the
/// SigV4 signing key derived from them (it changes only with the day or the credentials).
/// The scope's SDK client resolves its credentials here too (see [`SharedCache`]), so a scope
/// fetches them once (one STS call for an assumed role), not once per path.
pub(super) struct CredentialCache {
    provider: SharedCredentialsProvider,
    current: std::sync::Mutex<Option<Cached>>,
    /// The provider's load under way, which every call that needs credentials waits on
    /// instead of starting its own.
    loading: std::sync::Mutex<Option<Loading>>,
    signing_key: std::sync::Mutex<Option<SigningKey>>,
    /// What the provider does, for its errors ("assuming role R for account A"); `None` for
    /// the default chain, whose errors say it themselves.
    label: Option<String>,
    /// The last failure and when, replayed for [`FAILURE_MEMORY`] instead of asking again:
    /// with a role that cannot be assumed, every resource of the scope would call STS, each a
    /// denied AssumeRole in CloudTrail, which security alerting watches for.
    failed: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// How long a failed credentials fetch is replayed: a run's calls share one, and the next
/// run (a retry comes 30 s later by default) asks again.
const FAILURE_MEMORY: Duration = Duration::from_secs(10);

/// Credentials as loaded. Shared, not cloned per call: a `Credentials` clone copies its
/// property map.
struct Cached {
    creds: Arc<Credentials>,
    /// Asked for again from then on.
    refresh_at: SystemTime,
    loaded_at: tokio::time::Instant,
}

impl Cached {
    fn new(creds: Arc<Credentials>) -> Self {
        let now = SystemTime::now();
        let refresh_at = match creds.expiry() {
            None => now + NO_EXPIRY_REUSE,
            Some(expiry) => expiry
                .checked_sub(CREDENTIALS_BUFFER)
                .filter(|ahead| *ahead > now)
                .unwrap_or_else(|| {
                    let margin = expiry.checked_sub(EXPIRY_MARGIN).unwrap_or(now);
                    (now + SHORT_LIVED_REUSE)
                        .min(margin)
                        .max(now + Duration::from_secs(1))
                }),
        };
        Cached {
            creds,
            refresh_at,
            loaded_at: tokio::time::Instant::now(),
        }
    }
}

type Loaded = Result<Arc<Credentials>, Arc<CredentialsError>>;
/// A load's answer, for every call that waits on it.
type LoadFuture = futures::future::Shared<futures::future::BoxFuture<'static, Loaded>>;

/// A load of the provider, run as a task of its own: a call that stops waiting for it (its
/// timeout) does not drop it. Dropped, a `credential_process` child stays behind, hung, and
/// every retry would start one more.
struct Loading {
    started: tokio::time::Instant,
    result: LoadFuture,
    task: tokio::task::AbortHandle,
    /// When the provider answered: an answer nobody took up in time is not handed out later.
    done_at: Arc<OnceLock<tokio::time::Instant>>,
    /// Said in the log once, that it is slow.
    slow: std::sync::atomic::AtomicBool,
}

/// See [`CredentialCache::provider_kind`].
enum ProviderKind<'a> {
    /// What the provider does ("assuming role R for account A").
    Labelled(&'a str),
    /// The profile AWS_PROFILE names.
    Profile(String),
    DefaultChain,
}

struct SigningKey {
    date: String,
    access_key_id: String,
    key: Arc<[u8]>,
}

impl CredentialCache {
    pub(super) fn new(provider: SharedCredentialsProvider) -> Self {
        Self {
            provider,
            current: std::sync::Mutex::new(None),
            loading: std::sync::Mutex::new(None),
            signing_key: std::sync::Mutex::new(None),
            label: None,
            failed: std::sync::Mutex::new(None),
        }
    }

    /// Names what the provider does in its errors.
    pub(super) fn labelled(mut self, label: String) -> Self {
        self.label = Some(label);
        self
    }

    fn recent_failure(&self) -> Option<CredentialsError> {
        let failed = self.failed.lock().expect("credentials failure");
        failed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < FAILURE_MEMORY)
            .map(|(_, message)| CredentialsError::provider_error(message.clone()))
    }

    fn fresh(&self) -> Option<Arc<Credentials>> {
        let slot = self.current.lock().expect("credentials");
        slot.as_ref()
            .filter(|c| SystemTime::now() < c.refresh_at)
            .map(|c| Arc::clone(&c.creds))
    }

    /// The service refused the credentials (expired, or revoked): the provider is asked
    /// again, once they are 10 seconds old (just loaded, it has nothing newer).
    pub(super) fn forget(&self) {
        let mut slot = self.current.lock().expect("credentials");
        if let Some(c) = slot.as_mut() {
            let wait = FAILURE_MEMORY.saturating_sub(c.loaded_at.elapsed());
            c.refresh_at = c.refresh_at.min(SystemTime::now() + wait);
        }
    }

    /// Where the credentials come from, as messages name it.
    fn provider_kind(&self) -> ProviderKind<'_> {
        match (&self.label, std::env::var("AWS_PROFILE")) {
            (Some(label), _) => ProviderKind::Labelled(label),
            (None, Ok(profile)) if !profile.is_empty() => ProviderKind::Profile(profile),
            (None, _) => ProviderKind::DefaultChain,
        }
    }

    /// The load under way, or a new one.
    fn loading(&self) -> LoadFuture {
        use futures::FutureExt;
        let mut slot = self.loading.lock().expect("credentials load");
        if let Some(l) = slot.as_ref() {
            let taken_up = match l.done_at.get() {
                Some(at) => at.elapsed() < FAILURE_MEMORY,
                None => l.started.elapsed() < LOAD_ABANDONED,
            };
            if taken_up {
                return l.result.clone();
            }
            l.task.abort();
        }
        let provider = self.provider.clone();
        let done_at = Arc::new(OnceLock::new());
        let done = Arc::clone(&done_at);
        let task = tokio::spawn(async move {
            let loaded = provider.provide_credentials().await;
            let _ = done.set(tokio::time::Instant::now());
            loaded.map(Arc::new).map_err(Arc::new)
        });
        let abort = task.abort_handle();
        let result = async move {
            // Given up (see LOAD_ABANDONED): a timeout like any other, retried.
            task.await.unwrap_or_else(|_| {
                Err(Arc::new(CredentialsError::provider_timed_out(
                    LOAD_ABANDONED,
                )))
            })
        }
        .boxed()
        .shared();
        *slot = Some(Loading {
            started: tokio::time::Instant::now(),
            result: result.clone(),
            task: abort,
            done_at,
            slow: std::sync::atomic::AtomicBool::new(false),
        });
        result
    }

    /// Says once per load that it has taken longer than a call waits: an operator sees a
    /// provider that hangs in the log, not only as calls that time out.
    fn slow(&self, load: &LoadFuture) {
        let slot = self.loading.lock().expect("credentials load");
        if let Some(l) = slot
            .as_ref()
            .filter(|l| futures::future::Shared::ptr_eq(&l.result, load))
            && !l.slow.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let provider = match self.provider_kind() {
                ProviderKind::Labelled(label) => label.to_string(),
                ProviderKind::Profile(profile) => format!("profile {profile:?}"),
                ProviderKind::DefaultChain => "the default chain".to_string(),
            };
            tracing::warn!(
                provider,
                "loading AWS credentials has taken over {}s (a credential_process or STS that \
                 does not answer?): calls fail and are retried meanwhile; the load is given up \
                 for a new one after {}s",
                LOAD_TIMEOUT.as_secs(),
                LOAD_ABANDONED.as_secs()
            );
        }
    }

    async fn fetch(&self) -> Result<Arc<Credentials>, CredentialsError> {
        if let Some(creds) = self.fresh() {
            return Ok(creds);
        }
        if let Some(e) = self.recent_failure() {
            return Err(e);
        }
        let load = self.loading();
        // A timeout is retried; the load goes on, for the next call to take up.
        let Ok(loaded) = tokio::time::timeout(LOAD_TIMEOUT, load.clone()).await else {
            self.slow(&load);
            return Err(CredentialsError::provider_timed_out(LOAD_TIMEOUT));
        };
        {
            let mut slot = self.loading.lock().expect("credentials load");
            if slot
                .as_ref()
                .is_some_and(|l| futures::future::Shared::ptr_eq(&l.result, &load))
            {
                *slot = None;
            }
        }
        let e = match loaded {
            Ok(creds) => {
                *self.current.lock().expect("credentials") = Some(Cached::new(Arc::clone(&creds)));
                return Ok(creds);
            }
            Err(e) => e,
        };
        if let CredentialsError::ProviderTimedOut(_) = &*e {
            return Err(CredentialsError::provider_timed_out(LOAD_TIMEOUT));
        }
        let chain = super::credentials_cause(&e);
        let message = match self.provider_kind() {
            ProviderKind::Labelled(label) => format!("{label}: {chain}"),
            ProviderKind::Profile(profile) => {
                format!("from profile {profile:?} (AWS_PROFILE): {chain}")
            }
            // Tried because the environment holds no keys: its last link's failure (the
            // instance metadata service, off EC2) hides the cause.
            ProviderKind::DefaultChain => format!(
                "none in the environment, and the default chain (profile, SSO, web identity, \
                 container, instance metadata) found none ({chain}). Set AWS_PROFILE or \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; against a local emulator any \
                 values do"
            ),
        };
        *self.failed.lock().expect("credentials failure") =
            Some((std::time::Instant::now(), message.clone()));
        Err(CredentialsError::provider_error(message))
    }

    async fn credentials(&self) -> Result<Arc<Credentials>, ApiError> {
        self.fetch()
            .await
            .map_err(|e| super::no_credentials(Op::GetResourcePolicy, &e))
    }

    fn signing_key(
        &self,
        creds: &Credentials,
        route: &Route,
        time: SystemTime,
        date: &str,
    ) -> Arc<[u8]> {
        let mut slot = self.signing_key.lock().expect("signing key");
        if let Some(k) = slot.as_ref()
            && k.date == date
            && k.access_key_id == creds.access_key_id()
        {
            return k.key.clone();
        }
        let key: Arc<[u8]> = v4::generate_signing_key(
            creds.secret_access_key(),
            time,
            &route.region,
            &route.service,
        )
        .as_ref()
        .into();
        *slot = Some(SigningKey {
            date: date.to_string(),
            access_key_id: creds.access_key_id().to_string(),
            key: key.clone(),
        });
        key
    }
}

impl std::fmt::Debug for CredentialCache {
    // Never the credentials themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialCache").finish_non_exhaustive()
    }
}

/// A scope's [`CredentialCache`] as its SDK client's credentials provider. The client's own
/// identity cache is turned off, so the SDK and the direct path share one cache.
#[derive(Debug, Clone)]
pub(super) struct SharedCache(pub(super) Arc<CredentialCache>);

impl ProvideCredentials for SharedCache {
    fn provide_credentials<'a>(&'a self) -> ProvideCredentialsFuture<'a>
    where
        Self: 'a,
    {
        ProvideCredentialsFuture::new(async move {
            self.0.fetch().await.map(|c| Credentials::clone(&c))
        })
    }
}

/// The HTTP side: kpr's one [`Transport`], shared with the SDK clients.
pub(super) struct DirectReader {
    transport: Transport,
    attempt_timeout: Duration,
}

impl DirectReader {
    pub(super) fn new(transport: Transport, attempt_timeout: Duration) -> Self {
        Self {
            transport,
            attempt_timeout,
        }
    }

    /// One attempt. `Ok(None)` is "no policy", as [`super::Kinesis::get_policy`] defines it.
    pub(super) async fn get_policy(
        &self,
        route: &Route,
        credentials: &CredentialCache,
        arn: &str,
    ) -> Result<Option<String>, ApiError> {
        let creds = credentials.credentials().await?;
        let now = SystemTime::now();
        let request = if route.uri.path() == "/" {
            let amz_date = amz_date(now);
            let key = credentials.signing_key(&creds, route, now, &amz_date[..8]);
            quick_signed_request(route, &creds, &key, &amz_date, arn)?
        } else {
            signed_request(route, &Identity::from(Credentials::clone(&creds)), arn, now)?
        };
        let exchange = async {
            let response = self
                .transport
                .send(request)
                .await
                .map_err(|e| connector_error(&e))?;
            let status = response.status().as_u16();
            let error_type = response
                .headers()
                .get("x-amzn-errortype")
                .map(str::to_string);
            let body = Limited::new(response.into_body(), MAX_POLICY_ANSWER)
                .collect()
                .await
                .map_err(|e| {
                    let message = format!("reading the response: {e}");
                    ApiError::new(Op::GetResourcePolicy, ErrorClass::Retryable, None, message)
                })?
                .to_bytes();
            Ok::<_, ApiError>((status, error_type, body))
        };
        let (status, error_type, body) = tokio::time::timeout(self.attempt_timeout, exchange)
            .await
            .map_err(|_| {
                ApiError::new(
                    Op::GetResourcePolicy,
                    ErrorClass::Retryable,
                    None,
                    "request timed out",
                )
            })??;
        parse_response(status, error_type.as_deref(), &body)
    }
}

fn request_body(arn: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(arn.len() + 20);
    body.extend_from_slice(b"{\"ResourceARN\":");
    serde_json::to_writer(&mut body, arn).expect("a string serialises");
    body.push(b'}');
    body
}

fn request_error(what: &str, e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        Op::GetResourcePolicy,
        ErrorClass::Fatal,
        None,
        format!("{what}: {e}"),
    )
}

/// The request both signers start from: method, URL and the headers that are signed but not
/// produced by signing. Built as the connector's own request type with static names: going
/// through `http::Request` parsed every header name and converted the request once more.
fn base_request(
    route: &Route,
    body: Vec<u8>,
) -> Result<aws_smithy_runtime_api::http::Request, ApiError> {
    let mut request = aws_smithy_runtime_api::http::Request::new(SdkBody::from(body));
    request
        .set_method("POST")
        .map_err(|e| request_error("building the request", &e))?;
    request
        .set_uri(route.uri.clone())
        .expect("an http::Uri converts");
    let headers = request.headers_mut();
    headers.insert("user-agent", USER_AGENT);
    headers.insert("content-type", CONTENT_TYPE);
    headers.insert("x-amz-target", TARGET);
    headers
        .try_insert("host", route.host.clone())
        .map_err(|e| request_error("building the request", &e))?;
    Ok(request)
}

fn add_headers<'a>(
    mut request: aws_smithy_runtime_api::http::Request,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<aws_smithy_runtime_api::http::Request, ApiError> {
    for (name, value) in headers {
        request
            .headers_mut()
            .try_insert(name.to_string(), value.to_string())
            .map_err(|e| request_error("building the request", &e))?;
    }
    Ok(request)
}

/// `aws-sigv4`'s general signer: for endpoints with a path, which need its URI normalisation,
/// and as the reference [`quick_signed_request`] is tested against.
fn signed_request(
    route: &Route,
    identity: &Identity,
    arn: &str,
    time: SystemTime,
) -> Result<aws_smithy_runtime_api::http::Request, ApiError> {
    let body = request_body(arn);
    let headers = [
        ("content-type", CONTENT_TYPE),
        ("host", route.host.as_str()),
        ("x-amz-target", TARGET),
    ];
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region(&route.region)
        .name(&route.service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| request_error("signing", &e))?
        .into();
    let uri = route.uri.to_string();
    let signable = SignableRequest::new(
        "POST",
        &uri,
        headers.into_iter(),
        SignableBody::Bytes(&body),
    )
    .map_err(|e| request_error("signing", &e))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| request_error("signing", &e))?
        .into_parts();
    add_headers(base_request(route, body)?, instructions.headers())
}

/// SigV4 for the one request this path sends to `/`, with a signing key derived once a day.
/// The general signer rebuilds the key and a generic canonical request on every call, which
/// was a third of this path's CPU. The test `quick_signature_equals_aws_sigv4` holds the two to
/// the same bytes.
fn quick_signed_request(
    route: &Route,
    creds: &Credentials,
    key: &[u8],
    amz_date: &str,
    arn: &str,
) -> Result<aws_smithy_runtime_api::http::Request, ApiError> {
    use sha2::{Digest, Sha256};
    let body = request_body(arn);
    let token = creds.session_token();
    let signed_headers = if token.is_some() {
        "content-type;host;x-amz-date;x-amz-security-token;x-amz-target"
    } else {
        "content-type;host;x-amz-date;x-amz-target"
    };
    // Pushed piece by piece: `format!` was most of this function's cost outside SHA-256.
    let mut canonical = String::with_capacity(256 + token.map_or(0, str::len));
    for part in [
        "POST\n/\n\ncontent-type:",
        CONTENT_TYPE,
        "\nhost:",
        &route.host,
        "\nx-amz-date:",
        amz_date,
        "\n",
    ] {
        canonical.push_str(part);
    }
    if let Some(token) = token {
        canonical.push_str("x-amz-security-token:");
        canonical.push_str(token.trim());
        canonical.push('\n');
    }
    for part in ["x-amz-target:", TARGET, "\n\n", signed_headers, "\n"] {
        canonical.push_str(part);
    }
    canonical.push_str(hex_digest(&Sha256::digest(&body)).as_str());
    let mut scope = String::with_capacity(64);
    for part in [
        &amz_date[..8],
        "/",
        &route.region,
        "/",
        &route.service,
        "/aws4_request",
    ] {
        scope.push_str(part);
    }
    let mut string_to_sign = String::with_capacity(160);
    for part in [
        "AWS4-HMAC-SHA256\n",
        amz_date,
        "\n",
        &scope,
        "\n",
        hex_digest(&Sha256::digest(canonical.as_bytes())).as_str(),
    ] {
        string_to_sign.push_str(part);
    }
    let signature = v4::calculate_signature(key, string_to_sign.as_bytes());
    let mut authorization = String::with_capacity(256);
    for part in [
        "AWS4-HMAC-SHA256 Credential=",
        creds.access_key_id(),
        "/",
        &scope,
        ", SignedHeaders=",
        signed_headers,
        ", Signature=",
        &signature,
    ] {
        authorization.push_str(part);
    }
    let mut request = base_request(route, body)?;
    let headers = request.headers_mut();
    let mut insert = |name: &'static str, value: String| {
        headers
            .try_insert(name, value)
            .map(|_| ())
            .map_err(|e| request_error("building the request", &e))
    };
    insert("x-amz-date", amz_date.to_string())?;
    insert("authorization", authorization)?;
    if let Some(token) = token {
        insert("x-amz-security-token", token.to_string())?;
    }
    Ok(request)
}

/// A SHA-256 digest in lower-case hex, without a heap allocation.
struct HexDigest([u8; 64]);

impl HexDigest {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex is ASCII")
    }
}

fn hex_digest(digest: &[u8]) -> HexDigest {
    let mut out = [0u8; 64];
    hex::encode_to_slice(digest, &mut out).expect("a SHA-256 digest is 32 bytes");
    HexDigest(out)
}

/// `YYYYMMDDTHHMMSSZ`, SigV4's timestamp.
fn amz_date(time: SystemTime) -> String {
    let mut out = String::with_capacity(16);
    let rfc3339 = humantime::format_rfc3339_seconds(time).to_string();
    out.extend(rfc3339.chars().filter(|c| !matches!(c, '-' | ':')));
    out
}

fn connector_error(e: &ConnectorError) -> ApiError {
    ApiError::new(
        Op::GetResourcePolicy,
        dispatch_class(e),
        None,
        format!("request failed: {}", super::error_chain(e)),
    )
}

#[derive(serde::Deserialize)]
struct Output {
    /// Absent or null reads as "", as on the SDK path (its output defaults the field to ""):
    /// both paths must see the same answer the same way.
    #[serde(rename = "Policy", default)]
    policy: Option<String>,
}

/// Reads a response as the SDK's awsJson1.1 protocol does (`aws-smithy-json`'s error
/// envelope): the test `answers_read_as_the_sdk_reads_them` holds the two paths to the same
/// reading of each shape.
fn parse_response(
    status: u16,
    error_type: Option<&str>,
    body: &[u8],
) -> Result<Option<String>, ApiError> {
    let op = Op::GetResourcePolicy;
    if (200..300).contains(&status) {
        // An empty body is an empty output to the SDK.
        if body.trim_ascii().is_empty() {
            return none_if_empty(String::new());
        }
        let out: Output = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                op,
                ErrorClass::Retryable,
                None,
                format!("bad response: {e}"),
            )
        })?;
        return none_if_empty(out.policy.unwrap_or_default());
    }
    // The header, else the body's `code`, else its `__type`; a body that is not a JSON object
    // (a proxy's HTML page) has neither. Duplicate keys are no reason to drop the code.
    let parsed: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let field = |key: &str| parsed.get(key).and_then(serde_json::Value::as_str);
    let code = error_type
        .or_else(|| field("code"))
        .or_else(|| field("__type"))
        .map(aws_smithy_schema::error_envelope::sanitize_error_code);
    let message = ["message", "Message", "errorMessage"]
        .into_iter()
        .find_map(field)
        .map_or_else(|| format!("HTTP {status}"), str::to_string);
    ApiError::from_service(op, code, status, message).or_no_policy()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Route {
        Route::from_signed(
            &"https://111122223333.control-kinesis.eu-west-1.amazonaws.com/"
                .parse()
                .unwrap(),
            "AWS4-HMAC-SHA256 Credential=AKID/20261126/eu-west-1/kinesis/aws4_request, \
             SignedHeaders=host, Signature=abc",
        )
        .unwrap()
    }

    #[test]
    fn route_comes_from_the_sdk_signature() {
        let r = route();
        assert_eq!(
            r.host,
            "111122223333.control-kinesis.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            (r.region.as_str(), r.service.as_str()),
            ("eu-west-1", "kinesis")
        );
        assert_eq!(r.uri.path(), "/");
        assert!(Route::from_signed(&"http://h/".parse().unwrap(), "garbage").is_none());
    }

    /// Fails the call once the SDK has signed it, so nothing is sent.
    #[derive(Debug)]
    struct StopBeforeSending;

    impl Intercept for StopBeforeSending {
        fn name(&self) -> &'static str {
            "stop-before-sending"
        }

        fn read_before_transmit(
            &self,
            _: &BeforeTransmitInterceptorContextRef<'_>,
            _: &RuntimeComponents,
            _: &mut ConfigBag,
        ) -> Result<(), BoxError> {
            Err("stopped before sending".into())
        }
    }

    /// The route the SDK records for a scope's first read, configured as `AwsKinesis::new`
    /// configures it (the endpoint on the shared configuration), and what `Route::told` says,
    /// for an ARN of the region's partition.
    async fn recorded_and_told(
        endpoint: &str,
        region: &str,
        fips: bool,
        dual_stack: bool,
    ) -> (Option<Route>, Option<Route>) {
        let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .credentials_provider(Credentials::new("AKID", "secret", None, None, "t"))
            .endpoint_url(endpoint)
            .use_fips(fips)
            .use_dual_stack(dual_stack)
            .load()
            .await;
        let recorder = RouteRecorder::default();
        let conf = aws_sdk_kinesis::config::Builder::from(&base)
            .interceptor(recorder.clone())
            .interceptor(StopBeforeSending)
            .build();
        let sent = aws_sdk_kinesis::Client::from_conf(conf)
            .get_resource_policy()
            .resource_arn(format!(
                "arn:{}:kinesis:{region}:111122223333:stream/s",
                crate::arn::partition_of(region)
            ))
            .send()
            .await;
        assert!(
            sent.is_err(),
            "{endpoint}: the call must stop before it is sent"
        );
        let told = Route::told(
            endpoint,
            region,
            base.use_fips() == Some(true),
            base.use_dual_stack() == Some(true),
        );
        (recorder.get().cloned(), told)
    }

    #[tokio::test]
    async fn a_told_route_is_the_one_the_sdk_records() {
        for endpoint in [
            "http://127.0.0.1:4567",
            "http://localhost:4567",
            "http://LocalHost:4567",
            "https://kinesis.example.com",
            "https://kinesis.example.com:443",
            "http://kinesis.example.com:80",
            "http://[::1]:4567",
            "https://vpce-0a1b-c2d3.kinesis.eu-west-1.vpce.amazonaws.com",
        ] {
            for region in ["us-east-1", "cn-north-1", "us-gov-west-1", "us-iso-east-1"] {
                let (recorded, told) = recorded_and_told(endpoint, region, false, false).await;
                assert!(told.is_some(), "{endpoint} in {region}: no route told");
                assert_eq!(told, recorded, "{endpoint} in {region}");
            }
        }
        // Left to the SDK: it refuses FIPS and dual-stack with a custom endpoint, and joins a
        // path with the operation's own. A told route must then be none.
        for (endpoint, fips, dual_stack) in [
            ("https://kinesis.example.com", true, false),
            ("https://kinesis.example.com", false, true),
            ("http://127.0.0.1:4567/", false, false),
            ("http://127.0.0.1:4567/kinesis", false, false),
            ("http://127.0.0.1:4567/kinesis/", false, false),
            ("ftp://127.0.0.1:4567", false, false),
        ] {
            let (recorded, told) = recorded_and_told(endpoint, "us-east-1", fips, dual_stack).await;
            assert!(
                told.is_none() || told == recorded,
                "{endpoint}: {told:?} vs {recorded:?}"
            );
            if fips || dual_stack {
                assert_eq!((recorded, told), (None, None), "{endpoint}");
            }
        }
    }

    #[test]
    fn a_credentials_timeout_is_retried_and_missing_credentials_are_not() {
        use aws_sdk_kinesis::operation::get_resource_policy::GetResourcePolicyError;
        let no_credentials =
            |e: &CredentialsError| super::super::no_credentials(Op::GetResourcePolicy, e);
        let timed_out = CredentialsError::provider_timed_out(Duration::from_secs(5));
        assert_eq!(no_credentials(&timed_out).class, ErrorClass::Retryable);
        let missing = || CredentialsError::not_loaded("no keys anywhere");
        let e = no_credentials(&missing());
        assert_eq!(e.class, ErrorClass::Fatal);
        assert!(e.message.starts_with("no credentials: "), "{}", e.message);
        // The SDK path says it in the same words: a plan groups one failure once.
        let sdk: aws_sdk_kinesis::error::SdkError<GetResourcePolicyError, _> =
            aws_sdk_kinesis::error::SdkError::dispatch_failure(ConnectorError::other(
                Box::new(missing()),
                None,
            ));
        let via_sdk = super::super::classify(Op::GetResourcePolicy, &sdk);
        assert_eq!((via_sdk.class, via_sdk.message), (e.class, e.message));
    }

    /// Each shape of answer, read by the direct path and by the SDK (its real deserializer,
    /// behind aws-smithy-mocks): the same policy or none, the same error class and code. A
    /// scope's first read goes through the SDK and the rest do not, so a difference would
    /// make one resource's answer mean something else than its neighbour's.
    #[tokio::test]
    async fn answers_read_as_the_sdk_reads_them() {
        use aws_smithy_mocks::{RuleMode, mock, mock_client};
        let shapes: &[(u16, Option<&str>, &[u8])] = &[
            (200, None, br#"{"Policy":"{\"Version\":\"2012-10-17\"}"}"#),
            (200, None, br#"{"Policy":"{}"}"#),
            (200, None, b"{}"),
            (200, None, b""),
            (200, None, br#"{"Policy":null}"#),
            (400, None, br#"{"__type":"LimitExceededException","message":"Rate exceeded"}"#),
            (400, None, br#"{"code":"LimitExceededException","message":"Rate exceeded"}"#),
            (400, None, br#"{"__type":"AccessDeniedException","code":"LimitExceededException"}"#),
            (400, None, br#"{"__type":"LimitExceededException","message":"a","Message":"b"}"#),
            (400, None, br#"{"__type":"com.amazonaws.kinesis#AccessDeniedException","Message":"no"}"#),
            (400, None, br#"{"__type":"ResourceNotFoundException","message":"No resource policy exists for arn"}"#),
            (400, None, br#"{"__type":"ResourceNotFoundException","message":"Stream x not found"}"#),
            (400, Some("InvalidArgumentException:http://x"), b""),
            (400, Some("a:http://x#y"), b""),
            (500, None, br#"{"__type":"InternalFailure","message":"oops"}"#),
            (503, None, b"<html>busy</html>"),
        ];
        let reading = |r: Result<Option<String>, ApiError>| match r {
            Ok(policy) => format!("policy {policy:?}"),
            Err(e) => format!("{:?} {:?}", e.class, e.code),
        };
        for &(status, header, body) in shapes {
            let rule =
                mock!(aws_sdk_kinesis::Client::get_resource_policy).then_http_response(move || {
                    let mut r = aws_smithy_runtime_api::http::Response::new(
                        aws_smithy_runtime_api::http::StatusCode::try_from(status).unwrap(),
                        SdkBody::from(body),
                    );
                    if let Some(h) = header {
                        r.headers_mut().insert("x-amzn-errortype", h.to_string());
                    }
                    r
                });
            let sdk = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&rule], |c| c
                .retry_config(aws_config::retry::RetryConfig::disabled()));
            let arn = "arn:aws:kinesis:us-east-1:111122223333:stream/s";
            let sent = sdk.get_resource_policy().resource_arn(arn).send().await;
            assert_eq!(
                reading(parse_response(status, header, body)),
                reading(super::super::sdk_answer(sent)),
                "{status} {header:?} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn responses_map_like_the_sdk_path() {
        let ok = parse_response(200, None, br#"{"Policy":"{\"Version\":\"2012-10-17\"}"}"#);
        assert_eq!(ok.unwrap().as_deref(), Some(r#"{"Version":"2012-10-17"}"#));
        assert_eq!(
            parse_response(200, None, br#"{"Policy":"{}"}"#).unwrap(),
            None
        );
        // An answer without its required policy is not "no policy".
        for empty in [
            &br#"{}"#[..],
            b"",
            br#"{"Policy":null}"#,
            br#"{"Policy":" "}"#,
        ] {
            let e = parse_response(200, None, empty).unwrap_err();
            assert!(
                e.is_retryable() && e.message.contains("holds no policy"),
                "{e:?}"
            );
        }

        let limit = br#"{"__type":"LimitExceededException","message":"Rate exceeded"}"#;
        let e = parse_response(400, None, limit).unwrap_err();
        assert_eq!(e.class, ErrorClass::Retryable);
        assert_eq!(e.code.as_deref(), Some("LimitExceededException"));
        assert_eq!(e.message, "Rate exceeded");

        let denied = br#"{"__type":"com.amazonaws.kinesis#AccessDeniedException","Message":"no"}"#;
        let e = parse_response(400, None, denied).unwrap_err();
        assert_eq!(e.class, ErrorClass::Fatal);
        assert_eq!(e.code.as_deref(), Some("AccessDeniedException"));

        let none = br#"{"__type":"ResourceNotFoundException","message":"No resource policy exists for arn"}"#;
        assert_eq!(parse_response(400, None, none).unwrap(), None);
        let gone = br#"{"__type":"ResourceNotFoundException","message":"Stream x not found"}"#;
        assert_eq!(
            parse_response(400, None, gone).unwrap_err().class,
            ErrorClass::NotFound
        );

        let e = parse_response(503, None, b"<html>busy</html>").unwrap_err();
        assert_eq!(
            (e.class, e.message.as_str()),
            (ErrorClass::Retryable, "HTTP 503")
        );
        let e = parse_response(400, Some("InvalidArgumentException:http://x"), b"").unwrap_err();
        assert_eq!(e.code.as_deref(), Some("InvalidArgumentException"));
        assert_eq!(e.class, ErrorClass::Fatal);
    }

    fn header<'a>(req: &'a aws_smithy_runtime_api::http::Request, name: &str) -> Option<&'a str> {
        req.headers().get(name)
    }

    #[test]
    fn requests_are_signed_for_the_recorded_route() {
        let identity: Identity =
            Credentials::new("AKIDEXAMPLE", "secret", Some("token".into()), None, "t").into();
        let req = signed_request(
            &route(),
            &identity,
            "arn:aws:kinesis:x",
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        let auth = header(&req, "authorization").unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/19700101/eu-west-1/kinesis/aws4_request"
            ),
            "{auth}"
        );
        assert!(
            auth.contains(
                "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target"
            ),
            "{auth}"
        );
        assert_eq!(header(&req, "x-amz-target"), Some(TARGET));
        assert_eq!(header(&req, "x-amz-security-token"), Some("token"));
        assert_eq!(
            req.body().bytes(),
            Some(&br#"{"ResourceARN":"arn:aws:kinesis:x"}"#[..])
        );
    }

    /// Refuses every fetch, counting them (a role that cannot be assumed).
    #[derive(Debug)]
    struct Refusing(Arc<std::sync::atomic::AtomicU32>);

    impl ProvideCredentials for Refusing {
        fn provide_credentials<'a>(&'a self) -> ProvideCredentialsFuture<'a>
        where
            Self: 'a,
        {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ProvideCredentialsFuture::ready(Err(CredentialsError::provider_error(
                "AccessDenied: not authorized to perform sts:AssumeRole",
            )))
        }
    }

    #[tokio::test]
    async fn a_failed_fetch_is_shared_and_names_the_role() {
        let fetches = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let cache = CredentialCache::new(SharedCredentialsProvider::new(Refusing(Arc::clone(
            &fetches,
        ))))
        .labelled("assuming arn:aws:iam::222233334444:role/kpr for account 222233334444".into());
        let all = futures::future::join_all((0..8).map(|_| cache.credentials())).await;
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
        for r in all {
            let e = r.unwrap_err().to_string();
            assert!(
                e.contains("assuming arn:aws:iam::222233334444:role/kpr for account 222233334444: AccessDenied"),
                "{e}"
            );
        }
    }

    /// Counts fetches; its credentials expire `ttl` from the fetch.
    #[derive(Debug)]
    struct Counting {
        fetches: Arc<std::sync::atomic::AtomicU32>,
        ttl: Duration,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(&'a self) -> ProvideCredentialsFuture<'a>
        where
            Self: 'a,
        {
            let n = self
                .fetches
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let expiry = SystemTime::now() + self.ttl;
            let creds = Credentials::new(format!("AKID{n}"), "s", None, Some(expiry), "t");
            ProvideCredentialsFuture::ready(Ok(creds))
        }
    }

    fn counting(ttl: Duration) -> (Arc<std::sync::atomic::AtomicU32>, CredentialCache) {
        let fetches = Arc::new(0.into());
        let provider = Counting {
            fetches: Arc::clone(&fetches),
            ttl,
        };
        let cache = CredentialCache::new(SharedCredentialsProvider::new(provider));
        (fetches, cache)
    }

    #[tokio::test]
    async fn credentials_are_fetched_once_while_fresh() {
        let (fetches, cache) = counting(Duration::from_secs(3600));
        let all = futures::future::join_all((0..8).map(|_| cache.credentials())).await;
        assert!(
            all.iter()
                .all(|c| c.as_ref().unwrap().access_key_id() == "AKID0")
        );
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn credentials_near_expiry_are_reused_a_while_not_fetched_per_call() {
        // Inside the refresh buffer from the start (a credential_process that hands out its
        // session to the end): fetched once, not once a call.
        let (fetches, cache) = counting(CREDENTIALS_BUFFER / 2);
        for _ in 0..5 {
            assert_eq!(cache.credentials().await.unwrap().access_key_id(), "AKID0");
        }
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn when_credentials_are_asked_for_again() {
        let at = |ttl: Option<Duration>| {
            let expiry = ttl.map(|t| SystemTime::now() + t);
            let cached = Cached::new(Arc::new(Credentials::new("a", "s", None, expiry, "t")));
            cached
                .refresh_at
                .duration_since(SystemTime::now())
                .unwrap_or_default()
        };
        let near =
            |got: Duration, want: Duration| got <= want && want - got < Duration::from_secs(2);
        let hour = Duration::from_secs(3600);
        // The buffer ahead of expiry when there is room; a minute, or up to ten seconds
        // before expiry, when there is not; a second at least.
        assert!(near(at(Some(hour)), hour - CREDENTIALS_BUFFER));
        assert!(near(at(Some(Duration::from_secs(120))), SHORT_LIVED_REUSE));
        assert!(near(
            at(Some(Duration::from_secs(30))),
            Duration::from_secs(20)
        ));
        assert!(near(
            at(Some(Duration::from_secs(3))),
            Duration::from_secs(1)
        ));
        assert!(near(at(None), NO_EXPIRY_REUSE));
    }

    /// Counts the loads started. The first never answers (`None`: a credential_process that
    /// hung once) or fails after the time given; the others answer at once.
    #[derive(Debug)]
    struct FirstLoad(Arc<std::sync::atomic::AtomicU32>, Option<Duration>);

    impl ProvideCredentials for FirstLoad {
        fn provide_credentials<'a>(&'a self) -> ProvideCredentialsFuture<'a>
        where
            Self: 'a,
        {
            if self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                let creds = Credentials::new("AKID", "s", None, None, "t");
                return ProvideCredentialsFuture::ready(Ok(creds));
            }
            let fails_after = self.1;
            ProvideCredentialsFuture::new(async move {
                let Some(after) = fails_after else {
                    return std::future::pending().await;
                };
                tokio::time::sleep(after).await;
                Err(CredentialsError::provider_error("exited with code 3"))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_that_hangs_times_out_is_not_started_again_and_again_and_recovers() {
        let loads = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let cache = CredentialCache::new(SharedCredentialsProvider::new(FirstLoad(
            Arc::clone(&loads),
            None,
        )));
        for _ in 0..3 {
            let e = cache.credentials().await.unwrap_err();
            // Retried, as any timeout: the provider may answer next time.
            assert!(e.is_retryable(), "{e}");
        }
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Given up after a while for a new load, which answers.
        tokio::time::advance(LOAD_ABANDONED).await;
        assert_eq!(cache.credentials().await.unwrap().access_key_id(), "AKID");
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_load_nobody_took_up_is_not_handed_out_later() {
        let loads = Arc::new(std::sync::atomic::AtomicU32::new(0));
        // The first load fails a second after the call stopped waiting for it.
        let cache = CredentialCache::new(SharedCredentialsProvider::new(FirstLoad(
            Arc::clone(&loads),
            Some(LOAD_TIMEOUT + Duration::from_secs(1)),
        )));
        assert!(cache.credentials().await.unwrap_err().is_retryable());
        // The load fails with nobody waiting; a call well after it asks again.
        tokio::time::sleep(Duration::from_secs(1) + FAILURE_MEMORY).await;
        assert_eq!(cache.credentials().await.unwrap().access_key_id(), "AKID");
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_credentials_are_loaded_again_once_ten_seconds_old() {
        let (fetches, cache) = counting(Duration::from_secs(3600));
        cache.credentials().await.unwrap();
        // Just loaded: the provider has nothing newer yet; asked again once they are 10 s
        // old, not only when refused again then.
        cache.forget();
        cache.credentials().await.unwrap();
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
        let left = {
            let slot = cache.current.lock().unwrap();
            let at = slot.as_ref().unwrap().refresh_at;
            at.duration_since(SystemTime::now()).unwrap_or_default()
        };
        assert!(
            left <= FAILURE_MEMORY && left > FAILURE_MEMORY - Duration::from_secs(2),
            "{left:?}"
        );
        tokio::time::advance(FAILURE_MEMORY).await;
        cache.forget();
        assert_eq!(cache.credentials().await.unwrap().access_key_id(), "AKID1");
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// kpr's client for an endpoint at `url`, which kpr is also told as its endpoint when
    /// `told` says so, its credentials from a [`Counting`] provider (an hour each); with the
    /// count of loads, and its transport.
    fn against(
        url: &str,
        told: Option<&str>,
    ) -> (
        crate::kinesis::AwsKinesis,
        Arc<std::sync::atomic::AtomicU32>,
        Transport,
    ) {
        let fetches = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let provider = Counting {
            fetches: Arc::clone(&fetches),
            ttl: Duration::from_secs(3600),
        };
        let transport = Transport::without_proxy(Duration::from_secs(5));
        let base = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .http_client(transport.clone())
            .build();
        let opts = crate::kinesis::ClientOptions {
            endpoint_url: told.map(str::to_string),
            ..Default::default()
        };
        let api = crate::kinesis::AwsKinesis::with_config(base, opts, transport.clone());
        (api, fetches, transport)
    }

    /// A read or a write whose credentials the service refused makes the scope load them
    /// again: a session revoked or rotated early is not used until its stated expiry.
    #[tokio::test]
    async fn credentials_the_service_refuses_are_loaded_again() {
        use crate::kinesis::Kinesis;
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let refuse = Arc::clone(&refusing);
        let app = axum::Router::new().fallback(move || {
            let refused = refuse.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if refused {
                    (
                        http::StatusCode::BAD_REQUEST,
                        [("x-amzn-errortype", "ExpiredTokenException")],
                        r#"{"__type":"ExpiredTokenException","message":"The security token included in the request is expired"}"#,
                    )
                } else {
                    (http::StatusCode::OK, [("x-amzn-requestid", "1")], r#"{"Policy":"{}"}"#)
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (api, fetches, _) = against(&url, None);
        let arn =
            crate::arn::ResourceArn::parse("arn:aws:kinesis:us-east-1:111122223333:stream/orders")
                .unwrap();
        let loads = || fetches.load(std::sync::atomic::Ordering::SeqCst);
        // The SDK's read, then a direct one.
        api.get_policy(&arn).await.unwrap();
        api.get_policy(&arn).await.unwrap();
        assert_eq!(loads(), 1);
        let refused = async |write: bool| {
            // Loaded a while ago: the provider may well have newer ones by now.
            tokio::time::pause();
            tokio::time::advance(FAILURE_MEMORY).await;
            tokio::time::resume();
            refusing.store(true, std::sync::atomic::Ordering::SeqCst);
            let e = if write {
                api.put_policy(&arn, "{}").await.unwrap_err()
            } else {
                api.get_policy(&arn).await.unwrap_err()
            };
            assert!(e.refuses_credentials(), "{e}");
            refusing.store(false, std::sync::atomic::Ordering::SeqCst);
            api.get_policy(&arn).await.unwrap();
        };
        refused(false).await;
        assert_eq!(loads(), 2, "after a refused direct read");
        refused(true).await;
        assert_eq!(loads(), 3, "after a refused write through the SDK");
    }

    type Seen = Arc<std::sync::Mutex<Vec<(String, std::net::SocketAddr)>>>;

    /// A local endpoint that answers every request with an empty policy and notes each
    /// request's User-Agent and connection.
    async fn policy_server() -> (String, Seen) {
        use axum::extract::ConnectInfo;
        use std::net::SocketAddr;
        let seen = Seen::default();
        let log = Arc::clone(&seen);
        let app = axum::Router::new().fallback(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: http::HeaderMap| {
                let agent = headers
                    .get("user-agent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                log.lock().unwrap().push((agent, peer));
                async { r#"{"Policy":"{}"}"# }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        (url, seen)
    }

    /// One scope, two reads: the first through the SDK, the second direct. Both must use the
    /// credentials of a single fetch (an assumed role would otherwise cost two STS calls).
    /// The SDK's first read and the direct reads after it: one credentials fetch, one
    /// connection (one pool), and no root certificates for a plain-HTTP endpoint.
    #[tokio::test]
    async fn the_sdk_and_the_direct_path_share_credentials_and_connection() {
        use crate::kinesis::Kinesis;
        let (url, seen) = policy_server().await;
        let (api, fetches, transport) = against(&url, None);
        let arn =
            crate::arn::ResourceArn::parse("arn:aws:kinesis:us-east-1:111122223333:stream/orders")
                .unwrap();
        for _ in 0..3 {
            assert_eq!(api.get_policy(&arn).await.unwrap(), None);
        }
        let seen = seen.lock().unwrap().clone();
        let agents: Vec<&str> = seen.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(agents.len(), 3, "{agents:?}");
        assert!(
            !agents[0].starts_with("kpr/"),
            "first read via the SDK: {agents:?}"
        );
        assert!(
            agents[1..].iter().all(|a| a.starts_with("kpr/")),
            "later reads direct: {agents:?}"
        );
        assert!(
            seen.iter().all(|(_, peer)| *peer == seen[0].1),
            "one connection for both paths: {seen:?}"
        );
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(!transport.loaded_tls(), "no TLS for an http:// endpoint");
    }

    /// An endpoint told to kpr needs no SDK read to find it: every read is direct, and the
    /// scope's SDK client, which only writes and listings need, is never built.
    #[tokio::test]
    async fn a_told_endpoint_is_read_directly_and_builds_no_sdk_client() {
        use crate::kinesis::Kinesis;
        let (url, seen) = policy_server().await;
        let (api, fetches, _) = against(&url, Some(&url));
        let arn =
            crate::arn::ResourceArn::parse("arn:aws:kinesis:eu-west-1:111122223333:stream/orders")
                .unwrap();
        for _ in 0..3 {
            assert_eq!(api.get_policy(&arn).await.unwrap(), None);
        }
        let agents: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(a, _)| a.clone())
            .collect();
        assert!(
            agents.len() == 3 && agents.iter().all(|a| a.starts_with("kpr/")),
            "{agents:?}"
        );
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
        let scope = api.scope(&arn.scope).await;
        assert!(scope.sdk.get().is_none(), "no SDK client was needed");
        // A write needs it.
        api.put_policy(&arn, "{}").await.unwrap();
        assert!(scope.sdk.get().is_some());
        let last = seen.lock().unwrap().last().map(|(a, _)| a.clone());
        assert!(last.is_some_and(|a| !a.starts_with("kpr/")), "{seen:?}");
    }

    #[test]
    fn amz_date_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(amz_date(t), "20261118T110640Z");
    }

    /// The quick signer must produce exactly what `aws-sigv4` produces, for every shape of
    /// credentials, host, region, day and ARN: the emulators do not check signatures, AWS does.
    #[test]
    fn quick_signature_equals_aws_sigv4() {
        let routes = [
            route(),
            Route::from_signed(
                &"http://127.0.0.1:4567".parse().unwrap(),
                "AWS4-HMAC-SHA256 Credential=x/20261126/us-east-1/kinesis/aws4_request, S",
            )
            .unwrap(),
            Route::from_signed(
                &"https://kinesis-fips.us-gov-west-1.amazonaws.com/"
                    .parse()
                    .unwrap(),
                "AWS4-HMAC-SHA256 Credential=x/20261126/us-gov-west-1/kinesis/aws4_request, S",
            )
            .unwrap(),
        ];
        let creds = [
            Credentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                None,
                None,
                "t",
            ),
            Credentials::new(
                "ASIAEXAMPLE",
                "secret/with+chars=",
                Some("FwoGZXIvYXdzEJr//////////wEaDH+token/with=chars".into()),
                None,
                "t",
            ),
        ];
        let arns = [
            "arn:aws:kinesis:eu-west-1:111122223333:stream/orders",
            "arn:aws:kinesis:us-east-1:111122223333:stream/a.b_c-d/consumer/c-1:1700000000",
            "arn:aws-us-gov:kinesis:us-gov-west-1:111122223333:stream/\"quoted\"",
        ];
        let times = [
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000 + 86_399),
            SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_800),
        ];
        let mut checked = 0;
        for route in &routes {
            for c in &creds {
                let cache = CredentialCache::new(SharedCredentialsProvider::new(c.clone()));
                for arn in arns {
                    for time in times {
                        let reference =
                            signed_request(route, &Identity::from(c.clone()), arn, time).unwrap();
                        let date = amz_date(time);
                        let key = cache.signing_key(c, route, time, &date[..8]);
                        let quick = quick_signed_request(route, c, &key, &date, arn).unwrap();
                        for name in [
                            "authorization",
                            "x-amz-date",
                            "x-amz-security-token",
                            "host",
                        ] {
                            assert_eq!(
                                header(&quick, name),
                                header(&reference, name),
                                "{name} for {arn} at {time:?} to {}",
                                route.uri
                            );
                        }
                        assert_eq!(quick.body().bytes(), reference.body().bytes());
                        assert_eq!(quick.uri(), reference.uri());
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 54);
    }
}
