"""The serving step of ``clipq demo``: start tritonserver, run one query of each kind, stop it.

It drives the serving stage and the runtime client together: app code, not part of ``clipq.serving``.

``serve_and_query(artifacts)`` renders the repository, starts the server on free loopback ports,
sends one request to each ensemble (``embed_image``, ``embed_text``, ``ask``, ``describe``) through
the same remote backend every CLI command uses with ``--server``, checks the remote embeddings
against in-process ones, and stops the server before returning a summary.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _demo_image(size: int) -> bytes:
    import numpy as np
    from PIL import Image

    img = np.full((size * 2, size * 3, 3), 235, np.uint8)
    yy, xx = np.mgrid[0:size * 2, 0:size * 3]
    img[(yy - size) ** 2 + (xx - size) ** 2 < (size // 2) ** 2] = (220, 30, 30)  # a red circle on the left
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def serve_and_query(
    artifacts: str | os.PathLike[str],
    *,
    image: str | os.PathLike[str] | bytes | None = None,
    question: str = "what colour is the circle?",
    text: str = "a red circle on the left",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Serve ``artifacts`` with Triton, query every ensemble once, stop the server.

    Args:
        artifacts: The artifact directory.
        image: An image (path or encoded bytes) for the image queries; default a drawn red circle.
        question: The VQA question.
        text: The text to embed.
        echo: Where progress lines go.

    Returns:
        Summary: endpoints, start-up seconds, and per query its latency and result.

    Raises:
        ServerError: tritonserver cannot be found or started (the message says why).
    """
    import numpy as np

    from clipq.runtime.backends.ort import OrtBackend
    from clipq.runtime.backends.triton import TritonBackend
    from clipq.runtime.manifest import Manifest
    from clipq.runtime.tasks import ClipEncoder
    from clipq.serving.repository import render_repository
    from clipq.serving.server import TritonServer

    m = Manifest.load(artifacts)
    img = Path(image).read_bytes() if isinstance(image, (str, os.PathLike)) else image
    img = img or _demo_image(int(m.preprocessing.get("size", 64)))
    summary: dict[str, Any] = {"queries": {}}
    with tempfile.TemporaryDirectory(prefix="clipq-demo-serve-") as tmp:
        repo = render_repository(m, Path(tmp) / "repository")
        with TritonServer(repo.path) as server:
            summary.update(http=server.http_url, grpc=server.grpc_url, startup_s=round(server.startup_s, 2),
                           models=sorted(repo.models))
            echo(f"tritonserver {server.version} ready in {server.startup_s:.1f} s at {server.grpc_url} "
                 f"({len(repo.models)} models)")
            with TritonBackend(server.grpc_url, m) as remote:

                def timed(name: str, model: str, inputs: dict[str, Any]) -> dict[str, Any]:
                    t = time.perf_counter()
                    out = remote.infer(model, inputs)
                    summary["queries"][name] = {"ms": round((time.perf_counter() - t) * 1e3, 2)}
                    return out

                if "embed_image" in repo.models:
                    emb = timed("embed_image", "embed_image", {"image": [img]})["image_embeds"]
                    local = ClipEncoder(OrtBackend(m)).encode_images([img])
                    cos = float((emb * local).sum())
                    summary["queries"]["embed_image"]["cosine_vs_in_process"] = round(cos, 6)
                    echo(f"  embed_image: {emb.shape[1]}-d embedding, cosine {cos:.6f} with in-process")
                if "embed_text" in repo.models:
                    emb = timed("embed_text", "embed_text", {"text": [text]})["text_embeds"]
                    echo(f"  embed_text: {text!r} -> {emb.shape[1]}-d embedding")
                if "ask" in repo.models and m.answer_vocab:
                    probs = timed("ask", "ask", {"image": [img], "question": [question]})["probs"][0]
                    best = int(np.argmax(probs))
                    summary["queries"]["ask"].update(answer=m.answer_vocab[best], prob=round(float(probs[best]), 4))
                    echo(f"  ask: {question!r} -> {m.answer_vocab[best]!r} (p={probs[best]:.3f})")
                if "describe" in repo.models:
                    import json

                    from clipq.runtime.fusion import Img2PromptSettings

                    alpha = Img2PromptSettings.from_manifest(m).alpha  # the record the server was rendered with
                    out = timed("describe", "describe", {"image": [img], "alpha": np.full((1, 1), alpha, np.float32),
                                                         "n": np.ones((1, 1), np.int32)})
                    closest = json.loads(out["description"][0][0])["closest"]
                    summary["queries"]["describe"]["closest"] = closest
                    echo(f"  describe: {out['prompt_embeds'].shape[1]}-d fused prompt embedding (Model A + Model B's "
                         f"KNN in the server, alpha {alpha:.2f}); nearest known prompt {closest[0][0]!r}")
                for name, q in summary["queries"].items():
                    echo(f"  {name}: {q['ms']:.1f} ms")
        echo("tritonserver stopped")
    return summary
