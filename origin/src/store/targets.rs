//! A placement's targets: the document managers write, read with its revision, and
//! written only with its audit entry, in one script.

use std::collections::HashMap;

use allot_core::contract::keys::PlacementKeys;
use allot_core::contract::{Action, AuditRecord};
use allot_core::{PlacementId, TargetsSpec};
use redis::AsyncCommands;

use super::{Store, StoreError, corrupt};

/// A placement's stored targets.
#[derive(Debug, Clone)]
pub struct TargetsRecord {
    /// `None` once deleted (the revision survives, so old ETags stay stale).
    pub spec: Option<TargetsSpec>,
    pub rev: u64,
    pub updated_at_ms: u64,
    pub updated_by: String,
}

impl TargetsRecord {
    pub fn etag(&self) -> String {
        etag(self.rev)
    }
}

/// The `ETag` of a revision.
pub fn etag(rev: u64) -> String {
    format!("\"{rev}\"")
}

/// What a list of placements shows of one: its record without its document.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetsSummary {
    pub rev: u64,
    pub campaigns: usize,
    pub updated_at_ms: u64,
    pub updated_by: String,
}

/// The outcome of a conditional write.
#[derive(Debug, Clone)]
pub enum Cas {
    /// Written, with this audit entry (which holds the new revision and the previous
    /// spec).
    Written(AuditRecord),
    /// The precondition failed; the current revision.
    Conflict { rev: u64 },
    /// Nothing to delete.
    Missing,
}

/// The conditional write of a placement's targets, and its audit entry in the same
/// script: a change is never stored without its record, nor recorded without being
/// stored. Both keys carry the placement's hash tag.
pub(super) const CAS_SCRIPT: &str = r"
local cur = redis.call('HGET', KEYS[1], 'rev') or '0'
local old = redis.call('HGET', KEYS[1], 'spec') or ''
if ARGV[1] ~= '' and (old == '' or ARGV[1] ~= cur) then return {0, cur, old} end
if ARGV[2] == '' then
  if old == '' then return {2, cur, old} end
  redis.call('HDEL', KEYS[1], 'spec', 'campaigns')
else
  redis.call('HSET', KEYS[1], 'spec', ARGV[2], 'campaigns', ARGV[8])
end
local rev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'updated_at_ms', ARGV[3], 'updated_by', ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'who', ARGV[4], 'at', ARGV[3], 'action', ARGV[5],
  'placement', ARGV[7], 'before', old, 'after', ARGV[2], 'rev', rev)
return {1, tostring(rev), old}
";

/// How many audit entries each placement keeps (approximately).
pub const AUDIT_PER_PLACEMENT: usize = 10_000;

impl Store {
    /// The summaries of `ids` (`None` where a placement has no targets: deleted, or
    /// never written), each read without its document: the write keeps the campaign
    /// count beside it. A list of a thousand placements would otherwise read and parse
    /// a thousand documents, each up to a megabyte, for one number each. The reads go
    /// out at once (pipelined on the multiplexed connection, routed per key on a
    /// cluster). A record without the count (written before it was kept, or deleted:
    /// then it holds no document) is read whole.
    pub async fn summaries(&self, ids: &[PlacementId]) -> Result<Vec<Option<TargetsSummary>>, StoreError> {
        const FIELDS: [&str; 4] = ["rev", "campaigns", "updated_at_ms", "updated_by"];
        let reads = ids.iter().map(|p| {
            let (mut c, mut read) = (self.conn(), redis::cmd("HMGET"));
            read.arg(PlacementKeys::new(p).targets()).arg(&FIELDS[..]);
            async move { read.query_async::<Vec<Option<String>>>(&mut c).await }
        });
        let mut out = Vec::with_capacity(ids.len());
        for (p, fields) in ids.iter().zip(futures_util::future::join_all(reads).await) {
            let [rev, campaigns, at, by]: [Option<String>; 4] =
                fields?.try_into().map_err(|_| corrupt(format!("targets of {p}"), "HMGET answered another count"))?;
            let num = |v: Option<String>| v.and_then(|v| v.parse().ok()).unwrap_or(0);
            out.push(match (rev, campaigns) {
                (None, _) => None,
                (Some(rev), Some(campaigns)) => Some(TargetsSummary {
                    rev: num(Some(rev)),
                    campaigns: num(Some(campaigns)) as usize,
                    updated_at_ms: num(at),
                    updated_by: by.unwrap_or_default(),
                }),
                (Some(_), None) => self.targets(p).await?.and_then(|r| {
                    let campaigns = r.spec.as_ref()?.campaigns.len();
                    Some(TargetsSummary {
                        rev: r.rev,
                        campaigns,
                        updated_at_ms: r.updated_at_ms,
                        updated_by: r.updated_by,
                    })
                }),
            });
        }
        Ok(out)
    }

    pub async fn targets(&self, p: &PlacementId) -> Result<Option<TargetsRecord>, StoreError> {
        let mut c = self.conn();
        let h: HashMap<String, String> = c.hgetall(PlacementKeys::new(p).targets()).await?;
        if h.is_empty() {
            return Ok(None);
        }
        let spec = match h.get("spec") {
            Some(s) => Some(serde_json::from_str(s).map_err(|e| corrupt(format!("targets of {p}"), e))?),
            None => None,
        };
        let num = |k: &str| h.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Some(TargetsRecord {
            spec,
            rev: num("rev"),
            updated_at_ms: num("updated_at_ms"),
            updated_by: h.get("updated_by").cloned().unwrap_or_default(),
        }))
    }

    /// Writes (`spec = Some`) or deletes targets if the revision is still `if_match`
    /// (or unconditionally when `None`), with the placement's audit entry.
    pub async fn write_targets(
        &self,
        p: &PlacementId,
        if_match: Option<u64>,
        spec: Option<&TargetsSpec>,
        who: &str,
        now_ms: u64,
    ) -> Result<Cas, StoreError> {
        let json = match spec {
            Some(s) => serde_json::to_string(s).map_err(|e| corrupt("targets", e))?,
            None => String::new(),
        };
        let action = if spec.is_some() { Action::Put } else { Action::Delete };
        let k = PlacementKeys::new(p);
        let mut c = self.conn();
        let (status, rev, before): (i64, String, String) = self
            .cas
            .key(k.targets())
            .key(k.audit())
            .arg(if_match.map(|r| r.to_string()).unwrap_or_default())
            .arg(&json)
            .arg(now_ms)
            .arg(who)
            .arg(action.as_str())
            .arg(AUDIT_PER_PLACEMENT)
            .arg(p.as_str())
            .arg(spec.map_or(0, |s| s.campaigns.len()))
            .invoke_async(&mut c)
            .await?;
        let rev = rev.parse().map_err(|e| corrupt("targets revision", e))?;
        Ok(match status {
            1 => Cas::Written(AuditRecord {
                who: who.to_string(),
                at_ms: now_ms,
                action,
                placement: p.clone(),
                before,
                after: json,
                rev,
            }),
            0 => Cas::Conflict { rev },
            _ => Cas::Missing,
        })
    }
}

#[cfg(test)]
mod tests {
    use allot_core::contract::audit;

    #[test]
    fn the_targets_script_writes_every_audit_field() {
        for field in audit::FIELDS {
            assert!(super::CAS_SCRIPT.contains(&format!("'{field}'")), "the script does not write {field:?}");
        }
    }
}
