"""Dynamic batching: policy, queue, runner, and the batcher that joins them."""

from app.batching.batcher import DynamicBatcher
from app.batching.policy import BatchPolicy, BatchRecord

__all__ = ["BatchPolicy", "BatchRecord", "DynamicBatcher"]
