//! Consumer-group names, checked the same way by both stores.
//!
//! A group name follows the rules of a topic name ([`crate::topic::validate`]):
//! 1 to [`crate::topic::MAX_NAME_LEN`] characters of `[A-Za-z0-9._-]`, and
//! not `.` or `..`. Group names are keys of the stored offsets and may later
//! name files or metrics, so the same conservative alphabet applies.

use crate::{CommitError, OffsetCommit};

/// Checks one group name.
pub fn validate_name(group: &str) -> Result<(), CommitError> {
    crate::topic::check_name(group).map_err(CommitError::InvalidGroup)
}

/// Checks the group name of every entry of a commit, before a store looks
/// at its topics: the first invalid one refuses the whole commit.
pub(crate) fn validate_commits(commits: &[OffsetCommit]) -> Result<(), CommitError> {
    commits
        .iter()
        .try_for_each(|commit| validate_name(&commit.group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_name_ordinary_group_accepts() {
        validate_name("billing-v2.eu_west").unwrap();
        validate_name(&"g".repeat(crate::topic::MAX_NAME_LEN)).unwrap();
    }

    #[test]
    fn validate_name_bad_group_rejects_with_reason() {
        for name in ["", ".", "..", "a/b", "a b", "ü"] {
            assert!(
                matches!(validate_name(name), Err(CommitError::InvalidGroup(_))),
                "{name:?} should be invalid"
            );
        }
        let too_long = "g".repeat(crate::topic::MAX_NAME_LEN + 1);
        assert!(matches!(
            validate_name(&too_long),
            Err(CommitError::InvalidGroup(reason)) if reason.contains("characters")
        ));
    }
}
