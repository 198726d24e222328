//! Gradient exchange between a job's GPUs, peer to peer and without NCCL ([`allreduce`]).

pub mod allreduce;
