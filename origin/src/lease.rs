//! The control lease's shell: core's [`Lease`] run against Redis, on its own task.
//!
//! The lease is renewed here, concurrently with the rounds, so a long round (many
//! placements, a slow publish) cannot let it lapse unnoticed. The rounds never ask
//! Redis whether they lead: they read the [`Fence`] this task keeps current, check it
//! before every publish and save, and stamp their writes with its epoch.
//!
//! The key holds `"<epoch> <holder>"`. Taking a free lease increments
//! `allot:{control}:epoch` in the same script, so every change of hands gets a new,
//! larger epoch; renewing keeps it.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use allot_core::contract::keys;
use allot_core::{Fence, Lease, LeaseConfig, LeaseReply, Transition};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::startup::App;

const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
if not held then
  local epoch = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], epoch .. ' ' .. ARGV[1], 'PX', ARGV[2])
  return epoch
end
local sep = string.find(held, ' ', 1, true)
if sep and string.sub(held, sep + 1) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(string.sub(held, 1, sep - 1))
end
return 0
";
const RELEASE: &str = r"
local held = redis.call('GET', KEYS[1])
local sep = held and string.find(held, ' ', 1, true)
if sep and string.sub(held, sep + 1) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Milliseconds on a monotonic clock: lease validity must not move with the wall clock.
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A pause of the whole process, simulated by the `stall_before_*` failpoints: while it
/// lasts, renewals stop, as they would if the process were stopped. Empty without the
/// `failpoints` feature.
#[derive(Debug, Default)]
pub struct Pause(#[cfg(feature = "failpoints")] std::sync::atomic::AtomicBool);

impl Pause {
    #[cfg(feature = "failpoints")]
    pub fn set(&self, paused: bool) {
        self.0.store(paused, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_paused(&self) -> bool {
        #[cfg(feature = "failpoints")]
        return self.0.load(std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(feature = "failpoints"))]
        false
    }
}

/// The rounds' view of the lease.
#[derive(Debug, Clone)]
pub struct LeaseView(watch::Receiver<Option<Fence>>);

impl LeaseView {
    /// The grant in force now, if this replica leads.
    pub fn current(&self) -> Option<Fence> {
        let fence = *self.0.borrow();
        fence.filter(|f| f.is_valid(mono_ms()))
    }

    /// When the grant `fence` runs out, as a tokio instant (a deadline for work done
    /// under it).
    pub fn deadline(fence: &Fence) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(fence.remaining_ms(mono_ms()))
    }

    /// Waits until the view changes (a grant, a renewal, a loss).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One ask: take or renew the lease for `holder`.
async fn ask(app: &App, holder: &str) -> LeaseReply {
    let mut c = app.store.conn();
    let script = redis::Script::new(ACQUIRE);
    let mut invocation = script.key(keys::LEASE);
    invocation.key(keys::LEASE_EPOCH).arg(holder).arg(app.config.control.lease_ms);
    let asked = invocation.invoke_async::<u64>(&mut c);
    match tokio::time::timeout(Duration::from_millis(app.config.control.lease_ms), asked).await {
        Ok(Ok(0)) => LeaseReply::Refused,
        Ok(Ok(epoch)) => LeaseReply::Granted { epoch },
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "control lease request failed");
            LeaseReply::Failed
        }
        Err(_) => {
            tracing::warn!("control lease request timed out");
            LeaseReply::Failed
        }
    }
}

fn report(app: &App, transition: Option<Transition>) {
    match transition {
        Some(Transition::Acquired { epoch }) => {
            tracing::info!(instance = %app.instance, epoch, "control lease acquired");
            app.metrics.control_leader.set(1);
            app.metrics.control_epoch.set(epoch as i64);
        }
        Some(Transition::Lost) => {
            tracing::warn!(instance = %app.instance, "control lease lost");
            app.metrics.control_leader.set(0);
        }
        None => {}
    }
}

/// Starts keeping the lease; the view is what the rounds read.
pub fn spawn(app: Arc<App>, cancel: CancellationToken) -> (LeaseView, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(run(app, tx, cancel));
    (LeaseView(rx), task)
}

async fn run(app: Arc<App>, tx: watch::Sender<Option<Fence>>, cancel: CancellationToken) {
    let mut lease = Lease::new(LeaseConfig::new(app.config.control.lease_ms));
    loop {
        report(&app, lease.expire(mono_ms()));
        if !app.pause.is_paused() && lease.poll(mono_ms()) {
            let reply = tokio::select! {
                _ = cancel.cancelled() => break,
                reply = ask(&app, &app.instance) => reply,
            };
            report(&app, lease.on_reply(mono_ms(), reply));
        }
        tx.send_if_modified(|held| {
            let now = lease.current(mono_ms());
            std::mem::replace(held, now) != now
        });
        let wait = lease.next_wakeup_ms().saturating_sub(mono_ms()).max(1);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
    tx.send_replace(None);
    if lease.current(mono_ms()).is_some() {
        let mut c = app.store.conn();
        let released: Result<i64, _> =
            redis::Script::new(RELEASE).key(keys::LEASE).arg(&app.instance).invoke_async(&mut c).await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not release the control lease");
        }
    }
    app.metrics.control_leader.set(0);
}
