//! A loopback TCP proxy that adds latency and counts connections (the
//! latency rows of section `oci`).
//!
//! Every byte is delivered `one_way` after the proxy read it, in order, in
//! both directions, and the first bytes a client sends on a connection are
//! delivered no earlier than three one-way delays after the connection was
//! accepted: on a real link with that delay, `connect` returns after one
//! round trip (SYN, SYN-ACK) and the request then takes one more one-way
//! trip. A new connection therefore costs a round trip, as it would over
//! such a link, which is what connection reuse saves. Bandwidth is not
//! limited.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The proxy, running on the runner's runtime until dropped.
pub(crate) struct DelayProxy {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards every connection to
    /// `upstream`, `one_way` late in each direction.
    pub(crate) fn start(
        rt: &Runtime,
        upstream: SocketAddr,
        one_way: Duration,
    ) -> Result<Self, String> {
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| format!("starting the latency proxy: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("starting the latency proxy: {e}"))?;
        let connections = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&connections);
        let task = rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let accepted = Instant::now();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let first = accepted + 3 * one_way;
                    tokio::spawn(pump(cr, sw, one_way, first));
                    tokio::spawn(pump(sr, cw, one_way, accepted));
                });
            }
        });
        Ok(Self {
            addr,
            connections,
            task,
        })
    }

    /// `127.0.0.1:<port>`.
    pub(crate) fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read and never
/// before `not_before`; the end of the stream is passed on the same way.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    not_before: Instant,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        let at = (Instant::now() + delay).max(not_before);
        let chunk = (n > 0).then(|| buf[..n].to_vec());
        let end = chunk.is_none();
        if tx.send((at, chunk)).is_err() || end {
            break;
        }
    }
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_both_ways_in_order_and_counts_connections() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // An echo server upstream.
        let upstream = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let up_addr = upstream.local_addr().unwrap();
        rt.spawn(async move {
            while let Ok((mut c, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = c.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = DelayProxy::start(&rt, up_addr, Duration::from_millis(1)).unwrap();
        let addr = proxy.addr;
        rt.block_on(async {
            for round in 0..2u8 {
                let mut c = TcpStream::connect(addr).await.unwrap();
                let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 ^ round).collect();
                let (mut r, mut w) = c.split();
                let writer = async {
                    w.write_all(&sent).await.unwrap();
                    w.shutdown().await.unwrap();
                };
                let mut got = Vec::new();
                let reader = r.read_to_end(&mut got);
                let ((), n) = tokio::join!(writer, reader);
                n.unwrap();
                assert!(got == sent, "round {round}: bytes changed on the way");
            }
        });
        assert_eq!(proxy.connections(), 2);
    }
}
