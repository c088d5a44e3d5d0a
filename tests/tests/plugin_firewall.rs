//! The firewall snippets of `kubectl egress allowlist` are ready to paste: the nftables output
//! loads with `nft -f` into a chain, the iptables commands run, in a scratch network namespace.

use egressgw_tests::control_plane::ControlPlane;
use egressgw_tests::plugin_bin::run_plugin;
use egressgw_tests::testbed::netns::{Netns, unique_prefix};

/// The chain a network team's firewall would have; the snippet goes into it.
const NFT_PRELUDE: &str = "table inet filter {\n  chain forward {\n    type filter hook forward priority filter; policy drop;\n  }\n}\n";

const GATEWAYS: &str = r#"
apiVersion: egressgw.io/v1alpha1
kind: EgressGateway
metadata: { name: billing-to-mainframe }
spec:
  namespaceSelector: { matchLabels: { team: billing } }
  podSelector: { matchLabels: { app: invoicer } }
  destinationCIDRs: [203.0.113.0/24]
  excludedCIDRs: [203.0.113.7/32]
  egressIPs: [198.18.0.200, 198.18.0.201]
  gatewayNodeSelector: { matchLabels: { egressgw.io/gateway: "true" } }
---
apiVersion: egressgw.io/v1alpha1
kind: EgressGateway
metadata: { name: partner }
spec:
  namespaceSelector: {}
  podSelector: { matchLabels: { app: partner } }
  destinationCIDRs: [198.51.100.0/24]
  egressIPs: [198.18.0.210]
  gatewayNodeSelector: { matchLabels: { egressgw.io/gateway: "true" } }
"#;

fn plugin(cp: &ControlPlane, args: &[&str]) -> String {
    let mut all = vec![
        "--kubeconfig",
        cp.kubeconfig().to_str().unwrap(),
        "allowlist",
    ];
    all.extend_from_slice(args);
    let out = run_plugin(&all, &[]).expect("kubectl-egress runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
#[ignore = "needs the kube-apiserver built by make control-plane, and root for a network namespace"]
async fn nftables_and_iptables_snippets_load_as_printed() {
    let cp = ControlPlane::start_with_crds()
        .await
        .expect("control plane");
    let manifest = cp.dir().join("gateways.yaml");
    std::fs::write(&manifest, GATEWAYS).unwrap();
    let out = cp
        .kubectl(["apply", "-f", manifest.to_str().unwrap()])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns =
        Netns::create(&format!("{}fw", unique_prefix())).expect("network namespace (needs root)");

    let snippet = plugin(&cp, &["-o", "nftables"]);
    let file = cp.dir().join("allowlist.nft");
    std::fs::write(&file, format!("{NFT_PRELUDE}{snippet}")).unwrap();
    ns.exec("nft", &["-f", file.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("nft -f rejects:\n{snippet}\n{e:#}"));
    let chain = ns
        .exec("nft", &["list", "chain", "inet", "filter", "forward"])
        .unwrap();
    assert_eq!(chain.matches("comment \"egressgw ").count(), 2, "{chain}");
    assert!(
        chain.contains("ip saddr { 198.18.0.200, 198.18.0.201 }"),
        "{chain}"
    );
    // nft merges the printed networks into ranges: everything but the carve-out.
    assert!(
        chain.contains("ip daddr { 203.0.113.0-203.0.113.6, 203.0.113.8-203.0.113.255 }"),
        "{chain}"
    );

    let commands = plugin(&cp, &["-o", "iptables"]);
    for line in commands
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        ns.exec("sh", &["-c", line])
            .unwrap_or_else(|e| panic!("{line}: {e:#}"));
    }
    let rules = ns.exec("iptables", &["-S", "FORWARD"]).unwrap();
    assert!(rules.contains("-s 198.18.0.210/32 -d 198.51.100.0/24 -m comment --comment \"egressgw partner\" -j ACCEPT"), "{rules}");
    // 2 sources x 8 destination networks (203.0.113.0/24 minus one address) + 1.
    assert_eq!(
        rules
            .lines()
            .filter(|l| l.starts_with("-A FORWARD"))
            .count(),
        17,
        "{rules}"
    );
}
