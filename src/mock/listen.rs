//! The simulator's listening socket. `TcpListener::bind` (tokio's, like std's) asks the kernel
//! for a queue of 128 connections not yet accepted; a burst larger than that (three workers
//! opening their 256 connections each at once) overflows it, the kernel drops the handshakes
//! past it, and the clients send them again a second later: a run stalled for a second, with
//! the machine idle, in one three-worker benchmark in three. A provider's front end takes such
//! bursts; so does the simulator now.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};

/// Connections that may wait to be accepted (the kernel caps it at `net.core.somaxconn`, 4096
/// by default).
const BACKLOG: u32 = 4096;

/// Listens on `addr` (port 0: any free port).
pub(super) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Connections made while the server accepts none (it is busy) all wait in the queue:
    /// none is dropped to be tried again a second later. With the default queue of 128, the
    /// ones past it would not connect within the five seconds.
    #[tokio::test]
    async fn a_burst_of_connections_waits_to_be_accepted() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..400 {
            connecting.spawn(async move {
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                    .await
            });
        }
        let mut connected = Vec::new();
        while let Some(c) = connecting.join_next().await {
            if let Ok(Ok(Ok(stream))) = c {
                connected.push(stream);
            }
        }
        assert_eq!(connected.len(), 400);
        drop(listener);
    }
}
