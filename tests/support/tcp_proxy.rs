//! A loopback TCP relay in front of the gateway's HTTP port, so a test can
//! cut a browser's WebSocket the way a network change does: the relayed
//! connections end without a WebSocket close frame (the browser sees 1006,
//! the gateway a connection reset without a closing handshake), and for a
//! while new connections are refused too.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    relays: Vec<AbortHandle>,
    blocked_until: Option<Instant>,
    accepted: usize,
}

impl TcpProxy {
    /// Relays `127.0.0.1:<free port>` to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut state = shared.lock().unwrap();
                if state.blocked_until.is_some_and(|t| Instant::now() < t) {
                    // Refused: the connection closes before any byte.
                    drop(client);
                    continue;
                }
                state.accepted += 1;
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                state.relays.retain(|r| !r.is_finished());
                state.relays.push(relay.abort_handle());
            }
        });
        TcpProxy {
            addr,
            state,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ends every relayed connection at once (both sides see the TCP
    /// connection close, nothing else) and refuses new ones for `blocked`.
    pub fn cut(&self, blocked: Duration) {
        let mut state = self.state.lock().unwrap();
        state.blocked_until = Some(Instant::now() + blocked);
        for relay in state.relays.drain(..) {
            relay.abort();
        }
    }

    /// Connections relayed so far.
    pub fn accepted(&self) -> usize {
        self.state.lock().unwrap().accepted
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for relay in self.state.lock().unwrap().relays.drain(..) {
            relay.abort();
        }
    }
}
