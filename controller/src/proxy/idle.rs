//! Splicing an upgraded connection (a WebSocket) to its tunnel, closed only after a
//! long silence.
//!
//! Notebook kernels and terminals sit idle for hours while a student reads; a proxy
//! that cuts them after a minute loses their work's output. So the limit is on
//! *silence in both directions*, hours by default, and every byte resets it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::activity::FrameScanner;

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both sides finished or one failed; bytes copied each way.
    Closed { a_to_b: u64, b_to_a: u64 },
    /// Nothing moved for the idle limit.
    Idle,
}

/// Copies between `a` and `b` until both finish, either fails, or nothing moves in
/// either direction for `idle`.
pub async fn splice<A, B>(a: A, b: B, idle: Duration) -> SpliceEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    splice_watched(a, b, idle, None).await
}

/// Called when a WebSocket message (not a ping or pong) starts, either way.
pub type OnMessage = Arc<dyn Fn() + Send + Sync>;

/// [`splice`] for a WebSocket, calling `on_message` for each message in either
/// direction that is not a ping or pong (the instance's activity).
pub async fn splice_watched<A, B>(
    a: A,
    b: B,
    idle: Duration,
    on_message: Option<OnMessage>,
) -> SpliceEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = Arc::new(Mutex::new(Instant::now()));
    let watch = |on: &Option<OnMessage>| on.clone().map(|f| (FrameScanner::default(), f));
    let mut a = Touch {
        inner: a,
        last: last.clone(),
        frames: watch(&on_message),
    };
    let mut b = Touch {
        inner: b,
        last: last.clone(),
        frames: watch(&on_message),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let deadline = *last.lock().unwrap_or_else(|p| p.into_inner()) + idle;
        tokio::select! {
            r = &mut copy => {
                return match r {
                    Ok((a_to_b, b_to_a)) => SpliceEnd::Closed { a_to_b, b_to_a },
                    Err(_) => SpliceEnd::Closed { a_to_b: 0, b_to_a: 0 },
                };
            }
            _ = tokio::time::sleep_until(deadline) => {
                let last_seen = *last.lock().unwrap_or_else(|p| p.into_inner());
                if last_seen + idle <= Instant::now() {
                    return SpliceEnd::Idle;
                }
            }
        }
    }
}

/// A stream that records when bytes last moved through it.
struct Touch<T> {
    inner: T,
    last: Arc<Mutex<Instant>>,
    /// Frame boundaries of what is read from `inner`, and whom to tell.
    frames: Option<(FrameScanner, OnMessage)>,
}

impl<T> Touch<T> {
    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Touch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
            let this = &mut *self;
            if let Some((scanner, on_message)) = &mut this.frames {
                if scanner.feed(&buf.filled()[before..]) {
                    on_message();
                }
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touch<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HOUR: Duration = Duration::from_secs(3600);

    /// An echo peer on the far side of the splice.
    fn echo(mut s: tokio::io::DuplexStream) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_survives_ten_minutes_and_then_still_echoes() {
        let (mut client, proxy_side) = tokio::io::duplex(1024);
        let (app_side, app) = tokio::io::duplex(1024);
        let _echo = echo(app);
        let splice = tokio::spawn(splice(proxy_side, app_side, HOUR));

        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!splice.is_finished(), "closed after 10 minutes of silence");
        client.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");

        // Activity moved the deadline: 59 minutes after the last byte it is still up.
        tokio::time::sleep(Duration::from_secs(59 * 60)).await;
        assert!(!splice.is_finished());
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(splice.await.unwrap(), SpliceEnd::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_connection_reports_its_bytes() {
        let (mut client, proxy_side) = tokio::io::duplex(1024);
        let (app_side, app) = tokio::io::duplex(1024);
        let echo = echo(app);
        let splice = tokio::spawn(splice(proxy_side, app_side, HOUR));
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        client.shutdown().await.unwrap();
        echo.await.unwrap();
        assert_eq!(
            splice.await.unwrap(),
            SpliceEnd::Closed {
                a_to_b: 5,
                b_to_a: 5
            }
        );
    }
}
