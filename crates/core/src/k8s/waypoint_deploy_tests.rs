use super::*;
use crate::k8s::manifests::parse_documents;

const GW: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop, uid: 1b2c3d4e-0000-4000-8000-000000000001}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n";

fn settings() -> DeploySettings {
    DeploySettings {
        image: "registry.example/ferry:1.2".into(),
        image_pull_policy: "IfNotPresent".into(),
        xds_address: "https://ferry-controller.istio-system.svc:15012".into(),
        ca_address: "https://ferry-controller.istio-system.svc:15012".into(),
        cluster_domain: "cluster.local".into(),
        trust_domain: "cluster.local".into(),
        cpu_request: "100m".into(),
        memory_request: "128Mi".into(),
        memory_limit: "1Gi".into(),
    }
}

fn plan_of(docs: &[&str]) -> Plan {
    plan(&parse_documents(&docs.join("---\n"), "t").unwrap(), &settings())
}

fn object(p: &Plan, kind: DeployKind) -> &Value {
    &p.objects.iter().find(|d| d.kind == kind).unwrap_or_else(|| panic!("no {kind:?} in {p:?}")).object
}

fn env_of(d: &Value) -> Vec<(String, String)> {
    let env = d.pointer("/spec/template/spec/containers/0/env").and_then(Value::as_array).unwrap();
    env.iter()
        .map(|e| {
            let v = e["value"].as_str().map(String::from);
            let from = e.pointer("/valueFrom/fieldRef/fieldPath").and_then(Value::as_str).map(|f| format!("fieldRef:{f}"));
            (e["name"].as_str().unwrap().to_string(), v.or(from).unwrap())
        })
        .collect()
}

#[test]
fn a_waypoint_gateway_gets_its_account_deployment_and_service_owned_by_it() {
    let p = plan_of(&[GW]);
    assert_eq!(p.skipped, vec![]);
    let kinds: Vec<_> = p.objects.iter().map(|d| (d.kind, d.namespace.as_str(), d.name.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (DeployKind::ServiceAccount, "shop", "waypoint"),
            (DeployKind::Deployment, "shop", "waypoint"),
            (DeployKind::Service, "shop", "waypoint")
        ]
    );
    for d in &p.objects {
        let o = &d.object;
        assert_eq!(o["kind"], d.kind.as_str());
        assert_eq!(o["metadata"]["namespace"], "shop");
        assert_eq!(
            o["metadata"]["ownerReferences"],
            json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "waypoint",
                    "uid": "1b2c3d4e-0000-4000-8000-000000000001", "controller": true}]),
            "{:?}",
            d.kind
        );
        assert_eq!(o["metadata"]["labels"][MANAGED_BY], MANAGED_BY_FERRY);
        assert_eq!(o["metadata"]["labels"][GATEWAY_NAME], "waypoint");
        assert_eq!(o["metadata"]["labels"][MANAGED], MANAGED_MESH);
    }
    let svc = object(&p, DeployKind::Service);
    assert_eq!(svc["spec"]["selector"], json!({GATEWAY_NAME: "waypoint"}));
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "mesh", "port": 15008, "targetPort": 15008, "protocol": "TCP", "appProtocol": "hbone"}])
    );
}

#[test]
fn the_deployment_runs_ferry_waypoint_as_the_gateways_account_never_captured_and_locked_down() {
    let p = plan_of(&[GW]);
    let d = object(&p, DeployKind::Deployment);
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["selector"]["matchLabels"], json!({GATEWAY_NAME: "waypoint"}));
    let pod = &d["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"][GATEWAY_NAME], "waypoint", "the selector matches the pods");
    assert_eq!(pod["metadata"]["labels"]["istio.io/dataplane-mode"], "none");
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], "waypoint");
    assert_eq!(spec["terminationGracePeriodSeconds"], GRACE_SECONDS);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let c = &spec["containers"][0];
    assert_eq!((c["image"].as_str(), c["args"].clone()), (Some("registry.example/ferry:1.2"), json!(["waypoint"])));
    let sc = &c["securityContext"];
    assert_eq!((sc["allowPrivilegeEscalation"].clone(), sc["readOnlyRootFilesystem"].clone()), (json!(false), json!(true)));
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    let ports: Vec<u64> = c["ports"].as_array().unwrap().iter().map(|p| p["containerPort"].as_u64().unwrap()).collect();
    assert_eq!(ports, [15008, 15020, 15021]);
    assert_eq!(c["readinessProbe"]["httpGet"], json!({"path": "/healthz/ready", "port": 15021}));
    let env = env_of(d);
    let get = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("no {n}"));
    assert_eq!(get("GATEWAY_NAME"), "waypoint");
    assert_eq!(get("SERVICE_ACCOUNT"), "fieldRef:spec.serviceAccountName");
    assert_eq!(get("INSTANCE_IPS"), "fieldRef:status.podIPs");
    assert_eq!(get("POD_NAMESPACE"), "fieldRef:metadata.namespace");
    assert_eq!(get("XDS_ADDRESS"), "https://ferry-controller.istio-system.svc:15012");
    assert_eq!(get("CA_ROOT_CA"), "/var/run/secrets/istio/root-cert.pem");
    assert_eq!(get("AUTH_TOKEN"), "/var/run/secrets/tokens/istio-token");
    assert_eq!(get("TERMINATION_GRACE_PERIOD_SECONDS"), GRACE_SECONDS.to_string());
    let token = &spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "istio-ca");
    assert_eq!(spec["volumes"][1]["configMap"]["name"], "istio-ca-root-cert");
}

#[test]
fn gateways_that_are_not_waypoints_or_cannot_be_owned_get_nothing_and_say_why() {
    let other_class = GW.replace("istio-waypoint", "istio").replace("name: waypoint,", "name: ingress,");
    let no_uid = GW.replace(", uid: 1b2c3d4e-0000-4000-8000-000000000001", "").replace("name: waypoint,", "name: nouid,");
    let no_mesh = GW.replace("name: mesh", "name: other").replace("name: waypoint,", "name: nomesh,");
    let bad_name = GW.replace("name: waypoint,", "name: 9lives,");
    let long = format!("w{}", "a".repeat(63));
    let too_long = GW.replace("name: waypoint,", &format!("name: {long},"));
    #[rustfmt::skip]
    let cases: &[(&str, Option<WaypointDeployError>)] = &[
        (&other_class, None),
        (&no_uid, Some(WaypointDeployError::NoUid { gateway: "shop/nouid".into() })),
        (&no_mesh, Some(WaypointDeployError::NoMeshListener { gateway: "shop/nomesh".into() })),
        (&bad_name, Some(WaypointDeployError::BadName { gateway: "shop/9lives".into() })),
        (&too_long, Some(WaypointDeployError::BadName { gateway: format!("shop/{long}") })),
    ];
    for (doc, why) in cases {
        let p = plan_of(&[doc]);
        assert_eq!(p.objects, vec![], "{doc}");
        assert_eq!(p.skipped, why.iter().cloned().collect::<Vec<_>>(), "{doc}");
    }
    assert!(WaypointDeployError::NoUid { gateway: "shop/x".into() }.to_string().contains("shop/x"));
}

#[test]
fn infrastructure_labels_and_annotations_are_copied_but_never_override_ours() {
    let gw = GW.replace(
        "gatewayClassName:",
        "infrastructure: {labels: {team: payments, gateway.networking.k8s.io/gateway-name: evil}, annotations: {owner: ops}}, gatewayClassName:",
    );
    let p = plan_of(&[&gw]);
    for d in &p.objects {
        assert_eq!(d.object["metadata"]["labels"]["team"], "payments", "{:?}", d.kind);
        assert_eq!(d.object["metadata"]["labels"][GATEWAY_NAME], "waypoint", "{:?}", d.kind);
        assert_eq!(d.object["metadata"]["annotations"]["owner"], "ops", "{:?}", d.kind);
    }
    let pod = &object(&p, DeployKind::Deployment)["spec"]["template"]["metadata"];
    assert_eq!((pod["labels"]["team"].as_str(), pod["annotations"]["owner"].as_str()), (Some("payments"), Some("ops")));
    // Without them, no annotations at all (server-side apply would otherwise own an empty map).
    assert!(plan_of(&[GW]).objects.iter().all(|d| d.object["metadata"].get("annotations").is_none()));
}

#[test]
fn the_same_state_gives_the_same_objects() {
    assert_eq!(plan_of(&[GW]), plan_of(&[GW]));
    let changed = plan(&parse_documents(GW, "t").unwrap(), &DeploySettings { image: "ferry:2".into(), ..settings() });
    assert_ne!(object(&changed, DeployKind::Deployment), object(&plan_of(&[GW]), DeployKind::Deployment));
    assert_eq!(object(&changed, DeployKind::Service), object(&plan_of(&[GW]), DeployKind::Service));
}

#[test]
fn the_controllers_own_image_is_read_from_its_pod() {
    let pod = |containers: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: ferry-controller-1, namespace: istio-system}}\nspec: {{containers: [{containers}]}}\n")
    };
    let two = pod("{name: sidecar, image: other:1}, {name: controller, image: reg/ferry@sha256:ab}");
    let one = pod("{name: main, image: reg/ferry:3}");
    let unnamed = pod("{name: a, image: a:1}, {name: b, image: b:1}");
    #[rustfmt::skip]
    let cases: &[(&str, &str, Option<&str>)] = &[
        (&two, "ferry-controller-1", Some("reg/ferry@sha256:ab")),
        (&one, "ferry-controller-1", Some("reg/ferry:3")),
        (&unnamed, "ferry-controller-1", None),
        (&one, "ferry-controller-2", None),
    ];
    for (doc, name, want) in cases {
        let c = parse_documents(doc, "t").unwrap();
        assert_eq!(own_image(&c, "istio-system", name, "controller").as_deref(), *want, "{doc} {name}");
    }
}

#[test]
fn a_service_or_account_of_that_name_that_ferry_did_not_create_is_never_overwritten() {
    let svc = |labels: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: waypoint, namespace: shop, labels: {{{labels}}}}}\nspec: {{ports: [{{port: 15008}}]}}\n")
    };
    let sa = |labels: &str| {
        format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: waypoint, namespace: shop, labels: {{{labels}}}}}\n")
    };
    let ours = "app.kubernetes.io/managed-by: ferry-controller";
    let not_ours = |kind| Some(WaypointDeployError::NotOurs { gateway: "shop/waypoint".into(), kind });
    #[rustfmt::skip]
    let cases: Vec<(String, Option<WaypointDeployError>)> = vec![
        (svc(ours), None),
        (sa(ours), None),
        (svc("gateway.istio.io/managed: istio.io-mesh-controller"), not_ours("Service")),
        (sa(""), not_ours("ServiceAccount")),
        // Same name, another namespace: not the waypoint's.
        (sa("").replace("namespace: shop", "namespace: other"), None),
    ];
    for (doc, why) in cases {
        let p = plan_of(&[GW, &doc]);
        assert_eq!(p.skipped, why.iter().cloned().collect::<Vec<_>>(), "{doc}");
        assert_eq!(p.objects.len(), if why.is_some() { 0 } else { 3 }, "{doc}");
    }
}

#[test]
fn the_deployments_pods_are_what_the_xds_server_admits_as_this_waypoints_account() {
    let p = plan_of(&[GW]);
    let template = &object(&p, DeployKind::Deployment)["spec"]["template"];
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "waypoint-5d8f-x", "namespace": "shop", "labels": template["metadata"]["labels"]},
                     "spec": template["spec"]});
    let c = parse_documents(&[GW.to_string(), pod.to_string()].join("---\n"), "t").unwrap();
    assert!(crate::waypoint_xds::is_waypoint_account(&c, "shop", "waypoint"));
    assert!(!crate::waypoint_xds::is_waypoint_account(&c, "shop", "default"));
}

#[test]
fn resource_quantities_are_checked_as_kubernetes_reads_them() {
    for q in ["100m", "1", "0.5", "128Mi", "1Gi", "2G", "1e3", "5E-2", "250k"] {
        assert!(is_quantity(q), "{q}");
    }
    for q in ["", "m", "1.2.3", "128MB", "1gi", "-1", "1 Gi", "e3", "1e", ".", "100mm"] {
        assert!(!is_quantity(q), "{q}");
    }
}
