//! Kinesis stream and consumer ARNs.
//!
//! The service model's patterns (`arn:aws.*:kinesis:.*:\d{12}:.*stream/\S+` and the consumer form
//! ending in `/consumer/NAME:EPOCH`) are checked here by hand rather than with a regex engine: the
//! grammar is small and the errors can then say which part is wrong.

use std::fmt;

/// The AWS partitions.
pub const PARTITIONS: &[&str] = &[
    "aws",
    "aws-cn",
    "aws-us-gov",
    "aws-iso",
    "aws-iso-b",
    "aws-iso-e",
    "aws-iso-f",
    "aws-eusc",
];

/// The partition a region belongs to, by its name; any region not of a special partition is
/// in `aws` (new commercial regions keep appearing).
/// A 12-digit AWS account id: what an ARN, a principal, a condition value or a config key
/// must hold where an account is meant.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

pub fn partition_of(region: &str) -> &'static str {
    [
        ("cn-", "aws-cn"),
        ("us-gov-", "aws-us-gov"),
        ("us-iso-", "aws-iso"),
        ("us-isob-", "aws-iso-b"),
        ("eu-isoe-", "aws-iso-e"),
        ("us-isof-", "aws-iso-f"),
        ("eusc-", "aws-eusc"),
    ]
    .iter()
    .find(|(prefix, _)| region.starts_with(prefix))
    .map_or("aws", |(_, partition)| partition)
}

/// Whether `region` is spelled as region names are: a 2-4 letter area, words, a number
/// (`us-east-1`, `us-gov-west-1`, `eu-isoe-west-1`, `eusc-de-east-1`). A region is part of
/// every ARN kpr builds and compares, and a typo (`us-east1`) would otherwise pass validation
/// and fail only at plan time, after other resources were written.
pub fn is_region_name(region: &str) -> bool {
    // One pass over the bytes: it runs for every ARN parsed.
    let b = region.as_bytes();
    let letters = |from: usize| {
        b[from..]
            .iter()
            .take_while(|c| c.is_ascii_lowercase())
            .count()
    };
    let area = letters(0);
    if !(2..=4).contains(&area) || b.get(area) != Some(&b'-') {
        return false;
    }
    let (mut at, mut words) = (area + 1, 0);
    loop {
        let word = letters(at);
        if word == 0 {
            break;
        }
        if b.get(at + word) != Some(&b'-') {
            return false;
        }
        at += word + 1;
        words += 1;
    }
    let number = &b[at..];
    words > 0 && (1..=2).contains(&number.len()) && number.iter().all(u8::is_ascii_digit)
}

/// Where a resource lives: one API client serves exactly one scope, because only the owning
/// account can manage a resource's policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]

pub struct Scope {
    pub partition: String,
    pub region: String,
    pub account: String,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.partition, self.account, self.region)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerRef {
    pub name: String,
    /// The `:<creation epoch seconds>` suffix. `None` means "whichever consumer of this name is
    /// registered now": kpr resolves it at plan time so a re-registered consumer keeps its policy.
    pub created: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceArn {
    pub scope: Scope,
    pub stream: String,
    pub consumer: Option<ConsumerRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Kinesis ARN {arn:?}: {reason}")]
pub struct ArnError {
    pub arn: String,
    pub reason: String,
}

const MAX_ARN_LEN: usize = 2048;

/// A stream or consumer name as Kinesis allows it: 1 to 128 of `[a-zA-Z0-9_.-]`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl ResourceArn {
    pub fn parse(text: &str) -> Result<Self, ArnError> {
        let err = |reason: &str| ArnError {
            // Quoted in the error: a value far past any ARN's length is cut, not printed whole.
            arn: if text.len() > MAX_ARN_LEN {
                let cut = text.char_indices().nth(200).map_or(text.len(), |(i, _)| i);
                format!("{}…", &text[..cut])
            } else {
                text.to_string()
            },
            reason: reason.to_string(),
        };
        if text.is_empty() || text.len() > MAX_ARN_LEN {
            return Err(err("must be 1 to 2048 characters"));
        }
        if text.chars().any(char::is_whitespace) {
            return Err(err("contains whitespace"));
        }
        let mut parts = text.splitn(6, ':');
        let (Some(prefix), Some(partition), Some(service), Some(region), Some(account), Some(rest)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(err(
                "expected arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME",
            ));
        };
        if prefix != "arn" {
            return Err(err("must start with \"arn:\""));
        }
        if !PARTITIONS.contains(&partition) {
            return Err(err(&format!(
                "partition {partition:?} is not an AWS partition ({})",
                PARTITIONS.join(", ")
            )));
        }
        if service != "kinesis" {
            return Err(err(&format!(
                "service is {service:?}, not \"kinesis\" (only data streams and consumers have these policies)"
            )));
        }
        if !is_region_name(region) {
            return Err(err(&format!("region {region:?} is not a region name")));
        }
        // The client is picked by region: an ARN whose partition is not the region's would
        // fail only at call time, after other resources were written, and would look like a
        // second resource beside the right spelling of the same one.
        if partition_of(region) != partition {
            return Err(err(&format!(
                "region {region:?} is in partition {:?}, not {partition:?}",
                partition_of(region)
            )));
        }
        if !is_account_id(account) {
            return Err(err(&format!(
                "account {account:?} is not a 12-digit account id"
            )));
        }
        let Some(path) = rest.strip_prefix("stream/") else {
            return Err(err(&format!(
                "resource {rest:?} is not stream/NAME or stream/NAME/consumer/NAME"
            )));
        };
        let (stream, consumer) = match path.split_once("/consumer/") {
            None => (path, None),
            Some((stream, consumer)) => {
                let (name, created) = match consumer.split_once(':') {
                    None => (consumer, None),
                    Some((name, epoch)) => {
                        if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
                            return Err(err(&format!(
                                "consumer suffix {epoch:?} is not a creation timestamp (digits)"
                            )));
                        }
                        // Kept as a number: `:0017…` would be printed, and compared, as
                        // `:17…`, which is not what the manifest's own Resource says.
                        if epoch.len() > 1 && epoch.starts_with('0') {
                            return Err(err(&format!(
                                "consumer creation timestamp {epoch:?} has a leading zero; \
                                 AWS writes it without one ({:?})",
                                epoch.trim_start_matches('0')
                            )));
                        }
                        let epoch = epoch
                            .parse()
                            .map_err(|_| err("consumer creation timestamp is out of range"))?;
                        (name, Some(epoch))
                    }
                };
                if !valid_name(name) {
                    return Err(err(&format!(
                        "consumer name {name:?} must be 1-128 characters of [a-zA-Z0-9_.-]"
                    )));
                }
                (
                    stream,
                    Some(ConsumerRef {
                        name: name.to_string(),
                        created,
                    }),
                )
            }
        };
        if !valid_name(stream) {
            return Err(err(&format!(
                "stream name {stream:?} must be 1-128 characters of [a-zA-Z0-9_.-]"
            )));
        }
        Ok(ResourceArn {
            scope: Scope {
                partition: partition.to_string(),
                region: region.to_string(),
                account: account.to_string(),
            },
            stream: stream.to_string(),
            consumer,
        })
    }

    pub fn is_consumer(&self) -> bool {
        self.consumer.is_some()
    }

    /// A consumer named without its creation timestamp must be resolved against the live
    /// registration before any policy call can address it.
    pub fn needs_resolution(&self) -> bool {
        matches!(&self.consumer, Some(c) if c.created.is_none())
    }

    pub fn stream_arn(&self) -> ResourceArn {
        ResourceArn {
            scope: self.scope.clone(),
            stream: self.stream.clone(),
            consumer: None,
        }
    }

    /// The identity used to match manifests against live resources: a consumer's timestamp is
    /// dropped, because a manifest that names a consumer by name owns every registration of it.
    pub fn identity(&self) -> ResourceArn {
        let mut id = self.clone();
        if let Some(c) = &mut id.consumer {
            c.created = None;
        }
        id
    }

    /// [`Self::identity`] borrowed, for sorting and comparing many ARNs without a copy each:
    /// it orders exactly as `identity()` does.
    pub fn identity_key(&self) -> (&Scope, &str, Option<&str>) {
        (
            &self.scope,
            &self.stream,
            self.consumer.as_ref().map(|c| c.name.as_str()),
        )
    }

    /// Whether both name the same resource: a consumer with or without its timestamp is one.
    pub fn same_resource(&self, other: &ResourceArn) -> bool {
        self.identity_key() == other.identity_key()
    }

    pub fn kind(&self) -> &'static str {
        if self.is_consumer() {
            "consumer"
        } else {
            "stream"
        }
    }
}

impl fmt::Display for ResourceArn {
    // Piece by piece: ARNs are formatted several times per resource per run, and `write!` with
    // arguments costs several times as much.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Scope {
            partition,
            region,
            account,
        } = &self.scope;
        for part in [
            "arn:",
            partition,
            ":kinesis:",
            region,
            ":",
            account,
            ":stream/",
            &self.stream,
        ] {
            f.write_str(part)?;
        }
        if let Some(c) = &self.consumer {
            f.write_str("/consumer/")?;
            f.write_str(&c.name)?;
            if let Some(t) = c.created {
                write!(f, ":{t}")?;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for ResourceArn {
    type Err = ArnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_round_trips() {
        let s = "arn:aws:kinesis:us-east-1:111122223333:stream/orders";
        let a = ResourceArn::parse(s).unwrap();
        assert_eq!(a.stream, "orders");
        assert_eq!(a.scope.account, "111122223333");
        assert_eq!(a.scope.region, "us-east-1");
        assert!(!a.is_consumer());
        assert_eq!(a.to_string(), s);
    }

    #[test]
    fn consumer_with_and_without_timestamp() {
        let with = ResourceArn::parse(
            "arn:aws-cn:kinesis:cn-north-1:111122223333:stream/orders/consumer/app-1:1700000000",
        )
        .unwrap();
        let c = with.consumer.as_ref().unwrap();
        assert_eq!((c.name.as_str(), c.created), ("app-1", Some(1_700_000_000)));
        assert_eq!(with.scope.partition, "aws-cn");
        assert!(!with.needs_resolution());

        let without = ResourceArn::parse(
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders/consumer/app-1",
        )
        .unwrap();
        assert!(without.needs_resolution());
        assert_eq!(
            without.stream_arn().to_string(),
            "arn:aws:kinesis:us-east-1:111122223333:stream/orders"
        );
        assert_eq!(with.identity().consumer, without.identity().consumer);
    }

    #[test]
    fn region_names_of_every_partition_pass() {
        for region in [
            "us-east-1",
            "ap-southeast-5",
            "cn-north-1",
            "us-gov-west-1",
            "us-iso-east-1",
            "us-isob-east-1",
            "eu-isoe-west-1",
            "us-isof-south-1",
            "eusc-de-east-1",
            "mx-central-1",
        ] {
            assert!(is_region_name(region), "{region}");
        }
        for typo in [
            "us-east1",
            "us-east-",
            "us--east-1",
            "-us-east-1",
            "us-east-123",
            "u-east-1",
            "useast-1",
            "us-East-1",
            "us-east-1 ",
            "",
        ] {
            assert!(!is_region_name(typo), "{typo:?}");
        }
    }

    #[test]
    fn rejects_foreign_and_malformed() {
        for (bad, needle) in [
            ("arn:aws:s3:::bucket", "service is \"s3\""),
            ("arn:aws:kinesis:us-east-1", "expected arn:"),
            (
                "arn:aws:sqs:us-east-1:111122223333:stream/x",
                "not \"kinesis\"",
            ),
            (
                "arn:gcp:kinesis:us-east-1:111122223333:stream/x",
                "partition",
            ),
            ("arn:aws:kinesis:us-east-1:1111:stream/x", "12-digit"),
            (
                "arn:aws:kinesis:us-east-1:111122223333:table/x",
                "stream/NAME",
            ),
            (
                "arn:aws:kinesis:us-east-1:111122223333:stream/",
                "stream name",
            ),
            (
                "arn:aws:kinesis:us-east-1:111122223333:stream/a b",
                "whitespace",
            ),
            (
                "arn:aws:kinesis:us-east-1:111122223333:stream/o/consumer/c:12x",
                "timestamp",
            ),
            ("arn:aws:kinesis:US-EAST-1:111122223333:stream/o", "region"),
            (
                "arn:aws:kinesis:us-east1:111122223333:stream/o",
                "not a region name",
            ),
            (
                "arn:aws:kinesis:-:111122223333:stream/o",
                "not a region name",
            ),
            (
                "arn:aws:kinesis:useast-1:111122223333:stream/o",
                "not a region name",
            ),
            (
                "arn:aws:kinesis:us-east-1:111122223333:stream/o/consumer/c:0017",
                "leading zero; AWS writes it without one (\"17\")",
            ),
            ("nope", "expected arn:"),
            (
                "arn:awsx:kinesis:us-east-1:111122223333:stream/x",
                "not an AWS partition",
            ),
            (
                "arn:aws-cn:kinesis:us-east-1:111122223333:stream/x",
                "region \"us-east-1\" is in partition \"aws\", not \"aws-cn\"",
            ),
            (
                "arn:aws:kinesis:cn-north-1:111122223333:stream/x",
                "is in partition \"aws-cn\"",
            ),
            (
                "arn:aws:kinesis:us-gov-west-1:111122223333:stream/x",
                "is in partition \"aws-us-gov\"",
            ),
        ] {
            let e = ResourceArn::parse(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn an_overlong_value_is_not_quoted_whole() {
        let long = format!("arn:aws:kinesis:{}", "é".repeat(100_000));
        let e = ResourceArn::parse(&long).unwrap_err().to_string();
        assert!(e.len() < 600, "{}", e.len());
        assert!(e.contains("must be 1 to 2048 characters"), "{e}");
    }
}
