//! A TCP proxy between the edge and the origin that can hold the origin's answers.
//!
//! Requests pass at once, so the origin does its work (the `XADD`) on time; what comes
//! back is held for a while when [`DelayProxy::hold_answers`] says so, as a congested
//! network or an overloaded load balancer would. An edge whose send timeout is shorter
//! than the hold gives up on a batch the origin has stored, and retries it: the case the
//! origin's idempotent ingest exists for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy; stops on drop.
#[derive(Debug)]
pub struct DelayProxy {
    pub addr: SocketAddr,
    hold_ms: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`
    /// (connected per connection, so the upstream may start later).
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let hold_ms = Arc::new(AtomicU64::new(0));
        let hold = hold_ms.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let hold = hold.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, hold).await;
                    }
                });
            }
        });
        Ok(Self { addr, hold_ms, task })
    }

    /// Holds every answer (each chunk the upstream sends) for `hold` from now on;
    /// `Duration::ZERO` passes them at once again.
    pub fn hold_answers(&self, hold: Duration) {
        self.hold_ms.store(hold.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
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
