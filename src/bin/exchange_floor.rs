//! The CPU floor of one GetResourcePolicy exchange on kpr's HTTP stack, for `scripts/bench`.
//!
//! It sends the same requests kpr's direct read path sends, through the same transport, at the
//! same concurrency, and does nothing else: no manifests, no signing (a fixed Authorization
//! header; the emulator does not check it), no parsing beyond the status line. What kpr spends
//! per resource above this figure is kpr's own work.
//!
//!   exchange_floor URL CONCURRENCY ARNS_FILE   (one ARN per line)

use aws_smithy_runtime_api::client::http::HttpConnector;
use aws_smithy_types::body::SdkBody;
use futures::StreamExt;
use http_body_util::BodyExt;
use kinesis_policy_reconciler::kinesis::{CONNECT_TIMEOUT, Transport, concurrently};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(concurrency), Some(file)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: exchange_floor URL CONCURRENCY ARNS_FILE");
        std::process::exit(2);
    };
    let concurrency: usize = concurrency.parse().expect("CONCURRENCY is a number");
    let arns: Vec<String> = std::fs::read_to_string(&file)
        .expect("ARNS_FILE")
        .lines()
        .map(str::to_string)
        .collect();
    // A floor over nothing would be a flattering zero.
    if arns.is_empty() {
        eprintln!("{file}: no ARNs");
        std::process::exit(2);
    }
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(&url)
        .trim_end_matches('/')
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let total = arns.len();
    // A spawned task, as kpr runs its commands (see src/main.rs).
    let failed = runtime.block_on(runtime.spawn(async move {
        let transport = Transport::new(CONNECT_TIMEOUT);
        // The fan-out kpr's plan uses, so calls are in flight the same way.
        concurrently(arns, concurrency, |arn| {
            let body = serde_json::json!({ "ResourceARN": &arn }).to_string();
            let request = http::Request::builder()
                .method("POST")
                .uri(url.as_str())
                .header("content-type", "application/x-amz-json-1.1")
                .header("host", host.as_str())
                .header("x-amz-target", "Kinesis_20131202.GetResourcePolicy")
                .header("x-amz-date", "20261126T000000Z")
                .header(
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=x/20261126/us-east-1/kinesis/aws4_request, \
                         SignedHeaders=host, Signature=0",
                )
                .body(SdkBody::from(body))
                .expect("request");
            let request =
                aws_smithy_runtime_api::http::Request::try_from(request).expect("request");
            let call = transport.call(request);
            async move {
                let response = call.await.expect("exchange");
                let ok = response.status().is_success();
                response.into_body().collect().await.expect("body");
                ok
            }
        })
        .fold(0usize, |n, ok| std::future::ready(n + usize::from(!ok)))
        .await
    }));
    let failed = failed.expect("the exchange task");
    if failed > 0 {
        eprintln!("{failed} of {total} calls failed");
        std::process::exit(1);
    }
}
