//! Host agent.
fn main() {}
