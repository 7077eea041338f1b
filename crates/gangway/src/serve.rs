//! The HTTP accept loop. axum's own `serve` gives hyper no timer, so a
//! client could hold a connection open forever by sending its request
//! headers a byte at a time (slowloris); here hyper gets a timer and
//! `http.header_read_timeout_secs`, and everything else is as `serve` does
//! it: upgrades (WebSockets) allowed, the peer's address as `ConnectInfo`,
//! `TCP_NODELAY`, and a graceful stop that waits for open connections.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Serves `app` on `listener` until `stop` completes, then lets the open
/// connections finish (WebSockets close themselves on the same signal).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    // Dropping `stopping` tells every connection; each holds a `done`
    // receiver until it has finished.
    let (stopping, stop_rx) = watch::channel(());
    let (done_tx, done) = watch::channel(());
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, usually: wait rather than spin.
                    warn!("cannot accept an HTTP connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Small API events (`ringing`, then `answered` moments later) must
        // not wait for Nagle's algorithm to meet the client's delayed ACK.
        if let Err(e) = stream.set_nodelay(true) {
            warn!("cannot set TCP_NODELAY on an API connection: {e}");
        }
        let service = app
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request.map(Body::new)
            });
        let stopping = stopping.clone();
        let done = done.clone();
        tokio::spawn(connection(
            stream,
            peer,
            service,
            header_read_timeout,
            stopping,
            done,
        ));
    }
    drop(stop_rx);
    drop(done);
    done_tx.closed().await;
}

async fn connection<S>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    service: S,
    header_read_timeout: Duration,
    stopping: watch::Sender<()>,
    done: watch::Receiver<()>,
) where
    S: tower::Service<Request<Incoming>, Response = axum::response::Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let service = TowerToHyperService::new(service);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stop = stopping.closed();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, "HTTP connection ended: {e}");
                }
                break;
            }
            _ = &mut stop => conn.as_mut().graceful_shutdown(),
        }
    }
    drop(done);
}
