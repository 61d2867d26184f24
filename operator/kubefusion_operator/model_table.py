"""What `kubefusion plan` knows about models, datasets and GPUs, each figure with its source. Pure data.

Sizes come from the models' Hugging Face cards. Decode throughput is what one GPU contributes to a vLLM
server at full batch (output tokens per second per GPU, BF16, continuous batching), from published
benchmarks where one exists; other models are scaled from the 70B figure by parameter count, since decoding
at full batch is bound by reading the weights (memory bandwidth), so tokens/s per GPU falls as 1/size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PUBLISHED = "[1]"
CARD = "model card"
REFERENCES = [
    "[1] published vLLM throughput benchmarks (Lambda, github.com/LambdaLabsML/vllm-benchmark, vLLM 0.6, BF16, "
    "full batch): ~890 output tok/s per H100 for a 70B model at TP4; ~1,730 tok/s for "
    "Mistral-Large-2407 on 8 H100; H100 ~2x A100",
    "[2] scaled from the 70B figure by parameter count (decode at full batch reads every weight per step)",
]


@dataclass(frozen=True)
class KnownModel:
    parameters_billions: float
    decode_tokens_per_gpu_h100: float | None = None  # a published figure for this model, when there is one
    decode_source: str = ""


SAME_CLASS = f"{PUBLISHED} 70B TP4 (same size class)"

# Hugging Face ids (lower case) -> size and, where published, H100 decode throughput per GPU.
KNOWN_MODELS: dict[str, KnownModel] = {
    "meta-llama/llama-3.1-70b-instruct": KnownModel(70.6, 890.0, f"{PUBLISHED} 70B TP4"),
    "meta-llama/meta-llama-3-70b-instruct": KnownModel(70.6, 890.0, f"{PUBLISHED} 70B TP4"),
    "qwen/qwen2.5-72b-instruct": KnownModel(72.7, 890.0, SAME_CLASS),
    "qwen/qwen2.5-math-72b-instruct": KnownModel(72.7, 890.0, SAME_CLASS),
    "qwen/qwen2-72b-instruct": KnownModel(72.7, 890.0, SAME_CLASS),
    "mistralai/mistral-large-instruct-2407": KnownModel(
        122.6, 1730.0 / 8, f"{PUBLISHED} 1,730 tok/s / 8 H100"
    ),
    "google/gemma-2-27b-it": KnownModel(27.2),
    "google/gemma-2-9b-it": KnownModel(9.24),
    "meta-llama/llama-3.1-8b-instruct": KnownModel(8.03),
    "meta-llama/meta-llama-3-8b-instruct": KnownModel(8.03),
    "qwen/qwen2.5-7b-instruct": KnownModel(7.62),
    "rlhflow/armorm-llama3-8b-v0.1": KnownModel(7.51),
}

# Families whose ids carry no size, matched as a substring of the lower-case id when the exact table has
# no row (sizes from Mistral AI's cards and announcements, rounded; a mixture of experts counts every
# expert, since all of them are downloaded and loaded).
KNOWN_FAMILIES: dict[str, float] = {
    "mistral-large": 123.0,  # e.g. Mistral-Large-Instruct-2411 (2407 has its own row above: 122.6)
    "mixtral-8x22b": 141.0,  # total parameters
    "mixtral-8x7b": 47.0,  # 46.7B total
}

ANCHOR_PARAMETERS, ANCHOR_TOKENS_PER_GPU = 70.6, 890.0  # Llama-3.1-70B, TP4, H100 (PUBLISHED)


@dataclass(frozen=True)
class GpuType:
    peak_bf16_tflops: float  # dense, from the vendor's data sheet
    decode_vs_h100: float  # decode throughput relative to an H100
    source: str


GPU_TYPES: dict[str, GpuType] = {
    "h100": GpuType(989.0, 1.0, "NVIDIA H100 SXM data sheet (989 dense BF16 TFLOP/s)"),
    "a100": GpuType(
        312.0,
        0.5,
        "NVIDIA A100 data sheet (312 dense BF16 TFLOP/s); decode ~1/2 of H100 (Lambda's benchmark)",
    ),
}

# Hub datasets -> rows, for datasets without rowLimit (counts from the datasets' cards).
KNOWN_DATASETS: dict[str, int] = {
    "hf://openbmb/ultrafeedback": 63967,
}


def model_size(model: str, override: float | None) -> tuple[float | None, str]:
    """(billions of parameters, where the number comes from); None when nothing says.

    The one lookup for every caller (`kubefusion plan`, the pods' model cache): parametersBillions, else the
    exact table, else a known family, else a size in the name.
    """
    if override is not None:
        return override, "parametersBillions"
    known = KNOWN_MODELS.get(model.lower())
    if known is not None:
        return known.parameters_billions, CARD
    family = next((f for f in KNOWN_FAMILIES if f in model.lower()), None)
    if family is not None:
        return KNOWN_FAMILIES[family], f"the {family} family"
    guessed = size_from_name(model)
    return guessed, "its name" if guessed is not None else "unknown"


def size_from_name(model: str) -> float | None:
    """A model's size from its name ("Llama-3.1-70B-Instruct" -> 70); None when it has none."""
    match = re.search(r"(?<![\w.])(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", model.replace("_", "-"))
    if not match:
        match = re.search(r"-(\d+(?:\.\d+)?)[bB]\b", model)
    return float(match.group(1)) if match else None


def decode_throughput(model: str, size: float, gpu: str) -> tuple[float, str]:
    """Output tokens per second per GPU for a model of `size` billions on `gpu`, and where it comes from."""
    gpu_type = GPU_TYPES[gpu]
    known = KNOWN_MODELS.get(model.lower())
    if known is not None and known.decode_tokens_per_gpu_h100 is not None:
        base, source = known.decode_tokens_per_gpu_h100, known.decode_source
    else:
        base = ANCHOR_TOKENS_PER_GPU * ANCHOR_PARAMETERS / size
        source = f"[2] {ANCHOR_TOKENS_PER_GPU:g} x {ANCHOR_PARAMETERS:g} / {size:g}"
    if gpu != "h100":
        source += f", x{gpu_type.decode_vs_h100:g} on {gpu} [1]"
    return base * gpu_type.decode_vs_h100, source
