//! A 3-node (or N-node) nats-server cluster with JetStream on loopback, each node with its
//! own ports and store; nodes are killed and restarted individually.

use std::time::{Duration, Instant};

use crate::nats::{NatsServer, NatsServerBuilder, http_get};
use crate::ports::free_port;

/// A cluster of nats-servers.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` nodes (`n1`…) routed to each other and waits until a JetStream meta leader
    /// is elected.
    pub fn start(n: usize) -> Self {
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (client, monitor, cluster))| {
                let routes = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, _, c))| *c)
                    .collect();
                let mut b = NatsServerBuilder::default();
                b.cluster = Some(("jetflow-test".to_string(), *cluster, routes));
                b.ports = Some((*client, *monitor));
                b.name(&format!("n{}", i + 1)).launch()
            })
            .collect();
        let mut cluster = Self { nodes };
        cluster.wait_ready();
        cluster
    }

    /// Every node's client URL, comma-separated (what clients get as seeds).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i` (0-based).
    pub fn node(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The name of the JetStream meta leader, as a running node reports it.
    pub fn meta_leader(&mut self) -> Option<String> {
        for node in &mut self.nodes {
            if !node.is_running() {
                continue;
            }
            if let Ok((200, body)) = http_get(node.monitor_port(), "/jsz") {
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                if let Some(leader) = v["meta_cluster"]["leader"]
                    .as_str()
                    .filter(|l| !l.is_empty())
                {
                    return Some(leader.to_string());
                }
            }
        }
        None
    }

    /// Waits (30 s at most) until every running node is healthy and a meta leader exists.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = self.nodes.iter_mut().all(|n| {
                !n.is_running() || matches!(http_get(n.monitor_port(), "/healthz"), Ok((200, _)))
            });
            if healthy && self.meta_leader().is_some() {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- {}:\n{}", n.name(), n.log_tail()))
                    .collect();
                panic!(
                    "the NATS cluster did not become ready in 30s\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
