//! Kubernetes manifests (YAML streams and JSON), translated to the mesh model as every role does.
#![no_main]
use ferry_core::k8s::manifests::{parse_documents, parse_json_document};
use ferry_core::k8s::translate::{to_state, TranslateOptions};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let opts = TranslateOptions::default();
    for parsed in [parse_documents(text, "fuzz"), parse_json_document(text, "fuzz")] {
        if let Ok(cluster) = parsed {
            let _ = ferry_core::state::Snapshot::build(to_state(&cluster, &opts), 1);
        }
    }
});
