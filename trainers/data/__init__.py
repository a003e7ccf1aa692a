"""Data: the synthetic image-caption world, real-data loaders, downstream task sets, tokenizers."""

from functools import lru_cache

from trainers.config import DataConfig
from trainers.data.pretrain import build_pretrain_dataset
from trainers.data.real_tasks import (
    build_real_task_sets,
    load_albef_nlvr_json,
    load_albef_retrieval_json,
    load_albef_ve_json,
    load_albef_vqa_json,
    load_zeroshot_entry,
)
from trainers.data.synthetic_tasks import build_synthetic_task_sets
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


def build_task_sets(data: DataConfig) -> TaskSets:
    """Every downstream task set that `data` provides (see trainers.data.tasks).

    Real data: the zero-shot sets of data.zeroshot and linear probes on them, and the ALBEF JSON
    annotation files of data.annotations (retrieval / VQA / NLVR / VE).
    Built once per process and configuration, since training evaluates after every epoch;
    callers must not modify the returned sets.
    """
    return _task_sets(data.model_dump_json())


@lru_cache(maxsize=2)
def _task_sets(data_json: str) -> TaskSets:
    data = DataConfig.model_validate_json(data_json)
    if data.dataset == "synthetic":
        return build_synthetic_task_sets(data)
    return build_real_task_sets(data)


__all__ = [
    "VE_LABELS", "NLVRSplit", "NLVRTask", "ProbeTask", "RetrievalTask", "TaskSets", "VESplit", "VETask",
    "VQASplit", "VQATask", "ZeroShotTask", "build_pretrain_dataset", "build_task_sets",
    "build_wordpiece_tokenizer", "clip_tokenizer", "load_albef_nlvr_json", "load_albef_retrieval_json",
    "load_albef_ve_json", "load_albef_vqa_json", "load_zeroshot_entry",
]
