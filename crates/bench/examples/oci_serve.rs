//! Profiling aid for cold OCI pulls (not a benchmark: the runner's `oci`
//! section measures). Starts a loopback `docker-registry`, pushes a 64 MiB
//! Wasm artifact (raw layer) and prints its `oci://` URL, the blob's URL
//! and the insecure host, then serves until killed, so that `perf` can be
//! pointed at `wasm-cache fetch` and at `curl` of the same blob.

use wasm_cache_testkit::images;
use wasm_cache_testkit::modules::sample_module;
use wasm_cache_testkit::registry::{Registry, RegistryKind};

fn main() {
    let size: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(64 << 20);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let reg = Registry::start(RegistryKind::Plain);
    let module = sample_module(size, 64);
    let pushed = rt.block_on(images::push_cncf_artifact(
        &reg,
        "prof/artifact",
        "v1",
        &module,
    ));
    println!("{}", pushed.url);
    println!(
        "http://{}/v2/prof/artifact/blobs/{}",
        reg.host(),
        pushed.layer_digest
    );
    println!("{}", reg.host());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
