//! The thin async driver: runs a [`Consumer`]'s commands on a Redis connection.
//!
//! It decides nothing. It asks the machine what to do, sends that command, maps the reply
//! (or the error code) back, and sleeps when the machine says wait. Two rules are its own:
//! a read, once sent, is never cancelled (a cancelled `XREADGROUP` would deliver entries
//! to this consumer that no one holds), and a stop is noticed between commands, except
//! that an acknowledgement is always tried once.

use std::time::Instant;

use redis::aio::ConnectionLike;
use redis::streams::StreamReadOptions;
use redis::{AsyncTypedCommands, RedisError, RedisResult};
use tokio_util::sync::CancellationToken;

use crate::machine::{Batch, Command, Consumer, ConsumerConfig, ConsumerInfo, Failure, PendingInfo, Reply, Source};
use crate::retry::{Jitter, sleep_until};
use crate::{Entry, Stopped};

/// Told about every failed Redis command (each is retried after a backoff, or, for a
/// claim, left to the next check): for the application's logs and metrics.
pub trait Observer: Send + Sync {
    fn failed(&self, what: &'static str, error: &RedisError);
}

impl<F: Fn(&'static str, &RedisError) + Send + Sync> Observer for F {
    fn failed(&self, what: &'static str, error: &RedisError) {
        self(what, error)
    }
}

/// One consumer of `group` on `stream`, over connection `C`.
pub struct StreamConsumer<C, O> {
    conn: C,
    stream: String,
    group: String,
    machine: Consumer,
    jitter: Jitter,
    observer: O,
}

impl<C, O> std::fmt::Debug for StreamConsumer<C, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConsumer")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("machine", &self.machine)
            .finish_non_exhaustive()
    }
}

impl<C: ConnectionLike + Send + Sync, O: Observer> StreamConsumer<C, O> {
    pub fn new(conn: C, stream: &str, group: &str, cfg: ConsumerConfig, observer: O) -> Self {
        Self {
            conn,
            stream: stream.to_string(),
            group: group.to_string(),
            machine: Consumer::new(cfg, Instant::now()),
            jitter: Jitter::new(),
            observer,
        }
    }

    /// The connection, for the application's own commands (they must not block).
    pub fn conn(&mut self) -> &mut C {
        &mut self.conn
    }

    /// See [`Consumer::wake_by`].
    pub fn wake_by(&mut self, at: Option<Instant>) {
        self.machine.wake_by(at);
    }

    /// The next entries to process: a recovery batch (own pending or claimed entries), or
    /// what one read of new entries returned, which may be nothing (the read timed out at
    /// the wake-up time). A recovery batch must be acknowledged before `next` is called
    /// again; until then `next` returns an empty batch. `Err(Stopped)` once `stop` is
    /// cancelled, between commands.
    pub async fn next(&mut self, stop: &CancellationToken) -> Result<Batch, Stopped> {
        loop {
            let Some(command) = self.machine.poll(Instant::now()) else {
                debug_assert!(false, "next() while a recovery batch is held");
                return Ok(Batch { source: Source::New, entries: Vec::new() });
            };
            if stop.is_cancelled() && !matches!(command, Command::Ack { .. }) {
                return Err(Stopped);
            }
            if let Some(batch) = self.step(command, stop).await? {
                return Ok(batch);
            }
        }
    }

    /// Acknowledges `ids`, whose effect is now durable, retrying until done. The first
    /// attempt is made even when stopping; `Err(Stopped)` if a retry is cut short (the
    /// entries stay pending, and this consumer finds them at its next start).
    pub async fn ack(&mut self, ids: Vec<String>, stop: &CancellationToken) -> Result<(), Stopped> {
        self.machine.done(ids);
        while self.machine.acking() {
            match self.machine.poll(Instant::now()) {
                Some(command @ (Command::Ack { .. } | Command::Wait { .. })) => {
                    self.step(command, stop).await?;
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Runs one command and feeds its reply to the machine.
    async fn step(&mut self, command: Command, stop: &CancellationToken) -> Result<Option<Batch>, Stopped> {
        let what = command.what();
        let reply = match command {
            Command::Wait { until } => {
                sleep_until(until, stop).await?;
                return Ok(None);
            }
            command => self.execute(command).await,
        };
        let reply = reply.map_err(|e| {
            let failure = failure(&e);
            if failure != Failure::BusyGroup {
                self.observer.failed(what, &e);
            }
            failure
        });
        let unit = self.jitter.unit();
        Ok(self.machine.handle(Instant::now(), reply, unit))
    }

    async fn execute(&mut self, command: Command) -> RedisResult<Reply> {
        let (stream, group) = (self.stream.as_str(), self.group.as_str());
        let me = self.machine.config().consumer.as_str();
        let conn = &mut self.conn;
        let read = |count: usize| StreamReadOptions::default().group(group, me).count(count);
        Ok(match command {
            Command::CreateGroup => {
                conn.xgroup_create_mkstream(stream, group, "0").await?;
                Reply::GroupReady
            }
            Command::ReadPending { after, count } => {
                Reply::Entries(entries(conn.xread_options(&[stream], &[&after], &read(count)).await?))
            }
            Command::ReadNew { count, block } => {
                let opts = read(count).block(block.as_millis() as usize);
                Reply::Entries(entries(conn.xread_options(&[stream], &[">"], &opts).await?))
            }
            Command::ListConsumers => {
                let reply = conn.xinfo_consumers(stream, group).await?;
                let list = reply.consumers.into_iter().map(|c| ConsumerInfo {
                    name: c.name,
                    pending: c.pending,
                    idle: millis(c.idle),
                });
                Reply::Consumers(list.collect())
            }
            Command::ListPending { consumer, count } => {
                let reply = conn.xpending_consumer_count(stream, group, "-", "+", count, &consumer).await?;
                let list = reply.ids.into_iter().map(|p| PendingInfo { id: p.id, idle: millis(p.last_delivered_ms) });
                Reply::Pending(list.collect())
            }
            Command::Claim { ids, min_idle } => {
                let reply = conn.xclaim(stream, group, me, min_idle.as_millis() as u64, &ids).await?;
                Reply::Entries(reply.ids.into_iter().map(Entry::from).collect())
            }
            Command::Ack { ids } => {
                conn.xack(stream, group, &ids).await?;
                Reply::Acked
            }
            Command::Forget { consumer, min_idle } => {
                FORGET
                    .key(stream)
                    .arg(group)
                    .arg(&consumer)
                    .arg(min_idle.as_millis() as u64)
                    .invoke_async::<i64>(conn)
                    .await?;
                Reply::Forgotten
            }
            // Nothing to send: `step` sleeps instead.
            Command::Wait { .. } => Reply::Acked,
        })
    }
}

/// Deletes a consumer from a group only if it still has nothing pending and has been
/// idle at least `ARGV[3]` ms: checked and done atomically, so a consumer that came back
/// since it was listed keeps its pending entries (`DELCONSUMER` would drop them).
/// KEYS: the stream; ARGV: group, consumer, min idle. Returns 1 if deleted.
static FORGET: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] == ARGV[2] then
    if tonumber(f['pending']) == 0 and tonumber(f['idle']) >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
",
    )
});

fn entries(reply: Option<redis::streams::StreamReadReply>) -> Vec<Entry> {
    reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).map(Entry::from).collect()
}

fn millis(ms: usize) -> std::time::Duration {
    std::time::Duration::from_millis(ms as u64)
}

fn failure(e: &RedisError) -> Failure {
    match e.code() {
        Some("BUSYGROUP") => Failure::BusyGroup,
        Some("NOGROUP") => Failure::NoGroup,
        _ => Failure::Other,
    }
}
