//! Load generator (see `src/bin/allot-load.rs`).
