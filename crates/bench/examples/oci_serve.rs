//! Profiling aid for cold OCI pulls (not a benchmark: the runner's `oci`
//! section measures). `oci_serve [SIZE] [image]` starts a loopback
//! `docker-registry`, pushes a module of SIZE bytes (64 MiB) as a Wasm
//! artifact (raw layer), or with `image` as an OCI image whose layer is
//! tar+gzip at level 6 (as the runner pushes it), prints its `oci://` URL,
//! the layer blob's URL and the insecure host, then serves until killed, so
//! that `perf` can be pointed at `wasm-cache fetch` and at `curl` of the
//! same blob.

use wasm_cache_testkit::images;
use wasm_cache_testkit::modules::{gzip_level, sample_module, tar};
use wasm_cache_testkit::registry::{Registry, RegistryKind};

fn main() {
    let size: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(64 << 20);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let reg = Registry::start(RegistryKind::Plain);
    let module = sample_module(size, 64);
    let image = std::env::args().nth(2).as_deref() == Some("image");
    let pushed = rt.block_on(async {
        if image {
            let layer = gzip_level(&tar(&[("plugin.wasm", &module)]), 6);
            images::push_oci_image_with_layer(&reg, "prof/artifact", "v1", &layer).await
        } else {
            images::push_cncf_artifact(&reg, "prof/artifact", "v1", &module).await
        }
    });
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
