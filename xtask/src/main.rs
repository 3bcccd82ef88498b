//! Project automation. Under construction.
fn main() {}
