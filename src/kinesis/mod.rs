//! The Kinesis API behind a small trait.
//!
//! [`Kinesis`] is one attempt per call, nothing more: [`AwsKinesis`] is the real SDK client (its
//! own retries switched off) and [`Resilient`] wraps any implementation with the one retry layer,
//! the per-account rate limit and the API metrics. Plan and apply only ever see a `Resilient`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::result::ConnectorError;
use backon::Retryable;
use futures::FutureExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::arn::{ConsumerRef, ResourceArn, Scope};
use crate::signals::Interrupt;

mod direct;
mod transport;
use direct::{CredentialCache, DirectReader, Route, RouteRecorder, SharedCache};
pub use transport::Transport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    GetResourcePolicy,
    PutResourcePolicy,
    DeleteResourcePolicy,
    DescribeStreamConsumer,
    ListStreams,
    ListStreamConsumers,
    DescribeStreamSummary,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::GetResourcePolicy => "GetResourcePolicy",
            Op::PutResourcePolicy => "PutResourcePolicy",
            Op::DeleteResourcePolicy => "DeleteResourcePolicy",
            Op::DescribeStreamConsumer => "DescribeStreamConsumer",
            Op::ListStreams => "ListStreams",
            Op::ListStreamConsumers => "ListStreamConsumers",
            Op::DescribeStreamSummary => "DescribeStreamSummary",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a caller decides on: retry, treat as "not there", or give up on this resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// ResourceInUse, LimitExceeded, throttling, 5xx, timeouts, connection failures.
    Retryable,
    NotFound,
    Fatal,
}

#[derive(Debug, Clone, thiserror::Error)]
pub struct ApiError {
    pub op: Op,
    pub class: ErrorClass,
    /// The service's error code (`AccessDeniedException`, ...) when it sent one.
    pub code: Option<String>,
    pub message: String,
    /// How many attempts were made before giving up (set by [`Resilient`]).
    pub attempts: u32,
    /// Some attempt got no answer that could be read, after its request may have reached the
    /// service (a dropped connection, a timeout, an unreadable answer) or a 5xx, which the
    /// service may send after acting: a write so failed may have taken effect. Not set when
    /// the connection was never made. [`Resilient`] keeps it across attempts, since the last
    /// attempt's error (an expired token, say) does not undo what an earlier one did.
    pub unanswered: bool,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.op)?;
        if let Some(code) = &self.code {
            write!(f, "{code}: ")?;
        }
        write!(f, "{}", self.message)?;
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

/// A message as [`ApiError`] displays it, split into the error and the attempts it ends with
/// (`None` for one attempt): the same error after 2 and after 5 attempts is one error.
pub fn split_attempts(message: &str) -> (&str, Option<u32>) {
    message
        .strip_suffix(" attempts)")
        .and_then(|rest| {
            let at = rest.rfind(" (after ")?;
            let n = rest[at + " (after ".len()..].parse().ok()?;
            Some((&message[..at], Some(n)))
        })
        .unwrap_or((message, None))
}

impl ApiError {
    /// The service refused the request's credentials: expired, revoked, or unknown to it.
    pub fn refuses_credentials(&self) -> bool {
        matches!(
            self.code.as_deref(),
            Some(
                "ExpiredTokenException"
                    | "ExpiredToken"
                    | "UnrecognizedClientException"
                    | "InvalidClientTokenId"
                    | "InvalidSignatureException"
            )
        )
    }

    pub fn is_retryable(&self) -> bool {
        self.class == ErrorClass::Retryable
    }

    fn new(op: Op, class: ErrorClass, code: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            op,
            class,
            code: code.map(str::to_string),
            message: message.into(),
            attempts: 1,
            unanswered: false,
        }
    }

    fn unanswered(mut self) -> Self {
        self.unanswered = true;
        self
    }

    /// A short, bounded label for metrics.
    pub fn outcome(&self) -> &'static str {
        match (self.class, self.code.as_deref()) {
            (_, Some("ResourceInUseException")) => "resource_in_use",
            (_, Some("LimitExceededException")) => "limit_exceeded",
            (_, Some("AccessDeniedException")) => "access_denied",
            (_, Some("InvalidArgumentException")) => "invalid_argument",
            (ErrorClass::NotFound, _) => "not_found",
            (ErrorClass::Retryable, _) => "transient",
            (ErrorClass::Fatal, _) => "error",
        }
    }
}

/// Codes the service uses for "try again later". Kinesis models none as retryable, so the
/// list is ours.
const RETRYABLE_CODES: &[&str] = &[
    "ResourceInUseException",
    "LimitExceededException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// What to do about an error the service answered: the one place that decides what is worth
/// retrying, for the SDK path and the direct read alike.
fn class_of(code: Option<&str>, status: u16) -> ErrorClass {
    match code {
        Some(c) if RETRYABLE_CODES.contains(&c) => ErrorClass::Retryable,
        Some("ResourceNotFoundException") => ErrorClass::NotFound,
        _ if status >= 500 || status == 429 => ErrorClass::Retryable,
        _ => ErrorClass::Fatal,
    }
}

impl ApiError {
    fn from_service(op: Op, code: Option<&str>, status: u16, message: String) -> Self {
        let e = ApiError::new(op, class_of(code, status), code, message);
        if status >= 500 { e.unanswered() } else { e }
    }

    /// kinesis-mock's way of saying "no policy" (AWS answers `{}` instead).
    fn or_no_policy(self) -> Result<Option<String>, ApiError> {
        if self.class == ErrorClass::NotFound && self.message.contains("No resource policy exists")
        {
            Ok(None)
        } else {
            Err(self)
        }
    }
}

/// What to do about a request that got no answer, for the SDK path and the direct read alike.
fn dispatch_class(e: &ConnectorError) -> ErrorClass {
    // A connection closed mid-request is `Other(TransientError)`, not `Io`.
    if e.is_io()
        || e.is_timeout()
        || e.as_other() == Some(aws_config::retry::ErrorKind::TransientError)
    {
        ErrorClass::Retryable
    } else {
        // Missing credentials, bad endpoint configuration, TLS: retrying cannot help.
        ErrorClass::Fatal
    }
}

/// Whether a request failed before its connection was made (refused, no route, a connect
/// timeout, a name that does not resolve): then it never reached the service.
fn never_connected(err: &(dyn std::error::Error + 'static)) -> bool {
    causes(err).any(|e| {
        e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
    })
}

/// `err` and its causes, outermost first.
fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// A policy as read, or `None` when the resource has none (`{}`, as AWS and moto answer).
/// An answer without a policy (an empty body, no `Policy`, or an empty one; the SDK path
/// cannot tell them apart) is no answer: the field is required, and read as "no policy" it
/// would pass `ensure: absent` with a policy in place. It is retried like any unreadable one.
fn none_if_empty(policy: String) -> Result<Option<String>, ApiError> {
    if policy.trim().is_empty() {
        return Err(ApiError::new(
            Op::GetResourcePolicy,
            ErrorClass::Retryable,
            None,
            "bad response: it holds no policy (AWS answers \"{}\" for a resource without one)",
        )
        .unanswered());
    }
    Ok((!crate::policy::is_empty_policy(&policy)).then_some(policy))
}

type GetPolicySent = Result<
    aws_sdk_kinesis::operation::get_resource_policy::GetResourcePolicyOutput,
    SdkError<
        aws_sdk_kinesis::operation::get_resource_policy::GetResourcePolicyError,
        aws_sdk_kinesis::config::http::HttpResponse,
    >,
>;

/// A GetResourcePolicy answer as the SDK path reads it; the direct path reads the same bytes
/// the same way (`direct::parse_response`).
fn sdk_answer(sent: GetPolicySent) -> Result<Option<String>, ApiError> {
    match sent {
        Ok(out) => none_if_empty(out.policy),
        Err(e) => classify(Op::GetResourcePolicy, &e).or_no_policy(),
    }
}

/// Classify an SDK error.
pub fn classify<E>(
    op: Op,
    err: &SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>,
) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    // The same words as the direct path's, so one failure to get credentials reads (and is
    // grouped in a plan) as one, whichever path a call took.
    if let Some(e) = credentials_error_in(err) {
        return no_credentials(op, e);
    }
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let message = se
                .err()
                .message()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}"));
            ApiError::from_service(op, se.err().code(), status, message)
        }
        SdkError::TimeoutError(_) => {
            ApiError::new(op, ErrorClass::Retryable, None, "request timed out").unanswered()
        }
        // An error answer the SDK could not read (a proxy's or firewall's HTML page, an empty
        // 413): judged by its status, in the direct path's words, so a 403 is not retried as
        // a bad answer that "may have taken effect", and both paths group as one failure.
        SdkError::ResponseError(r) if !r.raw().status().is_success() => {
            let status = r.raw().status().as_u16();
            ApiError::from_service(op, None, status, format!("HTTP {status}"))
        }
        SdkError::ResponseError(_) => ApiError::new(
            op,
            ErrorClass::Retryable,
            None,
            format!("bad response: {}", error_chain(err)),
        )
        .unanswered(),
        SdkError::DispatchFailure(d) => {
            let connector = d.as_connector_error();
            let class = connector.map_or(ErrorClass::Fatal, dispatch_class);
            // From the connector's error, as the direct path says it: the same failure reads
            // the same whichever path a call took.
            let cause = match connector {
                Some(c) => error_chain(c),
                None => error_chain(err),
            };
            let e = ApiError::new(op, class, None, format!("request failed: {cause}"));
            if never_connected(err) {
                e
            } else {
                e.unanswered()
            }
        }
        _ => ApiError::new(op, ErrorClass::Fatal, None, error_chain(err)),
    }
}

/// What a credentials failure says: its causes, without its own text ("an error occurred
/// while loading credentials"), which the message made of them says again.
pub(crate) fn credentials_cause(e: &CredentialsError) -> String {
    std::error::Error::source(e).map_or_else(|| e.to_string(), error_chain)
}

/// The SDK's profile provider tells why it could not be built to its first caller only;
/// every later load gets "profile file credentials provider initialization error already
/// taken", and a run's second account, or a service's every later run, would lose the cause
/// (``profile `nosuch` was not defined``). This keeps the last real failure and tells it
/// again in place of that placeholder. Loads run side by side, as the SDK's would: one that
/// gets the placeholder before the cause is known (the caller that took it is still trying
/// the chain's other links) waits for it. (Loads one at a time, 16 accounts behind a
/// credential process of 6 s took 106 s.)
#[derive(Debug)]
struct TellsAgain {
    inner: SharedCredentialsProvider,
    /// The last failure that was not the placeholder: its kind and its message.
    last: tokio::sync::watch::Sender<Option<(CredentialsErrorKind, String)>>,
}

/// Makes a [`CredentialsError`] of one kind from a message.
type CredentialsErrorKind = fn(String) -> CredentialsError;

impl TellsAgain {
    const PLACEHOLDER: &'static str = "initialization error already taken";
    /// How long a placeholder waits for the cause: past it, it is told as it is.
    const CAUSE_WAIT: Duration = Duration::from_secs(60);

    fn new(inner: SharedCredentialsProvider) -> Self {
        Self {
            inner,
            last: tokio::sync::watch::Sender::new(None),
        }
    }

    async fn told_again(&self, e: CredentialsError) -> CredentialsError {
        let placeholder = causes(&e).any(|c| c.to_string().contains(Self::PLACEHOLDER));
        if !placeholder {
            let kind: CredentialsErrorKind = match &e {
                CredentialsError::CredentialsNotLoaded(_) => CredentialsError::not_loaded,
                CredentialsError::InvalidConfiguration(_) => {
                    CredentialsError::invalid_configuration
                }
                CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_) => {
                    CredentialsError::provider_error
                }
                _ => CredentialsError::unhandled,
            };
            self.last.send_replace(Some((kind, credentials_cause(&e))));
            return e;
        }
        let mut cause = self.last.subscribe();
        let known = tokio::time::timeout(Self::CAUSE_WAIT, cause.wait_for(Option::is_some)).await;
        match known {
            Ok(Ok(last)) => match last.as_ref() {
                Some((kind, message)) => kind(message.clone()),
                None => e,
            },
            _ => e,
        }
    }
}

impl ProvideCredentials for TellsAgain {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            match self.inner.provide_credentials().await {
                Ok(creds) => Ok(creds),
                Err(e) => Err(self.told_again(e).await),
            }
        })
    }
}

/// The credentials provider's failure among `err`'s causes, if that is what it is.
fn credentials_error_in<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    causes(err).find_map(|e| e.downcast_ref::<CredentialsError>())
}

/// A call that could not get credentials. A provider that timed out (an AssumeRole refresh
/// behind a slow STS) may answer the next time; missing or misconfigured credentials will not.
pub(crate) fn no_credentials(op: Op, e: &CredentialsError) -> ApiError {
    let text = credentials_cause(e);
    let class = match e {
        CredentialsError::ProviderTimedOut(_) => ErrorClass::Retryable,
        _ => ErrorClass::Fatal,
    };
    ApiError::new(
        op,
        class,
        None,
        format!("no credentials: {}", text.trim_end()),
    )
}

/// An error and its causes, joined by `: `, for a person to read. (The SDK's
/// `DisplayErrorContext` also appends the whole `Debug` form, which buries "Connection refused"
/// in type names and repeats it.) A cause whose text is already shown is left out.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    for cause in causes(err).skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<ResourceArn>,
    pub next: Option<Cursor>,
}

/// Where a listing goes on from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// The service's `NextToken`.
    Token(String),
    /// ListStreams' `ExclusiveStartStreamName`: an endpoint that says `HasMoreStreams` but
    /// sends no token (kinesis-mock, and so LocalStack) pages by the last name listed.
    After(String),
}

impl Cursor {
    fn token(self) -> Option<String> {
        match self {
            Cursor::Token(t) => Some(t),
            Cursor::After(_) => None,
        }
    }
}

/// The calls kpr makes. One attempt each; implementations must not retry.
pub trait Kinesis: Send + Sync {
    /// `Ok(None)` when the resource has no policy (AWS and moto answer `{}`, kinesis-mock a
    /// ResourceNotFoundException "No resource policy exists").
    fn get_policy(
        &self,
        arn: &ResourceArn,
    ) -> impl Future<Output = Result<Option<String>, ApiError>> + Send;
    fn put_policy(
        &self,
        arn: &ResourceArn,
        policy: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    fn delete_policy(&self, arn: &ResourceArn)
    -> impl Future<Output = Result<(), ApiError>> + Send;
    /// The live ARN (with its creation timestamp) of a consumer named without one.
    fn describe_consumer(
        &self,
        arn: &ResourceArn,
    ) -> impl Future<Output = Result<ResourceArn, ApiError>> + Send;
    fn list_streams_page(
        &self,
        scope: &Scope,
        next: Option<Cursor>,
    ) -> impl Future<Output = Result<Page, ApiError>> + Send;
    /// A stream's ARN as the service reports it: how `import` learns the account id when it
    /// was not given (the scope's account may be a placeholder here).
    fn describe_stream_arn(
        &self,
        scope: &Scope,
        name: &str,
    ) -> impl Future<Output = Result<ResourceArn, ApiError>> + Send;
    fn list_consumers_page(
        &self,
        stream: &ResourceArn,
        next: Option<Cursor>,
    ) -> impl Future<Output = Result<Page, ApiError>> + Send;
}

/// Retry bounds. Full jitter (a uniform delay in `[0, min(cap, base * 2^n)]`) spreads many
/// clients hitting one rate limit better than any other schedule.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No retry is scheduled after this much time since the first attempt was sent (time
    /// queued before a retry counts; a retry then waiting its turn may be sent later).
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(120),
        }
    }
}

struct FullJitter<'a> {
    policy: RetryPolicy,
    retries: u32,
    /// When the first attempt was sent: set once the rate limiter let it go, as time queued
    /// behind other calls is not time spent retrying (a queue longer than `max_elapsed` would
    /// otherwise leave a throttled call no retry at all).
    started: &'a OnceLock<Instant>,
}

impl Iterator for FullJitter<'_> {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        if self.retries + 1 >= self.policy.max_attempts {
            return None;
        }
        let cap = self
            .policy
            .base_delay
            .saturating_mul(1u32.checked_shl(self.retries).unwrap_or(u32::MAX))
            .min(self.policy.max_delay);
        let delay = cap.mul_f64(fastrand::f64());
        let elapsed = self.started.get().map_or(Duration::ZERO, Instant::elapsed);
        if elapsed + delay > self.policy.max_elapsed {
            return None;
        }
        self.retries += 1;
        Some(delay)
    }
}

/// `f` applied to each of `items`, at most `limit` calls in flight (at least one), results in
/// the order they complete: every fan-out of API calls goes through here.
///
/// The stream is `Send` by its declared bound. Written inline, a closure over borrowed items
/// inside an async fn makes rustc unable to prove that fn's future `Send` ("implementation of
/// `FnOnce` is not general enough"), and a one-shot command's future runs as a task.
pub fn concurrently<'a, I, F, Fut>(
    items: I,
    limit: usize,
    f: F,
) -> impl futures::Stream<Item = Fut::Output> + Send + 'a
where
    I: IntoIterator,
    I::IntoIter: Send + 'a,
    F: FnMut(I::Item) -> Fut + Send + 'a,
    Fut: Future + Send + 'a,
{
    futures::StreamExt::buffer_unordered(
        futures::StreamExt::map(futures::stream::iter(items), f),
        limit.max(1),
    )
}

/// Wraps a [`Kinesis`] with the per-account rate limit, the retry layer and the API metrics.
pub struct Resilient<K> {
    inner: K,
    retry: RetryPolicy,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl<K: Kinesis> Resilient<K> {
    /// `rate_limit`: requests per second per account; 0 disables the limit.
    pub fn new(inner: K, retry: RetryPolicy, rate_limit: u32) -> Self {
        let limiter = NonZeroU32::new(rate_limit).map(|r| RateLimiter::keyed(Quota::per_second(r)));
        Self {
            inner,
            retry,
            limiter,
        }
    }

    pub fn inner(&self) -> &K {
        &self.inner
    }

    async fn run<T, F, Fut>(&self, op: Op, scope: &Scope, call: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        match self.run_unless(op, scope, None, call).await {
            Some(result) => result,
            None => unreachable!("only a stop withholds a call"),
        }
    }

    /// A call with the rate limit and retries; `None` if `stop` came before its first attempt
    /// was sent (while it waited its turn at the rate limit, say): nothing was sent. Once sent,
    /// a call runs to its end, retries included, whatever `stop` says: its outcome must be
    /// known.
    async fn run_unless<T, F, Fut>(
        &self,
        op: Op,
        scope: &Scope,
        stop: Option<&Interrupt>,
        mut call: F,
    ) -> Option<Result<T, ApiError>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let attempts = AtomicU32::new(0);
        let first_sent = OnceLock::new();
        let withheld = AtomicBool::new(false);
        let unanswered = AtomicBool::new(false);
        let attempt = || {
            let first = attempts.fetch_add(1, Ordering::Relaxed) == 0;
            let fut = call();
            let (first_sent, withheld, unanswered) = (&first_sent, &withheld, &unanswered);
            async move {
                let stop = stop.filter(|_| first);
                let ready = async {
                    if let Some(limiter) = &self.limiter {
                        limiter.until_key_ready(&scope.account).await;
                    }
                };
                let go_ahead = match stop {
                    Some(stop) => tokio::select! {
                        biased;
                        () = stop.stopped() => false,
                        () = ready => stop.reason().is_none(),
                    },
                    None => {
                        ready.await;
                        true
                    }
                };
                if !go_ahead {
                    withheld.store(true, Ordering::Relaxed);
                    // Not retryable: ends the retry loop at once, and is never reported.
                    return Err(ApiError::new(
                        op,
                        ErrorClass::Fatal,
                        None,
                        "withheld: stopped before it was sent",
                    ));
                }
                first_sent.get_or_init(Instant::now);
                let result = fut.await;
                let outcome = match &result {
                    Ok(_) => "ok",
                    Err(e) => {
                        if e.unanswered {
                            unanswered.store(true, Ordering::Relaxed);
                        }
                        e.outcome()
                    }
                };
                metrics::counter!("kpr_api_calls_total", "operation" => op.as_str(), "outcome" => outcome)
                    .increment(1);
                result
            }
        };
        let backoff = FullJitter {
            policy: self.retry.clone(),
            retries: 0,
            started: &first_sent,
        };
        let result = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(ApiError::is_retryable)
            .notify(|e, delay| {
                metrics::counter!("kpr_api_retries_total", "operation" => op.as_str(), "reason" => e.outcome())
                    .increment(1);
                tracing::debug!(operation = %op, error = %e, delay_ms = delay.as_millis() as u64, "retrying");
            })
            .await
            .map_err(|mut e| {
                e.attempts = attempts.load(Ordering::Relaxed);
                e.unanswered |= unanswered.load(Ordering::Relaxed);
                e
            });
        (!withheld.load(Ordering::Relaxed)).then_some(result)
    }

    /// PutResourcePolicy, unless `stop` comes before it is sent: `None`, not sent.
    pub async fn put_policy_unless(
        &self,
        arn: &ResourceArn,
        policy: &str,
        stop: &Interrupt,
    ) -> Option<Result<(), ApiError>> {
        self.run_unless(Op::PutResourcePolicy, &arn.scope, Some(stop), || {
            self.inner.put_policy(arn, policy)
        })
        .await
    }

    /// DeleteResourcePolicy, unless `stop` comes before it is sent: `None`, not sent.
    pub async fn delete_policy_unless(
        &self,
        arn: &ResourceArn,
        stop: &Interrupt,
    ) -> Option<Result<(), ApiError>> {
        self.run_unless(Op::DeleteResourcePolicy, &arn.scope, Some(stop), || {
            self.inner.delete_policy(arn)
        })
        .await
    }

    /// Every stream in a scope, across pages.
    pub async fn list_streams(&self, scope: &Scope) -> Result<Vec<ResourceArn>, ApiError> {
        all_pages(|next| self.list_streams_page(scope, next)).await
    }

    /// Every consumer of a stream, across pages.
    pub async fn list_consumers(&self, stream: &ResourceArn) -> Result<Vec<ResourceArn>, ApiError> {
        all_pages(|next| self.list_consumers_page(stream, next)).await
    }
}

/// Follows `next` tokens to the end. kinesis-mock always sends a ListStreamConsumers NextToken,
/// so an empty page ends the listing too.
async fn all_pages<F, Fut>(mut page: F) -> Result<Vec<ResourceArn>, ApiError>
where
    F: FnMut(Option<Cursor>) -> Fut,
    Fut: Future<Output = Result<Page, ApiError>>,
{
    let mut all = Vec::new();
    let mut seen = HashSet::new();
    let mut next = None;
    loop {
        let Page { items, next: token } = page(next).await?;
        let before = all.len();
        // Each resource once: moto sends every stream's summary on every page, and an
        // endpoint may repeat a page. A page with nothing new ends the listing, or such an
        // endpoint would be asked forever.
        all.extend(items.into_iter().filter(|a| seen.insert(a.identity())));
        if all.len() == before || token.is_none() {
            return Ok(all);
        }
        next = token;
    }
}

impl<K: Kinesis> Kinesis for Resilient<K> {
    async fn get_policy(&self, arn: &ResourceArn) -> Result<Option<String>, ApiError> {
        self.run(Op::GetResourcePolicy, &arn.scope, || {
            self.inner.get_policy(arn)
        })
        .await
    }
    async fn put_policy(&self, arn: &ResourceArn, policy: &str) -> Result<(), ApiError> {
        self.run(Op::PutResourcePolicy, &arn.scope, || {
            self.inner.put_policy(arn, policy)
        })
        .await
    }
    async fn delete_policy(&self, arn: &ResourceArn) -> Result<(), ApiError> {
        self.run(Op::DeleteResourcePolicy, &arn.scope, || {
            self.inner.delete_policy(arn)
        })
        .await
    }
    async fn describe_consumer(&self, arn: &ResourceArn) -> Result<ResourceArn, ApiError> {
        self.run(Op::DescribeStreamConsumer, &arn.scope, || {
            self.inner.describe_consumer(arn)
        })
        .await
    }
    async fn list_streams_page(
        &self,
        scope: &Scope,
        next: Option<Cursor>,
    ) -> Result<Page, ApiError> {
        self.run(Op::ListStreams, scope, || {
            self.inner.list_streams_page(scope, next.clone())
        })
        .await
    }
    async fn describe_stream_arn(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<ResourceArn, ApiError> {
        self.run(Op::DescribeStreamSummary, scope, || {
            self.inner.describe_stream_arn(scope, name)
        })
        .await
    }
    async fn list_consumers_page(
        &self,
        stream: &ResourceArn,
        next: Option<Cursor>,
    ) -> Result<Page, ApiError> {
        self.run(Op::ListStreamConsumers, &stream.scope, || {
            self.inner.list_consumers_page(stream, next.clone())
        })
        .await
    }
}

/// How to reach AWS: the standard configuration plus kpr's overrides.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Account id -> role to assume for resources in that account.
    pub roles: HashMap<String, String>,
    /// Per-attempt timeout; the retry layer decides what happens next.
    pub attempt_timeout: Option<Duration>,
}

impl ClientOptions {
    fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout.unwrap_or(Duration::from_secs(20))
    }
}

/// The real client: one SDK client per (partition, account, region), built on first use, and
/// the direct read path (see [`direct`]) for GetResourcePolicy once the SDK has shown the way.
pub struct AwsKinesis {
    base: SdkConfig,
    opts: ClientOptions,
    /// Credentials come from keys in the environment: no STS or SSO client is built for them.
    env_keys: bool,
    clients: Mutex<HashMap<Scope, Arc<ScopeClient>>>,
    reader: DirectReader,
}

struct ScopeClient {
    /// Built at its first use, from `conf`: a plan that only reads policies, all of them
    /// direct, never uses it (writes, listings and DescribeStreamConsumer do), and
    /// building it parses the SDK's endpoint partition table (a sixth of a one-resource plan's
    /// instructions).
    sdk: OnceLock<aws_sdk_kinesis::Client>,
    conf: aws_sdk_kinesis::Config,
    route: RouteRecorder,
    /// None when the configuration has no credentials: the SDK path reports that.
    credentials: Option<Arc<CredentialCache>>,
}

impl ScopeClient {
    fn sdk(&self) -> &aws_sdk_kinesis::Client {
        self.sdk
            .get_or_init(|| aws_sdk_kinesis::Client::from_conf(self.conf.clone()))
    }
}

/// What an endpoint URL holds that looks like a secret, said as the rest of a sentence: a
/// query string (most likely a token) or a user name and password. Kinesis takes neither (calls
/// are signed with the AWS credentials), and the SDK writes the endpoint whole in its log.
pub fn endpoint_secret(url: &str) -> Option<&'static str> {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest.split('/').next().unwrap_or(rest));
    if url.contains('?') {
        Some("a query string: Kinesis takes none, and the AWS SDK would write it in its log")
    } else if authority.contains('@') {
        Some(
            "a user name or password: Kinesis takes none (calls are signed with the AWS \
             credentials), and the AWS SDK would write it in its log",
        )
    } else {
        None
    }
}

/// Every connector's: one value, so every client asks for the same transport settings.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl AwsKinesis {
    pub async fn new(opts: ClientOptions) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        // Every call is addressed by an ARN that carries its region, so the base region is only
        // a fallback; naming one here also keeps the SDK from probing IMDS (slow, noisy) for it.
        let region = opts
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        loader = loader.region(Region::new(region));
        // Keys in the environment are the default chain's first link, and then the only one it
        // uses; naming that link alone skips building the rest (an STS client, an IMDS client,
        // their endpoint tables): ~6% of a one-resource run's CPU.
        let env = EnvironmentVariableCredentialsProvider::new();
        let env_keys = env.provide_credentials().await.is_ok();
        if env_keys {
            loader = loader.credentials_provider(env);
        }
        if let Some(url) = &opts.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let transport = Transport::new(CONNECT_TIMEOUT);
        // The clients the configuration builds for credentials (STS for a role or web
        // identity, SSO) then ask for the transport's own settings and share its pool and
        // its root certificates, instead of getting a transport of their own.
        loader = loader.http_client(transport.clone()).timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .build(),
        );
        Self {
            env_keys,
            ..Self::with_config(loader.load().await, opts, transport)
        }
    }

    /// On a configuration already loaded (tests give their own credentials provider), whose
    /// HTTP client should be `transport`: the direct path sends through it.
    pub(crate) fn with_config(base: SdkConfig, opts: ClientOptions, transport: Transport) -> Self {
        let reader = DirectReader::new(transport, opts.attempt_timeout());
        // Every scope's client, and the AssumeRole providers' source, share this provider.
        let base = match base.credentials_provider() {
            Some(p) => base
                .to_builder()
                .credentials_provider(SharedCredentialsProvider::new(TellsAgain::new(p)))
                .build(),
            None => base,
        };
        Self {
            base,
            opts,
            env_keys: false,
            clients: Mutex::new(HashMap::new()),
            reader,
        }
    }

    /// What is wrong with the endpoints the clients would take from the environment or the
    /// AWS profile, looked up as the SDK does (`AWS_ENDPOINT_URL_<SERVICE>`, a profile's
    /// `services` section, `AWS_ENDPOINT_URL`, a profile's `endpoint_url`): an empty one makes
    /// the SDK panic at the client's first call ("URL was unset"). Kinesis', unless kpr names
    /// the endpoint; STS' and SSO's unless credentials come from keys in the environment and
    /// no role is mapped (or kpr's endpoint serves the mapped roles), as only then no such
    /// client takes one.
    pub fn configured_endpoint_problem(&self) -> Option<String> {
        // kpr's own endpoint serves Kinesis and the mapped roles' STS; the default credential
        // chain (web identity, a profile's role or SSO) builds its clients from the
        // environment and the profile whatever kpr names.
        let named = self.opts.endpoint_url.is_some();
        let mut services = Vec::new();
        if !named {
            services.push("Kinesis");
        }
        if !self.env_keys || (!named && !self.opts.roles.is_empty()) {
            services.extend(["STS", "SSO", "SSO OIDC"]);
        }
        services.into_iter().find_map(|service| {
            let key = aws_types::service_config::ServiceConfigKey::builder()
                .service_id(service)
                .env("AWS_ENDPOINT_URL")
                .profile("endpoint_url")
                .build()
                .expect("all three parts are given");
            let configured = self
                .base
                .service_config()
                .and_then(|c| c.load_config(key))
                .or_else(|| {
                    self.base
                        .endpoint_url()
                        .map(str::to_string)
                        .filter(|_| !named)
                })?;
            let own = format!(
                "AWS_ENDPOINT_URL_{}",
                service.to_uppercase().replace(' ', "_")
            );
            let named = [own.as_str(), "AWS_ENDPOINT_URL"]
                .into_iter()
                .find(|name| std::env::var_os(name).is_some())
                .unwrap_or("endpoint_url in the AWS profile")
                .to_string();
            if let Some(what) = endpoint_secret(&configured) {
                return Some(format!("{named} has {what}"));
            }
            if !configured.trim().is_empty() {
                return None;
            }
            let client = match service {
                "Kinesis" => String::new(),
                other => format!(" (the {other} client kpr's credentials use would take it)"),
            };
            Some(format!(
                "{named} is set but empty{client}: unset it, or give a URL such as \
                 http://localhost:4567"
            ))
        })
    }

    async fn scope(&self, scope: &Scope) -> Arc<ScopeClient> {
        if let Some(c) = self.clients.lock().expect("client map").get(scope) {
            return c.clone();
        }
        // Boxed for the same reason as the SDK's send: the first call per scope must not make
        // every later call's future as large as the client construction.
        Box::pin(self.new_scope(scope)).await
    }

    async fn new_scope(&self, scope: &Scope) -> Arc<ScopeClient> {
        let region = Region::new(scope.region.clone());
        let told = self.opts.endpoint_url.as_deref().and_then(|url| {
            Route::told(
                url,
                &scope.region,
                self.base.use_fips() == Some(true),
                self.base.use_dual_stack() == Some(true),
            )
        });
        let route = told.map_or_else(RouteRecorder::default, RouteRecorder::knowing);
        let mut conf = aws_sdk_kinesis::config::Builder::from(&self.base)
            .region(region.clone())
            // One retry layer only: ours, in `Resilient`.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(self.opts.attempt_timeout())
                    .build(),
            )
            .interceptor(route.clone());
        let mut provider = self.base.credentials_provider();
        let mut label = None;
        if let Some(role) = self.opts.roles.get(&scope.account) {
            let assumed = aws_config::sts::AssumeRoleProvider::builder(role.clone())
                .session_name("kpr")
                .region(region)
                .configure(&self.base)
                .build()
                .await;
            provider = Some(SharedCredentialsProvider::new(assumed));
            label = Some(format!("assuming {role} for account {}", scope.account));
        }
        let credentials = provider.map(|p| {
            let cache = CredentialCache::new(p);
            Arc::new(match label {
                Some(label) => cache.labelled(label),
                None => cache,
            })
        });
        if let Some(cache) = &credentials {
            conf = conf
                .credentials_provider(SharedCache(Arc::clone(cache)))
                .identity_cache(aws_sdk_kinesis::config::IdentityCache::no_cache());
        }
        let client = Arc::new(ScopeClient {
            sdk: OnceLock::new(),
            conf: conf.build(),
            route,
            credentials,
        });
        self.clients
            .lock()
            .expect("client map")
            .entry(scope.clone())
            .or_insert(client)
            .clone()
    }

    async fn client(&self, scope: &Scope) -> aws_sdk_kinesis::Client {
        self.scope(scope).await.sdk().clone()
    }

    /// `e`, once the scope's credentials are forgotten if the service refused them: cached
    /// until near their expiry, credentials revoked or replaced (a rotated key, a session
    /// ended early) would fail every call until then, though new ones are a load away.
    fn noting(&self, scope: &Scope, e: ApiError) -> ApiError {
        if e.refuses_credentials()
            && let Some(cache) = self
                .clients
                .lock()
                .expect("client map")
                .get(scope)
                .and_then(|c| c.credentials.clone())
        {
            cache.forget();
        }
        e
    }
}

/// The members an operation's model requires in its answer. The SDK fills a missing one with
/// its default, so a 200 of `{}` to ListStreams read as an account without streams: `--prune`
/// would delete nothing and import write nothing, both saying all went well. Such an answer
/// is an unreadable one instead (retried, then a failure). (ListStreamConsumers requires
/// none: its `{}` is a stream without consumers.)
#[derive(Debug)]
struct RequiredMembers(&'static [&'static str]);

impl aws_sdk_kinesis::config::Intercept for RequiredMembers {
    fn name(&self) -> &'static str {
        "kpr-required-members"
    }

    fn read_after_deserialization(
        &self,
        context: &aws_sdk_kinesis::config::interceptors::AfterDeserializationInterceptorContextRef<
            '_,
        >,
        _: &aws_sdk_kinesis::config::RuntimeComponents,
        _: &mut aws_sdk_kinesis::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let response = context.response();
        if !response.status().is_success() {
            return Ok(());
        }
        // The body was read whole before deserializing; a missing one is an empty object.
        let body: serde_json::Map<String, serde_json::Value> = response
            .body()
            .bytes()
            .filter(|b| !b.trim_ascii().is_empty())
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        match self.0.iter().find(|m| !body.contains_key(**m)) {
            Some(missing) => Err(format!("the answer has no {missing}, which it must have").into()),
            None => Ok(()),
        }
    }
}

/// The streams a ListStreams page names: by the ARNs of its StreamSummaries where the service
/// sends them (AWS, moto; kinesis-mock only names), else by name in `scope`. With credentials
/// of another account than the scope's (no role mapped for it), the service lists that other
/// account's streams: named in `scope` they would be read in the wrong account (AccessDenied
/// each) and the scope's own unmanaged policies never seen by prune. An error says so instead.
fn listed_streams(
    scope: &Scope,
    out: &aws_sdk_kinesis::operation::list_streams::ListStreamsOutput,
) -> Result<Vec<ResourceArn>, ApiError> {
    let op = Op::ListStreams;
    if out.stream_summaries().is_empty() {
        return out
            .stream_names()
            .iter()
            .map(|n| Ok(stream_in(scope, listed_name(op, "stream", n)?)))
            .collect();
    }
    let mut items = Vec::with_capacity(out.stream_summaries().len());
    for summary in out.stream_summaries() {
        let arn = ResourceArn::parse(summary.stream_arn())
            .map_err(|e| ApiError::new(op, ErrorClass::Fatal, None, e.to_string()))?;
        // An empty account is import's placeholder, before it has learnt the real one.
        if !scope.account.is_empty() && arn.scope != *scope {
            return Err(ApiError::new(
                op,
                ErrorClass::Fatal,
                None,
                format!(
                    "listing streams for account {} in {} returned account {}'s streams: the \
                     credentials belong to that account. Map {} to a role under `accounts:` in \
                     the config file",
                    scope.account, scope.region, arn.scope.account, scope.account
                ),
            ));
        }
        items.push(arn);
    }
    Ok(items)
}

/// A name a listing returned, checked as a manifest's would be: it goes into ARNs, prune
/// candidates and `kpr import`'s file names, so a `/` or a newline from an odd endpoint must
/// not reach them.
fn listed_name<'a>(op: Op, kind: &str, name: &'a str) -> Result<&'a str, ApiError> {
    if crate::arn::valid_name(name) {
        Ok(name)
    } else {
        Err(ApiError::new(
            op,
            ErrorClass::Fatal,
            None,
            format!(
                "the service listed a {kind} named {name:?}, which is not a Kinesis name \
                 (1 to 128 of a-z A-Z 0-9 _ . -)"
            ),
        ))
    }
}

fn stream_in(scope: &Scope, name: &str) -> ResourceArn {
    ResourceArn {
        scope: scope.clone(),
        stream: name.to_string(),
        consumer: None,
    }
}

// Every SDK call below is boxed (`.boxed()`): an SDK send future is ~13 KiB, and inline it
// would make every caller's future that size, copied on every move (measured: 8% of plan
// CPU was memmove before).
impl Kinesis for AwsKinesis {
    async fn get_policy(&self, arn: &ResourceArn) -> Result<Option<String>, ApiError> {
        let client = self.scope(&arn.scope).await;
        if let (Some(route), Some(credentials)) = (client.route.get(), &client.credentials) {
            return self
                .reader
                .get_policy(route, credentials, &arn.to_string())
                .await
                .map_err(|e| self.noting(&arn.scope, e));
        }
        let sent = client
            .sdk()
            .get_resource_policy()
            .resource_arn(arn.to_string())
            .send()
            .boxed()
            .await;
        sdk_answer(sent).map_err(|e| self.noting(&arn.scope, e))
    }

    async fn put_policy(&self, arn: &ResourceArn, policy: &str) -> Result<(), ApiError> {
        self.client(&arn.scope)
            .await
            .put_resource_policy()
            .resource_arn(arn.to_string())
            .policy(policy)
            .send()
            .boxed()
            .await
            .map(|_| ())
            .map_err(|e| self.noting(&arn.scope, classify(Op::PutResourcePolicy, &e)))
    }

    async fn delete_policy(&self, arn: &ResourceArn) -> Result<(), ApiError> {
        self.client(&arn.scope)
            .await
            .delete_resource_policy()
            .resource_arn(arn.to_string())
            .send()
            .boxed()
            .await
            .map(|_| ())
            .map_err(|e| self.noting(&arn.scope, classify(Op::DeleteResourcePolicy, &e)))
    }

    async fn describe_consumer(&self, arn: &ResourceArn) -> Result<ResourceArn, ApiError> {
        let op = Op::DescribeStreamConsumer;
        let Some(consumer) = &arn.consumer else {
            return Ok(arn.clone());
        };
        let out = self
            .client(&arn.scope)
            .await
            .describe_stream_consumer()
            .stream_arn(arn.stream_arn().to_string())
            .consumer_name(&consumer.name)
            .send()
            .boxed()
            .await
            .map_err(|e| self.noting(&arn.scope, classify(op, &e)))?;
        let live = out
            .consumer_description()
            .map(|d| d.consumer_arn().to_string())
            .ok_or_else(|| {
                ApiError::new(op, ErrorClass::Fatal, None, "response has no consumer")
            })?;
        let resolved = ResourceArn::parse(&live)
            .map_err(|e| ApiError::new(op, ErrorClass::Fatal, None, e.to_string()))?;
        // The answer only adds the registration's epoch: reads and writes go where it points,
        // so one naming another account, stream or consumer must not redirect them.
        if !resolved.same_resource(arn) {
            return Err(ApiError::new(
                op,
                ErrorClass::Fatal,
                None,
                format!(
                    "the service answered with {live}, which is not {arn}: nothing is done there"
                ),
            ));
        }
        Ok(resolved)
    }

    async fn list_streams_page(
        &self,
        scope: &Scope,
        next: Option<Cursor>,
    ) -> Result<Page, ApiError> {
        let op = Op::ListStreams;
        let (token, after) = match next {
            Some(Cursor::Token(t)) => (Some(t), None),
            Some(Cursor::After(name)) => (None, Some(name)),
            None => (None, None),
        };
        let out = self
            .client(scope)
            .await
            .list_streams()
            .set_next_token(token)
            .set_exclusive_start_stream_name(after)
            .customize()
            .interceptor(RequiredMembers(&["HasMoreStreams", "StreamNames"]))
            .send()
            .boxed()
            .await
            .map_err(|e| self.noting(scope, classify(op, &e)))?;
        let items = listed_streams(scope, &out)?;
        // A listing that stops short would pass for the whole: prune would miss policies,
        // import would leave resources out, and both would say nothing.
        let next = match (out.has_more_streams(), out.next_token(), items.last()) {
            (false, _, _) => None,
            (true, Some(token), _) => Some(Cursor::Token(token.to_string())),
            (true, None, Some(last)) => Some(Cursor::After(last.stream.clone())),
            (true, None, None) => {
                return Err(ApiError::new(
                    op,
                    ErrorClass::Fatal,
                    None,
                    "the endpoint says more streams exist but sends neither a NextToken nor a \
                     stream to go on from",
                ));
            }
        };
        Ok(Page { items, next })
    }

    async fn describe_stream_arn(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<ResourceArn, ApiError> {
        let op = Op::DescribeStreamSummary;
        let out = self
            .client(scope)
            .await
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .boxed()
            .await
            .map_err(|e| self.noting(scope, classify(op, &e)))?;
        let arn = out
            .stream_description_summary()
            .map(|d| d.stream_arn().to_string())
            .ok_or_else(|| ApiError::new(op, ErrorClass::Fatal, None, "response has no stream"))?;
        ResourceArn::parse(&arn)
            .map_err(|e| ApiError::new(op, ErrorClass::Fatal, None, e.to_string()))
    }

    async fn list_consumers_page(
        &self,
        stream: &ResourceArn,
        next: Option<Cursor>,
    ) -> Result<Page, ApiError> {
        let op = Op::ListStreamConsumers;
        let out = self
            .client(&stream.scope)
            .await
            .list_stream_consumers()
            .stream_arn(stream.to_string())
            .set_next_token(next.and_then(Cursor::token))
            .send()
            .boxed()
            .await
            .map_err(|e| self.noting(&stream.scope, classify(op, &e)))?;
        Ok(Page {
            items: listed_consumers(stream, &out)?,
            next: out.next_token().map(|t| Cursor::Token(t.to_string())),
        })
    }
}

/// The consumers a ListStreamConsumers page names, in `stream`.
fn listed_consumers(
    stream: &ResourceArn,
    out: &aws_sdk_kinesis::operation::list_stream_consumers::ListStreamConsumersOutput,
) -> Result<Vec<ResourceArn>, ApiError> {
    out.consumers()
        .iter()
        .map(|c| {
            // Trust the name over the ARN's text: build the ARN from the stream we asked about.
            let created = ResourceArn::parse(c.consumer_arn())
                .ok()
                .and_then(|a| a.consumer)
                .and_then(|c| c.created);
            let name = listed_name(Op::ListStreamConsumers, "consumer", c.consumer_name())?;
            Ok(ResourceArn {
                consumer: Some(ConsumerRef {
                    name: name.to_string(),
                    created,
                }),
                ..stream.clone()
            })
        })
        .collect()
}

/// Shared handle used by plan, apply and the controller.
pub type Api<K> = Arc<Resilient<K>>;

/// The rest of a [`Kinesis`] test double that implements only the reads and writes a test
/// needs: each of these panics if called.
#[cfg(test)]
macro_rules! calls_a_test_does_not_make {
    () => {
        async fn delete_policy(
            &self,
            _: &$crate::arn::ResourceArn,
        ) -> Result<(), $crate::kinesis::ApiError> {
            unimplemented!()
        }
        async fn describe_consumer(
            &self,
            _: &$crate::arn::ResourceArn,
        ) -> Result<$crate::arn::ResourceArn, $crate::kinesis::ApiError> {
            unimplemented!()
        }
        async fn list_streams_page(
            &self,
            _: &$crate::arn::Scope,
            _: Option<$crate::kinesis::Cursor>,
        ) -> Result<$crate::kinesis::Page, $crate::kinesis::ApiError> {
            unimplemented!()
        }
        async fn list_consumers_page(
            &self,
            _: &$crate::arn::ResourceArn,
            _: Option<$crate::kinesis::Cursor>,
        ) -> Result<$crate::kinesis::Page, $crate::kinesis::ApiError> {
            unimplemented!()
        }
        async fn describe_stream_arn(
            &self,
            _: &$crate::arn::Scope,
            _: &str,
        ) -> Result<$crate::arn::ResourceArn, $crate::kinesis::ApiError> {
            unimplemented!()
        }
    };
}
#[cfg(test)]
pub(crate) use calls_a_test_does_not_make;

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::operation::get_resource_policy::GetResourcePolicyOutput;
    use aws_sdk_kinesis::operation::list_streams::ListStreamsOutput;

    /// A listed name goes into ARNs and import's file names: one Kinesis would not allow
    /// is an error, never a path.
    #[test]
    fn listed_names_are_kinesis_names() {
        let scope = Scope {
            partition: "aws".into(),
            region: "us-east-1".into(),
            account: "111122223333".into(),
        };
        let listing = |names: &[&str]| {
            let mut out = ListStreamsOutput::builder().has_more_streams(false);
            for n in names {
                out = out.stream_names(*n);
            }
            listed_streams(&scope, &out.build().unwrap())
        };
        let ok = listing(&["orders", "a.b_c-1"]).unwrap();
        assert_eq!(ok.len(), 2);
        for bad in ["../../etc/x", "a/b", "with space", "line\nbreak", ""] {
            let e = listing(&["orders", bad]).unwrap_err();
            assert!(e.to_string().contains("not a Kinesis name"), "{bad:?}: {e}");
        }
        let stream = stream_in(&scope, "orders");
        let consumers = |names: &[&str]| {
            let mut out =
                aws_sdk_kinesis::operation::list_stream_consumers::ListStreamConsumersOutput::builder();
            for n in names {
                out = out.consumers(
                    aws_sdk_kinesis::types::Consumer::builder()
                        .consumer_name(*n)
                        .consumer_arn(format!("{stream}/consumer/{n}:1700000000"))
                        .consumer_status(aws_sdk_kinesis::types::ConsumerStatus::Active)
                        .consumer_creation_timestamp(aws_smithy_types::DateTime::from_secs(0))
                        .build()
                        .unwrap(),
                );
            }
            listed_consumers(&stream, &out.build())
        };
        let ok = consumers(&["app", "b.c"]).unwrap();
        assert_eq!(
            ok[0].to_string(),
            format!("{stream}/consumer/app:1700000000")
        );
        for bad in ["c/d", "../x", &"c".repeat(129)] {
            let e = consumers(&["app", bad]).unwrap_err();
            assert!(e.to_string().contains("not a Kinesis name"), "{bad:?}: {e}");
        }
    }
    use aws_sdk_kinesis::operation::put_resource_policy::PutResourcePolicyOutput;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    fn arn() -> ResourceArn {
        ResourceArn::parse("arn:aws:kinesis:us-east-1:111122223333:stream/orders").unwrap()
    }

    #[test]
    fn error_chain_joins_causes_and_shows_each_once() {
        #[derive(Debug)]
        struct Wrap(&'static str, std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.1)
            }
        }
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            error_chain(&Wrap("tcp connect error", refused())),
            "tcp connect error: refused"
        );
        // A wrapper that already prints its cause does not get it twice.
        assert_eq!(
            error_chain(&Wrap("connect: refused", refused())),
            "connect: refused"
        );
        assert_eq!(error_chain(&refused()), "refused");
    }

    fn fast_retry(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_elapsed: Duration::from_secs(5),
        }
    }

    fn service_error(code: &str) -> aws_smithy_runtime_api::http::Response {
        aws_smithy_runtime_api::http::Response::new(
            aws_smithy_runtime_api::http::StatusCode::try_from(400).unwrap(),
            aws_smithy_types::body::SdkBody::from(format!(
                r#"{{"__type":"{code}","message":"m"}}"#
            )),
        )
    }

    /// A Kinesis whose only real method is put, backed by an aws-smithy-mocks SDK client.
    struct Mocked(aws_sdk_kinesis::Client);

    impl Kinesis for Mocked {
        async fn get_policy(&self, arn: &ResourceArn) -> Result<Option<String>, ApiError> {
            self.0
                .get_resource_policy()
                .resource_arn(arn.to_string())
                .send()
                .await
                .map(|o| Some(o.policy().to_string()))
                .map_err(|e| classify(Op::GetResourcePolicy, &e))
        }
        async fn put_policy(&self, arn: &ResourceArn, policy: &str) -> Result<(), ApiError> {
            self.0
                .put_resource_policy()
                .resource_arn(arn.to_string())
                .policy(policy)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify(Op::PutResourcePolicy, &e))
        }
        crate::kinesis::calls_a_test_does_not_make!();
    }

    fn client(rules: &[&aws_smithy_mocks::Rule]) -> aws_sdk_kinesis::Client {
        mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, rules, |c| c
            .retry_config(aws_config::retry::RetryConfig::disabled()))
    }

    #[tokio::test]
    async fn retries_resource_in_use_and_limit_exceeded_then_succeeds() {
        let in_use = mock!(aws_sdk_kinesis::Client::put_resource_policy)
            .sequence()
            .http_response(|| service_error("ResourceInUseException"))
            .http_response(|| service_error("LimitExceededException"))
            .output(|| PutResourcePolicyOutput::builder().build())
            .build();
        let k = Resilient::new(Mocked(client(&[&in_use])), fast_retry(5), 0);
        k.put_policy(&arn(), "{}").await.unwrap();
        assert_eq!(in_use.num_calls(), 3);
    }

    /// A credentials provider that always times out, as an AssumeRole refresh behind a slow
    /// STS would.
    #[derive(Debug)]
    struct TimesOut;

    impl aws_credential_types::provider::ProvideCredentials for TimesOut {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            aws_credential_types::provider::future::ProvideCredentials::ready(Err(
                CredentialsError::provider_timed_out(Duration::from_secs(5)),
            ))
        }
    }

    /// A real SDK client (the mocks answer before credentials are asked for): the provider
    /// fails before anything is sent, so no endpoint is needed.
    #[tokio::test]
    async fn a_credentials_timeout_on_the_sdk_path_is_retried() {
        let conf = aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .credentials_provider(TimesOut)
            .build();
        let client = aws_sdk_kinesis::Client::from_conf(conf);
        let k = Resilient::new(Mocked(client), fast_retry(3), 0);
        let err = k.put_policy(&arn(), "{}").await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Retryable, "{}", err.message);
        assert_eq!(err.attempts, 3, "{}", err.message);
    }

    /// A write that got no answer it could read may have taken effect; one whose connection
    /// was never made did not.
    #[tokio::test]
    async fn a_write_without_an_answer_is_told_from_one_never_sent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let put = |endpoint: String| async move {
            let conf = aws_sdk_kinesis::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(endpoint)
                .retry_config(aws_config::retry::RetryConfig::disabled())
                .credentials_provider(aws_credential_types::Credentials::for_tests())
                .http_client(Transport::new(CONNECT_TIMEOUT))
                .build();
            let client = aws_sdk_kinesis::Client::from_conf(conf);
            Resilient::new(Mocked(client), fast_retry(1), 0)
                .put_policy(&arn(), "{}")
                .await
                .unwrap_err()
        };
        // Nothing listens there.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let err = put(refused).await;
        assert!(!err.unanswered && err.is_retryable(), "{err:?}");
        // The request read, then the connection closed or answered with what is not HTTP.
        for answer in [&b""[..], b"garbage, not http\r\n\r\n"] {
            let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let endpoint = format!("http://{}", server.local_addr().unwrap());
            let serve = tokio::spawn(async move {
                let (mut conn, _) = server.accept().await.unwrap();
                let mut buf = vec![0; 64 * 1024];
                let _ = conn.read(&mut buf).await;
                conn.write_all(answer).await.unwrap();
            });
            let err = put(endpoint).await;
            assert!(err.unanswered, "{answer:?}: {err:?}");
            serve.await.unwrap();
        }
    }

    #[tokio::test]
    async fn does_not_retry_access_denied_or_invalid_argument() {
        for code in ["AccessDeniedException", "InvalidArgumentException"] {
            let rule = mock!(aws_sdk_kinesis::Client::put_resource_policy)
                .then_http_response(move || service_error(code));
            let k = Resilient::new(Mocked(client(&[&rule])), fast_retry(5), 0);
            let err = k.put_policy(&arn(), "{}").await.unwrap_err();
            assert_eq!(err.class, ErrorClass::Fatal, "{code}");
            assert_eq!(err.code.as_deref(), Some(code));
            assert_eq!(rule.num_calls(), 1, "{code}");
        }
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let rule = mock!(aws_sdk_kinesis::Client::put_resource_policy)
            .then_http_response(|| service_error("LimitExceededException"));
        let k = Resilient::new(Mocked(client(&[&rule])), fast_retry(4), 0);
        let err = k.put_policy(&arn(), "{}").await.unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(err.attempts, 4);
        assert_eq!(rule.num_calls(), 4);
        assert!(err.to_string().contains("after 4 attempts"), "{err}");
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_modeled_errors_classified() {
        let rule = mock!(aws_sdk_kinesis::Client::get_resource_policy)
            .sequence()
            .http_response(|| {
                aws_smithy_runtime_api::http::Response::new(
                    aws_smithy_runtime_api::http::StatusCode::try_from(503).unwrap(),
                    aws_smithy_types::body::SdkBody::from("{}"),
                )
            })
            .output(|| {
                GetResourcePolicyOutput::builder()
                    .policy("{\"a\":1}")
                    .build()
                    .unwrap()
            })
            .build();
        let k = Resilient::new(Mocked(client(&[&rule])), fast_retry(3), 0);
        assert_eq!(
            k.get_policy(&arn()).await.unwrap().as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(rule.num_calls(), 2);
    }

    /// An endpoint that repeats its page (or, as moto, sends every stream on every page) must
    /// neither list a resource twice (import would write it twice, prune count it twice) nor
    /// be asked forever.
    #[tokio::test]
    async fn a_listing_ends_when_a_page_brings_nothing_new() {
        let stream = |n: &str| {
            ResourceArn::parse(&format!(
                "arn:aws:kinesis:us-east-1:111122223333:stream/{n}"
            ))
            .unwrap()
        };
        let calls = AtomicU32::new(0);
        let all = all_pages(|_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                // Every page: all streams so far, and one more on the second.
                let mut items = vec![stream("a"), stream("b")];
                if n >= 1 {
                    items.push(stream("c"));
                }
                Ok(Page {
                    items,
                    next: Some(Cursor::After("b".into())),
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(all, [stream("a"), stream("b"), stream("c")]);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn full_jitter_respects_cap_and_attempts() {
        let policy = RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            max_elapsed: Duration::from_secs(60),
        };
        let delays: Vec<Duration> = FullJitter {
            policy,
            retries: 0,
            started: &OnceLock::from(Instant::now()),
        }
        .collect();
        assert_eq!(delays.len(), 5);
        let caps = [100, 200, 300, 300, 300];
        for (d, cap) in delays.iter().zip(caps) {
            assert!(*d <= Duration::from_millis(cap), "{d:?} > {cap}");
        }
    }

    #[test]
    fn total_time_bound_stops_retries() {
        let policy = RetryPolicy {
            max_attempts: 100,
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_millis(0),
        };
        let started = OnceLock::from(Instant::now() - Duration::from_secs(1));
        let mut it = FullJitter {
            policy,
            retries: 0,
            started: &started,
        };
        assert_eq!(it.next(), None);
    }

    /// `--max-retry-time` counts from the first attempt sent, not from when the call began to
    /// wait for the rate limiter: here the call queues ~1 s behind another, three times the
    /// bound, and its throttled first attempt must still be retried.
    #[tokio::test]
    async fn time_in_the_rate_limiters_queue_is_not_retry_time() {
        let rule = mock!(aws_sdk_kinesis::Client::put_resource_policy)
            .sequence()
            .output(|| PutResourcePolicyOutput::builder().build())
            .http_response(|| service_error("LimitExceededException"))
            .output(|| PutResourcePolicyOutput::builder().build())
            .build();
        let retry = RetryPolicy {
            max_elapsed: Duration::from_millis(300),
            ..fast_retry(3)
        };
        let k = Resilient::new(Mocked(client(&[&rule])), retry, 1);
        k.put_policy(&arn(), "{}").await.unwrap();
        k.put_policy(&arn(), "{}").await.unwrap();
        assert_eq!(rule.num_calls(), 3);
    }

    /// The most calls `concurrently` had in flight at once, over `n` calls at `limit`.
    async fn most_in_flight(n: usize, limit: usize) -> (usize, usize) {
        use futures::StreamExt;
        let now = AtomicU32::new(0);
        let most = AtomicU32::new(0);
        let done = concurrently(0..n, limit, |_| async {
            let mine = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(mine, Ordering::SeqCst);
            // Every call waits once, so the others get their chance to start.
            tokio::task::yield_now().await;
            now.fetch_sub(1, Ordering::SeqCst);
        })
        .count()
        .await;
        (done, most.load(Ordering::SeqCst) as usize)
    }

    #[tokio::test]
    async fn concurrently_runs_every_call_with_at_most_limit_in_flight() {
        assert_eq!(most_in_flight(20, 4).await, (20, 4));
        assert_eq!(most_in_flight(3, 8).await, (3, 3));
        // Taken literally, a limit of 0 would never start a call and never finish (hence the
        // guard): it means one at a time.
        let zero = tokio::time::timeout(Duration::from_secs(10), most_in_flight(5, 0)).await;
        assert_eq!(zero.ok(), Some((5, 1)));
    }
}
