//! The accept loop both listeners run: HTTP/1.1 through hyper with its timer set (the
//! header-read timeout is silently off without one), a header-size cap (431), a cap on
//! open connections, the peer address for handlers, and graceful shutdown: stop
//! accepting, let in-flight requests finish, then close.
//!
//! With PROXY protocol on (SECURITY.md T16), a connection must come from one of the
//! listener's trusted proxies and start with a v1 or v2 header, read within the
//! header-read timeout before TLS and HTTP; the header's source address is the peer
//! address handlers see. Any other connection is closed.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::tls::{ClientCertificate, TlsState};
use crate::admission::client_address::{
    parse_proxy_header, ProxyHeader, ProxyHeaderError, MAX_PROXY_HEADER_BYTES,
};
use crate::config::{ConnectionLimits, TrustedProxies};

/// How long shutdown waits for in-flight requests before closing what is left.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Whether a listener's connections start with a PROXY protocol header.
#[derive(Clone, Debug, Default)]
pub enum ProxyProtocol {
    /// The TCP peer is the client.
    #[default]
    Off,
    /// Only these peers may connect, and each connection starts with a PROXY header.
    From(Arc<TrustedProxies>),
}

impl ProxyProtocol {
    /// From a listener's `proxy_protocol` and `trusted_proxies` settings.
    pub fn new(enabled: bool, trusted_proxies: &TrustedProxies) -> ProxyProtocol {
        if enabled {
            ProxyProtocol::From(Arc::new(trusted_proxies.clone()))
        } else {
            ProxyProtocol::Off
        }
    }
}

/// Serves `router` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<TlsState>>,
    proxy_protocol: ProxyProtocol,
    open_connections: Gauge,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        // At the connection cap, stop accepting: the kernel's backlog holds the rest.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let gauge = open_connections.clone();
        let stop = shutdown.clone();
        while connections.try_join_next().is_some() {}
        let tls = tls.clone();
        let proxy_protocol = proxy_protocol.clone();
        connections.spawn(async move {
            let _slot = slot;
            gauge.inc();
            handle_connection(stream, peer, proxy_protocol, tls, router, limits, stop).await;
            gauge.dec();
        });
    }
    drop(listener);
    // Every connection task watches `shutdown` itself; wait for them to finish.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// One accepted connection: the PROXY header when the listener expects one, then TLS
/// when configured, then HTTP.
async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    proxy_protocol: ProxyProtocol,
    tls: Option<Arc<TlsState>>,
    router: Router,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
) {
    let (stream, client) = match proxy_protocol {
        ProxyProtocol::Off => (Prefixed::new(Vec::new(), stream), peer),
        ProxyProtocol::From(trusted_proxies) => {
            if !trusted_proxies.contains(peer.ip()) {
                tracing::debug!(%peer, "connection closed: PROXY protocol is on and the peer is not a trusted proxy");
                return;
            }
            match tokio::time::timeout(limits.header_read_timeout, read_proxy_header(stream)).await
            {
                Ok(Ok((stream, ProxyHeader::Proxied { source, .. }))) => (stream, source),
                Ok(Ok((stream, ProxyHeader::Local))) => (stream, peer),
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "connection closed: no valid PROXY header");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "connection closed: PROXY header read timed out");
                    return;
                }
            }
        }
    };
    match tls {
        None => serve_connection(stream, client, None, router, limits, stop).await,
        Some(tls) => {
            match tokio::time::timeout(tls.handshake_timeout(), tls.acceptor().accept(stream)).await
            {
                Ok(Ok(stream)) => {
                    let certificate = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| ClientCertificate::from_der(leaf));
                    serve_connection(stream, client, certificate, router, limits, stop).await;
                }
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %client, error = %err, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(%peer, %client, "TLS handshake timed out"),
            }
        }
    }
}

/// Why a connection's PROXY header could not be had.
#[derive(Debug, thiserror::Error)]
enum ProxyReadError {
    #[error(transparent)]
    Header(#[from] ProxyHeaderError),
    #[error("the connection closed before the PROXY header ended")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the PROXY header at the start of `stream`: never more than the largest header
/// promgate accepts, and each read returns whatever bytes have arrived, so nothing
/// waits for a byte that is not coming. Bytes read past the header are handed back
/// in front of the stream for TLS or HTTP.
async fn read_proxy_header<S: AsyncRead + Unpin>(
    mut stream: S,
) -> Result<(Prefixed<S>, ProxyHeader), ProxyReadError> {
    let mut buffer = vec![0u8; MAX_PROXY_HEADER_BYTES];
    let mut filled = 0;
    loop {
        let read = stream.read(&mut buffer[filled..]).await?;
        if read == 0 {
            return Err(ProxyReadError::Closed);
        }
        filled += read;
        match parse_proxy_header(&buffer[..filled]) {
            Ok((header, used)) => {
                buffer.truncate(filled);
                buffer.drain(..used);
                return Ok((Prefixed::new(buffer, stream), header));
            }
            // `parse_proxy_header` is never incomplete on a full buffer, but a full
            // buffer must end the loop whatever it says.
            Err(ProxyHeaderError::Incomplete) if filled < buffer.len() => continue,
            Err(ProxyHeaderError::Incomplete) => {
                return Err(ProxyHeaderError::Invalid("the PROXY header is too long").into())
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// A stream with bytes already read from it put back in front.
struct Prefixed<S> {
    prefix: Vec<u8>,
    /// How much of `prefix` has been handed out.
    position: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            position: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rest = &this.prefix[this.position..];
        if rest.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let count = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..count]);
        this.position += count;
        if this.position == this.prefix.len() {
            this.prefix = Vec::new();
            this.position = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 on one connection (plain or TLS) until it ends or shutdown.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    certificate: Option<ClientCertificate>,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(certificate) = &certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        let router = router.clone();
        async move {
            Ok::<_, Infallible>(
                router
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|never| match never {}),
            )
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => log_connection_end(peer, result),
        _ = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
        }
    }
}

/// Completes once shutdown was signalled (or the signal's sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn log_connection_end(peer: SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(err) = result {
        if err.is_timeout() {
            tracing::debug!(%peer, "connection closed: header read timeout");
        } else if !err.is_incomplete_message() {
            tracing::debug!(%peer, error = %err, "connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_header_is_read_across_writes_and_what_follows_is_kept() {
        let (mut proxy, relay_side) = tokio::io::duplex(1024);
        let reader = tokio::spawn(read_proxy_header(relay_side));
        proxy
            .write_all(b"PROXY TCP4 203.0.113.7 ")
            .await
            .expect("write");
        tokio::task::yield_now().await;
        proxy
            .write_all(b"198.51.100.1 51234 443\r\nGET / HTTP/1.1\r\n")
            .await
            .expect("write");
        let (mut stream, header) = reader.await.expect("join").expect("header");
        assert_eq!(
            header,
            ProxyHeader::Proxied {
                source: "203.0.113.7:51234".parse().expect("addr"),
                destination: "198.51.100.1:443".parse().expect("addr"),
            }
        );
        proxy.write_all(b"Host: x\r\n").await.expect("write");
        drop(proxy);
        let mut rest = String::new();
        stream.read_to_string(&mut rest).await.expect("read");
        assert_eq!(rest, "GET / HTTP/1.1\r\nHost: x\r\n");
    }

    #[tokio::test]
    async fn garbage_or_a_closed_connection_is_no_header() {
        let (mut proxy, relay_side) = tokio::io::duplex(1024);
        proxy.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        assert!(matches!(
            read_proxy_header(relay_side).await,
            Err(ProxyReadError::Header(ProxyHeaderError::Invalid(_)))
        ));
        let (mut proxy, relay_side) = tokio::io::duplex(1024);
        proxy.write_all(b"PROXY TCP4 1.2.3.4").await.expect("write");
        drop(proxy);
        assert!(matches!(
            read_proxy_header(relay_side).await,
            Err(ProxyReadError::Closed)
        ));
    }
}
