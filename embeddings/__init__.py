"""The embedding core: the `Embedding` value, creating one, file formats, the library, prompt use.

No Gradio and no training loop in this package.
"""

from embeddings.embedding import Embedding, EmbeddingError, EmbeddingFileError

__all__ = ["Embedding", "EmbeddingError", "EmbeddingFileError"]
