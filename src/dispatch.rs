//! One dispatch for every door. A listener (plain TCP, the WireGuard
//! tunnel, an SSH channel to a database target) accepts a connection and hands it here as a [`Connection`]:
//! the byte stream, the [`Source`] (who connected), and the local address
//! it reached. The [`Dispatch`] picks the service by the local port — today
//! the SSH server; later the database proxies — and returns the future that
//! serves it.
//!
//! It exists so that listeners import no service and services import no
//! listener: `daemon` alone builds a `Dispatch` and gives it to each
//! listener. This is core: it imports neither `ssh` nor `tunnel`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::AuthenticatedUser;
use crate::source::Source;

/// A byte stream any service can speak over (a TCP socket, a tunnelled
/// connection).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// An accepted connection, whichever listener accepted it.
pub struct Connection {
    pub stream: Box<dyn Stream>,
    /// Who connected.
    pub source: Source,
    /// The local address (and so the port) the connection reached.
    pub local: SocketAddr,
    /// A slot the listener holds for this connection until the person has
    /// authenticated; the service drops it then (or when the connection
    /// ends). None where the listener keeps no such count.
    pub pre_auth: Option<Box<dyn Send>>,
    /// The person, when she has already logged in with both factors before
    /// this connection existed: an SSH `direct-tcpip` channel to a database
    /// target. Only in-process code builds a `Connection`, and only the SSH
    /// server sets this, from its own [`AuthenticatedUser`] proof.
    pub admitted: Option<AuthenticatedUser>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("source", &self.source)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// The future that serves one connection to its end.
pub type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A service behind a port: the SSH server, a database proxy.
pub trait Service: Send + Sync {
    /// Serves `conn` until it ends. The listener spawns the returned future;
    /// nothing here may block.
    fn serve(&self, conn: Connection) -> Serving;
}

/// The services of one set of listeners, by local port.
#[derive(Default, Clone)]
pub struct Dispatch {
    routes: Vec<(u16, Arc<dyn Service>)>,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch")
            .field("ports", &self.ports())
            .finish()
    }
}

impl Dispatch {
    /// A dispatch with no service: every connection is dropped.
    pub fn new() -> Dispatch {
        Dispatch::default()
    }

    /// Puts `service` behind `port` (replacing what was there).
    pub fn route(mut self, port: u16, service: Arc<dyn Service>) -> Dispatch {
        self.routes.retain(|(p, _)| *p != port);
        self.routes.push((port, service));
        self
    }

    /// The ports with a service behind them, in the order they were added.
    pub fn ports(&self) -> Vec<u16> {
        self.routes.iter().map(|(p, _)| *p).collect()
    }

    /// The future serving `conn` with the service behind its local port;
    /// None (and the connection dropped, so closed) when there is none.
    pub fn serve(&self, conn: Connection) -> Option<Serving> {
        let port = conn.local.port();
        let service = self.routes.iter().find(|(p, _)| *p == port)?.1.clone();
        Some(service.serve(conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records who it was given.
    struct Seen(Arc<Mutex<Vec<(String, u16)>>>);

    impl Service for Seen {
        fn serve(&self, conn: Connection) -> Serving {
            let seen = self.0.clone();
            Box::pin(async move {
                if let Ok(mut s) = seen.lock() {
                    s.push((conn.source.to_string(), conn.local.port()));
                }
            })
        }
    }

    fn conn(port: u16) -> Connection {
        let (a, _b) = tokio::io::duplex(64);
        Connection {
            stream: Box::new(a),
            source: Source::Address(SocketAddr::from(([192, 0, 2, 7], 40000))),
            local: SocketAddr::from(([10, 77, 0, 1], port)),
            pre_auth: None,
            admitted: None,
        }
    }

    #[tokio::test]
    async fn a_connection_goes_to_the_service_behind_its_local_port_only() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let d = Dispatch::new().route(22, Arc::new(Seen(seen.clone())));
        assert_eq!(d.ports(), vec![22]);
        let Some(f) = d.serve(conn(22)) else {
            panic!("port 22 has a service");
        };
        f.await;
        assert!(d.serve(conn(15432)).is_none(), "no service on 15432");
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen, vec![("192.0.2.7".to_string(), 22)]);
    }
}
