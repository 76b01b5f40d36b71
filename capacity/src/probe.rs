//! What the measurement reads from the processes: Redis's command counters, its memory
//! per key and in total, and whether the stream's consumer groups have drained.
//!
//! Every reading fails loudly when it cannot be trusted: a group that did not drain,
//! a counter that went backwards (a Redis restart), a key class that appears nowhere.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use allot_core::contract::stream;
use anyhow::{Context, bail, ensure};

/// `INFO commandstats`: calls per command (Lua scripts' inner calls included, under
/// their own names).
pub type CommandCounts = BTreeMap<String, u64>;

pub fn command_counts(conn: &mut redis::Connection) -> anyhow::Result<CommandCounts> {
    let text: String = redis::cmd("INFO").arg("commandstats").query(conn).context("INFO commandstats")?;
    Ok(parse_command_counts(&text))
}

/// Parses `cmdstat_<name>:calls=<n>,…` lines.
pub fn parse_command_counts(text: &str) -> CommandCounts {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// `after − before` per command; an error when a counter went backwards (the server
/// restarted or its stats were reset: the delta would be meaningless). The probes' own
/// commands (`info`, `memory`, `scan`, `xinfo`, `xpending`, `type`, `config`) are left out.
pub fn delta(before: &CommandCounts, after: &CommandCounts) -> anyhow::Result<CommandCounts> {
    const PROBES: [&str; 7] = ["info", "memory|usage", "scan", "xinfo|groups", "xpending", "type", "config|get"];
    let mut out = CommandCounts::new();
    for k in before.keys() {
        ensure!(after.contains_key(k), "command counter {k} vanished: Redis restarted or was reset during the run");
    }
    for (k, &a) in after {
        let b = before.get(k).copied().unwrap_or(0);
        ensure!(a >= b, "command counter {k} went backwards ({b} → {a}): Redis restarted during the run");
        if a > b && !PROBES.contains(&k.as_str()) {
            out.insert(k.clone(), a - b);
        }
    }
    Ok(out)
}

/// `used_memory` from `INFO memory`.
pub fn used_memory(conn: &mut redis::Connection) -> anyhow::Result<u64> {
    let text: String = redis::cmd("INFO").arg("memory").query(conn).context("INFO memory")?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("used_memory:")?.parse().ok())
        .context("INFO memory has no used_memory")
}

/// Fails unless both consumer groups of the event stream have read and acknowledged
/// everything (lag 0, nothing pending).
pub fn drained(conn: &mut redis::Connection) -> anyhow::Result<()> {
    let groups: Vec<HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg(stream::EVENTS).query(conn).context("XINFO GROUPS")?;
    for wanted in [stream::AGGREGATOR_GROUP, stream::ARCHIVER_GROUP] {
        let g = groups
            .iter()
            .find(|g| g.get("name").and_then(text).as_deref() == Some(wanted))
            .with_context(|| format!("the consumer group {wanted} does not exist"))?;
        let num = |k: &str| g.get(k).and_then(int);
        let (lag, pending) = (num("lag"), num("pending"));
        ensure!(lag == Some(0) && pending == Some(0), "group {wanted}: lag {lag:?}, pending {pending:?}");
    }
    Ok(())
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: &redis::Value) -> Option<i64> {
    match v {
        redis::Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// Polls [`drained`] for up to `timeout`; the last reason when it never held.
pub fn wait_drained(conn: &mut redis::Connection, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match drained(conn) {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => {
                bail!("the stream's consumers did not drain within {timeout:?}: {e:#}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The class of a key, by the contract's layout: a placement's keys by their suffix
/// (`targets`, `plan`, `w` for windows, `applied` markers, …), the global ones by name.
pub fn key_class(key: &str) -> String {
    if key.starts_with("allot:replay:") {
        return "replay".into();
    }
    if key.starts_with("allot:lock:") {
        return "lock".into();
    }
    match key.split_once("}:") {
        Some((tag, rest)) if tag.starts_with("allot:{") && tag != "allot:{control" => {
            rest.split(':').next().unwrap_or(rest).to_string()
        }
        _ => key.to_string(),
    }
}

/// Memory by key class: `(keys, bytes, elements)` where elements is a list's, a
/// stream's or a hash's length (0 for strings).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClassMemory {
    pub keys: u64,
    pub bytes: u64,
    pub elements: u64,
}

/// Every key's `MEMORY USAGE … SAMPLES 0` (exact), summed by [`key_class`].
pub fn memory_by_class(conn: &mut redis::Connection) -> anyhow::Result<BTreeMap<String, ClassMemory>> {
    let mut out: BTreeMap<String, ClassMemory> = BTreeMap::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query(conn).context("SCAN")?;
        for k in keys {
            let bytes: Option<u64> =
                redis::cmd("MEMORY").arg("USAGE").arg(&k).arg("SAMPLES").arg(0).query(conn).context("MEMORY USAGE")?;
            let Some(bytes) = bytes else { continue }; // expired meanwhile
            let kind: String = redis::cmd("TYPE").arg(&k).query(conn)?;
            let elements: u64 = match kind.as_str() {
                "list" => redis::cmd("LLEN").arg(&k).query(conn)?,
                "stream" => redis::cmd("XLEN").arg(&k).query(conn)?,
                "hash" => redis::cmd("HLEN").arg(&k).query(conn)?,
                "set" => redis::cmd("SCARD").arg(&k).query(conn)?,
                _ => 0,
            };
            let c = out.entry(key_class(&k)).or_default();
            c.keys += 1;
            c.bytes += bytes;
            c.elements += elements;
        }
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_stats_parse_and_diff() {
        let before = parse_command_counts("# Commandstats\r\ncmdstat_xadd:calls=10,usec=5\r\ncmdstat_info:calls=1\r\n");
        let after = parse_command_counts("cmdstat_xadd:calls=25,usec=9\ncmdstat_set:calls=3\ncmdstat_info:calls=7\n");
        let d = delta(&before, &after).unwrap();
        assert_eq!(d, BTreeMap::from([("set".into(), 3), ("xadd".into(), 15)]));
        assert!(delta(&after, &before).unwrap_err().to_string().contains("restarted"));
    }

    #[test]
    fn keys_fall_into_classes() {
        assert_eq!(key_class("allot:{cap_00001}:w:123"), "w");
        assert_eq!(key_class("allot:{cap_00001}:applied:1-0"), "applied");
        assert_eq!(key_class("allot:{cap_00001}:targets"), "targets");
        assert_eq!(key_class("allot:replay:{allot:events}:ab"), "replay");
        assert_eq!(key_class("allot:{control}:lease"), "allot:{control}:lease");
        assert_eq!(key_class("allot:events"), "allot:events");
    }
}
