//! End-to-end reliability and security suite of wasm-cache; the tests live in
//! `tests/tests/`. This library is empty.
