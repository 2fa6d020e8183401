//! Load generator (placeholder until it lands).

fn main() {}
