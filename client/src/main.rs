//! chrysalis CLI.
fn main() {}
