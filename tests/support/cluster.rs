//! A Redis Cluster of three masters for the tests, started once per test binary and shared:
//! each test that runs on it gets a key prefix of its own (`unique_prefix`), so tests never
//! see each other's keys. The servers die with the test binary, however it ends: they are
//! spawned by a thread that lives as long as the process, with `PR_SET_PDEATHSIG`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest the cluster may take to form.
const FORMING_DEADLINE: Duration = Duration::from_secs(60);
const MASTERS: usize = 3;

pub struct TestCluster {
    ports: Vec<u16>,
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();

/// The Redis server the tests start: `GATEWAY_TEST_REDIS_SERVER` (a path, e.g. a Valkey 8
/// `valkey-server`, which has `WAITAOF`; `scripts/test` runs the store suites on both), or
/// Debian's `redis-server`.
pub fn redis_server() -> String {
    std::env::var("GATEWAY_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

impl TestCluster {
    /// The binary's cluster, started on first use.
    pub fn shared() -> &'static TestCluster {
        CLUSTER.get_or_init(TestCluster::start)
    }

    /// `store.url` for the gateway: every master as a starting node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// A key prefix no other test in this binary uses (store.key_prefix: ≤ 32 characters).
    pub fn unique_prefix() -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        format!("rgc{}", NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn start() -> TestCluster {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        remove_stale_dirs(&root);
        let dir = root.join(format!("redis-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let (sender, receiver) = std::sync::mpsc::channel();
        let keeper_dir = dir.clone();
        // PR_SET_PDEATHSIG fires when the *thread* that forked dies: this one never does
        // before the process, and test threads end after each test.
        std::thread::Builder::new()
            .name("redis-cluster-keeper".into())
            .spawn(move || {
                // The nodes are never waited for: they live as long as this thread.
                let (ports, _nodes) = spawn_nodes(&keeper_dir);
                sender.send(ports).expect("cluster ports");
                loop {
                    std::thread::park();
                }
            })
            .expect("keeper thread");
        let ports = receiver.recv().expect("cluster nodes spawned");
        let cluster = TestCluster { ports };
        cluster.form();
        cluster
    }

    fn form(&self) {
        for port in &self.ports {
            wait_for(&format!("node {port} answers PING"), || {
                cli(*port, &["PING"]).is_some_and(|out| out.trim() == "PONG")
            });
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for port in &self.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (apt-get install -y redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Every node must know every other and agree the slots are covered before a client
        // reads the slot map from any of them.
        for port in &self.ports {
            wait_for(&format!("node {port} says cluster_state:ok"), || {
                cli(*port, &["CLUSTER", "INFO"]).is_some_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{MASTERS}"))
                })
            });
        }
    }
}

fn spawn_nodes(dir: &Path) -> (Vec<u16>, Vec<std::process::Child>) {
    let ports = free_ports(2 * MASTERS);
    let (ports, bus_ports) = ports.split_at(MASTERS);
    let mut nodes = Vec::new();
    for (port, bus) in ports.iter().zip(bus_ports) {
        let node_dir = dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let mut command = Command::new(redis_server());
        command
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--cluster-enabled", "yes", "--cluster-port"])
            .arg(bus.to_string())
            .arg("--cluster-config-file")
            .arg(node_dir.join("nodes.conf"))
            .args(["--cluster-node-timeout", "5000"])
            .arg("--dir")
            .arg(&node_dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .args(["--maxmemory-policy", "noeviction"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        nodes.push(
            command
                .spawn()
                .expect("redis-server must be installed (apt-get install -y redis-server)"),
        );
    }
    (ports.to_vec(), nodes)
}

/// Ports nothing listens on now (held open together, so they differ from each other).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + FORMING_DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Directories of earlier runs whose process is gone (a killed run leaves its nodes' files).
fn remove_stale_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("redis-cluster-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
