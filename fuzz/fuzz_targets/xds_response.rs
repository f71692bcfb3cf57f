//! A delta xDS response from the control plane (encoded DeltaDiscoveryResponse), applied to the
//! proxy's sans-IO client state: what decodes is applied, the rest NACKed.
#![no_main]
use ferry_core::proto::xds::DeltaDiscoveryResponse;
use ferry_core::xds::ClientState;
use prost::Message;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(resp) = DeltaDiscoveryResponse::decode(data) else { return };
    let mut state = ClientState::default();
    let resources = resp.resources.into_iter().map(|r| (r.name, r.version, r.resource.map(|a| a.value).unwrap_or_default())).collect();
    let applied = state.apply(&resp.type_url, resources, &resp.removed_resources);
    let _ = applied.nack();
    let _ = ferry_core::state::Snapshot::build(state.state(), 1);
});
