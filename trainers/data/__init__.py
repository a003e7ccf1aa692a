"""Data: the synthetic image-caption world, real-data loaders, downstream task sets, tokenizers."""

from trainers.data.pretrain import build_pretrain_dataset
from trainers.data.tasks import (
    VE_LABELS,
    NLVRSplit,
    NLVRTask,
    ProbeTask,
    RetrievalTask,
    TaskSets,
    VESplit,
    VETask,
    VQASplit,
    VQATask,
    ZeroShotTask,
)
from trainers.data.tokenize import build_wordpiece_tokenizer, clip_tokenizer


def build_task_sets(data) -> TaskSets:
    """Every downstream task set that `data` (a DataConfig) provides; see trainers.data.tasks."""
    if data.dataset == "synthetic":
        from trainers.data.synthetic_tasks import build_synthetic_task_sets

        return build_synthetic_task_sets(data)
    from trainers.data.real_tasks import build_real_task_sets

    return build_real_task_sets(data)


__all__ = [
    "VE_LABELS", "NLVRSplit", "NLVRTask", "ProbeTask", "RetrievalTask", "TaskSets", "VESplit", "VETask",
    "VQASplit", "VQATask", "ZeroShotTask", "build_pretrain_dataset", "build_task_sets",
    "build_wordpiece_tokenizer", "clip_tokenizer",
]
