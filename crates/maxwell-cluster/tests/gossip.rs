//! Real chitchat nodes on loopback UDP: reports reach every node, forged, replayed, foreign and
//! stranger values are refused, a stopped node is declared dead.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use maxwell_cluster::{ClusterConfig, ClusterView, Gossip, NodeReport, UdpTransport, hex, seal};

fn free_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr")
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn report(temp: f64) -> NodeReport {
    NodeReport {
        node: String::new(),
        cluster: String::new(),
        seq: 0,
        at_unix_ms: 0,
        temperature_c: temp,
        headroom_c: 85.0 - temp,
        power_w: 20.0,
        reserve: 1_000,
        clearing: 2_000,
        free_slots: 1,
        agents: 3,
        physics: "test".into(),
    }
}

struct Net {
    addrs: Vec<SocketAddr>,
    peers: BTreeMap<String, String>,
}

impl Net {
    fn new(names: &[&str]) -> Net {
        let mut peers = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            peers.insert(
                n.to_string(),
                hex(key(i as u8 + 1).verifying_key().as_bytes()),
            );
        }
        Net {
            addrs: names.iter().map(|_| free_port()).collect(),
            peers,
        }
    }
    fn config(&self, node: &str, i: usize, cluster: &str) -> ClusterConfig {
        ClusterConfig {
            node: node.into(),
            cluster_id: cluster.into(),
            listen: self.addrs[i],
            advertise: None,
            seeds: vec![self.addrs[0].to_string()],
            peers: self.peers.clone(),
            gossip_interval_ms: 50,
        }
    }
}

async fn until(g: &Gossip, what: &str, ok: impl Fn(&ClusterView) -> bool) -> ClusterView {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = g.view().await;
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never happened; last view {v:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn temp_of(v: &ClusterView, node: &str) -> Option<f64> {
    v.nodes
        .iter()
        .find(|p| p.node == node)
        .and_then(|p| p.report.as_ref())
        .map(|r| r.temperature_c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_reach_every_node_and_a_stopped_node_is_declared_dead() {
    let net = Net::new(&["a", "b", "c"]);
    let mut nodes = Vec::new();
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        let g = Gossip::start(net.config(n, i, "lab"), key(i as u8 + 1), &UdpTransport)
            .await
            .expect("start");
        g.publish(report(40.0 + i as f64)).await;
        nodes.push(g);
    }
    for g in &nodes {
        let v = until(g, "every report everywhere, every node live", |v| {
            ["a", "b", "c"].iter().all(|n| temp_of(v, n).is_some())
                && v.nodes.len() == 3
                && v.nodes.iter().all(|p| p.live)
        })
        .await;
        assert_eq!(temp_of(&v, "c"), Some(42.0));
        assert_eq!(v.refused_reports, 0);
    }
    // A change reaches the others.
    nodes[1].publish(report(77.5)).await;
    until(&nodes[0], "b's new temperature at a", |v| {
        temp_of(v, "b") == Some(77.5)
    })
    .await;
    until(&nodes[2], "b's new temperature at c", |v| {
        temp_of(v, "b") == Some(77.5)
    })
    .await;

    // c stops: a and b declare it dead within 5 s.
    let c = nodes.pop().expect("c");
    let t = Instant::now();
    c.shutdown().await.expect("shutdown");
    for g in &nodes {
        until(g, "c declared dead", |v| {
            v.nodes.iter().any(|p| p.node == "c" && !p.live)
        })
        .await;
    }
    let took = t.elapsed();
    eprintln!("failure detection: {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "c declared dead after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_foreign_and_stranger_values_are_refused() {
    let mut net = Net::new(&["a", "b", "c"]);
    // x (another cluster) and z (not on the allow-list) get addresses but no place in peers.
    net.addrs.push(free_port());
    net.addrs.push(free_port());
    let a = Gossip::start(net.config("a", 0, "lab"), key(1), &UdpTransport)
        .await
        .expect("a");
    a.publish(report(40.0)).await;
    let b = Gossip::start(net.config("b", 1, "lab"), key(2), &UdpTransport)
        .await
        .expect("b");
    b.publish(report(41.0)).await;
    until(&a, "b's report at a", |v| temp_of(v, "b") == Some(41.0)).await;

    // c, on the allow-list, gossips a report signed with its own key that names a: refused
    // (a node cannot speak for another).
    let c = Gossip::start(net.config("c", 2, "lab"), key(3), &UdpTransport)
        .await
        .expect("c");
    let mut as_a = report(99.0);
    as_a.node = "a".into();
    as_a.cluster = "lab".into();
    c.set_raw(seal(&as_a, &key(3))).await;
    let v = until(&a, "c's forged report refused", |v| {
        v.nodes.iter().any(|p| {
            p.node == "c"
                && p.refused
                    .as_deref()
                    .is_some_and(|w| w.contains("names node"))
        })
    })
    .await;
    assert_eq!(temp_of(&v, "a"), Some(40.0));
    assert_eq!(temp_of(&v, "c"), None);

    // c then signs with a key that is not its own: refused by signature.
    let mut mine = report(50.0);
    mine.node = "c".into();
    mine.cluster = "lab".into();
    mine.seq = 1;
    c.set_raw(seal(&mine, &key(200))).await;
    until(&a, "a badly signed report refused", |v| {
        v.nodes.iter().any(|p| {
            p.node == "c"
                && p.refused
                    .as_deref()
                    .is_some_and(|w| w.contains("signature"))
        })
    })
    .await;

    // b replays an older report of its own, properly signed: refused as a replay, and a keeps
    // b's last accepted one.
    let mut old = report(10.0);
    old.node = "b".into();
    old.cluster = "lab".into();
    old.seq = 1;
    b.set_raw(seal(&old, &key(2))).await;
    let v = until(&a, "b's replay refused", |v| {
        v.nodes
            .iter()
            .any(|p| p.node == "b" && p.refused.as_deref().is_some_and(|w| w.contains("replayed")))
    })
    .await;
    assert_eq!(temp_of(&v, "b"), Some(41.0));

    // A report copied from another cluster, signed by the right key, is refused.
    let mut foreign = report(60.0);
    foreign.node = "c".into();
    foreign.cluster = "elsewhere".into();
    foreign.seq = u64::MAX;
    c.set_raw(seal(&foreign, &key(3))).await;
    until(&a, "c's foreign report refused", |v| {
        v.nodes
            .iter()
            .any(|p| p.node == "c" && p.refused.as_deref().is_some_and(|w| w.contains("cluster")))
    })
    .await;

    // A node of another cluster is never seen; a node not on the allow-list is a stranger.
    let mut other = net.config("x", 3, "elsewhere");
    other
        .peers
        .insert("x".into(), hex(key(5).verifying_key().as_bytes()));
    let x = Gossip::start(other, key(5), &UdpTransport)
        .await
        .expect("x");
    x.publish(report(30.0)).await;
    let mut stranger = net.config("z", 4, "lab");
    stranger
        .peers
        .insert("z".into(), hex(key(9).verifying_key().as_bytes()));
    let z = Gossip::start(stranger, key(9), &UdpTransport)
        .await
        .expect("z");
    z.publish(report(30.0)).await;
    let v = until(&a, "z listed as a stranger", |v| v.strangers == ["z"]).await;
    assert!(
        v.nodes.iter().all(|p| p.node != "z" && p.node != "x"),
        "{v:#?}"
    );
    // Give x's gossip a few more rounds: still never seen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = a.view().await;
    assert!(v.nodes.iter().all(|p| p.node != "x"), "{v:#?}");
    assert!(v.refused_reports >= 4, "{v:#?}");
}

#[test]
fn a_config_without_this_node_or_with_a_bad_key_is_refused_with_the_fix() {
    let net = Net::new(&["a", "b"]);
    let mut c = net.config("a", 0, "lab");
    c.peers.remove("a");
    let e = c.check(&key(1).verifying_key()).expect_err("a missing");
    assert!(e.to_string().contains("add a = \""), "{e}");
    let mut c = net.config("a", 0, "lab");
    c.peers.insert("b".into(), "not hex".into());
    let e = c.check(&key(1).verifying_key()).expect_err("bad key");
    assert!(e.to_string().contains("64 hex digits"), "{e}");
    let c = net.config("a", 0, "lab");
    let e = c.check(&key(2).verifying_key()).expect_err("wrong own key");
    assert!(e.to_string().contains("other than this node's"), "{e}");
}
