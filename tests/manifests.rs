//! The install (manifests/, the Dockerfile, e2e/kind/) checked without a cluster: the kustomize
//! tree renders; every object validates against the Kubernetes OpenAPI schema; every shell
//! script passes shellcheck; the Dockerfile runs the release build `./x` runs (a textual check);
//! and the names, ports and paths the manifests give the binaries are the ones the binaries read
//! (compared with `ferry <role> --help`, which prints every flag's environment variable and
//! default). Every tool is required: a missing kubectl, validator or shellcheck fails the
//! test, it never skips it. `./x test` installs all but kubectl.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::TempDir;
use serde_json::Value;

/// The Kubernetes version whose OpenAPI schema the manifests must satisfy; the kind runner's
/// node image is of the same minor version (checked below).
const KUBERNETES_VERSION: &str = "1.33.0";
/// The audience of the proxy's projected token: what istiod and `ferry controller` require
/// (protocols.md §5).
const TOKEN_AUDIENCE: &str = "istio-ca";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a tool, failing the test with what to do when it is not installed.
fn run(program: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; `./x test` installs the test tools (kubectl must be installed by hand)"))
}

fn ok_stdout(program: &str, args: &[&str], dir: &Path) -> String {
    let out = run(program, args, dir);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn rendered_text() -> String {
    ok_stdout("kubectl", &["kustomize", "manifests"], &root())
}

fn rendered() -> Vec<Value> {
    serde_saphyr::from_multiple(&rendered_text()).expect("kubectl kustomize prints YAML")
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the rendered manifests have no {kind} {name}"))
}

/// The pod template's containers (init containers first) of a workload.
fn containers(workload: &Value) -> Vec<&Value> {
    let spec = &workload["spec"]["template"]["spec"];
    let list = |k: &str| spec[k].as_array().map(|a| a.iter().collect::<Vec<_>>()).unwrap_or_default();
    let mut all = list("initContainers");
    all.extend(list("containers"));
    all
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    containers(workload).into_iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(c: &'a Value, name: &str) -> &'a str {
    c["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == name))
        .and_then(|v| v["value"].as_str())
        .unwrap_or_else(|| panic!("container {} sets no {name}", c["name"]))
}

/// The port of an address (`[::]:15021`, `https://host:15012`).
fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{addr:?} has no port"))
}

/// The volume behind the mount that holds `path` in container `c` of `workload`, and the path
/// relative to the mount point.
fn volume_for<'a>(workload: &'a Value, c: &Value, path: &str) -> (&'a Value, String) {
    let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
    let m = mounts
        .iter()
        .filter(|m| {
            let at = m["mountPath"].as_str().unwrap_or("");
            path == at || path.starts_with(&format!("{}/", at.trim_end_matches('/')))
        })
        .max_by_key(|m| m["mountPath"].as_str().map(str::len))
        .unwrap_or_else(|| panic!("container {}: {path} is not under any volume mount", c["name"]));
    let name = m["name"].as_str().unwrap();
    let vols = workload["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    let vol = vols.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no volume {name}"));
    let rest = path[m["mountPath"].as_str().unwrap().len()..].trim_start_matches('/').to_string();
    (vol, rest)
}

/// `ferry <role> --help`: every flag with its `[env: NAME=]` and `[default: ...]`.
fn help(role: &str) -> String {
    ok_stdout(env!("CARGO_BIN_EXE_ferry"), &[role, "--help"], &root())
}

fn names_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let ok = |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        ok(text[..i].chars().next_back()) && ok(text[i + word.len()..].chars().next())
    })
}

fn default_of<'a>(help: &'a str, env_name: &str) -> &'a str {
    let at = help.find(&format!("[env: {env_name}=")).unwrap_or_else(|| panic!("no flag reads {env_name}"));
    let tail = &help[at..];
    let d = tail.find("[default: ").unwrap_or_else(|| panic!("{env_name} has no default"));
    let v = &tail[d + 10..];
    &v[..v.find(']').unwrap()]
}

#[test]
fn the_kustomization_renders_the_three_roles_in_istio_system() {
    let objs = rendered();
    for (kind, name) in [("Deployment", "ferry-controller"), ("DaemonSet", "ferry-proxy"), ("DaemonSet", "ferry-node-agent")] {
        for c in containers(find(&objs, kind, name)) {
            assert_eq!(c["image"], "ferry:dev", "{name}/{}: one image for every role", c["name"]);
        }
    }
    let cluster_scoped = ["ClusterRole", "ClusterRoleBinding"];
    for o in &objs {
        let kind = o["kind"].as_str().unwrap();
        assert_ne!(kind, "Namespace", "the namespace is a prerequisite, never deleted by `kubectl delete -k`");
        assert_ne!(kind, "CustomResourceDefinition", "ferry defines no CRDs; Istio's are a prerequisite");
        if !cluster_scoped.contains(&kind) {
            assert_eq!(o["metadata"]["namespace"], "istio-system", "{kind} {}", o["metadata"]["name"]);
        }
    }
}

/// The validator `./x test` installed (FERRY_KUBERNETES_VALIDATE, or in .tools/ for a plain
/// `cargo test` after an `./x test`), else the one on PATH; it must be the version x pins.
fn validator() -> String {
    let installed = root().join(".tools/venv/bin/kubernetes-validate");
    let v = std::env::var("FERRY_KUBERNETES_VALIDATE").unwrap_or_else(|_| match installed.exists() {
        true => installed.display().to_string(),
        false => "kubernetes-validate".into(),
    });
    let x = std::fs::read_to_string(root().join("x")).unwrap();
    let pin = x.lines().find_map(|l| l.strip_prefix("kubernetes_validate_version=")).expect("x pins kubernetes-validate");
    let have = ok_stdout(&v, &["--version"], &root());
    assert_eq!(have.trim(), pin, "{v} is not the version ./x pins");
    v
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schema() {
    let v = validator();
    let tmp = TempDir::new("manifests");
    let all = tmp.path().join("rendered.yaml");
    std::fs::write(&all, rendered_text()).unwrap();
    // Each file on its own too: one that the kustomization does not include (the uninstall
    // step) is checked all the same. Kustomization files are kustomize's schema, not the API's:
    // rendering checks them.
    let mut files = Vec::new();
    yaml_files(&root().join("manifests"), &mut files);
    files.retain(|f| f.file_name().is_some_and(|n| n != "kustomization.yaml"));
    files.sort();
    assert!(files.len() >= 10, "too few manifests found: {files:?}");
    let mut args = vec!["--strict".to_string(), "-k".into(), KUBERNETES_VERSION.into(), all.display().to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&v, &args, &root());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schema validation failed:\n{text}");
    // A kind the validator has no schema for is a warning, not a failure: refuse it, so a
    // misspelt apiVersion cannot pass unchecked.
    assert!(!text.contains("WARN"), "an object was not checked against a schema:\n{text}");
    let passed = text.lines().filter(|l| l.contains(" passed for resource ")).count();
    let objects = rendered().len();
    assert!(passed > 2 * objects, "expected the {objects} rendered objects validated twice (rendered, then file by file) and the uninstall step, got {passed}:\n{text}");

    // The control: the same validator refuses an object the API server would refuse, so a
    // validator that passes everything fails this test.
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec: {selector: {}, template: {spec: {containers: [{name: c, ports: [{containerPort: http}]}]}}}\n").unwrap();
    let out = run(&v, &["--strict", "-k", KUBERNETES_VERSION, bad.to_str().unwrap()], &root());
    assert!(!out.status.success(), "the validator accepted a string containerPort");
}

/// Every shell script in the repository: `*.sh`, and executables whose first line names a shell.
fn shell_scripts(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            if !(name.starts_with('.') && name != ".ci") && name != "target" {
                shell_scripts(&p, out);
            }
            continue;
        }
        // An executable whose first line names a shell (data files such as fuzz seeds may start
        // with anything, but are not executable).
        use std::os::unix::fs::PermissionsExt;
        let executable = std::fs::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
        let first = std::fs::read(&p).ok().and_then(|b| b.split(|&c| c == b'\n').next().map(|l| String::from_utf8_lossy(l).to_string()));
        let shebang = executable && first.is_some_and(|l| l.starts_with("#!") && (l.contains("sh ") || l.ends_with("sh")));
        if name.ends_with(".sh") || shebang {
            out.push(p);
        }
    }
}

#[test]
fn every_shell_script_passes_shellcheck() {
    let mut scripts = Vec::new();
    shell_scripts(&root(), &mut scripts);
    scripts.sort();
    let rel: BTreeSet<String> = scripts.iter().map(|p| p.strip_prefix(root()).unwrap().display().to_string()).collect();
    for must in ["x", ".ci/run", "e2e/kind/run.sh"] {
        assert!(rel.contains(must), "{must} was not found among the shell scripts: {rel:?}");
    }
    let args: Vec<&str> = rel.iter().map(String::as_str).collect();
    let out = run("shellcheck", &args, &root());
    assert!(out.status.success(), "shellcheck:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The `cargo build` command lines of a script or Dockerfile, whitespace-normalized.
fn cargo_builds(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(|l| l.find("cargo build").map(|i| l[i..].split_whitespace().collect::<Vec<_>>().join(" "))).collect()
}

/// A textual check, not a build (no container engine here): the Dockerfile's build command is
/// the release build `./x` runs for CI (`./x demo`, `./x bench`), and it ships every binary
/// target of the workspace from that build's output.
#[test]
fn the_dockerfile_runs_the_release_build_x_runs_textual_check() {
    let read = |p: &str| std::fs::read_to_string(root().join(p)).unwrap();
    let (docker, x, ci) = (read("Dockerfile"), read("x"), read(".ci/run"));
    // The workspace's: the fuzz targets are another workspace (--manifest-path), not shipped.
    let release: BTreeSet<String> =
        cargo_builds(&x).union(&cargo_builds(&ci)).filter(|c| c.contains("--release") && !c.contains("--manifest-path")).cloned().collect();
    assert_eq!(release.len(), 1, "x and .ci/run should have one release build of the workspace: {release:?}");
    assert_eq!(cargo_builds(&docker), release, "the Dockerfile builds differently from ./x");
    for bin in ["ferry", "ferry-cni"] {
        let line = format!("COPY --from=build /src/target/release/{bin} /usr/local/bin/{bin}");
        assert!(docker.contains(&line), "the image does not ship {bin}: expected `{line}`");
    }
    // Every [[bin]] of the workspace is one of those two.
    let mut bins = BTreeSet::new();
    for manifest in ["Cargo.toml", "cni-plugin/Cargo.toml", "crates/core/Cargo.toml", "crates/sys/Cargo.toml", "crates/harness/Cargo.toml"]
    {
        let t = read(manifest);
        for block in t.split("[[bin]]").skip(1) {
            let name = block.lines().find_map(|l| l.trim().strip_prefix("name = ")).unwrap();
            bins.insert(name.trim_matches('"').to_string());
        }
    }
    assert_eq!(bins, BTreeSet::from(["ferry".to_string(), "ferry-cni".to_string()]));
    // The plugin the agent installs on the node is its default, ferry-cni next to ferry: both
    // are in /usr/local/bin (above), and the DaemonSet does not move it.
    let agent = rendered().into_iter().find(|o| o["metadata"]["name"] == "ferry-node-agent" && o["kind"] == "DaemonSet").unwrap();
    let agent_env = container(&agent, "agent")["env"].as_array().unwrap().clone();
    assert!(agent_env.iter().all(|v| v["name"] != "FERRY_CNI_PLUGIN"), "the agent installs the image's ferry-cni");
    assert!(help("agent").contains("`ferry-cni` next to this executable"), "the default of --cni-plugin");
}

/// What is wrong in how `workload`'s container `name` is wired to `ferry <role>`: every
/// variable it sets is one the role reads (a flag's `[env: NAME=]` or, for the node metadata
/// read without a flag, named in its help); absolute paths it is given are inside volume
/// mounts; its ports are those of the addresses it is given; its HTTP probes reach one of
/// them, at a path the role serves.
fn wiring_problems(w: &Value, name: &str, role: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let c = container(w, name);
    assert_eq!(c["args"][0], role, "{name} runs `ferry {role}`");
    let h = help(role);
    for v in c["env"].as_array().unwrap() {
        let n = v["name"].as_str().unwrap();
        if !names_word(&h, n) {
            problems.push(format!("{name}: `ferry {role}` reads no {n}"));
        }
    }
    // Every absolute path given in the environment is inside a volume mount.
    for v in c["env"].as_array().unwrap() {
        if let Some(p) = v["value"].as_str().filter(|p| p.starts_with('/')) {
            volume_for(w, c, p);
        }
    }
    // Container ports are the ports of the addresses the environment gives; the readiness
    // probe is on the readiness address, at the path the binary serves.
    let addrs: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"].as_str().is_some_and(|n| n.ends_with("_ADDR") || n.ends_with("_LISTEN")))
        .map(|v| v["value"].as_str().unwrap())
        .collect();
    // Loopback addresses are not the pod's ports to declare (the agent's metrics).
    let addr_ports: BTreeSet<u64> = addrs.iter().filter(|a| !a.starts_with("127.")).map(|a| port_of(a)).collect();
    let declared: BTreeSet<u64> =
        c["ports"].as_array().map(|p| p.iter().map(|p| p["containerPort"].as_u64().unwrap()).collect()).unwrap_or_default();
    if addr_ports != declared {
        problems.push(format!("{name}: container ports {declared:?}, but the addresses it is given listen on {addr_ports:?}"));
    }
    // HTTP probes reach an address the container is given, at a path its help names.
    for probe in ["readinessProbe", "livenessProbe"] {
        let Some(get) = c[probe]["httpGet"].as_object() else { continue };
        let port = get["port"].as_u64().unwrap();
        let host = get.get("host").and_then(Value::as_str);
        let served = addrs.iter().any(|a| port_of(a) == port && (a.starts_with("127.") == (host == Some("127.0.0.1"))));
        if !served {
            problems.push(format!("{name}: the {probe} on {host:?}:{port} reaches none of its addresses {addrs:?}"));
        }
        let path = get["path"].as_str().unwrap();
        if !h.contains(path) {
            problems.push(format!("{name}: `ferry {role}` serves no {path}"));
        }
    }
    problems
}

#[test]
fn the_manifests_give_the_binaries_the_names_ports_and_paths_they_read() {
    let objs = rendered();
    let ctl = find(&objs, "Deployment", "ferry-controller");
    let proxy = find(&objs, "DaemonSet", "ferry-proxy");
    let agent = find(&objs, "DaemonSet", "ferry-node-agent");
    let mut problems = Vec::new();

    for (w, name, role) in [(ctl, "controller", "controller"), (proxy, "proxy", "proxy"), (agent, "agent", "agent")] {
        problems.extend(wiring_problems(w, name, role));
    }

    // ZDS: one socket path for the proxy and the agent, their defaults, on one host directory.
    let (pc, ac) = (container(proxy, "proxy"), container(agent, "agent"));
    let zds = env(pc, "INPOD_UDS");
    assert_eq!(zds, "/var/run/ztunnel/ztunnel.sock", "Istio's ZDS socket path (protocols.md)");
    assert_eq!(env(ac, "FERRY_ZDS_SOCKET"), zds);
    assert_eq!(default_of(&help("proxy"), "INPOD_UDS"), zds);
    assert_eq!(default_of(&help("agent"), "FERRY_ZDS_SOCKET"), zds);
    let (pv, _) = volume_for(proxy, pc, zds);
    let (av, _) = volume_for(agent, ac, zds);
    assert_eq!(pv["hostPath"]["path"], av["hostPath"]["path"], "the proxy and the agent must share the ZDS directory");
    assert_eq!(pv["hostPath"]["path"], "/var/run/ztunnel");

    // The CNI socket: the agent's, the one the installer writes into the chain, on the host
    // path the runtime-run plugin reaches (mounted at the same path).
    let cni = env(ac, "FERRY_CNI_SOCKET");
    assert_eq!(default_of(&help("agent"), "FERRY_CNI_SOCKET"), cni);
    // The host's CNI directories the agent installs into are the kubelet's defaults.
    assert_eq!(env(ac, "FERRY_INSTALL_CNI"), "true");
    for (var, host) in [("CNI_BIN_DIR", "/opt/cni/bin"), ("CNI_NET_DIR", "/etc/cni/net.d")] {
        let (v, rest) = volume_for(agent, ac, &format!("{}/x", env(ac, var)));
        assert_eq!((v["hostPath"]["path"].as_str().unwrap(), rest.as_str()), (host, "x"), "{var}");
    }
    let (cv, rest) = volume_for(agent, ac, cni);
    assert_eq!(format!("{}/{rest}", cv["hostPath"]["path"].as_str().unwrap()), cni);
    assert_eq!(env(ac, "PACKET_MARK"), ferry_core::ports::DEFAULT_PACKET_MARK.to_string());

    // The proxy's token: a projected service account token for the CA's audience, exactly at
    // AUTH_TOKEN; no other API credential.
    let (tv, file) = volume_for(proxy, pc, env(pc, "AUTH_TOKEN"));
    let sat = &tv["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!((sat["audience"].as_str(), sat["path"].as_str()), (Some(TOKEN_AUDIENCE), Some(file.as_str())));
    assert_eq!(proxy["spec"]["template"]["spec"]["automountServiceAccountToken"], false);
    // The mesh root, from the ConfigMap istiod publishes, for both clients.
    for var in ["XDS_ROOT_CA", "CA_ROOT_CA"] {
        let (rv, key) = volume_for(proxy, pc, env(pc, var));
        assert_eq!((rv["configMap"]["name"].as_str(), key.as_str()), (Some("istio-ca-root-cert"), "root-cert.pem"), "{var}");
    }

    // The proxy dials the controller's Service on its xDS port, under a name on its certificate.
    let svc = find(&objs, "Service", "ferry-controller");
    let host = format!("{}.{}.svc", svc["metadata"]["name"].as_str().unwrap(), svc["metadata"]["namespace"].as_str().unwrap());
    let cc = container(ctl, "controller");
    let xds_port = port_of(env(cc, "FERRY_XDS_LISTEN"));
    let svc_port = svc["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == "grpc-xds").expect("grpc-xds port");
    assert_eq!(svc_port["port"].as_u64(), Some(xds_port));
    for var in ["XDS_ADDRESS", "CA_ADDRESS"] {
        assert_eq!(env(pc, var), format!("https://{host}:{xds_port}"), "{var}");
    }
    assert!(env(cc, "FERRY_SERVING_NAMES").split(',').any(|n| n == host), "the serving certificate does not name {host}");
    // The controller trusts exactly the proxy DaemonSet's account as node proxies.
    let sa = format!("istio-system/{}", proxy["spec"]["template"]["spec"]["serviceAccountName"].as_str().unwrap());
    for var in ["FERRY_PROXY_ACCOUNTS", "CA_TRUSTED_NODE_ACCOUNTS"] {
        assert_eq!(env(cc, var), sa, "{var}");
    }
    let (ca, _) = volume_for(ctl, cc, env(cc, "FERRY_CA_DIR"));
    assert_eq!(ca["secret"]["secretName"], "cacerts", "Istio's plugged-in CA Secret");
    // The proxy's service account is bound to no role: it never calls the API.
    for o in objs.iter().filter(|o| o["kind"].as_str().is_some_and(|k| k.ends_with("RoleBinding"))) {
        for s in o["subjects"].as_array().unwrap() {
            assert_ne!(s["name"], "ztunnel", "{} binds the proxy's account", o["metadata"]["name"]);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The objects `ferry controller` applies for a waypoint Gateway (with its flags' defaults and
/// the controller Deployment's image) validate against the Kubernetes schema, and the
/// Deployment is wired to `ferry waypoint` as the DaemonSets are to their roles: the proxy
/// DaemonSet's controller, root and token settings, a token for the CA's audience, ports of
/// the addresses it is given, the grace period its drain derives from.
#[test]
fn the_waypoints_the_controller_deploys_validate_and_are_wired_to_ferry_waypoint() {
    use ferry_core::k8s::waypoint_deploy::{plan, DeploySettings};
    let objs = rendered();
    let ctl = find(&objs, "Deployment", "ferry-controller");
    let pc = container(find(&objs, "DaemonSet", "ferry-proxy"), "proxy");
    let h = help("controller");
    let settings = DeploySettings {
        image: container(ctl, "controller")["image"].as_str().unwrap().into(),
        image_pull_policy: default_of(&h, "FERRY_WAYPOINT_IMAGE_PULL_POLICY").into(),
        xds_address: default_of(&h, "FERRY_WAYPOINT_CONTROLLER_ADDRESS").into(),
        ca_address: default_of(&h, "FERRY_WAYPOINT_CONTROLLER_ADDRESS").into(),
        cluster_domain: default_of(&h, "CLUSTER_DOMAIN").into(),
        trust_domain: default_of(&h, "TRUST_DOMAIN").into(),
        cpu_request: default_of(&h, "FERRY_WAYPOINT_CPU_REQUEST").into(),
        memory_request: default_of(&h, "FERRY_WAYPOINT_MEMORY_REQUEST").into(),
        memory_limit: default_of(&h, "FERRY_WAYPOINT_MEMORY_LIMIT").into(),
    };
    let gateway = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop, uid: 0c9e8d7f-aaaa-4bbb-8ccc-123456789abc}\nspec: {gatewayClassName: istio-waypoint, infrastructure: {labels: {team: a}, annotations: {note: b}}, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n";
    let state = ferry_core::k8s::manifests::parse_documents(gateway, "gateway").unwrap();
    let p = plan(&state, &settings);
    assert_eq!((p.objects.len(), p.skipped.len()), (3, 0), "{p:?}");

    let tmp = TempDir::new("waypoint-objects");
    let file = tmp.path().join("waypoint.yaml");
    let docs: Vec<String> = p.objects.iter().map(|d| serde_json::to_string_pretty(&d.object).unwrap()).collect();
    std::fs::write(&file, docs.join("\n---\n")).unwrap();
    let out = run(&validator(), &["--strict", "-k", KUBERNETES_VERSION, file.to_str().unwrap()], &root());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("WARN"), "the waypoint's objects do not validate:\n{text}");
    assert_eq!(text.lines().filter(|l| l.contains(" passed for resource ")).count(), 3, "{text}");

    let d = &p.objects.iter().find(|d| d.kind.as_str() == "Deployment").unwrap().object;
    let problems = wiring_problems(d, "waypoint", "waypoint");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let wc = container(d, "waypoint");
    for var in ["XDS_ADDRESS", "CA_ADDRESS", "XDS_ROOT_CA", "CA_ROOT_CA", "AUTH_TOKEN"] {
        assert_eq!(env(wc, var), env(pc, var), "{var}: as the proxy DaemonSet gives `ferry proxy`");
    }
    let (tv, file) = volume_for(d, wc, env(wc, "AUTH_TOKEN"));
    let sat = &tv["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!((sat["audience"].as_str(), sat["path"].as_str()), (Some(TOKEN_AUDIENCE), Some(file.as_str())));
    let (rv, key) = volume_for(d, wc, env(wc, "XDS_ROOT_CA"));
    assert_eq!((rv["configMap"]["name"].as_str(), key.as_str()), (Some("istio-ca-root-cert"), "root-cert.pem"));
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(spec["terminationGracePeriodSeconds"].to_string(), env(wc, "TERMINATION_GRACE_PERIOD_SECONDS"));
    // The waypoint's pods are never captured, and run locked down like the controller.
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["istio.io/dataplane-mode"], "none");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let sc = &wc["securityContext"];
    assert_eq!(
        (sc["capabilities"].clone(), sc["allowPrivilegeEscalation"].clone()),
        (serde_json::json!({"drop": ["ALL"]}), Value::Bool(false))
    );
}

/// `ferry agent --install-cni` on a scratch "host": chains ferry-cni once into the primary
/// configuration (the CNI socket it serves), re-chains it when the network plugin rewrites
/// its file, is ready only once chained; `ferry agent --uninstall` (in a throwaway network
/// namespace, for its nftables step) removes the entry and the binary. Root, for that namespace.
#[test]
fn the_agent_installs_ferry_cni_and_uninstall_removes_it() {
    common::netns::require_root();
    let tmp = TempDir::new("install-cni");
    let (bin, net, state) = (tmp.path().join("bin"), tmp.path().join("net"), tmp.path().join("state"));
    for d in [&bin, &net, &state] {
        std::fs::create_dir_all(d).unwrap();
    }
    let plugin = tmp.path().join("ferry-cni");
    std::fs::write(&plugin, "#!/bin/sh\n").unwrap();
    let original = r#"{"cniVersion":"0.3.1","name":"kindnet","plugins":[{"type":"ptp"},{"type":"portmap"}]}"#;
    let conf = net.join("10-kindnet.conflist");
    std::fs::write(&conf, original).unwrap();
    std::fs::write(net.join("20-later.conflist"), original).unwrap();
    let stats = { std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap() };
    let socket = tmp.path().join("cni.sock");
    let agent = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
        c.arg("agent").arg("--cni-bin-dir").arg(&bin).arg("--cni-net-dir").arg(&net).arg("--cni-plugin").arg(&plugin);
        c.arg("--cni-socket").arg(&socket).args(extra).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        c
    };
    let mut running = agent(&["--install-cni=true", "--host-probe-snat=false", "--node-name", "n1", "--metrics-addr", &stats.to_string()])
        .arg("--cluster-state")
        .arg(&state)
        .arg("--state-dir")
        .arg(tmp.path().join("agent"))
        .arg("--zds-socket")
        .arg(tmp.path().join("zds.sock"))
        .stderr(std::fs::File::create(tmp.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let types = |p: &Path| -> Vec<String> {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default();
        v["plugins"].as_array().map(|a| a.iter().map(|p| p["type"].as_str().unwrap_or("").to_string()).collect()).unwrap_or_default()
    };
    let readyz = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(stats).ok()?;
        write!(s, "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out.starts_with("HTTP/1.1 200"))
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !f() {
            assert!(
                std::time::Instant::now() < end,
                "timed out: {what}\n{}",
                std::fs::read_to_string(tmp.path().join("agent.log")).unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let chained = [String::from("ptp"), "portmap".into(), "ferry-cni".into()];
    wait("ferry-cni chained", &|| types(&conf) == chained);
    wait("the agent ready", &|| readyz() == Some(true));
    assert_eq!(types(&net.join("20-later.conflist")), ["ptp", "portmap"], "only the configuration the runtime uses");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&conf).unwrap()).unwrap();
    assert_eq!(v["plugins"][2]["agent_socket"], socket.display().to_string());
    assert!(v["plugins"][2].get("cluster_state").is_none(), "without the agent, ferry-cni must fail closed");
    assert_eq!(std::fs::read(bin.join("ferry-cni")).unwrap(), b"#!/bin/sh\n");
    // The network plugin rewrites its configuration: the agent chains ferry-cni again.
    std::fs::write(&conf, original).unwrap();
    wait("ferry-cni chained again", &|| types(&conf) == chained);
    let _ = running.kill();
    let _ = running.wait();

    let out = Command::new("unshare")
        .args(["--net", "--", env!("CARGO_BIN_EXE_ferry"), "agent", "--uninstall"])
        .arg("--cni-bin-dir")
        .arg(&bin)
        .arg("--cni-net-dir")
        .arg(&net)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(types(&conf), ["ptp", "portmap"]);
    assert!(!bin.join("ferry-cni").exists());
    // A single-plugin .conf sorted first cannot be chained into: reported, not rewritten.
    std::fs::write(net.join("05-single.conf"), r#"{"cniVersion":"0.3.1","name":"x","type":"bridge"}"#).unwrap();
    let mut again = agent(&["--install-cni=true", "--host-probe-snat=false", "--node-name", "n1", "--metrics-addr", "127.0.0.1:0"])
        .arg("--cluster-state")
        .arg(&state)
        .arg("--state-dir")
        .arg(tmp.path().join("agent"))
        .arg("--zds-socket")
        .arg(tmp.path().join("zds2.sock"))
        .stderr(std::fs::File::create(tmp.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    wait("the refusal logged", &|| {
        std::fs::read_to_string(tmp.path().join("agent.log")).unwrap().contains("05-single.conf is a single-plugin configuration")
    });
    let _ = again.kill();
    let _ = again.wait();
    assert_eq!(types(&conf), ["ptp", "portmap"]);
}

/// The kind runner installs what CI validated: manifests/ with `kubectl apply -k`, on a node
/// image of the Kubernetes minor version the schema check uses.
#[test]
fn the_kind_runner_installs_the_validated_manifests() {
    let run_sh = std::fs::read_to_string(root().join("e2e/kind/run.sh")).unwrap();
    assert!(run_sh.contains("kubectl apply -k \"$repo/manifests\""), "run.sh must install from manifests/");
    let image = run_sh.lines().find_map(|l| l.trim().strip_prefix("kind_node_image=")).expect("run.sh pins kind_node_image=");
    let tag = image.trim_matches(['"', '\'']).rsplit(':').next().unwrap().trim_start_matches('v');
    let minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    assert_eq!(minor(tag), minor(KUBERNETES_VERSION), "kind's node image and the validated schema differ");
}

/// Safe defaults that a later edit must not loosen silently: the capabilities each container
/// adds (none privileged, every one dropping ALL), the controller non-root, and RBAC without
/// wildcards or access to Secrets.
#[test]
fn no_role_gets_more_than_it_needs() {
    let objs = rendered();
    #[rustfmt::skip]
    let want: &[(&str, &str, &str, &[&str])] = &[
        ("Deployment", "ferry-controller", "controller", &[]),
        ("DaemonSet", "ferry-proxy", "proxy", &["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]),
        ("DaemonSet", "ferry-node-agent", "agent", &["NET_ADMIN", "SYS_ADMIN"]),
    ];
    for (kind, name, c, caps) in want {
        let sc = &container(find(&objs, kind, name), c)["securityContext"];
        assert_ne!(sc["privileged"], true, "{name}/{c} is privileged");
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}/{c}");
        let added: Vec<&str> =
            sc["capabilities"]["add"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        assert_eq!(&added, caps, "{name}/{c} capabilities");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}/{c}");
    }
    let ctl = &find(&objs, "Deployment", "ferry-controller")["spec"]["template"]["spec"];
    assert_eq!(ctl["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        container(find(&objs, "Deployment", "ferry-controller"), "controller")["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    for o in objs.iter().filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role") {
        for rule in o["rules"].as_array().unwrap() {
            let words = |k: &str| rule[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>();
            let name = o["metadata"]["name"].as_str().unwrap();
            for k in ["apiGroups", "resources", "verbs"] {
                assert!(!words(k).contains(&"*".to_string()), "{name}: a wildcard in {k}");
            }
            assert!(!words("resources").contains(&"secrets".to_string()), "{name} may read Secrets");
            assert!(
                !words("verbs").iter().any(|v| v == "delete" || v == "escalate" || v == "bind" || v == "impersonate"),
                "{name}: {rule}"
            );
        }
    }
}

/// The controller's writes are exactly what leader election and the root-certificate
/// publication use: ConfigMaps get/create/update (get and update only `istio-ca-root-cert`),
/// patch of `gateways/status` only (the waypoints' conditions), create and patch of
/// ServiceAccounts, Services and Deployments (the waypoints' objects, by server-side apply),
/// Leases get/create/update (get and update only `ferry-controller`) in its namespace only.
#[test]
fn the_controller_may_write_only_its_lease_and_the_root_configmaps() {
    let objs = rendered();
    let rules = |kind: &str, name: &str| -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
        let words = |v: &Value| v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default();
        let o = find(&objs, kind, name);
        o["rules"].as_array().unwrap().iter().map(|r| (words(&r["resources"]), words(&r["resourceNames"]), words(&r["verbs"]))).collect()
    };
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cluster = rules("ClusterRole", "ferry-controller");
    let configmaps: Vec<_> = cluster.iter().filter(|r| r.0 == ["configmaps"]).cloned().collect();
    assert_eq!(
        configmaps,
        [
            (owned(&["configmaps"]), vec![], owned(&["create"])),
            (owned(&["configmaps"]), owned(&["istio-ca-root-cert"]), owned(&["get", "update"]))
        ]
    );
    assert!(!cluster.iter().any(|r| r.0.contains(&"leases".to_string())), "no cluster-wide Lease access");
    // Gateways: read, and only their status patched (the waypoints' conditions).
    let gateway_writes: Vec<_> = cluster
        .iter()
        .filter(|r| r.0.iter().any(|res| res.starts_with("gateways")) && r.2.iter().any(|v| v != "get" && v != "list" && v != "watch"))
        .cloned()
        .collect();
    assert_eq!(gateway_writes, [(owned(&["gateways/status"]), vec![], owned(&["patch"]))]);
    // The waypoints' objects: created and patched by server-side apply, nothing more.
    let deployed = |r: &&(Vec<String>, Vec<String>, Vec<String>)| {
        r.0.iter().any(|res| ["serviceaccounts", "services", "deployments"].contains(&res.as_str())) && r.2 != ["get", "list", "watch"]
    };
    let deploy_writes: Vec<_> = cluster.iter().filter(deployed).cloned().collect();
    assert_eq!(
        deploy_writes,
        [
            (owned(&["serviceaccounts", "services"]), vec![], owned(&["create", "patch"])),
            (owned(&["deployments"]), vec![], owned(&["create", "patch"]))
        ]
    );
    let leader = rules("Role", "ferry-controller-leader");
    assert_eq!(
        leader,
        [(owned(&["leases"]), vec![], owned(&["create"])), (owned(&["leases"]), owned(&["ferry-controller"]), owned(&["get", "update"]))]
    );
    assert_eq!(find(&objs, "Role", "ferry-controller-leader")["metadata"]["namespace"], "istio-system");
}

/// The controller may list and watch every kind its API source watches (`Kind::ALL`), in the
/// kind's API group: a kind it cannot list would keep it unready forever.
#[test]
fn the_controller_may_list_and_watch_every_kind_it_watches() {
    let objs = rendered();
    let role = find(&objs, "ClusterRole", "ferry-controller");
    let mut grants: Vec<(String, String, String)> = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let words = |k: &str| rule[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>();
        for g in words("apiGroups") {
            for r in words("resources") {
                for v in words("verbs") {
                    grants.push((g.clone(), r.clone(), v));
                }
            }
        }
    }
    for kind in ferry_core::k8s::index::Kind::ALL {
        let group = kind.api_version().rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let resource = match kind.name() {
            "AuthorizationPolicy" => "authorizationpolicies".to_string(),
            "PeerAuthentication" => "peerauthentications".to_string(),
            other => format!("{}s", other.to_lowercase()),
        };
        for verb in ["list", "watch"] {
            let grant = (group.to_string(), resource.clone(), verb.to_string());
            assert!(grants.contains(&grant), "the controller watches {} but may not {verb} {group}/{resource}", kind.name());
        }
    }
}

/// The agent's grants are exactly what it calls (src/agent: `Scope::node_agent`'s list and
/// watch of Pods and Namespaces, the annotation writer's `pods/status` merge patch), and its
/// DaemonSet watches the API (no stand-in cluster state).
#[test]
fn the_agent_is_granted_what_it_uses_and_reads_the_api() {
    let objs = rendered();
    let role = find(&objs, "ClusterRole", "ferry-node-agent");
    let mut grants: Vec<(String, String)> = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        for r in rule["resources"].as_array().unwrap() {
            for v in rule["verbs"].as_array().unwrap() {
                grants.push((r.as_str().unwrap().to_string(), v.as_str().unwrap().to_string()));
            }
        }
    }
    grants.sort();
    let want: Vec<(String, String)> = [
        ("namespaces", "get"),
        ("namespaces", "list"),
        ("namespaces", "watch"),
        ("pods", "get"),
        ("pods", "list"),
        ("pods", "watch"),
        ("pods/status", "patch"),
    ]
    .iter()
    .map(|(r, v)| (r.to_string(), v.to_string()))
    .collect();
    assert_eq!(grants, want);
    let agent = find(&objs, "DaemonSet", "ferry-node-agent");
    let envs = container(agent, "agent")["env"].as_array().unwrap();
    assert!(envs.iter().all(|e| e["name"] != "FERRY_CLUSTER_STATE"), "the agent must watch the API, not a stand-in file");
    assert!(objs.iter().all(|o| o["metadata"]["name"] != "ferry-cluster-state"), "no stand-in state is installed");
}
