//! The simulation harness: real `kv-net` nodes on madsim, a simulated disk,
//! a nemesis, a workload and the checkers.
