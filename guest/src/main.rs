//! Guest runtime.
fn main() {}
