//! Benchmarks for overlayd: criterion micro-benchmarks and the netns rig.
