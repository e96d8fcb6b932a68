//! A proxy on a unix socket between the gateway and a real Redis that injects what a bad
//! network does: a reply that comes late, or a connection that is cut after the request was
//! written (Redis ran the command; its answer never arrives). Redis itself is never mocked:
//! every byte still goes to, and comes from, the real server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// What to do to the first request whose bytes contain `pattern` (one-shot).
#[derive(Debug, Clone)]
pub enum Fault {
    /// Forward it, then hold every reply on that connection for `delay`.
    DelayReply { pattern: Vec<u8>, delay: Duration },
    /// Forward it, then close the client's connection instead of passing the reply on (the
    /// reply's arrival proves Redis ran the command).
    CutAfterRequest { pattern: Vec<u8> },
}

impl Fault {
    fn pattern(&self) -> &[u8] {
        match self {
            Fault::DelayReply { pattern, .. } | Fault::CutAfterRequest { pattern } => pattern,
        }
    }
}

#[derive(Default)]
struct Shared {
    armed: Mutex<Option<Fault>>,
}

pub struct FaultProxy {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// The fault a connection is under, set by its request side and obeyed by its reply side.
#[derive(Default)]
struct Connection {
    delay: Option<Duration>,
    cut: bool,
}

impl FaultProxy {
    pub async fn start(upstream: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("proxy.sock");
        let listener = UnixListener::bind(&socket).expect("proxy binds");
        let shared = Arc::new(Shared::default());
        let upstream = upstream.to_owned();
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = UnixStream::connect(&upstream).await else {
                        continue;
                    };
                    tokio::spawn(relay(client, server, shared.clone()));
                }
            }
        });
        Self {
            _dir: dir,
            socket,
            shared,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Applies `fault` to the next request that matches it.
    pub fn arm(&self, fault: Fault) {
        *self.shared.armed.lock().unwrap() = Some(fault);
    }

    /// True while an armed fault has not matched yet.
    pub fn is_armed(&self) -> bool {
        self.shared.armed.lock().unwrap().is_some()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: UnixStream, server: UnixStream, shared: Arc<Shared>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let state = Arc::new(Mutex::new(Connection::default()));
    let requests = {
        let state = state.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                let matched = {
                    let mut armed = shared.armed.lock().unwrap();
                    let hit = armed.as_ref().is_some_and(|f| {
                        chunk.windows(f.pattern().len()).any(|w| w == f.pattern())
                    });
                    if hit { armed.take() } else { None }
                };
                // Set before forwarding, so the reply side can't pass the reply on first.
                if let Some(fault) = &matched {
                    let mut state = state.lock().unwrap();
                    match fault {
                        Fault::DelayReply { delay, .. } => state.delay = Some(*delay),
                        Fault::CutAfterRequest { .. } => state.cut = true,
                    }
                }
                if server_write.write_all(chunk).await.is_err() {
                    return;
                }
            }
        }
    };
    let replies = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let (delay, cut) = {
                let mut state = state.lock().unwrap();
                (state.delay.take(), state.cut)
            };
            if cut {
                return;
            }
            if let Some(delay) = delay {
                // The injected fault itself: a Redis (or network) that answers late.
                tokio::time::sleep(delay).await;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either side ending closes both: a cut connection is gone for the client.
    tokio::select! {
        () = requests => {}
        () = replies => {}
    }
}
