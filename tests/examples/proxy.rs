//! A TCP proxy between an example and the gateway. It can lose the gateway's first answer to a
//! POST: once the gateway has produced it (so the report is stored), the proxy closes the
//! client's connection instead of passing it on, as a flaky network or load balancer would. It
//! tells when it has passed on a 409.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub struct Proxy {
    pub url: String,
    lost: Arc<AtomicUsize>,
    /// Notified each time a 409 answer has been passed on to the client.
    pub conflict_answered: Arc<Notify>,
}

impl Proxy {
    /// Proxies to `upstream` (`http://host:port`), losing the first answer to a POST if asked.
    pub async fn start(upstream: &str, lose_first_post_answer: bool) -> Self {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// gateway address")
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let relay_state = Arc::new(Relay {
            armed: AtomicBool::new(lose_first_post_answer),
            lost: Arc::new(AtomicUsize::new(0)),
            conflict_answered: Arc::new(Notify::new()),
        });
        let proxy = Self {
            url,
            lost: relay_state.lost.clone(),
            conflict_answered: relay_state.conflict_answered.clone(),
        };
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream.clone(), relay_state.clone()));
            }
        });
        proxy
    }

    /// How many answers were lost (at most one).
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

struct Relay {
    armed: AtomicBool,
    lost: Arc<AtomicUsize>,
    conflict_answered: Arc<Notify>,
}

async fn relay(client: TcpStream, upstream: String, state: Arc<Relay>) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let posted = Arc::new(AtomicBool::new(false));
    let seen_post = posted.clone();
    let requests = tokio::spawn(async move {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Set before forwarding, so it is known before any answer can come back.
            if buf[..n].starts_with(b"POST ") {
                seen_post.store(true, Ordering::SeqCst);
            }
            if to_server.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
    });
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from_server.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if posted.load(Ordering::SeqCst) && state.armed.swap(false, Ordering::SeqCst) {
            state.lost.fetch_add(1, Ordering::SeqCst);
            // Dropping both halves of the client's socket closes it with nothing sent.
            requests.abort();
            let _ = requests.await;
            return;
        }
        if to_client.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if buf[..n].starts_with(b"HTTP/1.1 409 ") {
            state.conflict_answered.notify_one();
        }
    }
    let _ = to_client.shutdown().await;
    requests.abort();
}
