//! Connection limits: a per-address cap on open connections, checked as each connection is
//! accepted (the Unix socket's connections, which have no address, are counted together under
//! [`SOCKET_PEER`] unless the socket is a trusted proxy), and a deadline for a request's whole
//! body.
//!
//! Without them a client that trickles a body, or opens connections and says nothing, holds a
//! file descriptor each for as long as it likes: a few thousand from one address exhaust the
//! process's descriptors. actix-web bounds the request head (`client_request_timeout`) and idle
//! keep-alive connections; these bound the rest.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::{Extensions, Payload, ServiceRequest};
use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use actix_web::HttpMessage as _;
use futures_core::Stream;
use ipnet::IpNet;

use crate::http::limit::bucket_of;

/// Open connections per client address (IPv6 per /64, like the rate limiter). A connection over
/// the cap is shut down as it is accepted, before any request is read.
#[derive(Debug)]
pub struct ConnectionCap {
    cap: usize,
    exempt: Vec<IpNet>,
    /// The Unix socket is a trusted proxy (`--trusted-proxy unix`): its connections carry many
    /// clients, like a trusted network's, and are not counted.
    socket_exempt: bool,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Held in a connection's data while it is open; gives its place back when actix drops it.
struct Held {
    cap: Arc<ConnectionCap>,
    key: IpAddr,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl ConnectionCap {
    /// At most `cap` open connections per address (0: no cap); `exempt` networks (the trusted
    /// proxies, whose connections carry many clients) are not counted, nor the Unix socket's when
    /// `socket_exempt` (it is a trusted proxy); otherwise the socket's connections are counted
    /// together under [`SOCKET_PEER`].
    pub fn new(cap: usize, exempt: Vec<IpNet>, socket_exempt: bool) -> Arc<Self> {
        Arc::new(ConnectionCap { cap, exempt, socket_exempt, open: Mutex::new(HashMap::new()) })
    }

    /// Count a connection from `peer`: true when it may stay open. Every call that returns a
    /// place is released when `ext` (the connection's data) is dropped.
    fn admit(self: &Arc<Self>, peer: IpAddr, ext: &mut Extensions) -> bool {
        if self.exempt.iter().any(|n| n.contains(&peer)) {
            return true;
        }
        self.admit_key(bucket_of(peer), ext)
    }

    /// Count a connection under `key` (an address's bucket, or [`SOCKET_PEER`], which no
    /// trusted network exempts).
    fn admit_key(self: &Arc<Self>, key: IpAddr, ext: &mut Extensions) -> bool {
        if self.cap == 0 {
            return true;
        }
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if *n >= self.cap {
            return false;
        }
        *n += 1;
        drop(open);
        ext.insert(Held { cap: self.clone(), key });
        true
    }

    /// Open connections counted now, across every address (for tests and metrics).
    pub fn open_connections(&self) -> usize {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().sum()
    }

    /// The `HttpServer::on_connect` hook: counts the connection, or shuts it down at once when
    /// its address is over the cap (the client sees the connection closed). A connection on the
    /// Unix socket has no address: it is marked [`OverUnixSocket`] and counted under
    /// [`SOCKET_PEER`] (not at all when the socket is a trusted proxy).
    pub fn on_connect(self: &Arc<Self>, io: &dyn std::any::Any, ext: &mut Extensions) {
        use actix_tls::accept::rustls_0_23::TlsStream;
        use actix_web::rt::net::TcpStream;
        #[cfg(unix)]
        if let Some(unix) = io.downcast_ref::<actix_web::rt::net::UnixStream>() {
            ext.insert(OverUnixSocket);
            if !self.socket_exempt && !self.admit_key(SOCKET_PEER, ext) {
                let _ = socket2::SockRef::from(unix).shutdown(std::net::Shutdown::Both);
                return;
            }
            if let Ok(socket) = socket2::SockRef::from(unix).try_clone() {
                ext.insert(std::rc::Rc::new(Connection(socket)));
            }
            return;
        }
        // Plain HTTP hands over the socket, HTTPS its TLS stream (after the handshake).
        let stream = match (io.downcast_ref::<TcpStream>(), io.downcast_ref::<TlsStream<TcpStream>>()) {
            (Some(tcp), _) => tcp,
            (None, Some(tls)) => tls.get_ref().0,
            (None, None) => return,
        };
        let Ok(peer) = stream.peer_addr() else { return };
        if !self.admit(peer.ip(), ext) {
            let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Both);
            return;
        }
        if let Ok(socket) = socket2::SockRef::from(stream).try_clone() {
            ext.insert(std::rc::Rc::new(Connection(socket)));
        }
    }
}

/// The address under which the per-address limits (connections, the rate limiter, revocation
/// streams) count the Unix socket's requests that have no client address of their own (an
/// untrusted socket, or a trusted one without a forwarding header): all of them together, as one
/// client. `100::` is in the discard-only block (RFC 6666), which no TCP peer has.
pub(crate) const SOCKET_PEER: IpAddr = IpAddr::V6(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0));

/// Whether `ip` would be counted with [`SOCKET_PEER`] (the limits group IPv6 by /64 and /48): a
/// forwarding header naming such an address is refused (`http/auth`).
pub(crate) fn is_socket_key(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[..3] == [0x100, 0, 0])
}

/// In a connection's data when it came through the Unix socket (`--listen unix:`), which has no
/// peer address: the trusted-proxy rules read it (`--trusted-proxy unix`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct OverUnixSocket;

/// A second handle on a connection's socket (closed with the connection), so that a request
/// whose body was refused unread can stop the connection reading: actix otherwise drains a
/// chunked body for as long as the client trickles it.
pub(crate) struct Connection(socket2::Socket);

impl Connection {
    /// Read no more from this connection: actix sees the end of its input, sends the answer it
    /// has and closes.
    pub(crate) fn stop_reading(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Read);
    }

    /// Another handle on the socket, for a thread that may have to close the connection (a
    /// backup stream past its deadline): `Socket::shutdown` on it ends the connection for
    /// actix too.
    pub(crate) fn handle(&self) -> Option<socket2::Socket> {
        self.0.try_clone().ok()
    }
}

/// The error a body that did not arrive in time ends with; [`is_body_timeout`] recognises it.
fn timed_out() -> PayloadError {
    PayloadError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "request body took too long"))
}

/// True for the error of a body that missed its deadline (answered 408).
pub(crate) fn is_body_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// A request body that must arrive whole within a deadline counted from when the request head
/// was read; past it the body ends with a time-out error and the connection is closed.
struct Deadline {
    inner: Payload,
    /// When the body must be whole.
    until: actix_web::rt::time::Instant,
    /// Made only when the body is not all there at once: most bodies arrive with their head,
    /// and then no timer is ever set (this runs on every request with a body, verify's too).
    sleep: Option<Pin<Box<actix_web::rt::time::Sleep>>>,
    done: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        let until = self.until;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(actix_web::rt::time::sleep_until(until)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(timed_out())));
        }
        Poll::Pending
    }
}

/// Give the request's body a deadline of `limit` from now.
pub(crate) fn body_deadline(req: &mut ServiceRequest, limit: Duration) {
    let inner = req.take_payload();
    let until = actix_web::rt::time::Instant::now() + limit;
    let stream: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
        Box::pin(Deadline { inner, until, sleep: None, done: false });
    req.set_payload(Payload::from(stream));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_per_address_and_gives_places_back() {
        let cap = ConnectionCap::new(2, vec!["10.9.0.0/16".parse().unwrap()], false);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let (mut e1, mut e2, mut e3) = (Extensions::new(), Extensions::new(), Extensions::new());
        assert!(cap.admit(a, &mut e1));
        assert!(cap.admit(a, &mut e2));
        assert!(!cap.admit(a, &mut e3), "a third connection from one address is refused");
        assert!(cap.admit("192.0.2.2".parse().unwrap(), &mut Extensions::new()), "others are not");
        drop(e1);
        assert!(cap.admit(a, &mut e3), "a closed connection gives its place back");
        // A /64 is one client; trusted proxies are not counted.
        let mut held = Vec::new();
        for i in 1..=2u16 {
            let mut e = Extensions::new();
            assert!(cap.admit(format!("2001:db8::{i}").parse().unwrap(), &mut e));
            held.push(e);
        }
        assert!(!cap.admit("2001:db8::ffff".parse().unwrap(), &mut Extensions::new()));
        for _ in 0..10 {
            let mut e = Extensions::new();
            assert!(cap.admit("10.9.1.1".parse().unwrap(), &mut e));
            held.push(e);
        }
        drop((e2, e3, held));
        assert_eq!(cap.open_connections(), 0);
    }
}
