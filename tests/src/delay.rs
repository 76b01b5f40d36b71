//! A TCP proxy between the edge and the origins: it can hold the origins' answers,
//! spread connections over several origins, and cut the edge off.
//!
//! Requests pass at once, so the origin does its work (the `XADD`) on time; what comes
//! back is held for a while when [`DelayProxy::hold_answers`] says so, as a congested
//! network or an overloaded load balancer would. An edge whose send timeout is shorter
//! than the hold gives up on a batch the origin has stored, and retries it: the case the
//! origin's idempotent ingest exists for.
//!
//! With several upstreams it is the small load balancer in front of the origin
//! replicas: each new connection goes to the next upstream in turn, and to the one
//! after if that one refuses (an origin killed a moment ago). [`DelayProxy::set_mode`]
//! makes the origins unreachable from the edge: every connection refused, or accepted
//! and never answered (a black hole); connections open at that moment are cut.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with the edge's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relay them to the upstreams.
    Pass,
    /// Close each one as soon as it is accepted: the edge's sends fail at once.
    Refuse,
    /// Accept and read, never answer: the edge's sends time out.
    Blackhole,
}

/// The proxy; stops on drop.
#[derive(Debug)]
pub struct DelayProxy {
    pub addr: SocketAddr,
    hold_ms: Arc<AtomicU64>,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`
    /// (connected per connection, so the upstream may start later).
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start_many(vec![upstream]).await
    }

    /// The same over several upstreams: round robin per connection, failing over to the
    /// next upstream when one refuses.
    pub async fn start_many(upstreams: Vec<SocketAddr>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let hold_ms = Arc::new(AtomicU64::new(0));
        let (mode, modes) = watch::channel(Mode::Pass);
        let hold = hold_ms.clone();
        let upstreams = Arc::new(upstreams);
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (hold, upstreams, next, mut modes) = (hold.clone(), upstreams.clone(), next.clone(), modes.clone());
                tokio::spawn(async move {
                    let mode = *modes.borrow_and_update();
                    match mode {
                        Mode::Refuse => drop(client),
                        Mode::Blackhole => swallow(client, modes).await,
                        Mode::Pass => {
                            let first = next.fetch_add(1, Ordering::Relaxed);
                            for i in 0..upstreams.len() {
                                let upstream = upstreams[(first + i) % upstreams.len()];
                                if let Ok(server) = TcpStream::connect(upstream).await {
                                    tokio::select! {
                                        () = relay(client, server, hold) => {}
                                        _ = modes.wait_for(|m| *m != Mode::Pass) => {}
                                    }
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Ok(Self { addr, hold_ms, mode, task })
    }

    /// Holds every answer (each chunk the upstream sends) for `hold` from now on;
    /// `Duration::ZERO` passes them at once again.
    pub fn hold_answers(&self, hold: Duration) {
        self.hold_ms.store(hold.as_millis() as u64, Ordering::Relaxed);
    }

    /// Relays, refuses or swallows connections from now on; open relayed connections
    /// are cut when the mode leaves [`Mode::Pass`].
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads and discards until the mode changes, then closes.
async fn swallow(mut client: TcpStream, mut modes: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    tokio::select! {
        () = async { while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {} } => {}
        _ = modes.wait_for(|m| *m != Mode::Blackhole) => {}
    }
}

async fn relay(client: TcpStream, server: TcpStream, hold_ms: Arc<AtomicU64>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let answers = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let hold = hold_ms.load(Ordering::Relaxed);
            if hold > 0 {
                tokio::time::sleep(Duration::from_millis(hold)).await;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(requests, answers);
}
