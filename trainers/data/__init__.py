"""Data: the synthetic image-caption world, real-data loaders, downstream task sets, tokenizers."""

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

    Real data: the zero-shot sets of data.zeroshot and linear probes on them; the ALBEF JSON
    loaders (load_albef_*_json) build the retrieval / VQA / NLVR / VE sets from annotation files.
    """
    if data.dataset == "synthetic":
        return build_synthetic_task_sets(data)
    return build_real_task_sets(data)


__all__ = [
    "VE_LABELS", "NLVRSplit", "NLVRTask", "ProbeTask", "RetrievalTask", "TaskSets", "VESplit", "VETask",
    "VQASplit", "VQATask", "ZeroShotTask", "build_pretrain_dataset", "build_task_sets",
    "build_wordpiece_tokenizer", "clip_tokenizer", "load_albef_nlvr_json", "load_albef_retrieval_json",
    "load_albef_ve_json", "load_albef_vqa_json", "load_zeroshot_entry",
]
