//! `http://` targets through an `HTTP_PROXY`: the request goes to the proxy in
//! absolute form, with the proxy's credentials and nobody else's; `NO_PROXY`
//! bypasses it. The proxy is a small loopback server that answers itself.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasm_fetch_transport::{Proxy, ProxyConfig, Request, Transport};

/// A proxy that records request heads and answers `via-proxy`.
async fn recording_proxy() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut byte = [0u8; 1];
                while !buf.ends_with(b"\r\n\r\n") {
                    if c.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    buf.push(byte[0]);
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nvia-proxy")
                    .await;
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn http_targets_go_to_the_proxy_in_absolute_form_unless_bypassed() {
    let (proxy, heads) = recording_proxy().await;
    let direct = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = direct.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = direct.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let _ = c
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\ndirect",
                    )
                    .await;
            });
        }
    });
    let config = ProxyConfig::none().with_http(Some(
        Proxy::parse(&format!("http://pu:pp@{proxy}")).unwrap(),
    ));
    let t = Transport::builder()
        .native_roots(false)
        .proxy(config.clone())
        .build()
        .unwrap();
    let url: url::Url = format!("http://user:pw@{target}/m.wasm").parse().unwrap();
    let body = t
        .send(Request::get(url.clone()))
        .await
        .unwrap()
        .bytes_limited(1024)
        .await
        .unwrap();
    assert_eq!(&body[..], b"via-proxy");
    let head = heads.lock().unwrap()[0].clone();
    assert!(
        head.starts_with(&format!("GET http://{target}/m.wasm HTTP/1.1\r\n")),
        "{head}"
    );
    // base64("pu:pp"); the URL's own user-info is never part of the target.
    assert!(
        head.contains("proxy-authorization: Basic cHU6cHA="),
        "{head}"
    );
    assert!(!head.contains("user:pw"), "{head}");

    let bypass = Transport::builder()
        .native_roots(false)
        .proxy(config.with_no_proxy("127.0.0.1"))
        .build()
        .unwrap();
    let body = bypass
        .send(Request::get(url))
        .await
        .unwrap()
        .bytes_limited(1024)
        .await
        .unwrap();
    assert_eq!(&body[..], b"direct");
    assert_eq!(heads.lock().unwrap().len(), 1, "NO_PROXY did not bypass");
}
