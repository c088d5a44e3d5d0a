//! The install manifests against a real kube-apiserver: `kubectl apply --dry-run=server -k
//! deploy/` accepts them, and the RBAC they grant is enough for the real controller and agent
//! (run under impersonation of their ServiceAccounts) to do their whole job.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use egressgw::api::EgressGateway;
use egressgw::k8s::names::{
    AGENT_LEASE_NAMESPACE, CONTROLLER_LEASE, LABEL_AGENT_NODE, SYSTEM_NAMESPACE, agent_lease,
};
use egressgw_tests::control_plane::{ControlPlane, repo_root};
use egressgw_tests::plugin_bin::{kubeconfig_as, kubeconfig_as_with};
use egressgw_tests::sim::egressgw_binary;
use egressgw_tests::testbed::netns::{Netns, unique_prefix};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;

const CONTROLLER_SA: &str = "system:serviceaccount:egressgw-system:egressgw-controller";
const AGENT_SA: &str = "system:serviceaccount:egressgw-system:egressgw-agent";
const WAIT: Duration = Duration::from_secs(30);
/// The user extra naming the node a ServiceAccount token was bound to.
const NODE_EXTRA: &str = "authentication.kubernetes.io/node-name";
const POLL: Duration = Duration::from_millis(100);

fn describe(out: &std::process::Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn apply(cp: &ControlPlane, extra: &[&str]) {
    let deploy = repo_root().join("deploy");
    let mut args = vec!["apply", "-k", deploy.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = cp.kubectl(&args).await.expect("kubectl runs");
    assert!(out.status.success(), "kubectl {args:?}: {}", describe(&out));
}

#[tokio::test]
#[ignore = "needs the kube-apiserver built by make control-plane"]
async fn the_install_passes_a_server_side_dry_run() {
    let cp = ControlPlane::start().await.expect("control plane");
    // A dry run creates nothing, so on a fresh cluster the namespaced objects cannot find
    // their namespace: that must be the only complaint (docs/install.md says so).
    let out = cp
        .kubectl([
            "apply",
            "--dry-run=server",
            "-k",
            repo_root().join("deploy").to_str().unwrap(),
        ])
        .await
        .unwrap();
    let text = describe(&out);
    assert!(
        text.contains("namespace/egressgw-system created (server dry run)"),
        "{text}"
    );
    assert!(text.contains("customresourcedefinition.apiextensions.k8s.io/egressgateways.egressgw.io created (server dry run)"), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .all(|l| l.contains("namespaces \"egressgw-system\" not found")
                || l.contains("namespaces \"egressgw-agents\" not found")),
        "only the missing namespaces may fail a dry run on a fresh cluster: {text}"
    );
    for ns in [SYSTEM_NAMESPACE, AGENT_LEASE_NAMESPACE] {
        let out = cp.kubectl(["create", "namespace", ns]).await.unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    }
    apply(&cp, &["--dry-run=server"]).await;
    let cleanup = repo_root().join("deploy/cleanup");
    let out = cp
        .kubectl(["apply", "--dry-run=server", "-k", cleanup.to_str().unwrap()])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    // And for real, twice (an upgrade re-applies the same manifests).
    apply(&cp, &["--server-side", "--field-manager=egressgw-install"]).await;
    apply(&cp, &["--server-side", "--field-manager=egressgw-install"]).await;
    let out = cp
        .kubectl([
            "get",
            "daemonset,deployment,pdb",
            "-n",
            SYSTEM_NAMESPACE,
            "-o",
            "name",
        ])
        .await
        .unwrap();
    let names = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [
        "daemonset.apps/egressgw-agent",
        "deployment.apps/egressgw-controller",
        "poddisruptionbudget.policy/egressgw-controller",
    ] {
        assert!(names.contains(want), "{want} missing from {names}");
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[String], log: &std::path::Path) -> Killed {
    let out = std::fs::File::create(log).expect("log file");
    let child = Command::new(egressgw_binary().expect("egressgw built"))
        .args(args)
        .env("RUST_LOG", "info,kube=warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn egressgw");
    Killed(child)
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
#[ignore = "needs the kube-apiserver built by make control-plane, and root for the agent's network namespace"]
async fn the_granted_rbac_is_enough_for_the_real_controller_and_agent() {
    let cp = ControlPlane::start().await.expect("control plane");
    apply(&cp, &["--server-side", "--field-manager=egressgw-install"]).await;
    let out = cp
        .kubectl([
            "wait",
            "--for=condition=Established",
            "crd/egressgateways.egressgw.io",
            "--timeout=30s",
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    cp.create_namespace("billing", &[("team", "billing")])
        .await
        .unwrap();
    cp.create_node(
        "node-1",
        &[("egressgw.io/gateway", "true")],
        IpAddr::from([198, 18, 0, 11]),
        true,
    )
    .await
    .unwrap();
    let example = repo_root().join("examples/01-one-ip.yaml");
    let out = cp
        .kubectl(["apply", "-f", example.to_str().unwrap()])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));

    let ns =
        Netns::create(&format!("{}dep", unique_prefix())).expect("network namespace (needs root)");
    let agent_kc = kubeconfig_as_with(&cp, AGENT_SA, &[(NODE_EXTRA, "node-1")]).unwrap();
    let controller_kc = kubeconfig_as(&cp, CONTROLLER_SA).unwrap();
    let s = |x: &str| x.to_string();
    let _agent = spawn(
        &[
            s("agent"),
            s("--node-name"),
            s("node-1"),
            s("--netns"),
            ns.path().display().to_string(),
            s("--kubeconfig"),
            agent_kc.display().to_string(),
            s("--metrics-addr"),
            s("127.0.0.1:0"),
        ],
        &cp.dir().join("agent.log"),
    );
    let _controller = spawn(
        &[
            s("controller"),
            s("--kubeconfig"),
            controller_kc.display().to_string(),
            s("--identity"),
            s("rbac-test"),
            s("--metrics-addr"),
            s("127.0.0.1:0"),
        ],
        &cp.dir().join("controller.log"),
    );

    let agent_leases: Api<Lease> = Api::namespaced(cp.client(), AGENT_LEASE_NAMESPACE);
    wait_for("the agent to create and renew its Lease", async || {
        let l = agent_leases.get_opt(&agent_lease("node-1")).await.ok()??;
        (!l.metadata.resource_version?.is_empty()).then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(cp.client(), SYSTEM_NAMESPACE);
    wait_for("the controller to hold the leader Lease", async || {
        let l = leases.get_opt(CONTROLLER_LEASE).await.ok()??;
        (l.spec?.holder_identity.as_deref() == Some("rbac-test")).then_some(())
    })
    .await;
    let gateways: Api<EgressGateway> = Api::all(cp.client());
    // The namespace has no IP on node-1's interfaces (an empty netns), so the status says so
    // once the controller has seen the agent's Lease renewed. The two start together, so a
    // first status may still say the agent is not live; wait for the settled one.
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = gateways
            .get("billing-to-mainframe")
            .await
            .ok()
            .and_then(|g| {
                g.status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Ready")
            });
        let settled = ready.as_ref().is_some_and(|r| {
            r.status == "False"
                && r.reason == "NoEligibleNode"
                && r.message
                    .contains("node-1: has no interface for the IP's subnet")
        });
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Ready condition never said node-1 has no interface for the IP's subnet; last: {ready:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let events: Api<Event> = Api::namespaced(cp.client(), "default");
    wait_for("the controller's event in namespace default", async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("NoEligibleNode"))
            .then_some(())
    })
    .await;
    for log in ["agent.log", "controller.log"] {
        let text = std::fs::read_to_string(cp.dir().join(log)).unwrap();
        assert!(
            !text.contains("forbidden"),
            "{log} shows a request RBAC refused:\n{text}"
        );
    }
}

/// A Lease as an agent on `node` writes it (name and label may be made to lie).
fn lease(name: &str, node_label: &str) -> Lease {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { LABEL_AGENT_NODE: node_label } },
        "spec": { "holderIdentity": node_label, "leaseDurationSeconds": 2 },
    }))
    .unwrap()
}

/// The refusal of a write (a 403 from RBAC or from the admission policy), or a panic when the
/// write went through.
fn refused<T: std::fmt::Debug>(what: &str, r: kube::Result<T>) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => s.message,
        other => panic!("{what}: expected a 403 refusal, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs the kube-apiserver built by make control-plane"]
async fn an_agent_writes_only_its_own_lease_and_never_the_leader_lease() {
    use kube::api::{DeleteParams, PostParams};
    let cp = ControlPlane::start().await.expect("control plane");
    apply(&cp, &["--server-side", "--field-manager=egressgw-install"]).await;
    let client_as = async |extra: &[(&str, &str)], user: &str| {
        let kc = kubeconfig_as_with(&cp, user, extra).unwrap();
        egressgw::k8s::client(Some(&kc)).await.unwrap()
    };
    let node1 = client_as(&[(NODE_EXTRA, "node-1")], AGENT_SA).await;
    let no_node = client_as(&[], AGENT_SA).await;
    let controller = client_as(&[], CONTROLLER_SA).await;
    let pp = PostParams::default();
    let admin_agents: Api<Lease> = Api::namespaced(cp.client(), AGENT_LEASE_NAMESPACE);
    let admin_system: Api<Lease> = Api::namespaced(cp.client(), SYSTEM_NAMESPACE);
    admin_agents
        .create(&pp, &lease(&agent_lease("node-2"), "node-2"))
        .await
        .unwrap();
    admin_system
        .create(&pp, &lease(CONTROLLER_LEASE, "controller-0"))
        .await
        .unwrap();
    let as_node1: Api<Lease> = Api::namespaced(node1.clone(), AGENT_LEASE_NAMESPACE);

    // The policy is live once another node's Lease is refused (policies load asynchronously).
    let deadline = Instant::now() + WAIT;
    let message = loop {
        match as_node1
            .create(&pp, &lease(&agent_lease("node-3"), "node-3"))
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 403 => break s.message,
            Ok(_) => {
                let _ = admin_agents
                    .delete(&agent_lease("node-3"), &DeleteParams::default())
                    .await;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the admission policy never refused node-1's agent a Lease of node-3"
        );
        tokio::time::sleep(POLL).await;
    };
    assert!(
        message.contains("egressgw-agent-own-lease")
            && message.contains("may write only Lease egressgw-agent-node-1"),
        "the refusal names the policy and the Lease allowed: {message}"
    );

    // Its own Lease: created and renewed.
    let mut own = as_node1
        .create(&pp, &lease(&agent_lease("node-1"), "node-1"))
        .await
        .expect("node-1's agent creates its own Lease");
    own.spec.as_mut().unwrap().lease_transitions = Some(1);
    let own = as_node1
        .replace(&agent_lease("node-1"), &pp, &own)
        .await
        .expect("node-1's agent renews its own Lease");

    // Its own name with another node's label: refused (the controller reads both).
    let mut lying = own.clone();
    lying
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_AGENT_NODE.into(), "node-2".into());
    let m = refused(
        "own Lease relabelled as node-2",
        as_node1.replace(&agent_lease("node-1"), &pp, &lying).await,
    );
    assert!(m.contains("labelled egressgw.io/node=node-1"), "{m}");

    // Another node's existing Lease: refused.
    let mut theirs = admin_agents.get(&agent_lease("node-2")).await.unwrap();
    theirs.spec.as_mut().unwrap().holder_identity = Some("node-1".into());
    refused(
        "node-2's Lease renewed by node-1's agent",
        as_node1.replace(&agent_lease("node-2"), &pp, &theirs).await,
    );
    // Deleting it, or its own: RBAC grants no delete.
    refused(
        "node-2's Lease deleted by node-1's agent",
        as_node1
            .delete(&agent_lease("node-2"), &DeleteParams::default())
            .await,
    );

    // A token bound to no node (no node-name extra): not even a Lease that looks like its own.
    let m = refused(
        "a Lease written with a token bound to no node",
        Api::<Lease>::namespaced(no_node, AGENT_LEASE_NAMESPACE)
            .create(&pp, &lease(&agent_lease("node-4"), "node-4"))
            .await,
    );
    assert!(m.contains("authentication.kubernetes.io/node-name"), "{m}");

    // The leader Lease, and any Lease in egressgw-system: RBAC refuses the agent.
    let as_node1_system: Api<Lease> = Api::namespaced(node1, SYSTEM_NAMESPACE);
    let mut leader = admin_system.get(CONTROLLER_LEASE).await.unwrap();
    leader.spec.as_mut().unwrap().holder_identity = Some("node-1".into());
    refused(
        "the leader Lease taken over by an agent",
        as_node1_system
            .replace(CONTROLLER_LEASE, &pp, &leader)
            .await,
    );
    refused(
        "a Lease created by an agent in egressgw-system",
        as_node1_system
            .create(&pp, &lease(&agent_lease("node-1"), "node-1"))
            .await,
    );

    // The controller watches the agents' Leases and writes none of them.
    refused(
        "an agent Lease written by the controller",
        Api::<Lease>::namespaced(controller, AGENT_LEASE_NAMESPACE)
            .replace(&agent_lease("node-2"), &pp, &theirs)
            .await,
    );
}
