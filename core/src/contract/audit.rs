//! An audit entry: one admin change, as the origin records it and the archiver stores it.
//!
//! The same entry is written three times by two programs: by the origin's targets
//! script (Lua, into the placement's trail, atomically with the change), by the origin
//! again (a copy into the global feed, [`keys::AUDIT`](super::keys::AUDIT)), and read by
//! the archiver from the feed into the `audit` table. The field names and the parsing
//! live here so the three cannot drift; the origin's tests hold its script to
//! [`FIELDS`].

use crate::PlacementId;

/// Entry field: who made the change (the admin token's name).
pub const WHO: &str = "who";
/// Entry field: when, in UTC milliseconds (the time stored with the targets).
pub const AT: &str = "at";
/// Entry field: [`Action`] as text.
pub const ACTION: &str = "action";
/// Entry field: the placement changed.
pub const PLACEMENT: &str = "placement";
/// Entry field: the targets before the change, as JSON; empty if there were none.
pub const BEFORE: &str = "before";
/// Entry field: the targets after the change, as JSON; empty after a delete.
pub const AFTER: &str = "after";
/// Entry field: the targets revision the change produced (the admin API's `ETag`).
pub const REV: &str = "rev";

/// Every field of an entry, in the order they are written.
pub const FIELDS: [&str; 7] = [WHO, AT, ACTION, PLACEMENT, BEFORE, AFTER, REV];

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Put,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "put" => Some(Self::Put),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub who: String,
    pub at_ms: u64,
    pub action: Action,
    pub placement: PlacementId,
    /// Targets JSON before the change; empty if the placement had none.
    pub before: String,
    /// Targets JSON after the change; empty after a delete.
    pub after: String,
    pub rev: u64,
}

/// Why an entry is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("audit entry without {0:?}")]
    Missing(&'static str),
    #[error("audit entry field {field:?}: {value:?} is not {expected}")]
    Invalid { field: &'static str, value: String, expected: &'static str },
}

impl AuditRecord {
    /// The entry's fields, in [`FIELDS`] order, for `XADD`.
    pub fn fields(&self) -> [(&'static str, String); 7] {
        [
            (WHO, self.who.clone()),
            (AT, self.at_ms.to_string()),
            (ACTION, self.action.as_str().to_string()),
            (PLACEMENT, self.placement.as_str().to_string()),
            (BEFORE, self.before.clone()),
            (AFTER, self.after.clone()),
            (REV, self.rev.to_string()),
        ]
    }

    /// Parses an entry from its fields (`field` answers a field's text). Entries written
    /// before the revision was recorded read as revision 0.
    pub fn parse<'a>(field: impl Fn(&'static str) -> Option<&'a str>) -> Result<Self, AuditError> {
        let text = |name| field(name).ok_or(AuditError::Missing(name));
        let invalid = |field: &'static str, value: &str, expected| AuditError::Invalid {
            field,
            value: value.chars().take(80).collect(),
            expected,
        };
        let number =
            |name: &'static str, value: &str| value.parse::<u64>().map_err(|_| invalid(name, value, "a number"));
        let at = text(AT)?;
        let action = text(ACTION)?;
        let placement = text(PLACEMENT)?;
        Ok(Self {
            who: text(WHO)?.to_string(),
            at_ms: number(AT, at)?,
            action: Action::parse(action).ok_or_else(|| invalid(ACTION, action, "put or delete"))?,
            placement: PlacementId::parse(placement).map_err(|_| invalid(PLACEMENT, placement, "a placement id"))?,
            before: text(BEFORE)?.to_string(),
            after: text(AFTER)?.to_string(),
            rev: field(REV).map_or(Ok(0), |r| number(REV, r))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            who: "ops".into(),
            at_ms: 1_795_600_790_000,
            action: Action::Put,
            placement: PlacementId::parse("home_feed").unwrap(),
            before: String::new(),
            after: r#"{"campaigns":[]}"#.into(),
            rev: 3,
        }
    }

    #[test]
    fn fields_parse_back_to_the_record() {
        let fields: HashMap<&str, String> = record().fields().into_iter().collect();
        assert_eq!(fields.len(), FIELDS.len());
        let parsed = AuditRecord::parse(|name| fields.get(name).map(String::as_str)).unwrap();
        assert_eq!(parsed, record());
    }

    #[test]
    fn bad_entries_name_the_field() {
        let mut fields: HashMap<&str, String> = record().fields().into_iter().collect();
        fields.insert(ACTION, "rename".into());
        let err = AuditRecord::parse(|name| fields.get(name).map(String::as_str)).unwrap_err();
        assert!(matches!(err, AuditError::Invalid { field: ACTION, .. }), "{err}");
        fields.remove(WHO);
        let err = AuditRecord::parse(|name| fields.get(name).map(String::as_str)).unwrap_err();
        assert_eq!(err, AuditError::Missing(WHO));
        let mut fields: HashMap<&str, String> = record().fields().into_iter().collect();
        fields.remove(REV);
        assert_eq!(AuditRecord::parse(|name| fields.get(name).map(String::as_str)).unwrap().rev, 0);
    }
}
