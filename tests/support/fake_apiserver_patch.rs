//! PATCH on the fake API server: JSON merge patches of pods and of Gateways' status, and
//! server-side apply of the kinds a controller creates. Each one changes the stored object
//! like any other write (a new resourceVersion and a watch event) and is recorded.

use super::*;

/// The content type of a server-side apply PATCH.
pub(super) const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// Kinds that take a server-side apply PATCH by name in a namespace: kind, group-version
/// prefix, plural.
const APPLIABLE: &[(&str, &str, &str)] =
    &[("ServiceAccount", "/api/v1", "serviceaccounts"), ("Service", "/api/v1", "services"), ("Deployment", "/apis/apps/v1", "deployments")];

/// One server-side apply PATCH the server received.
#[derive(Clone, Debug)]
pub struct Applied {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// The `fieldManager` and `force` query parameters.
    pub field_manager: String,
    pub force: bool,
    /// The client's bearer token, empty without one.
    pub who: String,
    /// The object as sent.
    pub object: Value,
    /// 200 (updated), 201 (created), the 400 a malformed apply gets, or 500 when made to fail.
    pub code: u16,
}

/// One pod PATCH the server received.
#[derive(Clone, Debug)]
pub struct PodPatch {
    pub namespace: String,
    pub name: String,
    /// `status` for a patch of the status subresource, empty for the pod itself.
    pub subresource: String,
    pub content_type: String,
    pub patch: Value,
    /// The status answered (200, 404, or 500 when made to fail).
    pub status: u16,
}

/// A JSON merge patch (RFC 7386) of a pod at `/api/v1/namespaces/{ns}/pods/{name}[/status]`,
/// or of a Gateway's status (`.../gateways/{name}/status`; recorded in `gateway_patches`).
pub(super) fn patch_pod(s: &Shared, path: &str, content_type: &str, body: &[u8]) -> Response<Body> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (ns, name, subresource) = match parts[..] {
        ["api", "v1", "namespaces", ns, "pods", name] => (ns, name, ""),
        ["api", "v1", "namespaces", ns, "pods", name, "status"] => (ns, name, "status"),
        ["apis", "gateway.networking.k8s.io", "v1", "namespaces", ns, "gateways", name, "status"] => {
            return patch_gateway_status(s, ns, name, content_type, body)
        }
        _ => return json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &format!("the fake API server cannot patch {path}"))),
    };
    let patch: Value = serde_json::from_slice(body).unwrap_or_default();
    let mut answer = (StatusCode::NOT_FOUND, status(404, "NotFound", &format!("pods \"{name}\" not found")));
    let pods = path_of("Pod");
    s.change(|i| {
        let mut record = PodPatch {
            namespace: ns.into(),
            name: name.into(),
            subresource: subresource.into(),
            content_type: content_type.into(),
            patch: patch.clone(),
            status: 404,
        };
        if i.failing_patches > 0 {
            i.failing_patches -= 1;
            answer = (StatusCode::INTERNAL_SERVER_ERROR, status(500, "InternalError", "the fake API server was told to fail this patch"));
        } else if content_type != "application/merge-patch+json" {
            answer = (StatusCode::UNSUPPORTED_MEDIA_TYPE, status(415, "UnsupportedMediaType", "only merge patches are supported"));
        } else if let Some(mut object) = i.objects.get(pods).and_then(|m| m.get(&format!("{ns}/{name}"))).cloned() {
            merge(&mut object, &patch);
            let rv = i.store(object.clone());
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            answer = (StatusCode::OK, object);
        }
        record.status = answer.0.as_u16();
        i.patches.push(record);
    });
    json_response(answer.0, &answer.1)
}

/// A server-side apply of one of [`APPLIABLE`] at `{prefix}/namespaces/{ns}/{plural}/{name}`:
/// the object sent is stored as it is (one field manager owns all of it, so that is what the
/// real server would hold), created or replaced at a new resourceVersion, its uid kept. As the
/// real server: `fieldManager` is required, and the body must name the URL's kind, name and
/// namespace (else 400). The next N can be made to fail with 500.
pub(super) fn server_side_apply(s: &Shared, path: &str, query: &BTreeMap<String, String>, who: &str, body: &[u8]) -> Response<Body> {
    let parts: Vec<&str> = path.rsplitn(5, '/').collect();
    let [name, plural, ns, "namespaces", prefix] = parts[..] else {
        return json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &format!("the fake API server cannot apply {path}")));
    };
    let Some(&(kind, ..)) = APPLIABLE.iter().find(|a| a.1 == prefix && a.2 == plural) else {
        return json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &format!("the fake API server cannot apply {path}")));
    };
    let mut object: Value = serde_json::from_slice(body).unwrap_or_default();
    let field_manager = query.get("fieldManager").cloned().unwrap_or_default();
    let meta = &object["metadata"];
    let bad = if field_manager.is_empty() {
        Some("fieldManager is required for apply requests".to_string())
    } else if object["kind"] != kind || meta["name"] != name || meta["namespace"].as_str().is_some_and(|n| n != ns) {
        Some(format!("the object sent is not {kind} {ns}/{name}"))
    } else {
        None
    };
    let mut record = Applied {
        kind,
        namespace: ns.into(),
        name: name.into(),
        field_manager,
        force: query.get("force").is_some_and(|f| f == "true"),
        who: who.into(),
        object: object.clone(),
        code: 400,
    };
    let mut answer = (StatusCode::BAD_REQUEST, status(400, "BadRequest", bad.as_deref().unwrap_or_default()));
    s.change(|i| {
        if bad.is_none() && i.failing_applies > 0 {
            i.failing_applies -= 1;
            answer = (StatusCode::INTERNAL_SERVER_ERROR, status(500, "InternalError", "the fake API server was told to fail this apply"));
        } else if bad.is_none() {
            let existing = i.objects.get(path_of(kind)).and_then(|m| m.get(&format!("{ns}/{name}")));
            let uid = existing.map(|o| o["metadata"]["uid"].clone()).unwrap_or_else(|| json!(format!("uid-{}", i.rv + 1)));
            let code = if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED };
            object["metadata"]["namespace"] = json!(ns);
            object["metadata"]["uid"] = uid;
            i.store(object.clone());
            let stored = i.objects[path_of(kind)][&format!("{ns}/{name}")].clone();
            answer = (code, stored);
        }
        record.code = answer.0.as_u16();
        i.applies.push(record);
    });
    json_response(answer.0, &answer.1)
}

/// A merge patch of a Gateway's status subresource: only `status` changes, as the API server
/// does for a status subresource.
fn patch_gateway_status(s: &Shared, ns: &str, name: &str, content_type: &str, body: &[u8]) -> Response<Body> {
    let patch: Value = serde_json::from_slice(body).unwrap_or_default();
    let mut answer = (StatusCode::NOT_FOUND, status(404, "NotFound", &format!("gateways \"{name}\" not found")));
    let gateways = path_of("Gateway");
    s.change(|i| {
        i.gateway_patches.push((format!("{ns}/{name}"), patch.clone()));
        if content_type != "application/merge-patch+json" {
            answer = (StatusCode::UNSUPPORTED_MEDIA_TYPE, status(415, "UnsupportedMediaType", "only merge patches are supported"));
        } else if let Some(mut object) = i.objects.get(gateways).and_then(|m| m.get(&format!("{ns}/{name}"))).cloned() {
            merge(&mut object["status"], patch.get("status").unwrap_or(&Value::Null));
            let rv = i.store(object.clone());
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            answer = (StatusCode::OK, object);
        }
    });
    json_response(answer.0, &answer.1)
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}
