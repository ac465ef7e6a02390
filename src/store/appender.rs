//! The single appender task: group-commits batches from a bounded queue.
