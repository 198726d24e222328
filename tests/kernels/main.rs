//! The kernels' tests, one module per op (`tests/kernels/<op>.rs`), in one test binary.

mod conv2d;
