//! The bare-metal node source: a v1 NodeList (or `kind: List` of Nodes, as
//! `kubectl get nodes -o yaml` prints it) in YAML or JSON.

use k8s_openapi::api::core::v1::Node;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum NodesFileError {
    #[error("not a valid NodeList (YAML or JSON): {0}")]
    Syntax(String),
    #[error("kind is {0:?}: expected NodeList or List")]
    WrongKind(String),
    #[error("items[{index}] has kind {kind:?}: expected Node")]
    WrongItemKind { index: usize, kind: String },
    #[error("items[{index}] has no metadata.name")]
    Unnamed { index: usize },
    #[error("node {0:?} appears more than once")]
    Duplicate(String),
}

#[derive(Deserialize)]
struct RawList {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    items: Vec<serde_yaml::Value>,
}

/// Parses the text of a nodes file. Every item must be a named Node; any error rejects the
/// whole file so the caller keeps its last good state.
pub fn parse_node_list(text: &str) -> Result<Vec<Node>, NodesFileError> {
    let raw: RawList =
        serde_yaml::from_str(text).map_err(|e| NodesFileError::Syntax(e.to_string()))?;
    match raw.kind.as_deref() {
        None | Some("NodeList" | "List") => {}
        Some(k) => return Err(NodesFileError::WrongKind(k.to_string())),
    }
    let mut nodes = Vec::with_capacity(raw.items.len());
    let mut seen = std::collections::HashSet::new();
    for (index, item) in raw.items.into_iter().enumerate() {
        if let Some(kind) = item.get("kind").and_then(|k| k.as_str()) {
            if kind != "Node" {
                return Err(NodesFileError::WrongItemKind {
                    index,
                    kind: kind.to_string(),
                });
            }
        }
        let node: Node = serde_yaml::from_value(item)
            .map_err(|e| NodesFileError::Syntax(format!("items[{index}]: {e}")))?;
        let name = node
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(NodesFileError::Unnamed { index })?;
        if !seen.insert(name.clone()) {
            return Err(NodesFileError::Duplicate(name));
        }
        nodes.push(node);
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClusterState, PeerFilter};

    const KUBECTL_YAML: &str = r#"
apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: v1
  kind: Node
  metadata:
    annotations:
      flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}'
      flannel.alpha.coreos.com/backend-type: vxlan
      flannel.alpha.coreos.com/kube-subnet-manager: "true"
      flannel.alpha.coreos.com/public-ip: 198.18.0.1
    labels:
      kubernetes.io/hostname: n1
    name: n1
  spec:
    podCIDR: 10.244.1.0/24
    podCIDRs:
    - 10.244.1.0/24
  status:
    addresses:
    - address: 198.18.0.1
      type: InternalIP
    - address: n1
      type: Hostname
- apiVersion: v1
  kind: Node
  metadata:
    name: n2
  spec:
    podCIDR: 10.244.2.0/24
  status:
    addresses:
    - address: 198.18.0.2
      type: InternalIP
"#;

    #[test]
    fn parses_kubectl_output_yaml() {
        let nodes = parse_node_list(KUBECTL_YAML).unwrap();
        assert_eq!(nodes.len(), 2);
        let s = ClusterState::from_nodes(&nodes, "n2", PeerFilter::AllowUnannotated).unwrap();
        assert_eq!(s.peers.len(), 1);
        assert_eq!(s.peers[0].vtep_mac.to_string(), "02:00:00:00:00:01");
        assert_eq!(s.peers[0].vtep_ip.to_string(), "198.18.0.1");
        assert_eq!(s.own_vtep_mac().to_string(), "0a:58:0a:f4:02:00");
    }

    #[test]
    fn parses_json_nodelist() {
        let json = r#"{"apiVersion":"v1","kind":"NodeList","items":[
            {"metadata":{"name":"a"},"spec":{"podCIDR":"10.244.1.0/24"},
             "status":{"addresses":[{"type":"InternalIP","address":"198.18.0.1"}]}}]}"#;
        let nodes = parse_node_list(json).unwrap();
        assert_eq!(nodes[0].metadata.name.as_deref(), Some("a"));
    }

    #[test]
    fn rejects_broken_files_with_reason() {
        let cases = [
            ("items: [", "not a valid NodeList"),
            ("kind: Pod\nitems: []", "kind is \"Pod\""),
            (
                "items:\n- kind: Service\n  metadata: {name: a}",
                "items[0] has kind \"Service\"",
            ),
            ("items:\n- metadata: {}", "items[0] has no metadata.name"),
            (
                "items:\n- metadata: {name: a}\n- metadata: {name: a}",
                "node \"a\" appears more than once",
            ),
            (
                "items:\n- metadata: {name: a}\n  spec: {podCIDR: 5}",
                "items[0]",
            ),
        ];
        for (text, want) in cases {
            let err = parse_node_list(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn empty_list_is_valid() {
        assert!(
            parse_node_list("apiVersion: v1\nkind: NodeList\nitems: []\n")
                .unwrap()
                .is_empty()
        );
    }
}
