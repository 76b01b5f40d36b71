//! A consumer name held by one process at a time: a Redis key set with `SET NX PX`,
//! renewed while the process runs under the name.
//!
//! Two processes reading a group under one consumer name share its pending list: each
//! takes the other's pending entries for its own (they are delivered to "it" at its
//! next check) and flushes them under other ids, which writes rows twice. Default names
//! are unique, but a name can be configured, and two replicas may share a configuration.
//! So a lane runs only while it holds its name's lock, and refuses to start while another
//! live process holds it.
//!
//! [`NameLock`] is the protocol, sans-io like the consumer: it is told the time and the
//! replies, and says what to send. The lock is valid until `ttl` after the *sending* of
//! the command that set or renewed it (the reply may come late; Redis's clock started no
//! earlier), renewed every `renew_every`; when a renewal finds the key gone or another
//! token in it, or the validity runs out before a renewal succeeds, the lock is lost and
//! the holder must stop using the name. [`hold`] runs it on a connection.

use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use tokio_util::sync::CancellationToken;

use crate::Stopped;
use crate::retry::sleep_until;

/// How long a lock lives and how often it is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockConfig {
    pub ttl: Duration,
    /// Well below `ttl`, so a few failed renewals in a row do not lose the lock.
    pub renew_every: Duration,
}

/// Ten seconds, renewed every two: a name whose process died is free again ten seconds
/// later (a process restarted under a configured name waits that long for it), and
/// four renewals in a row may fail before a live holder loses it.
impl Default for LockConfig {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(10), renew_every: Duration::from_secs(2) }
    }
}

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockCommand {
    /// `SET key token NX PX ttl`.
    Acquire,
    /// `PEXPIRE key ttl` if `GET key` is still the token (a script).
    Renew,
}

/// What a reply came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockEvent {
    /// The name is ours.
    Acquired,
    /// Another live process holds the name.
    Refused,
    /// Still ours.
    Renewed,
    /// No longer ours: stop using the name.
    Lost,
    /// The command failed; it is sent again at the next poll after `retry_in`.
    Failed,
}

/// The lock's protocol for one name.
#[derive(Debug)]
pub struct NameLock {
    cfg: LockConfig,
    /// Until when the lock is certainly ours.
    valid_until: Option<Instant>,
    next_send: Instant,
    sent: Option<(LockCommand, Instant)>,
    lost: bool,
}

impl NameLock {
    pub fn new(cfg: LockConfig, now: Instant) -> Self {
        Self { cfg, valid_until: None, next_send: now, sent: None, lost: false }
    }

    pub fn config(&self) -> LockConfig {
        self.cfg
    }

    /// Whether the name is ours at `now`.
    pub fn held(&self, now: Instant) -> bool {
        !self.lost && self.valid_until.is_some_and(|t| now < t)
    }

    /// When to poll next.
    pub fn next_poll(&self) -> Instant {
        match self.valid_until {
            Some(until) => self.next_send.min(until),
            None => self.next_send,
        }
    }

    /// What to send at `now`, if anything. Marks the lock lost once its validity has run
    /// out without a renewal (the caller sees `held` turn false).
    pub fn poll(&mut self, now: Instant) -> Option<LockCommand> {
        if self.lost {
            return None;
        }
        if self.valid_until.is_some_and(|t| now >= t) {
            self.lost = true;
            return None;
        }
        if now < self.next_send {
            return None;
        }
        let command = if self.valid_until.is_some() { LockCommand::Renew } else { LockCommand::Acquire };
        self.sent = Some((command, now));
        Some(command)
    }

    /// The reply to the command last polled: `Ok(true)` set or renewed, `Ok(false)` not
    /// (the key is another's, or gone), `Err(())` no answer.
    pub fn handle(&mut self, now: Instant, reply: Result<bool, ()>) -> LockEvent {
        let Some((command, sent_at)) = self.sent.take() else { return LockEvent::Failed };
        match (command, reply) {
            (LockCommand::Acquire, Ok(true)) | (LockCommand::Renew, Ok(true)) => {
                self.valid_until = Some(sent_at + self.cfg.ttl);
                self.next_send = sent_at + self.cfg.renew_every;
                if command == LockCommand::Acquire { LockEvent::Acquired } else { LockEvent::Renewed }
            }
            (LockCommand::Acquire, Ok(false)) => LockEvent::Refused,
            (LockCommand::Renew, Ok(false)) => {
                self.lost = true;
                LockEvent::Lost
            }
            (_, Err(())) => {
                // Try again soon, well within the validity left.
                self.next_send = now + self.cfg.renew_every.min(self.cfg.ttl / 10).max(Duration::from_millis(10));
                if self.valid_until.is_some_and(|t| now >= t) {
                    self.lost = true;
                    return LockEvent::Lost;
                }
                LockEvent::Failed
            }
        }
    }
}

/// The name is another live process's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("consumer name {name:?} is held by another running process (lock {key}); give each process its own name")]
pub struct NameTaken {
    pub name: String,
    pub key: String,
}

/// Why [`hold`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error(transparent)]
    Taken(#[from] NameTaken),
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Takes the lock `key` for `name` (retrying while Redis fails, until `lost` is
/// cancelled: the holder's own stop), then renews it in a task of its own until `stop`,
/// and releases it then; when it is lost, `lost` is cancelled.
pub async fn hold<C: ConnectionLike + Send + 'static>(
    mut conn: C,
    key: String,
    name: &str,
    token: String,
    cfg: LockConfig,
    stop: CancellationToken,
    lost: CancellationToken,
) -> Result<(), HoldError> {
    let mut lock = NameLock::new(cfg, Instant::now());
    loop {
        sleep_until(lock.next_poll(), &lost).await?;
        let Some(command) = lock.poll(Instant::now()) else { continue };
        let reply = send(&mut conn, command, &key, &token, cfg).await;
        match lock.handle(Instant::now(), reply) {
            LockEvent::Acquired => break,
            LockEvent::Refused => return Err(NameTaken { name: name.to_string(), key }.into()),
            _ => {}
        }
    }
    tokio::spawn(async move {
        loop {
            if sleep_until(lock.next_poll(), &stop).await.is_err() {
                let _: redis::RedisResult<i64> =
                    redis::Script::new(RELEASE_SCRIPT).key(&key).arg(&token).invoke_async(&mut conn).await;
                return;
            }
            let now = Instant::now();
            let Some(command) = lock.poll(now) else {
                if !lock.held(now) {
                    tracing::error!(%key, "consumer name lock expired before it could be renewed");
                    lost.cancel();
                    return;
                }
                continue;
            };
            let reply = send(&mut conn, command, &key, &token, cfg).await;
            if lock.handle(Instant::now(), reply) == LockEvent::Lost {
                tracing::error!(%key, "consumer name lock lost to another process");
                lost.cancel();
                return;
            }
        }
    });
    Ok(())
}

async fn send<C: ConnectionLike + Send>(
    conn: &mut C,
    command: LockCommand,
    key: &str,
    token: &str,
    cfg: LockConfig,
) -> Result<bool, ()> {
    let ttl = cfg.ttl.as_millis() as u64;
    let reply: redis::RedisResult<bool> = match command {
        LockCommand::Acquire => redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl)
            .query_async::<Option<String>>(conn)
            .await
            .map(|r| r.is_some()),
        LockCommand::Renew => redis::Script::new(RENEW_SCRIPT)
            .key(key)
            .arg(token)
            .arg(ttl)
            .invoke_async::<i64>(conn)
            .await
            .map(|n| n == 1),
    };
    reply.map_err(|e| tracing::warn!(%key, error = %e, "consumer name lock: redis failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn cfg() -> LockConfig {
        LockConfig { ttl: 30 * SEC, renew_every: 5 * SEC }
    }

    #[test]
    fn acquired_then_renewed_on_schedule() {
        let t0 = Instant::now();
        let mut l = NameLock::new(cfg(), t0);
        assert!(!l.held(t0));
        assert_eq!(l.poll(t0), Some(LockCommand::Acquire));
        // The reply comes a second late: the validity counts from the sending.
        assert_eq!(l.handle(t0 + SEC, Ok(true)), LockEvent::Acquired);
        assert!(l.held(t0 + SEC) && !l.held(t0 + 30 * SEC));
        assert_eq!(l.poll(t0 + 4 * SEC), None, "not before renew_every");
        assert_eq!(l.next_poll(), t0 + 5 * SEC);
        assert_eq!(l.poll(t0 + 5 * SEC), Some(LockCommand::Renew));
        assert_eq!(l.handle(t0 + 5 * SEC, Ok(true)), LockEvent::Renewed);
        assert!(l.held(t0 + 34 * SEC));
    }

    #[test]
    fn a_name_held_elsewhere_is_refused() {
        let t0 = Instant::now();
        let mut l = NameLock::new(cfg(), t0);
        l.poll(t0);
        assert_eq!(l.handle(t0, Ok(false)), LockEvent::Refused);
        assert!(!l.held(t0));
    }

    #[test]
    fn a_renewal_that_finds_another_token_loses_the_lock() {
        let t0 = Instant::now();
        let mut l = NameLock::new(cfg(), t0);
        l.poll(t0);
        l.handle(t0, Ok(true));
        assert_eq!(l.poll(t0 + 5 * SEC), Some(LockCommand::Renew));
        assert_eq!(l.handle(t0 + 5 * SEC, Ok(false)), LockEvent::Lost);
        assert!(!l.held(t0 + 6 * SEC));
        assert_eq!(l.poll(t0 + 10 * SEC), None, "a lost lock is not taken back");
    }

    #[test]
    fn failed_renewals_are_retried_until_the_validity_runs_out() {
        let t0 = Instant::now();
        let mut l = NameLock::new(cfg(), t0);
        l.poll(t0);
        l.handle(t0, Ok(true));
        let mut now = t0 + 5 * SEC;
        let mut tries = 0;
        while let Some(c) = l.poll(now) {
            assert_eq!(c, LockCommand::Renew);
            assert!(l.held(now), "held while renewals fail within the ttl");
            tries += 1;
            assert_eq!(l.handle(now, Err(())), LockEvent::Failed);
            now = l.next_poll();
        }
        assert!(tries >= 5, "retried {tries} times");
        assert!(!l.held(now), "lost once the ttl has passed without a renewal");
        assert!(now >= t0 + 30 * SEC);
        // A renewal that succeeds in time keeps it.
        let mut l = NameLock::new(cfg(), t0);
        l.poll(t0);
        l.handle(t0, Ok(true));
        l.poll(t0 + 5 * SEC);
        l.handle(t0 + 5 * SEC, Err(()));
        let retry = l.next_poll();
        assert!(retry < t0 + 30 * SEC);
        assert_eq!(l.poll(retry), Some(LockCommand::Renew));
        assert_eq!(l.handle(retry, Ok(true)), LockEvent::Renewed);
        assert!(l.held(t0 + 31 * SEC));
    }
}
