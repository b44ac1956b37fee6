//! `estafette dev`: a local appliance with no configuration to write.
//!
//! One region: a single node in this process. Several: one process per
//! node on 127.0.0.1, 127.0.0.2, ... (same ports), zones region-1..N,
//! replication factor min(N, 3), each node's PID in DIR/node-<i>/pid. This
//! is the local multi-region demo and the harness integration tests use.
//! State lives in DIR and survives restarts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use clap::Args;

use crate::config::{ClusterConfig, Config, DeclaredUserConfig, LayoutNode, ListenConfig, NodeConfig, RpcConfig, UsersConfig};

#[derive(Args)]
pub struct DevArgs {
    /// Where the appliance keeps its state (default: ~/.local/state/estafette/dev).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Number of regions, one node (and one process) each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=9))]
    regions: u8,
    /// RPC port of every node.
    #[arg(long, default_value_t = 3901)]
    rpc_port: u16,
    /// Prometheus metrics port of every node.
    #[arg(long, default_value_t = 10190)]
    metrics_port: u16,
    /// LMTP port of every node.
    #[arg(long, default_value_t = 1025)]
    lmtp_port: u16,
    /// IMAP (STARTTLS) port of every node.
    #[arg(long, default_value_t = 1143)]
    imap_port: u16,
    /// IMAPS (implicit TLS) port of every node.
    #[arg(long, default_value_t = 1993)]
    imaps_port: u16,
    /// Round-trip time between regions in milliseconds (several regions):
    /// node-to-node traffic is delayed by half of it each way.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rtt)]
    rtt: f64,
    /// Port of the WAN emulator in front of each node's RPC (several
    /// regions): peers dial 127.0.0.<i>:<wan port>, the node listens on
    /// --rpc-port.
    #[arg(long, default_value_t = 3911)]
    wan_port: u16,
}

fn parse_rtt(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(ms) if (0.0..=10_000.0).contains(&ms) => Ok(ms),
        _ => Err(format!("`{s}`: give milliseconds between 0 and 10000")),
    }
}

/// The per-user default state folder for dev appliances.
pub fn default_data_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("estafette").join("dev"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/state/estafette/dev")),
        None => Err("neither XDG_STATE_HOME nor HOME is set: give --data-dir".into()),
    }
}

pub fn node_dir(dir: &Path, i: u8) -> PathBuf {
    dir.join(format!("node-{i}"))
}

fn node_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads DIR/rpc_secret, creating it (0600, random) on first use.
fn dev_secret(dir: &Path) -> Result<PathBuf, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("rpc_secret");
    if !path.exists() {
        let secret: [u8; 32] = rand::random();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(hex::encode(secret).as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path)
}

/// The configuration of dev node `i` of `n`.
fn dev_config(args: &DevArgs, dir: &Path, secret_file: &Path, i: u8) -> Config {
    let n = args.regions;
    let private = |j: u8| SocketAddr::new(node_ip(j), args.rpc_port);
    // With several regions, peers reach each other through the WAN emulator.
    let rpc = |j: u8| if n > 1 { SocketAddr::new(node_ip(j), args.wan_port) } else { private(j) };
    let nd = node_dir(dir, i);
    Config {
        node: NodeConfig {
            name: format!("node-{i}"),
            region: format!("region-{i}"),
            data_dir: nd.join("data"),
            metadata_dir: nd.join("meta"),
            // A dev appliance favours speed over surviving power loss.
            fsync: false,
        },
        rpc: RpcConfig {
            bind: private(i),
            public_addr: (n > 1).then(|| rpc(i)),
            secret: None,
            secret_file: Some(secret_file.to_owned()),
            // The emulator tells links apart by source address.
            bind_outgoing: n > 1,
        },
        cluster: ClusterConfig {
            replication_factor: usize::from(n.min(3)),
            bootstrap_peers: vec![],
            nodes: (1..=n)
                .map(|j| LayoutNode {
                    name: format!("node-{j}"),
                    region: format!("region-{j}"),
                    capacity: "10G".into(),
                    rpc_addr: rpc(j),
                })
                .collect(),
        },
        listen: ListenConfig {
            imap: Some(SocketAddr::new(node_ip(i), args.imap_port)),
            imaps: Some(SocketAddr::new(node_ip(i), args.imaps_port)),
            lmtp: Some(SocketAddr::new(node_ip(i), args.lmtp_port)),
            metrics: Some(SocketAddr::new(node_ip(i), args.metrics_port)),
        },
        // A self-signed certificate for localhost, made on first start.
        tls: Some(crate::config::TlsConfig {
            cert: dir.join("tls-cert.pem"),
            key: dir.join("tls-key.pem"),
        }),
        lmtp: Default::default(),
        imap: Default::default(),
        users: UsersConfig {
            // A dev directory from before the replicated directory.
            import_file: Some(dir.join("users.toml")).filter(|p| p.exists()),
            declare: vec![DeclaredUserConfig {
                login: DEMO_LOGIN.into(),
                addresses: vec![DEMO_ADDRESS.into()],
                home_region: Some("region-1".into()),
                quota: None,
                initial_password_file: dir.join("demo-password"),
            }],
        },
        source: nd.join("estafette.toml"),
    }
}

/// A dev directory remembers how many regions it was made for: mixing a
/// single-node (RF 1) state with a three-region one cannot work.
fn check_regions(dir: &Path, n: u8) -> Result<(), String> {
    let path = dir.join("regions");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim() == n.to_string() => Ok(()),
        Ok(s) => Err(format!(
            "{} was created with --regions {}; use another --data-dir for --regions {n}",
            dir.display(),
            s.trim()
        )),
        Err(_) => std::fs::write(&path, n.to_string()).map_err(|e| format!("{}: {e}", path.display())),
    }
}

pub async fn run(args: DevArgs) -> Result<(), String> {
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => default_data_dir()?,
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
    check_regions(&dir, args.regions)?;
    let secret = dev_secret(&dir)?;
    write_private(&dir.join("demo-password"), DEMO_PASSWORD)?;
    crate::imap::ensure_self_signed(&dir.join("tls-cert.pem"), &dir.join("tls-key.pem")).map_err(|e| e.to_string())?;
    let mut configs = vec![];
    for i in 1..=args.regions {
        let config = dev_config(&args, &dir, &secret, i);
        let path = config.source.clone();
        std::fs::create_dir_all(node_dir(&dir, i)).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(&path, config.to_toml()).map_err(|e| format!("{}: {e}", path.display()))?;
        // What we wrote must be what a real deployment would accept.
        configs.push(Config::load(&path).map_err(|e| e.to_string())?);
    }

    if args.regions == 1 {
        let config = configs.remove(0);
        let pid = node_dir(&dir, 1).join("pid");
        std::fs::write(&pid, std::process::id().to_string()).map_err(|e| format!("{}: {e}", pid.display()))?;
        let result = async {
            let server = crate::server::Server::start(&config).await.map_err(|e| e.to_string())?;
            server.wait_ready(Duration::from_secs(120)).await.map_err(|e| e.to_string())?;
            if server.accounts.directory().user(DEMO_LOGIN).is_none() {
                return Err("the demo user could not be created (see the log above)".to_string());
            }
            print_banner(&args, &dir, std::slice::from_ref(&config));
            crate::server::serve_until_signal(server).await.map_err(|e| e.to_string())
        }
        .await;
        let _ = std::fs::remove_file(&pid);
        return result;
    }
    let regions: Vec<crate::wan::Region> = (1..=args.regions)
        .map(|i| crate::wan::Region {
            index: i,
            public: SocketAddr::new(node_ip(i), args.wan_port),
            private: SocketAddr::new(node_ip(i), args.rpc_port),
        })
        .collect();
    let wan = crate::wan::Wan::start(&regions, Duration::from_secs_f64(args.rtt / 1000.0))
        .await
        .map_err(|e| e.to_string())?;
    crate::wan::control::serve(std::sync::Arc::new(wan), &dir.join("wan.sock")).await.map_err(|e| e.to_string())?;
    supervise(&args, &dir, &configs).await
}

/// What a client needs: printed once every node serves (ports, demo user).
fn print_banner(args: &DevArgs, dir: &Path, configs: &[Config]) {
    println!("estafette dev: {} region(s), state in {}", args.regions, dir.display());
    for c in configs {
        println!(
            "  {} ({}): IMAP {} (STARTTLS), IMAPS {}, LMTP {}, RPC {}, metrics http://{}/metrics, config {}",
            c.node.name,
            c.node.region,
            c.listen.imap.map(|a| a.to_string()).unwrap_or_default(),
            c.listen.imaps.map(|a| a.to_string()).unwrap_or_default(),
            c.listen.lmtp.map(|a| a.to_string()).unwrap_or_default(),
            c.rpc.bind,
            c.listen.metrics.map(|a| a.to_string()).unwrap_or_default(),
            c.source.display()
        );
    }
    println!("  status: estafette cluster status --data-dir {}", dir.display());
    if args.regions > 1 {
        println!(
            "  WAN emulator: {} ms round trip between regions; cut and heal links with `estafette wan --data-dir {} cut 1 3`, `... heal`",
            args.rtt,
            dir.display()
        );
    }

    print_demo_user();
}

const DEMO_LOGIN: &str = "alice";
const DEMO_PASSWORD: &str = "hunter2";
const DEMO_ADDRESS: &str = "alice@example.test";

fn print_demo_user() {
    println!("  demo user: login `{DEMO_LOGIN}`, password `{DEMO_PASSWORD}`, address {DEMO_ADDRESS}");
}

/// Waits until every node serves its users (each creates the declared
/// demo user if it is missing, whichever starts first).
async fn wait_all_ready(dir: &Path, n: u8) -> Result<(), String> {
    use crate::server::admin::{call, Request, Response};
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 1..=n {
        let sock = node_dir(dir, i).join("meta").join("admin.sock");
        loop {
            if let Ok(Response::Status(s)) = call(&sock, &Request::Status).await {
                if s.ready() {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(format!("node-{i} did not become ready within 120 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Runs one `estafette server` process per node until we are told to stop
/// or one of them dies.
async fn supervise(args: &DevArgs, dir: &Path, configs: &[Config]) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let exe = std::env::current_exe().map_err(|e| format!("finding our own executable: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut children: Vec<(u8, Child)> = vec![];
    for (i, c) in configs.iter().enumerate() {
        let i = i as u8 + 1;
        let child = Command::new(&exe)
            .arg("server")
            .arg("--config")
            .arg(&c.source)
            .spawn()
            .map_err(|e| format!("starting node-{i}: {e}"))?;
        let pid = node_dir(dir, i).join("pid");
        std::fs::write(&pid, child.id().to_string()).map_err(|e| format!("{}: {e}", pid.display()))?;
        children.push((i, child));
    }
    let mut demo = Box::pin(wait_all_ready(dir, configs.len() as u8));
    let mut demo_done = false;
    let outcome = loop {
        tokio::select! {
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            r = &mut demo, if !demo_done => {
                demo_done = true;
                match r {
                    Ok(()) => print_banner(args, dir, configs),
                    Err(e) => log::error!("{e}"),
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                // A node killed on purpose (tests, demos of region loss) is
                // reported but does not end the appliance.
                for (i, child) in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        log::warn!("node-{i} exited ({status}); restart it with: {} server --config {}",
                            exe.display(), configs[usize::from(*i) - 1].source.display());
                    }
                }
                // Keep running when they are all gone: nodes restarted by
                // hand still need the WAN emulator that lives here.
                children.retain_mut(|(_, c)| !matches!(c.try_wait(), Ok(Some(_))));
            }
        }
    };
    stop_children(&mut children);
    for (i, _) in &children {
        let _ = std::fs::remove_file(node_dir(dir, *i).join("pid"));
    }
    outcome
}

/// SIGTERM every child, wait for them (Garage may take up to 8 s to stop
/// its workers), SIGKILL the ones still running after that.
fn stop_children(children: &mut [(u8, Child)]) {
    for (_, c) in children.iter() {
        // SAFETY: kill(2) on a PID we spawned and have not yet reaped.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(12);
    for (_, c) in children.iter_mut() {
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !matches!(c.try_wait(), Ok(Some(_))) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
