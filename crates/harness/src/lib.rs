//! The test harness, outside the product: the simulated cluster (routers, nodes and pods as
//! network namespaces, real CNI plugins, real ferry processes), `ferry demo`'s scenarios and
//! the benchmark suite. It drives ferry only as a user does, through its binaries, files and
//! ports; it links ferry's pure cores (to write manifests and read state) but not its data
//! plane.
#![forbid(unsafe_code)]

pub mod bench;
pub mod demo;
mod demo_waypoint;
pub mod sim;
