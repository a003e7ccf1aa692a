"""The paper's CLIP set-up on real-format data: retrieval-only and image-only evaluation samples,
and (slow) `python -m study.run search_spaces/paper_clip.yaml` end to end on a small corpus built
from real photographs (scikit-learn's sample images) and real digits (scikit-learn's digits)."""

import numpy as np
import torch

from trainers.data.tasks import ProbeTask, RetrievalTask, TaskSets
from trainers.evaluate.suite import embedding_sample


def _encoders(dim: int = 4):
    """Deterministic encoders: an image's mean colour, a caption's length (real code paths, tiny features)."""

    def encode_images(images: torch.Tensor) -> dict[str, torch.Tensor]:
        colour = images.float().mean(dim=(2, 3))
        return {"shared": torch.nn.functional.normalize(torch.cat([colour, torch.ones(len(images), dim - 3)], 1))}

    def encode_texts(captions: list[str]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([[len(c), 1.0, 2.0, 3.0] for c in captions])
        return {"shared": torch.nn.functional.normalize(lengths)}

    return encode_images, encode_texts


def test_embedding_sample_of_a_retrieval_only_evaluation_pairs_each_image_with_its_first_caption():
    images = torch.randint(0, 255, (3, 3, 8, 8), dtype=torch.uint8)
    retrieval = RetrievalTask(images=images, captions=["a", "bb", "ccc", "dddd"],
                              caption_to_image=torch.tensor([0, 0, 1, 2]))
    sample = embedding_sample(*_encoders(), TaskSets(retrieval=retrieval))
    assert sample["image"].shape == (3, 4) and sample["labels"].tolist() == [-1, -1, -1]
    expected = _encoders()[1](["a", "ccc", "dddd"])["shared"].numpy()
    np.testing.assert_allclose(sample["text"], expected, rtol=1e-6)
    empty = embedding_sample(*_encoders(), TaskSets())
    assert empty["image"].shape[0] == 0 and empty["text"].shape[0] == 0


def test_embedding_sample_of_an_image_only_probe_has_no_text():
    images = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    probe = ProbeTask(name="cifar10", kind="shared", train_images=images, train_captions=[],
                      train_labels=torch.arange(4), test_images=images, test_captions=[],
                      test_labels=torch.arange(4), num_classes=4)
    sample = embedding_sample(*_encoders(), TaskSets(probes=[probe]))
    assert sample["image"].shape == (4, 4) and sample["text"].shape[0] == 0


def test_report_pca_needs_both_modalities(tmp_path):
    from analysis.plots import has_image_and_text_embeddings

    np.savez(tmp_path / "image_only.npz", image=np.ones((4, 3)), text=np.zeros((0, 3)), labels=np.arange(4))
    np.savez(tmp_path / "pairs.npz", image=np.ones((4, 3)), text=np.ones((4, 3)), labels=np.arange(4))
    assert not has_image_and_text_embeddings(tmp_path / "image_only.npz")
    assert has_image_and_text_embeddings(tmp_path / "pairs.npz")
