//! Profiling aid for the open path (not a benchmark: the runner's `store`
//! section measures). `open_profile DIR N ROUNDS` writes `N` modules and
//! their journal into DIR if it has no journal yet, then opens a cache and
//! hits one module `ROUNDS` times, printing each time.

use std::path::Path;
use std::time::Instant;

use wasm_cache::{Cache, GetRequest};
use wasm_cache_core::{IndexEvent, ModuleKey, ModuleUrl, Sha256Digest, Timestamp};
use wasm_cache_testkit::modules::sha256_hex;
use wasm_store_fs::Journal;

fn module(i: usize) -> (Vec<u8>, String) {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend_from_slice(&(i as u64).to_le_bytes());
    (m, format!("http://127.0.0.1:9/store/m{i}.wasm"))
}

fn populate(dir: &Path, n: usize) {
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    let mut events = Vec::with_capacity(2 * n);
    for i in 0..n {
        let (bytes, url) = module(i);
        let sha = Sha256Digest::parse(&sha256_hex(&bytes)).unwrap();
        std::fs::write(dir.join(sha.file_name()), &bytes).unwrap();
        let name = ModuleUrl::parse(&url).unwrap().module_name();
        events.push(IndexEvent::Insert {
            key: ModuleKey::new(name, sha),
            content: sha,
            size: bytes.len() as u64,
            url: Some(url.clone()),
            at: now,
        });
        events.push(IndexEvent::Record {
            url,
            checksum: sha,
            resource_name: String::new(),
            resource_version: String::new(),
        });
    }
    Journal::<IndexEvent>::open(dir.join("index.journal"))
        .unwrap()
        .compact(&events)
        .unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = Path::new(&args[0]);
    let n: usize = args[1].parse().unwrap();
    let rounds: usize = args[2].parse().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    if !dir.join("index.journal").exists() {
        populate(dir, n);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..rounds {
        let (bytes, url) = module((round * 104_729) % n);
        let req = GetRequest::new(url).checksum(sha256_hex(&bytes));
        let start = Instant::now();
        let cache = rt
            .block_on(async {
                let cache = Cache::builder(dir).background_purge(false).build().await?;
                cache.get(&req).await?;
                Ok::<_, wasm_cache::Error>(cache)
            })
            .unwrap();
        let took = start.elapsed();
        rt.block_on(cache.shutdown()).unwrap();
        drop(cache);
        eprintln!("open to first hit: {:.1} ms", took.as_secs_f64() * 1e3);
    }
}
