//! Known Kinesis action names, used for canonical casing and by the lint.

use super::wildcard_match;

/// The `kinesis:` service prefix, as IAM writes it.
pub const KINESIS_PREFIX: &str = "kinesis";

/// Kinesis action names in their official casing, without the `kinesis:` prefix. Sorted.
pub const KINESIS_ACTIONS: &[&str] = &[
    "AddTagsToStream",
    "CreateStream",
    "DecreaseStreamRetentionPeriod",
    "DeleteResourcePolicy",
    "DeleteStream",
    "DeregisterStreamConsumer",
    "DescribeAccountSettings",
    "DescribeLimits",
    "DescribeStream",
    "DescribeStreamConsumer",
    "DescribeStreamSummary",
    "DisableEnhancedMonitoring",
    "EnableEnhancedMonitoring",
    "GetRecords",
    "GetResourcePolicy",
    "GetShardIterator",
    "IncreaseStreamRetentionPeriod",
    "ListShards",
    "ListStreamConsumers",
    "ListStreams",
    "ListTagsForResource",
    "ListTagsForStream",
    "MergeShards",
    "PutRecord",
    "PutRecords",
    "PutResourcePolicy",
    "RegisterStreamConsumer",
    "RemoveTagsFromStream",
    "SplitShard",
    "StartStreamEncryption",
    "StopStreamEncryption",
    "SubscribeToShard",
    "TagResource",
    "UntagResource",
    "UpdateAccountSettings",
    "UpdateMaxRecordSize",
    "UpdateShardCount",
    "UpdateStreamMode",
    "UpdateStreamWarmThroughput",
];

/// The official casing of a Kinesis action name given without its prefix, matched
/// case-insensitively (IAM action names are case-insensitive). `None` for unknown names and
/// for patterns.
pub fn official_name(name: &str) -> Option<&'static str> {
    KINESIS_ACTIONS
        .iter()
        .copied()
        .find(|known| known.eq_ignore_ascii_case(name))
}

/// Splits `service:Name` at the first colon. `None` when there is no colon (e.g. a bare `*`).
pub fn split_action(action: &str) -> Option<(&str, &str)> {
    action.split_once(':')
}

/// True when `action` is `kinesis:<a known name>` (any casing, no wildcards).
pub fn is_known_action(action: &str) -> bool {
    match split_action(action) {
        Some((prefix, name)) => {
            prefix.eq_ignore_ascii_case(KINESIS_PREFIX) && official_name(name).is_some()
        }
        None => false,
    }
}

/// True when the action pattern (full `service:Name`, IAM wildcards `*` and `?`, case-insensitive)
/// matches at least one known Kinesis action. A bare `*` matches them all.
pub fn pattern_matches_known_action(pattern: &str) -> bool {
    KINESIS_ACTIONS
        .iter()
        .any(|name| pattern_covers(pattern, &format!("{KINESIS_PREFIX}:{name}")))
}

/// Whether an `Action` pattern covers `action` (`prefix:Name`), as IAM matches them: with
/// wildcards, in any case.
pub fn pattern_covers(pattern: &str, action: &str) -> bool {
    wildcard_match(&pattern.to_ascii_lowercase(), &action.to_ascii_lowercase())
}

/// The known action whose name is closest to `name` (without prefix), for "did you mean" hints.
pub fn closest_known(name: &str) -> Option<&'static str> {
    super::closest(name, KINESIS_ACTIONS.iter().copied(), 3)
}

/// The canonical spelling of one action: service prefix lowercased, and a known Kinesis action
/// name in its official casing. Other names are kept verbatim, since only the known list tells
/// us what the official casing is.
pub fn canonical_action(action: &str) -> String {
    match split_action(action) {
        Some((prefix, name)) => {
            let prefix = prefix.to_ascii_lowercase();
            let name = if prefix == KINESIS_PREFIX {
                official_name(name).unwrap_or(name)
            } else {
                name
            };
            format!("{prefix}:{name}")
        }
        None => action.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_unique_and_complete() {
        let mut sorted = KINESIS_ACTIONS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, KINESIS_ACTIONS);
        assert_eq!(KINESIS_ACTIONS.len(), 39);
    }

    #[test]
    fn official_name_is_case_insensitive() {
        assert_eq!(official_name("getrecords"), Some("GetRecords"));
        assert_eq!(official_name("SUBSCRIBETOSHARD"), Some("SubscribeToShard"));
        assert_eq!(official_name("GetRecord"), None);
        assert_eq!(official_name("Get*"), None);
    }

    #[test]
    fn known_action_needs_kinesis_prefix() {
        assert!(is_known_action("kinesis:PutRecord"));
        assert!(is_known_action("Kinesis:putrecord"));
        assert!(!is_known_action("s3:PutRecord"));
        assert!(!is_known_action("PutRecord"));
        assert!(!is_known_action("kinesis:PutRecordz"));
    }

    #[test]
    fn patterns_match_known_actions() {
        assert!(pattern_matches_known_action("kinesis:Get*"));
        assert!(pattern_matches_known_action("kinesis:get*"));
        assert!(pattern_matches_known_action("KINESIS:*"));
        assert!(pattern_matches_known_action("*"));
        assert!(pattern_matches_known_action("kinesis:PutRecord?"));
        assert!(pattern_matches_known_action("kinesis:?utRecord"));
        assert!(!pattern_matches_known_action("kinesis:Fetch*"));
        assert!(!pattern_matches_known_action("kinesis:PutRecord??"));
        assert!(!pattern_matches_known_action("s3:*"));
    }

    #[test]
    fn canonical_action_rules() {
        assert_eq!(canonical_action("kinesis:getrecords"), "kinesis:GetRecords");
        assert_eq!(canonical_action("KINESIS:GetRecords"), "kinesis:GetRecords");
        assert_eq!(canonical_action("Kinesis:get*"), "kinesis:get*");
        assert_eq!(
            canonical_action("kinesis:Unknownthing"),
            "kinesis:Unknownthing"
        );
        assert_eq!(canonical_action("S3:GetObject"), "s3:GetObject");
        assert_eq!(canonical_action("s3:getobject"), "s3:getobject");
        assert_eq!(canonical_action("*"), "*");
    }

    #[test]
    fn closest_known_suggests() {
        assert_eq!(closest_known("GetRecord"), Some("GetRecords"));
        assert_eq!(closest_known("SubscribeToShards"), Some("SubscribeToShard"));
        assert_eq!(closest_known("CompletelyDifferent"), None);
    }
}
